// ops_gen.cu: the CUDA versions of ops_gen.h (KV cache append, attention of
// a step's tokens against the cache), checked against ops_gen_cpu.c.
#include <math.h>
#include <string.h>

#include "common.cuh"

extern "C" {
#include "ops_gen.h"
#include "tuning.h"
}

// k (N,KVH,HS), v (N,KVH,HS) -> kc, vc (S,T,KVH,HS) at [slot[i], pos[i]]
__global__ void kv_append_kernel(float *kc, float *vc, const float *k, const float *v, const int32_t *slot,
                                 const int32_t *pos, int N, int kd, int T) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * kd) return;
    int i = (int)(idx / kd), e = (int)(idx % kd);
    size_t at = ((size_t)slot[i] * T + pos[i]) * kd + e;
    kc[at] = k[idx];
    vc[at] = v[idx];
}

extern "C" void pq_kv_append(float *kc, float *vc, const float *k, const float *v, const int32_t *slot,
                             const int32_t *pos, int N, int KVH, int HS, int T) {
    if (N <= 0) return;
    size_t n = (size_t)N * KVH * HS;
    if (pq_cuda_act_bf16()) { // (the flat cache is f32: k and v widened)
        PqActFallback fb;
        pq_kv_append(kc, vc, fb.in(k, n), fb.in(v, n), slot, pos, N, KVH, HS, T);
        return;
    }
    kv_append_kernel<<<pq_blocks(n, PQ_EW_THREADS), PQ_EW_THREADS, 0, pq_cuda_stream>>>(kc, vc, k, v, slot, pos, N,
                                                                                        KVH * HS, T);
    CU_LAUNCHED();
}

#define KV_THREADS 128

// One block per (token, head): keys in tiles of KV_THREADS, one score per
// thread, online softmax; thread d accumulates output channels d, d+128, ...
__global__ void __launch_bounds__(KV_THREADS) attn_kv_kernel(float *out, const float *q, const float *kc,
                                                             const float *vc, const int32_t *slot, const int32_t *pos,
                                                             int NH, int KVH, int HS, int T, int window, float scale) {
    extern __shared__ float sm[]; // q (HS), p (KV_THREADS), red (KV_THREADS)
    float *qs = sm, *p = sm + HS, *red = p + KV_THREADS;
    int i = blockIdx.x, h = blockIdx.y, t = threadIdx.x, kh = h / (NH / KVH);
    size_t ks = (size_t)KVH * HS;
    const float *K = kc + (size_t)slot[i] * T * ks + (size_t)kh * HS;
    const float *V = vc + (size_t)slot[i] * T * ks + (size_t)kh * HS;
    for (int d = t; d < HS; d += KV_THREADS) qs[d] = q[((size_t)i * NH + h) * HS + d];
    int hi = pos[i], lo = 0;
    if (window > 0 && hi - window > lo) lo = hi - window;
    float m = -INFINITY, l = 0;
    float acc[4] = {0, 0, 0, 0}; // HS <= 4 * KV_THREADS
    __syncthreads();
    for (int j0 = lo; j0 <= hi; j0 += KV_THREADS) {
        int j = j0 + t;
        float s = -INFINITY;
        if (j <= hi) {
            const float *kr = K + (size_t)j * ks;
            float dot = 0;
            for (int d = 0; d < HS; d++) dot += qs[d] * kr[d];
            s = dot * scale;
        }
        red[t] = s;
        __syncthreads();
        for (int w = KV_THREADS / 2; w > 0; w >>= 1) {
            if (t < w) red[t] = fmaxf(red[t], red[t + w]);
            __syncthreads();
        }
        float mn = fmaxf(m, red[0]);
        __syncthreads();
        float e = j <= hi ? expf(s - mn) : 0.0f;
        p[t] = e;
        red[t] = e;
        __syncthreads();
        for (int w = KV_THREADS / 2; w > 0; w >>= 1) {
            if (t < w) red[t] += red[t + w];
            __syncthreads();
        }
        float corr = expf(m - mn); // 0 on the first tile (m = -inf)
        l = l * corr + red[0];
        int nk = hi - j0 + 1 < KV_THREADS ? hi - j0 + 1 : KV_THREADS;
        for (int c = 0; c < 4; c++) {
            int d = t + c * KV_THREADS;
            if (d >= HS) break;
            float a = acc[c] * corr;
            for (int jj = 0; jj < nk; jj++) a += p[jj] * V[(size_t)(j0 + jj) * ks + d];
            acc[c] = a;
        }
        m = mn;
        __syncthreads();
    }
    for (int c = 0; c < 4; c++) {
        int d = t + c * KV_THREADS;
        if (d < HS) out[((size_t)i * NH + h) * HS + d] = acc[c] / l;
    }
}

