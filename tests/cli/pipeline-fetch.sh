#!/bin/sh
# pipeline-fetch.sh: scripts/fetch-model and scripts/fetch-cnndm against a
# fake hub on 127.0.0.1 (file listing, downloads with byte ranges, the
# datasets server's /rows pages): --dry-run URLs, a download resumed from a
# partial file, sizes checked, the reference's seeded subset (numpy's
# permutation, as datasets' shuffle), and pq-logp loading the fetched model.
set -eu
command -v curl >/dev/null 2>&1 || { echo "FAIL: curl not installed (scripts/setup installs it)"; exit 1; }
command -v jq >/dev/null 2>&1 || { echo "FAIL: jq not installed (scripts/setup installs it)"; exit 1; }
d=$(mktemp -d)
hub_pid=
trap '[ -z "$hub_pid" ] || kill "$hub_pid" 2>/dev/null || :; rm -rf "$d"' EXIT
PATH=$PQ_BIN:$PATH
export PATH
unset HF_TOKEN
no_proxy=127.0.0.1 NO_PROXY=127.0.0.1
export no_proxy NO_PROXY

# 1. --dry-run prints the URLs, offline.
"$PQ_TOP/scripts/fetch-model" --dry-run --cache "$d/cache" >"$d/dry"
grep -qx "https://huggingface.co/api/models/Qwen/Qwen2.5-0.5B-Instruct/tree/main" "$d/dry"
grep -qx "https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct/resolve/main/model.safetensors" "$d/dry"
grep -qx "# into $d/cache/Qwen2.5-0.5B-Instruct/" "$d/dry"
"$PQ_TOP/scripts/fetch-cnndm" --dry-run --split validation --rows 13368 >"$d/dry"
[ "$(wc -l <"$d/dry")" -eq 134 ] || { echo "fetch-cnndm --dry-run: $(wc -l <"$d/dry") URLs, want 134"; exit 1; }
[ "$(tail -n 1 "$d/dry")" = "https://datasets-server.huggingface.co/rows?dataset=abisee%2Fcnn_dailymail&config=3.0.0&split=validation&offset=13300&length=100" ] ||
  { echo "fetch-cnndm --dry-run: last URL $(tail -n 1 "$d/dry")"; exit 1; }
rc=0; "$PQ_TOP/scripts/fetch-cnndm" --split dev --dry-run >/dev/null 2>&1 || rc=$?
[ $rc -eq 2 ] || { echo "fetch-cnndm --split dev: exit $rc, want 2"; exit 1; }
rc=0; "$PQ_TOP/scripts/fetch-model" --dry-run Unknown-Model >/dev/null 2>&1 || rc=$?
[ $rc -eq 2 ] || { echo "fetch-model Unknown-Model: exit $rc, want 2"; exit 1; }

# 2. A fake hub serving a tiny model and 250 rows of a split.
"$PQ_TOP/scripts/pq-pipeline" --make-tiny-model "$d/src" 2>/dev/null
cat >"$d/hub.py" <<'EOF'
import http.server, json, os, sys, urllib.parse
src, portfile, log = sys.argv[1], sys.argv[2], sys.argv[3]
REPO = "Qwen/Qwen2.5-0.5B-Instruct"
files = sorted(f for f in os.listdir(src) if not f.startswith("."))
ROWS = [{"id": "%040x" % (i * 7919), "article": "Article %d. " % i + "Words go here. " * (i % 5 + 1),
         "highlights": "Highlight %d." % i} for i in range(250)]
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        with open(log, "a") as f:
            f.write("%s %s\n" % (self.path, self.headers.get("Range", "-")))
    def send(self, code, body, extra=()):
        self.send_response(code)
        for k, v in extra:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        u = urllib.parse.urlparse(self.path)
        q = urllib.parse.parse_qs(u.query)
        if u.path == "/api/models/%s/tree/main" % REPO:
            lst = [{"type": "file", "oid": "x", "size": os.path.getsize(os.path.join(src, f)), "path": f} for f in files]
            lst.append({"type": "file", "oid": "y", "size": 5, "path": "README.md"})
            lst.append({"type": "directory", "oid": "z", "size": 0, "path": "onnx"})
            return self.send(200, json.dumps(lst).encode())
        pre = "/%s/resolve/main/" % REPO
        if u.path.startswith(pre) and u.path[len(pre):] in files:
            body = open(os.path.join(src, u.path[len(pre):]), "rb").read()
            r = self.headers.get("Range")
            if r:
                a = int(r.split("=")[1].split("-")[0])
                return self.send(206, body[a:], [("Content-Range", "bytes %d-%d/%d" % (a, len(body) - 1, len(body)))])
            return self.send(200, body)
        if u.path == "/rows" and q.get("dataset") == ["abisee/cnn_dailymail"] and q.get("config") == ["3.0.0"]:
            off, n = int(q["offset"][0]), int(q["length"][0])
            rows = [{"row_idx": i, "row": ROWS[i], "truncated_cells": []} for i in range(off, min(off + n, len(ROWS)))]
            return self.send(200, json.dumps({"features": [], "rows": rows, "num_rows_total": len(ROWS)}).encode())
        self.send(404, b"not found")
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
open(portfile + ".tmp", "w").write(str(s.server_address[1]))
os.rename(portfile + ".tmp", portfile)
s.serve_forever()
EOF
"$PQ_PY" "$d/hub.py" "$d/src" "$d/port" "$d/log" &
hub_pid=$!
i=0
while [ ! -s "$d/port" ]; do
  i=$((i + 1)); [ $i -lt 200 ] || { echo "the fake hub did not start"; exit 1; }
  sleep 0.05
