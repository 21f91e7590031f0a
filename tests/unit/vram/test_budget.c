/* tests/unit/vram/test_budget.c -- the reserve of each mode against values worked out by hand
 * from the node pack's formulas (shared/seeds/000-vram-manager-nodes.md): clamps, the smart
 * mode's 20% / 40% bands at their exact edges, the budget and vram_budget_allows, mode names.
 * Threads: the test thread only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/err.h"
#include "base/status.h"
#include "vram/budget.h"

#include <string.h>

#define GIB(x) ((uint64_t)((x) * 1073741824.0))

static struct vram_budget mk(enum vram_mode mode, uint64_t total, uint64_t used, double reserved_gb, double safe_gb) {
    return (struct vram_budget){.total = total, .used = used, .mode = mode, .reserved_gb = reserved_gb,
                                .min_safe_reserve_gb = safe_gb};
}

/* GB value of n bytes (so tests can use byte-sized buffers on tiny totals) */
static double bytes_gb(uint64_t n) { return (double)n / 1073741824.0; }

static void test_manual(void **state) {
    (void)state;
    /* 24 GiB card: max(1, 2) = 2 GiB; budget 22 GiB */
    struct vram_budget b = mk(VRAM_MODE_MANUAL, GIB(24), GIB(20), 1.0, 2.0);
    assert_int_equal(vram_budget_reserve(&b), 2147483648u);
    assert_int_equal(vram_budget_bytes(&b), 23622320128u);
    b.reserved_gb = 3.5; /* above the minimum: as given; use does not matter */
    assert_int_equal(vram_budget_reserve(&b), 3758096384u);
    b.reserved_gb = 30.0; /* capped at 90% of 25769803776 = 23192823398.4 -> 23192823398 */
    assert_int_equal(vram_budget_reserve(&b), 23192823398u);
    b.reserved_gb = -1.0; /* nonsense input: the minimum */
    assert_int_equal(vram_budget_reserve(&b), 2147483648u);
    /* a 2 GiB card with a 2 GiB minimum: 90% of 2147483648 = 1932735283.2 */
    b = mk(VRAM_MODE_MANUAL, GIB(2), 0, 1.0, 2.0);
    assert_int_equal(vram_budget_reserve(&b), 1932735283u);
    assert_int_equal(vram_budget_bytes(&b), 214748365u);
}

static void test_auto(void **state) {
    (void)state;
    struct vram_budget b = mk(VRAM_MODE_AUTO, GIB(24), GIB(8), 1.0, 2.0);
    assert_int_equal(vram_budget_reserve(&b), 9663676416u); /* 8 + 1 GiB */
    b.used = 0;
    b.reserved_gb = 0.5; /* 0.5 GiB < minimum 2 GiB */
    assert_int_equal(vram_budget_reserve(&b), 2147483648u);
    b.used = GIB(22); /* 23 GiB > 85% of 24 GiB = 21904333209.6 */
    b.reserved_gb = 1.0;
    assert_int_equal(vram_budget_reserve(&b), 21904333209u);
    b.used = GIB(40); /* more used than there is: clamped to total, still the 85% cap */
    assert_int_equal(vram_budget_reserve(&b), 21904333209u);
}

static void test_smart_bands(void **state) {
    (void)state;
    /* 10 GiB card, 1 GiB buffer, 2 GiB minimum */
    struct vram_budget b = mk(VRAM_MODE_SMART, GIB(10), GIB(9), 1.0, 2.0);
    assert_int_equal(vram_budget_reserve(&b), 8589934592u); /* free 10% < 20%: 80% = 8 GiB */
    b.used = GIB(7);                                        /* free 30%: use + buffer = 8 GiB */
    assert_int_equal(vram_budget_reserve(&b), 8589934592u);
    b.used = GIB(5); /* free 50%: max(6, 2) = 6 GiB */
    assert_int_equal(vram_budget_reserve(&b), 6442450944u);
    b.used = GIB(1); /* free 90%: max(1 + 0.5, 2) = 2 GiB */
    b.reserved_gb = 0.5;
    assert_int_equal(vram_budget_reserve(&b), 2147483648u);
    b.used = GIB(8); /* free exactly 20%: not "< 20%", so use + buffer = 8.5 GiB */
    assert_int_equal(vram_budget_reserve(&b), 9126805504u);
    b.used = GIB(6); /* free exactly 40%: the plenty band, max(6.5, 2) */
    assert_int_equal(vram_budget_reserve(&b), 6979321856u);
    b.used = GIB(7.5); /* free 25%: 7.5 + 2 = 9.5 GiB, capped at 90% = 9 GiB */
    b.reserved_gb = 2.0;
    assert_int_equal(vram_budget_reserve(&b), 9663676416u);
    assert_int_equal(vram_budget_bytes(&b), 1073741824u);
    /* the middle band ignores the minimum: free 35%, used 6.5 + buffer 0 < minimum 8 */
    b = mk(VRAM_MODE_SMART, GIB(10), GIB(6.5), 0.0, 8.0);
    assert_int_equal(vram_budget_reserve(&b), GIB(6.5));
}

