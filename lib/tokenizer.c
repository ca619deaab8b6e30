// tokenizer.c: loads a Hugging Face tokenizer.json and runs its pipeline as
// the tokenizers library does: added tokens, normalizer, pre-tokenizer, BPE
// (tok_bpe.c), post-processor; and the decoder chain for decode.
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tok_internal.h"

void pq_tokens_push(PqTokens *t, int32_t id) {
    if (t->len == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 64;
        t->data = pq_xrealloc(t->data, t->cap * sizeof *t->data);
    }
    t->data[t->len++] = id;
}

void pq_tokens_free(PqTokens *t) {
    free(t->data);
    memset(t, 0, sizeof *t);
}

// ---- loading -------------------------------------------------------------------

static const char *type_of(const cJSON *o) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "type");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

static int get_bool(const cJSON *o, const char *key, int dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    return dflt;
}

static int get_num(const cJSON *o, const char *key, double *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v)) return 0;
    *out = v->valuedouble;
    return 1;
}

static const char *get_str(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

// {"String": "..."} or {"Regex": "..."}: the literal or the compiled regex.
static int get_pattern(const cJSON *o, const char *what, char **lit, size_t *lit_len, pcre2_code **re, PqErr *e) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "pattern");
    const char *s;
    *lit = NULL, *re = NULL;
    if ((s = get_str(p, "String"))) {
        *lit = pq_xstrdup(s);
        *lit_len = strlen(s);
        return 0;
    }
    if ((s = get_str(p, "Regex"))) {
        *re = tok_regex_compile(s, strlen(s), e);
        return *re ? 0 : -1;
    }
    pq_err(e, "%s: \"pattern\" is neither {\"String\": ...} nor {\"Regex\": ...}", what);
    return -1;
}

static int add_norm(PqTokenizer *tok, const cJSON *o, PqErr *e) {
    if (cJSON_IsNull(o) || !o) return 0;
    const char *t = type_of(o);
    if (!t) {
        pq_err(e, "normalizer without a \"type\"");
        return -1;
    }
    if (!strcmp(t, "Sequence")) {
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(o, "normalizers")) if (add_norm(tok, c, e)) return -1;
        return 0;
    }
    TokNormOp op = {0};
    if (!strcmp(t, "NFC")) op.type = TOK_NORM_NFC;
    else if (!strcmp(t, "NFD")) op.type = TOK_NORM_NFD;
    else if (!strcmp(t, "NFKC")) op.type = TOK_NORM_NFKC;
    else if (!strcmp(t, "NFKD")) op.type = TOK_NORM_NFKD;
    else if (!strcmp(t, "Prepend")) {
        const char *s = get_str(o, "prepend");
        if (!s) {
            pq_err(e, "normalizer Prepend without \"prepend\"");
            return -1;
        }
        op.type = TOK_NORM_PREPEND, op.content = pq_xstrdup(s), op.content_len = strlen(s);
    } else if (!strcmp(t, "Replace")) {
        const char *s = get_str(o, "content");
        if (!s) {
            pq_err(e, "normalizer Replace without \"content\"");
            return -1;
        }
        op.type = TOK_NORM_REPLACE;
        if (get_pattern(o, "normalizer Replace", &op.pat, &op.pat_len, &op.re, e)) return -1;
        op.content = pq_xstrdup(s), op.content_len = strlen(s);
    } else {
        pq_err(e, "unsupported normalizer %s (pq supports Sequence, NFC, NFD, NFKC, NFKD, Prepend, Replace)", t);
        return -1;
    }
    tok->norm = pq_xrealloc(tok->norm, (size_t)(tok->n_norm + 1) * sizeof *tok->norm);
    tok->norm[tok->n_norm++] = op;
    return 0;
}

static int parse_behavior(const char *b, int *out) {
    static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
    for (int i = 0; i < 5; i++)
        if (b && !strcmp(b, names[i])) {
            *out = i;
            return 0;
        }
    return -1;
}

