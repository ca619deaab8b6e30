// test-safetensors.c: the safetensors reader and the model loader on good and
// broken files: truncated data, bad headers and dtypes, wrong shapes, missing
// shards, unsupported architectures and out-of-range config fields each give
// a clear error (checked by substring), never a crash. Qwen3's config.json:
// head_dim, q/k norms, and its sliding window per layer.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model.h"
#include "safetensors.h"
#include "st_write.h"
#include "util.h"

static int fails;
static char dir[256];

static void expect(const char *what, int ok, const char *msg) {
    printf("%s %s%s%s\n", ok ? "ok  " : "FAIL", what, msg ? ": " : "", msg ? msg : "");
    if (!ok) fails++;
}

static void put(const char *name, const void *data, size_t n) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    fwrite(data, 1, n, f);
    fclose(f);
}

static void put_str(const char *name, const char *s) { put(name, s, strlen(s)); }

// A raw safetensors file from a header text and n data bytes.
static void put_raw(const char *name, const char *header, size_t ndata) {
    size_t h = strlen(header), n = 8 + h + ndata;
    unsigned char *b = pq_xcalloc(1, n);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(b + 8, header, h);
    put(name, b, n);
    free(b);
}

static void st_error(const char *what, const char *name, const char *want) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    PqErr e = {{0}};
    PqSafetensors *st = pq_safetensors_open(p, &e);
    expect(what, !st && strstr(e.msg, want), e.msg);
    pq_safetensors_free(st);
}

// ---- a tiny llama: L=1, C=8, NH=2, KVH=1, H=16, V=10 ----
static const char *config_ok =
    "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":8,\"intermediate_size\":16,"
    "\"num_attention_heads\":2,\"num_key_value_heads\":1,\"num_hidden_layers\":1,\"vocab_size\":10,"
    "\"rms_norm_eps\":1e-5,\"hidden_act\":\"silu\",\"tie_word_embeddings\":false}";

static void add(PqStWriter *w, const char *name, int rows, int cols) {
    int64_t sh[2] = {rows, cols};
    size_t n = (size_t)(rows ? rows : 1) * cols;
    float *v = pq_xmalloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++) v[i] = (float)((i * 7 % 13) / 13.0 - 0.4);
    if (rows) pq_st_add_f32(w, name, PQ_BF16, 2, sh, v);
    else pq_st_add_f32(w, name, PQ_BF16, 1, sh + 1, v);
    free(v);
}

// Writes the tiny model; skip names a tensor to leave out, bad one to give a wrong shape.
static void write_model(const char *file, const char *skip, const char *bad) {
    static const struct { const char *n; int r, c; } t[] = {
        {"model.embed_tokens.weight", 10, 8}, {"lm_head.weight", 10, 8}, {"model.norm.weight", 0, 8},
        {"model.layers.0.input_layernorm.weight", 0, 8}, {"model.layers.0.post_attention_layernorm.weight", 0, 8},
        {"model.layers.0.self_attn.q_proj.weight", 8, 8}, {"model.layers.0.self_attn.k_proj.weight", 4, 8},
        {"model.layers.0.self_attn.v_proj.weight", 4, 8}, {"model.layers.0.self_attn.o_proj.weight", 8, 8},
        {"model.layers.0.mlp.gate_proj.weight", 16, 8}, {"model.layers.0.mlp.up_proj.weight", 16, 8},
        {"model.layers.0.mlp.down_proj.weight", 8, 16}};
    PqStWriter w = {0};
    for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
        if (skip && !strcmp(skip, t[i].n)) continue;
        int r = t[i].r;
        if (bad && !strcmp(bad, t[i].n)) r++;
        add(&w, t[i].n, r, t[i].c);
    }
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    PqErr e;
    if (pq_st_write(&w, p, &e)) {
        printf("FAIL writing %s: %s\n", p, e.msg);
        fails++;
    }
    pq_st_writer_free(&w);
}

static void model_error(const char *what, const char *want) {
    PqErr e = {{0}};
    PqModel *m = pq_model_load(dir, &e);
    expect(what, !m && strstr(e.msg, want), e.msg);
    pq_model_free(m);
}

static void config_error(const char *what, const char *from, const char *to, const char *want) {
    char *c = pq_xmalloc(strlen(config_ok) + strlen(to) + 1);
    const char *p = strstr(config_ok, from);
    if (!p) {
        printf("FAIL %s: no %s in the config\n", what, from);
        fails++;
        free(c);
        return;
    }
    sprintf(c, "%.*s%s%s", (int)(p - config_ok), config_ok, to, p + strlen(from));
    put_str("config.json", c);
    model_error(what, want);
    put_str("config.json", config_ok);
    free(c);
}

