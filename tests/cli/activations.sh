#!/bin/sh
# activations.sh: PQ_ACTIVATIONS. With bf16 storage on a bf16 model pq-dpo's
# --checkpoint on and off train the same adapter to the bit (recomputation
# rounds as the forward did) and every step line says "activations": "bf16",
# while pq-logp and the training loss move from the f32 run's (the storage is
# used); an f32 model keeps f32 (said on stderr, the same output as f32); an
# unknown value is a usage error (exit 2) of both tools; generation
# (pq-summarize on a local model) takes the storage too.
set -eu
export OMP_WAIT_POLICY=passive
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
b=$PQ_BIN
pairs=$PQ_TOP/tests/fixtures/dpo-pairs.jsonl
"$PQ_PY" "$PQ_TOP/tests/make_tiny_model.py" --arch mistral --dtype bf16 --out "$d/m" >/dev/null
"$PQ_PY" "$PQ_TOP/tests/make_tiny_model.py" --arch llama --dtype f32 --layers 1 --out "$d/f" >/dev/null
args="-m $d/m -t 1 --reference-free --lora-r 4 --lora-dropout 0.1 --lr 1e-3 --batch-size 2 --max-steps 2 --seed 5 --no-progress"
for w in on off; do
  # shellcheck disable=SC2086 # args is split on purpose
  PQ_ACTIVATIONS=bf16 "$b/pq-dpo" $args --checkpoint $w -o "$d/a-$w" "$pairs" >"$d/$w.jsonl"
done
# shellcheck disable=SC2086
PQ_ACTIVATIONS=f32 "$b/pq-dpo" $args --checkpoint on -o "$d/a-f32" "$pairs" >"$d/f32.jsonl"
cmp "$d/a-on/adapter_model.safetensors" "$d/a-off/adapter_model.safetensors"
PQ_ACTIVATIONS=bf16 "$b/pq-logp" -m "$d/m" -t 1 --no-progress "$pairs" >"$d/lp16.jsonl"
"$b/pq-logp" -m "$d/m" -t 1 --no-progress "$pairs" >"$d/lp32.jsonl"
"$PQ_PY" - "$d" <<'PY'
import json, sys
d = sys.argv[1]
runs = {w: [json.loads(l) for l in open(f"{d}/{w}.jsonl")] for w in ("on", "off", "f32")}
bad = []
for w, want in (("on", "bf16"), ("off", "bf16"), ("f32", "f32")):
    got = [r.get("activations") for r in runs[w]]
    if len(got) != 2 or any(g != want for g in got): bad.append(f"{w}: step lines say activations {got}")
drop = ("tokens_per_s", "peak_mem_mb", "checkpoint")
strip = lambda rs: [{k: v for k, v in r.items() if k not in drop} for r in rs]
if strip(runs["on"]) != strip(runs["off"]): bad.append(f"bf16: --checkpoint on and off differ: {runs['on']} vs {runs['off']}")
if runs["on"][0]["loss"] == runs["f32"][0]["loss"]: bad.append("bf16: the same first loss as f32 (storage unused?)")
lp = {w: [json.loads(l) for l in open(f"{d}/lp{w}.jsonl")] for w in ("16", "32")}
diff = max(abs(a["ref_chosen_logp"] - b["ref_chosen_logp"]) for a, b in zip(lp["16"], lp["32"]))
if not 0 < diff < 1: bad.append(f"pq-logp bf16 vs f32: max |diff| {diff}, want in (0, 1)")
print("bf16 activations:", "; ".join(bad) or "checkpoint on == off over 2 steps, logp moved by %.2e" % diff)
sys.exit(1 if bad else 0)
PY
# an f32 model keeps f32 activations: said once, the same log-probs
PQ_ACTIVATIONS=bf16 "$b/pq-logp" -m "$d/f" -t 1 --no-progress "$pairs" >"$d/f16.jsonl" 2>"$d/err"
grep -q "an f32 model keeps f32 activations" "$d/err" || { cat "$d/err"; exit 1; }
"$b/pq-logp" -m "$d/f" -t 1 --no-progress "$pairs" >"$d/f32.jsonl"
cmp "$d/f16.jsonl" "$d/f32.jsonl"
PQ_ACTIVATIONS=bf16 "$b/pq-dpo" -m "$d/f" -t 1 --reference-free --max-steps 1 --no-save --no-progress "$pairs" \
  >"$d/fd.jsonl" 2>/dev/null
grep -q '"activations":[ ]*"f32"' "$d/fd.jsonl" || { cat "$d/fd.jsonl"; exit 1; }
# an unknown value: a usage error naming it
for t in "pq-logp" "pq-dpo --no-save"; do
  rc=0
  # shellcheck disable=SC2086 # the tool and its options
  PQ_ACTIVATIONS=fp8 "$b/"$t -m "$d/m" "$pairs" >/dev/null 2>"$d/err" || rc=$?
  [ "$rc" -eq 2 ] || { echo "$t: PQ_ACTIVATIONS=fp8 exited $rc, want 2"; cat "$d/err"; exit 1; }
  grep -q "PQ_ACTIVATIONS=fp8: expected f32 or bf16" "$d/err" || { cat "$d/err"; exit 1; }
done
# generation reads it too (pq-summarize on a local model): bf16 storage on the bf16 model writes a summary per
# article like f32's (tests/py/test_gen_act_bf16.py checks its numbers), an f32 model is unchanged, an unknown
# value is refused
"$b/pq-summarize" --model "$d/m" --temperature 0 --max-tokens 4 --no-progress \
  <"$PQ_TOP/tests/fixtures/articles.jsonl" >"$d/s32.jsonl"
PQ_ACTIVATIONS=bf16 "$b/pq-summarize" --model "$d/m" --temperature 0 --max-tokens 4 --no-progress \
  <"$PQ_TOP/tests/fixtures/articles.jsonl" >"$d/s16.jsonl"
[ "$(wc -l <"$d/s16.jsonl")" -eq "$(wc -l <"$d/s32.jsonl")" ] && [ -s "$d/s16.jsonl" ] || {
  echo "pq-summarize bf16: $(wc -l <"$d/s16.jsonl") lines, f32: $(wc -l <"$d/s32.jsonl")"; exit 1; }
"$b/pq-summarize" --model "$d/f" --temperature 0 --max-tokens 4 --no-progress \
  <"$PQ_TOP/tests/fixtures/articles.jsonl" >"$d/sf32.jsonl"
PQ_ACTIVATIONS=bf16 "$b/pq-summarize" --model "$d/f" --temperature 0 --max-tokens 4 --no-progress \
  <"$PQ_TOP/tests/fixtures/articles.jsonl" >"$d/sf16.jsonl" 2>/dev/null
cmp "$d/sf32.jsonl" "$d/sf16.jsonl"
rc=0
PQ_ACTIVATIONS=fp8 "$b/pq-summarize" --model "$d/m" --max-tokens 4 --no-progress \
  <"$PQ_TOP/tests/fixtures/articles.jsonl" >/dev/null 2>"$d/err" || rc=$?
[ "$rc" -ne 0 ] && grep -q "PQ_ACTIVATIONS=fp8: expected f32 or bf16" "$d/err" || {
  echo "pq-summarize PQ_ACTIVATIONS=fp8: exit $rc"; cat "$d/err"; exit 1; }
echo ok
