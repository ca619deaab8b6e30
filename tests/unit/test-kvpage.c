// test-kvpage: the paged KV cache's bookkeeping (lib/kvpage.c) against a
// plain model: every sequence as its own array of token values. Random
// sequences of appends, forks, releases on a small pool write values into
// a simulated pool through the block tables (carrying out the copies on
// write append asks for); after each operation every sequence must read
// back its model's values, each block's reference count must equal the
// table entries that hold it, and the free list the blocks no one holds.
// Also: sizing from bytes, fork sharing, copy on write of a partial block
// only, no copy for a full one, out of blocks failing cleanly. The prefix
// cache: the random runs publish full blocks under the hash of their values
// so far and start sequences from the published prefix of a live or a
// released sequence (whose free blocks keep their values until reused),
// which must read back that sequence's values; a hash is forgotten when its
// block is reused, the free blocks without a hash are used first and the
// cached ones least recently freed first.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kvpage.h"
#include "util.h"

#define NSEQ 12

typedef struct Model {
    int *v; // values at positions 0..n-1
    int n, cap;
} Model;

static int *pool; // (nblocks, BT) values
static long seen[5]; // appends out of blocks, forks, copies on write, blocks shared from a live sequence and
                     // from a released one (over every random run)

static void do_copy(const PqKvCopy *c, int BT) {
    if (c->n > 0) memcpy(pool + (size_t)c->dst * BT, pool + (size_t)c->src * BT, (size_t)c->n * sizeof *pool);
}

// appends n fresh values to seq s and its model; -1 when out of blocks
static int append(PqKvPage *kp, PqKvSeq *s, Model *m, int n, int *next_val) {
    int BT = pq_kvpage_block_tokens(kp);
    PqKvCopy c;
    PqErr e;
    int len0 = s->len;
    if (pq_kvpage_append(kp, s, n, &c, &e) < 0) return -1;
    do_copy(&c, BT);
    for (int i = 0; i < n; i++) {
        int val = (*next_val)++;
        pool[pq_kvseq_slot(s, len0 + i, BT)] = val;
        if (m->n == m->cap) m->cap = m->cap ? 2 * m->cap : 16, m->v = pq_xrealloc(m->v, (size_t)m->cap * sizeof *m->v);
        m->v[m->n++] = val;
    }
    return 0;
}

static void check_all(PqKvPage *kp, PqKvSeq *seq, Model *mod, const char *what) {
    int NB = pq_kvpage_blocks(kp), BT = pq_kvpage_block_tokens(kp);
    int *cnt = pq_xcalloc((size_t)NB, sizeof *cnt);
    int bad = 0;
    for (int s = 0; s < NSEQ; s++) {
        if (seq[s].len != mod[s].n) bad++;
        if (seq[s].nblk != (seq[s].len + BT - 1) / BT) bad++;
        for (int b = 0; b < seq[s].nblk; b++) cnt[seq[s].table[b]]++;
        for (int p = 0; p < seq[s].len && p < mod[s].n; p++)
            if (pool[pq_kvseq_slot(&seq[s], p, BT)] != mod[s].v[p]) bad++;
    }
    int used = 0;
    for (int b = 0; b < NB; b++) {
        if (pq_kvpage_ref(kp, b) != cnt[b]) bad++;
        used += cnt[b] > 0;
    }
    if (used + pq_kvpage_free_blocks(kp) != NB) bad++;
    CHECK(bad == 0, "%s: %d mismatches (used %d free %d of %d)", what, bad, used, pq_kvpage_free_blocks(kp), NB);
    free(cnt);
}

