/* tests/unit/sched/test_host.c -- the host interface the scheduler gives nodes (sched/host.c):
 * GPUMemoryReserve's settings stored for the GPU named (another device's too) and kept; and
 * GPUMemoryCleanup clear_all_gpus run by real prompts on two CPU devices: an idle device cleans
 * up at once and its freed bytes are reported and totalled, a busy one gets the clean-up queued
 * after its prompt, and two prompts cleaning at the same time on both devices do not wait for
 * each other.
 * Threads: the test thread and the sched's workers; nodes only record. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/clock.h"
#include "base/mem.h"
#include "base/status.h"
#include "graph/engine.h"
#include "graph/exec.h"
#include "graph/json.h"
#include "sched/internal.h"
#include "tensor/tensor.h"
#include "vram/monitor.h"

#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern const struct vram_monitor_opts *graph_vram_monitor_opts; /* graph/nodes/vram.c's test hook */

static const struct vram_monitor_opts no_libs = {
    .nvml_lib = "/nonexistent/kiln-test/libnvidia-ml.so.1",
    .cuda_lib = "/nonexistent/kiln-test/libcuda.so.1",
};

static char ROOT[256];
static char DIR_MODELS[300], DIR_INPUT[300], DIR_OUTPUT[300], DIR_TEMP[300];
static struct graph_paths PATHS;

/* ===== Test nodes ===== */

static atomic_bool gate_open;
static atomic_int barrier_count;
static _Atomic size_t grown[SCHED_MAX_DEVICES]; /* scratch size after TGrow, per device */
static struct sched *g_s;

static int device_of(const struct node_run *c) {
    for (int i = 0; g_s && i < g_s->n_dev; i++)
        if ((void *)g_s->dev[i].engine == c->engine) return i;
    return -1;
}

/* TGrow (output): plans a graph with an input of n floats on the device's engine, so its
 * activation scratch holds at least 4n bytes afterwards. */
static int run_grow(struct node_run *c, const struct value *in, struct value *out, struct err *e) {
    struct engine *eng = c->engine;
    int64_t shape[1] = {in[0].i};
    struct tensor *t = tensor_input(&eng->tctx, DTYPE_F32, 1, shape);
    if (!t) return err_set(e, STATUS_ERR_INTERNAL, "tensor_input failed");
    tensor_set_output(t);
    int rc = tctx_plan(&eng->tctx, &t, 1);
    tctx_reset(&eng->tctx);
    if (rc) return err_set(e, rc, "plan failed");
    int d = device_of(c);
    if (d >= 0) grown[d] = eng->scratch.size;
    json_object_set_new(c->ui, "text", json_pack("[s]", "grown"));
    return 0;
}

/* TGate (output): waits for gate_open (or an interrupt). */
static int run_gate(struct node_run *c, const struct value *in, struct value *out, struct err *e) {
    while (!atomic_load(&gate_open)) {
        if (node_interrupted(c)) return err_set(e, STATUS_ERR_INTERRUPTED, "Processing interrupted");
        usleep(500);
    }
    json_object_set_new(c->ui, "text", json_pack("[s]", "gate"));
    return 0;
}

/* TBarrier: waits (3 s at most) until `n` prompts have reached a TBarrier, then outputs true. */
static int run_barrier(struct node_run *c, const struct value *in, struct value *out, struct err *e) {
    atomic_fetch_add(&barrier_count, 1);
    double t0 = clock_now();
    while (atomic_load(&barrier_count) < in[0].i && clock_now() - t0 < 3.0) usleep(200);
    out[0] = (struct value){.kind = VALUE_BOOL, .b = true};
    return 0;
}

#define INT_IN(n) {.name = n, .kind = NODE_INPUT_INT, .flags = NODE_IN_DEFAULT}

static const struct node_class T_GROW = {
    .name = "TGrow", .output_node = true, .required = (const struct node_input[]){INT_IN("n"), NODE_INPUTS_END},
    .run = run_grow};
static const struct node_class T_GATE = {.name = "TGate", .output_node = true, .run = run_gate};
static const struct node_class T_BARRIER = {
    .name = "TBarrier", .required = (const struct node_input[]){INT_IN("n"), NODE_INPUTS_END},
    .outputs = (const struct node_output[]){{.type = "BOOLEAN"}, NODE_OUTPUTS_END}, .run = run_barrier};

/* ===== Helpers ===== */

static struct sched *new_sched(int n_cpu) {
    struct sched_opts o = {.n_cpu_workers = n_cpu, .cpu_threads = 1, .paths = PATHS};
    struct err err = {0};
    struct sched *s = sched_new(&o, &err);
    if (!s) fail_msg("sched_new: %s", err.msg);
    g_s = s;
    atomic_store(&gate_open, false);
    atomic_store(&barrier_count, 0);
    for (int i = 0; i < SCHED_MAX_DEVICES; i++) grown[i] = 0;
    if (sched_start(s, &err)) fail_msg("sched_start: %s", err.msg);
    return s;
}

