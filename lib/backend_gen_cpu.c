// backend_gen_cpu.c: binds the generation operations of ops_gen.h to their
// CPU implementations. Left out of CUDA=1 builds (lib/cuda/ops_gen.cu).
#include "ops_gen.h"
#include "ops_graph.h"

#include <stdlib.h>
#include <string.h>

void pq_kv_append(float *kc, float *vc, const float *k, const float *v, const int32_t *slot, const int32_t *pos, int N,
                  int KVH, int HS, int T) {
    pq_cpu_kv_append(kc, vc, k, v, slot, pos, N, KVH, HS, T);
}
void pq_attention_kv_forward(float *out, const float *q, const float *kc, const float *vc, const int32_t *slot,
                             const int32_t *pos, int N, int NH, int KVH, int HS, int T, int window) {
    pq_cpu_attention_kv_forward(out, q, kc, vc, slot, pos, N, NH, KVH, HS, T, window);
}
void pq_linear_rows_forward(float *out, const float *inp, const PqWeight *weight, const float *bias, int N, int C,
                            int OC) {
    pq_cpu_linear_rows_forward(out, inp, weight, bias, N, C, OC);
}
void pq_linear_rows_group_forward(float *const *out, const float *inp, const PqWeight *w, const float *const *bias,
                                  int n, int N, int C) {
    pq_cpu_linear_rows_group_forward(out, inp, w, bias, n, N, C);
}
void pq_gate_up_forward(float *out, float *gate, float *up, const float *inp, const PqWeight *wg, const PqWeight *wu,
                        const float *bg, const float *bu, int N, int C, int H) {
    pq_cpu_gate_up_forward(out, gate, up, inp, wg, wu, bg, bu, N, C, H);
}
void pq_linear_rows_add_forward(float *x, float *tmp, const float *inp, const PqWeight *w, const float *bias, int N,
                                int C, int OC) {
    pq_cpu_linear_rows_add_forward(x, tmp, inp, w, bias, N, C, OC);
}
void pq_mlp_forward(float *x, float *tmp, float *gate, float *up, float *mlp, const float *ln, const PqWeight *wg,
                    const PqWeight *wu, const PqWeight *wd, const float *bg, const float *bu, const float *bd, int N,
                    int C, int H) {
    pq_cpu_mlp_forward(x, tmp, gate, up, mlp, ln, wg, wu, wd, bg, bu, bd, N, C, H);
}
void pq_attention_kv_shared_forward(float *out, const float *q, const float *kc, const float *vc, const int32_t *slot,
                                    const int32_t *pos, const int32_t *base, const int32_t *blen, int N, int NH,
                                    int KVH, int HS, int T, int window) {
    pq_cpu_attention_kv_shared_forward(out, q, kc, vc, slot, pos, base, blen, N, NH, KVH, HS, T, window);
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
