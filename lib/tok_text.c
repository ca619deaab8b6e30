// tok_text.c: the text side of the tokenizer: UTF-8, normalizers (utf8proc)
// and pre-tokenizers (the split regex run by PCRE2), as tokenizers does them.
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tok_internal.h"

// ---- UTF-8 -----------------------------------------------------------------

// Length of the sequence at s[i]: the whole character when valid (*valid =
// 1), else the maximal subpart of a valid sequence (at least 1 byte), which
// from_utf8_lossy replaces by one U+FFFD.
static int utf8_scan(const unsigned char *s, size_t n, size_t i, int *valid) {
    unsigned c = s[i];
    int need;
    unsigned lo = 0x80, hi = 0xBF;
    *valid = 0;
    if (c < 0x80) {
        *valid = 1;
        return 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
        need = 1;
    } else if (c == 0xE0) {
        need = 2, lo = 0xA0;
    } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
        need = 2;
    } else if (c == 0xED) {
        need = 2, hi = 0x9F;
    } else if (c == 0xF0) {
        need = 3, lo = 0x90;
    } else if (c >= 0xF1 && c <= 0xF3) {
        need = 3;
    } else if (c == 0xF4) {
        need = 3, hi = 0x8F;
    } else {
        return 1;
    }
    if (i + 1 >= n || s[i + 1] < lo || s[i + 1] > hi) return 1;
    int k = 2;
    while (k <= need && i + k < n && s[i + k] >= 0x80 && s[i + k] <= 0xBF) k++;
    if (k == need + 1) *valid = 1;
    return k;
}

int tok_utf8_len(const char *s, size_t n, size_t i) {
    int valid, k = utf8_scan((const unsigned char *)s, n, i, &valid);
    return valid ? k : 0;
}

int tok_utf8_decode(const char *s, size_t n, size_t i, uint32_t *cp) {
    const unsigned char *u = (const unsigned char *)s;
    int valid, k = utf8_scan(u, n, i, &valid);
    if (!valid) {
        *cp = 0xFFFD;
        return k;
    }
    uint32_t c = u[i];
    if (k == 1) *cp = c;
    else if (k == 2) *cp = ((c & 0x1F) << 6) | (u[i + 1] & 0x3F);
    else if (k == 3) *cp = ((c & 0x0F) << 12) | ((u[i + 1] & 0x3F) << 6) | (u[i + 2] & 0x3F);
    else *cp = ((c & 0x07) << 18) | ((u[i + 1] & 0x3F) << 12) | ((u[i + 2] & 0x3F) << 6) | (u[i + 3] & 0x3F);
    return k;
}

int tok_utf8_encode(uint32_t cp, char *out) {
    return (int)utf8proc_encode_char((utf8proc_int32_t)cp, (utf8proc_uint8_t *)out);
}

int tok_utf8_lossy(const char *s, size_t n, PqBuf *out) {
    const unsigned char *u = (const unsigned char *)s;
    int all = 1;
    size_t i = 0, run = 0; // run: start of the pending valid stretch
    pq_buf_reserve(out, n);
    while (i < n) {
        int valid, k = utf8_scan(u, n, i, &valid);
        if (!valid) {
            pq_buf_append(out, s + run, i - run);
            pq_buf_append(out, "\xEF\xBF\xBD", 3);
            all = 0;
            run = i + (size_t)k;
        }
        i += (size_t)k;
    }
    pq_buf_append(out, s + run, n - run);
    return all;
}

// White_Space = the separators (Zs, Zl, Zp) and the controls TAB..CR, NEL.
int tok_is_white_space(uint32_t cp) {
    if ((cp >= 0x09 && cp <= 0x0D) || cp == 0x85) return 1;
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return c == UTF8PROC_CATEGORY_ZS || c == UTF8PROC_CATEGORY_ZL || c == UTF8PROC_CATEGORY_ZP;
}

