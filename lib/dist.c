// dist.c: rank and world size from the launcher's environment, the
// communicator's unique id over TCP from rank 0, and the sums over ranks
// (see dist.h). The collectives themselves are the backend's (NCCL in CUDA
// builds, lib/dist_cpu.c in CPU builds).
#include "dist.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
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

int pq_tcp_send(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        p += k, n -= (size_t)k;
    }
    return 0;
}

int pq_tcp_recv(int fd, void *buf, size_t n, double timeout_s) {
    char *p = buf;
    double deadline = now_s() + timeout_s;
    while (n) {
        int ms = -1;
        if (timeout_s >= 0 && (ms = (int)((deadline - now_s()) * 1000)) <= 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        struct pollfd pf = {fd, POLLIN, 0};
        int r = poll(&pf, 1, ms);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) continue; // the deadline is checked above
        ssize_t k = recv(fd, p, n, 0);
        if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (k == 0) errno = 0; // closed by the peer
        if (k <= 0) return -1;
        p += k, n -= (size_t)k;
    }
    return 0;
}

int pq_tcp_listen(int port, int backlog, int *bound, PqErr *e) {
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0), v6 = 1;
    if (fd < 0) fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), v6 = 0;
    if (fd < 0) {
        pq_err(e, "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1, zero = 0, rc;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
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
    if (rc || listen(fd, backlog)) {
        pq_err(e, "cannot listen on port %d: %s", port, strerror(errno));
        close(fd);
        return -1;
    }
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len)) {
        pq_err(e, "getsockname: %s", strerror(errno));
        close(fd);
        return -1;
    }
    *bound = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                            : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

// One non-blocking connect, waiting at most ms: 0 connected, else errno.
static int connect_within(int fd, const struct sockaddr *sa, socklen_t len, int ms) {
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    int err = 0;
    if (connect(fd, sa, len)) {
        err = errno;
        if (err == EINPROGRESS) {
            struct pollfd pf = {fd, POLLOUT, 0};
            int r;
            while ((r = poll(&pf, 1, ms)) < 0 && errno == EINTR) {}
            socklen_t el = sizeof err;
            if (r <= 0) err = ETIMEDOUT;
            else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el)) err = errno;
        }
    }
    fcntl(fd, F_SETFL, fl);
    return err;
}

int pq_tcp_connect(const char *addr, int port, int timeout_s, PqErr *e) {
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
            int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
            if (fd < 0) continue;
            int ms = (int)((deadline - now_s()) * 1000);
            int err = connect_within(fd, ai->ai_addr, ai->ai_addrlen, ms > 100 ? ms : 100);
            if (!err) {
                freeaddrinfo(res);
                return fd;
            }
            why = strerror(err);
            close(fd);
        }
        if (res) freeaddrinfo(res);
        if (now_s() >= deadline) break;
        usleep(100 * 1000);
    }
    pq_err(e, "cannot connect to %s:%d within %d s (%s)", addr, port, timeout_s, why);
    return -1;
}

// Each peer says its rank (4 bytes, network order) and gets the id.
static int serve_id(int world, int port, const void *id, size_t n, int timeout_s, PqErr *e) {
    int bound, fd = pq_tcp_listen(port, world, &bound, e);
    if (fd < 0) {
        char msg[sizeof e->msg];
        snprintf(msg, sizeof msg, "%s", e->msg);
        pq_err(e, "rank 0: %s", msg);
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
        if (pq_tcp_recv(c, &peer, 4, deadline - now_s()) == 0 && ntohl(peer) > 0 && (int)ntohl(peer) < world &&
            pq_tcp_send(c, id, n) == 0)
            served++;
        close(c);
    }
    close(fd);
    return 0;
}

static int fetch_id(int rank, const char *addr, int port, void *id, size_t n, int timeout_s, PqErr *e) {
    double deadline = now_s() + timeout_s;
    const char *why = "connection closed before the id arrived";
    int fd = pq_tcp_connect(addr, port, timeout_s, e);
    if (fd < 0) why = e->msg;
    else {
        uint32_t me = htonl((uint32_t)rank);
        if (pq_tcp_send(fd, &me, 4) == 0 && pq_tcp_recv(fd, id, n, deadline - now_s()) == 0) {
            close(fd);
            return 0;
        }
        close(fd);
    }
    char msg[sizeof e->msg];
    snprintf(msg, sizeof msg, "%s", why);
    pq_err(e, "rank %d: cannot get the group id from %s:%d within %d s (%s)", rank, addr, port, timeout_s, msg);
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
    unsigned char *id = pq_xcalloc(1, n);
    int rc = -1;
    if (d->rank == 0 && pq_comm_new_id(id, e)) goto out;
    if (pq_dist_exchange(d->rank, d->world, d->addr, d->port, id, n, timeout_s, e)) goto out;
    rc = pq_comm_init(&d->comm, id, d->rank, d->world, d->addr, timeout_s, e);
out:
    free(id);
    return rc;
}

void pq_dist_free(PqDist *d) {
    pq_comm_free(d->comm);
    d->comm = NULL;
}

int pq_dist_sum(PqDist *d, float *buf, size_t n, PqErr *e) {
    return d->world > 1 ? pq_comm_sum_f32(d->comm, buf, n, e) : 0;
}

int pq_dist_sum_host(PqDist *d, double *buf, size_t n, PqErr *e) {
    if (d->world <= 1 || !n) return 0;
    double *db = pq_dev_alloc(n * sizeof *db);
    pq_dev_upload(db, buf, n * sizeof *db);
    int rc = pq_comm_sum_f64(d->comm, db, n, e);
    pq_dev_download(buf, db, n * sizeof *db);
    pq_dev_free(db);
    return rc;
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
