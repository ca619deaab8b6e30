// kvpage.c: the paged KV cache's block pool, tables and reference counts,
// and the hashes of the blocks a prefix cache shares (see kvpage.h).
#include "kvpage.h"

#include <stdlib.h>
#include <string.h>

struct PqKvPage {
    int nblocks, BT;
    int32_t *ref;  // [nblocks] sharers; 0 = free
    int32_t *free; // stack of free blocks without a hash
    int nfree;
    // the prefix cache: blocks registered under a hash (has), found through buckets of chains (hnext); free
    // ones among them wait in a list, least recently freed first (lprev, lnext; lhead .. ltail), to be
    // taken only when no block without a hash is left
    uint64_t *hash;
    uint8_t *has;
    int32_t *hnext, *bucket;
    uint64_t nbucket; // a power of 2
    int32_t *lprev, *lnext, lhead, ltail;
    int ncached; // free blocks with a hash
};

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

uint64_t pq_kvpage_hash(uint64_t parent, const int32_t *tokens, int n) {
    uint64_t h = mix64(parent + 0x9e3779b97f4a7c15ULL);
    for (int i = 0; i < n; i++) h = mix64(h ^ ((uint64_t)(uint32_t)tokens[i] | (uint64_t)(i + 1) << 32));
    return mix64(h ^ (uint64_t)n);
}

static int32_t *chain_of(PqKvPage *kp, uint64_t h) { return &kp->bucket[h & (kp->nbucket - 1)]; }

static int32_t find(PqKvPage *kp, uint64_t h) {
    for (int32_t b = *chain_of(kp, h); b >= 0; b = kp->hnext[b])
        if (kp->hash[b] == h) return b;
    return -1;
}

static void unhash(PqKvPage *kp, int32_t b) {
    if (!kp->has[b]) return;
    int32_t *p = chain_of(kp, kp->hash[b]);
    while (*p != b) p = &kp->hnext[*p];
    *p = kp->hnext[b];
    kp->has[b] = 0;
}

static void lru_push(PqKvPage *kp, int32_t b) {
    kp->lprev[b] = kp->ltail, kp->lnext[b] = -1;
    if (kp->ltail >= 0) kp->lnext[kp->ltail] = b;
    else kp->lhead = b;
    kp->ltail = b;
    kp->ncached++;
}

static void lru_remove(PqKvPage *kp, int32_t b) {
    if (kp->lprev[b] >= 0) kp->lnext[kp->lprev[b]] = kp->lnext[b];
    else kp->lhead = kp->lnext[b];
    if (kp->lnext[b] >= 0) kp->lprev[kp->lnext[b]] = kp->lprev[b];
    else kp->ltail = kp->lprev[b];
    kp->ncached--;
}

long pq_kvpage_blocks_for_bytes(size_t bytes, int L, int KVH, int HS, int BT, size_t elem) {
    size_t per = 2 * (size_t)L * BT * KVH * HS * elem;
    if (per == 0) return 0;
    size_t n = bytes / per;
    return n > INT32_MAX ? INT32_MAX : (long)n;
}

PqKvPage *pq_kvpage_new(int nblocks, int BT) {
    if (nblocks < 1 || BT < 1) return NULL;
    PqKvPage *kp = pq_xcalloc(1, sizeof *kp);
    kp->nblocks = nblocks;
    kp->BT = BT;
    kp->ref = pq_xcalloc((size_t)nblocks, sizeof *kp->ref);
    kp->free = pq_xmalloc((size_t)nblocks * sizeof *kp->free);
    // low block ids are handed out first
    for (int i = 0; i < nblocks; i++) kp->free[i] = nblocks - 1 - i;
    kp->nfree = nblocks;
    kp->hash = pq_xmalloc((size_t)nblocks * sizeof *kp->hash);
    kp->has = pq_xcalloc((size_t)nblocks, 1);
    kp->hnext = pq_xmalloc((size_t)nblocks * sizeof *kp->hnext);
    kp->lprev = pq_xmalloc((size_t)nblocks * sizeof *kp->lprev);
    kp->lnext = pq_xmalloc((size_t)nblocks * sizeof *kp->lnext);
    kp->lhead = kp->ltail = -1;
    kp->nbucket = 1;
    while (kp->nbucket < (uint64_t)nblocks) kp->nbucket *= 2;
    kp->bucket = pq_xmalloc(kp->nbucket * sizeof *kp->bucket);
    for (uint64_t i = 0; i < kp->nbucket; i++) kp->bucket[i] = -1;
    return kp;
}

void pq_kvpage_free(PqKvPage *kp) {
    if (!kp) return;
    free(kp->ref);
    free(kp->free);
    free(kp->hash);
    free(kp->has);
    free(kp->hnext);
    free(kp->lprev);
    free(kp->lnext);
    free(kp->bucket);
    free(kp);
}

int pq_kvpage_block_tokens(const PqKvPage *kp) { return kp->BT; }
int pq_kvpage_blocks(const PqKvPage *kp) { return kp->nblocks; }
int pq_kvpage_free_blocks(const PqKvPage *kp) { return kp->nfree + kp->ncached; }
int pq_kvpage_cached_blocks(const PqKvPage *kp) { return kp->ncached; }
int pq_kvpage_ref(const PqKvPage *kp, int32_t b) { return b >= 0 && b < kp->nblocks ? kp->ref[b] : 0; }

