// test-grad.c: LoRA gradients of the DPO losses (train.c + ops_grad_cpu.c)
// against central finite differences of the loss, for every target linear
// (A and B), every loss, with and without dropout, on tiny random models of
// each architecture built in memory (llama; mistral with a sliding window
// shorter than the records; qwen2 with q/k/v biases and tied embeddings;
// qwen3 with per-head q/k norms, a head size other than C / NH and a sliding
// window on its second layer only).
// Tolerance per tensor: |fd - g.d| <= 2% of (|fd| + |g.d| + 5% of the
// tensor's gradient norm), f32 forward passes being the noise floor.
// Also: checkpointed and kept activations give the same gradients, and one
// packed micro-batch equals the sum of per-pair micro-batches. With bf16
// activation storage (PQ_ACTIVATIONS, ops.h): the gradients of f32 storage
// (those checked above) within bf16's precision, but not equal to them, and
// checkpointed == kept to the bit.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora.h"
#include "train.h"

static int failures;

typedef struct Tiny {
    PqModel m;
    float *mem;
    size_t used;
} Tiny;

static float *take(Tiny *t, size_t n) {
    float *p = t->mem + t->used;
    t->used += n;
    return p;
}

static void randn(PqRng *r, float *p, size_t n, float std, float mean) {
    for (size_t i = 0; i < n; i++) {
        double u = pq_rng_uniform(r) + 1e-12, v = pq_rng_uniform(r);
        p[i] = (float)(mean + std * sqrt(-2 * log(u)) * cos(2 * M_PI * v));
    }
}

static PqWeight wmat(Tiny *t, PqRng *r, int rows, int cols, float std) {
    float *p = take(t, (size_t)rows * cols);
    randn(r, p, (size_t)rows * cols, std, 0);
    return (PqWeight){p, PQ_F32, rows, cols};
}

static void tiny_build(Tiny *t, int arch, uint64_t seed) {
    memset(t, 0, sizeof *t);
    PqConfig *c = &t->m.cfg;
    c->arch = arch;
    c->L = 2, c->C = 16, c->NH = 4, c->KVH = 2, c->HS = arch == PQ_ARCH_QWEN3 ? 6 : 4, c->H = 24, c->V = 37;
    c->max_pos = 256, c->eps = 1e-5f, c->rope_theta = 10000;
    c->window = arch == PQ_ARCH_MISTRAL || arch == PQ_ARCH_QWEN3 ? 3 : 0;
    c->window_from = arch == PQ_ARCH_QWEN3; // Qwen3: max_window_layers 1
    c->qk_norm = arch == PQ_ARCH_QWEN3;
    c->qkv_bias = arch == PQ_ARCH_QWEN2;
    c->tie = arch == PQ_ARCH_QWEN2;
    c->dtype = PQ_F32;
    t->mem = pq_xcalloc(200000, sizeof(float));
    PqRng r;
    pq_rng_seed(&r, seed);
    t->m.wte = wmat(t, &r, c->V, c->C, 1.0f);
    t->m.lm_head = c->tie ? t->m.wte : wmat(t, &r, c->V, c->C, 0.5f);
    float *lnf = take(t, c->C);
    randn(&r, lnf, c->C, 0.1f, 1);
    t->m.ln_f = lnf;
    t->m.layers = pq_xcalloc(c->L, sizeof *t->m.layers);
    for (int l = 0; l < c->L; l++) {
        PqLayerW *w = &t->m.layers[l];
        float *a = take(t, c->C), *b = take(t, c->C);
        randn(&r, a, c->C, 0.1f, 1);
        randn(&r, b, c->C, 0.1f, 1);
        w->ln1 = a, w->ln2 = b;
        for (int j = 0; j < PQ_NLIN; j++) {
            int in, out;
            pq_lin_shape(c, j, &in, &out);
            w->w[j] = wmat(t, &r, out, in, 0.4f);
            if (c->qkv_bias && j <= PQ_V) {
                float *bb = take(t, out);
                randn(&r, bb, out, 0.2f, 0);
                w->b[j] = bb;
            }
        }
        if (c->qk_norm) {
            float *qn = take(t, c->HS), *kn = take(t, c->HS);
            randn(&r, qn, c->HS, 0.2f, 1);
            randn(&r, kn, c->HS, 0.2f, 1);
            w->q_norm = qn, w->k_norm = kn;
        }
    }
    float *inv = take(t, c->HS / 2);
    for (int i = 0; i < c->HS / 2; i++) inv[i] = powf(c->rope_theta, -2.0f * i / c->HS);
    t->m.inv_freq = inv;
}

