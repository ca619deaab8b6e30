#!/usr/bin/env python3
# make_tiny_model.py: writes a tiny random-weight Hugging Face model directory
# in the real format (config.json, model.safetensors or shards + index,
# tokenizer.json, tokenizer_config.json with a chat template) for tests.
#   $PQ_PY tests/make_tiny_model.py --arch llama|llama3|mistral|qwen2|qwen3 --out DIR
#          [--dtype f32|bf16|f16] [--layers 2 --hidden 64 --heads 4 --kv-heads 2
#          --intermediate 128 --vocab N] [--head-dim N] [--tie] [--shards N] [--seed 0]
# qwen3 has a head_dim other than hidden / heads (24 by default) and q_norm,
# k_norm per head; its --window N turns on use_sliding_window from layer 1 on.
import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(HERE, "fixtures", "models")  # real tokenizer and template files, in the repo

ARCH = {
    "llama": ("LlamaForCausalLM", "llama"),
    "llama3": ("LlamaForCausalLM", "llama"),
    "mistral": ("MistralForCausalLM", "mistral"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
}


def to_bytes(a, dtype):
    """a float32 array -> (safetensors dtype name, raw little-endian bytes)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if dtype == "f32":
        return "F32", a.tobytes()
    if dtype == "f16":
        return "F16", a.astype(np.float16).tobytes()
    u = a.view(np.uint32)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
    return "BF16", r.tobytes()


def bf16_values(a):
    """a float32 array rounded to the nearest bf16 values (still float32)"""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)


def write_safetensors(path, tensors, dtype):
    """tensors: list of (name, float32 array); written in dtype (norms too, as HF does)."""
    header, blobs, off = {}, [], 0
    for name, a in sorted(tensors, key=lambda t: t[0]):
        st, b = to_bytes(a, dtype)
        header[name] = {"dtype": st, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)
    return off


def tokenizer_files(kind, out):
    """Writes tokenizer.json + returns (vocab size, tokenizer_config dict)."""
    templates = json.load(open(os.path.join(MODELS, "chat-templates.json")))
    if kind == "mistral":
        src = os.path.join(MODELS, "mistral-7b-instruct-v0.1")
        tj = json.load(open(os.path.join(src, "tokenizer.json")))
        cfg = json.load(open(os.path.join(src, "tokenizer_config.json")))
        with open(os.path.join(out, "tokenizer.json"), "w") as f:
            json.dump(tj, f, ensure_ascii=False)
        return 32000, cfg, 1, 2
    # byte-level (GPT-2's BPE) with ChatML's special tokens added, as Qwen2/SmolLM have
    tj = json.load(open(os.path.join(MODELS, "gpt2", "tokenizer.json")))
    n = len(tj["model"]["vocab"])
    added = tj.get("added_tokens", [])
    have = {t["content"]: t["id"] for t in added}
    for name in ("<|im_start|>", "<|im_end|>"):
        if name not in have:
            added.append({"id": max([t["id"] for t in added] + [n - 1]) + 1,
                          "content": name, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True})
    tj["added_tokens"] = added
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(tj, f, ensure_ascii=False)
    vocab = max(t["id"] for t in added) + 1
    ids = {t["content"]: t["id"] for t in added}
    t = templates["smollm2"]
    cfg = {"add_bos_token": False, "add_eos_token": False, "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
           "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>", "model_max_length": 8192,
           "tokenizer_class": "GPT2Tokenizer", "clean_up_tokenization_spaces": False,
           "chat_template": t["chat_template"],
           "added_tokens_decoder": {str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip",
                                                                      "single_word", "special")} for a in added}}
    return vocab, cfg, ids["<|im_start|>"], ids["<|im_end|>"]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arch", required=True, choices=sorted(ARCH))
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=0, help="default: the tokenizer's")
    ap.add_argument("--tokenizer", choices=["mistral", "bytelevel"], default=None,
                    help="default: bytelevel for qwen2 and qwen3, mistral otherwise")
    ap.add_argument("--tie", action="store_true", help="tie_word_embeddings")
    ap.add_argument("--window", type=int, default=0,
                    help="mistral sliding_window (default 16); qwen3: sliding_window on layers >= 1 (default none)")
    ap.add_argument("--head-dim", type=int, default=0, help="head_dim (default hidden / heads; qwen3: 24)")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--std", type=float, default=0.1, help="std of the random weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bf16-values", action="store_true",
                    help="weights rounded to bf16's values, whatever --dtype (f32 files of them compress 3x)")
    a = ap.parse_args()

    os.makedirs(a.out, exist_ok=True)
    kind = a.tokenizer or ("bytelevel" if a.arch in ("qwen2", "qwen3") else "mistral")
    tvocab, tcfg, bos, eos = tokenizer_files(kind, a.out)
    with open(os.path.join(a.out, "tokenizer_config.json"), "w") as f:
        json.dump(tcfg, f, ensure_ascii=False, indent=1)
    V = a.vocab or tvocab
    if V < tvocab:
        sys.exit("make_tiny_model: --vocab %d is smaller than the tokenizer's %d" % (V, tvocab))
    C, NH, KVH, H, L = a.hidden, a.heads, a.kv_heads, a.intermediate, a.layers
    HS = a.head_dim or (24 if a.arch == "qwen3" else C // NH)
    arch, mtype = ARCH[a.arch]
    cfg = {
        "architectures": [arch], "model_type": mtype, "hidden_act": "silu",
        "hidden_size": C, "intermediate_size": H, "num_attention_heads": NH, "num_hidden_layers": L,
        "num_key_value_heads": KVH, "vocab_size": V, "rms_norm_eps": 1e-5 if a.arch not in ("qwen2", "qwen3") else 1e-6,
        "max_position_embeddings": 8192, "rope_theta": 10000.0, "tie_word_embeddings": bool(a.tie),
        "bos_token_id": bos, "eos_token_id": eos, "initializer_range": 0.02, "use_cache": True,
        "torch_dtype": {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}[a.dtype],
        "transformers_version": "4.40.2",
    }
    if a.arch == "llama":
        cfg.update({"attention_bias": False, "rope_scaling": None})
    if a.arch == "llama3":
        cfg.update({"attention_bias": False, "rope_theta": 500000.0,
                    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 64}})
    if a.arch == "mistral":
        cfg["sliding_window"] = a.window or 16
    if a.arch == "qwen2":
        cfg.update({"use_sliding_window": False, "sliding_window": 4096, "max_window_layers": L,
                    "rope_theta": 1000000.0})
    if a.arch == "qwen3":
        cfg.update({"head_dim": HS, "attention_bias": False, "attention_dropout": 0.0, "rope_theta": 1000000.0,
                    "rope_scaling": None, "use_sliding_window": bool(a.window),
                    "sliding_window": a.window or None, "max_window_layers": 1 if a.window else L})
    elif HS != C // NH:
        cfg["head_dim"] = HS
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)

    rng = np.random.default_rng(a.seed)

    def w(*shape):
        return (rng.standard_normal(shape) * a.std).astype(np.float32)

    def norm(n=C):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    t = [("model.embed_tokens.weight", (rng.standard_normal((V, C)) * 0.5).astype(np.float32))]
    for l in range(L):
        p = "model.layers.%d." % l
        t += [(p + "input_layernorm.weight", norm()), (p + "post_attention_layernorm.weight", norm()),
              (p + "self_attn.q_proj.weight", w(NH * HS, C)), (p + "self_attn.k_proj.weight", w(KVH * HS, C)),
              (p + "self_attn.v_proj.weight", w(KVH * HS, C)), (p + "self_attn.o_proj.weight", w(C, NH * HS)),
              (p + "mlp.gate_proj.weight", w(H, C)), (p + "mlp.up_proj.weight", w(H, C)),
              (p + "mlp.down_proj.weight", w(C, H))]
        if a.arch == "qwen2":
            t += [(p + "self_attn.q_proj.bias", w(NH * HS)), (p + "self_attn.k_proj.bias", w(KVH * HS)),
                  (p + "self_attn.v_proj.bias", w(KVH * HS))]
        if a.arch == "qwen3":
            t += [(p + "self_attn.q_norm.weight", norm(HS)), (p + "self_attn.k_norm.weight", norm(HS))]
    t.append(("model.norm.weight", norm()))
    if not a.tie:
        t.append(("lm_head.weight", w(V, C)))

    if a.bf16_values:
        t = [(k, bf16_values(x)) for k, x in t]
    if a.shards <= 1:
        write_safetensors(os.path.join(a.out, "model.safetensors"), t, a.dtype)
    else:
        n = a.shards
        groups = [t[i::n] for i in range(n)]
        wmap, total = {}, 0
        for i, g in enumerate(groups):
            name = "model-%05d-of-%05d.safetensors" % (i + 1, n)
            total += write_safetensors(os.path.join(a.out, name), g, a.dtype)
            for k, _ in g:
                wmap[k] = name
        with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(wmap.items()))}, f, indent=1)


if __name__ == "__main__":
    main()
