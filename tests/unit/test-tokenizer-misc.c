// test-tokenizer-misc: what the golden files cannot hold: invalid UTF-8 and
// NUL bytes, merges in the [a, b] pair form, clear errors for unsupported
// tokenizer.json parts, the small API, and encoding from many threads.
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "testdir.h"
#include "tokenizer.h"
#include "util.h"

static char tmpdir[] = "/tmp/pq-test-tok-XXXXXX";

static const char *built[] = {"bl-llama3", "bl-qwen2", "spm-legacy", "spm-meta", "bl-splits"};

static PqTokenizer *load_built(const char *name) {
    char path[4096];
    PqErr e;
    snprintf(path, sizeof path, "%s/tests/golden/tokenizer/models/%s/tokenizer.json", top, name);
    PqTokenizer *t = pq_tokenizer_load(path, &e);
    CHECK(t, "%s: %s", name, e.msg);
    return t;
}

static int encode(const PqTokenizer *t, const char *s, size_t n, int special, PqTokens *out) {
    PqErr e;
    out->len = 0;
    int rc = pq_tokenizer_encode(t, s, n, special, out, &e);
    CHECK(rc == 0, "encode failed: %s", e.msg);
    return rc;
}

static int same(const PqTokens *a, const PqTokens *b) {
    return a->len == b->len && (!a->len || !memcmp(a->data, b->data, a->len * sizeof *a->data));
}

