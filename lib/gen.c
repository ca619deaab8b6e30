// gen.c: generation (see gen.h). One step = admit queued samples into free
// slots, one packed forward of every running slot's new tokens (prompts
// being prefilled, with the paged cache a chunk of a long one a step, and
// one token per decoding slot) against the KV cache,
// then sampling on the host, one RNG per sample. The n samples of a request
// read its prompt's keys and values from the slot that prefilled it (the
// CPU's pq_attention_kv_shared_forward); where the backend has no such
// operation (CUDA), the prompt is copied into every sample's slot.
#include "gen.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "exp_fast.h"
#include "ops_gen.h"
#include "ops_graph.h"
#include "ops_paged.h"
#include "tool.h"

// Prompt tokens prefilled in one step at most (PQ_PREFILL_BUDGET overrides):
// on the GPU more, so that the products of a prefill step are large enough
// to keep it busy (2,048 rows ran a 7B's prefill at 20% MFU on an H200).
// With the paged cache a longer prompt is prefilled in chunks over several
// steps, beside the decoding rows (which go on every step); with the flat
// one it goes alone.
#define PREFILL_BUDGET 2048
#define PREFILL_BUDGET_GPU 8192
// Initial positions per slot of the cache (grown by doubling).
#define T_INIT 256
// Positions per block of the paged cache (PQ_KV=paged).
#define BLOCK_T 16

typedef struct Req Req;
struct Req {
    uint64_t id;
    int32_t *prompt;
    int P, n;
    int started, finished; // samples
    int prefilling, prefilled;
    uint64_t seed;
    PqGenParams p;
    char **stop; // owned copies
    int stop_max;
    PqGenDone cb;
    void *user;
    PqGenOut *outs; // [n]
    float *logits;  // (V) after the prompt's last token, once prefilled
    PqKvSeq kv;     // paged: the prompt's blocks, held until every sample has started
    uint64_t *bhash; // paged, prefix cache: [P / BLOCK_T] hashes of the prompt up to each full block's end
    Req *qnext;     // the queue of requests with samples to start
    Req *prev, *next; // every live request
};

// paged only: SLOT_WAIT preempted (no blocks; its tokens kept), SLOT_RESUME
// recomputing prompt and tokens this step
enum { SLOT_FREE = 0, SLOT_PREFILL, SLOT_FOLLOW, SLOT_RUN, SLOT_WAIT, SLOT_RESUME };

typedef struct Slot {
    int state;
    Req *r;
    int k;              // sample number
    uint64_t prefix;    // id of the request whose prompt fills positions [0, P) (of this slot's own cache)
    int base, blen;     // positions [0, blen) are read from slot base (blen 0: all from this one)
    int users;          // running slots reading their prompt from this one (it is not reused meanwhile)
    int len;            // positions of the cache in use
    int32_t next_tok;   // sampled, to be fed in the next step
    PqTokens gen;       // generated ids
    float *lp;          // their log-probabilities (gen.len of them), lp_cap allocated
    int lp_cap;
    float pick_lp;      // the log-probability of pick
    PqBuf text;         // their text
    PqRng rng;
    PqCState cs;
    float *work;        // (V) scratch for sampling
    int32_t pick;       // token sampled this step (-1: none possible)
    PqKvSeq kv;         // paged: its blocks
    long long age;      // paged: when the sample started (the youngest is preempted first)
    int chunk;          // paged, prefilling or resuming: positions [len, len + chunk) computed this step
    int from;           // paged, prefilling or resuming: positions [0, from) shared from the prefix cache
    int pub;            // paged, prefix cache: leading blocks of its prompt published (or shared)
} Slot;

struct PqGen {
    const PqModel *m;
    const PqTokenizer *tok;
    PqTokText *tt; // when tok
    int S, T, Tmax; // slots, positions per slot, the model's context
    float **kc, **vc; // [L] (S,T,KVH,HS)
    Slot *slots;
    int32_t *eos;
    int n_eos;
    Req *qhead, *qtail, *live;
    int pending;
    uint64_t next_id;
    // step buffers (device) for up to cap tokens, rows for up to mcap logits
    int cap, mcap;
    float *x, *ln, *q, *k, *v, *att, *tmp, *gate, *up, *mlp, *xa, *h, *logits;
    int32_t *d_ids, *d_pos, *d_slot, *d_base, *d_blen;
    int32_t *ids, *pos, *slot_of, *base_of, *blen_of; // host
    int shared; // the prompt's cache is shared by its samples (pq_attention_kv_shared_forward)
    float *h_logits;              // host (mcap, V)
    // the paged cache (PQ_KV=paged): L pools of NB blocks one after another
    int paged, NB;
    PqKvPage *kp;
    void *kpool, *vpool;
    PqDtype kdt;
    size_t kelem;
    int32_t *tab, *d_tab, *plen, *d_plen; // (cap, maxblk) tables, (cap) lengths
    size_t tab_cap;
    int maxblk, max_len; // max_len: of the decode rows
    int prefill_budget;  // PREFILL_BUDGET, or PREFILL_BUDGET_GPU
    int np;              // paged: rows [0, np) prefill whole prompts (fused attention), [np, N) decode
    int32_t *seg, *d_seg; // (cap + 1): rows [np, N) in segments, one a slot (pq_paged_prefill_forward)
    int nseg, max_q;      // the segments, and the rows of the longest (> 1: a chunk after its context)
    float *lse;          // (cap, NH): the fused attention's log-sum-exp (unused)
    float *pwork;
    size_t pwork_n;
    PqKvCopy *copies;
    int ncopy, copy_cap;
    PqKvCopy *d_copies;
    int d_copy_cap;
    long long tick;
    // paged: draws by the counter RNG (pq_sample), on the device, grammars' masks too (pq_mask_logits)
    PqSampleRow *srows, *d_srows;
    int32_t *sids, *d_sids; // (2 scap): the drawn ids, then at scap (slp, d_slp) their log-probabilities
    float *slp, *d_slp, *d_slse; // (d_slse: the rows' log-sum-exp, pq_row_lse)
    unsigned char *sdev; // row r's id is the device's (else picked on the host from downloaded logits)
    int scap;
    uint32_t *mbits, *d_mbits; // the masks of the constrained rows, PQ_CONSTRAIN_WORDS(V) words each
    int32_t *mrows, *d_mrows;  // their rows
    int maskcap;
    PqGraphs *graphs; // PQ_CUDA_GRAPH=1 (paged, CUDA): decode steps as CUDA graphs (ops_graph.h), else NULL
    long long n_prefilled, n_generated, n_steps;
    long long n_chunks, n_mixed; // chunks of a prompt (or a resumed sequence) short of the whole; steps of
                                 // chunks beside decoding rows
    int prefix_cache;            // paged: prompts share published blocks of earlier prompts (PQ_PREFIX_CACHE)
    int chunking;                // paged: prompts longer than a step's budget left go in chunks (PQ_CHUNKED_PREFILL)
    int paged_prompts;           // paged: whole prompts are segments too, not rows [0, np) (PQ_PAGED_PROMPTS)
    long long n_prefix_hit;      // prompt positions shared so, not prefilled
    int blocks_peak;             // paged: most blocks held by sequences at once
    // PQ_GEN_PROFILE=1 (gen.h): this step's marks 0 .. pk-1, the phase each ends and the host's clock at each
    int prof, pk;
    unsigned char pph[PQ_DEV_MARKS];
    double phost[PQ_DEV_MARKS]; // ms
    double pt0;                 // the step's start, ms
    PqGenProfile pacc;
};

void pq_gen_params_init(PqGenParams *p) {
    memset(p, 0, sizeof *p);
    p->temperature = 1;
    p->top_p = 1;
    p->max_tokens = 256;
    p->constrain_n = 5;
}

// ---- sampling ----

