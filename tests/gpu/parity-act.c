// parity-act.c: every op of the CUDA backend with bf16 activation storage
// (ops.h's PQ_ACTIVATIONS=bf16) against the CPU oracle as the contract
// states it: parity_ops.h's checks, which parity-ops.c runs in f32 storage,
// on the shapes of bf16's paths, at bf16's tolerances (parity_ops.h says
// them). Native paths and the widening fallback (f16/f32 weights,
// attention's tensor-core and f32 paths) are both exercised; group switch
// runs some of them again after switching to f32 storage and back; group gen
// runs generation's products and fusions (ops_gen.h) in bf16 storage. Built
// only with CUDA=1; run by scripts/gpu-check like every parity-* program.
// Exits 1 on any mismatch.
#include <stdio.h>

#include "cuda/tuning.h"
#include "gpu_test.h"
#include "ops_gen.h"
#include "ops_grad.h"
#include "parity_ops.h"

// ---- groups, each runnable alone (scripts/gpu-check reruns them one by one when a run dies) ----

static void g_embedding(void) {
    test_embedding(PQ_BF16);
    test_embedding(PQ_F16);
    test_embedding(PQ_F32);
}
static void g_rmsnorm(void) {
    test_rmsnorm(67, 4096);
    test_rmsnorm(5, 100);
    test_residual_rmsnorm(67, 4096);
    test_residual_rmsnorm(5, 100);
}
static void g_qk_norm(void) { // Qwen3: 16 x 128 and 8 x 128, a tiny model's 24, an odd width
    test_qk_norm(70, 16, 128);
    test_qk_norm(70, 8, 128);
    test_qk_norm(41, 4, 24);
    test_qk_norm(9, 3, 80);
}
static void g_linear(void) {
    // bf16 weights: a training batch, a single row, odd widths (cuBLASLt may refuse: GemmEx, or the bias by
    // the scratch kernel); f16 and f32 weights through the fallback
    int shapes[][3] = {{133, 256, 320}, {1, 256, 320}, {5, 100, 77}, {64, 1024, 24}};
    for (int s = 0; s < 4; s++)
        for (int b = 0; b < 2; b++) test_linear(PQ_BF16, b, shapes[s][0], shapes[s][1], shapes[s][2], 0);
    for (int b = 0; b < 2; b++) {
        test_linear(PQ_BF16, b, 133, 256, 320, 1); // cuBLASLt refuses: GemmEx, bias_narrow
        test_linear(PQ_BF16, b, 5, 100, 77, 3);
        test_linear(PQ_F16, b, 133, 256, 320, 0);
        test_linear(PQ_F32, b, 133, 256, 320, 0);
    }
    for (int k = 0; k < 2; k++) {
        int N = k ? 1 : 133;
        for (int j = 0; j < 2; j++) { // q, k, v: every member biased (Qwen2), none, some
            test_linear_group(PQ_BF16, 3, 7, j, N);
            test_linear_group(PQ_BF16, 3, 0, j, N);
            test_linear_group(PQ_BF16, 3, 5, j, N);
            test_linear_group(PQ_F16, 3, 7, j, N);
            test_linear_group(PQ_BF16, 2, 0, j, N); // gate, up
            test_linear_group(PQ_F16, 2, 0, j, N);
        }
    }
}
static void g_lora(void) {
    for (int kind = PQ_LORA_SGEMM; kind < PQ_LORA_KINDS; kind++) {
        test_lora(1, kind, 97, 200, 150, 8);
        test_lora(0, kind, 97, 200, 150, 8);
    }
    test_lora(1, PQ_LORA_SGEMM, 37, 77, 33, 5);     // leading dimensions cuBLASLt may refuse: cublasGemmEx
    test_lora(1, PQ_LORA_SGEMM, 1000, 1024, 512, 16); // shapes of tensor-core tiles
    for (int n = 1; n <= 4; n++) {
        test_lora_group(n, 97, 200, 150, 8, 0.1f);
        test_lora_group(n, 37, 300, 70, 40, 0.3f);
        test_lora_group(n, 20, 77, 33, 5, 0.0f);
    }
    test_lora_group(3, 1000, 1030, 300, 16, 0.05f);
}
static void g_rope(void) { test_rope(); }
static void g_elementwise(void) { test_elementwise(); }
static void g_attention(void) {
    int lens1[] = {1, 37, 100, 64, 5}, lens2[] = {200}, lens3[] = {33, 31, 2, 90};
    int hs[] = {16, 64, 80, 128, 256};
    for (size_t i = 0; i < sizeof hs / sizeof *hs; i++) run_attention(lens1, 5, 8, 2, hs[i], 0, 0); // GQA 4:1
    run_attention(lens1, 5, 4, 4, 64, 17, 0);  // window
    run_attention(lens2, 1, 8, 1, 128, 40, 0); // one record, MQA, window
    run_attention(lens3, 4, 6, 3, 48, 0, 0);
    run_attention(lens3, 4, 6, 2, 128, 32, 1); // q not 16-byte aligned
    run_attention(lens3, 4, 4, 2, 20, 0, 0);   // a head size cuDNN's plan refuses: the fallback
}
static void g_attention2(void) {
    if (!pq_attention2_forward || !pq_attention2_backward) {
        printf("FAIL attention2 missing from the CUDA backend\n");
        failures++;
        return;
    }
    run_attention2(8, 2, 64, 0);
    run_attention2(4, 4, 128, 0);
    run_attention2(6, 3, 32, 30);
}
static void g_logp(void) {
    test_logp(PQ_BF16, NULL);
    test_logp(PQ_BF16, "777");
    test_logp(PQ_F16, "2048");
}

