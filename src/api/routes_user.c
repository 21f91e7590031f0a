/* api/routes_user.c -- the routes ComfyUI's own web frontend calls on load, so a frontend build
 * served with --front-end-root works: /users (single-user mode), /settings (USER_DIR/
 * comfy.settings.json), /userdata and /v2/userdata (the frontend's workflow storage, as
 * CO:app/user_manager.py), /i18n and /workflow_templates (empty), /experiment/models (the
 * model library, as CO:app/model_manager.py). USER_DIR = <base dir>/user/default.
 * Owns: the buffers of one request; the files it writes belong to USER_DIR.
 * Must not: read, list or write anything outside USER_DIR: a client's path with "..", an
 * absolute path or a symlink leading out is refused (400 / 403) before any file is touched.
 * Threads: CivetWeb handler threads; a check-then-write step (settings merge, overwrite=false,
 * move) holds srv->files_mu. Every write goes to a temp file in the target folder, then
 * rename(), so a reader never sees half a file. */
#include "api/internal.h"

#include "base/log.h"
#include "base/mem.h"
#include "graph/json.h"
#include "io/savepath.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define SETTINGS_FILE "comfy.settings.json" /* in USER_DIR (CO:app/app_settings.py) */
#define WALK_MAX_DEPTH 32                   /* folders deep a listing descends */

/* ===== Paths inside USER_DIR ===== */

/* Resolves a client's relative path `rel` (already URL-decoded once; decoded once more when it
 * still holds '%', as ComfyUI does) to out[n] = normpath(USER_DIR/rel). Returns 0, or the HTTP
 * status refusing it: 400 for an empty, absolute or ".." path, 403 when the result (symlinks of
 * its existing part resolved) leaves USER_DIR. *why gets the reason. Touches no file. */
static int user_resolve(const struct api_server *srv, const char *rel, char *out, size_t n, const char **why) {
    char dec[PATH_MAX];
    if (strlen(rel) >= sizeof dec) {
        *why = "the path is too long";
        return 400;
    }
    if (strchr(rel, '%'))
        mg_url_decode(rel, (int)strlen(rel), dec, (int)sizeof dec, 0);
    else
        snprintf(dec, sizeof dec, "%s", rel);
    if (!dec[0]) {
        *why = "no path given";
        return 400;
    }
    if (dec[0] == '/') {
        *why = "absolute paths are refused";
        return 400;
    }
    for (const char *s = dec; *s;) {
        size_t l = strcspn(s, "/");
        if (l == 2 && s[0] == '.' && s[1] == '.') {
            *why = "'..' is refused";
            return 400;
        }
        s += l;
        if (*s == '/') s++;
    }
    char joined[PATH_MAX + 8];
    int w = snprintf(joined, sizeof joined, "%s/%s", srv->user_dir, dec);
    if (w < 0 || (size_t)w >= PATH_MAX) {
        *why = "the path is too long";
        return 400;
    }
    io_normpath(joined, out, n);
    if (!io_path_within(srv->user_dir, out)) {
        *why = "the path leads outside the user folder";
        return 403;
    }
    return 0;
}

/* user_resolve, replying its refusal. Returns 0, or -1 once replied. */
static int user_path(struct http_req *r, const char *rel, char *out, size_t n) {
    const char *why = "";
    int status = user_resolve(r->srv, rel, out, n, &why);
    if (!status) return 0;
    const char *uri = r->ri->local_uri_raw ? r->ri->local_uri_raw : r->ri->local_uri; /* dot segments kept */
    log_warn("http: %s %s refused: '%s': %s", r->ri->request_method, uri, rel, why);
    http_reply_error(r, status, status == 403 ? "forbidden" : "invalid_path", "Path '%s': %s", rel, why);
    return -1;
}

/* The part of a resolved path after "USER_DIR/" ("" for USER_DIR itself). */
static const char *user_rel(const struct api_server *srv, const char *path) {
    size_t l = strlen(srv->user_dir);
    return path[l] == '/' ? path + l + 1 : path + l;
}

/* mkdir -p of the folder holding `path` (inside USER_DIR, checked by the caller). */
static int make_parent(const char *path) {
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", path);
    char *slash = strrchr(tmp, '/');
    if (!slash || slash == tmp) return 0;
    *slash = 0;
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(tmp, 0777) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    return mkdir(tmp, 0777) != 0 && errno != EEXIST ? -1 : 0;
}

