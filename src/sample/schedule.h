/* sample/schedule.h -- the discrete noise schedule of SD1 (ComfyUI ModelSamplingDiscrete, EPS),
 * ComfyUI's 9 schedulers, and KSampler's sigma selection (denoise, start/last step).
 * Owns: struct schedule (caller storage, 8 KiB) and the sigma lists it returns (mem_free).
 * Must not: know samplers (the caller says whether the sampler discards the penultimate sigma;
 * sampler.h answers that) or touch models.
 * Threads: everything is reentrant; a struct schedule is read-only after schedule_init.
 * Prefix: schedule_.
 *
 * EXACTNESS. ComfyUI computes sigmas with torch float32 ops on the CPU (the golden file
 * tests/data/golden/sigmas.json records that, torch 2.11 on an x86 AVX-512 host). Every step
 * here repeats torch's arithmetic in the same order and precision: linspace in float with
 * torch's two-ended fused formula, python-float scalars rounded to float before they meet a
 * float32 tensor, pow in double for karras. torch's exp/tan come from Intel MKL, which is not
 * always correctly rounded; ours are correctly rounded, so a few values can differ by one
 * unit in the last place (tests/unit/sample/test_schedule.c lists the known ones). When
 * ComfyUI keeps model_sampling on the GPU, CUDA's expf gives other 1-ulp differences
 * (sigmas.json "bits_model_sampling_on_cuda"); we follow the CPU. */
#ifndef KILN_SAMPLE_SCHEDULE_H
#define KILN_SAMPLE_SCHEDULE_H

#include "base/err.h"

#include <stdbool.h>

#define SCHEDULE_TIMESTEPS 1000     /* discrete timesteps of SD1 training */
#define SCHEDULE_MAX_SIGMAS 10000001 /* longest sigma list we build (steps/denoise limit) */

/* ===== The model's schedule ===== */

/* ModelSamplingDiscrete for an EPS model: beta "linear" (linear in sqrt space), 1000 steps. */
struct schedule {
    float sigmas[SCHEDULE_TIMESTEPS];     /* sqrt((1 - alphabar_t) / alphabar_t), float32 */
    float log_sigmas[SCHEDULE_TIMESTEPS]; /* ln(sigma_t) taken in double, then float32 */
    float sigma_min;                      /* sigmas[0]   (SD1: 0.0291672) */
    float sigma_max;                      /* sigmas[999] (SD1: 14.614641) */
};

/* Builds the table as ComfyUI does: beta_i = (sqrt(start) + i*(sqrt(end)-sqrt(start))/999)^2
 * in float64, alphabar = cumulative product of (1 - beta) in float64, sigma in float64, then
 * rounded to float32 (log_sigmas from the float64 sigmas). */
void schedule_init(struct schedule *s, double linear_start, double linear_end);

/* SD 1.x (v1-inference.yaml): linear_start 0.00085, linear_end 0.012. */
void schedule_init_sd1(struct schedule *s);

/* model_sampling.timestep(sigma): the index t whose log_sigmas[t] is nearest to ln(sigma)
 * (first one on ties), which ComfyUI passes to the UNet as a float. sigma 0 gives 0. */
int schedule_timestep(const struct schedule *s, float sigma);

/* model_sampling.sigma(t) for a fractional t: exp of the linear interpolation of log_sigmas
 * between floor(t) and ceil(t), t clamped to [0, 999]; float32 like torch. */
float schedule_sigma(const struct schedule *s, float t);

/* ===== Schedulers ===== */

/* ComfyUI v0.3.64 SCHEDULER_NAMES, in its order (KSampler's default is the first). */
#define SCHEDULE_KIND_MAP(XX)                 \
    XX(SIMPLE, "simple")                      \
    XX(SGM_UNIFORM, "sgm_uniform")            \
    XX(KARRAS, "karras")                      \
    XX(EXPONENTIAL, "exponential")            \
    XX(DDIM_UNIFORM, "ddim_uniform")          \
    XX(BETA, "beta")                          \
    XX(NORMAL, "normal")                      \
    XX(LINEAR_QUADRATIC, "linear_quadratic")  \
    XX(KL_OPTIMAL, "kl_optimal")

enum schedule_kind {
#define XX(id, name) SCHEDULE_KIND_##id,
    SCHEDULE_KIND_MAP(XX)
#undef XX
    SCHEDULE_KIND_COUNT
};

/* The wire name ("karras"); "?" for an out-of-range value. */
const char *schedule_kind_name(enum schedule_kind kind);

/* Parses a wire name; returns SCHEDULE_KIND_COUNT when unknown. */
enum schedule_kind schedule_kind_parse(const char *name);

/* comfy.samplers.calculate_sigmas(model_sampling, kind, steps): a descending list ending in 0
 * (steps+1 values; ddim_uniform may give more, e.g. 32 for 30 steps). *out is allocated here
 * and freed by the caller with mem_free; *n_out receives the count. kl_optimal with 1 step
 * gives NaN like ComfyUI (0/0).
 * Errors: STATUS_ERR_INVALID for steps < 1 or an unknown kind, STATUS_ERR_RANGE for steps
 * above SCHEDULE_MAX_SIGMAS, STATUS_ERR_NOMEM. */
int schedule_sigmas(const struct schedule *s, enum schedule_kind kind, int steps, float **out, int *n_out,
                    struct err *err);

/* ===== KSampler's sigma selection ===== */

/* What comfy.samplers.KSampler (set_steps + sample) gets from the KSampler and
 * KSamplerAdvanced nodes. */
struct schedule_request {
    enum schedule_kind kind;  /* scheduler */
    int steps;                /* the node's steps, >= 1 */
    double denoise;           /* KSampler's denoise; 1.0 for KSamplerAdvanced */
    bool discard_penultimate; /* the sampler is dpm_2, dpm_2_ancestral, uni_pc or uni_pc_bh2 */
    int start_step;           /* KSamplerAdvanced start_at_step; -1 = not given (KSampler) */
    int last_step;            /* KSamplerAdvanced end_at_step; -1 = not given (KSampler) */
    bool force_full_denoise;  /* KSamplerAdvanced return_with_leftover_noise == "disable" */
};

/* The sigmas a KSampler samples with:
 *   - denoise > 0.9999: calculate_sigmas(steps); denoise <= 0: none; otherwise
 *     calculate_sigmas(int(steps / denoise)) and keep the last steps+1;
 *   - discard_penultimate: computed for steps+1 and the second-to-last value dropped;
 *   - last_step < n-1: cut to sigmas[0 .. last_step], and with force_full_denoise the last
 *     kept value becomes 0;
 *   - start_step < n-1: sigmas[start_step ..]; start_step >= n-1: none.
 * *n_out == 0 means ComfyUI returns the input latent unchanged (no noise, no scaling).
 * *out is allocated here (NULL when *n_out is 0) and freed with mem_free.
 * Errors: as schedule_sigmas, plus STATUS_ERR_INVALID for a negative start/last step
 * other than -1. */
int schedule_ksampler_sigmas(const struct schedule *s, const struct schedule_request *req, float **out,
                             int *n_out, struct err *err);

#endif
