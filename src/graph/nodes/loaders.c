/* graph/nodes/loaders.c -- CheckpointLoaderSimple, CheckpointLoaderPlaced (kiln: the UNet's
 * blocks placed across GPUs and host memory, issue 7) and CLIPSetLastLayer.
 * Owns: nothing; loaded checkpoints belong to the engine (graph/engine.h).
 * Threads: the worker executing the prompt. */
#include "base/status.h"
#include "graph/engine.h"
#include "graph/registry.h"

#include <limits.h>

/* ===== CheckpointLoaderSimple ===== */

static int list_checkpoints(const struct graph_paths *paths, struct graph_strlist *out, struct err *err) {
    return graph_list_model_files(paths, "checkpoints", out, err);
}

static const struct node_input ckpt_inputs[] = {
    {.name = "ckpt_name", .kind = NODE_INPUT_COMBO, .list_options = list_checkpoints,
     .tooltip = "The name of the checkpoint (model) to load."},
    NODE_INPUTS_END,
};

static const struct node_output ckpt_outputs[] = {
    {.type = "MODEL", .tooltip = "The model used for denoising latents."},
    {.type = "CLIP", .tooltip = "The CLIP model used for encoding text prompts."},
    {.type = "VAE", .tooltip = "The VAE model used for encoding and decoding images to and from latent space."},
    NODE_OUTPUTS_END,
};

/* Both loaders: placement NULL = the server's default (--weights-placement). */
static int load_checkpoint(struct node_run *ctx, const char *name, const char *placement, bool prefetch,
                           struct value *out, struct err *err) {
    struct engine *e = ctx->engine;
    char path[PATH_MAX];
    int rc = graph_model_path(ctx->paths, "checkpoints", name, path, sizeof path, err);
    if (rc) {
        node_set_exception_type(ctx, "FileNotFoundError");
        return rc;
    }
    struct engine_checkpoint *ck = engine_checkpoint_placed(e, path, placement, prefetch, err);
    if (!ck) return err->code ? err->code : STATUS_ERR_INTERNAL;
    out[0] = (struct value){.kind = VALUE_OBJECT, .obj = &model_value_new(ck, "MODEL")->obj};
    out[1] = (struct value){.kind = VALUE_OBJECT, .obj = &clip_value_new(ck, -1)->obj};
    out[2] = (struct value){.kind = VALUE_OBJECT, .obj = &model_value_new(ck, "VAE")->obj};
    gobj_unref(&ck->obj);
    return 0;
}

static int run_checkpoint_loader(struct node_run *ctx, const struct value *in, struct value *out, struct err *err) {
    return load_checkpoint(ctx, in[0].s, NULL, true, out, err);
}

const struct node_class NODE_CheckpointLoaderSimple = {
    .name = "CheckpointLoaderSimple",
    .display_name = "Load Checkpoint",
    .category = "loaders",
    .description = "Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
    .required = ckpt_inputs,
    .outputs = ckpt_outputs,
    .run = run_checkpoint_loader,
};

/* ===== CheckpointLoaderPlaced ===== */

static const struct node_input placed_optional[] = {
    {.name = "weights_placement", .kind = NODE_INPUT_STRING, .flags = NODE_IN_DEFAULT, .string_default = "auto",
     .tooltip = "Where the UNet's blocks live, in order, e.g. cuda:0,8gb;cuda:1,*;cpu,* (sizes, N% of the model, or * "
                "for what fits); blocks away from the running GPU are copied in before use. auto: only when the "
                "model does not fit."},
    {.name = "prefetch", .kind = NODE_INPUT_BOOLEAN, .flags = NODE_IN_DEFAULT, .bool_default = true,
     .tooltip = "Copy the next block while the current one computes."},
    NODE_INPUTS_END,
};

/* Absent inputs: the server's --weights-placement, and prefetching. */
static int run_placed_loader(struct node_run *ctx, const struct value *in, struct value *out, struct err *err) {
    const char *placement = in[1].kind == VALUE_STRING ? in[1].s : NULL;
    bool prefetch = in[2].kind == VALUE_BOOL ? in[2].b : true;
    return load_checkpoint(ctx, in[0].s, placement, prefetch, out, err);
}

const struct node_class NODE_CheckpointLoaderPlaced = {
    .name = "CheckpointLoaderPlaced",
    .display_name = "Load Checkpoint (weights placement)",
    .category = "loaders",
    .description = "Loads a checkpoint whose UNet may be split across GPUs and host memory (kiln).",
    .required = ckpt_inputs,
    .optional = placed_optional,
    .outputs = ckpt_outputs,
    .run = run_placed_loader,
};

/* ===== CLIPSetLastLayer ===== */

static const struct node_input last_layer_inputs[] = {
    {.name = "clip", .kind = NODE_INPUT_OBJECT, .type = "CLIP"},
    {.name = "stop_at_clip_layer", .kind = NODE_INPUT_INT,
     .flags = NODE_IN_DEFAULT | NODE_IN_MIN | NODE_IN_MAX | NODE_IN_STEP,
     .int_default = -1, .int_min = -24, .int_max = -1, .int_step = 1},
    NODE_INPUTS_END,
};

static const struct node_output clip_outputs[] = {{.type = "CLIP"}, NODE_OUTPUTS_END};

static int run_set_last_layer(struct node_run *ctx, const struct value *in, struct value *out, struct err *err) {
    const struct clip_value *clip = (const struct clip_value *)in[0].obj;
    int layer = (int)in[1].i;
    int n_layers = clip->ck->sd->clip.config.n_layers;
    if (-layer > n_layers)
        return err_set(err, STATUS_ERR_RANGE, "stop_at_clip_layer %d: this CLIP model has only %d layers", layer,
                       n_layers);
    out[0] = (struct value){.kind = VALUE_OBJECT, .obj = &clip_value_new(clip->ck, layer)->obj};
    return 0;
}

const struct node_class NODE_CLIPSetLastLayer = {
    .name = "CLIPSetLastLayer",
    .display_name = "CLIP Set Last Layer",
    .category = "conditioning",
    .required = last_layer_inputs,
    .outputs = clip_outputs,
    .run = run_set_last_layer,
};
