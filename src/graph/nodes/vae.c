/* graph/nodes/vae.c -- VAEDecode and VAEEncode.
 * Owns: the LATENT/IMAGE objects it creates (handed to the executor).
 * Threads: the worker executing the prompt. */
#include "base/base.h"
#include "base/mem.h"
#include "base/status.h"
#include "graph/engine.h"
#include "graph/nodes/save.h"
#include "graph/registry.h"

#include <string.h>

/* ===== VAEDecode ===== */

static const struct node_input decode_inputs[] = {
    {.name = "samples", .kind = NODE_INPUT_OBJECT, .type = "LATENT", .tooltip = "The latent to be decoded."},
    {.name = "vae", .kind = NODE_INPUT_OBJECT, .type = "VAE", .tooltip = "The VAE model used for decoding the latent."},
    NODE_INPUTS_END,
};

static const struct node_output decode_outputs[] = {
    {.type = "IMAGE", .tooltip = "The decoded image."},
    NODE_OUTPUTS_END,
};

static int run_decode(struct node_run *ctx, const struct value *in, struct value *out, struct err *err) {
    struct engine *e = ctx->engine;
    const struct latent *lat = (const struct latent *)in[0].obj;
    const struct vae *vae = &((const struct model_value *)in[1].obj)->ck->sd->vae;
    if (lat->c != vae->config.embed_dim)
        return err_set(err, STATUS_ERR_INVALID, "VAEDecode: latent has %lld channels, this VAE expects %d",
                       (long long)lat->c, vae->config.embed_dim);
    int64_t H = lat->h * 8, W = lat->w * 8, plane = H * W;
    struct image *img = image_new(lat->b, H, W, 3);
    if (!img)
        return err_set(err, STATUS_ERR_NOMEM, "VAEDecode: out of host memory for %lld images of %lldx%lld",
                       (long long)lat->b, (long long)W, (long long)H);
    int rc = 0;
    /* one image at a time bounds activation memory; each comes back as clamp((x + 1) / 2) in the
       IMAGE layout [H, W, 3] (vae_decode_image: on GPUs the decoder's own layout), and is handed
       to the PNG encoder of a SaveImage that takes them, while the next decodes */
    save_ahead_begin(ctx, img);
    for (int64_t b = 0; b < lat->b && !rc; b++) {
        float *dst = img->data + b * plane * 3;
        rc = vae_decode_image(&e->tctx, vae, 1, lat->h, lat->w, lat->samples + b * lat->c * lat->h * lat->w, dst);
        if (rc) {
            err_set(err, rc, "VAEDecode: %s", e->tctx.err.msg);
            break;
        }
        save_ahead_submit(img, b);
        rc = node_progress(ctx, b + 1, lat->b, err);
    }
    if (rc) {
        gobj_unref(&img->obj);
        return rc;
    }
    out[0] = (struct value){.kind = VALUE_OBJECT, .obj = &img->obj};
    return 0;
}

const struct node_class NODE_VAEDecode = {
    .name = "VAEDecode",
    .display_name = "VAE Decode",
    .category = "latent",
    .description = "Decodes latent images back into pixel space images.",
    .required = decode_inputs,
    .outputs = decode_outputs,
    .run = run_decode,
};

/* ===== VAEEncode ===== */

static const struct node_input encode_inputs[] = {
    {.name = "pixels", .kind = NODE_INPUT_OBJECT, .type = "IMAGE"},
    {.name = "vae", .kind = NODE_INPUT_OBJECT, .type = "VAE"},
    NODE_INPUTS_END,
};

static const struct node_output encode_outputs[] = {{.type = "LATENT"}, NODE_OUTPUTS_END};

static int run_encode(struct node_run *ctx, const struct value *in, struct value *out, struct err *err) {
    struct engine *e = ctx->engine;
    const struct image *img = (const struct image *)in[0].obj;
    const struct vae *vae = &((const struct model_value *)in[1].obj)->ck->sd->vae;
    /* ComfyUI crops to a multiple of 8, centred (vae_encode_crop_pixels) */
    int64_t H = img->h / 8 * 8, W = img->w / 8 * 8;
    if (H == 0 || W == 0)
        return err_set(err, STATUS_ERR_INVALID, "VAEEncode: image %lldx%lld is smaller than 8x8", (long long)img->w,
                       (long long)img->h);
    int64_t y0 = (img->h % 8) / 2, x0 = (img->w % 8) / 2, plane = H * W;
    struct latent *lat = latent_new(img->b, vae->config.embed_dim, H / 8, W / 8);
    float *pix = mem_try_alloc((size_t)(3 * plane) * sizeof(float));
    if (!pix) {
        gobj_unref(&lat->obj);
        return err_set(err, STATUS_ERR_NOMEM, "VAEEncode: out of host memory");
    }
    int rc = 0;
    for (int64_t b = 0; b < img->b && !rc; b++) {
        /* NHWC [0, 1] -> NCHW [-1, 1], first three channels */
        const float *src = img->data + b * img->h * img->w * img->c;
        for (int64_t y = 0; y < H; y++)
            for (int64_t x = 0; x < W; x++)
                for (int ch = 0; ch < 3; ch++)
                    pix[ch * plane + y * W + x] = src[((y + y0) * img->w + (x + x0)) * img->c + ch] * 2.0f - 1.0f;
        rc = vae_encode(&e->tctx, vae, 1, H, W, pix, lat->samples + b * lat->c * lat->h * lat->w);
        if (rc) err_set(err, rc, "VAEEncode: %s", e->tctx.err.msg);
    }
    mem_free(pix);
    if (rc) {
        gobj_unref(&lat->obj);
        return rc;
    }
    out[0] = (struct value){.kind = VALUE_OBJECT, .obj = &lat->obj};
    return 0;
}

const struct node_class NODE_VAEEncode = {
    .name = "VAEEncode",
    .display_name = "VAE Encode",
    .category = "latent",
    .required = encode_inputs,
    .outputs = encode_outputs,
    .run = run_encode,
};
