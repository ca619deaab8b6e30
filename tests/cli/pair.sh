#!/bin/sh
# pair.sh: pq-pair's golden cases (tests/cases/pair/<case>/: args, one
# argument a line; in.jsonl on stdin; expected.jsonl; status and
# expected.stderr when given), then properties no single case shows:
# sampling does not depend on input order, the valid split, resume.
set -eu
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
pair=$PQ_BIN/pq-pair
fail=0
n=0
for c in "$PQ_TOP"/tests/cases/pair/*/; do
  name=$(basename "$c")
  set --
  if [ -f "$c/args" ]; then
    while IFS= read -r a; do set -- "$@" "$a"; done <"$c/args"
  fi
  rc=0
  "$pair" "$@" <"$c/in.jsonl" >"$d/out" 2>"$d/err" || rc=$?
  want=0
  [ ! -f "$c/status" ] || want=$(cat "$c/status")
  n=$((n + 1))
  if [ "$rc" -ne "$want" ]; then
    echo "FAIL $name: exit $rc, want $want"; cat "$d/err"; fail=$((fail + 1)); continue
  fi
  if ! diff -u "$c/expected.jsonl" "$d/out"; then echo "FAIL $name: output"; fail=$((fail + 1)); continue; fi
  if [ -f "$c/expected.stderr" ]; then
    # the last line is the summary, with a time in it
    sed '$d' "$d/err" >"$d/err.lines"
    if ! diff -u "$c/expected.stderr" "$d/err.lines"; then echo "FAIL $name: stderr"; fail=$((fail + 1)); fi
  fi
done
echo "$n pq-pair cases run, $fail failed"
[ "$fail" -eq 0 ] || exit 1

q=$PQ_TOP/tests/fixtures/quiz.jsonl
fails() { echo "FAIL: $*"; exit 1; }

# Sampling (--max-pairs) and the output do not depend on the input order.
"$pair" --seed 7 <"$q" >"$d/a" 2>/dev/null
awk '{ l[NR] = $0 } END { for (i = NR; i >= 1; i--) print l[i] }' "$q" | "$pair" --seed 7 >"$d/b" 2>/dev/null
awk 'NR % 3 == 0' "$q" >"$d/shuf"; awk 'NR % 3 == 1' "$q" >>"$d/shuf"; awk 'NR % 3 == 2' "$q" >>"$d/shuf"
"$pair" --seed 7 "$d/shuf" >"$d/c" 2>/dev/null
diff -u "$d/a" "$d/b" >/dev/null || fails "reversed input gives other pairs"
diff -u "$d/a" "$d/c" >/dev/null || fails "shuffled input gives other pairs"
# at most 3 pairs per article, numbered 0.. within it, and some article is capped
per=$(grep -o '"pair":[0-9]*' "$d/a" | sort | uniq -c | awk '{ printf "%s ", $0 }')
[ "$(grep -c '"pair":3' "$d/a" || true)" -eq 0 ] || fails "more than 3 pairs for an article: $per"
"$pair" --max-pairs 0 <"$q" >"$d/all" 2>/dev/null
[ "$(wc -l <"$d/all")" -gt "$(wc -l <"$d/a")" ] || fails "--max-pairs 3 capped nothing: the test data is too easy"
# every sampled pair is one of the pairs --max-pairs 0 gives (same content, "pair" aside)
sed 's/,"pair":[0-9]*}$/}/' "$d/all" | sort >"$d/all.s"
sed 's/,"pair":[0-9]*}$/}/' "$d/a" | sort >"$d/a.s"
[ "$(comm -23 "$d/a.s" "$d/all.s" | wc -l)" -eq 0 ] || fails "a sampled pair is not a candidate"
# another seed samples differently
"$pair" --seed 8 <"$q" >"$d/s8" 2>/dev/null
! cmp -s "$d/a" "$d/s8" || fails "--seed changes nothing"

# The valid split is by article: no id on both sides, nothing lost or added.
"$pair" --seed 7 --valid "$d/valid" --valid-frac 0.3 <"$q" >"$d/train" 2>"$d/err"
grep -q ' [1-9][0-9]* valid pairs' "$d/err" || fails "no valid pairs: $(cat "$d/err")"
[ -s "$d/train" ] || fails "no train pairs"
cat "$d/train" "$d/valid" | sort >"$d/tv"
sort "$d/a" | diff -u - "$d/tv" >/dev/null || fails "train + valid differs from the unsplit output"
grep -o '^{"id":"[^"]*"' "$d/train" | sort -u >"$d/ids.train"
grep -o '^{"id":"[^"]*"' "$d/valid" | sort -u >"$d/ids.valid"
[ "$(comm -12 "$d/ids.train" "$d/ids.valid" | wc -l)" -eq 0 ] || fails "an article is on both sides"
"$pair" --seed 7 --valid "$d/valid2" --valid-frac 0.3 "$d/shuf" >"$d/train2" 2>/dev/null
cmp -s "$d/valid" "$d/valid2" && cmp -s "$d/train" "$d/train2" || fails "the split depends on the input order"
"$pair" --valid "$d/v0" --valid-frac 0 <"$q" >/dev/null 2>&1
[ ! -s "$d/v0" ] || fails "--valid-frac 0 holds articles out"

# Resume: a run cut short, resumed, gives the whole output once.
head -n 5 "$d/a" >"$d/r"
printf '{"id":"partial' >>"$d/r"
"$pair" --seed 7 --resume "$d/r" <"$q" >/dev/null 2>"$d/err"
diff -u "$d/a" "$d/r" >/dev/null || fails "resume: output differs"
grep -q '5 skipped' "$d/err" || fails "resume: $(cat "$d/err")"

# Bad option values are usage errors.
rc=0; "$pair" --threshold x </dev/null >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 2 ] || fails "--threshold x exited $rc"
rc=0; "$pair" --valid-frac 1.5 </dev/null >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 2 ] || fails "--valid-frac 1.5 exited $rc"
echo "pq-pair properties ok"
