# test_dpo_torch.py: pq-dpo's LoRA gradients (--dump-grads: the first step's
# gradients, before clipping) against PyTorch autograd through transformers +
# peft in float64 on the same tiny random checkpoints, adapter and batch:
# every architecture (mistral with records longer than its sliding window,
# qwen2 with biases and tied embeddings, qwen3 (qwen3ref.py) with q/k norms,
# head_dim != hidden / heads and a window on its second layer), every loss, label smoothing, the
# SFT term, gradient accumulation over micro-batches. Also the step-0
# invariant: a fresh adapter (B = 0) gives loss ln 2, rewards 0 and the
# policy logps of the reference; and the adapter pq-dpo writes for a qwen3
# loads in PEFT: the tensor names and shapes PEFT gives Qwen3, and the
# log-probs of pq-logp --adapter.
import json
import math
import os
import random
import subprocess
import sys
import tempfile

import peft
import safetensors.torch
import torch
import transformers

import qwen3ref  # noqa: F401 (registers Qwen3 with the Auto classes)

TOP = os.environ.get("PQ_TOP", os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("PQ_BIN", os.path.join(TOP, "bin"))
SAN = os.environ.get("PQ_FLAVOR") == "san"
torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)
transformers.logging.set_verbosity_error()
failures = []
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def check(what, ok):
    if not ok:
        failures.append(what)
        print("FAIL", what)


def make_pairs(rng, n, vocab, long):
    out = []
    for i in range(n):
        plen = rng.randrange(18, 24) if long else rng.randrange(3, 8)
        p = [rng.randrange(3, vocab) for _ in range(plen)]
        c = [rng.randrange(3, vocab) for _ in range(rng.randrange(2, 9))]
        r = [rng.randrange(3, vocab) for _ in range(rng.randrange(2, 9))]
        out.append({"id": "p%d" % i, "chosen_ids": p + c, "rejected_ids": p + r, "prompt_len": plen,
                    "ref_chosen_logp": -6.0 * len(c) + rng.uniform(-1, 1),
                    "ref_rejected_logp": -6.0 * len(r) + rng.uniform(-1, 1)})
    return out


def seq_logp(model, ids, plen):
    x = torch.tensor([ids])
    logits = model(x).logits[0]
    lp = torch.log_softmax(logits[:-1], dim=-1).gather(1, x[0, 1:].unsqueeze(1)).squeeze(1)
    return lp[plen - 1:].sum(), len(ids) - plen


def torch_loss(model, pairs, loss, beta, ls, sft, sft_sum):
    total = 0
    for p in pairs:
        pc, nc = seq_logp(model, p["chosen_ids"], p["prompt_len"])
        pr, nr = seq_logp(model, p["rejected_ids"], p["prompt_len"])
        c, r = pc - p["ref_chosen_logp"], pr - p["ref_rejected_logp"]
        if loss == "sigmoid":
            x = beta * (c - r)
            l = -(1 - ls) * torch.nn.functional.logsigmoid(x) - ls * torch.nn.functional.logsigmoid(-x)
        elif loss == "ipo":
            l = (c / nc - r / nr - 1 / (2 * beta)) ** 2
        else:
            l = torch.relu(1 - beta * (c - r))
        if sft:
            l = l + sft * (-pc / (1 if sft_sum else nc))
        total = total + l
    return total / len(pairs)


