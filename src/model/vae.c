/* model/vae.c -- KL autoencoder: configuration from shapes, weights, encoder and decoder.
 * Mirrors ldm's Encoder/Decoder (comfy/ldm/modules/diffusionmodules/model.py).
 * Threads: one device worker. */
#include "model/vae.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/status.h"

#include <stdio.h>
#include <string.h>

#define EPS 1e-6f
#define GROUPS 32

/* ===== Configuration ===== */

int vae_config_detect(const struct ckpt *ck, const char *p, struct vae_config *cf, struct err *err) {
    memset(cf, 0, sizeof *cf);
    const struct ckpt_tensor *cin = nn_probe(ck, p, "encoder.conv_in.weight");
    const struct ckpt_tensor *dcin = nn_probe(ck, p, "decoder.conv_in.weight");
    const struct ckpt_tensor *pq = nn_probe(ck, p, "post_quant_conv.weight");
    if (!cin || !dcin || !pq || cin->ndim != 4 || dcin->ndim != 4)
        return err_set(err, STATUS_ERR_FORMAT, "checkpoint %s: no VAE under '%s'", ck->path, p);
    cf->ch = (int)cin->shape[0];
    cf->in_channels = (int)cin->shape[1];
    cf->z_channels = (int)dcin->shape[1];
    cf->embed_dim = (int)pq->shape[1];
    while (cf->n_levels < CONFIG_MAX_LEVELS && nn_probe(ck, p, "encoder.down.%d.block.0.conv1.weight", cf->n_levels)) {
        const struct ckpt_tensor *c1 = nn_probe(ck, p, "encoder.down.%d.block.0.conv1.weight", cf->n_levels);
        cf->ch_mult[cf->n_levels] = (int)(c1->shape[0] / cf->ch);
        cf->n_levels++;
    }
    while (cf->num_res_blocks < VAE_MAX_BLOCKS && nn_probe(ck, p, "encoder.down.0.block.%d.conv1.weight", cf->num_res_blocks))
        cf->num_res_blocks++;
    if (cf->n_levels < 1 || cf->num_res_blocks < 1 || nn_probe(ck, p, "encoder.down.%d.block.0.conv1.weight", CONFIG_MAX_LEVELS))
        return err_set(err, STATUS_ERR_FORMAT, "checkpoint %s: unsupported VAE block structure", ck->path);
    return 0;
}

/* ===== Loading ===== */

static void bind_res(struct nn_loader *ld, struct vae_res *r, int c_in, int c_out, const char *name) {
    r->c_in = c_in;
    r->c_out = c_out;
    nn_bind_norm(ld, &r->norm1, c_in, "%s.norm1", name);
    nn_bind_conv(ld, &r->conv1, c_in, c_out, 3, "%s.conv1", name);
    nn_bind_norm(ld, &r->norm2, c_out, "%s.norm2", name);
    nn_bind_conv(ld, &r->conv2, c_out, c_out, 3, "%s.conv2", name);
    if (c_in != c_out) nn_bind_conv(ld, &r->shortcut, c_in, c_out, 1, "%s.nin_shortcut", name);
}

static void bind_attn(struct nn_loader *ld, struct vae_attn *a, int ch, const char *name) {
    nn_bind_norm(ld, &a->norm, ch, "%s.norm", name);
    nn_bind_conv(ld, &a->q, ch, ch, 1, "%s.q", name);
    nn_bind_conv(ld, &a->k, ch, ch, 1, "%s.k", name);
    nn_bind_conv(ld, &a->v, ch, ch, 1, "%s.v", name);
    nn_bind_conv(ld, &a->proj_out, ch, ch, 1, "%s.proj_out", name);
}

