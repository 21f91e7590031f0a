/* tests/unit/api/test_api.c -- the real server in-process: a sched of 2 CPU devices with fake
 * node classes, api_server on a free loopback port plus 2 per-device ports, driven over HTTP
 * and WebSocket with CivetWeb's client functions. Covers every route's shape, the /api prefix,
 * 404/405, bad JSON, 413, /view rules, uploads (collision naming, mask merge, refusals),
 * routing by header/extra_data/port with isolation, events to the right client only, history,
 * queue clear/delete, interrupt, concurrent submissions, the Origin check and CORS.
 * Threads: assertions on the test thread; WebSocket callbacks only record. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "api/api.h"
#include "base/mem.h"
#include "base/status.h"
#include "graph/json.h"
#include "io/png.h"
#include "sched/sched.h"

#include <arpa/inet.h>
#include <civetweb.h>
#include <ftw.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char ROOT[256];
static char DIR_MODELS[300], DIR_INPUT[300], DIR_OUTPUT[300], DIR_TEMP[300];
static struct graph_paths PATHS;
static struct sched *g_sched;
static struct api_server *g_srv;
static int PORT, GPU_BASE;

#define MAX_BODY (256 * 1024)
#define MAX_UPLOAD (512 * 1024)

/* ===== Fake node classes ===== */

static atomic_bool gate_open;

static void ui_text(struct node_run *ctx, const char *text) {
    json_t *a = json_array();
    json_array_append_new(a, json_string(text));
    json_object_set_new(ctx->ui, "text", a);
}

/* TNum: v -> INT */
static int run_num(struct node_run *c, const struct value *in, struct value *out, struct err *e) {
    out[0] = (struct value){.kind = VALUE_INT, .i = in[0].i};
    return 0;
}

/* TShow (output): tag, x -> UI {"text": ["<tag>:<x>"]}, one progress step */
static int run_show(struct node_run *c, const struct value *in, struct value *out, struct err *e) {
    int rc = node_progress(c, 1, 1, e);
    if (rc) return rc;
    char t[128];
    snprintf(t, sizeof t, "%s:%lld", in[0].s, (long long)in[1].i);
    ui_text(c, t);
    return 0;
}

/* TGate (output): waits for gate_open or an interrupt */
static int run_gate(struct node_run *c, const struct value *in, struct value *out, struct err *e) {
    while (!atomic_load(&gate_open)) {
        if (node_interrupted(c)) return err_set(e, STATUS_ERR_INTERRUPTED, "Processing interrupted");
        usleep(1000);
    }
    ui_text(c, in[0].s);
    return 0;
}

/* TSeed (output): a seed up to 2^64-1, shown in decimal */
static int run_seed(struct node_run *c, const struct value *in, struct value *out, struct err *e) {
    char t[32];
    snprintf(t, sizeof t, "%llu", (unsigned long long)in[0].i);
    ui_text(c, t);
    return 0;
}

#define INT_IN(n) {.name = n, .kind = NODE_INPUT_INT, .flags = NODE_IN_DEFAULT}
#define STR_IN(n) {.name = n, .kind = NODE_INPUT_STRING}

static const struct node_class T_NUM = {
    .name = "TNum", .required = (const struct node_input[]){INT_IN("v"), NODE_INPUTS_END},
    .outputs = (const struct node_output[]){{.type = "INT"}, NODE_OUTPUTS_END}, .run = run_num};
static const struct node_class T_SHOW = {
    .name = "TShow", .output_node = true,
    .required = (const struct node_input[]){STR_IN("tag"), INT_IN("x"), NODE_INPUTS_END}, .run = run_show};
static const struct node_class T_GATE = {
    .name = "TGate", .output_node = true, .required = (const struct node_input[]){STR_IN("tag"), NODE_INPUTS_END},
    .run = run_gate};
static const struct node_class T_SEED = {
    .name = "TSeed", .output_node = true,
    .required = (const struct node_input[]){{.name = "seed", .kind = NODE_INPUT_INT,
                                             .flags = NODE_IN_DEFAULT | NODE_IN_MIN | NODE_IN_MAX_U64},
                                            NODE_INPUTS_END},
    .run = run_seed};

/* ===== HTTP client ===== */

#include "unit/api/http_client.h"
#include "unit/api/test_files.h"

static struct resp get(const char *path) { return request(PORT, "GET", path, NULL, NULL, 0); }
static struct resp post(const char *path, const char *body) {
    return request(PORT, "POST", path, NULL, body, strlen(body));
}

/* error.type of a JSON error reply */
static const char *err_type(const struct resp *r) {
    return json_string_value(json_object_get(json_object_get(r->json, "error"), "type"));
}

static void expect_error(struct resp r, int status, const char *type) {
    if (r.status != status) fail_msg("status %d, want %d: %s", r.status, status, r.body);
    if (!err_type(&r)) fail_msg("no JSON error body: %s", r.body);
    if (type && strcmp(err_type(&r), type) != 0) fail_msg("error type %s, want %s", err_type(&r), type);
    resp_free(&r);
}

/* POSTs a prompt body; returns the prompt_id (static buffer) of a 200 reply. */
static const char *queue_prompt(int port, const char *headers, const char *body) {
    static char id[64];
    struct resp r = request(port, "POST", "/prompt", headers, body, strlen(body));
    if (r.status != 200) fail_msg("POST /prompt: %d %s", r.status, r.body);
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(r.json, "prompt_id")));
    resp_free(&r);
    return id;
}

/* Waits (10 s at most) until /history/{id} has the entry; returns it (new reference). */
static json_t *wait_history(const char *id) {
    char path[160];
    snprintf(path, sizeof path, "/history/%s", id);
    for (int i = 0; i < 2000; i++) {
        struct resp r = get(path);
        json_t *e = json_incref(json_object_get(r.json, id));
        resp_free(&r);
        if (e) return e;
        usleep(5000);
    }
    fail_msg("prompt %s never reached the history", id);
    return NULL;
}

/* The (running, pending) counts of device dev from /queue/all. */
static void queue_counts(int dev, int *running, int *pending) {
    struct resp r = get("/queue/all");
    json_t *q = json_array_get(json_object_get(r.json, "queues"), (size_t)dev);
    *running = (int)json_integer_value(json_object_get(q, "running_count"));
    *pending = (int)json_integer_value(json_object_get(q, "pending_count"));
    resp_free(&r);
}

/* Waits until device dev runs one prompt. */
static void wait_running(int dev) {
    for (int i = 0; i < 2000; i++) {
        int run, pend;
        queue_counts(dev, &run, &pend);
        if (run == 1) return;
        usleep(5000);
    }
    fail_msg("device %d never started a prompt", dev);
}

