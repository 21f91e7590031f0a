/* model/clip.h -- the CLIP-L text encoder of SD 1.x (HF CLIPTextModel layout).
 * Owns: struct clip (config + weights on one backend).
 * Threads: load and encode on one device worker.
 * Ownership: clip_load fills caller storage; clip_deinit frees the weights. */
#ifndef KILN_MODEL_CLIP_H
#define KILN_MODEL_CLIP_H

#include "model/config.h"
#include "model/nn.h"

#define CLIP_MAX_LAYERS 48

/* transformers CLIPEncoderLayer */
struct clip_layer {
    struct nn_norm layer_norm1;   /* [W] */
    struct nn_linear q_proj;      /* [W, W] */
    struct nn_linear k_proj;
    struct nn_linear v_proj;
    struct nn_linear out_proj;
    struct nn_norm layer_norm2;
    struct nn_linear fc1;         /* [ff, W] */
    struct nn_linear fc2;         /* [W, ff] */
};

struct clip {
    struct clip_config config;
    struct nn_weight token_embedding;    /* [vocab, W] */
    struct nn_weight position_embedding; /* [77, W] */
    struct clip_layer layers[CLIP_MAX_LAYERS];
    struct nn_norm final_layer_norm;     /* [W] */
    struct nn_weights weights;           /* owns the memory behind every field */
};

/* The key prefix of the text model in an SD 1.x checkpoint
 * ("cond_stage_model.transformer.text_model." or without "text_model."); NULL if absent. */
const char *clip_prefix(const struct ckpt *ck);

/* Reads the configuration from tensor shapes. */
int clip_config_detect(const struct ckpt *ck, const char *prefix, struct clip_config *config, struct err *err);

/* Loads the weights onto backend be, stored as st says (NULL: F32, no shared store). The forward
 * pass computes in F32 whatever the storage (weights are cast at use, as ComfyUI's manual_cast). */
int clip_load(struct clip *m, const struct ckpt *ck, struct backend *be, const struct nn_storage *st,
              struct err *err);
void clip_deinit(struct clip *m);

/* Records the forward pass: tokens [B, 77] (I32 input) -> hidden states [B, 77, W].
 * layer = -1 is the last layer; -2 the penultimate (CLIPSetLastLayer), and so on; the final
 * LayerNorm is applied to the chosen layer's output, as ComfyUI's SD1 CLIP does. */
struct tensor *clip_forward(struct tctx *c, const struct clip *m, struct tensor *tokens, int layer);

/* Encodes n_seq token sequences of 77 ids each: out [n_seq, 77, W] on the host. Uses c for
 * the graph (reset before and after). */
int clip_encode(struct tctx *c, const struct clip *m, const int32_t *tokens, int n_seq, int layer, float *out);

#endif
