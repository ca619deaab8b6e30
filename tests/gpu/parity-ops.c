// parity-ops.c: every op of the CUDA backend (pq_*) against the CPU oracle
// (pq_cpu_*) on fresh random inputs, device outputs poisoned with NaN before
// each run, with tolerances per precision (f32 and bf16/f16 products).
// Built only with CUDA=1; run by scripts/gpu-check. Exits 1 on any mismatch.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/tuning.h"
#include "gpu_test.h"
#include "ops_gen.h"
#include "ops_grad.h"
#include "st_write.h"
#include "util.h"

static int failures, checks;
// max |gpu - cpu| / max(max |cpu|, floor) <= tol, and no NaN where cpu has none
static void cmp(const char *name, const float *cpu, const float *gpu_dev, size_t n, double tol) {
    float *g = down(gpu_dev, n);
    checks++;
    if (!close_cpu_gpu(name, 40, cpu, g, n, tol)) failures++;
    free(g);
}

static double prod_tol(PqDtype dt) { return dt == PQ_F32 ? 2e-5 : 1.5e-2; }

static void test_embedding(PqDtype dt) {
    int V = 1000, C = 96, N = 77;
    PqWeight hw = hweight(V, C, dt, 1, NULL), dw = pq_dev_weight(hw);
    int32_t *ids = pq_xmalloc(N * sizeof *ids);
    for (int i = 0; i < N; i++) ids[i] = (int32_t)(rnd() % V);
    ids[0] = 0, ids[N - 1] = V - 1;
    float *cpu = hnan((size_t)N * C), *gout = dnan((size_t)N * C);
    int32_t *dids = dev(ids, N * sizeof *ids);
    pq_cpu_embedding_forward(cpu, ids, &hw, N, C);
    pq_embedding_forward(gout, dids, &dw, N, C);
    char name[64];
    snprintf(name, sizeof name, "embedding %s", pq_dtype_name(dt));
    cmp(name, cpu, gout, (size_t)N * C, 0);
    pq_dev_weight_free(&dw);
    free((void *)hw.data), free(ids), free(cpu), pq_dev_free(gout), pq_dev_free(dids);
}

static void test_rmsnorm(int N, int C) {
    float *x = hrand((size_t)N * C, 2), *w = hrand(C, 1.5f), *dy = hrand((size_t)N * C, 1);
    float *out = hnan((size_t)N * C), *rstd = hnan(N);
    float *dx = hrand((size_t)N * C, 1);
    float *dx0 = dev(dx, (size_t)N * C * 4);
    float *dX = dev(x, (size_t)N * C * 4), *dW = dev(w, C * 4), *dDY = dev(dy, (size_t)N * C * 4);
    float *gout = dnan((size_t)N * C), *grstd = dnan(N);
    pq_cpu_rmsnorm_forward(out, rstd, x, w, N, C, 1e-5f);
    pq_rmsnorm_forward(gout, grstd, dX, dW, N, C, 1e-5f);
    char name[64];
    snprintf(name, sizeof name, "rmsnorm_forward out C=%d", C);
    cmp(name, out, gout, (size_t)N * C, 1e-5);
    snprintf(name, sizeof name, "rmsnorm_forward rstd C=%d", C);
    cmp(name, rstd, grstd, N, 1e-5);
    float *gout2 = dnan((size_t)N * C); // rstd NULL, as model.c's final norm and gen.c call it
    pq_rmsnorm_forward(gout2, NULL, dX, dW, N, C, 1e-5f);
    snprintf(name, sizeof name, "rmsnorm_forward rstd NULL C=%d", C);
    cmp(name, out, gout2, (size_t)N * C, 1e-5);
    pq_dev_free(gout2);
    pq_cpu_rmsnorm_backward(dx, dy, x, w, rstd, N, C);
    pq_rmsnorm_backward(dx0, dDY, dX, dW, grstd, N, C);
    snprintf(name, sizeof name, "rmsnorm_backward C=%d", C);
    cmp(name, dx, dx0, (size_t)N * C, 1e-5);
    free(x), free(w), free(dy), free(out), free(rstd), free(dx);
    pq_dev_free(dx0), pq_dev_free(dX), pq_dev_free(dW), pq_dev_free(dDY), pq_dev_free(gout), pq_dev_free(grstd);
}

// Qwen3's per-head q/k norm as model.c and train.c run it: q (N,NH,HS) from
// the projection, RMSNorm over each head's HS values (N*NH rows), then RoPE;
// backward: RoPE's, then the norm's into a zeroed buffer.
static void test_qk_norm(int N, int NH, int HS) {
    size_t n = (size_t)N * NH * HS;
    int R = N * NH;
    float *x = hrand(n, 3), *w = hrand(HS, 1.5f), *dy = hrand(n, 1), *inv = pq_xmalloc(HS / 2 * sizeof *inv);
    int32_t *pos = pq_xmalloc((size_t)N * sizeof *pos);
    for (int i = 0; i < N; i++) pos[i] = i % 37; // records of 37 tokens
    for (int d = 0; d < HS / 2; d++) inv[d] = powf(1e6f, -2.0f * d / HS);
    float *y = hnan(n), *rstd = hnan(R), *dx = pq_xcalloc(n, sizeof *dx);
    float *gX = dev(x, n * 4), *gW = dev(w, HS * 4), *gDY = dev(dy, n * 4), *gY = dnan(n), *gR = dnan(R);
    float *ginv = dev(inv, HS / 2 * 4), *gdx = dnan(n);
    int32_t *gpos = dev(pos, (size_t)N * 4);
    pq_cpu_rmsnorm_forward(y, rstd, x, w, R, HS, 1e-6f);
    pq_cpu_rope_forward(y, pos, inv, N, NH, HS);
    pq_rmsnorm_forward(gY, gR, gX, gW, R, HS, 1e-6f);
    pq_rope_forward(gY, gpos, ginv, N, NH, HS);
    char name[64];
    snprintf(name, sizeof name, "qk_norm + rope forward NH=%d HS=%d", NH, HS);
    cmp(name, y, gY, n, 1e-5);
    snprintf(name, sizeof name, "qk_norm rstd NH=%d HS=%d", NH, HS);
    cmp(name, rstd, gR, R, 1e-5);
    pq_cpu_rope_backward(dy, pos, inv, N, NH, HS);
    pq_cpu_rmsnorm_backward(dx, dy, x, w, rstd, R, HS);
    pq_rope_backward(gDY, gpos, ginv, N, NH, HS);
    pq_dev_zero(gdx, n * 4);
    pq_rmsnorm_backward(gdx, gDY, gX, gW, gR, R, HS);
    snprintf(name, sizeof name, "qk_norm + rope backward NH=%d HS=%d", NH, HS);
    cmp(name, dx, gdx, n, 1e-5);
    free(x), free(w), free(dy), free(inv), free(pos), free(y), free(rstd), free(dx);
    void *p[] = {gX, gW, gDY, gY, gR, ginv, gdx, gpos};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) pq_dev_free(p[i]);
}

