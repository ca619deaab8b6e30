// attention.cu: flash-attention-style causal GQA attention over packed
// records (pos restarts at each record), with an optional sliding window:
// forward with log-sum-exp, backward recomputing the probabilities from it;
// and its two-range form (attention2_*: a pair's responses sharing one copy
// of their prompt), the same kernels with keys [a0[i], a1[i]) and [b0[i], i].
// Two implementations, chosen by pq_ops_set_attention_dtype (the model's
// weight dtype):
// - bf16/f16 models: lib/attn_mm.c's blocked attention as batched products
//   on cuBLAS tensor cores (bf16 inputs, f32 accumulation), with the small
//   kernels of its engine below (their twins: attn_mm.c's plain-C engine);
// - f32 models: exact f32 kernels that never hold T x T scores: a block
//   walks tiles of 32 keys (or queries) through shared memory with an online
//   softmax, as the CPU twins in ops_cpu.c / ops_grad_cpu.c.
//
// Tiles: a block of 4 warps owns 32 "rows" (queries in the forward and dq
// kernels, keys in the dk/dv kernel), 8 per warp; the 32 lanes of a warp
// each take one "column" of the current tile (a key, or a query) for the
// dot products, then own head dims lane, lane+32, ... for the accumulations.
// Row-indexed tiles are read by broadcast; column-indexed ones are padded to
// HS+1 floats per row so lanes hit distinct banks.
#include <limits.h>
#include <math.h>
#include <string.h>

#include "common.cuh"

extern "C" {
#include "attn_mm.h"
}

#define RW 8          // rows per warp
#define NWARP 4       // warps per block
#define BR (RW * NWARP) // rows per block
#define BC 32         // columns per tile (one per lane)