static void test_basic(void) {
    CHECK(pq_kvpage_blocks_for_bytes(2 * 32 * 16 * 8 * 128 * 2 * 10 + 5, 32, 8, 128, 16, 2) == 10, "sizing");
    CHECK(pq_kvpage_blocks_for_bytes(100, 32, 8, 128, 16, 2) == 0, "sizing: nothing fits");
    CHECK(pq_kvpage_new(0, 16) == NULL && pq_kvpage_new(4, 0) == NULL, "bad pool sizes");
    PqKvPage *kp = pq_kvpage_new(6, 4);
    PqKvSeq a, b, c;
    pq_kvseq_init(&a), pq_kvseq_init(&b), pq_kvseq_init(&c);
    PqKvCopy cp;
    PqErr e;
    CHECK(pq_kvpage_append(kp, &a, 6, &cp, &e) == 0 && a.nblk == 2 && cp.n == 0, "prompt of 6 in 2 blocks");
    CHECK(pq_kvpage_free_blocks(kp) == 4, "4 free");
    pq_kvpage_fork(kp, &a, &b);
    pq_kvpage_fork(kp, &a, &c);
    CHECK(b.len == 6 && b.table[0] == a.table[0] && b.table[1] == a.table[1], "fork shares the table");
    CHECK(pq_kvpage_ref(kp, a.table[0]) == 3 && pq_kvpage_free_blocks(kp) == 4, "fork takes no block");
    int32_t last = a.table[1];
    CHECK(pq_kvpage_need(kp, &b, 1) == 1, "one block for the copy");
    CHECK(pq_kvpage_append(kp, &b, 1, &cp, &e) == 0 && cp.src == last && cp.dst == b.table[1] && cp.n == 2,
          "copy on write of the 2 positions of the partial block (src %d dst %d n %d)", cp.src, cp.dst, cp.n);
    CHECK(b.table[0] == a.table[0] && pq_kvpage_ref(kp, last) == 2 && pq_kvpage_ref(kp, b.table[1]) == 1,
          "the full block stays shared");
    CHECK(pq_kvpage_append(kp, &b, 1, &cp, &e) == 0 && cp.n == 0, "a private block takes no copy");
    CHECK(pq_kvpage_append(kp, &b, 1, &cp, &e) == 0 && cp.n == 0 && b.nblk == 3, "a full block: a new one");
    pq_kvpage_release(kp, &c);
    CHECK(pq_kvpage_ref(kp, last) == 1, "release drops a reference");
    CHECK(pq_kvpage_append(kp, &a, 1, &cp, &e) == 0 && cp.n == 0 && a.table[1] == last,
          "the last sharer writes in place");
    // exhaustion: 6 blocks, a holds 2, b 3 (one shared)
    int fr = pq_kvpage_free_blocks(kp);
    int len = a.len, nb = a.nblk;
    e.msg[0] = 0;
    CHECK(pq_kvpage_append(kp, &a, 4 * (fr + 1), &cp, &e) == -1 && strstr(e.msg, "out of blocks"),
          "out of blocks: %s", e.msg);
    CHECK(a.len == len && a.nblk == nb && pq_kvpage_free_blocks(kp) == fr, "a failed append changes nothing");
    pq_kvseq_free(kp, &a), pq_kvseq_free(kp, &b), pq_kvseq_free(kp, &c);
    CHECK(pq_kvpage_free_blocks(kp) == 6, "all back");
    pq_kvpage_free(kp);
}

