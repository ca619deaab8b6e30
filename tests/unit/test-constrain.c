// test-constrain: the quiz and answers grammars of constrained decoding
// always end in replies the judge parsers (quiz.c) accept, within the token
// budget; random walks over characters and over the tokens of real
// tokenizers (SentencePiece-style Mistral, byte-level GPT-2), whose token
// texts must also agree with the tokenizer's own decoding.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "constrain.h"
#include "ops_paged.h"
#include "quiz.h"

static int count_unsure(const char *s) {
    int n = 0;
    for (const char *p = s; (p = strstr(p, "Unsure")); p++) n++;
    return n;
}

// The reply parses as the grammar promises.
static void check_reply(const char *what, int mode, int nq, const char *text) {
    if (mode == PQ_CONSTRAIN_QUIZ) {
        PqQuiz q;
        PqErr e;
        int rc = pq_quiz_parse_reply(text, &q, &e);
        CHECK(rc == 0, "%s: quiz does not parse (%s):\n%s", what, rc ? e.msg : "", text);
        if (!rc) pq_quiz_free(&q);
    } else if (mode == PQ_CONSTRAIN_ANSWERS) {
        char ans[100];
        int got = pq_answers_parse(text, nq, ans);
        CHECK(got == nq - count_unsure(text), "%s: %d letters parsed of %d:\n%s", what, got, nq - count_unsure(text),
              text);
    } else if (mode == PQ_CONSTRAIN_SUMMARY) {
        int words = pq_count_words(text), longest = 0, cur = 0;
        for (const char *p = text; *p; p++) cur = *p == ' ' ? 0 : cur + 1, longest = cur > longest ? cur : longest;
        CHECK(words >= PQ_CONSTRAIN_MIN_WORDS && longest <= PQ_CONSTRAIN_WORD_MAX && !pq_count_bad_chars(text) &&
                  text[0] != ' ' && text[strlen(text) - 1] != ' ' && !strstr(text, "  ") && !strchr(text, '\n'),
              "%s: not a summary of 5+ words: \"%s\"", what, text);
    } else {
        for (const char *p = text; *p; p++)
            CHECK((*p >= 0x20 && *p < 0x7f) || *p == '\n' || *p == '\t', "%s: byte %02x", what, (unsigned char)*p);
    }
}

// Random walks over characters with a budget of characters.
static void char_walks(int mode, int nq, int budget, int walks) {
    PqRng rng;
    pq_rng_seed(&rng, (uint64_t)(mode * 100 + nq));
    char *buf = malloc((size_t)budget + 1);
    for (int w = 0; w < walks; w++) {
        PqCState s;
        pq_cstate_init(&s, mode, nq);
        int n = 0;
        for (;;) {
            char ok[128];
            int k = 0;
            for (int c = 1; c < 127; c++) {
                PqCState t = s;
                char ch = (char)c;
                if (!pq_cstate_feed(&t, &ch, 1) && pq_cstate_min_left(&t) <= budget - n - 1) ok[k++] = ch;
            }
            ok[k] = 0;
            // end when allowed (sometimes) or when nothing else fits
            if (pq_cstate_done(&s) && (k == 0 || pq_rng_below(&rng, 8) == 0)) break;
            CHECK(k > 0, "mode %d: stuck after %d characters", mode, n);
            if (!k) break;
            char c = ok[pq_rng_below(&rng, (uint64_t)k)];
            if (w % 2 && pq_rng_below(&rng, 6) == 0 && strchr(ok, '\n')) c = '\n'; // shorter lines too
            pq_cstate_feed(&s, &c, 1);
            buf[n++] = c;
        }
        buf[n] = 0;
        CHECK(n <= budget, "over budget: %d > %d", n, budget);
        char what[64];
        snprintf(what, sizeof what, "mode %d walk %d", mode, w);
        check_reply(what, mode, nq, buf);
    }
    free(buf);
}

