#!/bin/sh
# llm-slow-input.sh: with input arriving slowly (a line every 0.35 s, as from
# an upstream pq tool in a pipe), pq-summarize sends each request as its line
# arrives and writes each reply as it finishes, not in bursts once 2*jobs
# lines are pending or input ends.
set -eu
. "$PQ_TOP/tests/lib-fake.sh"
d=$(mktemp -d)
trap 'fake_stop; rm -rf "$d"' EXIT
fake_start
"$PQ_PY" - "$PQ_BIN/pq-summarize" "$PQ_TOP/tests/fixtures/articles.jsonl" <<'PYEOF'
import json, subprocess, sys, threading, time
tool, arts = sys.argv[1], [json.loads(l) for l in open(sys.argv[2])]
n, gap = 12, 0.35
p = subprocess.Popen([tool, "--model", "m", "-j", "4"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                     stderr=subprocess.DEVNULL)
sent = []
def produce():
    for i in range(n):
        a = arts[i % len(arts)]
        sent.append(time.time())
        p.stdin.write((json.dumps({"id": "s%02d" % i, "article": a["article"]}) + "\n").encode())
        p.stdin.flush()
        time.sleep(gap)
    p.stdin.close()
th = threading.Thread(target=produce)
th.start()
got = []
for line in p.stdout:
    got.append((time.time(), json.loads(line)["id"]))
th.join()
assert p.wait() == 0, "exit status %d" % p.returncode
assert [g[1] for g in got] == ["s%02d" % i for i in range(n)], got
end = sent[-1]
lag = [g[0] - s for g, s in zip(got, sent)]
print("lag per line: " + " ".join("%.2f" % x for x in lag))
# Each output well before the producer is done: at most 1.5 s behind its input.
assert got[0][0] - sent[0] < 1.5 and end - got[0][0] >= 3.0, "first output late: %.2fs" % (got[0][0] - sent[0])
for i in range(n - 1):
    assert lag[i] < 1.5, "line %d written %.2fs after it was read" % (i, lag[i])
PYEOF
