// tok_bpe.c: the BPE model, in llama.cpp's two explicit algorithms:
// SentencePiece-style (characters, merge by rank, <0xNN> byte fallback) and
// byte-level (GPT-2's byte map); both merge with a priority queue.
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

// ---- hash maps ---------------------------------------------------------------

static void strmap_grow(TokStrMap *m) {
    size_t ncap = m->cap ? 2 * m->cap : 1024;
    TokStrMap g = {pq_xcalloc(ncap, sizeof *g.slot), 0, ncap};
    for (size_t i = 0; i < m->cap; i++)
        if (m->slot[i].key) tok_strmap_put(&g, m->slot[i].key, m->slot[i].len, m->slot[i].val);
    tok_strmap_free(m);
    *m = g;
}

void tok_strmap_put(TokStrMap *m, const char *key, size_t len, int32_t val) {
    if (2 * (m->n + 1) > m->cap) strmap_grow(m);
    size_t i = pq_hash_bytes(key, len) & (m->cap - 1);
    while (m->slot[i].key) {
        TokStrSlot *s = &m->slot[i];
        if (s->len == len && !memcmp(s->key, key, len)) {
            s->val = val;
            return;
        }
        i = (i + 1) & (m->cap - 1);
    }
    m->slot[i] = (TokStrSlot){key, (uint32_t)len, val};
    m->n++;
}

int32_t tok_strmap_get(const TokStrMap *m, const char *key, size_t len) {
    if (!m->cap) return -1;
    size_t i = pq_hash_bytes(key, len) & (m->cap - 1);
    while (m->slot[i].key) {
        const TokStrSlot *s = &m->slot[i];
        if (s->len == len && !memcmp(s->key, key, len)) return s->val;
        i = (i + 1) & (m->cap - 1);
    }
    return -1;
}

void tok_strmap_free(TokStrMap *m) {
    free(m->slot);
    memset(m, 0, sizeof *m);
}

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static void mergemap_grow(TokMergeMap *m) {
    size_t ncap = m->cap ? 2 * m->cap : 1024;
    TokMergeMap g = {pq_xmalloc(ncap * sizeof *g.slot), 0, ncap};
    for (size_t i = 0; i < ncap; i++) g.slot[i].key = UINT64_MAX;
    for (size_t i = 0; i < m->cap; i++) {
        TokMergeSlot s = m->slot[i];
        if (s.key != UINT64_MAX) tok_mergemap_put(&g, (int32_t)(s.key >> 32), (int32_t)(uint32_t)s.key, s.rank, s.new_id);
    }
    tok_mergemap_free(m);
    *m = g;
}

void tok_mergemap_put(TokMergeMap *m, int32_t a, int32_t b, int32_t rank, int32_t new_id) {
    if (2 * (m->n + 1) > m->cap) mergemap_grow(m);
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = mix64(k) & (m->cap - 1);
    while (m->slot[i].key != UINT64_MAX) {
        if (m->slot[i].key == k) {
            m->slot[i].rank = rank, m->slot[i].new_id = new_id;
            return;
        }
        i = (i + 1) & (m->cap - 1);
    }
    m->slot[i] = (TokMergeSlot){k, rank, new_id};
    m->n++;
}

int tok_mergemap_get(const TokMergeMap *m, int32_t a, int32_t b, int32_t *rank, int32_t *new_id) {
    if (!m->cap) return 0;
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = mix64(k) & (m->cap - 1);
    while (m->slot[i].key != UINT64_MAX) {
        if (m->slot[i].key == k) {
            *rank = m->slot[i].rank, *new_id = m->slot[i].new_id;
            return 1;
        }
        i = (i + 1) & (m->cap - 1);
    }
    return 0;
}

void tok_mergemap_free(TokMergeMap *m) {
    free(m->slot);
    memset(m, 0, sizeof *m);
}

// ---- the merge queue -----------------------------------------------------------

typedef struct Sym {
    int32_t id;
    int prev, next; // -1 none
    int dead;
} Sym;

typedef struct Cand { // a possible merge of sym[pos] with its right neighbour
    int32_t rank, pos, new_id;
} Cand;

struct TokScratch {
    Sym *sym;
    int n, cap;
    Cand *heap;
    int hn, hcap;
    PqBuf tmp;
};

TokScratch *tok_scratch_new(void) { return pq_xcalloc(1, sizeof(TokScratch)); }

void tok_scratch_free(TokScratch *s) {
    if (!s) return;
    free(s->sym);
    free(s->heap);
    pq_buf_free(&s->tmp);
    free(s);
}

static void sym_push(TokScratch *s, int32_t id) {
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        s->sym = pq_xrealloc(s->sym, (size_t)s->cap * sizeof *s->sym);
    }
    s->sym[s->n] = (Sym){id, s->n - 1, -1, 0};
    if (s->n) s->sym[s->n - 1].next = s->n;
    s->n++;
}

// Lower rank first, then the leftmost position (tokenizers' Merge ordering).
static int cand_before(Cand a, Cand b) { return a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos; }

static void heap_push(TokScratch *s, Cand c) {
    if (s->hn == s->hcap) {
        s->hcap = s->hcap ? 2 * s->hcap : 64;
        s->heap = pq_xrealloc(s->heap, (size_t)s->hcap * sizeof *s->heap);
    }
    int i = s->hn++;
    while (i > 0) {
        int p = (i - 1) / 2;
        if (!cand_before(c, s->heap[p])) break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = c;
}

static Cand heap_pop(TokScratch *s) {
    Cand top = s->heap[0], last = s->heap[--s->hn];
    int i = 0;
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        Cand best = last;
        if (l < s->hn && cand_before(s->heap[l], best)) m = l, best = s->heap[l];
        if (r < s->hn && cand_before(s->heap[r], best)) m = r;
        if (m == i) break;
        s->heap[i] = s->heap[m];
        i = m;
    }
    if (s->hn) s->heap[i] = last;
    return top;
}

