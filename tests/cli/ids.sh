#!/bin/sh
# ids.sh: ids pass through byte-exact. A number id keeps the text it was
# written with (above 2^53, with trailing zeros, an exponent), in the output
# of every tool and in its resume key, so a --resume rerun finds every line
# done and sends nothing.
set -eu
. "$PQ_TOP/tests/lib-fake.sh"
d=$(mktemp -d)
trap 'fake_stop; rm -rf "$d"' EXIT
fake_start --log "$d/log"
"$PQ_PY" - "$PQ_TOP/tests/fixtures" "$d" <<'PY'
import json, sys
f, d = sys.argv[1], sys.argv[2]
qs = [json.loads(l) for l in open(f + "/questions.jsonl")]
ids = ["9007199254740993", "12345678901234567890123", "1.50", "2e3", "-0", '"s-1"', "7"]
with open(d + "/in.jsonl", "w") as o:
    for i, raw in enumerate(ids):
        q = qs[i % len(qs)]
        body = json.dumps({k: v for k, v in q.items() if k != "id"})
        o.write('{"id": %s, %s\n' % (raw, body[1:]))
open(d + "/ids", "w").write("\n".join(ids) + "\n")
PY
ids_of() { sed 's/^{"id": *\([^,]*\),.*/\1/' "$1"; }
"$PQ_BIN/pq-summarize" --model p --resume "$d/sum.jsonl" "$d/in.jsonl" 2>"$d/err" || { cat "$d/err"; exit 1; }
"$PQ_BIN/pq-quiz" --model j --resume "$d/quiz.jsonl" "$d/sum.jsonl" 2>"$d/err" || { cat "$d/err"; exit 1; }
ids_of "$d/sum.jsonl" | diff -u "$d/ids" - || { echo "pq-summarize changed ids"; exit 1; }
ids_of "$d/quiz.jsonl" | diff -u "$d/ids" - || { echo "pq-quiz changed ids"; exit 1; }
n=$(wc -l <"$d/log")
"$PQ_BIN/pq-summarize" --model p --resume "$d/sum.jsonl" "$d/in.jsonl" 2>"$d/err" || { cat "$d/err"; exit 1; }
"$PQ_BIN/pq-quiz" --model j --resume "$d/quiz.jsonl" "$d/sum.jsonl" 2>"$d/err2" || { cat "$d/err2"; exit 1; }
[ "$(wc -l <"$d/log")" -eq "$n" ] || { echo "--resume sent requests again:"; cat "$d/err" "$d/err2"; exit 1; }
grep -q "7 skipped" "$d/err2" || { echo "pq-quiz --resume: not all skipped"; cat "$d/err2"; exit 1; }
# pq-pair keeps the id too (one pair per article needs two samples: give each twice)
"$PQ_PY" - "$d" <<'PY'
import json, sys
d = sys.argv[1]
ids = open(d + "/ids").read().split("\n")
with open(d + "/quiz2.jsonl", "w") as o:
    for raw, l in zip(ids, open(d + "/quiz.jsonl")):
        rec = json.loads(l)
        del rec["id"]
        for k, c in ((0, 4), (1, 0)):
            r = dict(rec, sample=k, correct=c, summary=rec["summary"] + " Words." * k)
            o.write('{"id": %s, %s\n' % (raw, json.dumps(r)[1:]))
PY
"$PQ_BIN/pq-pair" --min-words 1 "$d/quiz2.jsonl" >"$d/pairs.jsonl" 2>"$d/err" || { cat "$d/err"; exit 1; }
[ -s "$d/pairs.jsonl" ] || { echo "pq-pair: no pairs"; cat "$d/err"; exit 1; }
ids_of "$d/pairs.jsonl" | sort >"$d/pair-ids"
sort "$d/ids" | diff -u - "$d/pair-ids" || { echo "pq-pair changed ids"; exit 1; }
echo ok
