/* tests/unit/api/test_limits.c -- the server's limits and access control, in-process: a sched of
 * one CPU device with fake node classes, api_server with small limits (3 nodes, 1000 pixels,
 * batch 4, 2 WebSockets, a 1 s request timeout) and an API token. Covers 401 on every kind of
 * route (header, ?token= on /view and /ws only, WWW-Authenticate), too_many_nodes,
 * batch_too_large and image_too_large with their node_errors, the WebSocket cap (503, a freed
 * slot is reusable), oversized client messages (socket closed), and a stalled request that
 * neither blocks others nor outlives the request timeout.
 * Threads: assertions on the test thread; WebSocket callbacks only record. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "api/api.h"
#include "base/status.h"
#include "graph/json.h"
#include "sched/sched.h"

#include <arpa/inet.h>
#include <civetweb.h>
#include <ftw.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TOKEN "s3cret-token-42"
#define AUTH "Authorization: Bearer " TOKEN "\r\n"

static char ROOT[256], DIR_INPUT[300], DIR_OUTPUT[300], DIR_TEMP[300];
static struct sched *g_sched;
static struct api_server *g_srv;
static int PORT;

/* ===== Fake node class: TSize (output) width, height, batch_size ===== */

static int run_size(struct node_run *c, const struct value *in, struct value *out, struct err *e) { return 0; }

#define INT_IN(n) {.name = n, .kind = NODE_INPUT_INT, .flags = NODE_IN_DEFAULT}
static const struct node_class T_SIZE = {
    .name = "TSize", .output_node = true,
    .required = (const struct node_input[]){INT_IN("width"), INT_IN("height"), INT_IN("batch_size"), NODE_INPUTS_END},
    .run = run_size};

/* ===== HTTP client (http_client.h) on this test's server ===== */

#include "unit/api/http_client.h"

static struct resp req(const char *method, const char *path, const char *headers, const char *body) {
    return request(PORT, method, path, headers, body, body ? strlen(body) : 0);
}

static const char *err_type(const struct resp *r) {
    return json_string_value(json_object_get(json_object_get(r->json, "error"), "type"));
}

/* status and error.type (NULL: no error body expected); every error has ComfyUI's four fields */
static void expect(struct resp r, int status, const char *type) {
    if (r.status != status) fail_msg("status %d, want %d: %s", r.status, status, r.body);
    if (type) {
        json_t *e = json_object_get(r.json, "error");
        if (!err_type(&r) || strcmp(err_type(&r), type) != 0) fail_msg("error type: want %s in %s", type, r.body);
        assert_true(json_is_string(json_object_get(e, "message")));
        assert_true(json_is_string(json_object_get(e, "details")));
        assert_true(json_is_object(json_object_get(e, "extra_info")));
    }
    resp_free(&r);
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int raw_connect(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)PORT)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) fail_msg("connect");
    return fd;
}

/* ===== WebSocket client (ws_client.h) on this test's server ===== */

#include "unit/api/ws_client.h"

static int upgrade_status(const char *path);

/* Opens a socket; NULL when the upgrade is refused (*status then gets the status of a raw
 * upgrade request to the same path, with CivetWeb's client out of the way). */
static struct wsc *ws_open_to(const char *path, int *status) {
    struct wsc *w = ws_try_open(PORT, path, NULL, 0);
    if (status) *status = w ? 101 : upgrade_status(path);
    return w;
}

/* ws_open_to, retried for a second while earlier sockets finish closing on the server. */
static struct wsc *ws_open_retry(const char *path) {
    struct wsc *w = NULL;
    for (int i = 0; i < 50 && !w; i++) {
        w = ws_open_to(path, NULL);
        if (!w) usleep(20000);
    }
    if (!w) fail_msg("ws %s: refused for 1 s", path);
    return w;
}

/* Waits (5 s at most) until the socket got `n` text messages or closed; true when closed. */
static bool ws_wait_count(struct wsc *w, int n) {
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 5;
    pthread_mutex_lock(&w->mu);
    while (!w->closed && w->n_text < n && pthread_cond_timedwait(&w->cv, &w->mu, &dl) == 0) {
    }
    bool closed = w->closed;
    pthread_mutex_unlock(&w->mu);
    return closed;
}

