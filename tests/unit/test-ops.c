// test-ops.c: every forward op of ops_cpu.c against a naive double-precision
// reference written from the definitions (attention as softmax(QK^T/sqrt(HS))V
// per query over the keys its record and window allow), on 1 and 3 threads.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "ops_grad.h"
#include "ops_test.h"
#include "st_write.h"
#include "util.h"

// A weight (rows, cols) in dtype from f32 values; vals gets what the weight holds.
static PqWeight weight(PqDtype t, int rows, int cols, float *vals, void **store) {
    size_t n = (size_t)rows * cols;
    PqWeight w = {NULL, t, rows, cols};
    if (t == PQ_F32) {
        *store = pq_xmalloc(n * 4);
        memcpy(*store, vals, n * 4);
    } else {
        uint16_t *h = pq_xmalloc(n * 2);
        for (size_t i = 0; i < n; i++) {
            h[i] = t == PQ_BF16 ? pq_f32_to_bf16(vals[i]) : pq_f32_to_f16(vals[i]);
            vals[i] = t == PQ_BF16 ? pq_bf16_to_f32(h[i]) : pq_f16_to_f32(h[i]);
        }
        *store = h;
    }
    w.data = *store;
    return w;
}

static void test_convert(void) {
    struct { float f; uint16_t bf, h; } c[] = {{1.0f, 0x3f80, 0x3c00}, {-2.5f, 0xc020, 0xc100}, {0.0f, 0, 0},
                                               {65280.0f, 0x477f, 0x7bf8}, {5.9604645e-08f, 0x3380, 0x0001}};
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        if (pq_bf16_to_f32(c[i].bf) != c[i].f || pq_f16_to_f32(c[i].h) != c[i].f) {
            printf("FAIL convert %g: bf16 %g f16 %g\n", c[i].f, pq_bf16_to_f32(c[i].bf), pq_f16_to_f32(c[i].h));
            fails++;
        }
    }
    if (!isinf(pq_f16_to_f32(0x7c00)) || !isnan(pq_bf16_to_f32(0x7fc0))) {
        printf("FAIL convert inf/nan\n");
        fails++;
    }
}

static void test_linear(PqDtype t, int N, int C, int OC, int bias) {
    float *x = rnd((size_t)N * C, 1), *wv = rnd((size_t)OC * C, 0.5f), *b = bias ? rnd(OC, 1) : NULL;
    void *store;
    PqWeight w = weight(t, OC, C, wv, &store);
    float *out = rnd((size_t)N * OC, 100);
    double *want = pq_xmalloc((size_t)N * OC * sizeof *want);
    for (int i = 0; i < N; i++)
        for (int o = 0; o < OC; o++) {
            double s = b ? b[o] : 0;
            for (int c = 0; c < C; c++) s += (double)x[(size_t)i * C + c] * wv[(size_t)o * C + c];
            want[(size_t)i * OC + o] = s;
        }
    pq_cpu_linear_forward(out, x, &w, b, N, C, OC);
    char what[96];
    snprintf(what, sizeof what, "linear %s N=%d C=%d OC=%d%s", pq_dtype_name(t), N, C, OC, bias ? " +bias" : "");
    close_to(what, out, want, (size_t)N * OC, 1e-5);
    // rows as f32
    float *row = pq_xmalloc((size_t)C * sizeof *row);
    pq_weight_row(&w, OC - 1, row);
    for (int c = 0; c < C; c++) want[c] = wv[(size_t)(OC - 1) * C + c];
    close_to("weight_row", row, want, (size_t)C, 0);
    free(row), free(x), free(wv), free(b), free(store), free(out), free(want);
}

