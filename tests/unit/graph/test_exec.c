/* tests/unit/graph/test_exec.c -- graph/exec.c with small fake node classes: run order, each
 * node once, values freed when their last consumer ran, the error record, interrupts (between
 * nodes and through progress), events in ComfyUI's order, and the cache hook. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/mem.h"
#include "base/status.h"
#include "graph/exec.h"
#include "graph/json.h"

#include <stdio.h>
#include <string.h>

/* ===== A log of runs and events ===== */

static char runs[1024];   /* node ids in run order */
static char events[4096]; /* event trace */
static atomic_bool interrupt_flag;
static int live_objects;  /* TObj objects alive */
static int live_seen_by_last; /* live_objects when TUse ran with last = 1 */

static void logf_(char *buf, size_t n, const char *fmt, ...) {
    size_t len = strlen(buf);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + len, n - len, fmt, ap);
    va_end(ap);
}

static void ev_start(void *u) { logf_(events, sizeof events, "start "); }
static void ev_cached(void *u, const char *const *ids, int n) {
    logf_(events, sizeof events, "cached[");
    for (int i = 0; i < n; i++) logf_(events, sizeof events, "%s%s", i ? "," : "", ids[i]);
    logf_(events, sizeof events, "] ");
}
static void ev_executing(void *u, const char *id) { logf_(events, sizeof events, "executing:%s ", id); }
static void ev_progress(void *u, const char *id, int64_t v, int64_t m) {
    logf_(events, sizeof events, "progress:%s:%lld/%lld ", id, (long long)v, (long long)m);
    if (v == 2) atomic_store(&interrupt_flag, true); /* the "user" interrupts at step 2 */
}
static void ev_executed(void *u, const char *id, const json_t *ui) {
    char *s = graph_json_dumps(ui, -1);
    logf_(events, sizeof events, "executed:%s:%s ", id, s);
    mem_free(s);
}
static void ev_success(void *u) { logf_(events, sizeof events, "success"); }
static void ev_error(void *u, const struct exec_error *e, const json_t *executed) {
    logf_(events, sizeof events, "error:%s:%s", e->node_id, e->exception_type);
}
static void ev_interrupted(void *u, const struct exec_error *e, const json_t *executed) {
    logf_(events, sizeof events, "interrupted:%s", e->node_id);
}

static const struct exec_events EVENTS = {
    .execution_start = ev_start, .execution_cached = ev_cached, .executing = ev_executing,
    .progress = ev_progress,     .executed = ev_executed,       .execution_success = ev_success,
    .execution_error = ev_error, .execution_interrupted = ev_interrupted,
};

/* ===== Fake classes ===== */

static int run_num(struct node_run *c, const struct value *in, struct value *out, struct err *e) {
    logf_(runs, sizeof runs, "%s ", c->node_id);
    out[0].kind = VALUE_INT;
    out[0].i = in[0].i;
    return 0;
}

static int run_add(struct node_run *c, const struct value *in, struct value *out, struct err *e) {
    logf_(runs, sizeof runs, "%s ", c->node_id);
    out[0].kind = VALUE_INT;
    out[0].i = in[0].i + (in[1].kind == VALUE_INT ? in[1].i : 0);
    return 0;
}

static int run_sink(struct node_run *c, const struct value *in, struct value *out, struct err *e) {
    logf_(runs, sizeof runs, "%s ", c->node_id);
    json_t *a = json_array();
    json_array_append_new(a, json_integer(in[0].i));
    json_object_set_new(c->ui, "text", a);
    return 0;
}

static int run_fail(struct node_run *c, const struct value *in, struct value *out, struct err *e) {
    logf_(runs, sizeof runs, "%s ", c->node_id);
    return err_set(e, STATUS_ERR_IO, "boom on %lld", (long long)in[0].i);
}

static int run_slow(struct node_run *c, const struct value *in, struct value *out, struct err *e) {
    logf_(runs, sizeof runs, "%s ", c->node_id);
    for (int i = 1; i <= 4; i++) {
        int rc = node_progress(c, i, 4, e);
        if (rc) return rc;
    }
    out[0].kind = VALUE_INT;
    out[0].i = 4;
    return 0;
}

static void tobj_free(struct gobj *o) {
    live_objects--;
    mem_free(o);
}

static void make_obj(struct value *out) {
    struct gobj *o = mem_calloc(1, sizeof *o);
    *o = (struct gobj){.refs = 1, .type = "TOBJ", .free = tobj_free};
    live_objects++;
    value_set_object(out, o);
}

static int run_obj(struct node_run *c, const struct value *in, struct value *out, struct err *e) {
    logf_(runs, sizeof runs, "%s ", c->node_id);
    make_obj(&out[0]);
    return 0;
}

