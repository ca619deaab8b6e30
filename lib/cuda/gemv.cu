// gemv.cu: the products of few rows (a decoding step's; up to 8, used for PQ_GEMV_MAX_N) with bf16/f16
// weights, at the pace of reading the weights. cuBLAS's choice for such
// shapes reads them far below the memory's bandwidth, and every step reads all
// of them: out (N,OC) = inp (N,C) x W (OC,C)^T (+ bias), inp and out in the
// activations' storage (f32, or bf16 rounded once: ops.h). Each warp owns
// R rows of W and reads them with 16-byte loads (8 weights), several in flight;
// the input rows (small, cached in L1/L2) are read where they are, so no
// conversion (and no f16 scaling: the weight becomes f32, not the input).
// One launch also serves a decoding step's fusions (ops_gen.h, PQ_DECODE_FUSE):
// a layer's q, k and v side by side, a product added to the residual stream,
// and the MLP's gate and up with silu(gate) * up in the epilogue; with bf16
// activations each rounds where its composition's ops round.
#include <string.h>

#include "common.cuh"
#include "ops_gen.h"
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

// What one launch computes: up to PQ_GROUP_MAX products of the same input, their warps side by side (a layer's
// q, k and v), each written to its own out[t]; or one product added to out (the residual stream); or the MLP's
// gate and up products, silu(gate) * up written where neither is kept.
enum { GEMV_STORE, GEMV_ADD, GEMV_SWIGLU };
struct GemvJob {
    const void *w[PQ_GROUP_MAX]; // SWIGLU: w[0] the gate's, w[1] the up's
    const float *bias[PQ_GROUP_MAX];
    void *out[PQ_GROUP_MAX]; // of the activations' type
    int rows[PQ_GROUP_MAX]; // out[t] is (N, rows[t])
    int wend[PQ_GROUP_MAX]; // warps of products 0 .. t (past n: all of them)
    int n;                  // products (SWIGLU: 1, of rows[0] outputs)
};
static_assert(PQ_GROUP_MAX == 3, "gemv_kernel picks a job's product among three");

// 8 input values of row n, vector v (16-byte aligned): two 16-byte loads of f32, one of bf16
__device__ __forceinline__ void gemv_in(const float *inp, size_t at, float *f) {
    const float4 *x = (const float4 *)(inp + at);
    float4 a = __ldg(x), b = __ldg(x + 1);
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}
__device__ __forceinline__ void gemv_in(const __nv_bfloat16 *inp, size_t at, float *f) {
    gemv_unpack(__ldg((const uint4 *)(inp + at)), f, (const __nv_bfloat16 *)0);
}
// a value as its composition stores it: rounded to bf16 with bf16 activations, as it is with f32
__device__ __forceinline__ float gemv_as(float v, const float *) { return v; }
__device__ __forceinline__ float gemv_as(float v, const __nv_bfloat16 *) {
    return __bfloat162float(__float2bfloat16_rn(v));
}

