// parity-attn.c: the attention of bf16 models on the CUDA backend against
// its twins. The tensor-core path (lib/attn_mm.c on the CUDA engine of
// lib/cuda/attention.cu): each engine kernel against the plain-C engine's
// (same bf16 rounding, so tight tolerances), the whole forward and backward
// against the plain-C engine and the f32 CPU oracle (ops_cpu.c). cuDNN's
// fused attention (PQ_ATTENTION=cudnn: lib/attn_plan.c's calls): the whole
// forward and backward against the f32 oracle, and whether cuDNN served
// each batch its plan accepts (a missing libcudnn fails here). Packed
// records, GQA, windows, the two-range form and a Mistral-7B-shaped batch;
// device outputs poisoned with NaN first. Last, the time of the forward and
// of forward + backward at the 7B shape on the three CUDA paths. Built only
// with CUDA=1; run by scripts/gpu-check. Exits 1 on any mismatch.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attn_mm.h"
#include "attn_plan.h"
#include "cuda/sdpa.h"
#include "gpu_test.h"
#include "ops_grad.h"
#include "util.h"

static int failures, checks;

static float *down_as_f32(const void *d, size_t n, int esz) { // n elements of esz bytes
    if (esz == 4) return down(d, n);
    float *h = pq_xmalloc((n ? n : 1) * sizeof *h);
    uint16_t *b = pq_xmalloc((n ? n : 1) * 2);
    pq_dev_download(b, d, n * 2);
    for (size_t i = 0; i < n; i++) h[i] = pq_bf16_to_f32(b[i]);
    free(b);
    return h;
}
static float *as_f32(const void *h, size_t n, int esz) {
    float *o = pq_xmalloc((n ? n : 1) * sizeof *o);
    for (size_t i = 0; i < n; i++) o[i] = esz == 4 ? ((const float *)h)[i] : pq_bf16_to_f32(((const uint16_t *)h)[i]);
    return o;
}
static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// max |got - want| / max(max |want|, 1e-6) <= tol, no NaN
static void cmp(const char *name, const float *want, const float *got, size_t n, double tol) {
    checks++;
    if (!close_rel(name, 58, want, got, n, tol)) failures++;
}
static void cmp_dev(const char *name, const float *want, const void *got_dev, size_t n, int esz, double tol) {
    float *g = down_as_f32(got_dev, n, esz);
    cmp(name, want, g, n, tol);
    free(g);
}

typedef struct Case {
    const char *name;
    int N, NH, KVH, HS, window;
    int32_t *pos, *a0, *a1, *b0; // a0 NULL: plain
} Case;

static Case plain(const char *name, const int *lens, int nrec, int NH, int KVH, int HS, int window) {
    Case c = {name, 0, NH, KVH, HS, window, NULL, NULL, NULL, NULL};
    for (int r = 0; r < nrec; r++) c.N += lens[r];
    c.pos = pq_xmalloc((size_t)c.N * 4);
    int n = 0;
    for (int r = 0; r < nrec; r++)
        for (int t = 0; t < lens[r]; t++) c.pos[n++] = t;
    return c;
}
// prompt P, chosen Cn and rejected R sharing it, then a plain record of X
static Case two_range(const char *name, int P, int Cn, int R, int X, int NH, int KVH, int HS, int window) {
    Case c = {name, P + Cn + R + X, NH, KVH, HS, window, NULL, NULL, NULL, NULL};
    int N = c.N;
    c.pos = pq_xmalloc((size_t)N * 4), c.a0 = pq_xmalloc((size_t)N * 4);
    c.a1 = pq_xmalloc((size_t)N * 4), c.b0 = pq_xmalloc((size_t)N * 4);
    for (int i = 0; i < N; i++) {
        if (i < P + Cn) c.pos[i] = i, c.a0[i] = c.a1[i] = 0, c.b0[i] = 0;
        else if (i < P + Cn + R) c.pos[i] = i - Cn, c.a0[i] = 0, c.a1[i] = P, c.b0[i] = P + Cn;
        else c.pos[i] = i - (P + Cn + R), c.a0[i] = c.a1[i] = P + Cn + R, c.b0[i] = P + Cn + R;
    }
    return c;
}
static void case_free(Case *c) { free(c->pos), free(c->a0), free(c->a1), free(c->b0); }

