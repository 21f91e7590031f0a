/* model/unet.c -- SD UNet: configuration from shapes, weight binding, forward pass.
 * The block walk in unet_load mirrors openaimodel.UNetModel.__init__, so the same code binds
 * SD 1.x, SD 2.x and the tiny test model; the forward pass mirrors UNetModel.forward, with the
 * activations NCHW or, when the weights were stored for it (unet.nhwc), channels-last [B, H, W, C]
 * between the first and the last convolution (the same function; no transposes around the
 * attention blocks, and tensor-core convolutions in their native layout).
 * Threads: one device worker. */
#include "model/unet.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/mem.h"
#include "base/status.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define RES_EPS 1e-5f /* ResBlock GroupNorm */
#define ST_EPS 1e-6f  /* SpatialTransformer GroupNorm */
#define LN_EPS 1e-5f  /* transformer LayerNorms */
#define GROUPS 32

/* ===== Configuration ===== */

int unet_config_detect(const struct ckpt *ck, const char *p, struct unet_config *cf, struct err *err) {
    memset(cf, 0, sizeof *cf);
    const struct ckpt_tensor *conv_in = nn_probe(ck, p, "input_blocks.0.0.weight");
    const struct ckpt_tensor *out = nn_probe(ck, p, "out.2.weight");
    const struct ckpt_tensor *temb = nn_probe(ck, p, "time_embed.0.weight");
    if (!conv_in || !out || !temb || conv_in->ndim != 4 || out->ndim != 4 || temb->ndim != 2)
        return err_set(err, STATUS_ERR_FORMAT, "checkpoint %s: no UNet under '%s'", ck->path, p);
    cf->model_channels = (int)conv_in->shape[0];
    cf->in_channels = (int)conv_in->shape[1];
    cf->out_channels = (int)out->shape[0];
    cf->time_embed_dim = (int)temb->shape[0];
    cf->num_heads = 8;
    cf->d_head = -1;

    /* walk input_blocks: a ResBlock has in_layers, a downsampler has op */
    int level = 0, res_in_level = 0, max_res = 0;
    for (int i = 1; i < 64; i++) {
        const struct ckpt_tensor *res = nn_probe(ck, p, "input_blocks.%d.0.in_layers.2.weight", i);
        const struct ckpt_tensor *down = nn_probe(ck, p, "input_blocks.%d.0.op.weight", i);
        if (res) {
            if (level >= CONFIG_MAX_LEVELS)
                return err_set(err, STATUS_ERR_UNSUPPORTED, "checkpoint %s: UNet has more than %d levels", ck->path,
                               CONFIG_MAX_LEVELS);
            cf->channel_mult[level] = (int)(res->shape[0] / cf->model_channels);
            if (nn_probe(ck, p, "input_blocks.%d.1.proj_in.weight", i)) cf->attn_level[level] = true;
            res_in_level++;
        } else if (down) {
            max_res = res_in_level > max_res ? res_in_level : max_res;
            res_in_level = 0;
            level++;
        } else {
            break;
        }
    }
    max_res = res_in_level > max_res ? res_in_level : max_res;
    cf->n_levels = level + 1;
    cf->num_res_blocks = max_res;
    if (cf->num_res_blocks < 1 || cf->channel_mult[0] < 1)
        return err_set(err, STATUS_ERR_FORMAT, "checkpoint %s: cannot read the UNet's block structure", ck->path);

    /* transformer facts from the middle block */
    const struct ckpt_tensor *pin = nn_probe(ck, p, "middle_block.1.proj_in.weight");
    const struct ckpt_tensor *k2 = nn_probe(ck, p, "middle_block.1.transformer_blocks.0.attn2.to_k.weight");
    if (!pin || !k2) return err_set(err, STATUS_ERR_FORMAT, "checkpoint %s: UNet middle block has no transformer", ck->path);
    cf->linear_proj = pin->ndim == 2;
    cf->context_dim = (int)k2->shape[1];
    while (cf->transformer_depth < UNET_MAX_DEPTH &&
           nn_probe(ck, p, "middle_block.1.transformer_blocks.%d.norm1.weight", cf->transformer_depth))
        cf->transformer_depth++;
    /* SD1 (context 768, and the tiny model) uses 8 heads; SD2 (1024) and SDXL (2048) 64-wide heads */
    if (cf->context_dim == 1024 || cf->context_dim == 2048) {
        cf->num_heads = -1;
        cf->d_head = 64;
    }
    return 0;
}

