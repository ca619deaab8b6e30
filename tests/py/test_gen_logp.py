# test_gen_logp.py: the log-probabilities generation reports for its own
# tokens (PqGenOut.logp, lib/gen.c; test-gen's "logp"): each token's log
# softmax under the model at temperature 1, before any truncation or
# grammar, whatever drew it. Checked per token against transformers in
# float64 on the same prompt + ids, and against pq-logp --raw --per-token on
# the same ids (issue 11: generation's log-probs equal pq-logp's), for an
# f32 llama and a bf16 mistral, with the flat cache (host picks) and the
# paged one (device draws, pq_row_lse / pq_token_logp), greedy, sampled at
# temperature 0.6 with top-p and 0.9 with top-k (a value taken after the
# temperature or the cut would differ from the references), constrained by a grammar (the mask must not
# enter the value), several samples sharing a prompt's logits, and a pool
# so small that samples are preempted and recomputed (their values kept).
import json
import os
import subprocess
import sys
import tempfile

import torch
import transformers

from gendrv import drive

TOP = os.environ.get("PQ_TOP", os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("PQ_BUILD", os.path.join(TOP, "build", "rel"))
DRIVER = os.path.join(BUILD, "tests", "test-gen")
LOGP = os.path.join(BUILD, "bin", "pq-logp")
torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)
transformers.logging.set_verbosity_error()
failures = []


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else ": " + detail))
    if not ok:
        failures.append(name)


def generate(d, reqs, kv, blocks=None):
    env = {"PQ_KV": kv, **({"PQ_KV_BLOCKS": str(blocks)} if blocks else {})}
    lines, stats, _ = drive(DRIVER, d, reqs, ["--slots", "4", "--threads", "1"], unset=("PQ_KV_BLOCKS",),
                            env_set=env, timeout=300)
    return [r["samples"] for r in lines], stats


def hf_token_logps(m, prompt, ids):
    with torch.no_grad():
        x = torch.tensor([prompt + ids])
        lp = torch.log_softmax(m(x).logits[0].double(), dim=-1)
    return [lp[len(prompt) - 1 + t, ids[t]].item() for t in range(len(ids))]


def pq_logp(d, records):
    inp = "".join(json.dumps({"id": str(i), "ids": ids, "prompt_len": p}) + "\n" for i, (p, ids) in enumerate(records))
    p = subprocess.run([LOGP, "-m", d, "--raw", "--per-token", "--threads", "1"], input=inp, capture_output=True,
                       text=True, timeout=300)
    if p.returncode:
        sys.exit("pq-logp failed (%d): %s" % (p.returncode, p.stderr))
    return [json.loads(x)["token_logps"] for x in p.stdout.splitlines()]


def main():
    for exe in (DRIVER, LOGP):
        if not os.access(exe, os.X_OK):
            print("FAIL: no " + exe)
            sys.exit(1)
    with tempfile.TemporaryDirectory() as tmp:
        for arch, dtype, tol in (("llama", "f32", 2e-4), ("mistral", "bf16", 2e-3)):
            d = os.path.join(tmp, arch)
            subprocess.run([sys.executable, os.path.join(TOP, "tests", "make_tiny_model.py"), "--arch", arch,
                            "--dtype", dtype, "--out", d, "--seed", "5", "--std", "0.2"], check=True)
            m = transformers.AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float64,
                                                                  attn_implementation="eager")
            m.eval()
            prompts = [[(37 * i + 11 * j) % 5000 + 3 for j in range(n)] for i, n in enumerate((9, 23, 17))]
            reqs = [
                {"prompt": prompts[0], "n": 1, "temperature": 0, "max_tokens": 12},
                {"prompt": prompts[1], "n": 3, "temperature": 0.6, "top_p": 0.7, "max_tokens": 12, "seed": 4},
                {"prompt": prompts[2], "n": 2, "temperature": 0.9, "top_k": 50, "max_tokens": 10, "seed": 9},
                {"prompt": prompts[0], "n": 2, "temperature": 0.8, "max_tokens": 14, "seed": 2,
                 "constrain": "summary"},
            ]
            runs = {"flat": generate(d, reqs, "flat")[0], "paged": generate(d, reqs, "paged")[0],
                    "paged, 4 blocks (preempted)": generate(d, reqs, "paged", blocks=4)[0]}
            for kv, out in runs.items():
                what = "%s %s, %s" % (arch, dtype, kv)
                worst, n, records, gen_lps = 0.0, 0, [], []
                for q, samples in zip(reqs, out):
                    for s in samples:
                        ids, lps = s["ids"], s["logp"]
                        if len(lps) != len(ids) or not ids:
                            check(what + ": a value per token", False, "%d ids, %d values" % (len(ids), len(lps)))
                            continue
                        ref = hf_token_logps(m, q["prompt"], ids)
                        worst = max(worst, max(abs(a - b) for a, b in zip(lps, ref)))
                        n += len(ids)
                        records.append((len(q["prompt"]), q["prompt"] + ids))
                        gen_lps.append(lps)
                check("%s: %d tokens' logp = transformers' (float64) within %g" % (what, n, tol), worst <= tol,
                      "worst %.3g" % worst)
                # pq-logp on the same ids, per token
                ref = pq_logp(d, records)
                worst = max(abs(a - b) for g, r in zip(gen_lps, ref) for a, b in zip(g, r))
                same_len = all(len(g) == len(r) for g, r in zip(gen_lps, ref))
                check("%s: logp = pq-logp --raw --per-token within %g" % (what, tol), same_len and worst <= tol,
                      "worst %.3g" % worst)
            # preempted samples are recomputed, not redrawn: the same ids (the counter RNG), the values kept
            a, b = runs["paged"], runs["paged, 4 blocks (preempted)"]
            same = all(x["ids"] == y["ids"] for p, q in zip(a, b) for x, y in zip(p, q))
            worst = max(abs(u - v) for p, q in zip(a, b) for x, y in zip(p, q) for u, v in zip(x["logp"], y["logp"]))
            check(arch + ": a preempting pool gives the roomy one's ids and values", same and worst <= tol,
                  "ids %s, worst %.3g" % ("equal" if same else "differ", worst))
    if failures:
        print("FAILED:", *failures, sep="\n  ")
        sys.exit(1)


main()