// q, k, v as one group (linear_group_forward / _backward) against double references, one weight without bias
static void test_linear_group(void) {
    int N = 9, C = 24, oc[3] = {16, 8, 8};
    float *x = rnd((size_t)N * C, 1), *dy[3], *wv[3], *b[3], *out[3];
    void *store[3];
    PqWeight w[3];
    for (int t = 0; t < 3; t++) {
        wv[t] = rnd((size_t)oc[t] * C, 0.5f), b[t] = t == 1 ? NULL : rnd(oc[t], 1);
        w[t] = weight(PQ_F32, oc[t], C, wv[t], &store[t]);
        out[t] = rnd((size_t)N * oc[t], 100), dy[t] = rnd((size_t)N * oc[t], 1);
    }
    float *dx = rnd((size_t)N * C, 1);
    double *wdx = pq_xmalloc((size_t)N * C * sizeof *wdx);
    for (size_t e = 0; e < (size_t)N * C; e++) wdx[e] = dx[e];
    pq_cpu_linear_group_forward(out, x, w, (const float *const *)b, 3, N, C);
    const float *dyc[3] = {dy[0], dy[1], dy[2]};
    pq_cpu_linear_group_backward(dx, dyc, w, 3, N, C);
    char what[64];
    for (int t = 0; t < 3; t++) {
        double *want = pq_xmalloc((size_t)N * oc[t] * sizeof *want);
        for (int i = 0; i < N; i++)
            for (int o = 0; o < oc[t]; o++) {
                double s = b[t] ? b[t][o] : 0;
                for (int c = 0; c < C; c++) s += (double)x[(size_t)i * C + c] * wv[t][(size_t)o * C + c];
                want[(size_t)i * oc[t] + o] = s;
                for (int c = 0; c < C; c++)
                    wdx[(size_t)i * C + c] += (double)dy[t][(size_t)i * oc[t] + o] * wv[t][(size_t)o * C + c];
            }
        snprintf(what, sizeof what, "linear_group_forward output %d%s", t, b[t] ? " +bias" : "");
        close_to(what, out[t], want, (size_t)N * oc[t], 1e-5);
        free(want);
    }
    close_to("linear_group_backward dinp += sum", dx, wdx, (size_t)N * C, 1e-5);
    for (int t = 0; t < 3; t++) free(wv[t]), free(b[t]), free(store[t]), free(out[t]), free(dy[t]);
    free(x), free(dx), free(wdx);
}

static void test_lora(int N, int C, int OC, int r) {
    float *x = rnd((size_t)N * C, 1), *A = rnd((size_t)r * C, 1), *B = rnd((size_t)OC * r, 1);
    float *out = rnd((size_t)N * OC, 1), *xa = pq_xmalloc((size_t)N * r * 4);
    double *want = pq_xmalloc((size_t)N * OC * sizeof *want), *wxa = pq_xmalloc((size_t)N * r * sizeof *wxa);
    float scale = 1.75f;
    for (int i = 0; i < N; i++) {
        for (int k = 0; k < r; k++) {
            double s = 0;
            for (int c = 0; c < C; c++) s += (double)x[(size_t)i * C + c] * A[(size_t)k * C + c];
            wxa[(size_t)i * r + k] = s;
        }
        for (int o = 0; o < OC; o++) {
            double s = 0;
            for (int k = 0; k < r; k++) s += wxa[(size_t)i * r + k] * B[(size_t)o * r + k];
            want[(size_t)i * OC + o] = out[(size_t)i * OC + o] + scale * s;
        }
    }
    pq_cpu_lora_forward(out, xa, x, A, B, scale, N, C, OC, r);
    close_to("lora xa", xa, wxa, (size_t)N * r, 1e-5);
    close_to("lora out", out, want, (size_t)N * OC, 1e-5);
    free(x), free(A), free(B), free(out), free(xa), free(want), free(wxa);
}

// dx += drop(dxa A) against a double-precision product through dropout_forward's mask (of ones: which
// elements it zeroes, and the 1/(1-p) it scales the rest by)
static void test_lora_dx_dropout(int N, int C, int r, float p) {
    size_t n = (size_t)N * C;
    float *dxa = rnd((size_t)N * r, 1), *A = rnd((size_t)r * C, 1), *dx = rnd(n, 1), *ones = pq_xmalloc(n * 4);
    float *mask = pq_xmalloc(n * 4);
    double *want = pq_xmalloc(n * sizeof *want);
    for (size_t i = 0; i < n; i++) ones[i] = 1.0f;
    uint64_t seed = 0x5eed1234abcdULL;
    pq_cpu_dropout_forward(mask, ones, p, seed, n);
    int zeros = 0;
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++) {
            double s = 0;
            for (int k = 0; k < r; k++) s += (double)dxa[(size_t)i * r + k] * A[(size_t)k * C + c];
            size_t x = (size_t)i * C + c;
            want[x] = dx[x] + mask[x] * s;
            zeros += mask[x] == 0;
        }
    pq_cpu_lora_dx_dropout(dx, dxa, A, p, seed, N, C, r);
    char name[96];
    snprintf(name, sizeof name, "lora_dx_dropout %dx%d r=%d p=%g (%d of %zu dropped)", N, C, r, p, zeros, n);
    close_to(name, dx, want, n, 1e-5);
    if (p > 0 && zeros == 0) printf("FAIL %s: nothing dropped\n", name), fails++;
    free(dxa), free(A), free(dx), free(ones), free(mask), free(want);
}

