// test-attn-plan.c: lib/attn_plan.c, the host side of the CUDA backend's
// fused (cuDNN SDPA) attention. (1) The plan's calls let each row see
// exactly the keys ops.h / ops_grad.h's rule gives (packed records, a
// sliding window, attention2's shared prompts), and the plan refuses what
// the calls cannot say. (2) The calls run by a naive plain-C stand-in for
// cuDNN's contract (packed segments, padded statistics, GQA), merged and
// combined by the plan's twins of the CUDA kernels, match ops_cpu.c's
// attention and attention2, forward and backward.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_plan.h"
#include "ops.h"
#include "ops_grad.h"
#include "util.h"

#include "attn_test.h"

// ops.h's rule: does row i see key j?
static int rule(const Case *c, int i, int j) {
    int ra0 = 0, ra1 = 0, rb0 = i - c->pos[i];
    if (c->a0) ra0 = c->a0[i], ra1 = c->a1[i], rb0 = c->b0[i];
    int in = (j >= ra0 && j < ra1) || (j >= rb0 && j <= i);
    return in && (c->window <= 0 || c->pos[i] - c->pos[j] <= c->window);
}

// Key j of segment b visible from its query s: cuDNN's masks (top-left causal, band's left bound).
static int call_sees(int causal, int lb, int s, int t) {
    if (!causal) return 1;
    return t <= s && (lb == 0 || s - t < lb);
}

// The stand-in for one cuDNN call, forward: o rows of the segments, stats padded.
static void call_forward(const PqAttnCall *c, int causal, int lb, float *o, float *st, const float *q, const float *k,
                         const float *v, int NH, int KVH, int HS) {
    float scale = 1.0f / sqrtf((float)HS), *s = pq_xmalloc((size_t)(c->smax_k + 1) * sizeof *s);
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < NH; h++) {
            int kh = h / (NH / KVH);
            for (int r = 0; r < c->sq[b]; r++) {
                const float *qi = q + ((size_t)(c->q0[b] + r) * NH + h) * HS;
                double m = -INFINITY, sum = 0;
                for (int t = 0; t < c->sk[b]; t++) {
                    const float *kj = k + ((size_t)(c->k0[b] + t) * KVH + kh) * HS;
                    double d = 0;
                    for (int e = 0; e < HS; e++) d += (double)qi[e] * kj[e];
                    s[t] = call_sees(causal, lb, r, t) ? (float)(d * scale) : -INFINITY;
                    if (s[t] > m) m = s[t];
                }
                for (int t = 0; t < c->sk[b]; t++) sum += exp(s[t] - m);
                float *oi = o + ((size_t)(c->q0[b] + r) * NH + h) * HS;
                for (int e = 0; e < HS; e++) {
                    double acc = 0;
                    for (int t = 0; t < c->sk[b]; t++)
                        acc += exp(s[t] - m) / sum * v[((size_t)(c->k0[b] + t) * KVH + kh) * HS + e];
                    oi[e] = (float)acc;
                }
                st[((size_t)b * NH + h) * c->smax_q + r] = (float)(m + log(sum));
            }
        }
    free(s);
}

// Its backward from the given (merged) o and stats: dq on the segments' rows, dk, dv on their keys.
static void call_backward(const PqAttnCall *c, int causal, int lb, float *dq, float *dk, float *dv, const float *q,
                          const float *k, const float *v, const float *o, const float *dout, const float *st, int NH,
                          int KVH, int HS) {
    float scale = 1.0f / sqrtf((float)HS);
    for (int b = 0; b < c->B; b++) {
        for (int t = 0; t < c->sk[b]; t++)
            for (int kh = 0; kh < KVH; kh++)
                for (int e = 0; e < HS; e++) {
                    size_t x = ((size_t)(c->k0[b] + t) * KVH + kh) * HS + e;
                    dk[x] = dv[x] = 0;
                }
        for (int h = 0; h < NH; h++) {
            int kh = h / (NH / KVH);
            for (int r = 0; r < c->sq[b]; r++) {
                size_t qi = ((size_t)(c->q0[b] + r) * NH + h) * HS;
                double D = 0;
                for (int e = 0; e < HS; e++) D += (double)dout[qi + e] * o[qi + e];
                float l = st[((size_t)b * NH + h) * c->smax_q + r];
                for (int e = 0; e < HS; e++) dq[qi + e] = 0;
                for (int t = 0; t < c->sk[b]; t++) {
                    if (!call_sees(causal, lb, r, t)) continue;
                    size_t kj = ((size_t)(c->k0[b] + t) * KVH + kh) * HS;
                    double sc = 0, dp = 0;
                    for (int e = 0; e < HS; e++) sc += (double)q[qi + e] * k[kj + e], dp += (double)dout[qi + e] * v[kj + e];
                    double p = exp(sc * scale - l), ds = p * (dp - D) * scale;
                    for (int e = 0; e < HS; e++) {
                        dq[qi + e] += (float)(ds * k[kj + e]);
                        dk[kj + e] += (float)(ds * q[qi + e]);
                        dv[kj + e] += (float)(p * dout[qi + e]);
                    }
                }
            }
        }
    }
}

