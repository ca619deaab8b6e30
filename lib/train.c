// train.c: forward with kept (or checkpointed) activations, backward to the
// LoRA parameters, and DPO micro-batches of packed pairs (see train.h).
#include "train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops_grad.h"

// One block's activations are the model's PqLayerActs (model.h): the
// trainer keeps them per layer, or one set when checkpointing.

static int max3(int a, int b, int c) { return a > b ? (a > c ? a : c) : (b > c ? b : c); }

static void bufs_free(PqTrainer *t) {
    int na = t->checkpoint ? 1 : t->m->cfg.L;
    if (t->acts)
        for (int i = 0; i < na; i++) pq_layer_acts_free(t->acts[i]);
    free(t->acts);
    t->acts = NULL;
    free(t->rows);
    t->rows = t->tgc = NULL;
    free(t->h_lp);
    t->h_lp = NULL;
    int32_t *ip[] = {t->d_ids, t->d_pos, t->d_tgc, t->d_k};
    for (size_t i = 0; i < sizeof ip / sizeof *ip; i++) pq_dev_free(ip[i]);
    t->d_ids = t->d_pos = t->d_tgc = t->d_k = NULL;
    float *p[] = {t->xs, t->hf, t->hc, t->logpc, t->rstdf, t->lse, t->dx, t->dh, t->dscr, t->dq, t->dk, t->dv,
                  t->dxa, t->dgate, t->dup};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) pq_dev_free(p[i]);
    t->xs = t->hf = t->hc = t->logpc = t->rstdf = t->lse = t->dx = t->dh = t->dscr = t->dq = t->dk = t->dv =
        t->dxa = t->dgate = t->dup = NULL;
    t->cap = 0;
}

// What pq_layer_acts_build (model.c) allocates for N tokens, in bytes:
// activations at pq_act_size(), norm and attention statistics and LoRA's xa f32.
static size_t acts_bytes(const PqConfig *c, const PqLora *lora, size_t N) {
    size_t QD = (size_t)c->NH * c->HS, KD = (size_t)c->KVH * c->HS, big = (size_t)max3(c->C, (int)QD, c->H);
    size_t act = 4 * (size_t)c->C + 2 * QD + 2 * KD + 3 * (size_t)c->H + big, fl = 2 + (size_t)c->NH;
    if (c->qk_norm) act += QD + KD, fl += (size_t)c->NH + (size_t)c->KVH; // q_raw, k_raw and their rstd
    if (lora)
        for (int j = 0; j < PQ_NLIN; j++)
            if (lora->targets >> j & 1) fl += (size_t)lora->r;
    return pq_act_bytes(N * act) + 4 * N * fl;
}

size_t pq_trainer_bytes(const PqConfig *c, const PqLora *lora, int N, int checkpoint) {
    size_t n = N, QD = (size_t)c->NH * c->HS, KD = (size_t)c->KVH * c->HS, W = max3(c->C, (int)QD, c->H);
    // xs, hf, hc, dx, dh, dscr, dq, dk, dv, dgate, dup; rstdf, lse, logpc and dxa f32; d_k, d_ids, d_pos, d_tgc
    size_t act = (size_t)(c->L + 1) * c->C + 2 * (size_t)c->C + (size_t)c->C + 2 * W + QD + 2 * KD + 2 * (size_t)c->H;
    size_t fl = 3 + (size_t)(lora && lora->r > 0 ? lora->r : 1);
    return pq_act_bytes(n * act) + 4 * n * fl + 24 * n + (size_t)(checkpoint ? 1 : c->L) * acts_bytes(c, lora, n);
}

static size_t weight_bytes(const PqWeight *w) { return (size_t)w->rows * w->cols * pq_dtype_size(w->dtype); }

