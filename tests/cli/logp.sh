#!/bin/sh
# logp.sh: pq-logp's behaviour as a tool: broken model directories give one
# clear fatal line (exit 3), bad records are rejected with their line and id
# while the rest are written in input order, --resume completes a partial
# output, usage errors exit 2; pair records in both forms score the same.
set -eu
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
[ -x "$PQ_BIN/pq-logp" ] || { echo "no pq-logp built"; exit 1; }
"$PQ_PY" "$PQ_TOP/tests/make_tiny_model.py" --arch llama --out "$d/m" --layers 1 --hidden 32 --heads 2 \
  --kv-heads 1 --intermediate 48
logp() { "$PQ_BIN/pq-logp" --no-progress -t 2 "$@"; }

# usage
rc=0; logp --raw </dev/null >/dev/null 2>"$d/err" || rc=$?
[ $rc -eq 2 ] && grep -q -- "--model DIR is required" "$d/err" || fail "no --model: exit $rc"
rc=0; logp -m "$d/m" --truncate middle </dev/null >/dev/null 2>"$d/err" || rc=$?
[ $rc -eq 2 ] && grep -q "keep_start" "$d/err" || fail "bad --truncate: exit $rc"

# broken model directories: exit 3 and a line naming the problem
broken() { # dir, expected substring
  rc=0; logp --raw -m "$1" </dev/null >/dev/null 2>"$d/err" || rc=$?
  [ $rc -eq 3 ] && grep -q -- "$2" "$d/err" || { cat "$d/err"; fail "$1: exit $rc, want 3 and '$2'"; }
}
broken "$d/none" "none/config.json: No such file"
mkdir "$d/b1" && cp "$d/m/config.json" "$d/b1/"
broken "$d/b1" "no model.safetensors"
mkdir "$d/b2" && cp "$d/m/config.json" "$d/b2/" && head -c 100000 "$d/m/model.safetensors" >"$d/b2/model.safetensors"
broken "$d/b2" "truncated"
mkdir "$d/b3" && cp "$d/m/model.safetensors" "$d/b3/" &&
  sed 's/LlamaForCausalLM/PhiForCausalLM/' "$d/m/config.json" >"$d/b3/config.json"
broken "$d/b3" "unsupported architecture PhiForCausalLM"
mkdir "$d/b4" && cp "$d/m/model.safetensors" "$d/b4/" &&
  sed 's/"num_hidden_layers": 1/"num_hidden_layers": 2/' "$d/m/config.json" >"$d/b4/config.json"
broken "$d/b4" "model.layers.1.input_layernorm.weight is missing"
"$PQ_PY" "$PQ_TOP/tests/make_tiny_model.py" --arch mistral --out "$d/b5" --layers 1 --hidden 32 --heads 2 \
  --kv-heads 1 --intermediate 48 --shards 2
rm "$d/b5/model-00002-of-00002.safetensors"
broken "$d/b5" "model-00002-of-00002.safetensors: No such file"
mkdir "$d/b6" && cp "$d/m/"* "$d/b6/" && echo '{"r": 4}' >"$d/b6/adapter_config.json"
rc=0; logp --raw -m "$d/m" --adapter "$d/b6" </dev/null >/dev/null 2>"$d/err" || rc=$?
[ $rc -eq 3 ] && grep -q "target_modules" "$d/err" || fail "bad adapter: exit $rc"

# --raw records: rejects with line and id, the rest in order
cat >"$d/in.jsonl" <<'EOF'
{"id":"a","ids":[1,5,6,7],"prompt_len":2}
{"id":"b","ids":[1,5],"prompt_len":2}
not json
{"id":"c","ids":[1,99999],"prompt_len":1}
{"id":"d","prompt_len":1}
{"id":"e","ids":[1,2,3,4,5,6,7,8,9,10,11],"prompt_len":1}
{"id":"f","ids":[1,8,9],"prompt_len":1,"extra":{"kept":true}}
EOF
rc=0; logp --raw -m "$d/m" --max-length 10 --rejects "$d/rej" "$d/in.jsonl" >"$d/out" 2>"$d/err" || rc=$?
[ $rc -eq 1 ] || { cat "$d/err"; fail "rejects: exit $rc, want 1"; }
[ "$(sed 's/^{"id":"\([a-z]\)".*/\1/' "$d/out" | tr -d '\n')" = af ] || fail "outputs: $(cat "$d/out")"
grep -q '"extra":{"kept":true},"logp":-[0-9.e-]*,"tokens":2}' "$d/out" || fail "fields: $(cat "$d/out")"
[ "$(wc -l <"$d/rej")" -eq 5 ] || fail "rejects file: $(cat "$d/rej")"
for want in "line 2 (id b): prompt_len 2 leaves no response" "line 3: not JSON" "line 4 (id c): ids: not a token id" \
  "line 5 (id d): --raw records need" "line 6 (id e): 11 ids exceed --max-length 10"; do
  grep -qF "$want" "$d/err" || { cat "$d/err"; fail "no message '$want'"; }
