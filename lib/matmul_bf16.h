// matmul_bf16.h: bf16 products on the CPU through oneDNN (lib/matmul_bf16.c,
// CPU builds only), for PQ_PRECISION=bf16.
#ifndef PQ_MATMUL_BF16_H
#define PQ_MATMUL_BF16_H

#include <stdint.h>

// out (M,N) f32 = x (M,K) w^T, or += with accumulate; x bf16 row-major;
// w bf16 (N,K) row-major when w_nk, else (K,N). 0, or -1 when oneDNN has no
// such product here (out is then untouched).
int pq_cpu_matmul_bf16(float *out, const uint16_t *x, const uint16_t *w, int M, int N, int K, int w_nk,
                       int accumulate);

#endif
