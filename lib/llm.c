// llm.c: the OpenAI-compatible chat client (see llm.h): one thread, one
// libcurl multi handle, a FIFO of calls, timers for backoff and rate limits.
//
// A job is one pq_llm_submit (n completions, one callback). It is carried by
// one call (an HTTP request asking for n choices) or, in client n-mode, by n
// calls asking for one choice each with seeds seed+k. A call is always in
// exactly one of three lists: queued (waiting for a slot), in flight (an easy
// handle in the multi handle), or backing off (waiting for its wake time).
#include "llm.h"
#include "llm_local.h"
#include "ops.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BACKOFF_BASE_S 0.5
#define BACKOFF_CAP_S 8.0
#define RETRY_AFTER_CAP_S 60.0
#define RATE_BURST_S 1.0 // the token buckets hold one second's worth
#define MAX_REPLY_BYTES (32u << 20) // far above any n x max_tokens reply; a server that never stops is cut here

typedef struct Job Job;
typedef struct Call Call;

struct Job {
    PqLlmDone cb;
    void *user;
    cJSON *messages; // owned copy
    int n;
    int64_t seed;
    char **texts; // n slots
    int calls_left;
    int failed, fatal;
    long http_status;
    int attempts;
    char error[512];
    Job *prev, *next; // every live job, for cancellation
};

struct Call {
    Job *job;
    int first, n; // fills job->texts[first .. first+n)
    int64_t seed;
    char *body;
    size_t body_len;
    double est_tokens;
    int attempt; // attempts started
    double wake; // end of the backoff
    double retry_after; // from the last reply's headers, seconds; < 0 none
    CURL *easy;
    PqBuf resp;
    int too_big; // the reply passed MAX_REPLY_BYTES: the transfer was stopped
    char errbuf[CURL_ERROR_SIZE];
    Call *prev, *next;
};

typedef struct CallList {
    Call *head, *tail;
    int n;
} CallList;

struct PqLlm {
    PqLlmLocal *local; // --model DIR: generation in this process, nothing below is used
    PqLlmConfig c;
    char *url;
    struct curl_slist *headers;
    CURLM *multi;
    CURL **pool;
    int n_pool;
    CallList queued, flying, waiting;
    Job *jobs;
    int pending;
    int fatal;
    char fatal_msg[512];
    int said_n_fallback;
    double rpm_tat, tpm_tat; // theoretical arrival times of the limiters
    PqRng rng;
    long n_requests, n_retries;
    int conn_fails; // attempts in a row that reached no server (refused, unresolved), since the last reply
    long long tok_prompt, tok_completion;
    long acc_requests, acc_retries; // already handed to pq_llm_account
    long long acc_prompt, acc_completion;
};

// ---- lists ----

static void list_remove(CallList *L, Call *c) {
    if (c->prev) c->prev->next = c->next;
    else L->head = c->next;
    if (c->next) c->next->prev = c->prev;
    else L->tail = c->prev;
    c->prev = c->next = NULL;
    L->n--;
}

static void list_push_back(CallList *L, Call *c) {
    c->next = NULL;
    c->prev = L->tail;
    if (L->tail) L->tail->next = c;
    else L->head = c;
    L->tail = c;
    L->n++;
}

static void list_push_front(CallList *L, Call *c) {
    c->prev = NULL;
    c->next = L->head;
    if (L->head) L->head->prev = c;
    else L->tail = c;
    L->head = c;
    L->n++;
}

// ---- options ----

void pq_llm_config_init(PqLlmConfig *c) {
    memset(c, 0, sizeof *c);
    c->api_key_env = "OPENAI_API_KEY";
    c->temperature = -1;
    c->top_p = -1;
    c->top_k = -1;
    c->min_p = -1;
    c->retries = 6;
    c->timeout_s = 120;
}

void pq_llm_config_resolve(PqLlmConfig *c) {
    if (c->jobs > 0) return;
    int gpu_local = c->model && pq_llm_local_is_dir(c->model) && !strcmp(pq_ops_backend(), "cuda");
    c->jobs = gpu_local ? PQ_LLM_LOCAL_GPU_JOBS : PQ_LLM_JOBS;
}

