#!/bin/sh
# llm-faults.sh: the LLM client against a misbehaving server (through
# pq-summarize): every input line ends in the output or the rejects, never
# both, never neither; transient faults are retried, permanent ones are not;
# the server's error message reaches stderr with the line number.
set -eu
. "$PQ_TOP/tests/lib-fake.sh"
d=$(mktemp -d)
trap 'fake_stop; rm -rf "$d"' EXIT
fake_start --log "$d/log"
s=$PQ_BIN/pq-summarize

"$PQ_PY" - "$PQ_TOP/tests/fixtures/articles.jsonl" "$d" <<'EOF'
import json, sys
arts = [json.loads(l) for l in open(sys.argv[1])]
d = sys.argv[2]
lines = []  # (text, expected: "out" or "rej")
def art(i, marker="", **extra):
    a = dict(arts[i % 3], id="a%02d" % len(lines), **extra)
    a["article"] = a["article"] + marker
    return json.dumps(a)
lines.append((art(0), "out"))
lines.append(('{"id": "x01", "article": "no closing brace"', "rej"))      # not JSON
lines.append((art(1, " [[fake:500x2]]"), "out"))
lines.append((json.dumps({"article": "An article without an id."}), "rej"))
lines.append((art(2, " [[fake:429]]"), "out"))
lines.append((json.dumps({"id": "x05", "text": "no article field"}), "rej"))
lines.append((art(0, " [[fake:400]]"), "rej"))
lines.append((art(1, " [[fake:malformed]]"), "out"))  # prose is a fine summary
lines.append((art(2, " [[fake:drop]]"), "out"))
lines.append((art(0, " [[fake:badjson]]"), "out"))
lines.append(("[1, 2, 3]", "rej"))                                        # not an object
lines.append((art(1, " [[fake:429s]]", kept=[1, {"x": None}]), "out"))
lines.append((art(2), "out"))
with open(d + "/in.jsonl", "w") as f:
    for text, _ in lines:
        f.write(text + "\n")
json.dump([w for _, w in lines], open(d + "/want.json", "w"))
EOF

rc=0
"$s" --model pol -j 4 --retries 3 --rejects "$d/rej" "$d/in.jsonl" >"$d/out" 2>"$d/err" || rc=$?
[ $rc -eq 1 ] || { echo "exit $rc, want 1 (some rejected)"; cat "$d/err"; exit 1; }
for pat in 'line 2: not JSON' 'line 4: no "id" field' 'line 6 (id x05): no "article" string' \
           'line 7 (id a06): HTTP 400: fake: this request is invalid' 'line 11: not a JSON object'; do
  grep -q "^pq-summarize: $pat" "$d/err" || { echo "no message like '$pat':"; cat "$d/err"; exit 1; }
done
grep -q '13 in, 8 done, 5 rejected, 8 out' "$d/err" || { echo "bad summary line:"; cat "$d/err"; exit 1; }

"$PQ_PY" - "$d/in.jsonl" "$d/out" "$d/rej" "$d/want.json" "$d/log" <<'EOF'
import json, sys
inp = open(sys.argv[1]).read().splitlines()
out = [json.loads(l) for l in open(sys.argv[2])]
rej = open(sys.argv[3]).read().splitlines()
want = json.load(open(sys.argv[4]))
log = [json.loads(l) for l in open(sys.argv[5])]
ids_out = [o["id"] for o in out]
assert len(set(ids_out)) == len(ids_out), ids_out
for text, w in zip(inp, want):
    try:
        i = json.loads(text).get("id")
    except Exception:
        i = None
    in_out, in_rej = i in ids_out, text in rej
    assert in_out != in_rej, (text[:60], in_out, in_rej)
    assert (w == "out") == in_out, (text[:60], w)
assert len(rej) == want.count("rej"), rej
# Passed through whole, fields added.
src = {json.loads(t)["id"]: json.loads(t) for t, w in zip(inp, want) if w == "out"}
for o in out:
    a = src[o["id"]]
    for k, v in a.items():
        assert o[k] == v, (k, o[k], v)
    assert o["sample"] == 0 and o["policy"] == "pol" and isinstance(o["summary"], str) and o["summary"]
    assert o["prompt"][0]["role"] == "user" and a["article"] in o["prompt"][0]["content"]
assert [o["id"] for o in out] == [json.loads(t)["id"] for t, w in zip(inp, want) if w == "out"], "order"
mal = [o for o in out if "malformed" in o["article"]][0]
assert "sorry" in mal["summary"], mal["summary"]
# Attempts per request seen by the server: retried where transient, not where not.
att = {}
for r in log:
    att.setdefault(r["key"], []).append(r["status"])
seqs = sorted(att.values())
for pattern in ([500, 500, 200], [429, 200], [0, 200], [400]):
    assert pattern in seqs, (pattern, seqs)
assert seqs.count([200, 200]) == 1  # badjson: a 200 that was not JSON, then a good one
assert [400] in seqs and [400, 400] not in seqs, "a 400 is not retried"
EOF
echo ok
