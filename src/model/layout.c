/* model/layout.c -- derives the key list of an LDM-format SD 1.x checkpoint from a sd_config.
 * Owns: the tensors array of each struct layout it builds.
 * Must not: hard-code any SD 1.5 width: every shape below comes from the config, following the
 * constructors of the PyTorch modules (openaimodel UNetModel, ldm Encoder/Decoder, HF
 * CLIPTextModel). Key order within a module is the order real SD 1.5 files list them
 * (tests/data/sd15_keys.json), which for a SpatialTransformer block is attn1, ff, attn2,
 * norm2, norm1, norm3 -- the order of the original training code's state dict.
 * Threads: any. */
#include "model/layout.h"

#include "base/base.h"
#include "base/mem.h"
#include "base/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ===== Names and lookups ===== */

static const char *const PART_NAMES[] = {
#define XX(name, str) str,
    LAYOUT_PART_MAP(XX)
#undef XX
};

static const char *const SCHEDULE_NAMES[] = {
#define XX(name, str) str,
    LAYOUT_SCHEDULE_MAP(XX)
#undef XX
};

const char *layout_part_name(enum layout_part p) { return (unsigned)p < LAYOUT_PART_COUNT ? PART_NAMES[p] : "?"; }

enum layout_part layout_part_parse(const char *s) {
    for (int i = 0; i < LAYOUT_PART_COUNT; i++)
        if (strcmp(s, PART_NAMES[i]) == 0) return (enum layout_part)i;
    return LAYOUT_PART_COUNT;
}

const char *layout_schedule_name(enum layout_schedule s) {
    return (unsigned)s < LAYOUT_SCHEDULE_COUNT ? SCHEDULE_NAMES[s] : "?";
}

int64_t layout_tensor_numel(const struct layout_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

const struct layout_tensor *layout_find(const struct layout *l, const char *name) {
    for (int i = 0; i < l->n; i++)
        if (strcmp(l->tensors[i].name, name) == 0) return &l->tensors[i];
    return NULL;
}

void layout_deinit(struct layout *l) {
    mem_free(l->tensors);
    memset(l, 0, sizeof *l);
}

/* ===== Builder helpers ===== */

/* Appends one tensor named printf(fmt, ...) with up to 4 dims (0 = unused). */
static void add(struct layout *l, enum layout_part part, enum layout_role role, enum dtype dt, int64_t d0,
                int64_t d1, int64_t d2, int64_t d3, const char *fmt, ...) __attribute__((format(printf, 9, 10)));
static void add(struct layout *l, enum layout_part part, enum layout_role role, enum dtype dt, int64_t d0,
                int64_t d1, int64_t d2, int64_t d3, const char *fmt, ...) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 1024;
        l->tensors = mem_realloc(l->tensors, (size_t)l->cap * sizeof *l->tensors);
    }
    struct layout_tensor *t = &l->tensors[l->n++];
    memset(t, 0, sizeof *t);
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    ASSERT(len > 0 && len < LAYOUT_NAME_MAX);
    t->dtype = dt;
    int64_t dims[LAYOUT_MAX_DIMS] = {d0, d1, d2, d3};
    while (t->ndim < LAYOUT_MAX_DIMS && dims[t->ndim] > 0) {
        t->shape[t->ndim] = dims[t->ndim];
        t->ndim++;
    }
    ASSERT(t->ndim >= 1);
    t->part = part;
    t->role = role;
    t->schedule = LAYOUT_SCHEDULE_COUNT;
}

#define W LAYOUT_WEIGHT_DTYPE

/* Linear `m`: weight [out, in] (+ bias [out]). */
static void linear(struct layout *l, enum layout_part p, const char *m, int64_t out, int64_t in, bool bias,
                   enum layout_role wrole) {
    add(l, p, wrole, W, out, in, 0, 0, "%s.weight", m);
    if (bias) add(l, p, LAYOUT_ROLE_BIAS, W, out, 0, 0, 0, "%s.bias", m);
}

