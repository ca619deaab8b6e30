#!/bin/sh
# iterate.sh: scripts/pq-iterate, 2 rounds on the fake server and the tiny
# model: round 2 reuses round 1's questions, split and base eval, samples from
# round 1's tuned policy, trains from its adapter with it as the reference
# (so DPO's first loss is ln 2 again), or with the base as reference; a rerun
# skips everything; the per-round table and SVG are written.
set -eu
command -v bash >/dev/null 2>&1 || { echo "FAIL: bash not installed (pq's scripts need it)"; exit 1; }
. "$PQ_TOP/tests/lib-fake.sh"
d=$(mktemp -d)
trap 'fake_stop; rm -rf "$d"' EXIT
fake_start --log "$d/log"
PATH=$PQ_BIN:$PATH
export PATH
head -n 4 "$PQ_TOP/data/cnndm-sample.jsonl" >"$d/in.jsonl"

it() { # it WORKDIR [pq-iterate options]
  rc=0
  wd=$1
  shift
  "$PQ_TOP/scripts/pq-iterate" --rounds 2 -w "$wd" --seed 6 --tuned-model 'tuned-{round}' "$@" \
    --tiny --judge-url "$FAKE_URL" --judge-model judge --policy-url "$FAKE_URL" --policy-model policy \
    -n 4 --eval-frac 0.25 --valid-frac 0.25 -t 1 --max-length 384 --dpo-opt --lr --dpo-opt 1e-3 --dpo-opt --lora-dropout --dpo-opt 0 \
    "$d/in.jsonl" >"$d/out" 2>"$d/err" || rc=$?
}
it "$d/w"
[ $rc -eq 0 ] || { echo "run 1: exit $rc"; cat "$d/err"; exit 1; }
w=$d/w
for f in questions.jsonl eval.ids train.questions.jsonl eval.questions.jsonl base.quiz.jsonl; do
  cmp "$w/round-1/$f" "$w/round-2/$f" || { echo "round 2 has another $f"; exit 1; }
done
grep -q 'round-2/questions.jsonl)' "$d/err" && grep -q '\[2/13\] split: done already' "$d/err" ||
  { echo "round 2 did not reuse round 1's questions"; exit 1; }
"$PQ_PY" - "$w" <<'EOF'
import json, math, sys
w = sys.argv[1]
def rows(p):
    return [json.loads(l) for l in open(w + "/" + p)]
# who wrote what: round 2 samples from round 1's tuned policy
assert {o["policy"] for o in rows("round-1/summaries.jsonl")} == {"policy"}
assert {o["policy"] for o in rows("round-2/summaries.jsonl")} == {"tuned-1"}
assert {o["policy"] for o in rows("round-2/tuned.summaries.jsonl")} == {"tuned-2"}
assert {o["policy"] for o in rows("round-2/base.summaries.jsonl")} == {"policy"}
for k in (1, 2):
    m = [o for o in rows("round-%d/metrics.jsonl" % k) if o.get("split") != "valid"]
    # the reference is the policy DPO starts from (no dropout): the first loss is ln 2
    assert abs(m[0]["loss"] - math.log(2)) < 1e-4, (k, m[0])
    e = rows("round-%d/eval.jsonl" % k)
    assert e[0]["model"] == "base.quiz.jsonl" and e[0]["baseline"] and e[1]["model"] == "tuned.quiz.jsonl"
lines = open(w + "/rounds.txt").read().splitlines()
assert [l.split()[0] for l in lines] == ["round", "base", "1", "2"], lines
EOF
# round 2's reference log-probs are those of base + round 1's adapter
pq-logp -t 1 --max-length 384 -m "$w/round-1/tiny-model" --adapter "$w/round-1/adapter" \
  "$w/round-2/pairs.jsonl" >"$d/ref-prev.jsonl" 2>/dev/null
diff -u "$w/round-2/ref.jsonl" "$d/ref-prev.jsonl"
if command -v xmllint >/dev/null 2>&1; then xmllint --noout "$w/rounds.svg"; fi
[ "$(grep -c '<circle' "$w/rounds.svg")" -eq 9 ] || { echo "rounds.svg: want 3 series of 3 points"; exit 1; }
diff -u "$w/rounds.txt" "$d/out"

# A rerun does nothing.
n1=$(wc -l <"$d/log")
it "$d/w"
[ $rc -eq 0 ] || { echo "rerun: exit $rc"; cat "$d/err"; exit 1; }
[ "$(grep -c 'done already' "$d/err")" -eq 26 ] || { echo "rerun: not every stage skipped"; cat "$d/err"; exit 1; }
[ "$(wc -l <"$d/log")" -eq "$n1" ] || { echo "rerun sent requests"; exit 1; }

# --reference base: round 2's reference is the base model again (round 1
# taken as done). Script logic only: once, in the release run.
if [ "${PQ_FLAVOR:-rel}" = rel ]; then
mkdir "$d/b"
cp -pR "$w/round-1" "$d/b/"
it "$d/b" --reference base
[ $rc -eq 0 ] || { echo "--reference base: exit $rc"; cat "$d/err"; exit 1; }
grep -q 'round 1 of 2' "$d/err" && ! grep -q 'round-1/questions.jsonl$' "$d/err" || { echo "--reference base: round 1 redone"; exit 1; }
pq-logp -t 1 --max-length 384 -m "$w/round-1/tiny-model" "$d/b/round-2/pairs.jsonl" >"$d/ref-base.jsonl" 2>/dev/null
diff -u "$d/b/round-2/ref.jsonl" "$d/ref-base.jsonl"
fi

rc=0; "$PQ_TOP/scripts/pq-iterate" --rounds 0 "$d/in.jsonl" >/dev/null 2>&1 || rc=$?
[ $rc -eq 2 ] || { echo "--rounds 0: exit $rc, want 2"; exit 1; }
rc=0; "$PQ_TOP/scripts/pq-iterate" --reference other "$d/in.jsonl" >/dev/null 2>&1 || rc=$?
[ $rc -eq 2 ] || { echo "--reference other: exit $rc, want 2"; exit 1; }
echo ok
