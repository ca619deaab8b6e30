// parity_ops.h: the op checks parity-ops.c (f32 activation storage) and
// parity-act.c (bf16 storage, ops.h's PQ_ACTIVATIONS=bf16) share, each
// body written once for either storage: the CUDA op (pq_*) against the CPU
// oracle (pq_cpu_*) on fresh random inputs, device outputs poisoned with NaN.
// In bf16 storage, as the contract states it: random inputs rounded to bf16
// are uploaded as bf16, the CUDA op runs, its bf16 outputs come back widened;
// the oracle runs pq_cpu_* in f32 on the same (widened) values and rounds
// each activation output once to bf16 (a "+=" output from its rounded
// start); LoRA's ops against pq_cpu_lora_*_bf16, ops_grad.h's rounding points
// (bf16 operands as autocast), checked also for the share of elements rounded
// alike. f32 outputs (rstd, lse, logp, LoRA's dA, dB) are compared as they
// are. In f32 storage every output is f32 and the oracles are plain f32.
// Tolerances, relative to the output's largest magnitude, are per program
// (bf16_run, set by each main, not the storage: parity-act's group switch
// runs its bodies in f32 storage at its own tolerances). parity-ops': per
// precision of the products (f32, bf16/f16 weights). parity-act's: 0 where
// both sides round the same f32 (copies, sums, dropout), two bf16 ulps (2^-6)
// where the f32 values may differ in their last bits (kernels, products in
// another order), three after a chain of rounded ops, and the bf16 products'
// own bound (attention's bf16 P, logp's bf16 dz, TF32) added where the CUDA
// path has them. Included by those two programs only (statics).
#ifndef PQ_PARITY_OPS_H
#define PQ_PARITY_OPS_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/act16.h"
#include "cuda/sdpa.h"
#include "cuda/tuning.h"
#include "gpu_test.h"
#include "ops_grad.h"
#include "st_write.h"
#include "util.h"

#define TOL_EW 1.6e-2 // two ulps of the largest element (2^-7 each at worst)
#define TOL_CH 2.4e-2 // three: after a chain of rounded ops
#define TOL_ATT 4e-2  // attention's bf16 probabilities (parity-attn's 3e-2 vs the oracle) and the rounding
#define TOL_LOGP 1e-3 // logp and lse (f32) from exact bf16 inputs
#define TOL_DH 2.4e-2 // logp's dz in bf16 (parity-ops' 1.5e-2) and the rounding

static int failures, checks;
// 1 in parity-act: its tolerances (bf16's, kept in g_switch's f32 round) and attention on each of
// PQ_ATTENTION's paths; 0 in parity-ops: f32's, and attention on the process's own path
static int bf16_run;
static double tol(double f32, double bf16) { return bf16_run ? bf16 : f32; }
// the bound of bf16 and f16 weights' products with f32 activations
static double prod_tol(PqDtype dt) { return dt == PQ_F32 ? 2e-5 : 1.5e-2; }

// The activation helpers follow the process's storage: bf16, or f32 copies and an unrounded oracle.
static int act_f32(void) { return pq_act_size() == 4; }
static float rb(float x) { return pq_bf16_to_f32(pq_f32_to_bf16(x)); }
// host values rounded as the storage holds them
static void round_act(float *h, size_t n) {
    if (!act_f32())
        for (size_t i = 0; i < n; i++) h[i] = rb(h[i]);
}
// n random values in [-a, a) that the storage holds exactly (host f32)
static float *brand(size_t n, float a) {
    float *p = hrand(n, a);
    round_act(p, n);
    return p;
}
// a device activation of host values
static float *bdev(const float *h, size_t n) { return act_f32() ? dev(h, n * 4) : act16_up(h, n); }
// a device activation of n NaNs (an output not yet written)
static float *bnan(size_t n) {
    if (act_f32()) return dnan(n ? n : 1);
    uint16_t *u = pq_xmalloc((n ? n : 1) * 2);
    for (size_t i = 0; i < n; i++) u[i] = 0x7fc0;
    float *d = pq_dev_alloc(pq_act_bytes(n));
    pq_dev_upload(d, u, n * 2);
    free(u);
    return d;
}
// a device activation of n zeros
static float *bdev_zero(size_t n) { return pq_dev_alloc(pq_act_bytes(n)); }
// host f32 of n device activations
static float *bdown(const float *d, size_t n) { return act_f32() ? down(d, n) : act16_down(d, n); }

static void verdict(const char *name, const float *want, const float *got, size_t n, double tol) {
    checks++;
    if (!close_cpu_gpu(name, 52, want, got, n, tol)) failures++;
}
// an activation output: the oracle's f32 rounded as stored, in place (the value a next op of the oracle then
// reads), against the device's
static void acmp(const char *name, float *cpu, const float *gdev, size_t n, double tol) {
    round_act(cpu, n);
    float *g = bdown(gdev, n);
    verdict(name, cpu, g, n, tol);
    free(g);
}
// an f32 output
static void fcmp(const char *name, const float *cpu, const float *gdev, size_t n, double tol) {
    float *g = down(gdev, n);
    verdict(name, cpu, g, n, tol);
    free(g);
}