// the residual add fused with the norm: the kernel against its CPU twin (x updated, out, rstd)
static void test_residual_rmsnorm(int N, int C) {
    size_t n = (size_t)N * C;
    float *x = hrand(n, 2), *y = hrand(n, 2), *w = hrand(C, 1.5f), *out = hnan(n), *rstd = hnan(N);
    float *dX = dev(x, n * 4), *dY = dev(y, n * 4), *dW = dev(w, C * 4), *gout = dnan(n), *grstd = dnan(N);
    pq_cpu_residual_rmsnorm_forward(out, rstd, x, y, w, N, C, 1e-5f);
    pq_residual_rmsnorm_forward(gout, grstd, dX, dY, dW, N, C, 1e-5f);
    char name[64];
    snprintf(name, sizeof name, "residual_rmsnorm x += y C=%d", C);
    cmp(name, x, dX, n, 0);
    snprintf(name, sizeof name, "residual_rmsnorm out C=%d", C);
    cmp(name, out, gout, n, 1e-5);
    snprintf(name, sizeof name, "residual_rmsnorm rstd C=%d", C);
    cmp(name, rstd, grstd, N, 1e-5);
    free(x), free(y), free(w), free(out), free(rstd);
    pq_dev_free(dX), pq_dev_free(dY), pq_dev_free(dW), pq_dev_free(gout), pq_dev_free(grstd);
}

static void test_linear(PqDtype dt, int bias) {
    int N = 133, C = 256, OC = 320;
    PqWeight hw = hweight(OC, C, dt, 0.1f, NULL), dw = pq_dev_weight(hw);
    float *x = hrand((size_t)N * C, 1), *b = hrand(OC, 1), *dy = hrand((size_t)N * OC, 1);
    float *out = hnan((size_t)N * OC), *dx = hrand((size_t)N * C, 1);
    float *dX = dev(x, (size_t)N * C * 4), *dB = dev(b, OC * 4), *dDY = dev(dy, (size_t)N * OC * 4);
    float *gout = dnan((size_t)N * OC), *gdx = dev(dx, (size_t)N * C * 4);
    pq_cpu_linear_forward(out, x, &hw, bias ? b : NULL, N, C, OC);
    pq_linear_forward(gout, dX, &dw, bias ? dB : NULL, N, C, OC);
    char name[64];
    snprintf(name, sizeof name, "linear_forward %s%s", pq_dtype_name(dt), bias ? " bias" : "");
    cmp(name, out, gout, (size_t)N * OC, prod_tol(dt));
    pq_cpu_linear_backward(dx, dy, &hw, N, C, OC);
    pq_linear_backward(gdx, dDY, &dw, N, C, OC);
    snprintf(name, sizeof name, "linear_backward %s", pq_dtype_name(dt));
    cmp(name, dx, gdx, (size_t)N * C, prod_tol(dt));
    pq_dev_weight_free(&dw);
    free((void *)hw.data), free(x), free(b), free(dy), free(out), free(dx);
    pq_dev_free(dX), pq_dev_free(dB), pq_dev_free(dDY), pq_dev_free(gout), pq_dev_free(gdx);
}

// A group on one input against the CPU twins, forward and backward: q, k, v (n 3) or gate, up (n 2), the
// weights joined at load (pq_dev_weights) or uploaded one by one; bias: a bitmask of the members with one
static void test_linear_group(PqDtype dt, int n, int bias, int joined, int N) {
    int C = 256, oc3[3] = {320, 64, 64}, oc2[2] = {448, 448};
    const int *oc = n == 3 ? oc3 : oc2;
    PqWeight hw[3], dw[3];
    float *b[3] = {NULL, NULL, NULL}, *db[3] = {NULL, NULL, NULL}, *out[3], *gout[3], *dy[3], *gdy[3];
    for (int t = 0; t < n; t++) {
        hw[t] = dw[t] = hweight(oc[t], C, dt, 0.1f, NULL);
        if (bias >> t & 1) b[t] = hrand(oc[t], 1), db[t] = dev(b[t], oc[t] * 4);
        out[t] = hnan((size_t)N * oc[t]), gout[t] = dnan((size_t)N * oc[t]);
        dy[t] = hrand((size_t)N * oc[t], 1), gdy[t] = dev(dy[t], (size_t)N * oc[t] * 4);
    }
    if (joined) pq_dev_weights(dw, n);
    else
        for (int t = 0; t < n; t++) dw[t] = pq_dev_weight(hw[t]);
    float *x = hrand((size_t)N * C, 1), *dx = hrand((size_t)N * C, 1);
    float *dX = dev(x, (size_t)N * C * 4), *gdx = dev(dx, (size_t)N * C * 4);
    pq_cpu_linear_group_forward(out, x, hw, (const float *const *)b, n, N, C);
    pq_linear_group_forward(gout, dX, dw, (const float *const *)db, n, N, C);
    char name[96];
    for (int t = 0; t < n; t++) {
        snprintf(name, sizeof name, "linear_group_forward %s n%d%s%s N=%d [%d]", pq_dtype_name(dt), n,
                 b[t] ? " bias" : "", joined ? " joined" : "", N, t);
        cmp(name, out[t], gout[t], (size_t)N * oc[t], prod_tol(dt));
    }
    pq_cpu_linear_group_backward(dx, (const float *const *)dy, hw, n, N, C);
    pq_linear_group_backward(gdx, (const float *const *)gdy, dw, n, N, C);
    snprintf(name, sizeof name, "linear_group_backward %s n%d%s N=%d", pq_dtype_name(dt), n, joined ? " joined" : "",
             N);
    cmp(name, dx, gdx, (size_t)N * C, prod_tol(dt));
    for (int t = 0; t < n; t++) {
        pq_dev_weight_free(&dw[t]);
        free((void *)hw[t].data), free(b[t]), free(out[t]), free(dy[t]);
        pq_dev_free(db[t]), pq_dev_free(gout[t]), pq_dev_free(gdy[t]);
    }
    free(x), free(dx), pq_dev_free(dX), pq_dev_free(gdx);
}

