// parity-optim.c: the optimizer ops of the CUDA backend (pq_adamw_update,
// pq_sumsq, pq_scale, and PqAdamW through lib/optim.c) against their CPU
// twins (pq_cpu_*) over several steps on fresh random gradients, with a
// NaN-poisoned tail after every device array (a read past n turns the norm
// NaN, a write past n changes the tail); then AdamW over the 42M parameters of
// a Mistral-7B LoRA r=16 timed on both sides. The CPU and CUDA AdamW round
// every operation alike: the parameters and moments must match bit for bit.
// Built only with CUDA=1; run by scripts/gpu-check. Exits 1 on any mismatch;
// the last line is the summary.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_test.h"
#include "ops.h"
#include "ops_optim.h"
#include "optim.h"
#include "util.h"

static int failures, checks;
// the AdamW results should be bit-identical; allow about two f32 ulps per element
#define ULP2 2.5e-7

// TAIL floats poison the end of each device array: 1e30 first (read past
// the end, it blows up the norm; written, it changes), then NaNs with a
// payload (read, they turn the norm NaN) alternating with 1e30.
#define TAIL 67
static const uint32_t NAN_BITS = 0x7fc0dead;

static float tail_value(int i) {
    float f = 1e30f;
    if (i % 2) memcpy(&f, &NAN_BITS, 4);
    return f;
}

// a device array of n floats holding h (n), followed by the TAIL poison
static float *dev_poisoned(const float *h, size_t n) {
    float *d = pq_dev_alloc((n + TAIL) * sizeof *d), t[TAIL];
    for (int i = 0; i < TAIL; i++) t[i] = tail_value(i);
    pq_dev_upload(d, h, n * sizeof *d);
    pq_dev_upload(d + n, t, sizeof t);
    return d;
}

static void fail(const char *what) {
    failures++;
    printf("FAIL %s\n", what);
}

// the tail after d (n) still poisoned
static void check_tail(const char *name, const float *d, size_t n) {
    float t[TAIL];
    pq_dev_download(t, d + n, sizeof t);
    checks++;
    for (int i = 0; i < TAIL; i++) {
        float want = tail_value(i);
        if (memcmp(&t[i], &want, 4)) {
            char what[256];
            snprintf(what, sizeof what, "%.96s: written past its end (n %zu, +%d)", name, n, i);
            fail(what);
            return;
        }
    }
}

// device d (n) against cpu (n), element by element: |gpu - cpu| / |cpu| <= tol
// (|cpu| at least 1e-3 max |cpu|); how many are not bit-identical
static void cmp(const char *name, const float *cpu, const float *d, size_t n, double tol) {
    float *g = pq_xmalloc((n ? n : 1) * sizeof *g);
    pq_dev_download(g, d, n * sizeof *g);
    double mx = 0, err = 0;
    size_t diff = 0, bad = (size_t)-1;
    for (size_t i = 0; i < n; i++) mx = fabs(cpu[i]) > mx ? fabs(cpu[i]) : mx;
    double floor = mx > 1e-27 ? 1e-3 * mx : 1e-30;
    for (size_t i = 0; i < n; i++) {
        if (memcmp(&g[i], &cpu[i], 4)) diff++;
        double e = fabs((double)g[i] - cpu[i]) / fmax(fabs(cpu[i]), floor);
        if (!(e <= tol) && bad == (size_t)-1) bad = i;
        if (!(e <= err)) err = isnan(e) ? INFINITY : e;
    }
    checks++;
    if (bad != (size_t)-1) {
        failures++;
        printf("FAIL %-36s rel err %.3g > %.3g (first at %zu: cpu %.9g gpu %.9g), %zu of %zu differ\n", name, err,
               tol, bad, cpu[bad], g[bad], diff, n);
    } else {
        printf("ok   %-36s rel err %.3g (tol %.3g), %zu of %zu not bit-identical\n", name, err, tol, diff, n);
    }
    free(g);
}

static void cmp_norm(const char *name, double cpu, double gpu) {
    checks++;
    double e = fabs(gpu - cpu) / (cpu > 1e-300 ? cpu : 1e-300);
    if (!(e <= 1e-12)) {
        failures++;
        printf("FAIL %-36s cpu %.17g gpu %.17g (rel %.3g)\n", name, cpu, gpu, e);
    } else {
        printf("ok   %-36s rel err %.3g\n", name, e);
    }
}