// LoRA's outputs in bf16 storage, with ops_grad.h's rounding points (bf16 operands, f32 sums): besides the
// tolerance, at least SAME_MIN of the elements rounded to the same bf16 on both sides (f32 sums in another
// order flip a rounding about once in 10^3; an operand left unrounded, ~2^-9 off, flips a large share), and
// the others one bf16 step apart at most. A step of at least 2^-12 of the largest element's magnitude: where
// terms cancel to near 0 (|x| ~ 4e-6 among elements ~1), the two sums' last-bit difference (~2e-8 of the
// largest) is many of the tiny result's own steps (a numpy model of the 1000-row dx group has three such of
// 10^6)
#define SAME_MIN 0.99
static void same_share(const char *name, const float *want, const float *got, size_t n) {
    size_t same = 0, far = 0;
    double mx = 0;
    for (size_t i = 0; i < n; i++) mx = fabs(want[i]) > mx ? fabs(want[i]) : mx;
    for (size_t i = 0; i < n; i++) {
        double m = fabs(want[i]) > fabs(got[i]) ? fabs(want[i]) : fabs(got[i]);
        m = m > mx / 4096 ? m : mx / 4096;
        same += want[i] == got[i];
        far += !(fabs((double)got[i] - want[i]) <= m / 128);
    }
    checks++;
    double sh = n ? (double)same / n : 1;
    if (sh < SAME_MIN || far) {
        failures++;
        printf("FAIL %-52s %.2f%% rounded alike (min %.0f%%), %zu more than a bf16 step apart\n", name, 100 * sh,
               100 * SAME_MIN, far);
    } else {
        printf("ok   %-52s %.2f%% rounded alike\n", name, 100 * sh);
    }
}
// an activation output of LoRA (acmp, then in bf16 storage same_share)
static void lcmp(const char *name, float *cpu, const float *gdev, size_t n, double tol) {
    acmp(name, cpu, gdev, n, tol);
    if (act_f32()) return;
    float *g = bdown(gdev, n);
    same_share(name, cpu, g, n);
    free(g);
}
// xa or dxa: f32 buffers (holding bf16 values in bf16 storage)
static void xcmp(const char *name, const float *cpu, const float *gdev, size_t n, double tol) {
    float *g = down(gdev, n);
    verdict(name, cpu, g, n, tol);
    if (!act_f32()) same_share(name, cpu, g, n);
    free(g);
}
// LoRA's CPU oracle of the storage: the f32 op, or its bf16 rounding points
#define LORA_CPU(op) (act_f32() ? pq_cpu_lora_##op : pq_cpu_lora_##op##_bf16)

static void freev(void **p, size_t n) {
    for (size_t i = 0; i < n; i++) pq_dev_free(p[i]);
}
#define DEV_FREE(...)                                                                                                \
    do {                                                                                                             \
        void *p_[] = {__VA_ARGS__};                                                                                  \
        freev(p_, sizeof p_ / sizeof *p_);                                                                           \
    } while (0)

// A decoding layer's weights for the fusions' tests (ops_gen.h), host h and device d: q, k, v (C, KV, KV rows
// of C), gate and up (H rows of C), o (C of C), down (C of H); q, k and v biased (host b, device db) when bias,
// else NULL, and gate and up sharing q's where H = C (bgu, dbgu; else NULL)
typedef struct LayerW {
    int oc[3];
    PqWeight hw[3], dw[3], hg, hu, ho, hd, dg, du, dwo, dd;
    float *b[3], *db[3];
    const float *bgu, *dbgu;
} LayerW;
static LayerW layer_w(PqDtype dt, int C, int KV, int H, int bias) {
    LayerW w = {.oc = {C, KV, KV}};
    for (int t = 0; t < 3; t++) {
        w.hw[t] = hweight(w.oc[t], C, dt, 0.1f, NULL), w.dw[t] = pq_dev_weight(w.hw[t]);
        w.b[t] = bias ? hrand(w.oc[t], 1) : NULL, w.db[t] = bias ? dev(w.b[t], w.oc[t] * 4) : NULL;
    }
    w.hg = hweight(H, C, dt, 0.1f, NULL), w.hu = hweight(H, C, dt, 0.1f, NULL), w.ho = hweight(C, C, dt, 0.1f, NULL);
    w.hd = hweight(C, H, dt, 0.05f, NULL);
    w.dg = pq_dev_weight(w.hg), w.du = pq_dev_weight(w.hu), w.dwo = pq_dev_weight(w.ho), w.dd = pq_dev_weight(w.hd);
    w.bgu = H == C ? w.b[0] : NULL, w.dbgu = H == C ? w.db[0] : NULL;
    return w;
}
static void layer_w_free(LayerW *w) {
    for (int t = 0; t < 3; t++) {
        pq_dev_weight_free(&w->dw[t]);
        free((void *)w->hw[t].data), free(w->b[t]);
        pq_dev_free(w->db[t]);
    }
    PqWeight *d[] = {&w->dg, &w->du, &w->dwo, &w->dd}, *h[] = {&w->hg, &w->hu, &w->ho, &w->hd};
    for (int i = 0; i < 4; i++) pq_dev_weight_free(d[i]), free((void *)h[i]->data);
}

// ---- the ops ----

static void test_embedding(PqDtype dt) {
    int V = 1000, C = 96, N = 77;
    PqWeight hw = hweight(V, C, dt, 3, NULL), dw = pq_dev_weight(hw);
    int32_t *ids = pq_xmalloc(N * sizeof *ids);
    for (int i = 0; i < N; i++) ids[i] = (int32_t)(rnd() % V);
    ids[0] = 0, ids[N - 1] = V - 1;
    float *cpu = hnan((size_t)N * C), *gout = bnan((size_t)N * C);
    int32_t *dids = dev(ids, N * sizeof *ids);
    pq_cpu_embedding_forward(cpu, ids, &hw, N, C);
    pq_embedding_forward(gout, dids, &dw, N, C);
    char name[64];
    snprintf(name, sizeof name, "embedding %s weights", pq_dtype_name(dt));
    acmp(name, cpu, gout, (size_t)N * C, 0);
    pq_dev_weight_free(&dw);
    free((void *)hw.data), free(ids), free(cpu);
    DEV_FREE(gout, dids);
}

