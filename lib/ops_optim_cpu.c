// ops_optim_cpu.c: plain-C (OpenMP) optimizer operations of ops_optim.h, the
// oracle lib/cuda/optim.cu is checked against (tests/gpu/parity-optim.c).
#include "ops_optim.h"

#include <math.h>

#include "ops.h"

// Elements per partial sum of pq_cpu_sumsq, and the size below which the
// elementwise loops stay on one thread.
#define SUMSQ_CHUNK 65536

// torch.optim.AdamW (_single_tensor_adamw) in double: p *= 1 - lr wd;
// m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps).
// Built with -std=c11, so GCC contracts no a*b+c into an FMA: the CUDA twin
// rounds every operation the same way and matches bit for bit.
void pq_cpu_adamw_update(float *p, float *m, float *v, const float *g, size_t n, double lr, double b1, double b2,
                         double eps, double wd, long t) {
    double bc1 = 1 - pow(b1, (double)t), bc2 = 1 - pow(b2, (double)t);
    double step = lr / bc1, bc2s = sqrt(bc2), decay = 1 - lr * wd;
#pragma omp parallel for schedule(static) num_threads(pq_cpu_threads()) if (n > SUMSQ_CHUNK)
    for (size_t i = 0; i < n; i++) {
        double gi = g[i];
        double mi = b1 * m[i] + (1 - b1) * gi;
        double vi = b2 * v[i] + (1 - b2) * gi * gi;
        m[i] = (float)mi;
        v[i] = (float)vi;
        double pi = p[i] * decay;
        pi -= step * mi / (sqrt(vi) / bc2s + eps);
        p[i] = (float)pi;
    }
}

// Chunks of SUMSQ_CHUNK summed in order, their sums added in order: the
// same double whatever the thread count (one chunk: the plain serial sum).
double pq_cpu_sumsq(const float *x, size_t n) {
    size_t nc = (n + SUMSQ_CHUNK - 1) / SUMSQ_CHUNK;
    if (nc <= 1) {
        double ss = 0;
        for (size_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
        return ss;
    }
    double part[256], total = 0;
    for (size_t c0 = 0; c0 < nc; c0 += 256) { // 256 chunks (16M elements) at a time
        size_t k = nc - c0 < 256 ? nc - c0 : 256;
#pragma omp parallel for schedule(static) num_threads(pq_cpu_threads())
        for (size_t c = 0; c < k; c++) {
            size_t a = (c0 + c) * SUMSQ_CHUNK, b = a + SUMSQ_CHUNK < n ? a + SUMSQ_CHUNK : n;
            double ss = 0;
            for (size_t i = a; i < b; i++) ss += (double)x[i] * x[i];
            part[c] = ss;
        }
        for (size_t c = 0; c < k; c++) total += part[c];
    }
    return total;
}

void pq_cpu_scale(float *x, float c, size_t n) {
#pragma omp parallel for schedule(static) num_threads(pq_cpu_threads()) if (n > SUMSQ_CHUNK)
    for (size_t i = 0; i < n; i++) x[i] *= c;
}
