// test-jinja: the Jinja interpreter against jinja2 in transformers'
// environment (tests/golden/chat/templates/*.json, made by
// scripts/gen-chat-goldens from tests/fixtures/templates/): every render
// byte for byte, and a refusal wherever jinja2 raises (raise_exception's
// own message); then each refusal path: syntax errors with line:column,
// unknown constructs, the limits on untrusted templates.
#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "jinja.h"
#include "util.h"

static char top[2048];

static struct tm date(const char *ymd) {
    struct tm t = {0};
    sscanf(ymd, "%d-%d-%d", &t.tm_year, &t.tm_mon, &t.tm_mday);
    t.tm_year -= 1900, t.tm_mon -= 1;
    time_t s = timegm(&t);
    gmtime_r(&s, &t);
    return t;
}

// The first difference of two strings, for a readable failure.
static void show_diff(const char *name, const char *got, const char *want) {
    size_t i = 0;
    while (got[i] && got[i] == want[i]) i++;
    size_t from = i > 60 ? i - 60 : 0;
    fprintf(stderr, "  %s: differs at byte %zu\n  got:  [%.120s]\n  want: [%.120s]\n", name, i, got + from, want + from);
}

static void test_goldens(void) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/golden/chat/templates", top);
    DIR *d = opendir(dir);
    CHECK(d, "no %s", dir);
    if (!d) return;
    struct dirent *de;
    int files = 0, renders = 0, refusals = 0;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l < 6 || strcmp(de->d_name + l - 5, ".json")) continue;
        char path[8400];
        PqErr e;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        char *text = pq_read_file(path, NULL, &e);
        cJSON *g = text ? cJSON_Parse(text) : NULL;
        free(text);
        CHECK(g, "%s: not JSON", path);
        if (!g) continue;
        const char *name = cJSON_GetObjectItemCaseSensitive(g, "name")->valuestring;
        snprintf(path, sizeof path, "%s/tests/fixtures/templates/%s",
                 top, cJSON_GetObjectItemCaseSensitive(g, "template")->valuestring);
        char *src = pq_read_file(path, NULL, &e);
        CHECK(src, "%s", e.msg);
        PqJinja *t = src ? pq_jinja_parse(src, &e) : NULL;
        CHECK(t, "%s: %s", name, e.msg);
        free(src);
        struct tm now = date(cJSON_GetObjectItemCaseSensitive(g, "date")->valuestring);
        const cJSON *c;
        int bad = 0;
        cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(g, "cases")) {
            if (!t) break;
            cJSON *vars = cJSON_CreateObject();
            cJSON_AddItemToObject(vars, "messages", cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(c, "messages"), 1));
            cJSON_AddBoolToObject(vars, "add_generation_prompt",
                                  cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "add_generation_prompt")));
            cJSON_AddNullToObject(vars, "tools");
            cJSON_AddNullToObject(vars, "documents");
            const char *tok[] = {"bos_token", "eos_token"};
            for (int i = 0; i < 2; i++) {
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(g, tok[i]);
                if (cJSON_IsString(v)) cJSON_AddStringToObject(vars, tok[i], v->valuestring);
            }
            const cJSON *v;
            cJSON_ArrayForEach(v, cJSON_GetObjectItemCaseSensitive(c, "vars")) {
                cJSON_DeleteItemFromObjectCaseSensitive(vars, v->string);
                cJSON_AddItemToObject(vars, v->string, cJSON_Duplicate(v, 1));
            }
            const char *cname = cJSON_GetObjectItemCaseSensitive(c, "name")->valuestring;
            const cJSON *want = cJSON_GetObjectItemCaseSensitive(c, "rendered");
            const cJSON *err = cJSON_GetObjectItemCaseSensitive(c, "error");
            char *got = pq_jinja_render(t, vars, &now, NULL, &e);
            if (cJSON_IsString(want)) {
                if (!got || strcmp(got, want->valuestring)) {
                    CHECK(0, "%s, %s (agp %d): %s", name, cname, cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "add_generation_prompt")),
                          got ? "rendered differently" : e.msg);
                    if (got && bad++ < 2) show_diff(name, got, want->valuestring);
                }
                renders++;
            } else {
                int raised = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "raised"));
                CHECK(!got && (!raised || strstr(e.msg, err->valuestring)), "%s, %s: want the error '%s', got %s", name,
                      cname, err->valuestring, got ? "a render" : e.msg);
                refusals++;
            }
            free(got);
            cJSON_Delete(vars);
        }
        pq_jinja_free(t);
        cJSON_Delete(g);
        files++;
    }
    closedir(d);
    CHECK(files >= 25, "only %d golden files", files);
    printf("jinja goldens: %d templates, %d renders compared, %d refusals\n", files, renders, refusals);
}

