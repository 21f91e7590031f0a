/* graph/value.h -- the values that flow between nodes of a workflow.
 * Owns: struct value and the reference-counted object types a node can output
 * (LATENT, IMAGE, MASK, CONDITIONING; MODEL/CLIP/VAE handles come from graph/nodes).
 * Threads: values belong to the executor of one prompt; objects may be kept by an output
 * cache across prompts, hence reference counts (not atomic: one worker thread uses them).
 * Ownership: value_deinit drops one reference of an object value; gobj_ref adds one. */
#ifndef KILN_GRAPH_VALUE_H
#define KILN_GRAPH_VALUE_H

#include <stdbool.h>
#include <stdint.h>

/* ===== Reference-counted objects ===== */

struct gobj {
    int refs;                            /* owners; freed when it drops to 0 */
    const char *type;                    /* wire type name: "LATENT", "IMAGE", ... */
    void (*free)(struct gobj *o);        /* frees the object that embeds this header */
};

struct gobj *gobj_ref(struct gobj *o);   /* returns o; NULL-safe */
void gobj_unref(struct gobj *o);         /* NULL-safe */

/* LATENT: {"samples": [B, C, H, W] float32 (unscaled, as ComfyUI stores it), "batch_index"}. */
struct latent {
    struct gobj obj;
    int64_t b, c, h, w;                  /* shape of samples */
    float *samples;                      /* b*c*h*w floats, owned (mem_alloc) */
    int *batch_index;                    /* NULL, or b indices (LatentFromBatch/RepeatLatentBatch) */
    float *noise_mask;                   /* NULL, or [b or 1, 1, H*8?]: unused for now */
};

struct png_async;

/* IMAGE: [B, H, W, C] float32 in [0, 1], C = 3 (ComfyUI's channels-last layout). */
struct image {
    struct gobj obj;
    int64_t b, h, w, c;
    float *data;                         /* owned */
    struct png_async *png_ahead;         /* NULL, or its PNGs being encoded while it was made
                                            (graph/nodes/save.c; owned, freed before data) */
};

/* MASK: [B, H, W] float32 in [0, 1]. */
struct mask {
    struct gobj obj;
    int64_t b, h, w;
    float *data;                         /* owned */
};

/* One entry of a CONDITIONING list: cross-attention context plus options. */
struct cond_item {
    int64_t n_tokens;                    /* 77 * chunks */
    int64_t dim;                         /* 768 for SD1 */
    float *context;                      /* [n_tokens, dim], owned */
    float *pooled;                       /* [pooled_dim] or NULL, owned */
    int64_t pooled_dim;
};

/* CONDITIONING: a list of entries (ConditioningCombine concatenates lists). */
struct conditioning {
    struct gobj obj;
    int n;
    struct cond_item *items;             /* n entries, owned */
};

/* The *_new constructors return NULL when the buffer cannot be allocated (host OOM). */
struct latent *latent_new(int64_t b, int64_t c, int64_t h, int64_t w); /* zeroed samples, refs 1 */
struct image *image_new(int64_t b, int64_t h, int64_t w, int64_t c);   /* zeroed, refs 1 */
struct mask *mask_new(int64_t b, int64_t h, int64_t w);                /* zeroed, refs 1 */
struct conditioning *conditioning_new(int n);                           /* n zeroed items, refs 1 */

/* ===== Values ===== */

enum value_kind {
    VALUE_NONE,
    VALUE_INT,
    VALUE_FLOAT,
    VALUE_STRING,
    VALUE_BOOL,
    VALUE_OBJECT,                        /* obj->type tells which */
};

struct value {
    enum value_kind kind;
    union {
        int64_t i;                       /* INT (seeds up to 2^64-1 are stored as their uint64 bits) */
        double f;                        /* FLOAT */
        char *s;                         /* STRING, owned */
        bool b;                          /* BOOLEAN */
        struct gobj *obj;                /* one reference owned */
    };
};

void value_deinit(struct value *v);      /* frees the string / drops the reference; sets NONE */
void value_copy(struct value *dst, const struct value *src); /* deep for strings, ref for objects */

/* Typed views: the object when v holds an object of that wire type, else NULL (borrowed). */
struct latent *value_latent(const struct value *v);
struct image *value_image(const struct value *v);
struct mask *value_mask(const struct value *v);
struct conditioning *value_conditioning(const struct value *v);
struct gobj *value_object(const struct value *v, const char *type); /* any wire type */

/* Makes v (assumed NONE or deinited) hold o, stealing o's reference. */
void value_set_object(struct value *v, struct gobj *o);

#endif
