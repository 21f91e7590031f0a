/* tests/unit/model/test_safetensors.c -- model/safetensors.c: writer round trips, every
 * corruption the reader must refuse, and a fuzz loop (truncations, byte flips, random edits)
 * whose every open must either succeed with in-bounds tensors or fail with a message.
 * Files live in a fresh directory under /tmp, removed at the end. Expected values are written
 * by hand (fp16/bf16 bit patterns, JSON headers), never produced by the code under test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/mem.h"
#include "base/status.h"
#include "model/safetensors.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ===== Helpers ===== */

static char g_dir[64];

/* Path of `name` in the test directory; a ring of buffers, so a few results can be held at once. */
static const char *tmp_path(const char *name) {
    static char buf[8][256];
    static int next;
    char *b = buf[next++ % 8];
    snprintf(b, sizeof buf[0], "%s/%s", g_dir, name);
    return b;
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (n) assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

/* Writes a safetensors file from a header string and `ndata` data bytes (value i & 0xff). */
static void write_st(const char *path, const char *header, size_t ndata) {
    size_t hl = strlen(header);
    size_t n = 8 + hl + ndata;
    unsigned char *buf = mem_calloc(1, n);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, header, hl);
    for (size_t i = 0; i < ndata; i++) buf[8 + hl + i] = (unsigned char)i;
    write_bytes(path, buf, n);
    mem_free(buf);
}

static unsigned char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = mem_alloc((size_t)sz + 1);
    assert_int_equal(fread(buf, 1, (size_t)sz, f), (size_t)sz);
    fclose(f);
    *n = (size_t)sz;
    return buf;
}

static bool file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* Opens a header that must fail with `code` and a message containing the file and `needle`. */
static void expect_fail_hdr(const char *header, size_t ndata, int code, const char *needle) {
    const char *p = tmp_path("bad.safetensors");
    write_st(p, header, ndata);
    struct ckpt ck;
    struct err err = {0};
    int rc = ckpt_open(&ck, p, &err);
    if (rc != code) fail_msg("header %s: rc %d (%s), expected %d", header, rc, err.msg, code);
    if (!strstr(err.msg, p)) fail_msg("message lacks the path: %s", err.msg);
    if (needle && !strstr(err.msg, needle)) fail_msg("message lacks '%s': %s", needle, err.msg);
    assert_null(ck.map); /* zeroed after failure */
    assert_null(ck.tensors);
    ckpt_close(&ck); /* harmless */
}

/* ===== Writer round trips ===== */

/* All dtypes, a 0-d and a 4-d tensor, an empty tensor, metadata; checked byte for byte and
 * against hand-written values. */
