// lora.c: PEFT initialisation and atomic saving of LoRA adapters (see lora.h).
#include "lora.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "st_write.h"

// (lora->params is backend memory: the values are made on the host and uploaded.)
void pq_lora_init_peft(PqLora *lora, const PqConfig *cfg, uint64_t seed) {
    PqRng rng;
    pq_rng_seed(&rng, seed);
    float *host = pq_xcalloc(lora->n_params ? lora->n_params : 1, sizeof(float));
    for (int l = 0; l < cfg->L; l++)
        for (int j = 0; j < PQ_NLIN; j++) {
            PqLoraAB *ab = &lora->ab[l * PQ_NLIN + j];
            if (!ab->A) continue;
            int in, out;
            pq_lin_shape(cfg, j, &in, &out);
            double bound = 1.0 / sqrt((double)in);
            float *A = host + (ab->A - lora->params); // B stays 0
            for (size_t i = 0; i < (size_t)lora->r * in; i++) A[i] = (float)((2 * pq_rng_uniform(&rng) - 1) * bound);
            (void)out;
        }
    pq_dev_upload(lora->params, host, lora->n_params * sizeof(float));
    free(host);
}

// A host copy of the parameters (backend memory); free it.
static float *params_host(const PqLora *lora) {
    float *h = pq_xmalloc((lora->n_params ? lora->n_params : 1) * sizeof(float));
    pq_dev_download(h, lora->params, lora->n_params * sizeof(float));
    return h;
}

void pq_lora_tensor_name(int l, int j, int ab, char *out, size_t n) {
    snprintf(out, n, "base_model.model.model.layers.%d.%s.lora_%c.weight", l, pq_lin_modules[j], ab ? 'B' : 'A');
}

int pq_lora_write_tensors(const PqLora *lora, const PqConfig *cfg, const float *values, const char *path, PqErr *e) {
    PqStWriter w = {0};
    for (int l = 0; l < cfg->L; l++)
        for (int j = 0; j < PQ_NLIN; j++) {
            const PqLoraAB *ab = &lora->ab[l * PQ_NLIN + j];
            if (!ab->A) continue;
            int in, o;
            pq_lin_shape(cfg, j, &in, &o);
            char name[128];
            pq_lora_tensor_name(l, j, 0, name, sizeof name);
            pq_st_add(&w, name, PQ_F32, 2, (int64_t[]){lora->r, in}, values + (ab->A - lora->params));
            pq_lora_tensor_name(l, j, 1, name, sizeof name);
            pq_st_add(&w, name, PQ_F32, 2, (int64_t[]){o, lora->r}, values + (ab->B - lora->params));
        }
    int rc = pq_st_write(&w, path, e);
    pq_st_writer_free(&w);
    return rc;
}

static int write_file(const char *path, const void *data, size_t len, PqErr *e) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        pq_err(e, "%s: %s", path, strerror(errno));
        return -1;
    }
    int ok = fwrite(data, 1, len, f) == len;
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) ok = 0;
    if (fclose(f) != 0) ok = 0;
    if (!ok) pq_err(e, "%s: write error: %s", path, strerror(errno));
    return ok ? 0 : -1;
}

static void rm_dir(const char *dir) {
    static const char *names[] = {"adapter_config.json", "adapter_model.safetensors", "adapter_model.safetensors.tmp"};
    PqBuf p = {0};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        pq_buf_clear(&p);
        pq_buf_printf(&p, "%s/%s", dir, names[i]);
        unlink(p.data);
    }
    pq_buf_free(&p);
    rmdir(dir);
}

static char *config_json(const PqLora *lora, const char *base, float dropout) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "alpha_pattern", cJSON_CreateObject());
    cJSON_AddNullToObject(o, "auto_mapping");
    cJSON_AddStringToObject(o, "base_model_name_or_path", base ? base : "");
    cJSON_AddStringToObject(o, "bias", "none");
    cJSON_AddBoolToObject(o, "fan_in_fan_out", 0);
    cJSON_AddBoolToObject(o, "inference_mode", 1);
    cJSON_AddBoolToObject(o, "init_lora_weights", 1);
    cJSON_AddNullToObject(o, "layers_pattern");
    cJSON_AddNullToObject(o, "layers_to_transform");
    cJSON_AddNumberToObject(o, "lora_alpha", lora->alpha);
    char d[32];
    snprintf(d, sizeof d, "%.9g", dropout);
    cJSON_AddItemToObject(o, "lora_dropout", cJSON_CreateRaw(d));
    cJSON_AddNullToObject(o, "modules_to_save");
    cJSON_AddStringToObject(o, "peft_type", "LORA");
    cJSON_AddNumberToObject(o, "r", lora->r);
    cJSON_AddItemToObject(o, "rank_pattern", cJSON_CreateObject());
    cJSON_AddNullToObject(o, "revision");
    cJSON *tm = cJSON_AddArrayToObject(o, "target_modules");
    for (int j = 0; j < PQ_NLIN; j++) {
        if (!(lora->targets >> j & 1)) continue;
        const char *mod = strchr(pq_lin_modules[j], '.') + 1; // "q_proj"
        cJSON_AddItemToArray(tm, cJSON_CreateString(mod));
    }
    cJSON_AddStringToObject(o, "task_type", "CAUSAL_LM");
    cJSON_AddBoolToObject(o, "use_dora", 0);
    cJSON_AddBoolToObject(o, "use_rslora", 0);
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    return s;
}

