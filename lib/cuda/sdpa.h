// sdpa.h: cuDNN's fused flash attention (SDPA, through the header-only
// cudnn-frontend, lib/cuda/sdpa.cpp) for the CUDA backend's attention
// (lib/cuda/attention.cu): one call over a batch of segments in packed
// layout, forward and backward, bf16 inputs and outputs, f32 statistics.
// libcudnn.so.9 is opened at the first call (binaries start without it);
// built without the cudnn-frontend headers, every call says "not built".
#ifndef PQ_CUDA_SDPA_H
#define PQ_CUDA_SDPA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// A call: B segments; segment b's queries are rows off_q[b] / (NH HS) ..
// of Q, O, dO, dQ (rows of NH heads of HS bf16), its keys rows of K, V, dK,
// dV (KVH heads), seq_q[b] and seq_k[b] of them. Statistics: f32, padded,
// stats[(b NH + h) smax_q + s].
typedef struct PqSdpaCall {
    int B, smax_q, smax_k, NH, KVH, HS;
    int causal;     // top-left causal inside each segment
    int left_bound; // with causal: key t visible from query s when s - t < left_bound (0: no band)
    float scale;
    const int32_t *seq_q, *seq_k; // device (B)
    const int64_t *off_q, *off_k; // device (B + 1), element offsets of each segment's first row
} PqSdpaCall;

// Whether cuDNN's front end accepts the call's graph (bwd: the backward's),
// before any device is involved: 0, or -1 with the reason (a check that
// needs no GPU).
int pq_sdpa_validate(const PqSdpaCall *c, int bwd, char *err, size_t errsz);
// 0, or -1 with the reason in err (cuDNN absent, or it refuses the shape);
// nothing is written then.
int pq_sdpa_forward(const PqSdpaCall *c, void *o, float *stats, const void *q, const void *k, const void *v,
                    char *err, size_t errsz);
int pq_sdpa_backward(const PqSdpaCall *c, void *dq, void *dk, void *dv, const void *q, const void *k, const void *v,
                     const void *o, const void *dout, const float *stats, char *err, size_t errsz);

// cuDNN's fused attention over the paged KV cache (lib/cuda/paged.cu's
// pq_paged_prefill_forward, ops_paged.h): B segments of query rows, packed
// and ragged by off_q in Q and O (NH heads of HS bf16), each against its
// sequence's seq_k[b] keys in one layer's pool, read through its page table:
// the pool (NB blocks of BT positions, KVH heads of HS bf16, row block * BT +
// offset) as a container (NB, KVH, BT, HS). Causal from the bottom right:
// segment b's query s sits at position seq_k[b] - seq_q[b] + s. Forward only,
// no statistics.
typedef struct PqSdpaPagedCall {
    int B, smax_q;      // segments, rows of the longest (a bucket)
    int maxblk, BT, NB; // table entries a segment, positions a block, blocks of the pool
    int NH, KVH, HS;
    int left_bound; // key t visible from query position s when s - t < left_bound (0: no band)
    float scale;
    const int32_t *seq_q, *seq_k, *table; // device: (B), (B), (B, maxblk) block numbers
    const int64_t *off_q;                 // device (B + 1): element offsets of each segment's first row
} PqSdpaPagedCall;

// As pq_sdpa_validate: whether cuDNN's front end accepts the call's graph, without a device.
int pq_sdpa_paged_validate(const PqSdpaPagedCall *c, char *err, size_t errsz);
// 0, or -1 with the reason (nothing written then).
int pq_sdpa_paged_forward(const PqSdpaPagedCall *c, void *o, const void *q, const void *kp, const void *vp, char *err,
                          size_t errsz);

// What lib/cuda/paged.cu's pq_paged_prefill_forward did (for tests/gpu/parity-paged.c): its cuDNN calls so
// far, and the last reason cuDNN did not serve a batch ("" when none).
int pq_paged_cudnn_calls(void);
const char *pq_paged_cudnn_error(void);

// What lib/cuda/attention.cu's path did (for tests/gpu/parity-attn.c): the
// cuDNN calls made so far, and the last reason cuDNN did not serve a batch.
int pq_attention_cudnn_calls(void);
// plans of batches built (not served from the cache of the last few)
long pq_attention_cudnn_plans(void);
const char *pq_attention_cudnn_error(void);

#ifdef __cplusplus
}
#endif

#endif
