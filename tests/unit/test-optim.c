// test-optim.c: AdamW against a plain double-precision transcription of
// torch.optim.AdamW's update, and its known first step (each parameter moves
// by lr * sign(grad) after the decay), on small and multi-threaded sizes;
// exact resume through the state download/upload; the sum of squares against
// a long-double sum and independent of the thread count; clipping; the
// schedules at known points (Hugging Face's
// get_{linear,cosine,constant}_schedule_with_warmup).
// With --trace it runs the steps read from stdin (for tests/py/test_optim_torch.py).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "ops_optim.h"
#include "optim.h"
#include "util.h"

static int failures;

static void expect(const char *what, double got, double want, double tol) {
    if (!(fabs(got - want) <= tol * (1 + fabs(want)))) {
        printf("FAIL %s: got %.12g, want %.12g\n", what, got, want);
        failures++;
    }
}

// backend copies of host arrays and back (the optimizer works on backend memory)
static float *up(const float *h, size_t n) {
    float *d = pq_dev_alloc(n * sizeof *d);
    pq_dev_upload(d, h, n * sizeof *d);
    return d;
}
static void down(float *h, const float *d, size_t n) { pq_dev_download(h, d, n * sizeof *h); }

// half a unit in the last place of |x| (the error of rounding to f32), a little more
static double half_ulp(float x) { return 0.5 * (nextafterf(fabsf(x), INFINITY) - fabsf(x)) * (1 + 1e-6) + 1e-300; }

// steps of AdamW with clipping (max_norm <= 0: none) on n random parameters
// against torch's update written out in double: each step from the stored
// f32 state (p, m, v within half an f32 ulp of the exact update) and, over
// all steps, a copy kept wholly in double.
static void check_adamw(size_t n, int steps, double max_norm, uint64_t seed) {
    double lr = 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.01;
    float *p = pq_xmalloc(n * sizeof *p), *g = pq_xmalloc(n * sizeof *g), *before = pq_xmalloc(n * sizeof *p);
    float *mv = pq_xcalloc(2 * n, sizeof *mv), *mv0 = pq_xcalloc(2 * n, sizeof *mv0);
    double *rp = pq_xmalloc(n * sizeof *rp), *rm = pq_xcalloc(n, sizeof *rm), *rv = pq_xcalloc(n, sizeof *rv);
    PqRng r;
    pq_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) p[i] = (float)(rp[i] = 0.1 * (pq_rng_uniform(&r) - 0.5));
    float *dp = up(p, n), *dg = pq_dev_alloc(n * sizeof *dg);
    PqAdamW o;
    pq_adamw_build(&o, n, lr, b1, b2, eps, wd);
    char what[96];
    double worst_step = 0;
    for (int step = 1; step <= steps; step++) {
        double slr = lr * (1 - 0.1 * step); // a schedule: the rate changes every step
        for (size_t i = 0; i < n; i++) g[i] = (float)(pq_rng_uniform(&r) - 0.3);
        // the norm and the clipped gradients as torch.nn.utils.clip_grad_norm_
        long double ss = 0;
        for (size_t i = 0; i < n; i++) ss += (long double)g[i] * g[i];
        double norm = sqrt((double)ss);
        pq_dev_upload(dg, g, n * sizeof *g);
        double gn = pq_clip_grad_norm(dg, n, max_norm);
        snprintf(what, sizeof what, "n %zu step %d: grad norm", n, step);
        expect(what, gn, norm, 1e-12);
        if (max_norm > 0 && gn > max_norm) {
            float c = (float)(max_norm / (gn + 1e-6)), *cg = pq_xmalloc(n * sizeof *cg);
            down(cg, dg, n);
            for (size_t i = 0; i < n; i++) {
                if (cg[i] != g[i] * c) {
                    snprintf(what, sizeof what, "n %zu step %d: clipped g[%zu]", n, step, i);
                    expect(what, cg[i], g[i] * c, 0);
                    break;
                }
                g[i] = cg[i];
            }
            free(cg);
        }
        memcpy(before, p, n * sizeof *p);
        memcpy(mv0, mv, 2 * n * sizeof *mv);
        pq_adamw_step(&o, dp, dg, slr);
        down(p, dp, n);
        pq_adamw_state_download(&o, mv);
        double bc1 = 1 - pow(b1, step), bc2 = 1 - pow(b2, step);
        int bad = 0;
        for (size_t i = 0; i < n; i++) { // torch.optim.AdamW, written out
            double m1 = b1 * mv0[i] + (1 - b1) * g[i], v1 = b2 * mv0[n + i] + (1 - b2) * (double)g[i] * g[i];
            double p1 = before[i] * (1 - slr * wd) - slr * (m1 / bc1) / (sqrt(v1 / bc2) + eps);
            rp[i] *= 1 - slr * wd;
            rm[i] = b1 * rm[i] + (1 - b1) * g[i];
            rv[i] = b2 * rv[i] + (1 - b2) * (double)g[i] * g[i];
            rp[i] -= slr * (rm[i] / bc1) / (sqrt(rv[i] / bc2) + eps);
            double e = fmax(fabs(p[i] - p1) / half_ulp(p[i]),
                            fmax(fabs(mv[i] - m1) / half_ulp(mv[i]), fabs(mv[n + i] - v1) / half_ulp(mv[n + i])));
            if (!(e <= worst_step)) worst_step = e;
            if (!(e <= 1) && !bad++) { // the first of the step
                snprintf(what, sizeof what, "n %zu step %d: p, m, v[%zu] within half an ulp", n, step, i);
                expect(what, p[i], p1, 0);
            }
            // the first step moves each parameter by lr sign(g) after the decay (where |g| >> eps)
            if (step == 1 && fabs(g[i]) > 1e-3 &&
                fabs(before[i] * (1 - slr * wd) - p[i] - slr * (g[i] > 0 ? 1 : -1)) > 1e-3 * slr) {
                snprintf(what, sizeof what, "n %zu: first step = lr sign(g) at %zu", n, i);
                expect(what, before[i] * (1 - slr * wd) - p[i], slr * (g[i] > 0 ? 1 : -1), 1e-4);
            }
        }
    }
    double worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs(p[i] - rp[i]);
        if (!(e <= worst)) worst = e, at = i;
    }
    snprintf(what, sizeof what, "n %zu clip %g: adamw vs double reference at %zu", n, max_norm, at);
    expect(what, p[at], rp[at], 1e-7); // f32 storage: a few ulps over the steps
    if (getenv("PQ_VERBOSE"))
        printf("n %zu: worst %.6f half-ulps per step, %.3g vs the double copy\n", n, worst_step, worst);
    pq_adamw_free(&o);
    pq_dev_free(dp), pq_dev_free(dg);
    free(p), free(g), free(before), free(mv), free(mv0), free(rp), free(rm), free(rv);
}

