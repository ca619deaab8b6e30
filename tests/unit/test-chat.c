// test-chat: pq's chat templates against transformers' apply_chat_template
// (tests/golden/chat/*.json, made by scripts/gen-tokenizer-goldens): byte
// for byte renders, and an error wherever the template raises one; plus
// loading: names, overrides, list templates, .jinja files, {content}
// tokens, --chat-var and the date, errors. (test-jinja checks the
// interpreter on the real templates.)
#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "chat.h"
#include "check.h"
#include "testdir.h"
#include "util.h"

static char tmpdir[] = "/tmp/pq-test-chat-XXXXXX";

// Writes DIR/tokenizer_config.json (into a fresh sub-directory of tmpdir).
static const char *model_dir(const char *sub, const cJSON *cfg) {
    static char dir[4096];
    char path[4200];
    snprintf(dir, sizeof dir, "%s/%s", tmpdir, sub);
    mkdir(dir, 0700);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    remove(path);
    if (cfg) {
        char *s = cJSON_Print(cfg);
        FILE *f = fopen(path, "w");
        fputs(s, f);
        fclose(f);
        free(s);
    }
    return dir;
}

static const char *family_of(const char *golden) {
    if (!strncmp(golden, "mistral", 7)) return "mistral";
    if (!strncmp(golden, "llama-2", 7)) return "llama-2";
    if (!strncmp(golden, "llama-3", 7)) return "llama-3";
    if (!strncmp(golden, "smollm2", 7)) return "chatml";
    if (!strncmp(golden, "tinyllama", 9)) return "zephyr";
    return "?";
}

static int check_cases(const PqChat *c, const char *name, const cJSON *cases) {
    const cJSON *k;
    int n = 0;
    cJSON_ArrayForEach(k, cases) {
        const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(k, "messages"), *m;
        int agp = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(k, "add_generation_prompt"));
        const cJSON *want = cJSON_GetObjectItemCaseSensitive(k, "rendered");
        const cJSON *err = cJSON_GetObjectItemCaseSensitive(k, "error");
        PqMessage pm[16];
        int nm = 0;
        cJSON_ArrayForEach(m, msgs) {
            pm[nm].role = cJSON_GetObjectItemCaseSensitive(m, "role")->valuestring;
            pm[nm].content = cJSON_GetObjectItemCaseSensitive(m, "content")->valuestring;
            nm++;
        }
        PqErr e = {{0}};
        char *got = pq_chat_render(c, pm, nm, agp, &e);
        if (cJSON_IsString(want)) {
            CHECK(got && !strcmp(got, want->valuestring), "%s case %d: rendered\n[%s]\nwant\n[%s]%s%s", name, n,
                  got ? got : "(error)", want->valuestring, got ? "" : "\n", got ? "" : e.msg);
        } else {
            CHECK(!got && strstr(e.msg, err->valuestring), "%s case %d: want the error '%s', got %s", name, n,
                  err->valuestring, got ? got : e.msg);
        }
        free(got);
        n++;
    }
    return n;
}

static void test_goldens(void) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/golden/chat", top);
    DIR *d = opendir(path);
    CHECK(d, "no %s", path);
    if (!d) return;
    struct dirent *de;
    int files = 0, cases = 0;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l < 6 || strcmp(de->d_name + l - 5, ".json")) continue;
        char f[4400];
        PqErr e;
        snprintf(f, sizeof f, "%s/%s", path, de->d_name);
        char *text = pq_read_file(f, NULL, &e);
        cJSON *g = cJSON_Parse(text);
        free(text);
        const char *name = cJSON_GetObjectItemCaseSensitive(g, "name")->valuestring;
        cJSON *cfg = cJSON_CreateObject();
        cJSON_AddItemToObject(cfg, "chat_template",
                              cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(g, "chat_template"), 1));
        cJSON_AddItemToObject(cfg, "bos_token", cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(g, "bos_token"), 1));
        cJSON_AddItemToObject(cfg, "eos_token", cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(g, "eos_token"), 1));
        const char *dir = model_dir(name, cfg);
        PqChat *c = pq_chat_load(dir, NULL, &e);
        CHECK(c, "%s: %s", name, e.msg);
        if (c) {
            cases += check_cases(c, name, cJSON_GetObjectItemCaseSensitive(g, "cases"));
            pq_chat_free(c);
        }
        // the same through the name override, the template gone
        cJSON_DeleteItemFromObjectCaseSensitive(cfg, "chat_template");
        dir = model_dir(name, cfg);
        c = pq_chat_load(dir, family_of(name), &e);
        CHECK(c, "%s by name: %s", name, e.msg);
        if (c && strcmp(name, "smollm2")) cases += check_cases(c, name, cJSON_GetObjectItemCaseSensitive(g, "cases"));
        pq_chat_free(c);
        // the real model directory, as it is
        if (!strcmp(name, "mistral-7b-instruct-v0.1-config")) {
            char real[4096];
            snprintf(real, sizeof real, "%s/tests/fixtures/models/mistral-7b-instruct-v0.1", top);
            c = pq_chat_load(real, NULL, &e);
            CHECK(c, "%s: %s", real, e.msg);
            if (c) cases += check_cases(c, name, cJSON_GetObjectItemCaseSensitive(g, "cases"));
            pq_chat_free(c);
        }
        cJSON_Delete(cfg);
        cJSON_Delete(g);
        files++;
    }
    closedir(d);
    CHECK(files >= 6, "only %d golden files", files);
    printf("chat goldens: %d templates, %d renders compared\n", files, cases);
}