// Rust's char::is_numeric: general categories Nd, Nl, No.
static int is_numeric(uint32_t cp) {
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for
// themselves, the others are shifted to U+0100 and up, in byte order.
void tok_bytes_to_unicode(uint32_t map[256]) {
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        map[b] = printable ? b : next++;
    }
}

// ---- regex -------------------------------------------------------------------

pcre2_code *tok_regex_compile(const char *pattern, size_t len, PqErr *e) {
    int err;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, len, PCRE2_UTF | PCRE2_UCP, &err, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        pq_err(e, "regex /%.*s/ does not compile at offset %zu: %s", (int)(len > 200 ? 200 : len), pattern,
               (size_t)off, (char *)msg);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); // falls back to the interpreter if JIT is unavailable
    return re;
}

// Non-overlapping matches left to right, as the find_iter of the regex
// crates: an empty match right after the previous match is skipped.
int tok_regex_find_all(const pcre2_code *re, const char *s, size_t n, size_t **m, size_t *cap, PqErr *e) {
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    size_t last_end = 0, count = 0;
    long last_match_end = -1;
    int rc = 0;
    while (last_end <= n) {
        rc = pcre2_match(re, (PCRE2_SPTR)s, n, last_end, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
            rc = pcre2_match(re, (PCRE2_SPTR)s, n, last_end, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            pq_err(e, "regex match failed: %s", (char *)msg);
            pcre2_match_data_free(md);
            return -1;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (ms == me && last_match_end == (long)me) {
            if (last_end >= n) break;
            int k = tok_utf8_len(s, n, last_end);
            last_end += k ? (size_t)k : 1;
            continue;
        }
        last_end = me;
        last_match_end = (long)me;
        if (2 * count + 2 > *cap) {
            *cap = *cap ? 2 * *cap : 64;
            *m = pq_xrealloc(*m, *cap * sizeof **m);
        }
        (*m)[2 * count] = ms;
        (*m)[2 * count + 1] = me;
        count++;
        if (ms == me && me >= n) break;
    }
    pcre2_match_data_free(md);
    return (int)count;
}

// ---- normalizers -------------------------------------------------------------

static int utf8proc_apply(const char *s, size_t n, utf8proc_option_t opt, PqBuf *out, PqErr *e) {
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst, opt | UTF8PROC_STABLE);
    if (r < 0) {
        pq_err(e, "normalization failed: %s", utf8proc_errmsg(r));
        return -1;
    }
    pq_buf_clear(out);
    pq_buf_append(out, dst, (size_t)r);
    free(dst);
    return 0;
}

static void replace_literal(const char *s, size_t n, const char *pat, size_t pn, const char *rep, size_t rn,
                            PqBuf *out) {
    pq_buf_clear(out);
    size_t i = 0;
    while (pn && i + pn <= n) {
        const char *hit = memmem(s + i, n - i, pat, pn);
        if (!hit) break;
        size_t at = (size_t)(hit - s);
        pq_buf_append(out, s + i, at - i);
        pq_buf_append(out, rep, rn);
        i = at + pn;
    }
    pq_buf_append(out, s + i, n - i);
}

int tok_normalize(const PqTokenizer *tok, const char *s, size_t n, PqBuf *out, PqErr *e) {
    PqBuf a = {0};
    pq_buf_clear(out);
    pq_buf_append(out, s, n);
    size_t *m = NULL, mcap = 0;
    int rc = 0;
    for (int k = 0; k < tok->n_norm && rc == 0; k++) {
        const TokNormOp *op = &tok->norm[k];
        switch (op->type) {
        case TOK_NORM_NFC: rc = utf8proc_apply(out->data, out->len, UTF8PROC_COMPOSE, &a, e); break;
        case TOK_NORM_NFD: rc = utf8proc_apply(out->data, out->len, UTF8PROC_DECOMPOSE, &a, e); break;
        case TOK_NORM_NFKC: rc = utf8proc_apply(out->data, out->len, UTF8PROC_COMPOSE | UTF8PROC_COMPAT, &a, e); break;
        case TOK_NORM_NFKD:
            rc = utf8proc_apply(out->data, out->len, UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT, &a, e);
            break;
        case TOK_NORM_PREPEND:
            pq_buf_clear(&a);
            if (out->len) pq_buf_append(&a, op->content, op->content_len);
            pq_buf_append(&a, out->data, out->len);
            break;
        case TOK_NORM_REPLACE:
            if (!op->re) {
                replace_literal(out->data, out->len, op->pat, op->pat_len, op->content, op->content_len, &a);
            } else {
                int nm = tok_regex_find_all(op->re, out->data, out->len, &m, &mcap, e);
                if (nm < 0) {
                    rc = -1;
                    break;
                }
                pq_buf_clear(&a);
                size_t i = 0;
                for (int j = 0; j < nm; j++) {
                    pq_buf_append(&a, out->data + i, m[2 * j] - i);
                    pq_buf_append(&a, op->content, op->content_len);
                    i = m[2 * j + 1];
                }
                pq_buf_append(&a, out->data + i, out->len - i);
            }
            break;
        }
        if (rc == 0) { // swap
            PqBuf t = *out;
            *out = a;
            a = t;
        }
    }
    free(m);
    pq_buf_free(&a);
    if (!out->data) pq_buf_append(out, "", 0);
    return rc;
}

// ---- pre-tokenizers ----------------------------------------------------------

void tok_pieces_push(TokPieces *ps, size_t off, size_t len, int at_start) {
    if (ps->n == ps->cap) {
        ps->cap = ps->cap ? 2 * ps->cap : 16;
        ps->p = pq_xrealloc(ps->p, (size_t)ps->cap * sizeof *ps->p);
    }
    ps->p[ps->n++] = (TokPiece){off, len, at_start};
}

// A match list covering a piece: (start, end, is_match), as tokenizers'
// Pattern::find_matches.
typedef struct Span {
    size_t s, e;
    int match;
} Span;
typedef struct Spans {
    Span *v;
    int n, cap;
} Spans;

static void spans_push(Spans *sp, size_t s, size_t e, int match) {
    if (sp->n == sp->cap) {
        sp->cap = sp->cap ? 2 * sp->cap : 32;
        sp->v = pq_xrealloc(sp->v, (size_t)sp->cap * sizeof *sp->v);
    }
    sp->v[sp->n++] = (Span){s, e, match};
}

// Turns (start, end) matches into a covering span list.
static void spans_from_matches(Spans *sp, const size_t *m, int nm, size_t n) {
    sp->n = 0;
    if (n == 0) {
        spans_push(sp, 0, 0, 0);
        return;
    }
    size_t prev = 0;
    for (int j = 0; j < nm; j++) {
        if (prev != m[2 * j]) spans_push(sp, prev, m[2 * j], 0);
        spans_push(sp, m[2 * j], m[2 * j + 1], 1);
        prev = m[2 * j + 1];
    }
    if (prev != n) spans_push(sp, prev, n, 0);
}

// Applies a SplitDelimiterBehavior to the spans and appends the non-empty
// pieces (relative to base in the arena) to out.
static void spans_split(Spans *sp, int behavior, int invert, size_t base, int at_start, TokPieces *out) {
    Span *v = sp->v;
    int n = sp->n;
    if (invert)
        for (int i = 0; i < n; i++) v[i].match = !v[i].match;
    // merged results are written in place, in r (count nr)
    int nr = 0;
    switch (behavior) {
    case TOK_SPLIT_ISOLATED: nr = n; break;
    case TOK_SPLIT_REMOVED:
        for (int i = 0; i < n; i++)
            if (!v[i].match) v[nr++] = v[i];
        break;
    case TOK_SPLIT_MERGED_PREV: {
        int prev_match = 0;
        for (int i = 0; i < n; i++) {
            int m = v[i].match;
            if (m && !prev_match) {
                if (nr) v[nr - 1].e = v[i].e;
                else v[nr++] = v[i];
            } else {
                v[nr++] = v[i];
            }
            prev_match = m;
        }
        break;
    }
    case TOK_SPLIT_MERGED_NEXT: { // right to left, then the result is reversed back
        int prev_match = 0, w = n; // write from the end
        for (int i = n - 1; i >= 0; i--) {
            int m = v[i].match;
            Span cur = v[i];
            if (m && !prev_match) {
                if (w < n) v[w].s = cur.s;
                else v[--w] = cur;
            } else {
                v[--w] = cur;
            }
            prev_match = m;
        }
        nr = n - w;
        memmove(v, v + w, (size_t)nr * sizeof *v);
        break;
    }
    case TOK_SPLIT_CONTIGUOUS: {
        int prev_match = 0;
        for (int i = 0; i < n; i++) {
            int m = v[i].match;
            if (m == prev_match && nr) v[nr - 1].e = v[i].e;
            else v[nr++] = v[i];
            prev_match = m;
        }
        break;
    }
    }
    for (int i = 0; i < nr; i++)
        if (v[i].e > v[i].s) tok_pieces_push(out, base + v[i].s, v[i].e - v[i].s, at_start && v[i].s == 0);
}

// The split regex of tokenizers' ByteLevel pre-tokenizer (byte_level.rs).
const char tok_gpt2_split[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

// Spans of each character for which pred holds (one match per character).
static void spans_of_chars(Spans *sp, const char *s, size_t n, int (*pred)(uint32_t)) {
    sp->n = 0;
    if (n == 0) {
        spans_push(sp, 0, 0, 0);
        return;
    }
    size_t prev = 0, i = 0;
    while (i < n) {
        uint32_t cp;
        int k = tok_utf8_decode(s, n, i, &cp);
        if (pred(cp)) {
            if (prev != i) spans_push(sp, prev, i, 0);
            spans_push(sp, i, i + (size_t)k, 1);
            prev = i + (size_t)k;
        }
        i += (size_t)k;
    }
    if (prev != n) spans_push(sp, prev, n, 0);
}

int tok_pre_tokenize(const PqTokenizer *tok, PqBuf *arena, const TokPieces *in, TokPieces *out, PqErr *e) {
    TokPieces a = {0}, b = {0};
    Spans sp = {0};
    size_t *m = NULL, mcap = 0;
    int rc = 0;
    for (int i = 0; i < in->n; i++) tok_pieces_push(&a, in->p[i].off, in->p[i].len, in->p[i].at_start);
    for (int k = 0; k < tok->n_pre && rc == 0; k++) {
        const TokPreOp *op = &tok->pre[k];
        b.n = 0;
        for (int i = 0; i < a.n && rc == 0; i++) {
            TokPiece pc = a.p[i];
            switch (op->type) {
            case TOK_PRE_METASPACE: {
                // replace ' ' by the replacement, prepend it by the scheme
                size_t spaces = 0;
                for (size_t j = 0; j < pc.len; j++) spaces += arena->data[pc.off + j] == ' ';
                pq_buf_reserve(arena, pc.len + (spaces + 1) * op->repl_len);
                const char *s = arena->data + pc.off;
                size_t base = arena->len;
                int starts = pc.len && (s[0] == ' ' ||
                                        (pc.len >= op->repl_len && !memcmp(s, op->repl, op->repl_len)));
                int prepend = !starts && (op->prepend_scheme == TOK_PREPEND_ALWAYS ||
                                          (op->prepend_scheme == TOK_PREPEND_FIRST && pc.at_start));
                if (prepend) pq_buf_append(arena, op->repl, op->repl_len);
                size_t run = 0;
                for (size_t j = 0; j < pc.len; j++) {
                    if (s[j] == ' ') {
                        pq_buf_append(arena, s + run, j - run);
                        pq_buf_append(arena, op->repl, op->repl_len);
                        run = j + 1;
                    }
                }
                pq_buf_append(arena, s + run, pc.len - run);
                size_t len = arena->len - base;
                if (!op->split) {
                    if (len) tok_pieces_push(&b, base, len, pc.at_start);
                    break;
                }
                // MergedWithNext on each replacement character
                const char *t = arena->data + base;
                sp.n = 0;
                size_t prev = 0, j = 0;
                if (len == 0) spans_push(&sp, 0, 0, 0);
                while (j < len) {
                    if (j + op->repl_len <= len && !memcmp(t + j, op->repl, op->repl_len)) {
                        if (prev != j) spans_push(&sp, prev, j, 0);
                        spans_push(&sp, j, j + op->repl_len, 1);
                        j += op->repl_len;
                        prev = j;
                    } else {
                        j++;
                    }
                }
                if (len && prev != len) spans_push(&sp, prev, len, 0);
                spans_split(&sp, TOK_SPLIT_MERGED_NEXT, 0, base, pc.at_start, &b);
                break;
            }
            case TOK_PRE_BYTELEVEL: {
                size_t base = pc.off, len = pc.len;
                if (op->add_prefix_space && !(pc.len && arena->data[pc.off] == ' ')) {
                    pq_buf_reserve(arena, pc.len + 1);
                    base = arena->len;
                    pq_buf_append(arena, " ", 1);
                    pq_buf_append(arena, arena->data + pc.off, pc.len);
                    len = pc.len + 1;
                }
                if (!op->re) {
                    if (len) tok_pieces_push(&b, base, len, pc.at_start);
                    break;
                }
                int nm = tok_regex_find_all(op->re, arena->data + base, len, &m, &mcap, e);
                if (nm < 0) {
                    rc = -1;
                    break;
                }
                spans_from_matches(&sp, m, nm, len);
                spans_split(&sp, TOK_SPLIT_ISOLATED, 0, base, pc.at_start, &b);
                break;
            }
            case TOK_PRE_SPLIT: {
                const char *s = arena->data + pc.off;
                int nm = 0;
                if (op->re) {
                    nm = tok_regex_find_all(op->re, s, pc.len, &m, &mcap, e);
                    if (nm < 0) {
                        rc = -1;
                        break;
                    }
                } else {
                    size_t j = 0;
                    while (op->lit_len && j + op->lit_len <= pc.len) {
                        const char *hit = memmem(s + j, pc.len - j, op->lit, op->lit_len);
                        if (!hit) break;
                        if (2 * (size_t)nm + 2 > mcap) {
                            mcap = mcap ? 2 * mcap : 64;
                            m = pq_xrealloc(m, mcap * sizeof *m);
                        }
                        m[2 * nm] = (size_t)(hit - s);
                        m[2 * nm + 1] = (size_t)(hit - s) + op->lit_len;
                        j = m[2 * nm + 1];
                        nm++;
                    }
                }
                spans_from_matches(&sp, m, nm, pc.len);
                spans_split(&sp, op->behavior, op->invert, pc.off, pc.at_start, &b);
                break;
            }
            case TOK_PRE_DIGITS:
                spans_of_chars(&sp, arena->data + pc.off, pc.len, is_numeric);
                spans_split(&sp, op->individual_digits ? TOK_SPLIT_ISOLATED : TOK_SPLIT_CONTIGUOUS, 0, pc.off,
                            pc.at_start, &b);
                break;
            }
        }
        TokPieces t = a;
        a = b;
        b = t;
    }
    out->n = 0;
    for (int i = 0; i < a.n && rc == 0; i++) tok_pieces_push(out, a.p[i].off, a.p[i].len, a.p[i].at_start);
    free(a.p);
    free(b.p);
    free(sp.v);
    free(m);
    return rc;
}

