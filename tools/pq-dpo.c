// pq-dpo: LoRA DPO training (method.md §5) of a model on pair records that
// carry reference log-probs (pq-logp's output), streamed: the first epoch
// trains as records arrive; one JSONL metrics line per optimizer step.
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dist.h"
#include "dpo.h"
#include "launch.h"
#include "lora.h"
#include "model.h"
#include "optim.h"
#include "seq.h"
#include "tool.h"
#include "train.h"

static const char usage[] =
    "usage: pq-dpo --model DIR [options] [pairs-with-ref-logps.jsonl ...]\n"
    "Trains a LoRA adapter with DPO on pair records holding ref_chosen_logp and ref_rejected_logp\n"
    "(pq-logp's output); writes one JSON line of metrics per optimizer step.\n"
    "  -m, --model DIR           Hugging Face model directory (the policy's base)\n"
    "  -o, --out DIR             write the PEFT adapter here (at the end and every --save-every steps);\n"
    "                            an existing adapter is replaced only with --overwrite (or when it is --resume's)\n"
    "      --overwrite           replace the adapter already in --out DIR\n"
    "      --no-save             train without saving an adapter (metrics only; instead of --out)\n"
    "      --resume DIR          continue the training saved in DIR (adapter, optimizer, step, data position)\n"
    "      --adapter DIR         start from this PEFT adapter instead of a fresh one\n"
    "      --loss NAME           sigmoid (default), ipo, hinge\n"
    "      --beta X              0.1\n"
    "      --label-smoothing X   cDPO's e (sigmoid loss), 0\n"
    "      --sft-weight X        add X times the chosen response's NLL (mean per token), 0\n"
    "      --sft-sum             the NLL summed over the chosen tokens instead of their mean\n"
    "      --reference-free      no reference log-probs (ref = 0)\n"
    "      --lora-r N            8\n"
    "      --lora-alpha X        16\n"
    "      --lora-dropout X      0.05 (on the adapter's input, as PEFT)\n"
    "      --lora-targets LIST   q,k,v,o,gate,up,down\n"
    "      --lr X                peak learning rate, 5e-6\n"
    "      --adam-beta1 X        0.9;  --adam-beta2 X  0.999;  --adam-eps X  1e-8\n"
    "      --weight-decay X      0\n"
    "      --warmup-steps N      0;  --warmup-ratio X  0 (fraction of the total steps)\n"
    "      --lr-schedule NAME    linear (default), cosine, constant\n"
    "      --max-grad-norm X     clip gradients by global norm, 1.0 (0: no clipping)\n"
    "      --batch-size N        pairs per optimizer step, 2\n"
    "      --micro-batch N       pairs per forward/backward (gradient accumulation), 1\n"
    "      --epochs N            1\n"
    "      --max-steps N         total optimizer steps (overrides --epochs for the schedule)\n"
    "      --train-pairs N       number of training pairs, for the schedule when the input is a pipe\n"
    "      --stop-after N        stop (and save) after optimizer step N, as if interrupted\n"
    "      --save-every N        save the adapter every N steps (with --out)\n"
    "      --valid FILE          held-out pairs (with their own ref logps), evaluated before training,\n"
    "                            every --eval-every N steps and at the end (\"split\":\"valid\" lines)\n"
    "      --checkpoint WHEN     activation checkpointing: auto (default: every layer's activations kept\n"
    "                            when they fit in free device memory, or RAM on the CPU), on, off\n"
    "      --no-share-prompt     run each pair's common prompt through the model twice, not once\n"
    "      --chat-template NAME|FILE  a named template of tokenizer_config.json, a .jinja file,\n"
    "                            or mistral, llama-2, chatml, llama-3, zephyr (default: the model's)\n"
    "      --chat-var NAME=JSON  a chat-template variable (enable_thinking=false), repeatable\n"
    "      --date YYYY-MM-DD     the date the template's strftime_now gives (default $PQ_DATE)\n"
    "      --max-length N        tokens per sequence (default 4096), as pq-logp's\n"
    "      --truncate POLICY     article (default), keep_start, keep_end, as pq-logp's\n"
    "      --raw                 records hold token ids: \"chosen_ids\", \"rejected_ids\" and \"prompt_len\"\n"
    "                            (or \"chosen_prompt_len\", \"rejected_prompt_len\"), as pq-logp --raw\n"
    "  -t, --threads N           threads (default: all cores)\n"
    "      --device DEV          cuda:N (CUDA build; default cuda:0, or LOCAL_RANK's GPU) or cpu\n"
    "      --devices LIST        data-parallel on this host, one process per entry: GPUs (0,1,2) or,\n"
    "                            in the CPU build, cpu,cpu,...; the input is streamed to every one\n"
    "Several hosts: one process per GPU with RANK/WORLD_SIZE (or Slurm's, Open MPI's) and MASTER_ADDR/PORT\n"
    "set; gradients and metrics are summed over them (NCCL; TCP through rank 0 in the CPU build).\n";

enum {
    O_OUT = PQ_OPT_TOOL_BASE, O_ADAPTER, O_LOSS, O_BETA, O_LS, O_SFT, O_SFT_SUM, O_REFFREE, O_R, O_ALPHA, O_DROP,
    O_TARGETS, O_LR, O_B1, O_B2, O_EPS, O_WD, O_WSTEPS, O_WRATIO, O_SCHED, O_CLIP, O_BATCH, O_MICRO, O_EPOCHS,
    O_MAXSTEPS, O_TRAINPAIRS, O_STOPAFTER, O_SAVEEVERY, O_VALID, O_EVALEVERY, O_CKPT, O_NOCKPT, O_CKPTWHEN,
    O_TEMPLATE, O_CHAT_VAR, O_DATE, O_MAXLEN, O_TRUNC, O_RAW, O_DUMPGRADS, O_NOSHARE, O_DEVICE, O_DEVICES, O_OVERWRITE,
    O_NOSAVE
};

static PqTool T;

// Options.
static const char *device, *devices, *dump_grads, *model_dir, *out_dir, *resume_dir, *adapter_dir, *valid_path, *template_name;
static const char *chat_vars[PQ_CHAT_MAX_VARS], *chat_date;
static int n_chat_vars;
static PqDpoCfg dcfg = {PQ_LOSS_SIGMOID, 0.1, 0, 0, 0};
static int overwrite, no_save;
static int share_prompt = 1, raw, reference_free, lora_r = 8, checkpoint = PQ_CKPT_AUTO, sched = PQ_SCHED_LINEAR, batch = 2, micro = 1, epochs = 1;
static double lora_alpha = 16, lora_dropout = 0.05, lr = 5e-6, beta1 = 0.9, beta2 = 0.999, adam_eps = 1e-8, wd = 0,
              warmup_ratio = 0, max_grad_norm = 1.0;
