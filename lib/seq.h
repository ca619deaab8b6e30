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
// The policy a --truncate name gives ("article", "keep_start", "keep_end"),
// or -1 for any other.
int pq_trunc_parse(const char *name);

// One sequence: template(prompt + response). ids[0..prompt_len) are the
// prompt (masked), ids[prompt_len..len) the response, including the
// end-of-turn tokens the template adds after it.
//
// How it is cut (as TRL's DPO trainer does): prompt ids =
// encode(render(prompt, add_generation_prompt=1)), response ids =
// encode(render(prompt + [response]) minus that prefix text), both with
// add_special=0 (templates write their own BOS). The full render must start
// with the prefix render (else an error naming the template). The response
// part is everything the template writes after the prompt: the response
// and its end of turn, e.g. "Sure.</s> " for Mistral v0.1 ("</s>" and a
// trailing "▁"), " Sure. </s>" for Llama 2, "Sure.<|eot_id|>" for Llama 3.
// Being encoded on its own, a SentencePiece-style response starts with the
// word-start marker ("▁Sure"), and its ids never depend on the prompt, so
// truncation never changes them.
typedef struct PqSeq {
    PqTokens ids;
    int prompt_len;
    int truncated; // prompt tokens removed to fit max_len
} PqSeq;

// Builds the sequence, truncated to max_len (<= 0: no limit) by the policy:
// PQ_TRUNC_ARTICLE (default) shortens the longest user message (in bytes;
// the first of equals) from its end, on a UTF-8 character boundary, to the
// longest length a bisection finds to fit, re-rendering and re-encoding,
// so the instruction before it, the template tokens and the whole response
// stay; KEEP_START keeps the first prompt tokens, KEEP_END the last (TRL's
// policies). The response is never cut: an error if it does not fit with at
// least one prompt token, or (article policy) if the prompt does not fit
// even with that message emptied. truncated is set when something was cut.
int pq_seq_build(const PqTokenizer *tok, const PqChat *chat, const PqMessage *prompt, int n_prompt,
                 const PqMessage *response, int max_len, int policy, PqSeq *out, PqErr *e);
void pq_seq_free(PqSeq *s);

#endif
