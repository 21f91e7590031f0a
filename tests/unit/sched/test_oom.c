/* tests/unit/sched/test_oom.c -- out-of-memory recovery of a worker, with fake node classes (no
 * model): a node that runs out of device (or host) memory once is retried after the cache is
 * freed and the prompt succeeds with no trace of the failure in its events; one that always
 * fails is retried once, then fails with the device named in a clear execution_error; other
 * failures are not retried; the worker carries on afterwards. And the engine's side of memory
 * management: checkpoint size estimates and least-recently-used unloading within a budget (tiny
 * generated checkpoints on a CPU engine).
 * Threads: cmocka assertions run on the test thread only; sinks and nodes just record. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/mem.h"
#include "base/status.h"
#include "graph/engine.h"
#include "graph/json.h"
#include "model/ckpt_gen.h"
#include "model/layout.h"
#include "model/tokenizer.h"
#include "sched/internal.h"

#include <ftw.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char ROOT[256];
static char DIR_MODELS[300], DIR_INPUT[300], DIR_OUTPUT[300], DIR_TEMP[300];
static struct graph_paths PATHS;
static struct sched *g_s;

/* ===== What nodes did ===== */

static struct {
    pthread_mutex_t mu;
    char text[4096];                     /* run tags, space-separated, in order */
} RUNS = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void record_run(const char *tag) {
    pthread_mutex_lock(&RUNS.mu);
    size_t n = strlen(RUNS.text);
    snprintf(RUNS.text + n, sizeof RUNS.text - n, "%s ", tag);
    pthread_mutex_unlock(&RUNS.mu);
}

static void runs(char *buf, size_t n) {
    pthread_mutex_lock(&RUNS.mu);
    size_t len = strnlen(RUNS.text, n - 1); /* copy what fits */
    memcpy(buf, RUNS.text, len);
    buf[len] = 0;
    pthread_mutex_unlock(&RUNS.mu);
}

/* How TFlaky fails: its first `fails` calls return `first`, later failing calls `then`. */
static struct {
    atomic_int calls;
    int fails;
    int first;
    int then;
} FLAKY;

/* ===== Fake classes ===== */

static void ui_text(struct node_run *ctx, const char *text) {
    json_t *a = json_array();
    json_array_append_new(a, json_string(text));
    json_object_set_new(ctx->ui, "text", a);
}

/* TNum: v -> INT */
static int run_num(struct node_run *c, const struct value *in, struct value *out, struct err *e) {
    (void)c, (void)e;
    char tag[32];
    snprintf(tag, sizeof tag, "num%lld", (long long)in[0].i);
    record_run(tag);
    out[0] = (struct value){.kind = VALUE_INT, .i = in[0].i};
    return 0;
}

/* TFlaky (output): x -> UI "ok<x>", failing as FLAKY says */
static int run_flaky(struct node_run *c, const struct value *in, struct value *out, struct err *e) {
    (void)out;
    int k = atomic_fetch_add(&FLAKY.calls, 1);
    if (k < FLAKY.fails) {
        int code = k == 0 ? FLAKY.first : FLAKY.then;
        record_run(code == STATUS_ERR_OOM_DEVICE ? "oom" : code == STATUS_ERR_NOMEM ? "nomem" : "io");
        if (code == STATUS_ERR_OOM_DEVICE)
            return err_set(e, STATUS_ERR_OOM_DEVICE, "allocating 9.00 GiB for conv of node %lld", (long long)in[0].i);
        if (code == STATUS_ERR_NOMEM) return err_set(e, STATUS_ERR_NOMEM, "out of host memory");
        return err_set(e, STATUS_ERR_IO, "disk gone");
    }
    record_run("ok");
    char text[32];
    snprintf(text, sizeof text, "ok%lld", (long long)in[0].i);
    ui_text(c, text);
    return 0;
}

static void fake_free(struct gobj *o) { mem_free(o); }

/* TModel: an object of wire type MODEL (what out-of-memory recovery drops from the cache) */
static int run_model(struct node_run *c, const struct value *in, struct value *out, struct err *e) {
    (void)c, (void)in, (void)e;
    record_run("model");
    struct gobj *o = mem_calloc(1, sizeof *o);
    *o = (struct gobj){.refs = 1, .type = "MODEL", .free = fake_free};
    value_set_object(&out[0], o);
    return 0;
}

