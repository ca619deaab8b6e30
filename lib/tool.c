// tool.c: the behaviour every pq tool shares (see tool.h).
#include "tool.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

volatile sig_atomic_t pq_interrupted = 0;

// ---- a set of strings (resume keys): open addressing, linear probing ----

struct PqKeySet {
    char **slot;
    size_t cap, n;
};

static PqKeySet *keyset_new(void) {
    PqKeySet *s = pq_xcalloc(1, sizeof *s);
    s->cap = 1024;
    s->slot = pq_xcalloc(s->cap, sizeof *s->slot);
    return s;
}

static void keyset_free(PqKeySet *s) {
    if (!s) return;
    for (size_t i = 0; i < s->cap; i++) free(s->slot[i]);
    free(s->slot);
    free(s);
}

static int keyset_has(const PqKeySet *s, const char *k) {
    size_t i = pq_hash_str(k) & (s->cap - 1);
    for (; s->slot[i]; i = (i + 1) & (s->cap - 1))
        if (strcmp(s->slot[i], k) == 0) return 1;
    return 0;
}

static void keyset_add(PqKeySet *s, const char *k) {
    if (keyset_has(s, k)) return;
    if (2 * (s->n + 1) > s->cap) {
        PqKeySet big = {pq_xcalloc(s->cap * 2, sizeof(char *)), s->cap * 2, 0};
        for (size_t i = 0; i < s->cap; i++) {
            if (!s->slot[i]) continue;
            size_t j = pq_hash_str(s->slot[i]) & (big.cap - 1);
            while (big.slot[j]) j = (j + 1) & (big.cap - 1);
            big.slot[j] = s->slot[i];
        }
        free(s->slot);
        s->slot = big.slot;
        s->cap = big.cap;
    }
    size_t i = pq_hash_str(k) & (s->cap - 1);
    while (s->slot[i]) i = (i + 1) & (s->cap - 1);
    s->slot[i] = pq_xstrdup(k);
    s->n++;
}

// ---- options, errors ----

static void on_signal(int sig) {
    (void)sig;
    if (pq_interrupted) _exit(PQ_EXIT_INTERRUPTED); // second Ctrl-C: leave now
    pq_interrupted = 1;
}

void pq_tool_init(PqTool *t, const char *name, const char *usage) {
    memset(t, 0, sizeof *t);
    t->name = name;
    t->usage = usage;
    t->progress = -1;
    t->out_fd = STDOUT_FILENO;
    t->total_lines = -1;
    t->in_fd = -1;
    t->t0 = pq_now();
}

void pq_tool_usage_error(PqTool *t, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "%s: ", t->name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry '%s --help'.\n", t->name);
    exit(PQ_EXIT_USAGE);
}

void pq_tool_die(PqTool *t, const char *fmt, ...) {
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    PqBuf m = {0};
    pq_sanitize(&m, msg); // it may quote an id, a file name or a server's words
    fprintf(stderr, "%s: %s\n", t->name, m.data);
    pq_buf_free(&m);
    exit(PQ_EXIT_FATAL);
}

// After --help or --version: exit 0 when stdout took it all; a closed pipe
// ends quietly (the conventional 128 + SIGPIPE), any other write error is
// an error (exit 3).
void pq_tool_exit_flushed(PqTool *t) {
    errno = 0;
    if (fflush(stdout) == 0 && !ferror(stdout)) exit(0);
    if (errno == EPIPE) exit(PQ_EXIT_PIPE);
    fprintf(stderr, "%s: write error: %s\n", t->name, errno ? strerror(errno) : "unknown");
    exit(PQ_EXIT_FATAL);
}

int pq_tool_option(PqTool *t, int opt, const char *arg) {
    char *end;
    switch (opt) {
    case 'h':
        fputs(t->usage, stdout);
        fputs(PQ_TOOL_COMMON_HELP, stdout);
        pq_tool_exit_flushed(t);
    case PQ_OPT_VERSION:
        printf("%s %s\n", t->name, PQ_VERSION);
        pq_tool_exit_flushed(t);
    case PQ_OPT_REJECTS: t->rejects_path = arg; return 1;
    case PQ_OPT_RESUME: t->resume_path = arg; return 1;
    case PQ_OPT_OUTPUT: t->output_path = arg; return 1;
    case PQ_OPT_PROGRESS: t->progress = 1; return 1;
    case PQ_OPT_NO_PROGRESS: t->progress = 0; return 1;
    case PQ_OPT_SEED:
        errno = 0;
        t->seed = strtoull(arg, &end, 10);
        if (errno || *end || !*arg) pq_tool_usage_error(t, "--seed: not a number: '%s'", arg);
        return 1;
    case '?': pq_tool_usage_error(t, "bad option");
    default: return 0;
    }
}

