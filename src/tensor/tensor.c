/* tensor/tensor.c -- dtypes, op names, graph recording, memory planning and running.
 * Owns: the tensor structs of a tctx (in its arena) and the plan of its scratch buffer.
 * Must not: touch device memory except through backend.h.
 * Threads: the thread that owns the tctx. */
#include "tensor/tensor.h"
#include "tensor/backend.h"
#include "base/base.h"
#include "base/mem.h"
#include "base/status.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ===== Dtypes ===== */

static const char *const DTYPE_NAMES[] = {
#define XX(name, str, size) str,
    DTYPE_MAP(XX)
#undef XX
};
static const size_t DTYPE_SIZES[] = {
#define XX(name, str, size) size,
    DTYPE_MAP(XX)
#undef XX
};

const char *dtype_name(enum dtype t) { return (unsigned)t < DTYPE_COUNT ? DTYPE_NAMES[t] : "?"; }
size_t dtype_size(enum dtype t) { return (unsigned)t < DTYPE_COUNT ? DTYPE_SIZES[t] : 0; }

enum dtype dtype_parse(const char *s) {
    for (int i = 0; i < DTYPE_COUNT; i++)
        if (strcmp(s, DTYPE_NAMES[i]) == 0) return (enum dtype)i;
    return DTYPE_COUNT;
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                mant <<= 1;
            } while (!(mant & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mant & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000 | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t absx = x & 0x7fffffff;
    if (absx >= 0x7f800000) /* inf or nan */
        return (uint16_t)(sign | 0x7c00 | (absx > 0x7f800000 ? 0x200 : 0));
    if (absx >= 0x477ff000) /* rounds to >= 65520: overflow to inf */
        return (uint16_t)(sign | 0x7c00);
    if (absx < 0x38800000) { /* below the smallest normal half: subnormal or zero */
        if (absx < 0x33000000) return (uint16_t)sign; /* < 2^-25 rounds to 0 */
        /* value = m * 2^(e-150); in half-subnormal units of 2^-24 that is m * 2^(e-126) */
        uint32_t e = absx >> 23;
        uint32_t m = (absx & 0x7fffff) | 0x800000;
        uint32_t drop = 126 - e; /* 14..24 */
        uint32_t q = m >> drop;
        uint32_t rem = m & ((1u << drop) - 1);
        uint32_t half = 1u << (drop - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return (uint16_t)(sign | q);
    }
    /* normal: rebias exponent, round mantissa to 10 bits (nearest even) */
    uint32_t m = absx + 0xfff + ((absx >> 13) & 1);
    return (uint16_t)(sign | ((m - 0x38000000) >> 13));
}

float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 0x40); /* quiet nan */
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

uint16_t f16_to_bf16(uint16_t h) {
    uint32_t exp = (h >> 10) & 0x1f;
    if (exp == 0 || exp == 31) return f32_to_bf16(f16_to_f32(h)); /* zero, subnormal, inf, nan */
    uint32_t x = (uint32_t)(h & 0x8000) << 16 | (exp + 127 - 15) << 23 | (uint32_t)(h & 0x3ff) << 13;
    x += 0x7fff + ((x >> 16) & 1); /* round to nearest even, as f32_to_bf16 */
    return (uint16_t)(x >> 16);
}

void f16_to_bf16_n(const void *src, uint16_t *dst, size_t n) {
    const unsigned char *p = src;
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        dst[i] = f16_to_bf16(h);
    }
}

/* ===== Op names ===== */

static const char *const OP_NAMES[] = {
#define XX(name, nsrc) #name,
    OP_MAP(XX)
#undef XX
};
static const int OP_NSRC[] = {
#define XX(name, nsrc) nsrc,
    OP_MAP(XX)
#undef XX
};

const char *op_name(enum op op) { return (unsigned)op < OP_COUNT ? OP_NAMES[op] : "?"; }
int op_nsrc(enum op op) { return (unsigned)op < OP_COUNT ? OP_NSRC[op] : 0; }

/* ===== Tensor facts ===== */

