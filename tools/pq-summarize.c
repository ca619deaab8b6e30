// pq-summarize: the policy writes n short summaries of each article
// (method.md §2) through an OpenAI-compatible endpoint; one line per sample.
#include <stdlib.h>
#include <string.h>

#include "llmtool.h"
#include "quiz.h"
#include "tool.h"

static const char usage[] =
    "Usage: pq-summarize --model NAME [OPTIONS] [FILE...]\n"
    "Asks the policy model for short summaries of each article (JSONL with \"id\" and\n"
    "\"article\") and writes one line per sample: the input plus \"sample\", \"prompt\",\n"
    "\"summary\" and \"policy\".\n"
    "  -n, --samples N         summaries per article (default 1)\n"
    "      --prompt-file FILE  the prompt, with {article} where the text goes\n"
    "                          (default: the built-in one, pq(7) METHOD step 2)\n"
    "Temperature is the server's unless --temperature is given (0.8 for\n"
    "training data, 0 for evaluation). Each article's seed is derived from\n"
    "--seed and its id; sample k of n is asked with seed+k in --n-mode client.\n" PQ_LLM_HELP;

enum { OPT_PROMPT_FILE = PQ_OPT_TOOL_BASE };

static PqTool T;
static PqLlmTool L;
static const char *policy;
static char *policy_json; // "policy" printed once

// An article in flight: its job.n output lines are the samples asked for
// (the missing ones when resuming), job.messages the prompt written with them.
typedef struct Article {
    PqLlmJob job;
    int *sample;   // their numbers
    char **text;   // their summaries, as they come
    int jobs_left; // requests outstanding
    int failed, cancelled;
    char error[512];
} Article;

typedef struct JobCtx {
    Article *a;
    int first; // texts[0] of the reply is a->text[first]
} JobCtx;

static void article_free(Article *a) {
    for (int k = 0; k < a->job.n; k++) free(a->text[k]);
    pq_llmtool_job_free(&a->job);
    free(a->text);
    free(a->sample);
    free(a);
}

// Does the input already hold a field we write (a rerun over our output)?
static int has_our_fields(const cJSON *obj) {
    static const char *const ours[] = {"sample", "prompt", "summary", "policy"};
    for (int i = 0; i < 4; i++)
        if (cJSON_GetObjectItemCaseSensitive(obj, ours[i])) return 1;
    return 0;
}

// Every request of an article is over: emit its samples, or reject it.
static void article_done(Article *a) {
    if (a->cancelled) { // interrupted: nothing written, --resume redoes it
    } else if (a->failed) {
        if (!T.fatal) pq_tool_reject(&T, &a->job.line, pq_json_id(a->job.obj), "%s", a->error);
        for (int k = 0; k < a->job.n; k++) pq_llmtool_put(&L, a->job.seq + k, NULL);
    } else if (!has_our_fields(a->job.obj)) {
        // The usual case: the input line as it came, our fields appended;
        // the article is not copied or printed again per sample.
        char *prompt = cJSON_PrintUnformatted(a->job.messages);
        size_t len = a->job.line.len;
        while (len > 0 && a->job.line.text[len - 1] != '}') len--;
        PqBuf b = {0};
        for (int k = 0; k < a->job.n; k++) {
            cJSON *sum = cJSON_CreateString(a->text[k]);
            char *sj = cJSON_PrintUnformatted(sum);
            cJSON_Delete(sum);
            if (!prompt || !sj || len == 0) pq_tool_die(&T, "out of memory printing JSON");
            pq_buf_clear(&b);
            pq_buf_append(&b, a->job.line.text, len - 1);
            pq_buf_printf(&b, ",\"sample\":%d,\"prompt\":", a->sample[k]);
            pq_buf_puts(&b, prompt); // not printf: slow on long strings
            pq_buf_puts(&b, ",\"summary\":");
            pq_buf_puts(&b, sj);
            pq_buf_puts(&b, ",\"policy\":");
            pq_buf_puts(&b, policy_json);
            pq_buf_puts(&b, "}");
            cJSON_free(sj);
            pq_llmtool_put(&L, a->job.seq + k, pq_xstrdup(b.data));
        }
        pq_buf_free(&b);
        cJSON_free(prompt);
        T.n_done++;
    } else {
        for (int k = 0; k < a->job.n; k++) {
            cJSON *o = cJSON_Duplicate(a->job.obj, 1);
            pq_json_set(o, "sample", cJSON_CreateNumber(a->sample[k]));
            pq_json_set(o, "prompt", cJSON_Duplicate(a->job.messages, 1));
            pq_json_set(o, "summary", cJSON_CreateString(a->text[k]));
            pq_json_set(o, "policy", cJSON_CreateString(policy));
            char *s = cJSON_PrintUnformatted(o);
            cJSON_Delete(o);
            if (!s) pq_tool_die(&T, "out of memory printing JSON");
            pq_llmtool_put(&L, a->job.seq + k, s);
        }
        T.n_done++;
    }
    article_free(a);
}

