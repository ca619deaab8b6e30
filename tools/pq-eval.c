// pq-eval: compares models on the same held-out articles (method.md §6):
// quiz scores, compression, OOD characters, win rate against a baseline.
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eval.h"
#include "quiz.h"
#include "tool.h"

static const char usage[] =
    "Usage: pq-eval --baseline BASE.jsonl [OPTIONS] [MODEL.jsonl ...]\n"
    "Per model (the baseline included): % quiz score >= 3 and >= 4, median and mean\n"
    "compression, failed compressions, % with OOD characters, and the win rate against\n"
    "the baseline with a bootstrap interval and a sign test (pq(7), METHOD, step 6). Inputs are\n"
    "pq-quiz outputs; sample 0 of each id is used; only ids in every file count.\n"
    "  -b, --baseline FILE  the model the others are compared with (required)\n"
    "  -f, --format F       table, jsonl or csv (default: table on a terminal, else jsonl)\n"
    "      --bootstrap N    resamples for the 95% interval of the win rate; 0 = none (default 1000)\n";

enum { OPT_BOOTSTRAP = PQ_OPT_TOOL_BASE };
enum { FMT_AUTO, FMT_TABLE, FMT_JSONL, FMT_CSV };

typedef struct Row {
    char *id;
    long lineno;
    PqEvalItem item;
} Row;

typedef struct File {
    const char *path;
    Row *rows;
    long n, cap;
    PqEvalStats st;
} File;

static int cmp_row(const void *pa, const void *pb) {
    const Row *a = pa, *b = pb;
    int c = strcmp(a->id, b->id);
    return c ? c : (a->lineno > b->lineno) - (a->lineno < b->lineno);
}
static int cmp_row_id(const void *a, const void *b) { return strcmp(((const Row *)a)->id, ((const Row *)b)->id); }
static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static const Row *find_row(const File *f, const char *id) {
    Row key = {(char *)id, 0, {0}};
    return f->n ? bsearch(&key, f->rows, (size_t)f->n, sizeof *f->rows, cmp_row_id) : NULL;
}

// Reads one quiz line into r: NULL ok, "" to skip (a sample other than 0), else why it is rejected.
static const char *read_row(const cJSON *obj, Row *r) {
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(obj, "id");
    if (!cJSON_IsString(id) && !cJSON_IsNumber(id) && !cJSON_IsRaw(id)) return "no \"id\" (string or number)";
    const cJSON *sample = cJSON_GetObjectItemCaseSensitive(obj, "sample");
    if (sample && !cJSON_IsNumber(sample)) return "\"sample\" is not a number";
    if (sample && sample->valuedouble != 0) return "";
    const char *summary = pq_json_str(obj, "summary"), *article = pq_json_str(obj, "article");
    if (!summary) return "no \"summary\" string";
    if (!article) return "no \"article\" string";
    const cJSON *correct = cJSON_GetObjectItemCaseSensitive(obj, "correct");
    if (!cJSON_IsNumber(correct) || correct->valuedouble != floor(correct->valuedouble) || correct->valuedouble < 0 ||
        correct->valuedouble > 100)
        return "no \"correct\" score (did the quiz run?)";
    memset(r, 0, sizeof *r);
    r->item.score = (int)correct->valuedouble;
    r->item.words = pq_count_words(summary);
    r->item.article_words = pq_count_words(article);
    if (r->item.article_words == 0) return "the article has no words";
    r->item.chars = pq_count_chars(summary);
    r->item.article_chars = pq_count_chars(article);
    r->item.bad_chars = pq_count_bad_chars(summary);
    PqBuf b = {0};
    if (cJSON_IsString(id) || cJSON_IsRaw(id)) pq_buf_puts(&b, id->valuestring); // a number: its text as written
    else pq_buf_printf(&b, "%.17g", id->valuedouble);
    r->id = b.data;
    return NULL;
}

static const char *const fields[] = {"model", "baseline", "n", "score_ge3", "score_ge4", "compression_median",
                                     "compression_mean", "failed_compression", "ood", "wins", "losses", "ties",
                                     "win_rate", "win_rate_lo", "win_rate_hi", "sign_p"};
#define N_FIELDS (int)(sizeof fields / sizeof *fields)

static cJSON *stats_json(const File *f, int is_base) {
    const PqEvalStats *s = &f->st;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", f->path);
    cJSON_AddBoolToObject(o, "baseline", is_base);
    cJSON_AddNumberToObject(o, "n", s->n);
    pq_json_add_float(o, "score_ge3", s->score_ge3);
    pq_json_add_float(o, "score_ge4", s->score_ge4);
    pq_json_add_float(o, "compression_median", s->compression_median);
    pq_json_add_float(o, "compression_mean", s->compression_mean);
    pq_json_add_float(o, "failed_compression", s->failed_compression);
    pq_json_add_float(o, "ood", s->ood);
    cJSON_AddNumberToObject(o, "wins", s->wins);
    cJSON_AddNumberToObject(o, "losses", s->losses);
    cJSON_AddNumberToObject(o, "ties", s->ties);
    pq_json_add_float(o, "win_rate", s->win_rate);
    pq_json_add_float(o, "win_rate_lo", s->win_lo);
    pq_json_add_float(o, "win_rate_hi", s->win_hi);
    pq_json_add_float(o, "sign_p", s->sign_p);
    return o;
}

