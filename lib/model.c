// model.c: config.json parsing, loading a Hugging Face Llama/Mistral/Qwen2/Qwen3
// directory onto memory-mapped weights, the forward pass (ops.h), and
// LoRA adapters (built zeroed, or loaded from PEFT's format).
#include "model.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tool.h"

const char *const pq_lin_names[PQ_NLIN] = {"q", "k", "v", "o", "gate", "up", "down"};
const char *const pq_lin_modules[PQ_NLIN] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                             "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                             "mlp.down_proj"};

void pq_lin_shape(const PqConfig *c, int j, int *in, int *out) {
    int qd = c->NH * c->HS, kd = c->KVH * c->HS;
    switch (j) {
    case PQ_Q: *in = c->C, *out = qd; break;
    case PQ_K:
    case PQ_V: *in = c->C, *out = kd; break;
    case PQ_O: *in = qd, *out = c->C; break;
    case PQ_GATE:
    case PQ_UP: *in = c->C, *out = c->H; break;
    default: *in = c->H, *out = c->C; break;
    }
}

// ---- config.json ----

// An integer field in [lo, hi]; def < lo means required.
static int get_int(const cJSON *o, const char *k, long def, long lo, long hi, int *out, PqErr *e) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!x || cJSON_IsNull(x)) {
        if (def < lo) {
            pq_err(e, "config.json: \"%s\" is missing", k);
            return -1;
        }
        *out = (int)def;
        return 0;
    }
    if (!cJSON_IsNumber(x) || x->valuedouble != floor(x->valuedouble) || x->valuedouble < lo ||
        x->valuedouble > hi) {
        pq_err(e, "config.json: \"%s\" must be an integer in [%ld, %ld]", k, lo, hi);
        return -1;
    }
    *out = (int)x->valuedouble;
    return 0;
}

static int get_float(const cJSON *o, const char *k, double def, double lo, double hi, float *out, PqErr *e) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!x || cJSON_IsNull(x)) {
        *out = (float)def;
        return 0;
    }
    if (!cJSON_IsNumber(x) || !(x->valuedouble > lo && x->valuedouble <= hi)) {
        pq_err(e, "config.json: \"%s\" must be a number in (%g, %g]", k, lo, hi);
        return -1;
    }
    *out = (float)x->valuedouble;
    return 0;
}

static int get_bool(const cJSON *o, const char *k, int def) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, k);
    if (cJSON_IsBool(x)) return cJSON_IsTrue(x);
    return def;
}

// Qwen3's sliding window as transformers applies it: only with
// use_sliding_window, on layers >= max_window_layers (or those layer_types
// names "sliding_attention"), over the keys j with i - j < sliding_window.
// c->L must be set.
static int qwen3_window(const cJSON *o, PqConfig *c, PqErr *e) {
    int sw = 0, from = 0;
    if (!get_bool(o, "use_sliding_window", 0)) return 0;
    if (get_int(o, "sliding_window", 0, 0, 1 << 30, &sw, e) ||
        get_int(o, "max_window_layers", 28, 0, 1 << 30, &from, e))
        return -1;
    if (sw == 0) return 0; // null: no window
    if (sw < 2) {
        pq_err(e, "config.json: sliding_window %d is not supported (at least 2)", sw);
        return -1;
    }
    const cJSON *lt = cJSON_GetObjectItemCaseSensitive(o, "layer_types");
    if (lt && !cJSON_IsNull(lt)) {
        // pq slides the layers from one index on: layer_types must say so
        if (!cJSON_IsArray(lt) || cJSON_GetArraySize(lt) != c->L) {
            pq_err(e, "config.json: layer_types must list num_hidden_layers names");
            return -1;
        }
        from = c->L;
        for (int l = 0; l < c->L; l++) {
            const cJSON *x = cJSON_GetArrayItem(lt, l);
            const char *s = cJSON_IsString(x) ? x->valuestring : "";
            int slide = !strcmp(s, "sliding_attention");
            if (!slide && strcmp(s, "full_attention")) {
                pq_err(e, "config.json: layer_types[%d] \"%s\" is not supported", l, s);
                return -1;
            }
            if (slide && from == c->L) from = l;
            if (!slide && from < l) {
                pq_err(e, "config.json: layer_types: a full_attention layer after sliding ones is not supported");
                return -1;
            }
        }
    }
    if (from >= c->L) return 0;
    c->window = sw - 1; // pq's window: i - j <= window
    c->window_from = from;
    return 0;
}

