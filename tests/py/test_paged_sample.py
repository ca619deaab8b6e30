# test_paged_sample.py: the device sampler's CPU twin (pq_cpu_sample in
# lib/ops_paged_cpu.c, through test-paged's driver mode) draws from the
# distribution gen.c's sampler defines, computed here in numpy: softmax of
# logits / temperature, cut by top-k (ties with the k-th kept), top-p (the
# fewest most likely tokens whose mass reaches p, ties in id order), min-p
# (p >= min_p * max p), in that order (vLLM's). Empirical frequencies over
# many (seed, seq, step) draws must match within 5 standard errors, no token
# outside the cut may ever be drawn, temperature 0 must give numpy's argmax.
import os
import subprocess
import sys

import numpy as np

TOP = os.environ.get("PQ_TOP", os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("PQ_BUILD", os.path.join(TOP, "build", "rel"))
DRIVER = os.path.join(BUILD, "tests", "test-paged")
failures = []


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + (" (" + detail + ")" if detail else ""))
    if not ok:
        failures.append(name)


def ref_probs(x, T, k, p, mp):
    x = np.asarray(x, dtype=np.float32)
    z = np.where(np.isneginf(x), -np.inf, (x / np.float32(T)).astype(np.float32)).astype(np.float64)
    fin = np.isfinite(z)
    if 0 < k < fin.sum():
        thr = np.sort(z[fin])[::-1][k - 1]
        z = np.where(z >= thr, z, -np.inf)
    e = np.where(np.isfinite(z), np.exp(z - z[np.isfinite(z)].max()), 0.0)
    pr = e / e.sum()
    if p < 1:
        order = sorted(np.nonzero(pr > 0)[0], key=lambda v: (-z[v], v))
        keep, before = [], 0.0
        for i, v in enumerate(order):
            if i > 0 and before >= p:
                break
            keep.append(v)
            before += pr[v]
        mask = np.zeros_like(pr)
        mask[keep] = 1
        pr = pr * mask
        pr = pr / pr.sum()
    if mp > 0:
        pr = np.where(pr >= mp * pr.max(), pr, 0.0)
        pr = pr / pr.sum()
    return pr


def draw(x, T, k, p, mp, n, seed):
    inp = "%d %r %d %r %r %d %d\n" % (len(x), T, k, p, mp, n, seed)
    inp += " ".join("-inf" if np.isneginf(v) else "%.9g" % v for v in x) + "\n"
    r = subprocess.run([DRIVER, "sample"], input=inp, capture_output=True, text=True)
    if r.returncode:
        sys.exit("test-paged sample failed (%d): %s" % (r.returncode, r.stderr))
    c = np.array([int(v) for v in r.stdout.split()], dtype=np.float64)
    return c[:-1], c[-1]


rng = np.random.default_rng(5)
V = 60
base = rng.normal(0, 2, V).astype(np.float32)
tied = base.copy()
tied[[3, 10, 11, 40]] = tied.max() - 0.5  # four equal logits near the top
masked = base.copy()
masked[rng.choice(V, 20, replace=False)] = -np.inf
cases = [
    ("plain", base, 1.0, 0, 1.0, 0.0),
    ("temperature 0.6", base, 0.6, 0, 1.0, 0.0),
    ("temperature 1.7", base, 1.7, 0, 1.0, 0.0),
    ("top-k 5", base, 1.0, 5, 1.0, 0.0),
    ("top-p 0.8", base, 1.0, 0, 0.8, 0.0),
    ("min-p 0.1", base, 1.0, 0, 1.0, 0.1),
    ("all cuts", base, 0.9, 20, 0.9, 0.05),
    ("top-k through ties", tied, 1.0, 2, 1.0, 0.0),
    ("top-p through ties", tied, 1.0, 0, 0.35, 0.0),
    ("masked logits", masked, 1.2, 8, 0.95, 0.02),
]
n = 40000
for name, x, T, k, p, mp in cases:
    want = ref_probs(x, T, k, p, mp)
    got, none = draw(x, T, k, p, mp, n, 1234)
    freq = got / n
    se = np.sqrt(np.maximum(want * (1 - want), 1e-12) / n)
    z = np.abs(freq - want) / se
    outside = int(got[want == 0].sum())
    check(name + ": nothing outside the cut", outside == 0 and none == 0, "%d drawn outside" % outside)
    check(name + ": frequencies", bool(np.all(z[want > 0] < 5)),
          "max %.2f standard errors over %d tokens" % (z[want > 0].max(), int((want > 0).sum())))

for trial in range(5):
    x = rng.normal(0, 3, 2000).astype(np.float32)
    got, none = draw(x, 0.0, 0, 1.0, 0.0, 3, 9)
    check("temperature 0: argmax %d" % trial, got[int(np.argmax(x))] == 3)

if failures:
    sys.exit("failed: " + ", ".join(failures))
print("test_paged_sample: all passed")
