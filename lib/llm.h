// llm.h: one client for OpenAI-compatible /v1/chat/completions, driven from
// one thread with the libcurl multi interface: many requests in flight,
// retries with backoff, rate limits, token accounting.
#ifndef PQ_LLM_H
#define PQ_LLM_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "tool.h"
#include "util.h"

#define PQ_LLM_MAX_STOP 8
#define PQ_LLM_MAX_CHAT_VARS 16

typedef struct PqLlmConfig {
    const char *base_url;    // default $OPENAI_BASE_URL, else https://api.openai.com/v1
    const char *model;       // required
    const char *api_key_env; // default OPENAI_API_KEY
    double temperature;      // < 0: not sent
    double top_p;            // < 0: unset (1 is sent)
    double min_p;            // --min-p P; < 0: not sent
    int max_tokens;          // <= 0: not sent
    cJSON *extra;            // -o KEY=JSON fields merged into every body (owned)
    int jobs;                // -j: requests in flight; 0: the default (pq_llm_config_resolve)
    int retries;             // default 6
    double timeout_s;        // per request (default 120)
    double rpm, tpm;         // 0 = unlimited
    int n_client;            // --n-mode client: n separate requests with seeds seed+k
    int unordered;           // --unordered (used by tools)
    // A local model: --model DIR holding config.json (lib/llm_local.c).
    const char *adapter;       // --adapter DIR, a PEFT LoRA adapter
    const char *chat_template; // --chat-template NAME|FILE (default: the model's)
    const char *chat_vars[PQ_LLM_MAX_CHAT_VARS]; // --chat-var NAME=JSON, repeatable
    int n_chat_vars;
    const char *chat_date;     // --date YYYY-MM-DD for the template's strftime_now
    const char *constrain;     // --grammar quiz|answers|summary|ascii|none, or "auto" (--constrain)
    int top_k;                 // --top-k K (< 0: not sent; 0: off)
    int threads;               // -t, --threads N (0: all cores)
    const char *stop[PQ_LLM_MAX_STOP]; // --stop STR, repeatable
    int n_stop;
} PqLlmConfig;

typedef struct PqLlmResult {
    int ok;             // 1: texts hold n completions
    int fatal;          // auth/config error: no point sending more
    char **texts;       // n strings (content of each choice)
    int n_texts;
    long http_status;   // of the last attempt
    int attempts;
    char error[512];    // when !ok: what went wrong, with the server's message
    int cancelled;      // not finished: pq_llm_free ran first (Ctrl-C, a fatal
                        // error); free what the request holds, reject nothing
} PqLlmResult;

// Called once per submitted request, from pq_llm_run (or, with
// res->cancelled, from pq_llm_free for requests that never finished); res and
// its texts are freed after: copy or steal (set texts[k] = NULL) what you keep.
typedef void (*PqLlmDone)(void *user, const PqLlmResult *res);

typedef struct PqLlm PqLlm;

void pq_llm_config_init(PqLlmConfig *c);
// After the options: an unset -j becomes its default, 8 requests in flight,
// or for a local model on the GPU 256 sequences decoded together (the GPU
// reads the weights once a step for all of them; -n 10 of the 15 bundled
// articles all at once; the CUDA graphs' largest bucket). A slot holds no
// KV memory of its own: the paged cache's blocks go to the sequences that
// run, and a prompt waits for them.
#define PQ_LLM_JOBS 8
#define PQ_LLM_LOCAL_GPU_JOBS 256
void pq_llm_config_resolve(PqLlmConfig *c);
// Long options of the client; tools add them to their option table.
enum { PQ_OPT_LLM_BASE = 1050 };
#define PQ_LLM_LONGOPTS                                        \
    {"base-url", required_argument, 0, PQ_OPT_LLM_BASE + 0},    \
    {"model", required_argument, 0, PQ_OPT_LLM_BASE + 1},       \
    {"api-key-env", required_argument, 0, PQ_OPT_LLM_BASE + 2}, \
    {"temperature", required_argument, 0, PQ_OPT_LLM_BASE + 3}, \
    {"top-p", required_argument, 0, PQ_OPT_LLM_BASE + 4},       \
    {"max-tokens", required_argument, 0, PQ_OPT_LLM_BASE + 5},  \
    {"retries", required_argument, 0, PQ_OPT_LLM_BASE + 6},     \
    {"timeout", required_argument, 0, PQ_OPT_LLM_BASE + 7},     \
    {"rpm", required_argument, 0, PQ_OPT_LLM_BASE + 8},         \
    {"tpm", required_argument, 0, PQ_OPT_LLM_BASE + 9},         \
    {"n-mode", required_argument, 0, PQ_OPT_LLM_BASE + 10},     \
    {"unordered", no_argument, 0, PQ_OPT_LLM_BASE + 11},        \
    {"adapter", required_argument, 0, PQ_OPT_LLM_BASE + 12},    \
    {"chat-template", required_argument, 0, PQ_OPT_LLM_BASE + 13}, \
    {"constrain", no_argument, 0, PQ_OPT_LLM_BASE + 14},        \
    {"top-k", required_argument, 0, PQ_OPT_LLM_BASE + 15},      \
    {"stop", required_argument, 0, PQ_OPT_LLM_BASE + 16},       \
    {"grammar", required_argument, 0, PQ_OPT_LLM_BASE + 17},    \
    {"min-p", required_argument, 0, PQ_OPT_LLM_BASE + 18},      \
    {"chat-var", required_argument, 0, PQ_OPT_LLM_BASE + 19},   \
    {"date", required_argument, 0, PQ_OPT_LLM_BASE + 20},       \
    {"threads", required_argument, 0, 't'},                     \
    {"jobs", required_argument, 0, 'j'},                        \
    {"option", required_argument, 0, 'O'}
