/* sample/sampler.c -- ComfyUI's k-diffusion samplers (comfy/k_diffusion/sampling.py, v0.3.64)
 * for an EPS model, in float32 on host arrays.
 * Owns: a run's scratch buffers (freed before sampler_run returns) and its ancestral-noise
 * generator. Must not: keep state between runs.
 * Threads: the caller's; the model callback runs on it too.
 *
 * Notation as in sampling.py: s = sigmas[i], sn = sigmas[i+1], den = D(x, s),
 * d = (x - den) / s (to_d), dt = sn - s. Every loop below applies one torch op per
 * expression, left to right, rounding to float after each, which is what torch does with
 * float32 tensors. Scalars that are 0-d tensors in torch (sigma_up, ratios, expm1(-h)) are
 * float here. */
#include "sample/sampler.h"

#include "base/base.h"
#include "base/mem.h"
#include "base/status.h"
#include "sample/rng.h"

#include <math.h>
#include <string.h>

/* ===== Names ===== */

static const char *const KIND_NAMES[SAMPLER_KIND_COUNT] = {
#define XX(id, name, impl) name,
    SAMPLER_KIND_MAP(XX)
#undef XX
};

static const bool KIND_IMPLEMENTED[SAMPLER_KIND_COUNT] = {
#define XX(id, name, impl) impl,
    SAMPLER_KIND_MAP(XX)
#undef XX
};

const char *sampler_kind_name(enum sampler_kind kind) {
    return (unsigned)kind < SAMPLER_KIND_COUNT ? KIND_NAMES[kind] : "?";
}

enum sampler_kind sampler_kind_parse(const char *name) {
    for (int k = 0; name && k < SAMPLER_KIND_COUNT; k++)
        if (strcmp(name, KIND_NAMES[k]) == 0) return (enum sampler_kind)k;
    return SAMPLER_KIND_COUNT;
}

bool sampler_kind_implemented(enum sampler_kind kind) {
    return (unsigned)kind < SAMPLER_KIND_COUNT && KIND_IMPLEMENTED[kind];
}

bool sampler_kind_discards_penultimate(enum sampler_kind kind) {
    /* comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS */
    return kind == SAMPLER_KIND_DPM_2 || kind == SAMPLER_KIND_DPM_2_ANCESTRAL || kind == SAMPLER_KIND_UNI_PC ||
           kind == SAMPLER_KIND_UNI_PC_BH2;
}

/* ===== One run ===== */

#define RUN_MAX_BUFS 8

struct run {
    enum sampler_kind kind;
    const struct denoise_fn *model;
    float *x;              /* [n] the sample, updated in place */
    const float *sigmas;   /* [steps + 1] */
    int steps;             /* number of steps = n_sigmas - 1 */
    int64_t n;             /* elements of x */
    struct sample_ctx *sc;
    struct rng noise_rng;  /* default_noise_sampler's generator, seeded on first use */
    bool noise_seeded;
    float *bufs[RUN_MAX_BUFS]; /* scratch, [n] each */
    int nbufs;
};

/* A scratch buffer of n floats, freed when the run ends; NULL (with err set) on OOM. */
static float *run_buf(struct run *r) {
    ASSERT(r->nbufs < RUN_MAX_BUFS);
    float *p = mem_try_alloc((size_t)r->n * sizeof(float));
    if (!p) {
        err_set(r->sc->err, STATUS_ERR_NOMEM, "sampler '%s': no memory for %lld floats of scratch",
                sampler_kind_name(r->kind), (long long)r->n);
        return NULL;
    }
    r->bufs[r->nbufs++] = p;
    return p;
}

/* rc of the model at step (0-based) and sigma: its own message stays first, else this one. */
static int model_failed(struct run *r, int rc, int step, float sigma) {
    return err_set(r->sc->err, rc, "sampler '%s': model failed at step %d (sigma %g)", sampler_kind_name(r->kind),
                   step + 1, (double)sigma);
}

