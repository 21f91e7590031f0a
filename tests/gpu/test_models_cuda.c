/* tests/gpu/test_models_cuda.c -- tests/unit/model/test_models.c on the CUDA backend: the tiny
 * CLIP, UNet (8x8 and the odd 12x10 latent) and VAE against the independent PyTorch reference,
 * with the same 1e-4 relative tolerance as on the CPU; plus the tiny UNet timed on CUDA and on
 * the CPU backend in the same run (printed, not asserted). Needs a CUDA device; without one
 * every test is skipped. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "base/clock.h"
#include "tensor/backend.h"

#include <stdio.h>

/* CUDA device 0, or NULL without an error when there is none (the tests skip). */
static struct backend *models_backend_cuda(struct err *err) {
    int n = backend_cuda_count();
    printf("CUDA devices: %d\n", n);
    return n > 0 ? backend_cuda_new(0, err) : NULL;
}

static void test_unet_timing(void **state);

/* test_unet_streamed keeps a third of the blocks on GPU 1 when there is one. */
static int models_peer_device(struct backend *be) { return be->device == 0 && backend_cuda_count() > 1 ? 1 : -1; }
#define MODELS_PEER_DEVICE(be) models_peer_device(be)

#define MODELS_BACKEND models_backend_cuda
#define MODELS_EXTRA_TESTS cmocka_unit_test(test_unet_timing),
#include "unit/model/test_models.c"

/* Mean ms of `reps` unet_eval calls after one warm-up. */
static double time_unet(struct tctx *c, const struct unet *u, const float *x, const float *t, const float *cond,
                        float *out, int reps) {
    if (unet_eval(c, u, 2, 8, 8, x, t, cond, 77, out)) fail_msg("unet_eval: %s", c->err.msg);
    double t0 = clock_now();
    for (int i = 0; i < reps; i++)
        if (unet_eval(c, u, 2, 8, 8, x, t, cond, 77, out)) fail_msg("unet_eval: %s", c->err.msg);
    return (clock_now() - t0) * 1e3 / reps;
}

/* The same model on the CPU backend beside CUDA (whole unet_eval: graph build, plan, copies in
 * and out, run); the CPU result is checked against the golden too. */
static void test_unet_timing(void **state) {
    BACKEND_OR_SKIP();
    struct unet_golden g;
    unet_golden_read(&g);
    float *x = g.x, *t = g.t, *c = g.c, *want = g.want;
    size_t no = g.n_out;
    float *out = mem_alloc(no * sizeof(float));
    double gpu_ms = time_unet(&ctx, &model->unet, x, t, c, out, 20);
    golden_check("cuda unet eps (timed)", out, want, no, 1e-4);
    struct err err = {0};
    struct backend *cpu = backend_cpu_new(0);
    struct sd_model *m_cpu = sd_model_load(ckpt_path, cpu, NULL, &err);
    if (!m_cpu) fail_msg("%s", err.msg);
    struct tscratch s_cpu;
    struct tctx c_cpu;
    tscratch_init(&s_cpu, cpu);
    tctx_init(&c_cpu, cpu, &s_cpu);
    double cpu_ms = time_unet(&c_cpu, &m_cpu->unet, x, t, c, out, 5);
    golden_check("cpu unet eps (same run)", out, want, no, 1e-4);
    printf("  tiny unet, batch 2, 8x8 latent: cuda %.2f ms, cpu %.2f ms per eval\n", gpu_ms, cpu_ms);
    tctx_deinit(&c_cpu);
    tscratch_deinit(&s_cpu);
    sd_model_free(m_cpu);
    backend_free(cpu);
    unet_golden_free(&g);
    mem_free(out);
}
