// quiz.c: the judge's side of the method (method.md §1, §3): the prompts,
// a line-based parser of quiz replies and answer replies, seeded shuffling,
// word counts and the out-of-distribution character count.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "quiz.h"

#include <ctype.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

// ---- prompts ----

const char *const pq_prompt_questions =
    "Write a multiple-choice quiz about the text below: exactly 5 questions, each with 5 options "
    "labelled A to E, exactly one of which is correct.\n"
    "\n"
    "Ask only about the most important points of the text: the facts that a very short summary "
    "of it (two sentences at most) would contain, such as who did what, what happened, and the "
    "key outcome or figure. Each question must be answerable from the text alone; do not ask "
    "anything a reader could answer from common knowledge without the text. Make the wrong "
    "options plausible, and do not use \"all of the above\" or \"none of the above\".\n"
    "\n"
    "Reply with the 5 questions and nothing else, each in exactly this form:\n"
    "\n"
    "Q1) question text\n"
    "A. option\n"
    "B. option\n"
    "C. option\n"
    "D. option\n"
    "E. option\n"
    "\n"
    "Q1 Answer: C\n"
    "\n"
    "Text:\n"
    "{article}\n";

const char *const pq_prompt_summary =
    "Create a very short summary of the text below, at most 2 sentences.\n"
    "\n"
    "{article}";

const char *const pq_prompt_quiz =
    "Below is a summary of a text, followed by multiple-choice questions about the text. "
    "Answer each question using only the information in the summary; do not use any outside "
    "knowledge or guess. If the summary does not give the answer, answer Unsure.\n"
    "\n"
    "Reply with one line per question and nothing else, in exactly this form (X is the letter "
    "of your answer, A to E, or the word Unsure):\n"
    "Q1) X\n"
    "Q2) X\n"
    "Q3) X\n"
    "Q4) X\n"
    "Q5) X\n"
    "\n"
    "Summary:\n"
    "{summary}\n"
    "\n"
    "Questions:\n"
    "{questions}\n";

char *pq_prompt_fill(const char *tmpl, int n, const char *const *keys, const char *const *values) {
    PqBuf b = {0};
    pq_buf_reserve(&b, strlen(tmpl) + 1);
    const char *p = tmpl;
    while (*p) {
        if (*p == '{') {
            const char *close = strchr(p + 1, '}');
            int hit = -1;
            if (close)
                for (int k = 0; k < n && hit < 0; k++)
                    if ((size_t)(close - p - 1) == strlen(keys[k]) && strncmp(p + 1, keys[k], strlen(keys[k])) == 0)
                        hit = k;
            if (hit >= 0) {
                pq_buf_puts(&b, values[hit]);
                p = close + 1;
                continue;
            }
        }
        pq_buf_append(&b, p, 1);
        p++;
    }
    return b.data;
}

// ---- line helpers ----

// Leading whitespace, Unicode whitespace (NBSP, U+3000 ...) included.
static char *skip_space(char *p) {
    size_t n;
    return (char *)pq_strip_space(p, strlen(p), &n);
}

// Copies one reply line, cleaned of markdown decoration: bold/italic
// markers (** __), heading marks (#), quote marks (>), list bullets (- * +)
// and surrounding whitespace (Unicode whitespace too, as Python's
// str.strip() sees it). Single '*' and '_' are removed only at the ends.
static char *clean_line(const char *s, size_t n) {
    char *out = pq_xmalloc(n + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if ((s[i] == '*' || s[i] == '_') && i + 1 < n && s[i + 1] == s[i]) {
            i++;
            continue;
        }
        out[k++] = s[i] == '\t' || s[i] == '\r' ? ' ' : s[i];
    }
    out[k] = 0;
    char *p = out;
    for (;;) {
        p = skip_space(p);
        if (*p == '#' || *p == '>') {
            while (*p == '#' || *p == '>') p++;
        } else if ((*p == '-' || *p == '*' || *p == '+') && p[1] == ' ') {
            p += 2;
        } else if (*p == '*' || *p == '_') {
            p++;
        } else break;
    }
    size_t len = strlen(p), kept;
    for (;;) {
        while (len > 0 && (p[len - 1] == '*' || p[len - 1] == '_')) len--;
        const char *q = pq_strip_space(p, len, &kept); // p starts with no whitespace: q == p
        if (q + kept == p + len) break;
        len = (size_t)(q - p) + kept;
    }
    memmove(out, p, len);
    out[len] = 0;
    return out;
}

