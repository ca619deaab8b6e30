// backend.cu: the CUDA backend of ops.h and ops_grad.h (all but attention,
// in attention.cu): device memory, weights copied from the mmap'd
// safetensors, cuBLAS products (bf16 x bf16 -> f32 on tensor cores), and the
// elementwise, normalisation, RoPE, dropout and chunked log-prob kernels.
// Each kernel's twin is in ops_cpu.c / ops_grad_cpu.c (tests/gpu/ checks them).
#include <math.h>
#include <string.h>

#include <cublasLt.h>
#include <map>
#include <tuple>

#include "common.cuh"
#include "tuning.h"

extern "C" {
#include "util.h"
}

// ---- errors, device, handles, scratch ----

void pq_cuda_fail(const char *what, const char *err, const char *file, int line) {
    if (pq_cuda_graph_absorb(what, err, file, line)) return; // a capture's error fails the capture (graph.cu)
    fprintf(stderr, "pq: CUDA error %s at %s:%d: %s\n", err, file, line, what);
    abort();
}

static int dev_id = -1;           // selected device (-1: not yet chosen)
static cublasHandle_t blas;       // created on first use
static void *scr[PQ_SCR_N];       // scratch buffers
static size_t scr_cap[PQ_SCR_N];
static size_t mem_peak;           // highest device memory in use seen (bytes)
static unsigned scr_gen;          // bumped whenever a scratch buffer moves
static cudaStream_t blas_stream;  // the stream blas is bound to
cudaStream_t pq_cuda_stream = 0;  // the legacy default stream, but while graph.cu captures

static void note_usage(void) {
    size_t fr, tot;
    if (cudaMemGetInfo(&fr, &tot) == cudaSuccess && tot - fr > mem_peak) mem_peak = tot - fr;
}

static void ensure_device(void) {
    if (dev_id >= 0) return;
    dev_id = 0;
    CU(cudaSetDevice(dev_id));
}

extern "C" int pq_ops_set_device(int n) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || n < 0 || n >= count) return -1;
    if (dev_id >= 0 && dev_id != n) return -1; // memory already lives on another device
    dev_id = n;
    CU(cudaSetDevice(n));
    return 0;
}

extern "C" int pq_dev_info(PqDevInfo *d) {
    memset(d, 0, sizeof *d); // (nothing known, where the device does not answer)
    // ensure_device's choice without its abort (CU): a device that does not answer is -1 here, as ops.h says
    int dev = dev_id >= 0 ? dev_id : 0;
    if (cudaSetDevice(dev) != cudaSuccess) return -1;
    dev_id = dev;
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, dev_id) != cudaSuccess) return -1;
    snprintf(d->name, sizeof d->name, "%s", p.name);
    d->cc_major = p.major, d->cc_minor = p.minor, d->sms = p.multiProcessorCount, d->mem_bytes = p.totalGlobalMem;
    d->bus_bits = p.memoryBusWidth;
    // (the clocks are attributes only since CUDA 13 dropped them from cudaDeviceProp)
    if (cudaDeviceGetAttribute(&d->clock_khz, cudaDevAttrClockRate, dev_id) != cudaSuccess) d->clock_khz = 0;
    if (cudaDeviceGetAttribute(&d->mem_clock_khz, cudaDevAttrMemoryClockRate, dev_id) != cudaSuccess)
        d->mem_clock_khz = 0;
    return 0;
}

extern "C" size_t pq_dev_free_bytes(void) {
    ensure_device();
    size_t fr, tot;
    return cudaMemGetInfo(&fr, &tot) == cudaSuccess ? fr : 0;
}

extern "C" size_t pq_dev_peak_bytes(void) {
    note_usage();
    return mem_peak;
}

// The marks of ops.h: events on pq_cuda_stream, created on first use. pq_cuda_stream is not the legacy stream
// only while graph.cu captures a step: no mark is recorded there (an event recorded in a capture has no time).
static cudaEvent_t mark_ev[PQ_DEV_MARKS];
static bool mark_set[PQ_DEV_MARKS];

extern "C" void pq_dev_mark(int k) {
    if (k < 0 || k >= PQ_DEV_MARKS) return;
    mark_set[k] = false;
    if (pq_cuda_stream) {
        cudaStreamCaptureStatus st;
        if (cudaStreamIsCapturing(pq_cuda_stream, &st) != cudaSuccess || st != cudaStreamCaptureStatusNone) return;
    }
    ensure_device();
    if (!mark_ev[k]) CU(cudaEventCreate(&mark_ev[k]));
    CU(cudaEventRecord(mark_ev[k], pq_cuda_stream));
    mark_set[k] = true;
}

extern "C" double pq_dev_mark_ms(int a, int b) {
    if (a < 0 || b < 0 || a >= PQ_DEV_MARKS || b >= PQ_DEV_MARKS || !mark_set[a] || !mark_set[b]) return -1;
    CU(cudaEventSynchronize(mark_ev[b]));
    CU(cudaEventSynchronize(mark_ev[a]));
    float ms = 0;
    CU(cudaEventElapsedTime(&ms, mark_ev[a], mark_ev[b]));
    return ms;
}

cublasHandle_t pq_cuda_blas(void) {
    if (!blas) {
        ensure_device();
        CUBLAS(cublasCreate(&blas));
    }
    if (blas_stream != pq_cuda_stream) {
        CUBLAS(cublasSetStream(blas, pq_cuda_stream));
        blas_stream = pq_cuda_stream;
    }
    return blas;
}

unsigned pq_cuda_scratch_gen(void) { return scr_gen; }

void *pq_cuda_scratch(int slot, size_t bytes) {
    if (bytes > scr_cap[slot]) {
        ensure_device();
        pq_cuda_regrow(&scr[slot], &scr_cap[slot], bytes + bytes / 4); // (headroom for the next, larger request)
        scr_gen++;
        note_usage();
    }
    return scr[slot];
}

// ---- activation storage: the bf16 fallback's pool and conversions ----

static void *act_pool[PQ_ACT_FB_MAX];
static size_t act_pool_cap[PQ_ACT_FB_MAX];
static int act_fb_depth; // > 0 inside a PqActFallback: the ops run their f32 code

bool pq_cuda_act_bf16(void) { return act_fb_depth == 0 && pq_ops_act_dtype() == PQ_BF16; }
void pq_act_fallback_enter(void) { act_fb_depth++; }
void pq_act_fallback_leave(void) { act_fb_depth--; }

float *pq_act_pool(int k, size_t n) {
    size_t bytes = (n ? n : 1) * sizeof(float);
    if (bytes > act_pool_cap[k]) { // (cudaFree waits for the kernels that may still read the old buffer)
        ensure_device();
        pq_cuda_regrow(&act_pool[k], &act_pool_cap[k], bytes + bytes / 4);
        scr_gen++;
        note_usage();
    }
    return (float *)act_pool[k];
}

__global__ void act_widen_kernel(float *dst, const __nv_bfloat16 *src, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = __bfloat162float(src[i]);
}
__global__ void act_narrow_kernel(__nv_bfloat16 *dst, const float *src, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = __float2bfloat16_rn(src[i]);
}

void pq_cuda_act_widen(float *dst, const void *src, size_t n) {
    if (!n) return;
    act_widen_kernel<<<pq_blocks(n, PQ_EW_THREADS), PQ_EW_THREADS, 0, pq_cuda_stream>>>(
        dst, (const __nv_bfloat16 *)src, n);
    CU_LAUNCHED();
}
void pq_cuda_act_narrow(void *dst, const float *src, size_t n) {
    if (!n) return;
    act_narrow_kernel<<<pq_blocks(n, PQ_EW_THREADS), PQ_EW_THREADS, 0, pq_cuda_stream>>>((__nv_bfloat16 *)dst, src,
                                                                                         n);
    CU_LAUNCHED();
}

extern "C" void pq_ops_set_threads(int n) { pq_cpu_set_threads(n); }
extern "C" int pq_ops_threads(void) { return pq_cpu_threads(); }

extern "C" void *pq_dev_alloc(size_t bytes) {
    ensure_device();
    void *p = NULL;
    cudaError_t err = cudaMalloc(&p, bytes ? bytes : 16);
    if (err != cudaSuccess) {
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        fprintf(stderr, "pq: out of device memory allocating %zu bytes (%zu of %zu free): %s\n", bytes, fr, tot,
                cudaGetErrorString(err));
        abort();
    }
    CU(cudaMemsetAsync(p, 0, bytes ? bytes : 16, pq_cuda_stream));
    note_usage();
    return p;
}

// (the attention's cached plans depend on position arrays: told of writes and frees)
extern "C" void pq_dev_free(void *p) {
    if (p) {
        pq_attention_note_free();
        CU(cudaFree(p));
    }
}
// Copies on pq_cuda_stream. On the legacy stream (the default) a plain cudaMemcpy, as before; on another an
// async copy, and a host-bound one (an upload from pageable memory may still be in flight when the call
// returns, a download must be done) waits for the stream.
void pq_cuda_copy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    if (!pq_cuda_stream) {
        CU(cudaMemcpy(dst, src, bytes, kind));
        return;
    }
    CU(cudaMemcpyAsync(dst, src, bytes, kind, pq_cuda_stream));
    if (kind != cudaMemcpyDeviceToDevice) CU(cudaStreamSynchronize(pq_cuda_stream));
}
extern "C" void pq_dev_upload(void *dst, const void *src, size_t bytes) {
    if (bytes) {
        pq_attention_note_write(dst, bytes);
        pq_cuda_copy(dst, src, bytes, cudaMemcpyHostToDevice);
    }
}
extern "C" void pq_dev_download(void *dst, const void *src, size_t bytes) {
    if (bytes) pq_cuda_copy(dst, src, bytes, cudaMemcpyDeviceToHost);
}
extern "C" void pq_dev_copy(void *dst, const void *src, size_t bytes) {
    if (bytes) {
        pq_attention_note_write(dst, bytes);
        pq_cuda_copy(dst, src, bytes, cudaMemcpyDeviceToDevice);
    }
}
extern "C" void pq_dev_zero(void *dst, size_t bytes) {
    if (bytes) {
        pq_attention_note_write(dst, bytes);
        CU(cudaMemsetAsync(dst, 0, bytes, pq_cuda_stream));
    }
}

// The weight copied as stored (no conversion): bf16 stays bf16.
extern "C" PqWeight pq_dev_weight(PqWeight w) {
    size_t bytes = (size_t)w.rows * w.cols * pq_dtype_size(w.dtype);
    void *d = pq_dev_alloc(bytes);
    pq_dev_upload(d, w.data, bytes);
    w.data = d;
    return w;
}
// Weights that live inside another's allocation (pq_dev_weights): freed with it.
static const void *inner[4096];
static int n_inner;

