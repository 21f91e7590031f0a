/* tests/unit/io/test_png.c -- io/png.c: text chunks in order, round trips, files written by
 * PIL (tests/data/graph/png/, made by tests/ref/graph_ref.py) and ComfyUI's float -> uint8
 * truncation (reference values from numpy in png_ref.json). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/mem.h"
#include "base/status.h"
#include "io/png.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ===== A minimal independent chunk walker (no libspng) ===== */

static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

/* Writes the chunk types of a PNG as "IHDR tEXt IDAT IEND" into out. */
static void chunk_list(const uint8_t *png, size_t len, char *out, size_t n) {
    assert_true(len > 8 && memcmp(png, "\x89PNG\r\n\x1a\n", 8) == 0);
    size_t o = 0;
    out[0] = 0;
    char last[5] = "";
    for (size_t p = 8; p + 12 <= len;) {
        uint32_t clen = be32(png + p);
        char type[5] = {0};
        memcpy(type, png + p + 4, 4);
        if (strcmp(type, last) != 0 || strcmp(type, "tEXt") == 0) /* collapse IDAT runs */
            o += (size_t)snprintf(out + o, n - o, "%s%s", o ? " " : "", type);
        strcpy(last, type);
        p += 12 + clen;
    }
}

/* The raw text of the i-th tEXt chunk ("key\0text") compared with key and text. */
static void check_text_chunk(const uint8_t *png, size_t len, int which, const char *key, const char *text) {
    int seen = 0;
    for (size_t p = 8; p + 12 <= len;) {
        uint32_t clen = be32(png + p);
        if (memcmp(png + p + 4, "tEXt", 4) == 0 && seen++ == which) {
            const char *d = (const char *)png + p + 8;
            assert_int_equal(clen, strlen(key) + 1 + strlen(text));
            assert_memory_equal(d, key, strlen(key) + 1);
            assert_memory_equal(d + strlen(key) + 1, text, strlen(text));
            return;
        }
        p += 12 + clen;
    }
    fail_msg("no tEXt chunk %d", which);
}

static uint8_t *pattern(uint32_t w, uint32_t h, int c) {
    uint8_t *px = mem_alloc((size_t)w * h * (size_t)c);
    for (size_t i = 0; i < (size_t)w * h * (size_t)c; i++) px[i] = (uint8_t)(i * 37 + (i >> 5));
    return px;
}

/* ===== Tests ===== */

static void test_roundtrip_rgb_text_order(void **s) {
    uint8_t *px = pattern(13, 7, 3);
    struct png_text text[] = {{"prompt", "{\"3\": {\"class_type\": \"KSampler\"}}"}, {"workflow", "{\"nodes\": []}"},
                              {"zeta", "last"}};
    void *buf;
    size_t len;
    struct err err = {0};
    assert_int_equal(png_encode(px, 13, 7, 3, text, 3, 4, &buf, &len, &err), 0);
    char chunks[256];
    chunk_list(buf, len, chunks, sizeof chunks);
    assert_string_equal(chunks, "IHDR tEXt tEXt tEXt IDAT IEND");
    check_text_chunk(buf, len, 0, "prompt", text[0].text);
    check_text_chunk(buf, len, 1, "workflow", text[1].text);
    check_text_chunk(buf, len, 2, "zeta", "last");
    assert_int_equal(((uint8_t *)buf)[8 + 8 + 9], 2); /* IHDR colour type: truecolour */
    assert_int_equal(((uint8_t *)buf)[8 + 8 + 8], 8); /* bit depth */

    struct png_image img;
    assert_int_equal(png_decode(buf, len, &img, &err), 0);
    assert_int_equal(img.w, 13);
    assert_int_equal(img.h, 7);
    assert_false(img.has_alpha);
    for (size_t i = 0; i < 13 * 7; i++) {
        assert_memory_equal(img.rgba + i * 4, px + i * 3, 3);
        assert_int_equal(img.rgba[i * 4 + 3], 255);
    }
    assert_int_equal(img.n_text, 3);
    assert_string_equal(img.text_keys[0], "prompt");
    assert_string_equal(img.text_keys[1], "workflow");
    assert_string_equal(png_image_text(&img, "workflow"), "{\"nodes\": []}");
    assert_null(png_image_text(&img, "nope"));
    png_image_deinit(&img);
    mem_free(buf);
    mem_free(px);
}

