#!/bin/sh
# llm-n.sh: n samples per article three ways: one request with "n" (server
# n-mode), n requests with seeds seed+k (client n-mode), and a server that
# refuses n > 1 like llama.cpp: the client falls back to client mode, says
# so once, and still delivers n samples per article.
set -eu
. "$PQ_TOP/tests/lib-fake.sh"
d=$(mktemp -d)
trap 'fake_stop; rm -rf "$d"' EXIT
s=$PQ_BIN/pq-summarize
a=$PQ_TOP/tests/fixtures/articles.jsonl

fake_start --log "$d/log.server"
"$s" --model p -n 4 "$a" >"$d/server.jsonl" 2>"$d/err.server"
"$s" --model p -n 4 --n-mode client "$a" >"$d/client.jsonl" 2>"$d/err.client"
fake_stop

fake_start --refuse-n --log "$d/log.refuse"
"$s" --model p -n 4 -j 2 "$a" >"$d/refuse.jsonl" 2>"$d/err.refuse"
[ "$(grep -c 'refuses n > 1' "$d/err.refuse")" -eq 1 ] || { echo "fallback not said once:"; cat "$d/err.refuse"; exit 1; }
grep -q 'only n = 1 is supported' "$d/err.refuse" || { cat "$d/err.refuse"; exit 1; }

"$PQ_PY" - "$d" "$a" <<'EOF'
import json, sys
d, arts = sys.argv[1], [json.loads(l)["id"] for l in open(sys.argv[2])]
def out(name):
    o = [json.loads(l) for l in open("%s/%s.jsonl" % (d, name))]
    assert [(x["id"], x["sample"]) for x in o] == [(i, k) for i in arts for k in range(4)], name
    return o
def log(name):
    return [json.loads(l) for l in open("%s/log.%s" % (d, name))]
srv, cli, ref = out("server"), out("client"), out("refuse")
ls, lr = log("server"), log("refuse")  # log.server: the server-mode run, then the client-mode one
assert [r["n"] for r in ls[:3]] == [4, 4, 4], ls
assert all(r["n"] == 1 for r in ls[3:]) and len(ls) == 15, ls
# Client mode: seeds seed+k; the same seed as the server-mode request.
base = sorted(r["seed"] for r in ls[:3])
got = sorted(r["seed"] for r in ls[3:])
assert got == sorted(b + k for b in base for k in range(4)), (got, base)
# Samples of one article differ (the fake picks sentences by seed and index).
for o in (srv, cli, ref):
    for i in arts:
        texts = [x["summary"] for x in o if x["id"] == i]
        assert len(set(texts)) >= 2, texts
# Refused: one 400 for an n=4 request, then only n=1 requests, 4 per article.
assert [r["status"] for r in lr if r["n"] > 1] == [400] * len([r for r in lr if r["n"] > 1]), lr
assert 1 <= len([r for r in lr if r["n"] > 1]) <= 2, "fallback is for the rest of the run"
assert len([r for r in lr if r["n"] == 1 and r["status"] == 200]) == 12, lr
EOF
echo ok