static void tiny_free(Tiny *t) {
    free(t->m.layers);
    free(t->mem);
}

static void make_pair(PqTrainPair *p, PqRng *r, int V, double ref_shift, int longer) {
    for (int s = 0; s < 2; s++) {
        p->prompt_len[s] = (longer ? 70 : 3) + (int)pq_rng_below(r, 3);
        p->len[s] = p->prompt_len[s] + 2 + (int)pq_rng_below(r, 5);
        p->ids[s] = pq_xmalloc(p->len[s] * sizeof(int32_t));
        for (int k = 0; k < p->len[s]; k++) p->ids[s][k] = (int32_t)pq_rng_below(r, V);
        if (s == 1) // same prompt for both
            for (int k = 0; k < p->prompt_len[0] && k < p->len[1]; k++) p->ids[1][k] = p->ids[0][k];
        p->ref[s] = -3.6 * (p->len[s] - p->prompt_len[s]) + ref_shift * (s ? -1 : 1);
    }
}

// Loss of all pairs (one packed micro-batch), no backward.
static double loss_of(PqTrainer *t, const PqDpoCfg *cfg, PqTrainPair **pairs, int n, uint64_t ds) {
    PqDpoMetrics m = {0};
    long tok = 0;
    if (pq_train_dpo_micro(t, cfg, pairs, n, 1.0, ds, 1, &m, &tok) != 0) return NAN;
    return m.loss;
}

// Loss without touching the gradients: the forward alone, or with dropout
// (whose masks the micro-batch draws only when training) a full step whose
// gradients are thrown away.
static double loss_fwd(PqTrainer *t, const PqDpoCfg *cfg, PqTrainPair **pairs, int n, uint64_t ds) {
    if (t->dropout == 0) { // no masks to draw: the forward alone
        PqDpoMetrics m = {0};
        long tok = 0;
        if (pq_train_dpo_micro(t, cfg, pairs, n, 1.0, ds, 0, &m, &tok) != 0) return NAN;
        return m.loss;
    }
    float *save = pq_xmalloc(t->lora->n_params * sizeof(float));
    memcpy(save, t->grads, t->lora->n_params * sizeof(float));
    double l = loss_of(t, cfg, pairs, n, ds);
    memcpy(t->grads, save, t->lora->n_params * sizeof(float));
    free(save);
    return l;
}

