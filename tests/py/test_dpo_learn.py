# test_dpo_learn.py: pq-dpo end to end on a tiny random model with a
# synthetic preference (the chosen response ends in one token, the rejected
# in another; reference log-probs from transformers): reward accuracy on a
# valid split rises above 0.95 within a fixed budget; stop + --resume gives
# the very losses of one uninterrupted run; the written adapter loads in peft
# and gives the log-probs pq-dpo evaluated (and pq-logp --adapter's, when
# pq-logp is built).
import json
import os
import random
import subprocess
import sys
import tempfile

import peft
import torch
import transformers

TOP = os.environ.get("PQ_TOP", os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("PQ_BIN", os.path.join(TOP, "bin"))
torch.set_num_threads(1)
transformers.logging.set_verbosity_error()
failures = []


def check(what, ok):
    if not ok:
        failures.append(what)
        print("FAIL", what)


def seq_logp(model, ids, plen):
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(x).logits[0].double()
    lp = torch.log_softmax(logits[:-1], dim=-1).gather(1, x[0, 1:].unsqueeze(1)).squeeze(1)
    return float(lp[plen - 1:].sum())


def make(rng, n, model):
    out = []
    for i in range(n):
        plen = rng.randrange(4, 9)
        p = [rng.randrange(3, 300) for _ in range(plen)]
        mid = [rng.randrange(3, 300) for _ in range(rng.randrange(1, 4))]
        rec = {"id": "p%d" % i, "chosen_ids": p + mid + [17], "rejected_ids": p + mid + [18], "prompt_len": plen}
        rec["ref_chosen_logp"] = seq_logp(model, rec["chosen_ids"], plen)
        rec["ref_rejected_logp"] = seq_logp(model, rec["rejected_ids"], plen)
        out.append(rec)
    return out


def write(path, recs):
    with open(path, "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")


def run(args, **kw):
    if "--out" not in args:
        args = args + ["--no-save"]
    r = subprocess.run([os.path.join(BIN, "pq-dpo")] + args, capture_output=True, text=True, **kw)
    lines = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
    return r, lines


def main():
    rng = random.Random(5)
    with tempfile.TemporaryDirectory() as d:
        md = os.path.join(d, "model")
        subprocess.run([sys.executable, os.path.join(TOP, "tests", "make_tiny_model.py"), "--arch", "llama",
                        "--out", md], check=True)
        base = transformers.AutoModelForCausalLM.from_pretrained(md, torch_dtype=torch.float32)
        train, valid = make(rng, 64, base), make(rng, 32, base)
        tp, vp = os.path.join(d, "train.jsonl"), os.path.join(d, "valid.jsonl")
        write(tp, train)
        write(vp, valid)
        common = ["--raw", "--model", md, "-t", "1", "--lr", "5e-3", "--beta", "0.5", "--batch-size", "8",
                  "--micro-batch", "4", "--lora-r", "4", "--warmup-steps", "2", "--seed", "3"]

        # learning: 4 epochs of 8 steps, valid evaluated every 8 steps; the train set arrives on a pipe
        out = os.path.join(d, "adapter")
        with open(tp) as f:
            r, lines = run(common + ["--epochs", "4", "--train-pairs", "64", "--valid", vp, "--eval-every", "8",
                                     "--out", out], stdin=f)
        check("learn: exit %d: %s" % (r.returncode, r.stderr), r.returncode == 0)
        ev = [l for l in lines if l.get("split") == "valid"]
        st = [l for l in lines if "split" not in l]
        check("learn: 32 step lines (%d)" % len(st), len(st) == 32)
        keys = ["step", "epoch", "loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
                "rewards/accuracies", "logps/chosen", "logps/rejected", "lr", "grad_norm", "tokens", "tokens_per_s",
                "peak_mem_mb"]
        check("learn: step line fields", all(all(k in l for k in keys) for l in st))
        check("learn: eval lines at steps 0, 8, 16, 24, 32 (%s)" % [l["step"] for l in ev],
              [l["step"] for l in ev] == [0, 8, 16, 24, 32])
        if ev:
            a0, a1 = ev[0]["rewards/accuracies"], ev[-1]["rewards/accuracies"]
            print("learn: valid accuracy %.3f at step 0 -> %.3f at step %d; loss %.4f -> %.4f" %
                  (a0, a1, ev[-1]["step"], ev[0]["loss"], ev[-1]["loss"]))
            check("learn: valid accuracy at step 0 is not already high (%.3f)" % a0, a0 <= 0.75)
            check("learn: valid accuracy rose above 0.95 (%.3f)" % a1, a1 > 0.95)
            check("learn: valid loss at step 0 is ln 2 (%.6f)" % ev[0]["loss"], abs(ev[0]["loss"] - 0.693147) < 1e-4)

        # the adapter in peft gives pq-dpo's evaluated log-probs
        cfg = json.load(open(os.path.join(out, "adapter_config.json")))
        check("adapter_config fields", cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM" and
              cfg["r"] == 4 and cfg["lora_alpha"] == 16 and cfg["bias"] == "none" and
              sorted(cfg["target_modules"]) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                        "up_proj", "down_proj"]))
        pm = peft.PeftModel.from_pretrained(base, out)
        pm.eval()
        mc = sum(seq_logp(pm, v["chosen_ids"], v["prompt_len"]) for v in valid) / len(valid)
        if ev:
            print("peft: mean chosen logp %.6f, pq-dpo's eval %.6f" % (mc, ev[-1]["logps/chosen"]))
            check("peft logps == pq-dpo's eval", abs(mc - ev[-1]["logps/chosen"]) < 1e-4 * abs(mc))
        logp = os.path.join(BIN, "pq-logp")
        recs = "".join(json.dumps({"id": v["id"], "ids": v["chosen_ids"], "prompt_len": v["prompt_len"]}) + "\n"
                       for v in valid[:8])
        r2 = subprocess.run([logp, "--raw", "--model", md, "--adapter", out, "-t", "1"], input=recs,
                            capture_output=True, text=True)
        check("pq-logp --adapter: exit %d %s" % (r2.returncode, r2.stderr), r2.returncode == 0)
        got = [json.loads(l)["logp"] for l in r2.stdout.splitlines()]
        want = [seq_logp(pm, v["chosen_ids"], v["prompt_len"]) for v in valid[:8]]
        err = max(abs(a - b) for a, b in zip(got, want)) if got else 1
        print("pq-logp --adapter vs peft: max abs diff %.2e" % err)
        check("pq-logp --adapter == peft (%.3g)" % err, len(got) == 8 and err < 1e-3)

        # resume: 5 steps, stop, resume to 12 == 12 in one run (dropout on, across an epoch boundary)
        rs = common + ["--epochs", "3", "--max-steps", "12", "--lora-dropout", "0.1", tp]
        ck = os.path.join(d, "ck")
        r, one = run(rs)
        check("resume: one run exit %d" % r.returncode, r.returncode == 0)
        r, a = run(rs + ["--stop-after", "5", "--out", ck])
        check("resume: first part exit %d %s" % (r.returncode, r.stderr), r.returncode == 0)
        st = json.load(open(os.path.join(ck, "trainer_state.json")))
        check("resume: state step 5 (%s)" % st.get("step"), st.get("step") == 5)
        r, b = run(rs + ["--resume", ck, "--out", ck])
        check("resume: second part exit %d %s" % (r.returncode, r.stderr), r.returncode == 0)
        both = a + b
        check("resume: steps %s" % [l["step"] for l in both], [l["step"] for l in both] == list(range(1, 13)))
        worst = max((abs(x["loss"] - y["loss"]) for x, y in zip(one, both)), default=1)
        check("resume: losses equal to 1e-6 (worst %.3g)" % worst, len(one) == 12 and worst <= 1e-6)
        gworst = max((abs(x["grad_norm"] - y["grad_norm"]) for x, y in zip(one, both)), default=1)
        print("resume: 5 + 7 steps vs 12 in one run: worst loss difference %.3g, grad_norm %.3g" % (worst, gworst))
    if failures:
        print("%d failures" % len(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
