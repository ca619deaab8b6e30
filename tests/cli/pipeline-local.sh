#!/bin/sh
# pipeline-local.sh: the README's quickstart offline: pq-pipeline with no
# model at all, the hub out of reach, so it makes its tiny random model and
# runs judge and policy locally through every stage to the table, saying the
# numbers mean nothing; every stage's output has its schema and counts.
set -eu
command -v bash >/dev/null 2>&1 || { echo "FAIL: bash not installed (pq's scripts need it)"; exit 1; }
"$PQ_BIN/pq-summarize" --help 2>&1 | grep -q -- '--adapter' || { echo "FAIL: pq-summarize has no local generation (--adapter)"; exit 1; }
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
PATH=$PQ_BIN:$PATH
HOME=$d # no model cache
HF_ENDPOINT=http://127.0.0.1:1 # the hub is out of reach: fetch-model fails at once
unset PQ_MODEL_CACHE XDG_CACHE_HOME PQ_OFFLINE
export PATH HOME HF_ENDPOINT
# 4 articles cut to 1000 characters: the tiny model reads them a byte a token
"$PQ_PY" - "$PQ_TOP/data/cnndm-sample.jsonl" "$d/in.jsonl" <<'EOF'
import json, sys
arts = [json.loads(l) for l in open(sys.argv[1])][:4]
open(sys.argv[2], "w").write("".join(json.dumps(dict(a, article=a["article"][:1000])) + "\n" for a in arts))
EOF

rc=0
# (a random model's pairs are chance: its summaries' quiz scores must differ; seed 4 gives pairs on both sides of
# the split with the paged cache's draws)
"$PQ_TOP/scripts/pq-pipeline" -w "$d/w" -n 3 --seed 4 --eval-frac 0.25 --valid-frac 0.25 -t 1 --max-length 384 \
  --judge-opt --max-tokens --judge-opt 256 --dpo-opt --lr --dpo-opt 1e-3 \
  "$d/in.jsonl" >"$d/out" 2>"$d/err" || rc=$?
[ $rc -le 1 ] || { echo "exit $rc"; cat "$d/err"; exit 1; }
grep -q 'tiny random-weight model' "$d/err" && grep -q 'numbers mean nothing' "$d/err" ||
  { echo "no word that the model is a tiny random one"; cat "$d/err"; exit 1; }
[ -f "$d/w/tiny-model/.complete" ] || { echo "no tiny model made"; exit 1; }
"$PQ_PY" - "$d/w" <<'EOF'
import json, math, sys
w = sys.argv[1]
def rows(name):
    try:
        return [json.loads(l) for l in open("%s/%s.jsonl" % (w, name))]
    except FileNotFoundError:
        return []
arts = rows("articles")
q, qr = rows("questions"), rows("questions.rejects")
assert len(q) + len(qr) == len(arts) == 4 and q, (len(q), len(qr))
tq, eq = rows("train.questions"), rows("eval.questions")
assert len(tq) + len(eq) == len(q) and eq and tq
s, sr = rows("summaries"), rows("summaries.rejects")
assert len(s) == 3 * (len(tq) - len(sr)) and s
assert all(o["policy"] and isinstance(o["summary"], str) for o in s)
z, zr = rows("quiz"), rows("quiz.rejects")
assert len(z) + len(zr) == len(s)
assert all(len(o["judge_answers"]) == 5 for o in z)
p, v = rows("pairs"), rows("valid.pairs")
assert p, "no pairs"
r = rows("ref")
assert len(r) + len(rows("ref.rejects")) == len(p)
m = [o for o in rows("metrics") if o.get("split") != "valid"]
assert m and abs(m[0]["loss"] - math.log(2)) < 1e-4, m[:1]
for who in ("base", "tuned"):
    ss = rows(who + ".summaries")
    assert len(ss) + len(rows(who + ".summaries.rejects")) == len(eq)
    assert len(rows(who + ".quiz")) + len(rows(who + ".quiz.rejects")) == len(ss)
e = rows("eval")
assert [x["model"] for x in e] == ["base.quiz.jsonl", "tuned.quiz.jsonl"], e
EOF
grep -q '^tuned.quiz.jsonl ' "$d/out" || { echo "no table"; cat "$d/out"; exit 1; }
echo ok