typedef struct Rx {
    pcre2_code *code;
    pcre2_match_data *md;
} Rx;

// The patterns are compiled once per process (pthread_once) and shared;
// match data is per call, so the parsers are thread-safe.
enum {
    PAT_ANSWER, PAT_NEAR_ANSWER, PAT_KEY_LINE, PAT_KEY_PAIR, PAT_QUESTION, PAT_OPTION, PAT_MARKED, PAT_LETTER,
    PAT_REPLY, PAT_UNSURE, PAT_N
};
static pcre2_code *rx_code[PAT_N];
static pthread_once_t rx_once = PTHREAD_ONCE_INIT;
static void rx_compile_all(void);

static int rx_init(Rx *r, int which) {
    pthread_once(&rx_once, rx_compile_all);
    r->code = rx_code[which];
    r->md = r->code ? pcre2_match_data_create_from_pattern(r->code, NULL) : NULL;
    return r->code ? 0 : -1; // a bug in the patterns below; the unit tests would fail
}

static void rx_free(Rx *r) { pcre2_match_data_free(r->md); }

static int rx_match(Rx *r, const char *s) {
    return r->code && pcre2_match(r->code, (PCRE2_SPTR)s, PCRE2_ZERO_TERMINATED, 0, 0, r->md, NULL) > 0;
}

// Group g of the last match: start and length, or NULL when unset.
static const char *rx_group(Rx *r, const char *s, int g, size_t *len) {
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(r->md);
    if (g >= (int)pcre2_get_ovector_count(r->md) || ov[2 * g] == PCRE2_UNSET) return NULL;
    *len = ov[2 * g + 1] - ov[2 * g];
    return s + ov[2 * g];
}

static int rx_int(Rx *r, const char *s, int g) {
    size_t n;
    const char *p = rx_group(r, s, g, &n);
    if (!p || n == 0 || n > 3) return -1;
    return atoi(p);
}

static char rx_letter(Rx *r, const char *s, int g) {
    size_t n;
    const char *p = rx_group(r, s, g, &n);
    return p && n == 1 ? (char)toupper((unsigned char)*p) : 0;
}

// A letter A-E standing alone at the start of a text: "C", "(C)", "c.",
// "C) Paris", "C. Paris"; not "Cats" nor "C3".
#define RX_LETTER "\\(?([a-e])\\)?(?![a-z0-9])"
// "Q3", "Q 3", "Question 3", "#3".
#define RX_QNUM "(?:q(?:uestion)?\\s*#?\\s*|#)(\\d{1,3})"

// ---- quiz replies ----

// Answer lines: "Q1 Answer: C", "Answer: C", "Answer: (C)", "Correct answer: c",
// "Q1) Answer - C", "Answer to Q1: C", "The correct answer is C) Paris".
static const char *const rx_answer_src =
    "^(?:" RX_QNUM "\\s*[).:\\-]?\\s*|(\\d{1,3})\\s*[).:]\\s*)?"
    "(?:the\\s+)?(?:correct\\s+)?answer(?:\\s+(?:to|for)\\s+" RX_QNUM ")?"
    "\\s*(?:is\\b)?\\s*[:=\\-]?\\s*(?:is\\b)?\\s*" RX_LETTER;
// What starts like an answer line but gives no letter ("Q2 Answer: F",
// "Answer: Both"): never a question.
static const char *const rx_near_answer_src =
    "^(?:" RX_QNUM "\\s*[).:\\-]?\\s*|(\\d{1,3})\\s*[).:]\\s*)?(?:the\\s+)?(?:correct\\s+)?answer\\b";
// An answer key on one line: "Answers: 1-C, 2-A, 3-B, 4-E, 5-D",
// "Answer key: Q1) C Q2) A ...": the line's start, then each pair.
static const char *const rx_key_line_src = "^(?:the\\s+)?(?:correct\\s+)?answers?(?:\\s+key)?\\s*[:\\-]?\\s*";
static const char *const rx_key_pair_src = "(?:q(?:uestion)?\\s*)?(\\d{1,3})\\s*[-:.)=]\\s*" RX_LETTER;
// Question lines: "Q1) text", "Q1: text", "Q1. text", "Question 1 - text", "Q1 text",
// "1. text", "1) text"; the text may be empty (it is then on the next line).
static const char *const rx_question_src =
    "^(?:" RX_QNUM "\\s*[).:\\-]?|(\\d{1,3})\\s*[.)])(?:\\s+(.*))?$";
