// attn_mm.h: causal attention as batched matrix products, for backends whose
// products are fast (tensor cores): the host side (blocks of query rows, the
// key ranges each block sees, the order of the products) shared by the CUDA
// backend (lib/cuda/attention.cu) and the plain-C engines of
// tests/unit/test-attn-mm.c, which check it against ops_cpu.c. Same contract
// as attention_forward/backward (ops.h, ops_grad.h) and their two-range
// forms attention2_*. The algorithm is ops_cpu.c's: per block of query rows,
// S = scale Q K^T over the keys the block sees, a masked softmax, O = P V
// (backward: dP = dO V^T, dS = P (dP - D) scale, dQ = dS K, dK += dS^T Q,
// dV += P^T dO), every head of a block in one batched product.
#ifndef PQ_ATTN_MM_H
#define PQ_ATTN_MM_H

#include <stddef.h>
#include <stdint.h>

// A block of query rows [i0, i0 + nq) and the key columns of its scores S
// (each row of S is ld columns): column c < nA is key A0 + c, column
// nAp + c (c < nB) is key B0 + c and visible only to rows >= it (causal);
// columns [nA, nAp) and [nAp + nB, ld) are padding that keeps the second
// range and the rows aligned to 8 elements. Row i sees key j only when
// window <= 0 or pos[i] - pos[j] <= window.
typedef struct PqAttnBlock {
    int i0, nq, A0, nA, nAp, B0, nB, ld;
} PqAttnBlock;

// The engine: products and small kernels on the backend's memory. Product
// inputs (the converted Q, K, V, dO and the probabilities P, dS) have
// elements of esz bytes (2: bf16 on tensor cores; 4: f32); the rest is f32.
// Strides and leading dimensions count elements.
typedef struct PqAttnEngine {
    int esz;
    // batch times, matrix b at A + b sA etc.: C (m,n) col-major f32 = alpha op(A) op(B) + beta C
    void (*gemm)(int ta, int tb, int m, int n, int k, float alpha, const void *A, int lda, long long sA,
                 const void *B, int ldb, long long sB, float beta, float *C, int ldc, long long sC, int batch);
    // src (N,SH,HS) f32 -> dst (N,NH,HS) esz, dst head h = src head h / (NH / SH)
    void (*expand)(void *dst, const float *src, int N, int NH, int SH, int HS);
    // src (N,NH,HS) -> dst (N,KVH,HS) = the sum of the NH / KVH heads kh G .. kh G + G - 1 of src
    void (*reduce)(float *dst, const float *src, int N, int NH, int KVH, int HS);
    // D (rows) = the dot products of rows of HS of a and b
    void (*rowdot)(float *D, const float *a, const float *b, size_t rows, int HS);
    // block b: S (NH, nq, ld) -> P (NH, nq, ld) = the masked softmax of each row (0 where hidden),
    // lse (N,NH) of the block's rows
    void (*softmax)(void *P, float *lse, const float *S, PqAttnBlock b, const int32_t *pos, int NH, int window);
    // block b: S, dP (NH, nq, ld), lse, D (N,NH) -> P = exp(S - lse), dS = P (dP - D) scale (0 where hidden)
    void (*softmax_bwd)(void *P, void *dS, const float *S, const float *dP, const float *lse, const float *D,
                        PqAttnBlock b, const int32_t *pos, int NH, int window, float scale);
    // scratch buffer slot (PQ_AMM_*) of at least bytes, kept between calls
    void *(*scratch)(int slot, size_t bytes);
    void (*zero)(void *p, size_t bytes);
    void (*download)(void *host, const void *src, size_t bytes);
    // block limits: rows and score elements (NH nq ld) per block (0: PQ_AMM_MAX_ROWS, PQ_AMM_MAX_SCORES)
    int max_rows;
    size_t max_scores;
} PqAttnEngine;

enum { PQ_AMM_Q, PQ_AMM_K, PQ_AMM_V, PQ_AMM_DO, PQ_AMM_S, PQ_AMM_DP, PQ_AMM_P, PQ_AMM_DS, PQ_AMM_DK,
       PQ_AMM_DV, PQ_AMM_D, PQ_AMM_LSE, PQ_AMM_NSLOT };

// At most this many query rows per block, and this many score elements
// (NH nq ld) per block: the forward holds S and P of one block, the
// backward S, dP, P and dS (12 bytes an element in bf16).
#define PQ_AMM_MAX_ROWS 512
#define PQ_AMM_MAX_SCORES ((size_t)32 << 20)

// The blocks over [0, N): runs of rows of one record (a0 == NULL), or with
// equal (a0, a1, b0), with at most max_rows rows and max_scores elements of
// S. pos, a0, a1, b0 are host arrays. Returns the count; *blocks is
// malloc'd; *max_el the largest NH nq ld.
int pq_attn_mm_blocks(PqAttnBlock **blocks, size_t *max_el, const int32_t *pos, const int32_t *a0,
                      const int32_t *a1, const int32_t *b0, int N, int NH, int window, int max_rows,
                      size_t max_scores);

// attention_forward (a0 == NULL) or attention2_forward on engine E; every
// pointer is the engine's memory; lse may be NULL.
void pq_attn_mm_forward(const PqAttnEngine *E, float *out, float *lse, const float *q, const float *k,
                        const float *v, const int32_t *pos, const int32_t *a0, const int32_t *a1, const int32_t *b0,
                        int N, int NH, int KVH, int HS, int window);
// attention_backward (a0 == NULL) or attention2_backward on engine E.
void pq_attn_mm_backward(const PqAttnEngine *E, float *dq, float *dk, float *dv, const float *dout,
                         const float *q, const float *k, const float *v, const float *out, const float *lse,
                         const int32_t *pos, const int32_t *a0, const int32_t *a1, const int32_t *b0, int N,
                         int NH, int KVH, int HS, int window);

// The plain-C engine (host memory), the twin of the CUDA engine's kernels:
// esz 4 computes in f32; esz 2 rounds the product inputs to bf16 and
// accumulates in f32, as tensor cores do. One engine at a time (the element
// size is global); pq_attn_mm_cpu_free releases its scratch.
const PqAttnEngine *pq_attn_mm_cpu(int esz);
void pq_attn_mm_cpu_free(void);
// The CUDA backend's engine (lib/cuda/attention.cu; CUDA builds only): bf16
// products on cuBLAS tensor cores, device memory.
const PqAttnEngine *pq_attn_mm_cuda(void);

#endif
