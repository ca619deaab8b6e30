// util.h: small shared helpers of pq: allocation, growable buffers, seeded
// random numbers, time, and an error-message convention for lib functions.
#ifndef PQ_UTIL_H
#define PQ_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define PQ_VERSION "0.1.0"

// Library functions never exit(): they return an error code (or NULL) and
// write a one-line message into a caller-provided PqErr.
typedef struct PqErr {
    char msg[512];
} PqErr;
void pq_err(PqErr *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// Allocation that aborts only on out-of-memory (the one condition no caller
// can recover from).
void *pq_xmalloc(size_t n);
void *pq_xcalloc(size_t n, size_t size);
void *pq_xrealloc(void *p, size_t n);
char *pq_xstrdup(const char *s);
char *pq_xstrndup(const char *s, size_t n);

// Growable byte buffer, always NUL-terminated.
typedef struct PqBuf {
    char *data;
    size_t len, cap;
} PqBuf;
void pq_buf_reserve(PqBuf *b, size_t extra);
void pq_buf_append(PqBuf *b, const void *data, size_t n);
void pq_buf_puts(PqBuf *b, const char *s);
void pq_buf_printf(PqBuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void pq_buf_clear(PqBuf *b);
void pq_buf_free(PqBuf *b);

// Reads a whole file into memory (NUL-terminated); NULL and a message on error.
char *pq_read_file(const char *path, size_t *len, PqErr *e);

// Seeded random numbers (splitmix64 seeding a xoshiro256**).
typedef struct PqRng {
    uint64_t s[4];
} PqRng;
void pq_rng_seed(PqRng *r, uint64_t seed);
uint64_t pq_rng_next(PqRng *r);
double pq_rng_uniform(PqRng *r);           // [0, 1)
uint64_t pq_rng_below(PqRng *r, uint64_t n); // [0, n), unbiased
void pq_rng_shuffle_int(PqRng *r, int *a, int n);
// A 64-bit hash of a string (FNV-1a): derives per-record seeds, e.g. seed ^ hash(id).
uint64_t pq_hash_str(const char *s);
uint64_t pq_hash_bytes(const void *p, size_t n);

// The PATH.tmpPID and PATH.oldPID directories a killed run of pq-dpo or
// pq-merge left beside PATH (PID no longer alive) are removed, saying so as
// prog on stderr; when PATH itself is missing, a PATH.oldPID (the checkpoint
// being replaced when the kill came) is renamed back to PATH instead.
// Returns how many were cleaned, or -1 (e) when one could not be removed.
int pq_clean_stale_dirs(const char *path, const char *prog, PqErr *e);

double pq_now(void); // monotonic seconds
long pq_peak_rss_kb(void); // peak resident set size of this process, in KiB

// Sorts idx (n ids, in ascending order) by z[id] descending, ties (-0 = +0
// included) in id order: the order samplers cut top-k / top-p from. key,
// ktmp, tmp: n scratch entries each.
void pq_sort_desc(int *idx, int n, const float *z, uint32_t *key, uint32_t *ktmp, int *tmp);

#endif