/* Waits until every queue is empty. */
static void wait_idle(void) {
    for (int i = 0; i < 2000; i++) {
        struct resp r = get("/queue/all");
        json_int_t n = json_integer_value(json_object_get(r.json, "total_running")) +
                       json_integer_value(json_object_get(r.json, "total_pending"));
        resp_free(&r);
        if (n == 0) return;
        usleep(5000);
    }
    fail_msg("queues never emptied");
}

/* ===== WebSocket client ===== */

#include "unit/api/ws_client.h"

/* Whether a message of `type` about prompt id has arrived (no waiting). */
static bool ws_has(struct wsc *w, const char *type, const char *id) {
    pthread_mutex_lock(&w->mu);
    bool found = false;
    for (int i = 0; i < w->n && !found; i++)
        found = !strcmp(msg_type(w->msg[i]), type) && msg_pid(w->msg[i]) && !strcmp(msg_pid(w->msg[i]), id);
    pthread_mutex_unlock(&w->mu);
    return found;
}

/* Number of messages about prompt id. */
static int ws_count_about(struct wsc *w, const char *id) {
    pthread_mutex_lock(&w->mu);
    int k = 0;
    for (int i = 0; i < w->n; i++)
        if (msg_pid(w->msg[i]) && strcmp(msg_pid(w->msg[i]), id) == 0) k++;
    pthread_mutex_unlock(&w->mu);
    return k;
}

/* ===== Fixture ===== */

/* A base port whose next port is free too (both bound and released at once). */
static int free_port_pair(void) {
    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    for (int tries = 0; tries < 100; tries++) {
        int base = 20000 + rand() % 40000;
        bool ok = true;
        for (int i = 0; i < 2 && ok; i++) {
            int fd = socket(AF_INET, SOCK_STREAM, 0);
            struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)(base + i))};
            a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
            close(fd);
        }
        if (ok) return base;
    }
    fail_msg("no free port pair");
    return 0;
}

static int group_setup(void **state) {
    snprintf(ROOT, sizeof ROOT, "/tmp/kiln_api_XXXXXX");
    if (!mkdtemp(ROOT)) return -1;
    snprintf(DIR_MODELS, sizeof DIR_MODELS, "%s/models", ROOT);
    snprintf(DIR_INPUT, sizeof DIR_INPUT, "%s/input", ROOT);
    snprintf(DIR_OUTPUT, sizeof DIR_OUTPUT, "%s/output", ROOT);
    snprintf(DIR_TEMP, sizeof DIR_TEMP, "%s/temp", ROOT);
    mkdir(DIR_MODELS, 0777);
    mkdir(DIR_INPUT, 0777);
    mkdir(DIR_OUTPUT, 0777);
    mkdir(DIR_TEMP, 0777);
    PATHS = (struct graph_paths){.models = DIR_MODELS, .input = DIR_INPUT, .output = DIR_OUTPUT, .temp = DIR_TEMP};
    graph_registry_add(&T_NUM);
    graph_registry_add(&T_SHOW);
    graph_registry_add(&T_GATE);
    graph_registry_add(&T_SEED);

    struct err err = {0};
    struct sched_opts so = {.n_cpu_workers = 2, .cpu_threads = 1, .paths = PATHS};
    g_sched = sched_new(&so, &err);
    if (!g_sched) fail_msg("sched_new: %s", err.msg);
    GPU_BASE = free_port_pair();
    struct api_opts ao = {.listen = "127.0.0.1", .port = -1, .gpu_ports_base = GPU_BASE, .paths = PATHS,
                          .max_upload_size = MAX_UPLOAD, .max_body_size = MAX_BODY, .threads = 24};
    g_srv = api_server_new(&ao, g_sched, &err);
    if (!g_srv) fail_msg("api_server_new: %s", err.msg);
    PORT = api_server_port(g_srv, 0);
    if (sched_start(g_sched, &err)) fail_msg("sched_start: %s", err.msg);
    return 0;
}

static int group_teardown(void **state) {
    atomic_store(&gate_open, true);
    api_server_stop(g_srv);
    sched_free(g_sched);
    api_server_free(g_srv);
    graph_registry_reset();
    rm_tree(ROOT);
    return 0;
}

/* ===== Routes and shapes ===== */

static void test_info_routes(void **state) {
    assert_true(PORT > 0);
    assert_int_equal(api_server_device_port(g_srv, 1), GPU_BASE + 1);
    struct resp r = get("/prompt");
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"exec_info\": {\"queue_remaining\": 0}}");
    assert_non_null(strstr(r.ctype, "application/json"));
    resp_free(&r);

    r = get("/api/prompt?clientId=abc"); /* /api prefix; clientId ignored */
    assert_string_equal(r.body, "{\"exec_info\": {\"queue_remaining\": 0}}");
    resp_free(&r);

    r = get("/queue");
    assert_string_equal(r.body, "{\"queue_running\": [], \"queue_pending\": []}");
    resp_free(&r);

    r = get("/api/queue/all");
    assert_int_equal(r.status, 200);
    json_t *qs = json_object_get(r.json, "queues");
    assert_int_equal(json_array_size(qs), 2);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(qs, 1), "gpu_id")), 1);
    assert_non_null(json_object_get(json_array_get(qs, 0), "queue_pending"));
    assert_true(json_is_integer(json_object_get(r.json, "total_pending")));
    resp_free(&r);

    r = get("/history/no-such-id");
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{}");
    resp_free(&r);

    r = get("/object_info");
    assert_int_equal(r.status, 200);
    json_t *seed = json_object_get(json_object_get(json_object_get(json_object_get(r.json, "TSeed"), "input"), "required"), "seed");
    assert_non_null(seed);
    assert_non_null(strstr(r.body, "\"max\": 18446744073709551615")); /* big int written exactly */
    resp_free(&r);

    r = get("/api/object_info/TShow");
    assert_int_equal(json_object_size(r.json), 1);
    assert_string_equal(json_string_value(json_object_get(json_object_get(r.json, "TShow"), "name")), "TShow");
    resp_free(&r);
    r = get("/object_info/NoSuchNode");
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{}");
    resp_free(&r);

    r = get("/system_stats");
    assert_int_equal(r.status, 200);
    json_t *sys = json_object_get(r.json, "system");
    assert_string_equal(json_string_value(json_object_get(sys, "comfyui_version")), "0.3.64");
    assert_non_null(json_object_get(sys, "kiln_version"));
    assert_true(json_integer_value(json_object_get(sys, "ram_total")) > 0);
    json_t *devs = json_object_get(r.json, "devices");
    assert_int_equal(json_array_size(devs), 2);
    json_t *d0 = json_array_get(devs, 0);
    assert_string_equal(json_string_value(json_object_get(d0, "type")), "cpu");
    assert_int_equal(json_integer_value(json_object_get(d0, "index")), 0);
    assert_true(json_integer_value(json_object_get(d0, "vram_total")) > 0);
    assert_non_null(strstr(json_string_value(json_object_get(d0, "name")), "cpu:0"));
    resp_free(&r);

    /* GET /gpus: only GPU devices are listed (none here), with the monitor's source */
    r = get("/api/gpus");
    assert_int_equal(r.status, 200);
    assert_int_equal(json_array_size(json_object_get(r.json, "gpus")), 0);
    assert_int_equal(json_integer_value(json_object_get(r.json, "count")), 0);
    assert_non_null(json_string_value(json_object_get(r.json, "monitor")));
    resp_free(&r);

    r = get("/embeddings");
    assert_string_equal(r.body, "[]");
    resp_free(&r);
    r = get("/extensions");
    assert_string_equal(r.body, "[]");
    resp_free(&r);
    r = get("/models");
    assert_string_equal(json_string_value(json_array_get(r.json, 0)), "checkpoints");
    resp_free(&r);

    /* a model file appears in /models/checkpoints; an embedding in /embeddings without extension */
    char p[400];
    snprintf(p, sizeof p, "%s/checkpoints", DIR_MODELS);
    mkdir(p, 0777);
    snprintf(p, sizeof p, "%s/checkpoints/m.safetensors", DIR_MODELS);
    fclose(fopen(p, "wb"));
    snprintf(p, sizeof p, "%s/embeddings", DIR_MODELS);
    mkdir(p, 0777);
    snprintf(p, sizeof p, "%s/embeddings/emb.pt", DIR_MODELS);
    fclose(fopen(p, "wb"));
    r = get("/models/checkpoints");
    assert_string_equal(r.body, "[\"m.safetensors\"]");
    resp_free(&r);
    r = get("/embeddings");
    assert_string_equal(r.body, "[\"emb\"]");
    resp_free(&r);
    expect_error(get("/models/nonsense"), 404, "not_found");

    r = get("/features");
    assert_int_equal(json_integer_value(json_object_get(r.json, "max_upload_size")), MAX_UPLOAD);
    assert_true(json_is_true(json_object_get(r.json, "supports_preview_metadata")));
    resp_free(&r);

    r = get("/metrics");
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.ctype, "text/plain; version=0.0.4"));
    resp_free(&r);

    r = get("/");
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.ctype, "text/html"));
    assert_non_null(strstr(r.body, "kiln"));
    assert_non_null(strstr(r.body, "queue/all"));
    resp_free(&r);
    r = request(PORT, "HEAD", "/api/system_stats", NULL, NULL, 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.len, 0);
    resp_free(&r);
}