extern "C" void pq_dev_weight_free(PqWeight *w) {
    for (int i = 0; i < n_inner; i++)
        if (inner[i] == w->data) {
            inner[i] = inner[--n_inner];
            w->data = NULL;
            return;
        }
    pq_dev_free((void *)w->data);
    w->data = NULL;
}

extern "C" void pq_dev_weights(PqWeight *w, int n) {
    bool same = n > 1 && n_inner + n <= (int)(sizeof inner / sizeof *inner);
    for (int t = 1; t < n; t++) same = same && w[t].dtype == w[0].dtype && w[t].cols == w[0].cols;
    if (!same) {
        for (int t = 0; t < n; t++) w[t] = pq_dev_weight(w[t]);
        return;
    }
    size_t total = 0;
    for (int t = 0; t < n; t++) total += (size_t)w[t].rows * w[t].cols * pq_dtype_size(w[t].dtype);
    char *d = (char *)pq_dev_alloc(total);
    for (int t = 0; t < n; t++) {
        size_t bytes = (size_t)w[t].rows * w[t].cols * pq_dtype_size(w[t].dtype);
        pq_dev_upload(d, w[t].data, bytes);
        w[t].data = d;
        if (t > 0) inner[n_inner++] = d;
        d += bytes;
    }
}

// ---- products ----

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half(x); }

template <typename T> __global__ void convert_kernel(T *out, const float *inp, float scale, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = from_f32<T>(inp[i] * scale);
}

__device__ float block_max(float v);

// the largest |x[i]| (NaN ignored) as its bits, atomically maxed into *out (0 first)
__global__ void absmax_kernel(unsigned *out, const float *x, size_t n) {
    float m = 0.0f;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        m = fmaxf(m, fabsf(x[i]));
    m = block_max(m);
    if (threadIdx.x == 0) atomicMax(out, __float_as_uint(m)); // non-negative floats order as their bits
}

// f16 has 5 exponent bits (at most 65504, normal from 6.1e-5): an activation
// or gradient converted to it is first scaled by the power of two that brings
// its largest magnitude just under 2^14, and the product is unscaled through
// alpha (exactly: powers of two). Large activations then do not overflow to
// inf, and small gradients (the LM head's dz is ~1e-7 at a 32k vocab) keep
// their bits instead of flushing to subnormals or zero. bf16 has f32's range
// and needs none. The maximum comes back to the host: one synchronisation per
// product that only f16 models pay.
static float f16_scale(const float *x, size_t n) {
    static unsigned *d_max;
    if (!d_max) CU(cudaMalloc(&d_max, sizeof *d_max));
    CU(cudaMemsetAsync(d_max, 0, sizeof *d_max, pq_cuda_stream));
    unsigned blocks = pq_blocks(n, PQ_EW_THREADS);
    absmax_kernel<<<blocks < 1024 ? blocks : 1024, PQ_EW_THREADS, 0, pq_cuda_stream>>>(d_max, x, n);
    CU_LAUNCHED();
    unsigned u;
    pq_cuda_copy(&u, d_max, sizeof u, cudaMemcpyDeviceToHost);
    float m;
    memcpy(&m, &u, sizeof m);
    if (!(m > 0.0f) || isinf(m)) return 1.0f;
    int e;
    frexpf(m, &e); // m < 2^e
    int k = 14 - e;
    k = k < -100 ? -100 : k > 100 ? 100 : k;
    return ldexpf(1.0f, k);
}

// inp (n) f32 -> the weight dtype adt in scratch slot (or inp itself for
// f32); *unscale: the factor the product must be multiplied by (1 but for f16)
static const void *to_dtype(int slot, const float *inp, size_t n, PqDtype adt, float *unscale) {
    *unscale = 1.0f;
    if (adt == PQ_F32 || n == 0) return inp;
    void *o = pq_cuda_scratch(slot, n * 2);
    unsigned g = pq_blocks(n, PQ_EW_THREADS);
    if (adt == PQ_BF16) {
        convert_kernel<<<g, PQ_EW_THREADS, 0, pq_cuda_stream>>>((__nv_bfloat16 *)o, inp, 1.0f, n);
    } else {
        float sc = f16_scale(inp, n);
        *unscale = 1.0f / sc;
        convert_kernel<<<g, PQ_EW_THREADS, 0, pq_cuda_stream>>>((__half *)o, inp, sc, n);
    }
    CU_LAUNCHED();
    return o;
}

// ---- cuBLASLt: bf16/f16 products with a workspace and the heuristic's algorithm ----

#define LT_WORKSPACE ((size_t)32 << 20)
struct LtPlan {
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
    bool ok; // false: no algorithm for this shape (cublasGemmEx serves it)
};
// ta tb M N K lda ldb ldc dt beta0 ct bias
typedef std::tuple<int, int, int, int, int, int, int, int, int, int, int, int> LtKey;
static std::map<LtKey, LtPlan> lt_plans;
static cublasLtHandle_t lt;
static void *lt_ws;
static int lt_state; // 0 not decided, 1 on, -1 off (PQ_GEMM=cublas, or cuBLASLt failed)

// The plan of a product's shape, made once: descriptors and the heuristic's first algorithm. C (and D) of
// dtype ct (f32, or bf16 for bf16 activations); bias: with cuBLASLt's bias epilogue (an f32 vector of M,
// added in f32 before D is rounded; no plan where cuBLASLt refuses it).
static LtPlan *lt_plan(cublasOperation_t ta, cublasOperation_t tb, int M, int N, int K, int lda, int ldb, int ldc,
                       cudaDataType dt, bool beta0, cudaDataType ct = CUDA_R_32F, bool bias = false) {
    LtKey key(ta, tb, M, N, K, lda, ldb, ldc, (int)dt, beta0, (int)ct, bias);
    auto it = lt_plans.find(key);
    if (it != lt_plans.end()) return &it->second;
    LtPlan p;
    memset(&p, 0, sizeof p);
    CUBLAS(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CUBLAS(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CUBLAS(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    CUBLAS(cublasLtMatrixLayoutCreate(&p.a, dt, ta == CUBLAS_OP_N ? M : K, ta == CUBLAS_OP_N ? K : M, lda));
    CUBLAS(cublasLtMatrixLayoutCreate(&p.b, dt, tb == CUBLAS_OP_N ? K : N, tb == CUBLAS_OP_N ? N : K, ldb));
    CUBLAS(cublasLtMatrixLayoutCreate(&p.c, ct, M, N, ldc));
    bool epi_ok = true;
    if (bias) {
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        int32_t bt = CUDA_R_32F;
        epi_ok = cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi) ==
                     CUBLAS_STATUS_SUCCESS &&
                 cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt) ==
                     CUBLAS_STATUS_SUCCESS;
    }
    cublasLtMatmulPreference_t pref;
    CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
    size_t ws = LT_WORKSPACE;
    CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    uint32_t align = 16; // lt_gemm passes only 16-byte aligned pointers
    CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align, sizeof align));
    CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align, sizeof align));
    CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align, sizeof align));
    CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align, sizeof align));
    cublasLtMatmulHeuristicResult_t res;
    int n = 0;
    p.ok = epi_ok &&
           cublasLtMatmulAlgoGetHeuristic(lt, p.op, p.a, p.b, p.c, p.c, pref, 1, &res, &n) == CUBLAS_STATUS_SUCCESS &&
           n > 0;
    if (p.ok) p.algo = res.algo;
    cublasLtMatmulPreferenceDestroy(pref);
    return &(lt_plans[key] = p);
}

// C = alpha op(A) op(B) + beta C through cuBLASLt; false (nothing done) where it is off, has no
// algorithm for the shape, or a pointer is not 16-byte aligned (cublasGemmEx serves those). C of dtype ct;
// bias (f32, M) or NULL: added by the epilogue.
static bool lt_gemm(cublasOperation_t ta, cublasOperation_t tb, int M, int N, int K, float alpha, const void *A,
                    const void *B, cudaDataType dt, int lda, int ldb, float beta, void *C, int ldc,
                    cudaDataType ct = CUDA_R_32F, const float *bias = NULL) {
    if (lt_state == 0) {
        const char *g = getenv("PQ_GEMM");
        lt_state = g && !strcmp(g, "cublas") ? -1 : 1;
        if (lt_state > 0) {
            ensure_device();
            CUBLAS(cublasLtCreate(&lt));
            lt_ws = pq_dev_alloc(LT_WORKSPACE);
        }
    }
    if (lt_state < 0 || (((uintptr_t)A | (uintptr_t)B | (uintptr_t)C | (uintptr_t)bias) & 15)) return false;
    LtPlan *p = lt_plan(ta, tb, M, N, K, lda, ldb, ldc, dt, beta == 0.0f, ct, bias != NULL);
    if (!p->ok) return false;
    if (bias && cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias) !=
                    CUBLAS_STATUS_SUCCESS)
        return false;
    cublasStatus_t st = cublasLtMatmul(lt, p->op, &alpha, A, p->a, B, p->b, &beta, C, p->c, C, p->c, &p->algo, lt_ws,
                                       LT_WORKSPACE, pq_cuda_stream);
    if (st != CUBLAS_STATUS_SUCCESS) {
        // inside a CUDA graph's capture (graph.cu) a failure is the capture's, not the shape's (a synchronous call
        // beside it, as f16_scale's copy, invalidates the capture): nothing said or marked; the capture fails and
        // the step runs eagerly, where cuBLASLt serves this shape again
        if (pq_cuda_stream) {
            cudaStreamCaptureStatus cs;
            if (cudaStreamIsCapturing(pq_cuda_stream, &cs) != cudaSuccess || cs != cudaStreamCaptureStatusNone)
                return false;
        }
        // not expected: said once; this shape goes to cublasGemmEx from now on
        static bool said;
        if (!said)
            fprintf(stderr, "pq: cuBLASLt product %dx%dx%d failed (%s): cublasGemmEx for it (said once)\n", M, N, K,
                    cublasGetStatusString(st));
        said = true;
        p->ok = false;
        return false;
    }
    return true;
}

