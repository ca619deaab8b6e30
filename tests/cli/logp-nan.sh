#!/bin/sh
# logp-nan.sh: NaN weights never become a "null" log-prob counted as done.
# An adapter holding NaN or inf is refused when it is loaded (exit 3, the
# tensor named); a model whose log-probs come out NaN stops pq-logp at the
# first such line (exit 3, the line named), the lines before it kept.
set -eu
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
"$PQ_PY" "$PQ_TOP/tests/make_tiny_model.py" --arch llama --out "$d/m" --layers 1 --hidden 32 --heads 2 \
  --kv-heads 1 --intermediate 64 >/dev/null
good='"chosen_ids":[1,5,9,12,40],"rejected_ids":[1,5,9,13,41,42],"prompt_len":3,"ref_chosen_logp":-20.5,"ref_rejected_logp":-31.25'
for i in 1 2 3 4; do echo "{\"id\":\"g$i\",$good}"; done >"$d/in.jsonl"
"$PQ_BIN/pq-dpo" --raw -m "$d/m" -t 1 --lr-schedule constant --no-progress --stop-after 1 --out "$d/a" "$d/in.jsonl" \
  >/dev/null 2>"$d/err" || { cat "$d/err"; exit 1; }
"$PQ_PY" - "$d" <<'PY'
import sys, shutil
import numpy as np
from safetensors.numpy import load_file, save_file
d = sys.argv[1]
a = load_file(d + "/a/adapter_model.safetensors")
k = sorted(a)[0]
a[k] = a[k].copy(); a[k].flat[3] = np.nan
save_file(a, d + "/a/adapter_model.safetensors", metadata={"format": "pt"})
open(d + "/nan-tensor", "w").write(k)
shutil.copytree(d + "/m", d + "/mnan")
m = load_file(d + "/mnan/model.safetensors")
m["model.norm.weight"] = m["model.norm.weight"].copy(); m["model.norm.weight"][0] = np.nan
save_file(m, d + "/mnan/model.safetensors", metadata={"format": "pt"})
PY
printf '%s\n' '{"id":"r1","ids":[1,5,9,12,40],"prompt_len":3}' >"$d/raw.jsonl"
rc=0
"$PQ_BIN/pq-logp" --raw -m "$d/m" --adapter "$d/a" -t 1 --no-progress "$d/raw.jsonl" >"$d/out" 2>"$d/err" || rc=$?
[ $rc -eq 3 ] || { echo "NaN adapter: exit $rc, want 3"; cat "$d/err"; exit 1; }
grep -qF "$(cat "$d/nan-tensor") holds NaN or inf" "$d/err" || { echo "NaN adapter: not said"; cat "$d/err"; exit 1; }
[ ! -s "$d/out" ] || { echo "NaN adapter: output written"; exit 1; }

rc=0
"$PQ_BIN/pq-logp" --raw -m "$d/mnan" -t 1 --no-progress --resume "$d/out" "$d/raw.jsonl" 2>"$d/err" || rc=$?
[ $rc -eq 3 ] || { echo "NaN model: exit $rc, want 3"; cat "$d/err"; exit 1; }
grep -q "line 1 (id r1): the sequence's log-prob is not finite" "$d/err" || { echo "NaN model: not said"; cat "$d/err"; exit 1; }
! grep -q null "$d/out" || { echo "NaN model: a null log-prob written"; cat "$d/out"; exit 1; }
echo ok
