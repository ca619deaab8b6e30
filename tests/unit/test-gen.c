// test-gen: sampling filters against a naive reference and by frequency,
// seeded sampling reproducible, no engine with bf16 activations; with a model directory as argument, a
// driver for tests/py/test_generate.py: JSON requests in, generated ids out.
//   test-gen                       unit tests
//   test-gen --probs < cases.jsonl  pq_gen_probs of {"logits", "temperature",
//                                  "top_k", "top_p", "min_p"}: {"probs"} per line
//                                  (tests/py/test_sampler.py)
//   test-gen MODEL_DIR [--slots S] [--threads T] [--adapter DIR] [--no-eos 1] < requests.jsonl
// A request: {"prompt": [ids], "n": 1, "seed": 0, "temperature": 0,
// "top_k": 0, "top_p": 1, "max_tokens": 8, "stop": ["..."], "constrain":
// "quiz"}; one line out per request, in input order: {"samples": [{"ids",
// "logp" (each id's log-probability, gen.h), "text", "finish"}]}; then {"prefilled": P, "generated": G, "steps": S,
// "seconds": generation time}. --no-eos 1: never stop at an end token
// (benchmarks). With PQ_GEN_PROFILE=1 the generator's profile (gen.h) comes
// as one line on stderr, "pq: PQ_GEN_PROFILE: {...}", when it is freed
// (tests/py/test_gen_profile.py).
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "gen.h"
#include "ops_gen.h"
#include "st_write.h"
#include "tool.h"

// The filters written the slow, obvious way, in double: sort everything.
static int by_desc(const void *a, const void *b) {
    const double *x = a, *y = b;
    return x[0] < y[0] ? 1 : x[0] > y[0] ? -1 : (x[1] > y[1]) - (x[1] < y[1]);
}
static void ref_probs(const float *logits, int V, double T, int k, double p, double mp, double *out) {
    double *s = malloc(sizeof(double) * 2 * V);
    for (int v = 0; v < V; v++) s[2 * v] = logits[v] == -INFINITY ? -INFINITY : logits[v] / T, s[2 * v + 1] = v;
    qsort(s, (size_t)V, 2 * sizeof(double), by_desc);
    int keep = V;
    if (k > 0 && k < V) {
        double kth = s[2 * (k - 1)];
        keep = 0;
        while (keep < V && s[2 * keep] >= kth) keep++;
    }
    while (keep > 0 && s[2 * (keep - 1)] == -INFINITY) keep--;
    double z = 0;
    for (int i = 0; i < keep; i++) z += exp(s[2 * i] - s[0]);
    int keep2 = keep;
    if (p < 1) {
        double before = 0;
        keep2 = 0;
        while (keep2 < keep && (keep2 == 0 || before < p)) before += exp(s[2 * keep2] - s[0]) / z, keep2++;
    }
    // min-p: the kept ones at least mp times the most likely (s[0], kept always)
    while (mp > 0 && keep2 > 1 && exp(s[2 * (keep2 - 1)] - s[0]) < mp) keep2--;
    double z2 = 0;
    for (int i = 0; i < keep2; i++) z2 += exp(s[2 * i] - s[0]);
    for (int v = 0; v < V; v++) out[v] = 0;
    for (int i = 0; i < keep2; i++) out[(int)s[2 * i + 1]] = exp(s[2 * i] - s[0]) / z2;
    free(s);
}

