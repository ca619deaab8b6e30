// ops_gen_cpu.c: the plain-C implementations of ops_gen.h (KV cache append,
// attention of a step's tokens against the cache), the oracle of the CUDA ones.
#include "ops_gen.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "exp_fast.h"
#include "ops.h"
#include "util.h"

// Query rows per attention block (consecutive tokens of one slot).
#define QBLK 64

// k (N,KVH,HS), v (N,KVH,HS) -> kc, vc (S,T,KVH,HS) at [slot[i], pos[i]]
void pq_cpu_kv_append(float *kc, float *vc, const float *k, const float *v, const int32_t *slot, const int32_t *pos,
                      int N, int KVH, int HS, int T) {
    size_t kd = (size_t)KVH * HS;
    for (int i = 0; i < N; i++) {
        size_t at = ((size_t)slot[i] * T + pos[i]) * kd;
        memcpy(kc + at, k + (size_t)i * kd, kd * sizeof *kc);
        memcpy(vc + at, v + (size_t)i * kd, kd * sizeof *vc);
    }
}

// q (N,NH,HS), kc, vc (S,T,KVH,HS) -> out (N,NH,HS). Work items are (block
// of up to QBLK consecutive tokens of one slot at consecutive positions,
// head): S = Q K^T over the cached keys the block can see, masked softmax,
// O = P V.
void pq_cpu_attention_kv_forward(float *out, const float *q, const float *kc, const float *vc, const int32_t *slot,
                                 const int32_t *pos, int N, int NH, int KVH, int HS, int T, int window) {
    int *blk = pq_xmalloc((size_t)(N + 1) * sizeof *blk);
    int nb = 0;
    for (int i = 0; i < N;) {
        int j = i + 1;
        while (j < N && j - i < QBLK && slot[j] == slot[i] && pos[j] == pos[j - 1] + 1) j++;
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
            int i0 = blk[b], i1 = blk[b + 1], p0 = pos[i0];
            int j0 = 0; // first key any query of the block sees
            if (window > 0 && p0 - window > j0) j0 = p0 - window;
            int nq = i1 - i0, nk = pos[i1 - 1] + 1 - j0;
            if ((size_t)nq * nk > S_cap) {
                S_cap = (size_t)nq * nk;
                free(S);
                S = pq_xmalloc(S_cap * sizeof *S);
            }
            const float *K = kc + ((size_t)slot[i0] * T + j0) * ks + (size_t)kh * HS;
            const float *V = vc + ((size_t)slot[i0] * T + j0) * ks + (size_t)kh * HS;
            // S (nq,nk) = scale * Q (nq,HS) K^T (HS,nk)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, HS, scale, q + (size_t)i0 * qs + (size_t)h * HS,
                        (int)qs, K, (int)ks, 0.0f, S, nk);
            for (int a = 0; a < nq; a++) {
                int p = pos[i0 + a];
                int lo = 0;
                if (window > 0 && p - window > lo) lo = p - window;
                pq_softmax_span(S + (size_t)a * nk, lo - j0, p - j0, nk);
            }
            // O (nq,HS) = P (nq,nk) V (nk,HS)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, HS, nk, 1.0f, S, nk, V, (int)ks, 0.0f,
                        out + (size_t)i0 * qs + (size_t)h * HS, (int)qs);
        }
        free(S);
    }
    free(blk);
}