// activations beyond f16's range (65504) and gradients below its normals
// (6.1e-5): the f16 product must scale them into range, not overflow or flush
static void test_linear_range(PqDtype dt, int N) {
    int C = 256, OC = 192;
    PqWeight hw = hweight(OC, C, dt, 0.1f, NULL), dw = pq_dev_weight(hw);
    float *x = hrand((size_t)N * C, 3e5f), *dy = hrand((size_t)N * OC, 5e-7f);
    float *out = hnan((size_t)N * OC), *dx = pq_xcalloc((size_t)N * C, sizeof *dx);
    float *dX = dev(x, (size_t)N * C * 4), *dDY = dev(dy, (size_t)N * OC * 4);
    float *gout = dnan((size_t)N * OC), *gdx = pq_dev_alloc((size_t)N * C * 4);
    pq_cpu_linear_forward(out, x, &hw, NULL, N, C, OC);
    pq_linear_forward(gout, dX, &dw, NULL, N, C, OC);
    char name[64];
    snprintf(name, sizeof name, "linear_forward %s |x| to 3e5 N=%d", pq_dtype_name(dt), N);
    cmp(name, out, gout, (size_t)N * OC, prod_tol(dt));
    pq_cpu_linear_backward(dx, dy, &hw, N, C, OC);
    pq_linear_backward(gdx, dDY, &dw, N, C, OC);
    snprintf(name, sizeof name, "linear_backward %s |dy| to 5e-7 N=%d", pq_dtype_name(dt), N);
    cmp(name, dx, gdx, (size_t)N * C, prod_tol(dt));
    pq_dev_weight_free(&dw);
    free((void *)hw.data), free(x), free(dy), free(out), free(dx);
    pq_dev_free(dX), pq_dev_free(dDY), pq_dev_free(gout), pq_dev_free(gdx);
}

// The rows of a decoding step (N <= PQ_GEMV_MAX_N) with bf16/f16 weights run the GEMV kernel (gemv.cu), more and C
// not a multiple of 8 or an input not 16-byte aligned the tensor-core product: each against the CPU twin,
// the kernel on and off (pq_cuda_set_gemv, as PQ_GEMV=0). Mistral-7B's q_proj (4096 x 4096) and its
// gate/up and down shapes scaled down (OC 3000 x C 1024, OC 1024 x C 14336: 8 input rows are 459 KB), C past
// a multiple of 256 (lanes without a last vector), odd OC, a single output.
static void test_linear_gemv(PqDtype dt, int C, int OC) {
    static const int ns[] = {1, 2, 3, 5, 8, 9};
    int NMAX = 9;
    PqWeight hw = hweight(OC, C, dt, 0.1f, NULL), dw = pq_dev_weight(hw);
    float *x = hrand((size_t)NMAX * C + 4, 1), *b = hrand(OC, 1), *out = hnan((size_t)NMAX * OC);
    float *dX = dev(x, ((size_t)NMAX * C + 4) * 4), *dB = dev(b, OC * 4);
    for (size_t i = 0; i < sizeof ns / sizeof *ns; i++) {
        int N = ns[i], bias = (int)(i & 1);
        for (int off = 0; off < 2; off++) { // off: the input one float in (not 16-byte aligned)
            if (off && N != 3) continue;
            pq_cpu_linear_forward(out, x + off, &hw, bias ? b : NULL, N, C, OC);
            for (int on = 1; on >= 0; on--) {
                pq_cuda_set_gemv(on);
                float *gout = dnan((size_t)N * OC);
                pq_linear_forward(gout, dX + off, &dw, bias ? dB : NULL, N, C, OC);
                char name[96];
                snprintf(name, sizeof name, "linear_forward %s N=%d C=%d OC=%d%s%s%s", pq_dtype_name(dt), N, C, OC,
                         bias ? " bias" : "", off ? " unaligned" : "", on ? "" : " gemv off");
                cmp(name, out, gout, (size_t)N * OC, prod_tol(dt));
                pq_dev_free(gout);
            }
            pq_cuda_set_gemv(-1);
        }
    }
    pq_dev_weight_free(&dw);
    free((void *)hw.data), free(x), free(b), free(out);
    pq_dev_free(dX), pq_dev_free(dB);
}

// the rows of a decoding step (ops_gen.h): N = 1 and 3, odd C and OC
static void test_linear_rows(PqDtype dt, int N) {
    int C = 200, OC = 333;
    PqWeight hw = hweight(OC, C, dt, 0.1f, NULL), dw = pq_dev_weight(hw);
    float *x = hrand((size_t)N * C, 1), *b = hrand(OC, 1), *out = hnan((size_t)N * OC);
    float *dX = dev(x, (size_t)N * C * 4), *dB = dev(b, OC * 4), *gout = dnan((size_t)N * OC);
    pq_cpu_linear_rows_forward(out, x, &hw, b, N, C, OC);
    pq_linear_rows_forward(gout, dX, &dw, dB, N, C, OC);
    char name[64];
    snprintf(name, sizeof name, "linear_rows_forward %s N=%d", pq_dtype_name(dt), N);
    cmp(name, out, gout, (size_t)N * OC, prod_tol(dt));
    pq_dev_weight_free(&dw);
    free((void *)hw.data), free(x), free(b), free(out);
    pq_dev_free(dX), pq_dev_free(dB), pq_dev_free(gout);
}

