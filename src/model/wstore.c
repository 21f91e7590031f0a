/* model/wstore.c -- the weight store: shared host images of networks' weights.
 * Owns: the process store (static: one mutex, one condition variable, a list of images) and every
 * image buffer (mem_try_aligned_alloc, page-locked through the backend that asked).
 * Threads: [any]; the mutex guards the list, refs and states; fills run outside it.
 * DESIGN. An image is listed as FILLING before its fill starts, so a second device asking for the
 * same key sleeps on the condition variable instead of reading the checkpoint again; when the
 * fill fails the image is unlisted and the sleepers retry (the next one fills). The same condition
 * variable wakes owners waiting in wstore_unpublish when a borrower returns a device copy. */
#include "model/wstore.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/mem.h"
#include "base/status.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

enum { IMAGE_FILLING, IMAGE_READY };

struct wstore {
    pthread_mutex_t mu;
    pthread_cond_t cv;           /* broadcast when a fill ends */
    struct wstore_image *images; /* live images, filling or ready */
    uint64_t hits, fills;
    bool pin_warned;             /* a failed pin is logged once */
};

static struct wstore GLOBAL = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

struct wstore *wstore_global(void) { return &GLOBAL; }

static struct wstore_image *find(struct wstore *s, const char *key) {
    for (struct wstore_image *i = s->images; i; i = i->next)
        if (strcmp(i->key, key) == 0) return i;
    return NULL;
}

static void unlink_image(struct wstore *s, struct wstore_image *img) {
    for (struct wstore_image **p = &s->images; *p; p = &(*p)->next) {
        if (*p == img) {
            *p = img->next;
            return;
        }
    }
}

static void image_free(struct wstore_image *img) {
    if (img->pinned_by) backend_host_unpin(img->pinned_by, img->buf);
    mem_aligned_free(img->buf);
    mem_free(img);
}

/* ===== Acquire and release ===== */

int wstore_acquire(struct wstore *s, const char *key, size_t size, wstore_fill_fn fill, void *user,
                   const struct backend_i *pin_for, struct wstore_image **out, struct err *err) {
    *out = NULL;
    if (strlen(key) >= WSTORE_KEY_MAX) return err_set(err, STATUS_ERR_INVALID, "weight store: key too long: %.64s...", key);
    pthread_mutex_lock(&s->mu);
    struct wstore_image *img;
    while ((img = find(s, key)) && img->state == IMAGE_FILLING) pthread_cond_wait(&s->cv, &s->mu);
    if (img) {
        int rc = 0;
        if (img->size != size) {
            rc = err_set(err, STATUS_ERR_INTERNAL, "weight store: %s is held with %zu bytes, asked for %zu", key, img->size,
                         size);
        } else {
            img->refs++;
            s->hits++;
            *out = img;
        }
        pthread_mutex_unlock(&s->mu);
        return rc;
    }
    img = mem_try_calloc(1, sizeof *img);
    void *buf = img ? mem_try_aligned_alloc(size ? size : 1) : NULL;
    if (!buf) {
        pthread_mutex_unlock(&s->mu);
        mem_free(img);
        return err_set(err, STATUS_ERR_NOMEM, "out of host memory for %.1f MiB of weights (%s)",
                       (double)size / 1048576.0, key);
    }
    /* transparent huge pages where the system offers them on request: a cold fill then faults
       in 2 MiB at a time, not 4 KiB (advisory; the fill is correct either way) */
    uintptr_t lo = ((uintptr_t)buf + ((uintptr_t)2 << 20) - 1) & ~(((uintptr_t)2 << 20) - 1);
    uintptr_t hi = ((uintptr_t)buf + size) & ~(((uintptr_t)2 << 20) - 1);
    if (hi > lo) (void)madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
    snprintf(img->key, sizeof img->key, "%s", key);
    img->buf = buf;
    img->size = size;
    img->refs = 1;
    img->state = IMAGE_FILLING;
    img->next = s->images;
    s->images = img;
    pthread_mutex_unlock(&s->mu);

    double t0 = clock_now();
    int rc = fill(user, buf, size, err);
    double t1 = clock_now();
    if (!rc && pin_for && pin_for->host_pin) {
        int prc = backend_host_pin(pin_for, buf, size);
        if (prc == 0) {
            img->pinned_by = pin_for;
        } else {
            pthread_mutex_lock(&s->mu);
            bool warn = !s->pin_warned;
            s->pin_warned = true;
            pthread_mutex_unlock(&s->mu);
            if (warn)
                log_warn("weight store: cannot page-lock %.1f MiB of host weights for %s (%s); uploads use pageable "
                         "memory",
                         (double)size / 1048576.0, pin_for->name, status_str(prc));
        }
    }
    if (!rc) /* the phases of a cold load, for docs/PERF.md's first-image figure */
        log_info("weight store: %.1f MiB filled in %.2f s (%.0f MiB/s)%s%.2f s (%s)", (double)size / 1048576.0,
                 t1 - t0, (double)size / 1048576.0 / (t1 - t0 > 1e-9 ? t1 - t0 : 1e-9),
                 img->pinned_by ? ", page-locked in " : ", not page-locked, ", clock_now() - t1, key);
    pthread_mutex_lock(&s->mu);
    if (rc) {
        unlink_image(s, img);
    } else {
        img->state = IMAGE_READY;
        s->fills++;
        *out = img;
    }
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (rc) image_free(img);
    return rc;
}

