// bench-7b.c: pq's forward log-probs and LoRA DPO step on a model of a given
// config.json's shape (Mistral-7B for scripts/gpu-check) with RANDOM bf16
// weights made on the device (no weight files are read: this measures speed
// only). Prints tokens/s, MFU and peak device memory, and one "RESULT key
// value" line per figure for scripts/gpu-check. MFU and bandwidth use are
// fractions of the device's peaks (ops.h's pq_dev_peaks: the datasheet's
// for the parts it names), or of --peak-tflops and --peak-gbs.
// --what ops times each operation of one layer at the same batch instead
// (the breakdown that says where a forward's or a step's time goes).
// --what gen generates through lib/gen.h (continuous batching, the paged
// cache, sampling on the device): prefill and decode tokens/s, the
// prefill's MFU, the decode's bandwidth use, the KV
// cache's size, for the cases of --gen-case (b1, b64, n10, n10j8: n10 in
// 8 slots, b256; all: b1, b64, n10), their slots, prompt and new tokens
// overridden by --gen-slots, --gen-prompt, --gen-new, greedy everywhere
// with --gen-greedy. With PQ_GEN_PROFILE=1 (gen.h) each case also says
// where its steps' time went, phase by phase.
//   bench-7b CONFIG.json [--seq 2048] [--seqs 2] [--iters 3] [--rank 16]
//            [--no-checkpoint | --checkpoint auto|on|off] [--peak-tflops P] [--device N]
//            [--what logp|dpo|both|ops|gen] [--gen-case all|b1,b64,n10,n10j8,b256]
//            [--gen-slots S] [--gen-prompt P] [--gen-new G] [--gen-greedy] [--peak-gbs G]
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda/tuning.h"
#include "dpo.h"
#include "gen.h"
#include "llm.h"
#include "ops_grad.h"
#include "model.h"
#include "ops_gen.h"
#include "optim.h"
#include "st_write.h"
#include "train.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t rng = 0x243f6a8885a308d3ULL;
static uint64_t rnd(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return rng;
}

// A device pool of random bf16 values ~ U(-a, a); weights are filled from it.
enum { POOL = 1 << 25 };
static uint16_t *pool;

