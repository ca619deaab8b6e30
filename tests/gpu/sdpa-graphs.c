// sdpa-graphs.c: the cuDNN graphs of the CUDA backend's fused attention
// (lib/cuda/sdpa.cpp), forward and backward, for the calls lib/attn_plan.c
// makes of packed records, windows, GQA and shared prompts (as
// lib/cuda/attention.cu builds them), validated by cudnn-frontend for an
// H100/H200 without a GPU: `make cuda-build` runs it, so a graph cuDNN's
// front end rejects fails on a development machine. (Whether cuDNN has an
// engine for it, and its numbers, are parity-attn's, on a GPU.) Exits 1 on
// any rejection.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "attn_plan.h"
#include "cuda/sdpa.h"
#include "util.h"

static int fails, checks;

// The calls of attention over pos (and a0, a1, b0) with these heads, validated both ways.
static void check(const char *name, const int32_t *pos, const int32_t *a0, const int32_t *a1, const int32_t *b0, int N,
                  int NH, int KVH, int HS, int window) {
    PqAttnPlan p;
    char err[600];
    if (pq_attn_plan_build(&p, pos, a0, a1, b0, N, window, err, sizeof err)) {
        printf("ok   %s: the plan refuses it (%s): the tensor-core path serves it\n", name, err);
        return;
    }
    const PqAttnCall *calls[2] = {&p.causal, &p.cross};
    for (int t = 0; t < 2; t++) {
        const PqAttnCall *c = calls[t];
        if (!c->B) continue;
        PqSdpaCall s = {c->B, pq_attn_plan_bucket(c->smax_q), pq_attn_plan_bucket(c->smax_k), NH, KVH, HS, t == 0,
                        t == 0 ? p.left_bound : 0, 1.0f / sqrtf((float)HS), NULL, NULL, NULL, NULL};
        for (int bwd = 0; bwd < 2; bwd++) {
            checks++;
            if (pq_sdpa_validate(&s, bwd, err, sizeof err)) {
                fails++;
                printf("FAIL %s: %s call's %s graph (%d segments, %d x %d): %s\n", name, t ? "cross" : "causal",
                       bwd ? "backward" : "forward", s.B, s.smax_q, s.smax_k, err);
            } else {
                printf("ok   %s: %s call's %s graph (%d segments, %d x %d, left bound %d)\n", name,
                       t ? "cross" : "causal", bwd ? "backward" : "forward", s.B, s.smax_q, s.smax_k, s.left_bound);
            }
        }
    }
    pq_attn_plan_free(&p);
}

// The graph of lib/cuda/paged.cu's prefill with context (pq_paged_prefill_forward), as it buckets a call:
// B segments, up to smax_q rows each, tables of maxblk blocks of BT positions in a pool of NB blocks.
static void check_paged(const char *name, int B, int smax_q, int maxblk, int NB, int NH, int KVH, int HS, int window) {
    PqSdpaPagedCall c = {B, smax_q, maxblk, 16, NB, NH, KVH, HS, window > 0 ? window + 1 : 0,
                         1.0f / sqrtf((float)HS), NULL, NULL, NULL, NULL};
    char err[600];
    checks++;
    if (pq_sdpa_paged_validate(&c, err, sizeof err)) {
        fails++;
        printf("FAIL %s: paged graph (%d segments of up to %d rows, %d blocks a table): %s\n", name, B, smax_q,
               maxblk, err);
    } else printf("ok   %s: paged graph (%d segments of up to %d rows, %d blocks a table)\n", name, B, smax_q, maxblk);
}

static int32_t *records(const int *lens, int n, int *N) {
    int total = 0;
    for (int r = 0; r < n; r++) total += lens[r];
    int32_t *pos = pq_xmalloc((size_t)total * 4);
    int k = 0;
    for (int r = 0; r < n; r++)
        for (int t = 0; t < lens[r]; t++) pos[k++] = t;
    *N = total;
    return pos;
}

int main(void) {
    int N;
    int l1[] = {1, 37, 100, 64, 5}, l7[] = {2048, 2048}, l8[] = {4096, 4096, 4096, 4096};
    int32_t *p1 = records(l1, 5, &N);
    check("records 8/2 HS 64", p1, NULL, NULL, NULL, N, 8, 2, 64, 0);
    check("records 4/4 HS 128 window 17", p1, NULL, NULL, NULL, N, 4, 4, 128, 17);
    check("records 6/3 HS 48", p1, NULL, NULL, NULL, N, 6, 3, 48, 0);
    check("records 4/2 HS 16", p1, NULL, NULL, NULL, N, 4, 2, 16, 0);
    free(p1);
    int32_t *p7 = records(l7, 2, &N);
    check("Mistral-7B 32/8 HS 128, 2 x 2048, window 4096", p7, NULL, NULL, NULL, N, 32, 8, 128, 4096);
    check("32/8 HS 128, 2 x 2048, window 1000", p7, NULL, NULL, NULL, N, 32, 8, 128, 1000);
    free(p7);
    int32_t *p8 = records(l8, 4, &N);
    check("Llama-3-8B 32/8 HS 128, 4 x 4096", p8, NULL, NULL, NULL, N, 32, 8, 128, 0);
    free(p8);
    // a DPO pair sharing its prompt, as pq-dpo packs it: prompt P, chosen Cn, rejected R
    int P = 700, Cn = 90, R = 130;
    N = P + Cn + R;
    int32_t *pos = pq_xmalloc((size_t)N * 4), *a0 = pq_xmalloc((size_t)N * 4), *a1 = pq_xmalloc((size_t)N * 4);
    int32_t *b0 = pq_xmalloc((size_t)N * 4);
    for (int i = 0; i < N; i++) {
        if (i < P + Cn) pos[i] = i, a0[i] = a1[i] = 0, b0[i] = 0;
        else pos[i] = i - Cn, a0[i] = 0, a1[i] = P, b0[i] = P + Cn;
    }
    check("shared prompt 32/8 HS 128", pos, a0, a1, b0, N, 32, 8, 128, 0);
    check("shared prompt 28/4 HS 128 window 4096 (Qwen2-7B heads)", pos, a0, a1, b0, N, 28, 4, 128, 4096);
    free(pos), free(a0), free(a1), free(b0);
    // prefill with context over the paged cache: chunks of 512 beside decoding rows, a 7B pool; small heads
    check_paged("paged Mistral-7B 32/8 HS 128 window 4096, 64 segments", 64, 512, 128, 8192, 32, 8, 128, 4096);
    check_paged("paged Llama-3-8B 32/8 HS 128, 1 segment", 1, 512, 256, 8192, 32, 8, 128, 0);
    check_paged("paged Qwen2-7B 28/4 HS 128, 256 segments of 1 row", 256, 64, 128, 16384, 28, 4, 128, 0);
    check_paged("paged tiny 4/2 HS 16", 4, 64, 8, 64, 4, 2, 16, 0);
    check_paged("paged tiny 8/2 HS 64 window 17", 8, 128, 16, 256, 8, 2, 64, 17);
    printf("%d of %d graphs rejected\n", fails, checks);
    return fails ? 1 : 0;
}