// steps of clip + AdamW on n parameters: the ops one by one, both sides from the same start
static void test_ops(size_t n, int steps) {
    double lr = 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.01;
    float *p = pq_xmalloc((n ? n : 1) * 4), *m = pq_xcalloc(n ? n : 1, 4), *v = pq_xcalloc(n ? n : 1, 4);
    float *g = pq_xmalloc((n ? n : 1) * 4);
    for (size_t i = 0; i < n; i++) p[i] = urand(0.05f);
    float *dp = dev_poisoned(p, n), *dm = dev_poisoned(m, n), *dv = dev_poisoned(v, n), *dg = NULL;
    char name[96];
    for (int s = 1; s <= steps; s++) {
        float a = s % 2 ? 1.0f : 1e-3f; // large and small gradients (clipped, then not)
        for (size_t i = 0; i < n; i++) g[i] = i % 1000 == 3 ? 0 : urand(a);
        pq_dev_free(dg);
        dg = dev_poisoned(g, n); // fresh gradients, a fresh poisoned tail
        double cs = pq_cpu_sumsq(g, n), gs = pq_sumsq(dg, n), gs2 = pq_sumsq(dg, n);
        snprintf(name, sizeof name, "sumsq n %zu step %d", n, s);
        cmp_norm(name, cs, gs);
        checks++;
        if (memcmp(&gs, &gs2, sizeof gs)) fail("sumsq: the same input gives another sum");
        double norm = sqrt(cs), max_norm = 0.1 * sqrt((double)n) + 1e-3;
        if (norm > max_norm) { // both sides scaled by the CPU's coefficient
            float c = (float)(max_norm / (norm + 1e-6));
            pq_cpu_scale(g, c, n);
            pq_scale(dg, c, n);
            snprintf(name, sizeof name, "scale n %zu step %d", n, s);
            cmp(name, g, dg, n, 0);
            check_tail(name, dg, n);
        }
        pq_cpu_adamw_update(p, m, v, g, n, lr * s / steps, b1, b2, eps, wd, s);
        pq_adamw_update(dp, dm, dv, dg, n, lr * s / steps, b1, b2, eps, wd, s);
        snprintf(name, sizeof name, "adamw n %zu step %d: p", n, s);
        cmp(name, p, dp, n, ULP2);
        check_tail(name, dp, n);
        snprintf(name, sizeof name, "adamw n %zu step %d: m", n, s);
        cmp(name, m, dm, n, ULP2);
        check_tail(name, dm, n);
        snprintf(name, sizeof name, "adamw n %zu step %d: v", n, s);
        cmp(name, v, dv, n, ULP2);
        check_tail(name, dv, n);
    }
    pq_dev_free(dp), pq_dev_free(dm), pq_dev_free(dv), pq_dev_free(dg);
    free(p), free(m), free(v), free(g);
}

// PqAdamW and pq_clip_grad_norm (lib/optim.c on the device) against the
// twins; the state through download/upload unchanged
static void test_optim(size_t n, int steps) {
    float *p = pq_xmalloc(n * 4), *m = pq_xcalloc(n, 4), *v = pq_xcalloc(n, 4), *g = pq_xmalloc(n * 4);
    for (size_t i = 0; i < n; i++) p[i] = urand(0.05f);
    float *dp = dev_poisoned(p, n), *dg = dev_poisoned(p, n);
    PqAdamW o;
    pq_adamw_build(&o, n, 2e-3, 0.9, 0.95, 1e-8, 0.1);
    char name[96];
    for (int s = 1; s <= steps; s++) {
        for (size_t i = 0; i < n; i++) g[i] = urand(s == 2 ? 1e-3f : 1.0f);
        pq_dev_upload(dg, g, n * 4);
        double max_norm = 0.2 * sqrt((double)n), cn = sqrt(pq_cpu_sumsq(g, n));
        if (cn > max_norm) pq_cpu_scale(g, (float)(max_norm / (cn + 1e-6)), n);
        double gn = pq_clip_grad_norm(dg, n, max_norm);
        snprintf(name, sizeof name, "optim.c n %zu step %d: grad norm", n, s);
        cmp_norm(name, cn, gn);
        pq_cpu_adamw_update(p, m, v, g, n, 2e-3, 0.9, 0.95, 1e-8, 0.1, s);
        pq_adamw_step(&o, dp, dg, 2e-3);
        snprintf(name, sizeof name, "optim.c n %zu step %d: params", n, s);
        cmp(name, p, dp, n, ULP2);
        check_tail(name, dp, n);
    }
    float *mv = pq_xmalloc(pq_adamw_state_bytes(&o));
    pq_adamw_state_download(&o, mv);
    float *dmv = dev_poisoned(mv, 2 * n); // the moments as optimizer.bin holds them
    cmp("optim.c state download: m", m, dmv, n, ULP2);
    cmp("optim.c state download: v", v, dmv + n, n, ULP2);
    PqAdamW o2;
    pq_adamw_build(&o2, n, 2e-3, 0.9, 0.95, 1e-8, 0.1);
    pq_adamw_state_upload(&o2, mv);
    cmp("optim.c state upload: m, v", mv, o2.m, 2 * n, 0);
    pq_adamw_free(&o), pq_adamw_free(&o2);
    pq_dev_free(dp), pq_dev_free(dg), pq_dev_free(dmv);
    free(p), free(m), free(v), free(g), free(mv);
}

