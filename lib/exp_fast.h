// exp_fast.h: a vectorizable exp for the CPU engine's softmaxes and SiLU
// (ops_cpu.c, ops_gen_cpu.c), a softmax over a row's span with it, and a
// vectorizable double log for the sampler's race (ops_paged_cpu.c).
#ifndef PQ_EXP_FAST_H
#define PQ_EXP_FAST_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

// exp(x) to about 1 ulp, branch-free so loops over it vectorize (libm's
// expf does not without -fno-math-errno): x = n ln2 + r (Cody-Waite),
// exp(r) by its Taylor polynomial to r^7 (|r| <= ln2/2), times 2^n built
// in the exponent bits. x is clamped to [-87, 88]: exp(-87) ~ 1.6e-38
// stands for anything smaller.
static inline float pq_exp_fast(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    // n = round(x / ln2) by the 1.5 * 2^23 trick (floorf is a libm call here)
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693145751953125f - n * 1.428606765330187045e-06f;
    float p = 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float sc;
    memcpy(&sc, &bits, 4);
    return p * sc;
}

// x (n) = the softmax of its entries [c0, c1] (inclusive, c0 <= c1), 0 elsewhere: an attention row's visible
// keys (ops_gen_cpu.c, backend_paged_cpu.c).
static inline void pq_softmax_span(float *x, int c0, int c1, int n) {
    float m = -INFINITY, sum = 0;
#pragma omp simd reduction(max : m)
    for (int c = c0; c <= c1; c++) m = x[c] > m ? x[c] : m;
#pragma omp simd reduction(+ : sum)
    for (int c = c0; c <= c1; c++) {
        x[c] = pq_exp_fast(x[c] - m);
        sum += x[c];
    }
    float inv = 1.0f / sum;
#pragma omp simd
    for (int c = c0; c <= c1; c++) x[c] *= inv;
    if (c0 > 0) memset(x, 0, (size_t)c0 * sizeof *x);
    if (c1 + 1 < n) memset(x + c1 + 1, 0, (size_t)(n - c1 - 1) * sizeof *x);
}

// log(x) for a normal, finite x > 0, within a few ulp (tests/unit/test-paged.c measures it against libm's),
// branch-free so loops over it vectorize (libm's log does not): x = 2^e m with m in [sqrt(1/2), sqrt(2)), log m =
// 2 atanh(s) with s = (m - 1) / (m + 1), |s| < 0.172, by its series to s^23 (the next term is below 2^-60 of it),
// plus e ln 2 in two parts. Not for 0, subnormals, infinities or NaN.
static inline double pq_log_fast(double x) {
    uint64_t b;
    memcpy(&b, &x, 8);
    int64_t e = (int64_t)(b >> 52) - 1023;
    uint64_t mb = (b & 0x000fffffffffffffULL) | 0x3ff0000000000000ULL; // m in [1, 2)
    double m;
    memcpy(&m, &mb, 8);
    int up = m > 1.4142135623730951; // then m / 2 and e + 1
    m = up ? m * 0.5 : m;
    double ed = (double)(e + up);
    double s = (m - 1.0) / (m + 1.0), s2 = s * s;
    double p = 1.0 / 23;
    p = p * s2 + 1.0 / 21;
    p = p * s2 + 1.0 / 19;
    p = p * s2 + 1.0 / 17;
    p = p * s2 + 1.0 / 15;
    p = p * s2 + 1.0 / 13;
    p = p * s2 + 1.0 / 11;
    p = p * s2 + 1.0 / 9;
    p = p * s2 + 1.0 / 7;
    p = p * s2 + 1.0 / 5;
    p = p * s2 + 1.0 / 3;
    // ln 2 = 0.693147180369123816490 (hi, exact in 32 bits) + 1.90821492927058770002e-10 (lo)
    return ed * 6.93147180369123816490e-01 + (2.0 * s + 2.0 * s * s2 * p + ed * 1.90821492927058770002e-10);
}

#endif
