/* sample/schedule.c -- SD1's sigma table, ComfyUI's schedulers and KSampler's sigma slicing.
 * Owns: the arithmetic that reproduces torch/numpy/python numerics (see schedule.h) and the
 * inverse regularised incomplete beta function the "beta" scheduler needs.
 * Must not: depend on samplers or models.
 * Threads: reentrant; lists returned are allocated with mem_try_alloc, freed by the caller. */
#include "sample/schedule.h"

#include "base/base.h"
#include "base/mem.h"
#include "base/status.h"

#include <math.h>
#include <string.h>

/* ===== torch float32 primitives ===== */

/* torch.linspace(start, end, n) in float32 on the CPU: step = (end - start) / (n - 1) in
 * float; the first half counts up from start, the second half down from end, each value as
 * one fused multiply-add (torch's kernel is compiled with contraction), n == 1 gives start. */
static void linspace_f32(float start, float end, int n, float *out) {
    if (n == 1) {
        out[0] = start;
        return;
    }
    const float step = (end - start) / (float)(n - 1);
    const int halfway = n / 2;
    for (int i = 0; i < n; i++)
        out[i] = i < halfway ? fmaf(step, (float)i, start) : fmaf(-step, (float)(n - i - 1), end);
}

/* exp / tan of a float32 tensor, correctly rounded (torch uses MKL, see schedule.h). */
static float exp_f32(float x) { return (float)exp((double)x); }
static float tan_f32(float x) { return (float)tan((double)x); }

/* ===== The model's schedule ===== */

void schedule_init(struct schedule *s, double linear_start, double linear_end) {
    /* make_beta_schedule("linear"): linspace(sqrt(start), sqrt(end), 1000) in float64,
     * squared; torch's float64 linspace is the same two-ended formula (exact enough that the
     * float32 results match either way) */
    const int n = SCHEDULE_TIMESTEPS;
    const double a = sqrt(linear_start), b = sqrt(linear_end);
    const double step = (b - a) / (double)(n - 1);
    double alphabar = 1.0;
    for (int i = 0; i < n; i++) {
        double root = i < n / 2 ? a + step * (double)i : b - step * (double)(n - i - 1);
        double beta = root * root;
        alphabar *= 1.0 - beta;                          /* torch.cumprod in float64 */
        double sigma = sqrt((1.0 - alphabar) / alphabar); /* ((1 - ac) / ac) ** 0.5 */
        s->sigmas[i] = (float)sigma;
        s->log_sigmas[i] = (float)log(sigma);
    }
    s->sigma_min = s->sigmas[0];
    s->sigma_max = s->sigmas[n - 1];
}

void schedule_init_sd1(struct schedule *s) { schedule_init(s, 0.00085, 0.012); }

int schedule_timestep(const struct schedule *s, float sigma) {
    /* dists = |log(sigma) - log_sigmas| in float; argmin returns the first minimum */
    const float ls = logf(sigma);
    int best = 0;
    float best_d = fabsf(ls - s->log_sigmas[0]);
    for (int i = 1; i < SCHEDULE_TIMESTEPS; i++) {
        float d = fabsf(ls - s->log_sigmas[i]);
        if (d < best_d) best = i, best_d = d;
    }
    return best;
}

float schedule_sigma(const struct schedule *s, float t) {
    t = fminf(fmaxf(t, 0.0f), (float)(SCHEDULE_TIMESTEPS - 1));
    const int lo = (int)floorf(t), hi = (int)ceilf(t);
    const float w = t - truncf(t); /* t.frac() */
    const float a = (1.0f - w) * s->log_sigmas[lo];
    const float b = w * s->log_sigmas[hi];
    return exp_f32(a + b);
}

/* ===== Scheduler names ===== */

static const char *const KIND_NAMES[SCHEDULE_KIND_COUNT] = {
#define XX(id, name) name,
    SCHEDULE_KIND_MAP(XX)
#undef XX
};

const char *schedule_kind_name(enum schedule_kind kind) {
    return (unsigned)kind < SCHEDULE_KIND_COUNT ? KIND_NAMES[kind] : "?";
}

enum schedule_kind schedule_kind_parse(const char *name) {
    for (int k = 0; name && k < SCHEDULE_KIND_COUNT; k++)
        if (strcmp(name, KIND_NAMES[k]) == 0) return (enum schedule_kind)k;
    return SCHEDULE_KIND_COUNT;
}

/* ===== Inverse regularised incomplete beta (for "beta") ===== */