/* ===== Fixture ===== */

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *ftw) { return remove(p); }

static int group_setup(void **state) {
    snprintf(ROOT, sizeof ROOT, "/tmp/kiln_api_limits_XXXXXX");
    if (!mkdtemp(ROOT)) return -1;
    snprintf(DIR_INPUT, sizeof DIR_INPUT, "%s/input", ROOT);
    snprintf(DIR_OUTPUT, sizeof DIR_OUTPUT, "%s/output", ROOT);
    snprintf(DIR_TEMP, sizeof DIR_TEMP, "%s/temp", ROOT);
    mkdir(DIR_INPUT, 0777);
    mkdir(DIR_OUTPUT, 0777);
    mkdir(DIR_TEMP, 0777);
    struct graph_paths paths = {.models = ROOT, .input = DIR_INPUT, .output = DIR_OUTPUT, .temp = DIR_TEMP};
    graph_registry_add(&T_SIZE);
    struct err err = {0};
    struct sched_opts so = {.n_cpu_workers = 1, .cpu_threads = 1, .paths = paths};
    g_sched = sched_new(&so, &err);
    if (!g_sched) fail_msg("sched_new: %s", err.msg);
    struct api_opts ao = {.listen = "127.0.0.1", .port = -1, .paths = paths, .threads = 16, .max_nodes = 3,
                          .max_pixels = 1000, .max_batch = 4, .max_ws = 2, .request_timeout_ms = 1000,
                          .api_token = TOKEN};
    g_srv = api_server_new(&ao, g_sched, &err);
    if (!g_srv) fail_msg("api_server_new: %s", err.msg);
    PORT = api_server_port(g_srv, 0);
    if (sched_start(g_sched, &err)) fail_msg("sched_start: %s", err.msg);
    return 0;
}