static long warmup_steps = -1, max_steps = 0, train_pairs = 0, stop_after = 0, save_every = 0, eval_every = 0;
static int max_len = 4096, policy = PQ_TRUNC_ARTICLE;
static unsigned targets = (1u << PQ_NLIN) - 1;

// State.
static PqModel *M;
static PqTokenizer *tok;
static PqChat *chat;
static PqLora *lora;
static PqTrainer *tr;
static PqAdamW opt; // moments in backend memory: steps lora->params with tr->grads where they live
// Data parallelism: rank r of world trains on the pairs j of each batch with
// j % world == r; gradients and metrics are summed over the ranks (NCCL, or
// lib/dist_cpu.c), so every rank steps identically and rank 0 alone writes.
static PqDist dist;
static int dist_stopped; // the ranks agreed to stop (see go_on)
static PqTrainPair *recs, *valid;
static long n_recs, cap_recs, n_valid;
static long step, epoch, pos; // optimizer steps done; epoch (0-based) and pairs of it consumed
static long total_steps, warmup;
static int total_known;

static double parse_num(const char *name, const char *s, double lo, double hi) {
    char *end;
    double v = strtod(s, &end);
    if (*end || end == s || !isfinite(v) || v < lo || v > hi)
        pq_tool_usage_error(&T, "%s: expected a number in [%g, %g], not '%s'", name, lo, hi, s);
    return v;
}

static long parse_int(const char *name, const char *s, long lo) {
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || end == s || v < lo) pq_tool_usage_error(&T, "%s: expected an integer >= %ld, not '%s'", name, lo, s);
    return v;
}

static const char *side[2] = {"chosen", "rejected"};

// --raw: the sequences as token ids.
static int raw_pair(const cJSON *obj, PqTrainPair *p, PqErr *e) {
    for (int s = 0; s < 2; s++) {
        char key[32];
        snprintf(key, sizeof key, "%s_ids", side[s]);
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(obj, key), *it;
        double pl;
        char plk[32];
        snprintf(plk, sizeof plk, "%s_prompt_len", side[s]);
        if (!pq_json_num(obj, plk, &pl) && !pq_json_num(obj, "prompt_len", &pl)) pl = -1;
        if (!cJSON_IsArray(ids) || pl < 0) {
            pq_err(e, "--raw records need \"chosen_ids\", \"rejected_ids\" (arrays) and \"prompt_len\"");
            return -1;
        }
        int n = cJSON_GetArraySize(ids);
        if (pl < 1 || pl >= n || pl != (int)pl) {
            pq_err(e, "%s: prompt_len %g leaves no response among %d ids", side[s], pl, n);
            return -1;
        }
        if (n > max_len) {
            pq_err(e, "%s: %d ids exceed --max-length %d", side[s], n, max_len);
            return -1;
        }
        p->ids[s] = pq_xmalloc((size_t)n * sizeof(int32_t));
        p->len[s] = 0;
        p->prompt_len[s] = (int)pl;
        cJSON_ArrayForEach(it, ids) {
            if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble >= M->cfg.V ||
                it->valuedouble != (int)it->valuedouble) {
                pq_err(e, "%s: not a token id of this model (vocab %d)", key, M->cfg.V);
                return -1;
            }
            p->ids[s][p->len[s]++] = (int32_t)it->valuedouble;
        }
    }
    return 0;
}

// One pair record -> its two sequences and reference logps; -1 and a reason.
static int to_pair(const cJSON *obj, PqTrainPair *p, PqErr *e) {
    memset(p, 0, sizeof *p);
    for (int s = 0; s < 2 && !reference_free; s++) {
        char key[32];
        snprintf(key, sizeof key, "ref_%s_logp", side[s]);
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
        if (!it) {
            pq_err(e, "no %s: reference log-probs come from pq-logp (or train with --reference-free)", key);
            return -1;
        }
        if (!pq_json_num(obj, key, &p->ref[s]) || p->ref[s] > 0) {
            pq_err(e, "%s is not a finite log-probability (<= 0)", key);
            return -1;
        }
    }
    if (raw) {
        int rc = raw_pair(obj, p, e);
        if (rc) pq_train_pair_free(p);
        return rc;
    }
    PqPairMsgs pm;
    if (pq_pair_msgs(obj, &pm, e)) return -1;
    const PqMessage *resp[2] = {&pm.chosen, &pm.rejected};
    int rc = 0;
    for (int s = 0; s < 2 && rc == 0; s++) {
        const char *c = resp[s]->content;
        if (!c || !c[strspn(c, " \t\r\n")]) {
            pq_err(e, "empty %s response", side[s]);
            rc = -1;
            break;
        }
        PqSeq seq = {0};
        if (pq_seq_build(tok, chat, pm.prompt, pm.n_prompt, resp[s], max_len, policy, &seq, e)) {
            char msg[sizeof e->msg];
            snprintf(msg, sizeof msg, "%s", e->msg);
            pq_err(e, "%s: %s", side[s], msg);
            rc = -1;
        } else if (seq.prompt_len < 1 || seq.prompt_len >= (int)seq.ids.len) {
            pq_err(e, "%s: no response tokens after the prompt", side[s]);
            rc = -1;
        } else {
            char key[32];
            double n;
            snprintf(key, sizeof key, "%s_tokens", side[s]);
            int here = (int)seq.ids.len - seq.prompt_len;
            if (!reference_free && pq_json_num(obj, key, &n) && (int)n != here) {
                pq_err(e,
                       "%s is %g in the input but the response has %d tokens here: score (pq-logp) and train with "
                       "the same model, --chat-template, --max-length and --truncate",
                       key, n, here);
                rc = -1;
            } else {
                p->len[s] = (int)seq.ids.len;
                p->prompt_len[s] = seq.prompt_len;
                p->ids[s] = pq_xmalloc(seq.ids.len * sizeof(int32_t));
                memcpy(p->ids[s], seq.ids.data, seq.ids.len * sizeof(int32_t));
            }
        }
        pq_seq_free(&seq);
    }
    pq_pair_msgs_free(&pm);
    if (rc) pq_train_pair_free(p);
    return rc;
}

