# lib-fake.sh: start and stop the fake OpenAI-compatible server
# (tests/fake_server.py) from CLI tests. Source it, then:
#   d=$(mktemp -d); trap 'fake_stop; rm -rf "$d"' EXIT
#   fake_start [--latency S] [--refuse-n] [--log FILE]
#       starts a server, waits for its port, exports OPENAI_BASE_URL
#       (http://127.0.0.1:PORT/v1) and OPENAI_API_KEY=test, sets FAKE_PORT
#       and FAKE_URL. Calling it again starts another server (the variables
#       then name the newest one).
#   fake_stop   stops every server started (safe to call more than once).
# The servers also exit on their own when the test's shell is gone.
FAKE_PIDS=
FAKE_N=0

fake_start() {
    FAKE_N=$((FAKE_N + 1))
    _fake_dir=${d:-${TMPDIR:-/tmp}}
    _fake_pf=$_fake_dir/fake-port.$$.$FAKE_N
    rm -f "$_fake_pf"
    "${PQ_PY:-python3}" "${PQ_TOP:-.}/tests/fake_server.py" --port-file "$_fake_pf" --die-with $$ "$@" \
        >/dev/null 2>"$_fake_pf.err" &
    _fake_pid=$!
    FAKE_PIDS="$FAKE_PIDS $_fake_pid"
    _fake_i=0
    while [ ! -s "$_fake_pf" ]; do
        if ! kill -0 "$_fake_pid" 2>/dev/null; then
            echo "fake_start: the fake server died:" >&2
            cat "$_fake_pf.err" >&2
            return 1
        fi
        _fake_i=$((_fake_i + 1))
        if [ $_fake_i -gt 400 ]; then
            echo "fake_start: no port after 20s" >&2
            return 1
        fi
        sleep 0.05
    done
    FAKE_PORT=$(cat "$_fake_pf")
    FAKE_URL=http://127.0.0.1:$FAKE_PORT/v1
    OPENAI_BASE_URL=$FAKE_URL
    OPENAI_API_KEY=test
    # A proxy set in the environment must not get between curl and 127.0.0.1.
    no_proxy=127.0.0.1,localhost${no_proxy:+,$no_proxy}
    export OPENAI_BASE_URL OPENAI_API_KEY no_proxy
    rm -f "$_fake_pf" "$_fake_pf.err"
}

fake_stop() {
    for _fake_pid in $FAKE_PIDS; do
        kill "$_fake_pid" 2>/dev/null || :
        wait "$_fake_pid" 2>/dev/null || :
    done
    FAKE_PIDS=
}
