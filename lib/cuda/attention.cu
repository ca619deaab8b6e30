// attention.cu: flash-attention-style causal GQA attention over packed
// records (pos restarts at each record), with an optional sliding window:
// forward with log-sum-exp, backward recomputing the probabilities from it;
// and its two-range form (attention2_*: a pair's responses sharing one copy
// of their prompt), the same kernels with keys [a0[i], a1[i]) and [b0[i], i].
// Three implementations, chosen by pq_ops_set_attention_dtype (the model's
// weight dtype) and PQ_ATTENTION (cudnn, mm or f32 forces one):
// - bf16/f16 models: cuDNN's fused flash attention (lib/cuda/sdpa.cpp) on
//   the segments of lib/attn_plan.c (bf16 inputs, f32 softmax statistics),
//   merged and combined by the kernels below (their twins: attn_plan.c);
//   where cuDNN is absent or refuses a shape (said once on stderr):
// - lib/attn_mm.c's blocked attention as batched products
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
#include "attn_plan.h"
#include "util.h"
}
#include "sdpa.h"

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

// The path of bf16/f16 models' attention: cuDNN first, then the tensor-core
// products; f32 models: the exact kernels. PQ_ATTENTION forces one for every model.
enum { ATT_F32, ATT_MM, ATT_CUDNN };
static int attn_path = ATT_F32; // until a model says otherwise
static PqDtype model_dt = PQ_F32; // the weights' dtype of the model loaded last (the LoRA products' default too)

PqDtype pq_cuda_model_dtype(void) { return model_dt; }

extern "C" void pq_ops_set_attention_dtype(PqDtype t) {
    model_dt = t;
    const char *f = getenv("PQ_ATTENTION");
    if (f && !strcmp(f, "f32")) attn_path = ATT_F32;
    else if (f && !strcmp(f, "mm")) attn_path = ATT_MM;
    else if (f && !strcmp(f, "cudnn")) attn_path = ATT_CUDNN;
    else attn_path = t == PQ_F32 ? ATT_F32 : ATT_CUDNN;
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
    amm_expand_kernel<<<pq_blocks(n, PQ_EW_THREADS), PQ_EW_THREADS, 0, pq_cuda_stream>>>((__nv_bfloat16 *)dst, src, n,
                                                                                         NH, SH, HS);
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
    amm_reduce_kernel<<<pq_blocks(n, PQ_EW_THREADS), PQ_EW_THREADS, 0, pq_cuda_stream>>>(dst, src, n, NH, KVH, HS);
    CU_LAUNCHED();
}

static void amm_rowdot(float *D, const float *a, const float *b, size_t rows, int HS) {
    attn_dot_kernel<<<pq_blocks(rows * 32, 256), 256, 0, pq_cuda_stream>>>(D, a, b, (int)rows, HS);
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
    amm_softmax_kernel<<<dim3(b.nq, NH), AMM_THREADS, 0, pq_cuda_stream>>>((__nv_bfloat16 *)P, lse, S, b, pos, NH,
                                                                           window);
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
    amm_softmax_bwd_kernel<<<dim3(b.nq, NH), AMM_THREADS, 0, pq_cuda_stream>>>(
        (__nv_bfloat16 *)P, (__nv_bfloat16 *)dS, S, dP, lse, D, b, pos, NH, window, scale);
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
static bool use_mm(int HS) { return attn_path != ATT_F32 && HS % 8 == 0; }

// ---- cuDNN's fused attention on the segments of lib/attn_plan.c ----

// src (n) f32 -> dst (n) bf16
__global__ void sd_bf16_kernel(__nv_bfloat16 *dst, const float *src, size_t n) {
    size_t x = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (x < n) dst[x] = __float2bfloat16(src[x]);
}
static void sd_bf16(void *dst, const float *src, size_t n) {
    sd_bf16_kernel<<<pq_blocks(n, PQ_EW_THREADS), PQ_EW_THREADS, 0, pq_cuda_stream>>>((__nv_bfloat16 *)dst, src, n);
    CU_LAUNCHED();
}

// The plan's rows as the kernels read them (device): per row its causal segment and index, its cross
// segment (-1: none) and index; per key, whether a cross segment reads it.
struct SdRows {
    const int32_t *cb, *cs, *xb, *xs, *kx;
    int smax1, smax2;
};

// twin: pq_attn_plan_merge. One thread per (row, head, dim); n = N NH HS. T: the activations' type (out)
template <typename T>
__global__ void sd_merge_kernel(T *out, float *lse, const __nv_bfloat16 *o1, const float *st1, const __nv_bfloat16 *o2,
                                const float *st2, SdRows r, size_t n, int NH, int HS) {
    size_t x = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= n) return;
    int d = (int)(x % HS);
    size_t ih = x / HS;
    int h = (int)(ih % NH), i = (int)(ih / NH);
    float l1 = st1[((size_t)r.cb[i] * NH + h) * r.smax1 + r.cs[i]];
    if (r.xb[i] < 0 || !o2) {
        pq_st(out, x, __bfloat162float(o1[x]));
        if (lse && d == 0) lse[ih] = l1;
        return;
    }
    float l2 = st2[((size_t)r.xb[i] * NH + h) * r.smax2 + r.xs[i]];
    float m = fmaxf(l1, l2), l = m + logf(expf(l1 - m) + expf(l2 - m));
    pq_st(out, x, expf(l1 - l) * __bfloat162float(o1[x]) + expf(l2 - l) * __bfloat162float(o2[x]));
    if (lse && d == 0) lse[ih] = l;
}