int pq_lora_save(const PqLora *lora, const PqConfig *cfg, const char *base, float dropout, const char *dir,
                 const PqLoraExtra *extras, int n_extras, PqErr *e) {
    PqBuf tmp = {0}, old = {0}, p = {0};
    pq_buf_printf(&tmp, "%s.tmp%ld", dir, (long)getpid());
    pq_buf_printf(&old, "%s.old%ld", dir, (long)getpid());
    int rc = -1;
    char *js = NULL;
    for (int i = 0; i < n_extras; i++) { // leftovers of an interrupted save
        pq_buf_clear(&p);
        pq_buf_printf(&p, "%s/%s", tmp.data, extras[i].name);
        unlink(p.data);
    }
    rm_dir(tmp.data);
    if (mkdir(tmp.data, 0755) != 0) {
        pq_err(e, "%s: %s", tmp.data, strerror(errno));
        goto out;
    }
    pq_buf_clear(&p);
    pq_buf_printf(&p, "%s/adapter_model.safetensors", tmp.data);
    float *hp = params_host(lora);
    int wrc = pq_lora_write_tensors(lora, cfg, hp, p.data, e);
    free(hp);
    if (wrc != 0) goto fail;
    js = config_json(lora, base, dropout);
    pq_buf_clear(&p);
    pq_buf_printf(&p, "%s/adapter_config.json", tmp.data);
    if (write_file(p.data, js, strlen(js), e) != 0) goto fail;
    for (int i = 0; i < n_extras; i++) {
        pq_buf_clear(&p);
        pq_buf_printf(&p, "%s/%s", tmp.data, extras[i].name);
        if (write_file(p.data, extras[i].data, extras[i].len, e) != 0) goto fail;
    }
    // swap: dir -> old, tmp -> dir, remove old
    struct stat sb;
    int had = stat(dir, &sb) == 0;
    if (had && rename(dir, old.data) != 0) {
        pq_err(e, "rename %s: %s", dir, strerror(errno));
        goto fail;
    }
    if (rename(tmp.data, dir) != 0) {
        pq_err(e, "rename %s: %s", tmp.data, strerror(errno));
        if (had) rename(old.data, dir);
        goto fail;
    }
    if (had) {
        for (int i = 0; i < n_extras; i++) {
            pq_buf_clear(&p);
            pq_buf_printf(&p, "%s/%s", old.data, extras[i].name);
            unlink(p.data);
        }
        rm_dir(old.data);
    }
    rc = 0;
    goto out;
fail:
    for (int i = 0; i < n_extras; i++) {
        pq_buf_clear(&p);
        pq_buf_printf(&p, "%s/%s", tmp.data, extras[i].name);
        unlink(p.data);
    }
    rm_dir(tmp.data);
out:
    free(js);
    pq_buf_free(&p);
    pq_buf_free(&old);
    pq_buf_free(&tmp);
    return rc;
}

// ---- merging into the base model ----

typedef struct MergeCtx {
    const PqModel *m;
    const PqLora *lora;
    const float *hp; // host copy of lora->params
} MergeCtx;

// The tensor of st index t->id in t->dtype, with the LoRA product added when
// it is an adapted linear (model.layers.<l>.<module>.weight).
static int merge_fill(void *ctx, const PqStTensor *t, void *buf, PqErr *e) {
    const MergeCtx *x = ctx;
    const PqTensorInfo *ti = &x->m->st->t[t->id];
    int rows = ti->ndim == 2 ? (int)ti->shape[0] : 1;
    size_t cols = 1;
    for (int d = ti->ndim == 2 ? 1 : 0; d < ti->ndim; d++) cols *= (size_t)ti->shape[d];
    PqWeight w = {ti->data, ti->dtype, rows, (int)cols};
    const PqLoraAB *ab = NULL;
    int l, n = 0;
    if (sscanf(ti->name, "model.layers.%d.%n", &l, &n) == 1 && n > 0 && l >= 0 && l < x->m->cfg.L)
        for (int j = 0; j < PQ_NLIN; j++) {
            size_t k = strlen(pq_lin_modules[j]);
            if (strncmp(ti->name + n, pq_lin_modules[j], k) == 0 && strcmp(ti->name + n + k, ".weight") == 0 &&
                x->lora->ab[l * PQ_NLIN + j].A)
                ab = &x->lora->ab[l * PQ_NLIN + j];
        }
    int r = x->lora->r;
    float sc = x->lora->scale;
    if (ab && ti->ndim != 2) {
        pq_err(e, "%s: not a matrix", ti->name);
        return -1;
    }
#pragma omp parallel
    {
        float *row = pq_xmalloc(cols * sizeof(float));
#pragma omp for schedule(static)
        for (int i = 0; i < rows; i++) {
            pq_weight_row(&w, i, row);
            if (ab)
                for (int k = 0; k < r; k++) {
                    float b = sc * x->hp[(ab->B - x->lora->params) + (size_t)i * r + k];
                    const float *a = x->hp + (ab->A - x->lora->params) + (size_t)k * cols;
                    for (size_t c = 0; c < cols; c++) row[c] += b * a[c];
                }
            size_t o = (size_t)i * cols;
            if (t->dtype == PQ_F32) memcpy((float *)buf + o, row, cols * sizeof(float));
            else
                for (size_t c = 0; c < cols; c++)
                    ((uint16_t *)buf)[o + c] = t->dtype == PQ_BF16 ? pq_f32_to_bf16(row[c]) : pq_f32_to_f16(row[c]);
        }
        free(row);
    }
    return 0;
}

