/* tests/unit/api/test_web.c -- the files a browser loads (api/routes_web.c) and the WebSocket
 * extension the console uses (?watch=all, api/ws.c), on real servers in-process:
 *  - the console: every file of web/ is compiled in and served byte for byte (compared with
 *    the file on disk) with its Content-Type, at / and at /kiln/console/, HEAD included;
 *    unknown names, other methods and /api/NAME are 404;
 *  - --front-end-root: that folder's files with their types, index.html at /, API routes
 *    still first, ".." and symlinks leading out refused (403), folders and missing files 404,
 *    a folder that is not one refused at start;
 *  - --api-token: the console's files load without the token, everything else needs it;
 *  - watch=all: a watcher gets another client's events, each once; a plain socket does not;
 *  - the path and type rules themselves (CivetWeb already removes dot segments from URLs, so
 *    rel_path_ok is checked directly).
 * Threads: assertions on the test thread; WebSocket callbacks only record. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "api/routes_web.c" /* its static helpers too (rel_path_ok, web_mime) */

#include "api/api.h"
#include "base/mem.h"
#include "base/status.h"
#include "graph/json.h"
#include "sched/sched.h"

#include <civetweb.h>
#include <dirent.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define WEB_DIR KILN_TEST_DATA "/../../web"

static char ROOT[256], FE[300];
static struct graph_paths PATHS;

/* ===== A fake node: TSteps (output) reports `steps` progress steps ===== */

static int run_steps(struct node_run *c, const struct value *in, struct value *out, struct err *e) {
    for (int64_t i = 1; i <= in[0].i; i++) {
        usleep(2000);
        int rc = node_progress(c, i, in[0].i, e);
        if (rc) return rc;
    }
    json_t *a = json_array();
    json_array_append_new(a, json_string("done"));
    json_object_set_new(c->ui, "text", a);
    return 0;
}

static const struct node_class T_STEPS = {
    .name = "TSteps", .output_node = true,
    .required = (const struct node_input[]){{.name = "steps", .kind = NODE_INPUT_INT, .flags = NODE_IN_DEFAULT},
                                            NODE_INPUTS_END},
    .run = run_steps};

/* ===== Servers ===== */

#include "unit/api/test_server.h"

/* A sched of n CPU devices and a server on a free loopback port; front_root / token may be NULL. */
static struct server server_start(int n, const char *front_root, const char *token) {
    return server_start_with(n, PATHS, (struct api_opts){.front_end_root = front_root, .api_token = token});
}

/* ===== HTTP client ===== */

#include "unit/api/http_client.h"

static struct resp get(int port, const char *path) { return request(port, "GET", path, NULL, NULL, 0); }



/* GET port/path must be 200 with exactly the bytes of file `disk` and a type starting with `type`. */
static void expect_file(int port, const char *path, const char *disk, const char *type) {
    size_t want_len;
    char *want = slurp(disk, &want_len);
    if (!want) fail_msg("cannot read %s", disk);
    struct resp r = get(port, path);
    if (r.status != 200) fail_msg("GET %s: %d %s", path, r.status, r.body);
    if (strncmp(r.ctype, type, strlen(type)) != 0) fail_msg("GET %s: Content-Type %s, want %s", path, r.ctype, type);
    if (r.len != want_len || memcmp(r.body, want, want_len) != 0)
        fail_msg("GET %s: %zu bytes differ from %s (%zu bytes)", path, r.len, disk, want_len);
    free(want);
    resp_free(&r);
}

/* GET must answer `status` with a JSON error body (ComfyUI clients call json() on errors). */
static void expect_status(int port, const char *path, int status) {
    struct resp r = get(port, path);
    if (r.status != status) fail_msg("GET %s: %d, want %d: %s", path, r.status, status, r.body);
    if (status >= 400 && !strstr(r.body, "\"error\"")) fail_msg("GET %s: no JSON error body: %s", path, r.body);
    resp_free(&r);
}