static int run_use(struct node_run *c, const struct value *in, struct value *out, struct err *e) {
    logf_(runs, sizeof runs, "%s ", c->node_id);
    assert_non_null(value_object(&in[0], "TOBJ"));
    if (in[1].i == 1) live_seen_by_last = live_objects;
    make_obj(&out[0]);
    return 0;
}

#define INT_IN(n) {.name = n, .kind = NODE_INPUT_INT, .flags = NODE_IN_DEFAULT}
static const struct node_output INT_OUT[] = {{.type = "INT"}, NODE_OUTPUTS_END};

static const struct node_class T_NUM = {.name = "TNum", .required = (const struct node_input[]){INT_IN("v"), NODE_INPUTS_END},
                                        .outputs = INT_OUT, .run = run_num};
static const struct node_class T_ADD = {.name = "TAdd",
                                        .required = (const struct node_input[]){INT_IN("a"), NODE_INPUTS_END},
                                        .optional = (const struct node_input[]){INT_IN("b"), NODE_INPUTS_END},
                                        .outputs = INT_OUT, .run = run_add};
static const struct node_class T_SINK = {.name = "TSink", .output_node = true,
                                         .required = (const struct node_input[]){INT_IN("x"), NODE_INPUTS_END},
                                         .run = run_sink};
static const struct node_class T_FAIL = {.name = "TFail", .required = (const struct node_input[]){INT_IN("x"), NODE_INPUTS_END},
                                         .outputs = INT_OUT, .run = run_fail};
static const struct node_class T_SLOW = {.name = "TSlow", .outputs = INT_OUT, .run = run_slow};
static const struct node_class T_OBJ = {.name = "TObj", .outputs = (const struct node_output[]){{.type = "TOBJ"}, NODE_OUTPUTS_END},
                                        .run = run_obj};
static const struct node_class T_USE = {.name = "TUse", .output_node = true,
                                        .required = (const struct node_input[]){{.name = "o", .kind = NODE_INPUT_OBJECT, .type = "TOBJ"},
                                                                                INT_IN("last"), NODE_INPUTS_END},
                                        .outputs = (const struct node_output[]){{.type = "TOBJ"}, NODE_OUTPUTS_END},
                                        .run = run_use};

static int setup(void **s) {
    const struct node_class *all[] = {&T_NUM, &T_ADD, &T_SINK, &T_FAIL, &T_SLOW, &T_OBJ, &T_USE};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) graph_registry_add(all[i]);
    return 0;
}
static int teardown(void **s) {
    graph_registry_reset();
    return 0;
}

/* Validates text and runs it; returns the status and fills *rep. */
static int run_prompt(const char *text, const struct exec_cache_i *cache, struct exec_report *rep) {
    runs[0] = events[0] = 0;
    json_t *prompt = NULL, *body = NULL;
    struct err err = {0};
    if (graph_json_loads(text, strlen(text), &prompt, &err)) fail_msg("%s", err.msg);
    struct graph_paths paths = {.input = "/tmp", .output = "/tmp", .temp = "/tmp", .models = "/tmp"};
    struct graph_prompt *p = NULL;
    if (graph_prompt_validate(prompt, &paths, NULL, &p, &body, &err)) {
        char *b = graph_json_dumps(body, -1);
        fail_msg("validation: %s\n%s", err.msg, b);
    }
    struct exec_opts opts = {.paths = &paths, .events = &EVENTS, .interrupt = &interrupt_flag, .cache = cache};
    int rc = exec_run(p, &opts, rep);
    graph_prompt_free(p);
    json_decref(prompt);
    return rc;
}

static void expect_json(const json_t *got, const char *want) {
    char *g = graph_json_dumps(got, -1);
    if (strcmp(g, want) != 0) fail_msg("got %s want %s", g, want);
    mem_free(g);
}

/* ===== Tests ===== */

static void test_order_and_events(void **s) {
    struct exec_report rep;
    /* 5 is not connected to the output: it never runs */
    assert_int_equal(run_prompt("{\"4\": {\"class_type\": \"TSink\", \"inputs\": {\"x\": [\"3\", 0]}},"
                                " \"3\": {\"class_type\": \"TAdd\", \"inputs\": {\"a\": [\"1\", 0], \"b\": [\"2\", 0]}},"
                                " \"1\": {\"class_type\": \"TNum\", \"inputs\": {\"v\": 2}},"
                                " \"2\": {\"class_type\": \"TNum\", \"inputs\": {\"v\": \"3\"}},"
                                " \"5\": {\"class_type\": \"TNum\", \"inputs\": {\"v\": 9}}}",
                                NULL, &rep),
                     0);
    assert_string_equal(runs, "1 2 3 4 ");
    assert_string_equal(events, "start cached[] executing:1 executing:2 executing:3 executing:4 "
                                "executed:4:{\"text\": [5]} success");
    expect_json(rep.outputs, "{\"4\": {\"text\": [5]}}");
    expect_json(rep.executed, "[\"1\", \"2\", \"3\", \"4\"]");
    exec_report_deinit(&rep);
}