int pq_config_parse(const char *json, PqConfig *c, PqErr *e) {
    memset(c, 0, sizeof *c);
    cJSON *o = cJSON_Parse(json);
    int rc = -1;
    if (!cJSON_IsObject(o)) {
        pq_err(e, "config.json is not a JSON object");
        goto out;
    }
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(o, "architectures");
    const cJSON *a0 = cJSON_IsArray(archs) ? cJSON_GetArrayItem(archs, 0) : NULL;
    const char *arch = cJSON_IsString(a0) ? a0->valuestring : NULL;
    if (!arch) {
        pq_err(e, "config.json: no \"architectures\" (pq supports LlamaForCausalLM, MistralForCausalLM, "
                  "Qwen2ForCausalLM, Qwen3ForCausalLM)");
        goto out;
    }
    if (!strcmp(arch, "LlamaForCausalLM")) c->arch = PQ_ARCH_LLAMA;
    else if (!strcmp(arch, "MistralForCausalLM")) c->arch = PQ_ARCH_MISTRAL;
    else if (!strcmp(arch, "Qwen2ForCausalLM")) c->arch = PQ_ARCH_QWEN2;
    else if (!strcmp(arch, "Qwen3ForCausalLM")) c->arch = PQ_ARCH_QWEN3;
    else {
        pq_err(e,
               "unsupported architecture %s (pq supports LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, "
               "Qwen3ForCausalLM)",
               arch);
        goto out;
    }
    const char *act = pq_json_str(o, "hidden_act");
    if (act && strcmp(act, "silu")) {
        pq_err(e, "config.json: hidden_act %s is not supported (silu only)", act);
        goto out;
    }
    if (get_int(o, "hidden_size", -1, 1, 65536, &c->C, e) || get_int(o, "intermediate_size", -1, 1, 1 << 20, &c->H, e) ||
        get_int(o, "num_attention_heads", -1, 1, 1024, &c->NH, e) ||
        get_int(o, "num_hidden_layers", -1, 1, 1024, &c->L, e) || get_int(o, "vocab_size", -1, 1, 1 << 23, &c->V, e) ||
        get_int(o, "num_key_value_heads", c->NH, 1, c->NH, &c->KVH, e) ||
        get_int(o, "max_position_embeddings", 2048, 1, 1 << 30, &c->max_pos, e))
        goto out;
    if (c->NH % c->KVH) {
        pq_err(e, "config.json: num_attention_heads %d is not a multiple of num_key_value_heads %d", c->NH, c->KVH);
        goto out;
    }
    // Qwen3's head_dim defaults to 128 (its config class), not hidden_size / heads
    if (get_int(o, "head_dim", c->arch == PQ_ARCH_QWEN3 ? 128 : c->C / c->NH, 2, 1024, &c->HS, e)) goto out;
    if (c->HS % 2 ||
        (!cJSON_GetObjectItemCaseSensitive(o, "head_dim") && c->arch != PQ_ARCH_QWEN3 && c->C % c->NH)) {
        pq_err(e, "config.json: head size %d (hidden_size / num_attention_heads) must be a whole even number", c->HS);
        goto out;
    }
    if (get_float(o, "rms_norm_eps", 1e-6, 0, 1, &c->eps, e) || get_float(o, "rope_theta", 10000, 0, 1e12, &c->rope_theta, e))
        goto out;
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(o, "rope_scaling");
    if (rs && !cJSON_IsNull(rs)) {
        const char *ty = pq_json_str(rs, "rope_type");
        if (!ty) ty = pq_json_str(rs, "type");
        if (!ty || (strcmp(ty, "llama3") && strcmp(ty, "default"))) {
            pq_err(e, "config.json: rope_scaling type %s is not supported (llama3 only)", ty ? ty : "(none)");
            goto out;
        }
        if (!strcmp(ty, "llama3")) {
            c->rope_llama3 = 1;
            if (get_float(rs, "factor", 8, 0, 1e6, &c->rope_factor, e) ||
                get_float(rs, "low_freq_factor", 1, 0, 1e6, &c->rope_low_freq_factor, e) ||
                get_float(rs, "high_freq_factor", 4, 0, 1e6, &c->rope_high_freq_factor, e) ||
                get_int(rs, "original_max_position_embeddings", 8192, 1, 1 << 30, &c->rope_orig_max_pos, e))
                goto out;
            if (!(c->rope_high_freq_factor > c->rope_low_freq_factor)) {
                pq_err(e, "config.json: rope_scaling high_freq_factor must exceed low_freq_factor");
                goto out;
            }
        }
    }
    c->tie = get_bool(o, "tie_word_embeddings", 0);
    if (c->arch == PQ_ARCH_QWEN2) c->qkv_bias = 1;
    if ((c->arch == PQ_ARCH_LLAMA || c->arch == PQ_ARCH_QWEN3) && get_bool(o, "attention_bias", 0))
        c->qkv_bias = c->o_bias = 1;
    if (c->arch == PQ_ARCH_QWEN3) {
        c->qk_norm = 1;
        if (qwen3_window(o, c, e)) goto out;
    }
    if (get_bool(o, "mlp_bias", 0)) {
        pq_err(e, "config.json: mlp_bias is not supported");
        goto out;
    }
    if (c->arch == PQ_ARCH_MISTRAL) {
        if (get_int(o, "sliding_window", 0, 0, 1 << 30, &c->window, e)) goto out;
    }
    if (c->arch == PQ_ARCH_QWEN2 && get_bool(o, "use_sliding_window", 0)) {
        pq_err(e, "config.json: Qwen2 use_sliding_window true is not supported");
        goto out;
    }
    rc = 0;
out:
    cJSON_Delete(o);
    return rc;
}

