// tool.h: the behaviour every pq tool shares: reading JSONL inputs with line
// numbers, rejects, resume, progress, the summary line and the exit status.
//
// A tool's main() is: pq_tool_init, getopt_long with PQ_TOOL_LONGOPTS and
// pq_tool_option, pq_tool_open, a loop over pq_tool_next, pq_tool_finish.
#ifndef PQ_TOOL_H
#define PQ_TOOL_H

#include <cjson/cJSON.h>
#include <getopt.h>
#include <signal.h>
#include <stdint.h>

#include "util.h"

enum {
    PQ_EXIT_OK = 0,
    PQ_EXIT_REJECTS = 1,
    PQ_EXIT_USAGE = 2,
    PQ_EXIT_FATAL = 3,
    PQ_EXIT_INTERRUPTED = 130,
    PQ_EXIT_PIPE = 141 // 128 + SIGPIPE: stdout's reader went away (| head)
};

// getopt_long codes of the common options (above any short-option char).
enum {
    PQ_OPT_REJECTS = 1000,
    PQ_OPT_RESUME,
    PQ_OPT_PROGRESS,
    PQ_OPT_NO_PROGRESS,
    PQ_OPT_VERSION,
    PQ_OPT_SEED,
    PQ_OPT_OUTPUT,
    PQ_OPT_TOOL_BASE = 1100 // tools number their own long options from here
};

#define PQ_TOOL_LONGOPTS                                            \
    {"rejects", required_argument, 0, PQ_OPT_REJECTS},              \
    {"resume", required_argument, 0, PQ_OPT_RESUME},                \
    {"output", required_argument, 0, PQ_OPT_OUTPUT},                \
    {"progress", no_argument, 0, PQ_OPT_PROGRESS},                  \
    {"no-progress", no_argument, 0, PQ_OPT_NO_PROGRESS},            \
    {"seed", required_argument, 0, PQ_OPT_SEED},                    \
    {"help", no_argument, 0, 'h'},                                  \
    {"version", no_argument, 0, PQ_OPT_VERSION}

// Text for the common options; pq_tool_option's -h prints it after the
// tool's own usage (so a usage text does not end with it).
#define PQ_TOOL_COMMON_HELP                                                              \
    "Common options:\n"                                                                  \
    "      --output FILE   write output to FILE instead of stdout\n"                     \
    "      --resume FILE   skip inputs whose output is already in FILE; append to FILE\n" \
    "      --rejects FILE  write every rejected input line, whole, to FILE\n"            \
    "      --seed N        seed of every random choice (default 0)\n"                    \
    "      --progress      progress on stderr even when it is not a terminal\n"          \
    "  -h, --help          this help;  --version  the version\n"                         \
    "Exit status: 0 all lines done, 1 some rejected, 2 usage, 3 fatal, 130 interrupted.\n"

typedef struct PqLine {
    char *text;       // the line, without its newline, NUL-terminated
    size_t len;
    long lineno;      // 1-based, per input file
    const char *file; // "-" for stdin
} PqLine;

typedef struct PqKeySet PqKeySet;
typedef struct PqOldRejects PqOldRejects;
#define PQ_REJECT_SHOW 5

typedef struct PqTool {
    const char *name;  // "pq-quiz"
    const char *usage; // full --help text
    // options
    const char *rejects_path, *resume_path, *output_path;
    int progress; // -1 auto (stderr is a terminal), 0 off, 1 on
    uint64_t seed;
    // inputs
    char **inputs;
    int n_inputs, cur_input;
    int in_fd;        // the current input, -1 before the first and between files
    PqBuf inbuf;      // bytes read from in_fd; lines are cut from in_pos on
    size_t in_pos;
    PqLine line;
    long total_lines; // known when every input is a regular file and progress is on, else -1
    // outputs
    int out_fd;
    FILE *rejects;
    PqOldRejects *old_rejects; // --resume: the last run's rejects, until this run reaches them
    int out_closed;            // stdout's reader went away: nothing more is written
    int output_append;         // open --output for appending, not anew (pq-dpo --resume DIR)
    PqKeySet *done; // keys found in the --resume file
    PqBuf outbuf;
    // counters
    long n_read, n_done, n_rejected, n_skipped, n_out;
    long n_requests, n_retries;
    long long tokens_prompt, tokens_completion;
    double t0, t_last_progress;
    // A tool that counts its own steps (pq-dpo): progress shows step n of
    // steps_total and its ETA from the steps done since steps_first, with
    // progress_extra (", loss 0.6931") after it.
    int by_steps;
    long steps, steps_total, steps_first; // steps_total 0: not known
    char progress_extra[96];
    // Reject messages: each distinct reason is shown PQ_REJECT_SHOW times,
    // then counted; the counts are said at the end.
    struct PqReason *reasons;
    int n_reasons;
    int fatal;
    char summary_extra[256]; // tool-specific text appended to the summary line
    char summary_llm[320];   // what the LLM client adds after it (a local model: its engine's figures)
} PqTool;

