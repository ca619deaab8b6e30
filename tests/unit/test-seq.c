// test-seq: pair records to sequences. The prompt part is the encoded
// generation-prompt render, the response part decodes to the response and
// its end of turn; both record forms give the same ids; truncation keeps
// lengths within max_len and never touches the response; bad records fail
// with a clear message; the --truncate names.
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "chat.h"
#include "check.h"
#include "seq.h"
#include "testdir.h"
#include "tokenizer.h"
#include "util.h"

static char tmpdir[] = "/tmp/pq-test-seq-XXXXXX";

static const char INSTRUCTION[] = "Create a very short summary of the text below, at most 2 sentences.\n\n";

// A model directory whose tokenizer_config.json holds the golden template.
static PqChat *load_chat(const char *golden, PqErr *e) {
    char path[4400], dir[4200];
    snprintf(path, sizeof path, "%s/tests/golden/chat/%s.json", top, golden);
    char *text = pq_read_file(path, NULL, e);
    if (!text) return NULL;
    cJSON *g = cJSON_Parse(text);
    free(text);
    cJSON *cfg = cJSON_CreateObject();
    static const char *keys[] = {"chat_template", "bos_token", "eos_token"};
    for (int i = 0; i < 3; i++)
        cJSON_AddItemToObject(cfg, keys[i], cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(g, keys[i]), 1));
    snprintf(dir, sizeof dir, "%s/%s", tmpdir, golden);
    mkdir(dir, 0700);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    char *s = cJSON_Print(cfg);
    FILE *f = fopen(path, "w");
    fputs(s, f);
    fclose(f);
    free(s);
    cJSON_Delete(cfg);
    cJSON_Delete(g);
    return pq_chat_load(dir, NULL, e);
}

static int same_range(const int32_t *a, const int32_t *b, size_t n) { return !n || !memcmp(a, b, n * sizeof *a); }

// The record in the three accepted forms.
static cJSON *record(int form, const cJSON *prompt, const char *chosen, const char *rejected) {
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "id", "x");
    if (form == 2 && cJSON_GetArraySize(prompt) == 1) { // plain strings
        cJSON_AddStringToObject(r, "prompt",
                                cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(prompt, 0), "content")->valuestring);
        cJSON_AddStringToObject(r, "chosen", chosen);
        cJSON_AddStringToObject(r, "rejected", rejected);
        return r;
    }
    cJSON_AddItemToObject(r, "prompt", cJSON_Duplicate(prompt, 1));
    const char *resp[2] = {chosen, rejected};
    static const char *names[2] = {"chosen", "rejected"};
    for (int k = 0; k < 2; k++) {
        cJSON *a = form == 0 ? cJSON_Duplicate(prompt, 1) : cJSON_CreateArray(); // 0: whole conversation, else TRL
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "role", "assistant");
        cJSON_AddStringToObject(m, "content", resp[k]);
        cJSON_AddItemToArray(a, m);
        cJSON_AddItemToObject(r, names[k], a);
    }
    return r;
}

static cJSON *messages(const char *const *rc, int n) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < n; i++) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "role", rc[2 * i]);
        cJSON_AddStringToObject(m, "content", rc[2 * i + 1]);
        cJSON_AddItemToArray(a, m);
    }
    return a;
}

typedef struct Combo {
    const char *tok, *chat; // tokenizer (built, or a model directory of the repo), chat golden
    int round_trips;        // the tokenizer decodes its encodings back to the text
} Combo;

