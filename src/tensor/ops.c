/* tensor/ops.c -- op constructors: check shapes, record one node, compute its output shape.
 * Owns: nothing beyond the nodes it records in the caller's tctx.
 * Threads: the tctx's owner. */
#include "tensor/tensor.h"
#include "base/status.h"

#include <string.h>

/* ===== Node creation ===== */

static struct tensor *node(struct tctx *c, enum op op, enum dtype dt, int ndim, const int64_t *shape,
                           struct tensor *s0, struct tensor *s1, struct tensor *s2) {
    if (c->rc) return NULL;
    struct tensor *t = tctx__new_tensor(c, dt, ndim, shape);
    if (!t) return NULL;
    t->op = op;
    t->src[0] = s0;
    t->src[1] = s1;
    t->src[2] = s2;
    return t;
}

#define SHAPE(t, buf) tensor_shape_str((t), (buf), sizeof(buf))
#define NEED(c, ...)                                  \
    do {                                              \
        if ((c)->rc) return NULL;                     \
        struct tensor *need_[] = {__VA_ARGS__};       \
        for (size_t i_ = 0; i_ < sizeof need_ / sizeof need_[0]; i_++) \
            if (!need_[i_]) return tctx_fail((c), STATUS_ERR_INVALID, "%s: missing input", __func__); \
    } while (0)

static bool is_float(enum dtype t) { return t == DTYPE_F32 || t == DTYPE_F16 || t == DTYPE_BF16; }

/* Every non-NULL float source in srcs has x's dtype (see DTYPES in tensor.h); else fails. */
static bool same_dtype(struct tctx *c, const char *op, const struct tensor *x, const struct tensor *a,
                       const struct tensor *b) {
    const struct tensor *s[2] = {a, b};
    for (int i = 0; i < 2; i++) {
        if (!s[i] || s[i]->dtype == x->dtype) continue;
        tctx_fail(c, STATUS_ERR_INVALID, "%s: a %s source with a %s input (cast first)", op, dtype_name(s[i]->dtype),
                  dtype_name(x->dtype));
        return false;
    }
    if (!is_float(x->dtype)) {
        tctx_fail(c, STATUS_ERR_INVALID, "%s: input of dtype %s is not a float", op, dtype_name(x->dtype));
        return false;
    }
    return true;
}

static struct tensor *unary(struct tctx *c, enum op op, struct tensor *a) {
    NEED(c, a);
    return node(c, op, a->dtype, a->ndim, a->shape, a, NULL, NULL);
}

/* ===== Shape ops ===== */

struct tensor *op_reshape(struct tctx *c, struct tensor *a, int ndim, const int64_t *shape) {
    NEED(c, a);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    if (ndim < 1 || ndim > TENSOR_MAX_DIMS || n != tensor_numel(a)) {
        char b[64];
        return tctx_fail(c, STATUS_ERR_INVALID, "reshape of %s to %d dims / %lld elements", SHAPE(a, b), ndim,
                         (long long)n);
    }
    return node(c, OP_RESHAPE, a->dtype, ndim, shape, a, NULL, NULL);
}

struct tensor *op_transpose(struct tctx *c, struct tensor *a) {
    NEED(c, a);
    if (a->ndim < 2) return tctx_fail(c, STATUS_ERR_INVALID, "transpose of a 1-d tensor");
    int64_t s[TENSOR_MAX_DIMS];
    memcpy(s, a->shape, sizeof s);
    s[a->ndim - 1] = a->shape[a->ndim - 2];
    s[a->ndim - 2] = a->shape[a->ndim - 1];
    return node(c, OP_TRANSPOSE, a->dtype, a->ndim, s, a, NULL, NULL);
}

struct tensor *op_concat(struct tctx *c, struct tensor *a, struct tensor *b, int dim) {
    NEED(c, a, b);
    bool ok = a->ndim == b->ndim && dim >= 0 && dim < a->ndim && a->dtype == b->dtype;
    for (int i = 0; ok && i < a->ndim; i++)
        if (i != dim && a->shape[i] != b->shape[i]) ok = false;
    if (!ok) {
        char x[64], y[64];
        return tctx_fail(c, STATUS_ERR_INVALID, "concat of %s and %s on dim %d", SHAPE(a, x), SHAPE(b, y), dim);
    }
    if (!same_dtype(c, "concat", a, b, NULL)) return NULL;
    int64_t s[TENSOR_MAX_DIMS];
    memcpy(s, a->shape, sizeof s);
    s[dim] += b->shape[dim];
    struct tensor *t = node(c, OP_CONCAT, a->dtype, a->ndim, s, a, b, NULL);
    if (t) t->ip[0] = dim;
    return t;
}