// Token i's keys: j < blen[i] from slot base[i], the rest from slot[i].
// Tokens without a shared prompt go through attention_kv_forward (gathered
// when mixed); those with one are grouped by (base, blen) and, per group and
// KV head, the G query heads of all its tokens are one product against the
// prompt's keys: S (R,blen) = Q K^T with R = tokens x G, each token's own
// keys [blen, pos] a small product of its own, one softmax over both, and
// O = P V likewise (the prompt's values read once for the group).
void pq_cpu_attention_kv_shared_forward(float *out, const float *q, const float *kc, const float *vc,
                                        const int32_t *slot, const int32_t *pos, const int32_t *base,
                                        const int32_t *blen, int N, int NH, int KVH, int HS, int T, int window) {
    int ns = 0;
    for (int i = 0; i < N; i++) ns += blen[i] > 0;
    if (ns == 0) {
        pq_cpu_attention_kv_forward(out, q, kc, vc, slot, pos, N, NH, KVH, HS, T, window);
        return;
    }
    size_t qs = (size_t)NH * HS, ks = (size_t)KVH * HS;
    if (ns < N) { // the others, gathered
        int no = N - ns, k = 0;
        float *qo = pq_xmalloc((size_t)no * qs * sizeof *qo), *oo = pq_xmalloc((size_t)no * qs * sizeof *oo);
        int32_t *so = pq_xmalloc((size_t)no * sizeof *so), *po = pq_xmalloc((size_t)no * sizeof *po);
        for (int i = 0; i < N; i++)
            if (blen[i] <= 0) memcpy(qo + k * qs, q + i * qs, qs * sizeof *qo), so[k] = slot[i], po[k++] = pos[i];
        pq_cpu_attention_kv_forward(oo, qo, kc, vc, so, po, no, NH, KVH, HS, T, window);
        k = 0;
        for (int i = 0; i < N; i++)
            if (blen[i] <= 0) memcpy(out + i * qs, oo + (k++) * qs, qs * sizeof *out);
        free(qo), free(oo), free(so), free(po);
    }
    // groups: tok[g0[b] .. g0[b+1]) share (base, blen)
    int *tok = pq_xmalloc((size_t)ns * sizeof *tok), *g0 = pq_xmalloc((size_t)(ns + 1) * sizeof *g0), ng = 0, nt = 0;
    char *done = pq_xcalloc((size_t)N, 1);
    for (int i = 0; i < N; i++) {
        if (blen[i] <= 0 || done[i]) continue;
        g0[ng++] = nt;
        for (int j = i; j < N; j++)
            if (!done[j] && blen[j] > 0 && base[j] == base[i] && blen[j] == blen[i]) done[j] = 1, tok[nt++] = j;
    }
    g0[ng] = nt;
    free(done);
    int G = NH / KVH;
    float scale = 1.0f / sqrtf((float)HS);
#pragma omp parallel for schedule(dynamic, 1) num_threads(pq_cpu_threads())
    for (long w = 0; w < (long)ng * KVH; w++) {
        int b = (int)(w / KVH), kh = (int)(w % KVH), g = g0[b + 1] - g0[b], R = g * G;
        const int *tk = tok + g0[b];
        int L = blen[tk[0]], own = 0;
        for (int t = 0; t < g; t++) own = pos[tk[t]] + 1 - L > own ? pos[tk[t]] + 1 - L : own;
        float *Q = pq_xmalloc((size_t)R * HS * sizeof *Q), *O = pq_xmalloc((size_t)R * HS * sizeof *O);
        float *S = pq_xmalloc((size_t)R * L * sizeof *S), *So = pq_xmalloc(((size_t)R * own + 1) * sizeof *So);
        for (int t = 0; t < g; t++)
            memcpy(Q + (size_t)t * G * HS, q + (size_t)tk[t] * qs + (size_t)kh * G * HS, (size_t)G * HS * sizeof *Q);
        const float *Kp = kc + (size_t)base[tk[0]] * T * ks + (size_t)kh * HS;
        const float *Vp = vc + (size_t)base[tk[0]] * T * ks + (size_t)kh * HS;
        // S (R,L) = scale * Q K_prompt^T; So (G,n) per token = scale * Q_t K_own^T
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, L, HS, scale, Q, HS, Kp, (int)ks, 0.0f, S, L);
        for (int t = 0; t < g; t++) {
            int i = tk[t], n = pos[i] + 1 - L;
            if (n > 0)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, G, n, HS, scale, Q + (size_t)t * G * HS, HS,
                            kc + ((size_t)slot[i] * T + L) * ks + (size_t)kh * HS, (int)ks, 0.0f,
                            So + (size_t)t * G * own, own);
        }
        for (int t = 0; t < g; t++) {
            int i = tk[t], p = pos[i], n = p + 1 - L;
            int lo = window > 0 && p - window > 0 ? p - window : 0; // visible keys [lo, p]
            for (int a = 0; a < G; a++) {
                float *s = S + ((size_t)t * G + a) * L, *so = So + ((size_t)t * G + a) * own;
                float m = -INFINITY, sum = 0;
                int l0 = lo < L ? lo : L, o0 = lo > L ? lo - L : 0; // first visible of each part
#pragma omp simd reduction(max : m)
                for (int c = l0; c < L; c++) m = s[c] > m ? s[c] : m;
                for (int c = o0; c < n; c++) m = so[c] > m ? so[c] : m;
#pragma omp simd reduction(+ : sum)
                for (int c = l0; c < L; c++) {
                    s[c] = pq_exp_fast(s[c] - m);
                    sum += s[c];
                }
                for (int c = o0; c < n; c++) sum += so[c] = pq_exp_fast(so[c] - m);
                if (l0 > 0) memset(s, 0, (size_t)l0 * sizeof *s);
                if (o0 > 0) memset(so, 0, (size_t)o0 * sizeof *so);
                float inv = 1.0f / sum;
                for (int c = 0; c < L; c++) s[c] *= inv;
                for (int c = 0; c < n; c++) so[c] *= inv;
            }
        }
        // O (R,HS) = P_prompt V_prompt + per token P_own V_own
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, R, HS, L, 1.0f, S, L, Vp, (int)ks, 0.0f, O, HS);
        for (int t = 0; t < g; t++) {
            int i = tk[t], n = pos[i] + 1 - L;
            if (n > 0)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, G, HS, n, 1.0f, So + (size_t)t * G * own, own,
                            vc + ((size_t)slot[i] * T + L) * ks + (size_t)kh * HS, (int)ks, 1.0f,
                            O + (size_t)t * G * HS, HS);
            memcpy(out + (size_t)i * qs + (size_t)kh * G * HS, O + (size_t)t * G * HS, (size_t)G * HS * sizeof *O);
        }
        free(Q), free(O), free(S), free(So);
    }
    free(tok);
    free(g0);
}

