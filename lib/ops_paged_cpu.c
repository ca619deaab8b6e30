// ops_paged_cpu.c: the plain-C implementations of ops_paged.h (paged KV
// append and block copies, split decode attention, sampling), the oracle
// of lib/cuda/paged.cu.
#include "ops_paged.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exp_fast.h"
#include "st_write.h"
#include "util.h"

// Blocks (row, KV head, split) that fill a GPU; splits of 128 positions at least.
#define TARGET_BLOCKS 264
#define MIN_SPLIT 128

static int split_target = -1, split_min = -1; // -1: not yet read from PQ_PAGED_SPLITS

void pq_paged_set_splits(int target_blocks, int min_split) {
    split_target = target_blocks < 0 ? -1 : target_blocks ? target_blocks : TARGET_BLOCKS;
    split_min = min_split < 0 ? -1 : min_split ? min_split : MIN_SPLIT;
}

static void split_params(int *target, int *min) {
    if (split_target < 0 || split_min < 0) {
        int t = TARGET_BLOCKS, m = MIN_SPLIT;
        const char *e = getenv("PQ_PAGED_SPLITS");
        if (e && *e) {
            char *end;
            long a = strtol(e, &end, 10), b = m;
            if (*end == ',') b = strtol(end + 1, &end, 10);
            if (*end || a < 1 || a > 1 << 20 || b < 64 || b > 1 << 20)
                fprintf(stderr, "pq: PQ_PAGED_SPLITS=%s is not BLOCKS[,MIN] (1..%d, 64..%d): %d,%d used\n", e, 1 << 20,
                        1 << 20, t, m);
            else t = (int)a, m = (int)b;
        }
        if (split_target < 0) split_target = t;
        if (split_min < 0) split_min = m;
    }
    *target = split_target, *min = split_min;
}

int pq_paged_splits(int N, int KVH, int max_len, int *split_len) {
    int target, min_split;
    split_params(&target, &min_split);
    long have = (long)N * KVH;
    if (have < 1) have = 1; // (no rows: one split, no work)
    int ns = have >= target ? 1 : (int)((target + have - 1) / have);
    int most = (max_len + min_split - 1) / min_split;
    if (ns > most) ns = most;
    if (ns < 1) ns = 1;
    int sl = (max_len + ns - 1) / ns;
    sl = (sl + 63) / 64 * 64;
    if (sl < 64) sl = 64;
    ns = (max_len + sl - 1) / sl;
    if (ns < 1) ns = 1;
    if (split_len) *split_len = sl;
    return ns;
}

size_t pq_paged_attention_work(int N, int NH, int KVH, int HS, int max_len) {
    int ns = pq_paged_splits(N, KVH, max_len, NULL);
    return ns > 1 ? (size_t)N * NH * ns * (HS + 2) : 0;
}

