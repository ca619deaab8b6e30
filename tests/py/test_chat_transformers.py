# test_chat_transformers: the chat goldens that test-jinja holds pq's
# interpreter to (tests/golden/chat/templates/, written by
# scripts/gen-chat-goldens with jinja2 set up as transformers sets it up) are
# what transformers itself renders: every case of every template through
# transformers' own render_jinja_template (the body of apply_chat_template),
# a recent release with no torch in its own venv (.venv-chat, made by
# scripts/setup), strftime_now held at the goldens' date. A case the goldens
# record as an error must raise in transformers too.
import os
import subprocess
import sys

TOP = os.environ.get("PQ_TOP", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CHAT_PY = os.path.join(TOP, ".venv-chat", "bin", "python")

DRIVER = r'''
import datetime, glob, json, sys
import transformers
import transformers.utils.chat_template_utils as ctu

top = sys.argv[1]
files = sorted(glob.glob(top + "/tests/golden/chat/templates/*.json"))
y, m, d = map(int, json.load(open(files[0]))["date"].split("-"))

class Fixed(datetime.datetime):  # strftime_now reads datetime.now()
    @classmethod
    def now(cls, tz=None):
        return cls(y, m, d, 12, 0, 0)

class Mod:
    datetime = Fixed
    now = Fixed.now

ctu.datetime = Fixed if ctu.datetime is datetime.datetime else Mod
match = raised = 0
for f in files:
    g = json.load(open(f, encoding="utf-8"))
    src = open(top + "/tests/fixtures/templates/" + g["template"], encoding="utf-8", newline="").read()
    for c in g["cases"]:
        kw = dict(c["vars"])
        tools, docs = kw.pop("tools", None), kw.pop("documents", None)
        for t in ("bos_token", "eos_token"):
            if g[t] is not None:
                kw[t] = g[t]
        try:
            out, _ = ctu.render_jinja_template(conversations=[c["messages"]], tools=tools, documents=docs,
                                               chat_template=src, add_generation_prompt=c["add_generation_prompt"], **kw)
            got, err = out[0], None
        except Exception as ex:
            got, err = None, str(ex)
        where = "%s / %s / add_generation_prompt=%s" % (g["name"], c["name"], c["add_generation_prompt"])
        if "rendered" in c and got != c["rendered"]:
            print("FAIL %s: golden %r, transformers %r (%s)" % (where, c["rendered"][:200], (got or "")[:200], err))
        elif "rendered" not in c and got is not None:
            print("FAIL %s: golden raises (%s), transformers renders %r" % (where, c["error"][:100], got[:200]))
        elif got is None:
            raised += 1
        else:
            match += 1
print("transformers %s: %d renders equal, %d raise in both" % (transformers.__version__, match, raised))
'''


def main():
    if not os.access(CHAT_PY, os.X_OK):
        print("FAIL: no %s (scripts/setup makes it)" % CHAT_PY)
        return 1
    p = subprocess.run([CHAT_PY, "-c", DRIVER, TOP], capture_output=True, text=True)
    out = p.stdout.strip()
    print(out[-4000:])
    if p.returncode != 0:
        print(p.stderr[-2000:])
        return 1
    if "FAIL" in out or "renders equal" not in out:
        return 1
    n = int(out.rsplit(":", 1)[1].split()[0])
    if n < 800:  # 20 templates and 5 families, 20 conversations, with and without the generation prompt
        print("FAIL: only %d renders compared" % n)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
