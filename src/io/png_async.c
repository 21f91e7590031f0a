/* io/png_async.c -- PNG encoding of a batch's images while their producer makes the next ones.
 * Owns: struct png_async (see png_async.h): ENCODERS encoder threads, their queue of submitted
 * images, the text chunks' copies and the finished PNGs until taken.
 * Threads: the owner's thread and the encoder threads, which share `submitted`, `next`, `done`,
 * `cancel` and the result arrays under `mu`; the pixels are read-only.
 * DESIGN. A VAE decodes a batch one image at a time on the GPU (7-8 ms each for 512x512 on an
 * H100) while the CPUs wait; SaveImage then spent ~14 ms encoding four such PNGs. Encoding each
 * image as soon as it is decoded hides all but the last one's encoding behind the GPU. The
 * encoders take the images in order, each image split over the CPUs by png_encode itself (12
 * strips for 512x512 RGB). Two encoders: when an image is not done by the time the next one is
 * decoded (CPUs slower than the GPU: on one lent machine an image took 10-20 ms), the next starts
 * on the CPUs its strips leave free instead of waiting, so the batch's encoding keeps up with
 * the decoding where the CPUs have room. */
#include "io/png_async.h"

#include "base/base.h"
#include "base/mem.h"
#include "base/status.h"

#include <pthread.h>
#include <string.h>

#define ENCODERS 2 /* images encoded at once, at most */

struct png_async;
struct encoder_arg {
    struct png_async *a;
    uint8_t *px8; /* one image in 8 bits: this encoder's scratch (owned by the png_async) */
};

struct png_async {
    int n;                          /* images in the batch */
    uint32_t w, h;
    int channels, level, threads;
    bool all_for_last;              /* the last image on every CPU (threads was <= 0) */
    struct png_text *text;          /* n_text chunks; key and text point into text_buf */
    int n_text;
    char *text_buf;                 /* the chunks' strings, owned */
    struct encoder_arg enc[ENCODERS];
    pthread_t tid[ENCODERS];
    int n_started;                  /* encoder threads running */
    pthread_mutex_t mu;
    pthread_cond_t cv;              /* signalled on submit, on each image done and on cancel */
    /* under mu */
    const float **src;              /* [n] submitted pixels */
    int submitted;                  /* images handed over so far */
    int next;                       /* the next image an encoder takes */
    int done;                       /* images finished (in any order) */
    bool cancel;                    /* png_async_free asks the thread to stop */
    bool taken;                     /* png_async_take has run */
    void **png;                     /* [n] finished files (owned until taken) */
    size_t *len;                    /* [n] their sizes */
    int *rc;                        /* [n] 0 or the image's failure */
    struct err *errs;               /* [n] why it failed */
};

static void *encoder_main(void *p) {
    struct encoder_arg *e = p;
    struct png_async *a = e->a;
    size_t px = (size_t)a->w * a->h * (size_t)a->channels;
    for (;;) {
        pthread_mutex_lock(&a->mu);
        while (a->next < a->n && a->next >= a->submitted && !a->cancel) pthread_cond_wait(&a->cv, &a->mu);
        if (a->cancel || a->next >= a->n) {
            pthread_mutex_unlock(&a->mu);
            break;
        }
        int i = a->next++;
        const float *src = a->src[i];
        pthread_mutex_unlock(&a->mu);
        int threads = a->all_for_last && i == a->n - 1 ? png_cpus_usable() : a->threads;
        png_from_float_threads(src, e->px8, px, threads);
        void *out = NULL;
        size_t out_len = 0;
        struct err err = {0};
        int rc = png_encode_threads(e->px8, a->w, a->h, a->channels, a->text, a->n_text, a->level, threads, &out,
                                    &out_len, &err);
        pthread_mutex_lock(&a->mu);
        a->png[i] = out;
        a->len[i] = out_len;
        a->rc[i] = rc;
        a->errs[i] = err;
        a->done++;
        pthread_cond_broadcast(&a->cv);
        pthread_mutex_unlock(&a->mu);
    }
    return NULL;
}

static void release(struct png_async *a) {
    if (a->png)
        for (int i = 0; i < a->n; i++) mem_free(a->png[i]);
    mem_free(a->png);
    mem_free(a->len);
    mem_free(a->rc);
    mem_free(a->errs);
    mem_free(a->src);
    for (int k = 0; k < ENCODERS; k++) mem_free(a->enc[k].px8);
    mem_free(a->text);
    mem_free(a->text_buf);
    mem_free(a);
}