// Reads the --valid file (bad records are reported and left out).
static void load_valid(void) {
    PqErr e;
    size_t len;
    char *text = pq_read_file(valid_path, &len, &e);
    if (!text) pq_tool_die(&T, "%s", e.msg);
    long cap = 0, lineno = 0;
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        lineno++;
        if (!line[strspn(line, " \t\r")]) continue;
        cJSON *obj = cJSON_ParseWithOpts(line, NULL, 1); // nothing after the value
        PqTrainPair p;
        if (!obj || to_pair(obj, &p, &e)) {
            pq_tool_reject_text(&T, valid_path, lineno, line, strlen(line), obj ? pq_json_id(obj) : "?", obj ? e.msg : "not JSON");
            cJSON_Delete(obj);
            continue;
        }
        cJSON_Delete(obj);
        if (n_valid == cap) valid = pq_xrealloc(valid, (size_t)(cap = cap ? 2 * cap : 64) * sizeof *valid);
        valid[n_valid++] = p;
    }
    free(text);
    if (!n_valid) pq_tool_die(&T, "%s: no usable pairs", valid_path);
}

static void add_metrics(cJSON *o, const PqDpoMetrics *m) {
    double n = m->n > 0 ? m->n : 1;
    pq_json_add_float(o, "loss", m->loss / n);
    pq_json_add_float(o, "rewards/chosen", m->chosen / n);
    pq_json_add_float(o, "rewards/rejected", m->rejected / n);
    pq_json_add_float(o, "rewards/margins", m->margins / n);
    pq_json_add_float(o, "rewards/accuracies", m->accuracies / n);
    pq_json_add_float(o, "logps/chosen", m->logps_chosen / n);
    pq_json_add_float(o, "logps/rejected", m->logps_rejected / n);
}

// Sums over the ranks; a rank that left the group is fatal.
static void dist_sum(float *buf, size_t n) {
    PqErr e;
    if (pq_dist_sum(&dist, buf, n, &e))
        pq_tool_die(&T, "step %ld: summing the gradients over the ranks: %s", step + 1, e.msg);
}

static void dist_sum_host(double *v, size_t n) {
    PqErr e;
    if (pq_dist_sum_host(&dist, v, n, &e)) pq_tool_die(&T, "step %ld: summing over the ranks: %s", step + 1, e.msg);
}

// Whether to train on: every rank stops at the same step. Each rank calls
// this before each step and once after the last, so the calls pair up
// across ranks; an interrupted rank (SIGINT/SIGTERM) stops them all there,
// none is left waiting in a sum for one that has gone.
static int go_on(void) {
    if (dist.world == 1 || dist_stopped) return !pq_interrupted && !dist_stopped;
    double v = pq_interrupted;
    dist_sum_host(&v, 1);
    if (v > 0) pq_interrupted = 1, dist_stopped = 1;
    return !dist_stopped;
}

// The metrics (sums) and tokens of every rank, summed.
static void sum_metrics(PqDpoMetrics *m, long *tokens) {
    if (dist.world == 1) return;
    double v[9] = {m->n, m->loss, m->chosen, m->rejected, m->margins, m->accuracies, m->logps_chosen,
                   m->logps_rejected, (double)*tokens};
    dist_sum_host(v, 9);
    m->n = v[0], m->loss = v[1], m->chosen = v[2], m->rejected = v[3], m->margins = v[4], m->accuracies = v[5];
    m->logps_chosen = v[6], m->logps_rejected = v[7], *tokens = (long)v[8];
}

static void evaluate(void) {
    if (!n_valid) return;
    PqDpoMetrics m = {0};
    long tokens = 0;
    long nv = 0, *own = pq_xmalloc((size_t)n_valid * sizeof *own);
    for (long k = dist.rank; k < n_valid; k += dist.world) own[nv++] = k;
    for (long i = 0; i < nv; i += micro) {
        PqTrainPair *ptr[64];
        int n = 0;
        for (long k = i; k < nv && n < micro; k++) ptr[n++] = &valid[own[k]];
        if (pq_train_dpo_micro(tr, &dcfg, ptr, n, 0, 0, 0, &m, &tokens))
            pq_tool_die(&T, "step %ld: evaluation loss is not finite", step);
    }
    free(own);
    sum_metrics(&m, &tokens);
    if (dist.rank > 0) return;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "split", "valid");
    cJSON_AddNumberToObject(o, "step", (double)step);
    cJSON_AddNumberToObject(o, "epoch", (double)epoch + 1);
    add_metrics(o, &m);
    cJSON_AddNumberToObject(o, "pairs", m.n);
    pq_tool_emit(&T, o);
    cJSON_Delete(o);
}

// The training state stored next to the adapter.
static void save(void) {
    if (!out_dir || dist.rank > 0) return;
    cJSON *s = cJSON_CreateObject();
    cJSON_AddNumberToObject(s, "step", (double)step);
    cJSON_AddNumberToObject(s, "epoch", (double)epoch);
    cJSON_AddNumberToObject(s, "pos", (double)pos);
    cJSON_AddNumberToObject(s, "seed", (double)T.seed);
    cJSON_AddNumberToObject(s, "adam_t", (double)opt.t);
    cJSON_AddNumberToObject(s, "n_params", (double)lora->n_params);
    cJSON_AddNumberToObject(s, "batch_size", batch);
    cJSON_AddStringToObject(s, "loss_type", pq_dpo_loss_name(dcfg.loss));
    char *js = cJSON_Print(s);
    cJSON_Delete(s);
    float *mv = pq_xmalloc(pq_adamw_state_bytes(&opt) + 1); // m then v, from the backend
    pq_adamw_state_download(&opt, mv);
    PqLoraExtra ex[2] = {{"trainer_state.json", js, strlen(js)}, {"optimizer.bin", mv, pq_adamw_state_bytes(&opt)}};
    PqErr e;
    if (pq_lora_save(lora, &M->cfg, model_dir, (float)lora_dropout, out_dir, ex, 2, &e))
        pq_tool_die(&T, "saving the adapter: %s", e.msg);
    free(mv);
    free(js);
}

