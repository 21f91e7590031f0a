/* model/clip.c -- CLIP-L text encoder: config from shapes, weight binding, forward pass.
 * Threads: one device worker. */
#include "model/clip.h"
#include "base/status.h"

#include <string.h>

/* ===== Configuration ===== */

static const char *const CLIP_PREFIXES[] = {
    "cond_stage_model.transformer.text_model.",
    "cond_stage_model.transformer.",
};

const char *clip_prefix(const struct ckpt *ck) {
    for (size_t i = 0; i < sizeof CLIP_PREFIXES / sizeof CLIP_PREFIXES[0]; i++)
        if (nn_probe(ck, CLIP_PREFIXES[i], "embeddings.token_embedding.weight")) return CLIP_PREFIXES[i];
    return NULL;
}

int clip_config_detect(const struct ckpt *ck, const char *prefix, struct clip_config *config, struct err *err) {
    memset(config, 0, sizeof *config);
    const struct ckpt_tensor *tok = nn_probe(ck, prefix, "embeddings.token_embedding.weight");
    const struct ckpt_tensor *pos = nn_probe(ck, prefix, "embeddings.position_embedding.weight");
    const struct ckpt_tensor *fc1 = nn_probe(ck, prefix, "encoder.layers.0.mlp.fc1.weight");
    if (!tok || !pos || !fc1 || tok->ndim != 2 || pos->ndim != 2 || fc1->ndim != 2)
        return err_set(err, STATUS_ERR_FORMAT, "checkpoint %s: no CLIP text model under '%s'", ck->path, prefix);
    config->vocab_size = (int)tok->shape[0];
    config->width = (int)tok->shape[1];
    config->n_positions = (int)pos->shape[0];
    config->ff_dim = (int)fc1->shape[0];
    while (config->n_layers < CLIP_MAX_LAYERS &&
           nn_probe(ck, prefix, "encoder.layers.%d.layer_norm1.weight", config->n_layers))
        config->n_layers++;
    /* every CLIP text model in SD checkpoints uses 64-wide heads */
    config->n_heads = config->width >= 64 ? config->width / 64 : 1;
    if (config->width % config->n_heads || config->n_positions < 77)
        return err_set(err, STATUS_ERR_FORMAT, "checkpoint %s: CLIP width %d / %d positions not supported", ck->path,
                       config->width, config->n_positions);
    return 0;
}

/* ===== Loading ===== */

int clip_load(struct clip *m, const struct ckpt *ck, struct backend *be, const struct nn_storage *st,
              struct err *err) {
    memset(m, 0, sizeof *m);
    const char *prefix = clip_prefix(ck);
    if (!prefix) return err_set(err, STATUS_ERR_FORMAT, "checkpoint %s has no CLIP text encoder", ck->path);
    int rc = clip_config_detect(ck, prefix, &m->config, err);
    if (rc) return rc;
    const struct clip_config *cf = &m->config;
    int64_t W = cf->width, F = cf->ff_dim;
    struct nn_loader ld;
    nn_loader_init(&ld, ck, be, prefix, st, err);
    nn_bind(&ld, &m->token_embedding, true, 2, (int64_t[]){cf->vocab_size, W}, "embeddings.token_embedding.weight");
    nn_bind(&ld, &m->position_embedding, true, 2, (int64_t[]){cf->n_positions, W},
            "embeddings.position_embedding.weight");
    for (int i = 0; i < cf->n_layers; i++) {
        struct clip_layer *l = &m->layers[i];
        nn_bind_norm(&ld, &l->layer_norm1, W, "encoder.layers.%d.layer_norm1", i);
        nn_bind_linear(&ld, &l->q_proj, W, W, true, "encoder.layers.%d.self_attn.q_proj", i);
        nn_bind_linear(&ld, &l->k_proj, W, W, true, "encoder.layers.%d.self_attn.k_proj", i);
        nn_bind_linear(&ld, &l->v_proj, W, W, true, "encoder.layers.%d.self_attn.v_proj", i);
        nn_bind_linear(&ld, &l->out_proj, W, W, true, "encoder.layers.%d.self_attn.out_proj", i);
        nn_bind_norm(&ld, &l->layer_norm2, W, "encoder.layers.%d.layer_norm2", i);
        nn_bind_linear(&ld, &l->fc1, W, F, true, "encoder.layers.%d.mlp.fc1", i);
        nn_bind_linear(&ld, &l->fc2, F, W, true, "encoder.layers.%d.mlp.fc2", i);
    }
    nn_bind_norm(&ld, &m->final_layer_norm, W, "final_layer_norm");
    rc = nn_loader_finish(&ld, &m->weights);
    if (rc) err_prefix(err, "loading CLIP");
    return rc;
}

void clip_deinit(struct clip *m) { nn_weights_deinit(&m->weights); }

/* ===== Forward ===== */

#define CLIP_LN_EPS 1e-5f
#define CLIP_TOKENS 77

struct tensor *clip_forward(struct tctx *c, const struct clip *m, struct tensor *tokens, int layer) {
    const struct clip_config *cf = &m->config;
    if (!tokens) return NULL;
    int n_run = layer < 0 ? cf->n_layers + layer + 1 : layer + 1; /* layers to run */
    if (n_run < 1 || n_run > cf->n_layers)
        return tctx_fail(c, STATUS_ERR_RANGE, "CLIP layer %d out of range (model has %d layers)", layer, cf->n_layers);

    /* embeddings: token + position, in fp32 whatever the weights' storage (ComfyUI computes the
     * text encoder in fp32 from fp16 weights: comfy.ops.manual_cast) */
    struct tensor *pos = op_cast(c, nn_w_rows(c, &m->position_embedding, 0, CLIP_TOKENS), DTYPE_F32); // [77, W]
    struct tensor *emb = op_get_rows(c, nn_w(c, &m->token_embedding), tokens);                        // [B, 77, W]
    struct tensor *x = op_add(c, op_cast(c, emb, DTYPE_F32), pos);

    for (int i = 0; i < n_run; i++) {
        const struct clip_layer *l = &m->layers[i];
        /* CLIPAttention, causal, pre-LN */
        struct tensor *h = nn_layer_norm(c, &l->layer_norm1, x, CLIP_LN_EPS);
        struct tensor *q = nn_linear(c, &l->q_proj, h); // [B, 77, W]
        struct tensor *k = nn_linear(c, &l->k_proj, h);
        struct tensor *v = nn_linear(c, &l->v_proj, h);
        h = op_attention(c, q, k, v, cf->n_heads, true);
        x = op_add(c, x, nn_linear(c, &l->out_proj, h));
        /* CLIPMLP with quick_gelu */
        h = nn_layer_norm(c, &l->layer_norm2, x, CLIP_LN_EPS);
        h = op_quick_gelu(c, nn_linear(c, &l->fc1, h)); // [B, 77, ff]
        x = op_add(c, x, nn_linear(c, &l->fc2, h));     // [B, 77, W]
    }
    return nn_layer_norm(c, &m->final_layer_norm, x, CLIP_LN_EPS);
}

int clip_encode(struct tctx *c, const struct clip *m, const int32_t *tokens, int n_seq, int layer, float *out) {
    tctx_reset(c);
    struct tensor *ids = tensor_input(c, DTYPE_I32, 2, (int64_t[]){n_seq, CLIP_TOKENS});
    struct tensor *y = clip_forward(c, m, ids, layer);
    int rc = tctx_plan(c, &y, 1);
    if (!rc) rc = tctx_set(c, ids, tokens);
    if (!rc) rc = tctx_run(c);
    if (!rc) rc = tctx_get(c, y, out);
    return rc;
}