static int group_teardown(void **state) {
    api_server_stop(g_srv);
    sched_free(g_sched);
    api_server_free(g_srv);
    graph_registry_reset();
    nftw(ROOT, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

/* ===== Access control ===== */

static void test_token(void **state) {
    struct resp r = req("GET", "/queue", NULL, NULL);
    assert_int_equal(r.status, 401);
    assert_true(strncasecmp(r.www_auth, "Bearer", 6) == 0);
    assert_non_null(json_object_get(r.json, "node_errors"));
    expect(r, 401, "unauthorized");
    expect(req("GET", "/queue", "Authorization: Bearer wrong-token-42\r\n", NULL), 401, "unauthorized");
    expect(req("GET", "/queue", "Authorization: Bearer " TOKEN "x\r\n", NULL), 401, "unauthorized");
    expect(req("GET", "/queue", "Authorization: Bearer s3cret-token-4\r\n", NULL), 401, "unauthorized");
    expect(req("GET", "/queue", "Authorization: Basic " TOKEN "\r\n", NULL), 401, "unauthorized");
    expect(req("GET", "/queue", AUTH, NULL), 200, NULL);
    expect(req("GET", "/api/system_stats", AUTH, NULL), 200, NULL);
    expect(req("POST", "/prompt", NULL, "{}"), 401, "unauthorized");
    expect(req("GET", "/no/such/route", NULL, NULL), 401, "unauthorized"); /* nothing is revealed */
    /* ?token= is honoured on /view (404: no such file, past the check) and nowhere else */
    expect(req("GET", "/view?filename=none.png", NULL, NULL), 401, "unauthorized");
    expect(req("GET", "/view?filename=none.png&token=" TOKEN, NULL, NULL), 404, NULL);
    expect(req("GET", "/view?filename=none.png&token=nope", NULL, NULL), 401, "unauthorized");
    expect(req("GET", "/queue?token=" TOKEN, NULL, NULL), 401, "unauthorized");
    /* WebSocket upgrades: ?token= or the header */
    int st;
    assert_null(ws_open_to("/ws", &st));
    assert_int_equal(st, 401);
    assert_null(ws_open_to("/ws?token=wrong", &st));
    struct wsc *w = ws_open_to("/ws?clientId=a&token=" TOKEN, &st);
    assert_non_null(w);
    assert_false(ws_wait_count(w, 1)); /* the status message arrives */
    ws_free(w);
}

/* ===== Prompt limits ===== */

static void test_nodes(void **state) {
    const char *four = "{\"prompt\": {\"1\": {\"class_type\": \"TSize\", \"inputs\": {\"width\": 1, \"height\": 1, "
                       "\"batch_size\": 1}}, \"2\": {\"class_type\": \"TSize\", \"inputs\": {}}, \"3\": {\"class_type\": "
                       "\"TSize\", \"inputs\": {}}, \"4\": {\"class_type\": \"TSize\", \"inputs\": {}}}}";
    struct resp r = req("POST", "/prompt", AUTH, four);
    assert_true(strstr(r.body, "4 nodes") != NULL);
    assert_true(json_is_object(json_object_get(r.json, "node_errors")));
    expect(r, 400, "too_many_nodes");
    /* three nodes pass the limit */
    const char *three = "{\"prompt\": {\"1\": {\"class_type\": \"TSize\", \"inputs\": {\"width\": 1, \"height\": 1, "
                        "\"batch_size\": 1}}, \"2\": {\"class_type\": \"TSize\", \"inputs\": {\"width\": 1, \"height\": "
                        "1, \"batch_size\": 1}}, \"3\": {\"class_type\": \"TSize\", \"inputs\": {\"width\": 1, "
                        "\"height\": 1, \"batch_size\": 1}}}}";
    expect(req("POST", "/prompt", AUTH, three), 200, NULL);
}

/* POST /prompt with TSize nodes of the given (w, h, b) triples. */
static struct resp sizes(int n, const int (*whb)[3]) {
    char body[1024] = "{\"prompt\": {";
    for (int i = 0; i < n; i++) {
        size_t l = strlen(body);
        snprintf(body + l, sizeof body - l,
                 "%s\"%d\": {\"class_type\": \"TSize\", \"inputs\": {\"width\": %d, \"height\": %d, \"batch_size\": %d}}",
                 i ? ", " : "", i + 1, whb[i][0], whb[i][1], whb[i][2]);
    }
    strcat(body, "}}");
    return req("POST", "/prompt", AUTH, body);
}

static void test_sizes(void **state) {
    /* at the limits: 20*25*2 = 1000 pixels, batch 4 */
    expect(sizes(1, (const int[][3]){{20, 25, 2}}), 200, NULL);
    expect(sizes(1, (const int[][3]){{10, 25, 4}}), 200, NULL);
    expect(sizes(2, (const int[][3]){{20, 25, 1}, {10, 50, 1}}), 200, NULL);
    /* one pixel more, alone or summed over nodes */
    struct resp r = sizes(1, (const int[][3]){{20, 25, 3}});
    json_t *ne = json_object_get(json_object_get(r.json, "node_errors"), "1");
    assert_non_null(ne);
    assert_string_equal(json_string_value(json_object_get(ne, "class_type")), "TSize");
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(json_object_get(ne, "errors"), 0), "type")), "image_too_large");
    assert_true(strstr(r.body, "1500 pixels") != NULL);
    expect(r, 400, "image_too_large");
    expect(sizes(2, (const int[][3]){{20, 25, 1}, {1, 501, 1}}), 400, "image_too_large");
    expect(sizes(1, (const int[][3]){{1001, 1, 1}}), 400, "image_too_large");
    /* batch */
    r = sizes(1, (const int[][3]){{1, 1, 5}});
    ne = json_object_get(json_object_get(r.json, "node_errors"), "1");
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_array_get(json_object_get(ne, "errors"), 0), "extra_info"), "input_name")),
                        "batch_size");
    expect(r, 400, "batch_too_large");
}

/* ===== WebSocket limits ===== */

static void test_ws_cap(void **state) {
    int st;
    struct wsc *a = ws_open_retry("/ws?clientId=a&token=" TOKEN), *b = ws_open_retry("/ws?clientId=b&token=" TOKEN);
    assert_false(ws_wait_count(a, 1));
    assert_false(ws_wait_count(b, 1));
    struct wsc *c = ws_open_to("/ws?clientId=c&token=" TOKEN, &st);
    assert_null(c);
    assert_int_equal(st, 503);
    /* refusals do not leak slots: free one, and exactly one more fits again */
    ws_free(b);
    struct wsc *d = ws_open_retry("/ws?clientId=d&token=" TOKEN); /* the close handler runs shortly after */
    assert_null(ws_open_to("/ws?clientId=e&token=" TOKEN, &st));
    assert_int_equal(st, 503);
    ws_free(a);
    ws_free(d);
}