/* den = D(x, sigma) through the callback. */
static int run_model(struct run *r, const float *x, float sigma, float *den, int step) {
    int rc = r->model->fn(r->model->user, x, sigma, den, r->sc->err);
    return rc < 0 ? model_failed(r, rc, step, sigma) : STATUS_OK;
}

/* Reports step i as done; a non-zero answer from progress interrupts the run. */
static int run_step_done(struct run *r, int i) {
    if (r->sc->progress && r->sc->progress(r->sc->progress_user, i + 1, r->steps) != 0)
        return err_set(r->sc->err, STATUS_ERR_INTERRUPTED, "sampler '%s': interrupted after step %d of %d",
                       sampler_kind_name(r->kind), i + 1, r->steps);
    return STATUS_OK;
}

/* noise_sampler(sigma, sigma_next): torch.randn(x.shape) from the run's own generator. */
static void run_noise(struct run *r, float *noise) {
    if (!r->noise_seeded) {
        rng_init(&r->noise_rng, r->sc->seed);
        r->noise_seeded = true;
    }
    rng_randn(&r->noise_rng, noise, r->n);
}

/* get_ancestral_step(s, sn, eta=1): how far to step down deterministically (sigma_down) and
 * how much fresh noise to add (sigma_up), as float 0-d tensor ops. */
static void ancestral_step(float s, float sn, float *sigma_down, float *sigma_up) {
    const float eta = 1.0f;
    float var = sn * sn * (s * s - sn * sn) / (s * s); /* sn^2 (s^2 - sn^2) / s^2 */
    float up = eta * sqrtf(var);
    up = up < sn ? up : sn; /* python min(sn, up) keeps sn on ties */
    *sigma_up = up;
    *sigma_down = sqrtf(sn * sn - up * up);
}

/* ===== The samplers ===== */

/* x += ((x - den) / s) * dt, vectorised (the same operations per element, so the same bits). */
KILN_VECTORIZE static void euler_step(float *restrict x, const float *restrict den, float s, float dt, int64_t n) {
    for (int64_t j = 0; j < n; j++) {
        float d = (x[j] - den[j]) / s;
        x[j] = x[j] + d * dt;
    }
}

/* Euler (Karras et al. 2022 alg. 2 with s_churn = 0): x += d * (sn - s). */
/* The same on the model's device (denoise_dev), when it can. */
static int sample_euler_dev(struct run *r) {
    const struct denoise_dev *dev = r->model->dev;
    void *user = r->model->user;
    int rc = 0;
    for (int i = 0; i < r->steps && rc >= 0; i++) {
        const float s = r->sigmas[i], sn = r->sigmas[i + 1];
        rc = dev->euler(user, s, sn, r->sc->err);
        rc = rc < 0 ? model_failed(r, rc, i, s) : run_step_done(r, i);
    }
    int end = dev->end(user, r->x, r->sc->err);
    return rc < 0 ? rc : end;
}

static int sample_euler(struct run *r) {
    if (r->model->dev) {
        int rc = r->model->dev->begin(r->model->user, r->x, r->sc->err);
        if (rc == 0) return sample_euler_dev(r);
        if (rc != STATUS_ERR_UNSUPPORTED) return rc;
    }
    float *x = r->x, *den = run_buf(r);
    if (!den) return STATUS_ERR_NOMEM;
    for (int i = 0; i < r->steps; i++) {
        const float s = r->sigmas[i], sn = r->sigmas[i + 1];
        int rc = run_model(r, x, s, den, i);
        if (rc < 0) return rc;
        euler_step(x, den, s, sn - s, r->n);
        if ((rc = run_step_done(r, i)) < 0) return rc;
    }
    return STATUS_OK;
}