// ---- loading ----

// inv_freq (HS/2) as HF computes it, with llama3 scaling.
static void rope_freqs(const PqConfig *c, float *f) {
    int half = c->HS / 2;
    for (int d = 0; d < half; d++) {
        float ex = (float)(2 * d) / (float)c->HS;
        float inv = 1.0f / (float)pow((double)c->rope_theta, (double)ex);
        if (c->rope_llama3) {
            double old = c->rope_orig_max_pos, lf = c->rope_low_freq_factor, hf = c->rope_high_freq_factor;
            double wl = 2 * M_PI / inv, low_wl = old / lf, high_wl = old / hf, fac = c->rope_factor;
            if (wl > low_wl) inv = (float)(inv / fac);
            else if (wl >= high_wl) {
                double sm = (old / wl - lf) / (hf - lf);
                inv = (float)((1 - sm) * inv / fac + sm * inv);
            }
        }
        f[d] = inv;
    }
}

// A small weight (norm or bias) as an f32 copy carved from the arena.
static int small_vec(const PqSafetensors *st, const char *name, int n, float **arena, const float **out, PqErr *e) {
    PqWeight w;
    if (pq_safetensors_weight(st, name, 0, n, &w, e)) return -1;
    float *dst = *arena;
    *arena += n;
    float *tmp = pq_xmalloc((size_t)n * sizeof *tmp);
    pq_weight_row(&w, 0, tmp);
    pq_dev_upload(dst, tmp, (size_t)n * sizeof *tmp);
    free(tmp);
    *out = dst;
    return 0;
}