struct tensor *op_upsample_nearest_to(struct tctx *c, struct tensor *a, int64_t h, int64_t w) {
    NEED(c, a);
    if (a->ndim != 4 || h < 1 || w < 1) return tctx_fail(c, STATUS_ERR_INVALID, "upsample needs NCHW and a size >= 1");
    int64_t s[4] = {a->shape[0], a->shape[1], h, w};
    return node(c, OP_UPSAMPLE_NEAREST, a->dtype, 4, s, a, NULL, NULL);
}

struct tensor *op_upsample_nearest_nhwc_to(struct tctx *c, struct tensor *a, int64_t h, int64_t w) {
    NEED(c, a);
    if (a->ndim != 4 || h < 1 || w < 1) return tctx_fail(c, STATUS_ERR_INVALID, "upsample needs NHWC and a size >= 1");
    int64_t s[4] = {a->shape[0], h, w, a->shape[3]};
    struct tensor *t = node(c, OP_UPSAMPLE_NEAREST, a->dtype, 4, s, a, NULL, NULL);
    if (t) t->ip[0] = 1;
    return t;
}

struct tensor *op_upsample_nearest(struct tctx *c, struct tensor *a, int factor) {
    NEED(c, a);
    if (factor < 1) return tctx_fail(c, STATUS_ERR_INVALID, "upsample factor %d", factor);
    return op_upsample_nearest_to(c, a, a->shape[2] * factor, a->shape[3] * factor);
}

struct tensor *op_get_rows(struct tctx *c, struct tensor *table, struct tensor *ids) {
    NEED(c, table, ids);
    if (table->ndim != 2 || ids->dtype != DTYPE_I32 || ids->ndim >= TENSOR_MAX_DIMS)
        return tctx_fail(c, STATUS_ERR_INVALID, "get_rows needs a 2-d table and I32 ids");
    int64_t s[TENSOR_MAX_DIMS];
    memcpy(s, ids->shape, sizeof s);
    s[ids->ndim] = table->shape[1];
    return node(c, OP_GET_ROWS, table->dtype, ids->ndim + 1, s, table, ids, NULL);
}

/* ===== Elementwise ===== */

static bool broadcasts(const struct tensor *a, const struct tensor *b) {
    if (b->ndim > a->ndim) return false;
    for (int i = 0; i < b->ndim; i++) {
        int64_t bs = b->shape[b->ndim - 1 - i], as = a->shape[a->ndim - 1 - i];
        if (bs != as && bs != 1) return false;
    }
    return true;
}

static struct tensor *binary(struct tctx *c, enum op op, struct tensor *a, struct tensor *b) {
    NEED(c, a, b);
    if (!broadcasts(a, b)) {
        char x[64], y[64];
        return tctx_fail(c, STATUS_ERR_INVALID, "%s: %s does not broadcast to %s", op_name(op), SHAPE(b, y), SHAPE(a, x));
    }
    if (!same_dtype(c, op_name(op), a, b, NULL)) return NULL;
    return node(c, op, a->dtype, a->ndim, a->shape, a, b, NULL);
}

struct tensor *op_add(struct tctx *c, struct tensor *a, struct tensor *b) { return binary(c, OP_ADD, a, b); }
struct tensor *op_mul(struct tctx *c, struct tensor *a, struct tensor *b) { return binary(c, OP_MUL, a, b); }

struct tensor *op_scale(struct tctx *c, struct tensor *a, float s, float t) {
    struct tensor *r = unary(c, OP_SCALE, a);
    if (r) {
        r->fp[0] = s;
        r->fp[1] = t;
    }
    return r;
}

struct tensor *op_scale_clamp(struct tctx *c, struct tensor *a, float s, float t, float lo, float hi) {
    struct tensor *r = op_scale(c, a, s, t);
    if (r) {
        r->ip[0] = 1;
        r->fp[2] = lo;
        r->fp[3] = hi;
    }
    return r;
}

