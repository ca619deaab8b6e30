// test-paged: the paged generation operations' CPU twins (ops_paged_cpu.c).
// Decode attention over a paged cache (random block placement, prefixes
// shared between rows as after a fork, windows, GQA 1/2/4/8, one and many
// context splits, f32 and bf16 pools) equals the contiguous-cache attention
// of ops_gen_cpu.c (pq_cpu_attention_kv_forward) on the same keys and
// values; append writes (and rounds) rows where the block tables say; block
// copies move the first n positions of every layer; the pieces together
// with kvpage.h over decode steps with forks, copies on write and a
// re-fork (as gen.c will drive them) match contiguous attention on each
// sample's own history. Prefill over the cache in segments (a chunk after
// its context, a prompt from position 0, decoding rows) equals decode
// attention bit for bit and contiguous attention; each broken promise of
// the segments (coverage, an empty or too long segment, positions not
// consecutive, another table, a block outside the pool, a length out of
// range) aborts with its message, in a forked child. Sampling: exact argmax
// at temperature 0 (lowest id among ties, -INFINITY never), the same ids
// for the same (seed, seq, step), different draws for different steps, only
// tokens inside the top-k/top-p/min-p cut. The distribution itself is
// checked against numpy by tests/py/test_paged_sample.py through this
// program's driver mode:
//   test-paged sample < "V T top_k top_p min_p draws seed" line, then V logits
// prints the count of each id over draws steps.
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "exp_fast.h"
#include "ops_gen.h"
#include "kvpage.h"
#include "ops_paged.h"
#include "st_write.h"
#include "util.h"

static PqRng rng;
static float urand(float a) { return a * (float)(pq_rng_uniform(&rng) * 2 - 1); }
// max |got - want| over n, infinite where either is NaN
static double max_err(const float *got, const float *want, size_t n) {
    double err = 0;
    for (size_t x = 0; x < n; x++) {
        double d = fabs((double)got[x] - want[x]);
        err = isnan(d) ? INFINITY : d > err ? d : err;
    }
    return err;
}

// N rows, contexts len (N), random blocks; share 1: rows 2k+1 share the first half of row 2k's blocks (a fork);
// share 2: families of up to 5 rows (the samples of a prompt) share their first row's whole blocks below the
// family's shortest context. The oracle (pq_cpu_paged_attention_forward) and the CPU backend's own attention
// (pq_paged_attention_forward, which groups the rows that share blocks) against the flat cache's attention.
static void test_attention(int N, int NH, int KVH, int HS, int BT, int window, PqDtype dt, const int *len, int share) {
    int max_len = 0;
    for (int i = 0; i < N; i++) max_len = len[i] > max_len ? len[i] : max_len;
    int maxblk = (max_len + BT - 1) / BT, NB = N * maxblk + 3;
    size_t kd = (size_t)KVH * HS, es = pq_dtype_size(dt);
    void *kp = pq_xmalloc((size_t)NB * BT * kd * es), *vp = pq_xmalloc((size_t)NB * BT * kd * es);
    // pool rows hold random values (rounded to bf16 when dt is)
    for (size_t r = 0; r < (size_t)NB * BT * kd; r++) {
        float a = urand(1), b = urand(1);
        if (dt == PQ_BF16) ((uint16_t *)kp)[r] = pq_f32_to_bf16(a), ((uint16_t *)vp)[r] = pq_f32_to_bf16(b);
        else ((float *)kp)[r] = a, ((float *)vp)[r] = b;
    }
    int *perm = pq_xmalloc((size_t)NB * sizeof *perm);
    for (int b = 0; b < NB; b++) perm[b] = b;
    pq_rng_shuffle_int(&rng, perm, NB);
    int32_t *tables = pq_xmalloc((size_t)N * maxblk * sizeof *tables), *lens = pq_xmalloc((size_t)N * sizeof *lens);
    int used = 0;
    for (int i = 0; i < N; i++) {
        lens[i] = len[i];
        int nb = (len[i] + BT - 1) / BT, from = 0;
        if (share == 1 && i % 2 == 1) { // the first half of row i-1's blocks, where it has them
            int prev = (len[i - 1] + BT - 1) / BT;
            from = nb / 2 < prev ? nb / 2 : prev;
            for (int b = 0; b < from; b++) tables[(size_t)i * maxblk + b] = tables[(size_t)(i - 1) * maxblk + b];
        }
        if (share == 2 && i % 5 != 0) { // the family's first row's whole blocks below the family's shortest context
            int f = i - i % 5, shortest = len[f];
            for (int r = f; r < f + 5 && r < N; r++) shortest = len[r] < shortest ? len[r] : shortest;
            from = shortest / BT;
            for (int b = 0; b < from; b++) tables[(size_t)i * maxblk + b] = tables[(size_t)f * maxblk + b];
        }
        for (int b = from; b < nb; b++) tables[(size_t)i * maxblk + b] = perm[used++];
        for (int b = nb; b < maxblk; b++) tables[(size_t)i * maxblk + b] = -1;
    }
    // the same keys and values in a contiguous cache (S = N, T = max_len) as f32
    float *kc = pq_xcalloc((size_t)N * max_len * kd, sizeof *kc), *vc = pq_xcalloc((size_t)N * max_len * kd, sizeof *vc);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < len[i]; j++) {
            size_t src = ((size_t)tables[(size_t)i * maxblk + j / BT] * BT + j % BT) * kd;
            size_t dst = ((size_t)i * max_len + j) * kd;
            for (size_t d = 0; d < kd; d++) {
                kc[dst + d] = dt == PQ_BF16 ? pq_bf16_to_f32(((uint16_t *)kp)[src + d]) : ((float *)kp)[src + d];
                vc[dst + d] = dt == PQ_BF16 ? pq_bf16_to_f32(((uint16_t *)vp)[src + d]) : ((float *)vp)[src + d];
            }
        }
    size_t qn = (size_t)N * NH * HS;
    float *q = pq_xmalloc(qn * sizeof *q), *out = pq_xmalloc(qn * sizeof *out), *want = pq_xmalloc(qn * sizeof *want);
    for (size_t x = 0; x < qn; x++) q[x] = urand(2), out[x] = NAN;
    int32_t *slot = pq_xmalloc((size_t)N * sizeof *slot), *pos = pq_xmalloc((size_t)N * sizeof *pos);
    for (int i = 0; i < N; i++) slot[i] = i, pos[i] = len[i] - 1;
    pq_cpu_attention_kv_forward(want, q, kc, vc, slot, pos, N, NH, KVH, HS, max_len, window);
    size_t nw = pq_paged_attention_work(N, NH, KVH, HS, max_len);
    float *work = nw ? pq_xmalloc(nw * sizeof *work) : NULL;
    pq_cpu_paged_attention_forward(out, q, kp, vp, dt, tables, maxblk, lens, N, NH, KVH, HS, BT, window, max_len, work);
    double err = max_err(out, want, qn);
    int SL, ns = pq_paged_splits(N, KVH, max_len, &SL);
    CHECK(err < 2e-5, "paged attention N %d NH %d KVH %d HS %d BT %d window %d %s splits %d share %d: max err %.3g",
          N, NH, KVH, HS, BT, window, pq_dtype_name(dt), ns, share, err);
    for (size_t x = 0; x < qn; x++) out[x] = NAN;
    pq_paged_attention_forward(out, q, kp, vp, dt, tables, maxblk, lens, N, NH, KVH, HS, BT, window, max_len, work);
    err = max_err(out, want, qn);
    CHECK(err < 2e-5, "the CPU backend's paged attention N %d NH %d KVH %d HS %d BT %d window %d %s share %d: max err "
          "%.3g", N, NH, KVH, HS, BT, window, pq_dtype_name(dt), share, err);
    free(kp), free(vp), free(perm), free(tables), free(lens), free(kc), free(vc), free(q), free(out), free(want);
    free(slot), free(pos), free(work);
}