static void resume(void) {
    PqErr e;
    if (!(lora = pq_lora_load(resume_dir, M, &e))) pq_tool_die(&T, "--resume: %s", e.msg);
    PqBuf p = {0};
    pq_buf_printf(&p, "%s/trainer_state.json", resume_dir);
    char *text = pq_read_file(p.data, NULL, &e);
    if (!text) pq_tool_die(&T, "--resume: %s (not a directory pq-dpo saved?)", e.msg);
    cJSON *s = cJSON_Parse(text);
    free(text);
    double v[6];
    const char *keys[6] = {"step", "epoch", "pos", "seed", "adam_t", "n_params"};
    for (int i = 0; i < 6; i++)
        if (!pq_json_num(s, keys[i], &v[i])) pq_tool_die(&T, "--resume: %s: no \"%s\"", p.data, keys[i]);
    double b;
    if (pq_json_num(s, "batch_size", &b) && (int)b != batch)
        pq_tool_die(&T, "--resume: trained with --batch-size %d, not %d", (int)b, batch);
    cJSON_Delete(s);
    if ((size_t)v[5] != lora->n_params) pq_tool_die(&T, "--resume: the optimizer state does not match the adapter");
    step = (long)v[0], epoch = (long)v[1], pos = (long)v[2], T.seed = (uint64_t)v[3];
    pq_adamw_build(&opt, lora->n_params, lr, beta1, beta2, adam_eps, wd);
    opt.t = (long)v[4];
    pq_buf_clear(&p);
    pq_buf_printf(&p, "%s/optimizer.bin", resume_dir);
    size_t len;
    char *mv = pq_read_file(p.data, &len, &e);
    if (!mv) pq_tool_die(&T, "--resume: %s", e.msg);
    if (len != pq_adamw_state_bytes(&opt)) pq_tool_die(&T, "--resume: %s: wrong size", p.data);
    pq_adamw_state_upload(&opt, (const float *)mv);
    free(mv);
    pq_buf_free(&p);
}

static void set_schedule(long n_pairs) {
    long per_epoch = (n_pairs + batch - 1) / batch;
    total_steps = max_steps > 0 ? max_steps : per_epoch * epochs;
    warmup = warmup_steps >= 0 ? warmup_steps : (long)ceil(warmup_ratio * (double)total_steps);
}

static void die_nonfinite(const char *what) {
    if (out_dir)
        pq_tool_die(&T, "step %ld: %s is not finite; training stopped, the last checkpoint in %s is kept", step + 1,
                    what, out_dir);
    pq_tool_die(&T, "step %ld: %s is not finite; training stopped", step + 1, what);
}

// One optimizer step on pairs idx[0..n).
static void train_step(const long *idx, int n) {
    double t0 = pq_now();
    pq_trainer_zero_grad(tr);
    PqDpoMetrics m = {0};
    long tokens = 0;
    // this rank's pairs of the batch (all of them in a single process); the
    // micro-batch index k keys dropout as in a single process when micro is 1
    int *own = pq_xmalloc((size_t)n * sizeof *own), no = 0;
    for (int j = dist.rank; j < n; j += dist.world) own[no++] = j;
    for (int i = 0; i < no; i += micro) {
        PqTrainPair *ptr[64];
        int c = 0;
        for (int j = i; j < no && c < micro; j++) ptr[c++] = &recs[idx[own[j]]];
        uint64_t k = dist.world == 1 ? (uint64_t)(i / micro) : (uint64_t)own[i]; // as one process when micro is 1
        uint64_t ds = pq_hash_bytes(&(uint64_t[3]){T.seed, (uint64_t)step, k}, 24);
        if (pq_train_dpo_micro(tr, &dcfg, ptr, c, 1.0 / n, ds, 1, &m, &tokens)) die_nonfinite("the loss");
    }
    free(own);
    dist_sum(tr->grads, lora->n_params);
    sum_metrics(&m, &tokens);
    if (dump_grads) { // the gradients before clipping, on the host
        PqErr e;
        float *hg = pq_xmalloc((lora->n_params ? lora->n_params : 1) * sizeof *hg);
        pq_dev_download(hg, tr->grads, lora->n_params * sizeof *hg);
        int rc = pq_lora_write_tensors(lora, &M->cfg, hg, dump_grads, &e);
        free(hg);
        if (rc) pq_tool_die(&T, "%s", e.msg);
        stop_after = step + 1;
    }
    // clipping and AdamW where the adapter lives (the device on CUDA)
    double gn = pq_clip_grad_norm(tr->grads, lora->n_params, max_grad_norm);
    if (!isfinite(gn)) die_nonfinite("the gradient norm");
    double cur_lr = pq_lr_at(sched, lr, step, warmup, total_steps);
    pq_adamw_step(&opt, lora->params, tr->grads, cur_lr);
    step++;
    double dt = pq_now() - t0;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "step", (double)step);
    cJSON_AddNumberToObject(o, "epoch", (double)epoch + 1);
    add_metrics(o, &m);
    pq_json_add_float(o, "lr", cur_lr);
    pq_json_add_float(o, "grad_norm", gn);
    cJSON_AddNumberToObject(o, "tokens", (double)tokens);
    pq_json_add_float(o, "tokens_per_s", dt > 0 ? tokens / dt : 0);
    pq_json_add_float(o, "peak_mem_mb", pq_peak_rss_kb() / 1024.0);
    if (strcmp(pq_ops_backend(), "cpu")) pq_json_add_float(o, "peak_device_mem_mb", pq_dev_peak_bytes() / 1048576.0);
    cJSON_AddBoolToObject(o, "checkpoint", tr->checkpoint);
    cJSON_AddStringToObject(o, "activations", pq_ops_act_dtype() == PQ_BF16 ? "bf16" : "f32");
    if (dist.world > 1) cJSON_AddNumberToObject(o, "world_size", dist.world);
    if (dist.rank == 0) pq_tool_emit(&T, o);
    cJSON_Delete(o);
    T.n_done += n;
    T.steps = step;
    T.steps_total = !total_known ? 0 : total_steps > step ? total_steps : step;
    snprintf(T.progress_extra, sizeof T.progress_extra, ", loss %.4f", m.n > 0 ? m.loss / m.n : 0.0);
    if (save_every > 0 && step % save_every == 0) save();
    if (eval_every > 0 && step % eval_every == 0) evaluate();
    pq_tool_progress(&T, 0);
}

static int stopping(void) {
    return pq_interrupted || (max_steps > 0 && step >= max_steps) || (stop_after > 0 && step >= stop_after);
}

