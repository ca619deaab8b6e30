// backend_cpu.c: binds the backend-neutral operations of ops.h to the CPU
// implementations (ops_cpu.c) and host memory. Left out of CUDA=1 builds,
// where lib/cuda/ provides the same symbols.
#include <stdlib.h>
#include <string.h>

#include "matmul_bf16.h"
#include "ops.h"
#include "util.h"

// PQ_PRECISION=bf16's products belong to the CPU backend: this reference
// links lib/matmul_bf16.c in (ops_cpu.c's own reference is weak, so that
// CUDA builds, which leave it out, compute in f32).
int (*const pq_cpu_matmul_bf16_linked)(float *, const uint16_t *, const uint16_t *, int, int, int, int,
                                       int) = pq_cpu_matmul_bf16;

void pq_ops_set_threads(int n) { pq_cpu_set_threads(n); }
int pq_ops_threads(void) { return pq_cpu_threads(); }

void *pq_dev_alloc(size_t bytes) { return pq_xcalloc(1, bytes ? bytes : 1); }
void pq_dev_free(void *p) { free(p); }
void pq_dev_upload(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
void pq_dev_download(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
void pq_dev_copy(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
PqWeight pq_dev_weight(PqWeight w) { return w; }
void pq_dev_weights(PqWeight *w, int n) { (void)w, (void)n; }
void pq_linear_group_forward(float *const *out, const float *inp, const PqWeight *w, const float *const *bias, int n,
                             int N, int C) {
    for (int t = 0; t < n; t++) pq_linear_forward(out[t], inp, &w[t], bias[t], N, C, w[t].rows);
}
void pq_dev_weight_free(PqWeight *w) { (void)w; }

void pq_embedding_forward(float *out, const int32_t *ids, const PqWeight *wte, int N, int C) {
    pq_cpu_embedding_forward(out, ids, wte, N, C);
}
void pq_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N, int C, float eps) {
    pq_cpu_rmsnorm_forward(out, rstd, inp, weight, N, C, eps);
}
void pq_residual_rmsnorm_forward(float *out, float *rstd, float *x, const float *y, const float *weight, int N, int C,
                                 float eps) {
    pq_cpu_residual_rmsnorm_forward(out, rstd, x, y, weight, N, C, eps);
}
void pq_linear_forward(float *out, const float *inp, const PqWeight *weight, const float *bias, int N, int C, int OC) {
    pq_cpu_linear_forward(out, inp, weight, bias, N, C, OC);
}
void pq_lora_forward(float *out, float *xa, const float *inp, const float *A, const float *B, float scale, int N, int C,
                     int OC, int r) {
    pq_cpu_lora_forward(out, xa, inp, A, B, scale, N, C, OC, r);
}
void pq_rope_forward(float *x, const int32_t *pos, const float *inv_freq, int N, int NH, int HS) {
    pq_cpu_rope_forward(x, pos, inv_freq, N, NH, HS);
}
void pq_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, const int32_t *pos,
                          int N, int NH, int KVH, int HS, int window) {
    pq_cpu_attention_forward(out, lse, q, k, v, pos, N, NH, KVH, HS, window);
}
void pq_swiglu_forward(float *out, const float *gate, const float *up, int N, int H) {
    pq_cpu_swiglu_forward(out, gate, up, N, H);
}
void pq_residual_forward(float *x, const float *y, size_t n) { pq_cpu_residual_forward(x, y, n); }
void pq_logp_forward(float *logp, float *lse, const float *h, const PqWeight *lm_head, const int32_t *targets, int N,
                     int C, int V) {
    pq_cpu_logp_forward(logp, lse, h, lm_head, targets, N, C, V);
}
