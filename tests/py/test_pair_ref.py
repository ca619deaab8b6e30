# test_pair_ref.py: an independent Python implementation of pq-pair
# (method.md §4: filters, preference, seeded sampling per article, the valid
# split) compared with the tool's output on the fixtures and random data.
import json
import os
import random
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pqref import M64, Rng, fnv1a  # noqa: E402

TOP = os.environ.get("PQ_TOP", os.path.join(os.path.dirname(__file__), "..", ".."))
PAIR = os.path.join(os.environ.get("PQ_BIN", os.path.join(TOP, "bin")), "pq-pair")
failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
        print("FAIL", msg)


def prefer(o, si, wi, sj, wj):
    if min(si, sj) <= o["threshold"] - 1:
        return (si > sj) - (si < sj)
    if wi - wj < -o["margin"]:
        return 1
    if wi - wj > o["margin"]:
        return -1
    return 0


def reference(lines, o, seed, valid_frac=None):
    """Returns (train records, valid records) as pq-pair should write them."""
    groups = {}
    for seq, r in enumerate(lines):
        groups.setdefault(r["id"], []).append((seq, r))
    train, valid = [], []
    for aid in sorted(groups, key=lambda s: s.encode()):
        kept = [(r.get("sample", 0), r["summary"].encode(), seq, r) for seq, r in groups[aid]
                if r["summary"] and r["correct"] is not None and r["bad_chars"] == 0
                and o["min"] <= r["num_words"] < o["max"]]
        kept = [k[3] for k in sorted(kept, key=lambda k: k[:3])]
        cand = []
        for i in range(len(kept)):
            for j in range(i + 1, len(kept)):
                p = prefer(o, kept[i]["correct"], kept[i]["num_words"], kept[j]["correct"], kept[j]["num_words"])
                if p:
                    cand.append((kept[i], kept[j]) if p > 0 else (kept[j], kept[i]))
        if 0 < o["max_pairs"] < len(cand):
            idx = list(range(len(cand)))
            rng = Rng(seed ^ fnv1a(aid))
            for i in range(o["max_pairs"]):
                j = i + rng.below(len(cand) - i)
                idx[i], idx[j] = idx[j], idx[i]
            cand = [cand[i] for i in sorted(idx[: o["max_pairs"]])]
        to_valid = False
        if valid_frac is not None and valid_frac > 0:
            to_valid = Rng(((seed ^ fnv1a(aid)) + 0x76616C6964) & M64).uniform() < valid_frac
        for k, (c, r) in enumerate(cand):
            p = c["prompt"]
            # the responses stripped as the recipe strips them (str.strip: Unicode whitespace)
            rec = {"id": aid, "prompt": p, "chosen": p + [{"role": "assistant", "content": c["summary"].strip()}],
                   "rejected": p + [{"role": "assistant", "content": r["summary"].strip()}],
                   "correct_chosen": c["correct"], "correct_rejected": r["correct"],
                   "num_words_chosen": c["num_words"], "num_words_rejected": r["num_words"], "pair": k}
            (valid if to_valid else train).append(rec)
    return train, valid


def run(path, args):
    p = subprocess.run([PAIR] + args + [path], capture_output=True, text=True)
    check(p.returncode == 0, f"pq-pair {' '.join(args)} exited {p.returncode}: {p.stderr}")
    return [json.loads(x) for x in p.stdout.split("\n") if x]  # not splitlines(): U+2028 is no line end


def compare(name, got, want):
    check(len(got) == len(want), f"{name}: {len(got)} pairs, reference {len(want)}")
    for k, (g, w) in enumerate(zip(got, want)):
        if g != w:
            check(False, f"{name}: record {k} differs:\n  got  {json.dumps(g)[:300]}\n  want {json.dumps(w)[:300]}")
            break


def main():
    if not os.access(PAIR, os.X_OK):
        print(f"FAIL: {PAIR} not built")
        return 1
    defaults = {"threshold": 3, "margin": 2, "max_pairs": 3, "min": 5, "max": 200}
    fx = os.path.join(TOP, "tests", "fixtures", "quiz.jsonl")
    with open(fx, encoding="utf-8") as f:
        lines = [json.loads(x) for x in f if x.strip()]
    for seed in (0, 7):
        compare(f"fixtures seed {seed}", run(fx, ["--seed", str(seed)]), reference(lines, defaults, seed)[0])
    rnd = random.Random(3)
    with tempfile.TemporaryDirectory() as t:
        lines = []
        for a in range(150):
            aid = "%016x" % rnd.getrandbits(64)
            prompt = [{"role": "user", "content": f"Summarize article {a}."}]
            for k in range(rnd.choice([1, 2, 4, 6, 8, 10])):
                w = rnd.choice([3, 4, 5, 6, 10, 11, 12, 13, 14, 40, 198, 199, 200, 250])
                lines.append({"id": aid, "sample": k, "prompt": prompt, "summary": f"{aid} s{k} ({w} words)",
                              "correct": None if rnd.random() < 0.05 else rnd.randint(0, 5),
                              "num_words": w, "bad_chars": 1 if rnd.random() < 0.08 else 0})
                if rnd.random() < 0.03:
                    lines[-1]["summary"] = ""
                elif rnd.random() < 0.3:  # whitespace around it, ASCII and Unicode
                    ws = " \t\n\r\x0b\x0c\x1c\x85\xa0\u1680\u2002\u2028\u2029\u202f\u205f\u3000"
                    lines[-1]["summary"] = ("".join(rnd.choice(ws) for _ in range(rnd.randint(0, 3))) +
                                            lines[-1]["summary"] +
                                            "".join(rnd.choice(ws) for _ in range(rnd.randint(1, 3))))
        rnd.shuffle(lines)
        path = os.path.join(t, "quiz.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for r in lines:
                f.write(json.dumps(r) + "\n")
        compare("random defaults", run(path, ["--seed", "11"]), reference(lines, defaults, 11)[0])
        o = {"threshold": 4, "margin": 0, "max_pairs": 5, "min": 4, "max": 199}
        args = ["--seed", "12", "--threshold", "4", "--length-margin", "0", "--max-pairs", "5", "--min-words", "4",
                "--max-words", "199"]
        compare("random options", run(path, args), reference(lines, o, 12)[0])
        vpath = os.path.join(t, "valid.jsonl")
        train = run(path, ["--seed", "13", "--valid", vpath, "--valid-frac", "0.25"])
        with open(vpath) as f:
            valid = [json.loads(x) for x in f]
        rt, rv = reference(lines, defaults, 13, 0.25)
        compare("random train", train, rt)
        compare("random valid", valid, rv)
        check(len(rv) > 0 and len(rt) > len(rv), f"split sizes {len(rt)}, {len(rv)}")
    print(f"pq-pair reference: {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
