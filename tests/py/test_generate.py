# test_generate.py: pq's generation (lib/gen.c, through test-gen's driver)
# against transformers' greedy generate with a KV cache, token for token, on
# tiny random llama, mistral (sliding window shorter than prompt +
# generation), qwen2 and qwen3 (qwen3ref.py; q/k norms, head_dim != hidden /
# heads, a window on its second layer) models and PEFT LoRA adapters on a
# llama and a qwen3; continuous batching and batched decoding (the n samples
# of -n, up to 40 sequences a step) give the same tokens as one sequence at a
# time; seeded samples do not
# depend on the batch; n samples share one prefill of their prompt. All of it
# twice: the flat KV cache (PQ_KV=flat) and the paged one (PQ_KV=paged), which
# also runs with a pool of a few blocks (PQ_KV_BLOCKS), where samples are
# preempted and recomputed, and must still give the same tokens. The paged one
# again with PQ_CUDA_GRAPH=1, where decode steps are padded to a graph's
# bucket of rows and table blocks (padding rows that write no key): the same
# tokens.
import os
import random
import subprocess
import sys
import tempfile

import safetensors.torch
import torch
import transformers

import qwen3ref  # noqa: F401 (registers Qwen3 with the Auto classes)
from gendrv import drive

TOP = os.environ.get("PQ_TOP", os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("PQ_BUILD", os.path.join(TOP, "build", "rel"))
DRIVER = os.path.join(BUILD, "tests", "test-gen")
torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)  # the reference runs in float64
transformers.logging.set_verbosity_error()
failures = []


def check(name, ok, detail=""):
    name = "PQ_KV=%s%s: %s" % (KV.get("PQ_KV"), " PQ_CUDA_GRAPH=1" if KV.get("PQ_CUDA_GRAPH") else "", name)
    print(("ok   " if ok else "FAIL ") + name)
    if not ok:
        failures.append(name + (": " + detail if detail else ""))


def make(d, arch, *args):
    subprocess.run([sys.executable, os.path.join(TOP, "tests", "make_tiny_model.py"), "--arch", arch, "--out", d,
                    *args], check=True)


KV = {}  # PQ_KV (and PQ_CUDA_GRAPH) of the runs
# Under ASan/UBSan the code paths run once, not every size (the whole test took 454 s there):
# two architectures (a window; q/k norms and tied embeddings), one batched and one refilled width.
# The PQ_CUDA_GRAPH=1 pass likewise (its padding does not depend on the architecture).
SAN = os.environ.get("PQ_FLAVOR") == "san"
LITE = SAN


def run(d, reqs, *args, blocks=None):
    lines, stats, _ = drive(DRIVER, d, reqs, args,
                            env_set=dict(KV, **({"PQ_KV_BLOCKS": str(blocks)} if blocks else {})))
    for r in lines:  # the tokens' log-probabilities are test_gen_logp.py's (floats: batch-dependent bits)
        for s in r.get("samples", []):
            s.pop("logp", None)
    return lines, stats


def hf_greedy(m, prompt, n_new, eos):
    with torch.no_grad():
        out = m.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n_new, use_cache=True,
                         eos_token_id=eos, pad_token_id=eos, attention_mask=torch.ones(1, len(prompt),
                                                                                        dtype=torch.long))
    ids = out[0, len(prompt):].tolist()
    if eos in ids:
        ids = ids[:ids.index(eos)]
    return ids


def main():
    if not os.access(DRIVER, os.X_OK):
        print("FAIL: no driver " + DRIVER)
        sys.exit(1)
    global LITE
    for kv, graph in (("flat", False), ("paged", False), ("paged", True)):
        LITE = SAN or graph
        KV.clear()
        KV["PQ_KV"] = kv
        if graph:
            KV["PQ_CUDA_GRAPH"] = "1"
        print("PQ_KV=" + kv + (" PQ_CUDA_GRAPH=1" if graph else ""))
        test_all(kv)
    if failures:
        print("FAILED:", *failures, sep="\n  ")
        sys.exit(1)