// The group ops of n adapters on one input against double-precision products through each adapter's
// dropout_forward mask (of ones: which elements it zeroes, and the 1/(1-p) it scales the rest by).
static void test_lora_group(int n, int N, int C, int r, float p) {
    size_t ne = (size_t)N * C, na = (size_t)r * C, nx = (size_t)N * r;
    float *x = rnd(ne, 1), *dx = rnd(ne, 1), *ones = pq_xmalloc(ne * 4), *mask = pq_xmalloc(ne * 4);
    float *A[4], *xa[4], *dxa[4], *dA[4];
    double *wdx = pq_xmalloc(ne * sizeof *wdx), *wxa[4], *wdA[4];
    uint64_t seed[4] = {0x1234567ULL, 0xfeedf00dULL, 42, 0x9999};
    for (size_t e = 0; e < ne; e++) ones[e] = 1.0f, wdx[e] = dx[e];
    int zeros = 0;
    for (int t = 0; t < n; t++) {
        if (p > 0) pq_cpu_dropout_forward(mask, ones, p, seed[t], ne);
        else memcpy(mask, ones, ne * 4);
        A[t] = rnd(na, 1), dxa[t] = rnd(nx, 1), dA[t] = rnd(na, 1), xa[t] = pq_xmalloc(nx * 4);
        wxa[t] = pq_xmalloc(nx * sizeof **wxa), wdA[t] = pq_xmalloc(na * sizeof **wdA);
        for (size_t e = 0; e < na; e++) wdA[t][e] = dA[t][e];
        for (size_t e = 0; e < nx; e++) wxa[t][e] = 0;
        for (int i = 0; i < N; i++)
            for (int c = 0; c < C; c++) {
                size_t e = (size_t)i * C + c;
                double xd = (double)x[e] * mask[e], s = 0;
                zeros += mask[e] == 0;
                for (int k = 0; k < r; k++) {
                    wxa[t][(size_t)i * r + k] += xd * A[t][(size_t)k * C + c];
                    wdA[t][(size_t)k * C + c] += (double)dxa[t][(size_t)i * r + k] * xd;
                    s += (double)dxa[t][(size_t)i * r + k] * A[t][(size_t)k * C + c];
                }
                wdx[e] += mask[e] * s;
            }
    }
    const float *const *Ac = (const float *const *)A, *const *dxac = (const float *const *)dxa;
    pq_cpu_lora_xa_group(xa, x, Ac, seed, p, n, N, C, r);
    pq_cpu_lora_dA_group(dA, dxac, x, seed, p, n, N, C, r);
    pq_cpu_lora_dx_group(dx, dxac, Ac, seed, p, n, N, C, r);
    char name[128];
    for (int t = 0; t < n; t++) {
        snprintf(name, sizeof name, "lora_xa_group n=%d [%d] %dx%d r=%d p=%g", n, t, N, C, r, p);
        close_to(name, xa[t], wxa[t], nx, 1e-5);
        snprintf(name, sizeof name, "lora_dA_group n=%d [%d] %dx%d r=%d p=%g", n, t, N, C, r, p);
        close_to(name, dA[t], wdA[t], na, 1e-5);
    }
    snprintf(name, sizeof name, "lora_dx_group n=%d %dx%d r=%d p=%g (%d of %zu dropped)", n, N, C, r, p, zeros,
             (size_t)n * ne);
    close_to(name, dx, wdx, ne, 1e-5);
    if (p > 0 && zeros == 0) printf("FAIL %s: nothing dropped\n", name), fails++;
    for (int t = 0; t < n; t++) free(A[t]), free(xa[t]), free(dxa[t]), free(dA[t]), free(wxa[t]), free(wdA[t]);
    free(x), free(dx), free(ones), free(mask), free(wdx);
}