/* TUseModel (output): takes a MODEL */
static int run_use_model(struct node_run *c, const struct value *in, struct value *out, struct err *e) {
    (void)in, (void)out, (void)e;
    record_run("use");
    ui_text(c, "used");
    return 0;
}

#define INT_IN(n) {.name = n, .kind = NODE_INPUT_INT, .flags = NODE_IN_DEFAULT}
static const struct node_class T_NUM = {
    .name = "TNum", .required = (const struct node_input[]){INT_IN("v"), NODE_INPUTS_END},
    .outputs = (const struct node_output[]){{.type = "INT"}, NODE_OUTPUTS_END}, .run = run_num};
static const struct node_class T_FLAKY = {
    .name = "TFlaky", .output_node = true, .required = (const struct node_input[]){INT_IN("x"), NODE_INPUTS_END},
    .run = run_flaky};
static const struct node_class T_MODEL = {
    .name = "TModel", .outputs = (const struct node_output[]){{.type = "MODEL"}, NODE_OUTPUTS_END},
    .run = run_model};
static const struct node_class T_USE_MODEL = {
    .name = "TUseModel",
    .output_node = true,
    .required = (const struct node_input[]){{.name = "model", .kind = NODE_INPUT_OBJECT, .type = "MODEL"},
                                            NODE_INPUTS_END},
    .run = run_use_model};

/* ===== Events the sink saw ===== */

#define MAX_EVENTS 1024
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char type[MAX_EVENTS][32];
    json_t *data[MAX_EVENTS];
    int n;
} R = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void sink(void *user, const char *client_id, const char *type, json_t *data) {
    (void)user, (void)client_id;
    pthread_mutex_lock(&R.mu);
    if (R.n < MAX_EVENTS) {
        snprintf(R.type[R.n], sizeof R.type[0], "%s", type);
        R.data[R.n++] = data;
    } else {
        json_decref(data);
    }
    pthread_cond_broadcast(&R.cv);
    pthread_mutex_unlock(&R.mu);
}

static void events_reset(void) {
    pthread_mutex_lock(&R.mu);
    for (int i = 0; i < R.n; i++) json_decref(R.data[i]);
    R.n = 0;
    pthread_mutex_unlock(&R.mu);
}

static const char *data_id(int i) { return json_string_value(json_object_get(R.data[i], "prompt_id")); }

/* Waits (10 s at most) for the prompt's final executing {node: null}. */
static void wait_final(const char *id) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 10;
    pthread_mutex_lock(&R.mu);
    for (;;) {
        for (int i = 0; i < R.n; i++) {
            if (strcmp(R.type[i], "executing") == 0 && data_id(i) && strcmp(data_id(i), id) == 0 &&
                json_is_null(json_object_get(R.data[i], "node"))) {
                pthread_mutex_unlock(&R.mu);
                return;
            }
        }
        if (pthread_cond_timedwait(&R.cv, &R.mu, &deadline)) break;
    }
    pthread_mutex_unlock(&R.mu);
    fail_msg("prompt %s never finished", id);
}

/* Types of the events about prompt id other than executing/progress/executed, space-joined. */
static void lifecycle_of(const char *id, char *buf, size_t n) {
    buf[0] = 0;
    pthread_mutex_lock(&R.mu);
    for (int i = 0; i < R.n; i++) {
        if (!data_id(i) || strcmp(data_id(i), id) != 0) continue;
        if (strncmp(R.type[i], "execution_", 10) != 0) continue;
        snprintf(buf + strlen(buf), n - strlen(buf), "%s ", R.type[i]);
    }
    pthread_mutex_unlock(&R.mu);
}

/* The data of the first event of `type` about id (borrowed; events stay until reset). */
static json_t *event_data(const char *type, const char *id) {
    json_t *d = NULL;
    pthread_mutex_lock(&R.mu);
    for (int i = 0; i < R.n && !d; i++)
        if (strcmp(R.type[i], type) == 0 && data_id(i) && strcmp(data_id(i), id) == 0) d = R.data[i];
    pthread_mutex_unlock(&R.mu);
    return d;
}

/* ===== Helpers ===== */