// The rows' log-sum-exps alone, where cuDNN wrote out itself (sd_forward: one call, bf16 activations):
// sd_merge_kernel's lse without its copy of o1. One thread per (row, head); n = N NH
__global__ void sd_lse_kernel(float *lse, const float *st1, SdRows r, size_t n, int NH) {
    size_t x = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= n) return;
    int h = (int)(x % NH), i = (int)(x / NH);
    lse[x] = st1[((size_t)r.cb[i] * NH + h) * r.smax1 + r.cs[i]];
}

// twin: pq_attn_plan_spread. One thread per (row, head); n = N NH
__global__ void sd_spread_kernel(float *st1, float *st2, const float *lse, SdRows r, size_t n, int NH) {
    size_t x = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= n) return;
    int h = (int)(x % NH), i = (int)(x / NH);
    st1[((size_t)r.cb[i] * NH + h) * r.smax1 + r.cs[i]] = lse[x];
    if (st2 && r.xb[i] >= 0) st2[((size_t)r.xb[i] * NH + h) * r.smax2 + r.xs[i]] = lse[x];
}

// twin: pq_attn_plan_combine, one tensor: dst (N, W) = a + b on rows whose flag (N) is set (b NULL: a)
template <typename T>
__global__ void sd_combine_kernel(T *dst, const __nv_bfloat16 *a, const __nv_bfloat16 *b, const int32_t *flag,
                                  int flag_is_segment, size_t n, size_t W) {
    size_t x = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= n) return;
    size_t i = x / W;
    float v = __bfloat162float(a[x]);
    if (b && (flag_is_segment ? flag[i] >= 0 : flag[i] != 0)) v += __bfloat162float(b[x]);
    pq_st(dst, x, v);
}

// Device scratch of the cuDNN path, grown on demand.
enum { SD_Q, SD_K, SD_V, SD_O1, SD_O2, SD_DO, SD_DQ1, SD_DK1, SD_DV1, SD_DQ2, SD_DK2, SD_DV2, SD_ST1, SD_ST2,
       SD_N };
static void *sd_slot[SD_N];
static size_t sd_cap[SD_N];
static void *sd_scratch(int slot, size_t bytes) {
    // (cudaFree, not pq_dev_free: that would drop the cached plans)
    if (bytes > sd_cap[slot]) pq_cuda_regrow(&sd_slot[slot], &sd_cap[slot], bytes + bytes / 4);
    return sd_slot[slot];
}

static int sd_calls;                // successful cuDNN calls (parity-attn checks the path ran)
static char sd_last_err[320] = "";  // the last reason cuDNN did not serve a call
extern "C" int pq_attention_cudnn_calls(void) { return sd_calls; }
extern "C" const char *pq_attention_cudnn_error(void) { return sd_last_err; }

// Says once on stderr why attention falls back to the tensor-core path.
static void sd_fallback(const char *why) {
    static bool said;
    snprintf(sd_last_err, sizeof sd_last_err, "%s", why);
    if (said) return;
    said = true;
    fprintf(stderr, "pq: cuDNN attention not used (%s): tensor-core attention instead (said once)\n", why);
}

