/* tests/unit/model/test_models.c -- CLIP, UNet and VAE on the tiny checkpoint against the
 * independent PyTorch reference (tests/ref/sd_ref.py -> tests/data/ref/tiny_golden.safetensors).
 * The checkpoint is regenerated here with `kiln ckpt --tiny --seed 7`'s code; the golden file
 * was computed from that same file (see tests/ref/README.md).
 * Backend-parametric: it runs on the CPU backend; tests/gpu/test_models_cuda.c includes this file
 * with MODELS_BACKEND naming a function that opens a CUDA backend (NULL without error when
 * there is no device: every test is then skipped) and MODELS_EXTRA_TESTS for its own cases;
 * tests/gpu/test_models_cuda_f16.c also sets MODELS_STORAGE (GPU storage: fp16/bf16) and looser
 * MODELS_TOL_* tolerances. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "golden.h"

#include "base/mem.h"
#include "model/ckpt_gen.h"
#include "model/sd.h"
#include "model/tokenizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef MODELS_BACKEND
static struct backend *models_backend_cpu(struct err *err) {
    (void)err;
    return backend_cpu_new(0);
}
#define MODELS_BACKEND models_backend_cpu
#define MODELS_EXTRA_TESTS
#endif
/* How the model is stored (a const struct sd_storage * expression of `be`; NULL = F32 without
 * the shared store), and the relative tolerances of each network against the fp32 reference. */
#ifndef MODELS_STORAGE
#define MODELS_STORAGE NULL
#endif
#ifndef MODELS_TOL_CLIP
#define MODELS_TOL_CLIP 1e-4
#define MODELS_TOL_UNET 1e-4
#define MODELS_TOL_VAE 1e-4
#endif

static char ckpt_path[256];
static bool have_backend;

#define BACKEND_OR_SKIP()          \
    do {                           \
        if (!have_backend) skip(); \
    } while (0)
static struct ckpt golden;
static struct sd_model *model;
static struct backend *be;
static struct tscratch scratch;
static struct tctx ctx;

