// test-tokenizer: pq's tokenizer against the golden files made by Hugging
// Face tokenizers (scripts/gen-tokenizer-goldens): identical ids for every
// string of tests/golden/tokenizer/NAME.jsonl, and identical decoding.
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"
#include "util.h"

static int n_fail;

static void show_ids(const char *what, const int32_t *ids, size_t n) {
    fprintf(stderr, "    %s (%zu):", what, n);
    for (size_t i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, n > 40 ? " ...\n" : "\n");
}

// Checks one golden file; returns the number of strings checked.
static long check_file(const char *top, const char *name, const char *tok_path) {
    char path[4096];
    PqErr e;
    snprintf(path, sizeof path, "%s/%s", top, tok_path);
    PqTokenizer *tok = pq_tokenizer_load(path, &e);
    if (!tok) {
        fprintf(stderr, "FAIL %s: %s\n", name, e.msg);
        n_fail++;
        return 0;
    }
    snprintf(path, sizeof path, "%s/tests/golden/tokenizer/%s.jsonl", top, name);
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "FAIL cannot open %s\n", path);
        n_fail++;
        pq_tokenizer_free(tok);
        return 0;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long n = 0, bad = 0, lineno = 0;
    while ((len = getline(&line, &cap, f)) > 0) {
        lineno++;
        cJSON *r = cJSON_ParseWithLength(line, (size_t)len);
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(r, "text");
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(r, "ids");
        if (!cJSON_IsString(text) || !cJSON_IsArray(ids)) {
            fprintf(stderr, "FAIL %s:%ld: bad golden line\n", path, lineno);
            n_fail++;
            cJSON_Delete(r);
            continue;
        }
        int special = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "add_special"));
        const char *s = text->valuestring;
        PqTokens got = {0};
        int ok = pq_tokenizer_encode(tok, s, strlen(s), special, &got, &e) == 0;
        int nid = cJSON_GetArraySize(ids);
        int32_t *want = pq_xmalloc((size_t)(nid + 1) * sizeof *want);
        for (int i = 0; i < nid; i++) want[i] = (int32_t)cJSON_GetArrayItem(ids, i)->valuedouble;
        if (!ok || got.len != (size_t)nid || (nid && memcmp(got.data, want, (size_t)nid * sizeof *want))) {
            if (bad < 5) {
                char *js = cJSON_PrintUnformatted(text);
                fprintf(stderr, "FAIL %s:%ld: ids differ for %s\n", name, lineno, js);
                free(js);
                if (!ok) fprintf(stderr, "    error: %s\n", e.msg);
                show_ids("tokenizers", want, (size_t)nid);
                show_ids("pq", got.data, got.len);
            }
            bad++;
        } else {
            const cJSON *d = cJSON_GetObjectItemCaseSensitive(r, "decoded");
            const cJSON *ds = cJSON_GetObjectItemCaseSensitive(r, "decoded_skip");
            const char *want_dec = cJSON_IsString(d) ? d->valuestring : s;
            const char *want_skip = cJSON_IsString(ds) ? ds->valuestring : want_dec;
            char *dec = pq_tokenizer_decode(tok, want, (size_t)nid, 0);
            char *skip = pq_tokenizer_decode(tok, want, (size_t)nid, 1);
            if (strcmp(dec, want_dec) || strcmp(skip, want_skip)) {
                if (bad < 5) {
                    char *js = cJSON_PrintUnformatted(text);
                    fprintf(stderr, "FAIL %s:%ld: decode differs for %s\n", name, lineno, js);
                    free(js);
                    fprintf(stderr, "    tokenizers: [%s] / skip [%s]\n    pq:         [%s] / skip [%s]\n", want_dec,
                            want_skip, dec, skip);
                }
                bad++;
            }
            free(dec);
            free(skip);
        }
        n++;
        free(want);
        pq_tokens_free(&got);
        cJSON_Delete(r);
    }
    free(line);
    fclose(f);
    pq_tokenizer_free(tok);
    printf("%-12s %ld strings, %ld differ\n", name, n, bad);
    if (bad) n_fail++;
    return n;
}

int main(void) {
    const char *top = getenv("PQ_TOP");
    if (!top) top = ".";
    char path[4096];
    PqErr e;
    snprintf(path, sizeof path, "%s/tests/golden/tokenizer/index.json", top);
    char *text = pq_read_file(path, NULL, &e);
    if (!text) {
        fprintf(stderr, "FAIL %s\n", e.msg);
        return 1;
    }
    cJSON *index = cJSON_Parse(text);
    free(text);
    const cJSON *t;
    long total = 0;
    int n_tok = 0;
    cJSON_ArrayForEach(t, index) {
        const char *name = cJSON_GetObjectItemCaseSensitive(t, "name")->valuestring;
        const char *p = cJSON_GetObjectItemCaseSensitive(t, "path")->valuestring;
        snprintf(path, sizeof path, "%s/%s", top, p);
        FILE *f = fopen(path, "r");
        if (!f) { // every tokenizer of the index is in the repository
            printf("FAIL %-12s %s not found\n", name, path);
            n_fail++;
            continue;
        }
        fclose(f);
        total += check_file(top, name, p);
        n_tok++;
    }
    cJSON_Delete(index);
    printf("%ld strings on %d tokenizers, %s\n", total, n_tok,
           n_fail ? "MISMATCHES" : "all identical");
    return n_fail || n_tok == 0;
}