// Rows at most for which the weights are read in place, each weight read
// once per call for all rows (decoding steps: batch 1 and the few sequences
// of -n and -j); beyond this the tiled sgemm of ops_cpu.c wins (it packs the
// weights once for many rows). Crossovers measured on one AVX-512 thread,
// 896 x 4864: about 24 to 32 rows for f32 weights, 48 for bf16 (which
// sgemm must first convert). (A row's rounding depends on which side of the
// bound its step falls: seeded samples of test_generate that pass at 32
// flip a token at 24 on near-uniform random models.)
#define ROWS_DIRECT_F32 32
#define ROWS_DIRECT_BF16 48

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>

// Decoding one or two rows (bf16 weights) reads each weight row with a
// software prefetch into L2 of the same columns of the next strip's row
// (4 rows on): every line of a strip is then requested one strip ahead,
// the first lines of each row included, which a prefetch a fixed distance
// ahead within the row left to demand misses on short rows (896 columns).
// On one core here, a Qwen2.5-0.5B decode step's products (0.99 GB) went
// from 12.2-13.5 to 14.5-16.0 GB/s (1 KiB ahead in the row before).
#define EO_ROWS 2 // rows_block_eo up to this many input rows

// 16 weights from w + off (f32, or bf16 widened exactly); masked: the
// lanes of m only (the rest 0).
static inline __attribute__((always_inline)) __m512 load_w(const void *w, int bf16, size_t off) {
    if (!bf16) return _mm512_loadu_ps((const float *)w + off);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)w + off));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
static inline __attribute__((always_inline)) __m512 load_w_masked(const void *w, int bf16, size_t off, __mmask16 m) {
    if (!bf16) return _mm512_maskz_loadu_ps(m, (const float *)w + off);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)w + off);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// out[i][o] = x_i . w_o for WB weight rows from o0 and IB input rows from
