// llmtool.c: the per-line bookkeeping of the LLM tools: jobs, output order,
// the read-submit loop's waits and the end of a run (see llmtool.h).
#include <stdio.h>
#include <stdlib.h>

#include "llmtool.h"

int pq_llmtool_option(PqTool *t, PqLlmConfig *cfg, int opt, const char *arg) {
    PqErr e;
    int r = pq_llm_option(cfg, opt, arg, &e);
    if (r < 0) pq_tool_usage_error(t, "%s", e.msg);
    return r > 0 || pq_tool_option(t, opt, arg);
}

void pq_llmtool_open(PqLlmTool *lt, PqTool *t, PqLlmConfig *cfg, long cap) {
    PqErr e;
    lt->tool = t;
    lt->unordered = cfg->unordered;
    lt->seq = 0;
    if (!(lt->llm = pq_llm_new(cfg, &e))) pq_tool_die(t, "%s", e.msg); // (-j resolved)
    lt->limit = 2 * (cfg->jobs > 0 ? cfg->jobs : 1);
    pq_reorder_init(&lt->reorder, cap);
}

int pq_llmtool_next(PqLlmTool *lt) {
    return !lt->tool->fatal && pq_llm_next_line(lt->llm, lt->tool);
}

const char *pq_llmtool_id(PqLlmTool *lt, const cJSON *obj) {
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(obj, "id");
    if (cJSON_IsString(id) || cJSON_IsNumber(id) || cJSON_IsRaw(id)) return pq_json_id(obj);
    pq_tool_reject(lt->tool, &lt->tool->line, NULL, "no \"id\" field");
    return NULL;
}

const char *pq_llmtool_str(PqLlmTool *lt, const cJSON *obj, const char *field, const char *id) {
    const char *s = pq_json_str(obj, field);
    if (!s) pq_tool_reject(lt->tool, &lt->tool->line, id, "no \"%s\" string", field);
    return s;
}

int64_t pq_llmtool_seed(const PqTool *t, const char *key) {
    return (int64_t)((pq_hash_str(key) ^ (t->seed * 0x9E3779B97F4A7C15ull)) & 0x3fffffff);
}

void pq_llmtool_job_init(PqLlmTool *lt, PqLlmJob *j, cJSON *obj, const char *key, const char *content) {
    const PqTool *t = lt->tool;
    j->line = t->line;
    j->line.text = pq_xstrndup(t->line.text, t->line.len);
    j->obj = obj;
    j->key = pq_xstrdup(key);
    j->seed = pq_llmtool_seed(t, key);
    j->messages = cJSON_CreateArray();
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "role", "user");
    cJSON_AddStringToObject(m, "content", content);
    cJSON_AddItemToArray(j->messages, m);
}

void pq_llmtool_job_free(PqLlmJob *j) {
    free(j->line.text);
    cJSON_Delete(j->obj);
    cJSON_Delete(j->messages);
    free(j->key);
}

int pq_llmtool_reserve(PqLlmTool *lt, PqLlmJob *j, int n) {
    PqLlm *l = lt->llm;
    // Never more finished lines held back than the reorder buffer takes.
    while (!lt->unordered && lt->seq + n > lt->reorder.next + lt->reorder.cap && pq_llm_pending(l) > 0 &&
           !pq_interrupted)
        pq_llm_run(l, pq_llm_pending(l));
    if (pq_interrupted || lt->tool->fatal) return -1;
    j->seq = lt->seq;
    j->n = n;
    lt->seq += n;
    return 0;
}

void pq_llmtool_run(PqLlmTool *lt) {
    pq_llm_run(lt->llm, lt->limit);
}

void pq_llmtool_put(PqLlmTool *lt, long seq, char *text) {
    if (lt->unordered) {
        if (text) pq_tool_emit_text(lt->tool, text);
        free(text);
    } else {
        pq_reorder_put(&lt->reorder, lt->tool, seq, text);
    }
}

void pq_llmtool_emit(PqLlmTool *lt, PqLlmJob *j) {
    PqTool *t = lt->tool;
    char *text = cJSON_PrintUnformatted(j->obj);
    if (!text) pq_tool_die(t, "out of memory printing JSON");
    t->n_done++;
    pq_llmtool_put(lt, j->seq, text);
    pq_llm_account(lt->llm, t);
    pq_tool_progress(t, 0);
}

void pq_llmtool_fatal(PqLlmTool *lt, const char *error) {
    PqTool *t = lt->tool;
    if (!t->fatal) {
        PqBuf m = {0};
        pq_sanitize(&m, error); // the server's words: no escape sequences to the terminal
        fprintf(stderr, "%s: fatal: %s; stopping (finished lines are kept)\n", t->name, m.data);
        pq_buf_free(&m);
    }
    t->fatal = 1;
}

int pq_llmtool_failed(PqLlmTool *lt, const PqLlmJob *j, const char *id, const PqLlmResult *res) {
    if (res->cancelled) return 1; // never finished (Ctrl-C, a fatal error): a rerun does it
    if (res->ok) return 0;
    if (res->fatal) pq_llmtool_fatal(lt, res->error);
    else pq_tool_reject(lt->tool, &j->line, id, "%s", res->error);
    return 1;
}

int pq_llmtool_finish(PqLlmTool *lt) {
    PqTool *t = lt->tool;
    while (pq_llm_pending(lt->llm) > 0 && !pq_interrupted) {
        pq_llm_run(lt->llm, pq_llm_pending(lt->llm));
        pq_llm_account(lt->llm, t);
        pq_tool_progress(t, 0);
    }
    pq_llm_account(lt->llm, t);
    // Requests that never finished come back cancelled and leave their
    // slots empty, so what finished behind them goes out, still in order.
    pq_llm_free(lt->llm);
    pq_reorder_flush(&lt->reorder, t);
    pq_reorder_free(&lt->reorder);
    return pq_tool_finish(t);
}
