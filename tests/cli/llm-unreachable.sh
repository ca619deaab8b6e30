#!/bin/sh
# llm-unreachable.sh: no server. When every attempt of a request, and all
# since the last reply, found no server (connection refused), the run stops
# at once with exit 3 saying the server is unreachable, rejecting nothing,
# instead of rejecting the lines one by one for hours; --resume then does
# them all. A --model that looks like a path is a model directory or an
# error, never a model name sent to a server.
set -eu
. "$PQ_TOP/tests/lib-fake.sh"
d=$(mktemp -d)
trap 'fake_stop; rm -rf "$d"' EXIT
port=$("$PQ_PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
for k in 1 2 3 4 5 6 7; do sed "s/\"id\": *\"\([^\"]*\)\"/\"id\":\"\1-$k\"/" "$PQ_TOP/tests/fixtures/articles.jsonl"; done >"$d/in.jsonl"
n=$(wc -l <"$d/in.jsonl")
t0=$(date +%s)
rc=0
"$PQ_BIN/pq-summarize" --model p --base-url "http://127.0.0.1:$port/v1" --retries 2 -j 2 --rejects "$d/rej" \
  --resume "$d/out" "$d/in.jsonl" 2>"$d/err" || rc=$?
dt=$(( $(date +%s) - t0 ))
[ $rc -eq 3 ] || { echo "exit $rc, want 3"; cat "$d/err"; exit 1; }
[ $dt -lt 30 ] || { echo "took ${dt}s to give up"; exit 1; }
[ "$(grep -c 'unreachable' "$d/err")" -eq 1 ] || { echo "not said once:"; cat "$d/err"; exit 1; }
[ ! -s "$d/rej" ] || { echo "lines rejected for a missing server:"; cat "$d/rej"; exit 1; }
[ ! -s "$d/out" ] || { echo "output without a server?"; exit 1; }
fake_start
"$PQ_BIN/pq-summarize" --model p --rejects "$d/rej" --resume "$d/out" "$d/in.jsonl" 2>"$d/err" || { cat "$d/err"; exit 1; }
[ "$(wc -l <"$d/out")" -eq "$n" ] || { echo "--resume did not do every line"; exit 1; }

# --model /a/path: checked as a directory, no request sent
mkdir "$d/empty"
for m in "$d/nonexistent/dir" "$d/empty" ./nonexistent; do
  rc=0
  "$PQ_BIN/pq-questions" --model "$m" "$d/in.jsonl" >"$d/out2" 2>"$d/err" || rc=$?
  [ $rc -eq 3 ] || { echo "--model $m: exit $rc, want 3"; cat "$d/err"; exit 1; }
  grep -q -- "--model $m: .*config.json" "$d/err" || { echo "--model $m: not said"; cat "$d/err"; exit 1; }
  ! grep -q "line\|HTTP\|resolve" "$d/err" || { echo "--model $m: requests were sent"; cat "$d/err"; exit 1; }
done
echo ok
