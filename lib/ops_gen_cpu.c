// ops_gen_cpu.c: the plain-C implementations of ops_gen.h (KV cache append,
// attention of a step's tokens against the cache), the oracle of the CUDA ones.
#include "ops_gen.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

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
                float *s = S + (size_t)a * nk;
                int c0 = lo - j0, c1 = p - j0; // inclusive
                float m = -INFINITY;
                for (int c = c0; c <= c1; c++) m = s[c] > m ? s[c] : m;
                double sum = 0;
                for (int c = 0; c < nk; c++) {
                    if (c < c0 || c > c1) s[c] = 0.0f;
                    else {
                        s[c] = expf(s[c] - m);
                        sum += s[c];
                    }
                }
                float inv = (float)(1.0 / sum);
                for (int c = c0; c <= c1; c++) s[c] *= inv;
            }
            // O (nq,HS) = P (nq,nk) V (nk,HS)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, HS, nk, 1.0f, S, nk, V, (int)ks, 0.0f,
                        out + (size_t)i0 * qs + (size_t)h * HS, (int)qs);
        }
        free(S);
    }
    free(blk);
}

// Rows at most for which bf16 weights are read in place (each row re-reads
// them from cache; beyond this the tiled sgemm of ops_cpu.c wins).
#define ROWS_DIRECT 4

// inp (N,C), weight (OC,C), bias (OC) -> out (N,OC). f32 weights need no
// conversion: ops_cpu.c's sgemm on them directly.
void pq_cpu_linear_rows_forward(float *out, const float *inp, const PqWeight *weight, const float *bias, int N, int C,
                                int OC) {
    if (N > ROWS_DIRECT || weight->dtype == PQ_F16) {
        pq_cpu_linear_forward(out, inp, weight, bias, N, C, OC);
        return;
    }
    if (weight->dtype == PQ_F32) { // sgemv on row blocks: no packing of the weights (sgemm's for one row)
        int nt = pq_cpu_threads(), blk = (OC + nt - 1) / nt;
#pragma omp parallel for num_threads(nt)
        for (int t = 0; t < nt; t++) {
            int r0 = t * blk, n = OC - r0 < blk ? OC - r0 : blk;
            if (n <= 0) continue;
            for (int i = 0; i < N; i++) {
                float *o = out + (size_t)i * OC + r0;
                cblas_sgemv(CblasRowMajor, CblasNoTrans, n, C, 1.0f, (const float *)weight->data + (size_t)r0 * C, C,
                            inp + (size_t)i * C, 1, 0.0f, o, 1);
                if (bias)
                    for (int j = 0; j < n; j++) o[j] += bias[r0 + j];
            }
        }
        return;
    }
#pragma omp parallel for schedule(static) num_threads(pq_cpu_threads())
    for (int o = 0; o < OC; o++) {
        const uint16_t *w = (const uint16_t *)weight->data + (size_t)o * C;
        for (int i = 0; i < N; i++) {
            const float *x = inp + (size_t)i * C;
            float acc = 0;
#pragma omp simd reduction(+ : acc)
            for (int c = 0; c < C; c++) {
                union {
                    uint32_t u;
                    float f;
                } cv = {.u = (uint32_t)w[c] << 16};
                acc += x[c] * cv.f;
            }
            out[(size_t)i * OC + o] = acc + (bias ? bias[o] : 0.0f);
        }
    }
}
