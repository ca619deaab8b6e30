// parity-paged.c: the paged generation kernels (lib/cuda/paged.cu) against
// their CPU twins (ops_paged_cpu.c): KV append and block copies exactly;
// decode attention over random block tables (shared prefixes, GQA 1/2/4/8,
// windows, one and many splits) within f32 and bf16 tolerances; prefill
// over the cache in segments (pq_paged_prefill_forward: chunks after their
// context, prompts from position 0, decoding rows; GQA 8/2 and 32/8, HS 64
// and 128, windows cutting into a chunk, segment counts and table widths
// that are not powers of two, random blocks of a larger pool) against the
// CPU twin, bf16 caches through cuDNN (which must serve them where
// PQ_PAGED_ATTN says, the group run once per mode by scripts/gpu-check)
// and f32 ones through the kernel; sampling
// (greedy, temperature, top-k, top-p, min-p, ties, masked logits, V 32k and
// 152k) to the same ids for the same (seed, seq, step); some of these again
// in bf16 activation storage (group act: q, k, v and out bf16, as generation
// keeps them with PQ_ACTIVATIONS=bf16). Then timings: decode
// attention of one Mistral-7B-shaped layer (32/8 heads, HS 128, bf16 cache,
// blocks of 16) at batch 1/64/256 and contexts 512-2048, with the KV bytes
// read per second, and sampling of 64/256 rows. Built only with CUDA=1; run
// by scripts/gpu-check (RESULT lines for its table).
//   parity-paged [--list] [GROUP]   GROUP: append attention prefill sample logp act time
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../unit/act16.h"
#include "cuda/sdpa.h"
#include "cuda/tuning.h"
#include "gpu_test.h"
#include "ops_paged.h"
#include "st_write.h"
#include "util.h"

static int failures, checks;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static void sync_dev(void) { // a download waits for every launch before it
    static float *d;
    float h;
    if (!d) d = pq_dev_alloc(sizeof *d);
    pq_dev_download(&h, d, sizeof h);
}

// max |got - want| / max(max |want|, 1e-6) <= tol, no NaN
static void cmp(const char *name, const float *want, const float *got, size_t n, double tol) {
    checks++;
    if (!close_rel(name, 60, want, got, n, tol)) failures++;
}

// Group act runs the cases in bf16 activation storage (PQ_ACTIVATIONS=bf16, ops.h: generation's q, k, v and
// attention outputs are bf16): the host inputs rounded as stored, the oracle's outputs rounded once.
static int act16;
static float rb(float x) { return pq_bf16_to_f32(pq_f32_to_bf16(x)); }
// a device activation of host values (rounded in place first in bf16 storage)
static float *adev(float *h, size_t n) {
    if (!act16) return dev(h, n * 4);
    for (size_t i = 0; i < n; i++) h[i] = rb(h[i]);
    return act16_up(h, n);
}
static float *anan(size_t n) { // an output not yet written
    if (!act16) return dnan(n);
    float *h = hnan(n), *d = act16_up(h, n);
    free(h);
    return d;
}
static float *adown(const float *d, float *want, size_t n) { // (the oracle's want rounded as stored)
    if (!act16) return down(d, n);
    for (size_t i = 0; i < n; i++) want[i] = rb(want[i]);
    return act16_down(d, n);
}
// outputs within one bf16 step of the oracle's rounded value (|out| <= 1: 2^-8) and the tolerance
static double act_tol(double tol) { return act16 && tol < 8e-3 ? 8e-3 : tol; }

// the n elements of a pool of dtype dt as f32 (host)
static float *pool_f32(const void *p, PqDtype dt, size_t n) {
    float *f = pq_xmalloc(n * sizeof *f);
    for (size_t x = 0; x < n; x++) f[x] = dt == PQ_BF16 ? pq_bf16_to_f32(((const uint16_t *)p)[x]) : ((const float *)p)[x];
    return f;
}

// pq_paged_rope_append (a decoding layer's rope and append in one launch) against the CPU's rope then append:
// q and k rotated (and rounded as stored), k as stored and v in the pool; rows of slot -1 (a CUDA graph's padding)
// rotated but written nowhere
static void rope_append_case(PqDtype dt) {
    int NB = 9, BT = 16, NH = 8, KVH = 2, HS = 64, N = 20;
    size_t qn = (size_t)N * NH * HS, kn = (size_t)N * KVH * HS, pn = (size_t)NB * BT * KVH * HS;
    size_t bytes = pn * pq_dtype_size(dt);
    float *q = hrand(qn, 2), *k = hrand(kn, 2), *v = hrand(kn, 2), inv[32];
    for (int j = 0; j < HS / 2; j++) inv[j] = (float)pow(10000.0, -2.0 * j / HS);
    int32_t slot[20], pos[20];
    for (int i = 0; i < N; i++) slot[i] = i == 5 ? -1 : (int32_t)(i * 7 % (NB * BT)), pos[i] = (i * 37) % 900;
    float *dq = adev(q, qn), *dk = adev(k, kn), *dv = adev(v, kn), *dinv = dev(inv, sizeof inv);
    int32_t *ds = dev(slot, sizeof slot), *dp = dev(pos, sizeof pos);
    void *hk = pq_xcalloc(1, bytes), *hv = pq_xcalloc(1, bytes), *gk = pq_dev_alloc(bytes), *gv = pq_dev_alloc(bytes);
    pq_cpu_rope_qk_forward(q, k, pos, inv, N, NH, KVH, HS);
    if (act16) // (rounded as stored before the append reads them: the CPU backend's wrappers)
        for (size_t x = 0; x < qn || x < kn; x++) {
            if (x < qn) q[x] = rb(q[x]);
            if (x < kn) k[x] = rb(k[x]);
        }
    pq_cpu_paged_append(hk, hv, dt, k, v, slot, N, KVH, HS);
    pq_paged_rope_append(dq, dk, dv, dp, dinv, gk, gv, dt, ds, N, NH, KVH, HS);
    char name[96];
    snprintf(name, sizeof name, "rope_append %s pool%s: q", pq_dtype_name(dt), act16 ? ", bf16 q, k, v" : "");
    float *got = adown(dq, q, qn);
    cmp(name, q, got, qn, act_tol(1e-5));
    free(got);
    name[strlen(name) - 1] = 'k';
    got = adown(dk, k, kn);
    cmp(name, k, got, kn, act_tol(1e-5));
    free(got);
    void *pk = pq_xmalloc(bytes), *pv = pq_xmalloc(bytes);
    pq_dev_download(pk, gk, bytes);
    pq_dev_download(pv, gv, bytes);
    float *wk = pool_f32(hk, dt, pn), *wv = pool_f32(hv, dt, pn), *ok = pool_f32(pk, dt, pn), *ov = pool_f32(pv, dt, pn);
    snprintf(name, sizeof name, "rope_append %s pool%s: K pool", pq_dtype_name(dt), act16 ? ", bf16 q, k, v" : "");
    cmp(name, wk, ok, pn, dt == PQ_BF16 || act16 ? 8e-3 : 1e-5);
    snprintf(name, sizeof name, "rope_append %s pool%s: V pool", pq_dtype_name(dt), act16 ? ", bf16 q, k, v" : "");
    cmp(name, wv, ov, pn, 0);
    free(q), free(k), free(v), free(hk), free(hv), free(pk), free(pv), free(wk), free(wv), free(ok), free(ov);
    pq_dev_free(dq), pq_dev_free(dk), pq_dev_free(dv), pq_dev_free(dinv), pq_dev_free(ds), pq_dev_free(dp);
    pq_dev_free(gk), pq_dev_free(gv);
}

