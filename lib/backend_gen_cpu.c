// backend_gen_cpu.c: binds the generation operations of ops_gen.h to their
// CPU implementations. Left out of CUDA=1 builds (lib/cuda/ops_gen.cu).
#include "act_cpu.h"
#include "ops_gen.h"
#include "ops_graph.h"

#include <stdlib.h>
#include <string.h>

// With bf16 activations (act_cpu.h) each op widens its activation inputs, runs the f32 pq_cpu_* op and
// rounds its outputs once; the fusions are the compositions of the wrapped ops, rounding where CUDA's
// compositions round (they take no fused kernel in that storage).

void pq_kv_append(float *kc, float *vc, const float *k, const float *v, const int32_t *slot, const int32_t *pos, int N,
                  int KVH, int HS, int T) {
    if (!pq_act_bf16()) {
        pq_cpu_kv_append(kc, vc, k, v, slot, pos, N, KVH, HS, T);
        return;
    }
    size_t n = (size_t)N * KVH * HS;
    pq_cpu_kv_append(kc, vc, pq_act_widen(0, k, n), pq_act_widen(1, v, n), slot, pos, N, KVH, HS, T);
}
void pq_attention_kv_forward(float *out, const float *q, const float *kc, const float *vc, const int32_t *slot,
                             const int32_t *pos, int N, int NH, int KVH, int HS, int T, int window) {
    if (!pq_act_bf16()) {
        pq_cpu_attention_kv_forward(out, q, kc, vc, slot, pos, N, NH, KVH, HS, T, window);
        return;
    }
    size_t n = (size_t)N * NH * HS;
    float *o = pq_act_scratch(1, n);
    pq_cpu_attention_kv_forward(o, pq_act_widen(0, q, n), kc, vc, slot, pos, N, NH, KVH, HS, T, window);
    pq_act_narrow(out, o, n);
}
void pq_linear_rows_forward(float *out, const float *inp, const PqWeight *weight, const float *bias, int N, int C,
                            int OC) {
    if (!pq_act_bf16()) {
        pq_cpu_linear_rows_forward(out, inp, weight, bias, N, C, OC);
        return;
    }
    float *o = pq_act_scratch(1, (size_t)N * OC);
    pq_cpu_linear_rows_forward(o, pq_act_widen(0, inp, (size_t)N * C), weight, bias, N, C, OC);
    pq_act_narrow(out, o, (size_t)N * OC);
}
void pq_linear_rows_group_forward(float *const *out, const float *inp, const PqWeight *w, const float *const *bias,
                                  int n, int N, int C) {
    if (!pq_act_bf16()) {
        pq_cpu_linear_rows_group_forward(out, inp, w, bias, n, N, C);
        return;
    }
    for (int t = 0; t < n; t++) pq_linear_rows_forward(out[t], inp, &w[t], bias[t], N, C, w[t].rows);
}
void pq_gate_up_forward(float *out, float *gate, float *up, const float *inp, const PqWeight *wg, const PqWeight *wu,
                        const float *bg, const float *bu, int N, int C, int H) {
    if (!pq_act_bf16()) {
        pq_cpu_gate_up_forward(out, gate, up, inp, wg, wu, bg, bu, N, C, H);
        return;
    }
    pq_linear_rows_forward(gate, inp, wg, bg, N, C, H);
    pq_linear_rows_forward(up, inp, wu, bu, N, C, H);
    pq_swiglu_forward(out, gate, up, N, H);
}
void pq_linear_rows_add_forward(float *x, float *tmp, const float *inp, const PqWeight *w, const float *bias, int N,
                                int C, int OC) {
    if (!pq_act_bf16()) {
        pq_cpu_linear_rows_add_forward(x, tmp, inp, w, bias, N, C, OC);
        return;
    }
    pq_linear_rows_forward(tmp, inp, w, bias, N, C, OC);
    pq_residual_forward(x, tmp, (size_t)N * OC);
}
void pq_mlp_forward(float *x, float *tmp, float *gate, float *up, float *mlp, const float *ln, const PqWeight *wg,
                    const PqWeight *wu, const PqWeight *wd, const float *bg, const float *bu, const float *bd, int N,
                    int C, int H) {
    if (!pq_act_bf16()) {
        pq_cpu_mlp_forward(x, tmp, gate, up, mlp, ln, wg, wu, wd, bg, bu, bd, N, C, H);
        return;
    }
    pq_gate_up_forward(mlp, gate, up, ln, wg, wu, bg, bu, N, C, H);
    pq_linear_rows_add_forward(x, tmp, mlp, wd, bd, N, H, C);
}
void pq_logits_forward(float *logits, const float *h, const PqWeight *lm_head, int N, int C, int V) {
    pq_cpu_logits_forward(logits, pq_act_bf16() ? pq_act_widen(0, h, (size_t)N * C) : h, lm_head, N, C, V);
}
void pq_attention_kv_shared_forward(float *out, const float *q, const float *kc, const float *vc, const int32_t *slot,
                                    const int32_t *pos, const int32_t *base, const int32_t *blen, int N, int NH,
                                    int KVH, int HS, int T, int window) {
    if (!pq_act_bf16()) {
        pq_cpu_attention_kv_shared_forward(out, q, kc, vc, slot, pos, base, blen, N, NH, KVH, HS, T, window);
        return;
    }
    size_t n = (size_t)N * NH * HS;
    float *o = pq_act_scratch(1, n);
    pq_cpu_attention_kv_shared_forward(o, pq_act_widen(0, q, n), kc, vc, slot, pos, base, blen, N, NH, KVH, HS, T,
                                       window);
    pq_act_narrow(out, o, n);
}

// CUDA graphs (ops_graph.h): none on the CPU, where a step's kernels are plain calls. With PQ_CUDA_GRAPH=1
// gen.c still pads its decode steps as for a graph (its host side, tested on this build), run eagerly here.
struct PqGraphs {
    int unused;
};
PqGraphs *pq_graphs_new(void) {
    static PqGraphs none;
    const char *e = getenv("PQ_CUDA_GRAPH");
    return e && !strcmp(e, "1") ? &none : NULL;
}
void pq_graphs_free(PqGraphs *gs) { (void)gs; }
int pq_graphs_run(PqGraphs *gs, uint64_t key, uint64_t fp, void (*fn)(void *), void *arg) {
    (void)gs, (void)key, (void)fp;
    fn(arg);
    return 0;
}
