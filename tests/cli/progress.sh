#!/bin/sh
# progress.sh: what a run says while it runs. Progress shows lines done of
# the total and a percentage (pq-dpo: the step of the total and the loss);
# a reason repeated over many lines is shown PQ_REJECT_SHOW (5) times, then
# counted and its count said at the end; every line is still in --rejects.
set -eu
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
head -n 4 "$PQ_TOP/tests/fixtures/quiz.jsonl" >"$d/in.jsonl"
i=0
while [ $i -lt 120 ]; do echo "{\"id\":\"r$i\"}"; i=$((i + 1)); done >>"$d/in.jsonl"
echo '{"id":"other"' >>"$d/in.jsonl"
rc=0
"$PQ_BIN/pq-pair" --progress --rejects "$d/rej" "$d/in.jsonl" >/dev/null 2>"$d/err" || rc=$?
[ $rc -eq 1 ] || { echo "exit $rc, want 1"; cat "$d/err"; exit 1; }
tr '\r' '\n' <"$d/err" >"$d/lines"
[ "$(grep -c 'no "summary" field' "$d/lines")" -eq 6 ] || { echo "want 5 messages and one count:"; cat "$d/lines"; exit 1; }
grep -q '(id r4): no "summary" field (more lines rejected for this reason are counted, not shown)' "$d/lines" ||
  { echo "the fifth message does not say the rest are counted"; cat "$d/lines"; exit 1; }
grep -q '^pq-pair: 115 more lines rejected (not shown): no "summary" field$' "$d/lines" || { echo "no count at the end"; cat "$d/lines"; exit 1; }
grep -q 'line 125: not JSON' "$d/lines" || { echo "another reason was not shown"; exit 1; }
[ "$(wc -l <"$d/rej")" -eq 121 ] || { echo "not every line in --rejects"; exit 1; }
grep -q '125/125 lines (100%), 4 done, 121 rejected' "$d/lines" || { echo "no total or percentage:"; cat "$d/lines"; exit 1; }

"$PQ_PY" "$PQ_TOP/tests/make_tiny_model.py" --arch llama --out "$d/m" --layers 1 --hidden 32 --heads 2 \
  --kv-heads 1 --intermediate 64 >/dev/null
good='"chosen_ids":[1,5,9,12,40],"rejected_ids":[1,5,9,13,41,42],"prompt_len":3,"ref_chosen_logp":-20.5,"ref_rejected_logp":-31.25'
for i in 1 2 3 4; do echo "{\"id\":\"g$i\",$good}"; done >"$d/pairs.jsonl"
"$PQ_BIN/pq-dpo" --raw -m "$d/m" -t 1 --no-save --progress "$d/pairs.jsonl" >/dev/null 2>"$d/err" || { cat "$d/err"; exit 1; }
tr '\r' '\n' <"$d/err" | grep -q '^pq-dpo: step 2/2 (100%), loss 0\.[0-9]*' || { echo "pq-dpo progress:"; cat "$d/err"; exit 1; }
echo ok
