/* tests/unit/graph/test_vram_nodes.c -- GPUMemoryReserve, GPUMemoryMonitor, GPUMemoryCleanup
 * (graph/nodes/vram.c) on a CPU engine with NVML and the CUDA driver made absent: reports with
 * "no GPU", success, cleanup releasing the scratch, the reserve math on given figures, and
 * clear_all_gpus through a fake host (graph/exec.h node_host_i): every other device's line and
 * the total. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/mem.h"
#include "base/status.h"
#include "graph/engine.h"
#include "graph/exec.h"
#include "graph/registry.h"
#include "vram/budget.h"
#include "vram/monitor.h"

#include <string.h>

/* graph/nodes/vram.c's test hook and pure helper */
extern const struct vram_monitor_opts *graph_vram_monitor_opts;
uint64_t graph_vram_reserve(const struct vram_gpu *g, uint64_t own_bytes, enum vram_mode mode, double reserved_gb,
                            double min_safe_gb, uint64_t *reserve);
int graph_vram_pick_gpu(int64_t gpu_index, int count, char *warn, size_t n);

static const struct vram_monitor_opts no_libs = {
    .nvml_lib = "/nonexistent/kiln-test/libnvidia-ml.so.1",
    .cuda_lib = "/nonexistent/kiln-test/libcuda.so.1",
};

/* Runs class `name` with inputs in[] on engine e; returns the status, the report in *report
 * (owned) and checks the ui {"text": [report]}. */
static int run_node_host(const char *name, struct engine *e, const struct value *in, const struct node_host_i *host,
                         void *host_user, char **report, struct err *err) {
    const struct node_class *cls = graph_class_find(name);
    assert_non_null(cls);
    assert_true(cls->output_node);
    assert_int_equal(node_class_n_outputs(cls), 1);
    assert_string_equal(cls->outputs[0].type, "STRING");
    struct graph_paths paths = {"/tmp", "/tmp", "/tmp", "/tmp"};
    struct node_run ctx = {.node_id = "7", .cls = cls, .paths = &paths, .ui = json_object(), .engine = e,
                           .host = host, .host_user = host_user};
    struct value out[1] = {{.kind = VALUE_NONE}};
    int rc = cls->run(&ctx, in, out, err);
    *report = NULL;
    if (rc == 0) {
        assert_int_equal(out[0].kind, VALUE_STRING);
        json_t *text = json_object_get(ctx.ui, "text");
        assert_true(json_is_array(text) && json_array_size(text) == 1);
        assert_string_equal(json_string_value(json_array_get(text, 0)), out[0].s);
        *report = mem_strdup(out[0].s);
    }
    value_deinit(&out[0]);
    json_decref(ctx.ui);
    return rc;
}

static int run_node(const char *name, struct engine *e, const struct value *in, char **report, struct err *err) {
    return run_node_host(name, e, in, NULL, NULL, report, err);
}

static struct engine *cpu_engine(void) {
    struct engine *e = engine_new_cpu(1, "/tmp", NULL);
    assert_non_null(e);
    assert_int_equal(e->cuda_index, -1);
    return e;
}

static void test_classes_declared(void **state) {
    (void)state;
    const char *names[] = {"GPUMemoryReserve", "GPUMemoryMonitor", "GPUMemoryCleanup"};
    const char *displays[] = {"GPU Memory Reserve", "GPU Memory Monitor", "GPU Memory Cleanup"};
    for (int i = 0; i < 3; i++) {
        const struct node_class *cls = graph_class_find(names[i]);
        assert_non_null(cls);
        assert_string_equal(cls->display_name, displays[i]);
    }
    const struct node_class *r = graph_class_find("GPUMemoryReserve");
    const char *want[] = {"reserved", "mode", "gpu_index", "min_safe_reserve", "clear_memory", "show_gpu_info"};
    assert_int_equal(node_class_n_inputs(r), 6);
    for (int i = 0; i < 6; i++) assert_string_equal(node_class_input(r, i, NULL)->name, want[i]);
    assert_true(node_class_input(r, 0, NULL)->float_default == 1.0);
    assert_string_equal(node_class_input(r, 1, NULL)->combo_default, "smart");
    assert_true(node_class_input(r, 3, NULL)->float_default == 2.0);
    assert_false(node_class_input(r, 4, NULL)->bool_default);
    assert_true(node_class_input(r, 5, NULL)->bool_default);
}

static void test_monitor_no_gpu(void **state) {
    (void)state;
    struct engine *e = cpu_engine();
    struct value in[1] = {{.kind = VALUE_INT, .i = 0}};
    struct err err = {0};
    char *rep;
    assert_int_equal(run_node("GPUMemoryMonitor", e, in, &rep, &err), 0);
    assert_non_null(strstr(rep, "No GPU"));
    mem_free(rep);
    engine_free(e);
}

