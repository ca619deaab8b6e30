// ops_grad_cpu.c: plain-C (OpenMP + OpenBLAS) backward operations of
// ops_grad.h, the oracle of the training path. Shapes as in ops_grad.h.
#include "ops_grad.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

// dout (N,C), inp (N,C), weight (C), rstd (N) -> dinp (N,C) +=
// y = x * rstd * w  =>  dx = rstd * (w*dy) - x * rstd^3 / C * sum(w*dy*x)
void pq_cpu_rmsnorm_backward(float *dinp, const float *dout, const float *inp, const float *weight,
                             const float *rstd, int N, int C) {
#pragma omp parallel for num_threads(pq_cpu_threads()) schedule(static)
    for (int i = 0; i < N; i++) {
        const float *dy = dout + (size_t)i * C, *x = inp + (size_t)i * C;
        float *dx = dinp + (size_t)i * C;
        double dot = 0;
        for (int c = 0; c < C; c++) dot += (double)weight[c] * dy[c] * x[c];
        float r = rstd[i];
        float k = (float)(dot * r * r * r / C);
        for (int c = 0; c < C; c++) dx[c] += r * weight[c] * dy[c] - x[c] * k;
    }
}

// C (M,N) = alpha op(A) op(B) + beta C, row-major, split over the threads
// by blocks of rows of C (or of columns when M is small); each block is a
// single-threaded sgemm (the backend keeps OpenBLAS on one thread).
static void psgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                   float beta, float *C, int ldc) {
    int nt = pq_cpu_threads();
    CBLAS_TRANSPOSE TA = ta ? CblasTrans : CblasNoTrans, TB = tb ? CblasTrans : CblasNoTrans;
    if (nt <= 1 || (size_t)M * N * K < 32768) {
        cblas_sgemm(CblasRowMajor, TA, TB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    int byrow = M >= N || M >= 8 * nt;
    int D = byrow ? M : N, blk = (D + nt - 1) / nt;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int t = 0; t < nt; t++) {
        int d0 = t * blk, n = D - d0 < blk ? D - d0 : blk;
        if (n <= 0) continue;
        if (byrow)
            cblas_sgemm(CblasRowMajor, TA, TB, n, N, K, alpha, ta ? A + d0 : A + (size_t)d0 * lda, lda, B, ldb, beta,
                        C + (size_t)d0 * ldc, ldc);
        else
            cblas_sgemm(CblasRowMajor, TA, TB, M, n, K, alpha, A, lda, tb ? B + (size_t)d0 * ldb : B + d0, ldb, beta,
                        C + d0, ldc);
    }
}

// Rows [r0, r0+n) of w as f32 into buf (n, cols).
static void weight_rows(const PqWeight *w, int r0, int n, float *buf) {
    if (w->dtype == PQ_F32) {
        memcpy(buf, (const float *)w->data + (size_t)r0 * w->cols, (size_t)n * w->cols * sizeof(float));
        return;
    }
#pragma omp parallel for num_threads(pq_cpu_threads()) schedule(static)
    for (int i = 0; i < n; i++) pq_weight_row(w, r0 + i, buf + (size_t)i * w->cols);
}

enum { ROW_CHUNK = 512 };

// dout (N,OC), weight (OC,C) -> dinp (N,C) += dout weight
void pq_cpu_linear_group_backward(float *dinp, const float *const *dout, const PqWeight *w, int n, int N, int C) {
    for (int t = 0; t < n; t++) pq_cpu_linear_backward(dinp, dout[t], &w[t], N, C, w[t].rows);
}

void pq_cpu_linear_backward(float *dinp, const float *dout, const PqWeight *weight, int N, int C, int OC) {
    if (pq_cpu_bf16_linear_backward(dinp, dout, weight, N, C, OC) == 0) return;
    if (weight->dtype == PQ_F32) {
        psgemm(0, 0, N, C, OC, 1.0f, dout, OC, weight->data, C, 1.0f, dinp, C);
        return;
    }
    // bf16/f16: convert a chunk of output rows at a time, never the whole matrix
    float *buf = pq_xmalloc((size_t)ROW_CHUNK * C * sizeof(float));
    for (int r0 = 0; r0 < OC; r0 += ROW_CHUNK) {
        int n = OC - r0 < ROW_CHUNK ? OC - r0 : ROW_CHUNK;
        weight_rows(weight, r0, n, buf);
        psgemm(0, 0, N, C, n, 1.0f, dout + r0, OC, buf, C, 1.0f, dinp, C);
    }
    free(buf);
}

// out = base + scale * xa B^T, xa = inp A^T:
//   dB (OC,r) += scale * dout^T xa;  dxa (N,r) = scale * dout B;
//   dA (r,C) += dxa^T inp;  dinp (N,C) += dxa A
void pq_cpu_lora_backward(float *dinp, float *dA, float *dB, float *dxa, const float *dout, const float *inp,
                          const float *xa, const float *A, const float *B, float scale, int N, int C, int OC,
                          int r) {
    pq_cpu_lora_up_backward(dB, dxa, dout, xa, B, scale, N, OC, r);
    psgemm(1, 0, r, C, N, 1.0f, dxa, r, inp, C, 1.0f, dA, C);
    if (dinp) psgemm(0, 0, N, C, r, 1.0f, dxa, r, A, C, 1.0f, dinp, C);
}

// Forward: (x1, x2) = (x[i], x[i+HS/2]) -> (x1 cos - x2 sin, x2 cos + x1 sin);
// backward rotates the gradient by the opposite angle.
void pq_cpu_rope_backward(float *dx, const int32_t *pos, const float *inv_freq, int N, int NH, int HS) {
    int half = HS / 2;
#pragma omp parallel for num_threads(pq_cpu_threads()) schedule(static)
    for (int i = 0; i < N; i++) {
        for (int f = 0; f < half; f++) {
            float ang = (float)pos[i] * inv_freq[f];
            float c = cosf(ang), s = sinf(ang);
            for (int h = 0; h < NH; h++) {
                float *x = dx + ((size_t)i * NH + h) * HS;
                float d1 = x[f], d2 = x[f + half];
                x[f] = d1 * c + d2 * s;
                x[f + half] = d2 * c - d1 * s;
            }
        }
    }
}

// Blocks of up to QB query rows of one record, per head, as the forward
// does: with the keys [j0, i1) the block can see (record start, sliding
// window: key j visible from row i when i - window <= j <= i),
//   S = scale Q K^T, P = exp(S - lse) (masked), dP = dO V^T,
//   dS = scale P (dP - rowsum(dO * O)), dQ = dS K, dK += dS^T Q, dV += P^T dO.
// Work items (block, head) run in parallel; each thread accumulates dK and
// dV in its own (N,KVH,HS) buffers, summed at the end.
enum { QB = 64 };
void pq_cpu_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                               const float *v, const float *out, const float *lse, const int32_t *pos, int N,
                               int NH, int KVH, int HS, int window) {
    const float scale = 1.0f / sqrtf((float)HS);
    int G = NH / KVH, nt = pq_cpu_threads();
    size_t qs = (size_t)NH * HS, ks = (size_t)KVH * HS, kn = (size_t)N * ks;
    int *blk = pq_xmalloc((size_t)(N + 1) * sizeof *blk);
    int nb = 0;
    for (int i = 0; i < N;) {
        int rs = i - pos[i], j = i + 1;
        while (j < N && j - i < QB && j - pos[j] == rs) j++;
        blk[nb++] = i;
        i = j;
    }
    blk[nb] = N;
    float *acc = pq_xcalloc((size_t)nt * kn * 2, sizeof(float)); // per thread: dK (N,KVH,HS), dV
#pragma omp parallel num_threads(nt)
    {
        float *dkt = acc + (size_t)omp_get_thread_num() * kn * 2, *dvt = dkt + kn;
        float *S = NULL, *dP = NULL, *Dr = pq_xmalloc(QB * sizeof(float));
        size_t cap = 0;
#pragma omp for schedule(static, 1)
        for (long w = 0; w < (long)nb * NH; w++) {
            int b = (int)(w / NH), h = (int)(w % NH), kh = h / G;
            int i0 = blk[b], i1 = blk[b + 1], rs = i0 - pos[i0], j0 = rs;
            if (window > 0 && i0 - window > j0) j0 = i0 - window;
            int nq = i1 - i0, nk = i1 - j0;
            if ((size_t)nq * nk > cap) {
                cap = (size_t)nq * nk;
                free(S);
                free(dP);
                S = pq_xmalloc(cap * sizeof(float));
                dP = pq_xmalloc(cap * sizeof(float));
            }
            const float *Q = q + (size_t)i0 * qs + (size_t)h * HS, *dO = dout + (size_t)i0 * qs + (size_t)h * HS;
            const float *K = k + (size_t)j0 * ks + (size_t)kh * HS, *V = v + (size_t)j0 * ks + (size_t)kh * HS;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, HS, scale, Q, (int)qs, K, (int)ks, 0.0f, S, nk);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, HS, 1.0f, dO, (int)qs, V, (int)ks, 0.0f, dP,
                        nk);
            for (int a = 0; a < nq; a++) {
                int i = i0 + a, lo = rs;
                if (window > 0 && i - window > lo) lo = i - window;
                const float *o = out + (size_t)i * qs + (size_t)h * HS, *g = dO + (size_t)a * qs;
                float D = 0;
                for (int d = 0; d < HS; d++) D += g[d] * o[d];
                Dr[a] = D;
                float m = lse[(size_t)i * NH + h];
                float *sr = S + (size_t)a * nk, *pr = dP + (size_t)a * nk;
                int c0 = lo - j0, c1 = i - j0;
                for (int c = 0; c < nk; c++) {
                    if (c < c0 || c > c1) {
                        sr[c] = 0.0f; // P
                        pr[c] = 0.0f; // dS
                    } else {
                        float pv = expf(sr[c] - m);
                        sr[c] = pv;
                        pr[c] = pv * (pr[c] - D) * scale;
                    }
                }
            }
            // dQ (nq,HS) = dS K;  dK (nk,HS) += dS^T Q;  dV (nk,HS) += P^T dO
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, HS, nk, 1.0f, dP, nk, K, (int)ks, 0.0f,
                        dq + (size_t)i0 * qs + (size_t)h * HS, (int)qs);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, HS, nq, 1.0f, dP, nk, Q, (int)qs, 1.0f,
                        dkt + (size_t)j0 * ks + (size_t)kh * HS, (int)ks);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, HS, nq, 1.0f, S, nk, dO, (int)qs, 1.0f,
                        dvt + (size_t)j0 * ks + (size_t)kh * HS, (int)ks);
        }
        free(S);
        free(dP);
        free(Dr);
    }
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t x = 0; x < kn; x++) {
        float a = 0, c = 0;
        for (int t = 0; t < nt; t++) a += acc[(size_t)t * kn * 2 + x], c += acc[(size_t)t * kn * 2 + kn + x];
        dk[x] = a;
        dv[x] = c;
    }
    free(acc);
    free(blk);
}

