/* io/resize.h -- image/latent resampling with the exact semantics ComfyUI gets from
 * comfy.utils.common_upscale: torch.nn.functional.interpolate (nearest-exact, bilinear and
 * bicubic with align_corners=False and A=-0.75, area = adaptive average pooling), ComfyUI's
 * own bislerp, and PIL's LANCZOS resize through 8-bit pixels.
 * Owns: nothing (pure functions on caller buffers).
 * Threads: any.
 * Ownership: the caller provides src and dst. */
#ifndef KILN_IO_RESIZE_H
#define KILN_IO_RESIZE_H

#include "base/err.h"

#include <stdint.h>

/* name, wire name */
#define IO_UPSCALE_MAP(XX)              \
    XX(NEAREST_EXACT, "nearest-exact")  \
    XX(BILINEAR, "bilinear")            \
    XX(AREA, "area")                    \
    XX(BICUBIC, "bicubic")              \
    XX(BISLERP, "bislerp")              \
    XX(LANCZOS, "lanczos")

enum io_upscale {
#define XX(name, str) IO_UPSCALE_##name,
    IO_UPSCALE_MAP(XX)
#undef XX
    IO_UPSCALE_COUNT
};

const char *io_upscale_name(enum io_upscale m);
/* Returns IO_UPSCALE_COUNT when unknown. */
enum io_upscale io_upscale_parse(const char *s);

/* Resamples src [n, c, h, w] (float32, NCHW) into dst [n, c, oh, ow] with method m. For
 * LANCZOS the values go through uint8 (clip(255 x) truncated, PIL resize, /255) as ComfyUI's
 * lanczos() does. All sizes >= 1. */
void io_resize(const float *src, int64_t n, int64_t c, int64_t h, int64_t w, float *dst, int64_t oh, int64_t ow,
               enum io_upscale m);

/* comfy.utils.common_upscale on [n, c, h, w]: with crop "center" (center = true) the source is
 * first cut to the target aspect ratio, then resized to [n, c, oh, ow]. dst must hold
 * n*c*oh*ow floats. Returns STATUS_ERR_INVALID for empty sizes. */
int io_common_upscale(const float *src, int64_t n, int64_t c, int64_t h, int64_t w, float *dst, int64_t ow,
                      int64_t oh, enum io_upscale m, int center, struct err *err);

#endif
