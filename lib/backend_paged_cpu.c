// backend_paged_cpu.c: binds the paged generation operations of ops_paged.h
// to their CPU implementations. Left out of CUDA=1 builds (lib/cuda/paged.cu).
// The attention is this file's own (paged_attn): the oracle's arithmetic
// (ops_paged_cpu.c) keeps the GPU kernel's splits in scalar loops, for
// parity-paged to hold the kernels to; the engine needs the speed of the flat
// cache's attention, which paged_attn shares.
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "act_cpu.h"
#include "exp_fast.h"
#include "ops_paged.h"
#include "util.h"

// Query rows per block of paged_attn (as ops_gen_cpu.c's attention).
#define QBLK 64

// Keys [j0, j1) of one KV head (kh) of a sequence (its table tab) gathered from the pool into f32 rows: K, V (j1 -
// j0, HS).
static void gather(float *K, float *V, const void *kp, const void *vp, PqDtype dt, const int32_t *tab, int j0, int j1,
                   int kh, int KVH, int HS, int BT) {
    size_t kd = (size_t)KVH * HS;
    for (int j = j0; j < j1; j++) {
        size_t r = ((size_t)tab[j / BT] * BT + j % BT) * kd + (size_t)kh * HS;
        float *kj = K + (size_t)(j - j0) * HS, *vj = V + (size_t)(j - j0) * HS;
        if (dt == PQ_BF16) {
            const uint16_t *ks = (const uint16_t *)kp + r, *vs = (const uint16_t *)vp + r;
            for (int d = 0; d < HS; d++) kj[d] = pq_bf16_to_f32(ks[d]), vj[d] = pq_bf16_to_f32(vs[d]);
        } else {
            memcpy(kj, (const float *)kp + r, (size_t)HS * sizeof *kj);
            memcpy(vj, (const float *)vp + r, (size_t)HS * sizeof *vj);
        }
    }
}

// A job of paged_attn: a block of up to QBLK consecutive rows of one segment (nq > 0: rows i0 ..), or a group of
// single rows whose sequences share their first sh positions' blocks (nq = -R: the R rows at members[i0 ..]).
typedef struct {
    int i0, nq, sh;
} Job;

// qsort_r's order of single rows: by their sequence's first block, then by row.
typedef struct {
    const int32_t *tables;
    int maxblk;
} FirstBlock;
static int by_first_block(const void *a, const void *b, void *ctx) {
    const FirstBlock *f = ctx;
    int x = *(const int *)a, y = *(const int *)b;
    int32_t bx = f->tables[(size_t)x * f->maxblk], by = f->tables[(size_t)y * f->maxblk];
    return bx != by ? (bx < by ? -1 : 1) : (x > y) - (x < y);
}