// ---- resume ----

void pq_record_key(const cJSON *obj, PqBuf *key) {
    pq_buf_clear(key);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(obj, "id");
    if (cJSON_IsString(id) || cJSON_IsRaw(id)) pq_buf_puts(key, id->valuestring); // raw: a number as written
    else if (cJSON_IsNumber(id)) pq_buf_printf(key, "%.17g", id->valuedouble);
    static const char *const extra[] = {"sample", "pair"};
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, extra[i]);
        if (cJSON_IsNumber(v)) pq_buf_printf(key, "\x1f%s=%.17g", extra[i], v->valuedouble);
    }
}

// Reads the keys already in the resume file; drops a partial last line left
// by a crash, so that appending starts on a clean line.
static void load_resume(PqTool *t) {
    t->done = keyset_new();
    PqErr e;
    size_t n;
    char *data = pq_read_file(t->resume_path, &n, &e);
    if (!data) {
        if (errno == ENOENT) return; // first run: nothing done yet
        pq_tool_die(t, "--resume %s", e.msg);
    }
    size_t good = 0;
    PqBuf key = {0};
    long lineno = 0;
    for (size_t i = 0; i < n;) {
        char *nl = memchr(data + i, '\n', n - i);
        if (!nl) break; // partial line: not finished work
        *nl = 0;
        lineno++;
        cJSON *obj = cJSON_ParseWithLength(data + i, (size_t)(nl - (data + i)));
        if (obj) {
            pq_json_keep_id_text(obj, data + i, (size_t)(nl - (data + i)));
            pq_record_key(obj, &key);
            keyset_add(t->done, key.data);
            cJSON_Delete(obj);
        } else if (nl > data + i) {
            fprintf(stderr, "%s: %s line %ld: not JSON, ignored for resume\n", t->name, t->resume_path, lineno);
        }
        i = (size_t)(nl - data) + 1;
        good = i;
    }
    if (good < n) {
        fprintf(stderr, "%s: %s: dropping a partial last line (%zu bytes) left by an interrupted run\n", t->name,
                t->resume_path, n - good);
        if (truncate(t->resume_path, (off_t)good) != 0)
            pq_tool_die(t, "--resume %s: %s", t->resume_path, strerror(errno));
    }
    pq_buf_free(&key);
    free(data);
}

// ---- the rejects file of the run being resumed ----

struct PqOldRejects {
    char *data;    // the old file
    size_t *start, *len;
    unsigned char *seen; // read again by this run: its fate is this run's
    long n;
    long *slot; // open addressing over the line bytes: index + 1, 0 empty
    size_t cap;
};

static void load_old_rejects(PqTool *t) {
    PqErr e;
    size_t n;
    struct stat st;
    if (stat(t->rejects_path, &st) != 0 || !S_ISREG(st.st_mode)) return; // new, or /dev/stderr, a pipe: nothing to keep
    char *data = pq_read_file(t->rejects_path, &n, &e);
    if (!data) {
        if (errno == ENOENT) return;
        pq_tool_die(t, "--rejects %s", e.msg);
    }
    PqOldRejects *o = pq_xcalloc(1, sizeof *o);
    o->data = data;
    long cap_lines = 0;
    for (size_t i = 0; i < n;) {
        char *nl = memchr(data + i, '\n', n - i);
        size_t end = nl ? (size_t)(nl - data) : n;
        if (o->n == cap_lines) {
            cap_lines = cap_lines ? 2 * cap_lines : 64;
            o->start = pq_xrealloc(o->start, (size_t)cap_lines * sizeof *o->start);
            o->len = pq_xrealloc(o->len, (size_t)cap_lines * sizeof *o->len);
        }
        o->start[o->n] = i;
        o->len[o->n++] = end - i;
        i = end + 1;
    }
    o->seen = pq_xcalloc((size_t)(o->n ? o->n : 1), 1);
    o->cap = 16;
    while (o->cap < 2 * (size_t)o->n) o->cap *= 2;
    o->slot = pq_xcalloc(o->cap, sizeof *o->slot);
    for (long k = 0; k < o->n; k++) {
        size_t h = pq_hash_bytes(data + o->start[k], o->len[k]) & (o->cap - 1);
        while (o->slot[h]) h = (h + 1) & (o->cap - 1);
        o->slot[h] = k + 1;
    }
    t->old_rejects = o;
}

