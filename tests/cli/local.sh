#!/bin/sh
# local.sh: pq-summarize, pq-questions and pq-quiz on a local model
# directory (--model DIR, a tiny random model) instead of a server: the same
# output fields, seeded samples reproducible and independent of -j,
# --top-k/--top-p/--min-p truncating (to the argmax at their limits), every
# line out or rejected, --constrain quiz/answers giving parsable quizzes and
# answers from a random model (0 rejects), on the paged KV cache too (its
# masks applied where the logits are; greedy quizzes as the flat cache's),
# fatal errors for broken model and adapter directories, per-line errors for prompts over the context; a
# Qwen3 model (q/k norms, head_dim != hidden / heads, a window) on the same
# path, reproducible and independent of -j; the summary line's figures of the
# engine (tokens, the KV cache's size and most blocks held); PQ_KV_MEMORY.
set -eu
# Threads wait passively: on a loaded machine spinning OpenMP threads cost 10x.
export OMP_WAIT_POLICY=passive
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
b=$PQ_BIN
f=$PQ_TOP/tests/fixtures
"$PQ_PY" "$PQ_TOP/tests/make_tiny_model.py" --arch llama --out "$d/m" --seed 2

# summaries: 3 per article, sampled, reproducible, independent of the batch
"$b/pq-summarize" --model "$d/m" -n 3 --temperature 0.8 --max-tokens 12 --seed 4 --no-progress \
  <"$f/articles.jsonl" >"$d/s1.jsonl"
"$b/pq-summarize" --model "$d/m" -n 3 --temperature 0.8 --max-tokens 12 --seed 4 -j 1 --threads 1 --no-progress \
  <"$f/articles.jsonl" >"$d/s2.jsonl"
diff -u "$d/s1.jsonl" "$d/s2.jsonl"
"$b/pq-summarize" --model "$d/m" --temperature 0 --max-tokens 6 --stop . --no-progress <"$f/articles.jsonl" \
  >"$d/greedy.jsonl"
# truncation applied by the local engine: top-k 1, top-p 0 and min-p 1 leave the argmax alone
for o in "--top-k 1" "--top-p 0" "--min-p 1"; do
  # shellcheck disable=SC2086
  "$b/pq-summarize" --model "$d/m" --temperature 1.5 $o --max-tokens 6 --stop . --no-progress \
    <"$f/articles.jsonl" >"$d/trunc.jsonl"
  diff -u "$d/greedy.jsonl" "$d/trunc.jsonl"
done
# --constrain on the policy: 5+ ASCII words, what pq-pair keeps
"$b/pq-summarize" --model "$d/m" -n 2 --temperature 1 --max-tokens 16 --constrain -t 1 --no-progress \
  <"$f/articles.jsonl" >"$d/ascii.jsonl"

# the judge's tools, constrained
"$b/pq-questions" --model "$d/m" --grammar quiz --max-tokens 300 --seed 1 --no-progress \
  --rejects "$d/q.rej" <"$f/articles.jsonl" >"$d/q.jsonl"
"$PQ_PY" - "$d" <<'PY'
import json, sys
d = sys.argv[1]
qs = [json.loads(l) for l in open(d + "/q.jsonl")]
with open(d + "/quizin.jsonl", "w") as f:
    for s in (json.loads(l) for l in open(d + "/s1.jsonl")):
        s["questions"] = next(q["questions"] for q in qs if q["id"] == s["id"])
        f.write(json.dumps(s) + "\n")
PY
"$b/pq-quiz" --model "$d/m" --constrain --max-tokens 40 --no-progress --rejects "$d/z.rej" \
  <"$d/quizin.jsonl" >"$d/z.jsonl"
"$PQ_PY" - "$d" "$f/articles.jsonl" <<'PY'
import json, os, sys
d, arts = sys.argv[1], [json.loads(l) for l in open(sys.argv[2])]
s = [json.loads(l) for l in open(d + "/s1.jsonl")]
assert [(x["id"], x["sample"]) for x in s] == [(a["id"], k) for a in arts for k in range(3)], "one line per sample"
for x in s:
    assert x["policy"].endswith("/m") and isinstance(x["summary"], str)
    assert x["prompt"][0]["role"] == "user" and x["article"] in x["prompt"][0]["content"]
assert len({x["summary"] for x in s}) > 3, "samples differ"
g = [json.loads(l) for l in open(d + "/greedy.jsonl")]
assert len(g) == len(arts) and all("." not in x["summary"] for x in g), "cut before the stop string"
a = [json.loads(l) for l in open(d + "/ascii.jsonl")]
assert len(a) == 2 * len(arts), "2 summaries per article"
for x in a:
    w = x["summary"].split(" ")
    assert x["summary"].isascii() and len(w) >= 5 and all(0 < len(t) <= 16 for t in w), x["summary"]
