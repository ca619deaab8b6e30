// attn_mm.c: attention as batched matrix products (see attn_mm.h): the
// blocks of query rows and the products, in the engine's memory. Matrices
// are as cuBLAS sees them (column-major): a head of Q (N,NH,HS) row-major is
// the HS x N matrix at Q + h HS with leading dimension NH HS, so the NH heads
// of a block are one strided batch (stride HS); K and V are expanded to NH
// heads first, so GQA needs no per-head pointers; the scores of a block are
// S (NH, nq, ld): head h's ld x nq matrix, one query per column.
#include "attn_mm.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "ops.h"
#include "st_write.h"
#include "util.h"

static int round8(int x) { return (x + 7) & ~7; }

// Row i's key ranges: [*a0, *a1) (maybe empty) and [*b0, i].
static void row_ranges(const int32_t *pos, const int32_t *a0, const int32_t *a1, const int32_t *b0, int i, int *ra0,
                       int *ra1, int *rb0) {
    if (a0) *ra0 = a0[i], *ra1 = a1[i], *rb0 = b0[i];
    else *ra0 = *ra1 = 0, *rb0 = i - pos[i];
}

int pq_attn_mm_blocks(PqAttnBlock **blocks, size_t *max_el, const int32_t *pos, const int32_t *a0,
                      const int32_t *a1, const int32_t *b0, int N, int NH, int window, int max_rows,
                      size_t max_scores) {
    PqAttnBlock *bl = pq_xmalloc((size_t)(N > 0 ? N : 1) * sizeof *bl);
    int n = 0;
    size_t mx = 0;
    for (int i = 0; i < N;) {
        int ra0, ra1, rb0;
        row_ranges(pos, a0, a1, b0, i, &ra0, &ra1, &rb0);
        PqAttnBlock b = {0};
        b.i0 = i;
        // keys the window hides from the first row are hidden from all (pos grows along a block)
        b.A0 = ra0;
        while (window > 0 && b.A0 < ra1 && pos[i] - pos[b.A0] > window) b.A0++;
        b.nA = ra1 > b.A0 ? ra1 - b.A0 : 0;
        b.nAp = round8(b.nA);
        b.B0 = rb0;
        while (window > 0 && b.B0 < i && pos[i] - pos[b.B0] > window) b.B0++;
        int j = i + 1;
        while (j < N && j - i < max_rows) {
            int sa0, sa1, sb0;
            row_ranges(pos, a0, a1, b0, j, &sa0, &sa1, &sb0);
            if (sa0 != ra0 || sa1 != ra1 || sb0 != rb0) break;
            size_t el = (size_t)NH * (size_t)(j + 1 - i) * (size_t)(b.nAp + round8(j + 1 - b.B0));
            if (el > max_scores) break;
            j++;
        }
        b.nq = j - i;
        b.nB = j - b.B0;
        b.ld = b.nAp + round8(b.nB);
        size_t el = (size_t)NH * b.nq * b.ld;
        if (el > mx) mx = el;
        bl[n++] = b;
        i = j;
    }
    *blocks = bl;
    *max_el = mx;
    return n;
}

// The host copies of pos (and a0, a1, b0) and the blocks.
typedef struct Plan {
    int32_t *pos, *a0, *a1, *b0;
    PqAttnBlock *bl;
    int nb;
    size_t max_el;
} Plan;

static void plan_build(Plan *p, const PqAttnEngine *E, const int32_t *pos, const int32_t *a0, const int32_t *a1,
                       const int32_t *b0, int N, int NH, int window) {
    memset(p, 0, sizeof *p);
    size_t bytes = (size_t)N * sizeof(int32_t);
    p->pos = pq_xmalloc(bytes);
    E->download(p->pos, pos, bytes);
    if (a0) {
        p->a0 = pq_xmalloc(3 * bytes);
        p->a1 = p->a0 + N, p->b0 = p->a1 + N;
        E->download(p->a0, a0, bytes);
        E->download(p->a1, a1, bytes);
        E->download(p->b0, b0, bytes);
    }
    p->nb = pq_attn_mm_blocks(&p->bl, &p->max_el, p->pos, p->a0, p->a1, p->b0, N, NH, window,
                              E->max_rows > 0 ? E->max_rows : PQ_AMM_MAX_ROWS,
                              E->max_scores > 0 ? E->max_scores : PQ_AMM_MAX_SCORES);
}

static void plan_free(Plan *p) {
    free(p->pos);
    free(p->a0);
    free(p->bl);
}

// Element offset o of an engine array of esz-byte elements.
static inline const void *at(const void *base, size_t o, int esz) { return (const char *)base + o * (size_t)esz; }

