// paged.cu: the CUDA versions of ops_paged.h (paged KV append and block
// copies, split decode attention over block tables, sampling with the
// counter-based RNG), checked against ops_paged_cpu.c by
// tests/gpu/parity-paged.c.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.cuh"
#include "sdpa.h"
#include "tuning.h"

extern "C" {
#include "attn_plan.h"
#include "ops_paged.h"
}

// ---- append, copies ----

// k, v (N,kd) of the activations' type A -> kp, vp rows slot[i]; a negative slot (a row that pads a CUDA graph's
// step, gen.c) is not written
template <typename T, typename A>
__global__ void paged_append_kernel(T *kp, T *vp, const A *k, const A *v, const int32_t *slot, int N, int kd) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * kd) return;
    int i = (int)(idx / kd), e = (int)(idx % kd);
    if (slot[i] < 0) return;
    size_t at = (size_t)slot[i] * kd + e;
    pq_st(kp, at, pq_ld(k, idx));
    pq_st(vp, at, pq_ld(v, idx));
}

template <typename A>
static void paged_append(void *kp, void *vp, PqDtype dt, const A *k, const A *v, const int32_t *slot, int N, int kd) {
    size_t n = (size_t)N * kd;
    if (dt == PQ_BF16)
        paged_append_kernel<<<pq_blocks(n, PQ_EW_THREADS), PQ_EW_THREADS, 0, pq_cuda_stream>>>(
            (__nv_bfloat16 *)kp, (__nv_bfloat16 *)vp, k, v, slot, N, kd);
    else
        paged_append_kernel<<<pq_blocks(n, PQ_EW_THREADS), PQ_EW_THREADS, 0, pq_cuda_stream>>>((float *)kp, (float *)vp,
                                                                                               k, v, slot, N, kd);
    CU_LAUNCHED();
}

extern "C" void pq_paged_append(void *kp, void *vp, PqDtype dt, const float *k, const float *v, const int32_t *slot,
                                int N, int KVH, int HS) {
    if (N <= 0) return;
    if (pq_cuda_act_bf16())
        paged_append(kp, vp, dt, (const pq_bf16 *)k, (const pq_bf16 *)v, slot, N, KVH * HS);
    else paged_append(kp, vp, dt, k, v, slot, N, KVH * HS);
}

// rope and append in one launch: a thread per (row, head of q, k then v, d < HS/2): q's and k's pair (d, d + HS/2)
// rotated in place (common.cuh's rope_pair, as pq_rope_qk_forward), then k's pair as stored, and v's, into the
// pools at row slot[i] (none where it is negative)
template <typename T, typename A>
__global__ void paged_rope_append_kernel(A *q, A *k, const A *v, const int32_t *pos, const float *inv_freq, T *kp,
                                         T *vp, const int32_t *slot, int N, int NH, int KVH, int HS) {
    int half = HS / 2, H = NH + 2 * KVH;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * H * half) return;
    int d = (int)(idx % half);
    size_t ih = idx / half; // row * H + head
    size_t i = ih / H;
    int h = (int)(ih % H);
    if (h < NH + KVH) {
        A *x = h < NH ? q + (i * NH + h) * HS : k + (i * KVH + (h - NH)) * HS;
        rope_pair(x, d, half, (float)pos[i] * inv_freq[d], 1);
        if (h < NH || slot[i] < 0) return;
        size_t at = ((size_t)slot[i] * KVH + (h - NH)) * HS;
        pq_st(kp, at + d, pq_ld(x, d)); // (the values this thread stored)
        pq_st(kp, at + d + half, pq_ld(x, d + half));
    } else if (slot[i] >= 0) {
        int kh = h - NH - KVH;
        const A *x = v + (i * KVH + kh) * HS;
        size_t at = ((size_t)slot[i] * KVH + kh) * HS;
        pq_st(vp, at + d, pq_ld(x, d));
        pq_st(vp, at + d + half, pq_ld(x, d + half));
    }
}

template <typename A>
static void paged_rope_append(A *q, A *k, const A *v, const int32_t *pos, const float *inv_freq, void *kp, void *vp,
                              PqDtype dt, const int32_t *slot, int N, int NH, int KVH, int HS) {
    size_t n = (size_t)N * (NH + 2 * KVH) * (HS / 2);
    unsigned g = pq_blocks(n, PQ_EW_THREADS);
    if (dt == PQ_BF16)
        paged_rope_append_kernel<<<g, PQ_EW_THREADS, 0, pq_cuda_stream>>>(
            q, k, v, pos, inv_freq, (pq_bf16 *)kp, (pq_bf16 *)vp, slot, N, NH, KVH, HS);
    else
        paged_rope_append_kernel<<<g, PQ_EW_THREADS, 0, pq_cuda_stream>>>(q, k, v, pos, inv_freq, (float *)kp,
                                                                          (float *)vp, slot, N, NH, KVH, HS);
    CU_LAUNCHED();
}

extern "C" void pq_paged_rope_append(float *q, float *k, const float *v, const int32_t *pos, const float *inv_freq,
                                     void *kp, void *vp, PqDtype dt, const int32_t *slot, int N, int NH, int KVH,
                                     int HS) {
    if (N <= 0) return;
    if (HS % 2) { // (rope's pairs need an even head size; as pq_rope_qk_forward's callers)
        pq_rope_qk_forward(q, k, pos, inv_freq, N, NH, KVH, HS);
        pq_paged_append(kp, vp, dt, k, v, slot, N, KVH, HS);
        return;
    }
    if (pq_cuda_act_bf16())
        paged_rope_append((pq_bf16 *)q, (pq_bf16 *)k, (const pq_bf16 *)v, pos, inv_freq, kp, vp, dt, slot, N, NH, KVH,
                          HS);
    else paged_rope_append(q, k, v, pos, inv_freq, kp, vp, dt, slot, N, NH, KVH, HS);
}

// grid (ncopy, L, 2: K or V); u16 units of a row (2 per f32 element)
__global__ void copy_blocks_kernel(uint16_t *kp, uint16_t *vp, const PqKvCopy *copies, size_t layer, int BT,
                                   size_t row) {
    PqKvCopy c = copies[blockIdx.x];
    uint16_t *p = (blockIdx.z ? vp : kp) + blockIdx.y * layer;
    const uint16_t *s = p + (size_t)c.src * BT * row;
    uint16_t *d = p + (size_t)c.dst * BT * row;
    size_t n = (size_t)c.n * row;
    for (size_t x = threadIdx.x; x < n; x += blockDim.x) d[x] = s[x];
}

