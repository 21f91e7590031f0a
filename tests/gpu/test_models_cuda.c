/* tests/gpu/test_models_cuda.c -- the tiny CLIP, UNet (8x8 and the odd 12x10 latent) and VAE on
 * the CUDA backend against the independent PyTorch reference (tests/data/ref/ tiny_golden and unet_odd, made
 * by tests/ref/sd_ref.py and make_golden_odd.py from the checkpoint `kiln ckpt --tiny --seed 7`
 * writes), with the same 1e-4 relative tolerance as tests/unit/model/test_models.c on the CPU.
 * Also times the tiny UNet on CUDA and on the CPU backend (printed, not asserted).
 * Needs a CUDA device; without one every test is skipped. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "golden.h"

#include "base/clock.h"
#include "base/mem.h"
#include "model/ckpt_gen.h"
#include "model/sd.h"
#include "model/tokenizer.h"
#include "tensor/backend.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char ckpt_path[256];
static struct ckpt golden;
static struct sd_model *model;
static struct backend *be;
static struct tscratch scratch;
static struct tctx ctx;
static bool have_gpu;

static int setup(void **state) {
    struct err err = {0};
    int n = backend_cuda_count();
    printf("CUDA devices: %d\n", n);
    if (n <= 0) return 0;
    snprintf(ckpt_path, sizeof ckpt_path, "/tmp/kiln_test_models_cuda_%d.safetensors", (int)getpid());
    if (golden_tiny_ckpt(ckpt_path, &err) ||
        ckpt_open(&golden, KILN_TEST_DATA "/ref/tiny_golden.safetensors", &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    be = backend_cuda_new(0, &err);
    if (!be) {
        fprintf(stderr, "backend_cuda_new: %s\n", err.msg);
        return -1;
    }
    model = sd_model_load(ckpt_path, be, &err);
    if (!model) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    tscratch_init(&scratch, be);
    tctx_init(&ctx, be, &scratch);
    have_gpu = true;
    return 0;
}

static int teardown(void **state) {
    if (!have_gpu) return 0;
    tctx_deinit(&ctx);
    tscratch_deinit(&scratch);
    sd_model_free(model);
    backend_free(be);
    ckpt_close(&golden);
    unlink(ckpt_path);
    return 0;
}

#define GPU_OR_SKIP()          \
    do {                       \
        if (!have_gpu) skip(); \
    } while (0)

static void test_clip(void **state) {
    GPU_OR_SKIP();
    size_t n_tok, n_last, n_pen;
    float *tok = golden_read(&golden, "clip.tokens", &n_tok);
    float *last = golden_read(&golden, "clip.last", &n_last);
    float *pen = golden_read(&golden, "clip.penultimate", &n_pen);
    float *out = mem_alloc(n_last * sizeof(float));
    int rc = clip_encode(&ctx, &model->clip, (const int32_t *)tok, 2, -1, out);
    if (rc) fail_msg("clip_encode: %s", ctx.err.msg);
    golden_check("cuda clip last layer", out, last, n_last, 1e-4);
    rc = clip_encode(&ctx, &model->clip, (const int32_t *)tok, 2, -2, out);
    if (rc) fail_msg("clip_encode: %s", ctx.err.msg);
    golden_check("cuda clip penultimate", out, pen, n_pen, 1e-4);
    mem_free(tok);
    mem_free(last);
    mem_free(pen);
    mem_free(out);
}

/* Mean ms of `reps` unet_eval calls after one warm-up. */
static double time_unet(struct tctx *c, const struct unet *u, const float *x, const float *t, const float *cond,
                        float *out, int reps) {
    if (unet_eval(c, u, 2, 8, 8, x, t, cond, 77, out)) fail_msg("unet_eval: %s", c->err.msg);
    double t0 = clock_now();
    for (int i = 0; i < reps; i++)
        if (unet_eval(c, u, 2, 8, 8, x, t, cond, 77, out)) fail_msg("unet_eval: %s", c->err.msg);
    return (clock_now() - t0) * 1e3 / reps;
}