/* ===== Loading ===== */

static void bind_res(struct nn_loader *ld, struct unet_res *r, int c_in, int c_out, int temb, const char *name) {
    r->c_in = c_in;
    r->c_out = c_out;
    nn_bind_norm(ld, &r->in_norm, c_in, "%s.in_layers.0", name);
    nn_bind_conv(ld, &r->in_conv, c_in, c_out, 3, "%s.in_layers.2", name);
    nn_bind_linear(ld, &r->emb, temb, c_out, true, "%s.emb_layers.1", name);
    nn_bind_norm(ld, &r->out_norm, c_out, "%s.out_layers.0", name);
    nn_bind_conv(ld, &r->out_conv, c_out, c_out, 3, "%s.out_layers.3", name);
    if (c_in != c_out) nn_bind_conv(ld, &r->skip, c_in, c_out, 1, "%s.skip_connection", name);
}

static void bind_st(struct nn_loader *ld, struct unet_st *st, const struct unet_config *cf, int ch, const char *name) {
    st->ch = ch;
    st->depth = cf->transformer_depth;
    st->heads = cf->num_heads > 0 ? cf->num_heads : ch / cf->d_head;
    int64_t C = ch, X = cf->context_dim;
    nn_bind_norm(ld, &st->norm, C, "%s.norm", name);
    if (cf->linear_proj) {
        nn_bind_linear(ld, &st->proj_in_lin, C, C, true, "%s.proj_in", name);
        nn_bind_linear(ld, &st->proj_out_lin, C, C, true, "%s.proj_out", name);
    } else {
        nn_bind_conv(ld, &st->proj_in_conv, C, C, 1, "%s.proj_in", name);
        nn_bind_conv(ld, &st->proj_out_conv, C, C, 1, "%s.proj_out", name);
    }
    for (int d = 0; d < st->depth; d++) {
        struct unet_tblock *b = &st->blocks[d];
        char tb[200];
        snprintf(tb, sizeof tb, "%s.transformer_blocks.%d", name, d);
        nn_bind_norm(ld, &b->norm1, C, "%s.norm1", tb);
        nn_bind_norm(ld, &b->norm2, C, "%s.norm2", tb);
        nn_bind_norm(ld, &b->norm3, C, "%s.norm3", tb);
        nn_bind_linear(ld, &b->attn1_q, C, C, false, "%s.attn1.to_q", tb);
        nn_bind_linear(ld, &b->attn1_k, C, C, false, "%s.attn1.to_k", tb);
        nn_bind_linear(ld, &b->attn1_v, C, C, false, "%s.attn1.to_v", tb);
        nn_bind_linear(ld, &b->attn1_out, C, C, true, "%s.attn1.to_out.0", tb);
        nn_bind_linear(ld, &b->attn2_q, C, C, false, "%s.attn2.to_q", tb);
        nn_bind_linear(ld, &b->attn2_k, X, C, false, "%s.attn2.to_k", tb);
        nn_bind_linear(ld, &b->attn2_v, X, C, false, "%s.attn2.to_v", tb);
        nn_bind_linear(ld, &b->attn2_out, C, C, true, "%s.attn2.to_out.0", tb);
        nn_bind_linear(ld, &b->ff_in, C, 8 * C, true, "%s.ff.net.0.proj", tb);
        nn_bind_linear(ld, &b->ff_out, 4 * C, C, true, "%s.ff.net.2", tb);
    }
}

