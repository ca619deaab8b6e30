// ops_cpu.c: the plain-C (OpenMP + OpenBLAS) implementations of ops.h, the
// oracle every other backend is checked against. f32 compute; bf16/f16
// weights are converted to f32 one tile of rows at a time, never whole.
// PQ_PRECISION=bf16 in the environment instead runs the products of bf16
// linear layers in bf16 (activations rounded to bf16, f32 accumulation:
// the CUDA backend's numerics) through oneDNN (lib/matmul_bf16.c).
#include "ops.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exp_fast.h"
#include "matmul_bf16.h"
#include "st_write.h"
#include "util.h"

// Rows of a weight converted at once (per thread): at most TILE x C floats.
// Tiles are large because sgemm repacks the activations for every call.
#define TILE 512
// Query rows per attention block.
#define QBLK 64

size_t pq_dtype_size(PqDtype t) { return t == PQ_F32 ? 4 : 2; }
const char *pq_dtype_name(PqDtype t) { return t == PQ_F32 ? "F32" : t == PQ_F16 ? "F16" : "BF16"; }

float pq_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float pq_f16_to_f32(uint16_t h) {
    uint32_t s = (uint32_t)(h >> 15) << 31, ex = (h >> 10) & 0x1f, m = h & 0x3ff, u;
    if (ex == 0x1f) u = s | 0x7f800000u | m << 13; // inf, nan
    else if (ex) u = s | (ex + 112) << 23 | m << 13;
    else if (!m) u = s;
    else { // subnormal: normalise
        int k = 0;
        while (!(m & 0x400)) m <<= 1, k++;
        u = s | (uint32_t)(113 - k) << 23 | (m & 0x3ff) << 13;
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// Rows [r0, r0+n) of w as f32 into out (n, cols); returns out, or the
// weight itself when it is already f32 (no copy).
static const float *weight_rows(const PqWeight *w, int r0, int n, float *out) {
    size_t c = (size_t)w->cols, off = (size_t)r0 * c, cnt = (size_t)n * c;
    if (w->dtype == PQ_F32) return (const float *)w->data + off;
    const uint16_t *src = (const uint16_t *)w->data + off;
    if (w->dtype == PQ_BF16) {
        for (size_t i = 0; i < cnt; i++) {
            uint32_t u = (uint32_t)src[i] << 16;
            memcpy(&out[i], &u, 4);
        }
    } else {
        for (size_t i = 0; i < cnt; i++) out[i] = pq_f16_to_f32(src[i]);
    }
    return out;
}

void pq_weight_row(const PqWeight *w, int r, float *out) {
    const float *p = weight_rows(w, r, 1, out);
    if (p != out) memcpy(out, p, (size_t)w->cols * sizeof *out);
}

// ---- memory and threads ----

static int n_threads = 0;

void pq_cpu_set_threads(int n) {
    if (n <= 0) n = omp_get_num_procs();
    n_threads = n;
    omp_set_num_threads(n);
    // Every product is split over OpenMP threads here, each calling a
    // single-threaded sgemm on its own tile: no oversubscription.
    openblas_set_num_threads(1);
}

int pq_cpu_threads(void) {
    if (!n_threads) pq_cpu_set_threads(0);
    return n_threads;
}

// ---- bf16 products (PQ_PRECISION=bf16) ----

// lib/matmul_bf16.c, in CPU builds only (NULL otherwise; backend_cpu.c links it in)
#pragma weak pq_cpu_matmul_bf16

// Are a bf16 weight's products run in bf16? Read once from PQ_PRECISION.
int pq_cpu_bf16_products(void) {
    static int on = -1;
    if (on < 0) {
        const char *p = getenv("PQ_PRECISION");
        on = p && !strcmp(p, "bf16");
        if (on && !pq_cpu_matmul_bf16) {
            fprintf(stderr, "pq: PQ_PRECISION=bf16: this build has no bf16 products (oneDNN); computing in f32\n");
            on = 0;
        }
    }
    return on;
}

// out (M,N) (+)= inp (M,K) f32 rounded to bf16, times w^T (w bf16 (N,K) when w_nk, else (K,N)): 0, or -1
// (with a message, once) when oneDNN cannot, and the caller computes in f32.
static int bf16_product(float *out, const float *inp, const void *w, int M, int N, int K, int w_nk, int acc) {
    size_t n = (size_t)M * K;
    uint16_t *xb = pq_xmalloc((n ? n : 1) * sizeof *xb);
#pragma omp parallel for simd num_threads(pq_cpu_threads()) schedule(static)
    for (size_t i = 0; i < n; i++) xb[i] = pq_f32_to_bf16(inp[i]);
    int rc = pq_cpu_matmul_bf16(out, xb, w, M, N, K, w_nk, acc);
    free(xb);
    static int told;
    if (rc && !told) {
        told = 1;
        fprintf(stderr, "pq: PQ_PRECISION=bf16: oneDNN has no bf16 product on this CPU; computing in f32\n");
    }
    return rc;
}

int pq_cpu_bf16_linear_backward(float *dinp, const float *dout, const PqWeight *weight, int N, int C, int OC) {
    if (weight->dtype != PQ_BF16 || !pq_cpu_bf16_products() || N == 0) return -1;
    return bf16_product(dinp, dout, weight->data, N, C, OC, 0, 1);
}

// ---- forward operations ----

// ids (N), wte (V,C) -> out (N,C)
void pq_cpu_embedding_forward(float *out, const int32_t *ids, const PqWeight *wte, int N, int C) {
#pragma omp parallel for num_threads(pq_cpu_threads())
    for (int i = 0; i < N; i++) pq_weight_row(wte, ids[i], out + (size_t)i * C);
}

// inp (N,C), weight (C) -> out (N,C), rstd (N)
void pq_cpu_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N, int C,
                            float eps) {
#pragma omp parallel for num_threads(pq_cpu_threads())
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * C;
        float *o = out + (size_t)i * C;
        double ss = 0;
        for (int c = 0; c < C; c++) ss += (double)x[c] * x[c];
        float r = (float)(1.0 / sqrt(ss / C + eps));
        for (int c = 0; c < C; c++) o[c] = x[c] * r * weight[c];
        if (rstd) rstd[i] = r;
    }
}

