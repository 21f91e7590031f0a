/* tests/unit/io/test_resize.c -- io/resize.c against PyTorch 1.13 / PIL reference values.
 * The reference is tests/data/graph/resize_ref.json, written by tests/ref/graph_ref.py
 * (F.interpolate, adaptive_avg_pool2d, a from-scratch bislerp, PIL LANCZOS).
 * nearest-exact, area and lanczos must match exactly. bilinear/bicubic get a relative
 * tolerance of 5e-6: torch 1.13 computes the source coordinate in double (acc_type), torch 2.x
 * (what ComfyUI runs, and what io/resize.c follows) in float, which moves weights by ~1e-7. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/mem.h"
#include "io/resize.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static json_t *ref;

static float *floats(json_t *a, size_t *n) {
    *n = json_array_size(a);
    float *f = mem_alloc(*n * sizeof *f);
    for (size_t i = 0; i < *n; i++) f[i] = (float)json_number_value(json_array_get(a, i));
    return f;
}

/* Runs every reference case of `method` and checks the largest absolute error. */
static void check_method(const char *method, double tol) {
    json_t *cases = json_object_get(ref, "cases");
    int seen = 0;
    for (size_t ci = 0; ci < json_array_size(cases); ci++) {
        json_t *c = json_array_get(cases, ci);
        if (strcmp(json_string_value(json_object_get(c, "method")), method) != 0) continue;
        json_t *in = json_object_get(json_object_get(ref, "inputs"), json_string_value(json_object_get(c, "input")));
        json_t *shape = json_object_get(in, "shape");
        int64_t n = json_integer_value(json_array_get(shape, 0)), ch = json_integer_value(json_array_get(shape, 1));
        int64_t h = json_integer_value(json_array_get(shape, 2)), w = json_integer_value(json_array_get(shape, 3));
        int64_t ow = json_integer_value(json_object_get(c, "width")), oh = json_integer_value(json_object_get(c, "height"));
        size_t ni, ne;
        float *src = floats(json_object_get(in, "data"), &ni);
        float *want = floats(json_object_get(c, "data"), &ne);
        assert_int_equal(ni, (size_t)(n * ch * h * w));
        assert_int_equal(ne, (size_t)(n * ch * oh * ow));
        float *got = mem_alloc(ne * sizeof *got);
        struct err err = {0};
        assert_int_equal(io_common_upscale(src, n, ch, h, w, got, ow, oh, io_upscale_parse(method),
                                           json_is_true(json_object_get(c, "crop")), &err), 0);
        double maxd = 0;
        size_t worst = 0;
        for (size_t i = 0; i < ne; i++) {
            double d = fabs((double)got[i] - (double)want[i]) / fmax(1.0, fabs((double)want[i]));
            if (!(d <= maxd)) maxd = d, worst = i;
        }
        printf("%-14s %2lldx%-2lld -> %2lldx%-2lld crop=%d  max rel diff %.3g\n", method, (long long)w, (long long)h,
               (long long)ow, (long long)oh, json_is_true(json_object_get(c, "crop")), maxd);
        if (!(maxd <= tol)) {
            float g = got[worst], wv = want[worst];
            mem_free(src), mem_free(want), mem_free(got);
            fail_msg("%s case %zu: element %zu got %.9g want %.9g", method, ci, worst, g, wv);
        }
        if (0) fail_msg("%s case %zu: element %zu got %.9g want %.9g", method, ci, worst, got[worst], want[worst]);
        seen++;
        mem_free(src), mem_free(want), mem_free(got);
    }
    assert_true(seen > 0);
}

static void test_nearest_exact(void **s) { check_method("nearest-exact", 0.0); }
static void test_bilinear(void **s) { check_method("bilinear", 5e-6); }
static void test_bicubic(void **s) { check_method("bicubic", 5e-6); }
static void test_area(void **s) { check_method("area", 1e-6); }
static void test_bislerp(void **s) { check_method("bislerp", 1e-5); }
static void test_lanczos(void **s) { check_method("lanczos", 0.0); }

static void test_names(void **s) {
    assert_int_equal(io_upscale_parse("bislerp"), IO_UPSCALE_BISLERP);
    assert_int_equal(io_upscale_parse("nope"), IO_UPSCALE_COUNT);
    assert_string_equal(io_upscale_name(IO_UPSCALE_NEAREST_EXACT), "nearest-exact");
    struct err err = {0};
    float x = 1, y;
    assert_int_not_equal(io_common_upscale(&x, 1, 1, 1, 1, &y, 0, 1, IO_UPSCALE_AREA, 0, &err), 0);
}

int main(void) {
    json_error_t je;
    ref = json_load_file(KILN_TEST_DATA "/graph/resize_ref.json", 0, &je);
    if (!ref) {
        fprintf(stderr, "cannot read resize_ref.json: %s\n", je.text);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nearest_exact), cmocka_unit_test(test_bilinear), cmocka_unit_test(test_bicubic),
        cmocka_unit_test(test_area),          cmocka_unit_test(test_bislerp),  cmocka_unit_test(test_lanczos),
        cmocka_unit_test(test_names),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    json_decref(ref);
    return rc;
}