// LoRA's B side: out += scale xa B^T; dB += scale dout^T xa; dxa = scale dout B, against double products
static void test_lora_up(int N, int OC, int r) {
    float *xa = rnd((size_t)N * r, 1), *B = rnd((size_t)OC * r, 1), *out = rnd((size_t)N * OC, 1);
    float *dout = rnd((size_t)N * OC, 1), *dB = rnd((size_t)OC * r, 1), *dxa = rnd((size_t)N * r, 1);
    double *wo = pq_xmalloc((size_t)N * OC * sizeof *wo), *wdB = pq_xmalloc((size_t)OC * r * sizeof *wdB);
    double *wdxa = pq_xmalloc((size_t)N * r * sizeof *wdxa);
    double *xad = widen(xa, (size_t)N * r), *Bd = widen(B, (size_t)OC * r);
    float sc = 1.75f;
    ref_lora_up(wo, wdB, wdxa, xad, Bd, out, dout, dB, sc, N, OC, r, NULL);
    pq_cpu_lora_up_forward(out, xa, B, sc, N, OC, r);
    pq_cpu_lora_up_backward(dB, dxa, dout, xa, B, sc, N, OC, r);
    close_to("lora_up_forward out", out, wo, (size_t)N * OC, 1e-5);
    close_to("lora_up_backward dB", dB, wdB, (size_t)OC * r, 1e-5);
    close_to("lora_up_backward dxa", dxa, wdxa, (size_t)N * r, 1e-5);
    free(xa), free(B), free(out), free(dout), free(dB), free(dxa), free(wo), free(wdB), free(wdxa);
    free(xad), free(Bd);
}

static void test_rmsnorm(int N, int C) {
    float *x = rnd((size_t)N * C, 3), *w = rnd(C, 1), *out = pq_xmalloc((size_t)N * C * 4), *rstd = pq_xmalloc(N * 4);
    double *want = pq_xmalloc((size_t)N * C * sizeof *want), *wr = pq_xmalloc(N * sizeof *wr);
    for (int i = 0; i < N; i++) {
        double ss = 0;
        for (int c = 0; c < C; c++) ss += (double)x[(size_t)i * C + c] * x[(size_t)i * C + c];
        wr[i] = 1 / sqrt(ss / C + 1e-5);
        for (int c = 0; c < C; c++) want[(size_t)i * C + c] = x[(size_t)i * C + c] * wr[i] * w[c];
    }
    pq_cpu_rmsnorm_forward(out, rstd, x, w, N, C, 1e-5f);
    close_to("rmsnorm", out, want, (size_t)N * C, 1e-5);
    close_to("rmsnorm rstd", rstd, wr, (size_t)N, 1e-5);
    free(x), free(w), free(out), free(rstd), free(want), free(wr);
}

// the residual add fused with the norm after it, against a double reference of add-then-norm
static void test_residual_rmsnorm(int N, int C) {
    float *x = rnd((size_t)N * C, 3), *y = rnd((size_t)N * C, 2), *w = rnd(C, 1);
    float *out = pq_xmalloc((size_t)N * C * 4), *rstd = pq_xmalloc(N * 4), *out2 = pq_xmalloc((size_t)N * C * 4);
    float *x2 = pq_xmalloc((size_t)N * C * 4);
    memcpy(x2, x, (size_t)N * C * 4);
    double *want = pq_xmalloc((size_t)N * C * sizeof *want), *wx = pq_xmalloc((size_t)N * C * sizeof *wx);
    double *wr = pq_xmalloc(N * sizeof *wr);
    for (int i = 0; i < N; i++) {
        double ss = 0;
        for (int c = 0; c < C; c++) {
            size_t e = (size_t)i * C + c;
            wx[e] = (double)x[e] + y[e];
            ss += wx[e] * wx[e];
        }
        wr[i] = 1 / sqrt(ss / C + 1e-5);
        for (int c = 0; c < C; c++) want[(size_t)i * C + c] = wx[(size_t)i * C + c] * wr[i] * w[c];
    }
    pq_cpu_residual_rmsnorm_forward(out, rstd, x, y, w, N, C, 1e-5f);
    close_to("residual_rmsnorm x += y", x, wx, (size_t)N * C, 1e-7);
    close_to("residual_rmsnorm out", out, want, (size_t)N * C, 1e-5);
    close_to("residual_rmsnorm rstd", rstd, wr, (size_t)N, 1e-5);
    pq_cpu_residual_rmsnorm_forward(out2, NULL, x2, y, w, N, C, 1e-5f); // rstd NULL
    close_to("residual_rmsnorm out, rstd NULL", out2, want, (size_t)N * C, 1e-5);
    free(x), free(y), free(w), free(out), free(rstd), free(out2), free(x2), free(want), free(wx), free(wr);
}