// ---- generation in bf16 storage (ops_gen.h: PQ_ACTIVATIONS=bf16 in pq-summarize) ----

// oracle: out (N,OC) = rb(inp x W^T + bias), the storage's rounding of linear_rows_forward
static void rows_oracle(float *out, const float *inp, const PqWeight *w, const float *bias, int N, int C, int OC) {
    pq_cpu_linear_rows_forward(out, inp, w, bias, N, C, OC);
    round_act(out, (size_t)N * OC);
}

// A decoding step's fusions in bf16 storage, the fused GEMV launches (PQ_DECODE_FUSE, with PQ_PDL too) and the
// compositions, against the oracle's compositions rounded where their ops round: q, k, v (each product rounded
// once), gate and up (each rounded, then SwiGLU of the rounded pair, rounded), a product added to the residual
// stream (the product rounded, then the sum), the whole MLP; and the LM head from a bf16 input into f32 logits.
// N 1 and 3: the GEMV reading bf16 (every launch of gemv.cu's bf16 path); 64: the products; unaligned input
// (one element in): never the GEMV. Besides the tolerance, 99% of the elements must round alike (same_share).
static void test_gen_fused(int C, int KV, int H, int N, int off, int bias) {
    PqDtype dt = PQ_BF16;
    LayerW lw = layer_w(dt, C, KV, H, bias);
    const int *oc = lw.oc;
    PqWeight hl = hweight(1000, C, dt, 0.1f, NULL), dl = pq_dev_weight(hl);
    float *out[3];
    for (int t = 0; t < 3; t++) out[t] = hnan((size_t)N * oc[t]);
    size_t nx = (size_t)N * C, nh = (size_t)N * H;
    float *xh = brand(nx + off, 1), *x = xh + off, *res = brand(nx, 2), *gXb = bdev(xh, nx + off);
    const float *gX = pq_act_at_c(gXb, off);
    float *gate = hnan(nh), *up = hnan(nh), *mlp = hnan(nh), *tmp = hnan(nx), *xr = pq_xmalloc(nx * 4);
    float *down = hnan(nx), *xm = pq_xmalloc(nx * 4), *logits = hnan((size_t)N * 1000);
    for (int t = 0; t < 3; t++) rows_oracle(out[t], x, &lw.hw[t], lw.b[t], N, C, oc[t]);
    rows_oracle(gate, x, &lw.hg, lw.bgu, N, C, H);
    rows_oracle(up, x, &lw.hu, lw.bgu, N, C, H);
    pq_cpu_swiglu_forward(mlp, gate, up, N, H);
    round_act(mlp, nh);
    rows_oracle(tmp, x, &lw.ho, lw.b[0], N, C, C);
    memcpy(xr, res, nx * 4);
    pq_cpu_residual_forward(xr, tmp, nx);
    round_act(xr, nx);
    rows_oracle(down, mlp, &lw.hd, NULL, N, H, C);
    memcpy(xm, res, nx * 4);
    pq_cpu_residual_forward(xm, down, nx);
    round_act(xm, nx);
    pq_cpu_linear_rows_forward(logits, x, &hl, NULL, N, C, 1000);
    for (int on = 2; on >= 0; on--) { // 2: fused, the GEMV launched as a programmatic dependent (PQ_PDL)
        pq_cuda_set_decode_fuse(on > 0);
        pq_cuda_set_pdl(on == 2);
        float *gout[3], *gmlp = bnan(nh), *ggate = bnan(nh), *gup = bnan(nh), *gtmp = bnan(nx);
        float *gres = bdev(res, nx), *gxm = bdev(res, nx), *glog = dnan((size_t)N * 1000);
        for (int t = 0; t < 3; t++) gout[t] = bnan((size_t)N * oc[t]);
        pq_linear_rows_group_forward(gout, gX, lw.dw, (const float *const *)lw.db, 3, N, C);
        pq_gate_up_forward(gmlp, ggate, gup, gX, &lw.dg, &lw.du, lw.dbgu, lw.dbgu, N, C, H);
        pq_linear_rows_add_forward(gres, gtmp, gX, &lw.dwo, lw.db[0], N, C, C);
        float *gmlp2 = bnan(nh);
        pq_mlp_forward(gxm, gtmp, ggate, gup, gmlp2, gX, &lw.dg, &lw.du, &lw.dd, lw.dbgu, lw.dbgu, NULL, N, C, H);
        pq_logits_forward(glog, gX, &dl, N, C, 1000);
        char name[112], what[64];
        snprintf(what, sizeof what, "bf16 act C=%d N=%d%s%s%s", C, N, bias ? " bias" : "", off ? " unaligned" : "",
                 on == 2 ? " fused, PDL" : on ? " fused" : "");
        for (int t = 0; t < 3; t++) {
            snprintf(name, sizeof name, "linear_rows_group_forward %s [%d]", what, t);
            lcmp(name, out[t], gout[t], (size_t)N * oc[t], TOL_EW);
        }
        snprintf(name, sizeof name, "gate_up_forward %s H=%d", what, H);
        lcmp(name, mlp, gmlp, nh, TOL_CH);
        snprintf(name, sizeof name, "linear_rows_add_forward %s", what);
        lcmp(name, xr, gres, nx, TOL_EW);
        snprintf(name, sizeof name, "mlp_forward %s H=%d", what, H);
        lcmp(name, xm, gxm, nx, TOL_CH);
        snprintf(name, sizeof name, "logits_forward %s (f32 logits)", what);
        fcmp(name, logits, glog, (size_t)N * 1000, prod_tol(dt));
        for (int t = 0; t < 3; t++) pq_dev_free(gout[t]);
        DEV_FREE(gmlp, ggate, gup, gtmp, gres, gxm, glog, gmlp2);
    }
    pq_cuda_set_decode_fuse(-1);
    pq_cuda_set_pdl(-1);
    for (int t = 0; t < 3; t++) free(out[t]);
    layer_w_free(&lw);
    pq_dev_weight_free(&dl), free((void *)hl.data);
    free(xh), free(res), free(gate), free(up), free(mlp), free(tmp), free(xr), free(down), free(xm), free(logits);
    pq_dev_free(gXb);
}
static void g_gen(void) {
    for (int N = 1; N <= 8; N *= 2) { // the GEMV's row counts (and f16 weights through it)
        test_linear(PQ_BF16, 1, N, 1024, 320, 0);
        test_linear(PQ_BF16, 0, N, 1032, 77, 0);
        test_linear(PQ_F16, 1, N, 1024, 320, 0);
    }
    test_gen_fused(1024, 256, 2816, 1, 0, 0);
    test_gen_fused(1024, 256, 2816, 1, 0, 1);
    test_gen_fused(1024, 256, 1024, 3, 0, 1);
    test_gen_fused(1024, 256, 2816, 64, 0, 0);
    test_gen_fused(1032, 128, 700, 1, 1, 0);
}