static void test_attention_all(void) {
    static const int G[] = {1, 2, 4, 8};
    int len[64];
    for (int gi = 0; gi < 4; gi++)
        for (int w = 0; w < 3; w++) {
            int KVH = 2, NH = KVH * G[gi], window = w == 0 ? 0 : w == 1 ? 7 : 300;
            // few rows, long contexts: many splits
            int n = 5;
            for (int i = 0; i < n; i++) len[i] = 1 + (int)pq_rng_below(&rng, 900);
            len[0] = 1;
            test_attention(n, NH, KVH, 32, 16, window, PQ_F32, len, 1);
            test_attention(n, NH, KVH, 64, 5, window, PQ_BF16, len, 1);
            // many rows: one split
            n = 64;
            for (int i = 0; i < n; i++) len[i] = 1 + (int)pq_rng_below(&rng, 70);
            test_attention(n, 8 * G[gi], 8, 16, 16, window, gi % 2 ? PQ_BF16 : PQ_F32, len, 1);
            // families of samples sharing their prompt's blocks, contexts past several blocks
            n = 23;
            for (int i = 0; i < n; i++) len[i] = 40 + (int)pq_rng_below(&rng, 200);
            test_attention(n, NH, KVH, 32, 16, window, gi % 2 ? PQ_F32 : PQ_BF16, len, 2);
            test_attention(n, NH, KVH, 16, 7, window, PQ_F32, len, 2);
        }
    CHECK(pq_paged_splits(1, 8, 2048, NULL) > 1 && pq_paged_splits(256, 8, 2048, NULL) == 1, "split choice");
    int SL, ns = pq_paged_splits(2, 4, 1000, &SL);
    CHECK(SL % 64 == 0 && (long)ns * SL >= 1000 && (long)(ns - 1) * SL < 1000, "splits cover the context");
    // more blocks wanted (as parity-paged's timing tries): many rows split too, and still equal the flat cache's
    CHECK(pq_paged_splits(64, 8, 600, NULL) == 1, "64 rows of 600: one split by default");
    pq_paged_set_splits(8 * 64 * 4, 64);
    CHECK(pq_paged_splits(64, 8, 600, NULL) == 4, "64 rows of 600 at 2048 blocks: %d splits",
          pq_paged_splits(64, 8, 600, NULL));
    int n = 64;
    for (int i = 0; i < n; i++) len[i] = 1 + (int)pq_rng_below(&rng, 300);
    test_attention(n, 32, 8, 16, 16, 0, PQ_BF16, len, 1);
    test_attention(n, 16, 8, 32, 16, 9, PQ_F32, len, 1);
    // PQ_PAGED_SPLITS, read again after set_splits(-1, -1); a malformed one leaves the defaults
    setenv("PQ_PAGED_SPLITS", "4096,64", 1);
    pq_paged_set_splits(-1, -1);
    CHECK(pq_paged_splits(64, 8, 600, NULL) == 5, "PQ_PAGED_SPLITS=4096,64: %d splits", pq_paged_splits(64, 8, 600, NULL));
    setenv("PQ_PAGED_SPLITS", "4096,x", 1);
    pq_paged_set_splits(-1, -1);
    CHECK(pq_paged_splits(64, 8, 600, NULL) == 1, "PQ_PAGED_SPLITS=4096,x: the defaults");
    unsetenv("PQ_PAGED_SPLITS");
    pq_paged_set_splits(-1, -1);
}