// 6 steps in one go against 3, a checkpoint of parameters and moments
// (optimizer.bin's m then v), a fresh optimizer resumed from it, 3 more:
// the same bits.
static void check_resume(size_t n) {
    float *p0 = pq_xmalloc(n * sizeof *p0), *g = pq_xmalloc(6 * n * sizeof *g);
    PqRng r;
    pq_rng_seed(&r, 11);
    for (size_t i = 0; i < n; i++) p0[i] = (float)(pq_rng_uniform(&r) - 0.5);
    for (size_t i = 0; i < 6 * n; i++) g[i] = (float)(pq_rng_uniform(&r) - 0.5);
    float *dp[2], *dg = pq_dev_alloc(n * sizeof *dg);
    float *mv[2];
    long t[2];
    for (int run = 0; run < 2; run++) {
        dp[run] = up(p0, n);
        PqAdamW o;
        pq_adamw_build(&o, n, 1e-2, 0.9, 0.95, 1e-8, 0.1);
        for (int s = 0; s < 6; s++) {
            if (run == 1 && s == 3) { // checkpoint, free, resume
                size_t bytes = pq_adamw_state_bytes(&o);
                float *ck = pq_xmalloc(bytes), *pk = pq_xmalloc(n * sizeof *pk);
                pq_adamw_state_download(&o, ck);
                down(pk, dp[run], n);
                long ct = o.t;
                pq_adamw_free(&o);
                pq_dev_free(dp[run]);
                pq_adamw_build(&o, n, 1e-2, 0.9, 0.95, 1e-8, 0.1);
                o.t = ct;
                pq_adamw_state_upload(&o, ck);
                dp[run] = up(pk, n);
                free(ck), free(pk);
            }
            pq_dev_upload(dg, g + s * n, n * sizeof *dg);
            pq_clip_grad_norm(dg, n, 0.5 * sqrt((double)n) * 0.5);
            pq_adamw_step(&o, dp[run], dg, 1e-2 * (6 - s) / 6);
        }
        mv[run] = pq_xmalloc(pq_adamw_state_bytes(&o));
        pq_adamw_state_download(&o, mv[run]);
        t[run] = o.t;
        pq_adamw_free(&o);
    }
    float *a = pq_xmalloc(n * sizeof *a), *b = pq_xmalloc(n * sizeof *b);
    down(a, dp[0], n), down(b, dp[1], n);
    expect("resume: steps", (double)t[1], (double)t[0], 0);
    if (memcmp(a, b, n * sizeof *a)) expect("resume: parameters bit for bit", 1, 0, 0);
    if (memcmp(mv[0], mv[1], 2 * n * sizeof(float))) expect("resume: moments bit for bit", 1, 0, 0);
    for (int run = 0; run < 2; run++) pq_dev_free(dp[run]), free(mv[run]);
    pq_dev_free(dg);
    free(a), free(b), free(p0), free(g);
}

