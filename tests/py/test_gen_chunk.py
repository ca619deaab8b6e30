# test_gen_chunk.py: chunked prefill and the prefix cache of the paged KV
# cache (lib/gen.c, through test-gen's driver). With a prefill budget of a few tokens a step
# (PQ_PREFILL_BUDGET), prompts longer than it are prefilled in chunks over
# several steps, beside the slots that decode meanwhile; the greedy ids must
# be transformers' (float64), the unchunked paged run's and the flat cache's,
# the n samples of a request must still share one prefill, and a pool of
# few blocks (samples preempted, then recomputed in chunks) must give the
# same ids; so must whole prompts through the paged attention's segments
# (PQ_PAGED_PROMPTS=1). The driver's counters show the chunks and the steps that mixed
# them with decoding, so the test fails if chunking silently turns off;
# with PQ_CHUNKED_PREFILL=0 (the CUDA build's default) there are none.
# The prefix cache: requests sharing a long first part (the quiz tools'
# instructions) share its full blocks, from a running request or from the
# free blocks a finished one left; the ids must be the same as with
# PQ_PREFIX_CACHE=0 and transformers', every prompt position either
# prefilled or shared (one at a time: exactly the full blocks of the common
# part, after the first request), also chunked and with a pool so small
# that samples are preempted and cached blocks reused.
import os
import random
import subprocess
import sys
import tempfile

import torch
import transformers

import qwen3ref  # noqa: F401 (registers Qwen3 with the Auto classes)
from gendrv import drive

TOP = os.environ.get("PQ_TOP", os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("PQ_BUILD", os.path.join(TOP, "build", "rel"))
DRIVER = os.path.join(BUILD, "tests", "test-gen")
torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)
transformers.logging.set_verbosity_error()
failures = []


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name)
    if not ok:
        failures.append(name + (": " + detail if detail else ""))


def run(d, reqs, slots, kv, budget=None, blocks=None, prefix=True, chunking=True, prompts=False):
    env = {"PQ_KV": kv}
    if prompts:
        env["PQ_PAGED_PROMPTS"] = "1"
    if not prefix:
        env["PQ_PREFIX_CACHE"] = "0"
    if not chunking:
        env["PQ_CHUNKED_PREFILL"] = "0"
    if budget:
        env["PQ_PREFILL_BUDGET"] = str(budget)
    if blocks:
        env["PQ_KV_BLOCKS"] = str(blocks)
    lines, stats, _ = drive(DRIVER, d, reqs, ["--slots", str(slots), "--threads", "1"], env_set=env, timeout=120,
                            unset=("PQ_PREFILL_BUDGET", "PQ_KV_BLOCKS", "PQ_PREFIX_CACHE", "PQ_CHUNKED_PREFILL",
                                   "PQ_PAGED_PROMPTS"))
    return [[s["ids"] for s in r["samples"]] for r in lines], stats


def hf_greedy(m, prompt, n_new, eos):
    with torch.no_grad():
        out = m.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n_new, use_cache=True,
                         eos_token_id=eos, pad_token_id=eos,
                         attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    ids = out[0, len(prompt):].tolist()
    return ids[:ids.index(eos)] if eos in ids else ids


