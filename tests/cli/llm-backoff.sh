#!/bin/sh
# llm-backoff.sh: retries back off exponentially (gaps grow from ~0.5 s),
# honour retry-after-ms and Retry-After, do not hold up other requests, and
# stop after --retries; --timeout cuts slow replies; --rpm spaces requests.
# The gaps are read from the fake server's request log.
set -eu
. "$PQ_TOP/tests/lib-fake.sh"
d=$(mktemp -d)
trap 'fake_stop; rm -rf "$d"' EXIT
fake_start --log "$d/log"
s=$PQ_BIN/pq-summarize

mk() { # id marker
  printf '{"id": "%s", "article": "The council met on Monday. It voted to close the old bridge for repairs. Traffic will move to the ferry. The work takes a year. Residents were told by letter. %s"}\n' "$1" "$2"
}
{ mk b500 '[[fake:500x2]]'; mk ok1 ''; mk ok2 ''; mk r429 '[[fake:429]]'; mk ok3 ''; mk r429s '[[fake:429s]]'
  mk ok4 ''; mk dead '[[fake:500x9]]'; mk ok5 ''; } >"$d/in.jsonl"
rc=0
"$s" --model p -j 1 --retries 2 --rejects "$d/rej" "$d/in.jsonl" >"$d/out" 2>"$d/err" || rc=$?
[ $rc -eq 1 ] || { echo "exit $rc, want 1"; cat "$d/err"; exit 1; }
grep -q '^pq-summarize: line 8 (id dead): HTTP 500: fake internal error (after 3 attempts)$' "$d/err" ||
  { echo "no give-up message:"; cat "$d/err"; exit 1; }
grep -q '9 in, 8 done, 1 rejected, 8 out.* requests ([^,]*, 6 retries)' "$d/err" || { echo "bad counts:"; cat "$d/err"; exit 1; }

"$PQ_PY" - "$d/log" "$d/in.jsonl" <<'EOF'
import json, sys
log = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for i, r in enumerate(log):
    by.setdefault(r["key"], []).append((r["t"], r["status"], i))
def attempts(status_seq):
    hits = [v for v in by.values() if [s for _, s, _ in v] == status_seq]
    assert len(hits) == 1, (status_seq, by)
    return hits[0]
def gaps(v):
    return [round(b[0] - a[0], 3) for a, b in zip(v, v[1:])]
g = gaps(attempts([500, 500, 200]))
# 0.5 s then 1 s, each with +-25% jitter (upper bounds leave room for a loaded machine)
assert 0.37 <= g[0] <= 0.9 and 0.74 <= g[1] <= 1.6 and g[1] > g[0], ("backoff 0.5 s then 1 s", g)
g = gaps(attempts([500, 500, 500]))
assert 0.37 <= g[0] <= 0.9 and 0.74 <= g[1] <= 1.6, g
g = sorted(gaps(v)[0] for v in by.values() if [s for _, s, _ in v] == [429, 200])
assert len(g) == 2, g
assert 0.1 <= g[0] < 0.36, ("retry-after-ms: 100 is honoured, not the 0.5 s backoff", g)
assert 1.0 <= g[1] < 1.7, ("Retry-After: 1 is honoured", g)
# With -j 1, other requests run while one backs off.
v = attempts([500, 500, 200])
between = [r for r in log[v[0][2] + 1:v[1][2]] if r["status"] == 200]
assert between, "nothing was sent during the backoff"
EOF

# A reply slower than --timeout: cut, retried once, then rejected, quickly.
mk slow '[[fake:slow=3]]' >"$d/slow.jsonl"
t0=$(date +%s)
rc=0
"$s" --model p --timeout 1 --retries 1 --rejects "$d/rej2" "$d/slow.jsonl" >"$d/out2" 2>"$d/err2" || rc=$?
dt=$(( $(date +%s) - t0 ))
[ $rc -eq 1 ] || { echo "slow: exit $rc, want 1"; cat "$d/err2"; exit 1; }
[ ! -s "$d/out2" ] && cmp -s "$d/rej2" "$d/slow.jsonl" || { echo "slow: not rejected whole"; exit 1; }
grep -q 'line 1 (id slow): timed out after 1s (after 2 attempts)' "$d/err2" || { cat "$d/err2"; exit 1; }
[ $dt -le 4 ] || { echo "slow: took ${dt}s"; exit 1; }

# --rpm 120: one request per 0.5 s after a burst of one second's worth.
: >"$d/log"
for i in 1 2 3 4 5 6; do mk "r$i" ''; done >"$d/rpm.jsonl"
"$s" --model p -j 8 --rpm 120 "$d/rpm.jsonl" >"$d/out3" 2>"$d/err3"
"$PQ_PY" - "$d/log" <<'EOF'
import json, sys
t = sorted(json.loads(l)["t"] for l in open(sys.argv[1]))
assert len(t) == 6, t
span = t[-1] - t[0]
assert 1.3 <= span <= 2.5, ("6 requests at 2/s after a burst of 3 take ~1.5 s", span)
EOF
echo ok