// The warp's output rows row0 .. row0+R-1 of product t read RW weight rows (R, or 2R for SWIGLU: the gate's then
// the up's; rows past the product's read its last again and write nothing). Lane l reads the 16-byte vectors l,
// l+32, ... of each row (C/8 per row), U of them per row before using any (U R or U RW/2 loads in flight alike).
template <typename T, typename A, int N, int EPI>
__global__ void __launch_bounds__(GEMV_WARPS * 32) gemv_kernel(GemvJob job, const A *inp, int C) {
    const int R = GemvShape<N>::R, RW = EPI == GEMV_SWIGLU ? 2 * R : R;
    const int U = EPI == GEMV_SWIGLU && GemvShape<N>::U > 1 ? GemvShape<N>::U / 2 : GemvShape<N>::U;
    int lane = threadIdx.x & 31;
    int wi = blockIdx.x * GEMV_WARPS + threadIdx.x / 32;
    if (wi >= job.wend[PQ_GROUP_MAX - 1]) return; // the whole warp
    int t = wi < job.wend[0] ? 0 : wi < job.wend[1] ? 1 : 2;
    // (the job's fields read at constant indices: a runtime index would copy the job to the stack)
    const T *w = (const T *)(t == 0 ? job.w[0] : t == 1 ? job.w[1] : job.w[2]);
    int OC = t == 0 ? job.rows[0] : t == 1 ? job.rows[1] : job.rows[2];
    int row0 = (wi - (t == 0 ? 0 : t == 1 ? job.wend[0] : job.wend[1])) * R;
    const uint4 *wr[RW];
#pragma unroll
    for (int r = 0; r < RW; r++)
        wr[r] = (const uint4 *)((EPI == GEMV_SWIGLU && r >= R ? (const T *)job.w[1] : w) +
                                (size_t)min(row0 + r % R, OC - 1) * C);
    float acc[N][RW];
#pragma unroll
    for (int n = 0; n < N; n++)
#pragma unroll
        for (int r = 0; r < RW; r++) acc[n][r] = 0.0f;
    pq_pdl_launch_dependents(); // (the next product's weights may start to stream in beside this one's tail)
    int nv = C / 8;             // 16-byte vectors per row
    for (int v0 = lane; v0 < nv; v0 += 32 * U) {
        uint4 q[U][RW];
#pragma unroll
        for (int u = 0; u < U; u++) {
            int v = v0 + u * 32;
#pragma unroll
            for (int r = 0; r < RW; r++) q[u][r] = v < nv ? __ldcs(wr[r] + v) : make_uint4(0, 0, 0, 0);
        }
        // launched with PQ_PDL: the first weights are on their way while the kernel before ends; the input is
        // its output (a no-op after the first time, and without PDL)
        pq_pdl_wait();
#pragma unroll
        for (int u = 0; u < U; u++) {
            int v = v0 + u * 32;
            if (v >= nv) break;
            float f[RW][8];
#pragma unroll
            for (int r = 0; r < RW; r++) gemv_unpack(q[u][r], f[r], (const T *)0);
#pragma unroll
            for (int n = 0; n < N; n++) {
                float a[8];
                gemv_in(inp, (size_t)n * C + 8 * (size_t)v, a);
#pragma unroll
                for (int r = 0; r < RW; r++)
                    acc[n][r] += f[r][0] * a[0] + f[r][1] * a[1] + f[r][2] * a[2] + f[r][3] * a[3] + f[r][4] * a[4] +
                                 f[r][5] * a[5] + f[r][6] * a[6] + f[r][7] * a[7];
            }
        }
    }
#pragma unroll
    for (int n = 0; n < N; n++)
#pragma unroll
        for (int r = 0; r < RW; r++)
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) acc[n][r] += __shfl_xor_sync(0xffffffffu, acc[n][r], off);
    pq_pdl_wait(); // (a lane without a vector waits here: every write after the kernel before has ended)
    // every lane holds the N*RW sums (N*R <= 32 outputs): lane n*R+r writes out[n][row0+r]
    A *out = (A *)(t == 0 ? job.out[0] : t == 1 ? job.out[1] : job.out[2]);
    const float *bias = t == 0 ? job.bias[0] : t == 1 ? job.bias[1] : job.bias[2];
#pragma unroll
    for (int n = 0; n < N; n++)
#pragma unroll
        for (int r = 0; r < R; r++) {
            int row = row0 + r;
            if (lane != n * R + r || row >= OC) continue;
            float y = acc[n][r] + (bias ? bias[row] : 0.0f);
            size_t o = (size_t)n * OC + row;
            if (EPI == GEMV_STORE) pq_st(out, o, y);
            else if (EPI == GEMV_ADD) pq_st(out, o, pq_ld(out, o) + gemv_as(y, inp)); // (the product, then the add)
            else { // (swiglu_forward_kernel's expression, on gate and up as stored)
                float g = gemv_as(y, inp), u = gemv_as(acc[n][R + r] + (job.bias[1] ? job.bias[1][row] : 0.0f), inp);
                pq_st(out, o, g / (1.0f + expf(-g)) * u);
            }
        }
}

// PQ_GEMV=0 turns the kernel off (cuBLASLt for every product), read once; pq_cuda_set_gemv overrides.
static int gemv_state = -1;

extern "C" void pq_cuda_set_gemv(int on) { gemv_state = on < 0 ? -1 : on != 0; }

bool pq_cuda_gemv_fits(const float *inp, const PqWeight *w, int N, int C) {
    return pq_env_switch(&gemv_state, "PQ_GEMV", true) && N >= 1 && N <= PQ_GEMV_MAX_N &&
           (w->dtype == PQ_BF16 || w->dtype == PQ_F16) && C > 0 && C % 8 == 0 &&
           !(((uintptr_t)inp | (uintptr_t)w->data) & 15);
}

// PQ_PDL=1 (read once; pq_cuda_set_pdl overrides): the kernel launched as a programmatic dependent of the one
// before it (common.cuh), so its launch and first weight reads overlap that kernel's end
static int pdl_state = -1;

extern "C" void pq_cuda_set_pdl(int on) { pdl_state = on < 0 ? -1 : on != 0; }

// Launched as a dependent only on compute capability 9.x, which runs the sm_90 code: any other GPU runs the
// compute_80 PTX (the Makefile's CUDA_ARCHS), where pq_pdl_wait() is compiled out, and the GEMV could read its input
// before the kernel before it had written it. There the switch is said once to do nothing, and launches are plain.
static bool pdl_on(void) {
    if (!pq_env_switch(&pdl_state, "PQ_PDL", false)) return false;
    static int major = -1; // the device's compute capability major, read once (0 where it does not say)
    if (major < 0) {
        int dev = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess)
            major = 0;
    }
    if (major == 9) return true;
    static bool said;
    if (!said)
        fprintf(stderr, "pq: PQ_PDL=1 does nothing on compute capability %d.x (9.x only): plain launches (said once)\n",
                major);
    said = true;
    return false;
}