static void test_append_copy(void) {
    int L = 3, NB = 6, BT = 4, KVH = 2, HS = 8, N = 5;
    size_t kd = (size_t)KVH * HS, per = (size_t)NB * BT * kd;
    for (int di = 0; di < 2; di++) {
        PqDtype dt = di ? PQ_BF16 : PQ_F32;
        size_t es = pq_dtype_size(dt);
        void *kp = pq_xcalloc((size_t)L * per, es), *vp = pq_xcalloc((size_t)L * per, es);
        float *k = pq_xmalloc((size_t)N * kd * sizeof *k), *v = pq_xmalloc((size_t)N * kd * sizeof *v);
        for (size_t x = 0; x < N * kd; x++) k[x] = urand(3), v[x] = urand(3);
        int32_t slot[] = {0, 7, 8, 9, 12};
        char *kl = (char *)kp + per * es; // layer 1
        char *vl = (char *)vp + per * es;
        pq_cpu_paged_append(kl, vl, dt, k, v, slot, N, KVH, HS);
        int bad = 0;
        for (int i = 0; i < N; i++)
            for (size_t d = 0; d < kd; d++) {
                size_t at = (size_t)slot[i] * kd + d;
                float gk = dt == PQ_BF16 ? pq_bf16_to_f32(((uint16_t *)kl)[at]) : ((float *)kl)[at];
                float gv = dt == PQ_BF16 ? pq_bf16_to_f32(((uint16_t *)vl)[at]) : ((float *)vl)[at];
                float wk = dt == PQ_BF16 ? pq_bf16_to_f32(pq_f32_to_bf16(k[i * kd + d])) : k[i * kd + d];
                float wv = dt == PQ_BF16 ? pq_bf16_to_f32(pq_f32_to_bf16(v[i * kd + d])) : v[i * kd + d];
                bad += gk != wk || gv != wv;
            }
        CHECK(bad == 0, "append %s: %d wrong", pq_dtype_name(dt), bad);
        // block 2 (positions 8, 9 written) -> block 5, 2 positions, every layer
        PqKvCopy c = {2, 5, 2};
        pq_cpu_paged_copy_blocks(kp, vp, dt, &c, 1, L, NB, BT, KVH, HS);
        bad = 0;
        for (int l = 0; l < L; l++)
            for (size_t x = 0; x < (size_t)BT * kd; x++) {
                size_t s = l * per + 2 * BT * kd + x, d = l * per + 5 * BT * kd + x;
                int copied = x < 2 * kd;
                if (es == 4) bad += copied ? ((float *)kp)[d] != ((float *)kp)[s] || ((float *)vp)[d] != ((float *)vp)[s]
                                           : ((float *)kp)[d] != 0;
                else bad += copied ? ((uint16_t *)kp)[d] != ((uint16_t *)kp)[s] ||
                                         ((uint16_t *)vp)[d] != ((uint16_t *)vp)[s]
                                   : ((uint16_t *)kp)[d] != 0;
            }
        CHECK(bad == 0, "copy blocks %s: %d wrong", pq_dtype_name(dt), bad);
        int nonzero = 0;
        for (size_t x = 0; x < 2 * kd; x++)
            nonzero += es == 4 ? ((float *)kp)[per + 5 * BT * kd + x] != 0 : ((uint16_t *)kp)[per + 5 * BT * kd + x] != 0;
        CHECK(nonzero > 0, "copy blocks %s: layer 1 got the appended rows", pq_dtype_name(dt));
        free(kp), free(vp), free(k), free(v);
    }
}

