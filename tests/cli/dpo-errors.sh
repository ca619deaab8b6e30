#!/bin/sh
# dpo-errors.sh: pq-dpo on bad input: records without reference log-probs,
# with a non-finite or positive one, empty or over-long responses, ids
# outside the vocabulary, lines that are not JSON: each rejected with its
# reason, written whole to --rejects, the good records trained on, exit 1.
# A non-finite loss stops training naming the step and leaves the last
# checkpoint as it was (exit 3). Missing ref logps pass with --reference-free.
set -eu
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
"$PQ_PY" "$PQ_TOP/tests/make_tiny_model.py" --arch llama --out "$d/m" >/dev/null
good='"chosen_ids":[1,5,9,12,40],"rejected_ids":[1,5,9,13,41,42],"prompt_len":3'
ref='"ref_chosen_logp":-20.5,"ref_rejected_logp":-31.25'
cat >"$d/in.jsonl" <<EOF2
{"id":"g1",$good,$ref}
{"id":"b1",$good,"ref_rejected_logp":-31.25}
{"id":"g2",$good,$ref}
{"id":"b2",$good,"ref_chosen_logp":"NaN","ref_rejected_logp":-3}
{"id":"b3",$good,"ref_chosen_logp":null,"ref_rejected_logp":-3}
{"id":"b4",$good,"ref_chosen_logp":5,"ref_rejected_logp":-3}
{"id":"b5","chosen_ids":[1,5,9],"rejected_ids":[1,5,9,13],"prompt_len":3,$ref}
{"id":"b6","chosen_ids":[1,5,9,12,40,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16],"rejected_ids":[1,5,9,13],"prompt_len":3,$ref}
{"id":"b7","chosen_ids":[1,5,9,99999],"rejected_ids":[1,5,9,13],"prompt_len":3,$ref}
{"id":"b8", not json
{"id":"g3",$good,$ref}
{"id":"g4",$good,$ref}
EOF2
grep '"b' "$d/in.jsonl" >"$d/want-rejects"
set +e
"$PQ_BIN/pq-dpo" --raw -m "$d/m" -t 1 --max-length 16 --lr-schedule constant --rejects "$d/rejects" \
  --out "$d/a" "$d/in.jsonl" >"$d/out" 2>"$d/err"
rc=$?
set -e
cat "$d/err"
[ $rc -eq 1 ] || { echo "exit $rc, want 1"; exit 1; }
diff -u "$d/want-rejects" "$d/rejects"
[ "$(wc -l <"$d/out")" -eq 2 ] || { echo "want 2 steps (4 good pairs, batch 2)"; cat "$d/out"; exit 1; }
for pat in 'line 2 (id b1): no ref_chosen_logp' 'line 4 (id b2): ref_chosen_logp is not a finite' \
  'line 5 (id b3): ref_chosen_logp is not a finite' 'line 6 (id b4): ref_chosen_logp is not a finite' \
  'line 7 (id b5): chosen: prompt_len 3 leaves no response' 'line 8 (id b6): chosen: 21 ids exceed --max-length 16' \
  'line 9 (id b7): chosen_ids: not a token id' 'line 10'; do
  grep -F -q "$pat" "$d/err" || { echo "missing on stderr: $pat"; exit 1; }
done
[ -f "$d/a/adapter_model.safetensors" ] && [ -f "$d/a/adapter_config.json" ] || { echo "no adapter written"; exit 1; }

# --reference-free takes the record without ref logps
printf '%s\n' "{\"id\":\"f1\",$good}" "{\"id\":\"f2\",$good}" >"$d/free.jsonl"
"$PQ_BIN/pq-dpo" --raw -m "$d/m" -t 1 --reference-free --no-save --lr-schedule constant "$d/free.jsonl" >"$d/out2"
[ "$(wc -l <"$d/out2")" -eq 1 ] || { echo "--reference-free: want 1 step"; exit 1; }

# a non-finite loss at step 2: stops, names the step, keeps the step-1 checkpoint
{
  echo "{\"id\":\"g1\",$good,$ref}"
  echo "{\"id\":\"g2\",$good,$ref}"
  echo "{\"id\":\"x1\",$good,\"ref_chosen_logp\":-1e300,\"ref_rejected_logp\":-3}"
  echo "{\"id\":\"g3\",$good,$ref}"
} >"$d/inf.jsonl"
set +e
"$PQ_BIN/pq-dpo" --raw -m "$d/m" -t 1 --loss ipo --lr-schedule constant --save-every 1 --out "$d/ck" \
  "$d/inf.jsonl" >"$d/out3" 2>"$d/err3"
rc=$?
set -e
cat "$d/err3"
[ $rc -eq 3 ] || { echo "non-finite loss: exit $rc, want 3"; exit 1; }
grep -F -q 'step 2: the loss is not finite' "$d/err3" || { echo "message does not name step 2"; exit 1; }
grep -q '"step":[[:space:]]*1,' "$d/ck/trainer_state.json" || { echo "checkpoint is not step 1's"; exit 1; }
[ "$(wc -l <"$d/out3")" -eq 1 ] || { echo "want the step-1 line only"; exit 1; }
ls "$d" | grep -q 'tmp' && { echo "temporary files left"; ls "$d"; exit 1; }
echo ok
