#!/bin/sh
# dpo-ranks.sh: pq-dpo's data-parallel path on CPUs (lib/dist_cpu.c, the CPU
# build's stand-in for NCCL): two ranks, started by --devices cpu,cpu or by
# hand with RANK/WORLD_SIZE/MASTER_PORT, train as one process does (dropout
# is keyed by pair, not rank); --devices streams its input, stops the group
# when a rank dies, and checkpoints on SIGINT so that --resume goes on.
set -eu
d=$(mktemp -d)
writer=""
trap '[ -z "$writer" ] || kill $writer 2>/dev/null || true; rm -rf "$d"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
unset RANK WORLD_SIZE LOCAL_RANK MASTER_ADDR MASTER_PORT 2>/dev/null || true
"$PQ_PY" "$PQ_TOP/tests/make_tiny_model.py" --arch llama --out "$d/m" >/dev/null
# 9 pairs (the fixture's 4, thrice, new ids): steps of 4, 4 and 1 pairs, so
# in the last one rank 1 has no pair
for k in 0 1 2; do sed "s/\"id\": \"\([^\"]*\)\"/\"id\": \"\1-$k\"/" "$PQ_TOP/tests/fixtures/dpo-pairs.jsonl"; done |
  head -n 9 >"$d/pairs.jsonl"
"$PQ_BIN/pq-logp" -m "$d/m" -t 1 --no-progress "$d/pairs.jsonl" >"$d/ref.jsonl" 2>/dev/null
set -- -m "$d/m" -t 1 --batch-size 4 --lora-dropout 0.1 --lr 1e-3 --no-progress
dpo() { "$PQ_BIN/pq-dpo" "$@"; }