static void test_shared_upstream_runs_once(void **s) {
    struct exec_report rep;
    assert_int_equal(run_prompt("{\"1\": {\"class_type\": \"TNum\", \"inputs\": {\"v\": 7}},"
                                " \"8\": {\"class_type\": \"TSink\", \"inputs\": {\"x\": [\"1\", 0]}},"
                                " \"2\": {\"class_type\": \"TAdd\", \"inputs\": {\"a\": [\"1\", 0]}},"
                                " \"9\": {\"class_type\": \"TSink\", \"inputs\": {\"x\": [\"2\", 0]}}}",
                                NULL, &rep),
                     0);
    assert_string_equal(runs, "1 8 2 9 ");
    expect_json(rep.outputs, "{\"8\": {\"text\": [7]}, \"9\": {\"text\": [7]}}");
    exec_report_deinit(&rep);
}

static void test_values_freed_early(void **s) {
    struct exec_report rep;
    live_objects = 0;
    live_seen_by_last = -1;
    /* 1 -> 2 -> 3: when 3 runs, 1's object is gone (only 2's is alive) */
    assert_int_equal(run_prompt("{\"1\": {\"class_type\": \"TObj\", \"inputs\": {}},"
                                " \"2\": {\"class_type\": \"TUse\", \"inputs\": {\"o\": [\"1\", 0], \"last\": 0}},"
                                " \"3\": {\"class_type\": \"TUse\", \"inputs\": {\"o\": [\"2\", 0], \"last\": 1}}}",
                                NULL, &rep),
                     0);
    assert_string_equal(runs, "1 2 3 ");
    assert_int_equal(live_seen_by_last, 1);
    assert_int_equal(live_objects, 0); /* everything released at the end */
    exec_report_deinit(&rep);
}

static void test_error_stops(void **s) {
    struct exec_report rep;
    assert_int_equal(run_prompt("{\"1\": {\"class_type\": \"TNum\", \"inputs\": {\"v\": 4}},"
                                " \"2\": {\"class_type\": \"TFail\", \"inputs\": {\"x\": [\"1\", 0]}},"
                                " \"3\": {\"class_type\": \"TSink\", \"inputs\": {\"x\": [\"2\", 0]}},"
                                " \"4\": {\"class_type\": \"TSink\", \"inputs\": {\"x\": 1}}}",
                                NULL, &rep),
                     STATUS_ERR_IO);
    assert_string_equal(runs, "1 2 "); /* the first failure stops the prompt: 4 never runs */
    assert_string_equal(events, "start cached[] executing:1 executing:2 error:2:OSError");
    assert_string_equal(rep.error.node_id, "2");
    assert_string_equal(rep.error.node_type, "TFail");
    assert_string_equal(rep.error.exception_message, "boom on 4");
    expect_json(rep.error.current_inputs, "{\"x\": [4]}");
    expect_json(rep.executed, "[\"1\"]");
    expect_json(rep.outputs, "{}");
    exec_report_deinit(&rep);
}

static void test_interrupt_between_nodes(void **s) {
    struct exec_report rep;
    atomic_store(&interrupt_flag, true);
    assert_int_equal(run_prompt("{\"1\": {\"class_type\": \"TNum\", \"inputs\": {\"v\": 4}},"
                                " \"3\": {\"class_type\": \"TSink\", \"inputs\": {\"x\": [\"1\", 0]}}}",
                                NULL, &rep),
                     STATUS_ERR_INTERRUPTED);
    atomic_store(&interrupt_flag, false);
    assert_string_equal(runs, "");
    assert_string_equal(events, "start cached[] executing:1 interrupted:1");
    assert_string_equal(rep.error.node_type, "TNum");
    exec_report_deinit(&rep);
}

static void test_interrupt_through_progress(void **s) {
    struct exec_report rep;
    assert_int_equal(run_prompt("{\"1\": {\"class_type\": \"TSlow\", \"inputs\": {}},"
                                " \"3\": {\"class_type\": \"TSink\", \"inputs\": {\"x\": [\"1\", 0]}}}",
                                NULL, &rep),
                     STATUS_ERR_INTERRUPTED);
    atomic_store(&interrupt_flag, false);
    assert_string_equal(runs, "1 ");
    assert_string_equal(events, "start cached[] executing:1 progress:1:1/4 progress:1:2/4 interrupted:1");
    exec_report_deinit(&rep);
}

/* The cache hook: node "1" comes from the cache with value 40 and does not run. */
static bool cache_get(void *u, const struct graph_prompt *p, int node, struct value *outs, int n, json_t **ui) {
    if (strcmp(p->nodes[node].id, "1") != 0) return false;
    outs[0].kind = VALUE_INT;
    outs[0].i = 40;
    *ui = NULL;
    return true;
}
static int puts_seen;
static void cache_put(void *u, const struct graph_prompt *p, int node, const struct value *outs, int n,
                      const json_t *ui) {
    puts_seen++;
}

