// gpu_test.h: what the GPU parity programs share: seeded random inputs
// (lib/util.h's PqRng, seeded by each main), NaN-poisoned host and device
// buffers, copies each way, host weights, packed positions, relative-error
// comparisons, and the command line of the programs run by groups.
#ifndef PQ_GPU_TEST_H
#define PQ_GPU_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "st_write.h"
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

// a host weight (rows, cols) of dtype dt with values in [-a, a]; vals (unless
// NULL) gets the exact f32 values it holds
static inline PqWeight hweight(int rows, int cols, PqDtype dt, float a, float **vals) {
    size_t n = (size_t)rows * cols;
    float *v = hrand(n, a);
    void *data;
    if (dt == PQ_F32) {
        data = pq_xmalloc(n * 4);
        memcpy(data, v, n * 4);
    } else {
        uint16_t *u = pq_xmalloc(n * 2);
        for (size_t i = 0; i < n; i++) u[i] = dt == PQ_BF16 ? pq_f32_to_bf16(v[i]) : pq_f32_to_f16(v[i]);
        for (size_t i = 0; i < n; i++) v[i] = dt == PQ_BF16 ? pq_bf16_to_f32(u[i]) : pq_f16_to_f32(u[i]);
        data = u;
    }
    if (vals) *vals = v;
    else free(v);
    return (PqWeight){data, dt, rows, cols};
}

// packed records of the given lengths: pos (N)
static inline int32_t *packing(const int *lens, int nrec, int *N) {
    int n = 0;
    for (int r = 0; r < nrec; r++) n += lens[r];
    int32_t *pos = pq_xmalloc((size_t)n * sizeof *pos);
    int k = 0;
    for (int r = 0; r < nrec; r++)
        for (int i = 0; i < lens[r]; i++) pos[k++] = i;
    *N = n;
    return pos;
}

// max |got - want| / max(max |want|, 1e-6) (INFINITY where a NaN is); *bad:
// the first element past tol ((size_t)-1: none), *mx: max |want|
static inline double rel_err(const float *want, const float *got, size_t n, double tol, size_t *bad, double *mx) {
    double m = 0, err = 0;
    *bad = (size_t)-1;
    for (size_t i = 0; i < n; i++) m = fabs(want[i]) > m ? fabs(want[i]) : m;
    double den = m > 1e-6 ? m : 1e-6;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]) / den;
        if (!(d <= tol) && *bad == (size_t)-1) *bad = i;
        if (d > err || isnan(d)) err = isnan(d) ? INFINITY : d;
    }
    *mx = m;
    return err;
}

// rel_err <= tol, no NaN: prints an "ok" or a "FAIL" line (the name padded
// to width) and returns whether it holds.
static inline int close_rel(const char *name, int width, const float *want, const float *got, size_t n, double tol) {
    size_t bad;
    double mx, err = rel_err(want, got, n, tol, &bad, &mx);
    if (bad != (size_t)-1) {
        printf("FAIL %-*s err %.3g > %.3g (first at %zu: want %.9g got %.9g)\n", width, name, err, tol, bad, want[bad],
               got[bad]);
        return 0;
    }
    printf("ok   %-*s err %.3g (tol %.3g, n %zu)\n", width, name, err, tol, n);
    return 1;
}

// close_rel of the CPU oracle's cpu against the device's gpu (on the host),
// said as such, with the oracle's largest magnitude on a failure
static inline int close_cpu_gpu(const char *name, int width, const float *cpu, const float *gpu, size_t n, double tol) {
    size_t bad;
    double mx, err = rel_err(cpu, gpu, n, tol, &bad, &mx);
    if (bad != (size_t)-1) {
        printf("FAIL %-*s rel err %.3g > %.3g (first at %zu: cpu %.9g gpu %.9g, max|cpu| %.3g)\n", width, name, err,
               tol, bad, cpu[bad], gpu[bad], mx);
        return 0;
    }
    printf("ok   %-*s rel err %.3g (tol %.3g, n %zu)\n", width, name, err, tol, n);
    return 1;
}

// A program's groups of checks, each runnable alone (scripts/gpu-check reruns
// them one by one when a run dies).
typedef struct {
    const char *name;
    void (*run)(void);
} GtGroup;

// The command line [--device N] [--list] [GROUP...]: want[k] 1 for each of
// the n groups named (every one when none is); then the device and the CPU
// oracle's threads (all cores). -1 to go on, else the exit status: 0 after
// --list (the names printed), 2 after a usage or device error (on stderr).
static inline int gt_args(int argc, char **argv, const char *prog, const GtGroup *groups, int n, int *want) {
    int device = 0, any = 0;
    for (int k = 0; k < n; k++) want[k] = 0;
    for (int i = 1; i < argc; i++) {
        int g = -1;
        if (!strcmp(argv[i], "--list")) {
            for (int k = 0; k < n; k++) printf("%s\n", groups[k].name);
            return 0;
        }
        if (!strcmp(argv[i], "--device") && i + 1 < argc) {
            device = atoi(argv[++i]);
            continue;
        }
        for (int k = 0; k < n; k++)
            if (!strcmp(argv[i], groups[k].name)) g = k;
        if (g < 0) {
            fprintf(stderr, "usage: %s [--device N] [--list] [GROUP...] (no GROUP: all)\n", prog);
            return 2;
        }
        want[g] = any = 1;
    }
    if (!any)
        for (int k = 0; k < n; k++) want[k] = 1;
    if (pq_ops_set_device(device)) {
        fprintf(stderr, "%s: no CUDA device %d (backend %s)\n", prog, device, pq_ops_backend());
        return 2;
    }
    pq_cpu_set_threads(0);
    return -1;
}

#endif
