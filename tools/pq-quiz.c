// pq-quiz: the judge takes each article's quiz seeing only a summary
// (method.md §3); adds "judge_answers", "correct", "num_words", "bad_chars".
#include <stdlib.h>
#include <string.h>

#include "llmtool.h"
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
    "      --strict-format     read only \"Q<k>) X\" answer lines, as the method's own parser does\n"
    "                          (default: also \"Q3: b\", \"**Q3)** B\", \"Answer to Q3: B\", ...)\n"
    PQ_LLM_HELP;

enum { OPT_PROMPT_FILE = PQ_OPT_TOOL_BASE, OPT_STRICT };
static int strict_format;

// One summary in flight.
typedef struct Job {
    PqLlmJob job;
    int n; // questions
    char answer[PQ_QUIZ_QUESTIONS];
} Job;

static PqTool T;
static PqLlmTool L;

static void job_free(Job *j) {
    pq_llmtool_job_free(&j->job);
    free(j);
}

static void on_done(void *user, const PqLlmResult *res) {
    Job *j = user;
    int failed = pq_llmtool_failed(&L, &j->job, pq_json_id(j->job.obj), res);
    if (!failed && res->n_texts < 1) {
        pq_tool_reject(&T, &j->job.line, pq_json_id(j->job.obj), "no completion in the reply");
        failed = 1;
    }
    if (failed) {
        pq_llmtool_put(&L, j->job.seq, NULL);
        job_free(j);
        return;
    }
    // A missing or unparsable answer counts as "Unsure": never retried, as
    // the judge not knowing is itself the measurement.
    char got[PQ_QUIZ_QUESTIONS];
    if (strict_format) pq_answers_parse_strict(res->texts[0], j->n, got);
    else pq_answers_parse(res->texts[0], j->n, got);
    cJSON *answers = cJSON_CreateArray();
    int correct = 0;
    for (int k = 0; k < j->n; k++) {
        char letter[2] = {got[k], 0};
        int known = got[k] >= 'A' && got[k] <= 'E';
        cJSON_AddItemToArray(answers, cJSON_CreateString(known ? letter : "Unsure"));
        correct += known && got[k] == j->answer[k];
    }
    cJSON *obj = j->job.obj;
    const char *summary = pq_json_str(obj, "summary");
    pq_json_set(obj, "judge_answers", answers);
    pq_json_set(obj, "correct", cJSON_CreateNumber(correct));
    pq_json_set(obj, "num_words", cJSON_CreateNumber(pq_count_words(summary)));
    pq_json_set(obj, "bad_chars", cJSON_CreateNumber(pq_count_bad_chars(summary)));
    pq_llmtool_emit(&L, &j->job);
    job_free(j);
}


int main(int argc, char **argv) {
    PqTool *t = &T;
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
        {"strict-format", no_argument, 0, OPT_STRICT},
        {0, 0, 0, 0},
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "hj:o:t:m:", longopts, NULL)) != -1) {
        if (pq_llmtool_option(t, &cfg, opt, optarg)) continue;
        switch (opt) {
        case OPT_PROMPT_FILE: prompt_file = optarg; break;
        case OPT_STRICT: strict_format = 1; break;
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
    if (!cfg.model) pq_tool_usage_error(t, "--model NAME is required");
    pq_llm_config_resolve(&cfg);
    int jobs = cfg.jobs;
    pq_tool_open(t, argc, argv, optind);
    pq_llmtool_open(&L, t, &cfg, 4L * jobs + 64);

    const char *keys[] = {"summary", "questions"};
    PqBuf key = {0};
    while (pq_llmtool_next(&L)) {
        cJSON *obj = pq_tool_parse(t);
        if (!obj) continue;
        pq_record_key(obj, &key);
        const char *id = pq_llmtool_id(&L, obj);
        const char *summary = id ? pq_llmtool_str(&L, obj, "summary", id) : NULL;
        if (!summary) {
            cJSON_Delete(obj);
            continue;
        }
        const cJSON *questions = cJSON_GetObjectItemCaseSensitive(obj, "questions");
        PqQuiz quiz;
        memset(&quiz, 0, sizeof quiz);
        if (!questions) {
            pq_tool_reject(t, &t->line, id, "no \"questions\" field");
        } else if (pq_quiz_from_json(questions, &quiz, &e) != 0) {
            pq_tool_reject(t, &t->line, id, "bad \"questions\": %s", e.msg);
        } else if (pq_tool_is_done(t, key.data)) {
            t->n_skipped++;
        } else {
            char *rendered = pq_quiz_render(&quiz);
            const char *values[] = {summary, rendered};
            char *text = pq_prompt_fill(prompt ? prompt : pq_prompt_quiz, 2, keys, values);
            Job *j = pq_xcalloc(1, sizeof *j);
            pq_llmtool_job_init(&L, &j->job, obj, key.data, text);
            j->n = quiz.n;
            for (int k = 0; k < quiz.n; k++) j->answer[k] = quiz.q[k].answer;
            free(text);
            free(rendered);
            pq_quiz_free(&quiz);
            if (pq_llmtool_reserve(&L, &j->job, 1) < 0) {
                job_free(j);
                break;
            }
            pq_llm_submit(L.llm, j->job.messages, 1, j->job.seed, on_done, j);
            pq_llmtool_run(&L);
            continue;
        }
        pq_quiz_free(&quiz);
        cJSON_Delete(obj);
    }
    pq_buf_free(&key);
    free(prompt);
    return pq_llmtool_finish(&L);
}