PqModel *pq_model_load(const char *dir, PqErr *e) {
    PqBuf p = {0};
    pq_buf_printf(&p, "%s/config.json", dir);
    char *text = pq_read_file(p.data, NULL, e);
    pq_buf_free(&p);
    if (!text) return NULL;
    PqModel *m = pq_xcalloc(1, sizeof *m);
    int rc = pq_config_parse(text, &m->cfg, e);
    free(text);
    if (rc) {
        char msg[sizeof e->msg];
        snprintf(msg, sizeof msg, "%s", e->msg);
        pq_err(e, "%s: %s", dir, msg);
        free(m);
        return NULL;
    }
    m->dir = pq_xstrdup(dir);
    PqConfig *c = &m->cfg;
    m->st = pq_safetensors_open_dir(dir, e);
    if (!m->st) goto fail;
    // norms (2L+1) and biases
    size_t n_small = (size_t)(2 * c->L + 1) * c->C;
    if (c->qkv_bias) n_small += (size_t)c->L * (c->NH + 2 * c->KVH) * c->HS;
    if (c->o_bias) n_small += (size_t)c->L * c->C;
    if (c->qk_norm) n_small += (size_t)c->L * 2 * c->HS;
    m->small = pq_dev_alloc(n_small * sizeof(float));
    float *arena = m->small;
    m->layers = pq_xcalloc((size_t)c->L, sizeof *m->layers);
    char name[256];
    if (pq_safetensors_weight(m->st, "model.embed_tokens.weight", c->V, c->C, &m->wte, e)) goto fail_t;
    c->dtype = m->wte.dtype;
    if (c->tie) m->lm_head = m->wte;
    else if (pq_safetensors_weight(m->st, "lm_head.weight", c->V, c->C, &m->lm_head, e)) goto fail_t;
    if (small_vec(m->st, "model.norm.weight", c->C, &arena, &m->ln_f, e)) goto fail_t;
    for (int l = 0; l < c->L; l++) {
        PqLayerW *L = &m->layers[l];
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        if (small_vec(m->st, name, c->C, &arena, &L->ln1, e)) goto fail_t;
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        if (small_vec(m->st, name, c->C, &arena, &L->ln2, e)) goto fail_t;
        if (c->qk_norm) {
            snprintf(name, sizeof name, "model.layers.%d.self_attn.q_norm.weight", l);
            if (small_vec(m->st, name, c->HS, &arena, &L->q_norm, e)) goto fail_t;
            snprintf(name, sizeof name, "model.layers.%d.self_attn.k_norm.weight", l);
            if (small_vec(m->st, name, c->HS, &arena, &L->k_norm, e)) goto fail_t;
        }
        for (int j = 0; j < PQ_NLIN; j++) {
            int in, out;
            pq_lin_shape(c, j, &in, &out);
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, pq_lin_modules[j]);
            if (pq_safetensors_weight(m->st, name, out, in, &L->w[j], e)) goto fail_t;
            if ((j <= PQ_V && c->qkv_bias) || (j == PQ_O && c->o_bias)) {
                snprintf(name, sizeof name, "model.layers.%d.%s.bias", l, pq_lin_modules[j]);
                if (small_vec(m->st, name, out, &arena, &L->b[j], e)) goto fail_t;
            }
        }
    }
    // weights to the backend (no-op on the CPU), attention in their precision
    pq_ops_set_attention_dtype(c->dtype);
    m->wte = pq_dev_weight(m->wte);
    m->lm_head = c->tie ? m->wte : pq_dev_weight(m->lm_head);
    for (int l = 0; l < c->L; l++) {
        pq_dev_weights(&m->layers[l].w[PQ_Q], 3);    // q, k, v together (linear_group_forward)
        pq_dev_weights(&m->layers[l].w[PQ_GATE], 2); // gate, up likewise
        m->layers[l].w[PQ_O] = pq_dev_weight(m->layers[l].w[PQ_O]);
        m->layers[l].w[PQ_DOWN] = pq_dev_weight(m->layers[l].w[PQ_DOWN]);
    }
    float *f = pq_xmalloc((size_t)(c->HS / 2) * sizeof *f);
    rope_freqs(c, f);
    m->inv_freq = pq_dev_alloc((size_t)(c->HS / 2) * sizeof *f);
    pq_dev_upload(m->inv_freq, f, (size_t)(c->HS / 2) * sizeof *f);
    free(f);
    return m;
fail_t: {
    char msg[sizeof e->msg];
    snprintf(msg, sizeof msg, "%s", e->msg);
    pq_err(e, "%s: %s", dir, msg);
}
fail:
    free(m->layers);
    m->layers = NULL;
    pq_dev_free(m->small);
    pq_safetensors_free(m->st);
    free(m->dir);
    free(m);
    return NULL;
}

void pq_model_free(PqModel *m) {
    if (!m) return;
    if (m->layers) {
        for (int l = 0; l < m->cfg.L; l++)
            for (int j = 0; j < PQ_NLIN; j++) pq_dev_weight_free(&m->layers[l].w[j]);
    }
    if (!m->cfg.tie) pq_dev_weight_free(&m->lm_head);
    pq_dev_weight_free(&m->wte);
    free(m->layers);
    pq_dev_free(m->small);
    pq_dev_free(m->inv_freq);
    pq_safetensors_free(m->st);
    free(m->dir);
    free(m);
}

// ---- forward ----

// pq_dev_alloc, counted in a->bytes
static float *acts_alloc(PqLayerActs *a, size_t bytes) {
    a->bytes += bytes;
    return pq_dev_alloc(bytes);
}

