// test-pair.c: lib/pair.c and lib/eval.c: the preference and win rules at
// their boundaries, pair sampling, the valid split, the sign test, counts.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "eval.h"
#include "pair.h"

static void test_prefer(void) {
    PqPairOpts o;
    pq_pair_opts_default(&o);
    static const struct {
        int si, wi, sj, wj, want;
        const char *why;
    } c[] = {
        {2, 50, 3, 10, -1, "min 2 <= 2: higher score wins"},
        {3, 50, 2, 10, 1, "min 2 <= 2: higher score wins, whatever the length"},
        {2, 10, 2, 30, 0, "equal low scores: no pair (unlike pq-eval)"},
        {0, 10, 5, 10, -1, "0 against 5"},
        {3, 10, 5, 10, 0, "both >= 3, same length: no pair"},
        {3, 10, 5, 12, 0, "both >= 3, 2 words apart: no pair (margin 2)"},
        {3, 10, 5, 13, 1, "both >= 3, 3 words apart: the shorter"},
        {5, 13, 3, 10, -1, "both >= 3, 3 words apart: the shorter, either side"},
        {4, 30, 4, 5, -1, "equal high scores: the shorter"},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        int got = pq_pair_prefer(&o, c[i].si, c[i].wi, c[i].sj, c[i].wj);
        CHECK(got == c[i].want, "prefer (%d,%d) vs (%d,%d): %d, want %d (%s)", c[i].si, c[i].wi, c[i].sj, c[i].wj,
              got, c[i].want, c[i].why);
    }
    o.threshold = 4;
    CHECK(pq_pair_prefer(&o, 3, 10, 5, 10) == -1, "threshold 4: 3 vs 5 by score");
    o.threshold = 3;
    o.length_margin = 0;
    CHECK(pq_pair_prefer(&o, 3, 10, 5, 11) == 1, "margin 0: 1 word apart is enough");
    pq_pair_opts_default(&o);
    CHECK(!pq_pair_keep(&o, 1, 1, 4, 0) && pq_pair_keep(&o, 1, 1, 5, 0) && pq_pair_keep(&o, 1, 1, 199, 0) &&
              !pq_pair_keep(&o, 1, 1, 200, 0),
          "word bounds 5 <= words < 200");
    CHECK(!pq_pair_keep(&o, 1, 1, 10, 1) && !pq_pair_keep(&o, 0, 1, 10, 0) && !pq_pair_keep(&o, 1, 0, 10, 0),
          "OOD, missing summary, quiz not run");
}

static void test_select(void) {
    PqPairOpts o;
    pq_pair_opts_default(&o);
    // five summaries, scores 0..4, same length: every pair but (3,4) is preferred
    int score[] = {0, 1, 2, 3, 4}, words[] = {10, 10, 10, 10, 10};
    PqPairIdx all[10], a[10], b[10];
    o.max_pairs = 0;
    int n = pq_pair_select(&o, score, words, 5, 1, all);
    CHECK(n == 9, "candidates: %d, want 9", n);
    for (int k = 0; k < n; k++) CHECK(score[all[k].chosen] > score[all[k].rejected], "pair %d: chosen scores lower", k);
    o.max_pairs = 3;
    int seen[9] = {0}, differ = 0;
    for (uint64_t seed = 0; seed < 300; seed++) {
        int na = pq_pair_select(&o, score, words, 5, seed, a), nb = pq_pair_select(&o, score, words, 5, seed, b);
        CHECK(na == 3 && nb == 3, "sample size %d %d", na, nb);
        CHECK(memcmp(a, b, sizeof a[0] * 3) == 0, "seed %llu: not deterministic", (unsigned long long)seed);
        int prev = -1;
        for (int k = 0; k < 3; k++) {
            int pos = -1;
            for (int m = 0; m < 9; m++)
                if (all[m].chosen == a[k].chosen && all[m].rejected == a[k].rejected) pos = m;
            CHECK(pos > prev, "seed %llu: pair %d not a candidate or out of order", (unsigned long long)seed, k);
            if (pos >= 0) seen[pos]++;
            prev = pos;
        }
        if (seed && memcmp(a, all, sizeof a[0] * 3) != 0) differ = 1;
    }
    CHECK(differ, "sampling never changes");
    // uniform: each of 9 candidates in 1/3 of 300 samples (100), loosely
    for (int m = 0; m < 9; m++) CHECK(seen[m] > 60 && seen[m] < 140, "candidate %d sampled %d times of 300", m, seen[m]);
    CHECK(pq_pair_select(&o, score, words, 0, 1, a) == 0 && pq_pair_select(&o, score, words, 1, 1, a) == 0,
          "no pairs from 0 or 1 summary");
    CHECK(pq_pair_article_seed(5, "abc") == pq_pair_article_seed(5, "abc") &&
              pq_pair_article_seed(5, "abc") != pq_pair_article_seed(5, "abd"),
          "article seeds");
}

