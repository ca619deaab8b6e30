#!/bin/sh
# rejects-resume.sh: --rejects with --resume. Every line not in the output
# is tried again on --resume, so the rejects file is written anew: a line
# rejected again is there once, a line that has since succeeded is gone;
# the old rejects a rerun does not reach (interrupted again) are kept.
set -eu
. "$PQ_TOP/tests/lib-fake.sh"
d=$(mktemp -d)
trap 'fake_stop; rm -rf "$d"' EXIT
fake_start
"$PQ_PY" - "$PQ_TOP/tests/fixtures/articles.jsonl" "$d" <<'PY'
import json, sys
arts = [json.loads(l) for l in open(sys.argv[1])]
d = sys.argv[2]
lines = [json.dumps(dict(arts[0], id="a1")),
         json.dumps(dict(arts[1], id="a2", article=arts[1]["article"] + " [[fake:500x1]]")),  # fails once
         '{"id": "a3", not json',
         json.dumps(dict(arts[2], id="a4"))]
open(d + "/in.jsonl", "w").write("\n".join(lines) + "\n")
open(d + "/want-rejects", "w").write(lines[2] + "\n")
PY
run() {
  rc=0
  "$PQ_BIN/pq-summarize" --model p --retries 0 --rejects "$d/rej" --resume "$d/out" "$@" >/dev/null 2>"$d/err" || rc=$?
}
run "$d/in.jsonl"
[ $rc -eq 1 ] || { echo "first run: exit $rc, want 1"; cat "$d/err"; exit 1; }
[ "$(wc -l <"$d/rej")" -eq 2 ] || { echo "first run: want 2 rejects"; cat "$d/rej"; exit 1; }
cp "$d/rej" "$d/rej1"
for i in 2 3; do
  run "$d/in.jsonl"
  [ $rc -eq 1 ] || { echo "run $i: exit $rc, want 1"; cat "$d/err"; exit 1; }
  diff -u "$d/want-rejects" "$d/rej" || { echo "run $i: the rejects file is not this run's"; exit 1; }
done
[ "$(wc -l <"$d/out")" -eq 3 ] || { echo "want a1, a2, a4 in the output"; cat "$d/out"; exit 1; }
# A rerun that does not reach the old rejects (here: given other input) keeps them.
cp "$d/rej1" "$d/rej"
head -n 1 "$d/in.jsonl" >"$d/first.jsonl"
run "$d/first.jsonl"
[ $rc -eq 0 ] || { echo "partial rerun: exit $rc, want 0"; cat "$d/err"; exit 1; }
diff -u "$d/rej1" "$d/rej" || { echo "partial rerun lost the old rejects"; exit 1; }
echo ok