extern "C" void pq_paged_copy_blocks(void *kp, void *vp, PqDtype dt, const PqKvCopy *copies, int ncopy, int L, int NB,
                                     int BT, int KVH, int HS) {
    if (ncopy <= 0 || L <= 0) return;
    size_t row = (size_t)KVH * HS * (pq_dtype_size(dt) / 2);
    copy_blocks_kernel<<<dim3(ncopy, L, 2), 256, 0, pq_cuda_stream>>>((uint16_t *)kp, (uint16_t *)vp, copies,
                                                                      (size_t)NB * BT * row, BT, row);
    CU_LAUNCHED();
}

// ---- decode attention ----

#define ATT_THREADS 128
#define ATT_WARPS (ATT_THREADS / 32)
#define ATT_CH 128 // positions scored per pass through shared memory

// One chunk's online softmax, warps taking the heads: scores s (G, ATT_CH) of cn positions become their
// exponentials on the new running maximum m (G); alpha (G) rescales the sums so far; l (G) is the new total.
__device__ __forceinline__ void chunk_softmax(float *s, float *alpha, float *mm, float *ll, int G, int cn, int warp,
                                              int lane) {
    for (int g = warp; g < G; g += ATT_WARPS) {
        float mx = -INFINITY;
        for (int t = lane; t < cn; t += 32) mx = fmaxf(mx, s[g * ATT_CH + t]);
        for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        float mold = mm[g], mnew = fmaxf(mold, mx), sum = 0;
        for (int t = lane; t < cn; t += 32) {
            float p = expf(s[g * ATT_CH + t] - mnew);
            s[g * ATT_CH + t] = p;
            sum += p;
        }
        for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        __syncwarp();
        if (lane == 0) {
            float a = mold == -INFINITY ? 0.0f : expf(mold - mnew);
            alpha[g] = a;
            mm[g] = mnew;
            ll[g] = ll[g] * a + sum;
        }
    }
}

// Both decode kernels' start: the G query heads of KV head kh of row i,
// scaled, into qs; m and l reset; the positions [*j0, *j1) of split sp that
// row i sees (its window's). Returns row i's table. q and out are activations
// of type A (f32, or bf16 with PQ_ACTIVATIONS=bf16: read widened, written
// rounded once); work is f32.
template <typename A>
__device__ __forceinline__ const int32_t *paged_begin(float *qs, float *mm, float *ll, const A *q,
                                                      const int32_t *tables, int maxblk, const int32_t *len, int i,
                                                      int kh, int G, int NH, int HS, int window, int SL, int sp,
                                                      float scale, int *j0, int *j1) {
    for (int e = threadIdx.x; e < G * HS; e += ATT_THREADS)
        qs[e] = pq_ld(q, ((size_t)i * NH + (size_t)kh * G) * HS + e) * scale;
    if (threadIdx.x < G) mm[threadIdx.x] = -INFINITY, ll[threadIdx.x] = 0;
    int n = len[i], lo = 0;
    if (window > 0 && n - 1 - window > lo) lo = n - 1 - window;
    *j0 = max(sp * SL, lo), *j1 = min((sp + 1) * SL, n);
    return tables + (size_t)i * maxblk;
}

// And their end, for channel d of query head g (of KV head kh) summed to x:
// the output when there is one split, else split sp's partial (m, l, o).
template <typename A>
__device__ __forceinline__ void paged_put(A *out, float *work, const float *mm, const float *ll, float x, int i,
                                          int kh, int g, int d, int G, int NH, int HS, int ns, int sp) {
    size_t h = (size_t)kh * G + g;
    if (ns == 1) pq_st(out, ((size_t)i * NH + h) * HS + d, ll[g] > 0 ? x / ll[g] : 0.0f);
    else {
        float *w = work + (((size_t)i * NH + h) * ns + sp) * (HS + 2);
        w[2 + d] = x;
        if (d == 0) w[0] = mm[g], w[1] = ll[g];
    }
}