struct tensor *op_silu(struct tctx *c, struct tensor *a) { return unary(c, OP_SILU, a); }
struct tensor *op_gelu(struct tctx *c, struct tensor *a) { return unary(c, OP_GELU, a); }
struct tensor *op_quick_gelu(struct tctx *c, struct tensor *a) { return unary(c, OP_QUICK_GELU, a); }

struct tensor *op_geglu(struct tctx *c, struct tensor *a) {
    NEED(c, a);
    if (a->shape[a->ndim - 1] % 2) return tctx_fail(c, STATUS_ERR_INVALID, "geglu needs an even last dim");
    int64_t s[TENSOR_MAX_DIMS];
    memcpy(s, a->shape, sizeof s);
    s[a->ndim - 1] /= 2;
    return node(c, OP_GEGLU, a->dtype, a->ndim, s, a, NULL, NULL);
}

/* ===== Matrix products ===== */

struct tensor *op_add_fused(struct tctx *c, struct tensor *y, struct tensor *r) {
    NEED(c, y, r);
    bool fusable = (y->op == OP_LINEAR || y->op == OP_CONV2D) && !y->src[3] && y != r &&
                   y->seq == c->n_created - 1 && tensor_same_shape(y, r) && y->dtype == r->dtype;
    if (!fusable) return op_add(c, y, r);
    y->src[3] = r;
    return y;
}

struct tensor *op_linear(struct tctx *c, struct tensor *x, struct tensor *w, struct tensor *b) {
    NEED(c, x, w);
    int64_t k = x->shape[x->ndim - 1];
    if (w->ndim != 2 || w->shape[1] != k || (b && tensor_numel(b) != w->shape[0])) {
        char s1[64], s2[64];
        return tctx_fail(c, STATUS_ERR_INVALID, "linear: x %s, weight %s", SHAPE(x, s1), SHAPE(w, s2));
    }
    int64_t s[TENSOR_MAX_DIMS];
    memcpy(s, x->shape, sizeof s);
    s[x->ndim - 1] = w->shape[0];
    if (!same_dtype(c, "linear", x, w, b)) return NULL;
    return node(c, OP_LINEAR, x->dtype, x->ndim, s, x, w, b);
}

/* The CONV2D node of output shape s (checked by the caller): stride, the four paddings, layout. */
static struct tensor *conv_node(struct tctx *c, const int64_t *s, struct tensor *x, struct tensor *w,
                                struct tensor *b, int stride, int pt, int pl, int pb, int pr, bool nhwc) {
    if (!same_dtype(c, "conv2d", x, w, b)) return NULL;
    struct tensor *t = node(c, OP_CONV2D, x->dtype, 4, s, x, w, b);
    if (t) {
        t->ip[0] = stride;
        t->ip[1] = pt;
        t->ip[2] = pl;
        t->ip[3] = pb;
        t->ip[4] = pr;
        t->ip[5] = nhwc;
    }
    return t;
}

struct tensor *op_conv2d_pad(struct tctx *c, struct tensor *x, struct tensor *w, struct tensor *b, int stride,
                             int pt, int pl, int pb, int pr) {
    NEED(c, x, w);
    if (x->ndim != 4 || w->ndim != 4 || w->shape[1] != x->shape[1] || stride < 1 ||
        (b && tensor_numel(b) != w->shape[0])) {
        char s1[64], s2[64];
        return tctx_fail(c, STATUS_ERR_INVALID, "conv2d: x %s, weight %s", SHAPE(x, s1), SHAPE(w, s2));
    }
    int64_t ho = (x->shape[2] + pt + pb - w->shape[2]) / stride + 1;
    int64_t wo = (x->shape[3] + pl + pr - w->shape[3]) / stride + 1;
    if (ho < 1 || wo < 1) return tctx_fail(c, STATUS_ERR_INVALID, "conv2d: empty output");
    int64_t s[4] = {x->shape[0], w->shape[0], ho, wo};
    return conv_node(c, s, x, w, b, stride, pt, pl, pb, pr, false);
}

struct tensor *op_conv2d(struct tctx *c, struct tensor *x, struct tensor *w, struct tensor *b, int stride, int pad) {
    return op_conv2d_pad(c, x, w, b, stride, pad, pad, pad, pad);
}

