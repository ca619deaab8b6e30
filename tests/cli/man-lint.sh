#!/bin/sh
# man-lint.sh: every tool has a man page, and every page passes mandoc's lint
# and cites no method.md.
set -eu
command -v mandoc >/dev/null || { echo "FAIL: mandoc not installed (scripts/setup installs it)"; exit 1; }
status=0
for t in "$PQ_BIN"/pq-*; do
  name=$(basename "$t")
  [ -f "$PQ_TOP/man/$name.1" ] || { echo "no man page for $name"; status=1; }
done
for page in "$PQ_TOP"/man/*.[17]; do
  [ -f "$page" ] || continue
  if ! mandoc -T lint -W warning "$page" >/dev/null 2>&1; then
    mandoc -T lint -W warning "$page" || true
    status=1
  fi
  grep -q '^\.Sh EXAMPLES' "$page" || { echo "$page: no EXAMPLES section"; status=1; }
  # the method is in pq(7): no page sends the reader to a file the repository does not ship
  ! grep -n 'method\.md' "$page" || { echo "$page: cites method.md (not in the repository; see pq(7) METHOD)"; status=1; }
done
exit $status
