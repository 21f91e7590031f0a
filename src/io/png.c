/* io/png.c -- PNG encode/decode through libspng, with text chunks.
 * Owns: the spng contexts it creates (freed before returning).
 * Must not: touch image semantics beyond 8-bit conversion.
 * Threads: any.
 * Ownership: see png.h. libspng allocates through our counted allocator. */
#include "io/png.h"

#include "base/mem.h"
#include "base/status.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <spng.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <pthread.h>

/* libspng allocates with these, so its memory shows in mem_used(). */
static void *spng_malloc(size_t n) { return mem_try_alloc(n); }
static void *spng_realloc(void *p, size_t n) { return mem_try_realloc(p, n); }
static void *spng_calloc(size_t n, size_t size) { return mem_try_calloc(n, size); }
static void spng_free(void *p) { mem_free(p); }

static struct spng_alloc counted = {
    .malloc_fn = spng_malloc, .realloc_fn = spng_realloc, .calloc_fn = spng_calloc, .free_fn = spng_free};

/* ===== Pixels ===== */

void png_from_float(const float *src, uint8_t *dst, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = 255.0f * src[i];
        if (!(v > 0.0f)) v = 0.0f; /* also NaN */
        if (v > 255.0f) v = 255.0f;
        dst[i] = (uint8_t)v;
    }
}

/* ===== Encoding ===== */

int png_encode(const uint8_t *pixels, uint32_t w, uint32_t h, int channels, const struct png_text *text, int n_text,
               int level, void **out, size_t *out_len, struct err *err) {
    *out = NULL;
    *out_len = 0;
    if ((channels != 3 && channels != 4) || w == 0 || h == 0)
        return err_set(err, STATUS_ERR_INVALID, "PNG: cannot encode %ux%u with %d channels", w, h, channels);
    spng_ctx *ctx = spng_ctx_new2(&counted, SPNG_CTX_ENCODER);
    if (!ctx) return err_set(err, STATUS_ERR_NOMEM, "PNG: out of memory creating the encoder");
    struct spng_text *chunks = NULL;
    int rc = 0, e;
    spng_set_option(ctx, SPNG_ENCODE_TO_BUFFER, 1);
    spng_set_option(ctx, SPNG_IMG_COMPRESSION_LEVEL, level < 0 ? 0 : level > 9 ? 9 : level);
    struct spng_ihdr ihdr = {
        .width = w,
        .height = h,
        .bit_depth = 8,
        .color_type = channels == 4 ? SPNG_COLOR_TYPE_TRUECOLOR_ALPHA : SPNG_COLOR_TYPE_TRUECOLOR,
    };
    if ((e = spng_set_ihdr(ctx, &ihdr))) {
        rc = err_set(err, STATUS_ERR_INVALID, "PNG: bad header %ux%u: %s", w, h, spng_strerror(e));
        goto done;
    }
    if (n_text > 0) {
        chunks = mem_calloc((size_t)n_text, sizeof *chunks);
        for (int i = 0; i < n_text; i++) {
            size_t klen = strlen(text[i].key);
            if (klen == 0 || klen > 79) {
                rc = err_set(err, STATUS_ERR_INVALID, "PNG: text keyword '%s' must have 1 to 79 characters",
                             text[i].key);
                goto done;
            }
            memcpy(chunks[i].keyword, text[i].key, klen);
            chunks[i].type = SPNG_TEXT;
            chunks[i].text = (char *)text[i].text;
            chunks[i].length = strlen(text[i].text);
        }
        if ((e = spng_set_text(ctx, chunks, (uint32_t)n_text))) {
            rc = err_set(err, STATUS_ERR_INVALID, "PNG: bad text chunk: %s", spng_strerror(e));
            goto done;
        }
    }
    size_t len = (size_t)w * h * (size_t)channels;
    if ((e = spng_encode_image(ctx, pixels, len, SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE))) {
        rc = err_set(err, e == SPNG_EMEM ? STATUS_ERR_NOMEM : STATUS_ERR_INTERNAL, "PNG: encoding failed: %s",
                     spng_strerror(e));
        goto done;
    }
    void *buf = spng_get_png_buffer(ctx, out_len, &e);
    if (!buf) {
        rc = err_set(err, STATUS_ERR_INTERNAL, "PNG: no output buffer: %s", spng_strerror(e));
        goto done;
    }
    *out = buf; /* allocated by spng_malloc: mem_free releases it */
done:
    mem_free(chunks);
    spng_ctx_free(ctx);
    return rc;
}