// Option lines: "A. text", "A) text", "(A) text", "a. text", "A: text", "A - text".
static const char *const rx_option_src = "^(?:\\(([a-e])\\)|([a-e])\\s*[.):]|([a-e])\\s+-)(?:\\s+(.*))?$";
// An option marked correct inline: "C. Paris (correct)", "C. Paris [correct answer]".
static const char *const rx_marked_src = "\\s*[(\\[]\\s*correct(?:\\s+answer)?\\s*[)\\]]\\s*$";
// The text of a question line that is really an answer in a key at the end:
// "Q1) C", "1. C) Paris".
static const char *const rx_letter_src = "^" RX_LETTER;

#define MAX_Q 64

typedef struct ParseQ {
    int num; // number the judge gave, or 0
    PqBuf text;
    char *choices[PQ_QUIZ_CHOICES];
    int n_options, dup_option;
    char answer, answer2; // answer2: a second, different answer
} ParseQ;

typedef struct QuizRx {
    Rx answer, near_answer, key_line, key_pair, question, option, marked, letter;
} QuizRx;

static ParseQ *find_q(ParseQ *qs, int n, int num) {
    for (int i = n - 1; i >= 0; i--)
        if (qs[i].num == num) return &qs[i];
    return NULL;
}

static void set_answer(ParseQ *q, char a) {
    if (!q->answer) q->answer = a;
    else if (q->answer != a) q->answer2 = a;
}

// The "N-X" pairs of a one-line answer key after its start (rx.key_line
// matched): applies them when there are at least two, returns how many.
static int key_pairs(QuizRx *rx, const char *line, ParseQ *qs, int nq, int *bad_answer_num) {
    PCRE2_SIZE at = pcre2_get_ovector_pointer(rx->key_line.md)[1];
    int num[64], n = 0;
    char letter[64];
    size_t len = strlen(line);
    while (n < 64 && at < len &&
           pcre2_match(rx->key_pair.code, (PCRE2_SPTR)line, len, at, 0, rx->key_pair.md, NULL) > 0) {
        num[n] = rx_int(&rx->key_pair, line, 1);
        letter[n++] = rx_letter(&rx->key_pair, line, 2);
        at = pcre2_get_ovector_pointer(rx->key_pair.md)[1];
    }
    if (n < 2) return n;
    for (int i = 0; i < n; i++) {
        ParseQ *q = find_q(qs, nq, num[i]);
        if (q) set_answer(q, letter[i]);
        else if (!*bad_answer_num) *bad_answer_num = num[i];
    }
    return n;
}

