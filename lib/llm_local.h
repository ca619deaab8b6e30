// llm_local.h: the local backend of the LLM client (llm.h): when --model
// names a Hugging Face model directory, requests are rendered with its chat
// template and generated in this process (gen.h) instead of sent over HTTP,
// with the same submit / pending / run / callback semantics.
#ifndef PQ_LLM_LOCAL_H
#define PQ_LLM_LOCAL_H

#include "llm.h"

typedef struct PqLlmLocal PqLlmLocal;

// 1 if model names a directory holding config.json.
int pq_llm_local_is_dir(const char *model);
// The local-model options of PQ_LLM_LONGOPTS: 1 handled, 0 not ours, -1 bad value.
int pq_llm_local_option(PqLlmConfig *c, int opt, const char *arg, PqErr *e);
PqLlmLocal *pq_llm_local_new(const PqLlmConfig *c, PqErr *e);
void pq_llm_local_free(PqLlmLocal *l);
void pq_llm_local_submit(PqLlmLocal *l, const cJSON *messages, int n, int64_t seed, PqLlmDone cb, void *user);
int pq_llm_local_pending(const PqLlmLocal *l);
void pq_llm_local_run(PqLlmLocal *l, int below);
void pq_llm_local_account(PqLlmLocal *l, PqTool *t);

#endif