// kind: the products' kernel (lib/cuda/tuning.h); TF32's 10-bit mantissas get a looser bound
static void test_lora(int with_dinp, int kind) {
    static const char *kinds[PQ_LORA_KINDS] = {"", " tf32", " lt", " sgemm_t"};
    double tol = kind == PQ_LORA_TF32 ? 1e-2 : 2e-5;
    char name[96];
    pq_cuda_set_lora_gemm(kind);
    int N = 97, C = 200, OC = 150, r = 8;
    float sc = 2.0f;
    float *x = hrand((size_t)N * C, 1), *A = hrand((size_t)r * C, 0.2f), *B = hrand((size_t)OC * r, 0.2f);
    float *out = hrand((size_t)N * OC, 1), *xa = hnan((size_t)N * r), *dy = hrand((size_t)N * OC, 1);
    float *dA = hrand((size_t)r * C, 1), *dB = hrand((size_t)OC * r, 1), *dx = hrand((size_t)N * C, 1);
    float *dxa = hnan((size_t)N * r);
    float *gx = dev(x, (size_t)N * C * 4), *gA = dev(A, (size_t)r * C * 4), *gB = dev(B, (size_t)OC * r * 4);
    float *gout = dev(out, (size_t)N * OC * 4), *gxa = dnan((size_t)N * r), *gdy = dev(dy, (size_t)N * OC * 4);
    float *gdA = dev(dA, (size_t)r * C * 4), *gdB = dev(dB, (size_t)OC * r * 4), *gdx = dev(dx, (size_t)N * C * 4);
    float *gdxa = dnan((size_t)N * r);
    pq_cpu_lora_forward(out, xa, x, A, B, sc, N, C, OC, r);
    pq_lora_forward(gout, gxa, gx, gA, gB, sc, N, C, OC, r);
    if (with_dinp) {
        snprintf(name, sizeof name, "lora_forward out%s", kinds[kind]);
        cmp(name, out, gout, (size_t)N * OC, tol);
        snprintf(name, sizeof name, "lora_forward xa%s", kinds[kind]);
        cmp(name, xa, gxa, (size_t)N * r, tol);
    }
    pq_cpu_lora_backward(with_dinp ? dx : NULL, dA, dB, dxa, dy, x, xa, A, B, sc, N, C, OC, r);
    pq_lora_backward(with_dinp ? gdx : NULL, gdA, gdB, gdxa, gdy, gx, gxa, gA, gB, sc, N, C, OC, r);
    snprintf(name, sizeof name, "lora_backward dA%s%s", with_dinp ? "" : " (no dinp)", kinds[kind]);
    cmp(name, dA, gdA, (size_t)r * C, tol);
    snprintf(name, sizeof name, "lora_backward dB%s%s", with_dinp ? "" : " (no dinp)", kinds[kind]);
    cmp(name, dB, gdB, (size_t)OC * r, tol);
    snprintf(name, sizeof name, "lora_backward dinp%s%s", with_dinp ? "" : " untouched", kinds[kind]);
    cmp(name, dx, gdx, (size_t)N * C, tol);
    free(x), free(A), free(B), free(out), free(xa), free(dy), free(dA), free(dB), free(dx), free(dxa);
    float *p[] = {gx, gA, gB, gout, gxa, gdy, gdA, gdB, gdx, gdxa};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) pq_dev_free(p[i]);
    pq_cuda_set_lora_gemm(-1);
}

// The LoRA group ops (n adapters on one input, each its own dropout mask) and the B side's ops against their
// CPU twins: row and column tiles with partial edges, ranks past the kernels' 16, dA over several row splits.
static void test_lora_group(int n, int N, int C, int OC, int r, float p) {
    size_t ne = (size_t)N * C, na = (size_t)r * C, nx = (size_t)N * r, no = (size_t)N * OC;
    uint64_t seed[4] = {11, 0xabcdef12345ULL, 0x5eed, 7};
    float *x = hrand(ne, 1), *dx = hrand(ne, 1), *gx = dev(x, ne * 4), *gdx = dev(dx, ne * 4);
    float *A[4], *xa[4], *dxa[4], *dA[4], *gA[4], *gxa[4], *gdxa[4], *gdA[4];
    for (int t = 0; t < n; t++) {
        A[t] = hrand(na, 0.2f), dxa[t] = hrand(nx, 1), dA[t] = hrand(na, 1), xa[t] = hnan(nx);
        gA[t] = dev(A[t], na * 4), gdxa[t] = dev(dxa[t], nx * 4), gdA[t] = dev(dA[t], na * 4), gxa[t] = dnan(nx);
    }
    char name[128];
    pq_cpu_lora_xa_group(xa, x, (const float *const *)A, seed, p, n, N, C, r);
    pq_lora_xa_group(gxa, gx, (const float *const *)gA, seed, p, n, N, C, r);
    pq_cpu_lora_dA_group(dA, (const float *const *)dxa, x, seed, p, n, N, C, r);
    pq_lora_dA_group(gdA, (const float *const *)gdxa, gx, seed, p, n, N, C, r);
    pq_cpu_lora_dx_group(dx, (const float *const *)dxa, (const float *const *)A, seed, p, n, N, C, r);
    pq_lora_dx_group(gdx, (const float *const *)gdxa, (const float *const *)gA, seed, p, n, N, C, r);
    for (int t = 0; t < n; t++) {
        snprintf(name, sizeof name, "lora_xa_group n=%d [%d] %dx%d r=%d p=%g", n, t, N, C, r, p);
        cmp(name, xa[t], gxa[t], nx, 2e-5);
        snprintf(name, sizeof name, "lora_dA_group n=%d [%d] %dx%d r=%d p=%g", n, t, N, C, r, p);
        cmp(name, dA[t], gdA[t], na, 5e-5);
    }
    snprintf(name, sizeof name, "lora_dx_group n=%d %dx%d r=%d p=%g", n, N, C, r, p);
    cmp(name, dx, gdx, ne, 2e-5);
    // the B side on adapter 0's xa
    float *B = hrand((size_t)OC * r, 0.2f), *out = hrand(no, 1), *dout = hrand(no, 1), *dB = hrand((size_t)OC * r, 1);
    float *gB = dev(B, (size_t)OC * r * 4), *gout = dev(out, no * 4), *gdout = dev(dout, no * 4);
    float *gdB = dev(dB, (size_t)OC * r * 4), *gxa0 = dev(xa[0], nx * 4);
    pq_cpu_lora_up_forward(out, xa[0], B, 1.5f, N, OC, r);
    pq_lora_up_forward(gout, gxa0, gB, 1.5f, N, OC, r);
    snprintf(name, sizeof name, "lora_up_forward %dx%d r=%d", N, OC, r);
    cmp(name, out, gout, no, 2e-5);
    pq_cpu_lora_up_backward(dB, dxa[0], dout, xa[0], B, 1.5f, N, OC, r);
    pq_lora_up_backward(gdB, gdxa[0], gdout, gxa0, gB, 1.5f, N, OC, r);
    snprintf(name, sizeof name, "lora_up_backward dB %dx%d r=%d", N, OC, r);
    cmp(name, dB, gdB, (size_t)OC * r, 2e-5);
    snprintf(name, sizeof name, "lora_up_backward dxa %dx%d r=%d", N, OC, r);
    cmp(name, dxa[0], gdxa[0], nx, 2e-5);
    for (int t = 0; t < n; t++) {
        free(A[t]), free(xa[t]), free(dxa[t]), free(dA[t]);
        pq_dev_free(gA[t]), pq_dev_free(gxa[t]), pq_dev_free(gdxa[t]), pq_dev_free(gdA[t]);
    }
    free(x), free(dx), free(B), free(out), free(dout), free(dB);
    float *g[] = {gx, gdx, gB, gout, gdout, gdB, gxa0};
    for (size_t i = 0; i < sizeof g / sizeof *g; i++) pq_dev_free(g[i]);
}

