// jinja.c: a Jinja interpreter for chat templates: lexer, parser to an
// AST, evaluator, with the environment transformers' apply_chat_template
// gives jinja2 (sandboxed, trim_blocks, lstrip_blocks, loopcontrols).
// Everything a parse or a render allocates lives in one arena, freed at
// once; errors unwind with longjmp, so no path leaks or half-frees.
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "jinja.h"

const PqJinjaLimits pq_jinja_default_limits = {64, 1000000, 16u << 20, 256u << 20};

// ---------------------------------------------------------------- arena

typedef struct Chunk {
    struct Chunk *next;
    size_t used, cap;
    max_align_t data[];
} Chunk;

typedef struct Ctx {
    jmp_buf jb;
    PqErr *e;
    Chunk *chunks;
    size_t mem, max_mem;
} Ctx;

static void ctx_vfail(Ctx *c, int line, int col, const char *fmt, va_list ap) {
    char m[400];
    vsnprintf(m, sizeof m, fmt, ap);
    if (line > 0) pq_err(c->e, "line %d:%d: %s", line, col, m);
    else pq_err(c->e, "%s", m);
    longjmp(c->jb, 1);
}

static _Noreturn void __attribute__((format(printf, 4, 5))) fail(Ctx *c, int line, int col, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    ctx_vfail(c, line, col, fmt, ap);
    va_end(ap);
    abort();
}

static void *alloc(Ctx *c, size_t n) {
    n = (n + 15) & ~(size_t)15;
    Chunk *k = c->chunks;
    if (!k || k->cap - k->used < n) {
        size_t cap = n > 16384 ? n : 16384;
        if (c->mem + cap > c->max_mem) fail(c, 0, 0, "chat template: memory limit (%zu bytes) exceeded", c->max_mem);
        k = pq_xmalloc(sizeof *k + cap);
        k->cap = cap;
        k->used = 0;
        k->next = c->chunks;
        c->chunks = k;
        c->mem += cap;
    }
    void *p = (char *)k->data + k->used;
    k->used += n;
    return p;
}

static void chunks_free(Chunk *k) {
    while (k) {
        Chunk *n = k->next;
        free(k);
        k = n;
    }
}

static char *adup(Ctx *c, const char *s, size_t n) {
    char *d = alloc(c, n + 1);
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

// A growable string in the arena.
typedef struct SBuf {
    char *s;
    size_t n, cap, max;
} SBuf;

static void sb_add(Ctx *c, SBuf *b, const char *s, size_t n) {
    if (!n) return;
    if (b->n + n > b->cap) {
        if (b->max && b->n + n > b->max) fail(c, 0, 0, "chat template: output limit (%zu bytes) exceeded", b->max);
        size_t cap = b->cap ? b->cap * 2 : 64;
        while (cap < b->n + n) cap *= 2;
        char *d = alloc(c, cap);
        if (b->n) memcpy(d, b->s, b->n);
        b->s = d;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
}
static void sb_puts(Ctx *c, SBuf *b, const char *s) { sb_add(c, b, s, strlen(s)); }
static void sb_ch(Ctx *c, SBuf *b, char ch) { sb_add(c, b, &ch, 1); }

// ---------------------------------------------------------------- values

enum { T_ABSENT = -1, T_UNDEF, T_NONE, T_BOOL, T_INT, T_FLOAT, T_STR, T_LIST, T_DICT, T_NS, T_LOOP, T_MACRO, T_FUNC };

typedef struct List List;
typedef struct Dict Dict;
typedef struct Loop Loop;
typedef struct Func Func;
typedef struct Node Node;

typedef struct Val {
    int t;
    union {
        int64_t i;
        double f;
        List *l;
        Dict *d;
        Loop *lp;
        const Node *m;
        Func *fn;
    };
    const char *s; // T_STR: the bytes; T_UNDEF: why it is undefined
    size_t n;
} Val;

struct List {
    Val *v;
    int n, cap, tuple; // an LK_ kind
};
// What Python would hold: lists and tuples, and the lazy results of
// filters and dict methods, which json.dumps refuses and len() may not take.
enum { LK_LIST, LK_TUPLE, LK_GEN, LK_REVITER, LK_ITEMS, LK_KEYS, LK_VALUES };
struct Dict {
    Val *k, *v;
    int n, cap;
};
struct Loop {
    int i, n;
    Val *items;
};
struct Func {
    int id;
    Val self;
};

static const Val V_NONE = {.t = T_NONE};
static const Val V_ABSENT = {.t = T_ABSENT};

static Val mk_bool(int b) { return (Val){.t = T_BOOL, .i = !!b}; }
static Val mk_int(int64_t i) { return (Val){.t = T_INT, .i = i}; }
static Val mk_float(double f) { return (Val){.t = T_FLOAT, .f = f}; }
static Val mk_str(const char *s, size_t n) { return (Val){.t = T_STR, .s = s ? s : "", .n = n}; }
static Val mk_cstr(const char *s) { return mk_str(s, strlen(s)); }

static List *list_new(Ctx *c, int cap) {
    List *l = alloc(c, sizeof *l);
    l->n = 0;
    l->tuple = 0;
    l->cap = cap > 4 ? cap : 4;
    l->v = alloc(c, sizeof(Val) * (size_t)l->cap);
    return l;
}
static void list_push(Ctx *c, List *l, Val v) {
    if (l->n == l->cap) {
        Val *d = alloc(c, sizeof(Val) * (size_t)l->cap * 2);
        memcpy(d, l->v, sizeof(Val) * (size_t)l->n);
        l->v = d;
        l->cap *= 2;
    }
    l->v[l->n++] = v;
}
static Val mk_list(List *l) { return (Val){.t = T_LIST, .l = l}; }

static Dict *dict_new(Ctx *c) {
    Dict *d = alloc(c, sizeof *d);
    d->n = 0;
    d->cap = 4;
    d->k = alloc(c, sizeof(Val) * 4);
    d->v = alloc(c, sizeof(Val) * 4);
    return d;
}
static int val_eq(Val a, Val b);
static int dict_find(const Dict *d, Val k) {
    for (int i = 0; i < d->n; i++)
        if (val_eq(d->k[i], k)) return i;
    return -1;
}
static int dict_find_str(const Dict *d, const char *s, size_t n) {
    for (int i = 0; i < d->n; i++)
        if (d->k[i].t == T_STR && d->k[i].n == n && !memcmp(d->k[i].s, s, n)) return i;
    return -1;
}
static void dict_set(Ctx *c, Dict *d, Val k, Val v) {
    int i = dict_find(d, k);
    if (i >= 0) {
        d->v[i] = v;
        return;
    }
    if (d->n == d->cap) {
        Val *k2 = alloc(c, sizeof(Val) * (size_t)d->cap * 2), *v2 = alloc(c, sizeof(Val) * (size_t)d->cap * 2);
        memcpy(k2, d->k, sizeof(Val) * (size_t)d->n);
        memcpy(v2, d->v, sizeof(Val) * (size_t)d->n);
        d->k = k2;
        d->v = v2;
        d->cap *= 2;
    }
    d->k[d->n] = k;
    d->v[d->n++] = v;
}

static int is_num(Val v) { return v.t == T_INT || v.t == T_FLOAT || v.t == T_BOOL; }
static double num(Val v) { return v.t == T_FLOAT ? v.f : (double)v.i; }

// Python's ==; values nested deeper than 1000 compare unequal (Python
// raises RecursionError there).
static int val_eq_d(Val a, Val b, int depth) {
    if (depth > 1000) return 0;
    if (is_num(a) && is_num(b)) {
        if (a.t != T_FLOAT && b.t != T_FLOAT) return a.i == b.i;
        return num(a) == num(b);
    }
    if (a.t != b.t) return 0;
    switch (a.t) {
    case T_UNDEF:
    case T_NONE: return 1;
    case T_STR: return a.n == b.n && !memcmp(a.s, b.s, a.n);
    case T_LIST:
        if (a.l->tuple != b.l->tuple || a.l->n != b.l->n) return 0;
        for (int i = 0; i < a.l->n; i++)
            if (!val_eq_d(a.l->v[i], b.l->v[i], depth + 1)) return 0;
        return 1;
    case T_DICT:
        if (a.d->n != b.d->n) return 0;
        for (int i = 0; i < a.d->n; i++) {
            int j = dict_find(b.d, a.d->k[i]);
            if (j < 0 || !val_eq_d(a.d->v[i], b.d->v[j], depth + 1)) return 0;
        }
        return 1;
    case T_NS: return a.d == b.d;
    case T_LOOP: return a.lp == b.lp;
    case T_MACRO: return a.m == b.m;
    case T_FUNC: return a.fn == b.fn;
    }
    return 0;
}

static int val_eq(Val a, Val b) { return val_eq_d(a, b, 0); }

static int truthy(Val v) {
    switch (v.t) {
    case T_ABSENT:
    case T_UNDEF:
    case T_NONE: return 0;
    case T_BOOL:
    case T_INT: return v.i != 0;
    case T_FLOAT: return v.f != 0;
    case T_STR: return v.n > 0;
    case T_LIST: return v.l->n > 0;
    case T_DICT: return v.d->n > 0;
    }
    return 1;
}

static const char *type_name(Val v) {
    static const char *names[] = {"Undefined", "NoneType", "bool", "int", "float", "str", "list", "dict", "Namespace", "LoopContext", "Macro", "function"};
    static const char *kinds[] = {"list", "tuple", "generator", "list_reverseiterator", "dict_items", "dict_keys", "dict_values"};
    if (v.t == T_LIST) return kinds[v.l->tuple];
    return v.t >= 0 ? names[v.t] : "?";
}

// ---------------------------------------------------------------- UTF-8

// A character: a valid UTF-8 sequence, or one byte of an invalid one (as
// U+FFFD would stand for it), the same for counting and stepping.
static int32_t u8_get(const char *s, size_t n, size_t *len) {
    if ((unsigned char)s[0] < 0x80) {
        *len = 1;
        return (unsigned char)s[0];
    }
    utf8proc_int32_t cp;
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &cp);
    if (k <= 0) {
        *len = 1;
        return -1;
    }
    *len = (size_t)k;
    return cp;
}
static size_t u8_step(const char *s, size_t n) {
    size_t k;
    u8_get(s, n, &k);
    return k;
}
static size_t u8_count(const char *s, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; k++) i += u8_step(s + i, n - i);
    return k;
}
static void sb_cp(Ctx *c, SBuf *b, int32_t cp) {
    utf8proc_uint8_t u[4];
    utf8proc_ssize_t k = utf8proc_encode_char(cp, u);
    sb_add(c, b, (const char *)u, (size_t)k);
}
// Python's str.isspace() for one code point.
static int py_space(int32_t cp) {
    if (cp < 0) return 0;
    if (cp < 128) return cp == ' ' || (cp >= 9 && cp <= 13) || (cp >= 0x1c && cp <= 0x1f);
    const utf8proc_property_t *p = utf8proc_get_property(cp);
    return p->category == UTF8PROC_CATEGORY_ZS || p->bidi_class == UTF8PROC_BIDI_CLASS_WS ||
           p->bidi_class == UTF8PROC_BIDI_CLASS_B || p->bidi_class == UTF8PROC_BIDI_CLASS_S;
}

// ---------------------------------------------------------------- AST

enum {
    // statements
    X_BLOCK, X_TEXT, X_OUT, X_IF, X_FOR, X_SET, X_SETATTR, X_SETBLOCK, X_MACRO, X_FILTERBLOCK, X_BREAK, X_CONTINUE,
    // expressions
    E_CONST, E_NAME, E_ATTR, E_ITEM, E_SLICE, E_CALL, E_FILTER, E_TEST, E_BIN, E_NEG, E_POS, E_NOT, E_AND, E_OR,
    E_COND, E_LIST, E_TUPLE, E_DICT, E_CMP, E_BODY,
};
enum { OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_FDIV, OP_MOD, OP_POW, OP_CAT };
enum { C_EQ, C_NE, C_LT, C_GT, C_LE, C_GE, C_IN, C_NOTIN };

struct Node {
    int k, op, line, col;
    Node *a, *b, *c;
    Node **v; // children: a body's statements, arguments, list items, dict keys and values in turn
    int nv;
    Node **kv; // keyword arguments / macro defaults (NULL where none)
    const char **kn;
    int nk;
    const char **names; // for targets, set targets, macro parameters
    int nnames;
    int *ops; // comparison operators
    const char *s; // name, attribute, text
    size_t n;
    Val val;
    Node *body, *orelse;
};

struct PqJinja {
    Chunk *chunks;
    Node *root;
};

// ---------------------------------------------------------------- lexer

enum { K_EOF, K_DATA, K_VBEGIN, K_VEND, K_BBEGIN, K_BEND, K_NAME, K_STR, K_INT, K_FLOAT, K_OP };

typedef struct Tok {
    int k, line, col;
    const char *s; // K_DATA, K_STR: decoded text; K_NAME, K_OP: the source
    size_t n;
    int64_t i;
    double f;
} Tok;

typedef struct P {
    Ctx c;
    const char *src;
    size_t len;
    Tok *t;
    int nt, cap, pos, depth;
    int for_depth; // break/continue only inside a for
    size_t pos_at; // pos_of's last answer
    int pos_line, pos_col;
} P;

static void pos_of(P *p, size_t at, int *line, int *col) {
    size_t i = 0;
    int l = 1, c = 1;
    if (at >= p->pos_at) i = p->pos_at, l = p->pos_line, c = p->pos_col; // tokens come in order
    for (; i < at && i < p->len; i++) {
        if (p->src[i] == '\n') l++, c = 1;
        else if (((unsigned char)p->src[i] & 0xC0) != 0x80) c++;
    }
    p->pos_at = i, p->pos_line = l, p->pos_col = c;
    *line = l;
    *col = c;
}

static _Noreturn void __attribute__((format(printf, 3, 4))) lex_fail(P *p, size_t at, const char *fmt, ...) {
    int line, col;
    pos_of(p, at, &line, &col);
    va_list ap;
    va_start(ap, fmt);
    ctx_vfail(&p->c, line, col, fmt, ap);
    va_end(ap);
    abort();
}

static Tok *tok_add(P *p, int k, size_t at) {
    if (p->nt == p->cap) {
        int cap = p->cap ? p->cap * 2 : 256;
        Tok *t = alloc(&p->c, sizeof(Tok) * (size_t)cap);
        if (p->nt) memcpy(t, p->t, sizeof(Tok) * (size_t)p->nt);
        p->t = t;
        p->cap = cap;
    }
    Tok *t = &p->t[p->nt++];
    memset(t, 0, sizeof *t);
    t->k = k;
    pos_of(p, at, &t->line, &t->col);
    return t;
}