// i0: WB x IB accumulators in registers, each weight vector loaded once for
// IB rows, f32 arithmetic (the batch-1 path's numerics). Whole vectors,
// then the last C % 16 columns masked.
static inline __attribute__((always_inline)) void rows_block(float *out, const float *inp, const void *w, int bf16,
                                                             int C, int OC, int o0, int i0, const int WB,
                                                             const int IB) {
    __m512 acc[4][12];
    _Pragma("GCC unroll 4") for (int a = 0; a < WB; a++)
        _Pragma("GCC unroll 12") for (int b = 0; b < IB; b++) acc[a][b] = _mm512_setzero_ps();
    const float *x = inp + (size_t)i0 * C;
    int c = 0;
    for (; c + 16 <= C; c += 16) {
        __m512 wv[4];
        _Pragma("GCC unroll 4") for (int a = 0; a < WB; a++) wv[a] = load_w(w, bf16, (size_t)(o0 + a) * C + c);
        _Pragma("GCC unroll 12") for (int b = 0; b < IB; b++) {
            __m512 xv = _mm512_loadu_ps(x + (size_t)b * C + c);
            _Pragma("GCC unroll 4") for (int a = 0; a < WB; a++) acc[a][b] = _mm512_fmadd_ps(wv[a], xv, acc[a][b]);
        }
    }
    if (c < C) {
        __mmask16 m = (__mmask16)((1u << (C - c)) - 1);
        __m512 wv[4];
        _Pragma("GCC unroll 4") for (int a = 0; a < WB; a++) wv[a] = load_w_masked(w, bf16, (size_t)(o0 + a) * C + c, m);
        _Pragma("GCC unroll 12") for (int b = 0; b < IB; b++) {
            __m512 xv = _mm512_maskz_loadu_ps(m, x + (size_t)b * C + c);
            _Pragma("GCC unroll 4") for (int a = 0; a < WB; a++) acc[a][b] = _mm512_fmadd_ps(wv[a], xv, acc[a][b]);
        }
    }
    _Pragma("GCC unroll 4") for (int a = 0; a < WB; a++)
        _Pragma("GCC unroll 12") for (int b = 0; b < IB; b++) out[(size_t)(i0 + b) * OC + o0 + a] = _mm512_reduce_add_ps(acc[a][b]);
}

// The same for bf16 weights at 1 or 2 input rows (decoding), 32 columns a
// step: one 64-byte load holds 32 weights, the even ones widened by a shift
// and the odd ones by a mask, against the input split the same way (xd:
// per 32 columns, the 16 even then the 16 odd values); the last C % 32
// columns as rows_block. Fewer instructions per byte than widening 16 at a
// time (vpmovzxwd), which left one core reading below its bandwidth. Each
// load prefetches the next strip's (above).
static inline __attribute__((always_inline)) void rows_block_eo(float *out, const float *xd, const void *w, int C,
                                                                int OC, int o0, int i0, const int WB, const int IB) {
    const __m512i hi = _mm512_set1_epi32((int)0xFFFF0000u);
    __m512 acc[4][2], acc2[4][2];
    _Pragma("GCC unroll 4") for (int a = 0; a < WB; a++)
        _Pragma("GCC unroll 2") for (int b = 0; b < IB; b++) acc[a][b] = acc2[a][b] = _mm512_setzero_ps();
    const float *x = xd + (size_t)i0 * C;
    int c = 0;
    for (; c + 32 <= C; c += 32) {
        __m512i wv[4];
        _Pragma("GCC unroll 4") for (int a = 0; a < WB; a++) {
            const char *p = (const char *)w + ((size_t)(o0 + a) * C + c) * 2;
            _mm_prefetch(p + (size_t)4 * C * 2, _MM_HINT_T1); // the next strip's same row and columns
            wv[a] = _mm512_loadu_si512((const void *)p);
        }
        _Pragma("GCC unroll 2") for (int b = 0; b < IB; b++) {
            __m512 xe = _mm512_loadu_ps(x + (size_t)b * C + c), xo = _mm512_loadu_ps(x + (size_t)b * C + c + 16);
            _Pragma("GCC unroll 4") for (int a = 0; a < WB; a++) {
                acc[a][b] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(wv[a], 16)), xe, acc[a][b]);
                acc2[a][b] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(wv[a], hi)), xo, acc2[a][b]);
            }
        }
    }
    for (; c < C; c += 16) {
        __mmask16 m = C - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (C - c)) - 1);
        __m512 wv[4];
        _Pragma("GCC unroll 4") for (int a = 0; a < WB; a++) wv[a] = load_w_masked(w, 1, (size_t)(o0 + a) * C + c, m);
        _Pragma("GCC unroll 2") for (int b = 0; b < IB; b++) {
            __m512 xv = _mm512_maskz_loadu_ps(m, x + (size_t)b * C + c);
            _Pragma("GCC unroll 4") for (int a = 0; a < WB; a++) acc[a][b] = _mm512_fmadd_ps(wv[a], xv, acc[a][b]);
        }
    }
    _Pragma("GCC unroll 4") for (int a = 0; a < WB; a++)
        _Pragma("GCC unroll 2") for (int b = 0; b < IB; b++) out[(size_t)(i0 + b) * OC + o0 + a] =
            _mm512_reduce_add_ps(_mm512_add_ps(acc[a][b], acc2[a][b]));
}