/* ===== The console ===== */

static const char *type_of(const char *name) {
    const char *dot = strrchr(name, '.');
    if (!strcmp(dot, ".html")) return "text/html";
    if (!strcmp(dot, ".js")) return "text/javascript";
    if (!strcmp(dot, ".css")) return "text/css";
    if (!strcmp(dot, ".svg")) return "image/svg+xml";
    return NULL;
}

static void test_console_files(void **state) {
    struct server s = server_start(1, NULL, NULL);
    /* every console file of web/ is compiled in, and served as it is on disk */
    DIR *d = opendir(WEB_DIR);
    assert_non_null(d);
    int n_files = 0;
    for (struct dirent *e; (e = readdir(d));) {
        const char *dot = strrchr(e->d_name, '.');
        if (!dot || !type_of(e->d_name)) continue;
        n_files++;
        char path[512], disk[512];
        snprintf(disk, sizeof disk, "%s/%s", WEB_DIR, e->d_name);
        snprintf(path, sizeof path, "/%s", e->d_name);
        expect_file(s.port, path, disk, type_of(e->d_name));
        snprintf(path, sizeof path, "/kiln/console/%s", e->d_name);
        expect_file(s.port, path, disk, type_of(e->d_name));
    }
    closedir(d);
    assert_true(n_files >= 3); /* index.html, app.js, style.css at least */
    assert_int_equal(api__web_n_assets, n_files);

    expect_file(s.port, "/", WEB_DIR "/index.html", "text/html");
    expect_file(s.port, "/kiln/console/", WEB_DIR "/index.html", "text/html");
    struct resp r = get(s.port, "/");
    assert_string_equal(r.cache, "no-cache");
    assert_non_null(strstr(r.body, "src=\"app.js\"")); /* relative: works under a path prefix */
    resp_free(&r);
    r = get(s.port, "/api/"); /* ComfyUI serves its index under /api/ too */
    assert_int_equal(r.status, 200);
    resp_free(&r);
    r = get(s.port, "/kiln/console");
    assert_int_equal(r.status, 301);
    assert_string_equal(r.location, "/kiln/console/");
    resp_free(&r);
    r = request(s.port, "HEAD", "/app.js", NULL, NULL, 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.len, 0);
    size_t js_len;
    free(slurp(WEB_DIR "/app.js", &js_len));
    assert_int_equal(r.content_length, (long)js_len);
    resp_free(&r);

    /* nothing else is a file */
    expect_status(s.port, "/nope.js", 404);
    expect_status(s.port, "/api/app.js", 404);          /* the files are not under /api */
    expect_status(s.port, "/kiln/console/nope.css", 404);
    expect_status(s.port, "/kiln/console/x/app.js", 404);
    expect_status(s.port, "/x/app.js", 404);
    r = request(s.port, "POST", "/app.js", NULL, NULL, 0);
    assert_int_equal(r.status, 404);
    resp_free(&r);
    r = get(s.port, "/system_stats"); /* the API is untouched */
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.ctype, "application/json"));
    resp_free(&r);
    server_stop(&s);
}

/* ===== --front-end-root ===== */

/* FE: a frontend build (index.html, assets/, a folder, symlinks in and out), and a secret
 * file beside it that no URL may reach. */
static void make_frontend(void) {
    char p[512];
    snprintf(FE, sizeof FE, "%s/frontend", ROOT);
    const char *dirs[] = {"", "/assets", "/sub"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s%s", FE, dirs[i]);
        if (mkdir(p, 0777)) fail_msg("mkdir %s", p);
    }
    const char *files[][2] = {
        {"index.html", "<!doctype html><title>my frontend</title>\n"},
        {"assets/index-1a2b.js", "console.log('frontend');\n"},
        {"assets/index-1a2b.css", "body{margin:0}\n"},
        {"logo.png", "\x89PNG\r\n\x1a\nnot really"},
        {"data.blob", "opaque"},
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", FE, files[i][0]);
        put_file(p, files[i][1]);
    }
    snprintf(p, sizeof p, "%s/secret.txt", ROOT);
    put_file(p, "SECRET outside the frontend\n");
    snprintf(p, sizeof p, "%s/out.txt", FE);
    if (symlink("../secret.txt", p)) fail_msg("symlink %s", p);          /* leads out: refused */
    snprintf(p, sizeof p, "%s/same.js", FE);
    if (symlink("assets/index-1a2b.js", p)) fail_msg("symlink %s", p);   /* stays inside: served */
}