// The k-th largest finite value of x (n), by selection on a copy.
static float kth_largest(const float *x, int n, int k, float *tmp) {
    int m = 0;
    for (int i = 0; i < n; i++)
        if (x[i] != -INFINITY) tmp[m++] = x[i];
    if (k >= m) return -INFINITY;
    int lo = 0, hi = m - 1, want = k - 1;
    while (lo < hi) { // quickselect for descending order
        float piv = tmp[(lo + hi) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (tmp[i] > piv) i++;
            while (tmp[j] < piv) j--;
            if (i <= j) {
                float t = tmp[i];
                tmp[i] = tmp[j], tmp[j] = t;
                i++, j--;
            }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else break;
    }
    return tmp[want];
}

void pq_gen_probs(const float *logits, int V, float temperature, int top_k, float top_p, float min_p, float *probs) {
    float mx = -INFINITY;
    // (the passes over the vocabulary in SIMD lanes: a row's sampling took as long as a tiny model's forward)
#pragma omp simd reduction(max : mx)
    for (int v = 0; v < V; v++) {
        float z = logits[v] / temperature;
        probs[v] = logits[v] == -INFINITY ? -INFINITY : z;
        mx = probs[v] > mx ? probs[v] : mx;
    }
    if (top_k > 0 && top_k < V) {
        float *tmp = pq_xmalloc((size_t)V * sizeof *tmp);
        float thr = kth_largest(probs, V, top_k, tmp);
        free(tmp);
        for (int v = 0; v < V; v++)
            if (probs[v] < thr) probs[v] = -INFINITY;
    }
    // one vectorized pass of exp (the whole vocabulary for every sequence every step), summed in f32 lanes a
    // chunk of 1024 at a time and the chunks in double, as pq_cpu_row_lse (a double sum kept it scalar)
    double sum = 0;
    for (int v0 = 0; v0 < V; v0 += 1024) {
        int v1 = v0 + 1024 < V ? v0 + 1024 : V;
        float part = 0;
#pragma omp simd reduction(+ : part)
        for (int v = v0; v < v1; v++) {
            float e = probs[v] == -INFINITY ? 0.0f : pq_exp_fast(probs[v] - mx);
            probs[v] = e;
            part += e;
        }
        sum += part;
    }
    float inv = (float)(1.0 / sum);
#pragma omp simd
    for (int v = 0; v < V; v++) probs[v] *= inv;
    if (top_p < 1) {
        int n = 0;
        int *idx = pq_xmalloc((size_t)V * 2 * sizeof *idx);
        uint32_t *key = pq_xmalloc((size_t)V * 2 * sizeof *key);
        for (int v = 0; v < V; v++)
            if (probs[v] > 0) idx[n++] = v;
        pq_sort_desc(idx, n, probs, key, key + V, idx + V); // most likely first, ties in id order
        // keep a token while the mass of the more likely ones is below p
        double before = 0, kept = 0;
        int i = 0;
        for (; i < n && (i == 0 || before < top_p); i++) {
            before += probs[idx[i]];
            kept += probs[idx[i]];
        }
        for (; i < n; i++) probs[idx[i]] = 0;
        for (int v = 0; v < V; v++) probs[v] = (float)(probs[v] / kept);
        free(idx);
        free(key);
    }
    if (min_p > 0) {
        float top = 0;
        for (int v = 0; v < V; v++) top = probs[v] > top ? probs[v] : top;
        double thr = (double)min_p * top, kept = 0;
        for (int v = 0; v < V; v++) {
            if (probs[v] < thr) probs[v] = 0;
            kept += probs[v];
        }
        for (int v = 0; v < V; v++) probs[v] = (float)(probs[v] / kept);
    }
}

int32_t pq_gen_sample(const float *logits, int V, const PqGenParams *p, PqRng *rng, float *work) {
    if (p->temperature <= 0) {
        int best = -1;
        for (int v = 0; v < V; v++)
            if (logits[v] != -INFINITY && (best < 0 || logits[v] > logits[best])) best = v;
        return best;
    }
    pq_gen_probs(logits, V, p->temperature, p->top_k, p->top_p, p->min_p, work);
    double u = pq_rng_uniform(rng), c = 0;
    int last = -1;
    for (int v = 0; v < V; v++) {
        if (work[v] <= 0) continue;
        c += work[v];
        last = v;
        if (u < c) return v;
    }
    return last; // rounding: the last possible token
}

// ---- setup ----

// Bound in CPU builds (backend_gen_cpu.c); NULL in CUDA ones.
#pragma weak pq_attention_kv_shared_forward

static void eos_add(int32_t *out, int *n, int max, double id) {
    if (id < 0 || id != (int32_t)id) return;
    for (int i = 0; i < *n; i++)
        if (out[i] == (int32_t)id) return;
    if (*n < max) out[(*n)++] = (int32_t)id;
}

int pq_gen_eos_ids(const char *dir, const PqTokenizer *tok, int32_t *out, int max) {
    static const char *const files[] = {"config.json", "generation_config.json", "tokenizer_config.json"};
    int n = 0;
    PqBuf p = {0};
    for (int f = 0; f < 3; f++) {
        pq_buf_clear(&p);
        pq_buf_printf(&p, "%s/%s", dir, files[f]);
        PqErr e;
        char *text = pq_read_file(p.data, NULL, &e);
        cJSON *o = text ? cJSON_Parse(text) : NULL;
        free(text);
        if (f < 2) {
            const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, "eos_token_id"), *it;
            if (cJSON_IsNumber(x)) eos_add(out, &n, max, x->valuedouble);
            else if (cJSON_IsArray(x))
                cJSON_ArrayForEach(it, x) if (cJSON_IsNumber(it)) eos_add(out, &n, max, it->valuedouble);
        } else if (tok) {
            const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, "eos_token");
            const char *s = cJSON_IsString(x) ? x->valuestring : pq_json_str(x, "content");
            if (s) eos_add(out, &n, max, pq_tokenizer_token_id(tok, s));
        }
        cJSON_Delete(o);
    }
    pq_buf_free(&p);
    return n;
}

// An environment variable that is 0 or 1, else def (said once if it is neither).
static int env_flag(const char *name, int def) {
    const char *s = getenv(name);
    if (!s || !*s) return def;
    if (!strcmp(s, "0") || !strcmp(s, "1")) return *s == '1';
    fprintf(stderr, "pq: %s=%s is neither 0 nor 1; using the default (%d)\n", name, s, def);
    return def;
}

// PQ_KV: "paged" or "flat" (read once); paged by default. On the CPU too: with its attention at the flat cache's
// speed (backend_paged_cpu.c) it holds a prompt's blocks once for its samples and shares the prefix cache's, and the
// GPU's host path is then what every CPU run and test drives; flat keeps a slot's whole context.
static int kv_paged(void) {
    static int mode = -1;
    if (mode < 0) {
        const char *s = getenv("PQ_KV");
        mode = !(s && !strcmp(s, "flat"));
        if (mode && s && *s && strcmp(s, "paged"))
            fprintf(stderr, "pq: PQ_KV=%s is neither paged nor flat; using the default (paged)\n", s);
    }
    return mode;
}

// PQ_KV_MEMORY: the paged cache's memory, a share of the free memory (0 < x <= 1) or a size (a number with K,
// M or G, powers of 1000, as pq reports GB); 0 when unset (the default share) or said and ignored when malformed
static double kv_memory(size_t avail, double share) {
    const char *s = getenv("PQ_KV_MEMORY");
    if (!s || !*s) return 0;
    char *end;
    double x = strtod(s, &end);
    int u = toupper((unsigned char)*end);
    double unit = u == 'K' ? 1e3 : u == 'M' ? 1e6 : u == 'G' ? 1e9 : 0;
    if (unit > 0 && (!end[1] || (toupper((unsigned char)end[1]) == 'B' && !end[2])) && x > 0) return x * unit;
    if (!*end && x > 0 && x <= 1) return x * (double)avail;
    fprintf(stderr, "pq: PQ_KV_MEMORY=%s is neither a share of the free memory (0 < x <= 1) nor a size (8G, 512M); "
                    "using %.0f%% of the free memory\n", s, 100 * share);
    return 0;
}

// A step's buffers a row of its batch: ensure_bufs's x, ln, q, k, v, att, tmp, gate, up and mlp in the
// activations' storage, lse, LoRA's xa (r wide) and the index arrays
static size_t step_row_bytes(const PqConfig *c, int r) {
    size_t qd = (size_t)c->NH * c->HS, kd = (size_t)c->KVH * c->HS, big = (size_t)c->C > qd ? (size_t)c->C : qd;
    return pq_act_bytes(2 * (size_t)c->C + 2 * qd + 2 * kd + big + 3 * (size_t)c->H) + 4 * ((size_t)c->NH + r + 8);
}

// Bytes of one layer's K (or V) pool, paged; one layer's K (or V) flat caches of every slot otherwise
static size_t kv_layer_bytes(const PqGen *g) {
    const PqConfig *c = &g->m->cfg;
    return g->paged ? (size_t)g->NB * BLOCK_T * c->KVH * c->HS * g->kelem
                    : (size_t)g->S * g->T * c->KVH * c->HS * sizeof(float);
}

// The paged cache: blocks for every slot at full context, at most what a
// share of the free memory holds (PQ_KV_MEMORY), at most PQ_KV_BLOCKS. The
// free memory less what the largest step will take beside the pool: twice
// its buffers (the backend converts the same rows beside them) and, on a
// GPU, 1 GB for the libraries' workspaces (an 80 GB GPU's 20% left over was
// about what a 7B's prefill steps took on an H200). bf16 on the GPU, except
// for an f32 model's: f32 there as on the CPU, so that an f32 model's
// greedy ids are the CPU build's.
static void paged_new(PqGen *g) {
    const PqConfig *c = &g->m->cfg;
    int cuda = !strcmp(pq_ops_backend(), "cuda");
    // 16-bit models keep bf16 keys and values on the device (as pq-logp's attention rounds them); f32 models
    // and the CPU keep f32, so that greedy ids match the CPU build's
    g->kdt = cuda && c->dtype != PQ_F32 ? PQ_BF16 : PQ_F32;
    g->kelem = g->kdt == PQ_BF16 ? 2 : 4;
    long want = (long)g->S * ((g->Tmax + BLOCK_T - 1) / BLOCK_T) + 1;
    size_t avail = pq_dev_free_bytes();
    size_t steps = 2 * step_row_bytes(c, g->m->lora ? g->m->lora->r : 1) * (size_t)(g->prefill_budget + g->S) +
                   (cuda ? (size_t)1 << 30 : 0);
    size_t room = avail > steps ? avail - steps : 0;
    double share = cuda ? 0.8 : 0.5, mem = kv_memory(room, share);
    if (avail && mem > (double)room) {
        fprintf(stderr, "pq: PQ_KV_MEMORY: %.2f GB asked, %.2f GB free beside the steps' buffers; taking %.0f%% of it\n",
                mem / 1e9, room / 1e9, 100 * share);
        mem = 0;
    }
    if (mem <= 0) mem = (double)room * share;
    if (avail && mem <= 0)
        fprintf(stderr, "pq: the KV cache: %.2f GB free, about what a step's buffers take: one block\n", avail / 1e9);
    // (the free memory unknown: every slot's full context)
    long nb = mem > 0 ? pq_kvpage_blocks_for_bytes((size_t)mem, c->L, c->KVH, c->HS, BLOCK_T, g->kelem)
                      : avail ? 0 : want;
    if (nb > want) nb = want;
    const char *cap = getenv("PQ_KV_BLOCKS");
    if (cap && atol(cap) > 0 && atol(cap) < nb) nb = atol(cap);
    if (nb < 1) nb = 1;
    if (nb > 1L << 30) nb = 1L << 30;
    g->NB = (int)nb;
    g->kp = pq_kvpage_new(g->NB, BLOCK_T);
    size_t bytes = (size_t)c->L * kv_layer_bytes(g);
    g->kpool = pq_dev_alloc(bytes);
    g->vpool = pq_dev_alloc(bytes);
}

