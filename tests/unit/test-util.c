// test-util.c: the shared helpers: seeded RNG, shuffles, buffers, the
// reorder buffer that keeps LLM results in input order.
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "llm.h"
#include "ops.h"
#include "tool.h"
#include "util.h"

static int fails = 0;
#define CHECK(c)                                                          \
    do {                                                                  \
        if (!(c)) {                                                       \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
            fails++;                                                      \
        }                                                                 \
    } while (0)

static void test_rng(void) {
    PqRng a, b;
    pq_rng_seed(&a, 42);
    pq_rng_seed(&b, 42);
    for (int i = 0; i < 100; i++) CHECK(pq_rng_next(&a) == pq_rng_next(&b));
    pq_rng_seed(&b, 43);
    int same = 0;
    for (int i = 0; i < 100; i++) same += pq_rng_next(&a) == pq_rng_next(&b);
    CHECK(same == 0);
    // Uniformity of pq_rng_below: chi-square over 10 bins, 100k draws.
    long bins[10] = {0};
    for (int i = 0; i < 100000; i++) bins[pq_rng_below(&a, 10)]++;
    double chi = 0;
    for (int i = 0; i < 10; i++) chi += (bins[i] - 10000.0) * (bins[i] - 10000.0) / 10000.0;
    CHECK(chi < 30); // 9 dof: p < 0.001 at 27.9
    double s = 0;
    for (int i = 0; i < 100000; i++) {
        double u = pq_rng_uniform(&a);
        CHECK(u >= 0 && u < 1);
        s += u;
    }
    CHECK(fabs(s / 100000 - 0.5) < 0.01);
}

static void test_shuffle(void) {
    int a[20], seen[20] = {0};
    for (int i = 0; i < 20; i++) a[i] = i;
    PqRng r;
    pq_rng_seed(&r, 7);
    pq_rng_shuffle_int(&r, a, 20);
    int moved = 0;
    for (int i = 0; i < 20; i++) {
        seen[a[i]]++;
        moved += a[i] != i;
    }
    for (int i = 0; i < 20; i++) CHECK(seen[i] == 1); // a permutation
    CHECK(moved > 10);
}

static void test_buf(void) {
    PqBuf b = {0};
    for (int i = 0; i < 1000; i++) pq_buf_printf(&b, "%d,", i);
    CHECK(strncmp(b.data, "0,1,2,", 6) == 0);
    CHECK(b.len == strlen(b.data));
    CHECK(strcmp(b.data + b.len - 4, "999,") == 0);
    pq_buf_clear(&b);
    CHECK(b.len == 0 && b.data[0] == 0);
    pq_buf_free(&b);
    CHECK(pq_hash_str("a") != pq_hash_str("b"));
    CHECK(pq_hash_str("") == 0xcbf29ce484222325ULL); // FNV-1a offset basis
}

// The reorder buffer emits results in sequence order, whatever order they
// finish in; NULL results (rejected lines) are skipped.
static void test_reorder(void) {
    char path[] = "/tmp/pq-test-reorder-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    PqTool t;
    pq_tool_init(&t, "test", "");
    t.out_fd = fd;
    PqReorder r;
    pq_reorder_init(&r, 4);
    long order[] = {2, 0, 3, 1, 5, 4, 7, 6};
    for (int i = 0; i < 8; i++) {
        char buf[16];
        snprintf(buf, sizeof buf, "{\"k\":%ld}", order[i]);
        pq_reorder_put(&r, &t, order[i], order[i] == 3 ? NULL : pq_xstrdup(buf));
    }
    CHECK(r.next == 8);
    CHECK(t.n_out == 7);
    pq_reorder_free(&r);
    pq_buf_free(&t.outbuf);
    close(fd);
    PqErr e;
    char *got = pq_read_file(path, NULL, &e);
    CHECK(got && strcmp(got, "{\"k\":0}\n{\"k\":1}\n{\"k\":2}\n{\"k\":4}\n{\"k\":5}\n{\"k\":6}\n{\"k\":7}\n") == 0);
    free(got);
    unlink(path);
}

static void test_json(void) {
    cJSON *o = cJSON_CreateObject();
    pq_json_add_float(o, "x", 0.1f);
    pq_json_add_float(o, "nan", NAN);
    pq_json_set(o, "x", cJSON_CreateNumber(2)); // replaced, not duplicated
    cJSON_AddNumberToObject(o, "sample", 3);
    cJSON_AddStringToObject(o, "id", "abc");
    char *s = cJSON_PrintUnformatted(o);
    CHECK(strcmp(s, "{\"x\":2,\"nan\":null,\"sample\":3,\"id\":\"abc\"}") == 0);
    cJSON_free(s);
    PqBuf k = {0};
    pq_record_key(o, &k);
    CHECK(strcmp(k.data, "abc\x1fsample=3") == 0);
    pq_buf_free(&k);
    cJSON_Delete(o);
    o = cJSON_CreateObject();
    pq_json_add_float(o, "f", (float)1 / 3);
    s = cJSON_PrintUnformatted(o);
    double back = strtod(strchr(s, ':') + 1, NULL);
    CHECK((float)back == (float)1 / 3); // %.9g round-trips a float
    cJSON_free(s);
    cJSON_Delete(o);
}