// One CSV line from the JSON object (same fields, same number text).
static void emit_csv(PqTool *t, const cJSON *o) {
    PqBuf b = {0};
    pq_buf_puts(&b, "");
    for (int i = 0; i < N_FIELDS; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, fields[i]);
        if (i) pq_buf_puts(&b, ",");
        if (cJSON_IsString(v)) {
            const char *s = v->valuestring;
            int quote = strpbrk(s, ",\"\n\r") != NULL;
            if (quote) pq_buf_puts(&b, "\"");
            for (; *s; s++) {
                if (*s == '"') pq_buf_puts(&b, "\"");
                pq_buf_append(&b, s, 1);
            }
            if (quote) pq_buf_puts(&b, "\"");
        } else if (!cJSON_IsNull(v)) {
            char *x = cJSON_PrintUnformatted(v);
            pq_buf_puts(&b, x);
            cJSON_free(x);
        }
    }
    pq_tool_emit_text(t, b.data);
    pq_buf_free(&b);
}

static void pct(char *buf, size_t n, double v) {
    if (isnan(v)) snprintf(buf, n, "-");
    else snprintf(buf, n, "%.1f%%", 100 * v);
}

static void emit_table(PqTool *t, File *files, int nf) {
    int w = 5;
    for (int i = 0; i < nf; i++)
        if ((int)strlen(files[i].path) > w) w = (int)strlen(files[i].path);
    PqBuf b = {0};
    pq_buf_printf(&b, "%-*s %6s %8s %8s %9s %9s %7s %6s %8s %15s %8s", w, "model", "n", "score>=3", "score>=4",
                  "compr.med", "compr.avg", "failed", "OOD", "win rate", "95% CI", "sign p");
    pq_tool_emit_text(t, b.data);
    for (int i = 0; i < nf; i++) {
        const PqEvalStats *s = &files[i].st;
        char c[8][32];
        pct(c[0], 32, s->score_ge3);
        pct(c[1], 32, s->score_ge4);
        pct(c[2], 32, s->compression_median);
        pct(c[3], 32, s->compression_mean);
        pct(c[4], 32, s->failed_compression);
        pct(c[5], 32, s->ood);
        pct(c[6], 32, s->win_rate);
        if (isnan(s->win_lo)) snprintf(c[7], 32, "-");
        else snprintf(c[7], 32, "%.1f-%.1f%%", 100 * s->win_lo, 100 * s->win_hi);
        pq_buf_clear(&b);
        pq_buf_printf(&b, "%-*s %6d %8s %8s %9s %9s %7s %6s", w, files[i].path, s->n, c[0], c[1], c[2], c[3], c[4],
                      c[5]);
        if (i == 0) pq_buf_printf(&b, " %8s", "baseline");
        else pq_buf_printf(&b, " %8s %15s %8.3g", c[6], c[7], s->sign_p);
        pq_tool_emit_text(t, b.data);
    }
    pq_buf_free(&b);
}

