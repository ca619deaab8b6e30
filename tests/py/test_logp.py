# test_logp.py: pq-logp's log-probs (pq-logp --raw: token ids in) against
# transformers' Llama/Mistral/Qwen2 (and qwen3ref.py's Qwen3, which
# transformers 4.40 lacks) run in float64 on the same tiny random
# checkpoints: every architecture, f32/bf16/f16 weights, packed batches and
# one record per forward, per-token values, and a PEFT LoRA adapter.
import json
import math
import os
import subprocess
import sys
import tempfile

import safetensors.torch
import torch
import transformers

import qwen3ref  # noqa: F401 (registers Qwen3 with the Auto classes)

TOP = os.environ.get("PQ_TOP", os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("PQ_BIN", os.path.join(TOP, "bin"))
SAN = os.environ.get("PQ_FLAVOR") == "san"
TOL = 1e-4
torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)  # the reference computes in float64
transformers.logging.set_verbosity_error()
failures = []


def make(d, arch, *args):
    subprocess.run([sys.executable, os.path.join(TOP, "tests", "make_tiny_model.py"), "--arch", arch, "--out", d,
                    *args], check=True)


def llama3_inv_freq(cfg):
    """Llama 3's rope_scaling, from Meta's reference code (transformers 4.40 predates it)."""
    rs = cfg["rope_scaling"]
    hs = cfg["hidden_size"] // cfg["num_attention_heads"]
    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hs, 2, dtype=torch.int64).float() / hs))
    old, lf, hf, fac = (rs["original_max_position_embeddings"], rs["low_freq_factor"], rs["high_freq_factor"],
                        rs["factor"])
    wl = 2 * math.pi / inv
    new = torch.where(wl > old / lf, inv / fac, inv)
    sm = (old / wl - lf) / (hf - lf)
    smoothed = (1 - sm) * new / fac + sm * new
    med = ~(wl < old / hf) * ~(wl > old / lf)
    return torch.where(med, smoothed, new)


def reference(d):
    cfg = json.load(open(os.path.join(d, "config.json")))
    inv = None
    if cfg.get("rope_scaling"):
        inv = llama3_inv_freq(cfg)
        pd = tempfile.mkdtemp(dir=os.path.dirname(d))
        c2 = dict(cfg, rope_scaling=None)
        json.dump(c2, open(os.path.join(pd, "config.json"), "w"))
        for f in os.listdir(d):
            if f != "config.json":
                os.symlink(os.path.join(d, f), os.path.join(pd, f))
        d = pd
    m = transformers.AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float64)
    m.eval()
    if inv is not None:
        for layer in m.model.layers:
            layer.self_attn.rotary_emb.inv_freq = inv.double().float()
    return m


def ref_logps(m, recs):
    out = []
    with torch.no_grad():
        for r in recs:
            ids = torch.tensor([r["ids"]])
            lp = m(ids).logits[0].double().log_softmax(-1)
            p = r["prompt_len"]
            out.append(lp[torch.arange(p - 1, len(r["ids"]) - 1), ids[0, p:]].tolist())
    return out


def pq_logp(d, recs, *args):
    inp = "".join(json.dumps(r) + "\n" for r in recs)
    p = subprocess.run([os.path.join(BIN, "pq-logp"), "--raw", "--per-token", "-m", d, "-t", "2", *args],
                       input=inp, capture_output=True, text=True)
    if p.returncode != 0:
        failures.append("pq-logp %s %s: exit %d: %s" % (d, args, p.returncode, p.stderr))
        return None
    return [json.loads(l) for l in p.stdout.splitlines()]


def check(name, got, want):
    if got is None:
        return
    worst_tok = worst_sum = 0.0
    for g, w in zip(got, want):
        if g["tokens"] != len(w) or len(g["token_logps"]) != len(w):
            failures.append("%s: token count %d, want %d" % (name, g["tokens"], len(w)))
            return
        worst_tok = max([worst_tok] + [abs(a - b) for a, b in zip(g["token_logps"], w)])
        worst_sum = max(worst_sum, abs(g["logp"] - sum(w)))
    if len(got) != len(want):
        failures.append("%s: %d outputs for %d inputs" % (name, len(got), len(want)))
    ok = worst_tok < TOL and worst_sum < TOL
    print("%-32s max |err| per token %.2e, per sum %.2e %s" % (name, worst_tok, worst_sum, "ok" if ok else "FAIL"))
    if not ok:
        failures.append(name)


