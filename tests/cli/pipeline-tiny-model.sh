#!/bin/sh
# pipeline-tiny-model.sh: the tiny random model pq-pipeline writes with the
# shell alone is a real Hugging Face model: transformers loads it, its
# tokenizer and chat template agree with HF tokenizers, and pq-logp's
# log-probs under it equal PyTorch's; the same seed gives the same bytes.
set -eu
command -v bash >/dev/null 2>&1 || { echo "FAIL: bash not installed (pq's scripts need it)"; exit 1; }
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
"$PQ_TOP/scripts/pq-pipeline" --make-tiny-model "$d/m" 2>/dev/null
"$PQ_TOP/scripts/pq-pipeline" --make-tiny-model "$d/m2" 2>/dev/null
cmp "$d/m/model.safetensors" "$d/m2/model.safetensors"
PQ_TINY_SEED=5 "$PQ_TOP/scripts/pq-pipeline" --make-tiny-model "$d/m3" 2>/dev/null
cmp -s "$d/m/model.safetensors" "$d/m3/model.safetensors" && { echo "PQ_TINY_SEED changed nothing"; exit 1; }
cat >"$d/pairs.jsonl" <<'EOF'
{"id":"a","prompt":[{"role":"user","content":"Summarize: Café owners in Zürich said prices rose 3%."}],"chosen":[{"role":"user","content":"Summarize: Café owners in Zürich said prices rose 3%."},{"role":"assistant","content":"Prices rose."}],"rejected":[{"role":"user","content":"Summarize: Café owners in Zürich said prices rose 3%."},{"role":"assistant","content":"Zürich café owners — prices up 3%!"}]}
{"id":"b","prompt":[{"role":"user","content":"Text:\n\nLine one.\n  Line two, with  spaces.\tTab."}],"chosen":[{"role":"user","content":"Text:\n\nLine one.\n  Line two, with  spaces.\tTab."},{"role":"assistant","content":"Two lines."}],"rejected":[{"role":"user","content":"Text:\n\nLine one.\n  Line two, with  spaces.\tTab."},{"role":"assistant","content":"x"}]}
EOF
"$PQ_BIN/pq-logp" -t 1 -m "$d/m" "$d/pairs.jsonl" >"$d/logp.jsonl" 2>/dev/null
# PyTorch's side does not depend on the flavour: once, in the release run.
[ "${PQ_FLAVOR:-rel}" = rel ] || { echo "ok (PyTorch check in the rel run)"; exit 0; }
"$PQ_PY" - "$d/m" "$d/logp.jsonl" 2>"$d/py.err" <<'EOF' || { cat "$d/py.err"; exit 1; }
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
m, out = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(m)
model = AutoModelForCausalLM.from_pretrained(m, torch_dtype=torch.float32).eval()
assert model.config.vocab_size == 259 and model.config.num_hidden_layers == 2
for o in map(json.loads, open(out)):
    for side in ("chosen", "rejected"):
        full = tok.apply_chat_template(o[side])
        prompt = tok.apply_chat_template(o[side][:-1], add_generation_prompt=True)
        assert full[:len(prompt)] == prompt
        assert tok.decode(full) == tok.apply_chat_template(o[side], tokenize=False)
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([full])).logits[0].double(), -1)
        want = sum(lp[i - 1, full[i]].item() for i in range(len(prompt), len(full)))
        got = o["ref_%s_logp" % side]
        assert o["%s_tokens" % side] == len(full) - len(prompt), (side, o["%s_tokens" % side], len(full) - len(prompt))
        assert abs(got - want) < 1e-3 * max(1, abs(want)), (o["id"], side, got, want)
EOF
echo ok
