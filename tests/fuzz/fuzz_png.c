/* tests/fuzz/fuzz_png.c -- libFuzzer target: bytes -> png_decode (io/png.c, libspng); a decoded
 * image is encoded again with its text chunks (png_encode) and that PNG must decode to the same
 * pixels.
 * Owns: nothing past one input. Threads: the fuzzer's (png_encode may start its own). */
#include "base/err.h"
#include "base/mem.h"
#include "base/status.h"
#include "io/png.h"
#include "fuzz.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    (void)fuzz_dir(); /* quiet logs */
    struct err e = {0};
    struct png_image img = {0};
    if (png_decode(data, size, &img, &e)) {
        png_image_deinit(&img);
        return 0;
    }
    if ((uint64_t)img.w * img.h > (1u << 22)) { /* libspng's own limits allow big images: keep it fast */
        png_image_deinit(&img);
        return 0;
    }
    /* back to a PNG: text chunks whose keyword png_encode accepts are kept (the rest would be
     * STATUS_ERR_INVALID, which is png_encode's documented answer, not a failure) */
    struct png_text *text = mem_calloc((size_t)img.n_text + 1, sizeof *text);
    for (int i = 0; i < img.n_text; i++) text[i] = (struct png_text){img.text_keys[i], img.text_values[i]};
    void *out = NULL;
    size_t out_len = 0;
    int rc = png_encode(img.rgba, img.w, img.h, 4, text, img.n_text, 1, &out, &out_len, &e);
    if (rc == STATUS_ERR_INVALID) {
        err_clear(&e);
        rc = png_encode(img.rgba, img.w, img.h, 4, NULL, 0, 1, &out, &out_len, &e);
    }
    if (rc) {
        fprintf(stderr, "png_encode of a decoded %ux%u image failed: %s\n", img.w, img.h, e.msg);
        abort();
    }
    struct png_image back = {0};
    if (png_decode(out, out_len, &back, &e) || back.w != img.w || back.h != img.h ||
        memcmp(back.rgba, img.rgba, (size_t)img.w * img.h * 4)) {
        fprintf(stderr, "our PNG of a decoded %ux%u image does not decode to the same pixels: %s\n", img.w, img.h,
                e.msg);
        abort();
    }
    png_image_deinit(&back);
    mem_free(out);
    mem_free(text);
    png_image_deinit(&img);
    return 0;
}
