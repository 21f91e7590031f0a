/* model/vae.h -- the KL autoencoder of SD 1.x (first_stage_model.*): encoder and decoder.
 * Owns: struct vae (config + weights on one backend).
 * Threads: load and forward on one device worker.
 * Ownership: vae_load fills caller storage; vae_deinit frees the weights. */
#ifndef KILN_MODEL_VAE_H
#define KILN_MODEL_VAE_H

#include "model/config.h"
#include "model/nn.h"

#define VAE_MAX_BLOCKS 4 /* ResnetBlocks per level (decoder has num_res_blocks + 1) */

/* ResnetBlock (no time embedding): norm1, SiLU, conv1, norm2, SiLU, conv2, nin_shortcut. */
struct vae_res {
    int c_in, c_out;
    struct nn_norm norm1;     /* [c_in] */
    struct nn_conv conv1;     /* [c_out, c_in, 3, 3] */
    struct nn_norm norm2;     /* [c_out] */
    struct nn_conv conv2;     /* [c_out, c_out, 3, 3] */
    struct nn_conv shortcut;  /* nin_shortcut [c_out, c_in, 1, 1]; absent when c_in == c_out */
};

/* AttnBlock: single-head self-attention over all positions with 1x1 conv projections. */
struct vae_attn {
    struct nn_norm norm;
    struct nn_conv q, k, v, proj_out; /* [C, C, 1, 1] */
};

struct vae_level {
    struct vae_res blocks[VAE_MAX_BLOCKS];
    struct nn_conv resample; /* encoder: downsample.conv (stride 2); decoder: upsample.conv */
    bool has_resample;
};

struct vae {
    struct vae_config config;
    /* encoder */
    struct nn_conv enc_conv_in;                  /* [ch, in, 3, 3] */
    struct vae_level enc[CONFIG_MAX_LEVELS];     /* encoder.down.i */
    struct vae_res enc_mid1, enc_mid2;
    struct vae_attn enc_attn;
    struct nn_norm enc_norm_out;
    struct nn_conv enc_conv_out;                 /* [2z, C, 3, 3] */
    struct nn_conv quant_conv;                   /* [2e, 2z, 1, 1] */
    /* decoder */
    struct nn_conv post_quant_conv;              /* [z, e, 1, 1] */
    struct nn_conv dec_conv_in;                  /* [C, z, 3, 3] */
    struct vae_res dec_mid1, dec_mid2;
    struct vae_attn dec_attn;
    struct vae_level dec[CONFIG_MAX_LEVELS];     /* decoder.up.i (applied from the last level to 0) */
    struct nn_norm dec_norm_out;
    struct nn_conv dec_conv_out;                 /* [in, ch, 3, 3] */
    struct nn_weights weights;
    enum dtype dtype;                            /* storage = compute dtype (F32 on the CPU; BF16 on GPUs) */
    bool nhwc;                                   /* channels-last activations inside (nn_storage.channels_last) */
    uint64_t load_id;                            /* nn_load_id() of this load (the decoders' memo key) */
};

#define VAE_PREFIX "first_stage_model."

int vae_config_detect(const struct ckpt *ck, const char *prefix, struct vae_config *config, struct err *err);

/* Loads the weights onto be, stored as st says (NULL: F32, no shared store); forward passes
 * compute in that dtype (input cast to it, output back to F32). */
int vae_load(struct vae *m, const struct ckpt *ck, struct backend *be, const struct nn_storage *st,
             struct err *err);
void vae_deinit(struct vae *m);

/* Records the decoder: z [B, z, h, w] (the latent as the sampler returns it, unscaled)
 * -> [B, 3, 8h, 8w] in about [-1, 1] (before ComfyUI's clamp((x+1)/2)). */
struct tensor *vae_decode_forward(struct tctx *c, const struct vae *m, struct tensor *z);
/* The same decoder, then ComfyUI's image layout, scale and clamp: -> [B, 8h, 8w, 3] =
 * clamp((x + 1) / 2, 0, 1) in fp32 (torch.clamp: NaN stays NaN). On GPUs the channels-last
 * decoder ends in that layout: no transpose. */
struct tensor *vae_decode_image_forward(struct tctx *c, const struct vae *m, struct tensor *z);

/* Records the encoder: x [B, 3, H, W] in [-1, 1] -> the posterior mean [B, e, H/8, W/8]. */
struct tensor *vae_encode_forward(struct tctx *c, const struct vae *m, struct tensor *x);

/* Host conveniences (each resets c, except that the decoders run the graph they planned last time
 * again while c still holds it: tctx_memo_*). decode: z [b, e, h, w] -> out [b, 3, 8h, 8w];
 * decode_image: -> out [b, 8h, 8w, 3] as vae_decode_image_forward; encode: x [b, 3, h, w] ->
 * out [b, e, h/8, w/8]. */
int vae_decode(struct tctx *c, const struct vae *m, int64_t b, int64_t h, int64_t w, const float *z, float *out);
int vae_decode_image(struct tctx *c, const struct vae *m, int64_t b, int64_t h, int64_t w, const float *z,
                     float *out);
int vae_encode(struct tctx *c, const struct vae *m, int64_t b, int64_t h, int64_t w, const float *x, float *out);

#endif
