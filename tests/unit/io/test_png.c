/* tests/unit/io/test_png.c -- io/png.c: text chunks in order, round trips, files written by
 * PIL (tests/data/graph/png/, made by tests/ref/graph_ref.py) and ComfyUI's float -> uint8
 * truncation (reference values from numpy in png_ref.json). The encoder (ours, on threads) is
 * checked against independent references: libspng decodes it, zlib inflates its IDAT data,
 * which must equal the rows as a straightforward minimum-sum filter chooser filters them (the
 * PNG spec's formulas, written separately here), and libspng's own encoder gives the chunks
 * other than IDAT byte for byte. */
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
#include <spng.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

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

/* A header announcing more pixels than PIL's decompression-bomb limit is refused before any
 * pixel buffer is allocated (found by tests/fuzz/fuzz_png: a 100-byte file asked for 2.6 GB). */
static void test_bomb_refused(void **s) {
    struct err err = {0};
    uint8_t px[3] = {0};
    void *buf;
    size_t len;
    assert_int_equal(png_encode(px, 1, 1, 3, NULL, 0, 4, &buf, &len, &err), 0);
    uint8_t *p = buf; /* IHDR: length 8..11, "IHDR" 12..15, width 16..19, height 20..23, CRC 29..32 */
    assert_memory_equal(p + 12, "IHDR", 4);
    const uint32_t w = 20000, h = PNG_MAX_PIXELS / 20000 + 1;
    for (int i = 0; i < 4; i++) p[16 + i] = (uint8_t)(w >> (24 - 8 * i)), p[20 + i] = (uint8_t)(h >> (24 - 8 * i));
    uint32_t crc = (uint32_t)crc32(0, p + 12, 17);
    for (int i = 0; i < 4; i++) p[29 + i] = (uint8_t)(crc >> (24 - 8 * i));
    struct png_image img;
    assert_int_equal(png_decode(buf, len, &img, &err), STATUS_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "exceeds the limit"));
    mem_free(buf);
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

/* png_encode + png_save_new, as SaveImage writes a file. */
static int write_new(const char *path, const uint8_t *px, struct err *err) {
    void *png = NULL;
    size_t len;
    int rc = png_encode(px, 2, 2, 3, NULL, 0, 4, &png, &len, err);
    if (!rc) rc = png_save_new(path, png, len, err);
    mem_free(png);
    return rc;
}

/* png_save_new never replaces a file: a second writer of the same name gets ERR_EXISTS with no
 * message and the first file stays intact (SaveImage on several devices relies on it). */
