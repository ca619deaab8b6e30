// ops_optim.h: the optimizer's operations on backend memory (AdamW on the
// flat arena of LoRA parameters, the gradients' sum of squares and scaling
// for clipping by the global norm). pq_cpu_* in ops_optim_cpu.c (the oracle),
// pq_* bound by backend_optim_cpu.c or lib/cuda/optim.cu.
#ifndef PQ_OPS_OPTIM_H
#define PQ_OPS_OPTIM_H

#include <stddef.h>

#define PQ_OPS_OPTIM_DECLARE(P)                                                                                  \
    /* one torch.optim.AdamW step t (1-based) in place: params, m, v (n) updated by grads (n): decoupled        \
       decay p *= 1 - lr wd, then the bias-corrected Adam update; arithmetic in double, stored as f32 */       \
    void P##adamw_update(float *params, float *m, float *v, const float *grads, size_t n, double lr,            \
                         double beta1, double beta2, double eps, double weight_decay, long t);                  \
    /* x (n) -> sum of x[i]^2, accumulated in double in an order fixed by n alone (not by the threads or the    \
       device); returned to the host (synchronises) */                                                           \
    double P##sumsq(const float *x, size_t n);                                                                   \
    /* in place: x (n) *= c */                                                                                   \
    void P##scale(float *x, float c, size_t n);

PQ_OPS_OPTIM_DECLARE(pq_)
PQ_OPS_OPTIM_DECLARE(pq_cpu_)

#endif
