/* model/nn.c -- shared blocks and the weight loader.
 * Owns: a loader's entry list (until finish) and the weight buffer it fills.
 * Threads: one device worker. */
#include "model/nn.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/mem.h"
#include "base/status.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NN_NAME_MAX 256
#define NN_PAD 256 /* each weight starts at a multiple of this many bytes of its buffer */

struct nn_loader_entry {
    struct nn_weight *w;            /* destination field */
    const struct ckpt_tensor *src;  /* checkpoint tensor */
    size_t offset;                  /* byte offset in the weight buffer */
    int64_t perm_c, perm_kk;        /* > 0: a conv weight [O, C, kh, kw] stored [O, kh, kw, C]
                                       (C channels, kk = kh kw taps) */
};

/* ===== Weights ===== */

uint64_t nn_load_id(void) {
    static atomic_uint_fast64_t loads; /* this module's on purpose: the process-wide counter */
    return atomic_fetch_add(&loads, 1) + 1;
}

void nn_weights_deinit(struct nn_weights *w) {
    if (w->published) wstore_unpublish(w->store, w->image, w->backend->device); /* before its memory goes */
    for (int i = 0; i < w->stream.n_blocks; i++)
        if (w->sblocks[i].home_device >= 0) backend_peer_free(w->backend, w->sblocks[i].home_device, (void *)w->sblocks[i].home);
    mem_free(w->sblocks);
    mem_free(w->blocks);
    if (w->buf) backend_buf_free(w->backend, w->buf);
    if (w->image) wstore_release(w->store, w->image);
    memset(w, 0, sizeof *w);
}

struct tensor *nn_w(struct tctx *c, const struct nn_weight *w) {
    if (!w->data) return NULL;
    struct tensor *t = tensor_weight(c, w->dtype, w->ndim, w->shape, w->data);
    if (t) t->stream_id = w->stream_id;
    return t;
}

struct tensor *nn_w_as(struct tctx *c, const struct nn_weight *w, enum dtype as) {
    if (!w->data) return NULL; /* an absent optional weight stays absent */
    return op_cast(c, nn_w(c, w), as);
}

struct tensor *nn_w_rows(struct tctx *c, const struct nn_weight *w, int64_t r0, int64_t n) {
    if (!w->data) return NULL;
    if (r0 < 0 || r0 + n > w->shape[0]) return tctx_fail(c, STATUS_ERR_INVALID, "weight row view out of range");
    int64_t shape[TENSOR_MAX_DIMS];
    memcpy(shape, w->shape, sizeof shape);
    shape[0] = n;
    size_t row = dtype_size(w->dtype);
    for (int i = 1; i < w->ndim; i++) row *= (size_t)w->shape[i];
    struct tensor *t = tensor_weight(c, w->dtype, w->ndim, shape, (char *)w->data + (size_t)r0 * row);
    if (t) t->stream_id = w->stream_id;
    return t;
}

/* ===== Blocks ===== */

/* x's dtype, for casting weights to it (F32 when x is NULL: the op then fails on x anyway). */
static enum dtype dt(const struct tensor *x) { return x ? x->dtype : DTYPE_F32; }

struct tensor *nn_linear(struct tctx *c, const struct nn_linear *l, struct tensor *x) {
    return op_linear(c, x, nn_w_as(c, &l->w, dt(x)), nn_w_as(c, &l->b, dt(x)));
}

/* nn_conv, with its bias or without (nn_conv_unbiased). */
static struct tensor *conv(struct tctx *c, const struct nn_conv *l, struct tensor *x, int stride, int pad, bool bias) {
    struct tensor *b = bias ? nn_w_as(c, &l->b, dt(x)) : NULL;
    if (!l->w.channels_last) return op_conv2d(c, x, nn_w_as(c, &l->w, dt(x)), b, stride, pad);
    const struct nn_weight *w = &l->w;
    if (w->shape[1] == 1 && w->shape[2] == 1 && stride == 1 && pad == 0 && w->data) {
        /* a pointwise conv over channels-last pixels is a linear over the last dim */
        struct tensor *wt = tensor_weight(c, w->dtype, 2, (int64_t[]){w->shape[0], w->shape[3]}, w->data);
        if (wt) wt->stream_id = w->stream_id;
        return op_linear(c, x, op_cast(c, wt, dt(x)), b);
    }
    return op_conv2d_nhwc(c, x, nn_w_as(c, w, dt(x)), b, stride, pad);
}

struct tensor *nn_conv(struct tctx *c, const struct nn_conv *l, struct tensor *x, int stride, int pad) {
    return conv(c, l, x, stride, pad, true);
}

