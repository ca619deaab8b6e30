// pq-logp: reference log-probabilities of pair records (method.md §5): the
// summed log-probs of the chosen and rejected responses under a model.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dist.h"
#include "logp.h"
#include "model.h"
#include "seq.h"
#include "tool.h"

static const char usage[] =
    "usage: pq-logp --model DIR [options] [pairs.jsonl ...]\n"
    "Adds ref_chosen_logp, ref_rejected_logp, chosen_tokens, rejected_tokens to each pair record:\n"
    "the summed log-probs of each response's tokens given the prompt under the chat template.\n"
    "  -m, --model DIR         Hugging Face model directory (config.json, safetensors, tokenizer)\n"
    "      --adapter DIR       apply a PEFT LoRA adapter\n"
    "      --chat-template NAME|FILE  a named template of tokenizer_config.json, a .jinja file,\n"
    "                          or mistral, llama-2, chatml, llama-3, zephyr (default: the model's)\n"
    "      --chat-var NAME=JSON  a chat-template variable (enable_thinking=false), repeatable\n"
    "      --date YYYY-MM-DD   the date the template's strftime_now gives (default $PQ_DATE)\n"
    "      --max-length N      tokens per sequence (default 4096); longer prompts are truncated\n"
    "      --truncate POLICY   article (default: shorten the longest user message), keep_start, keep_end\n"
    "  -b, --batch-tokens N    tokens per forward pass (default 4096)\n"
    "      --batch N           at most N records per forward pass (default: as many as fit)\n"
    "  -t, --threads N         threads (default: all cores)\n"
    "      --device DEV        cuda:N (CUDA build: GPU N, default cuda:0) or cpu\n"
    "      --per-token         also chosen_token_logps and rejected_token_logps arrays\n"
    "      --raw               records hold \"ids\" (token ids) and \"prompt_len\" instead of a pair;\n"
    "                          adds \"logp\" and \"tokens\" (and \"token_logps\")\n";

enum { OPT_ADAPTER = PQ_OPT_TOOL_BASE, OPT_TEMPLATE, OPT_MAXLEN, OPT_TRUNC, OPT_BATCH, OPT_PER_TOKEN, OPT_RAW, OPT_DEVICE,
       OPT_CHAT_VAR, OPT_DATE };

// A record waiting for its batch: its JSON, its line (for rejects) and its
// sequences (chosen, rejected; or one in --raw mode).
typedef struct Rec {
    cJSON *obj;
    long lineno;
    int n;
    PqSeq seq[2];
    PqLogpSeq lp[2];
} Rec;

static PqTool T;
static const PqModel *M;
static int per_token, raw, batch_tokens = 4096;
static long long n_tokens; // scored sequence tokens

static cJSON *float_array(const float *v, int n) {
    cJSON *a = cJSON_CreateArray();
    char buf[32];
    for (int i = 0; i < n; i++) {
        snprintf(buf, sizeof buf, "%.9g", v[i]);
        cJSON_AddItemToArray(a, cJSON_CreateRaw(buf));
    }
    return a;
}