static struct sched *new_sched(int n_dev) {
    struct sched_opts o = {.n_cpu_workers = n_dev, .cpu_threads = 1, .paths = PATHS, .history_max = 0};
    struct err err = {0};
    struct sched *s = sched_new(&o, &err);
    if (!s) fail_msg("sched_new: %s", err.msg);
    sched_set_event_sink(s, sink, NULL);
    g_s = s;
    events_reset();
    pthread_mutex_lock(&RUNS.mu);
    RUNS.text[0] = 0;
    pthread_mutex_unlock(&RUNS.mu);
    atomic_store(&FLAKY.calls, 0);
    if (sched_start(s, &err)) fail_msg("sched_start: %s", err.msg);
    return s;
}

static void done(struct sched *s) {
    sched_free(s);
    g_s = NULL;
    events_reset();
}

/* Submits text to device `target` for client "c" and waits until it is finished; returns its
 * history entry (a new reference) and its id in id[64]. */
static json_t *run_prompt(struct sched *s, const char *text, int target, char id[64]) {
    json_t *prompt = NULL, *body = NULL;
    struct err err = {0};
    if (graph_json_loads(text, strlen(text), &prompt, &err)) fail_msg("%s: %s", text, err.msg);
    struct graph_prompt *p = NULL;
    if (graph_prompt_validate(prompt, &PATHS, NULL, &p, &body, &err)) fail_msg("validation of %s: %s", text, err.msg);
    json_decref(prompt);
    struct sched_submit sub = {.prompt = p, .client_id = "c", .target = target};
    struct sched_ticket t;
    if (sched_submit(s, &sub, sched_next_number(s), &t, &err)) fail_msg("submit: %s", err.msg);
    snprintf(id, 64, "%s", t.prompt_id);
    wait_final(id);
    json_t *h = sched_history_json(s, id, -1, -1);
    json_t *e = json_object_get(h, id);
    if (!e) fail_msg("no history entry for %s", id);
    json_incref(e);
    json_decref(h);
    return e;
}

static const char *status_str_of(const json_t *entry) {
    return json_string_value(json_object_get(json_object_get(entry, "status"), "status_str"));
}

/* The history entry's message types, space-joined. */
static void messages_of(const json_t *entry, char *buf, size_t n) {
    buf[0] = 0;
    json_t *m = json_object_get(json_object_get(entry, "status"), "messages");
    size_t i;
    json_t *pair;
    json_array_foreach(m, i, pair) {
        snprintf(buf + strlen(buf), n - strlen(buf), "%s ", json_string_value(json_array_get(pair, 0)));
    }
}

/* The value of one series of /metrics (-1 when absent). */
static double metric(struct sched *s, const char *series) {
    char *text = sched_metrics_text(s);
    const char *at = strstr(text, series);
    double v = at ? atof(at + strlen(series)) : -1;
    mem_free(text);
    return v;
}

#define DEV0 "{device=\"0\",kind=\"cpu\"}"

static const char FLAKY_PROMPT[] =
    "{\"1\": {\"class_type\": \"TNum\", \"inputs\": {\"v\": 7}}, \"2\": {\"class_type\": \"TFlaky\", "
    "\"inputs\": {\"x\": [\"1\", 0]}}}";
static const char MODEL_PROMPT[] =
    "{\"1\": {\"class_type\": \"TModel\", \"inputs\": {}}, \"2\": {\"class_type\": \"TUseModel\", "
    "\"inputs\": {\"model\": [\"1\", 0]}}}";

/* ===== Tests ===== */

/* OOM once: the cache is freed (TNum and the cached MODEL run again), the retry succeeds and
 * clients see one execution_start, no execution_error, one execution_success. */
