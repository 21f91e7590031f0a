/* sample/ksampler.h -- what ComfyUI's KSampler and KSamplerAdvanced nodes do around the model
 * for an EPS model (nodes.py common_ksampler, comfy.sample.sample, comfy.samplers.KSampler,
 * CFGGuider.inner_sample, KSAMPLER.sample), on host float arrays.
 * Owns: the run's noise and working latent (allocated and freed inside ksampler_run).
 * Must not: know the UNet or CFG (the denoise_fn hides them) or parse workflows.
 * Threads: the caller's; the model and progress callbacks run on it.
 * Prefix: ksampler_.
 *
 * THE PATH, in order:
 *   1. noise: prepare_noise(seed, batch_index) on the CPU generator, or zeros when add_noise
 *      is off (KSamplerAdvanced add_noise = disable);
 *   2. sigmas: schedule_ksampler_sigmas (scheduler, steps, denoise, start/last step,
 *      force_full_denoise, the sampler's discard-penultimate rule); none left: the input
 *      latent is returned unchanged (no scaling at all);
 *   3. process_latent_in: a latent with any non-zero value is multiplied by the scale factor
 *      (an all-zero EmptyLatentImage is not);
 *   4. noise_scaling: max_denoise when sigmas[0] is within rel 1e-5 of sigma_max or above it:
 *      x = noise * sqrt(1 + sigma0^2) + latent, else x = noise * sigma0 + latent;
 *   5. the sampler ("ddim" = euler), ancestral noise seeded with the same seed;
 *   6. process_latent_out: divided by the scale factor, done as ComfyUI's CUDA device does it
 *      (a multiply by the float reciprocal; the CPU would divide -- at most 1 ulp apart). */
#ifndef KILN_SAMPLE_KSAMPLER_H
#define KILN_SAMPLE_KSAMPLER_H

#include "base/err.h"
#include "sample/sampler.h"
#include "sample/schedule.h"

#include <stdbool.h>
#include <stdint.h>

/* The node inputs (KSampler: add_noise true, start/last -1, force_full_denoise false;
 * KSamplerAdvanced: denoise 1.0). */
struct ksampler_params {
    uint64_t seed;               /* seed / noise_seed (0 .. 2^64-1) */
    int steps;                   /* >= 1 */
    enum sampler_kind sampler;   /* sampler_name */
    enum schedule_kind scheduler;
    double denoise;              /* KSampler denoise in [0, 1] */
    bool add_noise;              /* false: zero noise (KSamplerAdvanced add_noise = disable) */
    int start_step;              /* start_at_step, or -1 */
    int last_step;               /* end_at_step, or -1 */
    bool force_full_denoise;     /* return_with_leftover_noise == disable */
    const int *batch_index;      /* latent["batch_index"] (optional), batch entries */
    float latent_scale;          /* the model's latent scale factor (SD1: 0.18215) */
};

/* Runs the KSampler path over a latent of `batch` images of `per_image` floats each
 * ([B, C, H, W], per_image = C*H*W): latent_in is read, latent_out receives the sampled
 * latent (both batch*per_image floats; they may be the same buffer). progress (optional) is
 * called after each sampler step with (step, total); non-zero interrupts.
 * Errors: STATUS_ERR_INVALID (bad sizes, steps, batch_index), STATUS_ERR_UNSUPPORTED (an
 * unimplemented sampler), STATUS_ERR_RANGE ("ddim" with seed 2^64-1: ComfyUI's
 * torch.manual_seed(seed + 1) overflows and the prompt fails), STATUS_ERR_NOMEM,
 * STATUS_ERR_INTERRUPTED, or the model's status; err says which. */
int ksampler_run(const struct schedule *sched, const struct denoise_fn *model, const struct ksampler_params *p,
                 int64_t batch, int64_t per_image, const float *latent_in, float *latent_out,
                 int (*progress)(void *user, int step, int total), void *progress_user, struct err *err);

/* EPS.noise_scaling's factor for the first sigma: sqrt(1 + sigma0^2) in float when
 * max_denoise, else sigma0. Exposed for tests and for callers that log it. */
float ksampler_noise_factor(const struct schedule *sched, float sigma0);

#endif
