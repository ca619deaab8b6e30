// dist.c: rank and world size from the launcher's environment, the
// communicator's unique id over TCP from rank 0, and the sums over ranks
// (see dist.h). The collectives themselves are the backend's (NCCL).
#include "dist.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "ops.h"

// An integer environment variable: 1 set and valid, 0 unset, -1 invalid.
static int env_int(const char *name, int *out, PqErr *e) {
    const char *s = getenv(name);
    if (!s || !*s) return 0;
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || v < 0 || v > 1 << 20) {
        pq_err(e, "%s=%s is not a non-negative integer", name, s);
        return -1;
    }
    *out = (int)v;
    return 1;
}

int pq_dist_from_env(PqDist *d, PqErr *e) {
    memset(d, 0, sizeof *d);
    d->world = 1;
    static const char *const vars[][3] = {{"RANK", "WORLD_SIZE", "LOCAL_RANK"},
                                          {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
                                          {"SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"}};
    for (int k = 0; k < 3; k++) {
        int r = 0, w = 0, l = -1;
        int hr = env_int(vars[k][0], &r, e), hw = env_int(vars[k][1], &w, e), hl = env_int(vars[k][2], &l, e);
        if (hr < 0 || hw < 0 || hl < 0) return -1;
        if (!hr && !hw) continue;
        if (!hr || !hw || w < 1 || r >= w) {
            pq_err(e, "%s and %s must both be set, with 0 <= rank < world size", vars[k][0], vars[k][1]);
            return -1;
        }
        d->rank = r, d->world = w;
        d->local_rank = hl ? l : r; // one host when the launcher does not say
        break;
    }
    const char *a = getenv("MASTER_ADDR");
    snprintf(d->addr, sizeof d->addr, "%s", a && *a ? a : "127.0.0.1");
    d->port = 29500;
    int p;
    int hp = env_int("MASTER_PORT", &p, e);
    if (hp < 0) return -1;
    if (hp) {
        if (p < 1 || p > 65535) {
            pq_err(e, "MASTER_PORT=%d is not a TCP port", p);
            return -1;
        }
        d->port = p;
    }
    return 0;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int send_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        p += k, n -= (size_t)k;
    }
    return 0;
}