static void check_case(int arch, int loss, float dropout, int longer) {
    static const char *arch_name[] = {"llama", "mistral", "qwen2", "qwen3"};
    Tiny tm;
    tiny_build(&tm, arch, 11 + arch);
    PqLora *lora = pq_lora_build(&tm.m.cfg, 2, 4.0f, (1u << PQ_NLIN) - 1);
    PqRng r;
    pq_rng_seed(&r, 5);
    randn(&r, lora->params, lora->n_params, 0.1f, 0); // B != 0 so that A has a gradient
    PqTrainer *t = pq_trainer_build(&tm.m, lora, 1, dropout);
    PqDpoCfg cfg = {loss, 0.5, loss == PQ_LOSS_SIGMOID ? 0.1 : 0, loss == PQ_LOSS_SIGMOID ? 0.3 : 0, 0};
    PqTrainPair pp[2] = {0};
    PqTrainPair *pairs[2] = {&pp[0], &pp[1]};
    make_pair(&pp[0], &r, tm.m.cfg.V, 0.5, longer);
    make_pair(&pp[1], &r, tm.m.cfg.V, -0.3, longer);
    uint64_t ds = 77;
    pq_trainer_zero_grad(t);
    loss_of(t, &cfg, pairs, 2, ds);
    float *g = pq_xmalloc(lora->n_params * sizeof(float));
    memcpy(g, t->grads, lora->n_params * sizeof(float));

    // kept activations == checkpointed; per-pair micro-batches == one packed batch
    PqTrainer *t2 = pq_trainer_build(&tm.m, lora, 0, dropout);
    pq_trainer_zero_grad(t2);
    loss_of(t2, &cfg, pairs, 2, ds);
    // --checkpoint auto decides with pq_trainer_bytes: it must be what the buffers take, both ways
    for (int k = 0; k < 2; k++) {
        const PqTrainer *tk = k ? t2 : t;
        size_t est = pq_trainer_bytes(&tm.m.cfg, lora, tk->cap, tk->checkpoint);
        if (est != tk->dev_bytes) {
            printf("FAIL %s: pq_trainer_bytes %zu, the buffers of %d tokens (%s) take %zu\n", arch_name[arch], est,
                   tk->cap, tk->checkpoint ? "checkpointed" : "kept", tk->dev_bytes);
            failures++;
        }
    }
    double dmax = 0, gmax = 0;
    for (size_t i = 0; i < lora->n_params; i++) {
        dmax = fmax(dmax, fabs(t2->grads[i] - g[i]));
        gmax = fmax(gmax, fabs(g[i]));
    }
    if (dmax > 1e-6 * fmax(gmax, 1)) {
        printf("FAIL %s %s: checkpointed vs kept activations differ by %g\n", arch_name[arch], pq_dpo_loss_name(loss), dmax);
        failures++;
    }
    // 3 threads give the same gradients as 1 (sums in another order only)
    pq_ops_set_threads(3);
    pq_trainer_zero_grad(t2);
    loss_of(t2, &cfg, pairs, 2, ds);
    pq_ops_set_threads(1);
    dmax = 0;
    for (size_t i = 0; i < lora->n_params; i++) dmax = fmax(dmax, fabs(t2->grads[i] - g[i]));
    if (dmax > 1e-5 * fmax(gmax, 1)) {
        printf("FAIL %s %s: 3 threads vs 1 differ by %g\n", arch_name[arch], pq_dpo_loss_name(loss), dmax);
        failures++;
    }
    if (dropout == 0) { // the shared prompt (default) gives the gradients of unshared sequences
        t2->share_prompt = 0;
        pq_trainer_zero_grad(t2);
        loss_of(t2, &cfg, pairs, 2, ds);
        t2->share_prompt = 1;
        dmax = 0;
        for (size_t i = 0; i < lora->n_params; i++) dmax = fmax(dmax, fabs(t2->grads[i] - g[i]));
        if (!pq_train_can_share() || dmax > 1e-5 * fmax(gmax, 1)) {
            printf("FAIL %s %s: shared vs unshared prompts differ by %g\n", arch_name[arch], pq_dpo_loss_name(loss),
                   dmax);
            failures++;
        }
        pq_trainer_zero_grad(t2);
        loss_of(t2, &cfg, pairs, 1, ds);
        loss_of(t2, &cfg, pairs + 1, 1, ds);
        dmax = 0;
        for (size_t i = 0; i < lora->n_params; i++) dmax = fmax(dmax, fabs(t2->grads[i] - g[i]));
        if (dmax > 1e-5 * fmax(gmax, 1)) {
            printf("FAIL %s %s: packed vs per-pair micro-batches differ by %g\n", arch_name[arch], pq_dpo_loss_name(loss),
                   dmax);
            failures++;
        }
    }
    pq_trainer_free(t2);

    // directional derivatives per tensor: g.d vs (L(p + e d) - L(p - e d)) / 2e
    const double eps = 3e-3;
    float *dir = pq_xmalloc(lora->n_params * sizeof(float));
    int checked = 0;
    double worst = 0;
    for (int l = 0; l < tm.m.cfg.L; l++)
        for (int j = 0; j < PQ_NLIN; j++)
            for (int ab = 0; ab < 2; ab++) {
                PqLoraAB *p = &lora->ab[l * PQ_NLIN + j];
                float *x = ab ? p->B : p->A;
                const float *gx = g + (x - lora->params);
                int in, out;
                pq_lin_shape(&tm.m.cfg, j, &in, &out);
                size_t n = (size_t)lora->r * (ab ? out : in);
                double gn = 0; // the tensor's gradient norm: the scale of its tolerance
                for (size_t i = 0; i < n; i++) gn += (double)gx[i] * gx[i];
                gn = sqrt(gn);
                for (int rep = 0; rep < 2; rep++) {
                    double nn = 0, an = 0;
                    randn(&r, dir, n, 1, 0);
                    for (size_t i = 0; i < n; i++) nn += (double)dir[i] * dir[i];
                    for (size_t i = 0; i < n; i++) dir[i] /= (float)sqrt(nn), an += (double)gx[i] * dir[i];
                    float *save = pq_xmalloc(n * sizeof(float));
                    memcpy(save, x, n * sizeof(float));
                    for (size_t i = 0; i < n; i++) x[i] = save[i] + (float)eps * dir[i];
                    double lp = loss_fwd(t, &cfg, pairs, 2, ds);
                    for (size_t i = 0; i < n; i++) x[i] = save[i] - (float)eps * dir[i];
                    double lm = loss_fwd(t, &cfg, pairs, 2, ds);
                    memcpy(x, save, n * sizeof(float));
                    free(save);
                    double fd = (lp - lm) / (2 * eps);
                    double err = fabs(fd - an) / (fabs(an) + fabs(fd) + 0.05 * gn + 1e-4);
                    worst = fmax(worst, err);
                    checked++;
                    if (err > 2e-2) {
                        printf("FAIL %s %s dropout %g: layer %d %s lora_%c: analytic %.6g, finite differences %.6g\n",
                               arch_name[arch], pq_dpo_loss_name(loss), dropout, l, pq_lin_names[j], ab ? 'B' : 'A', an, fd);
                        failures++;
                    }
                }
            }
    printf("%-7s %-7s dropout %.2f%s: %d directional derivatives, worst relative error %.2e\n", arch_name[arch],
           pq_dpo_loss_name(loss), dropout, longer ? " records > 64 tokens" : "", checked, worst);
    free(dir);
    free(g);
    pq_train_pair_free(&pp[0]);
    pq_train_pair_free(&pp[1]);
    pq_trainer_free(t);
    pq_lora_free(lora);
    tiny_free(&tm);
}

