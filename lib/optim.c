// optim.c: AdamW, learning-rate schedules and gradient clipping (see optim.h).
#include "optim.h"

#include <math.h>
#include <string.h>

#include "ops.h"
#include "ops_optim.h"

void pq_adamw_build(PqAdamW *o, size_t n, double lr, double beta1, double beta2, double eps, double wd) {
    memset(o, 0, sizeof *o);
    o->lr = lr, o->beta1 = beta1, o->beta2 = beta2, o->eps = eps, o->weight_decay = wd;
    o->n = n;
    o->m = pq_dev_alloc(2 * (n ? n : 1) * sizeof(float)); // zeroed
    o->v = o->m + n;
}

void pq_adamw_free(PqAdamW *o) {
    pq_dev_free(o->m);
    o->m = o->v = NULL;
}

// torch.optim.AdamW: decoupled decay, then bias-corrected Adam update.
void pq_adamw_step(PqAdamW *o, float *p, const float *g, double lr) {
    o->t++;
    pq_adamw_update(p, o->m, o->v, g, o->n, lr, o->beta1, o->beta2, o->eps, o->weight_decay, o->t);
}

size_t pq_adamw_state_bytes(const PqAdamW *o) { return 2 * o->n * sizeof(float); }
void pq_adamw_state_download(const PqAdamW *o, float *mv) { pq_dev_download(mv, o->m, pq_adamw_state_bytes(o)); }
void pq_adamw_state_upload(PqAdamW *o, const float *mv) { pq_dev_upload(o->m, mv, pq_adamw_state_bytes(o)); }

double pq_lr_at(int sched, double lr, long step, long warmup, long total) {
    if (warmup > 0 && step < warmup) return lr * (double)step / (double)warmup;
    if (sched == PQ_SCHED_CONSTANT) return lr;
    long rest = total - warmup;
    if (rest <= 0) return sched == PQ_SCHED_LINEAR ? 0 : lr;
    double prog = (double)(step - warmup) / (double)rest;
    if (prog > 1) prog = 1;
    if (sched == PQ_SCHED_COSINE) return lr * 0.5 * (1 + cos(M_PI * prog));
    return lr * (1 - prog);
}

int pq_sched_parse(const char *name) {
    if (strcmp(name, "linear") == 0) return PQ_SCHED_LINEAR;
    if (strcmp(name, "cosine") == 0) return PQ_SCHED_COSINE;
    if (strcmp(name, "constant") == 0) return PQ_SCHED_CONSTANT;
    return -1;
}

double pq_clip_grad_norm(float *g, size_t n, double max_norm) {
    double norm = sqrt(pq_sumsq(g, n));
    if (max_norm > 0 && norm > max_norm) pq_scale(g, (float)(max_norm / (norm + 1e-6)), n);
    return norm;
}