PqLayerActs *pq_layer_acts_build(const PqConfig *c, const PqLora *lora, int N) {
    PqLayerActs *a = pq_xcalloc(1, sizeof *a);
    size_t n = (size_t)N, qd = (size_t)c->NH * c->HS, kd = (size_t)c->KVH * c->HS;
    size_t big = (size_t)c->C > qd ? (size_t)c->C : qd;
    if ((size_t)c->H > big) big = (size_t)c->H;
    a->N = N;
    // activations in the process's storage (pq_act_bytes), norms' and attention's statistics and LoRA's xa f32
    a->x_in = acts_alloc(a, pq_act_bytes(n * c->C));
    a->ln1 = acts_alloc(a, pq_act_bytes(n * c->C));
    a->ln1_rstd = acts_alloc(a, n * 4);
    a->q = acts_alloc(a, pq_act_bytes(n * qd));
    a->k = acts_alloc(a, pq_act_bytes(n * kd));
    a->v = acts_alloc(a, pq_act_bytes(n * kd));
    a->att = acts_alloc(a, pq_act_bytes(n * qd));
    a->att_lse = acts_alloc(a, n * c->NH * 4);
    a->x_mid = acts_alloc(a, pq_act_bytes(n * c->C));
    a->ln2 = acts_alloc(a, pq_act_bytes(n * c->C));
    a->ln2_rstd = acts_alloc(a, n * 4);
    a->gate = acts_alloc(a, pq_act_bytes(n * c->H));
    a->up = acts_alloc(a, pq_act_bytes(n * c->H));
    a->mlp = acts_alloc(a, pq_act_bytes(n * c->H));
    a->tmp = acts_alloc(a, pq_act_bytes(n * big));
    if (c->qk_norm) {
        a->q_raw = acts_alloc(a, pq_act_bytes(n * qd));
        a->k_raw = acts_alloc(a, pq_act_bytes(n * kd));
        a->q_rstd = acts_alloc(a, n * c->NH * 4);
        a->k_rstd = acts_alloc(a, n * c->KVH * 4);
    }
    if (lora)
        for (int j = 0; j < PQ_NLIN; j++)
            if (lora->targets >> j & 1) a->lora_xa[j] = acts_alloc(a, n * lora->r * 4);
    return a;
}

void pq_layer_acts_free(PqLayerActs *a) {
    if (!a) return;
    float *p[] = {a->x_in, a->ln1, a->ln1_rstd, a->q, a->k, a->v, a->att, a->att_lse, a->x_mid,
                  a->ln2, a->ln2_rstd, a->gate, a->up, a->mlp, a->tmp, a->q_raw, a->k_raw, a->q_rstd, a->k_rstd};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) pq_dev_free(p[i]);
    for (int j = 0; j < PQ_NLIN; j++) pq_dev_free(a->lora_xa[j]);
    free(a);
}

// out (N,out_j) += the LoRA term of linear j, where it is adapted
static void lin_lora(const PqModel *m, int l, int j, float *out, const float *inp, int N, PqLayerActs *a) {
    int in, oc;
    pq_lin_shape(&m->cfg, j, &in, &oc);
    const PqLora *lo = m->lora;
    if (lo && lo->ab[l * PQ_NLIN + j].A && a->lora_xa[j])
        pq_lora_forward(out, a->lora_xa[j], inp, lo->ab[l * PQ_NLIN + j].A, lo->ab[l * PQ_NLIN + j].B, lo->scale, N,
                        in, oc, lo->r);
}

// out (N,out_j) = inp (N,in_j) W_j^T + b_j (+ the LoRA term)
static void lin(const PqModel *m, int l, int j, float *out, const float *inp, int N, PqLayerActs *a) {
    int in, oc;
    pq_lin_shape(&m->cfg, j, &in, &oc);
    const PqLayerW *w = &m->layers[l];
    pq_linear_forward(out, inp, &w->w[j], w->b[j], N, in, oc);
    lin_lora(m, l, j, out, inp, N, a);
}

// q (into qo), k (into ko), v from ln1 as one product (the weights joined at load), each then with its own
// LoRA term
static void lin_qkv(const PqModel *m, int l, float *qo, float *ko, int N, PqLayerActs *a) {
    const PqLayerW *w = &m->layers[l];
    float *out[3] = {qo, ko, a->v};
    const float *bias[3] = {w->b[PQ_Q], w->b[PQ_K], w->b[PQ_V]};
    pq_linear_group_forward(out, a->ln1, &w->w[PQ_Q], bias, 3, N, m->cfg.C);
    for (int j = PQ_Q; j <= PQ_V; j++) lin_lora(m, l, j, out[j - PQ_Q], a->ln1, N, a);
}