static void done(struct sched *s) {
    atomic_store(&gate_open, true);
    sched_free(s);
    g_s = NULL;
}

static struct sched_ticket submit(struct sched *s, const char *text, int target) {
    json_t *prompt = NULL, *body = NULL;
    struct err err = {0};
    if (graph_json_loads(text, strlen(text), &prompt, &err)) fail_msg("%s: %s", text, err.msg);
    struct graph_prompt *p = NULL;
    if (graph_prompt_validate(prompt, &PATHS, NULL, &p, &body, &err)) fail_msg("validation of %s: %s", text, err.msg);
    json_decref(prompt);
    struct sched_submit sub = {.prompt = p, .target = target};
    struct sched_ticket t;
    if (sched_submit(s, &sub, sched_next_number(s), &t, &err)) fail_msg("submit: %s", err.msg);
    return t;
}

/* The history entry of id (new reference), waiting 10 s at most. */
static json_t *wait_history(struct sched *s, const char *id) {
    for (int i = 0; i < 10000; i++) {
        json_t *h = sched_history_json(s, id, -1, -1);
        json_t *e = json_object_get(h, id);
        if (e) {
            json_incref(e);
            json_decref(h);
            return e;
        }
        json_decref(h);
        usleep(1000);
    }
    fail_msg("prompt %s never finished", id);
    return NULL;
}

/* The report text of node `node` in a finished prompt (copied into buf). */
static const char *report_of(struct sched *s, const char *id, const char *node, char *buf, size_t n) {
    json_t *e = wait_history(s, id);
    const char *st = json_string_value(json_object_get(json_object_get(e, "status"), "status_str"));
    if (!st || strcmp(st, "success") != 0) {
        char *dump = graph_json_dumps(e, -1);
        fail_msg("prompt %s: %s", id, dump);
    }
    json_t *text = json_object_get(json_object_get(json_object_get(e, "outputs"), node), "text");
    const char *r = json_string_value(json_array_get(text, 0));
    if (!r) fail_msg("no report from node %s of prompt %s", node, id);
    snprintf(buf, n, "%s", r);
    json_decref(e);
    return buf;
}

/* Waits (5 s at most) until device d has served every clean-up asked of it. */
static void wait_cleaned(struct sched *s, int d) {
    for (int i = 0; i < 5000; i++) {
        pthread_mutex_lock(&s->mu);
        bool served = s->dev[d].clean_done == s->dev[d].clean_req && s->dev[d].clean_req > 0;
        pthread_mutex_unlock(&s->mu);
        if (served) return;
        usleep(1000);
    }
    fail_msg("device %d never served its clean-up", d);
}

static const char *cleanup_prompt(char *buf, size_t n, bool aggressive) {
    snprintf(buf, n,
             "{\"2\": {\"class_type\": \"GPUMemoryCleanup\", \"inputs\": {\"clear_all_gpus\": true, "
             "\"aggressive\": %s, \"unit\": \"MB\"}}}",
             aggressive ? "true" : "false");
    return buf;
}

/* ===== GPUMemoryReserve's settings ===== */

