// dist_cpu.c: the communicator of CPU builds, their stand-in for NCCL (CUDA
// builds use NCCL, lib/cuda/dist_nccl.cu; no collective is written for GPUs),
// so pq-dpo's whole data-parallel path runs and is tested on CPUs.
//
// Small and deterministic rather than fast: rank 0 holds a TCP connection to
// every other rank; a sum is every rank sending its buffer to rank 0, which
// adds them in rank order ((r0 + r1) + r2 ...) and sends the result back, so
// every rank gets the same bits, run after run. Each message says its type,
// length and sequence number, so ranks out of step fail instead of mixing
// data. A rank that dies closes its sockets (and keepalives catch a dead
// host): the others' sums then fail with a message naming it, never wait
// forever. Left out of CUDA=1 builds.
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "dist.h"

#define MAGIC 0x70716463u // "pqdc"

// The group id rank 0 makes and lib/dist.c sends to the others.
typedef struct CpuId {
    uint32_t magic;
    uint32_t port;     // where rank 0 listens for the others
    uint64_t nonce;    // tells this group's connections from strays
    int32_t listen_fd; // rank 0's own: its listening socket (meaningless to the others)
} CpuId;

// A rank's greeting to rank 0, and each sum's header.
typedef struct Hello {
    uint32_t magic, rank;
    uint64_t nonce;
} Hello;
typedef struct Header {
    uint32_t kind; // bytes per element: 4 f32, 8 f64
    uint32_t seq;  // which sum of the run
    uint64_t n;    // elements
} Header;

typedef struct CpuComm {
    int rank, world;
    int *fd;      // rank 0: fd[r] its connection to rank r >= 1; the others: fd[0], theirs to rank 0
    char *tmp;    // rank 0: the others' buffers, (world - 1) x cap bytes
    size_t cap;
    uint32_t seq; // sums done
    int failed;   // after an error every later sum fails at once
} CpuComm;

size_t pq_comm_id_size(void) { return sizeof(CpuId); }

int pq_comm_new_id(void *id, PqErr *e) {
    CpuId c = {MAGIC, 0, 0, -1};
    int port;
    if ((c.listen_fd = pq_tcp_listen(0, 64, &port, e)) < 0) return -1;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t seed[3] = {(uint64_t)ts.tv_sec, (uint64_t)ts.tv_nsec, (uint64_t)getpid()};
    c.port = (uint32_t)port;
    c.nonce = pq_hash_bytes(seed, sizeof seed);
    memcpy(id, &c, sizeof c);
    return 0;
}

static void tune(int fd) {
    int one = 1, idle = 60, intvl = 10, cnt = 6;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Rank 0: accepts the world - 1 others.
static int accept_all(CpuComm *c, int lfd, uint64_t nonce, int timeout_s, PqErr *e) {
    double deadline = now_s() + timeout_s;
    int joined = 0;
    while (joined < c->world - 1) {
        int ms = (int)((deadline - now_s()) * 1000);
        struct pollfd pf = {lfd, POLLIN, 0};
        int r = ms > 0 ? poll(&pf, 1, ms) : 0;
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            pq_err(e, "rank 0: only %d of %d ranks joined the group within %d s", joined + 1, c->world, timeout_s);
            return -1;
        }
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) continue;
        Hello h;
        if (pq_tcp_recv(fd, &h, sizeof h, deadline - now_s()) || h.magic != MAGIC || h.nonce != nonce) {
            close(fd); // not one of ours
            continue;
        }
        int peer = (int)h.rank;
        if (peer < 1 || peer >= c->world || c->fd[peer] >= 0) {
            pq_err(e, "rank 0: a second process says it is rank %d (of %d): check RANK/WORLD_SIZE", peer, c->world);
            close(fd);
            return -1;
        }
        uint32_t ack = MAGIC;
        if (pq_tcp_send(fd, &ack, sizeof ack)) {
            close(fd);
            continue;
        }
        tune(fd);
        c->fd[peer] = fd;
        joined++;
    }
    return 0;
}

