// logp.h: sequence log-probabilities from a model: the sum (and per-token
// values) of the response tokens' log-probs, several sequences per forward.
#ifndef PQ_LOGP_H
#define PQ_LOGP_H

#include <stdint.h>

#include "model.h"
#include "util.h"

typedef struct PqLogpSeq {
    const int32_t *ids;
    int len;
    int prompt_len; // ids[prompt_len..len) are scored, each from the position before it
    // results
    double sum;     // sum of the response tokens' log-probs
    int count;      // len - prompt_len
    float *token_logp; // (count) per-token values when the caller sets it (caller's memory)
} PqLogpSeq;

// Scores n sequences, packing them into forwards of at most batch_tokens
// tokens (a sequence longer than batch_tokens gets a forward of its own).
// 0 or -1 with a message (e.g. prompt_len < 1 or >= len).
int pq_logp_seqs(const PqModel *m, PqLogpSeq *seqs, int n, int batch_tokens, PqErr *e);

#endif