static void pool_build(float a) {
    uint16_t *h = pq_xmalloc((size_t)POOL * 2);
    for (size_t i = 0; i < POOL; i++) {
        float f = a * (float)((double)(rnd() >> 11) / 9007199254740992.0 * 2 - 1);
        uint32_t u;
        memcpy(&u, &f, 4);
        h[i] = (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
    }
    pool = pq_dev_alloc((size_t)POOL * 2);
    pq_dev_upload(pool, h, (size_t)POOL * 2);
    free(h);
}

static PqWeight rand_weight(int rows, int cols) {
    size_t n = (size_t)rows * cols;
    uint16_t *d = pq_dev_alloc(n * 2);
    for (size_t o = 0; o < n; o += POOL) {
        size_t k = n - o < POOL ? n - o : POOL;
        // start at a varying offset so layers differ
        size_t s = (size_t)(rnd() % (POOL - k + 1));
        pq_dev_copy(d + o, pool + s, k * 2);
    }
    return (PqWeight){d, PQ_BF16, rows, cols};
}

static float *const_vec(int n, float v) {
    float *h = pq_xmalloc((size_t)n * 4);
    for (int i = 0; i < n; i++) h[i] = v;
    float *d = pq_dev_alloc((size_t)n * 4);
    pq_dev_upload(d, h, (size_t)n * 4);
    free(h);
    return d;
}

static PqModel *random_model(const char *config, PqErr *e) {
    char *text = pq_read_file(config, NULL, e);
    if (!text) return NULL;
    PqModel *m = pq_xcalloc(1, sizeof *m);
    if (pq_config_parse(text, &m->cfg, e)) {
        free(text);
        free(m);
        return NULL;
    }
    free(text);
    PqConfig *c = &m->cfg;
    c->dtype = PQ_BF16;
    pq_ops_set_attention_dtype(c->dtype); // as pq_model_load: a bf16 model's attention on tensor cores
    m->dir = pq_xstrdup("(random weights)");
    pool_build(0.02f);
    m->wte = rand_weight(c->V, c->C);
    m->lm_head = c->tie ? m->wte : rand_weight(c->V, c->C);
    m->ln_f = const_vec(c->C, 1.0f);
    m->layers = pq_xcalloc((size_t)c->L, sizeof *m->layers);
    for (int l = 0; l < c->L; l++) {
        PqLayerW *L = &m->layers[l];
        L->ln1 = const_vec(c->C, 1.0f);
        L->ln2 = const_vec(c->C, 1.0f);
        // q, k, v in one allocation, one after another, as pq_dev_weights places them (one product)
        int qd = c->NH * c->HS, kd = c->KVH * c->HS;
        PqWeight qkv = rand_weight(qd + 2 * kd, c->C);
        const char *base = qkv.data;
        L->w[PQ_Q] = (PqWeight){base, PQ_BF16, qd, c->C};
        L->w[PQ_K] = (PqWeight){base + (size_t)qd * c->C * 2, PQ_BF16, kd, c->C};
        L->w[PQ_V] = (PqWeight){base + (size_t)(qd + kd) * c->C * 2, PQ_BF16, kd, c->C};
        for (int j = 0; j < PQ_NLIN; j++) {
            int in, out;
            pq_lin_shape(c, j, &in, &out);
            if (j > PQ_V) L->w[j] = rand_weight(out, in);
            if ((j <= PQ_V && c->qkv_bias) || (j == PQ_O && c->o_bias)) L->b[j] = const_vec(out, 0.0f);
        }
    }
    float *f = pq_xmalloc((size_t)(c->HS / 2) * 4);
    for (int d = 0; d < c->HS / 2; d++) f[d] = 1.0f / powf(c->rope_theta, (float)(2 * d) / (float)c->HS);
    m->inv_freq = pq_dev_alloc((size_t)(c->HS / 2) * 4);
    pq_dev_upload(m->inv_freq, f, (size_t)(c->HS / 2) * 4);
    free(f);
    pq_dev_free(pool);
    return m;
}

static void random_model_free(PqModel *m) {
    const PqConfig *c = &m->cfg;
    for (int l = 0; l < c->L; l++) {
        PqLayerW *L = &m->layers[l];
        pq_dev_free((void *)L->ln1), pq_dev_free((void *)L->ln2);
        for (int j = 0; j < PQ_NLIN; j++) { // k and v live in q's allocation
            if (j != PQ_K && j != PQ_V) pq_dev_weight_free(&L->w[j]);
            pq_dev_free((void *)L->b[j]);
        }
    }
    if (!c->tie) pq_dev_weight_free(&m->lm_head);
    pq_dev_weight_free(&m->wte);
    pq_dev_free((void *)m->ln_f), pq_dev_free(m->inv_freq);
    free(m->layers), free(m->dir), free(m);
}

// Matmul parameters of the blocks (what 2 FLOPs per token multiply).
static double block_params(const PqConfig *c) {
    double p = 0;
    for (int j = 0; j < PQ_NLIN; j++) {
        int in, out;
        pq_lin_shape(c, j, &in, &out);
        p += (double)in * out;
    }
    return p * c->L;
}
// Causal attention FLOPs of the forward for sequences of T tokens (QK^T and
// PV over the visible keys), window applied.
static double attn_flops(const PqConfig *c, int T, int nseq) {
    double pairs = 0;
    for (int i = 0; i < T; i++) pairs += c->window > 0 && i + 1 > c->window + 1 ? c->window + 1 : i + 1;
    return 4.0 * pairs * c->NH * c->HS * c->L * nseq;
}

// ---- --what ops: each operation of one layer at N tokens, timed alone ----

static float *probe; // a device float read back to wait for the device
static int reps = 5;
static double sync_now(void) {
    float x;
    pq_dev_download(&x, probe, sizeof x);
    return now_s();
}
// Times STMT (after one warm-up run): ms per run into *ms, and a line with TFLOP/s when flops > 0.
#define TIME_OP(ms, name, flops, STMT)                                                                              \
    do {                                                                                                           \
        STMT;                                                                                                      \
        double t_ = sync_now();                                                                                    \
        for (int k_ = 0; k_ < reps; k_++) STMT;                                                                    \
        double dt_ = (sync_now() - t_) / reps;                                                                     \
        *(ms) = dt_ * 1e3;                                                                                         \
        if ((flops) > 0) printf("op: %-40s %9.3f ms %8.1f TFLOP/s\n", name, dt_ * 1e3, (flops) / dt_ / 1e12);       \
        else printf("op: %-40s %9.3f ms\n", name, dt_ * 1e3);                                                     \
    } while (0)

// secs = seconds a call CALL(k) takes, k the rep (CALL(0) first, untimed: the warm-up)
#define TIME_REPS(secs, CALL)                                                                                      \
    do {                                                                                                           \
        CALL(0);                                                                                                   \
        double t_ = sync_now();                                                                                    \
        for (int k_ = 0; k_ < reps; k_++) CALL(k_);                                                                \
        (secs) = (sync_now() - t_) / reps;                                                                         \
    } while (0)

static float *dev_rand(size_t n, float a) {
    float *h = pq_xmalloc((n ? n : 1) * sizeof *h);
    for (size_t i = 0; i < n; i++) h[i] = a * (float)((double)(rnd() >> 11) / 9007199254740992.0 * 2 - 1);
    float *d = pq_dev_alloc((n ? n : 1) * sizeof *d);
    pq_dev_upload(d, h, n * sizeof *d);
    free(h);
    return d;
}

// n random activations (the storage's dtype: f32, or bf16 under PQ_ACTIVATIONS=bf16) in [-a, a]
static float *dev_act_rand(size_t n, float a) {
    if (pq_act_size() == 4) return dev_rand(n, a);
    uint16_t *h = pq_xmalloc((n ? n : 1) * 2);
    for (size_t i = 0; i < n; i++)
        h[i] = pq_f32_to_bf16(a * (float)((double)(rnd() >> 11) / 9007199254740992.0 * 2 - 1));
    float *d = pq_dev_alloc(pq_act_bytes(n ? n : 1));
    pq_dev_upload(d, h, n * 2);
    free(h);
    return d;
}

static int profile_ops(const PqModel *m, const int32_t *hpos, int N, int r, double peak) {
    const PqConfig *c = &m->cfg;
    const PqLayerW *w = &m->layers[0];
    int C = c->C, H = c->H, NH = c->NH, KVH = c->KVH, HS = c->HS, QD = NH * HS, KD = KVH * HS;
    int W = C > H ? C : H;
    W = W > QD ? W : QD;
    // (activations in the storage's dtype; buffers allocated as f32 are merely larger than bf16 needs)
    float *x = dev_act_rand((size_t)N * W, 1), *y = dev_act_rand((size_t)N * W, 1);
    float *z = dev_act_rand((size_t)N * W, 1), *u = dev_act_rand((size_t)N * W, 1);
    float *q = dev_act_rand((size_t)N * QD, 1), *k = dev_act_rand((size_t)N * KD, 1);
    float *v = dev_act_rand((size_t)N * KD, 1);
    float *att = dev_act_rand((size_t)N * QD, 1);
    float *lse = pq_dev_alloc((size_t)N * NH * 4), *rstd = pq_dev_alloc((size_t)N * 4);
    float *dq = pq_dev_alloc((size_t)N * QD * 4), *dk = pq_dev_alloc((size_t)N * KD * 4), *dv = pq_dev_alloc((size_t)N * KD * 4);
    float *A = dev_rand((size_t)r * W, 0.01f), *B = dev_rand((size_t)W * r, 0.01f), *xa = pq_dev_alloc((size_t)N * r * 4);
    float *dA = pq_dev_alloc((size_t)r * W * 4), *dB = pq_dev_alloc((size_t)W * r * 4), *dxa = pq_dev_alloc((size_t)N * r * 4);
    int32_t *pos = pq_dev_alloc((size_t)N * 4);
    pq_dev_upload(pos, hpos, (size_t)N * 4);
    probe = x;
    // the LM head on the response rows, as pq-logp: half the tokens
    int M = N / 2;
    int32_t *htg = pq_xmalloc((size_t)M * 4);
    for (int i = 0; i < M; i++) htg[i] = (int32_t)(rnd() % (uint64_t)c->V);
    int32_t *tg = pq_dev_alloc((size_t)M * 4);
    pq_dev_upload(tg, htg, (size_t)M * 4);
    float *lp = pq_dev_alloc((size_t)M * 4), *dlp = dev_rand((size_t)M, 1), *llse = pq_dev_alloc((size_t)M * 4);
    printf("ops of one layer at %d tokens (%d records) on the %s backend, bf16 weights, %s activations:\n", N,
           N / (hpos[N - 1] + 1), pq_ops_backend(), pq_dtype_name(pq_ops_act_dtype()));
    double ms, lin_fwd = 0, lin_bwd = 0, lora_fwd = 0, lora_bwd = 0, other_fwd = 0, other_bwd = 0;
    // q, k, v and gate, up one by one (the model runs each set as one group, timed below)
    double qkv_fwd = 0, qkv_bwd = 0, gu_fwd = 0, gu_bwd = 0;
    for (int j = 0; j < PQ_NLIN; j++) {
        int in, oc;
        pq_lin_shape(c, j, &in, &oc);
        char name[64];
        double f = 2.0 * N * in * oc;
        snprintf(name, sizeof name, "linear_forward %s (%dx%d)", pq_lin_modules[j], oc, in);
        TIME_OP(&ms, name, f, pq_linear_forward(y, x, &w->w[j], w->b[j], N, in, oc));
        lin_fwd += ms;
        if (j <= PQ_V) qkv_fwd += ms;
        if (j == PQ_GATE || j == PQ_UP) gu_fwd += ms;
        snprintf(name, sizeof name, "linear_backward %s (dinp)", pq_lin_modules[j]);
        TIME_OP(&ms, name, f, pq_linear_backward(y, x, &w->w[j], N, in, oc));
        lin_bwd += ms;
        if (j <= PQ_V) qkv_bwd += ms;
        if (j == PQ_GATE || j == PQ_UP) gu_bwd += ms;
        snprintf(name, sizeof name, "lora_forward %s r=%d", pq_lin_modules[j], r);
        TIME_OP(&ms, name, 2.0 * N * r * (in + oc), pq_lora_forward(y, xa, x, A, B, 2.0f, N, in, oc, r));
        lora_fwd += ms;
        snprintf(name, sizeof name, "lora_backward %s r=%d", pq_lin_modules[j], r);
        TIME_OP(&ms, name, 4.0 * N * r * (in + oc), pq_lora_backward(z, dA, dB, dxa, x, y, xa, A, B, 2.0f, N, in, oc, r));
        lora_bwd += ms;
        snprintf(name, sizeof name, "dropout_forward (%d x %d)", N, in);
        TIME_OP(&ms, name, 0, pq_dropout_forward(y, x, 0.05f, 99, (size_t)N * in));
        lora_fwd += ms, lora_bwd += 2 * ms; // recomputed in the backward, and applied to the gradient
    }
    { // q, k, v as the model runs them: one group (the input converted once), with the biases
        float *outs[3] = {q, k, v};
        const float *bs[3] = {w->b[PQ_Q], w->b[PQ_K], w->b[PQ_V]}, *douts[3] = {q, k, v};
        double f = 2.0 * N * C * (QD + 2.0 * KD);
        TIME_OP(&ms, "linear_group_forward q,k,v", f, pq_linear_group_forward(outs, x, &w->w[PQ_Q], bs, 3, N, C));
        lin_fwd += ms - qkv_fwd;
        TIME_OP(&ms, "linear_group_backward q,k,v (dinp)", f, pq_linear_group_backward(y, douts, &w->w[PQ_Q], 3, N, C));
        lin_bwd += ms - qkv_bwd;
    }
    { // gate, up likewise (y, z (N,H) out; u (N,C) the input gradient)
        float *outs[2] = {y, z};
        const float *bs[2] = {w->b[PQ_GATE], w->b[PQ_UP]}, *douts[2] = {y, z};
        double f = 2.0 * N * C * 2.0 * H;
        TIME_OP(&ms, "linear_group_forward gate,up", f, pq_linear_group_forward(outs, x, &w->w[PQ_GATE], bs, 2, N, C));
        lin_fwd += ms - gu_fwd;
        TIME_OP(&ms, "linear_group_backward gate,up (dinp)", f,
                pq_linear_group_backward(u, douts, &w->w[PQ_GATE], 2, N, C));
        lin_bwd += ms - gu_bwd;
    }
    if (pq_act_size() == 4) { // generation's whole MLP into the residual at these rows (f32 storage, ops_gen.h):
      // PQ_DECODE_FUSE's bf16 intermediates and epilogue add against the f32 composition, in rows/s
        float *mb = pq_dev_alloc((size_t)N * H * 4), *tb = pq_dev_alloc((size_t)N * C * 4);
        double f = 2.0 * N * C * 3.0 * H, rs[2] = {0, 0};
        for (int on = 1; on >= 0; on--) {
            pq_cuda_set_decode_fuse(on);
            TIME_OP(&ms, on ? "mlp_forward, PQ_DECODE_FUSE (bf16 chain)" : "mlp_forward, f32 composition", f,
                    pq_mlp_forward(u, tb, y, z, mb, x, &w->w[PQ_GATE], &w->w[PQ_UP], &w->w[PQ_DOWN], w->b[PQ_GATE],
                                   w->b[PQ_UP], w->b[PQ_DOWN], N, C, H));
            rs[on] = N / (ms * 1e-3);
        }
        pq_cuda_set_decode_fuse(-1);
        printf("RESULT ops_mlp_fused_rows_s %.0f\nRESULT ops_mlp_rows_s %.0f\n", rs[1], rs[0]);
        pq_dev_free(mb), pq_dev_free(tb);
    }
    if (N >= 8) { // a decoding step's products (issue 11): 1 and 8 rows through the GEMV kernel (gemv.cu) and through
      // cuBLASLt (PQ_GEMV=0), in GB/s of weights read (the H200's HBM: 4.8 TB/s). Each run takes the next
      // layer's weight (the LM head is one), so that 32 MB of q_proj is not served from the 50 MB L2.
        static const int js[] = {PQ_Q, PQ_GATE, PQ_DOWN, -1}; // -1: the LM head
        static const char *const jn[] = {"q_proj", "gate_proj", "down_proj", "lm_head"};
        int saved = reps, ROWS = 8;
        reps = 100; // a product of ~10 us: many runs per read-back
        float *go = pq_dev_alloc((size_t)ROWS * (c->V > W ? c->V : W) * 4);
        for (int rows = 1; rows <= ROWS; rows += ROWS - 1)
            for (int i = 0; i < 4; i++)
                for (int on = 1; on >= 0; on--) {
                    int j = js[i];
                    const PqWeight *w0 = j < 0 ? &m->lm_head : &m->layers[0].w[j];
                    double bytes = (double)w0->rows * w0->cols * (w0->dtype == PQ_F32 ? 4 : 2);
                    pq_cuda_set_gemv(on);
#define DECODE_PRODUCT(k)                                                                                          \
    do {                                                                                                           \
        const PqWeight *wk_ = j < 0 ? &m->lm_head : &m->layers[(k) % c->L].w[j];                                    \
        pq_linear_forward(go, x, wk_, j < 0 ? NULL : m->layers[(k) % c->L].b[j], rows, wk_->cols, wk_->rows);    \
    } while (0)
                    double dt;
                    TIME_REPS(dt, DECODE_PRODUCT);
#undef DECODE_PRODUCT
                    char name[64];
                    snprintf(name, sizeof name, "decode %s (%dx%d) N=%d %s", jn[i], w0->rows, w0->cols, rows,
                             on ? "gemv" : "cublasLt");
                    printf("op: %-40s %9.4f ms %8.1f GB/s\n", name, dt * 1e3, bytes / dt / 1e9);
                }
        pq_cuda_set_gemv(-1); // PQ_GEMV's again
        // a decoding step's fusions at 1 row (PQ_DECODE_FUSE, ops_gen.h), one GEMV launch each against the
        // products one by one (and their SwiGLU, residual): q, k, v; gate, up + SwiGLU; o_proj + residual
        static const char *const fn[] = {"q,k,v", "gate,up+swiglu", "o_proj+residual"};
        double gb_fused[3] = {0}, gb_pdl[3] = {0};
        for (int f = 0; f < 3; f++)
            for (int on = 2; on >= 0; on--) { // 2: fused, launched as programmatic dependents (PQ_PDL)
                const PqLayerW *w0 = &m->layers[0];
                int j0 = f == 0 ? PQ_Q : f == 1 ? PQ_GATE : PQ_O, nj = f == 0 ? 3 : f == 1 ? 2 : 1;
                double bytes = 0;
                for (int j = j0; j < j0 + nj; j++)
                    bytes += (double)w0->w[j].rows * w0->w[j].cols * (w0->w[j].dtype == PQ_F32 ? 4 : 2);
                pq_cuda_set_decode_fuse(on > 0);
                pq_cuda_set_pdl(on == 2);
#define DECODE_FUSED(k)                                                                                            \
    do {                                                                                                           \
        const PqLayerW *wk_ = &m->layers[(k) % c->L];                                                              \
        if (f == 0) {                                                                                              \
            float *const o_[3] = {go, go + QD, go + QD + KD};                                                      \
            const float *const b_[3] = {wk_->b[PQ_Q], wk_->b[PQ_K], wk_->b[PQ_V]};                                 \
            pq_linear_rows_group_forward(o_, x, &wk_->w[PQ_Q], b_, 3, 1, C);                                       \
        } else if (f == 1)                                                                                         \
            pq_gate_up_forward(go, go + H, go + 2 * (size_t)H, x, &wk_->w[PQ_GATE], &wk_->w[PQ_UP], NULL, NULL, 1, \
                               C, H);                                                                              \
        else pq_linear_rows_add_forward(go, go + C, x, &wk_->w[PQ_O], wk_->b[PQ_O], 1, QD, C);                     \
    } while (0)
                double dt;
                TIME_REPS(dt, DECODE_FUSED);
#undef DECODE_FUSED
                char name[64];
                snprintf(name, sizeof name, "decode %s N=1 %s", fn[f],
                         on == 2 ? "fused, PDL" : on ? "fused" : "one by one");
                printf("op: %-40s %9.4f ms %8.1f GB/s\n", name, dt * 1e3, bytes / dt / 1e9);
                if (on == 2) gb_pdl[f] = bytes / dt / 1e9;
                else if (on) gb_fused[f] = bytes / dt / 1e9;
                else printf("RESULT decode_pdl_%d_gbs %.1f\nRESULT decode_fused_%d_gbs %.1f\n"
                            "RESULT decode_unfused_%d_gbs %.1f\n",
                            f, gb_pdl[f], f, gb_fused[f], f, bytes / dt / 1e9);
            }
        pq_cuda_set_decode_fuse(-1); // PQ_DECODE_FUSE's and PQ_PDL's again
        pq_cuda_set_pdl(-1);
        reps = saved;
        pq_dev_free(go);
    }
    { // the LoRA products' kernels (PQ_LORA_GEMM) on q_proj's and gate_proj's shapes (the sums above: the default);
      // bf16 activations have bf16 products whatever the kind: timed once
        static const char *kinds[PQ_LORA_KINDS] = {"sgemm", "tf32", "lt", "sgemm_t"};
        int b16 = pq_ops_act_dtype() == PQ_BF16;
        for (int kd = 0; kd < (b16 ? 1 : PQ_LORA_KINDS); kd++) {
            pq_cuda_set_lora_gemm(kd);
            for (int j = PQ_Q; j <= PQ_GATE; j += PQ_GATE - PQ_Q) {
                int in, oc;
                pq_lin_shape(c, j, &in, &oc);
                char name[64];
                snprintf(name, sizeof name, "lora_forward %s r=%d %s", pq_lin_modules[j], r, b16 ? "bf16" : kinds[kd]);
                TIME_OP(&ms, name, 2.0 * N * r * (in + oc), pq_lora_forward(y, xa, x, A, B, 2.0f, N, in, oc, r));
                snprintf(name, sizeof name, "lora_backward %s r=%d %s", pq_lin_modules[j], r, b16 ? "bf16" : kinds[kd]);
                TIME_OP(&ms, name, 4.0 * N * r * (in + oc),
                        pq_lora_backward(z, dA, dB, dxa, x, y, xa, A, B, 2.0f, N, in, oc, r));
            }
        }
        pq_cuda_set_lora_gemm(-1); // PQ_LORA_GEMM's again
    }
    // LoRA as the trainer runs it: q,k,v (n 3) and gate,up (n 2) as groups over their shared input, o and down
    // alone; forward xa group + up per adapter, backward up_backward per adapter + dA group + dx group, dropout
    // 0.05 drawn inside (beside the per-projection lora + dropout_forward lines above)
    double grp_fwd = 0, grp_bwd = 0;
    {
        float *gA[3], *gxa[3], *gdxa[3], *gdA[3];
        uint64_t seeds[3] = {101, 102, 103};
        for (int t = 0; t < 3; t++) {
            gA[t] = dev_rand((size_t)r * W, 0.01f), gxa[t] = pq_dev_alloc((size_t)N * r * 4);
            gdxa[t] = dev_rand((size_t)N * r, 0.01f), gdA[t] = pq_dev_alloc((size_t)r * W * 4);
        }
        const float *cA[3] = {gA[0], gA[1], gA[2]}, *cdxa[3] = {gdxa[0], gdxa[1], gdxa[2]};
        static const int j0s[] = {PQ_Q, PQ_O, PQ_GATE, PQ_DOWN}, ns[] = {3, 1, 2, 1};
        for (int g = 0; g < 4; g++) {
            int j0 = j0s[g], n = ns[g], in, oc, ocs = 0, ocv[3];
            pq_lin_shape(c, j0, &in, &oc);
            for (int t = 0; t < n; t++) {
                int i2;
                pq_lin_shape(c, j0 + t, &i2, &ocv[t]);
                ocs += ocv[t];
            }
            char name[64], gname[32] = "";
            for (int t = 0; t < n; t++)
                snprintf(gname + strlen(gname), sizeof gname - strlen(gname), "%s%s", t ? "," : "",
                         pq_lin_modules[j0 + t]);
            double f = 2.0 * N * r * in * n, fo = 2.0 * N * r * ocs, sf = 0, sb = 0;
            snprintf(name, sizeof name, "lora_xa_group %s r=%d", gname, r);
            TIME_OP(&ms, name, f, pq_lora_xa_group(gxa, x, cA, seeds, 0.05f, n, N, in, r));
            sf += ms;
            snprintf(name, sizeof name, "lora_up_forward %s r=%d", gname, r);
            TIME_OP(&ms, name, fo, for (int t = 0; t < n; t++) pq_lora_up_forward(y, gxa[t], B, 2.0f, N, ocv[t], r));
            sf += ms;
            snprintf(name, sizeof name, "lora_up_backward %s r=%d", gname, r);
            TIME_OP(&ms, name, 2 * fo,
                    for (int t = 0; t < n; t++) pq_lora_up_backward(dB, gdxa[t], x, gxa[t], B, 2.0f, N, ocv[t], r));
            sb += ms;
            snprintf(name, sizeof name, "lora_dA_group %s r=%d", gname, r);
            TIME_OP(&ms, name, f, pq_lora_dA_group(gdA, cdxa, x, seeds, 0.05f, n, N, in, r));
            sb += ms;
            snprintf(name, sizeof name, "lora_dx_group %s r=%d", gname, r);
            TIME_OP(&ms, name, f, pq_lora_dx_group(z, cdxa, cA, seeds, 0.05f, n, N, in, r));
            sb += ms;
            printf("op: %-40s %9.3f ms forward, %.3f ms backward\n", gname, sf, sb);
            grp_fwd += sf, grp_bwd += sb;
        }
        for (int t = 0; t < 3; t++) pq_dev_free(gA[t]), pq_dev_free(gxa[t]), pq_dev_free(gdxa[t]), pq_dev_free(gdA[t]);
    }
    printf("ops: LoRA + dropout per layer: per projection %.3f ms forward, %.3f ms backward; grouped %.3f ms "
           "forward, %.3f ms backward\n",
           lora_fwd, lora_bwd, grp_fwd, grp_bwd);
    double af = 0; // causal attention FLOPs of the forward over the records
    for (int i = 0; i < N; i++) af += 4.0 * (hpos[i] + 1) * NH * HS;
    TIME_OP(&ms, "attention_forward", af, pq_attention_forward(att, lse, q, k, v, pos, N, NH, KVH, HS, c->window));
    other_fwd += ms;
    TIME_OP(&ms, "attention_backward", 2.5 * af,
            pq_attention_backward(dq, dk, dv, y, q, k, v, att, lse, pos, N, NH, KVH, HS, c->window));
    other_bwd += ms;
    TIME_OP(&ms, "rope_forward q, k", 0,
            (pq_rope_forward(q, pos, m->inv_freq, N, NH, HS), pq_rope_forward(k, pos, m->inv_freq, N, KVH, HS)));
    other_fwd += ms, other_bwd += ms;
    TIME_OP(&ms, "rmsnorm_forward x2", 0,
            (pq_rmsnorm_forward(y, rstd, x, w->ln1, N, C, c->eps), pq_rmsnorm_forward(y, rstd, x, w->ln2, N, C, c->eps)));
    other_fwd += ms;
    TIME_OP(&ms, "rmsnorm_backward x2", 0,
            (pq_rmsnorm_backward(z, x, y, w->ln1, rstd, N, C), pq_rmsnorm_backward(z, x, y, w->ln2, rstd, N, C)));
    other_bwd += ms;
    TIME_OP(&ms, "swiglu_forward", 0, pq_swiglu_forward(z, x, y, N, H));
    other_fwd += ms;
    TIME_OP(&ms, "swiglu_backward", 0, pq_swiglu_backward(z, u, x, y, x, N, H));
    other_bwd += ms;
    // the model's one residual add alone and the other fused with the second norm
    TIME_OP(&ms, "residual_forward", 0, pq_residual_forward(x, y, (size_t)N * C));
    other_fwd += ms;
    double rr;
    TIME_OP(&rr, "residual_rmsnorm_forward", 0, pq_residual_rmsnorm_forward(z, rstd, x, y, w->ln2, N, C, c->eps));
    TIME_OP(&ms, "rmsnorm_forward (one; the other is the one above)", 0,
            pq_rmsnorm_forward(y, rstd, x, w->ln1, N, C, c->eps));
    other_fwd += rr - ms;
    double head_f = 2.0 * M * c->V * C, head_fwd, head_bwd;
    TIME_OP(&head_fwd, "logp_forward (LM head, half the rows)", head_f,
            pq_logp_forward(lp, llse, x, &m->lm_head, tg, M, C, c->V));
    TIME_OP(&head_bwd, "logp_backward", 2 * head_f, pq_logp_backward(y, dlp, x, &m->lm_head, tg, llse, M, C, c->V));
    double P = 0;
    for (int j = 0; j < PQ_NLIN; j++) {
        int in, oc;
        pq_lin_shape(c, j, &in, &oc);
        P += (double)in * oc;
    }
    // a forward as pq-logp runs it: products and the rest per layer, then the LM head
    double base = lin_fwd + other_fwd, logp_ms = c->L * base + head_fwd;
    double flops = 2 * P * c->L * N + af * c->L + head_f;
    printf("RESULT ops_linear_fwd_ms %.3f\nRESULT ops_linear_bwd_ms %.3f\n", lin_fwd, lin_bwd);
    printf("ops: per layer forward %.3f ms: linear products %.0f%%, attention and elementwise %.0f%%; "
           "LoRA + dropout add %.3f ms\n",
           base, 100 * lin_fwd / base, 100 * other_fwd / base, lora_fwd);
    printf("ops: per layer backward %.3f ms: linear products %.0f%%, attention and elementwise %.0f%%, "
           "LoRA + dropout %.0f%%\n",
           lin_bwd + other_bwd + lora_bwd, 100 * lin_bwd / (lin_bwd + other_bwd + lora_bwd),
           100 * other_bwd / (lin_bwd + other_bwd + lora_bwd), 100 * lora_bwd / (lin_bwd + other_bwd + lora_bwd));
    printf("ops: a pq-logp forward from these (%d layers + LM head): %.1f ms, %.0f tokens/s, MFU %.1f%% of %.0f "
           "TFLOP/s; the linear products alone run at %.1f%%\n",
           c->L, logp_ms, N / (logp_ms * 1e-3), 100 * flops / (logp_ms * 1e-3) / (peak * 1e12), peak,
           100 * (2 * P * N) / (lin_fwd * 1e-3) / (peak * 1e12));
    void *p[] = {x, y, z, u, q, k, v, att, lse, rstd, dq, dk, dv, A, B, xa, dA, dB, dxa, pos, tg, lp, dlp, llse};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) pq_dev_free(p[i]);
    free(htg);
    return 0;
}

