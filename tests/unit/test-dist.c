// test-dist.c: rank and world size from each launcher's environment
// variables, their errors, the TCP exchange of the group id between forked
// processes (rank 0 serving, the others fetching, some started late), and
// the CPU build's communicator: exact sums in rank order on every rank, and
// a rank that dies or is out of step giving errors, not a hang.
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dist.h"
#include "ops.h"

static int fails;
#define CHECK(c)                                                                                                    \
    do {                                                                                                            \
        if (!(c)) {                                                                                                 \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c);                                   \
            fails++;                                                                                                \
        }                                                                                                           \
    } while (0)

static const char *const all_vars[] = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "OMPI_COMM_WORLD_RANK",
                                       "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_PROCID",
                                       "SLURM_NTASKS", "SLURM_LOCALID", "MASTER_ADDR", "MASTER_PORT"};
static void clear_env(void) {
    for (size_t i = 0; i < sizeof all_vars / sizeof *all_vars; i++) unsetenv(all_vars[i]);
}

static void test_env(void) {
    PqDist d;
    PqErr e = {0};
    clear_env();
    CHECK(pq_dist_from_env(&d, &e) == 0 && d.rank == 0 && d.world == 1 && d.local_rank == 0);
    CHECK(!strcmp(d.addr, "127.0.0.1") && d.port == 29500);
    // Slurm
    setenv("SLURM_PROCID", "5", 1), setenv("SLURM_NTASKS", "8", 1), setenv("SLURM_LOCALID", "1", 1);
    CHECK(pq_dist_from_env(&d, &e) == 0 && d.rank == 5 && d.world == 8 && d.local_rank == 1);
    // Open MPI wins over Slurm
    setenv("OMPI_COMM_WORLD_RANK", "2", 1), setenv("OMPI_COMM_WORLD_SIZE", "3", 1);
    CHECK(pq_dist_from_env(&d, &e) == 0 && d.rank == 2 && d.world == 3 && d.local_rank == 2);
    // RANK/WORLD_SIZE win over both; MASTER_*
    setenv("RANK", "1", 1), setenv("WORLD_SIZE", "2", 1), setenv("LOCAL_RANK", "0", 1);
    setenv("MASTER_ADDR", "node7", 1), setenv("MASTER_PORT", "1234", 1);
    CHECK(pq_dist_from_env(&d, &e) == 0 && d.rank == 1 && d.world == 2 && d.local_rank == 0);
    CHECK(!strcmp(d.addr, "node7") && d.port == 1234);
    // errors
    setenv("RANK", "2", 1);
    CHECK(pq_dist_from_env(&d, &e) == -1 && strstr(e.msg, "rank"));
    setenv("RANK", "x", 1);
    CHECK(pq_dist_from_env(&d, &e) == -1 && strstr(e.msg, "RANK=x"));
    setenv("RANK", "0", 1), unsetenv("WORLD_SIZE");
    CHECK(pq_dist_from_env(&d, &e) == -1 && strstr(e.msg, "WORLD_SIZE"));
    setenv("WORLD_SIZE", "2", 1), setenv("MASTER_PORT", "70000", 1);
    CHECK(pq_dist_from_env(&d, &e) == -1 && strstr(e.msg, "MASTER_PORT"));
    // a CPU build joins a group of one, and refuses more
    clear_env();
    CHECK(pq_dist_from_env(&d, &e) == 0 && pq_dist_init(&d, 1, &e) == 0);
    double x[2] = {1.5, -2};
    float f[1] = {3};
    CHECK(pq_dist_sum_host(&d, x, 2, &e) == 0 && pq_dist_sum(&d, f, 1, &e) == 0);
    CHECK(x[0] == 1.5 && x[1] == -2 && f[0] == 3);
    pq_dist_free(&d);
    clear_env();
}