// out (N,NH,HS) = paged_attention_forward's result for rows q (N,NH,HS), computed as pq_cpu_attention_kv_forward
// computes the flat cache's: per block of up to QBLK consecutive rows of one segment and per KV head, the keys and
// values the block sees gathered from their blocks into f32 rows (a bf16 pool widened once a block), then
// S = scale Q K^T, a masked softmax, O = P V through BLAS. Single rows (decoding) whose sequences share leading
// blocks (the samples of a prompt, prompts the prefix cache joined) are grouped as pq_cpu_attention_kv_shared_forward
// groups a flat cache's: per group and KV head the shared keys are gathered once and every row's G query heads meet
// them in one product, each row's own keys in a small product of its own, one softmax over both. seg NULL: every row
// a segment of its own.
static void paged_attn(float *out, const float *q, const void *kp, const void *vp, PqDtype dt, const int32_t *tables,
                       int maxblk, const int32_t *len, const int32_t *seg, int nseg, int N, int NH, int KVH, int HS,
                       int BT, int window) {
    Job *job = pq_xmalloc((size_t)N * sizeof *job);
    int *single = pq_xmalloc((size_t)N * sizeof *single), *members = pq_xmalloc((size_t)N * sizeof *members);
    int njob = 0, ns = 0, nm = 0, G = NH / KVH;
    size_t maxk = 0, maxs = 0, maxq = 0; // the most keys a job gathers, score and query elements it holds
    for (int s = 0; s < (seg ? nseg : N); s++) {
        int a = seg ? seg[s] : s, e = seg ? seg[s + 1] : s + 1;
        if (e - a == 1 && (window <= 0 || len[a] - 1 <= window)) { // (a window that cuts in shares nothing)
            single[ns++] = a;
            continue;
        }
        for (int i = a; i < e; i += QBLK) {
            int n = e - i < QBLK ? e - i : QBLK, p0 = len[i] - 1, j0 = window > 0 && p0 > window ? p0 - window : 0;
            size_t nk = (size_t)(len[i + n - 1] - j0);
            job[njob++] = (Job){i, n, 0};
            size_t sn = (size_t)(n > G ? n : G) * nk; // (one row: its G heads are the product's rows)
            maxk = nk > maxk ? nk : maxk, maxs = sn > maxs ? sn : maxs;
        }
    }
    FirstBlock fb = {tables, maxblk};
    qsort_r(single, (size_t)ns, sizeof *single, by_first_block, &fb);
    for (int a = 0; a < ns;) {
        const int32_t *t0 = tables + (size_t)single[a] * maxblk;
        int e = a + 1, minlen = len[single[a]], maxlen = minlen;
        while (e < ns && tables[(size_t)single[e] * maxblk] == t0[0]) {
            int l = len[single[e++]];
            minlen = l < minlen ? l : minlen, maxlen = l > maxlen ? l : maxlen;
        }
        int nb = minlen / BT; // the whole blocks every member sees ...
        for (int r = a + 1; r < e; r++)
            for (int k = 0; k < nb; k++)
                if (tables[(size_t)single[r] * maxblk + k] != t0[k]) nb = k; // ... that all of them hold
        if (e - a > 1 && nb > 0) {
            int R = e - a, sh = nb * BT;
            job[njob++] = (Job){nm, -R, sh};
            memcpy(members + nm, single + a, (size_t)R * sizeof *members);
            nm += R;
            size_t cols = (size_t)(maxlen - sh), rows = (size_t)R * G;
            maxk = (size_t)sh > maxk ? (size_t)sh : maxk, maxk = cols > maxk ? cols : maxk;
            maxs = rows * (sh + cols) > maxs ? rows * (sh + cols) : maxs;
            maxq = rows * HS > maxq ? rows * HS : maxq;
        } else
            for (int r = a; r < e; r++) {
                size_t nk = (size_t)len[single[r]];
                job[njob++] = (Job){single[r], 1, 0};
                maxk = nk > maxk ? nk : maxk, maxs = (size_t)G * nk > maxs ? (size_t)G * nk : maxs;
            }
        a = e;
    }
    size_t qs = (size_t)NH * HS;
    float scale = 1.0f / sqrtf((float)HS);
#pragma omp parallel num_threads(pq_cpu_threads())
    {
        float *K = pq_xmalloc((maxk ? maxk : 1) * HS * sizeof *K), *V = pq_xmalloc((maxk ? maxk : 1) * HS * sizeof *V);
        float *K2 = NULL, *V2 = NULL, *S = pq_xmalloc((maxs ? maxs : 1) * sizeof *S);
        float *Q = maxq ? pq_xmalloc(2 * maxq * sizeof *Q) : NULL, *O = Q ? Q + maxq : NULL;
        if (maxq) K2 = pq_xmalloc(maxk * HS * sizeof *K2), V2 = pq_xmalloc(maxk * HS * sizeof *V2);
#pragma omp for schedule(dynamic, 1)
        for (long w = 0; w < (long)njob * KVH; w++) {
            Job jb = job[w / KVH];
            int kh = (int)(w % KVH);
            if (jb.nq > 0) {
                int i0 = jb.i0, nq = jb.nq, p0 = len[i0] - 1, j0 = window > 0 && p0 > window ? p0 - window : 0;
                int nk = len[i0 + nq - 1] - j0;
                gather(K, V, kp, vp, dt, tables + (size_t)i0 * maxblk, j0, j0 + nk, kh, KVH, HS, BT);
                // a single row: its G heads are the rows of one product (q's heads of kh lie together); else a
                // head at a time over the block's rows
                int one = nq == 1, heads = one ? 1 : G, rows = one ? G : nq, ld = one ? HS : (int)qs;
                for (int g = 0; g < heads; g++) {
                    size_t at = (size_t)i0 * qs + (size_t)(kh * G + g) * HS;
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, nk, HS, scale, q + at, ld, K, HS, 0.0f,
                                S, nk);
                    for (int a = 0; a < rows; a++) {
                        int p = len[i0 + (one ? 0 : a)] - 1, lo = window > 0 && p > window ? p - window : 0;
                        pq_softmax_span(S + (size_t)a * nk, lo - j0, p - j0, nk);
                    }
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, HS, nk, 1.0f, S, nk, V, HS, 0.0f,
                                out + at, ld);
                }
                continue;
            }
            // a group: S (R G, sh + cols) = scale Q K^T, the shared keys in the first sh columns, row r's own keys
            // [sh, len) after them
            int R = -jb.nq, sh = jb.sh, cols = 0;
            const int *mem = members + jb.i0;
            for (int r = 0; r < R; r++) cols = len[mem[r]] - sh > cols ? len[mem[r]] - sh : cols;
            int ld = sh + cols, GH = G * HS;
            for (int r = 0; r < R; r++) memcpy(Q + (size_t)r * GH, q + (size_t)mem[r] * qs + (size_t)kh * GH, GH * 4);
            gather(K, V, kp, vp, dt, tables + (size_t)mem[0] * maxblk, 0, sh, kh, KVH, HS, BT);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R * G, sh, HS, scale, Q, HS, K, HS, 0.0f, S, ld);
            for (int r = 0; r < R; r++) {
                int n = len[mem[r]] - sh;
                float *Sr = S + (size_t)r * G * ld, *Or = O + (size_t)r * GH;
                if (n > 0) {
                    gather(K2, V2, kp, vp, dt, tables + (size_t)mem[r] * maxblk, sh, sh + n, kh, KVH, HS, BT);
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, G, n, HS, scale, Q + (size_t)r * GH, HS, K2,
                                HS, 0.0f, Sr + sh, ld);
                }
                for (int g = 0; g < G; g++) pq_softmax_span(Sr + (size_t)g * ld, 0, sh + n - 1, ld);
                if (n > 0)
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, G, HS, n, 1.0f, Sr + sh, ld, V2, HS, 0.0f,
                                Or, HS);
                else memset(Or, 0, (size_t)GH * sizeof *Or);
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R * G, HS, sh, 1.0f, S, ld, V, HS, 1.0f, O, HS);
            for (int r = 0; r < R; r++) memcpy(out + (size_t)mem[r] * qs + (size_t)kh * GH, O + (size_t)r * GH, GH * 4);
        }
        free(K), free(V), free(K2), free(V2), free(S), free(Q);
    }
    free(job), free(single), free(members);
}

