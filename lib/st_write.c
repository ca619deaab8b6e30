// st_write.c: safetensors writer (see st_write.h).
#include "st_write.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *dtype_name[] = {"F32", "F16", "BF16"}; // by PqDtype

uint16_t pq_f32_to_f16(float f) {
    _Float16 h = (_Float16)f;
    uint16_t u;
    memcpy(&u, &h, 2);
    return u;
}

static size_t numel(const PqStTensor *t) {
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= (size_t)t->shape[i];
    return n;
}

static PqStTensor *push(PqStWriter *w, const char *name, PqDtype dtype, int ndim, const int64_t *shape) {
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 64;
        w->t = pq_xrealloc(w->t, (size_t)w->cap * sizeof *w->t);
    }
    PqStTensor *t = &w->t[w->n++];
    memset(t, 0, sizeof *t);
    t->name = pq_xstrdup(name);
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    return t;
}

void pq_st_add(PqStWriter *w, const char *name, PqDtype dtype, int ndim, const int64_t *shape, const void *data) {
    push(w, name, dtype, ndim, shape)->data = data;
}

void pq_st_add_f32(PqStWriter *w, const char *name, PqDtype dtype, int ndim, const int64_t *shape, const float *data) {
    PqStTensor *t = push(w, name, dtype, ndim, shape);
    size_t n = numel(t);
    t->owned = pq_xmalloc(n * pq_dtype_size(dtype) + 1);
    if (dtype == PQ_F32) memcpy(t->owned, data, n * 4);
    else {
        uint16_t *o = t->owned;
        for (size_t i = 0; i < n; i++) o[i] = dtype == PQ_BF16 ? pq_f32_to_bf16(data[i]) : pq_f32_to_f16(data[i]);
    }
    t->data = t->owned;
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const PqStTensor *)a)->name, ((const PqStTensor *)b)->name);
}

int pq_st_write_stream(PqStWriter *w, const char *path, PqStFill fill, void *ctx, PqErr *e) {
    qsort(w->t, (size_t)w->n, sizeof *w->t, cmp_name);
    PqBuf h = {0};
    pq_buf_puts(&h, "{\"__metadata__\":{\"format\":\"pt\"}");
    size_t off = 0;
    for (int i = 0; i < w->n; i++) {
        PqStTensor *t = &w->t[i];
        size_t bytes = numel(t) * pq_dtype_size(t->dtype);
        pq_buf_printf(&h, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t->name, dtype_name[t->dtype]);
        for (int d = 0; d < t->ndim; d++) pq_buf_printf(&h, "%s%lld", d ? "," : "", (long long)t->shape[d]);
        pq_buf_printf(&h, "],\"data_offsets\":[%zu,%zu]}", off, off + bytes);
        off += bytes;
    }
    pq_buf_puts(&h, "}");
    while (h.len % 8) pq_buf_puts(&h, " ");
    PqBuf tmp = {0};
    pq_buf_printf(&tmp, "%s.tmp", path);
    FILE *f = fopen(tmp.data, "wb");
    int rc = -1;
    if (!f) {
        pq_err(e, "%s: %s", tmp.data, strerror(errno));
        goto out;
    }
    uint64_t hl = h.len;
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)(hl >> (8 * i));
    int ok = fwrite(le, 1, 8, f) == 8 && fwrite(h.data, 1, h.len, f) == h.len;
    void *buf = NULL;
    for (int i = 0; ok && i < w->n; i++) {
        size_t bytes = numel(&w->t[i]) * pq_dtype_size(w->t[i].dtype);
        const void *data = w->t[i].data;
        if (!data) {
            buf = pq_xrealloc(buf, bytes + 1);
            if (!fill || fill(ctx, &w->t[i], buf, e) != 0) {
                if (!fill) pq_err(e, "%s: tensor %s has no data", path, w->t[i].name);
                free(buf);
                fclose(f);
                unlink(tmp.data);
                goto out;
            }
            data = buf;
        }
        ok = fwrite(data, 1, bytes, f) == bytes;
    }
    free(buf);
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) ok = 0;
    if (fclose(f) != 0) ok = 0;
    if (!ok) {
        pq_err(e, "%s: write error: %s", tmp.data, strerror(errno));
        unlink(tmp.data);
        goto out;
    }
    if (rename(tmp.data, path) != 0) {
        pq_err(e, "rename %s: %s", path, strerror(errno));
        unlink(tmp.data);
        goto out;
    }
    rc = 0;
out:
    pq_buf_free(&tmp);
    pq_buf_free(&h);
    return rc;
}

int pq_st_write(PqStWriter *w, const char *path, PqErr *e) { return pq_st_write_stream(w, path, NULL, NULL, e); }

void pq_st_writer_free(PqStWriter *w) {
    for (int i = 0; i < w->n; i++) {
        free(w->t[i].name);
        free(w->t[i].owned);
    }
    free(w->t);
    memset(w, 0, sizeof *w);
}
