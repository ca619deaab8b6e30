#!/bin/sh
# summarize-basic.sh: what pq-summarize sends and writes: the built-in prompt
# (same template for every article) or --prompt-file, the body fields from
# --temperature/--top-p/--top-k/--min-p/--max-tokens/-o (-o wins; top_p 1
# unless set, top_k and min_p only when set), per-article seeds that
# are stable across runs and move with --seed, stdin input, numeric ids.
set -eu
. "$PQ_TOP/tests/lib-fake.sh"
d=$(mktemp -d)
trap 'fake_stop; rm -rf "$d"' EXIT
fake_start --log "$d/log"
s=$PQ_BIN/pq-summarize
a=$PQ_TOP/tests/fixtures/articles.jsonl

"$s" --model pol <"$a" >"$d/builtin.jsonl" 2>"$d/err"
"$s" --model pol <"$a" >"$d/again.jsonl" 2>>"$d/err"
"$s" --model pol --seed 7 <"$a" >/dev/null 2>>"$d/err"
printf 'Summarize this in one line:\n{article}\nEnd of text. {other}\n' >"$d/prompt.txt"
printf '{"id": 42, "article": "A numeric id is fine. It is kept as a number. So is this."}\n' >"$d/num.jsonl"
"$s" --model pol --prompt-file "$d/prompt.txt" "$d/num.jsonl" "$a" >"$d/file.jsonl" 2>>"$d/err"
"$s" --model pol --temperature 0.8 --top-p 0.9 --max-tokens 100 -o max_completion_tokens=512 \
     -o 'stop=["\n\n"]' -o top_p=0.5 "$d/num.jsonl" >/dev/null 2>>"$d/err"
# Over its own output: our fields are replaced, not repeated.
"$s" --model pol2 "$d/builtin.jsonl" >"$d/rerun.jsonl" 2>>"$d/err"
"$s" --model pol --top-p 0.95 --top-k 40 --min-p 0.05 "$d/num.jsonl" >/dev/null 2>>"$d/err"
"$s" --model pol --top-k 0 --min-p 0 "$d/num.jsonl" >/dev/null 2>>"$d/err"
for bad in "--top-k -1" "--top-k x" "--min-p 1.5" "--min-p -0.1" "--top-p 2"; do
  # shellcheck disable=SC2086
  if "$s" --model pol $bad "$d/num.jsonl" >/dev/null 2>"$d/bad"; then echo "accepted $bad" >&2; exit 1; fi
  grep -q -- "${bad% *}" "$d/bad" || { echo "no message naming ${bad% *}:" >&2; cat "$d/bad" >&2; exit 1; }
done
"$PQ_PY" - "$d" "$a" <<'EOF'
import json, sys
d, arts = sys.argv[1], [json.loads(l) for l in open(sys.argv[2])]
b = [json.loads(l) for l in open(d + "/builtin.jsonl")]
assert [x["id"] for x in b] == [x["id"] for x in arts]
tmpl = {x["prompt"][0]["content"].replace(x["article"], "{article}") for x in b}
assert len(tmpl) == 1 and "{article}" in tmpl.pop(), "one template with the article in it"
for x in b:
    assert x["prompt"] == [{"role": "user", "content": x["prompt"][0]["content"]}] and x["policy"] == "pol"
assert open(d + "/again.jsonl").read() == open(d + "/builtin.jsonl").read(), "not reproducible"
f = [json.loads(l) for l in open(d + "/file.jsonl")]
assert f[0]["id"] == 42 and len(f) == 4
for x in f:
    assert x["prompt"][0]["content"] == "Summarize this in one line:\n%s\nEnd of text. {other}\n" % x["article"]
for x, y in zip(b, open(d + "/rerun.jsonl")):
    assert y.count('"summary"') == 1 and y.count('"policy"') == 1, y
    y = json.loads(y)
    assert y["policy"] == "pol2" and y["sample"] == 0 and {k: v for k, v in y.items() if k not in ("policy", "prompt")} == \
        {k: v for k, v in x.items() if k not in ("policy", "prompt")}, (x, y)
log = [json.loads(l) for l in open(d + "/log")]
s1, s2, s3 = [[r["seed"] for r in log[k:k + 3]] for k in (0, 3, 6)]
assert s1 == s2 and s1 != s3 and len(set(s1)) == 3, (s1, s2, s3)
assert all(r["params"] == {"top_p": 1} for r in log[:10]), "nothing but model, messages, seed, top_p 1 by default"
assert len(log) == 19 and log[13]["params"] == {"temperature": 0.8, "top_p": 0.5, "max_tokens": 100,
                             "max_completion_tokens": 512, "stop": ["\n\n"]}, log[13]["params"]
assert log[17]["params"] == {"top_p": 0.95, "top_k": 40, "min_p": 0.05}, log[17]["params"]
assert log[18]["params"] == {"top_p": 1, "top_k": 0, "min_p": 0}, log[18]["params"]
EOF
echo ok