// ---- --what gen: generation through lib/gen.h (issue 11) ----

// A case: nreq requests of n samples each, prompts of plo..phi tokens
// (random ids), new tokens each (no end token: every sample runs to its
// budget), slots decoded together, greedy or T=1 top-p 0.95; in --gen-case all or not.
typedef struct GenCase {
    const char *name;
    int nreq, n, plo, phi, new_tokens, slots, greedy, all;
} GenCase;

static const GenCase gen_cases[] = {
    {"b1", 1, 1, 512, 512, 64, 1, 1, 1},
    {"b64", 64, 1, 512, 512, 128, 64, 0, 1},
    // pq-summarize -n 10 --max-tokens 128 on the 15 bundled articles in its default slots on a GPU (llm.h)
    {"n10", 15, 10, 500, 900, 128, PQ_LLM_LOCAL_GPU_JOBS, 0, 1},
    // the same in 8 slots (-j 8, the CPU's default)
    {"n10j8", 15, 10, 500, 900, 128, 8, 0, 0},
    // 256 sequences of 2,048 tokens in the cache at once: one prompt is prefilled a step (the
    // prefill budget), so 256 new tokens keep the first sequence until the last has started
    {"b256", 256, 1, 1792, 1792, 256, 256, 1, 0},
};

typedef struct GenRun {
    int V, bad;        // samples with a wrong length or id
    long long samples; // finished
} GenRun;

