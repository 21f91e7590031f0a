/* sample/sampler.h -- ComfyUI's k-diffusion samplers on host float arrays, the model being a
 * callback (STYLE.md §11).
 * Owns: the sampler names (an X-macro of ComfyUI v0.3.64's KSampler.SAMPLERS, in order) and
 * the scratch buffers of one run (allocated and freed inside sampler_run).
 * Must not: know the UNet, CFG or devices; call the model other than through denoise_fn.
 * Threads: sampler_run runs on the caller's thread and calls back on it.
 * Prefix: sampler_.
 *
 * NUMERICS. Each sampler repeats comfy/k_diffusion/sampling.py in float32 as torch computes it
 * on float32 tensors: every tensor op rounds once, in the same order; python-float constants
 * (eta, s_noise, r = 1/2) meet tensors as float32; `1 / t` is torch's reciprocal; log, exp and
 * expm1 of a sigma are float libm calls (torch runs them on 0-d tensors of the sampling
 * device). lms integrates its Lagrange basis in double (ComfyUI uses scipy quad on a cubic at
 * most, which is exact to double rounding with numpy 1.x; see sampler.c).
 *
 * ANCESTRAL NOISE comes from a fresh CPU generator seeded with sample_ctx.seed, one
 * torch.randn(x.shape) per draw, as ComfyUI v0.3.64's default_noise_sampler does when the
 * latent is on the CPU (so the first draw equals the initial noise of prepare_noise). On a
 * CUDA device ComfyUI draws from torch's Philox generator instead; that is the CUDA
 * backend's business. */
#ifndef KILN_SAMPLE_SAMPLER_H
#define KILN_SAMPLE_SAMPLER_H

#include "base/err.h"

#include <stdbool.h>
#include <stdint.h>

/* ===== Sampler names ===== */

/* XX(id, wire name, implemented): ComfyUI v0.3.64 comfy/samplers.py KSAMPLER_NAMES followed
 * by "ddim", "uni_pc", "uni_pc_bh2" (= KSampler.SAMPLERS), in that order. */
#define SAMPLER_KIND_MAP(XX)                                            \
    XX(EULER, "euler", 1)                                               \
    XX(EULER_CFG_PP, "euler_cfg_pp", 0)                                 \
    XX(EULER_ANCESTRAL, "euler_ancestral", 1)                           \
    XX(EULER_ANCESTRAL_CFG_PP, "euler_ancestral_cfg_pp", 0)             \
    XX(HEUN, "heun", 1)                                                 \
    XX(HEUNPP2, "heunpp2", 0)                                           \
    XX(DPM_2, "dpm_2", 1)                                               \
    XX(DPM_2_ANCESTRAL, "dpm_2_ancestral", 1)                           \
    XX(LMS, "lms", 1)                                                   \
    XX(DPM_FAST, "dpm_fast", 0)                                         \
    XX(DPM_ADAPTIVE, "dpm_adaptive", 0)                                 \
    XX(DPMPP_2S_ANCESTRAL, "dpmpp_2s_ancestral", 1)                     \
    XX(DPMPP_2S_ANCESTRAL_CFG_PP, "dpmpp_2s_ancestral_cfg_pp", 0)       \
    XX(DPMPP_SDE, "dpmpp_sde", 0)                                       \
    XX(DPMPP_SDE_GPU, "dpmpp_sde_gpu", 0)                               \
    XX(DPMPP_2M, "dpmpp_2m", 1)                                         \
    XX(DPMPP_2M_CFG_PP, "dpmpp_2m_cfg_pp", 0)                           \
    XX(DPMPP_2M_SDE, "dpmpp_2m_sde", 0)                                 \
    XX(DPMPP_2M_SDE_GPU, "dpmpp_2m_sde_gpu", 0)                         \
    XX(DPMPP_2M_SDE_HEUN, "dpmpp_2m_sde_heun", 0)                       \
    XX(DPMPP_2M_SDE_HEUN_GPU, "dpmpp_2m_sde_heun_gpu", 0)               \
    XX(DPMPP_3M_SDE, "dpmpp_3m_sde", 0)                                 \
    XX(DPMPP_3M_SDE_GPU, "dpmpp_3m_sde_gpu", 0)                         \
    XX(DDPM, "ddpm", 0)                                                 \
    XX(LCM, "lcm", 1)                                                   \
    XX(IPNDM, "ipndm", 0)                                               \
    XX(IPNDM_V, "ipndm_v", 0)                                           \
    XX(DEIS, "deis", 0)                                                 \
    XX(RES_MULTISTEP, "res_multistep", 0)                               \
    XX(RES_MULTISTEP_CFG_PP, "res_multistep_cfg_pp", 0)                 \
    XX(RES_MULTISTEP_ANCESTRAL, "res_multistep_ancestral", 0)           \
    XX(RES_MULTISTEP_ANCESTRAL_CFG_PP, "res_multistep_ancestral_cfg_pp", 0) \
    XX(GRADIENT_ESTIMATION, "gradient_estimation", 0)                   \
    XX(GRADIENT_ESTIMATION_CFG_PP, "gradient_estimation_cfg_pp", 0)     \
    XX(ER_SDE, "er_sde", 0)                                             \
    XX(SEEDS_2, "seeds_2", 0)                                           \
    XX(SEEDS_3, "seeds_3", 0)                                           \
    XX(SA_SOLVER, "sa_solver", 0)                                       \
    XX(SA_SOLVER_PECE, "sa_solver_pece", 0)                             \
    XX(DDIM, "ddim", 1)                                                 \
    XX(UNI_PC, "uni_pc", 0)                                             \
    XX(UNI_PC_BH2, "uni_pc_bh2", 0)

