// test-attn-mm.c: lib/attn_mm.c's attention as batched products (the host
// side of the CUDA backend's tensor-core attention) run on the plain-C
// engines, against ops_cpu.c's attention (itself checked against a naive
// double reference in test-ops/test-grad): packed records, GQA, a sliding
// window, the two-range form of a shared prompt, blocks split by the row and
// score limits; f32 products to 2e-5, bf16-rounded products to bf16 accuracy.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_mm.h"
#include "ops.h"
#include "ops_grad.h"
#include "util.h"

#include "attn_test.h"

static void run(const Case *c, int esz, int max_rows, size_t max_scores) {
    int N = c->N, NH = c->NH, KVH = c->KVH, HS = c->HS, w = c->window;
    size_t nq = (size_t)N * NH * HS, nk = (size_t)N * KVH * HS, nl = (size_t)N * NH;
    float *q = rnd(nq, 2), *k = rnd(nk, 2), *v = rnd(nk, 1), *dout = rnd(nq, 1);
    float *out = nans(nq), *lse = nans(nl), *dq = nans(nq), *dk = nans(nk), *dv = nans(nk);
    float *mout = nans(nq), *mlse = nans(nl), *mdq = nans(nq), *mdk = nans(nk), *mdv = nans(nk);
    PqAttnEngine E = *pq_attn_mm_cpu(esz);
    E.max_rows = max_rows, E.max_scores = max_scores;
    ref_attention(c, q, k, v, dout, out, lse, dq, dk, dv);
    pq_attn_mm_forward(&E, mout, mlse, q, k, v, c->pos, c->a0, c->a1, c->b0, N, NH, KVH, HS, w);
    // the backward from the reference forward, so its errors are its own
    pq_attn_mm_backward(&E, mdq, mdk, mdv, dout, q, k, v, out, lse, c->pos, c->a0, c->a1, c->b0, N, NH, KVH, HS, w);
    double tol = esz == 4 ? 2e-5 : 3e-2;
    char name[160];
    const char *what[] = {"out", "lse", "dq", "dk", "dv"};
    const float *want[] = {out, lse, dq, dk, dv}, *got[] = {mout, mlse, mdq, mdk, mdv};
    size_t n[] = {nq, nl, nq, nk, nk};
    for (int t = 0; t < 5; t++) {
        snprintf(name, sizeof name, "%s %s, %s products, blocks <= %d rows / %zu scores (0: default)", c->name, what[t],
                 esz == 4 ? "f32" : "bf16", max_rows, max_scores);
        cmp(name, want[t], got[t], n[t], tol);
    }
    float *p[] = {q, k, v, dout, out, lse, dq, dk, dv, mout, mlse, mdq, mdk, mdv};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) free(p[i]);
}

// The blocks cover every row once, in order, and stay within their limits.
static void check_blocks(const Case *c, int max_rows, size_t max_scores) {
    PqAttnBlock *bl;
    size_t mx;
    int nb = pq_attn_mm_blocks(&bl, &mx, c->pos, c->a0, c->a1, c->b0, c->N, c->NH, c->window, max_rows, max_scores);
    int next = 0, bad = 0;
    size_t big = 0;
    for (int t = 0; t < nb; t++) {
        const PqAttnBlock *b = &bl[t];
        size_t el = (size_t)c->NH * b->nq * b->ld;
        if (b->i0 != next || b->nq < 1 || b->nq > max_rows || (b->nq > 1 && el > max_scores) || b->nAp % 8 ||
            b->ld % 8 || b->nAp < b->nA || b->ld < b->nAp + b->nB || b->B0 + b->nB != b->i0 + b->nq)
            bad++;
        if (el > big) big = el;
        next = b->i0 + b->nq;
    }
    if (bad || next != c->N || big != mx) {
        printf("FAIL %s: %d bad blocks of %d, rows covered %d of %d, max %zu vs %zu\n", c->name, bad, nb, next, c->N,
               big, mx);
        fails++;
    } else
        printf("ok   %s: %d blocks (<= %d rows)\n", c->name, nb, max_rows);
    free(bl);
}

int main(void) {
    pq_rng_seed(&rng, 42);
    // plain: four packed records, one of a single token
    int lens[] = {37, 5, 70, 1}, N = 0;
    int32_t pos[113];
    for (int r = 0; r < 4; r++)
        for (int t = 0; t < lens[r]; t++) pos[N++] = t;
    // two ranges: prompt, chosen (prompt + own), rejected (prompt + own), then a plain record
    enum { P = 37, Cn = 21, R = 26, X = 40, N2 = P + Cn + R + X };
    int32_t pos2[N2], a0[N2], a1[N2], b0[N2];
    for (int i = 0; i < N2; i++) {
        if (i < P + Cn) pos2[i] = i, a0[i] = a1[i] = 0, b0[i] = 0;
        else if (i < P + Cn + R) pos2[i] = i - Cn, a0[i] = 0, a1[i] = P, b0[i] = P + Cn;
        else pos2[i] = i - (P + Cn + R), a0[i] = a1[i] = P + Cn + R, b0[i] = P + Cn + R;
    }
    Case cases[] = {
        {"plain GQA 4/2", N, 4, 2, 16, 0, pos, NULL, NULL, NULL},
        {"plain MHA window 9", N, 3, 3, 8, 9, pos, NULL, NULL, NULL},
        {"plain GQA 6/1 window 30", N, 6, 1, 24, 30, pos, NULL, NULL, NULL},
        {"two ranges GQA 4/2", N2, 4, 2, 16, 0, pos2, a0, a1, b0},
        {"two ranges window 11", N2, 4, 2, 16, 11, pos2, a0, a1, b0},
    };
    int nc = (int)(sizeof cases / sizeof *cases);
    for (int t = 0; t < nc; t++) {
        check_blocks(&cases[t], 512, (size_t)32 << 20);
        check_blocks(&cases[t], 7, 2000);
        run(&cases[t], 4, 0, 0);
        run(&cases[t], 4, 7, 2000); // many blocks: rows split, scores limited
        run(&cases[t], 2, 0, 0);
        run(&cases[t], 2, 16, 5000);
    }
    pq_attn_mm_cpu_free();
    if (fails) printf("%d FAILED\n", fails);
    return fails != 0;
}