static void test_rope(int N, int NH, int HS) {
    float *x = rnd((size_t)N * NH * HS, 1), *f = pq_xmalloc((size_t)HS / 2 * 4);
    int32_t *pos = pq_xmalloc((size_t)N * 4);
    for (int d = 0; d < HS / 2; d++) f[d] = (float)pow(10000.0, -2.0 * d / HS);
    for (int i = 0; i < N; i++) pos[i] = i % 37 + (i > 50 ? 1000 : 0);
    double *want = pq_xmalloc((size_t)N * NH * HS * sizeof *want);
    for (int i = 0; i < N; i++)
        for (int h = 0; h < NH; h++)
            for (int d = 0; d < HS; d++) {
                // x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1)
                const float *v = x + ((size_t)i * NH + h) * HS;
                double a = (double)((float)pos[i] * f[d % (HS / 2)]);
                double rh = d < HS / 2 ? -v[d + HS / 2] : v[d - HS / 2];
                want[((size_t)i * NH + h) * HS + d] = v[d] * cos(a) + rh * sin(a);
            }
    pq_cpu_rope_forward(x, pos, f, N, NH, HS);
    close_to("rope", x, want, (size_t)N * NH * HS, 1e-5);
    free(x), free(f), free(pos), free(want);
}

// records: lengths of the packed records; window 0 = none
static void test_attention(const int *lens, int nrec, int NH, int KVH, int HS, int window) {
    int N = 0;
    for (int r = 0; r < nrec; r++) N += lens[r];
    int32_t *pos = pq_xmalloc((size_t)N * 4);
    for (int r = 0, i = 0; r < nrec; r++)
        for (int p = 0; p < lens[r]; p++) pos[i++] = p;
    size_t qd = (size_t)NH * HS, kd = (size_t)KVH * HS;
    float *q = rnd(N * qd, 2), *k = rnd(N * kd, 2), *v = rnd(N * kd, 1);
    float *out = rnd(N * qd, 9), *lse = pq_xmalloc((size_t)N * NH * 4);
    double *want = pq_xcalloc(N * qd, sizeof *want), *wl = pq_xmalloc((size_t)N * NH * sizeof *wl);
    double *p = pq_xmalloc((size_t)N * sizeof *p);
    for (int i = 0; i < N; i++)
        for (int h = 0; h < NH; h++) {
            int kh = h / (NH / KVH);
            double m = -INFINITY, s = 0;
            for (int j = 0; j < N; j++) {
                int same = j - pos[j] == i - pos[i], ok = same && j <= i && (!window || i - j <= window);
                p[j] = -INFINITY;
                if (!ok) continue;
                double dot = 0;
                for (int d = 0; d < HS; d++) dot += (double)q[i * qd + h * HS + d] * k[j * kd + kh * HS + d];
                p[j] = dot / sqrt(HS);
                if (p[j] > m) m = p[j];
            }
            for (int j = 0; j < N; j++) s += p[j] > -INFINITY ? exp(p[j] - m) : 0;
            wl[(size_t)i * NH + h] = m + log(s);
            for (int j = 0; j < N; j++) {
                if (p[j] == -INFINITY) continue;
                double a = exp(p[j] - m) / s;
                for (int d = 0; d < HS; d++) want[i * qd + h * HS + d] += a * v[j * kd + kh * HS + d];
            }
        }
    pq_cpu_attention_forward(out, lse, q, k, v, pos, N, NH, KVH, HS, window);
    char what[96];
    snprintf(what, sizeof what, "attention %d records N=%d NH=%d KVH=%d HS=%d window=%d", nrec, N, NH, KVH, HS, window);
    close_to(what, out, want, N * qd, 1e-5);
    close_to("attention lse", lse, wl, (size_t)N * NH, 1e-5);
    free(pos), free(q), free(k), free(v), free(out), free(lse), free(want), free(wl), free(p);
}

static void test_swiglu_residual_embedding(void) {
    int N = 7, H = 33, V = 11, C = 5;
    float *g = rnd((size_t)N * H, 6), *u = rnd((size_t)N * H, 2), *out = pq_xmalloc((size_t)N * H * 4);
    double *want = pq_xmalloc((size_t)N * H * sizeof *want);
    for (int i = 0; i < N * H; i++) want[i] = g[i] / (1 + exp(-(double)g[i])) * u[i];
    pq_cpu_swiglu_forward(out, g, u, N, H);
    close_to("swiglu", out, want, (size_t)N * H, 1e-6);
    for (int i = 0; i < N * H; i++) want[i] = (double)out[i] + g[i];
    pq_cpu_residual_forward(out, g, (size_t)N * H);
    close_to("residual", out, want, (size_t)N * H, 1e-6);
    float *wv = rnd((size_t)V * C, 1);
    void *store;
    PqWeight w = weight(PQ_BF16, V, C, wv, &store);
    int32_t ids[7] = {3, 0, 10, 3, 7, 1, 9};
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++) want[i * C + c] = wv[ids[i] * C + c];
    pq_cpu_embedding_forward(out, ids, &w, N, C);
    close_to("embedding bf16", out, want, (size_t)N * C, 0);
    free(g), free(u), free(out), free(want), free(wv), free(store);
}