static void test_append(void) {
    int L = 2, NB = 9, BT = 16, KVH = 4, HS = 64, N = 20;
    size_t kd = (size_t)KVH * HS, per = (size_t)NB * BT * kd;
    for (int di = 0; di < 2; di++) {
        PqDtype dt = di ? PQ_BF16 : PQ_F32;
        size_t es = pq_dtype_size(dt), bytes = 2 * per * es;
        void *hk = pq_xcalloc(1, bytes), *hv = pq_xcalloc(1, bytes);
        void *dk = pq_dev_alloc(bytes), *dv = pq_dev_alloc(bytes);
        float *k = hrand(N * kd, 2), *v = hrand(N * kd, 2);
        int32_t slot[20];
        for (int i = 0; i < N; i++) slot[i] = (int32_t)(i * 7 % (NB * BT));
        float *dkk = adev(k, N * kd), *dvv = adev(v, N * kd);
        int32_t *ds = dev(slot, sizeof slot);
        pq_cpu_paged_append((char *)hk + per * es, (char *)hv + per * es, dt, k, v, slot, N, KVH, HS);
        pq_paged_append((char *)dk + per * es, (char *)dv + per * es, dt, dkk, dvv, ds, N, KVH, HS);
        PqKvCopy cp[2] = {{0, 5, 16}, {2, 7, 3}};
        PqKvCopy *dcp = dev(cp, sizeof cp);
        pq_cpu_paged_copy_blocks(hk, hv, dt, cp, 2, L, NB, BT, KVH, HS);
        pq_paged_copy_blocks(dk, dv, dt, dcp, 2, L, NB, BT, KVH, HS);
        void *gk = pq_xmalloc(bytes), *gv = pq_xmalloc(bytes);
        pq_dev_download(gk, dk, bytes);
        pq_dev_download(gv, dv, bytes);
        checks++;
        if (memcmp(gk, hk, bytes) || memcmp(gv, hv, bytes)) {
            failures++;
            printf("FAIL append + copy blocks %s%s: pools differ\n", pq_dtype_name(dt), act16 ? ", bf16 k, v" : "");
        } else printf("ok   append + copy blocks %s%s: pools identical\n", pq_dtype_name(dt), act16 ? ", bf16 k, v" : "");
        free(hk), free(hv), free(gk), free(gv), free(k), free(v);
        pq_dev_free(dk), pq_dev_free(dv), pq_dev_free(dkk), pq_dev_free(dvv), pq_dev_free(ds), pq_dev_free(dcp);
    }
    for (int di = 0; di < 2; di++) rope_append_case(di ? PQ_BF16 : PQ_F32);
}

// A batch: N rows of contexts len over a pool of random blocks, rows 2k+1
// sharing the first half of row 2k's blocks.
typedef struct Batch {
    int N, NH, KVH, HS, BT, maxblk, NB, max_len;
    PqDtype dt;
    int32_t *tables, *len; // host
    void *kp, *vp;         // host pools (filled when fill)
    void *dkp, *dvp;
    int32_t *dtables, *dlen;
} Batch;