static void test_rope(void) {
    int lens[] = {5, 300, 1, 60}, N, NH = 6, HS = 64;
    int32_t *pos = packing(lens, 4, &N);
    float *inv = pq_xmalloc(HS / 2 * sizeof *inv);
    for (int d = 0; d < HS / 2; d++) inv[d] = 1.0f / powf(10000.0f, 2.0f * d / HS);
    size_t n = (size_t)N * NH * HS;
    float *x = hrand(n, 1);
    float *gx = dev(x, n * 4), *gpos = dev(pos, N * 4), *ginv = dev(inv, HS / 2 * 4);
    pq_cpu_rope_forward(x, pos, inv, N, NH, HS);
    pq_rope_forward(gx, (int32_t *)gpos, ginv, N, NH, HS);
    cmp("rope_forward", x, gx, n, 2e-6);
    pq_cpu_rope_backward(x, pos, inv, N, NH, HS);
    pq_rope_backward(gx, (int32_t *)gpos, ginv, N, NH, HS);
    cmp("rope_backward", x, gx, n, 2e-6);
    // q and k of GQA heads in one launch, forward then backward
    int KVH = 2;
    size_t nk = (size_t)N * KVH * HS;
    float *k = hrand(nk, 1), *gk = dev(k, nk * 4);
    pq_dev_upload(gx, x, n * 4);
    pq_cpu_rope_qk_forward(x, k, pos, inv, N, NH, KVH, HS);
    pq_rope_qk_forward(gx, gk, (int32_t *)gpos, ginv, N, NH, KVH, HS);
    cmp("rope_qk_forward q", x, gx, n, 2e-6);
    cmp("rope_qk_forward k", k, gk, nk, 2e-6);
    pq_cpu_rope_qk_backward(x, k, pos, inv, N, NH, KVH, HS);
    pq_rope_qk_backward(gx, gk, (int32_t *)gpos, ginv, N, NH, KVH, HS);
    cmp("rope_qk_backward q", x, gx, n, 2e-6);
    cmp("rope_qk_backward k", k, gk, nk, 2e-6);
    free(k), pq_dev_free(gk);
    free(pos), free(inv), free(x), pq_dev_free(gx), pq_dev_free(gpos), pq_dev_free(ginv);
}

static void test_attention(const int *lens, int nrec, int NH, int KVH, int HS, int window) {
    int N;
    int32_t *pos = packing(lens, nrec, &N);
    size_t nq = (size_t)N * NH * HS, nk = (size_t)N * KVH * HS, nl = (size_t)N * NH;
    float *q = hrand(nq, 2), *k = hrand(nk, 2), *v = hrand(nk, 1), *dout = hrand(nq, 1);
    float *out = hnan(nq), *lse = hnan(nl), *dq = hnan(nq), *dk = hnan(nk), *dv = hnan(nk);
    float *gq = dev(q, nq * 4), *gk = dev(k, nk * 4), *gv = dev(v, nk * 4), *gdout = dev(dout, nq * 4);
    int32_t *gpos = dev(pos, (size_t)N * 4);
    float *gout = dnan(nq), *glse = dnan(nl), *gdq = dnan(nq), *gdk = dnan(nk), *gdv = dnan(nk);
    pq_cpu_attention_forward(out, lse, q, k, v, pos, N, NH, KVH, HS, window);
    pq_attention_forward(gout, glse, gq, gk, gv, gpos, N, NH, KVH, HS, window);
    char name[96];
    snprintf(name, sizeof name, "attention_forward out N=%d %d/%d HS=%d w=%d", N, NH, KVH, HS, window);
    cmp(name, out, gout, nq, 1e-4);
    snprintf(name, sizeof name, "attention_forward lse N=%d %d/%d HS=%d w=%d", N, NH, KVH, HS, window);
    cmp(name, lse, glse, nl, 1e-5);
    // the backward of both from the same (CPU) forward
    float *gout_c = dev(out, nq * 4), *glse_c = dev(lse, nl * 4);
    pq_cpu_attention_backward(dq, dk, dv, dout, q, k, v, out, lse, pos, N, NH, KVH, HS, window);
    pq_attention_backward(gdq, gdk, gdv, gdout, gq, gk, gv, gout_c, glse_c, gpos, N, NH, KVH, HS, window);
    snprintf(name, sizeof name, "attention_backward dq HS=%d w=%d", HS, window);
    cmp(name, dq, gdq, nq, 1e-4);
    snprintf(name, sizeof name, "attention_backward dk HS=%d w=%d", HS, window);
    cmp(name, dk, gdk, nk, 1e-4);
    snprintf(name, sizeof name, "attention_backward dv HS=%d w=%d", HS, window);
    cmp(name, dv, gdv, nk, 1e-4);
    free(pos), free(q), free(k), free(v), free(dout), free(out), free(lse), free(dq), free(dk), free(dv);
    void *p[] = {gq, gk, gv, gdout, gpos, gout, glse, gdq, gdk, gdv, gout_c, glse_c};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) pq_dev_free(p[i]);
}

