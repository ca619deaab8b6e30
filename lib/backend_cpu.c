// backend_cpu.c: binds the backend-neutral operations of ops.h to the CPU
// implementations (ops_cpu.c) and host memory. Left out of CUDA=1 builds,
// where lib/cuda/ provides the same symbols.
#include <stdlib.h>
#include <string.h>

#include "act_cpu.h"
#include "matmul_bf16.h"
#include "ops_grad.h"
#include "st_write.h"
#include "util.h"

// PQ_PRECISION=bf16's products belong to the CPU backend: this reference
// links lib/matmul_bf16.c in (ops_cpu.c's own reference is weak, so that
// CUDA builds, which leave it out, compute in f32).
int (*const pq_cpu_matmul_bf16_linked)(float *, const uint16_t *, const uint16_t *, int, int, int, int,
                                       int) = pq_cpu_matmul_bf16;

// ---- bf16 activations' f32 working copies (act_cpu.h) ----

static struct {
    float *p;
    size_t cap;
} act_scr[PQ_ACT_SLOTS];

static void act_scr_free(void) {
    for (int s = 0; s < PQ_ACT_SLOTS; s++) {
        free(act_scr[s].p);
        act_scr[s].p = NULL;
        act_scr[s].cap = 0;
    }
}

float *pq_act_scratch(int s, size_t n) {
    static int registered;
    if (!registered) {
        registered = 1;
        atexit(act_scr_free);
    }
    if (n == 0) n = 1;
    if (n > act_scr[s].cap) {
        free(act_scr[s].p);
        act_scr[s].p = pq_xmalloc(n * sizeof(float));
        act_scr[s].cap = n;
    }
    return act_scr[s].p;
}

float *pq_act_widen(int s, const float *p, size_t n) {
    if (!p) return NULL;
    float *w = pq_act_scratch(s, n);
    const uint16_t *h = (const uint16_t *)p;
#pragma omp parallel for simd num_threads(pq_cpu_threads()) schedule(static)
    for (size_t i = 0; i < n; i++) w[i] = pq_bf16_to_f32(h[i]);
    return w;
}

void pq_act_narrow(float *dst, const float *src, size_t n) {
    uint16_t *h = (uint16_t *)dst;
#pragma omp parallel for simd num_threads(pq_cpu_threads()) schedule(static)
    for (size_t i = 0; i < n; i++) h[i] = pq_f32_to_bf16(src[i]);
}

void pq_ops_set_threads(int n) { pq_cpu_set_threads(n); }
int pq_ops_threads(void) { return pq_cpu_threads(); }

