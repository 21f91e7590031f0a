/* model/layout.h -- the tensor list of an original-format (LDM) SD 1.x checkpoint.
 * Owns: struct layout, the (name, shape, dtype, part, role) of every tensor such a checkpoint
 * holds, derived from a struct sd_config (levels, channel_mult, num_res_blocks, attention
 * levels, CLIP depth...), in the order of a real SD 1.5 file: UNet, CLIP, VAE, then the
 * CLIP position_ids buffer and the 12 DDPM schedule buffers (tests/data/sd15_keys.json).
 * Must not: read files. Loaders use it to check a checkpoint; ckpt_gen.c to write one.
 * Threads: any (a layout is plain data after layout_build). */
#ifndef KILN_MODEL_LAYOUT_H
#define KILN_MODEL_LAYOUT_H

#include "base/err.h"
#include "model/config.h"
#include "tensor/tensor.h"

#include <stdint.h>

#define LAYOUT_NAME_MAX 128 /* bytes, with the NUL; the longest SD 1.x name is 86 */
#define LAYOUT_MAX_DIMS 4
#define LAYOUT_WEIGHT_DTYPE DTYPE_F16 /* dtype of every network weight (as SD 1.5 files ship) */

/* Which network (or buffer group) a tensor belongs to; names as in sd15_keys.json. */
#define LAYOUT_PART_MAP(XX)               \
    XX(UNET, "unet")                      \
    XX(VAE, "vae")                        \
    XX(CLIP, "clip")                      \
    XX(CLIP_BUFFER, "clip_buffer")        \
    XX(DDPM_BUFFER, "ddpm_buffer")

enum layout_part {
#define XX(name, str) LAYOUT_PART_##name,
    LAYOUT_PART_MAP(XX)
#undef XX
    LAYOUT_PART_COUNT
};

/* What kind of parameter a tensor is: tells ckpt_gen how to initialise it. */
enum layout_role {
    LAYOUT_ROLE_WEIGHT,        /* Linear / conv weight [out, in, (kh, kw)] */
    LAYOUT_ROLE_WEIGHT_OUT,    /* last projection of a residual branch (scaled down at init) */
    LAYOUT_ROLE_BIAS,          /* Linear / conv bias [out] */
    LAYOUT_ROLE_NORM_WEIGHT,   /* GroupNorm / LayerNorm gamma */
    LAYOUT_ROLE_NORM_BIAS,     /* GroupNorm / LayerNorm beta */
    LAYOUT_ROLE_EMBEDDING,     /* token or position embedding table [rows, width] */
    LAYOUT_ROLE_POSITION_IDS,  /* CLIP position_ids [1, n_positions] = 0..n-1, I64 */
    LAYOUT_ROLE_SCHEDULE,      /* one DDPM buffer [1000]; `schedule` says which */
    LAYOUT_ROLE_COUNT
};

/* The DDPM buffers of an LDM checkpoint, in file order (ComfyUI ignores them). */
#define LAYOUT_SCHEDULE_MAP(XX)                                         \
    XX(BETAS, "betas")                                                  \
    XX(ALPHAS_CUMPROD, "alphas_cumprod")                                \
    XX(ALPHAS_CUMPROD_PREV, "alphas_cumprod_prev")                      \
    XX(SQRT_ALPHAS_CUMPROD, "sqrt_alphas_cumprod")                      \
    XX(SQRT_ONE_MINUS_ALPHAS_CUMPROD, "sqrt_one_minus_alphas_cumprod")  \
    XX(LOG_ONE_MINUS_ALPHAS_CUMPROD, "log_one_minus_alphas_cumprod")    \
    XX(SQRT_RECIP_ALPHAS_CUMPROD, "sqrt_recip_alphas_cumprod")          \
    XX(SQRT_RECIPM1_ALPHAS_CUMPROD, "sqrt_recipm1_alphas_cumprod")      \
    XX(POSTERIOR_VARIANCE, "posterior_variance")                        \
    XX(POSTERIOR_LOG_VARIANCE_CLIPPED, "posterior_log_variance_clipped")\
    XX(POSTERIOR_MEAN_COEF1, "posterior_mean_coef1")                    \
    XX(POSTERIOR_MEAN_COEF2, "posterior_mean_coef2")

enum layout_schedule {
#define XX(name, str) LAYOUT_SCHEDULE_##name,
    LAYOUT_SCHEDULE_MAP(XX)
#undef XX
    LAYOUT_SCHEDULE_COUNT
};

#define LAYOUT_SCHEDULE_STEPS 1000 /* length of each DDPM buffer */

struct layout_tensor {
    char name[LAYOUT_NAME_MAX];       /* full key, e.g. "model.diffusion_model.out.2.weight" */
    enum dtype dtype;                 /* LAYOUT_WEIGHT_DTYPE, I64 (position_ids), F32 (schedule) */
    int ndim;                         /* 1..LAYOUT_MAX_DIMS */
    int64_t shape[LAYOUT_MAX_DIMS];   /* outermost first; unused dims are 0 */
    enum layout_part part;
    enum layout_role role;
    enum layout_schedule schedule;    /* LAYOUT_ROLE_SCHEDULE only; else LAYOUT_SCHEDULE_COUNT */
};

struct layout {
    struct layout_tensor *tensors;    /* n entries in checkpoint order (owned) */
    int n;
    int cap;
};

/* Fills l (caller storage, overwritten) with every tensor of an SD 1.x checkpoint of this
 * config. ERR_INVALID with a message if the config is out of range (levels 1..4, positive
 * widths, heads dividing the widths...). Free with layout_deinit, also after a failure. */
int layout_build(struct layout *l, const struct sd_config *config, struct err *err);
void layout_deinit(struct layout *l);

/* Linear search by name; NULL if absent. */
const struct layout_tensor *layout_find(const struct layout *l, const char *name);

int64_t layout_tensor_numel(const struct layout_tensor *t);

/* "unet", "vae"...; layout_part_parse returns LAYOUT_PART_COUNT when unknown. */
const char *layout_part_name(enum layout_part p);
enum layout_part layout_part_parse(const char *s);
/* "betas", "alphas_cumprod"... */
const char *layout_schedule_name(enum layout_schedule s);

#endif