static void fixed_strings(void) {
    static const char quiz[] = "Q1) What happened?\nA. One\nB. Two\nC. Three\nD. Four\nE. Five\n\nQ1 Answer: C";
    PqCState s;
    pq_cstate_init(&s, PQ_CONSTRAIN_QUIZ, 1);
    CHECK(!pq_cstate_feed(&s, quiz, strlen(quiz)) && pq_cstate_done(&s), "a well-formed one-question quiz");
    const char *bad[] = {"Q2) x", "Q1)  x", "Q1) x\nB. y", "Q1) x\nA. \n", "Q1) What: this", "q1) x"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        pq_cstate_init(&s, PQ_CONSTRAIN_QUIZ, 5);
        CHECK(pq_cstate_feed(&s, bad[i], strlen(bad[i])), "accepted \"%s\"", bad[i]);
    }
    pq_cstate_init(&s, PQ_CONSTRAIN_QUIZ, 5);
    pq_cstate_feed(&s, "Q1) x\nA. y", 10);
    CHECK(!pq_cstate_done(&s), "done in the middle");
    static const char ans[] = "Q1) B\nQ2) Unsure\nQ3) E\n";
    pq_cstate_init(&s, PQ_CONSTRAIN_ANSWERS, 3);
    CHECK(!pq_cstate_feed(&s, ans, strlen(ans)) && pq_cstate_done(&s), "answers");
    pq_cstate_init(&s, PQ_CONSTRAIN_ANSWERS, 3);
    CHECK(pq_cstate_feed(&s, "Q1) F", 5), "answer F accepted");
    pq_cstate_init(&s, PQ_CONSTRAIN_ANSWERS, 3);
    CHECK(pq_cstate_min_left(&s) == 3 * 6 - 1 && !pq_cstate_done(&s), "answers min left %d", pq_cstate_min_left(&s));
    for (int m = PQ_CONSTRAIN_QUIZ; m <= PQ_CONSTRAIN_SUMMARY; m++) { // a NUL byte (a byte-level token) never fits
        static const char *const pre[] = {"", "Q1) Wh", "Q1) ", "ok", "ok"};
        pq_cstate_init(&s, m, 5);
        pq_cstate_feed(&s, pre[m], strlen(pre[m]));
        CHECK(pq_cstate_feed(&s, "\0", 1), "mode %d accepts NUL", m);
    }
    pq_cstate_init(&s, PQ_CONSTRAIN_ASCII, 0);
    CHECK(!pq_cstate_feed(&s, "ok\tfine\n", 8) && pq_cstate_feed(&s, "\xc3\xa9", 2), "ascii");
    pq_cstate_init(&s, PQ_CONSTRAIN_SUMMARY, 0);
    CHECK(pq_cstate_min_left(&s) == 9 && pq_cstate_feed(&s, " a", 2), "summary: 9 characters, no leading space");
    pq_cstate_init(&s, PQ_CONSTRAIN_SUMMARY, 0);
    CHECK(!pq_cstate_feed(&s, "a b c d e", 9) && pq_cstate_done(&s) && pq_cstate_feed(&s, "\n", 1), "summary");
    CHECK(pq_constrain_mode("summary") == PQ_CONSTRAIN_SUMMARY && pq_constrain_mode("quiz") == PQ_CONSTRAIN_QUIZ && pq_constrain_mode("answers") == PQ_CONSTRAIN_ANSWERS &&
              pq_constrain_mode("ascii") == PQ_CONSTRAIN_ASCII && pq_constrain_mode("none") == 0 &&
              pq_constrain_mode("json") == -1,
          "mode names");
}

