/* io/png_async.h -- a batch of images encoded to PNG on a thread of its own while their
 * producer still makes the next ones (a VAE decoding image after image).
 * Owns: struct png_async: its encoder threads (up to two images at once), copies of the text
 * chunks, each image's PNG until it is taken, and an 8-bit scratch image per encoder.
 * Must not: know nodes or prompts (graph/nodes/save.c decides when encoding ahead pays).
 * Threads: the owner calls every function from one thread; the encoder threads only read the
 * submitted pixels and write the results, under the object's mutex.
 * Ownership: the submitted pixels are borrowed: they must stay unchanged until png_async_take
 * returns or png_async_free; the PNGs png_async_take hands out are the caller's (mem_free). */
#ifndef KILN_IO_PNG_ASYNC_H
#define KILN_IO_PNG_ASYNC_H

#include "base/err.h"
#include "io/png.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct png_async;

/* Starts an encoder for n images of w x h x channels floats in [0, 1] (ComfyUI's IMAGE layout,
 * converted to 8 bits as png_from_float does), with the given text chunks (copied) and zlib
 * level. Each image is png_encode's bytes, on `threads` threads (<= 0: every usable CPU but one,
 * which the producer keeps, and all of them for the last image, when the producer is done).
 * Returns NULL with err set when memory or the thread cannot be had. */
struct png_async *png_async_new(int n, uint32_t w, uint32_t h, int channels, const struct png_text *text,
                                int n_text, int level, int threads, struct err *err);

/* Hands image i (0..n-1, in order: i must be the number submitted so far) to the encoder. */
void png_async_submit(struct png_async *a, int i, const float *pixels);

/* True when a's images were made with exactly these parameters, all n of them were submitted,
 * and they have not been taken yet. */
bool png_async_matches(const struct png_async *a, int n, uint32_t w, uint32_t h, int channels,
                       const struct png_text *text, int n_text, int level);

/* Waits for every image, then moves the PNGs to outs[i] / lens[i] (the caller frees them).
 * Returns 0, or the first failed image's status with err set (nothing handed out). Once. */
int png_async_take(struct png_async *a, void **outs, size_t *lens, struct err *err);

/* Stops the encoders (images being encoded are finished first), joins them, frees everything
 * not taken. NULL-safe. */
void png_async_free(struct png_async *a);

#endif
