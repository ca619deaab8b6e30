// test-lora-bf16.c: LoRA's operations (pq_lora_*, ops_grad.h) with bf16
// activation storage against a naive double-precision reference written from
// ops_grad.h's rounding points (as autocast: bf16 copies of A and B, xa and
// dxa rounded to bf16, the dropped x rounded, out and dx rounded once, dA and
// dB f32). Inputs whose rounding matters (A, B, a given xa or dxa) are f32
// values bf16 does not hold, so an operand left unrounded shows. bf16 outputs
// (and xa, dxa): at least SAME_MIN of the elements the reference's bf16, the
// rest one bf16 step away at most (pq's f32 sums, in another order, sit on
// the other side of a rounding now and then); dA and dB: within 1e-5 of the
// reference. What reads xa or dxa (out, dA, dinp) is computed from pq's own,
// which are checked on their own. Through pq_dev_* buffers, so it runs on the
// backend linked.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "act16.h"
#include "ops_grad.h"
#include "ops_test.h"
#include "st_write.h"
#include "util.h"

#define SAME_MIN 0.99

// v rounded as pq rounds an f32 (the f32 nearest v, then bf16's nearest even)
static double rb(double v) { return pq_bf16_to_f32(pq_f32_to_bf16((float)v)); }
static float *rnd16(size_t n, float s) { // values bf16 holds (activations)
    float *p = rnd(n, s);
    for (size_t i = 0; i < n; i++) p[i] = (float)rb(p[i]);
    return p;
}
static double *rounded(const float *p, size_t n) {
    double *d = pq_xmalloc((n ? n : 1) * sizeof *d);
    for (size_t i = 0; i < n; i++) d[i] = rb(p[i]);
    return d;
}

// device buffers: activations (bf16, act16.h) and LoRA's f32 tensors
static float *f32_up(const float *h, size_t n) {
    float *d = pq_dev_alloc(n * 4);
    pq_dev_upload(d, h, n * 4);
    return d;
}
static float *f32_down(const float *d, size_t n) {
    float *h = pq_xmalloc((n ? n : 1) * sizeof *h);
    pq_dev_download(h, d, n * 4);
    return h;
}

// a bf16 result against the reference's bf16 values; the step at least 2^-12 of the largest magnitude (a sum
// whose terms cancel to near 0 keeps f32's error of the terms, many of its own tiny steps)
static void same(const char *name, const float *got, const double *want, size_t n) {
    size_t alike = 0, far = 0;
    double mx = 0;
    for (size_t i = 0; i < n; i++) mx = fabs(want[i]) > mx ? fabs(want[i]) : mx;
    for (size_t i = 0; i < n; i++) {
        double w = want[i], g = got[i], m = fabs(w) > fabs(g) ? fabs(w) : fabs(g);
        m = m > mx / 4096 ? m : mx / 4096;
        alike += g == w;
        far += !(fabs(g - w) <= m / 128);
    }
    double sh = n ? (double)alike / n : 1;
    if (sh < SAME_MIN || far) {
        printf("FAIL %s: %.2f%% as the reference rounds (min %.0f%%), %zu more than a bf16 step away\n", name,
               100 * sh, 100 * SAME_MIN, far);
        fails++;
    } else {
        printf("ok   %s (%.2f%% of %zu as the reference rounds)\n", name, 100 * sh, n);
    }
}
// dropout_forward's mask of seed (0 or 1/(1-p) per element; all 1 for p 0)
static float *mask_of(float p, uint64_t seed, size_t n) {
    float *ones = pq_xmalloc((n ? n : 1) * 4), *m = pq_xmalloc((n ? n : 1) * 4);
    for (size_t i = 0; i < n; i++) ones[i] = 1.0f;
    if (p > 0) pq_cpu_dropout_forward(m, ones, p, seed, n);
    else memcpy(m, ones, n * 4);
    free(ones);
    return m;
}

// xa (N,r) = rb(xd Ar^T); xd (N,C) and Ar (r,C) already the operands
static double *ref_xa(const double *xd, const double *Ar, int N, int C, int r) {
    double *xa = pq_xmalloc((size_t)N * r * sizeof *xa);
    for (int i = 0; i < N; i++)
        for (int k = 0; k < r; k++) {
            double s = 0;
            for (int c = 0; c < C; c++) s += xd[(size_t)i * C + c] * Ar[(size_t)k * C + c];
            xa[(size_t)i * r + k] = rb(s);
        }
    return xa;
}