// With checkpoint_auto: every layer's activations are kept when all the
// buffers for N tokens fit in the free memory, less a reserve for the
// backend's own workspaces (a tenth and 1 GiB) and, on the CPU, the mapped
// weights (the page cache that MemAvailable counts holds them); else one layer's.
static void choose_checkpoint(PqTrainer *t, int N) {
    if (!t->checkpoint_auto) return;
    size_t fr = pq_dev_free_bytes(), reserve = fr / 10 + ((size_t)1 << 30);
    if (!strcmp(pq_ops_backend(), "cpu")) {
        const PqModel *m = t->m;
        reserve += weight_bytes(&m->wte) + (m->cfg.tie ? 0 : weight_bytes(&m->lm_head));
        for (int l = 0; l < m->cfg.L; l++)
            for (int j = 0; j < PQ_NLIN; j++) reserve += weight_bytes(&m->layers[l].w[j]);
    }
    t->checkpoint = !(fr > reserve && pq_trainer_bytes(&t->m->cfg, t->lora, N, 0) <= fr - reserve);
}

// pq_dev_alloc, counted in t->dev_bytes
static void *dev_alloc(PqTrainer *t, size_t bytes) {
    t->dev_bytes += bytes;
    return pq_dev_alloc(bytes);
}

static void bufs_reserve(PqTrainer *t, int N) {
    if (N <= t->cap) return;
    bufs_free(t);
    choose_checkpoint(t, N);
    const PqConfig *c = &t->m->cfg;
    size_t n = N, QD = (size_t)c->NH * c->HS, KD = (size_t)c->KVH * c->HS, W = max3(c->C, (int)QD, c->H);
    int na = t->checkpoint ? 1 : c->L;
    t->acts = pq_xcalloc((size_t)na, sizeof *t->acts);
    t->dev_bytes = 0;
    for (int i = 0; i < na; i++) {
        t->acts[i] = pq_layer_acts_build(c, t->lora, N);
        t->dev_bytes += t->acts[i]->bytes;
    }
    // activations in the process's storage (pq_act_bytes); rstdf, lse, logpc and dxa f32
    t->xs = dev_alloc(t, pq_act_bytes((size_t)(c->L + 1) * n * c->C));
    t->hf = dev_alloc(t, pq_act_bytes(n * c->C));
    t->rstdf = dev_alloc(t, n * 4);
    t->lse = dev_alloc(t, n * 4);
    t->hc = dev_alloc(t, pq_act_bytes(n * c->C));
    t->logpc = dev_alloc(t, n * 4);
    t->rows = pq_xmalloc(2 * n * sizeof(int32_t));
    t->tgc = t->rows + n;
    t->d_k = dev_alloc(t, 3 * n * sizeof(int32_t));
    t->h_lp = pq_xmalloc(n * sizeof(float));
    t->d_ids = dev_alloc(t, n * sizeof(int32_t));
    t->d_pos = dev_alloc(t, n * sizeof(int32_t));
    t->d_tgc = dev_alloc(t, n * sizeof(int32_t));
    t->dx = dev_alloc(t, pq_act_bytes(n * c->C));
    t->dh = dev_alloc(t, pq_act_bytes(n * W));
    t->dscr = dev_alloc(t, pq_act_bytes(n * W));
    t->dq = dev_alloc(t, pq_act_bytes(n * QD));
    t->dk = dev_alloc(t, pq_act_bytes(n * KD));
    t->dv = dev_alloc(t, pq_act_bytes(n * KD));
    t->dxa = dev_alloc(t, n * (t->lora->r > 0 ? t->lora->r : 1) * 4);
    t->dgate = dev_alloc(t, pq_act_bytes(n * c->H));
    t->dup = dev_alloc(t, pq_act_bytes(n * c->H));
    t->cap = N;
}

PqTrainer *pq_trainer_build(const PqModel *m, PqLora *lora, int checkpoint, float dropout) {
    PqTrainer *t = pq_xcalloc(1, sizeof *t);
    t->m = m;
    t->lora = lora;
    t->checkpoint = checkpoint != PQ_CKPT_OFF;
    t->checkpoint_auto = checkpoint == PQ_CKPT_AUTO;
    t->dropout = dropout;
    t->share_prompt = 1;
    t->grads = pq_dev_alloc((lora->n_params ? lora->n_params : 1) * sizeof(float));
    int n = m->cfg.L * PQ_NLIN;
    t->gab = pq_xcalloc((size_t)n, sizeof *t->gab);
    for (int i = 0; i < n; i++) {
        if (!lora->ab[i].A) continue;
        t->gab[i].A = t->grads + (lora->ab[i].A - lora->params);
        t->gab[i].B = t->grads + (lora->ab[i].B - lora->params);
    }
    return t;
}

