# test_chat_templates: the chat goldens (tests/golden/chat/templates/) are
# what jinja2 renders today in transformers' environment (regenerated and
# compared), and pq-tokenize --chat gives the text jinja2 renders and the ids
# Hugging Face tokenizers give it, with --chat-template FILE, --chat-var,
# --date and --add-generation-prompt.
import datetime
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

TOP = os.environ.get("PQ_TOP", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BIN = os.environ.get("PQ_BIN", os.path.join(TOP, "bin"))
PY = os.environ.get("PQ_PY", sys.executable)

import tokenizers  # noqa: E402

failed = 0


def fail(msg):
    global failed
    failed += 1
    print("FAIL " + msg)


# the generator, as a module: its environment is the reference
path = os.path.join(TOP, "scripts", "gen-chat-goldens")
gen = importlib.util.module_from_spec(importlib.util.spec_from_loader("gen", importlib.machinery.SourceFileLoader("gen", path)))
gen.__loader__.exec_module(gen)

r = subprocess.run([PY, path, "--check"], capture_output=True, text=True)
if r.returncode:
    fail("goldens differ from jinja2 now: " + r.stderr[-2000:])

with tempfile.TemporaryDirectory() as d:
    model = os.path.join(d, "m")
    subprocess.run([PY, os.path.join(TOP, "tests", "make_tiny_model.py"), "--arch", "llama", "--out", model],
                   check=True, capture_output=True)
    cfg = json.load(open(os.path.join(model, "tokenizer_config.json")))
    tok = tokenizers.Tokenizer.from_file(os.path.join(model, "tokenizer.json"))
    convs = [[gen.U("Hi")], [gen.U(" x \n"), gen.A("y"), gen.U("héllo 🙂")], [gen.U("a"), gen.U("b")], [gen.S("s"), gen.U("u")]]
    qwen3 = os.path.join(TOP, "tests", "fixtures", "templates", "Qwen-Qwen3-0.6B.jinja")
    llama32 = os.path.join(TOP, "tests", "fixtures", "templates", "meta-llama-Llama-3.2-3B-Instruct.jinja")
    runs = [  # (pq-tokenize options, template source, extra variables, date)
        ([], cfg["chat_template"], {}, None),
        (["--add-generation-prompt"], cfg["chat_template"], {}, None),
        (["--chat-template", qwen3, "--chat-var", "enable_thinking=false", "--add-generation-prompt"],
         open(qwen3, encoding="utf-8").read(), {"enable_thinking": False}, None),
        (["--chat-template", llama32, "--date", "2025-03-09"], open(llama32, encoding="utf-8").read(), {}, "2025-03-09"),
    ]
    inp = os.path.join(d, "in.jsonl")
    with open(inp, "w", encoding="utf-8") as f:
        for i, c in enumerate(convs):
            f.write(json.dumps({"id": str(i), "messages": c}, ensure_ascii=False) + "\n")
    for opts, src, extra, date in runs:
        gen.DATE = date or datetime.date.today().isoformat()
        env, _ = gen.environment()
        t = env.from_string(src)
        r = subprocess.run([os.path.join(BIN, "pq-tokenize"), "--model", model, "--chat", *opts, inp],
                           capture_output=True, text=True)
        got = {json.loads(l)["id"]: json.loads(l) for l in r.stdout.splitlines()}
        for i, c in enumerate(convs):
            kw = {"bos_token": cfg["bos_token"], "eos_token": cfg["eos_token"], "tools": None, "documents": None, **extra}
            try:
                want = t.render(messages=c, add_generation_prompt="--add-generation-prompt" in opts, **kw)
            except Exception as ex:
                if str(i) in got:
                    fail(f"{opts} conversation {i}: jinja2 raises {ex}, pq-tokenize rendered")
                elif str(ex) not in r.stderr:
                    fail(f"{opts} conversation {i}: jinja2 raises {ex}; pq-tokenize says {r.stderr}")
                continue
            g = got.get(str(i))
            if not g:
                fail(f"{opts} conversation {i}: rejected: {r.stderr}")
            elif g["text"] != want:
                fail(f"{opts} conversation {i}: text {g['text']!r}, jinja2 {want!r}")
            elif g["ids"] != tok.encode(want, add_special_tokens=False).ids:
                fail(f"{opts} conversation {i}: ids differ from tokenizers'")

    # the other tools that render take --chat-var and --date too, and refuse bad ones
    for tool in ("pq-logp", "pq-dpo"):
        for bad, msg in ((["--chat-var", "enable_thinking"], "NAME=JSON"), (["--date", "2023-02-29"], "YYYY-MM-DD")):
            r = subprocess.run([os.path.join(BIN, tool), "--model", model, *bad], input="", capture_output=True, text=True)
            if r.returncode != 2 or msg not in r.stderr:
                fail(f"{tool} {bad}: exit {r.returncode}, {r.stderr.strip()}")

print("FAILED" if failed else "ok")
sys.exit(1 if failed else 0)
