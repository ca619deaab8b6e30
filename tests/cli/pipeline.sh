#!/bin/sh
# pipeline.sh: scripts/pq-pipeline end to end with the fake server as remote
# judge and policy and its own tiny random model for pq-logp and pq-dpo: every
# stage's output has its schema and no line is lost (out + rejects = in); a
# rerun skips every stage; a quiz cut short resumes where it stopped.
set -eu
command -v bash >/dev/null 2>&1 || { echo "FAIL: bash not installed (pq's scripts need it)"; exit 1; }
. "$PQ_TOP/tests/lib-fake.sh"
d=$(mktemp -d)
trap 'fake_stop; rm -rf "$d"' EXIT
fake_start --log "$d/log"
PATH=$PQ_BIN:$PATH
export PATH
# 4 articles and one the judge never writes a valid quiz for (rejected).
"$PQ_PY" - "$PQ_TOP/data/cnndm-sample.jsonl" "$d/in.jsonl" <<'EOF'
import json, sys
arts = [json.loads(l) for l in open(sys.argv[1])][:5]
arts[2]["article"] += " [[fake:malformed]]"
open(sys.argv[2], "w").write("".join(json.dumps(a) + "\n" for a in arts))
EOF

pp() {
  rc=0
  "$PQ_TOP/scripts/pq-pipeline" -w "$d/w" --tiny --judge-url "$FAKE_URL" --judge-model judge \
    --policy-url "$FAKE_URL" --policy-model policy --tuned-model tuned -n 4 --seed 6 \
    --eval-frac 0.25 --valid-frac 0.25 -t 1 --max-length 384 --dpo-opt --lr --dpo-opt 1e-3 \
    "$d/in.jsonl" >"$d/out" 2>"$d/err" || rc=$?
}
pp
[ $rc -eq 1 ] || { echo "run 1: exit $rc, want 1 (one article rejected)"; cat "$d/err"; exit 1; }
grep -q 'numbers mean nothing' "$d/err" || { echo "no warning that the tiny model means nothing"; exit 1; }
for s in questions split summaries quiz pairs ref ref.valid dpo base.summaries tuned.summaries base.quiz tuned.quiz eval; do
  grep -q "] $s -> " "$d/err" || { echo "stage $s not announced"; cat "$d/err"; exit 1; }
done
"$PQ_PY" - "$d/w" "$d/in.jsonl" <<'EOF'
import json, math, sys
w, inp = sys.argv[1], sys.argv[2]
def rows(name):
    return [json.loads(l) for l in open("%s/%s" % (w, name))]
arts = [json.loads(l) for l in open(inp)]
q, qr = rows("questions.jsonl"), rows("questions.rejects.jsonl")
assert len(q) + len(qr) == len(arts) == 5 and len(qr) == 1, (len(q), len(qr))
for o in q:
    assert len(o["questions"]) == 5 and all(len(x["choices"]) == 5 and x["answer"] in "ABCDE" for x in o["questions"])
tq, eq = rows("train.questions.jsonl"), rows("eval.questions.jsonl")
ev = open(w + "/eval.ids").read().split()
assert len(tq) + len(eq) == len(q) and len(eq) == 1 and [json.dumps(o["id"]) for o in eq] == ev, (len(tq), ev)
assert not {o["id"] for o in tq} & {o["id"] for o in eq}
s, sr = rows("summaries.jsonl"), rows("summaries.rejects.jsonl")
assert len(s) == 4 * (len(tq) - len(sr)), len(s)
assert all(isinstance(o["summary"], str) and o["sample"] in range(4) and o["prompt"][0]["role"] == "user" for o in s)
z, zr = rows("quiz.jsonl"), rows("quiz.rejects.jsonl")
assert len(z) + len(zr) == len(s), (len(z), len(zr))
assert all(len(o["judge_answers"]) == 5 and 0 <= o["correct"] <= 5 and o["num_words"] >= 0 for o in z)
p, v = rows("pairs.jsonl"), rows("valid.pairs.jsonl")
assert p, "no pairs"
pid, vid = {o["id"] for o in p}, {o["id"] for o in v}
assert not pid & vid and pid | vid <= {o["id"] for o in z}
for o in p + v:
    assert o["chosen"][-1]["role"] == "assistant" and o["rejected"][-1]["role"] == "assistant"