static void test_rmsnorm(int N, int C) {
    size_t n = (size_t)N * C;
    float *x = brand(n, 2), *w = hrand(C, 1.5f), *dy = brand(n, 1), *dx = brand(n, 1);
    float *out = hnan(n), *rstd = hnan(N);
    float *gX = bdev(x, n), *gW = dev(w, C * 4), *gDY = bdev(dy, n), *gdx = bdev(dx, n);
    float *gout = bnan(n), *grstd = dnan(N), *gout2 = bnan(n);
    pq_cpu_rmsnorm_forward(out, rstd, x, w, N, C, 1e-5f);
    pq_rmsnorm_forward(gout, grstd, gX, gW, N, C, 1e-5f);
    pq_rmsnorm_forward(gout2, NULL, gX, gW, N, C, 1e-5f); // rstd NULL, as model.c's final norm and gen.c call it
    char name[80];
    snprintf(name, sizeof name, "rmsnorm_forward rstd C=%d", C);
    fcmp(name, rstd, grstd, N, 1e-5);
    pq_cpu_rmsnorm_backward(dx, dy, x, w, rstd, N, C);
    pq_rmsnorm_backward(gdx, gDY, gX, gW, grstd, N, C);
    snprintf(name, sizeof name, "rmsnorm_forward out C=%d", C);
    acmp(name, out, gout, n, tol(1e-5, TOL_EW));
    snprintf(name, sizeof name, "rmsnorm_forward out (rstd NULL) C=%d", C);
    acmp(name, out, gout2, n, tol(1e-5, TOL_EW));
    snprintf(name, sizeof name, "rmsnorm_backward dinp += C=%d", C);
    acmp(name, dx, gdx, n, tol(1e-5, TOL_EW));
    free(x), free(w), free(dy), free(dx), free(out), free(rstd);
    DEV_FREE(gX, gW, gDY, gdx, gout, grstd, gout2);
}

// the residual add fused with the norm: x updated, out, rstd
static void test_residual_rmsnorm(int N, int C) {
    size_t n = (size_t)N * C;
    float *x = brand(n, 2), *y = brand(n, 2), *w = hrand(C, 1.5f), *out = hnan(n), *rstd = hnan(N);
    float *gX = bdev(x, n), *gY = bdev(y, n), *gW = dev(w, C * 4), *gout = bnan(n), *grstd = dnan(N);
    pq_cpu_residual_rmsnorm_forward(out, rstd, x, y, w, N, C, 1e-5f);
    pq_residual_rmsnorm_forward(gout, grstd, gX, gY, gW, N, C, 1e-5f);
    char name[80];
    snprintf(name, sizeof name, "residual_rmsnorm x += y C=%d", C);
    acmp(name, x, gX, n, 0);
    snprintf(name, sizeof name, "residual_rmsnorm out C=%d", C);
    acmp(name, out, gout, n, tol(1e-5, TOL_EW));
    snprintf(name, sizeof name, "residual_rmsnorm rstd C=%d", C);
    fcmp(name, rstd, grstd, N, 1e-5);
    free(x), free(y), free(w), free(out), free(rstd);
    DEV_FREE(gX, gY, gW, gout, grstd);
}

// Qwen3's per-head q/k norm as model.c and train.c run it: q (N,NH,HS) from the projection, RMSNorm over each
// head's HS values (N NH rows), then RoPE; backward: RoPE's in place, then the norm's into a zeroed buffer.
// Each op rounds its output to the storage.
static void test_qk_norm(int N, int NH, int HS) {
    size_t n = (size_t)N * NH * HS;
    int R = N * NH;
    float *x = brand(n, 3), *w = hrand(HS, 1.5f), *dy = brand(n, 1), *inv = pq_xmalloc(HS / 2 * sizeof *inv);
    int32_t *pos = pq_xmalloc((size_t)N * sizeof *pos);
    for (int i = 0; i < N; i++) pos[i] = i % 37; // records of 37 tokens
    for (int d = 0; d < HS / 2; d++) inv[d] = powf(1e6f, -2.0f * d / HS);
    float *y = hnan(n), *rstd = hnan(R), *dx = pq_xcalloc(n, sizeof *dx);
    float *gX = bdev(x, n), *gW = dev(w, HS * 4), *gDY = bdev(dy, n), *gY = bnan(n), *gR = dnan(R);
    float *ginv = dev(inv, HS / 2 * 4), *gdx = bdev_zero(n);
    int32_t *gpos = dev(pos, (size_t)N * 4);
    pq_cpu_rmsnorm_forward(y, rstd, x, w, R, HS, 1e-6f);
    round_act(y, n);
    pq_cpu_rope_forward(y, pos, inv, N, NH, HS);
    pq_rmsnorm_forward(gY, gR, gX, gW, R, HS, 1e-6f);
    pq_rope_forward(gY, gpos, ginv, N, NH, HS);
    char name[80];
    snprintf(name, sizeof name, "qk_norm + rope forward NH=%d HS=%d", NH, HS);
    acmp(name, y, gY, n, tol(1e-5, TOL_CH));
    snprintf(name, sizeof name, "qk_norm rstd NH=%d HS=%d", NH, HS);
    fcmp(name, rstd, gR, R, 1e-5);
    pq_cpu_rope_backward(dy, pos, inv, N, NH, HS);
    round_act(dy, n);
    pq_cpu_rmsnorm_backward(dx, dy, x, w, rstd, R, HS);
    pq_rope_backward(gDY, gpos, ginv, N, NH, HS);
    pq_rmsnorm_backward(gdx, gDY, gX, gW, gR, R, HS);
    snprintf(name, sizeof name, "qk_norm + rope backward NH=%d HS=%d", NH, HS);
    acmp(name, dx, gdx, n, tol(1e-5, TOL_CH));
    free(x), free(w), free(dy), free(inv), free(pos), free(y), free(rstd), free(dx);
    DEV_FREE(gX, gW, gDY, gY, gR, ginv, gdx, gpos);
}

