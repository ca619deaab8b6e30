// optim.h: AdamW over one flat arena of trainable parameters, the learning
// rate schedule (warmup then linear, cosine or constant, as Hugging Face's
// schedulers) and clipping of gradients by their global norm. Parameters,
// gradients and moments are backend memory (pq_dev_alloc; host memory on the
// CPU backend): the ops of ops_optim.h do the work where they live.
#ifndef PQ_OPTIM_H
#define PQ_OPTIM_H

#include <stddef.h>

enum { PQ_SCHED_LINEAR = 0, PQ_SCHED_COSINE, PQ_SCHED_CONSTANT };

typedef struct PqAdamW {
    double lr, beta1, beta2, eps, weight_decay;
    long t;        // steps taken
    size_t n;      // parameters
    float *m, *v;  // moments (n each), one backend allocation (pq_dev_alloc): m then v
} PqAdamW;

void pq_adamw_build(PqAdamW *o, size_t n, double lr, double beta1, double beta2, double eps, double wd);
void pq_adamw_free(PqAdamW *o);
// params (n), grads (n) in backend memory: one step at learning rate lr (the scheduled one).
void pq_adamw_step(PqAdamW *o, float *params, const float *grads, double lr);
// The moments as a checkpoint stores them (optimizer.bin): m then v, 2n
// floats (pq_adamw_state_bytes) of host memory, copied from / to the backend.
size_t pq_adamw_state_bytes(const PqAdamW *o);
void pq_adamw_state_download(const PqAdamW *o, float *host_mv);
void pq_adamw_state_upload(PqAdamW *o, const float *host_mv);

// The learning rate for optimizer step `step` (0-based) of `total`.
double pq_lr_at(int sched, double lr, long step, long warmup, long total);
int pq_sched_parse(const char *name); // -1 if unknown

// Returns the global L2 norm of g (n, backend memory) and, when max_norm > 0
// and the norm exceeds it, scales g by max_norm / (norm + 1e-6) as torch's
// clip_grad_norm_. The sum of squares is in double, in an order fixed by n.
double pq_clip_grad_norm(float *g, size_t n, double max_norm);

#endif