static void on_reply(void *user, const PqLlmResult *res) {
    JobCtx *j = user;
    Article *a = j->a;
    if (res->cancelled) a->cancelled = 1;
    else if (!res->ok) {
        if (!a->failed) snprintf(a->error, sizeof a->error, "%s", res->error);
        a->failed = 1;
        if (res->fatal) pq_llmtool_fatal(&L, res->error);
    } else
        for (int k = 0; k < res->n_texts; k++) {
            a->text[j->first + k] = res->texts[k];
            res->texts[k] = NULL;
        }
    free(j);
    if (--a->jobs_left == 0) article_done(a);
}

static void submit(Article *a, int first, int n, int64_t seed) {
    JobCtx *j = pq_xmalloc(sizeof *j);
    j->a = a;
    j->first = first;
    a->jobs_left++;
    pq_llm_submit(L.llm, a->job.messages, n, seed, on_reply, j);
}


int main(int argc, char **argv) {
    static const struct option longopts[] = {
        PQ_TOOL_LONGOPTS,
        PQ_LLM_LONGOPTS,
        {"samples", required_argument, 0, 'n'},
        {"prompt-file", required_argument, 0, OPT_PROMPT_FILE},
        {0, 0, 0, 0},
    };
    PqLlmConfig cfg;
    pq_llm_config_init(&cfg);
    pq_tool_init(&T, "pq-summarize", usage);
    int n = 1, opt;
    char *prompt_file = NULL;
    PqErr e;
    while ((opt = getopt_long(argc, argv, "hn:j:o:t:m:", longopts, NULL)) != -1) {
        if (pq_llmtool_option(&T, &cfg, opt, optarg)) continue;
        switch (opt) {
        case 'n': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || end == optarg || v < 1 || v > 10000) pq_tool_usage_error(&T, "-n: expected 1..10000, not '%s'", optarg);
            n = (int)v;
            break;
        }
        case OPT_PROMPT_FILE:
            free(prompt_file);
            if (!(prompt_file = pq_read_file(optarg, NULL, &e))) pq_tool_usage_error(&T, "--prompt-file %s", e.msg);
            if (!strstr(prompt_file, "{article}")) pq_tool_usage_error(&T, "--prompt-file %s: no {article} in it", optarg);
            break;
        default: pq_tool_usage_error(&T, "bad option");
        }
    }
    if (!cfg.model) pq_tool_usage_error(&T, "--model NAME is required");
    pq_llm_config_resolve(&cfg);
    policy = cfg.model;
    cJSON *pj = cJSON_CreateString(policy);
    policy_json = cJSON_PrintUnformatted(pj);
    cJSON_Delete(pj);
    pq_tool_open(&T, argc, argv, optind);
    // Finished articles wait in the reorder ring (bounded, n lines each)
    // until the lines before them are written.
    long cap = (long)(4 * cfg.jobs > 64 ? 4 * cfg.jobs : 64) * n;
    if (cap > (1L << 16)) cap = 2L * n > (1L << 16) ? 2L * n : 1L << 16;
    pq_llmtool_open(&L, &T, &cfg, cap);
    const char *tmpl = prompt_file ? prompt_file : pq_prompt_summary;
    PqBuf key = {0};
    static const char *const keys[] = {"article"};

    while (pq_llmtool_next(&L)) {
        cJSON *obj = pq_tool_parse(&T);
        if (!obj) continue;
        const char *id = pq_llmtool_id(&L, obj);
        const char *text = id ? pq_llmtool_str(&L, obj, "article", id) : NULL;
        if (!text) {
            cJSON_Delete(obj);
            continue;
        }
        // Which samples are still to do (all of them unless resuming).
        int *missing = pq_xmalloc((size_t)n * sizeof *missing), m = 0;
        for (int k = 0; k < n; k++) {
            pq_json_set(obj, "sample", cJSON_CreateNumber(k));
            pq_record_key(obj, &key);
            if (!pq_tool_is_done(&T, key.data)) missing[m++] = k;
        }
        cJSON_DeleteItemFromObjectCaseSensitive(obj, "sample");
        if (m == 0) {
            T.n_skipped++;
            free(missing);
            cJSON_Delete(obj);
            continue;
        }
        // The article's seed comes from its key without "sample".
        pq_record_key(obj, &key);
        char *content = pq_prompt_fill(tmpl, 1, keys, &text);
        Article *a = pq_xcalloc(1, sizeof *a);
        pq_llmtool_job_init(&L, &a->job, obj, key.data, content);
        free(content);
        a->sample = missing;
        a->text = pq_xcalloc((size_t)m, sizeof *a->text);
        if (pq_llmtool_reserve(&L, &a->job, m) < 0) {
            article_free(a);
            break;
        }
        int64_t seed = a->job.seed;
        if (m == n) submit(a, 0, n, seed);
        else if (cfg.n_client) // resuming: sample k is asked with seed+k, as the first run did
            for (int k = 0; k < m; k++) submit(a, k, 1, seed + missing[k]);
        else submit(a, 0, m, seed);
        pq_llmtool_run(&L);
        pq_llm_account(L.llm, &T);
        pq_tool_progress(&T, 0);
    }
    pq_buf_free(&key);
    free(prompt_file);
    int rc = pq_llmtool_finish(&L); // after Ctrl-C: the unfinished articles are dropped
    cJSON_free(policy_json);
    return rc;
}