static void test_roundtrip_rgba_file(void **s) {
    char path[] = "/tmp/kiln_png_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    uint8_t *px = pattern(5, 9, 4);
    struct err err = {0};
    assert_int_equal(png_write(path, px, 5, 9, 4, NULL, 0, 1, &err), 0);
    struct png_image img;
    assert_int_equal(png_read(path, &img, &err), 0);
    assert_true(img.has_alpha);
    assert_int_equal(img.n_text, 0);
    assert_memory_equal(img.rgba, px, 5 * 9 * 4);
    png_image_deinit(&img);
    unlink(path);
    mem_free(px);
}

static void test_big_text(void **s) {
    size_t n = 3u << 20; /* a large workflow JSON */
    char *big = mem_alloc(n + 1);
    for (size_t i = 0; i < n; i++) big[i] = (char)('a' + i % 26);
    big[n] = 0;
    uint8_t px[3] = {1, 2, 3};
    struct png_text text[] = {{"workflow", big}};
    void *buf;
    size_t len;
    struct err err = {0};
    assert_int_equal(png_encode(px, 1, 1, 3, text, 1, 4, &buf, &len, &err), 0);
    struct png_image img;
    assert_int_equal(png_decode(buf, len, &img, &err), 0);
    assert_string_equal(png_image_text(&img, "workflow"), big);
    png_image_deinit(&img);
    mem_free(buf);
    mem_free(big);
}

static void test_errors(void **s) {
    struct err err = {0};
    struct png_image img;
    const char junk[] = "this is not a png file at all, not even close";
    assert_int_equal(png_decode(junk, sizeof junk, &img, &err), STATUS_ERR_FORMAT);
    err_clear(&err);
    assert_int_equal(png_read("/nonexistent/x.png", &img, &err), STATUS_ERR_NOT_FOUND);
    assert_non_null(strstr(err.msg, "/nonexistent/x.png"));
    err_clear(&err);
    uint8_t px[3] = {0};
    void *buf;
    size_t len;
    struct png_text bad[] = {{"", "x"}};
    assert_int_equal(png_encode(px, 1, 1, 3, bad, 1, 4, &buf, &len, &err), STATUS_ERR_INVALID);
    err_clear(&err);
    assert_int_equal(png_encode(px, 1, 1, 2, NULL, 0, 4, &buf, &len, &err), STATUS_ERR_INVALID);
}

/* Files written by PIL decode to what PIL's convert("RGB") gives; alpha only for LA/RGBA. */
static void test_pil_files(void **s) {
    json_error_t je;
    json_t *ref = json_load_file(KILN_TEST_DATA "/graph/png_ref.json", 0, &je);
    assert_non_null(ref);
    const char *name;
    json_t *f;
    int n = 0;
    json_object_foreach(json_object_get(ref, "files"), name, f) {
        char path[512];
        snprintf(path, sizeof path, "%s/graph/png/%s.png", KILN_TEST_DATA, name);
        struct png_image img;
        struct err err = {0};
        assert_int_equal(png_read(path, &img, &err), 0);
        assert_int_equal(img.w, json_integer_value(json_object_get(f, "width")));
        assert_int_equal(img.h, json_integer_value(json_object_get(f, "height")));
        if (img.has_alpha != json_is_true(json_object_get(f, "has_alpha"))) fail_msg("%s: has_alpha differs", name);
        json_t *rgb = json_object_get(f, "rgb");
        for (size_t i = 0; i < (size_t)img.w * img.h; i++)
            for (int k = 0; k < 3; k++)
                if (img.rgba[i * 4 + k] != json_integer_value(json_array_get(rgb, i * 3 + k)))
                    fail_msg("%s: pixel %zu channel %d: %d != %lld", name, i, k, img.rgba[i * 4 + k],
                             (long long)json_integer_value(json_array_get(rgb, i * 3 + k)));
        png_image_deinit(&img);
        n++;
    }
    assert_int_equal(n, 6);
    json_decref(ref);
}