// bf16 storage: bf16 weights the native product (cuBLASLt writing bf16, the bias by its epilogue, or the
// GemmEx / scratch paths for shapes it refuses); f16 and f32 weights the fallback. off > 0: every activation
// that many elements into its buffer, not 16-byte aligned, which cuBLASLt never takes: the bf16 product
// through cublasGemmEx writing bf16 (beta 1 for linear_backward), a bias through f32 scratch and
// bias_narrow_kernel
static void test_linear(PqDtype dt, int bias, int N, int C, int OC, int off) {
    PqWeight hw = hweight(OC, C, dt, 0.1f, NULL), dw = pq_dev_weight(hw);
    size_t nx = (size_t)N * C, ny = (size_t)N * OC;
    float *xh = brand(nx + off, 1), *b = hrand(OC, 1), *dyh = brand(ny + off, 1), *dxh = brand(nx + off, 1);
    float *out = hnan(ny), *x = xh + off, *dy = dyh + off, *dx = dxh + off;
    float *gXb = bdev(xh, nx + off), *gB = dev(b, OC * 4), *gDYb = bdev(dyh, ny + off), *gdxb = bdev(dxh, nx + off);
    float *goutb = bnan(ny + off);
    float *gX = pq_act_at(gXb, off), *gDY = pq_act_at(gDYb, off), *gdx = pq_act_at(gdxb, off);
    float *gout = pq_act_at(goutb, off);
    pq_cpu_linear_forward(out, x, &hw, bias ? b : NULL, N, C, OC);
    pq_linear_forward(gout, gX, &dw, bias ? gB : NULL, N, C, OC);
    char name[96], at[16] = "";
    if (off) snprintf(at, sizeof at, " at +%d", off);
    snprintf(name, sizeof name, "linear_forward %s%s %dx%d->%d%s", pq_dtype_name(dt), bias ? " bias" : "", N, C, OC,
             at);
    acmp(name, out, gout, ny, tol(prod_tol(dt), TOL_EW));
    pq_cpu_linear_backward(dx, dy, &hw, N, C, OC);
    pq_linear_backward(gdx, gDY, &dw, N, C, OC);
    snprintf(name, sizeof name, "linear_backward += %s %dx%d->%d%s", pq_dtype_name(dt), N, C, OC, at);
    acmp(name, dx, gdx, nx, tol(prod_tol(dt), TOL_EW));
    pq_dev_weight_free(&dw);
    free((void *)hw.data), free(xh), free(b), free(dyh), free(dxh), free(out);
    DEV_FREE(gXb, gB, gDYb, gdxb, goutb);
}

// A group on one input, forward and backward: q, k, v (n 3) or gate, up (n 2), the weights joined at load
// (pq_dev_weights) or uploaded one by one; bias: a bitmask of the members with one
static void test_linear_group(PqDtype dt, int n, int bias, int joined, int N) {
    int C = 256, oc3[3] = {320, 64, 64}, oc2[2] = {448, 448};
    const int *oc = n == 3 ? oc3 : oc2;
    PqWeight hw[3], dw[3];
    float *b[3] = {NULL, NULL, NULL}, *db[3] = {NULL, NULL, NULL}, *out[3], *gout[3], *dy[3], *gdy[3];
    for (int t = 0; t < n; t++) {
        hw[t] = dw[t] = hweight(oc[t], C, dt, 0.1f, NULL);
        if (bias >> t & 1) b[t] = hrand(oc[t], 1), db[t] = dev(b[t], oc[t] * 4);
        out[t] = hnan((size_t)N * oc[t]), gout[t] = bnan((size_t)N * oc[t]);
        dy[t] = brand((size_t)N * oc[t], 1), gdy[t] = bdev(dy[t], (size_t)N * oc[t]);
    }
    if (joined) pq_dev_weights(dw, n);
    else
        for (int t = 0; t < n; t++) dw[t] = pq_dev_weight(hw[t]);
    size_t nx = (size_t)N * C;
    float *x = brand(nx, 1), *dx = brand(nx, 1), *gX = bdev(x, nx), *gdx = bdev(dx, nx);
    pq_cpu_linear_group_forward(out, x, hw, (const float *const *)b, n, N, C);
    pq_linear_group_forward(gout, gX, dw, (const float *const *)db, n, N, C);
    char name[112];
    for (int t = 0; t < n; t++) {
        snprintf(name, sizeof name, "linear_group_forward %s n%d%s%s N=%d [%d]", pq_dtype_name(dt), n,
                 b[t] ? " bias" : "", joined ? " joined" : "", N, t);
        acmp(name, out[t], gout[t], (size_t)N * oc[t], tol(prod_tol(dt), TOL_EW));
    }
    pq_cpu_linear_group_backward(dx, (const float *const *)dy, hw, n, N, C);
    pq_linear_group_backward(gdx, (const float *const *)gdy, dw, n, N, C);
    snprintf(name, sizeof name, "linear_group_backward += %s n%d%s N=%d", pq_dtype_name(dt), n,
             joined ? " joined" : "", N);
    acmp(name, dx, gdx, nx, tol(prod_tol(dt), TOL_EW));
    for (int t = 0; t < n; t++) {
        pq_dev_weight_free(&dw[t]);
        free((void *)hw[t].data), free(b[t]), free(out[t]), free(dy[t]);
        DEV_FREE(db[t], gout[t], gdy[t]);
    }
    free(x), free(dx);
    DEV_FREE(gX, gdx);
}

