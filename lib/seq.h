// seq.h: from a pair record to token sequences: the very same code builds
// what pq-logp scores and what pq-dpo trains on, so policy and reference
// always see identical tokens.
#ifndef PQ_SEQ_H
#define PQ_SEQ_H

#include <cjson/cJSON.h>

#include "chat.h"
#include "tokenizer.h"
#include "util.h"

// A prompt and the two responses of a pair record. Accepts both the
// whole-conversation form (chosen/rejected repeat the prompt turns) and
// TRL's form ("prompt" + one-message chosen/rejected). Strings point into
// the cJSON object.
typedef struct PqPairMsgs {
    PqMessage *prompt;
    int n_prompt;
    PqMessage chosen, rejected; // the assistant turns
} PqPairMsgs;
int pq_pair_msgs(const cJSON *record, PqPairMsgs *out, PqErr *e);
void pq_pair_msgs_free(PqPairMsgs *p);

enum { PQ_TRUNC_ARTICLE = 0, PQ_TRUNC_KEEP_START, PQ_TRUNC_KEEP_END };

// One sequence: template(prompt + response). ids[0..prompt_len) are the
// prompt (masked), ids[prompt_len..len) the response, including the
// end-of-turn tokens the template adds after it.
typedef struct PqSeq {
    PqTokens ids;
    int prompt_len;
    int truncated; // prompt tokens removed to fit max_len
} PqSeq;

// Builds the sequence, truncated to max_len by the policy:
// PQ_TRUNC_ARTICLE (default) shortens the longest user message from its end
// so the instruction, template tokens and whole response stay;
// KEEP_START / KEEP_END cut prompt tokens (TRL's policies), never the
// response. Error if even the response alone does not fit.
int pq_seq_build(const PqTokenizer *tok, const PqChat *chat, const PqMessage *prompt, int n_prompt,
                 const PqMessage *response, int max_len, int policy, PqSeq *out, PqErr *e);
void pq_seq_free(PqSeq *s);

#endif