static void test_bad_requests(void **state) {
    expect_error(get("/no/such/route"), 404, "not_found");
    expect_error(get("/api/nope"), 404, "not_found");
    expect_error(post("/system_stats", "{}"), 405, "method_not_allowed");
    expect_error(post("/prompt", "{\"prompt\": {"), 400, "invalid_json");
    expect_error(post("/prompt", "not json at all"), 400, "invalid_json");
    expect_error(post("/prompt", ""), 400, "invalid_json");
    expect_error(post("/prompt", "[1, 2]"), 400, "invalid_json");
    expect_error(post("/queue", "{oops"), 400, "invalid_json");
    expect_error(post("/history", "3"), 400, "invalid_json");
    expect_error(get("/history?max_items=abc"), 400, "invalid_query");

    /* too large: refused from Content-Length without reading the body */
    char hdr[128];
    snprintf(hdr, sizeof hdr, "Content-Type: application/json\r\n");
    struct mg_connection *c;
    char eb[256];
    c = mg_connect_client("127.0.0.1", PORT, 0, eb, sizeof eb);
    assert_non_null(c);
    mg_printf(c, "POST /prompt HTTP/1.1\r\nHost: 127.0.0.1\r\n%sContent-Length: %d\r\n\r\n", hdr, MAX_BODY + 1);
    assert_true(mg_get_response(c, eb, sizeof eb, 10000) >= 0);
    assert_int_equal(mg_get_response_info(c)->status_code, 413);
    char buf[512] = "";
    int n = mg_read(c, buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = 0;
    assert_non_null(strstr(buf, "request_too_large"));
    mg_close_connection(c);

    /* a body just under the limit is read and parsed (then refused as not JSON) */
    size_t big = MAX_BODY - 16;
    char *junk = malloc(big);
    memset(junk, 'x', big);
    expect_error(request(PORT, "POST", "/prompt", NULL, junk, big), 400, "invalid_json");
    free(junk);

    /* validation errors keep ComfyUI's body */
    struct resp r = post("/prompt", "{\"client_id\": \"x\"}");
    assert_int_equal(r.status, 400);
    assert_string_equal(err_type(&r), "no_prompt");
    assert_non_null(json_object_get(r.json, "node_errors"));
    resp_free(&r);
    r = post("/prompt", "{\"prompt\": {\"1\": {\"class_type\": \"NoSuchClass\", \"inputs\": {}}}}");
    assert_int_equal(r.status, 400);
    assert_string_equal(err_type(&r), "invalid_prompt");
    resp_free(&r);
    r = post("/prompt", "{\"prompt\": {\"1\": {\"class_type\": \"TNum\", \"inputs\": {\"v\": 1}}}}");
    assert_int_equal(r.status, 400);
    assert_string_equal(err_type(&r), "prompt_no_outputs");
    resp_free(&r);
}

/* Sends raw bytes on a fresh socket and returns everything the server answers until it closes. */
static char *raw_exchange(const char *req, size_t len) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)PORT)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) fail_msg("connect");
    if (write(fd, req, len) != (ssize_t)len) fail_msg("write");
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    size_t cap = 65536, n = 0;
    char *out = malloc(cap);
    ssize_t k;
    while ((k = read(fd, out + n, cap - n - 1)) > 0) n += (size_t)k;
    out[n] = 0;
    close(fd);
    return out;
}

static void test_keep_alive_and_malformed(void **state) {
    /* a refused POST whose body was not read does not poison the next request on the connection */
    const char *two = "POST /nope HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello"
                      "GET /prompt HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    char *out = raw_exchange(two, strlen(two));
    char *second = strstr(out, "HTTP/1.1 200");
    assert_non_null(strstr(out, "HTTP/1.1 404"));
    assert_non_null(second);
    assert_non_null(strstr(second, "{\"exec_info\": {\"queue_remaining\": 0}}"));
    free(out);
    /* CivetWeb's own errors get a JSON body too */
    out = raw_exchange("GARBAGE\r\n\r\n", 11);
    assert_non_null(strstr(out, " 400 "));
    assert_non_null(strstr(out, "\"error\": {\"type\": \"bad_request\""));
    free(out);
}