// ---- attention over two key ranges (a shared prompt + the token's own segment) ----

// Query blocks: runs of up to QB rows with the same (a0, a1, b0); per block
// the visible key ranges [A0, a1) and [B0, i1), trimmed by the window as
// seen from the block's first row (rows are masked one by one after).
typedef struct Att2Blk {
    int i0, i1, A0, A1, B0;
} Att2Blk;

static Att2Blk *att2_blocks(const int32_t *pos, const int32_t *a0, const int32_t *a1, const int32_t *b0, int N,
                            int window, int *nb) {
    Att2Blk *bl = pq_xmalloc((size_t)(N ? N : 1) * sizeof *bl);
    int n = 0;
    for (int i = 0; i < N;) {
        int j = i + 1;
        while (j < N && j - i < QB && a0[j] == a0[i] && a1[j] == a1[i] && b0[j] == b0[i]) j++;
        Att2Blk b = {i, j, a0[i], a1[i], b0[i]};
        if (window > 0) {
            while (b.A0 < b.A1 && pos[i] - pos[b.A0] > window) b.A0++;
            while (b.B0 < i && pos[i] - pos[b.B0] > window) b.B0++;
        }
        bl[n++] = b;
        i = j;
    }
    *nb = n;
    return bl;
}

// Is key column c of block b visible from row i?
static inline int att2_vis(const Att2Blk *b, const int32_t *pos, int i, int c, int window) {
    int nA = b->A1 - b->A0, j = c < nA ? b->A0 + c : b->B0 + (c - nA);
    if (c >= nA && j > i) return 0;
    return window <= 0 || pos[i] - pos[j] <= window;
}