int pq_quiz_parse_reply(const char *reply, PqQuiz *out, PqErr *e) {
    memset(out, 0, sizeof *out);
    QuizRx rx;
    int bad_rx = rx_init(&rx.answer, PAT_ANSWER);
    bad_rx |= rx_init(&rx.near_answer, PAT_NEAR_ANSWER);
    bad_rx |= rx_init(&rx.key_line, PAT_KEY_LINE);
    bad_rx |= rx_init(&rx.key_pair, PAT_KEY_PAIR);
    bad_rx |= rx_init(&rx.question, PAT_QUESTION);
    bad_rx |= rx_init(&rx.option, PAT_OPTION);
    bad_rx |= rx_init(&rx.marked, PAT_MARKED);
    bad_rx |= rx_init(&rx.letter, PAT_LETTER);
    ParseQ *qs = pq_xcalloc(MAX_Q, sizeof *qs);
    int nq = 0, too_many = 0, bad_answer_num = 0;
    ParseQ *cur = NULL;
    const char *p = reply ? reply : "";
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        char *line = clean_line(p, n);
        p += n + (nl != NULL);
        size_t glen = 0;
        const char *g;
        if (!*line) {
        } else if (rx_match(&rx.answer, line)) {
            int num = rx_int(&rx.answer, line, 1);
            if (num < 0) num = rx_int(&rx.answer, line, 2);
            if (num < 0) num = rx_int(&rx.answer, line, 3);
            char a = rx_letter(&rx.answer, line, 4);
            ParseQ *q = num >= 0 ? find_q(qs, nq, num) : cur;
            if (q) set_answer(q, a);
            else if (num >= 0 && !bad_answer_num) bad_answer_num = num;
        } else if (rx_match(&rx.key_line, line) && key_pairs(&rx, line, qs, nq, &bad_answer_num) >= 2) {
            // an answer key on one line: applied by key_pairs
        } else if (rx_match(&rx.near_answer, line)) {
            // an answer line without a usable letter: the question stays unanswered
        } else if (rx_match(&rx.question, line)) {
            int num = rx_int(&rx.question, line, 1);
            if (num < 0) num = rx_int(&rx.question, line, 2);
            g = rx_group(&rx.question, line, 3, &glen);
            char *text = pq_xstrndup(g ? g : "", g ? glen : 0);
            ParseQ *seen = find_q(qs, nq, num);
            if (seen && seen->n_options > 0 && rx_match(&rx.letter, text)) {
                set_answer(seen, rx_letter(&rx.letter, text, 1)); // an answer key: "Q1) C"
            } else if (nq < MAX_Q) {
                cur = &qs[nq++];
                cur->num = num;
                pq_buf_puts(&cur->text, text);
            } else too_many = 1;
            free(text);
        } else if (cur && rx_match(&rx.option, line)) {
            char l = rx_letter(&rx.option, line, 1);
            if (!l) l = rx_letter(&rx.option, line, 2);
            if (!l) l = rx_letter(&rx.option, line, 3);
            g = rx_group(&rx.option, line, 4, &glen);
            char *text = pq_xstrndup(g ? g : "", g ? glen : 0);
            if (rx_match(&rx.marked, text)) {
                text[pcre2_get_ovector_pointer(rx.marked.md)[0]] = 0; // drop the mark
                set_answer(cur, l);
            }
            int k = l - 'A';
            if (cur->choices[k]) {
                cur->dup_option = cur->dup_option ? cur->dup_option : l;
                free(text);
            } else {
                cur->choices[k] = text;
                cur->n_options++;
            }
        } else if (cur && cur->n_options == 0) {
            // the question's text, or its continuation
            if (cur->text.len) pq_buf_puts(&cur->text, " ");
            pq_buf_puts(&cur->text, line);
        }
        free(line);
    }
    int rc = -1;
    if (bad_rx) { // not reached with the patterns above (the unit tests compile them)
        pq_err(e, "internal error: bad quiz pattern");
        goto done;
    }
    if (nq != PQ_QUIZ_QUESTIONS || too_many) {
        pq_err(e, "found %d%s questions, need %d", nq, too_many ? "+" : "", PQ_QUIZ_QUESTIONS);
        goto done;
    }
    for (int i = 0; i < nq; i++) {
        ParseQ *q = &qs[i];
        if (q->text.len == 0) {
            pq_err(e, "question %d has no text", i + 1);
            goto done;
        }
        if (q->dup_option) {
            pq_err(e, "question %d has option %c twice", i + 1, q->dup_option);
            goto done;
        }
        if (q->n_options != PQ_QUIZ_CHOICES) {
            pq_err(e, "question %d has %d option%s, need %d (A-E)", i + 1, q->n_options, q->n_options == 1 ? "" : "s",
                   PQ_QUIZ_CHOICES);
            goto done;
        }
        for (int k = 0; k < PQ_QUIZ_CHOICES; k++)
            if (!q->choices[k][0]) {
                pq_err(e, "question %d option %c is empty", i + 1, 'A' + k);
                goto done;
            }
        if (!q->answer) {
            pq_err(e, "no answer for question %d", i + 1);
            goto done;
        }
        if (q->answer2) {
            pq_err(e, "question %d has two answers (%c and %c)", i + 1, q->answer, q->answer2);
            goto done;
        }
    }
    if (bad_answer_num) {
        pq_err(e, "answer for question %d, which does not exist", bad_answer_num);
        goto done;
    }
    for (int i = 0; i < nq; i++) {
        out->q[i].question = pq_xstrdup(qs[i].text.data);
        for (int k = 0; k < PQ_QUIZ_CHOICES; k++) {
            out->q[i].choices[k] = qs[i].choices[k];
            qs[i].choices[k] = NULL;
        }
        out->q[i].answer = qs[i].answer;
    }
    out->n = nq;
    rc = 0;
done:
    for (int i = 0; i < MAX_Q; i++) {
        pq_buf_free(&qs[i].text);
        for (int k = 0; k < PQ_QUIZ_CHOICES; k++) free(qs[i].choices[k]);
    }
    free(qs);
    rx_free(&rx.answer);
    rx_free(&rx.near_answer);
    rx_free(&rx.key_line);
    rx_free(&rx.key_pair);
    rx_free(&rx.question);
    rx_free(&rx.option);
    rx_free(&rx.marked);
    rx_free(&rx.letter);
    return rc;
}