__device__ __forceinline__ float warp_sum32(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max32(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// First key query i sees: its record's start, or i - window.
__device__ __forceinline__ int first_key(const int32_t *pos, int i, int window) {
    int lo = i - pos[i];
    if (window > 0 && i - window > lo) lo = i - window;
    return lo;
}

// The keys query i sees: [a0, a1) (empty when a0 >= a1) and [b0, i], and of
// those only keys j with pos[i] - pos[j] <= window when window > 0. Plain
// attention (ka0 == NULL): a0 = a1, b0 = the record's start. i >= N: none.
struct Vis {
    int a0, a1, b0, i, p; // p = pos[i]
};
__device__ __forceinline__ Vis row_vis(const int32_t *pos, const int32_t *ka0, const int32_t *ka1,
                                       const int32_t *kb0, int i, int N) {
    Vis v;
    if (i >= N) {
        v.a0 = v.a1 = 0, v.b0 = 1, v.i = 0, v.p = 0;
        return v;
    }
    v.i = i, v.p = pos[i];
    if (ka0) v.a0 = ka0[i], v.a1 = ka1[i], v.b0 = kb0[i];
    else v.a0 = v.a1 = 0, v.b0 = i - v.p;
    return v;
}
// may row v see some key of [k0, k1]? (ignoring the window)
__device__ __forceinline__ bool vis_hits(const Vis &v, int k0, int k1) {
    return (v.a0 < v.a1 && v.a0 <= k1 && v.a1 - 1 >= k0) || (v.b0 <= v.i && v.b0 <= k1 && v.i >= k0);
}
__device__ __forceinline__ bool vis_sees(const Vis &v, int j, int pj, int window) {
    bool in = (j >= v.a0 && j < v.a1) || (j >= v.b0 && j <= v.i);
    return in && (window <= 0 || v.p - pj <= window);
}
__device__ __forceinline__ int vis_first(const Vis &v) {
    if (v.b0 > v.i) return INT_MAX;
    return v.a0 < v.a1 && v.a0 < v.b0 ? v.a0 : v.b0;
}
// The first key any row of the block [q0, q0+BR) sees (all threads call it).
__device__ int block_first_key(const int32_t *pos, const int32_t *ka0, const int32_t *ka1, const int32_t *kb0,
                               int q0, int N, int window, int *sh) {
    if (!ka0) return first_key(pos, q0, window); // first keys are non-decreasing in i
    if (threadIdx.x == 0) *sh = INT_MAX;
    __syncthreads();
    if (threadIdx.x < BR) atomicMin(sh, vis_first(row_vis(pos, ka0, ka1, kb0, q0 + threadIdx.x, N)));
    __syncthreads();
    return *sh;
}

// q (N,NH,HS), k, v (N,KVH,HS) -> out (N,NH,HS), lse (N,NH) (may be NULL);
// ka0/ka1/kb0 (N) the two key ranges of each query, or NULL (plain causal).
// grid (ceil(N/BR), NH), block 32*NWARP; NV = ceil(HS/32)
template <int NV>
__global__ void __launch_bounds__(32 * NWARP) attn_fwd_kernel(float *out, float *lse, const float *q, const float *k,
                                                              const float *v, const int32_t *pos, const int32_t *ka0,
                                                              const int32_t *ka1, const int32_t *kb0, int N, int NH,
                                                              int KVH, int HS, int window, float scale) {
    extern __shared__ float sm[];
    __shared__ int skpos[BC], sfirst;
    const int SP = HS + 1;
    float *sq = sm;               // (BR, HS)
    float *sk = sq + BR * HS;     // (BC, SP)
    float *sv = sk + BC * SP;     // (BC, HS)
    const int h = blockIdx.y, kh = h / (NH / KVH), q0 = blockIdx.x * BR;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const size_t qs = (size_t)NH * HS, ks = (size_t)KVH * HS;
    for (int idx = threadIdx.x; idx < BR * HS; idx += blockDim.x) {
        int r = idx / HS, d = idx % HS, i = q0 + r;
        sq[idx] = i < N ? q[(size_t)i * qs + (size_t)h * HS + d] : 0.0f;
    }
    float o[RW][NV], m[RW], l[RW];
    Vis vr[RW];
#pragma unroll
    for (int r = 0; r < RW; r++) {
        vr[r] = row_vis(pos, ka0, ka1, kb0, q0 + w * RW + r, N);
        m[r] = -INFINITY, l[r] = 0.0f;
#pragma unroll
        for (int t = 0; t < NV; t++) o[r][t] = 0.0f;
    }
    const int qlast = (q0 + BR < N ? q0 + BR : N) - 1;
    const int kbeg = block_first_key(pos, ka0, ka1, kb0, q0, N, window, &sfirst);
    for (int k0 = kbeg; k0 <= qlast; k0 += BC) {
        __syncthreads();
        for (int idx = threadIdx.x; idx < BC * HS; idx += blockDim.x) {
            int jj = idx / HS, d = idx % HS, j = k0 + jj;
            float kv = 0.0f, vv = 0.0f;
            if (j <= qlast) {
                kv = k[(size_t)j * ks + (size_t)kh * HS + d];
                vv = v[(size_t)j * ks + (size_t)kh * HS + d];
            }
            sk[jj * SP + d] = kv;
            sv[jj * HS + d] = vv;
        }
        if (threadIdx.x < BC) skpos[threadIdx.x] = k0 + (int)threadIdx.x <= qlast ? pos[k0 + threadIdx.x] : 0;
        __syncthreads();
        // scores of this lane's key against the warp's rows
        float s[RW];
#pragma unroll
        for (int r = 0; r < RW; r++) s[r] = 0.0f;
        const float *kr = sk + lane * SP;
        const float *qw = sq + (w * RW) * HS;
        for (int d = 0; d < HS; d++) {
            float kd = kr[d];
#pragma unroll
            for (int r = 0; r < RW; r++) s[r] += qw[r * HS + d] * kd;
        }
        const int j = k0 + lane, pj = skpos[lane];
#pragma unroll
        for (int r = 0; r < RW; r++) {
            if (!vis_hits(vr[r], k0, k0 + BC - 1)) continue; // warp-uniform
            float sr = j <= qlast && vis_sees(vr[r], j, pj, window) ? s[r] * scale : -INFINITY;
            float mt = warp_max32(sr);
            if (mt == -INFINITY) continue; // the window hides the whole tile
            float mn = fmaxf(m[r], mt);
            float corr = expf(m[r] - mn);
            float p = expf(sr - mn);
            l[r] = l[r] * corr + warp_sum32(p);
            m[r] = mn;
#pragma unroll
            for (int t = 0; t < NV; t++) o[r][t] *= corr;
            for (int jj = 0; jj < BC; jj++) {
                float pjj = __shfl_sync(0xffffffffu, p, jj);
                if (pjj == 0.0f) continue;
                const float *vrow = sv + jj * HS;
#pragma unroll
                for (int t = 0; t < NV; t++) {
                    int d = lane + 32 * t;
                    if (d < HS) o[r][t] += pjj * vrow[d];
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < RW; r++) {
        int i = q0 + w * RW + r;
        if (i >= N) continue;
        float inv = 1.0f / l[r];
        float *orow = out + (size_t)i * qs + (size_t)h * HS;
#pragma unroll
        for (int t = 0; t < NV; t++) {
            int d = lane + 32 * t;
            if (d < HS) orow[d] = o[r][t] * inv;
        }
        if (lse && lane == 0) lse[(size_t)i * NH + h] = m[r] + logf(l[r]);
    }
}

// D (N,NH) = sum_d dout * out, one warp per (token, head)
__global__ void attn_dot_kernel(float *D, const float *dout, const float *out, int NHN, int HS) {
    int wi = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (wi >= NHN) return;
    const float *a = dout + (size_t)wi * HS, *b = out + (size_t)wi * HS;
    float s = 0.0f;
    for (int d = lane; d < HS; d += 32) s += a[d] * b[d];
    s = warp_sum32(s);
    if (lane == 0) D[wi] = s;
}

// dq (N,NH,HS) = scale sum_j ds_ij k_j, ds_ij = p_ij (dout_i . v_j - D_i),
// p_ij = exp(scale q_i . k_j - lse_i). Rows are queries, as the forward.
template <int NV>
__global__ void __launch_bounds__(32 * NWARP) attn_dq_kernel(float *dq, const float *dout, const float *q,
                                                             const float *k, const float *v, const float *lse,
                                                             const float *D, const int32_t *pos, const int32_t *ka0,
                                                             const int32_t *ka1, const int32_t *kb0, int N, int NH,
                                                             int KVH, int HS, int window, float scale) {
    extern __shared__ float sm[];
    __shared__ int skpos[BC], sfirst;
    const int SP = HS + 1;
    float *sq = sm;                // (BR, HS)
    float *sdo = sq + BR * HS;     // (BR, HS)
    float *sk = sdo + BR * HS;     // (BC, SP)
    float *sv = sk + BC * SP;      // (BC, SP)
    const int h = blockIdx.y, kh = h / (NH / KVH), q0 = blockIdx.x * BR;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const size_t qs = (size_t)NH * HS, ks = (size_t)KVH * HS;
    for (int idx = threadIdx.x; idx < BR * HS; idx += blockDim.x) {
        int r = idx / HS, d = idx % HS, i = q0 + r;
        size_t off = (size_t)i * qs + (size_t)h * HS + d;
        sq[idx] = i < N ? q[off] : 0.0f;
        sdo[idx] = i < N ? dout[off] : 0.0f;
    }
    float acc[RW][NV], ls[RW], Dr[RW];
    Vis vr[RW];
#pragma unroll
    for (int r = 0; r < RW; r++) {
        int i = q0 + w * RW + r;
        vr[r] = row_vis(pos, ka0, ka1, kb0, i, N);
        ls[r] = i < N ? lse[(size_t)i * NH + h] : 0.0f;
        Dr[r] = i < N ? D[(size_t)i * NH + h] : 0.0f;
#pragma unroll
        for (int t = 0; t < NV; t++) acc[r][t] = 0.0f;
    }
    const int qlast = (q0 + BR < N ? q0 + BR : N) - 1;
    const int kbeg = block_first_key(pos, ka0, ka1, kb0, q0, N, window, &sfirst);
    for (int k0 = kbeg; k0 <= qlast; k0 += BC) {
        __syncthreads();
        for (int idx = threadIdx.x; idx < BC * HS; idx += blockDim.x) {
            int jj = idx / HS, d = idx % HS, j = k0 + jj;
            float kv = 0.0f, vv = 0.0f;
            if (j <= qlast) {
                kv = k[(size_t)j * ks + (size_t)kh * HS + d];
                vv = v[(size_t)j * ks + (size_t)kh * HS + d];
            }
            sk[jj * SP + d] = kv;
            sv[jj * SP + d] = vv;
        }
        if (threadIdx.x < BC) skpos[threadIdx.x] = k0 + (int)threadIdx.x <= qlast ? pos[k0 + threadIdx.x] : 0;
        __syncthreads();
        float s[RW], dp[RW];
#pragma unroll
        for (int r = 0; r < RW; r++) s[r] = 0.0f, dp[r] = 0.0f;
        const float *kr = sk + lane * SP, *vrow = sv + lane * SP;
        const float *qw = sq + (w * RW) * HS, *dw = sdo + (w * RW) * HS;
        for (int d = 0; d < HS; d++) {
            float kd = kr[d], vd = vrow[d];
#pragma unroll
            for (int r = 0; r < RW; r++) s[r] += qw[r * HS + d] * kd, dp[r] += dw[r * HS + d] * vd;
        }
        const int j = k0 + lane, pj = skpos[lane];
#pragma unroll
        for (int r = 0; r < RW; r++) {
            if (!vis_hits(vr[r], k0, k0 + BC - 1)) continue; // warp-uniform
            float p = j <= qlast && vis_sees(vr[r], j, pj, window) ? expf(s[r] * scale - ls[r]) : 0.0f;
            float ds = p * (dp[r] - Dr[r]);
            for (int jj = 0; jj < BC; jj++) {
                float dsj = __shfl_sync(0xffffffffu, ds, jj);
                if (dsj == 0.0f) continue;
                const float *kj = sk + jj * SP;
#pragma unroll
                for (int t = 0; t < NV; t++) {
                    int d = lane + 32 * t;
                    if (d < HS) acc[r][t] += dsj * kj[d];
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < RW; r++) {
        int i = q0 + w * RW + r;
        if (i >= N) continue;
        float *row = dq + (size_t)i * qs + (size_t)h * HS;
#pragma unroll
        for (int t = 0; t < NV; t++) {
            int d = lane + 32 * t;
            if (d < HS) row[d] = acc[r][t] * scale;
        }
    }
}

// dk_j = scale sum_{h in group, i} ds_ij q_i, dv_j = sum p_ij dout_i over the
// query heads sharing kv head kh. Rows are keys; the lanes walk tiles of 32
// queries from the block's first key onwards (a key is never seen by an
// earlier query), skipping tiles none of whose queries sees these keys (and
// stopping, for plain attention, once the queries' first key lies past the
// block). grid (ceil(N/BR), KVH).
template <int NV>
__global__ void __launch_bounds__(32 * NWARP) attn_dkv_kernel(float *dk, float *dv, const float *dout,
                                                              const float *q, const float *k, const float *v,
                                                              const float *lse, const float *D, const int32_t *pos,
                                                              const int32_t *ka0, const int32_t *ka1,
                                                              const int32_t *kb0, int N, int NH, int KVH, int HS,
                                                              int window, float scale) {
    extern __shared__ float sm[];
    __shared__ Vis svis[BC];
    __shared__ int skpos[BR];
    const int SP = HS + 1;
    float *sk = sm;                // (BR, HS)
    float *sv = sk + BR * HS;      // (BR, HS)
    float *sq = sv + BR * HS;      // (BC, SP)
    float *sdo = sq + BC * SP;     // (BC, SP)
    float *sls = sdo + BC * SP;    // (BC)
    float *sD = sls + BC;          // (BC)
    const int kh = blockIdx.y, G = NH / KVH, k0 = blockIdx.x * BR;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const size_t qs = (size_t)NH * HS, ks = (size_t)KVH * HS;
    const int klast = (k0 + BR < N ? k0 + BR : N) - 1;
    for (int idx = threadIdx.x; idx < BR * HS; idx += blockDim.x) {
        int r = idx / HS, d = idx % HS, j = k0 + r;
        size_t off = (size_t)j * ks + (size_t)kh * HS + d;
        sk[idx] = j < N ? k[off] : 0.0f;
        sv[idx] = j < N ? v[off] : 0.0f;
    }
    if (threadIdx.x < BR) skpos[threadIdx.x] = k0 + (int)threadIdx.x < N ? pos[k0 + threadIdx.x] : 0;
    float gk[RW][NV], gv[RW][NV];
#pragma unroll
    for (int r = 0; r < RW; r++)
#pragma unroll
        for (int t = 0; t < NV; t++) gk[r][t] = gv[r][t] = 0.0f;
    for (int h = kh * G; h < (kh + 1) * G; h++) {
        for (int i0 = k0; i0 < N; i0 += BC) {
            if (!ka0 && first_key(pos, i0, window) > klast) break; // later queries see none of these keys
            __syncthreads();
            int hit = 0;
            if (threadIdx.x < BC) {
                Vis vi = row_vis(pos, ka0, ka1, kb0, i0 + threadIdx.x, N);
                svis[threadIdx.x] = vi;
                hit = vis_hits(vi, k0, klast);
            }
            if (!__syncthreads_or(hit)) continue; // no query of this tile sees these keys
            for (int idx = threadIdx.x; idx < BC * HS; idx += blockDim.x) {
                int ii = idx / HS, d = idx % HS, i = i0 + ii;
                size_t off = (size_t)i * qs + (size_t)h * HS + d;
                sq[ii * SP + d] = i < N ? q[off] : 0.0f;
                sdo[ii * SP + d] = i < N ? dout[off] : 0.0f;
            }
            for (int ii = threadIdx.x; ii < BC; ii += blockDim.x) {
                int i = i0 + ii;
                sls[ii] = i < N ? lse[(size_t)i * NH + h] : 0.0f;
                sD[ii] = i < N ? D[(size_t)i * NH + h] : 0.0f;
            }
            __syncthreads();
            // this lane's query against the warp's keys
            float s[RW], dp[RW];
#pragma unroll
            for (int r = 0; r < RW; r++) s[r] = 0.0f, dp[r] = 0.0f;
            const float *qr = sq + lane * SP, *dr = sdo + lane * SP;
            const float *kw = sk + (w * RW) * HS, *vw = sv + (w * RW) * HS;
            for (int d = 0; d < HS; d++) {
                float qd = qr[d], dd = dr[d];
#pragma unroll
                for (int r = 0; r < RW; r++) s[r] += kw[r * HS + d] * qd, dp[r] += vw[r * HS + d] * dd;
            }
            const Vis vi = svis[lane];
            const float lsi = sls[lane], Di = sD[lane];
#pragma unroll
            for (int r = 0; r < RW; r++) {
                int j = k0 + w * RW + r;
                bool vis = j <= klast && vis_sees(vi, j, skpos[w * RW + r], window);
                float p = vis ? expf(s[r] * scale - lsi) : 0.0f;
                float ds = p * (dp[r] - Di) * scale;
                if (__all_sync(0xffffffffu, p == 0.0f)) continue;
                for (int ii = 0; ii < BC; ii++) {
                    float pi = __shfl_sync(0xffffffffu, p, ii);
                    float dsi = __shfl_sync(0xffffffffu, ds, ii);
                    if (pi == 0.0f) continue;
                    const float *qi = sq + ii * SP, *doi = sdo + ii * SP;
#pragma unroll
                    for (int t = 0; t < NV; t++) {
                        int d = lane + 32 * t;
                        if (d < HS) gv[r][t] += pi * doi[d], gk[r][t] += dsi * qi[d];
                    }
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < RW; r++) {
        int j = k0 + w * RW + r;
        if (j >= N) continue;
        float *kr = dk + (size_t)j * ks + (size_t)kh * HS, *vr = dv + (size_t)j * ks + (size_t)kh * HS;
#pragma unroll
        for (int t = 0; t < NV; t++) {
            int d = lane + 32 * t;
            if (d < HS) kr[d] = gk[r][t], vr[d] = gv[r][t];
        }
    }
}

// ---- tensor-core attention: the engine of lib/attn_mm.c on cuBLAS ----

static PqDtype attn_dtype = PQ_F32; // until a model says otherwise

extern "C" void pq_ops_set_attention_dtype(PqDtype t) {
    const char *f = getenv("PQ_ATTENTION");
    attn_dtype = f && !strcmp(f, "f32") ? PQ_F32 : t;
}

static void amm_gemm(int ta, int tb, int m, int n, int k, float alpha, const void *A, int lda, long long sA,
                     const void *B, int ldb, long long sB, float beta, float *C, int ldc, long long sC, int batch) {
    CUBLAS(cublasGemmStridedBatchedEx(pq_cuda_blas(), ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                                      m, n, k, &alpha, A, CUDA_R_16BF, lda, sA, B, CUDA_R_16BF, ldb, sB, &beta, C,
                                      CUDA_R_32F, ldc, sC, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// src (N,SH,HS) f32 -> dst (N,NH,HS) bf16, dst head h = src head h / (NH / SH); n = N NH HS
__global__ void amm_expand_kernel(__nv_bfloat16 *dst, const float *src, size_t n, int NH, int SH, int HS) {
    size_t x = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= n) return;
    int d = (int)(x % HS);
    size_t r = x / HS;
    int h = (int)(r % NH);
    size_t i = r / NH;
    dst[x] = __float2bfloat16(src[(i * SH + h / (NH / SH)) * HS + d]);
}
static void amm_expand(void *dst, const float *src, int N, int NH, int SH, int HS) {
    size_t n = (size_t)N * NH * HS;
    amm_expand_kernel<<<pq_blocks(n, PQ_EW_THREADS), PQ_EW_THREADS>>>((__nv_bfloat16 *)dst, src, n, NH, SH, HS);
    CU_LAUNCHED();
}

// src (N,NH,HS) -> dst (N,KVH,HS), the sum of each KV head's NH / KVH query heads; n = N KVH HS
__global__ void amm_reduce_kernel(float *dst, const float *src, size_t n, int NH, int KVH, int HS) {
    size_t x = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= n) return;
    int d = (int)(x % HS), G = NH / KVH;
    size_t r = x / HS;
    int kh = (int)(r % KVH);
    size_t i = r / KVH;
    const float *s = src + (i * NH + (size_t)kh * G) * HS + d;
    float acc = 0.0f;
    for (int t = 0; t < G; t++) acc += s[(size_t)t * HS];
    dst[x] = acc;
}
static void amm_reduce(float *dst, const float *src, int N, int NH, int KVH, int HS) {
    size_t n = (size_t)N * KVH * HS;
    amm_reduce_kernel<<<pq_blocks(n, PQ_EW_THREADS), PQ_EW_THREADS>>>(dst, src, n, NH, KVH, HS);
    CU_LAUNCHED();
}

static void amm_rowdot(float *D, const float *a, const float *b, size_t rows, int HS) {
    attn_dot_kernel<<<pq_blocks(rows * 32, 256), 256>>>(D, a, b, (int)rows, HS);
    CU_LAUNCHED();
}

// Is column c of block b visible from row i (position pi)? (attn_mm.h)
__device__ __forceinline__ bool amm_vis(const PqAttnBlock &b, const int32_t *pos, int i, int pi, int c, int window) {
    int j;
    if (c < b.nA) {
        j = b.A0 + c;
    } else if (c >= b.nAp && c < b.nAp + b.nB) {
        j = b.B0 + (c - b.nAp);
        if (j > i) return false;
    } else {
        return false;
    }
    return window <= 0 || pi - pos[j] <= window;
}

#define AMM_THREADS 256
// The max (op 1) or sum (op 0) over the block's threads; red has AMM_THREADS / 32 floats.
__device__ float amm_block_reduce(float v, int op, float *red) {
    v = op ? warp_max32(v) : warp_sum32(v);
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    __syncthreads(); // red may still be read from the previous reduction
    if (lane == 0) red[w] = v;
    __syncthreads();
    v = red[0];
    for (int t = 1; t < AMM_THREADS / 32; t++) v = op ? fmaxf(v, red[t]) : v + red[t];
    return v;
}

// grid (nq, NH): row a of head h of S (NH, nq, ld) -> P (masked softmax), lse
__global__ void __launch_bounds__(AMM_THREADS) amm_softmax_kernel(__nv_bfloat16 *P, float *lse, const float *S,
                                                                  PqAttnBlock b, const int32_t *pos, int NH,
                                                                  int window) {
    __shared__ float red[AMM_THREADS / 32];
    int a = blockIdx.x, h = blockIdx.y, i = b.i0 + a, pi = pos[i];
    size_t row = ((size_t)h * b.nq + a) * b.ld;
    const float *s = S + row;
    float m = -INFINITY;
    for (int c = threadIdx.x; c < b.ld; c += AMM_THREADS)
        if (amm_vis(b, pos, i, pi, c, window)) m = fmaxf(m, s[c]);
    m = amm_block_reduce(m, 1, red);
    float sum = 0.0f;
    for (int c = threadIdx.x; c < b.ld; c += AMM_THREADS)
        if (amm_vis(b, pos, i, pi, c, window)) sum += expf(s[c] - m);
    sum = amm_block_reduce(sum, 0, red);
    float inv = 1.0f / sum;
    for (int c = threadIdx.x; c < b.ld; c += AMM_THREADS)
        P[row + c] = __float2bfloat16(amm_vis(b, pos, i, pi, c, window) ? expf(s[c] - m) * inv : 0.0f);
    if (threadIdx.x == 0) lse[(size_t)i * NH + h] = m + logf(sum);
}
static void amm_softmax(void *P, float *lse, const float *S, PqAttnBlock b, const int32_t *pos, int NH, int window) {
    amm_softmax_kernel<<<dim3(b.nq, NH), AMM_THREADS>>>((__nv_bfloat16 *)P, lse, S, b, pos, NH, window);
    CU_LAUNCHED();
}

// grid (nq, NH): P = exp(S - lse), dS = P (dP - D) scale, 0 where hidden
__global__ void __launch_bounds__(AMM_THREADS) amm_softmax_bwd_kernel(__nv_bfloat16 *P, __nv_bfloat16 *dS,
                                                                      const float *S, const float *dP,
                                                                      const float *lse, const float *D, PqAttnBlock b,
                                                                      const int32_t *pos, int NH, int window,
                                                                      float scale) {
    int a = blockIdx.x, h = blockIdx.y, i = b.i0 + a, pi = pos[i];
    size_t row = ((size_t)h * b.nq + a) * b.ld;
    float l = lse[(size_t)i * NH + h], Di = D[(size_t)i * NH + h];
    for (int c = threadIdx.x; c < b.ld; c += AMM_THREADS) {
        float p = amm_vis(b, pos, i, pi, c, window) ? expf(S[row + c] - l) : 0.0f;
        P[row + c] = __float2bfloat16(p);
        dS[row + c] = __float2bfloat16(p * (dP[row + c] - Di) * scale);
    }
}
static void amm_softmax_bwd(void *P, void *dS, const float *S, const float *dP, const float *lse, const float *D,
                            PqAttnBlock b, const int32_t *pos, int NH, int window, float scale) {
    amm_softmax_bwd_kernel<<<dim3(b.nq, NH), AMM_THREADS>>>((__nv_bfloat16 *)P, (__nv_bfloat16 *)dS, S, dP, lse, D,
                                                             b, pos, NH, window, scale);
    CU_LAUNCHED();
}

static void *amm_slot[PQ_AMM_NSLOT];
static size_t amm_cap[PQ_AMM_NSLOT];
static void *amm_scratch(int slot, size_t bytes) {
    if (bytes > amm_cap[slot]) {
        pq_dev_free(amm_slot[slot]);
        size_t cap = bytes + bytes / 4; // headroom for the next, larger batch
        amm_slot[slot] = pq_dev_alloc(cap);
        amm_cap[slot] = cap;
    }
    return amm_slot[slot];
}
static void amm_zero(void *p, size_t bytes) { pq_dev_zero(p, bytes); }
static void amm_download(void *host, const void *src, size_t bytes) { pq_dev_download(host, src, bytes); }

static const PqAttnEngine amm_engine = {2,           amm_gemm,    amm_expand, amm_reduce, amm_rowdot, amm_softmax,
                                        amm_softmax_bwd, amm_scratch, amm_zero, amm_download, 0, 0};

extern "C" const PqAttnEngine *pq_attn_mm_cuda(void) { return &amm_engine; }

// The tensor-core path serves this call: a bf16/f16 model and a head size cuBLAS tiles well.
static bool use_mm(int HS) { return attn_dtype != PQ_F32 && HS % 8 == 0; }

// Launches kernel K<NV> with dynamic shared memory smem (raising the limit
// above the default 48 KB where needed).
template <typename F> static void set_smem(F *f, size_t smem) {
    if (smem > 48 * 1024) CU(cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
}

static void check_hs(int HS) {
    if (HS > 256) {
        fprintf(stderr, "pq: attention head size %d > 256 is not supported by the CUDA backend\n", HS);
        abort();
    }
}

#define NV_DISPATCH(HS, CALL)                                                                                       \
    do {                                                                                                            \
        check_hs(HS);                                                                                               \
        if ((HS) <= 32) { constexpr int NV = 1; CALL; }                                                            \
        else if ((HS) <= 64) { constexpr int NV = 2; CALL; }                                                       \
        else if ((HS) <= 128) { constexpr int NV = 4; CALL; }                                                      \
        else { constexpr int NV = 8; CALL; }                                                                        \
    } while (0)

template <int NV>
static void fwd_launch(float *out, float *lse, const float *q, const float *k, const float *v, const int32_t *pos,
                       const int32_t *a0, const int32_t *a1, const int32_t *b0, int N, int NH, int KVH, int HS,
                       int window, float scale) {
    size_t smem = (size_t)(BR * HS + BC * (HS + 1) + BC * HS) * sizeof(float);
    set_smem(attn_fwd_kernel<NV>, smem);
    dim3 grid((N + BR - 1) / BR, NH);
    attn_fwd_kernel<NV><<<grid, 32 * NWARP, smem>>>(out, lse, q, k, v, pos, a0, a1, b0, N, NH, KVH, HS, window, scale);
    CU_LAUNCHED();
}

static void attention_fwd(float *out, float *lse, const float *q, const float *k, const float *v, const int32_t *pos,
                          const int32_t *a0, const int32_t *a1, const int32_t *b0, int N, int NH, int KVH, int HS,
                          int window) {
    if (N <= 0) return;
    if (use_mm(HS)) {
        pq_attn_mm_forward(&amm_engine, out, lse, q, k, v, pos, a0, a1, b0, N, NH, KVH, HS, window);
        return;
    }
    float scale = 1.0f / sqrtf((float)HS);
    NV_DISPATCH(HS, fwd_launch<NV>(out, lse, q, k, v, pos, a0, a1, b0, N, NH, KVH, HS, window, scale));
}

extern "C" void pq_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                     const int32_t *pos, int N, int NH, int KVH, int HS, int window) {
    attention_fwd(out, lse, q, k, v, pos, NULL, NULL, NULL, N, NH, KVH, HS, window);
}

extern "C" void pq_attention2_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                      const int32_t *pos, const int32_t *a0, const int32_t *a1, const int32_t *b0,
                                      int N, int NH, int KVH, int HS, int window) {
    attention_fwd(out, lse, q, k, v, pos, a0, a1, b0, N, NH, KVH, HS, window);
}

template <int NV>
static void bwd_launch(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                       const float *v, const float *lse, const float *D, const int32_t *pos, const int32_t *a0,
                       const int32_t *a1, const int32_t *b0, int N, int NH, int KVH, int HS, int window,
                       float scale) {
    size_t smem_q = (size_t)(2 * BR * HS + 2 * BC * (HS + 1)) * sizeof(float);
    set_smem(attn_dq_kernel<NV>, smem_q);
    dim3 gq((N + BR - 1) / BR, NH);
    attn_dq_kernel<NV><<<gq, 32 * NWARP, smem_q>>>(dq, dout, q, k, v, lse, D, pos, a0, a1, b0, N, NH, KVH, HS, window,
                                                   scale);
    CU_LAUNCHED();
    size_t smem_k = (size_t)(2 * BR * HS + 2 * BC * (HS + 1) + 2 * BC) * sizeof(float);
    set_smem(attn_dkv_kernel<NV>, smem_k);
    dim3 gk((N + BR - 1) / BR, KVH);
    attn_dkv_kernel<NV><<<gk, 32 * NWARP, smem_k>>>(dk, dv, dout, q, k, v, lse, D, pos, a0, a1, b0, N, NH, KVH, HS,
                                                    window, scale);
    CU_LAUNCHED();
}

static void attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                          const float *v, const float *out, const float *lse, const int32_t *pos, const int32_t *a0,
                          const int32_t *a1, const int32_t *b0, int N, int NH, int KVH, int HS, int window) {
    if (N <= 0) return;
    if (use_mm(HS)) {
        pq_attn_mm_backward(&amm_engine, dq, dk, dv, dout, q, k, v, out, lse, pos, a0, a1, b0, N, NH, KVH, HS,
                            window);
        return;
    }
    float scale = 1.0f / sqrtf((float)HS);
    float *D = (float *)pq_cuda_scratch(PQ_SCR_ATT, (size_t)N * NH * sizeof(float));
    size_t warps = (size_t)N * NH;
    attn_dot_kernel<<<pq_blocks(warps * 32, 256), 256>>>(D, dout, out, (int)warps, HS);
    CU_LAUNCHED();
    NV_DISPATCH(HS, bwd_launch<NV>(dq, dk, dv, dout, q, k, v, lse, D, pos, a0, a1, b0, N, NH, KVH, HS, window, scale));
}

extern "C" void pq_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                      const float *k, const float *v, const float *out, const float *lse,
                                      const int32_t *pos, int N, int NH, int KVH, int HS, int window) {
    attention_bwd(dq, dk, dv, dout, q, k, v, out, lse, pos, NULL, NULL, NULL, N, NH, KVH, HS, window);
}

extern "C" void pq_attention2_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                       const float *k, const float *v, const float *out, const float *lse,
                                       const int32_t *pos, const int32_t *a0, const int32_t *a1, const int32_t *b0,
                                       int N, int NH, int KVH, int HS, int window) {
    attention_bwd(dq, dk, dv, dout, q, k, v, out, lse, pos, a0, a1, b0, N, NH, KVH, HS, window);
}