static void test_counter_and_ids(void **state) {
    const char *ok = "{\"prompt\": {\"1\": {\"class_type\": \"TShow\", \"inputs\": {\"tag\": \"cnt\", \"x\": %d}}}}";
    char body[256];
    snprintf(body, sizeof body, ok, 1);
    struct resp a = post("/prompt", body);
    assert_int_equal(a.status, 200);
    json_t *na = json_object_get(a.json, "number");
    assert_true(json_is_integer(na));
    assert_int_equal(json_object_size(json_object_get(a.json, "node_errors")), 0);
    /* a failing POST advances the counter too */
    expect_error(post("/prompt", "{\"prompt\": {}}"), 400, NULL);
    snprintf(body, sizeof body, ok, 2);
    struct resp b = post("/prompt", body);
    assert_int_equal(json_integer_value(json_object_get(b.json, "number")), json_integer_value(na) + 2);
    resp_free(&a);
    resp_free(&b);

    /* the client's number (a float) and prompt_id are kept as sent */
    struct resp c = post("/prompt", "{\"prompt\": {\"1\": {\"class_type\": \"TShow\", \"inputs\": {\"tag\": \"n\", \"x\": 3}}},"
                                    " \"number\": 12.5, \"prompt_id\": \"my-own-id\"}");
    assert_int_equal(c.status, 200);
    assert_non_null(strstr(c.body, "\"number\": 12.5"));
    assert_string_equal(json_string_value(json_object_get(c.json, "prompt_id")), "my-own-id");
    resp_free(&c);
    json_t *h = wait_history("my-own-id");
    json_decref(h);
    /* a 64-byte prompt_id is refused */
    char longid[200];
    snprintf(longid, sizeof longid,
             "{\"prompt\": {\"1\": {\"class_type\": \"TShow\", \"inputs\": {\"tag\": \"n\", \"x\": 4}}}, \"prompt_id\": \"%064d\"}", 7);
    expect_error(post("/prompt", longid), 400, "invalid_prompt_id");

    /* seeds up to 2^64-1 survive the round trip (graph_json_loads, graph_json_dumps) */
    const char *id = queue_prompt(PORT, NULL,
                                  "{\"prompt\": {\"5\": {\"class_type\": \"TSeed\", \"inputs\": {\"seed\": 18446744073709551615}}}}");
    char path[128];
    snprintf(path, sizeof path, "/history/%s", id);
    json_decref(wait_history(id));
    struct resp hr = get(path);
    assert_non_null(strstr(hr.body, "\"seed\": 18446744073709551615"));
    assert_non_null(strstr(hr.body, "\"18446744073709551615\""));
    resp_free(&hr);
    wait_idle();
}

/* ===== Routing ===== */

static void test_invalid_target(void **state) {
    const char *body = "{\"prompt\": {\"1\": {\"class_type\": \"TShow\", \"inputs\": {\"tag\": \"t\", \"x\": 1}}}}";
    struct resp r = request(PORT, "POST", "/prompt", "X-TARGET-GPU: 7\r\n", body, strlen(body));
    assert_int_equal(r.status, 400);
    assert_string_equal(err_type(&r), "invalid_target_gpu");
    const char *msg = json_string_value(json_object_get(json_object_get(r.json, "error"), "message"));
    assert_non_null(strstr(msg, "0 (cpu:0"));
    assert_non_null(strstr(msg, "1 (cpu:1"));
    resp_free(&r);
    r = request(PORT, "POST", "/prompt", "X-TARGET-GPU: zero\r\n", body, strlen(body));
    assert_int_equal(r.status, 400);
    assert_string_equal(err_type(&r), "invalid_target_gpu");
    resp_free(&r);
    expect_error(post("/prompt", "{\"prompt\": {\"1\": {\"class_type\": \"TShow\", \"inputs\": {\"tag\": \"t\", \"x\": 1}}},"
                                 " \"extra_data\": {\"target_gpu\": 2}}"),
                 400, "invalid_target_gpu");
    expect_error(post("/free", "{\"unload_models\": true, \"gpu\": 9}"), 400, "invalid_target_gpu");
    expect_error(request(PORT, "GET", "/queue", "X-TARGET-GPU: 3\r\n", NULL, 0), 400, "invalid_target_gpu");
}

/* A gate prompt (blocks its device until gate_open) with a unique tag. */
static const char *gate_body(const char *tag) {
    static char b[256];
    snprintf(b, sizeof b, "{\"prompt\": {\"1\": {\"class_type\": \"TGate\", \"inputs\": {\"tag\": \"%s\"}}}}", tag);
    return b;
}

static void test_routing_and_isolation(void **state) {
    atomic_store(&gate_open, false);
    int run, pend;
    /* by header, to device 1 */
    char id1[64], id0[64];
    snprintf(id1, sizeof id1, "%s", queue_prompt(PORT, "X-TARGET-GPU: 1\r\n", gate_body("route-h1")));
    wait_running(1);
    queue_counts(0, &run, &pend);
    assert_int_equal(run, 0);
    /* by port: device 0's port */
    snprintf(id0, sizeof id0, "%s", queue_prompt(GPU_BASE, NULL, gate_body("route-p0")));
    wait_running(0);
    /* by extra_data.target_gpu: pending behind device 1's gate */
    queue_prompt(PORT, NULL, "{\"prompt\": {\"1\": {\"class_type\": \"TGate\", \"inputs\": {\"tag\": \"route-x1\"}}},"
                             " \"extra_data\": {\"target_gpu\": 1}}");
    /* isolation: 5 more on device 0's port stay on device 0 */
    for (int i = 0; i < 5; i++) {
        char tag[32];
        snprintf(tag, sizeof tag, "iso-%d", i);
        queue_prompt(GPU_BASE, NULL, gate_body(tag));
    }
    queue_counts(0, &run, &pend);
    assert_int_equal(run, 1);
    assert_int_equal(pend, 5);
    queue_counts(1, &run, &pend);
    assert_int_equal(run, 1);
    assert_int_equal(pend, 1);

    /* device ports scope /queue and /prompt; the main port sees everything */
    struct resp r = request(GPU_BASE + 1, "GET", "/queue", NULL, NULL, 0);
    assert_int_equal(json_integer_value(json_object_get(r.json, "gpu_id")), 1);
    assert_int_equal(json_array_size(json_object_get(r.json, "queue_running")), 1);
    assert_int_equal(json_array_size(json_object_get(r.json, "queue_pending")), 1);
    json_t *item = json_array_get(json_object_get(r.json, "queue_running"), 0);
    assert_int_equal(json_array_size(item), 5); /* ComfyUI's 5-tuple */
    assert_string_equal(json_string_value(json_array_get(item, 1)), id1);
    resp_free(&r);
    r = request(GPU_BASE, "GET", "/prompt", NULL, NULL, 0);
    assert_string_equal(r.body, "{\"exec_info\": {\"queue_remaining\": 6}}");
    resp_free(&r);
    r = request(PORT, "GET", "/queue", "X-TARGET-GPU: 0\r\n", NULL, 0); /* header scopes too (nginx setups) */
    assert_int_equal(json_integer_value(json_object_get(r.json, "gpu_id")), 0);
    resp_free(&r);
    r = get("/prompt");
    assert_string_equal(r.body, "{\"exec_info\": {\"queue_remaining\": 8}}");
    resp_free(&r);
    r = get("/queue");
    assert_int_equal(json_array_size(json_object_get(r.json, "queue_running")), 2);
    assert_int_equal(json_array_size(json_object_get(r.json, "queue_pending")), 6);
    resp_free(&r);

    /* POST /queue on device 0's port: delete one, then clear the rest of device 0 only */
    r = request(GPU_BASE, "GET", "/queue", NULL, NULL, 0);
    const char *victim = json_string_value(json_array_get(json_array_get(json_object_get(r.json, "queue_pending"), 0), 1));
    char del[200];
    snprintf(del, sizeof del, "{\"delete\": [\"%s\"]}", victim);
    resp_free(&r);
    r = request(GPU_BASE, "POST", "/queue", NULL, del, strlen(del));
    assert_int_equal(r.status, 200);
    assert_int_equal(r.len, 0);
    resp_free(&r);
    queue_counts(0, &run, &pend);
    assert_int_equal(pend, 4);
    r = request(GPU_BASE, "POST", "/api/queue", NULL, "{\"clear\": true}", 15);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    queue_counts(0, &run, &pend);
    assert_int_equal(pend, 0);
    assert_int_equal(run, 1);
    queue_counts(1, &run, &pend);
    assert_int_equal(pend, 1); /* untouched */

    /* /interrupt on device 0's port stops device 0's prompt only */
    r = request(GPU_BASE, "POST", "/interrupt", NULL, NULL, 0);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    json_t *h0 = wait_history(id0);
    assert_string_equal(json_string_value(json_object_get(json_object_get(h0, "status"), "status_str")), "error");
    json_decref(h0);
    queue_counts(1, &run, &pend);
    assert_int_equal(run, 1);
    /* {prompt_id} interrupts that prompt wherever it runs */
    char body[128];
    snprintf(body, sizeof body, "{\"prompt_id\": \"%s\"}", id1);
    r = post("/interrupt", body);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    json_t *h1 = wait_history(id1);
    assert_false(json_is_true(json_object_get(json_object_get(h1, "status"), "completed")));
    json_decref(h1);
    atomic_store(&gate_open, true);
    wait_idle();
}