static void test_prefix(void) {
    PqKvPage *kp = pq_kvpage_new(5, 2);
    PqKvSeq a, b, c;
    pq_kvseq_init(&a), pq_kvseq_init(&b), pq_kvseq_init(&c);
    PqKvCopy cp;
    PqErr e;
    int32_t tok[6] = {5, 6, 7, 8, 9, 10};
    uint64_t h0 = pq_kvpage_hash(0, tok, 2), h1 = pq_kvpage_hash(h0, tok + 2, 2);
    CHECK(h0 != h1 && h0 != pq_kvpage_hash(0, tok + 2, 2) && h1 != pq_kvpage_hash(0, tok + 2, 2),
          "the hash depends on the parent and the tokens");
    CHECK(!pq_kvpage_share(kp, &b, h0) && b.len == 0, "nothing published: no share");
    pq_kvpage_append(kp, &a, 5, &cp, &e);
    pq_kvpage_publish(kp, a.table[0], h0);
    pq_kvpage_publish(kp, a.table[1], h1);
    pq_kvpage_publish(kp, a.table[2], h0); // h0 is a.table[0]'s already
    CHECK(pq_kvpage_share(kp, &b, h0) && pq_kvpage_share(kp, &b, h1) && b.len == 4 && b.table[0] == a.table[0] &&
          b.table[1] == a.table[1] && pq_kvpage_ref(kp, a.table[0]) == 2,
          "a live sequence's published blocks are shared");
    CHECK(pq_kvpage_append(kp, &b, 1, &cp, &e) == 0 && cp.n == 0 && b.table[2] != a.table[2],
          "appending after a shared full block takes a new one, no copy");
    int32_t a0 = a.table[0], a1 = a.table[1], a2 = a.table[2];
    pq_kvpage_release(kp, &b);
    pq_kvpage_release(kp, &a);
    CHECK(pq_kvpage_free_blocks(kp) == 5 && pq_kvpage_cached_blocks(kp) == 2, "free, 2 of them keeping a hash");
    // 3 blocks without a hash go first (a2 among them), then the least recently freed cached one: a1 (a's blocks
    // are freed last first)
    CHECK(pq_kvpage_append(kp, &c, 6, &cp, &e) == 0 && pq_kvpage_cached_blocks(kp) == 2, "unhashed blocks first");
    int uses_a2 = 0;
    for (int i = 0; i < c.nblk; i++) uses_a2 |= c.table[i] == a2;
    CHECK(uses_a2, "a2 had no hash");
    CHECK(pq_kvpage_append(kp, &c, 2, &cp, &e) == 0 && c.table[3] == a1 && pq_kvpage_cached_blocks(kp) == 1,
          "then the least recently freed cached block (%d, want %d)", c.table[3], a1);
    CHECK(pq_kvpage_share(kp, &b, h0) && b.table[0] == a0 && !pq_kvpage_share(kp, &b, h1) && b.len == 2 &&
              pq_kvpage_cached_blocks(kp) == 0 && pq_kvpage_ref(kp, a0) == 1,
          "a freed cached block is shared again; a reused one's hash is forgotten");
    CHECK(pq_kvpage_append(kp, &c, 1, &cp, &e) == -1, "out of blocks");
    pq_kvseq_free(kp, &b), pq_kvseq_free(kp, &c), pq_kvseq_free(kp, &a);
    CHECK(pq_kvpage_free_blocks(kp) == 5, "all back");
    pq_kvpage_free(kp);
}

// The hash of the first nb blocks of values v (each block's hash into h[]).
static void prefix_hashes(const int *v, int nb, int BT, uint64_t *h) {
    int32_t *t = pq_xmalloc((size_t)BT * sizeof *t);
    for (int b = 0; b < nb; b++) {
        for (int i = 0; i < BT; i++) t[i] = v[b * BT + i];
        h[b] = pq_kvpage_hash(b ? h[b - 1] : 0, t, BT);
    }
    free(t);
}