// Renders src with messages [{"role": "user", "content": "Hi"}]; the text or NULL and e.
static char *run(const char *src, const PqJinjaLimits *lim, PqErr *e) {
    PqJinja *t = pq_jinja_parse(src, e);
    if (!t) return NULL;
    cJSON *vars = cJSON_Parse("{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"x\": [3, 1, 2]}");
    char *r = pq_jinja_render(t, vars, NULL, lim, e);
    cJSON_Delete(vars);
    pq_jinja_free(t);
    return r;
}

static void expect(const char *src, const char *want) {
    PqErr e = {{0}};
    char *got = run(src, NULL, &e);
    CHECK(got && !strcmp(got, want), "%s: got [%s], want [%s]", src, got ? got : e.msg, want);
    free(got);
}

static void refuse(const char *src, const PqJinjaLimits *lim, const char *msg) {
    PqErr e = {{0}};
    char *got = run(src, lim, &e);
    CHECK(!got && strstr(e.msg, msg), "%s: want an error with '%s', got %s", src, msg, got ? got : e.msg);
    free(got);
}

static void test_refusals(void) {
    // raise_exception: the template's own message
    refuse("{{ raise_exception('Only user and assistant roles are supported!') }}", NULL,
           "Only user and assistant roles are supported!");
    // bad syntax, with line:column
    refuse("a\n{% if x %}\n{{ y +* 2 }}{% endif %}", NULL, "line 3:");
    refuse("{% for m in messages %}", NULL, "line 1:4: unclosed block");
    refuse("{{ 'abc }}", NULL, "line 1:4: unterminated string");
    refuse("x\n  {% endif %}", NULL, "line 2:6: unexpected {% endif %}");
    refuse("{{ x", NULL, "line 1:");
    refuse("{{ '\\U90510354' }}", NULL, "bad code point"); // found by fuzzing: no int overflow
    expect("{{ '\\U0001F600\\u00e9\\x41\\101' }}", "\xf0\x9f\x98\x80\xc3\xa9" "AA");
    // unknown constructs: named, with line:column
    refuse("\n{% include 'other.jinja' %}", NULL, "line 2:4: unknown or unsupported tag 'include'");
    refuse("{% extends 'base' %}", NULL, "'extends'");
    refuse("{{ x | frobnicate }}", NULL, "line 1:6: no filter named 'frobnicate'");
    refuse("{{ x is frob }}", NULL, "no test named 'frob'");
    refuse("{% break %}", NULL, "'break' outside a for loop");
    refuse("{{ '%(a)s' % x }}", NULL, "unsupported format character");
    // runtime errors jinja2 also raises
    refuse("{{ y.z }}", NULL, "'y' is undefined");
    refuse("{{ messages[0].nope.deeper }}", NULL, "has no attribute 'nope'");
    refuse("{{ 'a' + 1 }}", NULL, "unsupported operand");
    refuse("{{ x.append(4) }}", NULL, "unsafe");
    // limits: range, loop iterations, recursion, output, memory
    refuse("{% for i in range(10**12) %}{% endfor %}", NULL, "Range too big");
    refuse("{{ range(-9223372036854775807, 9223372036854775807)|length }}", NULL, "Range too big");
    expect("{{ range(0, 9223372036854775807, 9223372036854775807)|list }}{{ x[::9223372036854775807] }}"
           "{{ x[::-9223372036854775807] }}{{ -9223372036854775807 is divisibleby(-1) }}",
           "[0][3][2]True");
    PqJinjaLimits lim = pq_jinja_default_limits;
    lim.max_iterations = 1000;
    refuse("{% for i in range(100) %}{% for j in range(100) %}{% endfor %}{% endfor %}", &lim, "iteration limit");
    refuse("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", NULL, "recursion limit");
    refuse("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", NULL, "output limit");
    refuse("{{ 'x' * 10**12 }}", NULL, "output limit");
    lim = pq_jinja_default_limits;
    lim.max_memory = 1 << 20;
    refuse("{% set ns = namespace(s=[]) %}{% for i in range(100000) %}{% set ns.s = ns.s + [i] %}{% endfor %}", &lim,
           "memory limit");
    refuse(
        "{% set ns = namespace(s=[]) %}{% for i in range(5000) %}{% set ns.s = [ns.s] %}{% endfor %}{{ ns.s }}",
        NULL, "too deeply");
    refuse("{% set ns = namespace(s=[]) %}{% for i in range(3000) %}{% set ns.s = [ns.s] %}{% endfor %}"
           "{{ ns.s < ns.s }}",
           NULL, "recursion depth");
    refuse("ok\n  \xff{{ x }}", NULL, "line 2:3: the template is not valid UTF-8");
    { // invalid UTF-8 in a message (cJSON passes it): one byte, one character (found by fuzzing)
        PqErr e;
        PqJinja *t = pq_jinja_parse("{% for c in s %}{{ c|length }}{% endfor %}|{{ s|length }}|{{ s[1:3]|length }}", &e);
        cJSON *v = cJSON_CreateObject();
        cJSON_AddStringToObject(v, "s", "a\xc2\xbe\xbe\xbe\xe9");
        char *r = t ? pq_jinja_render(t, v, NULL, NULL, &e) : NULL;
        CHECK(r && !strcmp(r, "11111|5|2"), "invalid UTF-8 in a value: %s", r ? r : e.msg);
        free(r);
        cJSON_Delete(v);
        pq_jinja_free(t);
    }
    { // 95 nested blocks in each of 64 recursive macro calls: the C stack, not a crash
        PqBuf t = {0};
        pq_buf_puts(&t, "{% macro f(d) %}");
        for (int i = 0; i < 95; i++) pq_buf_puts(&t, "{% if true %}");
        pq_buf_puts(&t, "{{ f(d + 1) if d < 100 else '' }}");
        for (int i = 0; i < 95; i++) pq_buf_puts(&t, "{% endif %}");
        pq_buf_puts(&t, "{% endmacro %}{{ f(0) }}");
        refuse(t.data, NULL, "recursion limit");
        pq_buf_free(&t);
    }
    char deep[4000];
    int k = 0;
    k += sprintf(deep + k, "{{ ");
    for (int i = 0; i < 600; i++) deep[k++] = '(';
    deep[k++] = '1';
    for (int i = 0; i < 600; i++) deep[k++] = ')';
    sprintf(deep + k, " }}");
    refuse(deep, NULL, "nested too deeply");
    // and some of the language, checked against jinja2 by hand
    expect("{{ x|sort }}{{ x|first }}{{ x[::-1] }}{{ x|join('-') }}{{ (x|length) // 2 }}", "[1, 2, 3]3[2, 1, 3]3-1-21");
    expect("{{ 'a b  c'.split() }}{{ ' x '|trim }}|{{ 1e16 }} {{ 0.1 + 0.2 }} {{ -7 % 3 }}",
           "['a', 'b', 'c']x|1e+16 0.30000000000000004 2");
    expect("{% for a in x if a > 1 %}{{ loop.index }}/{{ loop.length }}{% else %}none{% endfor %}", "1/22/2");
    expect("{% set y %}  in  {% endset %}[{{ y }}]{% filter upper %}up{% endfilter %}", "[  in  ]UP");
    expect("{{ {'b': [1, 'é'], 'a': none}|tojson }} {{ {'a': 1}|tojson(indent=2) }}",
           "{\"b\": [1, \"é\"], \"a\": null} {\n  \"a\": 1\n}");
    expect("  {% if true %}\n    yes\n  {% endif %}\n{#- c #} end", "    yes\n end");
    expect("{{ '' * 10**18 }}|{{ \"\" \"\" * 3 }}|{{ [] * 10**18 }}", "||[]"); // found by fuzzing
}