void pq_quiz_shuffle(PqQuiz *q, uint64_t seed) {
    PqRng r;
    pq_rng_seed(&r, seed);
    int order[PQ_QUIZ_QUESTIONS];
    for (int i = 0; i < q->n; i++) order[i] = i;
    pq_rng_shuffle_int(&r, order, q->n);
    PqQuestion old[PQ_QUIZ_QUESTIONS];
    memcpy(old, q->q, sizeof old);
    for (int i = 0; i < q->n; i++) q->q[i] = old[order[i]];
    for (int i = 0; i < q->n; i++) {
        PqQuestion *x = &q->q[i];
        int perm[PQ_QUIZ_CHOICES];
        for (int k = 0; k < PQ_QUIZ_CHOICES; k++) perm[k] = k;
        pq_rng_shuffle_int(&r, perm, PQ_QUIZ_CHOICES);
        char *choices[PQ_QUIZ_CHOICES];
        char answer = x->answer;
        for (int k = 0; k < PQ_QUIZ_CHOICES; k++) {
            choices[k] = x->choices[perm[k]];
            if (perm[k] == answer - 'A') x->answer = (char)('A' + k);
        }
        memcpy(x->choices, choices, sizeof choices);
    }
}

cJSON *pq_quiz_to_json(const PqQuiz *q) {
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; i < q->n; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "question", q->q[i].question);
        cJSON *c = cJSON_AddArrayToObject(o, "choices");
        for (int k = 0; k < PQ_QUIZ_CHOICES; k++) cJSON_AddItemToArray(c, cJSON_CreateString(q->q[i].choices[k]));
        char a[2] = {q->q[i].answer, 0};
        cJSON_AddStringToObject(o, "answer", a);
        cJSON_AddItemToArray(arr, o);
    }
    return arr;
}

int pq_quiz_from_json(const cJSON *questions, PqQuiz *out, PqErr *e) {
    memset(out, 0, sizeof *out);
    if (!cJSON_IsArray(questions)) {
        pq_err(e, "\"questions\" is not an array");
        return -1;
    }
    int n = cJSON_GetArraySize(questions);
    if (n != PQ_QUIZ_QUESTIONS) {
        pq_err(e, "\"questions\" has %d questions, need %d", n, PQ_QUIZ_QUESTIONS);
        return -1;
    }
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, questions) {
        const cJSON *qt = cJSON_GetObjectItemCaseSensitive(it, "question");
        const cJSON *ch = cJSON_GetObjectItemCaseSensitive(it, "choices");
        const cJSON *an = cJSON_GetObjectItemCaseSensitive(it, "answer");
        if (!cJSON_IsString(qt)) {
            pq_err(e, "question %d: no \"question\" string", i + 1);
            goto fail;
        }
        if (!cJSON_IsArray(ch) || cJSON_GetArraySize(ch) != PQ_QUIZ_CHOICES) {
            pq_err(e, "question %d: \"choices\" is not an array of %d strings", i + 1, PQ_QUIZ_CHOICES);
            goto fail;
        }
        if (!cJSON_IsString(an) || strlen(an->valuestring) != 1 || an->valuestring[0] < 'A' ||
            an->valuestring[0] > 'E') {
            pq_err(e, "question %d: \"answer\" is not a letter A-E", i + 1);
            goto fail;
        }
        PqQuestion *x = &out->q[i];
        int k = 0;
        const cJSON *c;
        cJSON_ArrayForEach(c, ch) {
            if (!cJSON_IsString(c)) {
                pq_err(e, "question %d: choice %c is not a string", i + 1, 'A' + k);
                goto fail;
            }
            x->choices[k++] = pq_xstrdup(c->valuestring);
        }
        x->question = pq_xstrdup(qt->valuestring);
        x->answer = an->valuestring[0];
        out->n = ++i;
    }
    return 0;
fail:
    out->n = PQ_QUIZ_QUESTIONS; // free whatever was filled (unfilled slots are NULL)
    pq_quiz_free(out);
    return -1;
}

