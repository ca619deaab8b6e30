// act16.h: bf16 activations in pq_dev_* buffers (pq_act_bytes each), what
// test-lora-bf16.c and tests/gpu/parity_ops.h share: host floats uploaded
// rounded to bf16, and a buffer's bf16 downloaded widened to f32. Included by
// one test file each (statics).
#ifndef PQ_ACT16_H
#define PQ_ACT16_H

#include <stdint.h>
#include <stdlib.h>

#include "ops.h"
#include "st_write.h"
#include "util.h"

// a device activation (bf16) of n host values
static inline float *act16_up(const float *h, size_t n) {
    uint16_t *u = pq_xmalloc((n ? n : 1) * 2);
    for (size_t i = 0; i < n; i++) u[i] = pq_f32_to_bf16(h[i]);
    float *d = pq_dev_alloc(pq_act_bytes(n));
    pq_dev_upload(d, u, n * 2);
    free(u);
    return d;
}

// host f32 of n device bf16
static inline float *act16_down(const float *d, size_t n) {
    uint16_t *u = pq_xmalloc((n ? n : 1) * 2);
    float *h = pq_xmalloc((n ? n : 1) * sizeof *h);
    pq_dev_download(u, d, n * 2);
    for (size_t i = 0; i < n; i++) h[i] = pq_bf16_to_f32(u[i]);
    free(u);
    return h;
}

#endif
