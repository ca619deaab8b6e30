# test_gen_act_bf16.py: generation with PQ_ACTIVATIONS=bf16 (a step's
# activations stored in bf16, ops.h; the CPU backend stores 2-byte elements,
# so a wrong size or offset in gen.c shows here, under ASan in the san
# build). The log-probabilities that generation reports for its own tokens
# (test-gen's "logp") are checked per token, on prompt + ids, against:
# - the rounded float64 forward of test_logp_act_bf16 (bf16 at every op's
#   activation output): most tokens agree to NEAR, none is FAR off;
# - the same forward unrounded: on average RATIO times further (the storage
#   is used, not ignored);
# - pq-logp --per-token with PQ_ACTIVATIONS=bf16 on the same ids (issue 11:
#   generation's log-probs equal pq-logp's), by the same counts.
# A decoding step rounds where pq-logp's forward rounds (residual + norm of
# the unrounded sum, model.c), but sums in another order (one row, not the
# whole record), so a value now and then rounds the other way: hence counts,
# as in test_logp_act_bf16. Models: one layer each (every rounding point;
# more layers carry a flipped rounding further), the flat and the paged
# cache, greedy and sampled, and a LoRA adapter on every projection.
import json
import os
import subprocess
import sys
import tempfile

import torch

from gendrv import drive
from test_logp import BIN, SAN
from test_logp_act_bf16 import Ref, model_case

BUILD = os.environ.get("PQ_BUILD", os.path.join(os.path.dirname(BIN)))
DRIVER = os.path.join(BUILD, "tests", "test-gen")
NEAR = 1e-4  # a token that agrees
FRAC = 0.8   # the share of generation's tokens that must (against the rounded forward, and pq-logp's)
FAR = 0.1    # no token further
RATIO = 20   # the unrounded forward's mean distance over the rounded one's, at least
failures = []


def generate(d, reqs, kv, act, extra):
    lines, _, _ = drive(DRIVER, d, reqs, ["--slots", "3", "--threads", "1", *extra], unset=("PQ_KV_BLOCKS",),
                        env_set={"PQ_KV": kv, "PQ_ACTIVATIONS": act}, timeout=300)
    return [(q["prompt"], s["ids"], s["logp"]) for q, r in zip(reqs, lines) for s in r["samples"]]


def pq_logp(d, recs, extra):
    env = dict(os.environ, PQ_ACTIVATIONS="bf16")
    env.pop("PQ_PRECISION", None)
    inp = "".join(json.dumps({"id": str(i), "ids": p + ids, "prompt_len": len(p)}) + "\n"
                  for i, (p, ids, _) in enumerate(recs))
    p = subprocess.run([os.path.join(BIN, "pq-logp"), "--raw", "--per-token", "-m", d, "-t", "1", *extra], input=inp,
                       capture_output=True, text=True, env=env, timeout=300)
    if p.returncode:
        sys.exit("pq-logp failed (%d): %s" % (p.returncode, p.stderr))
    return [json.loads(x)["token_logps"] for x in p.stdout.splitlines()]


def share(got, want):
    """(share of tokens within NEAR, the largest difference, the mean); (0, inf, inf) when the counts differ"""
    if len(got) != len(want) or any(len(g) != len(w) for g, w in zip(got, want)):
        return 0.0, float("inf"), float("inf")
    d = [abs(a - b) for g, w in zip(got, want) for a, b in zip(g, w)]
    return sum(x < NEAR for x in d) / len(d), max(d), sum(d) / len(d)


def main():
    for exe in (DRIVER, os.path.join(BIN, "pq-logp")):
        if not os.access(exe, os.X_OK):
            print("FAIL: no " + exe)
            sys.exit(1)
    every = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    cases = [("mistral", ["--dtype", "bf16", "--window", "8"], None),
             ("qwen3", ["--dtype", "bf16", "--tie", "--kv-heads", "1"], None),
             ("qwen2", ["--dtype", "bf16", "--tie"], None),
             ("llama", ["--dtype", "bf16"], every)]
    if SAN:
        cases = cases[1:2] + cases[3:]
    with tempfile.TemporaryDirectory() as tmp:
        for k, (arch, args, targets) in enumerate(cases):
            d, ad, extra = model_case(tmp, k, arch, args, targets, k + 40)
            name = arch + " " + " ".join(args) + (" + LoRA on every projection" if targets else "")
            ref = Ref(d, ad)
            V = ref.c["vocab_size"]
            prompts = [[(37 * i + 11 * j + k) % (V - 3) + 3 for j in range(n)] for i, n in enumerate((7, 19, 12))]
            reqs = [{"prompt": prompts[0], "n": 1, "temperature": 0, "max_tokens": 14},
                    {"prompt": prompts[1], "n": 2, "temperature": 0.8, "max_tokens": 12, "seed": 3},
                    {"prompt": prompts[2], "n": 2, "temperature": 1.0, "top_k": 40, "max_tokens": 10, "seed": 7}]
            for kv in ("flat", "paged"):
                out = generate(d, reqs, kv, "bf16", extra)
                what = "%s, %s cache" % (name, kv)
                gen = [lp for _, _, lp in out]
                with torch.no_grad():
                    rounded = [ref.logps(p + ids, len(p), True) for p, ids, _ in out]
                    exact = [ref.logps(p + ids, len(p), False) for p, ids, _ in out]
                near_r, far_r, mean_r = share(gen, rounded)
                _, _, mean_e = share(gen, exact)
                near_l, far_l, _ = share(gen, pq_logp(d, out, extra))
                n = sum(len(g) for g in gen)
                ok = near_r >= FRAC and far_r < FAR and mean_e >= RATIO * mean_r and near_l >= FRAC and far_l < FAR
                print("%-4s %s: %d tokens; within %.0e of the rounded forward %.0f%% (max %.1e, mean %.1e; the "
                      "unrounded's mean %.1e), of pq-logp bf16 %.0f%% (max %.1e)"
                      % ("ok" if ok else "FAIL", what, n, NEAR, 100 * near_r, far_r, mean_r, mean_e, 100 * near_l,
                         far_l))
                if not ok:
                    failures.append(what)
    if failures:
        print("FAILED:", *failures, sep="\n  ")
        sys.exit(1)


main()
