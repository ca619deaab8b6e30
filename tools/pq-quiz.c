// pq-quiz: the judge takes each article's quiz seeing only a summary
// (method.md §3); adds "judge_answers", "correct", "num_words", "bad_chars".
#include <stdlib.h>
#include <string.h>

#include "llm.h"
#include "quiz.h"
#include "tool.h"

static const char usage[] =
    "Usage: pq-quiz --model NAME [options] [summaries.jsonl ...] > quiz.jsonl\n"
    "Shows the judge each summary {id, summary, questions, ...} with the article's\n"
    "questions and asks for an answer per question (\"Unsure\" where the summary does\n"
    "not say); adds \"judge_answers\", \"correct\" (answers equal to the key),\n"
    "\"num_words\" and \"bad_chars\"; other fields pass through. The judge's\n"
    "temperature is 0 unless --temperature is given.\n"
    "Options:\n"
    "      --prompt-file FILE  prompt template instead of the built-in one ({summary}, {questions})\n"
    PQ_LLM_HELP;

enum { OPT_PROMPT_FILE = PQ_OPT_TOOL_BASE };

// One summary in flight.
typedef struct Job {
    struct Ctx *ctx;
    struct Job *prev, *next; // the list of jobs in flight
    long seq;                // position in the output order
    PqLine line;             // saved copy of the input line, for rejects
    cJSON *obj;              // the parsed record
    char *key;               // resume key (id, sample)
    int n;                   // questions
    char answer[PQ_QUIZ_QUESTIONS];
} Job;

typedef struct Ctx {
    PqTool tool;
    PqLlm *llm;
    PqReorder reorder;
    Job *jobs; // in flight
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
    free(j->key);
    free(j);
}

