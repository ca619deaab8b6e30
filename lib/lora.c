// lora.c: PEFT initialisation and atomic saving of LoRA adapters (see lora.h).
#include "lora.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "st_write.h"

void pq_lora_init_peft(PqLora *lora, const PqConfig *cfg, uint64_t seed) {
    PqRng rng;
    pq_rng_seed(&rng, seed);
    for (int l = 0; l < cfg->L; l++)
        for (int j = 0; j < PQ_NLIN; j++) {
            PqLoraAB *ab = &lora->ab[l * PQ_NLIN + j];
            if (!ab->A) continue;
            int in, out;
            pq_lin_shape(cfg, j, &in, &out);
            double bound = 1.0 / sqrt((double)in);
            for (size_t i = 0; i < (size_t)lora->r * in; i++) ab->A[i] = (float)((2 * pq_rng_uniform(&rng) - 1) * bound);
            memset(ab->B, 0, (size_t)out * lora->r * sizeof(float));
        }
}

void pq_lora_tensor_name(int l, int j, int ab, char *out, size_t n) {
    snprintf(out, n, "base_model.model.model.layers.%d.%s.lora_%c.weight", l, pq_lin_modules[j], ab ? 'B' : 'A');
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
    PqStWriter w = {0};
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
    for (int l = 0; l < cfg->L; l++)
        for (int j = 0; j < PQ_NLIN; j++) {
            const PqLoraAB *ab = &lora->ab[l * PQ_NLIN + j];
            if (!ab->A) continue;
            int in, o;
            pq_lin_shape(cfg, j, &in, &o);
            char name[128];
            pq_lora_tensor_name(l, j, 0, name, sizeof name);
            pq_st_add(&w, name, PQ_F32, 2, (int64_t[]){lora->r, in}, ab->A);
            pq_lora_tensor_name(l, j, 1, name, sizeof name);
            pq_st_add(&w, name, PQ_F32, 2, (int64_t[]){o, lora->r}, ab->B);
        }
    pq_buf_printf(&p, "%s/adapter_model.safetensors", tmp.data);
    if (pq_st_write(&w, p.data, e) != 0) goto fail;
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
    pq_st_writer_free(&w);
    pq_buf_free(&p);
    pq_buf_free(&old);
    pq_buf_free(&tmp);
    return rc;
}