static void test_loading(void) {
    PqErr e;
    const PqMessage u[] = {{"user", "Hi"}};
    // a list of named templates: the "default" one; bos/eos as {content} objects
    cJSON *cfg = cJSON_Parse("{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"{{ x }}\"},"
                             "{\"name\": \"default\", \"template\": \"{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\\n\\n{{ m.content }}<|eot_id|>{% endfor %}\"}],"
                             "\"bos_token\": {\"content\": \"<B>\", \"lstrip\": false}, \"eos_token\": \"<E>\"}");
    PqChat *c = pq_chat_load(model_dir("list", cfg), NULL, &e);
    CHECK(c && !strcmp(pq_chat_name(c), "default"), "list template: %s", c ? pq_chat_name(c) : e.msg);
    char *r = c ? pq_chat_render(c, u, 1, 0, &e) : NULL;
    CHECK(r && !strcmp(r, "<B><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"), "list template render: %s",
          r ? r : e.msg);
    free(r);
    pq_chat_free(c);
    // a named one of the list
    c = pq_chat_load(model_dir("list", cfg), "tool_use", &e);
    r = c ? pq_chat_render(c, u, 1, 0, &e) : NULL;
    CHECK(r && !strcmp(r, ""), "named template of the list: %s", r ? r : e.msg);
    free(r);
    pq_chat_free(c);
    cJSON_Delete(cfg);
    // a .jinja file, with --chat-var and --date (and a var overriding a token)
    char jf[4200];
    snprintf(jf, sizeof jf, "%s/t.jinja", tmpdir);
    FILE *f = fopen(jf, "w");
    fputs("{{ strftime_now('%d %b %Y') }}|{{ greeting }}|{{ bos_token }}|{{ messages[0].content }}\n", f);
    fclose(f);
    c = pq_chat_load(model_dir("none", NULL), jf, &e);
    CHECK(c, "a .jinja file: %s", e.msg);
    if (c) {
        CHECK(!pq_chat_set_var(c, "greeting={\"a\": [1, 2]}", &e) && !pq_chat_set_var(c, "bos_token=\"<B>\"", &e) &&
                  !pq_chat_set_date(c, "2024-02-29", &e),
              "set var/date: %s", e.msg);
        r = pq_chat_render(c, u, 1, 0, &e);
        CHECK(r && !strcmp(r, "29 Feb 2024|{'a': [1, 2]}|<B>|Hi"), "a .jinja file renders: %s", r ? r : e.msg);
        free(r);
        CHECK(pq_chat_set_var(c, "x=not json", &e) && strstr(e.msg, "not JSON"), "bad --chat-var: %s", e.msg);
        CHECK(pq_chat_set_var(c, "=1", &e) && strstr(e.msg, "NAME=JSON"), "bad --chat-var name: %s", e.msg);
        CHECK(pq_chat_set_date(c, "2023-02-29", &e) && strstr(e.msg, "YYYY-MM-DD"), "bad date: %s", e.msg);
        pq_chat_free(c);
    }
    // no default among the list
    cfg = cJSON_Parse("{\"chat_template\": [{\"name\": \"rag\", \"template\": \"x\"}]}");
    c = pq_chat_load(model_dir("nodefault", cfg), NULL, &e);
    CHECK(!c && strstr(e.msg, "default") && strstr(e.msg, "rag"), "no default: %s", c ? "loaded" : e.msg);
    pq_chat_free(c);
    cJSON_Delete(cfg);
    // any template renders (no family to recognise) ...
    cfg = cJSON_Parse("{\"chat_template\": \"{% for m in messages %}### {{ m.content }}{% endfor %}\"}");
    c = pq_chat_load(model_dir("unknown", cfg), NULL, &e);
    r = c ? pq_chat_render(c, u, 1, 0, &e) : NULL;
    CHECK(r && !strcmp(r, "### Hi"), "any template: %s", r ? r : e.msg);
    free(r);
    pq_chat_free(c);
    // ... unless a name overrides it
    c = pq_chat_load(model_dir("unknown", cfg), "tinyllama", &e);
    r = c ? pq_chat_render(c, u, 1, 1, &e) : NULL;
    CHECK(r && !strcmp(r, "<|user|>\nHi</s>\n<|assistant|>\n"), "tinyllama alias: %s", r ? r : e.msg);
    free(r);
    pq_chat_free(c);
    cJSON_Delete(cfg);
    // an unknown name
    c = pq_chat_load(model_dir("unknown", NULL), "vicuna", &e);
    CHECK(!c && strstr(e.msg, "vicuna") && strstr(e.msg, "mistral") && strstr(e.msg, ".jinja"), "unknown name: %s",
          c ? "loaded" : e.msg);
    pq_chat_free(c);
    // no tokenizer_config.json: an error, unless named (then the family's tokens)
    c = pq_chat_load(model_dir("none", NULL), NULL, &e);
    CHECK(!c && strstr(e.msg, "tokenizer_config.json"), "missing config: %s", c ? "loaded" : e.msg);
    pq_chat_free(c);
    c = pq_chat_load(model_dir("none", NULL), "mistral", &e);
    r = c ? pq_chat_render(c, u, 1, 1, &e) : NULL;
    CHECK(r && !strcmp(r, "<s>[INST] Hi [/INST]"), "named without config: %s", r ? r : e.msg);
    free(r);
    pq_chat_free(c);
    // no chat_template in the config
    cfg = cJSON_Parse("{\"bos_token\": \"<s>\"}");
    c = pq_chat_load(model_dir("notemplate", cfg), NULL, &e);
    CHECK(!c && strstr(e.msg, "no chat template"), "no chat_template: %s", c ? "loaded" : e.msg);
    pq_chat_free(c);
    cJSON_Delete(cfg);
    // a template the interpreter cannot parse: refused at load, with line:column
    cfg = cJSON_Parse("{\"chat_template\": \"{% for m in messages %}\\n{% include 'x' %}{% endfor %}\"}");
    c = pq_chat_load(model_dir("bad", cfg), NULL, &e);
    CHECK(!c && strstr(e.msg, "line 2:4") && strstr(e.msg, "include"), "bad template: %s", c ? "loaded" : e.msg);
    pq_chat_free(c);
    cJSON_Delete(cfg);
    // Mistral's render refuses other roles, and an empty conversation
    c = pq_chat_load(model_dir("none", NULL), "mistral", &e);
    const PqMessage bad[] = {{"user", "a"}, {"system", "b"}, {"user", "c"}, {"user", "d"}};
    r = pq_chat_render(c, bad, 4, 0, &e); // the template stops at the first bad turn
    CHECK(!r && strstr(e.msg, "Only user and assistant"), "system turn in mistral: %s", r ? r : e.msg);
    free(r);
    r = pq_chat_render(c, bad + 2, 2, 0, &e);
    CHECK(!r && strstr(e.msg, "alternate"), "user twice in mistral: %s", r ? r : e.msg);
    free(r);
    r = pq_chat_render(c, bad, 0, 0, &e);
    CHECK(!r && strstr(e.msg, "no messages"), "empty conversation: %s", r ? r : e.msg);
    free(r);
    pq_chat_free(c);
}

int main(void) {
    if (testdir_make(tmpdir)) return 1;
    test_goldens();
    test_loading();
    testdir_remove(tmpdir);
    printf("%s\n", n_fail ? "FAILED" : "ok");
    return n_fail != 0;
}
