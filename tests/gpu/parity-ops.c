// parity-ops.c: every op of the CUDA backend (pq_*) against the CPU oracle
// (pq_cpu_*) in f32 activation storage, on fresh random inputs, device
// outputs poisoned with NaN before each run, with tolerances per precision
// (f32 and bf16/f16 products). The checks parity-act.c runs again in bf16
// storage are parity_ops.h's; here also what has no bf16 path (memory, the
// rows of a decoding step, the KV cache) or only f32 storage's shapes.
// Built only with CUDA=1; run by scripts/gpu-check. Exits 1 on any mismatch.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/tuning.h"
#include "gpu_test.h"
#include "ops_gen.h"
#include "ops_grad.h"
#include "parity_ops.h"
#include "st_write.h"
#include "util.h"

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
    fcmp(name, out, gout, (size_t)N * OC, prod_tol(dt));
    pq_cpu_linear_backward(dx, dy, &hw, N, C, OC);
    pq_linear_backward(gdx, dDY, &dw, N, C, OC);
    snprintf(name, sizeof name, "linear_backward %s |dy| to 5e-7 N=%d", pq_dtype_name(dt), N);
    fcmp(name, dx, gdx, (size_t)N * C, prod_tol(dt));
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
                fcmp(name, out, gout, (size_t)N * OC, prod_tol(dt));
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
    fcmp(name, out, gout, (size_t)N * OC, prod_tol(dt));
    pq_dev_weight_free(&dw);
    free((void *)hw.data), free(x), free(b), free(out);
    pq_dev_free(dX), pq_dev_free(dB), pq_dev_free(gout);
}