// Qwen3-0.6B's config.json (the hub's, 2025) with the text from..to swapped in.
static const char *qwen3_06b =
    "{\"architectures\":[\"Qwen3ForCausalLM\"],\"attention_bias\":false,\"attention_dropout\":0.0,"
    "\"bos_token_id\":151643,\"eos_token_id\":151645,\"head_dim\":128,\"hidden_act\":\"silu\","
    "\"hidden_size\":1024,\"initializer_range\":0.02,\"intermediate_size\":3072,"
    "\"max_position_embeddings\":40960,\"max_window_layers\":28,\"model_type\":\"qwen3\","
    "\"num_attention_heads\":16,\"num_hidden_layers\":28,\"num_key_value_heads\":8,\"rms_norm_eps\":1e-06,"
    "\"rope_scaling\":null,\"rope_theta\":1000000,\"sliding_window\":null,\"tie_word_embeddings\":true,"
    "\"torch_dtype\":\"bfloat16\",\"transformers_version\":\"4.51.0\",\"use_cache\":true,"
    "\"use_sliding_window\":false,\"vocab_size\":151936}";

static int qwen3_parse(const char *from, const char *to, PqConfig *c, PqErr *e) {
    const char *p = strstr(qwen3_06b, from);
    if (!p) {
        pq_err(e, "no %s in the config", from);
        return -2;
    }
    char *t = pq_xmalloc(strlen(qwen3_06b) + strlen(to) + 1);
    sprintf(t, "%.*s%s%s", (int)(p - qwen3_06b), qwen3_06b, to, p + strlen(from));
    int rc = pq_config_parse(t, c, e);
    free(t);
    return rc;
}

static void qwen3_configs(void) {
    PqConfig c;
    PqErr e = {{0}};
    int rc = qwen3_parse("{", "{", &c, &e);
    expect("Qwen3-0.6B config", !rc && c.arch == PQ_ARCH_QWEN3 && c.C == 1024 && c.NH == 16 && c.KVH == 8 &&
                                    c.HS == 128 && c.qk_norm && !c.qkv_bias && !c.o_bias && c.tie && !c.window &&
                                    c.L == 28 && c.H == 3072,
           e.msg);
    rc = qwen3_parse("\"head_dim\":128,", "", &c, &e);
    expect("Qwen3 head_dim defaults to 128, not hidden / heads", !rc && c.HS == 128, e.msg);
    rc = qwen3_parse("\"head_dim\":128", "\"head_dim\":96", &c, &e);
    expect("Qwen3 head_dim from the config", !rc && c.HS == 96, e.msg);
    rc = qwen3_parse("\"attention_bias\":false", "\"attention_bias\":true", &c, &e);
    expect("Qwen3 attention_bias: q, k, v and o biases", !rc && c.qkv_bias && c.o_bias, e.msg);
    rc = qwen3_parse("\"sliding_window\":null", "\"sliding_window\":4096", &c, &e);
    expect("Qwen3 sliding_window without use_sliding_window: none", !rc && !c.window, e.msg);
    rc = qwen3_parse("\"sliding_window\":null,", "\"sliding_window\":4096,\"use_sliding_window\":true,", &c, &e);
    expect("Qwen3 use_sliding_window with max_window_layers = L: none", !rc && !c.window, e.msg);
    rc = qwen3_parse("\"max_window_layers\":28", "\"max_window_layers\":20,\"use_sliding_window\":true,"
                     "\"sliding_window\":4096", &c, &e);
    expect("Qwen3 sliding window from layer max_window_layers, i - j < sliding_window",
           !rc && c.window == 4095 && c.window_from == 20 && pq_layer_window(&c, 19) == 0 &&
               pq_layer_window(&c, 20) == 4095 && pq_layer_window(&c, 27) == 4095,
           e.msg);
    rc = qwen3_parse("\"num_hidden_layers\":28", "\"num_hidden_layers\":3,\"layer_types\":[\"full_attention\","
                     "\"sliding_attention\",\"sliding_attention\"]", &c, &e);
    expect("Qwen3 layer_types without use_sliding_window: none", !rc && !c.window, e.msg);
    rc = qwen3_parse("\"use_sliding_window\":false", "\"use_sliding_window\":true", &c, &e);
    expect("Qwen3 use_sliding_window with a null sliding_window: none", !rc && !c.window, e.msg);
    rc = qwen3_parse("\"num_hidden_layers\":28,", "\"num_hidden_layers\":3,\"layer_types\":[\"full_attention\","
                     "\"sliding_attention\",\"sliding_attention\"],\"use_sliding_window\":true,"
                     "\"sliding_window\":64,", &c, &e);
    expect("Qwen3 layer_types name the sliding layers", !rc && c.window == 63 && c.window_from == 1, e.msg);
    rc = qwen3_parse("\"num_hidden_layers\":28,", "\"num_hidden_layers\":2,\"layer_types\":[\"sliding_attention\","
                     "\"full_attention\"],\"use_sliding_window\":true,\"sliding_window\":64,", &c, &e);
    expect("Qwen3 layer_types: full after sliding refused", rc == -1 && strstr(e.msg, "layer_types"), e.msg);
    rc = qwen3_parse("\"num_hidden_layers\":28,", "\"num_hidden_layers\":2,\"layer_types\":[\"full_attention\","
                     "\"chunked_attention\"],\"use_sliding_window\":true,\"sliding_window\":64,", &c, &e);
    expect("Qwen3 layer_types: unknown kind refused", rc == -1 && strstr(e.msg, "chunked_attention"), e.msg);
    rc = qwen3_parse("\"num_hidden_layers\":28,", "\"num_hidden_layers\":2,\"layer_types\":[\"full_attention\"],"
                     "\"use_sliding_window\":true,\"sliding_window\":64,", &c, &e);
    expect("Qwen3 layer_types: wrong length refused", rc == -1 && strstr(e.msg, "layer_types"), e.msg);
}

