/* graph/nodes/conditioning.c -- model-free CONDITIONING nodes: ConditioningCombine,
 * ConditioningZeroOut (ComfyUI v0.3.64 nodes.py).
 * Owns: the CONDITIONING lists these nodes build (deep copies of the entries).
 * Must not: encode text (CLIPTextEncode lives with the model nodes).
 * Threads: the executor's worker thread.
 * Ownership: outputs hold one reference each. */
#include "graph/registry.h"

#include "base/mem.h"
#include "base/status.h"

#include <string.h>

static const struct node_output COND_OUT[] = {{.type = "CONDITIONING"}, NODE_OUTPUTS_END};

/* Copies item src into dst; zero = true keeps the shapes but fills zeros. */
static int copy_item(struct cond_item *dst, const struct cond_item *src, bool zero, struct err *err) {
    *dst = *src;
    dst->context = NULL;
    dst->pooled = NULL;
    size_t nc = (size_t)(src->n_tokens * src->dim);
    if (src->context) {
        dst->context = mem_try_calloc(nc ? nc : 1, sizeof(float));
        if (!dst->context) return err_set(err, STATUS_ERR_NOMEM, "out of memory copying conditioning");
        if (!zero) memcpy(dst->context, src->context, nc * sizeof(float));
    }
    if (src->pooled) {
        size_t np = (size_t)src->pooled_dim;
        dst->pooled = mem_try_calloc(np ? np : 1, sizeof(float));
        if (!dst->pooled) return err_set(err, STATUS_ERR_NOMEM, "out of memory copying conditioning");
        if (!zero) memcpy(dst->pooled, src->pooled, np * sizeof(float));
    }
    return 0;
}

/* ===== ConditioningCombine: conditioning_1 + conditioning_2 (list concatenation) ===== */

static int run_combine(struct node_run *ctx, const struct value *in, struct value *out, struct err *err) {
    const struct conditioning *a = value_conditioning(&in[0]), *b = value_conditioning(&in[1]);
    struct conditioning *c = conditioning_new(a->n + b->n);
    int rc = 0;
    for (int i = 0; i < a->n && !rc; i++) rc = copy_item(&c->items[i], &a->items[i], false, err);
    for (int i = 0; i < b->n && !rc; i++) rc = copy_item(&c->items[a->n + i], &b->items[i], false, err);
    if (rc) {
        gobj_unref(&c->obj);
        return rc;
    }
    value_set_object(&out[0], &c->obj);
    return 0;
}

const struct node_class NODE_ConditioningCombine = {
    .name = "ConditioningCombine",
    .display_name = "Conditioning (Combine)",
    .category = "conditioning",
    .required = (const struct node_input[]){{.name = "conditioning_1", .kind = NODE_INPUT_OBJECT, .type = "CONDITIONING"},
                                            {.name = "conditioning_2", .kind = NODE_INPUT_OBJECT, .type = "CONDITIONING"},
                                            NODE_INPUTS_END},
    .outputs = COND_OUT,
    .run = run_combine,
};

/* ===== ConditioningZeroOut: zeros_like for the context and the pooled output ===== */

static int run_zero_out(struct node_run *ctx, const struct value *in, struct value *out, struct err *err) {
    const struct conditioning *a = value_conditioning(&in[0]);
    struct conditioning *c = conditioning_new(a->n);
    int rc = 0;
    for (int i = 0; i < a->n && !rc; i++) rc = copy_item(&c->items[i], &a->items[i], true, err);
    if (rc) {
        gobj_unref(&c->obj);
        return rc;
    }
    value_set_object(&out[0], &c->obj);
    return 0;
}

const struct node_class NODE_ConditioningZeroOut = {
    .name = "ConditioningZeroOut",
    .category = "advanced/conditioning",
    .required = (const struct node_input[]){{.name = "conditioning", .kind = NODE_INPUT_OBJECT, .type = "CONDITIONING"},
                                            NODE_INPUTS_END},
    .outputs = COND_OUT,
    .run = run_zero_out,
};