// One prompt and response under one template and tokenizer.
static void check_one(const PqTokenizer *tok, const PqChat *chat, const char *label, const cJSON *prompt,
                      const char *chosen, const char *rejected, int round_trips) {
    PqErr e = {{0}};
    PqPairMsgs pm[3];
    PqSeq base[2] = {0};
    int forms = cJSON_GetArraySize(prompt) == 1 ? 3 : 2;
    cJSON *r0 = NULL;
    for (int f = 0; f < forms; f++) {
        cJSON *r = record(f, prompt, chosen, rejected);
        int rc = pq_pair_msgs(r, &pm[f], &e);
        CHECK(rc == 0, "%s form %d: %s", label, f, e.msg);
        if (rc == 0) {
            const PqMessage *resp[2] = {&pm[f].chosen, &pm[f].rejected};
            for (int k = 0; k < 2; k++) {
                PqSeq s;
                rc = pq_seq_build(tok, chat, pm[f].prompt, pm[f].n_prompt, resp[k], 0, PQ_TRUNC_ARTICLE, &s, &e);
                CHECK(rc == 0, "%s form %d: %s", label, f, e.msg);
                if (rc) continue;
                if (f == 0) {
                    base[k] = s;
                    continue;
                }
                CHECK(s.ids.len == base[k].ids.len && s.prompt_len == base[k].prompt_len &&
                          same_range(s.ids.data, base[k].ids.data, s.ids.len),
                      "%s: record form %d gives other ids than the whole-conversation form", label, f);
                pq_seq_free(&s);
            }
            if (f) pq_pair_msgs_free(&pm[f]);
        }
        if (f == 0) r0 = r; // pm[0] points into it
        else cJSON_Delete(r);
    }
    if (!base[0].ids.len) {
        cJSON_Delete(r0);
        return;
    }
    // the parts, independently: render, cut at the prefix, encode each
    for (int k = 0; k < 2; k++) {
        const PqMessage *resp = k ? &pm[0].rejected : &pm[0].chosen;
        PqMessage all[8];
        int n = pm[0].n_prompt;
        memcpy(all, pm[0].prompt, (size_t)n * sizeof *all);
        all[n] = *resp;
        char *pre = pq_chat_render(chat, pm[0].prompt, n, 1, &e);
        char *full = pq_chat_render(chat, all, n + 1, 0, &e);
        size_t lp = strlen(pre);
        PqTokens P = {0}, R = {0};
        pq_tokenizer_encode(tok, pre, lp, 0, &P, &e);
        pq_tokenizer_encode(tok, full + lp, strlen(full + lp), 0, &R, &e);
        PqSeq *s = &base[k];
        CHECK(s->prompt_len == (int)P.len && s->ids.len == P.len + R.len && same_range(s->ids.data, P.data, P.len) &&
                  same_range(s->ids.data + P.len, R.data, R.len),
              "%s: the sequence is not encode(prefix) + encode(rest)", label);
        CHECK(!strncmp(full + lp, resp->content, strlen(resp->content)) || full[lp] == ' ' ||
                  strstr(full + lp, resp->content),
              "%s: the rest of the render does not hold the response", label);
        if (round_trips) {
            char *d = pq_tokenizer_decode(tok, s->ids.data + s->prompt_len, s->ids.len - (size_t)s->prompt_len, 0);
            CHECK(!strcmp(d, full + lp), "%s: the response part decodes to [%s], want [%s]", label, d, full + lp);
            free(d);
        }
        // truncation
        size_t L = s->ids.len, rl = R.len;
        const char *tail = NULL; // what the prefix render has after the longest user message
        {
            const char *longest = NULL;
            for (int i = 0; i < n; i++)
                if (!strcmp(pm[0].prompt[i].role, "user") && (!longest || strlen(pm[0].prompt[i].content) > strlen(longest)))
                    longest = pm[0].prompt[i].content;
            const char *at = strstr(pre, longest);
            if (at) tail = at + strlen(longest);
        }
        int limits[] = {(int)L, (int)L - 1, (int)L - 37, (int)(rl + (L - rl) / 3), (int)rl + 1, (int)rl};
        for (size_t li = 0; li < sizeof limits / sizeof *limits; li++) {
            int max_len = limits[li];
            if (max_len <= 0 || (size_t)max_len > L) continue;
            for (int policy = 0; policy < 3; policy++) {
                PqSeq t;
                int rc = pq_seq_build(tok, chat, pm[0].prompt, n, resp, max_len, policy, &t, &e);
                if ((size_t)max_len <= rl) {
                    CHECK(rc != 0 && strstr(e.msg, "response alone"), "%s: max_len %d < response %zu: %s", label,
                          max_len, rl, rc ? e.msg : "built");
                    if (!rc) pq_seq_free(&t);
                    continue;
                }
                if (policy == PQ_TRUNC_ARTICLE && rc) { // only when even the emptied message is too long
                    CHECK(strstr(e.msg, "even with the longest user message emptied") && max_len < (int)(L - 20),
                          "%s: article truncation to %d failed: %s", label, max_len, e.msg);
                    continue;
                }
                CHECK(rc == 0, "%s: policy %d max_len %d: %s", label, policy, max_len, e.msg);
                if (rc) continue;
                size_t tp = (size_t)t.prompt_len;
                CHECK(t.ids.len <= (size_t)max_len, "%s: %zu tokens > max_len %d", label, t.ids.len, max_len);
                CHECK(t.truncated == ((size_t)max_len < L), "%s: truncated flag", label);
                CHECK(t.ids.len - tp == rl && same_range(t.ids.data + tp, R.data, rl),
                      "%s: policy %d max_len %d changed the response tokens", label, policy, max_len);
                if (policy == PQ_TRUNC_KEEP_START)
                    CHECK(t.ids.len == (size_t)max_len && same_range(t.ids.data, P.data, tp),
                          "%s: keep_start does not keep the first prompt tokens", label);
                if (policy == PQ_TRUNC_KEEP_END)
                    CHECK(t.ids.len == (size_t)max_len && same_range(t.ids.data, P.data + P.len - tp, tp),
                          "%s: keep_end does not keep the last prompt tokens", label);
                if (policy == PQ_TRUNC_ARTICLE) {
                    CHECK(t.ids.len + 8 >= (size_t)max_len, "%s: article truncation to %d left only %zu tokens",
                          label, max_len, t.ids.len);
                    if (round_trips && tail) {
                        char *d = pq_tokenizer_decode(tok, t.ids.data, tp, 0);
                        size_t dl = strlen(d), tl = strlen(tail);
                        CHECK(dl >= tl && !strcmp(d + dl - tl, tail) && strstr(d, "Create a very short summary"),
                              "%s: article truncation to %d lost the template or instruction: [...%s]", label,
                              max_len, dl > 200 ? d + dl - 200 : d);
                        free(d);
                    }
                }
                pq_seq_free(&t);
            }
        }
        pq_tokens_free(&P);
        pq_tokens_free(&R);
        free(pre);
        free(full);
    }
    pq_pair_msgs_free(&pm[0]);
    cJSON_Delete(r0);
    pq_seq_free(&base[0]);
    pq_seq_free(&base[1]);
}