// A plan and its device copy: the two calls' descriptions and the row maps.
struct SdPlan {
    PqAttnPlan p;
    PqSdpaCall c1, c2;
    SdRows r;
};

// Builds the plan of this batch (pos etc. are device arrays), uploads what the calls and kernels read.
// false (with the fallback said) when cuDNN's calls cannot express it.
static bool sd_plan_build(SdPlan *sp, void **meta, const int32_t *pos, const int32_t *a0, const int32_t *a1,
                          const int32_t *b0, int N, int NH, int KVH, int HS, int window) {
    if (HS % 8 || HS > 256) {
        char why[96];
        snprintf(why, sizeof why, "head size %d is not a multiple of 8 up to 256", HS);
        sd_fallback(why);
        return false;
    }
    size_t bytes = (size_t)N * sizeof(int32_t);
    int32_t *h = (int32_t *)pq_xmalloc(4 * bytes);
    pq_dev_download(h, pos, bytes);
    if (a0) {
        pq_dev_download(h + N, a0, bytes);
        pq_dev_download(h + 2 * N, a1, bytes);
        pq_dev_download(h + 3 * N, b0, bytes);
    }
    char err[256];
    int rc = pq_attn_plan_build(&sp->p, h, a0 ? h + N : NULL, a0 ? h + 2 * N : NULL, a0 ? h + 3 * N : NULL, N, window,
                                err, sizeof err);
    free(h);
    if (rc) {
        sd_fallback(err);
        return false;
    }
    // metadata, each array at a multiple of 256 bytes (cuDNN's tensors want aligned addresses): per call
    // the offsets of Q's and K's segments (int64, B + 1) and their lengths (int32, B); then the row maps
    const PqAttnPlan *p = &sp->p;
    const PqAttnCall *calls[2] = {&p->causal, &p->cross};
    size_t at = 0, o_q[2], o_k[2], o_sq[2], o_sk[2];
    auto place = [&at](size_t bytes) {
        size_t a = at;
        at += (bytes + 255) & ~(size_t)255;
        return a;
    };
    for (int t = 0; t < 2; t++) {
        size_t B = (size_t)calls[t]->B;
        o_q[t] = place((B + 1) * 8), o_k[t] = place((B + 1) * 8), o_sq[t] = place(B * 4), o_sk[t] = place(B * 4);
    }
    size_t o_rows = place(5 * (size_t)N * 4), mbytes = at;
    char *m = (char *)pq_xcalloc(1, mbytes);
    size_t qs = (size_t)NH * HS, ks = (size_t)KVH * HS;
    for (int t = 0; t < 2; t++) {
        const PqAttnCall *c = calls[t];
        int64_t *oq = (int64_t *)(m + o_q[t]), *ok = (int64_t *)(m + o_k[t]);
        for (int b = 0; b < c->B; b++) oq[b] = (int64_t)c->q0[b] * qs, ok[b] = (int64_t)c->k0[b] * ks;
        oq[c->B] = (int64_t)N * qs, ok[c->B] = (int64_t)N * ks;
        memcpy(m + o_sq[t], c->sq, (size_t)c->B * 4);
        memcpy(m + o_sk[t], c->sk, (size_t)c->B * 4);
    }
    memcpy(m + o_rows, p->cb, 5 * (size_t)N * 4); // cb, cs, xb, xs, kx are one allocation, in this order
    char *d = NULL; // the entry's own metadata (sd_plan keeps several entries)
    CU(cudaMalloc((void **)&d, mbytes));
    pq_cuda_copy(d, m, mbytes, cudaMemcpyHostToDevice);
    *meta = d;
    free(m);
    PqSdpaCall *out[2] = {&sp->c1, &sp->c2};
    for (int t = 0; t < 2; t++) {
        const PqAttnCall *c = calls[t];
        PqSdpaCall *s = out[t];
        memset(s, 0, sizeof *s);
        s->B = c->B, s->NH = NH, s->KVH = KVH, s->HS = HS;
        s->smax_q = pq_attn_plan_bucket(c->smax_q), s->smax_k = pq_attn_plan_bucket(c->smax_k);
        s->causal = t == 0, s->left_bound = t == 0 ? p->left_bound : 0;
        s->scale = 1.0f / sqrtf((float)HS);
        s->off_q = (const int64_t *)(d + o_q[t]), s->off_k = (const int64_t *)(d + o_k[t]);
        s->seq_q = (const int32_t *)(d + o_sq[t]), s->seq_k = (const int32_t *)(d + o_sk[t]);
    }
    const int32_t *rows = (const int32_t *)(d + o_rows);
    sp->r.cb = rows, sp->r.cs = rows + N, sp->r.xb = rows + 2 * N, sp->r.xs = rows + 3 * N, sp->r.kx = rows + 4 * N;
    sp->r.smax1 = sp->c1.smax_q, sp->r.smax2 = sp->c2.smax_q;
    return true;
}

