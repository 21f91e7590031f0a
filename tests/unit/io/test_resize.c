/* tests/unit/io/test_resize.c -- io/resize.c against PyTorch / PIL reference values written by
 * tests/ref/graph_ref.py (F.interpolate, adaptive_avg_pool2d, a from-scratch bislerp, PIL
 * LANCZOS): tests/data/graph/resize_ref_torch2.json from torch 2.11 (what ComfyUI runs; made on
 * the GPU machine with `graph_ref.py --resize-only`) and resize_ref.json from Debian's torch 1.13.
 * nearest-exact, area and lanczos must match exactly. bilinear/bicubic get a relative tolerance:
 * torch 2.11 itself differs by up to 1.4e-6 between its AVX512 and default kernels (weights are
 * vectorised and fused), and torch 1.13 computes the source coordinate in double (acc_type)
 * where 2.x (and io/resize.c) use float. */
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

static json_t *ref;       /* the reference being checked */
static json_t *refs[2];   /* torch 2.11, torch 1.13 */

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

/* tol[0] against torch 2.11, tol[1] against torch 1.13 */
static void check_both(const char *method, double tol2, double tol113) {
    for (int r = 0; r < 2; r++) {
        ref = refs[r];
        printf("-- torch %s\n", json_string_value(json_object_get(ref, "torch")));
        check_method(method, r == 0 ? tol2 : tol113);
    }
}

static void test_nearest_exact(void **s) { check_both("nearest-exact", 0.0, 0.0); }
static void test_bilinear(void **s) { check_both("bilinear", 1e-6, 3e-6); }
static void test_bicubic(void **s) { check_both("bicubic", 3e-6, 4e-6); }
static void test_area(void **s) { check_both("area", 0.0, 0.0); }
static void test_bislerp(void **s) { check_both("bislerp", 3e-6, 3e-6); }
static void test_lanczos(void **s) { check_both("lanczos", 0.0, 0.0); }

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
    refs[0] = json_load_file(KILN_TEST_DATA "/graph/resize_ref_torch2.json", 0, &je);
    refs[1] = json_load_file(KILN_TEST_DATA "/graph/resize_ref.json", 0, &je);
    if (!refs[0] || !refs[1]) {
        fprintf(stderr, "cannot read the resize references: %s\n", je.text);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nearest_exact), cmocka_unit_test(test_bilinear), cmocka_unit_test(test_bicubic),
        cmocka_unit_test(test_area),          cmocka_unit_test(test_bislerp),  cmocka_unit_test(test_lanczos),
        cmocka_unit_test(test_names),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    json_decref(refs[0]);
    json_decref(refs[1]);
    return rc;
}
