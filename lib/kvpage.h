// kvpage.h: a paged KV cache's bookkeeping (vLLM's PagedAttention): a pool
// of fixed-size blocks of BT token positions, a free list, a block table per
// sequence, reference counts so the n samples of a prompt share its blocks
// (fork copies the table; the last partial block is copied on write when a
// sharer appends), and a prefix cache (vLLM's automatic prefix caching): a
// full block can be published under a hash of the tokens of its sequence up
// to its end, and a later sequence with the same prefix shares it instead of
// computing it again; a published block keeps its hash and contents while
// free, until the free blocks without one run out (then the least recently
// freed is taken first). Pure host code: the memory (one pool per layer, blocks
// of (BT,KVH,HS), see ops_paged.h) belongs to the caller, who also carries
// out the block copies that appending asks for (pq_paged_copy_blocks).
#ifndef PQ_KVPAGE_H
#define PQ_KVPAGE_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

// A sequence: its positions 0..len-1 live in blocks table[0..nblk-1],
// position p at offset p % BT of block table[p / BT].
typedef struct PqKvSeq {
    int32_t *table;
    int nblk, cap; // blocks in the table, room in the array
    int len;       // positions in use
} PqKvSeq;

// One block copy the caller must carry out (every layer, K and V) before
// writing to dst: its first n positions from block src.
typedef struct PqKvCopy {
    int32_t src, dst, n;
} PqKvCopy;

typedef struct PqKvPage PqKvPage;

// Blocks of BT positions that fit in bytes, each holding K and V of L layers
// of (BT,KVH,HS) elements of elem bytes (0 when not even one).
long pq_kvpage_blocks_for_bytes(size_t bytes, int L, int KVH, int HS, int BT, size_t elem);
// A pool of nblocks blocks of BT positions (both >= 1); NULL otherwise.
PqKvPage *pq_kvpage_new(int nblocks, int BT);
void pq_kvpage_free(PqKvPage *kp);
int pq_kvpage_block_tokens(const PqKvPage *kp); // BT
int pq_kvpage_blocks(const PqKvPage *kp);       // nblocks
int pq_kvpage_free_blocks(const PqKvPage *kp);   // free, published ones included
int pq_kvpage_cached_blocks(const PqKvPage *kp); // free ones that keep a hash
int pq_kvpage_ref(const PqKvPage *kp, int32_t block); // sharers of a block (0: free)

void pq_kvseq_init(PqKvSeq *s); // empty (also what release leaves)
// Blocks that appending n positions to s would take from the free list
// (new blocks, plus one when the last partial block is shared).
int pq_kvpage_need(const PqKvPage *kp, const PqKvSeq *s, int n);
// Room for n more positions of s (len += n): a shared last partial block
// is replaced by a private copy (written to *copy, copy->n = 0 when none;
// copy may be NULL only when the caller knows none is needed), then new
// blocks are taken. When the free list is short nothing changes and -1 is
// returned with a message (the caller can preempt a sequence and retry).
int pq_kvpage_append(PqKvPage *kp, PqKvSeq *s, int n, PqKvCopy *copy, PqErr *e);
// dst (empty or released) shares every block of src: the n samples of a
// prompt after its prefill. dst->len = src->len.
void pq_kvpage_fork(PqKvPage *kp, const PqKvSeq *src, PqKvSeq *dst);
// Drops s's references (blocks no one else holds go back to the free
// list) and empties it; its table array is kept for reuse.
void pq_kvpage_release(PqKvPage *kp, PqKvSeq *s);
void pq_kvseq_free(PqKvPage *kp, PqKvSeq *s); // release, then free the table
// The hash of a prefix: the n tokens of a block after a prefix of hash parent
// (0 for the first block of a sequence).
uint64_t pq_kvpage_hash(uint64_t parent, const int32_t *tokens, int n);
// Block b (held; every position of it written) holds the prefix of hash h.
// Nothing changes when b or another block already has a hash.
void pq_kvpage_publish(PqKvPage *kp, int32_t b, uint64_t h);
// s (its length a multiple of BT) shares the block published under hash h
// (taken off the free blocks if no one held it): len += BT, returns 1; 0
// (nothing changes) when no block has h.
int pq_kvpage_share(PqKvPage *kp, PqKvSeq *s, uint64_t h);
// A step's inputs for pq_paged_attention_forward: row i = seqs[i]'s block
// table (padded with block 0 to maxblk, which must hold every table) and
// length. Returns the longest length (its max_len).
int pq_kvpage_tables(PqKvSeq *const *seqs, int N, int32_t *tables, int maxblk, int32_t *len);
// The pool slot (block * BT + offset) of position pos of s (pos < len).
static inline int32_t pq_kvseq_slot(const PqKvSeq *s, int pos, int BT) {
    return s->table[pos / BT] * BT + pos % BT;
}

#endif
