/* model/config.h -- the shape-derived configurations of the SD 1.x networks.
 * Owns: struct clip_config, unet_config, vae_config and the two built-in presets
 * (real SD 1.5 sizes, and the tiny test model). Configs are read from tensor shapes by
 * *_config_detect (clip.h, unet.h, vae.h); the presets only drive `kiln ckpt`.
 * Threads: any (plain data). */
#ifndef KILN_MODEL_CONFIG_H
#define KILN_MODEL_CONFIG_H

#include <stdbool.h>

#define CONFIG_MAX_LEVELS 4

/* CLIP text transformer (HF CLIPTextModel layout, cond_stage_model.transformer.text_model.*). */
struct clip_config {
    int vocab_size;  /* rows of token_embedding (49408 for CLIP-L) */
    int n_positions; /* rows of position_embedding (77) */
    int width;       /* hidden size (768) */
    int n_layers;    /* encoder layers (12) */
    int n_heads;     /* attention heads; width / 64 (12), not readable from shapes */
    int ff_dim;      /* mlp.fc1 rows (3072) */
};

/* UNet (openaimodel UNetModel, model.diffusion_model.*). */
struct unet_config {
    int in_channels;                         /* 4 */
    int out_channels;                        /* 4 */
    int model_channels;                      /* 320 */
    int n_levels;                            /* len(channel_mult): 4 */
    int channel_mult[CONFIG_MAX_LEVELS];     /* 1, 2, 4, 4 */
    int num_res_blocks;                      /* 2 */
    bool attn_level[CONFIG_MAX_LEVELS];      /* SpatialTransformer at this level: 1,1,1,0 */
    int transformer_depth;                   /* transformer blocks per SpatialTransformer: 1 */
    int context_dim;                         /* 768 */
    int num_heads;                           /* 8 for SD1 (fixed heads); -1 when d_head is fixed */
    int d_head;                              /* -1 for SD1; 64 for SD2/SDXL */
    int time_embed_dim;                      /* 4 * model_channels: 1280 */
    bool linear_proj;                        /* proj_in/out are Linear (SD2/SDXL), not 1x1 conv */
};

/* KL autoencoder (first_stage_model.*). */
struct vae_config {
    int in_channels;                         /* 3 */
    int ch;                                  /* 128 */
    int n_levels;                            /* 4 */
    int ch_mult[CONFIG_MAX_LEVELS];          /* 1, 2, 4, 4 */
    int num_res_blocks;                      /* 2 (decoder has num_res_blocks + 1 per level) */
    int z_channels;                          /* 4 (encoder conv_out has 2 * z_channels) */
    int embed_dim;                           /* 4 (quant_conv 2*embed_dim, post_quant_conv embed_dim) */
};

/* All three networks of one checkpoint. */
struct sd_config {
    struct clip_config clip;
    struct unet_config unet;
    struct vae_config vae;
};

/* Real SD 1.5 sizes (must reproduce tests/data/sd15_keys.json exactly). */
void sd_config_sd15(struct sd_config *config);

/* The tiny test model: same names and structure, small widths:
 * CLIP width 128, 2 heads, 12 layers, ff 512, vocab = the tiny tokenizer's size;
 * UNet model_channels 32, channel_mult 1,1,2,2, context 128, 8 heads;
 * VAE ch 32, ch_mult 1,1,2,2. */
void sd_config_tiny(struct sd_config *config, int vocab_size);

#endif