static void test_sample(void) {
    int V = 1000, N = 6;
    float *lg = pq_xmalloc((size_t)N * V * sizeof *lg);
    for (int x = 0; x < N * V; x++) lg[x] = urand(4);
    // row 0: greedy with a tie (lowest id wins); row 1: greedy over -inf
    lg[17] = lg[400] = 9;
    for (int v = 0; v < V; v++) lg[V + v] = v == 3 || v == 900 ? 1.5f : -INFINITY;
    lg[V + 900] = 2;
    // row 5: every logit -inf
    for (int v = 0; v < V; v++) lg[5 * V + v] = -INFINITY;
    PqSampleRow rows[6] = {
        {.temperature = 0, .top_p = 1},
        {.temperature = 0, .top_p = 1},
        {.seed = 7, .seq = 0, .step = 0, .temperature = 1, .top_p = 1, .top_k = 5},
        {.seed = 7, .seq = 0, .step = 0, .temperature = 0.7f, .top_p = 0.5f},
        {.seed = 7, .seq = 0, .step = 0, .temperature = 1.3f, .top_p = 1, .min_p = 0.3f},
        {.seed = 7, .temperature = 1, .top_p = 1},
    };
    int32_t ids[6], again[6];
    pq_cpu_sample(ids, lg, rows, N, V);
    CHECK(ids[0] == 17, "argmax, lowest id among ties: %d", ids[0]);
    CHECK(ids[1] == 900, "argmax past -inf: %d", ids[1]);
    CHECK(ids[5] == -1, "every logit -inf: %d", ids[5]);
    PqSampleRow big = {.seed = 1, .temperature = 1, .top_p = 1, .min_p = 5}; // as min_p 1: the most likely (and its ties)
    int32_t top;
    pq_cpu_sample(&top, lg, &big, 1, V);
    CHECK(top == 17 || top == 400, "min_p above 1 keeps the most likely (two tie): %d", top);
    pq_cpu_sample(again, lg, rows, N, V);
    CHECK(memcmp(ids, again, sizeof ids) == 0, "the same draws again");
    // the race's keys taken in lanes (pq_log_fast) decide nothing themselves: the winner is the exact race's, with
    // libm's logs over every kept token (uncut rows here; near-ties by logits repeated, masked tokens, 3 temperatures)
    int mism = 0;
    for (int t = 0; t < 600; t++) {
        float x[1000];
        for (int v = 0; v < V; v++) x[v] = t % 3 == 0 ? (float)(v % 7) * 0.25f : urand(t % 2 ? 8 : 1);
        for (int v = 0; v < V; v += 5 + t % 11) x[v] = -INFINITY;
        PqSampleRow rr = {.seed = 11 + (uint64_t)t, .seq = (uint32_t)t % 4, .step = (uint32_t)t,
                          .temperature = t % 5 == 0 ? 0.3f : t % 5 == 1 ? 1.7f : 1, .top_p = 1};
        int32_t id, want = -1;
        pq_cpu_sample(&id, x, &rr, 1, V);
        uint64_t key = pq_sample_key(rr.seed, rr.seq, rr.step);
        double bk = -INFINITY;
        for (int v = 0; v < V; v++) {
            if (x[v] == -INFINITY) continue;
            double k = (double)(x[v] / rr.temperature) - log(-log(pq_sample_uniform(key, v)));
            if (want < 0 || k > bk) want = v, bk = k;
        }
        mism += id != want;
    }
    CHECK(mism == 0, "the race's winner is the exact race's: %d of 600 draws differ", mism);
    // pq_log_fast against libm's log: a few ulp over the race's arguments (u in (0, 1), -log u down to 2^-54)
    double worst = 0;
    for (int i = 0; i < 200000; i++) {
        double xv = i < 1000 ? 1 + (i - 500) * 0x1p-52 // around 1, where log is smallest
                    : i < 2000 ? ldexp(1.4142135623730951 + (i - 1500) * 0x1p-52, i % 120 - 60) // the split
                               : exp((pq_rng_uniform(&rng) * 2 - 1) * 40);
        if (xv == 1) continue;
        double want = log(xv), got = pq_log_fast(xv), ulp = nextafter(fabs(want), INFINITY) - fabs(want);
        double e = fabs(got - want) / ulp;
        worst = e > worst ? e : worst;
    }
    CHECK(worst <= 4, "pq_log_fast: %.2f ulp at worst against log", worst);
    // support of the cuts over many steps; steps draw different tokens
    float *z = pq_xmalloc((size_t)V * sizeof *z);
    for (int r = 2; r <= 4; r++) {
        const float *x = lg + (size_t)r * V;
        float mx = -INFINITY;
        for (int v = 0; v < V; v++) mx = x[v] > mx ? x[v] : mx;
        int distinct = 0, outside = 0, seen[1000] = {0};
        for (int st = 0; st < 400; st++) {
            PqSampleRow rr = rows[r];
            rr.step = (uint32_t)st;
            int32_t id;
            pq_cpu_sample(&id, x, &rr, 1, V);
            if (id < 0 || id >= V) {
                outside++;
                continue;
            }
            distinct += !seen[id];
            seen[id] = 1;
            int above = 0; // tokens more likely than id
            for (int v = 0; v < V; v++) above += x[v] > x[id];
            double p = exp((double)(x[id] - mx) / rr.temperature);
            if (r == 2 && above >= 5) outside++;
            if (r == 4 && p < rr.min_p) outside++;
            if (r == 3) { // the mass of the more likely tokens stays below top_p
                double Z = 0, before = 0;
                for (int v = 0; v < V; v++) {
                    double e = exp((double)(x[v] - mx) / rr.temperature);
                    Z += e;
                    if (x[v] > x[id]) before += e;
                }
                if (before >= 0.5 * Z) outside++;
            }
        }
        CHECK(outside == 0 && distinct > 1, "row %d: %d draws outside the cut, %d distinct", r, outside, distinct);
    }
    free(z);
    free(lg);
}