/* ===== WebSocket ===== */

static void test_ws_connect_status(void **state) {
    struct wsc *w = ws_open(PORT, "/ws?clientId=client-abc");
    int i = ws_wait(w, "status", NULL, false);
    assert_int_equal(i, 0); /* the first message */
    json_t *d = msg_data(w->msg[0]);
    assert_string_equal(json_string_value(json_object_get(d, "sid")), "client-abc");
    assert_true(json_is_integer(json_object_get(json_object_get(json_object_get(d, "status"), "exec_info"), "queue_remaining")));
    /* feature flags: the first client message is answered with the server's */
    const char *ff = "{\"type\": \"feature_flags\", \"data\": {\"supports_preview_metadata\": true}}";
    mg_websocket_client_write(w->conn, MG_WEBSOCKET_OPCODE_TEXT, ff, strlen(ff));
    i = ws_wait(w, "feature_flags", NULL, false);
    assert_true(i > 0);
    assert_int_equal(json_integer_value(json_object_get(msg_data(w->msg[i]), "max_upload_size")), MAX_UPLOAD);
    ws_free(w);

    /* no clientId: a fresh uuid hex sid, under /api/ws */
    w = ws_open(PORT, "/api/ws");
    assert_int_equal(ws_wait(w, "status", NULL, false), 0);
    const char *sid = json_string_value(json_object_get(msg_data(w->msg[0]), "sid"));
    assert_int_equal(strlen(sid), 32);
    assert_int_equal(strspn(sid, "0123456789abcdef"), 32);
    ws_free(w);
}

static void test_ws_events_to_their_client(void **state) {
    struct wsc *a = ws_open(PORT, "/ws?clientId=alice");
    struct wsc *b = ws_open(PORT, "/ws?clientId=bob");
    assert_int_equal(ws_wait(a, "status", NULL, false), 0);
    assert_int_equal(ws_wait(b, "status", NULL, false), 0);
    char id[64];
    snprintf(id, sizeof id, "%s",
             queue_prompt(PORT, NULL,
                          "{\"prompt\": {\"1\": {\"class_type\": \"TNum\", \"inputs\": {\"v\": 41}},"
                          " \"2\": {\"class_type\": \"TShow\", \"inputs\": {\"tag\": \"ws\", \"x\": [\"1\", 0]}}},"
                          " \"client_id\": \"alice\"}"));
    int end = ws_wait(a, "executing", id, true);
    assert_true(end > 0);
    /* the history entry is there when executing {node: null} arrives */
    char path[128];
    snprintf(path, sizeof path, "/history/%s", id);
    struct resp h = get(path);
    json_t *e = json_object_get(h.json, id);
    assert_non_null(e);
    assert_true(json_is_true(json_object_get(json_object_get(e, "status"), "completed")));
    assert_string_equal(json_string_value(json_array_get(json_object_get(json_object_get(json_object_get(e, "outputs"), "2"), "text"), 0)),
                        "ws:41");
    resp_free(&h);

    int start = ws_wait(a, "execution_start", id, false);
    int exec2 = -1, executed = ws_wait(a, "executed", id, false), success = ws_wait(a, "execution_success", id, false);
    int progress = ws_wait(a, "progress", id, false);
    for (int i = 0; i < a->n; i++)
        if (!strcmp(msg_type(a->msg[i]), "executing") && json_is_string(json_object_get(msg_data(a->msg[i]), "node")) &&
            !strcmp(json_string_value(json_object_get(msg_data(a->msg[i]), "node")), "2"))
            exec2 = i;
    assert_true(start >= 0 && exec2 > start && progress > exec2 && executed > progress && success > executed &&
                end > success);
    json_t *ed = msg_data(a->msg[executed]);
    assert_string_equal(json_string_value(json_object_get(ed, "node")), "2");
    assert_string_equal(json_string_value(json_array_get(json_object_get(json_object_get(ed, "output"), "text"), 0)), "ws:41");
    /* bob saw none of alice's prompt (status broadcasts only) */
    usleep(100000);
    assert_int_equal(ws_count_about(b, id), 0);
    assert_true(ws_wait(b, "status", NULL, false) >= 0);

    /* a prompt without client_id: progress is broadcast, per-client events go nowhere */
    snprintf(id, sizeof id, "%s",
             queue_prompt(PORT, NULL, "{\"prompt\": {\"1\": {\"class_type\": \"TShow\", \"inputs\": {\"tag\": \"anon\", \"x\": 5}}}}"));
    assert_true(ws_wait(b, "progress", id, false) >= 0);
    json_decref(wait_history(id));
    usleep(100000);
    assert_false(ws_has(b, "executing", id));
    assert_false(ws_has(b, "execution_start", id));
    ws_free(a);
    ws_free(b);
    wait_idle();
}

