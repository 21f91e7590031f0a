/* tests/gpu/test_bench_cuda.c -- one SD 1.5-sized UNet evaluation (batch 2, 64x64 latent, i.e.
 * one CFG step at 512x512) on CUDA in fp32 and in fp16 (kiln's GPU storage, uploaded from the
 * shared host copy, whose fill from the file is timed on its own) and on the CPU backend of the same machine: times
 * each and compares the outputs with the CPU's. Opt-in (it writes a 2 GB random checkpoint and takes a while):
 * runs only when KILN_GPU_BENCH is set in the environment, else it is skipped.
 * The checkpoint is ckpt_gen's random SD 1.5 layout (sd_config_sd15), so the figures are the
 * real model's cost; the values mean nothing beyond cross-backend agreement.
 * The fp16 run uses kiln's GPU storage as the server does (sd_storage_for: channels-last unless
 * KILN_CHANNELS_LAST=0). KILN_GPU_BENCH_BATCH=N evaluates batch N instead of 2 (2 x the images of
 * a CFG step); KILN_GPU_BENCH_F16_ONLY=1 runs the fp16 evaluation alone (profiles, other batch
 * sizes: no fp32 or CPU run to compare with) and then times the VAE decode of the step's images
 * (half the batch) in the GPU's storage. KILN_CUDNN_SDPA=0: attention on kiln's own kernels
 * instead of cuDNN's (attention_dnn.cu). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "golden.h"

#include "base/clock.h"
#include "base/mem.h"
#include "model/ckpt_gen.h"
#include "model/safetensors.h"
#include "model/sd.h"
#include "model/unet.h"
#include "model/vae.h"
#include "model/wstore.h"
#include "tensor/backend.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* The median of the n (few) times in t, which it sorts. */
static double median(double *t, int n) {
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (t[j] < t[i]) {
                double tmp = t[i];
                t[i] = t[j];
                t[j] = tmp;
            }
    return t[n / 2];
}

/* Loads the VAE of ck on be in storage st, decodes b latents of 64x64 (512x512 images) once to
 * warm up and `runs` times more; returns the median seconds. */
static double bench_vae(struct backend *be, const struct ckpt *ck, const struct nn_storage *st, int64_t b, int runs) {
    struct err err = {0};
    struct vae *m = mem_calloc(1, sizeof *m);
    if (vae_load(m, ck, be, st, &err)) fail_msg("vae: %s", err.msg);
    struct tscratch scratch;
    struct tctx c;
    tscratch_init(&scratch, be);
    tctx_init(&c, be, &scratch);
    int64_t nz = b * 4 * 64 * 64, ni = b * 3 * 512 * 512;
    float *z = mem_alloc((size_t)nz * sizeof(float)), *img = mem_alloc((size_t)ni * sizeof(float));
    uint64_t s = 777;
    for (int64_t i = 0; i < nz; i++) z[i] = (float)((s = s * 6364136223846793005ULL + 1) >> 40) / (1 << 23) - 1.0f;
    double t[8];
    if (runs > 8) runs = 8;
    for (int r = 0; r <= runs; r++) {
        double a = clock_now();
        if (vae_decode(&c, m, b, 64, 64, z, img)) fail_msg("vae: %s", c.err.msg);
        if (r) t[r - 1] = clock_now() - a;
    }
    mem_free(z);
    mem_free(img);
    tctx_deinit(&c);
    tscratch_deinit(&scratch);
    vae_deinit(m);
    mem_free(m);
    return median(t, runs);
}

/* Loads the UNet of ck on be, runs 1 warm-up + runs evaluations; returns the median seconds
 * and leaves the last output in out. */
static double bench(struct backend *be, const struct ckpt *ck, const struct nn_storage *st, int64_t batch,
                    const float *x, const float *t, const float *ctx, float *out, int runs, const char *name) {
    struct err err = {0};
    struct unet *u = mem_calloc(1, sizeof *u);
    double l0 = clock_now();
    if (unet_load(u, ck, be, st, &err)) fail_msg("%s: %s", name, err.msg);
    printf("  %s: loaded in %.2f s\n", name, clock_now() - l0);
    struct tscratch scratch;
    struct tctx c;
    tscratch_init(&scratch, be);
    tctx_init(&c, be, &scratch);
    double best[8];
    for (int r = 0; r <= runs; r++) {
        double a = clock_now();
        if (unet_eval(&c, u, batch, 64, 64, x, t, ctx, 77, out)) fail_msg("%s: %s", name, c.err.msg);
        double s = clock_now() - a;
        printf("  %s %s: %.3f s\n", name, r ? "run" : "warm-up", s);
        if (r) best[r - 1] = s;
    }
    printf("  %s: activations %.0f MiB, weights %.0f MiB\n", name, (double)scratch.peak / (1 << 20),
           (double)u->weights.size / (1 << 20));
    tctx_deinit(&c);
    tscratch_deinit(&scratch);
    unet_deinit(u);
    mem_free(u);
    return median(best, runs);
}