int main(int argc, char **argv) {
    PqTool t;
    pq_tool_init(&t, "pq-eval", usage);
    const char *baseline = NULL;
    int format = FMT_AUTO;
    long n_boot = 1000;
    static const struct option longopts[] = {
        PQ_TOOL_LONGOPTS,
        {"baseline", required_argument, 0, 'b'},
        {"format", required_argument, 0, 'f'},
        {"bootstrap", required_argument, 0, OPT_BOOTSTRAP},
        {0, 0, 0, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "hb:f:", longopts, NULL)) != -1) {
        if (pq_tool_option(&t, c, optarg)) continue;
        char *end;
        switch (c) {
        case 'b': baseline = optarg; break;
        case 'f':
            if (strcmp(optarg, "table") == 0) format = FMT_TABLE;
            else if (strcmp(optarg, "jsonl") == 0) format = FMT_JSONL;
            else if (strcmp(optarg, "csv") == 0) format = FMT_CSV;
            else pq_tool_usage_error(&t, "--format: table, jsonl or csv, not '%s'", optarg);
            break;
        case OPT_BOOTSTRAP:
            errno = 0;
            n_boot = strtol(optarg, &end, 10);
            if (errno || *end || !*optarg || n_boot < 0 || n_boot > 10000000)
                pq_tool_usage_error(&t, "--bootstrap: not a count: '%s'", optarg);
            break;
        default: pq_tool_usage_error(&t, "bad option");
        }
    }
    if (!baseline) pq_tool_usage_error(&t, "--baseline FILE is required");
    if (t.resume_path) pq_tool_usage_error(&t, "--resume: pq-eval writes its report whole; there is nothing to resume");
    // Inputs: the baseline, then the models, read as one stream of files.
    int nf = argc - optind + 1;
    char **paths = pq_xmalloc((size_t)nf * sizeof *paths);
    paths[0] = (char *)baseline;
    for (int i = 1; i < nf; i++) paths[i] = argv[optind + i - 1];
    for (int i = 0; i < nf; i++)
        if (strcmp(paths[i], "-") == 0) pq_tool_usage_error(&t, "inputs must be files (the baseline is read first)");
    pq_tool_open(&t, nf, paths, 0);
    if (format == FMT_AUTO) format = isatty(t.out_fd) ? FMT_TABLE : FMT_JSONL;

    File *files = pq_xcalloc((size_t)nf, sizeof *files);
    for (int i = 0; i < nf; i++) files[i].path = paths[i];
    long n_other_samples = 0;
    while (pq_tool_next(&t)) {
        cJSON *obj = pq_tool_parse(&t);
        if (!obj) continue;
        File *f = &files[t.cur_input];
        if (f->n == f->cap) {
            f->cap = f->cap ? 2 * f->cap : 256;
            f->rows = pq_xrealloc(f->rows, (size_t)f->cap * sizeof *f->rows);
        }
        const char *why = read_row(obj, &f->rows[f->n]);
        if (why && !*why) n_other_samples++;
        else if (why) pq_tool_reject(&t, &t.line, pq_json_id_text(obj), "%s", why);
        else {
            f->rows[f->n++].lineno = t.line.lineno;
            t.n_done++;
        }
        cJSON_Delete(obj);
    }
    // Duplicates, then the ids in every file.
    long n_all = 0;
    for (int i = 0; i < nf; i++) {
        File *f = &files[i];
        if (f->n) qsort(f->rows, (size_t)f->n, sizeof *f->rows, cmp_row); // rows is NULL when empty
        long k = 0;
        for (long j = 0; j < f->n; j++) {
            if (k > 0 && strcmp(f->rows[k - 1].id, f->rows[j].id) == 0) {
                PqBuf m = {0};
                pq_sanitize(&m, f->rows[j].id);
                fprintf(stderr, "pq-eval: %s: line %ld (id %s): the id is already on line %ld; that line is used\n",
                        f->path, f->rows[j].lineno, m.data, f->rows[k - 1].lineno);
                pq_buf_free(&m);
                free(f->rows[j].id);
                continue;
            }
            f->rows[k++] = f->rows[j];
        }
        f->n = k;
        n_all += k;
    }
    char **ids = pq_xmalloc((size_t)(n_all ? n_all : 1) * sizeof *ids);
    long n_ids = 0;
    for (int i = 0; i < nf; i++)
        for (long j = 0; j < files[i].n; j++) ids[n_ids++] = files[i].rows[j].id;
    if (n_ids) qsort(ids, (size_t)n_ids, sizeof *ids, cmp_str);
    long n_union = 0;
    for (long j = 0; j < n_ids; j++) n_union += j == 0 || strcmp(ids[j - 1], ids[j]) != 0;
    free(ids);
    long n = 0;
    PqEvalItem **items = pq_xmalloc((size_t)nf * sizeof *items);
    for (int i = 0; i < nf; i++) items[i] = pq_xmalloc((size_t)(files[0].n ? files[0].n : 1) * sizeof **items);
    for (long j = 0; j < files[0].n; j++) {
        const char *id = files[0].rows[j].id;
        int every = 1;
        for (int i = 1; i < nf && every; i++) every = find_row(&files[i], id) != NULL;
        if (!every) continue;
        for (int i = 0; i < nf; i++) items[i][n] = find_row(&files[i], id)->item;
        n++;
    }
    if (n_union > n)
        fprintf(stderr, "pq-eval: %ld of %ld ids are not in every file; they are left out\n", n_union - n, n_union);
    if (n == 0 && !pq_interrupted) pq_tool_die(&t, "no id is in every file: nothing to compare");
    if (n_other_samples)
        fprintf(stderr, "pq-eval: %ld lines with a sample other than 0 ignored\n", n_other_samples);
    for (int i = 0; i < nf; i++)
        pq_eval_stats(items[i], items[0], (int)n, (int)n_boot, t.seed, &files[i].st);

    if (!pq_interrupted) {
        if (format == FMT_TABLE) emit_table(&t, files, nf);
        else {
            if (format == FMT_CSV) {
                PqBuf h = {0};
                for (int i = 0; i < N_FIELDS; i++) pq_buf_printf(&h, "%s%s", i ? "," : "", fields[i]);
                pq_tool_emit_text(&t, h.data);
                pq_buf_free(&h);
            }
            for (int i = 0; i < nf; i++) {
                cJSON *o = stats_json(&files[i], i == 0);
                if (format == FMT_CSV) emit_csv(&t, o);
                else pq_tool_emit(&t, o);
                cJSON_Delete(o);
            }
        }
    }
    snprintf(t.summary_extra, sizeof t.summary_extra, "%ld articles in every file, %ld left out", n, n_union - n);
    for (int i = 0; i < nf; i++) {
        for (long j = 0; j < files[i].n; j++) free(files[i].rows[j].id);
        free(files[i].rows);
        free(items[i]);
    }
    free(items);
    free(files);
    free(paths);
    return pq_tool_finish(&t);
}
