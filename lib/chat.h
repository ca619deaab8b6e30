// chat.h: chat templates, rendered in C. tokenizer_config.json holds a
// Jinja template; pq recognises the families in use (Llama-2/Mistral
// [INST], ChatML for Qwen/SmolLM, Llama-3 header tokens, ...) and renders
// exactly what transformers' apply_chat_template gives.
#ifndef PQ_CHAT_H
#define PQ_CHAT_H

#include "util.h"

typedef struct PqMessage {
    const char *role; // "system", "user", "assistant"
    const char *content;
} PqMessage;

typedef struct PqChat PqChat;

// From model_dir/tokenizer_config.json (chat_template, bos_token,
// eos_token); name (may be NULL) overrides the family: "llama-2",
// "mistral", "chatml", "llama-3", "tinyllama"... An unknown template is an
// error naming what is supported.
PqChat *pq_chat_load(const char *model_dir, const char *name, PqErr *e);
void pq_chat_free(PqChat *c);
const char *pq_chat_name(const PqChat *c);
// Renders messages (malloc'd), with the assistant header when
// add_generation_prompt. NULL with a message on a conversation the
// template refuses (e.g. roles not alternating for [INST] templates).
char *pq_chat_render(const PqChat *c, const PqMessage *msgs, int n, int add_generation_prompt, PqErr *e);

#endif