static void test_sd15_unet(void **state) {
    if (!getenv("KILN_GPU_BENCH") || backend_cuda_count() <= 0) skip();
    struct err err = {0};
    char path[256];
    snprintf(path, sizeof path, "/tmp/kiln_bench_sd15_%d.safetensors", (int)getpid());
    struct sd_config cfg;
    sd_config_sd15(&cfg);
    double t0 = clock_now();
    if (ckpt_gen_write(path, &cfg, 1, &err)) fail_msg("%s", err.msg);
    printf("  random SD 1.5 checkpoint written in %.1f s\n", clock_now() - t0);
    struct ckpt ck;
    if (ckpt_open(&ck, path, &err)) fail_msg("%s", err.msg);

    const char *bs = getenv("KILN_GPU_BENCH_BATCH"), *only = getenv("KILN_GPU_BENCH_F16_ONLY");
    int64_t nb = bs && atoi(bs) > 0 && atoi(bs) <= 64 ? atoi(bs) : 2;
    bool f16_only = only && only[0] == '1';
    int64_t nx = nb * 4 * 64 * 64, nc = nb * 77 * 768;
    float *x = mem_alloc((size_t)nx * sizeof(float)), *ctx = mem_alloc((size_t)nc * sizeof(float));
    float *yg = mem_alloc((size_t)nx * sizeof(float)), *yc = mem_alloc((size_t)nx * sizeof(float));
    float t[64];
    for (int i = 0; i < 64; i++) t[i] = 500.0f;
    uint64_t s = 12345;
    for (int64_t i = 0; i < nx; i++) x[i] = (float)((s = s * 6364136223846793005ULL + 1) >> 40) / (1 << 24) - 0.5f;
    for (int64_t i = 0; i < nc; i++) ctx[i] = (float)((s = s * 6364136223846793005ULL + 1) >> 40) / (1 << 24) - 0.5f;

    struct backend *gpu = backend_cuda_new(0, &err);
    if (!gpu) fail_msg("%s", err.msg);
    float *yh = mem_alloc((size_t)nx * sizeof(float));
    double g = f16_only ? 0 : bench(gpu, &ck, NULL, nb, x, t, ctx, yg, 5, "cuda fp32");
    /* the GPU's storage: fp16 weights and activations, through the shared host store (pinned) */
    struct nn_storage f16 = sd_storage_for(gpu, false, wstore_global()).unet;
    assert_int_equal(f16.dtype, DTYPE_F16);
    struct backend *cpu = backend_cpu_new(0);
    struct unet *keeper = mem_calloc(1, sizeof *keeper); /* holds the host image: file -> fp16 image */
    double l0 = clock_now();
    if (unet_load(keeper, &ck, cpu, &f16, &err)) fail_msg("%s", err.msg);
    printf("  file -> fp16 host image: %.2f s\n", clock_now() - l0);
    double h = bench(gpu, &ck, &f16, nb, x, t, ctx, yh, 5,
                     f16.channels_last ? "cuda fp16 channels-last (from the host copy)" : "cuda fp16 (from the host copy)");
    unet_deinit(keeper);
    mem_free(keeper);
    int64_t images = nb / 2 > 0 ? nb / 2 : 1;
    struct nn_storage vst = sd_storage_for(gpu, false, wstore_global()).vae;
    double v = bench_vae(gpu, &ck, &vst, images, 5);
    backend_free(gpu);
    if (f16_only) {
        printf("  SD 1.5 UNet, batch %lld, 64x64: cuda fp16 %.4f s per evaluation (%s)\n", (long long)nb, h,
               f16.channels_last ? "channels-last" : "NCHW");
        printf("  SD 1.5 VAE decode, %lld images of 512x512: cuda %s %.4f s\n", (long long)images,
               dtype_name(vst.dtype), v);
    } else {
        double c = bench(cpu, &ck, NULL, nb, x, t, ctx, yc, 1, "cpu");
        double eg = golden_rel_err(yg, yc, (size_t)nx), eh = golden_rel_err(yh, yc, (size_t)nx);
        printf("  SD 1.5 UNet, batch %lld, 64x64: cuda fp32 %.4f s, cuda fp16 %.4f s (%s), cpu %.3f s per evaluation; "
               "vs cpu rel err fp32 %.3g, fp16 %.3g\n",
               (long long)nb, g, h, f16.channels_last ? "channels-last" : "NCHW", c, eg, eh);
        /* fp32 on both sides agrees to ~1e-6; TF32 products (KILN_CUDA_TF32=1) to ~1e-3; fp16 weights
         * and activations (11-bit mantissa) through ~70 layers to ~1e-2 */
        const char *tf32 = getenv("KILN_CUDA_TF32");
        assert_true(eg <= (tf32 && tf32[0] == '1' ? 3e-2 : 1e-4));
        assert_true(eh <= 5e-2);
    }
    backend_free(cpu);
    mem_free(yh);
    ckpt_close(&ck);
    unlink(path);
    mem_free(x);
    mem_free(ctx);
    mem_free(yg);
    mem_free(yc);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_sd15_unet)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