struct tensor *nn_conv_unbiased(struct tctx *c, const struct nn_conv *l, struct tensor *x, int stride, int pad) {
    return conv(c, l, x, stride, pad, false);
}

struct tensor *nn_group_norm(struct tctx *c, const struct nn_norm *n, struct tensor *x, int groups, float eps,
                             bool silu) {
    return op_group_norm(c, x, nn_w_as(c, &n->w, dt(x)), nn_w_as(c, &n->b, dt(x)), groups, eps, silu);
}

struct tensor *nn_group_norm_nhwc(struct tctx *c, const struct nn_norm *n, struct tensor *x, int groups, float eps,
                                  bool silu) {
    return op_group_norm_nhwc(c, x, nn_w_as(c, &n->w, dt(x)), nn_w_as(c, &n->b, dt(x)), groups, eps, silu);
}

struct tensor *nn_group_norm_nhwc_add(struct tctx *c, const struct nn_norm *n, struct tensor *x, struct tensor *a,
                                      int groups, float eps, bool silu) {
    return op_group_norm_nhwc_add(c, x, a, nn_w_as(c, &n->w, dt(x)), nn_w_as(c, &n->b, dt(x)), groups, eps, silu);
}

struct tensor *nn_layer_norm(struct tctx *c, const struct nn_norm *n, struct tensor *x, float eps) {
    return op_layer_norm(c, x, nn_w_as(c, &n->w, dt(x)), nn_w_as(c, &n->b, dt(x)), eps);
}

struct tensor *nn_nchw_to_tokens(struct tctx *c, struct tensor *x) {
    if (!x) return NULL;
    int64_t s[3] = {x->shape[0], x->shape[1], x->shape[2] * x->shape[3]};
    return op_transpose(c, op_reshape(c, x, 3, s)); // [B, HW, C]
}

struct tensor *nn_tokens_to_nchw(struct tctx *c, struct tensor *x, int64_t h, int64_t w) {
    if (!x) return NULL;
    int64_t s[4] = {x->shape[0], x->shape[2], h, w};
    return op_reshape(c, op_transpose(c, x), 4, s); // [B, C, H, W]
}

/* ===== Loader ===== */

void nn_loader_init(struct nn_loader *ld, const struct ckpt *ck, struct backend *be, const char *prefix,
                    const struct nn_storage *st, struct err *err) {
    memset(ld, 0, sizeof *ld);
    ld->ck = ck;
    ld->backend = be;
    ld->prefix = prefix ? prefix : "";
    ld->storage = st ? *st : (struct nn_storage){.dtype = DTYPE_F32};
    ld->err = err;
    if (ld->storage.dtype != DTYPE_F32 && ld->storage.dtype != DTYPE_F16 && ld->storage.dtype != DTYPE_BF16)
        ld->rc = err_set(err, STATUS_ERR_INVALID, "weights of %s cannot be stored as %s", ck->path,
                         dtype_name(ld->storage.dtype));
}

void nn_loader_deinit(struct nn_loader *ld) {
    mem_free(ld->entries);
    ld->entries = NULL;
    ld->n = ld->cap = 0;
}

/* The stored shape equals the expected one up to trailing dims of size 1 (a 1x1 conv stored
 * as [O, C], a Linear stored as [O, C, 1, 1]). */
static bool shape_matches(const struct ckpt_tensor *t, int ndim, const int64_t *shape) {
    int n = t->ndim > ndim ? t->ndim : ndim;
    for (int i = 0; i < n; i++) {
        int64_t a = i < t->ndim ? t->shape[i] : 1, b = i < ndim ? shape[i] : 1;
        if (a != b) return false;
    }
    return true;
}

