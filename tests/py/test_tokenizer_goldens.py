# test_tokenizer_goldens: the tokenizer and chat-template goldens are what
# Hugging Face tokenizers / transformers make today (regenerated and compared
# byte for byte, the small test tokenizers included), and pq-tokenize gives
# the golden ids and decodings.
import json
import os
import subprocess
import sys
import tempfile

import tokenizers  # noqa: F401 (the reference libraries: missing, the test fails)
import transformers  # noqa: F401

TOP = os.environ.get("PQ_TOP", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BIN = os.environ.get("PQ_BIN", os.path.join(TOP, "bin"))
GOLDEN = os.path.join(TOP, "tests", "golden")


failed = 0


def fail(msg):
    global failed
    failed += 1
    print("FAIL " + msg)


def same_file(a, b, what):
    with open(a, "rb") as f, open(b, "rb") as g:
        if f.read() != g.read():
            fail(f"{what}: regenerated {a} differs from the checked-in {b}")
            return False
    return True


def regenerate(d):
    """Reruns make_tokenizers.py and gen-tokenizer-goldens into d and compares
    with the checked-in files; returns the index of what was regenerated."""
    # the small tokenizers are reproducible
    subprocess.run([sys.executable, os.path.join(TOP, "tests", "make_tokenizers.py"), os.path.join(d, "models")],
                   check=True, stdout=subprocess.DEVNULL)
    for name in sorted(os.listdir(os.path.join(d, "models"))):
        same_file(os.path.join(d, "models", name, "tokenizer.json"),
                  os.path.join(GOLDEN, "tokenizer", "models", name, "tokenizer.json"), "make_tokenizers.py")
    # the goldens are what the reference libraries give
    subprocess.run([sys.executable, os.path.join(TOP, "scripts", "gen-tokenizer-goldens"), "--out", d], check=True)
    with open(os.path.join(d, "tokenizer", "index.json")) as f:
        index = json.load(f)
    for t in index:
        same_file(os.path.join(d, "tokenizer", t["name"] + ".jsonl"),
                  os.path.join(GOLDEN, "tokenizer", t["name"] + ".jsonl"), "tokenizer goldens")
    n_chat = 0
    for name in sorted(os.listdir(os.path.join(d, "chat"))):
        same_file(os.path.join(d, "chat", name), os.path.join(GOLDEN, "chat", name), "chat goldens")
        n_chat += 1
    with open(os.path.join(GOLDEN, "tokenizer", "index.json")) as f:
        missing = {t["name"] for t in json.load(f)} - {t["name"] for t in index}
    if missing:
        fail(f"{sorted(missing)} not regenerated")
    print(f"{len(index)} tokenizers and {n_chat} chat goldens regenerated")
    return index


def main():
    with tempfile.TemporaryDirectory() as d:
        if os.environ.get("PQ_FLAVOR") == "san":  # the goldens do not depend on the flavour: regenerated once
            with open(os.path.join(GOLDEN, "tokenizer", "index.json")) as f:
                index = json.load(f)
        else:
            index = regenerate(d)

        # pq-tokenize gives the golden ids and decodings
        n = 0
        for t in index:
            path = os.path.join(TOP, t["path"])
            with open(os.path.join(GOLDEN, "tokenizer", t["name"] + ".jsonl"), encoding="utf-8") as f:
                gold = [json.loads(line) for line in f]
            # under ASan (slow to start) one run each way: test-tokenizer checks all there
            san = os.environ.get("PQ_FLAVOR") == "san"
            for special in (False,) if san else (False, True):
                recs = [g for g in gold if g["add_special"] == special]
                inp = "".join(json.dumps({"id": i, "text": g["text"]}) + "\n" for i, g in enumerate(recs))
                args = [os.path.join(BIN, "pq-tokenize"), "--model", path] + (["--add-special"] if special else [])
                p = subprocess.run(args, input=inp.encode(), capture_output=True)
                out = [json.loads(line) for line in p.stdout.decode().split("\n")[:-1]]
                if p.returncode != 0 or len(out) != len(recs):
                    fail(f"pq-tokenize {t['name']}: exit {p.returncode}, {len(out)} of {len(recs)} lines: "
                         f"{p.stderr.decode()[-500:]}")
                    continue
                bad = [(g, o) for g, o in zip(recs, out) if o["ids"] != g["ids"] or o["n_tokens"] != len(g["ids"])]
                for g, o in bad[:3]:
                    fail(f"pq-tokenize {t['name']} {g['text'][:60]!r}: ids {o['ids'][:20]} want {g['ids'][:20]}")
                n += len(recs)
            # decoding, with and without the special tokens
            for skip in (False,) if san else (False, True):
                inp = "".join(json.dumps({"id": i, "ids": g["ids"]}) + "\n" for i, g in enumerate(gold))
                args = [os.path.join(BIN, "pq-tokenize"), "--model", path, "--decode"] + \
                    (["--skip-special"] if skip else [])
                p = subprocess.run(args, input=inp.encode(), capture_output=True)
                out = [json.loads(line) for line in p.stdout.decode().split("\n")[:-1]]
                if p.returncode != 0 or len(out) != len(gold):
                    fail(f"pq-tokenize --decode {t['name']}: exit {p.returncode}: {p.stderr.decode()[-500:]}")
                    continue
                for g, o in zip(gold, out):
                    want = g.get("decoded", g["text"])
                    if skip:
                        want = g.get("decoded_skip", want)
                    if o["text"] != want:
                        fail(f"pq-tokenize --decode {t['name']}: {o['text'][:60]!r} want {want[:60]!r}")
                        break
        print(f"{n} strings of {len(index)} tokenizers through pq-tokenize")
    print("FAILED" if failed else "ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