// A decoding step's fusions (ops_gen.h, PQ_DECODE_FUSE): q, k, v as one product (every member biased, as
// Qwen2's, or none), gate and up with SwiGLU, o_proj added to the residual stream, the whole MLP added to it,
// each against the CPU's compositions, the fusions on (with PQ_PDL's launches too) and off: N = 1 (one GEMV
// launch each), 3 and 64 (the group through the tensor-core product; without biases, o_proj added by its own
// epilogue and the MLP's bf16 chain), the input one float in (not 16-byte aligned: no GEMV). Mistral-7B's
// shapes scaled down: C 1024, k and v 256 wide, H 2816 (OC past a multiple of GEMV_WARPS's rows), and a C past
// 256's multiples. The products run back to back, so with PDL each one's start overlaps the one before.
static void test_decode_fused(PqDtype dt, int C, int KV, int H, int N, int off, int bias) {
    LayerW lw = layer_w(dt, C, KV, H, bias);
    const int *oc = lw.oc;
    PqWeight *hw = lw.hw, *dw = lw.dw, hg = lw.hg, hu = lw.hu, ho = lw.ho, hd = lw.hd;
    PqWeight dg = lw.dg, du = lw.du, dwo = lw.dwo, dd = lw.dd;
    float **b = lw.b, **db = lw.db, *out[3];
    for (int t = 0; t < 3; t++) out[t] = hnan((size_t)N * oc[t]);
    size_t nx = (size_t)N * C, nh = (size_t)N * H;
    float *x = hrand(nx + 4, 1), *res = hrand(nx, 2), *gX = dev(x, (nx + 4) * 4);
    float *mlp = hnan(nh), *gate = hnan(nh), *up = hnan(nh), *tmp = hnan(nx), *xr = pq_xmalloc(nx * 4);
    memcpy(xr, res, nx * 4);
    pq_cpu_linear_rows_group_forward(out, x + off, hw, (const float *const *)b, 3, N, C);
    const float *bgu = lw.bgu, *dbgu = lw.dbgu;
    pq_cpu_gate_up_forward(mlp, gate, up, x + off, &hg, &hu, bgu, bgu, N, C, H);
    pq_cpu_linear_rows_add_forward(xr, tmp, x + off, &ho, b[0], N, C, C);
    // the whole MLP into the residual stream (its biases: none, or gate's and up's where H = C)
    float *xm = pq_xmalloc(nx * 4), *mlp2 = hnan(nh);
    memcpy(xm, res, nx * 4);
    pq_cpu_mlp_forward(xm, tmp, gate, up, mlp2, x + off, &hg, &hu, &hd, bgu, bgu, NULL, N, C, H);
    // and q, k, v of an RMSNorm computed just before, into a buffer poisoned with NaN: a product that read its
    // input before the kernel before had written it (PDL's wait misplaced) would give NaN
    float *nw = hrand(C, 1), *ln = hnan(nx), *nout[3], *gnw = dev(nw, C * 4);
    for (int t = 0; t < 3; t++) nout[t] = hnan((size_t)N * oc[t]);
    pq_cpu_rmsnorm_forward(ln, NULL, x + off, nw, N, C, 1e-5f);
    pq_cpu_linear_rows_group_forward(nout, ln, hw, (const float *const *)b, 3, N, C);
    for (int on = 2; on >= 0; on--) { // 2: fused, the GEMV launched as a programmatic dependent (PQ_PDL)
        pq_cuda_set_decode_fuse(on > 0);
        pq_cuda_set_pdl(on == 2);
        float *gout[3], *gmlp = dnan(nh), *ggate = dnan(nh), *gup = dnan(nh), *gtmp = dnan(nx);
        float *gres = dev(res, nx * 4);
        for (int t = 0; t < 3; t++) gout[t] = dnan((size_t)N * oc[t]);
        pq_linear_rows_group_forward(gout, gX + off, dw, (const float *const *)db, 3, N, C);
        pq_gate_up_forward(gmlp, ggate, gup, gX + off, &dg, &du, dbgu, dbgu, N, C, H);
        pq_linear_rows_add_forward(gres, gtmp, gX + off, &dwo, db[0], N, C, C);
        char name[112], what[64];
        snprintf(what, sizeof what, "%s C=%d N=%d%s%s%s", pq_dtype_name(dt), C, N, bias ? " bias" : "",
                 off ? " unaligned" : "", on == 2 ? " fused, PDL" : on ? " fused" : "");
        for (int t = 0; t < 3; t++) {
            snprintf(name, sizeof name, "linear_rows_group_forward %s [%d]", what, t);
            fcmp(name, out[t], gout[t], (size_t)N * oc[t], prod_tol(dt));
        }
        snprintf(name, sizeof name, "gate_up_forward %s H=%d", what, H);
        fcmp(name, mlp, gmlp, nh, prod_tol(dt));
        snprintf(name, sizeof name, "linear_rows_add_forward %s", what);
        fcmp(name, xr, gres, nx, prod_tol(dt));
        float *gxm = dev(res, nx * 4);
        pq_mlp_forward(gxm, gtmp, ggate, gup, gmlp, gX + off, &dg, &du, &dd, dbgu, dbgu, NULL, N, C, H);
        snprintf(name, sizeof name, "mlp_forward %s H=%d", what, H);
        fcmp(name, xm, gxm, nx, prod_tol(dt));
        pq_dev_free(gxm);
        float *gln = dnan(nx);
        pq_rmsnorm_forward(gln, NULL, gX + off, gnw, N, C, 1e-5f);
        pq_linear_rows_group_forward(gout, gln, dw, (const float *const *)db, 3, N, C);
        for (int t = 0; t < 3; t++) {
            snprintf(name, sizeof name, "rmsnorm, then linear_rows_group_forward %s [%d]", what, t);
            fcmp(name, nout[t], gout[t], (size_t)N * oc[t], prod_tol(dt));
        }
        pq_dev_free(gln);
        for (int t = 0; t < 3; t++) pq_dev_free(gout[t]);
        DEV_FREE(gmlp, ggate, gup, gtmp, gres);
    }
    pq_cuda_set_decode_fuse(-1);
    pq_cuda_set_pdl(-1);
    for (int t = 0; t < 3; t++) free(out[t]);
    layer_w_free(&lw);
    free(x), free(res), free(mlp), free(gate), free(up), free(tmp), free(xr), free(nw), free(ln), free(xm), free(mlp2);
    for (int t = 0; t < 3; t++) free(nout[t]);
    pq_dev_free(gX), pq_dev_free(gnw);
}

