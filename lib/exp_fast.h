// exp_fast.h: a vectorizable exp for the CPU engine's softmaxes and SiLU
// (ops_cpu.c, ops_gen_cpu.c).
#ifndef PQ_EXP_FAST_H
#define PQ_EXP_FAST_H

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

#endif
