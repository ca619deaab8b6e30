#!/usr/bin/env python3
# tests/make_tokenizers.py: builds small tokenizer.json files of each family
# pq supports, trained with Hugging Face `tokenizers` on the sample articles,
# for the tokenizer conformance tests (tests/golden/tokenizer/models/).
#   .venv/bin/python tests/make_tokenizers.py [OUTDIR]
# Each has a few hundred merges; together they exercise what the real
# Mistral and GPT-2 files do not: Llama-3's and Qwen2's split regexes,
# ignore_merges, NFC/NFKC, the legacy Prepend+Replace normalizer, Digits,
# Metaspace always/split, unknown tokens, lstrip/rstrip added tokens, every
# Split behaviour, single_word.
import json
import os
import sys

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(TOP, "data", "cnndm-sample.jsonl")

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def corpus():
    texts = []
    with open(DATA, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            texts.append(r["article"])
            texts.append(r["highlights"])
    # a little of everything the tests throw at them, so some of it merges
    texts += ["x = 12345 + 678; print(x)\n\tif (a != b) { return -1; }\n", "Ünïcödé café naïve résumé"] * 3
    return texts


def byte_level(split, nfc, specials, bos, n_merges):
    tk = Tokenizer(models.BPE())
    if nfc:
        tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=Regex(split), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tk.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + len(specials) + n_merges, special_tokens=specials,
                                  initial_alphabet=alphabet, show_progress=False)
    tk.train_from_iterator(corpus(), trainer)
    if bos:
        tk.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tk.token_to_id(bos))]),
        ])
    else:
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
    return json.loads(tk.to_str())


def spm(n_merges, limit_alphabet):
    """A SentencePiece-style BPE: Metaspace pieces, <0xNN> tokens after the specials."""
    specials = ["<unk>", "<s>", "</s>"]
    tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=len(specials) + limit_alphabet + n_merges, special_tokens=specials,
                                  limit_alphabet=limit_alphabet, show_progress=False)
    tk.train_from_iterator(corpus(), trainer)
    j = json.loads(tk.to_str())
    # renumber: specials, then the 256 byte tokens, then the trained pieces
    old = sorted(j["model"]["vocab"].items(), key=lambda kv: kv[1])
    vocab = {}
    for t, _ in old[:len(specials)]:
        vocab[t] = len(vocab)
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for t, _ in old[len(specials):]:
        vocab.setdefault(t, len(vocab))
    j["model"]["vocab"] = vocab
    for a in j["added_tokens"]:
        a["id"] = vocab[a["content"]]
    return j


def added(id_, content, special=True, lstrip=False, rstrip=False, normalized=False):
    return {"id": id_, "content": content, "single_word": False, "lstrip": lstrip, "rstrip": rstrip,
            "normalized": normalized, "special": special}


def extend_vocab(j, tokens):
    """Adds tokens (AddedToken dicts without id) after the vocabulary."""
    n = max(max(j["model"]["vocab"].values()), max((a["id"] for a in j["added_tokens"]), default=0)) + 1
    for t in tokens:
        j["added_tokens"].append(dict(t, id=n))
        n += 1


def build(outdir):
    made = {}
    # Llama 3: its split regex, ignore_merges, <|begin_of_text|> from the post-processor
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    j = byte_level(LLAMA3_SPLIT, False, specials, "<|begin_of_text|>", 400)
    j["model"]["ignore_merges"] = True
    made["bl-llama3"] = j
    # Qwen2: NFC, its split regex, ChatML specials, a non-special added token
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    j = byte_level(QWEN2_SPLIT, True, specials, None, 400)
    extend_vocab(j, [added(0, "<tool_call>", special=False)])
    made["bl-qwen2"] = j
    # Llama 2 (legacy): Prepend + Replace normalizer, no pre-tokenizer, byte fallback
    j = spm(300, 70)
    j["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
    j["pre_tokenizer"] = None
    j["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    j["post_processor"] = {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                    {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    extend_vocab(j, [added(0, "[INST]", special=False, normalized=True), added(0, "<<SYS>>", special=False)])
    made["spm-legacy"] = j
    # Metaspace (always, split) after Digits, NFKC, unknown tokens without
    # byte fallback or fusing, <s> $A </s>, lstrip/rstrip added tokens
    j = spm(250, 60)
    j["model"]["byte_fallback"] = False
    j["model"]["fuse_unk"] = False
    j["normalizer"] = {"type": "NFKC"}
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}]}
    j["decoder"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}
    j["post_processor"] = {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}},
                                      {"SpecialToken": {"id": "</s>", "type_id": 0}}],
                           "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]},
                                              "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}}
    extend_vocab(j, [added(0, "<mask>", lstrip=True, rstrip=True), added(0, "<sep>", rstrip=True),
                     added(0, "ﬁx", special=False, normalized=True)])
    made["spm-meta"] = j

    # every Split behaviour (and invert), contiguous Digits, ByteLevel with
    # add_prefix_space, a Regex Replace and NFD, a suffix-only template,
    # a single_word added token
    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.Sequence([normalizers.Replace(Regex(r"[ \t]+\n"), "\n"), normalizers.NFD()])
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern="-", behavior="removed"),
        pre_tokenizers.Split(pattern=Regex(r"[,;:]"), behavior="merged_with_previous"),
        pre_tokenizers.Split(pattern=Regex(r"[(\[]"), behavior="merged_with_next"),
        pre_tokenizers.Split(pattern=Regex(r"\p{N}"), behavior="contiguous"),
        pre_tokenizers.Split(pattern=Regex(r"\p{P}+"), behavior="merged_with_previous", invert=True),
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),
    ])
    tk.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + 1 + 300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=alphabet, show_progress=False)
    tk.train_from_iterator(corpus(), trainer)
    tk.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="$A <|endoftext|>", special_tokens=[("<|endoftext|>", 0)])])
    j = json.loads(tk.to_str())
    j["added_tokens"][0]["normalized"] = True
    extend_vocab(j, [dict(added(0, "hello", special=False), single_word=True)])
    made["bl-splits"] = j

    for name, j in made.items():
        text = json.dumps(j, ensure_ascii=False, indent=1)
        Tokenizer.from_str(text)  # tokenizers itself must accept it
        d = os.path.join(outdir, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return sorted(made)


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(TOP, "tests", "golden", "tokenizer", "models")
    for n in build(out):
        print(os.path.join(out, n, "tokenizer.json"))
