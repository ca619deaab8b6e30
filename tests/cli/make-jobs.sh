#!/bin/sh
# make-jobs.sh: make check's recursive makes share the top-level make's
# jobs, so none warns "-jN forced in makefile" (a dry run of check, as
# from a shell outside any make, with and without -j).
set -eu
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
for j in "" -j2; do
  env -u MAKEFLAGS -u MAKELEVEL -u MFLAGS make -n $j -C "$PQ_TOP" check >"$d/log" 2>&1 ||
    { echo "make -n $j check failed:"; tail -n 20 "$d/log"; exit 1; }
  if grep -i 'forced in makefile\|jobserver unavailable' "$d/log"; then echo "make -n $j check warns"; exit 1; fi
done
# the top-level make still runs in parallel by itself
env -u MAKEFLAGS -u MAKELEVEL -u MFLAGS make -n -p -C "$PQ_TOP" bin 2>/dev/null | grep -q '^MAKEFLAGS = .*-j' ||
  { echo "make without -j is not parallel"; exit 1; }