for name, src in (("ref", p), ("ref.valid", v)):
    r, rr = rows(name + ".jsonl"), rows(name + ".rejects.jsonl")
    assert len(r) + len(rr) == len(src), name
    for o in r:
        assert o["ref_chosen_logp"] < 0 and o["ref_rejected_logp"] < 0 and o["chosen_tokens"] > 0, o
m = rows("metrics.jsonl")
train = [o for o in m if o.get("split") != "valid"]
valid = [o for o in m if o.get("split") == "valid"]
assert train and [o["step"] for o in train] == list(range(1, len(train) + 1)), m
assert abs(train[0]["loss"] - math.log(2)) < 1e-4, train[0]  # the policy starts as the reference
assert valid and all(math.isfinite(o["loss"]) for o in m)
for who in ("base", "tuned"):
    s = rows(who + ".summaries.jsonl")
    assert len(s) + len(rows(who + ".summaries.rejects.jsonl")) == len(eq)
    assert all(o.get("sample", 0) == 0 for o in s)
    zz = rows(who + ".quiz.jsonl")
    assert len(zz) + len(rows(who + ".quiz.rejects.jsonl")) == len(s)
e = rows("eval.jsonl")
assert [x["model"] for x in e] == ["base.quiz.jsonl", "tuned.quiz.jsonl"], e
assert e[0]["baseline"] and e[1]["n"] == len(eq) and 0 <= e[1]["win_rate"] <= 1, e
EOF
[ -s "$d/w/adapter/adapter_model.safetensors" ] || { echo "no adapter"; exit 1; }
diff -u "$d/w/eval.txt" "$d/out"
grep -q '^tuned.quiz.jsonl ' "$d/out" || { echo "no table on stdout"; cat "$d/out"; exit 1; }

# 2. A rerun does nothing: every stage is done, no request is sent.
cp "$d/out" "$d/out1"
n1=$(wc -l <"$d/log")
pp
[ $rc -eq 1 ] || { echo "rerun: exit $rc, want 1 (the rejects are still there)"; cat "$d/err"; exit 1; }
[ "$(grep -c 'done already' "$d/err")" -eq 13 ] || { echo "rerun: not every stage skipped"; cat "$d/err"; exit 1; }
[ "$(wc -l <"$d/log")" -eq "$n1" ] || { echo "rerun sent requests"; exit 1; }
diff -u "$d/out1" "$d/out"

# 3. The quiz cut short (5 lines and half a line written, no marker): the
# rerun asks only for the rest; the quiz comes out as before, so the stages
# after it are still done.
cp "$d/w/quiz.jsonl" "$d/quiz1"
{ head -n 5 "$d/quiz1"; sed -n 6p "$d/quiz1" | cut -c 1-50 | tr -d '\n'; } >"$d/w/quiz.jsonl"
rm "$d/w/quiz.done"
nq=$(wc -l <"$d/w/summaries.jsonl")
n1=$(wc -l <"$d/log")
pp
[ $rc -eq 1 ] || { echo "resume: exit $rc"; cat "$d/err"; exit 1; }
diff -u "$d/quiz1" "$d/w/quiz.jsonl"
[ $(($(wc -l <"$d/log") - n1)) -eq $((nq - 5)) ] || { echo "resume sent $(($(wc -l <"$d/log") - n1)) requests, want $((nq - 5))"; exit 1; }
grep -q '\] quiz -> ' "$d/err" && grep -q 'dpo: done already' "$d/err" || { echo "resume: wrong stages rerun"; cat "$d/err"; exit 1; }
diff -u "$d/out1" "$d/out"

# A changed adapter makes the tuned model's summaries stale: they are made again.
printf ' ' >>"$d/w/adapter/adapter_model.safetensors"
n1=$(wc -l <"$d/log")
pp
[ $rc -eq 1 ] || { echo "new adapter: exit $rc"; cat "$d/err"; exit 1; }
grep -q 'base.summaries: done already' "$d/err" && ! grep -q 'tuned.summaries: done already' "$d/err" ||
  { echo "new adapter: wrong stages rerun"; cat "$d/err"; exit 1; }
[ $(($(wc -l <"$d/log") - n1)) -eq 1 ] || { echo "new adapter: $(($(wc -l <"$d/log") - n1)) requests, want 1 (the summary; its quiz is the same)"; exit 1; }
[ "$(wc -l <"$d/w/tuned.summaries.jsonl")" -eq 1 ] || { echo "new adapter: stale summaries kept"; exit 1; }

