#!/bin/sh
# install.sh: make install puts every tool, the user scripts and the man
# pages under PREFIX, and the installed scripts find the installed tools.
set -eu
[ "$PQ_FLAVOR" = rel ] || { echo "release build only"; exit 77; }
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
make -s -C "$PQ_TOP" install PREFIX="$d/usr" >"$d/log" 2>&1 || { cat "$d/log"; exit 1; }
for t in "$PQ_BIN"/pq-*; do
  name=$(basename "$t")
  [ -x "$d/usr/bin/$name" ] || { echo "not installed: $name"; exit 1; }
  [ -f "$d/usr/share/man/man1/$name.1" ] || { echo "no man page installed for $name"; exit 1; }
done
for s in pq-pipeline pq-iterate gen-prefs plot-training plot-eval; do
  [ -x "$d/usr/bin/$s" ] || { echo "script not installed: $s"; exit 1; }
done
[ -f "$d/usr/share/man/man7/pq.7" ] || { echo "pq.7 not installed"; exit 1; }
PATH="$d/usr/bin:/usr/bin:/bin" pq-pipeline --help >/dev/null
PATH="$d/usr/bin:/usr/bin:/bin" pq-quiz --version | grep -q '^pq-quiz '
echo "installed $(ls "$d/usr/bin" | wc -l) programs"
