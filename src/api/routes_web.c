/* api/routes_web.c -- the files a browser loads: kiln's web console (the files of web/,
 * compiled in as api__web_assets by web/embed.cmake) at / and /kiln/console/, or, with
 * --front-end-root DIR, that folder's files at / (a ComfyUI frontend build), as ComfyUI
 * serves its frontend.
 * Owns: nothing past one request (a file is streamed through a fixed buffer).
 * Must not: serve anything outside DIR (".." segments and symlinks leading out are refused),
 * shadow an API route (the dispatcher tries the route table first), serve files under /api/.
 * Threads: CivetWeb handler threads; srv->front_root is fixed by api_server_new. */
#include "api/internal.h"

#include "base/log.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#define CONSOLE_PREFIX "/kiln/console"   /* the console's second home (always the console) */

/* ===== Types ===== */

/* Content-Type by extension: the types browsers need to run a frontend build (a script or
 * style sheet served as anything else is refused under nosniff). */
static const char *web_mime(const char *name) {
    static const char *const map[][2] = {
        {".html", "text/html; charset=utf-8"},       {".htm", "text/html; charset=utf-8"},
        {".js", "text/javascript; charset=utf-8"},   {".mjs", "text/javascript; charset=utf-8"},
        {".css", "text/css; charset=utf-8"},         {".json", "application/json"},
        {".map", "application/json"},                {".webmanifest", "application/manifest+json"},
        {".txt", "text/plain; charset=utf-8"},       {".xml", "application/xml"},
        {".svg", "image/svg+xml"},                   {".png", "image/png"},
        {".jpg", "image/jpeg"},                      {".jpeg", "image/jpeg"},
        {".gif", "image/gif"},                       {".webp", "image/webp"},
        {".avif", "image/avif"},                     {".ico", "image/x-icon"},
        {".woff", "font/woff"},                      {".woff2", "font/woff2"},
        {".ttf", "font/ttf"},                        {".otf", "font/otf"},
        {".wasm", "application/wasm"},               {".mp3", "audio/mpeg"},
        {".wav", "audio/wav"},                       {".ogg", "audio/ogg"},
        {".mp4", "video/mp4"},                       {".webm", "video/webm"},
    };
    const char *slash = strrchr(name, '/');
    const char *dot = strrchr(slash ? slash + 1 : name, '.');
    if (!dot) return "application/octet-stream";
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strcasecmp(dot, map[i][0]) == 0) return map[i][1];
    return "application/octet-stream";
}

/* ===== The built-in console ===== */

/* The embedded file called `name` ("index.html", "app.js"), or NULL. */
static const struct api_web_asset *console_asset(const char *name) {
    for (int i = 0; i < api__web_n_assets; i++)
        if (strcmp(api__web_assets[i].name, name) == 0) return &api__web_assets[i];
    return NULL;
}

/* Replies with an embedded file. no-cache: a browser revalidates, so a new kiln binary's
 * console is loaded at once. */
static void reply_asset(struct http_req *r, const struct api_web_asset *a) {
    http_reply(r, 200, web_mime(a->name), a->data, a->len,
               "Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n");
}

/* The console file a URI names: "/kiln/console/NAME" always, "/NAME" (one segment, "/" being
 * index.html) when no --front-end-root replaces the console at the root. NULL otherwise. */
static const struct api_web_asset *console_for_uri(const struct api_server *srv, const char *uri) {
    const char *name;
    if (strncmp(uri, CONSOLE_PREFIX "/", sizeof CONSOLE_PREFIX) == 0)
        name = uri + sizeof CONSOLE_PREFIX;
    else if (!srv->front_root[0] && uri[0] == '/')
        name = uri + 1;
    else
        return NULL;
    if (strchr(name, '/')) return NULL;
    return console_asset(*name ? name : "index.html");
}

bool api__web_public(const struct api_server *srv, const char *uri) {
    return uri && (strcmp(uri, CONSOLE_PREFIX) == 0 || console_for_uri(srv, uri) != NULL);
}

/* ===== --front-end-root ===== */

/* Whether rel ("assets/x.js") is a plain relative path: no empty, "." or ".." segment. */
static bool rel_path_ok(const char *rel) {
    if (!*rel || *rel == '/') return false;
    for (const char *s = rel; *s;) {
        size_t n = strcspn(s, "/");
        if (n == 0 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.')) return false;
        s += n;
        if (*s == '/') s++;
    }
    return true;
}

/* Streams DIR/rel. Replies 403 when rel leaves DIR (by ".." or a symlink), 404 when it is not
 * a regular file, else 200 with the file. */
static void reply_root_file(struct http_req *r, const char *rel) {
    const char *root = r->srv->front_root;
    if (!rel_path_ok(rel)) {
        log_warn("http: refused %s: not a plain path inside --front-end-root", r->ri->local_uri);
        http_reply_error(r, 403, "forbidden", "Path '%s' leaves the frontend folder", r->ri->local_uri);
        return;
    }
    char joined[PATH_MAX], real[PATH_MAX];
    int n = snprintf(joined, sizeof joined, "%s/%s", root, rel);
    if (n < 0 || (size_t)n >= sizeof joined) {
        http_reply_error(r, 404, "not_found", "No file %s", r->ri->local_uri);
        return;
    }
    if (!realpath(joined, real)) {
        http_reply_error(r, 404, "not_found", "No file %s", r->ri->local_uri);
        return;
    }
    size_t rl = strlen(root);
    bool inside = rl == 1 || (strncmp(real, root, rl) == 0 && (real[rl] == '/' || real[rl] == 0)); /* root "/" */
    if (!inside) {
        log_warn("http: refused %s: it resolves to %s, outside --front-end-root %s", r->ri->local_uri, real, root);
        http_reply_error(r, 403, "forbidden", "Path '%s' leaves the frontend folder", r->ri->local_uri);
        return;
    }
    FILE *f = fopen(real, "rb");
    struct stat st;
    if (!f || fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        if (f) fclose(f);
        http_reply_error(r, 404, "not_found", "No file %s", r->ri->local_uri);
        return;
    }
    const char *base = strrchr(rel, '/') ? strrchr(rel, '/') + 1 : rel;
    http_reply_file(r, web_mime(base), f, (size_t)st.st_size,
                    strcmp(base, "index.html") == 0 ? "Cache-Control: no-cache\r\n" : NULL);
    fclose(f);
}

/* ===== Routes ===== */

void api__get_index(struct http_req *r, const char *arg) {
    if (r->srv->front_root[0]) {
        reply_root_file(r, "index.html");
        return;
    }
    const struct api_web_asset *a = console_asset("index.html");
    if (a) reply_asset(r, a);
    else http_reply_error(r, 404, "not_found", "This kiln was built without its console (web/index.html)");
}

bool api__get_static(struct http_req *r) {
    const char *uri = r->ri->local_uri;
    if (!uri || strcmp(r->method, "GET") != 0) return false;
    if (strncmp(uri, "/api/", 5) == 0) return false; /* the frontend's files are not under /api */
    if (strcmp(uri, CONSOLE_PREFIX) == 0) {         /* relative links need the final slash */
        http_reply(r, 301, NULL, NULL, 0, "Location: " CONSOLE_PREFIX "/\r\n");
        return true;
    }
    const struct api_web_asset *a = console_for_uri(r->srv, uri);
    if (a) {
        reply_asset(r, a);
        return true;
    }
    if (!r->srv->front_root[0] || strncmp(uri, CONSOLE_PREFIX "/", sizeof CONSOLE_PREFIX) == 0) return false;
    reply_root_file(r, uri + 1);
    return true;
}
