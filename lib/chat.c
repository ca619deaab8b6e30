// chat.c: chat templates: the model's own Jinja template (tokenizer_config.json's
// chat_template, a named one of its list, or chat_template.jinja), a .jinja
// file, or a built-in family, all rendered by the Jinja interpreter
// (jinja.c) exactly as transformers' apply_chat_template renders them.
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "chat.h"
#include "jinja.h"

// The families pq knows by name: the templates of the models they come from.
static const struct {
    const char *name, *alias, *bos, *eos, *tmpl;
} families[] = {
    {"mistral", NULL, "<s>", "</s>",
     "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
     "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
     "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
     "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}"
     "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"},
    {"llama-2", NULL, "<s>", "</s>",
     "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
     "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
     "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
     "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
     "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
     "{% if loop.index0 == 0 and system_message != false %}"
     "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
     "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
     "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
     "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"},
    {"chatml", NULL, "", "<|im_end|>",
     "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
     "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"},
    {"llama-3", NULL, "<|begin_of_text|>", "<|end_of_text|>",
     "{% set loop_messages = messages %}{% for message in loop_messages %}"
     "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}"
     "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
     "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"},
    {"zephyr", "tinyllama", "<s>", "</s>",
     "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\\n' + message['content'] + eos_token }}\n"
     "{% elif message['role'] == 'system' %}\n{{ '<|system|>\\n' + message['content'] + eos_token }}\n"
     "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n{% endif %}\n"
     "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"},
};
#define N_FAMILIES ((int)(sizeof families / sizeof *families))
#define SUPPORTED "a named template of tokenizer_config.json, a .jinja file, or mistral, llama-2, chatml, llama-3, zephyr (tinyllama)"

struct PqChat {
    char *name;
    PqJinja *tmpl;
    cJSON *vars; // special tokens, tools/documents (None), --chat-var
    struct tm date;
    int has_date;
};

const char *pq_chat_name(const PqChat *c) { return c->name; }

void pq_chat_free(PqChat *c) {
    if (!c) return;
    free(c->name);
    pq_jinja_free(c->tmpl);
    cJSON_Delete(c->vars);
    free(c);
}

// The template text: "chat_template" as a string, or the one called want
// (or "default") of a list of {name, template}; else chat_template.jinja.
// *found 0 when want names no template of the list.
static char *template_text(const cJSON *cfg, const char *model_dir, const char *want, int *found, PqErr *e) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
    *found = 1;
    if (cJSON_IsString(t) && !want) return pq_xstrdup(t->valuestring);
    if (cJSON_IsArray(t)) {
        const cJSON *x;
        PqBuf names = {0};
        cJSON_ArrayForEach(x, t) {
            const cJSON *n = cJSON_GetObjectItemCaseSensitive(x, "name");
            const cJSON *s = cJSON_GetObjectItemCaseSensitive(x, "template");
            if (cJSON_IsString(n) && cJSON_IsString(s) && !strcmp(n->valuestring, want ? want : "default")) {
                pq_buf_free(&names);
                return pq_xstrdup(s->valuestring);
            }
            if (cJSON_IsString(n)) pq_buf_printf(&names, "%s%s", names.len ? ", " : "", n->valuestring);
        }
        if (!want) pq_err(e, "chat_template has no \"default\" among its templates (%s)", names.data ? names.data : "none");
        pq_buf_free(&names);
        *found = 0;
        return NULL;
    }
    *found = 0;
    if (want) return NULL;
    PqBuf p = {0};
    pq_buf_printf(&p, "%s/chat_template.jinja", model_dir);
    char *s = pq_read_file(p.data, NULL, e);
    pq_buf_free(&p);
    if (!s) pq_err(e, "%s has no chat template (give --chat-template " SUPPORTED ")", model_dir);
    return s;
}

static int parse_date(const char *ymd, struct tm *out) {
    int y, m, d;
    char extra;
    if (sscanf(ymd, "%d-%d-%d%c", &y, &m, &d, &extra) != 3 || y < 1 || y > 9999 || m < 1 || m > 12 || d < 1 || d > 31)
        return -1;
    struct tm t = {0};
    t.tm_year = y - 1900, t.tm_mon = m - 1, t.tm_mday = d;
    time_t s = timegm(&t);
    gmtime_r(&s, out);
    return out->tm_mday == d ? 0 : -1;
}

int pq_chat_set_date(PqChat *c, const char *ymd, PqErr *e) {
    if (parse_date(ymd, &c->date)) {
        pq_err(e, "bad date %s: give YYYY-MM-DD", ymd);
        return -1;
    }
    c->has_date = 1;
    return 0;
}

int pq_chat_set_var(PqChat *c, const char *assign, PqErr *e) {
    const char *eq = strchr(assign, '=');
    if (!eq || eq == assign) {
        pq_err(e, "--chat-var %s: give NAME=JSON", assign);
        return -1;
    }
    cJSON *v = cJSON_Parse(eq + 1);
    if (!v) {
        pq_err(e, "--chat-var %s: the value is not JSON (a string needs quotes: NAME='\"text\"')", assign);
        return -1;
    }
    char *name = pq_xstrndup(assign, (size_t)(eq - assign));
    cJSON_DeleteItemFromObjectCaseSensitive(c->vars, name);
    cJSON_AddItemToObject(c->vars, name, v);
    free(name);
    return 0;
}

int pq_chat_configure(PqChat *c, const char *const *vars, int n_vars, const char *date, PqErr *e) {
    for (int i = 0; i < n_vars; i++)
        if (pq_chat_set_var(c, vars[i], e)) return -1;
    return date ? pq_chat_set_date(c, date, e) : 0;
}

static int is_file(const char *path) {
    struct stat st;
    return !stat(path, &st) && S_ISREG(st.st_mode);
}