static void test_oom_once_then_success(void **state) {
    (void)state;
    FLAKY.fails = 1;
    FLAKY.first = STATUS_ERR_OOM_DEVICE;
    struct sched *s = new_sched(1);
    char id[64], b[1024];
    json_decref(run_prompt(s, MODEL_PROMPT, 0, id)); /* leaves a MODEL in the output cache */
    json_t *e = run_prompt(s, FLAKY_PROMPT, 0, id);
    assert_string_equal(status_str_of(e), "success");
    char *out = graph_json_dumps(json_object_get(e, "outputs"), -1);
    assert_string_equal(out, "{\"2\": {\"text\": [\"ok7\"]}}");
    mem_free(out);
    messages_of(e, b, sizeof b);
    assert_string_equal(b, "execution_start execution_cached execution_success ");
    json_decref(e);
    lifecycle_of(id, b, sizeof b);
    assert_string_equal(b, "execution_start execution_cached execution_success ");
    runs(b, sizeof b);
    assert_string_equal(b, "model use num7 oom num7 ok "); /* TNum's cached 7 was freed too */

    /* the MODEL was dropped from the cache: the same prompt runs TModel again */
    json_decref(run_prompt(s, MODEL_PROMPT, 0, id));
    runs(b, sizeof b);
    assert_string_equal(b, "model use num7 oom num7 ok model use ");

    assert_true(metric(s, "kiln_oom_retries_total" DEV0) == 1);
    assert_true(metric(s, "kiln_task_ooms_total" DEV0) == 0);
    assert_true(metric(s, "kiln_task_failures_total" DEV0) == 0);
    assert_true(metric(s, "kiln_task_successes_total" DEV0) == 3);
    done(s);
}

/* Host ERR_NOMEM during execution is retried the same way. */
static void test_nomem_once_then_success(void **state) {
    (void)state;
    FLAKY.fails = 1;
    FLAKY.first = STATUS_ERR_NOMEM;
    struct sched *s = new_sched(1);
    char id[64], b[512];
    json_t *e = run_prompt(s, FLAKY_PROMPT, 0, id);
    assert_string_equal(status_str_of(e), "success");
    json_decref(e);
    runs(b, sizeof b);
    assert_string_equal(b, "num7 nomem num7 ok ");
    assert_true(metric(s, "kiln_oom_retries_total" DEV0) == 1);
    done(s);
}

/* Always out of memory: two runs, then one execution_error naming the device; the worker goes
 * on with the next prompt. */
static void test_oom_twice_fails_clearly(void **state) {
    (void)state;
    FLAKY.fails = 2;
    FLAKY.first = FLAKY.then = STATUS_ERR_OOM_DEVICE;
    struct sched *s = new_sched(1);
    char id[64], b[2048];
    json_t *e = run_prompt(s, FLAKY_PROMPT, 0, id);
    assert_string_equal(status_str_of(e), "error");
    messages_of(e, b, sizeof b);
    assert_string_equal(b, "execution_start execution_cached execution_error ");
    json_decref(e);
    lifecycle_of(id, b, sizeof b);
    assert_string_equal(b, "execution_start execution_cached execution_error ");
    runs(b, sizeof b);
    assert_string_equal(b, "num7 oom num7 oom ");

    json_t *d = event_data("execution_error", id);
    assert_non_null(d);
    char want[1024];
    snprintf(want, sizeof want,
             "out of memory on %s: allocating 9.00 GiB for conv of node 7 (after freeing cached models and retrying "
             "once)",
             s->dev[0].name);
    assert_string_equal(json_string_value(json_object_get(d, "exception_message")), want);
    assert_string_equal(json_string_value(json_object_get(d, "node_id")), "2");
    assert_string_equal(json_string_value(json_object_get(d, "node_type")), "TFlaky");

    assert_true(metric(s, "kiln_oom_retries_total" DEV0) == 1);
    assert_true(metric(s, "kiln_task_ooms_total" DEV0) == 1);
    assert_true(metric(s, "kiln_task_failures_total" DEV0) == 1);

    /* the server carries on */
    e = run_prompt(s, FLAKY_PROMPT, 0, id);
    assert_string_equal(status_str_of(e), "success");
    json_decref(e);
    done(s);
}

/* OOM, then another failure on the retry: that failure is reported as it is. */
static void test_retry_fails_otherwise(void **state) {
    (void)state;
    FLAKY.fails = 2;
    FLAKY.first = STATUS_ERR_OOM_DEVICE;
    FLAKY.then = STATUS_ERR_IO;
    struct sched *s = new_sched(1);
    char id[64], b[512];
    json_t *e = run_prompt(s, FLAKY_PROMPT, 0, id);
    assert_string_equal(status_str_of(e), "error");
    json_decref(e);
    json_t *d = event_data("execution_error", id);
    assert_non_null(d);
    assert_string_equal(json_string_value(json_object_get(d, "exception_message")), "disk gone");
    lifecycle_of(id, b, sizeof b);
    assert_string_equal(b, "execution_start execution_cached execution_error ");
    assert_true(metric(s, "kiln_oom_retries_total" DEV0) == 1);
    assert_true(metric(s, "kiln_task_ooms_total" DEV0) == 0);
    done(s);
}