// Short options the client owns: -m NAME|DIR, -j N, -o KEY=JSON (tools map 'o' to 'O'
// for the body field; --output has no short form in LLM tools), -t N.
#define PQ_LLM_HELP                                                                         \
    "LLM client options:\n"                                                                 \
    "      --base-url URL      endpoint (default $OPENAI_BASE_URL, else https://api.openai.com/v1)\n" \
    "  -m, --model NAME|DIR    model name sent to the server, or a local model directory\n" \
    "      --api-key-env NAME  variable holding the API key (default OPENAI_API_KEY)\n"    \
    "      --temperature T, --max-tokens N\n"                                              \
    "      --top-p P, --top-k K, --min-p P  truncation (top_p 1 is sent unless set; top_k and\n" \
    "                          min_p only when set); the local model applies them too\n" \
    "  -o, --option KEY=JSON   any other body field, e.g. -o max_completion_tokens=512\n"  \
    "  -j, --jobs N            requests in flight (default 8; a local model on the GPU: 128)\n"                           \
    "      --retries N         retries on network errors, 408/409/429/5xx (default 6)\n"   \
    "      --timeout SEC       per request (default 120)\n"                                \
    "      --rpm N, --tpm N    requests / tokens per minute limits\n"                      \
    "      --n-mode server|client  ask n choices in one request, or n requests\n"         \
    "      --unordered         write results as they finish, not in input order\n"          \
    "Local models (--model DIR, a Hugging Face model directory; no server):\n"             \
    "      --adapter DIR       apply a PEFT LoRA adapter\n"                                 \
    "      --chat-template NAME|FILE  a named template, a .jinja file, chatml, mistral, ...\n" \
    "      --chat-var NAME=JSON  a chat-template variable (enable_thinking=false), repeatable\n" \
    "      --date YYYY-MM-DD   the date the template's strftime_now gives (default $PQ_DATE)\n" \
    "      --constrain         force this tool's reply format (pq-questions: the quiz,\n"  \
    "                          pq-quiz: the answers, pq-summarize: 5+ ASCII words)\n"    \
    "      --grammar NAME      force quiz, answers, summary, ascii or none instead\n"     \
    "  -t, --threads N         CPU threads (default all cores)\n"                          \
    "      --stop STR          a stop string (repeatable)\n"                             \
    "                          -j N: sequences decoded together; --max-tokens default 512\n"

// 1 handled, 0 not ours, -1 bad value (message in e).
int pq_llm_option(PqLlmConfig *c, int opt, const char *arg, PqErr *e);

PqLlm *pq_llm_new(PqLlmConfig *c, PqErr *e); // takes over c->extra
void pq_llm_free(PqLlm *l);
// Queues one chat request for n completions (messages: a cJSON array of
// {role, content}, copied). seed < 0: none sent. cb is called exactly once.
void pq_llm_submit(PqLlm *l, const cJSON *messages, int n, int64_t seed, PqLlmDone cb, void *user);
// Requests queued or in flight.
int pq_llm_pending(const PqLlm *l);
// Drives transfers (and calls callbacks) until fewer than `below` requests
// are pending; below = 1 drains everything. Returns early when
// pq_interrupted is set. Below the limit it only queues new requests
// for sending, so a tool's loop is: submit; pq_llm_run(l, limit) (e.g.
// limit = 2 * jobs); and at the end pq_llm_run(l, 1). Callbacks may submit; they must not call
// pq_llm_run or pq_llm_free.
void pq_llm_run(PqLlm *l, int below);
// For input that arrives at its own pace: sends what is queued, calls the
// callbacks of what finished, and waits (in the same poll as the transfers)
// until a request finished, input_fd (-1: none) is readable, or 0.25 s
// passed; it does not wait when input_fd is readable already. A local model
// runs one decode step instead.
void pq_llm_run_input(PqLlm *l, int input_fd);
// pq_tool_next for LLM tools: while no whole input line is there, drives
// the requests (pq_llm_run_input), so each goes out as its line arrives and
// each reply is written as it finishes. Returns 0 also after t->fatal.
int pq_llm_next_line(PqLlm *l, PqTool *t);
// Adds the client's counters (requests, retries, tokens) to the tool's.
void pq_llm_account(const PqLlm *l, PqTool *t);

#endif