int vae_load(struct vae *m, const struct ckpt *ck, struct backend *be, const struct nn_storage *st,
             struct err *err) {
    memset(m, 0, sizeof *m);
    m->load_id = nn_load_id();
    int rc = vae_config_detect(ck, VAE_PREFIX, &m->config, err);
    if (rc) return rc;
    const struct vae_config *cf = &m->config;
    struct nn_loader ld;
    nn_loader_init(&ld, ck, be, VAE_PREFIX, st, err);
    m->dtype = ld.storage.dtype;
    m->nhwc = ld.storage.channels_last;
    char name[96];

    /* encoder */
    int ch = cf->ch;
    nn_bind_conv(&ld, &m->enc_conv_in, cf->in_channels, ch, 3, "encoder.conv_in");
    for (int l = 0; l < cf->n_levels; l++) {
        int c_out = cf->ch * cf->ch_mult[l];
        for (int r = 0; r < cf->num_res_blocks; r++) {
            snprintf(name, sizeof name, "encoder.down.%d.block.%d", l, r);
            bind_res(&ld, &m->enc[l].blocks[r], ch, c_out, name);
            ch = c_out;
        }
        if (l != cf->n_levels - 1) {
            m->enc[l].has_resample = true;
            nn_bind_conv(&ld, &m->enc[l].resample, ch, ch, 3, "encoder.down.%d.downsample.conv", l);
        }
    }
    bind_res(&ld, &m->enc_mid1, ch, ch, "encoder.mid.block_1");
    bind_attn(&ld, &m->enc_attn, ch, "encoder.mid.attn_1");
    bind_res(&ld, &m->enc_mid2, ch, ch, "encoder.mid.block_2");
    nn_bind_norm(&ld, &m->enc_norm_out, ch, "encoder.norm_out");
    nn_bind_conv(&ld, &m->enc_conv_out, ch, 2 * cf->z_channels, 3, "encoder.conv_out");
    nn_bind_conv(&ld, &m->quant_conv, 2 * cf->z_channels, 2 * cf->embed_dim, 1, "quant_conv");

    /* decoder */
    nn_bind_conv(&ld, &m->post_quant_conv, cf->embed_dim, cf->z_channels, 1, "post_quant_conv");
    ch = cf->ch * cf->ch_mult[cf->n_levels - 1];
    nn_bind_conv(&ld, &m->dec_conv_in, cf->z_channels, ch, 3, "decoder.conv_in");
    bind_res(&ld, &m->dec_mid1, ch, ch, "decoder.mid.block_1");
    bind_attn(&ld, &m->dec_attn, ch, "decoder.mid.attn_1");
    bind_res(&ld, &m->dec_mid2, ch, ch, "decoder.mid.block_2");
    for (int l = cf->n_levels - 1; l >= 0; l--) {
        int c_out = cf->ch * cf->ch_mult[l];
        for (int r = 0; r <= cf->num_res_blocks; r++) {
            snprintf(name, sizeof name, "decoder.up.%d.block.%d", l, r);
            bind_res(&ld, &m->dec[l].blocks[r], ch, c_out, name);
            ch = c_out;
        }
        if (l != 0) {
            m->dec[l].has_resample = true;
            nn_bind_conv(&ld, &m->dec[l].resample, ch, ch, 3, "decoder.up.%d.upsample.conv", l);
        }
    }
    nn_bind_norm(&ld, &m->dec_norm_out, ch, "decoder.norm_out");
    nn_bind_conv(&ld, &m->dec_conv_out, ch, cf->in_channels, 3, "decoder.conv_out");
    rc = nn_loader_finish(&ld, &m->weights);
    if (rc) err_prefix(err, "loading VAE");
    return rc;
}

void vae_deinit(struct vae *m) { nn_weights_deinit(&m->weights); }

/* ===== Blocks ===== */

/* GroupNorm in the forward's layout (vae.nhwc). */
static struct tensor *group_norm(struct tctx *c, bool nhwc, const struct nn_norm *n, struct tensor *x, bool silu) {
    return nhwc ? nn_group_norm_nhwc(c, n, x, GROUPS, EPS, silu) : nn_group_norm(c, n, x, GROUPS, EPS, silu);
}

static struct tensor *res_forward(struct tctx *c, bool nhwc, const struct vae_res *r, struct tensor *x) {
    struct tensor *h = group_norm(c, nhwc, &r->norm1, x, true);
    h = nn_conv(c, &r->conv1, h, 1, 1);
    h = group_norm(c, nhwc, &r->norm2, h, true);
    struct tensor *s = r->shortcut.w.data ? nn_conv(c, &r->shortcut, x, 1, 0) : x; /* before conv2: its add fuses */
    return op_add_fused(c, nn_conv(c, &r->conv2, h, 1, 1), s);
}

static struct tensor *attn_forward(struct tctx *c, bool nhwc, const struct vae_attn *a, struct tensor *x) {
    if (!x) return NULL;
    int64_t B = x->shape[0], H = x->shape[nhwc ? 1 : 2], W = x->shape[nhwc ? 2 : 3], C = x->shape[nhwc ? 3 : 1];
    struct tensor *h = group_norm(c, nhwc, &a->norm, x, false);
    if (nhwc) { /* pixels are tokens already; the 1x1 convs are linears */
        int64_t tok[3] = {B, H * W, C};
        struct tensor *q = op_reshape(c, nn_conv(c, &a->q, h, 1, 0), 3, tok); // [B, HW, C]
        struct tensor *k = op_reshape(c, nn_conv(c, &a->k, h, 1, 0), 3, tok);
        struct tensor *v = op_reshape(c, nn_conv(c, &a->v, h, 1, 0), 3, tok);
        h = op_reshape(c, op_attention(c, q, k, v, 1, false), 4, (int64_t[]){B, H, W, C});
        return op_add_fused(c, nn_conv(c, &a->proj_out, h, 1, 0), x);
    }
    struct tensor *q = nn_nchw_to_tokens(c, nn_conv(c, &a->q, h, 1, 0)); // [B, HW, C]
    struct tensor *k = nn_nchw_to_tokens(c, nn_conv(c, &a->k, h, 1, 0));
    struct tensor *v = nn_nchw_to_tokens(c, nn_conv(c, &a->v, h, 1, 0));
    h = nn_tokens_to_nchw(c, op_attention(c, q, k, v, 1, false), H, W); // [B, C, H, W]
    return op_add_fused(c, nn_conv(c, &a->proj_out, h, 1, 0), x);
}

