// gpu_test.h: what the GPU parity programs share: seeded random inputs
// (lib/util.h's PqRng, seeded by each main), NaN-poisoned host and device
// buffers, copies each way, and a relative-error comparison.
#ifndef PQ_GPU_TEST_H
#define PQ_GPU_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "ops.h"
#include "util.h"

static PqRng gt_rng;

static inline uint64_t rnd(void) { return pq_rng_next(&gt_rng); }
// uniform in [-a, a)
static inline float urand(float a) { return a * (float)(pq_rng_uniform(&gt_rng) * 2 - 1); }
static inline float *hrand(size_t n, float a) {
    float *p = pq_xmalloc((n ? n : 1) * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = urand(a);
    return p;
}
static inline float *hnan(size_t n) {
    float *p = pq_xmalloc((n ? n : 1) * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = NAN;
    return p;
}
// a device copy of host data
static inline void *dev(const void *h, size_t bytes) {
    void *d = pq_dev_alloc(bytes);
    pq_dev_upload(d, h, bytes);
    return d;
}
// a device buffer of n floats filled with NaN (an output not yet written)
static inline float *dnan(size_t n) {
    float *h = hnan(n), *d = dev(h, n * sizeof(float));
    free(h);
    return d;
}
// a host copy of n device floats
static inline float *down(const float *d, size_t n) {
    float *h = pq_xmalloc((n ? n : 1) * sizeof *h);
    pq_dev_download(h, d, n * sizeof *h);
    return h;
}

// max |got - want| / max(max |want|, 1e-6) <= tol, no NaN: prints an "ok" or
// a "FAIL" line (the name padded to width) and returns whether it holds.
static inline int close_rel(const char *name, int width, const float *want, const float *got, size_t n, double tol) {
    double mx = 0, err = 0;
    size_t bad = (size_t)-1;
    for (size_t i = 0; i < n; i++) mx = fabs(want[i]) > mx ? fabs(want[i]) : mx;
    double den = mx > 1e-6 ? mx : 1e-6;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]) / den;
        if (!(d <= tol) && bad == (size_t)-1) bad = i;
        if (d > err || isnan(d)) err = isnan(d) ? INFINITY : d;
    }
    if (bad != (size_t)-1) {
        printf("FAIL %-*s err %.3g > %.3g (first at %zu: want %.9g got %.9g)\n", width, name, err, tol, bad, want[bad],
               got[bad]);
        return 0;
    }
    printf("ok   %-*s err %.3g (tol %.3g, n %zu)\n", width, name, err, tol, n);
    return 1;
}

#endif
