#!/bin/sh
# quiz.sh: pq-quiz against the fake judge (which answers from the summary's
# words): scores of summaries holding all, some or none of the right option
# texts, Unsure handling, num_words and bad_chars against a Python reference,
# every line in the output or the rejects exactly once, order kept with -j.
set -eu
. "$PQ_TOP/tests/lib-fake.sh"
d=$(mktemp -d)
trap 'fake_stop; rm -rf "$d"' EXIT
fake_start --log "$d/log"
z=$PQ_BIN/pq-quiz
"$PQ_PY" - "$PQ_TOP/tests/fixtures/questions.jsonl" "$d" <<'EOF'
import json, sys
arts = [json.loads(l) for l in open(sys.argv[1])]
d = sys.argv[2]
def right(a, ks):
    return " ".join(a["questions"][k]["choices"]["ABCDE".index(a["questions"][k]["answer"])] + "." for k in ks)
lines, want = [], []
def add(a, sample, summary, score=None, **extra):
    o = dict(a, sample=sample, policy="p", summary=summary)
    o.update(extra)
    lines.append(json.dumps(o))
    want.append(score)
a, b, c = arts[0], arts[1], arts[2]
add(a, 0, right(a, range(5)), 5)
add(a, 1, "Nothing in this sentence says anything at all.", 0)
add(a, 2, right(a, [0, 1]), 2)
add(b, 0, right(b, range(5)) + " [[fake:malformed]]", 0)  # prose: all Unsure, not rejected
add(b, 1, right(b, range(5)) + " [[fake:500x2]]", 5)
add(b, 2, right(b, range(5)) + " [[fake:429]]", 5)
add(c, 0, "Caf\u00e9 na\u00efve \u2603 \u2013 \u201cq\u201d \u2026 \U0001F600 \u00df \u00c6 \u20ac ok", 0, note={"x": [1]})
add(c, 1, right(c, [4]), 1)
bad = [
    '{"id": "broken", "summary": ',
    json.dumps(dict(a, sample=3)),  # no summary
    json.dumps(dict(a, sample=4, summary=None)),
    json.dumps({k: v for k, v in dict(a, sample=5, summary="x").items() if k != "questions"}),
    json.dumps(dict(a, sample=6, summary="x", questions=a["questions"][:4])),
    json.dumps({k: v for k, v in dict(a, sample=7, summary="x").items() if k != "id"}),
]
with open(d + "/in.jsonl", "w") as f:
    f.write("\n".join(lines[:2] + bad[:3] + lines[2:5] + bad[3:] + lines[5:]) + "\n")
json.dump(want, open(d + "/want.json", "w"))
with open(d + "/slow.jsonl", "w") as f:
    f.write(json.dumps(dict(a, sample=0, summary=right(a, range(5)) + " [[fake:slow=0.6]]")) + "\n")
    for k in range(1, 8):
        f.write(json.dumps(dict(arts[k % 3], sample=k, summary=right(arts[k % 3], range(k % 5)))) + "\n")
EOF

rc=0
"$z" --model judge -j 4 --rejects "$d/rej" <"$d/in.jsonl" >"$d/out" 2>"$d/err" || rc=$?
[ $rc -eq 1 ] || { echo "exit $rc, want 1"; cat "$d/err"; exit 1; }
for pat in 'line 3: not JSON' 'line 4 (id [^)]*): no "summary" string' 'line 5 (id [^)]*): no "summary" string' \
           'line 9 (id [^)]*): no "questions" field' 'line 10 (id [^)]*): bad "questions": ' 'line 11: no "id" field'; do
  grep -q "^pq-quiz: $pat" "$d/err" || { echo "no message like '$pat':"; cat "$d/err"; exit 1; }