static int parse_double(const char *arg, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(arg, &end);
    if (errno || end == arg || *end || !isfinite(v) || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

static int parse_int(const char *arg, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(arg, &end, 10);
    if (errno || end == arg || *end || v < lo || v > hi) return -1;
    *out = (int)v;
    return 0;
}

int pq_llm_option(PqLlmConfig *c, int opt, const char *arg, PqErr *e) {
    switch (opt) {
    case PQ_OPT_LLM_BASE + 0: c->base_url = arg; return 1;
    case 'm': // -m, as in pq-logp, pq-dpo, pq-merge, pq-tokenize
    case PQ_OPT_LLM_BASE + 1: c->model = arg; return 1;
    case PQ_OPT_LLM_BASE + 2: c->api_key_env = arg; return 1;
    case PQ_OPT_LLM_BASE + 3:
        if (parse_double(arg, 0, 100, &c->temperature)) goto bad;
        return 1;
    case PQ_OPT_LLM_BASE + 4:
        if (parse_double(arg, 0, 1, &c->top_p)) goto bad;
        return 1;
    case PQ_OPT_LLM_BASE + 5:
        if (parse_int(arg, 1, 1 << 30, &c->max_tokens)) goto bad;
        return 1;
    case PQ_OPT_LLM_BASE + 6:
        if (parse_int(arg, 0, 100, &c->retries)) goto bad;
        return 1;
    case PQ_OPT_LLM_BASE + 7:
        if (parse_double(arg, 0.001, 1e6, &c->timeout_s)) goto bad;
        return 1;
    case PQ_OPT_LLM_BASE + 8:
        if (parse_double(arg, 0, 1e9, &c->rpm)) goto bad;
        return 1;
    case PQ_OPT_LLM_BASE + 9:
        if (parse_double(arg, 0, 1e12, &c->tpm)) goto bad;
        return 1;
    case PQ_OPT_LLM_BASE + 10:
        if (strcmp(arg, "server") == 0) c->n_client = 0;
        else if (strcmp(arg, "client") == 0) c->n_client = 1;
        else {
            pq_err(e, "--n-mode: expected server or client, not '%s'", arg);
            return -1;
        }
        return 1;
    case PQ_OPT_LLM_BASE + 11: c->unordered = 1; return 1;
    case PQ_OPT_LLM_BASE + 18:
        if (parse_double(arg, 0, 1, &c->min_p)) {
            pq_err(e, "--min-p: bad value '%s'", arg);
            return -1;
        }
        return 1;
    case PQ_OPT_LLM_BASE + 12 ... PQ_OPT_LLM_BASE + 17:
    case PQ_OPT_LLM_BASE + 19 ... PQ_OPT_LLM_BASE + 20:
    case 't': return pq_llm_local_option(c, opt, arg, e);
    case 'j':
        if (parse_int(arg, 1, 4096, &c->jobs)) goto bad;
        return 1;
    case 'o':
    case 'O': {
        const char *eq = strchr(arg, '=');
        if (!eq || eq == arg) {
            pq_err(e, "-o: expected KEY=JSON, not '%s'", arg);
            return -1;
        }
        cJSON *v = cJSON_Parse(eq + 1);
        if (!v) {
            pq_err(e, "-o %s: the value is not JSON (quote strings: -o 'stop=\"\\n\\n\"')", arg);
            return -1;
        }
        char *key = pq_xstrndup(arg, (size_t)(eq - arg));
        if (!c->extra) c->extra = cJSON_CreateObject();
        if (cJSON_GetObjectItemCaseSensitive(c->extra, key)) cJSON_DeleteItemFromObjectCaseSensitive(c->extra, key);
        cJSON_AddItemToObject(c->extra, key, v);
        free(key);
        return 1;
    }
    default: return 0;
    }
bad: {
    static const char *const names[] = {"--base-url", "--model", "--api-key-env", "--temperature", "--top-p",
                                        "--max-tokens", "--retries", "--timeout", "--rpm", "--tpm"};
    int i = opt - PQ_OPT_LLM_BASE;
    pq_err(e, "%s: bad value '%s'", opt == 'j' ? "-j" : i >= 0 && i < 10 ? names[i] : "option", arg);
    return -1;
}
}

// ---- setup ----

PqLlm *pq_llm_new(PqLlmConfig *c, PqErr *e) {
    pq_llm_config_resolve(c);
    cJSON *extra = c->extra;
    c->extra = NULL;
    if (!c->model || !*c->model) {
        pq_err(e, "--model is required (the model name sent to the server)");
        cJSON_Delete(extra);
        return NULL;
    }
    const char *m = c->model;
    int pathlike = m[0] == '/' || m[0] == '~' || !strcmp(m, ".") || !strcmp(m, "..") || !strncmp(m, "./", 2) ||
                   !strncmp(m, "../", 3);
    if (pathlike && !pq_llm_local_is_dir(m)) { // not a name for a server: say what is wrong with the directory
        struct stat st;
        if (stat(m, &st) != 0) pq_err(e, "--model %s: %s (a local model is a directory holding config.json)", m, strerror(errno));
        else pq_err(e, "--model %s: not a model directory (no config.json in it)", m);
        cJSON_Delete(extra);
        return NULL;
    }
    if (pq_llm_local_is_dir(c->model)) {
        cJSON_Delete(extra);
        PqLlmLocal *loc = pq_llm_local_new(c, e);
        if (!loc) return NULL;
        PqLlm *l = pq_xcalloc(1, sizeof *l);
        l->local = loc;
        return l;
    }
    const char *base = c->base_url;
    if (!base || !*base) base = getenv("OPENAI_BASE_URL");
    if (!base || !*base) base = "https://api.openai.com/v1";
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        pq_err(e, "libcurl initialisation failed");
        cJSON_Delete(extra);
        return NULL;
    }
    PqLlm *l = pq_xcalloc(1, sizeof *l);
    l->c = *c;
    l->c.extra = extra;
    l->c.model = pq_xstrdup(c->model);
    l->c.base_url = pq_xstrdup(base);
    l->c.api_key_env = pq_xstrdup(c->api_key_env ? c->api_key_env : "OPENAI_API_KEY");
    if (l->c.jobs < 1) l->c.jobs = 1;
    size_t bl = strlen(base);
    while (bl > 0 && base[bl - 1] == '/') bl--;
    PqBuf url = {0};
    pq_buf_append(&url, base, bl);
    pq_buf_puts(&url, "/chat/completions");
    l->url = url.data;

    l->headers = curl_slist_append(NULL, "Content-Type: application/json");
    l->headers = curl_slist_append(l->headers, "Expect:");
    const char *key = getenv(l->c.api_key_env);
    if (key && *key) {
        PqBuf h = {0};
        pq_buf_printf(&h, "Authorization: Bearer %s", key);
        l->headers = curl_slist_append(l->headers, h.data);
        pq_buf_free(&h);
    }
    l->multi = curl_multi_init();
    // Keep every connection of a full window alive between requests.
    curl_multi_setopt(l->multi, CURLMOPT_MAXCONNECTS, (long)l->c.jobs + 8);
    l->pool = pq_xcalloc((size_t)l->c.jobs, sizeof *l->pool);
    pq_rng_seed(&l->rng, (uint64_t)getpid() ^ (uint64_t)time(NULL) ^ (uint64_t)(pq_now() * 1e9));
    return l;
}

static void call_free(Call *c) {
    free(c->body);
    pq_buf_free(&c->resp);
    free(c);
}

static void job_free(Job *j) {
    if (j->texts)
        for (int i = 0; i < j->n; i++) free(j->texts[i]);
    free(j->texts);
    cJSON_Delete(j->messages);
    free(j);
}

static void job_unlink(PqLlm *l, Job *j) {
    if (j->prev) j->prev->next = j->next;
    else l->jobs = j->next;
    if (j->next) j->next->prev = j->prev;
}

void pq_llm_free(PqLlm *l) {
    if (!l) return;
    if (l->local) {
        pq_llm_local_free(l->local);
        free(l);
        return;
    }
    // Unfinished work (an interrupt, a fatal error): the callbacks still run
    // once each, with cancelled set, so that callers free what they hold.
    // (A callback that submits again only adds to what is cancelled next.)
    while (l->jobs || l->queued.head || l->waiting.head || l->flying.head) {
        for (Call *c; (c = l->flying.head);) {
            list_remove(&l->flying, c);
            curl_multi_remove_handle(l->multi, c->easy);
            curl_easy_cleanup(c->easy);
            call_free(c);
        }
        for (Call *c; (c = l->queued.head);) list_remove(&l->queued, c), call_free(c);
        for (Call *c; (c = l->waiting.head);) list_remove(&l->waiting, c), call_free(c);
        while (l->jobs) {
            Job *j = l->jobs;
            job_unlink(l, j);
            l->pending--;
            PqLlmResult r;
            memset(&r, 0, sizeof r);
            r.cancelled = 1;
            r.http_status = j->http_status;
            r.attempts = j->attempts;
            snprintf(r.error, sizeof r.error, "cancelled before it finished");
            if (j->cb) j->cb(j->user, &r);
            job_free(j);
        }
    }
    for (int i = 0; i < l->n_pool; i++) curl_easy_cleanup(l->pool[i]);
    free(l->pool);
    curl_multi_cleanup(l->multi);
    curl_slist_free_all(l->headers);
    curl_global_cleanup();
    cJSON_Delete(l->c.extra);
    free((char *)l->c.model);
    free((char *)l->c.base_url);
    free((char *)l->c.api_key_env);
    free(l->url);
    free(l);
}

// ---- submitting ----

static Call *call_new(Job *j, int first, int n, int64_t seed) {
    Call *c = pq_xcalloc(1, sizeof *c);
    c->job = j;
    c->first = first;
    c->n = n;
    c->seed = seed;
    c->retry_after = -1;
    j->calls_left++;
    return c;
}

void pq_llm_submit(PqLlm *l, const cJSON *messages, int n, int64_t seed, PqLlmDone cb, void *user) {
    if (l->local) {
        pq_llm_local_submit(l->local, messages, n, seed, cb, user);
        return;
    }
    if (n < 1) n = 1;
    Job *j = pq_xcalloc(1, sizeof *j);
    j->cb = cb;
    j->user = user;
    j->messages = cJSON_Duplicate(messages, 1);
    j->n = n;
    j->seed = seed;
    j->texts = pq_xcalloc((size_t)n, sizeof *j->texts);
    j->next = l->jobs;
    if (l->jobs) l->jobs->prev = j;
    l->jobs = j;
    l->pending++;
    if (n > 1 && l->c.n_client)
        for (int k = 0; k < n; k++) list_push_back(&l->queued, call_new(j, k, 1, seed < 0 ? -1 : seed + k));
    else list_push_back(&l->queued, call_new(j, 0, n, seed));
}

int pq_llm_pending(const PqLlm *l) { return l->local ? pq_llm_local_pending(l->local) : l->pending; }

void pq_llm_account(const PqLlm *l, PqTool *t) {
    if (l->local) {
        pq_llm_local_account(l->local, t);
        return;
    }
    PqLlm *m = (PqLlm *)l; // the snapshot of what was handed over is bookkeeping only
    t->n_requests += l->n_requests - l->acc_requests;
    t->n_retries += l->n_retries - l->acc_retries;
    t->tokens_prompt += l->tok_prompt - l->acc_prompt;
    t->tokens_completion += l->tok_completion - l->acc_completion;
    m->acc_requests = l->n_requests;
    m->acc_retries = l->n_retries;
    m->acc_prompt = l->tok_prompt;
    m->acc_completion = l->tok_completion;
}

// ---- one HTTP request ----

static size_t on_body(char *p, size_t size, size_t nmemb, void *user) {
    Call *c = user;
    if (c->resp.len + size * nmemb > MAX_REPLY_BYTES) {
        c->too_big = 1;
        return 0; // curl stops the transfer (CURLE_WRITE_ERROR)
    }
    pq_buf_append(&c->resp, p, size * nmemb);
    return size * nmemb;
}

// Retry-After (seconds or an HTTP date) and retry-after-ms.
static size_t on_header(char *p, size_t size, size_t nmemb, void *user) {
    Call *c = user;
    size_t n = size * nmemb;
    char line[256];
    if (n >= sizeof line) return n;
    memcpy(line, p, n);
    line[n] = 0;
    char *colon = strchr(line, ':');
    if (!colon) return n;
    *colon = 0;
    char *v = colon + 1;
    while (*v == ' ' || *v == '\t') v++;
    char *end = v + strlen(v);
    while (end > v && isspace((unsigned char)end[-1])) *--end = 0;
    double s = -1;
    if (strcasecmp(line, "retry-after-ms") == 0) {
        char *e;
        double ms = strtod(v, &e);
        if (e != v && isfinite(ms) && ms >= 0) s = ms / 1000;
    } else if (strcasecmp(line, "retry-after") == 0) {
        char *e;
        double sec = strtod(v, &e);
        if (e != v && !*e && isfinite(sec) && sec >= 0) s = sec;
        else {
            time_t at = curl_getdate(v, NULL);
            if (at != -1) s = at > time(NULL) ? (double)(at - time(NULL)) : 0;
        }
    }
    if (s >= 0 && s > c->retry_after) c->retry_after = s; // ms wins over s when both: the larger
    return n;
}

static void build_body(PqLlm *l, Call *c) {
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "model", l->c.model);
    cJSON_AddItemReferenceToObject(b, "messages", c->job->messages);
    if (c->n > 1) cJSON_AddNumberToObject(b, "n", c->n);
    if (c->seed >= 0) cJSON_AddNumberToObject(b, "seed", (double)c->seed);
    if (l->c.temperature >= 0) cJSON_AddNumberToObject(b, "temperature", l->c.temperature);
    // top_p 1 always: without it llama-server truncates (its defaults top_k 40, top_p 0.95, min_p 0.05
    // apply to any field left out); top_k and min_p only when set (OpenAI knows neither).
    cJSON_AddNumberToObject(b, "top_p", l->c.top_p >= 0 ? l->c.top_p : 1);
    if (l->c.top_k >= 0) cJSON_AddNumberToObject(b, "top_k", l->c.top_k);
    if (l->c.min_p >= 0) cJSON_AddNumberToObject(b, "min_p", l->c.min_p);
    if (l->c.max_tokens > 0) cJSON_AddNumberToObject(b, "max_tokens", l->c.max_tokens);
    // -o fields last: they override the fields above.
    for (cJSON *x = l->c.extra ? l->c.extra->child : NULL; x; x = x->next) {
        if (cJSON_GetObjectItemCaseSensitive(b, x->string)) cJSON_DeleteItemFromObjectCaseSensitive(b, x->string);
        cJSON_AddItemReferenceToObject(b, x->string, x);
    }
    c->body = cJSON_PrintUnformatted(b);
    cJSON_Delete(b);
    if (!c->body) abort(); // cJSON fails only when out of memory
    c->body_len = strlen(c->body);
    c->est_tokens = (double)c->body_len / 4;
}