struct tensor *op_conv2d_nhwc(struct tctx *c, struct tensor *x, struct tensor *w, struct tensor *b, int stride,
                              int pad) {
    return op_conv2d_nhwc_pad(c, x, w, b, stride, pad, pad, pad, pad);
}

struct tensor *op_conv2d_nhwc_pad(struct tctx *c, struct tensor *x, struct tensor *w, struct tensor *b, int stride,
                                  int pt, int pl, int pb, int pr) {
    NEED(c, x, w);
    if (x->ndim != 4 || w->ndim != 4 || w->shape[3] != x->shape[3] || stride < 1 || (pt | pl | pb | pr) < 0 ||
        (b && tensor_numel(b) != w->shape[0])) {
        char s1[64], s2[64];
        return tctx_fail(c, STATUS_ERR_INVALID, "conv2d (channels last): x %s, weight %s", SHAPE(x, s1),
                         SHAPE(w, s2));
    }
    int64_t ho = (x->shape[1] + pt + pb - w->shape[1]) / stride + 1;
    int64_t wo = (x->shape[2] + pl + pr - w->shape[2]) / stride + 1;
    if (ho < 1 || wo < 1) return tctx_fail(c, STATUS_ERR_INVALID, "conv2d: empty output");
    int64_t s[4] = {x->shape[0], ho, wo, w->shape[0]};
    return conv_node(c, s, x, w, b, stride, pt, pl, pb, pr, true);
}

struct tensor *op_attention(struct tctx *c, struct tensor *q, struct tensor *k, struct tensor *v, int heads,
                            bool causal) {
    NEED(c, q, k, v);
    bool ok = q->ndim == 3 && k->ndim == 3 && v->ndim == 3 && heads > 0 && q->shape[2] % heads == 0 &&
              k->shape[0] == q->shape[0] && v->shape[0] == q->shape[0] && k->shape[2] == q->shape[2] &&
              v->shape[2] == q->shape[2] && k->shape[1] == v->shape[1];
    if (!ok) {
        char a[64], b[64], d[64];
        return tctx_fail(c, STATUS_ERR_INVALID, "attention: q %s, k %s, v %s, %d heads", SHAPE(q, a), SHAPE(k, b),
                         SHAPE(v, d), heads);
    }
    if (!same_dtype(c, "attention", q, k, v)) return NULL;
    struct tensor *t = node(c, OP_ATTENTION, q->dtype, 3, q->shape, q, k, v);
    if (t) {
        t->ip[0] = heads;
        t->ip[1] = causal;
    }
    return t;
}

/* ===== Normalisation ===== */

static struct tensor *group_norm(struct tctx *c, struct tensor *x, struct tensor *w, struct tensor *b, int groups,
                                 float eps, bool silu, bool nhwc) {
    NEED(c, x);
    int64_t ch = x->shape[nhwc ? x->ndim - 1 : 1];
    if (x->ndim < 2 || groups < 1 || ch % groups || (w && tensor_numel(w) != ch) || (b && tensor_numel(b) != ch)) {
        char s1[64];
        return tctx_fail(c, STATUS_ERR_INVALID, "group_norm%s: x %s with %d groups", nhwc ? " (channels last)" : "",
                         SHAPE(x, s1), groups);
    }
    if (!same_dtype(c, "group_norm", x, w, b)) return NULL;
    struct tensor *t = node(c, OP_GROUP_NORM, x->dtype, x->ndim, x->shape, x, w, b);
    if (t) {
        t->ip[0] = groups;
        t->ip[1] = silu;
        t->ip[2] = nhwc;
        t->fp[0] = eps;
    }
    return t;
}

struct tensor *op_group_norm(struct tctx *c, struct tensor *x, struct tensor *w, struct tensor *b, int groups,
                             float eps, bool silu) {
    return group_norm(c, x, w, b, groups, eps, silu, false);
}

struct tensor *op_group_norm_nhwc(struct tctx *c, struct tensor *x, struct tensor *w, struct tensor *b, int groups,
                                  float eps, bool silu) {
    return group_norm(c, x, w, b, groups, eps, silu, true);
}

