// dist_cpu.c: the communicator of CPU builds: a single process, where a sum
// over ranks is the identity. Several processes need the CUDA build (NCCL).
// Left out of CUDA=1 builds (lib/cuda/dist_nccl.cu replaces it).
#include "dist.h"

size_t pq_comm_id_size(void) { return 0; }
int pq_comm_new_id(void *id, PqErr *e) {
    (void)id;
    pq_err(e, "this build runs one process only: data parallelism needs the CUDA build (make CUDA=1)");
    return -1;
}
int pq_comm_init(void **comm, const void *id, int rank, int world, PqErr *e) {
    (void)id, (void)rank;
    *comm = NULL;
    if (world == 1) return 0;
    pq_err(e, "this build runs one process only: data parallelism needs the CUDA build (make CUDA=1)");
    return -1;
}
void pq_comm_sum_f32(void *comm, float *buf, size_t n) { (void)comm, (void)buf, (void)n; }
void pq_comm_sum_f64(void *comm, double *buf, size_t n) { (void)comm, (void)buf, (void)n; }
void pq_comm_free(void *comm) { (void)comm; }