// The plans of the last batches. A plan depends on the positions (and
// a0/a1/b0), which sit on the device: building one reads them back, a
// synchronisation that stalls the queue, and every layer of a forward and a
// backward asks for the same plan. So plans are kept, keyed by the arrays'
// addresses and the shape, and dropped when memory under a key array is
// written through pq_dev_upload/copy/zero (how positions reach the device)
// or anything is freed (pq_attention_note_write / _note_free). Those only
// mark an entry stale (a call in flight may be reading it: the cuDNN
// workspace can grow, through pq_dev_free, between the plan and its use);
// stale entries are released at the next sd_plan.
enum { SD_CACHE = 64 }; // (generation plans each prompt of a step on its own)
struct SdEntry {
    bool used, stale;
    const int32_t *pos, *a0, *a1, *b0;
    int N, NH, KVH, HS, window;
    unsigned long long tick;
    SdPlan sp;
    void *meta;
};
static SdEntry sd_cache[SD_CACHE];
static unsigned long long sd_tick;
static long sd_builds; // plans built (parity-attn checks that the cache is used and dropped)
extern "C" long pq_attention_cudnn_plans(void) { return sd_builds; }

static void sd_drop(SdEntry *e) {
    if (!e->used) return;
    pq_attn_plan_free(&e->sp.p);
    if (e->meta) CU(cudaFree(e->meta));
    memset(e, 0, sizeof *e);
}

static bool overlaps(const int32_t *a, int N, const char *lo, const char *hi) {
    return a && (const char *)a < hi && (const char *)(a + N) > lo;
}

void pq_attention_note_write(const void *dst, size_t bytes) {
    const char *lo = (const char *)dst, *hi = lo + bytes;
    for (int i = 0; i < SD_CACHE; i++) {
        SdEntry *e = &sd_cache[i];
        if (e->used && (overlaps(e->pos, e->N, lo, hi) || overlaps(e->a0, e->N, lo, hi) ||
                        overlaps(e->a1, e->N, lo, hi) || overlaps(e->b0, e->N, lo, hi)))
            e->stale = true;
    }
}

void pq_attention_note_free(void) {
    for (int i = 0; i < SD_CACHE; i++) sd_cache[i].stale = true;
}

// The plan of this batch: the cached one, else built (and cached, evicting the least recently used).
static bool sd_plan(SdPlan *sp, const int32_t *pos, const int32_t *a0, const int32_t *a1, const int32_t *b0, int N,
                    int NH, int KVH, int HS, int window) {
    for (int i = 0; i < SD_CACHE; i++)
        if (sd_cache[i].stale) sd_drop(&sd_cache[i]);
    SdEntry *lru = &sd_cache[0];
    for (int i = 0; i < SD_CACHE; i++) {
        SdEntry *e = &sd_cache[i];
        if (e->used && e->pos == pos && e->a0 == a0 && e->a1 == a1 && e->b0 == b0 && e->N == N && e->NH == NH &&
            e->KVH == KVH && e->HS == HS && e->window == window) {
            e->tick = ++sd_tick;
            *sp = e->sp;
            return true;
        }
        if (!e->used || (lru->used && e->tick < lru->tick)) lru = e;
    }
    sd_drop(lru);
    void *meta = NULL;
    if (!sd_plan_build(&lru->sp, &meta, pos, a0, a1, b0, N, NH, KVH, HS, window)) return false;
    sd_builds++;
    lru->used = true, lru->meta = meta, lru->tick = ++sd_tick;
    lru->pos = pos, lru->a0 = a0, lru->a1 = a1, lru->b0 = b0;
    lru->N = N, lru->NH = NH, lru->KVH = KVH, lru->HS = HS, lru->window = window;
    *sp = lru->sp;
    return true;
}