// job's warps: R output rows each, product after product
template <typename T, typename A, int N, int EPI> static void gemv_launch(GemvJob job, const A *inp, int C) {
    int warps = 0;
    for (int t = 0; t < PQ_GROUP_MAX; t++)
        job.wend[t] = warps += t < job.n ? (job.rows[t] + GemvShape<N>::R - 1) / GemvShape<N>::R : 0;
    if (!warps) return;
    unsigned blocks = pq_blocks((size_t)warps, GEMV_WARPS);
    if (pdl_on()) {
        cudaLaunchAttribute at[1];
        at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[0].val.programmaticStreamSerializationAllowed = 1;
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = dim3(blocks), cfg.blockDim = dim3(GEMV_WARPS * 32), cfg.stream = pq_cuda_stream;
        cfg.attrs = at, cfg.numAttrs = 1;
        CU(cudaLaunchKernelEx(&cfg, gemv_kernel<T, A, N, EPI>, job, inp, C));
        return;
    }
    gemv_kernel<T, A, N, EPI><<<blocks, GEMV_WARPS * 32, 0, pq_cuda_stream>>>(job, inp, C);
    CU_LAUNCHED();
}

template <typename T, typename A, int EPI> static void gemv_t(const GemvJob &job, const A *inp, int N, int C) {
    switch (N) {
    case 1: gemv_launch<T, A, 1, EPI>(job, inp, C); break;
    case 2: gemv_launch<T, A, 2, EPI>(job, inp, C); break;
    case 3: gemv_launch<T, A, 3, EPI>(job, inp, C); break;
    case 4: gemv_launch<T, A, 4, EPI>(job, inp, C); break;
    case 5: gemv_launch<T, A, 5, EPI>(job, inp, C); break;
    case 6: gemv_launch<T, A, 6, EPI>(job, inp, C); break;
    case 7: gemv_launch<T, A, 7, EPI>(job, inp, C); break;
    default: gemv_launch<T, A, 8, EPI>(job, inp, C); break;
    }
}

template <typename T, int EPI> static void gemv_a(const GemvJob &job, const float *inp, int N, int C) {
    if (pq_cuda_act_bf16()) gemv_t<T, pq_bf16, EPI>(job, (const pq_bf16 *)inp, N, C);
    else gemv_t<T, float, EPI>(job, inp, N, C);
}

template <int EPI> static void gemv_run(const GemvJob &job, PqDtype dt, const float *inp, int N, int C) {
    if (dt == PQ_BF16) gemv_a<__nv_bfloat16, EPI>(job, inp, N, C);
    else gemv_a<__half, EPI>(job, inp, N, C);
}

void pq_cuda_gemv(float *out, const float *inp, const PqWeight *w, const float *bias, int N, int C, int OC) {
    GemvJob job = {};
    job.w[0] = w->data, job.bias[0] = bias, job.out[0] = out, job.rows[0] = OC, job.n = 1;
    gemv_run<GEMV_STORE>(job, w->dtype, inp, N, C);
}

bool pq_cuda_gemv_group(float *const *out, const float *inp, const PqWeight *w, const float *const *bias, int n,
                        int N, int C) {
    if (n < 1 || n > PQ_GROUP_MAX) return false;
    for (int t = 0; t < n; t++)
        if (!pq_cuda_gemv_fits(inp, &w[t], N, C) || w[t].dtype != w[0].dtype || w[t].cols != C) return false;
    GemvJob job = {};
    for (int t = 0; t < n; t++)
        job.w[t] = w[t].data, job.bias[t] = bias[t], job.out[t] = out[t], job.rows[t] = w[t].rows;
    job.n = n;
    gemv_run<GEMV_STORE>(job, w[0].dtype, inp, N, C);
    return true;
}

bool pq_cuda_gemv_add(float *x, const float *inp, const PqWeight *w, const float *bias, int N, int C, int OC) {
    if (!pq_cuda_gemv_fits(inp, w, N, C) || w->rows != OC) return false;
    GemvJob job = {};
    job.w[0] = w->data, job.bias[0] = bias, job.out[0] = x, job.rows[0] = OC, job.n = 1;
    gemv_run<GEMV_ADD>(job, w->dtype, inp, N, C);
    return true;
}

bool pq_cuda_gemv_swiglu(float *out, const float *inp, const PqWeight *wg, const PqWeight *wu, const float *bg,
                         const float *bu, int N, int C, int H) {
    if (!pq_cuda_gemv_fits(inp, wg, N, C) || !pq_cuda_gemv_fits(inp, wu, N, C) || wg->dtype != wu->dtype ||
        wg->rows != H || wu->rows != H)
        return false;
    GemvJob job = {};
    job.w[0] = wg->data, job.w[1] = wu->data, job.bias[0] = bg, job.bias[1] = bu, job.out[0] = out, job.rows[0] = H;
    job.n = 1;
    gemv_run<GEMV_SWIGLU>(job, wg->dtype, inp, N, C);
    return true;
}
