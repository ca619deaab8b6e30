# test_gen_profile.py: PQ_GEN_PROFILE=1 (lib/gen.h), through test-gen's
# driver on a tiny random model: the generated ids are the same with and
# without it (flat cache, paged cache, paged with prompts in chunks and a
# pool so small that samples are preempted); pq_gen_free's one stderr line
# holds every kind of step and every phase, each >= 0, the phases that run
# on the CPU > 0 and the CUDA graph's 0; per kind of step the phases sum to
# no more than its wall time and to at least half of it; the steps of each
# kind and the rows they computed are what the requests imply (counted
# here from the prompts, the budget, the slots and the token counts, not
# read from the driver: a step that prefills beside decoding rows is a
# prefill step), and the kinds' steps add up to the driver's forward passes.
# Without PQ_GEN_PROFILE there is no such line.
import json
import math
import os
import subprocess
import sys
import tempfile

from gendrv import drive

TOP = os.environ.get("PQ_TOP", os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("PQ_BUILD", os.path.join(TOP, "build", "rel"))
DRIVER = os.path.join(BUILD, "tests", "test-gen")
PREFIX = "pq: PQ_GEN_PROFILE: "
KINDS = ("decode", "prefill", "idle")
PHASES = ("sched", "upload", "embed", "qkv", "attn", "o", "mlp", "head", "graph", "sample", "pick")
failures = []


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name)
    if not ok:
        failures.append(name + (": " + detail if detail else ""))
    return ok


def run(d, reqs, kv, profile, budget=None, blocks=None, slots=4):
    env = {"PQ_KV": kv}
    if profile:
        env["PQ_GEN_PROFILE"] = "1"
    if budget:
        env["PQ_PREFILL_BUDGET"] = str(budget)
    if blocks:
        env["PQ_KV_BLOCKS"] = str(blocks)
    lines, stats, err = drive(DRIVER, d, reqs, ["--slots", str(slots), "--threads", "1", "--no-eos", "1"],
                              env_set=env, timeout=120,
                              unset=("PQ_GEN_PROFILE", "PQ_PREFILL_BUDGET", "PQ_KV_BLOCKS", "PQ_PREFIX_CACHE",
                                     "PQ_CHUNKED_PREFILL", "PQ_PAGED_PROMPTS", "PQ_CUDA_GRAPH"))
    prof = [x[len(PREFIX):] for x in err.splitlines() if x.startswith(PREFIX)]
    return [[s["ids"] for s in r["samples"]] for r in lines], stats, prof


def check_profile(name, prof, stats, want):
    """want: {kind: (steps, rows)} for decode and prefill"""
    if not check(name + ": one profile line", len(prof) == 1, str(prof)):
        return
    try:
        p = json.loads(prof[0])
    except ValueError as e:
        check(name + ": the profile is JSON", False, "%s: %s" % (e, prof[0]))
        return
    shape = all(k in p and all(f in p[k] for f in ("steps", "rows", "wall_ms", "ms", "host_ms")) and
                all(ph in p[k]["ms"] and ph in p[k]["host_ms"] for ph in PHASES) for k in KINDS)
    if not check(name + ": every kind and phase present", shape, prof[0]):
        return
    vals = [p[k][f][ph] for k in KINDS for f in ("ms", "host_ms") for ph in PHASES] + [p[k]["wall_ms"] for k in KINDS]
    check(name + ": every time finite and >= 0", all(math.isfinite(v) and v >= 0 for v in vals), prof[0])
    for k in ("decode", "prefill"):
        x = p[k]
        check(name + ": %s steps and rows" % k, (x["steps"], x["rows"]) == want[k],
              "%s vs %s" % ((x["steps"], x["rows"]), want[k]))
        if x["steps"] == 0:
            continue
        ran = [ph for ph in PHASES if ph != "graph"]  # (a flat cache's upload takes tens of nanoseconds)
        check(name + ": %s: every phase took time, no graph (CPU)" % k,
              all(x["ms"][ph] > 0 and x["host_ms"][ph] > 0 for ph in ran) and x["ms"]["graph"] == 0 and
              x["host_ms"]["graph"] == 0, json.dumps(x))
        for f in ("ms", "host_ms"):
            s = sum(x[f].values())
            # the marks lie inside the step: no more than its wall time (less the clocks' rounding, 0.1 us a
            # step at most); most of it (a loaded machine may stall between the step's entry and its first mark,
            # or after its last)
            check(name + ": %s: the phases' %s (%.4f) within the wall time (%.4f), at least half" % (k, f, s,
                                                                                                 x["wall_ms"]),
                  0.5 * x["wall_ms"] <= s <= x["wall_ms"] + 1e-4 * x["steps"])
    total = sum(p[k]["steps"] for k in ("decode", "prefill"))
    check(name + ": decode + prefill steps = the driver's forward passes", total == stats["steps"],
          "%d vs %s" % (total, stats))
    wall = sum(p[k]["wall_ms"] for k in KINDS)
    check(name + ": the steps' wall time within the driver's", wall <= stats["seconds"] * 1e3 + 1e-3,
          "%.4f ms vs %s" % (wall, stats))


