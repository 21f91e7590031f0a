/* tests/gpu/test_attention_bench_cuda.c -- times the SD 1.5 UNet's attention shapes in F16 (the
 * flash kernel, attention_flash.cu) and in F32 (the cuBLAS path), and checks that the two agree.
 * Opt-in (a measurement): runs only when KILN_GPU_BENCH is set, else it is skipped.
 * Figures: milliseconds per call (20 calls after a warm-up, one graph run each) and the effective
 * TFLOP/s (4 nq nk d per head and image: QK^T and PV). The F16 figures are cuDNN's fused
 * attention's (attention_dnn.cu), kiln's flash kernel's with KILN_CUDNN_SDPA=0. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "base/clock.h"
#include "base/mem.h"
#include "tensor/backend.h"
#include "tensor/tensor.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct shape {
    int64_t b, nq, nk, c;
    int heads;
    const char *what;
};

/* Runs q k v attention in dtype dt on a fresh backend, returns ms per call and the output in out
 * (F32). */
static double run_one(enum dtype dt, bool cpu, const struct shape *s, const float *q, const float *k, const float *v,
                      float *out) {
    struct err err = {0};
    struct backend *be = cpu ? backend_cpu_new(0) : backend_cuda_new(0, &err);
    if (!be) fail_msg("%s", err.msg);
    struct tscratch scratch;
    struct tctx c;
    tscratch_init(&scratch, be);
    tctx_init(&c, be, &scratch);
    struct tensor *tq = tensor_input(&c, DTYPE_F32, 3, (int64_t[]){s->b, s->nq, s->c});
    struct tensor *tk = tensor_input(&c, DTYPE_F32, 3, (int64_t[]){s->b, s->nk, s->c});
    struct tensor *tv = tensor_input(&c, DTYPE_F32, 3, (int64_t[]){s->b, s->nk, s->c});
    struct tensor *y = op_attention(&c, op_cast(&c, tq, dt), op_cast(&c, tk, dt), op_cast(&c, tv, dt), s->heads, false);
    y = op_cast(&c, y, DTYPE_F32);
    tensor_set_output(tq); /* the inputs are set once and the graph run many times: keep their memory */
    tensor_set_output(tk);
    tensor_set_output(tv);
    if (tctx_plan(&c, &y, 1) || tctx_set(&c, tq, q) || tctx_set(&c, tk, k) || tctx_set(&c, tv, v))
        fail_msg("%s", c.err.msg);
    for (int i = 0; i < (cpu ? 1 : 3); i++)
        if (tctx_run(&c)) fail_msg("%s", c.err.msg);
    if (tctx_get(&c, y, out)) fail_msg("%s", c.err.msg);
    const int runs = cpu ? 1 : 20;
    double t0 = clock_now();
    for (int i = 0; i < runs; i++)
        if (tctx_run(&c)) fail_msg("%s", c.err.msg);
    if (tctx_get(&c, y, out)) fail_msg("%s", c.err.msg); /* waits for the runs */
    double ms = (clock_now() - t0) * 1e3 / runs;
    tctx_deinit(&c);
    tscratch_deinit(&scratch);
    backend_free(be);
    return ms;
}

static void test_attention_shapes(void **state) {
    if (!getenv("KILN_GPU_BENCH") || backend_cuda_count() <= 0) skip();
    const struct shape shapes[] = {
        {8, 4096, 4096, 320, 8, "self 64x64, batch 8"},
        {2, 4096, 4096, 320, 8, "self 64x64, batch 2"},
        {8, 1024, 1024, 640, 8, "self 32x32, batch 8"},
        {8, 4096, 77, 320, 8, "cross 64x64, batch 8"},
    };
    bool ok = true;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const struct shape *s = &shapes[i];
        int64_t nq = s->b * s->nq * s->c, nk = s->b * s->nk * s->c;
        float *q = mem_alloc((size_t)nq * sizeof(float)), *k = mem_alloc((size_t)nk * sizeof(float));
        float *v = mem_alloc((size_t)nk * sizeof(float));
        float *ref = mem_alloc((size_t)nq * sizeof(float)), *out = mem_alloc((size_t)nq * sizeof(float));
        uint64_t r = 99;
        for (int64_t j = 0; j < nq; j++) q[j] = (float)((r = r * 6364136223846793005ULL + 1) >> 40) / (1 << 23) - 1.0f;
        for (int64_t j = 0; j < nk; j++) k[j] = (float)((r = r * 6364136223846793005ULL + 1) >> 40) / (1 << 23) - 1.0f;
        for (int64_t j = 0; j < nk; j++) v[j] = (float)((r = r * 6364136223846793005ULL + 1) >> 40) / (1 << 23) - 1.0f;
        double flop = 4.0 * (double)s->b * s->nq * s->nk * (double)s->c;
        float *out32 = mem_alloc((size_t)nq * sizeof(float));
        double ms = run_one(DTYPE_F16, false, s, q, k, v, out), ms32 = run_one(DTYPE_F32, false, s, q, k, v, out32);
        run_one(DTYPE_F32, true, s, q, k, v, ref); /* the CPU backend: the reference */
        double d16 = 0, d32 = 0, maxr = 0;
        for (int64_t j = 0; j < nq; j++) {
            d16 = fmax(d16, fabs((double)out[j] - ref[j]));
            d32 = fmax(d32, fabs((double)out32[j] - ref[j]));
            maxr = fmax(maxr, fabs((double)ref[j]));
        }
        printf("  %-22s F16 %.4f ms (%.0f TFLOP/s), F32 %.4f ms; max |cuda - cpu| F16 %.3g, F32 %.3g of max %.3g\n",
               s->what, ms, flop / (ms * 1e-3) / 1e12, ms32, d16, d32, maxr);
        ok = ok && d16 <= 5e-3 * maxr && d32 <= 1e-5 * maxr; /* test_ops_cuda's attention tolerances */
        mem_free(out32);
        mem_free(q);
        mem_free(k);
        mem_free(v);
        mem_free(ref);
        mem_free(out);
    }
    assert_true(ok);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_attention_shapes)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
