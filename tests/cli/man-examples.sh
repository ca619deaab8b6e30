#!/bin/sh
# man-examples.sh: runs every EXAMPLES command of every man page, so the
# documentation cannot drift from the tools. A command is a line starting
# with "$ " inside a .Bd -literal block (a trailing backslash continues it);
# each page's commands run in order, in a fresh directory holding copies of
# tests/fixtures/, with the fake judge server and a tiny model at hand.
set -eu
d=$(mktemp -d)
fake_pid=""
trap 'rm -rf "$d"; [ -z "$fake_pid" ] || kill "$fake_pid" 2>/dev/null || true' EXIT
PATH="$PQ_BIN:$PQ_TOP/scripts:$PATH"
export PATH

# The fake judge (tests/fake_server.py) answers every LLM tool's requests.
"$PQ_PY" "$PQ_TOP/tests/fake_server.py" --port-file "$d/port" >/dev/null 2>&1 &
fake_pid=$!
i=0
while [ ! -s "$d/port" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ -s "$d/port" ] || { echo "fake server did not start"; exit 1; }
OPENAI_BASE_URL="http://127.0.0.1:$(cat "$d/port")/v1"
OPENAI_API_KEY=test
export OPENAI_BASE_URL OPENAI_API_KEY

# A tiny random model, made only if some page needs one.
if grep -l 'PQ_TINY_MODEL' "$PQ_TOP"/man/*.[17] >/dev/null 2>&1; then
  PQ_TINY_MODEL="$d/tiny-model"
  "$PQ_PY" "$PQ_TOP/tests/make_tiny_model.py" --arch llama --out "$PQ_TINY_MODEL" >/dev/null
  export PQ_TINY_MODEL
fi
# The same with bf16 weights, for examples of what only 16-bit models do.
if grep -l 'PQ_TINY_BF16' "$PQ_TOP"/man/*.[17] >/dev/null 2>&1; then
  PQ_TINY_BF16="$d/tiny-bf16"
  "$PQ_PY" "$PQ_TOP/tests/make_tiny_model.py" --arch llama --dtype bf16 --out "$PQ_TINY_BF16" >/dev/null
  export PQ_TINY_BF16
fi

# Extracts the commands of one page, one per line (roff escapes undone).
extract() {
  awk '
    /^\.Bd -literal/ { lit = 1; next }
    /^\.Ed/          { lit = 0; next }
    lit {
      line = $0
      gsub(/\\e/, "\\", line); gsub(/\\-/, "-", line); gsub(/\\\(aq/, "\047", line); gsub(/\\&/, "", line)
      if (cont) { cmd = cmd "\n" line }
      else if (line ~ /^\$ /) { cmd = substr(line, 3) }
      else next
      if (line ~ /\\$/) { cont = 1; next }
      cont = 0; print cmd; print "\036"
    }' "$1"
}

n=0
fail=0
for page in "$PQ_TOP"/man/*.1 "$PQ_TOP"/man/*.7; do
  [ -f "$page" ] || continue
  w="$d/run-$(basename "$page")"
  mkdir -p "$w"
  cp -R "$PQ_TOP"/tests/fixtures/. "$w"/ 2>/dev/null || true
  extract "$page" > "$d/cmds"
  # Records are separated by a line holding only \036.
  awk -v dir="$d" 'BEGIN { RS = "\n\036\n"; k = 0 } NF { k++; f = dir "/cmd." k; printf "%s\n", $0 > f; close(f) } END { print k > (dir "/ncmd") }' "$d/cmds"
  k=$(cat "$d/ncmd")
  j=1
  while [ "$j" -le "$k" ]; do
    n=$((n + 1))
    if ! (cd "$w" && sh -e "$d/cmd.$j") >"$d/out" 2>&1; then
      echo "FAIL $(basename "$page"): $(head -n 3 "$d/cmd.$j")"
      sed 's/^/    /' "$d/out" | tail -n 15
      fail=$((fail + 1))
    fi
    rm -f "$d/cmd.$j"
    j=$((j + 1))
  done
done
echo "$n man-page examples run, $fail failed"
[ "$n" -gt 0 ] || { echo "no examples found"; exit 1; }
[ "$fail" -eq 0 ]