// col-major C (M,N) = alpha op(A) op(B) + beta C, A and B both of dtype adt
static void gemm_raw(cublasOperation_t ta, cublasOperation_t tb, int M, int N, int K, float alpha, const void *A,
                     const void *B, PqDtype adt, int lda, int ldb, float beta, float *C, int ldc) {
    if (M == 0 || N == 0) return;
    cublasHandle_t h = pq_cuda_blas();
    if (adt == PQ_F32) {
        CUBLAS(cublasSgemm(h, ta, tb, M, N, K, &alpha, (const float *)A, lda, (const float *)B, ldb, &beta, C, ldc));
        return;
    }
    cudaDataType dt = adt == PQ_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    if (lt_gemm(ta, tb, M, N, K, alpha, A, B, dt, lda, ldb, beta, C, ldc)) return;
    CUBLAS(cublasGemmEx(h, ta, tb, M, N, K, &alpha, A, dt, lda, B, dt, ldb, &beta, C, CUDA_R_32F, ldc,
                        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// one thread per element of col-major C (M,N), ldc: C bf16 = t (M,N) f32 packed + bias[row], rounded once
__global__ void bias_narrow_kernel(__nv_bfloat16 *C, const float *t, const float *bias, int M, int N, int ldc) {
    size_t x = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= (size_t)M * N) return;
    size_t m = x % M, j = x / M;
    C[j * ldc + m] = __float2bfloat16_rn(t[x] + bias[m]);
}

// bf16 activations: col-major C (M,N) bf16 = alpha op(A) op(B) (+ bias (M, f32) on each column) + beta C,
// A and B bf16 (a weight and a bf16 activation, nothing converted), f32 accumulation, the sum (with beta C
// and the bias) rounded once to C. Through cuBLASLt with the bias epilogue where it serves the shape, else
// cublasGemmEx writing bf16, or (a bias without the epilogue, beta 0 only) f32 in scratch then bias_narrow.
static void gemm_bf16(cublasOperation_t ta, cublasOperation_t tb, int M, int N, int K, float alpha, const void *A,
                      const void *B, int lda, int ldb, float beta, void *C, int ldc, const float *bias) {
    if (M == 0 || N == 0) return;
    if (lt_gemm(ta, tb, M, N, K, alpha, A, B, CUDA_R_16BF, lda, ldb, beta, C, ldc, CUDA_R_16BF, bias)) return;
    if (!bias) {
        CUBLAS(cublasGemmEx(pq_cuda_blas(), ta, tb, M, N, K, &alpha, A, CUDA_R_16BF, lda, B, CUDA_R_16BF, ldb, &beta,
                            C, CUDA_R_16BF, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        return;
    }
    if (beta != 0.0f) {
        fprintf(stderr, "pq: internal error: a bf16 product with a bias and beta %g\n", beta);
        abort();
    }
    size_t n = (size_t)M * N;
    float *t = (float *)pq_cuda_scratch(PQ_SCR_ACT, n * sizeof(float));
    gemm_raw(ta, tb, M, N, K, alpha, A, B, PQ_BF16, lda, ldb, 0.0f, t, M);
    bias_narrow_kernel<<<pq_blocks(n, PQ_EW_THREADS), PQ_EW_THREADS, 0, pq_cuda_stream>>>((__nv_bfloat16 *)C, t, bias,
                                                                                          M, N, ldc);
    CU_LAUNCHED();
}

void pq_cuda_gemm_w(cublasOperation_t ta, cublasOperation_t tb, int M, int N, int K, float alpha, const void *A,
                    PqDtype adt, int lda, const float *B, int ldb, int bcols, float beta, float *C, int ldc,
                    int bslot) {
    float us;
    const void *b = to_dtype(bslot, B, (size_t)ldb * bcols, adt, &us);
    gemm_raw(ta, tb, M, N, K, alpha * us, A, b, adt, lda, ldb, beta, C, ldc);
}

// The LoRA products' kernel: pq_cuda_set_lora_gemm's (bench-7b and parity-ops time and check each), else
// PQ_LORA_GEMM's (read once), else by the model: TF32 tensor cores for a bf16/f16 model (its activations are
// rounded to 16 bits at every product already; on an H200 a 7B layer's LoRA products took 0.078 ms for
// q_proj's forward against sgemm's 0.102, 0.130 against 0.189 backward), sgemm for an f32 model. With bf16
// activations the LoRA products are bf16 (lora16_* below) and the kind is not read.
static int lora_gemm = -1, lora_env = -2; // -1: not set; lora_env -2: not read yet

extern "C" void pq_cuda_set_lora_gemm(int kind) { lora_gemm = kind; }

static int lora_gemm_kind(void) {
    if (lora_gemm >= 0) return lora_gemm;
    if (lora_env == -2) {
        const char *s = getenv("PQ_LORA_GEMM");
        lora_env = -1;
        if (s && !strcmp(s, "sgemm")) lora_env = PQ_LORA_SGEMM;
        else if (s && !strcmp(s, "tf32")) lora_env = PQ_LORA_TF32;
        else if (s && !strcmp(s, "lt")) lora_env = PQ_LORA_LT;
        else if (s && !strcmp(s, "sgemm_t")) lora_env = PQ_LORA_SGEMM_T;
        else if (s && *s)
            fprintf(stderr, "pq: PQ_LORA_GEMM=%s is not sgemm, tf32, lt or sgemm_t: the model's default\n", s);
    }
    if (lora_env >= 0) return lora_env;
    return pq_cuda_model_dtype() == PQ_F32 ? PQ_LORA_SGEMM : PQ_LORA_TF32;
}

// col-major f32 product (the LoRA products: r is small), by default cublasSgemm
static void sgemm(cublasOperation_t ta, cublasOperation_t tb, int M, int N, int K, float alpha, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc) {
    if (M == 0 || N == 0) return;
    int kind = lora_gemm_kind();
    if (kind == PQ_LORA_TF32) {
        CUBLAS(cublasGemmEx(pq_cuda_blas(), ta, tb, M, N, K, &alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb, &beta, C,
                            CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT));
        return;
    }
    if (kind == PQ_LORA_LT && K > 0 && lt_gemm(ta, tb, M, N, K, alpha, A, B, CUDA_R_32F, lda, ldb, beta, C, ldc))
        return;
    CUBLAS(cublasSgemm(pq_cuda_blas(), ta, tb, M, N, K, &alpha, A, lda, B, ldb, &beta, C, ldc));
}

// ---- reductions ----

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
// Every thread of the block gets the sum (blockDim a multiple of 32, <= 1024).
__device__ float block_sum(float v) {
    __shared__ float sh[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads(); // sh may still be read from a previous call
    v = warp_sum(v);
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0f;
    return warp_sum(v);
}
__device__ float block_max(float v) {
    __shared__ float sh[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    v = warp_max(v);
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : -INFINITY;
    return warp_max(v);
}

// ---- forward operations ----

template <typename T, typename A>
__global__ void embedding_kernel(A *out, const int32_t *ids, const T *wte, int N, int C) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * C) return;
    size_t i = idx / C, c = idx % C;
    pq_st(out, idx, pq_ld(wte, (size_t)ids[i] * C + c));
}

template <typename A> static void embedding(A *out, const int32_t *ids, const PqWeight *wte, int N, int C, size_t n) {
    unsigned g = pq_blocks(n, PQ_EW_THREADS);
    if (wte->dtype == PQ_F32)
        embedding_kernel<<<g, PQ_EW_THREADS, 0, pq_cuda_stream>>>(out, ids, (const float *)wte->data, N, C);
    else if (wte->dtype == PQ_BF16)
        embedding_kernel<<<g, PQ_EW_THREADS, 0, pq_cuda_stream>>>(out, ids, (const __nv_bfloat16 *)wte->data, N, C);
    else
        embedding_kernel<<<g, PQ_EW_THREADS, 0, pq_cuda_stream>>>(out, ids, (const __half *)wte->data, N, C);
    CU_LAUNCHED();
}

// ids (N), wte (V,C) -> out (N,C)
extern "C" void pq_embedding_forward(float *out, const int32_t *ids, const PqWeight *wte, int N, int C) {
    size_t n = (size_t)N * C;
    if (!n) return;
    if (pq_cuda_act_bf16()) embedding((pq_bf16 *)out, ids, wte, N, C, n);
    else embedding(out, ids, wte, N, C, n);
}

// one block per row; T the activations' type (f32 or bf16)
#define RMS_U 8
template <typename T>
__global__ void rmsnorm_forward_kernel(T *out, float *rstd, const T *inp, const float *weight, int C, float eps) {
    pq_pdl_launch_dependents(); // (a decoding step's next product, PQ_PDL: common.cuh)
    size_t i = blockIdx.x;
    const T *x = inp + i * C;
    T *o = out + i * C;
    // A thread's elements c, c + blockDim, ... in batches of RMS_U, each batch's loads in flight together (one
    // at a time, each a round trip to L2, they set the pace of a decoding step's few rows: SASS); the same sums
    // in the same order (past C: + 0)
    float ss = 0;
    for (int c0 = threadIdx.x; c0 < C; c0 += RMS_U * blockDim.x) {
        float xv[RMS_U];
#pragma unroll
        for (int u = 0; u < RMS_U; u++) {
            int c = c0 + u * blockDim.x;
            xv[u] = c < C ? pq_ld(x, c) : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < RMS_U; u++) ss += xv[u] * xv[u];
    }
    ss = block_sum(ss);
    float r = (float)(1.0 / sqrt((double)ss / C + eps));
    for (int c0 = threadIdx.x; c0 < C; c0 += RMS_U * blockDim.x) {
        float xv[RMS_U], wv[RMS_U];
#pragma unroll
        for (int u = 0; u < RMS_U; u++) {
            int c = c0 + u * blockDim.x;
            xv[u] = c < C ? pq_ld(x, c) : 0.0f, wv[u] = c < C ? weight[c] : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < RMS_U; u++)
            if (c0 + u * (int)blockDim.x < C) pq_st(o, c0 + u * blockDim.x, xv[u] * r * wv[u]);
    }
    if (rstd && threadIdx.x == 0) rstd[i] = r;
}

extern "C" void pq_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N, int C,
                                   float eps) {
    if (N <= 0) return;
    if (pq_cuda_act_bf16())
        rmsnorm_forward_kernel<<<N, 256, 0, pq_cuda_stream>>>((pq_bf16 *)out, rstd, (const pq_bf16 *)inp, weight, C,
                                                              eps);
    else
        rmsnorm_forward_kernel<<<N, 256, 0, pq_cuda_stream>>>(out, rstd, inp, weight, C, eps);
    CU_LAUNCHED();
}

// one block per row: x += y, then the norm of the new x (twin: pq_cpu_residual_rmsnorm_forward). f32: x
// written in the first pass and read back. bf16: the norm is of the sum in f32 (not of its rounding), so the
// first pass only sums squares and the second recomputes each x + y (the same thread's elements in both
// passes), then stores x and out rounded.
template <typename T>
__global__ void residual_rmsnorm_kernel(T *out, float *rstd, T *x, const T *y, const float *weight, int C,
                                        float eps) {
    constexpr bool f32 = sizeof(T) == sizeof(float);
    size_t i = blockIdx.x;
    T *xi = x + i * C, *o = out + i * C;
    const T *yi = y + i * C;
    float ss = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float v = pq_ld(xi, c) + pq_ld(yi, c);
        if (f32) pq_st(xi, c, v);
        ss += v * v;
    }
    ss = block_sum(ss); // (synchronises: every x[c] of the row is written before it is read back below)
    float r = (float)(1.0 / sqrt((double)ss / C + eps));
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        if (f32) {
            pq_st(o, c, pq_ld(xi, c) * r * weight[c]);
        } else {
            float v = pq_ld(xi, c) + pq_ld(yi, c);
            pq_st(xi, c, v);
            pq_st(o, c, v * r * weight[c]);
        }
    }
    if (rstd && threadIdx.x == 0) rstd[i] = r;
}

extern "C" void pq_residual_rmsnorm_forward(float *out, float *rstd, float *x, const float *y, const float *weight,
                                            int N, int C, float eps) {
    if (N <= 0) return;
    if (pq_cuda_act_bf16())
        residual_rmsnorm_kernel<<<N, 256, 0, pq_cuda_stream>>>((pq_bf16 *)out, rstd, (pq_bf16 *)x,
                                                               (const pq_bf16 *)y, weight, C, eps);
    else
        residual_rmsnorm_kernel<<<N, 256, 0, pq_cuda_stream>>>(out, rstd, x, y, weight, C, eps);
    CU_LAUNCHED();
}

__global__ void add_bias_kernel(float *out, const float *bias, int N, int OC) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < (size_t)N * OC) out[idx] += bias[idx % OC];
}