// Receives n bytes before the deadline.
static int recv_all(int fd, void *buf, size_t n, double deadline) {
    char *p = buf;
    while (n) {
        int ms = (int)((deadline - now_s()) * 1000);
        if (ms <= 0) return -1;
        struct pollfd pf = {fd, POLLIN, 0};
        int r = poll(&pf, 1, ms);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        ssize_t k = recv(fd, p, n, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        p += k, n -= (size_t)k;
    }
    return 0;
}

// Each peer says its rank (4 bytes, network order) and gets the id.
static int serve_id(int world, int port, const void *id, size_t n, int timeout_s, PqErr *e) {
    int fd = socket(AF_INET6, SOCK_STREAM, 0), v6 = 1;
    if (fd < 0) fd = socket(AF_INET, SOCK_STREAM, 0), v6 = 0;
    if (fd < 0) {
        pq_err(e, "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1, zero = 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    int rc = -1;
    if (v6) {
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        struct sockaddr_in6 sa = {0};
        sa.sin6_family = AF_INET6;
        sa.sin6_addr = in6addr_any;
        sa.sin6_port = htons((uint16_t)port);
        rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    } else {
        struct sockaddr_in sa = {0};
        sa.sin_family = AF_INET;
        sa.sin_addr.s_addr = htonl(INADDR_ANY);
        sa.sin_port = htons((uint16_t)port);
        rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    }
    if (rc || listen(fd, world)) {
        pq_err(e, "rank 0: cannot listen on port %d: %s", port, strerror(errno));
        close(fd);
        return -1;
    }
    double deadline = now_s() + timeout_s;
    int served = 0;
    while (served < world - 1) {
        int ms = (int)((deadline - now_s()) * 1000);
        struct pollfd pf = {fd, POLLIN, 0};
        int r = ms > 0 ? poll(&pf, 1, ms) : 0;
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            pq_err(e, "rank 0: only %d of %d ranks connected on port %d within %d s", served + 1, world, port,
                   timeout_s);
            close(fd);
            return -1;
        }
        int c = accept(fd, NULL, NULL);
        if (c < 0) continue;
        uint32_t peer;
        if (recv_all(c, &peer, 4, deadline) == 0 && ntohl(peer) > 0 && (int)ntohl(peer) < world &&
            send_all(c, id, n) == 0)
            served++;
        close(c);
    }
    close(fd);
    return 0;
}

static int fetch_id(int rank, const char *addr, int port, void *id, size_t n, int timeout_s, PqErr *e) {
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    double deadline = now_s() + timeout_s;
    const char *why = "no answer";
    for (;;) {
        struct addrinfo hints = {0}, *res = NULL;
        hints.ai_socktype = SOCK_STREAM;
        int g = getaddrinfo(addr, ps, &hints, &res);
        if (g) why = gai_strerror(g);
        for (struct addrinfo *ai = g ? NULL : res; ai; ai = ai->ai_next) {
            int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
            if (fd < 0) continue;
            if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
                uint32_t me = htonl((uint32_t)rank);
                if (send_all(fd, &me, 4) == 0 && recv_all(fd, id, n, deadline) == 0) {
                    close(fd);
                    freeaddrinfo(res);
                    return 0;
                }
                why = "connection closed before the id arrived";
            } else {
                why = strerror(errno);
            }
            close(fd);
        }
        if (res) freeaddrinfo(res);
        if (now_s() >= deadline) break;
        usleep(100 * 1000);
    }
    pq_err(e, "rank %d: cannot get the group id from %s:%d within %d s (%s)", rank, addr, port, timeout_s, why);
    return -1;
}

int pq_dist_exchange(int rank, int world, const char *addr, int port, void *id, size_t n, int timeout_s, PqErr *e) {
    if (world <= 1) return 0;
    return rank == 0 ? serve_id(world, port, id, n, timeout_s, e) : fetch_id(rank, addr, port, id, n, timeout_s, e);
}

int pq_dist_init(PqDist *d, int timeout_s, PqErr *e) {
    d->comm = NULL;
    if (d->world == 1) return 0;
    size_t n = pq_comm_id_size();
    unsigned char *id = pq_xcalloc(1, n ? n : 1);
    int rc = -1;
    if (d->rank == 0 && n && pq_comm_new_id(id, e)) goto out;
    if (n == 0) { // this backend has no communicator: say why
        rc = pq_comm_init(&d->comm, id, d->rank, d->world, e);
        goto out;
    }
    if (pq_dist_exchange(d->rank, d->world, d->addr, d->port, id, n, timeout_s, e)) goto out;
    rc = pq_comm_init(&d->comm, id, d->rank, d->world, e);
out:
    free(id);
    return rc;
}

void pq_dist_free(PqDist *d) {
    pq_comm_free(d->comm);
    d->comm = NULL;
}

void pq_dist_sum(PqDist *d, float *buf, size_t n) {
    if (d->world > 1) pq_comm_sum_f32(d->comm, buf, n);
}

void pq_dist_sum_host(PqDist *d, double *buf, size_t n) {
    if (d->world <= 1 || !n) return;
    double *db = pq_dev_alloc(n * sizeof *db);
    pq_dev_upload(db, buf, n * sizeof *db);
    pq_comm_sum_f64(d->comm, db, n);
    pq_dev_download(buf, db, n * sizeof *db);
    pq_dev_free(db);
}

int pq_device_select(const char *spec, PqErr *e) {
    int cpu = !strcmp(pq_ops_backend(), "cpu");
    if (!strcmp(spec, "cpu")) {
        if (cpu) return 0;
        pq_err(e, "--device cpu: this is the CUDA build (the CPU build is made by plain make)");
        return -1;
    }
    const char *s = strncmp(spec, "cuda:", 5) ? spec : spec + 5;
    char *end;
    long n = strtol(s, &end, 10);
    if (!*s || *end || n < 0 || n > 1024) {
        pq_err(e, "--device: cuda:N or cpu, not '%s'", spec);
        return -1;
    }
    if (cpu) {
        pq_err(e, "--device %s: this build has no CUDA backend (build it with make CUDA=1)", spec);
        return -1;
    }
    if (pq_ops_set_device((int)n)) {
        pq_err(e, "--device %s: no such CUDA device", spec);
        return -1;
    }
    return 0;
}