static void test_unet(void **state) {
    GPU_OR_SKIP();
    size_t nx, nt, nc, no;
    float *x = golden_read(&golden, "unet.x", &nx);
    float *t = golden_read(&golden, "unet.timesteps", &nt);
    float *c = golden_read(&golden, "unet.context", &nc);
    float *want = golden_read(&golden, "unet.out", &no);
    float *out = mem_alloc(no * sizeof(float));
    int rc = unet_eval(&ctx, &model->unet, 2, 8, 8, x, t, c, 77, out);
    if (rc) fail_msg("unet_eval: %s", ctx.err.msg);
    golden_check("cuda unet eps", out, want, no, 1e-4);

    /* timing: the same model on the CPU backend beside it (whole unet_eval: graph build, plan,
     * copies in and out, run) */
    double gpu_ms = time_unet(&ctx, &model->unet, x, t, c, out, 20);
    struct err err = {0};
    struct backend *cpu = backend_cpu_new(0);
    struct sd_model *m_cpu = sd_model_load(ckpt_path, cpu, &err);
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
    mem_free(x);
    mem_free(t);
    mem_free(c);
    mem_free(want);
    mem_free(out);
}

/* A 12x10 latent (96x80 pixels): downsampling rounds up, upsampling resizes to the skip tensor. */
static void test_unet_odd_size(void **state) {
    GPU_OR_SKIP();
    struct err err = {0};
    struct ckpt odd;
    if (ckpt_open(&odd, KILN_TEST_DATA "/ref/unet_odd.safetensors", &err)) fail_msg("%s", err.msg);
    float *v[4];
    const char *names[4] = {"unet.x", "unet.context", "unet.timesteps", "unet.out"};
    size_t n[4];
    for (int i = 0; i < 4; i++) {
        const struct ckpt_tensor *t = ckpt_find(&odd, names[i]);
        assert_non_null(t);
        n[i] = (size_t)ckpt_tensor_numel(t);
        v[i] = mem_alloc(n[i] * sizeof(float));
        assert_int_equal(ckpt_tensor_read_f32(t, v[i], &err), 0);
    }
    float *out = mem_alloc(n[3] * sizeof(float));
    int rc = unet_eval(&ctx, &model->unet, 1, 12, 10, v[0], v[2], v[1], 77, out);
    if (rc) fail_msg("unet_eval: %s", ctx.err.msg);
    golden_check("cuda unet eps 12x10", out, v[3], n[3], 1e-4);
    for (int i = 0; i < 4; i++) mem_free(v[i]);
    mem_free(out);
    ckpt_close(&odd);
}

static void test_vae_decode(void **state) {
    GPU_OR_SKIP();
    size_t nz, nd;
    float *z = golden_read(&golden, "vae.z", &nz);
    float *want = golden_read(&golden, "vae.dec_raw", &nd);
    float *out = mem_alloc(nd * sizeof(float));
    int rc = vae_decode(&ctx, &model->vae, 1, 8, 8, z, out);
    if (rc) fail_msg("vae_decode: %s", ctx.err.msg);
    golden_check("cuda vae decode", out, want, nd, 1e-4);
    mem_free(z);
    mem_free(want);
    mem_free(out);
}

static void test_vae_encode(void **state) {
    GPU_OR_SKIP();
    size_t ni, nm;
    float *in = golden_read(&golden, "vae.enc_in", &ni);
    float *want = golden_read(&golden, "vae.enc_mean", &nm);
    float *out = mem_alloc(nm * sizeof(float));
    int rc = vae_encode(&ctx, &model->vae, 1, 64, 64, in, out);
    if (rc) fail_msg("vae_encode: %s", ctx.err.msg);
    golden_check("cuda vae encode mean", out, want, nm, 1e-4);
    mem_free(in);
    mem_free(want);
    mem_free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clip),       cmocka_unit_test(test_unet),       cmocka_unit_test(test_unet_odd_size),
        cmocka_unit_test(test_vae_decode), cmocka_unit_test(test_vae_encode),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