/* Writes len bytes to path through a temp file of the same folder and rename(), making the
 * folder first. Returns 0, or -1 with errno (the temp file removed). */
static int write_atomic(const char *path, const void *data, size_t len) {
    if (make_parent(path)) return -1;
    char tmp[PATH_MAX + 32];
    const char *slash = strrchr(path, '/');
    int w = snprintf(tmp, sizeof tmp, "%.*s/.kiln-tmp-XXXXXX", (int)(slash - path), path);
    if (w < 0 || (size_t)w >= sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd = mkstemp(tmp);
    if (fd < 0) return -1;
    const char *p = data;
    size_t left = len;
    while (left) {
        ssize_t n = write(fd, p, left);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) goto fail;
        p += n;
        left -= (size_t)n;
    }
    if (fchmod(fd, 0644) != 0 || close(fd) != 0) {
        fd = -1;
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) != 0) goto fail;
    return 0;
fail:;
    int e = errno;
    if (fd >= 0) close(fd);
    unlink(tmp);
    errno = e;
    return -1;
}

/* A query flag as ComfyUI reads it: value.lower() == "true". */
static bool query_true(const struct http_req *r, const char *name) {
    char v[16];
    return http_query(r, name, v, sizeof v) > 0 && strcasecmp(v, "true") == 0;
}

/* overwrite: anything but "false" (absent included) allows it. */
static bool query_overwrite(const struct http_req *r) {
    char v[16];
    return !(http_query(r, "overwrite", v, sizeof v) > 0 && strcmp(v, "false") == 0);
}

/* ComfyUI's FileInfo of a file: {path (relative to USER_DIR), size, modified, created} with the
 * times in ms. New reference. */
