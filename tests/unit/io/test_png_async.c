/* tests/unit/io/test_png_async.c -- io/png_async.c: images encoded on the encoder thread while
 * the next ones are made give exactly png_encode's bytes (of png_from_float's pixels); matches
 * refuses other parameters, a batch not fully submitted and a batch already taken; freeing
 * early (nothing or part submitted) stops the thread without leaks (the ASan build checks). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/mem.h"
#include "base/status.h"
#include "io/png_async.h"

#include <string.h>

/* n images of w x h x c floats in [0, 1] (some out of range: png_from_float clamps), each its
 * own pattern. */
static float *make_images(int n, uint32_t w, uint32_t h, int c) {
    size_t px = (size_t)w * h * (size_t)c;
    float *f = mem_alloc((size_t)n * px * sizeof(float));
    uint32_t x = 12345;
    for (int i = 0; i < n; i++)
        for (size_t k = 0; k < px; k++) {
            x = x * 1664525u + 1013904223u;
            float smooth = (float)((k / (size_t)c) % w) / (float)w * 0.5f + (float)i * 0.1f;
            f[(size_t)i * px + k] = smooth + (float)(x >> 24) / 1024.0f - 0.05f;
        }
    return f;
}

/* png_encode's bytes of image i (png_from_float first). */
static void *reference(const float *f, uint32_t w, uint32_t h, int c, const struct png_text *t, int n_text,
                       int level, size_t *len) {
    size_t px = (size_t)w * h * (size_t)c;
    uint8_t *b = mem_alloc(px);
    png_from_float(f, b, px);
    void *out = NULL;
    struct err err = {0};
    assert_int_equal(png_encode(b, w, h, c, t, n_text, level, &out, len, &err), 0);
    mem_free(b);
    return out;
}

static void check_batch(int n, uint32_t w, uint32_t h, int c, int level, int threads) {
    struct png_text t[] = {{"prompt", "{\"9\": {\"class_type\": \"SaveImage\"}}"}, {"workflow", "{}"}};
    float *f = make_images(n, w, h, c);
    size_t px = (size_t)w * h * (size_t)c;
    struct err err = {0};
    struct png_async *a = png_async_new(n, w, h, c, t, 2, level, threads, &err);
    assert_non_null(a);
    for (int i = 0; i < n; i++) {
        assert_false(png_async_matches(a, n, w, h, c, t, 2, level)); /* not all submitted yet */
        png_async_submit(a, i, f + (size_t)i * px);
    }
    assert_true(png_async_matches(a, n, w, h, c, t, 2, level));
    /* other parameters do not match */
    struct png_text other[] = {{"prompt", "{\"9\": {\"class_type\": \"PreviewImage\"}}"}, {"workflow", "{}"}};
    assert_false(png_async_matches(a, n, w, h, c, other, 2, level));
    assert_false(png_async_matches(a, n, w, h, c, t, 1, level));
    assert_false(png_async_matches(a, n, w, h, c, t, 2, level == 4 ? 1 : 4));
    assert_false(png_async_matches(a, n + 1, w, h, c, t, 2, level));
    assert_false(png_async_matches(a, n, w + 1, h, c, t, 2, level));
    assert_false(png_async_matches(NULL, n, w, h, c, t, 2, level));
    void **outs = mem_calloc((size_t)n, sizeof *outs);
    size_t *lens = mem_calloc((size_t)n, sizeof *lens);
    assert_int_equal(png_async_take(a, outs, lens, &err), 0);
    assert_false(png_async_matches(a, n, w, h, c, t, 2, level)); /* taken */
    for (int i = 0; i < n; i++) {
        size_t len;
        void *want = reference(f + (size_t)i * px, w, h, c, t, 2, level, &len);
        assert_int_equal(lens[i], len);
        assert_memory_equal(outs[i], want, len);
        mem_free(want);
        mem_free(outs[i]);
    }
    png_async_free(a);
    mem_free(outs);
    mem_free(lens);
    mem_free(f);
}

/* A batch of 4 at 512x512 RGB (several strips each), the default threads and one thread; RGBA;
 * a single small image at PreviewImage's level 1. */
static void test_same_bytes_as_png_encode(void **s) {
    check_batch(4, 512, 512, 3, 4, 0);
    check_batch(3, 300, 200, 4, 4, 1);
    check_batch(1, 17, 9, 3, 1, 0);
}

/* Freed before anything was submitted, after part of the batch, and after all of it but before
 * the take: the thread stops, nothing leaks. */
static void test_free_early(void **s) {
    struct png_text t[] = {{"prompt", "{}"}};
    float *f = make_images(3, 256, 256, 3);
    size_t px = 256 * 256 * 3;
    struct err err = {0};
    for (int given = 0; given <= 3; given++) {
        struct png_async *a = png_async_new(3, 256, 256, 3, t, 1, 4, 0, &err);
        assert_non_null(a);
        for (int i = 0; i < given; i++) png_async_submit(a, i, f + (size_t)i * px);
        png_async_free(a);
    }
    png_async_free(NULL);
    mem_free(f);
}

/* Bad shapes are refused with a message, before any thread starts. */
static void test_refused(void **s) {
    struct err err = {0};
    assert_null(png_async_new(0, 8, 8, 3, NULL, 0, 4, 0, &err));
    assert_int_equal(err.code, STATUS_ERR_INVALID);
    assert_non_null(strstr(err.msg, "PNG encoder"));
    err_clear(&err);
    assert_null(png_async_new(2, 8, 8, 2, NULL, 0, 4, 0, &err));
    assert_int_equal(err.code, STATUS_ERR_INVALID);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_bytes_as_png_encode),
        cmocka_unit_test(test_free_early),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
