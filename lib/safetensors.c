// safetensors.c: memory-mapped .safetensors reading (8-byte header length,
// JSON header, raw little-endian data), single file or sharded by index.
#include "safetensors.h"

#include "tool.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int parse_dtype(const char *s, PqDtype *t) {
    if (!strcmp(s, "F32")) *t = PQ_F32;
    else if (!strcmp(s, "F16")) *t = PQ_F16;
    else if (!strcmp(s, "BF16")) *t = PQ_BF16;
    else return -1;
    return 0;
}

static const char *base(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

int pq_safetensors_add_file(PqSafetensors *st, const char *path, PqErr *e) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        pq_err(e, "%s: %s", path, strerror(errno));
        return -1;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        pq_err(e, "%s: not a regular file", path);
        close(fd);
        return -1;
    }
    size_t len = (size_t)sb.st_size;
    if (len < 8) {
        pq_err(e, "%s: truncated safetensors file (%zu bytes)", path, len);
        close(fd);
        return -1;
    }
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        pq_err(e, "%s: mmap: %s", path, strerror(errno));
        return -1;
    }
    const unsigned char *p = map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | p[i];
    if (hlen > len - 8 || hlen > (100u << 20)) {
        pq_err(e, "%s: truncated or not a safetensors file (header of %llu bytes in a file of %zu)", path,
               (unsigned long long)hlen, len);
        munmap(map, len);
        return -1;
    }
    cJSON *h = cJSON_ParseWithLength((const char *)p + 8, hlen);
    if (!cJSON_IsObject(h)) {
        pq_err(e, "%s: safetensors header is not a JSON object", path);
        cJSON_Delete(h);
        munmap(map, len);
        return -1;
    }
    const unsigned char *data = p + 8 + hlen;
    size_t dlen = len - 8 - hlen;
    int fi = st->n_files;
    int n_before = st->n_tensors;
    int rc = 0;
    for (cJSON *it = h->child; it; it = it->next) {
        if (!strcmp(it->string, "__metadata__")) continue;
        const char *dt = pq_json_str(it, "dtype");
        cJSON *shape = cJSON_GetObjectItemCaseSensitive(it, "shape");
        cJSON *offs = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
        PqTensorInfo ti = {0};
        if (!dt || !cJSON_IsArray(shape) || !cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2) {
            pq_err(e, "%s: tensor %s: malformed header entry", path, it->string);
            rc = -1;
            break;
        }
        if (parse_dtype(dt, &ti.dtype)) {
            pq_err(e, "%s: tensor %s has dtype %s; pq reads F32, F16 and BF16", path, it->string, dt);
            rc = -1;
            break;
        }
        ti.ndim = cJSON_GetArraySize(shape);
        if (ti.ndim > 4) {
            pq_err(e, "%s: tensor %s has %d dimensions (at most 4)", path, it->string, ti.ndim);
            rc = -1;
            break;
        }
        size_t numel = 1;
        for (int d = 0; d < ti.ndim; d++) {
            cJSON *x = cJSON_GetArrayItem(shape, d);
            if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble > 1e12 ||
                x->valuedouble != floor(x->valuedouble)) {
                pq_err(e, "%s: tensor %s: bad shape", path, it->string);
                rc = -1;
                break;
            }
            ti.shape[d] = (int64_t)x->valuedouble;
            // The product is checked, not wrapped: a wrapped one could match
            // the data offsets and pass for a small tensor.
            if (__builtin_mul_overflow(numel, (size_t)ti.shape[d], &numel) || numel > SIZE_MAX / 8) {
                pq_err(e, "%s: tensor %s: the element count of its shape overflows", path, it->string);
                rc = -1;
                break;
            }
        }
        if (rc) break;
        double o0 = cJSON_GetArrayItem(offs, 0)->valuedouble, o1 = cJSON_GetArrayItem(offs, 1)->valuedouble;
        ti.nbytes = numel * pq_dtype_size(ti.dtype);
        if (!(o0 >= 0 && o1 >= o0 && o1 - o0 == (double)ti.nbytes && o0 == floor(o0))) {
            pq_err(e, "%s: tensor %s: data_offsets do not match its shape and dtype", path, it->string);
            rc = -1;
            break;
        }
        if (o1 > (double)dlen) {
            pq_err(e, "%s: truncated: tensor %s ends at byte %.0f of %zu data bytes", path, it->string, o1, dlen);
            rc = -1;
            break;
        }
        ti.data = data + (size_t)o0;
        ti.name = pq_xstrdup(it->string);
        ti.file = fi;
        st->t = pq_xrealloc(st->t, (size_t)(st->n_tensors + 1) * sizeof *st->t);
        st->t[st->n_tensors++] = ti;
    }
    cJSON_Delete(h);
    if (rc) {
        for (int i = n_before; i < st->n_tensors; i++) free(st->t[i].name);
        st->n_tensors = n_before;
        munmap(map, len);
        return -1;
    }
    st->paths = pq_xrealloc(st->paths, (size_t)(fi + 1) * sizeof *st->paths);
    st->maps = pq_xrealloc(st->maps, (size_t)(fi + 1) * sizeof *st->maps);
    st->map_len = pq_xrealloc(st->map_len, (size_t)(fi + 1) * sizeof *st->map_len);
    st->paths[fi] = pq_xstrdup(path);
    st->maps[fi] = map;
    st->map_len[fi] = len;
    st->n_files++;
    return 0;
}