// lora_forward / lora_backward with the LoRA products' kernel kind (lib/cuda/tuning.h; TF32's 10-bit
// mantissas get a looser bound) in f32 storage; in bf16 storage bf16 products whatever the kind, against
// pq_cpu_lora_*_bf16, A and B f32 that bf16 does not hold, so that each rounding point shows. xa and dxa
// are then rounded results that later products read: an f32 sum in another order rounds one of them the
// other way about once in 10^4 (the 1000-row case has 16000 of each), which moves a whole row of out or dinp
// and a column of dA by a bf16 step of it, past same_share's step and dA's 1e-4. So each side's xa and dxa
// are checked against the oracle's, and what is computed from them, from the device's own on both sides
// (the oracle's pq_cpu_lora_forward and _backward are these calls in this order).
static void test_lora(int with_dinp, int kind, int N, int C, int OC, int r) {
    static const char *kinds[PQ_LORA_KINDS] = {"sgemm", "tf32", "lt", "sgemm_t"};
    double kt = kind == PQ_LORA_TF32 ? 1e-2 : 2e-5;
    pq_cuda_set_lora_gemm(kind);
    float sc = 2.0f;
    size_t nx = (size_t)N * C, ny = (size_t)N * OC, nxa = (size_t)N * r;
    float *x = brand(nx, 1), *A = hrand((size_t)r * C, 0.2f), *B = hrand((size_t)OC * r, 0.2f);
    float *out = brand(ny, 1), *xa = hnan(nxa), *dy = brand(ny, 1), *dA = hrand((size_t)r * C, 1);
    float *dB = hrand((size_t)OC * r, 1), *dx = brand(nx, 1), *dxa = hnan(nxa);
    float *gx = bdev(x, nx), *gA = dev(A, (size_t)r * C * 4), *gB = dev(B, (size_t)OC * r * 4), *gout = bdev(out, ny);
    float *gxa = dnan(nxa), *gdy = bdev(dy, ny), *gdA = dev(dA, (size_t)r * C * 4);
    float *gdB = dev(dB, (size_t)OC * r * 4), *gdx = bdev(dx, nx), *gdxa = dnan(nxa);
    pq_lora_forward(gout, gxa, gx, gA, gB, sc, N, C, OC, r);
    LORA_CPU(xa_group)(&xa, x, (const float *const *)&A, NULL, 0.0f, 1, N, C, r);
    float *hxa = down(gxa, nxa);
    LORA_CPU(up_forward)(out, hxa, B, sc, N, OC, r);
    char name[96];
    snprintf(name, sizeof name, "lora_forward out += %dx%d r=%d [%s]", N, OC, r, kinds[kind]);
    lcmp(name, out, gout, ny, tol(kt, TOL_EW));
    snprintf(name, sizeof name, "lora_forward xa %dx%d r=%d [%s]", N, C, r, kinds[kind]);
    xcmp(name, xa, gxa, nxa, tol(kt, TOL_EW));
    // the backward from the oracle's xa, on both sides
    float *gxa_c = dev(xa, nxa * 4);
    pq_lora_backward(with_dinp ? gdx : NULL, gdA, gdB, gdxa, gdy, gx, gxa_c, gA, gB, sc, N, C, OC, r);
    LORA_CPU(up_backward)(dB, dxa, dy, xa, B, sc, N, OC, r);
    float *hdxa = down(gdxa, nxa);
    LORA_CPU(dA_group)(&dA, (const float *const *)&hdxa, x, NULL, 0.0f, 1, N, C, r);
    if (with_dinp)
        LORA_CPU(dx_group)(dx, (const float *const *)&hdxa, (const float *const *)&A, NULL, 0.0f, 1, N, C, r);
    snprintf(name, sizeof name, "lora_backward dxa%s [%s]", with_dinp ? "" : " (no dinp)", kinds[kind]);
    xcmp(name, dxa, gdxa, nxa, tol(kt, TOL_EW));
    snprintf(name, sizeof name, "lora_backward dA%s [%s]", with_dinp ? "" : " (no dinp)", kinds[kind]);
    fcmp(name, dA, gdA, (size_t)r * C, tol(kt, 1e-4));
    snprintf(name, sizeof name, "lora_backward dB%s [%s]", with_dinp ? "" : " (no dinp)", kinds[kind]);
    fcmp(name, dB, gdB, (size_t)OC * r, tol(kt, 2e-5));
    snprintf(name, sizeof name, "lora_backward dinp %s [%s]", with_dinp ? "+=" : "untouched", kinds[kind]);
    if (with_dinp) lcmp(name, dx, gdx, nx, tol(kt, TOL_EW));
    else acmp(name, dx, gdx, nx, 0);
    free(x), free(A), free(B), free(out), free(xa), free(dy), free(dA), free(dB), free(dx), free(dxa), free(hxa);
    free(hdxa);
    DEV_FREE(gx, gA, gB, gout, gxa, gdy, gdA, gdB, gdx, gdxa, gxa_c);
    pq_cuda_set_lora_gemm(-1);
}

// The LoRA group ops (n adapters on one input, each its own dropout mask) and the B side's ops: row and
// column tiles with partial edges, ranks past the kernels' 16, dA over several row splits. A, B, dxa and the
// B side's xa f32 that bf16 does not hold, so that in bf16 storage each rounding point shows.
static void test_lora_group(int n, int N, int C, int OC, int r, float p) {
    size_t ne = (size_t)N * C, na = (size_t)r * C, nx = (size_t)N * r, no = (size_t)N * OC;
    uint64_t seed[4] = {11, 0xabcdef12345ULL, 0x5eed, 7};
    float *x = brand(ne, 1), *dx = brand(ne, 1), *gx = bdev(x, ne), *gdx = bdev(dx, ne);
    float *A[4], *xa[4], *dxa[4], *dA[4], *gA[4], *gxa[4], *gdxa[4], *gdA[4];
    for (int t = 0; t < n; t++) {
        A[t] = hrand(na, 0.2f), dxa[t] = hrand(nx, 1), dA[t] = hrand(na, 1), xa[t] = hnan(nx);
        gA[t] = dev(A[t], na * 4), gdxa[t] = dev(dxa[t], nx * 4), gdA[t] = dev(dA[t], na * 4), gxa[t] = dnan(nx);
    }
    char name[128];
    LORA_CPU(xa_group)(xa, x, (const float *const *)A, seed, p, n, N, C, r);
    pq_lora_xa_group(gxa, gx, (const float *const *)gA, seed, p, n, N, C, r);
    LORA_CPU(dA_group)(dA, (const float *const *)dxa, x, seed, p, n, N, C, r);
    pq_lora_dA_group(gdA, (const float *const *)gdxa, gx, seed, p, n, N, C, r);
    LORA_CPU(dx_group)(dx, (const float *const *)dxa, (const float *const *)A, seed, p, n, N, C, r);
    pq_lora_dx_group(gdx, (const float *const *)gdxa, (const float *const *)gA, seed, p, n, N, C, r);
    for (int t = 0; t < n; t++) {
        snprintf(name, sizeof name, "lora_xa_group n=%d [%d] %dx%d r=%d p=%g", n, t, N, C, r, p);
        xcmp(name, xa[t], gxa[t], nx, tol(2e-5, TOL_EW));
        snprintf(name, sizeof name, "lora_dA_group n=%d [%d] %dx%d r=%d p=%g", n, t, N, C, r, p);
        fcmp(name, dA[t], gdA[t], na, 5e-5);
    }
    snprintf(name, sizeof name, "lora_dx_group += n=%d %dx%d r=%d p=%g", n, N, C, r, p);
    lcmp(name, dx, gdx, ne, tol(2e-5, TOL_EW));
    float *B = hrand((size_t)OC * r, 0.2f), *out = brand(no, 1), *dout = brand(no, 1), *dB = hrand((size_t)OC * r, 1);
    float *xu = hrand(nx, 1), *dxu = hnan(nx);
    float *gB = dev(B, (size_t)OC * r * 4), *gout = bdev(out, no), *gdout = bdev(dout, no);
    float *gdB = dev(dB, (size_t)OC * r * 4), *gxu = dev(xu, nx * 4), *gdxu = dnan(nx);
    LORA_CPU(up_forward)(out, xu, B, 1.5f, N, OC, r);
    pq_lora_up_forward(gout, gxu, gB, 1.5f, N, OC, r);
    snprintf(name, sizeof name, "lora_up_forward += %dx%d r=%d", N, OC, r);
    lcmp(name, out, gout, no, tol(2e-5, TOL_EW));
    LORA_CPU(up_backward)(dB, dxu, dout, xu, B, 1.5f, N, OC, r);
    pq_lora_up_backward(gdB, gdxu, gdout, gxu, gB, 1.5f, N, OC, r);
    snprintf(name, sizeof name, "lora_up_backward dB %dx%d r=%d", N, OC, r);
    fcmp(name, dB, gdB, (size_t)OC * r, 2e-5);
    snprintf(name, sizeof name, "lora_up_backward dxa %dx%d r=%d", N, OC, r);
    xcmp(name, dxu, gdxu, nx, tol(2e-5, TOL_EW));
    for (int t = 0; t < n; t++) {
        free(A[t]), free(xa[t]), free(dxa[t]), free(dA[t]);
        DEV_FREE(gA[t], gxa[t], gdxa[t], gdA[t]);
    }
    free(x), free(dx), free(B), free(out), free(dout), free(dB), free(xu), free(dxu);
    DEV_FREE(gx, gdx, gB, gout, gdout, gdB, gxu, gdxu);
}