// attention over two key ranges (a pair's two responses after one shared
// prompt), a plain record after it; both forward and backward
static void test_attention2(int NH, int KVH, int HS, int window) {
    int P = 37, Cn = 21, R = 26, X = 40, N = P + Cn + R + X;
    int32_t *pos = pq_xmalloc(N * 4), *a0 = pq_xmalloc(N * 4), *a1 = pq_xmalloc(N * 4), *b0 = pq_xmalloc(N * 4);
    for (int i = 0; i < N; i++) {
        if (i < P + Cn) pos[i] = i, a0[i] = a1[i] = 0, b0[i] = 0;                 // prompt, chosen
        else if (i < P + Cn + R) pos[i] = i - Cn, a0[i] = 0, a1[i] = P, b0[i] = P + Cn; // rejected
        else pos[i] = i - (P + Cn + R), a0[i] = a1[i] = P + Cn + R, b0[i] = P + Cn + R; // another record
    }
    size_t nq = (size_t)N * NH * HS, nk = (size_t)N * KVH * HS, nl = (size_t)N * NH;
    float *q = hrand(nq, 2), *k = hrand(nk, 2), *v = hrand(nk, 1), *dout = hrand(nq, 1);
    float *out = hnan(nq), *lse = hnan(nl), *dq = hnan(nq), *dk = hnan(nk), *dv = hnan(nk);
    float *gq = dev(q, nq * 4), *gk = dev(k, nk * 4), *gv = dev(v, nk * 4), *gdout = dev(dout, nq * 4);
    int32_t *gpos = dev(pos, N * 4), *ga0 = dev(a0, N * 4), *ga1 = dev(a1, N * 4), *gb0 = dev(b0, N * 4);
    float *gout = dnan(nq), *glse = dnan(nl), *gdq = dnan(nq), *gdk = dnan(nk), *gdv = dnan(nk);
    pq_cpu_attention2_forward(out, lse, q, k, v, pos, a0, a1, b0, N, NH, KVH, HS, window);
    pq_attention2_forward(gout, glse, gq, gk, gv, gpos, ga0, ga1, gb0, N, NH, KVH, HS, window);
    char name[96];
    snprintf(name, sizeof name, "attention2_forward out %d/%d HS=%d w=%d", NH, KVH, HS, window);
    cmp(name, out, gout, nq, 1e-4);
    snprintf(name, sizeof name, "attention2_forward lse %d/%d HS=%d w=%d", NH, KVH, HS, window);
    cmp(name, lse, glse, nl, 1e-5);
    float *gout_c = dev(out, nq * 4), *glse_c = dev(lse, nl * 4);
    pq_cpu_attention2_backward(dq, dk, dv, dout, q, k, v, out, lse, pos, a0, a1, b0, N, NH, KVH, HS, window);
    pq_attention2_backward(gdq, gdk, gdv, gdout, gq, gk, gv, gout_c, glse_c, gpos, ga0, ga1, gb0, N, NH, KVH, HS,
                           window);
    snprintf(name, sizeof name, "attention2_backward dq HS=%d w=%d", HS, window);
    cmp(name, dq, gdq, nq, 1e-4);
    snprintf(name, sizeof name, "attention2_backward dk HS=%d w=%d", HS, window);
    cmp(name, dk, gdk, nk, 1e-4);
    snprintf(name, sizeof name, "attention2_backward dv HS=%d w=%d", HS, window);
    cmp(name, dv, gdv, nk, 1e-4);
    free(pos), free(a0), free(a1), free(b0), free(q), free(k), free(v), free(dout), free(out), free(lse), free(dq),
        free(dk), free(dv);
    void *p[] = {gq, gk, gv, gdout, gpos, ga0, ga1, gb0, gout, glse, gdq, gdk, gdv, gout_c, glse_c};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) pq_dev_free(p[i]);
}

static void test_elementwise(void) {
    int N = 131, H = 517;
    size_t n = (size_t)N * H;
    float *g = hrand(n, 6), *u = hrand(n, 2), *dy = hrand(n, 1);
    float *out = hnan(n), *dg = hnan(n), *du = hnan(n);
    float *gg = dev(g, n * 4), *gu = dev(u, n * 4), *gdy = dev(dy, n * 4);
    float *gout = dnan(n), *gdg = dnan(n), *gdu = dnan(n);
    pq_cpu_swiglu_forward(out, g, u, N, H);
    pq_swiglu_forward(gout, gg, gu, N, H);
    cmp("swiglu_forward", out, gout, n, 1e-6);
    pq_cpu_swiglu_backward(dg, du, dy, g, u, N, H);
    pq_swiglu_backward(gdg, gdu, gdy, gg, gu, N, H);
    cmp("swiglu_backward dgate", dg, gdg, n, 1e-6);
    cmp("swiglu_backward dup", du, gdu, n, 1e-6);
    pq_cpu_residual_forward(g, u, n);
    pq_residual_forward(gg, gu, n);
    cmp("residual_forward", g, gg, n, 0);
    // dropout: the same mask bit for bit
    pq_cpu_dropout_forward(out, u, 0.1f, 12345, n);
    pq_dropout_forward(gout, gu, 0.1f, 12345, n);
    cmp("dropout_forward p=0.1", out, gout, n, 0);
    pq_cpu_dropout_forward(out, u, 0.5f, 0xdeadbeefcafeULL, n);
    pq_dropout_forward(gout, gu, 0.5f, 0xdeadbeefcafeULL, n);
    cmp("dropout_forward p=0.5", out, gout, n, 0);
    // LoRA's input gradient through dropout, in one pass: blocks of rows and columns with partial edges,
    // ranks below, at and above the kernel's 16-row chunk of A, and no dropout
    int shapes[][4] = {{N, H, 16, 10}, {37, 300, 5, 30}, {20, 77, 40, 0}};
    for (int s = 0; s < 3; s++) {
        int n2 = shapes[s][0], c2 = shapes[s][1], r2 = shapes[s][2];
        float pd = (float)shapes[s][3] / 100;
        size_t ne = (size_t)n2 * c2;
        float *dxa = hrand((size_t)n2 * r2, 1), *A = hrand((size_t)r2 * c2, 1), *dx = hrand(ne, 1);
        float *gdxa = dev(dxa, (size_t)n2 * r2 * 4), *gA = dev(A, (size_t)r2 * c2 * 4), *gdx = dev(dx, ne * 4);
        pq_cpu_lora_dx_dropout(dx, dxa, A, pd, 777 + s, n2, c2, r2);
        pq_lora_dx_dropout(gdx, gdxa, gA, pd, 777 + s, n2, c2, r2);
        char nm[96];
        snprintf(nm, sizeof nm, "lora_dx_dropout %dx%d r=%d p=%g", n2, c2, r2, pd);
        cmp(nm, dx, gdx, ne, 1e-5);
        free(dxa), free(A), free(dx);
        pq_dev_free(gdxa), pq_dev_free(gA), pq_dev_free(gdx);
    }
    free(g), free(u), free(dy), free(out), free(dg), free(du);
    void *p[] = {gg, gu, gdy, gout, gdg, gdu};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) pq_dev_free(p[i]);
}

