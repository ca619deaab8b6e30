// constrain.h: constrained decoding for local models, as llama.cpp's
// grammars do it: a small state machine over characters, and a table of
// every token's bytes, so that the tokens whose text would leave the
// grammar get their logits masked before sampling. Grammars: the judge's
// quiz (method.md §1), its answers (§3), and ASCII-only text. All are
// ASCII. The table also gives generation its tokens' text (stop strings).
#ifndef PQ_CONSTRAIN_H
#define PQ_CONSTRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"
#include "util.h"

// summary: one line of at least PQ_CONSTRAIN_MIN_WORDS ASCII words (printable,
// single spaces, at most PQ_CONSTRAIN_WORD_MAX characters each): what pq-pair
// keeps (method.md §4), so that even a random model's summaries are data.
enum { PQ_CONSTRAIN_NONE = 0, PQ_CONSTRAIN_QUIZ, PQ_CONSTRAIN_ANSWERS, PQ_CONSTRAIN_ASCII, PQ_CONSTRAIN_SUMMARY };
#define PQ_CONSTRAIN_MIN_WORDS 5
#define PQ_CONSTRAIN_WORD_MAX 16
// "none", "quiz", "answers", "ascii", "summary" -> the mode; -1 if unknown.
int pq_constrain_mode(const char *name);

// Longest question and option text the quiz grammar lets through (characters).
#define PQ_CONSTRAIN_QUESTION_MAX 200
#define PQ_CONSTRAIN_OPTION_MAX 120

// Where a reply is in its grammar. Plain value: copy it to try a token.
typedef struct PqCState {
    int8_t mode;
    int8_t nq;   // questions (quiz: 1..9; answers: 1..99)
    int8_t q;    // current question, 0-based (summary: words done)
    int8_t seg;  // segment of the question's layout
    int16_t off; // characters into the segment (summary: into the word)
} PqCState;

void pq_cstate_init(PqCState *s, int mode, int n_questions);
// Feeds n bytes; 0 if they all fit the grammar (s advanced), -1 if not (s
// is then undefined: feed a copy).
int pq_cstate_feed(PqCState *s, const char *bytes, size_t n);
// The reply may end here.
int pq_cstate_done(const PqCState *s);
// The fewest characters that reach an end from here.
int pq_cstate_min_left(const PqCState *s);

// Every token's bytes as generation appends them to the text: special
// tokens are empty; SentencePiece's U+2581 is a space, <0xNN> its byte;
// byte-level tokens map back through GPT-2's table. first[] is the text of
// a token that begins a reply (decoders that strip the leading space).
typedef struct PqTokText {
    int V;
    char **text, **first; // [V] each, NUL-terminated (first[i] may equal text[i] + 1)
    int *len, *first_len;
    unsigned char *special; // [V]
    unsigned char *all_text, *first_all_text; // [V] quiz text characters only (2: may start a text)
} PqTokText;
PqTokText *pq_tok_text_build(const PqTokenizer *tok, int V);
void pq_tok_text_free(PqTokText *t);

// Masks (sets to -INFINITY) the logits (V) of every token that does not fit
// the grammar from state s: its text must feed, and leave at most left - 1
// characters to write (left: tokens the reply may still take, so that the
// grammar always finishes in time when single-character tokens exist); the
// end tokens eos (n_eos) fit only where the reply may end. first: the
// token begins the reply. Returns how many tokens stay allowed.
int pq_constrain_mask(const PqTokText *tt, const PqCState *s, int first, int left, const int32_t *eos, int n_eos,
                      float *logits);
// The same choice as a bit set, for masks applied where the logits are (the
// device): bit v of bits (PQ_CONSTRAIN_WORDS(V) words, bit v & 31 of word
// v >> 5) set when token v is allowed, whatever its logit. Returns how many.
#define PQ_CONSTRAIN_WORDS(V) (((size_t)(V) + 31) / 32)
int pq_constrain_bits(const PqTokText *tt, const PqCState *s, int first, int left, const int32_t *eos, int n_eos,
                      uint32_t *bits);

#endif