static void test_round_trip(void **state) {
    (void)state;
    const float f32v[6] = {1.0f, -2.5f, 0.0f, 3.25f, 1e-3f, -65504.0f};
    /* fp16: 1.0, -2.0, 65504 (max), 2^-24 (smallest subnormal), 1/3 rounded, -0 */
    const uint16_t f16v[2 * 1 * 3 * 1] = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x3555, 0x8000};
    const float f16_expect[6] = {1.0f, -2.0f, 65504.0f, 5.9604644775390625e-8f, 0.333251953125f, -0.0f};
    /* bf16: 1.0, 3.140625, -0.5 */
    const uint16_t bf16v[3] = {0x3F80, 0x4049, 0xBF00};
    const float bf16_expect[3] = {1.0f, 3.140625f, -0.5f};
    const int32_t i32v[4] = {-1, 0, 7, 2147483647};
    const int64_t i64v[1] = {-1234567890123ll}; /* 0-d scalar */
    const int64_t s_f32[2] = {2, 3}, s_f16[4] = {2, 1, 3, 1}, s_bf16[1] = {3}, s_i32[2] = {4, 1}, s_empty[2] = {0, 5};

    struct ckpt_writer *w = ckpt_writer_new();
    struct err err = {0};
    /* add order deliberately not sorted by name */
    assert_int_equal(ckpt_writer_add(w, "z.f32", DTYPE_F32, 2, s_f32, f32v, &err), 0);
    assert_int_equal(ckpt_writer_add(w, "a.f16", DTYPE_F16, 4, s_f16, f16v, &err), 0);
    assert_int_equal(ckpt_writer_add(w, "m.bf16", DTYPE_BF16, 1, s_bf16, bf16v, &err), 0);
    assert_int_equal(ckpt_writer_add(w, "b.i32", DTYPE_I32, 2, s_i32, i32v, &err), 0);
    assert_int_equal(ckpt_writer_add(w, "scalar", DTYPE_I64, 0, NULL, i64v, &err), 0);
    assert_int_equal(ckpt_writer_add(w, "empty", DTYPE_F32, 2, s_empty, NULL, &err), 0);
    assert_int_equal(ckpt_writer_set_metadata(w, "format", "pt", &err), 0);
    assert_int_equal(ckpt_writer_set_metadata(w, "note", "héllo", &err), 0);
    const char *p = tmp_path("rt.safetensors");
    uint64_t predicted = ckpt_writer_file_size(w);
    assert_int_equal(ckpt_writer_write(w, p, &err), 0);
    ckpt_writer_free(w);
    assert_false(file_exists(tmp_path("rt.safetensors.tmp")));

    /* Raw file: LE length, JSON padded with spaces to a multiple of 8, contiguous data in add order. */
    size_t n;
    unsigned char *raw = read_all(p, &n);
    assert_int_equal(n, predicted);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | raw[i];
    assert_int_equal(hl % 8, 0);
    size_t data_bytes = 24 + 12 + 6 + 16 + 8 + 0;
    assert_int_equal(n, 8 + hl + data_bytes);
    json_error_t jerr;
    json_t *h = json_loadb((const char *)raw + 8, hl, 0, &jerr);
    assert_non_null(h);
    json_int_t expect_off[][2] = {{0, 24}, {24, 36}, {36, 42}, {42, 58}, {58, 66}, {66, 66}};
    const char *names[] = {"z.f32", "a.f16", "m.bf16", "b.i32", "scalar", "empty"};
    for (int i = 0; i < 6; i++) {
        json_t *e = json_object_get(h, names[i]);
        assert_non_null(e);
        json_t *o = json_object_get(e, "data_offsets");
        assert_int_equal(json_integer_value(json_array_get(o, 0)), expect_off[i][0]);
        assert_int_equal(json_integer_value(json_array_get(o, 1)), expect_off[i][1]);
    }
    assert_string_equal(json_string_value(json_object_get(json_object_get(h, "__metadata__"), "format")), "pt");
    assert_int_equal(json_array_size(json_object_get(json_object_get(h, "scalar"), "shape")), 0);
    assert_string_equal(json_string_value(json_object_get(json_object_get(h, "a.f16"), "dtype")), "F16");
    json_decref(h);
    assert_memory_equal(raw + 8 + hl, f32v, 24);
    assert_memory_equal(raw + 8 + hl + 24, f16v, 12);
    assert_memory_equal(raw + 8 + hl + 58, i64v, 8);
    mem_free(raw);

    /* Reader. */
    struct ckpt ck;
    assert_int_equal(ckpt_open(&ck, p, &err), 0);
    assert_int_equal(ck.n_tensors, 6);
    for (int i = 1; i < ck.n_tensors; i++) assert_true(strcmp(ck.tensors[i - 1].name, ck.tensors[i].name) < 0);
    assert_int_equal(ck.data_start % 8, 0);
    assert_string_equal(ckpt_metadata_get(&ck, "format"), "pt");
    assert_string_equal(ckpt_metadata_get(&ck, "note"), "héllo");
    assert_null(ckpt_metadata_get(&ck, "missing"));
    assert_null(ckpt_find(&ck, "nope"));
    assert_null(ckpt_find(&ck, "__metadata__"));

    const struct ckpt_tensor *t = ckpt_find(&ck, "z.f32");
    assert_non_null(t);
    assert_int_equal(t->dtype, DTYPE_F32);
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[0], 2);
    assert_int_equal(t->shape[1], 3);
    assert_int_equal(ckpt_tensor_numel(t), 6);
    assert_int_equal(t->nbytes, 24);
    float out[6];
    assert_int_equal(ckpt_tensor_read_f32(t, out, &err), 0);
    assert_memory_equal(out, f32v, sizeof out);

    t = ckpt_find(&ck, "a.f16");
    assert_int_equal(t->dtype, DTYPE_F16);
    assert_int_equal(t->ndim, 4);
    assert_int_equal(t->shape[2], 3);
    assert_int_equal(ckpt_tensor_read_f32(t, out, &err), 0);
    for (int i = 0; i < 6; i++) assert_memory_equal(&out[i], &f16_expect[i], 4); /* bitwise: -0 too */

    t = ckpt_find(&ck, "m.bf16");
    assert_int_equal(t->dtype, DTYPE_BF16);
    assert_int_equal(ckpt_tensor_read_f32(t, out, &err), 0);
    for (int i = 0; i < 3; i++) assert_true(out[i] == bf16_expect[i]);

    t = ckpt_find(&ck, "b.i32");
    assert_int_equal(t->dtype, DTYPE_I32);
    assert_memory_equal(t->data, i32v, 16);
    assert_int_equal(ckpt_tensor_read_f32(t, out, &err), STATUS_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "b.i32"));
    err_clear(&err);

    t = ckpt_find(&ck, "scalar");
    assert_int_equal(t->ndim, 0);
    assert_int_equal(ckpt_tensor_numel(t), 1);
    assert_int_equal(t->dtype, DTYPE_I64);
    int64_t sv;
    memcpy(&sv, t->data, 8);
    assert_int_equal(sv, i64v[0]);

    t = ckpt_find(&ck, "empty");
    assert_int_equal(ckpt_tensor_numel(t), 0);
    assert_int_equal(t->nbytes, 0);
    assert_int_equal(ckpt_tensor_read_f32(t, out, &err), 0);
    ckpt_close(&ck);
    assert_null(ck.map);
    ckpt_close(&ck); /* twice is fine */
}

