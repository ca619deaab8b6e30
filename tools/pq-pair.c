// pq-pair: quizzed summaries in, DPO preference pairs out (method.md §4).
// Reads all its input (grouping by id), so the order of the input does not matter.
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pair.h"
#include "tool.h"

static const char usage[] =
    "Usage: pq-pair [OPTIONS] [QUIZ.jsonl ...]\n"
    "Groups quizzed summaries by id and writes DPO pair records (pq(7), METHOD, step 4).\n"
    "      --threshold N       below it (min score <= N-1) the higher score wins (default 3)\n"
    "      --length-margin N   above it the shorter wins if words differ by more than N (default 2)\n"
    "      --max-pairs N       at most N pairs per article, a seeded sample; 0 = all (default 3)\n"
    "      --min-words N       keep summaries with N <= words ... (default 5)\n"
    "      --max-words N       ... and words < N (default 200)\n"
    "      --valid FILE        write the pairs of a held-out share of the articles to FILE\n"
    "      --valid-frac F      the share of articles held out (default 0.02)\n";

enum { OPT_THRESHOLD = PQ_OPT_TOOL_BASE, OPT_MARGIN, OPT_MAX_PAIRS, OPT_MIN_WORDS, OPT_MAX_WORDS, OPT_VALID, OPT_VALID_FRAC };

// One summary line, as much of it as pairing needs.
typedef struct Summary {
    char *id;        // the id as a string (numbers printed), for grouping and seeds
    cJSON *id_json;  // the id as given, for the output
    int has_sample;
    double sample;
    char *summary;   // NULL: none
    int quizzed, correct, words, bad_chars, kept;
    cJSON *prompt;   // kept summaries only
    long seq;        // input order: the last tie-break of the sort
} Summary;

static int cmp_summary(const void *pa, const void *pb) {
    const Summary *a = pa, *b = pb;
    int c = strcmp(a->id, b->id);
    if (c) return c;
    if (a->has_sample != b->has_sample) return a->has_sample - b->has_sample;
    if (a->sample != b->sample) return a->sample < b->sample ? -1 : 1;
    if (!a->summary || !b->summary) return (a->summary != NULL) - (b->summary != NULL);
    c = strcmp(a->summary, b->summary);
    if (c) return c;
    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

static int parse_int(PqTool *t, const char *opt, const char *arg, int min) {
    char *end;
    errno = 0;
    long v = strtol(arg, &end, 10);
    if (errno || *end || !*arg || v < min || v > 1000000000) pq_tool_usage_error(t, "%s: not an integer >= %d: '%s'", opt, min, arg);
    return (int)v;
}

// An integer field: 1 ok, 0 absent, -1 null, -2 not an integer.
static int int_field(const cJSON *o, const char *key, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) return 0;
    if (cJSON_IsNull(v)) return -1;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble != floor(v->valuedouble) ||
        fabs(v->valuedouble) > 1e9)
        return -2;
    *out = (int)v->valuedouble;
    return 1;
}

// Reads one line into s; NULL when it is usable, else why it is rejected.
static const char *read_summary(cJSON *obj, const PqPairOpts *o, Summary *s) {
    static char why[128];
    memset(s, 0, sizeof *s);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(obj, "id");
    if (!cJSON_IsString(id) && !cJSON_IsNumber(id) && !cJSON_IsRaw(id)) return "no \"id\" (string or number)";
    const cJSON *summary = cJSON_GetObjectItemCaseSensitive(obj, "summary");
    if (!summary) return "no \"summary\" field";
    if (!cJSON_IsString(summary) && !cJSON_IsNull(summary)) return "\"summary\" is not a string or null";
    static const char *const nums[] = {"correct", "num_words", "bad_chars"};
    int *dst[] = {&s->correct, &s->words, &s->bad_chars};
    int quizzed = 1;
    for (int i = 0; i < 3; i++) {
        int r = int_field(obj, nums[i], dst[i]);
        if (r == 0) return snprintf(why, sizeof why, "no \"%s\" field", nums[i]), why;
        if (r == -2) return snprintf(why, sizeof why, "\"%s\" is not an integer", nums[i]), why;
        if (r == -1) quizzed = 0; // null: the quiz did not run
    }
    const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(obj, "prompt");
    if (!prompt) return "no \"prompt\" field";
    if (!pq_messages_valid(prompt)) return "\"prompt\" is not a list of {\"role\", \"content\"} messages";
    const cJSON *sample = cJSON_GetObjectItemCaseSensitive(obj, "sample");
    if (sample && !cJSON_IsNumber(sample)) return "\"sample\" is not a number";
    PqBuf b = {0};
    if (cJSON_IsString(id) || cJSON_IsRaw(id)) pq_buf_puts(&b, id->valuestring); // a number: its text as written
    else pq_buf_printf(&b, "%.17g", id->valuedouble);
    s->id = b.data;
    s->id_json = cJSON_Duplicate(id, 1);
    s->has_sample = sample != NULL;
    s->sample = sample ? sample->valuedouble : 0;
    s->summary = cJSON_IsString(summary) && summary->valuestring[0] ? pq_xstrdup(summary->valuestring) : NULL;
    s->quizzed = quizzed;
    s->kept = pq_pair_keep(o, s->summary != NULL, quizzed, s->words, s->bad_chars);
    if (s->kept) s->prompt = cJSON_DetachItemViaPointer(obj, (cJSON *)prompt);
    return NULL;
}

static void summary_free(Summary *s) {
    free(s->id);
    free(s->summary);
    cJSON_Delete(s->id_json);
    cJSON_Delete(s->prompt);
}

