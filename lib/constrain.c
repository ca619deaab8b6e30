// constrain.c: the grammars of constrained decoding (quiz, answers, ASCII)
// as character state machines, the table of token texts, and the logit
// mask that keeps only tokens whose text fits (see constrain.h).
#include "constrain.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

int pq_constrain_mode(const char *name) {
    static const char *const names[] = {"none", "quiz", "answers", "ascii", "summary"};
    for (int i = 0; i < 5; i++)
        if (!strcmp(name, names[i])) return i;
    return -1;
}

// ---- the grammars ----
//
// Quiz, per question q (1-based number n = q + 1), segments:
//   0 "Qn) "  1 text  2 "\n"  then for each option o = A..E:
//   3+3i "o. "  4+3i text  5+3i "\n"  (i = 0..4)
//   18 "\nQn Answer: "  19 a letter A-E  20 "\n\n" (last question: an
//   optional "\n", 21 the end).
// Answers, per question: 0 "Qn) "  1 a letter A-E or "Unsure"  2 "\n"
//   (last question: optional, 3 the end).

enum { SEG_LIT, SEG_TEXT, SEG_LETTER, SEG_CHOICE, SEG_END };

typedef struct Seg {
    int type;
    char lit[24];
    int len; // literal length, or the text's maximum
} Seg;

static int last_q(const PqCState *s) { return s->q == s->nq - 1; }

// Writes "<a><n><b>" into lit (no printf: this runs for every character of
// every candidate token); returns its length.
static int lit3(char *lit, const char *a, int n, const char *b) {
    int k = 0;
    while (*a) lit[k++] = *a++;
    if (n >= 10) lit[k++] = (char)('0' + n / 10);
    lit[k++] = (char)('0' + n % 10);
    while (*b) lit[k++] = *b++;
    lit[k] = 0;
    return k;
}

static Seg seg_of(const PqCState *s) {
    Seg g;
    g.type = SEG_LIT;
    g.len = 0;
    int n = s->q + 1, k = s->seg;
    if (s->mode == PQ_CONSTRAIN_QUIZ) {
        if (k == 0) g.len = lit3(g.lit, "Q", n, ") ");
        else if (k == 1) g.type = SEG_TEXT, g.len = PQ_CONSTRAIN_QUESTION_MAX;
        else if (k == 2) g.lit[0] = '\n', g.len = 1;
        else if (k < 18) {
            int i = (k - 3) / 3;
            if ((k - 3) % 3 == 0) g.lit[0] = (char)('A' + i), g.lit[1] = '.', g.lit[2] = ' ', g.len = 3;
            else if ((k - 3) % 3 == 1) g.type = SEG_TEXT, g.len = PQ_CONSTRAIN_OPTION_MAX;
            else g.lit[0] = '\n', g.len = 1;
        } else if (k == 18) g.len = lit3(g.lit, "\nQ", n, " Answer: ");
        else if (k == 19) g.type = SEG_LETTER;
        else if (k == 20) g.lit[0] = g.lit[1] = '\n', g.len = last_q(s) ? 1 : 2;
        else g.type = SEG_END;
    } else {
        if (k == 0) g.len = lit3(g.lit, "Q", n, ") ");
        else if (k == 1) g.type = SEG_CHOICE;
        else if (k == 2) g.lit[0] = '\n', g.len = 1;
        else g.type = SEG_END;
    }
    return g;
}

static int n_segs(const PqCState *s) { return s->mode == PQ_CONSTRAIN_QUIZ ? 21 : 3; }

static void next_seg(PqCState *s) {
    s->off = 0;
    s->seg++;
    if (s->seg == n_segs(s) && !last_q(s)) s->q++, s->seg = 0;
}

static int is_alnum(int c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }

// Characters of question and option text: no newline, no ')' or ':' (the
// parser's markers), starting with a letter, digit or quote.
static int text_char(int c, int at_start) {
    if (is_alnum(c) || c == '"') return 1;
    if (at_start) return 0;
    return c == ' ' || (c && strchr(",.'?!-%$&/;+", c) != NULL);
}

