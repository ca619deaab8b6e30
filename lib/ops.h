// ops.h: the operations of the transformer engine, shared by the CPU and the
// CUDA backends. The model code (model.c, logp.c, the trainer) calls only
// these; the Makefile decides which implementation is linked.
//
// Conventions (llm.c): activations are float32, row-major, token-major;
// N = number of tokens in a (packed) batch, C channels, NH query heads, KVH
// key/value heads, HS head size, H the MLP hidden size, V vocab, OC output
// channels. Pointers to activations are device pointers (host memory on the
// CPU backend; allocate them with pq_dev_alloc). Weights are PqWeight
// (f32, f16 or bf16, never converted whole).
//
// Packing: several records share one batch of N tokens. pos[i] is the
// position of token i inside its own record (0 at a record's first token),
// so token i's record starts at i - pos[i]; attention never crosses a
// record boundary, and RoPE uses pos. A (B,T) batch with padding is the
// same thing with pos restarting at 0 every T tokens.
//
// pq_cpu_* are the plain-C implementations (lib/ops_cpu.c, the oracle, always
// linked so the CUDA build can test against them); pq_* without the prefix
// are the backend's (lib/backend_cpu.c binds them to pq_cpu_*).
#ifndef PQ_OPS_H
#define PQ_OPS_H

#include <stddef.h>
#include <stdint.h>

typedef enum PqDtype { PQ_F32 = 0, PQ_F16, PQ_BF16 } PqDtype;

// A weight matrix (rows, cols) row-major (a linear layer's (OC,C)), or a
// vector when rows == 1. data is memory-mapped (CPU) or on the device.
typedef struct PqWeight {
    const void *data;
    PqDtype dtype;
    int rows, cols;
} PqWeight;

size_t pq_dtype_size(PqDtype t);
const char *pq_dtype_name(PqDtype t);
float pq_bf16_to_f32(uint16_t h);
float pq_f16_to_f32(uint16_t h);
// (pq_f32_to_bf16 and pq_f32_to_f16 are in st_write.h)
// Row r of w as float32: out (cols)
void pq_weight_row(const PqWeight *w, int r, float *out);

// ---- memory and threads of the backend ----
void pq_ops_set_threads(int n); // <= 0: all cores (CPU); ignored by CUDA
int pq_ops_threads(void);
void *pq_dev_alloc(size_t bytes); // zeroed; aborts on out-of-memory like pq_xmalloc
void pq_dev_free(void *p);
void pq_dev_upload(void *dst, const void *host_src, size_t bytes);
void pq_dev_download(void *host_dst, const void *src, size_t bytes);
void pq_dev_copy(void *dst, const void *src, size_t bytes); // device to device
// A weight as the backend uses it: the CPU returns w unchanged (mmap'd), the
// CUDA backend copies it to the device. Free with pq_dev_weight_free.
PqWeight pq_dev_weight(PqWeight w);
void pq_dev_weight_free(PqWeight *w);
// n weights of one dtype and column count (a block's q, k, v; gate, up) as
// the backend uses them, in place: the CUDA backend copies them into one
// allocation, one after another (each still freed with pq_dev_weight_free);
// the CPU leaves them as they are.
void pq_dev_weights(PqWeight *w, int n);

// ---- activation storage (PQ_ACTIVATIONS) ----
// The scoring, training and generation paths (model.c's forward, train.c,
// gen.c) keep their activations, the tensors between operations, as f32
// (the default) or as bf16 (round to nearest even; f32 inside every kernel,
// as PyTorch's bf16 training does). The choice is the process's, made once before any
// activation buffer is allocated (pq_ops_act_choose); generation's logits
// and caches keep their own dtypes (ops_gen.h, ops_paged.h).
// With bf16 storage the activation arguments keep their float * type in the
// signatures below but point at bf16 elements: size them with pq_act_bytes,
// offset them with pq_act_at, never index them on the host.
// Activation arguments: every float * of ops.h and ops_grad.h that holds
// (N, ...) token rows of the model's stream: x, inp, out, q, k, v, gate, up,
// and their gradients d<x>. Always f32: rstd, lse, logp, dlogp, norm
// weights, bias, inv_freq, and all of LoRA's own tensors (A, B, xa, dxa, dA,
// dB). LoRA's products then run as PyTorch autocast runs peft's: A and B f32
// master weights, each product with bf16 operands (bf16 copies of A and B, xa
// and dxa rounded to bf16 in their f32 buffers) and f32 accumulation, dA and
// dB f32; the rounding points are ops_grad.h's (pq_cpu_lora_*_bf16).
void pq_ops_set_act_dtype(PqDtype t); // PQ_F32 or PQ_BF16; any other is f32
PqDtype pq_ops_act_dtype(void);
size_t pq_act_size(void);             // bytes an activation element takes: 4 or 2
size_t pq_act_bytes(size_t n);        // n elements
float *pq_act_at(float *p, size_t n); // element n of an activation buffer
const float *pq_act_at_c(const float *p, size_t n);
// Reads PQ_ACTIVATIONS (f32, the default, or bf16) and sets the storage for a
// model whose weights are of dtype t: bf16 only for bf16 and f16 weights (f32
// models keep f32 end to end, said once on stderr when asked for bf16).
// Returns the dtype set; -1 with a message in err (size n) for an unknown value.
int pq_ops_act_choose(PqDtype t, char *err, size_t n);