static int add_pre(PqTokenizer *tok, const cJSON *o, PqErr *e) {
    if (cJSON_IsNull(o) || !o) return 0;
    const char *t = type_of(o);
    if (!t) {
        pq_err(e, "pre_tokenizer without a \"type\"");
        return -1;
    }
    if (tok->n_pre && tok->pre[tok->n_pre - 1].type == TOK_PRE_BYTELEVEL) {
        pq_err(e, "unsupported pre_tokenizer: %s after ByteLevel (pq needs ByteLevel last)", t);
        return -1;
    }
    if (!strcmp(t, "Sequence")) {
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(o, "pretokenizers")) if (add_pre(tok, c, e)) return -1;
        return 0;
    }
    TokPreOp op = {0};
    if (!strcmp(t, "Metaspace")) {
        const char *r = get_str(o, "replacement");
        op.type = TOK_PRE_METASPACE;
        if (!r || !*r || strlen(r) >= sizeof op.repl) {
            pq_err(e, "pre_tokenizer Metaspace: bad \"replacement\"");
            return -1;
        }
        strcpy(op.repl, r);
        op.repl_len = strlen(r);
        const char *ps = get_str(o, "prepend_scheme");
        if (ps) {
            if (!strcmp(ps, "always")) op.prepend_scheme = TOK_PREPEND_ALWAYS;
            else if (!strcmp(ps, "first")) op.prepend_scheme = TOK_PREPEND_FIRST;
            else if (!strcmp(ps, "never")) op.prepend_scheme = TOK_PREPEND_NEVER;
            else {
                pq_err(e, "pre_tokenizer Metaspace: unknown prepend_scheme %s", ps);
                return -1;
            }
        } else {
            op.prepend_scheme = get_bool(o, "add_prefix_space", 1) ? TOK_PREPEND_ALWAYS : TOK_PREPEND_NEVER;
        }
        op.split = get_bool(o, "split", 1);
    } else if (!strcmp(t, "ByteLevel")) {
        op.type = TOK_PRE_BYTELEVEL;
        op.add_prefix_space = get_bool(o, "add_prefix_space", 1);
        if (get_bool(o, "use_regex", 1) && !(op.re = tok_regex_compile(tok_gpt2_split, strlen(tok_gpt2_split), e)))
            return -1;
        tok->byte_level = 1;
    } else if (!strcmp(t, "Split")) {
        op.type = TOK_PRE_SPLIT;
        if (parse_behavior(get_str(o, "behavior"), &op.behavior)) {
            pq_err(e, "pre_tokenizer Split: unknown behavior %s", get_str(o, "behavior") ? get_str(o, "behavior") : "(none)");
            return -1;
        }
        op.invert = get_bool(o, "invert", 0);
        if (get_pattern(o, "pre_tokenizer Split", &op.lit, &op.lit_len, &op.re, e)) return -1;
    } else if (!strcmp(t, "Digits")) {
        op.type = TOK_PRE_DIGITS;
        op.individual_digits = get_bool(o, "individual_digits", 0);
    } else {
        pq_err(e, "unsupported pre_tokenizer %s (pq supports Sequence, Metaspace, ByteLevel, Split, Digits)", t);
        return -1;
    }
    tok->pre = pq_xrealloc(tok->pre, (size_t)(tok->n_pre + 1) * sizeof *tok->pre);
    tok->pre[tok->n_pre++] = op;
    return 0;
}

static int add_dec(PqTokenizer *tok, const cJSON *o, PqErr *e) {
    if (cJSON_IsNull(o) || !o) return 0;
    const char *t = type_of(o);
    if (!t) {
        pq_err(e, "decoder without a \"type\"");
        return -1;
    }
    tok->has_decoder = 1;
    if (!strcmp(t, "Sequence")) {
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(o, "decoders")) if (add_dec(tok, c, e)) return -1;
        return 0;
    }
    TokDecOp op = {0};
    if (!strcmp(t, "Replace")) {
        pcre2_code *re;
        const char *c = get_str(o, "content");
        op.type = TOK_DEC_REPLACE;
        if (get_pattern(o, "decoder Replace", &op.pat, &op.pat_len, &re, e)) return -1;
        if (re || !c) {
            if (re) pcre2_code_free(re);
            pq_err(e, "unsupported decoder: Replace with a Regex pattern or without content");
            return -1;
        }
        op.content = pq_xstrdup(c), op.content_len = strlen(c);
    } else if (!strcmp(t, "ByteFallback")) {
        op.type = TOK_DEC_BYTEFALLBACK;
    } else if (!strcmp(t, "Fuse")) {
        op.type = TOK_DEC_FUSE;
    } else if (!strcmp(t, "Strip")) {
        const char *c = get_str(o, "content");
        double start = 0, stop = 0;
        op.type = TOK_DEC_STRIP;
        if (!c || !*c || !get_num(o, "start", &start) || !get_num(o, "stop", &stop)) {
            pq_err(e, "decoder Strip needs content, start and stop");
            return -1;
        }
        tok_utf8_decode(c, strlen(c), 0, &op.strip_char);
        op.start = (int)start, op.stop = (int)stop;
    } else if (!strcmp(t, "ByteLevel")) {
        op.type = TOK_DEC_BYTELEVEL;
    } else if (!strcmp(t, "Metaspace")) {
        const char *r = get_str(o, "replacement");
        const char *ps = get_str(o, "prepend_scheme");
        op.type = TOK_DEC_METASPACE;
        if (!r || !*r) {
            pq_err(e, "decoder Metaspace without a replacement");
            return -1;
        }
        op.pat = pq_xstrdup(r), op.pat_len = strlen(r);
        op.prepend = ps ? strcmp(ps, "never") != 0 : get_bool(o, "add_prefix_space", 1);
    } else {
        pq_err(e, "unsupported decoder %s (pq supports Sequence, Replace, ByteFallback, Fuse, Strip, ByteLevel, Metaspace)",
               t);
        return -1;
    }
    tok->dec = pq_xrealloc(tok->dec, (size_t)(tok->n_dec + 1) * sizeof *tok->dec);
    tok->dec[tok->n_dec++] = op;
    return 0;
}

