// pq-questions: asks the judge for a 5-question multiple-choice quiz about
// each article (method.md §1), validates and shuffles it, adds "questions".
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "llm.h"
#include "quiz.h"
#include "tool.h"

static const char usage[] =
    "Usage: pq-questions --model NAME [options] [articles.jsonl ...] > questions.jsonl\n"
    "Asks the judge for 5 multiple-choice questions (options A-E) about each\n"
    "article {id, article, ...}, retries unparsable replies, shuffles questions and\n"
    "options (seed ^ hash(id)) and adds \"questions\"; other fields pass through.\n"
    "Options:\n"
    "      --prompt-file FILE  prompt template instead of the built-in one ({article})\n"
    "      --attempts N        tries per article when the reply is not a valid quiz (default 3)\n"
    PQ_LLM_HELP;

enum { OPT_PROMPT_FILE = PQ_OPT_TOOL_BASE, OPT_ATTEMPTS };

// One article in flight: what is needed to resend it, emit it or reject it.
typedef struct Job {
    struct Ctx *ctx;
    struct Job *prev, *next; // the list of jobs in flight
    long seq;      // position in the output order
    PqLine line;   // saved copy of the input line, for rejects
    cJSON *obj;    // the parsed record
    cJSON *messages;
    char *id;      // resume key / shuffle key
    int attempt;   // 0-based
    int64_t seed;  // of the first attempt
} Job;

typedef struct Ctx {
    PqTool tool;
    PqLlm *llm;
    PqReorder reorder;
    Job *jobs; // in flight
    int attempts;
    int unordered;
    int stop; // a fatal client error: read no more input
} Ctx;

static void job_free(Job *j) {
    Ctx *c = j->ctx;
    if (j->prev) j->prev->next = j->next;
    else c->jobs = j->next;
    if (j->next) j->next->prev = j->prev;
    free(j->line.text);
    cJSON_Delete(j->obj);
    cJSON_Delete(j->messages);
    free(j->id);
    free(j);
}

// Hands a finished article to the output: text (taken over) or NULL when
// the line was rejected or abandoned, so the reorder buffer moves on.
static void job_output(Job *j, char *text) {
    Ctx *c = j->ctx;
    if (c->unordered) {
        if (text) pq_tool_emit_text(&c->tool, text);
        free(text);
    } else {
        pq_reorder_put(&c->reorder, &c->tool, j->seq, text);
    }
}

static void on_done(void *user, const PqLlmResult *res);

// Sends (or resends) the article; a different seed per attempt, so a
// retried judge does not repeat its unparsable reply.
static void submit(Job *j) {
    pq_llm_submit(j->ctx->llm, j->messages, 1, j->seed + j->attempt, on_done, j);
}

static void on_done(void *user, const PqLlmResult *res) {
    Job *j = user;
    Ctx *c = j->ctx;
    PqTool *t = &c->tool;
    if (res->cancelled) { // never finished (Ctrl-C, a fatal error): a rerun does it
        job_output(j, NULL);
        job_free(j);
        return;
    }
    if (!res->ok) {
        if (res->fatal) {
            // Not this line's fault (auth, configuration): stop reading; the
            // line is neither output nor rejected, so a rerun with --resume
            // picks it up.
            if (!c->stop) fprintf(stderr, "%s: fatal: %s; stopping (finished lines are kept)\n", t->name, res->error);
            c->stop = 1;
            t->fatal = 1;
        } else {
            pq_tool_reject(t, &j->line, j->id, "%s", res->error);
        }
        job_output(j, NULL);
        job_free(j);
        return;
    }
    PqQuiz quiz;
    PqErr e;
    memset(&quiz, 0, sizeof quiz);
    if (res->n_texts < 1 || pq_quiz_parse_reply(res->texts[0], &quiz, &e) != 0) {
        if (res->n_texts < 1) snprintf(e.msg, sizeof e.msg, "no completion in the reply");
        pq_quiz_free(&quiz);
        if (++j->attempt < c->attempts && !pq_interrupted && !c->stop) {
            submit(j);
            return;
        }
        pq_tool_reject(t, &j->line, j->id, "no valid quiz after %d attempt%s: %s", j->attempt,
                       j->attempt == 1 ? "" : "s", e.msg);
        job_output(j, NULL);
        job_free(j);
        return;
    }
    // The shuffle is keyed by the article, not by its position in the input,
    // so reruns, resumes and fan-outs give every article the same quiz.
    pq_quiz_shuffle(&quiz, t->seed ^ pq_hash_str(j->id));
    pq_json_set(j->obj, "questions", pq_quiz_to_json(&quiz));
    pq_quiz_free(&quiz);
    char *text = cJSON_PrintUnformatted(j->obj);
    if (!text) pq_tool_die(t, "out of memory printing JSON");
    t->n_done++;
    job_output(j, text);
    job_free(j);
    pq_llm_account(c->llm, t);
    pq_tool_progress(t, 0);
}