// S (NH, nq, ld) = alpha X_block [K_A; K_B]^T: X (N,NH,HS) expanded rows of the block, K (N,NH,HS) expanded.
static void scores(const PqAttnEngine *E, float *S, const PqAttnBlock *b, const void *X, const void *K, int NH, int HS,
                   float alpha) {
    int es = E->esz, nhs = NH * HS;
    long long sS = (long long)b->nq * b->ld;
    const void *Xb = at(X, (size_t)b->i0 * nhs, es);
    if (b->nA)
        E->gemm(1, 0, b->nA, b->nq, HS, alpha, at(K, (size_t)b->A0 * nhs, es), nhs, HS, Xb, nhs, HS, 0.0f, S, b->ld, sS,
                NH);
    E->gemm(1, 0, b->nB, b->nq, HS, alpha, at(K, (size_t)b->B0 * nhs, es), nhs, HS, Xb, nhs, HS, 0.0f, S + b->nAp,
            b->ld, sS, NH);
}

// Y (HS x nq per head, rows of the block of Y (N,NH,HS) f32) (=, or += when acc) [V_A; V_B]^T-weighted by W:
// Y_block = W (NH, nq, ld) applied to V: Y^T = V^T W^T as (HS, nq).
static void apply(const PqAttnEngine *E, float *Y, const PqAttnBlock *b, const void *W, const void *V, int NH, int HS) {
    int es = E->esz, nhs = NH * HS;
    long long sS = (long long)b->nq * b->ld;
    float *Yb = Y + (size_t)b->i0 * nhs;
    if (b->nA)
        E->gemm(0, 0, HS, b->nq, b->nA, 1.0f, at(V, (size_t)b->A0 * nhs, es), nhs, HS, W, b->ld, sS, 0.0f, Yb, nhs, HS,
                NH);
    E->gemm(0, 0, HS, b->nq, b->nB, 1.0f, at(V, (size_t)b->B0 * nhs, es), nhs, HS, at(W, (size_t)b->nAp, es), b->ld, sS,
            b->nA ? 1.0f : 0.0f, Yb, nhs, HS, NH);
}

// G (N,NH,HS) f32 keys of the block += W^T X_block: the keys' gradient from weights W (NH, nq, ld) and rows X.
static void accumulate(const PqAttnEngine *E, float *G, const PqAttnBlock *b, const void *W, const void *X, int NH,
                       int HS) {
    int es = E->esz, nhs = NH * HS;
    long long sS = (long long)b->nq * b->ld;
    const void *Xb = at(X, (size_t)b->i0 * nhs, es);
    if (b->nA)
        E->gemm(0, 1, HS, b->nA, b->nq, 1.0f, Xb, nhs, HS, W, b->ld, sS, 1.0f, G + (size_t)b->A0 * nhs, nhs, HS, NH);
    E->gemm(0, 1, HS, b->nB, b->nq, 1.0f, Xb, nhs, HS, at(W, (size_t)b->nAp, es), b->ld, sS, 1.0f,
            G + (size_t)b->B0 * nhs, nhs, HS, NH);
}

void pq_attn_mm_forward(const PqAttnEngine *E, float *out, float *lse, const float *q, const float *k,
                        const float *v, const int32_t *pos, const int32_t *a0, const int32_t *a1, const int32_t *b0,
                        int N, int NH, int KVH, int HS, int window) {
    if (N <= 0) return;
    Plan p;
    plan_build(&p, E, pos, a0, a1, b0, N, NH, window);
    size_t tok = (size_t)N * NH * HS, es = (size_t)E->esz;
    void *Qx = E->scratch(PQ_AMM_Q, tok * es), *Kx = E->scratch(PQ_AMM_K, tok * es);
    void *Vx = E->scratch(PQ_AMM_V, tok * es);
    E->expand(Qx, q, N, NH, NH, HS);
    E->expand(Kx, k, N, NH, KVH, HS);
    E->expand(Vx, v, N, NH, KVH, HS);
    float *S = E->scratch(PQ_AMM_S, p.max_el * sizeof(float));
    void *P = E->scratch(PQ_AMM_P, p.max_el * es);
    if (!lse) lse = E->scratch(PQ_AMM_LSE, (size_t)N * NH * sizeof(float));
    float scale = 1.0f / sqrtf((float)HS);
    for (int t = 0; t < p.nb; t++) {
        const PqAttnBlock *b = &p.bl[t];
        scores(E, S, b, Qx, Kx, NH, HS, scale);
        E->softmax(P, lse, S, *b, pos, NH, window);
        apply(E, out, b, P, Vx, NH, HS);
    }
    plan_free(&p);
}