static void push_ids(int32_t **v, int *n, int32_t id) {
    *v = pq_xrealloc(*v, (size_t)(*n + 1) * sizeof **v);
    (*v)[(*n)++] = id;
}

static int add_post(PqTokenizer *tok, const cJSON *o, PqErr *e) {
    if (cJSON_IsNull(o) || !o) return 0;
    const char *t = type_of(o);
    if (!t) {
        pq_err(e, "post_processor without a \"type\"");
        return -1;
    }
    if (!strcmp(t, "Sequence")) {
        const cJSON *c;
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(o, "processors")) if (add_post(tok, c, e)) return -1;
        return 0;
    }
    if (!strcmp(t, "ByteLevel")) return 0; // only trims offsets
    if (strcmp(t, "TemplateProcessing")) {
        pq_err(e, "unsupported post_processor %s (pq supports Sequence, ByteLevel, TemplateProcessing)", t);
        return -1;
    }
    const cJSON *special = cJSON_GetObjectItemCaseSensitive(o, "special_tokens"), *piece;
    int seen_seq = 0;
    cJSON_ArrayForEach(piece, cJSON_GetObjectItemCaseSensitive(o, "single")) {
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(piece, "SpecialToken");
        if (cJSON_GetObjectItemCaseSensitive(piece, "Sequence")) {
            seen_seq = 1;
            continue;
        }
        const char *name = get_str(st, "id");
        const cJSON *def = name ? cJSON_GetObjectItemCaseSensitive(special, name) : NULL, *id;
        if (!def) {
            pq_err(e, "post_processor TemplateProcessing: special token %s not defined", name ? name : "(none)");
            return -1;
        }
        cJSON_ArrayForEach(id, cJSON_GetObjectItemCaseSensitive(def, "ids")) {
            if (seen_seq) push_ids(&tok->post_post, &tok->n_post_post, (int32_t)id->valuedouble);
            else push_ids(&tok->post_pre, &tok->n_post_pre, (int32_t)id->valuedouble);
        }
    }
    return 0;
}