assert not all(x["summary"].isascii() for x in s), "the unconstrained random model writes non-ASCII"
q = [json.loads(l) for l in open(d + "/q.jsonl")]
assert not os.path.getsize(d + "/q.rej"), "constrained quizzes never rejected"
assert [x["id"] for x in q] == [a["id"] for a in arts]
for x in q:
    assert len(x["questions"]) == 5
    for qq in x["questions"]:
        assert len(qq["choices"]) == 5 and qq["answer"] in "ABCDE" and qq["question"]
z = [json.loads(l) for l in open(d + "/z.jsonl")]
assert not os.path.getsize(d + "/z.rej") and len(z) == len(s)
for x in z:
    assert len(x["judge_answers"]) == 5 and all(a in ("A", "B", "C", "D", "E", "Unsure") for a in x["judge_answers"])
    assert x["correct"] == sum(a == qq["answer"] for a, qq in zip(x["judge_answers"], x["questions"]))
assert sum(a != "Unsure" for x in z for a in x["judge_answers"]) > 5, "letters chosen, not only Unsure"
PY
# the grammars on the paged KV cache, where the masks are applied where the logits are (pq_mask_logits: on
# the GPU, only ids come back): greedy quizzes equal to the flat cache's, sampled quizzes and summaries parse
"$b/pq-questions" --model "$d/m" --grammar quiz --max-tokens 300 --temperature 0 --no-progress \
  <"$f/articles.jsonl" >"$d/q0.jsonl"
PQ_KV=paged "$b/pq-questions" --model "$d/m" --grammar quiz --max-tokens 300 --temperature 0 --no-progress \
  <"$f/articles.jsonl" >"$d/qp0.jsonl"
[ "$(wc -l <"$d/q0.jsonl")" = 3 ] && cmp "$d/q0.jsonl" "$d/qp0.jsonl"
PQ_KV=paged "$b/pq-questions" --model "$d/m" --grammar quiz --max-tokens 300 --seed 1 --no-progress \
  --rejects "$d/qp.rej" <"$f/articles.jsonl" >"$d/qp.jsonl"
PQ_KV=paged "$b/pq-summarize" --model "$d/m" -n 2 --temperature 1 --max-tokens 16 --constrain -t 1 --no-progress \
  <"$f/articles.jsonl" >"$d/asciip.jsonl"
"$PQ_PY" - "$d" <<'PY'
import json, os, sys
d = sys.argv[1]
q = [json.loads(l) for l in open(d + "/qp.jsonl")]
assert len(q) == 3 and not os.path.getsize(d + "/qp.rej"), "paged: every constrained quiz parsed"
for x in q:
    assert len(x["questions"]) == 5 and all(len(qq["choices"]) == 5 for qq in x["questions"])
a = [json.loads(l) for l in open(d + "/asciip.jsonl")]
assert len(a) == 6 and len({x["summary"] for x in a}) > 1, "paged: 2 different summaries per article"
for x in a:
    w = x["summary"].split(" ")
    assert x["summary"].isascii() and len(w) >= 5 and all(0 < len(t) <= 16 for t in w), x["summary"]
PY
# the summary line's engine figures: one article, one slot, a pool of 60 blocks of 16 positions: the tokens
# generated as the tool counted them, the most blocks held those of the one sequence's positions (its prompt and
# tokens, the last one's KV perhaps not yet written), the cache's GB those of the pool's f32 K and V
head -n 1 "$f/articles.jsonl" | PQ_KV=paged PQ_KV_BLOCKS=60 "$b/pq-summarize" --model "$d/m" -j 1 --max-tokens 12 \
  --no-progress >/dev/null 2>"$d/sum.err"
"$PQ_PY" - "$d" <<'PY'
import json, math, re, sys
d = sys.argv[1]
line = open(d + "/sum.err").read().strip().splitlines()[-1]
m = re.search(r"tokens (\d+) prompt \+ (\d+) completion; local model on cpu: (\d+) tokens generated, (\d+) prefilled, "
              r"in [0-9.]+s of steps \(\d+ tok/s\); KV cache ([0-9.e+-]+) GB \(paged, at most (\d+) of 60 blocks of 16 "
              r"positions held\); peak resident memory ([0-9.e+-]+) GB$", line)
assert m, line
P, G, gen, pre, gb, held, peak = (float(x) for x in m.groups())
assert gen == G and pre == P, line
assert held in (math.ceil((P + G - 1) / 16), math.ceil((P + G) / 16)), (held, P, G)
c = json.load(open(d + "/m/config.json"))
hs = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
want = 2 * c["num_hidden_layers"] * 60 * 16 * c["num_key_value_heads"] * hs * 4 / 1e9
assert abs(gb - want) < 1e-3 * want and peak > 0, (gb, want, peak)
PY
# PQ_KV_MEMORY: the pool from a size (as many whole blocks as 3 MB hold), the same samples as a pool of blocks;
# a share of the free memory; a malformed value said, the default serving
head -n 2 "$f/articles.jsonl" | PQ_KV=paged PQ_KV_MEMORY=3M "$b/pq-summarize" --model "$d/m" -n 2 --max-tokens 8 \
  --seed 3 --no-progress >"$d/km.jsonl" 2>"$d/km.err"