// One process switching the storage between calls (pq_ops_set_act_dtype), bf16, f32, bf16 again, on the same
// shapes: what the backend caches across calls (cuBLASLt's plans, keyed by C's dtype and the bias epilogue;
// cuDNN's attention plans and the plan cache of positions; the fallback's pool; the scratch buffers) must
// serve each storage as it is. The f32 round checks against the unrounded oracle, at the same tolerances.
static void g_switch(void) {
    int lens[] = {1, 37, 100, 64, 5};
    for (int k = 0; k < 3; k++) {
        pq_ops_set_act_dtype(k == 1 ? PQ_F32 : PQ_BF16);
        printf("     storage %s\n", pq_dtype_name(pq_ops_act_dtype()));
        for (int b = 0; b < 2; b++) {
            test_linear(PQ_BF16, b, 133, 256, 320, 0);
            test_linear(PQ_BF16, b, 133, 256, 320, 1);
        }
        test_linear(PQ_F16, 1, 133, 256, 320, 0);
        test_linear_group(PQ_BF16, 3, 7, 1, 133);
        run_attention(lens, 5, 8, 2, 64, 0, 0);
        test_logp(PQ_BF16, "777");
    }
    pq_ops_set_act_dtype(PQ_BF16);
}

static const GtGroup groups[] = {
    {"embedding", g_embedding}, {"rmsnorm", g_rmsnorm},       {"qk_norm", g_qk_norm}, {"linear", g_linear},
    {"lora", g_lora},           {"rope", g_rope},             {"elementwise", g_elementwise},
    {"attention", g_attention}, {"attention2", g_attention2}, {"logp", g_logp},   {"gen", g_gen},
    {"switch", g_switch},
};
enum { NGROUPS = sizeof groups / sizeof *groups };

int main(int argc, char **argv) {
    pq_rng_seed(&gt_rng, 0x5eedbf16ULL);
    bf16_run = 1;
    int want[NGROUPS], rc = gt_args(argc, argv, "parity-act", groups, NGROUPS, want);
    if (rc >= 0) return rc;
    // bf16 storage for the whole run, as a bf16 model's pq_ops_act_choose sets it; the oracle (pq_cpu_*) is
    // plain f32 on host arrays
    pq_ops_set_act_dtype(PQ_BF16);
    pq_ops_set_attention_dtype(PQ_BF16);
    if (pq_ops_act_dtype() != PQ_BF16 || pq_act_size() != 2) {
        printf("FAIL bf16 activation storage not set\n");
        return 1;
    }
    for (int k = 0; k < NGROUPS; k++)
        if (want[k]) groups[k].run();
    printf("%d of %d checks failed\n", failures, checks);
    return failures ? 1 : 0;
}
