/* tests/unit/sched/test_sched.c -- the scheduler with fake node classes (no model): heap order
 * and /queue shape, routing (target, automatic, checkpoint preference, bad target), queue
 * isolation, concurrent submissions, events with their audience and order, interrupts,
 * clear/delete, history paging, the output cache (identical resubmission, /free, LoadImage
 * file changes) and metrics.
 * Threads: cmocka assertions run on the test thread only; sinks and nodes just record. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/fs.h"
#include "base/mem.h"
#include "base/status.h"
#include "graph/cache.h"
#include "graph/json.h"
#include "io/png.h"
#include "sched/internal.h"

#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static struct sched *g_s;            /* the sched under test (nodes map engines to devices) */
static char ROOT[256];               /* temp folder with models/ input/ output/ temp/ */
static char DIR_MODELS[300], DIR_INPUT[300], DIR_OUTPUT[300], DIR_TEMP[300];
static struct graph_paths PATHS;

/* ===== What nodes did ===== */

#define MAX_RUNS 512
static struct {
    pthread_mutex_t mu;
    char tag[MAX_RUNS][32];
    int dev[MAX_RUNS];
    int n;
} RUNS = {.mu = PTHREAD_MUTEX_INITIALIZER};

static atomic_bool gate_open;

static void record_run(const struct node_run *ctx, const char *tag) {
    int dev = -1;
    for (int i = 0; g_s && i < g_s->n_dev; i++)
        if ((void *)g_s->dev[i].engine == ctx->engine) dev = i;
    pthread_mutex_lock(&RUNS.mu);
    if (RUNS.n < MAX_RUNS) {
        snprintf(RUNS.tag[RUNS.n], sizeof RUNS.tag[0], "%s", tag);
        RUNS.dev[RUNS.n++] = dev;
    }
    pthread_mutex_unlock(&RUNS.mu);
}

/* Run tags in order, space-separated, for one device (-1: all). */
static void runs_of(int dev, char *buf, size_t n) {
    buf[0] = 0;
    pthread_mutex_lock(&RUNS.mu);
    for (int i = 0; i < RUNS.n; i++)
        if (dev < 0 || RUNS.dev[i] == dev) snprintf(buf + strlen(buf), n - strlen(buf), "%s ", RUNS.tag[i]);
    pthread_mutex_unlock(&RUNS.mu);
}

static int count_runs(const char *tag, int *dev) {
    int k = 0;
    pthread_mutex_lock(&RUNS.mu);
    for (int i = 0; i < RUNS.n; i++)
        if (strcmp(RUNS.tag[i], tag) == 0) {
            k++;
            if (dev) *dev = RUNS.dev[i];
        }
    pthread_mutex_unlock(&RUNS.mu);
    return k;
}

/* ===== Fake classes ===== */

static void ui_text(struct node_run *ctx, const char *text) {
    json_t *a = json_array();
    json_array_append_new(a, json_string(text));
    json_object_set_new(ctx->ui, "text", a);
}

/* TNum: v -> INT (logs "num<v>") */
static int run_num(struct node_run *c, const struct value *in, struct value *out, struct err *e) {
    char tag[32];
    snprintf(tag, sizeof tag, "num%lld", (long long)in[0].i);
    record_run(c, tag);
    out[0] = (struct value){.kind = VALUE_INT, .i = in[0].i};
    return 0;
}

/* TSleep (output): tag, steps x (progress, ms sleep), optional x; UI {"text": [tag]} */
static int run_sleep(struct node_run *c, const struct value *in, struct value *out, struct err *e) {
    record_run(c, in[0].s);
    for (int64_t i = 1; i <= in[1].i; i++) {
        int rc = node_progress(c, i, in[1].i, e);
        if (rc) return rc;
        if (in[2].i) usleep((useconds_t)in[2].i * 1000);
    }
    ui_text(c, in[0].s);
    return 0;
}

/* TGate (output): one progress event, then waits for gate_open or an interrupt */
static int run_gate(struct node_run *c, const struct value *in, struct value *out, struct err *e) {
    record_run(c, in[0].s);
    int rc = node_progress(c, 0, 1, e);
    if (rc) return rc;
    while (!atomic_load(&gate_open)) {
        if (node_interrupted(c)) return err_set(e, STATUS_ERR_INTERRUPTED, "Processing interrupted");
        usleep(500);
    }
    ui_text(c, in[0].s);
    return 0;
}

static int run_fail(struct node_run *c, const struct value *in, struct value *out, struct err *e) {
    record_run(c, "fail");
    return err_set(e, STATUS_ERR_IO, "boom %lld", (long long)in[0].i);
}

static int run_oom(struct node_run *c, const struct value *in, struct value *out, struct err *e) {
    record_run(c, "oom");
    return err_set(e, STATUS_ERR_OOM_DEVICE, "out of device memory");
}

/* TImgSize (output): IMAGE -> UI "WxH" */
static int run_img_size(struct node_run *c, const struct value *in, struct value *out, struct err *e) {
    const struct image *im = value_image(&in[0]);
    char text[64];
    snprintf(text, sizeof text, "%lldx%lld", (long long)im->w, (long long)im->h);
    record_run(c, "imgsize");
    ui_text(c, text);
    return 0;
}

static void fake_free(struct gobj *o) { mem_free(o); }

/* TModel: an object of wire type MODEL (what unload_models drops from the cache) */
static int run_model(struct node_run *c, const struct value *in, struct value *out, struct err *e) {
    record_run(c, "model");
    struct gobj *o = mem_calloc(1, sizeof *o);
    *o = (struct gobj){.refs = 1, .type = "MODEL", .free = fake_free};
    value_set_object(&out[0], o);
    return 0;
}

/* TUseModel (output): takes a MODEL */
static int run_use_model(struct node_run *c, const struct value *in, struct value *out, struct err *e) {
    record_run(c, "use");
    ui_text(c, "used");
    return 0;
}

#define INT_IN(n) {.name = n, .kind = NODE_INPUT_INT, .flags = NODE_IN_DEFAULT}
#define STR_IN(n) {.name = n, .kind = NODE_INPUT_STRING}
static const struct node_output INT_OUT[] = {{.type = "INT"}, NODE_OUTPUTS_END};

static const struct node_class T_NUM = {
    .name = "TNum", .required = (const struct node_input[]){INT_IN("v"), NODE_INPUTS_END}, .outputs = INT_OUT,
    .run = run_num};
static const struct node_class T_SLEEP = {
    .name = "TSleep",
    .output_node = true,
    .required = (const struct node_input[]){STR_IN("tag"), INT_IN("steps"), INT_IN("ms"), NODE_INPUTS_END},
    .optional = (const struct node_input[]){INT_IN("x"), NODE_INPUTS_END},
    .run = run_sleep};
static const struct node_class T_GATE = {
    .name = "TGate", .output_node = true, .required = (const struct node_input[]){STR_IN("tag"), NODE_INPUTS_END},
    .run = run_gate};
static const struct node_class T_FAIL = {
    .name = "TFail", .output_node = true, .required = (const struct node_input[]){INT_IN("x"), NODE_INPUTS_END},
    .run = run_fail};
static const struct node_class T_OOM = {.name = "TOom", .output_node = true, .run = run_oom};
static const struct node_class T_IMG_SIZE = {
    .name = "TImgSize",
    .output_node = true,
    .required = (const struct node_input[]){{.name = "image", .kind = NODE_INPUT_OBJECT, .type = "IMAGE"},
                                            NODE_INPUTS_END},
    .run = run_img_size};
static const struct node_class T_MODEL = {
    .name = "TModel", .outputs = (const struct node_output[]){{.type = "MODEL"}, NODE_OUTPUTS_END},
    .run = run_model};
static const struct node_class T_USE_MODEL = {
    .name = "TUseModel",
    .output_node = true,
    .required = (const struct node_input[]){{.name = "model", .kind = NODE_INPUT_OBJECT, .type = "MODEL"},
                                            INT_IN("k"), NODE_INPUTS_END},
    .run = run_use_model};

/* ===== Events the sink saw ===== */

#define MAX_EVENTS 8192
struct rec {
    char client[64];                     /* "" = broadcast */
    char type[32];
    json_t *data;
    bool history_ready;                  /* executing null: the entry was in history, not in /queue */
};

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct rec ev[MAX_EVENTS];
    int n;
} R = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void sink(void *user, const char *client_id, const char *type, json_t *data) {
    bool ready = false;
    json_t *node = json_object_get(data, "node");
    if (strcmp(type, "executing") == 0 && json_is_null(node)) {
        const char *id = json_string_value(json_object_get(data, "prompt_id"));
        json_t *h = sched_history_json(g_s, id, -1, -1);
        json_t *q = sched_queue_json(g_s, -1);
        ready = json_object_size(h) == 1 && json_array_size(json_object_get(q, "queue_running")) == 0;
        json_decref(h);
        json_decref(q);
    }
    pthread_mutex_lock(&R.mu);
    if (R.n < MAX_EVENTS) {
        struct rec *r = &R.ev[R.n++];
        snprintf(r->client, sizeof r->client, "%s", client_id ? client_id : "");
        snprintf(r->type, sizeof r->type, "%s", type);
        r->data = data;
        r->history_ready = ready;
    } else {
        json_decref(data);
    }
    pthread_cond_broadcast(&R.cv);
    pthread_mutex_unlock(&R.mu);
}

