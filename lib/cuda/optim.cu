// optim.cu: the CUDA versions of ops_optim.h (AdamW over the flat LoRA
// arena, sum of squares and scaling of the gradients for clipping), checked
// against ops_optim_cpu.c by tests/gpu/parity-optim.c.
#include <math.h>

#include "common.cuh"

extern "C" {
#include "ops_optim.h"
}

// Pointers an op is given must be device memory: a host pointer (the
// optimizer's arrays before they moved to the device) fails here by name
// rather than as an illegal address at the next synchronisation.
static void need_device(const void *p, const char *op, const char *what) {
    cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess || (a.type != cudaMemoryTypeDevice && a.type != cudaMemoryTypeManaged)) {
        cudaGetLastError(); // clear a sticky error from the query
        pq_cuda_fail(op, what, __FILE__, __LINE__);
    }
}

// Blocks of the grid-stride loops: enough to fill an H200 several times over.
#define OPT_THREADS 256
#define OPT_BLOCKS 1024
static unsigned grid_for(size_t n) {
    unsigned b = pq_blocks(n, OPT_THREADS);
    return b < OPT_BLOCKS ? b : OPT_BLOCKS;
}

// The CPU twin's expression, each operation rounded on its own (the _rn
// intrinsics keep nvcc from contracting a*b+c into an FMA): bit for bit the
// same f32 results. Double costs nothing here: the loop is memory-bound.
__global__ void adamw_kernel(float *p, float *m, float *v, const float *g, size_t n, double b1, double b2, double c1,
                             double c2, double step, double bc2s, double decay, double eps) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        double gi = g[i];
        double mi = __dadd_rn(__dmul_rn(b1, (double)m[i]), __dmul_rn(c1, gi));
        double vi = __dadd_rn(__dmul_rn(b2, (double)v[i]), __dmul_rn(__dmul_rn(c2, gi), gi));
        m[i] = __double2float_rn(mi);
        v[i] = __double2float_rn(vi);
        double pi = __dmul_rn((double)p[i], decay);
        double den = __dadd_rn(__ddiv_rn(__dsqrt_rn(vi), bc2s), eps);
        pi = __dsub_rn(pi, __ddiv_rn(__dmul_rn(step, mi), den));
        p[i] = __double2float_rn(pi);
    }
}

extern "C" void pq_adamw_update(float *params, float *m, float *v, const float *grads, size_t n, double lr,
                                double b1, double b2, double eps, double wd, long t) {
    if (n == 0) return;
    need_device(params, "pq_adamw_update", "params is not device memory");
    need_device(m, "pq_adamw_update", "m is not device memory");
    need_device(grads, "pq_adamw_update", "grads is not device memory");
    // the scalars on the host, as pq_cpu_adamw_update computes them
    double bc1 = 1 - pow(b1, (double)t), bc2 = 1 - pow(b2, (double)t);
    double step = lr / bc1, bc2s = sqrt(bc2), decay = 1 - lr * wd;
    adamw_kernel<<<grid_for(n), OPT_THREADS, 0, pq_cuda_stream>>>(params, m, v, grads, n, b1, b2, 1 - b1, 1 - b2, step,
                                                                  bc2s, decay, eps);
    CU_LAUNCHED();
}

// a double summed over the block (OPT_THREADS threads): the total in thread 0
__device__ double block_sum(double s) {
    __shared__ double warp[OPT_THREADS / 32];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
    int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    if (lane == 0) warp[w] = s;
    __syncthreads();
    s = 0;
    if (w == 0) {
        s = lane < OPT_THREADS / 32 ? warp[lane] : 0;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
    }
    return s;
}

// stage 1: block b's part of sum x[i]^2 (double) -> part[b]
__global__ void __launch_bounds__(OPT_THREADS) sumsq_part_kernel(double *part, const float *x, size_t n) {
    double s = 0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        double xi = x[i];
        s += xi * xi;
    }
    s = block_sum(s);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

// stage 2: one block adds the nb parts -> *out
__global__ void __launch_bounds__(OPT_THREADS) sumsq_final_kernel(double *out, const double *part, int nb) {
    double s = 0;
    for (int i = threadIdx.x; i < nb; i += OPT_THREADS) s += part[i];
    s = block_sum(s);
    if (threadIdx.x == 0) *out = s;
}

// The grid depends on n alone, so the order of the additions (and the
// result) does too. The parts and the total live in one small buffer kept
// for the process, as the backend's scratch.
extern "C" double pq_sumsq(const float *x, size_t n) {
    static double *buf;
    if (n == 0) return 0;
    need_device(x, "pq_sumsq", "x is not device memory");
    if (!buf) buf = (double *)pq_dev_alloc((OPT_BLOCKS + 1) * sizeof(double));
    unsigned nb = grid_for(n);
    sumsq_part_kernel<<<nb, OPT_THREADS, 0, pq_cuda_stream>>>(buf + 1, x, n);
    CU_LAUNCHED();
    sumsq_final_kernel<<<1, OPT_THREADS, 0, pq_cuda_stream>>>(buf, buf + 1, (int)nb);
    CU_LAUNCHED();
    double ss;
    pq_dev_download(&ss, buf, sizeof ss); // waits for the kernels
    return ss;
}

__global__ void scale_kernel(float *x, float c, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] *= c;
}

extern "C" void pq_scale(float *x, float c, size_t n) {
    if (n == 0) return;
    need_device(x, "pq_scale", "x is not device memory");
    scale_kernel<<<grid_for(n), OPT_THREADS, 0, pq_cuda_stream>>>(x, c, n);
    CU_LAUNCHED();
}