void pq_trainer_free(PqTrainer *t) {
    if (!t) return;
    bufs_free(t);
    pq_dev_free(t->grads);
    free(t->gab);
    free(t);
}

void pq_trainer_zero_grad(PqTrainer *t) { pq_dev_zero(t->grads, t->lora->n_params * sizeof(float)); }

// Between the full rows (N,C) and the compact rows (M,C) of those with a
// target (rows[] ascending): one device copy per run of consecutive rows.
// Both are activations (pq_act_at).
static void rows_copy(const int32_t *rows, int M, int C, float *full, float *compact, int to_compact) {
    for (int a = 0; a < M;) {
        int b = a + 1;
        while (b < M && rows[b] == rows[b - 1] + 1) b++;
        size_t bytes = pq_act_bytes((size_t)(b - a) * C);
        float *f = pq_act_at(full, (size_t)rows[a] * C), *k = pq_act_at(compact, (size_t)a * C);
        if (to_compact) pq_dev_copy(k, f, bytes);
        else pq_dev_copy(f, k, bytes);
        a = b;
    }
}

// The seed of linear j's dropout mask in layer l.
static uint64_t drop_key(uint64_t seed, int l, int j) {
    return pq_hash_bytes(&(uint64_t[2]){seed, (uint64_t)(l * PQ_NLIN + j)}, 16);
}

static int dropping(const PqTrainer *t) { return t->dropout > 0 && t->drop_seed != 0; }

// out (N,OC) += scale * (drop(x) A^T) B^T of linear j, keeping xa (nothing where j is not adapted).
static void lora_forward(const PqTrainer *t, int l, int j, float *out, const float *x, float *xa, float *scr, int N) {
    int in, oc;
    pq_lin_shape(&t->m->cfg, j, &in, &oc);
    const PqLoraAB *ab = &t->lora->ab[l * PQ_NLIN + j];
    if (!ab->A) return;
    const float *xd = x;
    if (dropping(t)) {
        pq_dropout_forward(scr, x, t->dropout, drop_key(t->drop_seed, l, j), (size_t)N * in);
        xd = scr;
    }
    pq_lora_forward(out, xa, xd, ab->A, ab->B, t->lora->scale, N, in, oc, t->lora->r);
}

// out (N,OC) = x W^T + b + scale * (drop(x) A^T) B^T, keeping xa.
static void lin_forward(const PqTrainer *t, int l, int j, float *out, const float *x, float *xa, float *scr, int N) {
    const PqLayerW *w = &t->m->layers[l];
    int in, oc;
    pq_lin_shape(&t->m->cfg, j, &in, &oc);
    pq_linear_forward(out, x, &w->w[j], w->b[j], N, in, oc);
    lora_forward(t, l, j, out, x, xa, scr, N);
}

// q (into qo), k (into ko), v from a->ln1: one product where the weights are joined (pq_dev_weights),
// then each LoRA term.
static void qkv_forward(const PqTrainer *t, int l, float *qo, float *ko, PqLayerActs *a, int N) {
    const PqLayerW *w = &t->m->layers[l];
    float *out[3] = {qo, ko, a->v};
    const float *bias[3] = {w->b[PQ_Q], w->b[PQ_K], w->b[PQ_V]};
    pq_linear_group_forward(out, a->ln1, &w->w[PQ_Q], bias, 3, N, t->m->cfg.C);
    for (int j = PQ_Q; j <= PQ_V; j++) lora_forward(t, l, j, out[j - PQ_Q], a->ln1, a->lora_xa[j], a->tmp, N);
}

// gate and up from a->ln2 as one group (the weights joined at load), then each LoRA term.
static void gate_up_forward(const PqTrainer *t, int l, PqLayerActs *a, int N) {
    const PqLayerW *w = &t->m->layers[l];
    float *out[2] = {a->gate, a->up};
    const float *bias[2] = {w->b[PQ_GATE], w->b[PQ_UP]};
    pq_linear_group_forward(out, a->ln2, &w->w[PQ_GATE], bias, 2, N, t->m->cfg.C);
    for (int j = PQ_GATE; j <= PQ_UP; j++)
        lora_forward(t, l, j, out[j - PQ_GATE], a->ln2, a->lora_xa[j], a->tmp, N);
}