static int load_model(PqTokenizer *tok, const cJSON *model, PqErr *e) {
    const char *t = type_of(model);
    if (!cJSON_IsObject(model)) {
        pq_err(e, "no \"model\" object");
        return -1;
    }
    if (t ? strcmp(t, "BPE") != 0 : !cJSON_GetObjectItemCaseSensitive(model, "merges")) {
        pq_err(e, "unsupported model type %s (pq supports BPE)", t ? t : "(none)");
        return -1;
    }
    double dropout;
    if (get_num(model, "dropout", &dropout) && dropout > 0) {
        pq_err(e, "unsupported: BPE dropout %g (pq tokenizes deterministically)", dropout);
        return -1;
    }
    const char *p = get_str(model, "continuing_subword_prefix"), *s = get_str(model, "end_of_word_suffix");
    if ((p && *p) || (s && *s)) {
        pq_err(e, "unsupported: BPE continuing_subword_prefix / end_of_word_suffix");
        return -1;
    }
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab"), *v;
    if (!cJSON_IsObject(vocab)) {
        pq_err(e, "model has no \"vocab\" object");
        return -1;
    }
    int32_t n = 0;
    cJSON_ArrayForEach(v, vocab) {
        if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= 1e8) {
            pq_err(e, "vocab entry %s has a bad id", v->string);
            return -1;
        }
        if ((int32_t)v->valuedouble + 1 > n) n = (int32_t)v->valuedouble + 1;
    }
    tok->n_vocab = n;
    tok->tok_str = pq_xcalloc((size_t)n, sizeof *tok->tok_str);
    tok->tok_len = pq_xcalloc((size_t)n, sizeof *tok->tok_len);
    tok->vocab_keys = pq_xcalloc((size_t)cJSON_GetArraySize(vocab) + 1, sizeof *tok->vocab_keys);
    cJSON_ArrayForEach(v, vocab) {
        int32_t id = (int32_t)v->valuedouble;
        size_t len = strlen(v->string);
        if (!tok->tok_str[id]) tok->tok_str[id] = pq_xstrndup(v->string, len), tok->tok_len[id] = (uint32_t)len;
        char *key = tok->vocab_keys[tok->n_vocab_keys++] = pq_xstrndup(v->string, len);
        tok_strmap_put(&tok->vocab, key, len, id);
    }
    tok->byte_fallback = get_bool(model, "byte_fallback", 0);
    tok->fuse_unk = get_bool(model, "fuse_unk", 0);
    tok->ignore_merges = get_bool(model, "ignore_merges", 0);
    tok->unk_id = -1;
    const char *unk = get_str(model, "unk_token");
    if (unk && (tok->unk_id = tok_strmap_get(&tok->vocab, unk, strlen(unk))) < 0) {
        pq_err(e, "unk_token %s is not in the vocab", unk);
        return -1;
    }
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges"), *m;
    int32_t rank = 0;
    PqBuf both = {0};
    cJSON_ArrayForEach(m, merges) {
        const char *a, *b;
        size_t alen, blen;
        if (cJSON_IsString(m)) { // "a b"
            const char *sp = strchr(m->valuestring, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                pq_err(e, "merge %d (%s) is not two tokens", rank + 1, m->valuestring);
                pq_buf_free(&both);
                return -1;
            }
            a = m->valuestring, alen = (size_t)(sp - a), b = sp + 1, blen = strlen(b);
        } else if (cJSON_GetArraySize(m) == 2 && cJSON_IsString(cJSON_GetArrayItem(m, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(m, 1))) { // ["a", "b"]
            a = cJSON_GetArrayItem(m, 0)->valuestring, b = cJSON_GetArrayItem(m, 1)->valuestring;
            alen = strlen(a), blen = strlen(b);
        } else {
            pq_err(e, "merge %d is neither \"a b\" nor [\"a\", \"b\"]", rank + 1);
            pq_buf_free(&both);
            return -1;
        }
        pq_buf_clear(&both);
        pq_buf_append(&both, a, alen);
        pq_buf_append(&both, b, blen);
        int32_t ia = tok_strmap_get(&tok->vocab, a, alen), ib = tok_strmap_get(&tok->vocab, b, blen);
        int32_t ic = tok_strmap_get(&tok->vocab, both.data, both.len);
        if (ia < 0 || ib < 0 || ic < 0) {
            pq_err(e, "merge %d: token %s is not in the vocab", rank + 1, ia < 0 ? "(left)" : ib < 0 ? "(right)" : both.data);
            pq_buf_free(&both);
            return -1;
        }
        tok_mergemap_put(&tok->merges, ia, ib, rank, ic);
        rank++;
    }
    pq_buf_free(&both);
    return 0;
}

static int load_added(PqTokenizer *tok, const cJSON *added, PqErr *e) {
    const cJSON *a;
    int n = cJSON_GetArraySize(added);
    tok->added = pq_xcalloc((size_t)n + 1, sizeof *tok->added);
    cJSON_ArrayForEach(a, added) {
        const char *c = get_str(a, "content");
        double id;
        if (!c || !get_num(a, "id", &id) || id < 0 || id >= 1e8) {
            pq_err(e, "added token %d lacks content or id", tok->n_added);
            return -1;
        }
        TokAdded *t = &tok->added[tok->n_added++];
        t->content = pq_xstrdup(c), t->len = strlen(c), t->id = (int32_t)id;
        t->special = get_bool(a, "special", 0);
        t->lstrip = get_bool(a, "lstrip", 0);
        t->rstrip = get_bool(a, "rstrip", 0);
        t->normalized = get_bool(a, "normalized", !t->special);
        t->single_word = get_bool(a, "single_word", 0);
        if (t->id >= tok->n_vocab) {
            int32_t n2 = t->id + 1;
            tok->tok_str = pq_xrealloc(tok->tok_str, (size_t)n2 * sizeof *tok->tok_str);
            tok->tok_len = pq_xrealloc(tok->tok_len, (size_t)n2 * sizeof *tok->tok_len);
            for (int32_t i = tok->n_vocab; i < n2; i++) tok->tok_str[i] = NULL, tok->tok_len[i] = 0;
            tok->n_vocab = n2;
        }
    }
    tok->tok_special = pq_xcalloc((size_t)tok->n_vocab, 1);
    for (int i = 0; i < tok->n_added; i++) {
        TokAdded *t = &tok->added[i];
        free(tok->tok_str[t->id]);
        tok->tok_str[t->id] = pq_xstrndup(t->content, t->len);
        tok->tok_len[t->id] = (uint32_t)t->len;
        tok->tok_special[t->id] = (unsigned char)t->special;
    }
    return 0;
}

