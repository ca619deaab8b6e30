#!/bin/sh
# logp-parallel.sh: scripts/logp-parallel with CPU jobs gives exactly what one
# pq-logp gives (outputs in input order, rejects collected), with more jobs
# than lines, on empty input, and fails (exit 3) when a part fails.
set -eu
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
[ -x "$PQ_BIN/pq-logp" ] || { echo "no pq-logp built"; exit 1; }
command -v parallel >/dev/null || { echo "FAIL: GNU parallel not installed (scripts/setup installs it)"; exit 1; }
"$PQ_PY" "$PQ_TOP/tests/make_tiny_model.py" --arch llama --out "$d/m" --layers 1 --hidden 32 --heads 2 \
  --kv-heads 1 --intermediate 48
# 9 pairs (3 fixtures x 3 ids) and a broken line in the middle
for k in 1 2 3; do
  sed "s/\"id\": \"\([^\"]*\)\"/\"id\": \"\1-$k\"/" "$PQ_TOP/tests/fixtures/pairs.jsonl"
  [ $k -ne 2 ] || echo 'not json'
done >"$d/in.jsonl"
[ "$(wc -l <"$d/in.jsonl")" -eq 10 ] || fail "input: $(wc -l <"$d/in.jsonl") lines"
args="-m $d/m --batch 1 -t 1"
rc=0; "$PQ_BIN/pq-logp" --no-progress $args --rejects "$d/ref.rej" <"$d/in.jsonl" >"$d/ref.out" 2>/dev/null || rc=$?
[ $rc -eq 1 ] || fail "pq-logp alone: exit $rc"
lp() { sh "$PQ_TOP/scripts/logp-parallel" --pq-logp "$PQ_BIN/pq-logp" "$@"; }
for j in 2 3 12; do
  rc=0; lp -j $j --rejects "$d/rej" -- $args <"$d/in.jsonl" >"$d/out" 2>"$d/err" || rc=$?
  [ $rc -eq 1 ] || { cat "$d/err"; fail "-j $j: exit $rc, want 1"; }
  diff -u "$d/ref.out" "$d/out"
  diff -u "$d/ref.rej" "$d/rej"
done
# -o and no rejects: exit 0
grep -v 'not json' "$d/in.jsonl" >"$d/good.jsonl"
rc=0; lp -j 2 -o "$d/out2" -- $args <"$d/good.jsonl" 2>"$d/err" || rc=$?
[ $rc -eq 0 ] || { cat "$d/err"; fail "good input: exit $rc"; }
diff -u "$d/ref.out" "$d/out2"
# empty input: empty output
lp -j 2 -- $args </dev/null >"$d/out3"
[ ! -s "$d/out3" ] || fail "empty input gave output"
# a failing part (no such model): exit 3, nothing written
rc=0; lp -j 2 -- -m "$d/none" <"$d/good.jsonl" >"$d/out4" 2>"$d/err" || rc=$?
[ $rc -eq 3 ] || fail "missing model: exit $rc, want 3"
[ ! -s "$d/out4" ] || fail "a failed run wrote output"
# options that belong to the script
rc=0; lp -j 2 -- $args --resume x </dev/null >/dev/null 2>&1 || rc=$?
[ $rc -eq 2 ] || fail "--resume after --: exit $rc, want 2"
echo ok
