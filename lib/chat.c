// chat.c: the chat templates in use, recognised from tokenizer_config.json's
// Jinja source and rendered in C byte for byte as transformers'
// apply_chat_template renders them (tests/golden/chat/ are its output).
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "chat.h"

enum { CHAT_MISTRAL, CHAT_LLAMA2, CHAT_CHATML, CHAT_LLAMA3, CHAT_ZEPHYR };

static const struct {
    const char *name, *alias, *bos, *eos;
} families[] = {
    [CHAT_MISTRAL] = {"mistral", NULL, "<s>", "</s>"},
    [CHAT_LLAMA2] = {"llama-2", NULL, "<s>", "</s>"},
    [CHAT_CHATML] = {"chatml", NULL, "", "<|im_end|>"},
    [CHAT_LLAMA3] = {"llama-3", NULL, "<|begin_of_text|>", "<|end_of_text|>"},
    [CHAT_ZEPHYR] = {"zephyr", "tinyllama", "<s>", "</s>"},
};
#define N_FAMILIES ((int)(sizeof families / sizeof *families))
#define SUPPORTED "mistral (Mistral-Instruct v0.1 [INST]), llama-2 ([INST] with <<SYS>>), chatml (<|im_start|>: Qwen, SmolLM), llama-3 (<|start_header_id|>), zephyr or tinyllama (<|user|>)"

struct PqChat {
    int family;
    char *bos, *eos;
    char *default_system; // chatml: the system turn the template adds when there is none
};

const char *pq_chat_name(const PqChat *c) { return families[c->family].name; }

void pq_chat_free(PqChat *c) {
    if (!c) return;
    free(c->bos);
    free(c->eos);
    free(c->default_system);
    free(c);
}

// The family of a Jinja template, by its distinctive pieces; -1 unknown.
static int recognise(const char *t, PqErr *e) {
    if (strstr(t, "<|start_header_id|>")) {
        if (strstr(t, "Cutting Knowledge Date")) {
            pq_err(e, "the Llama 3.1 chat template (with its dated system turn) is not supported; "
                      "--chat-template llama-3 renders the Llama 3 format");
            return -1;
        }
        return CHAT_LLAMA3;
    }
    if (strstr(t, "<|im_start|>")) return CHAT_CHATML;
    if (strstr(t, "<|user|>")) return CHAT_ZEPHYR;
    if (strstr(t, "[INST]")) {
        if (strstr(t, "<<SYS>>")) return CHAT_LLAMA2;
        if (!strstr(t, "system")) return CHAT_MISTRAL; // v0.1: user and assistant turns only
    }
    pq_err(e, "unrecognised chat template; pq renders these families: " SUPPORTED
              " (choose one with --chat-template NAME)");
    return -1;
}

// Python's str.isspace(): general category Zs or bidirectional class WS, B, S.
static int py_space(uint32_t cp) {
    const utf8proc_property_t *p = utf8proc_get_property((utf8proc_int32_t)cp);
    return p->category == UTF8PROC_CATEGORY_ZS || p->bidi_class == UTF8PROC_BIDI_CLASS_WS ||
           p->bidi_class == UTF8PROC_BIDI_CLASS_B || p->bidi_class == UTF8PROC_BIDI_CLASS_S;
}

// Appends s with Python's strip() (Jinja's trim filter) applied.
static void put_stripped(PqBuf *b, const char *s) {
    const utf8proc_uint8_t *u = (const utf8proc_uint8_t *)s;
    utf8proc_ssize_t n = (utf8proc_ssize_t)strlen(s), i = 0, start = -1, end = 0;
    while (i < n) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate(u + i, n - i, &cp);
        if (k <= 0) k = 1, cp = -1; // invalid UTF-8: a non-space
        if (cp < 0 || !py_space((uint32_t)cp)) {
            if (start < 0) start = i;
            end = i + k;
        }
        i += k;
    }
    if (start >= 0) pq_buf_append(b, s + start, (size_t)(end - start));
}