static void test_front_end_root(void **state) {
    char p[512];
    char fe_arg[320];
    snprintf(fe_arg, sizeof fe_arg, "%s/", FE); /* a trailing slash is fine */
    struct server s = server_start(1, fe_arg, NULL);
    char disk[512];
    snprintf(disk, sizeof disk, "%s/index.html", FE);
    expect_file(s.port, "/", disk, "text/html");
    expect_file(s.port, "/index.html", disk, "text/html");
    struct resp r = get(s.port, "/");
    assert_string_equal(r.cache, "no-cache");
    resp_free(&r);
    snprintf(disk, sizeof disk, "%s/assets/index-1a2b.js", FE);
    expect_file(s.port, "/assets/index-1a2b.js", disk, "text/javascript");
    expect_file(s.port, "/same.js", disk, "text/javascript");
    snprintf(disk, sizeof disk, "%s/assets/index-1a2b.css", FE);
    expect_file(s.port, "/assets/index-1a2b.css", disk, "text/css");
    snprintf(disk, sizeof disk, "%s/logo.png", FE);
    expect_file(s.port, "/logo.png", disk, "image/png");
    snprintf(disk, sizeof disk, "%s/data.blob", FE);
    expect_file(s.port, "/data.blob", disk, "application/octet-stream");
    /* the console keeps its second home; its files are no longer at the root */
    expect_file(s.port, "/kiln/console/", WEB_DIR "/index.html", "text/html");
    expect_file(s.port, "/kiln/console/app.js", WEB_DIR "/app.js", "text/javascript");
    expect_status(s.port, "/app.js", 404);
    /* API routes first, and the frontend's files are not under /api */
    r = get(s.port, "/prompt");
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "queue_remaining"));
    resp_free(&r);
    expect_status(s.port, "/api/assets/index-1a2b.js", 404);

    /* refused: out of the folder by a symlink or by "..", raw or percent-encoded */
    expect_status(s.port, "/out.txt", 403);
    const char *escapes[] = {"/../secret.txt", "/assets/../../secret.txt", "/%2e%2e/secret.txt",
                             "/assets/%2E%2E/%2e%2e/secret.txt", "/..%2fsecret.txt", "/assets/..%2f..%2fsecret.txt"};
    for (size_t i = 0; i < sizeof escapes / sizeof escapes[0]; i++) {
        r = get(s.port, escapes[i]);
        if (r.status == 200 || strstr(r.body, "SECRET")) fail_msg("GET %s escaped the folder: %d %s", escapes[i], r.status, r.body);
        if (r.status != 403 && r.status != 404) fail_msg("GET %s: %d, want 403 or 404", escapes[i], r.status);
        resp_free(&r);
    }
    /* folders and missing files */
    expect_status(s.port, "/sub/", 404);
    expect_status(s.port, "/sub", 404);
    expect_status(s.port, "/assets/missing.js", 404);
    server_stop(&s);

    /* a root that is not a folder stops the start, naming it */
    struct err err = {0};
    struct sched_opts so = {.n_cpu_workers = 1, .cpu_threads = 1, .paths = PATHS};
    struct sched *sc = sched_new(&so, &err);
    assert_non_null(sc);
    snprintf(p, sizeof p, "%s/no-such-folder", ROOT);
    struct api_opts ao = {.listen = "127.0.0.1", .port = -1, .paths = PATHS, .front_end_root = p};
    assert_null(api_server_new(&ao, sc, &err));
    assert_non_null(strstr(err.msg, "no-such-folder"));
    snprintf(p, sizeof p, "%s/index.html", FE);
    err = (struct err){0};
    assert_null(api_server_new(&ao, sc, &err));
    assert_non_null(strstr(err.msg, "not a folder"));
    sched_free(sc);
}

