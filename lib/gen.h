// gen.h: text generation on a PqModel: a KV cache of S slots, batched
// decoding with continuous batching (a finished sequence's slot is refilled
// from the queue at once), sampling with temperature, top-k, top-p, min-p and a
// per-sample seeded RNG (results never depend on what else is in the
// batch), stops at end tokens, stop strings or a token budget, constrained
// decoding (constrain.h), LoRA (the model's PqLora) applied. The n samples
// of one request share its prompt: prefilled once, its KV copied. The
// paged cache (PQ_KV=paged) prefills a long prompt in chunks beside the
// decoding sequences (PQ_PREFILL_BUDGET) and shares the full blocks of a
// prompt's beginning with later prompts that begin alike (PQ_PREFIX_CACHE).
#ifndef PQ_GEN_H
#define PQ_GEN_H

#include <stdint.h>

#include "constrain.h"
#include "model.h"
#include "tokenizer.h"
#include "util.h"

typedef struct PqGenParams {
    float temperature; // 0: greedy (argmax)
    float top_p;       // 1: off
    int top_k;         // 0: off
    float min_p;       // 0: off
    int max_tokens;    // generated tokens at most (the context may end it sooner)
    const char *const *stop; // stop strings (not included in the text), n_stop of them
    int n_stop;
    int constrain;     // PQ_CONSTRAIN_* (needs the tokenizer)
    int constrain_n;   // questions of the quiz / answers grammar
} PqGenParams;
void pq_gen_params_init(PqGenParams *p); // temperature 1, top_p 1, top_k 0, min_p 0, max_tokens 256

enum { PQ_FINISH_EOS = 0, PQ_FINISH_STOP, PQ_FINISH_LENGTH };
typedef struct PqGenOut {
    int32_t *ids; // generated tokens (the end token not included)
    int n;
    char *text;   // decoded (NULL without a tokenizer); cut before a stop string
    int finish;   // PQ_FINISH_*
} PqGenOut;

// Called once per request with its n samples (freed after: steal what you
// keep by setting outs[k].ids / .text to NULL), or with error set (outs
// NULL) when the request could not run, or with cancelled set from
// pq_gen_free. Callbacks may submit; they must not step or free.
typedef void (*PqGenDone)(void *user, PqGenOut *outs, int n, const char *error, int cancelled);

typedef struct PqGen PqGen;

// slots: sequences decoded together. tok may be NULL (no text, no stop
// strings, no constraints). eos: the end tokens (copied). NULL when the
// process keeps bf16 activations (PQ_ACTIVATIONS, ops.h): generation runs in
// f32 only.
PqGen *pq_gen_new(const PqModel *m, const PqTokenizer *tok, int slots, const int32_t *eos, int n_eos);
void pq_gen_free(PqGen *g);
// Queues a request: n samples of a continuation of prompt (copied); sample k
// draws from an RNG seeded with seed + k. p is copied (stop strings too).
void pq_gen_submit(PqGen *g, const int32_t *prompt, int n_prompt, int n, uint64_t seed, const PqGenParams *p,
                   PqGenDone cb, void *user);
// Requests queued or running.
int pq_gen_pending(const PqGen *g);
// One forward over every running sequence (refilling free slots first);
// finished requests' callbacks are called. Returns the tokens generated.
int pq_gen_step(PqGen *g);
// Counters: prompt tokens prefilled, tokens generated, forward passes.
void pq_gen_counts(const PqGen *g, long long *prefilled, long long *generated, long long *steps);
typedef struct PqGenStats {
    long long prefilled, generated, steps; // as pq_gen_counts
    long long chunks; // paged: chunks short of a whole prompt (or preempted sequence) longer than the budget
    long long mixed;  // paged: steps that computed such a chunk beside decoding rows
    long long prefix_hit; // paged: prompt positions shared from earlier prompts' blocks (not in prefilled)
} PqGenStats;
void pq_gen_stats(const PqGen *g, PqGenStats *st);

// The model's end tokens: eos_token_id of config.json and
// generation_config.json (a number or a list) and tokenizer_config.json's
// eos_token (tok may be NULL). Returns how many (<= max) were written.
int pq_gen_eos_ids(const char *model_dir, const PqTokenizer *tok, int32_t *out, int max);

// The distribution sampling draws from: logits (V) -> probs (V) after
// temperature (> 0), top-k, top-p and min-p, in that order, the order of
// vLLM's sampler and transformers' warpers: top-k keeps ties with the k-th
// value, top-p keeps the fewest most likely tokens whose mass reaches p,
// min-p keeps the tokens whose probability is at least min_p times the
// largest (of what top-k and top-p left; the ratio does not depend on the
// renormalisation). llama.cpp's default chain truncates before the
// temperature (on the temperature-1 distribution): the same tokens when
// the temperature is 1, different top-p/min-p cuts otherwise.
// -INFINITY logits stay 0.
void pq_gen_probs(const float *logits, int V, float temperature, int top_k, float top_p, float min_p, float *probs);
// Samples a token: argmax when temperature is 0, else from pq_gen_probs
// with one uniform draw of rng. work: V floats of scratch.
int32_t pq_gen_sample(const float *logits, int V, const PqGenParams *p, PqRng *rng, float *work);

#endif
