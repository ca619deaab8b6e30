#!/bin/sh
# help.sh: every tool's --help is whole and says each thing once: one
# "Exit status" line, "Common options" at most once (pq-merge, which has
# none of them, not at all), only options the tool takes, and no reference
# to a file the repository does not ship (the method is in pq(7)).
set -eu
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
fail=0
for t in "$PQ_BIN"/pq-*; do
  name=$(basename "$t")
  "$t" --help >"$d/help" 2>&1 || { echo "FAIL $name --help: exit $?"; fail=1; continue; }
  n=$(grep -c '^Exit status' "$d/help" || :)
  [ "$n" -eq 1 ] || { echo "FAIL $name --help: $n 'Exit status' lines"; fail=1; }
  n=$(grep -c '^Common options' "$d/help" || :)
  [ "$n" -le 1 ] || { echo "FAIL $name --help: 'Common options' $n times"; fail=1; }
  ! grep -n 'method\.md' "$d/help" || { echo "FAIL $name --help cites method.md, not in the repository"; fail=1; }
done
# pq-merge reads no JSONL: none of the line tools' options
"$PQ_BIN/pq-merge" --help >"$d/help"
for o in --rejects --resume --output --seed --progress; do
  ! grep -q -- "$o" "$d/help" || { echo "FAIL pq-merge --help lists $o"; fail=1; }
  rc=0
  "$PQ_BIN/pq-merge" "$o" x -m a -a b -o c >/dev/null 2>"$d/err" || rc=$?
  [ "$rc" -eq 2 ] || { echo "FAIL pq-merge $o: exit $rc, want 2 (usage)"; cat "$d/err"; fail=1; }
done
exit $fail