// The pieces together as gen.c will drive them: two prompts prefilled into
// the paged cache (2 layers), forked into 3 samples each, decode steps
// appending one token per sample (the copies on write carried out first),
// a sample released and re-forked midway; each step, every sample's
// attention over the pool equals contiguous attention over its own history.
static void test_flow(PqDtype dt, int window) {
    enum { NS = 6, L = 2, BT = 4, NB = 40, KVH = 2, NH = 4, HS = 16, TMAX = 64, STEPS = 12 };
    size_t kd = (size_t)KVH * HS, per = (size_t)NB * BT * kd, es = pq_dtype_size(dt);
    PqKvPage *kp = pq_kvpage_new(NB, BT);
    char *K = pq_xcalloc(L * per, es), *V = pq_xcalloc(L * per, es);
    float *mk = pq_xcalloc((size_t)NS * TMAX * kd, sizeof *mk), *mv = pq_xcalloc((size_t)NS * TMAX * kd, sizeof *mv);
    PqKvSeq seq[NS], *sp[NS];
    for (int i = 0; i < NS; i++) pq_kvseq_init(&seq[i]), sp[i] = &seq[i];
    float k[NS * 8 * 32], v[NS * 8 * 32], q[NS * 4 * 16], want[NS * 4 * 16], out[NS * 4 * 16];
    int32_t slot[NS * 8], tables[NS * (TMAX / BT)], len[NS], sl[NS], pos[NS];
    PqKvCopy copies[NS];
    PqErr e;
    int bad = 0, ncow = 0;
    // rows n of seq s from position p0 in every layer; layer 1's into the model
    for (int s = 0; s < NS; s += 3) {
        int P = s ? 5 : 7;
        PqKvCopy c;
        bad += pq_kvpage_append(kp, &seq[s], P, &c, &e) != 0 || c.n != 0;
        for (int t = 0; t < P; t++) slot[t] = pq_kvseq_slot(&seq[s], t, BT);
        for (int l = 0; l < L; l++) {
            for (size_t x = 0; x < (size_t)P * kd; x++) k[x] = urand(1), v[x] = urand(1);
            pq_cpu_paged_append(K + l * per * es, V + l * per * es, dt, k, v, slot, P, KVH, HS);
        }
        for (int t = 0; t < P; t++) // the model reads back what layer 1 holds (rounded to the pool's dtype)
            for (size_t d = 0; d < kd; d++) {
                size_t at = (size_t)slot[t] * kd + d + per;
                mk[((size_t)s * TMAX + t) * kd + d] = dt == PQ_BF16 ? pq_bf16_to_f32(((uint16_t *)K)[at]) : ((float *)K)[at];
                mv[((size_t)s * TMAX + t) * kd + d] = dt == PQ_BF16 ? pq_bf16_to_f32(((uint16_t *)V)[at]) : ((float *)V)[at];
            }
        for (int f = 1; f < 3; f++) {
            pq_kvpage_fork(kp, &seq[s], &seq[s + f]);
            memcpy(mk + (size_t)(s + f) * TMAX * kd, mk + (size_t)s * TMAX * kd, (size_t)TMAX * kd * sizeof *mk);
            memcpy(mv + (size_t)(s + f) * TMAX * kd, mv + (size_t)s * TMAX * kd, (size_t)TMAX * kd * sizeof *mv);
        }
    }
    for (int step = 0; step < STEPS; step++) {
        if (step == 6) { // sample 2 finishes; a new one forks sample 0's whole history
            pq_kvpage_release(kp, &seq[2]);
            pq_kvpage_fork(kp, &seq[0], &seq[2]);
            memcpy(mk + 2 * TMAX * kd, mk, (size_t)TMAX * kd * sizeof *mk);
            memcpy(mv + 2 * TMAX * kd, mv, (size_t)TMAX * kd * sizeof *mv);
        }
        int nc = 0;
        for (int i = 0; i < NS; i++) {
            bad += pq_kvpage_append(kp, &seq[i], 1, &copies[nc], &e) != 0;
            nc += copies[nc].n > 0;
        }
        ncow += nc;
        pq_cpu_paged_copy_blocks(K, V, dt, copies, nc, L, NB, BT, KVH, HS);
        for (int i = 0; i < NS; i++) slot[i] = pq_kvseq_slot(&seq[i], seq[i].len - 1, BT);
        for (int l = 0; l < L; l++) {
            for (size_t x = 0; x < NS * kd; x++) k[x] = urand(1), v[x] = urand(1);
            pq_cpu_paged_append(K + l * per * es, V + l * per * es, dt, k, v, slot, NS, KVH, HS);
        }
        for (int i = 0; i < NS; i++)
            for (size_t d = 0; d < kd; d++) {
                float a = k[i * kd + d], b = v[i * kd + d];
                if (dt == PQ_BF16) a = pq_bf16_to_f32(pq_f32_to_bf16(a)), b = pq_bf16_to_f32(pq_f32_to_bf16(b));
                mk[((size_t)i * TMAX + seq[i].len - 1) * kd + d] = a;
                mv[((size_t)i * TMAX + seq[i].len - 1) * kd + d] = b;
            }
        for (int x = 0; x < NS * NH * HS; x++) q[x] = urand(2);
        int max_len = pq_kvpage_tables(sp, NS, tables, TMAX / BT, len);
        pq_cpu_paged_attention_forward(out, q, K + per * es, V + per * es, dt, tables, TMAX / BT, len, NS, NH, KVH, HS,
                                       BT, window, max_len, NULL);
        for (int i = 0; i < NS; i++) sl[i] = i, pos[i] = seq[i].len - 1;
        pq_cpu_attention_kv_forward(want, q, mk, mv, sl, pos, NS, NH, KVH, HS, TMAX, window);
        for (int x = 0; x < NS * NH * HS; x++) bad += !(fabsf(out[x] - want[x]) < 1e-5f);
    }
    CHECK(bad == 0 && ncow >= 4, "flow %s window %d: %d mismatches, %d copies on write", pq_dtype_name(dt), window, bad,
          ncow);
    for (int i = 0; i < NS; i++) pq_kvseq_free(kp, &seq[i]);
    CHECK(pq_kvpage_free_blocks(kp) == NB, "flow: every block back");
    pq_kvpage_free(kp);
    free(K), free(V), free(mk), free(mv);
}