PqGen *pq_gen_new(const PqModel *m, const PqTokenizer *tok, int slots, const int32_t *eos, int n_eos) {
    PqGen *g = pq_xcalloc(1, sizeof *g);
    const PqConfig *c = &m->cfg;
    g->m = m;
    g->tok = tok;
    if (tok) g->tt = pq_tok_text_build(tok, c->V);
    g->S = slots < 1 ? 1 : slots;
    g->Tmax = c->max_pos;
    g->T = T_INIT < g->Tmax ? T_INIT : g->Tmax;
    g->kc = pq_xcalloc((size_t)c->L, sizeof *g->kc);
    g->vc = pq_xcalloc((size_t)c->L, sizeof *g->vc);
    g->paged = kv_paged();
    int cpu = strcmp(pq_ops_backend(), "cuda") != 0;
    g->prefill_budget = cpu ? PREFILL_BUDGET : PREFILL_BUDGET_GPU;
    const char *pb = getenv("PQ_PREFILL_BUDGET");
    if (pb && atoi(pb) > 0) g->prefill_budget = atoi(pb);
    // at most 2^15: a step's chunk and decode rows are one grid dimension of CUDA's paged attention (< 2^16)
    if (g->prefill_budget > 1 << 15) g->prefill_budget = 1 << 15;
    // Chunks and the rest of a prompt after a prefix hit read their context
    // from the cache (pq_paged_prefill_forward: on the GPU cuDNN's attention
    // over the pool): on the CPU a small share of a step; on the GPU
    // unmeasured against whole prompts through the fused attention, so both
    // are off there unless asked for. PQ_PAGED_PROMPTS=1 sends whole prompts
    // that way too, a step's prompts in one call (unmeasured: off).
    g->chunking = g->paged && env_flag("PQ_CHUNKED_PREFILL", cpu);
    g->prefix_cache = g->paged && env_flag("PQ_PREFIX_CACHE", cpu);
    g->paged_prompts = g->paged && env_flag("PQ_PAGED_PROMPTS", 0);
    if (g->paged) paged_new(g);
    else {
        size_t per = kv_layer_bytes(g);
        for (int l = 0; l < c->L; l++) g->kc[l] = pq_dev_alloc(per), g->vc[l] = pq_dev_alloc(per);
    }
    g->slots = pq_xcalloc((size_t)g->S, sizeof *g->slots);
    for (int s = 0; s < g->S; s++) g->slots[s].work = pq_xmalloc((size_t)c->V * sizeof(float)), g->slots[s].base = s;
    g->eos = pq_xmalloc((size_t)(n_eos + 1) * sizeof *g->eos);
    memcpy(g->eos, eos, (size_t)n_eos * sizeof *eos);
    g->n_eos = n_eos;
    g->next_id = 1;
    g->shared = !g->paged && pq_attention_kv_shared_forward != NULL;
    g->graphs = g->paged ? pq_graphs_new() : NULL;
    g->prof = env_flag("PQ_GEN_PROFILE", 0);
    if (g->prof && 4 * c->L + 8 > PQ_DEV_MARKS) {
        fprintf(stderr, "pq: PQ_GEN_PROFILE: %d layers take more than the backend's %d marks; not profiled\n", c->L,
                PQ_DEV_MARKS);
        g->prof = 0;
    }
    return g;
}

static void free_bufs(PqGen *g) {
    float *f[] = {g->x, g->ln, g->q, g->k, g->v, g->att, g->tmp, g->gate, g->up, g->mlp, g->xa, g->h, g->logits,
                  g->lse};
    for (size_t i = 0; i < sizeof f / sizeof *f; i++) pq_dev_free(f[i]);
    pq_dev_free(g->d_ids);
    pq_dev_free(g->d_pos);
    pq_dev_free(g->d_slot);
    pq_dev_free(g->d_base);
    pq_dev_free(g->d_blen);
    free(g->ids);
    free(g->pos);
    free(g->slot_of);
    free(g->base_of);
    free(g->blen_of);
    free(g->h_logits);
    pq_dev_free(g->d_plen);
    free(g->plen);
    pq_dev_free(g->d_seg);
    free(g->seg);
}

static void req_free(Req *r) {
    free(r->prompt);
    for (int i = 0; i < r->p.n_stop; i++) free(r->stop[i]);
    free(r->stop);
    if (r->outs)
        for (int k = 0; k < r->n; k++) free(r->outs[k].ids), free(r->outs[k].text), free(r->outs[k].logp);
    free(r->outs);
    free(r->logits);
    free(r->bhash);
    free(r);
}

static void req_unlink(PqGen *g, Req *r) {
    if (r->prev) r->prev->next = r->next;
    else g->live = r->next;
    if (r->next) r->next->prev = r->prev;
    g->pending--;
}

void pq_gen_free(PqGen *g) {
    if (!g) return;
    if (g->prof) { // (gpu-check and the tools' users read this line)
        char *j = pq_gen_profile_json(&g->pacc);
        fprintf(stderr, "pq: PQ_GEN_PROFILE: %s\n", j);
        free(j);
    }
    while (g->live) {
        Req *r = g->live;
        req_unlink(g, r);
        if (g->paged) pq_kvseq_free(g->kp, &r->kv);
        if (r->cb) r->cb(r->user, NULL, r->n, "cancelled", 1);
        req_free(r);
    }
    for (int s = 0; s < g->S; s++) {
        pq_tokens_free(&g->slots[s].gen);
        pq_buf_free(&g->slots[s].text);
        free(g->slots[s].work);
        free(g->slots[s].lp);
        if (g->paged) pq_kvseq_free(g->kp, &g->slots[s].kv);
    }
    if (g->paged) {
        pq_kvpage_free(g->kp);
        pq_dev_free(g->kpool);
        pq_dev_free(g->vpool);
        pq_dev_free(g->d_tab);
        free(g->tab);
        pq_dev_free(g->pwork);
        free(g->copies);
        pq_dev_free(g->d_copies);
        free(g->srows);
        free(g->sids);
        free(g->sdev);
        pq_dev_free(g->d_srows);
        pq_dev_free(g->d_sids);
        pq_dev_free(g->d_slse);
        free(g->mbits);
        free(g->mrows);
        pq_dev_free(g->d_mbits);
        pq_dev_free(g->d_mrows);
    }
    pq_graphs_free(g->graphs);
    free(g->slots);
    for (int l = 0; l < g->m->cfg.L; l++) pq_dev_free(g->kc[l]), pq_dev_free(g->vc[l]);
    free(g->kc);
    free(g->vc);
    free_bufs(g);
    free(g->eos);
    pq_tok_text_free(g->tt);
    free(g);
}

void pq_gen_submit(PqGen *g, const int32_t *prompt, int n_prompt, int n, uint64_t seed, const PqGenParams *p,
                   PqGenDone cb, void *user) {
    Req *r = pq_xcalloc(1, sizeof *r);
    r->id = g->next_id++;
    r->P = n_prompt;
    r->prompt = pq_xmalloc((size_t)(n_prompt + 1) * sizeof *r->prompt);
    memcpy(r->prompt, prompt, (size_t)n_prompt * sizeof *prompt);
    r->n = n < 1 ? 1 : n;
    r->seed = seed;
    r->p = *p;
    if (r->p.max_tokens < 1) r->p.max_tokens = 1;
    r->stop = pq_xcalloc((size_t)p->n_stop + 1, sizeof *r->stop);
    for (int i = 0; i < p->n_stop; i++) {
        r->stop[i] = pq_xstrdup(p->stop[i]);
        int l = (int)strlen(r->stop[i]);
        r->stop_max = l > r->stop_max ? l : r->stop_max;
    }
    r->p.stop = (const char *const *)r->stop;
    if (!g->tok) r->p.constrain = PQ_CONSTRAIN_NONE, r->p.n_stop = 0;
    r->cb = cb;
    r->user = user;
    r->outs = pq_xcalloc((size_t)r->n, sizeof *r->outs);
    if (g->prefix_cache) {
        int nb = n_prompt / BLOCK_T;
        r->bhash = pq_xmalloc((size_t)(nb + 1) * sizeof *r->bhash);
        for (int b = 0; b < nb; b++)
            r->bhash[b] = pq_kvpage_hash(b ? r->bhash[b - 1] : 0, prompt + (size_t)b * BLOCK_T, BLOCK_T);
    }
    if (g->qtail) g->qtail->qnext = r;
    else g->qhead = r;
    g->qtail = r;
    r->next = g->live;
    if (g->live) g->live->prev = r;
    g->live = r;
    g->pending++;
}

int pq_gen_pending(const PqGen *g) { return g->pending; }

void pq_gen_counts(const PqGen *g, long long *prefilled, long long *generated, long long *steps) {
    if (prefilled) *prefilled = g->n_prefilled;
    if (generated) *generated = g->n_generated;
    if (steps) *steps = g->n_steps;
}

void pq_gen_stats(const PqGen *g, PqGenStats *st) {
    memset(st, 0, sizeof *st);
    st->prefilled = g->n_prefilled;
    st->generated = g->n_generated;
    st->steps = g->n_steps;
    st->chunks = g->n_chunks;
    st->mixed = g->n_mixed;
    st->prefix_hit = g->n_prefix_hit;
    st->kv_bytes = 2 * (size_t)g->m->cfg.L * kv_layer_bytes(g);
    if (g->paged) st->kv_blocks = g->NB, st->kv_block_tokens = BLOCK_T, st->kv_blocks_peak = g->blocks_peak;
}

// ---- the profile (PQ_GEN_PROFILE) ----

static const char *const prof_kinds[PQ_GP_KINDS] = {"decode", "prefill", "idle"};
static const char *const prof_phases[PQ_GP_PHASES] = {"sched", "upload", "embed", "qkv",    "attn", "o",
                                                      "mlp",   "head",   "graph", "sample", "pick"};

const char *pq_gen_profile_kind(int k) { return k >= 0 && k < PQ_GP_KINDS ? prof_kinds[k] : "?"; }
const char *pq_gen_profile_phase(int ph) { return ph >= 0 && ph < PQ_GP_PHASES ? prof_phases[ph] : "?"; }

int pq_gen_profile(const PqGen *g, PqGenProfile *p) {
    memset(p, 0, sizeof *p);
    if (!g->prof) return 0;
    *p = g->pacc;
    return 1;
}

char *pq_gen_profile_json(const PqGenProfile *p) {
    PqBuf b = {0};
    pq_buf_printf(&b, "{");
    for (int k = 0; k < PQ_GP_KINDS; k++) {
        const PqGenProfileKind *x = &p->k[k];
        pq_buf_printf(&b, "%s\"%s\":{\"steps\":%lld,\"rows\":%lld,\"wall_ms\":%.6f", k ? "," : "", prof_kinds[k],
                      x->steps, x->rows, x->wall_ms);
        for (int h = 0; h < 2; h++) {
            pq_buf_printf(&b, ",\"%s\":{", h ? "host_ms" : "ms");
            for (int ph = 0; ph < PQ_GP_PHASES; ph++)
                pq_buf_printf(&b, "%s\"%s\":%.6f", ph ? "," : "", prof_phases[ph], h ? x->host_ms[ph] : x->ms[ph]);
            pq_buf_printf(&b, "}");
        }
        pq_buf_printf(&b, "}");
    }
    pq_buf_printf(&b, "}");
    return b.data;
}

// The step's next mark, ending a phase.
static void prof_mark(PqGen *g, int phase) {
    if (!g->prof || g->pk >= PQ_DEV_MARKS) return;
    pq_dev_mark(g->pk);
    g->pph[g->pk] = (unsigned char)phase;
    g->phost[g->pk++] = pq_now() * 1e3;
}