// gate and up from ln2 as one group (the weights joined at load), each then with its own LoRA term
static void lin_gate_up(const PqModel *m, int l, int N, PqLayerActs *a) {
    const PqLayerW *w = &m->layers[l];
    float *out[2] = {a->gate, a->up};
    const float *bias[2] = {w->b[PQ_GATE], w->b[PQ_UP]};
    pq_linear_group_forward(out, a->ln2, &w->w[PQ_GATE], bias, 2, N, m->cfg.C);
    for (int j = PQ_GATE; j <= PQ_UP; j++) lin_lora(m, l, j, out[j - PQ_GATE], a->ln2, N, a);
}

void pq_model_layer_forward(const PqModel *m, int l, float *x, const int32_t *pos, int N, PqLayerActs *a) {
    const PqConfig *c = &m->cfg;
    const PqLayerW *w = &m->layers[l];
    size_t nc = (size_t)N * c->C;
    pq_dev_copy(a->x_in, x, pq_act_bytes(nc));
    pq_rmsnorm_forward(a->ln1, a->ln1_rstd, x, w->ln1, N, c->C, c->eps);
    lin_qkv(m, l, c->qk_norm ? a->q_raw : a->q, c->qk_norm ? a->k_raw : a->k, N, a);
    if (c->qk_norm) { // Qwen3: the rows of the norm are the heads
        pq_rmsnorm_forward(a->q, a->q_rstd, a->q_raw, w->q_norm, N * c->NH, c->HS, c->eps);
        pq_rmsnorm_forward(a->k, a->k_rstd, a->k_raw, w->k_norm, N * c->KVH, c->HS, c->eps);
    }
    pq_rope_qk_forward(a->q, a->k, pos, m->inv_freq, N, c->NH, c->KVH, c->HS);
    pq_attention_forward(a->att, a->att_lse, a->q, a->k, a->v, pos, N, c->NH, c->KVH, c->HS, pq_layer_window(c, l));
    lin(m, l, PQ_O, a->tmp, a->att, N, a);
    pq_residual_rmsnorm_forward(a->ln2, a->ln2_rstd, x, a->tmp, w->ln2, N, c->C, c->eps);
    pq_dev_copy(a->x_mid, x, pq_act_bytes(nc));
    lin_gate_up(m, l, N, a);
    pq_swiglu_forward(a->mlp, a->gate, a->up, N, c->H);
    lin(m, l, PQ_DOWN, a->tmp, a->mlp, N, a);
    pq_residual_forward(x, a->tmp, nc);
}

int pq_model_logp(const PqModel *m, const int32_t *ids, const int32_t *pos, const int32_t *targets, int N,
                  float *logp, PqErr *e) {
    const PqConfig *c = &m->cfg;
    if (N <= 0) return 0;
    for (int i = 0; i < N; i++) {
        if (ids[i] < 0 || ids[i] >= c->V || targets[i] >= c->V || pos[i] < 0 || pos[i] > i) {
            pq_err(e, "token %d: id %d, target %d or position %d out of range (vocab %d)", i, ids[i], targets[i],
                   pos[i], c->V);
            return -1;
        }
    }
    size_t ni = (size_t)N * sizeof(int32_t);
    int32_t *d_ids = pq_dev_alloc(ni), *d_pos = pq_dev_alloc(ni);
    pq_dev_upload(d_ids, ids, ni);
    pq_dev_upload(d_pos, pos, ni);
    float *x = pq_dev_alloc(pq_act_bytes((size_t)N * c->C));
    PqLayerActs *a = pq_layer_acts_build(c, m->lora, N);
    pq_embedding_forward(x, d_ids, &m->wte, N, c->C);
    for (int l = 0; l < c->L; l++) pq_model_layer_forward(m, l, x, d_pos, N, a);
    // The LM head only on the rows with a target (the responses: runs of
    // consecutive rows), gathered into a->ln2 (M,C).
    int M = 0;
    int32_t *tg = pq_xmalloc(ni);
    for (int i = 0; i < N;) {
        if (targets[i] < 0) {
            i++;
            continue;
        }
        int j = i;
        while (j < N && targets[j] >= 0) tg[M + j - i] = targets[j], j++;
        pq_dev_copy(pq_act_at(a->ln2, (size_t)M * c->C), pq_act_at(x, (size_t)i * c->C),
                    pq_act_bytes((size_t)(j - i) * c->C));
        M += j - i;
        i = j;
    }
    for (int i = 0; i < N; i++) logp[i] = 0;
    if (M > 0) {
        int32_t *d_tg = pq_dev_alloc((size_t)M * 4);
        float *d_logp = pq_dev_alloc((size_t)M * 4), *lp = pq_xmalloc((size_t)M * 4);
        pq_dev_upload(d_tg, tg, (size_t)M * 4);
        pq_rmsnorm_forward(a->ln1, NULL, a->ln2, m->ln_f, M, c->C, c->eps);
        pq_logp_forward(d_logp, NULL, a->ln1, &m->lm_head, d_tg, M, c->C, c->V);
        pq_dev_download(lp, d_logp, (size_t)M * 4);
        for (int i = 0, k = 0; i < N; i++)
            if (targets[i] >= 0) logp[i] = lp[k++];
        pq_dev_free(d_tg);
        pq_dev_free(d_logp);
        free(lp);
    }
    free(tg);
    pq_layer_acts_free(a);
    pq_dev_free(x);
    pq_dev_free(d_ids);
    pq_dev_free(d_pos);
    return 0;
}