// the sum of squares against a long-double sum, the same bits on 1, 2 and 3 threads
static void check_sumsq(void) {
    size_t sizes[] = {0, 1, 7, 65536, 65537, 1000003};
    PqRng r;
    pq_rng_seed(&r, 5);
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        size_t n = sizes[k];
        float *x = pq_xmalloc((n ? n : 1) * sizeof *x);
        long double ss = 0;
        for (size_t i = 0; i < n; i++) {
            x[i] = (float)((pq_rng_uniform(&r) - 0.5) * (i % 97 == 0 ? 1e3 : 1));
            ss += (long double)x[i] * x[i];
        }
        char what[64];
        snprintf(what, sizeof what, "sumsq n %zu", n);
        double got[3];
        for (int th = 1; th <= 3; th++) {
            pq_cpu_set_threads(th);
            got[th - 1] = pq_cpu_sumsq(x, n);
        }
        pq_cpu_set_threads(0);
        expect(what, got[0], (double)ss, 1e-13);
        if (got[1] != got[0] || got[2] != got[0]) {
            snprintf(what, sizeof what, "sumsq n %zu: same on 1, 2, 3 threads", n);
            expect(what, got[1] + got[2] - got[0], got[0], 0);
        }
        free(x);
    }
}

// --trace: read "n steps max_norm lr b1 b2 eps wd", n initial parameters, then
// per step its learning rate and n gradients; write per step the gradient
// norm and the n parameters after clipping and the AdamW step.
static int trace(void) {
    size_t n;
    int steps;
    double mx, lr, b1, b2, eps, wd;
    if (scanf("%zu %d %lf %lf %lf %lf %lf %lf", &n, &steps, &mx, &lr, &b1, &b2, &eps, &wd) != 8) return 2;
    float *h = pq_xmalloc((n ? n : 1) * sizeof *h);
    for (size_t i = 0; i < n; i++)
        if (scanf("%f", &h[i]) != 1) return 2;
    float *dp = up(h, n), *dg = pq_dev_alloc(n * sizeof *dg);
    PqAdamW o;
    pq_adamw_build(&o, n, lr, b1, b2, eps, wd);
    for (int s = 0; s < steps; s++) {
        double slr;
        if (scanf("%lf", &slr) != 1) return 2;
        for (size_t i = 0; i < n; i++)
            if (scanf("%f", &h[i]) != 1) return 2;
        pq_dev_upload(dg, h, n * sizeof *h);
        printf("%.17g", pq_clip_grad_norm(dg, n, mx));
        pq_adamw_step(&o, dp, dg, slr);
        down(h, dp, n);
        for (size_t i = 0; i < n; i++) printf(" %.9g", h[i]);
        printf("\n");
    }
    pq_adamw_free(&o);
    pq_dev_free(dp), pq_dev_free(dg);
    free(h);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--trace") == 0) return trace();
    check_adamw(257, 5, 0, 3);         // one thread, no clipping
    check_adamw(257, 5, 4.0, 4);       // clipped every step (norm about 6)
    check_adamw(200003, 4, 100.0, 6);  // over the threads, clipped (norm about 170)
    check_adamw(1, 3, 0, 7);
    check_resume(70001);
    check_sumsq();

    // n = 0: nothing to do, norm 0
    PqAdamW z;
    pq_adamw_build(&z, 0, 1e-3, 0.9, 0.999, 1e-8, 0);
    float *dz = pq_dev_alloc(4);
    expect("empty norm", pq_clip_grad_norm(dz, 0, 1.0), 0, 0);
    pq_adamw_step(&z, dz, dz, 1e-3);
    expect("empty state bytes", (double)pq_adamw_state_bytes(&z), 0, 0);
    pq_adamw_free(&z);
    pq_dev_free(dz);

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
    float v[2] = {3, 4}, *dv = up(v, 2);
    expect("norm", pq_clip_grad_norm(dv, 2, 1.0), 5, 1e-12);
    down(v, dv, 2);
    expect("clipped", sqrt((double)v[0] * v[0] + (double)v[1] * v[1]), 1, 1e-6);
    float w[2] = {0.3f, 0.4f}, *dw = up(w, 2);
    pq_clip_grad_norm(dw, 2, 1.0);
    down(w, dw, 2);
    expect("not clipped", w[1], 0.4f, 0);
    pq_dev_free(dv), pq_dev_free(dw);
    printf(failures ? "%d failures\n" : "optim ok\n", failures);
    return failures != 0;
}