void pq_attn_mm_backward(const PqAttnEngine *E, float *dq, float *dk, float *dv, const float *dout,
                         const float *q, const float *k, const float *v, const float *out, const float *lse,
                         const int32_t *pos, const int32_t *a0, const int32_t *a1, const int32_t *b0, int N,
                         int NH, int KVH, int HS, int window) {
    if (N <= 0) return;
    Plan p;
    plan_build(&p, E, pos, a0, a1, b0, N, NH, window);
    size_t tok = (size_t)N * NH * HS, es = (size_t)E->esz;
    float *D = E->scratch(PQ_AMM_D, (size_t)N * NH * sizeof(float));
    E->rowdot(D, dout, out, (size_t)N * NH, HS);
    void *Qx = E->scratch(PQ_AMM_Q, tok * es), *Kx = E->scratch(PQ_AMM_K, tok * es);
    void *Vx = E->scratch(PQ_AMM_V, tok * es), *dOx = E->scratch(PQ_AMM_DO, tok * es);
    E->expand(Qx, q, N, NH, NH, HS);
    E->expand(Kx, k, N, NH, KVH, HS);
    E->expand(Vx, v, N, NH, KVH, HS);
    E->expand(dOx, dout, N, NH, NH, HS);
    float *dKx = E->scratch(PQ_AMM_DK, tok * sizeof(float)), *dVx = E->scratch(PQ_AMM_DV, tok * sizeof(float));
    E->zero(dKx, tok * sizeof(float));
    E->zero(dVx, tok * sizeof(float));
    float *S = E->scratch(PQ_AMM_S, p.max_el * sizeof(float)), *dP = E->scratch(PQ_AMM_DP, p.max_el * sizeof(float));
    void *P = E->scratch(PQ_AMM_P, p.max_el * es), *dS = E->scratch(PQ_AMM_DS, p.max_el * es);
    float scale = 1.0f / sqrtf((float)HS);
    for (int t = 0; t < p.nb; t++) {
        const PqAttnBlock *b = &p.bl[t];
        scores(E, S, b, Qx, Kx, NH, HS, scale);
        scores(E, dP, b, dOx, Vx, NH, HS, 1.0f); // dP = dO V^T
        E->softmax_bwd(P, dS, S, dP, lse, D, *b, pos, NH, window, scale);
        apply(E, dq, b, dS, Kx, NH, HS);        // dQ = dS K
        accumulate(E, dKx, b, dS, Qx, NH, HS);  // dK += dS^T Q
        accumulate(E, dVx, b, P, dOx, NH, HS);  // dV += P^T dO
    }
    E->reduce(dk, dKx, N, NH, KVH, HS);
    E->reduce(dv, dVx, N, NH, KVH, HS);
    plan_free(&p);
}

// ---- the plain-C engine: the twin of each CUDA kernel of the bf16 path ----

static int cpu_esz; // 4: f32 products; 2: bf16 inputs, f32 accumulation (as tensor cores)
static void *cpu_slot[PQ_AMM_NSLOT];
static size_t cpu_cap[PQ_AMM_NSLOT];

static inline float cpu_ld(const void *p, size_t i) {
    return cpu_esz == 4 ? ((const float *)p)[i] : pq_bf16_to_f32(((const uint16_t *)p)[i]);
}
static inline void cpu_st(void *p, size_t i, float x) {
    if (cpu_esz == 4) ((float *)p)[i] = x;
    else ((uint16_t *)p)[i] = pq_f32_to_bf16(x);
}

// A stored (rows, cols) col-major with leading dimension ld, as dense f32 (ld = rows).
static float *cpu_dense(const void *A, int rows, int cols, int ld) {
    float *d = pq_xmalloc((size_t)rows * cols * sizeof *d);
    for (int c = 0; c < cols; c++)
        for (int r = 0; r < rows; r++) d[(size_t)c * rows + r] = cpu_ld(A, (size_t)c * ld + r);
    return d;
}

static void cpu_gemm(int ta, int tb, int m, int n, int k, float alpha, const void *A, int lda, long long sA,
                     const void *B, int ldb, long long sB, float beta, float *C, int ldc, long long sC, int batch) {
    int ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
    for (int x = 0; x < batch; x++) {
        float *a = cpu_dense(at(A, (size_t)(x * sA), cpu_esz), ar, ac, lda);
        float *b = cpu_dense(at(B, (size_t)(x * sB), cpu_esz), br, bc, ldb);
        cblas_sgemm(CblasColMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k, alpha, a,
                    ar, b, br, beta, C + x * sC, ldc);
        free(a);
        free(b);
    }
}

