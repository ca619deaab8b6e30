// ops_gen.h: the operations generation adds to ops.h: a KV cache per layer
// and attention of new tokens against it. Same conventions as ops.h
// (token-major, device pointers); pq_cpu_* in ops_gen_cpu.c (the oracle, f32),
// pq_* bound by backend_gen_cpu.c or lib/cuda/ops_gen.cu. Activation storage
// (ops.h): q, k, v, out, inp, x, tmp, gate, up, mlp, ln and h are activations
// (bf16 elements with PQ_ACTIVATIONS=bf16); the flat caches kc, vc and the
// logits stay f32. The pq_* fusions round where their compositions round.
//
// The cache of one layer holds S slots (sequences) of T positions:
// kc, vc (S,T,KVH,HS). Token i of a step belongs to slot slot[i] at
// position pos[i]; a slot's positions 0..pos[i] are its sequence so far.
#ifndef PQ_OPS_GEN_H
#define PQ_OPS_GEN_H

#include <stdint.h>

#include "ops.h"

#define PQ_OPS_GEN_DECLARE(P)                                                                                      \
    /* k (N,KVH,HS), v (N,KVH,HS) -> kc, vc (S,T,KVH,HS) at [slot[i], pos[i]] */                                 \
    void P##kv_append(float *kc, float *vc, const float *k, const float *v, const int32_t *slot,                  \
                      const int32_t *pos, int N, int KVH, int HS, int T);                                          \
    /* q (N,NH,HS) against the cached keys of slot[i] at positions j <= pos[i] (and pos[i] - j <= window when    \
       window > 0; the same bound as pq_attention_forward), kc, vc (S,T,KVH,HS) -> out (N,NH,HS).               \
       The step's own keys must be appended first. */                                                            \
    void P##attention_kv_forward(float *out, const float *q, const float *kc, const float *vc, const int32_t *slot, \
                                 const int32_t *pos, int N, int NH, int KVH, int HS, int T, int window);        \
    /* pq_linear_forward for the few rows of a decoding step: inp (N,C), weight (OC,C), bias (OC) or NULL ->    \
       out (N,OC). The CPU reads bf16 weights in place when N is small (no tile conversion: batch-1 decoding  \
       is bound by reading the weights once), f32 through sgemv; otherwise, and on CUDA, pq_linear_forward. */ \
    void P##linear_rows_forward(float *out, const float *inp, const PqWeight *weight, const float *bias, int N,  \
                                int C, int OC);                                                                    \
    /* The fusions of a decoding step's products (issue 11: fewer launches a layer at batch 1). Each is, on the   \
       CPU, the composition it names, so a CPU build's numbers do not change; CUDA does each in one GEMV launch    \
       where the kernel serves the rows (PQ_DECODE_FUSE=1, gemv.cu), else composes it too.                       \
       Several products of one input (a layer's q, k, v): out[t] (N, w[t].rows) = inp (N,C) x w[t]^T + bias[t]    \
       (NULL: none), t < n <= PQ_GROUP_MAX: n calls of linear_rows_forward. */                                    \
    void P##linear_rows_group_forward(float *const *out, const float *inp, const PqWeight *w,                     \
                                      const float *const *bias, int n, int N, int C);                             \
    /* The MLP's first half, out (N,H) = silu(inp x wg^T + bg) * (inp x wu^T + bu): linear_rows_forward into      \
       gate (N,H) and up (N,H), then swiglu_forward (the fused kernel leaves gate and up alone) */                \
    void P##gate_up_forward(float *out, float *gate, float *up, const float *inp, const PqWeight *wg,              \
                            const PqWeight *wu, const float *bg, const float *bu, int N, int C, int H);            \
    /* A product into the residual stream, x (N,OC) += inp (N,C) x w^T + bias: linear_rows_forward into tmp       \
       (N,OC), then residual_forward (the fused kernel leaves tmp alone) */                                       \
    void P##linear_rows_add_forward(float *x, float *tmp, const float *inp, const PqWeight *w, const float *bias, \
                                    int N, int C, int OC);                                                         \
    /* The whole MLP into the residual stream, x (N,C) += (silu(ln wg^T + bg) * (ln wu^T + bu)) wd^T + bd:       \
       gate_up_forward into mlp (N,H) (gate, up (N,H) scratch), then linear_rows_add_forward (tmp (N,C)). CUDA,  \
       more rows than the GEMV serves, bf16 weights, no biases (PQ_DECODE_FUSE): gate and up written in bf16,    \
       SwiGLU from them in bf16, the down product added to x by its own epilogue (bf16 inference's rounding; the \
       f32 intermediates' traffic and three launches gone). */                                                   \
    void P##mlp_forward(float *x, float *tmp, float *gate, float *up, float *mlp, const float *ln,                \
                        const PqWeight *wg, const PqWeight *wu, const PqWeight *wd, const float *bg, const float *bu, \
                        const float *bd, int N, int C, int H);                                                     \
    /* The LM head: logits (N,V) = h (N,C) x lm_head^T. h is an activation (either storage); logits are f32 in   \
       both (sampling and the reported log-probabilities read them), as pq_logp_forward's: h widened, then       \
       linear_rows_forward. */                                                                                   \
    void P##logits_forward(float *logits, const float *h, const PqWeight *lm_head, int N, int C, int V);

// the products linear_rows_group_forward takes at most (q, k, v)
#define PQ_GROUP_MAX 3

PQ_OPS_GEN_DECLARE(pq_)
PQ_OPS_GEN_DECLARE(pq_cpu_)

// attention_kv_forward where token i's keys j < blen[i] are read from slot
// base[i] instead of slot[i]: the prompt of a request's n samples, prefilled
// once and shared, never copied (blen[i] <= 0: every key from slot[i]). The
// decoding tokens sharing one prompt are one product against its keys.
// CPU builds only: backend_gen_cpu.c binds pq_ to pq_cpu_; CUDA builds leave
// pq_attention_kv_shared_forward undefined (gen.c's weak reference is then
// NULL and it copies the prompt into every sample's slot).
void pq_cpu_attention_kv_shared_forward(float *out, const float *q, const float *kc, const float *vc,
                                        const int32_t *slot, const int32_t *pos, const int32_t *base,
                                        const int32_t *blen, int N, int NH, int KVH, int HS, int T, int window);
void pq_attention_kv_shared_forward(float *out, const float *q, const float *kc, const float *vc, const int32_t *slot,
                                    const int32_t *pos, const int32_t *base, const int32_t *blen, int N, int NH,
                                    int KVH, int HS, int T, int window);

#endif