// The input line just read: an old reject of the same bytes is this run's now.
static void old_rejects_seen(PqTool *t, const char *s, size_t len) {
    PqOldRejects *o = t->old_rejects;
    if (!o || !o->n) return;
    for (size_t h = pq_hash_bytes(s, len) & (o->cap - 1); o->slot[h]; h = (h + 1) & (o->cap - 1)) {
        long k = o->slot[h] - 1;
        if (o->len[k] == len && memcmp(o->data + o->start[k], s, len) == 0) o->seen[k] = 1;
    }
}

static void finish_old_rejects(PqTool *t) {
    PqOldRejects *o = t->old_rejects;
    if (!o) return;
    t->old_rejects = NULL;
    for (long k = 0; k < o->n && t->rejects; k++) {
        if (o->seen[k]) continue;
        errno = 0;
        if (fwrite(o->data + o->start[k], 1, o->len[k], t->rejects) != o->len[k] || fputc('\n', t->rejects) == EOF ||
            fflush(t->rejects) != 0)
            pq_tool_die(t, "--rejects %s: write error: %s", t->rejects_path, errno ? strerror(errno) : "unknown");
    }
    free(o->data);
    free(o->start);
    free(o->len);
    free(o->seen);
    free(o->slot);
    free(o);
}

int pq_tool_is_done(PqTool *t, const char *key) { return t->done && keyset_has(t->done, key); }

// ---- inputs ----

static long count_lines(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    long n = 0;
    char buf[1 << 16];
    size_t k;
    int last = '\n';
    while ((k = fread(buf, 1, sizeof buf, f)) > 0) {
        for (size_t i = 0; i < k; i++) n += buf[i] == '\n';
        last = buf[k - 1];
    }
    fclose(f);
    return n + (last != '\n');
}