static CURL *easy_get(PqLlm *l) {
    if (l->n_pool > 0) return l->pool[--l->n_pool];
    CURL *h = curl_easy_init();
    if (!h) abort();
    curl_easy_setopt(h, CURLOPT_URL, l->url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, l->headers);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)(l->c.timeout_s * 1000 + 0.5));
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(h, CURLOPT_USERAGENT, "pq/" PQ_VERSION);
    return h;
}

static void easy_put(PqLlm *l, CURL *h) {
    if (l->n_pool < l->c.jobs) l->pool[l->n_pool++] = h;
    else curl_easy_cleanup(h);
}

static void call_start(PqLlm *l, Call *c) {
    if (!c->body) build_body(l, c);
    c->attempt++;
    c->job->attempts = c->attempt > c->job->attempts ? c->attempt : c->job->attempts;
    c->retry_after = -1;
    c->errbuf[0] = 0;
    c->too_big = 0;
    pq_buf_clear(&c->resp);
    c->easy = easy_get(l);
    curl_easy_setopt(c->easy, CURLOPT_POSTFIELDS, c->body);
    curl_easy_setopt(c->easy, CURLOPT_POSTFIELDSIZE, (long)c->body_len);
    curl_easy_setopt(c->easy, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(c->easy, CURLOPT_HEADERDATA, c);
    curl_easy_setopt(c->easy, CURLOPT_ERRORBUFFER, c->errbuf);
    curl_easy_setopt(c->easy, CURLOPT_PRIVATE, c);
    curl_multi_add_handle(l->multi, c->easy);
    list_push_back(&l->flying, c);
    l->n_requests++;
    if (c->attempt > 1) l->n_retries++;
}

// ---- finishing ----

static void job_done(PqLlm *l, Job *j) {
    PqLlmResult r;
    memset(&r, 0, sizeof r);
    r.ok = !j->failed;
    r.fatal = j->fatal;
    r.texts = j->failed ? NULL : j->texts;
    r.n_texts = j->failed ? 0 : j->n;
    r.http_status = j->http_status;
    r.attempts = j->attempts;
    memcpy(r.error, j->error, sizeof r.error);
    job_unlink(l, j);
    l->pending--;
    if (j->cb) j->cb(j->user, &r);
    job_free(j);
}

// A call is over (replied, failed for good, or skipped): its job finishes
// with its last call.
static void call_over(PqLlm *l, Call *c) {
    Job *j = c->job;
    call_free(c);
    if (--j->calls_left == 0) job_done(l, j);
}

static void job_fail(Job *j, int fatal, const char *msg) {
    if (j->failed) return; // the first error is the one to report
    j->failed = 1;
    j->fatal = fatal;
    snprintf(j->error, sizeof j->error, "%s", msg);
}

// The server's own words from an error body: error.message, error (a
// string), message or detail; else the start of the body.
static void server_message(const char *body, char *out, size_t n) {
    out[0] = 0;
    cJSON *o = cJSON_Parse(body);
    const char *m = NULL;
    if (o) {
        const cJSON *err = cJSON_GetObjectItemCaseSensitive(o, "error");
        if (cJSON_IsObject(err)) m = pq_json_str(err, "message");
        else if (cJSON_IsString(err)) m = err->valuestring;
        if (!m) m = pq_json_str(o, "message");
        if (!m) m = pq_json_str(o, "detail");
    }
    if (m) snprintf(out, n, "%s", m);
    else {
        size_t k = 0;
        for (const char *p = body; *p && k + 1 < n && k < 120; p++)
            out[k++] = (*p == '\n' || *p == '\r' || *p == '\t') ? ' ' : *p;
        out[k] = 0;
    }
    cJSON_Delete(o);
}

// Does a 400's message say that n > 1 is not supported? ("only n = 1 is
// supported", llama.cpp's "Only one completion choice is allowed")
static int refuses_n(const char *msg) {
    for (const char *p = msg; *p; p++) {
        if ((*p == 'n' || *p == 'N') && (p == msg || !isalnum((unsigned char)p[-1])) && !isalnum((unsigned char)p[1]))
            return 1;
        if (strncasecmp(p, "choice", 6) == 0) return 1;
    }
    return 0;
}

// Parses a 2xx reply into the job's texts; 0 ok, -1 with a reason.
static int take_reply(PqLlm *l, Call *c, char *why, size_t wn) {
    cJSON *o = cJSON_ParseWithLength(c->resp.data ? c->resp.data : "", c->resp.len);
    if (!o) {
        char m[160];
        server_message(c->resp.data ? c->resp.data : "", m, sizeof m);
        snprintf(why, wn, "the reply is not JSON: %s", m);
        return -1;
    }
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(o, "choices");
    int got = 0, no_content = -1;
    char **texts = c->job->texts + c->first;
    if (cJSON_IsArray(choices)) {
        int i = 0;
        for (const cJSON *ch = choices->child; ch; ch = ch->next, i++) {
            double idx;
            int k = pq_json_num(ch, "index", &idx) ? (int)idx : i;
            if (k < 0 || k >= c->n || texts[k]) continue;
            const cJSON *msg = cJSON_GetObjectItemCaseSensitive(ch, "message");
            const char *content = pq_json_str(msg, "content");
            if (!content) content = pq_json_str(ch, "text"); // completions-style servers
            if (!content) { // null (a refusal, a tool call, a filter): no answer, not an empty one
                if (no_content < 0) no_content = k;
                continue;
            }
            texts[k] = pq_xstrdup(content);
            got++;
        }
    }
    const cJSON *usage = cJSON_GetObjectItemCaseSensitive(o, "usage");
    double pt = 0, ct = 0;
    if (pq_json_num(usage, "prompt_tokens", &pt)) l->tok_prompt += (long long)pt;
    if (pq_json_num(usage, "completion_tokens", &ct)) l->tok_completion += (long long)ct;
    if (l->c.tpm > 0 && (pt > 0 || ct > 0)) l->tpm_tat += (pt + ct - c->est_tokens) * 60.0 / l->c.tpm;
    cJSON_Delete(o);
    if (got < c->n) {
        for (int k = 0; k < c->n; k++) free(texts[k]), texts[k] = NULL;
        if (no_content >= 0) snprintf(why, wn, "choice %d of the reply has no content (null)", no_content);
        else snprintf(why, wn, "the reply has %d of the %d choices asked for", got, c->n);
        return -1;
    }
    return 0;
}

// n > 1 refused: this call becomes n calls of one choice (seeds seed+k),
// at the head of the queue; every later call is split when it starts.
static void split_call(PqLlm *l, Call *c) {
    Job *j = c->job;
    for (int k = c->n - 1; k >= 0; k--)
        list_push_front(&l->queued, call_new(j, c->first + k, 1, c->seed < 0 ? -1 : c->seed + k));
    call_over(l, c); // calls_left stays > 0: the new calls hold the job
}

static double backoff(PqLlm *l, const Call *c) {
    if (c->retry_after >= 0) {
        double s = c->retry_after < RETRY_AFTER_CAP_S ? c->retry_after : RETRY_AFTER_CAP_S;
        return s * (1 + 0.1 * pq_rng_uniform(&l->rng)); // the server's word, a little spread
    }
    double d = BACKOFF_BASE_S * pow(2, c->attempt - 1);
    d *= 0.75 + 0.5 * pq_rng_uniform(&l->rng);
    return d < BACKOFF_CAP_S ? d : BACKOFF_CAP_S;
}

static int curl_is_fatal(CURLcode rc) {
    switch (rc) {
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_NOT_BUILT_IN:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_FUNCTION_NOT_FOUND: return 1;
    default: return 0;
    }
}

static void call_finished(PqLlm *l, Call *c, CURLcode rc) {
    long status = 0;
    curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &status);
    curl_multi_remove_handle(l->multi, c->easy);
    easy_put(l, c->easy);
    c->easy = NULL;
    list_remove(&l->flying, c);
    Job *j = c->job;
    j->http_status = status;

    char msg[400], why[460];
    int retry = 0, fatal = 0, no_server = 0;
    if (c->too_big) { // not a fault that passes: no retry
        snprintf(why, sizeof why, "the reply is larger than %u MiB (a server that does not stop?)",
                 MAX_REPLY_BYTES >> 20);
    } else if (rc != CURLE_OK) {
        if (rc == CURLE_OPERATION_TIMEDOUT) snprintf(why, sizeof why, "timed out after %gs", l->c.timeout_s);
        else snprintf(why, sizeof why, "%s", c->errbuf[0] ? c->errbuf : curl_easy_strerror(rc));
        fatal = curl_is_fatal(rc);
        retry = !fatal;
        no_server = rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST || rc == CURLE_COULDNT_RESOLVE_PROXY;
    } else if (status >= 200 && status < 300) {
        if (take_reply(l, c, why, sizeof why) == 0) {
            call_over(l, c);
            return;
        }
        retry = 1; // a proxy's error page, a truncated reply: try again
    } else {
        server_message(c->resp.data ? c->resp.data : "", msg, sizeof msg);
        snprintf(why, sizeof why, "HTTP %ld%s%s", status, msg[0] ? ": " : "", msg);
        if (status == 401 || status == 403) fatal = 1;
        else if (status == 408 || status == 409 || status == 429 || status >= 500) retry = 1;
        else if (status == 400 && c->n > 1 && refuses_n(msg)) {
            if (!l->said_n_fallback)
                fprintf(stderr, "%s: the server refuses n > 1 (%s); sending n separate requests from now on (--n-mode client)\n",
                        program_invocation_short_name, why);
            l->said_n_fallback = 1;
            l->c.n_client = 1;
            split_call(l, c);
            return;
        }
    }
    if (no_server) l->conn_fails++;
    else if (status > 0) l->conn_fails = 0;
    if (retry && c->attempt <= l->c.retries && !l->fatal && !j->failed) {
        c->wake = pq_now() + backoff(l, c);
        list_push_back(&l->waiting, c);
        return;
    }
    if (retry && c->attempt > 1) {
        size_t k = strlen(why);
        snprintf(why + k, sizeof why - k, " (after %d attempts)", c->attempt);
    }
    if (no_server && l->conn_fails > l->c.retries) {
        // Every attempt of this request and all since the last reply found
        // no server: the next lines would fail alike, one by one, for
        // hours. Stop; the line is not rejected, so --resume redoes it.
        char m2[sizeof why + 32];
        snprintf(m2, sizeof m2, "the server is unreachable (%s)", why);
        snprintf(why, sizeof why, "%.*s", (int)sizeof why - 1, m2);
        fatal = 1;
    }
    if (fatal && !l->fatal) {
        l->fatal = 1;
        snprintf(l->fatal_msg, sizeof l->fatal_msg, "%s", why);
    }
    job_fail(j, fatal, why);
    call_over(l, c);
}