struct png_async *png_async_new(int n, uint32_t w, uint32_t h, int channels, const struct png_text *text,
                                int n_text, int level, int threads, struct err *err) {
    if (n < 1 || w == 0 || h == 0 || (channels != 3 && channels != 4) || n_text < 0) {
        err_set(err, STATUS_ERR_INVALID, "PNG encoder: cannot encode %d images of %ux%u with %d channels", n, w, h,
                channels);
        return NULL;
    }
    struct png_async *a = mem_try_calloc(1, sizeof *a);
    if (!a) {
        err_set(err, STATUS_ERR_NOMEM, "PNG encoder: out of memory");
        return NULL;
    }
    *a = (struct png_async){.n = n, .w = w, .h = h, .channels = channels, .level = level, .n_text = n_text};
    a->all_for_last = threads <= 0;
    if (threads <= 0) threads = png_cpus_usable() - 1;
    a->threads = threads < 1 ? 1 : threads;
    size_t chars = 0;
    for (int i = 0; i < n_text; i++) chars += strlen(text[i].key) + strlen(text[i].text) + 2;
    size_t px = (size_t)w * h * (size_t)channels;
    a->text = mem_try_calloc(n_text > 0 ? (size_t)n_text : 1, sizeof *a->text);
    a->text_buf = mem_try_alloc(chars + 1);
    int encoders = n < ENCODERS ? n : ENCODERS;
    bool scratch = true;
    for (int k = 0; k < encoders; k++) {
        a->enc[k] = (struct encoder_arg){.a = a, .px8 = mem_try_alloc(px)};
        scratch = scratch && a->enc[k].px8;
    }
    a->src = mem_try_calloc((size_t)n, sizeof *a->src);
    a->png = mem_try_calloc((size_t)n, sizeof *a->png);
    a->len = mem_try_calloc((size_t)n, sizeof *a->len);
    a->rc = mem_try_calloc((size_t)n, sizeof *a->rc);
    a->errs = mem_try_calloc((size_t)n, sizeof *a->errs);
    if (!a->text || !a->text_buf || !scratch || !a->src || !a->png || !a->len || !a->rc || !a->errs) {
        release(a);
        err_set(err, STATUS_ERR_NOMEM, "PNG encoder: out of memory for %d images of %ux%u", n, w, h);
        return NULL;
    }
    char *c = a->text_buf;
    for (int i = 0; i < n_text; i++) {
        size_t kl = strlen(text[i].key) + 1, tl = strlen(text[i].text) + 1;
        a->text[i].key = memcpy(c, text[i].key, kl);
        a->text[i].text = memcpy(c + kl, text[i].text, tl);
        c += kl + tl;
    }
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cv, NULL);
    int pe = 0;
    for (int k = 0; k < encoders && !pe; k++) {
        pe = pthread_create(&a->tid[k], NULL, encoder_main, &a->enc[k]);
        if (!pe) a->n_started++;
    }
    if (a->n_started == 0) { /* one encoder is enough to go on; none is not */
        pthread_mutex_destroy(&a->mu);
        pthread_cond_destroy(&a->cv);
        release(a);
        err_set(err, STATUS_ERR_INTERNAL, "PNG encoder: cannot start its thread (error %d)", pe);
        return NULL;
    }
    return a;
}

void png_async_submit(struct png_async *a, int i, const float *pixels) {
    pthread_mutex_lock(&a->mu);
    ASSERT(i == a->submitted && i < a->n && !a->taken);
    a->src[i] = pixels;
    a->submitted = i + 1;
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
}

bool png_async_matches(const struct png_async *a, int n, uint32_t w, uint32_t h, int channels,
                       const struct png_text *text, int n_text, int level) {
    if (!a || a->n != n || a->w != w || a->h != h || a->channels != channels || a->level != level ||
        a->n_text != n_text)
        return false;
    for (int i = 0; i < n_text; i++)
        if (strcmp(a->text[i].key, text[i].key) != 0 || strcmp(a->text[i].text, text[i].text) != 0) return false;
    struct png_async *m = (struct png_async *)a; /* the lock only */
    pthread_mutex_lock(&m->mu);
    bool ok = a->submitted == a->n && !a->taken;
    pthread_mutex_unlock(&m->mu);
    return ok;
}

int png_async_take(struct png_async *a, void **outs, size_t *lens, struct err *err) {
    pthread_mutex_lock(&a->mu);
    ASSERT(!a->taken && a->submitted == a->n);
    while (a->done < a->n) pthread_cond_wait(&a->cv, &a->mu);
    a->taken = true;
    int rc = 0;
    for (int i = 0; i < a->n && !rc; i++)
        if (a->rc[i]) {
            rc = a->rc[i];
            *err = a->errs[i];
            err_prefix(err, "image %d of %d", i + 1, a->n);
        }
    for (int i = 0; i < a->n && !rc; i++) {
        outs[i] = a->png[i];
        lens[i] = a->len[i];
        a->png[i] = NULL;
    }
    pthread_mutex_unlock(&a->mu);
    return rc;
}

void png_async_free(struct png_async *a) {
    if (!a) return;
    pthread_mutex_lock(&a->mu);
    a->cancel = true;
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
    for (int k = 0; k < a->n_started; k++) pthread_join(a->tid[k], NULL);
    pthread_mutex_destroy(&a->mu);
    pthread_cond_destroy(&a->cv);
    release(a);
}
