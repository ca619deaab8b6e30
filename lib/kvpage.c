// kvpage.c: the paged KV cache's block pool, tables and reference counts
// (see kvpage.h).
#include "kvpage.h"

#include <stdlib.h>
#include <string.h>

struct PqKvPage {
    int nblocks, BT;
    int32_t *ref;  // [nblocks] sharers; 0 = free
    int32_t *free; // stack of free blocks
    int nfree;
};

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
    return kp;
}

void pq_kvpage_free(PqKvPage *kp) {
    if (!kp) return;
    free(kp->ref);
    free(kp->free);
    free(kp);
}

int pq_kvpage_block_tokens(const PqKvPage *kp) { return kp->BT; }
int pq_kvpage_blocks(const PqKvPage *kp) { return kp->nblocks; }
int pq_kvpage_free_blocks(const PqKvPage *kp) { return kp->nfree; }
int pq_kvpage_ref(const PqKvPage *kp, int32_t b) { return b >= 0 && b < kp->nblocks ? kp->ref[b] : 0; }

void pq_kvseq_init(PqKvSeq *s) { memset(s, 0, sizeof *s); }

static int32_t take_block(PqKvPage *kp) {
    int32_t b = kp->free[--kp->nfree];
    kp->ref[b] = 1;
    return b;
}

static void drop_block(PqKvPage *kp, int32_t b) {
    if (--kp->ref[b] == 0) kp->free[kp->nfree++] = b;
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
    if (need > kp->nfree) {
        pq_err(e, "kvpage: out of blocks: %d more needed, %d of %d free", need, kp->nfree, kp->nblocks);
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
    for (int i = 0; i < s->nblk; i++) drop_block(kp, s->table[i]);
    s->nblk = 0;
    s->len = 0;
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
