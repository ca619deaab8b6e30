// pq-questions: asks the judge for a 5-question multiple-choice quiz about
// each article (method.md §1), validates and shuffles it, adds "questions".
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "llmtool.h"
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

// One article in flight.
typedef struct Job {
    PqLlmJob job;
    int attempt; // 0-based
} Job;

static PqTool T;
static PqLlmTool L;
static int attempts = 3;

static void job_free(Job *j) {
    pq_llmtool_job_free(&j->job);
    free(j);
}

static void on_done(void *user, const PqLlmResult *res);

// Sends (or resends) the article; a different seed per attempt, so a
// retried judge does not repeat its unparsable reply.
static void submit(Job *j) {
    pq_llm_submit(L.llm, j->job.messages, 1, j->job.seed + j->attempt, on_done, j);
}

static void on_done(void *user, const PqLlmResult *res) {
    Job *j = user;
    if (pq_llmtool_failed(&L, &j->job, j->job.key, res)) {
        pq_llmtool_put(&L, j->job.seq, NULL);
        job_free(j);
        return;
    }
    PqQuiz quiz;
    PqErr e;
    memset(&quiz, 0, sizeof quiz);
    if (res->n_texts < 1 || pq_quiz_parse_reply(res->texts[0], &quiz, &e) != 0) {
        if (res->n_texts < 1) snprintf(e.msg, sizeof e.msg, "no completion in the reply");
        pq_quiz_free(&quiz);
        if (++j->attempt < attempts && !pq_interrupted && !T.fatal) {
            submit(j);
            return;
        }
        pq_tool_reject(&T, &j->job.line, j->job.key, "no valid quiz after %d attempt%s: %s", j->attempt,
                       j->attempt == 1 ? "" : "s", e.msg);
        pq_llmtool_put(&L, j->job.seq, NULL);
        job_free(j);
        return;
    }
    // The shuffle is keyed by the article, not by its position in the input,
    // so reruns, resumes and fan-outs give every article the same quiz.
    pq_quiz_shuffle(&quiz, T.seed ^ pq_hash_str(j->job.key));
    pq_json_set(j->job.obj, "questions", pq_quiz_to_json(&quiz));
    pq_quiz_free(&quiz);
    pq_llmtool_emit(&L, &j->job);
    job_free(j);
}


int main(int argc, char **argv) {
    PqTool *t = &T;
    PqLlmConfig cfg;
    PqErr e;
    const char *prompt_file = NULL;
    char *prompt = NULL;
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
    while ((opt = getopt_long(argc, argv, "hj:o:t:m:", longopts, NULL)) != -1) {
        if (pq_llmtool_option(t, &cfg, opt, optarg)) continue;
        char *end;
        switch (opt) {
        case OPT_PROMPT_FILE: prompt_file = optarg; break;
        case OPT_ATTEMPTS:
            errno = 0;
            attempts = (int)strtol(optarg, &end, 10);
            if (errno || *end || attempts < 1 || attempts > 100)
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
    if (!cfg.model) pq_tool_usage_error(t, "--model NAME is required");
    pq_llm_config_resolve(&cfg);
    int jobs = cfg.jobs;
    pq_tool_open(t, argc, argv, optind);
    pq_llmtool_open(&L, t, &cfg, 4L * jobs + 64);

    const char *keys[] = {"article"};
    PqBuf key = {0};
    while (pq_llmtool_next(&L)) {
        cJSON *obj = pq_tool_parse(t);
        if (!obj) continue;
        const char *id = pq_llmtool_id(&L, obj);
        const char *article = id ? pq_llmtool_str(&L, obj, "article", id) : NULL;
        if (!article) {
            cJSON_Delete(obj);
            continue;
        }
        pq_record_key(obj, &key);
        if (pq_tool_is_done(t, key.data)) {
            t->n_skipped++;
            cJSON_Delete(obj);
            continue;
        }
        const char *values[] = {article};
        char *text = pq_prompt_fill(prompt ? prompt : pq_prompt_questions, 1, keys, values);
        Job *j = pq_xcalloc(1, sizeof *j);
        pq_llmtool_job_init(&L, &j->job, obj, key.data, text);
        free(text);
        if (pq_llmtool_reserve(&L, &j->job, 1) < 0) {
            job_free(j);
            break;
        }
        submit(j);
        pq_llmtool_run(&L);
    }
    pq_buf_free(&key);
    free(prompt);
    return pq_llmtool_finish(&L);
}