// inp (N,C), weight (OC,C), bias (OC) -> out (N,OC). Column-major view:
// out^T (OC,N) = W (OC,C) inp^T (C,N), W being the stored (C,OC) transposed.
// bf16 activations: a bf16 weight's product reads inp and writes out as they are, the bias added by the
// GEMM's epilogue; an f16 or f32 weight (not a bf16-storage model's: pq_ops_act_choose) through the fallback.
// Few rows with 16-bit weights, in either storage: the GEMV kernel (gemv.cu).
extern "C" void pq_linear_forward(float *out, const float *inp, const PqWeight *weight, const float *bias, int N,
                                  int C, int OC) {
    if (N <= 0) return;
    if (pq_cuda_gemv_fits(inp, weight, N, C)) { // (either storage)
        pq_cuda_gemv(out, inp, weight, bias, N, C, OC);
        return;
    }
    if (pq_cuda_act_bf16()) {
        if (weight->dtype == PQ_BF16) {
            gemm_bf16(CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, 1.0f, weight->data, inp, C, C, 0.0f, out, OC, bias);
        } else {
            PqActFallback fb;
            pq_linear_forward(fb.out(out, (size_t)N * OC), fb.in(inp, (size_t)N * C), weight, bias, N, C, OC);
        }
        return;
    }
    pq_cuda_gemm_w(CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, 1.0f, weight->data, weight->dtype, C, inp, C, N, 0.0f, out,
                   OC, PQ_SCR_ACT);
    if (bias) {
        add_bias_kernel<<<pq_blocks((size_t)N * OC, PQ_EW_THREADS), PQ_EW_THREADS, 0, pq_cuda_stream>>>(out, bias, N,
                                                                                                        OC);
        CU_LAUNCHED();
    }
}

// ---- several linear layers on one input (a block's q, k, v; gate, up) ----

// Weights of one dtype (and width): the input converted once serves every product.
static bool group_same(const PqWeight *w, int n) {
    if (n < 2) return false;
    for (int t = 1; t < n; t++)
        if (w[t].dtype != w[0].dtype || w[t].cols != w[0].cols) return false;
    return true;
}

// Each product writes its own out[t] (no side-by-side scratch to split afterwards); what they share is the
// input converted to the weights' dtype once, with f16's one scale (one synchronisation, not n).
extern "C" void pq_linear_group_forward(float *const *out, const float *inp, const PqWeight *w,
                                        const float *const *bias, int n, int N, int C) {
    if (N <= 0) return;
    if (!group_same(w, n) || pq_cuda_act_bf16()) { // (bf16 activations: nothing to convert once for all)
        for (int t = 0; t < n; t++) pq_linear_forward(out[t], inp, &w[t], bias[t], N, C, w[t].rows);
        return;
    }
    bool gemv = true; // few rows: each member through the GEMV kernel on the f32 input, nothing converted
    for (int t = 0; t < n; t++) gemv = gemv && pq_cuda_gemv_fits(inp, &w[t], N, C);
    if (gemv) {
        for (int t = 0; t < n; t++) pq_cuda_gemv(out[t], inp, &w[t], bias[t], N, C, w[t].rows);
        return;
    }
    float us;
    const void *xb = to_dtype(PQ_SCR_ACT, inp, (size_t)N * C, w[0].dtype, &us);
    for (int t = 0; t < n; t++) { // out[t]^T (OC,N) = W_t (OC,C) inp^T (C,N), as pq_linear_forward
        int OC = w[t].rows;
        gemm_raw(CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, us, w[t].data, xb, w[0].dtype, C, C, 0.0f, out[t], OC);
        if (bias[t]) {
            add_bias_kernel<<<pq_blocks((size_t)N * OC, PQ_EW_THREADS), PQ_EW_THREADS, 0, pq_cuda_stream>>>(
                out[t], bias[t], N, OC);
            CU_LAUNCHED();
        }
    }
}

// dst (rows,cols) row-major (+)= src (rows,cols) column-major: PQ_LORA_GEMM=sgemm_t's transposed products
__global__ void from_col_major_kernel(float *dst, const float *src, int rows, int cols, int acc) {
    size_t x = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= (size_t)rows * cols) return;
    size_t i = x / cols, k = x % cols;
    float v = src[i + k * rows];
    dst[x] = acc ? dst[x] + v : v;
}

static void from_col_major(float *dst, const float *src, int rows, int cols, int acc) {
    size_t n = (size_t)rows * cols;
    if (!n) return;
    from_col_major_kernel<<<pq_blocks(n, PQ_EW_THREADS), PQ_EW_THREADS, 0, pq_cuda_stream>>>(dst, src, rows, cols, acc);
    CU_LAUNCHED();
}

// inp (N,C), A (r,C), B (OC,r) -> xa (N,r) = inp A^T; out (N,OC) += scale xa B^T
// xa (N,r) = inp A^T, inp f32
static void lora_xa(float *xa, const float *inp, const float *A, int N, int C, int r) {
    if (lora_gemm_kind() == PQ_LORA_SGEMM_T) { // xa (N,r) col-major = inp A^T: N as the long side
        float *t = (float *)pq_cuda_scratch(PQ_SCR_LORA, (size_t)N * r * sizeof(float));
        sgemm(CUBLAS_OP_T, CUBLAS_OP_N, N, r, C, 1.0f, inp, C, A, C, 0.0f, t, N);
        from_col_major(xa, t, N, r, 0);
    } else {
        sgemm(CUBLAS_OP_T, CUBLAS_OP_N, r, N, C, 1.0f, A, C, inp, C, 0.0f, xa, r);
    }
}

// ---- bf16 activations: LoRA's products with bf16 operands (ops_grad.h's rounding points, as autocast) ----

// k bf16 buffers of n[i] elements (each 16-byte aligned) carved from one scratch buffer, for one call: the
// bf16 copies of A and B are made per call (the optimizer updates the f32 masters in place), and of xa/dxa
static void lora16_bufs(pq_bf16 **p, const size_t *n, int k) {
    size_t tot = 0;
    for (int i = 0; i < k; i++) tot += (n[i] + 7) / 8 * 8;
    pq_bf16 *b = (pq_bf16 *)pq_cuda_scratch(PQ_SCR_LORA, (tot ? tot : 8) * sizeof(pq_bf16));
    for (int i = 0; i < k; i++) p[i] = b, b += (n[i] + 7) / 8 * 8;
}

// out (N,OC) bf16 += scale xa16 B16^T, the f32 sum (with out) rounded once; xa16 (N,r), B16 (OC,r) bf16
static void lora16_up(float *out, const pq_bf16 *xa16, const pq_bf16 *B16, float scale, int N, int OC, int r) {
    gemm_bf16(CUBLAS_OP_T, CUBLAS_OP_N, OC, N, r, scale, B16, xa16, r, r, 1.0f, out, OC, NULL);
}

// dB (OC,r) += scale dout^T xa16 (f32); dxa16 (N,r) bf16 = scale dout B16 rounded once, widened into dxa (f32)
static void lora16_up_back(float *dB, float *dxa, pq_bf16 *dxa16, const float *dout, const pq_bf16 *xa16,
                           const pq_bf16 *B16, float scale, int N, int OC, int r) {
    gemm_raw(CUBLAS_OP_N, CUBLAS_OP_T, r, OC, N, scale, xa16, dout, PQ_BF16, r, OC, 1.0f, dB, r);
    gemm_bf16(CUBLAS_OP_N, CUBLAS_OP_N, r, N, OC, scale, B16, dout, r, OC, 0.0f, dxa16, r, NULL);
    pq_cuda_act_widen(dxa, dxa16, (size_t)N * r);
}

// bf16 activations: xa (N,r) = inp A16^T rounded once to bf16 (the B side's operand), widened into xa; then
// out += scale xa16 B16^T, rounded once. No activation widened.
extern "C" void pq_lora_forward(float *out, float *xa, const float *inp, const float *A, const float *B, float scale,
                                int N, int C, int OC, int r) {
    if (N <= 0) return;
    if (pq_cuda_act_bf16()) {
        size_t n[3] = {(size_t)r * C, (size_t)OC * r, (size_t)N * r};
        pq_bf16 *b[3];
        lora16_bufs(b, n, 3);
        pq_cuda_act_narrow(b[0], A, n[0]);
        pq_cuda_act_narrow(b[1], B, n[1]);
        gemm_bf16(CUBLAS_OP_T, CUBLAS_OP_N, r, N, C, 1.0f, b[0], inp, C, C, 0.0f, b[2], r, NULL);
        pq_cuda_act_widen(xa, b[2], n[2]);
        lora16_up(out, b[2], b[1], scale, N, OC, r);
        return;
    }
    lora_xa(xa, inp, A, N, C, r);
    pq_lora_up_forward(out, xa, B, scale, N, OC, r);
}

// one thread per (token, head, d < HS/2); dir +1 forward, -1 backward
template <typename T>
__global__ void rope_kernel(T *x, const int32_t *pos, const float *inv_freq, int N, int NH, int HS, int dir) {
    int half = HS / 2;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * NH * half) return;
    int d = (int)(idx % half);
    size_t ih = idx / half; // token * NH + head
    rope_pair(x + ih * HS, d, half, (float)pos[ih / NH] * inv_freq[d], dir);
}

static void rope(float *x, const int32_t *pos, const float *inv_freq, int N, int NH, int HS, int dir) {
    size_t n = (size_t)N * NH * (HS / 2);
    if (!n) return;
    unsigned g = pq_blocks(n, PQ_EW_THREADS);
    if (pq_cuda_act_bf16())
        rope_kernel<<<g, PQ_EW_THREADS, 0, pq_cuda_stream>>>((pq_bf16 *)x, pos, inv_freq, N, NH, HS, dir);
    else
        rope_kernel<<<g, PQ_EW_THREADS, 0, pq_cuda_stream>>>(x, pos, inv_freq, N, NH, HS, dir);
    CU_LAUNCHED();
}