/* Continued fraction of I_x(a, b) (modified Lentz), valid for x < (a+1)/(a+b+2). */
static double beta_cf(double a, double b, double x) {
    const double tiny = 1e-300;
    double c = 1.0, d = 1.0 - (a + b) * x / (a + 1.0);
    if (fabs(d) < tiny) d = tiny;
    d = 1.0 / d;
    double h = d;
    for (int m = 1; m <= 10000; m++) {
        double m2 = 2.0 * m;
        /* even step: d_{2m} = m (b - m) x / ((a + 2m - 1)(a + 2m)) */
        double num = m * (b - m) * x / ((a + m2 - 1.0) * (a + m2));
        d = 1.0 + num * d;
        if (fabs(d) < tiny) d = tiny;
        c = 1.0 + num / c;
        if (fabs(c) < tiny) c = tiny;
        d = 1.0 / d;
        h *= d * c;
        /* odd step: d_{2m+1} = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1)) */
        num = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0));
        d = 1.0 + num * d;
        if (fabs(d) < tiny) d = tiny;
        c = 1.0 + num / c;
        if (fabs(c) < tiny) c = tiny;
        d = 1.0 / d;
        double delta = d * c;
        h *= delta;
        if (fabs(delta - 1.0) < 1e-16) break;
    }
    return h;
}

/* Regularised incomplete beta I_x(a, b) = B(x; a, b) / B(a, b). */
static double beta_inc(double a, double b, double x) {
    if (x <= 0.0) return 0.0;
    if (x >= 1.0) return 1.0;
    /* x^a (1-x)^b / (a B(a,b)), in logs */
    double lfront = lgamma(a + b) - lgamma(a) - lgamma(b) + a * log(x) + b * log1p(-x);
    if (x < (a + 1.0) / (a + b + 2.0)) return exp(lfront) * beta_cf(a, b, x) / a;
    return 1.0 - exp(lfront) * beta_cf(b, a, 1.0 - x) / b;
}

/* x with I_x(a, b) = q (scipy.stats.beta.ppf), by bisection: I is monotone in x, so this
 * cannot diverge, and 1e-16 absolute is what rint(ppf * 999) needs (scipy's own answer is
 * only that close, too). The symmetric median (a == b, q = 1/2) is exactly 1/2, which
 * rint(499.5) takes to 500 like ComfyUI. */
static double beta_ppf(double q, double a, double b) {
    if (q <= 0.0) return 0.0;
    if (q >= 1.0) return 1.0;
    if (a == b && q == 0.5) return 0.5;
    double lo = 0.0, hi = 1.0;
    /* ~54 halvings: 1e-16 absolute is far below what rint(x * 999) can notice */
    while (hi - lo > 1e-16) {
        double mid = 0.5 * (lo + hi);
        if (mid <= lo || mid >= hi) break;
        if (beta_inc(a, b, mid) < q)
            lo = mid;
        else
            hi = mid;
    }
    return 0.5 * (lo + hi);
}

/* ===== The schedulers ===== */

/* Each writes into out (room for schedule_cap(steps) values) and returns the count. */

static int sched_simple(const struct schedule *s, int steps, float *out) {
    const double ss = (double)SCHEDULE_TIMESTEPS / steps;
    for (int x = 0; x < steps; x++) out[x] = s->sigmas[SCHEDULE_TIMESTEPS - 1 - (int)(x * ss)];
    out[steps] = 0.0f;
    return steps + 1;
}

static int sched_ddim_uniform(const struct schedule *s, int steps, float *out) {
    /* sigmas[1], sigmas[1+ss], ... reversed; a leading 0 unless sigmas[1] is ~0 (zSNR),
     * in which case one more step is taken instead */
    int n = 0;
    bool zero_first = fabs((double)s->sigmas[1]) <= 1e-5;
    if (zero_first) steps += 1;
    else out[n++] = 0.0f;
    const int ss = MAX(SCHEDULE_TIMESTEPS / steps, 1);
    for (int x = 1; x < SCHEDULE_TIMESTEPS; x += ss) out[n++] = s->sigmas[x];
    for (int i = 0, j = n - 1; i < j; i++, j--) {
        float t = out[i];
        out[i] = out[j];
        out[j] = t;
    }
    return n;
}

static int sched_normal(const struct schedule *s, int steps, bool sgm, float *out) {
    const int start = schedule_timestep(s, s->sigma_max), end = schedule_timestep(s, s->sigma_min);
    bool append_zero = true;
    int n;
    if (sgm) {
        /* linspace(start, end, steps + 1) without its last point */
        linspace_f32((float)start, (float)end, steps + 1, out);
        n = steps;
    } else {
        if (fabs((double)schedule_sigma(s, (float)end)) <= 1e-5) {
            steps += 1;
            append_zero = false;
        }
        linspace_f32((float)start, (float)end, steps, out);
        n = steps;
    }
    for (int i = 0; i < n; i++) out[i] = schedule_sigma(s, out[i]);
    if (append_zero) out[n++] = 0.0f;
    return n;
}