PqSafetensors *pq_safetensors_open(const char *path, PqErr *e) {
    PqSafetensors *st = pq_xcalloc(1, sizeof *st);
    if (pq_safetensors_add_file(st, path, e)) {
        pq_safetensors_free(st);
        return NULL;
    }
    return st;
}

PqSafetensors *pq_safetensors_open_dir(const char *dir, PqErr *e) {
    PqBuf p = {0};
    pq_buf_printf(&p, "%s/model.safetensors.index.json", dir);
    PqSafetensors *st = pq_xcalloc(1, sizeof *st);
    if (access(p.data, F_OK) != 0) {
        pq_buf_clear(&p);
        pq_buf_printf(&p, "%s/model.safetensors", dir);
        if (access(p.data, F_OK) != 0) {
            pq_err(e, "%s: no model.safetensors or model.safetensors.index.json", dir);
            goto fail;
        }
        if (pq_safetensors_add_file(st, p.data, e)) goto fail;
        pq_buf_free(&p);
        return st;
    }
    char *text = pq_read_file(p.data, NULL, e);
    if (!text) goto fail;
    cJSON *idx = cJSON_Parse(text);
    free(text);
    cJSON *wm = cJSON_GetObjectItemCaseSensitive(idx, "weight_map");
    if (!cJSON_IsObject(wm)) {
        pq_err(e, "%s: no \"weight_map\" object", p.data);
        cJSON_Delete(idx);
        goto fail;
    }
    // Open each shard once, in order of first mention.
    for (cJSON *it = wm->child; it; it = it->next) {
        if (!cJSON_IsString(it) || strchr(it->valuestring, '/')) {
            pq_err(e, "%s: bad shard name for %s", p.data, it->string);
            cJSON_Delete(idx);
            goto fail;
        }
        int seen = 0;
        for (int f = 0; f < st->n_files; f++)
            if (!strcmp(base(st->paths[f]), it->valuestring)) seen = 1;
        if (seen) continue;
        PqBuf sp = {0};
        pq_buf_printf(&sp, "%s/%s", dir, it->valuestring);
        int rc = pq_safetensors_add_file(st, sp.data, e);
        pq_buf_free(&sp);
        if (rc) {
            cJSON_Delete(idx);
            goto fail;
        }
    }
    // Every tensor of the index is in the shard it names.
    for (cJSON *it = wm->child; it; it = it->next) {
        const PqTensorInfo *t = pq_safetensors_find(st, it->string);
        if (!t || strcmp(base(st->paths[t->file]), it->valuestring)) {
            pq_err(e, "%s: tensor %s is not in %s as the index says", dir, it->string, it->valuestring);
            cJSON_Delete(idx);
            goto fail;
        }
    }
    cJSON_Delete(idx);
    pq_buf_free(&p);
    return st;
fail:
    pq_buf_free(&p);
    pq_safetensors_free(st);
    return NULL;
}

void pq_safetensors_free(PqSafetensors *st) {
    if (!st) return;
    for (int i = 0; i < st->n_tensors; i++) free(st->t[i].name);
    for (int f = 0; f < st->n_files; f++) {
        munmap(st->maps[f], st->map_len[f]);
        free(st->paths[f]);
    }
    free(st->t);
    free(st->paths);
    free(st->maps);
    free(st->map_len);
    free(st);
}

const PqTensorInfo *pq_safetensors_find(const PqSafetensors *st, const char *name) {
    for (int i = 0; i < st->n_tensors; i++)
        if (!strcmp(st->t[i].name, name)) return &st->t[i];
    return NULL;
}

static void shape_str(const PqTensorInfo *t, char *buf, size_t n) {
    size_t k = (size_t)snprintf(buf, n, "(");
    for (int d = 0; d < t->ndim && k < n; d++) k += (size_t)snprintf(buf + k, n - k, d ? ",%lld" : "%lld", (long long)t->shape[d]);
    if (k < n) snprintf(buf + k, n - k, ")");
}

int pq_safetensors_weight(const PqSafetensors *st, const char *name, int rows, int cols, PqWeight *w, PqErr *e) {
    const PqTensorInfo *t = pq_safetensors_find(st, name);
    if (!t) {
        pq_err(e, "tensor %s is missing", name);
        return -1;
    }
    if (rows == 0 ? (t->ndim != 1 || t->shape[0] != cols) : (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols)) {
        char got[128];
        shape_str(t, got, sizeof got);
        if (rows == 0) pq_err(e, "tensor %s has shape %s, expected (%d)", name, got, cols);
        else pq_err(e, "tensor %s has shape %s, expected (%d,%d)", name, got, rows, cols);
        return -1;
    }
    w->data = t->data;
    w->dtype = t->dtype;
    w->rows = rows ? rows : 1;
    w->cols = cols;
    return 0;
}