static int is_ws(char ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f'; }
static int is_alpha(char ch) { return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_'; }
static int is_digit(char ch) { return ch >= '0' && ch <= '9'; }

static void emit_data(P *p, size_t from, size_t to) {
    if (to <= from) return;
    Tok *t = tok_add(p, K_DATA, from);
    t->s = p->src + from;
    t->n = to - from;
}

// Decodes a string literal's escapes as Python's unicode-escape does.
static void lex_string(P *p, size_t at, size_t *pos) {
    const char *s = p->src;
    char q = s[at];
    size_t i = at + 1;
    SBuf b = {0};
    for (;;) {
        if (i >= p->len) lex_fail(p, at, "unterminated string");
        char ch = s[i];
        if (ch == q) break;
        if (ch != '\\') {
            sb_ch(&p->c, &b, ch);
            i++;
            continue;
        }
        if (i + 1 >= p->len) lex_fail(p, at, "unterminated string");
        char e = s[i + 1];
        i += 2;
        int hex = 0;
        switch (e) {
        case 'n': sb_ch(&p->c, &b, '\n'); break;
        case 't': sb_ch(&p->c, &b, '\t'); break;
        case 'r': sb_ch(&p->c, &b, '\r'); break;
        case 'a': sb_ch(&p->c, &b, '\a'); break;
        case 'b': sb_ch(&p->c, &b, '\b'); break;
        case 'f': sb_ch(&p->c, &b, '\f'); break;
        case 'v': sb_ch(&p->c, &b, '\v'); break;
        case '\\': sb_ch(&p->c, &b, '\\'); break;
        case '\'': sb_ch(&p->c, &b, '\''); break;
        case '"': sb_ch(&p->c, &b, '"'); break;
        case '\n': break;
        case 'x': hex = 2; break;
        case 'u': hex = 4; break;
        case 'U': hex = 8; break;
        default:
            if (e >= '0' && e <= '7') {
                int v = e - '0';
                for (int k = 0; k < 2 && i < p->len && s[i] >= '0' && s[i] <= '7'; k++) v = v * 8 + (s[i++] - '0');
                sb_cp(&p->c, &b, v);
            } else {
                sb_ch(&p->c, &b, '\\');
                sb_ch(&p->c, &b, e);
            }
        }
        if (hex) {
            uint32_t v = 0; // 8 hex digits fit
            for (int k = 0; k < hex; k++, i++) {
                char h = i < p->len ? s[i] : 0;
                int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
                if (d < 0) lex_fail(p, i, "bad \\%c escape in a string", e);
                v = v * 16 + (uint32_t)d;
            }
            if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) lex_fail(p, i, "bad code point in a string");
            sb_cp(&p->c, &b, (int32_t)v);
        }
    }
    Tok *t = tok_add(p, K_STR, at);
    t->s = b.s ? b.s : "";
    t->n = b.n;
    *pos = i + 1;
}

static const char *const ops3[] = {"//", "**", "==", "!=", "<=", ">=", NULL};

// Lexes the inside of a tag from *pos up to its end ("}}" or "%}"), at
// bracket depth 0; returns 1 when the end was "-}}"/"-%}".
static int lex_tag(P *p, size_t *pos, char end) {
    const char *s = p->src;
    size_t i = *pos;
    int depth = 0;
    for (;;) {
        while (i < p->len && is_ws(s[i])) i++;
        if (i >= p->len) lex_fail(p, *pos, "unclosed tag: no '%c}'", end);
        char ch = s[i];
        if (depth == 0) {
            if (ch == '-' && s[i + 1] == end && s[i + 2] == '}') {
                *pos = i + 3;
                return 1;
            }
            if (ch == end && s[i + 1] == '}') {
                *pos = i + 2;
                return 0;
            }
        }
        if (is_alpha(ch)) {
            size_t j = i;
            while (j < p->len && (is_alpha(s[j]) || is_digit(s[j]))) j++;
            Tok *t = tok_add(p, K_NAME, i);
            t->s = adup(&p->c, s + i, j - i);
            t->n = j - i;
            i = j;
        } else if (is_digit(ch)) {
            size_t j = i;
            int isf = 0;
            while (j < p->len && (is_digit(s[j]) || (s[j] == '_' && j + 1 < p->len && is_digit(s[j + 1])))) j++;
            int after_dot = p->nt > 0 && p->t[p->nt - 1].k == K_OP && p->t[p->nt - 1].s[0] == '.';
            if (!after_dot && j + 1 < p->len && s[j] == '.' && is_digit(s[j + 1])) {
                isf = 1;
                j++;
                while (j < p->len && (is_digit(s[j]) || (s[j] == '_' && j + 1 < p->len && is_digit(s[j + 1])))) j++;
            }
            if (!after_dot && j < p->len && (s[j] == 'e' || s[j] == 'E')) {
                size_t k = j + 1;
                if (k < p->len && (s[k] == '+' || s[k] == '-')) k++;
                if (k < p->len && is_digit(s[k])) {
                    isf = 1;
                    j = k;
                    while (j < p->len && is_digit(s[j])) j++;
                }
            }
            char num[128];
            size_t m = 0;
            for (size_t k = i; k < j && m < sizeof num - 1; k++)
                if (s[k] != '_') num[m++] = s[k];
            num[m] = 0;
            Tok *t = tok_add(p, isf ? K_FLOAT : K_INT, i);
            if (isf) {
                t->f = strtod(num, NULL);
            } else {
                char *endp;
                unsigned long long u = strtoull(num, &endp, 10);
                if (m >= sizeof num - 1 || u > INT64_MAX) lex_fail(p, i, "integer literal too large");
                t->i = (int64_t)u;
            }
            i = j;
        } else if (ch == '\'' || ch == '"') {
            lex_string(p, i, &i);
        } else {
            size_t n = 0;
            for (int k = 0; ops3[k]; k++)
                if (!strncmp(s + i, ops3[k], 2)) n = 2;
            if (!n) {
                if (!strchr("+-*/%~()[]{},.:|=<>", ch)) lex_fail(p, i, "unexpected character '%c'", ch);
                n = 1;
                if (strchr("([{", ch)) depth++;
                if (strchr(")]}", ch)) depth--;
                if (depth < 0) lex_fail(p, i, "unexpected '%c'", ch);
            }
            Tok *t = tok_add(p, K_OP, i);
            t->s = s + i;
            t->n = n;
            i += n;
        }
    }
}

// Is "{%[-+]? *WORD *[-+]?%}" at s? Returns its end (past "%}") or 0; *strip_before/after.
static size_t match_tag_word(const P *p, size_t i, const char *word, int *lstrip, int *rstrip) {
    const char *s = p->src;
    if (strncmp(s + i, "{%", 2)) return 0;
    i += 2;
    *lstrip = 0;
    if (s[i] == '-') *lstrip = 1, i++;
    else if (s[i] == '+') i++;
    while (i < p->len && is_ws(s[i])) i++;
    size_t w = strlen(word);
    if (strncmp(s + i, word, w) || is_alpha(s[i + w]) || is_digit(s[i + w])) return 0;
    i += w;
    while (i < p->len && is_ws(s[i])) i++;
    *rstrip = 0;
    if (s[i] == '-') *rstrip = 1, i++;
    if (strncmp(s + i, "%}", 2)) return 0;
    return i + 2;
}

static size_t after_tag(const P *p, size_t i, int strip) {
    if (strip) {
        while (i < p->len && is_ws(p->src[i])) i++;
    } else if (i < p->len && p->src[i] == '\n') {
        i++; // trim_blocks
    }
    return i;
}

static void lex(P *p) {
    const char *s = p->src;
    size_t pos = 0;
    while (pos < p->len) {
        size_t q = pos;
        while (q + 1 < p->len && !(s[q] == '{' && (s[q + 1] == '{' || s[q + 1] == '%' || s[q + 1] == '#'))) q++;
        if (q + 1 >= p->len) {
            emit_data(p, pos, p->len);
            break;
        }
        char kind = s[q + 1];
        char sign = q + 2 < p->len && (s[q + 2] == '-' || s[q + 2] == '+') ? s[q + 2] : 0;
        size_t end = q;
        if (sign == '-') {
            while (end > pos && is_ws(s[end - 1])) end--;
        } else if (sign != '+' && kind != '{') { // lstrip_blocks: a tag alone on its line
            size_t l = end;
            while (l > pos && (s[l - 1] == ' ' || s[l - 1] == '\t' || s[l - 1] == '\v' || s[l - 1] == '\f' || s[l - 1] == '\r')) l--;
            if (l < end && (l > pos ? s[l - 1] == '\n' : pos == 0 || s[pos - 1] == '\n')) end = l;
        }
        emit_data(p, pos, end);
        size_t i = q + 2 + (sign ? 1 : 0);
        if (kind == '#') {
            const char *c = strstr(s + i, "#}");
            if (!c) lex_fail(p, q, "unclosed comment");
            size_t ce = (size_t)(c - s);
            pos = after_tag(p, ce + 2, ce > i && s[ce - 1] == '-');
            continue;
        }
        if (kind == '%') {
            int ls, rs;
            size_t r = match_tag_word(p, q, "raw", &ls, &rs);
            if (r) {
                size_t j = r, e2 = 0;
                int els = 0, ers = 0;
                for (; j < p->len; j++)
                    if (s[j] == '{' && (e2 = match_tag_word(p, j, "endraw", &els, &ers))) break;
                if (!e2) lex_fail(p, q, "unclosed raw block: no {%% endraw %%}");
                size_t ds = r, de = j;
                if (rs)
                    while (ds < de && is_ws(s[ds])) ds++;
                if (els)
                    while (de > ds && is_ws(s[de - 1])) de--;
                emit_data(p, ds, de);
                pos = after_tag(p, e2, ers);
                continue;
            }
        }
        tok_add(p, kind == '{' ? K_VBEGIN : K_BBEGIN, q);
        int strip = lex_tag(p, &i, kind == '{' ? '}' : '%');
        tok_add(p, kind == '{' ? K_VEND : K_BEND, i - 2);
        pos = kind == '{' ? (strip ? after_tag(p, i, 1) : i) : after_tag(p, i, strip);
    }
    tok_add(p, K_EOF, p->len);
}

// ---------------------------------------------------------------- parser

static const char *const filter_names[] = {
    "abs", "attr", "capitalize", "count", "d", "default", "dictsort", "e", "escape", "first", "float", "indent", "int",
    "items", "join", "last", "length", "list", "lower", "map", "max", "min", "reject", "rejectattr", "replace",
    "reverse", "round", "safe", "select", "selectattr", "sort", "string", "sum", "title", "tojson", "trim", "unique",
    "upper", "wordcount", NULL};
static const char *const test_names[] = {
    "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "even", "false", "float", "ge", "gt",
    "greaterthan", "in", "integer", "iterable", "le", "lessthan", "lower", "lt", "mapping", "ne", "none", "number",
    "odd", "sameas", "sequence", "string", "true", "undefined", "upper", "==", "!=", "<", "<=", ">", ">=", NULL};

static int in_names(const char *const *names, const char *s) {
    for (int i = 0; names[i]; i++)
        if (!strcmp(names[i], s)) return 1;
    return 0;
}

static Tok *cur(P *p) { return &p->t[p->pos]; }
static _Noreturn void __attribute__((format(printf, 3, 4))) pfail(P *p, const Tok *t, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    ctx_vfail(&p->c, t->line, t->col, fmt, ap);
    va_end(ap);
    abort();
}
static int is_op(const Tok *t, const char *op) { return t->k == K_OP && t->n == strlen(op) && !strncmp(t->s, op, t->n); }
static int is_name(const Tok *t, const char *n) { return t->k == K_NAME && !strcmp(t->s, n); }
static int accept_op(P *p, const char *op) {
    if (!is_op(cur(p), op)) return 0;
    p->pos++;
    return 1;
}
static int accept_name(P *p, const char *n) {
    if (!is_name(cur(p), n)) return 0;
    p->pos++;
    return 1;
}
static const char *tok_desc(const Tok *t) {
    static char b[64];
    switch (t->k) {
    case K_EOF: return "end of template";
    case K_DATA: return "template text";
    case K_VBEGIN: return "'{{'";
    case K_VEND: return "'}}'";
    case K_BBEGIN: return "'{%'";
    case K_BEND: return "'%}'";
    case K_STR: return "a string";
    case K_INT:
    case K_FLOAT: return "a number";
    }
    snprintf(b, sizeof b, "'%.*s'", (int)(t->n < 40 ? t->n : 40), t->s);
    return b;
}
static void expect_op(P *p, const char *op) {
    if (!accept_op(p, op)) pfail(p, cur(p), "expected '%s', found %s", op, tok_desc(cur(p)));
}
static void expect_kind(P *p, int k, const char *what) {
    if (cur(p)->k != k) pfail(p, cur(p), "expected %s, found %s", what, tok_desc(cur(p)));
    p->pos++;
}
static const char *expect_ident(P *p) {
    Tok *t = cur(p);
    if (t->k != K_NAME) pfail(p, t, "expected a name, found %s", tok_desc(t));
    p->pos++;
    return t->s;
}

static Node *node(P *p, int k, const Tok *at) {
    Node *n = alloc(&p->c, sizeof *n);
    memset(n, 0, sizeof *n);
    n->k = k;
    n->line = at->line;
    n->col = at->col;
    return n;
}

// A growable array of node pointers during parsing.
typedef struct NList {
    Node **v;
    int n, cap;
} NList;
static void nl_push(P *p, NList *l, Node *x) {
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 4;
        Node **v = alloc(&p->c, sizeof *v * (size_t)cap);
        if (l->n) memcpy(v, l->v, sizeof *v * (size_t)l->n);
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = x;
}

static Node *parse_expr(P *p, int with_cond);
static Node *parse_unary(P *p, int with_filter);

static void enter(P *p) {
    if (++p->depth > 200) pfail(p, cur(p), "expression nested too deeply");
}

// Call arguments after '(': positional, then name=value.
static void parse_args(P *p, Node *n) {
    NList a = {0}, kv = {0};
    const char **kn = NULL;
    int nk = 0, capk = 0;
    while (!accept_op(p, ")")) {
        if (a.n + nk) expect_op(p, ",");
        if (accept_op(p, ")")) break;
        if (is_op(cur(p), "*") || is_op(cur(p), "**")) pfail(p, cur(p), "*args and **kwargs in calls are not supported");
        if (cur(p)->k == K_NAME && is_op(&p->t[p->pos + 1], "=")) {
            if (nk == capk) {
                capk = capk ? capk * 2 : 4;
                const char **k2 = alloc(&p->c, sizeof *k2 * (size_t)capk);
                if (nk) memcpy(k2, kn, sizeof *k2 * (size_t)nk);
                kn = k2;
            }
            kn[nk++] = cur(p)->s;
            p->pos += 2;
            nl_push(p, &kv, parse_expr(p, 1));
        } else {
            if (nk) pfail(p, cur(p), "a positional argument after keyword arguments");
            nl_push(p, &a, parse_expr(p, 1));
        }
    }
    n->v = a.v;
    n->nv = a.n;
    n->kv = kv.v;
    n->kn = kn;
    n->nk = nk;
}

static Node *parse_primary(P *p) {
    Tok *t = cur(p);
    Node *n;
    enter(p);
    switch (t->k) {
    case K_NAME:
        p->pos++;
        n = node(p, E_CONST, t);
        if (!strcmp(t->s, "true") || !strcmp(t->s, "True")) n->val = mk_bool(1);
        else if (!strcmp(t->s, "false") || !strcmp(t->s, "False")) n->val = mk_bool(0);
        else if (!strcmp(t->s, "none") || !strcmp(t->s, "None")) n->val = V_NONE;
        else n->k = E_NAME, n->s = t->s;
        break;
    case K_STR: {
        p->pos++;
        n = node(p, E_CONST, t);
        if (cur(p)->k == K_STR) { // adjacent literals concatenate
            SBuf b = {0};
            sb_add(&p->c, &b, t->s, t->n);
            while (cur(p)->k == K_STR) sb_add(&p->c, &b, cur(p)->s, cur(p)->n), p->pos++;
            n->val = mk_str(b.s, b.n);
        } else {
            n->val = mk_str(t->s, t->n);
        }
        break;
    }
    case K_INT:
        p->pos++;
        n = node(p, E_CONST, t);
        n->val = mk_int(t->i);
        break;
    case K_FLOAT:
        p->pos++;
        n = node(p, E_CONST, t);
        n->val = mk_float(t->f);
        break;
    case K_OP:
        if (accept_op(p, "(")) {
            if (accept_op(p, ")")) {
                n = node(p, E_TUPLE, t);
                break;
            }
            Node *e = parse_expr(p, 1);
            if (is_op(cur(p), ",")) {
                NList l = {0};
                nl_push(p, &l, e);
                while (accept_op(p, ",") && !is_op(cur(p), ")")) nl_push(p, &l, parse_expr(p, 1));
                n = node(p, E_TUPLE, t);
                n->v = l.v;
                n->nv = l.n;
            } else {
                n = e;
            }
            expect_op(p, ")");
            break;
        }
        if (accept_op(p, "[")) {
            NList l = {0};
            while (!accept_op(p, "]")) {
                if (l.n) expect_op(p, ",");
                if (accept_op(p, "]")) break;
                nl_push(p, &l, parse_expr(p, 1));
            }
            n = node(p, E_LIST, t);
            n->v = l.v;
            n->nv = l.n;
            break;
        }
        if (accept_op(p, "{")) {
            NList l = {0};
            while (!accept_op(p, "}")) {
                if (l.n) expect_op(p, ",");
                if (accept_op(p, "}")) break;
                nl_push(p, &l, parse_expr(p, 1));
                expect_op(p, ":");
                nl_push(p, &l, parse_expr(p, 1));
            }
            n = node(p, E_DICT, t);
            n->v = l.v;
            n->nv = l.n;
            break;
        }
        /* fallthrough */
    default: pfail(p, t, "unexpected %s", tok_desc(t));
    }
    p->depth--;
    return n;
}

static Node *parse_postfix(P *p, Node *n) {
    for (;;) {
        Tok *t = cur(p);
        if (accept_op(p, ".")) {
            Tok *a = cur(p);
            if (a->k == K_NAME) {
                Node *x = node(p, E_ATTR, t);
                x->a = n;
                x->s = a->s;
                x->n = a->n;
                n = x;
            } else if (a->k == K_INT) {
                Node *x = node(p, E_ITEM, t), *k = node(p, E_CONST, a);
                k->val = mk_int(a->i);
                x->a = n;
                x->b = k;
                n = x;
            } else {
                pfail(p, a, "expected an attribute name after '.', found %s", tok_desc(a));
            }
            p->pos++;
        } else if (accept_op(p, "[")) {
            Node *start = NULL, *stop = NULL, *step = NULL;
            if (!is_op(cur(p), ":")) start = parse_expr(p, 1);
            if (accept_op(p, ":")) {
                if (!is_op(cur(p), "]") && !is_op(cur(p), ":")) stop = parse_expr(p, 1);
                if (accept_op(p, ":") && !is_op(cur(p), "]")) step = parse_expr(p, 1);
                Node *x = node(p, E_SLICE, t);
                x->a = n;
                x->v = alloc(&p->c, sizeof(Node *) * 3);
                x->v[0] = start, x->v[1] = stop, x->v[2] = step;
                x->nv = 3;
                n = x;
            } else {
                Node *x = node(p, E_ITEM, t);
                x->a = n;
                x->b = start;
                n = x;
            }
            expect_op(p, "]");
        } else if (accept_op(p, "(")) {
            Node *x = node(p, E_CALL, t);
            x->a = n;
            parse_args(p, x);
            n = x;
        } else {
            return n;
        }
    }
}

static Node *parse_filter(P *p, Node *n, const Tok *at) {
    const char *name = expect_ident(p);
    if (!in_names(filter_names, name)) pfail(p, at, "no filter named '%s'", name);
    Node *x = node(p, E_FILTER, at);
    x->a = n;
    x->s = name;
    if (accept_op(p, "(")) parse_args(p, x);
    return x;
}

// the "| f | g(...)" after a block's first filter ({% set x | f %}, {% filter f | g %})
static Node *parse_filter_chain(P *p, Node *f) {
    while (is_op(cur(p), "|")) {
        Tok *ft = cur(p);
        p->pos++;
        f = parse_filter(p, f, ft);
    }
    return f;
}

static Node *parse_filter_expr(P *p, Node *n) {
    for (;;) {
        Tok *t = cur(p);
        if (accept_op(p, "|")) {
            n = parse_filter(p, n, t);
        } else if (accept_name(p, "is")) {
            Node *x = node(p, E_TEST, t);
            x->op = accept_name(p, "not");
            Tok *nt = cur(p);
            const char *name;
            if (nt->k == K_NAME) name = nt->s, p->pos++;
            else if (nt->k == K_OP && in_names(test_names, adup(&p->c, nt->s, nt->n))) name = adup(&p->c, nt->s, nt->n), p->pos++;
            else pfail(p, nt, "expected a test name after 'is', found %s", tok_desc(nt));
            if (!in_names(test_names, name)) pfail(p, nt, "no test named '%s'", name);
            x->a = n;
            x->s = name;
            Tok *a = cur(p);
            if (accept_op(p, "(")) {
                parse_args(p, x);
            } else if ((a->k == K_NAME || a->k == K_STR || a->k == K_INT || a->k == K_FLOAT || is_op(a, "[") ||
                        is_op(a, "{")) &&
                       !is_name(a, "else") && !is_name(a, "or") && !is_name(a, "and") && !is_name(a, "if") &&
                       !is_name(a, "in") && !is_name(a, "not") && !is_name(a, "is")) {
                x->v = alloc(&p->c, sizeof(Node *));
                x->v[0] = parse_postfix(p, parse_primary(p));
                x->nv = 1;
            }
            n = x;
        } else if (accept_op(p, "(")) {
            Node *x = node(p, E_CALL, t);
            x->a = n;
            parse_args(p, x);
            n = x;
        } else {
            return n;
        }
    }
}

static Node *parse_unary(P *p, int with_filter) {
    Tok *t = cur(p);
    Node *n;
    enter(p);
    if (accept_op(p, "-")) {
        n = node(p, E_NEG, t);
        n->a = parse_unary(p, 0);
    } else if (accept_op(p, "+")) {
        n = node(p, E_POS, t);
        n->a = parse_unary(p, 0);
    } else {
        n = parse_primary(p);
    }
    n = parse_postfix(p, n);
    if (with_filter) n = parse_filter_expr(p, n);
    p->depth--;
    return n;
}

static Node *binary(P *p, int op, const Tok *t, Node *a, Node *b) {
    Node *n = node(p, E_BIN, t);
    n->op = op;
    n->a = a;
    n->b = b;
    return n;
}

static Node *parse_pow(P *p) {
    Node *n = parse_unary(p, 1);
    for (Tok *t = cur(p); accept_op(p, "**"); t = cur(p)) n = binary(p, OP_POW, t, n, parse_unary(p, 1));
    return n;
}
static Node *parse_math2(P *p) {
    Node *n = parse_pow(p);
    for (;;) {
        Tok *t = cur(p);
        int op = accept_op(p, "*") ? OP_MUL : accept_op(p, "/") ? OP_DIV : accept_op(p, "//") ? OP_FDIV : accept_op(p, "%") ? OP_MOD : -1;
        if (op < 0) return n;
        n = binary(p, op, t, n, parse_pow(p));
    }
}
static Node *parse_concat(P *p) {
    Node *n = parse_math2(p);
    for (Tok *t = cur(p); accept_op(p, "~"); t = cur(p)) n = binary(p, OP_CAT, t, n, parse_math2(p));
    return n;
}
static Node *parse_math1(P *p) {
    Node *n = parse_concat(p);
    for (;;) {
        Tok *t = cur(p);
        int op = accept_op(p, "+") ? OP_ADD : accept_op(p, "-") ? OP_SUB : -1;
        if (op < 0) return n;
        n = binary(p, op, t, n, parse_concat(p));
    }
}
static Node *parse_compare(P *p) {
    Tok *t0 = cur(p);
    Node *n = parse_math1(p);
    NList l = {0};
    int ops[64], no = 0;
    for (;;) {
        Tok *t = cur(p);
        int op = -1;
        if (accept_op(p, "==")) op = C_EQ;
        else if (accept_op(p, "!=")) op = C_NE;
        else if (accept_op(p, "<")) op = C_LT;
        else if (accept_op(p, ">")) op = C_GT;
        else if (accept_op(p, "<=")) op = C_LE;
        else if (accept_op(p, ">=")) op = C_GE;
        else if (accept_name(p, "in")) op = C_IN;
        else if (is_name(t, "not") && is_name(&p->t[p->pos + 1], "in")) p->pos += 2, op = C_NOTIN;
        if (op < 0) break;
        if (no == 64) pfail(p, t, "too many chained comparisons");
        ops[no++] = op;
        nl_push(p, &l, parse_math1(p));
    }
    if (!no) return n;
    Node *x = node(p, E_CMP, t0);
    x->a = n;
    x->v = l.v;
    x->nv = l.n;
    x->ops = alloc(&p->c, sizeof(int) * (size_t)no);
    memcpy(x->ops, ops, sizeof(int) * (size_t)no);
    return x;
}
static Node *parse_not(P *p) {
    Tok *t = cur(p);
    if (accept_name(p, "not")) {
        enter(p);
        Node *n = node(p, E_NOT, t);
        n->a = parse_not(p);
        p->depth--;
        return n;
    }
    return parse_compare(p);
}
static Node *parse_and(P *p) {
    Node *n = parse_not(p);
    for (Tok *t = cur(p); accept_name(p, "and"); t = cur(p)) {
        Node *x = node(p, E_AND, t);
        x->a = n;
        x->b = parse_not(p);
        n = x;
    }
    return n;
}
static Node *parse_or(P *p) {
    Node *n = parse_and(p);
    for (Tok *t = cur(p); accept_name(p, "or"); t = cur(p)) {
        Node *x = node(p, E_OR, t);
        x->a = n;
        x->b = parse_and(p);
        n = x;
    }
    return n;
}
static Node *parse_expr(P *p, int with_cond) {
    enter(p);
    Node *n = parse_or(p);
    if (with_cond) {
        for (Tok *t = cur(p); accept_name(p, "if"); t = cur(p)) {
            Node *x = node(p, E_COND, t);
            x->a = n;
            x->b = parse_or(p);
            if (accept_name(p, "else")) x->c = parse_expr(p, 1);
            n = x;
        }
    }
    p->depth--;
    return n;
}
// An expression, or several separated by commas: a tuple.
static Node *parse_tuple(P *p, int with_cond) {
    Tok *t = cur(p);
    Node *n = parse_expr(p, with_cond);
    if (!is_op(cur(p), ",")) return n;
    NList l = {0};
    nl_push(p, &l, n);
    while (accept_op(p, ",")) {
        Tok *c = cur(p);
        if (c->k == K_BEND || c->k == K_VEND || is_name(c, "in") || is_op(c, "=")) break;
        nl_push(p, &l, parse_expr(p, with_cond));
    }
    Node *x = node(p, E_TUPLE, t);
    x->v = l.v;
    x->nv = l.n;
    return x;
}

// Target names of for/set: "a" or "a, b".
static void parse_targets(P *p, Node *n) {
    const char *names[16];
    int k = 0;
    int paren = accept_op(p, "(");
    do {
        if (k == 16) pfail(p, cur(p), "too many targets");
        names[k++] = expect_ident(p);
    } while (accept_op(p, ","));
    if (paren) expect_op(p, ")");
    n->names = alloc(&p->c, sizeof(char *) * (size_t)k);
    memcpy(n->names, names, sizeof(char *) * (size_t)k);
    n->nnames = k;
}

static Node *parse_body(P *p, const char *const *ends, const Tok *opener, const char *what);

static void end_tag(P *p) { expect_kind(p, K_BEND, "'%}'"); }

static Node *parse_if(P *p, const Tok *t) {
    static const char *const ends[] = {"elif", "else", "endif", NULL};
    Node *n = node(p, X_IF, t);
    n->a = parse_tuple(p, 1);
    end_tag(p);
    n->body = parse_body(p, ends, t, "endif");
    Tok *e = &p->t[p->pos + 1];
    p->pos += 2; // "{%" and the name
    if (!strcmp(e->s, "elif")) {
        n->orelse = parse_if(p, e);
        return n;
    }
    if (!strcmp(e->s, "else")) {
        static const char *const end[] = {"endif", NULL};
        end_tag(p);
        n->orelse = parse_body(p, end, t, "endif");
        p->pos += 2;
    }
    end_tag(p);
    return n;
}

static Node *parse_stmt(P *p) {
    Tok *t = &p->t[p->pos + 1];
    if (t->k != K_NAME) pfail(p, t, "expected a tag name, found %s", tok_desc(t));
    p->pos += 2;
    const char *w = t->s;
    Node *n;
    if (++p->depth > 200) pfail(p, t, "blocks nested too deeply");
    if (!strcmp(w, "if")) {
        n = parse_if(p, t);
    } else if (!strcmp(w, "for")) {
        static const char *const ends[] = {"else", "endfor", NULL};
        n = node(p, X_FOR, t);
        parse_targets(p, n);
        if (!accept_name(p, "in")) pfail(p, cur(p), "expected 'in', found %s", tok_desc(cur(p)));
        n->a = parse_tuple(p, 0);
        if (accept_name(p, "if")) n->b = parse_expr(p, 1);
        if (is_name(cur(p), "recursive")) pfail(p, cur(p), "recursive loops are not supported");
        end_tag(p);
        p->for_depth++;
        n->body = parse_body(p, ends, t, "endfor");
        p->for_depth--;
        if (!strcmp(p->t[p->pos + 1].s, "else")) {
            static const char *const end[] = {"endfor", NULL};
            p->pos += 2;
            end_tag(p);
            n->orelse = parse_body(p, end, t, "endfor");
        }
        p->pos += 2;
        end_tag(p);
    } else if (!strcmp(w, "set")) {
        const char *name = expect_ident(p);
        if (accept_op(p, ".")) {
            n = node(p, X_SETATTR, t);
            n->s = name;
            n->names = alloc(&p->c, sizeof(char *));
            n->names[0] = expect_ident(p);
            n->nnames = 1;
            expect_op(p, "=");
            n->a = parse_tuple(p, 1);
            end_tag(p);
        } else {
            p->pos--; // the name again, as a target
            n = node(p, X_SET, t);
            parse_targets(p, n);
            if (accept_op(p, "=")) {
                n->a = parse_tuple(p, 1);
                end_tag(p);
            } else {
                static const char *const ends[] = {"endset", NULL};
                if (n->nnames != 1) pfail(p, cur(p), "a block set takes one name");
                n->k = X_SETBLOCK;
                n->a = parse_filter_chain(p, node(p, E_BODY, t));
                end_tag(p);
                n->body = parse_body(p, ends, t, "endset");
                p->pos += 2;
                end_tag(p);
            }
        }
    } else if (!strcmp(w, "macro")) {
        static const char *const ends[] = {"endmacro", NULL};
        n = node(p, X_MACRO, t);
        n->s = expect_ident(p);
        expect_op(p, "(");
        const char *names[64];
        Node *defs[64];
        int k = 0;
        while (!accept_op(p, ")")) {
            if (k) expect_op(p, ",");
            if (accept_op(p, ")")) break;
            if (k == 64) pfail(p, cur(p), "too many macro parameters");
            names[k] = expect_ident(p);
            defs[k] = accept_op(p, "=") ? parse_expr(p, 1) : NULL;
            k++;
        }
        n->names = alloc(&p->c, sizeof(char *) * (size_t)(k + 1));
        n->kv = alloc(&p->c, sizeof(Node *) * (size_t)(k + 1));
        memcpy(n->names, names, sizeof(char *) * (size_t)k);
        memcpy(n->kv, defs, sizeof(Node *) * (size_t)k);
        n->nnames = k;
        end_tag(p);
        int fd = p->for_depth;
        p->for_depth = 0;
        n->body = parse_body(p, ends, t, "endmacro");
        p->for_depth = fd;
        p->pos += 2;
        if (cur(p)->k == K_NAME) p->pos++; // {% endmacro name %}
        end_tag(p);
    } else if (!strcmp(w, "filter")) {
        static const char *const ends[] = {"endfilter", NULL};
        n = node(p, X_FILTERBLOCK, t);
        n->a = parse_filter_chain(p, parse_filter(p, node(p, E_BODY, t), t));
        end_tag(p);
        n->body = parse_body(p, ends, t, "endfilter");
        p->pos += 2;
        end_tag(p);
    } else if (!strcmp(w, "generation")) { // transformers' AssistantTracker: renders its body
        static const char *const ends[] = {"endgeneration", NULL};
        end_tag(p);
        n = parse_body(p, ends, t, "endgeneration");
        p->pos += 2;
        end_tag(p);
    } else if (!strcmp(w, "break") || !strcmp(w, "continue")) {
        if (!p->for_depth) pfail(p, t, "'%s' outside a for loop", w);
        n = node(p, w[0] == 'b' ? X_BREAK : X_CONTINUE, t);
        end_tag(p);
    } else {
        pfail(p, t, "unknown or unsupported tag '%s'", w);
    }
    p->depth--;
    return n;
}

// Statements up to a {% NAME %} of ends (left unconsumed) or the end.
static Node *parse_body(P *p, const char *const *ends, const Tok *opener, const char *what) {
    Node *b = node(p, X_BLOCK, cur(p));
    NList l = {0};
    for (;;) {
        Tok *t = cur(p);
        if (t->k == K_EOF) {
            if (ends) pfail(p, opener, "unclosed block: no {%% %s %%}", what);
            break;
        }
        if (t->k == K_DATA) {
            Node *x = node(p, X_TEXT, t);
            x->s = t->s;
            x->n = t->n;
            nl_push(p, &l, x);
            p->pos++;
        } else if (t->k == K_VBEGIN) {
            p->pos++;
            Node *x = node(p, X_OUT, t);
            x->a = parse_tuple(p, 1);
            expect_kind(p, K_VEND, "'}}'");
            nl_push(p, &l, x);
        } else if (t->k == K_BBEGIN) {
            Tok *w = &p->t[p->pos + 1];
            if (w->k == K_NAME && ends && in_names(ends, w->s)) break;
            if (w->k == K_NAME && (!strncmp(w->s, "end", 3) || !strcmp(w->s, "else") || !strcmp(w->s, "elif")))
                pfail(p, w, "unexpected {%% %s %%}%s%s", w->s, what ? "; expected " : "", what ? what : "");
            nl_push(p, &l, parse_stmt(p));
        } else {
            pfail(p, t, "unexpected %s", tok_desc(t));
        }
    }
    b->v = l.v;
    b->nv = l.n;
    return b;
}

PqJinja *pq_jinja_parse(const char *src, PqErr *e) {
    P *p = pq_xcalloc(1, sizeof *p);
    p->c.e = e;
    p->c.max_mem = (size_t)1 << 30;
    p->pos_line = p->pos_col = 1;
    if (setjmp(p->c.jb)) {
        chunks_free(p->c.chunks);
        free(p);
        return NULL;
    }
    // newlines normalised to \n; one trailing newline dropped (keep_trailing_newline=False)
    size_t n = strlen(src), k = 0;
    char *s = alloc(&p->c, n + 1);
    for (size_t i = 0; i < n; i++) {
        if (src[i] == '\r') {
            s[k++] = '\n';
            if (src[i + 1] == '\n') i++;
        } else {
            s[k++] = src[i];
        }
    }
    if (k && s[k - 1] == '\n') k--;
    s[k] = 0;
    p->src = s;
    p->len = k;
    for (size_t i = 0; i < k;) { // Python reads templates as text
        size_t m;
        if (u8_get(s + i, k - i, &m) < 0) lex_fail(p, i, "the template is not valid UTF-8");
        i += m;
    }
    lex(p);
    Node *root = parse_body(p, NULL, NULL, NULL);
    PqJinja *t = pq_xcalloc(1, sizeof *t);
    t->chunks = p->c.chunks;
    t->root = root;
    free(p);
    return t;
}

void pq_jinja_free(PqJinja *t) {
    if (!t) return;
    chunks_free(t->chunks);
    free(t);
}

// ---------------------------------------------------------------- rendering

typedef struct Frame {
    struct Frame *parent;
    const char **names;
    Val *vals;
    int n, cap;
} Frame;

typedef struct R {
    Ctx c;
    PqJinjaLimits lim;
    struct tm now;
    Frame *top; // the template's own variables; macros see these
    long iters;
    int depth;
    Val body; // the captured text a filter block or block set filters
    uintptr_t stack_base; // where the render's C stack began
} R;

// The C stack a render may use: nesting within the limits (64 macro calls
// or loops, each holding 200 nested blocks) could otherwise overflow it.
#define STACK_MAX ((uintptr_t)1 << 20)

static _Noreturn void __attribute__((format(printf, 3, 4))) rfail(R *r, const Node *at, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    ctx_vfail(&r->c, at ? at->line : 0, at ? at->col : 0, fmt, ap);
    va_end(ap);
    abort();
}

static void tick(R *r, const Node *at, long k) {
    r->iters += k;
    if (r->iters > r->lim.max_iterations)
        rfail(r, at, "loop iteration limit (%ld) exceeded", r->lim.max_iterations);
}

static Val undef_name(const char *name) { return (Val){.t = T_UNDEF, .s = name, .n = 0}; }
static Val undef_msg(R *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static Val undef_msg(R *r, const char *fmt, ...) {
    char m[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    return (Val){.t = T_UNDEF, .s = adup(&r->c, m, strlen(m)), .n = 1};
}
static _Noreturn void undef_fail(R *r, const Node *at, Val u) {
    if (u.n == 1) rfail(r, at, "%s", u.s);
    if (u.s) rfail(r, at, "'%s' is undefined", u.s);
    rfail(r, at, "undefined value");
}

static Val *frame_find(Frame *f, const char *name) {
    for (; f; f = f->parent)
        for (int i = f->n - 1; i >= 0; i--)
            if (!strcmp(f->names[i], name)) return &f->vals[i];
    return NULL;
}
static void frame_set(R *r, Frame *f, const char *name, Val v) {
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->names[i], name)) {
            f->vals[i] = v;
            return;
        }
    if (f->n == f->cap) {
        int cap = f->cap ? f->cap * 2 : 4;
        const char **n2 = alloc(&r->c, sizeof *n2 * (size_t)cap);
        Val *v2 = alloc(&r->c, sizeof *v2 * (size_t)cap);
        if (f->n) memcpy(n2, f->names, sizeof *n2 * (size_t)f->n), memcpy(v2, f->vals, sizeof *v2 * (size_t)f->n);
        f->names = n2;
        f->vals = v2;
        f->cap = cap;
    }
    f->names[f->n] = name;
    f->vals[f->n++] = v;
}
static Frame *frame_new(R *r, Frame *parent) {
    Frame *f = alloc(&r->c, sizeof *f);
    memset(f, 0, sizeof *f);
    f->parent = parent;
    return f;
}

// ---- printing: Python's str() and repr(), and json.dumps

static void fmt_float(double d, char *out, int json) {
    if (isnan(d)) {
        strcpy(out, json ? "NaN" : "nan");
        return;
    }
    if (isinf(d)) {
        strcpy(out, d < 0 ? (json ? "-Infinity" : "-inf") : (json ? "Infinity" : "inf"));
        return;
    }
    char t[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(t, sizeof t, "%.*e", p - 1, d);
        if (strtod(t, NULL) == d) break;
    }
    // t: [-]D[.DDD]e[+-]XX
    char digits[24];
    int nd = 0, neg = t[0] == '-';
    const char *q = t + neg;
    for (; *q && *q != 'e'; q++)
        if (*q != '.') digits[nd++] = *q;
    int x = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    char *o = out;
    if (neg) *o++ = '-';
    if (x >= -4 && x < 16) {
        if (x >= 0) {
            for (int i = 0; i <= x; i++) *o++ = i < nd ? digits[i] : '0';
            *o++ = '.';
            if (nd > x + 1)
                for (int i = x + 1; i < nd; i++) *o++ = digits[i];
            else *o++ = '0';
        } else {
            *o++ = '0', *o++ = '.';
            for (int i = 0; i < -x - 1; i++) *o++ = '0';
            for (int i = 0; i < nd; i++) *o++ = digits[i];
        }
        *o = 0;
    } else {
        *o++ = digits[0];
        if (nd > 1) {
            *o++ = '.';
            for (int i = 1; i < nd; i++) *o++ = digits[i];
        }
        sprintf(o, "e%c%02d", x < 0 ? '-' : '+', x < 0 ? -x : x);
    }
}

static void repr_str(R *r, SBuf *b, const char *s, size_t n) {
    char q = memchr(s, '\'', n) && !memchr(s, '"', n) ? '"' : '\'';
    sb_ch(&r->c, b, q);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        char e[8];
        if (ch == '\\' || ch == (unsigned char)q) e[0] = '\\', e[1] = (char)ch, e[2] = 0;
        else if (ch == '\n') strcpy(e, "\\n");
        else if (ch == '\r') strcpy(e, "\\r");
        else if (ch == '\t') strcpy(e, "\\t");
        else if (ch < 0x20 || ch == 0x7f) snprintf(e, sizeof e, "\\x%02x", ch);
        else e[0] = (char)ch, e[1] = 0;
        sb_puts(&r->c, b, e);
    }
    sb_ch(&r->c, b, q);
}