// in place: x (N,NH,HS) rotated by pos (N)
extern "C" void pq_rope_forward(float *x, const int32_t *pos, const float *inv_freq, int N, int NH, int HS) {
    rope(x, pos, inv_freq, N, NH, HS, 1);
}

// q (N,NH,HS) and k (N,KVH,HS) in one launch: one thread per (token, head of q then k, d < HS/2)
template <typename T>
__global__ void rope_qk_kernel(T *q, T *k, const int32_t *pos, const float *inv_freq, int N, int NH, int KVH, int HS,
                               int dir) {
    int half = HS / 2, H = NH + KVH;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * H * half) return;
    int d = (int)(idx % half);
    size_t ih = idx / half; // token * H + head
    size_t i = ih / H;
    int h = (int)(ih % H);
    T *v = h < NH ? q + (i * NH + h) * HS : k + (i * KVH + (h - NH)) * HS;
    rope_pair(v, d, half, (float)pos[i] * inv_freq[d], dir);
}

static void rope_qk(float *q, float *k, const int32_t *pos, const float *inv_freq, int N, int NH, int KVH, int HS,
                    int dir) {
    size_t n = (size_t)N * (NH + KVH) * (HS / 2);
    if (!n) return;
    unsigned g = pq_blocks(n, PQ_EW_THREADS);
    if (pq_cuda_act_bf16())
        rope_qk_kernel<<<g, PQ_EW_THREADS, 0, pq_cuda_stream>>>((pq_bf16 *)q, (pq_bf16 *)k, pos, inv_freq, N, NH,
                                                                 KVH, HS, dir);
    else
        rope_qk_kernel<<<g, PQ_EW_THREADS, 0, pq_cuda_stream>>>(q, k, pos, inv_freq, N, NH, KVH, HS, dir);
    CU_LAUNCHED();
}

extern "C" void pq_rope_qk_forward(float *q, float *k, const int32_t *pos, const float *inv_freq, int N, int NH,
                                   int KVH, int HS) {
    rope_qk(q, k, pos, inv_freq, N, NH, KVH, HS, 1);
}

template <typename T> __global__ void swiglu_forward_kernel(T *out, const T *gate, const T *up, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = pq_ld(gate, i);
    pq_st(out, i, g / (1.0f + expf(-g)) * pq_ld(up, i));
}

// gate (N,H), up (N,H) -> out (N,H)
extern "C" void pq_swiglu_forward(float *out, const float *gate, const float *up, int N, int H) {
    size_t n = (size_t)N * H;
    if (!n) return;
    unsigned g = pq_blocks(n, PQ_EW_THREADS);
    if (pq_cuda_act_bf16())
        swiglu_forward_kernel<<<g, PQ_EW_THREADS, 0, pq_cuda_stream>>>((pq_bf16 *)out, (const pq_bf16 *)gate,
                                                                       (const pq_bf16 *)up, n);
    else
        swiglu_forward_kernel<<<g, PQ_EW_THREADS, 0, pq_cuda_stream>>>(out, gate, up, n);
    CU_LAUNCHED();
}

// ---- a decoding step's fusions with more rows than the GEMV serves (PQ_DECODE_FUSE: ops_gen.cu) ----

bool pq_cuda_linear_add(float *x, const float *inp, const PqWeight *w, const float *bias, int N, int C, int OC) {
    if (pq_cuda_act_bf16() || w->dtype == PQ_F32 || bias || w->cols != C || w->rows != OC || N <= 0) return false;
    float us;
    const void *xb = to_dtype(PQ_SCR_ACT, inp, (size_t)N * C, w->dtype, &us);
    gemm_raw(CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, us, w->data, xb, w->dtype, C, C, 1.0f, x, OC); // beta 1: x +=
    return true;
}

bool pq_cuda_mlp_bf16(float *x, float *gate, float *up, float *mlp, const float *ln, const PqWeight *wg,
                      const PqWeight *wu, const PqWeight *wd, const float *bg, const float *bu, const float *bd, int N,
                      int C, int H) {
    if (pq_cuda_act_bf16() || N <= 0 || bg || bu || bd || wg->dtype != PQ_BF16 || wu->dtype != PQ_BF16 ||
        wd->dtype != PQ_BF16 || wg->rows != H || wu->rows != H || wg->cols != C || wu->cols != C || wd->rows != C ||
        wd->cols != H)
        return false;
    float us;
    const void *xb = to_dtype(PQ_SCR_ACT, ln, (size_t)N * C, PQ_BF16, &us);
    pq_bf16 *gb = (pq_bf16 *)gate, *ub = (pq_bf16 *)up, *mb = (pq_bf16 *)mlp;
    gemm_bf16(CUBLAS_OP_T, CUBLAS_OP_N, H, N, C, 1.0f, wg->data, xb, C, C, 0.0f, gb, H, NULL);
    gemm_bf16(CUBLAS_OP_T, CUBLAS_OP_N, H, N, C, 1.0f, wu->data, xb, C, C, 0.0f, ub, H, NULL);
    size_t n = (size_t)N * H;
    swiglu_forward_kernel<<<pq_blocks(n, PQ_EW_THREADS), PQ_EW_THREADS, 0, pq_cuda_stream>>>(mb, gb, ub, n);
    CU_LAUNCHED();
    gemm_raw(CUBLAS_OP_T, CUBLAS_OP_N, C, N, H, 1.0f, wd->data, mb, PQ_BF16, H, H, 1.0f, x, C); // beta 1: x +=
    return true;
}

template <typename T> __global__ void residual_kernel(T *x, const T *y, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) pq_st(x, i, pq_ld(x, i) + pq_ld(y, i));
}

// x (n) += y (n)
extern "C" void pq_residual_forward(float *x, const float *y, size_t n) {
    if (!n) return;
    unsigned g = pq_blocks(n, PQ_EW_THREADS);
    if (pq_cuda_act_bf16())
        residual_kernel<<<g, PQ_EW_THREADS, 0, pq_cuda_stream>>>((pq_bf16 *)x, (const pq_bf16 *)y, n);
    else
        residual_kernel<<<g, PQ_EW_THREADS, 0, pq_cuda_stream>>>(x, y, n);
    CU_LAUNCHED();
}

// ---- log-probs over the LM head, a chunk of vocab rows at a time ----

// Vocab rows per chunk: the chunk's logits (N x vc f32) stay under ~256 MB.
// PQ_CUDA_VOCAB_CHUNK overrides it (the parity tests use several chunks).
static int vocab_chunk(int N, int V) {
    long vc = (64L << 20) / (N > 0 ? N : 1);
    const char *ov = getenv("PQ_CUDA_VOCAB_CHUNK");
    if (ov && atol(ov) > 0) vc = atol(ov);
    else if (vc < 256) vc = 256;
    if (vc > V) vc = V;
    return (int)vc;
}

__global__ void lse_init_kernel(float *m, float *s, float *tl, int N) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < N) m[i] = -INFINITY, s[i] = 0.0f, tl[i] = 0.0f;
}

// one block per token: fold the chunk's logits lg (vc per token) into the
// running max m and sum s (of exp(x - m)), and pick the target's logit
__global__ void lse_chunk_kernel(float *m, float *s, float *tl, const float *lg, const int32_t *targets, int v0,
                                 int vc) {
    size_t i = blockIdx.x;
    const float *x = lg + i * vc;
    float cm = -INFINITY;
    for (int j = threadIdx.x; j < vc; j += blockDim.x) cm = fmaxf(cm, x[j]);
    cm = block_max(cm);
    float nm = fmaxf(cm, m[i]);
    float acc = 0;
    for (int j = threadIdx.x; j < vc; j += blockDim.x) acc += expf(x[j] - nm);
    acc = block_sum(acc);
    if (threadIdx.x == 0) {
        s[i] = s[i] * expf(m[i] - nm) + acc;
        m[i] = nm;
        int tg = targets[i];
        if (tg >= v0 && tg < v0 + vc) tl[i] = x[tg - v0];
    }
}

__global__ void logp_final_kernel(float *logp, float *lse, const float *m, const float *s, const float *tl,
                                  const int32_t *targets, int N) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) return;
    float l = m[i] + logf(s[i]);
    if (lse) lse[i] = l;
    logp[i] = targets[i] >= 0 ? tl[i] - l : 0.0f;
}

// h (N,C), lm_head (V,C), targets (N) -> logp (N), lse (N). bf16 activations: h is already the bf16 the
// product reads (a bf16 head); an f16 head's through the fallback.
extern "C" void pq_logp_forward(float *logp, float *lse, const float *h, const PqWeight *lm_head,
                                const int32_t *targets, int N, int C, int V) {
    if (N <= 0) return;
    bool bf = pq_cuda_act_bf16();
    if (bf && lm_head->dtype != PQ_BF16) {
        PqActFallback fb;
        pq_logp_forward(logp, lse, fb.in(h, (size_t)N * C), lm_head, targets, N, C, V);
        return;
    }
    int vc = vocab_chunk(N, V);
    size_t wsz = pq_dtype_size(lm_head->dtype);
    float *rows = (float *)pq_cuda_scratch(PQ_SCR_ROWS, (size_t)3 * N * sizeof(float));
    float *m = rows, *s = rows + N, *tl = rows + 2 * N;
    float *lg = (float *)pq_cuda_scratch(PQ_SCR_LOGITS, (size_t)N * vc * sizeof(float));
    float us = 1.0f;
    const void *hb = bf ? (const void *)h : to_dtype(PQ_SCR_ACT, h, (size_t)N * C, lm_head->dtype, &us);
    lse_init_kernel<<<pq_blocks(N, 256), 256, 0, pq_cuda_stream>>>(m, s, tl, N);
    CU_LAUNCHED();
    for (int v0 = 0; v0 < V; v0 += vc) {
        int n = V - v0 < vc ? V - v0 : vc;
        const char *w = (const char *)lm_head->data + (size_t)v0 * C * wsz;
        // lg^T (n,N) col-major = W_chunk (n,C) h^T (C,N): lg row-major (N,n)
        gemm_raw(CUBLAS_OP_T, CUBLAS_OP_N, n, N, C, us, w, hb, lm_head->dtype, C, C, 0.0f, lg, n);
        lse_chunk_kernel<<<N, 256, 0, pq_cuda_stream>>>(m, s, tl, lg, targets, v0, n);
        CU_LAUNCHED();
    }
    logp_final_kernel<<<pq_blocks(N, 256), 256, 0, pq_cuda_stream>>>(logp, lse, m, s, tl, targets, N);
    CU_LAUNCHED();
}

// ---- backward operations ----