void *pq_dev_alloc(size_t bytes) { return pq_xcalloc(1, bytes ? bytes : 1); }
void pq_dev_free(void *p) { free(p); }
void pq_dev_upload(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
void pq_dev_download(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
void pq_dev_copy(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
PqWeight pq_dev_weight(PqWeight w) { return w; }
void pq_dev_weights(PqWeight *w, int n) { (void)w, (void)n; }
void pq_dev_weight_free(PqWeight *w) { (void)w; }

// ---- the operations: pq_cpu_* directly (f32 storage) or on f32 copies (bf16) ----

void pq_embedding_forward(float *out, const int32_t *ids, const PqWeight *wte, int N, int C) {
    if (!pq_act_bf16()) {
        pq_cpu_embedding_forward(out, ids, wte, N, C);
        return;
    }
    size_t n = (size_t)N * C;
    float *o = pq_act_scratch(0, n);
    pq_cpu_embedding_forward(o, ids, wte, N, C);
    pq_act_narrow(out, o, n);
}
void pq_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N, int C, float eps) {
    if (!pq_act_bf16()) {
        pq_cpu_rmsnorm_forward(out, rstd, inp, weight, N, C, eps);
        return;
    }
    size_t n = (size_t)N * C;
    float *o = pq_act_scratch(0, n);
    pq_cpu_rmsnorm_forward(o, rstd, pq_act_widen(1, inp, n), weight, N, C, eps);
    pq_act_narrow(out, o, n);
}
void pq_residual_rmsnorm_forward(float *out, float *rstd, float *x, const float *y, const float *weight, int N, int C,
                                 float eps) {
    if (!pq_act_bf16()) {
        pq_cpu_residual_rmsnorm_forward(out, rstd, x, y, weight, N, C, eps);
        return;
    }
    size_t n = (size_t)N * C;
    float *o = pq_act_scratch(0, n), *xw = pq_act_widen(1, x, n);
    pq_cpu_residual_rmsnorm_forward(o, rstd, xw, pq_act_widen(2, y, n), weight, N, C, eps);
    pq_act_narrow(x, xw, n);
    pq_act_narrow(out, o, n);
}
void pq_linear_forward(float *out, const float *inp, const PqWeight *weight, const float *bias, int N, int C, int OC) {
    if (!pq_act_bf16()) {
        pq_cpu_linear_forward(out, inp, weight, bias, N, C, OC);
        return;
    }
    size_t n = (size_t)N * OC;
    float *o = pq_act_scratch(0, n);
    pq_cpu_linear_forward(o, pq_act_widen(1, inp, (size_t)N * C), weight, bias, N, C, OC);
    pq_act_narrow(out, o, n);
}
void pq_linear_group_forward(float *const *out, const float *inp, const PqWeight *w, const float *const *bias, int n,
                             int N, int C) {
    if (!pq_act_bf16()) {
        for (int t = 0; t < n; t++) pq_cpu_linear_forward(out[t], inp, &w[t], bias[t], N, C, w[t].rows);
        return;
    }
    const float *iw = pq_act_widen(0, inp, (size_t)N * C); // once for the group
    for (int t = 0; t < n; t++) {
        size_t no = (size_t)N * w[t].rows;
        float *o = pq_act_scratch(1, no);
        pq_cpu_linear_forward(o, iw, &w[t], bias[t], N, C, w[t].rows);
        pq_act_narrow(out[t], o, no);
    }
}
void pq_lora_forward(float *out, float *xa, const float *inp, const float *A, const float *B, float scale, int N, int C,
                     int OC, int r) {
    if (!pq_act_bf16()) {
        pq_cpu_lora_forward(out, xa, inp, A, B, scale, N, C, OC, r);
        return;
    }
    size_t n = (size_t)N * OC;
    float *o = pq_act_widen(0, out, n);
    pq_cpu_lora_forward_bf16(o, xa, pq_act_widen(1, inp, (size_t)N * C), A, B, scale, N, C, OC, r);
    pq_act_narrow(out, o, n);
}
void pq_act_rope(PqRopeFn f, float *x, const int32_t *pos, const float *inv_freq, int N, int NH, int HS) {
    if (!pq_act_bf16()) {
        f(x, pos, inv_freq, N, NH, HS);
        return;
    }
    size_t n = (size_t)N * NH * HS;
    float *xw = pq_act_widen(0, x, n);
    f(xw, pos, inv_freq, N, NH, HS);
    pq_act_narrow(x, xw, n);
}
void pq_rope_forward(float *x, const int32_t *pos, const float *inv_freq, int N, int NH, int HS) {
    pq_act_rope(pq_cpu_rope_forward, x, pos, inv_freq, N, NH, HS);
}
void pq_rope_qk_forward(float *q, float *k, const int32_t *pos, const float *inv_freq, int N, int NH, int KVH,
                        int HS) {
    pq_act_rope(pq_cpu_rope_forward, q, pos, inv_freq, N, NH, HS);
    pq_act_rope(pq_cpu_rope_forward, k, pos, inv_freq, N, KVH, HS);
}
void pq_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, const int32_t *pos,
                          int N, int NH, int KVH, int HS, int window) {
    if (!pq_act_bf16()) {
        pq_cpu_attention_forward(out, lse, q, k, v, pos, N, NH, KVH, HS, window);
        return;
    }
    size_t nq = (size_t)N * NH * HS, nk = (size_t)N * KVH * HS;
    float *o = pq_act_scratch(0, nq);
    pq_cpu_attention_forward(o, lse, pq_act_widen(1, q, nq), pq_act_widen(2, k, nk), pq_act_widen(3, v, nk), pos, N,
                             NH, KVH, HS, window);
    pq_act_narrow(out, o, nq);
}
void pq_swiglu_forward(float *out, const float *gate, const float *up, int N, int H) {
    if (!pq_act_bf16()) {
        pq_cpu_swiglu_forward(out, gate, up, N, H);
        return;
    }
    size_t n = (size_t)N * H;
    float *o = pq_act_scratch(0, n);
    pq_cpu_swiglu_forward(o, pq_act_widen(1, gate, n), pq_act_widen(2, up, n), N, H);
    pq_act_narrow(out, o, n);
}
void pq_residual_forward(float *x, const float *y, size_t n) {
    if (!pq_act_bf16()) {
        pq_cpu_residual_forward(x, y, n);
        return;
    }
    float *xw = pq_act_widen(0, x, n);
    pq_cpu_residual_forward(xw, pq_act_widen(1, y, n), n);
    pq_act_narrow(x, xw, n);
}
void pq_logp_forward(float *logp, float *lse, const float *h, const PqWeight *lm_head, const int32_t *targets, int N,
                     int C, int V) {
    if (!pq_act_bf16()) {
        pq_cpu_logp_forward(logp, lse, h, lm_head, targets, N, C, V);
        return;
    }
    pq_cpu_logp_forward(logp, lse, pq_act_widen(0, h, (size_t)N * C), lm_head, targets, N, C, V);
}
