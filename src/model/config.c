/* model/config.c -- the two built-in SD 1.x presets declared in config.h.
 * Owns: nothing (fills caller storage). Sizes of SD 1.5 follow CompVis v1-inference.yaml and
 * the CLIP-L config (see ENGINE.md 4.1-4.4); the tiny model keeps the structure with small widths.
 * Threads: any. */
#include "model/config.h"

#include <string.h>

void sd_config_sd15(struct sd_config *config) {
    memset(config, 0, sizeof *config);
    config->clip = (struct clip_config){
        .vocab_size = 49408,
        .n_positions = 77,
        .width = 768,
        .n_layers = 12,
        .n_heads = 12,
        .ff_dim = 3072,
    };
    config->unet = (struct unet_config){
        .in_channels = 4,
        .out_channels = 4,
        .model_channels = 320,
        .n_levels = 4,
        .channel_mult = {1, 2, 4, 4},
        .num_res_blocks = 2,
        .attn_level = {true, true, true, false},
        .transformer_depth = 1,
        .context_dim = 768,
        .num_heads = 8,
        .d_head = -1,
        .time_embed_dim = 4 * 320,
        .linear_proj = false,
    };
    config->vae = (struct vae_config){
        .in_channels = 3,
        .ch = 128,
        .n_levels = 4,
        .ch_mult = {1, 2, 4, 4},
        .num_res_blocks = 2,
        .z_channels = 4,
        .embed_dim = 4,
    };
}

void sd_config_tiny(struct sd_config *config, int vocab_size) {
    memset(config, 0, sizeof *config);
    config->clip = (struct clip_config){
        .vocab_size = vocab_size,
        .n_positions = 77,
        .width = 128,
        .n_layers = 12,
        .n_heads = 2,
        .ff_dim = 512,
    };
    config->unet = (struct unet_config){
        .in_channels = 4,
        .out_channels = 4,
        .model_channels = 32,
        .n_levels = 4,
        .channel_mult = {1, 1, 2, 2},
        .num_res_blocks = 2,
        .attn_level = {true, true, true, false},
        .transformer_depth = 1,
        .context_dim = 128,
        .num_heads = 8,
        .d_head = -1,
        .time_embed_dim = 4 * 32,
        .linear_proj = false,
    };
    config->vae = (struct vae_config){
        .in_channels = 3,
        .ch = 32,
        .n_levels = 4,
        .ch_mult = {1, 1, 2, 2},
        .num_res_blocks = 2,
        .z_channels = 4,
        .embed_dim = 4,
    };
}
