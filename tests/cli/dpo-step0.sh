#!/bin/sh
# dpo-step0.sh: the built-in check of method.md §5 end to end on pair
# records (chat template, tokenizer, sequence building): with reference
# log-probs from pq-logp and a fresh adapter (B = 0), pq-dpo's first step
# has loss ln 2, rewards 0, and policy log-probs equal to pq-logp's, for the
# whole-conversation form and TRL's form of the same pairs.
set -eu
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
"$PQ_PY" "$PQ_TOP/tests/make_tiny_model.py" --arch llama --out "$d/m" >/dev/null
"$PQ_BIN/pq-logp" -m "$d/m" -t 1 --no-progress "$PQ_TOP/tests/fixtures/dpo-pairs.jsonl" >"$d/ref.jsonl"
# TRL's form: "prompt" + one-message chosen/rejected
"$PQ_PY" -c '
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    r["chosen"], r["rejected"] = r["chosen"][-1:], r["rejected"][-1:]
    print(json.dumps(r))' "$d/ref.jsonl" >"$d/trl.jsonl"
for f in ref trl; do
  "$PQ_BIN/pq-dpo" -m "$d/m" -t 1 --batch-size 4 --max-steps 1 --no-save --no-progress "$d/$f.jsonl" >"$d/$f.out"
  "$PQ_PY" - "$d/ref.jsonl" "$d/$f.out" "$f" <<'PY'
import json, math, sys
refs = [json.loads(l) for l in open(sys.argv[1])]
s = json.loads(open(sys.argv[2]).readline())
bad = []
if abs(s["loss"] - math.log(2)) > 1e-6: bad.append("loss %.9g != ln 2" % s["loss"])
for k in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
    if abs(s[k]) > 1e-6: bad.append("%s %.3g != 0" % (k, s[k]))
for side in ("chosen", "rejected"):
    want = sum(r["ref_%s_logp" % side] for r in refs) / len(refs)
    if abs(s["logps/" + side] - want) > 1e-5 * abs(want): bad.append("logps/%s %.9g != pq-logp's %.9g" % (side, s["logps/" + side], want))
print(sys.argv[3], "step 0:", "loss %.9f" % s["loss"], "logps/chosen %.6f" % s["logps/chosen"], "; ".join(bad) or "ok")
sys.exit(1 if bad else 0)
PY
done