// ---- the loop ----

// How long until the rate limiters let the next call go (0: now).
static double rate_wait(PqLlm *l, double now) {
    double w = 0;
    if (l->c.rpm > 0 && l->rpm_tat - RATE_BURST_S > now) w = l->rpm_tat - RATE_BURST_S - now;
    if (l->c.tpm > 0 && l->tpm_tat - RATE_BURST_S > now) {
        double t = l->tpm_tat - RATE_BURST_S - now;
        w = t > w ? t : w;
    }
    return w;
}

static void rate_take(PqLlm *l, double now, const Call *c) {
    if (l->c.rpm > 0) l->rpm_tat = (l->rpm_tat > now ? l->rpm_tat : now) + 60.0 / l->c.rpm;
    if (l->c.tpm > 0) l->tpm_tat = (l->tpm_tat > now ? l->tpm_tat : now) + c->est_tokens * 60.0 / l->c.tpm;
}

// Starts queued calls while slots are free; returns the seconds until the
// rate limiters allow the next one (0 if none is held back); *started counts.
static double start_calls(PqLlm *l, double now, int *started) {
    while (l->queued.head && l->flying.n < l->c.jobs) {
        Call *c = l->queued.head;
        Job *j = c->job;
        if (j->failed || l->fatal) { // no point sending it
            list_remove(&l->queued, c);
            if (l->fatal) job_fail(j, 1, l->fatal_msg);
            call_over(l, c);
            (*started)++;
            continue;
        }
        if (c->n > 1 && l->c.n_client) {
            list_remove(&l->queued, c);
            split_call(l, c);
            continue;
        }
        if (!c->body) build_body(l, c);
        double w = rate_wait(l, now);
        if (w > 0) return w;
        list_remove(&l->queued, c);
        rate_take(l, now, c);
        call_start(l, c);
        (*started)++;
    }
    return 0;
}