void pq_paged_append(void *kp, void *vp, PqDtype dt, const float *k, const float *v, const int32_t *slot, int N,
                     int KVH, int HS) {
    if (!pq_act_bf16()) {
        pq_cpu_paged_append(kp, vp, dt, k, v, slot, N, KVH, HS);
        return;
    }
    size_t n = (size_t)N * KVH * HS;
    pq_cpu_paged_append(kp, vp, dt, pq_act_widen(0, k, n), pq_act_widen(1, v, n), slot, N, KVH, HS);
}
// (the wrapped ops: each rounds its outputs with bf16 activations)
void pq_paged_rope_append(float *q, float *k, const float *v, const int32_t *pos, const float *inv_freq, void *kp,
                          void *vp, PqDtype dt, const int32_t *slot, int N, int NH, int KVH, int HS) {
    pq_rope_qk_forward(q, k, pos, inv_freq, N, NH, KVH, HS);
    pq_paged_append(kp, vp, dt, k, v, slot, N, KVH, HS);
}
void pq_paged_copy_blocks(void *kp, void *vp, PqDtype dt, const PqKvCopy *copies, int ncopy, int L, int NB, int BT,
                          int KVH, int HS) {
    pq_cpu_paged_copy_blocks(kp, vp, dt, copies, ncopy, L, NB, BT, KVH, HS);
}
void pq_paged_attention_forward(float *out, const float *q, const void *kp, const void *vp, PqDtype dt,
                                const int32_t *tables, int maxblk, const int32_t *len, int N, int NH, int KVH, int HS,
                                int BT, int window, int max_len, float *work) {
    (void)max_len, (void)work; // (the oracle's splits)
    if (!pq_act_bf16()) {
        paged_attn(out, q, kp, vp, dt, tables, maxblk, len, NULL, 0, N, NH, KVH, HS, BT, window);
        return;
    }
    size_t n = (size_t)N * NH * HS;
    float *o = pq_act_scratch(1, n);
    paged_attn(o, pq_act_widen(0, q, n), kp, vp, dt, tables, maxblk, len, NULL, 0, N, NH, KVH, HS, BT, window);
    pq_act_narrow(out, o, n);
}
void pq_paged_prefill_forward(float *out, const float *q, const void *kp, const void *vp, PqDtype dt,
                              const int32_t *tables, int maxblk, const int32_t *len, const int32_t *seg, int nseg,
                              int max_q, int N, int NH, int KVH, int HS, int BT, int NB, int window, int max_len,
                              float *work) {
    (void)work;
    pq_cpu_paged_check_segments(tables, maxblk, len, seg, nseg, max_q, N, BT, NB, max_len);
    if (!pq_act_bf16()) {
        paged_attn(out, q, kp, vp, dt, tables, maxblk, len, seg, nseg, N, NH, KVH, HS, BT, window);
        return;
    }
    size_t n = (size_t)N * NH * HS;
    float *o = pq_act_scratch(1, n);
    paged_attn(o, pq_act_widen(0, q, n), kp, vp, dt, tables, maxblk, len, seg, nseg, N, NH, KVH, HS, BT, window);
    pq_act_narrow(out, o, n);
}
void pq_sample(int32_t *ids, const float *logits, const PqSampleRow *rows, int N, int V) {
    pq_cpu_sample(ids, logits, rows, N, V);
}
void pq_mask_logits(float *logits, const uint32_t *bits, const int32_t *rows, int n, int V) {
    pq_cpu_mask_logits(logits, bits, rows, n, V);
}
void pq_row_lse(float *lse, const float *logits, int N, int V) { pq_cpu_row_lse(lse, logits, N, V); }
void pq_token_logp(float *lp, const float *logits, const int32_t *ids, const float *lse, int N, int V) {
    pq_cpu_token_logp(lp, logits, ids, lse, N, V);
}