static Batch batch(int N, int NH, int KVH, int HS, int BT, PqDtype dt, const int *len, int fill) {
    Batch b = {.N = N, .NH = NH, .KVH = KVH, .HS = HS, .BT = BT, .dt = dt};
    for (int i = 0; i < N; i++) b.max_len = len[i] > b.max_len ? len[i] : b.max_len;
    b.maxblk = (b.max_len + BT - 1) / BT;
    b.NB = N * b.maxblk + 1;
    b.tables = pq_xmalloc((size_t)N * b.maxblk * sizeof *b.tables);
    b.len = pq_xmalloc((size_t)N * sizeof *b.len);
    int *perm = pq_xmalloc((size_t)b.NB * sizeof *perm), used = 0;
    for (int x = 0; x < b.NB; x++) perm[x] = x;
    pq_rng_shuffle_int(&gt_rng, perm, b.NB);
    for (int i = 0; i < N; i++) {
        b.len[i] = len[i];
        int nb = (len[i] + BT - 1) / BT, from = 0;
        if (i % 2 == 1) {
            int prev = (len[i - 1] + BT - 1) / BT;
            from = nb / 2 < prev ? nb / 2 : prev;
            for (int x = 0; x < from; x++) b.tables[(size_t)i * b.maxblk + x] = b.tables[(size_t)(i - 1) * b.maxblk + x];
        }
        for (int x = from; x < nb; x++) b.tables[(size_t)i * b.maxblk + x] = perm[used++];
        for (int x = nb; x < b.maxblk; x++) b.tables[(size_t)i * b.maxblk + x] = 0;
    }
    free(perm);
    size_t n = (size_t)b.NB * BT * KVH * HS, bytes = n * pq_dtype_size(dt);
    b.dkp = pq_dev_alloc(bytes);
    b.dvp = pq_dev_alloc(bytes);
    if (fill) {
        b.kp = pq_xmalloc(bytes);
        b.vp = pq_xmalloc(bytes);
        for (size_t x = 0; x < n; x++) {
            float a = urand(1), c = urand(1);
            if (dt == PQ_BF16) ((uint16_t *)b.kp)[x] = pq_f32_to_bf16(a), ((uint16_t *)b.vp)[x] = pq_f32_to_bf16(c);
            else ((float *)b.kp)[x] = a, ((float *)b.vp)[x] = c;
        }
        pq_dev_upload(b.dkp, b.kp, bytes);
        pq_dev_upload(b.dvp, b.vp, bytes);
    }
    b.dtables = dev(b.tables, (size_t)N * b.maxblk * sizeof *b.tables);
    b.dlen = dev(b.len, (size_t)N * sizeof *b.len);
    return b;
}

static void batch_free(Batch *b) {
    free(b->tables), free(b->len), free(b->kp), free(b->vp);
    pq_dev_free(b->dkp), pq_dev_free(b->dvp), pq_dev_free(b->dtables), pq_dev_free(b->dlen);
}

static const char *variant = ""; // the kernel's settings, when not the defaults

static void attention_case(int N, int NH, int KVH, int HS, int BT, int window, PqDtype dt, const int *len) {
    Batch b = batch(N, NH, KVH, HS, BT, dt, len, 1);
    size_t qn = (size_t)N * NH * HS, nw = pq_paged_attention_work(N, NH, KVH, HS, b.max_len);
    float *q = hrand(qn, 2), *want = hnan(qn), *dq = adev(q, qn), *dout = anan(qn);
    float *work = nw ? pq_xmalloc(nw * 4) : NULL, *dwork = nw ? dnan(nw) : NULL;
    pq_cpu_paged_attention_forward(want, q, b.kp, b.vp, dt, b.tables, b.maxblk, b.len, N, NH, KVH, HS, BT, window,
                                   b.max_len, work);
    pq_paged_attention_forward(dout, dq, b.dkp, b.dvp, dt, b.dtables, b.maxblk, b.dlen, N, NH, KVH, HS, BT, window,
                               b.max_len, dwork);
    float *got = adown(dout, want, qn);
    char name[160];
    int ns = pq_paged_splits(N, KVH, b.max_len, NULL);
    snprintf(name, sizeof name, "attention %s N %d %d/%d HS %d BT %d window %d, %d splits%s%s", pq_dtype_name(dt),
             N, NH, KVH, HS, BT, window, ns, variant, act16 ? ", bf16 q, out" : "");
    cmp(name, want, got, qn, act_tol(dt == PQ_BF16 ? 1e-4 : 2e-5));
    free(q), free(want), free(work), free(got);
    pq_dev_free(dq), pq_dev_free(dout), pq_dev_free(dwork);
    batch_free(&b);
}

// fast: only the cases of the fast kernel (bf16, head size 64 or 128)
static void attention_cases(int fast) {
    static const int G[] = {1, 2, 4, 8};
    int len[256];
    for (int gi = 0; gi < 4; gi++) {
        int n = 3;
        for (int i = 0; i < n; i++) len[i] = 1 + (int)(rnd() % 3000);
        len[0] = 1;
        attention_case(n, 2 * G[gi], 2, 128, 16, 0, PQ_BF16, len);
        if (!fast) attention_case(n, 2 * G[gi], 2, 64, 16, 100, PQ_F32, len);
        else attention_case(n, 2 * G[gi], 2, 64, 16, 100, PQ_BF16, len);
        n = 96;
        for (int i = 0; i < n; i++) len[i] = 1 + (int)(rnd() % 400);
        attention_case(n, 8 * G[gi], 8, 128, 16, gi == 3 ? 4096 : 0, PQ_BF16, len);
        if (!fast) attention_case(n, 4 * G[gi], 4, 80, 7, 33, PQ_F32, len);
    }
    len[0] = 2048, len[1] = 700;
    attention_case(2, 32, 8, 128, 16, 4096, PQ_BF16, len);
    len[0] = 300;
    if (!fast) attention_case(1, 16, 1, 256, 32, 0, PQ_BF16, len); // G 16, HS 256
    else attention_case(1, 16, 1, 64, 32, 0, PQ_BF16, len);        // G 16
}

// the defaults; then the fast kernel with 8 keys in flight (PQ_PAGED_KEYS=8), alone and with more splits
// (PQ_PAGED_SPLITS=2112,64), gpu-check's candidates
static void test_attention(void) {
    attention_cases(0);
    pq_cuda_set_paged_keys(8);
    variant = ", 8 keys in flight";
    attention_cases(1);
    pq_paged_set_splits(2112, 64);
    variant = ", 8 keys in flight, 2112 blocks";
    attention_cases(1);
    pq_paged_set_splits(-1, -1);
    pq_cuda_set_paged_keys(-1);
    variant = "";
}