// x (N,C) -> xd (N,C) in rows_block_eo's order.
static void split_even_odd(float *xd, const float *x, int N, int C) {
    for (int i = 0; i < N; i++) {
        const float *r = x + (size_t)i * C;
        float *d = xd + (size_t)i * C;
        int c = 0;
        for (; c + 32 <= C; c += 32)
            for (int j = 0; j < 16; j++) d[c + j] = r[c + 2 * j], d[c + 16 + j] = r[c + 2 * j + 1];
        for (; c < C; c++) d[c] = r[c];
    }
}

#define ROWS_BLOCK(WB, IB) rows_block(out, inp, w, bf16, C, OC, o0, i, WB, IB)
// Weight rows [o0, o0 + WB) against input rows [i, i + n): WB x n <= 24
// accumulators (WB 4: n <= 6; WB 2: n <= 12).
static inline __attribute__((always_inline)) void rows_part(float *out, const float *inp, const void *w, int bf16,
                                                            int C, int OC, int o0, int i, int n, const int WB) {
    switch (n) {
    case 1: ROWS_BLOCK(WB, 1); break;
    case 2: ROWS_BLOCK(WB, 2); break;
    case 3: ROWS_BLOCK(WB, 3); break;
    case 4: ROWS_BLOCK(WB, 4); break;
    case 5: ROWS_BLOCK(WB, 5); break;
    case 6: ROWS_BLOCK(WB, 6); break;
    case 7: ROWS_BLOCK(WB < 4 ? WB : 2, 7); break;
    case 8: ROWS_BLOCK(WB < 4 ? WB : 2, 8); break;
    case 9: ROWS_BLOCK(WB < 4 ? WB : 2, 9); break;
    case 10: ROWS_BLOCK(WB < 4 ? WB : 2, 10); break;
    case 11: ROWS_BLOCK(WB < 4 ? WB : 2, 11); break;
    case 12: ROWS_BLOCK(WB < 4 ? WB : 2, 12); break;
    default: break;
    }
}

// inp (N,C), f32 or bf16 weight (OC,C) -> out (N,OC) without bias: threads
// take strips of 4 weight rows. Up to 6 rows: 4 weight rows x N inputs in
// registers; more: 2 weight rows x up to 12 inputs (fewer weight widenings
// per product), the inputs in blocks of 12 as even as they come.
static void rows_direct(float *out, const float *inp, const PqWeight *weight, int N, int C, int OC) {
    int bf16 = weight->dtype == PQ_BF16, ns = (OC + 3) / 4;
    const void *w = weight->data;
    if (bf16 && N <= EO_ROWS) {
        float *xd = pq_xmalloc((size_t)N * C * sizeof *xd);
        split_even_odd(xd, inp, N, C);
#pragma omp parallel for schedule(static) num_threads(pq_cpu_threads())
        for (int s = 0; s < ns; s++) {
            int o0 = 4 * s;
            if (o0 + 4 <= OC) {
                if (N == 1) rows_block_eo(out, xd, w, C, OC, o0, 0, 4, 1);
                else rows_block_eo(out, xd, w, C, OC, o0, 0, 4, 2);
            } else
                for (int o = o0; o < OC; o++) {
                    if (N == 1) rows_block_eo(out, xd, w, C, OC, o, 0, 1, 1);
                    else rows_block_eo(out, xd, w, C, OC, o, 0, 1, 2);
                }
        }
        free(xd);
        return;
    }
    int nb = (N + 11) / 12, per = (N + nb - 1) / nb; // input blocks of <= 12
#pragma omp parallel for schedule(static) num_threads(pq_cpu_threads())
    for (int s = 0; s < ns; s++) {
        int o0 = 4 * s;
        if (N <= 6 && o0 + 4 <= OC) rows_part(out, inp, w, bf16, C, OC, o0, 0, N, 4);
        else if (o0 + 4 <= OC)
            for (int i = 0; i < N; i += per) {
                int n = N - i < per ? N - i : per;
                rows_part(out, inp, w, bf16, C, OC, o0, i, n, 2);
                rows_part(out, inp, w, bf16, C, OC, o0 + 2, i, n, 2);
            }
        else
            for (int o = o0; o < OC; o++)
                for (int i = 0; i < N; i += per) rows_part(out, inp, w, bf16, C, OC, o, i, N - i < per ? N - i : per, 1);
    }
}
#else
// Portable: one weight row at a time against every input row.
static void rows_direct(float *out, const float *inp, const PqWeight *weight, int N, int C, int OC) {
    int bf16 = weight->dtype == PQ_BF16;
#pragma omp parallel num_threads(pq_cpu_threads())
    {
        float *wf = pq_xmalloc((size_t)C * sizeof *wf);
#pragma omp for schedule(static)
        for (int o = 0; o < OC; o++) {
            const float *w = (const float *)weight->data + (size_t)o * C;
            if (bf16) {
                const uint16_t *h = (const uint16_t *)weight->data + (size_t)o * C;
                for (int c = 0; c < C; c++) {
                    uint32_t u = (uint32_t)h[c] << 16;
                    memcpy(&wf[c], &u, 4);
                }
                w = wf;
            }
            for (int i = 0; i < N; i++) {
                const float *x = inp + (size_t)i * C;
                float acc = 0;
#pragma omp simd reduction(+ : acc)
                for (int c = 0; c < C; c++) acc += x[c] * w[c];
                out[(size_t)i * OC + o] = acc;
            }
        }
        free(wf);
    }
}
#endif