static void test_reserve_settings_stored(void **state) {
    (void)state;
    struct err err = {0};
    struct sched_opts o = {.gpus = {5, 3}, .n_gpus = 2, .n_cpu_workers = 1, .cpu_threads = 1, .paths = PATHS};
    struct sched *s = sched_new(&o, &err); /* not started: GPU devices exist, no worker needs a GPU */
    if (!s) fail_msg("sched_new: %s", err.msg);
    struct vram_budget b0, b1, dflt;
    vram_budget_init(&dflt, 0);
    sched__device_budget(s, 0, &b0);
    assert_int_equal(b0.mode, dflt.mode); /* the defaults until changed */
    assert_true(b0.reserved_gb == dflt.reserved_gb && b0.min_safe_reserve_gb == dflt.min_safe_reserve_gb);

    /* from the CPU device (2) to GPU 3 (device 1): only device 1 changes */
    assert_int_equal(sched__host.set_reserve(&s->dev[2], 3, VRAM_MODE_MANUAL, 4.5, 1.25, &err), 0);
    sched__device_budget(s, 1, &b1);
    assert_int_equal(b1.mode, VRAM_MODE_MANUAL);
    assert_true(b1.reserved_gb == 4.5 && b1.min_safe_reserve_gb == 1.25);
    sched__device_budget(s, 0, &b0);
    assert_int_equal(b0.mode, dflt.mode);
    assert_true(b0.reserved_gb == dflt.reserved_gb);

    /* from GPU device 1 to GPU 5 (device 0); device 1 keeps its own */
    assert_int_equal(sched__host.set_reserve(&s->dev[1], 5, VRAM_MODE_AUTO, 0.5, 3.0, &err), 0);
    sched__device_budget(s, 0, &b0);
    assert_int_equal(b0.mode, VRAM_MODE_AUTO);
    assert_true(b0.reserved_gb == 0.5 && b0.min_safe_reserve_gb == 3.0);
    sched__device_budget(s, 1, &b1);
    assert_int_equal(b1.mode, VRAM_MODE_MANUAL);
    assert_true(b1.reserved_gb == 4.5);

    /* a GPU the server does not serve, and bad values */
    assert_int_equal(sched__host.set_reserve(&s->dev[0], 7, VRAM_MODE_SMART, 1.0, 2.0, &err), STATUS_ERR_RANGE);
    assert_non_null(strstr(err.msg, "GPU 7 is not one of this server's devices"));
    assert_non_null(strstr(err.msg, "GPUs served: 5, 3"));
    err = (struct err){0};
    assert_int_equal(sched__host.set_reserve(&s->dev[0], 5, VRAM_MODE_COUNT, 1.0, 2.0, &err), STATUS_ERR_INVALID);
    err = (struct err){0};
    assert_int_equal(sched__host.set_reserve(&s->dev[0], 5, VRAM_MODE_SMART, -1.0, 2.0, &err), STATUS_ERR_RANGE);
    sched__device_budget(s, 0, &b0);
    assert_int_equal(b0.mode, VRAM_MODE_AUTO); /* refused settings change nothing */
    sched_free(s);

    /* a CPU-only server has no GPU to store settings for */
    o = (struct sched_opts){.n_cpu_workers = 1, .cpu_threads = 1, .paths = PATHS};
    s = sched_new(&o, &err);
    err = (struct err){0};
    assert_int_equal(sched__host.set_reserve(&s->dev[0], 0, VRAM_MODE_SMART, 1.0, 2.0, &err), STATUS_ERR_RANGE);
    assert_non_null(strstr(err.msg, "serves no GPU"));
    sched_free(s);
}

/* ===== GPUMemoryCleanup clear_all_gpus ===== */

static void test_cleanup_idle_device(void **state) {
    (void)state;
    struct sched *s = new_sched(2);
    char text[512], rep[4096], want[128];
    /* grow device 1's scratch (1 MiB and 3 MiB), device 0's (2 MiB) */
    struct sched_ticket t = submit(s, "{\"1\": {\"class_type\": \"TGrow\", \"inputs\": {\"n\": 786432}}}", 1);
    json_decref(wait_history(s, t.prompt_id));
    size_t g1 = grown[1];
    assert_true(g1 >= (size_t)3 << 20);
    t = submit(s, "{\"1\": {\"class_type\": \"TGrow\", \"inputs\": {\"n\": 524288}}}", 0);
    json_decref(wait_history(s, t.prompt_id));
    size_t g0 = grown[0];
    assert_true(g0 >= (size_t)2 << 20);

    double t0 = clock_now();
    t = submit(s, cleanup_prompt(text, sizeof text, false), 0);
    report_of(s, t.prompt_id, "2", rep, sizeof rep);
    assert_true(clock_now() - t0 < 4.0); /* an idle device answers at once, not at the deadline */
    snprintf(want, sizeof want, "CPU device (no GPU runs this prompt): freed %.2fMB", (double)g0 / (1 << 20));
    if (!strstr(rep, want)) fail_msg("no '%s' in:\n%s", want, rep);
    snprintf(want, sizeof want, "CPU device 1: freed %.2fMB", (double)g1 / (1 << 20));
    if (!strstr(rep, want)) fail_msg("no '%s' in:\n%s", want, rep);
    snprintf(want, sizeof want, "Total freed: %.2fMB\n", (double)(g0 + g1) / (1 << 20));
    if (!strstr(rep, want)) fail_msg("no '%s' in:\n%s", want, rep);
    assert_null(strstr(rep, "only this worker's device"));
    assert_null(strstr(rep, "queued"));
    pthread_mutex_lock(&s->mu);
    assert_true(s->dev[1].clean_done == s->dev[1].clean_req);
    pthread_mutex_unlock(&s->mu);
    assert_int_equal(s->dev[1].engine->scratch.size, 0); /* idle worker: its engine is quiet */

    /* nothing left to free: 0 on both */
    t = submit(s, cleanup_prompt(text, sizeof text, true), 1);
    report_of(s, t.prompt_id, "2", rep, sizeof rep);
    if (!strstr(rep, "CPU device 0: freed 0.00MB")) fail_msg("report:\n%s", rep);
    if (!strstr(rep, "Total freed: 0.00MB")) fail_msg("report:\n%s", rep);
    done(s);
}

