/* tests/unit/api/test_user.c -- the routes ComfyUI's frontend calls on load (api/routes_user.c),
 * on real servers in-process over a temp base folder (USER_DIR = base/user/default):
 *  - the reply shapes of /users, /i18n, /workflow_templates, /experiment/models[/{folder}]
 *    (compared with the folders and files the test made);
 *  - settings: {} before any file, POST merges into comfy.settings.json (read back from disk),
 *    /settings/{id} values and null, non-object bodies refused;
 *  - userdata: write (bytes on disk compared), read, list (recurse, full_info, split, hidden
 *    files left out), overwrite=false refused (409, file unchanged), move, delete, the v2
 *    listing, no temp file left behind, the body limit (413, nothing written);
 *  - traversal: "..%2F", double-encoded "..", absolute paths and symlinks leading out are
 *    refused (400/403) on every route, and nothing is written or deleted outside USER_DIR;
 *  - --api-token: every one of these routes needs the token.
 * Threads: assertions on the test thread only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "api/api.h"
#include "base/mem.h"
#include "graph/registry.h"
#include "sched/sched.h"

#include <civetweb.h>
#include <dirent.h>
#include <ftw.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

static char ROOT[256], BASE[300], USER[400], OUTSIDE[300];
static struct graph_paths PATHS;

/* ===== Servers ===== */

#include "unit/api/test_server.h"

static struct server server_start(const char *token, size_t max_body) {
    return server_start_with(1, PATHS, (struct api_opts){.api_token = token, .base_dir = BASE, .max_body_size = max_body});
}

/* ===== HTTP client ===== */

#include "unit/api/http_client.h"

static struct resp get(int port, const char *path) { return request(port, "GET", path, NULL, NULL, 0); }

static struct resp post(int port, const char *path, const char *body) {
    return request(port, "POST", path, NULL, body, body ? strlen(body) : 0);
}

/* The status of a request, the reply freed. */
static int status_of(struct resp r) {
    int s = r.status;
    resp_free(&r);
    return s;
}

/* The reply's body parsed as JSON (any value); fails when it is not JSON. */
static json_t *json_of(struct resp *r) {
    json_error_t e;
    json_t *j = json_loadb(r->body, r->len, JSON_DECODE_ANY, &e);
    if (!j) fail_msg("not JSON (%s): %s", e.text, r->body);
    return j;
}

/* Expects `status` and a body equal (as JSON) to the text `want`. */
static void expect_json(struct resp r, int status, const char *want) {
    if (r.status != status) fail_msg("status %d, want %d: %s", r.status, status, r.body);
    json_t *got = json_of(&r), *w = json_loads(want, JSON_DECODE_ANY, NULL);
    assert_non_null(w);
    if (!json_equal(got, w)) fail_msg("reply %s, want %s", r.body, want);
    json_decref(got);
    json_decref(w);
    resp_free(&r);
}

/* ===== Files ===== */



static bool exists(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0;
}

/* USER_DIR/rel holds exactly `text`. */
static void expect_user_file(const char *rel, const char *text) {
    char p[700];
    snprintf(p, sizeof p, "%s/%s", USER, rel);
    size_t n;
    char *got = slurp(p, &n);
    if (!got) fail_msg("%s is missing", p);
    if (n != strlen(text) || memcmp(got, text, n) != 0) fail_msg("%s holds '%s', want '%s'", p, got, text);
    free(got);
}

/* No ".kiln-tmp-*" file left in folder. */
static void expect_no_temp(const char *folder) {
    DIR *d = opendir(folder);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, ".kiln-tmp-", 10)) fail_msg("temp file %s left in %s", e->d_name, folder);
    closedir(d);
}

/* Removes USER_DIR and base/user: the next test starts with no user data. */
static void user_clear(void) {
    char p[400];
    snprintf(p, sizeof p, "%s/user", BASE);
    rm_tree(p);
}

/* ===== Small routes ===== */