/* Writes buf to path, opened with flags (O_TRUNC to replace, O_EXCL to refuse an existing
 * file: STATUS_ERR_EXISTS without a message, so the caller can pick another name). */
static int write_file(const char *path, int flags, const void *buf, size_t len, struct err *err) {
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | flags, 0644);
    if (fd < 0) {
        if (errno == EEXIST && (flags & O_EXCL)) return STATUS_ERR_EXISTS;
        return err_set(err, STATUS_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    }
    int rc = 0;
    for (size_t off = 0; off < len && !rc;) {
        ssize_t n = write(fd, (const char *)buf + off, len - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) rc = err_set(err, STATUS_ERR_IO, "writing %s: %s", path, strerror(errno));
        else off += (size_t)n;
    }
    if (close(fd) != 0 && !rc) rc = err_set(err, STATUS_ERR_IO, "writing %s: %s", path, strerror(errno));
    if (rc) unlink(path);
    return rc;
}

static int encode_and_write(const char *path, int flags, const uint8_t *pixels, uint32_t w, uint32_t h,
                            int channels, const struct png_text *text, int n_text, int level, struct err *err) {
    void *buf;
    size_t len;
    int rc = png_encode(pixels, w, h, channels, text, n_text, level, &buf, &len, err);
    if (rc) return rc;
    rc = write_file(path, flags, buf, len, err);
    mem_free(buf);
    return rc;
}

int png_write(const char *path, const uint8_t *pixels, uint32_t w, uint32_t h, int channels,
              const struct png_text *text, int n_text, int level, struct err *err) {
    return encode_and_write(path, O_TRUNC, pixels, w, h, channels, text, n_text, level, err);
}

int png_write_new(const char *path, const uint8_t *pixels, uint32_t w, uint32_t h, int channels,
                  const struct png_text *text, int n_text, int level, struct err *err) {
    return encode_and_write(path, O_EXCL, pixels, w, h, channels, text, n_text, level, err);
}

int png_save_new(const char *path, const void *data, size_t len, struct err *err) {
    return write_file(path, O_EXCL, data, len, err);
}

struct encode_job {
    const uint8_t *const *pixels;
    uint32_t w, h;
    int channels, n_text, level;
    const struct png_text *text;
    void **outs;
    size_t *lens;
    int *rcs;
    struct err *errs;
    int next, n;            /* the next image to take, under mu */
    pthread_mutex_t mu;
};

static void *encode_worker(void *p) {
    struct encode_job *j = p;
    for (;;) {
        pthread_mutex_lock(&j->mu);
        int i = j->next < j->n ? j->next++ : -1;
        pthread_mutex_unlock(&j->mu);
        if (i < 0) return NULL;
        j->rcs[i] = png_encode(j->pixels[i], j->w, j->h, j->channels, j->text, j->n_text, j->level, &j->outs[i],
                               &j->lens[i], &j->errs[i]);
    }
}

int png_encode_many(const uint8_t *const *pixels, int n, uint32_t w, uint32_t h, int channels,
                    const struct png_text *text, int n_text, int level, int threads, void **outs, size_t *lens,
                    struct err *err) {
    if (n <= 0) return 0;
    struct encode_job j = {.pixels = pixels, .w = w, .h = h, .channels = channels, .n_text = n_text, .level = level,
                           .text = text, .outs = outs, .lens = lens, .n = n, .mu = PTHREAD_MUTEX_INITIALIZER};
    j.rcs = mem_calloc((size_t)n, sizeof *j.rcs);
    j.errs = mem_calloc((size_t)n, sizeof *j.errs);
    for (int i = 0; i < n; i++) outs[i] = NULL;
    if (threads > n) threads = n;
    if (threads > 16) threads = 16;
    pthread_t tid[16];
    int started = 0;
    for (int t = 1; t < threads; t++) /* the caller is worker 0 */
        if (pthread_create(&tid[started], NULL, encode_worker, &j) == 0) started++;
    encode_worker(&j);
    for (int t = 0; t < started; t++) pthread_join(tid[t], NULL);
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        if (!j.rcs[i]) continue;
        rc = j.rcs[i];
        *err = j.errs[i];
        err_prefix(err, "image %d of %d", i + 1, n);
    }
    if (rc)
        for (int i = 0; i < n; i++) {
            mem_free(outs[i]);
            outs[i] = NULL;
        }
    mem_free(j.rcs);
    mem_free(j.errs);
    pthread_mutex_destroy(&j.mu);
    return rc;
}