// S (nq, nA+nB) = scale Q [K_A; K_B]^T
static void att2_scores(float *S, const Att2Blk *b, const float *Q, const float *k, int kh, int nq, int HS,
                        size_t qs, size_t ks, float alpha) {
    int nA = b->A1 - b->A0, nB = b->i1 - b->B0, nk = nA + nB;
    if (nA)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nA, HS, alpha, Q, (int)qs,
                    k + (size_t)b->A0 * ks + (size_t)kh * HS, (int)ks, 0.0f, S, nk);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nB, HS, alpha, Q, (int)qs,
                k + (size_t)b->B0 * ks + (size_t)kh * HS, (int)ks, 0.0f, S + nA, nk);
}

void pq_cpu_attention2_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                               const int32_t *pos, const int32_t *a0, const int32_t *a1, const int32_t *b0, int N,
                               int NH, int KVH, int HS, int window) {
    const float scale = 1.0f / sqrtf((float)HS);
    int G = NH / KVH, nb;
    size_t qs = (size_t)NH * HS, ks = (size_t)KVH * HS;
    Att2Blk *bl = att2_blocks(pos, a0, a1, b0, N, window, &nb);
#pragma omp parallel num_threads(pq_cpu_threads())
    {
        float *S = NULL;
        size_t cap = 0;
#pragma omp for schedule(dynamic, 1)
        for (long w = 0; w < (long)nb * NH; w++) {
            const Att2Blk *b = &bl[w / NH];
            int h = (int)(w % NH), kh = h / G, nq = b->i1 - b->i0;
            int nA = b->A1 - b->A0, nB = b->i1 - b->B0, nk = nA + nB;
            if ((size_t)nq * nk > cap) {
                free(S);
                S = pq_xmalloc((cap = (size_t)nq * nk) * sizeof(float));
            }
            const float *Q = q + (size_t)b->i0 * qs + (size_t)h * HS;
            att2_scores(S, b, Q, k, kh, nq, HS, qs, ks, scale);
            for (int a = 0; a < nq; a++) {
                int i = b->i0 + a;
                float *s = S + (size_t)a * nk, m = -INFINITY;
                for (int c = 0; c < nk; c++)
                    if (att2_vis(b, pos, i, c, window) && s[c] > m) m = s[c];
                double sum = 0;
                for (int c = 0; c < nk; c++) {
                    if (att2_vis(b, pos, i, c, window)) {
                        s[c] = expf(s[c] - m);
                        sum += s[c];
                    } else
                        s[c] = 0.0f;
                }
                float inv = (float)(1.0 / sum);
                for (int c = 0; c < nk; c++) s[c] *= inv;
                lse[(size_t)i * NH + h] = m + (float)log(sum);
            }
            float *O = out + (size_t)b->i0 * qs + (size_t)h * HS;
            if (nA)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, HS, nA, 1.0f, S, nk,
                            v + (size_t)b->A0 * ks + (size_t)kh * HS, (int)ks, 0.0f, O, (int)qs);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, HS, nB, 1.0f, S + nA, nk,
                        v + (size_t)b->B0 * ks + (size_t)kh * HS, (int)ks, nA ? 1.0f : 0.0f, O, (int)qs);
        }
        free(S);
    }
    free(bl);
}

