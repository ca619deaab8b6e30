// ops_grad_cpu.c: plain-C (OpenMP + OpenBLAS) backward operations of
// ops_grad.h, the oracle of the training path. Shapes as in ops_grad.h.
#include "ops_grad.h"

#include <cblas.h>
#include <math.h>
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
void pq_cpu_linear_backward(float *dinp, const float *dout, const PqWeight *weight, int N, int C, int OC) {
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
    psgemm(1, 0, OC, r, N, scale, dout, OC, xa, r, 1.0f, dB, r);
    psgemm(0, 0, N, r, OC, scale, dout, OC, B, r, 0.0f, dxa, r);
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

// Per query row i of head h (record start s = i - pos[i], keys j in
// [max(s, i-window), i], as attention_forward and HF's sliding window): p_j = exp(scale q_i.k_j - lse), D = do_i.o_i,
// ds_j = p_j (do_i.v_j - D); dq_i = scale sum ds_j k_j; dk_j += scale ds_j q_i;
// dv_j += p_j do_i. Heads run in parallel, each into its own dk/dv slice,
// summed over the heads of a KV group at the end.
void pq_cpu_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                               const float *v, const float *out, const float *lse, const int32_t *pos, int N,
                               int NH, int KVH, int HS, int window) {
    const float scale = 1.0f / sqrtf((float)HS);
    int grp = NH / KVH;
    size_t hsz = (size_t)N * HS;
    float *dkh = pq_xcalloc((size_t)NH * hsz * 2, sizeof(float)); // (NH, N, HS) twice
    float *dvh = dkh + (size_t)NH * hsz;
#pragma omp parallel for num_threads(pq_cpu_threads()) schedule(dynamic, 1)
        for (int h = 0; h < NH; h++) {
            int kh = h / grp;
            float *dkk = dkh + h * hsz, *dvv = dvh + h * hsz;
            for (int i = 0; i < N; i++) {
                int s = i - pos[i], j0 = s;
                if (window > 0 && i - window > j0) j0 = i - window;
                const float *qi = q + ((size_t)i * NH + h) * HS;
                const float *doi = dout + ((size_t)i * NH + h) * HS;
                const float *oi = out + ((size_t)i * NH + h) * HS;
                float *dqi = dq + ((size_t)i * NH + h) * HS;
                float D = 0;
                for (int d = 0; d < HS; d++) D += doi[d] * oi[d];
                float m = lse[(size_t)i * NH + h];
                for (int d = 0; d < HS; d++) dqi[d] = 0;
                for (int j = j0; j <= i; j++) {
                    const float *kj = k + ((size_t)j * KVH + kh) * HS;
                    const float *vj = v + ((size_t)j * KVH + kh) * HS;
                    float sc = 0, dp = 0;
                    for (int d = 0; d < HS; d++) sc += qi[d] * kj[d], dp += doi[d] * vj[d];
                    float pj = expf(sc * scale - m);
                    float ds = pj * (dp - D) * scale;
                    float *dkj = dkk + (size_t)j * HS, *dvj = dvv + (size_t)j * HS;
                    for (int d = 0; d < HS; d++) {
                        dqi[d] += ds * kj[d];
                        dkj[d] += ds * qi[d];
                        dvj[d] += pj * doi[d];
                    }
                }
            }
    }
#pragma omp parallel for num_threads(pq_cpu_threads()) schedule(static)
    for (int i = 0; i < N; i++) {
        for (int kh = 0; kh < KVH; kh++) {
            float *dki = dk + ((size_t)i * KVH + kh) * HS, *dvi = dv + ((size_t)i * KVH + kh) * HS;
            for (int d = 0; d < HS; d++) dki[d] = dvi[d] = 0;
            for (int h = kh * grp; h < (kh + 1) * grp; h++) {
                const float *a = dkh + h * hsz + (size_t)i * HS, *b = dvh + h * hsz + (size_t)i * HS;
                for (int d = 0; d < HS; d++) dki[d] += a[d], dvi[d] += b[d];
            }
        }
    }
    free(dkh);
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

void pq_cpu_dropout_forward(float *out, const float *inp, float p, uint64_t seed, size_t n) {
    float keep = 1.0f / (1.0f - p);
    uint64_t thr = (uint64_t)((double)p * 18446744073709551616.0 / 2) * 2; // p * 2^64
    if (p >= 1) thr = UINT64_MAX;
#pragma omp parallel for num_threads(pq_cpu_threads()) schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = mix64(seed ^ mix64(i)) < thr ? 0.0f : inp[i] * keep;
}
