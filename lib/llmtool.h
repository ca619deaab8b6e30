// llmtool.h: the per-line bookkeeping the LLM tools (pq-questions, pq-quiz,
// pq-summarize) share: an input line becomes a job with its requests, and
// its output lines go out in input order (or as they finish, --unordered).
//
// A tool's main() is: getopt_long with pq_llmtool_option, pq_tool_open,
// pq_llmtool_open, a loop over pq_llmtool_next that parses, checks, fills a
// job (pq_llmtool_job_init), reserves its output lines (pq_llmtool_reserve),
// submits and calls pq_llmtool_run; then pq_llmtool_finish. Its PqLlmDone
// callback writes the job's lines with pq_llmtool_put (or pq_llmtool_emit)
// and frees the job.
#ifndef PQ_LLMTOOL_H
#define PQ_LLMTOOL_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "llm.h"
#include "tool.h"

// One tool run: the client and the reorder buffer of its output.
typedef struct PqLlmTool {
    PqTool *tool;
    PqLlm *llm;
    PqReorder reorder;
    int unordered; // --unordered: write lines as they finish
    int limit;     // requests queued or in flight before reading goes on (2 * jobs)
    long seq;      // the next output slot
} PqLlmTool;

// One input line in flight: what is needed to send it, write it or reject
// it. Tools hold it in their own job struct.
typedef struct PqLlmJob {
    PqLine line;     // a saved copy of the input line, for rejects
    cJSON *obj;      // the parsed record
    cJSON *messages; // the request: one user message
    char *key;       // the resume key
    int64_t seed;    // the request seed, from --seed and the key
    long seq;        // output slots seq .. seq+n-1
    int n;
} PqLlmJob;

// Handles an option of the client (PQ_LLM_LONGOPTS, -j, -o, -t) or a
// common one (pq_tool_option): 1 handled, 0 the tool's own. A bad value is a
// usage error (exit 2).
int pq_llmtool_option(PqTool *t, PqLlmConfig *cfg, int opt, const char *arg);
// After pq_tool_open: starts the client (exits 3 when it cannot) and a
// reorder buffer of cap lines, which bounds what finished lines wait on a
// slow one before reading pauses.
void pq_llmtool_open(PqLlmTool *lt, PqTool *t, PqLlmConfig *cfg, long cap);
// The next input line (pq_llm_next_line): 0 at the end, after Ctrl-C or a
// fatal client error.
int pq_llmtool_next(PqLlmTool *lt);
// The record's id for messages, or NULL after rejecting the line for
// having no "id" string or number.
const char *pq_llmtool_id(PqLlmTool *lt, const cJSON *obj);
// The string field `field` of the record, or NULL after rejecting the line
// ("no \"article\" string"); id as pq_llmtool_id gave it.
const char *pq_llmtool_str(PqLlmTool *lt, const cJSON *obj, const char *field, const char *id);
// The request seed of a record: its resume key hashed with --seed, so
// reruns and resumes ask the same.
int64_t pq_llmtool_seed(const PqTool *t, const char *key);
// Fills j from the current input line: a copy of it, obj (taken over), key
// (copied), its seed, and a request of one user message holding content.
void pq_llmtool_job_init(PqLlmTool *lt, PqLlmJob *j, cJSON *obj, const char *key, const char *content);
// Frees what pq_llmtool_job_init filled (not j itself).
void pq_llmtool_job_free(PqLlmJob *j);
// Gives j its n output slots, first waiting for the reorder buffer to have
// room for them. 0 go on and submit; -1 interrupted or a fatal error: free
// j and stop reading.
int pq_llmtool_reserve(PqLlmTool *lt, PqLlmJob *j, int n);
// After submitting: keeps `limit` requests queued or in flight.
void pq_llmtool_run(PqLlmTool *lt);
// Writes the line of slot seq: text (taken over), or NULL when there is
// nothing to write (rejected, abandoned), so the lines behind it go out.
void pq_llmtool_put(PqLlmTool *lt, long seq, char *text);
// A one-line job is done: writes j->obj to its slot and counts the line.
void pq_llmtool_emit(PqLlmTool *lt, PqLlmJob *j);
// A fatal client error (auth, configuration): says so once and stops the
// run; the line is neither written nor rejected, so --resume picks it up.
void pq_llmtool_fatal(PqLlmTool *lt, const char *error);
// For a one-request job's callback: 1 when res holds no reply (cancelled;
// fatal, see pq_llmtool_fatal; else the line rejected with the client's
// error, reported with id), 0 when it holds one.
int pq_llmtool_failed(PqLlmTool *lt, const PqLlmJob *j, const char *id, const PqLlmResult *res);
// Finishes the requests (unless interrupted), stops the client (the
// unfinished ones come back cancelled), writes every finished line still
// held, and returns pq_tool_finish's exit status.
int pq_llmtool_finish(PqLlmTool *lt);

#endif
