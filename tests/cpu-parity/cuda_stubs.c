// cuda_stubs.c: the CUDA-only calls of tests/gpu/parity-ops.c, parity-act.c and parity-paged.c, for make
// cpu-parity, which links them against the CPU library: a device that is
// there (linked first, it wins over device_cpu.c's "no device"), and the
// CUDA backend's switches and counters as no-ops.
#include "cuda/sdpa.h"
#include "cuda/tuning.h"
#include "ops.h"

int pq_ops_set_device(int n) {
    (void)n;
    return 0;
}
void pq_cuda_set_gemv(int on) { (void)on; }
void pq_cuda_set_decode_fuse(int on) { (void)on; }
void pq_cuda_set_paged_keys(int keys) { (void)keys; }
void pq_cuda_set_pdl(int on) { (void)on; }
void pq_cuda_set_lora_gemm(int kind) { (void)kind; }
int pq_attention_cudnn_calls(void) { return 0; }
const char *pq_attention_cudnn_error(void) { return "the CPU backend"; }
int pq_paged_cudnn_calls(void) { return 0; }
const char *pq_paged_cudnn_error(void) { return ""; }