static void test_valid_split(void) {
    int in = 0, n = 20000;
    char id[32];
    for (int i = 0; i < n; i++) {
        snprintf(id, sizeof id, "%08x", i * 2654435761u);
        int v = pq_pair_is_valid(21, id, 0.02);
        CHECK(v == pq_pair_is_valid(21, id, 0.02), "valid split not deterministic");
        CHECK(!v || pq_pair_is_valid(21, id, 0.5), "a valid article leaves the valid side as frac grows");
        in += v;
    }
    // 2% of 20000 = 400, sd 19.8
    CHECK(in > 330 && in < 470, "valid share %d of %d at 0.02", in, n);
    CHECK(!pq_pair_is_valid(21, "x", 0) && pq_pair_is_valid(21, "x", 1), "fractions 0 and 1");
}

static void test_eval(void) {
    static const struct {
        int sa, wa, sb, wb, want;
        const char *why;
    } c[] = {
        {2, 50, 3, 10, -1, "min 2: the higher score"},
        {2, 10, 2, 30, 1, "equal low scores: fewer words (unlike pq-pair)"},
        {3, 30, 5, 12, -1, "both >= 3: fewer words"},
        {3, 12, 5, 12, 0, "both >= 3, same length: tie"},
        {1, 12, 1, 12, 0, "same score, same length: tie"},
        {4, 11, 4, 12, 1, "one word shorter is enough (no margin)"},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++)
        CHECK(pq_eval_beats(c[i].sa, c[i].wa, c[i].sb, c[i].wb) == c[i].want, "beats: %s", c[i].why);
    // exact values: 2 * sum_{i<=k} C(n,i) / 2^n
    CHECK(pq_sign_test(0, 0) == 1.0, "no non-tied articles");
    CHECK(fabs(pq_sign_test(5, 1) - 0.21875) < 1e-12, "5-1: %.17g", pq_sign_test(5, 1));
    CHECK(fabs(pq_sign_test(1, 5) - 0.21875) < 1e-12, "1-5 (two-sided)");
    CHECK(fabs(pq_sign_test(9, 3) - 598.0 / 4096) < 1e-12, "9-3");
    CHECK(fabs(pq_sign_test(10, 0) - 2.0 / 1024) < 1e-12, "10-0");
    CHECK(pq_sign_test(3, 3) == 1.0, "3-3 caps at 1");
    // large n: 600 vs 400, summed in log space; the exact value from Python's
    // 2 * sum(math.comb(1000, i) for i in range(401)) / 2**1000
    double p = pq_sign_test(600, 400);
    CHECK(fabs(p / 2.7284641560660184e-10 - 1) < 1e-9, "600-400: %.17g", p);
    CHECK(pq_count_chars("") == 0 && pq_count_chars("caf\xc3\xa9") == 4 && pq_count_chars("\xf0\x9f\x98\x80!") == 2 &&
              pq_count_chars("a\xffz") == 3,
          "count_chars");
    // stats on a tiny case: one article, model wins; no bootstrap
    PqEvalItem m = {4, 10, 100, 50, 500, 0}, b = {1, 12, 100, 60, 500, 1};
    PqEvalStats st;
    pq_eval_stats(&m, &b, 1, 0, 0, &st);
    CHECK(st.wins == 1 && st.win_rate == 1.0 && isnan(st.win_lo) && st.score_ge3 == 1 && st.score_ge4 == 1 &&
              st.compression_median == 0.1 && st.ood == 0 && st.sign_p == 1.0,
          "one-article stats");
    pq_eval_stats(&b, &b, 1, 50, 0, &st);
    CHECK(st.ties == 1 && st.win_rate == 0.5 && st.win_lo == 0.5 && st.win_hi == 0.5 && st.ood == 1,
          "baseline against itself");
    pq_eval_stats(NULL, NULL, 0, 50, 0, &st);
    CHECK(st.n == 0 && isnan(st.win_rate) && isnan(st.score_ge3), "no articles");
}

int main(void) {
    test_prefer();
    test_select();
    test_valid_split();
    test_eval();
    printf("test-pair: %d checks, %d failures\n", n_checks, n_fail);
    return n_fail ? 1 : 0;
}