def test_all(kv):
    # the unit tests again with bf16 products (decoding rows of bf16 weights through oneDNN)
    p = subprocess.run([DRIVER], env=dict(os.environ, **KV, PQ_PRECISION="bf16"), capture_output=True, text=True)
    check("test-gen's unit tests under PQ_PRECISION=bf16", p.returncode == 0, p.stderr[-2000:])
    rnd = random.Random(5)
    with tempfile.TemporaryDirectory() as tmp:
        archs = (("llama", []), ("mistral", ["--window", "8"]), ("qwen2", ["--tie"]),
                 ("qwen3", ["--tie", "--window", "8"]))
        for arch, extra in archs:
            d = os.path.join(tmp, arch)
            make(d, arch, "--seed", "3", *extra)
            if LITE and arch in ("llama", "qwen2"):  # llama still serves the LoRA check below
                continue
            m = transformers.AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float64,
                                                                  attn_implementation="eager")
            m.eval()
            eos = m.config.eos_token_id
            hi = 30000 if not arch.startswith("qwen") else 50000
            prompts = [[rnd.randrange(3, hi) for _ in range(n)] for n in (3, 12, 20, 7, 1)]
            n_new = 12
            want = [hf_greedy(m, p, n_new, eos) for p in prompts]
            reqs = [{"prompt": p, "temperature": 0, "max_tokens": n_new} for p in prompts]
            one, _ = run(d, reqs, "--slots", "1")
            got1 = [r["samples"][0]["ids"] for r in one]
            check(arch + ": greedy = transformers, one at a time", got1 == want, "%s\nvs %s" % (got1, want))
            # 2 slots for 5 requests: finished slots are refilled while others decode
            two, _ = run(d, reqs, "--slots", "2", "--threads", "2")
            check(arch + ": continuous batching (2 slots) = one at a time",
                  [r["samples"][0]["ids"] for r in two] == want)
            # batched decoding: 8 greedy samples a prompt, 40 sequences, decoded one at a time, 12 at a
            # time (the weights read in place for every row) and all 40 together (sgemm), token for token
            nreqs = [dict(r, n=8) for r in reqs]
            for slots, threads in (("12", "2"),) if LITE else (("1", "1"), ("12", "2"), ("40", "2")):
                got, _ = run(d, nreqs, "--slots", slots, "--threads", threads)
                check(arch + ": batched greedy (%s slots) = transformers" % slots,
                      [[s["ids"] for s in r["samples"]] for r in got] == [[w] * 8 for w in want])

            # samples sharing a prompt while slots are refilled: requests of 1 to 5 samples and 3 to 12
            # tokens through 4 and 7 slots (a prompt's slot kept while others read it) = one at a time.
            # Greedy: a sampled token may move with the rounding of a prompt prefilled beside others.
            mreqs = [{"prompt": p, "n": k, "temperature": 0, "max_tokens": mt}
                     for i, (p, k, mt) in enumerate(zip(prompts * 2, (3, 1, 4, 2, 5, 2, 5, 1, 3, 4),
                                                        (5, 12, 3, 9, 7, 11, 4, 6, 12, 8)))]
            m1, _ = run(d, mreqs, "--slots", "1")
            for slots in ("7",) if LITE else ("4", "7"):
                mk, _ = run(d, mreqs, "--slots", slots, "--threads", "2")
                check(arch + ": shared prompts through %s refilled slots = one at a time" % slots, mk == m1)

            # seeded sampling, 3 samples per prompt: the same whatever the batch
            sreqs = [{"prompt": p, "n": 3, "seed": 11 + i, "temperature": 0.9, "top_p": 0.95, "top_k": 50,
                      "max_tokens": 8} for i, p in enumerate(prompts)]
            a, ca = run(d, sreqs, "--slots", "1")
            b, cb = run(d, sreqs, "--slots", "6", "--threads", "2")
            check(arch + ": seeded samples independent of the batch", a == b)
            samples = [s["ids"] for r in a for s in r["samples"]]
            check(arch + ": samples differ from each other", len(set(map(tuple, samples))) > len(prompts))
            plen = sum(len(p) for p in prompts)
            check(arch + ": n samples share one prefill of the prompt",
                  ca["prefilled"] == plen and cb["prefilled"] == plen, "%s %s vs %d" % (ca, cb, plen))

            if kv == "paged":
                # 5 blocks of 16 positions for 40 sequences of up to 32: the youngest are preempted (their
                # prompt and tokens computed again: more prefilled) and still give the same tokens
                got, cg = run(d, nreqs, "--slots", "40", "--threads", "2", blocks=5)
                check(arch + ": batched greedy, 5 blocks (preempted) = transformers",
                      [[s["ids"] for s in r["samples"]] for r in got] == [[w] * 8 for w in want])
                check(arch + ": 5 blocks preempt", cg["prefilled"] > plen, "%s vs %d" % (cg, plen))
                c, cc = run(d, sreqs, "--slots", "6", "--threads", "2", blocks=3)
                check(arch + ": seeded samples, 3 blocks (preempted) = unlimited", c == a)
                check(arch + ": 3 blocks preempt", cc["prefilled"] > plen, "%s vs %d" % (cc, plen))

        # LoRA applied at generation time, against PEFT
        import peft
        every = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        for arch, targets, hi in (("llama", ["q_proj", "v_proj", "down_proj", "gate_proj"], 30000),
                                  ("qwen3", every, 50000)):
            d = os.path.join(tmp, arch)
            m = transformers.AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float64,
                                                                  attn_implementation="eager")
            cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0)
            pm = peft.get_peft_model(m, cfg)
            g = torch.Generator().manual_seed(3)
            for n, p in pm.named_parameters():
                if "lora_" in n:
                    p.data = (torch.randn(p.shape, generator=g, dtype=torch.float32) * 0.3).double()
            ad = os.path.join(tmp, arch + "-adapter")
            pm.save_pretrained(ad)
            sf = os.path.join(ad, "adapter_model.safetensors")
            safetensors.torch.save_file({k: v.float() for k, v in safetensors.torch.load_file(sf).items()}, sf,
                                        metadata={"format": "pt"})
            pm.eval()
            prompts = [[rnd.randrange(3, hi) for _ in range(n)] for n in (4, 9)]
            want = [hf_greedy(pm, p, 10, m.config.eos_token_id) for p in prompts]
            got, _ = run(d, [{"prompt": p, "temperature": 0, "max_tokens": 10} for p in prompts], "--adapter", ad)
            check(arch + " + LoRA: greedy = PEFT", [r["samples"][0]["ids"] for r in got] == want)


main()