int main(int argc, char **argv) {
    static Ctx ctx;
    Ctx *c = &ctx;
    PqTool *t = &c->tool;
    PqLlmConfig cfg;
    PqErr e;
    const char *prompt_file = NULL;
    char *prompt = NULL;
    c->attempts = 3;
    pq_tool_init(t, "pq-questions", usage);
    pq_llm_config_init(&cfg);
    static const struct option longopts[] = {
        PQ_TOOL_LONGOPTS,
        PQ_LLM_LONGOPTS,
        {"prompt-file", required_argument, 0, OPT_PROMPT_FILE},
        {"attempts", required_argument, 0, OPT_ATTEMPTS},
        {0, 0, 0, 0},
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "hj:o:t:", longopts, NULL)) != -1) {
        if (opt == 'o') opt = 'O';
        int r = pq_llm_option(&cfg, opt, optarg, &e);
        if (r < 0) pq_tool_usage_error(t, "%s", e.msg);
        if (r > 0) continue;
        if (pq_tool_option(t, opt, optarg)) continue;
        char *end;
        switch (opt) {
        case OPT_PROMPT_FILE: prompt_file = optarg; break;
        case OPT_ATTEMPTS:
            errno = 0;
            c->attempts = (int)strtol(optarg, &end, 10);
            if (errno || *end || c->attempts < 1 || c->attempts > 100)
                pq_tool_usage_error(t, "--attempts: want 1..100, not '%s'", optarg);
            break;
        default: pq_tool_usage_error(t, "bad option");
        }
    }
    if (prompt_file) {
        prompt = pq_read_file(prompt_file, NULL, &e);
        if (!prompt) pq_tool_usage_error(t, "--prompt-file %s", e.msg);
        if (!strstr(prompt, "{article}")) pq_tool_usage_error(t, "--prompt-file %s: no {article} in it", prompt_file);
    }
    c->unordered = cfg.unordered;
    int jobs = cfg.jobs > 0 ? cfg.jobs : 1;
    if (!cfg.model) pq_tool_usage_error(t, "--model NAME is required");
    pq_tool_open(t, argc, argv, optind);
    if (!(c->llm = pq_llm_new(&cfg, &e))) pq_tool_die(t, "%s", e.msg);
    // The reorder buffer bounds memory: a slow line holds back at most this
    // many finished ones before reading pauses.
    long cap = 4L * jobs + 64;
    pq_reorder_init(&c->reorder, cap);

    const char *keys[] = {"article"};
    PqBuf key = {0};
    long seq = 0;
    while (!c->stop && pq_llm_next_line(c->llm, t)) {
        cJSON *obj = pq_tool_parse(t);
        if (!obj) continue;
        const char *article = pq_json_str(obj, "article");
        pq_record_key(obj, &key);
        const cJSON *idv = cJSON_GetObjectItemCaseSensitive(obj, "id");
        if (!cJSON_IsString(idv) && !cJSON_IsNumber(idv)) {
            pq_tool_reject(t, &t->line, NULL, "no \"id\" field");
            cJSON_Delete(obj);
            continue;
        }
        if (!article) {
            pq_tool_reject(t, &t->line, pq_json_id(obj), "no \"article\" string");
            cJSON_Delete(obj);
            continue;
        }
        if (pq_tool_is_done(t, key.data)) {
            t->n_skipped++;
            cJSON_Delete(obj);
            continue;
        }
        Job *j = pq_xcalloc(1, sizeof *j);
        j->ctx = c;
        j->seq = seq++;
        j->line = t->line;
        j->line.text = pq_xstrndup(t->line.text, t->line.len);
        j->obj = obj;
        j->id = pq_xstrdup(key.data);
        // The request seed, from --seed and the id (as pq-summarize does), so
        // reruns ask the same.
        j->seed = (int64_t)((pq_hash_str(key.data) ^ (t->seed * 0x9E3779B97F4A7C15ull)) & 0x3fffffff);
        j->next = c->jobs;
        if (c->jobs) c->jobs->prev = j;
        c->jobs = j;
        const char *values[] = {article};
        char *text = pq_prompt_fill(prompt ? prompt : pq_prompt_questions, 1, keys, values);
        j->messages = cJSON_CreateArray();
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "role", "user");
        cJSON_AddStringToObject(m, "content", text);
        cJSON_AddItemToArray(j->messages, m);
        free(text);
        // Never more finished lines held back than the reorder buffer takes.
        while (!c->unordered && j->seq >= c->reorder.next + cap && pq_llm_pending(c->llm) > 0 && !pq_interrupted)
            pq_llm_run(c->llm, pq_llm_pending(c->llm));
        if (pq_interrupted || c->stop) {
            job_free(j);
            break;
        }
        submit(j);
        // Keep `jobs` requests in flight and as many queued.
        pq_llm_run(c->llm, 2 * jobs);
    }
    while (pq_llm_pending(c->llm) > 0 && !pq_interrupted) {
        pq_llm_run(c->llm, pq_llm_pending(c->llm));
        pq_llm_account(c->llm, t);
        pq_tool_progress(t, 0);
    }
    pq_llm_account(c->llm, t);
    // Requests that never finished come back cancelled and leave their
    // slots empty, so what finished behind them goes out, still in order.
    pq_llm_free(c->llm);
    while (c->jobs) job_free(c->jobs);
    if (!c->unordered) pq_reorder_flush(&c->reorder, &c->tool);
    pq_reorder_free(&c->reorder);
    pq_buf_free(&key);
    free(prompt);
    return pq_tool_finish(t);
}