// dx (N,in) += d/dx of lora_forward given dout (N,OC); LoRA grads +=.
static void lora_backward(PqTrainer *t, int l, int j, float *dx, const float *dout, const float *x, const float *xa,
                          float *scr, int N) {
    int in, oc;
    pq_lin_shape(&t->m->cfg, j, &in, &oc);
    const PqLoraAB *ab = &t->lora->ab[l * PQ_NLIN + j];
    if (!ab->A) return;
    const PqLoraAB *g = &t->gab[l * PQ_NLIN + j];
    int r = t->lora->r;
    float sc = t->lora->scale;
    if (!dropping(t)) {
        pq_lora_backward(dx, g->A, g->B, t->dxa, dout, x, xa, ab->A, ab->B, sc, N, in, oc, r);
        return;
    }
    uint64_t key = drop_key(t->drop_seed, l, j);
    pq_dropout_forward(scr, x, t->dropout, key, (size_t)N * in); // the dropped input again (for dA)
    pq_lora_backward(NULL, g->A, g->B, t->dxa, dout, scr, xa, ab->A, ab->B, sc, N, in, oc, r);
    pq_lora_dx_dropout(dx, t->dxa, ab->A, t->dropout, key, N, in, r); // dx += the same mask on dxa A
}

// dx (N,in) += d/dx of lin_forward given dout (N,OC); LoRA grads +=.
static void lin_backward(PqTrainer *t, int l, int j, float *dx, const float *dout, const float *x, const float *xa,
                         float *scr, int N) {
    const PqLayerW *w = &t->m->layers[l];
    int in, oc;
    pq_lin_shape(&t->m->cfg, j, &in, &oc);
    pq_linear_backward(dx, dout, &w->w[j], N, in, oc);
    lora_backward(t, l, j, dx, dout, x, xa, scr, N);
}

// One block: xin (N,C) -> xout (N,C), activations into a.
static void layer_forward(PqTrainer *t, int l, const float *xin, float *xout, PqLayerActs *a, int N) {
    const PqConfig *c = &t->m->cfg;
    const PqLayerW *w = &t->m->layers[l];
    int C = c->C, QD = c->NH * c->HS;
    pq_rmsnorm_forward(a->ln1, a->ln1_rstd, xin, w->ln1, N, C, c->eps);
    qkv_forward(t, l, c->qk_norm ? a->q_raw : a->q, c->qk_norm ? a->k_raw : a->k, a, N);
    if (c->qk_norm) { // Qwen3: RMSNorm over each head of q and k
        pq_rmsnorm_forward(a->q, a->q_rstd, a->q_raw, w->q_norm, N * c->NH, c->HS, c->eps);
        pq_rmsnorm_forward(a->k, a->k_rstd, a->k_raw, w->k_norm, N * c->KVH, c->HS, c->eps);
    }
    pq_rope_qk_forward(a->q, a->k, t->pos, t->m->inv_freq, N, c->NH, c->KVH, c->HS);
    if (t->ka0)
        pq_attention2_forward(a->att, a->att_lse, a->q, a->k, a->v, t->pos, t->ka0, t->ka1, t->kb0, N, c->NH, c->KVH,
                              c->HS, pq_layer_window(c, l));
    else
        pq_attention_forward(a->att, a->att_lse, a->q, a->k, a->v, t->pos, N, c->NH, c->KVH, c->HS,
                             pq_layer_window(c, l));
    lin_forward(t, l, PQ_O, a->x_mid, a->att, a->lora_xa[PQ_O], a->tmp, N);
    pq_residual_rmsnorm_forward(a->ln2, a->ln2_rstd, a->x_mid, xin, w->ln2, N, C, c->eps); // x_mid += xin, normed
    gate_up_forward(t, l, a, N);
    pq_swiglu_forward(a->mlp, a->gate, a->up, N, c->H);
    lin_forward(t, l, PQ_DOWN, xout, a->mlp, a->lora_xa[PQ_DOWN], a->tmp, N);
    pq_residual_forward(xout, a->x_mid, (size_t)N * C);
    (void)QD;
}