static void events_reset(void) {
    pthread_mutex_lock(&R.mu);
    for (int i = 0; i < R.n; i++) json_decref(R.ev[i].data);
    R.n = 0;
    pthread_mutex_unlock(&R.mu);
}

static const char *data_id(const struct rec *r) { return json_string_value(json_object_get(r->data, "prompt_id")); }

/* Waits (5 s at most) for an event of `type` about prompt `id` (with `final`: the executing
 * event with node null); returns its index. */
static int wait_event_ex(const char *type, const char *id, bool final) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 5;
    pthread_mutex_lock(&R.mu);
    for (;;) {
        for (int i = 0; i < R.n; i++) {
            const char *pid = data_id(&R.ev[i]);
            if (strcmp(R.ev[i].type, type) == 0 && (!id || (pid && strcmp(pid, id) == 0)) &&
                (!final || json_is_null(json_object_get(R.ev[i].data, "node")))) {
                pthread_mutex_unlock(&R.mu);
                return i;
            }
        }
        if (pthread_cond_timedwait(&R.cv, &R.mu, &deadline)) break;
    }
    pthread_mutex_unlock(&R.mu);
    fail_msg("no %s event for %s", type, id ? id : "(any)");
    return -1;
}

static int wait_event(const char *type, const char *id) { return wait_event_ex(type, id, false); }
static int wait_final(const char *id) { return wait_event_ex("executing", id, true); }

/* "type@client" of the events about prompt id (or status events), in order, joined by spaces. */
static void trace_of(const char *id, char *buf, size_t n) {
    buf[0] = 0;
    pthread_mutex_lock(&R.mu);
    for (int i = 0; i < R.n; i++) {
        const char *pid = data_id(&R.ev[i]);
        bool status = strcmp(R.ev[i].type, "status") == 0;
        if (!status && !(pid && strcmp(pid, id) == 0)) continue;
        snprintf(buf + strlen(buf), n - strlen(buf), "%s@%s ", R.ev[i].type, R.ev[i].client[0] ? R.ev[i].client : "*");
    }
    pthread_mutex_unlock(&R.mu);
}

/* ===== Helpers ===== */

static void expect_json(const json_t *got, const char *want) {
    char *g = graph_json_dumps(got, -1);
    if (strcmp(g, want) != 0) fail_msg("got  %s\nwant %s", g, want);
    mem_free(g);
}

/* A sched of o's devices with the event sink, the recorded events and runs reset. */
static struct sched *sched_of(const struct sched_opts *o) {
    struct err err = {0};
    struct sched *s = sched_new(o, &err);
    if (!s) fail_msg("sched_new: %s", err.msg);
    sched_set_event_sink(s, sink, NULL);
    g_s = s;
    events_reset();
    pthread_mutex_lock(&RUNS.mu);
    RUNS.n = 0;
    pthread_mutex_unlock(&RUNS.mu);
    atomic_store(&gate_open, false);
    return s;
}

static struct sched *new_sched(int n_dev, int history_max) {
    struct sched_opts o = {.n_cpu_workers = n_dev, .cpu_threads = 1, .paths = PATHS, .history_max = history_max,
                           .metrics_log_every = 3};
    return sched_of(&o);
}

static void start(struct sched *s) {
    struct err err = {0};
    if (sched_start(s, &err)) fail_msg("sched_start: %s", err.msg);
}

static void done(struct sched *s) {
    atomic_store(&gate_open, true);
    sched_free(s);
    g_s = NULL;
    events_reset();
}

static struct graph_prompt *prompt_of(const char *text) {
    json_t *prompt = NULL, *body = NULL;
    struct err err = {0};
    if (graph_json_loads(text, strlen(text), &prompt, &err)) fail_msg("%s: %s", text, err.msg);
    struct graph_prompt *p = NULL;
    if (graph_prompt_validate(prompt, &PATHS, NULL, &p, &body, &err)) {
        char *b = graph_json_dumps(body, -1);
        fail_msg("validation of %s: %s\n%s", text, err.msg, b);
    }
    json_decref(prompt);
    return p;
}

struct sub_opts {
    const char *client;
    int target;                          /* -1 auto */
    const char *id;
    bool has_number;
    double number;
    bool front;
    json_t *extra;
};

/* Submits text like api/ does; returns the status, fills *t. */
static int submit_ex(struct sched *s, const char *text, struct sub_opts o, struct sched_ticket *t, struct err *err) {
    struct graph_prompt *p = prompt_of(text);
    int64_t counter = o.has_number ? 0 : sched_next_number(s);
    struct sched_submit sub = {.prompt = p, .extra_data = o.extra, .client_id = o.client, .prompt_id = o.id,
                               .target = o.target, .has_number = o.has_number, .number = o.number, .front = o.front};
    int rc = sched_submit(s, &sub, counter, t, err);
    if (rc) graph_prompt_free(p);
    else assert_null(sub.prompt);
    return rc;
}

static struct sched_ticket submit(struct sched *s, const char *text, const char *client, int target) {
    struct sched_ticket t;
    struct err err = {0};
    int rc = submit_ex(s, text, (struct sub_opts){.client = client, .target = target}, &t, &err);
    if (rc) fail_msg("submit: %s", err.msg);
    return t;
}

/* One TSleep prompt. */
static const char *sleep_prompt(char *buf, size_t n, const char *tag, int steps, int ms) {
    snprintf(buf, n, "{\"1\": {\"class_type\": \"TSleep\", \"inputs\": {\"tag\": \"%s\", \"steps\": %d, \"ms\": %d}}}", tag,
             steps, ms);
    return buf;
}

static const char *gate_prompt(char *buf, size_t n, const char *tag) {
    snprintf(buf, n, "{\"1\": {\"class_type\": \"TGate\", \"inputs\": {\"tag\": \"%s\"}}}", tag);
    return buf;
}

