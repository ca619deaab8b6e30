// jinja.h: a Jinja interpreter for chat templates, with transformers'
// environment (jinja2's sandbox, trim_blocks, lstrip_blocks, loopcontrols,
// its tojson, raise_exception, strftime_now). A template is untrusted input:
// recursion, loop iterations, output and memory are bounded, and anything
// the interpreter lacks is an error naming its line:column.
#ifndef PQ_JINJA_H
#define PQ_JINJA_H

#include <cjson/cJSON.h>
#include <time.h>

#include "util.h"

typedef struct PqJinja PqJinja;

typedef struct PqJinjaLimits {
    int max_depth;         // macro calls and nested loops, and expression nesting
    long max_iterations;   // loop iterations in one render, all loops together
    size_t max_output;     // bytes of output
    size_t max_memory;     // bytes of values built while rendering
} PqJinjaLimits;

// The limits when a render is given none: depth 64, 1,000,000 iterations,
// 16 MiB of output, 256 MiB of memory.
extern const PqJinjaLimits pq_jinja_default_limits;

// Parses a template (NUL-terminated); NULL and "line L:C: ..." on a syntax
// error or a construct the interpreter lacks.
PqJinja *pq_jinja_parse(const char *src, PqErr *e);
void pq_jinja_free(PqJinja *t);

// Renders with vars, a JSON object whose members become the template's
// variables (messages, add_generation_prompt, bos_token, ...). now is the
// time strftime_now formats (NULL: the current local time, as Python's
// datetime.now()). limits may be NULL. Returns the
// text (malloc'd) or NULL and a message: raise_exception's own message, or
// "line L:C: ..." for an error of the template.
char *pq_jinja_render(const PqJinja *t, const cJSON *vars, const struct tm *now, const PqJinjaLimits *limits, PqErr *e);

#endif