// The ChatML default system turn: the template's string literal
// '<|im_start|>system\n...<|im_end|>\n' (SmolLM, Qwen), NULL if none.
static char *chatml_default_system(const char *t) {
    static const char head[] = "<|im_start|>system";
    for (const char *p = strstr(t, head); p; p = strstr(p + 1, head)) {
        char q = p > t ? p[-1] : 0;
        if (q != '\'' && q != '"') continue;
        PqBuf lit = {0};
        const char *s = p;
        for (; *s && *s != q; s++) {
            if (*s == '\\' && s[1]) { // Jinja string escapes
                s++;
                char c = *s == 'n' ? '\n' : *s == 't' ? '\t' : *s;
                pq_buf_append(&lit, &c, 1);
            } else {
                pq_buf_append(&lit, s, 1);
            }
        }
        static const char tail[] = "<|im_end|>\n";
        size_t hl = sizeof head - 1 + 1, tl = sizeof tail - 1;
        if (*s == q && lit.len >= hl + tl && lit.data[hl - 1] == '\n' && !strcmp(lit.data + lit.len - tl, tail)) {
            char *r = pq_xstrndup(lit.data + hl, lit.len - hl - tl);
            pq_buf_free(&lit);
            return r;
        }
        pq_buf_free(&lit);
    }
    return NULL;
}

// A special token of tokenizer_config.json: a string or {"content": ...}.
static const char *token_str(const cJSON *cfg, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsString(v)) return v->valuestring;
    v = cJSON_GetObjectItemCaseSensitive(v, "content");
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

// The template text: "chat_template" as a string, or the "default" of a
// list of {name, template}; else a chat_template.jinja file.
static char *template_text(const cJSON *cfg, const char *model_dir, PqErr *e) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
    if (cJSON_IsString(t)) return pq_xstrdup(t->valuestring);
    if (cJSON_IsArray(t)) {
        const cJSON *x;
        PqBuf names = {0};
        cJSON_ArrayForEach(x, t) {
            const cJSON *n = cJSON_GetObjectItemCaseSensitive(x, "name");
            const cJSON *s = cJSON_GetObjectItemCaseSensitive(x, "template");
            if (cJSON_IsString(n) && cJSON_IsString(s) && !strcmp(n->valuestring, "default")) {
                pq_buf_free(&names);
                return pq_xstrdup(s->valuestring);
            }
            if (cJSON_IsString(n)) pq_buf_printf(&names, "%s%s", names.len ? ", " : "", n->valuestring);
        }
        pq_err(e, "chat_template has no \"default\" among its templates (%s)", names.data ? names.data : "none");
        pq_buf_free(&names);
        return NULL;
    }
    PqBuf p = {0};
    pq_buf_printf(&p, "%s/chat_template.jinja", model_dir);
    char *s = pq_read_file(p.data, NULL, e);
    pq_buf_free(&p);
    if (!s) pq_err(e, "%s has no chat template (give --chat-template NAME: " SUPPORTED ")", model_dir);
    return s;
}

static int family_by_name(const char *name) {
    for (int i = 0; i < N_FAMILIES; i++)
        if (!strcmp(name, families[i].name) || (families[i].alias && !strcmp(name, families[i].alias))) return i;
    return -1;
}

PqChat *pq_chat_load(const char *model_dir, const char *name, PqErr *e) {
    int family = -1;
    if (name && (family = family_by_name(name)) < 0) {
        pq_err(e, "unknown chat template %s; pq renders these families: " SUPPORTED, name);
        return NULL;
    }
    PqBuf p = {0};
    pq_buf_printf(&p, "%s/tokenizer_config.json", model_dir);
    size_t len;
    PqErr e2;
    char *text = pq_read_file(p.data, &len, &e2);
    cJSON *cfg = NULL;
    if (text) {
        cfg = cJSON_ParseWithLength(text, len);
        free(text);
        if (!cfg) {
            pq_err(e, "%s: not JSON", p.data);
            pq_buf_free(&p);
            return NULL;
        }
    } else if (!name) {
        pq_err(e, "%s (give --chat-template NAME: " SUPPORTED ")", e2.msg);
        pq_buf_free(&p);
        return NULL;
    }
    char *tmpl = NULL;
    if (cfg && (cJSON_GetObjectItemCaseSensitive(cfg, "chat_template") || !name)) {
        tmpl = template_text(cfg, model_dir, &e2);
        if (!tmpl && !name) {
            pq_err(e, "%s", e2.msg);
            goto fail;
        }
    }
    if (!name && (family = recognise(tmpl, &e2)) < 0) {
        pq_err(e, "%s: %s", p.data, e2.msg);
        goto fail;
    }
    PqChat *c = pq_xcalloc(1, sizeof *c);
    c->family = family;
    const char *bos = token_str(cfg, "bos_token"), *eos = token_str(cfg, "eos_token");
    c->bos = pq_xstrdup(bos ? bos : families[family].bos);
    c->eos = pq_xstrdup(eos ? eos : families[family].eos);
    if (family == CHAT_CHATML && tmpl) c->default_system = chatml_default_system(tmpl);
    free(tmpl);
    cJSON_Delete(cfg);
    pq_buf_free(&p);
    return c;
fail:
    free(tmpl);
    cJSON_Delete(cfg);
    pq_buf_free(&p);
    return NULL;
}

