// attention.cu: flash-attention-style causal GQA attention over packed
// records (pos restarts at each record), with an optional sliding window:
// forward with log-sum-exp, backward recomputing the probabilities from it.
// Never holds T x T scores: a block walks tiles of 32 keys (or queries)
// through shared memory with an online softmax. f32 throughout, as the CPU
// twins in ops_cpu.c / ops_grad_cpu.c.
//
// Tiles: a block of 4 warps owns 32 "rows" (queries in the forward and dq
// kernels, keys in the dk/dv kernel), 8 per warp; the 32 lanes of a warp
// each take one "column" of the current tile (a key, or a query) for the
// dot products, then own head dims lane, lane+32, ... for the accumulations.
// Row-indexed tiles are read by broadcast; column-indexed ones are padded to
// HS+1 floats per row so lanes hit distinct banks.
#include <math.h>

#include "common.cuh"

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

// q (N,NH,HS), k, v (N,KVH,HS) -> out (N,NH,HS), lse (N,NH) (may be NULL)
// grid (ceil(N/BR), NH), block 32*NWARP; NV = ceil(HS/32)
template <int NV>
__global__ void __launch_bounds__(32 * NWARP) attn_fwd_kernel(float *out, float *lse, const float *q, const float *k,
                                                              const float *v, const int32_t *pos, int N, int NH,
                                                              int KVH, int HS, int window, float scale) {
    extern __shared__ float sm[];
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
    int lo[RW], hi[RW];
#pragma unroll
    for (int r = 0; r < RW; r++) {
        int i = q0 + w * RW + r;
        if (i < N) lo[r] = first_key(pos, i, window), hi[r] = i;
        else lo[r] = 1, hi[r] = 0; // sees nothing
        m[r] = -INFINITY, l[r] = 0.0f;
#pragma unroll
        for (int t = 0; t < NV; t++) o[r][t] = 0.0f;
    }
    const int qlast = (q0 + BR < N ? q0 + BR : N) - 1;
    const int kbeg = first_key(pos, q0, window); // first keys are non-decreasing in i
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
        const int j = k0 + lane;
#pragma unroll
        for (int r = 0; r < RW; r++) {
            if (hi[r] < k0 || lo[r] > k0 + BC - 1 || lo[r] > hi[r]) continue; // no visible key in this tile
            float sr = (j >= lo[r] && j <= hi[r]) ? s[r] * scale : -INFINITY;
            float mn = fmaxf(m[r], warp_max32(sr)); // finite: the tile holds a visible key
            float corr = expf(m[r] - mn);
            float p = expf(sr - mn);
            l[r] = l[r] * corr + warp_sum32(p);
            m[r] = mn;
#pragma unroll
            for (int t = 0; t < NV; t++) o[r][t] *= corr;
            for (int jj = 0; jj < BC; jj++) {
                float pj = __shfl_sync(0xffffffffu, p, jj);
                if (pj == 0.0f) continue;
                const float *vr = sv + jj * HS;
#pragma unroll
                for (int t = 0; t < NV; t++) {
                    int d = lane + 32 * t;
                    if (d < HS) o[r][t] += pj * vr[d];
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
                                                             const float *D, const int32_t *pos, int N, int NH,
                                                             int KVH, int HS, int window, float scale) {
    extern __shared__ float sm[];
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
    int lo[RW], hi[RW];
#pragma unroll
    for (int r = 0; r < RW; r++) {
        int i = q0 + w * RW + r;
        if (i < N) {
            lo[r] = first_key(pos, i, window), hi[r] = i;
            ls[r] = lse[(size_t)i * NH + h], Dr[r] = D[(size_t)i * NH + h];
        } else {
            lo[r] = 1, hi[r] = 0, ls[r] = 0.0f, Dr[r] = 0.0f;
        }
#pragma unroll
        for (int t = 0; t < NV; t++) acc[r][t] = 0.0f;
    }
    const int qlast = (q0 + BR < N ? q0 + BR : N) - 1;
    const int kbeg = first_key(pos, q0, window);
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
        __syncthreads();
        float s[RW], dp[RW];
#pragma unroll
        for (int r = 0; r < RW; r++) s[r] = 0.0f, dp[r] = 0.0f;
        const float *kr = sk + lane * SP, *vr = sv + lane * SP;
        const float *qw = sq + (w * RW) * HS, *dw = sdo + (w * RW) * HS;
        for (int d = 0; d < HS; d++) {
            float kd = kr[d], vd = vr[d];
#pragma unroll
            for (int r = 0; r < RW; r++) s[r] += qw[r * HS + d] * kd, dp[r] += dw[r * HS + d] * vd;
        }
        const int j = k0 + lane;
#pragma unroll
        for (int r = 0; r < RW; r++) {
            if (hi[r] < k0 || lo[r] > k0 + BC - 1 || lo[r] > hi[r]) continue;
            float p = (j >= lo[r] && j <= hi[r]) ? expf(s[r] * scale - ls[r]) : 0.0f;
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
// queries from the block's first key onwards, until the queries' first
// visible key lies past the block's last key. grid (ceil(N/BR), KVH).
template <int NV>
__global__ void __launch_bounds__(32 * NWARP) attn_dkv_kernel(float *dk, float *dv, const float *dout,
                                                              const float *q, const float *k, const float *v,
                                                              const float *lse, const float *D, const int32_t *pos,
                                                              int N, int NH, int KVH, int HS, int window,
                                                              float scale) {
    extern __shared__ float sm[];
    const int SP = HS + 1;
    float *sk = sm;                // (BR, HS)
    float *sv = sk + BR * HS;      // (BR, HS)
    float *sq = sv + BR * HS;      // (BC, SP)
    float *sdo = sq + BC * SP;     // (BC, SP)
    float *sls = sdo + BC * SP;    // (BC)
    float *sD = sls + BC;          // (BC)
    int *slo = (int *)(sD + BC);   // (BC)
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
    float gk[RW][NV], gv[RW][NV];
#pragma unroll
    for (int r = 0; r < RW; r++)
#pragma unroll
        for (int t = 0; t < NV; t++) gk[r][t] = gv[r][t] = 0.0f;
    for (int h = kh * G; h < (kh + 1) * G; h++) {
        for (int i0 = k0; i0 < N; i0 += BC) {
            if (first_key(pos, i0, window) > klast) break; // later queries see none of these keys
            __syncthreads();
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
                slo[ii] = i < N ? first_key(pos, i, window) : N; // past every key: sees nothing
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
            const int i = i0 + lane, li = slo[lane];
            const float lsi = sls[lane], Di = sD[lane];
#pragma unroll
            for (int r = 0; r < RW; r++) {
                int j = k0 + w * RW + r;
                bool vis = j <= klast && i < N && j >= li && j <= i;
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
                       int N, int NH, int KVH, int HS, int window, float scale) {
    size_t smem = (size_t)(BR * HS + BC * (HS + 1) + BC * HS) * sizeof(float);
    set_smem(attn_fwd_kernel<NV>, smem);
    dim3 grid((N + BR - 1) / BR, NH);
    attn_fwd_kernel<NV><<<grid, 32 * NWARP, smem>>>(out, lse, q, k, v, pos, N, NH, KVH, HS, window, scale);
    CU_LAUNCHED();
}

extern "C" void pq_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                                     const int32_t *pos, int N, int NH, int KVH, int HS, int window) {
    if (N <= 0) return;
    float scale = 1.0f / sqrtf((float)HS);
    NV_DISPATCH(HS, fwd_launch<NV>(out, lse, q, k, v, pos, N, NH, KVH, HS, window, scale));
}

template <int NV>
static void bwd_launch(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                       const float *v, const float *lse, const float *D, const int32_t *pos, int N, int NH, int KVH,
                       int HS, int window, float scale) {
    size_t smem_q = (size_t)(2 * BR * HS + 2 * BC * (HS + 1)) * sizeof(float);
    set_smem(attn_dq_kernel<NV>, smem_q);
    dim3 gq((N + BR - 1) / BR, NH);
    attn_dq_kernel<NV><<<gq, 32 * NWARP, smem_q>>>(dq, dout, q, k, v, lse, D, pos, N, NH, KVH, HS, window, scale);
    CU_LAUNCHED();
    size_t smem_k = (size_t)(2 * BR * HS + 2 * BC * (HS + 1) + 3 * BC) * sizeof(float);
    set_smem(attn_dkv_kernel<NV>, smem_k);
    dim3 gk((N + BR - 1) / BR, KVH);
    attn_dkv_kernel<NV><<<gk, 32 * NWARP, smem_k>>>(dk, dv, dout, q, k, v, lse, D, pos, N, NH, KVH, HS, window,
                                                    scale);
    CU_LAUNCHED();
}

extern "C" void pq_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                      const float *k, const float *v, const float *out, const float *lse,
                                      const int32_t *pos, int N, int NH, int KVH, int HS, int window) {
    if (N <= 0) return;
    float scale = 1.0f / sqrtf((float)HS);
    float *D = (float *)pq_cuda_scratch(PQ_SCR_ATT, (size_t)N * NH * sizeof(float));
    size_t warps = (size_t)N * NH;
    attn_dot_kernel<<<pq_blocks(warps * 32, 256), 256>>>(D, dout, out, (int)warps, HS);
    CU_LAUNCHED();
    NV_DISPATCH(HS, bwd_launch<NV>(dq, dk, dv, dout, q, k, v, lse, D, pos, N, NH, KVH, HS, window, scale));
}