static void test_logp(PqDtype dt, const char *chunk) {
    if (chunk) setenv("PQ_CUDA_VOCAB_CHUNK", chunk, 1);
    else unsetenv("PQ_CUDA_VOCAB_CHUNK");
    int N = 150, C = 128, V = 5003;
    PqWeight hw = hweight(V, C, dt, 0.5f, NULL), dw = pq_dev_weight(hw);
    float *h = hrand((size_t)N * C, 1), *dl = hrand(N, 1), *dh = hrand((size_t)N * C, 1);
    int32_t *tg = pq_xmalloc(N * sizeof *tg);
    for (int i = 0; i < N; i++) tg[i] = i % 7 == 3 ? -1 : (int32_t)(rnd() % V);
    tg[1] = 0, tg[2] = V - 1, dl[5] = 0;
    int vc = chunk ? atoi(chunk) : 0; // targets on both sides of chunk boundaries
    if (vc > 0 && vc < V) tg[4] = vc - 1, tg[6] = vc, tg[8] = (V - 1) / vc * vc, tg[9] = (V - 1) / vc * vc - 1;
    float *lp = hnan(N), *lse = hnan(N);
    float *gh = dev(h, (size_t)N * C * 4), *gdl = dev(dl, N * 4), *gdh = dev(dh, (size_t)N * C * 4);
    int32_t *gtg = dev(tg, N * 4);
    float *glp = dnan(N), *glse = dnan(N);
    pq_cpu_logp_forward(lp, lse, h, &hw, tg, N, C, V);
    pq_logp_forward(glp, glse, gh, &dw, gtg, N, C, V);
    char name[64];
    double tol = dt == PQ_F32 ? 2e-5 : 5e-3;
    snprintf(name, sizeof name, "logp_forward logp %s chunk %s", pq_dtype_name(dt), chunk ? chunk : "auto");
    cmp(name, lp, glp, N, tol);
    snprintf(name, sizeof name, "logp_forward lse %s chunk %s", pq_dtype_name(dt), chunk ? chunk : "auto");
    cmp(name, lse, glse, N, tol);
    float *glp2 = dnan(N); // lse NULL, as pq_model_logp calls it
    pq_logp_forward(glp2, NULL, gh, &dw, gtg, N, C, V);
    snprintf(name, sizeof name, "logp_forward lse NULL %s chunk %s", pq_dtype_name(dt), chunk ? chunk : "auto");
    cmp(name, lp, glp2, N, tol);
    pq_dev_free(glp2);
    float *glse_c = dev(lse, N * 4);
    pq_cpu_logp_backward(dh, dl, h, &hw, tg, lse, N, C, V);
    pq_logp_backward(gdh, gdl, gh, &dw, gtg, glse_c, N, C, V);
    snprintf(name, sizeof name, "logp_backward %s chunk %s", pq_dtype_name(dt), chunk ? chunk : "auto");
    cmp(name, dh, gdh, (size_t)N * C, dt == PQ_F32 ? 2e-5 : 1.5e-2);
    pq_dev_weight_free(&dw);
    free((void *)hw.data), free(h), free(dl), free(dh), free(tg), free(lp), free(lse);
    void *p[] = {gh, gdl, gdh, gtg, glp, glse, glse_c};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) pq_dev_free(p[i]);
    unsetenv("PQ_CUDA_VOCAB_CHUNK");
}

static void test_memory(void) {
    size_t n = 1000;
    float *d = pq_dev_alloc(n * 4), *h = hrand(n, 1), zero[1000] = {0};
    cmp("dev_alloc is zeroed", zero, d, n, 0);
    pq_dev_upload(d, h, n * 4);
    float *e = pq_dev_alloc(n * 4);
    pq_dev_copy(e, d, n * 4);
    cmp("dev_upload + dev_copy", h, e, n, 0);
    pq_dev_zero(e, n * 4);
    cmp("dev_zero", zero, e, n, 0);
    free(h), pq_dev_free(d), pq_dev_free(e);
}

// KV cache: a prefill of three slots, then one decode step each, windowed or not
static void test_gen(int window) {
    int S = 3, T = 80, NH = 4, KVH = 2, HS = 64, lens[] = {40, 1, 63};
    size_t kd = (size_t)KVH * HS, cache = (size_t)S * T * kd;
    float *kc = pq_xcalloc(cache, 4), *vc = pq_xcalloc(cache, 4);
    float *gkc = pq_dev_alloc(cache * 4), *gvc = pq_dev_alloc(cache * 4);
    for (int step = 0; step < 2; step++) {
        int N = 0;
        for (int s = 0; s < S; s++) N += step ? 1 : lens[s];
        int32_t *slot = pq_xmalloc(N * 4), *pos = pq_xmalloc(N * 4);
        int k = 0;
        for (int s = 0; s < S; s++)
            for (int i = 0; i < (step ? 1 : lens[s]); i++, k++) slot[k] = s, pos[k] = step ? lens[s] : i;
        size_t nq = (size_t)N * NH * HS, nk = (size_t)N * kd;
        float *q = hrand(nq, 2), *kk = hrand(nk, 2), *vv = hrand(nk, 1), *out = hnan(nq);
        float *gq = dev(q, nq * 4), *gk = dev(kk, nk * 4), *gv = dev(vv, nk * 4), *gout = dnan(nq);
        int32_t *gslot = dev(slot, N * 4), *gpos = dev(pos, N * 4);
        pq_cpu_kv_append(kc, vc, kk, vv, slot, pos, N, KVH, HS, T);
        pq_kv_append(gkc, gvc, gk, gv, gslot, gpos, N, KVH, HS, T);
        cmp(step ? "kv_append k (decode)" : "kv_append k (prefill)", kc, gkc, cache, 0);
        cmp(step ? "kv_append v (decode)" : "kv_append v (prefill)", vc, gvc, cache, 0);
        pq_cpu_attention_kv_forward(out, q, kc, vc, slot, pos, N, NH, KVH, HS, T, window);
        pq_attention_kv_forward(gout, gq, gkc, gvc, gslot, gpos, N, NH, KVH, HS, T, window);
        char name[64];
        snprintf(name, sizeof name, "attention_kv_forward %s w=%d", step ? "decode" : "prefill", window);
        cmp(name, out, gout, nq, 1e-4);
        free(slot), free(pos), free(q), free(kk), free(vv), free(out);
        void *p[] = {gq, gk, gv, gout, gslot, gpos};
        for (size_t i = 0; i < sizeof p / sizeof *p; i++) pq_dev_free(p[i]);
    }
    free(kc), free(vc), pq_dev_free(gkc), pq_dev_free(gvc);
}