def records(vocab, seed, n, lo, hi):
    g = torch.Generator().manual_seed(seed)
    recs = []
    for i in range(n):
        L = int(torch.randint(lo, hi + 1, (1,), generator=g))
        ids = torch.randint(0, vocab, (L,), generator=g).tolist()
        recs.append({"id": "r%d" % i, "ids": ids, "prompt_len": int(torch.randint(1, L, (1,), generator=g))})
    return recs


def main():
    if not os.access(os.path.join(BIN, "pq-logp"), os.X_OK):
        print("FAIL: no pq-logp in", BIN)
        sys.exit(1)
    cases = [("llama", ["--dtype", "f32"]), ("llama3", ["--dtype", "f32"]),
             ("mistral", ["--dtype", "f32", "--window", "8"]), ("qwen2", ["--dtype", "f32"]),
             ("llama", ["--dtype", "bf16", "--tie", "--shards", "3"]), ("mistral", ["--dtype", "f16", "--window", "8"]),
             ("qwen2", ["--dtype", "bf16", "--tie", "--layers", "3", "--kv-heads", "1"]),
             ("qwen3", ["--dtype", "f32"]),
             # head_dim 24 with hidden / heads 16; layers 1 and 2 slide over 8 keys
             ("qwen3", ["--dtype", "bf16", "--tie", "--layers", "3", "--kv-heads", "1", "--window", "8"])]
    if SAN:
        cases = cases[:4] + cases[-1:]
    with tempfile.TemporaryDirectory() as tmp:
        for k, (arch, args) in enumerate(cases):
            d = os.path.join(tmp, "m%d" % k)
            make(d, arch, "--seed", str(k), *args)
            name = arch + " " + " ".join(args)
            m = reference(d)
            recs = records(m.config.vocab_size, k, 3 if SAN else 6, 2, 40 if SAN else 70)
            want = ref_logps(m, recs)
            check(name + " packed", pq_logp(d, recs), want)
            check(name + " single", pq_logp(d, recs, "--batch", "1"), want)
            if not SAN and arch == "mistral":  # forwards split mid-list, one thread
                check(name + " -b 50", pq_logp(d, recs, "-b", "50", "-t", "1"), want)

        # A PEFT LoRA adapter (random A and B) on q,v,down of a llama and all targets of a qwen2 and a qwen3.
        import peft
        every = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        for arch, targets in (("llama", ["q_proj", "v_proj", "down_proj"]), ("qwen2", every), ("qwen3", every)):
            d = os.path.join(tmp, "lora-" + arch)
            make(d, arch, "--seed", "7")
            m = reference(d)
            cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0)
            pm = peft.get_peft_model(m, cfg)
            g = torch.Generator().manual_seed(3)
            for n, p in pm.named_parameters():
                if "lora_" in n:
                    # float32-representable values: the adapter is stored in f32, as PEFT trains it
                    p.data = (torch.randn(p.shape, generator=g, dtype=torch.float32) * 0.2).double()
            ad = os.path.join(tmp, "adapter-" + arch)
            pm.save_pretrained(ad)
            sf = os.path.join(ad, "adapter_model.safetensors")
            safetensors.torch.save_file({k: v.float() for k, v in safetensors.torch.load_file(sf).items()}, sf,
                                        metadata={"format": "pt"})
            pm.eval()
            recs = records(m.config.vocab_size, 11, 3, 5, 30)
            check(arch + " + LoRA " + ",".join(t[:-5] for t in targets),
                  pq_logp(d, recs, "--adapter", ad), ref_logps(pm, recs))
    if failures:
        print("FAILED:", *failures, sep="\n  ")
        sys.exit(1)


if __name__ == "__main__":
    main()