PqTokenizer *pq_tokenizer_load(const char *path, PqErr *e) {
    size_t len;
    char *text = pq_read_file(path, &len, e);
    if (!text) return NULL;
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!j) {
        pq_err(e, "%s: not JSON (near byte %ld)", path, end ? (long)(end - text) : -1L);
        free(text);
        return NULL;
    }
    free(text);
    PqTokenizer *tok = pq_xcalloc(1, sizeof *tok);
    PqErr e2;
    int rc = load_model(tok, cJSON_GetObjectItemCaseSensitive(j, "model"), &e2);
    if (!rc) rc = load_added(tok, cJSON_GetObjectItemCaseSensitive(j, "added_tokens"), &e2);
    if (!rc) rc = add_norm(tok, cJSON_GetObjectItemCaseSensitive(j, "normalizer"), &e2);
    if (!rc) rc = add_pre(tok, cJSON_GetObjectItemCaseSensitive(j, "pre_tokenizer"), &e2);
    if (!rc) rc = add_post(tok, cJSON_GetObjectItemCaseSensitive(j, "post_processor"), &e2);
    if (!rc) rc = add_dec(tok, cJSON_GetObjectItemCaseSensitive(j, "decoder"), &e2);
    cJSON_Delete(j);
    if (rc) {
        pq_err(e, "%s: %s", path, e2.msg);
        pq_tokenizer_free(tok);
        return NULL;
    }
    // the patterns of normalized added tokens are their normalized content
    PqBuf nb = {0};
    for (int i = 0; i < tok->n_added; i++) {
        TokAdded *t = &tok->added[i];
        if (!t->normalized || !t->len) {
            if (t->len) tok->added_first[(unsigned char)t->content[0]] = 1;
            continue;
        }
        if (tok_normalize(tok, t->content, t->len, &nb, &e2)) {
            pq_err(e, "%s: added token %s: %s", path, t->content, e2.msg);
            pq_buf_free(&nb);
            pq_tokenizer_free(tok);
            return NULL;
        }
        t->norm = pq_xstrndup(nb.data, nb.len), t->norm_len = nb.len;
        if (t->norm_len) tok->addedn_first[(unsigned char)t->norm[0]] = 1;
    }
    pq_buf_free(&nb);
    tok_bytes_to_unicode(tok->byte_char);
    for (int b = 0; b < 256; b++) {
        char name[8];
        int n;
        if (tok->byte_level) n = tok_utf8_encode(tok->byte_char[b], name);
        else n = snprintf(name, sizeof name, "<0x%02X>", b);
        tok->byte_id[b] = tok_strmap_get(&tok->vocab, name, (size_t)n);
    }
    return tok;
}

PqTokenizer *pq_tokenizer_load_dir(const char *dir, PqErr *e) {
    PqBuf p = {0};
    pq_buf_printf(&p, "%s/tokenizer.json", dir);
    PqTokenizer *tok = pq_tokenizer_load(p.data, e);
    pq_buf_free(&p);
    return tok;
}

void pq_tokenizer_free(PqTokenizer *tok) {
    if (!tok) return;
    for (int32_t i = 0; i < tok->n_vocab; i++) free(tok->tok_str[i]);
    free(tok->tok_str);
    free(tok->tok_len);
    free(tok->tok_special);
    tok_strmap_free(&tok->vocab);
    for (size_t i = 0; i < tok->n_vocab_keys; i++) free(tok->vocab_keys[i]);
    free(tok->vocab_keys);
    tok_mergemap_free(&tok->merges);
    for (int i = 0; i < tok->n_added; i++) free(tok->added[i].content), free(tok->added[i].norm);
    free(tok->added);
    for (int i = 0; i < tok->n_norm; i++) {
        free(tok->norm[i].pat);
        free(tok->norm[i].content);
        pcre2_code_free(tok->norm[i].re);
    }
    free(tok->norm);
    for (int i = 0; i < tok->n_pre; i++) {
        pcre2_code_free(tok->pre[i].re);
        free(tok->pre[i].lit);
    }
    free(tok->pre);
    for (int i = 0; i < tok->n_dec; i++) free(tok->dec[i].pat), free(tok->dec[i].content);
    free(tok->dec);
    free(tok->post_pre);
    free(tok->post_post);
    free(tok);
}

int pq_tokenizer_vocab_size(const PqTokenizer *tok) { return tok->n_vocab; }

int32_t pq_tokenizer_token_id(const PqTokenizer *tok, const char *token) {
    size_t len = strlen(token);
    for (int i = 0; i < tok->n_added; i++)
        if (tok->added[i].len == len && !memcmp(tok->added[i].content, token, len)) return tok->added[i].id;
    return tok_strmap_get(&tok->vocab, token, len);
}