// bf16 activations (bf): q, k, v are what cuDNN reads, as they are (copied where not 16-byte aligned)
static const void *sd_in(bool bf, int slot, const float *src, size_t n) {
    void *d;
    if (!bf) {
        d = sd_scratch(slot, n * 2);
        sd_bf16(d, src, n);
        return d;
    }
    if (!((uintptr_t)src & 15)) return src;
    d = sd_scratch(slot, n * 2);
    CU(cudaMemcpyAsync(d, src, n * 2, cudaMemcpyDeviceToDevice, pq_cuda_stream));
    return d;
}

static bool sd_forward(bool bf, float *out, float *lse, const float *q, const float *k, const float *v,
                       const int32_t *pos, const int32_t *a0, const int32_t *a1, const int32_t *b0, int N, int NH,
                       int KVH, int HS, int window) {
    SdPlan sp;
    if (!sd_plan(&sp, pos, a0, a1, b0, N, NH, KVH, HS, window)) return false;
    size_t nq = (size_t)N * NH * HS, nk = (size_t)N * KVH * HS;
    const void *Q = sd_in(bf, SD_Q, q, nq), *K = sd_in(bf, SD_K, k, nk), *V = sd_in(bf, SD_V, v, nk);
    // one call (no cross segments) in bf16 activations: cuDNN writes out itself (its segments are the rows in
    // place, as the merge reads o1), and only the log-sum-exps are gathered; else o1 in scratch, then the merge
    bool direct = bf && !sp.c2.B && !((uintptr_t)out & 15);
    void *O1 = direct ? (void *)out : sd_scratch(SD_O1, nq * 2), *O2 = NULL;
    float *st1 = (float *)sd_scratch(SD_ST1, (size_t)sp.c1.B * NH * sp.c1.smax_q * 4), *st2 = NULL;
    char err[320];
    bool ok = pq_sdpa_forward(&sp.c1, O1, st1, Q, K, V, err, sizeof err) == 0;
    if (ok && sp.c2.B) {
        O2 = sd_scratch(SD_O2, nq * 2);
        st2 = (float *)sd_scratch(SD_ST2, (size_t)sp.c2.B * NH * sp.c2.smax_q * 4);
        ok = pq_sdpa_forward(&sp.c2, O2, st2, Q, K, V, err, sizeof err) == 0;
    }
    if (ok && direct) {
        sd_calls++;
        if (lse) {
            size_t nl = (size_t)N * NH;
            sd_lse_kernel<<<pq_blocks(nl, PQ_EW_THREADS), PQ_EW_THREADS, 0, pq_cuda_stream>>>(lse, st1, sp.r, nl, NH);
            CU_LAUNCHED();
        }
    } else if (ok) {
        sd_calls += 1 + (sp.c2.B > 0);
        unsigned g = pq_blocks(nq, PQ_EW_THREADS);
        typedef const __nv_bfloat16 *bp;
        if (bf)
            sd_merge_kernel<<<g, PQ_EW_THREADS, 0, pq_cuda_stream>>>((pq_bf16 *)out, lse, (bp)O1, st1, (bp)O2, st2,
                                                                     sp.r, nq, NH, HS);
        else
            sd_merge_kernel<<<g, PQ_EW_THREADS, 0, pq_cuda_stream>>>(out, lse, (bp)O1, st1, (bp)O2, st2, sp.r, nq, NH,
                                                                     HS);
        CU_LAUNCHED();
    } else {
        sd_fallback(err);
    }
    return ok;
}

// dst (n) of the activations' type T (the last argument only selects it) = sd_combine_kernel's sum
template <typename T>
static void sd_combine(float *dst, const void *a, const void *b, const int32_t *flag, int flag_is_segment, size_t n,
                       size_t W, T *) {
    sd_combine_kernel<<<pq_blocks(n, PQ_EW_THREADS), PQ_EW_THREADS, 0, pq_cuda_stream>>>(
        (T *)dst, (const __nv_bfloat16 *)a, (const __nv_bfloat16 *)b, flag, flag_is_segment, n, W);
    CU_LAUNCHED();
}