template <typename T>
__global__ void rmsnorm_backward_kernel(T *dinp, const T *dout, const T *inp, const float *weight, const float *rstd,
                                        int C) {
    size_t i = blockIdx.x;
    const T *dy = dout + i * C, *x = inp + i * C;
    T *dx = dinp + i * C;
    float dot = 0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) dot += weight[c] * pq_ld(dy, c) * pq_ld(x, c);
    dot = block_sum(dot);
    float r = rstd[i];
    float k = dot * r * r * r / C;
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        pq_st(dx, c, pq_ld(dx, c) + (r * weight[c] * pq_ld(dy, c) - pq_ld(x, c) * k));
}

// dout (N,C), inp (N,C), weight (C), rstd (N) -> dinp (N,C) +=
extern "C" void pq_rmsnorm_backward(float *dinp, const float *dout, const float *inp, const float *weight,
                                    const float *rstd, int N, int C) {
    if (N <= 0) return;
    if (pq_cuda_act_bf16())
        rmsnorm_backward_kernel<<<N, 256, 0, pq_cuda_stream>>>((pq_bf16 *)dinp, (const pq_bf16 *)dout,
                                                               (const pq_bf16 *)inp, weight, rstd, C);
    else
        rmsnorm_backward_kernel<<<N, 256, 0, pq_cuda_stream>>>(dinp, dout, inp, weight, rstd, C);
    CU_LAUNCHED();
}

// dout (N,OC), weight (OC,C) -> dinp (N,C) += dout weight. Column-major:
// dinp^T (C,N) += W^T (C,OC) dout^T (OC,N), W^T being the stored (C,OC).
// bf16 activations: a bf16 weight's product reads dout as it is and accumulates into dinp (beta 1: dinp read,
// the sum in f32, rounded once); other weights through the fallback.
extern "C" void pq_linear_backward(float *dinp, const float *dout, const PqWeight *weight, int N, int C, int OC) {
    if (N <= 0) return;
    if (pq_cuda_act_bf16()) {
        if (weight->dtype == PQ_BF16) {
            gemm_bf16(CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, 1.0f, weight->data, dout, C, OC, 1.0f, dinp, C, NULL);
        } else {
            PqActFallback fb;
            pq_linear_backward(fb.inout(dinp, (size_t)N * C), fb.in(dout, (size_t)N * OC), weight, N, C, OC);
        }
        return;
    }
    pq_cuda_gemm_w(CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, 1.0f, weight->data, weight->dtype, C, dout, OC, N, 1.0f, dinp,
                   C, PQ_SCR_ACT);
}

// dinp (N,C) += sum_t dout[t] (N,OC_t) w[t] (OC_t,C): one product per member accumulating into dinp (each
// dout[t] is converted anyway, so gathering them side by side first would only add a copy)
// bf16 activations: with n > 1 bf16 weights the members' products accumulate into an f32 copy of dinp (read
// once, rounded once at the end, as one "+=" op), each reading its dout as it is; n 1: linear_backward's.
extern "C" void pq_linear_group_backward(float *dinp, const float *const *dout, const PqWeight *w, int n, int N,
                                         int C) {
    if (N <= 0) return;
    if (pq_cuda_act_bf16() && n > 1) {
        bool bf = true;
        for (int t = 0; t < n; t++) bf = bf && w[t].dtype == PQ_BF16;
        PqActFallback fb;
        float *acc = fb.inout(dinp, (size_t)N * C);
        if (bf) {
            for (int t = 0; t < n; t++) // acc^T (C,N) += W_t^T (C,OC_t) dout_t^T (OC_t,N), as pq_linear_backward
                gemm_raw(CUBLAS_OP_N, CUBLAS_OP_N, C, N, w[t].rows, 1.0f, w[t].data, dout[t], PQ_BF16, C, w[t].rows,
                         1.0f, acc, C);
        } else {
            for (int t = 0; t < n; t++)
                pq_linear_backward(acc, fb.in(dout[t], (size_t)N * w[t].rows), &w[t], N, C, w[t].rows);
        }
        return;
    }
    for (int t = 0; t < n; t++) pq_linear_backward(dinp, dout[t], &w[t], N, C, w[t].rows);
}

// dB (OC,r) += scale dout^T xa;  dxa (N,r) = scale dout B;  dA (r,C) += dxa^T inp;
// dinp (N,C) += dxa A  (each written column-major as its transpose)
// bf16 activations: the products with bf16 operands as they are (dout, inp) or as bf16 copies (A, B, xa, dxa
// rounded once), f32 accumulation; dA, dB f32, dinp += rounded once. No activation widened.
extern "C" void pq_lora_backward(float *dinp, float *dA, float *dB, float *dxa, const float *dout, const float *inp,
                                 const float *xa, const float *A, const float *B, float scale, int N, int C, int OC,
                                 int r) {
    if (N <= 0) return;
    if (pq_cuda_act_bf16()) {
        size_t n[4] = {(size_t)r * C, (size_t)OC * r, (size_t)N * r, (size_t)N * r};
        pq_bf16 *b[4];
        lora16_bufs(b, n, 4);
        if (dinp) pq_cuda_act_narrow(b[0], A, n[0]);
        pq_cuda_act_narrow(b[1], B, n[1]);
        pq_cuda_act_narrow(b[2], xa, n[2]);
        lora16_up_back(dB, dxa, b[3], dout, b[2], b[1], scale, N, OC, r);
        gemm_raw(CUBLAS_OP_N, CUBLAS_OP_T, C, r, N, 1.0f, inp, b[3], PQ_BF16, C, r, 1.0f, dA, C);
        if (dinp) gemm_bf16(CUBLAS_OP_N, CUBLAS_OP_N, C, N, r, 1.0f, b[0], b[3], C, r, 1.0f, dinp, C, NULL);
        return;
    }
    pq_lora_up_backward(dB, dxa, dout, xa, B, scale, N, OC, r);
    sgemm(CUBLAS_OP_N, CUBLAS_OP_T, C, r, N, 1.0f, inp, C, dxa, r, 1.0f, dA, C);
    if (dinp) sgemm(CUBLAS_OP_N, CUBLAS_OP_N, C, N, r, 1.0f, A, C, dxa, r, 1.0f, dinp, C);
}

extern "C" void pq_rope_backward(float *dx, const int32_t *pos, const float *inv_freq, int N, int NH, int HS) {
    rope(dx, pos, inv_freq, N, NH, HS, -1);
}
extern "C" void pq_rope_qk_backward(float *dq, float *dk, const int32_t *pos, const float *inv_freq, int N, int NH,
                                    int KVH, int HS) {
    rope_qk(dq, dk, pos, inv_freq, N, NH, KVH, HS, -1);
}

template <typename T>
__global__ void swiglu_backward_kernel(T *dgate, T *dup, const T *dout, const T *gate, const T *up, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = pq_ld(gate, i), s = 1.0f / (1.0f + expf(-g)), dy = pq_ld(dout, i), u = pq_ld(up, i);
    pq_st(dgate, i, dy * u * s * (1.0f + g * (1.0f - s)));
    pq_st(dup, i, dy * g * s);
}

// dout (N,H), gate (N,H), up (N,H) -> dgate (N,H) =, dup (N,H) =
extern "C" void pq_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                                   int N, int H) {
    size_t n = (size_t)N * H;
    if (!n) return;
    unsigned g = pq_blocks(n, PQ_EW_THREADS);
    if (pq_cuda_act_bf16())
        swiglu_backward_kernel<<<g, PQ_EW_THREADS, 0, pq_cuda_stream>>>(
            (pq_bf16 *)dgate, (pq_bf16 *)dup, (const pq_bf16 *)dout, (const pq_bf16 *)gate, (const pq_bf16 *)up, n);
    else
        swiglu_backward_kernel<<<g, PQ_EW_THREADS, 0, pq_cuda_stream>>>(dgate, dup, dout, gate, up, n);
    CU_LAUNCHED();
}

// one block per token: z (vc) -> dz = g (onehot(target) - exp(z - lse)), g = 0
// for rows without a target
__global__ void logp_dz_kernel(float *z, const float *dlogp, const int32_t *targets, const float *lse, int v0,
                               int vc) {
    size_t i = blockIdx.x;
    int tg = targets[i];
    float g = tg >= 0 ? dlogp[i] : 0.0f, l = lse[i];
    float *zr = z + i * vc;
    for (int j = threadIdx.x; j < vc; j += blockDim.x) {
        float d = g == 0.0f ? 0.0f : -g * expf(zr[j] - l);
        if (j == tg - v0) d += g;
        zr[j] = d;
    }
}

// dlogp (N), h (N,C), lm_head (V,C), targets (N), lse (N) -> dh (N,C) +=. bf16 activations: h read as it
// is (a bf16 head), dh accumulated over the vocab chunks in f32 (the fallback's copy) and rounded once;
// an f16 head's through the fallback.
extern "C" void pq_logp_backward(float *dh, const float *dlogp, const float *h, const PqWeight *lm_head,
                                 const int32_t *targets, const float *lse, int N, int C, int V) {
    if (N <= 0) return;
    const void *hbf = NULL; // bf16 activations: the bf16 h the products read
    PqActFallback *fb = NULL;
    if (pq_cuda_act_bf16()) {
        fb = new PqActFallback;
        if (lm_head->dtype == PQ_BF16) hbf = h;
        else h = fb->in(h, (size_t)N * C);
        dh = fb->inout(dh, (size_t)N * C);
    }
    int vc = vocab_chunk(N, V);
    size_t wsz = pq_dtype_size(lm_head->dtype);
    float *lg = (float *)pq_cuda_scratch(PQ_SCR_LOGITS, (size_t)N * vc * sizeof(float));
    float us = 1.0f;
    const void *hb = hbf ? hbf : to_dtype(PQ_SCR_ACT, h, (size_t)N * C, lm_head->dtype, &us);
    for (int v0 = 0; v0 < V; v0 += vc) {
        int n = V - v0 < vc ? V - v0 : vc;
        const char *w = (const char *)lm_head->data + (size_t)v0 * C * wsz;
        gemm_raw(CUBLAS_OP_T, CUBLAS_OP_N, n, N, C, us, w, hb, lm_head->dtype, C, C, 0.0f, lg, n);
        logp_dz_kernel<<<N, 256, 0, pq_cuda_stream>>>(lg, dlogp, targets, lse, v0, n);
        CU_LAUNCHED();
        // dh^T (C,N) += W_chunk^T (C,n) dz^T (n,N)
        pq_cuda_gemm_w(CUBLAS_OP_N, CUBLAS_OP_N, C, N, n, 1.0f, w, lm_head->dtype, C, lg, n, N, 1.0f, dh, C,
                       PQ_SCR_ACT2);
    }
    delete fb; // (bf16 activations: dh narrowed back)
}

// splitmix64, exactly as ops_grad_cpu.c: the same (seed, index) gives the same mask
__device__ __forceinline__ uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

