// st_write.h: writes safetensors files (f32, bf16, f16 tensors) for LoRA
// adapters and merged models; the file is written under a temporary name
// and renamed into place, so a reader never sees half a file.
#ifndef PQ_ST_WRITE_H
#define PQ_ST_WRITE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ops.h"
#include "util.h"

// dtypes: PqDtype of ops.h (PQ_F32, PQ_F16, PQ_BF16)


typedef struct PqStTensor {
    char *name;
    PqDtype dtype;      // as stored in the file
    int ndim;
    int64_t shape[4];
    const void *data;   // already in dtype, not owned
    void *owned;        // data the writer converted and frees
    int id;             // the caller's, for pq_st_write_stream
} PqStTensor;

typedef struct PqStWriter {
    PqStTensor *t;
    int n, cap;
} PqStWriter;

// Adds a tensor whose data (in dtype) stays valid until pq_st_write.
void pq_st_add(PqStWriter *w, const char *name, PqDtype dtype, int ndim, const int64_t *shape, const void *data);
// Adds f32 data converted to dtype (copied).
void pq_st_add_f32(PqStWriter *w, const char *name, PqDtype dtype, int ndim, const int64_t *shape, const float *data);
// Writes path (tensors sorted by name, header padded to 8 bytes, metadata
// {"format":"pt"}) via path.tmp + rename. 0 or -1 with a message.
int pq_st_write(PqStWriter *w, const char *path, PqErr *e);
// Streaming: tensors added with data NULL (and an id) are produced one at
// a time by fill(ctx, tensor, buf) into buf (its size in bytes), so a whole
// model is never held in memory. fill returns 0 or -1 with a message.
typedef int (*PqStFill)(void *ctx, const PqStTensor *t, void *buf, PqErr *e);
int pq_st_write_stream(PqStWriter *w, const char *path, PqStFill fill, void *ctx, PqErr *e);
void pq_st_writer_free(PqStWriter *w);

// round to nearest even, NaN stays NaN; inline, so conversion loops vectorise
static inline uint16_t pq_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}
uint16_t pq_f32_to_f16(float f);

#endif
