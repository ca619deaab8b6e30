// dist.h: data parallelism over processes, one per GPU: rank and world size
// from what launchers set (RANK/WORLD_SIZE as torchrun, pq-dpo --devices and
// scripts/launch-dpo, Open MPI's mpirun, Slurm's srun), the communicator's
// unique id sent over TCP from rank 0 (MASTER_ADDR:MASTER_PORT), and sums over
// all ranks (NCCL all-reduce in CUDA builds; in CPU builds, lib/dist_cpu.c's
// TCP stand-in, so the same data-parallel code runs and is tested on CPUs).
#ifndef PQ_DIST_H
#define PQ_DIST_H

#include <stddef.h>

#include "util.h"

typedef struct PqDist {
    int rank, world;  // this process and how many
    int local_rank;   // index on this host (which of the host's GPUs)
    char addr[256];   // MASTER_ADDR (rank 0's host), default 127.0.0.1
    int port;         // MASTER_PORT, default 29500
    void *comm;       // the backend's communicator (NULL while world == 1)
} PqDist;

// Reads the environment: RANK/WORLD_SIZE/LOCAL_RANK, else
// OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK, else SLURM_PROCID/NTASKS/LOCALID;
// none set: rank 0 of 1. -1 with a message on inconsistent values.
int pq_dist_from_env(PqDist *d, PqErr *e);
// Joins the group when world > 1 (after the device is selected): rank 0
// creates the id and serves it to the others, then every rank builds the
// communicator. timeout_s bounds the wait for the others.
int pq_dist_init(PqDist *d, int timeout_s, PqErr *e);
void pq_dist_free(PqDist *d);
// buf (n floats, backend memory): in place, the sum over ranks. Every rank
// calls it with the same n, in the same order as the other sums. 0, or -1
// with a message (a rank left the group: it failed or was killed).
int pq_dist_sum(PqDist *d, float *buf, size_t n, PqErr *e);
// buf (n doubles, host memory): in place, the sum over ranks. 0 or -1.
int pq_dist_sum_host(PqDist *d, double *buf, size_t n, PqErr *e);

// Rank 0 sends id (n bytes) to each of the world - 1 others over TCP on
// port (listening on every address); the others connect to addr:port
// (retrying until timeout_s) and receive it. 0 or -1 with a message.
int pq_dist_exchange(int rank, int world, const char *addr, int port, void *id, size_t n, int timeout_s, PqErr *e);

// --device SPEC: "cuda:N" (or "N") selects GPU N of the CUDA build, "cpu"
// is the CPU build's only device. 0, or -1 with a message (no such device,
// or a device of the other build).
int pq_device_select(const char *spec, PqErr *e);

// TCP helpers (lib/dist.c), shared with lib/dist_cpu.c.
// A socket listening on port (0: any free one) of every address; *bound
// gets the port. The descriptor, or -1 with a message.
int pq_tcp_listen(int port, int backlog, int *bound, PqErr *e);
// A connection to addr:port, retried until timeout_s (the listener may not be
// up yet). The descriptor, or -1 with a message.
int pq_tcp_connect(const char *addr, int port, int timeout_s, PqErr *e);
// Whole buffers; 0, or -1 (errno 0 when the peer closed the connection).
// recv waits at most timeout_s (< 0: as long as the peer lives); signals do
// not interrupt either.
int pq_tcp_send(int fd, const void *buf, size_t n);
int pq_tcp_recv(int fd, void *buf, size_t n, double timeout_s);

// The backend's communicator (lib/dist_cpu.c: TCP through rank 0, the CPU
// build's stand-in for NCCL; lib/cuda/dist_nccl.cu: NCCL).
size_t pq_comm_id_size(void);
// Rank 0: a new group id (the CPU build starts listening for the others here).
int pq_comm_new_id(void *id, PqErr *e);
// Every rank, with rank 0's id: joins the group. addr is rank 0's host
// (MASTER_ADDR); timeout_s bounds the wait for the others.
int pq_comm_init(void **comm, const void *id, int rank, int world, const char *addr, int timeout_s, PqErr *e);
int pq_comm_sum_f32(void *comm, float *buf, size_t n, PqErr *e);  // backend memory; 0 or -1
int pq_comm_sum_f64(void *comm, double *buf, size_t n, PqErr *e); // backend memory; 0 or -1
void pq_comm_free(void *comm);

#endif