static int sched_karras(const struct schedule *s, int steps, float *out) {
    /* k-diffusion get_sigmas_karras with rho = 7, sigma_min/max as python floats */
    const double rho = 7.0;
    const double min_inv_rho = pow((double)s->sigma_min, 1.0 / rho);
    const double max_inv_rho = pow((double)s->sigma_max, 1.0 / rho);
    const float span = (float)(min_inv_rho - max_inv_rho);
    linspace_f32(0.0f, 1.0f, steps, out); /* ramp */
    for (int i = 0; i < steps; i++) {
        float base = (float)max_inv_rho + out[i] * span;
        out[i] = (float)pow((double)base, rho); /* torch's scalar pow(float, double) */
    }
    out[steps] = 0.0f;
    return steps + 1;
}

static int sched_exponential(const struct schedule *s, int steps, float *out) {
    linspace_f32((float)log((double)s->sigma_max), (float)log((double)s->sigma_min), steps, out);
    for (int i = 0; i < steps; i++) out[i] = exp_f32(out[i]);
    out[steps] = 0.0f;
    return steps + 1;
}

static int sched_beta(const struct schedule *s, int steps, float *out) {
    /* ts = 1 - numpy.linspace(0, 1, steps, endpoint=False); t = rint(ppf(ts) * 999);
     * consecutive duplicates dropped */
    const double alpha = 0.6, beta = 0.6;
    const double step = 1.0 / steps;
    int n = 0;
    double last_t = -1.0;
    for (int k = 0; k < steps; k++) {
        double q = 1.0 - (double)k * step;
        double t = rint(beta_ppf(q, alpha, beta) * (SCHEDULE_TIMESTEPS - 1));
        if (t != last_t) out[n++] = s->sigmas[(int)t];
        last_t = t;
    }
    out[n++] = 0.0f;
    return n;
}

static int sched_linear_quadratic(const struct schedule *s, int steps, float *out) {
    /* genmo mochi schedule in python doubles, then float32 and times sigma_max (float32) */
    const double threshold_noise = 0.025;
    if (steps == 1) {
        out[0] = 1.0f * s->sigma_max;
        out[1] = 0.0f * s->sigma_max;
        return 2;
    }
    const int linear_steps = steps / 2;
    const int quadratic_steps = steps - linear_steps;
    const double step_diff = linear_steps - threshold_noise * steps;
    const double quadratic_coef = step_diff / ((double)linear_steps * ((double)quadratic_steps * quadratic_steps));
    const double linear_coef =
        threshold_noise / linear_steps - 2 * step_diff / ((double)quadratic_steps * quadratic_steps);
    const double constant = quadratic_coef * ((double)linear_steps * linear_steps);
    int n = 0;
    for (int i = 0; i < linear_steps; i++) {
        double v = i * threshold_noise / linear_steps;
        out[n++] = (float)(1.0 - v) * s->sigma_max;
    }
    for (int i = linear_steps; i < steps; i++) {
        double v = quadratic_coef * ((double)i * i) + linear_coef * i + constant;
        out[n++] = (float)(1.0 - v) * s->sigma_max;
    }
    out[n++] = (float)(1.0 - 1.0) * s->sigma_max;
    return n;
}

static int sched_kl_optimal(const struct schedule *s, int steps, float *out) {
    /* arange(n).div_(n - 1) in float (n = 1: 0/0 = NaN, as in ComfyUI), then
     * tan(t * atan(sigma_min) + (1 - t) * atan(sigma_max)) in float */
    const float atan_min = (float)atan((double)s->sigma_min);
    const float atan_max = (float)atan((double)s->sigma_max);
    const float denom = (float)(steps - 1);
    for (int i = 0; i < steps; i++) {
        float t = (float)i / denom;
        float a = t * atan_min;
        float b = (1.0f - t) * atan_max;
        out[i] = tan_f32(a + b);
    }
    out[steps] = 0.0f;
    return steps + 1;
}

/* Room needed for any scheduler's list: ddim_uniform gives up to 1000 values + its 0. */
static int schedule_cap(int steps) { return MAX(steps, SCHEDULE_TIMESTEPS) + 2; }

