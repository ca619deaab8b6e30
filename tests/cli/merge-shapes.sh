#!/bin/sh
# merge-shapes.sh: a safetensors header whose shape product overflows is
# refused when the file is opened (pq-merge once allocated 2^63 bytes and
# aborted, leaving OUT.tmpPID; a 4-D variant was written out with its
# absurd shape, which Hugging Face's safetensors refuses). Exit 3, the tensor named, nothing left behind.
set -eu
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
"$PQ_PY" "$PQ_TOP/tests/make_tiny_model.py" --arch llama --out "$d/m" --layers 1 --hidden 32 --heads 2 \
  --kv-heads 1 --intermediate 64 >/dev/null
good='"chosen_ids":[1,5,9,12,40],"rejected_ids":[1,5,9,13,41,42],"prompt_len":3,"ref_chosen_logp":-20.5,"ref_rejected_logp":-31.25'
for i in 1 2; do echo "{\"id\":\"g$i\",$good}"; done >"$d/in.jsonl"
"$PQ_BIN/pq-dpo" --raw -m "$d/m" -t 1 --lr-schedule constant --no-progress --out "$d/a" "$d/in.jsonl" \
  >/dev/null 2>"$d/err" || { cat "$d/err"; exit 1; }
"$PQ_BIN/pq-merge" -m "$d/m" -a "$d/a" -o "$d/ok" -t 1 2>"$d/err" || { echo "a good merge failed"; cat "$d/err"; exit 1; }
for v in 2d 4d; do
  "$PQ_PY" - "$d/m" "$d/m-$v" "$v" <<'PY'
import json, shutil, struct, sys
src, dst, v = sys.argv[1:]
shutil.copytree(src, dst)
raw = open(src + "/model.safetensors", "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
h = json.loads(raw[8:8 + n])
data = raw[8 + n:]
end = len(data)
if v == "2d":   # 2^39 x 2^39 elements (each dimension allowed): 0 after wrapping
    h["extra.weight"] = {"dtype": "F32", "shape": [1 << 39, 1 << 39], "data_offsets": [end, end]}
else:           # 2^20 x 2^20 x 2^20 x 2^4: the same in 4-D
    h["extra.weight"] = {"dtype": "F32", "shape": [1 << 20, 1 << 20, 1 << 20, 16], "data_offsets": [end, end]}
hb = json.dumps(h).encode()
hb += b" " * (-len(hb) % 8)
open(dst + "/model.safetensors", "wb").write(struct.pack("<Q", len(hb)) + hb + data)
PY
  rc=0
  "$PQ_BIN/pq-merge" -m "$d/m-$v" -a "$d/a" -o "$d/out-$v" -t 1 2>"$d/err" || rc=$?
  [ $rc -eq 3 ] || { echo "$v: exit $rc, want 3"; cat "$d/err"; exit 1; }
  grep -q "tensor extra.weight: the element count of its shape overflows" "$d/err" ||
    { echo "$v: not said"; cat "$d/err"; exit 1; }
  ls "$d" | grep -q "out-$v" && { echo "$v: left behind:"; ls "$d"; exit 1; }
done
echo ok