/* The checks under CivetWeb's own normalisation. */
static void test_path_rules(void **state) {
    const char *ok[] = {"index.html", "assets/index-1a2b.js", "a/b/c.css", "sub/", "..x", "x..", ".well-known/a"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        if (!rel_path_ok(ok[i])) fail_msg("'%s' refused", ok[i]);
    const char *bad[] = {"", "/etc/passwd", "..", "../x", "a/../../x", "a/..", "./x", "a/./b", "a//b", "a/../b"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (rel_path_ok(bad[i])) fail_msg("'%s' accepted", bad[i]);
    assert_string_equal(web_mime("assets/x.JS"), "text/javascript; charset=utf-8");
    assert_string_equal(web_mime("x.woff2"), "font/woff2");
    assert_string_equal(web_mime("x.wasm"), "application/wasm");
    assert_string_equal(web_mime("dir.d/README"), "application/octet-stream"); /* the dot is the folder's */
    assert_string_equal(web_mime("x.exe"), "application/octet-stream");
}

/* ===== --api-token ===== */

static void test_token(void **state) {
    struct server s = server_start(1, NULL, "s3cret");
    expect_file(s.port, "/", WEB_DIR "/index.html", "text/html");
    expect_file(s.port, "/app.js", WEB_DIR "/app.js", "text/javascript");
    expect_file(s.port, "/kiln/console/style.css", WEB_DIR "/style.css", "text/css");
    expect_status(s.port, "/system_stats", 401);
    expect_status(s.port, "/queue/all", 401);
    expect_status(s.port, "/api/", 401); /* only the console's own paths are public */
    expect_status(s.port, "/nope.js", 401);
    struct resp r = request(s.port, "GET", "/system_stats", "Authorization: Bearer s3cret\r\n", NULL, 0);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    server_stop(&s);

    /* with --front-end-root the frontend's files need the token as every route does */
    s = server_start(1, FE, "s3cret");
    expect_status(s.port, "/", 401);
    expect_status(s.port, "/assets/index-1a2b.js", 401);
    r = request(s.port, "GET", "/assets/index-1a2b.js", "Authorization: Bearer s3cret\r\n", NULL, 0);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    expect_file(s.port, "/kiln/console/", WEB_DIR "/index.html", "text/html");
    server_stop(&s);
}

/* ===== WebSocket: watch=all ===== */

#include "unit/api/ws_client.h"

/* Messages of `type` (NULL: any) about prompt id; for progress, their values in order. */
static int ws_count(struct wsc *w, const char *type, const char *id, int64_t *values) {
    pthread_mutex_lock(&w->mu);
    int k = 0;
    for (int i = 0; i < w->n; i++) {
        const json_t *m = w->msg[i];
        if (!msg_pid(m) || strcmp(msg_pid(m), id) != 0 || (type && strcmp(msg_type(m), type) != 0)) continue;
        if (values) values[k] = json_integer_value(json_object_get(msg_data(m), "value"));
        k++;
    }
    pthread_mutex_unlock(&w->mu);
    return k;
}

/* POST /prompt of one TSteps node for client `client`; the prompt_id into id[64]. */
static void queue_steps(int port, const char *client, int steps, char *id) {
    char body[256];
    snprintf(body, sizeof body,
             "{\"prompt\": {\"1\": {\"class_type\": \"TSteps\", \"inputs\": {\"steps\": %d}}}, \"client_id\": \"%s\"}",
             steps, client);
    char eb[256] = "";
    struct mg_connection *c = mg_connect_client("127.0.0.1", port, 0, eb, sizeof eb);
    assert_non_null(c);
    mg_printf(c, "POST /prompt HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: %zu\r\n\r\n%s",
              strlen(body), body);
    assert_true(mg_get_response(c, eb, sizeof eb, 10000) >= 0);
    assert_int_equal(mg_get_response_info(c)->status_code, 200);
    char buf[1024];
    int n = mg_read(c, buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = 0;
    mg_close_connection(c);
    json_t *j = NULL;
    assert_int_equal(graph_json_loads(buf, strlen(buf), &j, NULL), 0);
    snprintf(id, 64, "%s", json_string_value(json_object_get(j, "prompt_id")));
    json_decref(j);
}

static void test_watch_all(void **state) {
    struct server s = server_start(2, NULL, NULL);
    struct wsc *watcher = ws_open(s.port, "/ws?clientId=console&watch=all");
    struct wsc *owner = ws_open(s.port, "/ws?clientId=owner");
    struct wsc *other = ws_open(s.port, "/api/ws?clientId=other&watch=no");
    assert_int_equal(ws_wait(watcher, "status", NULL, false), 0);
    assert_int_equal(ws_wait(owner, "status", NULL, false), 0);
    assert_int_equal(ws_wait(other, "status", NULL, false), 0);

    enum { STEPS = 5 };
    char id[64], mine[64];
    queue_steps(s.port, "owner", STEPS, id);
    assert_true(ws_wait(owner, "executing", id, true) > 0);
    assert_true(ws_wait(watcher, "executing", id, true) > 0);
    usleep(100000); /* anything misrouted would have arrived by now */

    /* the watcher got exactly what the owner got about the prompt */
    int64_t seen[WS_MAX], want[WS_MAX];
    int np = ws_count(watcher, "progress", id, seen);
    assert_int_equal(np, STEPS);
    assert_int_equal(ws_count(owner, "progress", id, want), STEPS);
    for (int i = 0; i < STEPS; i++) assert_int_equal(seen[i], i + 1);
    assert_int_equal(ws_count(watcher, NULL, id, NULL), ws_count(owner, NULL, id, NULL));
    assert_int_equal(ws_count(watcher, "execution_start", id, NULL), 1);
    assert_int_equal(ws_count(watcher, "executed", id, NULL), 1);
    assert_int_equal(ws_count(watcher, "execution_success", id, NULL), 1);
    /* a socket without watch=all saw nothing of it (ComfyUI's rule) */
    assert_int_equal(ws_count(other, NULL, id, NULL), 0);

    /* the watcher's own prompt (other inputs: an identical one would come from the cache):
     * each event once, not twice */
    queue_steps(s.port, "console", STEPS + 2, mine);
    assert_true(ws_wait(watcher, "executing", mine, true) > 0);
    usleep(100000);
    assert_int_equal(ws_count(watcher, "progress", mine, NULL), STEPS + 2);
    assert_int_equal(ws_count(watcher, "execution_success", mine, NULL), 1);
    assert_int_equal(ws_count(owner, NULL, mine, NULL), 0);
    assert_int_equal(ws_count(other, NULL, mine, NULL), 0);

    ws_free(watcher);
    ws_free(owner);
    ws_free(other);
    server_stop(&s);
}

/* ===== Fixture ===== */


static int group_setup(void **state) {
    snprintf(ROOT, sizeof ROOT, "/tmp/kiln_web_XXXXXX");
    if (!mkdtemp(ROOT)) return -1;
    static struct test_dirs dirs;
    PATHS = test_dirs_make(&dirs, ROOT);
    graph_registry_add(&T_STEPS);
    make_frontend();
    return 0;
}

static int group_teardown(void **state) {
    graph_registry_reset();
    rm_tree(ROOT);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_console_files),
        cmocka_unit_test(test_front_end_root),
        cmocka_unit_test(test_path_rules),
        cmocka_unit_test(test_token),
        cmocka_unit_test(test_watch_all),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