// Backoffs that are over go to the head of the queue (retries first).
static double wake_waiting(PqLlm *l, double now) {
    double next = INFINITY;
    for (Call *c = l->waiting.head, *nx; c; c = nx) {
        nx = c->next;
        if (c->wake <= now || l->fatal || c->job->failed) { // no point waiting on a lost cause
            list_remove(&l->waiting, c);
            list_push_front(&l->queued, c);
        } else if (c->wake < next) next = c->wake;
    }
    return next;
}

static int drain_done(PqLlm *l) {
    int n = 0, left;
    CURLMsg *m;
    while ((m = curl_multi_info_read(l->multi, &left))) {
        if (m->msg != CURLMSG_DONE) continue;
        Call *c = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&c);
        call_finished(l, c, m->data.result);
        n++;
    }
    return n;
}

// One turn of the event loop: wakes backed-off calls, starts what the
// limits allow (*started), lets curl work and collects the finished calls
// (the return value). *wait_s: how long the caller may sleep before a call
// is due, at most 0.25 s so that pq_interrupted is looked at now and then.
static int pump(PqLlm *l, int *started, double *wait_s) {
    double now = pq_now();
    double next_wake = wake_waiting(l, now);
    *started = 0;
    double rw = start_calls(l, now, started);
    int running = 0;
    curl_multi_perform(l->multi, &running);
    int done = drain_done(l);
    double wait = 0.25;
    now = pq_now();
    if (next_wake - now < wait) wait = next_wake - now;
    if (rw > 0 && rw < wait) wait = rw;
    *wait_s = wait < 0 ? 0 : wait;
    return done;
}