static void test_write_new_exclusive(void **s) {
    char path[256];
    snprintf(path, sizeof path, "/tmp/kiln_test_png_new_%d.png", (int)getpid());
    unlink(path);
    uint8_t a[4 * 3] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, b[4 * 3] = {0};
    struct err err = {0};
    assert_int_equal(write_new(path, a, &err), 0);
    assert_int_equal(write_new(path, b, &err), STATUS_ERR_EXISTS);
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


/* ===== The encoder against independent references ===== */

/* A photo-like image: smooth waves plus noise, with a flat block, hard-edged, repeated and
 * black rows, so that every filter type wins on some row. Deterministic (its own LCG). */
static uint8_t *photo(uint32_t w, uint32_t h, int c, uint32_t seed) {
    uint8_t *px = mem_alloc((size_t)w * h * (size_t)c);
    uint32_t r = seed * 2654435761u + 1;
    for (uint32_t y = 0; y < h; y++)
        for (uint32_t x = 0; x < w; x++)
            for (int k = 0; k < c; k++) {
                r = r * 1664525u + 1013904223u;
                double v = 128 + 60 * sin(x * 0.05 + k) + 50 * cos(y * 0.031 - k * 0.7) + (double)(r >> 28) - 8;
                if (x < w / 4 && y < h / 4) v = 200 - 10 * k;       /* flat block */
                if (y % 97 == 13) v = (x * 7 + k * 40) & 255;        /* a hard-edged row */
                if (k == 3) v = x > w / 2 ? 255 : (double)((x + y) & 255); /* alpha */
                px[((size_t)y * w + x) * (size_t)c + (size_t)k] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
    size_t n = (size_t)w * (size_t)c;
    for (uint32_t y = 1; y < h; y++) {
        if (y % 31 == 5) memcpy(px + y * n, px + (y - 1) * n, n); /* a repeated row: Up */
        if (y % 43 == 9) memset(px + y * n, 0, n);                 /* a black row: None */
    }
    return px;
}

/* The PNG spec's Paeth predictor, in its own words. */
static int ref_paeth(int a, int b, int c) {
    int p = a + b - c, pa = abs(p - a), pb = abs(p - b), pc = abs(p - c);
    if (pa <= pb && pa <= pc) return a;
    if (pb <= pc) return b;
    return c;
}

/* The filtered image as the minimum-sum heuristic makes it (all five filters on each row, least
 * sum of |signed byte|, lowest type on ties; None everywhere at level 0): h rows of 1 + w*c. */
static uint8_t *ref_filter(const uint8_t *px, uint32_t w, uint32_t h, int c, int level) {
    size_t n = (size_t)w * (size_t)c;
    uint8_t *out = mem_alloc((n + 1) * h), *cand = mem_alloc(5 * n);
    for (uint32_t y = 0; y < h; y++) {
        const uint8_t *row = px + y * n, *prior = y ? row - n : NULL;
        uint64_t sum[5] = {0};
        for (int f = 0; f < 5; f++)
            for (size_t i = 0; i < n; i++) {
                int a = i >= (size_t)c ? row[i - (size_t)c] : 0, b = prior ? prior[i] : 0;
                int cc = prior && i >= (size_t)c ? prior[i - (size_t)c] : 0;
                int pred = f == 0 ? 0 : f == 1 ? a : f == 2 ? b : f == 3 ? (a + b) / 2 : ref_paeth(a, b, cc);
                uint8_t v = (uint8_t)(row[i] - pred);
                cand[f * n + i] = v;
                sum[f] += v < 128 ? v : 256 - v;
            }
        int best = 0;
        if (level > 0)
            for (int f = 1; f < 5; f++)
                if (sum[f] < sum[best]) best = f;
        out[y * (n + 1)] = (uint8_t)best;
        memcpy(out + y * (n + 1) + 1, cand + (size_t)best * n, n);
    }
    mem_free(cand);
    return out;
}

/* Walks a PNG: checks the signature, every chunk's CRC (zlib's crc32), IHDR, that IEND ends the
 * file; returns the IDAT data concatenated (mem_alloc'd) in *idat. */
static void walk_png(const uint8_t *png, size_t len, uint32_t w, uint32_t h, int c, uint8_t **idat, size_t *idat_len) {
    assert_true(len > 8 && memcmp(png, "\x89PNG\r\n\x1a\n", 8) == 0);
    *idat = mem_alloc(len);
    *idat_len = 0;
    bool iend = false;
    for (size_t p = 8; p < len;) {
        assert_false(iend);
        assert_true(p + 12 <= len);
        uint32_t clen = be32(png + p);
        assert_true(p + 12 + clen <= len);
        uint32_t crc = (uint32_t)crc32(crc32(0, NULL, 0), png + p + 4, clen + 4);
        if (crc != be32(png + p + 8 + clen)) fail_msg("chunk %.4s at %zu: bad CRC", png + p + 4, p);
        if (p == 8) {
            assert_memory_equal(png + p + 4, "IHDR", 4);
            assert_int_equal(clen, 13);
            assert_int_equal(be32(png + p + 8), w);
            assert_int_equal(be32(png + p + 12), h);
            const uint8_t want[5] = {8, (uint8_t)(c == 4 ? 6 : 2), 0, 0, 0};
            assert_memory_equal(png + p + 16, want, 5);
        }
        if (memcmp(png + p + 4, "IDAT", 4) == 0) {
            memcpy(*idat + *idat_len, png + p + 8, clen);
            *idat_len += clen;
        }
        if (memcmp(png + p + 4, "IEND", 4) == 0) iend = true;
        p += 12 + clen;
    }
    assert_true(iend);
}

/* zlib's inflate of a zlib stream that must hold exactly n bytes (inflate checks the header and
 * the Adler-32 itself); returns them (mem_alloc'd). */
static uint8_t *inflate_idat(const uint8_t *z, size_t zlen, size_t n) {
    uint8_t *got = mem_alloc(n + 1);
    z_stream zs = {0};
    assert_int_equal(inflateInit(&zs), Z_OK);
    zs.next_in = (Bytef *)z;
    zs.avail_in = (uInt)zlen;
    zs.next_out = got;
    zs.avail_out = (uInt)(n + 1);
    int ze = inflate(&zs, Z_FINISH);
    if (ze != Z_STREAM_END) fail_msg("inflate: %d (%s)", ze, zs.msg ? zs.msg : "");
    assert_int_equal(zs.total_out, n);
    assert_int_equal(zs.avail_in, 0); /* nothing after the Adler-32 */
    inflateEnd(&zs);
    return got;
}

/* Checks one encoded image every way: zlib header (FLEVEL as zlib's deflate sets it), Adler-32
 * trailer, zlib's inflate (which checks the Adler-32 itself) giving exactly the reference
 * filtered rows, and libspng decoding it to the same pixels. */
static void check_encoded(const uint8_t *png, size_t len, const uint8_t *px, uint32_t w, uint32_t h, int c,
                          int level) {
    uint8_t *z;
    size_t zlen;
    walk_png(png, len, w, h, c, &z, &zlen);
    assert_true(zlen >= 6);
    int flevel = level < 2 ? 0 : level < 6 ? 1 : level == 6 ? 2 : 3;
    assert_int_equal(z[0], 0x78);
    assert_int_equal(z[1] >> 6, flevel);
    assert_int_equal((z[0] * 256 + z[1]) % 31, 0);
    assert_int_equal(z[1] & 0x20, 0); /* no preset dictionary */

    size_t n = ((size_t)w * (size_t)c + 1) * h;
    uint8_t *want = ref_filter(px, w, h, c, level);
    assert_int_equal(be32(z + zlen - 4), (uint32_t)adler32(adler32(0, NULL, 0), want, (uInt)n));
    uint8_t *got = inflate_idat(z, zlen, n);
    size_t row = (size_t)w * (size_t)c + 1;
    for (size_t y = 0; y < h; y++)
        if (memcmp(got + y * row, want + y * row, row) != 0)
            fail_msg("%ux%ux%d level %d: row %zu differs (filter %d, reference %d)", w, h, c, level, y, got[y * row],
                     want[y * row]);

    struct png_image img;
    struct err err = {0};
    assert_int_equal(png_decode(png, len, &img, &err), 0);
    assert_int_equal(img.w, w);
    assert_int_equal(img.h, h);
    assert_int_equal(img.has_alpha, c == 4);
    for (size_t i = 0; i < (size_t)w * h; i++)
        if (memcmp(img.rgba + i * 4, px + i * (size_t)c, (size_t)c) != 0 || (c == 3 && img.rgba[i * 4 + 3] != 255))
            fail_msg("%ux%ux%d level %d: pixel %zu differs after libspng decodes it", w, h, c, level, i);
    png_image_deinit(&img);
    mem_free(got);
    mem_free(want);
    mem_free(z);
}

/* RGB and RGBA, 1x1 to 512x512 and a tall 64x4000 (one strip and several), levels 0, 1, 4, 9. */
static void test_encode_roundtrips(void **s) {
    const uint32_t sizes[][2] = {{1, 1}, {7, 5}, {512, 512}, {64, 4000}};
    const int levels[] = {0, 1, 4, 9};
    struct png_text t[] = {{"prompt", "{\"1\": 2}"}, {"workflow", "{}"}};
    for (int c = 3; c <= 4; c++)
        for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
            uint32_t w = sizes[si][0], h = sizes[si][1];
            uint8_t *px = photo(w, h, c, (uint32_t)(si * 10 + (size_t)c));
            for (size_t li = 0; li < sizeof levels / sizeof *levels; li++) {
                void *buf;
                size_t len;
                struct err err = {0};
                assert_int_equal(png_encode(px, w, h, c, t, 2, levels[li], &buf, &len, &err), 0);
                check_encoded(buf, len, px, w, h, c, levels[li]);
                mem_free(buf);
            }
            mem_free(px);
        }
}

/* The test image makes the heuristic choose among several filters (else the filter check above
 * would prove little). */
static void test_filters_vary(void **s) {
    uint8_t *px = photo(512, 512, 3, 7);
    uint8_t *f = ref_filter(px, 512, 512, 3, 4);
    int seen[5] = {0}, kinds = 0;
    for (size_t y = 0; y < 512; y++) seen[f[y * (512 * 3 + 1)]]++;
    for (int k = 0; k < 5; k++) kinds += seen[k] > 0;
    print_message("filters chosen on 512 rows: none %d sub %d up %d average %d paeth %d\n", seen[0], seen[1], seen[2],
                  seen[3], seen[4]);
    assert_true(kinds >= 4);
    mem_free(f);
    mem_free(px);
}

/* png_from_float_threads gives png_from_float's bytes for any thread count, with a last part
 * shorter than the others and values out of range (and NaN) on the way. */
static void test_from_float_threads(void **s) {
    const size_t n = ((size_t)1 << 20) + 7;
    float *f = mem_alloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) f[i] = (float)(i % 1013) / 900.0f - 0.05f;
    f[3] = NAN;
    uint8_t *want = mem_alloc(n), *got = mem_alloc(n);
    png_from_float(f, want, n);
    const int threads[] = {1, 3, 16, 64};
    for (size_t t = 0; t < sizeof threads / sizeof *threads; t++) {
        memset(got, 0xaa, n);
        png_from_float_threads(f, got, n, threads[t]);
        assert_memory_equal(got, want, n);
    }
    mem_free(f);
    mem_free(want);
    mem_free(got);
}

