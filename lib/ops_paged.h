// ops_paged.h: the device operations of paged generation (issue 11): K/V
// rows written into a paged cache (kvpage.h keeps its block tables), decode
// attention of one query row per sequence over it (GQA, sliding window,
// split along the context as in flash-decoding), and sampling (temperature,
// top-k, top-p, min-p) drawn with a counter-based RNG so that every backend
// draws the same token. Same conventions as ops.h (device pointers);
// pq_cpu_* in ops_paged_cpu.c (the oracle, f32), pq_* bound by
// backend_paged_cpu.c or lib/cuda/paged.cu. Activation storage (ops.h): k, v,
// q and out are activations; the pools have their own dtype; logits, lse,
// lp and work are f32 in either storage.
//
// The cache of one layer: kp, vp (NB*BT,KVH,HS) of dtype PQ_F32 or PQ_BF16,
// row block * BT + offset; the layers' pools lie one after another (layer l
// at l * NB*BT*KVH*HS elements) for pq_paged_copy_blocks.
#ifndef PQ_OPS_PAGED_H
#define PQ_OPS_PAGED_H

#include <stddef.h>
#include <stdint.h>

#include "kvpage.h"
#include "ops.h"

#ifdef __CUDACC__
#define PQ_HD __host__ __device__
#else
#define PQ_HD
#endif

// How sample() draws row i's token (a host array of these is uploaded).
typedef struct PqSampleRow {
    uint64_t seed;     // the request's seed
    uint32_t seq;      // sample number within the request
    uint32_t step;     // index of the token in the sample
    float temperature; // <= 0: argmax (lowest id among ties)
    float top_p;       // >= 1: off
    float min_p;       // <= 0: off
    int32_t top_k;     // <= 0: off
} PqSampleRow;

// The counter-based RNG: a uniform in (0, 1) for token v of draw (seed,
// seq, step), the same on every backend (splitmix64's finalizer).
static inline PQ_HD uint64_t pq_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static inline PQ_HD uint64_t pq_sample_key(uint64_t seed, uint32_t seq, uint32_t step) {
    return pq_mix64(pq_mix64(seed + 0x632be59bd9b4e019ULL) ^ (((uint64_t)seq << 32) | step));
}
static inline PQ_HD double pq_sample_uniform(uint64_t key, int v) {
    uint64_t h = pq_mix64(key + ((uint64_t)v + 1) * 0x9e3779b97f4a7c15ULL);
    return ((double)(h >> 11) + 0.5) * 0x1.0p-53;
}

// Splits of decode attention over the context: a batch of N rows with KVH
// heads and contexts up to max_len takes nsplit splits of *split_len
// positions (a multiple of 64), enough blocks to fill a GPU.
int pq_paged_splits(int N, int KVH, int max_len, int *split_len);
// How many: blocks (row, KV head, split) to aim for, and the fewest positions a split (defaults 264 and 128:
// two blocks an H200 SM), or PQ_PAGED_SPLITS=BLOCKS[,MIN] (read once), or this setter's (0: the default; -1, -1:
// the variable's again). For measuring the kernel's parallelism (parity-paged's timing): a generator's CUDA
// graphs and work buffers assume it does not change during its life.
void pq_paged_set_splits(int target_blocks, int min_split);
// Floats of work paged_attention_forward needs (0 when it takes one split).
size_t pq_paged_attention_work(int N, int NH, int KVH, int HS, int max_len);