static void test_memory(void) {
    size_t n = 1000;
    float *d = pq_dev_alloc(n * 4), *h = hrand(n, 1), zero[1000] = {0};
    fcmp("dev_alloc is zeroed", zero, d, n, 0);
    pq_dev_upload(d, h, n * 4);
    float *e = pq_dev_alloc(n * 4);
    pq_dev_copy(e, d, n * 4);
    fcmp("dev_upload + dev_copy", h, e, n, 0);
    pq_dev_zero(e, n * 4);
    fcmp("dev_zero", zero, e, n, 0);
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
        fcmp(step ? "kv_append k (decode)" : "kv_append k (prefill)", kc, gkc, cache, 0);
        fcmp(step ? "kv_append v (decode)" : "kv_append v (prefill)", vc, gvc, cache, 0);
        pq_cpu_attention_kv_forward(out, q, kc, vc, slot, pos, N, NH, KVH, HS, T, window);
        pq_attention_kv_forward(gout, gq, gkc, gvc, gslot, gpos, N, NH, KVH, HS, T, window);
        char name[64];
        snprintf(name, sizeof name, "attention_kv_forward %s w=%d", step ? "decode" : "prefill", window);
        fcmp(name, out, gout, nq, 1e-4);
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
        test_linear(PQ_F32, b, 133, 256, 320, 0);
        test_linear(PQ_BF16, b, 133, 256, 320, 0);
        test_linear(PQ_F16, b, 133, 256, 320, 0);
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
static void g_fused(void) {
    for (int d = 0; d < 2; d++) {
        PqDtype dt = d ? PQ_F16 : PQ_BF16;
        test_decode_fused(dt, 1024, 256, 2816, 1, 0, 0);
        test_decode_fused(dt, 1024, 256, 2816, 1, 0, 1);
        test_decode_fused(dt, 1024, 256, 1024, 3, 0, 1);
        test_decode_fused(dt, 1024, 256, 2816, 64, 0, 0); // bf16: the MLP's bf16 chain, o_proj by its epilogue
        test_decode_fused(dt, 1024, 256, 1024, 64, 0, 1);
        test_decode_fused(dt, 1032, 128, 700, 1, 1, 0);
        test_decode_fused(dt, 1032, 128, 700, 1, 0, 1);
    }
    test_decode_fused(PQ_F32, 256, 64, 300, 1, 0, 1); // f32 weights: never the GEMV kernel
}
static void g_lora(void) {
    for (int kind = PQ_LORA_SGEMM; kind < PQ_LORA_KINDS; kind++) { // each PQ_LORA_GEMM
        test_lora(1, kind, 97, 200, 150, 8);
        test_lora(0, kind, 97, 200, 150, 8);
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
    for (size_t i = 0; i < sizeof hs / sizeof *hs; i++) run_attention(lens1, 5, 8, 2, hs[i], 0, 0);
    run_attention(lens1, 5, 4, 4, 64, 17, 0);
    run_attention(lens2, 1, 8, 1, 128, 40, 0);
    run_attention(lens3, 4, 6, 3, 48, 0, 0);
    run_attention(lens3, 4, 6, 2, 128, 32, 0);
}
static void g_attention2(void) {
    if (pq_attention2_forward && pq_attention2_backward) {
        run_attention2(8, 2, 64, 0);
        run_attention2(4, 4, 128, 0);
        run_attention2(6, 3, 32, 30);
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
    {"linear", g_linear}, {"fused", g_fused},
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