static void prof_begin(PqGen *g) {
    if (!g->prof) return;
    g->pk = 0;
    g->pt0 = pq_now() * 1e3;
    prof_mark(g, 0); // (mark 0 ends no phase)
}

// The step's last mark (the host's work after the sampling), then its phases added to those of its kind: one
// wait for the device, on the last mark.
static void prof_end(PqGen *g, int kind, int rows) {
    if (!g->prof) return;
    prof_mark(g, PQ_GP_PICK);
    pq_dev_mark_ms(0, g->pk - 1);
    PqGenProfileKind *x = &g->pacc.k[kind];
    x->wall_ms += pq_now() * 1e3 - g->pt0;
    x->steps++;
    x->rows += rows;
    for (int i = 1; i < g->pk; i++) {
        double ms = pq_dev_mark_ms(i - 1, i);
        x->ms[g->pph[i]] += ms > 0 ? ms : 0;
        x->host_ms[g->pph[i]] += g->phost[i] - g->phost[i - 1];
    }
}

// ---- the cache ----

static size_t slot_floats(const PqGen *g, int T) { return (size_t)T * g->m->cfg.KVH * g->m->cfg.HS; }

// Room for `need` positions per slot (<= Tmax): doubles T, moving every slot.
static void grow(PqGen *g, int need) {
    if (need <= g->T) return;
    int T = g->T;
    while (T < need) T *= 2;
    if (T > g->Tmax) T = g->Tmax;
    size_t o = slot_floats(g, g->T), n = slot_floats(g, T);
    for (int l = 0; l < g->m->cfg.L; l++) {
        float *kc = pq_dev_alloc((size_t)g->S * n * 4), *vc = pq_dev_alloc((size_t)g->S * n * 4);
        for (int s = 0; s < g->S; s++) {
            pq_dev_copy(kc + s * n, g->kc[l] + s * o, o * 4);
            pq_dev_copy(vc + s * n, g->vc[l] + s * o, o * 4);
        }
        pq_dev_free(g->kc[l]);
        pq_dev_free(g->vc[l]);
        g->kc[l] = kc, g->vc[l] = vc;
    }
    g->T = T;
}

// Slot dst's positions [0, P) are slot src's: read from src where the
// backend shares (src is then kept until dst finishes), else copied in
// every layer.
static void copy_prefix(PqGen *g, int dst, int src, int P) {
    if (g->shared) {
        Slot *d = &g->slots[dst];
        d->base = src, d->blen = P;
        d->prefix = 0; // its own positions [0, P) hold no prompt
        g->slots[src].users++;
        return;
    }
    size_t per = slot_floats(g, g->T), row = slot_floats(g, 1);
    for (int l = 0; l < g->m->cfg.L; l++) {
        pq_dev_copy(g->kc[l] + dst * per, g->kc[l] + src * per, (size_t)P * row * 4);
        pq_dev_copy(g->vc[l] + dst * per, g->vc[l] + src * per, (size_t)P * row * 4);
    }
}

// A slot is done reading another's prompt.
static void unshare(PqGen *g, Slot *sl) {
    if (sl->blen > 0) g->slots[sl->base].users--;
    sl->base = (int)(sl - g->slots), sl->blen = 0;
}

// ---- samples ----

typedef struct Done {
    Req **r;
    int n, cap;
} Done;

static void done_push(Done *d, Req *r) {
    if (d->n == d->cap) {
        d->cap = d->cap ? 2 * d->cap : 8;
        d->r = pq_xrealloc(d->r, (size_t)d->cap * sizeof *d->r);
    }
    d->r[d->n++] = r;
}

static void finish(PqGen *g, Slot *sl, int why, int cut, Done *d) {
    Req *r = sl->r;
    PqGenOut *o = &r->outs[sl->k];
    o->n = (int)sl->gen.len;
    o->ids = pq_xmalloc((size_t)(o->n + 1) * sizeof *o->ids);
    if (o->n) memcpy(o->ids, sl->gen.data, (size_t)o->n * sizeof *o->ids);
    o->logp = pq_xmalloc((size_t)(o->n + 1) * sizeof *o->logp);
    if (o->n) memcpy(o->logp, sl->lp, (size_t)o->n * sizeof *o->logp);
    o->finish = why;
    if (g->tok) {
        if (cut >= 0) o->text = pq_xstrndup(sl->text.data ? sl->text.data : "", (size_t)cut);
        else o->text = pq_tokenizer_decode(g->tok, o->ids, (size_t)o->n, 1);
    }
    sl->state = SLOT_FREE;
    sl->r = NULL;
    unshare(g, sl);
    if (g->paged) pq_kvpage_release(g->kp, &sl->kv);
    if (++r->finished == r->n) done_push(d, r);
}

// Takes token t as slot sl's next: the end, or appended (and fed next step), with its log-probability
// sl->pick_lp.
static void take(PqGen *g, Slot *sl, int32_t t, Done *d) {
    Req *r = sl->r;
    int first = sl->gen.len == 0;
    if (t < 0) { // nothing fits the grammar
        finish(g, sl, PQ_FINISH_STOP, -1, d);
        return;
    }
    for (int k = 0; k < g->n_eos; k++)
        if (t == g->eos[k]) {
            finish(g, sl, PQ_FINISH_EOS, -1, d);
            return;
        }
    pq_tokens_push(&sl->gen, t);
    if ((int)sl->gen.len > sl->lp_cap) {
        sl->lp_cap = 2 * (int)sl->gen.len + 16;
        sl->lp = pq_xrealloc(sl->lp, (size_t)sl->lp_cap * sizeof *sl->lp);
    }
    sl->lp[sl->gen.len - 1] = sl->pick_lp;
    g->n_generated++;
    if (g->tt) {
        size_t from = sl->text.len;
        const char *s = first ? g->tt->first[t] : g->tt->text[t];
        size_t n = (size_t)(first ? g->tt->first_len[t] : g->tt->len[t]);
        pq_buf_append(&sl->text, s, n);
        if (r->p.constrain) pq_cstate_feed(&sl->cs, s, n);
        // a stop string ending in the new bytes
        size_t lo = from > (size_t)r->stop_max ? from - (size_t)r->stop_max : 0;
        for (int i = 0; i < r->p.n_stop; i++) {
            const char *hit = r->stop[i][0] ? memmem(sl->text.data + lo, sl->text.len - lo, r->stop[i],
                                                     strlen(r->stop[i]))
                                            : NULL;
            if (hit) {
                finish(g, sl, PQ_FINISH_STOP, (int)(hit - sl->text.data), d);
                return;
            }
        }
    }
    if ((int)sl->gen.len >= r->p.max_tokens || sl->len + 1 > g->Tmax) {
        finish(g, sl, PQ_FINISH_LENGTH, -1, d);
        return;
    }
    sl->next_tok = t;
    sl->state = SLOT_RUN;
}

// How slot sl's next token is drawn (paged): keyed by the request's seed,
// the sample number and the token's index, whatever the batch.
static PqSampleRow sample_row(const Slot *sl) {
    const PqGenParams *p = &sl->r->p;
    PqSampleRow row = {sl->r->seed, (uint32_t)sl->k, (uint32_t)sl->gen.len, p->temperature, p->top_p, p->min_p,
                       p->top_k};
    return row;
}

// The next token of slot sl from logits (V) (overwritten: masked, scaled), its log-probability under the
// model (the unmasked logits) in sl->pick_lp.
static int32_t pick_token(PqGen *g, Slot *sl, float *logits);
static int32_t pick(PqGen *g, Slot *sl, float *logits) {
    float lse;
    pq_cpu_row_lse(&lse, logits, 1, g->m->cfg.V);
    int32_t t = pick_token(g, sl, logits);
    pq_cpu_token_logp(&sl->pick_lp, logits, &t, &lse, 1, g->m->cfg.V); // (a token the mask kept: its logit intact)
    return t;
}
static int32_t pick_token(PqGen *g, Slot *sl, float *logits) {
    const Req *r = sl->r;
    if (r->p.constrain) {
        int left = r->p.max_tokens - (int)sl->gen.len;
        if (pq_constrain_mask(g->tt, &sl->cs, sl->gen.len == 0, left, g->eos, g->n_eos, logits) == 0) return -1;
    }
    if (g->paged) { // the device sampler's CPU twin: the same token for the same key
        PqSampleRow row = sample_row(sl);
        int32_t id;
        pq_cpu_sample(&id, logits, &row, 1, g->m->cfg.V);
        return id;
    }
    return pq_gen_sample(logits, g->m->cfg.V, &r->p, &sl->rng, sl->work);
}

static void start_sample(PqGen *g, Slot *sl, Req *r, int k) {
    sl->r = r;
    sl->age = g->tick++;
    sl->k = k;
    sl->prefix = r->id;
    sl->len = r->P;
    sl->gen.len = 0;
    pq_buf_clear(&sl->text);
    pq_rng_seed(&sl->rng, r->seed + (uint64_t)k);
    pq_cstate_init(&sl->cs, r->p.constrain, r->p.constrain_n);
}

static void fail_req(PqGen *g, Req *r, Done *d, const char *msg) {
    r->started = r->n;
    r->finished = r->n;
    free(r->logits);
    r->logits = NULL;
    // the message travels in the first output's text slot
    free(r->outs[0].text);
    r->outs[0].text = pq_xstrdup(msg);
    r->outs[0].finish = -1;
    done_push(d, r);
    (void)g;
}

// ---- the paged cache ----

static int blocks_for(int n) { return (n + BLOCK_T - 1) / BLOCK_T; }

static int running(const PqGen *g) {
    int n = 0;
    for (int s = 0; s < g->S; s++) n += g->slots[s].state == SLOT_RUN;
    return n;
}

// Free blocks less one for every running slot's next position.
static int kv_avail(const PqGen *g) { return pq_kvpage_free_blocks(g->kp) - running(g); }

// Slot sl gives its blocks back; it recomputes its prompt and tokens later.
static void preempt(PqGen *g, Slot *sl) {
    pq_kvpage_release(g->kp, &sl->kv);
    sl->state = SLOT_WAIT;
}

// Whether anything but slot sl holds blocks (that it will give back).
static int others_hold(const PqGen *g, const Slot *sl) {
    for (int s = 0; s < g->S; s++)
        if (&g->slots[s] != sl && g->slots[s].kv.nblk > 0) return 1;
    for (const Req *r = g->live; r; r = r->next)
        if (r->kv.nblk > 0) return 1;
    return 0;
}

