// pq-tokenize: a model's tokenizer.json as a filter: adds the "ids" of each
// record's text (identical to Hugging Face tokenizers), or decodes them.
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "chat.h"
#include "tokenizer.h"
#include "tool.h"

static const char usage[] =
    "usage: pq-tokenize --model DIR [options] [input.jsonl ...] > output.jsonl\n"
    "Encodes the \"text\" of each record with DIR/tokenizer.json and adds \"ids\" and\n"
    "\"n_tokens\"; other fields pass through. Special tokens written in the text (\"<s>\",\n"
    "\"<|im_end|>\") become their ids, as in Hugging Face tokenizers; invalid UTF-8 is\n"
    "read as U+FFFD first.\n"
    "Options:\n"
    "  -m, --model DIR     model directory (or a tokenizer.json file)\n"
    "      --field NAME    the text field (default \"text\")\n"
    "      --add-special   also the special tokens the tokenizer adds around a text (BOS...)\n"
    "      --decode        the other way: decode \"ids\" into the text field\n"
    "      --skip-special  with --decode, leave special tokens out\n"
    "      --raw           plain text: each input line is one text, each output line its ids\n"
    "                      separated by spaces (with --decode, lines of ids in, text out)\n"
    "      --chat          render each record's \"messages\" with the model's chat template into\n"
    "                      the text field first (what the model sees), then encode it\n"
    "      --add-generation-prompt  with --chat, end with the assistant's header\n"
    "      --chat-template NAME|FILE  a named template of tokenizer_config.json, a .jinja\n"
    "                      file, or mistral, llama-2, chatml, llama-3, zephyr\n"
    "      --chat-var NAME=JSON  a template variable (enable_thinking=false), repeatable\n"
    "      --date YYYY-MM-DD  the date strftime_now gives (default: PQ_DATE, else today)\n";

enum { OPT_FIELD = PQ_OPT_TOOL_BASE, OPT_ADD_SPECIAL, OPT_DECODE, OPT_SKIP_SPECIAL, OPT_RAW, OPT_CHAT, OPT_AGP,
       OPT_TEMPLATE, OPT_CHAT_VAR, OPT_DATE };

typedef struct Opts {
    const char *field;
    int add_special, decode, skip_special, add_generation_prompt;
    PqChat *chat; // --chat
} Opts;

// Parses "ids" (a JSON array or, raw, space-separated integers); 0 and a
// reason on a bad one.
static int ids_from_json(const cJSON *a, int vocab, PqTokens *out, const char **why) {
    const cJSON *x;
    if (!cJSON_IsArray(a)) return *why = "no \"ids\" list", 0;
    cJSON_ArrayForEach(x, a) {
        if (!cJSON_IsNumber(x) || x->valuedouble != (int32_t)x->valuedouble) return *why = "an id is not an integer", 0;
        if (x->valuedouble < 0 || x->valuedouble >= vocab) return *why = "an id is out of the vocabulary", 0;
        pq_tokens_push(out, (int32_t)x->valuedouble);
    }
    return 1;
}

static int ids_from_text(const char *s, int vocab, PqTokens *out, const char **why) {
    char *end;
    for (;;) {
        while (*s == ' ' || *s == '\t') s++;
        if (!*s) return 1;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || (*end && *end != ' ' && *end != '\t')) return *why = "not a list of integer ids", 0;
        if (v < 0 || v >= vocab) return *why = "an id is out of the vocabulary", 0;
        pq_tokens_push(out, (int32_t)v);
        s = end;
    }
}

