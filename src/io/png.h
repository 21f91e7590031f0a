/* io/png.h -- PNG files as ComfyUI writes and reads them (our encoder on zlib; libspng decodes).
 * Owns: encoding 8-bit RGB/RGBA with tEXt chunks in a given order, decoding any PNG to 8-bit
 * RGBA, and ComfyUI's float -> uint8 pixel conversion.
 * Must not: know nodes or prompts.
 * Threads: any (no shared state); an encode may run up to 16 threads of its own for one image.
 * Ownership: buffers returned are mem_alloc'd (mem_free); png_image is released with
 * png_image_deinit. */
#ifndef KILN_IO_PNG_H
#define KILN_IO_PNG_H

#include "base/err.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One tEXt chunk: keyword (1..79 Latin-1 characters) and text (no NUL). Borrowed strings. */
struct png_text {
    const char *key;
    const char *text;
};

/* A decoded image. */
struct png_image {
    uint32_t w, h;                       /* size in pixels */
    uint8_t *rgba;                       /* w*h*4 bytes, row-major RGBA (owned) */
    bool has_alpha;                      /* the file has an alpha channel (PIL's 'A' band: colour
                                            types grey+alpha and RGBA; tRNS does not count) */
    int n_text;                          /* text chunks (tEXt, zTXt, iTXt) in file order */
    char **text_keys;                    /* n_text keywords (owned) */
    char **text_values;                  /* n_text texts (owned) */
};

/* Encodes w x h pixels (channels 3 = RGB or 4 = RGBA, 8 bits, row-major) into a PNG in memory
 * with the given text chunks in order (tEXt, "keyword\0text", as libspng wrote them; a keyword
 * must be 1..79 printable Latin-1 characters without leading, trailing or double spaces:
 * STATUS_ERR_INVALID otherwise), zlib level 0..9 (ComfyUI: 4 for SaveImage, 1 for
 * PreviewImage). Per-row adaptive filters (libpng's and libspng's minimum-sum choice; None at
 * level 0). Images of 256 KiB and more are compressed as up to 16 independent strips on up to
 * min(16, CPUs) threads (see png.c); the bytes depend only on the pixels, text and level.
 * Returns 0 with *out (mem_alloc'd) and *out_len; STATUS_ERR_NOMEM when out of memory. */
int png_encode(const uint8_t *pixels, uint32_t w, uint32_t h, int channels, const struct png_text *text, int n_text,
               int level, void **out, size_t *out_len, struct err *err);

/* png_encode on at most `threads` threads (<= 0: png_encode's default, min(16, CPUs)). The
 * output is the same bytes whatever the thread count (tests and benchmarks use this). */
int png_encode_threads(const uint8_t *pixels, uint32_t w, uint32_t h, int channels, const struct png_text *text,
                       int n_text, int level, int threads, void **out, size_t *out_len, struct err *err);

/* png_encode of n images (pixels[i], all w x h x channels, the same text chunks and level), up
 * to `threads` images at once (a batch's PNGs are independent); the images at once share the
 * usable CPUs for their strips (up to 16 each; one image gets png_encode's default). Each image's
 * bytes are png_encode's. On success outs[i] / lens[i] hold each PNG (mem_alloc'd; the caller
 * frees them); on failure nothing is left allocated and err says which image failed. */
int png_encode_many(const uint8_t *const *pixels, int n, uint32_t w, uint32_t h, int channels,
                    const struct png_text *text, int n_text, int level, int threads, void **outs, size_t *lens,
                    struct err *err);

/* The CPUs this process may run on (its affinity mask; at least 1). */
int png_cpus_usable(void);

/* Writes already-encoded bytes to a new file at path; never replaces a file: returns
 * STATUS_ERR_EXISTS (err untouched) when path exists, so concurrent writers (one per device)
 * each claim their own name (SaveImage). */
int png_save_new(const char *path, const void *data, size_t len, struct err *err);

/* png_encode, then writes the file at path (replacing it). */
int png_write(const char *path, const uint8_t *pixels, uint32_t w, uint32_t h, int channels,
              const struct png_text *text, int n_text, int level, struct err *err);

/* PIL's decompression-bomb limit: 2 * Image.MAX_IMAGE_PIXELS (= 2 * (1024^3 / 4 / 3)). */
#define PNG_MAX_PIXELS 178956970u

/* Decodes a PNG (any colour type and bit depth; 16-bit samples keep their high byte) into
 * 8-bit RGBA plus its text chunks. STATUS_ERR_FORMAT when the data is not a valid PNG or has
 * more than PNG_MAX_PIXELS pixels (PIL refuses those too). */
int png_decode(const void *data, size_t len, struct png_image *img, struct err *err);
int png_read(const char *path, struct png_image *img, struct err *err);

void png_image_deinit(struct png_image *img);

/* The text of keyword `key`, or NULL. */
const char *png_image_text(const struct png_image *img, const char *key);

/* ComfyUI's conversion (nodes.py SaveImage): np.clip(255.0 * x, 0, 255).astype(np.uint8), i.e.
 * 255*x in float32, clipped, truncated toward zero (not rounded); NaN gives 0. */
void png_from_float(const float *src, uint8_t *dst, size_t n);

/* png_from_float on up to `threads` threads (at most 16), in parts of at least 128 Ki values
 * (fewer values: the caller's thread alone); the same bytes whatever the count. */
void png_from_float_threads(const float *src, uint8_t *dst, size_t n, int threads);

#endif