void pq_cpu_attention2_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                                const float *v, const float *out, const float *lse, const int32_t *pos,
                                const int32_t *a0, const int32_t *a1, const int32_t *b0, int N, int NH, int KVH,
                                int HS, int window) {
    const float scale = 1.0f / sqrtf((float)HS);
    int G = NH / KVH, nt = pq_cpu_threads(), nb;
    size_t qs = (size_t)NH * HS, ks = (size_t)KVH * HS, kn = (size_t)N * ks;
    Att2Blk *bl = att2_blocks(pos, a0, a1, b0, N, window, &nb);
    float *acc = pq_xcalloc((size_t)nt * kn * 2, sizeof(float)); // per thread: dK (N,KVH,HS), dV
#pragma omp parallel num_threads(nt)
    {
        float *dkt = acc + (size_t)omp_get_thread_num() * kn * 2, *dvt = dkt + kn;
        float *S = NULL, *dP = NULL;
        size_t cap = 0;
#pragma omp for schedule(static, 1)
        for (long w = 0; w < (long)nb * NH; w++) {
            const Att2Blk *b = &bl[w / NH];
            int h = (int)(w % NH), kh = h / G, nq = b->i1 - b->i0;
            int nA = b->A1 - b->A0, nB = b->i1 - b->B0, nk = nA + nB;
            if ((size_t)nq * nk > cap) {
                free(S);
                free(dP);
                cap = (size_t)nq * nk;
                S = pq_xmalloc(cap * sizeof(float));
                dP = pq_xmalloc(cap * sizeof(float));
            }
            const float *Q = q + (size_t)b->i0 * qs + (size_t)h * HS, *dO = dout + (size_t)b->i0 * qs + (size_t)h * HS;
            const float *KA = k + (size_t)b->A0 * ks + (size_t)kh * HS, *KB = k + (size_t)b->B0 * ks + (size_t)kh * HS;
            att2_scores(S, b, Q, k, kh, nq, HS, qs, ks, scale);
            att2_scores(dP, b, dO, v, kh, nq, HS, qs, ks, 1.0f); // dP = dO V^T
            for (int a = 0; a < nq; a++) {
                int i = b->i0 + a;
                const float *o = out + (size_t)i * qs + (size_t)h * HS, *g = dO + (size_t)a * qs;
                float D = 0;
                for (int d = 0; d < HS; d++) D += g[d] * o[d];
                float m = lse[(size_t)i * NH + h];
                float *sr = S + (size_t)a * nk, *pr = dP + (size_t)a * nk;
                for (int c = 0; c < nk; c++) {
                    if (att2_vis(b, pos, i, c, window)) {
                        float pv = expf(sr[c] - m);
                        sr[c] = pv;
                        pr[c] = pv * (pr[c] - D) * scale;
                    } else
                        sr[c] = pr[c] = 0.0f;
                }
            }
            float *dQ = dq + (size_t)b->i0 * qs + (size_t)h * HS;
            if (nA) {
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, HS, nA, 1.0f, dP, nk, KA, (int)ks, 0.0f, dQ,
                            (int)qs);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nA, HS, nq, 1.0f, dP, nk, Q, (int)qs, 1.0f,
                            dkt + (size_t)b->A0 * ks + (size_t)kh * HS, (int)ks);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nA, HS, nq, 1.0f, S, nk, dO, (int)qs, 1.0f,
                            dvt + (size_t)b->A0 * ks + (size_t)kh * HS, (int)ks);
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, HS, nB, 1.0f, dP + nA, nk, KB, (int)ks,
                        nA ? 1.0f : 0.0f, dQ, (int)qs);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nB, HS, nq, 1.0f, dP + nA, nk, Q, (int)qs, 1.0f,
                        dkt + (size_t)b->B0 * ks + (size_t)kh * HS, (int)ks);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nB, HS, nq, 1.0f, S + nA, nk, dO, (int)qs, 1.0f,
                        dvt + (size_t)b->B0 * ks + (size_t)kh * HS, (int)ks);
        }
        free(S);
        free(dP);
    }
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t x = 0; x < kn; x++) {
        float a = 0, c = 0;
        for (int t = 0; t < nt; t++) a += acc[(size_t)t * kn * 2 + x], c += acc[(size_t)t * kn * 2 + kn + x];
        dk[x] = a;
        dv[x] = c;
    }
    free(acc);
    free(bl);
}