// The backend's attention over two key ranges, where it has one (the CPU
// backend does; a backend without it trains with unshared prompts).
int pq_train_can_share(void) { return pq_attention2_forward != NULL && pq_attention2_backward != NULL; }

void pq_train_forward(PqTrainer *t, const int32_t *ids, const int32_t *pos, const int32_t *a0, const int32_t *a1,
                      const int32_t *b0, const int32_t *targets, int N, uint64_t drop_seed, int train, float *logp) {
    const PqConfig *c = &t->m->cfg;
    bufs_reserve(t, N);
    t->N = N;
    pq_dev_upload(t->d_ids, ids, (size_t)N * sizeof(int32_t));
    pq_dev_upload(t->d_pos, pos, (size_t)N * sizeof(int32_t));
    t->pos = t->d_pos;
    t->ka0 = t->ka1 = t->kb0 = NULL;
    if (a0 && a1 && b0 && pq_train_can_share()) {
        pq_dev_upload(t->d_k, a0, (size_t)N * sizeof(int32_t));
        pq_dev_upload(t->d_k + N, a1, (size_t)N * sizeof(int32_t));
        pq_dev_upload(t->d_k + 2 * N, b0, (size_t)N * sizeof(int32_t));
        t->ka0 = t->d_k, t->ka1 = t->d_k + N, t->kb0 = t->d_k + 2 * N;
    }
    t->targets = targets;
    t->drop_seed = train && t->dropout > 0 ? (drop_seed ? drop_seed : 1) : 0;
    size_t NC = (size_t)N * c->C;
    pq_embedding_forward(t->xs, t->d_ids, &t->m->wte, N, c->C);
    for (int l = 0; l < c->L; l++)
        layer_forward(t, l, pq_act_at(t->xs, l * NC), pq_act_at(t->xs, (l + 1) * NC),
                      t->acts[t->checkpoint ? 0 : l], N);
    pq_rmsnorm_forward(t->hf, t->rstdf, pq_act_at(t->xs, c->L * NC), t->m->ln_f, N, c->C, c->eps);
    // the LM head only for the rows that predict a response token
    int M = 0;
    for (int i = 0; i < N; i++)
        if (targets[i] >= 0) {
            t->rows[M] = i;
            t->tgc[M] = targets[i];
            M++;
        }
    t->M = M;
    memset(logp, 0, (size_t)N * sizeof(float));
    if (M == 0) return;
    rows_copy(t->rows, M, c->C, t->hf, t->hc, 1);
    pq_dev_upload(t->d_tgc, t->tgc, (size_t)M * sizeof(int32_t));
    pq_logp_forward(t->logpc, t->lse, t->hc, &t->m->lm_head, t->d_tgc, M, c->C, c->V);
    pq_dev_download(t->h_lp, t->logpc, (size_t)M * sizeof(float));
    for (int i = 0; i < M; i++) logp[t->rows[i]] = t->h_lp[i];
}