PqChat *pq_chat_load(const char *model_dir, const char *name, PqErr *e) {
    int family = -1;
    if (name)
        for (int i = 0; i < N_FAMILIES; i++)
            if (!strcmp(name, families[i].name) || (families[i].alias && !strcmp(name, families[i].alias))) family = i;
    PqBuf p = {0};
    pq_buf_printf(&p, "%s/tokenizer_config.json", model_dir);
    size_t len;
    PqErr e2;
    char *text = pq_read_file(p.data, &len, &e2), *tmpl = NULL;
    cJSON *cfg = NULL;
    PqChat *c = NULL;
    if (text) {
        cfg = cJSON_ParseWithLength(text, len);
        free(text);
        if (!cfg) {
            pq_err(e, "%s: not JSON", p.data);
            goto fail;
        }
    } else if (!name) {
        pq_err(e, "%s (give --chat-template " SUPPORTED ")", e2.msg);
        goto fail;
    }
    int found = 0;
    if (cfg) tmpl = template_text(cfg, model_dir, name, &found, &e2);
    if (!tmpl && !name) {
        pq_err(e, "%s", e2.msg);
        goto fail;
    }
    if (!tmpl && family >= 0) {
        tmpl = pq_xstrdup(families[family].tmpl);
    } else if (!tmpl && is_file(name)) {
        if (!(tmpl = pq_read_file(name, NULL, e))) goto fail;
    } else if (!tmpl) {
        pq_err(e, "unknown chat template %s; give %s", name, SUPPORTED);
        goto fail;
    }
    c = pq_xcalloc(1, sizeof *c);
    c->name = pq_xstrdup(name ? name : "default");
    if (!(c->tmpl = pq_jinja_parse(tmpl, &e2))) {
        pq_err(e, "chat template %s: %s", name ? name : p.data, e2.msg);
        goto fail;
    }
    // the special tokens, as apply_chat_template passes special_tokens_map
    c->vars = cJSON_CreateObject();
    if (family >= 0 && !cfg) {
        cJSON_AddStringToObject(c->vars, "bos_token", families[family].bos);
        cJSON_AddStringToObject(c->vars, "eos_token", families[family].eos);
    }
    const cJSON *x;
    cJSON_ArrayForEach(x, cfg) {
        size_t kl = strlen(x->string);
        if (kl < 7 || strcmp(x->string + kl - 6, "_token")) continue;
        const cJSON *v = cJSON_IsObject(x) ? cJSON_GetObjectItemCaseSensitive(x, "content") : x;
        if (cJSON_IsString(v)) cJSON_AddStringToObject(c->vars, x->string, v->valuestring);
    }
    if (family >= 0 && cfg) // a named family keeps its own tokens where the model has none
        for (int i = 0; i < 2; i++)
            if (!cJSON_GetObjectItemCaseSensitive(c->vars, i ? "eos_token" : "bos_token"))
                cJSON_AddStringToObject(c->vars, i ? "eos_token" : "bos_token", i ? families[family].eos : families[family].bos);
    const cJSON *extra = cJSON_GetObjectItemCaseSensitive(cfg, "additional_special_tokens");
    if (cJSON_IsArray(extra)) cJSON_AddItemToObject(c->vars, "additional_special_tokens", cJSON_Duplicate(extra, 1));
    cJSON_AddNullToObject(c->vars, "tools");
    cJSON_AddNullToObject(c->vars, "documents");
    const char *d = getenv("PQ_DATE");
    if (d && *d && pq_chat_set_date(c, d, &e2)) {
        pq_err(e, "PQ_DATE: %s", e2.msg);
        goto fail;
    }
    free(tmpl);
    cJSON_Delete(cfg);
    pq_buf_free(&p);
    return c;
fail:
    pq_chat_free(c);
    free(tmpl);
    cJSON_Delete(cfg);
    pq_buf_free(&p);
    return NULL;
}

char *pq_chat_render_json(const PqChat *c, const cJSON *messages, int add_generation_prompt, PqErr *e) {
    if (!cJSON_IsArray(messages) || !cJSON_GetArraySize(messages)) {
        pq_err(e, "chat template %s: no messages", c->name);
        return NULL;
    }
    cJSON *vars = cJSON_CreateObject();
    const cJSON *x;
    cJSON_ArrayForEach(x, c->vars) cJSON_AddItemReferenceToObject(vars, x->string, (cJSON *)x);
    cJSON_AddItemReferenceToObject(vars, "messages", (cJSON *)messages);
    cJSON_AddBoolToObject(vars, "add_generation_prompt", add_generation_prompt);
    PqErr e2;
    char *r = pq_jinja_render(c->tmpl, vars, c->has_date ? &c->date : NULL, NULL, &e2);
    if (!r) pq_err(e, "chat template %s: %s", c->name, e2.msg);
    cJSON_Delete(vars);
    return r;
}

char *pq_chat_render(const PqChat *c, const PqMessage *msgs, int n, int add_generation_prompt, PqErr *e) {
    if (n <= 0) {
        pq_err(e, "chat template %s: no messages", c->name);
        return NULL;
    }
    cJSON *m = cJSON_CreateArray();
    for (int i = 0; i < n; i++) {
        if (!msgs[i].role || !msgs[i].content) {
            pq_err(e, "chat template %s: message %d lacks a role or content", c->name, i + 1);
            cJSON_Delete(m);
            return NULL;
        }
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "role", msgs[i].role);
        cJSON_AddStringToObject(o, "content", msgs[i].content);
        cJSON_AddItemToArray(m, o);
    }
    char *r = pq_chat_render_json(c, m, add_generation_prompt, e);
    cJSON_Delete(m);
    return r;
}
