/* graph/nodes/sampling.c -- KSampler and KSamplerAdvanced: ComfyUI's common_ksampler on the
 * engine's UNet, with classifier-free guidance as comfy/samplers.py computes it.
 * Owns: the LATENT it outputs; the denoiser's scratch buffers while sampling.
 * Threads: the worker executing the prompt. */
#include "base/base.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/mem.h"
#include "base/status.h"
#include "graph/engine.h"
#include "graph/registry.h"
#include "sample/ksampler.h"
#include "sample/sampler.h"
#include "sample/schedule.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ===== The guided denoiser D(x, sigma) =====
 * Every conditioning entry (positive, and negative unless cfg == 1) is one UNet evaluation of
 * the whole latent batch; entries go through the UNet together as one batch when their token
 * counts can be tiled to a common length (ComfyUI's CONDCrossAttn.can_concat: at most 4x),
 * otherwise one by one. Each entry's denoised estimate is x - sigma * eps; entries of the same
 * side are averaged; then cfg_function: uncond + (cond - uncond) * cfg. */

struct cfg_entry {
    const struct cond_item *item; /* context [n_tokens, dim] */
    int side;                     /* 0 positive, 1 negative */
};

struct cfg_denoiser {
    struct engine *engine;
    const struct unet *unet;
    const struct schedule *schedule;
    struct cfg_entry *entries;    /* positive entries first */
    int n_entries;
    int n_pos, n_neg;             /* entries per side (n_neg = 0 when cfg == 1) */
    double cfg;
    int64_t b, c, h, w;           /* latent batch shape */
    struct node_run *run;         /* for progress */
    int total_steps;
    /* scratch, sized for every entry in one batch */
    float *x_in, *timesteps, *context, *eps;
    float *side_sum;              /* [2, b*c*h*w] */
    /* the context of the all-entries batch in the device's memory (the engine's buffer,
       engine_ctx_buffer), uploaded at the first step (it does not change between steps); NULL on
       host-memory backends or before */
    void *ctx_dev;
    double t_last;                /* when the last step's denoise returned (debug timing) */
    /* the Euler loop on the device (denoise_dev): the sample after the context in the engine's
       buffer, the entries' common token count */
    void *x_dev;
    int64_t dev_tokens;
};

/* The per-step loops over the latent, vectorised (KILN_VECTORIZE): the same IEEE operations in
 * the same order per element as the scalar loops (no contraction in ISO C), so the same bits.
 * At batch 4 the scalar x / c_in over both CFG halves was most of the ~0.25 ms the GPU waited
 * between two steps (docs/PERF.md). */
KILN_VECTORIZE static void div_into(float *restrict dst, const float *restrict x, float c, int64_t n) {
    for (int64_t k = 0; k < n; k++) dst[k] = x[k] / c;
}

/* sum += x - eps * sigma (calculate_denoised, added to its side's sum) */
KILN_VECTORIZE static void add_denoised(float *restrict sum, const float *restrict x, const float *restrict eps,
                                        float sigma, int64_t n) {
    for (int64_t k = 0; k < n; k++) sum[k] += x[k] - eps[k] * sigma;
}

/* out = uncond + (cond - uncond) * scale (cfg_function) */
KILN_VECTORIZE static void cfg_mix(float *restrict out, const float *restrict cond, const float *restrict uncond,
                                   float scale, int64_t n) {
    for (int64_t k = 0; k < n; k++) out[k] = uncond[k] + (cond[k] - uncond[k]) * scale;
}

KILN_VECTORIZE static void div_by(float *x, float c, int64_t n) {
    for (int64_t k = 0; k < n; k++) x[k] /= c;
}

static int64_t gcd64(int64_t a, int64_t b) {
    while (b) {
        int64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* The entries [first, first + n)'s common token count (the least common multiple: each entry's
 * context is tiled to it, as CONDCrossAttn.concat does), and their shortest into *min_len (may be
 * NULL): batched only while L / min_len <= 4. */
static int64_t common_tokens(const struct cfg_denoiser *d, int first, int n, int64_t *min_len) {
    int64_t L = 1, lo = INT64_MAX;
    for (int i = first; i < first + n; i++) {
        int64_t t = d->entries[i].item->n_tokens;
        L = L / gcd64(L, t) * t;
        if (t < lo) lo = t;
    }
    if (min_len) *min_len = lo;
    return L;
}

/* The context of entries [first, first + n) as one UNet batch, each entry's tokens tiled to L,
 * into d->context [n * b, L, dim]. */
static void fill_context(struct cfg_denoiser *d, int first, int n, int64_t L) {
    int64_t dim = d->entries[first].item->dim;
    for (int i = 0; i < n; i++) {
        const struct cond_item *it = d->entries[first + i].item;
        for (int64_t bb = 0; bb < d->b; bb++) {
            float *dst = d->context + (i * d->b + bb) * L * dim;
            for (int64_t r = 0; r < L / it->n_tokens; r++) /* tile to the common length */
                memcpy(dst + r * it->n_tokens * dim, it->context, (size_t)(it->n_tokens * dim) * sizeof(float));
        }
    }
}

/* Runs entries [first, first + n) as one UNet batch, adding each one's denoised estimate to its
 * side's sum. */
static int eval_entries(struct cfg_denoiser *d, int first, int n, const float *x, float sigma, struct err *err) {
    int64_t per = d->c * d->h * d->w, lat = d->b * per, dim = d->entries[first].item->dim;
    const int64_t L = common_tokens(d, first, n, NULL);
    /* c_in: x / sqrt(sigma^2 + 1), float32 as torch does it */
    float c_in = sqrtf(sigma * sigma + 1.0f);
    float t = (float)schedule_timestep(d->schedule, sigma);
    struct engine *e = d->engine;
    /* the all-entries batch keeps its context on a device from the first step on */
    bool keep = first == 0 && n == d->n_entries && !backend_host_buffers(e->backend);
    /* every entry's input is the same x / c_in: divided once, copied */
    div_into(d->x_in, x, c_in, lat);
    for (int i = 0; i < n; i++) {
        if (i > 0) memcpy(d->x_in + i * lat, d->x_in, (size_t)lat * sizeof(float));
        for (int64_t bb = 0; bb < d->b; bb++) d->timesteps[i * d->b + bb] = t;
    }
    if (!(keep && d->ctx_dev)) fill_context(d, first, n, L);
    if (keep && !d->ctx_dev) { /* the engine's buffer, kept between prompts */
        size_t bytes = (size_t)(n * d->b * L * dim) * sizeof(float);
        void *buf = engine_ctx_buffer(e, bytes);
        if (buf) { /* else no room: the host copy every step, as before */
            struct tensor view = {.dtype = DTYPE_F32, .ndim = 1, .shape = {(int64_t)(bytes / 4), 1, 1, 1}, .data = buf};
            if (backend_tensor_set(e->backend, &view, d->context, 0, bytes) == 0) d->ctx_dev = buf;
        }
    }
    double t0 = clock_now();
    int rc = keep && d->ctx_dev
                 ? unet_eval_dev(&e->tctx, d->unet, n * d->b, d->h, d->w, d->x_in, d->timesteps, d->ctx_dev, L, d->eps)
                 : unet_eval(&e->tctx, d->unet, n * d->b, d->h, d->w, d->x_in, d->timesteps, d->context, L, d->eps);
    if (rc) return err_set(err, rc, "UNet: %s", e->tctx.err.msg);
    if (log_get_level() == LOG_LEVEL_DEBUG)
        log_debug("sampler: UNet batch %lld at sigma %.4f in %.2f ms (%.2f ms since the last step's end)",
                  (long long)(n * d->b), sigma, 1e3 * (clock_now() - t0), d->t_last > 0 ? 1e3 * (t0 - d->t_last) : 0.0);
    for (int i = 0; i < n; i++) /* calculate_denoised */
        add_denoised(d->side_sum + d->entries[first + i].side * lat, x, d->eps + i * lat, sigma, lat);
    return 0;
}

static int cfg_denoise(void *user, const float *x, float sigma, float *denoised, struct err *err) {
    struct cfg_denoiser *d = user;
    int64_t lat = d->b * d->c * d->h * d->w;
    memset(d->side_sum, 0, (size_t)(2 * lat) * sizeof(float));
    /* batch everything when the token counts tile within 4x; else one entry at a time */
    int64_t min_len;
    const int64_t L = common_tokens(d, 0, d->n_entries, &min_len);
    int rc = 0;
    if (L / min_len <= 4) {
        rc = eval_entries(d, 0, d->n_entries, x, sigma, err);
    } else {
        for (int i = 0; i < d->n_entries && !rc; i++) rc = eval_entries(d, i, 1, x, sigma, err);
    }
    if (rc) return rc;
    float *cond = d->side_sum, *uncond = d->side_sum + lat;
    if (d->n_pos > 1) div_by(cond, (float)d->n_pos, lat);
    if (d->n_neg == 0) {
        memcpy(denoised, cond, (size_t)lat * sizeof(float));
        return 0;
    }
    if (d->n_neg > 1) div_by(uncond, (float)d->n_neg, lat);
    cfg_mix(denoised, cond, uncond, (float)d->cfg, lat);
    d->t_last = clock_now();
    return 0;
}

/* ===== The Euler loop on the device (sample/sampler.h denoise_dev) =====
 * When every entry goes through the UNet in one batch, one per side (the usual positive and
 * negative prompt), on a GPU: the sample stays in the device's memory and each step is one graph
 * (x / c_in, the UNet, the CFG mix and the Euler update: op_sample_in, op_sample_step), with the
 * same roundings as the host loop, so the same bits; only the step's scalars and the timestep
 * embedding go to the device per step. KILN_DEVICE_SAMPLER=0 keeps the host loop. */

static int dev_begin(void *user, const float *x, struct err *err) {
    struct cfg_denoiser *d = user;
    struct engine *e = d->engine;
    const char *env = getenv("KILN_DEVICE_SAMPLER");
    if ((env && strcmp(env, "0") == 0) || backend_host_buffers(e->backend) || d->n_pos != 1 || d->n_neg > 1)
        return STATUS_ERR_UNSUPPORTED;
    int64_t min_len, dim = d->entries[0].item->dim;
    const int64_t L = common_tokens(d, 0, d->n_entries, &min_len);
    if (L / min_len > 4) return STATUS_ERR_UNSUPPORTED; /* entries one by one: the host loop */
    const int64_t lat = d->b * d->c * d->h * d->w;
    fill_context(d, 0, d->n_entries, L);
    void *buf = engine_sampler_upload(e, d->context, (size_t)(d->n_entries * d->b * L * dim) * sizeof(float), x,
                                      (size_t)lat * sizeof(float), &d->x_dev, err);
    if (!buf) return err && err->code ? err->code : STATUS_ERR_UNSUPPORTED; /* no room: the host loop, which needs less */
    d->ctx_dev = buf; /* as the host loop's first step would have it */
    d->dev_tokens = L;
    return 0;
}

static int dev_euler(void *user, float s, float sn, struct err *err) {
    struct cfg_denoiser *d = user;
    struct engine *e = d->engine;
    /* the host loop's scalars: c_in as eval_entries computes it, dt as euler_step's caller */
    const float p[4] = {sqrtf(s * s + 1.0f), s, sn - s, (float)d->cfg};
    const float t = (float)schedule_timestep(d->schedule, s);
    double t0 = clock_now();
    int rc = unet_step_dev(&e->tctx, d->unet, d->n_entries, d->b, d->h, d->w, d->x_dev, t, d->ctx_dev,
                           d->dev_tokens, p);
    if (rc) return err_set(err, rc, "UNet: %s", e->tctx.err.msg);
    if (log_get_level() == LOG_LEVEL_DEBUG)
        log_debug("sampler: UNet batch %lld at sigma %.4f and the step on the device in %.2f ms (%.2f ms since the "
                  "last step's end)",
                  (long long)(d->n_entries * d->b), s, 1e3 * (clock_now() - t0),
                  d->t_last > 0 ? 1e3 * (t0 - d->t_last) : 0.0);
    d->t_last = clock_now();
    return 0;
}

static int dev_end(void *user, float *x, struct err *err) {
    struct cfg_denoiser *d = user;
    const int64_t lat = d->b * d->c * d->h * d->w;
    struct tensor xv = {.dtype = DTYPE_F32, .ndim = 1, .shape = {lat, 1, 1, 1}, .data = d->x_dev};
    int rc = backend_tensor_get(d->engine->backend, &xv, x, 0, (size_t)lat * sizeof(float));
    d->x_dev = NULL;
    if (rc) return err_set(err, rc, "copying the sample back from the device failed");
    return 0;
}

static const struct denoise_dev DEV_EULER = {.begin = dev_begin, .euler = dev_euler, .end = dev_end};

/* ===== common_ksampler ===== */

struct progress_fwd {
    struct node_run *run;
    struct err *err;
};

static int forward_progress(void *user, int step, int total) {
    struct progress_fwd *f = user;
    return node_progress(f->run, step, total, f->err);
}

static void add_entries(struct cfg_denoiser *d, const struct conditioning *cond, int side) {
    for (int i = 0; i < cond->n; i++) d->entries[d->n_entries++] = (struct cfg_entry){&cond->items[i], side};
}

static int common_ksampler(struct node_run *ctx, const struct model_value *model, const struct ksampler_params *kp,
                           double cfg, const struct conditioning *pos, const struct conditioning *neg,
                           const struct latent *in, struct value *out, struct err *err) {
    const struct unet *unet = &model->ck->sd->unet;
    if (in->c != unet->config.in_channels)
        return err_set(err, STATUS_ERR_INVALID, "latent has %lld channels, the model expects %d", (long long)in->c,
                       unet->config.in_channels);
    if (pos->n < 1) return err_set(err, STATUS_ERR_INVALID, "the positive conditioning is empty");
    bool use_neg = fabs(cfg - 1.0) > 1e-9 * fabs(cfg); /* ComfyUI skips uncond when cfg == 1 */
    if (use_neg && neg->n < 1) return err_set(err, STATUS_ERR_INVALID, "the negative conditioning is empty");
    for (int s = 0; s < 2; s++) {
        const struct conditioning *cd = s ? neg : pos;
        for (int i = 0; i < cd->n; i++)
            if (cd->items[i].dim != unet->config.context_dim)
                return err_set(err, STATUS_ERR_INVALID,
                               "conditioning is %lld wide but the model expects %d: CLIP and model do not match",
                               (long long)cd->items[i].dim, unet->config.context_dim);
    }

    struct schedule sched;
    schedule_init_sd1(&sched);
    struct cfg_denoiser d = {
        .engine = ctx->engine, .unet = unet, .schedule = &sched, .cfg = cfg,
        .b = in->b, .c = in->c, .h = in->h, .w = in->w, .run = ctx,
    };
    int n_items = pos->n + (use_neg ? neg->n : 0);
    d.entries = mem_alloc((size_t)n_items * sizeof *d.entries);
    add_entries(&d, pos, 0);
    d.n_pos = pos->n;
    if (use_neg) {
        add_entries(&d, neg, 1);
        d.n_neg = neg->n;
    }
    int64_t dim = unet->config.context_dim, lat = in->b * in->c * in->h * in->w;
    const int64_t L = common_tokens(&d, 0, d.n_entries, NULL);
    int64_t n_ctx = 0; /* context floats for the largest batch eval_entries may build */
    for (int i = 0; i < d.n_entries; i++) {
        int64_t t = d.entries[i].item->n_tokens;
        int64_t per = (L / t <= 4 ? L : t) * dim * in->b;
        n_ctx += per;
    }
    /* the UNet's input and output, copied every step: page-locked on a GPU when it can be */
    float *staged = engine_host_staging(ctx->engine, (size_t)(2 * n_items * lat) * sizeof(float));
    d.x_in = staged ? staged : mem_try_alloc((size_t)(n_items * lat) * sizeof(float));
    d.eps = staged ? staged + n_items * lat : mem_try_alloc((size_t)(n_items * lat) * sizeof(float));
    d.timesteps = mem_try_alloc((size_t)(n_items * in->b) * sizeof(float));
    d.context = mem_try_alloc((size_t)n_ctx * sizeof(float));
    d.side_sum = mem_try_alloc((size_t)(2 * lat) * sizeof(float));
    struct latent *res = latent_new(in->b, in->c, in->h, in->w);
    int rc = 0;
    if (!d.x_in || !d.eps || !d.timesteps || !d.context || !d.side_sum)
        rc = err_set(err, STATUS_ERR_NOMEM, "out of host memory for sampling a %lldx%lld batch of %lld",
                     (long long)(in->w * 8), (long long)(in->h * 8), (long long)in->b);
    if (!rc) {
        struct ksampler_params p = *kp;
        p.batch_index = in->batch_index;
        struct denoise_fn fn = {.fn = cfg_denoise, .user = &d, .dev = &DEV_EULER};
        struct progress_fwd pf = {.run = ctx, .err = err};
        /* the UNet's graph is recorded once and run every step (unet.c, tctx_memo_*): only within
           this run, while the model and d.ctx_dev are sure to stay where they are */
        tctx_reset(&d.engine->tctx);
        rc = ksampler_run(&sched, &fn, &p, in->b, in->c * in->h * in->w, in->samples, res->samples,
                          forward_progress, &pf, err);
        tctx_reset(&d.engine->tctx);
    }
    mem_free(d.entries);
    if (!staged) {
        mem_free(d.x_in);
        mem_free(d.eps);
    }
    mem_free(d.timesteps);
    mem_free(d.context);
    mem_free(d.side_sum);
    if (rc) {
        gobj_unref(&res->obj);
        return rc;
    }
    if (in->batch_index) { /* out = latent.copy(): batch_index travels on */
        res->batch_index = mem_alloc((size_t)in->b * sizeof(int));
        memcpy(res->batch_index, in->batch_index, (size_t)in->b * sizeof(int));
    }
    out[0] = (struct value){.kind = VALUE_OBJECT, .obj = &res->obj};
    return 0;
}

/* ===== Node declarations ===== */

static const char *const SAMPLER_NAMES[] = {
#define XX(id, name, impl) name,
    SAMPLER_KIND_MAP(XX)
#undef XX
    NULL,
};

static const char *const SCHEDULER_NAMES[] = {
#define XX(id, name) name,
    SCHEDULE_KIND_MAP(XX)
#undef XX
    NULL,
};

#define SEED_INPUT(nm)                                                                                   \
    {.name = nm, .kind = NODE_INPUT_INT,                                                                 \
     .flags = NODE_IN_DEFAULT | NODE_IN_MIN | NODE_IN_MAX | NODE_IN_MAX_U64 | NODE_IN_CONTROL_AFTER_GENERATE, \
     .int_default = 0, .int_min = 0, .tooltip = "The random seed used for creating the noise."}
#define STEPS_INPUT                                                                                      \
    {.name = "steps", .kind = NODE_INPUT_INT, .flags = NODE_IN_DEFAULT | NODE_IN_MIN | NODE_IN_MAX,       \
     .int_default = 20, .int_min = 1, .int_max = 10000,                                                  \
     .tooltip = "The number of steps used in the denoising process."}
#define CFG_INPUT                                                                                        \
    {.name = "cfg", .kind = NODE_INPUT_FLOAT,                                                            \
     .flags = NODE_IN_DEFAULT | NODE_IN_MIN | NODE_IN_MAX | NODE_IN_STEP | NODE_IN_ROUND,                \
     .float_default = 8.0, .float_min = 0.0, .float_max = 100.0, .float_step = 0.1, .float_round = 0.01, \
     .tooltip = "The Classifier-Free Guidance scale balances creativity and adherence to the prompt. "   \
                "Higher values result in images more closely matching the prompt however too high "     \
                "values will negatively impact quality."}
#define SAMPLER_INPUT                                                                                    \
    {.name = "sampler_name", .kind = NODE_INPUT_COMBO, .options = SAMPLER_NAMES,                        \
     .tooltip = "The algorithm used when sampling, this can affect the quality, speed, and style of "    \
                "the generated output."}
#define SCHEDULER_INPUT                                                                                  \
    {.name = "scheduler", .kind = NODE_INPUT_COMBO, .options = SCHEDULER_NAMES,                         \
     .tooltip = "The scheduler controls how noise is gradually removed to form the image."}
#define COND_INPUT(nm, tip) {.name = nm, .kind = NODE_INPUT_OBJECT, .type = "CONDITIONING", .tooltip = tip}

static const struct node_input ksampler_inputs[] = {
    {.name = "model", .kind = NODE_INPUT_OBJECT, .type = "MODEL",
     .tooltip = "The model used for denoising the input latent."},
    SEED_INPUT("seed"),
    STEPS_INPUT,
    CFG_INPUT,
    SAMPLER_INPUT,
    SCHEDULER_INPUT,
    COND_INPUT("positive", "The conditioning describing the attributes you want to include in the image."),
    COND_INPUT("negative", "The conditioning describing the attributes you want to exclude from the image."),
    {.name = "latent_image", .kind = NODE_INPUT_OBJECT, .type = "LATENT", .tooltip = "The latent image to denoise."},
    {.name = "denoise", .kind = NODE_INPUT_FLOAT, .flags = NODE_IN_DEFAULT | NODE_IN_MIN | NODE_IN_MAX | NODE_IN_STEP,
     .float_default = 1.0, .float_min = 0.0, .float_max = 1.0, .float_step = 0.01,
     .tooltip = "The amount of denoising applied, lower values will maintain the structure of the initial "
                "image allowing for image to image sampling."},
    NODE_INPUTS_END,
};

static const struct node_output latent_outputs[] = {
    {.type = "LATENT", .tooltip = "The denoised latent."},
    NODE_OUTPUTS_END,
};

static int parse_names(const struct value *sampler, const struct value *scheduler, struct ksampler_params *p,
                       struct err *err) {
    p->sampler = sampler_kind_parse(sampler->s);
    p->scheduler = schedule_kind_parse(scheduler->s);
    if (p->sampler == SAMPLER_KIND_COUNT) return err_set(err, STATUS_ERR_INVALID, "unknown sampler '%s'", sampler->s);
    if (p->scheduler == SCHEDULE_KIND_COUNT)
        return err_set(err, STATUS_ERR_INVALID, "unknown scheduler '%s'", scheduler->s);
    if (!sampler_kind_implemented(p->sampler))
        return err_set(err, STATUS_ERR_UNSUPPORTED, "sampler '%s' is not supported yet", sampler->s);
    return 0;
}

static int run_ksampler(struct node_run *ctx, const struct value *in, struct value *out, struct err *err) {
    struct ksampler_params p = {
        .seed = (uint64_t)in[1].i,
        .steps = (int)in[2].i,
        .denoise = in[9].f,
        .add_noise = true,
        .start_step = -1,
        .last_step = -1,
        .force_full_denoise = false,
        .latent_scale = SD1_LATENT_SCALE,
    };
    int rc = parse_names(&in[4], &in[5], &p, err);
    if (rc) return rc;
    return common_ksampler(ctx, (const struct model_value *)in[0].obj, &p, in[3].f,
                           (const struct conditioning *)in[6].obj, (const struct conditioning *)in[7].obj,
                           (const struct latent *)in[8].obj, out, err);
}

const struct node_class NODE_KSampler = {
    .name = "KSampler",
    .display_name = "KSampler",
    .category = "sampling",
    .description = "Uses the provided model, positive and negative conditioning to denoise the latent image.",
    .required = ksampler_inputs,
    .outputs = latent_outputs,
    .run = run_ksampler,
};

static const char *const ENABLE_DISABLE[] = {"enable", "disable", NULL};
static const char *const DISABLE_ENABLE[] = {"disable", "enable", NULL};

static const struct node_input advanced_inputs[] = {
    {.name = "model", .kind = NODE_INPUT_OBJECT, .type = "MODEL"},
    {.name = "add_noise", .kind = NODE_INPUT_COMBO, .options = ENABLE_DISABLE},
    SEED_INPUT("noise_seed"),
    STEPS_INPUT,
    CFG_INPUT,
    SAMPLER_INPUT,
    SCHEDULER_INPUT,
    COND_INPUT("positive", NULL),
    COND_INPUT("negative", NULL),
    {.name = "latent_image", .kind = NODE_INPUT_OBJECT, .type = "LATENT"},
    {.name = "start_at_step", .kind = NODE_INPUT_INT, .flags = NODE_IN_DEFAULT | NODE_IN_MIN | NODE_IN_MAX,
     .int_default = 0, .int_min = 0, .int_max = 10000},
    {.name = "end_at_step", .kind = NODE_INPUT_INT, .flags = NODE_IN_DEFAULT | NODE_IN_MIN | NODE_IN_MAX,
     .int_default = 10000, .int_min = 0, .int_max = 10000},
    {.name = "return_with_leftover_noise", .kind = NODE_INPUT_COMBO, .options = DISABLE_ENABLE},
    NODE_INPUTS_END,
};

static const struct node_output advanced_outputs[] = {{.type = "LATENT"}, NODE_OUTPUTS_END};

static int run_advanced(struct node_run *ctx, const struct value *in, struct value *out, struct err *err) {
    struct ksampler_params p = {
        .seed = (uint64_t)in[2].i,
        .steps = (int)in[3].i,
        .denoise = 1.0,
        .add_noise = strcmp(in[1].s, "disable") != 0,
        .start_step = (int)in[10].i,
        .last_step = (int)in[11].i,
        .force_full_denoise = strcmp(in[12].s, "enable") != 0,
        .latent_scale = SD1_LATENT_SCALE,
    };
    int rc = parse_names(&in[5], &in[6], &p, err);
    if (rc) return rc;
    return common_ksampler(ctx, (const struct model_value *)in[0].obj, &p, in[4].f,
                           (const struct conditioning *)in[7].obj, (const struct conditioning *)in[8].obj,
                           (const struct latent *)in[9].obj, out, err);
}

const struct node_class NODE_KSamplerAdvanced = {
    .name = "KSamplerAdvanced",
    .display_name = "KSampler (Advanced)",
    .category = "sampling",
    .required = advanced_inputs,
    .outputs = advanced_outputs,
    .run = run_advanced,
};