// --resume DIR --output FILE: the metrics of the steps the checkpoint holds
// are kept (they were truncated away before), the lines written after it
// (the steps to be trained again) and a partial last line dropped; the
// resumed run appends. After pq_tool_open, which opened it for appending.
static void keep_metrics(void) {
    PqErr e;
    PqBuf p = {0};
    pq_buf_printf(&p, "%s/trainer_state.json", resume_dir);
    char *state = pq_read_file(p.data, NULL, &e);
    cJSON *s = state ? cJSON_Parse(state) : NULL;
    double saved;
    int known = pq_json_num(s, "step", &saved);
    cJSON_Delete(s);
    free(state);
    size_t n;
    struct stat so;
    int regular = stat(T.output_path, &so) == 0 && S_ISREG(so.st_mode); // not /dev/stdout, a pipe
    char *data = known && regular ? pq_read_file(T.output_path, &n, &e) : NULL;
    if (!data) { // nothing written yet, or no checkpoint to go by (--resume then says why)
        pq_buf_free(&p);
        return;
    }
    PqBuf keep = {0};
    long dropped = 0;
    for (size_t i = 0; i < n;) {
        char *nl = memchr(data + i, '\n', n - i);
        if (!nl) { // a partial line
            dropped++;
            break;
        }
        cJSON *o = cJSON_ParseWithLength(data + i, (size_t)(nl - (data + i)));
        double st;
        if (o && pq_json_num(o, "step", &st) && st <= saved) pq_buf_append(&keep, data + i, (size_t)(nl - (data + i)) + 1);
        else if (nl > data + i) dropped++;
        cJSON_Delete(o);
        i = (size_t)(nl - data) + 1;
    }
    if (dropped) {
        pq_buf_clear(&p);
        pq_buf_printf(&p, "%s.tmp%ld", T.output_path, (long)getpid());
        FILE *f = fopen(p.data, "wb");
        if (!f || fwrite(keep.data ? keep.data : "", 1, keep.len, f) != keep.len || fclose(f) != 0 ||
            rename(p.data, T.output_path) != 0)
            pq_tool_die(&T, "--output %s: keeping the metrics up to step %.0f: %s", T.output_path, saved, strerror(errno));
        close(T.out_fd); // the file now in its place, for appending (fcntl.h's O_TRUNC is an option name here)
        FILE *a = fopen(T.output_path, "a");
        if (!a || (T.out_fd = dup(fileno(a))) < 0) pq_tool_die(&T, "--output %s: %s", T.output_path, strerror(errno));
        fclose(a);
        fprintf(stderr, "%s: %s: %ld line%s after the checkpoint's step %.0f dropped (they are trained again)\n", T.name,
                T.output_path, dropped, dropped == 1 ? "" : "s", saved);
    }
    pq_buf_free(&keep);
    pq_buf_free(&p);
    free(data);
}

// --out DIR before any work: a new path, the directory being resumed, or
// (with --overwrite) an adapter directory; anything else is refused, so that
// a file or an unrelated directory is never replaced by an adapter.
static void check_out(void) {
    struct stat so, sr;
    if (stat(out_dir, &so) != 0) return;
    if (resume_dir && stat(resume_dir, &sr) == 0 && sr.st_dev == so.st_dev && sr.st_ino == so.st_ino) return;
    PqBuf p = {0};
    pq_buf_printf(&p, "%s/adapter_config.json", out_dir);
    int adapter = S_ISDIR(so.st_mode) && access(p.data, F_OK) == 0;
    pq_buf_free(&p);
    if (!adapter)
        pq_tool_usage_error(&T, "--out %s exists and is not an adapter directory: give a new path", out_dir);
    if (!overwrite)
        pq_tool_usage_error(&T, "--out %s holds an adapter already: --resume %s continues its training, "
                                "--overwrite replaces it",
                            out_dir, out_dir);
}

// Counts the non-blank lines of the inputs when they are all regular files; -1 otherwise.
static long count_inputs(void) {
    long n = 0;
    for (int i = 0; i < T.n_inputs; i++) {
        struct stat sb;
        if (strcmp(T.inputs[i], "-") == 0 || stat(T.inputs[i], &sb) != 0 || !S_ISREG(sb.st_mode)) return -1;
        FILE *f = fopen(T.inputs[i], "rb");
        if (!f) return -1;
        char *line = NULL;
        size_t cap = 0;
        ssize_t k;
        while ((k = getline(&line, &cap, f)) > 0)
            if (line[strspn(line, " \t\r\n")]) n++;
        free(line);
        fclose(f);
    }
    return n;
}

// --devices LIST -> the devices of its entries (cuda:N, or cpu in the CPU
// build), checked; their number.
static int parse_devices(const char *list, char ***out) {
    int cpu = !strcmp(pq_ops_backend(), "cpu"), n = 0;
    char *copy = pq_xstrdup(list), *save = NULL;
    char **dev = pq_xmalloc((strlen(list) / 2 + 2) * sizeof *dev);
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (!strcmp(t, "cpu")) {
            if (!cpu) pq_tool_usage_error(&T, "--devices: cpu is not a device of the CUDA build (give GPUs: 0,1,2)");
            dev[n++] = pq_xstrdup("cpu");
            continue;
        }
        const char *g = strncmp(t, "cuda:", 5) ? t : t + 5;
        char *end;
        long k = strtol(g, &end, 10);
        if (!*g || *end || k < 0 || k > 1024)
            pq_tool_usage_error(&T, "--devices: GPU numbers (0,1,2) or cpu, not '%s'", t);
        if (cpu)
            pq_tool_usage_error(&T, "--devices %s: this build has no CUDA backend (build it with make CUDA=1); the "
                                    "CPU build runs several processes with --devices cpu,cpu",
                                list);
        dev[n] = pq_xmalloc(24);
        snprintf(dev[n], 24, "cuda:%ld", k);
        for (int i = 0; i < n; i++)
            if (!strcmp(dev[i], dev[n])) pq_tool_usage_error(&T, "--devices: GPU %ld is given twice", k);
        n++;
    }
    free(copy);
    if (!n) pq_tool_usage_error(&T, "--devices: an empty list");
    *out = dev;
    return n;
}

// --devices with several entries: this process becomes the group's launcher
// (lib/launch.c), one worker per entry, each this program again with the same
// arguments less --devices (args[drop[i]] left out), plus --device and, in the
// CPU build, its share of the cores unless --threads is given.
static int run_devices(char **dev, int n, char **args, int argc, const char *drop, int threads, int feed) {
    char tn[24] = "";
    if (!threads && !strcmp(pq_ops_backend(), "cpu")) {
        cpu_set_t cs;
        long cores = sched_getaffinity(0, sizeof cs, &cs) == 0 ? CPU_COUNT(&cs) : sysconf(_SC_NPROCESSORS_ONLN);
        snprintf(tn, sizeof tn, "%ld", cores / n > 1 ? cores / n : 1);
    }
    PqDist env;
    PqErr e;
    if (pq_dist_from_env(&env, &e)) pq_tool_usage_error(&T, "%s", e.msg);
    int port = env.port;
    if (!getenv("MASTER_PORT") || !*getenv("MASTER_PORT")) { // a free one
        int fd = pq_tcp_listen(0, 1, &port, &e);
        if (fd < 0) pq_tool_die(&T, "--devices: %s", e.msg);
        close(fd);
    }
    char ***wargv = pq_xmalloc((size_t)n * sizeof *wargv);
    for (int r = 0; r < n; r++) {
        char **a = wargv[r] = pq_xmalloc((size_t)(argc + 6) * sizeof *a);
        int k = 0;
        a[k++] = args[0];
        a[k++] = "--device", a[k++] = dev[r];
        if (*tn) a[k++] = "--threads", a[k++] = tn;
        for (int i = 1; i < argc; i++)
            if (!drop[i]) a[k++] = args[i];
        a[k] = NULL;
    }
    PqLaunch l = {T.name, "/proc/self/exe", n, wargv, port, feed};
    int rc = pq_launch_run(&l, &e);
    for (int r = 0; r < n; r++) free(wargv[r]);
    free(wargv);
    if (rc < 0) pq_tool_die(&T, "--devices: %s", e.msg);
    return rc;
}

