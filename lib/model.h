// model.h: a Hugging Face causal LM directory (config.json + safetensors) as
// a PqModel: Llama 2/3, Mistral, Qwen2, Qwen3; the forward pass built from ops.h,
// and LoRA adapters (PEFT format) applied inside its linear layers.
#ifndef PQ_MODEL_H
#define PQ_MODEL_H

#include <stdint.h>

#include "ops.h"
#include "safetensors.h"
#include "util.h"

enum { PQ_ARCH_LLAMA = 0, PQ_ARCH_MISTRAL, PQ_ARCH_QWEN2, PQ_ARCH_QWEN3 };

typedef struct PqConfig {
    int arch;
    int L, C, NH, KVH, HS, H, V; // layers, hidden, heads, kv heads, head size, MLP hidden, vocab
    int max_pos;                 // max_position_embeddings
    float eps;                   // rms_norm_eps
    float rope_theta;
    int rope_llama3;             // rope_scaling rope_type "llama3"
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_orig_max_pos;
    int window;                  // sliding window: keys j with i - j <= window (0 = none)
    int window_from;             // the first layer that slides (Qwen3's max_window_layers; 0 otherwise)
    int tie;                     // tie_word_embeddings
    int qkv_bias, o_bias;        // biases on q,k,v (Qwen2) / o (Llama, Qwen3 attention_bias)
    int qk_norm;                 // Qwen3: RMSNorm (weights of HS) over each head of q and of k, before RoPE
    PqDtype dtype;               // of the embedding as stored (set by pq_model_load)
} PqConfig;

// Parses config.json text; 0 or -1 with a message (unsupported architecture,
// missing or out-of-range field).
int pq_config_parse(const char *json, PqConfig *cfg, PqErr *e);
// The sliding window of layer l (0 = full attention), for the ops' window argument.
static inline int pq_layer_window(const PqConfig *c, int l) { return l >= c->window_from ? c->window : 0; }

// The seven linear layers of a block, in the order LoRA targets name them.
enum { PQ_Q = 0, PQ_K, PQ_V, PQ_O, PQ_GATE, PQ_UP, PQ_DOWN, PQ_NLIN };
extern const char *const pq_lin_names[PQ_NLIN];   // "q", "k", ... "down"
extern const char *const pq_lin_modules[PQ_NLIN]; // "self_attn.q_proj", ... "mlp.down_proj"
// (in, out) features of linear j of cfg: q (C, NH*HS), ..., down (H, C).
void pq_lin_shape(const PqConfig *cfg, int j, int *in, int *out);

typedef struct PqLayerW {
    const float *ln1, *ln2;  // (C) input_layernorm, post_attention_layernorm (f32 copies)
    PqWeight w[PQ_NLIN];     // (out, in) each
    const float *b[PQ_NLIN]; // biases (out) or NULL
    const float *q_norm, *k_norm; // (HS) per-head norms of q and k (cfg.qk_norm) or NULL
} PqLayerW;

// LoRA: for each layer and linear j, out = x W^T (+bias) + scale * (x A^T) B^T.
// A (r, in) and B (out, r) f32; A == NULL where linear j is not a target.
// All A and B live in one arena (params, n_params floats, device memory).
typedef struct PqLoraAB {
    float *A, *B;
} PqLoraAB;
typedef struct PqLora {
    int L, r;
    float alpha, scale; // scale = alpha / r
    unsigned targets;   // bit j set: linear j adapted
    PqLoraAB *ab;       // [L * PQ_NLIN], index l * PQ_NLIN + j
    float *params;
    size_t n_params;
} PqLora;

typedef struct PqModel {
    PqConfig cfg;
    char *dir;
    PqSafetensors *st; // the mapped files (weights point into them)
    PqWeight wte;      // (V,C) embed_tokens
    PqWeight lm_head;  // (V,C) (== wte when tied)
    const float *ln_f; // (C) final norm
    PqLayerW *layers;  // [L]
    float *inv_freq;   // (HS/2) RoPE frequencies, llama3 scaling applied
    float *small;      // arena of the f32 copies of norms and biases
    const PqLora *lora; // applied in the forward when set (not owned)
} PqModel;

// Loads dir/config.json and the weights (model.safetensors or sharded with
// model.safetensors.index.json). NULL with a clear message on any problem.
PqModel *pq_model_load(const char *dir, PqErr *e);
void pq_model_free(PqModel *m);

// Activations of one block for N tokens, all device memory. The forward
// writes every buffer; a trainer keeps them (or recomputes them) for the
// backward. Shapes: C = cfg.C, QD = NH*HS, KD = KVH*HS.
typedef struct PqLayerActs {
    int N;
    float *x_in;          // (N,C) block input (copy of the residual stream)
    float *ln1, *ln1_rstd; // (N,C), (N)
    float *q, *k, *v;     // (N,QD), (N,KD), (N,KD), q and k after RoPE
    float *q_raw, *k_raw; // (N,QD), (N,KD) q and k before their per-head norm (cfg.qk_norm only)
    float *q_rstd, *k_rstd; // (N,NH), (N,KVH) rstd of those norms (cfg.qk_norm only)
    float *att, *att_lse; // (N,QD) attention output before o_proj, (N,NH)
    float *x_mid;         // (N,C) residual after attention
    float *ln2, *ln2_rstd; // (N,C), (N)
    float *gate, *up;     // (N,H) pre-activation
    float *mlp;           // (N,H) silu(gate) * up
    float *lora_xa[PQ_NLIN]; // (N,r) x A^T per adapted linear (NULL otherwise)
    float *tmp;           // (N, max(C,QD,H)) scratch
    size_t bytes;         // what all of these take (pq_trainer_bytes's estimate is held to it)
} PqLayerActs;
PqLayerActs *pq_layer_acts_build(const PqConfig *cfg, const PqLora *lora, int N);
void pq_layer_acts_free(PqLayerActs *a);

// One block: x (N,C) in place (the residual stream), pos (N) as in ops.h.
// acts->N must be >= N, and acts built with the model's lora (m->lora) for
// the adapter to be applied.
void pq_model_layer_forward(const PqModel *m, int l, float *x, const int32_t *pos, int N, PqLayerActs *acts);

// The whole model on a packed batch: ids (N), pos (N), targets (N) (-1: no
// target) -> logp (N) log-prob of targets[i] given tokens up to i of its
// record (0 where no target). All pointers are host memory.
int pq_model_logp(const PqModel *m, const int32_t *ids, const int32_t *pos, const int32_t *targets, int N,
                  float *logp, PqErr *e);

// LoRA adapters.
// A zeroed adapter for m (A and B all 0) with rank r on the linears in
// targets (bitmask of 1 << PQ_Q ...).
PqLora *pq_lora_build(const PqConfig *cfg, int r, float alpha, unsigned targets);
void pq_lora_free(PqLora *a);
// Parses "q,k,v,o,gate,up,down" (or PEFT's "q_proj", ...) into a bitmask; -1 on an unknown name.
int pq_lora_parse_targets(const char *list, unsigned *targets, PqErr *e);
// Loads a PEFT adapter directory (adapter_config.json +
// adapter_model.safetensors) for model m.
PqLora *pq_lora_load(const char *dir, const PqModel *m, PqErr *e);

#endif
