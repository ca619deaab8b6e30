// tokenizer.h: Hugging Face tokenizer.json BPE tokenizers, both families:
// SentencePiece-style (Metaspace / Prepend+Replace normalizer, byte
// fallback: Llama 2, Mistral) and byte-level (ByteLevel pre-tokenizer with
// its split regex run by PCRE2: GPT-2, Llama 3, Qwen2); added and special
// tokens. Ids identical to the `tokenizers` library.
#ifndef PQ_TOKENIZER_H
#define PQ_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

typedef struct PqTokens {
    int32_t *data;
    size_t len, cap;
} PqTokens;
void pq_tokens_push(PqTokens *t, int32_t id);
void pq_tokens_free(PqTokens *t);

typedef struct PqTokenizer PqTokenizer;

// Loads tokenizer.json; NULL with a message on anything unsupported. A
// loaded tokenizer is read-only: encode and decode may run from many
// threads at once.
PqTokenizer *pq_tokenizer_load(const char *tokenizer_json_path, PqErr *e);
// The same from a model directory: DIR/tokenizer.json.
PqTokenizer *pq_tokenizer_load_dir(const char *dir, PqErr *e);
void pq_tokenizer_free(PqTokenizer *tok);
// Appends the ids of text to out. Added/special tokens written in the text
// are matched as tokenizers does. add_special: also apply the
// post-processor's special tokens (e.g. BOS), as encode(add_special_tokens=True).
// Invalid UTF-8 is first read as Rust's String::from_utf8_lossy reads it
// (each maximal invalid subsequence becomes U+FFFD; tokenizers itself only
// takes valid strings).
int pq_tokenizer_encode(const PqTokenizer *tok, const char *text, size_t len, int add_special, PqTokens *out,
                        PqErr *e);
// Decodes ids to a malloc'd UTF-8 string (skip_special drops special tokens;
// ids out of range are left out), through the tokenizer's decoder chain.
char *pq_tokenizer_decode(const PqTokenizer *tok, const int32_t *ids, size_t n, int skip_special);
int pq_tokenizer_vocab_size(const PqTokenizer *tok);     // including added tokens
int32_t pq_tokenizer_token_id(const PqTokenizer *tok, const char *token); // -1 if absent
const char *pq_tokenizer_token(const PqTokenizer *tok, int32_t id);       // NULL if out of range

#endif
