// gemv.cu: the products of few rows (a decoding step's; up to 8, used for PQ_GEMV_MAX_N) with bf16/f16
// weights, at the pace of reading the weights. cuBLAS's choice for such
// shapes reads them far below the memory's bandwidth, and every step reads all
// of them: out (N,OC) f32 = inp (N,C) f32 x W (OC,C)^T (+ bias). Each warp owns
// R rows of W and reads them with 16-byte loads (8 weights), several in flight;
// the input rows (f32, small, cached in L1/L2) are read where they are, so no
// conversion (and no f16 scaling: the weight becomes f32, not the input).
#include <string.h>

#include "common.cuh"
#include "tuning.h"

#define GEMV_WARPS 4 // warps per block: small blocks, so that OC = 1024 still fills the SMs

// rows per warp (the input read from L1 serves R weight rows) and 16-byte loads per lane in flight per row
template <int N> struct GemvShape {
    static const int R = N == 1 ? 1 : N == 2 ? 2 : 4;
    static const int U = R == 1 ? 8 : 4;
};

// 8 weights of one 16-byte load as f32 (element 0 in the low half of q.x)
__device__ __forceinline__ void gemv_unpack(uint4 q, float *f, const __nv_bfloat16 *) {
    uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        f[2 * i] = __uint_as_float(w[i] << 16);
        f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}
__device__ __forceinline__ void gemv_unpack(uint4 q, float *f, const __half *) {
    uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        f[2 * i] = __half2float(__ushort_as_half((unsigned short)(w[i] & 0xffffu)));
        f[2 * i + 1] = __half2float(__ushort_as_half((unsigned short)(w[i] >> 16)));
    }
}

// Warp g owns rows g*R .. g*R+R-1 (those past OC read row OC-1 again and write nothing). Lane l reads the
// 16-byte vectors l, l+32, ... of each row (C/8 per row), U of them per row before using any.
template <typename T, int N>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv_kernel(float *out, const float *inp, const T *w, const float *bias, int C, int OC) {
    const int R = GemvShape<N>::R, U = GemvShape<N>::U;
    int lane = threadIdx.x & 31;
    int row0 = (blockIdx.x * GEMV_WARPS + threadIdx.x / 32) * R;
    if (row0 >= OC) return; // the whole warp
    const uint4 *wr[R];
#pragma unroll
    for (int r = 0; r < R; r++) wr[r] = (const uint4 *)(w + (size_t)min(row0 + r, OC - 1) * C);
    float acc[N][R];
#pragma unroll
    for (int n = 0; n < N; n++)
#pragma unroll
        for (int r = 0; r < R; r++) acc[n][r] = 0.0f;
    int nv = C / 8; // 16-byte vectors per row
    for (int v0 = lane; v0 < nv; v0 += 32 * U) {
        uint4 q[U][R];
#pragma unroll
        for (int u = 0; u < U; u++) {
            int v = v0 + u * 32;
#pragma unroll
            for (int r = 0; r < R; r++) q[u][r] = v < nv ? __ldcs(wr[r] + v) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            int v = v0 + u * 32;
            if (v >= nv) break;
            float f[R][8];
#pragma unroll
            for (int r = 0; r < R; r++) gemv_unpack(q[u][r], f[r], (const T *)0);
#pragma unroll
            for (int n = 0; n < N; n++) {
                const float4 *x = (const float4 *)(inp + (size_t)n * C) + 2 * v;
                float4 a = __ldg(x), b = __ldg(x + 1);
#pragma unroll
                for (int r = 0; r < R; r++)
                    acc[n][r] += f[r][0] * a.x + f[r][1] * a.y + f[r][2] * a.z + f[r][3] * a.w + f[r][4] * b.x +
                                 f[r][5] * b.y + f[r][6] * b.z + f[r][7] * b.w;
            }
        }
    }
#pragma unroll
    for (int n = 0; n < N; n++)
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) acc[n][r] += __shfl_xor_sync(0xffffffffu, acc[n][r], off);
    // every lane holds the N*R sums (<= 32): lane n*R+r writes out[n][row0+r]
#pragma unroll
    for (int n = 0; n < N; n++)
#pragma unroll
        for (int r = 0; r < R; r++) {
            int row = row0 + r;
            if (lane == n * R + r && row < OC) out[(size_t)n * OC + row] = acc[n][r] + (bias ? bias[row] : 0.0f);
        }
}

// PQ_GEMV=0 turns the kernel off (cuBLASLt for every product), read once; pq_cuda_set_gemv overrides.
static int gemv_state = -1;

extern "C" void pq_cuda_set_gemv(int on) { gemv_state = on < 0 ? -1 : on != 0; }

static bool gemv_on(void) {
    if (gemv_state < 0) {
        const char *s = getenv("PQ_GEMV");
        gemv_state = !(s && !strcmp(s, "0"));
    }
    return gemv_state != 0;
}

bool pq_cuda_gemv_fits(const float *inp, const PqWeight *w, int N, int C) {
    return gemv_on() && N >= 1 && N <= PQ_GEMV_MAX_N && (w->dtype == PQ_BF16 || w->dtype == PQ_F16) && C > 0 &&
           C % 8 == 0 && !(((uintptr_t)inp | (uintptr_t)w->data) & 15);
}

template <typename T, int N> static void gemv_launch(float *out, const float *inp, const void *w, const float *bias,
                                                      int C, int OC) {
    int warps = (OC + GemvShape<N>::R - 1) / GemvShape<N>::R;
    unsigned blocks = pq_blocks((size_t)warps, GEMV_WARPS);
    gemv_kernel<T, N><<<blocks, GEMV_WARPS * 32, 0, pq_cuda_stream>>>(out, inp, (const T *)w, bias, C, OC);
    CU_LAUNCHED();
}

template <typename T> static void gemv_t(float *out, const float *inp, const void *w, const float *bias, int N,
                                         int C, int OC) {
    switch (N) {
    case 1: gemv_launch<T, 1>(out, inp, w, bias, C, OC); break;
    case 2: gemv_launch<T, 2>(out, inp, w, bias, C, OC); break;
    case 3: gemv_launch<T, 3>(out, inp, w, bias, C, OC); break;
    case 4: gemv_launch<T, 4>(out, inp, w, bias, C, OC); break;
    case 5: gemv_launch<T, 5>(out, inp, w, bias, C, OC); break;
    case 6: gemv_launch<T, 6>(out, inp, w, bias, C, OC); break;
    case 7: gemv_launch<T, 7>(out, inp, w, bias, C, OC); break;
    default: gemv_launch<T, 8>(out, inp, w, bias, C, OC); break;
    }
}

void pq_cuda_gemv(float *out, const float *inp, const PqWeight *w, const float *bias, int N, int C, int OC) {
    if (OC <= 0) return;
    if (w->dtype == PQ_BF16) gemv_t<__nv_bfloat16>(out, inp, w->data, bias, N, C, OC);
    else gemv_t<__half>(out, inp, w->data, bias, N, C, OC);
}