/* ===== Decoding ===== */

void png_image_deinit(struct png_image *img) {
    if (!img) return;
    mem_free(img->rgba);
    for (int i = 0; i < img->n_text; i++) {
        mem_free(img->text_keys[i]);
        mem_free(img->text_values[i]);
    }
    mem_free(img->text_keys);
    mem_free(img->text_values);
    memset(img, 0, sizeof *img);
}

const char *png_image_text(const struct png_image *img, const char *key) {
    for (int i = 0; i < img->n_text; i++)
        if (strcmp(img->text_keys[i], key) == 0) return img->text_values[i];
    return NULL;
}

int png_decode(const void *data, size_t len, struct png_image *img, struct err *err) {
    memset(img, 0, sizeof *img);
    spng_ctx *ctx = spng_ctx_new2(&counted, 0);
    if (!ctx) return err_set(err, STATUS_ERR_NOMEM, "PNG: out of memory creating the decoder");
    int rc = 0, e;
    struct spng_text *chunks = NULL;
    spng_set_crc_action(ctx, SPNG_CRC_ERROR, SPNG_CRC_DISCARD);
    spng_set_png_buffer(ctx, data, len);
    struct spng_ihdr ihdr;
    if ((e = spng_get_ihdr(ctx, &ihdr))) {
        rc = err_set(err, STATUS_ERR_FORMAT, "not a valid PNG: %s", spng_strerror(e));
        goto done;
    }
    size_t out_len;
    if ((e = spng_decoded_image_size(ctx, SPNG_FMT_RGBA8, &out_len))) {
        rc = err_set(err, STATUS_ERR_FORMAT, "PNG: %s", spng_strerror(e));
        goto done;
    }
    img->rgba = mem_try_alloc(out_len);
    if (!img->rgba) {
        rc = err_set(err, STATUS_ERR_NOMEM, "PNG: out of memory for a %ux%u image", ihdr.width, ihdr.height);
        goto done;
    }
    /* No tRNS expansion: PIL keeps tRNS as "transparency" info, not an alpha band. */
    if ((e = spng_decode_image(ctx, img->rgba, out_len, SPNG_FMT_RGBA8, 0))) {
        rc = err_set(err, STATUS_ERR_FORMAT, "PNG: decoding failed: %s", spng_strerror(e));
        goto done;
    }
    img->w = ihdr.width;
    img->h = ihdr.height;
    img->has_alpha = ihdr.color_type == SPNG_COLOR_TYPE_GRAYSCALE_ALPHA ||
                     ihdr.color_type == SPNG_COLOR_TYPE_TRUECOLOR_ALPHA;

    uint32_t n = 0;
    e = spng_get_text(ctx, NULL, &n);
    if (e == 0 && n > 0) {
        chunks = mem_calloc(n, sizeof *chunks);
        if (spng_get_text(ctx, chunks, &n) == 0) {
            img->text_keys = mem_calloc(n, sizeof *img->text_keys);
            img->text_values = mem_calloc(n, sizeof *img->text_values);
            for (uint32_t i = 0; i < n; i++) {
                img->text_keys[i] = mem_strdup(chunks[i].keyword);
                img->text_values[i] = mem_strndup(chunks[i].text, chunks[i].length);
            }
            img->n_text = (int)n;
        }
    }
done:
    mem_free(chunks);
    spng_ctx_free(ctx);
    if (rc) png_image_deinit(img);
    return rc;
}

int png_read(const char *path, struct png_image *img, struct err *err) {
    memset(img, 0, sizeof *img);
    FILE *f = fopen(path, "rb");
    if (!f) return err_set(err, errno == ENOENT ? STATUS_ERR_NOT_FOUND : STATUS_ERR_IO, "cannot open %s: %s", path,
                           strerror(errno));
    int rc = 0;
    size_t cap = 1 << 16, len = 0;
    unsigned char *buf = mem_alloc(cap);
    for (;;) {
        if (len == cap) buf = mem_realloc(buf, cap *= 2);
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
    }
    if (ferror(f)) rc = err_set(err, STATUS_ERR_IO, "reading %s: %s", path, strerror(errno));
    fclose(f);
    if (!rc) {
        rc = png_decode(buf, len, img, err);
        if (rc) err_prefix(err, "%s", path);
    }
    mem_free(buf);
    return rc;
}