void pq_cpu_linear_group_forward(float *const *out, const float *inp, const PqWeight *w, const float *const *bias,
                                 int n, int N, int C) {
    for (int t = 0; t < n; t++) pq_cpu_linear_forward(out[t], inp, &w[t], bias[t], N, C, w[t].rows);
}

void pq_cpu_residual_rmsnorm_forward(float *out, float *rstd, float *x, const float *y, const float *weight, int N,
                                     int C, float eps) {
#pragma omp parallel for num_threads(pq_cpu_threads())
    for (int i = 0; i < N; i++) {
        float *xi = x + (size_t)i * C, *o = out + (size_t)i * C;
        const float *yi = y + (size_t)i * C;
        double ss = 0;
        for (int c = 0; c < C; c++) {
            xi[c] += yi[c];
            ss += (double)xi[c] * xi[c];
        }
        float r = (float)(1.0 / sqrt(ss / C + eps));
        for (int c = 0; c < C; c++) o[c] = xi[c] * r * weight[c];
        if (rstd) rstd[i] = r;
    }
}

// Splits rows into tiles of at most TILE rows, a multiple of the thread count
// (so threads get equal work), each a multiple of 16 rows.
static int tile_rows(int rows) {
    int nt = pq_cpu_threads();
    int per = (rows + nt * TILE - 1) / (nt * TILE); // tiles per thread
    int t = (rows + nt * per - 1) / (nt * per);
    return (t + 15) / 16 * 16;
}

// inp (N,C), weight (OC,C), bias (OC) -> out (N,OC). Threads split OC into
// tiles; each converts its tile and multiplies all N rows.
void pq_cpu_linear_forward(float *out, const float *inp, const PqWeight *weight, const float *bias, int N, int C,
                           int OC) {
    if (weight->dtype == PQ_BF16 && N > 0 && pq_cpu_bf16_products() &&
        bf16_product(out, inp, weight->data, N, OC, C, 1, 0) == 0) {
        if (bias)
#pragma omp parallel for num_threads(pq_cpu_threads())
            for (int i = 0; i < N; i++)
                for (int j = 0; j < OC; j++) out[(size_t)i * OC + j] += bias[j];
        return;
    }
    int ts = tile_rows(OC), nt = (OC + ts - 1) / ts;
#pragma omp parallel num_threads(pq_cpu_threads())
    {
        float *buf = weight->dtype == PQ_F32 ? NULL : pq_xmalloc((size_t)ts * C * sizeof *buf);
#pragma omp for schedule(static)
        for (int t = 0; t < nt; t++) {
            int r0 = t * ts, n = OC - r0 < ts ? OC - r0 : ts;
            const float *w = weight_rows(weight, r0, n, buf);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, n, C, 1.0f, inp, C, w, C, 0.0f, out + r0, OC);
            if (bias)
                for (int i = 0; i < N; i++)
                    for (int j = 0; j < n; j++) out[(size_t)i * OC + r0 + j] += bias[r0 + j];
        }
        free(buf);
    }
}