// ---- prefill over the paged cache in segments ----

// PQ_PAGED_ATTN as lib/cuda/paged.cu reads it (once a process): 'a'uto, 'c'udnn, 'k'ernel
static char paged_mode(void) {
    const char *e = getenv("PQ_PAGED_ATTN");
    return !e || !*e || !strcmp(e, "auto") ? 'a' : !strcmp(e, "cudnn") ? 'c' : 'k';
}

// One call: nseg sequences, sequence s with ctx[s] positions cached and rows[s] query rows after them (one row
// a position, its own key appended), in a pool of random blocks with spare ones; tables padded with block 0 past
// a sequence's blocks (gen.c's); maxblk at least wide (0: the longest sequence's); pool blocks NB (0: half as
// many again as the sequences take). Against the CPU twin; and whether cuDNN served it where the mode says.
static void prefill_case(PqDtype dt, int NH, int KVH, int HS, int window, const int *ctx, const int *rows, int nseg,
                         int wide, int pool) {
    enum { BT = 16 };
    int N = 0, max_q = 0, max_len = 0, maxblk = wide, total = 0;
    for (int s = 0; s < nseg; s++) {
        int L = ctx[s] + rows[s], nb = (L + BT - 1) / BT;
        N += rows[s], total += nb;
        max_q = rows[s] > max_q ? rows[s] : max_q, max_len = L > max_len ? L : max_len;
        maxblk = nb > maxblk ? nb : maxblk;
    }
    int NB = pool >= total ? pool : total + total / 2 + 3;
    int *perm = pq_xmalloc((size_t)NB * sizeof *perm), used = 0;
    for (int b = 0; b < NB; b++) perm[b] = b;
    pq_rng_shuffle_int(&gt_rng, perm, NB);
    int32_t *stab = pq_xmalloc((size_t)nseg * maxblk * sizeof *stab);
    for (int s = 0; s < nseg; s++)
        for (int b = 0; b < maxblk; b++)
            stab[(size_t)s * maxblk + b] = b < (ctx[s] + rows[s] + BT - 1) / BT ? perm[used++] : 0;
    int32_t *tables = pq_xmalloc((size_t)N * maxblk * sizeof *tables), *len = pq_xmalloc((size_t)N * sizeof *len);
    int32_t *seg = pq_xmalloc((size_t)(nseg + 1) * sizeof *seg);
    for (int s = 0, i = 0; s < nseg; s++) {
        seg[s] = i;
        for (int t = ctx[s]; t < ctx[s] + rows[s]; t++, i++) {
            len[i] = t + 1;
            memcpy(tables + (size_t)i * maxblk, stab + (size_t)s * maxblk, (size_t)maxblk * sizeof *tables);
        }
    }
    seg[nseg] = N;
    size_t n = (size_t)NB * BT * KVH * HS, bytes = n * pq_dtype_size(dt), qn = (size_t)N * NH * HS;
    void *kp = pq_xmalloc(bytes), *vp = pq_xmalloc(bytes);
    for (size_t x = 0; x < n; x++) {
        float a = urand(1), c = urand(1);
        if (dt == PQ_BF16) ((uint16_t *)kp)[x] = pq_f32_to_bf16(a), ((uint16_t *)vp)[x] = pq_f32_to_bf16(c);
        else ((float *)kp)[x] = a, ((float *)vp)[x] = c;
    }
    size_t nw = pq_paged_attention_work(N, NH, KVH, HS, max_len);
    float *q = hrand(qn, 2), *want = hnan(qn), *work = nw ? pq_xmalloc(nw * 4) : NULL;
    float *dq = adev(q, qn), *dout = anan(qn); // (q rounded first in bf16 storage: the oracle's input too)
    pq_cpu_paged_prefill_forward(want, q, kp, vp, dt, tables, maxblk, len, seg, nseg, max_q, N, NH, KVH, HS, BT, NB,
                                 window, max_len, work);
    void *dkp = dev(kp, bytes), *dvp = dev(vp, bytes);
    float *dwork = nw ? dnan(nw) : NULL;
    int32_t *dtab = dev(tables, (size_t)N * maxblk * sizeof *tables), *dlen = dev(len, (size_t)N * sizeof *len);
    int32_t *dseg = dev(seg, (size_t)(nseg + 1) * sizeof *seg);
    int calls0 = pq_paged_cudnn_calls();
    pq_paged_prefill_forward(dout, dq, dkp, dvp, dt, dtab, maxblk, dlen, dseg, nseg, max_q, N, NH, KVH, HS, BT, NB,
                             window, max_len, dwork);
    float *got = adown(dout, want, qn);
    int served = pq_paged_cudnn_calls() - calls0;
    char mode = paged_mode();
    int expect = dt == PQ_BF16 && (mode == 'c' || (mode == 'a' && max_q > 1));
    char segs[200] = "", name[320];
    for (int s = 0, o = 0; s < nseg && o < (int)sizeof segs - 16; s++)
        o += snprintf(segs + o, sizeof segs - o, "%s%d+%d", s ? "," : "", ctx[s], rows[s]);
    snprintf(name, sizeof name, "prefill %s %d/%d HS %d window %d, %d segs %s, maxblk %d, N %d, NB %d%s [%s]",
             pq_dtype_name(dt), NH, KVH, HS, window, nseg, segs, maxblk, N, NB, act16 ? ", bf16 q, out" : "",
             served ? "cuDNN" : "kernel");
    checks++;
    if (expect && !served) {
        // head sizes other than 64 and 128 may be refused by a cuDNN version (as parity-attn): the kernel serves
        if (HS != 64 && HS != 128 && !strncmp(pq_paged_cudnn_error(), "cuDNN refuses", 13))
            printf("ok   %s: %s (the kernel served it)\n", name, pq_paged_cudnn_error());
        else {
            failures++;
            printf("FAIL %s: cuDNN served none of it, PQ_PAGED_ATTN %c (%s)\n", name, mode, pq_paged_cudnn_error());
        }
    } else if (!expect && served) {
        failures++;
        printf("FAIL %s: %d cuDNN calls where PQ_PAGED_ATTN %c wants the kernel\n", name, served, mode);
    } else printf("ok   %s: %s as PQ_PAGED_ATTN %c wants\n", name, served ? "cuDNN served it" : "the kernel served it", mode);
    // cuDNN: q and out rounded to bf16 and the probabilities in bf16 (parity-attn's cuDNN rows allow 3e-2
    // against the f32 oracle); the kernel: f32 arithmetic on the cache's values
    cmp(name, want, got, qn, act_tol(served ? 1e-2 : dt == PQ_BF16 ? 1e-4 : 2e-5));
    free(perm), free(stab), free(tables), free(len), free(seg), free(kp), free(vp), free(q), free(want), free(work);
    free(got);
    pq_dev_free(dkp), pq_dev_free(dvp), pq_dev_free(dq), pq_dev_free(dout), pq_dev_free(dwork), pq_dev_free(dtab);
    pq_dev_free(dlen), pq_dev_free(dseg);
}

