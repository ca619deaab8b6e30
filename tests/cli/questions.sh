#!/bin/sh
# questions.sh: pq-questions against the fake judge: every line ends in the
# output or the rejects (never both, never neither), retries of unparsable
# replies, deterministic seeded shuffle with a consistent answer key, order
# kept with -j, --prompt-file, a 401 ends the run with exit 3.
set -eu
. "$PQ_TOP/tests/lib-fake.sh"
d=$(mktemp -d)
trap 'fake_stop; rm -rf "$d"' EXIT
fake_start --log "$d/log"
q=$PQ_BIN/pq-questions
# Articles: those of the fixture (questions dropped), and variants of them.
"$PQ_PY" - "$PQ_TOP/tests/fixtures/questions.jsonl" "$d" <<'EOF'
import json, sys
arts = []
for l in open(sys.argv[1]):
    o = json.loads(l)
    o.pop("questions", None)
    arts.append(o)
d = sys.argv[2]
def art(k, mark="", **extra):
    b = arts[k % len(arts)]
    o = {"id": "%s-%d" % (b["id"][:8], k), "article": b["article"] + " It was case number %d." % k + mark}
    o.update(extra)
    return json.dumps(o)
with open(d + "/in.jsonl", "w") as f:
    f.write("\n".join([
        art(0),
        '{"id": "broken", "article": ',
        '{"id": "noart", "text": "no article here"}',
        json.dumps({"article": arts[0]["article"]}),
        art(1, " [[fake:malformed]]"),
        art(2, " [[fake:malformed1]]", extra={"k": [1, 2.5, None]}),
        art(3, " [[fake:500x2]]"),
        art(4, " [[fake:429]]"),
        art(5, highlights="kept as it is"),
    ]) + "\n")
with open(d + "/plain.jsonl", "w") as f:
    for k in range(6):
        f.write(art(k) + "\n")
with open(d + "/slow.jsonl", "w") as f:
    f.write(art(0, " [[fake:slow=0.6]]") + "\n")
    for k in range(1, 8):
        f.write(art(k) + "\n")
with open(d + "/auth.jsonl", "w") as f:
    for k in range(5):
        f.write(art(k, " [[fake:401]]" if k == 2 else "") + "\n")
EOF

# 1. Every line in the output or the rejects, exactly once.
rc=0
"$q" --model judge -j 4 --seed 7 --rejects "$d/rej" <"$d/in.jsonl" >"$d/out" 2>"$d/err" || rc=$?
[ $rc -eq 1 ] || { echo "exit $rc, want 1"; cat "$d/err"; exit 1; }
grep -q '^pq-questions: line 5 (id [^)]*): no valid quiz after 3 attempts: ' "$d/err" ||
  { echo "no parser message for the malformed reply:"; cat "$d/err"; exit 1; }
grep -q '^pq-questions: line 2: not JSON' "$d/err" || { echo "no not-JSON message"; cat "$d/err"; exit 1; }
grep -q '^pq-questions: line 3 (id noart): no "article"' "$d/err" || { echo "no missing-article message"; cat "$d/err"; exit 1; }
grep -q '^pq-questions: line 4: no "id"' "$d/err" || { echo "no missing-id message"; cat "$d/err"; exit 1; }
"$PQ_PY" - "$d/in.jsonl" "$d/out" "$d/rej" <<'EOF'
import json, sys
inp = open(sys.argv[1]).read().splitlines()
out = [json.loads(l) for l in open(sys.argv[2])]
rej = open(sys.argv[3]).read().splitlines()
assert rej == [inp[i] for i in (1, 2, 3, 4)], rej
want = [json.loads(inp[i]) for i in (0, 5, 6, 7, 8)]
assert [o["id"] for o in out] == [w["id"] for w in want], [o["id"] for o in out]
for o, w in zip(out, want):
    qs = o.pop("questions")
    assert o == w, (o, w)  # every other field passed through unchanged
    assert len(qs) == 5
    for x in qs:
        assert set(x) == {"question", "choices", "answer"}, x
        assert len(x["choices"]) == 5 and x["answer"] in "ABCDE"
        assert len(set(x["choices"])) == 5
EOF

# The retries of an unparsable reply are asked with seeds s, s+1, s+2;
# -o fields reach the body.
: >"$d/log"
sed -n 5p "$d/in.jsonl" | "$q" --model judge -o max_completion_tokens=77 >/dev/null 2>&1 || :
"$PQ_PY" - "$d/log" <<'EOF'
import json, sys
log = [json.loads(l) for l in open(sys.argv[1])]
seeds = [x["seed"] for x in log]
assert len(seeds) == 3 and seeds[1] == seeds[0] + 1 and seeds[2] == seeds[0] + 2, seeds
assert all(x["params"].get("max_completion_tokens") == 77 for x in log), log
EOF

