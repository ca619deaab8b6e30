// pair.h: the preference function of method.md §4 and the choice of DPO
// pairs among the summaries of one article (used by pq-pair).
#ifndef PQ_PAIR_H
#define PQ_PAIR_H

#include <cjson/cJSON.h>
#include <stdint.h>

typedef struct PqPairOpts {
    int threshold;     // a pair with min(score) <= threshold-1 is decided by score (3)
    int max_pairs;     // pairs kept per article, sampled; 0 = all (3)
    int min_words;     // a summary is kept if min_words <= words < max_words (5, 200)
    int max_words;
    int length_margin; // above the threshold the shorter wins if words differ by more (2)
} PqPairOpts;

void pq_pair_opts_default(PqPairOpts *o);

// Is a summary usable (method.md §4)? It exists, its quiz ran, it has no
// OOD characters, and min_words <= words < max_words.
int pq_pair_keep(const PqPairOpts *o, int has_summary, int quizzed, int words, int bad_chars);

// The preference between summaries i and j: +1 i is chosen, -1 j is chosen,
// 0 no pair. Below the threshold the higher score wins (equal: no pair);
// with both scores >= threshold the shorter wins if the word counts differ
// by more than length_margin.
int pq_pair_prefer(const PqPairOpts *o, int score_i, int words_i, int score_j, int words_j);

typedef struct PqPairIdx {
    int chosen, rejected; // indices into the article's kept summaries
} PqPairIdx;

// The pairs of one article: every preferred pair (i, j), i < j, in that
// order; when there are more than max_pairs, a random sample of max_pairs
// of them (seeded; kept in the same order). out holds n*(n-1)/2 entries.
// Returns how many pairs were written.
int pq_pair_select(const PqPairOpts *o, const int *score, const int *words, int n, uint64_t seed, PqPairIdx *out);

// The seed of one article's random choices: seed ^ hash(id), so results do
// not depend on the order of the input.
uint64_t pq_pair_article_seed(uint64_t seed, const char *id);

// Does this article go to the validation split? A seeded hash of the id
// against frac, so an article's pairs are all on one side.
int pq_pair_is_valid(uint64_t seed, const char *id, double frac);

// Is prompt a non-empty list of {"role", "content"} messages?
int pq_messages_valid(const cJSON *prompt);

// A pair record (method.md schema): id, prompt, chosen and rejected as whole
// conversations (the prompt turns + an assistant turn), their scores and
// word counts, and "pair": k, its index within the article.
cJSON *pq_pair_record(const cJSON *id, const cJSON *prompt, const char *chosen, const char *rejected,
                      int correct_chosen, int correct_rejected, int words_chosen, int words_rejected, int k);

#endif