// bf16 activation storage against f32 storage: every tensor's gradient within
// BF16_TOL of its f32 norm (plus 5% of the whole gradient's norm, the floor
// of tensors whose gradient is small), the whole gradient moved by more than
// BF16_MOVED (so the storage is used) and less than BF16_WHOLE, checkpointed
// == kept exactly. Each rounding costs up to 2^-9 relative, and the backward
// of layer 0 sits behind ~40 of them, forward and backward, on a 16-channel
// model (LoRA's products with bf16 operands, ops_grad.h, add a few more):
// measured 3e-2 to 1e-1 per tensor (layer 0 the worst), 2.3e-2 to 7.4e-2
// for the whole gradient; a wrong offset or a missed term moves it ~1.
#define BF16_TOL 0.2
#define BF16_WHOLE 0.1
#define BF16_MOVED 1e-4
static void check_bf16(int arch, float dropout, int longer) {
    static const char *arch_name[] = {"llama", "mistral", "qwen2", "qwen3"};
    Tiny tm;
    tiny_build(&tm, arch, 31 + arch);
    PqLora *lora = pq_lora_build(&tm.m.cfg, 2, 4.0f, (1u << PQ_NLIN) - 1);
    PqRng r;
    pq_rng_seed(&r, 9);
    randn(&r, lora->params, lora->n_params, 0.1f, 0);
    PqDpoCfg cfg = {PQ_LOSS_SIGMOID, 0.5, 0.1, 0.3, 0};
    PqTrainPair pp[2] = {0};
    PqTrainPair *pairs[2] = {&pp[0], &pp[1]};
    make_pair(&pp[0], &r, tm.m.cfg.V, 0.5, longer);
    make_pair(&pp[1], &r, tm.m.cfg.V, -0.3, longer);
    float *g[3];
    double loss[3];
    for (int k = 0; k < 3; k++) { // f32 kept, bf16 kept, bf16 checkpointed
        pq_ops_set_act_dtype(k ? PQ_BF16 : PQ_F32);
        PqTrainer *t = pq_trainer_build(&tm.m, lora, k == 2, dropout);
        pq_trainer_zero_grad(t);
        loss[k] = loss_of(t, &cfg, pairs, 2, 77);
        g[k] = pq_xmalloc(lora->n_params * sizeof(float));
        memcpy(g[k], t->grads, lora->n_params * sizeof(float));
        size_t est = pq_trainer_bytes(&tm.m.cfg, lora, t->cap, t->checkpoint);
        if (est != t->dev_bytes) { // (the estimate --checkpoint auto decides with, in either storage)
            printf("FAIL bf16 %s: pq_trainer_bytes %zu, the buffers (storage %s, %s) take %zu\n", arch_name[arch],
                   est, k ? "bf16" : "f32", t->checkpoint ? "checkpointed" : "kept", t->dev_bytes);
            failures++;
        }
        pq_trainer_free(t);
    }
    pq_ops_set_act_dtype(PQ_F32);
    double all = 0, moved = 0, worst = 0;
    size_t same = 0;
    for (size_t i = 0; i < lora->n_params; i++) {
        all += (double)g[0][i] * g[0][i];
        moved += ((double)g[1][i] - g[0][i]) * ((double)g[1][i] - g[0][i]);
        same += memcmp(&g[1][i], &g[2][i], sizeof(float)) == 0;
    }
    all = sqrt(all), moved = sqrt(moved);
    for (int l = 0; l < tm.m.cfg.L; l++)
        for (int j = 0; j < PQ_NLIN; j++)
            for (int ab = 0; ab < 2; ab++) {
                const PqLoraAB *p = &lora->ab[l * PQ_NLIN + j];
                size_t o = (size_t)((ab ? p->B : p->A) - lora->params), n;
                int in, out;
                pq_lin_shape(&tm.m.cfg, j, &in, &out);
                n = (size_t)lora->r * (ab ? out : in);
                double gn = 0, dn = 0;
                for (size_t i = o; i < o + n; i++) {
                    gn += (double)g[0][i] * g[0][i];
                    dn += ((double)g[1][i] - g[0][i]) * ((double)g[1][i] - g[0][i]);
                }
                double err = sqrt(dn) / (sqrt(gn) + 0.05 * all);
                worst = fmax(worst, err);
                if (err > BF16_TOL) {
                    printf("FAIL %s bf16 activations: layer %d %s lora_%c: |g - g_f32| / |g_f32| %.3g\n",
                           arch_name[arch], l, pq_lin_names[j], ab ? 'B' : 'A', err);
                    failures++;
                }
            }
    int ok = moved > BF16_MOVED * all && moved < BF16_WHOLE * all && same == lora->n_params && isfinite(loss[1]) && loss[1] == loss[2];
    printf("%-7s bf16 activations dropout %.2f%s: loss %.6f (f32 %.6f), worst tensor |g - g_f32| %.2e (tol %.0e), "
           "whole gradient moved %.2e, checkpointed == kept: %zu of %zu %s\n",
           arch_name[arch], dropout, longer ? " records > 64 tokens" : "", loss[1], loss[0], worst, BF16_TOL,
           moved / all, same, lora->n_params, ok ? "ok" : "FAIL");
    failures += !ok;
    for (int k = 0; k < 3; k++) free(g[k]);
    pq_train_pair_free(&pp[0]);
    pq_train_pair_free(&pp[1]);
    pq_lora_free(lora);
    tiny_free(&tm);
}