static void cpu_expand(void *dst, const float *src, int N, int NH, int SH, int HS) {
    int G = NH / SH;
    for (int i = 0; i < N; i++)
        for (int h = 0; h < NH; h++)
            for (int d = 0; d < HS; d++)
                cpu_st(dst, ((size_t)i * NH + h) * HS + d, src[((size_t)i * SH + h / G) * HS + d]);
}

static void cpu_reduce(float *dst, const float *src, int N, int NH, int KVH, int HS) {
    int G = NH / KVH;
    for (int i = 0; i < N; i++)
        for (int kh = 0; kh < KVH; kh++)
            for (int d = 0; d < HS; d++) {
                float s = 0;
                for (int t = 0; t < G; t++) s += src[((size_t)i * NH + kh * G + t) * HS + d];
                dst[((size_t)i * KVH + kh) * HS + d] = s;
            }
}

static void cpu_rowdot(float *D, const float *a, const float *b, size_t rows, int HS) {
    for (size_t r = 0; r < rows; r++) {
        float s = 0;
        for (int d = 0; d < HS; d++) s += a[r * HS + d] * b[r * HS + d];
        D[r] = s;
    }
}

// Key of column c of block b seen from row i, or -1 when hidden.
static inline int cpu_key(const PqAttnBlock *b, const int32_t *pos, int i, int c, int window) {
    int j;
    if (c < b->nA) j = b->A0 + c;
    else if (c >= b->nAp && c < b->nAp + b->nB) j = b->B0 + (c - b->nAp);
    else return -1;
    if (c >= b->nAp && j > i) return -1;
    if (window > 0 && pos[i] - pos[j] > window) return -1;
    return j;
}

static void cpu_softmax(void *P, float *lse, const float *S, PqAttnBlock b, const int32_t *pos, int NH, int window) {
    for (int h = 0; h < NH; h++)
        for (int a = 0; a < b.nq; a++) {
            int i = b.i0 + a;
            size_t row = ((size_t)h * b.nq + a) * b.ld;
            float m = -INFINITY, sum = 0;
            for (int c = 0; c < b.ld; c++)
                if (cpu_key(&b, pos, i, c, window) >= 0 && S[row + c] > m) m = S[row + c];
            for (int c = 0; c < b.ld; c++)
                if (cpu_key(&b, pos, i, c, window) >= 0) sum += expf(S[row + c] - m);
            for (int c = 0; c < b.ld; c++)
                cpu_st(P, row + c, cpu_key(&b, pos, i, c, window) >= 0 ? expf(S[row + c] - m) / sum : 0.0f);
            lse[(size_t)i * NH + h] = m + logf(sum);
        }
}

static void cpu_softmax_bwd(void *P, void *dS, const float *S, const float *dP, const float *lse, const float *D,
                            PqAttnBlock b, const int32_t *pos, int NH, int window, float scale) {
    for (int h = 0; h < NH; h++)
        for (int a = 0; a < b.nq; a++) {
            int i = b.i0 + a;
            size_t row = ((size_t)h * b.nq + a) * b.ld;
            float l = lse[(size_t)i * NH + h], Di = D[(size_t)i * NH + h];
            for (int c = 0; c < b.ld; c++) {
                float p = cpu_key(&b, pos, i, c, window) >= 0 ? expf(S[row + c] - l) : 0.0f;
                cpu_st(P, row + c, p);
                cpu_st(dS, row + c, p * (dP[row + c] - Di) * scale);
            }
        }
}

static void *cpu_scratch(int slot, size_t bytes) {
    if (bytes > cpu_cap[slot]) {
        free(cpu_slot[slot]);
        cpu_slot[slot] = pq_xmalloc(bytes);
        cpu_cap[slot] = bytes;
    }
    return cpu_slot[slot];
}
static void cpu_zero(void *p, size_t bytes) { memset(p, 0, bytes); }
static void cpu_download(void *host, const void *src, size_t bytes) { memcpy(host, src, bytes); }

const PqAttnEngine *pq_attn_mm_cpu(int esz) {
    static PqAttnEngine e = {0, cpu_gemm, cpu_expand, cpu_reduce, cpu_rowdot, cpu_softmax, cpu_softmax_bwd,
                             cpu_scratch, cpu_zero, cpu_download, 0, 0};
    cpu_esz = e.esz = esz == 2 ? 2 : 4;
    return &e;
}

void pq_attn_mm_cpu_free(void) {
    for (int s = 0; s < PQ_AMM_NSLOT; s++) free(cpu_slot[s]), cpu_slot[s] = NULL, cpu_cap[s] = 0;
}