int pq_comm_init(void **comm, const void *id, int rank, int world, const char *addr, int timeout_s, PqErr *e) {
    *comm = NULL;
    CpuId cid;
    memcpy(&cid, id, sizeof cid);
    if (world == 1) {
        if (rank == 0 && cid.magic == MAGIC && cid.listen_fd >= 0) close(cid.listen_fd);
        return 0;
    }
    if (cid.magic != MAGIC) {
        pq_err(e, "rank %d: the group id is not a CPU build's (every rank must run the same build)", rank);
        return -1;
    }
    CpuComm *c = pq_xcalloc(1, sizeof *c);
    c->rank = rank, c->world = world;
    c->fd = pq_xmalloc((size_t)world * sizeof *c->fd);
    for (int r = 0; r < world; r++) c->fd[r] = -1;
    int rc = 0;
    if (rank == 0) {
        rc = accept_all(c, cid.listen_fd, cid.nonce, timeout_s, e);
        close(cid.listen_fd);
    } else {
        double deadline = now_s() + timeout_s;
        PqErr ce;
        int fd = pq_tcp_connect(addr, (int)cid.port, timeout_s, &ce);
        Hello h = {MAGIC, (uint32_t)rank, cid.nonce};
        uint32_t ack = 0;
        if (fd < 0) {
            pq_err(e, "rank %d: cannot join rank 0's group: %s", rank, ce.msg);
            rc = -1;
        } else if (pq_tcp_send(fd, &h, sizeof h) || pq_tcp_recv(fd, &ack, sizeof ack, deadline - now_s()) ||
                   ack != MAGIC) {
            pq_err(e, "rank %d: rank 0 (%s:%u) did not let it join the group", rank, addr, cid.port);
            close(fd);
            rc = -1;
        } else {
            tune(fd);
            c->fd[0] = fd;
        }
    }
    if (rc) {
        pq_comm_free(c);
        return -1;
    }
    *comm = c;
    return 0;
}

// After an error: every connection closed at once, so the others learn of it.
static int fail(CpuComm *c) {
    c->failed = 1;
    for (int r = 0; r < c->world; r++)
        if (c->fd[r] >= 0) close(c->fd[r]), c->fd[r] = -1;
    return -1;
}

static const char *kind_name(uint32_t kind) { return kind == 4 ? "floats" : kind == 8 ? "doubles" : "items"; }

