#!/bin/sh
# llm-reply-faults.sh: replies that are no answer. A content of null is a
# failed request (retried, then the line rejected), not an empty answer that
# pq-quiz would score "Unsure" or pq-summarize write as an empty summary; a
# body that never ends is cut at the client's cap (32 MiB) and the line
# rejected at once, not buffered until --timeout.
set -eu
. "$PQ_TOP/tests/lib-fake.sh"
d=$(mktemp -d)
trap 'fake_stop; rm -rf "$d"' EXIT
fake_start --log "$d/log"
"$PQ_PY" - "$PQ_TOP/tests/fixtures" "$d" <<'PY'
import json, sys
f, d = sys.argv[1], sys.argv[2]
arts = [json.loads(l) for l in open(f + "/articles.jsonl")]
def art(i, id, mark=""):
    return json.dumps(dict(arts[i], id=id, article=arts[i]["article"] + mark))
open(d + "/in.jsonl", "w").write("\n".join([art(0, "a1"), art(1, "a2", " [[fake:null]]"),
                                            art(2, "a3", " [[fake:endless]]"), art(0, "a4", " again")]) + "\n")
s = json.loads(open(f + "/summaries.jsonl").readline())
s["summary"] += " [[fake:null]]"
open(d + "/quiz-in.jsonl", "w").write(json.dumps(s) + "\n")
PY
t0=$(date +%s)
rc=0
"$PQ_BIN/pq-summarize" --model p --retries 1 --timeout 100 --rejects "$d/rej" "$d/in.jsonl" >"$d/out" 2>"$d/err" || rc=$?
dt=$(( $(date +%s) - t0 ))
[ $rc -eq 1 ] || { echo "exit $rc, want 1"; cat "$d/err"; exit 1; }
[ $dt -lt 60 ] || { echo "took ${dt}s: the endless body was not cut"; exit 1; }
grep -q 'line 2 (id a2): choice 0 of the reply has no content (null) (after 2 attempts)' "$d/err" ||
  { echo "null content: not rejected after its retry"; cat "$d/err"; exit 1; }
grep -q 'line 3 (id a3): the reply is larger than 32 MiB' "$d/err" || { echo "endless body: not said"; cat "$d/err"; exit 1; }
"$PQ_PY" - "$d" <<'PY'
import json, sys
d = sys.argv[1]
out = [json.loads(l) for l in open(d + "/out")]
assert [o["id"] for o in out] == ["a1", "a4"], [o["id"] for o in out]
assert all(o["summary"] for o in out)
rej = [json.loads(l)["id"] for l in open(d + "/rej")]
assert sorted(rej) == ["a2", "a3"], rej
PY
# pq-quiz: a null answer is no score at all (not 0 correct, all Unsure)
rc=0
"$PQ_BIN/pq-quiz" --model j --retries 0 "$d/quiz-in.jsonl" >"$d/qout" 2>"$d/qerr" || rc=$?
[ $rc -eq 1 ] || { echo "pq-quiz: exit $rc, want 1"; cat "$d/qerr"; exit 1; }
[ ! -s "$d/qout" ] || { echo "pq-quiz scored a null reply:"; cat "$d/qout"; exit 1; }
grep -q 'no content (null)' "$d/qerr" || { echo "pq-quiz: not said"; cat "$d/qerr"; exit 1; }
echo ok