/* The history entry of id (a new reference), waiting 5 s at most for it. */
static json_t *wait_history(struct sched *s, const char *id) {
    for (int i = 0; i < 5000; i++) {
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

static const char *status_str_of(const json_t *entry) {
    return json_string_value(json_object_get(json_object_get(entry, "status"), "status_str"));
}

/* The last history message type of an entry. */
static const char *last_message(const json_t *entry) {
    json_t *m = json_object_get(json_object_get(entry, "status"), "messages");
    return json_string_value(json_array_get(json_array_get(m, json_array_size(m) - 1), 0));
}

/* ===== Queue order and shape ===== */

static void test_heap_order_and_tuples(void **state) {
    struct sched *s = new_sched(1, 0);
    char b[256];
    const char *ids[] = {"A", "B", "C", "D", "E", "F"};
    struct sched_ticket t[6];
    struct err err = {0};
    json_t *extra = json_pack("{s:{s:i},s:s,s:s}", "extra_pnginfo", "a", 1, "auth_token_comfy_org", "secret",
                              "api_key_comfy_org", "key");
    /* A: counter 0, B: 1, C: front (-2), D: number 0.5, E: front (-3), F: number 2.0 */
    struct sub_opts o[6] = {
        {.id = "A", .target = -1, .client = "c", .extra = extra}, {.id = "B", .target = -1},
        {.id = "C", .target = -1, .front = true},
        {.id = "D", .target = -1, .has_number = true, .number = 0.5},
        {.id = "E", .target = -1, .front = true},
        {.id = "F", .target = -1, .has_number = true, .number = 2.0},
    };
    for (int i = 0; i < 6; i++)
        assert_int_equal(submit_ex(s, sleep_prompt(b, sizeof b, ids[i], 1, 0), o[i], &t[i], &err), 0);
    json_decref(extra);
    assert_true(t[0].number_is_int && t[0].number == 0);
    assert_true(t[2].number_is_int && t[2].number == -2);
    assert_true(!t[3].number_is_int && t[3].number == 0.5);
    assert_string_equal(t[4].prompt_id, "E");

    /* heapq by hand: [A] [A,B] [C,B,A] [C,D,A,B] [E,C,A,B,D] [E,C,A,B,D,F] */
    json_t *q = sched_queue_json(s, -1);
    json_t *pending = json_object_get(q, "queue_pending");
    json_t *numbers = json_array(), *order = json_array();
    for (size_t i = 0; i < json_array_size(pending); i++) {
        json_array_append(numbers, json_array_get(json_array_get(pending, i), 0));
        json_array_append(order, json_array_get(json_array_get(pending, i), 1));
    }
    expect_json(numbers, "[-3, -2, 0, 1, 0.5, 2.0]");
    expect_json(order, "[\"E\", \"C\", \"A\", \"B\", \"D\", \"F\"]");
    json_decref(numbers);
    json_decref(order);
    expect_json(json_object_get(q, "queue_running"), "[]");
    /* A's tuple: validated prompt, extra_data without the sensitive keys, client_id added */
    expect_json(json_array_get(pending, 2),
                "[0, \"A\", {\"1\": {\"class_type\": \"TSleep\", \"inputs\": {\"tag\": \"A\", \"steps\": 1, \"ms\": 0}}}, "
                "{\"extra_pnginfo\": {\"a\": 1}, \"client_id\": \"c\"}, [\"1\"]]");
    json_decref(q);
    assert_int_equal(sched_queue_remaining(s, -1), 6);
    assert_int_equal(sched_queue_remaining(s, 0), 6);

    /* the executor still gets the sensitive keys */
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->dev[0].n_heap; i++)
        if (strcmp(s->dev[0].heap[i]->prompt_id, "A") == 0)
            assert_string_equal(json_string_value(json_object_get(s->dev[0].heap[i]->extra_data, "auth_token_comfy_org")),
                                "secret");
    pthread_mutex_unlock(&s->mu);

    start(s);
    json_t *e = wait_history(s, "F");
    json_decref(e);
    char runs[256];
    runs_of(-1, runs, sizeof runs);
    assert_string_equal(runs, "E C A D B F ");
    /* history hides the sensitive keys too */
    json_t *ha = wait_history(s, "A");
    expect_json(json_array_get(json_object_get(ha, "prompt"), 3), "{\"extra_pnginfo\": {\"a\": 1}, \"client_id\": \"c\"}");
    json_decref(ha);
    done(s);
}

static void test_equal_numbers_by_id(void **state) {
    struct sched *s = new_sched(1, 0);
    char b[256];
    struct sched_ticket t;
    struct err err = {0};
    const char *ids[] = {"zz", "aa", "mm"};
    for (int i = 0; i < 3; i++)
        assert_int_equal(submit_ex(s, sleep_prompt(b, sizeof b, ids[i], 1, 0),
                                   (struct sub_opts){.target = 0, .id = ids[i], .has_number = true, .number = 5},
                                   &t, &err),
                         0);
    assert_false(t.number_is_int);
    start(s);
    json_decref(wait_history(s, "zz"));
    char runs[64];
    runs_of(-1, runs, sizeof runs);
    assert_string_equal(runs, "aa mm zz ");
    done(s);
}

static void test_delete_and_clear(void **state) {
    struct sched *s = new_sched(2, 0);
    char b[256];
    struct sched_ticket t[4];
    const char *tags[] = {"a", "b", "c", "d"};
    for (int i = 0; i < 4; i++) t[i] = submit(s, sleep_prompt(b, sizeof b, tags[i], 1, 0), NULL, 0);
    struct sched_ticket other = submit(s, sleep_prompt(b, sizeof b, "other", 1, 0), NULL, 1);
    int statuses = R.n;
    sched_queue_delete(s, t[1].prompt_id);
    assert_int_equal(R.n, statuses + 1); /* a change reports */
    sched_queue_delete(s, "no-such-id");
    assert_int_equal(R.n, statuses + 1); /* nothing deleted: no status */
    json_t *q = sched_queue_json(s, 0);
    assert_int_equal(json_array_size(json_object_get(q, "queue_pending")), 3);
    /* heap [a,b,c,d] minus b, heapified: [a,c,d] */
    assert_string_equal(json_string_value(json_array_get(json_array_get(json_object_get(q, "queue_pending"), 0), 1)),
                        t[0].prompt_id);
    json_decref(q);

    sched_queue_clear(s, 0); /* device 0 only */
    assert_int_equal(sched_queue_remaining(s, 0), 0);
    assert_int_equal(sched_queue_remaining(s, 1), 1);
    assert_int_equal(R.n, statuses + 2);
    struct sched_ticket last = submit(s, sleep_prompt(b, sizeof b, "e", 1, 0), NULL, 0);
    start(s);
    json_decref(wait_history(s, last.prompt_id));
    json_decref(wait_history(s, other.prompt_id));
    char runs[128];
    runs_of(0, runs, sizeof runs);
    assert_string_equal(runs, "e "); /* deleted and cleared prompts never ran */
    json_t *h = sched_history_json(s, t[1].prompt_id, -1, -1);
    expect_json(h, "{}");
    json_decref(h);

    /* clear of all devices, and a deleted prompt id can be used again */
    atomic_store(&gate_open, false);
    struct sched_ticket g = submit(s, gate_prompt(b, sizeof b, "g"), NULL, 0);
    wait_event("progress", g.prompt_id);
    struct sched_ticket x = submit(s, sleep_prompt(b, sizeof b, "x", 1, 0), NULL, 0);
    sched_queue_delete(s, x.prompt_id);
    struct err err = {0};
    struct sched_ticket again;
    assert_int_equal(submit_ex(s, sleep_prompt(b, sizeof b, "x2", 1, 0), (struct sub_opts){.target = 0, .id = x.prompt_id},
                               &again, &err),
                     0);
    sched_queue_clear(s, -1);
    q = sched_queue_json(s, -1);
    assert_int_equal(json_array_size(json_object_get(q, "queue_pending")), 0);
    assert_int_equal(json_array_size(json_object_get(q, "queue_running")), 1); /* clear leaves the running one */
    json_decref(q);
    atomic_store(&gate_open, true);
    json_decref(wait_history(s, g.prompt_id));
    assert_int_equal(count_runs("x", NULL) + count_runs("x2", NULL), 0);
    done(s);
}

/* ===== Routing ===== */

static void test_route_target_and_errors(void **state) {
    struct sched *s = new_sched(2, 0);
    char b[256];
    struct sched_ticket t = submit(s, sleep_prompt(b, sizeof b, "t", 1, 0), NULL, 1);
    assert_int_equal(t.device, 1);
    assert_int_equal(sched_queue_remaining(s, 1), 1);
    assert_int_equal(sched_queue_remaining(s, 0), 0);

    struct err err = {0};
    struct sched_ticket bad;
    assert_int_equal(submit_ex(s, sleep_prompt(b, sizeof b, "t", 1, 0), (struct sub_opts){.target = 7}, &bad, &err),
                     STATUS_ERR_RANGE);
    struct sched_device_info i0, i1;
    sched_device_info(s, 0, &i0);
    sched_device_info(s, 1, &i1);
    char want[600];
    snprintf(want, sizeof want, "device 7 does not exist; devices: 0 (%s), 1 (%s)", i0.name, i1.name);
    assert_string_equal(err.msg, want);
    assert_true(strncmp(i0.name, "cpu:0 ", 6) == 0 && strncmp(i1.name, "cpu:1 ", 6) == 0);
    assert_true(i0.mem_total > 0 && i0.kind == SCHED_DEVICE_CPU && i1.pending == 1 && i0.pending == 0);
    assert_int_equal(sched_n_devices(s), 2);

    /* the same prompt_id while queued */
    err = (struct err){0};
    assert_int_equal(submit_ex(s, sleep_prompt(b, sizeof b, "u", 1, 0), (struct sub_opts){.target = 0, .id = t.prompt_id},
                               &bad, &err),
                     STATUS_ERR_EXISTS);
    assert_non_null(strstr(err.msg, t.prompt_id));
    assert_int_equal(sched_queue_remaining(s, -1), 1);
    err = (struct err){0};
    assert_int_equal(submit_ex(s, sleep_prompt(b, sizeof b, "u", 1, 0), (struct sub_opts){.target = 0, .id = "bad\xff"},
                               &bad, &err),
                     STATUS_ERR_INVALID);

    /* server-made ids are uuid4s */
    assert_int_equal(strlen(t.prompt_id), 36);
    assert_int_equal(t.prompt_id[14], '4');
    assert_non_null(strchr("89ab", t.prompt_id[19]));
    for (int k = 0; k < 36; k++)
        assert_true(k == 8 || k == 13 || k == 18 || k == 23 ? t.prompt_id[k] == '-'
                                                            : strchr("0123456789abcdef", t.prompt_id[k]) != NULL);
    done(s);

    struct sched_opts o = {.n_cpu_workers = 0, .paths = PATHS};
    err = (struct err){0};
    assert_null(sched_new(&o, &err));
    assert_int_equal(err.code, STATUS_ERR_RANGE);
}

static void test_route_auto_least_wait(void **state) {
    struct sched *s = new_sched(2, 0);
    char b[256];
    assert_int_equal(submit(s, sleep_prompt(b, sizeof b, "a", 1, 0), NULL, -1).device, 0); /* all idle: lowest */
    assert_int_equal(submit(s, sleep_prompt(b, sizeof b, "b", 1, 0), NULL, -1).device, 1); /* 1 x 1 s vs 0 */
    assert_int_equal(submit(s, sleep_prompt(b, sizeof b, "c", 1, 0), NULL, -1).device, 0); /* tie: lowest */
    /* device 0 averages 10 s, device 1 1 s: 2 x 10 vs 1 x 1 */
    s->dev[0].m.tasks = 1, s->dev[0].m.exec_sum = 10.0;
    s->dev[1].m.tasks = 1, s->dev[1].m.exec_sum = 1.0;
    assert_int_equal(submit(s, sleep_prompt(b, sizeof b, "d", 1, 0), NULL, -1).device, 1);
    assert_int_equal(submit(s, sleep_prompt(b, sizeof b, "e", 1, 0), NULL, -1).device, 1); /* 2 x 10 vs 2 x 1 */
    done(s);
}

static void test_route_prefers_checkpoint(void **state) {
    char ck[PATH_MAX];
    snprintf(ck, sizeof ck, "%s/checkpoints/route.safetensors", DIR_MODELS);
    FILE *f = fopen(ck, "wb");
    assert_non_null(f);
    fclose(f);
    graph_registry_add(&T_USE_MODEL);
    char path[PATH_MAX];
    struct err err = {0};
    assert_int_equal(graph_model_path(&PATHS, "checkpoints", "route.safetensors", path, sizeof path, &err), 0);
    const char *held[] = {path};
    const char *text = "{\"1\": {\"class_type\": \"CheckpointLoaderSimple\", \"inputs\": {\"ckpt_name\": "
                       "\"route.safetensors\"}}, \"2\": {\"class_type\": \"TUseModel\", \"inputs\": {\"model\": "
                       "[\"1\", 0], \"k\": 1}}}";
    char b[256];

    struct sched *s = new_sched(3, 0);
    sched__device_set_checkpoints(s, 2, held, 1);
    assert_int_equal(submit(s, text, NULL, -1).device, 2);  /* all idle: the holder */
    assert_int_equal(submit(s, text, NULL, -1).device, 0);  /* 1 x 1 s vs 0: the wait wins */
    assert_int_equal(submit(s, sleep_prompt(b, sizeof b, "n", 1, 0), NULL, -1).device, 1); /* no checkpoint */
    assert_int_equal(submit(s, text, NULL, -1).device, 2);  /* all at 1 x 1 s: the holder */
    /* within 10%: device 0 waits 1 x 1.0 s, device 1 1 x 5 s, device 2 2 x 0.52 s = 1.04 s */
    s->dev[0].m.tasks = 1, s->dev[0].m.exec_sum = 1.0;
    s->dev[1].m.tasks = 1, s->dev[1].m.exec_sum = 5.0;
    s->dev[2].m.tasks = 1, s->dev[2].m.exec_sum = 0.52;
    assert_int_equal(submit(s, text, NULL, -1).device, 2);
    assert_int_equal(submit(s, text, NULL, -1).device, 0);  /* beyond 10%: 1.0 s vs 3 x 0.52 s */
    done(s);
    unlink(ck);
}

/* An accepted prompt's checkpoint is read ahead into the page cache (prefetch.c) unless a device
 * holds it already (its host copy exists) or it was read in the last minute. */
static void test_prefetch_on_submit(void **state) {
    char ck[PATH_MAX], ck2[PATH_MAX];
    snprintf(ck, sizeof ck, "%s/checkpoints/pre.safetensors", DIR_MODELS);
    snprintf(ck2, sizeof ck2, "%s/checkpoints/held.safetensors", DIR_MODELS);
    const size_t size = (size_t)33 << 20; /* 2 chunks of 16 MiB and a short third: readers in file order */
    char *zeros = mem_calloc(1, size + 4096);
    FILE *f = fopen(ck, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(zeros, 1, size + 4096, f), size + 4096);
    fclose(f);
    f = fopen(ck2, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(zeros, 1, 4096, f), 4096);
    fclose(f);
    mem_free(zeros);
    graph_registry_add(&T_USE_MODEL);
    char held_path[PATH_MAX];
    struct err err = {0};
    assert_int_equal(graph_model_path(&PATHS, "checkpoints", "held.safetensors", held_path, sizeof held_path, &err), 0);
    const char *held[] = {held_path};
    const char *fmt = "{\"1\": {\"class_type\": \"CheckpointLoaderSimple\", \"inputs\": {\"ckpt_name\": "
                      "\"%s\"}}, \"2\": {\"class_type\": \"TUseModel\", \"inputs\": {\"model\": [\"1\", 0], "
                      "\"k\": 1}}}";
    char text[512];
    struct sched *s = new_sched(2, 0);
    sched__device_set_checkpoints(s, 1, held, 1);
    snprintf(text, sizeof text, fmt, "pre.safetensors");
    submit(s, text, NULL, -1);
    uint64_t bytes = 0;
    assert_true(sched__prefetch_wait(s->prefetch, 1, 10.0, &bytes));
    assert_int_equal(bytes, size + 4096); /* the whole file */
    submit(s, text, NULL, 0); /* read a moment ago: not again */
    snprintf(text, sizeof text, fmt, "held.safetensors");
    submit(s, text, NULL, 0); /* device 1 holds it: its host copy exists, nothing to read */
    assert_false(sched__prefetch_wait(s->prefetch, 2, 0.5, &bytes));
    assert_int_equal(bytes, size + 4096);
    done(s);
    unlink(ck);
    unlink(ck2);
}

/* Writes a file of size bytes (zeros) at dir/checkpoints/name and its path into out. */
static void make_ckpt(const char *name, size_t size, char *out, size_t n) {
    snprintf(out, n, "%s/checkpoints/%s", DIR_MODELS, name);
    char *zeros = mem_calloc(1, size);
    FILE *f = fopen(out, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(zeros, 1, size, f), size);
    fclose(f);
    mem_free(zeros);
    char real[PATH_MAX];
    struct err err = {0};
    assert_int_equal(graph_model_path(&PATHS, "checkpoints", name, real, sizeof real, &err), 0);
    snprintf(out, n, "%s", real);
}

static struct sched *new_sched_recall(const char *dir) {
    struct sched_opts o = {.n_cpu_workers = 2, .cpu_threads = 1, .paths = PATHS, .recall_dir = dir};
    struct sched *s = sched_of(&o);
    sched_read_ahead_recalled(s); /* what kiln serve does once the devices are open */
    return s;
}

/* The checkpoints the last prompts used are listed in the recall folder (most recent first, at
 * most 2) and read ahead when the next sched starts, unless they changed; a prompt that needs
 * another checkpoint stops that speculative read and drops the ones waiting. */
static void test_prefetch_recall(void **state) {
    char dir[400], list[460], a[PATH_MAX], b[PATH_MAX], c[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/cache", ROOT);
    snprintf(list, sizeof list, "%s/prefetch-v1.txt", dir);
    make_ckpt("ra.safetensors", 8192, a, sizeof a);
    make_ckpt("rb.safetensors", 12288, b, sizeof b);
    make_ckpt("rc.safetensors", 4096, c, sizeof c);
    graph_registry_add(&T_USE_MODEL);
    const char *fmt = "{\"1\": {\"class_type\": \"CheckpointLoaderSimple\", \"inputs\": {\"ckpt_name\": "
                      "\"%s\"}}, \"2\": {\"class_type\": \"TUseModel\", \"inputs\": {\"model\": [\"1\", 0], "
                      "\"k\": 1}}}";
    char text[512];

    /* nothing listed yet: nothing read at start; prompts of c, a, b, a: the list is a, b */
    struct sched *s = new_sched_recall(dir);
    assert_false(sched__prefetch_wait(s->prefetch, 1, 0.2, NULL));
    const char *order[] = {"rc.safetensors", "ra.safetensors", "rb.safetensors", "ra.safetensors"};
    for (int i = 0; i < 4; i++) {
        snprintf(text, sizeof text, fmt, order[i]);
        submit(s, text, NULL, -1);
    }
    assert_true(sched__prefetch_wait(s->prefetch, 3, 10.0, NULL));
    done(s);
    char *got = NULL;
    size_t len = 0;
    assert_int_equal(fs_read_whole(list, 1 << 16, &got, &len), 0);
    char *l1 = strchr(got, '\n'), *l2 = l1 ? strchr(l1 + 1, '\n') : NULL, *l3 = l2 ? strchr(l2 + 1, '\n') : NULL;
    assert_non_null(l3);
    assert_string_equal(l3 + 1, ""); /* header and two lines */
    *l2 = *l3 = '\0';
    assert_non_null(strstr(l1 + 1, a));
    assert_true(strncmp(l1 + 1, "8192 ", 5) == 0);
    assert_non_null(strstr(l2 + 1, b));
    assert_true(strncmp(l2 + 1, "12288 ", 6) == 0);
    mem_free(got);

    /* the next start reads both, a first */
    s = new_sched_recall(dir);
    uint64_t bytes = 0;
    assert_true(sched__prefetch_wait(s->prefetch, 2, 10.0, &bytes));
    assert_int_equal(bytes, 8192 + 12288);
    done(s);

    /* a changed file is not read (b grew) */
    make_ckpt("rb.safetensors", 16384, b, sizeof b);
    s = new_sched_recall(dir);
    assert_true(sched__prefetch_wait(s->prefetch, 1, 10.0, &bytes));
    assert_false(sched__prefetch_wait(s->prefetch, 2, 0.3, &bytes));
    assert_int_equal(bytes, 8192);
    done(s);

    /* a prompt for c while a is being read ahead and b waits: a stops, b is dropped, c is read;
       a prompt for a later reads it (the stopped read does not count as read) */
    make_ckpt("rb.safetensors", 12288, b, sizeof b);
    FILE *f = fopen(list, "w"); /* the list as the first run wrote it, with b's new time */
    assert_non_null(f);
    struct stat sa, sb;
    assert_int_equal(stat(a, &sa), 0);
    assert_int_equal(stat(b, &sb), 0);
    fprintf(f, "kiln prefetch v1\n%lld %lld %s\n%lld %lld %s\n", (long long)sa.st_size,
            (long long)sa.st_mtim.tv_sec * 1000000000 + sa.st_mtim.tv_nsec, a, (long long)sb.st_size,
            (long long)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec, b);
    fclose(f);
    struct sched_opts o = {.n_cpu_workers = 2, .cpu_threads = 1, .paths = PATHS, .recall_dir = dir};
    s = sched_of(&o); /* nothing read ahead before sched_read_ahead_recalled */
    assert_false(sched__prefetch_wait(s->prefetch, 1, 0.2, NULL));
    sched__prefetch_hold(s->prefetch, true);
    assert_int_equal(sched__prefetch_recall(s->prefetch, UINT64_MAX), 2);
    for (int i = 0; i < 500 && !sched__prefetch_reading(s->prefetch, a); i++) usleep(2000);
    assert_true(sched__prefetch_reading(s->prefetch, a));
    snprintf(text, sizeof text, fmt, "rc.safetensors");
    submit(s, text, NULL, 0);
    sched__prefetch_hold(s->prefetch, false);
    assert_true(sched__prefetch_wait(s->prefetch, 1, 10.0, &bytes));
    assert_false(sched__prefetch_wait(s->prefetch, 2, 0.3, &bytes));
    assert_int_equal(bytes, 4096); /* c only: a stopped before its first piece, b dropped */
    snprintf(text, sizeof text, fmt, "ra.safetensors");
    submit(s, text, NULL, 0);
    assert_true(sched__prefetch_wait(s->prefetch, 2, 10.0, &bytes));
    assert_int_equal(bytes, 4096 + 8192);
    done(s);

    /* no list, or a list that is not this version: nothing read */
    char empty[460];
    snprintf(empty, sizeof empty, "%s/none", ROOT);
    s = new_sched_recall(empty);
    assert_int_equal(sched__prefetch_recall(s->prefetch, UINT64_MAX), 0);
    done(s);
    f = fopen(list, "w");
    fprintf(f, "kiln prefetch v0\n1 2 %s\n", a);
    fclose(f);
    s = new_sched_recall(dir);
    assert_int_equal(sched__prefetch_recall(s->prefetch, UINT64_MAX), 0);
    done(s);
    unlink(list);
    unlink(a);
    unlink(b);
    unlink(c);
}

/* ===== Isolation and concurrency ===== */

static void test_isolation(void **state) {
    struct sched *s = new_sched(2, 0);
    start(s);
    char b[256], tag[32];
    struct sched_ticket g = submit(s, gate_prompt(b, sizeof b, "gate"), NULL, 0);
    wait_event("progress", g.prompt_id);
    struct sched_ticket t0[20], t1[3];
    for (int i = 0; i < 20; i++) {
        snprintf(tag, sizeof tag, "d0-%d", i);
        t0[i] = submit(s, sleep_prompt(b, sizeof b, tag, 1, 0), NULL, 0);
    }
    for (int i = 0; i < 3; i++) {
        snprintf(tag, sizeof tag, "d1-%d", i);
        t1[i] = submit(s, sleep_prompt(b, sizeof b, tag, 2, 1), NULL, 1);
    }
    for (int i = 0; i < 3; i++) json_decref(wait_history(s, t1[i].prompt_id)); /* device 1 serves its own */
    json_t *all = sched_queue_all_json(s);
    json_t *q0 = json_array_get(json_object_get(all, "queues"), 0), *q1 = json_array_get(json_object_get(all, "queues"), 1);
    assert_int_equal(json_integer_value(json_object_get(q0, "gpu_id")), 0);
    assert_int_equal(json_integer_value(json_object_get(q0, "pending_count")), 20);
    assert_int_equal(json_integer_value(json_object_get(q0, "running_count")), 1);
    assert_int_equal(json_array_size(json_object_get(q0, "queue_pending")), 20);
    assert_int_equal(json_integer_value(json_object_get(q1, "gpu_id")), 1);
    assert_int_equal(json_integer_value(json_object_get(q1, "pending_count")), 0);
    assert_int_equal(json_integer_value(json_object_get(q1, "running_count")), 0);
    assert_int_equal(json_integer_value(json_object_get(all, "total_pending")), 20);
    assert_int_equal(json_integer_value(json_object_get(all, "total_running")), 1);
    json_decref(all);
    json_t *q = sched_queue_json(s, 1);
    expect_json(q, "{\"queue_running\": [], \"queue_pending\": []}");
    json_decref(q);

    atomic_store(&gate_open, true);
    for (int i = 0; i < 20; i++) json_decref(wait_history(s, t0[i].prompt_id));
    char runs[1024], want[1024] = "gate ";
    for (int i = 0; i < 20; i++) snprintf(want + strlen(want), sizeof want - strlen(want), "d0-%d ", i);
    runs_of(0, runs, sizeof runs);
    assert_string_equal(runs, want); /* FIFO, and only its own prompts */
    runs_of(1, runs, sizeof runs);
    assert_string_equal(runs, "d1-0 d1-1 d1-2 ");
    done(s);
}

struct submitter {
    struct sched *s;
    int base;
    struct sched_ticket t[10];
    int rc[10];
};

static void *submit_thread(void *arg) {
    struct submitter *w = arg;
    for (int i = 0; i < 10; i++) {
        char text[256], tag[32];
        snprintf(tag, sizeof tag, "c%d", w->base + i);
        snprintf(text, sizeof text, "{\"1\": {\"class_type\": \"TSleep\", \"inputs\": {\"tag\": \"%s\", \"steps\": 1, \"ms\": 1}}}",
                 tag);
        json_t *prompt = NULL, *body = NULL;
        struct err err = {0};
        struct graph_prompt *p = NULL;
        w->rc[i] = graph_json_loads(text, strlen(text), &prompt, &err);
        if (!w->rc[i]) w->rc[i] = graph_prompt_validate(prompt, &PATHS, NULL, &p, &body, &err);
        json_decref(prompt);
        json_decref(body);
        if (w->rc[i]) continue;
        struct sched_submit sub = {.prompt = p, .target = -1};
        w->rc[i] = sched_submit(w->s, &sub, sched_next_number(w->s), &w->t[i], &err);
        if (w->rc[i]) graph_prompt_free(p);
    }
    return NULL;
}

static void test_concurrent_submissions(void **state) {
    struct sched *s = new_sched(2, 0);
    start(s);
    struct submitter w[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (struct submitter){.s = s, .base = 10 * i};
        pthread_create(&th[i], NULL, submit_thread, &w[i]);
    }
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    double numbers[40];
    for (int i = 0; i < 4; i++)
        for (int k = 0; k < 10; k++) {
            assert_int_equal(w[i].rc[k], 0);
            json_decref(wait_history(s, w[i].t[k].prompt_id));
            numbers[10 * i + k] = w[i].t[k].number;
        }
    json_t *h = sched_history_json(s, NULL, -1, -1);
    assert_int_equal(json_object_size(h), 40); /* 40 distinct ids */
    json_decref(h);
    for (int i = 0; i < 4; i++)
        for (int k = 0; k < 10; k++) {
            char tag[32];
            int dev = -1;
            snprintf(tag, sizeof tag, "c%d", 10 * i + k);
            assert_int_equal(count_runs(tag, &dev), 1); /* exactly once ... */
            assert_int_equal(dev, w[i].t[k].device);    /* ... where it was queued */
        }
    /* every counter value used once: 0..39 */
    for (int v = 0; v < 40; v++) {
        int seen = 0;
        for (int i = 0; i < 40; i++) seen += numbers[i] == v;
        assert_int_equal(seen, 1);
    }
    assert_int_equal(sched_queue_remaining(s, -1), 0);
    done(s);
}

/* ===== Events ===== */

static void test_events_with_client(void **state) {
    struct sched *s = new_sched(1, 0);
    const char *text = "{\"1\": {\"class_type\": \"TNum\", \"inputs\": {\"v\": 3}},"
                       " \"2\": {\"class_type\": \"TSleep\", \"inputs\": {\"tag\": \"t\", \"steps\": 2, \"ms\": 0, \"x\": [\"1\", 0]}}}";
    struct sched_ticket t = submit(s, text, "c1", -1);
    start(s);
    wait_final(t.prompt_id);
    char trace[2048];
    trace_of(t.prompt_id, trace, sizeof trace);
    assert_string_equal(trace, "status@* status@* execution_start@c1 execution_cached@c1 executing@c1 executing@c1 "
                               "progress@c1 progress@c1 executed@c1 execution_success@c1 status@* executing@c1 ");
    pthread_mutex_lock(&R.mu);
    int n = R.n;
    pthread_mutex_unlock(&R.mu);
    const struct rec *ev = R.ev;
    assert_int_equal(n, 12);
    json_t *start_data = json_deep_copy(ev[2].data);
    assert_true(json_integer_value(json_object_get(start_data, "timestamp")) > 1600000000000LL);
    json_object_set_new(start_data, "timestamp", json_integer(0));
    char want[512];
    snprintf(want, sizeof want, "{\"prompt_id\": \"%s\", \"timestamp\": 0}", t.prompt_id);
    expect_json(start_data, want);
    json_decref(start_data);
    snprintf(want, sizeof want, "{\"nodes\": [], \"prompt_id\": \"%s\", \"timestamp\": %lld}", t.prompt_id,
             (long long)json_integer_value(json_object_get(ev[3].data, "timestamp")));
    expect_json(ev[3].data, want);
    snprintf(want, sizeof want, "{\"node\": \"1\", \"display_node\": \"1\", \"prompt_id\": \"%s\"}", t.prompt_id);
    expect_json(ev[4].data, want);
    snprintf(want, sizeof want, "{\"value\": 1, \"max\": 2, \"prompt_id\": \"%s\", \"node\": \"2\"}", t.prompt_id);
    expect_json(ev[6].data, want);
    snprintf(want, sizeof want,
             "{\"node\": \"2\", \"display_node\": \"2\", \"output\": {\"text\": [\"t\"]}, \"prompt_id\": \"%s\"}",
             t.prompt_id);
    expect_json(ev[8].data, want);
    expect_json(ev[10].data, "{\"status\": {\"exec_info\": {\"queue_remaining\": 0}}}");
    expect_json(ev[0].data, "{\"status\": {\"exec_info\": {\"queue_remaining\": 1}}}");
    snprintf(want, sizeof want, "{\"node\": null, \"prompt_id\": \"%s\"}", t.prompt_id);
    expect_json(ev[11].data, want);
    assert_true(ev[11].history_ready); /* history written and out of /queue before executing null */

    json_t *e = wait_history(s, t.prompt_id);
    const char *key;
    json_t *v;
    char keys[128] = "";
    json_object_foreach(e, key, v) snprintf(keys + strlen(keys), sizeof keys - strlen(keys), "%s ", key);
    assert_string_equal(keys, "prompt outputs status meta ");
    expect_json(json_object_get(e, "outputs"), "{\"2\": {\"text\": [\"t\"]}}");
    expect_json(json_object_get(e, "meta"),
                "{\"2\": {\"node_id\": \"2\", \"display_node\": \"2\", \"parent_node\": null, \"real_node_id\": \"2\"}}");
    json_t *st = json_object_get(e, "status");
    assert_string_equal(status_str_of(e), "success");
    assert_true(json_is_true(json_object_get(st, "completed")));
    json_t *msgs = json_object_get(st, "messages");
    assert_int_equal(json_array_size(msgs), 3);
    assert_string_equal(json_string_value(json_array_get(json_array_get(msgs, 0), 0)), "execution_start");
    assert_string_equal(json_string_value(json_array_get(json_array_get(msgs, 1), 0)), "execution_cached");
    assert_string_equal(last_message(e), "execution_success");
    char *sent = graph_json_dumps(ev[2].data, -1); /* history keeps what was sent */
    expect_json(json_array_get(json_array_get(msgs, 0), 1), sent);
    mem_free(sent);
    json_decref(e);
    done(s);
}

/* Waits until `n` events of `type` were seen (5 s at most). */
static void wait_count(const char *type, int n) {
    for (int i = 0; i < 5000; i++) {
        int k = 0;
        pthread_mutex_lock(&R.mu);
        for (int e = 0; e < R.n; e++) k += strcmp(R.ev[e].type, type) == 0;
        pthread_mutex_unlock(&R.mu);
        if (k >= n) return;
        usleep(1000);
    }
    fail_msg("fewer than %d %s events", n, type);
}

static void test_events_without_client(void **state) {
    struct sched *s = new_sched(1, 0);
    char b[256], trace[1024];
    struct sched_ticket t = submit(s, sleep_prompt(b, sizeof b, "q", 2, 0), NULL, -1);
    start(s);
    json_decref(wait_history(s, t.prompt_id));
    wait_count("status", 3);
    trace_of(t.prompt_id, trace, sizeof trace);
    /* no client: only progress (broadcast) and status; no executing null */
    assert_string_equal(trace, "status@* status@* progress@* progress@* status@* ");
    json_t *e = wait_history(s, t.prompt_id);
    assert_string_equal(status_str_of(e), "success"); /* messages are recorded all the same */
    assert_int_equal(json_array_size(json_object_get(json_object_get(e, "status"), "messages")), 3);
    json_decref(e);

    /* an interrupt without a client is broadcast */
    events_reset();
    struct sched_ticket g = submit(s, gate_prompt(b, sizeof b, "g"), NULL, -1);
    wait_event("progress", g.prompt_id);
    sched_interrupt(s, g.prompt_id, -1);
    e = wait_history(s, g.prompt_id);
    wait_count("status", 3);
    trace_of(g.prompt_id, trace, sizeof trace);
    assert_string_equal(trace, "status@* status@* progress@* execution_interrupted@* status@* ");
    assert_string_equal(status_str_of(e), "error");
    assert_true(json_is_false(json_object_get(json_object_get(e, "status"), "completed")));
    assert_string_equal(last_message(e), "execution_interrupted");
    json_decref(e);
    done(s);
}

static void test_error_event(void **state) {
    struct sched *s = new_sched(1, 0);
    const char *text = "{\"1\": {\"class_type\": \"TNum\", \"inputs\": {\"v\": 4}},"
                       " \"2\": {\"class_type\": \"TFail\", \"inputs\": {\"x\": [\"1\", 0]}}}";
    struct sched_ticket t = submit(s, text, "c2", -1);
    start(s);
    wait_final(t.prompt_id);
    char trace[1024];
    trace_of(t.prompt_id, trace, sizeof trace);
    assert_string_equal(trace, "status@* status@* execution_start@c2 execution_cached@c2 executing@c2 executing@c2 "
                               "execution_error@c2 status@* executing@c2 ");
    int i = wait_event("execution_error", t.prompt_id);
    json_t *d = json_deep_copy(R.ev[i].data);
    json_object_set_new(d, "timestamp", json_integer(0));
    char want[1024];
    snprintf(want, sizeof want,
             "{\"prompt_id\": \"%s\", \"node_id\": \"2\", \"node_type\": \"TFail\", \"executed\": [\"1\"], "
             "\"exception_message\": \"boom 4\", \"exception_type\": \"OSError\", \"traceback\": [], "
             "\"current_inputs\": {\"x\": [4]}, \"current_outputs\": [\"1\", \"2\"], \"timestamp\": 0}",
             t.prompt_id);
    expect_json(d, want);
    json_decref(d);
    json_t *e = wait_history(s, t.prompt_id);
    assert_string_equal(status_str_of(e), "error");
    assert_string_equal(last_message(e), "execution_error");
    expect_json(json_object_get(e, "outputs"), "{}");
    expect_json(json_object_get(e, "meta"), "{}");
    json_decref(e);
    done(s);
}

/* ===== Interrupts ===== */

static void test_interrupts(void **state) {
    struct sched *s = new_sched(2, 0);
    start(s);
    char b[256];
    struct sched_ticket g0 = submit(s, gate_prompt(b, sizeof b, "g0"), "c", 0);
    struct sched_ticket g1 = submit(s, gate_prompt(b, sizeof b, "g1"), "c", 1);
    wait_event("progress", g0.prompt_id);
    wait_event("progress", g1.prompt_id);
    char node[64] = "";
    assert_true(sched_client_running_node(s, "c", node, sizeof node)); /* for a reconnect */
    assert_string_equal(node, "1");
    assert_false(sched_client_running_node(s, "someone-else", node, sizeof node));
    struct sched_ticket q = submit(s, sleep_prompt(b, sizeof b, "after", 1, 0), NULL, 0);

    sched_interrupt(s, "no-such-prompt", -1); /* not running anywhere: nothing */
    sched_interrupt(s, q.prompt_id, -1);      /* queued, not running: nothing */
    sched_interrupt(s, NULL, 1);              /* device 1 only */
    json_t *e = wait_history(s, g1.prompt_id);
    assert_string_equal(last_message(e), "execution_interrupted");
    json_decref(e);
    wait_event("execution_interrupted", g1.prompt_id);
    json_t *h = sched_history_json(s, g0.prompt_id, -1, -1);
    expect_json(h, "{}"); /* device 0 still runs */
    json_decref(h);
    assert_int_equal(sched_queue_remaining(s, 0), 2);

    sched_interrupt(s, g0.prompt_id, -1); /* by id, wherever it runs */
    e = wait_history(s, g0.prompt_id);
    assert_string_equal(status_str_of(e), "error");
    assert_string_equal(last_message(e), "execution_interrupted");
    json_decref(e);
    e = wait_history(s, q.prompt_id); /* the queue goes on, and the next prompt was not hit */
    assert_string_equal(status_str_of(e), "success");
    json_decref(e);

    /* an interrupt while idle does not stop the next prompt */
    json_decref(wait_history(s, q.prompt_id));
    sched_interrupt(s, NULL, -1);
    struct sched_ticket n = submit(s, sleep_prompt(b, sizeof b, "next", 3, 1), NULL, 0);
    e = wait_history(s, n.prompt_id);
    assert_string_equal(status_str_of(e), "success");
    json_decref(e);

    /* all devices at once */
    struct sched_ticket a0 = submit(s, gate_prompt(b, sizeof b, "a0"), NULL, 0);
    struct sched_ticket a1 = submit(s, gate_prompt(b, sizeof b, "a1"), NULL, 1);
    wait_event("progress", a0.prompt_id);
    wait_event("progress", a1.prompt_id);
    sched_interrupt(s, NULL, -1);
    e = wait_history(s, a0.prompt_id);
    assert_string_equal(last_message(e), "execution_interrupted");
    json_decref(e);
    e = wait_history(s, a1.prompt_id);
    assert_string_equal(last_message(e), "execution_interrupted");
    json_decref(e);

    /* sched_free interrupts what runs */
    struct sched_ticket last = submit(s, gate_prompt(b, sizeof b, "last"), NULL, 0);
    wait_event("progress", last.prompt_id);
    sched_free(s);
    g_s = NULL;
    events_reset();
}

/* ===== History ===== */

static void keys_of(const json_t *o, char *buf, size_t n) {
    const char *k;
    json_t *v;
    buf[0] = 0;
    json_object_foreach((json_t *)o, k, v) snprintf(buf + strlen(buf), n - strlen(buf), "%s ", k);
}

static void expect_history(struct sched *s, int max_items, int offset, const char *want) {
    json_t *h = sched_history_json(s, NULL, max_items, offset);
    char got[256];
    keys_of(h, got, sizeof got);
    json_decref(h);
    if (strcmp(got, want) != 0) fail_msg("max_items=%d offset=%d: got '%s' want '%s'", max_items, offset, got, want);
}

static void test_history_paging(void **state) {
    struct sched *s = new_sched(1, 3);
    char b[256];
    const char *ids[] = {"h1", "h2", "h3", "h4", "h5"};
    struct sched_ticket t;
    struct err err = {0};
    for (int i = 0; i < 5; i++)
        assert_int_equal(submit_ex(s, sleep_prompt(b, sizeof b, ids[i], 1, 0), (struct sub_opts){.target = -1, .id = ids[i]},
                                   &t, &err),
                         0);
    start(s);
    json_decref(wait_history(s, "h5"));
    expect_history(s, -1, -1, "h3 h4 h5 "); /* at most 3, oldest dropped */
    expect_history(s, 2, -1, "h4 h5 ");     /* the last N, oldest first */
    expect_history(s, -1, 1, "h4 h5 ");
    expect_history(s, 1, 0, "h3 ");
    expect_history(s, 2, 1, "h4 h5 ");
    expect_history(s, 10, -1, "h3 h4 h5 ");
    expect_history(s, 0, -1, "");            /* Python: offset = len - 0 */
    expect_history(s, 0, 1, "h4 ");          /* Python: one item, then len(out) >= 0 */
    expect_history(s, -1, 5, "");
    json_t *h = sched_history_json(s, "h1", -1, -1);
    expect_json(h, "{}");
    json_decref(h);
    h = sched_history_json(s, "h4", -1, -1);
    keys_of(h, b, sizeof b);
    assert_string_equal(b, "h4 ");
    expect_json(json_array_get(json_object_get(json_object_get(h, "h4"), "prompt"), 1), "\"h4\"");
    json_decref(h);
    sched_history_delete(s, "h4");
    expect_history(s, -1, -1, "h3 h5 ");
    sched_history_clear(s);
    expect_history(s, -1, -1, "");
    done(s);
}

/* ===== Output cache ===== */

/* The value of one series of /metrics (-1 when absent). */
static double metric_value(struct sched *s, const char *series) {
    char *text = sched_metrics_text(s);
    const char *at = strstr(text, series);
    double v = at ? atof(at + strlen(series)) : -1;
    mem_free(text);
    return v;
}

static void test_cache_identical_resubmission(void **state) {
    struct sched *s = new_sched(1, 0);
    start(s);
    char text5[512], text6[512], runs[256], trace[1024];
    const char *fmt = "{\"1\": {\"class_type\": \"TNum\", \"inputs\": {\"v\": %d}},"
                      " \"2\": {\"class_type\": \"TSleep\", \"inputs\": {\"tag\": \"k\", \"steps\": 1, \"ms\": 0, \"x\": [\"1\", 0]}}}";
    snprintf(text5, sizeof text5, fmt, 5);
    snprintf(text6, sizeof text6, fmt, 6);

    struct sched_ticket t = submit(s, text5, "c", -1);
    wait_final(t.prompt_id);
    runs_of(-1, runs, sizeof runs);
    assert_string_equal(runs, "num5 k ");
    json_t *first = wait_history(s, t.prompt_id);

    events_reset();
    t = submit(s, text5, "c", -1);
    wait_final(t.prompt_id);
    runs_of(-1, runs, sizeof runs);
    assert_string_equal(runs, "num5 k "); /* nothing ran again */
    trace_of(t.prompt_id, trace, sizeof trace);
    assert_string_equal(trace, "status@* status@* execution_start@c execution_cached@c executed@c execution_success@c "
                               "status@* executing@c ");
    int i = wait_event("execution_cached", t.prompt_id);
    expect_json(json_object_get(R.ev[i].data, "nodes"), "[\"1\", \"2\"]");
    i = wait_event("executed", t.prompt_id);
    expect_json(json_object_get(R.ev[i].data, "output"), "{\"text\": [\"k\"]}"); /* the old UI again */
    json_t *second = wait_history(s, t.prompt_id);
    char *a = graph_json_dumps(json_object_get(first, "outputs"), -1);
    expect_json(json_object_get(second, "outputs"), a);
    mem_free(a);
    json_decref(first);
    json_decref(second);

    /* a changed input re-runs that node and what follows */
    t = submit(s, text6, "c", -1);
    wait_final(t.prompt_id);
    runs_of(-1, runs, sizeof runs);
    assert_string_equal(runs, "num5 k num6 k ");
    t = submit(s, text6, "c", -1);
    wait_final(t.prompt_id);
    runs_of(-1, runs, sizeof runs);
    assert_string_equal(runs, "num5 k num6 k ");
    /* classic mode: text5's results were dropped when text6 ran */
    t = submit(s, text5, "c", -1);
    wait_final(t.prompt_id);
    runs_of(-1, runs, sizeof runs);
    assert_string_equal(runs, "num5 k num6 k num5 k ");

    /* /free with free_memory drops everything, at once when idle */
    assert_true(metric_value(s, "kiln_cache_entries{device=\"0\",kind=\"cpu\"}") == 2);
    sched_free_memory(s, -1, false, true);
    for (int k = 0; k < 5000 && metric_value(s, "kiln_cache_entries{device=\"0\",kind=\"cpu\"}") != 0; k++)
        usleep(1000);
    assert_true(metric_value(s, "kiln_cache_entries{device=\"0\",kind=\"cpu\"}") == 0);
    t = submit(s, text5, "c", -1);
    wait_final(t.prompt_id);
    runs_of(-1, runs, sizeof runs);
    assert_string_equal(runs, "num5 k num6 k num5 k num5 k ");
    assert_true(s->dev[0].m.cache_hits >= 4);
    done(s);
}

static void test_cache_unload_models(void **state) {
    struct sched *s = new_sched(1, 0);
    start(s);
    const char *text = "{\"1\": {\"class_type\": \"TModel\", \"inputs\": {}},"
                       " \"2\": {\"class_type\": \"TUseModel\", \"inputs\": {\"model\": [\"1\", 0], \"k\": 1}}}";
    char runs[128];
    struct sched_ticket t = submit(s, text, "c", -1);
    wait_final(t.prompt_id);
    t = submit(s, text, "c", -1);
    wait_final(t.prompt_id);
    runs_of(-1, runs, sizeof runs);
    assert_string_equal(runs, "model use ");
    /* unload_models alone: the MODEL output goes, the rest stays */
    sched_free_memory(s, 0, true, false);
    events_reset();
    t = submit(s, text, "c", -1);
    wait_final(t.prompt_id);
    runs_of(-1, runs, sizeof runs);
    assert_string_equal(runs, "model use ");
    int i = wait_event("execution_cached", t.prompt_id);
    expect_json(json_object_get(R.ev[i].data, "nodes"), "[\"2\"]");

    /* an out-of-memory failure empties the cache (classic mode alone would keep TNum's 7) */
    char b[512];
    t = submit(s, sleep_prompt(b, sizeof b, "s", 1, 0), "c", -1);
    wait_final(t.prompt_id);
    t = submit(s, "{\"1\": {\"class_type\": \"TNum\", \"inputs\": {\"v\": 7}}, \"2\": {\"class_type\": \"TSleep\", "
                  "\"inputs\": {\"tag\": \"s2\", \"steps\": 1, \"ms\": 0, \"x\": [\"1\", 0]}}}", "c", -1);
    wait_final(t.prompt_id);
    assert_true(metric_value(s, "kiln_cache_entries{device=\"0\",kind=\"cpu\"}") == 2);
    t = submit(s, "{\"1\": {\"class_type\": \"TNum\", \"inputs\": {\"v\": 7}}, \"2\": {\"class_type\": \"TOom\", "
                  "\"inputs\": {}}, \"3\": {\"class_type\": \"TSleep\", \"inputs\": {\"tag\": \"s3\", \"steps\": 1, "
                  "\"ms\": 0, \"x\": [\"1\", 0]}}}", "c", -1);
    wait_final(t.prompt_id);
    for (int k = 0; k < 5000 && metric_value(s, "kiln_cache_entries{device=\"0\",kind=\"cpu\"}") != 0; k++)
        usleep(1000);
    assert_true(metric_value(s, "kiln_cache_entries{device=\"0\",kind=\"cpu\"}") == 0);
    done(s);
}

static void write_png(const char *name, int w, int h, int seed) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", DIR_INPUT, name);
    uint8_t *px = mem_alloc((size_t)w * h * 3);
    for (int i = 0; i < w * h * 3; i++) px[i] = (uint8_t)(i * 7 + seed);
    struct err err = {0};
    if (png_write(path, px, (uint32_t)w, (uint32_t)h, 3, NULL, 0, 1, &err)) fail_msg("%s", err.msg);
    mem_free(px);
}

static void test_cache_load_image_changes(void **state) {
    struct sched *s = new_sched(1, 0);
    start(s);
    write_png("cache.png", 3, 2, 0);
    const char *text = "{\"1\": {\"class_type\": \"LoadImage\", \"inputs\": {\"image\": \"cache.png\"}},"
                       " \"2\": {\"class_type\": \"TImgSize\", \"inputs\": {\"image\": [\"1\", 0]}}}";
    struct sched_ticket t = submit(s, text, "c", -1);
    json_t *e = wait_history(s, t.prompt_id);
    expect_json(json_object_get(e, "outputs"), "{\"2\": {\"text\": [\"3x2\"]}}");
    json_decref(e);
    t = submit(s, text, "c", -1);
    json_decref(wait_history(s, t.prompt_id));
    assert_int_equal(count_runs("imgsize", NULL), 1); /* unchanged file: cached */

    write_png("cache.png", 4, 5, 0); /* replaced under the same name */
    t = submit(s, text, "c", -1);
    e = wait_history(s, t.prompt_id);
    expect_json(json_object_get(e, "outputs"), "{\"2\": {\"text\": [\"4x5\"]}}");
    json_decref(e);
    assert_int_equal(count_runs("imgsize", NULL), 2);

    write_png("cache.png", 4, 5, 9); /* same size, other pixels: LoadImage runs again */
    events_reset();
    t = submit(s, text, "c", -1);
    json_decref(wait_history(s, t.prompt_id));
    assert_int_equal(count_runs("imgsize", NULL), 3);
    int i = wait_event("execution_cached", t.prompt_id);
    expect_json(json_object_get(R.ev[i].data, "nodes"), "[]");

    write_png("cache.png", 4, 5, 9); /* the same bytes again: cached */
    t = submit(s, text, "c", -1);
    json_decref(wait_history(s, t.prompt_id));
    assert_int_equal(count_runs("imgsize", NULL), 3);
    done(s);
}

/* ===== Metrics ===== */

static void test_metrics(void **state) {
    struct sched *s = new_sched(1, 0);
    char b[256];
    submit(s, sleep_prompt(b, sizeof b, "ok", 1, 0), NULL, 0);
    submit(s, "{\"1\": {\"class_type\": \"TFail\", \"inputs\": {\"x\": 1}}}", NULL, 0);
    submit(s, "{\"1\": {\"class_type\": \"TOom\", \"inputs\": {}}}", NULL, 0);
    struct sched_ticket g = submit(s, gate_prompt(b, sizeof b, "g"), NULL, 0);
    start(s);
    wait_event("progress", g.prompt_id);
    sched_interrupt(s, NULL, 0);
    json_decref(wait_history(s, g.prompt_id));

    char *text = sched_metrics_text(s);
    const char *want[] = {
        "# TYPE kiln_tasks_total counter\n",
        "kiln_tasks_total{device=\"0\",kind=\"cpu\"} 4\n",
        "kiln_task_successes_total{device=\"0\",kind=\"cpu\"} 1\n",
        "kiln_task_failures_total{device=\"0\",kind=\"cpu\"} 2\n",
        "kiln_task_ooms_total{device=\"0\",kind=\"cpu\"} 1\n",
        "kiln_task_interrupts_total{device=\"0\",kind=\"cpu\"} 1\n",
        "kiln_prompts_submitted_total{device=\"0\",kind=\"cpu\"} 4\n",
        "kiln_queue_pending{device=\"0\",kind=\"cpu\"} 0\n",
        "kiln_queue_running{device=\"0\",kind=\"cpu\"} 0\n",
        "kiln_queue_depth_average{device=\"0\",kind=\"cpu\"} 1.5\n",
        "# TYPE kiln_exec_seconds histogram\n",
        "kiln_exec_seconds_bucket{device=\"0\",kind=\"cpu\",le=\"+Inf\"} 4\n",
        "kiln_exec_seconds_count{device=\"0\",kind=\"cpu\"} 4\n",
        "kiln_wait_seconds_count{device=\"0\",kind=\"cpu\"} 4\n",
        "# HELP kiln_uptime_seconds ",
        "kiln_history_entries 4\n",
        "kiln_device_info{device=\"0\",kind=\"cpu\",name=\"cpu:0 ",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(text, want[i])) fail_msg("missing '%s' in\n%s", want[i], text);
    mem_free(text);

    char line[256];
    sched_metrics_line(s, 0, line, sizeof line);
    /* depths at submit 0, 1, 2, 3: queue 1.5 */
    assert_true(strncmp(line, "[CPU 0] tasks=4, success=25.0%, queue=1.5, wait=", 48) == 0);
    assert_non_null(strstr(line, "ms, exec="));
    assert_true(strlen(line) > 7 && strcmp(line + strlen(line) - 7, ", oom=1") == 0);
    done(s);
}

/* ===== Setup ===== */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) { return remove(path); }

