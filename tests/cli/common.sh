#!/bin/sh
# common.sh: what every tool promises: --help and --version exit 0 and say
# something, a bad option exits 2 with a hint, a missing input file exits 3.
set -eu
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
n=0
for t in "$PQ_BIN"/pq-*; do
  name=$(basename "$t")
  "$t" --help >"$d/help" 2>&1 || { echo "$name --help failed"; exit 1; }
  grep -q "Usage\|usage" "$d/help" || { echo "$name --help has no usage line"; exit 1; }
  # the JSONL tools' common options; pq-merge reads no JSONL and has none
  [ "$name" = pq-merge ] || grep -q -- "--rejects" "$d/help" || { echo "$name --help lacks the common options"; exit 1; }
  "$t" --version >"$d/ver" 2>&1 || { echo "$name --version failed"; exit 1; }
  grep -q "^$name [0-9]" "$d/ver" || { echo "$name --version: $(cat "$d/ver")"; exit 1; }
  rc=0; "$t" --no-such-option </dev/null >"$d/out" 2>"$d/err" || rc=$?
  [ "$rc" -eq 2 ] || { echo "$name with a bad option exited $rc, want 2"; exit 1; }
  grep -q -- "--help" "$d/err" || { echo "$name: no hint on a bad option"; cat "$d/err"; exit 1; }
  n=$((n + 1))
done
[ "$n" -gt 0 ] || { echo "no tools built"; exit 1; }
echo "$n tools checked"