// out = silu(g) u, silu(g) = g s(g): dg = dout u s (1 + g (1 - s)), du = dout silu(g)
void pq_cpu_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, int N,
                            int H) {
    size_t n = (size_t)N * H;
#pragma omp parallel for num_threads(pq_cpu_threads()) schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i], s = 1.0f / (1.0f + expf(-g));
        dgate[i] = dout[i] * up[i] * s * (1.0f + g * (1.0f - s));
        dup[i] = dout[i] * g * s;
    }
}

enum { VOCAB_CHUNK = 2048 };

// logp_i = z_i[t_i] - lse_i, z = h lm_head^T: dz = dlogp_i (onehot(t_i) - softmax(z_i)),
// dh_i += dz lm_head, over the rows that have a target and a gradient only.
void pq_cpu_logp_backward(float *dh, const float *dlogp, const float *h, const PqWeight *lm_head,
                          const int32_t *targets, const float *lse, int N, int C, int V) {
    int M = 0;
    int *rows = pq_xmalloc((size_t)(N ? N : 1) * sizeof(int));
    for (int i = 0; i < N; i++)
        if (targets[i] >= 0 && dlogp[i] != 0) rows[M++] = i;
    if (M == 0) {
        free(rows);
        return;
    }
    float *ha = pq_xmalloc((size_t)M * C * sizeof(float)), *dha = pq_xcalloc((size_t)M * C, sizeof(float));
    for (int m = 0; m < M; m++) memcpy(ha + (size_t)m * C, h + (size_t)rows[m] * C, (size_t)C * sizeof(float));
    float *z = pq_xmalloc((size_t)M * VOCAB_CHUNK * sizeof(float));
    float *wbuf = lm_head->dtype == PQ_F32 ? NULL : pq_xmalloc((size_t)VOCAB_CHUNK * C * sizeof(float));
    for (int v0 = 0; v0 < V; v0 += VOCAB_CHUNK) {
        int nv = V - v0 < VOCAB_CHUNK ? V - v0 : VOCAB_CHUNK;
        const float *w;
        if (wbuf) {
            weight_rows(lm_head, v0, nv, wbuf);
            w = wbuf;
        } else {
            w = (const float *)lm_head->data + (size_t)v0 * C;
        }
        psgemm(0, 1, M, nv, C, 1.0f, ha, C, w, C, 0.0f, z, nv);
#pragma omp parallel for num_threads(pq_cpu_threads()) schedule(static)
        for (int m = 0; m < M; m++) {
            int i = rows[m];
            float g = dlogp[i], l = lse[i];
            float *zr = z + (size_t)m * nv;
            for (int c = 0; c < nv; c++) zr[c] = -g * expf(zr[c] - l);
            int t = targets[i] - v0;
            if (t >= 0 && t < nv) zr[t] += g;
        }
        psgemm(0, 0, M, C, nv, 1.0f, z, nv, w, C, 1.0f, dha, C);
    }
    for (int m = 0; m < M; m++) {
        float *d = dh + (size_t)rows[m] * C, *s = dha + (size_t)m * C;
        for (int c = 0; c < C; c++) d[c] += s[c];
    }
    free(wbuf);
    free(z);
    free(dha);
    free(ha);
    free(rows);
}

