// gpu_test.h: what the GPU parity programs share: seeded random inputs
// (lib/util.h's PqRng, seeded by each main), NaN-poisoned host and device
// buffers, and copies each way.
#ifndef PQ_GPU_TEST_H
#define PQ_GPU_TEST_H

#include <math.h>
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

#endif
