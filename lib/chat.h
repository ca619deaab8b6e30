// chat.h: chat templates. tokenizer_config.json holds a Jinja template;
// pq renders it with its own interpreter (jinja.h) exactly as transformers'
// apply_chat_template does.
#ifndef PQ_CHAT_H
#define PQ_CHAT_H

#include <cjson/cJSON.h>

#include "util.h"

typedef struct PqMessage {
    const char *role; // "system", "user", "assistant"
    const char *content;
} PqMessage;

typedef struct PqChat PqChat;

// From model_dir/tokenizer_config.json (chat_template, its special tokens);
// name (may be NULL) overrides the template: a named template of the
// config's chat_template list, a built-in family ("mistral", "llama-2",
// "chatml", "llama-3", "zephyr"/"tinyllama") or a .jinja file. A template
// the interpreter cannot parse is an error with its line:column. PQ_DATE
// (YYYY-MM-DD) fixes the date strftime_now gives.
PqChat *pq_chat_load(const char *model_dir, const char *name, PqErr *e);
void pq_chat_free(PqChat *c);
const char *pq_chat_name(const PqChat *c);
// Renders messages (malloc'd), with the assistant header when
// add_generation_prompt. NULL with a message on a conversation the
// template refuses (e.g. roles not alternating for [INST] templates).
char *pq_chat_render(const PqChat *c, const PqMessage *msgs, int n, int add_generation_prompt, PqErr *e);
// The same from a JSON array of messages as they are (content a string or
// a list of parts; extra keys such as tool_calls pass through).
char *pq_chat_render_json(const PqChat *c, const cJSON *messages, int add_generation_prompt, PqErr *e);
// --chat-var NAME=JSON: a template variable, as apply_chat_template's
// keyword arguments (enable_thinking=false); --date YYYY-MM-DD for strftime_now.
int pq_chat_set_var(PqChat *c, const char *assign, PqErr *e);
int pq_chat_set_date(PqChat *c, const char *ymd, PqErr *e);
// Both at once, as tools take them (date may be NULL).
// The most --chat-var options a tool takes.
#define PQ_CHAT_MAX_VARS 64
int pq_chat_configure(PqChat *c, const char *const *vars, int n_vars, const char *date, PqErr *e);

#endif
