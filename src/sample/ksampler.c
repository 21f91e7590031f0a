/* sample/ksampler.c -- ComfyUI's common_ksampler path for an EPS model (see ksampler.h for
 * the steps and their order).
 * Owns: the noise and working buffers of one call, freed before returning.
 * Threads: the caller's. */
#include "sample/ksampler.h"

#include "base/base.h"
#include "base/mem.h"
#include "base/status.h"
#include "sample/rng.h"

#include <math.h>
#include <string.h>

float ksampler_noise_factor(const struct schedule *sched, float sigma0) {
    /* Sampler.max_denoise: math.isclose(sigma_max, sigma0, rel_tol=1e-5) or sigma0 > sigma_max,
     * in python doubles */
    const double smax = (double)sched->sigma_max, s0 = (double)sigma0;
    const bool max_denoise = fabs(smax - s0) <= 1e-5 * fmax(fabs(smax), fabs(s0)) || s0 > smax;
    if (!max_denoise) return sigma0;
    return sqrtf(1.0f + sigma0 * sigma0); /* torch.sqrt(1.0 + sigma ** 2.0) on a float32 */
}

int ksampler_run(const struct schedule *sched, const struct denoise_fn *model, const struct ksampler_params *p,
                 int64_t batch, int64_t per_image, const float *latent_in, float *latent_out,
                 int (*progress)(void *user, int step, int total), void *progress_user, struct err *err) {
    if (batch < 1 || per_image < 1)
        return err_set(err, STATUS_ERR_INVALID, "KSampler: latent of %lld x %lld values is empty",
                       (long long)batch, (long long)per_image);
    if ((unsigned)p->sampler >= SAMPLER_KIND_COUNT)
        return err_set(err, STATUS_ERR_INVALID, "KSampler: unknown sampler %d", (int)p->sampler);
    if (!sampler_kind_implemented(p->sampler))
        return err_set(err, STATUS_ERR_UNSUPPORTED, "sampler '%s' is not supported yet",
                       sampler_kind_name(p->sampler));
    if (!(p->latent_scale > 0.0f) || !isfinite(p->latent_scale))
        return err_set(err, STATUS_ERR_INVALID, "KSampler: latent scale factor %g is not positive",
                       (double)p->latent_scale);
    const int64_t n = batch * per_image;

    /* 2. sigmas (before any work: an empty list means "return the latent as it is") */
    struct schedule_request req = {
        .kind = p->scheduler,
        .steps = p->steps,
        .denoise = p->denoise,
        .discard_penultimate = sampler_kind_discards_penultimate(p->sampler),
        .start_step = p->start_step,
        .last_step = p->last_step,
        .force_full_denoise = p->force_full_denoise,
    };
    float *sigmas = NULL;
    int n_sigmas = 0;
    int rc = schedule_ksampler_sigmas(sched, &req, &sigmas, &n_sigmas, err);
    if (rc < 0) {
        err_prefix(err, "KSampler (%s, %s)", sampler_kind_name(p->sampler), schedule_kind_name(p->scheduler));
        return rc;
    }
    if (n_sigmas == 0) {
        if (latent_out != latent_in) memmove(latent_out, latent_in, (size_t)n * sizeof(float));
        return STATUS_OK;
    }
    /* KSAMPLER.sample for "ddim" seeds a generator with seed + 1 (for inpainting noise); torch
     * rejects 2^64, so ComfyUI fails the prompt at this point */
    if (p->sampler == SAMPLER_KIND_DDIM && p->seed == UINT64_MAX) {
        mem_free(sigmas);
        return err_set(err, STATUS_ERR_RANGE,
                       "sampler 'ddim': seed %llu + 1 overflows torch.manual_seed (ComfyUI fails here too)",
                       (unsigned long long)p->seed);
    }

    /* 1. noise, from the CPU generator (or zeros) */
    float *x = mem_try_alloc((size_t)n * sizeof(float));
    float *noise = mem_try_alloc((size_t)n * sizeof(float));
    if (!x || !noise) {
        rc = err_set(err, STATUS_ERR_NOMEM, "KSampler: no memory for a latent of %lld floats", (long long)n);
        goto done;
    }
    if (p->add_noise) {
        rc = rng_prepare_noise(p->seed, batch, per_image, p->batch_index, p->batch_index ? (int)batch : 0, noise,
                               err);
        if (rc < 0) goto done;
    } else {
        memset(noise, 0, (size_t)n * sizeof(float));
    }

    /* 3. process_latent_in, only for a latent with a non-zero value (torch.count_nonzero) */
    bool nonzero = false;
    for (int64_t j = 0; j < n && !nonzero; j++) nonzero = latent_in[j] != 0.0f;
    /* 4. noise_scaling: x = noise * factor + latent */
    const float factor = ksampler_noise_factor(sched, sigmas[0]);
    for (int64_t j = 0; j < n; j++) {
        float latent = nonzero ? latent_in[j] * p->latent_scale : latent_in[j];
        x[j] = noise[j] * factor + latent;
    }

    /* 5. the sampler */
    struct sample_ctx sc = {.n = n, .seed = p->seed, .progress = progress, .progress_user = progress_user,
                            .err = err};
    rc = sampler_run(p->sampler, model, x, sigmas, n_sigmas, &sc);
    if (rc < 0) goto done;

    /* 6. process_latent_out: latent / scale, as x * (1 / scale) like the CUDA device */
    const float inv_scale = 1.0f / p->latent_scale;
    for (int64_t j = 0; j < n; j++) latent_out[j] = x[j] * inv_scale;
    rc = STATUS_OK;
done:
    mem_free(noise);
    mem_free(x);
    mem_free(sigmas);
    return rc;
}