int main(int argc, char **argv) {
    static const struct option longopts[] = {
        PQ_TOOL_LONGOPTS,
        {"model", required_argument, 0, 'm'},
        {"out", required_argument, 0, 'o'},
        {"adapter", required_argument, 0, O_ADAPTER},
        {"loss", required_argument, 0, O_LOSS},
        {"beta", required_argument, 0, O_BETA},
        {"label-smoothing", required_argument, 0, O_LS},
        {"sft-weight", required_argument, 0, O_SFT},
        {"sft-sum", no_argument, 0, O_SFT_SUM},
        {"reference-free", no_argument, 0, O_REFFREE},
        {"lora-r", required_argument, 0, O_R},
        {"lora-alpha", required_argument, 0, O_ALPHA},
        {"lora-dropout", required_argument, 0, O_DROP},
        {"lora-targets", required_argument, 0, O_TARGETS},
        {"lr", required_argument, 0, O_LR},
        {"adam-beta1", required_argument, 0, O_B1},
        {"adam-beta2", required_argument, 0, O_B2},
        {"adam-eps", required_argument, 0, O_EPS},
        {"weight-decay", required_argument, 0, O_WD},
        {"warmup-steps", required_argument, 0, O_WSTEPS},
        {"warmup-ratio", required_argument, 0, O_WRATIO},
        {"lr-schedule", required_argument, 0, O_SCHED},
        {"max-grad-norm", required_argument, 0, O_CLIP},
        {"batch-size", required_argument, 0, O_BATCH},
        {"micro-batch", required_argument, 0, O_MICRO},
        {"epochs", required_argument, 0, O_EPOCHS},
        {"max-steps", required_argument, 0, O_MAXSTEPS},
        {"train-pairs", required_argument, 0, O_TRAINPAIRS},
        {"stop-after", required_argument, 0, O_STOPAFTER},
        {"save-every", required_argument, 0, O_SAVEEVERY},
        {"valid", required_argument, 0, O_VALID},
        {"eval-every", required_argument, 0, O_EVALEVERY},
        {"checkpoint", required_argument, 0, O_CKPTWHEN},
        {"checkpoint-activations", no_argument, 0, O_CKPT}, // = --checkpoint on (older name)
        {"no-checkpoint-activations", no_argument, 0, O_NOCKPT}, // = --checkpoint off
        {"chat-template", required_argument, 0, O_TEMPLATE},
        {"chat-var", required_argument, 0, O_CHAT_VAR},
        {"date", required_argument, 0, O_DATE},
        {"max-length", required_argument, 0, O_MAXLEN},
        {"truncate", required_argument, 0, O_TRUNC},
        {"threads", required_argument, 0, 't'},
        {"raw", no_argument, 0, O_RAW},
        {"no-share-prompt", no_argument, 0, O_NOSHARE},
        {"device", required_argument, 0, O_DEVICE},
        {"devices", required_argument, 0, O_DEVICES},
        {"dump-grads", required_argument, 0, O_DUMPGRADS}, // tests: the first step's gradients, then stop
        {"overwrite", no_argument, 0, O_OVERWRITE},
        {"no-save", no_argument, 0, O_NOSAVE},
        {0, 0, 0, 0}};
    pq_tool_init(&T, "pq-dpo", usage);
    int o, threads = 0;
    PqErr e;
    // the arguments as given (getopt_long permutes argv), and which of them
    // are --devices and its value, for the workers' copies
    char **args = pq_xmalloc((size_t)(argc + 1) * sizeof *args), *drop = pq_xcalloc((size_t)argc + 1, 1);
    memcpy(args, argv, (size_t)(argc + 1) * sizeof *args);
    while ((o = getopt_long(argc, argv, "hm:o:t:", longopts, NULL)) != -1) {
        if (o == PQ_OPT_RESUME) { // a checkpoint directory here, not the common resume file
            resume_dir = optarg;
            continue;
        }
        if (pq_tool_option(&T, o, optarg)) continue;
        switch (o) {
        case 'm': model_dir = optarg; break;
        case 'o': out_dir = optarg; break;
        case O_ADAPTER: adapter_dir = optarg; break;
        case O_LOSS:
            if ((dcfg.loss = pq_dpo_loss_parse(optarg)) < 0)
                pq_tool_usage_error(&T, "--loss: sigmoid, ipo or hinge, not '%s'", optarg);
            break;
        case O_BETA: dcfg.beta = parse_num("--beta", optarg, 1e-9, 1e9); break;
        case O_LS: dcfg.label_smoothing = parse_num("--label-smoothing", optarg, 0, 0.5); break;
        case O_SFT: dcfg.sft_weight = parse_num("--sft-weight", optarg, 0, 1e9); break;
        case O_SFT_SUM: dcfg.sft_sum = 1; break;
        case O_REFFREE: reference_free = 1; break;
        case O_R: lora_r = (int)parse_int("--lora-r", optarg, 1); break;
        case O_ALPHA: lora_alpha = parse_num("--lora-alpha", optarg, 1e-9, 1e9); break;
        case O_DROP: lora_dropout = parse_num("--lora-dropout", optarg, 0, 0.99); break;
        case O_TARGETS:
            if (pq_lora_parse_targets(optarg, &targets, &e) || !targets)
                pq_tool_usage_error(&T, "--lora-targets: %s", targets ? e.msg : "no target");
            break;
        case O_LR: lr = parse_num("--lr", optarg, 0, 10); break;
        case O_B1: beta1 = parse_num("--adam-beta1", optarg, 0, 0.999999); break;
        case O_B2: beta2 = parse_num("--adam-beta2", optarg, 0, 0.999999999); break;
        case O_EPS: adam_eps = parse_num("--adam-eps", optarg, 0, 1); break;
        case O_WD: wd = parse_num("--weight-decay", optarg, 0, 10); break;
        case O_WSTEPS: warmup_steps = parse_int("--warmup-steps", optarg, 0); break;
        case O_WRATIO: warmup_ratio = parse_num("--warmup-ratio", optarg, 0, 1); break;
        case O_SCHED:
            if ((sched = pq_sched_parse(optarg)) < 0)
                pq_tool_usage_error(&T, "--lr-schedule: linear, cosine or constant, not '%s'", optarg);
            break;
        case O_CLIP: max_grad_norm = parse_num("--max-grad-norm", optarg, 0, 1e9); break;
        case O_BATCH: batch = (int)parse_int("--batch-size", optarg, 1); break;
        case O_MICRO: micro = (int)parse_int("--micro-batch", optarg, 1); break;
        case O_EPOCHS: epochs = (int)parse_int("--epochs", optarg, 1); break;
        case O_MAXSTEPS: max_steps = parse_int("--max-steps", optarg, 1); break;
        case O_TRAINPAIRS: train_pairs = parse_int("--train-pairs", optarg, 1); break;
        case O_STOPAFTER: stop_after = parse_int("--stop-after", optarg, 1); break;
        case O_SAVEEVERY: save_every = parse_int("--save-every", optarg, 1); break;
        case O_VALID: valid_path = optarg; break;
        case O_EVALEVERY: eval_every = parse_int("--eval-every", optarg, 1); break;
        case O_CKPT: checkpoint = PQ_CKPT_ON; break;
        case O_NOCKPT: checkpoint = PQ_CKPT_OFF; break;
        case O_CKPTWHEN:
            if (!strcmp(optarg, "auto")) checkpoint = PQ_CKPT_AUTO;
            else if (!strcmp(optarg, "on")) checkpoint = PQ_CKPT_ON;
            else if (!strcmp(optarg, "off")) checkpoint = PQ_CKPT_OFF;
            else pq_tool_usage_error(&T, "--checkpoint: %s is not auto, on or off", optarg);
            break;
        case O_TEMPLATE: template_name = optarg; break;
        case O_CHAT_VAR:
            if (n_chat_vars == PQ_CHAT_MAX_VARS) pq_tool_usage_error(&T, "at most %d --chat-var", PQ_CHAT_MAX_VARS);
            chat_vars[n_chat_vars++] = optarg;
            break;
        case O_DATE: chat_date = optarg; break;
        case O_MAXLEN: max_len = (int)parse_int("--max-length", optarg, 2); break;
        case O_TRUNC:
            if ((policy = pq_trunc_parse(optarg)) < 0)
                pq_tool_usage_error(&T, "--truncate: article, keep_start or keep_end, not '%s'", optarg);
            break;
        case 't': threads = (int)parse_int("--threads", optarg, 1); break;
        case O_RAW: raw = 1; break;
        case O_NOSHARE: share_prompt = 0; break;
        case O_DEVICE: device = optarg; break;
        case O_DEVICES:
            devices = optarg;
            for (int i = 1; i < argc; i++) {
                char *eq = strchr(args[i], '=');
                if (args[i] == optarg) drop[i] = drop[i - 1] = 1;         // --devices LIST
                else if (eq && eq + 1 == optarg) drop[i] = 1;              // --devices=LIST
            }
            break;
        case O_DUMPGRADS: dump_grads = optarg; break;
        case O_OVERWRITE: overwrite = 1; break;
        case O_NOSAVE: no_save = 1; break;
        default: pq_tool_usage_error(&T, "bad option");
        }
    }
    if (!model_dir) pq_tool_usage_error(&T, "--model DIR is required");
    if (out_dir && no_save) pq_tool_usage_error(&T, "--out and --no-save exclude each other");
    if (!out_dir && !no_save && !dump_grads)
        pq_tool_usage_error(&T, "--out DIR is required: where the adapter is saved (--no-save trains without saving)");
    if (out_dir) {
        if (pq_clean_stale_dirs(out_dir, T.name, &e) < 0) pq_tool_die(&T, "%s", e.msg);
        check_out();
    }
    if (micro > 64) micro = 64;
    if (micro > batch) micro = batch;
    if (resume_dir && adapter_dir) pq_tool_usage_error(&T, "--resume and --adapter exclude each other");
    if (dcfg.label_smoothing > 0 && dcfg.loss != PQ_LOSS_SIGMOID)
        pq_tool_usage_error(&T, "--label-smoothing applies to the sigmoid loss only");
    if (devices) {
        if (device) pq_tool_usage_error(&T, "--device and --devices exclude each other");
        if (getenv("RANK") || getenv("WORLD_SIZE"))
            pq_tool_usage_error(&T, "--devices starts the ranks itself: RANK/WORLD_SIZE must not be set (a launcher "
                                    "that sets them starts one pq-dpo per GPU, each with --device)");
        char **dev;
        int n = parse_devices(devices, &dev), rc = -1;
        if (pq_dist_from_env(&dist, &e)) pq_tool_usage_error(&T, "%s", e.msg);
        if (dist.world > 1)
            pq_tool_usage_error(&T, "--devices starts the ranks itself, but this process is rank %d of %d already",
                                dist.rank, dist.world);
        if (n == 1) device = dev[0]; // as --device
        else {
            int feed = optind == argc;
            for (int i = optind; i < argc; i++) feed |= !strcmp(argv[i], "-");
            rc = run_devices(dev, n, args, argc, drop, threads, feed);
        }
        for (int i = n == 1; i < n; i++) free(dev[i]);
        free(dev);
        if (n > 1) {
            free(args);
            free(drop);
            return rc;
        }
    }
    free(args);
    free(drop);
    if (pq_dist_from_env(&dist, &e)) pq_tool_die(&T, "%s", e.msg);
    static char rank_name[32];
    if (dist.rank > 0) { // rank 0 alone writes: the others' messages say which rank they come from
        snprintf(rank_name, sizeof rank_name, "pq-dpo rank %d", dist.rank);
        T.name = rank_name;
        T.output_path = T.rejects_path = NULL;
        T.progress = 0;
    }
    if (resume_dir && T.output_path && strcmp(T.output_path, "-")) T.output_append = 1;
    pq_tool_open(&T, argc, argv, optind); // refuses an --output that is an input before keep_metrics rewrites it
    if (T.output_append) keep_metrics();
    pq_ops_set_threads(threads);
    if (device && pq_device_select(device, &e)) pq_tool_die(&T, "%s", e.msg);
    if (!device && dist.world > 1 && strcmp(pq_ops_backend(), "cpu") && pq_ops_set_device(dist.local_rank))
        pq_tool_die(&T, "rank %d: no CUDA device %d (LOCAL_RANK)", dist.rank, dist.local_rank);
    if (pq_dist_init(&dist, 600, &e)) pq_tool_die(&T, "%s", e.msg);

    if (!(M = pq_model_load(model_dir, &e))) pq_tool_die(&T, "%s", e.msg);
    char aerr[256]; // the activations' storage, before any buffer exists
    if (pq_ops_act_choose(M->cfg.dtype, aerr, sizeof aerr) < 0) pq_tool_usage_error(&T, "%s", aerr);
    if (!raw) {
        if (!(tok = pq_tokenizer_load_dir(model_dir, &e))) pq_tool_die(&T, "%s", e.msg);
        if (!(chat = pq_chat_load(model_dir, template_name, &e))) pq_tool_die(&T, "%s", e.msg);
        if (pq_chat_configure(chat, chat_vars, n_chat_vars, chat_date, &e)) pq_tool_usage_error(&T, "%s", e.msg);
    }

    if (resume_dir) {
        resume();
        if ((max_steps > 0 && step >= max_steps) || epoch >= epochs) { // nothing left: not an error
            fprintf(stderr, "%s: the training in %s is complete (step %ld, %ld epoch%s); nothing to do\n", T.name,
                    resume_dir, step, epoch, epoch == 1 ? "" : "s");
            return pq_tool_finish(&T);
        }
    } else {
        if (adapter_dir) {
            if (!(lora = pq_lora_load(adapter_dir, M, &e))) pq_tool_die(&T, "--adapter: %s", e.msg);
        } else {
            lora = pq_lora_build(&M->cfg, lora_r, (float)lora_alpha, targets);
            pq_lora_init_peft(lora, &M->cfg, T.seed);
        }
        pq_adamw_build(&opt, lora->n_params, lr, beta1, beta2, adam_eps, wd);
    }
    tr = pq_trainer_build(M, lora, checkpoint, (float)lora_dropout);
    tr->share_prompt = share_prompt;

    long n_est = train_pairs > 0 ? train_pairs : count_inputs();
    total_known = n_est > 0 || max_steps > 0;
    if (!total_known && (sched != PQ_SCHED_CONSTANT || (warmup_ratio > 0 && warmup_steps < 0)))
        pq_tool_usage_error(&T, "the input is a pipe: give --train-pairs N or --max-steps N for the %s "
                                "(or --lr-schedule constant, --warmup-steps)",
                            sched == PQ_SCHED_CONSTANT ? "--warmup-ratio" : "schedule");
    set_schedule(n_est > 0 ? n_est : 0);
    T.by_steps = 1; // progress: steps (of the schedule's total) and the loss, not pairs
    T.steps = T.steps_first = step;
    T.steps_total = !total_known ? 0 : total_steps > step ? total_steps : step;
    if (valid_path) load_valid();
    if (valid_path && step == 0) evaluate();

    // Epoch 1: records are trained on as they arrive (in input order) and kept.
    long *idx = pq_xmalloc((size_t)batch * sizeof *idx);
    int nb = 0;
    long seen = 0; // accepted records of the input, in order
    while (!stopping() || (epoch > 0 && !pq_interrupted)) {
        if (!pq_tool_next(&T)) break;
        cJSON *obj = pq_tool_parse(&T);
        if (!obj) continue;
        PqTrainPair pr;
        if (to_pair(obj, &pr, &e)) {
            pq_tool_reject(&T, &T.line, pq_json_id(obj), "%s", e.msg);
            cJSON_Delete(obj);
            continue;
        }
        cJSON_Delete(obj);
        if (n_recs == cap_recs) recs = pq_xrealloc(recs, (size_t)(cap_recs = cap_recs ? 2 * cap_recs : 256) * sizeof *recs);
        recs[n_recs++] = pr;
        seen++;
        if (epoch > 0 || seen <= pos) continue; // resumed: trained before
        idx[nb++] = n_recs - 1;
        if (nb == batch) {
            if (!go_on()) break;
            pos += nb;
            train_step(idx, nb);
            nb = 0;
        }
    }
    if (!T.fatal && !pq_interrupted && epoch == 0 && nb > 0 && !stopping() && go_on()) { // the last, partial batch
        pos += nb;
        train_step(idx, nb);
        nb = 0;
    }
    if (!pq_interrupted && n_recs == 0) pq_tool_die(&T, "no usable training pairs");
    if (!max_steps && n_recs > 0) set_schedule(n_recs); // the real count from now on
    if (epoch == 0 && !stopping() && !pq_interrupted) epoch = 1, pos = 0;

    // Later epochs: the kept records, shuffled (seeded by the seed and the epoch).
    int *order = pq_xmalloc((size_t)(n_recs ? n_recs : 1) * sizeof *order);
    for (; epoch < epochs && !stopping(); epoch++, pos = 0) {
        PqRng rng;
        pq_rng_seed(&rng, T.seed ^ (0x9e3779b97f4a7c15ULL * (uint64_t)epoch));
        for (long i = 0; i < n_recs; i++) order[i] = (int)i;
        pq_rng_shuffle_int(&rng, order, (int)n_recs);
        while (pos < n_recs && !stopping()) {
            nb = 0;
            while (nb < batch && pos + nb < n_recs) {
                idx[nb] = order[pos + nb];
                nb++;
            }
            if (!go_on()) break;
            pos += nb;
            train_step(idx, nb);
        }
        if (stopping() && pos < n_recs) break;
    }
    int go = go_on(); // the last agreement: every rank evaluates, or none
    if (valid_path && go && !(eval_every > 0 && step % eval_every == 0)) evaluate();
    save();
    snprintf(T.summary_extra, sizeof T.summary_extra, "%ld steps", step);

    free(order);
    free(idx);
    for (long i = 0; i < n_recs; i++) pq_train_pair_free(&recs[i]);
    for (long i = 0; i < n_valid; i++) pq_train_pair_free(&valid[i]);
    free(recs);
    free(valid);
    pq_trainer_free(tr);
    pq_adamw_free(&opt);
    pq_dist_free(&dist);
    pq_lora_free(lora);
    if (devices) free((char *)device);
    if (chat) pq_chat_free(chat);
    if (tok) pq_tokenizer_free(tok);
    pq_model_free(M);
    return pq_tool_finish(&T);
}
