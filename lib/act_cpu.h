// act_cpu.h: the CPU backend's f32 working copies of bf16 activations
// (PQ_ACTIVATIONS=bf16, see ops.h). Each pq_* wrapper of backend_*_cpu.c
// widens its activation inputs (and "+=" outputs) into scratch, runs the f32
// pq_cpu_* operation, and rounds each activation output back to bf16 once, the
// points where the CUDA backend's kernels round. What an op keeps inside stays
// f32: residual_rmsnorm_forward normalises the f32 sum x + y (x itself is
// stored rounded); linear_group_backward sums its products into dinp in f32
// and rounds once. LoRA's ops run pq_cpu_lora_*_bf16 (ops_grad.h) on the
// widened copies: bf16 copies of A and B, xa and dxa rounded to bf16 in their
// f32 buffers, f32 sums, out and dx rounded once (as autocast, so
// lora_forward adds scale * rb(xa) rb(B)^T to the widened out). With f32
// storage the wrappers call pq_cpu_* directly. The scratch is the process's:
// ops run from one thread.
#ifndef PQ_ACT_CPU_H
#define PQ_ACT_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "ops.h"

enum { PQ_ACT_SLOTS = 8 };

static inline int pq_act_bf16(void) { return pq_ops_act_dtype() == PQ_BF16; }
// Scratch slot s (0 .. PQ_ACT_SLOTS - 1) of at least n floats, contents
// undefined; kept for the next call (freed at exit).
float *pq_act_scratch(int s, size_t n);
// Slot s holding the n bf16 elements at p widened to f32; NULL when p is.
float *pq_act_widen(int s, const float *p, size_t n);
// dst (n bf16 elements) = src (n floats) rounded to nearest even.
void pq_act_narrow(float *dst, const float *src, size_t n);
// The rotations' wrappers (rope_forward, rope_backward and their q,k pairs): x (N,NH,HS) rotated in place by f
// (pq_cpu_rope_forward or pq_cpu_rope_backward), on an f32 copy with bf16 storage.
typedef void (*PqRopeFn)(float *x, const int32_t *pos, const float *inv_freq, int N, int NH, int HS);
void pq_act_rope(PqRopeFn f, float *x, const int32_t *pos, const float *inv_freq, int N, int NH, int HS);

#endif
