/* graph/nodes/text.c -- CLIPTextEncode: prompt text -> CONDITIONING, as ComfyUI's SD1 path
 * does it (weighted tokens, 77-token chunks, the empty-prompt interpolation of weights).
 * Owns: the CONDITIONING it creates (handed to the executor).
 * Threads: the worker executing the prompt. */
#include "base/mem.h"
#include "base/status.h"
#include "graph/engine.h"
#include "graph/registry.h"
#include "model/tokenizer.h"

#include <string.h>

static const struct node_input encode_inputs[] = {
    {.name = "text", .kind = NODE_INPUT_STRING, .flags = NODE_IN_MULTILINE | NODE_IN_DYNAMIC_PROMPTS,
     .tooltip = "The text to be encoded."},
    {.name = "clip", .kind = NODE_INPUT_OBJECT, .type = "CLIP", .tooltip = "The CLIP model used for encoding the text."},
    NODE_INPUTS_END,
};

static const struct node_output encode_outputs[] = {
    {.type = "CONDITIONING", .tooltip = "A conditioning containing the embedded text used to guide the diffusion model."},
    NODE_OUTPUTS_END,
};

/* Encodes text with clip into a new conditioning (one item of [77 * chunks, width]). */
static int encode_text(struct engine *e, const struct clip_value *cv, const char *text, struct conditioning **out,
                       struct err *err) {
    struct engine_checkpoint *ck = cv->ck;
    if (!ck->tok) return err_set(err, ck->tok_err.code ? ck->tok_err.code : STATUS_ERR_NOT_FOUND, "%s", ck->tok_err.msg);
    struct tokenizer_chunks chunks = {0};
    int rc = tokenizer_encode(ck->tok, text, &chunks, err);
    if (rc) return rc;
    const struct clip *clip = &ck->sd->clip;
    int64_t W = clip->config.width, L = TOKENIZER_CHUNK_LEN;
    bool weighted = tokenizer_chunks_weighted(&chunks);
    int n_seq = chunks.n_chunks + (weighted ? 1 : 0);
    int32_t *ids = mem_alloc((size_t)(n_seq * L) * sizeof(int32_t));
    memcpy(ids, chunks.ids, (size_t)(chunks.n_chunks * L) * sizeof(int32_t));
    if (weighted) { /* ComfyUI's gen_empty_tokens: start, end, then padding */
        int32_t *empty = ids + chunks.n_chunks * L;
        empty[0] = ck->tok->start_id;
        empty[1] = ck->tok->end_id;
        for (int64_t j = 2; j < L; j++) empty[j] = ck->tok->pad_id;
    }
    for (int64_t i = 0; i < n_seq * L; i++) {
        if (ids[i] < 0 || ids[i] >= clip->config.vocab_size) {
            rc = err_set(err, STATUS_ERR_RANGE, "token id %d is outside this CLIP model's vocabulary of %d: the "
                         "tokenizer files do not match the checkpoint", ids[i], clip->config.vocab_size);
            break;
        }
    }
    float *z = rc ? NULL : mem_try_alloc((size_t)(n_seq * L * W) * sizeof(float));
    if (!rc && !z) rc = err_set(err, STATUS_ERR_NOMEM, "out of host memory encoding text");
    if (!rc) {
        rc = clip_encode(&e->tctx, clip, ids, n_seq, cv->layer, z);
        if (rc) err_set(err, rc, "CLIP: %s", e->tctx.err.msg);
    }
    if (!rc && weighted) { /* z = (z - z_empty) * w + z_empty where w != 1 */
        const float *ze = z + chunks.n_chunks * L * W;
        for (int k = 0; k < chunks.n_chunks; k++)
            for (int64_t j = 0; j < L; j++) {
                float w = chunks.weights[k * L + j];
                if (w == 1.0f) continue;
                float *zr = z + (k * L + j) * W;
                for (int64_t d = 0; d < W; d++) zr[d] = (zr[d] - ze[j * W + d]) * w + ze[j * W + d];
            }
    }
    if (!rc) {
        struct conditioning *cond = conditioning_new(1);
        struct cond_item *it = &cond->items[0];
        it->n_tokens = chunks.n_chunks * L;
        it->dim = W;
        it->context = mem_alloc((size_t)(it->n_tokens * W) * sizeof(float));
        memcpy(it->context, z, (size_t)(it->n_tokens * W) * sizeof(float)); /* chunks concatenated on tokens */
        *out = cond;
    }
    mem_free(z);
    mem_free(ids);
    tokenizer_chunks_deinit(&chunks);
    return rc;
}

static int run_encode(struct node_run *ctx, const struct value *in, struct value *out, struct err *err) {
    struct conditioning *cond = NULL;
    int rc = encode_text(ctx->engine, (const struct clip_value *)in[1].obj, in[0].s, &cond, err);
    if (rc) return rc;
    out[0] = (struct value){.kind = VALUE_OBJECT, .obj = &cond->obj};
    return 0;
}

const struct node_class NODE_CLIPTextEncode = {
    .name = "CLIPTextEncode",
    .display_name = "CLIP Text Encode (Prompt)",
    .category = "conditioning",
    .description = "Encodes a text prompt using a CLIP model into an embedding that can be used to guide the "
                   "diffusion model towards generating specific images.",
    .required = encode_inputs,
    .outputs = encode_outputs,
    .run = run_encode,
};