/* Euler ancestral: step to sigma_down, then add sigma_up of fresh noise. */
static int sample_euler_ancestral(struct run *r) {
    float *x = r->x, *den = run_buf(r), *noise = run_buf(r);
    if (!den || !noise) return STATUS_ERR_NOMEM;
    for (int i = 0; i < r->steps; i++) {
        const float s = r->sigmas[i], sn = r->sigmas[i + 1];
        int rc = run_model(r, x, s, den, i);
        if (rc < 0) return rc;
        float sd, su;
        ancestral_step(s, sn, &sd, &su);
        if (sd == 0.0f) {
            memcpy(x, den, (size_t)r->n * sizeof(float));
        } else {
            const float dt = sd - s;
            run_noise(r, noise);
            for (int64_t j = 0; j < r->n; j++) {
                float d = (x[j] - den[j]) / s;
                x[j] = (x[j] + d * dt) + noise[j] * 1.0f * su; /* s_noise = 1 */
            }
        }
        if ((rc = run_step_done(r, i)) < 0) return rc;
    }
    return STATUS_OK;
}

/* Heun: Euler to sn, re-evaluate there, step with the mean slope; plain Euler into sn = 0. */
static int sample_heun(struct run *r) {
    float *x = r->x, *den = run_buf(r), *d = run_buf(r), *x2 = run_buf(r);
    if (!den || !d || !x2) return STATUS_ERR_NOMEM;
    for (int i = 0; i < r->steps; i++) {
        const float s = r->sigmas[i], sn = r->sigmas[i + 1];
        int rc = run_model(r, x, s, den, i);
        if (rc < 0) return rc;
        const float dt = sn - s;
        for (int64_t j = 0; j < r->n; j++) d[j] = (x[j] - den[j]) / s;
        if (sn == 0.0f) {
            for (int64_t j = 0; j < r->n; j++) x[j] = x[j] + d[j] * dt;
        } else {
            for (int64_t j = 0; j < r->n; j++) x2[j] = x[j] + d[j] * dt;
            if ((rc = run_model(r, x2, sn, den, i)) < 0) return rc;
            for (int64_t j = 0; j < r->n; j++) {
                float d2 = (x2[j] - den[j]) / sn;
                float dp = (d[j] + d2) / 2.0f;
                x[j] = x[j] + dp * dt;
            }
        }
        if ((rc = run_step_done(r, i)) < 0) return rc;
    }
    return STATUS_OK;
}

/* sigma_mid = exp(lerp(log a, log b, 0.5)); torch's lerp with weight >= 0.5 is
 * end - (end - start) * (1 - weight). */
static float log_midpoint(float a, float b) {
    const float la = logf(a), lb = logf(b);
    return expf(lb - (lb - la) * 0.5f);
}

/* DPM-Solver-2: a half step (in log sigma) to sigma_mid, then the full step with the slope
 * there; Euler into sn = 0. */
static int sample_dpm_2(struct run *r) {
    float *x = r->x, *den = run_buf(r), *d = run_buf(r), *x2 = run_buf(r);
    if (!den || !d || !x2) return STATUS_ERR_NOMEM;
    for (int i = 0; i < r->steps; i++) {
        const float s = r->sigmas[i], sn = r->sigmas[i + 1];
        int rc = run_model(r, x, s, den, i);
        if (rc < 0) return rc;
        for (int64_t j = 0; j < r->n; j++) d[j] = (x[j] - den[j]) / s;
        if (sn == 0.0f) {
            const float dt = sn - s;
            for (int64_t j = 0; j < r->n; j++) x[j] = x[j] + d[j] * dt;
        } else {
            const float sm = log_midpoint(s, sn), dt1 = sm - s, dt2 = sn - s;
            for (int64_t j = 0; j < r->n; j++) x2[j] = x[j] + d[j] * dt1;
            if ((rc = run_model(r, x2, sm, den, i)) < 0) return rc;
            for (int64_t j = 0; j < r->n; j++) {
                float d2 = (x2[j] - den[j]) / sm;
                x[j] = x[j] + d2 * dt2;
            }
        }
        if ((rc = run_step_done(r, i)) < 0) return rc;
    }
    return STATUS_OK;
}

