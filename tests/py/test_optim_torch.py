# test_optim_torch.py: pq's AdamW step and gradient clipping (lib/optim.c on
# the backend's ops, driven by `test-optim --trace`) against
# torch.optim.AdamW and torch.nn.utils.clip_grad_norm_ in float64 on the
# same parameters and gradients: a learning-rate schedule, steps that clip
# and steps that do not, gradients near eps, zero gradients.
import os
import random
import subprocess
import sys

import torch

TOP = os.environ.get("PQ_TOP", os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("PQ_BUILD", os.path.join(TOP, "build", "rel"))
torch.set_num_threads(1)


def f32(x):  # the value as the C side reads it (%.9g round-trips a float)
    return float(torch.tensor(x, dtype=torch.float32))


def main():
    exe = os.path.join(BUILD, "tests", "test-optim")
    if not os.access(exe, os.X_OK):
        print(f"FAIL: no {exe} (build the unit tests first)")
        return 1
    rng = random.Random(1)
    n, steps, max_norm = 4099, 6, 20.0
    lr, b1, b2, eps, wd = 2e-3, 0.85, 0.99, 1e-6, 0.05
    p0 = [f32(rng.uniform(-0.05, 0.05)) for _ in range(n)]
    lrs, grads = [], []
    for s in range(steps):
        lrs.append(lr * (s + 1) / 3 if s < 3 else lr * (steps - s) / 3)  # warmup then linear
        big = 1.0 if s % 2 == 0 else 0.1  # norm about 63 (clipped) or 6.3 (not)
        g = [f32(big * rng.gauss(0, 1) * (1e-6 if i % 50 == 0 else 1)) for i in range(n)]
        g[7] = 0.0
        grads.append(g)
    inp = [f"{n} {steps} {max_norm!r} {lr!r} {b1!r} {b2!r} {eps!r} {wd!r}", " ".join(f"{x:.9g}" for x in p0)]
    for s in range(steps):
        inp.append(f"{lrs[s]!r} " + " ".join(f"{x:.9g}" for x in grads[s]))
    out = subprocess.run([exe, "--trace"], input="\n".join(inp) + "\n", capture_output=True, text=True)
    if out.returncode != 0:
        print("test-optim --trace failed:", out.returncode, out.stderr)
        return 1
    rows = [list(map(float, line.split())) for line in out.stdout.splitlines()]
    assert len(rows) == steps and all(len(r) == n + 1 for r in rows), "trace output shape"

    p = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float64))
    opt = torch.optim.AdamW([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    failures = 0
    clipped = 0
    for s in range(steps):
        for group in opt.param_groups:
            group["lr"] = lrs[s]
        p.grad = torch.tensor(grads[s], dtype=torch.float64)
        norm = float(torch.nn.utils.clip_grad_norm_([p], max_norm))
        clipped += norm > max_norm
        opt.step()
        ours = torch.tensor(rows[s][1:], dtype=torch.float64)
        # f32 storage of parameters and moments: a few f32 ulps of |p| <= 0.06 over the steps
        err = float((ours - p.detach()).abs().max())
        nerr = abs(rows[s][0] - norm) / norm
        ok = err <= 3e-8 and nerr <= 1e-12
        print(f"step {s + 1}: lr {lrs[s]:.3g} grad norm {norm:.6g} (rel diff {nerr:.2g}), "
              f"max |p - torch| {err:.3g} {'ok' if ok else 'FAIL'}")
        failures += not ok
    if clipped not in range(1, steps):
        print(f"FAIL: {clipped} of {steps} steps clipped; the test wants both kinds")
        failures += 1
    print("optim vs torch:", "ok" if failures == 0 else f"{failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