int main(void) {
    qwen3_configs();
    snprintf(dir, sizeof dir, "/tmp/pq-test-st-XXXXXX");
    if (!mkdtemp(dir)) return 1;

    // the reader
    put_raw("ok.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                              "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[24,32]},"
                              "\"__metadata__\":{\"format\":\"pt\"}}", 32);
    char p[512];
    snprintf(p, sizeof p, "%s/ok.safetensors", dir);
    PqErr e = {{0}};
    PqSafetensors *st = pq_safetensors_open(p, &e);
    expect("reads a good file", st && st->n_tensors == 2, e.msg);
    if (st) {
        const PqTensorInfo *a = pq_safetensors_find(st, "a"), *b = pq_safetensors_find(st, "b");
        expect("tensor a: F32 (2,3)", a && a->dtype == PQ_F32 && a->ndim == 2 && a->shape[0] == 2 && a->shape[1] == 3,
               NULL);
        expect("tensor b: BF16 (4), 8 bytes after a", b && b->dtype == PQ_BF16 && b->nbytes == 8 &&
                                                          (const char *)b->data - (const char *)a->data == 24, NULL);
        PqWeight w;
        e.msg[0] = 0;
        expect("shape check", pq_safetensors_weight(st, "a", 3, 2, &w, &e) && strstr(e.msg, "expected (3,2)"), e.msg);
        expect("1-D shape check", pq_safetensors_weight(st, "b", 0, 5, &w, &e) && strstr(e.msg, "expected (5)"), e.msg);
        expect("missing tensor", pq_safetensors_weight(st, "c", 1, 1, &w, &e) && strstr(e.msg, "c is missing"), e.msg);
        expect("good weight", !pq_safetensors_weight(st, "a", 2, 3, &w, &e) && w.rows == 2 && w.cols == 3, e.msg);
    }
    pq_safetensors_free(st);
    put_raw("trunc.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 20);
    st_error("truncated data", "trunc.safetensors", "truncated");
    put("short.safetensors", "\x10\0\0\0", 4);
    st_error("file under 8 bytes", "short.safetensors", "truncated");
    put("hdr.safetensors", "\xff\xff\0\0\0\0\0\0{}", 10);
    st_error("header longer than the file", "hdr.safetensors", "truncated");
    put_raw("json.safetensors", "{\"a\":", 0);
    st_error("header not JSON", "json.safetensors", "not a JSON object");
    put_raw("i64.safetensors", "{\"a\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8);
    st_error("unsupported dtype", "i64.safetensors", "dtype I64");
    put_raw("offs.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,12]}}", 12);
    st_error("offsets not matching the shape", "offs.safetensors", "data_offsets");
    st_error("no such file", "none.safetensors", "No such file");

    // the model loader
    model_error("no config.json", "config.json");
    put_str("config.json", config_ok);
    model_error("no weights", "no model.safetensors");
    write_model("model.safetensors", NULL, NULL);
    PqModel *m = pq_model_load(dir, &e);
    expect("loads the tiny model", m && m->cfg.HS == 4 && m->cfg.KVH == 1 && m->lm_head.data != m->wte.data, e.msg);
    if (m) {
        int32_t ids[4] = {1, 2, 3, 4}, pos[4] = {0, 1, 2, 0}, tg[4] = {2, 3, -1, 9};
        float lp[4];
        int rc = pq_model_logp(m, ids, pos, tg, 4, lp, &e);
        expect("forward gives log-probs", !rc && lp[0] < 0 && lp[1] < 0 && lp[2] == 0 && lp[3] < 0, e.msg);
        tg[0] = 10;
        expect("target out of range", pq_model_logp(m, ids, pos, tg, 4, lp, &e) && strstr(e.msg, "out of range"),
               e.msg);
    }
    pq_model_free(m);
    write_model("model.safetensors", "model.layers.0.mlp.up_proj.weight", NULL);
    model_error("missing tensor", "model.layers.0.mlp.up_proj.weight is missing");
    write_model("model.safetensors", NULL, "model.layers.0.self_attn.k_proj.weight");
    model_error("wrong shape", "k_proj.weight has shape (5,8), expected (4,8)");
    write_model("model.safetensors", NULL, NULL);
    config_error("unsupported architecture", "LlamaForCausalLM", "GPT2LMHeadModel",
                 "unsupported architecture GPT2LMHeadModel (pq supports LlamaForCausalLM");
    config_error("heads out of range", "\"num_attention_heads\":2", "\"num_attention_heads\":0",
                 "num_attention_heads\" must be an integer in [1,");
    config_error("kv heads not dividing", "\"num_key_value_heads\":1", "\"num_key_value_heads\":3",
                 "num_key_value_heads");
    config_error("missing field", "\"vocab_size\":10,", "", "\"vocab_size\" is missing");
    config_error("negative eps", "1e-5", "-1", "rms_norm_eps");
    config_error("activation", "\"silu\"", "\"gelu\"", "hidden_act gelu");
    config_error("rope scaling", "\"tie_word_embeddings\":false",
                 "\"rope_scaling\":{\"type\":\"yarn\",\"factor\":4}", "rope_scaling type yarn");
    config_error("config not JSON", "{", "[", "not a JSON object");
    config_error("vocab smaller than the embedding", "\"vocab_size\":10", "\"vocab_size\":9",
                 "embed_tokens.weight has shape (10,8), expected (9,8)");

    // sharded: an index naming two shards
    unlink(p);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    unlink(p);
    write_model("model-00001-of-00002.safetensors", NULL, NULL);
    put_str("model.safetensors.index.json",
            "{\"metadata\":{},\"weight_map\":{\"model.embed_tokens.weight\":\"model-00001-of-00002.safetensors\","
            "\"lm_head.weight\":\"model-00002-of-00002.safetensors\"}}");
    model_error("missing shard", "model-00002-of-00002.safetensors: No such file");
    put_raw("model-00002-of-00002.safetensors", "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 2);
    model_error("truncated shard", "truncated");
    put_raw("model-00002-of-00002.safetensors", "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
    model_error("tensor not where the index says", "lm_head.weight is not in model-00002-of-00002.safetensors");
    put_str("model.safetensors.index.json",
            "{\"metadata\":{},\"weight_map\":{\"model.embed_tokens.weight\":\"model-00001-of-00002.safetensors\","
            "\"x\":\"model-00002-of-00002.safetensors\"}}");
    m = pq_model_load(dir, &e);
    expect("loads from shards", m != NULL, e.msg);
    pq_model_free(m);

    // the real Mistral-7B index and config, without the weights
    const char *top = getenv("PQ_TOP");
    char real[400];
    snprintf(real, sizeof real, "%s/tests/fixtures/models/mistral-7b-instruct-v0.1", top ? top : ".");
    m = pq_model_load(real, &e);
    expect("Mistral-7B without weights", !m && strstr(e.msg, "-of-00002.safetensors: No such file"),
           e.msg);
    pq_model_free(m);
    PqConfig c;
    snprintf(p, sizeof p, "%s/config.json", real);
    char *text = pq_read_file(p, NULL, &e);
    expect("Mistral-7B config", text && !pq_config_parse(text, &c, &e) && c.arch == PQ_ARCH_MISTRAL &&
                                    c.L == 32 && c.KVH == 8 && c.HS == 128 && c.window == 4096 && c.H == 14336,
           e.msg);
    free(text);

    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) fails++;
    if (fails) printf("%d FAILED\n", fails);
    return fails != 0;
}