const char *pq_tokenizer_token(const PqTokenizer *tok, int32_t id) {
    if (id < 0 || id >= tok->n_vocab) return NULL;
    return tok->tok_str[id];
}

// ---- encoding -------------------------------------------------------------------

// A segment of the text: an added token (id >= 0) or text to tokenize.
typedef struct Seg {
    size_t s, e;
    int32_t id;
} Seg;
typedef struct Segs {
    Seg *v;
    int n, cap;
} Segs;

static void segs_push(Segs *g, size_t s, size_t e, int32_t id) {
    if (g->n == g->cap) {
        g->cap = g->cap ? 2 * g->cap : 16;
        g->v = pq_xrealloc(g->v, (size_t)g->cap * sizeof *g->v);
    }
    g->v[g->n++] = (Seg){s, e, id};
}

static int alnum_at(const char *s, size_t n, size_t i, int before) {
    uint32_t cp;
    if (before) { // the character ending at i
        if (i == 0) return 0;
        size_t j = i - 1;
        while (j > 0 && ((unsigned char)s[j] & 0xC0) == 0x80) j--;
        tok_utf8_decode(s, n, j, &cp);
    } else {
        if (i >= n) return 0;
        tok_utf8_decode(s, n, i, &cp);
    }
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO) ||
           (c >= UTF8PROC_CATEGORY_ND && c <= UTF8PROC_CATEGORY_NO);
}

// tokenizers' AddedVocabulary::find_matches: leftmost-longest matches of
// the added tokens (raw content, or the normalized pattern when normalized),
// with their single_word / lstrip / rstrip rules.
static void split_added(const PqTokenizer *tok, int normalized, const char *s, size_t n, Segs *g) {
    const unsigned char *first = normalized ? tok->addedn_first : tok->added_first;
    size_t start_offset = 0, i = 0;
    g->n = 0;
    while (i < n) {
        if (!first[(unsigned char)s[i]]) {
            i++;
            continue;
        }
        const TokAdded *best = NULL;
        size_t best_len = 0;
        for (int k = 0; k < tok->n_added; k++) {
            const TokAdded *t = &tok->added[k];
            if (t->normalized != normalized) continue;
            const char *p = normalized ? t->norm : t->content;
            size_t pl = normalized ? t->norm_len : t->len;
            if (pl > best_len && pl <= n - i && !memcmp(s + i, p, pl)) best = t, best_len = pl;
        }
        if (!best) {
            i++;
            continue;
        }
        size_t start = i, stop = i + best_len;
        i = stop;
        if (best->single_word && (alnum_at(s, n, start, 1) || alnum_at(s, n, stop, 0))) continue;
        if (best->lstrip) {
            size_t ns = start;
            while (ns > 0) {
                size_t j = ns - 1;
                while (j > 0 && ((unsigned char)s[j] & 0xC0) == 0x80) j--;
                uint32_t cp;
                tok_utf8_decode(s, n, j, &cp);
                if (!tok_is_white_space(cp)) break;
                ns = j;
            }
            start = ns > start_offset ? ns : start_offset;
        }
        if (best->rstrip) {
            while (stop < n) {
                uint32_t cp;
                int k = tok_utf8_decode(s, n, stop, &cp);
                if (!tok_is_white_space(cp)) break;
                stop += (size_t)k;
            }
            i = stop;
        }
        if (start_offset < start) segs_push(g, start_offset, start, -1);
        segs_push(g, start, stop, best->id);
        start_offset = stop;
    }
    if (start_offset < n) segs_push(g, start_offset, n, -1);
}

typedef struct Enc {
    TokScratch *scratch;
    PqBuf norm, arena;
    Segs segs2;
    TokPieces in, words;
} Enc;

// Normalizes one text segment, splits out normalized added tokens, then
// pre-tokenizes and runs the model on each word.
static int encode_text(const PqTokenizer *tok, Enc *x, const char *s, size_t n, int at_start, PqTokens *out,
                       PqErr *e) {
    if (tok_normalize(tok, s, n, &x->norm, e)) return -1;
    split_added(tok, 1, x->norm.data, x->norm.len, &x->segs2);
    for (int i = 0; i < x->segs2.n; i++) {
        Seg g = x->segs2.v[i];
        if (g.id >= 0) {
            pq_tokens_push(out, g.id);
            continue;
        }
        pq_buf_clear(&x->arena);
        pq_buf_append(&x->arena, x->norm.data + g.s, g.e - g.s);
        x->in.n = 0;
        tok_pieces_push(&x->in, 0, g.e - g.s, at_start && g.s == 0);
        if (tok_pre_tokenize(tok, &x->arena, &x->in, &x->words, e)) return -1;
        for (int w = 0; w < x->words.n; w++)
            tok_bpe_word(tok, x->scratch, x->arena.data + x->words.p[w].off, x->words.p[w].len, out);
    }
    return 0;
}

