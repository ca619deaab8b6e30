#!/bin/sh
# launch-dpo.sh: scripts/launch-dpo gives each rank its environment, device and
# the whole input, passes rank 0's output and exit status, and stops the other
# ranks when one fails (a stand-in pq-dpo records what it got).
set -eu
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
cat >"$d/fake" <<'FAKE'
#!/bin/sh
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
rc=0; sh "$PQ_TOP/scripts/launch-dpo" -- x </dev/null 2>/dev/null || rc=$?
[ $rc -eq 2 ] || fail "no -g: exit $rc"
echo ok
