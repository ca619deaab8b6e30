# test_quiz_strict_ref.py: pq-quiz --strict-format reads the judge's replies
# exactly as the recipe's parser does (pqref.recipe_answers: "Q<k>) X" lines,
# stripped with str.strip(), the rest ignored), on thousands of random
# replies mixing that form with the ones only pq's default parser reads,
# Unicode whitespace, repeated and out-of-range questions. The fake judge
# echoes each reply ([[fake:echo]]); the default parser is checked to read
# more of them.
import json
import os
import random
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pqref import recipe_answers  # noqa: E402

TOP = os.environ.get("PQ_TOP", os.path.join(os.path.dirname(__file__), "..", ".."))
QUIZ = os.path.join(os.environ.get("PQ_BIN", os.path.join(TOP, "bin")), "pq-quiz")
failures = []

WS = [" ", "\t", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\xa0", "\u2003", "\u2028", "\u202f", "\u3000"]


def check(cond, msg):
    if not cond:
        failures.append(msg)
        print("FAIL", msg)


def a_line(rnd):
    k = rnd.choice([1, 2, 3, 4, 5, 5, 0, 6, 12])
    x = rnd.choice(["A", "B", "C", "D", "E", "a", "e", "F", "Unsure", "Unsure.", "unsure", "UNSURE"])
    form = rnd.choice(["Q{k}) {x}"] * 6 + [
        "Q{k}){x}", "Q{k})  {x}.", "Q{k}) {x}. Some option text", "Q{k}) {x}1", "Q{k}) {x}_", "Q{k}) {x}\u00e9",
        "Q{k}) ({x})", "Q0{k}) {x}", "Q{k} ) {x}", "Q{k}: {x}", "q{k}) {x}", "**Q{k})** {x}", "Q{k}) **{x}**",
        "{k}) {x}", "Answer to Q{k}: {x}", "Q{k} Answer: {x}", "Q{k})\u00a0{x}", "Q{k})\u3000{x}", "- Q{k}) {x}",
        "Q{k}) The answer is {x}", "Q{k}) Option {x}"])
    s = form.format(k=k, x=x)
    if rnd.random() < 0.3:
        s = "".join(rnd.choice(WS) for _ in range(rnd.randint(1, 3))) + s
    if rnd.random() < 0.3:
        s += "".join(rnd.choice(WS) for _ in range(rnd.randint(1, 3)))
    return s


def reply(rnd):
    lines = [a_line(rnd) for _ in range(rnd.randint(0, 8))]
    if rnd.random() < 0.2:
        lines.insert(0, "Here are my answers:")
    return "\n".join(lines) + rnd.choice(["", "\n", "\r\n"])


def start_fake(d):
    pf = os.path.join(d, "port")
    p = subprocess.Popen([sys.executable, os.path.join(TOP, "tests", "fake_server.py"), "--port-file", pf,
                          "--die-with", str(os.getpid())], stdout=subprocess.DEVNULL)
    for _ in range(400):
        if os.path.exists(pf) and os.path.getsize(pf):
            return p, open(pf).read().strip()
        time.sleep(0.05)
    raise SystemExit("the fake server gave no port")


def run(d, inp, extra):
    env = dict(os.environ, OPENAI_BASE_URL=d["url"], OPENAI_API_KEY="test")
    r = subprocess.run([QUIZ, "-m", "judge", "-j", "8", "--prompt-file", d["prompt"]] + extra, input=inp,
                       capture_output=True, text=True, env=env)
    check(r.returncode == 0, f"pq-quiz {extra}: exit {r.returncode}: {r.stderr[-500:]}")
    return [json.loads(x) for x in r.stdout.split("\n") if x]  # not splitlines(): U+2028 is no line end


def main():
    if not os.access(QUIZ, os.X_OK):
        print(f"FAIL: {QUIZ} not built")
        return 1
    arts = [json.loads(x) for x in open(os.path.join(TOP, "tests", "fixtures", "questions.jsonl"))]
    rnd = random.Random(12)
    recs = []
    for i in range(1500):
        a = arts[i % len(arts)]
        recs.append({"id": "s%04d" % i, "summary": reply(rnd), "questions": a["questions"]})
    with tempfile.TemporaryDirectory() as t:
        fake, port = start_fake(t)
        try:
            prompt = os.path.join(t, "prompt")
            with open(prompt, "w") as f:  # the fake judge replies with the summary: the reply under test
                f.write("[[fake:echo]]<<<{summary}>>>\n{questions}\n")
            d = {"url": f"http://127.0.0.1:{port}/v1", "prompt": prompt}
            inp = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
            strict = run(d, inp, ["--strict-format"])
            check(len(strict) == len(recs), f"--strict-format: {len(strict)} lines out of {len(recs)}")
            n_bad = 0
            for r, o in zip(recs, strict):
                want = recipe_answers(r["summary"], 5)
                keys = [q["answer"] for q in r["questions"]]
                if o["judge_answers"] != want or o["correct"] != sum(x == k for x, k in zip(want, keys)):
                    n_bad += 1
                    if n_bad <= 5:
                        check(False, f"{r['summary']!r}: pq-quiz --strict-format {o['judge_answers']} "
                                     f"(correct {o['correct']}), recipe {want}")
            check(n_bad == 0, f"--strict-format: {n_bad} of {len(recs)} replies read otherwise than the recipe")
            # the default parser reads more: never fewer letters, and more in all
            default = run(d, inp, [])
            letters = lambda out: [sum(x != "Unsure" for x in o["judge_answers"]) for o in out]  # noqa: E731
            ls, ld = letters(strict), letters(default)
            check(len(ld) == len(ls) and sum(ld) > sum(ls), f"default parser: {sum(ld)} letters, strict {sum(ls)}")
            print(f"{len(recs)} replies: --strict-format == recipe on all but {n_bad}; "
                  f"letters read: strict {sum(ls)}, default {sum(ld)}")
        finally:
            fake.terminate()
            fake.wait()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