static void test_reserve_no_gpu(void **state) {
    (void)state;
    struct engine *e = cpu_engine();
    struct value in[6] = {
        {.kind = VALUE_FLOAT, .f = 1.0}, {.kind = VALUE_STRING, .s = "smart"}, {.kind = VALUE_INT, .i = 3},
        {.kind = VALUE_FLOAT, .f = 2.0}, {.kind = VALUE_BOOL, .b = true},     {.kind = VALUE_BOOL, .b = true},
    };
    struct err err = {0};
    char *rep;
    assert_int_equal(run_node("GPUMemoryReserve", e, in, &rep, &err), 0);
    assert_non_null(strstr(rep, "smart mode"));
    assert_non_null(strstr(rep, "No GPU"));
    assert_non_null(strstr(rep, "No reserve set"));
    assert_true(e->budget == 0); /* nothing applied on a CPU device */
    mem_free(rep);

    in[1].s = "greedy"; /* validation normally refuses it; run() still reports it */
    assert_int_not_equal(run_node("GPUMemoryReserve", e, in, &rep, &err), 0);
    assert_non_null(strstr(err.msg, "greedy"));
    engine_free(e);
}

static void test_cleanup_releases_scratch(void **state) {
    (void)state;
    struct engine *e = cpu_engine();
    /* grow the scratch with a planned 1 MiB input */
    int64_t shape[1] = {1 << 18};
    struct tensor *t = tensor_input(&e->tctx, DTYPE_F32, 1, shape);
    assert_non_null(t);
    tensor_set_output(t);
    assert_int_equal(tctx_plan(&e->tctx, &t, 1), 0);
    size_t grown = e->scratch.size;
    assert_true(grown >= (size_t)4 << 18);
    tctx_reset(&e->tctx);

    struct value in[3] = {{.kind = VALUE_BOOL, .b = true}, {.kind = VALUE_BOOL, .b = true},
                          {.kind = VALUE_STRING, .s = "MB"}};
    struct err err = {0};
    char *rep;
    assert_int_equal(run_node("GPUMemoryCleanup", e, in, &rep, &err), 0);
    assert_int_equal(e->scratch.size, 0);
    assert_null(e->scratch.buf);
    char want[64];
    snprintf(want, sizeof want, "Total freed: %.2fMB", (double)grown / (1 << 20));
    assert_non_null(strstr(rep, want));
    assert_non_null(strstr(rep, "CPU device"));
    assert_non_null(strstr(rep, "clear_all_gpus"));
    assert_non_null(strstr(rep, "Aggressive"));
    mem_free(rep);

    /* nothing left: 0 freed, in GB */
    in[0].b = false, in[1].b = false, in[2].s = "GB";
    assert_int_equal(run_node("GPUMemoryCleanup", e, in, &rep, &err), 0);
    assert_non_null(strstr(rep, "Total freed: 0.00GB"));
    assert_null(strstr(rep, "clear_all_gpus"));
    mem_free(rep);
    engine_free(e);
}

/* A fake host: records the clean-up call and answers with given entries. */
struct fake_host {
    int calls;
    bool aggressive;
    int wait_ms;
    struct node_host_clean out[8];
    int n;
};

static int fake_cleanup(void *user, bool aggressive, int wait_ms, struct node_host_clean *out, int max) {
    struct fake_host *h = user;
    h->calls++;
    h->aggressive = aggressive;
    h->wait_ms = wait_ms;
    int n = h->n < max ? h->n : max;
    memcpy(out, h->out, (size_t)n * sizeof *out);
    return n;
}

static const struct node_host_i FAKE_HOST = {.cleanup = fake_cleanup};

