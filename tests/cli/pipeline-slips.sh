#!/bin/sh
# pipeline-slips.sh: what a new user gets wrong with pq-pipeline is said
# plainly and leaves nothing behind: a missing input (not just cat's line),
# a bad --model (named --model, not --train-model), no *.new files in the
# work directory after either; offline, fetch-model says why in its own
# words (no raw "curl: (6)" lines); and pq-pipeline(1) lists the stages a
# run numbers.
set -eu
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
PATH=$PQ_BIN:$PATH
export PATH
pp=$PQ_TOP/scripts/pq-pipeline
head -n 2 "$PQ_TOP/data/cnndm-sample.jsonl" >"$d/in.jsonl"

# 1. A missing input: a usage error that names it, before anything is written.
rc=0; "$pp" -w "$d/w1" --tiny "$d/missing.jsonl" >/dev/null 2>"$d/err" || rc=$?
[ $rc -eq 2 ] || { echo "missing input: exit $rc, want 2"; cat "$d/err"; exit 1; }
grep -q "^pq-pipeline: $d/missing.jsonl: no such file" "$d/err" || { echo "missing input:"; cat "$d/err"; exit 1; }
! grep -q '^cat:' "$d/err" || { echo "missing input: cat's message"; cat "$d/err"; exit 1; }
[ ! -e "$d/w1" ] || { echo "missing input: the work directory was made: $(ls -A "$d/w1")"; exit 1; }
rc=0; "$pp" -w "$d/w1" --tiny "$d" >/dev/null 2>"$d/err" || rc=$?
[ $rc -eq 2 ] && grep -q "a directory, not a file of articles" "$d/err" || { echo "a directory as input:"; cat "$d/err"; exit 1; }
rc=0; "$pp" -w "$d/w1" --tiny --eval-articles "$d/missing.jsonl" "$d/in.jsonl" >/dev/null 2>"$d/err" || rc=$?
[ $rc -eq 2 ] || { echo "missing --eval-articles: exit $rc"; cat "$d/err"; exit 1; }

# 2. A bad --model is named as given; the work directory keeps no *.new.
for opt in --model --policy-model --judge-model --train-model; do
  set -- "$opt" "$d/no-such-model"
  case $opt in --policy-model|--judge-model|--train-model) set -- --tiny "$@" ;; esac
  rc=0; "$pp" -w "$d/w2" "$@" "$d/in.jsonl" >/dev/null 2>"$d/err" || rc=$?
  [ $rc -eq 2 ] || { echo "$opt: exit $rc, want 2"; cat "$d/err"; exit 1; }
  grep -q "^pq-pipeline: $opt $d/no-such-model: not a" "$d/err" || { echo "$opt reported as:"; cat "$d/err"; exit 1; }
  left=$(ls "$d/w2" | grep '\.new$' || :)
  [ -z "$left" ] || { echo "$opt: left in the work directory: $left"; exit 1; }
done

# 3. Offline: fetch-model's own words, not curl's.
for hub in http://127.0.0.1:1 http://pq-test.invalid; do
  rc=0; HF_ENDPOINT=$hub "$PQ_TOP/scripts/fetch-model" --cache "$d/cache" >/dev/null 2>"$d/err" || rc=$?
  [ $rc -eq 3 ] || { echo "fetch-model from $hub: exit $rc, want 3"; cat "$d/err"; exit 1; }
  ! grep -q '^curl:' "$d/err" || { echo "fetch-model from $hub: raw curl lines:"; cat "$d/err"; exit 1; }
  grep -q "^fetch-model: cannot list .*: cannot \(resolve the host\|connect to the server\) (offline?)$" "$d/err" ||
    { echo "fetch-model from $hub:"; cat "$d/err"; exit 1; }
done

# 4. pq-pipeline(1) lists, in order, the stages a run numbers [k/13].
n=$(sed -n 's/^nstages=//p' "$pp")
stages=$(sed -n 's/^\(tool_stage\|if begin\) \([a-z.]*\) .*/\2/p' "$pp" | tr '\n' ' ')
[ "$(echo $stages | wc -w)" -eq "$n" ] || { echo "the script has $n stages, runs: $stages"; exit 1; }
listed=$(awk '/^\.Bl -enum/ { on = 1; next } on && /^\.El/ { exit } on && prev == ".It" { sub(/:.*/, ""); printf "%s ", $0 } { prev = $0 }' \
  "$PQ_TOP/man/pq-pipeline.1")
[ "$listed" = "$stages" ] || { echo "pq-pipeline(1) lists: $listed"; echo "a run has:           $stages"; exit 1; }
echo "ok: $n stages"