static void test_prefill(void) {
    int calls0 = pq_paged_cudnn_calls();
    printf("prefill: PQ_PAGED_ATTN %s; cuDNN paged calls before: %d\n",
           getenv("PQ_PAGED_ATTN") ? getenv("PQ_PAGED_ATTN") : "(auto)", calls0);
    // a chunk of 29 after a context of 37, a prompt of 45 from 0, decoding rows at 101 and 1, a chunk of 64 after
    // 200: 5 segments, 17 blocks a table
    static const int c5[] = {37, 0, 100, 0, 200}, r5[] = {29, 45, 1, 1, 64};
    // 3 segments: a chunk after its context, a decoding row, a prompt from 0
    static const int c3[] = {37, 300, 0}, r3[] = {29, 1, 13};
    // one chunk alone
    static const int c1[] = {37}, r1[] = {29};
    // decoding rows only (max_q 1: the kernel unless PQ_PAGED_ATTN=cudnn), 7 of them
    static const int c7[] = {0, 15, 16, 17, 250, 1023, 64}, r7[] = {1, 1, 1, 1, 1, 1, 1};
    // long: chunks of 300 and 257 after their contexts beside a decoding row (59 blocks a table, N 558)
    static const int cl[] = {640, 0, 900}, rl[] = {300, 257, 1};
    // the shape of c5 again (5 segments of up to 64 rows, 17 blocks a table, the same pool): cuDNN's plan for
    // it is reused, with other lengths, tables and rows
    static const int c5b[] = {50, 3, 7, 120, 200}, r5b[] = {20, 40, 1, 1, 60};
    for (int di = 0; di < 2; di++) {
        PqDtype dt = di ? PQ_F32 : PQ_BF16;
        prefill_case(dt, 32, 8, 128, 0, c5, r5, 5, 0, 200);
        prefill_case(dt, 32, 8, 128, 0, c5b, r5b, 5, 0, 200);
        prefill_case(dt, 8, 2, 64, 0, c5, r5, 5, 0, 0);
        prefill_case(dt, 8, 2, 64, 20, c3, r3, 3, 0, 0);     // the window cuts into the chunk
        prefill_case(dt, 32, 8, 128, 7, c5, r5, 5, 0, 0);    // a window shorter than a block
        prefill_case(dt, 32, 8, 128, 4096, c3, r3, 3, 0, 0); // Mistral's window, past every context
        prefill_case(dt, 8, 2, 128, 0, c1, r1, 1, 0, 0);
        prefill_case(dt, 8, 2, 64, 0, c1, r1, 1, 6, 0);      // tables wider than the sequence (gen.c's maxblk)
        prefill_case(dt, 32, 8, 128, 0, c7, r7, 7, 0, 0);
        prefill_case(dt, 8, 2, 64, 33, c7, r7, 7, 0, 0);
        prefill_case(dt, 32, 8, 128, 0, cl, rl, 3, 0, 0);
        prefill_case(dt, 32, 8, 128, 0, c3, r3, 3, 0, 3000); // a pool of 3,000 blocks (gen.c's are large)
    }
    printf("prefill: cuDNN paged calls after: %d (%d in this group)%s%s\n", pq_paged_cudnn_calls(),
           pq_paged_cudnn_calls() - calls0, pq_paged_cudnn_error()[0] ? "; last refusal: " : "",
           pq_paged_cudnn_error());
}

static void sample_case(const char *what, int N, int V, PqSampleRow proto, int ties, int masked) {
    float *lg = hrand((size_t)N * V, 5);
    for (int i = 0; i < N; i++) {
        float *x = lg + (size_t)i * V;
        if (ties) // a run of equal logits near the top
            for (int t = 0; t < 6; t++) x[(size_t)(rnd() % V)] = 5.5f;
        if (masked)
            for (int v = 0; v < V; v++)
                if (rnd() % 4) x[v] = -INFINITY;
        if (masked && i == 0)
            for (int v = 0; v < V; v++) x[v] = -INFINITY;
    }
    PqSampleRow *rows = pq_xmalloc((size_t)N * sizeof *rows);
    for (int i = 0; i < N; i++) rows[i] = proto, rows[i].seq = (uint32_t)i, rows[i].step = (uint32_t)(i * 3 + 1);
    int32_t *want = pq_xmalloc((size_t)N * sizeof *want), *got = pq_xmalloc((size_t)N * sizeof *got);
    pq_cpu_sample(want, lg, rows, N, V);
    float *dl = dev(lg, (size_t)N * V * 4);
    PqSampleRow *dr = dev(rows, (size_t)N * sizeof *rows);
    int32_t *di = dev(want, (size_t)N * sizeof *di);
    pq_dev_zero(di, (size_t)N * sizeof *di);
    pq_sample(di, dl, dr, N, V);
    pq_dev_download(got, di, (size_t)N * sizeof *got);
    int bad = 0, first = -1;
    for (int i = 0; i < N; i++)
        if (got[i] != want[i]) bad++, first = first < 0 ? i : first;
    checks++;
    if (bad) {
        failures++;
        printf("FAIL sample %-50s %d of %d ids differ (row %d: want %d got %d)\n", what, bad, N, first, want[first],
               got[first]);
    } else printf("ok   sample %-50s %d ids identical\n", what, N);
    free(lg), free(rows), free(want), free(got);
    pq_dev_free(dl), pq_dev_free(dr), pq_dev_free(di);
}