extern volatile sig_atomic_t pq_interrupted;

void pq_tool_init(PqTool *t, const char *name, const char *usage);
// Handles a common option: 1 handled, 0 not a common option. Exits on
// --help (0), --version (0) or a bad value (2).
int pq_tool_option(PqTool *t, int opt, const char *arg);
// After printing --help or --version to stdout: exit 0 when stdout took it
// all, quietly on a closed pipe, 3 on any other write error.
__attribute__((noreturn)) void pq_tool_exit_flushed(PqTool *t);
// Prints "pq-x: msg" and the usage hint, exits 2.
void pq_tool_usage_error(PqTool *t, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
// Prints "pq-x: msg", exits 3 (I/O, auth and other fatal errors).
void pq_tool_die(PqTool *t, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
// Takes the input files (argv[optind..]; none = stdin), opens --output,
// --rejects, loads --resume, installs the SIGINT/SIGTERM handler.
void pq_tool_open(PqTool *t, int argc, char **argv, int optind);
// Next input line: 1 got one (t->line), 0 end of input or interrupted.
// Blank lines are skipped. I/O errors are fatal.
int pq_tool_next(PqTool *t);
// Like pq_tool_next without blocking: 1 got one, 0 end of input or
// interrupted, -1 no whole line can be read now (wait on pq_tool_wait_fd).
int pq_tool_try_next(PqTool *t);
// The descriptor to wait on for more input, -1 when none.
int pq_tool_wait_fd(const PqTool *t);
// Parses t->line as a JSON object; on failure rejects it ("not JSON at
// 1:17") and returns NULL.
cJSON *pq_tool_parse(PqTool *t);
// Reports a line as rejected: "pq-x: line 12 (id 4feb82c6): reason" on
// stderr (control bytes of the id and reason escaped, \x1b), the whole line
// to --rejects byte for byte, counted. line may be a saved copy. A write
// error on --rejects is fatal.
void pq_tool_reject(PqTool *t, const PqLine *line, const char *id, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void pq_tool_reject_text(PqTool *t, const char *file, long lineno, const char *text, size_t len, const char *id,
                         const char *reason);
// Appends s to b with control bytes (C0, DEL, C1) escaped, for a terminal.
void pq_sanitize(PqBuf *b, const char *s);
// Writes one output record as one line, flushed whole.
void pq_tool_emit(PqTool *t, const cJSON *obj);
void pq_tool_emit_text(PqTool *t, const char *json_line); // without newline
// Resume: is the record with this key already in the --resume file?
int pq_tool_is_done(PqTool *t, const char *key);
// The resume key of a record: its "id", then "sample" and "pair" when present.
void pq_record_key(const cJSON *obj, PqBuf *key);
// Progress line on stderr (rate-limited; call as often as you like).
void pq_tool_progress(PqTool *t, int force);
// Prints the summary line, closes everything, returns the exit status.
int pq_tool_finish(PqTool *t);

// JSON helpers.
const char *pq_json_str(const cJSON *obj, const char *key); // NULL unless a string
int pq_json_num(const cJSON *obj, const char *key, double *out); // 1 if a finite number
// Adds a float printed with %.9g (exact for float32), never NaN/inf (null then).
void pq_json_add_float(cJSON *obj, const char *key, double v);
// Replaces (or adds) a field, so re-running a tool over its own output is idempotent.
void pq_json_set(cJSON *obj, const char *key, cJSON *item);
// The id of a record for messages (a number as written), "?" if absent.
const char *pq_json_id(const cJSON *obj);
const char *pq_json_id_text(const cJSON *obj); // the same, NULL when there is none
// A numeric "id" of obj, parsed from text, becomes a raw item holding its
// text as written, so that ids pass through byte-exact (2^53 + 1 stays
// 9007199254740993, 1.50 stays 1.50) and resume keys match whatever the
// digits. pq_tool_parse and the --resume reader call it.
void pq_json_keep_id_text(cJSON *obj, const char *text, size_t len);

// Reorder buffer: results that finish out of order are emitted in input
// order. Slot seq gets a JSON line (emitted) or NULL (nothing to emit).
typedef struct PqReorder {
    long next;   // next sequence number to emit
    long cap;    // ring size (bound on results held)
    char **text;
    unsigned char *ready;
} PqReorder;
void pq_reorder_init(PqReorder *r, long cap);
// Stores result seq (text is taken over; may be NULL) and emits every ready
// result from next on. seq must be < next + cap.
void pq_reorder_put(PqReorder *r, PqTool *t, long seq, char *text);
// After Ctrl-C or a fatal error: writes every finished result still held,
// in sequence order, even where an earlier one never will be (finished work
// is never lost), and empties the buffer.
void pq_reorder_flush(PqReorder *r, PqTool *t);
void pq_reorder_free(PqReorder *r);

#endif
