// pair.c: the preference function of method.md §4 and the seeded choice of
// DPO pairs among one article's summaries (see pair.h).
#include "pair.h"

#include <stdlib.h>
#include <string.h>

#include "quiz.h"
#include "util.h"

void pq_pair_opts_default(PqPairOpts *o) {
    o->threshold = 3;
    o->max_pairs = 3;
    o->min_words = 5;
    o->max_words = 200;
    o->length_margin = 2;
}

int pq_pair_keep(const PqPairOpts *o, int has_summary, int quizzed, int words, int bad_chars) {
    return has_summary && quizzed && bad_chars == 0 && words >= o->min_words && words < o->max_words;
}

int pq_pair_prefer(const PqPairOpts *o, int score_i, int words_i, int score_j, int words_j) {
    int lo = score_i < score_j ? score_i : score_j;
    if (lo <= o->threshold - 1) return score_i > score_j ? 1 : score_i < score_j ? -1 : 0;
    int diff = words_i - words_j;
    if (diff < -o->length_margin) return 1; // i is shorter by more than the margin
    if (diff > o->length_margin) return -1;
    return 0;
}

int pq_pair_select(const PqPairOpts *o, const int *score, const int *words, int n, uint64_t seed, PqPairIdx *out) {
    int m = 0;
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++) {
            int p = pq_pair_prefer(o, score[i], words[i], score[j], words[j]);
            if (p > 0) out[m++] = (PqPairIdx){i, j};
            else if (p < 0) out[m++] = (PqPairIdx){j, i};
        }
    if (o->max_pairs <= 0 || m <= o->max_pairs) return m;
    // Partial Fisher-Yates: the first max_pairs slots become a uniform
    // sample; then restore the candidates' order among the chosen.
    int *idx = pq_xmalloc((size_t)m * sizeof *idx);
    for (int i = 0; i < m; i++) idx[i] = i;
    PqRng r;
    pq_rng_seed(&r, seed);
    for (int i = 0; i < o->max_pairs; i++) {
        int j = i + (int)pq_rng_below(&r, (uint64_t)(m - i));
        int t = idx[i];
        idx[i] = idx[j];
        idx[j] = t;
    }
    int k = o->max_pairs;
    // insertion sort of the k chosen indices (k is small)
    for (int i = 1; i < k; i++)
        for (int j = i; j > 0 && idx[j - 1] > idx[j]; j--) {
            int t = idx[j];
            idx[j] = idx[j - 1];
            idx[j - 1] = t;
        }
    for (int i = 0; i < k; i++) out[i] = out[idx[i]]; // idx ascending and idx[i] >= i: safe in place
    free(idx);
    return k;
}

uint64_t pq_pair_article_seed(uint64_t seed, const char *id) { return seed ^ pq_hash_str(id); }

int pq_pair_is_valid(uint64_t seed, const char *id, double frac) {
    if (frac <= 0) return 0;
    PqRng r;
    // a stream of its own, unrelated to the sampling of pairs
    pq_rng_seed(&r, (seed ^ pq_hash_str(id)) + 0x76616c6964ULL);
    return pq_rng_uniform(&r) < frac;
}

int pq_messages_valid(const cJSON *prompt) {
    if (!cJSON_IsArray(prompt) || cJSON_GetArraySize(prompt) == 0) return 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, prompt) {
        if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(m, "role")) ||
            !cJSON_IsString(cJSON_GetObjectItemCaseSensitive(m, "content")))
            return 0;
    }
    return 1;
}

// The prompt's messages and the response, stripped of leading and trailing
// whitespace (Python's str.strip(), as the method's own code does).
static cJSON *conversation(const cJSON *prompt, const char *response) {
    cJSON *c = cJSON_Duplicate(prompt, 1);
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "role", "assistant");
    size_t n;
    const char *r = pq_strip_space(response, strlen(response), &n);
    char *content = pq_xstrndup(r, n);
    cJSON_AddItemToObject(m, "content", cJSON_CreateString(content));
    free(content);
    cJSON_AddItemToArray(c, m);
    return c;
}

cJSON *pq_pair_record(const cJSON *id, const cJSON *prompt, const char *chosen, const char *rejected,
                      int correct_chosen, int correct_rejected, int words_chosen, int words_rejected, int k) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "id", cJSON_Duplicate(id, 1));
    cJSON_AddItemToObject(o, "prompt", cJSON_Duplicate(prompt, 1));
    cJSON_AddItemToObject(o, "chosen", conversation(prompt, chosen));
    cJSON_AddItemToObject(o, "rejected", conversation(prompt, rejected));
    cJSON_AddNumberToObject(o, "correct_chosen", correct_chosen);
    cJSON_AddNumberToObject(o, "correct_rejected", correct_rejected);
    cJSON_AddNumberToObject(o, "num_words_chosen", words_chosen);
    cJSON_AddNumberToObject(o, "num_words_rejected", words_rejected);
    cJSON_AddNumberToObject(o, "pair", k);
    return o;
}