static void test_shapes(void **state) {
    struct server s = server_start(NULL, 0);
    expect_json(get(s.port, "/users"), 200, "{\"storage\": \"server\", \"migrated\": true}");
    expect_json(get(s.port, "/api/users"), 200, "{\"storage\": \"server\", \"migrated\": true}");
    expect_json(get(s.port, "/api/i18n"), 200, "{}");
    expect_json(get(s.port, "/api/workflow_templates"), 200, "{}");

    /* the model library: each folder with its absolute path; configs and custom_nodes left out */
    char models_abs[PATH_MAX];
    assert_non_null(realpath(PATHS.models, models_abs));
    struct resp r = get(s.port, "/api/experiment/models");
    assert_int_equal(r.status, 200);
    json_t *j = json_of(&r);
    assert_true(json_is_array(j));
    bool seen_ckpt = false;
    size_t i;
    json_t *v;
    json_array_foreach(j, i, v) {
        const char *name = json_string_value(json_object_get(v, "name"));
        assert_non_null(name);
        assert_string_not_equal(name, "configs");
        assert_string_not_equal(name, "custom_nodes");
        json_t *folders = json_object_get(v, "folders");
        assert_int_equal(json_array_size(folders), 1);
        char want[PATH_MAX + 64];
        snprintf(want, sizeof want, "%s/%s", models_abs, name);
        assert_string_equal(json_string_value(json_array_get(folders, 0)), want);
        seen_ckpt |= !strcmp(name, "checkpoints");
    }
    assert_true(seen_ckpt);
    json_decref(j);
    resp_free(&r);

    /* the files of one folder: the model files the test made (not the .txt) */
    expect_json(get(s.port, "/api/experiment/models/checkpoints"), 200,
                "[{\"name\": \"a.safetensors\", \"pathIndex\": 0}, {\"name\": \"sub/b.ckpt\", \"pathIndex\": 0}]");
    expect_json(get(s.port, "/api/experiment/models/loras"), 200, "[]");
    assert_int_equal(status_of(get(s.port, "/api/experiment/models/nope")), 404);
    assert_int_equal(status_of(get(s.port, "/api/experiment/models/configs")), 404);
    server_stop(&s);
}

/* ===== Settings ===== */

/* The settings file on disk equals (as JSON) `want`. */
static void expect_settings_file(const char *want) {
    char p[700];
    snprintf(p, sizeof p, "%s/comfy.settings.json", USER);
    json_t *got = json_load_file(p, 0, NULL), *w = json_loads(want, 0, NULL);
    if (!got) fail_msg("%s is missing or not JSON", p);
    if (!json_equal(got, w)) fail_msg("%s differs from %s", p, want);
    json_decref(got);
    json_decref(w);
}

static void test_settings(void **state) {
    user_clear();
    struct server s = server_start(NULL, 0);
    expect_json(get(s.port, "/api/settings"), 200, "{}");
    expect_json(get(s.port, "/api/settings/Comfy.Theme"), 200, "null");

    assert_int_equal(status_of(post(s.port, "/api/settings", "{\"a\": 1, \"b\": \"x\"}")), 200);
    expect_settings_file("{\"a\": 1, \"b\": \"x\"}");
    expect_json(get(s.port, "/api/settings"), 200, "{\"a\": 1, \"b\": \"x\"}");

    /* merged, one level: b replaced, c added, a kept */
    assert_int_equal(status_of(post(s.port, "/settings", "{\"b\": \"y\", \"c\": [1, {\"d\": true}]}")), 200);
    expect_settings_file("{\"a\": 1, \"b\": \"y\", \"c\": [1, {\"d\": true}]}");
    expect_json(get(s.port, "/api/settings/a"), 200, "1");
    expect_json(get(s.port, "/api/settings/c"), 200, "[1, {\"d\": true}]");
    expect_json(get(s.port, "/api/settings/zz"), 200, "null");

    /* one id, any value */
    assert_int_equal(status_of(post(s.port, "/api/settings/Comfy.ColorPalette", "\"dark\"")), 200);
    assert_int_equal(status_of(post(s.port, "/api/settings/a", "{\"nested\": 2.5}")), 200);
    expect_json(get(s.port, "/api/settings/Comfy.ColorPalette"), 200, "\"dark\"");
    expect_settings_file("{\"a\": {\"nested\": 2.5}, \"b\": \"y\", \"c\": [1, {\"d\": true}], "
                         "\"Comfy.ColorPalette\": \"dark\"}");

    /* refused bodies change nothing */
    assert_int_equal(status_of(post(s.port, "/api/settings", "[1, 2]")), 400);
    assert_int_equal(status_of(post(s.port, "/api/settings", "{broken")), 400);
    assert_int_equal(status_of(post(s.port, "/api/settings/x", "")), 400);
    expect_json(get(s.port, "/api/settings/b"), 200, "\"y\"");
    expect_no_temp(USER);
    server_stop(&s);
}