// inp (N,C), A (r,C), B (OC,r) -> xa (N,r) = inp A^T; out (N,OC) += scale * xa B^T
void pq_cpu_lora_forward(float *out, float *xa, const float *inp, const float *A, const float *B, float scale, int N,
                         int C, int OC, int r) {
    int nt = pq_cpu_threads();
    // Row blocks of N in parallel (single-threaded sgemm each).
    int blk = (N + nt - 1) / nt;
#pragma omp parallel for num_threads(nt)
    for (int t = 0; t < nt; t++) {
        int i0 = t * blk, n = N - i0 < blk ? N - i0 : blk;
        if (n <= 0) continue;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, r, C, 1.0f, inp + (size_t)i0 * C, C, A, C, 0.0f,
                    xa + (size_t)i0 * r, r);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, OC, r, scale, xa + (size_t)i0 * r, r, B, r, 1.0f,
                    out + (size_t)i0 * OC, OC);
    }
}

// in place: x (N,NH,HS); pair (d, d+HS/2) rotated by angle pos * inv_freq[d]
void pq_cpu_rope_forward(float *x, const int32_t *pos, const float *inv_freq, int N, int NH, int HS) {
    int half = HS / 2;
#pragma omp parallel num_threads(pq_cpu_threads())
    {
        float *cs = pq_xmalloc((size_t)HS * sizeof *cs);
#pragma omp for
        for (int i = 0; i < N; i++) {
            for (int d = 0; d < half; d++) {
                // the angle as HF computes it: float32 pos * inv_freq
                float a = (float)pos[i] * inv_freq[d];
                cs[d] = cosf(a);
                cs[half + d] = sinf(a);
            }
            for (int h = 0; h < NH; h++) {
                float *v = x + ((size_t)i * NH + h) * HS;
                for (int d = 0; d < half; d++) {
                    float x0 = v[d], x1 = v[d + half], c = cs[d], s = cs[half + d];
                    v[d] = x0 * c - x1 * s;
                    v[d + half] = x1 * c + x0 * s;
                }
            }
        }
        free(cs);
    }
}

// q (N,NH,HS), k (N,KVH,HS), v (N,KVH,HS) -> out (N,NH,HS), lse (N,NH).
// Work items are (block of up to QBLK query rows of one record, head):
// S = Q K^T over the keys the block can see, masked softmax, O = P V.
void pq_cpu_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                              const int32_t *pos, int N, int NH, int KVH, int HS, int window) {
    // query blocks: [b0, b1) within one record
    int *blk = pq_xmalloc((size_t)(N + 1) * sizeof *blk);
    int nb = 0;
    for (int i = 0; i < N;) {
        int rs = i - pos[i], j = i + 1;
        while (j < N && j - i < QBLK && j - pos[j] == rs) j++;
        blk[nb++] = i;
        i = j;
    }
    blk[nb] = N;
    int G = NH / KVH;
    size_t qs = (size_t)NH * HS, ks = (size_t)KVH * HS;
    float scale = 1.0f / sqrtf((float)HS);
#pragma omp parallel num_threads(pq_cpu_threads())
    {
        float *S = NULL;
        size_t S_cap = 0;
#pragma omp for schedule(dynamic, 1)
        for (long w = 0; w < (long)nb * NH; w++) {
            int b = (int)(w / NH), h = (int)(w % NH), kh = h / G;
            int i0 = blk[b], i1 = blk[b + 1], rs = i0 - pos[i0];
            int j0 = rs;
            if (window > 0 && i0 - window > j0) j0 = i0 - window;
            int nq = i1 - i0, nk = i1 - j0;
            if ((size_t)nq * nk > S_cap) {
                S_cap = (size_t)nq * nk;
                free(S);
                S = pq_xmalloc(S_cap * sizeof *S);
            }
            // S (nq, nk) = scale * Q (nq,HS) K^T (HS,nk)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, HS, scale, q + (size_t)i0 * qs + (size_t)h * HS,
                        (int)qs, k + (size_t)j0 * ks + (size_t)kh * HS, (int)ks, 0.0f, S, nk);
            for (int a = 0; a < nq; a++) {
                int i = i0 + a;
                // visible keys: j in [lo, i], lo = max(rs, i - window) (HF: i - j <= window)
                int lo = rs;
                if (window > 0 && i - window > lo) lo = i - window;
                float *s = S + (size_t)a * nk;
                int c0 = lo - j0, c1 = i - j0 + 1; // visible columns [c0, c1)
                float m = -INFINITY, sum = 0;
#pragma omp simd reduction(max : m)
                for (int c = c0; c < c1; c++) m = s[c] > m ? s[c] : m;
#pragma omp simd reduction(+ : sum)
                for (int c = c0; c < c1; c++) {
                    s[c] = pq_exp_fast(s[c] - m);
                    sum += s[c];
                }
                float inv = 1.0f / sum;
#pragma omp simd
                for (int c = c0; c < c1; c++) s[c] *= inv;
                if (c0 > 0) memset(s, 0, (size_t)c0 * sizeof *s);
                if (c1 < nk) memset(s + c1, 0, (size_t)(nk - c1) * sizeof *s);
                if (lse) lse[(size_t)i * NH + h] = m + logf(sum);
            }
            // O (nq,HS) = P (nq,nk) V (nk,HS)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, HS, nk, 1.0f, S, nk,
                        v + (size_t)j0 * ks + (size_t)kh * HS, (int)ks, 0.0f, out + (size_t)i0 * qs + (size_t)h * HS,
                        (int)qs);
        }
        free(S);
    }
    free(blk);
}

