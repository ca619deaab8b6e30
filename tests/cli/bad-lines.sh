#!/bin/sh
# bad-lines.sh: lines a tool cannot take whole are rejected, never half
# read: two objects on a line, text after the object, a NUL byte (cJSON
# stops there); each is reported with its line number, written to --rejects
# byte for byte (NULs kept), counted in the exit status. Ids and reasons are
# escaped on the terminal (no raw control bytes reach it).
set -eu
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
good=$(head -n 1 "$PQ_TOP/tests/fixtures/quiz.jsonl")
"$PQ_PY" - "$d" "$good" <<'PY'
import sys
d, good = sys.argv[1], sys.argv[2].encode()
lines = [
    good,
    good + good,                                # two objects
    good + b" trailing text",                   # text after it
    good + b"\x00" + b'{"id":"hidden"}',        # bytes after a NUL
    good[:20] + b"\x00" + good[20:],            # a NUL inside a string
    b'{"id":"\x1b[31mred\x07","x":1}',          # terminal escapes in the id
    good + b" \t",                              # trailing blanks are fine
]
open(d + "/in.jsonl", "wb").write(b"\n".join(lines) + b"\n")
open(d + "/want-rejects", "wb").write(b"\n".join(lines[1:6]) + b"\n")
PY
rc=0
"$PQ_BIN/pq-pair" --rejects "$d/rej" "$d/in.jsonl" >"$d/out" 2>"$d/err" || rc=$?
[ $rc -eq 1 ] || { echo "exit $rc, want 1"; cat "$d/err"; exit 1; }
cmp "$d/rej" "$d/want-rejects" || { echo "rejects not byte-exact"; od -c "$d/rej" | head; exit 1; }
for pat in 'line 2: text after the JSON value at column' 'line 3: text after the JSON value at column' \
  'line 4: a NUL byte at column' 'line 5: a NUL byte at column 21' 'line 6 (id \x1b[31mred\x07): '; do
  grep -F -q "pq-pair: $pat" "$d/err" || { echo "missing on stderr: $pat"; cat "$d/err"; exit 1; }
done
if LC_ALL=C grep -q "$(printf '\033')" "$d/err"; then echo "a raw ESC reached stderr"; exit 1; fi
grep -q '7 in, 2 done, 5 rejected' "$d/err" || { echo "bad summary"; cat "$d/err"; exit 1; }
echo ok