static void to_str(R *r, const Node *at, Val v, SBuf *b, int depth);

static void repr(R *r, const Node *at, Val v, SBuf *b, int depth) {
    if (v.t == T_STR) repr_str(r, b, v.s, v.n);
    else if (v.t == T_UNDEF) sb_puts(&r->c, b, "Undefined");
    else to_str(r, at, v, b, depth);
}

static void to_str(R *r, const Node *at, Val v, SBuf *b, int depth) {
    char t[64];
    if (depth > 500) rfail(r, at, "value nested too deeply to print");
    switch (v.t) {
    case T_ABSENT:
    case T_UNDEF: return;
    case T_NONE: sb_puts(&r->c, b, "None"); return;
    case T_BOOL: sb_puts(&r->c, b, v.i ? "True" : "False"); return;
    case T_INT: snprintf(t, sizeof t, "%lld", (long long)v.i), sb_puts(&r->c, b, t); return;
    case T_FLOAT: fmt_float(v.f, t, 0), sb_puts(&r->c, b, t); return;
    case T_STR: sb_add(&r->c, b, v.s, v.n); return;
    case T_LIST: {
        int k = v.l->tuple;
        if (k == LK_GEN || k == LK_REVITER) rfail(r, at, "cannot print a %s (the template lacks a |list)", type_name(v));
        if (k >= LK_ITEMS) sb_puts(&r->c, b, type_name(v)), sb_ch(&r->c, b, '(');
        sb_ch(&r->c, b, k == LK_TUPLE ? '(' : '[');
        for (int i = 0; i < v.l->n; i++) {
            if (i) sb_puts(&r->c, b, ", ");
            repr(r, at, v.l->v[i], b, depth + 1);
        }
        if (k == LK_TUPLE && v.l->n == 1) sb_ch(&r->c, b, ',');
        sb_ch(&r->c, b, k == LK_TUPLE ? ')' : ']');
        if (k >= LK_ITEMS) sb_ch(&r->c, b, ')');
        return;
    }
    case T_DICT:
        sb_ch(&r->c, b, '{');
        for (int i = 0; i < v.d->n; i++) {
            if (i) sb_puts(&r->c, b, ", ");
            repr(r, at, v.d->k[i], b, depth + 1);
            sb_puts(&r->c, b, ": ");
            repr(r, at, v.d->v[i], b, depth + 1);
        }
        sb_ch(&r->c, b, '}');
        return;
    case T_NS: sb_puts(&r->c, b, "<Namespace>"); return;
    case T_LOOP: sb_puts(&r->c, b, "<LoopContext>"); return;
    case T_MACRO: sb_puts(&r->c, b, "<Macro>"); return;
    case T_FUNC: sb_puts(&r->c, b, "<function>"); return;
    }
}