/* DPM-Solver-2 ancestral: the dpm_2 step down to sigma_down, then sigma_up of noise (only
 * when sigma_down > 0). */
static int sample_dpm_2_ancestral(struct run *r) {
    float *x = r->x, *den = run_buf(r), *d = run_buf(r), *x2 = run_buf(r), *noise = run_buf(r);
    if (!den || !d || !x2 || !noise) return STATUS_ERR_NOMEM;
    for (int i = 0; i < r->steps; i++) {
        const float s = r->sigmas[i], sn = r->sigmas[i + 1];
        int rc = run_model(r, x, s, den, i);
        if (rc < 0) return rc;
        float sd, su;
        ancestral_step(s, sn, &sd, &su);
        for (int64_t j = 0; j < r->n; j++) d[j] = (x[j] - den[j]) / s;
        if (sd == 0.0f) {
            const float dt = sd - s;
            for (int64_t j = 0; j < r->n; j++) x[j] = x[j] + d[j] * dt;
        } else {
            const float sm = log_midpoint(s, sd), dt1 = sm - s, dt2 = sd - s;
            for (int64_t j = 0; j < r->n; j++) x2[j] = x[j] + d[j] * dt1;
            if ((rc = run_model(r, x2, sm, den, i)) < 0) return rc;
            run_noise(r, noise);
            for (int64_t j = 0; j < r->n; j++) {
                float d2 = (x2[j] - den[j]) / sm;
                float xj = x[j] + d2 * dt2;
                x[j] = xj + noise[j] * 1.0f * su;
            }
        }
        if ((rc = run_step_done(r, i)) < 0) return rc;
    }
    return STATUS_OK;
}

/* linear_multistep_coeff: the integral over [t[i], t[i+1]] of the Lagrange basis polynomial
 * of node i-j among nodes i, i-1, .., i-order+1. The polynomial has degree order-1 <= 3, so
 * 3-point Gauss-Legendre in double is exact up to rounding, like ComfyUI's scipy quad. */
static double lms_coeff(int order, const double *t, int i, int j) {
    static const double node[3] = {-0.7745966692414833770, 0.0, 0.7745966692414833770};
    static const double weight[3] = {5.0 / 9.0, 8.0 / 9.0, 5.0 / 9.0};
    const double a = t[i], b = t[i + 1], half = 0.5 * (b - a), mid = 0.5 * (a + b);
    double sum = 0.0;
    for (int q = 0; q < 3; q++) {
        double tau = mid + half * node[q], prod = 1.0;
        for (int k = 0; k < order; k++) {
            if (k == j) continue;
            prod *= (tau - t[i - k]) / (t[i - j] - t[i - k]);
        }
        sum += weight[q] * prod;
    }
    return half * sum;
}

/* Linear multistep (order 4): x += sum_j c_j d_{i-j}; the last step into 0 returns den. */
static int sample_lms(struct run *r) {
    enum { ORDER = 4 };
    float *x = r->x, *den = run_buf(r), *ds[ORDER];
    if (!den) return STATUS_ERR_NOMEM;
    for (int k = 0; k < ORDER; k++)
        if (!(ds[k] = run_buf(r))) return STATUS_ERR_NOMEM;
    double *t = mem_try_alloc((size_t)(r->steps + 1) * sizeof(double));
    if (!t)
        return err_set(r->sc->err, STATUS_ERR_NOMEM, "sampler 'lms': no memory for %d sigmas", r->steps + 1);
    for (int i = 0; i <= r->steps; i++) t[i] = (double)r->sigmas[i]; /* sigmas.cpu().numpy() */
    int rc = STATUS_OK;
    for (int i = 0; i < r->steps; i++) {
        const float s = r->sigmas[i], sn = r->sigmas[i + 1];
        if ((rc = run_model(r, x, s, den, i)) < 0) break;
        /* ds keeps the last ORDER slopes; ds[i % ORDER] is the newest */
        float *dn = ds[i % ORDER];
        for (int64_t j = 0; j < r->n; j++) dn[j] = (x[j] - den[j]) / s;
        if (sn == 0.0f) {
            memcpy(x, den, (size_t)r->n * sizeof(float));
        } else {
            const int order = MIN(i + 1, ORDER);
            float c[ORDER];
            for (int q = 0; q < order; q++) c[q] = (float)lms_coeff(order, t, i, q);
            /* x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds))): python's sum starts
             * at 0 and adds the terms newest first */
            for (int64_t j = 0; j < r->n; j++) {
                float acc = c[0] * ds[i % ORDER][j] + 0.0f;
                for (int q = 1; q < order; q++) acc = acc + c[q] * ds[(i - q) % ORDER][j];
                x[j] = x[j] + acc;
            }
        }
        if ((rc = run_step_done(r, i)) < 0) break;
    }
    mem_free(t);
    return rc;
}