static bool sd_backward(bool bf, float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                        const float *v, const float *out, const float *lse, const int32_t *pos, const int32_t *a0,
                        const int32_t *a1, const int32_t *b0, int N, int NH, int KVH, int HS, int window) {
    SdPlan sp;
    if (!sd_plan(&sp, pos, a0, a1, b0, N, NH, KVH, HS, window)) return false;
    size_t nq = (size_t)N * NH * HS, nk = (size_t)N * KVH * HS, nl = (size_t)N * NH;
    const void *Q = sd_in(bf, SD_Q, q, nq), *K = sd_in(bf, SD_K, k, nk), *V = sd_in(bf, SD_V, v, nk);
    const void *O = sd_in(bf, SD_O1, out, nq), *DO = sd_in(bf, SD_DO, dout, nq);
    float *st1 = (float *)sd_scratch(SD_ST1, (size_t)sp.c1.B * NH * sp.c1.smax_q * 4), *st2 = NULL;
    if (sp.c2.B) st2 = (float *)sd_scratch(SD_ST2, (size_t)sp.c2.B * NH * sp.c2.smax_q * 4);
    sd_spread_kernel<<<pq_blocks(nl, PQ_EW_THREADS), PQ_EW_THREADS, 0, pq_cuda_stream>>>(st1, st2, lse, sp.r, nl, NH);
    CU_LAUNCHED();
    void *dq1 = sd_scratch(SD_DQ1, nq * 2), *dk1 = sd_scratch(SD_DK1, nk * 2), *dv1 = sd_scratch(SD_DV1, nk * 2);
    void *dq2 = NULL, *dk2 = NULL, *dv2 = NULL;
    char err[320];
    bool ok = pq_sdpa_backward(&sp.c1, dq1, dk1, dv1, Q, K, V, O, DO, st1, err, sizeof err) == 0;
    if (ok && sp.c2.B) {
        dq2 = sd_scratch(SD_DQ2, nq * 2), dk2 = sd_scratch(SD_DK2, nk * 2), dv2 = sd_scratch(SD_DV2, nk * 2);
        ok = pq_sdpa_backward(&sp.c2, dq2, dk2, dv2, Q, K, V, O, DO, st2, err, sizeof err) == 0;
    }
    if (ok) {
        sd_calls += 1 + (sp.c2.B > 0);
        if (bf) {
            sd_combine(dq, dq1, dq2, sp.r.xb, 1, nq, (size_t)NH * HS, (pq_bf16 *)NULL);
            sd_combine(dk, dk1, dk2, sp.r.kx, 0, nk, (size_t)KVH * HS, (pq_bf16 *)NULL);
            sd_combine(dv, dv1, dv2, sp.r.kx, 0, nk, (size_t)KVH * HS, (pq_bf16 *)NULL);
        } else {
            sd_combine(dq, dq1, dq2, sp.r.xb, 1, nq, (size_t)NH * HS, (float *)NULL);
            sd_combine(dk, dk1, dk2, sp.r.kx, 0, nk, (size_t)KVH * HS, (float *)NULL);
            sd_combine(dv, dv1, dv2, sp.r.kx, 0, nk, (size_t)KVH * HS, (float *)NULL);
        }
    } else {
        sd_fallback(err);
    }
    return ok;
}

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
    attn_fwd_kernel<NV>
        <<<grid, 32 * NWARP, smem, pq_cuda_stream>>>(out, lse, q, k, v, pos, a0, a1, b0, N, NH, KVH, HS, window, scale);
    CU_LAUNCHED();
}

// the tensor-core or exact f32 paths (f32 activations)
static void attention_fwd_f32(float *out, float *lse, const float *q, const float *k, const float *v,
                              const int32_t *pos, const int32_t *a0, const int32_t *a1, const int32_t *b0, int N,
                              int NH, int KVH, int HS, int window) {
    if (use_mm(HS)) {
        pq_attn_mm_forward(&amm_engine, out, lse, q, k, v, pos, a0, a1, b0, N, NH, KVH, HS, window);
        return;
    }
    float scale = 1.0f / sqrtf((float)HS);
    NV_DISPATCH(HS, fwd_launch<NV>(out, lse, q, k, v, pos, a0, a1, b0, N, NH, KVH, HS, window, scale));
}