/* Streaming write in odd chunks equals the one-shot write; wrong byte counts fail cleanly. */
static void test_stream(void **state) {
    (void)state;
    uint16_t a[1000];
    float b[77];
    for (int i = 0; i < 1000; i++) a[i] = (uint16_t)(i * 7);
    for (int i = 0; i < 77; i++) b[i] = (float)i / 3.0f;
    const int64_t sa[2] = {10, 100}, sb[1] = {77};
    struct err err = {0};

    struct ckpt_writer *w = ckpt_writer_new();
    assert_int_equal(ckpt_writer_add(w, "a", DTYPE_F16, 2, sa, a, &err), 0);
    assert_int_equal(ckpt_writer_add(w, "b", DTYPE_F32, 1, sb, b, &err), 0);
    assert_int_equal(ckpt_writer_write(w, tmp_path("one.safetensors"), &err), 0);
    ckpt_writer_free(w);

    w = ckpt_writer_new();
    assert_int_equal(ckpt_writer_add(w, "a", DTYPE_F16, 2, sa, NULL, &err), 0);
    assert_int_equal(ckpt_writer_add(w, "b", DTYPE_F32, 1, sb, NULL, &err), 0);
    /* write() refuses tensors without data */
    assert_int_equal(ckpt_writer_write(w, tmp_path("x.safetensors"), &err), STATUS_ERR_INVALID);
    err_clear(&err);
    assert_int_equal(ckpt_writer_begin(w, tmp_path("two.safetensors"), &err), 0);
    assert_true(file_exists(tmp_path("two.safetensors.tmp")));
    const unsigned char *pa = (const unsigned char *)a;
    assert_int_equal(ckpt_writer_stream(w, pa, 333, &err), 0);
    assert_int_equal(ckpt_writer_stream(w, pa + 333, 2000 - 333, &err), 0);
    assert_int_equal(ckpt_writer_stream(w, b, sizeof b, &err), 0);
    assert_int_equal(ckpt_writer_finish(w, &err), 0);
    ckpt_writer_free(w);
    size_t n1, n2;
    unsigned char *f1 = read_all(tmp_path("one.safetensors"), &n1), *f2 = read_all(tmp_path("two.safetensors"), &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(f1, f2, n1);
    mem_free(f1);
    mem_free(f2);

    /* too few bytes: finish fails, no file, no tmp */
    w = ckpt_writer_new();
    assert_int_equal(ckpt_writer_add(w, "a", DTYPE_F16, 2, sa, NULL, &err), 0);
    assert_int_equal(ckpt_writer_begin(w, tmp_path("short.safetensors"), &err), 0);
    assert_int_equal(ckpt_writer_stream(w, a, 100, &err), 0);
    assert_int_equal(ckpt_writer_finish(w, &err), STATUS_ERR_INVALID);
    assert_non_null(strstr(err.msg, "100 of 2000"));
    err_clear(&err);
    assert_false(file_exists(tmp_path("short.safetensors")));
    assert_false(file_exists(tmp_path("short.safetensors.tmp")));
    /* too many bytes */
    assert_int_equal(ckpt_writer_begin(w, tmp_path("long.safetensors"), &err), 0);
    assert_int_equal(ckpt_writer_stream(w, a, 2000, &err), 0);
    assert_int_equal(ckpt_writer_stream(w, a, 1, &err), STATUS_ERR_INVALID);
    err_clear(&err);
    assert_false(file_exists(tmp_path("long.safetensors.tmp")));
    /* abandoned in the middle: free removes the tmp file */
    assert_int_equal(ckpt_writer_begin(w, tmp_path("gone.safetensors"), &err), 0);
    assert_int_equal(ckpt_writer_add(w, "late", DTYPE_F16, 2, sa, NULL, &err), STATUS_ERR_INVALID);
    err_clear(&err);
    ckpt_writer_free(w);
    assert_false(file_exists(tmp_path("gone.safetensors.tmp")));
    assert_false(file_exists(tmp_path("gone.safetensors")));
}

static void test_writer_errors(void **state) {
    (void)state;
    struct err err = {0};
    float x[2] = {0};
    const int64_t s[1] = {2}, neg[1] = {-1}, big[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    struct ckpt_writer *w = ckpt_writer_new();
    assert_int_equal(ckpt_writer_add(w, "x", DTYPE_F32, 1, s, x, &err), 0);
    assert_int_equal(ckpt_writer_add(w, "x", DTYPE_F32, 1, s, x, &err), STATUS_ERR_INVALID);
    assert_non_null(strstr(err.msg, "duplicate"));
    err_clear(&err);
    assert_int_equal(ckpt_writer_add(w, "__metadata__", DTYPE_F32, 1, s, x, &err), STATUS_ERR_INVALID);
    err_clear(&err);
    assert_int_equal(ckpt_writer_add(w, "", DTYPE_F32, 1, s, x, &err), STATUS_ERR_INVALID);
    err_clear(&err);
    assert_int_equal(ckpt_writer_add(w, "n", DTYPE_F32, 1, neg, x, &err), STATUS_ERR_INVALID);
    err_clear(&err);
    assert_int_equal(ckpt_writer_add(w, "d", DTYPE_F32, 9, big, x, &err), STATUS_ERR_INVALID);
    err_clear(&err);
    assert_int_equal(ckpt_writer_add(w, "t", DTYPE_COUNT, 1, s, x, &err), STATUS_ERR_INVALID);
    err_clear(&err);
    /* unwritable path: a missing directory */
    const char *bad = "/nonexistent-kiln-dir/out.safetensors";
    assert_int_equal(ckpt_writer_write(w, bad, &err), STATUS_ERR_IO);
    assert_non_null(strstr(err.msg, "/nonexistent-kiln-dir/out.safetensors.tmp"));
    ckpt_writer_free(w);
    ckpt_writer_free(NULL);
}

/* ===== Reader: every corruption ===== */

#define T1 "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}"

static void test_valid_hand_written(void **state) {
    (void)state;
    /* header with spaces, metadata, an unsupported but known dtype, an extra field */
    const char *p = tmp_path("hand.safetensors");
    write_st(p,
             "{\"__metadata__\":{\"k\":\"v\"}, \"b\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[8,16]},"
             "\"a\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,8],\"extra\":1}}   ",
             16);
    struct ckpt ck;
    struct err err = {0};
    assert_int_equal(ckpt_open(&ck, p, &err), 0);
    assert_int_equal(ck.n_tensors, 2);
    assert_string_equal(ck.tensors[0].name, "a");
    assert_string_equal(ck.tensors[1].name, "b");
    assert_string_equal(ckpt_metadata_get(&ck, "k"), "v");
    const struct ckpt_tensor *b = ckpt_find(&ck, "b");
    assert_int_equal(b->dtype, DTYPE_COUNT);
    assert_string_equal(b->dtype_str, "F64");
    assert_ptr_equal(b->data, (const char *)ck.map + ck.data_start + 8);
    float out[4];
    assert_int_equal(ckpt_tensor_read_f32(b, out, &err), STATUS_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "F64"));
    err_clear(&err);
    /* a.f16 data bytes are 00 01 02 03 ... : 0x0100 and 0x0302 as fp16 */
    const struct ckpt_tensor *a = ckpt_find(&ck, "a");
    assert_int_equal(ckpt_tensor_read_f32(a, out, &err), 0);
    assert_true(out[0] == 256.0f * 0x1p-24f); /* 0x0100: subnormal 256 * 2^-24 */
    ckpt_close(&ck);

    /* empty header object: no tensors */
    write_st(p, "{}      ", 0);
    assert_int_equal(ckpt_open(&ck, p, &err), 0);
    assert_int_equal(ck.n_tensors, 0);
    assert_null(ckpt_find(&ck, "t"));
    ckpt_close(&ck);
}

static void test_corrupt(void **state) {
    (void)state;
    struct ckpt ck;
    struct err err = {0};
    const char *p = tmp_path("bad.safetensors");

    /* missing file, directory */
    assert_int_equal(ckpt_open(&ck, tmp_path("missing.safetensors"), &err), STATUS_ERR_IO);
    assert_non_null(strstr(err.msg, "missing.safetensors"));
    err_clear(&err);
    assert_int_equal(ckpt_open(&ck, g_dir, &err), STATUS_ERR_IO);
    err_clear(&err);

    /* shorter than 8 bytes */
    write_bytes(p, "", 0);
    assert_int_equal(ckpt_open(&ck, p, &err), STATUS_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "too short"));
    err_clear(&err);
    write_bytes(p, "\x05\0\0\0\0", 5);
    assert_int_equal(ckpt_open(&ck, p, &err), STATUS_ERR_FORMAT);
    err_clear(&err);

    /* absurd / past-the-end header lengths */
    unsigned char buf[32] = {0};
    buf[5] = 1; /* 2^40 */
    write_bytes(p, buf, sizeof buf);
    assert_int_equal(ckpt_open(&ck, p, &err), STATUS_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "absurd"));
    err_clear(&err);
    memset(buf, 0, sizeof buf);
    buf[0] = 25; /* 25 > 32 - 8 */
    write_bytes(p, buf, sizeof buf);
    assert_int_equal(ckpt_open(&ck, p, &err), STATUS_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "past the end"));
    err_clear(&err);
    memset(buf, 0, sizeof buf);
    write_bytes(p, buf, sizeof buf); /* length 0 */
    assert_int_equal(ckpt_open(&ck, p, &err), STATUS_ERR_FORMAT);
    err_clear(&err);

    int F = STATUS_ERR_FORMAT;
    expect_fail_hdr("{\"t\":{\"dtype\":\"F32\"", 0, F, "not valid JSON");
    expect_fail_hdr("[1, 2]", 0, F, "not a JSON object");
    expect_fail_hdr("\"str\"", 0, F, "JSON"); /* jansson refuses non-container roots itself */
    expect_fail_hdr(T1 " x", 8, F, "not valid JSON");
    expect_fail_hdr("{\"t\":5}", 0, F, "'t'");
    expect_fail_hdr("{\"t\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, F, "dtype");
    expect_fail_hdr("{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, F, "shape");
    expect_fail_hdr("{\"t\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, F, "data_offsets");
    expect_fail_hdr("{\"t\":{\"dtype\":32,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, F, "not a string");
    expect_fail_hdr("{\"t\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8, F, "not an array");
    expect_fail_hdr("{\"t\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8, F, "not an integer");
    expect_fail_hdr("{\"t\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8, F, "not an integer");
    expect_fail_hdr("{\"t\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, F, "negative");
    expect_fail_hdr("{\"t\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}", 8, F,
                    "dimensions");
    expect_fail_hdr("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8, F, "data_offsets");
    expect_fail_hdr("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,9]}}", 8, F, "data_offsets");
    expect_fail_hdr("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":{}}}", 8, F, "data_offsets");
    expect_fail_hdr("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,\"8\"]}}", 8, F, "non-negative");
    expect_fail_hdr("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 8, F, "non-negative");
    expect_fail_hdr("{\"t\":{\"dtype\":\"F17\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, F, "unknown dtype");
    expect_fail_hdr("{\"t\":{\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, F, "unknown dtype");
    /* shape x dtype size != byte range */
    expect_fail_hdr("{\"t\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 16, F, "need 12 bytes");
    expect_fail_hdr("{\"t\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, F, "'t'");
    expect_fail_hdr("{\"t\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776],\"data_offsets\":[0,8]}}", 8,
                    F, "more than");
    /* offsets reversed, beyond the data */
    expect_fail_hdr("{\"t\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8, F, "reversed");
    expect_fail_hdr(T1, 7, F, "past the data section");
    expect_fail_hdr("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 12, F, "past the data");
    /* overlapping ranges */
    expect_fail_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                    12, F, "overlapping");
    expect_fail_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                    16, F, "overlapping");
    /* duplicate names */
    expect_fail_hdr("{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    "\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
                    16, F, "duplicate");
    /* metadata */
    expect_fail_hdr("{\"__metadata__\":[1]," "\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, F,
                    "__metadata__");
    expect_fail_hdr("{\"__metadata__\":{\"k\":1}}", 0, F, "not a string");
    /* a NUL inside a name */
    expect_fail_hdr("{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, F, NULL);

    /* adjacent and empty ranges are fine */
    write_st(p,
             "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
             "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
             "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
             16);
    assert_int_equal(ckpt_open(&ck, p, &err), 0);
    ckpt_close(&ck);
}

/* ===== Fuzz ===== */

/* Every tensor of an opened ckpt lies inside the mapping's data section. */
static void check_opened(struct ckpt *ck) {
    const char *lo = (const char *)ck->map + ck->data_start, *hi = (const char *)ck->map + ck->map_size;
    for (int i = 0; i < ck->n_tensors; i++) {
        const struct ckpt_tensor *t = &ck->tensors[i];
        assert_true((const char *)t->data >= lo && (const char *)t->data + t->nbytes <= hi);
        assert_ptr_equal(ckpt_find(ck, t->name), t);
        if (t->dtype == DTYPE_F32 || t->dtype == DTYPE_F16 || t->dtype == DTYPE_BF16) {
            float *out = mem_alloc((size_t)ckpt_tensor_numel(t) * sizeof(float) + 1);
            assert_int_equal(ckpt_tensor_read_f32(t, out, NULL), 0);
            mem_free(out);
        }
    }
}

static int g_opened, g_failed;

static void fuzz_one(const unsigned char *bytes, size_t n) {
    const char *p = tmp_path("fuzz.safetensors");
    write_bytes(p, bytes, n);
    struct ckpt ck;
    struct err err = {0};
    int rc = ckpt_open(&ck, p, &err);
    if (rc == 0) {
        g_opened++;
        check_opened(&ck);
        ckpt_close(&ck);
    } else {
        g_failed++;
        assert_true(rc < 0);
        assert_true(err.msg[0] != 0);
        assert_int_equal(err.code, rc);
        assert_null(ck.map);
    }
}

static uint64_t xorshift(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void test_fuzz(void **state) {
    (void)state;
    /* a valid file with several dtypes and metadata */
    uint16_t h[24];
    float f[5];
    for (int i = 0; i < 24; i++) h[i] = (uint16_t)(0x3C00 + i);
    for (int i = 0; i < 5; i++) f[i] = (float)i;
    const int64_t s1[3] = {2, 3, 4}, s2[1] = {5}, s3[2] = {3, 2};
    struct err err = {0};
    struct ckpt_writer *w = ckpt_writer_new();
    assert_int_equal(ckpt_writer_add(w, "model.weight", DTYPE_F16, 3, s1, h, &err), 0);
    assert_int_equal(ckpt_writer_add(w, "model.bias", DTYPE_F32, 1, s2, f, &err), 0);
    assert_int_equal(ckpt_writer_add(w, "model.bf", DTYPE_BF16, 2, s3, h, &err), 0);
    assert_int_equal(ckpt_writer_add(w, "ids", DTYPE_I64, 0, NULL, h, &err), 0);
    assert_int_equal(ckpt_writer_set_metadata(w, "format", "pt", &err), 0);
    assert_int_equal(ckpt_writer_write(w, tmp_path("seed.safetensors"), &err), 0);
    ckpt_writer_free(w);
    size_t n;
    unsigned char *orig = read_all(tmp_path("seed.safetensors"), &n);
    unsigned char *buf = mem_alloc(n);
    size_t hend = 8 + (size_t)orig[0] + ((size_t)orig[1] << 8);

    /* 1. every truncation */
    for (size_t len = 0; len <= n; len++) fuzz_one(orig, len);
    assert_int_equal(g_opened, 1); /* only the full file opens (the data has no slack) */

    /* 2. every header byte flipped (a few masks), and the length prefix */
    const unsigned char masks[] = {0x01, 0x20, 0x80, 0xff};
    for (size_t i = 0; i < hend; i++) {
        for (size_t m = 0; m < sizeof masks; m++) {
            memcpy(buf, orig, n);
            buf[i] ^= masks[m];
            fuzz_one(buf, n);
        }
    }

    /* 3. random multi-byte edits in the header, with digits and JSON punctuation */
    const char alphabet[] = "0123456789-[]{},:\" eE.F";
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (int it = 0; it < 3000; it++) {
        memcpy(buf, orig, n);
        int edits = 1 + (int)(xorshift(&s) % 4);
        for (int e = 0; e < edits; e++) {
            size_t pos = 8 + (size_t)(xorshift(&s) % (hend - 8));
            buf[pos] = (unsigned char)alphabet[xorshift(&s) % (sizeof alphabet - 1)];
        }
        fuzz_one(buf, n);
    }
    print_message("fuzz: %d opened, %d refused\n", g_opened, g_failed);
    assert_true(g_failed > 1000);
    assert_true(g_opened > 1); /* some flips keep the file valid (e.g. inside names) */
    mem_free(buf);
    mem_free(orig);
}

/* ===== Main ===== */

static int setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/kiln_st_XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_stream),
        cmocka_unit_test(test_writer_errors),
        cmocka_unit_test(test_valid_hand_written),
        cmocka_unit_test(test_corrupt),
        cmocka_unit_test(test_fuzz),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
