// backend_paged_cpu.c: binds the paged generation operations of ops_paged.h
// to their CPU implementations. Left out of CUDA=1 builds (lib/cuda/paged.cu).
#include "act_cpu.h"
#include "ops_paged.h"

void pq_paged_append(void *kp, void *vp, PqDtype dt, const float *k, const float *v, const int32_t *slot, int N,
                     int KVH, int HS) {
    if (!pq_act_bf16()) {
        pq_cpu_paged_append(kp, vp, dt, k, v, slot, N, KVH, HS);
        return;
    }
    size_t n = (size_t)N * KVH * HS;
    pq_cpu_paged_append(kp, vp, dt, pq_act_widen(0, k, n), pq_act_widen(1, v, n), slot, N, KVH, HS);
}
// (the wrapped ops: each rounds its outputs with bf16 activations)
void pq_paged_rope_append(float *q, float *k, const float *v, const int32_t *pos, const float *inv_freq, void *kp,
                          void *vp, PqDtype dt, const int32_t *slot, int N, int NH, int KVH, int HS) {
    pq_rope_qk_forward(q, k, pos, inv_freq, N, NH, KVH, HS);
    pq_paged_append(kp, vp, dt, k, v, slot, N, KVH, HS);
}
void pq_paged_copy_blocks(void *kp, void *vp, PqDtype dt, const PqKvCopy *copies, int ncopy, int L, int NB, int BT,
                          int KVH, int HS) {
    pq_cpu_paged_copy_blocks(kp, vp, dt, copies, ncopy, L, NB, BT, KVH, HS);
}
void pq_paged_attention_forward(float *out, const float *q, const void *kp, const void *vp, PqDtype dt,
                                const int32_t *tables, int maxblk, const int32_t *len, int N, int NH, int KVH, int HS,
                                int BT, int window, int max_len, float *work) {
    if (!pq_act_bf16()) {
        pq_cpu_paged_attention_forward(out, q, kp, vp, dt, tables, maxblk, len, N, NH, KVH, HS, BT, window, max_len,
                                       work);
        return;
    }
    size_t n = (size_t)N * NH * HS;
    float *o = pq_act_scratch(1, n);
    pq_cpu_paged_attention_forward(o, pq_act_widen(0, q, n), kp, vp, dt, tables, maxblk, len, N, NH, KVH, HS, BT,
                                   window, max_len, work);
    pq_act_narrow(out, o, n);
}
void pq_paged_prefill_forward(float *out, const float *q, const void *kp, const void *vp, PqDtype dt,
                              const int32_t *tables, int maxblk, const int32_t *len, const int32_t *seg, int nseg,
                              int max_q, int N, int NH, int KVH, int HS, int BT, int NB, int window, int max_len,
                              float *work) {
    if (!pq_act_bf16()) {
        pq_cpu_paged_prefill_forward(out, q, kp, vp, dt, tables, maxblk, len, seg, nseg, max_q, N, NH, KVH, HS, BT,
                                     NB, window, max_len, work);
        return;
    }
    size_t n = (size_t)N * NH * HS;
    float *o = pq_act_scratch(1, n);
    pq_cpu_paged_prefill_forward(o, pq_act_widen(0, q, n), kp, vp, dt, tables, maxblk, len, seg, nseg, max_q, N, NH,
                                 KVH, HS, BT, NB, window, max_len, work);
    pq_act_narrow(out, o, n);
}
void pq_sample(int32_t *ids, const float *logits, const PqSampleRow *rows, int N, int V) {
    pq_cpu_sample(ids, logits, rows, N, V);
}
void pq_mask_logits(float *logits, const uint32_t *bits, const int32_t *rows, int n, int V) {
    pq_cpu_mask_logits(logits, bits, rows, n, V);
}
void pq_row_lse(float *lse, const float *logits, int N, int V) { pq_cpu_row_lse(lse, logits, N, V); }
void pq_token_logp(float *lp, const float *logits, const int32_t *ids, const float *lse, int N, int V) {
    pq_cpu_token_logp(lp, logits, ids, lse, N, V);
}
