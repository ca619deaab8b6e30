# test_sampler.py: the local engine's truncation (pq_gen_probs, through
# test-gen --probs) on fixed logits against a numpy reference written from
# the definitions (temperature, then top-k, top-p, min-p: vLLM's order), and
# against transformers' warpers where they exist (temperature, top-k, top-p;
# transformers 4.40 has no min-p) on rows without ties.
import json
import os
import subprocess
import sys

import numpy as np
import torch
from transformers.generation import logits_process as lp

TOP = os.environ.get("PQ_TOP", os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("PQ_BUILD", os.path.join(TOP, "build", "rel"))
DRIVER = os.path.join(BUILD, "tests", "test-gen")
failures = []


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name)
    if not ok:
        failures.append(name + (": " + detail if detail else ""))


def ref(logits, T, k, p, mp):
    """float64, sort everything: the definitions, one step at a time."""
    x = np.array([-np.inf if v is None else v for v in logits], dtype=np.float64) / T
    keep = np.isfinite(x)
    if 0 < k < len(x):
        kth = np.sort(x[keep])[::-1][k - 1] if keep.sum() >= k else -np.inf
        keep &= x >= kth
    def probs():
        e = np.where(keep, np.exp(x - x[keep].max()), 0.0)
        return e / e.sum()
    if p < 1:
        q = probs()
        order = np.argsort(-q, kind="stable")
        before = np.concatenate([[0.0], np.cumsum(q[order])[:-1]])
        # a token stays while the mass of the more likely ones is below p (the first always)
        drop = order[(before >= p) & (np.arange(len(order)) > 0)]
        keep[drop] = False
    if mp > 0:
        q = probs()
        keep &= q >= mp * q.max()
    return probs()


def hf(logits, T, k, p):
    s = torch.tensor([[-float("inf") if v is None else v for v in logits]], dtype=torch.float64)
    for w in ([lp.TemperatureLogitsWarper(T)] + ([lp.TopKLogitsWarper(k)] if k > 0 else []) +
              ([lp.TopPLogitsWarper(p)] if p < 1 else [])):
        s = w(None, s)
    return torch.softmax(s, -1)[0].numpy()


def main():
    if not os.access(DRIVER, os.X_OK):
        sys.exit("no driver " + DRIVER)
    rng = np.random.default_rng(3)
    # fixed logits: a spread-out row, one with ties and masked entries, a peaked one
    rows = [list(np.round(rng.normal(0, 2, 40), 3)),
            [2.0, 2.0, 1.5, 1.5, 1.5, 0.25, None, -1.0, 3.0, None, 0.5, 0.5, -2.0, 1.0],
            [8.0] + list(np.round(rng.normal(0, 1, 30), 3))]
    cases = []
    for lg in rows:
        for T in (0.5, 1.0, 1.6):
            for k in (0, 1, 3, 7, 40):
                for p in (1.0, 0.95, 0.6, 0.1):
                    for mp in (0.0, 0.05, 0.2, 0.6):
                        cases.append({"logits": [None if v is None else float(v) for v in lg], "temperature": T,
                                      "top_k": k, "top_p": p, "min_p": mp})
    inp = "".join(json.dumps(c) + "\n" for c in cases)
    out = subprocess.run([DRIVER, "--probs"], input=inp, capture_output=True, text=True, check=True).stdout
    got = [np.array(json.loads(line)["probs"]) for line in out.splitlines()]
    check("one answer per case", len(got) == len(cases), "%d vs %d" % (len(got), len(cases)))
    worst = worst_hf = 0.0
    bad = []
    for c, g in zip(cases, got):
        r = ref(c["logits"], c["temperature"], c["top_k"], c["top_p"], c["min_p"])
        err = float(np.abs(g - r).max())
        # the same support, and the same values
        if err > 2e-6 or not np.array_equal(g > 0, r > 0):
            bad.append((c, err))
        worst = max(worst, err)
        finite = [v for v in c["logits"] if v is not None]
        if c["min_p"] == 0 and len(set(finite)) == len(finite):  # ties: top-p drops whichever torch.sort puts last
            h = hf(c["logits"], c["temperature"], c["top_k"], c["top_p"])
            e2 = float(np.abs(g - h).max())
            if e2 > 2e-6 or not np.array_equal(g > 0, h > 0):
                bad.append((dict(c, ref="transformers"), e2))
            worst_hf = max(worst_hf, e2)
    check("pq_gen_probs = the numpy reference and transformers' warpers (%d cases, max error %.2g / %.2g)" %
          (len(cases), worst, worst_hf), not bad, repr(bad[:3]))
    # min-p truncates something in these cases, and composes with top-k/top-p
    cut = sum(1 for c, g in zip(cases, got) if c["min_p"] > 0 and c["top_k"] == 0 and c["top_p"] == 1 and
              (g > 0).sum() < sum(v is not None for v in c["logits"]))
    check("min-p alone truncates", cut > 10, str(cut))
    if failures:
        print("FAILED:", *failures, sep="\n  ")
        sys.exit(1)


main()