// splitmix64 of (seed, index): a counter-based stream, identical on recomputation.
static inline uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

// dropout_forward's threshold and scale for p (p 0: keep everything)
static uint64_t drop_thr(float p, float *keep) {
    *keep = p > 0 ? 1.0f / (1.0f - p) : 1.0f;
    if (p >= 1) return UINT64_MAX;
    return (uint64_t)((double)p * 18446744073709551616.0 / 2) * 2; // p * 2^64
}

void pq_cpu_dropout_forward(float *out, const float *inp, float p, uint64_t seed, size_t n) {
    float keep;
    uint64_t thr = drop_thr(p, &keep);
#pragma omp parallel for num_threads(pq_cpu_threads()) schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = mix64(seed ^ mix64(i)) < thr ? 0.0f : inp[i] * keep;
}

// one adapter: lora_dx_group
void pq_cpu_lora_dx_dropout(float *dx, const float *dxa, const float *A, float p, uint64_t seed, int N, int C, int r) {
    pq_cpu_lora_dx_group(dx, &dxa, &A, &seed, p, 1, N, C, r);
}

// The block of x of m rows and w columns from element (i0, c0) (rows of stride C) through each of n masks:
// bufs + t * m * w (m, w) = drop_t(block). Each element's index hashed once (into the row buffer h (w)),
// each seed's hash on top of it.
static void drop_blocks(float *bufs, uint64_t *h, const float *x, int i0, int c0, int m, int w, int C,
                        const uint64_t *seed, int n, uint64_t thr, float keep) {
    for (int i = 0; i < m; i++) {
        size_t e0 = (size_t)(i0 + i) * C + c0;
        const float *xr = x + e0;
        for (int c = 0; c < w; c++) h[c] = mix64(e0 + c);
        for (int t = 0; t < n; t++) {
            float *br = bufs + ((size_t)t * m + i) * w;
            uint64_t sd = seed[t];
            for (int c = 0; c < w; c++) br[c] = mix64(sd ^ h[c]) < thr ? 0.0f : xr[c] * keep;
        }
    }
}

