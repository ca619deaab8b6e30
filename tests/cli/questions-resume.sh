#!/bin/sh
# questions-resume.sh: pq-questions killed mid-run (Ctrl-C, then kill -9)
# and resumed with --resume loses and duplicates nothing; Ctrl-C writes the
# lines that finished behind a slow one.
set -eu
. "$PQ_TOP/tests/lib-fake.sh"
d=$(mktemp -d)
trap 'fake_stop; rm -rf "$d"' EXIT
fake_start --latency 0.05 --log "$d/log"
q=$PQ_BIN/pq-questions
"$PQ_PY" - "$PQ_TOP/tests/fixtures/questions.jsonl" "$d/in.jsonl" <<'EOF'
import json, sys
arts = [json.loads(l) for l in open(sys.argv[1])]
with open(sys.argv[2], "w") as f:
    for k in range(40):
        b = arts[k % len(arts)]
        slow = " [[fake:slow=1.5]]" if k == 0 else ""
        f.write(json.dumps({"id": "%s-%d" % (b["id"][:8], k), "article": b["article"] + " Case %d." % k + slow}) + "\n")
EOF
# waits until FILE has at least N lines (10 s at most)
wait_lines() {
  i=0
  while [ "$(cat "$1" 2>/dev/null | wc -l)" -lt "$2" ]; do
    i=$((i + 1)); [ $i -lt 200 ] || { echo "timed out waiting for $2 lines in $1"; exit 1; }
    sleep 0.05
  done
}

# 1. Ctrl-C while the first (slow) line holds the ordered output back: the
# lines that finished behind it are written anyway, and the exit is 130.
"$q" --model judge -j 4 --resume "$d/out" "$d/in.jsonl" 2>"$d/err1" &
pid=$!
wait_lines "$d/log" 10
kill -INT $pid
rc=0; wait $pid || rc=$?
[ $rc -eq 130 ] || { echo "Ctrl-C: exit $rc, want 130"; cat "$d/err1"; exit 1; }
n1=$(wc -l <"$d/out")
[ "$n1" -ge 5 ] || { echo "Ctrl-C lost finished lines: $n1 written"; cat "$d/err1"; exit 1; }
[ "$n1" -lt 40 ] || { echo "the run was not interrupted"; exit 1; }
grep -q -- "--resume" "$d/err1" || { echo "no hint to resume"; cat "$d/err1"; exit 1; }

# 2. kill -9 mid-run: a partial last line at worst, dropped by the next run.
"$q" --model judge -j 2 --unordered --resume "$d/out" "$d/in.jsonl" 2>"$d/err2" &
pid=$!
wait_lines "$d/out" $((n1 + 4))
kill -9 $pid
wait $pid || :
n2=$(wc -l <"$d/out")
[ "$n2" -lt 40 ] || { echo "the second run was not killed"; exit 1; }

# 3. The rest, then every article exactly once.
"$q" --model judge -j 8 --resume "$d/out" "$d/in.jsonl" 2>"$d/err3"
grep -q "skipped" "$d/err3" || { echo "no resumed lines reported"; cat "$d/err3"; exit 1; }
"$PQ_PY" - "$d/in.jsonl" "$d/out" <<'EOF'
import collections, json, sys
ids = [json.loads(l)["id"] for l in open(sys.argv[1])]
got = collections.Counter(json.loads(l)["id"] for l in open(sys.argv[2]))
assert sorted(got) == sorted(ids), set(ids) ^ set(got)
assert max(got.values()) == 1, [k for k, v in got.items() if v > 1]
EOF
echo ok