static int setup(void **state) {
    snprintf(ROOT, sizeof ROOT, "/tmp/kiln_sched_XXXXXX");
    if (!mkdtemp(ROOT)) return -1;
    snprintf(DIR_MODELS, sizeof DIR_MODELS, "%s/models", ROOT);
    snprintf(DIR_INPUT, sizeof DIR_INPUT, "%s/input", ROOT);
    snprintf(DIR_OUTPUT, sizeof DIR_OUTPUT, "%s/output", ROOT);
    snprintf(DIR_TEMP, sizeof DIR_TEMP, "%s/temp", ROOT);
    char ck[400];
    snprintf(ck, sizeof ck, "%s/checkpoints", DIR_MODELS);
    mkdir(DIR_MODELS, 0755);
    mkdir(ck, 0755);
    mkdir(DIR_INPUT, 0755);
    mkdir(DIR_OUTPUT, 0755);
    mkdir(DIR_TEMP, 0755);
    PATHS = (struct graph_paths){.models = DIR_MODELS, .input = DIR_INPUT, .output = DIR_OUTPUT, .temp = DIR_TEMP};
    const struct node_class *all[] = {&T_NUM, &T_SLEEP, &T_GATE, &T_FAIL, &T_OOM, &T_IMG_SIZE, &T_MODEL, &T_USE_MODEL};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) graph_registry_add(all[i]);
    return 0;
}

static int teardown(void **state) {
    graph_registry_reset();
    nftw(ROOT, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_heap_order_and_tuples),
        cmocka_unit_test(test_equal_numbers_by_id),
        cmocka_unit_test(test_delete_and_clear),
        cmocka_unit_test(test_route_target_and_errors),
        cmocka_unit_test(test_route_auto_least_wait),
        cmocka_unit_test(test_route_prefers_checkpoint),
        cmocka_unit_test(test_prefetch_on_submit),
        cmocka_unit_test(test_prefetch_recall),
        cmocka_unit_test(test_isolation),
        cmocka_unit_test(test_concurrent_submissions),
        cmocka_unit_test(test_events_with_client),
        cmocka_unit_test(test_events_without_client),
        cmocka_unit_test(test_error_event),
        cmocka_unit_test(test_interrupts),
        cmocka_unit_test(test_history_paging),
        cmocka_unit_test(test_cache_identical_resubmission),
        cmocka_unit_test(test_cache_unload_models),
        cmocka_unit_test(test_cache_load_image_changes),
        cmocka_unit_test(test_metrics),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