// Scores the pending records and writes them, in input order.
static void flush(Rec *recs, int n) {
    if (!n) return;
    int ns = 0;
    for (int r = 0; r < n; r++) ns += recs[r].n;
    PqLogpSeq *s = pq_xcalloc((size_t)ns, sizeof *s);
    int k = 0;
    for (int r = 0; r < n; r++)
        for (int j = 0; j < recs[r].n; j++) {
            s[k] = recs[r].lp[j];
            if (per_token) s[k].token_logp = pq_xmalloc((size_t)(s[k].len - s[k].prompt_len) * sizeof(float));
            k++;
        }
    PqErr e;
    if (pq_logp_seqs(M, s, ns, batch_tokens, &e)) pq_tool_die(&T, "%s", e.msg);
    k = 0;
    for (int r = 0; r < n; r++) {
        Rec *R = &recs[r];
        for (int j = 0; j < R->n && !T.fatal; j++)
            if (!isfinite(s[k + j].sum)) { // a broken model: every line would be the same; nothing after it is written
                PqBuf id = {0};
                pq_sanitize(&id, pq_json_id(R->obj));
                fprintf(stderr, "%s: line %ld (id %s): the %s log-prob is not finite: NaN or inf in the model%s; stopping\n",
                        T.name, R->lineno, id.data, raw ? "sequence's" : j ? "rejected" : "chosen",
                        M->lora ? " or adapter weights" : "'s weights");
                pq_buf_free(&id);
                T.fatal = 1;
            }
        if (T.fatal) {
            for (int j = 0; j < R->n; j++, k++) free(s[k].token_logp);
            cJSON_Delete(R->obj);
            for (int j = 0; j < R->n; j++) pq_seq_free(&R->seq[j]);
            continue;
        }
        if (raw) {
            pq_json_add_float(R->obj, "logp", s[k].sum);
            pq_json_set(R->obj, "tokens", cJSON_CreateNumber(s[k].count));
            if (per_token) pq_json_set(R->obj, "token_logps", float_array(s[k].token_logp, s[k].count));
        } else {
            pq_json_add_float(R->obj, "ref_chosen_logp", s[k].sum);
            pq_json_add_float(R->obj, "ref_rejected_logp", s[k + 1].sum);
            pq_json_set(R->obj, "chosen_tokens", cJSON_CreateNumber(s[k].count));
            pq_json_set(R->obj, "rejected_tokens", cJSON_CreateNumber(s[k + 1].count));
            if (per_token) {
                pq_json_set(R->obj, "chosen_token_logps", float_array(s[k].token_logp, s[k].count));
                pq_json_set(R->obj, "rejected_token_logps", float_array(s[k + 1].token_logp, s[k + 1].count));
            }
        }
        for (int j = 0; j < R->n; j++, k++) free(s[k].token_logp);
        pq_tool_emit(&T, R->obj);
        T.n_done++;
        n_tokens += R->lp[0].len + (R->n > 1 ? R->lp[1].len : 0);
        cJSON_Delete(R->obj);
        for (int j = 0; j < R->n; j++) pq_seq_free(&R->seq[j]);
    }
    free(s);
    pq_tool_progress(&T, 0);
}

// --raw: ids + prompt_len into rec; 0 or -1 with the reason.
static int raw_rec(const cJSON *obj, Rec *rec, int max_len, PqErr *e) {
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(obj, "ids");
    double pl;
    if (!cJSON_IsArray(ids) || !pq_json_num(obj, "prompt_len", &pl)) {
        pq_err(e, "--raw records need \"ids\" (an array) and \"prompt_len\"");
        return -1;
    }
    int n = cJSON_GetArraySize(ids);
    if (pl < 1 || pl >= n || pl != (int)pl) {
        pq_err(e, "prompt_len %g leaves no response among %d ids", pl, n);
        return -1;
    }
    if (n > max_len) {
        pq_err(e, "%d ids exceed --max-length %d", n, max_len);
        return -1;
    }
    PqSeq *s = &rec->seq[0];
    const cJSON *it;
    cJSON_ArrayForEach(it, ids) {
        if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble >= M->cfg.V ||
            it->valuedouble != (int)it->valuedouble) {
            pq_err(e, "ids: not a token id of this model (vocab %d)", M->cfg.V);
            return -1;
        }
        pq_tokens_push(&s->ids, (int32_t)it->valuedouble);
    }
    s->prompt_len = (int)pl;
    rec->n = 1;
    return 0;
}

