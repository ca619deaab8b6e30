// tuning.h: the CUDA backend's internal choices that tests/gpu/bench-7b
// switches between timings (C declarations; defined in backend.cu).
#ifndef PQ_CUDA_TUNING_H
#define PQ_CUDA_TUNING_H

#ifdef __cplusplus
extern "C" {
#endif

// The kernel of the LoRA products (f32, r small), otherwise PQ_LORA_GEMM=sgemm|tf32|lt|sgemm_t, read
// once: cublasSgemm (an f32 model's default), cublasGemmEx on tensor cores with TF32 inputs (10-bit
// mantissas: a bf16/f16 model's default), cuBLASLt f32 with the heuristic's algorithm (cublasSgemm where it has
// none), or cublasSgemm computing the r-wide products (xa, dxa, dB) as their transposes, so that the
// long side (N or OC) is the rows, put back in place by a small kernel.
// pq_cuda_set_lora_gemm(-1): PQ_LORA_GEMM's choice, or the model's default, again.
enum { PQ_LORA_SGEMM = 0, PQ_LORA_TF32, PQ_LORA_LT, PQ_LORA_SGEMM_T, PQ_LORA_KINDS };
void pq_cuda_set_lora_gemm(int kind);

// The products of PQ_GEMV_MAX_N rows (1) with bf16/f16 weights (batch-1 decoding's) run a memory-bound GEMV kernel
// (gemv.cu) unless PQ_GEMV=0 (read once): cuBLASLt then, as for more rows. pq_cuda_set_gemv(0 or 1) turns it
// off or on, -1: PQ_GEMV's choice again.
void pq_cuda_set_gemv(int on);

// A decoding step's fusions (ops_gen.h: q, k, v in one product; gate, up and SwiGLU in one; a product added to the
// residual stream, gen.c's down_proj) in one GEMV launch each where it serves the rows, more rows through
// pq_linear_group_forward (the input converted once): PQ_DECODE_FUSE=1, read once; off (the products one by one,
// as before) until gpu-check's decide row shows it faster. pq_cuda_set_decode_fuse(0 or 1) overrides, -1: the
// variable's choice again.
void pq_cuda_set_decode_fuse(int on);

// The paged decode kernel for bf16 caches of head size 64 or 128 keeps 4 keys a lane group in flight, or 8 under
// PQ_PAGED_KEYS=8 (read once): half the round trips to memory of a split, for gpu-check to measure.
// pq_cuda_set_paged_keys(4 or 8) overrides, -1: the variable's choice again.
void pq_cuda_set_paged_keys(int keys);

// PQ_PDL=1 (read once): the GEMV kernel (gemv.cu) launched as a programmatic dependent of the kernel before it
// (Hopper's PDL), its first weight reads overlapping that kernel's end; rmsnorm and the paged decode attention
// let it start early. Off until gpu-check measures it. pq_cuda_set_pdl(0 or 1) overrides, -1: the variable's.
// Either way only on compute capability 9.x: other GPUs run the compute_80 PTX, without PDL's waits (said once).
void pq_cuda_set_pdl(int on);

#ifdef __cplusplus
}
#endif
#endif