int unet_load(struct unet *m, const struct ckpt *ck, struct backend *be, const struct nn_storage *st,
              struct err *err) {
    memset(m, 0, sizeof *m);
    m->load_id = nn_load_id();
    int rc = unet_config_detect(ck, UNET_PREFIX, &m->config, err);
    if (rc) return rc;
    const struct unet_config *cf = &m->config;
    int mc = cf->model_channels, T = cf->time_embed_dim;
    struct nn_loader ld;
    nn_loader_init(&ld, ck, be, UNET_PREFIX, st, err);
    m->dtype = ld.storage.dtype;
    m->nhwc = ld.storage.channels_last;
    nn_bind_linear(&ld, &m->time_embed_0, mc, T, true, "time_embed.0");
    nn_bind_linear(&ld, &m->time_embed_2, T, T, true, "time_embed.2");
    nn_bind_conv(&ld, &m->conv_in, cf->in_channels, mc, 3, "input_blocks.0.0");

    /* input blocks; skip[] records the channels each one pushes (input_blocks.0 included) */
    int skip[2 * UNET_MAX_BLOCKS], n_skip = 0, ch = mc, idx = 1;
    skip[n_skip++] = mc;
    char name[64];
    for (int l = 0; l < cf->n_levels; l++) {
        for (int r = 0; r < cf->num_res_blocks; r++) {
            struct unet_block *b = &m->in[m->n_in++];
            int c_out = cf->channel_mult[l] * mc;
            snprintf(name, sizeof name, "input_blocks.%d.0", idx);
            b->has_res = true;
            bind_res(&ld, &b->res, ch, c_out, T, name);
            ch = c_out;
            if (cf->attn_level[l]) {
                b->has_st = true;
                snprintf(name, sizeof name, "input_blocks.%d.1", idx);
                bind_st(&ld, &b->st, cf, ch, name);
            }
            skip[n_skip++] = ch;
            idx++;
        }
        if (l != cf->n_levels - 1) {
            struct unet_block *b = &m->in[m->n_in++];
            b->has_down = true;
            nn_bind_conv(&ld, &b->down, ch, ch, 3, "input_blocks.%d.0.op", idx);
            skip[n_skip++] = ch;
            idx++;
        }
    }
    bind_res(&ld, &m->mid_res1, ch, ch, T, "middle_block.0");
    bind_st(&ld, &m->mid_st, cf, ch, "middle_block.1");
    bind_res(&ld, &m->mid_res2, ch, ch, T, "middle_block.2");

    idx = 0;
    for (int l = cf->n_levels - 1; l >= 0; l--) {
        for (int r = 0; r <= cf->num_res_blocks; r++) {
            struct unet_block *b = &m->out[m->n_out++];
            int c_out = cf->channel_mult[l] * mc;
            int c_skip = skip[--n_skip];
            snprintf(name, sizeof name, "output_blocks.%d.0", idx);
            b->has_res = true;
            bind_res(&ld, &b->res, ch + c_skip, c_out, T, name);
            ch = c_out;
            int sub = 1;
            if (cf->attn_level[l]) {
                b->has_st = true;
                snprintf(name, sizeof name, "output_blocks.%d.1", idx);
                bind_st(&ld, &b->st, cf, ch, name);
                sub = 2;
            }
            if (l != 0 && r == cf->num_res_blocks) {
                b->has_up = true;
                nn_bind_conv(&ld, &b->up, ch, ch, 3, "output_blocks.%d.%d.conv", idx, sub);
            }
            idx++;
        }
    }
    nn_bind_norm(&ld, &m->out_norm, ch, "out.0");
    nn_bind_conv(&ld, &m->out_conv, ch, cf->out_channels, 3, "out.2");
    rc = nn_loader_finish(&ld, &m->weights);
    if (rc) err_prefix(err, "loading UNet");
    return rc;
}

void unet_deinit(struct unet *m) { nn_weights_deinit(&m->weights); }

/* ===== Forward ===== */

void unet_timestep_embedding(float t, int dim, float *out) {
    int half = dim / 2;
    const float neg_log = -9.210340371976184f; /* -ln(10000), as torch makes it from a python float */
    for (int k = 0; k < half; k++) {
        float f = expf(neg_log * (float)k / (float)half);
        float a = t * f;
        out[k] = cosf(a);
        out[half + k] = sinf(a);
    }
    if (dim % 2) out[dim - 1] = 0.0f;
}

/* GroupNorm in the forward's layout (unet.nhwc). */
static struct tensor *group_norm(struct tctx *c, bool nhwc, const struct nn_norm *n, struct tensor *x, float eps,
                                 bool silu) {
    return nhwc ? nn_group_norm_nhwc(c, n, x, GROUPS, eps, silu) : nn_group_norm(c, n, x, GROUPS, eps, silu);
}

