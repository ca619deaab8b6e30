// device_cpu.c: the CPU backend's answers to the device calls of ops.h (no
// devices to select; f32 attention; host memset; peak resident set; available
// memory; timing marks by the clock). Left out of CUDA=1 builds, where
// lib/cuda/backend.cu provides them.
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include "ops.h"
#include "util.h"

const char *pq_ops_backend(void) { return "cpu"; }
int pq_ops_set_device(int n) {
    (void)n;
    return -1;
}
int pq_dev_info(PqDevInfo *d) {
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "cpu");
    return -1;
}
void pq_ops_set_attention_dtype(PqDtype t) { (void)t; } // always f32
void pq_dev_zero(void *dst, size_t bytes) {
    if (bytes) memset(dst, 0, bytes);
}
size_t pq_dev_free_bytes(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return 0;
    char line[256];
    unsigned long long kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) break;
    fclose(f);
    return (size_t)kb * 1024;
}
size_t pq_dev_peak_bytes(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru)) return 0;
    return (size_t)ru.ru_maxrss * 1024; // kilobytes on Linux
}

// The marks of ops.h: the clock at the call (ms).
static double mark_at[PQ_DEV_MARKS];
static unsigned char mark_set[PQ_DEV_MARKS];

void pq_dev_mark(int k) {
    if (k < 0 || k >= PQ_DEV_MARKS) return;
    mark_at[k] = pq_now() * 1e3;
    mark_set[k] = 1;
}

double pq_dev_mark_ms(int a, int b) {
    if (a < 0 || b < 0 || a >= PQ_DEV_MARKS || b >= PQ_DEV_MARKS || !mark_set[a] || !mark_set[b]) return -1;
    return mark_at[b] - mark_at[a];
}