// ---- prefill over the paged cache in segments ----

// The arguments of one pq_cpu_paged_prefill_forward call.
typedef struct {
    float *out, *q, *work;
    void *kp, *vp;
    PqDtype dt;
    int32_t *tables, *len, *seg;
    int maxblk, nseg, max_q, N, NH, KVH, HS, BT, NB, window, max_len;
} PrefillCall;

static void prefill_call(const PrefillCall *c) {
    pq_cpu_paged_prefill_forward(c->out, c->q, c->kp, c->vp, c->dt, c->tables, c->maxblk, c->len, c->seg, c->nseg,
                                 c->max_q, c->N, c->NH, c->KVH, c->HS, c->BT, c->NB, c->window, c->max_len, c->work);
}

// Runs the call in a forked child, on one thread; its stderr (up to cap - 1 bytes) into err. Returns the signal that ended the
// child (0: it returned).
static int prefill_child(const PrefillCall *c, char *err, size_t cap) {
    int fd[2];
    if (pipe(fd) != 0) return -1;
    fflush(stdout), fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        close(fd[0]);
        dup2(fd[1], 2);
        alarm(60);            // a hang ends as SIGALRM
        pq_cpu_set_threads(1); // (OpenMP's threads of the parent are not in the child)
        prefill_call(c);
        _exit(0);
    }
    close(fd[1]);
    size_t n = 0;
    ssize_t r;
    while ((r = read(fd[0], err + n, cap - 1 - n)) > 0 && (n += (size_t)r) < cap - 1) {}
    err[n] = 0;
    close(fd[0]);
    int st;
    if (waitpid(pid, &st, 0) != pid) return -1;
    return WIFSIGNALED(st) ? WTERMSIG(st) : WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

// The call with one promise broken (made by edit on a copy of the valid arguments) aborts with want on stderr.
static void prefill_broken(const char *what, const PrefillCall *c, const char *want) {
    char err[1024];
    int sig = prefill_child(c, err, sizeof err);
    CHECK(sig == SIGABRT && strstr(err, want), "prefill, %s: signal %d, stderr \"%s\", want SIGABRT and \"%s\"", what,
          sig, err, want);
}