/* ===== User data ===== */

/* GET /userdata?QUERY must answer exactly the JSON `want`. */
static void expect_list(int port, const char *query, const char *want) {
    char path[512];
    snprintf(path, sizeof path, "/api/userdata?%s", query);
    expect_json(get(port, path), 200, want);
}

static void test_userdata(void **state) {
    user_clear();
    struct server s = server_start(NULL, 0);
    char p[700];
    /* nothing stored yet: the v2 root is empty, a folder is not found */
    expect_json(get(s.port, "/api/v2/userdata"), 200, "[]");
    assert_int_equal(status_of(get(s.port, "/api/userdata?dir=workflows")), 404);
    assert_int_equal(status_of(get(s.port, "/api/userdata")), 400);

    /* write: the reply is the path; the bytes land in USER_DIR (made on the first write) */
    expect_json(post(s.port, "/api/userdata/workflows%2Fa.json", "{\"nodes\": [1]}"), 200, "\"workflows/a.json\"");
    expect_user_file("workflows/a.json", "{\"nodes\": [1]}");
    struct resp r = get(s.port, "/api/userdata/workflows%2Fa.json");
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"nodes\": [1]}");
    assert_string_equal(r.ctype, "application/json");
    resp_free(&r);
    assert_int_equal(status_of(get(s.port, "/api/userdata/workflows%2Fnone.json")), 404);

    /* overwrite=false on an existing file: 409, unchanged; overwrite=true replaces it */
    assert_int_equal(status_of(post(s.port, "/api/userdata/workflows%2Fa.json?overwrite=false", "other")), 409);
    expect_user_file("workflows/a.json", "{\"nodes\": [1]}");
    expect_json(post(s.port, "/api/userdata/workflows%2Fa.json?overwrite=true", "v2!"), 200, "\"workflows/a.json\"");
    expect_user_file("workflows/a.json", "v2!");

    /* full_info: {path, size, modified} of the file as written */
    r = post(s.port, "/api/userdata/workflows%2Fsub%2Fb.json?full_info=true", "0123456789");
    assert_int_equal(r.status, 200);
    json_t *j = json_of(&r);
    assert_string_equal(json_string_value(json_object_get(j, "path")), "workflows/sub/b.json");
    snprintf(p, sizeof p, "%s/workflows/sub/b.json", USER);
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(json_integer_value(json_object_get(j, "size")), 10);
    assert_int_equal(json_integer_value(json_object_get(j, "modified")) / 1000, st.st_mtime);
    json_decref(j);
    resp_free(&r);
    snprintf(p, sizeof p, "%s/workflows/.hidden", USER);
    put_file(p, "h");

    /* listings: relative names, hidden files left out, sorted */
    expect_list(s.port, "dir=workflows", "[\"a.json\"]");
    expect_list(s.port, "dir=workflows&recurse=true", "[\"a.json\", \"sub/b.json\"]");
    expect_list(s.port, "dir=workflows&recurse=true&split=true",
                "[[\"a.json\", \"a.json\"], [\"sub/b.json\", \"sub\", \"b.json\"]]");
    r = get(s.port, "/api/userdata?dir=workflows&recurse=true&full_info=true");
    assert_int_equal(r.status, 200);
    j = json_of(&r);
    assert_int_equal(json_array_size(j), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(j, 0), "path")), "a.json");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(j, 0), "size")), 3);
    assert_string_equal(json_string_value(json_object_get(json_array_get(j, 1), "path")), "sub/b.json");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(j, 1), "size")), 10);
    json_decref(j);
    resp_free(&r);
    assert_int_equal(status_of(get(s.port, "/api/userdata?dir=nope")), 404);

    /* v2: folders first, then files by name; paths from USER_DIR; files with size */
    r = get(s.port, "/api/v2/userdata?path=workflows");
    assert_int_equal(r.status, 200);
    j = json_of(&r);
    const char *want_names[] = {"sub", ".hidden", "a.json", "b.json"};
    const char *want_paths[] = {"workflows/sub", "workflows/.hidden", "workflows/a.json", "workflows/sub/b.json"};
    const char *want_types[] = {"directory", "file", "file", "file"};
    assert_int_equal(json_array_size(j), 4);
    for (size_t i = 0; i < 4; i++) {
        json_t *e = json_array_get(j, i);
        assert_string_equal(json_string_value(json_object_get(e, "name")), want_names[i]);
        assert_string_equal(json_string_value(json_object_get(e, "path")), want_paths[i]);
        assert_string_equal(json_string_value(json_object_get(e, "type")), want_types[i]);
        assert_true((json_object_get(e, "size") != NULL) == (i > 0));
    }
    assert_int_equal(json_integer_value(json_object_get(json_array_get(j, 3), "size")), 10);
    json_decref(j);
    resp_free(&r);
    /* the root: every level (os.walk), the folders "sub" and "workflows" first, by name */
    r = get(s.port, "/api/v2/userdata");
    j = json_of(&r);
    assert_int_equal(json_array_size(j), 5);
    assert_string_equal(json_string_value(json_object_get(json_array_get(j, 0), "path")), "workflows/sub");
    assert_string_equal(json_string_value(json_object_get(json_array_get(j, 1), "path")), "workflows");
    assert_string_equal(json_string_value(json_object_get(json_array_get(j, 1), "type")), "directory");
    assert_string_equal(json_string_value(json_object_get(json_array_get(j, 2), "type")), "file");
    json_decref(j);
    resp_free(&r);
    assert_int_equal(status_of(get(s.port, "/api/v2/userdata?path=nope")), 404);
    assert_int_equal(status_of(get(s.port, "/api/v2/userdata?path=workflows%2Fa.json")), 400);

    /* move: the reply is the new path; overwrite=false onto a file is 409; a missing source 404 */
    expect_json(post(s.port, "/api/userdata/workflows%2Fa.json/move/workflows%2Fc.json", NULL), 200,
                "\"workflows/c.json\"");
    snprintf(p, sizeof p, "%s/workflows/a.json", USER);
    assert_false(exists(p));
    expect_user_file("workflows/c.json", "v2!");
    assert_int_equal(status_of(post(s.port, "/api/userdata/workflows%2Fc.json/move/workflows%2Fsub%2Fb.json?overwrite=false",
                                    NULL)),
                     409);
    expect_user_file("workflows/c.json", "v2!");
    expect_user_file("workflows/sub/b.json", "0123456789");
    assert_int_equal(status_of(post(s.port, "/api/userdata/workflows%2Fgone.json/move/x.json", NULL)), 404);
    r = post(s.port, "/api/userdata/workflows%2Fc.json/move/moved%2Fd.json?full_info=true", NULL);
    j = json_of(&r);
    assert_int_equal(r.status, 200);
    assert_string_equal(json_string_value(json_object_get(j, "path")), "moved/d.json");
    assert_int_equal(json_integer_value(json_object_get(j, "size")), 3);
    json_decref(j);
    resp_free(&r);
    expect_user_file("moved/d.json", "v2!");

    /* delete: 204 and gone; again 404 */
    assert_int_equal(status_of(request(s.port, "DELETE", "/api/userdata/moved%2Fd.json", NULL, NULL, 0)), 204);
    snprintf(p, sizeof p, "%s/moved/d.json", USER);
    assert_false(exists(p));
    assert_int_equal(status_of(request(s.port, "DELETE", "/api/userdata/moved%2Fd.json", NULL, NULL, 0)), 404);
    assert_int_equal(status_of(request(s.port, "PUT", "/api/userdata/x.json", NULL, NULL, 0)), 405);

    snprintf(p, sizeof p, "%s/workflows", USER);
    expect_no_temp(p);
    expect_no_temp(USER);
    server_stop(&s);

    /* a body over the server's limit: 413, nothing written */
    s = server_start(NULL, 1000);
    char big[2001];
    memset(big, 'x', 2000);
    big[2000] = 0;
    assert_int_equal(status_of(post(s.port, "/api/userdata/big.json", big)), 413);
    snprintf(p, sizeof p, "%s/big.json", USER);
    assert_false(exists(p));
    expect_json(post(s.port, "/api/userdata/small.json", "ok"), 200, "\"small.json\"");
    server_stop(&s);
}