static void test_logp(PqDtype t, int N, int C, int V) {
    float *h = rnd((size_t)N * C, 2), *wv = rnd((size_t)V * C, 1);
    void *store;
    PqWeight w = weight(t, V, C, wv, &store);
    int32_t *tg = pq_xmalloc((size_t)N * 4);
    for (int i = 0; i < N; i++) tg[i] = i % 4 == 3 ? -1 : (int32_t)pq_rng_below(&rng, (uint64_t)V);
    tg[0] = V - 1;
    double *want = pq_xmalloc((size_t)N * sizeof *want), *wl = pq_xmalloc((size_t)N * sizeof *wl);
    double *lg = pq_xmalloc((size_t)V * sizeof *lg);
    for (int i = 0; i < N; i++) {
        double m = -INFINITY, s = 0;
        for (int v = 0; v < V; v++) {
            double d = 0;
            for (int c = 0; c < C; c++) d += (double)h[(size_t)i * C + c] * wv[(size_t)v * C + c];
            lg[v] = d;
            if (d > m) m = d;
        }
        for (int v = 0; v < V; v++) s += exp(lg[v] - m);
        wl[i] = m + log(s);
        want[i] = tg[i] >= 0 ? lg[tg[i]] - wl[i] : 0;
    }
    float *lp = rnd(N, 5), *lse = pq_xmalloc((size_t)N * 4);
    pq_cpu_logp_forward(lp, lse, h, &w, tg, N, C, V);
    char what[96];
    snprintf(what, sizeof what, "logp %s N=%d C=%d V=%d", pq_dtype_name(t), N, C, V);
    close_to(what, lp, want, (size_t)N, 2e-6);
    close_to("logp lse", lse, wl, (size_t)N, 2e-6);
    free(h), free(wv), free(store), free(tg), free(want), free(wl), free(lg), free(lp), free(lse);
}

int main(void) {
    pq_rng_seed(&rng, 1);
    test_convert();
    int threads[] = {1, 3};
    for (int ti = 0; ti < 2; ti++) {
        pq_cpu_set_threads(threads[ti]);
        printf("-- %d threads\n", threads[ti]);
        test_linear(PQ_F32, 5, 24, 40, 0);
        test_linear(PQ_BF16, 33, 64, 1100, 1); // several tiles, the last one partial
        test_linear(PQ_F16, 4, 16, 7, 1);
        test_lora(9, 20, 13, 4);
        test_lora_dx_dropout(37, 45, 5, 0.25f); // rows over one block, the last partial
        test_lora_dx_dropout(3, 8, 20, 0.0f);   // no dropout
        test_lora_up(70, 33, 5);
        for (int n = 1; n <= 3; n++) {
            test_lora_group(n, 300, 270, 5, 0.25f); // row blocks (64) and column blocks (256), the last partial
            test_lora_group(n, 7, 9, 20, 0.5f);     // under one block, r above C
            test_lora_group(n, 67, 31, 3, 0.0f);    // no dropout
        }
        test_rmsnorm(6, 50);
        test_residual_rmsnorm(7, 130);
        test_linear_group();
        test_rope(60, 3, 16);
        int l1[] = {5}, l2[] = {70, 3, 140, 1}, l3[] = {100, 30};
        test_attention(l1, 1, 2, 2, 8, 0);
        test_attention(l2, 4, 4, 2, 8, 0);
        test_attention(l2, 4, 6, 2, 4, 16);   // window shorter than the records, GQA 3:1
        test_attention(l3, 2, 2, 1, 8, 64);   // window of one query block
        test_swiglu_residual_embedding();
        test_logp(PQ_F32, 6, 8, 3000);  // several vocab chunks, the last partial
        test_logp(PQ_BF16, 13, 16, 1024);
        test_logp(PQ_F16, 1, 4, 5);
    }
    if (fails) printf("%d FAILED\n", fails);
    else printf("all ops ok\n");
    return fails != 0;
}
