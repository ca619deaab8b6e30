// ops_lora_bf16.c: LoRA's operations as bf16 activation storage runs them
// (ops_grad.h's rounding points: bf16 operands, f32 accumulation, as autocast),
// on f32 arrays holding the activations' values. The CPU backend's oracle;
// linked in CUDA builds too, where the parity tests compare against it.
#include <stdlib.h>

#include "ops_grad.h"
#include "st_write.h"
#include "util.h"

// dst (n) = src (n) rounded to bf16 (dst may be src)
static void round_to(float *dst, const float *src, size_t n) {
#pragma omp parallel for simd num_threads(pq_cpu_threads()) schedule(static)
    for (size_t i = 0; i < n; i++) dst[i] = pq_bf16_to_f32(pq_f32_to_bf16(src[i]));
}
static void round_bf16(float *p, size_t n) { round_to(p, p, n); }

// a rounded copy of p (n), to free
static float *rounded(const float *p, size_t n) {
    float *c = pq_xmalloc((n ? n : 1) * sizeof *c);
    round_to(c, p, n);
    return c;
}

// drop(x) of seed, rounded as dropout_forward stores it (to free); NULL when p is 0 (x itself)
static float *dropped(const float *x, float p, const uint64_t *seed, size_t n) {
    if (!(p > 0)) return NULL;
    float *d = pq_xmalloc((n ? n : 1) * sizeof *d);
    pq_cpu_dropout_forward(d, x, p, *seed, n);
    round_bf16(d, n);
    return d;
}

void pq_cpu_lora_xa_group_bf16(float *const *xa, const float *x, const float *const *A, const uint64_t *seed, float p,
                               int n, int N, int C, int r) {
    for (int t = 0; t < n; t++) {
        float *xd = dropped(x, p, seed + t, (size_t)N * C), *a = rounded(A[t], (size_t)r * C);
        pq_cpu_lora_xa_group(xa + t, xd ? xd : x, (const float *const *)&a, NULL, 0.0f, 1, N, C, r);
        round_bf16(xa[t], (size_t)N * r);
        free(xd);
        free(a);
    }
}

void pq_cpu_lora_dA_group_bf16(float *const *dA, const float *const *dxa, const float *x, const uint64_t *seed,
                               float p, int n, int N, int C, int r) {
    for (int t = 0; t < n; t++) {
        float *xd = dropped(x, p, seed + t, (size_t)N * C), *d = rounded(dxa[t], (size_t)N * r);
        pq_cpu_lora_dA_group(dA + t, (const float *const *)&d, xd ? xd : x, NULL, 0.0f, 1, N, C, r);
        free(xd);
        free(d);
    }
}

// the group's terms summed as pq_cpu_lora_dx_group sums them (f32), from rounded operands
void pq_cpu_lora_dx_group_bf16(float *dx, const float *const *dxa, const float *const *A, const uint64_t *seed,
                               float p, int n, int N, int C, int r) {
    float **d = pq_xmalloc((size_t)n * sizeof *d), **a = pq_xmalloc((size_t)n * sizeof *a);
    for (int t = 0; t < n; t++) d[t] = rounded(dxa[t], (size_t)N * r), a[t] = rounded(A[t], (size_t)r * C);
    pq_cpu_lora_dx_group(dx, (const float *const *)d, (const float *const *)a, seed, p, n, N, C, r);
    for (int t = 0; t < n; t++) free(d[t]), free(a[t]);
    free(d);
    free(a);
}

void pq_cpu_lora_dx_dropout_bf16(float *dx, const float *dxa, const float *A, float p, uint64_t seed, int N, int C,
                                 int r) {
    pq_cpu_lora_dx_group_bf16(dx, &dxa, &A, &seed, p, 1, N, C, r);
}

void pq_cpu_lora_up_forward_bf16(float *out, const float *xa, const float *B, float scale, int N, int OC, int r) {
    float *x = rounded(xa, (size_t)N * r), *b = rounded(B, (size_t)OC * r);
    pq_cpu_lora_up_forward(out, x, b, scale, N, OC, r);
    free(x);
    free(b);
}

void pq_cpu_lora_up_backward_bf16(float *dB, float *dxa, const float *dout, const float *xa, const float *B,
                                  float scale, int N, int OC, int r) {
    float *x = rounded(xa, (size_t)N * r), *b = rounded(B, (size_t)OC * r);
    pq_cpu_lora_up_backward(dB, dxa, dout, x, b, scale, N, OC, r);
    round_bf16(dxa, (size_t)N * r);
    free(x);
    free(b);
}

void pq_cpu_lora_forward_bf16(float *out, float *xa, const float *inp, const float *A, const float *B, float scale,
                              int N, int C, int OC, int r) {
    pq_cpu_lora_xa_group_bf16(&xa, inp, &A, NULL, 0.0f, 1, N, C, r);
    pq_cpu_lora_up_forward_bf16(out, xa, B, scale, N, OC, r);
}

// inp is the product's operand as it is (the caller's drop(x), stored bf16)
void pq_cpu_lora_backward_bf16(float *dinp, float *dA, float *dB, float *dxa, const float *dout, const float *inp,
                               const float *xa, const float *A, const float *B, float scale, int N, int C, int OC,
                               int r) {
    pq_cpu_lora_up_backward_bf16(dB, dxa, dout, xa, B, scale, N, OC, r);
    pq_cpu_lora_dA_group_bf16(&dA, (const float *const *)&dxa, inp, NULL, 0.0f, 1, N, C, r);
    if (dinp) pq_cpu_lora_dx_group_bf16(dinp, (const float *const *)&dxa, &A, NULL, 0.0f, 1, N, C, r);
}