// constrained decoding's masks (pq_mask_logits) on some rows of a batch, one of them masked whole, then
// the draw: masked logits and ids identical to the CPU twin's
static void mask_case(int N, int V) {
    size_t W = ((size_t)V + 31) / 32;
    float *lg = hrand((size_t)N * V, 5);
    int n = 0;
    int32_t *mrows = pq_xmalloc((size_t)N * sizeof *mrows);
    for (int i = 0; i < N; i += 2) mrows[n++] = i;
    uint32_t *bits = pq_xmalloc((size_t)n * W * sizeof *bits);
    for (size_t k = 0; k < (size_t)n * W; k++) bits[k] = (uint32_t)rnd() & (uint32_t)rnd() & (uint32_t)rnd();
    memset(bits + W, 0, W * sizeof *bits); // row 2: nothing allowed
    PqSampleRow *rows = pq_xmalloc((size_t)N * sizeof *rows);
    for (int i = 0; i < N; i++)
        rows[i] = (PqSampleRow){.seed = 5, .seq = (uint32_t)i, .step = 7, .temperature = i % 4 ? 0.9f : 0, .top_p = 0.95f};
    float *dl = dev(lg, (size_t)N * V * 4);
    uint32_t *db = dev(bits, (size_t)n * W * sizeof *bits);
    int32_t *dm = dev(mrows, (size_t)n * sizeof *mrows);
    PqSampleRow *dr = dev(rows, (size_t)N * sizeof *rows);
    int32_t *want = pq_xmalloc((size_t)N * sizeof *want), *got = pq_xmalloc((size_t)N * sizeof *got);
    int32_t *di = dev(want, (size_t)N * sizeof *di);
    pq_cpu_mask_logits(lg, bits, mrows, n, V);
    pq_cpu_sample(want, lg, rows, N, V);
    pq_mask_logits(dl, db, dm, n, V);
    pq_sample(di, dl, dr, N, V);
    float *back = pq_xmalloc((size_t)N * V * 4);
    pq_dev_download(back, dl, (size_t)N * V * 4);
    pq_dev_download(got, di, (size_t)N * sizeof *got);
    size_t diff = 0;
    for (size_t k = 0; k < (size_t)N * V; k++) diff += back[k] != lg[k];
    int bad = 0;
    for (int i = 0; i < N; i++) bad += got[i] != want[i];
    checks++;
    if (diff || bad || want[2] != -1) {
        failures++;
        printf("FAIL mask_logits V %-44d %zu logits, %d ids differ; a row masked whole draws %d (want -1)\n", V, diff,
               bad, got[2]);
    } else printf("ok   mask_logits V %-44d %d of %d rows masked, logits and ids identical\n", V, n, N);
    free(lg), free(mrows), free(bits), free(rows), free(want), free(got), free(back);
    pq_dev_free(dl), pq_dev_free(db), pq_dev_free(dm), pq_dev_free(dr), pq_dev_free(di);
}

static void test_sample(void) {
    mask_case(24, 32000);
    mask_case(9, 152064);
    static const int Vs[] = {32000, 152064};
    for (int vi = 0; vi < 2; vi++) {
        int V = Vs[vi];
        char w[96];
#define SC(name, ...)                                                                                                  \
    do {                                                                                                               \
        snprintf(w, sizeof w, "%s V %d", name, V);                                                                     \
        sample_case(w, 48, V, (PqSampleRow){.seed = 42, __VA_ARGS__}, 0, 0);                              \
    } while (0)
        SC("greedy", .temperature = 0, .top_p = 1);
        SC("temperature 1", .temperature = 1, .top_p = 1);
        SC("temperature 0.7 top-k 50", .temperature = 0.7f, .top_k = 50, .top_p = 1);
        SC("top-p 0.9", .temperature = 1, .top_p = 0.9f);
        SC("min-p 0.05", .temperature = 1, .top_p = 1, .min_p = 0.05f);
        SC("top-k 40 top-p 0.95 min-p 0.02", .temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .min_p = 0.02f);
#undef SC
        snprintf(w, sizeof w, "ties, top-k 3 top-p 0.5 V %d", V);
        sample_case(w, 32, V, (PqSampleRow){.seed = 3, .temperature = 1, .top_k = 3, .top_p = 0.5f}, 1, 0);
        snprintf(w, sizeof w, "ties, greedy V %d", V);
        sample_case(w, 32, V, (PqSampleRow){.seed = 3, .temperature = 0, .top_p = 1}, 1, 0);
        snprintf(w, sizeof w, "masked, top-p 0.8 V %d", V);
        sample_case(w, 32, V, (PqSampleRow){.seed = 9, .temperature = 1.2f, .top_p = 0.8f}, 0, 1);
    }
}