// Rank 0: every other rank's header and buffer, whichever comes first; then
// the sum in rank order, sent back to each.
static int root_sum(CpuComm *c, void *buf, size_t n, uint32_t kind, PqErr *e) {
    size_t bytes = n * kind, want = sizeof(Header) + bytes;
    if (c->cap < bytes) {
        free(c->tmp);
        c->tmp = pq_xmalloc((size_t)(c->world - 1) * bytes);
        c->cap = bytes;
    }
    size_t *got = pq_xcalloc((size_t)c->world, sizeof *got);
    Header *hd = pq_xcalloc((size_t)c->world, sizeof *hd);
    struct pollfd *pf = pq_xmalloc((size_t)c->world * sizeof *pf);
    int *who = pq_xmalloc((size_t)c->world * sizeof *who), left = c->world - 1, rc = 0;
    while (left > 0 && rc == 0) {
        int np = 0;
        for (int r = 1; r < c->world; r++)
            if (got[r] < want) pf[np] = (struct pollfd){c->fd[r], POLLIN, 0}, who[np++] = r;
        if (poll(pf, (nfds_t)np, -1) < 0) {
            if (errno == EINTR) continue;
            pq_err(e, "rank 0: poll: %s", strerror(errno));
            rc = -1;
            break;
        }
        for (int i = 0; i < np && rc == 0; i++) {
            if (!pf[i].revents) continue;
            int r = who[i];
            char *dst = got[r] < sizeof(Header) ? (char *)&hd[r] + got[r]
                                                : c->tmp + (size_t)(r - 1) * bytes + (got[r] - sizeof(Header));
            size_t room = got[r] < sizeof(Header) ? sizeof(Header) - got[r] : want - got[r];
            ssize_t k = recv(c->fd[r], dst, room, MSG_DONTWAIT);
            if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
            if (k <= 0) {
                if (k == 0) pq_err(e, "rank %d left the group (its connection closed: it exited or was killed)", r);
                else pq_err(e, "rank %d: connection lost: %s", r, strerror(errno));
                rc = -1;
                break;
            }
            size_t before = got[r];
            got[r] += (size_t)k;
            if (before < sizeof(Header) && got[r] >= sizeof(Header) &&
                (hd[r].kind != kind || hd[r].n != n || hd[r].seq != c->seq)) {
                pq_err(e, "the ranks are out of step: rank %d sums %llu %s (sum %u), rank 0 %zu %s (sum %u)", r,
                       (unsigned long long)hd[r].n, kind_name(hd[r].kind), hd[r].seq, n, kind_name(kind), c->seq);
                rc = -1;
                break;
            }
            if (got[r] == want) left--;
        }
    }
    if (rc == 0) {
        if (kind == 4) {
            float *b = buf;
            for (int r = 1; r < c->world; r++) {
                const float *t = (const float *)(c->tmp + (size_t)(r - 1) * bytes);
                for (size_t i = 0; i < n; i++) b[i] += t[i];
            }
        } else {
            double *b = buf;
            for (int r = 1; r < c->world; r++) {
                const double *t = (const double *)(c->tmp + (size_t)(r - 1) * bytes);
                for (size_t i = 0; i < n; i++) b[i] += t[i];
            }
        }
        for (int r = 1; r < c->world && rc == 0; r++)
            if (pq_tcp_send(c->fd[r], buf, bytes)) {
                pq_err(e, "rank %d left the group (connection lost while sending it the sum)", r);
                rc = -1;
            }
    }
    free(got);
    free(hd);
    free(pf);
    free(who);
    return rc;
}

// The other ranks: header and buffer to rank 0, the sum back.
static int leaf_sum(CpuComm *c, void *buf, size_t n, uint32_t kind, PqErr *e) {
    Header h = {kind, c->seq, n};
    if (pq_tcp_send(c->fd[0], &h, sizeof h) || pq_tcp_send(c->fd[0], buf, n * kind) ||
        pq_tcp_recv(c->fd[0], buf, n * kind, -1)) {
        if (errno == 0 || errno == EPIPE || errno == ECONNRESET)
            pq_err(e, "rank %d: rank 0 left the group (its connection closed: it exited or failed, perhaps "
                      "because another rank did)", c->rank);
        else pq_err(e, "rank %d: connection to rank 0 lost: %s", c->rank, strerror(errno));
        return -1;
    }
    return 0;
}

static int sum(void *comm, void *buf, size_t n, uint32_t kind, PqErr *e) {
    CpuComm *c = comm;
    if (!c || !n) return 0;
    if (c->failed) {
        pq_err(e, "rank %d: the group failed earlier", c->rank);
        return -1;
    }
    int rc = c->rank == 0 ? root_sum(c, buf, n, kind, e) : leaf_sum(c, buf, n, kind, e);
    c->seq++;
    return rc ? fail(c) : 0;
}

int pq_comm_sum_f32(void *comm, float *buf, size_t n, PqErr *e) { return sum(comm, buf, n, 4, e); }
int pq_comm_sum_f64(void *comm, double *buf, size_t n, PqErr *e) { return sum(comm, buf, n, 8, e); }

void pq_comm_free(void *comm) {
    CpuComm *c = comm;
    if (!c) return;
    for (int r = 0; r < c->world; r++)
        if (c->fd[r] >= 0) close(c->fd[r]);
    free(c->fd);
    free(c->tmp);
    free(c);
}