static void test_rope(void) {
    int lens[] = {5, 300, 1, 60}, N, NH = 6, HS = 64;
    int32_t *pos = packing(lens, 4, &N);
    float *inv = pq_xmalloc(HS / 2 * sizeof *inv);
    for (int d = 0; d < HS / 2; d++) inv[d] = 1.0f / powf(10000.0f, 2.0f * d / HS);
    size_t n = (size_t)N * NH * HS;
    float *x = brand(n, 1), *gx = bdev(x, n), *ginv = dev(inv, HS / 2 * 4);
    int32_t *gpos = dev(pos, N * 4);
    pq_cpu_rope_forward(x, pos, inv, N, NH, HS);
    pq_rope_forward(gx, gpos, ginv, N, NH, HS);
    acmp("rope_forward in place", x, gx, n, tol(2e-6, TOL_EW));
    pq_cpu_rope_backward(x, pos, inv, N, NH, HS);
    pq_rope_backward(gx, gpos, ginv, N, NH, HS);
    acmp("rope_backward in place", x, gx, n, tol(2e-6, TOL_CH));
    // q and k (GQA) in one launch, forward then backward; the oracle's values (as stored) restart both sides
    int KVH = 2;
    size_t nk = (size_t)N * KVH * HS;
    float *k = brand(nk, 1), *gk = bdev(k, nk);
    pq_dev_free(gx);
    gx = bdev(x, n);
    pq_cpu_rope_qk_forward(x, k, pos, inv, N, NH, KVH, HS);
    pq_rope_qk_forward(gx, gk, gpos, ginv, N, NH, KVH, HS);
    acmp("rope_qk_forward q", x, gx, n, tol(2e-6, TOL_EW));
    acmp("rope_qk_forward k", k, gk, nk, tol(2e-6, TOL_EW));
    pq_cpu_rope_qk_backward(x, k, pos, inv, N, NH, KVH, HS);
    pq_rope_qk_backward(gx, gk, gpos, ginv, N, NH, KVH, HS);
    acmp("rope_qk_backward q", x, gx, n, tol(2e-6, TOL_CH));
    acmp("rope_qk_backward k", k, gk, nk, tol(2e-6, TOL_CH));
    free(k);
    pq_dev_free(gk);
    free(pos), free(inv), free(x);
    DEV_FREE(gx, gpos, ginv);
}

static void test_elementwise(void) {
    int N = 131, H = 517;
    size_t n = (size_t)N * H;
    float *g = brand(n, 6), *u = brand(n, 2), *dy = brand(n, 1), *out = hnan(n), *dg = hnan(n), *du = hnan(n);
    float *gg = bdev(g, n), *gu = bdev(u, n), *gdy = bdev(dy, n), *gout = bnan(n), *gdg = bnan(n), *gdu = bnan(n);
    pq_cpu_swiglu_forward(out, g, u, N, H);
    pq_swiglu_forward(gout, gg, gu, N, H);
    acmp("swiglu_forward", out, gout, n, tol(1e-6, TOL_EW));
    pq_cpu_swiglu_backward(dg, du, dy, g, u, N, H);
    pq_swiglu_backward(gdg, gdu, gdy, gg, gu, N, H);
    acmp("swiglu_backward dgate", dg, gdg, n, tol(1e-6, TOL_EW));
    acmp("swiglu_backward dup", du, gdu, n, tol(1e-6, TOL_EW));
    // dropout: the same mask bit for bit, the same f32 product, the same rounding
    float ps[] = {0.1f, 0.5f, 0.0f};
    uint64_t seeds[] = {12345, 0xdeadbeefcafeULL, 3};
    for (int k = 0; k < 3; k++) {
        char name[64];
        pq_cpu_dropout_forward(out, u, ps[k], seeds[k], n);
        pq_dropout_forward(gout, gu, ps[k], seeds[k], n);
        snprintf(name, sizeof name, "dropout_forward p=%g", ps[k]);
        acmp(name, out, gout, n, 0);
    }
    pq_cpu_residual_forward(g, u, n);
    pq_residual_forward(gg, gu, n);
    acmp("residual_forward x += y", g, gg, n, 0);
    // LoRA's input gradient through dropout, in one pass (dx +=): blocks of rows and columns with partial
    // edges, ranks below, at and above the kernel's 16-row chunk of A, and no dropout
    int shapes[][4] = {{N, H, 16, 10}, {37, 300, 5, 30}, {20, 77, 40, 0}};
    for (int s = 0; s < 3; s++) {
        int n2 = shapes[s][0], c2 = shapes[s][1], r2 = shapes[s][2];
        float pd = (float)shapes[s][3] / 100;
        size_t ne = (size_t)n2 * c2;
        float *dxa = hrand((size_t)n2 * r2, 1), *A = hrand((size_t)r2 * c2, 1), *dx = brand(ne, 1);
        float *gdxa = dev(dxa, (size_t)n2 * r2 * 4), *gA = dev(A, (size_t)r2 * c2 * 4), *gdx = bdev(dx, ne);
        LORA_CPU(dx_dropout)(dx, dxa, A, pd, 777 + s, n2, c2, r2);
        pq_lora_dx_dropout(gdx, gdxa, gA, pd, 777 + s, n2, c2, r2);
        char nm[96];
        snprintf(nm, sizeof nm, "lora_dx_dropout += %dx%d r=%d p=%g", n2, c2, r2, pd);
        lcmp(nm, dx, gdx, ne, tol(1e-5, TOL_EW));
        free(dxa), free(A), free(dx);
        DEV_FREE(gdxa, gA, gdx);
    }
    free(g), free(u), free(dy), free(out), free(dg), free(du);
    DEV_FREE(gg, gu, gdy, gout, gdg, gdu);
}