// bf16 activations: cuDNN reads q, k, v and writes out as they are; where it does not serve the call, the
// other paths on f32 copies (the fallback)
static void attention_fwd(float *out, float *lse, const float *q, const float *k, const float *v, const int32_t *pos,
                          const int32_t *a0, const int32_t *a1, const int32_t *b0, int N, int NH, int KVH, int HS,
                          int window) {
    if (N <= 0) return;
    bool bf = pq_cuda_act_bf16();
    if (attn_path == ATT_CUDNN && sd_forward(bf, out, lse, q, k, v, pos, a0, a1, b0, N, NH, KVH, HS, window)) return;
    if (bf) {
        size_t nq = (size_t)N * NH * HS, nk = (size_t)N * KVH * HS;
        PqActFallback fb;
        attention_fwd_f32(fb.out(out, nq), lse, fb.in(q, nq), fb.in(k, nk), fb.in(v, nk), pos, a0, a1, b0, N, NH, KVH,
                          HS, window);
        return;
    }
    attention_fwd_f32(out, lse, q, k, v, pos, a0, a1, b0, N, NH, KVH, HS, window);
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
    attn_dq_kernel<NV><<<gq, 32 * NWARP, smem_q, pq_cuda_stream>>>(dq, dout, q, k, v, lse, D, pos, a0, a1, b0, N, NH,
                                                                   KVH, HS, window, scale);
    CU_LAUNCHED();
    size_t smem_k = (size_t)(2 * BR * HS + 2 * BC * (HS + 1) + 2 * BC) * sizeof(float);
    set_smem(attn_dkv_kernel<NV>, smem_k);
    dim3 gk((N + BR - 1) / BR, KVH);
    attn_dkv_kernel<NV><<<gk, 32 * NWARP, smem_k, pq_cuda_stream>>>(dk, dv, dout, q, k, v, lse, D, pos, a0, a1, b0, N,
                                                                    NH, KVH, HS, window, scale);
    CU_LAUNCHED();
}

static void attention_bwd_f32(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                              const float *v, const float *out, const float *lse, const int32_t *pos,
                              const int32_t *a0, const int32_t *a1, const int32_t *b0, int N, int NH, int KVH, int HS,
                              int window) {
    if (use_mm(HS)) {
        pq_attn_mm_backward(&amm_engine, dq, dk, dv, dout, q, k, v, out, lse, pos, a0, a1, b0, N, NH, KVH, HS,
                            window);
        return;
    }
    float scale = 1.0f / sqrtf((float)HS);
    float *D = (float *)pq_cuda_scratch(PQ_SCR_ATT, (size_t)N * NH * sizeof(float));
    size_t warps = (size_t)N * NH;
    attn_dot_kernel<<<pq_blocks(warps * 32, 256), 256, 0, pq_cuda_stream>>>(D, dout, out, (int)warps, HS);
    CU_LAUNCHED();
    NV_DISPATCH(HS, bwd_launch<NV>(dq, dk, dv, dout, q, k, v, lse, D, pos, a0, a1, b0, N, NH, KVH, HS, window, scale));
}

static void attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                          const float *v, const float *out, const float *lse, const int32_t *pos, const int32_t *a0,
                          const int32_t *a1, const int32_t *b0, int N, int NH, int KVH, int HS, int window) {
    if (N <= 0) return;
    bool bf = pq_cuda_act_bf16();
    if (attn_path == ATT_CUDNN && lse &&
        sd_backward(bf, dq, dk, dv, dout, q, k, v, out, lse, pos, a0, a1, b0, N, NH, KVH, HS, window))
        return;
    if (bf) {
        size_t nq = (size_t)N * NH * HS, nk = (size_t)N * KVH * HS;
        PqActFallback fb;
        attention_bwd_f32(fb.out(dq, nq), fb.out(dk, nk), fb.out(dv, nk), fb.in(dout, nq), fb.in(q, nq),
                          fb.in(k, nk), fb.in(v, nk), fb.in(out, nq), lse, pos, a0, a1, b0, N, NH, KVH, HS, window);
        return;
    }
    attention_bwd_f32(dq, dk, dv, dout, q, k, v, out, lse, pos, a0, a1, b0, N, NH, KVH, HS, window);
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