/* ===== Concurrency ===== */

struct burst {
    int k;                           /* thread index */
    char ids[10][64];
    int status[10];
};

static void *burst_thread(void *arg) {
    struct burst *bt = arg;
    for (int i = 0; i < 10; i++) {
        char body[256];
        snprintf(body, sizeof body, "{\"prompt\": {\"1\": {\"class_type\": \"TShow\", \"inputs\": {\"tag\": \"burst\", \"x\": %d}}}}",
                 100 + bt->k * 10 + i);
        struct resp r = request(PORT, "POST", "/prompt", NULL, body, strlen(body));
        bt->status[i] = r.status;
        const char *id = json_string_value(json_object_get(r.json, "prompt_id"));
        snprintf(bt->ids[i], sizeof bt->ids[i], "%s", id ? id : "");
        resp_free(&r);
    }
    return NULL;
}

static void test_concurrent_submissions(void **state) {
    struct burst bt[4];
    pthread_t th[4];
    for (int k = 0; k < 4; k++) {
        bt[k] = (struct burst){.k = k};
        pthread_create(&th[k], NULL, burst_thread, &bt[k]);
    }
    for (int k = 0; k < 4; k++) pthread_join(th[k], NULL);
    wait_idle();
    struct resp h = get("/history");
    for (int k = 0; k < 4; k++) {
        for (int i = 0; i < 10; i++) {
            assert_int_equal(bt[k].status[i], 200);
            json_t *e = json_object_get(h.json, bt[k].ids[i]);
            assert_non_null(e); /* each completed (history is keyed by id: exactly once) */
            assert_true(json_is_true(json_object_get(json_object_get(e, "status"), "completed")));
        }
    }
    resp_free(&h);
    h = get("/history?max_items=2");
    assert_int_equal(json_object_size(h.json), 2);
    resp_free(&h);

    /* POST /history delete and clear */
    char body[128];
    snprintf(body, sizeof body, "{\"delete\": [\"%s\"]}", bt[0].ids[0]);
    struct resp r = post("/history", body);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    snprintf(body, sizeof body, "/history/%s", bt[0].ids[0]);
    r = get(body);
    assert_string_equal(r.body, "{}");
    resp_free(&r);
    r = post("/api/history", "{\"clear\": true}");
    assert_int_equal(r.status, 200);
    resp_free(&r);
    r = get("/history");
    assert_string_equal(r.body, "{}");
    resp_free(&r);
}

static void test_interrupt_and_free(void **state) {
    struct resp r = request(PORT, "POST", "/interrupt", NULL, NULL, 0);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    r = post("/api/interrupt", "{}");
    assert_int_equal(r.status, 200);
    resp_free(&r);
    r = post("/interrupt", "garbage");
    assert_int_equal(r.status, 200);
    resp_free(&r);
    r = post("/free", "{\"unload_models\": true, \"free_memory\": true}");
    assert_int_equal(r.status, 200);
    resp_free(&r);
    r = post("/free", "{\"unload_models\": true, \"gpu\": 1}");
    assert_int_equal(r.status, 200);
    resp_free(&r);
    expect_error(post("/free", "[nope"), 400, "invalid_json");
}

/* ===== Files ===== */

static void write_png(const char *path, uint32_t w, uint32_t h, int ch, uint8_t seed, const struct png_text *t, int nt) {
    uint8_t *px = malloc((size_t)w * h * (size_t)ch);
    for (size_t i = 0; i < (size_t)w * h * (size_t)ch; i++) px[i] = (uint8_t)(seed + i * 7);
    struct err err = {0};
    if (png_write(path, px, w, h, ch, t, nt, 4, &err)) fail_msg("png_write %s: %s", path, err.msg);
    free(px);
}

static void test_view(void **state) {
    char p[400];
    snprintf(p, sizeof p, "%s/a.png", DIR_OUTPUT);
    write_png(p, 4, 3, 3, 1, NULL, 0);
    size_t flen;
    char *file = slurp(p, &flen);
    snprintf(p, sizeof p, "%s/sub", DIR_OUTPUT);
    mkdir(p, 0777);
    snprintf(p, sizeof p, "%s/sub/b.png", DIR_OUTPUT);
    write_png(p, 2, 2, 4, 9, NULL, 0);
    snprintf(p, sizeof p, "%s/in.png", DIR_INPUT);
    write_png(p, 2, 2, 3, 5, NULL, 0);
    snprintf(p, sizeof p, "%s/secret.txt", ROOT);
    FILE *f = fopen(p, "w");
    fputs("secret", f);
    fclose(f);

    struct resp r = get("/view?filename=a.png&type=output&subfolder=");
    assert_int_equal(r.status, 200);
    assert_string_equal(r.ctype, "image/png");
    assert_string_equal(r.disp, "filename=\"a.png\"");
    assert_int_equal(r.len, flen);
    assert_memory_equal(r.body, file, flen);
    resp_free(&r);
    free(file);

    r = get("/api/view?filename=b.png&subfolder=sub");
    assert_int_equal(r.status, 200);
    resp_free(&r);
    r = get("/view?filename=in.png%20%5Binput%5D"); /* "in.png [input]" picks the input folder */
    assert_int_equal(r.status, 200);
    resp_free(&r);
    r = get("/view?filename=in.png&type=input");
    assert_int_equal(r.status, 200);
    resp_free(&r);

    expect_error(get("/view?filename=in.png"), 404, "not_found");        /* not in output */
    expect_error(get("/view?filename=nope.png"), 404, "not_found");
    expect_error(get("/view"), 404, "not_found");
    expect_error(get("/view?filename=../secret.txt"), 400, "invalid_filename");
    expect_error(get("/view?filename=%2Fetc%2Fpasswd"), 400, "invalid_filename");
    expect_error(get("/view?filename=a.png&type=elsewhere"), 400, "invalid_type");
    expect_error(get("/view?filename=secret.txt&subfolder=.."), 403, "forbidden");
    expect_error(get("/view?filename=passwd&subfolder=%2Fetc"), 403, "forbidden");
    expect_error(get("/view?filename=secret.txt&subfolder=sub%2F..%2F.."), 403, "forbidden");

    /* a symlink out of the folder is refused too */
    snprintf(p, sizeof p, "%s/link", DIR_OUTPUT);
    assert_int_equal(symlink(ROOT, p), 0);
    expect_error(get("/view?filename=secret.txt&subfolder=link"), 403, "forbidden");

    /* channel=a: alpha as a PNG (255 when the file has none); channel=rgb drops alpha */
    r = get("/view?filename=a.png&channel=a");
    assert_int_equal(r.status, 200);
    struct png_image img = {0};
    struct err err = {0};
    assert_int_equal(png_decode(r.body, r.len, &img, &err), 0);
    assert_int_equal(img.w, 4);
    assert_true(img.has_alpha);
    assert_int_equal(img.rgba[3], 255);
    assert_int_equal(img.rgba[0], 0);
    png_image_deinit(&img);
    resp_free(&r);
    r = get("/view?filename=b.png&subfolder=sub&channel=rgb");
    assert_int_equal(png_decode(r.body, r.len, &img, &err), 0);
    assert_false(img.has_alpha);
    assert_int_equal(img.rgba[0], 9); /* b.png's first byte */
    png_image_deinit(&img);
    resp_free(&r);
}