// --bench FILE N: microseconds per render of a 4-turn conversation (for
// scripts/bench-chat; not a test).
static int bench(const char *path, int n) {
    PqErr e;
    char *src = pq_read_file(path, NULL, &e);
    if (!src) return fprintf(stderr, "%s\n", e.msg), 1;
    double t0 = pq_now();
    PqJinja *t = pq_jinja_parse(src, &e);
    double parse_us = (pq_now() - t0) * 1e6;
    free(src);
    if (!t) return fprintf(stderr, "%s: %s\n", path, e.msg), 1;
    cJSON *vars = cJSON_Parse(
        "{\"messages\": [{\"role\": \"system\", \"content\": \"You are a helpful assistant.\"},"
        "{\"role\": \"user\", \"content\": \"Summarize this article in three sentences: the cat sat on the mat.\"},"
        "{\"role\": \"assistant\", \"content\": \"A cat sat on a mat. It was content. Nothing else happened.\"},"
        "{\"role\": \"user\", \"content\": \"Shorter, please.\"}],"
        "\"add_generation_prompt\": true, \"bos_token\": \"<s>\", \"eos_token\": \"</s>\", \"tools\": null}");
    struct tm now = date("2024-07-26");
    size_t bytes = 0;
    t0 = pq_now();
    for (int i = 0; i < n; i++) {
        char *r = pq_jinja_render(t, vars, &now, NULL, &e);
        if (!r) return fprintf(stderr, "%s: %s\n", path, e.msg), 1;
        bytes = strlen(r);
        free(r);
    }
    double us = (pq_now() - t0) * 1e6 / n;
    printf("%s: parse %.1f us, render %.2f us (%zu bytes, %d renders)\n", path, parse_us, us, bytes, n);
    cJSON_Delete(vars);
    pq_jinja_free(t);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "--bench")) return bench(argv[2], atoi(argv[3]));
    const char *t = getenv("PQ_TOP");
    snprintf(top, sizeof top, "%s", t ? t : ".");
    test_goldens();
    test_refusals();
    printf("%s\n", n_fail ? "FAILED" : "ok");
    return n_fail != 0;
}
