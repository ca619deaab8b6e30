#!/bin/sh
# write-errors.sh: where output goes wrong. A closed stdout pipe (| head)
# ends a tool quietly: no "write error", no summary, status 0 or 141 (128 +
# SIGPIPE, as any Unix tool a closed pipe ends). A full disk is an error: on
# --rejects (the rejected line would be lost) and on --help's output alike.
set -eu
. "$PQ_TOP/tests/lib-fake.sh"
d=$(mktemp -d)
trap 'fake_stop; rm -rf "$d"' EXIT
fake_start
"$PQ_PY" - "$PQ_TOP/tests/fixtures" "$d" <<'PY'
import json, sys
f, d = sys.argv[1], sys.argv[2]
quiz = [json.loads(l) for l in open(f + "/quiz.jsonl")]
arts = [json.loads(l) for l in open(f + "/articles.jsonl")]
with open(d + "/quiz.jsonl", "w") as o:
    for k in range(100):
        for q in quiz:
            o.write(json.dumps(dict(q, id="%s-%d" % (q["id"], k))) + "\n")
with open(d + "/arts.jsonl", "w") as o:
    for k in range(40):
        for a in arts:
            o.write(json.dumps(dict(a, id="%s-%d" % (a["id"], k))) + "\n")
PY
closed() { # name, command...: its stdout read by head -n 1
  name=$1; shift
  { rc=0; "$@" 2>"$d/err" || rc=$?; echo $rc >"$d/rc"; } | head -n 1 >/dev/null
  rc=$(cat "$d/rc")
  [ "$rc" -eq 0 ] || [ "$rc" -eq 141 ] || { echo "$name | head: exit $rc, want 0 or 141"; cat "$d/err"; exit 1; }
  [ ! -s "$d/err" ] || { echo "$name | head: said something:"; cat "$d/err"; exit 1; }
}
closed pq-pair "$PQ_BIN/pq-pair" --no-progress "$d/quiz.jsonl"
closed pq-summarize "$PQ_BIN/pq-summarize" --model p -n 4 --no-progress "$d/arts.jsonl"
closed pq-summarize-unordered "$PQ_BIN/pq-summarize" --model p -n 4 --unordered --no-progress "$d/arts.jsonl"

# --rejects on a full disk: exit 3 and why, not a silently lost line.
printf '%s\n' '{"id": "x", not json' >"$d/bad.jsonl"
rc=0
"$PQ_BIN/pq-pair" --rejects /dev/full "$d/bad.jsonl" >/dev/null 2>"$d/err" || rc=$?
[ $rc -eq 3 ] || { echo "--rejects /dev/full: exit $rc, want 3"; cat "$d/err"; exit 1; }
grep -q -- "--rejects /dev/full: write error: No space left" "$d/err" || { echo "--rejects /dev/full:"; cat "$d/err"; exit 1; }

# --help and --version on a full disk: an error, for every tool.
for t in "$PQ_BIN"/pq-*; do
  for o in --help --version; do
    rc=0; "$t" $o >/dev/full 2>"$d/err" || rc=$?
    [ $rc -eq 3 ] || { echo "$(basename "$t") $o >/dev/full: exit $rc, want 3"; exit 1; }
    grep -q "write error" "$d/err" || { echo "$(basename "$t") $o >/dev/full: not said"; exit 1; }
  done
done
echo ok