// One block per (split, KV head, row): the G query heads of the KV head read
// each key and value once. Warps score positions (lanes across the head),
// online softmax over chunks of ATT_CH, thread d accumulates channels d and
// d + 128 of the G heads. One split: the output; more: (m, l, o) partials.
template <typename T, int GM, typename A>
__global__ void __launch_bounds__(ATT_THREADS)
    paged_attn_kernel(A *out, float *work, const A *q, const T *kp, const T *vp, const int32_t *tables,
                      int maxblk, const int32_t *len, int NH, int KVH, int HS, int BT, int window, int SL, int ns,
                      float scale) {
    extern __shared__ float sm[]; // q (G,HS), s (G,ATT_CH), alpha (G), m (G), l (G)
    int sp = blockIdx.x, kh = blockIdx.y, i = blockIdx.z, G = NH / KVH;
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    float *qs = sm, *s = qs + G * HS, *alpha = s + G * ATT_CH, *mm = alpha + G, *ll = mm + G;
    int j0, j1;
    const int32_t *tab = paged_begin(qs, mm, ll, q, tables, maxblk, len, i, kh, G, NH, HS, window, SL, sp, scale, &j0, &j1);
    size_t kd = (size_t)KVH * HS, ho = (size_t)kh * HS;
    float acc[GM][2];
#pragma unroll
    for (int g = 0; g < GM; g++) acc[g][0] = acc[g][1] = 0;
    __syncthreads();
    for (int c0 = j0; c0 < j1; c0 += ATT_CH) {
        int cn = min(ATT_CH, j1 - c0);
        for (int t = warp; t < cn; t += ATT_WARPS) {
            int j = c0 + t;
            const T *kr = kp + ((size_t)tab[j / BT] * BT + j % BT) * kd + ho;
            float part[GM];
#pragma unroll
            for (int g = 0; g < GM; g++) part[g] = 0;
            for (int d = lane; d < HS; d += 32) {
                float kv = pq_ld(kr, d);
#pragma unroll
                for (int g = 0; g < GM; g++)
                    if (g < G) part[g] += qs[g * HS + d] * kv;
            }
#pragma unroll
            for (int g = 0; g < GM; g++) {
                if (g >= G) break;
                float x = part[g];
                for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
                if (lane == 0) s[g * ATT_CH + t] = x;
            }
        }
        __syncthreads();
        chunk_softmax(s, alpha, mm, ll, G, cn, warp, lane);
        __syncthreads();
#pragma unroll
        for (int r = 0; r < 2; r++) {
            int d = tid + r * ATT_THREADS;
            if (d >= HS) break;
#pragma unroll
            for (int g = 0; g < GM; g++)
                if (g < G) acc[g][r] *= alpha[g];
            for (int t = 0; t < cn; t++) {
                int j = c0 + t;
                float vv = pq_ld(vp + ((size_t)tab[j / BT] * BT + j % BT) * kd + ho, d);
#pragma unroll
                for (int g = 0; g < GM; g++)
                    if (g < G) acc[g][r] += s[g * ATT_CH + t] * vv;
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int d = tid + r * ATT_THREADS;
        if (d >= HS) break;
#pragma unroll
        for (int g = 0; g < GM; g++) {
            if (g >= G) break;
            paged_put(out, work, mm, ll, acc[g][r], i, kh, g, d, G, NH, HS, ns, sp);
        }
    }
}

// The same attention for a bf16 cache and head size 64 or 128 (the 7B
// models'), at the memory's pace: keys are scored TG = HS/8 lanes a key, each
// lane reading 8 channels in one 16-byte load, KEYS keys a group
// in flight; values are summed by warps over their own positions, lanes
// across the channels (HS/32 each, one 4- or 8-byte load), and the warps'
// sums added in shared memory at the end. Same splits, partials and results
// as paged_attn_kernel (up to the order of the sums).
// a lane's DPL bf16 channels of a value row, one load
template <int DPL> struct ValueLoad;
template <> struct ValueLoad<4> { typedef uint2 T; };
template <> struct ValueLoad<2> { typedef uint32_t T; };

// KEYS: keys a lane group has in flight (4, or 8 under PQ_PAGED_KEYS=8: half the round trips to memory of a
// split, twice the registers)
template <int HS, int GM, int KEYS, typename A>
__global__ void __launch_bounds__(ATT_THREADS)
    paged_attn_fast_kernel(A *out, float *work, const A *q, const __nv_bfloat16 *kp, const __nv_bfloat16 *vp,
                           const int32_t *tables, int maxblk, const int32_t *len, int NH, int KVH, int BT, int window,
                           int SL, int ns, float scale) {
    constexpr int TG = HS / 8;        // lanes a key
    constexpr int KPW = 32 / TG;      // keys a warp scores at once
    constexpr int DPL = HS / 32;      // channels a lane sums in the value pass
    extern __shared__ float sm[];     // q (G,HS), s (G,ATT_CH), alpha, m, l (G), red (ATT_WARPS,G,HS)
    pq_pdl_launch_dependents(); // (o_proj's product, PQ_PDL: common.cuh)
    int sp = blockIdx.x, kh = blockIdx.y, i = blockIdx.z, G = NH / KVH;
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, lt = lane % TG, kg = lane / TG;
    float *qs = sm, *s = qs + G * HS, *alpha = s + G * ATT_CH, *mm = alpha + G, *ll = mm + G;
    int j0, j1;
    const int32_t *tab = paged_begin(qs, mm, ll, q, tables, maxblk, len, i, kh, G, NH, HS, window, SL, sp, scale, &j0, &j1);
    size_t kd = (size_t)KVH * HS, ho = (size_t)kh * HS;
    float acc[GM][DPL];
#pragma unroll
    for (int g = 0; g < GM; g++)
#pragma unroll
        for (int d = 0; d < DPL; d++) acc[g][d] = 0;
    __syncthreads();
    // (up to 4 heads a KV head: Mistral's, Llama 3's) the lane's 8 channels of the heads' scaled q in registers,
    // read once: the score loop would read them from shared memory for every key, 8 bytes of q for each byte of
    // key. Heads past G hold 0: scored, never stored, so the loop over heads has no exit to diverge on.
    constexpr bool QREG = GM <= 4;
    float qr[QREG ? GM : 1][8];
    if constexpr (QREG) {
#pragma unroll
        for (int g = 0; g < GM; g++)
#pragma unroll
            for (int e = 0; e < 8; e++) qr[g][e] = g < G ? qs[g * HS + lt * 8 + e] : 0.0f;
    }
    for (int c0 = j0; c0 < j1; c0 += ATT_CH) {
        int cn = min(ATT_CH, j1 - c0);
        // scores: key t = b0 + kg + u * KPW * ATT_WARPS for lane group kg (the loop is the warp's, uniform:
        // its shuffles need every lane)
        for (int b0 = warp * KPW; b0 < cn; b0 += KPW * ATT_WARPS * KEYS) {
            int base = b0 + kg;
            // (a key past the chunk reads the chunk's last again, its score never stored: no load behind a
            // branch, so the KEYS loads are in flight together rather than one after another)
            uint4 kv[KEYS];
#pragma unroll
            for (int u = 0; u < KEYS; u++) {
                int j = c0 + min(base + u * KPW * ATT_WARPS, cn - 1);
                kv[u] = *(const uint4 *)(kp + ((size_t)tab[j / BT] * BT + j % BT) * kd + ho + lt * 8);
            }
#pragma unroll
            for (int u = 0; u < KEYS; u++) {
                int t = base + u * KPW * ATT_WARPS;
                const __nv_bfloat16 *k8 = (const __nv_bfloat16 *)&kv[u];
                float kf[8];
#pragma unroll
                for (int e = 0; e < 8; e++) kf[e] = __bfloat162float(k8[e]);
#pragma unroll
                for (int g = 0; g < GM; g++) {
                    if (!QREG && g >= G) break;
                    float x = 0;
                    if constexpr (QREG) {
#pragma unroll
                        for (int e = 0; e < 8; e++) x += qr[g][e] * kf[e];
                    } else {
                        const float *qg = qs + g * HS + lt * 8;
#pragma unroll
                        for (int e = 0; e < 8; e++) x += qg[e] * kf[e];
                    }
#pragma unroll
                    for (int o = TG / 2; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
                    if (lt == 0 && t < cn && g < G) s[g * ATT_CH + t] = x;
                }
            }
        }
        __syncthreads();
        chunk_softmax(s, alpha, mm, ll, G, cn, warp, lane);
        __syncthreads();
        // values: warp w sums positions w, w + ATT_WARPS, ...; lane has channels [lane DPL, lane DPL + DPL)
#pragma unroll
        for (int g = 0; g < GM; g++) {
            if (g >= G) break;
#pragma unroll
            for (int d = 0; d < DPL; d++) acc[g][d] *= alpha[g];
        }
        for (int t0 = warp; t0 < cn; t0 += ATT_WARPS * KEYS) {
            // (as the keys': past the chunk, its last value again, never summed; the loads all in flight
            // before the first is used)
            typedef typename ValueLoad<DPL>::T VL;
            VL raw[KEYS];
#pragma unroll
            for (int u = 0; u < KEYS; u++) {
                int j = c0 + min(t0 + u * ATT_WARPS, cn - 1);
                raw[u] = *(const VL *)(vp + ((size_t)tab[j / BT] * BT + j % BT) * kd + ho + lane * DPL);
            }
            float vf[KEYS][DPL];
#pragma unroll
            for (int u = 0; u < KEYS; u++) {
                const __nv_bfloat16 *b = (const __nv_bfloat16 *)&raw[u];
#pragma unroll
                for (int d = 0; d < DPL; d++) vf[u][d] = __bfloat162float(b[d]);
            }
#pragma unroll
            for (int u = 0; u < KEYS; u++) {
                int t = t0 + u * ATT_WARPS;
                if (t >= cn) break;
#pragma unroll
                for (int g = 0; g < GM; g++) {
                    if (g >= G) break;
                    float p = s[g * ATT_CH + t];
#pragma unroll
                    for (int d = 0; d < DPL; d++) acc[g][d] += p * vf[u][d];
                }
            }
        }
        __syncthreads(); // s is rewritten by the next chunk
    }
    // the warps' sums
    float *red = ll + G;
#pragma unroll
    for (int g = 0; g < GM; g++) {
        if (g >= G) break;
#pragma unroll
        for (int d = 0; d < DPL; d++) red[((size_t)warp * G + g) * HS + lane * DPL + d] = acc[g][d];
    }
    __syncthreads();
    for (int e = tid; e < G * HS; e += ATT_THREADS) {
        int g = e / HS, d = e % HS;
        float x = 0;
        for (int w = 0; w < ATT_WARPS; w++) x += red[((size_t)w * G + g) * HS + d];
        paged_put(out, work, mm, ll, x, i, kh, g, d, G, NH, HS, ns, sp);
    }
}

// grid N*NH: the splits' partials -> out (HS)
// (each split's m and l read once into shared memory by as many threads, and a thread's channel of 8 splits
// loaded together: read one after another by every thread, they were two round trips a split; the same sums
// in the same order)
#define COMBINE_BATCH 8
template <typename A> __global__ void paged_combine_kernel(A *out, const float *work, int HS, int ns) {
    pq_pdl_launch_dependents(); // (o_proj's product, PQ_PDL: common.cuh)
    extern __shared__ float ml[]; // (m, l) of each split
    size_t ih = blockIdx.x;
    const float *w = work + ih * ns * (HS + 2);
    for (int sp = threadIdx.x; sp < ns; sp += blockDim.x)
        ml[2 * sp] = w[sp * (HS + 2)], ml[2 * sp + 1] = w[sp * (HS + 2) + 1];
    __syncthreads();
    float M = -INFINITY, L = 0;
    for (int sp = 0; sp < ns; sp++)
        if (ml[2 * sp + 1] > 0) M = fmaxf(M, ml[2 * sp]);
    for (int sp = 0; sp < ns; sp++)
        if (ml[2 * sp + 1] > 0) L += ml[2 * sp + 1] * expf(ml[2 * sp] - M);
    for (int d = threadIdx.x; d < HS; d += blockDim.x) {
        float x = 0;
        for (int s0 = 0; s0 < ns; s0 += COMBINE_BATCH) {
            float o[COMBINE_BATCH];
#pragma unroll
            for (int u = 0; u < COMBINE_BATCH; u++) o[u] = s0 + u < ns ? w[(s0 + u) * (HS + 2) + 2 + d] : 0.0f;
#pragma unroll
            for (int u = 0; u < COMBINE_BATCH; u++) {
                int sp = s0 + u;
                if (sp < ns && ml[2 * sp + 1] > 0) x += o[u] * expf(ml[2 * sp] - M);
            }
        }
        pq_st(out, ih * HS + d, x / L);
    }
}

// Dynamic shared memory above the default 48 KB is an opt-in, a kernel at a time: asked for only where a launch
// needs more than *have, what kernel was let take so far (a host call, once made at every launch). *have is
// recorded only where the call succeeded: one that failed while a graph was captured (pq_cuda_fail returned) is
// made again.
template <typename K> static void smem_opt_in(K *kernel, size_t smem, size_t *have) {
    if (smem <= 48 * 1024 || smem <= *have) return;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (err != cudaSuccess)
        pq_cuda_fail("cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem)",
                     cudaGetErrorString(err), __FILE__, __LINE__);
    else *have = smem;
}

template <typename T, int GM, typename A>
static void attn_launch(A *out, float *work, const A *q, const void *kp, const void *vp, const int32_t *tables,
                        int maxblk, const int32_t *len, int N, int NH, int KVH, int HS, int BT, int window, int SL,
                        int ns) {
    int G = NH / KVH;
    size_t smem = ((size_t)G * HS + (size_t)G * ATT_CH + 3 * (size_t)G) * sizeof(float);
    paged_attn_kernel<T, GM, A><<<dim3(ns, KVH, N), ATT_THREADS, smem, pq_cuda_stream>>>(
        out, work, q, (const T *)kp, (const T *)vp, tables, maxblk, len, NH, KVH, HS, BT, window, SL, ns,
        1.0f / sqrtf((float)HS));
    CU_LAUNCHED();
}

template <typename T, typename A>
static void attn_dispatch(A *out, float *work, const A *q, const void *kp, const void *vp,
                          const int32_t *tables, int maxblk, const int32_t *len, int N, int NH, int KVH, int HS, int BT,
                          int window, int SL, int ns) {
    int G = NH / KVH;
#define PQ_ATT_CASE(GM)                                                                                               \
    if (G <= GM) {                                                                                                    \
        attn_launch<T, GM, A>(out, work, q, kp, vp, tables, maxblk, len, N, NH, KVH, HS, BT, window, SL, ns);       \
        return;                                                                                                       \
    }
    PQ_ATT_CASE(1)
    PQ_ATT_CASE(2)
    PQ_ATT_CASE(4)
    PQ_ATT_CASE(8)
    PQ_ATT_CASE(16)
#undef PQ_ATT_CASE
}

// The fast kernel for a bf16 cache of head size 64 or 128; PQ_PAGED_FAST=0 keeps the general one (read once).
static int fast_on(void) {
    static int on = -1;
    return pq_env_switch(&on, "PQ_PAGED_FAST", true);
}

// the fast kernel's shared memory for a query group of G
template <int HS> static size_t fast_smem(int G) {
    return ((size_t)G * HS + (size_t)G * ATT_CH + 3 * (size_t)G + (size_t)ATT_WARPS * G * HS) * sizeof(float);
}

template <int HS, int GM, int KEYS, typename A>
static void fast_launch(A *out, float *work, const A *q, const void *kp, const void *vp, const int32_t *tables,
                        int maxblk, const int32_t *len, int N, int NH, int KVH, int BT, int window, int SL, int ns) {
    int G = NH / KVH;
    size_t smem = fast_smem<HS>(G);
    static size_t have; // (asked once for the instantiation's largest group, GM: over 48 KB at GM 16, HS 128)
    smem_opt_in(paged_attn_fast_kernel<HS, GM, KEYS, A>, fast_smem<HS>(GM), &have);
    paged_attn_fast_kernel<HS, GM, KEYS, A><<<dim3(ns, KVH, N), ATT_THREADS, smem, pq_cuda_stream>>>(
        out, work, q, (const __nv_bfloat16 *)kp, (const __nv_bfloat16 *)vp, tables, maxblk, len, NH, KVH, BT, window,
        SL, ns, 1.0f / sqrtf((float)HS));
    CU_LAUNCHED();
}

// PQ_PAGED_KEYS=8 (read once; pq_cuda_set_paged_keys overrides): the fast kernel's keys in flight, else 4
static int keys_set = -1;
extern "C" void pq_cuda_set_paged_keys(int keys) { keys_set = keys < 0 ? -1 : keys == 8 ? 8 : 4; }
static int paged_keys(void) {
    if (keys_set < 0) {
        const char *e = getenv("PQ_PAGED_KEYS");
        keys_set = e && !strcmp(e, "8") ? 8 : 4;
    }
    return keys_set;
}

template <typename A>
static void fast_dispatch(A *out, float *work, const A *q, const void *kp, const void *vp,
                          const int32_t *tables, int maxblk, const int32_t *len, int N, int NH, int KVH, int HS, int BT,
                          int window, int SL, int ns) {
    int G = NH / KVH, keys = paged_keys();
#define PQ_FAST_CASE(GM)                                                                                              \
    if (G <= GM) {                                                                                                    \
        if (HS == 128 && keys == 8)                                                                                   \
            fast_launch<128, GM, 8, A>(out, work, q, kp, vp, tables, maxblk, len, N, NH, KVH, BT, window, SL, ns);       \
        else if (HS == 128)                                                                                           \
            fast_launch<128, GM, 4, A>(out, work, q, kp, vp, tables, maxblk, len, N, NH, KVH, BT, window, SL, ns);       \
        else if (keys == 8)                                                                                           \
            fast_launch<64, GM, 8, A>(out, work, q, kp, vp, tables, maxblk, len, N, NH, KVH, BT, window, SL, ns);        \
        else fast_launch<64, GM, 4, A>(out, work, q, kp, vp, tables, maxblk, len, N, NH, KVH, BT, window, SL, ns);      \
        return;                                                                                                       \
    }
    PQ_FAST_CASE(1)
    PQ_FAST_CASE(2)
    PQ_FAST_CASE(4)
    PQ_FAST_CASE(8)
    PQ_FAST_CASE(16)
#undef PQ_FAST_CASE
}

static float *own_work;
static size_t own_work_bytes;

// The splits' kernels and their combine, q and out of the activations' type A
template <typename A>
static void paged_attention(A *out, const A *q, const void *kp, const void *vp, PqDtype dt, const int32_t *tables,
                            int maxblk, const int32_t *len, int N, int NH, int KVH, int HS, int BT, int window,
                            float *work, int SL, int ns) {
    if (dt == PQ_BF16 && (HS == 128 || HS == 64) && fast_on())
        fast_dispatch(out, work, q, kp, vp, tables, maxblk, len, N, NH, KVH, HS, BT, window, SL, ns);
    else if (dt == PQ_BF16)
        attn_dispatch<__nv_bfloat16>(out, work, q, kp, vp, tables, maxblk, len, N, NH, KVH, HS, BT, window, SL, ns);
    else attn_dispatch<float>(out, work, q, kp, vp, tables, maxblk, len, N, NH, KVH, HS, BT, window, SL, ns);
    if (ns > 1) {
        // (m, l) of each split: over 48 KB past 6,144 splits, which PQ_PAGED_SPLITS can ask for where contexts
        // pass 393,216 positions (a split has 64 at least); past the opt-in limit (227 KB on Hopper) the call fails
        size_t smem = 2 * (size_t)ns * sizeof(float);
        static size_t have;
        smem_opt_in(paged_combine_kernel<A>, smem, &have);
        paged_combine_kernel<<<N * NH, HS < 128 ? 64 : 128, smem, pq_cuda_stream>>>(out, work, HS, ns);
        CU_LAUNCHED();
    }
}

extern "C" void pq_paged_attention_forward(float *out, const float *q, const void *kp, const void *vp, PqDtype dt,
                                           const int32_t *tables, int maxblk, const int32_t *len, int N, int NH,
                                           int KVH, int HS, int BT, int window, int max_len, float *work) {
    if (N <= 0) return;
    if (HS > 2 * ATT_THREADS || NH % KVH || NH / KVH > 16 || (dt != PQ_F32 && dt != PQ_BF16))
        pq_cuda_fail("pq_paged_attention_forward", "head size > 256, query group > 16 or a dtype not f32/bf16",
                     __FILE__, __LINE__);
    int SL, ns = pq_paged_splits(N, KVH, max_len, &SL);
    if (ns > 1 && !work) { // the caller's work is better (CUDA graphs); else ours, grown
        size_t need = pq_paged_attention_work(N, NH, KVH, HS, max_len);
        if (need * sizeof(float) > own_work_bytes) pq_cuda_regrow(&own_work, &own_work_bytes, need * sizeof(float));
        work = own_work;
    }
    if (pq_cuda_act_bf16())
        paged_attention((pq_bf16 *)out, (const pq_bf16 *)q, kp, vp, dt, tables, maxblk, len, N, NH, KVH, HS, BT,
                        window, work, SL, ns);
    else paged_attention(out, q, kp, vp, dt, tables, maxblk, len, N, NH, KVH, HS, BT, window, work, SL, ns);
}

// ---- prefill with context: cuDNN's fused attention over the paged cache ----

static int cudnn_calls;
static char cudnn_err[512];
extern "C" int pq_paged_cudnn_calls(void) { return cudnn_calls; }
extern "C" const char *pq_paged_cudnn_error(void) { return cudnn_err; }

// PQ_PAGED_ATTN: auto (cuDNN when a segment has more than one row: a chunk after its context), cudnn (every
// call, decoding rows too), kernel (the paged kernel alone)
enum { PA_AUTO, PA_CUDNN, PA_KERNEL };
static int paged_attn_mode(void) {
    static int mode = -1;
    if (mode < 0) {
        const char *e = getenv("PQ_PAGED_ATTN");
        if (!e || !*e || !strcmp(e, "auto")) mode = PA_AUTO;
        else if (!strcmp(e, "cudnn")) mode = PA_CUDNN;
        else if (!strcmp(e, "kernel")) mode = PA_KERNEL;
        else { // (lib/ never exits: said, and the default serves, as PQ_KV's)
            fprintf(stderr, "pq: PQ_PAGED_ATTN=%s is not auto, cudnn or kernel; using auto\n", e);
            mode = PA_AUTO;
        }
    }
    return mode;
}

static inline int pow2_at_least(int n) {
    int p = 1;
    while (p < n) p *= 2;
    return p;
}

// One block per segment of the call's B (nseg real, then padding): its rows, keys, first element and table
// (mb entries: the row's maxblk, then block 0). A padding segment is one row past the real ones (N + its
// number - nseg) reading one key of block 0: its output is never read.
__global__ void paged_seg_kernel(int32_t *seq_q, int32_t *seq_k, int64_t *off, int32_t *ptab, const int32_t *seg,
                                 const int32_t *len, const int32_t *tables, int maxblk, int mb, int nseg, int B,
                                 int N, int64_t rowel) {
    int s = blockIdx.x, real = s < nseg;
    int a = real ? seg[s] : N + (s - nseg), b = real ? seg[s + 1] : a + 1;
    if (threadIdx.x == 0) {
        seq_q[s] = b - a;
        seq_k[s] = real ? len[b - 1] : 1;
        off[s] = (int64_t)a * rowel;
        if (s == B - 1) off[B] = (int64_t)b * rowel;
    }
    for (int k = threadIdx.x; k < mb; k += blockDim.x)
        ptab[(size_t)s * mb + k] = real && k < maxblk ? tables[(size_t)a * maxblk + k] : 0;
}

static void *pf_buf;
static size_t pf_cap;
static inline size_t pf_align(size_t bytes) { return (bytes + 255) / 256 * 256; }

// The segments through cuDNN: 0, or -1 with the reason in cudnn_err (nothing written).
static int prefill_cudnn(float *out, const float *q, const void *kp, const void *vp, const int32_t *tables,
                         int maxblk, const int32_t *len, const int32_t *seg, int nseg, int max_q, int N, int NH,
                         int KVH, int HS, int BT, int NB, int window) {
    // plans are cached by shape: the segments and table width go up in powers of two, the rows in
    // pq_attn_plan_bucket's steps (as the training path's)
    int B = pow2_at_least(nseg), mb = pow2_at_least(maxblk), sq = pq_attn_plan_bucket(max_q);
    // the tables reach at least the rows' bucket (short contexts: 64 rows against 16 or 32 positions), so the
    // graph's largest query never exceeds its largest key sequence, a shape cuDNN's samples and tests avoid;
    // the extra entries are block 0, past every seq_k
    while (mb * BT < sq) mb *= 2;
    size_t rowel = (size_t)NH * HS, rows = (size_t)N + (B - nseg);
    // q's and out's bf16 copies, the offsets, the lengths and the tables, each at a multiple of 256 bytes:
    // cuDNN's tensors are declared 16-byte aligned (the front end's default), and execute refuses a pointer
    // that is not (CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER)
    size_t a16 = pf_align((size_t)rows * rowel * 2), o_off = 2 * a16, o_sq = o_off + pf_align((size_t)(B + 1) * 8);
    size_t o_sk = o_sq + pf_align((size_t)B * 4), o_pt = o_sk + pf_align((size_t)B * 4);
    size_t need = o_pt + pf_align((size_t)B * mb * 4);
    if (need > pf_cap) pq_cuda_regrow(&pf_buf, &pf_cap, need + need / 4);
    char *p = (char *)pf_buf;
    // bf16 activations and no padding segment: cuDNN reads q and writes out where they are; else their copies
    bool direct = pq_cuda_act_bf16() && rows == (size_t)N && !(((uintptr_t)q | (uintptr_t)out) & 15);
    const pq_bf16 *q16 = direct ? (const pq_bf16 *)q : (const pq_bf16 *)p;
    pq_bf16 *o16 = direct ? (pq_bf16 *)out : (pq_bf16 *)(p + a16);
    int64_t *off = (int64_t *)(p + o_off);
    int32_t *seq_q = (int32_t *)(p + o_sq), *seq_k = (int32_t *)(p + o_sk), *ptab = (int32_t *)(p + o_pt);
    paged_seg_kernel<<<B, 128, 0, pq_cuda_stream>>>(seq_q, seq_k, off, ptab, seg, len, tables, maxblk, mb, nseg, B, N,
                                                   (int64_t)rowel);
    CU_LAUNCHED();
    if (!direct) { // q's copy (bf16 activations: as it is), in the buffer that has the padding rows
        pq_bf16 *qc = (pq_bf16 *)p;
        if (pq_cuda_act_bf16())
            CU(cudaMemcpyAsync(qc, q, (size_t)N * rowel * sizeof *qc, cudaMemcpyDeviceToDevice, pq_cuda_stream));
        else pq_cuda_act_narrow(qc, q, (size_t)N * rowel);
        if (rows > (size_t)N) // the padding segments' rows: read by cuDNN, never used; zeros, not uninitialised
            CU(cudaMemsetAsync(qc + (size_t)N * rowel, 0, (rows - N) * rowel * sizeof *qc, pq_cuda_stream));
    }
    // the window as a band only where it can cut: no key is further back than the tables reach (mb * BT
    // positions), so a window at least that long is no band (as attn_plan.c's left_bound; fewer plans, and a
    // windowed model's usual contexts leave cuDNN the plain bottom-right causal graph)
    int band = window > 0 && window + 1 < mb * BT ? window + 1 : 0;
    PqSdpaPagedCall c = {B, sq, mb, BT, NB, NH, KVH, HS, band, 1.0f / sqrtf((float)HS), seq_q, seq_k, ptab, off};
    if (pq_sdpa_paged_forward(&c, o16, q16, kp, vp, cudnn_err, sizeof cudnn_err)) return -1;
    if (!direct && pq_cuda_act_bf16())
        CU(cudaMemcpyAsync(out, o16, (size_t)N * rowel * sizeof *o16, cudaMemcpyDeviceToDevice, pq_cuda_stream));
    else if (!direct) pq_cuda_act_widen(out, o16, (size_t)N * rowel);
    cudnn_calls++;
    return 0;
}

extern "C" void pq_paged_prefill_forward(float *out, const float *q, const void *kp, const void *vp, PqDtype dt,
                                         const int32_t *tables, int maxblk, const int32_t *len, const int32_t *seg,
                                         int nseg, int max_q, int N, int NH, int KVH, int HS, int BT, int NB,
                                         int window, int max_len, float *work) {
    if (N <= 0) return;
    static int said; // a refusal is said once (sdpa.cpp asks cuDNN once a shape); the kernel serves the call
    int mode = paged_attn_mode();
    if (dt == PQ_BF16 && (mode == PA_CUDNN || (mode == PA_AUTO && max_q > 1))) {
        if (!prefill_cudnn(out, q, kp, vp, tables, maxblk, len, seg, nseg, max_q, N, NH, KVH, HS, BT, NB, window))
            return;
        if (!said++) fprintf(stderr, "pq: %s; the paged kernel serves the rows\n", cudnn_err);
    }
    pq_paged_attention_forward(out, q, kp, vp, dt, tables, maxblk, len, N, NH, KVH, HS, BT, window, max_len, work);
}

// ---- sampling ----

#define SMP_THREADS 1024
#define SMP_WARPS (SMP_THREADS / 32)

// order-preserving key of a float: a > b <=> key(a) > key(b); -0 and +0 get one key, as they tie in the CPU's
// sort (pq_sort_desc), so a logit of exactly 0 is cut or kept by top-k / top-p as there
__device__ __forceinline__ uint32_t okey(float z) {
    uint32_t u = __float_as_uint(z == 0.0f ? 0.0f : z);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

struct SmpShared {
    float f[SMP_WARPS];
    double d[SMP_WARPS];
    int n[SMP_WARPS];
    int idx[SMP_WARPS];
    unsigned hist[256];
    double mass[256];
    int chunk[SMP_THREADS];
    uint32_t sel;
    int want, vcut;
    double above;
};

// a block's passes over a row of V logits, SMP_BATCH elements of a thread's (v, v + SMP_THREADS, ...) loaded
// together (one at a time, each a round trip to L2, they set a one-row pass's pace), then handed to f in
// order; past V, nothing
#define SMP_BATCH 8
template <typename F> __device__ __forceinline__ void row_pass(const float *x, int V, F f) {
    for (int v0 = threadIdx.x; v0 < V; v0 += SMP_BATCH * SMP_THREADS) {
        float xv[SMP_BATCH];
#pragma unroll
        for (int u = 0; u < SMP_BATCH; u++) {
            int v = v0 + u * SMP_THREADS;
            xv[u] = v < V ? x[v] : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < SMP_BATCH; u++)
            if (v0 + u * SMP_THREADS < V) f(v0 + u * SMP_THREADS, xv[u]);
    }
}

__device__ float blk_max(float x, SmpShared *sh) {
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sh->f[threadIdx.x >> 5] = x;
    __syncthreads();
    float r = sh->f[0];
    for (int w = 1; w < SMP_WARPS; w++) r = fmaxf(r, sh->f[w]);
    return r;
}
__device__ double blk_sum_d(double x, SmpShared *sh) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sh->d[threadIdx.x >> 5] = x;
    __syncthreads();
    double r = 0;
    for (int w = 0; w < SMP_WARPS; w++) r += sh->d[w];
    return r;
}
__device__ int blk_sum_i(int x, SmpShared *sh) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sh->n[threadIdx.x >> 5] = x;
    __syncthreads();
    int r = 0;
    for (int w = 0; w < SMP_WARPS; w++) r += sh->n[w];
    return r;
}
// the (key, id) with the largest key, the lowest id among equal keys (id -1: none)
__device__ int blk_argmax(double key, int id, SmpShared *sh) {
    for (int o = 16; o > 0; o >>= 1) {
        double k2 = __shfl_xor_sync(0xffffffffu, key, o);
        int i2 = __shfl_xor_sync(0xffffffffu, id, o);
        if (i2 >= 0 && (id < 0 || k2 > key || (k2 == key && i2 < id))) key = k2, id = i2;
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sh->d[threadIdx.x >> 5] = key, sh->idx[threadIdx.x >> 5] = id;
    __syncthreads();
    double bk = sh->d[0];
    int bi = sh->idx[0];
    for (int w = 1; w < SMP_WARPS; w++) {
        double k2 = sh->d[w];
        int i2 = sh->idx[w];
        if (i2 >= 0 && (bi < 0 || k2 > bk || (k2 == bk && i2 < bi))) bk = k2, bi = i2;
    }
    return bi;
}

// One block per row: argmax, or the cuts found by radix selection on the
// order-preserving keys of z = logit / temperature (top-k by counts, top-p
// by probability mass, 8 bits a pass), then the exponential race.
__global__ void __launch_bounds__(SMP_THREADS) sample_kernel(int32_t *ids, const float *logits,
                                                             const PqSampleRow *rows, int V) {
    __shared__ SmpShared sh;
    int i = blockIdx.x, tid = threadIdx.x;
    const float *x = logits + (size_t)i * V;
    PqSampleRow r = rows[i];
    if (!(r.temperature > 0)) {
        double bk = 0;
        int bi = -1;
        row_pass(x, V, [&](int v, float xv) {
            if (xv != -INFINITY && (bi < 0 || xv > bk)) bk = xv, bi = v;
        });
        int best = blk_argmax(bk, bi, &sh);
        if (tid == 0) ids[i] = best;
        return;
    }
    float T = r.temperature, zm = -INFINITY;
    int cnt = 0;
    for (int v = tid; v < V; v += SMP_THREADS)
        if (x[v] != -INFINITY) zm = fmaxf(zm, x[v] / T), cnt++;
    float zmax = blk_max(zm, &sh);
    int nfin = blk_sum_i(cnt, &sh);
    if (nfin == 0) {
        if (tid == 0) ids[i] = -1;
        return;
    }
    // top-k: the key of the k-th largest z; kept: finite and key >= thrk
    uint32_t thrk = 0;
    if (r.top_k > 0 && r.top_k < nfin) {
        uint32_t prefix = 0, mask = 0;
        if (tid == 0) sh.want = r.top_k;
        for (int shift = 24; shift >= 0; shift -= 8) {
            for (int b = tid; b < 256; b += SMP_THREADS) sh.hist[b] = 0;
            __syncthreads();
            for (int v = tid; v < V; v += SMP_THREADS) {
                if (x[v] == -INFINITY) continue;
                uint32_t k = okey(x[v] / T);
                if ((k & mask) == prefix) atomicAdd(&sh.hist[(k >> shift) & 255], 1u);
            }
            __syncthreads();
            if (tid == 0) {
                int cum = 0, b = 255;
                for (; b > 0; b--) {
                    if (cum + (int)sh.hist[b] >= sh.want) break;
                    cum += sh.hist[b];
                }
                sh.sel = (uint32_t)b;
                sh.want -= cum;
            }
            __syncthreads();
            prefix |= sh.sel << shift;
            mask |= 255u << shift;
        }
        thrk = prefix;
    }
    double mine = 0;
    for (int v = tid; v < V; v += SMP_THREADS) {
        if (x[v] == -INFINITY) continue;
        float z = x[v] / T;
        if (okey(z) >= thrk) mine += exp((double)z - zmax);
    }
    double Z = blk_sum_d(mine, &sh);
    // top-p: tau, the largest key whose mass at or above it reaches top_p;
    // of the tokens at tau, those with ids <= vcut are kept
    uint32_t tau = 0;
    int vcut = V;
    if (r.top_p < 1) {
        double target = (double)r.top_p * Z;
        uint32_t prefix = 0, mask = 0;
        if (tid == 0) sh.above = 0;
        for (int shift = 24; shift >= 0; shift -= 8) {
            for (int b = tid; b < 256; b += SMP_THREADS) sh.mass[b] = 0, sh.hist[b] = 0;
            __syncthreads();
            for (int v = tid; v < V; v += SMP_THREADS) {
                if (x[v] == -INFINITY) continue;
                float z = x[v] / T;
                uint32_t k = okey(z);
                if (k >= thrk && (k & mask) == prefix) {
                    atomicAdd(&sh.mass[(k >> shift) & 255], exp((double)z - zmax));
                    atomicAdd(&sh.hist[(k >> shift) & 255], 1u);
                }
            }
            __syncthreads();
            if (tid == 0) {
                double cum = sh.above;
                int b = 255, last = -1;
                for (; b >= 0; b--) {
                    if (!sh.hist[b]) continue;
                    last = b;
                    if (cum + sh.mass[b] >= target) break;
                    cum += sh.mass[b];
                }
                if (b < 0) b = last, cum -= sh.mass[last]; // rounding left the mass short: the last bin
                sh.sel = (uint32_t)b;
                sh.above = cum;
            }
            __syncthreads();
            prefix |= sh.sel << shift;
            mask |= 255u << shift;
        }
        tau = prefix;
        // ties at tau: kept in id order while the mass before stays below target
        int nt = 0;
        float ztau = 0;
        for (int v = tid; v < V; v += SMP_THREADS)
            if (x[v] != -INFINITY && okey(x[v] / T) == tau) nt++, ztau = x[v] / T;
        int ntie = blk_sum_i(nt, &sh);
        if (tid == 0) sh.f[0] = 0;
        __syncthreads();
        if (nt) sh.f[0] = ztau; // every writer writes the same value
        __syncthreads();
        ztau = sh.f[0];
        if (tid == 0) {
            double e = exp((double)ztau - zmax), before = sh.above;
            int keep = 0;
            while (keep < ntie && (keep == 0 || before < target)) before += e, keep++;
            sh.want = keep;
        }
        __syncthreads();
        int keep = sh.want;
        if (keep < ntie) { // the id of the keep-th tie: per-thread contiguous chunks, counted then scanned
            int per = (V + SMP_THREADS - 1) / SMP_THREADS, a = tid * per, b = min(V, a + per), c = 0;
            for (int v = a; v < b; v++)
                if (x[v] != -INFINITY && okey(x[v] / T) == tau) c++;
            sh.chunk[tid] = c;
            __syncthreads();
            if (tid == 0) {
                int acc = 0;
                for (int t = 0; t < SMP_THREADS; t++) {
                    int cc = sh.chunk[t];
                    sh.chunk[t] = acc;
                    acc += cc;
                }
            }
            __syncthreads();
            int before = sh.chunk[tid];
            if (before < keep && before + c >= keep) {
                int seen = before;
                for (int v = a; v < b; v++)
                    if (x[v] != -INFINITY && okey(x[v] / T) == tau && ++seen == keep) sh.vcut = v;
            }
            __syncthreads();
            vcut = sh.vcut;
        }
    }
    double mp = r.min_p > 1 ? 1.0 : (double)r.min_p;
    uint64_t key = pq_sample_key(r.seed, r.seq, r.step);
    double bk = 0;
    int bi = -1;
    for (int v = tid; v < V; v += SMP_THREADS) {
        if (x[v] == -INFINITY) continue;
        float z = x[v] / T;
        uint32_t k = okey(z);
        if (k < thrk || k < tau || (k == tau && v > vcut)) continue;
        if (mp > 0 && !(exp((double)z - zmax) >= mp)) continue;
        double g = (double)z - log(-log(pq_sample_uniform(key, v)));
        if (bi < 0 || g > bk) bk = g, bi = v;
    }
    int best = blk_argmax(bk, bi, &sh);
    if (tid == 0) ids[i] = best;
}

extern "C" void pq_sample(int32_t *ids, const float *logits, const PqSampleRow *rows, int N, int V) {
    if (N <= 0) return;
    sample_kernel<<<N, SMP_THREADS, 0, pq_cuda_stream>>>(ids, logits, rows, V);
    CU_LAUNCHED();
}

__global__ void mask_logits_kernel(float *logits, const uint32_t *bits, const int32_t *rows, int V, size_t W) {
    int k = blockIdx.y, v = blockIdx.x * blockDim.x + threadIdx.x;
    if (v >= V) return;
    if (!(bits[(size_t)k * W + (v >> 5)] >> (v & 31) & 1)) logits[(size_t)rows[k] * V + v] = -INFINITY;
}

extern "C" void pq_mask_logits(float *logits, const uint32_t *bits, const int32_t *rows, int n, int V) {
    if (n <= 0) return;
    dim3 grid((unsigned)((V + 255) / 256), (unsigned)n);
    mask_logits_kernel<<<grid, 256, 0, pq_cuda_stream>>>(logits, bits, rows, V, ((size_t)V + 31) / 32);
    CU_LAUNCHED();
}

// ---- the log-probabilities of drawn tokens ----

// one block a row, the sampler's: its max, then the sum of exp(x - max) in double (blk_max, blk_sum_d)
__global__ void __launch_bounds__(SMP_THREADS) row_lse_kernel(float *lse, const float *logits, int V) {
    __shared__ SmpShared sh;
    const float *x = logits + (size_t)blockIdx.x * V;
    float m = -INFINITY;
    row_pass(x, V, [&](int, float xv) { m = fmaxf(m, xv); });
    m = blk_max(m, &sh);
    double sum = 0;
    if (m != -INFINITY) row_pass(x, V, [&](int, float xv) { sum += xv == -INFINITY ? 0.0 : (double)expf(xv - m); });
    sum = blk_sum_d(sum, &sh);
    if (threadIdx.x == 0) lse[blockIdx.x] = m == -INFINITY ? -INFINITY : m + (float)log(sum);
}

extern "C" void pq_row_lse(float *lse, const float *logits, int N, int V) {
    if (N <= 0) return;
    row_lse_kernel<<<N, SMP_THREADS, 0, pq_cuda_stream>>>(lse, logits, V);
    CU_LAUNCHED();
}

__global__ void token_logp_kernel(float *lp, const float *logits, const int32_t *ids, const float *lse, int N, int V) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < N) lp[i] = ids[i] >= 0 ? logits[(size_t)i * V + ids[i]] - lse[i] : 0.0f;
}

extern "C" void pq_token_logp(float *lp, const float *logits, const int32_t *ids, const float *lse, int N, int V) {
    if (N <= 0) return;
    token_logp_kernel<<<pq_blocks((size_t)N, 128), 128, 0, pq_cuda_stream>>>(lp, logits, ids, lse, N, V);
    CU_LAUNCHED();
}