void pq_cstate_init(PqCState *s, int mode, int n_questions) {
    memset(s, 0, sizeof *s);
    s->mode = (int8_t)mode;
    if (n_questions < 1) n_questions = 1;
    if (n_questions > (mode == PQ_CONSTRAIN_QUIZ ? 9 : 99)) n_questions = mode == PQ_CONSTRAIN_QUIZ ? 9 : 99;
    s->nq = (int8_t)n_questions;
}

static int feed_char(PqCState *s, int c) {
    if (s->mode == PQ_CONSTRAIN_NONE) return 0;
    if (s->mode == PQ_CONSTRAIN_ASCII) return (c >= 0x20 && c < 0x7f) || c == '\n' || c == '\t' ? 0 : -1;
    if (s->mode == PQ_CONSTRAIN_SUMMARY) {
        if (c == ' ') {
            if (s->off == 0) return -1; // no leading or double space
            if (s->q < 100) s->q++;
            s->off = 0;
            return 0;
        }
        if (c <= 0x20 || c >= 0x7f || s->off >= PQ_CONSTRAIN_WORD_MAX) return -1;
        s->off++;
        return 0;
    }
    for (;;) {
        int k = s->seg;
        if (s->mode == PQ_CONSTRAIN_QUIZ && (k == 1 || (k >= 3 && k < 18 && (k - 3) % 3 == 1))) {
            int max = k == 1 ? PQ_CONSTRAIN_QUESTION_MAX : PQ_CONSTRAIN_OPTION_MAX; // a text: the common case
            if (s->off < max && text_char(c, s->off == 0)) {
                s->off++;
                return 0;
            }
            if (s->off == 0) return -1;
            next_seg(s);
            continue;
        }
        Seg g = seg_of(s);
        switch (g.type) {
        case SEG_LIT:
            if (c != g.lit[s->off]) return -1;
            if (++s->off == g.len) next_seg(s);
            return 0;
        case SEG_TEXT:
            if (s->off < g.len && text_char(c, s->off == 0)) {
                s->off++;
                return 0;
            }
            if (s->off == 0) return -1;
            next_seg(s); // the text ends here: c belongs to what follows
            continue;
        case SEG_LETTER:
            if (c < 'A' || c > 'E') return -1;
            next_seg(s);
            return 0;
        case SEG_CHOICE:
            if (s->off == 0) {
                if (c >= 'A' && c <= 'E') next_seg(s);
                else if (c == 'U') s->off = 1;
                else return -1;
                return 0;
            }
            if (c != "Unsure"[s->off]) return -1;
            if (++s->off == 6) next_seg(s);
            return 0;
        default: return -1;
        }
    }
}

int pq_cstate_feed(PqCState *s, const char *bytes, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (feed_char(s, (unsigned char)bytes[i])) return -1;
    return 0;
}

int pq_cstate_done(const PqCState *s) {
    if (s->mode == PQ_CONSTRAIN_NONE || s->mode == PQ_CONSTRAIN_ASCII) return 1;
    if (s->mode == PQ_CONSTRAIN_SUMMARY) return s->off > 0 && s->q + 1 >= PQ_CONSTRAIN_MIN_WORDS;
    if (!last_q(s)) return 0;
    if (s->mode == PQ_CONSTRAIN_QUIZ) return s->seg >= 20 && (s->seg > 20 || s->off == 0);
    return s->seg >= 2 && (s->seg > 2 || s->off == 0);
}

// Fewest characters segment k of question number n needs from off.
static int seg_min(int mode, int n, int last, int k, int off) {
    int d = n >= 10;
    if (mode == PQ_CONSTRAIN_QUIZ) {
        if (k == 0) return 4 + d - off;
        if (k == 18) return 12 + d - off;
        if (k == 20) return last ? 0 : 2 - off;
        if (k >= 3 && k < 18 && (k - 3) % 3 == 0) return 3 - off;
        if (k == 2 || (k >= 3 && k < 18 && (k - 3) % 3 == 2)) return 1 - off;
        return off ? 0 : 1; // a text or the letter
    }
    if (k == 0) return 4 + d - off;
    if (k == 1) return off ? 6 - off : 1;
    if (k == 2) return last ? 0 : 1 - off;
    return 0;
}

// Fewest characters from segment seg (off characters into it) to the end
// of question q (the last question's optional newline not counted).
static int question_left(const PqCState *s, int q, int seg, int off) {
    int sum = 0, last = q == s->nq - 1, end = n_segs(s);
    for (int k = seg; k < end; k++) sum += seg_min(s->mode, q + 1, last, k, k == seg ? off : 0);
    return sum;
}