// Blocks of LG_ROWS rows: the block through each adapter's mask into buffers of the thread, then one sgemm
// per adapter against its A (no mask: straight from x).
#define LG_ROWS 64
void pq_cpu_lora_xa_group(float *const *xa, const float *x, const float *const *A, const uint64_t *seed, float p,
                          int n, int N, int C, int r) {
    float keep;
    uint64_t thr = drop_thr(p, &keep);
    int nb = (N + LG_ROWS - 1) / LG_ROWS;
#pragma omp parallel num_threads(pq_cpu_threads())
    {
        float *bufs = p > 0 ? pq_xmalloc((size_t)n * LG_ROWS * C * sizeof *bufs) : NULL;
        uint64_t *h = p > 0 ? pq_xmalloc((size_t)C * sizeof *h) : NULL;
#pragma omp for schedule(static)
        for (int b = 0; b < nb; b++) {
            int i0 = b * LG_ROWS, m = N - i0 < LG_ROWS ? N - i0 : LG_ROWS;
            if (p > 0) drop_blocks(bufs, h, x, i0, 0, m, C, C, seed, n, thr, keep);
            for (int t = 0; t < n; t++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, r, C, 1.0f,
                            p > 0 ? bufs + (size_t)t * m * C : x + (size_t)i0 * C, C, A[t], C, 0.0f,
                            xa[t] + (size_t)i0 * r, r);
        }
        free(bufs);
        free(h);
    }
}