static void test_filters(void) {
    PqRng rng;
    pq_rng_seed(&rng, 7);
    const int V = 50;
    float lg[50], pr[50];
    double ref[50];
    const double temps[] = {0.3, 1.0, 1.7};
    const int ks[] = {0, 1, 5, 49, 50};
    const double ps[] = {1.0, 0.9, 0.5, 0.05};
    const double mps[] = {0, 0.05, 0.3};
    for (int trial = 0; trial < 20; trial++) {
        for (int v = 0; v < V; v++) lg[v] = (float)(3 * (pq_rng_uniform(&rng) - 0.5));
        if (trial % 3 == 0) lg[3] = lg[7] = lg[11]; // ties
        if (trial % 4 == 1) lg[0] = lg[20] = -INFINITY; // masked
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 5; b++)
                for (int c = 0; c < 4; c++)
                    for (int e = 0; e < 3; e++) {
                        pq_gen_probs(lg, V, (float)temps[a], ks[b], (float)ps[c], (float)mps[e], pr);
                        ref_probs(lg, V, temps[a], ks[b], ps[c], mps[e], ref);
                        double err = 0, sum = 0;
                        for (int v = 0; v < V; v++) err = fmax(err, fabs(pr[v] - ref[v])), sum += pr[v];
                        CHECK(err < 1e-5 && fabs(sum - 1) < 1e-5,
                              "filters T=%g k=%d p=%g min_p=%g trial %d: max error %g, sum %g", temps[a], ks[b], ps[c],
                              mps[e], trial, err, sum);
                    }
    }
}

// Sampled frequencies match the filtered distribution (chi-square), and a
// seed gives the same draws every time.
static void test_sampling(void) {
    const int V = 8, n = 40000;
    float lg[8] = {1.0f, 0.5f, 0.2f, -0.3f, 2.0f, -1.0f, 0.0f, 1.5f}, work[8], pr[8];
    PqGenParams p;
    pq_gen_params_init(&p);
    p.temperature = 0.8f;
    p.top_k = 6;
    p.top_p = 0.9f;
    p.min_p = 0.1f;
    pq_gen_probs(lg, V, p.temperature, p.top_k, p.top_p, p.min_p, pr);
    long cnt[8] = {0};
    PqRng rng;
    pq_rng_seed(&rng, 1);
    for (int i = 0; i < n; i++) cnt[pq_gen_sample(lg, V, &p, &rng, work)]++;
    double chi = 0;
    int dof = -1;
    for (int v = 0; v < V; v++) {
        if (pr[v] == 0) {
            CHECK(cnt[v] == 0, "token %d filtered out but sampled %ld times", v, cnt[v]);
            continue;
        }
        double e = n * (double)pr[v];
        chi += (cnt[v] - e) * (cnt[v] - e) / e;
        dof++;
    }
    CHECK(dof >= 2 && chi < 25, "chi-square %g with %d degrees of freedom", chi, dof); // p < 1e-3 for dof <= 5
    PqRng a, b;
    pq_rng_seed(&a, 42), pq_rng_seed(&b, 42);
    for (int i = 0; i < 100; i++) {
        int x = pq_gen_sample(lg, V, &p, &a, work), y = pq_gen_sample(lg, V, &p, &b, work);
        CHECK(x == y, "seeded draws differ at %d", i);
    }
    p.temperature = 0;
    CHECK(pq_gen_sample(lg, V, &p, &a, work) == 4, "greedy is not the argmax");
}