# DPO killed after its first checkpoint (pq-dpo --stop-after 1, then the done
# marker removed, as a kill leaves none, and a partial metrics line added):
# the rerun resumes from the checkpoint and ends with the same steps as the
# uninterrupted run.
cp "$d/w/metrics.jsonl" "$d/metrics1"
rm "$d/w/dpo.done"
rm -rf "$d/w/adapter"
rc=0
"$PQ_TOP/scripts/pq-pipeline" -w "$d/w" --tiny --judge-url "$FAKE_URL" --judge-model judge \
  --policy-url "$FAKE_URL" --policy-model policy --tuned-model tuned -n 4 --seed 6 \
  --eval-frac 0.25 --valid-frac 0.25 -t 1 --max-length 384 --dpo-opt --lr --dpo-opt 1e-3 \
  --dpo-opt --stop-after --dpo-opt 1 "$d/in.jsonl" >"$d/out" 2>"$d/err" || rc=$?
grep -q '"step":[[:space:]]*1,' "$d/w/adapter/trainer_state.json" || { echo "--stop-after 1: exit $rc, no checkpoint"; cat "$d/err"; exit 1; }
rm -f "$d/w/dpo.done"
printf '{"step":2,"epoch":1,"lo' >>"$d/w/metrics.jsonl"
pp
[ $rc -eq 1 ] || { echo "DPO resume: exit $rc"; cat "$d/err"; exit 1; }
grep -q 'dpo: resuming after step 1' "$d/err" || { echo "DPO did not resume"; cat "$d/err"; exit 1; }
"$PQ_PY" - "$d/metrics1" "$d/w/metrics.jsonl" <<'EOF'
import json, sys
a, b = ([json.loads(l) for l in open(f)] for f in sys.argv[1:3])
key = lambda o: (o.get("split", "train"), o["step"])
ta = [o for o in a if "split" not in o]
tb = [o for o in b if "split" not in o]
assert [o["step"] for o in tb] == [o["step"] for o in ta], (tb, ta)
for x, y in zip(ta, tb):
    assert abs(x["loss"] - y["loss"]) < 1e-6 and abs(x["rewards/margins"] - y["rewards/margins"]) < 1e-6, (x, y)
EOF

# --eval-articles: those articles are held out, all the input trains.
head -n 3 "$d/in.jsonl" >"$d/train3.jsonl"
sed -n 4p "$d/in.jsonl" >"$d/eval1.jsonl"
rc=0
"$PQ_TOP/scripts/pq-pipeline" -w "$d/w3" --tiny --judge-url "$FAKE_URL" --judge-model judge \
  --policy-url "$FAKE_URL" --policy-model policy --tuned-model tuned -n 3 --valid-frac 0 -t 1 \
  --max-length 256 --eval-articles "$d/eval1.jsonl" "$d/train3.jsonl" >"$d/out" 2>"$d/err" || rc=$?
[ $rc -le 1 ] || { echo "--eval-articles: exit $rc"; cat "$d/err"; exit 1; }
"$PQ_PY" - "$d/w3" "$d/train3.jsonl" "$d/eval1.jsonl" <<'EOF'
import json, sys
w, tr, ev = sys.argv[1:4]
ids = lambda f: [json.loads(l)["id"] for l in open(f)]
q = set(ids(w + "/questions.jsonl"))
assert ids(w + "/eval.questions.jsonl") == [i for i in ids(ev) if i in q] and ids(ev)[0] in q
assert set(ids(w + "/train.questions.jsonl")) == set(ids(tr)) & q
assert set(ids(w + "/base.quiz.jsonl")) == set(ids(ev))
EOF

# 4. Another input in the same work directory is refused; bad options are usage errors.
rc=0; "$PQ_TOP/scripts/pq-pipeline" -w "$d/w" --tiny "$PQ_TOP/tests/fixtures/articles.jsonl" >/dev/null 2>&1 || rc=$?
[ $rc -eq 2 ] || { echo "another input: exit $rc, want 2"; exit 1; }
rc=0; "$PQ_TOP/scripts/pq-pipeline" --no-such-option >/dev/null 2>&1 || rc=$?
[ $rc -eq 2 ] || { echo "bad option: exit $rc, want 2"; exit 1; }
rc=0; "$PQ_TOP/scripts/pq-pipeline" -w "$d/w2" --policy-url "$FAKE_URL" --policy-model p --judge-url "$FAKE_URL" \
  --judge-model j "$d/in.jsonl" >/dev/null 2>&1 || rc=$?
[ $rc -eq 2 ] || { echo "remote policy without --train-model: exit $rc, want 2"; exit 1; }
echo ok