done
"$PQ_PY" - "$d/in.jsonl" "$d/out" "$d/rej" "$d/want.json" <<'EOF'
import json, string, sys, unicodedata
inp = open(sys.argv[1]).read().splitlines()
out = [json.loads(l) for l in open(sys.argv[2])]
rej = open(sys.argv[3]).read().splitlines()
want = json.load(open(sys.argv[4]))
bad_idx = (2, 3, 4, 8, 9, 10)
assert rej == [inp[i] for i in bad_idx], rej
good = [json.loads(inp[i]) for i in range(len(inp)) if i not in bad_idx]
assert len(out) == len(good) == len(want)
OK = set("\u2019\u2018\u2013\u2014\u201c\u201d\u2026\u2122\u00b0\u00c6\u00e6\u00a3\u20ac")
def bad_chars(s):  # method.md §3 as the recipe counts, independently of utf8proc
    n = 0
    for ch in unicodedata.normalize("NFD", s):
        if unicodedata.combining(ch):
            continue
        if ch in string.ascii_letters or ch in string.digits or ch in " \t\n\r\v\f" or ch in string.punctuation or ch in OK:
            continue
        n += 1
    return n
for o, g, w in zip(out, good, want):
    ja = o.pop("judge_answers")
    corr, nw, bc = o.pop("correct"), o.pop("num_words"), o.pop("bad_chars")
    assert o == g, (o, g)  # key, order and every other field kept
    assert len(ja) == 5 and all(x in ("A", "B", "C", "D", "E", "Unsure") for x in ja), ja
    keys = [q["answer"] for q in g["questions"]]
    assert corr == sum(x == k for x, k in zip(ja, keys)), (ja, keys, corr)
    assert corr == w, (g["summary"], ja, keys, corr, w)
    if w == 0:
        assert ja == ["Unsure"] * 5, ja
    assert nw == len(g["summary"].split()), (nw, g["summary"])
    assert bc == bad_chars(g["summary"]), (bc, bad_chars(g["summary"]), g["summary"])
EOF

# The judge answers at temperature 0 unless told otherwise (top_p 1 sent,
# top_k and min_p not); a 0-score
# reply (prose) is not asked again.
"$PQ_PY" - "$d/log" <<'EOF'
import collections, json, sys
log = [json.loads(l) for l in open(sys.argv[1])]
assert log and all(x["params"].get("temperature") == 0 and x["params"].get("top_p") == 1 for x in log), log
assert not any("top_k" in x["params"] or "min_p" in x["params"] for x in log), log
per_key = collections.Counter(x["key"] for x in log)
assert len(per_key) == 8, per_key  # one body per good line, retries resend the same body
EOF
: >"$d/log"
head -n 1 "$d/in.jsonl" | "$z" --model judge --temperature 0.5 >/dev/null
grep -q '"temperature": 0.5' "$d/log" || { echo "--temperature not sent: $(cat "$d/log")"; exit 1; }

# Order kept with -j whatever finishes first; --unordered streams.
"$z" --model judge -j 8 <"$d/slow.jsonl" >"$d/ord" 2>/dev/null
"$z" --model judge -j 8 --unordered <"$d/slow.jsonl" >"$d/unord" 2>/dev/null
keys() { "$PQ_PY" -c 'import json,sys; [print(json.loads(l)["id"], json.loads(l)["sample"]) for l in open(sys.argv[1])]' "$1"; }
keys "$d/slow.jsonl" >"$d/k.want"
keys "$d/ord" >"$d/k.got"
diff -u "$d/k.want" "$d/k.got"
keys "$d/unord" >"$d/k.un"
[ "$(tail -n 1 "$d/k.un")" = "$(head -n 1 "$d/k.want")" ] || { echo "--unordered did not stream"; exit 1; }

# --prompt-file needs both placeholders.
printf 'Summary: {summary}\n' >"$d/p.txt"
rc=0; "$z" --model judge --prompt-file "$d/p.txt" </dev/null >/dev/null 2>&1 || rc=$?
[ $rc -eq 2 ] || { echo "--prompt-file without {questions}: exit $rc, want 2"; exit 1; }
printf 'Answer each, or say Unsure.\n\nSummary:\n{summary}\n\nQuestions:\n{questions}\n' >"$d/p.txt"
head -n 1 "$d/slow.jsonl" | sed 's/ \[\[fake:slow=0.6\]\]//' | "$z" --model judge --prompt-file "$d/p.txt" >"$d/pf"
grep -q '"correct":5' "$d/pf" || { echo "--prompt-file: $(cat "$d/pf")"; exit 1; }
echo ok