int main(void) {
    pq_ops_set_threads(1); // one thread (idle OpenMP threads spin on a busy machine); 3 where checked
    for (int arch = 0; arch < 4; arch++)
        for (int loss = 0; loss < 3; loss++) check_case(arch, loss, 0, 0);
    check_case(PQ_ARCH_LLAMA, PQ_LOSS_SIGMOID, 0.2f, 0);
    check_case(PQ_ARCH_MISTRAL, PQ_LOSS_IPO, 0.2f, 0);
    // records longer than the attention's query blocks (64 rows)
    check_case(PQ_ARCH_LLAMA, PQ_LOSS_SIGMOID, 0, 1);
    check_case(PQ_ARCH_MISTRAL, PQ_LOSS_SIGMOID, 0, 1);
    check_case(PQ_ARCH_QWEN3, PQ_LOSS_SIGMOID, 0.2f, 1);
    for (int arch = 0; arch < 4; arch++) check_bf16(arch, 0, 0);
    { // --checkpoint auto's estimate: bf16 storage halves the activations, not LoRA's f32 tensors
        PqConfig c = {.L = 32, .C = 4096, .NH = 32, .KVH = 8, .HS = 128, .H = 14336, .V = 32000};
        // a small adapter of rank 16 on every linear: pq_trainer_bytes reads only its rank and targets
        PqLora *lo = pq_lora_build(&(PqConfig){.L = 1, .C = 8, .NH = 1, .KVH = 1, .HS = 8, .H = 8}, 16, 32, 0x7f);
        size_t b32 = pq_trainer_bytes(&c, lo, 4096, 0);
        pq_ops_set_act_dtype(PQ_BF16);
        size_t b16 = pq_trainer_bytes(&c, lo, 4096, 0);
        pq_ops_set_act_dtype(PQ_F32);
        printf("pq_trainer_bytes, Mistral-7B shape, 4096 tokens kept: f32 %.2f GiB, bf16 %.2f GiB\n", b32 / 1073741824.0,
               b16 / 1073741824.0);
        if (!(b16 < 0.55 * b32 && b16 > 0.5 * b32)) {
            printf("FAIL pq_trainer_bytes: bf16 %zu of f32 %zu\n", b16, b32);
            failures++;
        }
        pq_lora_free(lo);
    }
    check_bf16(PQ_ARCH_MISTRAL, 0.2f, 0);
    check_bf16(PQ_ARCH_QWEN3, 0.2f, 1);
    if (failures) printf("%d failures\n", failures);
    else printf("all gradients match\n");
    return failures != 0;
}