// pq_cpu_linear_rows_forward (the decoding steps' products: in place up to
// 32 rows (f32) or 48 (bf16), sgemm beyond) against a double reference, f32 and bf16 weights,
// shapes off every block size (bf16 at 1-2 rows: 32 columns a step, then 16, then the rest). Under PQ_PRECISION=bf16 (test_generate.py
// runs that too) bf16 weights multiply inputs rounded to bf16 from 2 rows.
static void test_linear_rows(void) {
    int bfp = pq_cpu_bf16_products();
    PqRng rng;
    pq_rng_seed(&rng, 5);
    const int Ns[] = {1, 2, 5, 6, 7, 12, 13, 24, 32, 33, 48, 49}, Cs[] = {16, 37, 50, 96}, OCs[] = {1, 5, 8, 11};
    for (int dt = 0; dt < 2; dt++)
        for (int a = 0; a < 12; a++)
            for (int b = 0; b < 4; b++)
                for (int c = 0; c < 4; c++) {
                    int N = Ns[a], C = Cs[b], OC = OCs[c], with_bias = (a + c) % 2;
                    float *x = malloc(sizeof *x * (size_t)N * C), *w = malloc(sizeof *w * (size_t)OC * C);
                    float *bias = malloc(sizeof *bias * (size_t)OC), *out = malloc(sizeof *out * (size_t)N * OC);
                    uint16_t *wh = malloc(sizeof *wh * (size_t)OC * C);
                    for (int i = 0; i < N * C; i++) x[i] = (float)(pq_rng_uniform(&rng) * 2 - 1);
                    for (int i = 0; i < OC * C; i++) {
                        w[i] = (float)(pq_rng_uniform(&rng) * 2 - 1);
                        wh[i] = pq_f32_to_bf16(w[i]);
                        if (dt) w[i] = pq_bf16_to_f32(wh[i]);
                    }
                    for (int o = 0; o < OC; o++) bias[o] = (float)pq_rng_uniform(&rng);
                    PqWeight W = {dt ? (const void *)wh : (const void *)w, dt ? PQ_BF16 : PQ_F32, OC, C};
                    pq_cpu_linear_rows_forward(out, x, &W, with_bias ? bias : NULL, N, C, OC);
                    double err = 0;
                    for (int i = 0; i < N; i++)
                        for (int o = 0; o < OC; o++) {
                            double r = with_bias ? bias[o] : 0;
                            for (int k = 0; k < C; k++)
                                r += (double)(dt && bfp && N > 1 ? pq_bf16_to_f32(pq_f32_to_bf16(x[i * C + k]))
                                                                 : x[i * C + k]) *
                                     w[o * C + k];
                            err = fmax(err, fabs(out[i * OC + o] - r));
                        }
                    CHECK(err < 1e-4, "linear_rows %s%s N=%d C=%d OC=%d bias %d: max error %g", dt ? "bf16" : "f32",
                          dt && bfp ? " (bf16 products)" : "", N, C, OC, with_bias, err);
                    free(x), free(w), free(bias), free(out), free(wh);
                }
}

// pq_cpu_attention_kv_shared_forward against attention_kv_forward over a
// cache where the shared prompt is copied into every follower's slot:
// followers at different lengths, the prompt's own slot decoding too, an
// unshared prefill block in the same step, with and without a window.
static void test_shared_attention(void) {
    enum { S = 4, T = 32, NH = 6, KVH = 2, HS = 8, P = 10 };
    size_t per = (size_t)T * KVH * HS;
    float *kc = malloc(sizeof *kc * S * per), *vc = malloc(sizeof *vc * S * per);
    float *kc2 = malloc(sizeof *kc * S * per), *vc2 = malloc(sizeof *vc * S * per);
    PqRng rng;
    pq_rng_seed(&rng, 9);
    for (size_t i = 0; i < S * per; i++) kc[i] = (float)(pq_rng_uniform(&rng) * 2 - 1), vc[i] = (float)pq_rng_uniform(&rng);
    // the reference cache: slot 0's prompt copied into followers 1 and 2
    memcpy(kc2, kc, sizeof *kc * S * per), memcpy(vc2, vc, sizeof *vc * S * per);
    for (int f = 1; f <= 2; f++)
        memcpy(kc2 + f * per, kc, sizeof *kc * P * KVH * HS), memcpy(vc2 + f * per, vc, sizeof *vc * P * KVH * HS);
    // slot 0 at 12, follower 1 at 10 (its first token), follower 2 at 13, slot 3 prefilling 0..4
    int32_t slot[8] = {0, 1, 2, 3, 3, 3, 3, 3}, pos[8] = {12, 10, 13, 0, 1, 2, 3, 4};
    int32_t base[8] = {0, 0, 0, 3, 3, 3, 3, 3}, blen[8] = {0, P, P, 0, 0, 0, 0, 0};
    const int N = 8;
    float q[8 * NH * HS], out[8 * NH * HS], ref[8 * NH * HS];
    for (int i = 0; i < N * NH * HS; i++) q[i] = (float)(pq_rng_uniform(&rng) * 2 - 1);
    const int windows[] = {0, 3, 12};
    for (int wi = 0; wi < 3; wi++) {
        pq_cpu_attention_kv_shared_forward(out, q, kc, vc, slot, pos, base, blen, N, NH, KVH, HS, T, windows[wi]);
        pq_cpu_attention_kv_forward(ref, q, kc2, vc2, slot, pos, N, NH, KVH, HS, T, windows[wi]);
        double err = 0;
        for (int i = 0; i < N * NH * HS; i++) err = fmax(err, fabs(out[i] - ref[i]));
        CHECK(err < 1e-5, "shared-prompt attention, window %d: max error %g", windows[wi], err);
        // only the followers: no unshared token in the step
        pq_cpu_attention_kv_shared_forward(out, q + NH * HS, kc, vc, slot + 1, pos + 1, base + 1, blen + 1, 2, NH,
                                           KVH, HS, T, windows[wi]);
        err = 0;
        for (int i = 0; i < 2 * NH * HS; i++) err = fmax(err, fabs(out[i] - ref[NH * HS + i]));
        CHECK(err < 1e-5, "shared-prompt attention, followers only, window %d: max error %g", windows[wi], err);
    }
    free(kc), free(vc), free(kc2), free(vc2);
}