// --raw: one text (or one line of ids) per line, blank lines included.
static void run_raw(PqTool *t, const PqTokenizer *tok, const Opts *o) {
    PqBuf out = {0};
    PqTokens ids = {0};
    PqErr e;
    char *line = NULL;
    size_t cap = 0;
    for (int f = 0; f < t->n_inputs && !pq_interrupted; f++) {
        const char *path = t->inputs[f];
        FILE *in = strcmp(path, "-") ? fopen(path, "rb") : stdin;
        if (!in) pq_tool_die(t, "%s: %s", path, strerror(errno));
        ssize_t n;
        long lineno = 0;
        while (!pq_interrupted && (n = getline(&line, &cap, in)) >= 0) {
            lineno++;
            t->n_read++;
            if (n > 0 && line[n - 1] == '\n') line[--n] = 0;
            if (n > 0 && line[n - 1] == '\r') line[--n] = 0;
            ids.len = 0;
            pq_buf_clear(&out);
            const char *why;
            if (o->decode) {
                if (!ids_from_text(line, pq_tokenizer_vocab_size(tok), &ids, &why)) {
                    pq_tool_reject_text(t, path, lineno, line, (size_t)n, NULL, why);
                    continue;
                }
                char *s = pq_tokenizer_decode(tok, ids.data, ids.len, o->skip_special);
                pq_buf_puts(&out, s);
                free(s);
            } else {
                if (pq_tokenizer_encode(tok, line, (size_t)n, o->add_special, &ids, &e)) {
                    pq_tool_reject_text(t, path, lineno, line, (size_t)n, NULL, e.msg);
                    continue;
                }
                for (size_t i = 0; i < ids.len; i++) pq_buf_printf(&out, i ? " %d" : "%d", ids.data[i]);
            }
            pq_tool_emit_text(t, out.data ? out.data : "");
            t->n_done++;
            pq_tool_progress(t, 0);
        }
        if (ferror(in)) pq_tool_die(t, "%s: read error", path);
        if (in != stdin) fclose(in);
    }
    free(line);
    pq_buf_free(&out);
    pq_tokens_free(&ids);
}

static void run_jsonl(PqTool *t, const PqTokenizer *tok, const Opts *o) {
    PqBuf key = {0};
    PqTokens ids = {0};
    PqErr e;
    while (pq_tool_next(t)) {
        cJSON *obj = pq_tool_parse(t);
        if (!obj) continue;
        const char *id = pq_json_id(obj);
        pq_record_key(obj, &key);
        ids.len = 0;
        const char *why = NULL;
        if (pq_tool_is_done(t, key.data)) {
            t->n_skipped++;
        } else if (o->decode) {
            if (!ids_from_json(cJSON_GetObjectItemCaseSensitive(obj, "ids"), pq_tokenizer_vocab_size(tok), &ids, &why)) {
                pq_tool_reject(t, &t->line, id, "%s", why);
            } else {
                char *s = pq_tokenizer_decode(tok, ids.data, ids.len, o->skip_special);
                pq_json_set(obj, o->field, cJSON_CreateString(s));
                free(s);
                pq_tool_emit(t, obj);
                t->n_done++;
            }
        } else {
            const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(obj, "messages");
            char *rendered = NULL;
            if (o->chat && !cJSON_IsArray(msgs)) {
                why = "no \"messages\" list";
            } else if (o->chat && !(rendered = pq_chat_render_json(o->chat, msgs, o->add_generation_prompt, &e))) {
                why = e.msg;
            } else if (o->chat) {
                pq_json_set(obj, o->field, cJSON_CreateString(rendered));
                free(rendered);
            }
            const cJSON *text = cJSON_GetObjectItemCaseSensitive(obj, o->field);
            if (why) {
                pq_tool_reject(t, &t->line, id, "%s", why);
            } else if (!cJSON_IsString(text)) {
                pq_tool_reject(t, &t->line, id, "no \"%s\" string", o->field);
            } else if (pq_tokenizer_encode(tok, text->valuestring, strlen(text->valuestring), o->add_special, &ids,
                                           &e)) {
                pq_tool_reject(t, &t->line, id, "%s", e.msg);
            } else {
                cJSON *a = cJSON_CreateArray();
                for (size_t i = 0; i < ids.len; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(ids.data[i]));
                pq_json_set(obj, "ids", a);
                pq_json_set(obj, "n_tokens", cJSON_CreateNumber((double)ids.len));
                pq_tool_emit(t, obj);
                t->n_done++;
            }
        }
        cJSON_Delete(obj);
        pq_tool_progress(t, 0);
    }
    pq_buf_free(&key);
    pq_tokens_free(&ids);
}