enum sampler_kind {
#define XX(id, name, impl) SAMPLER_KIND_##id,
    SAMPLER_KIND_MAP(XX)
#undef XX
    SAMPLER_KIND_COUNT
};

/* The wire name ("dpmpp_2m"); "?" for an out-of-range value. */
const char *sampler_kind_name(enum sampler_kind kind);

/* Parses a wire name; returns SAMPLER_KIND_COUNT when unknown. */
enum sampler_kind sampler_kind_parse(const char *name);

/* true when sampler_run can run it. */
bool sampler_kind_implemented(enum sampler_kind kind);

/* KSampler computes one more sigma and drops the penultimate one for these (dpm_2,
 * dpm_2_ancestral, uni_pc, uni_pc_bh2); feed this to schedule_request.discard_penultimate. */
bool sampler_kind_discards_penultimate(enum sampler_kind kind);

/* ===== Running a sampler ===== */

/* D(x, sigma): the model's denoised estimate of x at noise level sigma, CFG already applied.
 * x and denoised hold sample_ctx.n floats (the whole batch); denoised never aliases x.
 * Returns 0, or a negative status with err filled (the run stops and returns it). */
struct denoise_fn {
    int (*fn)(void *user, const float *x, float sigma, float *denoised, struct err *err);
    void *user; /* passed back to fn */
    const struct denoise_dev *dev; /* (optional) the Euler loop on the model's device */
};

/* A model that makes Euler steps itself on its device, the sample kept there between steps (no
 * copy of x and no host arithmetic per step): begin takes x (0; or STATUS_ERR_UNSUPPORTED, with
 * err untouched, and the host loop runs), euler makes one step x += ((x - D(x, s)) / s) * (sn - s)
 * with the host loop's roundings, end gives x back (called once after a successful begin,
 * whatever happened in between). Used by "euler" (and "ddim", which is euler here). */
struct denoise_dev {
    int (*begin)(void *user, const float *x, struct err *err);
    int (*euler)(void *user, float s, float sn, struct err *err);
    int (*end)(void *user, float *x, struct err *err);
};

/* Everything about one run other than the model, x and the sigmas. */
struct sample_ctx {
    int64_t n;         /* elements of x (whole batch, e.g. B*4*64*64) */
    uint64_t seed;     /* seeds the ancestral-noise generator (the KSampler's seed) */
    int (*progress)(void *user, int step, int total); /* (optional) after each step, step = 1..total;
                                                        non-zero stops the run */
    void *progress_user; /* passed back to progress */
    struct err *err;     /* receives the message of a failure (may be NULL) */
};

/* Runs sampler `kind` over sigmas[0..n_sigmas) (descending, usually ending in 0), updating x
 * in place: x enters as the noised latent (noise already scaled to sigmas[0]) and leaves as
 * the sample. n_sigmas <= 1 leaves x unchanged. "ddim" runs euler, as ComfyUI does when no
 * inpainting mask is given.
 * Errors: STATUS_ERR_UNSUPPORTED "sampler '<name>' is not supported yet" for a known but
 * unimplemented sampler; STATUS_ERR_INVALID for an unknown kind or n < 1; STATUS_ERR_NOMEM;
 * STATUS_ERR_INTERRUPTED when progress returns non-zero; the model's own status. */
int sampler_run(enum sampler_kind kind, const struct denoise_fn *model, float *x, const float *sigmas,
                int n_sigmas, struct sample_ctx *sc);

#endif