extern "C" void pq_attention_kv_forward(float *out, const float *q, const float *kc, const float *vc,
                                        const int32_t *slot, const int32_t *pos, int N, int NH, int KVH, int HS, int T,
                                        int window) {
    if (N <= 0) return;
    if (pq_cuda_act_bf16()) {
        size_t n = (size_t)N * NH * HS;
        PqActFallback fb;
        pq_attention_kv_forward(fb.out(out, n), fb.in(q, n), kc, vc, slot, pos, N, NH, KVH, HS, T, window);
        return;
    }
    if (HS > 4 * KV_THREADS) pq_cuda_fail("pq_attention_kv_forward", "head size over 512", __FILE__, __LINE__);
    dim3 grid(N, NH);
    size_t smem = (size_t)(HS + 2 * KV_THREADS) * sizeof(float);
    attn_kv_kernel<<<grid, KV_THREADS, smem, pq_cuda_stream>>>(out, q, kc, vc, slot, pos, NH, KVH, HS, T, window,
                                                               1.0f / sqrtf((float)HS));
    CU_LAUNCHED();
}

// On the device pq_linear_forward serves any row count: PQ_GEMV_MAX_N rows with bf16/f16 weights through its GEMV
// kernel (gemv.cu), more through the tensor-core product.
extern "C" void pq_linear_rows_forward(float *out, const float *inp, const PqWeight *weight, const float *bias, int N,
                                       int C, int OC) {
    pq_linear_forward(out, inp, weight, bias, N, C, OC);
}

// ---- a decoding step's fusions (PQ_DECODE_FUSE: tuning.h) ----

static int fuse_state = -1;

extern "C" void pq_cuda_set_decode_fuse(int on) { fuse_state = on < 0 ? -1 : on != 0; }

static bool fuse_on(void) { return pq_env_switch(&fuse_state, "PQ_DECODE_FUSE", false); }

extern "C" void pq_linear_rows_group_forward(float *const *out, const float *inp, const PqWeight *w,
                                             const float *const *bias, int n, int N, int C) {
    if (N <= 0) return;
    if (fuse_on()) {
        if (!pq_cuda_gemv_group(out, inp, w, bias, n, N, C)) pq_linear_group_forward(out, inp, w, bias, n, N, C);
        return;
    }
    for (int t = 0; t < n; t++) pq_linear_rows_forward(out[t], inp, &w[t], bias[t], N, C, w[t].rows);
}

extern "C" void pq_gate_up_forward(float *out, float *gate, float *up, const float *inp, const PqWeight *wg,
                                   const PqWeight *wu, const float *bg, const float *bu, int N, int C, int H) {
    if (N <= 0) return;
    if (fuse_on()) {
        if (pq_cuda_gemv_swiglu(out, inp, wg, wu, bg, bu, N, C, H)) return;
        float *const outs[2] = {gate, up};
        const float *const bs[2] = {bg, bu};
        PqWeight ws[2] = {*wg, *wu};
        pq_linear_group_forward(outs, inp, ws, bs, 2, N, C);
    } else {
        pq_linear_rows_forward(gate, inp, wg, bg, N, C, H);
        pq_linear_rows_forward(up, inp, wu, bu, N, C, H);
    }
    pq_swiglu_forward(out, gate, up, N, H);
}

extern "C" void pq_linear_rows_add_forward(float *x, float *tmp, const float *inp, const PqWeight *w,
                                           const float *bias, int N, int C, int OC) {
    if (N <= 0) return;
    if (fuse_on() && (pq_cuda_gemv_add(x, inp, w, bias, N, C, OC) || pq_cuda_linear_add(x, inp, w, bias, N, C, OC)))
        return;
    pq_linear_rows_forward(tmp, inp, w, bias, N, C, OC);
    pq_residual_forward(x, tmp, (size_t)N * OC);
}

// (the rows the GEMV serves take its fused launches, through the composition)
extern "C" void pq_mlp_forward(float *x, float *tmp, float *gate, float *up, float *mlp, const float *ln,
                               const PqWeight *wg, const PqWeight *wu, const PqWeight *wd, const float *bg,
                               const float *bu, const float *bd, int N, int C, int H) {
    if (N <= 0) return;
    if (fuse_on() && !pq_cuda_gemv_fits(ln, wg, N, C) &&
        pq_cuda_mlp_bf16(x, gate, up, mlp, ln, wg, wu, wd, bg, bu, bd, N, C, H))
        return;
    pq_gate_up_forward(mlp, gate, up, ln, wg, wu, bg, bu, N, C, H);
    pq_linear_rows_add_forward(x, tmp, mlp, wd, bd, N, H, C);
}

// bf16 activations: h widened (the logits' few rows), then the f32 product into the f32 logits, the GEMV's at one row
extern "C" void pq_logits_forward(float *logits, const float *h, const PqWeight *lm_head, int N, int C, int V) {
    if (N <= 0) return;
    if (!pq_cuda_act_bf16()) {
        pq_linear_rows_forward(logits, h, lm_head, NULL, N, C, V);
        return;
    }
    PqActFallback fb;
    pq_linear_rows_forward(logits, fb.in(h, (size_t)N * C), lm_head, NULL, N, C, V);
}
