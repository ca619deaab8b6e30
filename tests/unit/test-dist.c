// test-dist.c: rank and world size from each launcher's environment
// variables, their errors, and the TCP exchange of the group id between
// forked processes (rank 0 serving, the others fetching, some started late).
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dist.h"

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
    pq_dist_sum_host(&d, x, 2);
    pq_dist_sum(&d, f, 1);
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

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    test_env();
    test_exchange(2);
    test_exchange(4);
    test_timeout();
    if (fails) fprintf(stderr, "%d checks failed\n", fails);
    return fails ? 1 : 0;
}
