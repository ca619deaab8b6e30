// backend_grad_cpu.c: binds the backward operations of ops_grad.h (pq_*) to
// the plain-C ones (pq_cpu_*); the CUDA build links its own instead.
#include "ops_grad.h"

void pq_rmsnorm_backward(float *dinp, const float *dout, const float *inp, const float *weight, const float *rstd,
                         int N, int C) {
    pq_cpu_rmsnorm_backward(dinp, dout, inp, weight, rstd, N, C);
}
void pq_linear_backward(float *dinp, const float *dout, const PqWeight *weight, int N, int C, int OC) {
    pq_cpu_linear_backward(dinp, dout, weight, N, C, OC);
}
void pq_linear_group_backward(float *dinp, const float *const *dout, const PqWeight *w, int n, int N, int C) {
    for (int t = 0; t < n; t++) pq_linear_backward(dinp, dout[t], &w[t], N, C, w[t].rows);
}
void pq_lora_backward(float *dinp, float *dA, float *dB, float *dxa, const float *dout, const float *inp,
                      const float *xa, const float *A, const float *B, float scale, int N, int C, int OC, int r) {
    pq_cpu_lora_backward(dinp, dA, dB, dxa, dout, inp, xa, A, B, scale, N, C, OC, r);
}
void pq_rope_backward(float *dx, const int32_t *pos, const float *inv_freq, int N, int NH, int HS) {
    pq_cpu_rope_backward(dx, pos, inv_freq, N, NH, HS);
}
void pq_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                           const float *v, const float *out, const float *lse, const int32_t *pos, int N, int NH,
                           int KVH, int HS, int window) {
    pq_cpu_attention_backward(dq, dk, dv, dout, q, k, v, out, lse, pos, N, NH, KVH, HS, window);
}
void pq_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, int N,
                        int H) {
    pq_cpu_swiglu_backward(dgate, dup, dout, gate, up, N, H);
}
void pq_logp_backward(float *dh, const float *dlogp, const float *h, const PqWeight *lm_head, const int32_t *targets,
                      const float *lse, int N, int C, int V) {
    pq_cpu_logp_backward(dh, dlogp, h, lm_head, targets, lse, N, C, V);
}
void pq_dropout_forward(float *out, const float *inp, float p, uint64_t seed, size_t n) {
    pq_cpu_dropout_forward(out, inp, p, seed, n);
}
void pq_lora_dx_dropout(float *dx, const float *dxa, const float *A, float p, uint64_t seed, int N, int C, int r) {
    pq_cpu_lora_dx_dropout(dx, dxa, A, p, seed, N, C, r);
}
void pq_attention2_forward(float *out, float *lse, const float *q, const float *k, const float *v, const int32_t *pos,
                           const int32_t *a0, const int32_t *a1, const int32_t *b0, int N, int NH, int KVH, int HS,
                           int window) {
    pq_cpu_attention2_forward(out, lse, q, k, v, pos, a0, a1, b0, N, NH, KVH, HS, window);
}
void pq_attention2_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                            const float *v, const float *out, const float *lse, const int32_t *pos, const int32_t *a0,
                            const int32_t *a1, const int32_t *b0, int N, int NH, int KVH, int HS, int window) {
    pq_cpu_attention2_backward(dq, dk, dv, dout, q, k, v, out, lse, pos, a0, a1, b0, N, NH, KVH, HS, window);
}
void pq_lora_xa_group(float *const *xa, const float *x, const float *const *A, const uint64_t *seed, float p, int n,
                      int N, int C, int r) {
    pq_cpu_lora_xa_group(xa, x, A, seed, p, n, N, C, r);
}
void pq_lora_dA_group(float *const *dA, const float *const *dxa, const float *x, const uint64_t *seed, float p, int n,
                      int N, int C, int r) {
    pq_cpu_lora_dA_group(dA, dxa, x, seed, p, n, N, C, r);
}
void pq_lora_dx_group(float *dx, const float *const *dxa, const float *const *A, const uint64_t *seed, float p, int n,
                      int N, int C, int r) {
    pq_cpu_lora_dx_group(dx, dxa, A, seed, p, n, N, C, r);
}
void pq_lora_up_forward(float *out, const float *xa, const float *B, float scale, int N, int OC, int r) {
    pq_cpu_lora_up_forward(out, xa, B, scale, N, OC, r);
}
void pq_lora_up_backward(float *dB, float *dxa, const float *dout, const float *xa, const float *B, float scale, int N,
                         int OC, int r) {
    pq_cpu_lora_up_backward(dB, dxa, dout, xa, B, scale, N, OC, r);
}