int64_t tensor_numel(const struct tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

size_t tensor_nbytes(const struct tensor *t) { return (size_t)tensor_numel(t) * dtype_size(t->dtype); }

bool tensor_same_shape(const struct tensor *a, const struct tensor *b) {
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

const char *tensor_shape_str(const struct tensor *t, char *buf, size_t n) {
    size_t off = 0;
    off += (size_t)snprintf(buf + off, n - off, "[");
    for (int i = 0; i < t->ndim && off < n; i++)
        off += (size_t)snprintf(buf + off, n - off, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (off < n) snprintf(buf + off, n - off, "]");
    return buf;
}

/* ===== Scratch ===== */

void tscratch_init(struct tscratch *s, struct backend *be) {
    memset(s, 0, sizeof *s);
    s->backend = be;
}

void tscratch_deinit(struct tscratch *s) {
    if (s->buf) backend_buf_free(s->backend, s->buf);
    s->buf = NULL;
    s->size = 0;
}

/* ===== Context ===== */

void tctx_init(struct tctx *c, struct backend *be, struct tscratch *scratch) {
    memset(c, 0, sizeof *c);
    c->backend = be;
    c->scratch = scratch;
    arena_init(&c->arena, 256 * 1024);
}

void tctx_deinit(struct tctx *c) {
    arena_deinit(&c->arena);
    c->nodes = NULL;
}

/* No hoisted plan (tctx_plan_hoisted's state back to a plain plan's). */
static void hoist_clear(struct tctx *c) {
    c->hoisted = false;
    c->run_var = NULL;
    c->n_run_var = 0;
    c->hoisted_bytes = 0;
    c->consts_ready = false;
}

void tctx_reset(struct tctx *c) {
    arena_reset(&c->arena);
    c->nodes = NULL;
    c->n_nodes = c->cap_nodes = 0;
    c->run = NULL;
    c->n_run = 0;
    c->stream = NULL;
    c->n_created = 0;
    c->rc = 0;
    err_clear(&c->err);
    c->memo_valid = false;
    hoist_clear(c);
}

struct tensor *tctx_fail(struct tctx *c, int rc, const char *fmt, ...) {
    if (c->rc) return NULL;
    c->rc = rc;
    c->err.code = rc;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err.msg, sizeof c->err.msg, fmt, ap);
    va_end(ap);
    return NULL;
}

struct tensor *tctx__new_tensor(struct tctx *c, enum dtype dt, int ndim, const int64_t *shape) {
    if (ndim < 1 || ndim > TENSOR_MAX_DIMS) return tctx_fail(c, STATUS_ERR_INVALID, "tensor with %d dims", ndim);
    struct tensor *t = arena_alloc(&c->arena, sizeof *t);
    t->dtype = dt;
    t->ndim = ndim;
    for (int i = 0; i < TENSOR_MAX_DIMS; i++) t->shape[i] = i < ndim ? shape[i] : 1;
    for (int i = 0; i < ndim; i++)
        if (shape[i] <= 0) return tctx_fail(c, STATUS_ERR_INVALID, "tensor dim %d has size %lld", i, (long long)shape[i]);
    t->id = -1;
    t->seq = c->n_created++;
    return t;
}

struct tensor *tensor_input(struct tctx *c, enum dtype dt, int ndim, const int64_t *shape) {
    if (c->rc) return NULL;
    struct tensor *t = tctx__new_tensor(c, dt, ndim, shape);
    if (t) t->flags |= TENSOR_FLAG_INPUT;
    return t;
}

struct tensor *tensor_weight(struct tctx *c, enum dtype dt, int ndim, const int64_t *shape, void *data) {
    if (c->rc) return NULL;
    struct tensor *t = tctx__new_tensor(c, dt, ndim, shape);
    if (t) {
        t->flags |= TENSOR_FLAG_WEIGHT;
        t->data = data;
    }
    return t;
}

void tensor_set_output(struct tensor *t) {
    if (t) t->flags |= TENSOR_FLAG_OUTPUT;
}

/* ===== Memory planning =====
 * Nodes are ordered depth-first (sources before users). Each computed tensor lives from its
 * own position to its last reader; a RESHAPE aliases its source, extending the source's life.
 * Offsets come from a first-fit free list simulated in order, so memory is reused as soon as
 * a tensor dies. Everything is 256-byte aligned. */

#define PLAN_ALIGN 256

static size_t align_up(size_t n) { return (n + PLAN_ALIGN - 1) & ~(size_t)(PLAN_ALIGN - 1); }

static void push_node(struct tctx *c, struct tensor *t) {
    if (c->n_nodes == c->cap_nodes) {
        int cap = c->cap_nodes ? c->cap_nodes * 2 : 1024;
        struct tensor **nn = arena_alloc(&c->arena, (size_t)cap * sizeof *nn);
        if (c->n_nodes) memcpy(nn, c->nodes, (size_t)c->n_nodes * sizeof *nn);
        c->nodes = nn;
        c->cap_nodes = cap;
    }
    t->id = c->n_nodes;
    c->nodes[c->n_nodes++] = t;
}

/* Iterative DFS so deep graphs (thousands of nodes) cannot overflow the stack. */
static void visit(struct tctx *c, struct tensor *root) {
    if (root->id >= 0) return;
    struct frame { struct tensor *t; int next; };
    int cap = 256, top = 0;
    struct frame *st = mem_alloc((size_t)cap * sizeof *st);
    st[top++] = (struct frame){root, 0};
    root->id = -2; /* on stack */
    while (top) {
        struct frame *f = &st[top - 1];
        if (f->next < TENSOR_MAX_SRC) {
            struct tensor *s = f->t->src[f->next++];
            if (s && s->id == -1) {
                if (top == cap) {
                    cap *= 2;
                    st = mem_realloc(st, (size_t)cap * sizeof *st);
                }
                s->id = -2;
                st[top++] = (struct frame){s, 0};
            }
        } else {
            push_node(c, f->t);
            top--;
        }
    }
    mem_free(st);
}

struct span { size_t off, size; };

/* First-fit allocator over a sorted free list, growing the high-water mark when nothing fits. */
struct planner {
    struct span *free_list;
    int n_free, cap_free;
    size_t top; /* high-water mark */
};

static size_t plan_alloc(struct planner *p, size_t size) {
    for (int i = 0; i < p->n_free; i++) {
        if (p->free_list[i].size >= size) {
            size_t off = p->free_list[i].off;
            p->free_list[i].off += size;
            p->free_list[i].size -= size;
            if (p->free_list[i].size == 0) {
                memmove(&p->free_list[i], &p->free_list[i + 1], (size_t)(p->n_free - i - 1) * sizeof(struct span));
                p->n_free--;
            }
            return off;
        }
    }
    /* extend: if the last free span touches the top, use it */
    if (p->n_free && p->free_list[p->n_free - 1].off + p->free_list[p->n_free - 1].size == p->top) {
        size_t off = p->free_list[p->n_free - 1].off;
        p->top = off + size;
        p->n_free--;
        return off;
    }
    size_t off = p->top;
    p->top += size;
    return off;
}

static void plan_free(struct planner *p, size_t off, size_t size) {
    int i = 0;
    while (i < p->n_free && p->free_list[i].off < off) i++;
    if (p->n_free == p->cap_free) {
        p->cap_free = p->cap_free ? p->cap_free * 2 : 64;
        p->free_list = mem_realloc(p->free_list, (size_t)p->cap_free * sizeof(struct span));
    }
    memmove(&p->free_list[i + 1], &p->free_list[i], (size_t)(p->n_free - i) * sizeof(struct span));
    p->free_list[i] = (struct span){off, size};
    p->n_free++;
    /* merge with neighbours */
    if (i + 1 < p->n_free && p->free_list[i].off + p->free_list[i].size == p->free_list[i + 1].off) {
        p->free_list[i].size += p->free_list[i + 1].size;
        memmove(&p->free_list[i + 1], &p->free_list[i + 2], (size_t)(p->n_free - i - 2) * sizeof(struct span));
        p->n_free--;
    }
    if (i > 0 && p->free_list[i - 1].off + p->free_list[i - 1].size == p->free_list[i].off) {
        p->free_list[i - 1].size += p->free_list[i].size;
        memmove(&p->free_list[i], &p->free_list[i + 1], (size_t)(p->n_free - i - 1) * sizeof(struct span));
        p->n_free--;
    }
}

static bool needs_memory(const struct tensor *t) { return !(t->flags & TENSOR_FLAG_WEIGHT) && t->op != OP_RESHAPE; }

/* The tensor that owns the memory t reads (follows RESHAPE chains). */
static struct tensor *mem_owner(struct tensor *t) {
    while (t->op == OP_RESHAPE) t = t->src[0];
    return t;
}

/* ===== Streamed weights (tensor.h STREAMING) ===== */

static int by_seq(const void *a, const void *b) {
    int x = (*(struct tensor *const *)a)->seq, y = (*(struct tensor *const *)b)->seq;
    return (x > y) - (x < y);
}

static struct tensor *stream_node(struct tctx *c, enum tstream_kind kind, int block) {
    if (kind == TSTREAM_BEGIN) {
        struct tensor *t = tctx__new_tensor(c, DTYPE_I32, 1, (int64_t[]){1});
        t->op = OP_STREAM;
        t->ip[0] = kind;
        return t;
    }
    const struct tstream_block *b = &c->stream->blocks[block];
    int64_t one = 1, words = (int64_t)(b->bytes / 4);
    struct tensor *t = tctx__new_tensor(c, DTYPE_I32, 1, kind == TSTREAM_FETCH ? &words : &one);
    t->op = OP_STREAM;
    t->ip[0] = kind;
    t->ip[1] = b->slot_index;
    t->ip[2] = block;
    if (kind == TSTREAM_FETCH) {
        t->data = b->slot;
        t->src[0] = tensor_weight(c, DTYPE_I32, 1, &words, (void *)b->home);
    }
    return t;
}

/* Adds FETCH / WAIT / DONE nodes for every streamed block that c->run reads. */
static int plan_stream(struct tctx *c) {
    const struct tstream *s = c->stream;
    int nb = s->n_blocks;
    if (s->n_slots < 1 || s->n_slots > TSTREAM_MAX_SLOTS)
        return tctx_fail(c, STATUS_ERR_INVALID, "streamed weights with %d slots", s->n_slots), c->rc;
    int *first = mem_alloc((size_t)nb * sizeof *first), *last = mem_alloc((size_t)nb * sizeof *last);
    int *order = mem_alloc((size_t)nb * sizeof *order), *next = mem_alloc((size_t)nb * sizeof *next);
    for (int b = 0; b < nb; b++) {
        first[b] = INT_MAX;
        last[b] = -1;
        next[b] = -1;
        const struct tstream_block *blk = &s->blocks[b];
        if (blk->bytes % 4 || blk->slot_index < 0 || blk->slot_index >= s->n_slots) {
            tctx_fail(c, STATUS_ERR_INVALID, "streamed block %s: %zu bytes in slot %d of %d", blk->name, blk->bytes,
                      blk->slot_index, s->n_slots);
            goto done;
        }
    }
    for (int i = 0; i < c->n_run; i++)
        for (int k = 0; k < TENSOR_MAX_SRC; k++) {
            struct tensor *src = c->run[i]->src[k];
            if (!src) continue;
            int id = mem_owner(src)->stream_id;
            if (id < 1 || id > nb) continue;
            if (first[id - 1] == INT_MAX) first[id - 1] = i;
            last[id - 1] = i;
        }
    /* the blocks read, by first use; per slot, each must be done before the next one starts */
    int n_used = 0;
    for (int b = 0; b < nb; b++)
        if (last[b] >= 0) order[n_used++] = b;
    for (int i = 1; i < n_used; i++) /* insertion sort by first use (n is small) */
        for (int j = i; j > 0 && first[order[j]] < first[order[j - 1]]; j--) {
            int tmp = order[j];
            order[j] = order[j - 1];
            order[j - 1] = tmp;
        }
    int prev_in_slot[TSTREAM_MAX_SLOTS], first_in_slot[TSTREAM_MAX_SLOTS];
    for (int k = 0; k < TSTREAM_MAX_SLOTS; k++) prev_in_slot[k] = first_in_slot[k] = -1;
    for (int i = 0; i < n_used; i++) {
        int b = order[i], k = s->blocks[b].slot_index, p = prev_in_slot[k];
        if (p >= 0) {
            if (first[b] <= last[p]) {
                tctx_fail(c, STATUS_ERR_INVALID,
                          "streamed blocks %s and %s share slot %d but their weights are read interleaved",
                          s->blocks[p].name, s->blocks[b].name, k);
                goto done;
            }
            next[p] = b;
        } else {
            first_in_slot[k] = b;
        }
        prev_in_slot[k] = b;
    }
    struct tensor **run = arena_alloc(&c->arena, (size_t)(c->n_run + 3 * n_used + 2) * sizeof *run);
    int n = 0;
    if (n_used) run[n++] = stream_node(c, TSTREAM_BEGIN, 0);
    if (!s->no_prefetch)
        for (int k = 0; k < s->n_slots; k++)
            if (first_in_slot[k] >= 0) {
                run[n] = stream_node(c, TSTREAM_FETCH, first_in_slot[k]);
                run[n++]->ip[3] = 1;
            }
    for (int i = 0; i < c->n_run; i++) {
        for (int j = 0; j < n_used; j++) {
            int b = order[j];
            if (first[b] != i) continue;
            if (s->no_prefetch) { /* the copy starts only when the compute gets here */
                run[n] = stream_node(c, TSTREAM_FETCH, b);
                run[n]->ip[3] = first_in_slot[s->blocks[b].slot_index] == b;
                run[n++]->ip[4] = 1;
            }
            run[n++] = stream_node(c, TSTREAM_WAIT, b);
        }
        run[n++] = c->run[i];
        for (int j = 0; j < n_used; j++) {
            int b = order[j];
            if (last[b] != i) continue;
            run[n++] = stream_node(c, TSTREAM_DONE, b);
            if (!s->no_prefetch && next[b] >= 0) run[n++] = stream_node(c, TSTREAM_FETCH, next[b]);
        }
    }
    if (!c->rc) {
        c->run = run;
        c->n_run = n;
    }
done:
    mem_free(first);
    mem_free(last);
    mem_free(order);
    mem_free(next);
    return c->rc;
}

/* tctx_plan_hoisted's marks: which computed nodes depend on no input (const[i] for nodes[i]),
 * and the bytes they hold; false when nothing can be kept (streamed weights, too many bytes). */
static bool mark_constants(struct tctx *c, bool *is_const, size_t *bytes) {
    *bytes = 0;
    if (c->stream && c->stream->n_blocks > 0) return false;
    /* nodes[] lists sources before their readers; varies[] by node id */
    bool *varies = mem_alloc((size_t)(c->n_nodes > 0 ? c->n_nodes : 1) * sizeof *varies);
    bool any = false;
    for (int i = 0; i < c->n_nodes; i++) {
        struct tensor *t = c->nodes[i];
        bool v = (t->flags & TENSOR_FLAG_INPUT) != 0;
        for (int k = 0; k < TENSOR_MAX_SRC && !v; k++)
            if (t->src[k] && t->src[k]->id >= 0 && varies[t->src[k]->id]) v = true;
        varies[i] = v;
        is_const[i] = !v && t->op != OP_NONE && t->op != OP_RESHAPE;
        if (is_const[i]) {
            *bytes += align_up(tensor_nbytes(t));
            any = true;
        }
    }
    mem_free(varies);
    return any && *bytes <= TCTX_HOIST_MAX;
}

static int plan(struct tctx *c, struct tensor *const *outs, int n_outs, bool hoist);

int tctx_plan(struct tctx *c, struct tensor *const *outs, int n_outs) { return plan(c, outs, n_outs, false); }

int tctx_plan_hoisted(struct tctx *c, struct tensor *const *outs, int n_outs) { return plan(c, outs, n_outs, true); }

static int plan(struct tctx *c, struct tensor *const *outs, int n_outs, bool hoist) {
    c->memo_valid = false; /* a new plan: what was memoised no longer describes the graph */
    hoist_clear(c);
    c->scratch->plans++;
    if (c->rc) return c->rc;
    /* a previous plan's nodes are ordered again (a graph extended after planning) */
    for (int i = 0; i < c->n_nodes; i++) c->nodes[i]->id = -1;
    c->n_nodes = 0;
    for (int i = 0; i < n_outs; i++) {
        if (!outs[i]) return c->rc ? c->rc : (tctx_fail(c, STATUS_ERR_INVALID, "NULL graph output"), c->rc);
        outs[i]->flags |= TENSOR_FLAG_OUTPUT;
        visit(c, outs[i]);
    }
    if (c->stream && c->stream->n_blocks > 0) { /* streamed weights: the recorded order (STREAMING) */
        qsort(c->nodes, (size_t)c->n_nodes, sizeof *c->nodes, by_seq);
        for (int i = 0; i < c->n_nodes; i++) c->nodes[i]->id = i;
    }
    /* last use of each memory owner */
    for (int i = 0; i < c->n_nodes; i++) {
        struct tensor *t = c->nodes[i];
        t->last_use = (t->flags & TENSOR_FLAG_OUTPUT) ? c->n_nodes : i;
    }
    for (int i = 0; i < c->n_nodes; i++) {
        struct tensor *t = c->nodes[i];
        for (int s = 0; s < TENSOR_MAX_SRC; s++) {
            if (!t->src[s]) continue;
            struct tensor *o = mem_owner(t->src[s]);
            if (o->last_use < i) o->last_use = i;
        }
        if (t->op == OP_RESHAPE) { /* an alias keeps its owner alive as long as itself */
            struct tensor *o = mem_owner(t);
            if (o->last_use < t->last_use) o->last_use = t->last_use;
        }
    }
    /* RESHAPE aliases can be read after the owner's own readers: propagate once more */
    for (int i = c->n_nodes - 1; i >= 0; i--) {
        struct tensor *t = c->nodes[i];
        if (t->op == OP_RESHAPE) {
            struct tensor *o = mem_owner(t);
            if (o->last_use < t->last_use) o->last_use = t->last_use;
        }
    }
    /* hoisted: results made from weights only live as long as the plan */
    bool *is_const = NULL;
    if (hoist) {
        is_const = mem_alloc((size_t)(c->n_nodes > 0 ? c->n_nodes : 1) * sizeof *is_const);
        c->hoisted = mark_constants(c, is_const, &c->hoisted_bytes);
        if (c->hoisted)
            for (int i = 0; i < c->n_nodes; i++)
                if (is_const[i]) mem_owner(c->nodes[i])->last_use = c->n_nodes;
    }
    /* simulate: allocate at definition, free after last use */
    struct planner p = {0};
    int *dying_head = mem_alloc((size_t)(c->n_nodes + 1) * sizeof(int));
    int *dying_next = mem_alloc((size_t)c->n_nodes * sizeof(int));
    for (int i = 0; i <= c->n_nodes; i++) dying_head[i] = -1;
    /* inputs are written before the graph runs, so they live from the start, wherever the
       depth-first order happened to place them; so do hoisted results (a later run starts with
       them made, and must not let an earlier node write where they are) */
    for (int i = 0; i < c->n_nodes; i++) {
        struct tensor *t = c->nodes[i];
        if (needs_memory(t) && ((t->flags & TENSOR_FLAG_INPUT) || (c->hoisted && is_const[i]))) {
            t->offset = plan_alloc(&p, align_up(tensor_nbytes(t)));
            dying_next[i] = dying_head[t->last_use];
            dying_head[t->last_use] = i;
        }
    }
    for (int i = 0; i < c->n_nodes; i++) {
        struct tensor *t = c->nodes[i];
        if (needs_memory(t) && !(t->flags & TENSOR_FLAG_INPUT) && !(c->hoisted && is_const[i])) {
            t->offset = plan_alloc(&p, align_up(tensor_nbytes(t)));
            dying_next[i] = dying_head[t->last_use];
            dying_head[t->last_use] = i;
        }
        /* after node i ran, everything read for the last time by it is free again */
        for (int j = dying_head[i]; j >= 0; j = dying_next[j]) {
            struct tensor *dead = c->nodes[j];
            plan_free(&p, dead->offset, align_up(tensor_nbytes(dead)));
        }
        dying_head[i] = -1;
    }
    size_t need = p.top;
    mem_free(p.free_list);
    mem_free(dying_head);
    mem_free(dying_next);

    struct tscratch *s = c->scratch;
    if (need > s->peak) s->peak = need;
    if (need > s->size) {
        if (s->buf) backend_buf_free(s->backend, s->buf);
        s->buf = NULL;
        s->size = 0;
        void *buf = NULL;
        int rc = backend_buf_alloc(s->backend, need, &buf);
        if (rc) {
            tctx_fail(c, rc, "cannot allocate %.1f MiB of activation memory on %s", (double)need / (1 << 20),
                      s->backend->iface->name);
            return c->rc;
        }
        s->buf = buf;
        s->size = need;
    }
    for (int i = 0; i < c->n_nodes; i++) {
        struct tensor *t = c->nodes[i];
        if (needs_memory(t)) t->data = (char *)s->buf + t->offset;
    }
    for (int i = 0; i < c->n_nodes; i++) {
        struct tensor *t = c->nodes[i];
        if (t->op == OP_RESHAPE) t->data = t->src[0]->data; /* sources come first in order */
    }
    /* only computed nodes go to the backend */
    c->run = arena_alloc(&c->arena, (size_t)(c->n_nodes + 1) * sizeof *c->run);
    c->n_run = 0;
    for (int i = 0; i < c->n_nodes; i++)
        if (c->nodes[i]->op != OP_NONE && c->nodes[i]->op != OP_RESHAPE) c->run[c->n_run++] = c->nodes[i];
    if (c->hoisted) {
        c->run_var = arena_alloc(&c->arena, (size_t)(c->n_nodes + 1) * sizeof *c->run_var);
        for (int i = 0; i < c->n_nodes; i++)
            if (c->nodes[i]->op != OP_NONE && c->nodes[i]->op != OP_RESHAPE && !is_const[i])
                c->run_var[c->n_run_var++] = c->nodes[i];
        c->consts_plan = c->scratch->plans;
    }
    mem_free(is_const);
    if (c->stream && c->stream->n_blocks > 0) return plan_stream(c);
    return 0;
}

int tctx_set(struct tctx *c, struct tensor *t, const void *host) {
    if (c->rc) return c->rc;
    if (!t->data) return tctx_fail(c, STATUS_ERR_INVALID, "tctx_set on an unplanned tensor"), c->rc;
    int rc = backend_tensor_set(c->backend, t, host, 0, tensor_nbytes(t));
    if (rc) tctx_fail(c, rc, "copy to %s failed: %s", c->backend->iface->name, status_str(rc));
    return c->rc;
}

int tctx_get(struct tctx *c, const struct tensor *t, void *host) {
    if (c->rc) return c->rc;
    int rc = backend_tensor_get(c->backend, t, host, 0, tensor_nbytes(t));
    if (rc) tctx_fail(c, rc, "copy from %s failed: %s", c->backend->iface->name, status_str(rc));
    return c->rc;
}

void tctx_memo_set(struct tctx *c, const uint64_t key[TCTX_MEMO_KEY], struct tensor *const *io, int n_io) {
    ASSERT(n_io >= 0 && n_io <= TCTX_MEMO_IO);
    if (c->rc || !c->run) return;
    memcpy(c->memo_key, key, sizeof c->memo_key);
    memset(c->memo_io, 0, sizeof c->memo_io);
    memcpy(c->memo_io, io, (size_t)n_io * sizeof *io);
    c->memo_buf = c->scratch->buf;
    c->memo_buf_size = c->scratch->size;
    c->memo_valid = true;
}

bool tctx_memo_get(struct tctx *c, const uint64_t key[TCTX_MEMO_KEY], struct tensor **io, int n_io) {
    ASSERT(n_io >= 0 && n_io <= TCTX_MEMO_IO);
    static int reuse = -1; /* KILN_GRAPH_REUSE, read once */
    if (reuse < 0) {
        const char *e = getenv("KILN_GRAPH_REUSE");
        reuse = !(e && strcmp(e, "0") == 0);
    }
    if (!reuse || !c->memo_valid || c->rc || c->memo_buf != c->scratch->buf || c->memo_buf_size != c->scratch->size ||
        memcmp(c->memo_key, key, sizeof c->memo_key) != 0)
        return false;
    memcpy(io, c->memo_io, (size_t)n_io * sizeof *io);
    return true;
}

int tctx_run(struct tctx *c) {
    if (c->rc) return c->rc;
    /* hoisted: the nodes made from weights only ran already, and no other plan on the scratch
       has overwritten their results since */
    bool skip = c->hoisted && c->consts_ready && c->consts_plan == c->scratch->plans;
    int rc = skip ? backend_graph_run(c->backend, c->run_var, c->n_run_var, &c->err)
                  : backend_graph_run(c->backend, c->run, c->n_run, &c->err);
    if (!rc && c->hoisted && !skip) { /* made now, over whatever another plan left there */
        c->consts_ready = true;
        c->consts_plan = c->scratch->plans;
    }
    if (rc) {
        c->rc = rc;
        if (!c->err.code) err_set(&c->err, rc, "graph failed on %s: %s", c->backend->iface->name, status_str(rc));
    }
    return c->rc;
}