// Groups of checks, each runnable alone (scripts/gpu-check reruns them one
// by one when a run dies, so one crash does not hide the others' results).
static void g_memory(void) { test_memory(); }
static void g_embedding(void) {
    test_embedding(PQ_F32);
    test_embedding(PQ_BF16);
    test_embedding(PQ_F16);
}
static void g_rmsnorm(void) {
    test_rmsnorm(67, 4096);
    test_rmsnorm(5, 100);
    test_residual_rmsnorm(67, 4096);
    test_residual_rmsnorm(5, 100);
}
static void g_qk_norm(void) { // Qwen3: 0.6B's 16 x 128 and 8 x 128, a tiny model's 24, an odd width
    test_qk_norm(70, 16, 128);
    test_qk_norm(70, 8, 128);
    test_qk_norm(41, 4, 24);
    test_qk_norm(9, 3, 80);
}
static void g_linear(void) {
    for (int b = 0; b < 2; b++) {
        test_linear(PQ_F32, b);
        test_linear(PQ_BF16, b);
        test_linear(PQ_F16, b);
    }
    for (int k = 0; k < 2; k++) { // many rows (the tensor-core product) and a decoding step's (the GEMV kernel)
        int N = k ? 4 : 64;
        test_linear_range(PQ_BF16, N);
        test_linear_range(PQ_F16, N);
    }
    for (int k = 0; k < 3; k++) { // N: a training batch's rows, then a decoding step's 1 and 5 (the GEMV kernel)
        int N = k == 0 ? 133 : k == 1 ? 1 : 5;
        for (int j = 0; j < 2; j++) { // q, k, v: every member biased (Qwen2), none, and only some
            test_linear_group(PQ_F32, 3, 7, j, N);
            test_linear_group(PQ_BF16, 3, j ? 7 : 0, j, N);
            test_linear_group(PQ_F16, 3, 7, j, N);
            test_linear_group(PQ_BF16, 3, 5, j, N);
        }
        for (int j = 0; j < 2; j++) { // gate, up
            test_linear_group(PQ_F32, 2, 0, j, N);
            test_linear_group(PQ_BF16, 2, 0, j, N);
            test_linear_group(PQ_F16, 2, j ? 2 : 0, j, N);
        }
    }
    for (int d = 0; d < 2; d++) {
        PqDtype dt = d ? PQ_F16 : PQ_BF16;
        test_linear_gemv(dt, 4096, 4096);
        test_linear_gemv(dt, 1024, 3000);
        test_linear_gemv(dt, 14336, 1024);
        test_linear_gemv(dt, 1000, 333);
        test_linear_gemv(dt, 200, 1);
        test_linear_gemv(dt, 100, 77); // C not a multiple of 8: the tensor-core product
    }
    for (int n = 1; n <= 3; n += 2) {
        test_linear_rows(PQ_F32, n);
        test_linear_rows(PQ_BF16, n);
        test_linear_rows(PQ_F16, n);
    }
}
static void g_lora(void) {
    for (int kind = PQ_LORA_SGEMM; kind < PQ_LORA_KINDS; kind++) { // each PQ_LORA_GEMM
        test_lora(1, kind);
        test_lora(0, kind);
    }
    for (int n = 1; n <= 4; n++) {
        test_lora_group(n, 97, 200, 150, 8, 0.1f);
        test_lora_group(n, 37, 300, 70, 40, 0.3f); // r past 16: two and a half chunks
        test_lora_group(n, 20, 77, 33, 5, 0.0f);   // no dropout
    }
    test_lora_group(3, 1000, 1030, 300, 16, 0.05f); // dA over several row splits, partial column tiles
    test_lora_group(2, 513, 3000, 64, 16, 0.05f);
}
static void g_rope(void) { test_rope(); }
static void g_attention(void) {
    int lens1[] = {1, 37, 100, 64, 5}, lens2[] = {200}, lens3[] = {33, 31, 2, 90};
    int hs[] = {16, 32, 64, 80, 128, 256};
    for (size_t i = 0; i < sizeof hs / sizeof *hs; i++) test_attention(lens1, 5, 8, 2, hs[i], 0);
    test_attention(lens1, 5, 4, 4, 64, 17);
    test_attention(lens2, 1, 8, 1, 128, 40);
    test_attention(lens3, 4, 6, 3, 48, 0);
    test_attention(lens3, 4, 6, 2, 128, 32);
}
static void g_attention2(void) {
    if (pq_attention2_forward && pq_attention2_backward) {
        test_attention2(8, 2, 64, 0);
        test_attention2(4, 4, 128, 0);
        test_attention2(6, 3, 32, 30);
    } else {
        printf("FAIL attention2 missing from the CUDA backend\n");
        failures++;
    }
}
static void g_elementwise(void) { test_elementwise(); }
static void g_logp(void) {
    test_logp(PQ_F32, NULL);
    test_logp(PQ_F32, "1000");
    test_logp(PQ_BF16, NULL);
    test_logp(PQ_BF16, "777");
    test_logp(PQ_F16, "2048");
}
static void g_gen(void) {
    test_gen(0);
    test_gen(9);
}

static const GtGroup groups[] = {
    {"memory", g_memory}, {"embedding", g_embedding}, {"rmsnorm", g_rmsnorm},       {"qk_norm", g_qk_norm},
    {"linear", g_linear},
    {"lora", g_lora},     {"rope", g_rope},           {"attention", g_attention}, {"attention2", g_attention2},
    {"elementwise", g_elementwise}, {"logp", g_logp}, {"gen", g_gen},
};
enum { NGROUPS = sizeof groups / sizeof *groups };

int main(int argc, char **argv) {
    pq_rng_seed(&gt_rng, 0x9e3779b97f4a7c15ULL);
    int want[NGROUPS], rc = gt_args(argc, argv, "parity-ops", groups, NGROUPS, want);
    if (rc >= 0) return rc;
    for (int k = 0; k < NGROUPS; k++)
        if (want[k]) groups[k].run();
    printf("%d of %d checks failed\n", failures, checks);
    return failures ? 1 : 0;
}
