// backend_grad_cpu.c: binds the backward operations of ops_grad.h (pq_*) to
// the plain-C ones (pq_cpu_*); the CUDA build links its own instead. With
// bf16 activation storage each wrapper works on f32 copies (act_cpu.h): "+="
// outputs are widened, accumulated in f32 and rounded once; LoRA's products
// take bf16 operands (pq_cpu_lora_*_bf16, ops_grad.h).
#include "act_cpu.h"
#include "ops_grad.h"

void pq_rmsnorm_backward(float *dinp, const float *dout, const float *inp, const float *weight, const float *rstd,
                         int N, int C) {
    if (!pq_act_bf16()) {
        pq_cpu_rmsnorm_backward(dinp, dout, inp, weight, rstd, N, C);
        return;
    }
    size_t n = (size_t)N * C;
    float *d = pq_act_widen(0, dinp, n);
    pq_cpu_rmsnorm_backward(d, pq_act_widen(1, dout, n), pq_act_widen(2, inp, n), weight, rstd, N, C);
    pq_act_narrow(dinp, d, n);
}
void pq_linear_backward(float *dinp, const float *dout, const PqWeight *weight, int N, int C, int OC) {
    if (!pq_act_bf16()) {
        pq_cpu_linear_backward(dinp, dout, weight, N, C, OC);
        return;
    }
    size_t n = (size_t)N * C;
    float *d = pq_act_widen(0, dinp, n);
    pq_cpu_linear_backward(d, pq_act_widen(1, dout, (size_t)N * OC), weight, N, C, OC);
    pq_act_narrow(dinp, d, n);
}
void pq_linear_group_backward(float *dinp, const float *const *dout, const PqWeight *w, int n, int N, int C) {
    if (!pq_act_bf16()) {
        for (int t = 0; t < n; t++) pq_cpu_linear_backward(dinp, dout[t], &w[t], N, C, w[t].rows);
        return;
    }
    size_t nc = (size_t)N * C;
    float *d = pq_act_widen(0, dinp, nc); // the group's sum in f32, rounded once
    for (int t = 0; t < n; t++)
        pq_cpu_linear_backward(d, pq_act_widen(1, dout[t], (size_t)N * w[t].rows), &w[t], N, C, w[t].rows);
    pq_act_narrow(dinp, d, nc);
}
void pq_lora_backward(float *dinp, float *dA, float *dB, float *dxa, const float *dout, const float *inp,
                      const float *xa, const float *A, const float *B, float scale, int N, int C, int OC, int r) {
    if (!pq_act_bf16()) {
        pq_cpu_lora_backward(dinp, dA, dB, dxa, dout, inp, xa, A, B, scale, N, C, OC, r);
        return;
    }
    size_t n = (size_t)N * C;
    float *d = pq_act_widen(0, dinp, n); // NULL stays NULL
    pq_cpu_lora_backward_bf16(d, dA, dB, dxa, pq_act_widen(1, dout, (size_t)N * OC), pq_act_widen(2, inp, n), xa, A,
                              B, scale, N, C, OC, r);
    if (dinp) pq_act_narrow(dinp, d, n);
}
void pq_rope_backward(float *dx, const int32_t *pos, const float *inv_freq, int N, int NH, int HS) {
    pq_act_rope(pq_cpu_rope_backward, dx, pos, inv_freq, N, NH, HS);
}
void pq_rope_qk_backward(float *dq, float *dk, const int32_t *pos, const float *inv_freq, int N, int NH, int KVH,
                         int HS) {
    pq_act_rope(pq_cpu_rope_backward, dq, pos, inv_freq, N, NH, HS);
    pq_act_rope(pq_cpu_rope_backward, dk, pos, inv_freq, N, KVH, HS);
}
void pq_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                           const float *v, const float *out, const float *lse, const int32_t *pos, int N, int NH,
                           int KVH, int HS, int window) {
    if (!pq_act_bf16()) {
        pq_cpu_attention_backward(dq, dk, dv, dout, q, k, v, out, lse, pos, N, NH, KVH, HS, window);
        return;
    }
    size_t nq = (size_t)N * NH * HS, nk = (size_t)N * KVH * HS;
    float *gq = pq_act_scratch(0, nq), *gk = pq_act_scratch(1, nk), *gv = pq_act_scratch(2, nk);
    pq_cpu_attention_backward(gq, gk, gv, pq_act_widen(3, dout, nq), pq_act_widen(4, q, nq), pq_act_widen(5, k, nk),
                              pq_act_widen(6, v, nk), pq_act_widen(7, out, nq), lse, pos, N, NH, KVH, HS, window);
    pq_act_narrow(dq, gq, nq);
    pq_act_narrow(dk, gk, nk);
    pq_act_narrow(dv, gv, nk);
}
void pq_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, int N,
                        int H) {
    if (!pq_act_bf16()) {
        pq_cpu_swiglu_backward(dgate, dup, dout, gate, up, N, H);
        return;
    }
    size_t n = (size_t)N * H;
    float *gg = pq_act_scratch(0, n), *gu = pq_act_scratch(1, n);
    pq_cpu_swiglu_backward(gg, gu, pq_act_widen(2, dout, n), pq_act_widen(3, gate, n), pq_act_widen(4, up, n), N, H);
    pq_act_narrow(dgate, gg, n);
    pq_act_narrow(dup, gu, n);
}
void pq_logp_backward(float *dh, const float *dlogp, const float *h, const PqWeight *lm_head, const int32_t *targets,
                      const float *lse, int N, int C, int V) {
    if (!pq_act_bf16()) {
        pq_cpu_logp_backward(dh, dlogp, h, lm_head, targets, lse, N, C, V);
        return;
    }
    size_t n = (size_t)N * C;
    float *d = pq_act_widen(0, dh, n);
    pq_cpu_logp_backward(d, dlogp, pq_act_widen(1, h, n), lm_head, targets, lse, N, C, V);
    pq_act_narrow(dh, d, n);
}
void pq_dropout_forward(float *out, const float *inp, float p, uint64_t seed, size_t n) {
    if (!pq_act_bf16()) {
        pq_cpu_dropout_forward(out, inp, p, seed, n);
        return;
    }
    float *o = pq_act_scratch(0, n);
    pq_cpu_dropout_forward(o, pq_act_widen(1, inp, n), p, seed, n);
    pq_act_narrow(out, o, n);
}
void pq_lora_dx_dropout(float *dx, const float *dxa, const float *A, float p, uint64_t seed, int N, int C, int r) {
    if (!pq_act_bf16()) {
        pq_cpu_lora_dx_dropout(dx, dxa, A, p, seed, N, C, r);
        return;
    }
    size_t n = (size_t)N * C;
    float *d = pq_act_widen(0, dx, n);
    pq_cpu_lora_dx_dropout_bf16(d, dxa, A, p, seed, N, C, r);
    pq_act_narrow(dx, d, n);
}
void pq_attention2_forward(float *out, float *lse, const float *q, const float *k, const float *v, const int32_t *pos,
                           const int32_t *a0, const int32_t *a1, const int32_t *b0, int N, int NH, int KVH, int HS,
                           int window) {
    if (!pq_act_bf16()) {
        pq_cpu_attention2_forward(out, lse, q, k, v, pos, a0, a1, b0, N, NH, KVH, HS, window);
        return;
    }
    size_t nq = (size_t)N * NH * HS, nk = (size_t)N * KVH * HS;
    float *o = pq_act_scratch(0, nq);
    pq_cpu_attention2_forward(o, lse, pq_act_widen(1, q, nq), pq_act_widen(2, k, nk), pq_act_widen(3, v, nk), pos, a0,
                              a1, b0, N, NH, KVH, HS, window);
    pq_act_narrow(out, o, nq);
}
void pq_attention2_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                            const float *v, const float *out, const float *lse, const int32_t *pos, const int32_t *a0,
                            const int32_t *a1, const int32_t *b0, int N, int NH, int KVH, int HS, int window) {
    if (!pq_act_bf16()) {
        pq_cpu_attention2_backward(dq, dk, dv, dout, q, k, v, out, lse, pos, a0, a1, b0, N, NH, KVH, HS, window);
        return;
    }
    size_t nq = (size_t)N * NH * HS, nk = (size_t)N * KVH * HS;
    float *gq = pq_act_scratch(0, nq), *gk = pq_act_scratch(1, nk), *gv = pq_act_scratch(2, nk);
    pq_cpu_attention2_backward(gq, gk, gv, pq_act_widen(3, dout, nq), pq_act_widen(4, q, nq), pq_act_widen(5, k, nk),
                               pq_act_widen(6, v, nk), pq_act_widen(7, out, nq), lse, pos, a0, a1, b0, N, NH, KVH,
                               HS, window);
    pq_act_narrow(dq, gq, nq);
    pq_act_narrow(dk, gk, nk);
    pq_act_narrow(dv, gv, nk);
}
void pq_lora_xa_group(float *const *xa, const float *x, const float *const *A, const uint64_t *seed, float p, int n,
                      int N, int C, int r) {
    if (!pq_act_bf16()) {
        pq_cpu_lora_xa_group(xa, x, A, seed, p, n, N, C, r);
        return;
    }
    pq_cpu_lora_xa_group_bf16(xa, pq_act_widen(0, x, (size_t)N * C), A, seed, p, n, N, C, r);
}
void pq_lora_dA_group(float *const *dA, const float *const *dxa, const float *x, const uint64_t *seed, float p, int n,
                      int N, int C, int r) {
    if (!pq_act_bf16()) {
        pq_cpu_lora_dA_group(dA, dxa, x, seed, p, n, N, C, r);
        return;
    }
    pq_cpu_lora_dA_group_bf16(dA, dxa, pq_act_widen(0, x, (size_t)N * C), seed, p, n, N, C, r);
}
void pq_lora_dx_group(float *dx, const float *const *dxa, const float *const *A, const uint64_t *seed, float p, int n,
                      int N, int C, int r) {
    if (!pq_act_bf16()) {
        pq_cpu_lora_dx_group(dx, dxa, A, seed, p, n, N, C, r);
        return;
    }
    size_t nc = (size_t)N * C;
    float *d = pq_act_widen(0, dx, nc);
    pq_cpu_lora_dx_group_bf16(d, dxa, A, seed, p, n, N, C, r);
    pq_act_narrow(dx, d, nc);
}
void pq_lora_up_forward(float *out, const float *xa, const float *B, float scale, int N, int OC, int r) {
    if (!pq_act_bf16()) {
        pq_cpu_lora_up_forward(out, xa, B, scale, N, OC, r);
        return;
    }
    size_t n = (size_t)N * OC;
    float *o = pq_act_widen(0, out, n);
    pq_cpu_lora_up_forward_bf16(o, xa, B, scale, N, OC, r);
    pq_act_narrow(out, o, n);
}
void pq_lora_up_backward(float *dB, float *dxa, const float *dout, const float *xa, const float *B, float scale, int N,
                         int OC, int r) {
    if (!pq_act_bf16()) {
        pq_cpu_lora_up_backward(dB, dxa, dout, xa, B, scale, N, OC, r);
        return;
    }
    pq_cpu_lora_up_backward_bf16(dB, dxa, pq_act_widen(0, dout, (size_t)N * OC), xa, B, scale, N, OC, r);
}