static int copy_file(const char *from, const char *to, PqErr *e) {
    size_t len;
    char *d = pq_read_file(from, &len, e);
    if (!d) return -1;
    int rc = write_file(to, d, len, e);
    free(d);
    return rc;
}

int pq_lora_merge(const PqModel *m, const PqLora *lora, PqDtype dtype, const char *out_dir, PqErr *e) {
    PqBuf tmp = {0}, p = {0}, q = {0};
    pq_buf_printf(&tmp, "%s.tmp%ld", out_dir, (long)getpid());
    int rc = -1;
    PqStWriter w = {0};
    DIR *dir = NULL;
    float *hp = NULL;
    struct stat sb;
    if (stat(out_dir, &sb) == 0) {
        pq_err(e, "%s already exists", out_dir);
        goto out;
    }
    if (mkdir(tmp.data, 0755) != 0) {
        pq_err(e, "%s: %s", tmp.data, strerror(errno));
        goto out;
    }
    for (int i = 0; i < m->st->n_tensors; i++) {
        const PqTensorInfo *ti = &m->st->t[i];
        pq_st_add(&w, ti->name, dtype, ti->ndim, ti->shape, NULL);
        w.t[w.n - 1].id = i;
    }
    hp = params_host(lora);
    MergeCtx ctx = {m, lora, hp};
    pq_buf_printf(&p, "%s/model.safetensors", tmp.data);
    if (pq_st_write_stream(&w, p.data, merge_fill, &ctx, e)) goto fail;
    // the other files of the model directory: config (torch_dtype updated), tokenizer, ...
    if (!(dir = opendir(m->dir))) {
        pq_err(e, "%s: %s", m->dir, strerror(errno));
        goto fail;
    }
    struct dirent *de;
    while ((de = readdir(dir))) {
        const char *nm = de->d_name;
        size_t k = strlen(nm);
        if (nm[0] == '.' || (k > 12 && strcmp(nm + k - 12, ".safetensors") == 0) ||
            strcmp(nm, "model.safetensors.index.json") == 0)
            continue;
        pq_buf_clear(&p);
        pq_buf_printf(&p, "%s/%s", m->dir, nm);
        if (stat(p.data, &sb) != 0 || !S_ISREG(sb.st_mode)) continue;
        pq_buf_clear(&q);
        pq_buf_printf(&q, "%s/%s", tmp.data, nm);
        if (strcmp(nm, "config.json") == 0) {
            char *text = pq_read_file(p.data, NULL, e);
            if (!text) goto fail;
            cJSON *o = cJSON_Parse(text);
            free(text);
            if (!o) {
                pq_err(e, "%s: not JSON", p.data);
                goto fail;
            }
            cJSON_DeleteItemFromObjectCaseSensitive(o, "torch_dtype");
            cJSON_AddStringToObject(o, "torch_dtype",
                                    dtype == PQ_BF16 ? "bfloat16" : dtype == PQ_F16 ? "float16" : "float32");
            char *js = cJSON_Print(o);
            cJSON_Delete(o);
            int r2 = write_file(q.data, js, strlen(js), e);
            free(js);
            if (r2) goto fail;
        } else if (copy_file(p.data, q.data, e)) {
            goto fail;
        }
    }
    if (rename(tmp.data, out_dir) != 0) {
        pq_err(e, "rename %s: %s", out_dir, strerror(errno));
        goto fail;
    }
    rc = 0;
    goto out;
fail: { // remove the temporary directory and what it holds
    DIR *d2 = opendir(tmp.data);
    struct dirent *de2;
    while (d2 && (de2 = readdir(d2))) {
        if (de2->d_name[0] == '.') continue;
        pq_buf_clear(&q);
        pq_buf_printf(&q, "%s/%s", tmp.data, de2->d_name);
        unlink(q.data);
    }
    if (d2) closedir(d2);
    rmdir(tmp.data);
}
out:
    if (dir) closedir(dir);
    free(hp);
    pq_st_writer_free(&w);
    pq_buf_free(&q);
    pq_buf_free(&p);
    pq_buf_free(&tmp);
    return rc;
}