/* DPM-Solver++(2M): exponential integrator in t = -log sigma with a second-order correction
 * from the previous denoised; first step and the step into 0 are first order. */
static int sample_dpmpp_2m(struct run *r) {
    float *x = r->x, *den = run_buf(r), *old = run_buf(r);
    if (!den || !old) return STATUS_ERR_NOMEM;
    bool have_old = false;
    for (int i = 0; i < r->steps; i++) {
        const float s = r->sigmas[i], sn = r->sigmas[i + 1];
        int rc = run_model(r, x, s, den, i);
        if (rc < 0) return rc;
        const float t = -logf(s), tn = -logf(sn); /* sn = 0: tn = +inf */
        const float h = tn - t;
        const float ratio = expf(-tn) / expf(-t); /* sigma_fn(t_next) / sigma_fn(t) */
        const float em = expm1f(-h);
        if (!have_old || sn == 0.0f) {
            for (int64_t j = 0; j < r->n; j++) x[j] = ratio * x[j] - em * den[j];
        } else {
            const float h_last = t - -logf(r->sigmas[i - 1]);
            const float rr = h_last / h;
            const float inv = 1.0f / (2.0f * rr); /* 1 / (2 * r): torch reciprocal */
            const float c_new = 1.0f + inv;
            for (int64_t j = 0; j < r->n; j++) {
                float dd = c_new * den[j] - inv * old[j];
                x[j] = ratio * x[j] - em * dd;
            }
        }
        memcpy(old, den, (size_t)r->n * sizeof(float));
        have_old = true;
        if ((rc = run_step_done(r, i)) < 0) return rc;
    }
    return STATUS_OK;
}

/* DPM-Solver++(2S) ancestral: a midpoint DPM++ step down to sigma_down, then noise. */
static int sample_dpmpp_2s_ancestral(struct run *r) {
    float *x = r->x, *den = run_buf(r), *x2 = run_buf(r), *noise = run_buf(r);
    if (!den || !x2 || !noise) return STATUS_ERR_NOMEM;
    for (int i = 0; i < r->steps; i++) {
        const float s = r->sigmas[i], sn = r->sigmas[i + 1];
        int rc = run_model(r, x, s, den, i);
        if (rc < 0) return rc;
        float sd, su;
        ancestral_step(s, sn, &sd, &su);
        if (sd == 0.0f) {
            const float dt = sd - s;
            for (int64_t j = 0; j < r->n; j++) {
                float d = (x[j] - den[j]) / s;
                x[j] = x[j] + d * dt;
            }
        } else {
            const float t = -logf(s), tn = -logf(sd);
            const float rr = 0.5f; /* r = 1 / 2 */
            const float h = tn - t;
            const float sm = t + rr * h; /* s = t + r h */
            const float sig_t = expf(-t), sig_s = expf(-sm), sig_tn = expf(-tn);
            const float ratio1 = sig_s / sig_t, em1 = expm1f(-h * rr);
            for (int64_t j = 0; j < r->n; j++) x2[j] = ratio1 * x[j] - em1 * den[j];
            if ((rc = run_model(r, x2, sig_s, den, i)) < 0) return rc;
            const float ratio2 = sig_tn / sig_t, em2 = expm1f(-h);
            for (int64_t j = 0; j < r->n; j++) x[j] = ratio2 * x[j] - em2 * den[j];
        }
        if (sn > 0.0f) {
            run_noise(r, noise);
            for (int64_t j = 0; j < r->n; j++) x[j] = x[j] + noise[j] * 1.0f * su;
        }
        if ((rc = run_step_done(r, i)) < 0) return rc;
    }
    return STATUS_OK;
}

