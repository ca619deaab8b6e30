// ops_grad.h: the backward twins of the forward operations of ops.h, for
// training LoRA adapters through a frozen base model. Same conventions as
// ops.h (N tokens of a packed batch, pos (N) restarts at each record, f32
// activations, PqWeight frozen weights). Gradients named d<x>; "+=" means the
// op accumulates into its output, "=" that it overwrites it.
#ifndef PQ_OPS_GRAD_H
#define PQ_OPS_GRAD_H

#include "ops.h"

// The most adapters one lora_*_group call takes (q, k, v share an input; gate, up another).
#define PQ_LORA_GROUP 4

#define PQ_OPS_GRAD_DECLARE(P)                                                                                 \
    /* dout (N,C), inp (N,C), weight (C), rstd (N) -> dinp (N,C) += (the weight is frozen) */                  \
    void P##rmsnorm_backward(float *dinp, const float *dout, const float *inp, const float *weight,            \
                             const float *rstd, int N, int C);                                                 \
    /* dout (N,OC), weight (OC,C) -> dinp (N,C) += dout weight (the weight and bias are frozen) */             \
    void P##linear_backward(float *dinp, const float *dout, const PqWeight *weight, int N, int C, int OC);     \
    /* linear_group_forward's backward: dout[t] (N,OC_t) -> dinp (N,C) += sum_t dout[t] w[t] */               \
    void P##linear_group_backward(float *dinp, const float *const *dout, const PqWeight *w, int n, int N,     \
                                  int C);                                                                      \
    /* LoRA: dout (N,OC), inp (N,C), xa (N,r) = inp A^T, A (r,C), B (OC,r) ->                                  \
       dA (r,C) +=, dB (OC,r) +=, dinp (N,C) += (skipped when NULL); dxa (N,r) scratch */                      \
    void P##lora_backward(float *dinp, float *dA, float *dB, float *dxa, const float *dout, const float *inp,  \
                          const float *xa, const float *A, const float *B, float scale, int N, int C, int OC,  \
                          int r);                                                                              \
    /* in place: dx (N,NH,HS), the gradient w.r.t. rope_forward's output, becomes that w.r.t. its input */     \
    void P##rope_backward(float *dx, const int32_t *pos, const float *inv_freq, int N, int NH, int HS);        \
    /* rope_qk_forward's backward: dq (N,NH,HS) and dk (N,KVH,HS) in place, each as rope_backward */          \
    void P##rope_qk_backward(float *dq, float *dk, const int32_t *pos, const float *inv_freq, int N, int NH,    \
                             int KVH, int HS);                                                                 \
    /* dout (N,NH,HS), q (N,NH,HS), k, v (N,KVH,HS), out (N,NH,HS), lse (N,NH) of attention_forward ->         \
       dq (N,NH,HS) =, dk (N,KVH,HS) =, dv (N,KVH,HS) = */                                                     \
    void P##attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,             \
                               const float *k, const float *v, const float *out, const float *lse,             \
                               const int32_t *pos, int N, int NH, int KVH, int HS, int window);                \
    /* dout (N,H), gate (N,H), up (N,H) -> dgate (N,H) =, dup (N,H) = */                                       \
    void P##swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up,  \
                            int N, int H);                                                                     \
    /* dlogp (N), h (N,C), lm_head (V,C), targets (N) (-1: none), lse (N) of logp_forward -> dh (N,C) +=.      \
       Rows without a target or with dlogp 0 are skipped; a chunk of vocab rows at a time. */                  \
    void P##logp_backward(float *dh, const float *dlogp, const float *h, const PqWeight *lm_head,              \
                          const int32_t *targets, const float *lse, int N, int C, int V);                      \
    /* LoRA dropout as PEFT's nn.Dropout on the adapter's input: out (N,C) = inp * mask / (1 - p), the mask    \
       drawn from a counter-based generator keyed by seed, so a recomputation draws the same mask */          \
    void P##dropout_forward(float *out, const float *inp, float p, uint64_t seed, size_t n);                  \
    /* LoRA's input gradient through its dropout, in one pass: dx (N,C) += drop(dxa A), dxa (N,r), A (r,C),    \
       with dropout_forward's mask of seed over the N C elements (p 0: no mask). lora_backward with dinp      \
       NULL, then this, is dropout_forward(x) -> lora_backward(dinp = tmp) -> dx += dropout_forward(tmp). */  \
    void P##lora_dx_dropout(float *dx, const float *dxa, const float *A, float p, uint64_t seed, int N, int C,   \
                            int r);                                                                            \
    /* LoRA on a group of n (1..PQ_LORA_GROUP) adapters sharing one input x (N,C), adapter t with A[t] (r,C),    \
       its dropout mask dropout_forward's of seed[t] over the N C elements (p 0: no mask, seed unused), each     \
       reading x (or writing dx) once for the group. xa[t] (N,r) = drop_t(x) A[t]^T */                        \
    void P##lora_xa_group(float *const *xa, const float *x, const float *const *A, const uint64_t *seed,      \
                          float p, int n, int N, int C, int r);                                               \
    /* dA[t] (r,C) += dxa[t]^T drop_t(x), dxa[t] (N,r); the sum over the rows in a fixed order */             \
    void P##lora_dA_group(float *const *dA, const float *const *dxa, const float *x, const uint64_t *seed,     \
                          float p, int n, int N, int C, int r);                                               \
    /* dx (N,C) += sum_t drop_t(dxa[t] A[t]) */                                                                \
    void P##lora_dx_group(float *dx, const float *const *dxa, const float *const *A, const uint64_t *seed,    \
                          float p, int n, int N, int C, int r);                                               \
    /* LoRA's B side: xa (N,r), B (OC,r) -> out (N,OC) += scale xa B^T */                                      \
    void P##lora_up_forward(float *out, const float *xa, const float *B, float scale, int N, int OC, int r);  \
    /* its backward: dout (N,OC) -> dB (OC,r) += scale dout^T xa; dxa (N,r) = scale dout B */                  \
    void P##lora_up_backward(float *dB, float *dxa, const float *dout, const float *xa, const float *B,       \
                             float scale, int N, int OC, int r);