template <typename T>
__global__ void dropout_kernel(T *out, const T *inp, float keep, uint64_t thr, uint64_t seed, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) pq_st(out, i, mix64(seed ^ mix64(i)) < thr ? 0.0f : pq_ld(inp, i) * keep);
}

// dropout_forward's threshold (p * 2^64, as the CPU) and scale; p 0: no mask
static uint64_t drop_thr(float p, float *keep) {
    *keep = p > 0 ? 1.0f / (1.0f - p) : 1.0f;
    if (p >= 1) return UINT64_MAX;
    return (uint64_t)((double)p * 18446744073709551616.0 / 2) * 2;
}

extern "C" void pq_dropout_forward(float *out, const float *inp, float p, uint64_t seed, size_t n) {
    if (!n) return;
    float keep;
    uint64_t thr = drop_thr(p, &keep);
    unsigned g = pq_blocks(n, PQ_EW_THREADS);
    if (pq_cuda_act_bf16())
        dropout_kernel<<<g, PQ_EW_THREADS, 0, pq_cuda_stream>>>((pq_bf16 *)out, (const pq_bf16 *)inp, keep, thr, seed,
                                                                n);
    else
        dropout_kernel<<<g, PQ_EW_THREADS, 0, pq_cuda_stream>>>(out, inp, keep, thr, seed, n);
    CU_LAUNCHED();
}

// lora_dx_group's tiles: a block owns LDX_COLS columns (a thread each) of LDX_ROWS rows
#define LDX_ROWS 16
#define LDX_COLS 256

// ---- LoRA on a group of adapters sharing one input (ops_grad.h's lora_*_group) ----

// Up to PQ_LORA_GROUP adapters' pointers and seeds, passed by value to the kernels.
struct LoraGroup {
    const float *a[PQ_LORA_GROUP], *b[PQ_LORA_GROUP];
    float *w[PQ_LORA_GROUP];
    uint64_t seed[PQ_LORA_GROUP];
};

static LoraGroup lora_group(const float *const *a, const float *const *b, float *const *w, const uint64_t *seed,
                            int n) {
    LoraGroup g;
    memset(&g, 0, sizeof g);
    for (int t = 0; t < n; t++) {
        g.a[t] = a ? a[t] : NULL, g.b[t] = b ? b[t] : NULL, g.w[t] = w ? w[t] : NULL;
        g.seed[t] = seed ? seed[t] : 0;
    }
    return g;
}

// A LoRA product's operand with activations of type T: v itself for f32, rounded to bf16 for bf16 (ops_grad.h's
// rounding points, as autocast: A, B, xa, dxa and the dropped x as bf16)
template <typename T> __device__ __forceinline__ float lora_opnd(float v) { return v; }
template <> __device__ __forceinline__ float lora_opnd<pq_bf16>(float v) {
    return __bfloat162float(__float2bfloat16_rn(v));
}

// Element xi of x (v, 0 outside) through each adapter's mask into s[t * stride] (as a product's operand): the
// index's hash once, each seed's on top of it.
template <int NT, typename T>
__device__ __forceinline__ void drop_stage(float *s, int stride, float v, size_t xi, int in, const LoraGroup &g,
                                           float keep, uint64_t thr, int drop) {
    uint64_t h = drop && in ? mix64(xi) : 0;
#pragma unroll
    for (int t = 0; t < NT; t++)
        s[t * stride] = drop && in && mix64(g.seed[t] ^ h) < thr ? 0.0f : lora_opnd<T>(v * keep);
}

// xa[t] (N,r) = drop_t(x) A[t]^T (A in g.a, xa in g.w): a block owns LXA_ROWS rows and 16 of the r columns
// (blockIdx.y) for every t, down C LXA_K columns at a time: x's chunk read once and staged through each t's
// mask, A[t]'s chunk beside it; a thread sums one (row, column) of each t in registers.
#define LXA_ROWS 16
#define LXA_K 64
template <int NT, typename T>
__global__ void __launch_bounds__(256) lora_xa_group_kernel(LoraGroup g, const T *x, float keep, uint64_t thr,
                                                            int drop, int N, int C, int r) {
    __shared__ float sx[NT][LXA_ROWS][LXA_K + 1];
    __shared__ float sa[NT][16][LXA_K + 1];
    int i0 = blockIdx.x * LXA_ROWS, k0 = blockIdx.y * 16, tid = threadIdx.x, ti = tid / 16, tk = tid % 16;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    for (int c0 = 0; c0 < C; c0 += LXA_K) {
        for (int e = tid; e < LXA_ROWS * LXA_K; e += 256) {
            int i = e / LXA_K, c = e % LXA_K, in = i0 + i < N && c0 + c < C;
            size_t xi = (size_t)(i0 + i) * C + c0 + c;
            drop_stage<NT, T>(&sx[0][i][c], LXA_ROWS * (LXA_K + 1), in ? pq_ld(x, xi) : 0.0f, xi, in, g, keep, thr,
                              drop);
        }
        for (int e = tid; e < 16 * LXA_K; e += 256) {
            int k = e / LXA_K, c = e % LXA_K, in = k0 + k < r && c0 + c < C;
#pragma unroll
            for (int t = 0; t < NT; t++) sa[t][k][c] = in ? lora_opnd<T>(g.a[t][(size_t)(k0 + k) * C + c0 + c]) : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int c = 0; c < LXA_K; c++)
#pragma unroll
            for (int t = 0; t < NT; t++) acc[t] += sx[t][ti][c] * sa[t][tk][c];
        __syncthreads();
    }
    if (i0 + ti < N && k0 + tk < r)
#pragma unroll
        for (int t = 0; t < NT; t++) g.w[t][(size_t)(i0 + ti) * r + k0 + tk] = lora_opnd<T>(acc[t]);
}