/* Other failures are not retried. */
static void test_other_failure_not_retried(void **state) {
    (void)state;
    FLAKY.fails = 1;
    FLAKY.first = STATUS_ERR_IO;
    struct sched *s = new_sched(1);
    char id[64], b[512];
    json_t *e = run_prompt(s, FLAKY_PROMPT, 0, id);
    assert_string_equal(status_str_of(e), "error");
    json_decref(e);
    runs(b, sizeof b);
    assert_string_equal(b, "num7 io ");
    json_t *d = event_data("execution_error", id);
    assert_non_null(d);
    assert_string_equal(json_string_value(json_object_get(d, "exception_message")), "disk gone");
    assert_true(metric(s, "kiln_oom_retries_total" DEV0) == 0);
    done(s);
}

/* ===== Engine: LRU unloading within a budget ===== */

static char CKPT[4][400];                /* tiny checkpoints a, b, c, d (same config, other seeds) */
static struct sd_config TINY;

/* The expected estimate from the layout (not from the file): UNet, VAE and CLIP tensors as
 * fp32, CLIP's position_ids as I64; DDPM buffers excluded. */
static uint64_t layout_estimate(void) {
    struct layout l;
    struct err err = {0};
    if (layout_build(&l, &TINY, &err)) fail_msg("%s", err.msg);
    uint64_t sum = 0;
    for (int i = 0; i < l.n; i++) {
        const struct layout_tensor *t = &l.tensors[i];
        if (t->part == LAYOUT_PART_DDPM_BUFFER) continue;
        sum += (uint64_t)layout_tensor_numel(t) * (t->dtype == DTYPE_I64 ? 8 : 4);
    }
    layout_deinit(&l);
    return sum;
}

/* Loads path and returns the reference (NULL-checked). */
static struct engine_checkpoint *load(struct engine *e, const char *path) {
    struct err err = {0};
    struct engine_checkpoint *ck = engine_checkpoint(e, path, &err);
    if (!ck) fail_msg("loading %s: %s", path, err.msg);
    return ck;
}

static void unref(struct engine_checkpoint *ck) { gobj_unref(&ck->obj); }

/* Which of a..d are loaded, as "ab-d". */
static void loaded_set(struct engine *e, char out[5]) {
    for (int i = 0; i < 4; i++) out[i] = engine_has_checkpoint(e, CKPT[i]) ? (char)('a' + i) : '-';
    out[4] = 0;
}

static void test_engine_estimate(void **state) {
    (void)state;
    uint64_t est = 0;
    struct err err = {0};
    assert_int_equal(engine_checkpoint_estimate(NULL, CKPT[0], &est, &err), 0);
    assert_true(est > 0);
    assert_int_equal(est, layout_estimate());
    char missing[420];
    snprintf(missing, sizeof missing, "%s/none.safetensors", DIR_MODELS);
    assert_true(engine_checkpoint_estimate(NULL, missing, &est, &err) < 0);
    assert_non_null(strstr(err.msg, "none.safetensors"));

    struct engine *e = engine_new_cpu(1, DIR_MODELS, NULL);
    assert_non_null(e);
    assert_int_equal(engine_weight_bytes(e), 0);
    unref(load(e, CKPT[0]));
    assert_int_equal(engine_weight_bytes(e), layout_estimate());
    engine_free(e);
}

