/* graph/nodes/latent.c -- model-free LATENT nodes: EmptyLatentImage, LatentUpscale,
 * LatentUpscaleBy, LatentFromBatch, RepeatLatentBatch (ComfyUI v0.3.64 nodes.py).
 * Owns: the LATENT objects these nodes create.
 * Must not: touch models.
 * Threads: the executor's worker thread.
 * Ownership: outputs hold one reference each (the executor drops them). */
#include "graph/registry.h"

#include "base/mem.h"
#include "base/status.h"
#include "io/resize.h"

#include <math.h>
#include <string.h>

#define MAX_RESOLUTION 16384

static const char *const UPSCALE_LATENT[] = {"nearest-exact", "bilinear", "area", "bicubic", "bislerp", NULL};
static const char *const CROP[] = {"disabled", "center", NULL};

static const struct node_output LATENT_OUT[] = {{.type = "LATENT"}, NODE_OUTPUTS_END};

static int nomem(struct err *err, int64_t b, int64_t c, int64_t h, int64_t w) {
    return err_set(err, STATUS_ERR_NOMEM, "out of memory allocating a latent of [%lld, %lld, %lld, %lld]",
                   (long long)b, (long long)c, (long long)h, (long long)w);
}

/* ===== EmptyLatentImage ===== */

static int run_empty_latent(struct node_run *ctx, const struct value *in, struct value *out, struct err *err) {
    int64_t w = in[0].i, h = in[1].i, b = in[2].i;
    struct latent *l = latent_new(b, 4, h / 8, w / 8); /* zeros [B, 4, H/8, W/8] */
    if (!l) return nomem(err, b, 4, h / 8, w / 8);
    value_set_object(&out[0], &l->obj);
    return 0;
}

static const struct node_input EMPTY_LATENT_IN[] = {
    {.name = "width", .kind = NODE_INPUT_INT, .flags = NODE_IN_DEFAULT | NODE_IN_MIN | NODE_IN_MAX | NODE_IN_STEP,
     .int_default = 512, .int_min = 16, .int_max = MAX_RESOLUTION, .int_step = 8,
     .tooltip = "The width of the latent images in pixels."},
    {.name = "height", .kind = NODE_INPUT_INT, .flags = NODE_IN_DEFAULT | NODE_IN_MIN | NODE_IN_MAX | NODE_IN_STEP,
     .int_default = 512, .int_min = 16, .int_max = MAX_RESOLUTION, .int_step = 8,
     .tooltip = "The height of the latent images in pixels."},
    {.name = "batch_size", .kind = NODE_INPUT_INT, .flags = NODE_IN_DEFAULT | NODE_IN_MIN | NODE_IN_MAX,
     .int_default = 1, .int_min = 1, .int_max = 4096, .tooltip = "The number of latent images in the batch."},
    NODE_INPUTS_END,
};

const struct node_class NODE_EmptyLatentImage = {
    .name = "EmptyLatentImage",
    .display_name = "Empty Latent Image",
    .category = "latent",
    .description = "Create a new batch of empty latent images to be denoised via sampling.",
    .required = EMPTY_LATENT_IN,
    .outputs = (const struct node_output[]){{.type = "LATENT", .tooltip = "The empty latent image batch."},
                                            NODE_OUTPUTS_END},
    .run = run_empty_latent,
};

/* ===== Resizing ===== */

/* A copy of src's metadata (batch_index) around new samples of [b, c, h, w]. */
static struct latent *latent_like(const struct latent *src, int64_t h, int64_t w) {
    struct latent *l = latent_new(src->b, src->c, h, w);
    if (l && src->batch_index) {
        l->batch_index = mem_alloc((size_t)src->b * sizeof *l->batch_index);
        memcpy(l->batch_index, src->batch_index, (size_t)src->b * sizeof *l->batch_index);
    }
    return l;
}