static void vbind(struct nn_loader *ld, struct nn_weight *w, bool required, int ndim, const int64_t *shape,
                  const char *fmt, va_list ap) {
    memset(w, 0, sizeof *w);
    if (ld->rc) return;
    char name[NN_NAME_MAX];
    int n = snprintf(name, sizeof name, "%s", ld->prefix);
    vsnprintf(name + n, sizeof name - (size_t)n, fmt, ap);
    const struct ckpt_tensor *t = ckpt_find(ld->ck, name);
    if (!t) {
        if (!required) return;
        ld->rc = err_set(ld->err, STATUS_ERR_FORMAT, "checkpoint %s has no tensor '%s'", ld->ck->path, name);
        return;
    }
    if (!shape_matches(t, ndim, shape)) {
        char got[128] = "", exp[128] = "";
        size_t o = 0;
        for (int i = 0; i < t->ndim && o < sizeof got; i++)
            o += (size_t)snprintf(got + o, sizeof got - o, "%s%lld", i ? "," : "", (long long)t->shape[i]);
        o = 0;
        for (int i = 0; i < ndim && o < sizeof exp; i++)
            o += (size_t)snprintf(exp + o, sizeof exp - o, "%s%lld", i ? "," : "", (long long)shape[i]);
        ld->rc = err_set(ld->err, STATUS_ERR_FORMAT, "checkpoint %s: tensor '%s' has shape [%s], expected [%s]",
                         ld->ck->path, name, got, exp);
        return;
    }
    if (t->dtype != DTYPE_F32 && t->dtype != DTYPE_F16 && t->dtype != DTYPE_BF16) {
        ld->rc = err_set(ld->err, STATUS_ERR_UNSUPPORTED, "checkpoint %s: tensor '%s' has unsupported dtype",
                         ld->ck->path, name);
        return;
    }
    w->dtype = ld->storage.dtype;
    w->ndim = ndim;
    for (int i = 0; i < TENSOR_MAX_DIMS; i++) w->shape[i] = i < ndim ? shape[i] : 1;
    if (ld->n == ld->cap) {
        ld->cap = ld->cap ? ld->cap * 2 : 256;
        ld->entries = mem_realloc(ld->entries, (size_t)ld->cap * sizeof *ld->entries);
    }
    ld->entries[ld->n++] = (struct nn_loader_entry){.w = w, .src = t};
}

void nn_bind(struct nn_loader *ld, struct nn_weight *w, bool required, int ndim, const int64_t *shape,
             const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vbind(ld, w, required, ndim, shape, fmt, ap);
    va_end(ap);
}

static void bind_suffix(struct nn_loader *ld, struct nn_weight *w, bool required, int ndim, const int64_t *shape,
                        const char *base, const char *suffix) {
    nn_bind(ld, w, required, ndim, shape, "%s.%s", base, suffix);
}

