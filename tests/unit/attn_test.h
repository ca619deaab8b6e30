// attn_test.h: what test-attn-mm.c and test-attn-plan.c share: random
// (ops_test.h) and NaN-filled buffers, a relative-error comparison that counts
// failures, the attention layouts they run and the reference they compare
// against.
// Included by one test file each (statics).
#ifndef PQ_ATTN_TEST_H
#define PQ_ATTN_TEST_H

#include <math.h>
#include <stdio.h>

#include "ops.h"
#include "ops_grad.h"
#include "ops_test.h"
#include "util.h"

static float *nans(size_t n) {
    float *p = pq_xmalloc((n ? n : 1) * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = NAN;
    return p;
}

// worst |got - want| / (1 + |want|) within tol, every element finite
static void cmp(const char *what, const float *want, const float *got, size_t n, double tol) {
    double worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]) / (1 + fabs(want[i]));
        if (!(d <= worst)) worst = d, at = i;
    }
    if (!(worst <= tol)) {
        printf("FAIL %s: element %zu = %.9g, want %.9g (err %.3g > %.3g)\n", what, at, got[at], want[at], worst, tol);
        fails++;
    } else
        printf("ok   %s (max err %.2e)\n", what, worst);
}

typedef struct Case {
    const char *name;
    int N, NH, KVH, HS, window;
    int32_t *pos, *a0, *a1, *b0; // a0 NULL: plain attention
} Case;

// The reference (ops_cpu.c) of case c: out and lse from q, k, v, then dq,
// dk, dv from dout and that forward.
static void ref_attention(const Case *c, const float *q, const float *k, const float *v, const float *dout, float *out,
                          float *lse, float *dq, float *dk, float *dv) {
    int N = c->N, NH = c->NH, KVH = c->KVH, HS = c->HS, w = c->window;
    if (c->a0) {
        pq_cpu_attention2_forward(out, lse, q, k, v, c->pos, c->a0, c->a1, c->b0, N, NH, KVH, HS, w);
        pq_cpu_attention2_backward(dq, dk, dv, dout, q, k, v, out, lse, c->pos, c->a0, c->a1, c->b0, N, NH, KVH, HS,
                                   w);
    } else {
        pq_cpu_attention_forward(out, lse, q, k, v, c->pos, N, NH, KVH, HS, w);
        pq_cpu_attention_backward(dq, dk, dv, dout, q, k, v, out, lse, c->pos, N, NH, KVH, HS, w);
    }
}

#endif