static void push_pair(const PqTokenizer *tok, TokScratch *s, int pos) {
    int nx = s->sym[pos].next;
    int32_t rank, new_id;
    if (nx >= 0 && tok_mergemap_get(&tok->merges, s->sym[pos].id, s->sym[nx].id, &rank, &new_id))
        heap_push(s, (Cand){rank, pos, new_id});
}

// Applies the merges by rank to s->sym[0..n) (tokenizers' Word::merge_all)
// and appends the surviving ids.
static void bpe_merge(const PqTokenizer *tok, TokScratch *s, PqTokens *out) {
    Sym *y = s->sym;
    s->hn = 0;
    for (int i = 0; i + 1 < s->n; i++) push_pair(tok, s, i);
    while (s->hn) {
        Cand c = heap_pop(s);
        if (y[c.pos].dead || y[c.pos].next < 0) continue;
        int nx = y[c.pos].next;
        int32_t rank, new_id;
        // a stale entry: the pair changed since it was queued
        if (!tok_mergemap_get(&tok->merges, y[c.pos].id, y[nx].id, &rank, &new_id) || new_id != c.new_id) continue;
        y[c.pos].id = new_id;
        y[nx].dead = 1;
        y[c.pos].next = y[nx].next;
        if (y[nx].next >= 0) y[y[nx].next].prev = c.pos;
        if (y[c.pos].prev >= 0) push_pair(tok, s, y[c.pos].prev);
        push_pair(tok, s, c.pos);
    }
    for (int i = 0; i < s->n; i++)
        if (!y[i].dead) pq_tokens_push(out, y[i].id);
}

// ---- the two algorithms -----------------------------------------------------------

// An initial symbol (one character, or one mapped byte) that is not in the
// vocabulary: its UTF-8 bytes as <0xNN> tokens when byte_fallback has them
// all (returns 1), else it becomes (part of) an unknown token.
static int byte_fallback(const PqTokenizer *tok, TokScratch *s, const char *c, int clen) {
    if (!tok->byte_fallback) return 0;
    int32_t ids[4];
    for (int k = 0; k < clen; k++) {
        int32_t id;
        if (!tok->byte_level) {
            id = tok->byte_id[(unsigned char)c[k]];
        } else {
            char name[8];
            snprintf(name, sizeof name, "<0x%02X>", (unsigned char)c[k]);
            id = tok_strmap_get(&tok->vocab, name, 6);
        }
        if (id < 0) return 0;
        ids[k] = id;
    }
    for (int k = 0; k < clen; k++) sym_push(s, ids[k]);
    return 1;
}

// tokenizers' unknown-token handling: consecutive unknowns fuse into one
// <unk> with fuse_unk, and a pending <unk> is only written out when a known
// symbol follows (so byte-fallback symbols may come before it, as there).
static void unknown(const PqTokenizer *tok, TokScratch *s, int *pending) {
    if (tok->unk_id < 0) return; // dropped, as tokenizers does without unk_token
    if (*pending && !tok->fuse_unk) sym_push(s, tok->unk_id);
    *pending = 1;
}

void tok_bpe_word(const PqTokenizer *tok, TokScratch *s, const char *w, size_t n, PqTokens *out) {
    if (n == 0) return;
    const uint32_t *map = tok->byte_char;
    if (tok->ignore_merges) { // the whole word, when it is a token
        const char *key = w;
        size_t klen = n;
        if (tok->byte_level) {
            pq_buf_clear(&s->tmp);
            for (size_t i = 0; i < n; i++) {
                char c[4];
                pq_buf_append(&s->tmp, c, (size_t)tok_utf8_encode(map[(unsigned char)w[i]], c));
            }
            key = s->tmp.data, klen = s->tmp.len;
        }
        int32_t id = tok_strmap_get(&tok->vocab, key, klen);
        if (id >= 0) {
            pq_tokens_push(out, id);
            return;
        }
    }
    s->n = 0;
    int pending = 0;
    if (tok->byte_level) { // byte-level: one symbol per byte, through GPT-2's byte map
        for (size_t i = 0; i < n; i++) {
            int32_t id = tok->byte_id[(unsigned char)w[i]];
            if (id >= 0) {
                if (pending) sym_push(s, tok->unk_id), pending = 0;
                sym_push(s, id);
                continue;
            }
            char c[4];
            int clen = tok_utf8_encode(map[(unsigned char)w[i]], c);
            if (!byte_fallback(tok, s, c, clen)) unknown(tok, s, &pending);
        }
    } else { // SentencePiece-style: one symbol per character, <0xNN> byte fallback
        size_t i = 0;
        while (i < n) {
            int k = tok_utf8_len(w, n, i);
            if (k == 0) k = 1; // cannot happen: input is valid UTF-8
            int32_t id = tok_strmap_get(&tok->vocab, w + i, (size_t)k);
            if (id >= 0) {
                if (pending) sym_push(s, tok->unk_id), pending = 0;
                sym_push(s, id);
            } else if (!byte_fallback(tok, s, w + i, k)) {
                unknown(tok, s, &pending);
            }
            i += (size_t)k;
        }
    }
    if (pending) sym_push(s, tok->unk_id);
    bpe_merge(tok, s, out);
}