// Each kernel of the CUDA engine against the plain-C engine's, on the blocks of case c.
static void kernels(const Case *c) {
    const PqAttnEngine *G = pq_attn_mm_cuda(), *H = pq_attn_mm_cpu(2);
    int N = c->N, NH = c->NH, KVH = c->KVH, HS = c->HS;
    size_t nq = (size_t)N * NH * HS, nk = (size_t)N * KVH * HS, nl = (size_t)N * NH;
    char name[128];
    // expand: exact (the same round-to-nearest-even)
    float *k = hrand(nk, 3);
    float *gk = dev(k, nk * 4);
    void *gx = pq_dev_alloc(nq * 2), *hx = pq_xmalloc(nq * 2);
    G->expand(gx, gk, N, NH, KVH, HS);
    H->expand(hx, k, N, NH, KVH, HS);
    float *want = as_f32(hx, nq, 2);
    snprintf(name, sizeof name, "%s: expand %d -> %d heads", c->name, KVH, NH);
    cmp_dev(name, want, gx, nq, 2, 0.0);
    free(want);
    // reduce
    float *src = hrand(nq, 1), *gsrc = dev(src, nq * 4), *gdst = dnan(nk), *hdst = pq_xmalloc(nk * 4);
    G->reduce(gdst, gsrc, N, NH, KVH, HS);
    H->reduce(hdst, src, N, NH, KVH, HS);
    snprintf(name, sizeof name, "%s: reduce %d -> %d heads", c->name, NH, KVH);
    cmp_dev(name, hdst, gdst, nk, 4, 1e-6);
    // rowdot
    float *a = hrand(nq, 1), *b = hrand(nq, 1), *ga = dev(a, nq * 4), *gb = dev(b, nq * 4);
    float *gD = dnan(nl), *hD = pq_xmalloc(nl * 4);
    G->rowdot(gD, ga, gb, nl, HS);
    H->rowdot(hD, a, b, nl, HS);
    snprintf(name, sizeof name, "%s: rowdot", c->name);
    cmp_dev(name, hD, gD, nl, 4, 1e-5);
    // softmax and its backward on every block, random scores
    PqAttnBlock *bl;
    size_t mx;
    int nb = pq_attn_mm_blocks(&bl, &mx, c->pos, c->a0, c->a1, c->b0, N, NH, c->window, 64, (size_t)1 << 20);
    int32_t *gpos = dev(c->pos, (size_t)N * 4);
    float *lse = hnan(nl), *glse = dnan(nl);
    for (int t = 0; t < nb; t++) {
        PqAttnBlock B = bl[t];
        size_t ne = (size_t)NH * B.nq * B.ld;
        float *S = hrand(ne, 6), *dP = hrand(ne, 1), *gS = dev(S, ne * 4), *gdP = dev(dP, ne * 4);
        void *hP = pq_xmalloc(ne * 2), *hdS = pq_xmalloc(ne * 2), *gP = pq_dev_alloc(ne * 2), *gdS = pq_dev_alloc(ne * 2);
        H->softmax(hP, lse, S, B, c->pos, NH, c->window);
        G->softmax(gP, glse, gS, B, gpos, NH, c->window);
        float *wp = as_f32(hP, ne, 2);
        if (t == 0 || t == nb - 1) {
            snprintf(name, sizeof name, "%s: softmax block %d of %d", c->name, t + 1, nb);
            cmp_dev(name, wp, gP, ne, 2, 8e-3);
        }
        free(wp);
        float *gl2 = dev(lse, nl * 4); // the backward from the host's lse (rows of other blocks are NaN: unused)
        H->softmax_bwd(hP, hdS, S, dP, lse, hD, B, c->pos, NH, c->window, 0.125f);
        G->softmax_bwd(gP, gdS, gS, gdP, gl2, gD, B, gpos, NH, c->window, 0.125f);
        if (t == 0 || t == nb - 1) {
            float *w1 = as_f32(hP, ne, 2), *w2 = as_f32(hdS, ne, 2);
            snprintf(name, sizeof name, "%s: softmax_bwd P block %d", c->name, t + 1);
            cmp_dev(name, w1, gP, ne, 2, 8e-3);
            snprintf(name, sizeof name, "%s: softmax_bwd dS block %d", c->name, t + 1);
            cmp_dev(name, w2, gdS, ne, 2, 8e-3);
            free(w1), free(w2);
        }
        pq_dev_free(gl2);
        free(S), free(dP), free(hP), free(hdS);
        pq_dev_free(gS), pq_dev_free(gdP), pq_dev_free(gP), pq_dev_free(gdS);
    }
    snprintf(name, sizeof name, "%s: softmax lse (all %d blocks)", c->name, nb);
    cmp_dev(name, lse, glse, nl, 4, 1e-5);
    free(bl), free(lse), free(k), free(hx), free(src), free(hdst), free(a), free(b), free(hD);
    void *p[] = {gk, gx, gsrc, gdst, ga, gb, gD, gpos, glse};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) pq_dev_free(p[i]);
}