static void test_smart_edges_exact(void **state) {
    (void)state;
    /* total 1003 bytes: 20% = 200.6, 40% = 401.2, 80% = 802.4, 90% = 902.7; buffer 10 bytes */
    struct vram_budget b = mk(VRAM_MODE_SMART, 1003, 803, bytes_gb(10), bytes_gb(700));
    assert_int_equal(vram_budget_reserve(&b), 802u); /* free 200 < 200.6: 80% rounded down */
    b.used = 802;                                    /* free 201: middle, 802 + 10 */
    assert_int_equal(vram_budget_reserve(&b), 812u);
    b.used = 602; /* free 401 < 401.2: middle, 612 (the 700 minimum does not apply) */
    assert_int_equal(vram_budget_reserve(&b), 612u);
    b.used = 601; /* free 402: plenty, max(611, 700) */
    assert_int_equal(vram_budget_reserve(&b), 700u);
    b.used = 1003; /* nothing free */
    assert_int_equal(vram_budget_reserve(&b), 802u);
    assert_int_equal(vram_budget_bytes(&b), 201u);
}

static void test_allows_and_defaults(void **state) {
    (void)state;
    struct vram_budget b;
    vram_budget_init(&b, GIB(24));
    assert_int_equal(b.mode, VRAM_MODE_SMART);
    assert_true(b.reserved_gb == 1.0 && b.min_safe_reserve_gb == 2.0);
    /* nothing used: max(0 + 1, 2) = 2 GiB reserved, 22 GiB budget */
    assert_int_equal(vram_budget_bytes(&b), 23622320128u);
    assert_true(vram_budget_allows(&b, 23622320128u));
    assert_false(vram_budget_allows(&b, 23622320129u));
    assert_true(vram_budget_allows(&b, 0));
    b.total = 0; /* no memory at all: nothing fits but nothing */
    assert_int_equal(vram_budget_bytes(&b), 0);
    assert_true(vram_budget_allows(&b, 0));
    assert_false(vram_budget_allows(&b, 1));
    b = mk((enum vram_mode)7, 1000, 0, 0, 0); /* unknown mode: the 90% cap */
    assert_int_equal(vram_budget_reserve(&b), 900u);
}

static void test_mode_names(void **state) {
    (void)state;
    const char *names[] = {"manual", "auto", "smart"};
    for (int i = 0; i < 3; i++) {
        enum vram_mode m = VRAM_MODE_COUNT;
        struct err err = {0};
        assert_int_equal(vram_mode_parse(names[i], &m, &err), 0);
        assert_int_equal(m, i);
        assert_string_equal(vram_mode_name(m), names[i]);
    }
    assert_string_equal(vram_mode_name(VRAM_MODE_COUNT), "?");
    struct err err = {0};
    enum vram_mode m = VRAM_MODE_AUTO;
    assert_int_equal(vram_mode_parse("Smart", &m, &err), STATUS_ERR_INVALID);
    assert_non_null(strstr(err.msg, "'Smart'"));
    assert_int_equal(m, VRAM_MODE_AUTO);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_manual),        cmocka_unit_test(test_auto),
        cmocka_unit_test(test_smart_bands),   cmocka_unit_test(test_smart_edges_exact),
        cmocka_unit_test(test_allows_and_defaults), cmocka_unit_test(test_mode_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
