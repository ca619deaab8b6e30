#!/bin/sh
# same-file.sh: an input that is also the file a run writes (--output,
# --rejects, --resume, under any name) is refused with exit 2 before
# anything is truncated or appended; a missing input is exit 3 and says so.
set -eu
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
cp "$PQ_TOP/tests/fixtures/quiz.jsonl" "$d/in.jsonl"
cp "$d/in.jsonl" "$d/orig"
ln "$d/in.jsonl" "$d/link.jsonl"
mkdir "$d/sub"
check() { # what, args...
  what=$1; shift
  rc=0
  "$PQ_BIN/pq-pair" "$@" >"$d/out" 2>"$d/err" </dev/null || rc=$?
  [ $rc -eq 2 ] || { echo "$what: exit $rc, want 2"; cat "$d/err"; exit 1; }
  grep -q "is also an input\|is also the" "$d/err" || { echo "$what: no reason:"; cat "$d/err"; exit 1; }
  cmp -s "$d/in.jsonl" "$d/orig" || { echo "$what: the input was changed"; exit 1; }
}
check "--output in" --output "$d/in.jsonl" "$d/in.jsonl"
check "--rejects in" --rejects "$d/in.jsonl" "$d/in.jsonl"
check "--resume in" --resume "$d/in.jsonl" "$d/in.jsonl"
check "--output by another name" --output "$d/sub/../in.jsonl" "$d/in.jsonl"
check "--output a hard link" --output "$d/link.jsonl" "$d/in.jsonl"
check "--rejects the second input" --rejects "$d/in.jsonl" "$PQ_TOP/tests/fixtures/quiz.jsonl" "$d/in.jsonl"
rc=0
"$PQ_BIN/pq-pair" --output "$d/in.jsonl" <"$d/in.jsonl" >"$d/out" 2>"$d/err" || rc=$?
[ $rc -eq 2 ] || { echo "--output is stdin: exit $rc, want 2"; exit 1; }
cmp -s "$d/in.jsonl" "$d/orig" || { echo "--output is stdin: the input was changed"; exit 1; }
cp "$d/orig" "$d/out.jsonl"
check "--rejects is the --output" --output "$d/out.jsonl" --rejects "$d/out.jsonl" "$d/in.jsonl"
# Different files are fine.
"$PQ_BIN/pq-pair" --output "$d/o.jsonl" --rejects "$d/r.jsonl" "$d/in.jsonl" 2>"$d/err" || { cat "$d/err"; exit 1; }
[ -s "$d/o.jsonl" ] || { echo "no output"; exit 1; }

# A missing input: exit 3, its name and why, before any work.
for t in pq-pair pq-dpo pq-eval; do
  rc=0
  case $t in
  pq-dpo) "$PQ_BIN/$t" -m "$d" --no-save "$d/nonexistent.jsonl" >"$d/out" 2>"$d/err" || rc=$? ;;
  pq-eval) "$PQ_BIN/$t" -b "$d/in.jsonl" "$d/nonexistent.jsonl" >"$d/out" 2>"$d/err" || rc=$? ;;
  *) "$PQ_BIN/$t" "$d/nonexistent.jsonl" >"$d/out" 2>"$d/err" || rc=$? ;;
  esac
  [ $rc -eq 3 ] || { echo "$t missing input: exit $rc, want 3"; cat "$d/err"; exit 1; }
  grep -q "nonexistent.jsonl: No such file" "$d/err" || { echo "$t missing input:"; cat "$d/err"; exit 1; }
done
echo ok
