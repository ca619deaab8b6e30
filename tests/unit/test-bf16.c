// test-bf16.c: PQ_PRECISION=bf16's products (ops_cpu.c through oneDNN):
// linear_forward (with a bias) and linear_backward (accumulating into dinp)
// of bf16 weights against a double reference whose activations are rounded
// to bf16 as the mode rounds them; f32 weights keep exact f32 products.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "ops_grad.h"
#include "st_write.h"
#include "util.h"

static int fails;
static PqRng rng;

static float urand(void) { return (float)(pq_rng_uniform(&rng) * 2 - 1); }
static float rb(float x) { return pq_bf16_to_f32(pq_f32_to_bf16(x)); }

static void check(const char *what, const float *got, const double *want, size_t n, double tol) {
    double worst = 0, mx = 0;
    for (size_t i = 0; i < n; i++) mx = fabs(want[i]) > mx ? fabs(want[i]) : mx;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(got[i] - want[i]) / (mx > 0 ? mx : 1);
        if (!(d <= worst)) worst = d;
    }
    int ok = worst <= tol;
    printf("%s %s: max err %.2e of max %.3g (tol %.0e)\n", ok ? "ok  " : "FAIL", what, worst, mx, tol);
    fails += !ok;
}

// y (N,OC) = round?(x) W^T + b; dinp (N,C) = d0 + round?(dy) W
static void run(PqDtype dt, int N, int C, int OC, int rounded, double tol) {
    float *x = pq_xmalloc((size_t)N * C * 4), *dy = pq_xmalloc((size_t)N * OC * 4), *b = pq_xmalloc((size_t)OC * 4);
    float *wf = pq_xmalloc((size_t)OC * C * 4), *y = pq_xmalloc((size_t)N * OC * 4), *dx = pq_xmalloc((size_t)N * C * 4);
    uint16_t *wb = pq_xmalloc((size_t)OC * C * 2);
    double *ry = pq_xmalloc((size_t)N * OC * 8), *rdx = pq_xmalloc((size_t)N * C * 8);
    for (size_t i = 0; i < (size_t)N * C; i++) x[i] = urand() * 3, dx[i] = urand();
    for (size_t i = 0; i < (size_t)N * OC; i++) dy[i] = urand();
    for (int i = 0; i < OC; i++) b[i] = urand();
    for (size_t i = 0; i < (size_t)OC * C; i++) wb[i] = pq_f32_to_bf16(urand() * 0.1f), wf[i] = pq_bf16_to_f32(wb[i]);
    PqWeight w = {dt == PQ_BF16 ? (const void *)wb : (const void *)wf, dt, OC, C};
    for (int i = 0; i < N; i++)
        for (int o = 0; o < OC; o++) {
            double s = b[o];
            for (int c = 0; c < C; c++) s += (double)(rounded ? rb(x[(size_t)i * C + c]) : x[(size_t)i * C + c]) * wf[(size_t)o * C + c];
            ry[(size_t)i * OC + o] = s;
        }
    for (int i = 0; i < N; i++)
        for (int c = 0; c < C; c++) {
            double s = dx[(size_t)i * C + c];
            for (int o = 0; o < OC; o++)
                s += (double)(rounded ? rb(dy[(size_t)i * OC + o]) : dy[(size_t)i * OC + o]) * wf[(size_t)o * C + c];
            rdx[(size_t)i * C + c] = s;
        }
    pq_cpu_linear_forward(y, x, &w, b, N, C, OC);
    pq_cpu_linear_backward(dx, dy, &w, N, C, OC);
    char name[96];
    snprintf(name, sizeof name, "%s weights %dx%d, N=%d: linear_forward", dt == PQ_BF16 ? "bf16" : "f32", OC, C, N);
    check(name, y, ry, (size_t)N * OC, tol);
    snprintf(name, sizeof name, "%s weights %dx%d, N=%d: linear_backward", dt == PQ_BF16 ? "bf16" : "f32", OC, C, N);
    check(name, dx, rdx, (size_t)N * C, tol);
    free(x), free(dy), free(b), free(wf), free(y), free(dx), free(wb), free(ry), free(rdx);
}

int main(void) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[4096];
    int avx512 = 0;
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, " avx512f ") || strstr(line, " avx512_bf16 ")) avx512 = 1;
    if (f) fclose(f);
    if (!avx512) {
        printf("skip: no AVX-512 here, so oneDNN has no bf16 products\n");
        return 77;
    }
    setenv("PQ_PRECISION", "bf16", 1);
    pq_ops_set_threads(2); // the backend's binding links lib/matmul_bf16.c in, as in the tools
    pq_rng_seed(&rng, 5);
    if (!pq_cpu_bf16_products()) {
        if (strcmp(pq_ops_backend(), "cpu")) {
            printf("skip: the CUDA build's CPU ops compute in f32 (oneDNN is a CPU-build dependency)\n");
            return 77;
        }
        printf("FAIL PQ_PRECISION=bf16 is not on in the CPU build\n");
        return 1;
    }
    run(PQ_BF16, 37, 64, 96, 1, 2e-6);
    run(PQ_BF16, 5, 576, 1536, 1, 2e-6);
    run(PQ_BF16, 130, 200, 30, 1, 2e-6);
    run(PQ_F32, 37, 64, 96, 0, 2e-6); // f32 weights: the exact path
    // the rounding is real: the bf16 product misses the unrounded reference
    float x = 1.0f + 1.0f / 512, y;
    uint16_t one = pq_f32_to_bf16(1.0f);
    PqWeight w = {&one, PQ_BF16, 1, 1};
    pq_cpu_linear_forward(&y, &x, &w, NULL, 1, 1, 1);
    if (y != rb(x) || y == x) printf("FAIL 1 x (1 + 2^-9) = %.9g, want %.9g (rounded)\n", y, rb(x)), fails++;
    else printf("ok   1 x (1 + 2^-9) = %.9g: the activation was rounded to bf16\n", y);
    return fails != 0;
}
