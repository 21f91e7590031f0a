/* tests/unit/sample/test_rng.c -- sample/rng against torch: the mt19937 reference stream,
 * every torch.randn golden case of tests/data/golden/randn_cpu.json (torch 2.11, x86 AVX-512
 * host = the AVX2 kernel) bit for bit plus the SHA-256 of all values, the same draws under
 * torch's scalar DEFAULT kernel, ComfyUI's prepare_noise cases, and the cached-normal rule.
 * Owns: nothing; one process, cmocka. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "base/mem.h"
#include "base/status.h"
#include "sample/rng.h"

#include "golden.h"

/* ===== Helpers ===== */

/* Compares out[0..n) with a case's bits (all, or first 256 + last 64) and its sha256. Returns
 * the number of mismatching values found (0 = pass), printing the first few. */
static int check_case(const json_t *c, const float *out, int64_t n, const char *what) {
    int bad = 0;
    const json_t *all = json_object_get(c, "bits");
    const json_t *first = json_object_get(c, "first_bits");
    const json_t *last = json_object_get(c, "last_bits");
    size_t i;
    json_t *v;
    if (all) {
        assert_int_equal(json_array_size(all), (size_t)n);
        json_array_foreach(all, i, v) {
            if (golden_f32_bits(out[i]) != golden_hex32(json_string_value(v)) && bad++ < 4)
                fprintf(stderr, "%s: value %zu is %08x, torch %s\n", what, i, golden_f32_bits(out[i]),
                        json_string_value(v));
        }
    } else if (first) {
        json_array_foreach(first, i, v) {
            if (golden_f32_bits(out[i]) != golden_hex32(json_string_value(v)) && bad++ < 4)
                fprintf(stderr, "%s: value %zu is %08x, torch %s\n", what, i, golden_f32_bits(out[i]),
                        json_string_value(v));
        }
        int64_t off = n - (int64_t)json_array_size(last);
        json_array_foreach(last, i, v) {
            if (golden_f32_bits(out[off + i]) != golden_hex32(json_string_value(v)) && bad++ < 4)
                fprintf(stderr, "%s: value %lld is %08x, torch %s\n", what, (long long)(off + i),
                        golden_f32_bits(out[off + i]), json_string_value(v));
        }
    }
    char hex[65];
    golden_sha256_f32(out, n, hex);
    if (strcmp(hex, json_string_value(json_object_get(c, "sha256"))) != 0) {
        fprintf(stderr, "%s: sha256 %s, torch %s\n", what, hex, json_string_value(json_object_get(c, "sha256")));
        bad++;
    }
    return bad;
}

/* ===== The hash and the engine (independent references) ===== */

