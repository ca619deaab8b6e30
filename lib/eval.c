// eval.c: method.md §6 metrics, the win rate against a baseline, its
// bootstrap interval and the paired sign test (see eval.h).
#include "eval.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "util.h"

int pq_eval_beats(int score_a, int words_a, int score_b, int words_b) {
    int lo = score_a < score_b ? score_a : score_b;
    if (lo <= 2 && score_a != score_b) return score_a > score_b ? 1 : -1;
    return words_a < words_b ? 1 : words_a > words_b ? -1 : 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

// numpy.percentile's default (linear) on sorted v.
static double percentile(const double *v, int n, double p) {
    double pos = p / 100.0 * (n - 1);
    int i = (int)floor(pos);
    if (i >= n - 1) return v[n - 1];
    return v[i] + (pos - i) * (v[i + 1] - v[i]);
}

double pq_sign_test(int wins, int losses) {
    int n = wins + losses, k = wins < losses ? wins : losses;
    if (n == 0) return 1.0;
    // log of sum_{i<=k} C(n,i) 2^-n, summed in log space (n may be thousands)
    double mx = -INFINITY, *t = pq_xmalloc(((size_t)k + 1) * sizeof *t);
    for (int i = 0; i <= k; i++) {
        t[i] = lgamma(n + 1.0) - lgamma(i + 1.0) - lgamma(n - i + 1.0) - n * log(2.0);
        if (t[i] > mx) mx = t[i];
    }
    double s = 0;
    for (int i = 0; i <= k; i++) s += exp(t[i] - mx);
    free(t);
    double p = 2.0 * exp(mx + log(s));
    return p < 1.0 ? p : 1.0;
}

void pq_eval_stats(const PqEvalItem *m, const PqEvalItem *base, int n, int n_boot, uint64_t seed, PqEvalStats *out) {
    memset(out, 0, sizeof *out);
    out->n = n;
    out->win_lo = out->win_hi = NAN;
    if (n == 0) {
        out->score_ge3 = out->score_ge4 = out->compression_median = out->compression_mean = NAN;
        out->failed_compression = out->ood = out->win_rate = NAN;
        out->sign_p = 1.0;
        return;
    }
    double *ratio = pq_xmalloc((size_t)n * sizeof *ratio), sum = 0;
    signed char *outcome = pq_xmalloc((size_t)n);
    int ge3 = 0, ge4 = 0, failed = 0, ood = 0;
    for (int i = 0; i < n; i++) {
        ge3 += m[i].score >= 3;
        ge4 += m[i].score >= 4;
        failed += m[i].chars >= m[i].article_chars;
        ood += m[i].bad_chars > 0;
        ratio[i] = (double)m[i].words / m[i].article_words;
        sum += ratio[i];
        outcome[i] = (signed char)pq_eval_beats(m[i].score, m[i].words, base[i].score, base[i].words);
        out->wins += outcome[i] > 0;
        out->losses += outcome[i] < 0;
    }
    out->ties = n - out->wins - out->losses;
    qsort(ratio, (size_t)n, sizeof *ratio, cmp_double);
    out->compression_median = n % 2 ? ratio[n / 2] : 0.5 * (ratio[n / 2 - 1] + ratio[n / 2]);
    out->compression_mean = sum / n;
    out->score_ge3 = (double)ge3 / n;
    out->score_ge4 = (double)ge4 / n;
    out->failed_compression = (double)failed / n;
    out->ood = (double)ood / n;
    // wins + 0.5 * (1 - wins - losses) = (wins + 0.5 ties) / n
    out->win_rate = ((double)out->wins + 0.5 * out->ties) / n;
    out->sign_p = pq_sign_test(out->wins, out->losses);
    if (n_boot > 0) {
        // Resample articles with replacement; each draw: n indices in turn.
        PqRng r;
        pq_rng_seed(&r, seed);
        double *wr = pq_xmalloc((size_t)n_boot * sizeof *wr);
        for (int b = 0; b < n_boot; b++) {
            long w = 0, l = 0;
            for (int i = 0; i < n; i++) {
                int o = outcome[pq_rng_below(&r, (uint64_t)n)];
                w += o > 0;
                l += o < 0;
            }
            wr[b] = ((double)w + 0.5 * (double)(n - w - l)) / n;
        }
        qsort(wr, (size_t)n_boot, sizeof *wr, cmp_double);
        out->win_lo = percentile(wr, n_boot, 2.5);
        out->win_hi = percentile(wr, n_boot, 97.5);
        free(wr);
    }
    free(ratio);
    free(outcome);
}

long pq_count_chars(const char *s) {
    long n = 0;
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
    utf8proc_ssize_t left = (utf8proc_ssize_t)strlen(s);
    while (left > 0) {
        int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate(p, left, &c);
        if (k <= 0) k = 1;
        p += k;
        left -= k;
        n++;
    }
    return n;
}