char *pq_quiz_render(const PqQuiz *q) {
    PqBuf b = {0};
    pq_buf_puts(&b, "");
    for (int i = 0; i < q->n; i++) {
        if (i) pq_buf_puts(&b, "\n");
        pq_buf_printf(&b, "Q%d) %s\n", i + 1, q->q[i].question);
        for (int k = 0; k < PQ_QUIZ_CHOICES; k++) pq_buf_printf(&b, "%c. %s\n", 'A' + k, q->q[i].choices[k]);
    }
    return b.data;
}

void pq_quiz_free(PqQuiz *q) {
    for (int i = 0; i < q->n && i < PQ_QUIZ_QUESTIONS; i++) {
        free(q->q[i].question);
        for (int k = 0; k < PQ_QUIZ_CHOICES; k++) free(q->q[i].choices[k]);
    }
    memset(q, 0, sizeof *q);
}

// ---- answer replies ----

// "Q3) B", "Q3: b", "Q3 - B", "3) B", "3. B", "Question 3: B", "Q3) Answer: B",
// "Answer to Q3: B", "Q3 answer: B", "Q3) The answer is B", "Q3) Option B";
// the rest of the line is judged by rx_letter / "unsure".
static const char *const rx_reply_src =
    "^(?:(?:the\\s+)?answer\\s+(?:to|for)\\s+" RX_QNUM "|" RX_QNUM "(?:\\s+answer)?|(\\d{1,3})(?=\\s*[).:]))"
    "\\s*[).:=\\-]?\\s*(?:(?:the\\s+)?(?:correct\\s+)?answer\\s*(?:is\\b)?\\s*[:=\\-]?)?\\s*(?:option\\s+)?(.*)$";

// "Unsure" as the first word of an answer.
static const char *const rx_unsure_src = "^unsure(?![a-z0-9])";

static void rx_compile_all(void) {
    const char *src[PAT_N] = {rx_answer_src, rx_near_answer_src, rx_key_line_src, rx_key_pair_src, rx_question_src,
                              rx_option_src, rx_marked_src, rx_letter_src, rx_reply_src, rx_unsure_src};
    for (int i = 0; i < PAT_N; i++) {
        int err;
        PCRE2_SIZE off;
        rx_code[i] = pcre2_compile((PCRE2_SPTR)src[i], PCRE2_ZERO_TERMINATED, PCRE2_CASELESS, &err, &off, NULL);
    }
}

int pq_answers_parse(const char *reply, int n_questions, char *answers) {
    for (int i = 0; i < n_questions; i++) answers[i] = 'U';
    Rx line_rx, letter_rx, unsure_rx;
    int ok = rx_init(&line_rx, PAT_REPLY) == 0;
    ok &= rx_init(&letter_rx, PAT_LETTER) == 0;
    ok &= rx_init(&unsure_rx, PAT_UNSURE) == 0;
    const char *p = reply ? reply : "";
    while (ok && *p) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        char *line = clean_line(p, n);
        p += n + (nl != NULL);
        if (rx_match(&line_rx, line)) {
            int num = rx_int(&line_rx, line, 1);
            if (num < 0) num = rx_int(&line_rx, line, 2);
            if (num < 0) num = rx_int(&line_rx, line, 3);
            size_t glen;
            const char *g = rx_group(&line_rx, line, 4, &glen);
            char *rest = clean_line(g ? g : "", g ? glen : 0);
            // The last line that gives a letter or Unsure for a question wins
            // (judges that reason first put their final answers last).
            if (num >= 1 && num <= n_questions) {
                if (rx_match(&letter_rx, rest)) answers[num - 1] = rx_letter(&letter_rx, rest, 1);
                else if (rx_match(&unsure_rx, rest)) answers[num - 1] = 'U';
            }
            free(rest);
        }
        free(line);
    }
    rx_free(&line_rx);
    rx_free(&letter_rx);
    rx_free(&unsure_rx);
    int got = 0;
    for (int i = 0; i < n_questions; i++) got += answers[i] != 'U';
    return got;
}