/* The sum of two optional [C] biases (either may be absent); NULL when both are. */
static struct tensor *bias_sum(struct tctx *c, struct tensor *a, struct tensor *b) {
    return a && b ? op_add(c, a, b) : a ? a : b;
}

/* ResBlock.forward: h = in_layers(x) + emb_layers(emb); h = out_layers(h); skip(x) + h.
 * Channels-last, in_layers' conv runs without its bias and out_layers' GroupNorm takes
 * conv + (bias + emb_layers(emb)) as one per-image [B, C] add: that sum is never written (the
 * two biases add once per plan: a node of weights alone is hoisted). */
static struct tensor *res_forward(struct tctx *c, bool nhwc, const struct unet_res *r, struct tensor *x,
                                  struct tensor *emb_silu) {
    struct tensor *h = group_norm(c, nhwc, &r->in_norm, x, RES_EPS, true);
    if (nhwc) {
        enum dtype d = h ? h->dtype : DTYPE_F32;
        struct tensor *eb = bias_sum(c, nn_w_as(c, &r->emb.b, d), nn_w_as(c, &r->in_conv.b, d));
        struct tensor *e = op_linear(c, emb_silu, nn_w_as(c, &r->emb.w, d), eb); // [B, c_out]
        h = nn_group_norm_nhwc_add(c, &r->out_norm, nn_conv_unbiased(c, &r->in_conv, h, 1, 1), e, GROUPS, RES_EPS,
                                   true);
    } else {
        struct tensor *e = nn_linear(c, &r->emb, emb_silu); // [B, c_out]
        if (e) e = op_reshape(c, e, 4, (int64_t[]){e->shape[0], e->shape[1], 1, 1}); // [B, c_out, 1, 1]
        h = op_add_fused(c, nn_conv(c, &r->in_conv, h, 1, 1), e);                   // [B, c_out, H, W] + e
        h = group_norm(c, nhwc, &r->out_norm, h, RES_EPS, true);
    }
    struct tensor *s = r->skip.w.data ? nn_conv(c, &r->skip, x, 1, 0) : x; /* before out_conv: its add fuses */
    return op_add_fused(c, nn_conv(c, &r->out_conv, h, 1, 1), s);
}

/* CrossAttention: softmax(q k^T / sqrt(d)) v over heads, then to_out.0 */
static struct tensor *attn_forward(struct tctx *c, const struct nn_linear *wq, const struct nn_linear *wk,
                                   const struct nn_linear *wv, const struct nn_linear *wo, struct tensor *x,
                                   struct tensor *ctx, int heads) {
    struct tensor *q = nn_linear(c, wq, x);   // [B, N, C]
    struct tensor *k = nn_linear(c, wk, ctx); // [B, M, C]
    struct tensor *v = nn_linear(c, wv, ctx); // [B, M, C]
    return nn_linear(c, wo, op_attention(c, q, k, v, heads, false)); /* made last: op_add_fused fuses */
}