/* The bytes do not depend on the thread count, and png_encode_many gives png_encode's bytes for
 * images big enough to be split into strips. */
static void test_encode_threads_same_bytes(void **s) {
    struct png_text t[] = {{"prompt", "{\"3\": {}}"}};
    uint8_t *px = photo(64, 4000, 4, 3);
    void *one, *other;
    size_t one_len, other_len;
    struct err err = {0};
    assert_int_equal(png_encode_threads(px, 64, 4000, 4, t, 1, 4, 1, &one, &one_len, &err), 0);
    const int threads[] = {2, 3, 8, 0};
    for (size_t i = 0; i < sizeof threads / sizeof *threads; i++) {
        assert_int_equal(png_encode_threads(px, 64, 4000, 4, t, 1, 4, threads[i], &other, &other_len, &err), 0);
        assert_int_equal(other_len, one_len);
        assert_memory_equal(other, one, one_len);
        mem_free(other);
    }
    mem_free(one);
    mem_free(px);

    uint8_t *img[2] = {photo(512, 512, 3, 1), photo(512, 512, 3, 2)};
    void *outs[2];
    size_t lens[2];
    assert_int_equal(png_encode_many((const uint8_t *const *)img, 2, 512, 512, 3, t, 1, 4, 2, outs, lens, &err), 0);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(png_encode(img[i], 512, 512, 3, t, 1, 4, &one, &one_len, &err), 0);
        assert_int_equal(one_len, lens[i]);
        assert_memory_equal(one, outs[i], one_len);
        mem_free(one);
        mem_free(outs[i]);
        mem_free(img[i]);
    }
}