done

# --resume: a run cut after the first line completes without duplicates
head -n 1 "$d/out" >"$d/res"
rc=0; logp --raw -m "$d/m" --max-length 10 --resume "$d/res" "$d/in.jsonl" >/dev/null 2>"$d/err" || rc=$?
[ $rc -eq 1 ] || fail "resume: exit $rc"
diff -u "$d/out" "$d/res"

# pair records: both forms give the same numbers, per-token values sum to the total
cat >"$d/pairs.jsonl" <<'EOF'
{"id":"p1","prompt":[{"role":"user","content":"Summarize: the cat sat on the mat."}],"chosen":[{"role":"user","content":"Summarize: the cat sat on the mat."},{"role":"assistant","content":"A cat sat."}],"rejected":[{"role":"user","content":"Summarize: the cat sat on the mat."},{"role":"assistant","content":"Something happened somewhere."}]}
{"id":"p2","prompt":[{"role":"user","content":"Summarize: the cat sat on the mat."}],"chosen":[{"role":"assistant","content":"A cat sat."}],"rejected":[{"role":"assistant","content":"Something happened somewhere."}]}
{"id":"p3","prompt":[{"role":"user","content":"x"}],"chosen":[{"role":"assistant","content":""}],"rejected":[{"role":"assistant","content":"y"}]}
{"id":"p4","chosen":[{"role":"assistant","content":"y"}]}
EOF
rc=0; logp -m "$d/m" --per-token "$d/pairs.jsonl" >"$d/pout" 2>"$d/err" || rc=$?
[ $rc -eq 1 ] || { cat "$d/err"; fail "pairs: exit $rc, want 1"; }
grep -q "line 3 (id p3): empty.*chosen" "$d/err" || { cat "$d/err"; fail "empty response not rejected"; }
grep -q "line 4 (id p4)" "$d/err" || { cat "$d/err"; fail "record without rejected not rejected"; }
"$PQ_PY" - "$d/pout" <<'EOF'
import json, sys
a, b = [json.loads(l) for l in open(sys.argv[1])]
for k in ("ref_chosen_logp", "ref_rejected_logp", "chosen_tokens", "rejected_tokens"):
    assert a[k] == b[k], (k, a[k], b[k])
for k in ("chosen", "rejected"):
    t = a[k + "_token_logps"]
    assert len(t) == a[k + "_tokens"] > 0, k
    assert abs(sum(t) - a["ref_" + k + "_logp"]) < 1e-4, k
    assert all(x <= 0 for x in t), k
EOF

# truncation keeps the whole response; a response that cannot fit is rejected
for pol in article keep_start keep_end; do
  rc=0; logp -m "$d/m" --max-length 24 --truncate $pol "$d/pairs.jsonl" >"$d/tout" 2>"$d/err" || rc=$?
  [ $rc -eq 1 ] || { cat "$d/err"; fail "--truncate $pol: exit $rc"; }
  "$PQ_PY" - "$d/pout" "$d/tout" <<'EOF2'
import json, sys
full, cut = ([json.loads(l) for l in open(f)] for f in sys.argv[1:])
assert len(cut) == 2, cut
for a, b in zip(full, cut):
    assert a["chosen_tokens"] == b["chosen_tokens"] and a["rejected_tokens"] == b["rejected_tokens"], (a, b)
    assert a["ref_chosen_logp"] != b["ref_chosen_logp"]  # the prompt was cut, so the context changed
EOF2
done
rc=0; logp -m "$d/m" --max-length 5 "$d/pairs.jsonl" >"$d/tout" 2>"$d/err" || rc=$?
[ $rc -eq 1 ] && [ ! -s "$d/tout" ] && grep -q "line 1 (id p1)" "$d/err" || { cat "$d/err"; fail "--max-length 5: exit $rc"; }
echo ok