// Attention, plain (a0 NULL) or over two key ranges (attention2), forward and the backward of both from the
// same (CPU) forward. On path: PQ_ATTENTION's ("cudnn" native bf16, "mm" and "f32" through the fallback, each
// with pq_ops_set_attention_dtype(PQ_BF16)), or NULL: the process's own. q_off: q starts that many elements
// into its buffer (1: not 16-byte aligned, copied for cuDNN).
typedef struct {
    const char *name;
    int N, NH, KVH, HS, window, q_off;
    const int32_t *pos, *a0, *a1, *b0;
} Case;

static void attention_case(const Case *c, const char *path) {
    int N = c->N, NH = c->NH, KVH = c->KVH, HS = c->HS, w = c->window;
    size_t nq = (size_t)N * NH * HS, nk = (size_t)N * KVH * HS, nl = (size_t)N * NH;
    float *q = brand(nq, 2), *k = brand(nk, 2), *v = brand(nk, 1), *dout = brand(nq, 1);
    float *out = hnan(nq), *lse = hnan(nl), *dq = hnan(nq), *dk = hnan(nk), *dv = hnan(nk);
    // q at an offset inside a larger buffer: the prefix is zero
    float *qh = pq_xcalloc(nq + c->q_off, sizeof *qh);
    memcpy(qh + c->q_off, q, nq * sizeof *q);
    float *gqbuf = bdev(qh, nq + c->q_off), *gq = pq_act_at(gqbuf, c->q_off);
    float *gk = bdev(k, nk), *gv = bdev(v, nk), *gdout = bdev(dout, nq);
    int32_t *gpos = dev(c->pos, (size_t)N * 4), *ga0 = NULL, *ga1 = NULL, *gb0 = NULL;
    if (c->a0) ga0 = dev(c->a0, (size_t)N * 4), ga1 = dev(c->a1, (size_t)N * 4), gb0 = dev(c->b0, (size_t)N * 4);
    float *gout = bnan(nq), *glse = dnan(nl), *gdq = bnan(nq), *gdk = bnan(nk), *gdv = bnan(nk);
    if (path) setenv("PQ_ATTENTION", path, 1), pq_ops_set_attention_dtype(PQ_BF16);
    int calls0 = pq_attention_cudnn_calls();
    if (c->a0) {
        pq_cpu_attention2_forward(out, lse, q, k, v, c->pos, c->a0, c->a1, c->b0, N, NH, KVH, HS, w);
        pq_attention2_forward(gout, glse, gq, gk, gv, gpos, ga0, ga1, gb0, N, NH, KVH, HS, w);
    } else {
        pq_cpu_attention_forward(out, lse, q, k, v, c->pos, N, NH, KVH, HS, w);
        pq_attention_forward(gout, glse, gq, gk, gv, gpos, N, NH, KVH, HS, w);
    }
    double t = tol(1e-4, path && strcmp(path, "f32") ? TOL_ATT : TOL_EW);
    char tag[128], name[160];
    snprintf(tag, sizeof tag, "%s%s%s%s", c->name, path ? " [" : "", path ? path : "", path ? "]" : "");
    snprintf(name, sizeof name, "%s out", tag);
    acmp(name, out, gout, nq, t); // (out rounded: the backward of both reads the stored value)
    snprintf(name, sizeof name, "%s lse (f32)", tag);
    fcmp(name, lse, glse, nl, tol(1e-5, TOL_LOGP));
    float *gout_c = bdev(out, nq), *glse_c = dev(lse, nl * 4);
    if (c->a0) {
        pq_cpu_attention2_backward(dq, dk, dv, dout, q, k, v, out, lse, c->pos, c->a0, c->a1, c->b0, N, NH, KVH, HS,
                                   w);
        pq_attention2_backward(gdq, gdk, gdv, gdout, gq, gk, gv, gout_c, glse_c, gpos, ga0, ga1, gb0, N, NH, KVH, HS,
                               w);
    } else {
        pq_cpu_attention_backward(dq, dk, dv, dout, q, k, v, out, lse, c->pos, N, NH, KVH, HS, w);
        pq_attention_backward(gdq, gdk, gdv, gdout, gq, gk, gv, gout_c, glse_c, gpos, N, NH, KVH, HS, w);
    }
    int calls = pq_attention_cudnn_calls() - calls0;
    if (path) unsetenv("PQ_ATTENTION"), pq_ops_set_attention_dtype(PQ_BF16);
    snprintf(name, sizeof name, "%s dq", tag);
    acmp(name, dq, gdq, nq, t);
    snprintf(name, sizeof name, "%s dk", tag);
    acmp(name, dk, gdk, nk, t);
    snprintf(name, sizeof name, "%s dv", tag);
    acmp(name, dv, gdv, nk, t);
    // (whether cuDNN must serve a batch is parity-attn's check; here: which path was compared)
    if (path && !strcmp(path, "cudnn"))
        printf("     %s: %d cuDNN calls%s%s\n", c->name, calls, calls ? "" : ", the fallback served it: ",
               calls ? "" : pq_attention_cudnn_error());
    free(q), free(k), free(v), free(dout), free(out), free(lse), free(dq), free(dk), free(dv), free(qh);
    DEV_FREE(gqbuf, gk, gv, gdout, gpos, ga0, ga1, gb0, gout, glse, gdq, gdk, gdv, gout_c, glse_c);
}