/* libspng's encoder, as png_encode used it before (level, tEXt chunks): the reference for the
 * chunks and the file size. */
static void spng_encode_ref(const uint8_t *px, uint32_t w, uint32_t h, int c, const struct png_text *t, int n_text,
                            int level, void **out, size_t *len) {
    spng_ctx *ctx = spng_ctx_new(SPNG_CTX_ENCODER);
    assert_non_null(ctx);
    spng_set_option(ctx, SPNG_ENCODE_TO_BUFFER, 1);
    spng_set_option(ctx, SPNG_IMG_COMPRESSION_LEVEL, level);
    struct spng_ihdr ihdr = {.width = w, .height = h, .bit_depth = 8,
                             .color_type = c == 4 ? SPNG_COLOR_TYPE_TRUECOLOR_ALPHA : SPNG_COLOR_TYPE_TRUECOLOR};
    assert_int_equal(spng_set_ihdr(ctx, &ihdr), 0);
    struct spng_text st[4] = {0};
    for (int i = 0; i < n_text; i++) {
        strcpy(st[i].keyword, t[i].key);
        st[i].type = SPNG_TEXT;
        st[i].text = (char *)t[i].text;
        st[i].length = strlen(t[i].text);
    }
    if (n_text) assert_int_equal(spng_set_text(ctx, st, (uint32_t)n_text), 0);
    assert_int_equal(spng_encode_image(ctx, px, (size_t)w * h * (size_t)c, SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE), 0);
    int e;
    void *buf = spng_get_png_buffer(ctx, len, &e);
    assert_non_null(buf);
    *out = mem_alloc(*len);
    memcpy(*out, buf, *len);
    free(buf); /* allocated by libspng's default allocator (plain malloc) */
    spng_ctx_free(ctx);
}