int main(int argc, char **argv) {
    PqTool t;
    Opts o = {"text", 0, 0, 0, 0, NULL};
    const char *model = NULL, *template_name = NULL, *date = NULL, *vars[64];
    int raw = 0, chat = 0, n_vars = 0;
    pq_tool_init(&t, "pq-tokenize", usage);
    static const struct option longopts[] = {
        PQ_TOOL_LONGOPTS,
        {"model", required_argument, 0, 'm'},
        {"field", required_argument, 0, OPT_FIELD},
        {"add-special", no_argument, 0, OPT_ADD_SPECIAL},
        {"decode", no_argument, 0, OPT_DECODE},
        {"skip-special", no_argument, 0, OPT_SKIP_SPECIAL},
        {"raw", no_argument, 0, OPT_RAW},
        {"chat", no_argument, 0, OPT_CHAT},
        {"add-generation-prompt", no_argument, 0, OPT_AGP},
        {"chat-template", required_argument, 0, OPT_TEMPLATE},
        {"chat-var", required_argument, 0, OPT_CHAT_VAR},
        {"date", required_argument, 0, OPT_DATE},
        {0, 0, 0, 0},
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "hm:", longopts, NULL)) != -1) {
        if (pq_tool_option(&t, opt, optarg)) continue;
        switch (opt) {
        case 'm': model = optarg; break;
        case OPT_FIELD: o.field = optarg; break;
        case OPT_ADD_SPECIAL: o.add_special = 1; break;
        case OPT_DECODE: o.decode = 1; break;
        case OPT_SKIP_SPECIAL: o.skip_special = 1; break;
        case OPT_RAW: raw = 1; break;
        case OPT_CHAT: chat = 1; break;
        case OPT_AGP: o.add_generation_prompt = 1; break;
        case OPT_TEMPLATE: template_name = optarg; break;
        case OPT_CHAT_VAR:
            if (n_vars == 64) pq_tool_usage_error(&t, "at most 64 --chat-var");
            vars[n_vars++] = optarg;
            break;
        case OPT_DATE: date = optarg; break;
        default: pq_tool_usage_error(&t, "bad option");
        }
    }
    if (!model) pq_tool_usage_error(&t, "--model DIR is required");
    if (o.skip_special && !o.decode) pq_tool_usage_error(&t, "--skip-special goes with --decode");
    if (o.add_special && o.decode) pq_tool_usage_error(&t, "--add-special goes with encoding, not --decode");
    if (raw && t.resume_path) pq_tool_usage_error(&t, "--resume needs JSONL records (not --raw)");
    if (!chat && (o.add_generation_prompt || template_name || n_vars || date))
        pq_tool_usage_error(&t, "--add-generation-prompt, --chat-template, --chat-var and --date go with --chat");
    if (chat && (raw || o.decode)) pq_tool_usage_error(&t, "--chat renders JSONL records' messages (not --raw or --decode)");
    PqBuf path = {0};
    struct stat st;
    int is_dir = stat(model, &st) == 0 && S_ISDIR(st.st_mode);
    if (is_dir) pq_buf_printf(&path, "%s/tokenizer.json", model);
    else pq_buf_puts(&path, model);
    PqErr e;
    PqTokenizer *tok = pq_tokenizer_load(path.data, &e);
    pq_buf_free(&path);
    if (!tok) pq_tool_die(&t, "%s", e.msg);
    if (chat) {
        if (!is_dir) pq_tool_die(&t, "--chat needs a model directory (for tokenizer_config.json)");
        if (!(o.chat = pq_chat_load(model, template_name, &e))) pq_tool_die(&t, "%s", e.msg);
        for (int i = 0; i < n_vars; i++)
            if (pq_chat_set_var(o.chat, vars[i], &e)) pq_tool_usage_error(&t, "%s", e.msg);
        if (date && pq_chat_set_date(o.chat, date, &e)) pq_tool_usage_error(&t, "%s", e.msg);
    }
    pq_tool_open(&t, argc, argv, optind);
    if (raw) run_raw(&t, tok, &o);
    else run_jsonl(&t, tok, &o);
    pq_tokenizer_free(tok);
    pq_chat_free(o.chat);
    return pq_tool_finish(&t);
}