static void test_combos(void) {
    static const Combo combos[] = {
        // the legacy Prepend normalizer writes a "▁" before the " " after </s>: no round trip
        {"spm-legacy", "mistral-instruct-v0.1", 0}, {"spm-legacy", "llama-2-chat", 1},
        {"bl-llama3", "llama-3", 1},                {"bl-qwen2", "smollm2", 1},
        {"spm-meta", "tinyllama-chat", 0},          {"tests/fixtures/models/mistral-7b-instruct-v0.1", "mistral-7b-instruct-v0.1-config", 1},
        {"tests/fixtures/models/gpt2", "tinyllama-chat", 1},
    };
    char path[4400];
    PqErr e;
    snprintf(path, sizeof path, "%s/data/cnndm-sample.jsonl", top);
    FILE *f = fopen(path, "r");
    CHECK(f, "no articles: %s", path);
    if (!f) return;
    char *line = NULL;
    size_t cap = 0;
    cJSON *arts[2];
    int na = 0;
    while (na < 2 && getline(&line, &cap, f) > 0) arts[na++] = cJSON_Parse(line);
    free(line);
    fclose(f);
    for (size_t c = 0; c < sizeof combos / sizeof *combos; c++) {
        if (strchr(combos[c].tok, '/')) snprintf(path, sizeof path, "%s/%s/tokenizer.json", top, combos[c].tok);
        else snprintf(path, sizeof path, "%s/tests/golden/tokenizer/models/%s/tokenizer.json", top, combos[c].tok);
        PqTokenizer *tok = pq_tokenizer_load(path, &e);
        CHECK(tok, "%s", e.msg);
        PqChat *chat = load_chat(combos[c].chat, &e);
        CHECK(chat, "%s: %s", combos[c].chat, e.msg);
        for (int i = 0; tok && chat && i < na; i++) {
            const char *article = cJSON_GetObjectItemCaseSensitive(arts[i], "article")->valuestring;
            const char *hl = cJSON_GetObjectItemCaseSensitive(arts[i], "highlights")->valuestring;
            char label[256];
            PqBuf u = {0};
            pq_buf_printf(&u, "%s%s", INSTRUCTION, article);
            const char *one[] = {"user", u.data};
            cJSON *p = messages(one, 1);
            snprintf(label, sizeof label, "%s+%s article %d", combos[c].tok, combos[c].chat, i);
            check_one(tok, chat, label, p, hl, "A summary that is wrong.", combos[c].round_trips);
            cJSON_Delete(p);
            // several turns: the longest user message is the one cut
            if (strcmp(combos[c].chat + 0, "mistral-instruct-v0.1") && strncmp(combos[c].chat, "mistral", 7) &&
                strcmp(combos[c].chat, "llama-2-chat")) {
                const char *turns[] = {"system", "You summarize.", "user", "Hello", "assistant", "Hi! Send a text.",
                                       "user", u.data};
                p = messages(turns, 4);
                snprintf(label, sizeof label, "%s+%s article %d, 4 turns", combos[c].tok, combos[c].chat, i);
                check_one(tok, chat, label, p, hl, "Wrong.", combos[c].round_trips);
                cJSON_Delete(p);
            }
            pq_buf_free(&u);
        }
        pq_chat_free(chat);
        pq_tokenizer_free(tok);
    }
    for (int i = 0; i < na; i++) cJSON_Delete(arts[i]);
}