void pq_llm_run(PqLlm *l, int below) {
    if (l->local) {
        pq_llm_local_run(l->local, below);
        return;
    }
    if (below < 1) below = 1;
    if (l->pending < below) {
        // Below the caller's limit: only hand new requests to curl; they go
        // out at the next curl_multi_perform. A perform costs O(jobs) (curl
        // looks at every handle), so one per submitted request would be a
        // large part of the client's time at -j 256.
        int moved = 0;
        wake_waiting(l, pq_now());
        start_calls(l, pq_now(), &moved);
        return;
    }
    while (!pq_interrupted) {
        int started;
        double wait;
        int moved = pump(l, &started, &wait) + started;
        if (l->pending < below) return;
        if (moved) continue; // slots freed or calls started: look again before waiting
        curl_multi_poll(l->multi, NULL, 0, (int)(wait * 1000 + 0.999), NULL);
    }
}

static int fd_ready(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return fd >= 0 && poll(&p, 1, 0) > 0;
}

void pq_llm_run_input(PqLlm *l, int input_fd) {
    if (l->local) {
        if (pq_llm_local_pending(l->local) > 0) pq_llm_local_run(l->local, pq_llm_local_pending(l->local) + 1);
        else if (input_fd >= 0) { // nothing to decode: wait for input
            struct pollfd p = {.fd = input_fd, .events = POLLIN};
            poll(&p, 1, 250);
        }
        return;
    }
    for (int waited = 0; !pq_interrupted; waited = 1) {
        int started;
        double wait;
        if (pump(l, &started, &wait) || waited || fd_ready(input_fd)) return;
        struct curl_waitfd w = {.fd = input_fd, .events = CURL_WAIT_POLLIN};
        curl_multi_poll(l->multi, &w, input_fd >= 0 ? 1 : 0, (int)(wait * 1000 + 0.999), NULL);
    }
}

int pq_llm_next_line(PqLlm *l, PqTool *t) {
    for (;;) {
        if (t->fatal) return 0;
        int r = pq_tool_try_next(t);
        if (r >= 0) return r;
        pq_llm_run_input(l, pq_tool_wait_fd(t));
        pq_llm_account(l, t);
        pq_tool_progress(t, 0);
    }
}