// Room for every running slot's next position: the youngest are preempted
// until the free blocks suffice (a sample alone in a full cache ends there),
// then the copies on write of this step are collected.
static void paged_reserve(PqGen *g, Done *d) {
    for (;;) {
        int need = 0, nrun = 0;
        Slot *young = NULL;
        for (int s = 0; s < g->S; s++) {
            Slot *sl = &g->slots[s];
            if (sl->state != SLOT_RUN) continue;
            need += pq_kvpage_need(g->kp, &sl->kv, 1);
            nrun++;
            if (!young || sl->age > young->age) young = sl;
        }
        if (need <= pq_kvpage_free_blocks(g->kp)) break;
        if (nrun == 1 && !others_hold(g, young)) finish(g, young, PQ_FINISH_LENGTH, -1, d);
        else preempt(g, young);
    }
    g->ncopy = 0;
    for (int s = 0; s < g->S; s++) {
        Slot *sl = &g->slots[s];
        if (sl->state != SLOT_RUN) continue;
        PqKvCopy cp;
        PqErr e;
        if (pq_kvpage_append(g->kp, &sl->kv, 1, &cp, &e) < 0) abort(); // counted above
        if (cp.n) {
            if (g->ncopy == g->copy_cap) {
                g->copy_cap = g->copy_cap ? 2 * g->copy_cap : 16;
                g->copies = pq_xrealloc(g->copies, (size_t)g->copy_cap * sizeof *g->copies);
            }
            g->copies[g->ncopy++] = cp;
        }
    }
}

static int filling(const Slot *sl) { return sl->state == SLOT_PREFILL || sl->state == SLOT_RESUME; }

// The positions a prefilling or resuming slot computes in all: its prompt,
// and a resumed one's tokens after it.
static int fill_len(const Slot *sl) { return sl->r->P + (sl->state == SLOT_RESUME ? (int)sl->gen.len : 0); }

// Slot sl, its table empty, about to compute n positions (its prompt first):
// shares the blocks published for its prompt's leading full blocks, leaving
// at least its last position to compute. Returns the positions shared.
static int share_prefix(PqGen *g, Slot *sl, int n) {
    sl->pub = 0;
    if (!g->prefix_cache) return 0;
    int P = sl->r->P, lim = (n - 1 < P ? n - 1 : P) / BLOCK_T;
    while (sl->pub < lim && pq_kvpage_share(g->kp, &sl->kv, sl->r->bhash[sl->pub])) sl->pub++;
    g->n_prefix_hit += sl->pub * BLOCK_T;
    return sl->pub * BLOCK_T;
}

// Publishes the full blocks of slot sl's prompt among its first len
// positions (their keys are written by this step's forward, before any
// later step can share them).
static void publish(PqGen *g, Slot *sl) {
    if (!g->prefix_cache) return;
    int full = (sl->len < sl->r->P ? sl->len : sl->r->P) / BLOCK_T;
    for (; sl->pub < full; sl->pub++) pq_kvpage_publish(g->kp, sl->kv.table[sl->pub], sl->r->bhash[sl->pub]);
}

// Prompts (and recomputations) begun in earlier steps go on first, oldest
// first: their next chunks within the budget. Returns the positions taken.
static int continue_fills(PqGen *g) {
    int budget = 0;
    while (budget < g->prefill_budget) {
        Slot *old = NULL;
        for (int s = 0; s < g->S; s++) {
            Slot *sl = &g->slots[s];
            if (filling(sl) && sl->chunk == 0 && (!old || sl->age < old->age)) old = sl;
        }
        if (!old) break;
        int left = g->prefill_budget - budget, n = fill_len(old) - old->len;
        if (n < 1) abort(); // (a slot that has computed everything runs)
        old->chunk = n < left ? n : left;
        budget += old->chunk;
    }
    return budget;
}

// Nothing runs and a preempted slot cannot fit while requests keep their
// prompt's blocks for samples yet to start (which wait behind it): those
// prompts give their blocks back, to be prefilled again when their samples
// start. Returns whether any did.
static int drop_prompts(PqGen *g) {
    int n = 0;
    for (Req *r = g->live; r; r = r->next)
        if (r->prefilled && r->started < r->n && r->kv.nblk > 0) {
            pq_kvpage_release(g->kp, &r->kv);
            free(r->logits), r->logits = NULL;
            r->prefilled = 0;
            n++;
        }
    return n;
}

// Preempted slots take blocks again, oldest first, before anything new is
// admitted; what they recompute (a chunk of it when it is longer than the
// budget left) is added to budget, which is returned. *wait: one must still
// wait (nothing new is admitted then).
static int resume(PqGen *g, int budget, int *wait, Done *d) {
    *wait = 0;
    for (;;) {
        Slot *old = NULL;
        for (int s = 0; s < g->S; s++)
            if (g->slots[s].state == SLOT_WAIT && (!old || g->slots[s].age < old->age)) old = &g->slots[s];
        if (!old) return budget;
        int n = old->r->P + (int)old->gen.len;
        if (blocks_for(n) > kv_avail(g)) {
            if (running(g) == 0 && budget == 0 && !others_hold(g, old)) {
                finish(g, old, PQ_FINISH_LENGTH, -1, d); // longer than the whole cache
                continue;
            }
            if (running(g) == 0 && budget == 0 && drop_prompts(g)) continue; // else no one would move
            *wait = 1;
            return budget;
        }
        int left = g->prefill_budget - budget;
        if (g->chunking ? left <= 0 : budget > 0 && n > left) { // without chunks: a longer one goes alone
            *wait = 1;
            return budget;
        }
        PqErr e;
        old->state = SLOT_RESUME;
        old->len = old->from = share_prefix(g, old, n);
        if (pq_kvpage_append(g->kp, &old->kv, n - old->len, NULL, &e) < 0) abort(); // counted above
        old->chunk = g->chunking && n - old->len > left ? left : n - old->len;
        budget += old->chunk;
    }
}

// A free slot, the one holding request prefer's prompt if free; a slot whose
// prompt others read is only given to that request's samples.
static Slot *free_slot(PqGen *g, uint64_t prefer) {
    Slot *any = NULL;
    for (int s = 0; s < g->S; s++) {
        Slot *sl = &g->slots[s];
        if (sl->state != SLOT_FREE) continue;
        if (sl->prefix == prefer) return sl;
        if (!any && !sl->users) any = sl;
    }
    return any;
}

static int slot_with_prefix(PqGen *g, uint64_t id, const Slot *not) {
    for (int s = 0; s < g->S; s++)
        if (&g->slots[s] != not && g->slots[s].prefix == id) return s;
    return -1;
}

// Fills free slots from the queue, in order. Returns prompt tokens to prefill.
static int admit(PqGen *g, Done *d) {
    int budget = 0;
    if (g->paged) {
        int wait;
        budget = resume(g, continue_fills(g), &wait, d);
        if (wait) return budget;
    }
    while (g->qhead) {
        Req *r = g->qhead;
        if (!r->prefilled && !r->prefilling) {
            if (r->P < 1 || r->P >= g->Tmax) {
                char msg[160];
                snprintf(msg, sizeof msg, "the prompt has %d tokens; the model's context is %d", r->P, g->Tmax);
                g->qhead = r->qnext;
                if (!g->qhead) g->qtail = NULL;
                fail_req(g, r, d, msg);
                continue;
            }
            if (r->p.constrain) {
                PqCState cs;
                pq_cstate_init(&cs, r->p.constrain, r->p.constrain_n);
                if (pq_cstate_min_left(&cs) > r->p.max_tokens) {
                    char msg[160];
                    snprintf(msg, sizeof msg, "the constrained reply needs at least %d tokens; max tokens is %d",
                             pq_cstate_min_left(&cs), r->p.max_tokens);
                    g->qhead = r->qnext;
                    if (!g->qhead) g->qtail = NULL;
                    fail_req(g, r, d, msg);
                    continue;
                }
            }
            if (g->paged && blocks_for(r->P + 1) > pq_kvpage_blocks(g->kp)) {
                char msg[200];
                snprintf(msg, sizeof msg, "the prompt has %d tokens; the KV cache holds %d (PQ_KV_BLOCKS)", r->P,
                         pq_kvpage_blocks(g->kp) * BLOCK_T - 1);
                g->qhead = r->qnext;
                if (!g->qhead) g->qtail = NULL;
                fail_req(g, r, d, msg);
                continue;
            }
            int left = g->prefill_budget - budget;
            if (g->chunking ? left <= 0 : budget > 0 && r->P > left) break; // chunking: the rest in later steps
            if (g->paged && blocks_for(r->P) > kv_avail(g)) break;
            Slot *sl = free_slot(g, r->id);
            if (!sl) break;
            long need = (long)r->P + r->p.max_tokens;
            if (!g->paged) grow(g, need < g->Tmax ? (int)need : g->Tmax);
            start_sample(g, sl, r, r->started++);
            sl->state = SLOT_PREFILL;
            sl->len = sl->from = 0;
            if (g->paged) {
                PqErr e;
                sl->len = sl->from = share_prefix(g, sl, r->P);
                if (pq_kvpage_append(g->kp, &sl->kv, r->P - sl->len, NULL, &e) < 0) abort(); // counted above
            }
            sl->chunk = g->chunking && r->P - sl->len > left ? left : r->P - sl->len;
            r->prefilling = 1;
            budget += sl->chunk;
        }
        while (r->started < r->n) {
            if (g->paged && !r->prefilling && kv_avail(g) < 1) break;
            Slot *sl = free_slot(g, r->id);
            if (!sl) break;
            int had = sl->prefix == r->id;
            start_sample(g, sl, r, r->started++);
            if (r->prefilling) sl->state = SLOT_FOLLOW;
            else {
                if (g->paged) pq_kvpage_fork(g->kp, &r->kv, &sl->kv);
                else if (!had) {
                    // FIFO admission keeps the prompt in some slot until every sample has started
                    int src = slot_with_prefix(g, r->id, sl);
                    if (src < 0) abort();
                    copy_prefix(g, (int)(sl - g->slots), src, r->P);
                }
                sl->state = SLOT_RUN; // for take()
                float *row = pq_xmalloc((size_t)g->m->cfg.V * sizeof *row);
                memcpy(row, r->logits, (size_t)g->m->cfg.V * sizeof *row);
                take(g, sl, pick(g, sl, row), d);
                free(row);
            }
        }
        if (r->started < r->n) break;
        g->qhead = r->qnext;
        if (!g->qhead) g->qtail = NULL;
        r->qnext = NULL;
    }
    return budget;
}

