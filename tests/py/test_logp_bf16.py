# test_logp_bf16.py: PQ_PRECISION=bf16 (the CPU's bf16 products through
# oneDNN, the CUDA backend's numerics) against transformers in float64 with
# the same rounding: every decoder linear layer's input rounded to bf16, the
# product and everything else exact; the LM head and attention stay f32 in pq
# and unrounded here. The f32 run of the same model must miss that reference
# by far more. Rounding is discontinuous: the last-bit differences of f32
# and float64 before it flip a rare bf16 rounding, which later layers
# amplify, so the bound is relative: one decoder layer, pq's bf16 run at
# least 20 times closer to the rounded reference than its f32 run (which is
# exact to 1e-6: test_logp), and within 1e-3.
import json
import os
import subprocess
import sys
import tempfile

import torch

from test_logp import BIN, make, records, reference

TOL = 1e-3


def pq(d, recs, precision, *args):
    env = dict(os.environ, PQ_PRECISION=precision)
    inp = "".join(json.dumps(r) + "\n" for r in recs)
    p = subprocess.run([os.path.join(BIN, "pq-logp"), "--raw", "--per-token", "-m", d, "-t", "2", *args], input=inp,
                       capture_output=True, text=True, env=env)
    if p.returncode != 0 or "computing in f32" in p.stderr:
        print("pq-logp %s: exit %d: %s" % (precision, p.returncode, p.stderr))
        sys.exit(1)
    return [json.loads(l) for l in p.stdout.splitlines()]


def rounded_reference(m):
    """Rounds every decoder linear layer's input to bf16, as pq's bf16 products do."""
    def hook(mod, args):
        return (args[0].to(torch.bfloat16).to(args[0].dtype),)
    for layer in m.model.layers:
        for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
                    layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
            lin.register_forward_pre_hook(hook)
    return m


def worst(got, want):
    w = 0.0
    for g, ref in zip(got, want):
        assert len(g["token_logps"]) == len(ref)
        w = max([w] + [abs(a - b) for a, b in zip(g["token_logps"], ref)])
    return w


def main():
    if not os.access(os.path.join(BIN, "pq-logp"), os.X_OK):
        print("FAIL: no pq-logp in", BIN)
        sys.exit(1)
    flags = open("/proc/cpuinfo").read()
    if " avx512f " not in flags and " avx512_bf16 " not in flags:
        print("this CPU has no AVX-512: oneDNN has no bf16 products for it")
        sys.exit(77)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    fails = 0
    with tempfile.TemporaryDirectory() as tmp:
        for k, (arch, args) in enumerate([("llama", []), ("qwen2", ["--tie", "--kv-heads", "1"])]):
            d = os.path.join(tmp, "m%d" % k)
            make(d, arch, "--seed", str(k), "--dtype", "bf16", "--layers", "1", *args)
            m = rounded_reference(reference(d))
            recs = records(m.config.vocab_size, k, 5, 2, 60)
            with torch.no_grad():
                want = []
                for r in recs:
                    ids = torch.tensor([r["ids"]])
                    lp = m(ids).logits[0].log_softmax(-1)
                    p = r["prompt_len"]
                    want.append(lp[torch.arange(p - 1, len(r["ids"]) - 1), ids[0, p:]].tolist())
            e16, e32 = worst(pq(d, recs, "bf16"), want), worst(pq(d, recs, "f32"), want)
            ok = e16 < TOL and 20 * e16 < e32
            print("%-8s max |dlogp| per token vs the rounded reference: bf16 products %.2e (tol %.0e), "
                  "f32 products %.2e (%.0fx further) %s" % (arch, e16, TOL, e32, e32 / max(e16, 1e-12),
                                                             "ok" if ok else "FAIL"))
            fails += not ok
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
