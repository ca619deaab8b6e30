#!/bin/sh
# launch-dpo.sh: scripts/launch-dpo gives each rank its environment, device and
# the whole input, streamed (a rank sees the first line while the writer is
# still open), passes rank 0's output and exit status, SIGTERM on to the ranks,
# and stops the other ranks when one fails (a stand-in pq-dpo records what it
# got).
set -eu
d=$(mktemp -d)
writer=""
trap '[ -z "$writer" ] || kill $writer 2>/dev/null || true; rm -rf "$d"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
cat >"$d/fake" <<'FAKE'
#!/bin/sh
if [ -n "${FAKE_STREAM:-}" ]; then # each line logged as it comes; TERM: exit 130 as pq-dpo
  trap 'echo "rank $RANK got TERM" >>"$FAKE_LOG.$RANK"; exit 130' TERM
  while IFS= read -r l; do echo "rank $RANK got $l" >>"$FAKE_LOG.$RANK"; done
  exit 0
fi
n=$(wc -l)
echo "rank $RANK of $WORLD_SIZE local $LOCAL_RANK at $MASTER_ADDR:$MASTER_PORT $1 $2 args $3 lines $n" >>"$FAKE_LOG.$RANK"
echo "out of rank $RANK"
if [ "${FAKE_FAIL:-}" = "$RANK" ]; then exit 5; fi
if [ -n "${FAKE_FAIL:-}" ]; then sleep 30; fi
exit 0
FAKE
chmod +x "$d/fake"
printf 'a\nb\nc\n' >"$d/in"
FAKE_LOG=$d/log sh "$PQ_TOP/scripts/launch-dpo" -g 3,5 --port 4321 --pq-dpo "$d/fake" -- -m <"$d/in" >"$d/out"
[ "$(cat "$d/out")" = "out of rank 0" ] || fail "output: $(cat "$d/out")"
[ "$(cat "$d/log.0")" = "rank 0 of 2 local 0 at 127.0.0.1:4321 --device cuda:3 args -m lines 3" ] || fail "$(cat "$d/log.0")"
[ "$(cat "$d/log.1")" = "rank 1 of 2 local 1 at 127.0.0.1:4321 --device cuda:5 args -m lines 3" ] || fail "$(cat "$d/log.1")"
# rank 2 fails: the others are stopped at once and its status is the launcher's
start=$(date +%s)
rc=0
FAKE_LOG=$d/log2 FAKE_FAIL=2 sh "$PQ_TOP/scripts/launch-dpo" -g 0,1,2 --pq-dpo "$d/fake" -- -m <"$d/in" >/dev/null 2>"$d/err" || rc=$?
[ $rc -eq 5 ] || fail "failing rank: exit $rc, want 5"
[ $(( $(date +%s) - start )) -lt 20 ] || fail "the other ranks were not stopped"
grep -q "stopping the others" "$d/err" || fail "no message: $(cat "$d/err")"
# streaming: both ranks get line a while the writer holds b back; SIGTERM to
# the launcher reaches them, and their 130 is its status
mkfifo "$d/in.fifo"
{ echo a; i=0; while [ ! -e "$d/go" ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done; echo b; } >"$d/in.fifo" &
writer=$!
FAKE_STREAM=1 FAKE_LOG=$d/log3 sh "$PQ_TOP/scripts/launch-dpo" -g 0,1 --pq-dpo "$d/fake" -- -m <"$d/in.fifo" >/dev/null &
pid=$!
i=0
while ! { grep -q "got a" "$d/log3.0" && grep -q "got a" "$d/log3.1"; } 2>/dev/null && [ $i -lt 300 ]; do
  sleep 0.1; i=$((i + 1))
done
grep -q "got a" "$d/log3.1" || { touch "$d/go"; fail "the input is not streamed to the ranks"; }
kill -TERM $pid
sleep 0.5
touch "$d/go"
rc=0; wait $pid || rc=$?
[ $rc -eq 130 ] || fail "SIGTERM: exit $rc, want 130"
grep -q "got TERM" "$d/log3.0" && grep -q "got TERM" "$d/log3.1" || fail "SIGTERM not passed on: $(cat "$d"/log3.*)"
rc=0; sh "$PQ_TOP/scripts/launch-dpo" -- x </dev/null 2>/dev/null || rc=$?
[ $rc -eq 2 ] || fail "no -g: exit $rc"
echo ok