static void test_random(uint64_t seed, int NB, int BT, int ops) {
    PqRng rng;
    pq_rng_seed(&rng, seed);
    PqKvPage *kp = pq_kvpage_new(NB, BT);
    pool = pq_xmalloc((size_t)NB * BT * sizeof *pool);
    for (int i = 0; i < NB * BT; i++) pool[i] = -1;
    PqKvSeq seq[NSEQ];
    Model mod[NSEQ];
    memset(mod, 0, sizeof mod);
    for (int s = 0; s < NSEQ; s++) pq_kvseq_init(&seq[s]);
    int next_val = 0, fails = 0, forks = 0, cows = 0, hits = 0, ghost_hits = 0;
    Model ghost = {0}; // the values of the last sequence released
    char what[96];
    for (int op = 0; op < ops; op++) {
        int s = (int)pq_rng_below(&rng, NSEQ), r = (int)pq_rng_below(&rng, 12);
        if (r < 6) { // append 1 (a decode step) or several (a prefill chunk)
            int n = pq_rng_below(&rng, 3) ? 1 : (int)pq_rng_below(&rng, 3 * BT) + 1;
            int need = pq_kvpage_need(kp, &seq[s], n), fr = pq_kvpage_free_blocks(kp);
            int partial = seq[s].len % BT && pq_kvpage_ref(kp, seq[s].table[seq[s].nblk - 1]) > 1;
            int rc = append(kp, &seq[s], &mod[s], n, &next_val);
            CHECK((rc == 0) == (need <= fr), "op %d: append fails exactly when out of blocks", op);
            if (rc == 0) CHECK(pq_kvpage_free_blocks(kp) == fr - need, "op %d: took %d blocks", op, need);
            fails += rc < 0, cows += rc == 0 && partial;
        } else if (r < 8) { // fork s into another
            int d = (int)pq_rng_below(&rng, NSEQ);
            if (d == s) continue;
            pq_kvpage_fork(kp, &seq[s], &seq[d]);
            mod[d].n = 0;
            for (int p = 0; p < mod[s].n; p++) {
                if (mod[d].n == mod[d].cap)
                    mod[d].cap = mod[d].cap ? 2 * mod[d].cap : 16,
                    mod[d].v = pq_xrealloc(mod[d].v, (size_t)mod[d].cap * sizeof *mod[d].v);
                mod[d].v[mod[d].n++] = mod[s].v[p];
            }
            forks++;
        } else if (r < 9) {
            if (pq_rng_below(&rng, 2)) { // release (keeping its values as the ghost)
                if (mod[s].n) {
                    ghost.n = 0;
                    for (int p = 0; p < mod[s].n; p++) {
                        if (ghost.n == ghost.cap)
                            ghost.cap = ghost.cap ? 2 * ghost.cap : 16,
                            ghost.v = pq_xrealloc(ghost.v, (size_t)ghost.cap * sizeof *ghost.v);
                        ghost.v[ghost.n++] = mod[s].v[p];
                    }
                }
                pq_kvpage_release(kp, &seq[s]);
                mod[s].n = 0;
            }
        } else if (r < 10) { // publish s's full blocks
            int nb = seq[s].len / BT;
            uint64_t *h = pq_xmalloc((size_t)(nb + 1) * sizeof *h);
            prefix_hashes(mod[s].v, nb, BT, h);
            for (int b = 0; b < nb; b++) pq_kvpage_publish(kp, seq[s].table[b], h[b]);
            free(h);
        } else { // d starts from the published prefix of s or of the ghost
            int d = (int)pq_rng_below(&rng, NSEQ), from_ghost = r == 11;
            const Model *src = from_ghost ? &ghost : &mod[s];
            if (d == s) continue;
            pq_kvpage_release(kp, &seq[d]);
            mod[d].n = 0;
            int nb = src->n / BT, got = 0;
            uint64_t *h = pq_xmalloc((size_t)(nb + 1) * sizeof *h);
            prefix_hashes(src->v, nb, BT, h);
            while (got < nb && pq_kvpage_share(kp, &seq[d], h[got])) got++;
            free(h);
            for (int p = 0; p < got * BT; p++) {
                if (mod[d].n == mod[d].cap)
                    mod[d].cap = mod[d].cap ? 2 * mod[d].cap : 16,
                    mod[d].v = pq_xrealloc(mod[d].v, (size_t)mod[d].cap * sizeof *mod[d].v);
                mod[d].v[mod[d].n++] = src->v[p];
            }
            if (from_ghost) ghost_hits += got;
            else hits += got;
        }
        snprintf(what, sizeof what, "seed %llu op %d", (unsigned long long)seed, op);
        check_all(kp, seq, mod, what);
    }
    seen[0] += fails, seen[1] += forks, seen[2] += cows, seen[3] += hits, seen[4] += ghost_hits;
    for (int s = 0; s < NSEQ; s++) pq_kvseq_free(kp, &seq[s]), free(mod[s].v);
    free(ghost.v);
    CHECK(pq_kvpage_free_blocks(kp) == NB, "seed %llu: every block back", (unsigned long long)seed);
    pq_kvpage_free(kp);
    free(pool);
}

int main(void) {
    test_basic();
    test_prefix();
    for (uint64_t seed = 1; seed <= 20; seed++) test_random(seed, 8 + (int)(seed % 5) * 8, 1 + (int)(seed % 4) * 5, 2000);
    CHECK(seen[0] > 100 && seen[1] > 100 && seen[2] > 100 && seen[3] > 100 && seen[4] > 100,
          "every case seen: %ld out of blocks, %ld forks, %ld copies, %ld blocks shared from live sequences, %ld from "
          "released ones",
          seen[0], seen[1], seen[2], seen[3], seen[4]);
    printf("test-kvpage: %d checks, %d failed\n", n_checks, n_fail);
    return n_fail != 0;
}