// An input that is also a file the run writes would be emptied (--output,
// --rejects) or read back as it grows (--resume) before it is read:
// refused, by device and inode (names differ: ./in.jsonl, links), before
// anything is opened for writing. A missing input is fatal here, before any
// work, not when the run reaches it.
static void check_files(PqTool *t) {
    struct stat *in = pq_xmalloc((size_t)t->n_inputs * sizeof *in);
    int n = 0;
    for (int i = 0; i < t->n_inputs; i++) {
        struct stat st;
        const char *path = t->inputs[i];
        if (strcmp(path, "-") == 0) {
            if (fstat(STDIN_FILENO, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        } else {
            if (stat(path, &st) != 0 || access(path, R_OK) != 0) pq_tool_die(t, "%s: %s", path, strerror(errno));
            if (!S_ISREG(st.st_mode)) continue;
        }
        in[n++] = st;
    }
    const char *what[3] = {"--output", "--resume", "--rejects"};
    const char *path[3] = {t->output_path, t->resume_path, t->rejects_path};
    struct stat out[3];
    int have[3] = {0, 0, 0};
    for (int k = 0; k < 3; k++) {
        if (!path[k] || strcmp(path[k], "-") == 0 || stat(path[k], &out[k]) != 0) continue;
        have[k] = 1;
        for (int i = 0; i < n; i++)
            if (out[k].st_dev == in[i].st_dev && out[k].st_ino == in[i].st_ino)
                pq_tool_usage_error(t, "%s %s is also an input: it would be %s before it is read", what[k], path[k],
                                    k == 1 ? "appended to while it is read" : "emptied");
    }
    for (int k = 0; k < 2; k++)
        if (have[k] && have[2] && out[k].st_dev == out[2].st_dev && out[k].st_ino == out[2].st_ino &&
            S_ISREG(out[2].st_mode))
            pq_tool_usage_error(t, "--rejects %s is also the %s file", path[2], what[k]);
    free(in);
}

void pq_tool_open(PqTool *t, int argc, char **argv, int optind) {
    static char *stdin_name[] = {"-"};
    if (optind < argc) {
        t->inputs = argv + optind;
        t->n_inputs = argc - optind;
    } else {
        t->inputs = stdin_name;
        t->n_inputs = 1;
    }
    check_files(t);
    if (t->progress < 0) t->progress = isatty(STDERR_FILENO);
    if (t->progress) {
        long total = 0;
        for (int i = 0; i < t->n_inputs && total >= 0; i++) {
            struct stat st;
            if (strcmp(t->inputs[i], "-") == 0 || stat(t->inputs[i], &st) != 0 || !S_ISREG(st.st_mode)) total = -1;
            else {
                long c = count_lines(t->inputs[i]);
                total = c < 0 ? -1 : total + c;
            }
        }
        t->total_lines = total;
    }
    if (t->resume_path) {
        load_resume(t);
        if (t->output_path && strcmp(t->output_path, t->resume_path) != 0)
            pq_tool_usage_error(t, "--resume appends to its file; do not also give a different --output");
        t->output_path = t->resume_path;
    }
    if (t->output_path && strcmp(t->output_path, "-") != 0) {
        int flags = O_WRONLY | O_CREAT | (t->resume_path || t->output_append ? O_APPEND : O_TRUNC);
        t->out_fd = open(t->output_path, flags, 0644);
        if (t->out_fd < 0) pq_tool_die(t, "%s: %s", t->output_path, strerror(errno));
    }
    if (t->rejects_path) {
        // On --resume every line not in the output is tried again, so the
        // rejects file is written anew: no line twice, none that has since
        // succeeded. The old lines this run does not reach (Ctrl-C again)
        // are kept, written back at the end.
        if (t->resume_path) load_old_rejects(t);
        t->rejects = fopen(t->rejects_path, "w");
        if (!t->rejects) pq_tool_die(t, "--rejects %s: %s", t->rejects_path, strerror(errno));
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    t->cur_input = -1;
}

// Input is read with read() into t->inbuf and cut into lines here (not
// stdio), so that pq_tool_try_next can tell "no whole line yet" apart from
// blocking: LLM tools drive their requests while upstream is slow.

static int fd_readable(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) > 0; // readable, at end or an error (read says which)
}

// Cuts the next line out of t->inbuf: 1 got one, 0 none whole yet (or,
// at_end, nothing left).
static int cut_line(PqTool *t, int at_end) {
    char *s = t->inbuf.data + t->in_pos;
    size_t left = t->inbuf.len - t->in_pos;
    if (!left) return 0;
    char *nl = memchr(s, '\n', left);
    if (!nl && !at_end) return 0;
    size_t n = nl ? (size_t)(nl - s) : left;
    t->in_pos += nl ? n + 1 : n;
    s[n] = 0; // over the newline, or the buffer's own NUL
    t->line.text = s;
    while (n > 0 && s[n - 1] == '\r') s[--n] = 0;
    t->line.len = n;
    t->line.lineno++;
    return 1;
}

int pq_tool_try_next(PqTool *t) {
    for (;;) {
        if (pq_interrupted) return 0;
        if (t->in_fd < 0) {
            if (++t->cur_input >= t->n_inputs) return 0;
            const char *path = t->inputs[t->cur_input];
            t->in_fd = strcmp(path, "-") == 0 ? STDIN_FILENO : open(path, O_RDONLY);
            if (t->in_fd < 0) pq_tool_die(t, "%s: %s", path, strerror(errno));
            t->line.file = path;
            t->line.lineno = 0;
            pq_buf_clear(&t->inbuf);
            t->in_pos = 0;
        }
        int got = cut_line(t, 0);
        if (!got) {
            // Keep what is left of a partial line at the front, read more.
            if (t->in_pos) {
                memmove(t->inbuf.data, t->inbuf.data + t->in_pos, t->inbuf.len - t->in_pos);
                t->inbuf.len -= t->in_pos;
                t->inbuf.data[t->inbuf.len] = 0;
                t->in_pos = 0;
            }
            if (!fd_readable(t->in_fd)) return -1;
            pq_buf_reserve(&t->inbuf, 65536);
            ssize_t n = read(t->in_fd, t->inbuf.data + t->inbuf.len, t->inbuf.cap - t->inbuf.len - 1);
            if (n < 0) {
                if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
                pq_tool_die(t, "%s: read error: %s", t->line.file, strerror(errno));
            }
            t->inbuf.len += (size_t)n;
            t->inbuf.data[t->inbuf.len] = 0;
            if (n > 0) continue;
            got = cut_line(t, 1); // end of this file: its last line may lack a newline
            if (t->in_fd != STDIN_FILENO) close(t->in_fd);
            t->in_fd = -1;
            if (!got) continue;
        }
        size_t i = 0;
        while (i < t->line.len && (t->line.text[i] == ' ' || t->line.text[i] == '\t')) i++;
        if (i == t->line.len) continue; // blank line
        t->n_read++;
        old_rejects_seen(t, t->line.text, t->line.len);
        return 1;
    }
}

int pq_tool_wait_fd(const PqTool *t) {
    if (t->in_fd >= 0) return t->in_fd;
    return -1;
}

int pq_tool_next(PqTool *t) {
    for (;;) {
        int r = pq_tool_try_next(t);
        if (r >= 0) return r;
        struct pollfd p = {.fd = t->in_fd, .events = POLLIN};
        if (poll(&p, 1, -1) < 0 && errno != EINTR) pq_tool_die(t, "%s: poll: %s", t->line.file, strerror(errno));
    }
}

static void line_col(const char *s, const char *at, long *line, long *col) {
    *line = 1;
    *col = 1;
    for (const char *p = s; p < at; p++) {
        if (*p == '\n') (*line)++, *col = 1;
        else (*col)++;
    }
}

cJSON *pq_tool_parse(PqTool *t) {
    const char *end = NULL;
    const char *nul = memchr(t->line.text, 0, t->line.len);
    if (nul) { // cJSON would stop there, or cut a string short, silently
        pq_tool_reject(t, &t->line, NULL, "a NUL byte at column %ld", (long)(nul - t->line.text) + 1);
        return NULL;
    }
    cJSON *obj = cJSON_ParseWithLengthOpts(t->line.text, t->line.len, &end, 0);
    if (obj && end) { // one value a line: a second object or any other text after it is an error
        const char *p = end;
        while (p < t->line.text + t->line.len && (*p == ' ' || *p == '\t' || *p == '\r')) p++;
        if (p < t->line.text + t->line.len) {
            pq_tool_reject(t, &t->line, NULL, "text after the JSON value at column %ld", (long)(p - t->line.text) + 1);
            cJSON_Delete(obj);
            return NULL;
        }
    }
    if (!obj) {
        const char *at = end ? end : cJSON_GetErrorPtr();
        long l = 1, c = 1;
        if (at && at >= t->line.text && at <= t->line.text + t->line.len) line_col(t->line.text, at, &l, &c);
        pq_tool_reject(t, &t->line, NULL, "not JSON (error at column %ld)", c);
        return NULL;
    }
    if (!cJSON_IsObject(obj)) {
        pq_tool_reject(t, &t->line, NULL, "not a JSON object");
        cJSON_Delete(obj);
        return NULL;
    }
    pq_json_keep_id_text(obj, t->line.text, t->line.len);
    return obj;
}

void pq_sanitize(PqBuf *b, const char *s) {
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p == 0x7f) pq_buf_printf(b, "\\x%02x", *p);
        else if (*p == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f) pq_buf_printf(b, "\\u%04x", p[1]), p++; // C1 controls
        else pq_buf_append(b, p, 1);
    }
}