static void test_float_conversion(void **s) {
    json_error_t je;
    json_t *ref = json_load_file(KILN_TEST_DATA "/graph/png_ref.json", 0, &je);
    json_t *conv = json_object_get(ref, "convert");
    json_t *bits = json_object_get(conv, "bits"), *u8 = json_object_get(conv, "u8");
    size_t n = json_array_size(bits);
    assert_true(n > 10);
    for (size_t i = 0; i < n; i++) {
        uint32_t b = (uint32_t)json_integer_value(json_array_get(bits, i));
        float x;
        memcpy(&x, &b, 4);
        uint8_t got;
        png_from_float(&x, &got, 1);
        if (got != json_integer_value(json_array_get(u8, i)))
            fail_msg("value %.9g: %d != %lld", x, got, (long long)json_integer_value(json_array_get(u8, i)));
    }
    float nanv = NAN, inf = INFINITY;
    uint8_t o;
    png_from_float(&nanv, &o, 1);
    assert_int_equal(o, 0);
    png_from_float(&inf, &o, 1);
    assert_int_equal(o, 255);
    json_decref(ref);
}

/* png_write_new never replaces a file: a second writer of the same name gets ERR_EXISTS with no
 * message and the first file stays intact (SaveImage on several devices relies on it). */
static void test_write_new_exclusive(void **s) {
    char path[256];
    snprintf(path, sizeof path, "/tmp/kiln_test_png_new_%d.png", (int)getpid());
    unlink(path);
    uint8_t a[4 * 3] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, b[4 * 3] = {0};
    struct err err = {0};
    assert_int_equal(png_write_new(path, a, 2, 2, 3, NULL, 0, 4, &err), 0);
    assert_int_equal(png_write_new(path, b, 2, 2, 3, NULL, 0, 4, &err), STATUS_ERR_EXISTS);
    assert_int_equal(err.code, 0);
    struct png_image img;
    assert_int_equal(png_read(path, &img, &err), 0);
    assert_int_equal(img.rgba[0], 1);
    assert_int_equal(img.rgba[4], 4);
    png_image_deinit(&img);
    unlink(path);
}

/* png_encode_many on threads gives exactly png_encode's bytes for each image, in order; a bad
 * image makes it fail with nothing left allocated; png_save_new refuses an existing file. */
static void test_encode_many(void **s) {
    enum { N = 5, W = 61, H = 37 };
    uint8_t *img[N];
    for (int i = 0; i < N; i++) {
        img[i] = pattern(W, H, 3);
        for (int k = 0; k < W * H * 3; k++) img[i][k] = (uint8_t)(img[i][k] + 17 * i);
    }
    struct png_text t[1] = {{"prompt", "{\"a\": 1}"}};
    void *outs[N];
    size_t lens[N];
    struct err err = {0};
    assert_int_equal(png_encode_many((const uint8_t *const *)img, N, W, H, 3, t, 1, 4, 3, outs, lens, &err), 0);
    for (int i = 0; i < N; i++) {
        void *one;
        size_t len;
        assert_int_equal(png_encode(img[i], W, H, 3, t, 1, 4, &one, &len, &err), 0);
        assert_int_equal(len, lens[i]);
        assert_memory_equal(one, outs[i], len);
        mem_free(one);
    }
    char path[256];
    snprintf(path, sizeof path, "/tmp/kiln_test_png_many_%d.png", (int)getpid());
    unlink(path);
    assert_int_equal(png_save_new(path, outs[2], lens[2], &err), 0);
    assert_int_equal(png_save_new(path, outs[3], lens[3], &err), STATUS_ERR_EXISTS);
    struct png_image back;
    assert_int_equal(png_read(path, &back, &err), 0);
    assert_int_equal(back.rgba[0], img[2][0]);
    png_image_deinit(&back);
    unlink(path);
    for (int i = 0; i < N; i++) mem_free(outs[i]);
    /* 5 channels cannot be encoded: the call fails and names the image */
    assert_int_not_equal(png_encode_many((const uint8_t *const *)img, N, W, H, 5, t, 1, 4, 4, outs, lens, &err), 0);
    assert_non_null(strstr(err.msg, "image 1 of 5"));
    for (int i = 0; i < N; i++) {
        assert_null(outs[i]);
        mem_free(img[i]);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_rgb_text_order),
        cmocka_unit_test(test_roundtrip_rgba_file),
        cmocka_unit_test(test_big_text),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_pil_files),
        cmocka_unit_test(test_float_conversion),
        cmocka_unit_test(test_write_new_exclusive),
        cmocka_unit_test(test_encode_many),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