// A valid UTF-8 check written independently of the tokenizer's.
static int valid_utf8(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = u[i];
        size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (!k || i + k > n) return 0;
        uint32_t cp = k == 1 ? c : k == 2 ? c & 0x1F : k == 3 ? c & 0x0F : c & 0x07;
        for (size_t j = 1; j < k; j++) {
            if ((u[i + j] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (u[i + j] & 0x3F);
        }
        if ((k == 2 && cp < 0x80) || (k == 3 && cp < 0x800) || (k == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += k;
    }
    return 1;
}

// Invalid UTF-8 is first made valid as Rust's String::from_utf8_lossy does
// (each maximal invalid subsequence becomes one U+FFFD): the ids are those
// of that text, which the goldens check against tokenizers.
static void test_invalid_utf8(void) {
    static const struct {
        const char *bad, *lossy;
    } cases[] = {
        {"a\xff b", "a\xEF\xBF\xBD b"},
        {"\xe2\x82", "\xEF\xBF\xBD"},
        {"\xe2\x82z", "\xEF\xBF\xBDz"},
        {"\xf0\x80\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},
        {"\xed\xa0\x80 surrogate", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD surrogate"},
        {"\xc0\xaf", "\xEF\xBF\xBD\xEF\xBF\xBD"},
        {"abc\xe6\x97", "abc\xEF\xBF\xBD"},
        {"\xf4\x90\x80\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},
        {"\x80\x80 <s>\xfe", "\xEF\xBF\xBD\xEF\xBF\xBD <s>\xEF\xBF\xBD"},
    };
    for (size_t b = 0; b < sizeof built / sizeof *built; b++) {
        PqTokenizer *t = load_built(built[b]);
        if (!t) continue;
        PqTokens x = {0}, y = {0};
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
            encode(t, cases[i].bad, strlen(cases[i].bad), 0, &x);
            encode(t, cases[i].lossy, strlen(cases[i].lossy), 0, &y);
            CHECK(same(&x, &y), "%s: invalid case %zu: ids differ from the lossy text's", built[b], i);
        }
        // random bytes: never a crash, ids in range, decoding valid UTF-8
        PqRng r;
        pq_rng_seed(&r, 42);
        char buf[300];
        for (int k = 0; k < 300; k++) {
            size_t n = pq_rng_below(&r, sizeof buf);
            for (size_t j = 0; j < n; j++) buf[j] = (char)(pq_rng_below(&r, 4) ? pq_rng_below(&r, 256) : ' ');
            if (encode(t, buf, n, k & 1, &x)) break;
            for (size_t j = 0; j < x.len; j++)
                CHECK(x.data[j] >= 0 && x.data[j] < pq_tokenizer_vocab_size(t), "%s: id %d out of range", built[b],
                      x.data[j]);
            char *d = pq_tokenizer_decode(t, x.data, x.len, 0);
            CHECK(valid_utf8(d, strlen(d)), "%s: decode of random bytes is not valid UTF-8", built[b]);
            free(d);
        }
        pq_tokens_free(&x);
        pq_tokens_free(&y);
        pq_tokenizer_free(t);
    }
}

// NUL bytes (which no JSON golden can hold in pq) are ordinary characters.
static void test_nul(void) {
    PqTokenizer *t = load_built("bl-qwen2");
    if (!t) return;
    PqTokens x = {0};
    static const char s[] = "a\0b \0\0 c";
    encode(t, s, sizeof s - 1, 0, &x);
    char *d = pq_tokenizer_decode(t, x.data, x.len, 0);
    CHECK(!memcmp(d, "a\0b \0\0 c", sizeof s), "NUL bytes do not round-trip through the byte-level tokenizer");
    free(d);
    pq_tokens_free(&x);
    pq_tokenizer_free(t);
}

static char *write_tmp(const char *name, const char *text) {
    static char path[4096];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    return path;
}

// The [a, b] pair form of merges (tokenizers >= 0.20 writes it) gives the
// same ids as the "a b" string form.
static void test_pair_merges(void) {
    const char *texts[] = {"The quick brown fox, don't it?  123 4567\n\n caf\xC3\xA9 \xE6\x97\xA5", "  a  b ", ""};
    for (size_t b = 0; b < sizeof built / sizeof *built; b++) {
        char path[4096];
        PqErr e;
        snprintf(path, sizeof path, "%s/tests/golden/tokenizer/models/%s/tokenizer.json", top, built[b]);
        char *text = pq_read_file(path, NULL, &e);
        cJSON *j = cJSON_Parse(text);
        free(text);
        cJSON *merges = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "model"), "merges");
        int n = cJSON_GetArraySize(merges);
        for (int i = 0; i < n; i++) {
            const char *m = cJSON_GetArrayItem(merges, i)->valuestring;
            const char *sp = strchr(m, ' ');
            char *left = pq_xstrndup(m, (size_t)(sp - m));
            cJSON *pair = cJSON_CreateArray();
            cJSON_AddItemToArray(pair, cJSON_CreateString(left));
            cJSON_AddItemToArray(pair, cJSON_CreateString(sp + 1));
            cJSON_ReplaceItemInArray(merges, i, pair);
            free(left);
        }
        char *out = cJSON_Print(j);
        cJSON_Delete(j);
        PqTokenizer *t1 = load_built(built[b]);
        PqTokenizer *t2 = pq_tokenizer_load(write_tmp("pairs.json", out), &e);
        free(out);
        CHECK(t2, "pair-form merges: %s", e.msg);
        if (t1 && t2) {
            PqTokens x = {0}, y = {0};
            for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
                encode(t1, texts[i], strlen(texts[i]), 1, &x);
                encode(t2, texts[i], strlen(texts[i]), 1, &y);
                CHECK(same(&x, &y) && (x.len > 0 || !texts[i][0]), "%s: pair-form merges give other ids", built[b]);
            }
            pq_tokens_free(&x);
            pq_tokens_free(&y);
        }
        pq_tokenizer_free(t1);
        pq_tokenizer_free(t2);
    }
}

// Each unsupported part is named in the error.
static void test_errors(void) {
    static const char *base_model = "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, "
                                    "\"merges\": [\"a b\"]}";
    static const struct {
        const char *json, *want;
    } cases[] = {
        {"{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}", "Unigram"},
        {"{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", "WordPiece"},
        {"{%s, \"normalizer\": {\"type\": \"Lowercase\"}}", "Lowercase"},
        {"{%s, \"normalizer\": {\"type\": \"Precompiled\", \"precompiled_charsmap\": \"\"}}", "Precompiled"},
        {"{%s, \"pre_tokenizer\": {\"type\": \"Whitespace\"}}", "Whitespace"},
        {"{%s, \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Punctuation\"}]}}",
         "Punctuation"},
        {"{%s, \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}, \"behavior\": \"Isolated\"}}",
         "regex"},
        {"{%s, \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"String\": \"x\"}, \"behavior\": \"Sideways\"}}",
         "Sideways"},
        {"{%s, \"decoder\": {\"type\": \"WordPiece\"}}", "WordPiece"},
        {"{%s, \"post_processor\": {\"type\": \"RobertaProcessing\"}}", "RobertaProcessing"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a c\"]}}", "not in the vocab"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b c\"]}}", "not two tokens"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [], \"unk_token\": \"<unk>\"}}",
         "unk_token"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [], \"dropout\": 0.1}}", "dropout"},
        {"{\"model\": ", "not JSON"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char json[1024];
        PqErr e = {{0}};
        snprintf(json, sizeof json, cases[i].json, base_model);
        PqTokenizer *t = pq_tokenizer_load(write_tmp("bad.json", json), &e);
        CHECK(!t && strstr(e.msg, cases[i].want), "case %zu: want an error naming %s, got %s", i, cases[i].want,
              t ? "success" : e.msg);
        pq_tokenizer_free(t);
    }
    PqErr e = {{0}};
    CHECK(!pq_tokenizer_load("/nonexistent/tokenizer.json", &e) && strstr(e.msg, "/nonexistent"),
          "missing file: %s", e.msg);
    // the minimal model works
    char json[512];
    snprintf(json, sizeof json, "{%s}", base_model);
    PqTokenizer *t = pq_tokenizer_load(write_tmp("ok.json", json), &e);
    CHECK(t, "minimal BPE: %s", e.msg);
    if (t) {
        PqTokens x = {0};
        encode(t, "abba", 4, 1, &x);
        CHECK(x.len == 3 && x.data[0] == 2 && x.data[1] == 1 && x.data[2] == 0, "minimal BPE: abba");
        char *d = pq_tokenizer_decode(t, x.data, x.len, 0); // no decoder: tokens joined by spaces
        CHECK(!strcmp(d, "ab b a"), "minimal BPE decode: %s", d);
        free(d);
        pq_tokens_free(&x);
        pq_tokenizer_free(t);
    }
}

static void test_api(void) {
    PqTokenizer *t = load_built("spm-legacy");
    if (!t) return;
    int32_t s = pq_tokenizer_token_id(t, "<s>");
    CHECK(s == 1 && !strcmp(pq_tokenizer_token(t, s), "<s>"), "<s> is 1");
    CHECK(pq_tokenizer_token_id(t, "<0x41>") == 3 + 0x41, "byte token ids");
    CHECK(pq_tokenizer_token_id(t, "no such token") == -1, "absent token");
    CHECK(pq_tokenizer_token(t, -1) == NULL && pq_tokenizer_token(t, pq_tokenizer_vocab_size(t)) == NULL,
          "out-of-range ids");
    int32_t inst = pq_tokenizer_token_id(t, "[INST]");
    CHECK(inst == pq_tokenizer_vocab_size(t) - 2, "added tokens extend the vocab: [INST] = %d", inst);
    int32_t ids[] = {1, inst, 2, -5, 999999};
    char *d = pq_tokenizer_decode(t, ids, 5, 1); // specials and bad ids dropped, [INST] (not special) kept
    CHECK(!strcmp(d, "[INST]"), "skip_special: %s", d);
    free(d);
    // from the model directory: the same tokenizer; a missing one named by its path
    char dir[4096];
    PqErr e;
    snprintf(dir, sizeof dir, "%s/tests/golden/tokenizer/models/spm-legacy", top);
    PqTokenizer *td = pq_tokenizer_load_dir(dir, &e);
    CHECK(td && pq_tokenizer_vocab_size(td) == pq_tokenizer_vocab_size(t) &&
              pq_tokenizer_token_id(td, "[INST]") == inst,
          "load_dir: %s", td ? "a different tokenizer" : e.msg);
    pq_tokenizer_free(td);
    CHECK(!pq_tokenizer_load_dir("/nonexistent", &e) && strstr(e.msg, "/nonexistent/tokenizer.json"),
          "load_dir of no directory: %s", e.msg);
    pq_tokenizer_free(t);
}

// Encoding is reentrant: the same tokenizer from many threads.
static void test_threads(void) {
    PqTokenizer *t = load_built("bl-llama3");
    if (!t) return;
    enum { N = 64 };
    static PqTokens serial[N], par[N];
    char texts[N][128];
    for (int i = 0; i < N; i++) {
        snprintf(texts[i], sizeof texts[i], "Thread %d says: it's   %d\xC3\xA9 <|eot_id|> x%d\n\n", i, i * 7919, i);
        encode(t, texts[i], strlen(texts[i]), 1, &serial[i]);
    }
    int bad = 0;
#pragma omp parallel for num_threads(4) reduction(+ : bad)
    for (int i = 0; i < N; i++) {
        PqErr e;
        for (int rep = 0; rep < 20; rep++) {
            par[i].len = 0;
            bad += pq_tokenizer_encode(t, texts[i], strlen(texts[i]), 1, &par[i], &e) != 0;
        }
    }
    for (int i = 0; i < N; i++) {
        CHECK(same(&serial[i], &par[i]), "thread result %d differs", i);
        pq_tokens_free(&serial[i]);
        pq_tokens_free(&par[i]);
    }
    CHECK(bad == 0, "threaded encodes failed");
    pq_tokenizer_free(t);
}

int main(void) {
    if (testdir_make(tmpdir)) return 1;
    test_invalid_utf8();
    test_nul();
    test_pair_merges();
    test_errors();
    test_api();
    test_threads();
    testdir_remove(tmpdir);
    printf("%s\n", n_fail ? "FAILED" : "ok");
    return n_fail != 0;
}
