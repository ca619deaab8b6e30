// test-graph: the host side of CUDA-graph decode steps (lib/graph.c, ops_graph.h).
// The buckets against explicit lists of them (the smallest bucket at or above
// n), keys distinct across every pair, the pointer fingerprint changing when
// any one pointer moves and not otherwise, and the CPU backend's twin: no
// graphs (pq_graphs_new NULL even with PQ_CUDA_GRAPH=1), the step run as a
// plain call.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "ops.h"
#include "ops_graph.h"

static int ran;
static void step(void *arg) { ran += *(int *)arg; }

int main(void) {
    // rows: 1 2 4 8, 16 24 .. 64, 96 128 .. 256, none above
    int rows[64], nr = 0;
    for (int b = 1; b <= 8; b *= 2) rows[nr++] = b;
    for (int b = 16; b <= 64; b += 8) rows[nr++] = b;
    for (int b = 96; b <= 256; b += 32) rows[nr++] = b;
    for (int n = 1; n <= 300; n++) {
        int want = 0;
        for (int k = nr - 1; k >= 0; k--)
            if (rows[k] >= n) want = rows[k];
        CHECK(pq_graph_rows(n) == want, "rows(%d) = %d, want %d", n, pq_graph_rows(n), want);
    }
    CHECK(pq_graph_rows(0) == 0 && pq_graph_rows(-3) == 0, "rows of no rows");
    // blocks: 1 2 4 8 16, then multiples of 16
    for (int n = 0; n <= 600; n++) {
        int want = 1;
        while (want < n && want < 16) want *= 2;
        if (n > 16) want = 16 * ((n + 15) / 16);
        int got = pq_graph_blocks(n);
        CHECK(got == want && got >= n, "blocks(%d) = %d, want %d", n, got, want);
    }
    // keys: distinct for distinct (rows, blocks)
    int bl[] = {1, 2, 4, 8, 16, 32, 48, 4096, 1 << 20};
    int nb = (int)(sizeof bl / sizeof *bl);
    for (int a = 0; a < nr; a++)
        for (int b = 0; b < nb; b++)
            for (int c = 0; c < nr; c++)
                for (int d = 0; d < nb; d++)
                    if (a != c || b != d)
                        CHECK(pq_graph_key(rows[a], bl[b]) != pq_graph_key(rows[c], bl[d]), "key (%d,%d) = (%d,%d)",
                              rows[a], bl[b], rows[c], bl[d]);
    // fingerprints: equal for equal pointers, different when any one moves
    char buf[64];
    const void *p[8], *q[8];
    for (int i = 0; i < 8; i++) p[i] = q[i] = buf + 8 * i;
    CHECK(pq_graph_fp(p, 8) == pq_graph_fp(q, 8), "same pointers, different fp");
    for (int i = 0; i < 8; i++) {
        q[i] = buf + 8 * i + 1;
        CHECK(pq_graph_fp(p, 8) != pq_graph_fp(q, 8), "pointer %d moved, same fp", i);
        q[i] = NULL;
        CHECK(pq_graph_fp(p, 8) != pq_graph_fp(q, 8), "pointer %d NULL, same fp", i);
        q[i] = p[i];
    }
    q[0] = p[1], q[1] = p[0];
    CHECK(pq_graph_fp(p, 8) != pq_graph_fp(q, 8), "two pointers swapped, same fp");
    // the CPU backend: no graphs, the step a plain call (the CUDA build: gpu-check's generation rows); with
    // PQ_CUDA_GRAPH=1 a set all the same, so gen.c pads its steps (tests/py/test_generate.py checks their tokens)
    if (!strcmp(pq_ops_backend(), "cpu")) {
        unsetenv("PQ_CUDA_GRAPH");
        CHECK(pq_graphs_new() == NULL, "graphs without PQ_CUDA_GRAPH=1");
        setenv("PQ_CUDA_GRAPH", "1", 1);
        PqGraphs *gs = pq_graphs_new();
        CHECK(gs != NULL, "no graphs with PQ_CUDA_GRAPH=1");
        int k = 3;
        CHECK(pq_graphs_run(gs, pq_graph_key(1, 1), 0, step, &k) == 0 && ran == 3, "the step did not run once");
        CHECK(pq_graphs_run(gs, pq_graph_key(1, 1), 0, step, &k) == 0 && ran == 6, "the step did not run again");
        pq_graphs_free(gs);
    }
    printf("test-graph: %d checks, %d failed\n", n_checks, n_fail);
    return n_fail ? 1 : 0;
}