// Bad records: each refused with a message naming the problem.
static void test_bad_records(void) {
    static const struct {
        const char *json, *want;
    } cases[] = {
        {"{\"chosen\": \"a\", \"rejected\": \"b\"}", "no \"prompt\""},
        {"{\"prompt\": \"p\", \"rejected\": \"b\"}", "no \"chosen\""},
        {"{\"prompt\": \"p\", \"chosen\": \"a\"}", "no \"rejected\""},
        {"{\"prompt\": 3, \"chosen\": \"a\", \"rejected\": \"b\"}", "\"prompt\" is neither"},
        {"{\"prompt\": [], \"chosen\": \"a\", \"rejected\": \"b\"}", "no messages"},
        {"{\"prompt\": [{\"role\": \"user\"}], \"chosen\": \"a\", \"rejected\": \"b\"}", "\"prompt\" message 1"},
        {"{\"prompt\": \"p\", \"chosen\": \"\", \"rejected\": \"b\"}", "empty \"chosen\""},
        {"{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": [{\"role\": \"assistant\", \"content\": \"\"}]}",
         "empty \"rejected\""},
        {"{\"prompt\": \"p\", \"chosen\": [{\"role\": \"user\", \"content\": \"a\"}], \"rejected\": \"b\"}",
         "not the assistant's"},
        {"{\"prompt\": [{\"role\": \"user\", \"content\": \"p\"}], \"chosen\": [{\"role\": \"user\", \"content\": "
         "\"q\"}, {\"role\": \"assistant\", \"content\": \"a\"}], \"rejected\": \"b\"}",
         "differs from \"prompt\""},
        {"{\"prompt\": [{\"role\": \"user\", \"content\": \"p\"}], \"chosen\": [{\"role\": \"user\", \"content\": "
         "\"p\"}, {\"role\": \"user\", \"content\": \"a\"}], \"rejected\": \"b\"}",
         "not the assistant's"},
        {"{\"prompt\": \"p\", \"chosen\": [], \"rejected\": \"b\"}", "has 0 messages"},
        {"{\"prompt\": \"p\", \"chosen\": {\"role\": \"assistant\", \"content\": \"a\"}, \"rejected\": \"b\"}",
         "neither a string nor a list"},
        {"{\"prompt\": \"p\", \"chosen\": [\"a\"], \"rejected\": \"b\"}", "\"chosen\" message 1"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        cJSON *r = cJSON_Parse(cases[i].json);
        PqPairMsgs pm;
        PqErr e = {{0}};
        int rc = pq_pair_msgs(r, &pm, &e);
        CHECK(rc != 0 && strstr(e.msg, cases[i].want), "bad record %zu: want an error with '%s', got %s", i,
              cases[i].want, rc ? e.msg : "accepted");
        if (!rc) pq_pair_msgs_free(&pm);
        cJSON_Delete(r);
    }
    // a template that refuses the conversation: its error comes through
    PqErr e;
    PqChat *chat = load_chat("mistral-instruct-v0.1", &e);
    char path[4400];
    snprintf(path, sizeof path, "%s/tests/golden/tokenizer/models/spm-legacy/tokenizer.json", top);
    PqTokenizer *tok = pq_tokenizer_load(path, &e);
    if (chat && tok) {
        PqMessage sys[] = {{"system", "s"}, {"user", "u"}};
        PqMessage resp = {"assistant", "a"};
        PqSeq s;
        int rc = pq_seq_build(tok, chat, sys, 2, &resp, 0, PQ_TRUNC_ARTICLE, &s, &e);
        CHECK(rc != 0 && strstr(e.msg, "alternate"), "a system turn under mistral: %s", rc ? e.msg : "built");
        if (!rc) pq_seq_free(&s);
    }
    pq_chat_free(chat);
    pq_tokenizer_free(tok);
}

// --truncate's names, and nothing else (case and spelling exact).
static void test_trunc_names(void) {
    CHECK(pq_trunc_parse("article") == PQ_TRUNC_ARTICLE, "article");
    CHECK(pq_trunc_parse("keep_start") == PQ_TRUNC_KEEP_START, "keep_start");
    CHECK(pq_trunc_parse("keep_end") == PQ_TRUNC_KEEP_END, "keep_end");
    static const char *bad[] = {"", "Article", "keep-start", "keep_end ", "keep", "none"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECK(pq_trunc_parse(bad[i]) == -1, "'%s' is not a policy", bad[i]);
}

int main(void) {
    if (testdir_make(tmpdir)) return 1;
    test_combos();
    test_bad_records();
    test_trunc_names();
    testdir_remove(tmpdir);
    printf("%d checks, %s\n", n_checks, n_fail ? "FAILED" : "ok");
    return n_fail != 0;
}
