// optim.c: AdamW, learning-rate schedules and gradient clipping (see optim.h).
#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

void pq_adamw_build(PqAdamW *o, size_t n, double lr, double beta1, double beta2, double eps, double wd) {
    memset(o, 0, sizeof *o);
    o->lr = lr, o->beta1 = beta1, o->beta2 = beta2, o->eps = eps, o->weight_decay = wd;
    o->n = n;
    o->m = pq_xcalloc(2 * (n ? n : 1), sizeof(float));
    o->v = o->m + n;
}

void pq_adamw_free(PqAdamW *o) {
    free(o->m);
    o->m = o->v = NULL;
}

// torch.optim.AdamW: decoupled decay, then bias-corrected Adam update.
void pq_adamw_step(PqAdamW *o, float *p, const float *g, double lr) {
    o->t++;
    double b1 = o->beta1, b2 = o->beta2;
    double bc1 = 1 - pow(b1, (double)o->t), bc2 = 1 - pow(b2, (double)o->t);
    double step = lr / bc1, bc2s = sqrt(bc2), decay = 1 - lr * o->weight_decay;
    float *m = o->m, *v = o->v;
#pragma omp parallel for schedule(static) if (o->n > 65536)
    for (size_t i = 0; i < o->n; i++) {
        double gi = g[i];
        double mi = b1 * m[i] + (1 - b1) * gi;
        double vi = b2 * v[i] + (1 - b2) * gi * gi;
        m[i] = (float)mi;
        v[i] = (float)vi;
        double pi = p[i] * decay;
        pi -= step * mi / (sqrt(vi) / bc2s + o->eps);
        p[i] = (float)pi;
    }
}

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
    double ss = 0;
#pragma omp parallel for reduction(+ : ss) schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) ss += (double)g[i] * g[i];
    double norm = sqrt(ss);
    if (max_norm > 0 && norm > max_norm) {
        float c = (float)(max_norm / (norm + 1e-6));
        for (size_t i = 0; i < n; i++) g[i] *= c;
    }
    return norm;
}
