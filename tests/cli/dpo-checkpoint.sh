#!/bin/sh
# dpo-checkpoint.sh: pq-dpo --checkpoint on, off and auto train the same
# adapter: two steps with LoRA dropout give the same metrics to the last
# digit (checkpointing recomputes each layer exactly, its dropout masks
# included) and the same adapter file; every step line says which was used
# ("checkpoint"), auto keeps the activations of a tiny model (they fit in
# RAM), and a value other than auto/on/off is a usage error.
set -eu
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
"$PQ_PY" "$PQ_TOP/tests/make_tiny_model.py" --arch mistral --out "$d/m" >/dev/null
args="-m $d/m -t 1 --reference-free --lora-r 4 --lora-dropout 0.1 --lr 1e-3 --batch-size 2 --max-steps 2 --seed 5 --no-progress"
for w in on off auto; do
  # shellcheck disable=SC2086 # args is split on purpose
  "$PQ_BIN/pq-dpo" $args --checkpoint $w -o "$d/a-$w" "$PQ_TOP/tests/fixtures/dpo-pairs.jsonl" >"$d/$w.jsonl"
done
"$PQ_PY" - "$d" <<'PY'
import json, sys
d = sys.argv[1]
runs = {w: [json.loads(l) for l in open(f"{d}/{w}.jsonl")] for w in ("on", "off", "auto")}
bad = []
for w, want in (("on", True), ("off", False), ("auto", False)):
    got = [r.get("checkpoint") for r in runs[w]]
    if len(got) != 2 or any(g is not want for g in got): bad.append(f"--checkpoint {w}: step lines say {got}")
drop = ("tokens_per_s", "peak_mem_mb", "checkpoint")
strip = lambda rs: [{k: v for k, v in r.items() if k not in drop} for r in rs]
for w in ("off", "auto"):
    if strip(runs[w]) != strip(runs["on"]): bad.append(f"--checkpoint {w}: metrics differ from on: {strip(runs[w])} vs {strip(runs['on'])}")
print("checkpoint on/off/auto:", "; ".join(bad) or "same metrics over 2 steps", runs["on"][-1]["loss"])
sys.exit(1 if bad else 0)
PY
cmp "$d/a-on/adapter_model.safetensors" "$d/a-off/adapter_model.safetensors"
cmp "$d/a-on/adapter_model.safetensors" "$d/a-auto/adapter_model.safetensors"
if "$PQ_BIN/pq-dpo" -m "$d/m" --checkpoint sometimes "$PQ_TOP/tests/fixtures/dpo-pairs.jsonl" >/dev/null 2>"$d/err"; then
  echo "--checkpoint sometimes: accepted"; exit 1
fi
grep -q "checkpoint: sometimes is not auto, on or off" "$d/err" || { cat "$d/err"; exit 1; }
echo ok