struct PqReason {
    char *text;
    long n;
};

// How often this reason was given before (0: the first time).
static long reason_seen(PqTool *t, const char *reason) {
    for (int i = 0; i < t->n_reasons; i++)
        if (!strcmp(t->reasons[i].text, reason)) return t->reasons[i].n++;
    if (t->n_reasons >= 64) return 0; // so many kinds: show them all
    t->reasons = pq_xrealloc(t->reasons, (size_t)(t->n_reasons + 1) * sizeof *t->reasons);
    t->reasons[t->n_reasons].text = pq_xstrdup(reason);
    t->reasons[t->n_reasons++].n = 1;
    return 0;
}

// At the end: how many messages of each reason were not shown.
static void reasons_finish(PqTool *t, int say) {
    for (int i = 0; i < t->n_reasons; i++) {
        if (say && t->reasons[i].n > PQ_REJECT_SHOW) {
            PqBuf m = {0};
            pq_buf_printf(&m, "%s: %ld more lines rejected (not shown): ", t->name, t->reasons[i].n - PQ_REJECT_SHOW);
            pq_sanitize(&m, t->reasons[i].text);
            fprintf(stderr, "%s\n", m.data);
            pq_buf_free(&m);
        }
        free(t->reasons[i].text);
    }
    free(t->reasons);
    t->reasons = NULL;
    t->n_reasons = 0;
}