// ---- forward operations ----
#define PQ_OPS_DECLARE(P)                                                                                      \
    /* ids (N), wte (V,C) -> out (N,C) */                                                                      \
    void P##embedding_forward(float *out, const int32_t *ids, const PqWeight *wte, int N, int C);              \
    /* inp (N,C), weight (C) -> out (N,C), rstd (N) (may be NULL; kept for backward) */                        \
    void P##rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N, int C,       \
                            float eps);                                                                        \
    /* the residual add and the norm after it in one pass: x (N,C) += y (N,C), then out (N,C), rstd (N)        \
       (may be NULL) = rmsnorm_forward of the new x */                                                         \
    void P##residual_rmsnorm_forward(float *out, float *rstd, float *x, const float *y, const float *weight,  \
                                     int N, int C, float eps);                                                 \
    /* inp (N,C), weight (OC,C), bias (OC) or NULL -> out (N,OC) = inp weight^T + bias */                      \
    void P##linear_forward(float *out, const float *inp, const PqWeight *weight, const float *bias, int N,     \
                           int C, int OC);                                                                     \
    /* several linear layers on one input (a block's q, k, v), t < n <= 4: inp (N,C), w[t] (OC_t,C),           \
       bias[t] (OC_t) or NULL -> out[t] (N,OC_t) = inp w[t]^T + bias[t]; the CUDA backend converts inp to     \
       the weights' dtype once for all n products */                                                         \
    void P##linear_group_forward(float *const *out, const float *inp, const PqWeight *w,                      \
                                 const float *const *bias, int n, int N, int C);                              \
    /* LoRA: inp (N,C), A (r,C), B (OC,r) -> xa (N,r) = inp A^T (kept for backward),                          \
       out (N,OC) += scale * xa B^T */                                                                         \
    void P##lora_forward(float *out, float *xa, const float *inp, const float *A, const float *B, float scale, \
                         int N, int C, int OC, int r);                                                         \
    /* in place: x (N,NH,HS) rotated by pos (N) with inv_freq (HS/2), HF's rotate_half pairing (i, i+HS/2) */  \
    void P##rope_forward(float *x, const int32_t *pos, const float *inv_freq, int N, int NH, int HS);          \
    /* both of a layer's rotations in one pass: q (N,NH,HS) and k (N,KVH,HS), each as rope_forward */         \
    void P##rope_qk_forward(float *q, float *k, const int32_t *pos, const float *inv_freq, int N, int NH,       \
                            int KVH, int HS);                                                                  \
    /* causal GQA attention inside each record (see pos above), only keys j with i - j <= window when         \
       window > 0: q (N,NH,HS), k (N,KVH,HS), v (N,KVH,HS) -> out (N,NH,HS),                                   \
       lse (N,NH) log-sum-exp of the scaled scores (may be NULL; kept for backward) */                         \
    void P##attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,          \
                              const int32_t *pos, int N, int NH, int KVH, int HS, int window);                 \
    /* gate (N,H), up (N,H) -> out (N,H) = silu(gate) * up */                                                  \
    void P##swiglu_forward(float *out, const float *gate, const float *up, int N, int H);                      \
    /* in place: x (n) += y (n) (the residual stream) */                                                       \
    void P##residual_forward(float *x, const float *y, size_t n);                                              \
    /* h (N,C) (after the final norm), lm_head (V,C), targets (N) (-1: none) ->                                \
       logp (N) = log softmax(h lm_head^T)[target] (0 where no target), lse (N) log-sum-exp of the logits    \
       (may be NULL; kept for backward). Never holds more than a chunk of vocab rows' logits. */               \
    void P##logp_forward(float *logp, float *lse, const float *h, const PqWeight *lm_head,                     \
                         const int32_t *targets, int N, int C, int V);

