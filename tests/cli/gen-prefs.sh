#!/bin/sh
# gen-prefs.sh: scripts/gen-prefs over two fake judges (--hosts, GNU
# parallel): every article and every summary ends in a stage's output or its
# rejects, exactly once; a rerun after failures (a dead judge stops its
# stage as unreachable) resumes and finishes the work.
set -eu
command -v parallel >/dev/null 2>&1 || { echo "FAIL: GNU parallel not installed (scripts/setup installs it)"; exit 1; }
command -v bash >/dev/null 2>&1 || { echo "FAIL: bash not installed (pq's scripts need it)"; exit 1; }
. "$PQ_TOP/tests/lib-fake.sh"
d=$(mktemp -d)
trap 'fake_stop; rm -rf "$d"' EXIT
HOME=$d # parallel keeps a few files in ~/.parallel
export HOME
fake_start --log "$d/log1"; url1=$FAKE_URL
fake_start --log "$d/log2"; url2=$FAKE_URL
PATH=$PQ_BIN:$PATH
export PATH
"$PQ_PY" - "$PQ_TOP/tests/fixtures/questions.jsonl" "$d/in.jsonl" <<'EOF'
import json, sys
arts = [json.loads(l) for l in open(sys.argv[1])]
lines = []
for k in range(10):
    b = arts[k % len(arts)]
    mark = " [[fake:malformed]]" if k == 6 else ""
    lines.append(json.dumps({"id": "%s-%d" % (b["id"][:8], k), "article": b["article"] + " Case %d." % k + mark}))
lines.insert(3, '{"id": "broken", ')
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
EOF
gp() { # gen-prefs with the options of every run here
  rc=0
  "$PQ_TOP/scripts/gen-prefs" --workdir "$d/w" --judge-model judge --policy-model policy --policy-url "$url1" \
    -n 3 -j 2 --chunk 2 --seed 5 "$@" "$d/in.jsonl" >"$d/pairs" 2>"$d/err" || rc=$?
}

# 1. One judge is dead (connection refused, no retries): its workers stop as
# the server is unreachable (exit 3) rather than reject their chunks; the
# run fails in that stage, nothing is lost or rejected for it, and the
# rerun below does those chunks.
printf '%s\nhttp://127.0.0.1:1/v1\n' "$url2" >"$d/hosts.bad"
gp --hosts "$d/hosts.bad" --questions-opt --retries --questions-opt 0 --quiz-opt --retries --quiz-opt 0
[ $rc -eq 3 ] || { echo "run 1: exit $rc, want 3"; cat "$d/err"; exit 1; }
grep -q "the server is unreachable" "$d/err" || { echo "run 1: unreachable not said"; cat "$d/err"; exit 1; }
grep -q "questions failed (exit 3); rerun" "$d/err" || { echo "run 1: no rerun hint"; cat "$d/err"; exit 1; }
"$PQ_PY" - "$d/in.jsonl" "$d/w" <<'EOF'
import json, sys
inp, w = open(sys.argv[1]).read().splitlines(), sys.argv[2]
out = open(w + "/questions.jsonl").read().splitlines()
rej = open(w + "/questions.rejects.jsonl").read().splitlines()
ids = [json.loads(l)["id"] for l in out]
assert len(set(ids)) == len(ids) and len(ids) < 9, ids  # the live judge's share, once each
for l in rej:  # only lines bad in themselves: the not-JSON one, the malformed quiz
    assert l in (inp[3], inp[7]), l[:80]
EOF
[ ! -e "$d/w/summaries.jsonl" ] || { echo "run 1: went on past a failed stage"; exit 1; }
check() { # every line of each stage's input once in its output or rejects
  "$PQ_PY" - "$d/in.jsonl" "$d/w" "$1" <<'EOF'
import collections, json, sys
inp, w, final = open(sys.argv[1]).read().splitlines(), sys.argv[2], sys.argv[3] == "final"
def rows(name):
    return open("%s/%s.jsonl" % (w, name)).read().splitlines()
def key(o):
    return (o["id"], o.get("sample"))
for src, name, n in ((inp, "questions", 1), (rows("questions"), "summaries", 3), (rows("summaries"), "quiz", 1)):
    out, rej = rows(name), rows(name + ".rejects")
    got = collections.Counter(key(json.loads(l)) for l in out)
    assert max(got.values(), default=1) == 1, got
    for l in rej:
        assert l in src, (name, l[:80])
    want = collections.Counter()
    for l in src:
        try:
            o = json.loads(l)
        except ValueError:
            continue
        for s in range(n):
            want[(o["id"], s if name == "summaries" else o.get("sample"))] += 1
    rej_keys = collections.Counter()
    for l in rej:
        try:
            rej_keys[key(json.loads(l))] += 1
        except ValueError:
            pass
    # out + rejects = in, for each line (a rejected article stands for its n samples)
    assert len(out) + n * len(rej) == n * len(src), (name, len(out), len(rej), len(src))
    for k in want:
        ink = (k[0], None if name == "summaries" else k[1])
        assert (k in got) != (ink in rej_keys), (name, k)
    if name == "questions":  # output in input order
        ids = [json.loads(l)["id"] for l in out]
        order = [k[0] for k in want if k[0] in ids]
        assert ids == order, (ids, order)
if final:
    q = [json.loads(l)["id"] for l in rows("questions")]
    assert len(q) == 9, q  # all but the not-JSON line and the malformed quiz
    assert len(rows("summaries")) == 27 and len(rows("quiz")) == 27
    assert rows("questions.rejects") == [inp[3], inp[7]], rows("questions.rejects")
    pairs = [json.loads(l) for l in rows("pairs")]
    assert pairs and all(p["id"] in q for p in pairs)
EOF
}

# 2. Both judges alive: the rerun resumes and finishes; the lines done before
# are not asked again.
printf '# two judges\n%s\n\n%s\n' "$url1" "$url2" >"$d/hosts"
n_before=$(cat "$d/log1" "$d/log2" | wc -l)
gp --hosts "$d/hosts"
[ $rc -eq 1 ] || { echo "run 2: exit $rc, want 1"; cat "$d/err"; exit 1; }
check final
diff -u "$d/w/pairs.jsonl" "$d/pairs"
[ -s "$d/log1" ] && [ -s "$d/log2" ] || { echo "a judge got no requests"; exit 1; }

# 3. A third run has nothing left but the malformed quiz (3 attempts).
n_before=$(cat "$d/log1" "$d/log2" | wc -l)
gp --hosts "$d/hosts"
n_after=$(cat "$d/log1" "$d/log2" | wc -l)
[ $((n_after - n_before)) -eq 3 ] || { echo "run 3 sent $((n_after - n_before)) requests, want 3"; exit 1; }
check final

# 4. Without --hosts, and another input in the same work directory is refused.
rm -rf "$d/w"
gp
[ $rc -eq 1 ] || { echo "run 4: exit $rc, want 1"; cat "$d/err"; exit 1; }
check final
head -n 2 "$d/in.jsonl" >"$d/other.jsonl"
rc=0; "$PQ_TOP/scripts/gen-prefs" --workdir "$d/w" --judge-model j --policy-model p "$d/other.jsonl" >/dev/null 2>&1 || rc=$?
[ $rc -eq 2 ] || { echo "another input in the work dir: exit $rc, want 2"; exit 1; }
echo ok