void wstore_release(struct wstore *s, struct wstore_image *img) {
    if (!img) return;
    pthread_mutex_lock(&s->mu);
    bool last = --img->refs == 0;
    if (last) unlink_image(s, img);
    pthread_mutex_unlock(&s->mu);
    if (last) image_free(img);
}

/* ===== Device copies ===== */

static struct wstore_copy *copy_of(struct wstore_image *img, int device) {
    for (int i = 0; i < img->n_copies; i++)
        if (img->copies[i].device == device) return &img->copies[i];
    return NULL;
}

bool wstore_publish(struct wstore *s, struct wstore_image *img, int device, const void *ptr) {
    pthread_mutex_lock(&s->mu);
    bool ok = !copy_of(img, device) && img->n_copies < WSTORE_MAX_COPIES;
    if (ok) img->copies[img->n_copies++] = (struct wstore_copy){.device = device, .ptr = ptr};
    pthread_mutex_unlock(&s->mu);
    return ok;
}

void wstore_unpublish(struct wstore *s, struct wstore_image *img, int device) {
    pthread_mutex_lock(&s->mu);
    struct wstore_copy *c;
    while ((c = copy_of(img, device)) && c->borrowers > 0) pthread_cond_wait(&s->cv, &s->mu);
    if (c) *c = img->copies[--img->n_copies];
    pthread_mutex_unlock(&s->mu);
}

bool wstore_borrow(struct wstore *s, struct wstore_image *img, int self, bool (*usable)(void *user, int device),
                   void *user, int *device, const void **ptr) {
    pthread_mutex_lock(&s->mu);
    struct wstore_copy *pick = NULL;
    for (int i = 0; i < img->n_copies && !pick; i++)
        if (img->copies[i].device != self && (!usable || usable(user, img->copies[i].device))) pick = &img->copies[i];
    if (pick) {
        pick->borrowers++;
        *device = pick->device;
        *ptr = pick->ptr;
    }
    pthread_mutex_unlock(&s->mu);
    return pick != NULL;
}

void wstore_return(struct wstore *s, struct wstore_image *img, int device) {
    pthread_mutex_lock(&s->mu);
    struct wstore_copy *c = copy_of(img, device);
    if (c && c->borrowers > 0) c->borrowers--;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void wstore_stats(struct wstore *s, struct wstore_stats *out) {
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&s->mu);
    for (struct wstore_image *i = s->images; i; i = i->next) {
        if (i->state != IMAGE_READY) continue;
        out->images++;
        out->bytes += i->size;
        if (i->pinned_by) out->pinned += i->size;
    }
    out->hits = s->hits;
    out->fills = s->fills;
    pthread_mutex_unlock(&s->mu);
}