/* NCHW [B, C, H, W] <-> channels-last [B, H, W, C] at the networks' ends */
static struct tensor *to_nhwc(struct tctx *c, struct tensor *x) {
    if (!x) return NULL;
    int64_t s[4] = {x->shape[0], x->shape[2], x->shape[3], x->shape[1]};
    return op_reshape(c, nn_nchw_to_tokens(c, x), 4, s);
}

static struct tensor *to_nchw(struct tctx *c, struct tensor *x) {
    if (!x) return NULL;
    int64_t s[3] = {x->shape[0], x->shape[1] * x->shape[2], x->shape[3]};
    return nn_tokens_to_nchw(c, op_reshape(c, x, 3, s), x->shape[1], x->shape[2]);
}

/* ===== Decoder / encoder ===== */

/* The decoder up to its last convolution, in the model's layout and dtype: [B, 3, 8h, 8w], or
 * [B, 8h, 8w, 3] when channels-last. */
static struct tensor *decode_body(struct tctx *c, const struct vae *m, struct tensor *z) {
    const struct vae_config *cf = &m->config;
    const bool nhwc = m->nhwc;
    z = op_cast(c, z, m->dtype); /* computed in the weights' dtype */
    if (nhwc) z = to_nhwc(c, z);
    struct tensor *h = nn_conv(c, &m->post_quant_conv, z, 1, 0); // [B, z, h, w]
    h = nn_conv(c, &m->dec_conv_in, h, 1, 1);                     // [B, C, h, w]
    h = res_forward(c, nhwc, &m->dec_mid1, h);
    h = attn_forward(c, nhwc, &m->dec_attn, h);
    h = res_forward(c, nhwc, &m->dec_mid2, h);
    for (int l = cf->n_levels - 1; l >= 0; l--) {
        for (int r = 0; r <= cf->num_res_blocks; r++) h = res_forward(c, nhwc, &m->dec[l].blocks[r], h);
        if (m->dec[l].has_resample && nhwc && h)
            h = nn_conv(c, &m->dec[l].resample, op_upsample_nearest_nhwc_to(c, h, 2 * h->shape[1], 2 * h->shape[2]), 1, 1);
        else if (m->dec[l].has_resample)
            h = nn_conv(c, &m->dec[l].resample, op_upsample_nearest(c, h, 2), 1, 1); // x2
    }
    return nn_conv(c, &m->dec_conv_out, group_norm(c, nhwc, &m->dec_norm_out, h, true), 1, 1);
}

struct tensor *vae_decode_forward(struct tctx *c, const struct vae *m, struct tensor *z) {
    struct tensor *h = decode_body(c, m, z);
    if (m->nhwc) h = to_nchw(c, h);
    return op_cast(c, h, DTYPE_F32); // [B, 3, 8h, 8w]
}

struct tensor *vae_decode_image_forward(struct tctx *c, const struct vae *m, struct tensor *z) {
    struct tensor *h = decode_body(c, m, z);
    if (!m->nhwc) h = to_nhwc(c, h);
    /* clamp((x + 1) / 2, 0, 1) in fp32: x 0.5 + 0.5 rounds the same exact value once; the clamp
       here saves the host a pass over the pixels */
    return op_scale_clamp(c, op_cast(c, h, DTYPE_F32), 0.5f, 0.5f, 0.0f, 1.0f); // [B, 8h, 8w, 3]
}