// lora_forward, then lora_backward from an xa bf16 does not hold (with dinp or without)
static void test_lora(int N, int C, int OC, int r, int with_dinp) {
    size_t nx = (size_t)N * C, ny = (size_t)N * OC, nxa = (size_t)N * r, na = (size_t)r * C, nb = (size_t)OC * r;
    float sc = 1.75f;
    float *x = rnd16(nx, 1), *A = rnd(na, 0.3f), *B = rnd(nb, 0.3f), *out = rnd16(ny, 1), *dy = rnd16(ny, 1);
    float *xa2 = rnd(nxa, 1), *dA = rnd(na, 1), *dB = rnd(nb, 1), *dx = rnd16(nx, 1);
    float *gx = act16_up(x, nx), *gA = f32_up(A, na), *gB = f32_up(B, nb), *gout = act16_up(out, ny);
    float *gxa = f32_up(xa2, nxa), *gdy = act16_up(dy, ny), *gdA = f32_up(dA, na), *gdB = f32_up(dB, nb);
    float *gdx = act16_up(dx, nx), *gdxa = f32_up(xa2, nxa);
    double *Ar = rounded(A, na), *Br = rounded(B, nb), *xd = rounded(x, nx);
    char name[128];
    // forward; out from pq's own xa (an xa rounded the other way, once in 10^4, moves a whole row of out)
    pq_lora_forward(gout, gxa, gx, gA, gB, sc, N, C, OC, r);
    float *hxa = f32_down(gxa, nxa), *hout = act16_down(gout, ny);
    double *wxa = ref_xa(xd, Ar, N, C, r), *wout = pq_xmalloc(ny * sizeof *wout), *pxa = widen(hxa, nxa);
    ref_lora_up(wout, NULL, NULL, pxa, Br, out, NULL, NULL, sc, N, OC, r, rb);
    snprintf(name, sizeof name, "lora_forward xa %dx%d r=%d", N, C, r);
    same(name, hxa, wxa, nxa);
    snprintf(name, sizeof name, "lora_forward out += %dx%d", N, OC);
    same(name, hout, wout, ny);
    // backward from xa2 (its rounding is the product's)
    double *xr = rounded(xa2, nxa), *wdB = pq_xmalloc(nb * sizeof *wdB), *wdxa = pq_xmalloc(nxa * sizeof *wdxa);
    ref_lora_up(NULL, wdB, wdxa, xr, Br, NULL, dy, dB, sc, N, OC, r, rb);
    pq_dev_upload(gxa, xa2, nxa * 4);
    pq_lora_backward(with_dinp ? gdx : NULL, gdA, gdB, gdxa, gdy, gx, gxa, gA, gB, sc, N, C, OC, r);
    float *hdxa = f32_down(gdxa, nxa), *hdA = f32_down(gdA, na), *hdB = f32_down(gdB, nb), *hdx = act16_down(gdx, nx);
    // dA and dinp from pq's own dxa (a rare other rounding of it must not move them)
    double *wdA = pq_xmalloc(na * sizeof *wdA), *wdx = pq_xmalloc(nx * sizeof *wdx);
    for (int k = 0; k < r; k++)
        for (int c = 0; c < C; c++) {
            double s = 0;
            for (int i = 0; i < N; i++) s += (double)hdxa[(size_t)i * r + k] * xd[(size_t)i * C + c];
            wdA[(size_t)k * C + c] = dA[(size_t)k * C + c] + s;
        }
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++) {
            double s = 0;
            for (int k = 0; k < r; k++) s += (double)hdxa[(size_t)i * r + k] * Ar[(size_t)k * C + c];
            wdx[(size_t)i * C + c] = with_dinp ? rb(dx[(size_t)i * C + c] + s) : dx[(size_t)i * C + c];
        }
    const char *tag = with_dinp ? "" : " (no dinp)";
    snprintf(name, sizeof name, "lora_backward dB%s %dx%d", tag, OC, r);
    close_to(name, hdB, wdB, nb, 1e-5);
    snprintf(name, sizeof name, "lora_backward dxa%s", tag);
    same(name, hdxa, wdxa, nxa);
    snprintf(name, sizeof name, "lora_backward dA%s", tag);
    close_to(name, hdA, wdA, na, 1e-5);
    snprintf(name, sizeof name, "lora_backward dinp %s", with_dinp ? "+=" : "untouched");
    same(name, hdx, wdx, nx);
    free(x), free(A), free(B), free(out), free(dy), free(xa2), free(dA), free(dB), free(dx);
    free(Ar), free(Br), free(xd), free(wxa), free(wout), free(pxa), free(hxa), free(hout), free(xr), free(wdB);
    free(wdxa), free(hdxa), free(hdA), free(hdB), free(hdx), free(wdA), free(wdx);
    float *dev[] = {gx, gA, gB, gout, gxa, gdy, gdA, gdB, gdx, gdxa};
    for (size_t i = 0; i < sizeof dev / sizeof *dev; i++) pq_dev_free(dev[i]);
}