// Five sequences in a pool of random blocks, their rows in segments as gen.c makes them: a chunk of 29 after a
// context of 37, a prompt of 20 from position 0, a decoding row at 50, one at 1, a chunk of 5 after 16 (a block's
// end); the segments' output equals decode attention's bit for bit and contiguous attention's; then each
// promise broken.
static void test_prefill(PqDtype dt, int window) {
    enum { S = 5, BT = 16, KVH = 2, NH = 8, HS = 32, NB = 23 };
    static const int ctx[S] = {37, 0, 49, 0, 16}, rows[S] = {29, 20, 1, 1, 5};
    int N = 0, max_len = 0, max_q = 0, maxblk = 0;
    for (int s = 0; s < S; s++) {
        N += rows[s], max_q = rows[s] > max_q ? rows[s] : max_q;
        int L = ctx[s] + rows[s], nb = (L + BT - 1) / BT;
        max_len = L > max_len ? L : max_len, maxblk = nb > maxblk ? nb : maxblk;
    }
    size_t kd = (size_t)KVH * HS, es = pq_dtype_size(dt), qn = (size_t)N * NH * HS;
    void *kp = pq_xmalloc((size_t)NB * BT * kd * es), *vp = pq_xmalloc((size_t)NB * BT * kd * es);
    for (size_t r = 0; r < (size_t)NB * BT * kd; r++) {
        float a = urand(1), b = urand(1);
        if (dt == PQ_BF16) ((uint16_t *)kp)[r] = pq_f32_to_bf16(a), ((uint16_t *)vp)[r] = pq_f32_to_bf16(b);
        else ((float *)kp)[r] = a, ((float *)vp)[r] = b;
    }
    // each sequence's blocks drawn from the pool, the last block of the pool among them
    int perm[NB], used = 0, stab[S][8];
    for (int b = 0; b < NB; b++) perm[b] = b;
    pq_rng_shuffle_int(&rng, perm, NB);
    for (int s = 0; s < S; s++)
        for (int b = 0; b < maxblk; b++) stab[s][b] = b < (ctx[s] + rows[s] + BT - 1) / BT ? perm[used++] : 0;
    int has_last = 0;
    for (int s = 0; s < S; s++)
        for (int b = 0; b < (ctx[s] + rows[s] + BT - 1) / BT; b++) has_last |= stab[s][b] == NB - 1;
    if (!has_last) stab[0][0] = NB - 1; // (block NB - 1 was left over: sequence 0 takes it instead)
    int32_t *tables = pq_xmalloc((size_t)N * maxblk * sizeof *tables), *len = pq_xmalloc((size_t)N * sizeof *len);
    int32_t seg[S + 1], slot[64], pos[64];
    for (int s = 0, i = 0; s < S; s++) {
        seg[s] = i;
        for (int t = ctx[s]; t < ctx[s] + rows[s]; t++, i++) {
            len[i] = t + 1, slot[i] = s, pos[i] = t;
            for (int b = 0; b < maxblk; b++) tables[(size_t)i * maxblk + b] = stab[s][b];
        }
    }
    seg[S] = N;
    // the sequences' keys and values in a contiguous cache (S, max_len) as f32
    float *kc = pq_xcalloc((size_t)S * max_len * kd, sizeof *kc), *vc = pq_xcalloc((size_t)S * max_len * kd, sizeof *vc);
    for (int s = 0; s < S; s++)
        for (int j = 0; j < ctx[s] + rows[s]; j++)
            for (size_t d = 0; d < kd; d++) {
                size_t src = ((size_t)stab[s][j / BT] * BT + j % BT) * kd + d, dst = ((size_t)s * max_len + j) * kd + d;
                kc[dst] = dt == PQ_BF16 ? pq_bf16_to_f32(((uint16_t *)kp)[src]) : ((float *)kp)[src];
                vc[dst] = dt == PQ_BF16 ? pq_bf16_to_f32(((uint16_t *)vp)[src]) : ((float *)vp)[src];
            }
    float *q = pq_xmalloc(qn * sizeof *q), *out = pq_xmalloc(qn * sizeof *out), *dec = pq_xmalloc(qn * sizeof *dec);
    float *want = pq_xmalloc(qn * sizeof *want);
    for (size_t x = 0; x < qn; x++) q[x] = urand(2), out[x] = dec[x] = NAN;
    size_t nw = pq_paged_attention_work(N, NH, KVH, HS, max_len);
    float *work = nw ? pq_xmalloc(nw * sizeof *work) : NULL;
    PrefillCall c = {out, q, work, kp, vp, dt, tables, len, seg, maxblk, S, max_q, N, NH, KVH, HS, BT, NB, window,
                     max_len};
    prefill_call(&c);
    pq_cpu_paged_attention_forward(dec, q, kp, vp, dt, tables, maxblk, len, N, NH, KVH, HS, BT, window, max_len, work);
    pq_cpu_attention_kv_forward(want, q, kc, vc, slot, pos, N, NH, KVH, HS, max_len, window);
    double err = max_err(out, want, qn);
    CHECK(memcmp(out, dec, qn * sizeof *out) == 0, "prefill %s window %d: not decode attention's bits",
          pq_dtype_name(dt), window);
    CHECK(err < 2e-5, "prefill %s window %d: max err %.3g against contiguous attention", pq_dtype_name(dt), window, err);
    // the CPU backend's own (blocks of the segments' rows through BLAS)
    float *fast = pq_xmalloc(qn * sizeof *fast);
    for (size_t x = 0; x < qn; x++) fast[x] = NAN;
    pq_paged_prefill_forward(fast, q, kp, vp, dt, tables, maxblk, len, seg, S, max_q, N, NH, KVH, HS, BT, NB, window,
                             max_len, work);
    err = max_err(fast, want, qn);
    CHECK(err < 2e-5, "the CPU backend's prefill %s window %d: max err %.3g against contiguous attention",
          pq_dtype_name(dt), window, err);
    free(fast);

    // the valid call in a child returns (the harness itself can tell)
    char buf[1024];
    CHECK(prefill_child(&c, buf, sizeof buf) == 0 && buf[0] == 0, "prefill, valid segments in a child: \"%s\"", buf);
    // each promise broken on a copy of the arguments (segment 0: rows 0..28, 1: 29..48, 2: 49, 3: 50, 4: 51..55)
    int32_t *t2 = pq_xmalloc((size_t)N * maxblk * sizeof *t2), *l2 = pq_xmalloc((size_t)N * sizeof *l2), s2[S + 1];
#define RESET() (memcpy(t2, tables, (size_t)N * maxblk * sizeof *t2), memcpy(l2, len, (size_t)N * sizeof *l2), \
                 memcpy(s2, seg, sizeof s2), b = c, b.tables = t2, b.len = l2, b.seg = s2)
    PrefillCall b;
    char want_msg[160];