// Blocks of LG_COLS columns, one thread each (no sum across threads: deterministic), down the rows
// LG_KROWS at a time: the block through each adapter's mask, then dA[t]'s columns += dxa[t]^T block.
#define LG_COLS 256
#define LG_KROWS 256
void pq_cpu_lora_dA_group(float *const *dA, const float *const *dxa, const float *x, const uint64_t *seed, float p,
                          int n, int N, int C, int r) {
    float keep;
    uint64_t thr = drop_thr(p, &keep);
    int nb = (C + LG_COLS - 1) / LG_COLS;
    if (p <= 0) { // no mask: the products straight from x
        for (int t = 0; t < n; t++) psgemm(1, 0, r, C, N, 1.0f, dxa[t], r, x, C, 1.0f, dA[t], C);
        return;
    }
#pragma omp parallel num_threads(pq_cpu_threads())
    {
        float *bufs = pq_xmalloc((size_t)n * LG_KROWS * LG_COLS * sizeof *bufs);
        uint64_t *h = pq_xmalloc((size_t)LG_COLS * sizeof *h);
#pragma omp for schedule(static)
        for (int b = 0; b < nb; b++) {
            int c0 = b * LG_COLS, w = C - c0 < LG_COLS ? C - c0 : LG_COLS;
            for (int i0 = 0; i0 < N; i0 += LG_KROWS) {
                int m = N - i0 < LG_KROWS ? N - i0 : LG_KROWS;
                drop_blocks(bufs, h, x, i0, c0, m, w, C, seed, n, thr, keep);
                for (int t = 0; t < n; t++)
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, w, m, 1.0f, dxa[t] + (size_t)i0 * r, r,
                                bufs + (size_t)t * m * w, w, 1.0f, dA[t] + c0, C);
            }
        }
        free(bufs);
        free(h);
    }
}

// Blocks of LG_ROWS rows: each adapter's dxa A into a buffer of the thread, then dx's rows += the sum of the
// buffers through their masks (each index hashed once). No mask: the sgemms straight into dx.
void pq_cpu_lora_dx_group(float *dx, const float *const *dxa, const float *const *A, const uint64_t *seed, float p,
                          int n, int N, int C, int r) {
    float keep;
    uint64_t thr = drop_thr(p, &keep);
    int nb = (N + LG_ROWS - 1) / LG_ROWS;
#pragma omp parallel num_threads(pq_cpu_threads())
    {
        float *bufs = p > 0 ? pq_xmalloc((size_t)n * LG_ROWS * C * sizeof *bufs) : NULL;
#pragma omp for schedule(static)
        for (int b = 0; b < nb; b++) {
            int i0 = b * LG_ROWS, m = N - i0 < LG_ROWS ? N - i0 : LG_ROWS;
            float *d = dx + (size_t)i0 * C;
            for (int t = 0; t < n; t++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, C, r, 1.0f, dxa[t] + (size_t)i0 * r, r,
                            A[t], C, p > 0 ? 0.0f : 1.0f, p > 0 ? bufs + (size_t)t * m * C : d, C);
            if (p <= 0) continue;
            for (int i = 0; i < m; i++) {
                size_t e0 = (size_t)(i0 + i) * C;
                float *dr = dx + e0;
                for (int c = 0; c < C; c++) {
                    uint64_t h = mix64(e0 + c);
                    float s = 0.0f;
                    for (int t = 0; t < n; t++)
                        if (!(mix64(seed[t] ^ h) < thr)) s += bufs[((size_t)t * m + i) * C + c];
                    dr[c] += s * keep;
                }
            }
        }
        free(bufs);
    }
}

// out (N,OC) += scale xa B^T
void pq_cpu_lora_up_forward(float *out, const float *xa, const float *B, float scale, int N, int OC, int r) {
    psgemm(0, 1, N, OC, r, scale, xa, r, B, r, 1.0f, out, OC);
}

// dB (OC,r) += scale dout^T xa; dxa (N,r) = scale dout B
void pq_cpu_lora_up_backward(float *dB, float *dxa, const float *dout, const float *xa, const float *B, float scale,
                             int N, int OC, int r) {
    psgemm(1, 0, OC, r, N, scale, dout, OC, xa, r, 1.0f, dB, r);
    psgemm(0, 0, N, r, OC, scale, dout, OC, B, r, 0.0f, dxa, r);
}

void pq_cpu_rope_qk_backward(float *dq, float *dk, const int32_t *pos, const float *inv_freq, int N, int NH, int KVH,
                             int HS) {
    pq_cpu_rope_backward(dq, pos, inv_freq, N, NH, HS);
    pq_cpu_rope_backward(dk, pos, inv_freq, N, KVH, HS);
}