#define PQ_OPS_PAGED_DECLARE(P)                                                                                    \
    /* k, v (N,KVH,HS) -> kp, vp (rows,KVH,HS) of dtype dt (f32 or bf16, rounded to nearest) at row slot[i] */  \
    void P##paged_append(void *kp, void *vp, PqDtype dt, const float *k, const float *v, const int32_t *slot,     \
                         int N, int KVH, int HS);                                                                  \
    /* a decoding layer's rope and append in one: q (N,NH,HS), k (N,KVH,HS) rotated in place by pos (N) as     \
       pq_rope_qk_forward does, then k (as stored) and v appended as paged_append (CUDA: one launch for both)   \
       */                                                                                                        \
    void P##paged_rope_append(float *q, float *k, const float *v, const int32_t *pos, const float *inv_freq,      \
                              void *kp, void *vp, PqDtype dt, const int32_t *slot, int N, int NH, int KVH,       \
                              int HS);                                                                           \
    /* copies (ncopy) in backend memory: block dst's first n positions = block src's, in each of L layers of   \
       NB blocks of BT positions, K and V (carried out before the appends of the step that asked for them) */  \
    void P##paged_copy_blocks(void *kp, void *vp, PqDtype dt, const PqKvCopy *copies, int ncopy, int L, int NB,   \
                              int BT, int KVH, int HS);                                                            \
    /* q (N,NH,HS), one row per sequence, against positions j < len[i] of its sequence (the row's own key,       \
       at position len[i] - 1, appended first), and len[i] - 1 - j <= window when window > 0 (the bound of     \
       pq_attention_forward); position j at row tables[i*maxblk + j/BT] * BT + j%BT of kp, vp (one layer,     \
       dtype dt); f32 softmax -> out (N,NH,HS). max_len >= every len[i] (a host value: it sets the splits);     \
       work: pq_paged_attention_work(N, NH, KVH, HS, max_len) floats (NULL when 0). */                        \
    void P##paged_attention_forward(float *out, const float *q, const void *kp, const void *vp, PqDtype dt,      \
                                    const int32_t *tables, int maxblk, const int32_t *len, int N, int NH, int KVH, \
                                    int HS, int BT, int window, int max_len, float *work);                         \
    /* prefill with context: paged_attention_forward's result over rows [0, N) (the same arguments), where the  \
       rows form nseg segments, segment s rows seg[s] .. seg[s + 1] - 1 (seg: device, nseg + 1 entries, seg[0] \
       = 0, seg[nseg] = N), each consecutive positions of one sequence: one table, len[] rising by 1 from row to \
       row (a prompt's chunk after its cached context, or one decoding row). max_q >= every segment's rows and  \
       NB the blocks of one layer's pool (host values). The CUDA backend runs a bf16 cache's segments through    \
       cuDNN's fused attention over the paged cache, one call for the batch (causal from the bottom right, the  \
       window as a band), when some segment has more than one row (PQ_PAGED_ATTN, lib/cuda/paged.cu), and      \
       paged_attention_forward's kernel otherwise or where cuDNN refuses; the CPU checks the segments (a        \
       caller's error aborts), then runs paged_attention_forward. work: as paged_attention_forward's. */       \
    void P##paged_prefill_forward(float *out, const float *q, const void *kp, const void *vp, PqDtype dt,        \
                                  const int32_t *tables, int maxblk, const int32_t *len, const int32_t *seg,       \
                                  int nseg, int max_q, int N, int NH, int KVH, int HS, int BT, int NB, int window,   \
                                  int max_len, float *work);                                                       \
    /* logits (N,V), rows (N) -> ids (N): argmax at temperature 0, else a draw from softmax(logits /           \
       temperature) cut by top-k (ties with the k-th kept), top-p (the fewest most likely whose mass reaches    \
       p, ties in id order), min-p (p >= min_p * max p), in that order (gen.c's pq_gen_probs), by the          \
       exponential race: argmax of z_v - log(-log u_v) over the kept, u_v = pq_sample_uniform. -INFINITY        \
       logits are never drawn; -1 when every logit is. */                                                      \
    void P##sample(int32_t *ids, const float *logits, const PqSampleRow *rows, int N, int V);                \
    /* the log-probabilities generation reports for its tokens: lse (N) = log sum_v exp(logits[i*V + v]) of  \
       each row (-INFINITY logits count 0; taken before any mask, so the model's own distribution) */          \
    void P##row_lse(float *lse, const float *logits, int N, int V);                                              \
    /* lp (N) = logits[i*V + ids[i]] - lse[i] (0 where ids[i] < 0): after sample, whose token a mask kept */    \
    void P##token_logp(float *lp, const float *logits, const int32_t *ids, const float *lse, int N, int V);     \
    /* constrained decoding's masks where the logits are: for k < n, row rows[k] of logits (.,V) keeps token v  \
       where bit v & 31 of bits[k * W + (v >> 5)] is set (W = (V + 31) / 32 words a row) and gets -INFINITY     \
       elsewhere (gen.c's pq_constrain_bits, then sample) */                                                     \
    void P##mask_logits(float *logits, const uint32_t *bits, const int32_t *rows, int n, int V);

PQ_OPS_PAGED_DECLARE(pq_)
PQ_OPS_PAGED_DECLARE(pq_cpu_)

// paged_prefill_forward's promises about its segments (host arrays), checked: a broken one is the caller's error,
// said on stderr ("pq_paged_prefill_forward: segment S, row R: why") and the process aborted.
void pq_cpu_paged_check_segments(const int32_t *tables, int maxblk, const int32_t *len, const int32_t *seg, int nseg,
                                 int max_q, int N, int BT, int NB, int max_len);

#endif