void nn_bind_linear(struct nn_loader *ld, struct nn_linear *l, int64_t n_in, int64_t n_out, bool has_bias,
                    const char *fmt, ...) {
    char base[NN_NAME_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(base, sizeof base, fmt, ap);
    va_end(ap);
    bind_suffix(ld, &l->w, true, 2, (int64_t[]){n_out, n_in}, base, "weight");
    if (has_bias)
        bind_suffix(ld, &l->b, true, 1, (int64_t[]){n_out}, base, "bias");
    else
        memset(&l->b, 0, sizeof l->b);
}

void nn_bind_conv(struct nn_loader *ld, struct nn_conv *l, int64_t c_in, int64_t c_out, int k, const char *fmt, ...) {
    char base[NN_NAME_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(base, sizeof base, fmt, ap);
    va_end(ap);
    bind_suffix(ld, &l->w, true, 4, (int64_t[]){c_out, c_in, k, k}, base, "weight");
    bind_suffix(ld, &l->b, true, 1, (int64_t[]){c_out}, base, "bias");
    struct nn_loader_entry *e = NULL;
    for (int i = ld->n - 1; i >= 0 && !e && l->w.ndim == 4; i--)
        if (ld->entries[i].w == &l->w) e = &ld->entries[i];
    if (ld->storage.channels_last && e) {
        l->w.channels_last = true;
        l->w.shape[1] = k;
        l->w.shape[2] = k;
        l->w.shape[3] = c_in;
        if (k > 1) {
            e->perm_c = c_in;
            e->perm_kk = (int64_t)k * k;
        }
    }
}

void nn_bind_norm(struct nn_loader *ld, struct nn_norm *n, int64_t ch, const char *fmt, ...) {
    char base[NN_NAME_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(base, sizeof base, fmt, ap);
    va_end(ap);
    bind_suffix(ld, &n->w, true, 1, (int64_t[]){ch}, base, "weight");
    bind_suffix(ld, &n->b, true, 1, (int64_t[]){ch}, base, "bias");
}

/* Converts one checkpoint tensor to `to` at dst (numel elements). stage holds numel floats when
 * a conversion through fp32 is needed (NULL otherwise is fine for same-dtype copies). */
/* Reads nbytes at offset of fd into dst with pread; false on any failure (the caller copies
 * from the mapping instead). Large reads go straight to the image: no page-fault per 4 KiB, and
 * several threads keep the disk's queue full, which is what a cold checkpoint needs. */
static bool read_at(int fd, void *dst, size_t nbytes, off_t offset) {
    char *p = dst;
    while (nbytes > 0) {
        ssize_t r = pread(fd, p, nbytes > ((size_t)1 << 30) ? ((size_t)1 << 30) : nbytes, offset);
        if (r <= 0) {
            if (r < 0 && errno == EINTR) continue;
            return false;
        }
        p += r;
        offset += r;
        nbytes -= (size_t)r;
    }
    return true;
}

/* Converts src to dtype `to` at dst. fd: the checkpoint opened for reading (or -1), map: the
 * start of its mapping (src->data's base), for same-dtype tensors read with pread. */
static int convert_tensor(const struct ckpt_tensor *src, enum dtype to, void *dst, float *stage, int fd,
                          const void *map, struct err *err) {
    if (src->dtype == to) {
        off_t offset = (off_t)((const char *)src->data - (const char *)map);
        if (fd < 0 || !read_at(fd, dst, src->nbytes, offset)) memcpy(dst, src->data, src->nbytes);
        return 0;
    }
    size_t n = (size_t)ckpt_tensor_numel(src);
    if (src->dtype == DTYPE_F16 && to == DTYPE_BF16) { /* the GPUs' VAE: no fp32 detour */
        f16_to_bf16_n(src->data, dst, n);
        return 0;
    }
    float *f = to == DTYPE_F32 ? dst : stage;
    int rc = ckpt_tensor_read_f32(src, f, err);
    if (rc || to == DTYPE_F32) return rc;
    uint16_t *h = dst;
    if (to == DTYPE_F16)
        for (size_t i = 0; i < n; i++) h[i] = f32_to_f16(f[i]);
    else
        for (size_t i = 0; i < n; i++) h[i] = f32_to_bf16(f[i]);
    return 0;
}

/* Reorders a converted conv weight [O, C, kk] (2- or 4-byte elements) to [O, kk, C] in place,
 * one output channel at a time through a temporary of C kk elements. */
static int permute_conv(void *data, size_t esize, int64_t numel, int64_t c, int64_t kk, const char *name,
                        struct err *err) {
    size_t slab = (size_t)(c * kk) * esize;
    char *tmp = mem_try_alloc(slab);
    if (!tmp) return err_set(err, STATUS_ERR_NOMEM, "out of host memory reordering '%s'", name);
    for (int64_t o = 0; o < numel / (c * kk); o++) {
        char *w = (char *)data + (size_t)o * slab;
        memcpy(tmp, w, slab);
        if (esize == 2) {
            uint16_t *d = (uint16_t *)w;
            const uint16_t *s = (const uint16_t *)tmp;
            for (int64_t ch = 0; ch < c; ch++)
                for (int64_t t = 0; t < kk; t++) d[t * c + ch] = s[ch * kk + t];
        } else {
            uint32_t *d = (uint32_t *)w;
            const uint32_t *s = (const uint32_t *)tmp;
            for (int64_t ch = 0; ch < c; ch++)
                for (int64_t t = 0; t < kk; t++) d[t * c + ch] = s[ch * kk + t];
        }
    }
    mem_free(tmp);
    return 0;
}

/* convert_tensor for entry e, then the channels-last reorder it asks for. */
static int convert_entry(const struct nn_loader *ld, const struct nn_loader_entry *e, void *dst, float *stage, int fd,
                         struct err *err) {
    int rc = convert_tensor(e->src, ld->storage.dtype, dst, stage, fd, ld->ck->map, err);
    if (rc || e->perm_c <= 0) return rc;
    return permute_conv(dst, dtype_size(ld->storage.dtype), ckpt_tensor_numel(e->src), e->perm_c, e->perm_kk,
                        e->src->name, err);
}

/* Elements of the largest tensor that needs a conversion through fp32 (the staging size). */
static size_t stage_elems(const struct nn_loader *ld) {
    size_t m = 0;
    for (int i = 0; i < ld->n; i++) {
        const struct ckpt_tensor *t = ld->entries[i].src;
        size_t n = (size_t)ckpt_tensor_numel(t);
        if (t->dtype != ld->storage.dtype && ld->storage.dtype != DTYPE_F32 && n > m) m = n;
    }
    return m;
}

#define FILL_THREADS 8 /* reading a cold checkpoint: parallel page faults read ahead in parallel */

struct fill_part {
    struct nn_loader *ld;
    char *image;
    int fd;              /* the checkpoint, opened for pread, or -1 */
    int first, step;     /* the entries first, first + step, ... */
    int rc;
    struct err err;
};

static void *fill_part_run(void *p) {
    struct fill_part *f = p;
    struct nn_loader *ld = f->ld;
    size_t sn = stage_elems(ld);
    float *stage = sn ? mem_try_alloc(sn * sizeof(float)) : NULL;
    if (sn && !stage) {
        f->rc = err_set(&f->err, STATUS_ERR_NOMEM, "out of host memory converting the weights of %s", ld->ck->path);
        return NULL;
    }
    size_t esize = dtype_size(ld->storage.dtype);
    for (int i = f->first; i < ld->n && !f->rc; i += f->step) {
        const struct nn_loader_entry *e = &ld->entries[i];
        f->rc = convert_entry(ld, e, f->image + e->offset, stage, f->fd, &f->err);
        /* the alignment gap after it (nn_loader_finish pads entries to NN_PAD): deterministic bytes */
        size_t bytes = (size_t)ckpt_tensor_numel(e->src) * esize;
        memset(f->image + e->offset + bytes, 0, ((bytes + NN_PAD - 1) & ~(size_t)(NN_PAD - 1)) - bytes);
    }
    mem_free(stage);
    return NULL;
}

/* Writes every entry, converted, at its offset of image (total bytes), on up to FILL_THREADS
 * threads (entries dealt round-robin). wstore_fill_fn. */
static int fill_image(void *user, void *image, size_t total, struct err *err) {
    struct nn_loader *ld = user;
    ld->filled = true;
    (void)total; /* every byte is written by the parts: the entries and their gaps (no first pass over
                    fresh memory: its page faults then happen in parallel, in the reads) */
    int n = ld->n < FILL_THREADS ? (ld->n > 0 ? ld->n : 1) : FILL_THREADS;
    /* the same file as the mapping (same device and inode), else the mapping is read */
    int fd = open(ld->ck->path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd >= 0 && (fstat(fd, &st) != 0 || (uint64_t)st.st_dev != ld->ck->file_dev ||
                    (uint64_t)st.st_ino != ld->ck->file_ino)) {
        close(fd);
        fd = -1;
    }
    struct fill_part parts[FILL_THREADS];
    pthread_t tid[FILL_THREADS];
    bool started[FILL_THREADS] = {false};
    for (int t = 0; t < n; t++) {
        parts[t] = (struct fill_part){.ld = ld, .image = image, .fd = fd, .first = t, .step = n};
        if (t > 0) started[t] = pthread_create(&tid[t], NULL, fill_part_run, &parts[t]) == 0;
    }
    fill_part_run(&parts[0]);
    for (int t = 1; t < n; t++) {
        if (started[t]) pthread_join(tid[t], NULL);
        else fill_part_run(&parts[t]); /* no thread: do its share here */
    }
    if (fd >= 0) close(fd);
    for (int t = 0; t < n; t++) {
        if (!parts[t].rc) continue;
        *err = parts[t].err;
        return parts[t].rc;
    }
    return 0;
}

/* A 1-d view of size bytes at data, for backend copies. */
static struct tensor byte_view(void *data, size_t size) {
    return (struct tensor){.dtype = DTYPE_I32, .ndim = 1, .shape = {(int64_t)(size / 4), 1, 1, 1}, .data = data};
}

/* Without a store: each tensor converted in a host staging buffer, then uploaded. */
static int finish_direct(struct nn_loader *ld, struct nn_weights *out) {
    out->read_file = true;
    int rc = backend_buf_alloc(ld->backend, out->size ? out->size : 1, &out->buf);
    if (rc)
        return err_set(ld->err, rc, "cannot allocate %.1f MiB for the weights of %s on %s",
                       (double)out->size / (1 << 20), ld->ck->path, ld->backend->iface->name);
    void *stage = NULL;
    size_t stage_n = 0;
    for (int i = 0; i < ld->n && !rc; i++) {
        struct nn_loader_entry *e = &ld->entries[i];
        size_t n = (size_t)ckpt_tensor_numel(e->src), bytes = n * sizeof(float);
        if (bytes > stage_n) {
            mem_free(stage);
            stage = mem_try_alloc(2 * bytes); /* the converted tensor, then fp32 staging */
            stage_n = stage ? bytes : 0;
            if (!stage) {
                rc = err_set(ld->err, STATUS_ERR_NOMEM, "out of host memory converting '%s'", e->src->name);
                break;
            }
        }
        rc = convert_entry(ld, e, stage, (float *)((char *)stage + stage_n), -1, ld->err);
        if (rc) break;
        size_t nbytes = n * dtype_size(ld->storage.dtype);
        struct tensor view = byte_view((char *)out->buf + e->offset, (nbytes + 3) & ~(size_t)3);
        rc = backend_tensor_set(ld->backend, &view, stage, 0, nbytes);
        if (rc) err_set(ld->err, rc, "uploading '%s' to %s failed", e->src->name, ld->backend->iface->name);
    }
    mem_free(stage);
    return rc;
}

/* Stand-in weights (nn_storage.stand_in): one zeroed buffer the size of the largest weight, which
 * every weight points at. Nothing is read from the file. */
static int finish_stand_in(struct nn_loader *ld, struct nn_weights *out) {
    size_t largest = 4, esize = dtype_size(ld->storage.dtype);
    for (int i = 0; i < ld->n; i++) {
        size_t b = (size_t)ckpt_tensor_numel(ld->entries[i].src) * esize;
        if (b > largest) largest = b;
    }
    largest = (largest + NN_PAD - 1) & ~(size_t)(NN_PAD - 1);
    int rc = backend_buf_alloc(ld->backend, largest, &out->buf);
    if (rc)
        return err_set(ld->err, rc, "cannot allocate %.1f MiB of stand-in weights for %s on %s",
                       (double)largest / (1 << 20), ld->ck->path, ld->backend->iface->name);
    out->size = largest;
    void *zeros = mem_try_calloc(1, largest);
    if (!zeros) return err_set(ld->err, STATUS_ERR_NOMEM, "out of host memory for %zu bytes of zeros", largest);
    struct tensor view = byte_view(out->buf, largest);
    rc = backend_tensor_set(ld->backend, &view, zeros, 0, largest);
    mem_free(zeros);
    if (rc) return err_set(ld->err, rc, "zeroing stand-in weights on %s failed", ld->backend->iface->name);
    for (int i = 0; i < ld->n; i++) ld->entries[i].w->data = out->buf;
    return 0;
}

/* ===== Placement ===== */

void nn_block_name(const char *key, char *buf, size_t n) {
    const char *dot = strchr(key, '.');
    size_t len = dot ? (size_t)(dot - key) : strlen(key);
    if (dot && len >= 6 && memcmp(dot - 6, "blocks", 6) == 0) {
        const char *p = dot + 1;
        while (*p >= '0' && *p <= '9') p++;
        if (p > dot + 1 && (*p == '.' || *p == 0)) len = (size_t)(p - key);
    }
    if (len >= n) len = n - 1;
    memcpy(buf, key, len);
    buf[len] = 0;
}

/* The block name of entry i (its key without the loader's prefix). */
static void entry_block(const struct nn_loader *ld, int i, char *buf, size_t n) {
    const char *key = ld->entries[i].src->name;
    size_t pl = strlen(ld->prefix);
    if (strncmp(key, ld->prefix, pl) == 0) key += pl;
    nn_block_name(key, buf, n);
}

/* Reorders the entries so that each block's are contiguous, blocks in order of first binding
 * (stable: a network bound block by block keeps its order). Done for every load, so the host
 * image has one layout whether or not a load places blocks elsewhere. */
static void group_entries(struct nn_loader *ld) {
    if (ld->n < 2) return;
    char(*names)[NN_BLOCK_NAME_MAX] = mem_alloc((size_t)ld->n * sizeof *names);
    int *rank = mem_alloc((size_t)ld->n * sizeof *rank);
    int n_blocks = 0;
    bool sorted = true;
    for (int i = 0; i < ld->n; i++) {
        entry_block(ld, i, names[i], sizeof names[i]);
        rank[i] = -1;
        for (int j = i - 1; j >= 0; j--) /* the block's rank: that of an earlier entry with the name */
            if (strcmp(names[j], names[i]) == 0) { rank[i] = rank[j]; break; }
        if (rank[i] < 0) rank[i] = n_blocks++;
        if (i && rank[i] < rank[i - 1]) sorted = false;
    }
    if (!sorted) {
        struct nn_loader_entry *out = mem_alloc((size_t)ld->n * sizeof *out);
        int k = 0;
        for (int r = 0; r < n_blocks; r++)
            for (int i = 0; i < ld->n; i++)
                if (rank[i] == r) out[k++] = ld->entries[i];
        memcpy(ld->entries, out, (size_t)ld->n * sizeof *out);
        mem_free(out);
    }
    mem_free(rank);
    mem_free(names);
}

/* The blocks of the (grouped) entries, with their image ranges; *n_out of them. */
static struct nn_block *list_blocks(const struct nn_loader *ld, size_t total, int *n_out) {
    struct nn_block *b = mem_calloc((size_t)(ld->n ? ld->n : 1), sizeof *b);
    int n = 0;
    char name[NN_BLOCK_NAME_MAX];
    for (int i = 0; i < ld->n; i++) {
        entry_block(ld, i, name, sizeof name);
        if (n == 0 || strcmp(b[n - 1].name, name) != 0) {
            snprintf(b[n].name, sizeof b[n].name, "%s", name);
            b[n].offset = ld->entries[i].offset;
            b[n].home = NN_HOME_DEVICE;
            b[n].peer_device = -1;
            n++;
        }
    }
    for (int i = 0; i < n; i++) b[i].bytes = (i + 1 < n ? b[i + 1].offset : total) - b[i].offset;
    *n_out = n;
    return b;
}

/* Index of the block holding image offset off (blocks sorted by offset). */
static int block_of_offset(const struct nn_block *b, int n, size_t off) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (b[mid].offset <= off) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

/* The weights with some blocks elsewhere: buf = the resident blocks packed, then the staging
 * slots; host blocks stream from the image, peer blocks from a copy on their GPU. */
static int finish_placed(struct nn_loader *ld, struct nn_weights *out, struct nn_block *blocks, int nb) {
    const char *path = ld->ck->path, *be_name = ld->backend->iface->name;
    size_t resident = 0, slot = 0;
    int n_streamed = 0;
    for (int i = 0; i < nb; i++) {
        if (blocks[i].home == NN_HOME_DEVICE) {
            resident += blocks[i].bytes;
            out->bytes_device += blocks[i].bytes;
            continue;
        }
        if (blocks[i].home == NN_HOME_PEER) out->bytes_peer += blocks[i].bytes;
        else out->bytes_host += blocks[i].bytes;
        if (blocks[i].bytes > slot) slot = blocks[i].bytes;
        n_streamed++;
    }
    int n_slots = n_streamed > 1 ? 2 : 1;
    out->slot_bytes = slot;
    out->blocks = blocks;
    out->n_blocks = nb;
    out->sblocks = mem_calloc((size_t)n_streamed, sizeof *out->sblocks);
    size_t size = resident + (size_t)n_slots * slot;
    int rc = backend_buf_alloc(ld->backend, size ? size : 1, &out->buf);
    if (rc)
        return err_set(ld->err, rc, "cannot allocate %.1f MiB for the resident weights and staging of %s on %s",
                       (double)size / (1 << 20), path, be_name);
    /* resident blocks packed at the start; where each block's bytes are read from */
    size_t *base = mem_alloc((size_t)nb * sizeof *base); /* per block: its bytes' address - block offset */
    int *sid = mem_calloc((size_t)nb, sizeof *sid);       /* per block: its weights' stream_id (0 = resident) */
    size_t at = 0;
    int k = 0;
    for (int i = 0; i < nb && !rc; i++) {
        const struct nn_block *b = &blocks[i];
        const char *img = (const char *)out->image->buf + b->offset;
        if (b->home == NN_HOME_DEVICE) {
            struct tensor view = byte_view((char *)out->buf + at, b->bytes);
            rc = backend_tensor_set(ld->backend, &view, img, 0, b->bytes);
            if (rc) err_set(ld->err, rc, "uploading block %s of %s to %s failed", b->name, path, be_name);
            base[i] = (size_t)((char *)out->buf + at) - b->offset;
            at += b->bytes;
            continue;
        }
        struct tstream_block *sb = &out->sblocks[k];
        snprintf(sb->name, sizeof sb->name, "%s", b->name);
        sb->bytes = b->bytes;
        sb->slot_index = k % n_slots;
        sb->slot = (char *)out->buf + resident + (size_t)sb->slot_index * slot;
        sb->home = img;
        sb->home_device = -1;
        if (b->home == NN_HOME_PEER) {
            void *peer = NULL;
            rc = backend_peer_upload(ld->backend, b->peer_device, img, b->bytes, &peer);
            if (rc) {
                err_set(ld->err, rc, "cannot keep block %s of %s (%.1f MiB) on device %d for %s", b->name, path,
                        (double)b->bytes / (1 << 20), b->peer_device, be_name);
                break;
            }
            sb->home = peer;
            sb->home_device = b->peer_device;
        }
        base[i] = (size_t)sb->slot - b->offset;
        sid[i] = ++k;
        out->stream.n_blocks = k; /* deinit frees the peer copies made so far */
    }
    if (!rc) {
        for (int i = 0; i < ld->n; i++) {
            struct nn_loader_entry *e = &ld->entries[i];
            int b = block_of_offset(blocks, nb, e->offset);
            e->w->data = (void *)(base[b] + e->offset);
            e->w->stream_id = sid[b];
        }
        out->stream = (struct tstream){.blocks = out->sblocks, .n_blocks = k, .n_slots = n_slots,
                                       .no_prefetch = ld->storage.no_prefetch};
    }
    mem_free(base);
    mem_free(sid);
    return rc;
}

/* wstore_borrow's filter: a device this backend reads directly. */
static bool peer_usable(void *backend, int device) { return backend_peer_reachable(backend, device); }

/* With a store: the shared image, used in place (host backends) or uploaded in one copy: from
 * another device's copy of it when one is listed and directly reachable, else from host memory;
 * the result is listed for the next device (wstore device copies). */
static int finish_stored(struct nn_loader *ld, struct nn_weights *out) {
    const struct ckpt *ck = ld->ck;
    char key[WSTORE_KEY_MAX];
    snprintf(key, sizeof key, "%s|dev %llu ino %llu mtime %lld size %zu|%s|%s|%d tensors", ck->path,
             (unsigned long long)ck->file_dev, (unsigned long long)ck->file_ino, (long long)ck->file_mtime_ns,
             ck->map_size, ld->prefix, dtype_name(ld->storage.dtype), ld->n);
    if (ld->storage.channels_last) /* another byte order: another image */
        snprintf(key + strlen(key), sizeof key - strlen(key), "|channels last");
    bool host = backend_host_buffers(ld->backend);
    int rc = wstore_acquire(ld->storage.store, key, out->size, fill_image, ld, host ? NULL : ld->backend->iface,
                            &out->image, ld->err);
    if (rc) return rc;
    out->store = ld->storage.store;
    out->read_file = ld->filled;
    if (ld->storage.fill_only) return 0; /* the reference is what the caller wanted */
    if (ld->storage.place) { /* the place function may move blocks off the device */
        int nb = 0;
        struct nn_block *blocks = list_blocks(ld, out->size, &nb);
        rc = ld->storage.place(ld->storage.place_user, blocks, nb, out->size, ld->err);
        bool moved = false;
        for (int i = 0; i < nb && !rc; i++) moved |= blocks[i].home != NN_HOME_DEVICE;
        if (rc || !moved) {
            mem_free(blocks);
            if (rc) return rc;
        } else {
            return finish_placed(ld, out, blocks, nb); /* out owns blocks now */
        }
    }
    if (host) {
        for (int i = 0; i < ld->n; i++) ld->entries[i].w->data = (char *)out->image->buf + ld->entries[i].offset;
        return 0;
    }
    rc = backend_buf_alloc(ld->backend, out->size ? out->size : 1, &out->buf);
    if (rc)
        return err_set(ld->err, rc, "cannot allocate %.1f MiB for the weights of %s on %s",
                       (double)out->size / (1 << 20), ck->path, ld->backend->iface->name);
    /* another device's resident copy, when this one reads it directly (faster than host memory) */
    int from = -1;
    const void *src = NULL;
    double t0 = clock_now();
    if (!out->read_file && wstore_borrow(out->store, out->image, ld->backend->device, peer_usable, ld->backend, &from,
                                         &src)) {
        int prc = backend_peer_copy(ld->backend, out->buf, from, src, out->size);
        wstore_return(out->store, out->image, from);
        if (prc) {
            log_warn("weights of %s: copy from device %d failed (%s); uploading from host memory", ck->path, from,
                     status_str(prc));
            from = -1;
        } else {
            log_info("%s %d: %.1f MiB of weights of %s (%s) copied from %s %d in %.3f s", ld->backend->iface->name,
                     ld->backend->device, (double)out->size / (1 << 20), ck->path, ld->prefix, ld->backend->iface->name,
                     from, clock_now() - t0);
        }
    }
    if (from < 0) {
        struct tensor view = byte_view(out->buf, out->size);
        rc = backend_tensor_set(ld->backend, &view, out->image->buf, 0, out->size);
        if (rc)
            return err_set(ld->err, rc, "uploading %.1f MiB of weights of %s to %s failed", (double)out->size / (1 << 20),
                           ck->path, ld->backend->iface->name);
    }
    if (wstore_publish(out->store, out->image, ld->backend->device, out->buf)) out->published = true;
    return 0;
}

int nn_loader_finish(struct nn_loader *ld, struct nn_weights *out) {
    memset(out, 0, sizeof *out);
    out->backend = ld->backend;
    if (ld->rc) {
        nn_loader_deinit(ld);
        return ld->rc;
    }
    group_entries(ld);
    size_t total = 0, esize = dtype_size(ld->storage.dtype);
    for (int i = 0; i < ld->n; i++) {
        ld->entries[i].offset = total;
        total += ((size_t)ckpt_tensor_numel(ld->entries[i].src) * esize + NN_PAD - 1) & ~(size_t)(NN_PAD - 1);
    }
    out->size = total;
    out->n_tensors = ld->n;
    int rc = ld->storage.stand_in ? finish_stand_in(ld, out)
             : ld->storage.store  ? finish_stored(ld, out)
                                  : finish_direct(ld, out);
    if (!rc && out->buf && !out->blocks && !ld->storage.stand_in)
        for (int i = 0; i < ld->n; i++) ld->entries[i].w->data = (char *)out->buf + ld->entries[i].offset;
    nn_loader_deinit(ld);
    if (rc) {
        nn_weights_deinit(out);
        ld->rc = rc;
    }
    return rc;
}

const struct ckpt_tensor *nn_probe(const struct ckpt *ck, const char *prefix, const char *fmt, ...) {
    char name[NN_NAME_MAX];
    int n = snprintf(name, sizeof name, "%s", prefix);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name + n, sizeof name - (size_t)n, fmt, ap);
    va_end(ap);
    return ckpt_find(ck, name);
}
