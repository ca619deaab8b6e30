#!/bin/sh
# eval.sh: pq-eval's golden cases (tests/cases/eval/<case>/: args, one
# argument a line, naming the .jsonl files of the case dir; expected.jsonl or
# expected.txt for stdout; status and expected.stderr when given), then the
# usage errors.
set -eu
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
ev=$PQ_BIN/pq-eval
fail=0
n=0
for c in "$PQ_TOP"/tests/cases/eval/*/; do
  name=$(basename "$c")
  set --
  while IFS= read -r a; do set -- "$@" "$a"; done <"$c/args"
  rc=0
  (cd "$c" && "$ev" "$@") >"$d/out" 2>"$d/err" || rc=$?
  want=0
  [ ! -f "$c/status" ] || want=$(cat "$c/status")
  n=$((n + 1))
  if [ "$rc" -ne "$want" ]; then
    echo "FAIL $name: exit $rc, want $want"; cat "$d/err"; fail=$((fail + 1)); continue
  fi
  exp=$c/expected.jsonl
  [ -f "$exp" ] || exp=$c/expected.txt
  if ! diff -u "$exp" "$d/out"; then echo "FAIL $name: output"; fail=$((fail + 1)); continue; fi
  if [ -f "$c/expected.stderr" ]; then
    sed '$d' "$d/err" >"$d/err.lines" # the last line is the summary, with a time in it
    if ! diff -u "$c/expected.stderr" "$d/err.lines"; then echo "FAIL $name: stderr"; fail=$((fail + 1)); fi
  fi
done
echo "$n pq-eval cases run, $fail failed"
[ "$fail" -eq 0 ] || exit 1

fx=$PQ_TOP/tests/fixtures
usage() { # expected exit status 2 for these arguments
  rc=0; "$ev" "$@" </dev/null >/dev/null 2>"$d/err" || rc=$?
  [ "$rc" -eq 2 ] || { echo "FAIL: pq-eval $* exited $rc, want 2"; cat "$d/err"; exit 1; }
}
usage "$fx/tuned.quiz.jsonl"
usage -b "$fx/base.quiz.jsonl" --format xml
usage -b "$fx/base.quiz.jsonl" --bootstrap -1
usage -b "$fx/base.quiz.jsonl" --resume "$d/r"
usage -b "$fx/base.quiz.jsonl" -
# no id in every file: fatal
head -n 2 "$fx/base.quiz.jsonl" >"$d/b2"; tail -n 2 "$fx/tuned.quiz.jsonl" >"$d/t2"
rc=0; "$ev" -b "$d/b2" "$d/t2" >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 3 ] || { echo "FAIL: disjoint files exited $rc, want 3"; exit 1; }
# empty files: the same, with no sorting of nothing (UBSan: null pointer to qsort)
: >"$d/empty"
rc=0; "$ev" -b "$d/empty" "$d/empty" >/dev/null 2>"$d/err" || rc=$?
[ "$rc" -eq 3 ] && grep -q "no id is in every file" "$d/err" || { echo "FAIL: empty files exited $rc, want 3"; cat "$d/err"; exit 1; }
# the bootstrap interval is seeded: same seed, same output; it brackets the win rate
"$ev" -b "$fx/base.quiz.jsonl" --seed 5 "$fx/tuned.quiz.jsonl" >"$d/s5a" 2>/dev/null
"$ev" -b "$fx/base.quiz.jsonl" --seed 5 "$fx/tuned.quiz.jsonl" >"$d/s5b" 2>/dev/null
cmp -s "$d/s5a" "$d/s5b" || { echo "FAIL: same seed, different output"; exit 1; }
echo "pq-eval usage checks ok"