// Token walks: random logits, masked, argmax; the decoded ids parse. At every step the grammar's bit set
// (pq_constrain_bits), applied by pq_cpu_mask_logits, masks exactly what pq_constrain_mask does.
static void token_walks(const char *path, int mode, int nq, int max_tokens, int walks) {
    PqErr e;
    PqTokenizer *tok = pq_tokenizer_load(path, &e);
    if (!tok) {
        fprintf(stderr, "FAIL %s\n", e.msg);
        n_fail++;
        return;
    }
    int V = pq_tokenizer_vocab_size(tok);
    PqTokText *tt = pq_tok_text_build(tok, V);
    int32_t eos = pq_tokenizer_token_id(tok, "</s>");
    if (eos < 0) eos = pq_tokenizer_token_id(tok, "<|endoftext|>");
    PqRng rng;
    pq_rng_seed(&rng, 99);
    float *lg = malloc((size_t)V * sizeof *lg), *lg2 = malloc((size_t)V * sizeof *lg2);
    uint32_t *bits = malloc(PQ_CONSTRAIN_WORDS(V) * sizeof *bits);
    const int32_t row0 = 0;
    int32_t *ids = malloc((size_t)(max_tokens + 1) * sizeof *ids);
    PqBuf text = {0};
    for (int w = 0; w < walks; w++) {
        PqCState s;
        pq_cstate_init(&s, mode, nq);
        int n = 0, ended = 0;
        pq_buf_clear(&text);
        while (n < max_tokens) {
            for (int v = 0; v < V; v++) lg[v] = lg2[v] = (float)pq_rng_uniform(&rng);
            int k = pq_constrain_mask(tt, &s, n == 0, max_tokens - n, &eos, 1, lg);
            // the same choice as bits, applied by the device op's CPU twin (paged generation's path)
            int kb = pq_constrain_bits(tt, &s, n == 0, max_tokens - n, &eos, 1, bits);
            pq_cpu_mask_logits(lg2, bits, &row0, 1, V);
            int diff = 0;
            for (int v = 0; v < V; v++) diff += lg2[v] != lg[v];
            CHECK(kb == k && diff == 0, "%s step %d: bits allow %d tokens, the mask %d; %d logits differ", path, n,
                  kb, k, diff);
            if (k == 0) break;
            int best = -1;
            for (int v = 0; v < V; v++)
                if (lg[v] != -INFINITY && (best < 0 || lg[v] > lg[best])) best = v;
            if (best == eos) {
                ended = 1;
                break;
            }
            const char *p = n == 0 ? tt->first[best] : tt->text[best];
            size_t l = (size_t)(n == 0 ? tt->first_len[best] : tt->len[best]);
            CHECK(!pq_cstate_feed(&s, p, l), "an allowed token does not feed");
            pq_buf_append(&text, p, l);
            ids[n++] = best;
        }
        CHECK(ended || pq_cstate_done(&s), "%s: not finished within %d tokens", path, max_tokens);
        char *dec = pq_tokenizer_decode(tok, ids, (size_t)n, 1);
        CHECK(!strcmp(dec, text.data ? text.data : ""), "%s: token texts \"%s\" != decode \"%s\"", path,
              text.data ? text.data : "", dec);
        char what[64];
        snprintf(what, sizeof what, "tokens walk %d", w);
        check_reply(what, mode, nq, dec);
        free(dec);
    }
    pq_buf_free(&text);
    free(lg);
    free(lg2);
    free(bits);
    free(ids);
    pq_tok_text_free(tt);
    pq_tokenizer_free(tok);
}

int main(void) {
    fixed_strings();
    char_walks(PQ_CONSTRAIN_QUIZ, 5, 2000, 8);
    char_walks(PQ_CONSTRAIN_QUIZ, 5, 240, 10); // budget near the minimum: texts squeezed
    char_walks(PQ_CONSTRAIN_ANSWERS, 5, 100, 30);
    char_walks(PQ_CONSTRAIN_ANSWERS, 12, 200, 10);
    char_walks(PQ_CONSTRAIN_ASCII, 0, 100, 10);
    char_walks(PQ_CONSTRAIN_SUMMARY, 0, 9, 10); // the least that fits 5 words
    char_walks(PQ_CONSTRAIN_SUMMARY, 0, 300, 10);
    // the real GPT-2 and Mistral tokenizers, in the repository
    const char *top = getenv("PQ_TOP");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/models/gpt2/tokenizer.json", top ? top : ".");
    token_walks(path, PQ_CONSTRAIN_QUIZ, 5, 300, 1);
    token_walks(path, PQ_CONSTRAIN_ANSWERS, 5, 40, 2);
    snprintf(path, sizeof path, "%s/tests/fixtures/models/mistral-7b-instruct-v0.1/tokenizer.json", top ? top : ".");
    token_walks(path, PQ_CONSTRAIN_QUIZ, 5, 300, 1);
    token_walks(path, PQ_CONSTRAIN_ANSWERS, 5, 40, 2);
    token_walks(path, PQ_CONSTRAIN_ASCII, 0, 30, 2);
    token_walks(path, PQ_CONSTRAIN_SUMMARY, 0, 12, 3);
    if (n_fail) {
        fprintf(stderr, "test-constrain: %d failures\n", n_fail);
        return 1;
    }
    printf("test-constrain: ok\n");
    return 0;
}
