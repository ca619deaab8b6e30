// safetensors.h: reading .safetensors files (memory-mapped, never copied),
// single or sharded through model.safetensors.index.json.
#ifndef PQ_SAFETENSORS_H
#define PQ_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "ops.h"
#include "util.h"

typedef struct PqTensorInfo {
    char *name;
    PqDtype dtype;
    int ndim;
    int64_t shape[4];
    const void *data; // into the mapping
    size_t nbytes;
    int file;         // index into the set's files
} PqTensorInfo;

typedef struct PqSafetensors {
    int n_files;
    char **paths;
    void **maps;
    size_t *map_len;
    int n_tensors;
    PqTensorInfo *t;
} PqSafetensors;

// Opens one file (path) and adds its tensors to st (st zeroed first time).
int pq_safetensors_add_file(PqSafetensors *st, const char *path, PqErr *e);
// Opens a model directory: model.safetensors.index.json (every shard it
// names must exist and hold the tensors the index says) or else
// model.safetensors. Returns NULL with a message.
PqSafetensors *pq_safetensors_open_dir(const char *dir, PqErr *e);
PqSafetensors *pq_safetensors_open(const char *path, PqErr *e);
void pq_safetensors_free(PqSafetensors *st);
const PqTensorInfo *pq_safetensors_find(const PqSafetensors *st, const char *name);
// Finds name and checks it is 2-D (rows, cols) (or 1-D when rows == 0)
// with one of the dtypes pq handles; fills w. -1 with a message otherwise.
int pq_safetensors_weight(const PqSafetensors *st, const char *name, int rows, int cols, PqWeight *w, PqErr *e);

// (Writing: st_write.h.)

#endif