// ---- LoRA ----

PqLora *pq_lora_build(const PqConfig *c, int r, float alpha, unsigned targets) {
    PqLora *a = pq_xcalloc(1, sizeof *a);
    a->L = c->L;
    a->r = r;
    a->alpha = alpha;
    a->scale = alpha / (float)r;
    a->targets = targets;
    a->ab = pq_xcalloc((size_t)c->L * PQ_NLIN, sizeof *a->ab);
    size_t n = 0;
    for (int j = 0; j < PQ_NLIN; j++) {
        if (!(targets >> j & 1)) continue;
        int in, out;
        pq_lin_shape(c, j, &in, &out);
        n += (size_t)r * (in + out);
    }
    n *= (size_t)c->L;
    a->n_params = n;
    a->params = pq_dev_alloc((n ? n : 1) * sizeof(float));
    float *p = a->params;
    for (int l = 0; l < c->L; l++)
        for (int j = 0; j < PQ_NLIN; j++) {
            if (!(targets >> j & 1)) continue;
            int in, out;
            pq_lin_shape(c, j, &in, &out);
            a->ab[l * PQ_NLIN + j].A = p;
            p += (size_t)r * in;
            a->ab[l * PQ_NLIN + j].B = p;
            p += (size_t)out * r;
        }
    return a;
}

void pq_lora_free(PqLora *a) {
    if (!a) return;
    pq_dev_free(a->params);
    free(a->ab);
    free(a);
}

static int target_index(const char *s, size_t n) {
    for (int j = 0; j < PQ_NLIN; j++) {
        const char *mod = strchr(pq_lin_modules[j], '.') + 1; // "q_proj"
        if ((strlen(pq_lin_names[j]) == n && !strncmp(s, pq_lin_names[j], n)) ||
            (strlen(mod) == n && !strncmp(s, mod, n)))
            return j;
    }
    return -1;
}

int pq_lora_parse_targets(const char *list, unsigned *targets, PqErr *e) {
    *targets = 0;
    for (const char *s = list; *s;) {
        size_t n = strcspn(s, ",");
        int j = target_index(s, n);
        if (j < 0) {
            pq_err(e, "unknown LoRA target \"%.*s\" (q,k,v,o,gate,up,down)", (int)n, s);
            return -1;
        }
        *targets |= 1u << j;
        s += n;
        if (*s == ',') s++;
    }
    if (!*targets) {
        pq_err(e, "no LoRA targets");
        return -1;
    }
    return 0;
}