void pq_kvseq_init(PqKvSeq *s) { memset(s, 0, sizeof *s); }

// A free block: one without a hash, else the least recently freed cached one (its hash forgotten).
static int32_t take_block(PqKvPage *kp) {
    int32_t b;
    if (kp->nfree) b = kp->free[--kp->nfree];
    else {
        b = kp->lhead;
        lru_remove(kp, b);
        unhash(kp, b);
    }
    kp->ref[b] = 1;
    return b;
}

static void drop_block(PqKvPage *kp, int32_t b) {
    if (--kp->ref[b] > 0) return;
    if (kp->has[b]) lru_push(kp, b); // its contents kept for a later prefix
    else kp->free[kp->nfree++] = b;
}

static void table_room(PqKvSeq *s, int nblk) {
    if (nblk <= s->cap) return;
    int cap = s->cap ? 2 * s->cap : 8;
    while (cap < nblk) cap *= 2;
    s->table = pq_xrealloc(s->table, (size_t)cap * sizeof *s->table);
    s->cap = cap;
}

int pq_kvpage_need(const PqKvPage *kp, const PqKvSeq *s, int n) {
    long want = ((long)s->len + n + kp->BT - 1) / kp->BT;
    int need = want > s->nblk ? (int)(want - s->nblk) : 0;
    int partial = s->len % kp->BT != 0;
    if (n > 0 && partial && kp->ref[s->table[s->nblk - 1]] > 1) need++;
    return need;
}

int pq_kvpage_append(PqKvPage *kp, PqKvSeq *s, int n, PqKvCopy *copy, PqErr *e) {
    if (copy) copy->n = 0;
    if (n < 0) {
        pq_err(e, "kvpage: cannot append %d positions", n);
        return -1;
    }
    int need = pq_kvpage_need(kp, s, n);
    if (need > pq_kvpage_free_blocks(kp)) {
        pq_err(e, "kvpage: out of blocks: %d more needed, %d of %d free", need, pq_kvpage_free_blocks(kp),
               kp->nblocks);
        return -1;
    }
    if (n == 0) return 0;
    int off = s->len % kp->BT;
    if (off && kp->ref[s->table[s->nblk - 1]] > 1) { // copy on write
        int32_t src = s->table[s->nblk - 1], dst = take_block(kp);
        drop_block(kp, src);
        s->table[s->nblk - 1] = dst;
        if (!copy) abort(); // the caller said no copy could be needed
        *copy = (PqKvCopy){src, dst, off};
    }
    int want = (int)(((long)s->len + n + kp->BT - 1) / kp->BT);
    table_room(s, want);
    while (s->nblk < want) s->table[s->nblk++] = take_block(kp);
    s->len += n;
    return 0;
}

void pq_kvpage_fork(PqKvPage *kp, const PqKvSeq *src, PqKvSeq *dst) {
    pq_kvpage_release(kp, dst);
    table_room(dst, src->nblk);
    for (int i = 0; i < src->nblk; i++) {
        dst->table[i] = src->table[i];
        kp->ref[src->table[i]]++;
    }
    dst->nblk = src->nblk;
    dst->len = src->len;
}

void pq_kvpage_release(PqKvPage *kp, PqKvSeq *s) {
    // last block first: a prefix's first blocks, which every longer prefix needs, are reused last
    for (int i = s->nblk - 1; i >= 0; i--) drop_block(kp, s->table[i]);
    s->nblk = 0;
    s->len = 0;
}

void pq_kvpage_publish(PqKvPage *kp, int32_t b, uint64_t h) {
    if (b < 0 || b >= kp->nblocks || kp->ref[b] < 1 || kp->has[b] || find(kp, h) >= 0) return;
    kp->hash[b] = h;
    kp->has[b] = 1;
    int32_t *c = chain_of(kp, h);
    kp->hnext[b] = *c;
    *c = b;
}

int pq_kvpage_share(PqKvPage *kp, PqKvSeq *s, uint64_t h) {
    if (s->len % kp->BT) return 0;
    int32_t b = find(kp, h);
    if (b < 0) return 0;
    if (kp->ref[b] == 0) lru_remove(kp, b);
    kp->ref[b]++;
    table_room(s, s->nblk + 1);
    s->table[s->nblk++] = b;
    s->len += kp->BT;
    return 1;
}

void pq_kvseq_free(PqKvPage *kp, PqKvSeq *s) {
    pq_kvpage_release(kp, s);
    free(s->table);
    pq_kvseq_init(s);
}

int pq_kvpage_tables(PqKvSeq *const *seqs, int N, int32_t *tables, int maxblk, int32_t *len) {
    int mx = 0;
    for (int i = 0; i < N; i++) {
        const PqKvSeq *s = seqs[i];
        int32_t *t = tables + (size_t)i * maxblk;
        if (s->nblk) memcpy(t, s->table, (size_t)s->nblk * sizeof *t);
        for (int b = s->nblk; b < maxblk; b++) t[b] = 0;
        len[i] = s->len;
        mx = s->len > mx ? s->len : mx;
    }
    return mx;
}