// ---- the forward ----

// (step_row_bytes counts these a row, for the paged pool's room)
static void ensure_bufs(PqGen *g, int N, int M) {
    const PqConfig *c = &g->m->cfg;
    if (N > g->cap) {
        int cap = N > 2 * g->cap ? N : 2 * g->cap;
        float *keep_logits = g->logits, *keep_h = g->h, *keep_hl = g->h_logits;
        g->logits = g->h = g->h_logits = NULL;
        free_bufs(g);
        g->logits = keep_logits, g->h = keep_h, g->h_logits = keep_hl;
        size_t n = (size_t)cap, qd = (size_t)c->NH * c->HS, kd = (size_t)c->KVH * c->HS;
        size_t big = (size_t)c->C > qd ? (size_t)c->C : qd;
        int r = g->m->lora ? g->m->lora->r : 1;
        // activations in the process's storage (ops.h: PQ_ACTIVATIONS); lse and LoRA's xa f32
        g->x = pq_dev_alloc(pq_act_bytes(n * c->C));
        g->ln = pq_dev_alloc(pq_act_bytes(n * c->C));
        g->q = pq_dev_alloc(pq_act_bytes(n * qd));
        g->k = pq_dev_alloc(pq_act_bytes(n * kd));
        g->v = pq_dev_alloc(pq_act_bytes(n * kd));
        g->att = pq_dev_alloc(pq_act_bytes(n * qd));
        g->lse = pq_dev_alloc(n * (size_t)c->NH * 4);
        g->tmp = pq_dev_alloc(pq_act_bytes(n * big));
        g->gate = pq_dev_alloc(pq_act_bytes(n * c->H));
        g->up = pq_dev_alloc(pq_act_bytes(n * c->H));
        g->mlp = pq_dev_alloc(pq_act_bytes(n * c->H));
        g->xa = pq_dev_alloc(n * (size_t)r * 4);
        g->d_ids = pq_dev_alloc(n * 4);
        g->d_pos = pq_dev_alloc(n * 4);
        g->d_slot = pq_dev_alloc(n * 4);
        g->d_base = pq_dev_alloc(n * 4);
        g->d_blen = pq_dev_alloc(n * 4);
        g->ids = pq_xmalloc(n * 4);
        g->pos = pq_xmalloc(n * 4);
        g->slot_of = pq_xmalloc(n * 4);
        g->base_of = pq_xmalloc(n * 4);
        g->blen_of = pq_xmalloc(n * 4);
        g->d_plen = pq_dev_alloc(n * 4);
        g->plen = pq_xmalloc(n * 4);
        g->d_seg = pq_dev_alloc((n + 1) * 4);
        g->seg = pq_xmalloc((n + 1) * 4);
        g->cap = cap;
    }
    if (M > g->mcap) {
        pq_dev_free(g->h);
        pq_dev_free(g->logits);
        free(g->h_logits);
        g->mcap = M > 2 * g->mcap ? M : 2 * g->mcap;
        g->h = pq_dev_alloc(pq_act_bytes((size_t)g->mcap * c->C));
        g->logits = pq_dev_alloc((size_t)g->mcap * c->V * 4); // (f32 in either storage: ops_gen.h)
        g->h_logits = pq_xmalloc((size_t)g->mcap * c->V * 4);
    }
}

// out (N,oc) = inp (N,in) W_j^T + b_j + the LoRA term
static void lin(PqGen *g, int l, int j, float *out, const float *inp, int N) {
    const PqModel *m = g->m;
    int in, oc;
    pq_lin_shape(&m->cfg, j, &in, &oc);
    const PqLayerW *w = &m->layers[l];
    pq_linear_rows_forward(out, inp, &w->w[j], w->b[j], N, in, oc);
    const PqLora *lo = m->lora;
    if (lo && lo->ab[l * PQ_NLIN + j].A)
        pq_lora_forward(out, g->xa, inp, lo->ab[l * PQ_NLIN + j].A, lo->ab[l * PQ_NLIN + j].B, lo->scale, N, in, oc,
                        lo->r);
}

// whether layer l's product j has a LoRA pair (lin adds it; the fusions below take the bare products)
static int lora_on(const PqGen *g, int l, int j) {
    const PqLora *lo = g->m->lora;
    return lo && lo->ab[l * PQ_NLIN + j].A;
}

// x += layer l's product j of inp (down_proj beside a LoRA MLP): one fused product where it has no LoRA pair
static void residual_lin(PqGen *g, int l, int j, const float *inp, int N) {
    const PqConfig *c = &g->m->cfg;
    int in, oc;
    pq_lin_shape(c, j, &in, &oc);
    const PqLayerW *w = &g->m->layers[l];
    if (!lora_on(g, l, j)) {
        pq_linear_rows_add_forward(g->x, g->tmp, inp, &w->w[j], w->b[j], N, in, oc);
        return;
    }
    lin(g, l, j, g->tmp, inp, N);
    pq_residual_forward(g->x, g->tmp, (size_t)N * oc);
}

// Row i of a paged step: position pos of slot sl (its key written to the
// pool slot of pos, attending to positions <= pos through sl's table).
static void paged_row(PqGen *g, int i, const Slot *sl, int pos) {
    g->slot_of[i] = pq_kvseq_slot(&sl->kv, pos, BLOCK_T);
    g->plen[i] = pos + 1;
    if (i >= g->np && pos + 1 > g->max_len) g->max_len = pos + 1;
    int32_t *t = g->tab + (size_t)i * g->maxblk;
    memcpy(t, sl->kv.table, (size_t)sl->kv.nblk * sizeof *t);
    for (int b = sl->kv.nblk; b < g->maxblk; b++) t[b] = 0;
}

// A step of decode rows only as a CUDA graph (g->graphs): its N rows padded to pq_graph_rows(N) (rows that
// write no key, slot -1, and read one position of block 0, their logits ignored), its tables to
// pq_graph_blocks(maxblk) blocks a row, and max_len to all of them, so every value the step's kernels take by
// value is the key's. Audit of forward_kernels' launches for a replay:
// - N (every kernel's grid and bound), maxblk (the tables' stride), max_len (the paged attention's splits,
//   hence its grid and pwork's layout): the key; np is 0;
// - ids, positions, slots, lengths, tables: read from the device (d_ids, d_pos, d_slot, d_plen, d_tab), uploaded
//   before the replay; M = N and the logits' rows are the step's rows in order (rows NULL: no gather);
// - the buffers (x .. logits, pwork, the pools): fp, their pointers (ensure_bufs, the tables or pwork growing
//   moves them); pq_cuda_scratch's: its generation (graph.cu); the weights, LoRA and cuBLASLt workspace: fixed
//   for the generator's life; the layer's window: fixed per layer.
// Returns the key (0: the step runs eagerly) and pads N, M and the host arrays.
static uint64_t graph_pad(PqGen *g, int *N, const int *rows, int M) {
    int n = *N, nb = pq_graph_rows(n), mb = pq_graph_blocks(g->maxblk);
    if (!g->graphs || g->np || M != n || !nb) return 0;
    for (int i = 0; i < M; i++)
        if (rows[i] != i) return 0;
    // (pq_gen_step made room for nb rows and nb x mb table entries)
    for (int i = n - 1; i >= 0; i--) { // rows of maxblk entries -> rows of mb (mb >= maxblk: back to front)
        memmove(g->tab + (size_t)i * mb, g->tab + (size_t)i * g->maxblk, (size_t)g->maxblk * sizeof *g->tab);
        for (int b = g->maxblk; b < mb; b++) g->tab[(size_t)i * mb + b] = 0;
    }
    for (int i = n; i < nb; i++) {
        g->ids[i] = 0, g->pos[i] = 0, g->slot_of[i] = -1, g->plen[i] = 1;
        for (int b = 0; b < mb; b++) g->tab[(size_t)i * mb + b] = 0;
    }
    g->maxblk = mb;
    g->max_len = mb * BLOCK_T;
    *N = nb;
    return pq_graph_key(nb, mb);
}

typedef struct {
    PqGen *g;
    int N, M;
    const int *rows; // NULL: the logits' rows are rows 0 .. M-1
    int graph;       // a CUDA graph's step (graph_pad): the segments are not uploaded
    int prof;        // PQ_GEN_PROFILE's marks between the phases (never in a graph's step)
} FwdArgs;

static void forward_kernels(void *arg);

// ids/pos/slot_of (N) -> logits of the M rows in rows (M) into h_logits.
static void forward(PqGen *g, int N, const int *rows, int M) {
    const PqModel *m = g->m;
    const PqConfig *c = &m->cfg;
    uint64_t key = g->graphs ? graph_pad(g, &N, rows, M) : 0;
    pq_dev_upload(g->d_ids, g->ids, (size_t)N * 4);
    pq_dev_upload(g->d_pos, g->pos, (size_t)N * 4);
    pq_dev_upload(g->d_slot, g->slot_of, (size_t)N * 4);
    if (g->shared) {
        pq_dev_upload(g->d_base, g->base_of, (size_t)N * 4);
        pq_dev_upload(g->d_blen, g->blen_of, (size_t)N * 4);
    }
    if (g->paged) {
        pq_dev_upload(g->d_plen, g->plen, (size_t)N * 4);
        pq_dev_upload(g->d_tab, g->tab, (size_t)N * g->maxblk * 4);
        if (!key) pq_dev_upload(g->d_seg, g->seg, (size_t)(g->nseg + 1) * 4);
        if (g->ncopy) {
            if (g->ncopy > g->d_copy_cap) {
                pq_dev_free(g->d_copies);
                g->d_copy_cap = g->copy_cap;
                g->d_copies = pq_dev_alloc((size_t)g->d_copy_cap * sizeof *g->d_copies);
            }
            pq_dev_upload(g->d_copies, g->copies, (size_t)g->ncopy * sizeof *g->copies);
            pq_paged_copy_blocks(g->kpool, g->vpool, g->kdt, g->d_copies, g->ncopy, c->L, g->NB, BLOCK_T, c->KVH,
                                 c->HS);
            g->ncopy = 0;
        }
        size_t need = pq_paged_attention_work(N - g->np, c->NH, c->KVH, c->HS, g->max_len);
        if (need > g->pwork_n) {
            pq_dev_free(g->pwork);
            g->pwork = pq_dev_alloc(need * sizeof(float));
            g->pwork_n = need;
        }
    }
    prof_mark(g, PQ_GP_UPLOAD);
    FwdArgs a = {g, N, key ? N : M, key ? NULL : rows, key != 0, g->prof && !key};
    if (key) {
        const void *p[] = {g->x,      g->ln,     g->q,   g->k,    g->v,     g->att,   g->lse,  g->tmp,
                           g->gate,   g->up,     g->mlp, g->xa,   g->h,     g->logits, g->d_ids, g->d_pos,
                           g->d_slot, g->d_plen, g->d_tab, g->pwork, g->kpool, g->vpool};
        pq_graphs_run(g->graphs, key, pq_graph_fp(p, (int)(sizeof p / sizeof *p)), forward_kernels, &a);
        prof_mark(g, PQ_GP_GRAPH);
    } else forward_kernels(&a);
    g->n_steps++;
}