static int is(const char *role, const char *r) { return role && !strcmp(role, r); }

// The raise_exception() of the [INST] templates, for the message at
// loop.index0 = i (checked turn by turn, as the template does).
static int alternation(const PqChat *c, const PqMessage *m, int i, int n, PqErr *e) {
    for (int k = 0; k < n; k++, i++)
        if (is(m[k].role, "user") != (i % 2 == 0)) {
            pq_err(e, "chat template %s: Conversation roles must alternate user/assistant/user/assistant/...",
                   pq_chat_name(c));
            return -1;
        }
    return 0;
}

char *pq_chat_render(const PqChat *c, const PqMessage *msgs, int n, int add_generation_prompt, PqErr *e) {
    if (n <= 0) {
        pq_err(e, "chat template %s: no messages", pq_chat_name(c));
        return NULL;
    }
    for (int i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].content) {
            pq_err(e, "chat template %s: message %d lacks a role or content", pq_chat_name(c), i + 1);
            return NULL;
        }
    PqBuf b = {0};
    pq_buf_append(&b, "", 0);
    switch (c->family) {
    case CHAT_MISTRAL:
        pq_buf_puts(&b, c->bos);
        for (int i = 0; i < n; i++) {
            if (alternation(c, msgs + i, i, 1, e)) goto fail;
            if (is(msgs[i].role, "user")) {
                pq_buf_printf(&b, "[INST] %s [/INST]", msgs[i].content);
            } else if (is(msgs[i].role, "assistant")) {
                pq_buf_printf(&b, "%s%s ", msgs[i].content, c->eos);
            } else {
                pq_err(e, "chat template mistral: Only user and assistant roles are supported!");
                goto fail;
            }
        }
        break;
    case CHAT_LLAMA2: {
        const char *sys = NULL;
        const PqMessage *m = msgs;
        int k = n;
        if (is(msgs[0].role, "system")) sys = msgs[0].content, m++, k--;
        for (int i = 0; i < k; i++) {
            if (alternation(c, m + i, i, 1, e)) goto fail;
            PqBuf content = {0};
            if (i == 0 && sys) pq_buf_printf(&content, "<<SYS>>\n%s\n<</SYS>>\n\n", sys);
            pq_buf_puts(&content, m[i].content);
            if (is(m[i].role, "user")) {
                pq_buf_printf(&b, "%s[INST] ", c->bos);
                put_stripped(&b, content.data);
                pq_buf_puts(&b, " [/INST]");
            } else if (is(m[i].role, "assistant")) {
                pq_buf_puts(&b, " ");
                put_stripped(&b, content.data);
                pq_buf_printf(&b, " %s", c->eos);
            }
            pq_buf_free(&content);
        }
        break;
    }
    case CHAT_CHATML:
        for (int i = 0; i < n; i++) {
            if (i == 0 && !is(msgs[0].role, "system") && c->default_system)
                pq_buf_printf(&b, "<|im_start|>system\n%s<|im_end|>\n", c->default_system);
            pq_buf_printf(&b, "<|im_start|>%s\n%s<|im_end|>\n", msgs[i].role, msgs[i].content);
        }
        if (add_generation_prompt) pq_buf_puts(&b, "<|im_start|>assistant\n");
        break;
    case CHAT_LLAMA3:
        for (int i = 0; i < n; i++) {
            if (i == 0) pq_buf_puts(&b, c->bos);
            pq_buf_printf(&b, "<|start_header_id|>%s<|end_header_id|>\n\n", msgs[i].role);
            put_stripped(&b, msgs[i].content);
            pq_buf_puts(&b, "<|eot_id|>");
        }
        if (add_generation_prompt) pq_buf_puts(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    case CHAT_ZEPHYR:
        for (int i = 0; i < n; i++) {
            const char *r = msgs[i].role;
            if (is(r, "user") || is(r, "system") || is(r, "assistant"))
                pq_buf_printf(&b, "<|%s|>\n%s%s\n", r, msgs[i].content, c->eos);
            if (i == n - 1 && add_generation_prompt) pq_buf_puts(&b, "<|assistant|>\n");
        }
        break;
    }
    return b.data;
fail:
    pq_buf_free(&b);
    return NULL;
}
