// eval.h: the evaluation of method.md §6: per-model metrics over one
// summary per article, the win rate against a baseline on the same
// articles, its bootstrap interval and a paired sign test (used by pq-eval).
#ifndef PQ_EVAL_H
#define PQ_EVAL_H

#include <stdint.h>

// One quizzed summary of one article.
typedef struct PqEvalItem {
    int score;          // quiz score, 0..5
    int words;          // summary words (whitespace split)
    int article_words;  // > 0
    long chars;         // summary characters (code points)
    long article_chars;
    int bad_chars;      // OOD characters in the summary
} PqEvalItem;

typedef struct PqEvalStats {
    int n;
    double score_ge3, score_ge4;                  // fractions of articles
    double compression_median, compression_mean;  // of words / article_words
    double failed_compression;                    // fraction with chars >= article_chars
    double ood;                                   // fraction with an OOD character
    int wins, losses, ties;                       // against the baseline, per article
    double win_rate;                              // wins + 0.5 * (1 - wins - losses), as fractions
    double win_lo, win_hi;                        // 95% bootstrap interval (NaN without bootstrap)
    double sign_p;                                // two-sided exact sign test over non-tied articles
} PqEvalStats;

// Does summary A beat summary B (method.md §6)? If min(score) <= 2 and the
// scores differ, the higher score wins; otherwise (both >= 3, or equal
// scores) the one with fewer words wins. +1 A wins, -1 B wins, 0 tie.
int pq_eval_beats(int score_a, int words_a, int score_b, int words_b);

// The metrics of model m (n items) against base (the same n articles, in
// the same order). n_boot resamples of the articles (seeded) give the 95%
// percentile interval of the win rate (numpy's linear interpolation);
// n_boot 0 leaves it NaN. Fractions are NaN when n is 0.
void pq_eval_stats(const PqEvalItem *m, const PqEvalItem *base, int n, int n_boot, uint64_t seed, PqEvalStats *out);

// Two-sided exact binomial test of wins against losses with p = 1/2:
// min(1, 2 P(X <= min(wins, losses))), X ~ Bin(wins + losses, 1/2); 1 when both are 0.
double pq_sign_test(int wins, int losses);

// Characters of a UTF-8 string as code points (an invalid byte counts as one).
long pq_count_chars(const char *s);

#endif