PqLora *pq_lora_load(const char *dir, const PqModel *m, PqErr *e) {
    const PqConfig *c = &m->cfg;
    PqBuf p = {0};
    pq_buf_printf(&p, "%s/adapter_config.json", dir);
    char *text = pq_read_file(p.data, NULL, e);
    if (!text) {
        pq_buf_free(&p);
        return NULL;
    }
    cJSON *o = cJSON_Parse(text);
    free(text);
    PqLora *a = NULL;
    PqSafetensors *st = NULL;
    int r;
    float alpha;
    unsigned targets = 0;
    if (!cJSON_IsObject(o)) {
        pq_err(e, "%s: not a JSON object", p.data);
        goto fail;
    }
    if (get_int(o, "r", -1, 1, 65536, &r, e) || get_float(o, "lora_alpha", 8, -1e9, 1e9, &alpha, e)) goto fail_ctx;
    const char *pt = pq_json_str(o, "peft_type");
    const char *bias = pq_json_str(o, "bias");
    if ((pt && strcmp(pt, "LORA")) || (bias && strcmp(bias, "none")) || get_bool(o, "fan_in_fan_out", 0) ||
        get_bool(o, "use_dora", 0)) {
        pq_err(e, "%s: only plain LoRA adapters are supported (peft_type LORA, bias none, no DoRA)", p.data);
        goto fail;
    }
    const cJSON *mts = cJSON_GetObjectItemCaseSensitive(o, "modules_to_save");
    if (mts && !cJSON_IsNull(mts) && !(cJSON_IsArray(mts) && cJSON_GetArraySize(mts) == 0)) {
        pq_err(e, "%s: modules_to_save is not supported", p.data);
        goto fail;
    }
    const cJSON *tm = cJSON_GetObjectItemCaseSensitive(o, "target_modules");
    const cJSON *it;
    if (!cJSON_IsArray(tm)) {
        pq_err(e, "%s: target_modules must be a list of names", p.data);
        goto fail;
    }
    cJSON_ArrayForEach(it, tm) {
        int j = cJSON_IsString(it) ? target_index(it->valuestring, strlen(it->valuestring)) : -1;
        if (j < 0) {
            pq_err(e, "%s: unsupported target module %s (q,k,v,o,gate,up,down _proj)", p.data,
                   cJSON_IsString(it) ? it->valuestring : "?");
            goto fail;
        }
        targets |= 1u << j;
    }
    if (!targets) {
        pq_err(e, "%s: no target_modules", p.data);
        goto fail;
    }
    a = pq_lora_build(c, r, alpha, targets);
    if (get_bool(o, "use_rslora", 0)) a->scale = alpha / sqrtf((float)r);
    pq_buf_clear(&p);
    pq_buf_printf(&p, "%s/adapter_model.safetensors", dir);
    st = pq_safetensors_open(p.data, e);
    if (!st) goto fail;
    char name[256];
    for (int l = 0; l < c->L; l++)
        for (int j = 0; j < PQ_NLIN; j++) {
            if (!(targets >> j & 1)) continue;
            int in, out;
            pq_lin_shape(c, j, &in, &out);
            for (int ab = 0; ab < 2; ab++) {
                snprintf(name, sizeof name, "base_model.model.model.layers.%d.%s.lora_%c.weight", l,
                         pq_lin_modules[j], ab ? 'B' : 'A');
                PqWeight w;
                int rows = ab ? out : r, cols = ab ? r : in;
                if (pq_safetensors_weight(st, name, rows, cols, &w, e)) goto fail_ctx;
                float *tmp = pq_xmalloc((size_t)rows * cols * sizeof *tmp);
                for (int i = 0; i < rows; i++) pq_weight_row(&w, i, tmp + (size_t)i * cols);
                for (size_t i = 0; i < (size_t)rows * cols; i++)
                    if (!isfinite(tmp[i])) { // every log-prob would be NaN: say why here, once
                        pq_err(e, "%s holds NaN or inf (saved from a training that diverged?)", name);
                        free(tmp);
                        goto fail_ctx;
                    }
                pq_dev_upload(ab ? a->ab[l * PQ_NLIN + j].B : a->ab[l * PQ_NLIN + j].A, tmp,
                              (size_t)rows * cols * sizeof *tmp);
                free(tmp);
            }
        }
    pq_safetensors_free(st);
    cJSON_Delete(o);
    pq_buf_free(&p);
    return a;
fail_ctx: {
    char msg[sizeof e->msg];
    snprintf(msg, sizeof msg, "%s", e->msg);
    pq_err(e, "adapter %s: %s", dir, msg);
}
fail:
    pq_safetensors_free(st);
    pq_lora_free(a);
    cJSON_Delete(o);
    pq_buf_free(&p);
    return NULL;
}