/* SpatialTransformer.forward */
static struct tensor *st_forward(struct tctx *c, bool nhwc, const struct unet_st *st, struct tensor *x,
                                 struct tensor *context) {
    if (!x) return NULL;
    int64_t B = x->shape[0], H = x->shape[nhwc ? 1 : 2], W = x->shape[nhwc ? 2 : 3], C = x->shape[nhwc ? 3 : 1];
    struct tensor *h = group_norm(c, nhwc, &st->norm, x, ST_EPS, false);
    if (nhwc) { /* pixels are tokens already: proj_in (1x1 conv or linear) is a linear over C */
        h = st->proj_in_conv.w.data ? nn_conv(c, &st->proj_in_conv, h, 1, 0) : nn_linear(c, &st->proj_in_lin, h);
        h = op_reshape(c, h, 3, (int64_t[]){B, H * W, C}); // [B, HW, C]
    } else if (st->proj_in_conv.w.data) {
        h = nn_nchw_to_tokens(c, nn_conv(c, &st->proj_in_conv, h, 1, 0)); // [B, HW, C]
    } else {
        h = nn_linear(c, &st->proj_in_lin, nn_nchw_to_tokens(c, h));
    }
    for (int d = 0; d < st->depth; d++) {
        const struct unet_tblock *b = &st->blocks[d];
        struct tensor *n = nn_layer_norm(c, &b->norm1, h, LN_EPS);
        h = op_add_fused(c, attn_forward(c, &b->attn1_q, &b->attn1_k, &b->attn1_v, &b->attn1_out, n, n, st->heads), h);
        n = nn_layer_norm(c, &b->norm2, h, LN_EPS);
        h = op_add_fused(c, attn_forward(c, &b->attn2_q, &b->attn2_k, &b->attn2_v, &b->attn2_out, n, context, st->heads),
                         h);
        n = nn_layer_norm(c, &b->norm3, h, LN_EPS);
        n = op_geglu(c, nn_linear(c, &b->ff_in, n)); // [B, HW, 4C]
        h = op_add_fused(c, nn_linear(c, &b->ff_out, n), h);
    }
    if (nhwc) {
        h = op_reshape(c, h, 4, (int64_t[]){B, H, W, C}); // [B, H, W, C]
        h = st->proj_out_conv.w.data ? nn_conv(c, &st->proj_out_conv, h, 1, 0) : nn_linear(c, &st->proj_out_lin, h);
    } else if (st->proj_out_conv.w.data) {
        h = nn_conv(c, &st->proj_out_conv, nn_tokens_to_nchw(c, h, H, W), 1, 0); // [B, C, H, W]
    } else {
        h = nn_tokens_to_nchw(c, nn_linear(c, &st->proj_out_lin, h), H, W);
    }
    return op_add_fused(c, h, x); /* fuses into proj_out where that was made last */
}

/* One TimestepEmbedSequential. An Upsample resizes to `up_to` (the skip tensor it will be
 * concatenated with next, as ComfyUI passes output_shape), so any latent size works. */
static struct tensor *block_forward(struct tctx *c, bool nhwc, const struct unet_block *b, struct tensor *h,
                                    struct tensor *emb_silu, struct tensor *context, const struct tensor *up_to) {
    if (b->has_res) h = res_forward(c, nhwc, &b->res, h, emb_silu);
    if (b->has_st) h = st_forward(c, nhwc, &b->st, h, context);
    if (b->has_down) h = nn_conv(c, &b->down, h, 2, 1);
    if (b->has_up && h && nhwc) {
        int64_t ho = up_to ? up_to->shape[1] : 2 * h->shape[1], wo = up_to ? up_to->shape[2] : 2 * h->shape[2];
        h = nn_conv(c, &b->up, op_upsample_nearest_nhwc_to(c, h, ho, wo), 1, 1);
    } else if (b->has_up && h) {
        h = up_to ? op_upsample_nearest_to(c, h, up_to->shape[2], up_to->shape[3]) : op_upsample_nearest(c, h, 2);
        h = nn_conv(c, &b->up, h, 1, 1);
    }
    return h;
}