void pq_train_backward(PqTrainer *t, const float *dlogp) {
    const PqConfig *c = &t->m->cfg;
    int N = t->N, C = c->C;
    size_t NC = (size_t)N * C;
    float *dx = t->dx, *dh = t->dh, *s1 = t->dscr;
    // the compact rows of the LM head: dlogp f32 (logpc's room), dh an activation (dscr's)
    float *dlc = t->logpc, *dhc = t->dscr;
    for (int i = 0; i < t->M; i++) t->h_lp[i] = dlogp[t->rows[i]];
    pq_dev_upload(dlc, t->h_lp, (size_t)t->M * sizeof(float));
    pq_dev_zero(dhc, pq_act_bytes((size_t)t->M * C));
    pq_logp_backward(dhc, dlc, t->hc, &t->m->lm_head, t->d_tgc, t->lse, t->M, C, c->V);
    pq_dev_zero(dh, pq_act_bytes(NC));
    rows_copy(t->rows, t->M, C, dh, dhc, 0);
    pq_dev_zero(dx, pq_act_bytes(NC));
    pq_rmsnorm_backward(dx, dh, pq_act_at(t->xs, c->L * NC), t->m->ln_f, t->rstdf, N, C);
    for (int l = c->L - 1; l >= 0; l--) {
        const PqLayerW *w = &t->m->layers[l];
        PqLayerActs *a = t->acts[t->checkpoint ? 0 : l];
        const float *xin = pq_act_at(t->xs, l * NC);
        // recompute (output unused, dh is scratch); the last layer's are still there from the forward
        if (t->checkpoint && l < c->L - 1) layer_forward(t, l, xin, dh, a, N);
        // MLP: xout = x_mid + down(mlp); dx is d xout
        pq_dev_zero(dh, pq_act_bytes((size_t)N * c->H));
        lin_backward(t, l, PQ_DOWN, dh, dx, a->mlp, a->lora_xa[PQ_DOWN], s1, N);
        pq_swiglu_backward(t->dgate, t->dup, dh, a->gate, a->up, N, c->H);
        pq_dev_zero(dh, pq_act_bytes(NC));
        const float *dgu[2] = {t->dgate, t->dup}; // gate and up's input gradient as one group
        pq_linear_group_backward(dh, dgu, &w->w[PQ_GATE], 2, N, C);
        for (int j = PQ_GATE; j <= PQ_UP; j++)
            lora_backward(t, l, j, dh, dgu[j - PQ_GATE], a->ln2, a->lora_xa[j], s1, N);
        pq_rmsnorm_backward(dx, dh, a->x_mid, w->ln2, a->ln2_rstd, N, C); // dx = d x_mid
        // attention: x_mid = xin + o(att)
        pq_dev_zero(dh, pq_act_bytes((size_t)N * c->NH * c->HS));
        lin_backward(t, l, PQ_O, dh, dx, a->att, a->lora_xa[PQ_O], s1, N);
        if (t->ka0)
            pq_attention2_backward(t->dq, t->dk, t->dv, dh, a->q, a->k, a->v, a->att, a->att_lse, t->pos, t->ka0, t->ka1,
                                   t->kb0, N, c->NH, c->KVH, c->HS, pq_layer_window(c, l));
        else
            pq_attention_backward(t->dq, t->dk, t->dv, dh, a->q, a->k, a->v, a->att, a->att_lse, t->pos, N, c->NH, c->KVH,
                                  c->HS, pq_layer_window(c, l));
        pq_rope_qk_backward(t->dq, t->dk, t->pos, t->m->inv_freq, N, c->NH, c->KVH, c->HS);
        if (c->qk_norm) { // through the per-head norms (s1 free here: (N,W) >= (N,QD))
            size_t nq = (size_t)N * c->NH * c->HS, nk = (size_t)N * c->KVH * c->HS;
            pq_dev_zero(s1, pq_act_bytes(nq));
            pq_rmsnorm_backward(s1, t->dq, a->q_raw, w->q_norm, a->q_rstd, N * c->NH, c->HS);
            pq_dev_copy(t->dq, s1, pq_act_bytes(nq));
            pq_dev_zero(s1, pq_act_bytes(nk));
            pq_rmsnorm_backward(s1, t->dk, a->k_raw, w->k_norm, a->k_rstd, N * c->KVH, c->HS);
            pq_dev_copy(t->dk, s1, pq_act_bytes(nk));
        }
        pq_dev_zero(dh, pq_act_bytes(NC));
        const float *dqkv[3] = {t->dq, t->dk, t->dv}; // q, k, v's input gradient as one product
        pq_linear_group_backward(dh, dqkv, &w->w[PQ_Q], 3, N, C);
        for (int j = PQ_Q; j <= PQ_V; j++) lora_backward(t, l, j, dh, dqkv[j - PQ_Q], a->ln1, a->lora_xa[j], s1, N);
        pq_rmsnorm_backward(dx, dh, xin, w->ln1, a->ln1_rstd, N, C); // dx = d xin
    }
}

void pq_train_pair_free(PqTrainPair *p) {
    if (!p) return;
    free(p->ids[0]);
    free(p->ids[1]);
    memset(p, 0, sizeof *p);
}