PQ_OPS_GRAD_DECLARE(pq_)
PQ_OPS_GRAD_DECLARE(pq_cpu_)

// ---- LoRA with bf16 activation storage (PQ_ACTIVATIONS=bf16, ops.h) ----
// As PyTorch autocast runs peft's LoRA: A and B stay f32 master weights (and
// xa, dxa, dA, dB f32 buffers), but each product takes bf16 operands and
// accumulates in f32. With rb() rounding to bf16 (nearest even) and drop(x)
// the dropped input as dropout_forward stores it (x * mask / (1 - p) rounded;
// x itself when p is 0):
//   xa  = rb(drop(x) rb(A)^T)             lora_forward, lora_xa_group
//   out += scale rb(xa) rb(B)^T           lora_forward, lora_up_forward
//   dB  += scale dout^T rb(xa)            lora_backward, lora_up_backward (f32)
//   dxa = rb(scale dout rb(B))            lora_backward, lora_up_backward
//   dA  += rb(dxa)^T drop(x)              lora_backward, lora_dA_group (f32)
//   dx  += mask (rb(dxa) rb(A))           lora_backward, lora_dx_dropout, lora_dx_group
// (mask: drop's zeros and 1 / (1 - p), in f32). out and dx are activations:
// the f32 sum (with all of a group's terms) is rounded once into them; xa and
// dxa are kept bf16-exact in their f32 buffers. Where autocast rounds more, pq
// keeps f32 (no product's operand differs): autocast rounds xa rb(B)^T, its
// scaling and out's sum separately (dxa rb(A) and dx's sum likewise), scales
// dout in bf16 before dxa's product (the same for a power-of-two scale) and
// rounds dA and dB to bf16 before adding them to the f32 .grad.
// These are the CPU's: the same operations on f32 arrays holding the
// activations' (bf16) values, activation outputs left in f32 for the caller to
// round once. The CPU backend's pq_lora_* run them in bf16 storage; the CUDA
// backend's bf16 products follow them (tests/gpu/parity-act.c).
void pq_cpu_lora_forward_bf16(float *out, float *xa, const float *inp, const float *A, const float *B, float scale,
                              int N, int C, int OC, int r);
void pq_cpu_lora_backward_bf16(float *dinp, float *dA, float *dB, float *dxa, const float *dout, const float *inp,
                               const float *xa, const float *A, const float *B, float scale, int N, int C, int OC,
                               int r);
void pq_cpu_lora_dx_dropout_bf16(float *dx, const float *dxa, const float *A, float p, uint64_t seed, int N, int C,
                                 int r);
void pq_cpu_lora_xa_group_bf16(float *const *xa, const float *x, const float *const *A, const uint64_t *seed, float p,
                               int n, int N, int C, int r);
void pq_cpu_lora_dA_group_bf16(float *const *dA, const float *const *dxa, const float *x, const uint64_t *seed,
                               float p, int n, int N, int C, int r);
void pq_cpu_lora_dx_group_bf16(float *dx, const float *const *dxa, const float *const *A, const uint64_t *seed,
                               float p, int n, int N, int C, int r);
void pq_cpu_lora_up_forward_bf16(float *out, const float *xa, const float *B, float scale, int N, int OC, int r);
void pq_cpu_lora_up_backward_bf16(float *dB, float *dxa, const float *dout, const float *xa, const float *B,
                                  float scale, int N, int OC, int r);

// Optional operations: a backend may lack them (weak symbols, NULL then);
// the trainer checks before using them.
#define PQ_OPS_GRAD_OPT_DECLARE(P, ATTR)                                                                       \
    /* attention over two key ranges, for a prompt shared by a pair's two responses: token i sees the keys     \
       [a0[i], a1[i]) (empty when equal) and [b0[i], i], a key j only when pos[i] - pos[j] <= window          \
       (window > 0). With a0 = a1 and b0[i] = i - pos[i] it is attention_forward. q (N,NH,HS),                \
       k, v (N,KVH,HS) -> out (N,NH,HS), lse (N,NH) */                                                        \
    void P##attention2_forward(float *out, float *lse, const float *q, const float *k, const float *v,         \
                               const int32_t *pos, const int32_t *a0, const int32_t *a1, const int32_t *b0,   \
                               int N, int NH, int KVH, int HS, int window) ATTR;                                      \
    /* its backward: dout (N,NH,HS) and the forward's tensors -> dq (N,NH,HS) =, dk, dv (N,KVH,HS) = */       \
    void P##attention2_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,            \
                                const float *k, const float *v, const float *out, const float *lse,            \
                                const int32_t *pos, const int32_t *a0, const int32_t *a1, const int32_t *b0,  \
                                int N, int NH, int KVH, int HS, int window) ATTR;

PQ_OPS_GRAD_OPT_DECLARE(pq_, __attribute__((weak)))
PQ_OPS_GRAD_OPT_DECLARE(pq_cpu_, )

#endif
