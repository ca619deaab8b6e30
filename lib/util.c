// util.c: small shared helpers of pq (see util.h).
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void pq_err(PqErr *e, const char *fmt, ...) {
    if (!e) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
}

static void oom(size_t n) {
    fprintf(stderr, "pq: out of memory allocating %zu bytes\n", n);
    abort();
}

void *pq_xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) oom(n);
    return p;
}

void *pq_xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) oom(n * size);
    return p;
}

void *pq_xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) oom(n);
    return q;
}

char *pq_xstrdup(const char *s) { return pq_xstrndup(s, strlen(s)); }

char *pq_xstrndup(const char *s, size_t n) {
    char *p = pq_xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

void pq_buf_reserve(PqBuf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1) cap *= 2;
    b->data = pq_xrealloc(b->data, cap);
    b->cap = cap;
}

void pq_buf_append(PqBuf *b, const void *data, size_t n) {
    pq_buf_reserve(b, n);
    if (n) memcpy(b->data + b->len, data, n);
    b->len += n;
    b->data[b->len] = 0;
}

void pq_buf_puts(PqBuf *b, const char *s) { pq_buf_append(b, s, strlen(s)); }

void pq_buf_printf(PqBuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    pq_buf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void pq_buf_clear(PqBuf *b) {
    b->len = 0;
    if (b->data) b->data[0] = 0;
}

void pq_buf_free(PqBuf *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

char *pq_read_file(const char *path, size_t *len, PqErr *e) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        pq_err(e, "%s: %s", path, strerror(errno));
        return NULL;
    }
    PqBuf b = {0};
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) pq_buf_append(&b, chunk, n);
    if (ferror(f)) {
        pq_err(e, "%s: read error: %s", path, strerror(errno));
        fclose(f);
        pq_buf_free(&b);
        return NULL;
    }
    fclose(f);
    if (!b.data) pq_buf_append(&b, "", 0);
    if (len) *len = b.len;
    return b.data;
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void pq_rng_seed(PqRng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t pq_rng_next(PqRng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double pq_rng_uniform(PqRng *r) { return (double)(pq_rng_next(r) >> 11) * 0x1.0p-53; }

uint64_t pq_rng_below(PqRng *r, uint64_t n) {
    if (n <= 1) return 0;
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = pq_rng_next(r);
    while (x >= limit);
    return x % n;
}

void pq_rng_shuffle_int(PqRng *r, int *a, int n) {
    for (int i = n - 1; i > 0; i--) {
        int j = (int)pq_rng_below(r, (uint64_t)i + 1);
        int t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

uint64_t pq_hash_bytes(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 0x100000001b3ULL;
    return h;
}

uint64_t pq_hash_str(const char *s) { return pq_hash_bytes(s, strlen(s)); }

double pq_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

long pq_peak_rss_kb(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return -1;
    return ru.ru_maxrss;
}

// ---- what a killed run left behind ----

// Removes the regular files in dir, then dir (its own temporary directory:
// nothing nested).
static int rm_flat_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT ? 0 : -1;
    struct dirent *de;
    PqBuf p = {0};
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        pq_buf_clear(&p);
        pq_buf_printf(&p, "%s/%s", dir, de->d_name);
        unlink(p.data);
    }
    closedir(d);
    pq_buf_free(&p);
    return rmdir(dir) == 0 || errno == ENOENT ? 0 : -1;
}

int pq_clean_stale_dirs(const char *path, const char *prog, PqErr *e) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    char *full = pq_xstrndup(path, n);
    char *slash = strrchr(full, '/');
    char *parent = slash ? (slash == full ? pq_xstrdup("/") : pq_xstrndup(full, (size_t)(slash - full))) : pq_xstrdup(".");
    const char *base = slash ? slash + 1 : full;
    size_t bl = strlen(base);
    int cleaned = 0, rc = 0;
    DIR *d = opendir(parent);
    if (!d) {
        free(full);
        free(parent);
        return 0; // no parent yet: nothing left there either
    }
    struct stat st;
    int have_out = stat(full, &st) == 0;
    struct dirent *de;
    PqBuf p = {0};
    while ((de = readdir(d))) {
        const char *nm = de->d_name;
        if (strncmp(nm, base, bl) != 0 || (strncmp(nm + bl, ".tmp", 4) != 0 && strncmp(nm + bl, ".old", 4) != 0))
            continue;
        const char *digits = nm + bl + 4;
        char *end;
        errno = 0;
        long pid = strtol(digits, &end, 10);
        if (!*digits || *end || errno || pid <= 0 || digits[0] == '0' || digits[0] == '+' || digits[0] == '-') continue;
        if (pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; // alive: not ours to touch
        pq_buf_clear(&p);
        pq_buf_printf(&p, "%s/%s", parent, nm);
        if (lstat(p.data, &st) != 0 || !S_ISDIR(st.st_mode)) continue;
        if (!have_out && nm[bl + 1] == 'o') { // killed between its two renames: the old one is the last good copy
            if (rename(p.data, full) == 0) {
                have_out = 1;
                fprintf(stderr, "%s: %s was missing: put back from %s, left by a run that was killed\n", prog, full,
                        p.data);
                cleaned++;
                continue;
            }
        }
        if (rm_flat_dir(p.data) == 0) {
            fprintf(stderr, "%s: removed %s, left by a run that was killed\n", prog, p.data);
            cleaned++;
        } else {
            pq_err(e, "%s: %s", p.data, strerror(errno));
            rc = -1;
        }
    }
    closedir(d);
    pq_buf_free(&p);
    free(full);
    free(parent);
    return rc < 0 ? rc : cleaned;
}

// pq_sort_desc (util.h): a stable LSD radix sort of an order-preserving key
// (3 passes of 11 bits), O(n) where a comparison sort of a vocabulary (150k
// ids) cost milliseconds a row.
void pq_sort_desc(int *idx, int n, const float *z, uint32_t *key, uint32_t *ktmp, int *tmp) {
    for (int i = 0; i < n; i++) {
        float f = z[idx[i]] == 0 ? 0.0f : z[idx[i]]; // -0 and +0 tie, as the comparison did
        uint32_t u;
        memcpy(&u, &f, 4);
        u = (u & 0x80000000u) ? ~u : (u | 0x80000000u); // a > b <=> u(a) > u(b)
        key[i] = ~u;                                     // ascending key: descending z
    }
    uint32_t cnt[2048];
    for (int shift = 0; shift < 32; shift += 11) {
        memset(cnt, 0, sizeof cnt);
        for (int i = 0; i < n; i++) cnt[(key[i] >> shift) & 2047]++;
        uint32_t at = 0;
        for (int b = 0; b < 2048; b++) {
            uint32_t c = cnt[b];
            cnt[b] = at;
            at += c;
        }
        for (int i = 0; i < n; i++) {
            uint32_t d = cnt[(key[i] >> shift) & 2047]++;
            tmp[d] = idx[i], ktmp[d] = key[i];
        }
        memcpy(idx, tmp, (size_t)n * sizeof *idx);
        memcpy(key, ktmp, (size_t)n * sizeof *key);
    }
}