/* comfy.utils.common_upscale(samples, w, h, method, crop) into a new latent. */
static int upscale_latent(const struct latent *s, int64_t w, int64_t h, const char *method, bool center,
                          struct value *out, struct err *err) {
    enum io_upscale m = io_upscale_parse(method);
    if (m == IO_UPSCALE_COUNT) return err_set(err, STATUS_ERR_INVALID, "unknown upscale method '%s'", method);
    if (w <= 0 || h <= 0) return err_set(err, STATUS_ERR_INVALID, "cannot upscale a latent to %lldx%lld", (long long)w,
                                         (long long)h);
    struct latent *l = latent_like(s, h, w);
    if (!l) return nomem(err, s->b, s->c, h, w);
    int rc = io_common_upscale(s->samples, s->b, s->c, s->h, s->w, l->samples, w, h, m, center, err);
    if (rc) {
        gobj_unref(&l->obj);
        return rc;
    }
    value_set_object(out, &l->obj);
    return 0;
}

static int run_latent_upscale(struct node_run *ctx, const struct value *in, struct value *out, struct err *err) {
    const struct latent *s = value_latent(&in[0]);
    const char *method = in[1].s;
    int64_t width = in[2].i, height = in[3].i;
    bool center = strcmp(in[4].s, "center") == 0;
    if (width == 0 && height == 0) { /* passes the latent through */
        value_copy(&out[0], &in[0]);
        return 0;
    }
    if (width == 0) {
        height = height > 64 ? height : 64;
        width = (int64_t)nearbyint((double)s->w * (double)height / (double)s->h); /* Python round() */
        width = width > 64 ? width : 64;
    } else if (height == 0) {
        width = width > 64 ? width : 64;
        height = (int64_t)nearbyint((double)s->h * (double)width / (double)s->w);
        height = height > 64 ? height : 64;
    } else {
        width = width > 64 ? width : 64;
        height = height > 64 ? height : 64;
    }
    return upscale_latent(s, width / 8, height / 8, method, center, &out[0], err);
}

static const struct node_input LATENT_UPSCALE_IN[] = {
    {.name = "samples", .kind = NODE_INPUT_OBJECT, .type = "LATENT"},
    {.name = "upscale_method", .kind = NODE_INPUT_COMBO, .options = UPSCALE_LATENT},
    {.name = "width", .kind = NODE_INPUT_INT, .flags = NODE_IN_DEFAULT | NODE_IN_MIN | NODE_IN_MAX | NODE_IN_STEP,
     .int_default = 512, .int_min = 0, .int_max = MAX_RESOLUTION, .int_step = 8},
    {.name = "height", .kind = NODE_INPUT_INT, .flags = NODE_IN_DEFAULT | NODE_IN_MIN | NODE_IN_MAX | NODE_IN_STEP,
     .int_default = 512, .int_min = 0, .int_max = MAX_RESOLUTION, .int_step = 8},
    {.name = "crop", .kind = NODE_INPUT_COMBO, .options = CROP},
    NODE_INPUTS_END,
};

const struct node_class NODE_LatentUpscale = {
    .name = "LatentUpscale",
    .display_name = "Upscale Latent",
    .category = "latent",
    .required = LATENT_UPSCALE_IN,
    .outputs = LATENT_OUT,
    .run = run_latent_upscale,
};

static int run_latent_upscale_by(struct node_run *ctx, const struct value *in, struct value *out, struct err *err) {
    const struct latent *s = value_latent(&in[0]);
    double scale = in[2].f;
    int64_t w = (int64_t)nearbyint((double)s->w * scale), h = (int64_t)nearbyint((double)s->h * scale);
    return upscale_latent(s, w, h, in[1].s, false, &out[0], err);
}

static const struct node_input LATENT_UPSCALE_BY_IN[] = {
    {.name = "samples", .kind = NODE_INPUT_OBJECT, .type = "LATENT"},
    {.name = "upscale_method", .kind = NODE_INPUT_COMBO, .options = UPSCALE_LATENT},
    {.name = "scale_by", .kind = NODE_INPUT_FLOAT, .flags = NODE_IN_DEFAULT | NODE_IN_MIN | NODE_IN_MAX | NODE_IN_STEP,
     .float_default = 1.5, .float_min = 0.01, .float_max = 8.0, .float_step = 0.01},
    NODE_INPUTS_END,
};

const struct node_class NODE_LatentUpscaleBy = {
    .name = "LatentUpscaleBy",
    .display_name = "Upscale Latent By",
    .category = "latent",
    .required = LATENT_UPSCALE_BY_IN,
    .outputs = LATENT_OUT,
    .run = run_latent_upscale_by,
};