def main():
    rng = random.Random(3)
    cases = [("llama", "sigmoid", 0.0, 0.0, False, 2), ("llama", "ipo", 0.0, 0.0, False, 1),
             ("mistral", "hinge", 0.0, 0.0, False, 2), ("mistral", "sigmoid", 0.1, 0.5, False, 3),
             ("qwen2", "sigmoid", 0.0, 0.3, True, 1), ("qwen2", "ipo", 0.0, 0.0, False, 2),
             ("qwen3", "sigmoid", 0.0, 0.0, False, 2), ("qwen3", "ipo", 0.0, 0.3, False, 1)]
    if SAN:
        cases = cases[::2]
    with tempfile.TemporaryDirectory() as d:
        made = {}
        for arch, loss, ls, sft, sft_sum, micro in cases:
            md = os.path.join(d, arch)
            if arch not in made:
                extra = {"qwen2": ["--tie"], "qwen3": ["--window", "8"]}.get(arch, [])
                subprocess.run([sys.executable, os.path.join(TOP, "tests", "make_tiny_model.py"), "--arch", arch,
                                "--out", md, "--std", "0.3"] + extra, check=True)
                base = transformers.AutoModelForCausalLM.from_pretrained(md, torch_dtype=torch.float64)
                torch.manual_seed(7)
                cfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                                      target_modules=TARGETS, task_type="CAUSAL_LM")
                pm = peft.get_peft_model(base, cfg)
                with torch.no_grad():  # B nonzero and modest so both A and B get gradients
                    for n, p in pm.named_parameters():
                        if "lora_" in n:
                            p.mul_(0.3)
                ad = os.path.join(d, arch + "-adapter")
                pm.float().save_pretrained(ad)
                pm.double()
                made[arch] = (pm, ad, base.config.vocab_size)
            pm, ad, vocab = made[arch]
            pairs = make_pairs(rng, 4, min(vocab, 300), arch in ("mistral", "qwen3"))
            inp = os.path.join(d, "pairs.jsonl")
            with open(inp, "w") as f:
                for p in pairs:
                    f.write(json.dumps(p) + "\n")
            gpath = os.path.join(d, "grads.safetensors")
            beta = 0.5
            cmd = [os.path.join(BIN, "pq-dpo"), "--raw", "--model", md, "--adapter", ad, "--lora-dropout", "0",
                   "--loss", loss, "--beta", str(beta), "--batch-size", "4", "--micro-batch", str(micro),
                   "--dump-grads", gpath, "-t", "1", "--lr-schedule", "constant", inp]
            if ls:
                cmd += ["--label-smoothing", str(ls)]
            if sft:
                cmd += ["--sft-weight", str(sft)] + (["--sft-sum"] if sft_sum else [])
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                check("%s %s: pq-dpo exit %d: %s" % (arch, loss, r.returncode, r.stderr), False)
                continue
            step = json.loads(r.stdout.splitlines()[0])
            got = safetensors.torch.load_file(gpath)
            pm.zero_grad()
            L = torch_loss(pm, pairs, loss, beta, ls, sft, sft_sum)
            L.backward()
            check("%s %s: loss %.9g vs torch %.9g" % (arch, loss, step["loss"], L.item()),
                  abs(step["loss"] - L.item()) < 1e-4 * (1 + abs(L.item())))
            worst, n = 0.0, 0
            for name, p in pm.named_parameters():
                if "lora_" not in name:
                    continue
                key = name.replace(".default", "")
                g = got.get(key)
                if g is None:
                    check("%s %s: no gradient %s in the dump" % (arch, loss, key), False)
                    continue
                ref = p.grad
                err = float((g.double() - ref).norm() / (ref.norm() + 1e-6))
                worst = max(worst, err)
                n += 1
                check("%s %s: %s relative error %.3g" % (arch, loss, key, err), err < 2e-3)
            check("%s %s: %d tensors compared" % (arch, loss, n), n == 2 * 7 * pm.config.num_hidden_layers)
            print("%-7s %-7s ls %.1f sft %.1f%s micro %d: loss %.6f (torch %.6f), %d tensors, worst rel err %.2e" %
                  (arch, loss, ls, sft, " sum" if sft_sum else "", micro, step["loss"], L.item(), n, worst))

        # step 0: a fresh adapter (B = 0): ln 2, rewards 0, policy logps == the reference's
        pm, ad, vocab = made["llama"]
        base = pm.get_base_model()
        with pm.disable_adapter(), torch.no_grad():
            pairs = make_pairs(rng, 4, 300, False)
            for p in pairs:
                p["ref_chosen_logp"] = float(seq_logp(pm, p["chosen_ids"], p["prompt_len"])[0])
                p["ref_rejected_logp"] = float(seq_logp(pm, p["rejected_ids"], p["prompt_len"])[0])
        inp = os.path.join(d, "pairs0.jsonl")
        with open(inp, "w") as f:
            for p in pairs:
                f.write(json.dumps(p) + "\n")
        r = subprocess.run([os.path.join(BIN, "pq-dpo"), "--raw", "--model", os.path.join(d, "llama"),
                            "--batch-size", "4", "--max-steps", "1", "-t", "1", "--no-save", inp], capture_output=True, text=True)
        check("step 0: exit %d %s" % (r.returncode, r.stderr), r.returncode == 0)
        s = json.loads(r.stdout.splitlines()[0])
        check("step 0: loss %.9g == ln 2" % s["loss"], abs(s["loss"] - math.log(2)) < 1e-5)
        for k in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
            check("step 0: %s %.3g == 0" % (k, s[k]), abs(s[k]) < 1e-5)
        want_c = sum(p["ref_chosen_logp"] for p in pairs) / 4
        check("step 0: logps/chosen %.7g == reference %.7g" % (s["logps/chosen"], want_c),
              abs(s["logps/chosen"] - want_c) < 1e-4 * abs(want_c))
        print("step 0: loss %.9f (ln 2 = %.9f), logps/chosen %.6f (reference %.6f)" %
              (s["loss"], math.log(2), s["logps/chosen"], want_c))
        qwen3_adapter(d, rng)
    if failures:
        print("%d failures" % len(failures))
        return 1
    return 0