// inp (N,C), weight (OC,C), bias (OC) -> out (N,OC). Few rows: the weights
// read in place, once for all rows; else (and f16) ops_cpu.c's tiled sgemm.
// With bf16 products (PQ_PRECISION=bf16), bf16 weights go to ops_cpu.c
// (oneDNN) from 2 rows: AMX tiles read the weights once for all rows at
// about the cost of one (twice as fast as this kernel at 10 rows).
void pq_cpu_linear_rows_forward(float *out, const float *inp, const PqWeight *weight, const float *bias, int N, int C,
                                int OC) {
    if (weight->dtype == PQ_F16 || N > (weight->dtype == PQ_BF16 ? ROWS_DIRECT_BF16 : ROWS_DIRECT_F32) ||
        (N > 1 && weight->dtype == PQ_BF16 && pq_cpu_bf16_products())) {
        pq_cpu_linear_forward(out, inp, weight, bias, N, C, OC);
        return;
    }
    if (N < 1) return;
    rows_direct(out, inp, weight, N, C, OC);
    if (bias)
        for (int i = 0; i < N; i++)
            for (int o = 0; o < OC; o++) out[(size_t)i * OC + o] += bias[o];
}

// ---- the fusions of a decoding step's products: on the CPU, the compositions they name ----

void pq_cpu_linear_rows_group_forward(float *const *out, const float *inp, const PqWeight *w, const float *const *bias,
                                      int n, int N, int C) {
    for (int t = 0; t < n; t++) pq_cpu_linear_rows_forward(out[t], inp, &w[t], bias[t], N, C, w[t].rows);
}

void pq_cpu_gate_up_forward(float *out, float *gate, float *up, const float *inp, const PqWeight *wg,
                            const PqWeight *wu, const float *bg, const float *bu, int N, int C, int H) {
    pq_cpu_linear_rows_forward(gate, inp, wg, bg, N, C, H);
    pq_cpu_linear_rows_forward(up, inp, wu, bu, N, C, H);
    pq_cpu_swiglu_forward(out, gate, up, N, H);
}

void pq_cpu_linear_rows_add_forward(float *x, float *tmp, const float *inp, const PqWeight *w, const float *bias, int N,
                                    int C, int OC) {
    pq_cpu_linear_rows_forward(tmp, inp, w, bias, N, C, OC);
    pq_cpu_residual_forward(x, tmp, (size_t)N * OC);
}

void pq_cpu_mlp_forward(float *x, float *tmp, float *gate, float *up, float *mlp, const float *ln, const PqWeight *wg,
                        const PqWeight *wu, const PqWeight *wd, const float *bg, const float *bu, const float *bd, int N,
                        int C, int H) {
    pq_cpu_gate_up_forward(mlp, gate, up, ln, wg, wu, bg, bu, N, C, H);
    pq_cpu_linear_rows_add_forward(x, tmp, mlp, wd, bd, N, H, C);
}

void pq_cpu_logits_forward(float *logits, const float *h, const PqWeight *lm_head, int N, int C, int V) {
    pq_cpu_linear_rows_forward(logits, h, lm_head, NULL, N, C, V);
}