static void test_cache_hook(void **s) {
    struct exec_cache_i cache = {.get = cache_get, .put = cache_put};
    struct exec_report rep;
    puts_seen = 0;
    assert_int_equal(run_prompt("{\"1\": {\"class_type\": \"TNum\", \"inputs\": {\"v\": 4}},"
                                " \"2\": {\"class_type\": \"TAdd\", \"inputs\": {\"a\": [\"1\", 0], \"b\": [\"1\", 0]}},"
                                " \"3\": {\"class_type\": \"TSink\", \"inputs\": {\"x\": [\"2\", 0]}}}",
                                &cache, &rep),
                     0);
    assert_string_equal(runs, "2 3 ");
    assert_string_equal(events, "start cached[1] executing:2 executing:3 executed:3:{\"text\": [80]} success");
    assert_int_equal(puts_seen, 2);
    exec_report_deinit(&rep);
}

/* A literal where a socket (object) input is expected passes validation, as in ComfyUI, but
 * the node is never called with it. */
static void test_literal_for_object_input(void **s) {
    struct exec_report rep;
    assert_int_equal(run_prompt("{\"3\": {\"class_type\": \"TUse\", \"inputs\": {\"o\": 5, \"last\": 0}}}", NULL, &rep),
                     STATUS_ERR_INVALID);
    assert_string_equal(runs, "");
    assert_string_equal(rep.error.exception_type, "TypeError");
    assert_string_equal(rep.error.exception_message, "input 'o' of TUse must be a TOBJ, got a literal value");
    exec_report_deinit(&rep);
}

/* Equal sub-graphs under other ids give equal signatures; a changed literal changes them. */
static void test_signature(void **s) {
    const char *texts[3] = {
        "{\"1\": {\"class_type\": \"TNum\", \"inputs\": {\"v\": 2}}, \"2\": {\"class_type\": \"TAdd\", \"inputs\": "
        "{\"b\": [\"1\", 0], \"a\": [\"1\", 0]}}, \"3\": {\"class_type\": \"TSink\", \"inputs\": {\"x\": [\"2\", 0]}}}",
        "{\"7\": {\"class_type\": \"TSink\", \"inputs\": {\"x\": [\"8\", 0]}}, \"8\": {\"class_type\": \"TAdd\", "
        "\"inputs\": {\"a\": [\"9\", 0], \"b\": [\"9\", 0]}}, \"9\": {\"class_type\": \"TNum\", \"inputs\": {\"v\": "
        "\"2\"}}}",
        "{\"1\": {\"class_type\": \"TNum\", \"inputs\": {\"v\": 3}}, \"2\": {\"class_type\": \"TAdd\", \"inputs\": "
        "{\"b\": [\"1\", 0], \"a\": [\"1\", 0]}}, \"3\": {\"class_type\": \"TSink\", \"inputs\": {\"x\": [\"2\", 0]}}}",
    };
    const char *sink_id[3] = {"3", "7", "3"};
    char *sig[3];
    for (int t = 0; t < 3; t++) {
        json_t *prompt = NULL, *body = NULL;
        struct err err = {0};
        assert_int_equal(graph_json_loads(texts[t], strlen(texts[t]), &prompt, &err), 0);
        struct graph_paths paths = {.output = "/tmp"};
        struct graph_prompt *p = NULL;
        assert_int_equal(graph_prompt_validate(prompt, &paths, NULL, &p, &body, &err), 0);
        sig[t] = exec_signature(p, graph_prompt_find(p, sink_id[t]));
        graph_prompt_free(p);
        json_decref(prompt);
    }
    assert_string_equal(sig[0], "[[\"TSink\", null, [\"x\", [\"ANCESTOR\", 0, 0]]], [\"TAdd\", null, [\"a\", "
                                "[\"ANCESTOR\", 1, 0]], [\"b\", [\"ANCESTOR\", 1, 0]]], [\"TNum\", null, [\"v\", 2]]]");
    assert_string_equal(sig[0], sig[1]);
    assert_string_not_equal(sig[0], sig[2]);
    for (int t = 0; t < 3; t++) mem_free(sig[t]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_and_events),   cmocka_unit_test(test_shared_upstream_runs_once),
        cmocka_unit_test(test_values_freed_early), cmocka_unit_test(test_error_stops),
        cmocka_unit_test(test_interrupt_between_nodes), cmocka_unit_test(test_interrupt_through_progress),
        cmocka_unit_test(test_cache_hook),         cmocka_unit_test(test_literal_for_object_input),
        cmocka_unit_test(test_signature),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