int pq_tokenizer_encode(const PqTokenizer *tok, const char *text, size_t len, int add_special, PqTokens *out,
                        PqErr *e) {
    PqBuf clean = {0};
    tok_utf8_lossy(text, len, &clean);
    if (!clean.data) pq_buf_append(&clean, "", 0);
    if (add_special)
        for (int i = 0; i < tok->n_post_pre; i++) pq_tokens_push(out, tok->post_pre[i]);
    Enc x = {.scratch = tok_scratch_new()};
    Segs g = {0};
    int rc = 0;
    split_added(tok, 0, clean.data, clean.len, &g);
    for (int i = 0; i < g.n && rc == 0; i++) {
        if (g.v[i].id >= 0) pq_tokens_push(out, g.v[i].id);
        else rc = encode_text(tok, &x, clean.data + g.v[i].s, g.v[i].e - g.v[i].s, g.v[i].s == 0, out, e);
    }
    if (add_special && rc == 0)
        for (int i = 0; i < tok->n_post_post; i++) pq_tokens_push(out, tok->post_post[i]);
    free(g.v);
    free(x.segs2.v);
    free(x.in.p);
    free(x.words.p);
    pq_buf_free(&x.norm);
    pq_buf_free(&x.arena);
    pq_buf_free(&clean);
    tok_scratch_free(x.scratch);
    return rc;
}

// ---- decoding ---------------------------------------------------------------------

typedef struct Strs {
    PqBuf *v;
    int n;
} Strs;

static void strs_set(PqBuf *b, const char *s, size_t n) {
    pq_buf_clear(b);
    pq_buf_append(b, s, n);
}

