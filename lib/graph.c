// graph.c: the host side of CUDA-graph decode steps (ops_graph.h): buckets
// and keys, shared by both backends and unit-tested on the CPU build.
#include "ops_graph.h"

#define PQ_GRAPH_MAX_ROWS 256

int pq_graph_rows(int n) {
    if (n <= 0 || n > PQ_GRAPH_MAX_ROWS) return 0; // large batches: launches are a small share of a step
    if (n <= 8) {
        int b = 1;
        while (b < n) b *= 2;
        return b;
    }
    if (n <= 64) return (n + 7) / 8 * 8;
    return (n + 31) / 32 * 32;
}

int pq_graph_blocks(int nblk) {
    if (nblk <= 1) return 1;
    if (nblk <= 16) {
        int b = 1;
        while (b < nblk) b *= 2;
        return b;
    }
    return (nblk + 15) / 16 * 16;
}

uint64_t pq_graph_key(int rows, int blocks) { return (uint64_t)(uint32_t)rows << 32 | (uint32_t)blocks; }

uint64_t pq_graph_fp(const void *const *p, int n) {
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < n; i++) {
        uintptr_t v = (uintptr_t)p[i];
        for (unsigned b = 0; b < sizeof v; b++) h = (h ^ ((v >> (8 * b)) & 0xff)) * 1099511628211ull;
    }
    return h;
}