// AdamW steps over the 42M parameters of Mistral-7B's LoRA r=16 on
// q,k,v,o,gate,up,down (32 layers, r (in + out) per linear: q and o 4096 +
// 4096, k and v 4096 + 1024, gate, up and down 4096 + 14336): time per step
// of each side, the CPU on all its cores; parity after the last step.
static double gpu_ms, cpu_ms, norm_ms;
static void bench_7b(void) {
    size_t n = (size_t)32 * 16 * (2 * (4096 + 4096) + 2 * (4096 + 1024) + 3 * (4096 + 14336));
    float *p = pq_xmalloc(n * 4), *m = pq_xcalloc(n, 4), *v = pq_xcalloc(n, 4), *g = pq_xmalloc(n * 4);
    for (size_t i = 0; i < n; i++) p[i] = urand(0.05f), g[i] = urand(1e-3f);
    float *dp = dev_poisoned(p, n), *dm = dev_poisoned(m, n), *dv = dev_poisoned(v, n), *dg = dev_poisoned(g, n);
    int reps = 10;
    pq_adamw_update(dp, dm, dv, dg, n, 1e-5, 0.9, 0.999, 1e-8, 0, 1); // warm up
    double t = pq_now();
    for (int k = 0; k < reps; k++) pq_adamw_update(dp, dm, dv, dg, n, 1e-5, 0.9, 0.999, 1e-8, 0, 2 + k);
    float one;
    pq_dev_download(&one, dp, 4); // waits for the kernels
    gpu_ms = (pq_now() - t) / reps * 1e3;
    t = pq_now();
    for (int k = 0; k < reps; k++) pq_scale(dg, 1.0f, n), pq_sumsq(dg, n);
    norm_ms = (pq_now() - t) / reps * 1e3;
    t = pq_now();
    for (int k = 0; k <= reps; k++) pq_cpu_adamw_update(p, m, v, g, n, 1e-5, 0.9, 0.999, 1e-8, 0, 1 + k);
    cpu_ms = (pq_now() - t) / (reps + 1) * 1e3;
    cmp("adamw 42M after 11 steps: p", p, dp, n, ULP2);
    cmp("adamw 42M after 11 steps: v", v, dv, n, ULP2);
    check_tail("adamw 42M", dp, n);
    cmp_norm("sumsq 42M", pq_cpu_sumsq(g, n), pq_sumsq(dg, n));
    printf("adamw over %zu parameters (Mistral-7B LoRA r=16, 7 linears): gpu %.3f ms per step, "
           "clip (sumsq + scale) %.3f ms; cpu %.1f ms on %d threads\n",
           n, gpu_ms, norm_ms, cpu_ms, pq_cpu_threads());
    pq_dev_free(dp), pq_dev_free(dm), pq_dev_free(dv), pq_dev_free(dg);
    free(p), free(m), free(v), free(g);
}

int main(int argc, char **argv) {
    pq_rng_seed(&gt_rng, 0x243f6a8885a308d3ULL);
    int device = argc > 1 ? atoi(argv[1]) : 0;
    if (pq_ops_set_device(device)) {
        fprintf(stderr, "parity-optim: no CUDA device %d (backend %s)\n", device, pq_ops_backend());
        return 2;
    }
    pq_cpu_set_threads(0);
    size_t sizes[] = {1, 255, 256, 257, 65537, 262144 + 3, 3000017};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) test_ops(sizes[k], 4);
    test_ops(0, 1);
    test_optim(100003, 4);
    bench_7b();
    printf("parity-optim: %d checks, %d failures; adamw 42M: gpu %.2f ms, cpu %.0f ms per step\n", checks, failures,
           gpu_ms, cpu_ms);
    return failures != 0;
}
