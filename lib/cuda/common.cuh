// common.cuh: what the CUDA backend's files share: error checks that abort
// with the call and place, the cuBLAS handle, growable scratch buffers, and
// the weight dtypes as device types.
#ifndef PQ_CUDA_COMMON_CUH
#define PQ_CUDA_COMMON_CUH

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "ops.h"
#include "ops_grad.h"
}

// A failed CUDA or cuBLAS call is a bug or a lost device: report and abort
// (as pq_xmalloc does on out-of-memory).
void pq_cuda_fail(const char *what, const char *err, const char *file, int line);
#define CU(call)                                                                                                    \
    do {                                                                                                            \
        cudaError_t err_ = (call);                                                                                  \
        if (err_ != cudaSuccess) pq_cuda_fail(#call, cudaGetErrorString(err_), __FILE__, __LINE__);                 \
    } while (0)
#define CUBLAS(call)                                                                                                \
    do {                                                                                                            \
        cublasStatus_t st_ = (call);                                                                                \
        if (st_ != CUBLAS_STATUS_SUCCESS) pq_cuda_fail(#call, cublasGetStatusString(st_), __FILE__, __LINE__);      \
    } while (0)
// graph.cu: while a CUDA graph is captured, an error fails the capture instead (true: pq_cuda_fail returns)
bool pq_cuda_graph_absorb(const char *what, const char *err, const char *file, int line);
// After a kernel launch: launch errors now, execution errors at the next sync.
#define CU_LAUNCHED() CU(cudaGetLastError())
// A growable device buffer made larger: *buf freed (cudaFree waits for the kernels that may still read it) and
// cap bytes allocated, *have = cap. Both stay NULL and 0 until the new one is had: while a graph is captured a
// failed call does not abort (pq_cuda_fail returns), and the next call tries again instead of taking the old
// buffer, or none, for the new size.
template <typename T> static inline void pq_cuda_regrow(T **buf, size_t *have, size_t cap) {
    if (*buf) CU(cudaFree(*buf));
    *buf = NULL, *have = 0;
    T *p = NULL;
    cudaError_t err = cudaMalloc((void **)&p, cap);
    if (err != cudaSuccess) pq_cuda_fail("cudaMalloc(&p, cap)", cudaGetErrorString(err), __FILE__, __LINE__);
    else *buf = p, *have = cap;
}

// A switch read once from the environment: *state is -1 until then, after it 0 where the variable name is "0", 1
// where it is "1", dflt where it is unset or anything else; a setter stores 0 or 1, or -1 to read it again.
static inline bool pq_env_switch(int *state, const char *name, bool dflt) {
    if (*state < 0) {
        const char *e = getenv(name);
        *state = e && !strcmp(e, "0") ? 0 : e && !strcmp(e, "1") ? 1 : dflt;
    }
    return *state != 0;
}

// Programmatic dependent launch (Hopper): a kernel launched with it (gemv.cu, PQ_PDL=1) may start while the
// kernel before it in the stream finishes; pq_pdl_wait() is where it waits for that kernel's results (before its
// first read of anything the kernel before wrote, and its first write). pq_pdl_launch_dependents() in a kernel
// lets such a dependent start once every block of this one has called it (rather than once they have all
// exited). Both do nothing on older GPUs, and where the launch did not ask for it.
__device__ __forceinline__ void pq_pdl_wait(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pq_pdl_launch_dependents(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// The backend's single stream: every kernel launch, cuBLAS/cuBLASLt product,
// cuDNN call and copy of the backend goes on it, so every op is ordered after
// the previous one. It is the legacy default stream (0), where cudaMemcpy
// synchronises with the host, except while graph.cu captures a decode step
// into a CUDA graph on a stream of its own (PQ_CUDA_GRAPH=1). Downloads
// synchronise with it before they return.
extern cudaStream_t pq_cuda_stream;
// the cuBLAS handle, bound to pq_cuda_stream
cublasHandle_t pq_cuda_blas(void);
// the scratch buffers' generation: bumped whenever one moves (a CUDA graph that captured one is stale)
unsigned pq_cuda_scratch_gen(void);

// cudaMemcpy on pq_cuda_stream: a host-bound copy has completed when it returns
void pq_cuda_copy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind);

// Scratch buffers, one per purpose, grown on demand (never shrunk) and
// reused by every op: device memory that is not an activation.
enum {
    PQ_SCR_ACT = 0, // an activation converted to the weight's dtype
    PQ_SCR_ACT2,    // a second one
    PQ_SCR_LOGITS,  // a chunk of vocab logits (f32)
    PQ_SCR_ROWS,    // per-token running max / sum / target logit
    PQ_SCR_ATT,     // attention backward: D = dout . out per row and head
    PQ_SCR_LORA,    // PQ_LORA_GEMM=sgemm_t: a LoRA product's transpose
    PQ_SCR_N
};
void *pq_cuda_scratch(int slot, size_t bytes);
// attention.cu's cached cuDNN plans read position arrays: a write over one
// (pq_dev_upload, _copy, _zero) or any free makes them stale
void pq_attention_note_write(const void *dst, size_t bytes);
void pq_attention_note_free(void);
// the weights' dtype of the model loaded last (pq_ops_set_attention_dtype), f32 before any
PqDtype pq_cuda_model_dtype(void);

// Elements per thread block for the 1-D elementwise kernels.
#define PQ_EW_THREADS 256
static inline unsigned pq_blocks(size_t n, unsigned t) { return (unsigned)((n + t - 1) / t); }

// dtype conversions on the device
__device__ __forceinline__ float pq_ld(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float pq_ld(const __nv_bfloat16 *p, size_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ float pq_ld(const __half *p, size_t i) { return __half2float(p[i]); }

// ---- activation storage (ops.h's PQ_ACTIVATIONS) ----
// With bf16 storage every activation argument of ops.h / ops_grad.h points at
// __nv_bfloat16 elements (typed float *). Each op then loads them as f32,
// computes in f32 and stores each activation output rounded once (to nearest
// even); a "+=" output is read, accumulated in f32, rounded. The elementwise
// kernels are templated on the activation type (pq_ld / pq_st); an op without
// a native bf16 path widens its activations into f32 scratch, runs its f32
// code and narrows its outputs back (PqActFallback), so every op is correct in
// either storage.
typedef __nv_bfloat16 pq_bf16;
__device__ __forceinline__ void pq_st(float *p, size_t i, float v) { p[i] = v; }
__device__ __forceinline__ void pq_st(__nv_bfloat16 *p, size_t i, float v) { p[i] = __float2bfloat16_rn(v); }

// RoPE: the pair (d, d + half) of one head v rotated by angle a (HF's rotate_half); dir +1 forward, -1 backward
// (backend.cu's rope kernels, paged.cu's rope and append)
template <typename T> __device__ void rope_pair(T *v, int d, int half, float a, int dir) {
    float c = cosf(a), s = dir > 0 ? sinf(a) : -sinf(a);
    float x0 = pq_ld(v, d), x1 = pq_ld(v, d + half);
    pq_st(v, d, x0 * c - x1 * s);
    pq_st(v, d + half, x1 * c + x0 * s);
}

// Whether this op's activation arguments are bf16: the process's storage
// (pq_ops_act_dtype), but f32 inside a PqActFallback (the f32 code it runs).
bool pq_cuda_act_bf16(void);
// n elements each way on pq_cuda_stream: dst f32 = src bf16; dst bf16 = src f32 rounded to nearest even
void pq_cuda_act_widen(float *dst, const void *src, size_t n);
void pq_cuda_act_narrow(void *dst, const float *src, size_t n);
// The fallback pool's buffer k (f32 elements), grown on demand (never shrunk).
float *pq_act_pool(int k, size_t n);
void pq_act_fallback_enter(void);
void pq_act_fallback_leave(void);

// An op's fallback in bf16 storage, for as long as the object lives: in()
// gives an f32 copy of a bf16 activation input, out() f32 scratch for an
// "=" output, inout() an f32 copy of a "+=" or in-place one; the outputs are
// narrowed back (rounded once) when the object goes out of scope, after the
// f32 code has been queued on the stream. The same pointer asked twice (an
// output that is also an input) gets the same copy. NULL stays NULL. Inside,
// pq_cuda_act_bf16() is false, so the pq_* ops called see f32.
#define PQ_ACT_FB_MAX 12
struct PqActFallback {
    struct Ent {
        const void *orig;
        float *wide;
        size_t n;
        bool wid, back; // widened from the original; narrowed back at the end
    } e[PQ_ACT_FB_MAX];
    int ne;
    PqActFallback() : ne(0) { pq_act_fallback_enter(); }
    ~PqActFallback() {
        for (int i = 0; i < ne; i++)
            if (e[i].back) pq_cuda_act_narrow((void *)e[i].orig, e[i].wide, e[i].n);
        pq_act_fallback_leave();
    }
    PqActFallback(const PqActFallback &) = delete;
    PqActFallback &operator=(const PqActFallback &) = delete;
    float *get(const void *p, size_t n, bool widen, bool back) {
        if (!p) return NULL;
        for (int i = 0; i < ne; i++)
            if (e[i].orig == p && e[i].n == n) { // (the arguments are gathered before the f32 code runs)
                if (widen && !e[i].wid) pq_cuda_act_widen(e[i].wide, p, n);
                e[i].wid = e[i].wid || widen, e[i].back = e[i].back || back;
                return e[i].wide;
            }
        if (ne == PQ_ACT_FB_MAX) {
            fprintf(stderr, "pq: internal error: more than %d activations in one bf16 fallback\n", PQ_ACT_FB_MAX);
            abort();
        }
        float *w = pq_act_pool(ne, n);
        if (widen) pq_cuda_act_widen(w, p, n);
        e[ne].orig = p, e[ne].wide = w, e[ne].n = n, e[ne].wid = widen, e[ne].back = back;
        ne++;
        return w;
    }
    const float *in(const float *p, size_t n) { return get(p, n, true, false); }
    float *out(float *p, size_t n) { return get(p, n, false, true); }
    float *inout(float *p, size_t n) { return get(p, n, true, true); }
};

// C (M,N) col-major = alpha op(A) op(B) + beta C, where A is a weight (its
// dtype) and B an f32 activation: B is converted to A's dtype (bf16/f16) in
// scratch and the product runs on tensor cores with f32 accumulation; f32
// weights use plain SGEMM. ldb/B describe B as stored (f32); the converted
// copy is packed with the same leading dimension. bslot: scratch slot for B.
// For f16, B is scaled by a power of two into f16's range first and the
// product unscaled through alpha (one host synchronisation per product).
void pq_cuda_gemm_w(cublasOperation_t ta, cublasOperation_t tb, int M, int N, int K, float alpha, const void *A,
                    PqDtype adt, int lda, const float *B, int ldb, int bcols, float beta, float *C, int ldc,
                    int bslot);

// out (N,OC) = inp (N,C) x W (OC,C)^T (+ bias) for few rows (gemv.cu), inp and out in the activations' storage:
// fits says whether the kernel serves the product (N <= PQ_GEMV_MAX_N, bf16/f16 weights, C a multiple of 8, inp
// and W 16-byte aligned, and not turned off by PQ_GEMV=0 or pq_cuda_set_gemv); pq_linear_forward and the group
// use it then.
// The kernel handles up to 8 rows, but on an H200 cuBLASLt read the weights faster at 8 (3.2-3.7 TB/s against
// 1.6-2.3) and as fast at 1 for the large products; at 1 the kernel wins on the small ones (q_proj: 2.5 TB/s
// against 2.1) and saves the input's conversion, a launch a product: one row only.
#define PQ_GEMV_MAX_N 1
bool pq_cuda_gemv_fits(const float *inp, const PqWeight *w, int N, int C);
void pq_cuda_gemv(float *out, const float *inp, const PqWeight *w, const float *bias, int N, int C, int OC);
// The same kernel, one launch for a decoding step's fusions (ops_gen.h): the n <= PQ_GROUP_MAX products of one
// input (out[t] = inp x w[t]^T + bias[t]); x += inp x w^T + bias; out = silu(inp x wg^T + bg) * (inp x wu^T + bu).
// Each returns false, launching nothing, where the kernel does not serve every product (fits, one dtype, C).
bool pq_cuda_gemv_group(float *const *out, const float *inp, const PqWeight *w, const float *const *bias, int n,
                        int N, int C);
bool pq_cuda_gemv_add(float *x, const float *inp, const PqWeight *w, const float *bias, int N, int C, int OC);
bool pq_cuda_gemv_swiglu(float *out, const float *inp, const PqWeight *wg, const PqWeight *wu, const float *bg,
                         const float *bu, int N, int C, int H);
// More rows (backend.cu, PQ_DECODE_FUSE): x (N,C) += inp x w^T through the product's own epilogue (inp converted
// once; bf16/f16 weights, no bias); the MLP of pq_mlp_forward with bf16 intermediates (bf16 weights, no biases,
// gate, up and mlp (N,H) f32 buffers holding bf16). False, nothing done, where they do not apply.
bool pq_cuda_linear_add(float *x, const float *inp, const PqWeight *w, const float *bias, int N, int C, int OC);
bool pq_cuda_mlp_bf16(float *x, float *gate, float *up, float *mlp, const float *ln, const PqWeight *wg,
                      const PqWeight *wu, const PqWeight *wd, const float *bg, const float *bu, const float *bd, int N,
                      int C, int H);

#endif