static void gen_done(void *user, PqGenOut *outs, int n, const char *error, int cancelled) {
    GenRun *run = user;
    if (error || cancelled) {
        fprintf(stderr, "bench-7b: generation: %s\n", error ? error : "cancelled");
        run->bad++;
        return;
    }
    for (int k = 0; k < n; k++) {
        run->samples++;
        for (int t = 0; t < outs[k].n; t++)
            if (outs[k].ids[t] < 0 || outs[k].ids[t] >= run->V) run->bad++;
    }
}

// Weight bytes a decode step reads: every matmul weight once (bf16), the LM
// head, and the embedding rows of its tokens.
static double weight_bytes(const PqConfig *c, long long rows) {
    return 2.0 * (block_params(c) + (double)c->V * c->C + (double)rows * c->C);
}

// PQ_GEN_PROFILE=1: where a step's time went, a line per kind of step (phases with time: the device's ms a step,
// its share of the wall time, the host's ms a step between the same marks), and RESULT
// gen_<case>_prof_<kind>_<phase>_ms (a step, the device's), _<phase>_host_ms and _wall_ms for decode and
// prefill steps.
static void gen_profile_print(const char *nm, const PqGenProfile *p) {
    for (int k = 0; k < PQ_GP_IDLE; k++) {
        const PqGenProfileKind *x = &p->k[k];
        if (!x->steps) continue;
        double n = (double)x->steps, sum = 0;
        for (int ph = 0; ph < PQ_GP_PHASES; ph++) sum += x->ms[ph];
        printf("gen: %s: profile, %s: %lld steps of %.1f rows, %.3f ms a step (wall), %.1f%% marked; ms a step "
               "(share) host ms:",
               nm, pq_gen_profile_kind(k), x->steps, x->rows / n, x->wall_ms / n,
               x->wall_ms > 0 ? 100 * sum / x->wall_ms : 0);
        for (int ph = 0; ph < PQ_GP_PHASES; ph++)
            if (x->ms[ph] > 0 || x->host_ms[ph] > 0)
                printf(" %s %.3f (%.1f%%) %.3f", pq_gen_profile_phase(ph), x->ms[ph] / n,
                       x->wall_ms > 0 ? 100 * x->ms[ph] / x->wall_ms : 0, x->host_ms[ph] / n);
        printf("\n");
        printf("RESULT gen_%s_prof_%s_wall_ms %.4f\n", nm, pq_gen_profile_kind(k), x->wall_ms / n);
        for (int ph = 0; ph < PQ_GP_PHASES; ph++)
            printf("RESULT gen_%s_prof_%s_%s_ms %.4f\nRESULT gen_%s_prof_%s_%s_host_ms %.4f\n", nm,
                   pq_gen_profile_kind(k), pq_gen_profile_phase(ph), x->ms[ph] / n, nm, pq_gen_profile_kind(k),
                   pq_gen_profile_phase(ph), x->host_ms[ph] / n);
    }
}