// ---- the driver ----

typedef struct Out {
    char *line;
} Out;
static Out *outs;

static void on_done(void *user, PqGenOut *o, int n, const char *error, int cancelled) {
    long i = (long)(intptr_t)user;
    cJSON *r = cJSON_CreateObject();
    if (cancelled) cJSON_AddStringToObject(r, "error", "cancelled");
    else if (error) cJSON_AddStringToObject(r, "error", error);
    else {
        cJSON *ss = cJSON_AddArrayToObject(r, "samples");
        for (int k = 0; k < n; k++) {
            cJSON *s = cJSON_CreateObject();
            cJSON *ids = cJSON_AddArrayToObject(s, "ids");
            for (int t = 0; t < o[k].n; t++) cJSON_AddItemToArray(ids, cJSON_CreateNumber(o[k].ids[t]));
            cJSON *lp = cJSON_AddArrayToObject(s, "logp");
            for (int t = 0; t < o[k].n; t++) cJSON_AddItemToArray(lp, cJSON_CreateNumber(o[k].logp[t]));
            if (o[k].text) cJSON_AddStringToObject(s, "text", o[k].text);
            static const char *const why[] = {"eos", "stop", "length"};
            cJSON_AddStringToObject(s, "finish", why[o[k].finish]);
            cJSON_AddItemToArray(ss, s);
        }
    }
    outs[i].line = cJSON_PrintUnformatted(r);
    cJSON_Delete(r);
}

