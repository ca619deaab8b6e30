// backend_optim_cpu.c: binds the optimizer operations of ops_optim.h to their
// CPU implementations. Left out of CUDA=1 builds (lib/cuda/optim.cu).
#include "ops_optim.h"

void pq_adamw_update(float *params, float *m, float *v, const float *grads, size_t n, double lr, double beta1,
                     double beta2, double eps, double weight_decay, long t) {
    pq_cpu_adamw_update(params, m, v, grads, n, lr, beta1, beta2, eps, weight_decay, t);
}
double pq_sumsq(const float *x, size_t n) { return pq_cpu_sumsq(x, n); }
void pq_scale(float *x, float c, size_t n) { pq_cpu_scale(x, c, n); }