// Runs one case; prints "gen:" lines and RESULT gen_<case>_* lines. Returns 1 when
// a sample came back wrong.
static int gen_case(const PqModel *m, GenCase k, double peak, double peak_gbs) {
    const PqConfig *c = &m->cfg;
    int R = k.nreq, G = k.new_tokens;
    int kelem = c->dtype == PQ_F32 ? 4 : 2; // the paged cache's element on the GPU (gen.c's paged_new)
    double kv_pos = 2.0 * c->KVH * c->HS * kelem; // bytes of one position's K and V in one layer
    int *P = pq_xmalloc((size_t)R * sizeof *P), *admitted = pq_xmalloc((size_t)R * sizeof *admitted);
    int32_t **prompts = pq_xmalloc((size_t)R * sizeof *prompts);
    long long want_prompt = 0;
    for (int r = 0; r < R; r++) {
        P[r] = k.plo + (k.phi > k.plo ? (int)(rnd() % (uint64_t)(k.phi - k.plo + 1)) : 0);
        if (P[r] + G > c->max_pos) P[r] = c->max_pos - G;
        prompts[r] = pq_xmalloc((size_t)P[r] * sizeof **prompts);
        for (int t = 0; t < P[r]; t++) prompts[r][t] = (int32_t)(rnd() % (uint64_t)c->V);
        admitted[r] = -1;
        want_prompt += P[r];
    }
    PqGenParams gp;
    pq_gen_params_init(&gp);
    gp.max_tokens = G;
    gp.temperature = k.greedy ? 0.0f : 1.0f;
    gp.top_p = k.greedy ? 1.0f : 0.95f;
    size_t free0 = pq_dev_free_bytes();
    int32_t no_eos[1] = {0};
    PqGen *g = pq_gen_new(m, NULL, k.slots, no_eos, 0);
    size_t free1 = pq_dev_free_bytes();
    double kv_gb = free0 > free1 ? (double)(free0 - free1) / 1e9 : 0;
    GenRun run = {c->V, 0, 0};
    double t0 = now_s();
    for (int r = 0; r < R; r++) pq_gen_submit(g, prompts[r], P[r], k.n, 1000 + (uint64_t)r, &gp, gen_done, &run);
    // steps that prefill (with the decode rows that ride along) and steps that only decode
    double pf_t = 0, pf_flops = 0, dc_t = 0, dc_wbytes = 0, dc_kvbytes = 0, kv_peak = 0;
    long long pf_tok = 0, pf_gen = 0, pf_steps = 0, dc_gen = 0, dc_steps = 0, dc_rows = 0, seen = 0, pf_all = 0;
    int next = 0, step = 0, off = 0, all_in = 0; // next request to be prefilled; off: the schedule model missed a step
    while (pq_gen_pending(g) > 0) {
        long long pf0, gn0, pf1, gn1;
        pq_gen_counts(g, &pf0, &gn0, NULL);
        double t = now_s();
        pq_gen_step(g);
        double dt = now_s() - t;
        pq_gen_counts(g, &pf1, &gn1, NULL);
        long long dpf = pf1 - pf0, dgn = gn1 - gn0;
        // the prompts prefilled in this step (FIFO, whole prompts)
        int first = next;
        pf_all += dpf;
        while (next < R && seen + P[next] <= pf_all) seen += P[next], admitted[next++] = step;
        // rows decoding: the samples of requests prefilled earlier and not done; their contexts
        long long rows = 0, nlive = 0;
        double ctx_bytes = 0, attn = 0, live = 0;
        for (int r = 0; r < R; r++) {
            int s = admitted[r];
            if (s < 0) continue;
            if (s < step && step <= s + G - 1) {
                int ctx = P[r] + (step - s);
                rows += k.n;
                for (int l = 0; l < c->L; l++) {
                    int w = pq_layer_window(c, l), n = w > 0 && ctx > w + 1 ? w + 1 : ctx;
                    ctx_bytes += (double)k.n * n * kv_pos;
                    attn += 4.0 * k.n * n * c->NH * c->HS;
                }
            }
            if (s <= step && step <= s + G - 1) live += P[r] + (double)k.n * (step - s), nlive += k.n;
        }
        if (live * kv_pos * c->L > kv_peak) kv_peak = live * kv_pos * c->L;
        if (!all_in && nlive == (long long)R * k.n) { // said at once: a run cut short later still tells
            all_in = 1;
            printf("gen: %s: step %d: all %lld sequences in the cache, %.2f GB of KV in use (of %.1f GB allocated); "
                   "peak device memory %.1f GB\n",
                   k.name, step, nlive, live * kv_pos * c->L / 1e9, kv_gb, pq_dev_peak_bytes() / 1e9);
            printf("RESULT gen_%s_all_in_kv_gb %.2f\nRESULT gen_%s_kv_gb %.1f\nRESULT gen_%s_peak_gb %.1f\n", k.name,
                   live * kv_pos * c->L / 1e9, k.name, kv_gb, k.name, pq_dev_peak_bytes() / 1e9);
            fflush(stdout);
        }
        int started = next - first;
        long long seen_rows = dgn - (long long)k.n * started;
        if (rows != seen_rows) { // the model is off: the rows seen, of the contexts it gives (an estimate)
            if (!off)
                printf("gen: %s: step %d: %lld rows expected, %lld generated less %d first tokens: rows and bytes "
                       "estimated from here on (preemption or fewer slots than samples)\n",
                       k.name, step, rows, dgn, k.n * started);
            off = 1;
            seen_rows = seen_rows < 0 ? 0 : seen_rows > k.slots ? k.slots : seen_rows;
            double f = rows > 0 ? (double)seen_rows / rows : 0;
            ctx_bytes *= f, attn *= f, rows = seen_rows;
        }
        if (dpf > 0) {
            pf_t += dt, pf_tok += dpf, pf_gen += dgn, pf_steps++;
            double f = 2 * block_params(c) * (double)(dpf + rows) + 2.0 * c->V * c->C * (double)(started + rows);
            for (int r = first; r < next; r++) f += attn_flops(c, P[r], 1);
            pf_flops += f + attn;
        } else {
            dc_t += dt, dc_gen += dgn, dc_steps++, dc_rows += rows;
            dc_wbytes += weight_bytes(c, rows), dc_kvbytes += ctx_bytes;
        }
        step++;
        if (step % 128 == 0) { // how far a run cut short got
            printf("gen: %s: step %d, %.1f s: %lld tokens prefilled, %lld generated\n", k.name, step, now_s() - t0, pf1,
                   gn1);
            fflush(stdout);
        }
    }
    double total = now_s() - t0;
    long long prefilled, generated, steps;
    pq_gen_counts(g, &prefilled, &generated, &steps);
    PqGenStats gs;
    pq_gen_stats(g, &gs);
    PqGenProfile prof;
    int profiled = pq_gen_profile(g, &prof);
    pq_gen_free(g);
    int rc = 0;
    long long want = (long long)R * k.n * G;
    if (run.bad || run.samples != (long long)R * k.n || generated != want) {
        printf("gen: %s: FAIL: %lld samples of %d, %lld tokens of %lld, %d bad\n", k.name, run.samples, R * k.n,
               generated, want, run.bad);
        rc = 1;
    }
    const char *nm = k.name;
    double pf_tps = pf_t > 0 ? pf_tok / pf_t : 0, mfu = pf_t > 0 ? pf_flops / pf_t / (peak * 1e12) : 0;
    double dc_tps = dc_t > 0 ? dc_gen / dc_t : 0, ms = dc_steps ? 1e3 * dc_t / dc_steps : 0;
    double gbs = dc_t > 0 ? (dc_wbytes + dc_kvbytes) / dc_t / 1e9 : 0, e2e = generated / total;
    double per = dc_steps ? 1e9 * (double)dc_steps : 1; // GB a step
    printf("gen: %s: %d request(s) x %d sample(s), prompts %d-%d tokens, %d new each, %d slots, %s: %lld tokens "
           "generated in %.3f s (%lld steps): %.0f tok/s end to end\n",
           nm, R, k.n, k.plo, k.phi, G, k.slots, k.greedy ? "greedy" : "T=1 top-p 0.95 on the device", generated,
           total, steps, e2e);
    printf("gen: %s: prefill %lld tokens in %lld step(s) (%lld tokens sampled in them), %.3f s: %.0f tok/s, "
           "%.1f TFLOP/s, MFU %.1f%% (of %.0f)%s\n",
           nm, pf_tok, pf_steps, pf_gen, pf_t, pf_tps, pf_t > 0 ? pf_flops / pf_t / 1e12 : 0, 100 * mfu, peak,
           prefilled > want_prompt ? " (preempted sequences recomputed)" : "");
    printf("gen: %s: %lld prompt chunks short of a whole prompt (%lld steps beside decoding rows), %lld prompt "
           "positions shared from the prefix cache\n",
           nm, gs.chunks, gs.mixed, gs.prefix_hit);
    printf("gen: %s: decode %lld steps of %.1f rows on average, %.3f s: %.2f ms a step, %.0f tok/s; reads %.2f GB "
           "a step (weights %.2f, KV %.2f, every row its whole context): %.0f GB/s, %.1f%% of %.0f GB/s\n",
           nm, dc_steps, dc_steps ? (double)dc_rows / dc_steps : 0, dc_t, ms, dc_tps, (dc_wbytes + dc_kvbytes) / per,
           dc_wbytes / per, dc_kvbytes / per, gbs,
           100 * gbs / peak_gbs, peak_gbs);
    printf("gen: %s: KV cache %.1f GB allocated, at most %.2f GB in use; peak device memory %.1f GB\n", nm, kv_gb,
           kv_peak / 1e9, pq_dev_peak_bytes() / 1e9);
    printf("RESULT gen_%s_e2e_tok_s %.0f\nRESULT gen_%s_prefill_tok_s %.0f\nRESULT gen_%s_prefill_mfu %.3f\n", nm, e2e,
           nm, pf_tps, nm, mfu);
    printf("RESULT gen_%s_decode_tok_s %.0f\nRESULT gen_%s_decode_step_ms %.2f\nRESULT gen_%s_decode_gbs %.0f\n"
           "RESULT gen_%s_decode_bw_frac %.3f\n",
           nm, dc_tps, nm, ms, nm, gbs, nm, gbs / peak_gbs);
    printf("RESULT gen_%s_kv_gb %.1f\nRESULT gen_%s_kv_used_gb %.2f\nRESULT gen_%s_peak_gb %.1f\nRESULT gen_%s_ok %d\n",
           nm, kv_gb, nm, kv_peak / 1e9, nm, pq_dev_peak_bytes() / 1e9, nm, !rc);
    if (profiled) gen_profile_print(nm, &prof);
    fflush(stdout); // a run killed in a later case keeps this one's lines
    for (int r = 0; r < R; r++) free(prompts[r]);
    free(prompts), free(P), free(admitted);
    return rc;
}