// embedding -> logits of forward's step (a CUDA graph's body where g->graphs: see graph_pad)
static void forward_kernels(void *arg) {
    const FwdArgs *a = arg;
    PqGen *g = a->g;
    int N = a->N, M = a->M;
    const int *rows = a->rows;
    const PqModel *m = g->m;
    const PqConfig *c = &m->cfg;
    size_t layer = g->paged ? kv_layer_bytes(g) : 0; // bytes of a layer's pool (paged)
    pq_embedding_forward(g->x, g->d_ids, &m->wte, N, c->C);
    if (a->prof) prof_mark(g, PQ_GP_EMBED);
    for (int l = 0; l < c->L; l++) {
        const PqLayerW *w = &m->layers[l];
        pq_rmsnorm_forward(g->ln, NULL, g->x, w->ln1, N, c->C, c->eps);
        if (c->qk_norm) { // Qwen3: RMSNorm over each head of q and k (tmp is free until o_proj)
            lin(g, l, PQ_Q, g->tmp, g->ln, N);
            pq_rmsnorm_forward(g->q, NULL, g->tmp, w->q_norm, N * c->NH, c->HS, c->eps);
            lin(g, l, PQ_K, g->tmp, g->ln, N);
            pq_rmsnorm_forward(g->k, NULL, g->tmp, w->k_norm, N * c->KVH, c->HS, c->eps);
            lin(g, l, PQ_V, g->v, g->ln, N);
        } else if (lora_on(g, l, PQ_Q) || lora_on(g, l, PQ_K) || lora_on(g, l, PQ_V)) {
            lin(g, l, PQ_Q, g->q, g->ln, N);
            lin(g, l, PQ_K, g->k, g->ln, N);
            lin(g, l, PQ_V, g->v, g->ln, N);
        } else { // q, k, v: one product of ln (PQ_DECODE_FUSE)
            float *const out[3] = {g->q, g->k, g->v};
            const float *const b[3] = {w->b[PQ_Q], w->b[PQ_K], w->b[PQ_V]};
            pq_linear_rows_group_forward(out, g->ln, &w->w[PQ_Q], b, 3, N, c->C);
        }
        if (a->prof) prof_mark(g, PQ_GP_QKV);
        if (g->paged) {
            void *kl = (char *)g->kpool + l * layer, *vl = (char *)g->vpool + l * layer;
            pq_paged_rope_append(g->q, g->k, g->v, g->d_pos, m->inv_freq, kl, vl, g->kdt, g->d_slot, N, c->NH,
                                 c->KVH, c->HS);
            // whole prompts: their keys are all in this step's rows, so the training path's fused attention
            // (cuDNN on the GPU) serves them, one prompt a call (its records start where positions restart);
            // the decode rows read the cache
            size_t qd = (size_t)c->NH * c->HS, kd = (size_t)c->KVH * c->HS;
            for (int i = 0; i < g->np;) {
                int n = 1;
                while (i + n < g->np && g->pos[i + n] != 0) n++;
                pq_attention_forward(pq_act_at(g->att, i * qd), g->lse + (size_t)i * c->NH, pq_act_at(g->q, i * qd),
                                     pq_act_at(g->k, i * kd), pq_act_at(g->v, i * kd), g->d_pos + i, n, c->NH, c->KVH,
                                     c->HS, pq_layer_window(c, l));
                i += n;
            }
            // the rest read the cache, a segment a slot: chunks after their context beside decoding rows (the
            // backend picks cuDNN or its paged kernel); a CUDA graph's step, decoding rows alone, the kernel
            if (N > g->np && !a->graph)
                pq_paged_prefill_forward(pq_act_at(g->att, g->np * qd), pq_act_at(g->q, g->np * qd), kl, vl, g->kdt,
                                         g->d_tab + (size_t)g->np * g->maxblk, g->maxblk, g->d_plen + g->np,
                                         g->d_seg, g->nseg, g->max_q, N - g->np, c->NH, c->KVH, c->HS, BLOCK_T,
                                         g->NB, pq_layer_window(c, l), g->max_len, g->pwork);
            else if (N > g->np)
                pq_paged_attention_forward(pq_act_at(g->att, g->np * qd), pq_act_at(g->q, g->np * qd), kl, vl, g->kdt,
                                           g->d_tab + (size_t)g->np * g->maxblk, g->maxblk, g->d_plen + g->np,
                                           N - g->np, c->NH, c->KVH, c->HS, BLOCK_T, pq_layer_window(c, l),
                                           g->max_len, g->pwork);
        } else { // the flat cache: rope, the append, then attention over each slot's keys (shared prompts' too)
            pq_rope_qk_forward(g->q, g->k, g->d_pos, m->inv_freq, N, c->NH, c->KVH, c->HS);
            pq_kv_append(g->kc[l], g->vc[l], g->k, g->v, g->d_slot, g->d_pos, N, c->KVH, c->HS, g->T);
            if (g->shared)
                pq_attention_kv_shared_forward(g->att, g->q, g->kc[l], g->vc[l], g->d_slot, g->d_pos, g->d_base,
                                               g->d_blen, N, c->NH, c->KVH, c->HS, g->T, pq_layer_window(c, l));
            else
                pq_attention_kv_forward(g->att, g->q, g->kc[l], g->vc[l], g->d_slot, g->d_pos, N, c->NH, c->KVH,
                                        c->HS, g->T, pq_layer_window(c, l));
        }
        if (a->prof) prof_mark(g, PQ_GP_ATTN);
        // o_proj, then the residual add and the norm after it in one op, as model.c: with bf16 activations the
        // norm reads the unrounded sum (pq-logp's rounding points); one launch fewer than an add and a norm
        lin(g, l, PQ_O, g->tmp, g->att, N);
        if (a->prof) prof_mark(g, PQ_GP_O);
        pq_residual_rmsnorm_forward(g->ln, NULL, g->x, g->tmp, w->ln2, N, c->C, c->eps);
        if (!lora_on(g, l, PQ_GATE) && !lora_on(g, l, PQ_UP) && !lora_on(g, l, PQ_DOWN)) {
            pq_mlp_forward(g->x, g->tmp, g->gate, g->up, g->mlp, g->ln, &w->w[PQ_GATE], &w->w[PQ_UP],
                           &w->w[PQ_DOWN], w->b[PQ_GATE], w->b[PQ_UP], w->b[PQ_DOWN], N, c->C, c->H);
        } else {
            lin(g, l, PQ_GATE, g->gate, g->ln, N);
            lin(g, l, PQ_UP, g->up, g->ln, N);
            pq_swiglu_forward(g->mlp, g->gate, g->up, N, c->H);
            residual_lin(g, l, PQ_DOWN, g->mlp, N);
        }
        if (a->prof) prof_mark(g, PQ_GP_MLP);
    }
    if (M == 0) return; // (paged: a step of prompt chunks alone, none the last of its prompt)
    for (int i = 0; rows && i < M; i++)
        pq_dev_copy(pq_act_at(g->tmp, (size_t)i * c->C), pq_act_at(g->x, (size_t)rows[i] * c->C),
                    pq_act_bytes(c->C));
    pq_rmsnorm_forward(g->h, NULL, rows ? g->tmp : g->x, m->ln_f, M, c->C, c->eps);
    pq_logits_forward(g->logits, g->h, &m->lm_head, M, c->C, c->V);
    if (a->prof) prof_mark(g, PQ_GP_HEAD);
}

static void call_back(PqGen *g, Done *d) {
    for (int i = 0; i < d->n; i++) {
        Req *r = d->r[i];
        req_unlink(g, r);
        if (g->paged) pq_kvseq_free(g->kp, &r->kv);
        if (r->outs[0].finish < 0) r->cb(r->user, NULL, r->n, r->outs[0].text, 0);
        else r->cb(r->user, r->outs, r->n, NULL, 0);
        req_free(r);
    }
    free(d->r);
}