struct tensor *unet_forward(struct tctx *c, const struct unet *m, struct tensor *x, struct tensor *t_emb,
                            struct tensor *context) {
    if (!x || !t_emb || !context) return tctx_fail(c, STATUS_ERR_INVALID, "unet_forward: missing input");
    if (m->weights.stream.n_blocks) c->stream = &m->weights.stream; /* blocks kept elsewhere stream in */
    const int64_t B = x->shape[0], C_in = x->shape[1], H = x->shape[2], W = x->shape[3];
    /* computed in the weights' dtype: inputs cast to it (BaseModel._apply_model casts x, the
     * context and, in the UNet, the timestep embedding to the UNet's dtype) */
    x = op_cast(c, x, m->dtype);
    t_emb = op_cast(c, t_emb, m->dtype);
    context = op_cast(c, context, m->dtype);

    /* time embedding MLP; every ResBlock applies SiLU to it first, so do that once */
    struct tensor *emb = nn_linear(c, &m->time_embed_2, op_silu(c, nn_linear(c, &m->time_embed_0, t_emb))); // [B, T]
    struct tensor *emb_silu = op_silu(c, emb);

    struct tensor *hs[2 * UNET_MAX_BLOCKS];
    int n_hs = 0;
    const bool nhwc = m->nhwc;
    if (nhwc) x = op_reshape(c, nn_nchw_to_tokens(c, x), 4, (int64_t[]){B, H, W, C_in}); // [B, H, W, in]
    struct tensor *h = nn_conv(c, &m->conv_in, x, 1, 1); // [B, mc, H, W]
    hs[n_hs++] = h;
    for (int i = 0; i < m->n_in; i++) {
        h = block_forward(c, nhwc, &m->in[i], h, emb_silu, context, NULL);
        hs[n_hs++] = h;
    }
    h = res_forward(c, nhwc, &m->mid_res1, h, emb_silu);
    h = st_forward(c, nhwc, &m->mid_st, h, context);
    h = res_forward(c, nhwc, &m->mid_res2, h, emb_silu);
    for (int i = 0; i < m->n_out; i++) {
        h = op_concat(c, h, hs[--n_hs], nhwc ? 3 : 1); // [B, ch + skip, H, W]
        h = block_forward(c, nhwc, &m->out[i], h, emb_silu, context, n_hs > 0 ? hs[n_hs - 1] : NULL);
    }
    h = nn_conv(c, &m->out_conv, group_norm(c, nhwc, &m->out_norm, h, RES_EPS, true), 1, 1);
    if (nhwc && h) h = nn_tokens_to_nchw(c, op_reshape(c, h, 3, (int64_t[]){B, H * W, h->shape[3]}), H, W);
    return op_cast(c, h, DTYPE_F32); // [B, out, H, W], fp32 as ComfyUI's .float()
}

/* unet_eval and unet_eval_dev: the context from host memory (context) or from the backend's
 * (context_dev). */
static int eval(struct tctx *c, const struct unet *m, int64_t b, int64_t h, int64_t w, const float *x,
                const float *timesteps, const float *context, const void *context_dev, int64_t n_tokens,
                float *out) {
    const struct unet_config *cf = &m->config;
    /* the sampler evaluates one graph every step: record and plan it once (tctx_memo_*) */
    const uint64_t key[TCTX_MEMO_KEY] = {0x756e6574 /* "unet" */, (uint64_t)(uintptr_t)m, m->load_id, (uint64_t)b,
                                         (uint64_t)h, (uint64_t)w, (uint64_t)n_tokens, (uint64_t)(uintptr_t)context_dev};
    struct tensor *io[4]; /* x, timestep embedding, context, output */
    if (!tctx_memo_get(c, key, io, 4)) {
        tctx_reset(c);
        io[0] = tensor_input(c, DTYPE_F32, 4, (int64_t[]){b, cf->in_channels, h, w});
        io[1] = tensor_input(c, DTYPE_F32, 2, (int64_t[]){b, cf->model_channels});
        const int64_t cs[3] = {b, n_tokens, cf->context_dim};
        io[2] = context_dev ? tensor_weight(c, DTYPE_F32, 3, cs, (void *)context_dev)
                            : tensor_input(c, DTYPE_F32, 3, cs);
        io[3] = unet_forward(c, m, io[0], io[1], io[2]);
        /* hoisted: what depends on the context alone (cross-attention keys and values) is made at
           the first step and kept, when the context is on the device for the whole run */
        int rc = context_dev ? tctx_plan_hoisted(c, &io[3], 1) : tctx_plan(c, &io[3], 1);
        if (rc) return rc;
        tctx_memo_set(c, key, io, 4);
    }
    struct tensor *tx = io[0], *tt = io[1], *tc = io[2], *y = io[3];
    int rc;
    float *temb = mem_try_alloc((size_t)(b * cf->model_channels) * sizeof(float));
    if (!temb) return tctx_fail(c, STATUS_ERR_NOMEM, "out of host memory"), c->rc;
    for (int64_t i = 0; i < b; i++) unet_timestep_embedding(timesteps[i], cf->model_channels, temb + i * cf->model_channels);
    double t0 = clock_now();
    rc = tctx_set(c, tx, x);
    if (!rc) rc = tctx_set(c, tt, temb);
    if (!rc && !context_dev) rc = tctx_set(c, tc, context);
    mem_free(temb);
    double t1 = clock_now();
    if (!rc) rc = tctx_run(c);
    double t2 = clock_now();
    if (!rc) rc = tctx_get(c, y, out);
    if (log_get_level() == LOG_LEVEL_DEBUG)
        log_debug("unet: inputs in %.3f ms, graph %.3f ms, output %.3f ms", 1e3 * (t1 - t0), 1e3 * (t2 - t1),
                  1e3 * (clock_now() - t2));
    return rc;
}