def main():
    if not os.access(DRIVER, os.X_OK):
        print("FAIL: no driver " + DRIVER)
        sys.exit(1)
    rnd = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        # llama; qwen3 with q/k norms and a window of 8 on its second layer (chunks reach back past it)
        for arch, extra in (("llama", []), ("qwen3", ["--tie", "--window", "8"])):
            d = os.path.join(tmp, arch)
            subprocess.run([sys.executable, os.path.join(TOP, "tests", "make_tiny_model.py"), "--arch", arch,
                            "--out", d, "--seed", "3", *extra], check=True)
            m = transformers.AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float64,
                                                                  attn_implementation="eager")
            m.eval()
            eos = m.config.eos_token_id
            hi = 30000 if arch == "llama" else 50000
            # short ones first, so that they decode while the long ones after them are prefilled in chunks
            lens, ns = (3, 5, 41, 9, 27, 2, 33), (1, 2, 3, 1, 2, 1, 1)
            prompts = [[rnd.randrange(3, hi) for _ in range(n)] for n in lens]
            n_new = 10
            want = [[hf_greedy(m, p, n_new, eos)] * k for p, k in zip(prompts, ns)]
            reqs = [{"prompt": p, "n": k, "temperature": 0, "max_tokens": n_new} for p, k in zip(prompts, ns)]
            plen = sum(lens)

            flat, cf = run(d, reqs, 6, "flat")
            whole, cw = run(d, reqs, 6, "paged")
            chunked, cc = run(d, reqs, 6, "paged", budget=7)
            check(arch + ": flat = transformers", flat == want, "%s\nvs %s" % (flat, want))
            check(arch + ": paged = transformers", whole == want, "%s\nvs %s" % (whole, want))
            check(arch + ": paged, prefill budget 7 (chunked) = transformers", chunked == want,
                  "%s\nvs %s" % (chunked, want))
            # whole prompts as segments of the paged attention too (PQ_PAGED_PROMPTS=1), chunked or not
            for b in (None, 7):
                seg, _ = run(d, reqs, 6, "paged", budget=b, prompts=True)
                check(arch + ": PQ_PAGED_PROMPTS=1, budget %s = transformers" % b, seg == want,
                      "%s\nvs %s" % (seg, want))
            check(arch + ": the default budget takes whole prompts", cw["chunks"] == 0 and cw["mixed"] == 0, str(cw))
            least = sum(-(-n // 7) for n in lens if n > 7)  # chunks a prompt longer than 7 takes at least
            check(arch + ": budget 7 chunks the long prompts beside decoding",
                  cc["chunks"] >= least and cc["mixed"] > 0 and cc["steps"] > cw["steps"], "%s vs %s" % (cc, cw))
            check(arch + ": chunked, the n samples share one prefill",
                  cc["prefilled"] == plen and cw["prefilled"] == plen, "%s %s vs %d" % (cc, cw, plen))
            # chunking off (the CUDA build's default): a prompt longer than the budget goes alone, whole
            alone, ca = run(d, reqs, 6, "paged", budget=7, chunking=False)
            check(arch + ": PQ_CHUNKED_PREFILL=0, budget 7 = transformers, no chunks",
                  alone == want and ca["chunks"] == 0 and ca["mixed"] == 0, "%s\n%s" % (alone, ca))
            # one slot: each prompt alone, in chunks of 1, 4, 16 tokens
            for b in (1, 4, 16):
                one, c1 = run(d, reqs, 1, "paged", budget=b)
                check(arch + ": 1 slot, budget %d = transformers" % b, one == want and c1["chunks"] > 0,
                      "%s\n%s" % (one, c1))
            # 6 blocks of 16 positions: samples preempted and their prompt and tokens recomputed in chunks
            few, cb = run(d, reqs, 6, "paged", budget=5, blocks=6)
            check(arch + ": budget 5, 6 blocks (preempted, resumed in chunks) = transformers", few == want,
                  "%s\nvs %s" % (few, want))
            check(arch + ": 6 blocks preempt", cb["prefilled"] > plen and cb["chunks"] > 0, "%s vs %d" % (cb, plen))

            # 2 slots, 6 blocks, prompts of 38 to 57 tokens, one of 3 samples: the blocks its prompt kept for its
            # third sample once kept a preempted sample from resuming while nothing ran, for ever
            common = [rnd.randrange(3, hi) for _ in range(37)]
            tails, ns = (20, 5, 12, 1, 9), (1, 1, 2, 1, 3)
            prompts = [common + [rnd.randrange(3, hi) for _ in range(n)] for n in tails]
            want = [[hf_greedy(m, p, n_new, eos)] * k for p, k in zip(prompts, ns)]
            reqs = [{"prompt": p, "n": k, "temperature": 0, "max_tokens": n_new} for p, k in zip(prompts, ns)]
            plen = sum(map(len, prompts))
            got, cg = run(d, reqs, 2, "paged", blocks=6, prefix=False)
            check(arch + ": 2 slots, 6 blocks, 3 samples of a prompt kept = transformers", got == want,
                  "%s\nvs %s" % (got, want))

            # the prefix cache on those prompts: 37 tokens in common (2 full blocks of 16), then 1 to 20 of their own
            off, co = run(d, reqs, 1, "paged", prefix=False)
            on, cn = run(d, reqs, 1, "paged")
            check(arch + ": prefix cache off = transformers", off == want, "%s\nvs %s" % (off, want))
            check(arch + ": prefix cache, one at a time = transformers", on == want, "%s\nvs %s" % (on, want))
            check(arch + ": prefix cache off shares nothing", co["prefix_hit"] == 0 and co["prefilled"] == plen,
                  str(co))
            check(arch + ": one at a time, each request after the first shares the 2 full common blocks",
                  cn["prefix_hit"] == 32 * (len(prompts) - 1) and cn["prefilled"] == co["prefilled"] - cn["prefix_hit"],
                  "%s vs %s" % (cn, co))
            for slots, budget, blocks in ((4, 7, None), (4, 5, 9), (2, None, 6)):
                got, cg = run(d, reqs, slots, "paged", budget=budget, blocks=blocks)
                what = "%d slots, budget %s, %s blocks" % (slots, budget, blocks)
                check(arch + ": prefix cache, %s = transformers" % what, got == want, "%s\nvs %s" % (got, want))
                check(arch + ": prefix cache, %s: blocks shared" % what, cg["prefix_hit"] > 0, str(cg))
                if not blocks:  # no preemption: every prompt position prefilled or shared, once
                    check(arch + ": prefix cache, %s: prefilled + shared = the prompts" % what,
                          cg["prefilled"] + cg["prefix_hit"] == plen, "%s vs %d" % (cg, plen))
    if failures:
        print("FAILED:", *failures, sep="\n  ")
        sys.exit(1)


main()