# Waits (up to 60 s) until file $1 is not empty.
wait_for() {
  i=0
  while [ ! -s "$1" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
  [ -s "$1" ]
}
# Into the FIFO $d/in (each time a new one): the first 4 pairs, then the
# rest once $d/go exists: a writer still open.
slow_writer() {
  [ -z "$writer" ] || kill $writer 2>/dev/null || true # the last one, done
  rm -f "$d/go" "$d/in"
  mkfifo "$d/in"
  {
    head -n 4 "$d/ref.jsonl"
    i=0
    while [ ! -e "$d/go" ] && [ $i -lt 1800 ]; do sleep 0.1; i=$((i + 1)); done # past wait_for's limit
    tail -n +5 "$d/ref.jsonl"
  } >"$d/in" &
  writer=$!
}
# The pid of the worker of launcher $1 whose RANK is $2.
worker() {
  for p in /proc/[0-9]*; do
    s=$(cat "$p/stat" 2>/dev/null) || continue
    ppid=$(echo "${s##*) }" | cut -d' ' -f2)
    [ "$ppid" = "$1" ] || continue
    if tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -qx "RANK=$2"; then echo "${p#/proc/}"; return; fi
  done
}

# (a) one process
dpo "$@" -o "$d/a" "$d/ref.jsonl" >"$d/a.out" 2>"$d/a.err" || { cat "$d/a.err"; fail "one process"; }

# (b) --devices cpu,cpu, fed by a writer that holds its last pairs back until
# the first step's line is out: the input is streamed, not read whole first
slow_writer
"$PQ_BIN/pq-dpo" "$@" --devices cpu,cpu --train-pairs 9 -o "$d/b" <"$d/in" >"$d/b.out" 2>"$d/b.err" &
pid=$!
wait_for "$d/b.out" || { touch "$d/go"; fail "--devices: no step before the input ended (not streamed)"; }
touch "$d/go"
rc=0; wait $pid || rc=$?
[ $rc -eq 0 ] || { cat "$d/b.err"; fail "--devices cpu,cpu: exit $rc"; }

# (c) two processes started by hand, as any launcher does
port=$("$PQ_PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
RANK=1 WORLD_SIZE=2 MASTER_PORT=$port dpo "$@" -o "$d/c" "$d/ref.jsonl" >"$d/c1.out" 2>"$d/c1.err" &
pid=$!
RANK=0 WORLD_SIZE=2 MASTER_PORT=$port dpo "$@" -o "$d/c" "$d/ref.jsonl" >"$d/c.out" 2>"$d/c.err" || { cat "$d/c.err"; fail "rank 0"; }
wait $pid || { cat "$d/c1.err"; fail "rank 1"; }
[ ! -s "$d/c1.out" ] || fail "rank 1 wrote: $(head -n 1 "$d/c1.out")"

# Every step's metrics and the adapter agree with one process's. They differ
# only in the order the pairs' gradients and metrics are added ((g0 + g2) +
# (g1 + g3) against ((g0 + g1) + g2) + g3): float rounding, a few 1e-7
# relative, left a little larger by Adam's normalisation over 3 steps (seen:
# 1e-7 on the loss, 3e-7 of the largest parameter). A pair keyed to the wrong
# dropout mask moves the first step's grad_norm by ~1e-2: far outside 1e-5.
# (b) and (c) run the same sums: they agree exactly.
"$PQ_PY" - "$d" <<'PY'
import json, sys
import numpy as np
from safetensors.numpy import load_file
d = sys.argv[1]
def lines(n): return [json.loads(l) for l in open("%s/%s.out" % (d, n))]
def adapter(n): return load_file("%s/%s/adapter_model.safetensors" % (d, n))
bad = []
a, A = lines("a"), adapter("a")
scale = max(float(np.max(np.abs(v))) for v in A.values())
for n in ("b", "c"):
    got = lines(n)
    if len(got) != 3 or len(a) != 3: bad.append("%s: %d steps, one process %d" % (n, len(got), len(a)))
    for x, y in zip(a, got):
        if y.get("world_size") != 2: bad.append("%s step %s: world_size %s" % (n, y.get("step"), y.get("world_size")))
        for k, v in x.items():
            if k in ("tokens_per_s", "peak_mem_mb"): continue
            if k.startswith("rewards/") and k != "rewards/accuracies": ok = abs(y[k] - v) <= 1e-5
            elif k in ("loss", "grad_norm") or k.startswith("logps/"): ok = abs(y[k] - v) <= 1e-5 * abs(v)
            else: ok = y[k] == v
            if not ok: bad.append("%s step %d %s: %.9g, one process %.9g" % (n, x["step"], k, y[k], v))
    B = adapter(n)
    diff = max(float(np.max(np.abs(A[k] - B[k]))) for k in A)
    print("%s: max metric steps ok, adapter max |diff| %.3g of max |p| %.3g" % (n, diff, scale))
    if set(A) != set(B) or diff > 1e-5 * scale: bad.append("%s: adapter differs by %.3g" % (n, diff))
B, C = adapter("b"), adapter("c")
if any(not np.array_equal(B[k], C[k]) for k in B): bad.append("--devices and hand-started ranks differ")
strip = lambda r: {k: v for k, v in r.items() if k not in ("tokens_per_s", "peak_mem_mb")}
if [strip(r) for r in lines("b")] != [strip(r) for r in lines("c")]: bad.append("b and c metrics differ")
print("; ".join(bad) or "ok")
sys.exit(1 if bad else 0)
PY

# A rank killed mid-run (waiting for input after step 1): the launcher names
# it, kills the other rank and exits with its status (128 + 9), at once.
slow_writer
"$PQ_BIN/pq-dpo" "$@" --devices cpu,cpu --train-pairs 9 --no-save <"$d/in" >"$d/k.out" 2>"$d/k.err" &
pid=$!
wait_for "$d/k.out" || fail "kill test: no first step"
w=$(worker $pid 1)
[ -n "$w" ] || fail "no worker with RANK=1 under $pid"
t0=$(date +%s)
kill -9 "$w"
rc=0; wait $pid || rc=$?
touch "$d/go"
[ $rc -eq 137 ] || { cat "$d/k.err"; fail "a rank killed: exit $rc, want 137"; }
[ $(( $(date +%s) - t0 )) -lt 10 ] || fail "a rank killed: the launcher took too long"
grep -q "rank 1 was killed by signal 9" "$d/k.err" || fail "no message naming the rank: $(cat "$d/k.err")"

# SIGINT to the launcher after step 1: both ranks stop together, rank 0
# saves, exit 130; --resume then trains steps 2 and 3 as one process did.
slow_writer
"$PQ_BIN/pq-dpo" "$@" --devices cpu,cpu --train-pairs 9 -o "$d/i" <"$d/in" >"$d/i.out" 2>"$d/i.err" &
pid=$!
wait_for "$d/i.out" || fail "SIGINT test: no first step"
kill -INT $pid
rc=0; wait $pid || rc=$?
touch "$d/go"
[ $rc -eq 130 ] || { cat "$d/i.err"; fail "SIGINT: exit $rc, want 130"; }
grep -q '"step":[[:space:]]*1,' "$d/i/trainer_state.json" || fail "SIGINT: no checkpoint at step 1: $(cat "$d/i/trainer_state.json" 2>&1)"
dpo "$@" --devices cpu,cpu --resume "$d/i" -o "$d/i" "$d/ref.jsonl" >"$d/r.out" 2>"$d/r.err" || { cat "$d/r.err"; fail "resume"; }
"$PQ_PY" - "$d" <<'PY'
import json, sys
import numpy as np
from safetensors.numpy import load_file
d = sys.argv[1]
a = [json.loads(l) for l in open(d + "/a.out")]
r = [json.loads(l) for l in open(d + "/r.out")]
bad = []
if [x["step"] for x in r] != [2, 3]: bad.append("resumed steps %s" % [x["step"] for x in r])
for x, y in zip(a[1:], r):
    if abs(x["loss"] - y["loss"]) > 1e-5 * x["loss"]: bad.append("step %d loss %.9g, one process %.9g" % (y["step"], y["loss"], x["loss"]))
A, I = load_file(d + "/a/adapter_model.safetensors"), load_file(d + "/i/adapter_model.safetensors")
scale = max(float(np.max(np.abs(v))) for v in A.values())
diff = max(float(np.max(np.abs(A[k] - I[k]))) for k in A)
if diff > 1e-5 * scale: bad.append("interrupted and resumed adapter differs by %.3g" % diff)
print("resume after SIGINT:", "; ".join(bad) or "ok")
sys.exit(1 if bad else 0)
PY

# Usage errors: GPUs in the CPU build, --devices under a launcher, with --device
for bad in "--devices 0,1" "--devices cpu,cpu --device cpu" "--devices ,"; do
  rc=0; dpo "$@" --no-save $bad "$d/ref.jsonl" >/dev/null 2>"$d/u.err" || rc=$?
  [ $rc -eq 2 ] || fail "$bad: exit $rc, want 2"
done
dpo "$@" --no-save --devices 0,1 "$d/ref.jsonl" 2>&1 >/dev/null | grep -q "no CUDA" || fail "--devices 0,1: no word of CUDA"
rc=0; RANK=0 WORLD_SIZE=2 dpo "$@" --no-save --devices cpu,cpu "$d/ref.jsonl" >/dev/null 2>&1 || rc=$?
[ $rc -eq 2 ] || fail "--devices with RANK set: exit $rc, want 2"
echo ok