// gate (N,H), up (N,H) -> out (N,H) = silu(gate) * up
void pq_cpu_swiglu_forward(float *out, const float *gate, const float *up, int N, int H) {
    size_t n = (size_t)N * H;
#pragma omp parallel for simd num_threads(pq_cpu_threads())
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + pq_exp_fast(-g)) * up[i];
    }
}

// x (n) += y (n)
void pq_cpu_residual_forward(float *x, const float *y, size_t n) {
#pragma omp parallel for num_threads(pq_cpu_threads())
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}

// Vocab rows per chunk of the LM head.
#define VCHUNK 1024

// h (N,C), lm_head (V,C), targets (N) -> logp (N), lse (N). Each thread
// walks its own chunks of vocab rows (VCHUNK x C converted, N x VCHUNK
// logits) keeping a running max and sum per token; the threads' partial
// sums are merged at the end.
void pq_cpu_logp_forward(float *logp, float *lse, const float *h, const PqWeight *lm_head, const int32_t *targets,
                         int N, int C, int V) {
    int nt = pq_cpu_threads();
    int nc = (V + VCHUNK - 1) / VCHUNK;
    float *pm = pq_xmalloc((size_t)nt * N * sizeof *pm); // running max per thread and token
    float *ps = pq_xmalloc((size_t)nt * N * sizeof *ps); // running sum of exp(x - max)
    float *tl = pq_xmalloc((size_t)N * sizeof *tl);     // target logit
    for (size_t i = 0; i < (size_t)nt * N; i++) pm[i] = -INFINITY, ps[i] = 0;
    for (int i = 0; i < N; i++) tl[i] = 0;
#pragma omp parallel num_threads(nt)
    {
        int me = omp_get_thread_num();
        float *m = pm + (size_t)me * N, *s = ps + (size_t)me * N;
        float *buf = lm_head->dtype == PQ_F32 ? NULL : pq_xmalloc((size_t)VCHUNK * C * sizeof *buf);
        float *lg = pq_xmalloc((size_t)N * VCHUNK * sizeof *lg);
#pragma omp for schedule(static)
        for (int t = 0; t < nc; t++) {
            int v0 = t * VCHUNK, n = V - v0 < VCHUNK ? V - v0 : VCHUNK;
            const float *w = weight_rows(lm_head, v0, n, buf);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, n, C, 1.0f, h, C, w, C, 0.0f, lg, n);
            for (int i = 0; i < N; i++) {
                const float *x = lg + (size_t)i * n;
                float cm = x[0];
#pragma omp simd reduction(max : cm)
                for (int j = 1; j < n; j++) cm = x[j] > cm ? x[j] : cm;
                float nm = cm > m[i] ? cm : m[i];
                float acc = 0;
#pragma omp simd reduction(+ : acc)
                for (int j = 0; j < n; j++) acc += pq_exp_fast(x[j] - nm);
                s[i] = s[i] * expf(m[i] - nm) + acc;
                m[i] = nm;
                int tg = targets[i];
                if (tg >= v0 && tg < v0 + n) tl[i] = x[tg - v0];
            }
        }
        free(buf);
        free(lg);
    }
    for (int i = 0; i < N; i++) {
        float M = -INFINITY;
        for (int t = 0; t < nt; t++) M = pm[(size_t)t * N + i] > M ? pm[(size_t)t * N + i] : M;
        double S = 0;
        for (int t = 0; t < nt; t++)
            if (ps[(size_t)t * N + i] > 0) S += (double)ps[(size_t)t * N + i] * exp((double)pm[(size_t)t * N + i] - M);
        float l = M + (float)log(S);
        if (lse) lse[i] = l;
        logp[i] = targets[i] >= 0 ? tl[i] - l : 0.0f;
    }
    free(pm);
    free(ps);
    free(tl);
}

void pq_cpu_rope_qk_forward(float *q, float *k, const int32_t *pos, const float *inv_freq, int N, int NH, int KVH,
                            int HS) {
    pq_cpu_rope_forward(q, pos, inv_freq, N, NH, HS);
    pq_cpu_rope_forward(k, pos, inv_freq, N, KVH, HS);
}