static void test_sha256_reference(void **state) {
    (void)state;
    /* FIPS 180-4 example "abc" and the empty string */
    struct golden_sha256 c;
    char hex[65];
    golden_sha256_init(&c);
    golden_sha256_update(&c, "abc", 3);
    golden_sha256_hex(&c, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    golden_sha256_init(&c);
    golden_sha256_hex(&c, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

static void test_mt19937_reference(void **state) {
    (void)state;
    /* std::mt19937 with the default seed 5489: first output 3499211612 and, as the C++
     * standard requires, the 10000th output 4123659995 */
    struct rng r;
    rng_init(&r, 5489);
    assert_int_equal(rng_u32(&r), 3499211612u);
    for (int i = 2; i < 10000; i++) rng_u32(&r);
    assert_int_equal(rng_u32(&r), 4123659995u);
    /* random64 puts the first word high */
    struct rng a, b;
    rng_init(&a, 5489);
    rng_init(&b, 5489);
    uint64_t hi = rng_u32(&a), lo = rng_u32(&a);
    assert_true(rng_u64(&b) == ((hi << 32) | lo));
}

static void test_seed_uses_low_32_bits(void **state) {
    (void)state;
    struct rng a, b;
    rng_init(&a, 42);
    rng_init(&b, (UINT64_C(1) << 32) + 42);
    for (int i = 0; i < 1000; i++) assert_int_equal(rng_u32(&a), rng_u32(&b));
    assert_true(b.seed == (UINT64_C(1) << 32) + 42);
}

/* ===== torch.randn goldens ===== */

static void run_randn_cases(enum rng_kernel kernel) {
    json_t *root = golden_load("randn_cpu.json");
    const json_t *cases = json_object_get(root, "randn");
    const json_t *dcases = json_object_get(json_object_get(json_object_get(root, "other_cpu_capabilities"),
                                                           "default"), "cases");
    assert_true(json_array_size(cases) == 88);
    int failed = 0;
    size_t i;
    json_t *c;
    const json_t *list = kernel == RNG_KERNEL_AVX2 ? cases : dcases;
    json_array_foreach(list, i, c) {
        uint64_t seed = golden_hex64(json_string_value(json_object_get(c, "seed_hex")));
        int64_t n = golden_numel(json_object_get(c, "shape"));
        float *out = mem_alloc((size_t)n * sizeof(float));
        struct rng r;
        rng_init(&r, seed);
        rng_randn_kernel(&r, out, n, kernel);
        char what[128];
        snprintf(what, sizeof what, "%s seed %016llx n %lld", rng_kernel_name(kernel), (unsigned long long)seed,
                 (long long)n);
        int bad = check_case(c, out, n, what);
        if (bad) failed++;
        mem_free(out);
    }
    json_decref(root);
    assert_int_equal(failed, 0);
}

static void test_randn_golden_avx2(void **state) {
    (void)state;
    if (!rng_kernel_avx2_available()) {
        skip(); /* the reference kernel of x86 torch needs AVX2+FMA */
    }
    run_randn_cases(RNG_KERNEL_AVX2);
}

static void test_randn_golden_default(void **state) {
    (void)state;
    run_randn_cases(RNG_KERNEL_DEFAULT);
}

static void test_kernel_selection(void **state) {
    (void)state;
    setenv("KILN_RNG_KERNEL", "default", 1);
    assert_int_equal(rng_kernel_active(), RNG_KERNEL_DEFAULT);
    unsetenv("KILN_RNG_KERNEL");
    assert_int_equal(rng_kernel_active(),
                     rng_kernel_avx2_available() ? RNG_KERNEL_AVX2 : RNG_KERNEL_DEFAULT);
    assert_string_equal(rng_kernel_name(RNG_KERNEL_AVX2), "avx2");
    assert_string_equal(rng_kernel_name(RNG_KERNEL_DEFAULT), "default");
}

/* The numel < 16 path keeps the sine half of a Box-Muller pair in the generator, across
 * calls. Values from torch 1.13 (Debian python3-torch): g = torch.manual_seed(42);
 * randn(3), randn(3), randn(1); then seed 7: randn(5). This path is double-precision libm and
 * does not depend on the CPU kernel. */
static void test_randn_small_cache_across_calls(void **state) {
    (void)state;
    static const uint32_t want42[7] = {0x3eac62ae, 0x3e03e69d, 0x3e7016e7, 0x3e6bdc6c,
                                       0xbf8fb9c2, 0xbe3eccd8, 0x400d532c};
    static const uint32_t want7[5] = {0xbe165174, 0x3f49408e, 0x3f7262e7, 0xbf8ea2d3, 0x3fd86bd0};
    struct rng r;
    float out[7];
    rng_init(&r, 42);
    rng_randn(&r, out, 3);
    rng_randn(&r, out + 3, 3);
    rng_randn(&r, out + 6, 1);
    for (int i = 0; i < 7; i++) assert_int_equal(golden_f32_bits(out[i]), want42[i]);
    /* reseeding clears the cache */
    rng_init(&r, 7);
    rng_randn(&r, out, 5);
    for (int i = 0; i < 5; i++) assert_int_equal(golden_f32_bits(out[i]), want7[i]);
}

static void test_randn_zero_draws_nothing(void **state) {
    (void)state;
    struct rng a, b;
    rng_init(&a, 3);
    rng_init(&b, 3);
    rng_randn(&a, NULL, 0);
    assert_int_equal(rng_u32(&a), rng_u32(&b));
}

/* ===== ComfyUI prepare_noise ===== */

static void test_prepare_noise_golden(void **state) {
    (void)state;
    json_t *root = golden_load("randn_cpu.json");
    const json_t *cases = json_object_get(root, "prepare_noise");
    assert_true(json_array_size(cases) > 0);
    enum rng_kernel k = rng_kernel_active();
    if (k != RNG_KERNEL_AVX2) {
        json_decref(root);
        skip(); /* goldens are the AVX2 kernel's values */
    }
    int failed = 0;
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        uint64_t seed = golden_hex64(json_string_value(json_object_get(c, "seed_hex")));
        const json_t *shape = json_object_get(c, "latent_shape");
        int64_t b = golden_int(json_array_get(shape, 0));
        int64_t per = golden_numel(shape) / b;
        const json_t *bi = json_object_get(c, "batch_index");
        int idx[16];
        int nidx = 0;
        if (json_is_array(bi)) {
            size_t j;
            json_t *v;
            json_array_foreach(bi, j, v) idx[nidx++] = (int)golden_int(v);
            b = nidx; /* ComfyUI's latent batch is batch_index's length */
        }
        int64_t n = b * per;
        assert_int_equal(n, golden_int(json_object_get(c, "count")));
        float *out = mem_alloc((size_t)n * sizeof(float));
        struct err e = {0};
        assert_int_equal(rng_prepare_noise(seed, b, per, nidx ? idx : NULL, nidx, out, &e), STATUS_OK);
        char what[128];
        snprintf(what, sizeof what, "prepare_noise case %zu", i);
        if (check_case(c, out, n, what)) failed++;
        mem_free(out);
    }
    json_decref(root);
    assert_int_equal(failed, 0);
}

/* batch_index semantics against plain draws: [1, 1, 3] = draws #1, #1, #3 of 4 in sequence. */
static void test_prepare_noise_batch_index_order(void **state) {
    (void)state;
    enum { PER = 40 };
    float want[4][PER], out[3 * PER];
    struct rng r;
    rng_init(&r, 99);
    for (int i = 0; i < 4; i++) rng_randn(&r, want[i], PER);
    int idx[3] = {3, 1, 1};
    struct err e = {0};
    assert_int_equal(rng_prepare_noise(99, 3, PER, idx, 3, out, &e), STATUS_OK);
    assert_memory_equal(out, want[3], sizeof want[3]);
    assert_memory_equal(out + PER, want[1], sizeof want[1]);
    assert_memory_equal(out + 2 * PER, want[1], sizeof want[1]);
    /* without batch_index: one draw over the batch, which differs from per-image draws when
     * the image size is not a multiple of 16 (the tail redraw) */
    float whole[2 * PER], two[2 * PER];
    assert_int_equal(rng_prepare_noise(99, 2, PER, NULL, 0, whole, &e), STATUS_OK);
    rng_init(&r, 99);
    rng_randn(&r, two, PER);
    rng_randn(&r, two + PER, PER);
    assert_memory_not_equal(whole, two, sizeof whole);
}

static void test_prepare_noise_errors(void **state) {
    (void)state;
    float out[64];
    struct err e = {0};
    int neg[2] = {0, -1};
    assert_int_equal(rng_prepare_noise(1, 2, 16, neg, 2, out, &e), STATUS_ERR_INVALID);
    assert_non_null(strstr(e.msg, "batch_index[1]"));
    err_clear(&e);
    int two[2] = {0, 1};
    assert_int_equal(rng_prepare_noise(1, 3, 16, two, 2, out, &e), STATUS_ERR_INVALID);
    assert_non_null(strstr(e.msg, "2 entries"));
    err_clear(&e);
    assert_int_equal(rng_prepare_noise(1, 0, 16, NULL, 0, out, &e), STATUS_ERR_INVALID);
    assert_int_equal(e.code, STATUS_ERR_INVALID);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_reference),
        cmocka_unit_test(test_mt19937_reference),
        cmocka_unit_test(test_seed_uses_low_32_bits),
        cmocka_unit_test(test_randn_golden_avx2),
        cmocka_unit_test(test_randn_golden_default),
        cmocka_unit_test(test_kernel_selection),
        cmocka_unit_test(test_randn_small_cache_across_calls),
        cmocka_unit_test(test_randn_zero_draws_nothing),
        cmocka_unit_test(test_prepare_noise_golden),
        cmocka_unit_test(test_prepare_noise_batch_index_order),
        cmocka_unit_test(test_prepare_noise_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
