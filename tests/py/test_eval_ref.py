# test_eval_ref.py: recomputes pq-eval's figures in plain Python (str.split,
# unicodedata NFD, math.comb, numpy.percentile) on every golden case, on the
# fixtures and on random data, and compares with pq-eval --format jsonl.
import json
import math
import os
import random
import subprocess
import sys
import tempfile
from fractions import Fraction

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pqref import Rng, bad_chars, words  # noqa: E402

TOP = os.environ.get("PQ_TOP", os.path.join(os.path.dirname(__file__), "..", ".."))
EVAL = os.path.join(os.environ.get("PQ_BIN", os.path.join(TOP, "bin")), "pq-eval")
failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
        print("FAIL", msg)


def read_rows(path):
    """id -> (score, words, article words, chars, article chars, bad), sample 0, first line wins."""
    rows = {}
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                o = json.loads(line)
            except ValueError:
                continue
            if not isinstance(o, dict):
                continue
            i = o.get("id")
            if isinstance(i, bool) or not isinstance(i, (str, int, float)):
                continue
            i = i if isinstance(i, str) else "%.17g" % i
            if o.get("sample", 0) != 0:
                continue
            s, a, c = o.get("summary"), o.get("article"), o.get("correct")
            if not isinstance(s, str) or not isinstance(a, str):
                continue
            if isinstance(c, bool) or not isinstance(c, (int, float)) or c != int(c) or not 0 <= c <= 100:
                continue
            if words(a) == 0:
                continue
            rows.setdefault(i, (int(c), words(s), words(a), len(s), len(a), bad_chars(s)))
    return rows


def beats(a, b):
    if min(a[0], b[0]) <= 2 and a[0] != b[0]:
        return 1 if a[0] > b[0] else -1
    return 1 if a[1] < b[1] else -1 if a[1] > b[1] else 0


def sign_p(w, l):
    n, k = w + l, min(w, l)
    if n == 0:
        return 1.0
    return float(min(Fraction(1), 2 * Fraction(sum(math.comb(n, i) for i in range(k + 1)), 2**n)))


def reference(base_path, model_paths, n_boot, seed, cwd=""):
    files = [read_rows(os.path.join(cwd, p)) for p in [base_path] + model_paths]
    ids = [i for i in sorted(files[0]) if all(i in f for f in files[1:])]
    out = []
    for k, f in enumerate(files):
        m = [f[i] for i in ids]
        b = [files[0][i] for i in ids]
        n = len(ids)
        ratios = [x[1] / x[2] for x in m]
        o = [beats(x, y) for x, y in zip(m, b)]
        w, l = o.count(1), o.count(-1)
        r = {"model": ([base_path] + model_paths)[k], "baseline": k == 0, "n": n,
             "score_ge3": sum(x[0] >= 3 for x in m) / n, "score_ge4": sum(x[0] >= 4 for x in m) / n,
             "compression_median": float(np.median(ratios)), "compression_mean": sum(ratios) / n,
             "failed_compression": sum(x[3] >= x[4] for x in m) / n, "ood": sum(x[5] > 0 for x in m) / n,
             "wins": w, "losses": l, "ties": n - w - l, "win_rate": w / n + 0.5 * (1 - w / n - l / n),
             "win_rate_lo": None, "win_rate_hi": None, "sign_p": sign_p(w, l)}
        if n_boot > 0:
            rng = Rng(seed)
            wr = []
            for _ in range(n_boot):
                s = [o[rng.below(n)] for _ in range(n)]
                ww, ll = s.count(1), s.count(-1)
                wr.append((ww + 0.5 * (n - ww - ll)) / n)
            lo, hi = np.percentile(wr, [2.5, 97.5])
            r["win_rate_lo"], r["win_rate_hi"] = float(lo), float(hi)
        out.append(r)
    return out


def compare(name, got, want):
    check(len(got) == len(want), f"{name}: {len(got)} rows, want {len(want)}")
    for g, w in zip(got, want):
        for k, v in w.items():
            gv = g.get(k)
            if isinstance(v, float) and gv is not None:
                ok = isinstance(gv, (int, float)) and abs(gv - v) <= 1e-8 * max(1.0, abs(v))
            else:
                ok = gv == v
            check(ok, f"{name}: {w['model']} {k} = {gv!r}, reference {v!r}")
        check(set(g) == set(w), f"{name}: fields {sorted(set(g) ^ set(w))} differ")


def run_eval(args, cwd):
    p = subprocess.run([EVAL] + args + ["--format", "jsonl"], cwd=cwd, capture_output=True, text=True)
    return [json.loads(x) for x in p.stdout.splitlines()]


def parse_args(args):
    base, models, n_boot, seed, i = None, [], 1000, 0, 0
    while i < len(args):
        a = args[i]
        if a in ("--baseline", "-b"):
            base, i = args[i + 1], i + 2
        elif a in ("--format", "-f"):
            i += 2
        elif a == "--bootstrap":
            n_boot, i = int(args[i + 1]), i + 2
        elif a == "--seed":
            seed, i = int(args[i + 1]), i + 2
        else:
            models.append(a)
            i += 1
    return base, models, n_boot, seed


def main():
    if not os.access(EVAL, os.X_OK):
        print(f"FAIL: {EVAL} not built")
        return 1
    cases = os.path.join(TOP, "tests", "cases", "eval")
    n = 0
    for c in sorted(os.listdir(cases)):
        d = os.path.join(cases, c)
        if not os.path.isdir(d):
            continue
        with open(os.path.join(d, "args")) as f:
            args = [x for x in f.read().split("\n") if x]
        base, models, n_boot, seed = parse_args(args)
        compare(c, run_eval(args, d), reference(base, models, n_boot, seed, d))
        n += 1
    # the fixtures, with the default bootstrap
    fx = os.path.join(TOP, "tests", "fixtures")
    args = ["-b", "base.quiz.jsonl", "--seed", "9", "tuned.quiz.jsonl"]
    compare("fixtures", run_eval(args, fx), reference("base.quiz.jsonl", ["tuned.quiz.jsonl"], 1000, 9, fx))
    # random data: three models, ids missing here and there, Unicode in summaries
    rnd = random.Random(5)
    vocab = ["the", "a", "caf\u00e9", "na\u00efve", "\u201cquoted\u201d", "\U0001F600", "\u4e2d", "stra\u00dfe",
             "x\u00a0y", "em\u2003space", "\u2014", "word", "rain", "league"]
    with tempfile.TemporaryDirectory() as t:
        paths = []
        for m in range(3):
            p = os.path.join(t, f"m{m}.jsonl")
            with open(p, "w", encoding="utf-8") as f:
                for i in range(300):
                    if rnd.random() < 0.03:
                        continue
                    art = " ".join(rnd.choice(vocab) for _ in range(rnd.randint(5, 120)))
                    summ = " ".join(rnd.choice(vocab) for _ in range(rnd.randint(1, 30)))
                    rec = {"id": f"r{i:04d}", "article": art, "summary": summ, "correct": rnd.randint(0, 5)}
                    f.write(json.dumps(rec, ensure_ascii=rnd.random() < 0.5) + "\n")
            paths.append(p)
        args = ["-b", paths[0], "--bootstrap", "300", "--seed", "17", paths[1], paths[2]]
        compare("random", run_eval(args, t), reference(paths[0], paths[1:], 300, 17))
    print(f"{n} cases + fixtures + random data compared, {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
