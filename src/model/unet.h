/* model/unet.h -- the SD 1.x/2.x UNet (openaimodel UNetModel, model.diffusion_model.*).
 * Owns: struct unet (config + weights on one backend).
 * Threads: load and forward on one device worker.
 * Ownership: unet_load fills caller storage (large: allocate it); unet_deinit frees weights. */
#ifndef KILN_MODEL_UNET_H
#define KILN_MODEL_UNET_H

#include "model/config.h"
#include "model/nn.h"

#define UNET_MAX_BLOCKS 16 /* input_blocks / output_blocks entries */
#define UNET_MAX_DEPTH 10  /* transformer blocks per SpatialTransformer */

/* ResBlock: in_layers (GroupNorm, SiLU, conv), emb_layers (SiLU, Linear), out_layers, skip. */
struct unet_res {
    int c_in, c_out;
    struct nn_norm in_norm;        /* in_layers.0 [c_in] */
    struct nn_conv in_conv;        /* in_layers.2 [c_out, c_in, 3, 3] */
    struct nn_linear emb;          /* emb_layers.1 [c_out, time_embed_dim] */
    struct nn_norm out_norm;       /* out_layers.0 [c_out] */
    struct nn_conv out_conv;       /* out_layers.3 [c_out, c_out, 3, 3] */
    struct nn_conv skip;           /* skip_connection [c_out, c_in, 1, 1]; absent when c_in == c_out */
};

/* BasicTransformerBlock: self-attention, cross-attention, GEGLU feed-forward. */
struct unet_tblock {
    struct nn_norm norm1, norm2, norm3;            /* [C] */
    struct nn_linear attn1_q, attn1_k, attn1_v;    /* [C, C], no bias */
    struct nn_linear attn1_out;                    /* to_out.0 [C, C] */
    struct nn_linear attn2_q;                      /* [C, C] */
    struct nn_linear attn2_k, attn2_v;             /* [C, context_dim] */
    struct nn_linear attn2_out;
    struct nn_linear ff_in;                        /* ff.net.0.proj [8C, C] */
    struct nn_linear ff_out;                       /* ff.net.2 [C, 4C] */
};

/* SpatialTransformer. */
struct unet_st {
    int ch, heads, depth;
    struct nn_norm norm;                           /* GroupNorm(32, eps 1e-6) [C] */
    struct nn_conv proj_in_conv, proj_out_conv;    /* 1x1 convs (SD1) */
    struct nn_linear proj_in_lin, proj_out_lin;    /* Linear (SD2/SDXL) */
    struct unet_tblock blocks[UNET_MAX_DEPTH];
};

/* One entry of input_blocks / output_blocks: some of res, transformer, down/upsample. */
struct unet_block {
    bool has_res, has_st, has_down, has_up;
    struct unet_res res;
    struct unet_st st;
    struct nn_conv down;                           /* .0.op: conv 3x3 stride 2 */
    struct nn_conv up;                             /* .N.conv after nearest x2 */
};

struct unet {
    struct unet_config config;
    struct nn_linear time_embed_0, time_embed_2;   /* [T, mc], [T, T] */
    struct nn_conv conv_in;                        /* input_blocks.0.0 [mc, in, 3, 3] */
    struct unet_block in[UNET_MAX_BLOCKS];         /* input_blocks.1.. */
    int n_in;
    struct unet_res mid_res1, mid_res2;            /* middle_block.0, .2 */
    struct unet_st mid_st;                         /* middle_block.1 */
    struct unet_block out[UNET_MAX_BLOCKS];        /* output_blocks.0.. */
    int n_out;
    struct nn_norm out_norm;                       /* out.0 */
    struct nn_conv out_conv;                       /* out.2 [out, mc, 3, 3] */
    struct nn_weights weights;
    enum dtype dtype;                              /* storage = compute dtype (F32 on the CPU; F16 on GPUs) */
    bool nhwc;                                     /* activations channels-last [B, H, W, C] inside the
                                                      forward (nn_storage.channels_last; in and out stay NCHW) */
    uint64_t load_id;                              /* nn_load_id() of this load (unet_eval's memo key) */
};

#define UNET_PREFIX "model.diffusion_model."

int unet_config_detect(const struct ckpt *ck, const char *prefix, struct unet_config *config, struct err *err);

/* Loads the weights onto be, stored as st says (NULL: F32, no shared store); forward passes
 * compute in that dtype (inputs are cast to it, the output back to F32). */
int unet_load(struct unet *m, const struct ckpt *ck, struct backend *be, const struct nn_storage *st,
              struct err *err);
void unet_deinit(struct unet *m);

/* ComfyUI's timestep_embedding: [cos(t f_k) | sin(t f_k)], f_k = exp(-ln(10000) k / (dim/2)),
 * in float32. out has dim floats. */
void unet_timestep_embedding(float t, int dim, float *out);

/* Records eps = UNet(x, t, context): x [B, in, H, W], t_emb [B, mc] (timestep embedding),
 * context [B, N, context_dim] -> [B, out, H, W] in F32 (inputs of any float dtype). Any H and W >= 1 (downsampling rounds up and
 * upsampling resizes to the matching skip tensor, as ComfyUI does). */
struct tensor *unet_forward(struct tctx *c, const struct unet *m, struct tensor *x, struct tensor *t_emb,
                            struct tensor *context);

/* Host convenience: one forward of batch b. x [b, in, h, w], timesteps [b], context
 * [b, n_tokens, context_dim] -> out [b, out, h, w]. Resets c before use. */
int unet_eval(struct tctx *c, const struct unet *m, int64_t b, int64_t h, int64_t w, const float *x,
              const float *timesteps, const float *context, int64_t n_tokens, float *out);
/* The same with the context [b, n_tokens, context_dim] (F32) already in the backend's memory at
 * context_dev (a buffer of c's backend, borrowed): a sampler uploads its conditioning once, not
 * every step. */
int unet_eval_dev(struct tctx *c, const struct unet *m, int64_t b, int64_t h, int64_t w, const float *x,
                  const float *timesteps, const void *context_dev, int64_t n_tokens, float *out);
/* One Euler step of a sampler whose sample stays on the device: x_dev [b, in, h, w] (F32, a
 * buffer of c's backend, borrowed) goes through the UNet as `entries` CFG entries of b images
 * each (x / c_in; the context [entries * b, n_tokens, context_dim] at context_dev, entries in the
 * sampler's order: positive first), and is updated in place from their eps (op_sample_step: the
 * CFG mix, then x += ((x - den) / sigma) * dt); p = {c_in, sigma, dt, cfg}, the timestep t for
 * every image. Nothing is copied back. */
int unet_step_dev(struct tctx *c, const struct unet *m, int entries, int64_t b, int64_t h, int64_t w, void *x_dev,
                  float t, const void *context_dev, int64_t n_tokens, const float p[4]);

#endif