// row_lse then token_logp (generation's log-probabilities) against the twins: N rows of V logits (some -inf, a
// row all -inf), ids drawn by the twin sampler after a mask of every other row (-1 where nothing is allowed),
// the log-sum-exp taken before the mask as gen.c does
static void logp_case(int N, int V) {
    size_t W = ((size_t)V + 31) / 32;
    float *lg = hrand((size_t)N * V, 8);
    for (size_t k = 0; k < (size_t)N * V; k += 37) lg[k] = -INFINITY;
    for (int v = 0; v < V; v++) lg[(size_t)3 * V + v] = -INFINITY;
    int n = 0;
    int32_t *mrows = pq_xmalloc((size_t)N * sizeof *mrows);
    for (int i = 0; i < N; i += 2) mrows[n++] = i;
    uint32_t *bits = pq_xmalloc((size_t)n * W * sizeof *bits);
    for (size_t k = 0; k < (size_t)n * W; k++) bits[k] = (uint32_t)rnd() & (uint32_t)rnd();
    PqSampleRow *rows = pq_xmalloc((size_t)N * sizeof *rows);
    for (int i = 0; i < N; i++) rows[i] = (PqSampleRow){.seed = 11, .seq = (uint32_t)i, .temperature = 0.8f, .top_p = 1};
    float *dl = dev(lg, (size_t)N * V * 4), *lse = pq_xmalloc((size_t)N * 4), *lp = pq_xmalloc((size_t)N * 4);
    int32_t *ids = pq_xmalloc((size_t)N * sizeof *ids);
    pq_cpu_row_lse(lse, lg, N, V);
    pq_cpu_mask_logits(lg, bits, mrows, n, V);
    pq_cpu_sample(ids, lg, rows, N, V);
    pq_cpu_token_logp(lp, lg, ids, lse, N, V);
    float *dlse = dnan((size_t)N), *dlp = dnan((size_t)N);
    int32_t *di = dev(ids, (size_t)N * sizeof *ids);
    uint32_t *db = dev(bits, (size_t)n * W * sizeof *bits);
    int32_t *dm = dev(mrows, (size_t)n * sizeof *mrows);
    pq_row_lse(dlse, dl, N, V);
    pq_mask_logits(dl, db, dm, n, V);
    pq_token_logp(dlp, dl, di, dlse, N, V);
    float *glse = down(dlse, (size_t)N), *glp = down(dlp, (size_t)N);
    char name[96];
    // the all -inf row: -inf both ways (rel_err would call it NaN); then compared as finite
    checks++;
    if (!(glse[3] == -INFINITY && lse[3] == -INFINITY && ids[3] == -1 && glp[3] == 0)) {
        printf("FAIL row_lse of an all -inf row V %d: cpu %g gpu %g, logp %g\n", V, lse[3], glse[3], glp[3]);
        failures++;
    } else printf("ok   row_lse of an all -inf row V %d: -inf, its token -1, logp 0\n", V);
    lse[3] = glse[3] = 0;
    snprintf(name, sizeof name, "row_lse %d x %d", N, V);
    checks++;
    if (!close_cpu_gpu(name, 60, lse, glse, (size_t)N, 1e-5)) failures++;
    snprintf(name, sizeof name, "token_logp %d x %d (half the rows masked)", N, V);
    checks++;
    if (!close_cpu_gpu(name, 60, lp, glp, (size_t)N, 1e-4)) failures++;
    free(lg), free(mrows), free(bits), free(rows), free(lse), free(lp), free(ids), free(glse), free(glp);
    pq_dev_free(dl), pq_dev_free(dlse), pq_dev_free(dlp), pq_dev_free(di), pq_dev_free(db), pq_dev_free(dm);
}

static void test_logp(void) {
    logp_case(40, 32000);
    logp_case(7, 152064);
    logp_case(5, 100);
}