/* Conv2d `m`: weight [out, in, k, k] + bias [out]. */
static void conv(struct layout *l, enum layout_part p, const char *m, int64_t out, int64_t in, int64_t k,
                 enum layout_role wrole) {
    add(l, p, wrole, W, out, in, k, k, "%s.weight", m);
    add(l, p, LAYOUT_ROLE_BIAS, W, out, 0, 0, 0, "%s.bias", m);
}

/* GroupNorm / LayerNorm `m` over c channels: weight [c], bias [c]. */
static void norm(struct layout *l, enum layout_part p, const char *m, int64_t c) {
    add(l, p, LAYOUT_ROLE_NORM_WEIGHT, W, c, 0, 0, 0, "%s.weight", m);
    add(l, p, LAYOUT_ROLE_NORM_BIAS, W, c, 0, 0, 0, "%s.bias", m);
}

/* m = base + "." + sub (printf). */
static void sub(char *m, const char *base, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void sub(char *m, const char *base, const char *fmt, ...) {
    char tail[LAYOUT_NAME_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tail, sizeof tail, fmt, ap);
    va_end(ap);
    int len = snprintf(m, LAYOUT_NAME_MAX, "%s.%s", base, tail);
    ASSERT(len > 0 && len < LAYOUT_NAME_MAX);
}

/* ===== UNet (model.diffusion_model.*) ===== */

#define UNET "model.diffusion_model."
#define U LAYOUT_PART_UNET

/* openaimodel ResBlock: GroupNorm, SiLU, conv 3x3 (cin -> cout); emb Linear (temb -> cout);
 * GroupNorm, SiLU, dropout, conv 3x3; 1x1 skip conv when cin != cout. */
static void unet_res_block(struct layout *l, const char *b, int64_t cin, int64_t cout, int64_t temb) {
    char m[LAYOUT_NAME_MAX];
    sub(m, b, "in_layers.0"), norm(l, U, m, cin);
    sub(m, b, "in_layers.2"), conv(l, U, m, cout, cin, 3, LAYOUT_ROLE_WEIGHT);
    sub(m, b, "emb_layers.1"), linear(l, U, m, cout, temb, true, LAYOUT_ROLE_WEIGHT);
    sub(m, b, "out_layers.0"), norm(l, U, m, cout);
    sub(m, b, "out_layers.3"), conv(l, U, m, cout, cout, 3, LAYOUT_ROLE_WEIGHT_OUT);
    if (cin != cout) sub(m, b, "skip_connection"), conv(l, U, m, cout, cin, 1, LAYOUT_ROLE_WEIGHT);
}

/* attention.py SpatialTransformer over ch channels; inner = heads * d_head. */
static void unet_spatial_transformer(struct layout *l, const struct unet_config *c, const char *b, int64_t ch) {
    int64_t heads = c->num_heads > 0 ? c->num_heads : ch / c->d_head;
    int64_t dh = c->num_heads > 0 ? ch / c->num_heads : c->d_head;
    int64_t inner = heads * dh, ctx = c->context_dim;
    char m[LAYOUT_NAME_MAX];
    sub(m, b, "norm"), norm(l, U, m, ch);
    sub(m, b, "proj_in");
    if (c->linear_proj) linear(l, U, m, inner, ch, true, LAYOUT_ROLE_WEIGHT);
    else conv(l, U, m, inner, ch, 1, LAYOUT_ROLE_WEIGHT);
    for (int d = 0; d < c->transformer_depth; d++) {
        char tb[LAYOUT_NAME_MAX];
        sub(tb, b, "transformer_blocks.%d", d);
        /* attn1: self-attention, q/k/v without bias */
        sub(m, tb, "attn1.to_q"), linear(l, U, m, inner, inner, false, LAYOUT_ROLE_WEIGHT);
        sub(m, tb, "attn1.to_k"), linear(l, U, m, inner, inner, false, LAYOUT_ROLE_WEIGHT);
        sub(m, tb, "attn1.to_v"), linear(l, U, m, inner, inner, false, LAYOUT_ROLE_WEIGHT);
        sub(m, tb, "attn1.to_out.0"), linear(l, U, m, inner, inner, true, LAYOUT_ROLE_WEIGHT_OUT);
        /* ff: GEGLU projection to 2 * 4 * inner, then back */
        sub(m, tb, "ff.net.0.proj"), linear(l, U, m, 8 * inner, inner, true, LAYOUT_ROLE_WEIGHT);
        sub(m, tb, "ff.net.2"), linear(l, U, m, inner, 4 * inner, true, LAYOUT_ROLE_WEIGHT_OUT);
        /* attn2: cross-attention, k/v from the context */
        sub(m, tb, "attn2.to_q"), linear(l, U, m, inner, inner, false, LAYOUT_ROLE_WEIGHT);
        sub(m, tb, "attn2.to_k"), linear(l, U, m, inner, ctx, false, LAYOUT_ROLE_WEIGHT);
        sub(m, tb, "attn2.to_v"), linear(l, U, m, inner, ctx, false, LAYOUT_ROLE_WEIGHT);
        sub(m, tb, "attn2.to_out.0"), linear(l, U, m, inner, inner, true, LAYOUT_ROLE_WEIGHT_OUT);
        sub(m, tb, "norm2"), norm(l, U, m, inner);
        sub(m, tb, "norm1"), norm(l, U, m, inner);
        sub(m, tb, "norm3"), norm(l, U, m, inner);
    }
    sub(m, b, "proj_out");
    if (c->linear_proj) linear(l, U, m, ch, inner, true, LAYOUT_ROLE_WEIGHT_OUT);
    else conv(l, U, m, ch, inner, 1, LAYOUT_ROLE_WEIGHT_OUT);
}

static void unet_build(struct layout *l, const struct unet_config *c) {
    int64_t mc = c->model_channels, temb = c->time_embed_dim;
    char b[LAYOUT_NAME_MAX], m[LAYOUT_NAME_MAX];

    linear(l, U, UNET "time_embed.0", temb, mc, true, LAYOUT_ROLE_WEIGHT);
    linear(l, U, UNET "time_embed.2", temb, temb, true, LAYOUT_ROLE_WEIGHT);

    /* Encoder half: every block pushes its output width on the skip stack. */
    int64_t skips[1 + CONFIG_MAX_LEVELS * 17];
    int sp = 0, idx = 0;
    conv(l, U, UNET "input_blocks.0.0", mc, c->in_channels, 3, LAYOUT_ROLE_WEIGHT);
    skips[sp++] = mc;
    idx++;
    int64_t ch = mc;
    for (int lv = 0; lv < c->n_levels; lv++) {
        for (int r = 0; r < c->num_res_blocks; r++, idx++) {
            int64_t out = (int64_t)c->channel_mult[lv] * mc;
            snprintf(b, sizeof b, UNET "input_blocks.%d", idx);
            sub(m, b, "0"), unet_res_block(l, m, ch, out, temb);
            ch = out;
            if (c->attn_level[lv]) sub(m, b, "1"), unet_spatial_transformer(l, c, m, ch);
            skips[sp++] = ch;
        }
        if (lv != c->n_levels - 1) { /* Downsample: conv 3x3 stride 2 */
            snprintf(b, sizeof b, UNET "input_blocks.%d.0.op", idx++);
            conv(l, U, b, ch, ch, 3, LAYOUT_ROLE_WEIGHT);
            skips[sp++] = ch;
        }
    }

    /* Middle: ResBlock, SpatialTransformer, ResBlock at the deepest width. */
    unet_res_block(l, UNET "middle_block.0", ch, ch, temb);
    unet_spatial_transformer(l, c, UNET "middle_block.1", ch);
    unet_res_block(l, UNET "middle_block.2", ch, ch, temb);

    /* Decoder half: each ResBlock takes the concat of the stream and one popped skip. */
    idx = 0;
    for (int lv = c->n_levels - 1; lv >= 0; lv--) {
        for (int r = 0; r <= c->num_res_blocks; r++, idx++) {
            ASSERT(sp > 0);
            int64_t in = ch + skips[--sp], out = (int64_t)c->channel_mult[lv] * mc;
            snprintf(b, sizeof b, UNET "output_blocks.%d", idx);
            sub(m, b, "0"), unet_res_block(l, m, in, out, temb);
            ch = out;
            int k = 1;
            if (c->attn_level[lv]) sub(m, b, "%d", k++), unet_spatial_transformer(l, c, m, ch);
            if (lv > 0 && r == c->num_res_blocks) /* Upsample: nearest x2 + conv 3x3 */
                sub(m, b, "%d.conv", k), conv(l, U, m, ch, ch, 3, LAYOUT_ROLE_WEIGHT);
        }
    }
    ASSERT(sp == 0);

    norm(l, U, UNET "out.0", ch);
    conv(l, U, UNET "out.2", c->out_channels, ch, 3, LAYOUT_ROLE_WEIGHT);
}

/* ===== CLIP text model (cond_stage_model.transformer.text_model.*) ===== */

#define CLIP "cond_stage_model.transformer.text_model."
#define C LAYOUT_PART_CLIP

static void clip_build(struct layout *l, const struct clip_config *c) {
    int64_t w = c->width;
    add(l, C, LAYOUT_ROLE_EMBEDDING, W, c->vocab_size, w, 0, 0, CLIP "embeddings.token_embedding.weight");
    add(l, C, LAYOUT_ROLE_EMBEDDING, W, c->n_positions, w, 0, 0, CLIP "embeddings.position_embedding.weight");
    char b[LAYOUT_NAME_MAX], m[LAYOUT_NAME_MAX];
    for (int i = 0; i < c->n_layers; i++) { /* pre-LN block: attention, then MLP */
        snprintf(b, sizeof b, CLIP "encoder.layers.%d", i);
        sub(m, b, "layer_norm1"), norm(l, C, m, w);
        sub(m, b, "self_attn.q_proj"), linear(l, C, m, w, w, true, LAYOUT_ROLE_WEIGHT);
        sub(m, b, "self_attn.k_proj"), linear(l, C, m, w, w, true, LAYOUT_ROLE_WEIGHT);
        sub(m, b, "self_attn.v_proj"), linear(l, C, m, w, w, true, LAYOUT_ROLE_WEIGHT);
        sub(m, b, "self_attn.out_proj"), linear(l, C, m, w, w, true, LAYOUT_ROLE_WEIGHT_OUT);
        sub(m, b, "layer_norm2"), norm(l, C, m, w);
        sub(m, b, "mlp.fc1"), linear(l, C, m, c->ff_dim, w, true, LAYOUT_ROLE_WEIGHT);
        sub(m, b, "mlp.fc2"), linear(l, C, m, w, c->ff_dim, true, LAYOUT_ROLE_WEIGHT_OUT);
    }
    norm(l, C, CLIP "final_layer_norm", w);
}

/* ===== VAE (first_stage_model.*) ===== */

#define VAE "first_stage_model."
#define V LAYOUT_PART_VAE

/* ldm ResnetBlock: norm1, conv1 (cin -> cout), norm2, conv2; nin_shortcut 1x1 if cin != cout. */
static void vae_resnet(struct layout *l, const char *b, int64_t cin, int64_t cout) {
    char m[LAYOUT_NAME_MAX];
    sub(m, b, "norm1"), norm(l, V, m, cin);
    sub(m, b, "conv1"), conv(l, V, m, cout, cin, 3, LAYOUT_ROLE_WEIGHT);
    sub(m, b, "norm2"), norm(l, V, m, cout);
    sub(m, b, "conv2"), conv(l, V, m, cout, cout, 3, LAYOUT_ROLE_WEIGHT_OUT);
    if (cin != cout) sub(m, b, "nin_shortcut"), conv(l, V, m, cout, cin, 1, LAYOUT_ROLE_WEIGHT);
}

/* ldm AttnBlock: single-head self-attention with 1x1 conv projections. */
static void vae_attn(struct layout *l, const char *b, int64_t c) {
    char m[LAYOUT_NAME_MAX];
    sub(m, b, "norm"), norm(l, V, m, c);
    sub(m, b, "q"), conv(l, V, m, c, c, 1, LAYOUT_ROLE_WEIGHT);
    sub(m, b, "k"), conv(l, V, m, c, c, 1, LAYOUT_ROLE_WEIGHT);
    sub(m, b, "v"), conv(l, V, m, c, c, 1, LAYOUT_ROLE_WEIGHT);
    sub(m, b, "proj_out"), conv(l, V, m, c, c, 1, LAYOUT_ROLE_WEIGHT_OUT);
}

static void vae_mid(struct layout *l, const char *b, int64_t c) {
    char m[LAYOUT_NAME_MAX];
    sub(m, b, "block_1"), vae_resnet(l, m, c, c);
    sub(m, b, "attn_1"), vae_attn(l, m, c);
    sub(m, b, "block_2"), vae_resnet(l, m, c, c);
}

static void vae_build(struct layout *l, const struct vae_config *c) {
    int last = c->n_levels - 1;
    int64_t ch = c->ch, z = c->z_channels, e = c->embed_dim;
    char b[LAYOUT_NAME_MAX];

    /* Encoder: conv_in, levels of num_res_blocks ResnetBlocks (+ downsample but the last). */
    conv(l, V, VAE "encoder.conv_in", ch, c->in_channels, 3, LAYOUT_ROLE_WEIGHT);
    int64_t bin = ch;
    for (int i = 0; i < c->n_levels; i++) {
        int64_t bout = ch * c->ch_mult[i];
        for (int r = 0; r < c->num_res_blocks; r++) {
            snprintf(b, sizeof b, VAE "encoder.down.%d.block.%d", i, r);
            vae_resnet(l, b, bin, bout);
            bin = bout;
        }
        if (i != last) {
            snprintf(b, sizeof b, VAE "encoder.down.%d.downsample.conv", i);
            conv(l, V, b, bin, bin, 3, LAYOUT_ROLE_WEIGHT);
        }
    }
    vae_mid(l, VAE "encoder.mid", bin);
    norm(l, V, VAE "encoder.norm_out", bin);
    conv(l, V, VAE "encoder.conv_out", 2 * z, bin, 3, LAYOUT_ROLE_WEIGHT); /* mean and log-variance */

    /* Decoder: runs levels last..0, but the state dict lists up.0 first; level i starts from
     * the width of level i+1 (the deepest level from its own width). */
    int64_t top = ch * c->ch_mult[last];
    conv(l, V, VAE "decoder.conv_in", top, z, 3, LAYOUT_ROLE_WEIGHT);
    vae_mid(l, VAE "decoder.mid", top);
    for (int i = 0; i < c->n_levels; i++) {
        int64_t in = i == last ? top : ch * c->ch_mult[i + 1], out = ch * c->ch_mult[i];
        for (int r = 0; r <= c->num_res_blocks; r++) {
            snprintf(b, sizeof b, VAE "decoder.up.%d.block.%d", i, r);
            vae_resnet(l, b, in, out);
            in = out;
        }
        if (i != 0) {
            snprintf(b, sizeof b, VAE "decoder.up.%d.upsample.conv", i);
            conv(l, V, b, out, out, 3, LAYOUT_ROLE_WEIGHT);
        }
    }
    norm(l, V, VAE "decoder.norm_out", ch * c->ch_mult[0]);
    conv(l, V, VAE "decoder.conv_out", c->in_channels, ch * c->ch_mult[0], 3, LAYOUT_ROLE_WEIGHT);

    conv(l, V, VAE "quant_conv", 2 * e, 2 * z, 1, LAYOUT_ROLE_WEIGHT);
    conv(l, V, VAE "post_quant_conv", z, e, 1, LAYOUT_ROLE_WEIGHT);
}

/* ===== Buffers ===== */

static void buffers_build(struct layout *l, const struct clip_config *c) {
    add(l, LAYOUT_PART_CLIP_BUFFER, LAYOUT_ROLE_POSITION_IDS, DTYPE_I64, 1, c->n_positions, 0, 0,
        CLIP "embeddings.position_ids");
    for (int s = 0; s < LAYOUT_SCHEDULE_COUNT; s++) {
        add(l, LAYOUT_PART_DDPM_BUFFER, LAYOUT_ROLE_SCHEDULE, DTYPE_F32, LAYOUT_SCHEDULE_STEPS, 0, 0, 0, "%s",
            SCHEDULE_NAMES[s]);
        l->tensors[l->n - 1].schedule = (enum layout_schedule)s;
    }
}

/* ===== Config checks and entry point ===== */

#define CHECK(cond, ...)                                                          \
    do {                                                                          \
        if (!(cond)) return err_set(err, STATUS_ERR_INVALID, __VA_ARGS__);        \
    } while (0)

static int check_config(const struct sd_config *config, struct err *err) {
    const struct clip_config *k = &config->clip;
    CHECK(k->vocab_size > 0 && k->n_positions > 0 && k->width > 0 && k->n_layers > 0 && k->ff_dim > 0,
          "layout: CLIP sizes must be positive (vocab %d, positions %d, width %d, layers %d, ff %d)", k->vocab_size,
          k->n_positions, k->width, k->n_layers, k->ff_dim);
    CHECK(k->n_heads > 0 && k->width % k->n_heads == 0, "layout: CLIP width %d is not a multiple of %d heads",
          k->width, k->n_heads);

    const struct unet_config *u = &config->unet;
    CHECK(u->n_levels >= 1 && u->n_levels <= CONFIG_MAX_LEVELS, "layout: UNet n_levels %d out of 1..%d",
          u->n_levels, CONFIG_MAX_LEVELS);
    CHECK(u->num_res_blocks >= 1 && u->num_res_blocks <= 16, "layout: UNet num_res_blocks %d out of 1..16",
          u->num_res_blocks);
    CHECK(u->in_channels > 0 && u->out_channels > 0 && u->model_channels > 0 && u->context_dim > 0 &&
              u->time_embed_dim > 0 && u->transformer_depth >= 1,
          "layout: UNet sizes must be positive");
    CHECK((u->num_heads > 0) != (u->d_head > 0), "layout: UNet needs exactly one of num_heads (%d), d_head (%d)",
          u->num_heads, u->d_head);
    for (int i = 0; i < u->n_levels; i++) {
        int ch = u->channel_mult[i] * u->model_channels;
        CHECK(u->channel_mult[i] > 0, "layout: UNet channel_mult[%d] = %d", i, u->channel_mult[i]);
        bool attn = u->attn_level[i] || i == u->n_levels - 1; /* the middle block always attends */
        int div = u->num_heads > 0 ? u->num_heads : u->d_head;
        CHECK(!attn || ch % div == 0, "layout: UNet width %d at level %d is not a multiple of %d", ch, i, div);
    }

    const struct vae_config *v = &config->vae;
    CHECK(v->n_levels >= 1 && v->n_levels <= CONFIG_MAX_LEVELS, "layout: VAE n_levels %d out of 1..%d", v->n_levels,
          CONFIG_MAX_LEVELS);
    CHECK(v->in_channels > 0 && v->ch > 0 && v->num_res_blocks >= 1 && v->z_channels > 0 && v->embed_dim > 0,
          "layout: VAE sizes must be positive");
    for (int i = 0; i < v->n_levels; i++)
        CHECK(v->ch_mult[i] > 0, "layout: VAE ch_mult[%d] = %d", i, v->ch_mult[i]);
    return 0;
}

int layout_build(struct layout *l, const struct sd_config *config, struct err *err) {
    memset(l, 0, sizeof *l);
    int rc = check_config(config, err);
    if (rc) return rc;
    unet_build(l, &config->unet);
    clip_build(l, &config->clip);
    vae_build(l, &config->vae);
    buffers_build(l, &config->clip);
    return 0;
}
