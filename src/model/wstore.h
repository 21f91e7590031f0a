/* model/wstore.h -- the weight store: one host copy of each network's weights, shared by every
 * device of the process (ARCHITECTURE.md "Memory": a checkpoint is read once and every GPU
 * uploads from that one copy).
 * Owns: the images (one host buffer each: a network's weights converted to their storage dtype,
 * laid out exactly as the device buffer will be) and their reference counts.
 * Must not: know networks or backends beyond what a loader hands it (a key, a size, a fill
 * function, and the backend kind to pin the memory for).
 * Threads: every function is safe from any thread ([any]); a store has one mutex. While one
 * thread fills an image, others asking for the same key wait for it instead of reading the file
 * again.
 * Ownership: wstore_acquire returns a reference that the caller gives back with wstore_release;
 * an image is freed (and unpinned) when its last reference goes. */
#ifndef KILN_MODEL_WSTORE_H
#define KILN_MODEL_WSTORE_H

#include "base/err.h"
#include "tensor/backend.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WSTORE_KEY_MAX 1024
#define WSTORE_MAX_COPIES 16 /* device copies of one image that are listed (wstore_publish) */

/* A whole copy of an image in some device's memory, listed so that another device can copy from it. */
struct wstore_copy {
    int device;                        /* the device ordinal (of the image's pinning kind) */
    const void *ptr;                   /* image->size bytes there, laid out as the image */
    int borrowers;                     /* copies from it in progress (under the store's mutex) */
};

/* One host image. Read-only once acquired. */
struct wstore_image {
    char key[WSTORE_KEY_MAX];          /* what it holds (see wstore_acquire) */
    void *buf;                         /* size bytes, 64-byte aligned (owned by the store) */
    size_t size;                       /* bytes */
    const struct backend_i *pinned_by; /* the backend kind that page-locked buf, or NULL */
    int refs;                          /* holders (under the store's mutex) */
    int state;                         /* store-private: filling, ready */
    struct wstore_copy copies[WSTORE_MAX_COPIES]; /* store-private: published device copies */
    int n_copies;
    struct wstore_image *next;         /* store-private list */
};

/* Counters for tests, logs and /system_stats. */
struct wstore_stats {
    int images;          /* live images */
    uint64_t bytes;      /* their total size */
    uint64_t hits;       /* acquisitions served from a live image */
    uint64_t fills;      /* images built (files read and converted) */
    uint64_t pinned;     /* bytes of live images that are page-locked */
};

/* Fills buf (size bytes) with the image's contents; returns 0 or a negative status with err set. */
typedef int (*wstore_fill_fn)(void *user, void *buf, size_t size, struct err *err);

/* The process's store (created on first use, lives as long as the process; never freed, and it
 * holds no memory once every image is released). */
struct wstore *wstore_global(void);

/* The image for key, holding `size` bytes. When no live image has that key, the calling thread
 * allocates one, calls fill, and, when pin_for is non-NULL and has host_pin, page-locks it (a
 * failed pin is logged once and the image stays pageable). A live image with the key but another
 * size is an error (STATUS_ERR_INTERNAL: the key must name the file's identity and layout). Returns
 * 0 with *out holding a new reference, or a negative status (ERR_NOMEM, or fill's) with err set.
 * Concurrent callers with the same key wait for the first one's fill and share its result; if
 * that fill fails, the next waiter tries itself. [any] */
int wstore_acquire(struct wstore *s, const char *key, size_t size, wstore_fill_fn fill, void *user,
                   const struct backend_i *pin_for, struct wstore_image **out, struct err *err);

/* Gives back a reference; the last one frees the image. NULL is a no-op. [any] */
void wstore_release(struct wstore *s, struct wstore_image *img);

/* ===== Device copies (issue 7: warm a GPU from another GPU's resident copy) =====
 * A device that holds the whole image in its memory publishes it; a device loading the same
 * image later may borrow it and copy device to device (faster than from host memory where the two
 * devices reach each other directly). An owner unpublishes before freeing its memory; that waits
 * for the copies in progress from it. [any] */

/* Lists ptr (img->size bytes on `device`) as a copy of img. False when the table is full (the
 * copy then simply is not shared). */
bool wstore_publish(struct wstore *s, struct wstore_image *img, int device, const void *ptr);
/* Removes device's copy of img, after waiting for its borrowers. No-op when not listed. */
void wstore_unpublish(struct wstore *s, struct wstore_image *img, int device);
/* A listed copy on another device than `self` for which usable(user, device) says yes (NULL:
 * any), marked borrowed: true with *device and *ptr set; give it back with wstore_return. */
bool wstore_borrow(struct wstore *s, struct wstore_image *img, int self, bool (*usable)(void *user, int device),
                   void *user, int *device, const void **ptr);
void wstore_return(struct wstore *s, struct wstore_image *img, int device);

/* A snapshot of the counters. [any] */
void wstore_stats(struct wstore *s, struct wstore_stats *out);

#endif
