// dist_nccl.cu: the communicator of CUDA builds: NCCL, its unique id shared
// by lib/dist.c over TCP, sums in place on the backend's stream (the legacy
// default stream, so they are ordered after the ops that wrote the buffer).
#include <nccl.h>
#include <string.h>

#include "common.cuh"

extern "C" {
#include "dist.h"
}

extern "C" size_t pq_comm_id_size(void) { return sizeof(ncclUniqueId); }

extern "C" int pq_comm_new_id(void *id, PqErr *e) {
    ncclResult_t r = ncclGetUniqueId((ncclUniqueId *)id);
    if (r != ncclSuccess) {
        pq_err(e, "ncclGetUniqueId: %s", ncclGetErrorString(r));
        return -1;
    }
    return 0;
}

extern "C" int pq_comm_init(void **comm, const void *id, int rank, int world, const char *addr, int timeout_s,
                            PqErr *e) {
    (void)addr, (void)timeout_s; // NCCL finds its peers through the id
    *comm = NULL;
    if (world == 1) return 0;
    ncclComm_t c;
    ncclUniqueId uid;
    memcpy(&uid, id, sizeof uid);
    pq_cuda_blas(); // the device is selected and the context made before NCCL's
    ncclResult_t r = ncclCommInitRank(&c, world, uid, rank);
    if (r != ncclSuccess) {
        pq_err(e, "ncclCommInitRank (rank %d of %d): %s", rank, world, ncclGetErrorString(r));
        return -1;
    }
    *comm = c;
    return 0;
}

static int nccl_sum(void *comm, void *buf, size_t n, ncclDataType_t t, PqErr *e) {
    if (!comm || !n) return 0;
    ncclResult_t r = ncclAllReduce(buf, buf, n, t, ncclSum, (ncclComm_t)comm, pq_cuda_stream);
    if (r != ncclSuccess) {
        pq_err(e, "ncclAllReduce: %s", ncclGetErrorString(r));
        return -1;
    }
    return 0;
}

extern "C" int pq_comm_sum_f32(void *comm, float *buf, size_t n, PqErr *e) { return nccl_sum(comm, buf, n, ncclFloat, e); }
extern "C" int pq_comm_sum_f64(void *comm, double *buf, size_t n, PqErr *e) {
    return nccl_sum(comm, buf, n, ncclDouble, e);
}

extern "C" void pq_comm_free(void *comm) {
    if (comm) ncclCommDestroy((ncclComm_t)comm);
}