/* Every chunk but IDAT, concatenated (length, type, data, CRC), into out; returns its length. */
static size_t non_idat_chunks(const uint8_t *png, size_t len, uint8_t *out) {
    size_t o = 0;
    for (size_t p = 8; p + 12 <= len;) {
        uint32_t clen = be32(png + p);
        if (memcmp(png + p + 4, "IDAT", 4) != 0) {
            memcpy(out + o, png + p, 12 + clen);
            o += 12 + clen;
        }
        p += 12 + clen;
    }
    return o;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* IHDR, the tEXt chunks and IEND are byte for byte what libspng wrote, and so are the filtered
 * rows; then the timing print (not asserted) of 512x512 RGB at level 4: libspng, ours on one
 * thread, on 2 and on 8, and the file sizes. */
static void test_encode_vs_libspng(void **s) {
    struct png_text t[] = {{"prompt", "{\"3\": {\"class_type\": \"KSampler\", \"inputs\": {\"seed\": 5}}}"},
                           {"workflow", "{\"nodes\": [{\"id\": 3}], \"links\": []}"},
                           {"Latin-1 \xe9", "caf\xe9\nline two"}};
    uint8_t *px = photo(512, 512, 3, 11);
    void *ours, *ref;
    size_t ours_len, ref_len;
    struct err err = {0};
    assert_int_equal(png_encode(px, 512, 512, 3, t, 3, 4, &ours, &ours_len, &err), 0);
    spng_encode_ref(px, 512, 512, 3, t, 3, 4, &ref, &ref_len);
    uint8_t *a = mem_alloc(ours_len), *b = mem_alloc(ref_len);
    size_t an = non_idat_chunks(ours, ours_len, a), bn = non_idat_chunks(ref, ref_len, b);
    assert_int_equal(an, bn);
    assert_memory_equal(a, b, an);
    mem_free(a);
    mem_free(b);
    char chunks[256];
    chunk_list(ours, ours_len, chunks, sizeof chunks);
    assert_string_equal(chunks, "IHDR tEXt tEXt tEXt IDAT IEND");

    /* the filtered rows are libspng's too (its filter choice; None at level 0), RGB and RGBA */
    for (int c = 3; c <= 4; c++)
        for (int level = 0; level <= 4; level += 4) {
            uint8_t *img = photo(300, 200, c, 5);
            void *p, *q;
            size_t pn, qn, zn, zqn, n = (300 * (size_t)c + 1) * 200;
            assert_int_equal(png_encode(img, 300, 200, c, NULL, 0, level, &p, &pn, &err), 0);
            spng_encode_ref(img, 300, 200, c, NULL, 0, level, &q, &qn);
            uint8_t *zp, *zq;
            walk_png(p, pn, 300, 200, c, &zp, &zn);
            walk_png(q, qn, 300, 200, c, &zq, &zqn);
            uint8_t *fp = inflate_idat(zp, zn, n), *fq = inflate_idat(zq, zqn, n);
            assert_memory_equal(fp, fq, n);
            mem_free(fp);
            mem_free(fq);
            mem_free(zp);
            mem_free(zq);
            mem_free(p);
            mem_free(q);
            mem_free(img);
        }

    enum { REPS = 7 };
    const int threads[] = {1, 2, 8};
    double best[3] = {1e30, 1e30, 1e30}, best_ref = 1e30;
    for (int r = 0; r < REPS; r++) {
        double t0 = now_ms();
        void *p;
        size_t n;
        spng_encode_ref(px, 512, 512, 3, t, 3, 4, &p, &n);
        double dt = now_ms() - t0;
        best_ref = dt < best_ref ? dt : best_ref;
        mem_free(p);
        for (int k = 0; k < 3; k++) {
            t0 = now_ms();
            assert_int_equal(png_encode_threads(px, 512, 512, 3, t, 3, 4, threads[k], &p, &n, &err), 0);
            dt = now_ms() - t0;
            best[k] = dt < best[k] ? dt : best[k];
            mem_free(p);
        }
    }
    print_message("512x512 RGB level 4, best of %d: libspng %.2f ms (%zu bytes); ours 1 thread %.2f ms, 2 threads "
                  "%.2f ms, 8 threads %.2f ms (%zu bytes, %+.2f%%; %ld CPUs online)\n",
                  REPS, best_ref, ref_len, best[0], best[1], best[2], ours_len,
                  100.0 * ((double)ours_len - (double)ref_len) / (double)ref_len, sysconf(_SC_NPROCESSORS_ONLN));
    mem_free(ours);
    mem_free(ref);
    mem_free(px);
}

/* Keywords libspng refused are still refused (1..79 printable Latin-1, no leading, trailing or
 * double spaces). */
static void test_encode_bad_keywords(void **s) {
    char long_key[81];
    memset(long_key, 'k', 80);
    long_key[80] = 0;
    const char *bad[] = {"", " lead", "trail ", "two  spaces", "tab\there", "del\x7f", long_key};
    uint8_t px[3] = {9, 8, 7};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        struct png_text t[] = {{"ok", "x"}, {bad[i], "y"}};
        void *buf = (void *)1;
        size_t len = 1;
        struct err err = {0};
        assert_int_equal(png_encode(px, 1, 1, 3, t, 2, 4, &buf, &len, &err), STATUS_ERR_INVALID);
        assert_null(buf);
        assert_int_equal(len, 0);
    }
    long_key[79] = 0; /* 79 characters are fine */
    struct png_text t[] = {{long_key, "x"}, {"Ok key \xff", "y"}};
    void *buf;
    size_t len;
    struct err err = {0};
    assert_int_equal(png_encode(px, 1, 1, 3, t, 2, 4, &buf, &len, &err), 0);
    mem_free(buf);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_rgb_text_order),
        cmocka_unit_test(test_roundtrip_rgba_file),
        cmocka_unit_test(test_big_text),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_bomb_refused),
        cmocka_unit_test(test_pil_files),
        cmocka_unit_test(test_float_conversion),
        cmocka_unit_test(test_write_new_exclusive),
        cmocka_unit_test(test_encode_many),
        cmocka_unit_test(test_encode_roundtrips),
        cmocka_unit_test(test_filters_vary),
        cmocka_unit_test(test_encode_threads_same_bytes), cmocka_unit_test(test_from_float_threads),
        cmocka_unit_test(test_encode_vs_libspng),
        cmocka_unit_test(test_encode_bad_keywords),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