static json_t *file_info(const struct api_server *srv, const char *path, const char *rel_to) {
    struct stat st;
    json_t *o = json_object();
    size_t l = strlen(rel_to);
    json_object_set_new(o, "path", json_string(path[l] == '/' ? path + l + 1 : path + l));
    if (stat(path, &st) == 0) {
        json_object_set_new(o, "size", json_integer((json_int_t)st.st_size));
        json_object_set_new(o, "modified",
                            json_integer((json_int_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000));
        json_object_set_new(o, "created",
                            json_integer((json_int_t)st.st_ctim.tv_sec * 1000 + st.st_ctim.tv_nsec / 1000000));
    }
    return o;
}

/* ===== /users, /i18n, /workflow_templates ===== */

void api__get_users(struct http_req *r, const char *arg) {
    /* single-user mode; "migrated": the frontend keeps its settings on the server */
    json_t *j = json_object();
    json_object_set_new(j, "storage", json_string("server"));
    json_object_set_new(j, "migrated", json_true());
    http_reply_json(r, 200, j);
}

void api__get_i18n(struct http_req *r, const char *arg) { http_reply_json(r, 200, json_object()); }

void api__get_workflow_templates(struct http_req *r, const char *arg) { http_reply_json(r, 200, json_object()); }

/* ===== Settings ===== */

/* Loads USER_DIR/comfy.settings.json into *out ({} when absent). Returns 0, or -1 after
 * replying 500 (unreadable file, not a JSON object). */
static int settings_load(struct http_req *r, json_t **out) {
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/%s", r->srv->user_dir, SETTINGS_FILE);
    char *buf = NULL;
    size_t len = 0;
    if (api__read_file(path, &buf, &len)) {
        if (errno == ENOENT) {
            *out = json_object();
            return 0;
        }
        http_reply_error(r, 500, "read_failed", "Cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    json_t *j = NULL;
    struct err err = {0};
    int rc = graph_json_loads(buf, len, &j, &err);
    mem_free(buf);
    if (rc || !json_is_object(j)) {
        json_decref(j);
        http_reply_error(r, 500, "invalid_settings", "%s is not a JSON object%s%s", path, rc ? ": " : "",
                         rc ? err.msg : "");
        return -1;
    }
    *out = j;
    return 0;
}

/* Writes the settings (4-space indent, as ComfyUI). Returns 0, or -1 after replying 500. */
static int settings_save(struct http_req *r, const json_t *settings) {
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/%s", r->srv->user_dir, SETTINGS_FILE);
    char *s = graph_json_dumps(settings, 4);
    int rc = write_atomic(path, s, strlen(s));
    mem_free(s);
    if (rc) {
        http_reply_error(r, 500, "write_failed", "Cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

void api__get_settings(struct http_req *r, const char *arg) {
    json_t *j;
    pthread_mutex_lock(&r->srv->files_mu);
    int rc = settings_load(r, &j);
    pthread_mutex_unlock(&r->srv->files_mu);
    if (!rc) http_reply_json(r, 200, j);
}

void api__get_setting(struct http_req *r, const char *arg) {
    json_t *j;
    pthread_mutex_lock(&r->srv->files_mu);
    int rc = settings_load(r, &j);
    pthread_mutex_unlock(&r->srv->files_mu);
    if (rc) return;
    json_t *v = json_object_get(j, arg);
    http_reply_json(r, 200, v ? json_incref(v) : json_null());
    json_decref(j);
}

/* POST /settings (a JSON object merged into the file, one level deep as dict merging) and
 * POST /settings/{id} (any JSON value stored under id). */
static void settings_post(struct http_req *r, const char *id) {
    json_t *body = NULL;
    if (http_read_json(r, false, &body)) return;
    if (!id && !json_is_object(body)) {
        json_decref(body);
        http_reply_error(r, 400, "invalid_settings", "POST /settings needs a JSON object");
        return;
    }
    json_t *settings;
    pthread_mutex_lock(&r->srv->files_mu);
    int rc = settings_load(r, &settings);
    if (!rc) {
        if (id)
            json_object_set(settings, id, body);
        else
            json_object_update(settings, body);
        rc = settings_save(r, settings);
        json_decref(settings);
    }
    pthread_mutex_unlock(&r->srv->files_mu);
    json_decref(body);
    if (!rc) http_reply_ok_empty(r);
}

void api__post_settings(struct http_req *r, const char *arg) { settings_post(r, NULL); }

void api__post_setting(struct http_req *r, const char *arg) { settings_post(r, arg); }

/* ===== Listings ===== */

/* Adds the files under abs (rel = its path from the listed folder, "" at the top) to out, as
 * ComfyUI's glob does: hidden names skipped, regular files only, folders descended when
 * recurse. Symlinks count only when they stay inside USER_DIR, and folders reached through
 * one are not descended. */
static void walk_files(const struct api_server *srv, const char *abs, const char *rel, bool recurse, int depth,
                       struct graph_strlist *out) {
    DIR *d = opendir(abs);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[PATH_MAX], q[PATH_MAX];
        int w1 = snprintf(p, sizeof p, "%s/%s", abs, e->d_name);
        int w2 = snprintf(q, sizeof q, "%s%s%s", rel, *rel ? "/" : "", e->d_name);
        if (w1 < 0 || w2 < 0 || (size_t)w1 >= sizeof p || (size_t)w2 >= sizeof q) continue;
        struct stat lst, st;
        if (lstat(p, &lst) != 0) continue;
        bool link = S_ISLNK(lst.st_mode);
        if (link && (!io_path_within(srv->user_dir, p) || stat(p, &st) != 0)) continue;
        if (!link) st = lst;
        if (S_ISREG(st.st_mode))
            graph_strlist_push(out, q);
        else if (S_ISDIR(st.st_mode) && recurse && !link && depth < WALK_MAX_DEPTH)
            walk_files(srv, p, q, recurse, depth + 1, out);
    }
    closedir(d);
}

void api__get_userdata_list(struct http_req *r, const char *arg) {
    char dir[PATH_MAX], path[PATH_MAX];
    int q = http_query(r, "dir", dir, sizeof dir);
    if (q <= 0 || !dir[0]) {
        http_reply_error(r, 400, "invalid_path", q < 0 ? "dir is too long" : "GET /userdata needs ?dir=");
        return;
    }
    if (user_path(r, dir, path, sizeof path)) return;
    struct stat st;
    if (stat(path, &st) != 0) {
        http_reply_error(r, 404, "not_found", "No folder '%s' in the user folder", dir);
        return;
    }
    bool recurse = query_true(r, "recurse"), full_info = query_true(r, "full_info"), split = query_true(r, "split");
    struct graph_strlist files = {0};
    if (S_ISDIR(st.st_mode)) walk_files(r->srv, path, "", recurse, 0, &files);
    graph_strlist_sort(&files);
    json_t *j = json_array();
    for (int i = 0; i < files.n; i++) {
        const char *rel = files.items[i];
        if (full_info) {
            char abs[PATH_MAX * 2];
            snprintf(abs, sizeof abs, "%s/%s", path, rel);
            json_array_append_new(j, file_info(r->srv, abs, path));
        } else if (split) {
            json_t *parts = json_array();
            json_array_append_new(parts, json_string(rel));
            for (const char *s = rel;;) {
                size_t l = strcspn(s, "/");
                json_array_append_new(parts, json_stringn(s, l));
                if (!s[l]) break;
                s += l + 1;
            }
            json_array_append_new(j, parts);
        } else {
            json_array_append_new(j, json_string(rel));
        }
    }
    graph_strlist_deinit(&files);
    http_reply_json(r, 200, j);
}

/* Adds every entry under abs to out as ComfyUI's v2 listing (os.walk): folders {name, path,
 * type} and files {name, path, type, size, modified (seconds)}, paths from USER_DIR. Symlinks
 * leading out of USER_DIR are left out; folders reached through one are not descended. */
static void walk_v2(const struct api_server *srv, const char *abs, int depth, json_t *out) {
    DIR *d = opendir(abs);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char p[PATH_MAX];
        int w = snprintf(p, sizeof p, "%s/%s", abs, e->d_name);
        if (w < 0 || (size_t)w >= sizeof p) continue;
        struct stat lst, st;
        if (lstat(p, &lst) != 0) continue;
        bool link = S_ISLNK(lst.st_mode);
        if (link && (!io_path_within(srv->user_dir, p) || stat(p, &st) != 0)) continue;
        if (!link) st = lst;
        json_t *o = json_object();
        json_object_set_new(o, "name", json_string(e->d_name));
        json_object_set_new(o, "path", json_string(user_rel(srv, p)));
        bool dir = S_ISDIR(st.st_mode);
        json_object_set_new(o, "type", json_string(dir ? "directory" : "file"));
        if (!dir) {
            json_object_set_new(o, "size", json_integer((json_int_t)st.st_size));
            json_object_set_new(o, "modified", json_real((double)st.st_mtim.tv_sec + st.st_mtim.tv_nsec * 1e-9));
        }
        json_array_append_new(out, o);
        if (dir && !link && depth < WALK_MAX_DEPTH) walk_v2(srv, p, depth + 1, out);
    }
    closedir(d);
}

/* ComfyUI's order: folders first, then by lower-cased name (the path breaks ties here). */
static int v2_cmp(const void *a, const void *b) {
    const json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    bool dx = !strcmp(json_string_value(json_object_get(x, "type")), "directory");
    bool dy = !strcmp(json_string_value(json_object_get(y, "type")), "directory");
    if (dx != dy) return dx ? -1 : 1;
    int c = strcasecmp(json_string_value(json_object_get(x, "name")), json_string_value(json_object_get(y, "name")));
    if (c) return c;
    return strcmp(json_string_value(json_object_get(x, "path")), json_string_value(json_object_get(y, "path")));
}

void api__get_userdata_v2(struct http_req *r, const char *arg) {
    char rel[PATH_MAX], path[PATH_MAX];
    int q = http_query(r, "path", rel, sizeof rel);
    if (q < 0) {
        http_reply_error(r, 400, "invalid_path", "path is too long");
        return;
    }
    bool base = q == 0 || !rel[0];
    if (base)
        snprintf(path, sizeof path, "%s", r->srv->user_dir);
    else if (user_path(r, rel, path, sizeof path))
        return;
    struct stat st;
    if (stat(path, &st) != 0) {
        if (base || !strcmp(path, r->srv->user_dir)) /* no user folder yet: nothing stored */
            http_reply_json(r, 200, json_array());
        else
            http_reply_error(r, 404, "not_found", "No path '%s' in the user folder", rel);
        return;
    }
    if (!S_ISDIR(st.st_mode)) {
        http_reply_error(r, 400, "invalid_path", "'%s' is not a folder", rel);
        return;
    }
    json_t *found = json_array();
    walk_v2(r->srv, path, 0, found);
    size_t n = json_array_size(found);
    json_t **v = mem_alloc((n ? n : 1) * sizeof *v);
    for (size_t i = 0; i < n; i++) v[i] = json_array_get(found, i);
    qsort(v, n, sizeof *v, v2_cmp);
    json_t *j = json_array();
    for (size_t i = 0; i < n; i++) json_array_append(j, v[i]);
    mem_free(v);
    json_decref(found);
    http_reply_json(r, 200, j);
}

/* ===== One file: /userdata/{file} ===== */

void api__get_userdata(struct http_req *r, const char *arg) {
    char path[PATH_MAX];
    if (user_path(r, arg, path, sizeof path)) return;
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f || fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        if (f) fclose(f);
        http_reply_error(r, 404, "not_found", "No file '%s' in the user folder", arg);
        return;
    }
    /* user data never renders inline (stored XSS), except the frontend's user.css */
    const char *rel = user_rel(r->srv, path);
    const char *dot = strrchr(rel, '.');
    bool css = strcmp(rel, "user.css") == 0;
    const char *type = css ? "text/css" : dot && !strcasecmp(dot, ".json") ? "application/json" : "application/octet-stream";
    http_reply_file(r, type, f, (size_t)st.st_size,
                    css ? "X-Content-Type-Options: nosniff\r\nContent-Disposition: inline\r\n"
                        : "X-Content-Type-Options: nosniff\r\nContent-Disposition: attachment\r\n");
    fclose(f);
}

/* The reply of a write or a move: the path from USER_DIR, or its FileInfo with full_info. */
static void reply_written(struct http_req *r, const char *path) {
    if (query_true(r, "full_info"))
        http_reply_json(r, 200, file_info(r->srv, path, r->srv->user_dir));
    else
        http_reply_json(r, 200, json_string(user_rel(r->srv, path)));
}

static bool is_regular(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* POST /userdata/{file}/move/{dest}: `at` is where "/move/" starts in arg. */
static void userdata_move(struct http_req *r, const char *arg, size_t at) {
    char src_rel[PATH_MAX], src[PATH_MAX], dst[PATH_MAX];
    snprintf(src_rel, sizeof src_rel, "%.*s", (int)at, arg);
    const char *dst_rel = arg + at + 6;
    if (user_path(r, src_rel, src, sizeof src)) return;
    if (!is_regular(src)) {
        http_reply_error(r, 404, "not_found", "No file '%s' in the user folder", src_rel);
        return;
    }
    if (user_path(r, dst_rel, dst, sizeof dst)) return;
    bool overwrite = query_overwrite(r);
    pthread_mutex_lock(&r->srv->files_mu);
    int status = 0, e = 0;
    if (!overwrite && access(dst, F_OK) == 0)
        status = 409;
    else if (make_parent(dst) != 0 || rename(src, dst) != 0)
        status = 500, e = errno;
    pthread_mutex_unlock(&r->srv->files_mu);
    if (status == 409) {
        http_reply_error(r, 409, "file_exists", "'%s' already exists (overwrite=false)", dst_rel);
        return;
    }
    if (status) {
        http_reply_error(r, 500, "move_failed", "Cannot move '%s' to '%s': %s", src_rel, dst_rel, strerror(e));
        return;
    }
    log_info("http: user data: moved %s -> %s", src_rel, dst_rel);
    reply_written(r, dst);
}

void api__post_userdata(struct http_req *r, const char *arg) {
    /* CivetWeb decodes %2F before kiln sees the URI, so "{file}/move/{dest}" is told from a file
     * path by its "/move/": the first split whose source is an existing file, else the first */
    const char *first = strstr(arg, "/move/");
    if (first) {
        size_t at = (size_t)(first - arg);
        for (const char *m = first; m; m = strstr(m + 1, "/move/")) {
            char rel[PATH_MAX], path[PATH_MAX];
            const char *why;
            snprintf(rel, sizeof rel, "%.*s", (int)(m - arg), arg);
            if (!user_resolve(r->srv, rel, path, sizeof path, &why) && is_regular(path)) {
                at = (size_t)(m - arg);
                break;
            }
        }
        userdata_move(r, arg, at);
        return;
    }
    char path[PATH_MAX];
    if (user_path(r, arg, path, sizeof path)) return;
    if (!strcmp(path, r->srv->user_dir)) {
        http_reply_error(r, 400, "invalid_path", "Path '%s' names the user folder itself", arg);
        return;
    }
    char *body = NULL;
    size_t len = 0;
    if (http_read_body(r, r->srv->max_body, &body, &len)) return;
    bool overwrite = query_overwrite(r);
    pthread_mutex_lock(&r->srv->files_mu);
    int status = 0, e = 0;
    if (!overwrite && access(path, F_OK) == 0)
        status = 409;
    else if (write_atomic(path, body, len) != 0)
        status = 400, e = errno; /* ComfyUI: an OSError is an invalid file name */
    pthread_mutex_unlock(&r->srv->files_mu);
    mem_free(body);
    if (status == 409) {
        http_reply_error(r, 409, "file_exists", "'%s' already exists (overwrite=false)", arg);
        return;
    }
    if (status) {
        http_reply_error(r, 400, "write_failed", "Cannot write '%s': %s", arg, strerror(e));
        return;
    }
    reply_written(r, path);
}

void api__delete_userdata(struct http_req *r, const char *arg) {
    char path[PATH_MAX];
    if (user_path(r, arg, path, sizeof path)) return;
    if (!is_regular(path)) {
        http_reply_error(r, 404, "not_found", "No file '%s' in the user folder", arg);
        return;
    }
    if (unlink(path) != 0) {
        http_reply_error(r, 500, "delete_failed", "Cannot delete '%s': %s", arg, strerror(errno));
        return;
    }
    http_reply(r, 204, NULL, NULL, 0, NULL);
}

/* ===== The model library: /experiment/models ===== */

/* The folders of folder_names_and_paths that the library shows (CO:app/model_manager.py leaves
 * out configs and custom_nodes). */
static const char *const LIBRARY_FOLDERS[] = {
    "checkpoints", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision", "style_models",
    "embeddings", "diffusers", "vae_approx", "controlnet", "gligen", "upscale_models", "hypernetworks",
    "photomaker", "classifiers", "model_patches", "audio_encoders",
};

void api__get_experiment_models(struct http_req *r, const char *arg) {
    const char *models = r->srv->opts.paths.models;
    char abs[PATH_MAX] = "";
    if (models && !realpath(models, abs)) snprintf(abs, sizeof abs, "%s", models);
    json_t *j = json_array();
    for (size_t i = 0; i < sizeof LIBRARY_FOLDERS / sizeof LIBRARY_FOLDERS[0]; i++) {
        json_t *o = json_object(), *folders = json_array();
        json_object_set_new(o, "name", json_string(LIBRARY_FOLDERS[i]));
        if (abs[0]) {
            char p[PATH_MAX + 64];
            snprintf(p, sizeof p, "%s/%s", abs, LIBRARY_FOLDERS[i]);
            json_array_append_new(folders, json_string(p));
        }
        json_object_set_new(o, "folders", folders);
        json_array_append_new(j, o);
    }
    http_reply_json(r, 200, j);
}

void api__get_experiment_models_folder(struct http_req *r, const char *arg) {
    bool known = false;
    for (size_t i = 0; i < sizeof LIBRARY_FOLDERS / sizeof LIBRARY_FOLDERS[0]; i++) known |= !strcmp(arg, LIBRARY_FOLDERS[i]);
    if (!known) {
        http_reply_error(r, 404, "not_found", "Unknown model folder '%s'", arg);
        return;
    }
    struct graph_strlist list = {0};
    struct err err = {0};
    if (graph_list_model_files(&r->srv->opts.paths, arg, &list, &err)) {
        graph_strlist_deinit(&list);
        http_reply_error(r, 500, "list_failed", "Cannot list models/%s: %s", arg, err.msg);
        return;
    }
    json_t *j = json_array();
    for (int i = 0; i < list.n; i++) {
        json_t *o = json_object();
        json_object_set_new(o, "name", json_string(list.items[i]));
        json_object_set_new(o, "pathIndex", json_integer(0));
        json_array_append_new(j, o);
    }
    graph_strlist_deinit(&list);
    http_reply_json(r, 200, j);
}