static void test_cleanup_all_devices(void **state) {
    (void)state;
    const uint64_t MiB = (uint64_t)1 << 20;
    struct engine *e = cpu_engine();
    struct fake_host h = {
        .out = {{.device = 0, .cuda_index = 0, .state = NODE_HOST_CLEAN_DONE, .freed = 1024 * MiB,
                 .own_freed = 700 * MiB, .measured = true},
                {.device = 1, .cuda_index = 1, .state = NODE_HOST_CLEAN_QUEUED},
                {.device = 2, .cuda_index = 3, .state = NODE_HOST_CLEAN_DONE, .freed = 300 * MiB, .own_freed = 300 * MiB},
                {.device = 3, .cuda_index = 4, .state = NODE_HOST_CLEAN_TIMEOUT},
                {.device = 4, .cuda_index = 5, .state = NODE_HOST_CLEAN_DOWN},
                {.device = 6, .cuda_index = -1, .state = NODE_HOST_CLEAN_DONE, .freed = 24 * MiB, .own_freed = 24 * MiB}},
        .n = 6,
    };
    struct value in[3] = {{.kind = VALUE_BOOL, .b = true}, {.kind = VALUE_BOOL, .b = true},
                          {.kind = VALUE_STRING, .s = "MB"}};
    struct err err = {0};
    char *rep;
    assert_int_equal(run_node_host("GPUMemoryCleanup", e, in, &FAKE_HOST, &h, &rep, &err), 0);
    assert_int_equal(h.calls, 1);
    assert_true(h.aggressive);
    assert_int_equal(h.wait_ms, 5000);
    const char *want[] = {
        "GPU 0: freed 1024.00MB (kiln's scratch and models: 700.00MB)",
        "GPU 1: queued after its current prompt",
        "GPU 3: freed 300.00MB (by kiln's counts: no monitor figures)",
        "GPU 4: not done within 5 s",
        "GPU 5: not running",
        "CPU device 6: freed 24.00MB of kiln's memory",
        "Total freed: 1348.00MB (queued devices not counted)", /* this CPU engine freed 0 */
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(rep, want[i])) fail_msg("no '%s' in:\n%s", want[i], rep);
    assert_null(strstr(rep, "only this worker's device"));
    mem_free(rep);

    /* without clear_all_gpus the host is not asked */
    in[0].b = false;
    assert_int_equal(run_node_host("GPUMemoryCleanup", e, in, &FAKE_HOST, &h, &rep, &err), 0);
    assert_int_equal(h.calls, 1);
    assert_null(strstr(rep, "GPU 0:"));
    mem_free(rep);

    /* a host with no other device */
    in[0].b = true, h.n = 0, in[1].b = false;
    assert_int_equal(run_node_host("GPUMemoryCleanup", e, in, &FAKE_HOST, &h, &rep, &err), 0);
    assert_int_equal(h.calls, 2);
    assert_false(h.aggressive);
    assert_non_null(strstr(rep, "clear_all_gpus: no other device"));
    assert_non_null(strstr(rep, "Total freed: 0.00MB\n"));
    mem_free(rep);
    engine_free(e);
}

static void test_reserve_math(void **state) {
    (void)state;
    const uint64_t G = (uint64_t)1 << 30;
    struct vram_gpu g = {.mem_total = 24 * G, .mem_used = 8 * G, .mem_free = 16 * G};
    uint64_t reserve;
    /* smart, free 16/24 >= 40%: max(8 + 1, 2) = 9 GB */
    assert_true(graph_vram_reserve(&g, 0, VRAM_MODE_SMART, 1.0, 2.0, &reserve) == 15 * G);
    assert_true(reserve == 9 * G);
    /* smart, free 4/24 < 20%: 80% of 24 GB = 20615843020.8 -> 20615843020 bytes */
    g.mem_used = 20 * G, g.mem_free = 4 * G;
    assert_true(graph_vram_reserve(&g, 0, VRAM_MODE_SMART, 1.0, 2.0, &reserve) == 24 * G - 20615843020ull);
    assert_true(reserve == 20615843020ull);
    /* auto, the engine's own 4 GB of the 6 GB used are not protected: 2 + 1 = 3 GB */
    struct vram_gpu h = {.mem_total = 10 * G, .mem_used = 6 * G, .mem_free = 4 * G};
    assert_true(graph_vram_reserve(&h, 4 * G, VRAM_MODE_AUTO, 1.0, 0.5, &reserve) == 7 * G);
    assert_true(reserve == 3 * G);
    /* manual: max(1, 2) = 2 GB */
    assert_true(graph_vram_reserve(&h, 0, VRAM_MODE_MANUAL, 1.0, 2.0, &reserve) == 8 * G);
    assert_true(reserve == 2 * G);
}

static void test_gpu_index_fallback(void **state) {
    (void)state;
    char warn[160];
    assert_int_equal(graph_vram_pick_gpu(1, 2, warn, sizeof warn), 1);
    assert_string_equal(warn, "");
    assert_int_equal(graph_vram_pick_gpu(0, 1, warn, sizeof warn), 0);
    assert_string_equal(warn, "");
    assert_int_equal(graph_vram_pick_gpu(2, 2, warn, sizeof warn), 0);
    assert_string_equal(warn, "⚠ Invalid gpu_index 2 (2 GPUs, valid 0..1): falling back to GPU 0");
    assert_int_equal(graph_vram_pick_gpu(5, 1, warn, sizeof warn), 0);
    assert_string_equal(warn, "⚠ Invalid gpu_index 5 (1 GPU, valid 0..0): falling back to GPU 0");
    assert_int_equal(graph_vram_pick_gpu(-1, 4, warn, sizeof warn), 0);
    assert_non_null(strstr(warn, "Invalid gpu_index -1"));
}

int main(void) {
    graph_vram_monitor_opts = &no_libs;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_classes_declared),      cmocka_unit_test(test_monitor_no_gpu),
        cmocka_unit_test(test_reserve_no_gpu),        cmocka_unit_test(test_cleanup_releases_scratch),
        cmocka_unit_test(test_reserve_math),          cmocka_unit_test(test_gpu_index_fallback),
        cmocka_unit_test(test_cleanup_all_devices),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