/* ===== Traversal ===== */

/* Every refused request: 400 or 403. */
static void expect_refused(struct resp r, const char *what) {
    if (r.status != 400 && r.status != 403) fail_msg("%s: %d, want 400/403: %s", what, r.status, r.body);
    resp_free(&r);
}

static void test_traversal(void **state) {
    struct server s = server_start(NULL, 0);
    char p[700], q[900];
    /* USER_DIR/link -> OUTSIDE (a folder), USER_DIR/flink -> OUTSIDE/secret.txt */
    snprintf(p, sizeof p, "%s/secret.txt", OUTSIDE);
    put_file(p, "secret");
    snprintf(p, sizeof p, "%s/workflows", USER);
    mkdir(USER, 0777);
    mkdir(p, 0777);
    snprintf(p, sizeof p, "%s/link", USER);
    if (symlink(OUTSIDE, p) != 0) fail_msg("symlink %s", p);
    snprintf(p, sizeof p, "%s/flink", USER);
    snprintf(q, sizeof q, "%s/secret.txt", OUTSIDE);
    if (symlink(q, p) != 0) fail_msg("symlink %s", p);
    snprintf(p, sizeof p, "%s/user/secret.txt", BASE); /* USER_DIR/../secret.txt */
    put_file(p, "parent secret");

    /* ".." encoded, double-encoded and literal */
    expect_refused(get(s.port, "/api/userdata/..%2Fsecret.txt"), "GET ..%2F");
    expect_refused(get(s.port, "/userdata/..%252Fsecret.txt"), "GET ..%252F");
    expect_refused(get(s.port, "/api/userdata/workflows/../../secret.txt"), "GET literal ..");
    expect_refused(post(s.port, "/api/userdata/..%2Fpwn.txt", "x"), "POST ..%2F");
    expect_refused(post(s.port, "/api/userdata/..%2F..%2F..%2Fpwn.txt", "x"), "POST ..%2F..%2F");
    expect_refused(request(s.port, "DELETE", "/api/userdata/..%2Fsecret.txt", NULL, NULL, 0), "DELETE ..%2F");
    expect_refused(get(s.port, "/api/userdata?dir=.."), "list ..");
    expect_refused(get(s.port, "/api/userdata?dir=..%2F.."), "list ../..");
    expect_refused(get(s.port, "/api/v2/userdata?path=.."), "v2 ..");
    /* absolute paths */
    snprintf(q, sizeof q, "/api/userdata/%%2F%s%%2Fabs.txt", OUTSIDE + 1);
    expect_refused(post(s.port, q, "x"), "POST absolute");
    snprintf(q, sizeof q, "/api/userdata?dir=%s", OUTSIDE);
    expect_refused(get(s.port, q), "list absolute");
    snprintf(q, sizeof q, "/api/v2/userdata?path=%s", OUTSIDE);
    expect_refused(get(s.port, q), "v2 absolute");
    /* symlinks leading out */
    expect_refused(get(s.port, "/api/userdata/link%2Fsecret.txt"), "GET via link");
    expect_refused(get(s.port, "/api/userdata/flink"), "GET file link");
    expect_refused(post(s.port, "/api/userdata/link%2Fpwn.txt", "x"), "POST via link");
    expect_refused(request(s.port, "DELETE", "/api/userdata/flink", NULL, NULL, 0), "DELETE file link");
    expect_refused(request(s.port, "DELETE", "/api/userdata/link%2Fsecret.txt", NULL, NULL, 0), "DELETE via link");
    expect_refused(get(s.port, "/api/userdata?dir=link"), "list link");
    expect_refused(get(s.port, "/api/v2/userdata?path=link"), "v2 link");
    /* moves in and out */
    expect_json(post(s.port, "/api/userdata/workflows%2Fin.json", "in"), 200, "\"workflows/in.json\"");
    expect_refused(post(s.port, "/api/userdata/workflows%2Fin.json/move/link%2Fout.json", NULL), "move into link");
    expect_refused(post(s.port, "/api/userdata/workflows%2Fin.json/move/..%2Fout.json", NULL), "move to ..");
    expect_refused(post(s.port, "/api/userdata/flink/move/workflows%2Fstolen.json", NULL), "move from link");
    expect_refused(post(s.port, "/api/userdata/..%2Fsecret.txt/move/workflows%2Fstolen.json", NULL), "move from ..");
    /* settings ids are one segment: nothing to traverse, but the file stays in USER_DIR */

    /* the listings leave out what leads out */
    {
        struct resp r = get(s.port, "/api/v2/userdata");
        assert_int_equal(r.status, 200);
        assert_null(strstr(r.body, "link"));
        assert_null(strstr(r.body, "secret"));
        resp_free(&r);
        r = get(s.port, "/api/userdata?dir=.&recurse=true");
        assert_int_equal(r.status, 200);
        assert_null(strstr(r.body, "link"));
        resp_free(&r);
    }

    /* nothing written, moved or deleted outside */
    const char *never[] = {"pwn.txt", "abs.txt", "out.json"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", OUTSIDE, never[i]);
        assert_false(exists(p));
        snprintf(p, sizeof p, "%s/user/%s", BASE, never[i]);
        assert_false(exists(p));
        snprintf(p, sizeof p, "%s/%s", BASE, never[i]);
        assert_false(exists(p));
        snprintf(p, sizeof p, "%s/%s", ROOT, never[i]);
        assert_false(exists(p));
    }
    snprintf(p, sizeof p, "%s/secret.txt", OUTSIDE);
    size_t n;
    char *sec = slurp(p, &n);
    assert_non_null(sec);
    assert_string_equal(sec, "secret");
    free(sec);
    snprintf(p, sizeof p, "%s/user/secret.txt", BASE);
    assert_true(exists(p));
    expect_user_file("workflows/in.json", "in");
    snprintf(p, sizeof p, "%s/workflows/stolen.json", USER);
    assert_false(exists(p));
    server_stop(&s);
}