// Runs the rest of the program's bf16 attention on path (PQ_ATTENTION: "mm", "cudnn", "f32").
static void use_path(const char *path) {
    setenv("PQ_ATTENTION", path, 1);
    pq_ops_set_attention_dtype(PQ_BF16);
}

// The whole forward and backward on path "mm" (the CUDA tensor-core path: vs the plain-C bf16 engine and the
// f32 oracle) or "cudnn" (vs the oracle; and cuDNN must have served it where the plan accepts the batch).
static void whole(const Case *c, const char *path) {
    int N = c->N, NH = c->NH, KVH = c->KVH, HS = c->HS, w = c->window;
    size_t nq = (size_t)N * NH * HS, nk = (size_t)N * KVH * HS, nl = (size_t)N * NH;
    float *q = hrand(nq, 2), *k = hrand(nk, 2), *v = hrand(nk, 1), *dout = hrand(nq, 1);
    float *out = hnan(nq), *lse = hnan(nl), *dq = hnan(nq), *dk = hnan(nk), *dv = hnan(nk);
    float *eo = hnan(nq), *el = hnan(nl), *edq = hnan(nq), *edk = hnan(nk), *edv = hnan(nk);
    const PqAttnEngine *H = pq_attn_mm_cpu(2);
    if (c->a0) {
        pq_cpu_attention2_forward(out, lse, q, k, v, c->pos, c->a0, c->a1, c->b0, N, NH, KVH, HS, w);
        pq_cpu_attention2_backward(dq, dk, dv, dout, q, k, v, out, lse, c->pos, c->a0, c->a1, c->b0, N, NH, KVH, HS, w);
    } else {
        pq_cpu_attention_forward(out, lse, q, k, v, c->pos, N, NH, KVH, HS, w);
        pq_cpu_attention_backward(dq, dk, dv, dout, q, k, v, out, lse, c->pos, N, NH, KVH, HS, w);
    }
    pq_attn_mm_forward(H, eo, el, q, k, v, c->pos, c->a0, c->a1, c->b0, N, NH, KVH, HS, w);
    pq_attn_mm_backward(H, edq, edk, edv, dout, q, k, v, out, lse, c->pos, c->a0, c->a1, c->b0, N, NH, KVH, HS, w);
    float *gq = dev(q, nq * 4), *gk = dev(k, nk * 4), *gv = dev(v, nk * 4), *gdout = dev(dout, nq * 4);
    float *gout_c = dev(out, nq * 4), *glse_c = dev(lse, nl * 4);
    int32_t *gpos = dev(c->pos, (size_t)N * 4), *ga0 = NULL, *ga1 = NULL, *gb0 = NULL;
    if (c->a0) ga0 = dev(c->a0, (size_t)N * 4), ga1 = dev(c->a1, (size_t)N * 4), gb0 = dev(c->b0, (size_t)N * 4);
    float *gout = dnan(nq), *glse = dnan(nl), *gdq = dnan(nq), *gdk = dnan(nk), *gdv = dnan(nk);
    use_path(path);
    int calls0 = pq_attention_cudnn_calls();
    if (c->a0) {
        pq_attention2_forward(gout, glse, gq, gk, gv, gpos, ga0, ga1, gb0, N, NH, KVH, HS, w);
        pq_attention2_backward(gdq, gdk, gdv, gdout, gq, gk, gv, gout_c, glse_c, gpos, ga0, ga1, gb0, N, NH, KVH, HS,
                               w);
    } else {
        pq_attention_forward(gout, glse, gq, gk, gv, gpos, N, NH, KVH, HS, w);
        pq_attention_backward(gdq, gdk, gdv, gdout, gq, gk, gv, gout_c, glse_c, gpos, N, NH, KVH, HS, w);
    }
    int calls = pq_attention_cudnn_calls() - calls0;
    use_path("f32");
    unsetenv("PQ_ATTENTION");
    const char *what[] = {"out", "lse", "dq", "dk", "dv"};
    const float *oracle[] = {out, lse, dq, dk, dv}, *twin[] = {eo, el, edq, edk, edv};
    const float *got[] = {gout, glse, gdq, gdk, gdv};
    size_t n[] = {nq, nl, nq, nk, nk};
    char name[160];
    int cudnn = !strcmp(path, "cudnn");
    if (cudnn) { // served by cuDNN exactly when the plan accepts the batch
        PqAttnPlan p;
        char err[200] = "";
        int ok = pq_attn_plan_build(&p, c->pos, c->a0, c->a1, c->b0, N, w, err, sizeof err) == 0;
        int want = ok ? 2 * (1 + (p.cross.B > 0)) : 0;
        if (ok) pq_attn_plan_free(&p);
        checks++;
        if (calls == 0 && want && HS != 64 && HS != 128 && !strncmp(pq_attention_cudnn_error(), "cuDNN refuses", 13)) {
            // head sizes other than 64 and 128 may be refused by a cuDNN version: noted, served by the fallback
            printf("ok   %s: %s (the fallback served it)\n", c->name, pq_attention_cudnn_error());
        } else if (calls != want) {
            failures++;
            printf("FAIL %s: %d cuDNN calls, want %d (%s)\n", c->name, calls, want,
                   want ? pq_attention_cudnn_error() : err);
        } else {
            printf("ok   %s: cuDNN %s\n", c->name, want ? "served it" : "refused by the plan:");
            if (!want) printf("     %s\n", err);
        }
    }
    for (int t = 0; t < 5; t++) {
        if (!cudnn) {
            snprintf(name, sizeof name, "%s: %s vs the C bf16 engine", c->name, what[t]);
            cmp_dev(name, twin[t], got[t], n[t], 4, 5e-3);
        }
        snprintf(name, sizeof name, "%s [%s]: %s vs the f32 oracle", c->name, path, what[t]);
        cmp_dev(name, oracle[t], got[t], n[t], 4, 3e-2);
    }
    float *hp[] = {q, k, v, dout, out, lse, dq, dk, dv, eo, el, edq, edk, edv};
    for (size_t i = 0; i < sizeof hp / sizeof *hp; i++) free(hp[i]);
    void *dp[] = {gq, gk, gv, gdout, gout_c, glse_c, gpos, ga0, ga1, gb0, gout, glse, gdq, gdk, gdv};
    for (size_t i = 0; i < sizeof dp / sizeof *dp; i++) pq_dev_free(dp[i]);
}