void pq_tool_reject_text(PqTool *t, const char *file, long lineno, const char *text, size_t len, const char *id,
                         const char *reason) {
    long seen = reason_seen(t, reason);
    if (seen >= PQ_REJECT_SHOW) goto counted; // said often enough: counted, and in --rejects
    PqBuf m = {0};
    if (t->n_inputs > 1) {
        pq_buf_printf(&m, "%s: ", t->name);
        pq_sanitize(&m, file);
        pq_buf_printf(&m, ": line %ld", lineno);
    } else pq_buf_printf(&m, "%s: line %ld", t->name, lineno);
    if (id) {
        pq_buf_puts(&m, " (id ");
        pq_sanitize(&m, id);
        pq_buf_puts(&m, ")");
    }
    pq_buf_puts(&m, ": ");
    pq_sanitize(&m, reason);
    if (seen == PQ_REJECT_SHOW - 1) pq_buf_puts(&m, " (more lines rejected for this reason are counted, not shown)");
    pq_buf_puts(&m, "\n");
    fputs(m.data, stderr);
    pq_buf_free(&m);
counted:
    if (t->rejects) { // the line as it came, NUL bytes and all
        errno = 0;
        if (fwrite(text, 1, len, t->rejects) != len || fputc('\n', t->rejects) == EOF || fflush(t->rejects) != 0)
            pq_tool_die(t, "--rejects %s: write error: %s", t->rejects_path, errno ? strerror(errno) : "unknown");
    }
    t->n_rejected++;
}