static void run(const Case *c) {
    char err[200] = "", name[200];
    PqAttnPlan p;
    if (pq_attn_plan_build(&p, c->pos, c->a0, c->a1, c->b0, c->N, c->window, err, sizeof err)) {
        printf("FAIL %s: refused: %s\n", c->name, err);
        fails++;
        return;
    }
    // (1) visibility, every (row, key)
    int bad = 0, bi = 0, bj = 0;
    for (int i = 0; i < c->N; i++)
        for (int j = 0; j < c->N; j++)
            if (pq_attn_plan_sees(&p, i, j) != rule(c, i, j)) {
                if (!bad) bi = i, bj = j;
                bad++;
            }
    if (bad) {
        printf("FAIL %s: %d (row, key) pairs differ from ops.h's rule, first (%d, %d)\n", c->name, bad, bi, bj);
        fails++;
    } else
        printf("ok   %s: visibility of %d rows (%d causal, %d cross segments, left bound %d)\n", c->name, c->N,
               p.causal.B, p.cross.B, p.left_bound);
    // (2) the calls, merged, against ops_cpu.c
    int N = c->N, NH = c->NH, KVH = c->KVH, HS = c->HS;
    size_t nq = (size_t)N * NH * HS, nk = (size_t)N * KVH * HS, nl = (size_t)N * NH;
    float *q = rnd(nq, 2), *k = rnd(nk, 2), *v = rnd(nk, 1), *dout = rnd(nq, 1);
    float *out = nans(nq), *lse = nans(nl), *dq = nans(nq), *dk = nans(nk), *dv = nans(nk);
    ref_attention(c, q, k, v, dout, out, lse, dq, dk, dv);
    size_t ns1 = (size_t)p.causal.B * NH * p.causal.smax_q, ns2 = (size_t)p.cross.B * NH * p.cross.smax_q;
    float *o1 = nans(nq), *o2 = p.cross.B ? nans(nq) : NULL, *st1 = nans(ns1), *st2 = p.cross.B ? nans(ns2) : NULL;
    float *mout = nans(nq), *mlse = nans(nl);
    call_forward(&p.causal, 1, p.left_bound, o1, st1, q, k, v, NH, KVH, HS);
    if (o2) call_forward(&p.cross, 0, 0, o2, st2, q, k, v, NH, KVH, HS);
    pq_attn_plan_merge(&p, mout, mlse, o1, st1, o2, st2, NH, HS);
    // the backward from the reference forward, as the trainer passes it
    float *dq1 = nans(nq), *dk1 = nans(nk), *dv1 = nans(nk), *dq2 = NULL, *dk2 = NULL, *dv2 = NULL;
    float *mdq = nans(nq), *mdk = nans(nk), *mdv = nans(nk);
    pq_attn_plan_spread(&p, st1, st2, lse, NH);
    call_backward(&p.causal, 1, p.left_bound, dq1, dk1, dv1, q, k, v, out, dout, st1, NH, KVH, HS);
    if (p.cross.B) {
        dq2 = nans(nq), dk2 = nans(nk), dv2 = nans(nk);
        call_backward(&p.cross, 0, 0, dq2, dk2, dv2, q, k, v, out, dout, st2, NH, KVH, HS);
    }
    pq_attn_plan_combine(&p, mdq, mdk, mdv, dq1, dk1, dv1, dq2, dk2, dv2, NH, KVH, HS);
    const char *what[] = {"out", "lse", "dq", "dk", "dv"};
    const float *want[] = {out, lse, dq, dk, dv}, *got[] = {mout, mlse, mdq, mdk, mdv};
    size_t n[] = {nq, nl, nq, nk, nk};
    for (int t = 0; t < 5; t++) {
        snprintf(name, sizeof name, "%s: calls merged, %s", c->name, what[t]);
        cmp(name, want[t], got[t], n[t], 2e-5);
    }
    float *f[] = {q, k, v, dout, out, lse, dq, dk, dv, o1, o2, st1, st2, mout, mlse, dq1, dk1, dv1, dq2, dk2, dv2,
                  mdq, mdk, mdv};
    for (size_t i = 0; i < sizeof f / sizeof *f; i++) free(f[i]);
    pq_attn_plan_free(&p);
}