static Val str_of(R *r, const Node *at, Val v) {
    if (v.t == T_STR) return v;
    SBuf b = {0};
    to_str(r, at, v, &b, 0);
    return mk_str(b.s ? b.s : "", b.n);
}

static void json_str(R *r, SBuf *b, const char *s, size_t n, int ascii) {
    sb_ch(&r->c, b, '"');
    for (size_t i = 0; i < n;) {
        unsigned char ch = (unsigned char)s[i];
        char e[16];
        if (ch == '"') strcpy(e, "\\\"");
        else if (ch == '\\') strcpy(e, "\\\\");
        else if (ch == '\n') strcpy(e, "\\n");
        else if (ch == '\r') strcpy(e, "\\r");
        else if (ch == '\t') strcpy(e, "\\t");
        else if (ch == '\b') strcpy(e, "\\b");
        else if (ch == '\f') strcpy(e, "\\f");
        else if (ch < 0x20 || (ascii && ch == 0x7f)) snprintf(e, sizeof e, "\\u%04x", ch);
        else if (ascii && ch >= 0x80) {
            size_t k;
            int32_t cp = u8_get(s + i, n - i, &k);
            if (cp < 0) cp = 0xFFFD;
            if (cp >= 0x10000) {
                cp -= 0x10000;
                snprintf(e, sizeof e, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
            } else {
                snprintf(e, sizeof e, "\\u%04x", cp);
            }
            sb_puts(&r->c, b, e);
            i += k;
            continue;
        } else {
            sb_ch(&r->c, b, (char)ch);
            i++;
            continue;
        }
        sb_puts(&r->c, b, e);
        i++;
    }
    sb_ch(&r->c, b, '"');
}

typedef struct JsonOpt {
    const char *indent; // NULL: one line
    Val item_sep, key_sep;
    int sort_keys, ascii;
} JsonOpt;

static int val_cmp(R *r, const Node *at, Val a, Val b, int fold);

static void json_nl(R *r, SBuf *b, const JsonOpt *o, int level) {
    sb_ch(&r->c, b, '\n');
    for (int i = 0; i < level; i++) sb_puts(&r->c, b, o->indent);
}

static void to_json(R *r, const Node *at, Val v, SBuf *b, const JsonOpt *o, int level) {
    char t[64];
    if (level > 500) rfail(r, at, "value nested too deeply for tojson");
    switch (v.t) {
    case T_NONE: sb_puts(&r->c, b, "null"); return;
    case T_BOOL: sb_puts(&r->c, b, v.i ? "true" : "false"); return;
    case T_INT: snprintf(t, sizeof t, "%lld", (long long)v.i), sb_puts(&r->c, b, t); return;
    case T_FLOAT: fmt_float(v.f, t, 1), sb_puts(&r->c, b, t); return;
    case T_STR: json_str(r, b, v.s, v.n, o->ascii); return;
    case T_LIST:
        if (v.l->tuple > LK_TUPLE) rfail(r, at, "tojson: Object of type %s is not JSON serializable", type_name(v));
        if (!v.l->n) {
            sb_puts(&r->c, b, "[]");
            return;
        }
        sb_ch(&r->c, b, '[');
        for (int i = 0; i < v.l->n; i++) {
            if (i) sb_add(&r->c, b, o->item_sep.s, o->item_sep.n);
            if (o->indent) json_nl(r, b, o, level + 1);
            to_json(r, at, v.l->v[i], b, o, level + 1);
        }
        if (o->indent) json_nl(r, b, o, level);
        sb_ch(&r->c, b, ']');
        return;
    case T_DICT: {
        if (!v.d->n) {
            sb_puts(&r->c, b, "{}");
            return;
        }
        int n = v.d->n, *ix = alloc(&r->c, sizeof(int) * (size_t)n);
        for (int i = 0; i < n; i++) ix[i] = i;
        if (o->sort_keys) // insertion sort: a template's dicts are small
            for (int i = 1; i < n; i++)
                for (int j = i; j > 0 && val_cmp(r, at, v.d->k[ix[j - 1]], v.d->k[ix[j]], 0) > 0; j--) {
                    int x = ix[j];
                    ix[j] = ix[j - 1], ix[j - 1] = x;
                }
        sb_ch(&r->c, b, '{');
        for (int i = 0; i < n; i++) {
            Val k = v.d->k[ix[i]];
            if (i) sb_add(&r->c, b, o->item_sep.s, o->item_sep.n);
            if (o->indent) json_nl(r, b, o, level + 1);
            if (k.t == T_STR) json_str(r, b, k.s, k.n, o->ascii);
            else if (k.t == T_NONE) sb_puts(&r->c, b, "\"null\"");
            else if (k.t == T_BOOL) sb_puts(&r->c, b, k.i ? "\"true\"" : "\"false\"");
            else if (k.t == T_INT || k.t == T_FLOAT) {
                sb_ch(&r->c, b, '"');
                to_json(r, at, k, b, o, level + 1);
                sb_ch(&r->c, b, '"');
            } else rfail(r, at, "tojson: keys must be str, int, float, bool or None, not %s", type_name(k));
            sb_add(&r->c, b, o->key_sep.s, o->key_sep.n);
            to_json(r, at, v.d->v[ix[i]], b, o, level + 1);
        }
        if (o->indent) json_nl(r, b, o, level);
        sb_ch(&r->c, b, '}');
        return;
    }
    default: rfail(r, at, "tojson: Object of type %s is not JSON serializable", type_name(v));
    }
}

// ---- comparisons

static int val_cmp_d(R *r, const Node *at, Val a, Val b, int fold, int depth);
static int val_cmp(R *r, const Node *at, Val a, Val b, int fold) { return val_cmp_d(r, at, a, b, fold, 0); }
static int val_cmp_d(R *r, const Node *at, Val a, Val b, int fold, int depth) {
    if (depth > 1000) rfail(r, at, "maximum recursion depth exceeded in comparison");
    if (is_num(a) && is_num(b)) {
        if (a.t != T_FLOAT && b.t != T_FLOAT) return (a.i > b.i) - (a.i < b.i);
        double x = num(a), y = num(b);
        return (x > y) - (x < y);
    }
    if (a.t == T_STR && b.t == T_STR) {
        if (fold) { // lower-cased, code point by code point
            size_t i = 0, j = 0;
            while (i < a.n && j < b.n) {
                size_t ki, kj;
                int32_t x = u8_get(a.s + i, a.n - i, &ki), y = u8_get(b.s + j, b.n - j, &kj);
                if (x >= 0) x = utf8proc_tolower(x);
                if (y >= 0) y = utf8proc_tolower(y);
                if (x != y) return x < y ? -1 : 1;
                i += ki, j += kj;
            }
            return (i < a.n) - (j < b.n);
        }
        size_t m = a.n < b.n ? a.n : b.n;
        int c = memcmp(a.s, b.s, m);
        if (c) return c < 0 ? -1 : 1;
        return (a.n > b.n) - (a.n < b.n);
    }
    if (a.t == T_LIST && b.t == T_LIST && a.l->tuple == b.l->tuple) {
        for (int i = 0; i < a.l->n && i < b.l->n; i++) {
            if (val_eq(a.l->v[i], b.l->v[i])) continue;
            return val_cmp_d(r, at, a.l->v[i], b.l->v[i], fold, depth + 1);
        }
        return (a.l->n > b.l->n) - (a.l->n < b.l->n);
    }
    if (a.t == T_UNDEF) undef_fail(r, at, a);
    if (b.t == T_UNDEF) undef_fail(r, at, b);
    rfail(r, at, "'<' not supported between instances of '%s' and '%s'", type_name(a), type_name(b));
}

static int contains(R *r, const Node *at, Val hay, Val x) {
    switch (hay.t) {
    case T_STR:
        if (x.t != T_STR) rfail(r, at, "'in <string>' requires string as left operand, not %s", type_name(x));
        if (!x.n) return 1;
        for (size_t i = 0; i + x.n <= hay.n; i++)
            if (!memcmp(hay.s + i, x.s, x.n)) return 1;
        return 0;
    case T_LIST:
        tick(r, at, hay.l->n / 16);
        for (int i = 0; i < hay.l->n; i++)
            if (val_eq(hay.l->v[i], x)) return 1;
        return 0;
    case T_DICT: return dict_find(hay.d, x) >= 0;
    case T_UNDEF: return 0;
    }
    rfail(r, at, "argument of type '%s' is not iterable", type_name(hay));
}

static int compare(R *r, const Node *at, int op, Val a, Val b) {
    switch (op) {
    case C_EQ: return val_eq(a, b);
    case C_NE: return !val_eq(a, b);
    case C_LT: return val_cmp(r, at, a, b, 0) < 0;
    case C_GT: return val_cmp(r, at, a, b, 0) > 0;
    case C_LE: return val_cmp(r, at, a, b, 0) <= 0;
    case C_GE: return val_cmp(r, at, a, b, 0) >= 0;
    case C_IN: return contains(r, at, b, a);
    case C_NOTIN: return !contains(r, at, b, a);
    }
    return 0;
}

// ---- sequences

// The items of an iterable value (a list's own array: not to be changed).
static Val *items_of(R *r, const Node *at, Val v, int *n) {
    switch (v.t) {
    case T_LIST: *n = v.l->n; return v.l->v;
    case T_DICT: *n = v.d->n; return v.d->k;
    case T_UNDEF: *n = 0; return NULL;
    case T_STR: {
        int k = (int)u8_count(v.s, v.n), j = 0;
        Val *out = alloc(&r->c, sizeof(Val) * (size_t)(k + 1));
        for (size_t i = 0; i < v.n; j++) {
            size_t s = u8_step(v.s + i, v.n - i);
            out[j] = mk_str(v.s + i, s);
            i += s;
        }
        *n = j;
        return out;
    }
    }
    rfail(r, at, "'%s' object is not iterable", type_name(v));
}

static Val list_of(R *r, Val *v, int n, int tuple) {
    List *l = list_new(&r->c, n);
    if (n) memcpy(l->v, v, sizeof(Val) * (size_t)n);
    l->n = n;
    l->tuple = tuple;
    return mk_list(l);
}

static int64_t length(R *r, const Node *at, Val v) {
    switch (v.t) {
    case T_STR: return (int64_t)u8_count(v.s, v.n);
    case T_LIST:
        if (v.l->tuple == LK_GEN || v.l->tuple == LK_REVITER) break;
        return v.l->n;
    case T_DICT: return v.d->n;
    case T_UNDEF: return 0;
    }
    rfail(r, at, "object of type '%s' has no len()", type_name(v));
}

static void slice_bounds(R *r, const Node *at, int64_t len, Val a, Val b, Val c, int64_t *start, int64_t *step, int64_t *count) {
    int64_t st = 1, lo, hi;
    for (int k = 0; k < 3; k++) {
        Val x = k == 0 ? a : k == 1 ? b : c;
        if (x.t != T_ABSENT && x.t != T_NONE && x.t != T_INT && x.t != T_BOOL)
            rfail(r, at, "slice indices must be integers or None, not %s", type_name(x));
    }
    if (c.t == T_INT || c.t == T_BOOL) st = c.i;
    if (st == 0) rfail(r, at, "slice step cannot be zero");
    int has_a = a.t == T_INT || a.t == T_BOOL, has_b = b.t == T_INT || b.t == T_BOOL;
    if (st > 0) {
        lo = has_a ? a.i : 0;
        hi = has_b ? b.i : len;
        if (lo < 0) lo += len;
        if (hi < 0) hi += len;
        lo = lo < 0 ? 0 : lo > len ? len : lo;
        hi = hi < 0 ? 0 : hi > len ? len : hi;
        *count = hi > lo ? (int64_t)(((__int128)hi - lo + st - 1) / st) : 0;
    } else {
        lo = has_a ? a.i : len - 1;
        hi = has_b ? b.i : -1 - len;
        if (lo < 0) lo += len;
        if (hi < 0) hi += len;
        lo = lo < -1 ? -1 : lo > len - 1 ? len - 1 : lo;
        hi = hi < -1 ? -1 : hi > len - 1 ? len - 1 : hi;
        *count = lo > hi ? (int64_t)(((__int128)lo - hi - (__int128)st - 1) / -(__int128)st) : 0;
    }
    *start = lo;
    *step = st;
}

static Val do_slice(R *r, const Node *at, Val v, Val a, Val b, Val c) {
    int64_t start, step, count;
    if (v.t == T_LIST && v.l->tuple > LK_TUPLE) rfail(r, at, "'%s' object is not subscriptable", type_name(v));
    if (v.t == T_LIST) {
        slice_bounds(r, at, v.l->n, a, b, c, &start, &step, &count);
        List *l = list_new(&r->c, (int)count);
        for (int64_t i = 0; i < count; i++) l->v[i] = v.l->v[start + i * step];
        l->n = (int)count;
        l->tuple = v.l->tuple;
        return mk_list(l);
    }
    if (v.t == T_STR) {
        size_t cps = u8_count(v.s, v.n);
        slice_bounds(r, at, (int64_t)cps, a, b, c, &start, &step, &count);
        if (cps == v.n) {
            if (step == 1) return mk_str(v.s + start, (size_t)count);
            char *d = alloc(&r->c, (size_t)count + 1);
            for (int64_t i = 0; i < count; i++) d[i] = v.s[start + i * step];
            return mk_str(d, (size_t)count);
        }
        size_t *off = alloc(&r->c, sizeof(size_t) * (cps + 1));
        for (size_t i = 0, j = 0; i <= v.n && j <= cps; j++) {
            off[j] = i;
            if (i < v.n) i += u8_step(v.s + i, v.n - i);
            else break;
        }
        off[cps] = v.n;
        SBuf o = {0};
        for (int64_t i = 0; i < count; i++) {
            size_t k = (size_t)(start + i * step);
            sb_add(&r->c, &o, v.s + off[k], off[k + 1] - off[k]);
        }
        return mk_str(o.s ? o.s : "", o.n);
    }
    if (v.t == T_UNDEF) undef_fail(r, at, v);
    rfail(r, at, "'%s' object is not subscriptable", type_name(v));
}

// ---- functions and methods

enum {
    F_RANGE, F_NAMESPACE, F_DICT, F_RAISE, F_STRFTIME, F_CYCLE,
    M_STRIP, M_LSTRIP, M_RSTRIP, M_SPLIT, M_RSPLIT, M_STARTSWITH, M_ENDSWITH, M_REPLACE, M_UPPER, M_LOWER, M_TITLE,
    M_CAPITALIZE, M_FIND, M_SCOUNT, M_JOIN, M_ISDIGIT, M_ISALPHA, M_ISSPACE, M_ISALNUM, M_ISLOWER, M_ISUPPER,
    M_SPLITLINES, M_FORMAT,
    M_ITEMS, M_KEYS, M_VALUES, M_GET,
    M_INDEX, M_LCOUNT,
};
static const struct {
    const char *name;
    int id, type;
} methods[] = {
    {"strip", M_STRIP, T_STR}, {"lstrip", M_LSTRIP, T_STR}, {"rstrip", M_RSTRIP, T_STR}, {"split", M_SPLIT, T_STR},
    {"rsplit", M_RSPLIT, T_STR}, {"startswith", M_STARTSWITH, T_STR}, {"endswith", M_ENDSWITH, T_STR},
    {"replace", M_REPLACE, T_STR}, {"upper", M_UPPER, T_STR}, {"lower", M_LOWER, T_STR}, {"title", M_TITLE, T_STR},
    {"capitalize", M_CAPITALIZE, T_STR}, {"find", M_FIND, T_STR}, {"count", M_SCOUNT, T_STR}, {"join", M_JOIN, T_STR},
    {"isdigit", M_ISDIGIT, T_STR}, {"isalpha", M_ISALPHA, T_STR}, {"isspace", M_ISSPACE, T_STR},
    {"isalnum", M_ISALNUM, T_STR}, {"islower", M_ISLOWER, T_STR}, {"isupper", M_ISUPPER, T_STR},
    {"splitlines", M_SPLITLINES, T_STR}, {"format", M_FORMAT, T_STR},
    {"items", M_ITEMS, T_DICT}, {"keys", M_KEYS, T_DICT}, {"values", M_VALUES, T_DICT}, {"get", M_GET, T_DICT},
    {"index", M_INDEX, T_LIST}, {"count", M_LCOUNT, T_LIST},
};

static Val mk_func(R *r, int id, Val self) {
    Func *f = alloc(&r->c, sizeof *f);
    f->id = id;
    f->self = self;
    return (Val){.t = T_FUNC, .fn = f};
}

static Val get_attr(R *r, const Node *at, Val o, const char *name) {
    size_t nl = strlen(name);
    switch (o.t) {
    case T_UNDEF: undef_fail(r, at, o);
    case T_DICT:
    case T_STR:
    case T_LIST:
        for (size_t i = 0; i < sizeof methods / sizeof *methods; i++)
            if (methods[i].type == o.t && !strcmp(methods[i].name, name)) return mk_func(r, methods[i].id, o);
        if (o.t == T_DICT) {
            int i = dict_find_str(o.d, name, nl);
            if (i >= 0) return o.d->v[i];
        }
        if (o.t == T_LIST && (!strcmp(name, "append") || !strcmp(name, "pop") || !strcmp(name, "extend") ||
                              !strcmp(name, "insert") || !strcmp(name, "remove") || !strcmp(name, "sort") ||
                              !strcmp(name, "reverse") || !strcmp(name, "clear")))
            return undef_msg(r, "access to attribute '%s' of 'list' object is unsafe.", name);
        if (o.t == T_DICT && (!strcmp(name, "update") || !strcmp(name, "pop") || !strcmp(name, "setdefault") ||
                              !strcmp(name, "popitem") || !strcmp(name, "clear")))
            return undef_msg(r, "access to attribute '%s' of 'dict' object is unsafe.", name);
        break;
    case T_NS: {
        int i = dict_find_str(o.d, name, nl);
        if (i >= 0) return o.d->v[i];
        break;
    }
    case T_LOOP: {
        Loop *l = o.lp;
        if (!strcmp(name, "index")) return mk_int(l->i + 1);
        if (!strcmp(name, "index0")) return mk_int(l->i);
        if (!strcmp(name, "revindex")) return mk_int(l->n - l->i);
        if (!strcmp(name, "revindex0")) return mk_int(l->n - l->i - 1);
        if (!strcmp(name, "first")) return mk_bool(l->i == 0);
        if (!strcmp(name, "last")) return mk_bool(l->i == l->n - 1);
        if (!strcmp(name, "length")) return mk_int(l->n);
        if (!strcmp(name, "depth")) return mk_int(1);
        if (!strcmp(name, "depth0")) return mk_int(0);
        if (!strcmp(name, "previtem"))
            return l->i > 0 ? l->items[l->i - 1] : undef_msg(r, "there is no previous item");
        if (!strcmp(name, "nextitem"))
            return l->i + 1 < l->n ? l->items[l->i + 1] : undef_msg(r, "there is no next item");
        if (!strcmp(name, "cycle")) return mk_func(r, F_CYCLE, o);
        break;
    }
    }
    return undef_msg(r, "'%s object' has no attribute '%s'", type_name(o), name);
}

static Val get_item(R *r, const Node *at, Val o, Val k) {
    switch (o.t) {
    case T_UNDEF: undef_fail(r, at, o);
    case T_DICT: {
        int i = dict_find(o.d, k);
        if (i >= 0) return o.d->v[i];
        break;
    }
    case T_LIST:
        if (o.l->tuple > LK_TUPLE) return undef_msg(r, "'%s' object is not subscriptable", type_name(o));
        if (k.t == T_INT || k.t == T_BOOL) {
            int64_t i = k.i < 0 ? k.i + o.l->n : k.i;
            if (i >= 0 && i < o.l->n) return o.l->v[i];
            return undef_msg(r, "%s object has no element %lld", type_name(o), (long long)k.i);
        }
        break;
    case T_STR:
        if (k.t == T_INT || k.t == T_BOOL) {
            int64_t n = (int64_t)u8_count(o.s, o.n), i = k.i < 0 ? k.i + n : k.i;
            if (i < 0 || i >= n) return undef_msg(r, "str object has no element %lld", (long long)k.i);
            if (n == (int64_t)o.n) return mk_str(o.s + i, 1);
            return do_slice(r, at, o, mk_int(i), mk_int(i + 1), V_ABSENT);
        }
        break;
    }
    if (k.t == T_STR) return get_attr(r, at, o, adup(&r->c, k.s, k.n));
    SBuf b = {0};
    repr(r, at, k, &b, 0);
    return undef_msg(r, "'%s object' has no attribute %.*s", type_name(o), (int)b.n, b.s);
}

// Binds call arguments to named parameters (out[i] T_ABSENT when not given).
typedef struct Args {
    Val *v;
    int n;
    const char **kn;
    Val *kv;
    int nk;
} Args;

static void bind(R *r, const Node *at, const char *fn, const char *const *params, Val *out, int np, const Args *a) {
    for (int i = 0; i < np; i++) out[i] = V_ABSENT;
    if (a->n > np) rfail(r, at, "%s() takes at most %d argument%s (%d given)", fn, np, np == 1 ? "" : "s", a->n);
    for (int i = 0; i < a->n; i++) out[i] = a->v[i];
    for (int k = 0; k < a->nk; k++) {
        int i = 0;
        while (i < np && strcmp(params[i], a->kn[k])) i++;
        if (i == np) rfail(r, at, "%s() got an unexpected keyword argument '%s'", fn, a->kn[k]);
        if (out[i].t != T_ABSENT) rfail(r, at, "%s() got multiple values for argument '%s'", fn, a->kn[k]);
        out[i] = a->kv[k];
    }
}

static Val need_str(R *r, const Node *at, const char *fn, Val v) {
    if (v.t != T_STR) rfail(r, at, "%s: expected a string, not %s", fn, type_name(v));
    return v;
}
static int64_t need_int(R *r, const Node *at, const char *fn, Val v) {
    if (v.t != T_INT && v.t != T_BOOL) rfail(r, at, "%s: expected an integer, not %s", fn, type_name(v));
    return v.i;
}

// str.strip/lstrip/rstrip: which = 1 left, 2 right, 3 both; chars as Python's (NULL: whitespace).
static Val do_strip(Val s, Val chars, int which) {
    size_t i = 0, j = s.n;
    int ws = chars.t != T_STR;
    while (i < j && (which & 1)) {
        size_t k;
        int32_t cp = u8_get(s.s + i, j - i, &k);
        int hit = 0;
        if (ws) hit = py_space(cp);
        else
            for (size_t m = 0; m < chars.n && !hit;) {
                size_t km;
                int32_t c2 = u8_get(chars.s + m, chars.n - m, &km);
                hit = c2 == cp && (cp >= 0 || !memcmp(chars.s + m, s.s + i, 1));
                m += km;
            }
        if (!hit) break;
        i += k;
    }
    while (j > i && (which & 2)) {
        size_t b = j - 1;
        while (b > i && ((unsigned char)s.s[b] & 0xC0) == 0x80 && j - b < 4) b--;
        size_t k;
        int32_t cp = u8_get(s.s + b, j - b, &k);
        if (k != j - b) b = j - 1, cp = -1;
        int hit = 0;
        if (ws) hit = py_space(cp);
        else
            for (size_t m = 0; m < chars.n && !hit;) {
                size_t km;
                int32_t c2 = u8_get(chars.s + m, chars.n - m, &km);
                hit = c2 == cp && (cp >= 0 || chars.s[m] == s.s[b]);
                m += km;
            }
        if (!hit) break;
        j = b;
    }
    return mk_str(s.s + i, j - i);
}

static const char *find_sub(const char *h, size_t hn, const char *x, size_t xn) {
    if (xn > hn) return NULL;
    for (size_t i = 0; i + xn <= hn; i++)
        if (h[i] == x[0] && !memcmp(h + i, x, xn)) return h + i;
    return NULL;
}

static Val do_split(R *r, const Node *at, Val s, Val sep, int64_t maxsplit) {
    List *l = list_new(&r->c, 4);
    if (sep.t != T_STR) { // runs of whitespace
        size_t i = 0;
        for (;;) {
            while (i < s.n) {
                size_t k;
                if (!py_space(u8_get(s.s + i, s.n - i, &k))) break;
                i += k;
            }
            if (i >= s.n) break;
            if (maxsplit >= 0 && l->n == maxsplit) {
                size_t j = s.n;
                while (j > i && is_ws(s.s[j - 1])) j--;
                list_push(&r->c, l, mk_str(s.s + i, j - i));
                break;
            }
            size_t j = i;
            while (j < s.n) {
                size_t k;
                if (py_space(u8_get(s.s + j, s.n - j, &k))) break;
                j += k;
            }
            list_push(&r->c, l, mk_str(s.s + i, j - i));
            i = j;
        }
        return mk_list(l);
    }
    if (!sep.n) rfail(r, at, "split: empty separator");
    const char *p = s.s, *end = s.s + s.n, *q;
    while ((maxsplit < 0 || l->n < maxsplit) && (q = find_sub(p, (size_t)(end - p), sep.s, sep.n))) {
        list_push(&r->c, l, mk_str(p, (size_t)(q - p)));
        p = q + sep.n;
        tick(r, at, 1);
    }
    list_push(&r->c, l, mk_str(p, (size_t)(end - p)));
    return mk_list(l);
}

static Val do_rsplit(R *r, const Node *at, Val s, Val sep, int64_t maxsplit) {
    if (maxsplit < 0 || sep.t != T_STR) return do_split(r, at, s, sep, maxsplit);
    if (!sep.n) rfail(r, at, "rsplit: empty separator");
    Val parts[65];
    int n = 0;
    size_t end = s.n;
    while (n < maxsplit && n < 64) {
        size_t i = end, found = SIZE_MAX;
        while (i >= sep.n) {
            if (!memcmp(s.s + i - sep.n, sep.s, sep.n)) {
                found = i - sep.n;
                break;
            }
            i--;
        }
        if (found == SIZE_MAX) break;
        parts[n++] = mk_str(s.s + found + sep.n, end - found - sep.n);
        end = found;
    }
    List *l = list_new(&r->c, n + 1);
    list_push(&r->c, l, mk_str(s.s, end));
    for (int i = n - 1; i >= 0; i--) list_push(&r->c, l, parts[i]);
    return mk_list(l);
}

static Val do_replace(R *r, const Node *at, Val s, Val old, Val new, int64_t count) {
    SBuf b = {0};
    int64_t done = 0;
    if (!old.n) { // Python inserts new around every character
        for (size_t i = 0; i <= s.n;) {
            if (count < 0 || done < count) sb_add(&r->c, &b, new.s, new.n), done++;
            if (i == s.n) break;
            size_t k = u8_step(s.s + i, s.n - i);
            sb_add(&r->c, &b, s.s + i, k);
            i += k;
        }
        return mk_str(b.s ? b.s : "", b.n);
    }
    const char *p = s.s, *end = s.s + s.n, *q;
    while ((count < 0 || done < count) && (q = find_sub(p, (size_t)(end - p), old.s, old.n))) {
        sb_add(&r->c, &b, p, (size_t)(q - p));
        sb_add(&r->c, &b, new.s, new.n);
        p = q + old.n;
        done++;
    }
    if (!done) return s;
    sb_add(&r->c, &b, p, (size_t)(end - p));
    return mk_str(b.s ? b.s : "", b.n);
}

// CASE_TITLE is str.title(); CASE_WORDS the title filter (upper() of the
// first character after - ( { [ < or a space, lower() of the rest).
enum { CASE_UPPER, CASE_LOWER, CASE_TITLE, CASE_CAPITALIZE, CASE_WORDS };
static Val do_case(R *r, Val s, int how) {
    SBuf b = {0};
    int prev_cased = 0, word_start = 1;
    for (size_t i = 0; i < s.n;) {
        size_t k;
        int32_t cp = u8_get(s.s + i, s.n - i, &k);
        if (cp < 0) {
            sb_add(&r->c, &b, s.s + i, k);
            i += k;
            prev_cased = word_start = 0;
            continue;
        }
        int up; // 1 upper (title case for str.title), 0 lower
        switch (how) {
        case CASE_UPPER: up = 1; break;
        case CASE_LOWER: up = 0; break;
        case CASE_TITLE: up = !prev_cased; break;
        case CASE_CAPITALIZE: up = i == 0; break;
        default: up = word_start; break;
        }
        if (cp == 0xDF && up) { // Python's full case mapping of ß
            sb_puts(&r->c, &b, how == CASE_TITLE || how == CASE_CAPITALIZE ? "Ss" : "SS");
        } else {
            int32_t o = !up ? utf8proc_tolower(cp)
                        : how == CASE_TITLE || how == CASE_CAPITALIZE ? utf8proc_totitle(cp) : utf8proc_toupper(cp);
            sb_cp(&r->c, &b, o);
        }
        utf8proc_category_t cat = utf8proc_category(cp);
        prev_cased = cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT;
        word_start = (cp < 128 && strchr("-({[<", (int)cp) && cp) || py_space(cp);
        i += k;
    }
    return mk_str(b.s ? b.s : "", b.n);
}

static int str_is(Val s, int id) {
    if (!s.n) return 0;
    int has_cased = 0;
    for (size_t i = 0; i < s.n;) {
        size_t k;
        int32_t cp = u8_get(s.s + i, s.n - i, &k);
        i += k;
        if (cp < 0) return 0;
        utf8proc_category_t c = utf8proc_category(cp);
        int alpha = c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO, digit = c == UTF8PROC_CATEGORY_ND;
        switch (id) {
        case M_ISDIGIT: if (!digit) return 0; break;
        case M_ISALPHA: if (!alpha) return 0; break;
        case M_ISALNUM: if (!alpha && !digit && c != UTF8PROC_CATEGORY_NL && c != UTF8PROC_CATEGORY_NO) return 0; break;
        case M_ISSPACE: if (!py_space(cp)) return 0; break;
        case M_ISLOWER:
            if (c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LT) return 0;
            has_cased |= c == UTF8PROC_CATEGORY_LL;
            break;
        case M_ISUPPER:
            if (c == UTF8PROC_CATEGORY_LL || c == UTF8PROC_CATEGORY_LT) return 0;
            has_cased |= c == UTF8PROC_CATEGORY_LU;
            break;
        }
    }
    return id == M_ISLOWER || id == M_ISUPPER ? has_cased : 1;
}

static Val splitlines(R *r, Val s, int keepends) {
    List *l = list_new(&r->c, 4);
    size_t i = 0, start = 0;
    while (i < s.n) {
        char ch = s.s[i];
        size_t k = 0;
        if (ch == '\r' && i + 1 < s.n && s.s[i + 1] == '\n') k = 2;
        else if (ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f' || ch == 0x1c || ch == 0x1d || ch == 0x1e) k = 1;
        else if ((unsigned char)ch == 0xC2 && i + 1 < s.n && (unsigned char)s.s[i + 1] == 0x85) k = 2;
        else if ((unsigned char)ch == 0xE2 && i + 2 < s.n && (unsigned char)s.s[i + 1] == 0x80 &&
                 ((unsigned char)s.s[i + 2] == 0xA8 || (unsigned char)s.s[i + 2] == 0xA9)) k = 3;
        if (k) {
            list_push(&r->c, l, mk_str(s.s + start, i - start + (keepends ? k : 0)));
            i += k;
            start = i;
        } else {
            i++;
        }
    }
    if (start < s.n) list_push(&r->c, l, mk_str(s.s + start, s.n - start));
    return mk_list(l);
}

static Val str_join(R *r, const Node *at, Val sep, Val seq, const char *attr) {
    int n;
    Val *it = items_of(r, at, seq, &n);
    SBuf b = {0};
    for (int i = 0; i < n; i++) {
        if (i) sb_add(&r->c, &b, sep.s, sep.n);
        Val x = attr ? get_attr(r, at, it[i], attr) : it[i];
        to_str(r, at, x, &b, 0);
    }
    return mk_str(b.s ? b.s : "", b.n);
}

static Val call_macro(R *r, const Node *at, const Node *m, const Args *a);

static Val call_func(R *r, const Node *at, Func *fn, const Args *a) {
    Val p[4], self = fn->self;
    switch (fn->id) {
    case F_RANGE: {
        if (a->nk || a->n < 1 || a->n > 3) rfail(r, at, "range() takes 1 to 3 integer arguments");
        int64_t lo = 0, hi, st = 1;
        if (a->n == 1) hi = need_int(r, at, "range", a->v[0]);
        else lo = need_int(r, at, "range", a->v[0]), hi = need_int(r, at, "range", a->v[1]);
        if (a->n == 3) st = need_int(r, at, "range", a->v[2]);
        if (!st) rfail(r, at, "range() arg 3 must not be zero");
        __int128 w = st > 0 ? (__int128)hi - lo : (__int128)lo - hi, stp = st > 0 ? (__int128)st : -(__int128)st;
        __int128 n128 = w > 0 ? (w - 1) / stp + 1 : 0;
        int64_t n = n128 > 100000 ? 100001 : (int64_t)n128;
        if (n > 100000) rfail(r, at, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
        List *l = list_new(&r->c, (int)n);
        for (int64_t i = 0; i < n; i++) l->v[i] = mk_int(lo + i * st);
        l->n = (int)n;
        return mk_list(l);
    }
    case F_NAMESPACE:
    case F_DICT: {
        Dict *d = dict_new(&r->c);
        if (a->n > 1) rfail(r, at, "%s() takes at most one positional argument", fn->id == F_DICT ? "dict" : "namespace");
        if (a->n == 1) {
            if (a->v[0].t != T_DICT) rfail(r, at, "%s(): the positional argument must be a mapping", fn->id == F_DICT ? "dict" : "namespace");
            for (int i = 0; i < a->v[0].d->n; i++) dict_set(&r->c, d, a->v[0].d->k[i], a->v[0].d->v[i]);
        }
        for (int k = 0; k < a->nk; k++) dict_set(&r->c, d, mk_cstr(a->kn[k]), a->kv[k]);
        return (Val){.t = fn->id == F_DICT ? T_DICT : T_NS, .d = d};
    }
    case F_RAISE: {
        Val m = a->n ? str_of(r, at, a->v[0]) : mk_cstr("");
        fail(&r->c, 0, 0, "%.*s", (int)m.n, m.s);
    }
    case F_STRFTIME: {
        static const char *const pn[] = {"format"};
        bind(r, at, "strftime_now", pn, p, 1, a);
        Val f = need_str(r, at, "strftime_now", p[0]);
        char fmt[256], out[512];
        snprintf(fmt, sizeof fmt, "%.*s", (int)f.n, f.s);
        size_t n = strftime(out, sizeof out, fmt, &r->now);
        return mk_str(adup(&r->c, out, n), n);
    }
    case F_CYCLE:
        if (!a->n) rfail(r, at, "no items for cycling given");
        return a->v[self.lp->i % a->n];
    case M_STRIP:
    case M_LSTRIP:
    case M_RSTRIP: {
        static const char *const pn[] = {"chars"};
        bind(r, at, "strip", pn, p, 1, a);
        if (p[0].t != T_ABSENT && p[0].t != T_NONE) need_str(r, at, "strip", p[0]);
        return do_strip(self, p[0], fn->id == M_STRIP ? 3 : fn->id == M_LSTRIP ? 1 : 2);
    }
    case M_SPLIT:
    case M_RSPLIT: {
        static const char *const pn[] = {"sep", "maxsplit"};
        bind(r, at, "split", pn, p, 2, a);
        if (p[0].t != T_ABSENT && p[0].t != T_NONE) need_str(r, at, "split", p[0]);
        int64_t mx = p[1].t == T_ABSENT ? -1 : need_int(r, at, "split", p[1]);
        return fn->id == M_SPLIT ? do_split(r, at, self, p[0], mx) : do_rsplit(r, at, self, p[0], mx);
    }
    case M_STARTSWITH:
    case M_ENDSWITH: {
        static const char *const pn[] = {"prefix"};
        bind(r, at, fn->id == M_STARTSWITH ? "startswith" : "endswith", pn, p, 1, a);
        int n = 1;
        Val *c = &p[0];
        if (p[0].t == T_LIST && p[0].l->tuple) n = p[0].l->n, c = p[0].l->v;
        for (int i = 0; i < n; i++) {
            Val x = need_str(r, at, "startswith", c[i]);
            if (x.n <= self.n && !memcmp(fn->id == M_STARTSWITH ? self.s : self.s + self.n - x.n, x.s, x.n)) return mk_bool(1);
        }
        return mk_bool(0);
    }
    case M_REPLACE: {
        static const char *const pn[] = {"old", "new", "count"};
        bind(r, at, "replace", pn, p, 3, a);
        return do_replace(r, at, self, need_str(r, at, "replace", p[0]), need_str(r, at, "replace", p[1]),
                          p[2].t == T_ABSENT ? -1 : need_int(r, at, "replace", p[2]));
    }
    case M_UPPER: return do_case(r, self, CASE_UPPER);
    case M_LOWER: return do_case(r, self, CASE_LOWER);
    case M_TITLE: return do_case(r, self, CASE_TITLE);
    case M_CAPITALIZE: return do_case(r, self, CASE_CAPITALIZE);
    case M_FIND:
    case M_SCOUNT: {
        static const char *const pn[] = {"sub"};
        bind(r, at, fn->id == M_FIND ? "find" : "count", pn, p, 1, a);
        Val x = need_str(r, at, "find", p[0]);
        if (fn->id == M_FIND) {
            const char *q = x.n ? find_sub(self.s, self.n, x.s, x.n) : self.s;
            return mk_int(q ? (int64_t)u8_count(self.s, (size_t)(q - self.s)) : -1);
        }
        if (!x.n) return mk_int((int64_t)u8_count(self.s, self.n) + 1);
        int64_t k = 0;
        for (const char *q = self.s, *e = self.s + self.n; (q = find_sub(q, (size_t)(e - q), x.s, x.n)); q += x.n) k++;
        return mk_int(k);
    }
    case M_JOIN: {
        static const char *const pn[] = {"iterable"};
        bind(r, at, "join", pn, p, 1, a);
        int n;
        Val *it = items_of(r, at, p[0], &n);
        for (int i = 0; i < n; i++)
            if (it[i].t != T_STR) rfail(r, at, "sequence item %d: expected str instance, %s found", i, type_name(it[i]));
        return str_join(r, at, self, p[0], NULL);
    }
    case M_ISDIGIT:
    case M_ISALPHA:
    case M_ISSPACE:
    case M_ISALNUM:
    case M_ISLOWER:
    case M_ISUPPER: return mk_bool(str_is(self, fn->id));
    case M_SPLITLINES: {
        static const char *const pn[] = {"keepends"};
        bind(r, at, "splitlines", pn, p, 1, a);
        return splitlines(r, self, truthy(p[0]));
    }
    case M_FORMAT: rfail(r, at, "str.format is not supported");
    case M_ITEMS: {
        List *l = list_new(&r->c, self.d->n);
        for (int i = 0; i < self.d->n; i++) {
            Val kv[2] = {self.d->k[i], self.d->v[i]};
            list_push(&r->c, l, list_of(r, kv, 2, 1));
        }
        l->tuple = LK_ITEMS;
        return mk_list(l);
    }
    case M_KEYS: return list_of(r, self.d->k, self.d->n, LK_KEYS);
    case M_VALUES: return list_of(r, self.d->v, self.d->n, LK_VALUES);
    case M_GET: {
        static const char *const pn[] = {"key", "default"};
        bind(r, at, "get", pn, p, 2, a);
        int i = dict_find(self.d, p[0]);
        return i >= 0 ? self.d->v[i] : p[1].t == T_ABSENT ? V_NONE : p[1];
    }
    case M_INDEX:
    case M_LCOUNT: {
        static const char *const pn[] = {"value"};
        bind(r, at, fn->id == M_INDEX ? "index" : "count", pn, p, 1, a);
        int64_t k = 0;
        for (int i = 0; i < self.l->n; i++)
            if (val_eq(self.l->v[i], p[0])) {
                if (fn->id == M_INDEX) return mk_int(i);
                k++;
            }
        if (fn->id == M_INDEX) rfail(r, at, "list.index(x): x not in list");
        return mk_int(k);
    }
    }
    rfail(r, at, "unknown function");
}

static Val call(R *r, const Node *at, Val f, const Args *a) {
    if (f.t == T_MACRO) return call_macro(r, at, f.m, a);
    if (f.t == T_FUNC) return call_func(r, at, f.fn, a);
    if (f.t == T_UNDEF) undef_fail(r, at, f);
    rfail(r, at, "'%s' object is not callable", type_name(f));
}

// ---- tests

static int apply_test(R *r, const Node *at, const char *name, Val x, const Args *a) {
    Val arg = a->n ? a->v[0] : V_ABSENT;
#define IS(s) (!strcmp(name, s))
    if (IS("defined")) return x.t != T_UNDEF;
    if (IS("undefined")) return x.t == T_UNDEF;
    if (IS("none")) return x.t == T_NONE;
    if (IS("boolean")) return x.t == T_BOOL;
    if (IS("true")) return x.t == T_BOOL && x.i;
    if (IS("false")) return x.t == T_BOOL && !x.i;
    if (IS("integer")) return x.t == T_INT;
    if (IS("float")) return x.t == T_FLOAT;
    if (IS("number")) return is_num(x);
    if (IS("string")) return x.t == T_STR;
    if (IS("mapping")) return x.t == T_DICT;
    if (IS("iterable")) return x.t == T_STR || x.t == T_LIST || x.t == T_DICT || x.t == T_UNDEF || x.t == T_LOOP;
    if (IS("sequence")) return x.t == T_STR || x.t == T_LIST || x.t == T_DICT || x.t == T_UNDEF;
    if (IS("callable")) return x.t == T_MACRO || x.t == T_FUNC;
    if (a->n < 1 && !IS("odd") && !IS("even") && !IS("lower") && !IS("upper"))
        rfail(r, at, "test '%s' needs an argument", name);
    if (IS("sameas")) return x.t == arg.t && (x.t == T_NONE || x.t == T_UNDEF || (x.t == T_BOOL && x.i == arg.i) || (x.t >= T_LIST && val_eq(x, arg) && x.l == arg.l));
    if (IS("eq") || IS("equalto") || IS("==")) return val_eq(x, arg);
    if (IS("ne") || IS("!=")) return !val_eq(x, arg);
    if (IS("lt") || IS("lessthan") || IS("<")) return val_cmp(r, at, x, arg, 0) < 0;
    if (IS("le") || IS("<=")) return val_cmp(r, at, x, arg, 0) <= 0;
    if (IS("gt") || IS("greaterthan") || IS(">")) return val_cmp(r, at, x, arg, 0) > 0;
    if (IS("ge") || IS(">=")) return val_cmp(r, at, x, arg, 0) >= 0;
    if (IS("in")) return contains(r, at, arg, x);
    if (IS("odd") || IS("even") || IS("divisibleby")) {
        int64_t v = need_int(r, at, name, x), d = IS("divisibleby") ? need_int(r, at, name, arg) : 2;
        if (!d) rfail(r, at, "integer division or modulo by zero");
        int64_t m = (int64_t)((((__int128)v % d) + d) % d);
        return IS("odd") ? m == 1 : m == 0;
    }
    if (IS("lower") || IS("upper")) {
        Val s = str_of(r, at, x);
        return str_is(s, IS("lower") ? M_ISLOWER : M_ISUPPER);
    }
#undef IS
    rfail(r, at, "no test named '%s'", name);
}

// ---- filters

static Val apply_filter(R *r, const Node *at, const char *name, Val x, const Args *a);
static Val html_escape(R *r, Val s);

// Sorts v[0..n) stably by key (merge sort).
static void sort_vals(R *r, const Node *at, Val *v, Val *key, int n, int fold, int rev) {
    if (n < 2) return;
    tick(r, at, n / 8);
    int h = n / 2;
    sort_vals(r, at, v, key, h, fold, rev);
    sort_vals(r, at, v + h, key + h, n - h, fold, rev);
    Val *tv = alloc(&r->c, sizeof(Val) * (size_t)n), *tk = alloc(&r->c, sizeof(Val) * (size_t)n);
    int i = 0, j = h, k = 0;
    while (i < h || j < n) {
        int take_left = j >= n || (i < h && (rev ? val_cmp(r, at, key[i], key[j], fold) >= 0 : val_cmp(r, at, key[i], key[j], fold) <= 0));
        if (take_left) tv[k] = v[i], tk[k++] = key[i++];
        else tv[k] = v[j], tk[k++] = key[j++];
    }
    memcpy(v, tv, sizeof(Val) * (size_t)n);
    memcpy(key, tk, sizeof(Val) * (size_t)n);
}

// An attribute path as jinja2's make_attrgetter: "a.b", digits as indexes.
static Val attr_path(R *r, const Node *at, Val x, Val path) {
    if (path.t == T_INT) return get_item(r, at, x, path);
    Val s = need_str(r, at, "attribute", path);
    size_t i = 0;
    while (i <= s.n) {
        size_t j = i;
        while (j < s.n && s.s[j] != '.') j++;
        const char *part = adup(&r->c, s.s + i, j - i);
        int digits = j > i;
        for (size_t k = i; k < j; k++) digits &= is_digit(s.s[k]);
        x = digits ? get_item(r, at, x, mk_int(atoll(part))) : get_item(r, at, x, mk_str(part, j - i));
        i = j + 1;
        if (j >= s.n) break;
    }
    return x;
}

static Val select_filter(R *r, const Node *at, Val x, const Args *a, int attr, int keep) {
    if (!truthy(x)) return list_of(r, NULL, 0, LK_GEN); // jinja2 iterates only a true value
    int n;
    Val *it = items_of(r, at, x, &n);
    int first = attr ? 1 : 0;
    if (attr && a->n < 1) rfail(r, at, "selectattr needs an attribute");
    Args ta = {a->n > first + 1 ? a->v + first + 1 : NULL, a->n > first + 1 ? a->n - first - 1 : 0, NULL, NULL, 0};
    const char *test = NULL;
    if (a->n > first) test = adup(&r->c, need_str(r, at, "select", a->v[first]).s, a->v[first].n);
    if (test && !in_names(test_names, test)) rfail(r, at, "no test named '%s'", test);
    List *l = list_new(&r->c, n);
    for (int i = 0; i < n; i++) {
        Val v = attr ? attr_path(r, at, it[i], a->v[0]) : it[i];
        int ok = test ? apply_test(r, at, test, v, &ta) : truthy(v);
        if (ok == keep) list_push(&r->c, l, it[i]);
    }
    l->tuple = LK_GEN;
    return mk_list(l);
}

static Val apply_filter(R *r, const Node *at, const char *name, Val x, const Args *a) {
    Val p[6];
#define IS(s) (!strcmp(name, s))
#define BIND(...)                                                        \
    do {                                                                 \
        static const char *const pn[] = {__VA_ARGS__};                   \
        bind(r, at, name, pn, p, (int)(sizeof pn / sizeof *pn), a);      \
    } while (0)
    if (IS("default") || IS("d")) {
        BIND("default_value", "boolean");
        Val d = p[0].t == T_ABSENT ? mk_cstr("") : p[0];
        if (x.t == T_UNDEF || (truthy(p[1]) && !truthy(x))) return d;
        return x;
    }
    if (IS("trim")) {
        BIND("chars");
        return do_strip(str_of(r, at, x), p[0], 3);
    }
    if (IS("length") || IS("count")) return mk_int(length(r, at, x));
    if (IS("string")) return str_of(r, at, x);
    if (IS("safe")) {
        Val s = str_of(r, at, x);
        s.i = 1;
        return s;
    }
    if (IS("lower")) return do_case(r, str_of(r, at, x), CASE_LOWER);
    if (IS("upper")) return do_case(r, str_of(r, at, x), CASE_UPPER);
    if (IS("title")) return do_case(r, str_of(r, at, x), CASE_WORDS);
    if (IS("capitalize")) return do_case(r, str_of(r, at, x), CASE_CAPITALIZE);
    if (IS("list")) {
        int n;
        Val *it = items_of(r, at, x, &n);
        return list_of(r, it, n, 0);
    }
    if (IS("first") || IS("last")) {
        int n;
        Val *it = items_of(r, at, x, &n);
        if (!n) return undef_msg(r, "No %s item, sequence was empty.", name);
        return it[IS("first") ? 0 : n - 1];
    }
    if (IS("reverse")) {
        if (x.t == T_STR) return do_slice(r, at, x, V_ABSENT, V_ABSENT, mk_int(-1));
        int n;
        Val *it = items_of(r, at, x, &n);
        List *l = list_new(&r->c, n);
        for (int i = 0; i < n; i++) l->v[i] = it[n - 1 - i];
        l->n = n;
        l->tuple = x.t == T_LIST && x.l->tuple <= LK_TUPLE ? LK_REVITER : LK_LIST;
        return mk_list(l);
    }
    if (IS("join")) {
        BIND("d", "attribute");
        Val sep = p[0].t == T_ABSENT ? mk_cstr("") : str_of(r, at, p[0]);
        const char *attr = p[1].t == T_STR ? adup(&r->c, p[1].s, p[1].n) : NULL;
        return str_join(r, at, sep, x, attr);
    }
    if (IS("replace")) {
        BIND("old", "new", "count");
        return do_replace(r, at, str_of(r, at, x), str_of(r, at, p[0]), str_of(r, at, p[1]),
                          p[2].t == T_ABSENT || p[2].t == T_NONE ? -1 : need_int(r, at, name, p[2]));
    }
    if (IS("items")) {
        if (x.t == T_UNDEF) return list_of(r, NULL, 0, 0);
        if (x.t != T_DICT) rfail(r, at, "Can only get item pairs from a mapping.");
        Func f = {M_ITEMS, x};
        Args none = {0};
        Val v = call_func(r, at, &f, &none);
        v.l->tuple = LK_GEN;
        return v;
    }
    if (IS("dictsort")) {
        BIND("case_sensitive", "by", "reverse");
        if (x.t != T_DICT) rfail(r, at, "dictsort: expected a mapping, not %s", type_name(x));
        int byval = p[1].t == T_STR && p[1].n == 5 && !memcmp(p[1].s, "value", 5);
        int n = x.d->n;
        Val *v = alloc(&r->c, sizeof(Val) * (size_t)(n + 1)), *k = alloc(&r->c, sizeof(Val) * (size_t)(n + 1));
        for (int i = 0; i < n; i++) {
            Val kv[2] = {x.d->k[i], x.d->v[i]};
            v[i] = list_of(r, kv, 2, 1);
            k[i] = byval ? x.d->v[i] : x.d->k[i];
        }
        sort_vals(r, at, v, k, n, !truthy(p[0]), truthy(p[2]));
        return list_of(r, v, n, 0);
    }
    if (IS("sort")) {
        BIND("reverse", "case_sensitive", "attribute");
        int n;
        Val *it = items_of(r, at, x, &n);
        Val *v = alloc(&r->c, sizeof(Val) * (size_t)(n + 1)), *k = alloc(&r->c, sizeof(Val) * (size_t)(n + 1));
        for (int i = 0; i < n; i++) v[i] = it[i], k[i] = p[2].t == T_ABSENT || p[2].t == T_NONE ? it[i] : attr_path(r, at, it[i], p[2]);
        sort_vals(r, at, v, k, n, !truthy(p[1]), truthy(p[0]));
        return list_of(r, v, n, 0);
    }
    if (IS("unique")) {
        BIND("case_sensitive", "attribute");
        int n;
        Val *it = items_of(r, at, x, &n);
        List *l = list_new(&r->c, n);
        Val *keys = alloc(&r->c, sizeof(Val) * (size_t)(n + 1));
        int nk = 0;
        for (int i = 0; i < n; i++) {
            Val k = p[1].t == T_ABSENT || p[1].t == T_NONE ? it[i] : attr_path(r, at, it[i], p[1]);
            if (k.t == T_STR && !truthy(p[0])) k = do_case(r, k, CASE_LOWER);
            int seen = 0;
            tick(r, at, nk / 16);
            for (int j = 0; j < nk && !seen; j++) seen = val_eq(keys[j], k);
            if (!seen) keys[nk++] = k, list_push(&r->c, l, it[i]);
        }
        return mk_list(l);
    }
    if (IS("map")) {
        if (!truthy(x)) return list_of(r, NULL, 0, LK_GEN);
        int n;
        Val *it = items_of(r, at, x, &n);
        List *l = list_new(&r->c, n);
        int ai = -1, di = -1;
        for (int k = 0; k < a->nk; k++) {
            if (!strcmp(a->kn[k], "attribute")) ai = k;
            else if (!strcmp(a->kn[k], "default")) di = k;
            else if (ai < 0) rfail(r, at, "map: unexpected keyword argument '%s'", a->kn[k]);
        }
        if (ai >= 0) {
            for (int i = 0; i < n; i++) {
                Val v = attr_path(r, at, it[i], a->kv[ai]);
                if (v.t == T_UNDEF && di >= 0) v = a->kv[di];
                list_push(&r->c, l, v);
            }
            l->tuple = LK_GEN;
            return mk_list(l);
        }
        if (a->n < 1) rfail(r, at, "map: give a filter name or attribute=");
        const char *f = adup(&r->c, need_str(r, at, "map", a->v[0]).s, a->v[0].n);
        if (!in_names(filter_names, f)) rfail(r, at, "no filter named '%s'", f);
        Args fa = {a->v + 1, a->n - 1, a->kn, a->kv, a->nk};
        for (int i = 0; i < n; i++) list_push(&r->c, l, apply_filter(r, at, f, it[i], &fa));
        l->tuple = LK_GEN;
        return mk_list(l);
    }
    if (IS("select")) return select_filter(r, at, x, a, 0, 1);
    if (IS("reject")) return select_filter(r, at, x, a, 0, 0);
    if (IS("selectattr")) return select_filter(r, at, x, a, 1, 1);
    if (IS("rejectattr")) return select_filter(r, at, x, a, 1, 0);
    if (IS("tojson")) {
        BIND("ensure_ascii", "indent", "separators", "sort_keys");
        JsonOpt o = {NULL, mk_cstr(", "), mk_cstr(": "), truthy(p[3]), truthy(p[0])};
        char ind[65];
        if (p[1].t == T_INT) {
            if (p[1].i < 0 || p[1].i > 64) rfail(r, at, "tojson: indent %lld out of range", (long long)p[1].i);
            memset(ind, ' ', (size_t)p[1].i);
            ind[p[1].i] = 0;
            o.indent = ind;
        } else if (p[1].t == T_STR) {
            o.indent = adup(&r->c, p[1].s, p[1].n);
        } else if (p[1].t != T_ABSENT && p[1].t != T_NONE) {
            rfail(r, at, "tojson: indent must be an integer or a string");
        }
        if (o.indent) o.item_sep = mk_cstr(",");
        if (p[2].t == T_LIST && p[2].l->n == 2 && p[2].l->v[0].t == T_STR && p[2].l->v[1].t == T_STR)
            o.item_sep = p[2].l->v[0], o.key_sep = p[2].l->v[1];
        else if (p[2].t != T_ABSENT && p[2].t != T_NONE) rfail(r, at, "tojson: separators must be two strings");
        SBuf b = {0};
        to_json(r, at, x, &b, &o, 0);
        return mk_str(b.s, b.n);
    }
    if (IS("indent")) {
        BIND("width", "first", "blank");
        Val ind;
        if (p[0].t == T_STR) {
            ind = p[0];
        } else {
            int64_t w = p[0].t == T_ABSENT ? 4 : need_int(r, at, name, p[0]);
            if (w < 0 || w > 4096) rfail(r, at, "indent: width %lld out of range", (long long)w);
            char *s = alloc(&r->c, (size_t)w + 1);
            memset(s, ' ', (size_t)w);
            ind = mk_str(s, (size_t)w);
        }
        Val s = str_of(r, at, x);
        SBuf t = {0};
        sb_add(&r->c, &t, s.s, s.n);
        sb_ch(&r->c, &t, '\n');
        Val lines = splitlines(r, mk_str(t.s, t.n), 0);
        SBuf b = {0};
        for (int i = 0; i < lines.l->n; i++) {
            Val ln = lines.l->v[i];
            if (i) sb_ch(&r->c, &b, '\n');
            if (i && (truthy(p[2]) || ln.n)) sb_add(&r->c, &b, ind.s, ind.n);
            sb_add(&r->c, &b, ln.s, ln.n);
        }
        if (truthy(p[1])) {
            SBuf f = {0};
            sb_add(&r->c, &f, ind.s, ind.n);
            sb_add(&r->c, &f, b.s ? b.s : "", b.n);
            return mk_str(f.s, f.n);
        }
        return mk_str(b.s ? b.s : "", b.n);
    }
    if (IS("int")) {
        BIND("default", "base");
        Val d = p[0].t == T_ABSENT ? mk_int(0) : p[0];
        if (x.t == T_INT) return x;
        if (x.t == T_BOOL) return mk_int(x.i);
        if (x.t == T_FLOAT) return isfinite(x.f) && fabs(x.f) < 9.2e18 ? mk_int((int64_t)x.f) : d;
        if (x.t == T_STR) {
            Val s = do_strip(x, V_ABSENT, 3);
            char b[64], *end;
            if (!s.n || s.n >= sizeof b) return d;
            memcpy(b, s.s, s.n);
            b[s.n] = 0;
            long long v = strtoll(b, &end, p[1].t == T_INT ? (int)p[1].i : 10);
            if (!*end) return mk_int(v);
            double f = strtod(b, &end);
            if (!*end && isfinite(f) && fabs(f) < 9.2e18) return mk_int((int64_t)f);
        }
        return d;
    }
    if (IS("float")) {
        BIND("default");
        Val d = p[0].t == T_ABSENT ? mk_float(0) : p[0];
        if (x.t == T_FLOAT) return x;
        if (x.t == T_INT || x.t == T_BOOL) return mk_float((double)x.i);
        if (x.t == T_STR) {
            Val s = do_strip(x, V_ABSENT, 3);
            char b[64], *end;
            if (!s.n || s.n >= sizeof b) return d;
            memcpy(b, s.s, s.n);
            b[s.n] = 0;
            double f = strtod(b, &end);
            if (!*end) return mk_float(f);
        }
        return d;
    }
    if (IS("abs")) {
        if (x.t == T_INT || x.t == T_BOOL) {
            if (x.i == INT64_MIN) rfail(r, at, "integer overflow");
            return mk_int(x.i < 0 ? -x.i : x.i);
        }
        if (x.t == T_FLOAT) return mk_float(fabs(x.f));
        rfail(r, at, "bad operand type for abs(): '%s'", type_name(x));
    }
    if (IS("round")) {
        BIND("precision", "method");
        if (!is_num(x)) rfail(r, at, "round: expected a number, not %s", type_name(x));
        int64_t pr = p[0].t == T_ABSENT ? 0 : need_int(r, at, name, p[0]);
        double m = pow(10, (double)pr), v = num(x) * m;
        const char *how = p[1].t == T_STR ? p[1].s : "common";
        v = !strncmp(how, "ceil", 4) ? ceil(v) : !strncmp(how, "floor", 5) ? floor(v) : rint(v); // Python's round: half to even
        return mk_float(v / m);
    }
    if (IS("sum")) {
        BIND("attribute", "start");
        int n;
        Val *it = items_of(r, at, x, &n);
        Val acc = p[1].t == T_ABSENT ? mk_int(0) : p[1];
        for (int i = 0; i < n; i++) {
            Val v = p[0].t == T_ABSENT ? it[i] : attr_path(r, at, it[i], p[0]);
            if (!is_num(acc) || !is_num(v)) rfail(r, at, "sum: unsupported operand types");
            if (acc.t != T_FLOAT && v.t != T_FLOAT) {
                if (__builtin_add_overflow(acc.i, v.i, &acc.i)) rfail(r, at, "integer overflow");
                acc.t = T_INT;
            } else acc = mk_float(num(acc) + num(v));
        }
        return acc;
    }
    if (IS("min") || IS("max")) {
        BIND("case_sensitive", "attribute");
        int n;
        Val *it = items_of(r, at, x, &n);
        if (!n) return undef_msg(r, "No aggregated item, sequence was empty.");
        int best = 0;
        for (int i = 1; i < n; i++) {
            Val a1 = p[1].t == T_ABSENT ? it[i] : attr_path(r, at, it[i], p[1]);
            Val b1 = p[1].t == T_ABSENT ? it[best] : attr_path(r, at, it[best], p[1]);
            int c = val_cmp(r, at, a1, b1, !truthy(p[0]));
            if (IS("min") ? c < 0 : c > 0) best = i;
        }
        return it[best];
    }
    if (IS("attr")) {
        BIND("name");
        Val s = need_str(r, at, name, p[0]);
        return get_attr(r, at, x, adup(&r->c, s.s, s.n));
    }
    if (IS("e") || IS("escape")) {
        if (x.t == T_STR && x.i) return x;
        return html_escape(r, str_of(r, at, x));
    }
    if (IS("wordcount")) {
        Val s = str_of(r, at, x);
        int64_t k = 0;
        int in_word = 0;
        for (size_t i = 0; i < s.n;) {
            size_t m;
            int32_t cp = u8_get(s.s + i, s.n - i, &m);
            utf8proc_category_t c = cp >= 0 ? utf8proc_category(cp) : UTF8PROC_CATEGORY_CN;
            int w = (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO) || c == UTF8PROC_CATEGORY_ND || cp == '_';
            if (w && !in_word) k++;
            in_word = w;
            i += m;
        }
        return mk_int(k);
    }
#undef BIND
#undef IS
    rfail(r, at, "no filter named '%s'", name);
}

// ---- expressions

static Val eval(R *r, Frame *f, const Node *n);

static void eval_args(R *r, Frame *f, const Node *n, Args *a) {
    a->n = n->nv;
    a->nk = n->nk;
    a->kn = n->kn;
    a->v = n->nv ? alloc(&r->c, sizeof(Val) * (size_t)n->nv) : NULL;
    a->kv = n->nk ? alloc(&r->c, sizeof(Val) * (size_t)n->nk) : NULL;
    for (int i = 0; i < n->nv; i++) a->v[i] = eval(r, f, n->v[i]);
    for (int i = 0; i < n->nk; i++) a->kv[i] = eval(r, f, n->kv[i]);
}

// jinja2's escape filter: a safe (Markup) string.
static Val html_escape(R *r, Val s) {
    SBuf b = {0};
    for (size_t i = 0; i < s.n; i++) {
        char ch = s.s[i];
        if (ch == '&') sb_puts(&r->c, &b, "&amp;");
        else if (ch == '<') sb_puts(&r->c, &b, "&lt;");
        else if (ch == '>') sb_puts(&r->c, &b, "&gt;");
        else if (ch == '"') sb_puts(&r->c, &b, "&#34;");
        else if (ch == '\'') sb_puts(&r->c, &b, "&#39;");
        else sb_ch(&r->c, &b, ch);
    }
    Val v = mk_str(b.s ? b.s : "", b.n);
    v.i = 1;
    return v;
}

// Python's str % args for the common conversions: %s %r %d %i %f %x %%
// (with flags, width and precision); others are an error.
static Val percent_format(R *r, const Node *at, Val fmt, Val args) {
    int na = 1, k = 0;
    Val *av = &args;
    if (args.t == T_LIST && args.l->tuple == LK_TUPLE) na = args.l->n, av = args.l->v;
    SBuf b = {0};
    for (size_t i = 0; i < fmt.n; i++) {
        if (fmt.s[i] != '%') {
            sb_ch(&r->c, &b, fmt.s[i]);
            continue;
        }
        // %[flags][width][.precision]conv, width and precision up to 3 digits
        size_t j = i + 1;
        char flags[8];
        int nf = 0, width = 0, prec = -1, nd = 0;
        while (j < fmt.n && strchr("-+ 0#", fmt.s[j]) && fmt.s[j] && nf < 7) flags[nf++] = fmt.s[j++];
        flags[nf] = 0;
        for (nd = 0; j < fmt.n && is_digit(fmt.s[j]) && nd < 3; nd++) width = width * 10 + (fmt.s[j++] - '0');
        if (j < fmt.n && fmt.s[j] == '.') {
            j++;
            prec = 0;
            for (nd = 0; j < fmt.n && is_digit(fmt.s[j]) && nd < 3; nd++) prec = prec * 10 + (fmt.s[j++] - '0');
        }
        if (j >= fmt.n) rfail(r, at, "incomplete format");
        char conv = fmt.s[j];
        i = j;
        if (conv == '%') {
            sb_ch(&r->c, &b, '%');
            continue;
        }
        if (!strchr("srdifx", conv) || !conv) rfail(r, at, "unsupported format character '%c'", conv);
        if (k >= na) rfail(r, at, "not enough arguments for format string");
        Val v = av[k++];
        if (conv == 's' || conv == 'r') { // width and precision count code points, as Python's
            SBuf t = {0};
            if (conv == 's') to_str(r, at, v, &t, 0);
            else repr(r, at, v, &t, 0);
            Val x = mk_str(t.s, t.n);
            if (prec >= 0 && (int64_t)u8_count(x.s, x.n) > prec) x = do_slice(r, at, x, V_ABSENT, mk_int(prec), V_ABSENT);
            int pad = width - (int)u8_count(x.s, x.n), left = strchr(flags, '-') != NULL;
            for (int p = 0; !left && p < pad; p++) sb_ch(&r->c, &b, ' ');
            sb_add(&r->c, &b, x.s, x.n);
            for (int p = 0; left && p < pad; p++) sb_ch(&r->c, &b, ' ');
            continue;
        }
        if (!is_num(v)) rfail(r, at, "%%%c format: a number is required, not %s", conv, type_name(v));
        char spec[32], out[1100];
        out[0] = 0;
        if (conv == 'f') {
            snprintf(spec, sizeof spec, "%%%s%d.%df", flags, width, prec < 0 ? 6 : prec);
            snprintf(out, sizeof out, spec, num(v));
        } else {
            if (prec >= 0) snprintf(spec, sizeof spec, "%%%s%d.%dll%c", flags, width, prec, conv == 'x' ? 'x' : 'd');
            else snprintf(spec, sizeof spec, "%%%s%dll%c", flags, width, conv == 'x' ? 'x' : 'd');
            snprintf(out, sizeof out, spec, (long long)(v.t == T_FLOAT ? (isfinite(v.f) && fabs(v.f) < 9e18 ? (int64_t)v.f : 0) : v.i));
        }
        sb_puts(&r->c, &b, out);
    }
    if (k < na) rfail(r, at, "not all arguments converted during string formatting");
    return mk_str(b.s, b.n);
}

static Val arith(R *r, const Node *at, int op, Val a, Val b) {
    if (a.t == T_UNDEF && op != OP_CAT) undef_fail(r, at, a);
    if (b.t == T_UNDEF && op != OP_CAT) undef_fail(r, at, b);
    static const char *const sym[] = {"+", "-", "*", "/", "//", "%", "**", "~"};
    if (op == OP_CAT) {
        SBuf s = {0};
        to_str(r, at, a, &s, 0);
        to_str(r, at, b, &s, 0);
        return mk_str(s.s ? s.s : "", s.n);
    }
    if (is_num(a) && is_num(b)) {
        int ints = a.t != T_FLOAT && b.t != T_FLOAT;
        int64_t x = a.i, y = b.i, z;
        double u = num(a), v = num(b);
        switch (op) {
        case OP_ADD:
            if (!ints) return mk_float(u + v);
            if (__builtin_add_overflow(x, y, &z)) rfail(r, at, "integer overflow");
            return mk_int(z);
        case OP_SUB:
            if (!ints) return mk_float(u - v);
            if (__builtin_sub_overflow(x, y, &z)) rfail(r, at, "integer overflow");
            return mk_int(z);
        case OP_MUL:
            if (!ints) return mk_float(u * v);
            if (__builtin_mul_overflow(x, y, &z)) rfail(r, at, "integer overflow");
            return mk_int(z);
        case OP_DIV:
            if (v == 0) rfail(r, at, "division by zero");
            return mk_float(u / v);
        case OP_FDIV:
        case OP_MOD:
            if (v == 0) rfail(r, at, "integer division or modulo by zero");
            if (ints) {
                if (x == INT64_MIN && y == -1) rfail(r, at, "integer overflow");
                int64_t q = x / y, m = x % y;
                if (m && ((m < 0) != (y < 0))) q--, m += y;
                return mk_int(op == OP_FDIV ? q : m);
            } else {
                double m = fmod(u, v);
                if (m && ((m < 0) != (v < 0))) m += v;
                return mk_float(op == OP_FDIV ? floor(u / v) : m);
            }
        case OP_POW:
            if (ints && y >= 0) {
                int64_t acc = 1;
                for (int64_t i = 0; i < y; i++) {
                    if (__builtin_mul_overflow(acc, x, &acc)) rfail(r, at, "integer overflow");
                    if (acc == 0 || acc == 1 || (acc == -1 && i > 64)) { // stays put: skip the rest
                        if (acc == -1 && (y - i - 1) % 2) acc = 1;
                        if (acc == 1 && x == -1 && (y - i - 1) % 2) acc = -1;
                        break;
                    }
                }
                return mk_int(acc);
            }
            return mk_float(pow(u, v));
        }
    }
    if (op == OP_ADD && a.t == T_STR && b.t == T_STR) {
        if (a.i != b.i) { // markupsafe: Markup + str escapes the str
            Val m = a.i ? a : b, s = html_escape(r, a.i ? b : a);
            Val v = arith(r, at, op, a.i ? m : s, a.i ? s : m);
            v.i = 1;
            return v;
        }
        char *d = alloc(&r->c, a.n + b.n + 1);
        if (a.n + b.n > r->lim.max_output) rfail(r, at, "output limit (%zu bytes) exceeded", r->lim.max_output);
        memcpy(d, a.s, a.n);
        memcpy(d + a.n, b.s, b.n);
        Val v = mk_str(d, a.n + b.n);
        v.i = a.i; // Markup + Markup stays Markup
        return v;
    }
    if (op == OP_ADD && a.t == T_LIST && b.t == T_LIST && a.l->tuple == b.l->tuple && a.l->tuple <= LK_TUPLE) {
        List *l = list_new(&r->c, a.l->n + b.l->n);
        memcpy(l->v, a.l->v, sizeof(Val) * (size_t)a.l->n);
        memcpy(l->v + a.l->n, b.l->v, sizeof(Val) * (size_t)b.l->n);
        l->n = a.l->n + b.l->n;
        l->tuple = a.l->tuple;
        return mk_list(l);
    }
    if (op == OP_MUL && (((a.t == T_STR || a.t == T_LIST) && (b.t == T_INT || b.t == T_BOOL)) ||
                         ((b.t == T_STR || b.t == T_LIST) && (a.t == T_INT || a.t == T_BOOL)))) {
        Val s = a.t == T_INT || a.t == T_BOOL ? b : a;
        int64_t k = a.t == T_INT || a.t == T_BOOL ? a.i : b.i;
        if (k < 0) k = 0;
        size_t unit = s.t == T_STR ? s.n : (size_t)s.l->n * sizeof(Val);
        if (!unit) k = 0; // "" * 10**18 is "", at once
        if (unit && (uint64_t)k > r->lim.max_output / unit) rfail(r, at, "output limit (%zu bytes) exceeded", r->lim.max_output);
        if (s.t == T_STR) {
            char *d = alloc(&r->c, s.n * (size_t)k + 1);
            for (int64_t i = 0; i < k; i++) memcpy(d + (size_t)i * s.n, s.s, s.n);
            return mk_str(d, s.n * (size_t)k);
        }
        List *l = list_new(&r->c, (int)(s.l->n * k));
        for (int64_t i = 0; i < k; i++) memcpy(l->v + i * s.l->n, s.l->v, sizeof(Val) * (size_t)s.l->n);
        l->n = (int)(s.l->n * k);
        l->tuple = s.l->tuple;
        return mk_list(l);
    }
    if (op == OP_MOD && a.t == T_STR) return percent_format(r, at, a, b);
    rfail(r, at, "unsupported operand type(s) for %s: '%s' and '%s'", sym[op], type_name(a), type_name(b));
}

static const struct {
    const char *name;
    int id;
} globals[] = {{"range", F_RANGE}, {"namespace", F_NAMESPACE}, {"dict", F_DICT}, {"raise_exception", F_RAISE}, {"strftime_now", F_STRFTIME}};

static void stack_check(R *r, const Node *at) {
    char here;
    uintptr_t p = (uintptr_t)&here;
    if ((p < r->stack_base ? r->stack_base - p : p - r->stack_base) > STACK_MAX)
        rfail(r, at, "recursion limit: the template nests too deeply (over %u KiB of stack)", (unsigned)(STACK_MAX >> 10));
}

static Val eval(R *r, Frame *f, const Node *n) {
    stack_check(r, n);
    switch (n->k) {
    case E_CONST: return n->val;
    case E_NAME: {
        Val *v = frame_find(f, n->s);
        if (v) return *v;
        for (size_t i = 0; i < sizeof globals / sizeof *globals; i++)
            if (!strcmp(globals[i].name, n->s)) return mk_func(r, globals[i].id, V_NONE);
        return undef_name(n->s);
    }
    case E_ATTR: return get_attr(r, n, eval(r, f, n->a), n->s);
    case E_ITEM: return get_item(r, n, eval(r, f, n->a), eval(r, f, n->b));
    case E_SLICE: {
        Val o = eval(r, f, n->a), x[3];
        for (int i = 0; i < 3; i++) x[i] = n->v[i] ? eval(r, f, n->v[i]) : V_ABSENT;
        return do_slice(r, n, o, x[0], x[1], x[2]);
    }
    case E_CALL: {
        Val fn = eval(r, f, n->a);
        Args a;
        eval_args(r, f, n, &a);
        return call(r, n, fn, &a);
    }
    case E_FILTER: {
        Val x = eval(r, f, n->a);
        Args a;
        eval_args(r, f, n, &a);
        return apply_filter(r, n, n->s, x, &a);
    }
    case E_TEST: {
        Val x = eval(r, f, n->a);
        Args a;
        eval_args(r, f, n, &a);
        return mk_bool(apply_test(r, n, n->s, x, &a) != n->op);
    }
    case E_BIN: return arith(r, n, n->op, eval(r, f, n->a), eval(r, f, n->b));
    case E_NEG:
    case E_POS: {
        Val x = eval(r, f, n->a);
        if (x.t == T_UNDEF) undef_fail(r, n, x);
        if (!is_num(x)) rfail(r, n, "bad operand type for unary %c: '%s'", n->k == E_NEG ? '-' : '+', type_name(x));
        if (n->k == E_POS) return x.t == T_BOOL ? mk_int(x.i) : x;
        if (x.t == T_FLOAT) return mk_float(-x.f);
        if (x.i == INT64_MIN) rfail(r, n, "integer overflow");
        return mk_int(-x.i);
    }
    case E_NOT: return mk_bool(!truthy(eval(r, f, n->a)));
    case E_AND: {
        Val a = eval(r, f, n->a);
        return truthy(a) ? eval(r, f, n->b) : a;
    }
    case E_OR: {
        Val a = eval(r, f, n->a);
        return truthy(a) ? a : eval(r, f, n->b);
    }
    case E_COND:
        if (truthy(eval(r, f, n->b))) return eval(r, f, n->a);
        return n->c ? eval(r, f, n->c) : undef_msg(r, "the inline if-expression on line %d evaluated to false and no else section was defined.", n->line);
    case E_LIST:
    case E_TUPLE: {
        List *l = list_new(&r->c, n->nv);
        for (int i = 0; i < n->nv; i++) l->v[i] = eval(r, f, n->v[i]);
        l->n = n->nv;
        l->tuple = n->k == E_TUPLE;
        return mk_list(l);
    }
    case E_DICT: {
        Dict *d = dict_new(&r->c);
        for (int i = 0; i + 1 < n->nv; i += 2) dict_set(&r->c, d, eval(r, f, n->v[i]), eval(r, f, n->v[i + 1]));
        return (Val){.t = T_DICT, .d = d};
    }
    case E_CMP: {
        Val a = eval(r, f, n->a);
        for (int i = 0; i < n->nv; i++) {
            Val b = eval(r, f, n->v[i]);
            if (!compare(r, n, n->ops[i], a, b)) return mk_bool(0);
            a = b;
        }
        return mk_bool(1);
    }
    case E_BODY: return r->body;
    }
    rfail(r, n, "cannot evaluate this node");
}

// ---- statements

enum { GO_ON, GO_BREAK, GO_CONTINUE };

static void assign(R *r, Frame *f, const Node *n, Val v) {
    if (n->nnames == 1) {
        frame_set(r, f, n->names[0], v);
        return;
    }
    int k;
    Val *it = items_of(r, n, v, &k);
    if (k != n->nnames)
        rfail(r, n, "%s values to unpack (expected %d, got %d)", k > n->nnames ? "too many" : "not enough", n->nnames, k);
    for (int i = 0; i < k; i++) frame_set(r, f, n->names[i], it[i]);
}

static int exec(R *r, Frame *f, const Node *n, SBuf *out);

static Val exec_capture(R *r, Frame *f, const Node *body) {
    SBuf b = {.max = r->lim.max_output};
    exec(r, f, body, &b);
    return mk_str(b.s ? b.s : "", b.n);
}

static Val call_macro(R *r, const Node *at, const Node *m, const Args *a) {
    if (++r->depth > r->lim.max_depth) rfail(r, at, "recursion limit: macro calls nested deeper than %d", r->lim.max_depth);
    Frame *f = frame_new(r, r->top);
    if (a->n > m->nnames) rfail(r, at, "macro '%s' takes not more than %d argument(s)", m->s, m->nnames);
    for (int k = 0; k < a->nk; k++) {
        int i = 0;
        while (i < m->nnames && strcmp(m->names[i], a->kn[k])) i++;
        if (i == m->nnames) rfail(r, at, "macro '%s' takes no keyword argument '%s'", m->s, a->kn[k]);
        if (i < a->n) rfail(r, at, "macro '%s' got multiple values for argument '%s'", m->s, a->kn[k]);
    }
    for (int i = 0; i < m->nnames; i++) {
        Val v = V_ABSENT;
        if (i < a->n) v = a->v[i];
        for (int k = 0; k < a->nk; k++)
            if (!strcmp(m->names[i], a->kn[k])) v = a->kv[k];
        if (v.t == T_ABSENT) v = m->kv[i] ? eval(r, f, m->kv[i]) : undef_msg(r, "parameter '%s' was not provided", m->names[i]);
        frame_set(r, f, m->names[i], v);
    }
    Val s = exec_capture(r, f, m->body);
    r->depth--;
    return s;
}

static int exec(R *r, Frame *f, const Node *n, SBuf *out) {
    stack_check(r, n);
    switch (n->k) {
    case X_BLOCK:
        for (int i = 0; i < n->nv; i++) {
            int rc = exec(r, f, n->v[i], out);
            if (rc) return rc;
        }
        return GO_ON;
    case X_TEXT: sb_add(&r->c, out, n->s, n->n); return GO_ON;
    case X_OUT: to_str(r, n, eval(r, f, n->a), out, 0); return GO_ON;
    case X_IF:
        if (truthy(eval(r, f, n->a))) return exec(r, f, n->body, out);
        return n->orelse ? exec(r, f, n->orelse, out) : GO_ON;
    case X_FOR: {
        int cnt;
        Val *it = items_of(r, n, eval(r, f, n->a), &cnt);
        if (n->b) { // {% for x in xs if cond %}: filtered before the loop counts
            Val *kept = alloc(&r->c, sizeof(Val) * (size_t)(cnt + 1));
            int k = 0;
            for (int i = 0; i < cnt; i++) {
                tick(r, n, 1);
                Frame *g = frame_new(r, f);
                assign(r, g, n, it[i]);
                if (truthy(eval(r, g, n->b))) kept[k++] = it[i];
            }
            it = kept;
            cnt = k;
        }
        if (++r->depth > r->lim.max_depth) rfail(r, n, "loops nested deeper than %d", r->lim.max_depth);
        Loop *lp = alloc(&r->c, sizeof *lp);
        lp->n = cnt;
        lp->items = it;
        for (int i = 0; i < cnt; i++) {
            tick(r, n, 1);
            lp->i = i;
            Frame *g = frame_new(r, f);
            assign(r, g, n, it[i]);
            frame_set(r, g, "loop", (Val){.t = T_LOOP, .lp = lp});
            if (exec(r, g, n->body, out) == GO_BREAK) break;
        }
        r->depth--;
        if (!cnt && n->orelse) return exec(r, f, n->orelse, out);
        return GO_ON;
    }
    case X_SET: assign(r, f, n, eval(r, f, n->a)); return GO_ON;
    case X_SETATTR: {
        Val *ns = frame_find(f, n->s);
        if (!ns || ns->t != T_NS) rfail(r, n, "cannot assign attribute on non-namespace object");
        dict_set(&r->c, ns->d, mk_cstr(n->names[0]), eval(r, f, n->a));
        return GO_ON;
    }
    case X_SETBLOCK:
    case X_FILTERBLOCK: {
        Val saved = r->body;
        r->body = exec_capture(r, f, n->body);
        Val v = eval(r, f, n->a);
        r->body = saved;
        if (n->k == X_SETBLOCK) frame_set(r, f, n->names[0], v);
        else to_str(r, n, v, out, 0);
        return GO_ON;
    }
    case X_MACRO: frame_set(r, f, n->s, (Val){.t = T_MACRO, .m = n}); return GO_ON;
    case X_BREAK: return GO_BREAK;
    case X_CONTINUE: return GO_CONTINUE;
    }
    rfail(r, n, "cannot execute this node");
}

static Val from_json(R *r, const cJSON *j, int depth) {
    if (depth > 1000) fail(&r->c, 0, 0, "chat template: variables nested too deeply");
    if (cJSON_IsNull(j)) return V_NONE;
    if (cJSON_IsTrue(j)) return mk_bool(1);
    if (cJSON_IsFalse(j)) return mk_bool(0);
    if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;
        if (d == floor(d) && fabs(d) < 9007199254740992.0) return mk_int((int64_t)d);
        return mk_float(d);
    }
    if (cJSON_IsString(j)) return mk_cstr(j->valuestring);
    if (cJSON_IsArray(j)) {
        List *l = list_new(&r->c, cJSON_GetArraySize(j));
        const cJSON *x;
        cJSON_ArrayForEach(x, j) list_push(&r->c, l, from_json(r, x, depth + 1));
        return mk_list(l);
    }
    if (cJSON_IsObject(j)) {
        Dict *d = dict_new(&r->c);
        const cJSON *x;
        cJSON_ArrayForEach(x, j) dict_set(&r->c, d, mk_cstr(x->string), from_json(r, x, depth + 1));
        return (Val){.t = T_DICT, .d = d};
    }
    return V_NONE;
}

char *pq_jinja_render(const PqJinja *t, const cJSON *vars, const struct tm *now, const PqJinjaLimits *limits, PqErr *e) {
    R *r = pq_xcalloc(1, sizeof *r);
    r->c.e = e;
    r->lim = limits ? *limits : pq_jinja_default_limits;
    r->c.max_mem = r->lim.max_memory;
    if (now) {
        r->now = *now;
    } else {
        time_t tt = time(NULL);
        localtime_r(&tt, &r->now);
    }
    char *result = NULL, base;
    r->stack_base = (uintptr_t)&base;
    if (setjmp(r->c.jb)) goto done;
    Frame *g = frame_new(r, NULL);
    const cJSON *v;
    cJSON_ArrayForEach(v, vars) if (v->string) frame_set(r, g, v->string, from_json(r, v, 0));
    r->top = frame_new(r, g);
    SBuf out = {.max = r->lim.max_output};
    exec(r, r->top, t->root, &out);
    result = pq_xmalloc(out.n + 1);
    if (out.n) memcpy(result, out.s, out.n);
    result[out.n] = 0;
done:
    chunks_free(r->c.chunks);
    free(r);
    return result;
}