void pq_tool_reject(PqTool *t, const PqLine *line, const char *id, const char *fmt, ...) {
    char reason[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    pq_tool_reject_text(t, line->file, line->lineno, line->text, line->len, id, reason);
}

// ---- output ----

static void write_all(PqTool *t, const char *s, size_t n) {
    while (n > 0 && !t->out_closed) {
        ssize_t k = write(t->out_fd, s, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            if (errno == EPIPE) { // the reader is gone (| head): stop as on Ctrl-C, quietly
                t->out_closed = 1;
                pq_interrupted = 1;
                return;
            }
            pq_tool_die(t, "write error: %s", strerror(errno));
        }
        s += k;
        n -= (size_t)k;
    }
}

void pq_tool_emit_text(PqTool *t, const char *json_line) {
    // One write per line, so a line is never interleaved or half-written by
    // a well-behaved kill, and resume can trust every complete line.
    pq_buf_clear(&t->outbuf);
    pq_buf_puts(&t->outbuf, json_line);
    pq_buf_append(&t->outbuf, "\n", 1);
    write_all(t, t->outbuf.data, t->outbuf.len);
    t->n_out++;
}

void pq_tool_emit(PqTool *t, const cJSON *obj) {
    char *s = cJSON_PrintUnformatted(obj);
    if (!s) pq_tool_die(t, "out of memory printing JSON");
    pq_tool_emit_text(t, s);
    cJSON_free(s);
}

static void fmt_duration(char *buf, size_t n, double s) {
    if (s < 60) snprintf(buf, n, "%.0fs", s);
    else if (s < 3600) snprintf(buf, n, "%dm%02ds", (int)s / 60, (int)s % 60);
    else snprintf(buf, n, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
}

void pq_tool_progress(PqTool *t, int force) {
    if (t->progress <= 0) return;
    double now = pq_now();
    if (!force && now - t->t_last_progress < 0.5) return;
    t->t_last_progress = now;
    double dt = now - t->t0 > 1e-9 ? now - t->t0 : 1e-9;
    char eta[32] = "?";
    if (t->by_steps) { // steps, not lines
        long done = t->steps - t->steps_first, left = t->steps_total - t->steps;
        fprintf(stderr, "\r%s: step %ld", t->name, t->steps);
        if (t->steps_total > 0)
            fprintf(stderr, "/%ld (%.0f%%)", t->steps_total, 100.0 * (double)t->steps / (double)t->steps_total);
        fputs(t->progress_extra, stderr);
        if (t->n_rejected) fprintf(stderr, ", %ld rejected", t->n_rejected);
        if (t->steps_total > 0 && done > 0) {
            fmt_duration(eta, sizeof eta, left > 0 ? left * dt / done : 0);
            fprintf(stderr, ", ETA %s", eta);
        }
        fputs("   ", stderr);
        return;
    }
    long finished = t->n_done + t->n_rejected;
    if (t->total_lines > 0 && finished > 0) {
        long left = t->total_lines - finished - t->n_skipped;
        fmt_duration(eta, sizeof eta, left > 0 ? left * dt / finished : 0);
    }
    fprintf(stderr, "\r%s: ", t->name);
    if (t->total_lines > 0) {
        long all = finished + t->n_skipped;
        fprintf(stderr, "%ld/%ld lines (%.0f%%), ", all, t->total_lines, 100.0 * (double)all / (double)t->total_lines);
    }
    fprintf(stderr, "%ld done, %ld rejected", t->n_done, t->n_rejected);
    if (t->n_skipped) fprintf(stderr, ", %ld resumed", t->n_skipped);
    if (t->n_requests) fprintf(stderr, ", %.1f req/s, %lld tok", t->n_requests / dt, t->tokens_prompt + t->tokens_completion);
    if (t->total_lines > 0) fprintf(stderr, ", ETA %s", eta);
    fputs("   ", stderr);
}

int pq_tool_finish(PqTool *t) {
    finish_old_rejects(t);
    int quiet = t->out_closed; // nobody reads on: no summary, the status of a tool a closed pipe ended
    if (t->progress > 0 && !quiet) {
        pq_tool_progress(t, 1);
        fputc('\n', stderr);
    }
    reasons_finish(t, !quiet);
    double dt = pq_now() - t->t0;
    if (quiet) goto close;
    fprintf(stderr, "%s: %ld in, %ld done, %ld rejected", t->name, t->n_read, t->n_done, t->n_rejected);
    if (t->n_skipped) fprintf(stderr, ", %ld skipped (already in %s)", t->n_skipped, t->resume_path);
    fprintf(stderr, ", %ld out, %.2fs", t->n_out, dt);
    if (t->n_requests)
        fprintf(stderr, ", %ld requests (%.1f/s, %ld retries), tokens %lld prompt + %lld completion", t->n_requests,
                dt > 0 ? t->n_requests / dt : 0.0, t->n_retries, t->tokens_prompt, t->tokens_completion);
    if (t->summary_extra[0]) fprintf(stderr, ", %s", t->summary_extra);
    if (t->summary_llm[0]) fprintf(stderr, "; %s", t->summary_llm);
    if (pq_interrupted) fprintf(stderr, "; interrupted: rerun with --resume to continue");
    fputc('\n', stderr);
close:
    if (t->rejects) fclose(t->rejects);
    if (t->out_fd != STDOUT_FILENO) close(t->out_fd);
    if (t->in_fd > STDIN_FILENO) close(t->in_fd);
    pq_buf_free(&t->inbuf);
    pq_buf_free(&t->outbuf);
    keyset_free(t->done);
    if (quiet) return PQ_EXIT_PIPE;
    if (pq_interrupted) return PQ_EXIT_INTERRUPTED;
    if (t->fatal) return PQ_EXIT_FATAL;
    return t->n_rejected ? PQ_EXIT_REJECTS : PQ_EXIT_OK;
}

// ---- JSON helpers ----

const char *pq_json_str(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

int pq_json_num(const cJSON *obj, const char *key, double *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) return 0;
    *out = v->valuedouble;
    return 1;
}

void pq_json_set(cJSON *obj, const char *key, cJSON *item) {
    if (cJSON_GetObjectItemCaseSensitive(obj, key)) cJSON_ReplaceItemInObjectCaseSensitive(obj, key, item);
    else cJSON_AddItemToObject(obj, key, item);
}

void pq_json_add_float(cJSON *obj, const char *key, double v) {
    if (!isfinite(v)) {
        pq_json_set(obj, key, cJSON_CreateNull());
        return;
    }
    char buf[64];
    snprintf(buf, sizeof buf, "%.9g", v);
    pq_json_set(obj, key, cJSON_CreateRaw(buf));
}

const char *pq_json_id_text(const cJSON *obj) {
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(obj, "id");
    return cJSON_IsString(id) || cJSON_IsRaw(id) ? id->valuestring : NULL;
}

const char *pq_json_id(const cJSON *obj) {
    const char *id = pq_json_id_text(obj);
    return id ? id : "?";
}

// A scanner over JSON text, enough to skip values and find where one starts.
static const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) p++;
    return p;
}