// -j's default: 8 requests for a server, a local model on the CPU 8, on the GPU 128; a -j given stays
static void test_jobs(void) {
    char dir[] = "/tmp/pq-test-jobs-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char cfgp[64];
    snprintf(cfgp, sizeof cfgp, "%s/config.json", dir);
    FILE *f = fopen(cfgp, "w");
    CHECK(f != NULL);
    if (f) fputs("{}", f), fclose(f);
    PqLlmConfig c;
    pq_llm_config_init(&c);
    c.model = "gpt-4o-mini";
    pq_llm_config_resolve(&c);
    CHECK(c.jobs == PQ_LLM_JOBS);
    pq_llm_config_init(&c);
    c.model = dir;
    pq_llm_config_resolve(&c);
    CHECK(c.jobs == (!strcmp(pq_ops_backend(), "cuda") ? PQ_LLM_LOCAL_GPU_JOBS : PQ_LLM_JOBS));
    pq_llm_config_init(&c);
    c.model = dir;
    c.jobs = 3;
    pq_llm_config_resolve(&c);
    CHECK(c.jobs == 3);
    unlink(cfgp);
    rmdir(dir);
}

// The benchmarks' peaks (devpeak.c): the datasheets' figures for parts by name, whatever their clocks say; the
// attributes' arithmetic for others (an H100 SXM's as an unnamed part: 132 SMs x 1.98 GHz x 4,096 FLOPs a cycle,
// and 2 x 2,619 MHz x 640 bytes); nothing from nothing; and the backend's own device.
static void test_dev_peaks(void) {
    PqDevInfo h100 = {"NVIDIA H100 80GB HBM3", 9, 0, 132, 1980000, 2619000, 5120, 85520809984};
    PqDevInfo d = h100;
    double tf, gbs;
    pq_dev_peaks(&d, &tf, &gbs);
    CHECK(tf == 989 && gbs == 3350);
    snprintf(d.name, sizeof d.name, "NVIDIA H100 PCIe");
    pq_dev_peaks(&d, &tf, &gbs);
    CHECK(tf == 756 && gbs == 2000);
    snprintf(d.name, sizeof d.name, "NVIDIA H200");
    d.mem_clock_khz = 3201000, d.bus_bits = 6144;
    pq_dev_peaks(&d, &tf, &gbs);
    CHECK(tf == 989 && gbs == 4800);
    snprintf(d.name, sizeof d.name, "NVIDIA GH200 480GB"); // (not an H200: its memory from the attributes)
    d.mem_clock_khz = 2619000;
    pq_dev_peaks(&d, &tf, &gbs);
    CHECK(tf == 989 && fabs(gbs - 2 * 2.619e9 * 768 / 1e9) < 1e-6);
    d = h100;
    snprintf(d.name, sizeof d.name, "Some Future GPU");
    const char *how = pq_dev_peaks(&d, &tf, &gbs);
    CHECK(fabs(tf - 132 * 1.98e9 * 4096 / 1e12) < 1e-6 && fabs(gbs - 3352.32) < 1e-6);
    CHECK(strstr(how, "clocks") != NULL);
    d.cc_major = 8, d.cc_minor = 0; // A100's rate a cycle, half Hopper's
    pq_dev_peaks(&d, &tf, &gbs);
    CHECK(fabs(tf - 132 * 1.98e9 * 2048 / 1e12) < 1e-6);
    PqDevInfo none = {"cpu", 0, 0, 0, 0, 0, 0, 0};
    how = pq_dev_peaks(&none, &tf, &gbs);
    CHECK(tf == 0 && gbs == 0 && !strcmp(how, "nothing known"));
    PqDevInfo mine;
    int rc = pq_dev_info(&mine);
    CHECK(!strcmp(pq_ops_backend(), "cpu") ? rc == -1 && !strcmp(mine.name, "cpu") && mine.sms == 0
                                            : rc == 0 && mine.sms > 0 && mine.mem_bytes > 0);
}

int main(void) {
    test_jobs();
    test_rng();
    test_shuffle();
    test_buf();
    test_reorder();
    test_json();
    test_dev_peaks();
    if (fails) fprintf(stderr, "test-util: %d checks failed\n", fails);
    return fails != 0;
}
