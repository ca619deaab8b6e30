// test-optim.c: AdamW against a plain double-precision transcription of
// torch.optim.AdamW's update, and its known first step (each parameter moves
// by lr * sign(grad) after the decay); the schedules at known points
// (Hugging Face's get_{linear,cosine,constant}_schedule_with_warmup); clipping.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "optim.h"
#include "util.h"

static int failures;

static void expect(const char *what, double got, double want, double tol) {
    if (!(fabs(got - want) <= tol * (1 + fabs(want)))) {
        printf("FAIL %s: got %.12g, want %.12g\n", what, got, want);
        failures++;
    }
}

int main(void) {
    enum { N = 257 };
    float p[N], g[N];
    double rp[N], rm[N] = {0}, rv[N] = {0};
    PqRng r;
    pq_rng_seed(&r, 3);
    for (int i = 0; i < N; i++) p[i] = (float)(rp[i] = pq_rng_uniform(&r) - 0.5);
    PqAdamW o;
    double lr = 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.01;
    pq_adamw_build(&o, N, lr, b1, b2, eps, wd);
    for (int step = 1; step <= 5; step++) {
        for (int i = 0; i < N; i++) g[i] = (float)(pq_rng_uniform(&r) - 0.3);
        float before[N];
        for (int i = 0; i < N; i++) before[i] = p[i];
        pq_adamw_step(&o, p, g, lr);
        for (int i = 0; i < N; i++) { // torch.optim.AdamW, written out
            rp[i] *= 1 - lr * wd;
            rm[i] = b1 * rm[i] + (1 - b1) * g[i];
            rv[i] = b2 * rv[i] + (1 - b2) * (double)g[i] * g[i];
            double mh = rm[i] / (1 - pow(b1, step)), vh = rv[i] / (1 - pow(b2, step));
            rp[i] -= lr * mh / (sqrt(vh) + eps);
            if (step == 1) expect("first step = lr sign(g)", before[i] * (1 - lr * wd) - p[i], lr * (g[i] > 0 ? 1 : -1), 1e-4);
        }
    }
    for (int i = 0; i < N; i++) expect("adamw vs reference", p[i], rp[i], 1e-5);
    pq_adamw_free(&o);

    // schedules: lr 1, warmup 10, total 110
    expect("warmup 0", pq_lr_at(PQ_SCHED_LINEAR, 1, 0, 10, 110), 0, 1e-12);
    expect("warmup 5", pq_lr_at(PQ_SCHED_LINEAR, 1, 5, 10, 110), 0.5, 1e-12);
    expect("linear 10", pq_lr_at(PQ_SCHED_LINEAR, 1, 10, 10, 110), 1, 1e-12);
    expect("linear 60", pq_lr_at(PQ_SCHED_LINEAR, 1, 60, 10, 110), 0.5, 1e-12);
    expect("linear 110", pq_lr_at(PQ_SCHED_LINEAR, 1, 110, 10, 110), 0, 1e-12);
    expect("cosine 60", pq_lr_at(PQ_SCHED_COSINE, 1, 60, 10, 110), 0.5, 1e-12);
    expect("cosine 35", pq_lr_at(PQ_SCHED_COSINE, 1, 35, 10, 110), 0.5 * (1 + cos(M_PI * 0.25)), 1e-12);
    expect("constant 100", pq_lr_at(PQ_SCHED_CONSTANT, 1, 100, 10, 110), 1, 1e-12);
    expect("constant warmup", pq_lr_at(PQ_SCHED_CONSTANT, 1, 2, 10, 110), 0.2, 1e-12);

    // clipping: norm 5 -> scaled to 1; below the limit untouched
    float v[2] = {3, 4};
    expect("norm", pq_clip_grad_norm(v, 2, 1.0), 5, 1e-12);
    expect("clipped", sqrt((double)v[0] * v[0] + (double)v[1] * v[1]), 1, 1e-6);
    float w[2] = {0.3f, 0.4f};
    pq_clip_grad_norm(w, 2, 1.0);
    expect("not clipped", w[1], 0.4f, 0);
    printf(failures ? "%d failures\n" : "optim ok\n", failures);
    return failures != 0;
}