int main(int argc, char **argv) {
    static const struct option longopts[] = {PQ_TOOL_LONGOPTS,
                                             {"model", required_argument, 0, 'm'},
                                             {"adapter", required_argument, 0, OPT_ADAPTER},
                                             {"chat-template", required_argument, 0, OPT_TEMPLATE},
                                             {"max-length", required_argument, 0, OPT_MAXLEN},
                                             {"truncate", required_argument, 0, OPT_TRUNC},
                                             {"batch-tokens", required_argument, 0, 'b'},
                                             {"batch", required_argument, 0, OPT_BATCH},
                                             {"threads", required_argument, 0, 't'},
                                             {"per-token", no_argument, 0, OPT_PER_TOKEN},
                                             {"raw", no_argument, 0, OPT_RAW},
                                             {"device", required_argument, 0, OPT_DEVICE},
                                             {"chat-var", required_argument, 0, OPT_CHAT_VAR},
                                             {"date", required_argument, 0, OPT_DATE},
                                             {0, 0, 0, 0}};
    const char *model_dir = NULL, *adapter_dir = NULL, *template_name = NULL, *device = NULL, *date = NULL;
    const char *chat_vars[PQ_CHAT_MAX_VARS];
    int n_chat_vars = 0;
    int max_len = 4096, policy = PQ_TRUNC_ARTICLE, batch_recs = 0, threads = 0;
    pq_tool_init(&T, "pq-logp", usage);
    int opt;
    while ((opt = getopt_long(argc, argv, "hm:b:t:", longopts, NULL)) != -1) {
        if (pq_tool_option(&T, opt, optarg)) continue;
        char *end;
        long v;
        switch (opt) {
        case 'm': model_dir = optarg; break;
        case OPT_ADAPTER: adapter_dir = optarg; break;
        case OPT_TEMPLATE: template_name = optarg; break;
        case OPT_CHAT_VAR:
            if (n_chat_vars == PQ_CHAT_MAX_VARS) pq_tool_usage_error(&T, "at most %d --chat-var", PQ_CHAT_MAX_VARS);
            chat_vars[n_chat_vars++] = optarg;
            break;
        case OPT_DATE: date = optarg; break;
        case OPT_PER_TOKEN: per_token = 1; break;
        case OPT_RAW: raw = 1; break;
        case OPT_DEVICE: device = optarg; break;
        case OPT_TRUNC:
            if ((policy = pq_trunc_parse(optarg)) < 0)
                pq_tool_usage_error(&T, "--truncate: article, keep_start or keep_end, not '%s'", optarg);
            break;
        case OPT_MAXLEN:
        case 'b':
        case OPT_BATCH:
        case 't':
            v = strtol(optarg, &end, 10);
            if (*end || end == optarg || v < 1 || v > (1 << 24))
                pq_tool_usage_error(&T, "%s: expected a positive integer, not '%s'",
                                    opt == OPT_MAXLEN ? "--max-length" : opt == 'b' ? "--batch-tokens"
                                                                     : opt == 't' ? "--threads" : "--batch",
                                    optarg);
            if (opt == OPT_MAXLEN) max_len = (int)v;
            else if (opt == 'b') batch_tokens = (int)v;
            else if (opt == 't') threads = (int)v;
            else batch_recs = (int)v;
            break;
        default: pq_tool_usage_error(&T, "bad option");
        }
    }
    if (!model_dir) pq_tool_usage_error(&T, "--model DIR is required");
    pq_tool_open(&T, argc, argv, optind);
    pq_ops_set_threads(threads);

    PqErr e;
    if (device && pq_device_select(device, &e)) pq_tool_die(&T, "%s", e.msg);
    PqModel *model = pq_model_load(model_dir, &e);
    if (!model) pq_tool_die(&T, "%s", e.msg);
    char aerr[256];
    if (pq_ops_act_choose(model->cfg.dtype, aerr, sizeof aerr) < 0) pq_tool_usage_error(&T, "%s", aerr);
    M = model;
    PqLora *lora = NULL;
    if (adapter_dir) {
        if (!(lora = pq_lora_load(adapter_dir, model, &e))) pq_tool_die(&T, "%s", e.msg);
        model->lora = lora;
    }
    PqTokenizer *tok = NULL;
    PqChat *chat = NULL;
    if (!raw) {
        if (!(tok = pq_tokenizer_load_dir(model_dir, &e))) pq_tool_die(&T, "%s", e.msg);
        if (!(chat = pq_chat_load(model_dir, template_name, &e))) pq_tool_die(&T, "%s", e.msg);
        if (pq_chat_configure(chat, chat_vars, n_chat_vars, date, &e)) pq_tool_usage_error(&T, "%s", e.msg);
        if (pq_tokenizer_vocab_size(tok) > model->cfg.V)
            pq_tool_die(&T, "%s: the tokenizer has %d tokens, the model's vocab_size is %d", model_dir,
                        pq_tokenizer_vocab_size(tok), model->cfg.V);
    }

    int cap = 64, n = 0, pending_tokens = 0;
    Rec *recs = pq_xcalloc((size_t)cap, sizeof *recs);
    PqBuf key = {0};
    while (!T.fatal && pq_tool_next(&T)) {
        cJSON *obj = pq_tool_parse(&T);
        if (!obj) continue;
        pq_record_key(obj, &key);
        if (T.done && pq_tool_is_done(&T, key.data)) {
            T.n_skipped++;
            cJSON_Delete(obj);
            continue;
        }
        Rec rec = {0};
        rec.obj = obj;
        rec.lineno = T.line.lineno;
        int bad = 0;
        if (raw) bad = raw_rec(obj, &rec, max_len, &e);
        else {
            PqPairMsgs pm;
            if (pq_pair_msgs(obj, &pm, &e)) bad = 1;
            else {
                const PqMessage *resp[2] = {&pm.chosen, &pm.rejected};
                for (int j = 0; j < 2 && !bad; j++) {
                    if (!resp[j]->content || !*resp[j]->content) {
                        pq_err(&e, "empty %s response", j ? "rejected" : "chosen");
                        bad = 1;
                    } else if (pq_seq_build(tok, chat, pm.prompt, pm.n_prompt, resp[j], max_len, policy, &rec.seq[j],
                                            &e)) {
                        char msg[sizeof e.msg];
                        snprintf(msg, sizeof msg, "%s", e.msg);
                        pq_err(&e, "%s: %s", j ? "rejected" : "chosen", msg);
                        bad = 1;
                    } else {
                        rec.n = j + 1;
                        if (rec.seq[j].prompt_len < 1 || rec.seq[j].prompt_len >= (int)rec.seq[j].ids.len) {
                            pq_err(&e, "%s: no response tokens after the prompt", j ? "rejected" : "chosen");
                            bad = 1;
                        }
                    }
                }
                pq_pair_msgs_free(&pm);
            }
        }
        if (bad) {
            pq_tool_reject(&T, &T.line, pq_json_id(obj), "%s", e.msg);
            for (int j = 0; j < 2; j++) pq_seq_free(&rec.seq[j]);
            cJSON_Delete(obj);
            continue;
        }
        int tokens = 0;
        for (int j = 0; j < rec.n; j++) {
            rec.lp[j].ids = rec.seq[j].ids.data;
            rec.lp[j].len = (int)rec.seq[j].ids.len;
            rec.lp[j].prompt_len = rec.seq[j].prompt_len;
            tokens += rec.lp[j].len;
        }
        if (n > 0 && (pending_tokens + tokens > batch_tokens || (batch_recs && n >= batch_recs))) {
            flush(recs, n);
            n = pending_tokens = 0;
        }
        if (n == cap) recs = pq_xrealloc(recs, (size_t)(cap *= 2) * sizeof *recs);
        recs[n++] = rec;
        pending_tokens += tokens;
    }
    if (!pq_interrupted && !T.fatal) flush(recs, n);
    else
        for (int r = 0; r < n; r++) {
            cJSON_Delete(recs[r].obj);
            for (int j = 0; j < recs[r].n; j++) pq_seq_free(&recs[r].seq[j]);
        }
    double dt = pq_now() - T.t0;
    snprintf(T.summary_extra, sizeof T.summary_extra, "%lld tokens, %.0f tokens/s", n_tokens, dt > 0 ? n_tokens / dt : 0.0);
    free(recs);
    pq_buf_free(&key);
    pq_chat_free(chat);
    pq_tokenizer_free(tok);
    pq_lora_free(lora);
    pq_model_free(model);
    return pq_tool_finish(&T);
}
