/* cli/cmd_bench.c -- `kiln bench unet`: seconds per UNet evaluation of a checkpoint on the CPU
 * backend (the figure docs/PERF.md compares with PyTorch on the same machine).
 * Owns: the backend, weights and buffers of the run. Threads: main (kernels use OpenMP).
 * Exit codes: 0, 1 failure, 2 usage. */
#include "base/clock.h"
#include "base/mem.h"
#include "cli/cmd.h"
#include "model/unet.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int usage(void) {
    fprintf(stderr, "usage: kiln bench unet CKPT [--latent N] [--batch B] [--runs R] [--threads T]\n"
                    "Times R UNet evaluations (after one warm-up) of an N x N latent at batch B with a\n"
                    "77-token context, and prints the median seconds per evaluation.\n"
                    "Defaults: --latent 64 --batch 2 --runs 3 (SD 1.5 at 512x512 with CFG).\n");
    return 2;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int cmd_bench(int argc, char **argv) {
    if (argc < 3 || strcmp(argv[1], "unet") != 0) return usage();
    const char *path = argv[2];
    int latent = 64, batch = 2, runs = 3, threads = 0;
    for (int i = 3; i < argc; i++) {
        int *dst = !strcmp(argv[i], "--latent") ? &latent
                   : !strcmp(argv[i], "--batch") ? &batch
                   : !strcmp(argv[i], "--runs")  ? &runs
                   : !strcmp(argv[i], "--threads") ? &threads
                                                   : NULL;
        if (!dst || i + 1 >= argc) return usage();
        *dst = atoi(argv[++i]);
    }
    if (latent < 8 || batch < 1 || runs < 1) return usage();

    struct err err = {0};
    struct ckpt ck;
    if (ckpt_open(&ck, path, &err)) {
        fprintf(stderr, "kiln bench: %s\n", err.msg);
        return 1;
    }
    struct backend *be = backend_cpu_new(threads);
    struct unet *u = mem_calloc(1, sizeof *u);
    double t0 = clock_now();
    if (unet_load(u, &ck, be, NULL, &err)) {
        fprintf(stderr, "kiln bench: %s\n", err.msg);
        return 1;
    }
    double load_s = clock_now() - t0;
    const struct unet_config *cf = &u->config;
    int64_t nx = (int64_t)batch * cf->in_channels * latent * latent, nc = (int64_t)batch * 77 * cf->context_dim;
    float *x = mem_alloc((size_t)nx * sizeof(float)), *out = mem_alloc((size_t)nx * sizeof(float));
    float *ctx = mem_alloc((size_t)nc * sizeof(float)), *t = mem_alloc((size_t)batch * sizeof(float));
    uint64_t s = 12345;
    for (int64_t i = 0; i < nx; i++) x[i] = (float)((s = s * 6364136223846793005ULL + 1) >> 40) / (1 << 24) - 0.5f;
    for (int64_t i = 0; i < nc; i++) ctx[i] = (float)((s = s * 6364136223846793005ULL + 1) >> 40) / (1 << 24) - 0.5f;
    for (int i = 0; i < batch; i++) t[i] = 500.0f;

    struct tscratch scratch;
    tscratch_init(&scratch, be);
    struct tctx c;
    tctx_init(&c, be, &scratch);
    double *times = mem_alloc((size_t)(runs + 1) * sizeof(double));
    int rc = 0;
    for (int r = 0; r <= runs && !rc; r++) {
        double a = clock_now();
        rc = unet_eval(&c, u, batch, latent, latent, x, t, ctx, 77, out);
        times[r] = clock_now() - a;
        fprintf(stderr, "%s %d: %.3f s\n", r ? "run" : "warm-up", r, times[r]);
    }
    if (rc) {
        fprintf(stderr, "kiln bench: %s\n", c.err.msg);
    } else {
        qsort(times + 1, (size_t)runs, sizeof(double), cmp_double);
        printf("unet %dx%d latent, batch %d, %d threads: median %.3f s per evaluation (min %.3f, max %.3f); "
               "load %.2f s; activations %.0f MiB; weights %.0f MiB\n",
               latent, latent, batch, ((int *)be->ctx)[0], times[1 + runs / 2], times[1], times[runs], load_s,
               (double)scratch.peak / (1 << 20), (double)u->weights.size / (1 << 20));
    }
    mem_free(times);
    tctx_deinit(&c);
    tscratch_deinit(&scratch);
    unet_deinit(u);
    mem_free(u);
    mem_free(x);
    mem_free(out);
    mem_free(ctx);
    mem_free(t);
    backend_free(be);
    ckpt_close(&ck);
    return rc ? 1 : 0;
}