int pq_answers_parse_strict(const char *reply, int n_questions, char *answers) {
    for (int i = 0; i < n_questions; i++) answers[i] = 'U';
    const char *p = reply ? reply : "";
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p), len;
        const char *s = pq_strip_space(p, n, &len);
        p += n + (nl != NULL);
        size_t i = 1;
        long num = 0;
        if (len < 3 || s[0] != 'Q') continue;
        for (; i < len && s[i] >= '0' && s[i] <= '9'; i++)
            if (num <= 1000000) num = num * 10 + (s[i] - '0');
        if (i == 1 || i >= len || s[i] != ')' || num < 1 || num > n_questions) continue;
        i++;
        size_t rl;
        const char *r = pq_strip_space(s + i, len - i, &rl); // the line has no trailing whitespace left
        if (rl >= 1 && r[0] >= 'A' && r[0] <= 'E' &&
            (rl == 1 || !((r[1] >= '0' && r[1] <= '9') || (r[1] >= 'A' && r[1] <= 'Z') || (r[1] >= 'a' && r[1] <= 'z'))))
            answers[num - 1] = r[0];
        else if (rl >= 6 && !strncmp(r, "Unsure", 6))
            answers[num - 1] = 'U';
    }
    int got = 0;
    for (int i = 0; i < n_questions; i++) got += answers[i] != 'U';
    return got;
}

// ---- counts ----

// Whitespace as Python's str.split() sees it: ASCII \t\n\v\f\r, space,
// \x1c-\x1f, and the Unicode separators (Zs, Zl, Zp) and U+0085.
static int is_space_cp(int32_t c) {
    if (c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f) || c == 0x85) return 1;
    if (c < 0x80) return 0;
    utf8proc_category_t cat = utf8proc_category(c);
    return cat == UTF8PROC_CATEGORY_ZS || cat == UTF8PROC_CATEGORY_ZL || cat == UTF8PROC_CATEGORY_ZP;
}

const char *pq_strip_space(const char *s, size_t n, size_t *len) {
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
    size_t a = 0, b = 0; // kept: [a, b)
    int seen = 0;
    for (size_t i = 0; i < n;) {
        int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate(p + i, (utf8proc_ssize_t)(n - i), &c);
        if (k <= 0) k = 1, c = -1; // an invalid byte is kept
        if (!is_space_cp(c)) {
            if (!seen) a = i, seen = 1;
            b = i + (size_t)k;
        }
        i += (size_t)k;
    }
    *len = seen ? b - a : 0;
    return s + (seen ? a : n);
}

int pq_count_words(const char *s) {
    int words = 0, in_word = 0;
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
    utf8proc_ssize_t left = (utf8proc_ssize_t)strlen(s);
    while (left > 0) {
        int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate(p, left, &c);
        if (k <= 0) k = 1, c = -1; // an invalid byte is part of a word
        if (is_space_cp(c)) in_word = 0;
        else if (!in_word) in_word = 1, words++;
        p += k;
        left -= k;
    }
    return words;
}

static int good_cp(int32_t c) {
    if (c < 0x80) // ASCII letter, digit, whitespace (\t\n\v\f\r, space) or punctuation (!..~ less alnum)
        return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == ' ' ||
               (c >= '\t' && c <= '\r') || (c >= '!' && c <= '~');
    switch (c) {
    case 0x2019: case 0x2018: case 0x2013: case 0x2014: case 0x201C: case 0x201D: // ’ ‘ – — “ ”
    case 0x2026: case 0x2122: case 0x00B0: case 0x00C6: case 0x00E6:              // … ™ ° Æ æ
    case 0x00A3: case 0x20AC:                                                      // £ €
        return 1;
    default: return 0;
    }
}

int pq_count_bad_chars(const char *s) {
    int bad = 0;
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
    utf8proc_ssize_t left = (utf8proc_ssize_t)strlen(s);
    while (left > 0) {
        int32_t c, d[32];
        utf8proc_ssize_t k = utf8proc_iterate(p, left, &c);
        if (k <= 0) { // an invalid byte: one bad character per byte
            bad++;
            p++, left--;
            continue;
        }
        // NFD, then drop what has a nonzero canonical combining class (as
        // Python's unicodedata.combining() sees it, the method's own test):
        // not every mark (STRIPMARK drops all of Mn, Mc, Me), so U+FE0F,
        // U+20E3, U+0903 ... stay and count.
        int lbc = 0;
        utf8proc_ssize_t nd = utf8proc_decompose_char(c, d, 32, UTF8PROC_DECOMPOSE, &lbc);
        if (nd < 0 || nd > 32) bad++; // cannot happen for valid code points (NFD is at most 4 long)
        else
            for (utf8proc_ssize_t i = 0; i < nd; i++)
                bad += utf8proc_get_property(d[i])->combining_class == 0 && !good_cp(d[i]);
        p += k;
        left -= k;
    }
    return bad;
}