static int drive(int argc, char **argv) {
    const char *dir = argv[1], *adapter = NULL;
    int slots = 4, threads = 1, no_eos = 0;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--slots")) slots = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--adapter")) adapter = argv[i + 1];
        else if (!strcmp(argv[i], "--no-eos")) no_eos = atoi(argv[i + 1]);
    }
    pq_ops_set_threads(threads);
    PqErr e;
    PqModel *m = pq_model_load(dir, &e);
    if (!m) return fprintf(stderr, "test-gen: %s\n", e.msg), 3;
    PqLora *lora = NULL;
    if (adapter && !(lora = pq_lora_load(adapter, m, &e))) return fprintf(stderr, "test-gen: %s\n", e.msg), 3;
    m->lora = lora;
    char aerr[160]; // PQ_ACTIVATIONS, as pq-summarize reads it (llm_local.c)
    if (pq_ops_act_choose(m->cfg.dtype, aerr, sizeof aerr) < 0) return fprintf(stderr, "test-gen: %s\n", aerr), 3;
    PqTokenizer *tok = pq_tokenizer_load_dir(dir, &e);
    int32_t eos[8];
    int n_eos = pq_gen_eos_ids(dir, tok, eos, 8);
    PqGen *g = pq_gen_new(m, tok, slots, eos, no_eos ? 0 : n_eos);
    char *line = NULL;
    size_t cap = 0;
    long n = 0;
    cJSON **reqs = NULL;
    while (getline(&line, &cap, stdin) > 0) {
        reqs = realloc(reqs, sizeof *reqs * (size_t)(n + 1));
        reqs[n++] = cJSON_Parse(line);
    }
    free(line);
    outs = calloc((size_t)n + 1, sizeof *outs);
    for (long i = 0; i < n; i++) {
        const cJSON *o = reqs[i], *pr = cJSON_GetObjectItemCaseSensitive(o, "prompt"), *it;
        int P = cJSON_GetArraySize(pr), k = 0;
        int32_t *ids = malloc(sizeof *ids * (size_t)(P + 1));
        cJSON_ArrayForEach(it, pr) ids[k++] = (int32_t)it->valuedouble;
        PqGenParams gp;
        pq_gen_params_init(&gp);
        double x;
        if (pq_json_num(o, "temperature", &x)) gp.temperature = (float)x;
        if (pq_json_num(o, "top_p", &x)) gp.top_p = (float)x;
        if (pq_json_num(o, "top_k", &x)) gp.top_k = (int)x;
        if (pq_json_num(o, "min_p", &x)) gp.min_p = (float)x;
        if (pq_json_num(o, "max_tokens", &x)) gp.max_tokens = (int)x;
        const char *cs = pq_json_str(o, "constrain");
        if (cs) gp.constrain = pq_constrain_mode(cs);
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "stop");
        const char *stops[8];
        cJSON_ArrayForEach(it, st) if (gp.n_stop < 8) stops[gp.n_stop++] = it->valuestring;
        gp.stop = stops;
        int ns = pq_json_num(o, "n", &x) ? (int)x : 1;
        uint64_t seed = pq_json_num(o, "seed", &x) ? (uint64_t)x : 0;
        pq_gen_submit(g, ids, P, ns, seed, &gp, on_done, (void *)(intptr_t)i);
        free(ids);
    }
    double t0 = pq_now();
    while (pq_gen_pending(g) > 0) pq_gen_step(g);
    double dt = pq_now() - t0;
    for (long i = 0; i < n; i++) {
        printf("%s\n", outs[i].line);
        free(outs[i].line);
        cJSON_Delete(reqs[i]);
    }
    PqGenStats st;
    pq_gen_stats(g, &st);
    printf("{\"prefilled\":%lld,\"generated\":%lld,\"steps\":%lld,\"chunks\":%lld,\"mixed\":%lld,"
           "\"prefix_hit\":%lld,\"seconds\":%.6f}\n",
           st.prefilled, st.generated, st.steps, st.chunks, st.mixed, st.prefix_hit, dt);
    free(outs);
    free(reqs);
    pq_gen_free(g);
    pq_tokenizer_free(tok);
    pq_lora_free(lora);
    pq_model_free(m);
    return 0;
}

// --probs: one JSON case a line in, {"probs": [...]} (%.9g) a line out.
static int probs_cases(void) {
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, stdin) > 0) {
        cJSON *o = cJSON_Parse(line), *it;
        const cJSON *lg = cJSON_GetObjectItemCaseSensitive(o, "logits");
        int V = cJSON_GetArraySize(lg), k = 0;
        if (!o || V < 1) return fprintf(stderr, "test-gen --probs: bad case %s", line), 2;
        float *x = malloc(sizeof *x * (size_t)V), *pr = malloc(sizeof *pr * (size_t)V);
        cJSON_ArrayForEach(it, lg) x[k++] = cJSON_IsNumber(it) ? (float)it->valuedouble : -INFINITY; // null: masked
        double T = 1, p = 1, mp = 0, tk = 0;
        pq_json_num(o, "temperature", &T);
        pq_json_num(o, "top_p", &p);
        pq_json_num(o, "min_p", &mp);
        pq_json_num(o, "top_k", &tk);
        pq_gen_probs(x, V, (float)T, (int)tk, (float)p, (float)mp, pr);
        printf("{\"probs\": [");
        for (int v = 0; v < V; v++) printf("%s%.9g", v ? ", " : "", pr[v]);
        printf("]}\n");
        free(x);
        free(pr);
        cJSON_Delete(o);
    }
    free(line);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "--probs")) return probs_cases();
    if (argc > 1) return drive(argc, argv);
    test_filters();
    test_sampling();
    test_linear_rows();
    test_shared_attention();
    if (n_fail) {
        fprintf(stderr, "test-gen: %d failures\n", n_fail);
        return 1;
    }
    printf("test-gen: ok\n");
    return 0;
}