// a case on each path of the program (bf16_run)
static void attention_paths(const Case *c) {
    static const char *paths[] = {"cudnn", "mm", "f32"};
    if (!bf16_run) attention_case(c, NULL);
    else
        for (int p = 0; p < 3; p++) attention_case(c, paths[p]);
}

static void run_attention(const int *lens, int nrec, int NH, int KVH, int HS, int window, int q_off) {
    Case c = {0};
    int32_t *pos = packing(lens, nrec, &c.N);
    char name[96];
    snprintf(name, sizeof name, "attention N=%d %d/%d HS=%d w=%d%s", c.N, NH, KVH, HS, window,
             q_off ? " q unaligned" : "");
    c.name = name, c.NH = NH, c.KVH = KVH, c.HS = HS, c.window = window, c.q_off = q_off, c.pos = pos;
    attention_paths(&c);
    free(pos);
}

// a pair's two responses after one shared prompt, then a plain record
static void run_attention2(int NH, int KVH, int HS, int window) {
    int P = 37, Cn = 21, R = 26, X = 40, N = P + Cn + R + X;
    int32_t *pos = pq_xmalloc(N * 4), *a0 = pq_xmalloc(N * 4), *a1 = pq_xmalloc(N * 4), *b0 = pq_xmalloc(N * 4);
    for (int i = 0; i < N; i++) {
        if (i < P + Cn) pos[i] = i, a0[i] = a1[i] = 0, b0[i] = 0;                      // prompt, chosen
        else if (i < P + Cn + R) pos[i] = i - Cn, a0[i] = 0, a1[i] = P, b0[i] = P + Cn; // rejected
        else pos[i] = i - (P + Cn + R), a0[i] = a1[i] = P + Cn + R, b0[i] = P + Cn + R; // another record
    }
    char name[96];
    snprintf(name, sizeof name, "attention2 N=%d %d/%d HS=%d w=%d", N, NH, KVH, HS, window);
    Case c = {name, N, NH, KVH, HS, window, 0, pos, a0, a1, b0};
    attention_paths(&c);
    free(pos), free(a0), free(a1), free(b0);
}

// bf16 storage: a bf16 head reads h as bf16 (native), dh accumulated in f32 over the chunks; an f16 head: the
// fallback
static void test_logp(PqDtype dt, const char *chunk) {
    if (chunk) setenv("PQ_CUDA_VOCAB_CHUNK", chunk, 1);
    else unsetenv("PQ_CUDA_VOCAB_CHUNK");
    int N = 150, C = 128, V = 5003;
    PqWeight hw = hweight(V, C, dt, 0.5f, NULL), dw = pq_dev_weight(hw);
    size_t nh = (size_t)N * C;
    float *h = brand(nh, 1), *dl = hrand(N, 1), *dh = brand(nh, 1), *lp = hnan(N), *lse = hnan(N);
    int32_t *tg = pq_xmalloc(N * sizeof *tg);
    for (int i = 0; i < N; i++) tg[i] = i % 7 == 3 ? -1 : (int32_t)(rnd() % V);
    tg[1] = 0, tg[2] = V - 1, dl[5] = 0;
    int vc = chunk ? atoi(chunk) : 0; // targets on both sides of chunk boundaries
    if (vc > 0 && vc < V) tg[4] = vc - 1, tg[6] = vc, tg[8] = (V - 1) / vc * vc, tg[9] = (V - 1) / vc * vc - 1;
    float *gh = bdev(h, nh), *gdl = dev(dl, N * 4), *gdh = bdev(dh, nh), *glp = dnan(N), *glse = dnan(N);
    int32_t *gtg = dev(tg, N * 4);
    pq_cpu_logp_forward(lp, lse, h, &hw, tg, N, C, V);
    pq_logp_forward(glp, glse, gh, &dw, gtg, N, C, V);
    char name[80];
    const char *ck = chunk ? chunk : "auto";
    double t = tol(dt == PQ_F32 ? 2e-5 : 5e-3, TOL_LOGP);
    snprintf(name, sizeof name, "logp_forward logp %s head chunk %s", pq_dtype_name(dt), ck);
    fcmp(name, lp, glp, N, t);
    snprintf(name, sizeof name, "logp_forward lse %s head chunk %s", pq_dtype_name(dt), ck);
    fcmp(name, lse, glse, N, t);
    float *glp2 = dnan(N); // lse NULL, as pq_model_logp calls it
    pq_logp_forward(glp2, NULL, gh, &dw, gtg, N, C, V);
    snprintf(name, sizeof name, "logp_forward lse NULL %s head chunk %s", pq_dtype_name(dt), ck);
    fcmp(name, lp, glp2, N, t);
    float *glse_c = dev(lse, N * 4);
    pq_cpu_logp_backward(dh, dl, h, &hw, tg, lse, N, C, V);
    pq_logp_backward(gdh, gdl, gh, &dw, gtg, glse_c, N, C, V);
    snprintf(name, sizeof name, "logp_backward dh += %s head chunk %s", pq_dtype_name(dt), ck);
    acmp(name, dh, gdh, nh, tol(prod_tol(dt), TOL_DH));
    pq_dev_weight_free(&dw);
    free((void *)hw.data), free(h), free(dl), free(dh), free(tg), free(lp), free(lse);
    DEV_FREE(gh, gdl, gdh, gtg, glp, glse, glse_c, glp2);
    unsetenv("PQ_CUDA_VOCAB_CHUNK");
}

#endif