int schedule_sigmas(const struct schedule *s, enum schedule_kind kind, int steps, float **out, int *n_out,
                    struct err *err) {
    *out = NULL;
    *n_out = 0;
    if ((unsigned)kind >= SCHEDULE_KIND_COUNT)
        return err_set(err, STATUS_ERR_INVALID, "scheduler: unknown scheduler %d", (int)kind);
    if (steps < 1)
        return err_set(err, STATUS_ERR_INVALID, "scheduler '%s': steps must be at least 1, got %d",
                       schedule_kind_name(kind), steps);
    if (steps > SCHEDULE_MAX_SIGMAS - 2)
        return err_set(err, STATUS_ERR_RANGE, "scheduler '%s': %d steps is more than the %d supported",
                       schedule_kind_name(kind), steps, SCHEDULE_MAX_SIGMAS - 2);
    float *buf = mem_try_alloc((size_t)schedule_cap(steps) * sizeof(float));
    if (!buf)
        return err_set(err, STATUS_ERR_NOMEM, "scheduler '%s': no memory for %d sigmas", schedule_kind_name(kind),
                       steps + 1);
    int n = 0;
    switch (kind) {
    case SCHEDULE_KIND_SIMPLE: n = sched_simple(s, steps, buf); break;
    case SCHEDULE_KIND_SGM_UNIFORM: n = sched_normal(s, steps, true, buf); break;
    case SCHEDULE_KIND_KARRAS: n = sched_karras(s, steps, buf); break;
    case SCHEDULE_KIND_EXPONENTIAL: n = sched_exponential(s, steps, buf); break;
    case SCHEDULE_KIND_DDIM_UNIFORM: n = sched_ddim_uniform(s, steps, buf); break;
    case SCHEDULE_KIND_BETA: n = sched_beta(s, steps, buf); break;
    case SCHEDULE_KIND_NORMAL: n = sched_normal(s, steps, false, buf); break;
    case SCHEDULE_KIND_LINEAR_QUADRATIC: n = sched_linear_quadratic(s, steps, buf); break;
    case SCHEDULE_KIND_KL_OPTIMAL: n = sched_kl_optimal(s, steps, buf); break;
    default: ASSERT(!"unknown schedule kind"); break;
    }
    ASSERT(n >= 1 && n <= schedule_cap(steps));
    *out = buf;
    *n_out = n;
    return STATUS_OK;
}

/* ===== KSampler's sigma selection ===== */

/* KSampler.calculate_sigmas: steps+1 and the penultimate value dropped for dpm_2 & co. */
static int ksampler_calculate(const struct schedule *s, const struct schedule_request *req, int steps, float **out,
                              int *n, struct err *err) {
    int rc = schedule_sigmas(s, req->kind, req->discard_penultimate ? steps + 1 : steps, out, n, err);
    if (rc < 0 || !req->discard_penultimate) return rc;
    if (*n >= 2) {
        (*out)[*n - 2] = (*out)[*n - 1];
        *n -= 1;
    }
    return STATUS_OK;
}

int schedule_ksampler_sigmas(const struct schedule *s, const struct schedule_request *req, float **out,
                             int *n_out, struct err *err) {
    *out = NULL;
    *n_out = 0;
    if (req->start_step < -1 || req->last_step < -1)
        return err_set(err, STATUS_ERR_INVALID, "sampler steps: start step %d / last step %d must be >= 0",
                       req->start_step, req->last_step);
    if (req->steps < 1)
        return err_set(err, STATUS_ERR_INVALID, "sampler: steps must be at least 1, got %d", req->steps);

    /* set_steps: the full schedule, none (denoise <= 0), or the tail of a longer one */
    float *sig = NULL;
    int n = 0, rc;
    if (req->denoise > 0.9999) {
        rc = ksampler_calculate(s, req, req->steps, &sig, &n, err);
        if (rc < 0) return rc;
    } else if (req->denoise <= 0.0) {
        return STATUS_OK; /* empty: the latent comes back unchanged */
    } else {
        double total = (double)req->steps / req->denoise; /* int(steps / denoise) */
        if (!(total < (double)(SCHEDULE_MAX_SIGMAS - 3)))
            return err_set(err, STATUS_ERR_RANGE, "sampler: %d steps at denoise %g need too many sigmas",
                           req->steps, req->denoise);
        rc = ksampler_calculate(s, req, (int)total, &sig, &n, err);
        if (rc < 0) return rc;
        int keep = MIN(n, req->steps + 1); /* sigmas[-(steps + 1):] */
        memmove(sig, sig + (n - keep), (size_t)keep * sizeof(float));
        n = keep;
    }

    /* sample(): last_step cuts the end (and may force a final 0), start_step the beginning */
    if (req->last_step >= 0 && req->last_step < n - 1) {
        n = req->last_step + 1;
        if (req->force_full_denoise) sig[n - 1] = 0.0f;
    }
    if (req->start_step >= 0) {
        if (req->start_step < n - 1) {
            memmove(sig, sig + req->start_step, (size_t)(n - req->start_step) * sizeof(float));
            n -= req->start_step;
        } else {
            mem_free(sig);
            return STATUS_OK; /* nothing to sample: the latent comes back unchanged */
        }
    }
    *out = sig;
    *n_out = n;
    return STATUS_OK;
}
