// tok_internal.h: what the tokenizer's files share: tokenizer.c (loading
// tokenizer.json, the encode/decode pipeline), tok_bpe.c (the two BPE
// algorithms and the merge queue) and tok_text.c (UTF-8, normalizers,
// pre-tokenizers). Not a public interface: use tokenizer.h.
#ifndef PQ_TOK_INTERNAL_H
#define PQ_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"
#include "util.h"

// String -> id hash map (open addressing; keys are owned by the caller).
typedef struct TokStrSlot {
    const char *key; // NULL: empty
    uint32_t len;
    int32_t val;
} TokStrSlot;
typedef struct TokStrMap {
    TokStrSlot *slot;
    size_t n, cap; // cap is a power of two
} TokStrMap;
void tok_strmap_put(TokStrMap *m, const char *key, size_t len, int32_t val); // replaces
int32_t tok_strmap_get(const TokStrMap *m, const char *key, size_t len); // -1 if absent
void tok_strmap_free(TokStrMap *m);

// (left id, right id) -> (rank, merged id); one slot per cache line quarter.
typedef struct TokMergeSlot {
    uint64_t key; // UINT64_MAX: empty
    int32_t rank, new_id;
} TokMergeSlot;
typedef struct TokMergeMap {
    TokMergeSlot *slot;
    size_t n, cap;
} TokMergeMap;
void tok_mergemap_put(TokMergeMap *m, int32_t a, int32_t b, int32_t rank, int32_t new_id);
int tok_mergemap_get(const TokMergeMap *m, int32_t a, int32_t b, int32_t *rank, int32_t *new_id);
void tok_mergemap_free(TokMergeMap *m);

// An added token of tokenizer.json's "added_tokens".
typedef struct TokAdded {
    char *content;
    size_t len;
    char *norm; // content through the normalizer (the pattern of normalized tokens)
    size_t norm_len;
    int32_t id;
    int special, lstrip, rstrip, normalized, single_word;
} TokAdded;

// Normalizer steps (a "Sequence" is flattened).
enum { TOK_NORM_NFC, TOK_NORM_NFD, TOK_NORM_NFKC, TOK_NORM_NFKD, TOK_NORM_PREPEND, TOK_NORM_REPLACE };
typedef struct TokNormOp {
    int type;
    char *pat, *content; // Replace: literal pattern (when re is NULL) and replacement; Prepend: content
    size_t pat_len, content_len;
    pcre2_code *re; // Replace with a Regex pattern
} TokNormOp;

// Pre-tokenizer steps (a "Sequence" is flattened).
enum { TOK_PRE_METASPACE, TOK_PRE_BYTELEVEL, TOK_PRE_SPLIT, TOK_PRE_DIGITS };
enum { TOK_PREPEND_NEVER, TOK_PREPEND_FIRST, TOK_PREPEND_ALWAYS };
enum { TOK_SPLIT_REMOVED, TOK_SPLIT_ISOLATED, TOK_SPLIT_MERGED_PREV, TOK_SPLIT_MERGED_NEXT, TOK_SPLIT_CONTIGUOUS };
typedef struct TokPreOp {
    int type;
    char repl[8]; // Metaspace replacement character (UTF-8)
    size_t repl_len;
    int prepend_scheme, split;      // Metaspace
    int add_prefix_space;           // ByteLevel
    pcre2_code *re;                 // Split (Regex) and ByteLevel with use_regex
    char *lit;                      // Split (String)
    size_t lit_len;
    int behavior, invert;           // Split
    int individual_digits;          // Digits
} TokPreOp;

// Decoder steps (a "Sequence" is flattened).
enum { TOK_DEC_REPLACE, TOK_DEC_BYTEFALLBACK, TOK_DEC_FUSE, TOK_DEC_STRIP, TOK_DEC_BYTELEVEL, TOK_DEC_METASPACE };
typedef struct TokDecOp {
    int type;
    char *pat, *content; // Replace (literal pattern); Metaspace: pat = replacement
    size_t pat_len, content_len;
    uint32_t strip_char; // Strip
    int start, stop;     // Strip
    int prepend;         // Metaspace: prepend_scheme != never
} TokDecOp;

