#!/bin/sh
# summarize-resume.sh: pq-summarize killed mid-run (SIGINT, then SIGKILL)
# and rerun with --resume ends with every (id, sample) exactly once and no
# partial line; Ctrl-C exits 130 promptly and loses no finished line; an
# article with some samples done asks only for the missing ones, with the
# seeds the first run would have used.
set -eu
. "$PQ_TOP/tests/lib-fake.sh"
d=$(mktemp -d)
trap 'fake_stop; rm -rf "$d"' EXIT
fake_start --latency 0.1 --log "$d/log"
s=$PQ_BIN/pq-summarize

i=0
while [ $i -lt 40 ]; do
  printf '{"id": "r%02d", "article": "Story %d begins. A storm hit the coast on Sunday night. Power was cut to ten thousand homes. Crews worked through the night to restore it."}\n' $i $i
  i=$((i + 1))
done >"$d/in.jsonl"

check() { # file: every (id, sample) of 40 x 2 exactly once, whole lines
  "$PQ_PY" - "$1" <<'EOF'
import json, sys
data = open(sys.argv[1]).read()
assert data.endswith("\n"), "partial last line"
keys = [(o["id"], o["sample"]) for o in map(json.loads, data.splitlines())]
want = [("r%02d" % i, k) for i in range(40) for k in (0, 1)]
assert sorted(keys) == want, (len(keys), sorted(set(want) - set(keys))[:5], [k for k in keys if keys.count(k) > 1][:5])
EOF
}

run_and_kill() { # signal out
  "$s" --model p -n 2 -j 2 --resume "$2" "$d/in.jsonl" 2>"$d/err.$1" &
  pid=$!
  k=0
  while [ "$(cat "$2" 2>/dev/null | wc -l)" -lt 10 ] && [ $k -lt 200 ]; do sleep 0.05; k=$((k + 1)); done
  kill -"$1" $pid
  t0=$(date +%s)
  rc=0
  wait $pid || rc=$?
  echo $rc >"$d/rc.$1"
  [ $(( $(date +%s) - t0 )) -le 2 ] || { echo "$1: slow to stop"; exit 1; }
}

# Ctrl-C: exit 130, finished lines kept, whole; the rerun completes.
run_and_kill INT "$d/a.jsonl"
[ "$(cat "$d/rc.INT")" -eq 130 ] || { echo "SIGINT: exit $(cat "$d/rc.INT"), want 130"; cat "$d/err.INT"; exit 1; }
grep -q 'interrupted: rerun with --resume' "$d/err.INT" || { cat "$d/err.INT"; exit 1; }
n1=$(wc -l <"$d/a.jsonl")
[ "$n1" -ge 10 ] && [ "$n1" -lt 80 ] || { echo "SIGINT: $n1 lines at the kill"; exit 1; }
"$s" --model p -n 2 -j 4 --resume "$d/a.jsonl" "$d/in.jsonl" 2>"$d/err.a2"
grep -q "skipped (already in" "$d/err.a2" || { cat "$d/err.a2"; exit 1; }
check "$d/a.jsonl"

# SIGKILL: no cleanup at all; a torn last line is dropped by --resume.
run_and_kill KILL "$d/b.jsonl"
[ "$(cat "$d/rc.KILL")" -eq 137 ] || { echo "SIGKILL: exit $(cat "$d/rc.KILL")"; exit 1; }
printf '{"id": "r39", "sample": 1, "summ' >>"$d/b.jsonl"
"$s" --model p -n 2 -j 4 --resume "$d/b.jsonl" "$d/in.jsonl" 2>"$d/err.b2"
grep -q "dropping a partial last line" "$d/err.b2" || { cat "$d/err.b2"; exit 1; }
check "$d/b.jsonl"

# Some samples done: only the missing ones are asked for (client n-mode:
# sample k with the article's seed + k, as a full run asks).
head -n 1 "$d/in.jsonl" >"$d/one.jsonl"
n0=$(wc -l <"$d/log")
"$s" --model p -n 3 --n-mode client "$d/one.jsonl" >"$d/full.jsonl" 2>/dev/null
n1=$(wc -l <"$d/log")
grep '"sample":1' "$d/full.jsonl" >"$d/part.jsonl"
"$s" --model p -n 3 --n-mode client --resume "$d/part.jsonl" "$d/one.jsonl" 2>"$d/err.c"
"$PQ_PY" - "$d/log" $n0 $n1 "$d/full.jsonl" "$d/part.jsonl" <<'EOF'
import json, sys
log = [json.loads(l) for l in open(sys.argv[1])]
n0, n1 = int(sys.argv[2]), int(sys.argv[3])
full = sorted(r["seed"] for r in log[n0:n1])
part = sorted(r["seed"] for r in log[n1:])
assert len(full) == 3 and full == [full[0], full[0] + 1, full[0] + 2], full
assert part == [full[0], full[0] + 2], ("only samples 0 and 2, with their seeds", part, full)
a = sorted(map(json.loads, open(sys.argv[4])), key=lambda o: o["sample"])
b = sorted(map(json.loads, open(sys.argv[5])), key=lambda o: o["sample"])
assert a == b, "the resumed samples differ from the first run's"
EOF
echo ok