// cuDNN's plans are cached by the position array's address: a second call on the same arrays builds none,
// and new positions uploaded into the same array (same N, other records) are planned again, not served by
// the stale plan: both forwards against the f32 oracle.
static void plan_reuse(void) {
    int la[] = {1, 37, 100, 64, 5}, lb[] = {100, 107};
    Case a = plain("cache: records 1,37,100,64,5", la, 5, 8, 2, 64, 0);
    Case b = plain("cache: records 100,107 in the same array", lb, 2, 8, 2, 64, 0);
    int N = a.N, NH = 8, KVH = 2, HS = 64;
    size_t nq = (size_t)N * NH * HS, nk = (size_t)N * KVH * HS, nl = (size_t)N * NH;
    float *q = hrand(nq, 2), *k = hrand(nk, 2), *v = hrand(nk, 1), *out = hnan(nq), *lse = hnan(nl);
    float *gq = dev(q, nq * 4), *gk = dev(k, nk * 4), *gv = dev(v, nk * 4), *gout = dnan(nq), *glse = dnan(nl);
    int32_t *gpos = dev(a.pos, (size_t)N * 4);
    use_path("cudnn");
    const Case *cs[] = {&a, &a, &b};
    long want[] = {1, 0, 1};
    for (int t = 0; t < 3; t++) {
        if (t == 2) pq_dev_upload(gpos, b.pos, (size_t)N * 4);
        long built0 = pq_attention_cudnn_plans();
        pq_attention_forward(gout, glse, gq, gk, gv, gpos, N, NH, KVH, HS, 0);
        long built = pq_attention_cudnn_plans() - built0;
        checks++;
        if (built != want[t]) {
            failures++;
            printf("FAIL %s (call %d): %ld plans built, want %ld\n", cs[t]->name, t + 1, built, want[t]);
        } else printf("ok   %s (call %d): %ld plans built\n", cs[t]->name, t + 1, built);
        pq_cpu_attention_forward(out, lse, q, k, v, cs[t]->pos, N, NH, KVH, HS, 0);
        char name[160];
        snprintf(name, sizeof name, "%s (call %d): out vs the f32 oracle", cs[t]->name, t + 1);
        cmp_dev(name, out, gout, nq, 4, 3e-2);
        snprintf(name, sizeof name, "%s (call %d): lse vs the f32 oracle", cs[t]->name, t + 1);
        cmp_dev(name, lse, glse, nl, 4, 3e-2);
    }
    use_path("f32");
    unsetenv("PQ_ATTENTION");
    free(q), free(k), free(v), free(out), free(lse);
    void *dp[] = {gq, gk, gv, gout, glse, gpos};
    for (size_t i = 0; i < sizeof dp / sizeof *dp; i++) pq_dev_free(dp[i]);
    case_free(&a), case_free(&b);
}