done
url=http://127.0.0.1:$(cat "$d/port")

# 3. fetch-model: a half-downloaded weights file is resumed with a range;
# the files end up identical; a second run does nothing.
m=$d/cache/Qwen2.5-0.5B-Instruct
mkdir -p "$m"
head -c 1000 "$d/src/model.safetensors" >"$m/model.safetensors.part"
HF_ENDPOINT=$url "$PQ_TOP/scripts/fetch-model" --cache "$d/cache" >"$d/out" 2>"$d/err" || { cat "$d/err"; exit 1; }
[ "$(cat "$d/out")" = "$m" ] || { echo "fetch-model printed $(cat "$d/out")"; exit 1; }
for f in config.json tokenizer.json tokenizer_config.json model.safetensors; do cmp "$d/src/$f" "$m/$f"; done
[ -f "$m/.complete" ] && [ ! -e "$m/README.md" ] && [ ! -e "$m/model.safetensors.part" ] || { echo "fetch-model: wrong files"; ls -a "$m"; exit 1; }
grep -q "model.safetensors bytes=1000-" "$d/log" || { echo "fetch-model did not resume"; cat "$d/log"; exit 1; }
n=$(wc -l <"$d/log")
HF_ENDPOINT=$url "$PQ_TOP/scripts/fetch-model" --cache "$d/cache" 2>/dev/null
[ "$(wc -l <"$d/log")" -eq "$n" ] || { echo "fetch-model refetched a complete model"; exit 1; }
printf '{"id":"x","prompt":[{"role":"user","content":"Hi."}],"chosen":[{"role":"user","content":"Hi."},{"role":"assistant","content":"Yes."}],"rejected":[{"role":"user","content":"Hi."},{"role":"assistant","content":"No."}]}\n' |
  pq-logp -t 1 -m "$m" >"$d/logp" 2>/dev/null
grep -q '"ref_chosen_logp":-' "$d/logp" || { echo "pq-logp could not use the fetched model"; exit 1; }
# a size that disagrees with the listing fails (exit 3)
rm -rf "$d/cache2"; mkdir -p "$d/cache2/Qwen2.5-0.5B-Instruct"
cp "$d/src/model.safetensors" "$d/cache2/Qwen2.5-0.5B-Instruct/model.safetensors.part"
printf 'extra' >>"$d/cache2/Qwen2.5-0.5B-Instruct/model.safetensors.part"
rc=0; HF_ENDPOINT=$url "$PQ_TOP/scripts/fetch-model" --cache "$d/cache2" >/dev/null 2>&1 || rc=$?
[ $rc -eq 0 ] && cmp "$d/src/model.safetensors" "$d/cache2/Qwen2.5-0.5B-Instruct/model.safetensors" ||
  { echo "fetch-model: an oversized partial file was not restarted (exit $rc)"; exit 1; }
rc=0; HF_ENDPOINT=$url "$PQ_TOP/scripts/fetch-model" --cache "$d/cache3" HuggingFaceTB/SmolLM2-135M-Instruct >/dev/null 2>&1 || rc=$?
[ $rc -eq 3 ] || { echo "fetch-model of a missing repo: exit $rc, want 3"; exit 1; }

# 4. fetch-cnndm: every row in order, then the reference's subset.
(cd "$d" && PQ_DATASETS_SERVER=$url "$PQ_TOP/scripts/fetch-cnndm" --split test 2>/dev/null)
[ "$(wc -l <"$d/cnndm-test.jsonl")" -eq 250 ] || { echo "fetch-cnndm: $(wc -l <"$d/cnndm-test.jsonl") rows, want 250"; exit 1; }
n=$(wc -l <"$d/log")
(cd "$d" && PQ_DATASETS_SERVER=$url "$PQ_TOP/scripts/fetch-cnndm" --split test --seed 21 --limit 20 -o sub.jsonl 2>/dev/null)
"$PQ_PY" - "$d" <<'EOF'
import json, sys
import numpy as np
d = sys.argv[1]
allr = [json.loads(l) for l in open(d + "/cnndm-test.jsonl")]
assert [r["article"].split(".")[0] for r in allr] == ["Article %d" % i for i in range(250)]
assert all(sorted(r) == ["article", "highlights", "id"] for r in allr)
sub = [json.loads(l) for l in open(d + "/sub.jsonl")]
want = np.random.default_rng(21).permutation(250)[:20]
assert [r["id"] for r in sub] == [allr[i]["id"] for i in want], "not datasets' shuffle(seed=21).select(range(20))"
EOF
# the subset came from the pages already there: no new request
[ "$(wc -l <"$d/log")" -eq "$n" ] || { echo "fetch-cnndm refetched pages"; exit 1; }
echo ok