def main():
    if not os.access(DRIVER, os.X_OK):
        print("FAIL: no driver " + DRIVER)
        sys.exit(1)
    with tempfile.TemporaryDirectory() as tmp:
        d = os.path.join(tmp, "llama")
        subprocess.run([sys.executable, os.path.join(TOP, "tests", "make_tiny_model.py"), "--arch", "llama",
                        "--out", d, "--seed", "5"], check=True)
        # one request alone: a prefill step (or a chunk a step), then a decode step a token after the first
        P, new = 11, 6
        one = [{"prompt": list(range(3, 3 + P)), "temperature": 0, "max_tokens": new}]
        for kv, budget in (("flat", None), ("paged", None), ("paged", 4)):
            nm = "%s%s, one request" % (kv, ", budget %d" % budget if budget else "")
            a, sa, pa = run(d, one, kv, False, budget=budget)
            b, sb, pb = run(d, one, kv, True, budget=budget)
            check(nm + ": the same ids with and without the profile", a == b and len(a[0][0]) == new,
                  "%s vs %s" % (a, b))
            check(nm + ": no profile line without PQ_GEN_PROFILE", pa == [], str(pa))
            pf = -(-P // budget) if budget else 1
            check_profile(nm, pb, sb, {"prefill": (pf, P), "decode": (new - 1, new - 1)})
        # 2 slots, 3 requests of 4 prompt tokens and 2, 6, 3 new: steps 1 (A, B prefill; 8 rows) and 3 (C
        # prefills beside B's decode row, A having ended in step 2; 5 rows) have prefill rows; steps 2, 4, 5, 6
        # only decode (2, 2, 2, 1 rows)
        sched = [{"prompt": [5 + i, 6, 7, 8], "temperature": 0, "max_tokens": m} for i, m in enumerate((2, 6, 3))]
        for kv in ("flat", "paged"):
            nm = "%s, 3 requests in 2 slots" % kv
            a, sa, _ = run(d, sched, kv, False, slots=2)
            b, sb, pb = run(d, sched, kv, True, slots=2)
            check(nm + ": the same ids with and without the profile", a == b, "%s vs %s" % (a, b))
            check_profile(nm, pb, sb, {"prefill": (2, 13), "decode": (4, 7)})
        # several requests, n samples, greedy and seeded sampling, more samples than slots: every row either
        # prefills a prompt position (prompts recomputed after preemption too) or decodes a token after a
        # sample's first
        reqs = [{"prompt": [7 + i, 9, 11 + 2 * i] * (i + 1), "n": 1 + i % 3, "seed": 10 + i,
                 "temperature": 0 if i % 2 else 0.8, "top_p": 0.9, "max_tokens": 5 + i} for i in range(6)]
        nsamples = sum(r["n"] for r in reqs)
        for kv, budget, blocks in (("flat", None, None), ("paged", None, None), ("paged", 5, 4)):
            nm = "%s%s, 6 requests" % (kv, ", budget %d, %d blocks" % (budget, blocks) if budget else "")
            a, sa, _ = run(d, reqs, kv, False, budget=budget, blocks=blocks)
            b, sb, pb = run(d, reqs, kv, True, budget=budget, blocks=blocks)
            check(nm + ": the same ids with and without the profile", a == b, "%s vs %s" % (a, b))
            if len(pb) == 1:
                p = json.loads(pb[0])
                # (a preempted sample, resumed, recomputes its last token's position too: one decode row less)
                rows, most = p["decode"]["rows"] + p["prefill"]["rows"], sb["prefilled"] + sb["generated"] - nsamples
                check(nm + ": rows = prompt positions computed + tokens after each sample's first",
                      rows == most if not blocks else sb["prefilled"] <= rows < most,
                      "%d vs %s, %d samples" % (rows, sb, nsamples))
                want = {k: (p[k]["steps"], p[k]["rows"]) for k in ("decode", "prefill")}
                check(nm + ": decode and prefill steps both ran", min(want["decode"][0], want["prefill"][0]) > 0,
                      str(want))
            else:
                want = {}
            check_profile(nm, pb, sb, want)
            if blocks:
                check(nm + ": preempted (prompts recomputed)", sb["prefilled"] > sum(len(r["prompt"]) for r in reqs),
                      str(sb))
    if failures:
        print("\n".join("FAIL: " + f for f in failures))
        sys.exit(1)
    print("all ok")


main()