# 2. The shuffle: deterministic by --seed, different across seeds, and the
# key follows the options (the fake's own quiz gives the right texts).
"$q" --model judge --seed 7 <"$d/plain.jsonl" >"$d/s7a" 2>/dev/null
"$q" --model judge --seed 7 -j 3 <"$d/plain.jsonl" >"$d/s7b" 2>/dev/null
"$q" --model judge --seed 8 <"$d/plain.jsonl" >"$d/s8" 2>/dev/null
diff -u "$d/s7a" "$d/s7b"
if cmp -s "$d/s7a" "$d/s8"; then echo "seeds 7 and 8 give the same quizzes"; exit 1; fi
"$PQ_PY" - "$PQ_TOP/tests" "$d/s7a" "$d/s8" <<'EOF'
import json, re, sys
sys.path.insert(0, sys.argv[1])
import fake_server
moved = 0
for path in sys.argv[2:]:
    for l in open(path):
        o = json.loads(l)
        reply = fake_server.make_quiz(o["article"].strip())
        truth, order = {}, []
        for block in re.split(r"\n(?=Q\d\))", reply.strip()):
            lines = [x for x in block.splitlines() if x.strip()]
            q = re.match(r"Q\d\) (.*)", lines[0]).group(1)
            opts = {x[0]: x[3:] for x in lines[1:6]}
            ans = re.search(r"Answer: ([A-E])", block).group(1)
            truth[(q, tuple(sorted(opts.values())))] = opts[ans]
            order.append((q, [opts[c] for c in "ABCDE"]))
        got = o["questions"]
        keys = [(x["question"], tuple(sorted(x["choices"]))) for x in got]
        assert sorted(keys) == sorted(truth), (got, truth)
        for x, k in zip(got, keys):
            assert x["choices"]["ABCDE".index(x["answer"])] == truth[k], (x, truth[k])
        moved += [(x["question"], x["choices"]) for x in got] != order
assert moved >= 10, "the shuffle leaves the quizzes as the judge wrote them (%d of 12 moved)" % moved
EOF

# 3. Output order is the input order with -j, whatever finishes first;
# --unordered streams.
"$q" --model judge -j 8 <"$d/slow.jsonl" >"$d/ord" 2>/dev/null
"$q" --model judge -j 8 --unordered <"$d/slow.jsonl" >"$d/unord" 2>/dev/null
"$PQ_PY" -c 'import json,sys; [print(json.dumps(json.loads(l)["id"])) for l in open(sys.argv[1])]' "$d/slow.jsonl" >"$d/ids.want"
"$PQ_PY" -c 'import json,sys; [print(json.dumps(json.loads(l)["id"])) for l in open(sys.argv[1])]' "$d/ord" >"$d/ids.got"
diff -u "$d/ids.want" "$d/ids.got"
"$PQ_PY" -c 'import json,sys; [print(json.dumps(json.loads(l)["id"])) for l in open(sys.argv[1])]' "$d/unord" >"$d/ids.un"
[ "$(tail -n 1 "$d/ids.un")" = "$(head -n 1 "$d/ids.want")" ] || { echo "--unordered did not stream"; cat "$d/ids.un"; exit 1; }
sort "$d/ids.want" >"$d/a"; sort "$d/ids.un" >"$d/b"; diff -u "$d/a" "$d/b"

# 4. --prompt-file: used when it has {article}, refused (exit 2) when not.
printf 'Write a multiple-choice quiz about this:\n\n{article}\n' >"$d/p.txt"
head -n 2 "$d/plain.jsonl" | "$q" --model judge --prompt-file "$d/p.txt" >"$d/pf" 2>"$d/err"
[ "$(wc -l <"$d/pf")" -eq 2 ] || { echo "--prompt-file: $(cat "$d/err")"; exit 1; }
printf 'Write a multiple-choice quiz.\n' >"$d/p2.txt"
rc=0; "$q" --model judge --prompt-file "$d/p2.txt" </dev/null >/dev/null 2>&1 || rc=$?
[ $rc -eq 2 ] || { echo "--prompt-file without {article}: exit $rc, want 2"; exit 1; }
rc=0; "$q" --model judge --attempts 0 </dev/null >/dev/null 2>&1 || rc=$?
[ $rc -eq 2 ] || { echo "--attempts 0: exit $rc, want 2"; exit 1; }

# 5. A 401 is fatal: exit 3, what finished before is written, the line is
# neither output nor rejected (a rerun does it).
rc=0
"$q" --model judge -j 1 --rejects "$d/rej401" <"$d/auth.jsonl" >"$d/out401" 2>"$d/err" || rc=$?
[ $rc -eq 3 ] || { echo "401: exit $rc, want 3"; cat "$d/err"; exit 1; }
grep -q "Incorrect API key" "$d/err" || { echo "401: the server's message is not shown"; cat "$d/err"; exit 1; }
[ ! -s "$d/rej401" ] || { echo "401: a line was rejected"; exit 1; }
"$PQ_PY" - "$d/auth.jsonl" "$d/out401" <<'EOF'
import json, sys
ids = [json.loads(l)["id"] for l in open(sys.argv[1])]
got = [json.loads(l)["id"] for l in open(sys.argv[2])]
assert got[:2] == ids[:2] and ids[2] not in got, got
EOF
echo ok