/* ===== --api-token ===== */

static void test_token(void **state) {
    struct server s = server_start("s3cret", 0);
    const char *paths[] = {"/api/users", "/api/settings", "/api/settings/a", "/api/userdata?dir=workflows",
                           "/api/userdata/workflows%2Fin.json", "/api/v2/userdata", "/api/i18n",
                           "/api/workflow_templates", "/api/experiment/models", "/api/experiment/models/checkpoints"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        int st = status_of(get(s.port, paths[i]));
        if (st != 401) fail_msg("GET %s without the token: %d, want 401", paths[i], st);
    }
    assert_int_equal(status_of(post(s.port, "/api/userdata/tok.json", "x")), 401);
    assert_int_equal(status_of(post(s.port, "/api/settings", "{\"t\": 1}")), 401);
    assert_int_equal(status_of(request(s.port, "DELETE", "/api/userdata/workflows%2Fin.json", NULL, NULL, 0)), 401);
    char p[700];
    snprintf(p, sizeof p, "%s/tok.json", USER);
    assert_false(exists(p));
    expect_user_file("workflows/in.json", "in");
    /* with it */
    const char *auth = "Authorization: Bearer s3cret\r\n";
    expect_json(request(s.port, "GET", "/api/users", auth, NULL, 0), 200, "{\"storage\": \"server\", \"migrated\": true}");
    expect_json(request(s.port, "POST", "/api/userdata/tok.json", auth, "x", 1), 200, "\"tok.json\"");
    expect_user_file("tok.json", "x");
    server_stop(&s);
}