struct PqTokenizer {
    int byte_level; // 1: byte-level BPE (GPT-2 family), 0: SentencePiece-style BPE
    int32_t n_vocab;
    char **tok_str; // id -> token text (added tokens override the model's)
    uint32_t *tok_len;
    unsigned char *tok_special; // id is a special added token
    TokStrMap vocab;            // the model's vocabulary
    char **vocab_keys;          // its keys (owned)
    size_t n_vocab_keys;
    TokMergeMap merges;
    uint32_t byte_char[256]; // GPT-2's byte -> character map
    int32_t byte_id[256]; // byte-level: id of the byte's mapped character; else of <0xNN>; -1 absent
    int byte_fallback, fuse_unk, ignore_merges;
    int32_t unk_id; // -1 none
    TokAdded *added;
    int n_added;
    unsigned char added_first[256]; // some added content (raw) starts with this byte
    unsigned char addedn_first[256]; // some normalized pattern starts with this byte
    TokNormOp *norm;
    int n_norm;
    TokPreOp *pre;
    int n_pre;
    TokDecOp *dec;
    int n_dec, has_decoder;
    int32_t *post_pre, *post_post; // special ids before/after the sequence (add_special)
    int n_post_pre, n_post_post;
};

// UTF-8 and Unicode helpers (tok_text.c).
int tok_utf8_len(const char *s, size_t n, size_t i);     // length of the valid sequence at s[i], 0 if invalid
int tok_utf8_decode(const char *s, size_t n, size_t i, uint32_t *cp); // length of the char at i (valid input)
int tok_utf8_encode(uint32_t cp, char *out);               // 1..4 bytes
// Copies s to out replacing each maximal invalid subsequence by U+FFFD (as
// Rust's String::from_utf8_lossy); returns 1 if s was valid.
int tok_utf8_lossy(const char *s, size_t n, PqBuf *out);
int tok_is_white_space(uint32_t cp); // Unicode White_Space (Rust's char::is_whitespace)
void tok_bytes_to_unicode(uint32_t map[256]); // GPT-2's byte -> character map

// A list of text pieces: offsets into an arena, with the tokens already
// found (added tokens) and whether the piece starts the original text.
typedef struct TokPiece {
    size_t off, len;
    int at_start;
} TokPiece;
typedef struct TokPieces {
    TokPiece *p;
    int n, cap;
} TokPieces;
void tok_pieces_push(TokPieces *ps, size_t off, size_t len, int at_start);

// Applies the normalizer to s, writing the result to out (cleared first).
int tok_normalize(const PqTokenizer *tok, const char *s, size_t n, PqBuf *out, PqErr *e);
// Runs the pre-tokenizer on in (pieces of *arena), leaving the words in out
// (pieces of *arena, which may grow).
int tok_pre_tokenize(const PqTokenizer *tok, PqBuf *arena, const TokPieces *in, TokPieces *out, PqErr *e);
// Finds every match of re in s[0..n) (as the regex crates' find_iter):
// pairs of (start, end) appended to *m; returns the number or -1 on error.
int tok_regex_find_all(const pcre2_code *re, const char *s, size_t n, size_t **m, size_t *cap, PqErr *e);
pcre2_code *tok_regex_compile(const char *pattern, size_t len, PqErr *e);
extern const char tok_gpt2_split[]; // the ByteLevel pre-tokenizer's regex

// The BPE model (tok_bpe.c): appends the ids of one pre-tokenized word.
typedef struct TokScratch TokScratch;
TokScratch *tok_scratch_new(void);
void tok_scratch_free(TokScratch *s);
void tok_bpe_word(const PqTokenizer *tok, TokScratch *s, const char *w, size_t n, PqTokens *out);

#endif
