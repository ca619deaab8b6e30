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
    float *logp;  // their log-probabilities under the model (log softmax of its logits at temperature 1,
                  // before any truncation or grammar: what pq-logp gives the same text), n of them
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
// strings, no constraints). eos: the end tokens (copied). Its step buffers
// take the process's activation storage (PQ_ACTIVATIONS, ops.h), chosen
// before this call.
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
    size_t kv_bytes;      // the KV cache's memory now (K and V of every layer: the pools, or the flat caches)
    int kv_blocks, kv_block_tokens; // paged: blocks in the pool and positions a block (else 0)
    int kv_blocks_peak;   // paged: most blocks that sequences held at once
} PqGenStats;
void pq_gen_stats(const PqGen *g, PqGenStats *st);

// ---- where a step's time goes (PQ_GEN_PROFILE=1) ----
// With PQ_GEN_PROFILE=1 in the environment when pq_gen_new runs, every step
// is cut into phases by timing marks (pq_dev_mark, ops.h) and each phase's
// time is summed over the generator's life, by kind of step: steps whose
// rows all decode, steps with prefill rows (prompts, chunks of prompts,
// preempted sequences recomputed; decode rows may ride along), and steps
// that ran no forward. A phase's ms is on the backend's timeline (CUDA:
// events, the time the device took from the mark before to the phase's
// mark, idle gaps while it waited for the host's launches included); its
// host_ms is the host's clock between the same two marks (where the host
// waits for the device, a download, the wait is in the phase that waits).
// A forward phase whose host_ms comes close to its ms (or passes it): the
// device waited for the host's launches.
// wall_ms: the host's clock from pq_gen_step's entry to its end; the phases
// sum to no more than it (wall_ms minus their sum is what no mark saw).
// Phases, in a step's order: sched (the host: admitting, the paged cache's
// blocks, the step's rows), upload (ids, positions, tables and the paged
// cache's copies on write), embed, then summed over the layers: qkv (the
// norm, the q/k/v products, q/k norms), attn (rope, KV append, attention),
// o (o product), mlp (the residual add with the norm after it, gate/up
// products, swiglu, down product, residual); head (the last rows' final norm and lm_head), graph
// (PQ_CUDA_GRAPH=1: a decode step's forward, embed to head, as one phase,
// whether its graph is replayed, captured, or run eagerly on its bucket's
// first sight; never marked inside: run without PQ_CUDA_GRAPH for the
// layers' phases), sample (the paged cache: grammars' masks, the
// device's sampler, downloads of ids and of prompts' logits; the flat cache:
// the logits' download), pick (the host: tokens picked on the host, stop
// strings, finished requests' callbacks). Profiling changes no result; it
// waits for the device once at the end of a step (where the step has not
// already waited for its ids) and costs the host a few microseconds a mark
// (4 a layer). pq_gen_free then writes "pq: PQ_GEN_PROFILE: " and
// pq_gen_profile_json's object as one line on stderr.
enum { PQ_GP_DECODE = 0, PQ_GP_PREFILL, PQ_GP_IDLE, PQ_GP_KINDS };
enum {
    PQ_GP_SCHED = 0, PQ_GP_UPLOAD, PQ_GP_EMBED, PQ_GP_QKV, PQ_GP_ATTN, PQ_GP_O, PQ_GP_MLP, PQ_GP_HEAD, PQ_GP_GRAPH,
    PQ_GP_SAMPLE, PQ_GP_PICK, PQ_GP_PHASES
};
typedef struct PqGenProfileKind {
    long long steps, rows;         // steps of the kind; rows they computed (before a CUDA graph's padding)
    double wall_ms;                // summed over those steps
    double ms[PQ_GP_PHASES];       // the backend's timeline
    double host_ms[PQ_GP_PHASES];  // the host's clock between the same marks
} PqGenProfileKind;
typedef struct PqGenProfile {
    PqGenProfileKind k[PQ_GP_KINDS];
} PqGenProfile;
// Fills p; returns 1, or 0 (p zeroed) when the generator is not profiled.
int pq_gen_profile(const PqGen *g, PqGenProfile *p);
const char *pq_gen_profile_kind(int k);   // "decode", "prefill", "idle"
const char *pq_gen_profile_phase(int ph); // "sched" .. "pick", as above
// One line of JSON (no newline; free it): {"decode": {"steps", "rows",
// "wall_ms", "ms": {phase: ms, ...}, "host_ms": {...}}, "prefill": ..., "idle": ...}.
char *pq_gen_profile_json(const PqGenProfile *p);

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
