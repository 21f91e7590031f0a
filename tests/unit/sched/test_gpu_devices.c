/* tests/unit/sched/test_gpu_devices.c -- GPU devices in the scheduler's list without a GPU:
 * GPUs come first in the order given and CPU devices after, the device counts that
 * sched_new accepts, and a GPU whose worker cannot open it (a CPU-only build, or no GPU on
 * the machine) stops sched_start with a message naming the device, then sched_free cleans up.
 * Threads: the test thread, and the workers sched_start starts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/status.h"
#include "sched/internal.h"

#include <string.h>

static struct graph_paths PATHS = {.models = "models", .input = "input", .output = "output", .temp = "temp"};

static void test_counts(void **state) {
    (void)state;
    struct err err = {0};
    struct sched_opts o = {.n_gpus = 0, .n_cpu_workers = 0, .paths = PATHS};
    assert_null(sched_new(&o, &err)); /* no device at all */
    assert_int_equal(err.code, STATUS_ERR_RANGE);
    assert_non_null(strstr(err.msg, "--cpu-workers must be between 1 and 16"));

    err = (struct err){0};
    o = (struct sched_opts){.n_gpus = 15, .n_cpu_workers = 2, .paths = PATHS}; /* 17 devices */
    assert_null(sched_new(&o, &err));
    assert_non_null(strstr(err.msg, "between 0 and 1 beside the GPUs (got 2)"));

    err = (struct err){0};
    o = (struct sched_opts){.n_gpus = 17, .paths = PATHS};
    assert_null(sched_new(&o, &err));
    assert_non_null(strstr(err.msg, "at most 16 GPUs"));
}

static void test_order_and_failed_open(void **state) {
    (void)state;
    struct err err = {0};
    struct sched_opts o = {.gpus = {5, 3}, .n_gpus = 2, .n_cpu_workers = 1, .cpu_threads = 1, .paths = PATHS};
    struct sched *s = sched_new(&o, &err);
    if (!s) fail_msg("sched_new: %s", err.msg);
    assert_int_equal(sched_n_devices(s), 3);

    struct sched_device_info info;
    sched_device_info(s, 0, &info);
    assert_int_equal(info.kind, SCHED_DEVICE_CUDA);
    assert_memory_equal(info.name, "cuda:5 ", 7); /* the ordinal asked for first */
    sched_device_info(s, 1, &info);
    assert_int_equal(info.kind, SCHED_DEVICE_CUDA);
    assert_memory_equal(info.name, "cuda:3 ", 7);
    sched_device_info(s, 2, &info);
    assert_int_equal(info.kind, SCHED_DEVICE_CPU);
    assert_memory_equal(info.name, "cpu:0 ", 6);
    assert_true(info.mem_total > 0);
    assert_null(s->dev[0].engine); /* GPU engines are the workers' to make */
    assert_non_null(s->dev[2].engine);

    /* no CUDA device 5 here: either this build has no CUDA backend or the device is missing */
    err = (struct err){0};
    assert_true(sched_start(s, &err) < 0);
    assert_non_null(strstr(err.msg, "device 0 (cuda:5 "));
    assert_true(strstr(err.msg, "no CUDA backend") || strstr(err.msg, "5"));
    assert_true(s->dev[0].ready && s->dev[1].ready);
    assert_true(s->dev[0].init_rc < 0);
    sched_free(s); /* joins every worker, the failed ones too */
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_counts), cmocka_unit_test(test_order_and_failed_open)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