int pq_cstate_min_left(const PqCState *s) {
    if (pq_cstate_done(s)) return 0;
    if (s->mode == PQ_CONSTRAIN_SUMMARY) { // each missing word: a space and a character
        int words = s->q + (s->off > 0), more = PQ_CONSTRAIN_MIN_WORDS - words;
        if (s->off > 0) return 2 * more;
        return more > 0 ? 2 * more - 1 : 1;
    }
    int sum = question_left(s, s->q, s->seg, s->off);
    for (int q = s->q + 1; q < s->nq; q++) { // whole questions, in closed form
        int d = q + 1 >= 10, last = q == s->nq - 1;
        sum += s->mode == PQ_CONSTRAIN_QUIZ ? 4 + d + 2 + 5 * 5 + 12 + d + 1 + (last ? 0 : 2) : 4 + d + 1 + !last;
    }
    return sum;
}

// ---- token texts ----

// 1: every character may continue a question or option text; 2: and the
// first may also start one.
static unsigned char all_text(const char *p, int n) {
    if (n == 0) return 0;
    for (int i = 0; i < n; i++)
        if (!text_char((unsigned char)p[i], 0)) return 0;
    return text_char((unsigned char)p[0], 1) ? 2 : 1;
}

static void set_text(char **dst, int *dlen, const char *p, size_t n) {
    *dst = pq_xmalloc(n + 1);
    memcpy(*dst, p, n);
    (*dst)[n] = 0;
    *dlen = (int)n;
}

PqTokText *pq_tok_text_build(const PqTokenizer *tok, int V) {
    PqTokText *t = pq_xcalloc(1, sizeof *t);
    t->V = V;
    t->text = pq_xcalloc((size_t)V, sizeof *t->text);
    t->first = pq_xcalloc((size_t)V, sizeof *t->first);
    t->len = pq_xcalloc((size_t)V, sizeof *t->len);
    t->first_len = pq_xcalloc((size_t)V, sizeof *t->first_len);
    t->special = pq_xcalloc((size_t)V, 1);
    t->all_text = pq_xcalloc((size_t)V, 1);
    t->first_all_text = pq_xcalloc((size_t)V, 1);
    // Leading spaces the decoder strips from a reply's first token.
    int strip = 0;
    for (int k = 0; k < tok->n_dec; k++) {
        const TokDecOp *op = &tok->dec[k];
        if (op->type == TOK_DEC_STRIP && op->strip_char == ' ') strip = op->start;
        if (op->type == TOK_DEC_METASPACE && op->prepend) strip = 1;
    }
    int32_t inv[0x400];
    for (int i = 0; i < 0x400; i++) inv[i] = -1;
    for (int b = 0; b < 256; b++)
        if (tok->byte_char[b] < 0x400) inv[tok->byte_char[b]] = b;
    PqBuf b = {0};
    for (int id = 0; id < V; id++) {
        pq_buf_clear(&b);
        const char *s = id < tok->n_vocab ? tok->tok_str[id] : NULL;
        size_t n = s ? tok->tok_len[id] : 0;
        if (s && tok->tok_special[id]) t->special[id] = 1;
        else if (s && tok->byte_level) {
            for (size_t i = 0; i < n;) {
                uint32_t cp;
                int l = tok_utf8_len(s, n, i) ? tok_utf8_decode(s, n, i, &cp) : 0;
                if (!l) break;
                if (cp < 0x400 && inv[cp] >= 0) {
                    char c = (char)inv[cp];
                    pq_buf_append(&b, &c, 1);
                } else pq_buf_append(&b, s + i, (size_t)l); // an added token's plain text
                i += (size_t)l;
            }
        } else if (s) {
            unsigned v;
            char tail;
            if (tok->byte_fallback && n == 6 && sscanf(s, "<0x%2X>%c", &v, &tail) == 1) {
                char c = (char)v;
                pq_buf_append(&b, &c, 1);
            } else
                for (size_t i = 0; i < n;) {
                    if (i + 3 <= n && !memcmp(s + i, "\xe2\x96\x81", 3)) pq_buf_append(&b, " ", 1), i += 3;
                    else pq_buf_append(&b, s + i, 1), i++;
                }
        }
        set_text(&t->text[id], &t->len[id], b.data ? b.data : "", b.len);
        size_t skip = 0;
        while ((int)skip < strip && skip < b.len && b.data[skip] == ' ') skip++;
        set_text(&t->first[id], &t->first_len[id], b.data ? b.data + skip : "", b.len - skip);
        t->all_text[id] = all_text(t->text[id], t->len[id]);
        t->first_all_text[id] = all_text(t->first[id], t->first_len[id]);
    }
    pq_buf_free(&b);
    return t;
}