static void test_ws_message_size(void **state) {
    struct wsc *w = ws_open_retry("/ws?clientId=big&token=" TOKEN);
    assert_false(ws_wait_count(w, 1));
    /* a small message (the first: feature_flags) is answered */
    const char *ff = "{\"type\": \"feature_flags\", \"data\": {\"supports_preview_metadata\": true}}";
    mg_websocket_client_write(w->conn, MG_WEBSOCKET_OPCODE_TEXT, ff, strlen(ff));
    assert_false(ws_wait_count(w, 2));
    /* exactly the limit is kept, one byte more closes the socket */
    size_t n = API_WS_MAX_MESSAGE + 1;
    char *big = malloc(n);
    memset(big, ' ', n);
    mg_websocket_client_write(w->conn, MG_WEBSOCKET_OPCODE_TEXT, big, n - 1);
    usleep(200000);
    pthread_mutex_lock(&w->mu);
    assert_false(w->closed);
    pthread_mutex_unlock(&w->mu);
    mg_websocket_client_write(w->conn, MG_WEBSOCKET_OPCODE_TEXT, big, n);
    free(big);
    assert_true(ws_wait_count(w, 1000));
    ws_free(w);
}

/* ===== Slow clients ===== */

/* Reads until the server closes; returns the seconds that took (10 s at most). */
static double wait_closed(int fd, char *got, size_t n) {
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    double t0 = now_s();
    size_t used = 0;
    ssize_t k;
    while ((k = read(fd, got + used, n - used - 1)) > 0) used += (size_t)k;
    got[used] = 0;
    return now_s() - t0;
}

/* The status of a WebSocket upgrade request (a refused one is answered and closed). */
static int upgrade_status(const char *path) {
    int fd = raw_connect();
    char req[512], got[4096];
    snprintf(req, sizeof req,
             "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
             path);
    if (write(fd, req, strlen(req)) != (ssize_t)strlen(req)) fail_msg("write");
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ssize_t k = read(fd, got, sizeof got - 1);
    close(fd);
    int st = 0;
    if (k > 0) {
        got[k] = 0;
        sscanf(got, "HTTP/1.1 %d", &st);
    }
    return st;
}

static void test_stalled_client(void **state) {
    /* half a body, and half a header block, then silence */
    int body_fd = raw_connect(), head_fd = raw_connect();
    char half[256];
    snprintf(half, sizeof half,
             "POST /prompt HTTP/1.1\r\nHost: 127.0.0.1\r\n" AUTH "Content-Length: 1000\r\n\r\n{\"prompt\": {");
    assert_int_equal(write(body_fd, half, strlen(half)), (ssize_t)strlen(half));
    const char *head = "GET /queue HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    assert_int_equal(write(head_fd, head, strlen(head)), (ssize_t)strlen(head));
    /* others are served meanwhile, at once */
    double t0 = now_s();
    for (int i = 0; i < 5; i++) expect(req("GET", "/queue", AUTH, NULL), 200, NULL);
    assert_true(now_s() - t0 < 0.9);
    /* both stalled connections end around the 1 s request timeout, not at 10 s */
    char got[4096];
    double t = wait_closed(body_fd, got, sizeof got);
    assert_true(t < 5.0);
    if (*got && strncmp(got, "HTTP/1.1 4", 10) != 0) fail_msg("stalled body got: %s", got);
    t = wait_closed(head_fd, got, sizeof got);
    assert_true(t < 5.0);
    close(body_fd);
    close(head_fd);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_token),          cmocka_unit_test(test_nodes),
        cmocka_unit_test(test_sizes),          cmocka_unit_test(test_ws_cap),
        cmocka_unit_test(test_ws_message_size), cmocka_unit_test(test_stalled_client),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