/* A multipart body with the given fields (filename non-NULL marks a file). */
struct part {
    const char *name, *filename;
    const void *data;
    size_t len;
};

static char *multipart(const struct part *parts, int n, size_t *len) {
    size_t cap = 1024;
    for (int i = 0; i < n; i++) cap += parts[i].len + 256;
    char *b = malloc(cap);
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        o += (size_t)sprintf(b + o, "--XkilnBoundaryX\r\nContent-Disposition: form-data; name=\"%s\"", parts[i].name);
        if (parts[i].filename) o += (size_t)sprintf(b + o, "; filename=\"%s\"\r\nContent-Type: image/png", parts[i].filename);
        o += (size_t)sprintf(b + o, "\r\n\r\n");
        memcpy(b + o, parts[i].data, parts[i].len);
        o += parts[i].len;
        o += (size_t)sprintf(b + o, "\r\n");
    }
    o += (size_t)sprintf(b + o, "--XkilnBoundaryX--\r\n");
    *len = o;
    return b;
}

static struct resp upload(const char *route, const struct part *parts, int n) {
    size_t len;
    char *body = multipart(parts, n, &len);
    struct resp r = request(PORT, "POST", route, "Content-Type: multipart/form-data; boundary=XkilnBoundaryX\r\n", body, len);
    free(body);
    return r;
}

static void expect_upload(struct resp r, const char *name, const char *sub, const char *type) {
    if (r.status != 200) fail_msg("upload: %d %s", r.status, r.body);
    char want[512];
    snprintf(want, sizeof want, "{\"name\": \"%s\", \"subfolder\": \"%s\", \"type\": \"%s\"}", name, sub, type);
    assert_string_equal(r.body, want);
    resp_free(&r);
}

static void test_upload_image(void **state) {
    char p[400];
    snprintf(p, sizeof p, "%s/src1.png", ROOT);
    write_png(p, 3, 3, 3, 10, NULL, 0);
    size_t l1, l2;
    char *png1 = slurp(p, &l1);
    snprintf(p, sizeof p, "%s/src2.png", ROOT);
    write_png(p, 3, 3, 3, 20, NULL, 0);
    char *png2 = slurp(p, &l2);

    struct part one[] = {{"image", "up.png", png1, l1}};
    expect_upload(upload("/upload/image", one, 1), "up.png", "", "input");
    size_t got;
    snprintf(p, sizeof p, "%s/up.png", DIR_INPUT);
    char *stored = slurp(p, &got);
    assert_int_equal(got, l1);
    assert_memory_equal(stored, png1, l1);
    free(stored);
    /* identical content: the existing name, nothing written */
    expect_upload(upload("/api/upload/image", one, 1), "up.png", "", "input");
    /* different content: "name (1).ext", then "(2)" */
    struct part two[] = {{"image", "up.png", png2, l2}};
    expect_upload(upload("/upload/image", two, 1), "up (1).png", "", "input");
    expect_upload(upload("/upload/image", two, 1), "up (1).png", "", "input"); /* same bytes as (1) */
    struct part three[] = {{"image", "up.png", png1, l1 - 1}};
    /* (a truncated PNG still starts like one) */
    expect_upload(upload("/upload/image", three, 1), "up (2).png", "", "input");
    /* overwrite=true replaces */
    struct part ow[] = {{"image", "up.png", png2, l2}, {"overwrite", NULL, "true", 4}};
    expect_upload(upload("/upload/image", ow, 2), "up.png", "", "input");
    snprintf(p, sizeof p, "%s/up.png", DIR_INPUT);
    stored = slurp(p, &got);
    assert_int_equal(got, l2);
    free(stored);
    /* subfolder and type */
    struct part sub[] = {{"subfolder", NULL, "pets/cats", 9}, {"type", NULL, "temp", 4}, {"image", "c.png", png1, l1}};
    expect_upload(upload("/upload/image", sub, 3), "c.png", "pets/cats", "temp");
    snprintf(p, sizeof p, "%s/pets/cats/c.png", DIR_TEMP);
    assert_int_equal(access(p, F_OK), 0);

    /* a body of several hundred KiB arrives whole (CivetWeb hands it over in chunks) */
    size_t mid = MAX_UPLOAD / 2;
    char *midbuf = malloc(mid);
    for (size_t i = 0; i < mid; i++) midbuf[i] = (char)(i * 31 + 7);
    memcpy(midbuf, png1, 16);
    struct part half[] = {{"image", "half.png", midbuf, mid}};
    expect_upload(upload("/upload/image", half, 1), "half.png", "", "input");
    snprintf(p, sizeof p, "%s/half.png", DIR_INPUT);
    stored = slurp(p, &got);
    assert_int_equal(got, mid);
    assert_memory_equal(stored, midbuf, mid);
    free(stored);
    free(midbuf);

    /* refusals */
    struct part notimg[] = {{"image", "x.png", "hello, not an image", 19}};
    expect_error(upload("/upload/image", notimg, 1), 400, "invalid_image");
    struct part trav[] = {{"subfolder", NULL, "../../etc", 9}, {"image", "t.png", png1, l1}};
    expect_error(upload("/upload/image", trav, 2), 400, "invalid_subfolder");
    struct part abs_[] = {{"subfolder", NULL, "/tmp", 4}, {"image", "t.png", png1, l1}};
    expect_error(upload("/upload/image", abs_, 2), 400, "invalid_subfolder");
    struct part badtype[] = {{"type", NULL, "models", 6}, {"image", "t.png", png1, l1}};
    expect_error(upload("/upload/image", badtype, 2), 400, "invalid_type");
    struct part nofile[] = {{"subfolder", NULL, "", 0}};
    expect_error(upload("/upload/image", nofile, 1), 400, "no_image");
    expect_error(request(PORT, "POST", "/upload/image", "Content-Type: application/json\r\n", "{}", 2), 400, "invalid_form");
    /* too large: over max_upload_size */
    size_t big = MAX_UPLOAD + 1000;
    char *huge = calloc(1, big);
    memcpy(huge, png1, l1);
    struct part large[] = {{"image", "big.png", huge, big}};
    expect_error(upload("/upload/image", large, 1), 413, "request_too_large");
    free(huge);
    free(png1);
    free(png2);
}

