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