// lora_up_forward and lora_up_backward from an xa bf16 does not hold
static void test_lora_up(int N, int OC, int r) {
    size_t ny = (size_t)N * OC, nxa = (size_t)N * r, nb = (size_t)OC * r;
    float sc = 0.625f;
    float *xa = rnd(nxa, 1), *B = rnd(nb, 0.3f), *out = rnd16(ny, 1), *dy = rnd16(ny, 1), *dB = rnd(nb, 1);
    float *gxa = f32_up(xa, nxa), *gB = f32_up(B, nb), *gout = act16_up(out, ny), *gdy = act16_up(dy, ny);
    float *gdB = f32_up(dB, nb), *gdxa = f32_up(xa, nxa);
    double *xr = rounded(xa, nxa), *Br = rounded(B, nb), *wout = pq_xmalloc(ny * sizeof *wout);
    double *wdB = pq_xmalloc(nb * sizeof *wdB), *wdxa = pq_xmalloc(nxa * sizeof *wdxa);
    ref_lora_up(wout, wdB, wdxa, xr, Br, out, dy, dB, sc, N, OC, r, rb);
    pq_lora_up_forward(gout, gxa, gB, sc, N, OC, r);
    pq_lora_up_backward(gdB, gdxa, gdy, gxa, gB, sc, N, OC, r);
    float *hout = act16_down(gout, ny), *hdB = f32_down(gdB, nb), *hdxa = f32_down(gdxa, nxa);
    char name[96];
    snprintf(name, sizeof name, "lora_up_forward out += %dx%d r=%d", N, OC, r);
    same(name, hout, wout, ny);
    snprintf(name, sizeof name, "lora_up_backward dB %dx%d r=%d", N, OC, r);
    close_to(name, hdB, wdB, nb, 1e-5);
    snprintf(name, sizeof name, "lora_up_backward dxa %dx%d r=%d", N, OC, r);
    same(name, hdxa, wdxa, nxa);
    free(xa), free(B), free(out), free(dy), free(dB), free(xr), free(Br), free(wout), free(wdB), free(wdxa);
    free(hout), free(hdB), free(hdxa);
    float *dev[] = {gxa, gB, gout, gdy, gdB, gdxa};
    for (size_t i = 0; i < sizeof dev / sizeof *dev; i++) pq_dev_free(dev[i]);
}