static void test_upload_mask(void **state) {
    char p[400];
    struct png_text t[] = {{"prompt", "{\"a\": 1}"}};
    snprintf(p, sizeof p, "%s/orig.png", DIR_OUTPUT);
    write_png(p, 4, 4, 3, 30, t, 1);
    snprintf(p, sizeof p, "%s/mask.png", ROOT);
    write_png(p, 4, 4, 4, 40, NULL, 0);
    size_t ml;
    char *mask = slurp(p, &ml);
    const char *ref = "{\"filename\": \"orig.png\", \"subfolder\": \"\", \"type\": \"output\"}";
    struct part parts[] = {{"image", "masked.png", mask, ml}, {"original_ref", NULL, ref, strlen(ref)}};
    expect_upload(upload("/upload/mask", parts, 2), "masked.png", "", "input");

    struct png_image orig = {0}, m = {0}, out = {0};
    struct err err = {0};
    snprintf(p, sizeof p, "%s/orig.png", DIR_OUTPUT);
    assert_int_equal(png_read(p, &orig, &err), 0);
    assert_int_equal(png_decode(mask, ml, &m, &err), 0);
    snprintf(p, sizeof p, "%s/masked.png", DIR_INPUT);
    assert_int_equal(png_read(p, &out, &err), 0);
    assert_int_equal(out.w, 4);
    for (int i = 0; i < 16; i++) {
        assert_memory_equal(out.rgba + 4 * i, orig.rgba + 4 * i, 3);  /* colour of the original */
        assert_int_equal(out.rgba[4 * i + 3], m.rgba[4 * i + 3]);     /* alpha of the mask */
    }
    assert_non_null(png_image_text(&out, "prompt"));
    assert_string_equal(png_image_text(&out, "prompt"), "{\"a\": 1}");
    png_image_deinit(&orig);
    png_image_deinit(&m);
    png_image_deinit(&out);

    /* the original must exist, stay inside its folder and match the mask's size */
    const char *missing = "{\"filename\": \"nope.png\", \"type\": \"output\"}";
    struct part p2[] = {{"image", "m2.png", mask, ml}, {"original_ref", NULL, missing, strlen(missing)}};
    expect_error(upload("/upload/mask", p2, 2), 404, "not_found");
    const char *esc = "{\"filename\": \"orig.png\", \"subfolder\": \"../..\", \"type\": \"output\"}";
    struct part p3[] = {{"image", "m3.png", mask, ml}, {"original_ref", NULL, esc, strlen(esc)}};
    expect_error(upload("/upload/mask", p3, 2), 403, "forbidden");
    struct part p4[] = {{"image", "m4.png", mask, ml}};
    expect_error(upload("/upload/mask", p4, 1), 400, "invalid_original_ref");
    snprintf(p, sizeof p, "%s/small.png", DIR_OUTPUT);
    write_png(p, 2, 2, 3, 1, NULL, 0);
    const char *small = "{\"filename\": \"small.png [output]\"}";
    struct part p5[] = {{"image", "m5.png", mask, ml}, {"original_ref", NULL, small, strlen(small)}};
    expect_error(upload("/upload/mask", p5, 2), 400, "invalid_image");
    free(mask);
}

/* ===== Origin check and CORS ===== */

static void test_origin_and_cors(void **state) {
    char hdr[256];
    snprintf(hdr, sizeof hdr, "Origin: http://evil.example\r\n");
    expect_error(request(PORT, "POST", "/prompt", hdr, "{}", 2), 403, "forbidden");
    snprintf(hdr, sizeof hdr, "Origin: http://127.0.0.1:%d\r\n", PORT);
    struct resp r = request(PORT, "GET", "/prompt", hdr, NULL, 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.cors, "");
    resp_free(&r);
    r = request(PORT, "OPTIONS", "/api/prompt", NULL, NULL, 0); /* answered, as ComfyUI does */
    assert_int_equal(r.status, 200);
    assert_string_equal(r.cors, "");
    resp_free(&r);
    /* a socket from a foreign origin is refused */
    char eb[256];
    struct wsc dummy = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    struct mg_connection *c = mg_connect_websocket_client("127.0.0.1", PORT, 0, eb, sizeof eb, "/ws", "http://evil.example",
                                                          ws_data, ws_closed, &dummy);
    assert_null(c);

    /* a server with --enable-cors-header: headers on every reply, OPTIONS answered, no 403 */
    struct err err = {0};
    struct sched_opts so = {.n_cpu_workers = 1, .cpu_threads = 1, .paths = PATHS};
    struct sched *s = sched_new(&so, &err);
    assert_non_null(s);
    struct api_opts ao = {.port = -1, .paths = PATHS, .enable_cors = true, .cors_origin = "http://ui.example"};
    struct api_server *srv = api_server_new(&ao, s, &err);
    assert_non_null(srv);
    int port = api_server_port(srv, 0);
    r = request(port, "OPTIONS", "/prompt", "Origin: http://evil.example\r\n", NULL, 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.cors, "http://ui.example");
    resp_free(&r);
    r = request(port, "GET", "/api/prompt", "Origin: http://evil.example\r\n", NULL, 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.cors, "http://ui.example");
    resp_free(&r);
    api_server_stop(srv);
    sched_free(s);
    api_server_free(srv);
}

/* Binding a port that is taken fails with a message naming it. */
static void test_bind_failure(void **state) {
    struct err err = {0};
    struct sched_opts so = {.n_cpu_workers = 1, .cpu_threads = 1, .paths = PATHS};
    struct sched *s = sched_new(&so, &err);
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", PORT);
    struct api_opts ao = {.listen = listen, .paths = PATHS};
    assert_null(api_server_new(&ao, s, &err));
    assert_non_null(strstr(err.msg, listen));
    err = (struct err){0};
    struct api_opts bad = {.listen = "127.0.0.1:99999", .paths = PATHS};
    assert_null(api_server_new(&bad, s, &err));
    assert_int_equal(err.code, STATUS_ERR_INVALID);
    sched_free(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_info_routes),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_keep_alive_and_malformed),
        cmocka_unit_test(test_counter_and_ids),
        cmocka_unit_test(test_invalid_target),
        cmocka_unit_test(test_routing_and_isolation),
        cmocka_unit_test(test_ws_connect_status),
        cmocka_unit_test(test_ws_events_to_their_client),
        cmocka_unit_test(test_concurrent_submissions),
        cmocka_unit_test(test_interrupt_and_free),
        cmocka_unit_test(test_view),
        cmocka_unit_test(test_upload_image),
        cmocka_unit_test(test_upload_mask),
        cmocka_unit_test(test_bind_failure),
        cmocka_unit_test(test_origin_and_cors),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