static inline float elem(const void *p, PqDtype dt, size_t i) {
    return dt == PQ_BF16 ? pq_bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

void pq_cpu_paged_append(void *kp, void *vp, PqDtype dt, const float *k, const float *v, const int32_t *slot, int N,
                         int KVH, int HS) {
    size_t kd = (size_t)KVH * HS;
    for (int i = 0; i < N; i++) {
        if (slot[i] < 0) continue; // a row that pads a CUDA graph's step (gen.c): written nowhere
        size_t at = (size_t)slot[i] * kd;
        if (dt == PQ_BF16) {
            uint16_t *K = (uint16_t *)kp + at, *Vv = (uint16_t *)vp + at;
            for (size_t d = 0; d < kd; d++) K[d] = pq_f32_to_bf16(k[i * kd + d]), Vv[d] = pq_f32_to_bf16(v[i * kd + d]);
        } else {
            memcpy((float *)kp + at, k + i * kd, kd * sizeof(float));
            memcpy((float *)vp + at, v + i * kd, kd * sizeof(float));
        }
    }
}

void pq_cpu_paged_rope_append(float *q, float *k, const float *v, const int32_t *pos, const float *inv_freq, void *kp,
                              void *vp, PqDtype dt, const int32_t *slot, int N, int NH, int KVH, int HS) {
    pq_cpu_rope_qk_forward(q, k, pos, inv_freq, N, NH, KVH, HS);
    pq_cpu_paged_append(kp, vp, dt, k, v, slot, N, KVH, HS);
}

void pq_cpu_paged_copy_blocks(void *kp, void *vp, PqDtype dt, const PqKvCopy *copies, int ncopy, int L, int NB,
                              int BT, int KVH, int HS) {
    size_t es = pq_dtype_size(dt), row = (size_t)KVH * HS * es, layer = (size_t)NB * BT * row;
    for (int l = 0; l < L; l++)
        for (int c = 0; c < ncopy; c++) {
            size_t s = l * layer + (size_t)copies[c].src * BT * row, d = l * layer + (size_t)copies[c].dst * BT * row;
            memcpy((char *)kp + d, (char *)kp + s, (size_t)copies[c].n * row);
            memcpy((char *)vp + d, (char *)vp + s, (size_t)copies[c].n * row);
        }
}

// Each (row, head) split by split as the GPU does: a split's max m, sum l
// and unnormalized P V, then the splits combined.
void pq_cpu_paged_attention_forward(float *out, const float *q, const void *kp, const void *vp, PqDtype dt,
                                    const int32_t *tables, int maxblk, const int32_t *len, int N, int NH, int KVH,
                                    int HS, int BT, int window, int max_len, float *work) {
    int SL, ns = pq_paged_splits(N, KVH, max_len, &SL), G = NH / KVH;
    float scale = 1.0f / sqrtf((float)HS);
    size_t kd = (size_t)KVH * HS;
    (void)work;
#pragma omp parallel num_threads(pq_cpu_threads())
    {
        float *s = pq_xmalloc((size_t)SL * sizeof *s), *acc = pq_xmalloc((size_t)ns * (HS + 2) * sizeof *acc);
#pragma omp for schedule(dynamic, 1)
        for (long w = 0; w < (long)N * NH; w++) {
            int i = (int)(w / NH), h = (int)(w % NH), kh = h / G;
            const float *qi = q + ((size_t)i * NH + h) * HS;
            const int32_t *tab = tables + (size_t)i * maxblk;
            int n = len[i], lo = 0;
            if (window > 0 && n - 1 - window > lo) lo = n - 1 - window;
            for (int sp = 0; sp < ns; sp++) {
                float *a = acc + (size_t)sp * (HS + 2); // m, l, o (HS)
                int j0 = sp * SL > lo ? sp * SL : lo, j1 = (sp + 1) * SL < n ? (sp + 1) * SL : n;
                a[0] = -INFINITY, a[1] = 0;
                for (int d = 0; d < HS; d++) a[2 + d] = 0;
                if (j0 >= j1) continue;
                float m = -INFINITY;
                for (int j = j0; j < j1; j++) {
                    size_t r = ((size_t)tab[j / BT] * BT + j % BT) * kd + (size_t)kh * HS;
                    float dot = 0;
                    for (int d = 0; d < HS; d++) dot += qi[d] * elem(kp, dt, r + d);
                    s[j - j0] = dot * scale;
                    m = s[j - j0] > m ? s[j - j0] : m;
                }
                float l = 0;
                for (int j = j0; j < j1; j++) {
                    size_t r = ((size_t)tab[j / BT] * BT + j % BT) * kd + (size_t)kh * HS;
                    float p = expf(s[j - j0] - m);
                    l += p;
                    for (int d = 0; d < HS; d++) a[2 + d] += p * elem(vp, dt, r + d);
                }
                a[0] = m, a[1] = l;
            }
            float M = -INFINITY, L = 0;
            for (int sp = 0; sp < ns; sp++) M = acc[(size_t)sp * (HS + 2)] > M ? acc[(size_t)sp * (HS + 2)] : M;
            for (int sp = 0; sp < ns; sp++) {
                const float *a = acc + (size_t)sp * (HS + 2);
                if (a[1] > 0) L += a[1] * expf(a[0] - M);
            }
            float *o = out + ((size_t)i * NH + h) * HS;
            for (int d = 0; d < HS; d++) {
                float x = 0;
                for (int sp = 0; sp < ns; sp++) {
                    const float *a = acc + (size_t)sp * (HS + 2);
                    if (a[1] > 0) x += a[2 + d] * expf(a[0] - M);
                }
                o[d] = x / L;
            }
        }
        free(s);
        free(acc);
    }
}

// A segment's promise broken: the caller's error (the CUDA backend would attend over other keys), so stop.
static void bad_segments(int s, int r, const char *why) {
    fprintf(stderr, "pq_paged_prefill_forward: segment %d, row %d: %s\n", s, r, why);
    abort();
}

void pq_cpu_paged_check_segments(const int32_t *tables, int maxblk, const int32_t *len, const int32_t *seg, int nseg,
                                 int max_q, int N, int BT, int NB, int max_len) {
    if (nseg < 0 || seg[0] != 0 || seg[nseg] != N) bad_segments(nseg, N, "the segments do not cover rows [0, N)");
    for (int s = 0; s < nseg; s++) {
        int a = seg[s], b = seg[s + 1];
        if (b <= a || b - a > max_q) bad_segments(s, a, "empty, decreasing or longer than max_q");
        const int32_t *t0 = tables + (size_t)a * maxblk;
        for (int r = a; r < b; r++) {
            if (len[r] < 1 || len[r] > max_len || len[r] > maxblk * BT) bad_segments(s, r, "a length out of range");
            if (r > a && len[r] != len[r - 1] + 1) bad_segments(s, r, "positions not consecutive");
            const int32_t *t = tables + (size_t)r * maxblk;
            for (int k = 0; k <= (len[r] - 1) / BT; k++)
                if (t[k] != t0[k] || t[k] < 0 || t[k] >= NB) bad_segments(s, r, "another table, or a block out of the pool");
        }
    }
}

void pq_cpu_paged_prefill_forward(float *out, const float *q, const void *kp, const void *vp, PqDtype dt,
                                  const int32_t *tables, int maxblk, const int32_t *len, const int32_t *seg,
                                  int nseg, int max_q, int N, int NH, int KVH, int HS, int BT, int NB, int window,
                                  int max_len, float *work) {
    pq_cpu_paged_check_segments(tables, maxblk, len, seg, nseg, max_q, N, BT, NB, max_len);
    pq_cpu_paged_attention_forward(out, q, kp, vp, dt, tables, maxblk, len, N, NH, KVH, HS, BT, window, max_len, work);
}

// ---- sampling ----

// How far pq_log_fast's race keys may be from the exact ones, absolute and relative to the key: far more than
// its few ulp (test-paged measures them) and far less than the keys' spread, so the exact race stays a token or two.
#define RACE_SLACK 1e-9

// Scratch of one thread's rows: V entries each.
typedef struct {
    float *z;
    int *idx, *tmp;
    uint32_t *key, *ktmp;
    double *e;
} SampleWork;

static int32_t sample_row(const float *x, const PqSampleRow *r, int V, const SampleWork *w) {
    if (!(r->temperature > 0)) {
        int best = -1;
        for (int v = 0; v < V; v++)
            if (x[v] != -INFINITY && (best < 0 || x[v] > x[best])) best = v;
        return best;
    }
    float *z = w->z;
    int *idx = w->idx;
    int n = 0;
    float zmax = -INFINITY, T = r->temperature;
#pragma omp simd reduction(max : zmax) reduction(+ : n)
    for (int v = 0; v < V; v++) { // (in lanes: a sampled row's every token passes here)
        z[v] = x[v] / T;          // (-INFINITY stays so)
        n += z[v] != -INFINITY;
        zmax = z[v] > zmax ? z[v] : zmax;
    }
    if (n == 0) return -1;
    if (n == V)
#pragma omp simd
        for (int v = 0; v < V; v++) idx[v] = v;
    else
        for (int v = 0, i = 0; v < V; v++)
            if (z[v] != -INFINITY) idx[i++] = v;
    // every finite token, most likely first, where a cut below keeps a prefix; with none, the race below finds
    // the same winner in id order (equal keys go to the lowest id either way), and the sort was a fifth of a
    // sampled run's time
    if ((r->top_k > 0 && r->top_k < n) || r->top_p < 1 || r->min_p > 0) pq_sort_desc(idx, n, z, w->key, w->ktmp, w->tmp);
    int keep = n;
    if (r->top_k > 0 && r->top_k < n) {
        float thr = z[idx[r->top_k - 1]];
        keep = r->top_k;
        while (keep < n && z[idx[keep]] >= thr) keep++;
    }
    if (r->top_p < 1) {
        double Z = 0, before = 0, *e = w->e;
        for (int i = 0; i < keep; i++) Z += e[i] = exp((double)z[idx[i]] - zmax);
        double target = (double)r->top_p * Z;
        int i = 0;
        for (; i < keep && (i == 0 || before < target); i++) before += e[i];
        keep = i;
    }
    if (r->min_p > 0) { // (a min_p above 1 keeps the most likely, as 1 does)
        double mp = r->min_p > 1 ? 1.0 : (double)r->min_p;
        int i = 1;
        while (i < keep && exp((double)z[idx[i]] - zmax) >= mp) i++;
        keep = i;
    }
    // the race: the winner of the exact keys z_v - log(-log u_v) (libm's log, as the GPU's; ties to the lowest
    // id). Its two logs a token were most of a sampled step's time, so every key is first taken in lanes by
    // pq_log_fast, within RACE_SLACK of the exact one; only the tokens within twice that of the best of those can
    // win, and only theirs are taken exactly.
    uint64_t key = pq_sample_key(r->seed, r->seq, r->step);
    double *a = w->e, amax = -INFINITY;
#pragma omp simd reduction(max : amax)
    for (int i = 0; i < keep; i++) {
        a[i] = (double)z[idx[i]] - pq_log_fast(-pq_log_fast(pq_sample_uniform(key, idx[i])));
        amax = a[i] > amax ? a[i] : amax;
    }
    double thr = amax - 2 * (RACE_SLACK + RACE_SLACK * fabs(amax));
    int best = -1;
    double bk = -INFINITY;
    for (int i = 0; i < keep; i++) {
        if (!(a[i] >= thr)) continue;
        int v = idx[i];
        double k = (double)z[v] - log(-log(pq_sample_uniform(key, v)));
        if (best < 0 || k > bk || (k == bk && v < best)) best = v, bk = k;
    }
    return best;
}

void pq_cpu_sample(int32_t *ids, const float *logits, const PqSampleRow *rows, int N, int V) {
#pragma omp parallel num_threads(N > 1 ? pq_cpu_threads() : 1)
    {
        SampleWork w = {pq_xmalloc((size_t)V * sizeof *w.z),        pq_xmalloc((size_t)V * sizeof *w.idx),
                        pq_xmalloc((size_t)V * sizeof *w.tmp),      pq_xmalloc((size_t)V * sizeof *w.key),
                        pq_xmalloc((size_t)V * sizeof *w.ktmp),     pq_xmalloc((size_t)V * sizeof *w.e)};
#pragma omp for schedule(dynamic, 1)
        for (int i = 0; i < N; i++) ids[i] = sample_row(logits + (size_t)i * V, &rows[i], V, &w);
        free(w.z), free(w.idx), free(w.tmp), free(w.key), free(w.ktmp), free(w.e);
    }
}

void pq_cpu_row_lse(float *lse, const float *logits, int N, int V) {
    for (int i = 0; i < N; i++) {
        const float *x = logits + (size_t)i * V;
        float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
        for (int v = 0; v < V; v++) mx = x[v] > mx ? x[v] : mx;
        if (mx == -INFINITY) {
            lse[i] = -INFINITY;
            continue;
        }
        // every host pick pays this pass over the vocabulary: pq_gen_probs's vectorized exp, summed in f32
        // lanes a chunk of 1024 at a time, the chunks in double
        double sum = 0;
        for (int v0 = 0; v0 < V; v0 += 1024) {
            int v1 = v0 + 1024 < V ? v0 + 1024 : V;
            float part = 0;
#pragma omp simd reduction(+ : part)
            for (int v = v0; v < v1; v++) part += x[v] == -INFINITY ? 0.0f : pq_exp_fast(x[v] - mx);
            sum += part;
        }
        lse[i] = (float)(mx + log(sum));
    }
}

void pq_cpu_token_logp(float *lp, const float *logits, const int32_t *ids, const float *lse, int N, int V) {
    for (int i = 0; i < N; i++) lp[i] = ids[i] >= 0 ? logits[(size_t)i * V + ids[i]] - lse[i] : 0.0f;
}

void pq_cpu_mask_logits(float *logits, const uint32_t *bits, const int32_t *rows, int n, int V) {
    size_t W = ((size_t)V + 31) / 32;
    for (int k = 0; k < n; k++) {
        float *x = logits + (size_t)rows[k] * V;
        const uint32_t *b = bits + (size_t)k * W;
        for (int v = 0; v < V; v++)
            if (!(b[v >> 5] >> (v & 31) & 1)) x[v] = -INFINITY;
    }
}