static const char *skip_string(const char *p, const char *end) { // p at the opening quote
    for (p++; p < end; p++) {
        if (*p == '\\') p++;
        else if (*p == '"') return p + 1;
    }
    return NULL;
}

static const char *skip_value(const char *p, const char *end) {
    if (p >= end) return NULL;
    if (*p == '"') return skip_string(p, end);
    if (*p == '{' || *p == '[') {
        int depth = 0;
        while (p < end) {
            if (*p == '"') {
                if (!(p = skip_string(p, end))) return NULL;
                continue;
            }
            if (*p == '{' || *p == '[') depth++;
            else if (*p == '}' || *p == ']') {
                if (--depth == 0) return p + 1;
            }
            p++;
        }
        return NULL;
    }
    while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') p++;
    return p; // a number or a literal
}

void pq_json_keep_id_text(cJSON *obj, const char *text, size_t len) {
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(obj, "id");
    if (!cJSON_IsNumber(id)) return;
    const char *p = skip_ws(text, text + len), *end = text + len;
    if (p >= end || *p != '{') return;
    p = skip_ws(p + 1, end);
    while (p < end && *p == '"') { // the first "id" member, as cJSON's getter takes the first
        const char *k = p, *ke = skip_string(p, end);
        if (!ke) return;
        p = skip_ws(ke, end);
        if (p >= end || *p != ':') return;
        p = skip_ws(p + 1, end);
        const char *v = p, *ve = skip_value(p, end);
        if (!ve) return;
        if (ke - k == 4 && memcmp(k, "\"id\"", 4) == 0) {
            char *num = pq_xstrndup(v, (size_t)(ve - v));
            cJSON_ReplaceItemInObjectCaseSensitive(obj, "id", cJSON_CreateRaw(num));
            free(num);
            return;
        }
        p = skip_ws(ve, end);
        if (p >= end || *p != ',') return;
        p = skip_ws(p + 1, end);
    }
}

// ---- reorder buffer ----

void pq_reorder_init(PqReorder *r, long cap) {
    r->next = 0;
    r->cap = cap;
    r->text = pq_xcalloc((size_t)cap, sizeof *r->text);
    r->ready = pq_xcalloc((size_t)cap, 1);
}

void pq_reorder_put(PqReorder *r, PqTool *t, long seq, char *text) {
    long i = seq % r->cap;
    r->text[i] = text;
    r->ready[i] = 1;
    for (;;) {
        long j = r->next % r->cap;
        if (!r->ready[j]) break;
        if (r->text[j]) pq_tool_emit_text(t, r->text[j]);
        free(r->text[j]);
        r->text[j] = NULL;
        r->ready[j] = 0;
        r->next++;
    }
}

void pq_reorder_flush(PqReorder *r, PqTool *t) {
    for (long k = 0; k < r->cap; k++) {
        long i = (r->next + k) % r->cap;
        if (r->ready[i] && r->text[i]) pq_tool_emit_text(t, r->text[i]);
        free(r->text[i]);
        r->text[i] = NULL;
        r->ready[i] = 0;
    }
}

void pq_reorder_free(PqReorder *r) {
    for (long i = 0; i < r->cap; i++) free(r->text[i]);
    free(r->text);
    free(r->ready);
}