def qwen3_adapter(d, rng):
    """Two steps of pq-dpo on a qwen3 written with --out; PEFT loads the adapter."""
    md, ad = os.path.join(d, "qwen3"), os.path.join(d, "qwen3-trained")
    pairs = make_pairs(rng, 4, 300, False)
    inp = os.path.join(d, "pairs-q3.jsonl")
    with open(inp, "w") as f:
        for p in pairs:
            f.write(json.dumps(p) + "\n")
    r = subprocess.run([os.path.join(BIN, "pq-dpo"), "--raw", "--model", md, "--batch-size", "2", "--max-steps", "2",
                        "--lr", "1e-2", "--warmup-steps", "0", "-t", "1", "--out", ad, inp],
                       capture_output=True, text=True)
    check("qwen3 adapter: pq-dpo exit %d %s" % (r.returncode, r.stderr), r.returncode == 0)
    if r.returncode:
        return
    cfg = json.load(open(os.path.join(ad, "adapter_config.json")))
    check("qwen3 adapter: target_modules %s" % cfg["target_modules"], sorted(cfg["target_modules"]) == sorted(TARGETS))
    got = safetensors.torch.load_file(os.path.join(ad, "adapter_model.safetensors"))
    base = transformers.AutoModelForCausalLM.from_pretrained(md, torch_dtype=torch.float64)
    own = peft.get_peft_model(base, peft.LoraConfig(r=cfg["r"], lora_alpha=cfg["lora_alpha"], target_modules=TARGETS,
                                                    task_type="CAUSAL_LM"))
    want = {k.replace(".default", ""): tuple(v.shape) for k, v in own.state_dict().items() if "lora_" in k}
    check("qwen3 adapter: tensor names as PEFT's (%d vs %d)" % (len(got), len(want)), set(got) == set(want))
    check("qwen3 adapter: shapes as PEFT's", all(tuple(got[k].shape) == want.get(k) for k in got))
    base = transformers.AutoModelForCausalLM.from_pretrained(md, torch_dtype=torch.float64)
    pm = peft.PeftModel.from_pretrained(base, ad)
    pm.eval()
    nb = sum(float(v.abs().sum()) for k, v in got.items() if "lora_B" in k)
    loaded = {k.replace(".default", ""): v for k, v in pm.state_dict().items() if "lora_" in k}
    check("qwen3 adapter: PEFT loaded every tensor (B sum %.3g)" % nb,
          nb > 0 and all(torch.equal(loaded[k], got[k].double()) for k in got))
    recs = [{"id": p["id"], "ids": p["chosen_ids"], "prompt_len": p["prompt_len"]} for p in pairs]
    r = subprocess.run([os.path.join(BIN, "pq-logp"), "--raw", "--model", md, "--adapter", ad, "-t", "1"],
                       input="".join(json.dumps(x) + "\n" for x in recs), capture_output=True, text=True)
    check("qwen3 adapter: pq-logp exit %d %s" % (r.returncode, r.stderr), r.returncode == 0)
    lp = [json.loads(l)["logp"] for l in r.stdout.splitlines()]
    with torch.no_grad():
        ref = [float(seq_logp(pm, x["ids"], x["prompt_len"])[0]) for x in recs]
    err = max(abs(a - b) for a, b in zip(lp, ref)) if len(lp) == len(ref) else 1
    check("qwen3 adapter: PeftModel == pq-logp --adapter (%.3g)" % err, err < 1e-4)
    print("qwen3 adapter: %d tensors named and shaped as PEFT's; PeftModel vs pq-logp --adapter: %.2e" %
          (len(got), err))


if __name__ == "__main__":
    sys.exit(main())
