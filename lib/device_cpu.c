// device_cpu.c: the CPU backend's answers to the device calls of ops.h (no
// devices to select; f32 attention; host memset; peak resident set; available memory). Left out of CUDA=1
// builds, where lib/cuda/backend.cu provides them.
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include "ops.h"

const char *pq_ops_backend(void) { return "cpu"; }
int pq_ops_set_device(int n) {
    (void)n;
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
