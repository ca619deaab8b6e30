# test_gen_mixed.py: the paged scheduler (lib/gen.c) under random mixes of
# its settings at once, through test-gen's driver on tiny random models (a
# llama; a qwen3 with a window of 8 on its second layer). Each case draws
# requests (some sharing a first part, 1 to 3 samples, 1 to 19 new tokens),
# slots, and at once a prefill budget (chunks), a pool from just enough
# blocks for the longest sequence to plenty (preemption), the prefix cache,
# chunked prefill, whole prompts as segments (PQ_PAGED_PROMPTS) and steps
# padded to CUDA graphs' buckets (PQ_CUDA_GRAPH), each on or off. Greedy
# cases must give the flat cache's ids; sampled ones (seeded, T=1, top-k or
# top-p) the ids of a plain paged run (no chunks, no prefix cache: the
# counter RNG keys draws by seed, sample and index, never by the batch).
# The fixed tests each hold one setting against the reference; this holds
# their combinations. Under ASan/UBSan fewer cases.
import os
import random
import subprocess
import sys
import tempfile

from gendrv import drive

TOP = os.environ.get("PQ_TOP", os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("PQ_BUILD", os.path.join(TOP, "build", "rel"))
DRIVER = os.path.join(BUILD, "tests", "test-gen")
CASES = 8 if os.environ.get("PQ_FLAVOR") == "san" else 40
KNOBS = ("PQ_KV", "PQ_PREFILL_BUDGET", "PQ_KV_BLOCKS", "PQ_KV_MEMORY", "PQ_PREFIX_CACHE", "PQ_CHUNKED_PREFILL",
         "PQ_PAGED_PROMPTS", "PQ_CUDA_GRAPH")
failures = []


def ids(d, reqs, slots, env):
    lines, stats, _ = drive(DRIVER, d, reqs, ["--slots", str(slots), "--threads", "1"], unset=KNOBS, env_set=env,
                            timeout=120)
    return [[s["ids"] for s in r["samples"]] for r in lines], stats


def case(d, seed, hi):
    r = random.Random(seed)
    sampled = r.random() < 0.5
    common = [r.randrange(3, hi) for _ in range(r.randrange(0, 60))]
    reqs = []
    for _ in range(r.randrange(1, 9)):
        q = {"prompt": (common if r.random() < 0.5 else []) + [r.randrange(3, hi) for _ in range(r.randrange(1, 50))],
             "n": r.randrange(1, 4), "temperature": 0, "max_tokens": r.randrange(1, 20)}
        if sampled:
            q.update(temperature=1.0, seed=r.randrange(100), top_p=r.choice([1.0, 0.9]), top_k=r.choice([0, 5]))
        reqs.append(q)
    slots = r.randrange(1, 8)
    need = max(-(-(len(q["prompt"]) + q["max_tokens"]) // 16) for q in reqs) + 1  # blocks of the longest, and one
    env = {"PQ_KV": "paged", "PQ_PREFILL_BUDGET": str(r.choice([1, 3, 5, 7, 16, 64, 2048])),
           "PQ_KV_BLOCKS": str(r.choice([need, need + 1, need + 3, 2 * need, 1000])),
           "PQ_PREFIX_CACHE": r.choice("01"), "PQ_CHUNKED_PREFILL": r.choice("01"),
           "PQ_PAGED_PROMPTS": r.choice("01"), "PQ_CUDA_GRAPH": r.choice("01")}
    ref_env = {"PQ_KV": "paged", "PQ_PREFIX_CACHE": "0", "PQ_CHUNKED_PREFILL": "0"} if sampled else {"PQ_KV": "flat"}
    want, _ = ids(d, reqs, slots, ref_env)
    got, stats = ids(d, reqs, slots, env)
    name = "%s case %d (%s, %d requests, %d slots, %s)" % (os.path.basename(d), seed, "sampled" if sampled else
                                                           "greedy", len(reqs), slots,
                                                           " ".join("%s=%s" % kv for kv in sorted(env.items())))
    ok = got == want and stats["generated"] == sum(len(x) for s in got for x in s)
    print(("ok   " if ok else "FAIL ") + name)
    if not ok:
        bad = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
        failures.append("%s: request %s: %s vs %s; %s" % (name, bad, got[bad] if bad is not None else got,
                                                         want[bad] if bad is not None else want, stats))
    stats["preempted"] = stats["prefilled"] + stats["prefix_hit"] > sum(len(q["prompt"]) for q in reqs)
    return stats


def main():
    if not os.access(DRIVER, os.X_OK):
        print("FAIL: no driver " + DRIVER)
        sys.exit(1)
    seen = {"chunks": 0, "preempted": 0, "prefix_hit": 0}
    with tempfile.TemporaryDirectory() as tmp:
        for arch, extra, hi in (("llama", [], 30000), ("qwen3", ["--tie", "--window", "8"], 50000)):
            d = os.path.join(tmp, arch)
            subprocess.run([sys.executable, os.path.join(TOP, "tests", "make_tiny_model.py"), "--arch", arch,
                            "--out", d, "--seed", "3", *extra], check=True)
            for k in range(CASES // 2):
                st = case(d, 1000 * (arch == "qwen3") + k, hi)
                for key in seen:
                    seen[key] += int(st[key])
    # the draws reach what they are for: chunks, prefix hits and preempted samples recomputed happened (a mix that
    # never chunks tests little)
    for key in seen:
        if not seen[key]:
            failures.append("no case had any %s" % key)
    print("seen: %s" % seen)
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print("all %d cases passed" % CASES)


main()
