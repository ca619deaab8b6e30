# test_dpo_merge.py: pq-merge against peft's merge_and_unload on a tiny
# random checkpoint with a random PEFT adapter (every target): the merged
# tensors (f32 and bf16), the copied files, and the logits transformers gets
# from the merged directory; llama, qwen2 and qwen3 (qwen3ref.py: its q/k
# norms pass through unchanged).
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import peft
import safetensors.numpy
import torch
import transformers

import qwen3ref  # noqa: F401 (registers Qwen3 with the Auto classes)

TOP = os.environ.get("PQ_TOP", os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("PQ_BIN", os.path.join(TOP, "bin"))
torch.set_num_threads(1)
transformers.logging.set_verbosity_error()
failures = []


def check(what, ok):
    if not ok:
        failures.append(what)
        print("FAIL", what)


def bf16_to_f32(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32)


def read_raw(path):
    """safetensors header + raw bytes (numpy's loader has no bf16)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        h = json.loads(f.read(n))
        data = f.read()
    return h, data


def main():
    with tempfile.TemporaryDirectory() as d:
        for arch in ("llama", "qwen2", "qwen3"):
            md, ad = os.path.join(d, arch), os.path.join(d, arch + "-adapter")
            subprocess.run([sys.executable, os.path.join(TOP, "tests", "make_tiny_model.py"), "--arch", arch,
                            "--out", md] + (["--tie"] if arch == "qwen2" else []), check=True)
            base = transformers.AutoModelForCausalLM.from_pretrained(md, torch_dtype=torch.float32)
            torch.manual_seed(1)
            cfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                  "down_proj"], task_type="CAUSAL_LM")
            pm = peft.get_peft_model(base, cfg)
            pm.save_pretrained(ad)
            ids = torch.tensor([[1, 5, 9, 42, 7, 3, 250, 11]])
            with torch.no_grad():
                want = pm(ids).logits
            merged = pm.merge_and_unload()
            ref = {k: v.detach().numpy() for k, v in merged.state_dict().items()}
            for dt in ("f32", "bf16"):
                od = os.path.join(d, "%s-merged-%s" % (arch, dt))
                subprocess.run([os.path.join(BIN, "pq-merge"), "--model", md, "--adapter", ad, "--out", od,
                                "--dtype", dt], check=True)
                h, data = read_raw(os.path.join(od, "model.safetensors"))
                names = sorted(k for k in h if k != "__metadata__")
                check("%s %s: tensor names" % (arch, dt),
                      set(names) == set(k for k in ref if not (merged.config.tie_word_embeddings and k == "lm_head.weight")))
                worst = 0.0
                for k in names:
                    a, b = h[k]["data_offsets"]
                    check("%s %s: dtype of %s" % (arch, dt, k), h[k]["dtype"] == ("F32" if dt == "f32" else "BF16"))
                    if dt == "f32":
                        x = np.frombuffer(data[a:b], dtype=np.float32)
                        tol = 1e-5
                    else:
                        x = bf16_to_f32(np.frombuffer(data[a:b], dtype=np.uint16))
                        tol = 1e-2
                    r = ref[k].reshape(-1)
                    err = float(np.max(np.abs(x - r) / (np.abs(r) + 1e-2)))
                    worst = max(worst, err)
                    check("%s %s: %s differs from peft's merge (%.3g)" % (arch, dt, k, err), err < tol)
                print("%s %s: %d tensors, worst relative difference %.2e" % (arch, dt, len(names), worst))
                for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
                    check("%s %s: %s copied" % (arch, dt, f), os.path.exists(os.path.join(od, f)))
                c = json.load(open(os.path.join(od, "config.json")))
                check("%s %s: torch_dtype" % (arch, dt), c["torch_dtype"] == ("float32" if dt == "f32" else "bfloat16"))
                if dt == "f32":
                    m2 = transformers.AutoModelForCausalLM.from_pretrained(od, torch_dtype=torch.float32)
                    with torch.no_grad():
                        got = m2(ids).logits
                    err = float((got - want).abs().max())
                    print("%s: logits of the merged model vs peft's: max abs diff %.2e" % (arch, err))
                    check("%s: merged logits" % arch, err < 1e-4)
            # an existing output directory is refused, nothing overwritten
            r = subprocess.run([os.path.join(BIN, "pq-merge"), "--model", md, "--adapter", ad, "--out", od],
                               capture_output=True, text=True)
            check("%s: existing --out refused (exit %d)" % (arch, r.returncode),
                  r.returncode == 3 and "exists" in r.stderr)
    if failures:
        print("%d failures" % len(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
