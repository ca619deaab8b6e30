// ops_test.h: what the op tests against a double-precision reference share
// (test-ops.c, test-lora-bf16.c, and through attn_test.h test-attn-mm.c and
// test-attn-plan.c): the failure count, seeded random inputs, a relative-error
// comparison that counts failures, and LoRA's B side written from its
// definition. Included by one test file each (statics).
#ifndef PQ_OPS_TEST_H
#define PQ_OPS_TEST_H

#include <math.h>
#include <stdio.h>

#include "util.h"

static int fails;
static PqRng rng;

// n values uniform in [-s, s)
static inline float *rnd(size_t n, float s) {
    float *p = pq_xmalloc((n ? n : 1) * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = (float)(pq_rng_uniform(&rng) * 2 - 1) * s;
    return p;
}
// a double copy of n floats
static inline double *widen(const float *p, size_t n) {
    double *d = pq_xmalloc((n ? n : 1) * sizeof *d);
    for (size_t i = 0; i < n; i++) d[i] = p[i];
    return d;
}

// worst |got - want| / (1 + |want|) within tol: an "ok" line, else a "FAIL" line and a failure counted
static inline void close_to(const char *name, const float *got, const double *want, size_t n, double tol) {
    double worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(got[i] - want[i]) / (1 + fabs(want[i]));
        if (!(d <= worst)) worst = d, at = i;
    }
    if (!(worst <= tol)) {
        printf("FAIL %s: element %zu = %.9g, want %.9g (rel err %.3g > %.3g)\n", name, at, got[at], want[at], worst,
               tol);
        fails++;
    } else {
        printf("ok   %s (max rel err %.2e)\n", name, worst);
    }
}

// LoRA's B side (pq_*lora_up_*) in double from xa (N,r) and B (OC,r) as given: wout = out + sc xa B^T,
// wdB = dB + sc dout^T xa, wdxa = sc dout B; rounding (NULL: none) applied to wout and wdxa, the activations.
// An output NULL is not computed (nor its inputs read).
static inline void ref_lora_up(double *wout, double *wdB, double *wdxa, const double *xa, const double *B,
                               const float *out, const float *dout, const float *dB, double sc, int N, int OC, int r,
                               double (*rounding)(double)) {
    if (wout)
        for (int i = 0; i < N; i++)
            for (int o = 0; o < OC; o++) {
                double s = 0;
                for (int k = 0; k < r; k++) s += xa[(size_t)i * r + k] * B[(size_t)o * r + k];
                double v = out[(size_t)i * OC + o] + sc * s;
                wout[(size_t)i * OC + o] = rounding ? rounding(v) : v;
            }
    if (wdB)
        for (int o = 0; o < OC; o++)
            for (int k = 0; k < r; k++) {
                double s = 0;
                for (int i = 0; i < N; i++) s += (double)dout[(size_t)i * OC + o] * xa[(size_t)i * r + k];
                wdB[(size_t)o * r + k] = dB[(size_t)o * r + k] + sc * s;
            }
    if (wdxa)
        for (int i = 0; i < N; i++)
            for (int k = 0; k < r; k++) {
                double s = 0;
                for (int o = 0; o < OC; o++) s += (double)dout[(size_t)i * OC + o] * B[(size_t)o * r + k];
                wdxa[(size_t)i * r + k] = rounding ? rounding(sc * s) : sc * s;
            }
}

#endif
