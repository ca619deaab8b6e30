#!/bin/sh
# llm-order.sh: with -j 8 the output keeps the input order even when an
# early line is slow; --unordered writes the fast ones first. Also: a
# request's connection is reused (the server sees few connections).
set -eu
. "$PQ_TOP/tests/lib-fake.sh"
d=$(mktemp -d)
trap 'fake_stop; rm -rf "$d"' EXIT
fake_start --log "$d/log"
s=$PQ_BIN/pq-summarize

i=0
while [ $i -lt 30 ]; do
  m=''
  [ $i -eq 1 ] && m='[[fake:slow=1.2]]'
  printf '{"id": "o%02d", "n": %d, "article": "Line %d starts here. The mayor opened a new park on Friday. Children played on the swings. The park cost two million dollars. %s"}\n' $i $i $i "$m"
  i=$((i + 1))
done >"$d/in.jsonl"

"$s" --model p -j 8 "$d/in.jsonl" >"$d/ordered" 2>"$d/err"
grep -q '30 in, 30 done, 0 rejected, 30 out' "$d/err" || { cat "$d/err"; exit 1; }
"$s" --model p -j 8 -n 2 --unordered "$d/in.jsonl" >"$d/unordered" 2>"$d/err2"
"$PQ_PY" - "$d/ordered" "$d/unordered" <<'EOF'
import json, sys
o = [json.loads(l) for l in open(sys.argv[1])]
assert [x["id"] for x in o] == ["o%02d" % i for i in range(30)], [x["id"] for x in o]
u = [json.loads(l) for l in open(sys.argv[2])]
keys = [(x["id"], x["sample"]) for x in u]
assert sorted(keys) == [("o%02d" % i, k) for i in range(30) for k in (0, 1)], keys
assert keys.index(("o01", 0)) >= 40, ("the slow line is not among the last", keys)
EOF
# Keep-alive: the 60 requests of the two runs went over at most 8 + 8 connections.
"$PQ_PY" -c '
import json, sys
c = {json.loads(l)["conn"] for l in open(sys.argv[1])}
assert len(c) <= 16, ("connections not reused", len(c)); print(len(c), "connections")
' "$d/log"
# More finished lines than the reorder ring holds (64 at -j 2) behind a slow
# first one: reading waits, and the order is still kept.
"$PQ_PY" -c '
import json
for i in range(150):
    print(json.dumps({"id": "w%03d" % i, "article": "Line %d. The river rose overnight. Roads were shut. Schools stayed open. %s" % (i, "[[fake:slow=1]]" if i == 0 else "")}))
' >"$d/many.jsonl"
n0=$(wc -l <"$d/log")
"$s" --model p -j 2 "$d/many.jsonl" >"$d/many.out" 2>"$d/err3"
"$PQ_PY" -c '
import json, sys
ids = [json.loads(l)["id"] for l in open(sys.argv[1])]
assert ids == ["w%03d" % i for i in range(150)], ids[:5]
log = [json.loads(l) for l in open(sys.argv[2])][int(sys.argv[3]):]
t0 = log[0]["t"]  # the slow one, first
early = sum(r["t"] < t0 + 0.9 for r in log)
assert 60 <= early <= 72, ("the ring (64) and the limit (4) bound what is read ahead", early)
' "$d/many.out" "$d/log" $n0
echo ok