#define MSG(s, r, why) (snprintf(want_msg, sizeof want_msg, "pq_paged_prefill_forward: segment %d, row %d: %s\n", \
                                 s, r, why), want_msg)
    const char *cover = "the segments do not cover rows [0, N)", *shape = "empty, decreasing or longer than max_q";
    const char *range = "a length out of range", *consec = "positions not consecutive";
    const char *table = "another table, or a block out of the pool";
    RESET(), s2[0] = 1;
    prefill_broken("seg[0] = 1", &b, MSG(S, N, cover));
    RESET(), s2[S] = N - 1;
    prefill_broken("seg[nseg] = N - 1", &b, MSG(S, N, cover));
    RESET(), b.nseg = S - 1;
    prefill_broken("a segment left out", &b, MSG(S - 1, N, cover));
    RESET(), s2[3] = s2[2];
    prefill_broken("an empty segment", &b, MSG(2, 49, shape));
    RESET(), s2[2] = 28;
    prefill_broken("a decreasing boundary", &b, MSG(1, 29, shape));
    RESET(), b.max_q = max_q - 1;
    prefill_broken("a segment longer than max_q", &b, MSG(0, 0, shape));
    RESET(), l2[10]++;
    prefill_broken("a position skipped", &b, MSG(0, 10, consec));
    RESET(), l2[40] = l2[39];
    prefill_broken("a position repeated", &b, MSG(1, 40, consec));
    RESET(), s2[2] = 50, s2[3] = 51, s2[4] = N, b.nseg = S - 1; // segment 1 takes the decoding row at 50 too
    prefill_broken("two sequences in one segment", &b, MSG(1, 49, consec));
    RESET(), l2[50] = 0;
    prefill_broken("a length 0", &b, MSG(3, 50, range));
    RESET(), b.max_len = max_len - 1;
    prefill_broken("a length above max_len", &b, MSG(0, 28, range));
    RESET(), l2[49] = maxblk * BT + 1, b.max_len = maxblk * BT + 1;
    prefill_broken("a length past the table", &b, MSG(2, 49, range));
    RESET(), t2[(size_t)7 * maxblk + 1] = stab[1][0];
    prefill_broken("a row with another table", &b, MSG(0, 7, table));
    RESET();
    for (int i = 51; i < 56; i++) t2[(size_t)i * maxblk + 1] = NB;
    prefill_broken("a block = NB", &b, MSG(4, 51, table));
    RESET();
    for (int i = 29; i < 49; i++) t2[(size_t)i * maxblk] = -1;
    prefill_broken("a block -1", &b, MSG(1, 29, table));
#undef RESET
#undef MSG
    // still valid: padding past a row's blocks may differ; one segment may be exactly max_q rows
    memcpy(t2, tables, (size_t)N * maxblk * sizeof *t2);
    for (int i = 29; i < 49; i++) t2[(size_t)i * maxblk + maxblk - 1] = i % 2 ? -1 : NB + i; // prompt: 2 blocks used
    b = c, b.tables = t2;
    CHECK(prefill_child(&b, buf, sizeof buf) == 0, "prefill: padding past the used blocks refused: \"%s\"", buf);
    free(t2), free(l2);
    free(kp), free(vp), free(tables), free(len), free(kc), free(vc), free(q), free(out), free(dec), free(want);
    free(work);
}

// driver for tests/py/test_paged_sample.py
static int driver(void) {
    int V, draws;
    float T, p, mp;
    int k;
    unsigned long long seed;
    if (scanf("%d %f %d %f %f %d %llu", &V, &T, &k, &p, &mp, &draws, &seed) != 7 || V < 1) return 2;
    float *x = pq_xmalloc((size_t)V * sizeof *x);
    char tok[64];
    for (int v = 0; v < V; v++) {
        if (scanf("%63s", tok) != 1) return 2;
        x[v] = strcmp(tok, "-inf") == 0 ? -INFINITY : strtof(tok, NULL);
    }
    long *cnt = pq_xcalloc((size_t)V + 1, sizeof *cnt);
    enum { CH = 256 };
    PqSampleRow rows[CH];
    int32_t ids[CH];
    float *lg = pq_xmalloc((size_t)CH * V * sizeof *lg);
    for (int i = 0; i < CH; i++) memcpy(lg + (size_t)i * V, x, (size_t)V * sizeof *x);
    for (int d = 0; d < draws; d += CH) {
        int n = draws - d < CH ? draws - d : CH;
        for (int i = 0; i < n; i++)
            rows[i] = (PqSampleRow){.seed = seed + (uint64_t)(d + i) / 1000, .seq = (uint32_t)((d + i) % 7),
                                    .step = (uint32_t)(d + i), .temperature = T, .top_p = p, .min_p = mp, .top_k = k};
        pq_cpu_sample(ids, lg, rows, n, V);
        for (int i = 0; i < n; i++) cnt[ids[i] < 0 ? V : ids[i]]++;
    }
    for (int v = 0; v <= V; v++) printf("%ld\n", cnt[v]);
    free(x), free(cnt), free(lg);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "sample") == 0) return driver();
    pq_rng_seed(&rng, 11);
    test_append_copy();
    test_attention_all();
    test_flow(PQ_F32, 0);
    test_flow(PQ_BF16, 5);
    test_prefill(PQ_F32, 0);
    test_prefill(PQ_BF16, 7);
    test_sample();
    printf("test-paged: %d checks, %d failed\n", n_checks, n_fail);
    return n_fail != 0;
}