int pq_gen_step(PqGen *g) {
    const PqConfig *c = &g->m->cfg;
    Done d = {0};
    long long gen0 = g->n_generated;
    prof_begin(g);
    int budget = admit(g, &d);
    if (g->paged) {
        paged_reserve(g, &d);
        int held = g->NB - pq_kvpage_free_blocks(g->kp);
        if (held > g->blocks_peak) g->blocks_peak = held;
    }
    int N = budget, M = 0;
    g->maxblk = 1;
    int ndec = 0, partial = 0;
    for (int s = 0; s < g->S; s++) {
        const Slot *sl = &g->slots[s];
        int st = sl->state;
        if (st == SLOT_RUN) N++, M++, ndec++;
        else if (filling(sl) && sl->chunk > 0) {
            if (sl->len + sl->chunk == fill_len(sl)) M++; // its last chunk: logits for its next token
            if (sl->chunk < fill_len(sl) - sl->from) g->n_chunks++, partial = 1;
        }
        if ((st == SLOT_RUN || filling(sl)) && sl->kv.nblk > g->maxblk) g->maxblk = sl->kv.nblk;
    }
    if (partial && ndec) g->n_mixed++;
    if (N > 0) {
        // room for a CUDA graph's bucket too: graph_pad pads the rows and the tables in place
        int rn = N, tb = g->maxblk;
        if (g->graphs && pq_graph_rows(N)) rn = pq_graph_rows(N), tb = pq_graph_blocks(g->maxblk);
        ensure_bufs(g, rn, rn > N ? rn : M);
        if (g->paged && (size_t)rn * tb > g->tab_cap) {
            g->tab_cap = 2 * (size_t)rn * tb;
            free(g->tab);
            pq_dev_free(g->d_tab);
            g->tab = pq_xmalloc(g->tab_cap * sizeof *g->tab);
            g->d_tab = pq_dev_alloc(g->tab_cap * sizeof *g->d_tab);
        }
        g->max_len = 0;
        // paged: the rows of chunks from position 0 first (g->np of them: their keys are all in this step's
        // rows, for the fused attention), then those of later chunks and one row per decoding slot (paged
        // attention, each row against its sequence's positions up to its own)
        g->np = 0;
        for (int s = 0; g->paged && s < g->S; s++) {
            const Slot *sl = &g->slots[s];
            if (filling(sl) && sl->len == 0 && !g->paged_prompts) g->np += sl->chunk;
        }
        int *rows = pq_xmalloc((size_t)M * sizeof *rows), *row_slot = pq_xmalloc((size_t)M * sizeof *row_slot);
        int i = 0, mi = 0;
        g->nseg = 0, g->max_q = 0;
        for (int pass = 0; pass < 1 + g->paged; pass++)
        for (int s = 0; s < g->S; s++) {
            Slot *sl = &g->slots[s];
            int fill = filling(sl) && sl->chunk > 0; // a prompt, or a preempted slot's prompt and tokens again
            if (g->paged && (pass == 0) != (fill && sl->len == 0 && !g->paged_prompts)) continue;
            if (pass == 1 && (fill || sl->state == SLOT_RUN)) { // a segment: this slot's rows of pass 1
                int n = fill ? sl->chunk : 1;
                g->seg[g->nseg++] = i - g->np;
                if (n > g->max_q) g->max_q = n;
            }
            if (fill) {
                int P = sl->r->P, n = fill_len(sl);
                for (int t = sl->len; t < sl->len + sl->chunk; t++, i++) {
                    g->ids[i] = t < P ? sl->r->prompt[t] : sl->gen.data[t - P], g->pos[i] = t;
                    g->slot_of[i] = s, g->base_of[i] = s, g->blen_of[i] = 0;
                    if (g->paged) paged_row(g, i, sl, t);
                }
                sl->len += sl->chunk; // (a resumed slot runs again after the passes: not a decode row of pass 1)
                g->n_prefilled += sl->chunk;
                publish(g, sl);
                sl->chunk = 0;
                if (sl->len == n) rows[mi] = i - 1, row_slot[mi++] = s;
            } else if (sl->state == SLOT_RUN) {
                g->ids[i] = sl->next_tok, g->pos[i] = sl->len, g->slot_of[i] = s;
                g->base_of[i] = sl->base, g->blen_of[i] = sl->blen;
                if (g->paged) paged_row(g, i, sl, sl->len);
                sl->len++;
                rows[mi] = i++, row_slot[mi++] = s;
            }
        }
        g->seg[g->nseg] = i - g->np;
        for (int s = 0; s < g->S; s++)
            if (g->slots[s].state == SLOT_RESUME && g->slots[s].len == fill_len(&g->slots[s]))
                g->slots[s].state = SLOT_RUN;
        prof_mark(g, PQ_GP_SCHED);
        forward(g, N, rows, M);
        if (!g->paged) pq_dev_download(g->h_logits, g->logits, (size_t)M * c->V * 4);
        else if (M > 0) { // every row drawn on the device; logits come back only for prompts and grammars
            if (M > g->scap) {
                free(g->srows), free(g->sids), free(g->sdev), pq_dev_free(g->d_srows), pq_dev_free(g->d_sids);
                pq_dev_free(g->d_slse);
                g->scap = M > 2 * g->scap ? M : 2 * g->scap;
                g->srows = pq_xmalloc((size_t)g->scap * sizeof *g->srows);
                g->sids = pq_xmalloc((size_t)g->scap * 2 * sizeof *g->sids);
                g->sdev = pq_xmalloc((size_t)g->scap);
                g->d_srows = pq_dev_alloc((size_t)g->scap * sizeof *g->d_srows);
                g->d_sids = pq_dev_alloc((size_t)g->scap * 2 * sizeof *g->d_sids);
                g->slp = (float *)(g->sids + g->scap), g->d_slp = (float *)(g->d_sids + g->scap);
                g->d_slse = pq_dev_alloc((size_t)g->scap * sizeof *g->d_slse);
            }
            // a constrained row past its prompt takes its grammar's mask where its logits are: only its id
            // comes back (a prompt's row keeps its logits for the samples that share them: picked on the host)
            int nm = 0;
            for (int r = 0; r < M; r++) {
                const Slot *sl = &g->slots[row_slot[r]];
                g->srows[r] = sample_row(sl);
                g->sdev[r] = !sl->r->p.constrain || sl->state != SLOT_PREFILL;
                if (sl->r->p.constrain && g->sdev[r]) nm++;
            }
            pq_row_lse(g->d_slse, g->logits, M, c->V); // the model's distribution, before any mask
            if (nm > 0) {
                size_t W = PQ_CONSTRAIN_WORDS(c->V);
                if (nm > g->maskcap) {
                    free(g->mbits), free(g->mrows), pq_dev_free(g->d_mbits), pq_dev_free(g->d_mrows);
                    g->maskcap = nm > 2 * g->maskcap ? nm : 2 * g->maskcap;
                    g->mbits = pq_xmalloc((size_t)g->maskcap * W * sizeof *g->mbits);
                    g->mrows = pq_xmalloc((size_t)g->maskcap * sizeof *g->mrows);
                    g->d_mbits = pq_dev_alloc((size_t)g->maskcap * W * sizeof *g->d_mbits);
                    g->d_mrows = pq_dev_alloc((size_t)g->maskcap * sizeof *g->d_mrows);
                }
                nm = 0;
                for (int r = 0; r < M; r++)
                    if (g->slots[row_slot[r]].r->p.constrain && g->sdev[r]) g->mrows[nm++] = r;
#pragma omp parallel for schedule(dynamic, 1) num_threads(pq_ops_threads())
                for (int k = 0; k < nm; k++) {
                    const Slot *sl = &g->slots[row_slot[g->mrows[k]]];
                    int left = sl->r->p.max_tokens - (int)sl->gen.len;
                    pq_constrain_bits(g->tt, &sl->cs, sl->gen.len == 0, left, g->eos, g->n_eos, g->mbits + k * W);
                }
                pq_dev_upload(g->d_mbits, g->mbits, (size_t)nm * W * sizeof *g->mbits);
                pq_dev_upload(g->d_mrows, g->mrows, (size_t)nm * sizeof *g->mrows);
                pq_mask_logits(g->logits, g->d_mbits, g->d_mrows, nm, c->V);
            }
            pq_dev_upload(g->d_srows, g->srows, (size_t)M * sizeof *g->srows);
            pq_sample(g->d_sids, g->logits, g->d_srows, M, c->V);
            pq_token_logp(g->d_slp, g->logits, g->d_sids, g->d_slse, M, c->V);
            // ids and their log-probabilities in one copy (a synchronising round trip each, else)
            pq_dev_download(g->sids, g->d_sids, ((size_t)g->scap + M) * sizeof *g->sids);
            for (int r = 0; r < M; r++) // a prompt's own row: its logits for the samples that follow (and its
                                        // pick, when constrained)
                if (g->slots[row_slot[r]].state == SLOT_PREFILL)
                    pq_dev_download(g->h_logits + (size_t)r * c->V, g->logits + (size_t)r * c->V, (size_t)c->V * 4);
        }
        prof_mark(g, PQ_GP_SAMPLE);
        // prefilled prompts: keep their logits; followers copy the prompt
        for (int r = 0; r < M; r++) {
            Slot *sl = &g->slots[row_slot[r]];
            if (sl->state != SLOT_PREFILL) continue;
            Req *q = sl->r;
            q->logits = pq_xmalloc((size_t)c->V * sizeof *q->logits);
            memcpy(q->logits, g->h_logits + (size_t)r * c->V, (size_t)c->V * sizeof *q->logits);
            q->prefilling = 0;
            q->prefilled = 1;
            sl->state = SLOT_RUN;
            if (g->paged) pq_kvpage_fork(g->kp, &sl->kv, &q->kv);
            for (int s = 0; s < g->S; s++) {
                Slot *f = &g->slots[s];
                if (f->state == SLOT_FOLLOW && f->r == q) {
                    if (g->paged) pq_kvpage_fork(g->kp, &q->kv, &f->kv);
                    else copy_prefix(g, s, row_slot[r], q->P);
                    f->state = SLOT_RUN;
                }
            }
        }
        // every running slot picks its next token (in parallel: own RNG each)
        int *who = pq_xmalloc((size_t)g->S * sizeof *who), nw = 0;
        float **lg = pq_xmalloc((size_t)g->S * sizeof *lg);
        for (int r = 0; r < M; r++) who[nw] = row_slot[r], lg[nw++] = g->h_logits + (size_t)r * c->V;
        for (int s = 0; s < g->S; s++) // followers: the shared prompt's logits, copied to their own row
            if (g->slots[s].state == SLOT_RUN && g->slots[s].len == g->slots[s].r->P && g->slots[s].gen.len == 0) {
                int seen = 0;
                for (int k = 0; k < nw; k++) seen |= who[k] == s;
                if (!seen) {
                    float *row = pq_xmalloc((size_t)c->V * sizeof *row);
                    memcpy(row, g->slots[s].r->logits, (size_t)c->V * sizeof *row);
                    who[nw] = s, lg[nw++] = row;
                }
            }
        int nrows = M;
#pragma omp parallel for schedule(dynamic, 1) num_threads(pq_ops_threads())
        for (int k = 0; k < nw; k++) {
            Slot *sl = &g->slots[who[k]];
            if (g->paged && k < nrows && g->sdev[k]) sl->pick = g->sids[k], sl->pick_lp = g->slp[k];
            else sl->pick = pick(g, sl, lg[k]);
        }
        for (int k = 0; k < nw; k++) take(g, &g->slots[who[k]], g->slots[who[k]].pick, &d);
        for (int k = nrows; k < nw; k++) free(lg[k]);
        free(who);
        free(lg);
        free(rows);
        free(row_slot);
    }
    // requests whose every sample has started no longer need their logits
    for (Req *r = g->live; r; r = r->next)
        if (r->prefilled && r->started == r->n) {
            free(r->logits), r->logits = NULL;
            if (g->paged) pq_kvpage_release(g->kp, &r->kv);
        }
    call_back(g, &d);
    prof_end(g, N == 0 ? PQ_GP_IDLE : budget > 0 ? PQ_GP_PREFILL : PQ_GP_DECODE, N);
    return (int)(g->n_generated - gen0);
}
