# test_logp_pairs.py: pq-logp end to end on pair records: the chat template
# rendered by transformers' apply_chat_template, tokenized by the `tokenizers`
# library (prompt with the generation prompt, then the rest of the
# conversation), scored by transformers in float64; pq-logp's
# ref_*_logp, *_tokens and per-token values must match.
import json
import os
import subprocess
import sys
import tempfile

import torch
import transformers
from tokenizers import Tokenizer

TOP = os.environ.get("PQ_TOP", os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("PQ_BIN", os.path.join(TOP, "bin"))
SAN = os.environ.get("PQ_FLAVOR") == "san"
DATA = os.path.join(TOP, "data", "cnndm-sample.jsonl")
TOL = 1e-4
torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)
transformers.logging.set_verbosity_error()


def pairs(n):
    arts = []
    if os.path.exists(DATA):
        arts = [json.loads(l)["article"][:600] for l in open(DATA)][:n]
    while len(arts) < n:
        arts.append("The council met on Tuesday (%d) and voted to repair the bridge, café owners said. " % len(arts) * 3)
    out = []
    for i, a in enumerate(arts):
        prompt = [{"role": "user", "content": "Summarize the following article.\n\n" + a}]
        ch = {"role": "assistant", "content": "A short summary, number %d: the bridge." % i}
        rj = {"role": "assistant", "content": "Something else entirely \u2014 %d dogs!\n" % (i * 7)}
        if i % 2:  # TRL's form
            out.append({"id": "p%d" % i, "prompt": prompt, "chosen": [ch], "rejected": [rj]})
        else:  # whole conversations (method.md)
            out.append({"id": "p%d" % i, "prompt": prompt, "chosen": prompt + [ch], "rejected": prompt + [rj]})
    return out


def main():
    if not os.access(os.path.join(BIN, "pq-logp"), os.X_OK):
        print("FAIL: no pq-logp in", BIN)
        sys.exit(1)
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("llama", "qwen2"):
            d = os.path.join(tmp, arch)
            subprocess.run([sys.executable, os.path.join(TOP, "tests", "make_tiny_model.py"), "--arch", arch,
                            "--out", d, "--seed", "5"], check=True)
            recs = pairs(2 if SAN else 4)
            inp = "".join(json.dumps(r) + "\n" for r in recs)
            p = subprocess.run([os.path.join(BIN, "pq-logp"), "-m", d, "--per-token", "-t", "2"], input=inp,
                               capture_output=True, text=True)
            if p.returncode:
                failures.append("%s: pq-logp exit %d: %s" % (arch, p.returncode, p.stderr))
                continue
            got = [json.loads(l) for l in p.stdout.splitlines()]
            tok = transformers.AutoTokenizer.from_pretrained(d)
            fast = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
            m = transformers.AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float64).eval()
            worst = 0.0
            for r, g in zip(recs, got):
                if g["id"] != r["id"]:
                    failures.append("%s: output %s in place of %s" % (arch, g["id"], r["id"]))
                for k in ("chosen", "rejected"):
                    resp = r[k][-1]
                    pre = tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
                    full = tok.apply_chat_template(r["prompt"] + [resp], tokenize=False)
                    assert full.startswith(pre)
                    P = fast.encode(pre, add_special_tokens=False).ids
                    R = fast.encode(full[len(pre):], add_special_tokens=False).ids
                    ids = torch.tensor([P + R])
                    with torch.no_grad():
                        lp = m(ids).logits[0].log_softmax(-1)
                    want = lp[torch.arange(len(P) - 1, len(P) + len(R) - 1), torch.tensor(R)].tolist()
                    if g[k + "_tokens"] != len(R):
                        failures.append("%s %s %s: %d tokens, want %d" % (arch, r["id"], k, g[k + "_tokens"], len(R)))
                        continue
                    e = max([abs(g["ref_%s_logp" % k] - sum(want))] +
                            [abs(a - b) for a, b in zip(g[k + "_token_logps"], want)])
                    worst = max(worst, e)
            print("%s: %d pairs, max |err| %.2e" % (arch, len(got), worst))
            if len(got) != len(recs) or not worst < TOL:
                failures.append("%s: %d outputs, max error %.3g" % (arch, len(got), worst))
    if failures:
        print("FAILED:", *failures, sep="\n  ")
        sys.exit(1)


if __name__ == "__main__":
    main()