// The prompt tokens a pair's two sequences share, as the prefix they can
// share: at most each prompt's length minus one (the last prompt token's
// position predicts the first response token, different on each side).
static int shared_prefix(const PqTrainPair *p) {
    int m = p->prompt_len[0] < p->prompt_len[1] ? p->prompt_len[0] : p->prompt_len[1], s = 0;
    while (s < m - 1 && p->ids[0][s] == p->ids[1][s]) s++;
    return s;
}

int pq_train_dpo_micro(PqTrainer *t, const PqDpoCfg *cfg, PqTrainPair *const *pairs, int n, double grad_scale,
                       uint64_t drop_seed, int backward, PqDpoMetrics *met, long *tokens) {
    int N = 0;
    long logical = 0;
    int *sh = pq_xmalloc((size_t)(n ? n : 1) * sizeof(int));
    for (int i = 0; i < n; i++) {
        sh[i] = t->share_prompt && pq_train_can_share() ? shared_prefix(pairs[i]) : 0;
        N += pairs[i]->len[0] + pairs[i]->len[1] - sh[i];
        logical += pairs[i]->len[0] + pairs[i]->len[1];
    }
    int32_t *ids = pq_xmalloc((size_t)N * 6 * sizeof(int32_t)), *pos = ids + N, *tg = pos + N;
    int32_t *a0 = tg + N, *a1 = a0 + N, *b0 = a1 + N;
    float *logp = pq_xmalloc((size_t)N * 2 * sizeof(float)), *dlogp = logp + N;
    // per pair: [shared prefix][rest of chosen][rest of rejected]; the
    // rejected tokens see the prefix through their first key range
    int o = 0;
    for (int i = 0; i < n; i++) {
        const PqTrainPair *p = pairs[i];
        int s = sh[i], x = o;
        for (int side = 0; side < 2; side++) {
            int b = side == 0 ? o : x; // start of this side's own segment
            for (int k = side == 0 ? 0 : s; k < p->len[side]; k++, x++) {
                ids[x] = p->ids[side][k];
                pos[x] = k;
                a0[x] = side == 0 ? 0 : o;
                a1[x] = side == 0 ? 0 : o + s;
                b0[x] = b;
                // position k predicts token k+1: a target when that token is in the response
                tg[x] = k + 1 < p->len[side] && k + 1 >= p->prompt_len[side] ? p->ids[side][k + 1] : -1;
            }
        }
        o = x;
    }
    int shared = 0;
    for (int i = 0; i < n; i++) shared |= sh[i] > 0;
    if (shared) pq_train_forward(t, ids, pos, a0, a1, b0, tg, N, drop_seed, backward, logp);
    else pq_train_forward(t, ids, pos, NULL, NULL, NULL, tg, N, drop_seed, backward, logp);
    PqDpoMetrics m = {0};
    int rc = 0;
    o = 0;
    for (int i = 0; i < n; i++) {
        const PqTrainPair *p = pairs[i];
        int span[2] = {p->len[0], p->len[1] - sh[i]}, off[2];
        double sum[2] = {0, 0};
        for (int s = 0; s < 2; s++) {
            off[s] = o;
            for (int k = 0; k < span[s]; k++) sum[s] += logp[o + k];
            o += span[s];
        }
        PqDpoPair dp = {sum[0], sum[1], p->ref[0], p->ref[1], p->len[0] - p->prompt_len[0],
                        p->len[1] - p->prompt_len[1]};
        double g[2];
        double loss = pq_dpo_loss(cfg, &dp, &g[0], &g[1]);
        if (!isfinite(loss)) rc = -1;
        pq_dpo_metrics_add(&m, cfg, &dp, loss);
        for (int s = 0; s < 2; s++)
            for (int k = 0; k < span[s]; k++)
                dlogp[off[s] + k] = tg[off[s] + k] >= 0 ? (float)(g[s] * grad_scale) : 0;
    }
    if (rc == 0 && backward) pq_train_backward(t, dlogp);
    if (rc == 0) {
        met->n += m.n, met->loss += m.loss, met->chosen += m.chosen, met->rejected += m.rejected;
        met->margins += m.margins, met->accuracies += m.accuracies;
        met->logps_chosen += m.logps_chosen, met->logps_rejected += m.logps_rejected;
        *tokens += logical;
    }
    free(logp);
    free(ids);
    free(sh);
    return rc;
}