// Hands a finished summary to the output: text (taken over), or NULL when the
// line was rejected or abandoned, so the reorder buffer moves on.
static void job_output(Job *j, char *text) {
    Ctx *c = j->ctx;
    if (c->unordered) {
        if (text) pq_tool_emit_text(&c->tool, text);
        free(text);
    } else {
        pq_reorder_put(&c->reorder, &c->tool, j->seq, text);
    }
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
    if (!res->ok || res->n_texts < 1) {
        if (res->fatal) {
            // Not this line's fault (auth, configuration): stop reading; the
            // line is neither output nor rejected, so a rerun with --resume
            // picks it up.
            if (!c->stop) fprintf(stderr, "%s: fatal: %s; stopping (finished lines are kept)\n", t->name, res->error);
            c->stop = 1;
            t->fatal = 1;
        } else {
            pq_tool_reject(t, &j->line, pq_json_id(j->obj), "%s", res->ok ? "no completion in the reply" : res->error);
        }
        job_output(j, NULL);
        job_free(j);
        return;
    }
    // A missing or unparsable answer counts as "Unsure": never retried, as
    // the judge not knowing is itself the measurement.
    char got[PQ_QUIZ_QUESTIONS];
    pq_answers_parse(res->texts[0], j->n, got);
    cJSON *answers = cJSON_CreateArray();
    int correct = 0;
    for (int k = 0; k < j->n; k++) {
        char letter[2] = {got[k], 0};
        int known = got[k] >= 'A' && got[k] <= 'E';
        cJSON_AddItemToArray(answers, cJSON_CreateString(known ? letter : "Unsure"));
        correct += known && got[k] == j->answer[k];
    }
    const char *summary = pq_json_str(j->obj, "summary");
    pq_json_set(j->obj, "judge_answers", answers);
    pq_json_set(j->obj, "correct", cJSON_CreateNumber(correct));
    pq_json_set(j->obj, "num_words", cJSON_CreateNumber(pq_count_words(summary)));
    pq_json_set(j->obj, "bad_chars", cJSON_CreateNumber(pq_count_bad_chars(summary)));
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
    pq_tool_init(t, "pq-quiz", usage);
    pq_llm_config_init(&cfg);
    static const struct option longopts[] = {
        PQ_TOOL_LONGOPTS,
        PQ_LLM_LONGOPTS,
        {"prompt-file", required_argument, 0, OPT_PROMPT_FILE},
        {0, 0, 0, 0},
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "hj:o:t:", longopts, NULL)) != -1) {
        if (opt == 'o') opt = 'O';
        int r = pq_llm_option(&cfg, opt, optarg, &e);
        if (r < 0) pq_tool_usage_error(t, "%s", e.msg);
        if (r > 0) continue;
        if (pq_tool_option(t, opt, optarg)) continue;
        switch (opt) {
        case OPT_PROMPT_FILE: prompt_file = optarg; break;
        default: pq_tool_usage_error(t, "bad option");
        }
    }
    if (prompt_file) {
        prompt = pq_read_file(prompt_file, NULL, &e);
        if (!prompt) pq_tool_usage_error(t, "--prompt-file %s", e.msg);
        if (!strstr(prompt, "{summary}") || !strstr(prompt, "{questions}"))
            pq_tool_usage_error(t, "--prompt-file %s: wants both {summary} and {questions}", prompt_file);
    }
    // Answering is a measurement: deterministic unless asked otherwise.
    if (cfg.temperature < 0) cfg.temperature = 0;
    c->unordered = cfg.unordered;
    int jobs = cfg.jobs > 0 ? cfg.jobs : 1;
    if (!cfg.model) pq_tool_usage_error(t, "--model NAME is required");
    pq_tool_open(t, argc, argv, optind);
    if (!(c->llm = pq_llm_new(&cfg, &e))) pq_tool_die(t, "%s", e.msg);
    // The reorder buffer bounds memory: a slow line holds back at most this
    // many finished ones before reading pauses.
    long cap = 4L * jobs + 64;
    pq_reorder_init(&c->reorder, cap);

    const char *keys[] = {"summary", "questions"};
    PqBuf key = {0};
    long seq = 0;
    while (!c->stop && pq_llm_next_line(c->llm, t)) {
        cJSON *obj = pq_tool_parse(t);
        if (!obj) continue;
        pq_record_key(obj, &key);
        const cJSON *idv = cJSON_GetObjectItemCaseSensitive(obj, "id");
        const char *id = cJSON_IsString(idv) || cJSON_IsNumber(idv) ? pq_json_id(obj) : NULL;
        const char *summary = pq_json_str(obj, "summary");
        const cJSON *questions = cJSON_GetObjectItemCaseSensitive(obj, "questions");
        PqQuiz quiz;
        memset(&quiz, 0, sizeof quiz);
        if (!id) {
            pq_tool_reject(t, &t->line, NULL, "no \"id\" field");
        } else if (!summary) {
            pq_tool_reject(t, &t->line, id, "no \"summary\" string");
        } else if (!questions) {
            pq_tool_reject(t, &t->line, id, "no \"questions\" field");
        } else if (pq_quiz_from_json(questions, &quiz, &e) != 0) {
            pq_tool_reject(t, &t->line, id, "bad \"questions\": %s", e.msg);
        } else if (pq_tool_is_done(t, key.data)) {
            t->n_skipped++;
        } else {
            Job *j = pq_xcalloc(1, sizeof *j);
            j->ctx = c;
            j->seq = seq++;
            j->line = t->line;
            j->line.text = pq_xstrndup(t->line.text, t->line.len);
            j->obj = obj;
            j->key = pq_xstrdup(key.data);
            j->n = quiz.n;
            j->next = c->jobs;
            if (c->jobs) c->jobs->prev = j;
            c->jobs = j;
            for (int k = 0; k < quiz.n; k++) j->answer[k] = quiz.q[k].answer;
            char *rendered = pq_quiz_render(&quiz);
            const char *values[] = {summary, rendered};
            char *text = pq_prompt_fill(prompt ? prompt : pq_prompt_quiz, 2, keys, values);
            cJSON *messages = cJSON_CreateArray();
            cJSON *m = cJSON_CreateObject();
            cJSON_AddStringToObject(m, "role", "user");
            cJSON_AddStringToObject(m, "content", text);
            cJSON_AddItemToArray(messages, m);
            free(text);
            free(rendered);
            pq_quiz_free(&quiz);
            // Never more finished lines held back than the reorder buffer takes.
            while (!c->unordered && j->seq >= c->reorder.next + cap && pq_llm_pending(c->llm) > 0 && !pq_interrupted)
                pq_llm_run(c->llm, pq_llm_pending(c->llm));
            if (pq_interrupted || c->stop) {
                cJSON_Delete(messages);
                job_free(j);
                break;
            }
            // The request seed, from --seed and the key (as pq-summarize
            // does), so reruns ask the same.
            int64_t rseed = (int64_t)((pq_hash_str(key.data) ^ (t->seed * 0x9E3779B97F4A7C15ull)) & 0x3fffffff);
            pq_llm_submit(c->llm, messages, 1, rseed, on_done, j);
            // Keep `jobs` requests in flight and as many queued.
            pq_llm_run(c->llm, 2 * jobs);
            cJSON_Delete(messages);
            continue;
        }
        pq_quiz_free(&quiz);
        cJSON_Delete(obj);
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