head -n 2 "$f/articles.jsonl" | PQ_KV=paged PQ_KV_BLOCKS=60 "$b/pq-summarize" --model "$d/m" -n 2 --max-tokens 8 \
  --seed 3 --no-progress >"$d/kb.jsonl"
cmp "$d/km.jsonl" "$d/kb.jsonl"
head -n 1 "$f/articles.jsonl" | PQ_KV=paged PQ_KV_MEMORY=0.001 "$b/pq-summarize" --model "$d/m" --max-tokens 4 \
  --no-progress >/dev/null 2>"$d/kf.err"
head -n 1 "$f/articles.jsonl" | PQ_KV=paged PQ_KV_MEMORY=lots "$b/pq-summarize" --model "$d/m" --max-tokens 4 \
  --no-progress >/dev/null 2>"$d/kx.err"
grep -q "PQ_KV_MEMORY=lots is neither" "$d/kx.err"
"$PQ_PY" - "$d" <<'PY'
import json, re, sys
d = sys.argv[1]
c = json.load(open(d + "/m/config.json"))
hs = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
block = 2 * c["num_hidden_layers"] * 16 * c["num_key_value_heads"] * hs * 4
def pool(name):
    m = re.search(r"KV cache ([0-9.e+-]+) GB \(paged, at most (\d+) of (\d+) blocks", open(d + name).read())
    assert m, open(d + name).read()
    return float(m.group(1)), int(m.group(2)), int(m.group(3))
gb, held, n = pool("/km.err")
assert n == 3000000 // block and abs(gb - n * block / 1e9) < 1e-3 * gb and 0 < held <= n, (gb, held, n, block)
mem = [int(l.split()[1]) * 1024 for l in open("/proc/meminfo") if l.startswith("MemAvailable:")][0]
_, _, n = pool("/kf.err")  # (a thousandth of what was free then: within a factor of 2 of what is free now)
assert mem * 0.001 / 2 < n * block < mem * 0.001 * 2, (n * block, mem)
_, _, n = pool("/kx.err")
assert n * block > 3000000, n
PY

# a budget the grammar cannot finish in: each line rejected with the reason
rc=0; "$b/pq-quiz" --model "$d/m" --grammar answers --max-tokens 20 --no-progress <"$d/quizin.jsonl" \
  >"$d/z2.jsonl" 2>"$d/err" || rc=$?
[ "$rc" = 1 ] && [ ! -s "$d/z2.jsonl" ] && grep -q "needs at least 29 tokens" "$d/err"

# a Qwen3 model through the local path: every sample written, the same whatever -j and --threads
"$PQ_PY" "$PQ_TOP/tests/make_tiny_model.py" --arch qwen3 --out "$d/q3" --seed 2 --window 8
"$b/pq-summarize" --model "$d/q3" -n 2 --temperature 0.8 --max-tokens 12 --seed 4 --no-progress \
  <"$f/articles.jsonl" >"$d/q1.jsonl"
"$b/pq-summarize" --model "$d/q3" -n 2 --temperature 0.8 --max-tokens 12 --seed 4 -j 1 --threads 1 --no-progress \
  <"$f/articles.jsonl" >"$d/q2.jsonl"
diff -u "$d/q1.jsonl" "$d/q2.jsonl"
[ "$(wc -l <"$d/q1.jsonl")" = 6 ] && grep -q '"policy": *"[^"]*/q3"' "$d/q1.jsonl"

# fatal: a broken model directory, a missing adapter (exit 3, one line)
mkdir "$d/bad" && echo '{"architectures": ["GPT2LMHeadModel"]}' >"$d/bad/config.json"
rc=0; "$b/pq-summarize" --model "$d/bad" <"$f/articles.jsonl" >/dev/null 2>"$d/err" || rc=$?
[ "$rc" = 3 ] && grep -q "^pq-summarize: .*unsupported architecture GPT2LMHeadModel" "$d/err"
rc=0; "$b/pq-quiz" --model "$d/m" --adapter "$d/none" <"$d/quizin.jsonl" >/dev/null 2>"$d/err" || rc=$?
[ "$rc" = 3 ] && grep -q "^pq-quiz: .*adapter_config.json" "$d/err"
rc=0; "$b/pq-questions" --model "$d/m" --grammar json </dev/null >/dev/null 2>"$d/err" || rc=$?
[ "$rc" = 2 ] && grep -q "grammar" "$d/err"
# an article over the model's context: that line rejected, the others written
"$PQ_PY" -c 'import json; print(json.dumps({"id": "long", "article": "word " * 9000}))' >"$d/long.jsonl"
cat "$f/articles.jsonl" >>"$d/long.jsonl"
rc=0; "$b/pq-summarize" --model "$d/m" --max-tokens 4 --no-progress --rejects "$d/l.rej" <"$d/long.jsonl" \
  >"$d/l.jsonl" 2>"$d/err" || rc=$?
[ "$rc" = 1 ] && [ "$(wc -l <"$d/l.jsonl")" = 3 ] && grep -q '"id": *"long"' "$d/l.rej" && grep -q "context" "$d/err"
echo ok