static int setup(void **state) {
    struct err err = {0};
    be = MODELS_BACKEND(&err);
    if (!be) {
        if (!err.code) return 0; /* no such device here: skip */
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    snprintf(ckpt_path, sizeof ckpt_path, "/tmp/kiln_test_models_%d.safetensors", (int)getpid());
    if (golden_tiny_ckpt(ckpt_path, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    if (ckpt_open(&golden, KILN_TEST_DATA "/ref/tiny_golden.safetensors", &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    model = sd_model_load(ckpt_path, be, MODELS_STORAGE, &err);
    if (!model) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    tscratch_init(&scratch, be);
    tctx_init(&ctx, be, &scratch);
    have_backend = true;
    return 0;
}

static int teardown(void **state) {
    if (!have_backend) {
        backend_free(be);
        return 0;
    }
    tctx_deinit(&ctx);
    tscratch_deinit(&scratch);
    sd_model_free(model);
    backend_free(be);
    ckpt_close(&golden);
    unlink(ckpt_path);
    return 0;
}

static void test_config_detected(void **state) {
    BACKEND_OR_SKIP();
    assert_int_equal(model->clip.config.width, 128);
    assert_int_equal(model->clip.config.n_layers, 12);
    assert_int_equal(model->clip.config.n_heads, 2);
    assert_int_equal(model->unet.config.model_channels, 32);
    assert_int_equal(model->unet.config.n_levels, 4);
    assert_int_equal(model->unet.config.channel_mult[2], 2);
    assert_true(model->unet.config.attn_level[2]);
    assert_false(model->unet.config.attn_level[3]);
    assert_int_equal(model->unet.config.context_dim, 128);
    assert_int_equal(model->vae.config.ch, 32);
    assert_int_equal(model->vae.config.n_levels, 4);
}

static void test_clip(void **state) {
    BACKEND_OR_SKIP();
    size_t n_tok, n_last, n_pen;
    float *tok = golden_read(&golden, "clip.tokens", &n_tok);
    float *last = golden_read(&golden, "clip.last", &n_last);
    float *pen = golden_read(&golden, "clip.penultimate", &n_pen);
    float *out = mem_alloc(n_last * sizeof(float));
    assert_int_equal(clip_encode(&ctx, &model->clip, (const int32_t *)tok, 2, -1, out), 0);
    golden_check("clip last layer", out, last, n_last, MODELS_TOL_CLIP);
    assert_int_equal(clip_encode(&ctx, &model->clip, (const int32_t *)tok, 2, -2, out), 0);
    golden_check("clip penultimate", out, pen, n_pen, MODELS_TOL_CLIP);
    /* a layer beyond the model is an error with a message, not a crash */
    assert_int_not_equal(clip_encode(&ctx, &model->clip, (const int32_t *)tok, 2, -13, out), 0);
    assert_non_null(strstr(ctx.err.msg, "out of range"));
    mem_free(tok);
    mem_free(last);
    mem_free(pen);
    mem_free(out);
}

static void test_unet(void **state) {
    BACKEND_OR_SKIP();
    size_t nx, nt, nc, no;
    float *x = golden_read(&golden, "unet.x", &nx);
    float *t = golden_read(&golden, "unet.timesteps", &nt);
    float *c = golden_read(&golden, "unet.context", &nc);
    float *want = golden_read(&golden, "unet.out", &no);
    float *out = mem_alloc(no * sizeof(float));
    int rc = unet_eval(&ctx, &model->unet, 2, 8, 8, x, t, c, 77, out);
    if (rc) fail_msg("unet_eval: %s", ctx.err.msg);
    golden_check("unet eps", out, want, no, MODELS_TOL_UNET);
    mem_free(x);
    mem_free(t);
    mem_free(c);
    mem_free(want);
    mem_free(out);
}

/* A 12x10 latent (96x80 pixels): downsampling rounds up, upsampling resizes to the skip
 * tensor (tests/ref/make_golden_odd.py made the reference). */
static void test_unet_odd_size(void **state) {
    BACKEND_OR_SKIP();
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
    golden_check("unet eps 12x10 latent", out, v[3], n[3], MODELS_TOL_UNET);
    for (int i = 0; i < 4; i++) mem_free(v[i]);
    mem_free(out);
    ckpt_close(&odd);
}

static void test_vae_decode(void **state) {
    BACKEND_OR_SKIP();
    size_t nz, nd;
    float *z = golden_read(&golden, "vae.z", &nz);
    float *want = golden_read(&golden, "vae.dec_raw", &nd);
    float *out = mem_alloc(nd * sizeof(float));
    int rc = vae_decode(&ctx, &model->vae, 1, 8, 8, z, out);
    if (rc) fail_msg("vae_decode: %s", ctx.err.msg);
    golden_check("vae decode", out, want, nd, MODELS_TOL_VAE);
    mem_free(z);
    mem_free(want);
    mem_free(out);
}

static void test_vae_encode(void **state) {
    BACKEND_OR_SKIP();
    size_t ni, nm;
    float *in = golden_read(&golden, "vae.enc_in", &ni);
    float *want = golden_read(&golden, "vae.enc_mean", &nm);
    float *out = mem_alloc(nm * sizeof(float));
    int rc = vae_encode(&ctx, &model->vae, 1, 64, 64, in, out);
    if (rc) fail_msg("vae_encode: %s", ctx.err.msg);
    golden_check("vae encode mean", out, want, nm, MODELS_TOL_VAE);
    mem_free(in);
    mem_free(want);
    mem_free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_detected),
        cmocka_unit_test(test_clip),
        cmocka_unit_test(test_unet),
        cmocka_unit_test(test_unet_odd_size),
        cmocka_unit_test(test_vae_decode),
        cmocka_unit_test(test_vae_encode),
        MODELS_EXTRA_TESTS
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