PQ_OPS_DECLARE(pq_)
PQ_OPS_DECLARE(pq_cpu_)
void pq_cpu_set_threads(int n); // the CPU implementations' threads (<= 0: all cores)
int pq_cpu_threads(void);
// PQ_PRECISION=bf16: the CPU runs bf16 linear layers' products in bf16 (the
// activations rounded, f32 accumulation; oneDNN, AMX where present) as the
// CUDA backend does; 1 when on (read once).
int pq_cpu_bf16_products(void);
// linear_backward's product in bf16 when that mode is on and the weight is
// bf16: 0 done, -1 (nothing touched) when the f32 path must do it.
int pq_cpu_bf16_linear_backward(float *dinp, const float *dout, const PqWeight *weight, int N, int C, int OC);

// ---- the backend's device (lib/device_cpu.c on the CPU, lib/cuda/ on CUDA) ----
const char *pq_ops_backend(void);  // "cpu" or "cuda"
// Selects device n for everything allocated after (call before loading a
// model): 0, or -1 when there is no such device (always -1 on the CPU).
int pq_ops_set_device(int n);
void pq_dev_zero(void *dst, size_t bytes); // memset 0 of backend memory
// The precision of attention's products: CUDA runs bf16 and f16 models'
// attention as bf16 products on tensor cores with f32 accumulation
// (lib/attn_mm.c), f32 models' in exact f32; PQ_ATTENTION=f32 in the
// environment forces f32. Model loading sets it to the weights' dtype. The
// CPU always computes in f32.
void pq_ops_set_attention_dtype(PqDtype t);
// Peak memory so far: device memory in use (CUDA), the process's peak
// resident set (CPU), in bytes.
size_t pq_dev_peak_bytes(void);
// Memory free for more buffers now: the device's free memory (CUDA), the
// system's MemAvailable (CPU), in bytes (0 when unknown).
size_t pq_dev_free_bytes(void);
// The device, as benchmarks report it and measure against: its name and the
// attributes its peaks follow from. pq_dev_info fills d: 0, or -1 where the
// backend has no device (the CPU: name "cpu", the rest 0) or its device does
// not answer (CUDA: all 0).
typedef struct {
    char name[256];
    int cc_major, cc_minor;  // compute capability
    int sms;                 // multiprocessors
    int clock_khz;           // the SMs' peak clock
    int mem_clock_khz;       // the memory's peak clock (two transfers a cycle)
    int bus_bits;            // the memory bus's width
    size_t mem_bytes;        // total memory
} PqDevInfo;
int pq_dev_info(PqDevInfo *d);
// The peaks an MFU and a bandwidth use are fractions of (lib/devpeak.c): the
// dense bf16 tensor-core TFLOP/s with f32 accumulation and the memory's GB/s.
// The datasheet's where d's name is a part it lists (H200, H100 SXM/PCIe/NVL,
// A100, B200, L40S...: the figures everyone quotes, an H200's 989 and
// 4,800); otherwise from the attributes (SMs x clock x the tensor cores'
// rate for the compute capability; 2 x memory clock x bus width). A peak
// that cannot be known is 0. Returns what the peaks come from, in words.
const char *pq_dev_peaks(const PqDevInfo *d, double *tflops, double *gbs);
// Timing marks on the backend's timeline (PQ_GEN_PROFILE, gen.h): pq_dev_mark(k)
// records mark k (0 <= k < PQ_DEV_MARKS; others are ignored) after the work
// issued so far: CUDA records an event (created on first use) on the
// backend's stream, so the mark is the time the device reaches it, not the
// time of the call; the CPU reads the monotonic clock at the call, its ops
// being synchronous. pq_dev_mark_ms(a, b) waits for mark b and returns the
// milliseconds from mark a to mark b (-1 when either was not recorded). A
// mark recorded again replaces its time. Never inside a CUDA graph's capture:
// CUDA records nothing there and the mark reads as not recorded. The
// process's marks are one set (one user at a time); unused, they cost
// nothing. A recorded event costs the host a few microseconds.
#define PQ_DEV_MARKS 1024
void pq_dev_mark(int k);
double pq_dev_mark_ms(int a, int b);

#endif