static void refused(const char *name, const int32_t *pos, const int32_t *a0, const int32_t *a1, const int32_t *b0,
                    int N, int window) {
    PqAttnPlan p;
    char err[200] = "";
    if (!pq_attn_plan_build(&p, pos, a0, a1, b0, N, window, err, sizeof err)) {
        printf("FAIL %s: planned, should be refused\n", name);
        fails++;
        pq_attn_plan_free(&p);
    } else if (!*err) {
        printf("FAIL %s: refused without a reason\n", name);
        fails++;
    } else
        printf("ok   %s refused: %s\n", name, err);
}

int main(void) {
    pq_rng_seed(&rng, 7);
    // plain: packed records, one of a single token
    int lens[] = {37, 5, 70, 1}, N = 0;
    int32_t pos[113];
    for (int r = 0; r < 4; r++)
        for (int t = 0; t < lens[r]; t++) pos[N++] = t;
    // two ranges as pq-dpo packs a pair: prompt, chosen (prompt + own), rejected (prompt + own); twice, then
    // a plain record
    enum { P = 23, Cn = 11, R = 15, X = 60, PAIR = P + Cn + R, N2 = 2 * PAIR + X };
    int32_t pos2[N2], a0[N2], a1[N2], b0[N2];
    for (int i = 0; i < N2; i++) {
        int base = i < PAIR ? 0 : i < 2 * PAIR ? PAIR : 2 * PAIR, r = i - base;
        if (base == 2 * PAIR) pos2[i] = r, a0[i] = a1[i] = b0[i] = base;
        else if (r < P + Cn) pos2[i] = r, a0[i] = a1[i] = 0, b0[i] = base;
        else pos2[i] = r - Cn, a0[i] = base, a1[i] = base + P, b0[i] = base + P + Cn;
    }
    Case cases[] = {
        {"plain GQA 4/2", N, 4, 2, 16, 0, pos, NULL, NULL, NULL},
        {"plain MHA window 9", N, 3, 3, 8, 9, pos, NULL, NULL, NULL},
        {"plain GQA 6/1 window 30", N, 6, 1, 24, 30, pos, NULL, NULL, NULL},
        {"plain window wider than every record", N, 4, 2, 8, 500, pos, NULL, NULL, NULL},
        {"two ranges GQA 4/2", N2, 4, 2, 16, 0, pos2, a0, a1, b0},
        {"two ranges window 40 (hides none of a prompt, part of the last record)", N2, 4, 1, 8, 40, pos2, a0, a1, b0},
        {"two ranges MHA 2/2 window 40", N2, 2, 2, 8, 40, pos2, a0, a1, b0},
    };
    for (size_t t = 0; t < sizeof cases / sizeof *cases; t++) run(&cases[t]);
    // what the calls cannot say
    refused("two ranges, a window that hides part of a prompt", pos2, a0, a1, b0, N2, 12);
    // positions that jump inside a run of the second range: the band would count rows, not positions
    int32_t skip[6] = {0, 1, 3, 4, 5, 6}, z[6] = {0, 0, 0, 0, 0, 0};
    refused("a window over positions that do not count up", skip, z, z, z, 6, 2);
    int32_t ov0[4] = {0, 0, 0, 0}, ov1[4] = {0, 0, 3, 3}, ovb[4] = {0, 0, 2, 2}, ovp[4] = {0, 1, 2, 3};
    refused("two ranges that overlap", ovp, ov0, ov1, ovb, 4, 0);
    if (fails) printf("%d FAILED\n", fails);
    return fails != 0;
}