int unet_step_dev(struct tctx *c, const struct unet *m, int entries, int64_t b, int64_t h, int64_t w, void *x_dev,
                  float t, const void *context_dev, int64_t n_tokens, const float p[4]) {
    const struct unet_config *cf = &m->config;
    if (!x_dev || !context_dev || entries < 1 || entries > 2)
        return tctx_fail(c, STATUS_ERR_INVALID, "unet_step_dev: no sample or context, or %d entries", entries), c->rc;
    const int64_t B = entries * b;
    const uint64_t key[TCTX_MEMO_KEY] = {0x75737465ULL | (uint64_t)entries << 32 /* "uste" */,
                                         (uint64_t)(uintptr_t)m, m->load_id, (uint64_t)b,
                                         (uint64_t)h << 32 | (uint64_t)w, (uint64_t)n_tokens,
                                         (uint64_t)(uintptr_t)context_dev, (uint64_t)(uintptr_t)x_dev};
    struct tensor *io[3]; /* params, timestep embedding, the step (its data is x_dev) */
    if (!tctx_memo_get(c, key, io, 3)) {
        tctx_reset(c);
        struct tensor *x = tensor_weight(c, DTYPE_F32, 4, (int64_t[]){b, cf->in_channels, h, w}, x_dev);
        io[0] = tensor_input(c, DTYPE_F32, 1, (int64_t[]){4});
        io[1] = tensor_input(c, DTYPE_F32, 2, (int64_t[]){B, cf->model_channels});
        struct tensor *ctx = tensor_weight(c, DTYPE_F32, 3, (int64_t[]){B, n_tokens, cf->context_dim}, (void *)context_dev);
        struct tensor *eps = unet_forward(c, m, op_sample_in(c, x, io[0], entries), io[1], ctx);
        io[2] = op_sample_step(c, x, eps, io[0]);
        int rc = tctx_plan_hoisted(c, &io[2], 1);
        if (rc) return rc;
        tctx_memo_set(c, key, io, 3);
    }
    float *temb = mem_try_alloc((size_t)(B * cf->model_channels) * sizeof(float));
    if (!temb) return tctx_fail(c, STATUS_ERR_NOMEM, "out of host memory"), c->rc;
    unet_timestep_embedding(t, cf->model_channels, temb);
    for (int64_t i = 1; i < B; i++) memcpy(temb + i * cf->model_channels, temb, (size_t)cf->model_channels * sizeof(float));
    double t0 = clock_now();
    int rc = tctx_set(c, io[0], p);
    if (!rc) rc = tctx_set(c, io[1], temb);
    mem_free(temb);
    double t1 = clock_now();
    if (!rc) rc = tctx_run(c);
    if (log_get_level() == LOG_LEVEL_DEBUG)
        log_debug("unet: step inputs in %.3f ms, graph %.3f ms", 1e3 * (t1 - t0), 1e3 * (clock_now() - t1));
    return rc;
}

int unet_eval(struct tctx *c, const struct unet *m, int64_t b, int64_t h, int64_t w, const float *x,
              const float *timesteps, const float *context, int64_t n_tokens, float *out) {
    return eval(c, m, b, h, w, x, timesteps, context, NULL, n_tokens, out);
}

int unet_eval_dev(struct tctx *c, const struct unet *m, int64_t b, int64_t h, int64_t w, const float *x,
                  const float *timesteps, const void *context_dev, int64_t n_tokens, float *out) {
    if (!context_dev) return tctx_fail(c, STATUS_ERR_INVALID, "unet_eval_dev: no context"), c->rc;
    return eval(c, m, b, h, w, x, timesteps, NULL, context_dev, n_tokens, out);
}