// dA[t] (r,C) += dxa[t]^T drop_t(x) (dxa in g.a, dA in g.w): a block owns LDA_COLS columns and 16 of the r rows
// (blockIdx.z) over one split of the N rows (blockIdx.y), LDA_ROWS rows at a time staged as in the xa kernel;
// its sums go to part (split, t, r, C), reduced in a fixed order after, or with one split straight into dA.
#define LDA_COLS 64
#define LDA_ROWS 16
template <int NT, typename T>
__global__ void __launch_bounds__(256) lora_dA_group_kernel(LoraGroup g, const T *x, float *part, int rows_per,
                                                            float keep, uint64_t thr, int drop, int N, int C, int r) {
    __shared__ float sx[NT][LDA_ROWS][LDA_COLS];
    __shared__ float sd[NT][LDA_ROWS][16];
    int c0 = blockIdx.x * LDA_COLS, s = blockIdx.y, k0 = blockIdx.z * 16, tid = threadIdx.x;
    int tc = tid % LDA_COLS, tq = tid / LDA_COLS; // column tc; rows tq + 4j of the 16
    int ib = s * rows_per, ie = N < ib + rows_per ? N : ib + rows_per;
    float acc[NT][4];
#pragma unroll
    for (int t = 0; t < NT; t++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[t][j] = 0.0f;
    for (int i0 = ib; i0 < ie; i0 += LDA_ROWS) {
        for (int e = tid; e < LDA_ROWS * LDA_COLS; e += 256) {
            int i = e / LDA_COLS, c = e % LDA_COLS, in = i0 + i < ie && c0 + c < C;
            size_t xi = (size_t)(i0 + i) * C + c0 + c;
            drop_stage<NT, T>(&sx[0][i][c], LDA_ROWS * LDA_COLS, in ? pq_ld(x, xi) : 0.0f, xi, in, g, keep, thr,
                              drop);
        }
        for (int e = tid; e < LDA_ROWS * 16; e += 256) {
            int i = e / 16, k = e % 16, in = i0 + i < ie && k0 + k < r;
#pragma unroll
            for (int t = 0; t < NT; t++) sd[t][i][k] = in ? lora_opnd<T>(g.a[t][(size_t)(i0 + i) * r + k0 + k]) : 0.0f;
        }
        __syncthreads();
#pragma unroll 4
        for (int i = 0; i < LDA_ROWS; i++)
#pragma unroll
            for (int t = 0; t < NT; t++) {
                float xv = sx[t][i][tc];
#pragma unroll
                for (int j = 0; j < 4; j++) acc[t][j] += sd[t][i][tq + 4 * j] * xv;
            }
        __syncthreads();
    }
    int c = c0 + tc;
    if (c >= C) return;
#pragma unroll
    for (int t = 0; t < NT; t++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int k = k0 + tq + 4 * j;
            if (k >= r) continue;
            if (part) part[(((size_t)s * NT + t) * r + k) * C + c] = acc[t][j];
            else g.w[t][(size_t)k * C + c] += acc[t][j];
        }
}

// dA[t] (r,C) += the S splits' sums of part (S, n, r, C), in split order
__global__ void lora_dA_reduce_kernel(LoraGroup g, const float *part, int S, int n, int r, int C) {
    size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x, rc = (size_t)r * C;
    if (e >= (size_t)n * rc) return;
    int t = (int)(e / rc);
    size_t kc = e % rc;
    float sum = 0.0f;
    for (int s = 0; s < S; s++) sum += part[((size_t)s * n + t) * rc + kc];
    g.w[t][kc] += sum;
}

// dx (N,C) += sum_t drop_t(dxa[t] A[t]) (dxa in g.a, A in g.b): LDX_ROWS x LDX_COLS tiles, each t's
// product in registers added through its mask into a total, dx read and written once.
template <int NT, typename T>
__global__ void __launch_bounds__(LDX_COLS) lora_dx_group_kernel(T *dx, LoraGroup g, float keep, uint64_t thr,
                                                                 int drop, int N, int C, int r) {
    extern __shared__ float sdx[]; // (NT, LDX_ROWS, rp): r padded with zeros to whole chunks of 16
    int c = blockIdx.x * LDX_COLS + threadIdx.x, i0 = blockIdx.y * LDX_ROWS, rp = (r + 15) / 16 * 16;
    int nr = N - i0 < LDX_ROWS ? N - i0 : LDX_ROWS;
    for (int t = 0; t < NT; t++)
        for (int e = threadIdx.x; e < LDX_ROWS * rp; e += blockDim.x) {
            int i = e / rp, k = e % rp;
            sdx[t * LDX_ROWS * rp + e] = i < nr && k < r ? lora_opnd<T>(g.a[t][(size_t)(i0 + i) * r + k]) : 0.0f;
        }
    __syncthreads();
    if (c >= C) return;
    float tot[LDX_ROWS];
    uint64_t h[LDX_ROWS]; // each element's index hashed once for the group
#pragma unroll
    for (int i = 0; i < LDX_ROWS; i++) tot[i] = 0.0f, h[i] = drop ? mix64((size_t)(i0 + i) * C + c) : 0;
#pragma unroll
    for (int t = 0; t < NT; t++) {
        const float *sx = sdx + t * LDX_ROWS * rp;
        float acc[LDX_ROWS];
#pragma unroll
        for (int i = 0; i < LDX_ROWS; i++) acc[i] = 0.0f;
        for (int k0 = 0; k0 < r; k0 += 16) {
            float a[16];
#pragma unroll
            for (int k = 0; k < 16; k++) a[k] = k0 + k < r ? lora_opnd<T>(g.b[t][(size_t)(k0 + k) * C + c]) : 0.0f;
#pragma unroll
            for (int i = 0; i < LDX_ROWS; i++)
#pragma unroll
                for (int k = 0; k < 16; k++) acc[i] += sx[i * rp + k0 + k] * a[k];
        }
#pragma unroll
        for (int i = 0; i < LDX_ROWS; i++)
            tot[i] += drop ? (mix64(g.seed[t] ^ h[i]) < thr ? 0.0f : acc[i] * keep) : acc[i];
    }
#pragma unroll
    for (int i = 0; i < LDX_ROWS; i++)
        if (i < nr) {
            size_t e = (size_t)(i0 + i) * C + c;
            pq_st(dx, e, pq_ld(dx, e) + tot[i]);
        }
}

// (T the activations' type, a template parameter of the kernels after NT)
#define LORA_GROUP_LAUNCH(kern, T, n, grid, block, smem, ...)                                                        \
    switch (n) {                                                                                                     \
    case 1: kern<1, T><<<grid, block, smem, pq_cuda_stream>>>(__VA_ARGS__); break;                                   \
    case 2: kern<2, T><<<grid, block, smem, pq_cuda_stream>>>(__VA_ARGS__); break;                                   \
    case 3: kern<3, T><<<grid, block, smem, pq_cuda_stream>>>(__VA_ARGS__); break;                                   \
    default: kern<4, T><<<grid, block, smem, pq_cuda_stream>>>(__VA_ARGS__); break;                                  \
    }

template <typename T>
static void lora_xa_group(float *const *xa, const T *x, const float *const *A, const uint64_t *seed, float p, int n,
                          int N, int C, int r) {
    float keep;
    uint64_t thr = drop_thr(p, &keep);
    for (int t0 = 0; t0 < n; t0 += PQ_LORA_GROUP) { // more than a group: PQ_LORA_GROUP at a time
        int m = n - t0 < PQ_LORA_GROUP ? n - t0 : PQ_LORA_GROUP;
        LoraGroup g = lora_group(A + t0, NULL, xa + t0, seed ? seed + t0 : NULL, m);
        dim3 grid((N + LXA_ROWS - 1) / LXA_ROWS, (r + 15) / 16);
        LORA_GROUP_LAUNCH(lora_xa_group_kernel, T, m, grid, 256, 0, g, x, keep, thr, p > 0, N, C, r);
        CU_LAUNCHED();
    }
}

// (bf16 activations: x read as bf16, A and the dropped x as bf16 operands, xa rounded to bf16; f32 sums)
extern "C" void pq_lora_xa_group(float *const *xa, const float *x, const float *const *A, const uint64_t *seed,
                                 float p, int n, int N, int C, int r) {
    if (N <= 0 || r <= 0) return;
    if (pq_cuda_act_bf16()) lora_xa_group(xa, (const pq_bf16 *)x, A, seed, p, n, N, C, r);
    else lora_xa_group(xa, x, A, seed, p, n, N, C, r);
}

// The N rows in splits for about LDA_BLOCKS blocks in all (a function of the shape only: the same sums
// in the same order on every run).
#define LDA_BLOCKS 528
template <typename T>
static void lora_dA_group(float *const *dA, const float *const *dxa, const T *x, const uint64_t *seed, float p, int n,
                          int N, int C, int r) {
    float keep;
    uint64_t thr = drop_thr(p, &keep);
    int base = (C + LDA_COLS - 1) / LDA_COLS * ((r + 15) / 16), chunks = (N + LDA_ROWS - 1) / LDA_ROWS;
    int S = (LDA_BLOCKS + base - 1) / base;
    if (S > chunks) S = chunks;
    if (S < 1) S = 1;
    int rows_per = (chunks + S - 1) / S * LDA_ROWS;
    S = (N + rows_per - 1) / rows_per;
    for (int t0 = 0; t0 < n; t0 += PQ_LORA_GROUP) {
        int m = n - t0 < PQ_LORA_GROUP ? n - t0 : PQ_LORA_GROUP;
        LoraGroup g = lora_group(dxa + t0, NULL, dA + t0, seed ? seed + t0 : NULL, m);
        float *part = S > 1 ? (float *)pq_cuda_scratch(PQ_SCR_LORA, (size_t)S * m * r * C * sizeof(float)) : NULL;
        dim3 grid((C + LDA_COLS - 1) / LDA_COLS, S, (r + 15) / 16);
        LORA_GROUP_LAUNCH(lora_dA_group_kernel, T, m, grid, 256, 0, g, x, part, rows_per, keep, thr, p > 0, N, C, r);
        CU_LAUNCHED();
        if (part) {
            size_t ne = (size_t)m * r * C;
            lora_dA_reduce_kernel<<<pq_blocks(ne, PQ_EW_THREADS), PQ_EW_THREADS, 0, pq_cuda_stream>>>(g, part, S, m, r,
                                                                                                      C);
            CU_LAUNCHED();
        }
    }
}

// (bf16 activations: x read as bf16, dxa and the dropped x as bf16 operands; f32 sums into dA)
extern "C" void pq_lora_dA_group(float *const *dA, const float *const *dxa, const float *x, const uint64_t *seed,
                                 float p, int n, int N, int C, int r) {
    if (N <= 0 || C <= 0 || r <= 0) return;
    if (pq_cuda_act_bf16()) lora_dA_group(dA, dxa, (const pq_bf16 *)x, seed, p, n, N, C, r);
    else lora_dA_group(dA, dxa, x, seed, p, n, N, C, r);
}

template <typename T>
static void lora_dx_group(T *dx, const float *const *dxa, const float *const *A, const uint64_t *seed, float p, int n,
                          int N, int C, int r) {
    float keep;
    uint64_t thr = drop_thr(p, &keep);
    for (int t0 = 0; t0 < n; t0 += PQ_LORA_GROUP) {
        int m = n - t0 < PQ_LORA_GROUP ? n - t0 : PQ_LORA_GROUP;
        LoraGroup g = lora_group(dxa + t0, A + t0, NULL, seed ? seed + t0 : NULL, m);
        dim3 grid((C + LDX_COLS - 1) / LDX_COLS, (N + LDX_ROWS - 1) / LDX_ROWS);
        size_t smem = (size_t)m * LDX_ROWS * ((r + 15) / 16 * 16) * sizeof(float);
        if (smem > 48 * 1024) {
            void (*k[])(T *, LoraGroup, float, uint64_t, int, int, int, int) = {
                lora_dx_group_kernel<1, T>, lora_dx_group_kernel<2, T>, lora_dx_group_kernel<3, T>,
                lora_dx_group_kernel<4, T>};
            CU(cudaFuncSetAttribute(k[m - 1], cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        }
        LORA_GROUP_LAUNCH(lora_dx_group_kernel, T, m, grid, LDX_COLS, smem, dx, g, keep, thr, p > 0, N, C, r);
        CU_LAUNCHED();
    }
}

// (bf16 activations: dxa and A as bf16 operands, dx read and written as bf16, each element rounded once per
// call; more than PQ_LORA_GROUP adapters: once per group of them)
extern "C" void pq_lora_dx_group(float *dx, const float *const *dxa, const float *const *A, const uint64_t *seed,
                                 float p, int n, int N, int C, int r) {
    if (N <= 0 || C <= 0 || r <= 0) return;
    if (pq_cuda_act_bf16()) lora_dx_group((pq_bf16 *)dx, dxa, A, seed, p, n, N, C, r);
    else lora_dx_group(dx, dxa, A, seed, p, n, N, C, r);
}

// one adapter: lora_dx_group's kernel
extern "C" void pq_lora_dx_dropout(float *dx, const float *dxa, const float *A, float p, uint64_t seed, int N, int C,
                                   int r) {
    pq_lora_dx_group(dx, &dxa, &A, &seed, p, 1, N, C, r);
}

// out (N,OC) += scale xa B^T. bf16 activations: bf16 copies of xa and B, the sum rounded once into out
extern "C" void pq_lora_up_forward(float *out, const float *xa, const float *B, float scale, int N, int OC, int r) {
    if (N <= 0) return;
    if (pq_cuda_act_bf16()) {
        size_t n[2] = {(size_t)OC * r, (size_t)N * r};
        pq_bf16 *b[2];
        lora16_bufs(b, n, 2);
        pq_cuda_act_narrow(b[0], B, n[0]);
        pq_cuda_act_narrow(b[1], xa, n[1]);
        lora16_up(out, b[1], b[0], scale, N, OC, r);
        return;
    }
    sgemm(CUBLAS_OP_T, CUBLAS_OP_N, OC, N, r, scale, B, r, xa, r, 1.0f, out, OC);
}

// dB (OC,r) += scale dout^T xa; dxa (N,r) = scale dout B (as lora_backward's first two products)
extern "C" void pq_lora_up_backward(float *dB, float *dxa, const float *dout, const float *xa, const float *B,
                                    float scale, int N, int OC, int r) {
    if (N <= 0) return;
    if (pq_cuda_act_bf16()) { // dout bf16 as it is, bf16 copies of xa and B, dxa rounded once
        size_t n[3] = {(size_t)OC * r, (size_t)N * r, (size_t)N * r};
        pq_bf16 *b[3];
        lora16_bufs(b, n, 3);
        pq_cuda_act_narrow(b[0], B, n[0]);
        pq_cuda_act_narrow(b[1], xa, n[1]);
        lora16_up_back(dB, dxa, b[2], dout, b[1], b[0], scale, N, OC, r);
        return;
    }
    if (lora_gemm_kind() == PQ_LORA_SGEMM_T) {
        size_t big = (size_t)(OC > N ? OC : N) * r;
        float *t = (float *)pq_cuda_scratch(PQ_SCR_LORA, big * sizeof(float));
        sgemm(CUBLAS_OP_N, CUBLAS_OP_T, OC, r, N, scale, dout, OC, xa, r, 0.0f, t, OC);
        from_col_major(dB, t, OC, r, 1);
        sgemm(CUBLAS_OP_T, CUBLAS_OP_T, N, r, OC, scale, dout, OC, B, r, 0.0f, t, N);
        from_col_major(dxa, t, N, r, 0);
        return;
    }
    sgemm(CUBLAS_OP_N, CUBLAS_OP_T, r, OC, N, scale, xa, r, dout, OC, 1.0f, dB, r);
    sgemm(CUBLAS_OP_N, CUBLAS_OP_N, r, N, OC, scale, B, r, dout, OC, 0.0f, dxa, r);
}

extern "C" const char *pq_ops_backend(void) { return "cuda"; }
