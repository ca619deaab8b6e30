// graph.cu: a generation step's forward as a CUDA graph (ops_graph.h), one per
// key (gen.c's bucket of rows and table blocks), captured on a stream of its
// own and replayed there.
//
// The capture stream is created blocking (not cudaStreamNonBlocking): the
// legacy stream, where the uploads before a step and the downloads after it
// run, is ordered with it both ways, so a replay needs no events; and an op
// that missed pq_cuda_stream during a capture is an error
// (cudaErrorStreamCaptureImplicit) that drops graphs, not an op silently left
// out of the graph.
//
// While capturing, pq_cuda_fail does not abort: the first error is kept
// (pq_cuda_graph_absorb) and the capture fails at its end; fn then runs
// eagerly, and so does every later step.
#include <map>
#include <string.h>

#include "common.cuh"

extern "C" {
#include "ops_graph.h"
}

struct Entry {
    cudaGraphExec_t exec = nullptr;
    int seen = 0; // eager runs under the current fp
};

struct PqGraphs {
    std::map<uint64_t, Entry> m;
    uint64_t fp = 0;
    unsigned scr_gen = 0;
    bool off = false;
    cudaStream_t s = nullptr;
    long long eager = 0, captured = 0, replayed = 0; // steps, said when the generator is freed
};

static bool capturing;
static char capture_err[512];

bool pq_cuda_graph_absorb(const char *what, const char *err, const char *file, int line) {
    if (!capturing) return false;
    if (!capture_err[0]) snprintf(capture_err, sizeof capture_err, "%s at %s:%d: %s", err, file, line, what);
    return true;
}

static void drop(PqGraphs *gs) {
    for (auto &e : gs->m)
        if (e.second.exec) cudaGraphExecDestroy(e.second.exec);
    gs->m.clear();
}

extern "C" PqGraphs *pq_graphs_new(void) {
    const char *e = getenv("PQ_CUDA_GRAPH");
    if (!e || strcmp(e, "1")) return NULL;
    PqGraphs *gs = new PqGraphs;
    CU(cudaStreamCreate(&gs->s));
    return gs;
}

extern "C" void pq_graphs_free(PqGraphs *gs) {
    if (!gs) return;
    // (PQ_CUDA_GRAPH is experimental: gpu-check reads this line to know graphs ran)
    fprintf(stderr, "pq: PQ_CUDA_GRAPH: %lld decode steps replayed, %lld graphs captured, %lld steps eager%s\n",
            gs->replayed, gs->captured, gs->eager, gs->off ? " (graphs off after an error)" : "");
    drop(gs);
    CU(cudaStreamDestroy(gs->s));
    delete gs;
}

static void give_up(PqGraphs *gs, const char *why) {
    static bool said;
    if (!said) fprintf(stderr, "pq: PQ_CUDA_GRAPH: no CUDA graph (%s): decode steps run eagerly (said once)\n", why);
    said = true;
    gs->off = true;
    drop(gs);
    cudaGetLastError(); // a capture's error is not sticky: clear it
}

extern "C" int pq_graphs_run(PqGraphs *gs, uint64_t key, uint64_t fp, void (*fn)(void *), void *arg) {
    if (!gs || gs->off) {
        if (gs) gs->eager++;
        fn(arg);
        return 0;
    }
    // a scratch buffer (pq_cuda_scratch) that moved is a pointer the graphs captured, as gen.c's are
    if (fp != gs->fp || pq_cuda_scratch_gen() != gs->scr_gen) {
        drop(gs);
        gs->fp = fp, gs->scr_gen = pq_cuda_scratch_gen();
    }
    Entry &en = gs->m[key];
    if (!en.exec) {
        if (en.seen++ == 0) { // first sight: eager, growing what it needs outside a capture
            gs->eager++;
            fn(arg);
            return 0;
        }
        capture_err[0] = 0;
        capturing = true;
        pq_cuda_stream = gs->s;
        cudaError_t err = cudaStreamBeginCapture(gs->s, cudaStreamCaptureModeGlobal);
        if (err == cudaSuccess) fn(arg);
        cudaGraph_t graph = nullptr;
        cudaError_t end = err == cudaSuccess ? cudaStreamEndCapture(gs->s, &graph) : err;
        pq_cuda_stream = 0;
        capturing = false;
        char why[640];
        why[0] = 0;
        if (capture_err[0]) snprintf(why, sizeof why, "%s", capture_err);
        else if (end != cudaSuccess) snprintf(why, sizeof why, "capture: %s", cudaGetErrorString(end));
        else if ((err = cudaGraphInstantiate(&en.exec, graph, 0)) != cudaSuccess) {
            snprintf(why, sizeof why, "instantiate: %s", cudaGetErrorString(err));
            en.exec = nullptr;
        }
        if (graph) cudaGraphDestroy(graph);
        if (why[0]) {
            give_up(gs, why);
            gs->eager++;
            fn(arg);
            return 0;
        }
        gs->captured++;
        // the capture ran nothing: the step's work is the first replay's
    }
    CU(cudaGraphLaunch(en.exec, gs->s));
    gs->replayed++;
    return 1;
}