struct tensor *op_group_norm_nhwc_add(struct tctx *c, struct tensor *x, struct tensor *a, struct tensor *w,
                                      struct tensor *b, int groups, float eps, bool silu) {
    NEED(c, x, a);
    if (x->ndim < 2 || a->ndim != 2 || a->shape[0] != x->shape[0] || a->shape[1] != x->shape[x->ndim - 1]) {
        char s1[64], s2[64];
        return tctx_fail(c, STATUS_ERR_INVALID, "group_norm (channels last) of x + a: x %s, a %s", SHAPE(x, s1),
                         SHAPE(a, s2));
    }
    if (!same_dtype(c, "group_norm", x, a, NULL)) return NULL;
    struct tensor *t = group_norm(c, x, w, b, groups, eps, silu, true);
    if (t) t->src[3] = a;
    return t;
}

struct tensor *op_layer_norm(struct tctx *c, struct tensor *x, struct tensor *w, struct tensor *b, float eps) {
    NEED(c, x);
    int64_t n = x->shape[x->ndim - 1];
    if ((w && tensor_numel(w) != n) || (b && tensor_numel(b) != n)) {
        char s1[64];
        return tctx_fail(c, STATUS_ERR_INVALID, "layer_norm: x %s", SHAPE(x, s1));
    }
    if (!same_dtype(c, "layer_norm", x, w, b)) return NULL;
    struct tensor *t = node(c, OP_LAYER_NORM, x->dtype, x->ndim, x->shape, x, w, b);
    if (t) t->fp[0] = eps;
    return t;
}

/* ===== Sampler steps ===== */

static bool sample_args(struct tctx *c, const char *op, const struct tensor *x, const struct tensor *p) {
    if (x->dtype != DTYPE_F32 || p->dtype != DTYPE_F32 || tensor_numel(p) != 4) {
        char s1[64], s2[64];
        tctx_fail(c, STATUS_ERR_INVALID, "%s: x %s %s, p %s %s (F32, p of 4)", op, dtype_name(x->dtype), SHAPE(x, s1),
                  dtype_name(p->dtype), SHAPE(p, s2));
        return false;
    }
    return true;
}

struct tensor *op_sample_in(struct tctx *c, struct tensor *x, struct tensor *p, int entries) {
    NEED(c, x, p);
    if (!sample_args(c, "sample_in", x, p)) return NULL;
    if (entries < 1 || entries > 2) return tctx_fail(c, STATUS_ERR_INVALID, "sample_in: %d entries", entries);
    int64_t s[TENSOR_MAX_DIMS];
    memcpy(s, x->shape, sizeof s);
    s[0] *= entries;
    struct tensor *t = node(c, OP_SAMPLE, DTYPE_F32, x->ndim, s, x, p, NULL);
    if (t) t->ip[0] = 0;
    return t;
}

struct tensor *op_sample_step(struct tctx *c, struct tensor *x, struct tensor *eps, struct tensor *p) {
    NEED(c, x, eps, p);
    if (!sample_args(c, "sample_step", x, p)) return NULL;
    int64_t n = tensor_numel(x), ne = tensor_numel(eps);
    if (!(x->flags & TENSOR_FLAG_WEIGHT) || !x->data)
        return tctx_fail(c, STATUS_ERR_INVALID, "sample_step: x must be a weight leaf (it is written in place)");
    if (eps->dtype != DTYPE_F32 || (ne != n && ne != 2 * n)) {
        char s1[64], s2[64];
        return tctx_fail(c, STATUS_ERR_INVALID, "sample_step: x %s, eps %s %s", SHAPE(x, s1), dtype_name(eps->dtype),
                         SHAPE(eps, s2));
    }
    struct tensor *t = node(c, OP_SAMPLE, DTYPE_F32, x->ndim, x->shape, x, eps, p);
    if (!t) return NULL;
    t->ip[0] = 1;
    t->ip[1] = (int32_t)(ne / n);
    t->flags |= TENSOR_FLAG_WEIGHT; /* the planner leaves its memory alone: x's */
    t->data = x->data;
    return t;
}

/* ===== Conversion ===== */

struct tensor *op_cast(struct tctx *c, struct tensor *a, enum dtype to) {
    NEED(c, a);
    if (!is_float(a->dtype) || !is_float(to))
        return tctx_fail(c, STATUS_ERR_INVALID, "cast from %s to %s", dtype_name(a->dtype), dtype_name(to));
    if (a->dtype == to) return a;
    struct tensor *t = node(c, OP_CAST, to, a->ndim, a->shape, a, NULL, NULL);
    if (t) t->ip[0] = (int32_t)to;
    return t;
}