// ms of the forward alone (*fwd) and of forward + backward (returned) of one layer's attention at case c, on
// path ("f32", "mm", "cudnn")
static double timed(const Case *c, const char *path, int iters, double *fwd) {
    int N = c->N, NH = c->NH, KVH = c->KVH, HS = c->HS;
    size_t nq = (size_t)N * NH * HS, nk = (size_t)N * KVH * HS, nl = (size_t)N * NH;
    float *hq = hrand(nq, 2), *hk = hrand(nk, 2);
    float *q = dev(hq, nq * 4), *k = dev(hk, nk * 4), *v = dev(hk, nk * 4), *dout = dev(hq, nq * 4);
    float *out = pq_dev_alloc(nq * 4), *lse = pq_dev_alloc(nl * 4), *dq = pq_dev_alloc(nq * 4);
    float *dk = pq_dev_alloc(nk * 4), *dv = pq_dev_alloc(nk * 4);
    int32_t *pos = dev(c->pos, (size_t)N * 4);
    use_path(path);
    float sync;
    double best = INFINITY, bestf = INFINITY;
    for (int it = 0; it <= iters; it++) { // the first is a warm-up
        pq_dev_download(&sync, out, 4);
        double t0 = now_s();
        pq_attention_forward(out, lse, q, k, v, pos, N, NH, KVH, HS, c->window);
        pq_dev_download(&sync, out, 4);
        double t1 = now_s();
        pq_attention_backward(dq, dk, dv, dout, q, k, v, out, lse, pos, N, NH, KVH, HS, c->window);
        pq_dev_download(&sync, dk, 4);
        double t = now_s() - t0;
        if (it > 0 && t < best) best = t;
        if (it > 0 && t1 - t0 < bestf) bestf = t1 - t0;
    }
    use_path("f32");
    unsetenv("PQ_ATTENTION");
    free(hq), free(hk);
    void *p[] = {q, k, v, dout, out, lse, dq, dk, dv, pos};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) pq_dev_free(p[i]);
    *fwd = bestf * 1e3;
    return best * 1e3;
}