// the group ops of n adapters on one x, each through its mask, dxa bf16 does not hold; lora_dx_dropout for n 1
static void test_lora_group(int n, int N, int C, int r, float p) {
    size_t ne = (size_t)N * C, na = (size_t)r * C, nxa = (size_t)N * r;
    uint64_t seed[4] = {0x1234567ULL, 0xfeedf00dULL, 42, 0x9999};
    float *x = rnd16(ne, 1), *dx = rnd16(ne, 1), *A[4], *dxa[4], *dA[4], *gA[4], *gxa[4], *gdxa[4], *gdA[4];
    float *gx = act16_up(x, ne), *gdx = act16_up(dx, ne), *gdx1 = act16_up(dx, ne);
    double *wxa[4], *wdA[4], *wdx = pq_xmalloc(ne * sizeof *wdx), *wdx1 = pq_xmalloc(ne * sizeof *wdx1);
    for (size_t e = 0; e < ne; e++) wdx[e] = wdx1[e] = 0;
    int zeros = 0;
    for (int t = 0; t < n; t++) {
        A[t] = rnd(na, 0.3f), dxa[t] = rnd(nxa, 1), dA[t] = rnd(na, 1);
        gA[t] = f32_up(A[t], na), gdxa[t] = f32_up(dxa[t], nxa), gdA[t] = f32_up(dA[t], na);
        gxa[t] = f32_up(dxa[t], nxa);
        float *m = mask_of(p, seed[t], ne);
        double *xd = pq_xmalloc(ne * sizeof *xd), *Ar = rounded(A[t], na), *dr = rounded(dxa[t], nxa);
        for (size_t e = 0; e < ne; e++) xd[e] = rb((double)x[e] * m[e]), zeros += m[e] == 0;
        wxa[t] = ref_xa(xd, Ar, N, C, r), wdA[t] = pq_xmalloc(na * sizeof **wdA);
        for (int k = 0; k < r; k++)
            for (int c = 0; c < C; c++) {
                double s = 0;
                for (int i = 0; i < N; i++) s += dr[(size_t)i * r + k] * xd[(size_t)i * C + c];
                wdA[t][(size_t)k * C + c] = dA[t][(size_t)k * C + c] + s;
            }
        for (int i = 0; i < N; i++)
            for (int c = 0; c < C; c++) {
                double s = 0;
                for (int k = 0; k < r; k++) s += dr[(size_t)i * r + k] * Ar[(size_t)k * C + c];
                size_t e = (size_t)i * C + c;
                wdx[e] += (double)m[e] * s;
                if (t == 0) wdx1[e] = rb(dx[e] + (double)m[e] * s);
            }
        free(m), free(xd), free(Ar), free(dr);
    }
    for (size_t e = 0; e < ne; e++) wdx[e] = rb(dx[e] + wdx[e]);
    const float *const *cA = (const float *const *)gA, *const *cdxa = (const float *const *)gdxa;
    pq_lora_xa_group(gxa, gx, cA, seed, p, n, N, C, r);
    pq_lora_dA_group(gdA, cdxa, gx, seed, p, n, N, C, r);
    pq_lora_dx_group(gdx, cdxa, cA, seed, p, n, N, C, r);
    pq_lora_dx_dropout(gdx1, gdxa[0], gA[0], p, seed[0], N, C, r);
    char name[128];
    for (int t = 0; t < n; t++) {
        float *hxa = f32_down(gxa[t], nxa), *hdA = f32_down(gdA[t], na);
        snprintf(name, sizeof name, "lora_xa_group n=%d [%d] %dx%d r=%d p=%g", n, t, N, C, r, p);
        same(name, hxa, wxa[t], nxa);
        snprintf(name, sizeof name, "lora_dA_group n=%d [%d] %dx%d r=%d p=%g", n, t, N, C, r, p);
        close_to(name, hdA, wdA[t], na, 1e-5);
        free(hxa), free(hdA);
    }
    float *hdx = act16_down(gdx, ne), *hdx1 = act16_down(gdx1, ne);
    snprintf(name, sizeof name, "lora_dx_group += n=%d %dx%d r=%d p=%g (%d of %zu dropped)", n, N, C, r, p, zeros,
             (size_t)n * ne);
    same(name, hdx, wdx, ne);
    if (p > 0 && zeros == 0) printf("FAIL %s: nothing dropped\n", name), fails++;
    if (n == 1) {
        snprintf(name, sizeof name, "lora_dx_dropout += %dx%d r=%d p=%g", N, C, r, p);
        same(name, hdx1, wdx1, ne);
    }
    for (int t = 0; t < n; t++) {
        free(A[t]), free(dxa[t]), free(dA[t]), free(wxa[t]), free(wdA[t]);
        pq_dev_free(gA[t]), pq_dev_free(gxa[t]), pq_dev_free(gdxa[t]), pq_dev_free(gdA[t]);
    }
    free(x), free(dx), free(wdx), free(wdx1), free(hdx), free(hdx1);
    pq_dev_free(gx), pq_dev_free(gdx), pq_dev_free(gdx1);
}

int main(void) {
    pq_rng_seed(&rng, 16);
    pq_ops_set_act_dtype(PQ_BF16);
    if (pq_ops_act_dtype() != PQ_BF16) {
        printf("FAIL bf16 activation storage not set\n");
        return 1;
    }
    int threads[] = {1, 3};
    for (int ti = 0; ti < 2; ti++) {
        pq_cpu_set_threads(threads[ti]);
        printf("-- %d threads\n", threads[ti]);
        test_lora(37, 70, 45, 4, 1);
        test_lora(37, 70, 45, 4, 0);
        test_lora(130, 96, 200, 16, 1);
        test_lora_up(70, 33, 5);
        for (int n = 1; n <= 3; n++) {
            test_lora_group(n, 150, 270, 5, 0.25f); // row blocks (64) and column blocks (256), the last partial
            test_lora_group(n, 67, 31, 3, 0.0f);    // no dropout
        }
    }
    if (fails) printf("%d FAILED\n", fails);
    else printf("all LoRA bf16 ops ok\n");
    return fails != 0;
}
