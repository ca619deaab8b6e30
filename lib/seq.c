// seq.c: pair records to token sequences (prompt masked, response scored),
// and the truncation policies; pq-logp and pq-dpo both build with this code.
#include <stdlib.h>
#include <string.h>

#include "seq.h"

// ---- pair records ---------------------------------------------------------------

static int read_message(const cJSON *m, const char *what, int k, PqMessage *out, PqErr *e) {
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
    if (!cJSON_IsObject(m) || !cJSON_IsString(role) || !cJSON_IsString(content)) {
        pq_err(e, "\"%s\" message %d is not {\"role\": string, \"content\": string}", what, k + 1);
        return -1;
    }
    out->role = role->valuestring;
    out->content = content->valuestring;
    return 0;
}

// One response ("chosen" or "rejected"): a string, one assistant message
// (TRL), or the prompt turns followed by the assistant turn (method.md).
static int read_response(const cJSON *rec, const char *what, const PqPairMsgs *p, PqMessage *out, PqErr *e) {
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(rec, what);
    if (!r) {
        pq_err(e, "no \"%s\" field", what);
        return -1;
    }
    if (cJSON_IsString(r)) {
        out->role = "assistant";
        out->content = r->valuestring;
    } else if (cJSON_IsArray(r)) {
        int n = cJSON_GetArraySize(r);
        if (n != 1 && n != p->n_prompt + 1) {
            pq_err(e, "\"%s\" has %d messages: want 1 (the assistant turn) or %d (the %d prompt turns, then the "
                      "assistant turn)", what, n, p->n_prompt + 1, p->n_prompt);
            return -1;
        }
        for (int k = 0; k + 1 < n; k++) {
            PqMessage m;
            if (read_message(cJSON_GetArrayItem(r, k), what, k, &m, e)) return -1;
            if (strcmp(m.role, p->prompt[k].role) || strcmp(m.content, p->prompt[k].content)) {
                pq_err(e, "\"%s\" message %d differs from \"prompt\" message %d", what, k + 1, k + 1);
                return -1;
            }
        }
        if (read_message(cJSON_GetArrayItem(r, n - 1), what, n - 1, out, e)) return -1;
        if (strcmp(out->role, "assistant")) {
            pq_err(e, "the last \"%s\" message is not the assistant's (role \"%s\")", what, out->role);
            return -1;
        }
    } else {
        pq_err(e, "\"%s\" is neither a string nor a list of messages", what);
        return -1;
    }
    if (!out->content[0]) {
        pq_err(e, "empty \"%s\" response", what);
        return -1;
    }
    return 0;
}

int pq_pair_msgs(const cJSON *rec, PqPairMsgs *out, PqErr *e) {
    memset(out, 0, sizeof *out);
    const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(rec, "prompt");
    if (!prompt) {
        pq_err(e, "no \"prompt\" field");
        return -1;
    }
    if (cJSON_IsString(prompt)) { // one user message
        out->prompt = pq_xmalloc(sizeof *out->prompt);
        out->prompt[0] = (PqMessage){"user", prompt->valuestring};
        out->n_prompt = 1;
    } else if (cJSON_IsArray(prompt)) {
        int n = cJSON_GetArraySize(prompt);
        if (n == 0) {
            pq_err(e, "\"prompt\" has no messages");
            return -1;
        }
        out->prompt = pq_xmalloc((size_t)n * sizeof *out->prompt);
        out->n_prompt = n;
        for (int k = 0; k < n; k++)
            if (read_message(cJSON_GetArrayItem(prompt, k), "prompt", k, &out->prompt[k], e)) goto fail;
    } else {
        pq_err(e, "\"prompt\" is neither a string nor a list of messages");
        return -1;
    }
    if (read_response(rec, "chosen", out, &out->chosen, e) || read_response(rec, "rejected", out, &out->rejected, e))
        goto fail;
    return 0;
fail:
    pq_pair_msgs_free(out);
    return -1;
}

void pq_pair_msgs_free(PqPairMsgs *p) {
    free(p->prompt);
    memset(p, 0, sizeof *p);
}

// ---- sequences --------------------------------------------------------------------

// The two parts of template(prompt + response): P = encode(render(prompt,
// add_generation_prompt)), R = encode(the rest of render(prompt + response)).
static int encode_parts(const PqTokenizer *tok, const PqChat *chat, const PqMessage *prompt, int n,
                        const PqMessage *response, PqTokens *P, PqTokens *R, PqErr *e) {
    PqMessage *all = pq_xmalloc((size_t)(n + 1) * sizeof *all);
    memcpy(all, prompt, (size_t)n * sizeof *all);
    all[n] = *response;
    char *pre = pq_chat_render(chat, prompt, n, 1, e);
    char *full = pre ? pq_chat_render(chat, all, n + 1, 0, e) : NULL;
    free(all);
    int rc = -1;
    P->len = R->len = 0;
    if (pre && full) {
        size_t lp = strlen(pre);
        if (strncmp(full, pre, lp)) {
            pq_err(e, "chat template %s: the conversation with the response does not start with the prompt "
                      "rendered with add_generation_prompt, so the response cannot be told apart",
                   pq_chat_name(chat));
        } else if (!pq_tokenizer_encode(tok, pre, lp, 0, P, e) &&
                   !pq_tokenizer_encode(tok, full + lp, strlen(full + lp), 0, R, e)) {
            rc = 0;
            if (R->len == 0) {
                pq_err(e, "the response has no tokens");
                rc = -1;
            }
        }
    }
    free(pre);
    free(full);
    return rc;
}