int main(void) {
    pq_rng_seed(&gt_rng, 7);
    int l1[] = {1, 37, 100, 64, 5}, l2[] = {200}, l3[] = {33, 31, 2, 90}, l7[] = {1500, 548};
    Case cs[] = {
        plain("plain 8/2 HS 64", l1, 5, 8, 2, 64, 0),
        plain("plain 4/4 HS 128 window 17", l1, 5, 4, 4, 128, 17),
        plain("plain 8/1 HS 128 window 40", l2, 1, 8, 1, 128, 40),
        plain("plain 6/3 HS 48", l3, 4, 6, 3, 48, 0),
        two_range("two ranges 8/2 HS 64", 37, 21, 26, 40, 8, 2, 64, 0),
        two_range("two ranges 6/3 HS 32 window 30", 37, 21, 26, 40, 6, 3, 32, 30),
        two_range("two ranges 8/2 HS 128, 700-token prompt", 700, 90, 130, 0, 8, 2, 128, 0),
        plain("Mistral-7B shape 32/8 HS 128, 2 records", l7, 2, 32, 8, 128, 4096),
    };
    int nc = (int)(sizeof cs / sizeof *cs);
    for (int t = 0; t < nc; t++) kernels(&cs[t]);
    for (int t = 0; t < nc; t++) whole(&cs[t], "mm");
    for (int t = 0; t < nc; t++) whole(&cs[t], "cudnn");
    plan_reuse();
    // time: one Mistral-7B layer's attention, 2 x 2048 tokens
    int l8[] = {2048, 2048};
    Case big = plain("7B", l8, 2, 32, 8, 128, 4096);
    double f32f, tcf, cdf;
    double f32 = timed(&big, "f32", 3, &f32f), tc = timed(&big, "mm", 3, &tcf), cd = timed(&big, "cudnn", 5, &cdf);
    // forward 2 products, backward 5, of 2 T^2/2 HS NH flops each (causal), per record
    double flops1 = 2 * 2048.0 * 2048.0 * 128 * 32, flops = 7 * flops1, flopsf = 2 * flops1;
    printf("attention fwd+bwd, one 7B layer, 2 x 2048 tokens: f32 kernels %.2f ms, tensor cores %.2f ms "
           "(%.0f TFLOP/s causal), cuDNN %.3f ms (%.0f TFLOP/s)\n",
           f32, tc, flops / (tc * 1e-3) / 1e12, cd, flops / (cd * 1e-3) / 1e12);
    printf("attention fwd alone: f32 kernels %.2f ms, tensor cores %.3f ms, cuDNN %.3f ms (%.0f TFLOP/s)\n", f32f, tcf,
           cdf, flopsf / (cdf * 1e-3) / 1e12);
    if (pq_attention_cudnn_error()[0]) printf("cuDNN's last refusal: %s\n", pq_attention_cudnn_error());
    printf("RESULT attn_f32_ms %.3f\nRESULT attn_tc_ms %.3f\nRESULT attn_cudnn_ms %.3f\n", f32, tc, cd);
    printf("RESULT attn_tc_fwd_ms %.3f\nRESULT attn_cudnn_fwd_ms %.3f\n", tcf, cdf);
    for (int t = 0; t < nc; t++) case_free(&cs[t]);
    case_free(&big);
    pq_attn_mm_cpu_free();
    printf("%d of %d checks failed\n", failures, checks);
    return failures ? 1 : 0;
}
