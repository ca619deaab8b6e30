#!/bin/sh
# llm-auth.sh: a 401 is fatal (exit 3, a clear message, the finished lines
# kept, nothing rejected, no more requests sent); the key comes from
# $OPENAI_API_KEY or --api-key-env; a dead endpoint is retried, then the
# run stops as unreachable (exit 3, nothing rejected); bad client options are
# usage errors (exit 2).
set -eu
. "$PQ_TOP/tests/lib-fake.sh"
d=$(mktemp -d)
trap 'fake_stop; rm -rf "$d"' EXIT
fake_start --key sesame --log "$d/log"
s=$PQ_BIN/pq-summarize
a=$PQ_TOP/tests/fixtures/articles.jsonl

# A wrong key: exit 3, the server's message, one request only.
rc=0
OPENAI_API_KEY=wrong "$s" --model p -j 1 --rejects "$d/rej" "$a" >"$d/out" 2>"$d/err" || rc=$?
[ $rc -eq 3 ] || { echo "wrong key: exit $rc, want 3"; cat "$d/err"; exit 1; }
grep -q '^pq-summarize: fatal: HTTP 401: Incorrect API key' "$d/err" || { cat "$d/err"; exit 1; }
[ ! -s "$d/out" ] && [ ! -s "$d/rej" ] || { echo "wrong key: output or rejects written"; exit 1; }
[ "$(wc -l <"$d/log")" -eq 1 ] || { echo "kept sending after a 401:"; cat "$d/log"; exit 1; }

# No key at all: no Authorization header, same fatal error.
rc=0
env -u OPENAI_API_KEY "$s" --model p "$a" >"$d/out" 2>"$d/err" || rc=$?
[ $rc -eq 3 ] || { echo "no key: exit $rc, want 3"; cat "$d/err"; exit 1; }

# --api-key-env names the variable.
MY_KEY=sesame "$s" --model p --api-key-env MY_KEY "$a" >"$d/out" 2>"$d/err"
[ "$(wc -l <"$d/out")" -eq 3 ] || { cat "$d/err"; exit 1; }

# A 401 mid-run ([[fake:401]] on line 3, one request at a time): lines 1-2
# are written, exit 3.
{ head -n 2 "$a"; printf '{"id": "k", "article": "Some text. [[fake:401]]"}\n'; tail -n 1 "$a"; } >"$d/in.jsonl"
rc=0
OPENAI_API_KEY=sesame "$s" --model p -j 1 --rejects "$d/rej" "$d/in.jsonl" >"$d/out" 2>"$d/err" || rc=$?
[ $rc -eq 3 ] || { echo "401 mid-run: exit $rc, want 3"; cat "$d/err"; exit 1; }
"$PQ_PY" -c '
import json, sys
ids = [json.loads(l)["id"] for l in open(sys.argv[1])]
assert [json.loads(l)["id"] for l in open(sys.argv[2])] == ids[:2], "lines 1-2 not written"
' "$a" "$d/out"
[ ! -s "$d/rej" ] || { echo "401 mid-run: lines rejected"; cat "$d/rej"; exit 1; }
fake_stop

# Nobody listening: retried, then the run stops as unreachable (exit 3) with
# curl's reason, rejecting nothing (tests/cli/llm-unreachable.sh has more).
rc=0
"$s" --model p --base-url "http://127.0.0.1:$FAKE_PORT/v1/" --retries 1 --rejects "$d/rej" "$a" >"$d/out" 2>"$d/err" || rc=$?
[ $rc -eq 3 ] || { echo "dead endpoint: exit $rc, want 3"; cat "$d/err"; exit 1; }
[ "$(grep -c "unreachable (.*\(Couldn't connect\|Connection refused\|Failed to connect\)" "$d/err")" -eq 1 ] || { cat "$d/err"; exit 1; }
[ ! -s "$d/rej" ] || { echo "dead endpoint: lines rejected"; exit 1; }

# Usage errors.
for args in "" "--model p -o nojson" "--model p -o x={" "--model p --n-mode both" "--model p -j 0" \
            "--model p --temperature hot" "--model p --timeout 0" "--model p -n 0" "--model p --prompt-file /nonexistent"; do
  rc=0
  # shellcheck disable=SC2086
  "$s" $args </dev/null >"$d/out" 2>"$d/err" || rc=$?
  [ $rc -eq 2 ] || { echo "'$args': exit $rc, want 2"; cat "$d/err"; exit 1; }
done
echo ok
