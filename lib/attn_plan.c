// attn_plan.c: the segments of attention's fused calls (see attn_plan.h).
#include "attn_plan.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static void call_alloc(PqAttnCall *c, int cap) {
    memset(c, 0, sizeof *c);
    c->q0 = pq_xmalloc(4 * (size_t)(cap > 0 ? cap : 1) * sizeof(int32_t));
    c->sq = c->q0 + cap, c->k0 = c->sq + cap, c->sk = c->k0 + cap;
}

static void call_add(PqAttnCall *c, int q0, int sq, int k0, int sk) {
    int b = c->B++;
    c->q0[b] = q0, c->sq[b] = sq, c->k0[b] = k0, c->sk[b] = sk;
    if (sq > c->smax_q) c->smax_q = sq;
    if (sk > c->smax_k) c->smax_k = sk;
}

void pq_attn_plan_free(PqAttnPlan *p) {
    free(p->causal.q0);
    free(p->cross.q0);
    free(p->cb);
    memset(p, 0, sizeof *p);
}

static int refuse(PqAttnPlan *p, char *err, size_t errsz, const char *fmt, ...) {
    if (err && errsz) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errsz, fmt, ap);
        va_end(ap);
    }
    pq_attn_plan_free(p);
    return -1;
}

int pq_attn_plan_build(PqAttnPlan *p, const int32_t *pos, const int32_t *a0, const int32_t *a1, const int32_t *b0,
                       int N, int window, char *err, size_t errsz) {
    memset(p, 0, sizeof *p);
    p->N = N;
    call_alloc(&p->causal, N);
    call_alloc(&p->cross, N);
    p->cb = pq_xmalloc(5 * (size_t)(N > 0 ? N : 1) * sizeof(int32_t));
    p->cs = p->cb + N, p->xb = p->cs + N, p->xs = p->xb + N, p->kx = p->xs + N;
    for (int i = 0; i < N; i++) p->xb[i] = -1, p->xs[i] = 0, p->kx[i] = 0;
    // causal segments: runs of rows with one start of their second range [b0, i], beginning at it
    for (int i = 0; i < N;) {
        int s = a0 ? b0[i] : i - pos[i];
        if (s != i) return refuse(p, err, errsz, "row %d's keys start at %d, before its run", i, s);
        int j = i + 1;
        while (j < N && (a0 ? b0[j] : j - pos[j]) == s) j++;
        for (int r = i; r < j; r++) {
            if (window > 0 && pos[r] - pos[i] != r - i)
                return refuse(p, err, errsz, "positions do not count up inside the record at row %d", i);
            p->cb[r] = p->causal.B, p->cs[r] = r - i;
        }
        call_add(&p->causal, i, j - i, i, j - i);
        i = j;
    }
    p->left_bound = window > 0 && window + 1 < p->causal.smax_q ? window + 1 : 0;
    // cross segments: runs of rows with one non-empty first range [a0, a1)
    for (int i = 0; a0 && i < N;) {
        if (a0[i] >= a1[i]) {
            i++;
            continue;
        }
        int j = i + 1;
        while (j < N && a0[j] == a0[i] && a1[j] == a1[i]) j++;
        int k0 = a0[i], nk = a1[i] - a0[i];
        if (k0 < 0 || a1[i] > N) return refuse(p, err, errsz, "row %d's first key range is outside the batch", i);
        int pmax = 0;
        for (int r = i; r < j; r++) {
            if (a1[r] > b0[r]) return refuse(p, err, errsz, "row %d's two key ranges overlap", r);
            if (pos[r] > pmax) pmax = pos[r];
        }
        for (int k = k0; k < k0 + nk; k++) {
            if (window > 0 && pmax - pos[k] > window)
                return refuse(p, err, errsz, "the window hides part of the keys [%d, %d) of rows [%d, %d)", k0,
                              k0 + nk, i, j);
            if (p->kx[k]) return refuse(p, err, errsz, "key %d is in two shared ranges", k);
            p->kx[k] = 1;
        }
        for (int r = i; r < j; r++) p->xb[r] = p->cross.B, p->xs[r] = r - i;
        call_add(&p->cross, i, j - i, k0, nk);
        i = j;
    }
    return 0;
}

int pq_attn_plan_bucket(int s) { return s <= 64 ? 64 : (s + 127) / 128 * 128; }

int pq_attn_plan_sees(const PqAttnPlan *p, int i, int j) {
    const PqAttnCall *c = &p->causal;
    int b = p->cb[i];
    if (j >= c->k0[b] && j <= i && (p->left_bound == 0 || i - j < p->left_bound)) return 1;
    if (p->xb[i] < 0) return 0;
    b = p->xb[i];
    return j >= p->cross.k0[b] && j < p->cross.k0[b] + p->cross.sk[b];
}

void pq_attn_plan_merge(const PqAttnPlan *p, float *out, float *lse, const float *o1, const float *st1,
                        const float *o2, const float *st2, int NH, int HS) {
    for (int i = 0; i < p->N; i++)
        for (int h = 0; h < NH; h++) {
            size_t r = ((size_t)i * NH + h) * HS;
            float l1 = st1[((size_t)p->cb[i] * NH + h) * p->causal.smax_q + p->cs[i]];
            if (p->xb[i] < 0 || !o2) {
                for (int d = 0; d < HS; d++) out[r + d] = o1[r + d];
                lse[(size_t)i * NH + h] = l1;
                continue;
            }
            float l2 = st2[((size_t)p->xb[i] * NH + h) * p->cross.smax_q + p->xs[i]];
            float m = l1 > l2 ? l1 : l2;
            float l = m + logf(expf(l1 - m) + expf(l2 - m));
            float w1 = expf(l1 - l), w2 = expf(l2 - l);
            for (int d = 0; d < HS; d++) out[r + d] = w1 * o1[r + d] + w2 * o2[r + d];
            lse[(size_t)i * NH + h] = l;
        }
}

void pq_attn_plan_spread(const PqAttnPlan *p, float *st1, float *st2, const float *lse, int NH) {
    for (int i = 0; i < p->N; i++)
        for (int h = 0; h < NH; h++) {
            float l = lse[(size_t)i * NH + h];
            st1[((size_t)p->cb[i] * NH + h) * p->causal.smax_q + p->cs[i]] = l;
            if (p->xb[i] >= 0 && st2) st2[((size_t)p->xb[i] * NH + h) * p->cross.smax_q + p->xs[i]] = l;
        }
}

void pq_attn_plan_combine(const PqAttnPlan *p, float *dq, float *dk, float *dv, const float *dq1, const float *dk1,
                          const float *dv1, const float *dq2, const float *dk2, const float *dv2, int NH, int KVH,
                          int HS) {
    size_t qs = (size_t)NH * HS, ks = (size_t)KVH * HS;
    for (int i = 0; i < p->N; i++) {
        int x = p->xb[i] >= 0 && dq2, kx = p->kx[i] && dk2;
        for (size_t e = 0; e < qs; e++) dq[i * qs + e] = dq1[i * qs + e] + (x ? dq2[i * qs + e] : 0.0f);
        for (size_t e = 0; e < ks; e++) {
            dk[i * ks + e] = dk1[i * ks + e] + (kx ? dk2[i * ks + e] : 0.0f);
            dv[i * ks + e] = dv1[i * ks + e] + (kx ? dv2[i * ks + e] : 0.0f);
        }
    }
}