int main(int argc, char **argv) {
    PqTool t;
    pq_tool_init(&t, "pq-pair", usage);
    PqPairOpts o;
    pq_pair_opts_default(&o);
    const char *valid_path = NULL;
    double valid_frac = 0.02;
    static const struct option longopts[] = {
        PQ_TOOL_LONGOPTS,
        {"threshold", required_argument, 0, OPT_THRESHOLD},
        {"length-margin", required_argument, 0, OPT_MARGIN},
        {"max-pairs", required_argument, 0, OPT_MAX_PAIRS},
        {"min-words", required_argument, 0, OPT_MIN_WORDS},
        {"max-words", required_argument, 0, OPT_MAX_WORDS},
        {"valid", required_argument, 0, OPT_VALID},
        {"valid-frac", required_argument, 0, OPT_VALID_FRAC},
        {0, 0, 0, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        if (pq_tool_option(&t, c, optarg)) continue;
        char *end;
        switch (c) {
        case OPT_THRESHOLD: o.threshold = parse_int(&t, "--threshold", optarg, 0); break;
        case OPT_MARGIN: o.length_margin = parse_int(&t, "--length-margin", optarg, 0); break;
        case OPT_MAX_PAIRS: o.max_pairs = parse_int(&t, "--max-pairs", optarg, 0); break;
        case OPT_MIN_WORDS: o.min_words = parse_int(&t, "--min-words", optarg, 0); break;
        case OPT_MAX_WORDS: o.max_words = parse_int(&t, "--max-words", optarg, 0); break;
        case OPT_VALID: valid_path = optarg; break;
        case OPT_VALID_FRAC:
            errno = 0;
            valid_frac = strtod(optarg, &end);
            if (errno || *end || !*optarg || !(valid_frac >= 0 && valid_frac <= 1))
                pq_tool_usage_error(&t, "--valid-frac: not a number in [0, 1]: '%s'", optarg);
            break;
        default: pq_tool_usage_error(&t, "bad option");
        }
    }
    pq_tool_open(&t, argc, argv, optind);
    // The validation file is written whole on every run (pairing is cheap and
    // deterministic), also with --resume.
    int valid_fd = -1;
    if (valid_path) {
        valid_fd = open(valid_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (valid_fd < 0) pq_tool_die(&t, "--valid %s: %s", valid_path, strerror(errno));
    }

    Summary *all = NULL;
    long n = 0, cap = 0;
    while (pq_tool_next(&t)) {
        cJSON *obj = pq_tool_parse(&t);
        if (!obj) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 1024;
            all = pq_xrealloc(all, (size_t)cap * sizeof *all);
        }
        const char *why = read_summary(obj, &o, &all[n]);
        if (why) {
            pq_tool_reject(&t, &t.line, pq_json_id_text(obj), "%s", why);
        } else {
            all[n].seq = n;
            n++;
            t.n_done++;
        }
        cJSON_Delete(obj);
        pq_tool_progress(&t, 0);
    }
    if (n) qsort(all, (size_t)n, sizeof *all, cmp_summary);

    long n_articles = 0, n_kept = 0, n_pairs = 0, n_valid = 0;
    int *score = NULL, *words = NULL, *which = NULL;
    PqPairIdx *pairs = NULL;
    PqBuf key = {0};
    for (long a = 0; a < n && !pq_interrupted;) {
        long b = a;
        while (b < n && strcmp(all[b].id, all[a].id) == 0) b++;
        n_articles++;
        int m = 0;
        score = pq_xrealloc(score, (size_t)(b - a) * sizeof *score);
        words = pq_xrealloc(words, (size_t)(b - a) * sizeof *words);
        which = pq_xrealloc(which, (size_t)(b - a) * sizeof *which);
        for (long i = a; i < b; i++)
            if (all[i].kept) {
                score[m] = all[i].correct;
                words[m] = all[i].words;
                which[m++] = (int)(i - a);
            }
        n_kept += m;
        pairs = pq_xrealloc(pairs, ((size_t)m * (size_t)(m > 0 ? m - 1 : 0) / 2 + 1) * sizeof *pairs);
        int np = pq_pair_select(&o, score, words, m, pq_pair_article_seed(t.seed, all[a].id), pairs);
        int to_valid = valid_path && pq_pair_is_valid(t.seed, all[a].id, valid_frac);
        for (int k = 0; k < np; k++) {
            const Summary *ch = &all[a + which[pairs[k].chosen]], *rj = &all[a + which[pairs[k].rejected]];
            cJSON *rec = pq_pair_record(ch->id_json, ch->prompt, ch->summary, rj->summary, ch->correct, rj->correct,
                                        ch->words, rj->words, k);
            if (to_valid) {
                char *s = cJSON_PrintUnformatted(rec);
                size_t len = strlen(s);
                s[len] = '\n'; // cJSON's buffer ends in NUL; swap it for the newline
                if (write(valid_fd, s, len + 1) != (ssize_t)(len + 1))
                    pq_tool_die(&t, "--valid %s: write error: %s", valid_path, strerror(errno));
                cJSON_free(s);
                n_valid++;
            } else {
                pq_record_key(rec, &key);
                if (pq_tool_is_done(&t, key.data)) t.n_skipped++;
                else pq_tool_emit(&t, rec);
                n_pairs++;
            }
            cJSON_Delete(rec);
        }
        a = b;
    }
    if (valid_fd >= 0 && close(valid_fd) != 0) pq_tool_die(&t, "--valid %s: %s", valid_path, strerror(errno));
    snprintf(t.summary_extra, sizeof t.summary_extra, "%ld articles, %ld summaries kept, %ld pairs, %ld valid pairs",
             n_articles, n_kept, n_pairs, n_valid);
    for (long i = 0; i < n; i++) summary_free(&all[i]);
    free(all);
    free(score);
    free(words);
    free(which);
    free(pairs);
    pq_buf_free(&key);
    return pq_tool_finish(&t);
}