// --gen-case: a comma-separated list of gen_cases' names, or all (b1, b64, n10).
static int gen_bench(const PqModel *m, const char *which, int slots, int prompt, int new_tokens, int greedy,
                     double peak, double peak_gbs) {
    { // warm-up: the first products' plans, the first allocations
        GenCase w = {"warm-up", 2, 2, 64, 64, 4, 4, 0, 0};
        int32_t no_eos[1] = {0};
        PqGen *g = pq_gen_new(m, NULL, w.slots, no_eos, 0);
        GenRun run = {m->cfg.V, 0, 0};
        PqGenParams gp;
        pq_gen_params_init(&gp);
        gp.max_tokens = w.new_tokens;
        int32_t *ids = pq_xmalloc((size_t)w.plo * sizeof *ids);
        for (int t = 0; t < w.plo; t++) ids[t] = (int32_t)(rnd() % (uint64_t)m->cfg.V);
        for (int r = 0; r < w.nreq; r++) pq_gen_submit(g, ids, w.plo, w.n, 1, &gp, gen_done, &run);
        while (pq_gen_pending(g) > 0) pq_gen_step(g);
        pq_gen_free(g);
        free(ids);
    }
    int rc = 0, ran = 0;
    for (size_t i = 0; i < sizeof gen_cases / sizeof *gen_cases; i++) {
        GenCase k = gen_cases[i];
        size_t n = strlen(k.name);
        int pick = 0;
        for (const char *s = which; *s;) {
            size_t l = strcspn(s, ",");
            if ((l == n && !strncmp(s, k.name, n)) || (l == 3 && !strncmp(s, "all", 3) && k.all))
                pick = 1;
            s += l + (s[l] == ',');
        }
        if (!pick) continue;
        if (slots > 0) k.slots = slots;
        if (prompt > 0) k.plo = k.phi = prompt;
        if (new_tokens > 0) k.new_tokens = new_tokens;
        if (greedy) k.greedy = 1;
        if (k.n > 1 && k.slots < k.nreq * k.n)
            printf("gen: %s: %d slots for %d samples: rows and bytes of the decode are estimates\n", k.name, k.slots,
                   k.nreq * k.n);
        rc |= gen_case(m, k, peak, peak_gbs);
        ran++;
    }
    if (!ran) {
        fprintf(stderr, "bench-7b: --gen-case %s: no such case (b1, b64, n10, n10j8, b256, all)\n", which);
        return 2;
    }
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench-7b CONFIG.json [--seq T] [--seqs S] [--iters K] [--rank R] [--checkpoint auto|on|off] "
                        "[--peak-tflops P] [--device N] [--what logp|dpo|both|ops|gen] "
                        "[--gen-case all|b1,b64,n10,n10j8,b256] [--gen-slots S] [--gen-prompt P] [--gen-new G] "
                        "[--gen-greedy] [--peak-gbs G]\n");
        return 2;
    }
    int T = 2048, S = 2, iters = 3, r = 16, ckpt = 1, dev = 0;
    double peak = 0, peak_gbs = 0; // (0: the device's, pq_dev_peaks)
    const char *what = "both", *gen_which = "all";
    int gen_slots = 0, gen_prompt = 0, gen_new = 0, gen_greedy = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "0";
        if (!strcmp(a, "--seq")) T = atoi(v), i++;
        else if (!strcmp(a, "--seqs")) S = atoi(v), i++;
        else if (!strcmp(a, "--iters")) iters = atoi(v), i++;
        else if (!strcmp(a, "--rank")) r = atoi(v), i++;
        else if (!strcmp(a, "--peak-tflops")) peak = atof(v), i++;
        else if (!strcmp(a, "--device")) dev = atoi(v), i++;
        else if (!strcmp(a, "--what")) what = v, i++;
        else if (!strcmp(a, "--peak-gbs")) peak_gbs = atof(v), i++;
        else if (!strcmp(a, "--gen-case")) gen_which = v, i++;
        else if (!strcmp(a, "--gen-slots")) gen_slots = atoi(v), i++;
        else if (!strcmp(a, "--gen-prompt")) gen_prompt = atoi(v), i++;
        else if (!strcmp(a, "--gen-new")) gen_new = atoi(v), i++;
        else if (!strcmp(a, "--gen-greedy")) gen_greedy = 1;
        else if (!strcmp(a, "--no-checkpoint")) ckpt = PQ_CKPT_OFF;
        else if (!strcmp(a, "--checkpoint"))
            ckpt = !strcmp(v, "auto") ? PQ_CKPT_AUTO : !strcmp(v, "off") ? PQ_CKPT_OFF : PQ_CKPT_ON, i++;
        else {
            fprintf(stderr, "bench-7b: unknown option %s\n", a);
            return 2;
        }
    }
    if (pq_ops_set_device(dev)) fprintf(stderr, "bench-7b: no device %d on backend %s\n", dev, pq_ops_backend());
    // what MFU and bandwidth use are fractions of: this device's peaks unless given (an H200's where unknown)
    PqDevInfo di;
    pq_dev_info(&di);
    double dev_tf, dev_gbs;
    const char *how = pq_dev_peaks(&di, &dev_tf, &dev_gbs);
    const char *src = peak > 0 && peak_gbs > 0           ? "from the command line"
                      : dev_tf > 0 && dev_gbs > 0          ? how
                      : !strcmp(how, "nothing known")      ? "an H200's, assumed: nothing is known of this device"
                                                           : "an H200's where not known";
    printf("device: %s (%d SMs, %.1f GB): peaks %.0f TFLOP/s dense bf16, %.0f GB/s (%s)\n", di.name, di.sms,
           di.mem_bytes / 1e9, peak > 0 ? peak : dev_tf > 0 ? dev_tf : 989,
           peak_gbs > 0 ? peak_gbs : dev_gbs > 0 ? dev_gbs : 4800, src);
    if (peak <= 0) peak = dev_tf > 0 ? dev_tf : 989;
    if (peak_gbs <= 0) peak_gbs = dev_gbs > 0 ? dev_gbs : 4800;
    printf("RESULT dev_peak_tflops %.0f\nRESULT dev_peak_gbs %.0f\nRESULT dev_mem_gb %.1f\n", peak, peak_gbs,
           di.mem_bytes / 1e9);
    PqErr e;
    double t0 = now_s();
    PqModel *m = random_model(argv[1], &e);
    if (!m) {
        fprintf(stderr, "bench-7b: %s\n", e.msg);
        return 3;
    }
    const PqConfig *c = &m->cfg;
    // the activations' storage as the tools choose it (PQ_ACTIVATIONS=f32|bf16), before any activation buffer
    if (pq_ops_act_choose(c->dtype, e.msg, sizeof e.msg) < 0) {
        fprintf(stderr, "bench-7b: %s\n", e.msg);
        return 2;
    }
    const char *act = pq_dtype_name(pq_ops_act_dtype());
    printf("model: %s shape, L=%d C=%d NH=%d KVH=%d H=%d V=%d, RANDOM bf16 weights made on the %s in %.1f s, "
           "%s activations\n",
           argv[1], c->L, c->C, c->NH, c->KVH, c->H, c->V, pq_ops_backend(), now_s() - t0, act);
    int N = T * S;
    int prompt = T / 2; // responses: the second half of each sequence
    int32_t *ids = pq_xmalloc((size_t)N * 4), *pos = pq_xmalloc((size_t)N * 4), *tg = pq_xmalloc((size_t)N * 4);
    for (int s = 0; s < S; s++)
        for (int i = 0; i < T; i++) {
            int k = s * T + i;
            ids[k] = (int32_t)(rnd() % (uint64_t)c->V);
            pos[k] = i;
        }
    for (int k = 0; k < N; k++) tg[k] = pos[k] + 1 >= prompt && pos[k] + 1 < T ? ids[k + 1] : -1;
    int M = 0;
    for (int k = 0; k < N; k++) M += tg[k] >= 0;
    double P = block_params(c), fa = attn_flops(c, T, S);
    float *lp = pq_xmalloc((size_t)N * 4);
    int rc = 0;
    if (!strcmp(what, "ops")) {
        rc = profile_ops(m, pos, N, r, peak);
    }
    if (!strcmp(what, "gen")) rc = gen_bench(m, gen_which, gen_slots, gen_prompt, gen_new, gen_greedy, peak, peak_gbs);
    if (!strcmp(what, "logp") || !strcmp(what, "both")) {
        // forward log-probs as pq-logp runs them (LM head on the M response rows)
        double flops = 2 * P * N + fa + 2.0 * M * c->V * c->C;
        pq_model_logp(m, ids, pos, tg, N, lp, &e); // warm-up
        double t = now_s();
        for (int k = 0; k < iters; k++) pq_model_logp(m, ids, pos, tg, N, lp, &e);
        double dt = (now_s() - t) / iters;
        double sum = 0;
        for (int k = 0; k < N; k++) sum += lp[k];
        if (!isfinite(sum)) rc = 1;
        printf("logp: %d sequences x %d tokens, %s activations, %.3f s per forward, %.0f tokens/s, %.1f TFLOP/s, "
               "MFU %.1f%% (of %.0f TFLOP/s), mean logp %.3f\n",
               S, T, act, dt, N / dt, flops / dt / 1e12, 100 * flops / dt / (peak * 1e12), peak, sum / M);
        printf("RESULT logp_tokens_per_s %.0f\nRESULT logp_mfu %.3f\nRESULT logp_peak_gb %.1f\n", N / dt,
               flops / dt / (peak * 1e12), pq_dev_peak_bytes() / 1e9);
    }
    if ((!strcmp(what, "dpo") || !strcmp(what, "both")) && ckpt == PQ_CKPT_OFF) {
        // every layer's activations kept, as asked: a device too small for them says so instead of running out
        // (the step's LoRA, made to be counted: pq_trainer_bytes reads its rank and targets)
        int Nd0 = 2 * (S / 2 > 0 ? S / 2 : 1) * T;
        PqLora *counted = pq_lora_build(c, r, 2.0f * r, (1u << PQ_NLIN) - 1);
        size_t need = pq_trainer_bytes(c, counted, Nd0, 0), fr = pq_dev_free_bytes();
        pq_lora_free(counted);
        if (need + need / 20 > fr) {
            printf("dpo: skipped: %d tokens without checkpointing need %.1f GB of buffers, %.1f GB are free here\n",
                   Nd0, need / 1e9, fr / 1e9);
            printf("RESULT dpo_skipped_need_gb %.1f\nRESULT dpo_skipped_free_gb %.1f\n", need / 1e9, fr / 1e9);
            what = "";
        }
    }
    if (!strcmp(what, "dpo") || !strcmp(what, "both")) {
        // one DPO step: S/2 pairs (chosen, rejected of T tokens each) in one micro-batch,
        // forward + backward to LoRA r on all seven linears, clipping and AdamW
        // on the device (optim.h: parameters and gradients are backend memory)
        unsigned targets = (1u << PQ_NLIN) - 1;
        PqLora *lora = pq_lora_build(c, r, 2.0f * r, targets);
        float *hp = pq_xcalloc(lora->n_params, 4);
        for (size_t i = 0; i < lora->n_params; i++) hp[i] = 0.001f * (float)((int)(rnd() % 2001) - 1000) / 1000;
        pq_dev_upload(lora->params, hp, lora->n_params * 4);
        PqTrainer *tr = pq_trainer_build(m, lora, ckpt, 0.05f);
        PqAdamW opt;
        pq_adamw_build(&opt, lora->n_params, 1e-5, 0.9, 0.999, 1e-8, 0.0);
        int np = S / 2 > 0 ? S / 2 : 1;
        PqTrainPair *pairs = pq_xcalloc((size_t)np, sizeof *pairs);
        PqTrainPair **pp = pq_xcalloc((size_t)np, sizeof *pp);
        for (int k = 0; k < np; k++) {
            for (int s = 0; s < 2; s++) {
                pairs[k].ids[s] = pq_xmalloc((size_t)T * 4);
                for (int i = 0; i < T; i++) pairs[k].ids[s][i] = (int32_t)(rnd() % (uint64_t)c->V);
                pairs[k].len[s] = T, pairs[k].prompt_len[s] = prompt;
                pairs[k].ref[s] = -1000.0 * (s + 1); // as scripts/gpu-bench-torch
            }
            pp[k] = &pairs[k];
        }
        PqDpoCfg dc = {0};
        dc.loss = pq_dpo_loss_parse("sigmoid");
        dc.beta = 0.1;
        int Nd = 2 * np * T, Md = 2 * np * (T - prompt);
        // model FLOPs: forward and input-gradient backward through the frozen
        // base (2 x 2NP), attention forward + backward (3x), the LM head on
        // the response rows forward + backward (3 x 2MVC); recomputation not counted
        double flops = 4 * P * Nd + 3 * attn_flops(c, T, 2 * np) + 6.0 * Md * c->V * c->C;
        double dt = 0, loss = 0;
        for (int k = 0; k <= iters; k++) {
            double t = now_s();
            pq_trainer_zero_grad(tr);
            PqDpoMetrics met = {0};
            long tokens = 0;
            if (pq_train_dpo_micro(tr, &dc, pp, np, 1.0 / np, 1234 + k, 1, &met, &tokens)) rc = 1;
            if (!isfinite(pq_clip_grad_norm(tr->grads, lora->n_params, 1.0))) rc = 1;
            pq_adamw_step(&opt, lora->params, tr->grads, 1e-5);
            if (k > 0) dt += now_s() - t; // the first step warms up
            loss = met.loss / (met.n > 0 ? met.n : 1);
        }
        dt /= iters;
        if (!isfinite(loss)) rc = 1;
        printf("dpo: %d pair(s) of 2 x %d tokens, %s activations, LoRA r=%d on q,k,v,o,gate,up,down, %s%s, "
               "%.3f s per step "
               "(clipping and AdamW included), %.0f tokens/s, %.1f TFLOP/s, MFU %.1f%%, loss %.4f, "
               "peak device memory %.1f GB\n",
               np, T, act, r, tr->checkpoint ? "activation checkpointing" : "all activations kept",
               ckpt == PQ_CKPT_AUTO ? " (auto)" : "", dt, Nd / dt,
               flops / dt / 1e12, 100 * flops / dt / (peak * 1e12), loss, pq_dev_peak_bytes() / 1e9);
        printf("RESULT dpo_tokens_per_s %.0f\nRESULT dpo_mfu %.3f\nRESULT dpo_peak_gb %.1f\n", Nd / dt,
               flops / dt / (peak * 1e12), pq_dev_peak_bytes() / 1e9);
        // the trainer's own buffers for these tokens (no shared prompt counted), either way
        printf("dpo: trainer buffers for %d tokens: %.1f GB with checkpointing, %.1f GB without (weights apart)\n", Nd,
               pq_trainer_bytes(c, lora, Nd, 1) / 1e9, pq_trainer_bytes(c, lora, Nd, 0) / 1e9);
        printf("RESULT dpo_checkpoint %d\nRESULT dpo_buffers_ckpt_gb %.1f\nRESULT dpo_buffers_nockpt_gb %.1f\n",
               tr->checkpoint, pq_trainer_bytes(c, lora, Nd, 1) / 1e9, pq_trainer_bytes(c, lora, Nd, 0) / 1e9);
        for (int k = 0; k < np; k++) pq_train_pair_free(&pairs[k]);
        free(pairs), free(pp), free(hp);
        pq_adamw_free(&opt);
        pq_trainer_free(tr);
        pq_lora_free(lora);
    }
    free(ids), free(pos), free(tg), free(lp);
    random_model_free(m);
    return rc;
}
