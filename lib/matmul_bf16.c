// matmul_bf16.c: bf16 products on the CPU through oneDNN's matmul (AMX or
// AVX512-BF16 tiles where the CPU has them, f32 accumulation), for
// PQ_PRECISION=bf16 (see ops_cpu.c). CPU builds only: CUDA builds leave it
// out and ops_cpu.c's weak reference stays NULL (the f32 path).
#include "matmul_bf16.h"

#include <dnnl.h>

static dnnl_engine_t engine;
static dnnl_stream_t stream;

int pq_cpu_matmul_bf16(float *out, const uint16_t *x, const uint16_t *w, int M, int N, int K, int w_nk,
                       int accumulate) {
    if (!engine && (dnnl_engine_create(&engine, dnnl_cpu, 0) != dnnl_success ||
                    dnnl_stream_create(&stream, engine, dnnl_stream_default_flags) != dnnl_success))
        return -1;
    dnnl_memory_desc_t ad, bd, cd;
    dnnl_dims_t a = {M, K}, b = {K, N}, c = {M, N};
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t prim = NULL;
    dnnl_memory_t am = NULL, bm = NULL, cm = NULL;
    int rc = -1;
    if (dnnl_memory_desc_init_by_tag(&ad, 2, a, dnnl_bf16, dnnl_ab) ||
        dnnl_memory_desc_init_by_tag(&bd, 2, b, dnnl_bf16, w_nk ? dnnl_ba : dnnl_ab) ||
        dnnl_memory_desc_init_by_tag(&cd, 2, c, dnnl_f32, dnnl_ab))
        goto out;
    if (accumulate && (dnnl_primitive_attr_create(&attr) || dnnl_post_ops_create(&po) ||
                       dnnl_post_ops_append_sum(po, 1.0f) || dnnl_primitive_attr_set_post_ops(attr, po)))
        goto out;
    dnnl_matmul_desc_t md;
    if (dnnl_matmul_desc_init(&md, &ad, &bd, NULL, &cd) || dnnl_primitive_desc_create(&pd, &md, attr, engine, NULL) ||
        dnnl_primitive_create(&prim, pd))
        goto out;
    if (dnnl_memory_create(&am, &ad, engine, (void *)x) || dnnl_memory_create(&bm, &bd, engine, (void *)w) ||
        dnnl_memory_create(&cm, &cd, engine, out))
        goto out;
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}};
    if (dnnl_primitive_execute(prim, stream, 3, args) || dnnl_stream_wait(stream)) goto out;
    rc = 0;
out:
    if (am) dnnl_memory_destroy(am);
    if (bm) dnnl_memory_destroy(bm);
    if (cm) dnnl_memory_destroy(cm);
    if (prim) dnnl_primitive_destroy(prim);
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (po) dnnl_post_ops_destroy(po);
    if (attr) dnnl_primitive_attr_destroy(attr);
    return rc;
}
