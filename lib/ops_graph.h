// ops_graph.h: a generation step's forward as a CUDA graph (PQ_CUDA_GRAPH=1,
// experimental). A decode step launches ~15 kernels a layer; at small batches
// their launches, not the weights' bandwidth, set its pace. gen.c pads a step
// of decode rows only to a bucket of rows and of table blocks, and graph.cu
// captures the forward once per bucket and replays it on later steps.
// The CUDA backend's is lib/cuda/graph.cu; the CPU backend has none
// (pq_graphs_new returns NULL there), and the bucketing (graph.c) is host code
// shared by both.
#ifndef PQ_OPS_GRAPH_H
#define PQ_OPS_GRAPH_H

#include <stdint.h>

typedef struct PqGraphs PqGraphs;

// The graphs of one generator: NULL unless PQ_CUDA_GRAPH=1 on the CUDA backend.
PqGraphs *pq_graphs_new(void);
void pq_graphs_free(PqGraphs *gs);
// Runs fn(arg), the step's kernels: a replay of the graph captured under key
// where there is one and fp (a hash of every device pointer fn passes its
// kernels by value) is the one it was captured with. Otherwise fn runs
// eagerly: on the key's first sight (so every buffer, scratch and plan is
// grown before a capture), or after fp changed (a buffer moved: every graph
// is dropped). On the second sight fn is captured, instantiated and
// replayed. A failed capture or instantiation is said once on stderr, and
// every later step runs eagerly. Returns 1 where a graph ran, 0 where fn
// ran eagerly. gs NULL: fn(arg).
int pq_graphs_run(PqGraphs *gs, uint64_t key, uint64_t fp, void (*fn)(void *), void *arg);

// Buckets (graph.c): a step of n decode rows runs as pq_graph_rows(n) rows
// (1, 2, 4, 8, then multiples of 8 to 64, of 32 to 256; 0 above: not graphed),
// its tables as pq_graph_blocks(nblk) blocks a row (powers of two to 16, then
// multiples of 16). The key of the pair: pq_graph_key.
int pq_graph_rows(int n);
int pq_graph_blocks(int nblk);
uint64_t pq_graph_key(int rows, int blocks);
// FNV-1a of n pointers: pq_graphs_run's fp
uint64_t pq_graph_fp(const void *const *p, int n);

#endif