struct tensor *vae_encode_forward(struct tctx *c, const struct vae *m, struct tensor *x) {
    const struct vae_config *cf = &m->config;
    const bool nhwc = m->nhwc;
    x = op_cast(c, x, m->dtype);
    if (nhwc) x = to_nhwc(c, x);
    struct tensor *h = nn_conv(c, &m->enc_conv_in, x, 1, 1); // [B, ch, H, W]
    for (int l = 0; l < cf->n_levels; l++) {
        for (int r = 0; r < cf->num_res_blocks; r++) h = res_forward(c, nhwc, &m->enc[l].blocks[r], h);
        if (m->enc[l].has_resample) { /* Downsample: pad right and bottom by one, conv stride 2 */
            struct tensor *w = nn_w_as(c, &m->enc[l].resample.w, m->dtype), *b = nn_w_as(c, &m->enc[l].resample.b, m->dtype);
            h = nhwc ? op_conv2d_nhwc_pad(c, h, w, b, 2, 0, 0, 1, 1) : op_conv2d_pad(c, h, w, b, 2, 0, 0, 1, 1);
        }
    }
    h = res_forward(c, nhwc, &m->enc_mid1, h);
    h = attn_forward(c, nhwc, &m->enc_attn, h);
    h = res_forward(c, nhwc, &m->enc_mid2, h);
    h = group_norm(c, nhwc, &m->enc_norm_out, h, true);
    h = nn_conv(c, &m->enc_conv_out, h, 1, 1); // [B, 2z, H/8, W/8]
    /* quant_conv, keeping only the mean half of its output channels */
    int64_t e = cf->embed_dim;
    struct tensor *qw = nn_w_rows(c, &m->quant_conv.w, 0, e), *qb = nn_w_rows(c, &m->quant_conv.b, 0, e);
    if (nhwc && qw) { /* a 1x1 conv over channels-last pixels: a linear */
        h = to_nchw(c, op_linear(c, h, op_reshape(c, qw, 2, (int64_t[]){e, qw->shape[3]}), qb));
    } else {
        h = op_conv2d(c, h, qw, qb, 1, 0);
    }
    return op_cast(c, h, DTYPE_F32); // [B, z, H/8, W/8]
}

static int run_one(struct tctx *c, struct tensor *in, struct tensor *y, const float *src, float *out) {
    int rc = tctx_plan(c, &y, 1);
    if (!rc) rc = tctx_set(c, in, src);
    if (!rc) rc = tctx_run(c);
    if (!rc) rc = tctx_get(c, y, out);
    return rc;
}

/* vae_decode and vae_decode_image: the graph of `build` for z [b, e, h, w], recorded and planned
 * once per (model, size) while c holds it (tctx_memo_*; VAEDecode decodes a batch one image at a
 * time), run on z into out. */
static int decode_run(struct tctx *c, const struct vae *m, uint64_t kind,
                      struct tensor *(*build)(struct tctx *, const struct vae *, struct tensor *), int64_t b,
                      int64_t h, int64_t w, const float *z, float *out) {
    const uint64_t key[TCTX_MEMO_KEY] = {kind, (uint64_t)(uintptr_t)m, m->load_id, (uint64_t)b, (uint64_t)h,
                                         (uint64_t)w, 0, 0};
    struct tensor *io[2]; /* latent in, pixels out */
    if (!tctx_memo_get(c, key, io, 2)) {
        tctx_reset(c);
        io[0] = tensor_input(c, DTYPE_F32, 4, (int64_t[]){b, m->config.embed_dim, h, w});
        io[1] = build(c, m, io[0]);
        int rc = tctx_plan(c, &io[1], 1);
        if (rc) return rc;
        tctx_memo_set(c, key, io, 2);
    }
    double t0 = clock_now();
    int rc = tctx_set(c, io[0], z);
    double t1 = clock_now();
    if (!rc) rc = tctx_run(c);
    double t2 = clock_now();
    if (!rc) rc = tctx_get(c, io[1], out);
    if (log_get_level() == LOG_LEVEL_DEBUG)
        log_debug("vae: input in %.3f ms, graph %.3f ms, output %.3f ms", 1e3 * (t1 - t0), 1e3 * (t2 - t1),
                  1e3 * (clock_now() - t2));
    return rc;
}

int vae_decode(struct tctx *c, const struct vae *m, int64_t b, int64_t h, int64_t w, const float *z, float *out) {
    return decode_run(c, m, 0x76616564 /* "vaed" */, vae_decode_forward, b, h, w, z, out);
}

int vae_decode_image(struct tctx *c, const struct vae *m, int64_t b, int64_t h, int64_t w, const float *z,
                     float *out) {
    return decode_run(c, m, 0x76616569 /* "vaei" */, vae_decode_image_forward, b, h, w, z, out);
}

int vae_encode(struct tctx *c, const struct vae *m, int64_t b, int64_t h, int64_t w, const float *x, float *out) {
    tctx_reset(c);
    if (h % 8 || w % 8) return tctx_fail(c, STATUS_ERR_INVALID, "VAE encode needs a size divisible by 8, got %lldx%lld",
                                         (long long)w, (long long)h), c->rc;
    struct tensor *in = tensor_input(c, DTYPE_F32, 4, (int64_t[]){b, m->config.in_channels, h, w});
    return run_one(c, in, vae_encode_forward(c, m, in), x, out);
}
