/* tests/unit/vram/test_monitor.c -- the GPU monitor without GPUs: the notice and empty list
 * when neither library opens, the notice when a library lacks NVML's entry points, queries
 * out of range, and the pure helpers (PCI bus ids as NVML and CUDA write them, byte sizes).
 * Threads: test thread only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/err.h"
#include "base/status.h"
#include "vram/monitor.h"

#include <string.h>

/* ===== Without libraries ===== */

static void test_no_libraries(void **state) {
    (void)state;
    struct vram_monitor_opts o = {.nvml_lib = "/nonexistent/libnvidia-ml.so.1", .cuda_lib = "/nonexistent/libcuda.so.1"};
    struct vram_monitor *m = vram_monitor_new(&o);
    assert_non_null(m);
    assert_int_equal(vram_monitor_count(m), 0);
    assert_string_equal(vram_monitor_source(m), "none");
    const char *notice = vram_monitor_notice(m);
    assert_non_null(notice);
    assert_non_null(strstr(notice, "no GPU found"));
    assert_non_null(strstr(notice, "/nonexistent/libnvidia-ml.so.1")); /* dlerror names the file */
    assert_non_null(strstr(notice, "/nonexistent/libcuda.so.1"));

    struct vram_gpu g;
    struct err err = {0};
    assert_int_equal(vram_monitor_query(m, 0, &g, &err), STATUS_ERR_RANGE);
    assert_non_null(strstr(err.msg, "GPU 0 does not exist (0 visible)"));
    assert_int_equal(g.temperature_c, -1); /* unknown figures, not stale ones */
    assert_int_equal(g.utilization_pct, -1);
    assert_true(g.power_w < 0);
    vram_monitor_free(m);
}

/* A library that opens but is not NVML (libm): refused, with the reason in the notice. */
static void test_library_without_entry_points(void **state) {
    (void)state;
    struct vram_monitor_opts o = {.nvml_lib = "libm.so.6", .cuda_lib = "libm.so.6"};
    struct vram_monitor *m = vram_monitor_new(&o);
    assert_non_null(m);
    assert_int_equal(vram_monitor_count(m), 0);
    assert_string_equal(vram_monitor_source(m), "none");
    assert_non_null(strstr(vram_monitor_notice(m), "missing entry points in libm.so.6"));
    vram_monitor_free(m);
}

static void test_null_monitor(void **state) {
    (void)state;
    vram_monitor_free(NULL);
    assert_int_equal(vram_monitor_count(NULL), 0);
    assert_string_equal(vram_monitor_source(NULL), "none");
    assert_null(vram_monitor_notice(NULL));
    struct vram_gpu g;
    struct err err = {0};
    assert_int_equal(vram_monitor_query(NULL, 3, &g, &err), STATUS_ERR_RANGE);
    assert_int_equal(g.index, 3);
}

/* ===== Helpers ===== */

static void test_pci_ids(void **state) {
    (void)state;
    unsigned d, b, dev, f;
    assert_true(vram_pci_parse("00000000:18:00.0", &d, &b, &dev, &f));
    assert_int_equal(d, 0);
    assert_int_equal(b, 0x18);
    assert_int_equal(dev, 0);
    assert_int_equal(f, 0);
    assert_true(vram_pci_parse("0001:AB:1f.3", &d, &b, &dev, &f));
    assert_int_equal(d, 1);
    assert_int_equal(b, 0xab);
    assert_int_equal(dev, 0x1f);
    assert_int_equal(f, 3);
    assert_true(vram_pci_parse("c1:00.0", &d, &b, &dev, &f)); /* no domain: 0 */
    assert_int_equal(d, 0);
    assert_int_equal(b, 0xc1);
    assert_false(vram_pci_parse("", &d, &b, &dev, &f));
    assert_false(vram_pci_parse("GPU-1234", &d, &b, &dev, &f));
    assert_false(vram_pci_parse("0000:18:00.0 trailing", &d, &b, &dev, &f));
    assert_false(vram_pci_parse(NULL, &d, &b, &dev, &f));

    /* NVML writes 8 domain digits, CUDA 4: the same device */
    assert_true(vram_pci_same("00000000:18:00.0", "0000:18:00.0"));
    assert_true(vram_pci_same("00000000:AB:00.0", "0000:ab:00.0"));
    assert_false(vram_pci_same("0000:18:00.0", "0000:19:00.0"));
    assert_false(vram_pci_same("0000:18:00.0", "0000:18:00.1"));
    assert_false(vram_pci_same("0001:18:00.0", "0000:18:00.0"));
    assert_false(vram_pci_same("", "0000:18:00.0"));
}

static void test_format_bytes(void **state) {
    (void)state;
    char buf[32];
    assert_string_equal(vram_format_bytes(0, buf, sizeof buf), "0 B");
    assert_string_equal(vram_format_bytes(1023, buf, sizeof buf), "1023 B");
    assert_string_equal(vram_format_bytes(1024, buf, sizeof buf), "1.0 KiB");
    assert_string_equal(vram_format_bytes(3 * 1024 * 1024 / 2, buf, sizeof buf), "1.5 MiB");
    assert_string_equal(vram_format_bytes(81559ull * 1024 * 1024, buf, sizeof buf), "79.6 GiB"); /* an H100 */
    assert_string_equal(vram_format_bytes(2ull << 40, buf, sizeof buf), "2.0 TiB");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_libraries), cmocka_unit_test(test_library_without_entry_points),
        cmocka_unit_test(test_null_monitor), cmocka_unit_test(test_pci_ids),
        cmocka_unit_test(test_format_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