static void seq_set(PqSeq *out, const PqTokens *P, size_t p0, size_t np, const PqTokens *R) {
    out->ids.len = 0;
    for (size_t i = 0; i < np; i++) pq_tokens_push(&out->ids, P->data[p0 + i]);
    for (size_t i = 0; i < R->len; i++) pq_tokens_push(&out->ids, R->data[i]);
    out->prompt_len = (int)np;
}

// The prompt with its longest user message cut to some length.
typedef struct Cut {
    const PqTokenizer *tok;
    const PqChat *chat;
    const PqMessage *response;
    PqMessage *m; // the prompt, m[a].content = cut
    int n, max_len;
    const char *text; // the message in full
    char *cut;
    PqTokens p, r;
} Cut;

// 1: the prompt with the message cut to L bytes fits max_len (c->p, c->r
// hold its parts); 0: it does not; -1: an error.
static int fits(Cut *c, size_t L, PqErr *e) {
    memcpy(c->cut, c->text, L);
    c->cut[L] = 0;
    if (encode_parts(c->tok, c->chat, c->m, c->n, c->response, &c->p, &c->r, e)) return -1;
    return c->p.len + c->r.len <= (size_t)c->max_len;
}

// PQ_TRUNC_ARTICLE: the longest user message cut from its end, on a
// character boundary, to the longest length found to fit by bisection.
static int truncate_article(const PqTokenizer *tok, const PqChat *chat, const PqMessage *prompt, int n,
                            const PqMessage *response, int max_len, PqTokens *P, PqTokens *R, PqErr *e) {
    int a = -1;
    size_t alen = 0;
    for (int i = 0; i < n; i++)
        if (!strcmp(prompt[i].role, "user") && (a < 0 || strlen(prompt[i].content) > alen))
            a = i, alen = strlen(prompt[i].content);
    if (a < 0) {
        pq_err(e, "too long (%zu tokens > %d) and no user message to shorten", P->len + R->len, max_len);
        return -1;
    }
    Cut c = {tok, chat, response, pq_xmalloc((size_t)n * sizeof *c.m), n, max_len, prompt[a].content,
             pq_xmalloc(alen + 1), {0}, {0}};
    memcpy(c.m, prompt, (size_t)n * sizeof *c.m);
    c.m[a].content = c.cut;
    int rc = fits(&c, 0, e);
    if (rc == 0) {
        pq_err(e, "does not fit in %d tokens even with the longest user message emptied (%zu tokens, of which %zu "
                  "are the response)", max_len, c.p.len + c.r.len, c.r.len);
        rc = -1;
    }
    size_t lo = 0, hi = alen; // lo fits, hi does not
    while (rc == 1 && hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        while (mid > lo && ((unsigned char)c.text[mid] & 0xC0) == 0x80) mid--;
        if (mid == lo) { // the next character boundary after lo
            mid = lo + 1;
            while (mid < hi && ((unsigned char)c.text[mid] & 0xC0) == 0x80) mid++;
            if (mid >= hi) break;
        }
        rc = fits(&c, mid, e);
        if (rc == 1) lo = mid;
        else if (rc == 0) hi = mid, rc = 1;
    }
    if (rc == 1 && (rc = fits(&c, lo, e)) == 1) {
        P->len = R->len = 0;
        for (size_t i = 0; i < c.p.len; i++) pq_tokens_push(P, c.p.data[i]);
        for (size_t i = 0; i < c.r.len; i++) pq_tokens_push(R, c.r.data[i]);
    } else if (rc == 0) { // cannot happen: lo was seen to fit
        pq_err(e, "truncation failed (%zu tokens > %d)", c.p.len + c.r.len, max_len);
    }
    pq_tokens_free(&c.p);
    pq_tokens_free(&c.r);
    free(c.cut);
    free(c.m);
    return rc == 1 ? 0 : -1;
}

int pq_trunc_parse(const char *name) {
    if (!strcmp(name, "article")) return PQ_TRUNC_ARTICLE;
    if (!strcmp(name, "keep_start")) return PQ_TRUNC_KEEP_START;
    if (!strcmp(name, "keep_end")) return PQ_TRUNC_KEEP_END;
    return -1;
}

int pq_seq_build(const PqTokenizer *tok, const PqChat *chat, const PqMessage *prompt, int n_prompt,
                 const PqMessage *response, int max_len, int policy, PqSeq *out, PqErr *e) {
    memset(out, 0, sizeof *out);
    PqTokens P = {0}, R = {0};
    int rc = -1;
    if (encode_parts(tok, chat, prompt, n_prompt, response, &P, &R, e)) goto done;
    if (max_len <= 0 || P.len + R.len <= (size_t)max_len) {
        seq_set(out, &P, 0, P.len, &R);
        rc = 0;
        goto done;
    }
    // the response is never cut, and at least one prompt token must stay
    if (R.len + 1 > (size_t)max_len) {
        pq_err(e, "the response alone takes %zu tokens (with its end of turn); --max-length is %d", R.len, max_len);
        goto done;
    }
    size_t keep = (size_t)max_len - R.len;
    switch (policy) {
    case PQ_TRUNC_KEEP_START: seq_set(out, &P, 0, keep, &R); break;
    case PQ_TRUNC_KEEP_END: seq_set(out, &P, P.len - keep, keep, &R); break;
    case PQ_TRUNC_ARTICLE:
        if (truncate_article(tok, chat, prompt, n_prompt, response, max_len, &P, &R, e)) goto done;
        seq_set(out, &P, 0, P.len, &R);
        break;
    default: pq_err(e, "unknown truncation policy %d", policy); goto done;
    }
    out->truncated = 1;
    rc = 0;
done:
    if (rc) pq_tokens_free(&out->ids);
    pq_tokens_free(&P);
    pq_tokens_free(&R);
    return rc;
}

void pq_seq_free(PqSeq *s) {
    pq_tokens_free(&s->ids);
    memset(s, 0, sizeof *s);
}
