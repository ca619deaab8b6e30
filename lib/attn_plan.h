// attn_plan.h: attention over packed records as fused flash-attention calls
// (cuDNN's SDPA on the CUDA backend, lib/cuda/attention.cu): the host-side
// plan, separate from the device so that it is tested on the CPU
// (tests/unit/test-attn-plan.c). A call is a batch of B segments in cuDNN's
// packed ("THD", ragged offsets) layout: segment b's queries are rows
// [q0[b], q0[b] + sq[b]) of Q (N,NH,HS), its keys rows [k0[b], k0[b] + sk[b])
// of K and V (N,KVH,HS), grouped-query heads without expanding K and V.
//
// Plain attention (ops.h) is one causal call, a segment per record. The
// two-range form (attention2 of ops_grad.h: a pair's responses sharing one
// copy of their prompt) adds a second, unmasked call: rows whose first range
// [a0, a1) is not empty attend to all of it there; the two calls' outputs are
// merged through their log-sum-exps, and in the backward both calls get the
// merged output and log-sum-exp (so each computes its share of dQ, dK, dV).
#ifndef PQ_ATTN_PLAN_H
#define PQ_ATTN_PLAN_H

#include <stddef.h>
#include <stdint.h>

typedef struct PqAttnCall {
    int B;                      // segments (0: no call)
    int smax_q, smax_k;         // the most queries and keys of a segment
    int32_t *q0, *sq, *k0, *sk; // (B) each segment's first query row and count, first key row and count
} PqAttnCall;

typedef struct PqAttnPlan {
    int N;
    // causal: q0 == k0, sq == sk, key j visible from row i when j <= i and
    // (left_bound == 0 or i - j < left_bound): cuDNN's top-left causal mask
    // with its diagonal band's left bound (a window w is left bound w + 1)
    PqAttnCall causal;
    int left_bound;
    PqAttnCall cross; // every key of the segment visible from each of its rows (B 0: none)
    // per row i (N): its causal segment and index in it; its cross segment
    // (-1: none) and index; and per key j, 1 when a cross segment reads it
    int32_t *cb, *cs, *xb, *xs, *kx;
} PqAttnPlan;

// The plan of attention over N rows (pos, and for attention2 a0, a1, b0:
// host arrays as ops.h and ops_grad.h define them; a0 NULL: plain) with the
// sliding window (<= 0: none). 0, or -1 with the reason in err (the calls
// cannot say it: a window that hides part of a shared prompt, positions that
// do not count up inside a record, overlapping ranges); nothing to free then.
int pq_attn_plan_build(PqAttnPlan *p, const int32_t *pos, const int32_t *a0, const int32_t *a1, const int32_t *b0,
                       int N, int window, char *err, size_t errsz);
void pq_attn_plan_free(PqAttnPlan *p);
// A call's padded length for s rows: rounded up (64, then multiples of 128)
// so that batches of similar records reuse one cuDNN plan.
int pq_attn_plan_bucket(int s);
// Whether the plan's calls let row i see key j (the tests hold it against
// ops.h's rule).
int pq_attn_plan_sees(const PqAttnPlan *p, int i, int j);

// The small steps around the calls, in plain C (the twins of the CUDA
// kernels of lib/cuda/attention.cu). A call's O, dQ (N,NH,HS) and dK, dV
// (N,KVH,HS) are full-size buffers addressed by the segments' rows; its
// softmax statistics (log-sum-exp of the scaled scores) are padded: segment
// b, head h, query s at stats[(b NH + h) smax_q + s].
// out (N,NH,HS), lse (N,NH) = the merge of the causal call's (o1, st1) and,
// for rows in a cross segment, the cross call's (o2, st2) (NULL: none).
void pq_attn_plan_merge(const PqAttnPlan *p, float *out, float *lse, const float *o1, const float *st1,
                        const float *o2, const float *st2, int NH, int HS);
// The backward's statistics: the merged lse (N,NH) into each call's padded layout.
void pq_attn_plan_spread(const PqAttnPlan *p, float *st1, float *st2, const float *lse, int NH);
// The gradients of the two calls summed: dq (N,NH,HS) = dq1 + dq2 on rows of
// a cross segment, dk, dv (N,KVH,HS) = dk1 + dk2 on keys a cross segment reads.
void pq_attn_plan_combine(const PqAttnPlan *p, float *dq, float *dk, float *dv, const float *dq1, const float *dk1,
                          const float *dv1, const float *dq2, const float *dk2, const float *dv2, int NH, int KVH,
                          int HS);

#endif