static void dec_replace(const TokDecOp *op, Strs *t) {
    PqBuf r = {0};
    for (int i = 0; i < t->n; i++) {
        PqBuf *b = &t->v[i];
        pq_buf_clear(&r);
        size_t j = 0;
        while (op->pat_len && j + op->pat_len <= b->len) {
            const char *hit = memmem(b->data + j, b->len - j, op->pat, op->pat_len);
            if (!hit) break;
            size_t at = (size_t)(hit - b->data);
            pq_buf_append(&r, b->data + j, at - j);
            pq_buf_append(&r, op->content, op->content_len);
            j = at + op->pat_len;
        }
        pq_buf_append(&r, b->data + j, b->len - j);
        strs_set(b, r.data, r.len);
    }
    pq_buf_free(&r);
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// <0xNN> tokens: consecutive ones become their bytes when these are valid
// UTF-8, else one U+FFFD per byte.
static void dec_byte_fallback(Strs *t) {
    Strs r = {pq_xcalloc((size_t)t->n + 1, sizeof(PqBuf)), 0};
    PqBuf bytes = {0};
    int nbytes = 0;
    for (int i = 0; i <= t->n; i++) {
        PqBuf *b = i < t->n ? &t->v[i] : NULL;
        if (b && b->len == 6 && !memcmp(b->data, "<0x", 3) && b->data[5] == '>' && hexval(b->data[3]) >= 0 &&
            hexval(b->data[4]) >= 0) {
            char c = (char)(hexval(b->data[3]) * 16 + hexval(b->data[4]));
            pq_buf_append(&bytes, &c, 1);
            nbytes++;
            continue;
        }
        if (nbytes) {
            PqBuf tmp = {0};
            if (tok_utf8_lossy(bytes.data, bytes.len, &tmp)) {
                r.v = pq_xrealloc(r.v, (size_t)(r.n + 1) * sizeof(PqBuf));
                r.v[r.n++] = tmp;
            } else {
                pq_buf_free(&tmp);
                for (int k = 0; k < nbytes; k++) {
                    r.v = pq_xrealloc(r.v, (size_t)(r.n + 1) * sizeof(PqBuf));
                    r.v[r.n] = (PqBuf){0};
                    pq_buf_append(&r.v[r.n++], "\xEF\xBF\xBD", 3);
                }
            }
            pq_buf_clear(&bytes);
            nbytes = 0;
        }
        if (b) {
            r.v = pq_xrealloc(r.v, (size_t)(r.n + 1) * sizeof(PqBuf));
            r.v[r.n++] = *b;
            *b = (PqBuf){0};
        }
    }
    pq_buf_free(&bytes);
    for (int i = 0; i < t->n; i++) pq_buf_free(&t->v[i]);
    free(t->v);
    *t = r;
}

static void dec_fuse(Strs *t) {
    if (t->n <= 1) return;
    for (int i = 1; i < t->n; i++) {
        pq_buf_append(&t->v[0], t->v[i].data, t->v[i].len);
        pq_buf_free(&t->v[i]);
    }
    t->n = 1;
}

static void dec_strip(const TokDecOp *op, Strs *t) {
    for (int i = 0; i < t->n; i++) {
        PqBuf *b = &t->v[i];
        size_t a = 0, z = b->len;
        uint32_t cp;
        for (int k = 0; k < op->start && a < z; k++) {
            int l = tok_utf8_decode(b->data, b->len, a, &cp);
            if (cp != op->strip_char) break;
            a += (size_t)l;
        }
        for (int k = 0; k < op->stop && z > a; k++) {
            size_t j = z - 1;
            while (j > a && ((unsigned char)b->data[j] & 0xC0) == 0x80) j--;
            tok_utf8_decode(b->data, b->len, j, &cp);
            if (cp != op->strip_char) break;
            z = j;
        }
        memmove(b->data, b->data + a, z - a);
        b->len = z - a;
        b->data[b->len] = 0;
    }
}

// Maps each token's characters back to bytes (a token with a character
// outside the map keeps its own bytes), then decodes UTF-8 lossily.
static void dec_byte_level(const PqTokenizer *tok, Strs *t) {
    int inv[512];
    for (int i = 0; i < 512; i++) inv[i] = -1;
    for (int b = 0; b < 256; b++) inv[tok->byte_char[b]] = b;
    PqBuf bytes = {0}, one = {0};
    for (int i = 0; i < t->n; i++) {
        PqBuf *b = &t->v[i];
        pq_buf_clear(&one);
        int ok = 1;
        for (size_t j = 0; j < b->len && ok;) {
            uint32_t cp;
            j += (size_t)tok_utf8_decode(b->data, b->len, j, &cp);
            if (cp < 512 && inv[cp] >= 0) {
                char c = (char)inv[cp];
                pq_buf_append(&one, &c, 1);
            } else {
                ok = 0;
            }
        }
        if (ok) pq_buf_append(&bytes, one.data, one.len);
        else pq_buf_append(&bytes, b->data, b->len);
    }
    for (int i = 0; i < t->n; i++) pq_buf_free(&t->v[i]);
    t->n = 1;
    t->v[0] = (PqBuf){0};
    tok_utf8_lossy(bytes.data ? bytes.data : "", bytes.len, &t->v[0]);
    pq_buf_free(&bytes);
    pq_buf_free(&one);
}

static void dec_metaspace(const TokDecOp *op, Strs *t) {
    PqBuf r = {0};
    for (int i = 0; i < t->n; i++) {
        PqBuf *b = &t->v[i];
        pq_buf_clear(&r);
        size_t j = 0;
        while (j < b->len) {
            if (j + op->pat_len <= b->len && !memcmp(b->data + j, op->pat, op->pat_len)) {
                if (!(i == 0 && op->prepend)) pq_buf_append(&r, " ", 1);
                j += op->pat_len;
            } else {
                pq_buf_append(&r, b->data + j, 1);
                j++;
            }
        }
        strs_set(b, r.data ? r.data : "", r.len);
    }
    pq_buf_free(&r);
}

char *pq_tokenizer_decode(const PqTokenizer *tok, const int32_t *ids, size_t n, int skip_special) {
    Strs t = {pq_xcalloc(n + 1, sizeof(PqBuf)), 0};
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= tok->n_vocab || !tok->tok_str[id]) continue;
        if (skip_special && tok->tok_special[id]) continue;
        pq_buf_append(&t.v[t.n++], tok->tok_str[id], tok->tok_len[id]);
    }
    if (t.n == 0) t.v[0] = (PqBuf){0};
    for (int k = 0; k < tok->n_dec && t.n; k++) {
        const TokDecOp *op = &tok->dec[k];
        switch (op->type) {
        case TOK_DEC_REPLACE: dec_replace(op, &t); break;
        case TOK_DEC_BYTEFALLBACK: dec_byte_fallback(&t); break;
        case TOK_DEC_FUSE: dec_fuse(&t); break;
        case TOK_DEC_STRIP: dec_strip(op, &t); break;
        case TOK_DEC_BYTELEVEL: dec_byte_level(tok, &t); break;
        case TOK_DEC_METASPACE: dec_metaspace(op, &t); break;
        }
    }
    PqBuf r = {0};
    for (int i = 0; i < t.n; i++) {
        if (i && !tok->has_decoder) pq_buf_append(&r, " ", 1);
        pq_buf_append(&r, t.v[i].data ? t.v[i].data : "", t.v[i].len);
        pq_buf_free(&t.v[i]);
    }
    free(t.v);
    if (!r.data) pq_buf_append(&r, "", 0);
    return r.data;
}