/* ===== Batches ===== */

static int run_latent_from_batch(struct node_run *ctx, const struct value *in, struct value *out, struct err *err) {
    const struct latent *s = value_latent(&in[0]);
    int64_t index = in[1].i, length = in[2].i;
    if (index < 0) index += s->b;
    index = index < 0 ? 0 : index > s->b - 1 ? s->b - 1 : index;
    length = length < s->b - index ? length : s->b - index;
    struct latent *l = latent_new(length, s->c, s->h, s->w);
    if (!l) return nomem(err, length, s->c, s->h, s->w);
    size_t per = (size_t)(s->c * s->h * s->w);
    memcpy(l->samples, s->samples + (size_t)index * per, (size_t)length * per * sizeof(float));
    l->batch_index = mem_alloc((size_t)(length ? length : 1) * sizeof *l->batch_index);
    for (int64_t i = 0; i < length; i++)
        l->batch_index[i] = s->batch_index ? s->batch_index[index + i] : (int)(index + i);
    value_set_object(&out[0], &l->obj);
    return 0;
}

static const struct node_input LATENT_FROM_BATCH_IN[] = {
    {.name = "samples", .kind = NODE_INPUT_OBJECT, .type = "LATENT"},
    {.name = "batch_index", .kind = NODE_INPUT_INT, .flags = NODE_IN_DEFAULT | NODE_IN_MIN | NODE_IN_MAX,
     .int_default = 0, .int_min = 0, .int_max = 63},
    {.name = "length", .kind = NODE_INPUT_INT, .flags = NODE_IN_DEFAULT | NODE_IN_MIN | NODE_IN_MAX, .int_default = 1,
     .int_min = 1, .int_max = 64},
    NODE_INPUTS_END,
};

const struct node_class NODE_LatentFromBatch = {
    .name = "LatentFromBatch",
    .display_name = "Latent From Batch",
    .category = "latent/batch",
    .required = LATENT_FROM_BATCH_IN,
    .outputs = LATENT_OUT,
    .run = run_latent_from_batch,
};

static int run_repeat_latent(struct node_run *ctx, const struct value *in, struct value *out, struct err *err) {
    const struct latent *s = value_latent(&in[0]);
    int64_t amount = in[1].i;
    struct latent *l = latent_new(s->b * amount, s->c, s->h, s->w);
    if (!l) return nomem(err, s->b * amount, s->c, s->h, s->w);
    size_t n = (size_t)(s->b * s->c * s->h * s->w);
    for (int64_t a = 0; a < amount; a++) memcpy(l->samples + (size_t)a * n, s->samples, n * sizeof(float));
    if (s->batch_index) { /* later copies continue after the indices already used */
        int lo = s->batch_index[0], hi = s->batch_index[0];
        for (int64_t i = 1; i < s->b; i++) {
            lo = s->batch_index[i] < lo ? s->batch_index[i] : lo;
            hi = s->batch_index[i] > hi ? s->batch_index[i] : hi;
        }
        int offset = hi - lo + 1;
        l->batch_index = mem_alloc((size_t)(s->b * amount) * sizeof *l->batch_index);
        for (int64_t a = 0; a < amount; a++)
            for (int64_t i = 0; i < s->b; i++) l->batch_index[a * s->b + i] = s->batch_index[i] + (int)a * offset;
    }
    value_set_object(&out[0], &l->obj);
    return 0;
}

static const struct node_input REPEAT_LATENT_IN[] = {
    {.name = "samples", .kind = NODE_INPUT_OBJECT, .type = "LATENT"},
    {.name = "amount", .kind = NODE_INPUT_INT, .flags = NODE_IN_DEFAULT | NODE_IN_MIN | NODE_IN_MAX, .int_default = 1,
     .int_min = 1, .int_max = 64},
    NODE_INPUTS_END,
};

const struct node_class NODE_RepeatLatentBatch = {
    .name = "RepeatLatentBatch",
    .display_name = "Repeat Latent Batch",
    .category = "latent/batch",
    .required = REPEAT_LATENT_IN,
    .outputs = LATENT_OUT,
    .run = run_repeat_latent,
};