/* ===== Fixture ===== */

static int group_setup(void **state) {
    snprintf(ROOT, sizeof ROOT, "/tmp/kiln_user_XXXXXX");
    if (!mkdtemp(ROOT)) return -1;
    snprintf(BASE, sizeof BASE, "%s/base", ROOT);
    snprintf(USER, sizeof USER, "%s/user/default", BASE);
    snprintf(OUTSIDE, sizeof OUTSIDE, "%s/outside", ROOT);
    mkdir(BASE, 0777);
    mkdir(OUTSIDE, 0777);
    static struct test_dirs dirs;
    PATHS = test_dirs_make(&dirs, BASE);
    const char *models = dirs.models;
    char p[700];
    snprintf(p, sizeof p, "%s/checkpoints", models);
    mkdir(p, 0777);
    snprintf(p, sizeof p, "%s/checkpoints/sub", models);
    mkdir(p, 0777);
    snprintf(p, sizeof p, "%s/checkpoints/a.safetensors", models);
    put_file(p, "a");
    snprintf(p, sizeof p, "%s/checkpoints/sub/b.ckpt", models);
    put_file(p, "b");
    snprintf(p, sizeof p, "%s/checkpoints/notes.txt", models);
    put_file(p, "n");
    return 0;
}

static int group_teardown(void **state) {
    rm_tree(ROOT);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shapes),
        cmocka_unit_test(test_settings),
        cmocka_unit_test(test_userdata),
        cmocka_unit_test(test_traversal),
        cmocka_unit_test(test_token),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