/* LCM: jump to the denoised estimate, then re-noise it to sn with fresh noise
 * (model_sampling.noise_scaling for EPS: noise * sn + x). */
static int sample_lcm(struct run *r) {
    float *x = r->x, *den = run_buf(r), *noise = run_buf(r);
    if (!den || !noise) return STATUS_ERR_NOMEM;
    for (int i = 0; i < r->steps; i++) {
        const float s = r->sigmas[i], sn = r->sigmas[i + 1];
        int rc = run_model(r, x, s, den, i);
        if (rc < 0) return rc;
        memcpy(x, den, (size_t)r->n * sizeof(float));
        if (sn > 0.0f) {
            run_noise(r, noise);
            for (int64_t j = 0; j < r->n; j++) x[j] = noise[j] * sn + x[j];
        }
        if ((rc = run_step_done(r, i)) < 0) return rc;
    }
    return STATUS_OK;
}

/* ===== Entry point ===== */

int sampler_run(enum sampler_kind kind, const struct denoise_fn *model, float *x, const float *sigmas,
                int n_sigmas, struct sample_ctx *sc) {
    ASSERT(model && model->fn && sc);
    if ((unsigned)kind >= SAMPLER_KIND_COUNT)
        return err_set(sc->err, STATUS_ERR_INVALID, "sampler: unknown sampler %d", (int)kind);
    if (!KIND_IMPLEMENTED[kind])
        return err_set(sc->err, STATUS_ERR_UNSUPPORTED, "sampler '%s' is not supported yet", KIND_NAMES[kind]);
    if (sc->n < 1)
        return err_set(sc->err, STATUS_ERR_INVALID, "sampler '%s': latent has %lld elements", KIND_NAMES[kind],
                       (long long)sc->n);
    if (n_sigmas <= 1) return STATUS_OK;

    struct run r = {.kind = kind, .model = model, .x = x, .sigmas = sigmas, .steps = n_sigmas - 1,
                    .n = sc->n, .sc = sc};
    int rc;
    switch (kind) {
    case SAMPLER_KIND_EULER:
    case SAMPLER_KIND_DDIM: rc = sample_euler(&r); break;
    case SAMPLER_KIND_EULER_ANCESTRAL: rc = sample_euler_ancestral(&r); break;
    case SAMPLER_KIND_HEUN: rc = sample_heun(&r); break;
    case SAMPLER_KIND_DPM_2: rc = sample_dpm_2(&r); break;
    case SAMPLER_KIND_DPM_2_ANCESTRAL: rc = sample_dpm_2_ancestral(&r); break;
    case SAMPLER_KIND_LMS: rc = sample_lms(&r); break;
    case SAMPLER_KIND_DPMPP_2M: rc = sample_dpmpp_2m(&r); break;
    case SAMPLER_KIND_DPMPP_2S_ANCESTRAL: rc = sample_dpmpp_2s_ancestral(&r); break;
    case SAMPLER_KIND_LCM: rc = sample_lcm(&r); break;
    default: rc = err_set(sc->err, STATUS_ERR_INTERNAL, "sampler '%s': marked implemented but has no code",
                          KIND_NAMES[kind]);
    }
    for (int k = 0; k < r.nbufs; k++) mem_free(r.bufs[k]);
    return rc;
}
