/* graph/value.c -- node values and the reference-counted LATENT/IMAGE/MASK/CONDITIONING objects.
 * Owns: the constructors and destructors of those objects.
 * Must not: know MODEL/CLIP/VAE internals (their owners give them a free function).
 * Threads: one worker thread uses a value at a time (counts are not atomic).
 * Ownership: *_new returns one reference; the last gobj_unref frees the object and its data. */
#include "graph/value.h"

#include "base/base.h"
#include "base/mem.h"
#include "io/png_async.h"

#include <string.h>

/* ===== Reference counts ===== */

struct gobj *gobj_ref(struct gobj *o) {
    if (o) {
        ASSERT(o->refs > 0);
        o->refs++;
    }
    return o;
}

void gobj_unref(struct gobj *o) {
    if (!o) return;
    ASSERT(o->refs > 0);
    if (--o->refs == 0) o->free(o);
}

/* ===== Objects ===== */

/* Element count a*b*c*d, or -1 when a dimension is negative or the product overflows size_t. */
static int64_t numel4(int64_t a, int64_t b, int64_t c, int64_t d) {
    int64_t dims[4] = {a, b, c, d};
    uint64_t n = 1;
    for (int i = 0; i < 4; i++) {
        if (dims[i] < 0) return -1;
        if (dims[i] && n > (uint64_t)INT64_MAX / (uint64_t)dims[i] / sizeof(float)) return -1;
        n *= (uint64_t)dims[i];
    }
    return (int64_t)n;
}

static void latent_free(struct gobj *o) {
    struct latent *l = (struct latent *)o;
    mem_free(l->samples);
    mem_free(l->batch_index);
    mem_free(l->noise_mask);
    mem_free(l);
}

struct latent *latent_new(int64_t b, int64_t c, int64_t h, int64_t w) {
    int64_t n = numel4(b, c, h, w);
    if (n < 0) return NULL;
    float *samples = mem_try_calloc((size_t)(n ? n : 1), sizeof(float));
    if (!samples) return NULL;
    struct latent *l = mem_calloc(1, sizeof *l);
    l->obj = (struct gobj){.refs = 1, .type = "LATENT", .free = latent_free};
    l->b = b, l->c = c, l->h = h, l->w = w;
    l->samples = samples;
    return l;
}

static void image_free(struct gobj *o) {
    struct image *im = (struct image *)o;
    png_async_free(im->png_ahead); /* its thread reads data */
    mem_free(im->data);
    mem_free(im);
}

struct image *image_new(int64_t b, int64_t h, int64_t w, int64_t c) {
    int64_t n = numel4(b, h, w, c);
    if (n < 0) return NULL;
    float *data = mem_try_calloc((size_t)(n ? n : 1), sizeof(float));
    if (!data) return NULL;
    struct image *im = mem_calloc(1, sizeof *im);
    im->obj = (struct gobj){.refs = 1, .type = "IMAGE", .free = image_free};
    im->b = b, im->h = h, im->w = w, im->c = c;
    im->data = data;
    return im;
}

static void mask_free(struct gobj *o) {
    struct mask *m = (struct mask *)o;
    mem_free(m->data);
    mem_free(m);
}

struct mask *mask_new(int64_t b, int64_t h, int64_t w) {
    int64_t n = numel4(b, h, w, 1);
    if (n < 0) return NULL;
    float *data = mem_try_calloc((size_t)(n ? n : 1), sizeof(float));
    if (!data) return NULL;
    struct mask *m = mem_calloc(1, sizeof *m);
    m->obj = (struct gobj){.refs = 1, .type = "MASK", .free = mask_free};
    m->b = b, m->h = h, m->w = w;
    m->data = data;
    return m;
}

static void conditioning_free(struct gobj *o) {
    struct conditioning *c = (struct conditioning *)o;
    for (int i = 0; i < c->n; i++) {
        mem_free(c->items[i].context);
        mem_free(c->items[i].pooled);
    }
    mem_free(c->items);
    mem_free(c);
}

struct conditioning *conditioning_new(int n) {
    ASSERT(n >= 0);
    struct conditioning *c = mem_calloc(1, sizeof *c);
    c->obj = (struct gobj){.refs = 1, .type = "CONDITIONING", .free = conditioning_free};
    c->n = n;
    c->items = mem_calloc((size_t)(n ? n : 1), sizeof *c->items);
    return c;
}

/* ===== Values ===== */

void value_deinit(struct value *v) {
    if (!v) return;
    if (v->kind == VALUE_STRING) mem_free(v->s);
    if (v->kind == VALUE_OBJECT) gobj_unref(v->obj);
    memset(v, 0, sizeof *v);
    v->kind = VALUE_NONE;
}

void value_copy(struct value *dst, const struct value *src) {
    *dst = *src;
    if (src->kind == VALUE_STRING) dst->s = mem_strdup(src->s);
    if (src->kind == VALUE_OBJECT) gobj_ref(src->obj);
}

struct gobj *value_object(const struct value *v, const char *type) {
    if (!v || v->kind != VALUE_OBJECT || !v->obj) return NULL;
    if (type && strcmp(v->obj->type, type) != 0) return NULL;
    return v->obj;
}

struct latent *value_latent(const struct value *v) { return (struct latent *)value_object(v, "LATENT"); }
struct image *value_image(const struct value *v) { return (struct image *)value_object(v, "IMAGE"); }
struct mask *value_mask(const struct value *v) { return (struct mask *)value_object(v, "MASK"); }
struct conditioning *value_conditioning(const struct value *v) {
    return (struct conditioning *)value_object(v, "CONDITIONING");
}

void value_set_object(struct value *v, struct gobj *o) {
    memset(v, 0, sizeof *v);
    v->kind = VALUE_OBJECT;
    v->obj = o;
}