void pq_tok_text_free(PqTokText *t) {
    if (!t) return;
    for (int i = 0; i < t->V; i++) free(t->text[i]), free(t->first[i]);
    free(t->text);
    free(t->first);
    free(t->len);
    free(t->first_len);
    free(t->special);
    free(t->all_text);
    free(t->first_all_text);
    free(t);
}

// ---- the mask ----

// Masks logits (when not NULL: a -INFINITY logit stays out) and sets the bits of the allowed tokens (when not
// NULL: V bits, cleared first). Returns how many are allowed.
#define ALLOW(v) (allowed++, bits ? (void)(bits[(v) >> 5] |= 1u << ((v) & 31)) : (void)0)
#define DENY(v) (logits ? (void)(logits[v] = -INFINITY) : (void)0)
static int scan(const PqTokText *tt, const PqCState *s, int first, int left, const int32_t *eos, int n_eos,
                float *logits, uint32_t *bits) {
    if (bits) memset(bits, 0, PQ_CONSTRAIN_WORDS(tt->V) * sizeof *bits);
    int done = pq_cstate_done(s), allowed = 0;
    // the characters that may come next: a token starting otherwise is out at once
    unsigned char next[256];
    for (int c = 0; c < 256; c++) {
        PqCState t = *s;
        char ch = (char)c;
        next[c] = c > 0 && !feed_char(&t, (unsigned char)ch);
    }
    // Feeding a token raises the characters left by at most 5 ("U" of
    // "Unsure"): far from the budget, no need to count.
    int check = left - 1 < pq_cstate_min_left(s) + 8;
    int k = s->seg, text_max = 0;
    if (s->mode == PQ_CONSTRAIN_QUIZ && (k == 1 || (k >= 3 && k < 18 && (k - 3) % 3 == 1)))
        text_max = k == 1 ? PQ_CONSTRAIN_QUESTION_MAX : PQ_CONSTRAIN_OPTION_MAX;
    // what a text token leaves to write: the text is no longer empty
    int text_left = check ? pq_cstate_min_left(s) - (s->off == 0) : 0;
    for (int v = 0; v < tt->V; v++) {
        if (logits && logits[v] == -INFINITY) continue;
        int is_eos = 0;
        for (int k = 0; k < n_eos; k++) is_eos |= eos[k] == v;
        if (is_eos) {
            if (done) ALLOW(v);
            else DENY(v);
            continue;
        }
        const char *p = first ? tt->first[v] : tt->text[v];
        int n = first ? tt->first_len[v] : tt->len[v];
        PqCState c = *s;
        if (text_max && (first ? tt->first_all_text[v] : tt->all_text[v]) > (s->off == 0) && s->off + n <= text_max) {
            // inside a text, a token of text characters only: it fits (the common case, no feeding)
            if (check && text_left > left - 1) DENY(v);
            else ALLOW(v);
            continue;
        }
        if (tt->special[v] || n == 0 || !next[(unsigned char)p[0]] || pq_cstate_feed(&c, p, (size_t)n) ||
            (check && pq_cstate_min_left(&c) > left - 1)) {
            DENY(v);
            continue;
        }
        ALLOW(v);
    }
    return allowed;
}
#undef ALLOW
#undef DENY

int pq_constrain_mask(const PqTokText *tt, const PqCState *s, int first, int left, const int32_t *eos, int n_eos,
                      float *logits) {
    return scan(tt, s, first, left, eos, n_eos, logits, NULL);
}

int pq_constrain_bits(const PqTokText *tt, const PqCState *s, int first, int left, const int32_t *eos, int n_eos,
                      uint32_t *bits) {
    return scan(tt, s, first, left, eos, n_eos, NULL, bits);
}