// world processes: rank 0 (this one) serves a 128-byte id; each child
// fetches it (the last one starting late) and exits 0 when it is right.
static void test_exchange(int world) {
    unsigned char id[128], got[128];
    for (int i = 0; i < 128; i++) id[i] = (unsigned char)(i * 7 + world);
    int port = 20000 + (int)(getpid() % 20000) + world;
    pid_t kids[8];
    for (int r = 1; r < world; r++) {
        kids[r] = fork();
        if (kids[r] == 0) {
            if (r == world - 1) usleep(300 * 1000); // a late rank
            PqErr e = {0};
            memset(got, 0, sizeof got);
            int rc = pq_dist_exchange(r, world, "localhost", port, got, sizeof got, 20, &e);
            if (rc) fprintf(stderr, "rank %d: %s\n", r, e.msg);
            _exit(rc == 0 && !memcmp(got, id, sizeof id) ? 0 : 1);
        }
    }
    PqErr e = {0};
    int rc = pq_dist_exchange(0, world, "localhost", port, id, sizeof id, 20, &e);
    if (rc) fprintf(stderr, "rank 0: %s\n", e.msg);
    CHECK(rc == 0);
    for (int r = 1; r < world; r++) {
        int st = 0;
        waitpid(kids[r], &st, 0);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
}

// a rank whose rank 0 never comes gives up with a message
static void test_timeout(void) {
    unsigned char got[16];
    PqErr e = {0};
    int port = 40000 + (int)(getpid() % 20000);
    CHECK(pq_dist_exchange(1, 2, "127.0.0.1", port, got, sizeof got, 1, &e) == -1);
    CHECK(strstr(e.msg, "cannot get the group id") != NULL);
    // and a rank 0 whose peers never come
    CHECK(pq_dist_exchange(0, 3, "127.0.0.1", port, got, sizeof got, 1, &e) == -1);
    CHECK(strstr(e.msg, "only 1 of 3") != NULL);
}

// A port nobody listens on now.
static int free_port(void) {
    PqErr e;
    int port = 0, fd = pq_tcp_listen(0, 1, &port, &e);
    if (fd < 0) {
        fprintf(stderr, "%s\n", e.msg);
        exit(1);
    }
    close(fd);
    return port;
}

// Rank r's i-th value: magnitudes from 1e-3 to 1e5, so that the rounding of
// a sum depends on its order.
static double value(int r, size_t i) {
    uint64_t h = pq_hash_bytes(&(uint64_t[2]){(uint64_t)r, (uint64_t)i}, 16);
    return ((double)(h >> 11) / 9007199254740992.0 - 0.5) * pow(10, (double)(h % 9) - 3);
}

// What a child reports: 0 all right, 1 a check failed.
static int child_fails;
#define KID_CHECK(c)                                                                                                \
    do {                                                                                                            \
        if (!(c)) {                                                                                                 \
            fprintf(stderr, "rank %d: %s:%d: CHECK failed: %s\n", d.rank, __FILE__, __LINE__, #c);                  \
            child_fails = 1;                                                                                        \
        }                                                                                                           \
    } while (0)

// world forked ranks (rank 1 starting late); what each does, by mode:
enum { SUMS, DIES_AFTER_INIT, OUT_OF_STEP };
static void run_group(int world, int mode, int victim) {
    int port = free_port();
    pid_t kids[8];
    for (int r = 0; r < world; r++) {
        if ((kids[r] = fork()) != 0) continue;
        alarm(60); // a hang fails the test instead of hanging it
        PqDist d = {.rank = r, .world = world, .local_rank = r, .port = port};
        snprintf(d.addr, sizeof d.addr, "127.0.0.1");
        PqErr e = {0};
        if (r == 1) usleep(200 * 1000);
        if (pq_dist_init(&d, 20, &e)) {
            fprintf(stderr, "rank %d: %s\n", r, e.msg);
            _exit(1);
        }
        if (mode == SUMS) { // f32 small and large (partial reads), f64; exact and the same on every rank
            size_t sizes[3] = {5, 300000, 9};
            for (int t = 0; t < 3; t++) {
                size_t n = sizes[t];
                if (t < 2) {
                    float *b = pq_xmalloc(n * sizeof *b), *want = pq_xmalloc(n * sizeof *want);
                    for (size_t i = 0; i < n; i++) {
                        b[i] = (float)value(r, i);
                        want[i] = (float)value(0, i);
                        for (int q = 1; q < world; q++) want[i] += (float)value(q, i); // in rank order
                    }
                    KID_CHECK(pq_dist_sum(&d, b, n, &e) == 0);
                    KID_CHECK(memcmp(b, want, n * sizeof *b) == 0);
                    free(b);
                    free(want);
                } else {
                    double b[9], want[9];
                    for (size_t i = 0; i < n; i++) {
                        b[i] = value(r, i);
                        want[i] = value(0, i);
                        for (int q = 1; q < world; q++) want[i] += value(q, i);
                    }
                    KID_CHECK(pq_dist_sum_host(&d, b, n, &e) == 0);
                    KID_CHECK(memcmp(b, want, sizeof b) == 0);
                }
            }
            // an empty sum is no sum
            KID_CHECK(pq_dist_sum(&d, NULL, 0, &e) == 0);
        } else if (mode == DIES_AFTER_INIT && r == victim) {
            _exit(0); // gone without a word: its sockets close
        } else if (mode == DIES_AFTER_INIT) {
            double v[3] = {1, 2, 3};
            double t0 = pq_now();
            KID_CHECK(pq_dist_sum_host(&d, v, 3, &e) == -1);
            KID_CHECK(pq_now() - t0 < 10);
            char want[64];
            snprintf(want, sizeof want, "rank %d left the group", r == 0 || victim == 0 ? victim : 0);
            KID_CHECK(strstr(e.msg, want) != NULL);
            if (!strstr(e.msg, want)) fprintf(stderr, "rank %d: message: %s\n", r, e.msg);
            // and every later sum fails at once
            KID_CHECK(pq_dist_sum_host(&d, v, 3, &e) == -1 && strstr(e.msg, "failed earlier"));
        } else if (mode == OUT_OF_STEP) { // rank victim sums one more element than the others
            double v[4] = {1, 2, 3, 4};
            KID_CHECK(pq_dist_sum_host(&d, v, r == victim ? 4 : 3, &e) == -1);
            if (r == 0) KID_CHECK(strstr(e.msg, "out of step") != NULL);
        }
        pq_dist_free(&d);
        _exit(child_fails);
    }
    for (int r = 0; r < world; r++) {
        int st = 0;
        waitpid(kids[r], &st, 0);
        if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
            fprintf(stderr, "world %d mode %d: rank %d: %s %d\n", world, mode, r,
                    WIFEXITED(st) ? "exit" : "signal", WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    test_env();
    test_exchange(2);
    test_exchange(4);
    test_timeout();
    if (strcmp(pq_ops_backend(), "cpu")) { // NCCL's sums need one GPU per rank: scripts/gpu-check's business
        if (fails) fprintf(stderr, "%d checks failed\n", fails);
        return fails ? 1 : 0;
    }
    run_group(2, SUMS, 0);
    run_group(3, SUMS, 0);
    run_group(3, DIES_AFTER_INIT, 2); // a rank dies: rank 0 names it, rank 1 hears rank 0 left
    run_group(2, DIES_AFTER_INIT, 0); // rank 0 dies
    run_group(2, OUT_OF_STEP, 1);
    if (fails) fprintf(stderr, "%d checks failed\n", fails);
    return fails ? 1 : 0;
}