static void test_time(void) {
    // decode attention, one Mistral-7B layer, at the default splits and at more blocks (pq_paged_set_splits:
    // the kernel's parallelism, PQ_PAGED_SPLITS' candidates: RESULT paged_attn_s<BLOCKS>_...)
    static const int Ns[] = {1, 64, 256}, Ls[] = {512, 1024, 2048};
    static const int St[][3] = {{0, 0, 4}, {1056, 64, 4}, {2112, 64, 4}, {0, 0, 8}, {1056, 64, 8}}; // + keys
    int *len = pq_xmalloc(256 * sizeof *len);
    for (int ni = 0; ni < 3; ni++)
        for (int li = 0; li < 3; li++) {
            int N = Ns[ni], T = Ls[li];
            for (int i = 0; i < N; i++) len[i] = T;
            Batch b = batch(N, 32, 8, 128, 16, PQ_BF16, len, 0);
            size_t qn = (size_t)N * 32 * 128;
            float *dq = dnan(qn), *dout = dnan(qn);
            pq_dev_zero(dq, qn * 4);
            for (int si = 0; si < (int)(sizeof St / sizeof *St); si++) {
                pq_paged_set_splits(St[si][0], St[si][1]);
                pq_cuda_set_paged_keys(St[si][2]);
                size_t nw = pq_paged_attention_work(N, 32, 8, 128, T);
                float *dwork = nw ? dnan(nw) : NULL;
                int reps = 20;
                pq_paged_attention_forward(dout, dq, b.dkp, b.dvp, PQ_BF16, b.dtables, b.maxblk, b.dlen, N, 32, 8, 128,
                                           16, 0, T, dwork);
                sync_dev();
                double t0 = now_s();
                for (int r = 0; r < reps; r++)
                    pq_paged_attention_forward(dout, dq, b.dkp, b.dvp, PQ_BF16, b.dtables, b.maxblk, b.dlen, N, 32, 8,
                                               128, 16, 0, T, dwork);
                sync_dev();
                double ms = (now_s() - t0) / reps * 1e3;
                double gb = 2.0 * N * T * 8 * 128 * 2 / 1e9; // K and V, bf16
                char set[32] = "", *at = set; // RESULT paged_attn_[s<BLOCKS>_][k8_]b..
                if (St[si][0]) at += sprintf(at, "s%d_", St[si][0]);
                if (St[si][2] == 8) strcpy(at, "k8_");
                printf("decode attention 7B layer, batch %3d, context %4d: %.3f ms, %.0f GB/s of KV read "
                       "(%d splits%s)\n",
                       N, T, ms, gb / (ms * 1e-3), pq_paged_splits(N, 8, T, NULL),
                       St[si][2] == 8 ? ", 8 keys in flight" : "");
                printf("RESULT paged_attn_%sb%d_t%d_ms %.4f\n", set, N, T, ms);
                printf("RESULT paged_attn_%sb%d_t%d_gbs %.0f\n", set, N, T, gb / (ms * 1e-3));
                pq_dev_free(dwork);
            }
            pq_paged_set_splits(-1, -1);
            pq_cuda_set_paged_keys(-1);
            pq_dev_free(dq), pq_dev_free(dout);
            batch_free(&b);
        }
    free(len);
    // sampling
    static const int Ss[] = {64, 256}, Vs[] = {32000, 152064};
    for (int si = 0; si < 2; si++)
        for (int vi = 0; vi < 2; vi++) {
            int N = Ss[si], V = Vs[vi];
            float *lg = hrand((size_t)N * V, 5), *dl = dev(lg, (size_t)N * V * 4);
            PqSampleRow *rows = pq_xmalloc((size_t)N * sizeof *rows);
            for (int i = 0; i < N; i++)
                rows[i] = (PqSampleRow){.seed = 1, .seq = (uint32_t)i, .temperature = 0.8f, .top_k = 50, .top_p = 0.95f,
                                        .min_p = 0.05f};
            PqSampleRow *dr = dev(rows, (size_t)N * sizeof *rows);
            int32_t *di = pq_dev_alloc((size_t)N * 4);
            pq_sample(di, dl, dr, N, V);
            sync_dev();
            int reps = 10;
            double t0 = now_s();
            for (int r = 0; r < reps; r++) pq_sample(di, dl, dr, N, V);
            sync_dev();
            double ms = (now_s() - t0) / reps * 1e3;
            printf("sampling top-k/top-p/min-p, %3d rows of V %6d: %.3f ms\n", N, V, ms);
            printf("RESULT sample_n%d_v%d_ms %.4f\n", N, V, ms);
            free(lg), free(rows);
            pq_dev_free(dl), pq_dev_free(dr), pq_dev_free(di);
        }
}

// bf16 activation storage (generation with PQ_ACTIVATIONS=bf16): the append, a decode batch of each kernel,
// prefill segments through cuDNN (q and out bf16 as they are) and through the kernel
static void test_act(void) {
    pq_ops_set_act_dtype(PQ_BF16);
    act16 = 1;
    test_append();
    int len[96];
    for (int i = 0; i < 96; i++) len[i] = 1 + (int)(rnd() % 400);
    attention_case(96, 32, 8, 128, 16, 0, PQ_BF16, len); // the fast kernel
    attention_case(3, 8, 2, 64, 16, 100, PQ_F32, len);   // the general one, an f32 cache
    static const int c5[] = {37, 0, 100, 0, 200}, r5[] = {29, 45, 1, 1, 64};
    static const int c7[] = {0, 15, 16, 17, 250, 1023, 64}, r7[] = {1, 1, 1, 1, 1, 1, 1};
    prefill_case(PQ_BF16, 32, 8, 128, 0, c5, r5, 5, 0, 200);
    prefill_case(PQ_BF16, 8, 2, 64, 20, c5, r5, 5, 0, 0);
    prefill_case(PQ_BF16, 32, 8, 128, 0, c7, r7, 7, 0, 0);
    prefill_case(PQ_F32, 8, 2, 64, 0, c5, r5, 5, 0, 0);
    // segments a power of two (no padding segment): cuDNN reads q and writes out in place
    static const int c1[] = {37}, r1[] = {29}, c4[] = {37, 0, 100, 200}, r4[] = {29, 45, 1, 64};
    prefill_case(PQ_BF16, 8, 2, 128, 0, c1, r1, 1, 0, 0);
    prefill_case(PQ_BF16, 32, 8, 128, 0, c4, r4, 4, 0, 0);
    act16 = 0;
    pq_ops_set_act_dtype(PQ_F32);
}

int main(int argc, char **argv) {
    static const char *groups[] = {"append", "attention", "prefill", "sample", "logp", "act", "time"};
    void (*fns[])(void) = {test_append, test_attention, test_prefill, test_sample, test_logp, test_act, test_time};
    enum { NG = sizeof groups / sizeof *groups };
    if (argc > 1 && strcmp(argv[1], "--list") == 0) {
        for (int g = 0; g < NG; g++) printf("%s\n", groups[g]);
        return 0;
    }
    if (pq_ops_set_device(0) < 0) { // (make cpu-parity stands a device in for the CPU backend's)
        printf("no CUDA device\n");
        return 2;
    }
    int known = argc < 2;
    for (int g = 0; g < NG; g++) known |= argc > 1 && strcmp(argv[1], groups[g]) == 0;
    if (!known) {
        fprintf(stderr, "usage: parity-paged [--list] [GROUP]\n");
        return 2;
    }
    pq_rng_seed(&gt_rng, 7);
    for (int g = 0; g < NG; g++)
        if (argc < 2 || strcmp(argv[1], groups[g]) == 0) fns[g]();
    printf("%d of %d checks failed\n", failures, checks);
    return failures ? 1 : 0;
}