static void test_engine_lru_budget(void **state) {
    (void)state;
    uint64_t est = layout_estimate();
    char set[5];
    struct engine *e = engine_new_cpu(1, DIR_MODELS, NULL);
    assert_non_null(e);
    engine_set_budget(e, 2 * est); /* room for two */

    unref(load(e, CKPT[0]));                         /* a: unreferenced */
    struct engine_checkpoint *b = load(e, CKPT[1]);  /* b: held */
    struct engine_checkpoint *c = load(e, CKPT[2]);  /* c: a goes (LRU, unreferenced) */
    loaded_set(e, set);
    assert_string_equal(set, "-bc-");
    assert_int_equal(engine_weight_bytes(e), 2 * est);
    unref(c);

    /* b is older than c but held: c goes */
    unref(load(e, CKPT[0]));
    loaded_set(e, set);
    assert_string_equal(set, "ab--");

    /* a and b held: nothing can go, so c loads beyond the budget */
    struct engine_checkpoint *a = load(e, CKPT[0]);
    c = load(e, CKPT[2]);
    loaded_set(e, set);
    assert_string_equal(set, "abc-");
    assert_int_equal(engine_weight_bytes(e), 3 * est);
    unref(a);
    unref(c);

    /* a hit unloads nothing; a miss unloads free ones, least recently used first, until it fits */
    unref(load(e, CKPT[2])); /* c now the most recent; a, b, c resident (3 est) */
    unref(load(e, CKPT[3])); /* d: a goes (2 est + d still too much), then c; b is held */
    loaded_set(e, set);
    assert_string_equal(set, "-b-d");
    assert_int_equal(engine_weight_bytes(e), 2 * est);
    unref(b);

    /* no budget: up to ENGINE_MAX_CHECKPOINTS stay */
    engine_set_budget(e, 0);
    for (int i = 0; i < 4; i++) unref(load(e, CKPT[i]));
    loaded_set(e, set);
    assert_string_equal(set, "abcd");
    assert_int_equal(engine_weight_bytes(e), 4 * est);

    /* a budget of one: everything else unreferenced goes */
    engine_set_budget(e, est);
    unref(load(e, CKPT[0])); /* a hit: nothing unloaded */
    loaded_set(e, set);
    assert_string_equal(set, "abcd");
    engine_unload_unused(e);
    assert_int_equal(engine_weight_bytes(e), 0);
    unref(load(e, CKPT[1]));
    unref(load(e, CKPT[2]));
    loaded_set(e, set);
    assert_string_equal(set, "--c-");
    engine_free(e);
}

/* ===== Setup ===== */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static int setup(void **state) {
    (void)state;
    snprintf(ROOT, sizeof ROOT, "/tmp/kiln_oom_XXXXXX");
    if (!mkdtemp(ROOT)) return -1;
    snprintf(DIR_MODELS, sizeof DIR_MODELS, "%s/models", ROOT);
    snprintf(DIR_INPUT, sizeof DIR_INPUT, "%s/input", ROOT);
    snprintf(DIR_OUTPUT, sizeof DIR_OUTPUT, "%s/output", ROOT);
    snprintf(DIR_TEMP, sizeof DIR_TEMP, "%s/temp", ROOT);
    mkdir(DIR_MODELS, 0755);
    mkdir(DIR_INPUT, 0755);
    mkdir(DIR_OUTPUT, 0755);
    mkdir(DIR_TEMP, 0755);
    sd_config_tiny(&TINY, tokenizer_tiny_vocab_size());
    for (int i = 0; i < 4; i++) {
        struct err err = {0};
        snprintf(CKPT[i], sizeof CKPT[i], "%s/%c.safetensors", DIR_MODELS, 'a' + i);
        if (ckpt_gen_write(CKPT[i], &TINY, (uint64_t)i + 1, &err)) {
            fprintf(stderr, "%s\n", err.msg);
            return -1;
        }
    }
    PATHS = (struct graph_paths){.models = DIR_MODELS, .input = DIR_INPUT, .output = DIR_OUTPUT, .temp = DIR_TEMP};
    const struct node_class *all[] = {&T_NUM, &T_FLAKY, &T_MODEL, &T_USE_MODEL};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) graph_registry_add(all[i]);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    graph_registry_reset();
    nftw(ROOT, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_oom_once_then_success), cmocka_unit_test(test_nomem_once_then_success),
        cmocka_unit_test(test_oom_twice_fails_clearly), cmocka_unit_test(test_retry_fails_otherwise),
        cmocka_unit_test(test_other_failure_not_retried), cmocka_unit_test(test_engine_estimate),
        cmocka_unit_test(test_engine_lru_budget),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