static void test_cleanup_busy_device_queued(void **state) {
    (void)state;
    struct sched *s = new_sched(2);
    char text[512], rep[4096];
    struct sched_ticket gate = submit(s, "{\"1\": {\"class_type\": \"TGate\", \"inputs\": {}}}", 1);
    for (int i = 0; i < 5000; i++) { /* device 1 running */
        json_t *q = sched_queue_json(s, 1);
        size_t running = json_array_size(json_object_get(q, "queue_running"));
        json_decref(q);
        if (running) break;
        usleep(1000);
    }
    double t0 = clock_now();
    struct sched_ticket t = submit(s, cleanup_prompt(text, sizeof text, true), 0);
    report_of(s, t.prompt_id, "2", rep, sizeof rep);
    assert_true(clock_now() - t0 < 4.0); /* not waited for */
    if (!strstr(rep, "CPU device 1: queued after its current prompt")) fail_msg("report:\n%s", rep);
    if (!strstr(rep, "(queued devices not counted)")) fail_msg("report:\n%s", rep);
    pthread_mutex_lock(&s->mu);
    assert_true(s->dev[1].clean_req > s->dev[1].clean_done); /* still pending */
    assert_true(s->dev[1].clean_aggressive);
    pthread_mutex_unlock(&s->mu);
    atomic_store(&gate_open, true);
    json_decref(wait_history(s, gate.prompt_id));
    wait_cleaned(s, 1); /* served after its prompt */
    done(s);
}

static void test_cleanup_two_at_once(void **state) {
    (void)state;
    struct sched *s = new_sched(2);
    const char *text = "{\"1\": {\"class_type\": \"TBarrier\", \"inputs\": {\"n\": 2}}, "
                       "\"2\": {\"class_type\": \"GPUMemoryCleanup\", \"inputs\": {\"clear_all_gpus\": [\"1\", 0], "
                       "\"aggressive\": false, \"unit\": \"GB\"}}}";
    double t0 = clock_now();
    struct sched_ticket a = submit(s, text, 0), b = submit(s, text, 1);
    char ra[4096], rb[4096];
    report_of(s, a.prompt_id, "2", ra, sizeof ra);
    report_of(s, b.prompt_id, "2", rb, sizeof rb);
    assert_true(clock_now() - t0 < 4.5); /* neither waited the 5 s for the other */
    /* the first to ask finds the other still in its prompt: queued; the second may find the
     * first done already and wait for it */
    bool qa = strstr(ra, "CPU device 1: queued after its current prompt") != NULL;
    bool qb = strstr(rb, "CPU device 0: queued after its current prompt") != NULL;
    if (!qa && !qb) fail_msg("neither report has the other device queued:\n%s\n---\n%s", ra, rb);
    if (!qa && !strstr(ra, "CPU device 1: freed")) fail_msg("report on 0:\n%s", ra);
    if (!qb && !strstr(rb, "CPU device 0: freed")) fail_msg("report on 1:\n%s", rb);
    wait_cleaned(s, 0);
    wait_cleaned(s, 1);
    done(s);
}

/* ===== Setup ===== */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) { return remove(path); }

static int setup(void **state) {
    graph_vram_monitor_opts = &no_libs;
    snprintf(ROOT, sizeof ROOT, "/tmp/kiln_host_XXXXXX");
    if (!mkdtemp(ROOT)) return -1;
    snprintf(DIR_MODELS, sizeof DIR_MODELS, "%s/models", ROOT);
    snprintf(DIR_INPUT, sizeof DIR_INPUT, "%s/input", ROOT);
    snprintf(DIR_OUTPUT, sizeof DIR_OUTPUT, "%s/output", ROOT);
    snprintf(DIR_TEMP, sizeof DIR_TEMP, "%s/temp", ROOT);
    mkdir(DIR_MODELS, 0755);
    mkdir(DIR_INPUT, 0755);
    mkdir(DIR_OUTPUT, 0755);
    mkdir(DIR_TEMP, 0755);
    PATHS = (struct graph_paths){.models = DIR_MODELS, .input = DIR_INPUT, .output = DIR_OUTPUT, .temp = DIR_TEMP};
    graph_registry_add(&T_GROW);
    graph_registry_add(&T_GATE);
    graph_registry_add(&T_BARRIER);
    return 0;
}

static int teardown(void **state) {
    graph_registry_reset();
    nftw(ROOT, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reserve_settings_stored),
        cmocka_unit_test(test_cleanup_idle_device),
        cmocka_unit_test(test_cleanup_busy_device_queued),
        cmocka_unit_test(test_cleanup_two_at_once),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
