// ops_act.c: the storage of the scoring and training path's activations
// (f32 or bf16, see ops.h), shared by the CPU and CUDA builds.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

static PqDtype act_dtype = PQ_F32;

void pq_ops_set_act_dtype(PqDtype t) { act_dtype = t == PQ_BF16 ? PQ_BF16 : PQ_F32; }
PqDtype pq_ops_act_dtype(void) { return act_dtype; }
size_t pq_act_size(void) { return act_dtype == PQ_BF16 ? 2 : 4; }
size_t pq_act_bytes(size_t n) { return n * pq_act_size(); }
float *pq_act_at(float *p, size_t n) { return (float *)((char *)p + n * pq_act_size()); }
const float *pq_act_at_c(const float *p, size_t n) { return (const float *)((const char *)p + n * pq_act_size()); }

int pq_ops_act_choose(PqDtype t, char *err, size_t n) {
    const char *v = getenv("PQ_ACTIVATIONS");
    PqDtype want = PQ_F32;
    if (v && *v && strcmp(v, "f32") != 0) {
        if (strcmp(v, "bf16") != 0) {
            snprintf(err, n, "PQ_ACTIVATIONS=%s: expected f32 or bf16", v);
            return -1;
        }
        want = PQ_BF16;
        if (t == PQ_F32) {
            fprintf(stderr, "pq: PQ_ACTIVATIONS=bf16: an f32 model keeps f32 activations\n");
            want = PQ_F32;
        }
    }
    pq_ops_set_act_dtype(want);
    return (int)want;
}
