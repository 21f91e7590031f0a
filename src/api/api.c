/* api/api.c -- the server: options, CivetWeb start and stop, the route table and the dispatcher
 * (/api prefix, HEAD, the loopback Origin check, CORS, the --api-token check, then the routes,
 * then the browser's files of routes_web.c), the sched's event sink.
 * Owns: struct api_server and its CivetWeb context.
 * Must not: implement a route (routes_*.c do) or write to a socket outside http.c / ws.c.
 * Threads: api_server_* on the owner's thread; dispatch() on CivetWeb handler threads;
 * sink() on sched worker threads and HTTP threads (it only queues, see ws.c). */
#include "api/internal.h"

#include "base/clock.h"
#include "base/log.h"
#include "base/mem.h"
#include "base/status.h"
#include "graph/json.h"
#include "io/savepath.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

/* ===== Routes ===== */


typedef void (*route_fn)(struct http_req *r, const char *arg);

/* How a route's path matches. */
enum route_kind {
    ROUTE_EXACT,                     /* the path itself */
    ROUTE_SEGMENT,                   /* path + one non-empty segment: the arg */
    ROUTE_REST,                      /* path + the non-empty rest of the raw path ('/' and dot
                                        segments kept: the handler checks it) */
};

struct route {
    const char *method;              /* "GET", "POST" or "DELETE" (HEAD is served as GET) */
    const char *path;                /* exact path, or the prefix of "prefix/{arg}" */
    enum route_kind match;
    route_fn fn;
};

/* Every route is served bare and under /api (the dispatcher strips the prefix). */
static const struct route ROUTES[] = {
    {"GET", "/", ROUTE_EXACT, api__get_index},
    {"GET", "/prompt", ROUTE_EXACT, api__get_prompt},
    {"POST", "/prompt", ROUTE_EXACT, api__post_prompt},
    {"GET", "/queue", ROUTE_EXACT, api__get_queue},
    {"POST", "/queue", ROUTE_EXACT, api__post_queue},
    {"GET", "/queue/all", ROUTE_EXACT, api__get_queue_all},
    {"GET", "/history", ROUTE_EXACT, api__get_history},
    {"POST", "/history", ROUTE_EXACT, api__post_history},
    {"GET", "/history/", ROUTE_SEGMENT, api__get_history_id},
    {"POST", "/interrupt", ROUTE_EXACT, api__post_interrupt},
    {"POST", "/free", ROUTE_EXACT, api__post_free},
    {"GET", "/view", ROUTE_EXACT, api__get_view},
    {"POST", "/upload/image", ROUTE_EXACT, api__post_upload_image},
    {"POST", "/upload/mask", ROUTE_EXACT, api__post_upload_mask},
    {"GET", "/object_info", ROUTE_EXACT, api__get_object_info},
    {"GET", "/object_info/", ROUTE_SEGMENT, api__get_object_info_class},
    {"GET", "/system_stats", ROUTE_EXACT, api__get_system_stats},
    {"GET", "/embeddings", ROUTE_EXACT, api__get_embeddings},
    {"GET", "/extensions", ROUTE_EXACT, api__get_extensions},
    {"GET", "/models", ROUTE_EXACT, api__get_models},
    {"GET", "/models/", ROUTE_SEGMENT, api__get_models_folder},
    {"GET", "/features", ROUTE_EXACT, api__get_features},
    {"GET", "/gpus", ROUTE_EXACT, api__get_gpus},
    {"GET", "/metrics", ROUTE_EXACT, api__get_metrics},
    {"GET", "/users", ROUTE_EXACT, api__get_users},
    {"GET", "/settings", ROUTE_EXACT, api__get_settings},
    {"POST", "/settings", ROUTE_EXACT, api__post_settings},
    {"GET", "/settings/", ROUTE_SEGMENT, api__get_setting},
    {"POST", "/settings/", ROUTE_SEGMENT, api__post_setting},
    {"GET", "/userdata", ROUTE_EXACT, api__get_userdata_list},
    {"GET", "/userdata/", ROUTE_REST, api__get_userdata},
    {"POST", "/userdata/", ROUTE_REST, api__post_userdata},
    {"DELETE", "/userdata/", ROUTE_REST, api__delete_userdata},
    {"GET", "/v2/userdata", ROUTE_EXACT, api__get_userdata_v2},
    {"GET", "/i18n", ROUTE_EXACT, api__get_i18n},
    {"GET", "/workflow_templates", ROUTE_EXACT, api__get_workflow_templates},
    {"GET", "/experiment/models", ROUTE_EXACT, api__get_experiment_models},
    {"GET", "/experiment/models/", ROUTE_SEGMENT, api__get_experiment_models_folder},
};

/* Matches a request against a route; *arg gets the segment of a prefix route (the raw rest of
 * the path for ROUTE_REST). */
static bool route_match(const struct route *rt, const struct http_req *r, const char **arg) {
    const char *path = r->path;
    if (rt->match == ROUTE_EXACT) return strcmp(path, rt->path) == 0;
    size_t n = strlen(rt->path);
    if (rt->match == ROUTE_REST) {
        if (strncmp(r->raw_path, rt->path, n) != 0 || !r->raw_path[n]) return false;
        *arg = r->raw_path + n;
        return true;
    }
    if (strncmp(path, rt->path, n) != 0 || !path[n] || strchr(path + n, '/')) return false;
    *arg = path + n;
    return true;
}

/* Everything a request does after CivetWeb handed it over; runs on a big stack (see below). */
static void route(void *arg) {
    struct http_req *rq = arg;
    struct http_req r = *rq;
    struct api_server *srv = r.srv;
    const struct mg_request_info *ri = r.ri;
    const char *path = r.path;
    if (!api__origin_ok(srv, r.conn)) {
        log_warn("http: %s %s refused: Origin %s does not match the loopback Host %s (use --enable-cors-header)",
                 ri->request_method, ri->local_uri, http_header(&r, "Origin"), http_header(&r, "Host"));
        http_reply_error(&r, 403, "forbidden", "Origin %s does not match Host %s", http_header(&r, "Origin"),
                         http_header(&r, "Host"));
        goto out;
    }
    if (strcmp(r.method, "OPTIONS") == 0) { /* ComfyUI's middlewares answer every OPTIONS (a CORS
                                                preflight carries no Authorization: it passes) */
        http_reply(&r, 200, NULL, NULL, 0, NULL);
        goto out;
    }
    /* the console's own files hold no data: they load without --api-token, and the console
       asks for the token */
    bool public_file = strcmp(r.method, "GET") == 0 && api__web_public(srv, ri->local_uri);
    if (!public_file && !api__authorized(srv, r.conn, strcmp(path, "/view") == 0)) {
        log_warn("http: %s %s refused: missing or wrong API token (from %s)", ri->request_method, ri->local_uri,
                 ri->remote_addr);
        api__reply_unauthorized(&r);
        goto out;
    }
    bool path_known = false;
    for (size_t i = 0; i < sizeof ROUTES / sizeof ROUTES[0]; i++) {
        const char *a = NULL;
        if (!route_match(&ROUTES[i], &r, &a)) continue;
        path_known = true;
        if (strcmp(ROUTES[i].method, r.method) != 0) continue;
        ROUTES[i].fn(&r, a);
        if (!r.status) http_reply_error(&r, 500, "internal_error", "No reply for %s %s", r.method, path); /* NEVER */
        goto out;
    }
    if (path_known) {
        char allow[64] = "";
        for (size_t i = 0; i < sizeof ROUTES / sizeof ROUTES[0]; i++) {
            const char *a = NULL;
            if (!route_match(&ROUTES[i], &r, &a)) continue;
            size_t l = strlen(allow);
            snprintf(allow + l, sizeof allow - l, "%s%s", l ? ", " : "", ROUTES[i].method);
        }
        json_t *body = json_object();
        char msg[512];
        snprintf(msg, sizeof msg, "Method %s is not allowed on %s (allowed: %s)", ri->request_method, path, allow);
        json_object_set_new(body, "error", http_error_json("method_not_allowed", msg, NULL));
        char extra[96];
        snprintf(extra, sizeof extra, "Allow: %s\r\n", allow);
        char *s = graph_json_dumps(body, -1);
        json_decref(body);
        http_reply(&r, 405, "application/json; charset=utf-8", s, strlen(s), extra);
        mem_free(s);
        goto out;
    }
    if (api__get_static(&r)) goto out; /* the console, or --front-end-root's files */
    http_reply_error(&r, 404, "not_found", "No route for %s %s", ri->request_method, ri->local_uri);
out:
    rq->status = r.status;
}

/* CivetWeb runs handlers on threads with a 100 KiB stack (its USE_STACK_SIZE build), too small
 * for validation, the object_info walk or ASan builds: each request runs on a thread with
 * API_HANDLER_STACK bytes, the CivetWeb thread waiting for it. Those threads are kept (created
 * with the server): a thread created for a request during a dlopen (cuBLAS's, right after the
 * server starts) waited 0.2-0.3 s for it. */
static void *big_thread_main(void *p) {
    struct api_big_thread *t = p;
    pthread_mutex_lock(&t->mu);
    for (;;) {
        while (!t->fn && !t->stop) pthread_cond_wait(&t->cv, &t->mu);
        if (!t->fn) break; /* stop, nothing left to run */
        void (*fn)(void *) = t->fn;
        void *arg = t->arg;
        pthread_mutex_unlock(&t->mu);
        fn(arg);
        pthread_mutex_lock(&t->mu);
        t->fn = NULL;
        pthread_cond_broadcast(&t->cv); /* the caller waits for fn == NULL */
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

/* Starts srv's kept threads (a thread that cannot start is simply not used). */
static void big_threads_start(struct api_server *srv) {
    pthread_mutex_init(&srv->big_mu, NULL);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, API_HANDLER_STACK);
    for (int i = 0; i < API_BIG_THREADS; i++) {
        struct api_big_thread *t = &srv->big[i];
        pthread_mutex_init(&t->mu, NULL);
        pthread_cond_init(&t->cv, NULL);
        t->started = pthread_create(&t->tid, &attr, big_thread_main, t) == 0;
    }
    pthread_attr_destroy(&attr);
}

static void big_threads_stop(struct api_server *srv) {
    for (int i = 0; i < API_BIG_THREADS; i++) {
        struct api_big_thread *t = &srv->big[i];
        pthread_mutex_lock(&t->mu);
        t->stop = true;
        pthread_cond_broadcast(&t->cv);
        pthread_mutex_unlock(&t->mu);
        if (t->started) pthread_join(t->tid, NULL);
        pthread_mutex_destroy(&t->mu);
        pthread_cond_destroy(&t->cv);
    }
    pthread_mutex_destroy(&srv->big_mu);
}

/* A call run on a fresh big-stack thread (all kept ones busy, or none started). */
struct big_call {
    void (*fn)(void *);
    void *arg;
};

static void *big_stack_main(void *p) {
    struct big_call *call = p;
    call->fn(call->arg);
    return NULL;
}

void api__call_big_stack(struct api_server *srv, void (*fn)(void *), void *arg) {
    struct api_big_thread *t = NULL;
    pthread_mutex_lock(&srv->big_mu);
    for (int i = 0; i < API_BIG_THREADS && !t; i++)
        if (srv->big[i].started && !srv->big[i].busy) t = &srv->big[i];
    if (t) t->busy = true;
    pthread_mutex_unlock(&srv->big_mu);
    if (t) {
        pthread_mutex_lock(&t->mu);
        t->fn = fn;
        t->arg = arg;
        pthread_cond_broadcast(&t->cv);
        while (t->fn) pthread_cond_wait(&t->cv, &t->mu);
        pthread_mutex_unlock(&t->mu);
        pthread_mutex_lock(&srv->big_mu);
        t->busy = false;
        pthread_mutex_unlock(&srv->big_mu);
        return;
    }
    pthread_attr_t attr;
    pthread_t tid;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, API_HANDLER_STACK);
    struct big_call call = {fn, arg};
    if (pthread_create(&tid, &attr, big_stack_main, &call) == 0) {
        pthread_join(tid, NULL);
    } else {
        log_warn("http: no thread for a request handler; running it on CivetWeb's small stack");
        fn(arg);
    }
    pthread_attr_destroy(&attr);
}

static int dispatch(struct mg_connection *conn, void *cbdata) {
    struct api_server *srv = cbdata;
    const struct mg_request_info *ri = mg_get_request_info(conn);
    struct http_req r = {.conn = conn, .ri = ri, .srv = srv, .method = ri->request_method,
                         .port_device = api__port_device(srv, conn)};
    const char *path = ri->local_uri ? ri->local_uri : "/";
    if (strncmp(path, "/api", 4) == 0 && (path[4] == 0 || path[4] == '/')) path = path[4] ? path + 4 : "/";
    r.path = path;
    const char *raw = ri->local_uri_raw ? ri->local_uri_raw : path;
    if (strncmp(raw, "/api", 4) == 0 && (raw[4] == 0 || raw[4] == '/')) raw = raw[4] ? raw + 4 : "/";
    r.raw_path = raw;
    if (strcmp(r.method, "HEAD") == 0) {
        r.head = true;
        r.method = "GET";
    }
    const double t0 = log_get_level() == LOG_LEVEL_DEBUG ? clock_now() : 0;
    api__call_big_stack(srv, route, &r);
    log_debug("http: %s %s%s%s -> %d (%.1f ms)", ri->request_method, ri->local_uri, ri->query_string ? "?" : "",
              ri->query_string ? ri->query_string : "", r.status, 1e3 * (clock_now() - t0));
    return r.status ? r.status : 500;
}

/* CivetWeb's own errors (malformed requests, oversized headers): a JSON body like ours. */
static int on_http_error(struct mg_connection *conn, int status, const char *msg) {
    struct api_server *srv = mg_get_user_context_data(conn);
    if (!srv) return 1;
    struct http_req r = {.conn = conn, .ri = mg_get_request_info(conn), .srv = srv, .method = "GET"};
    http_reply_error(&r, status, status == 413 ? "request_too_large" : "bad_request", "%s",
                     msg && *msg ? msg : "Bad request");
    return 0;
}

static int on_log(const struct mg_connection *conn, const char *msg) {
    log_warn("civetweb: %s", msg);
    return 1;
}

/* ===== Helpers shared by the routes ===== */

/* Constant-time comparison of a client's token with the configured one: the time depends on
 * the configured token's length only. */
static bool token_equal(const char *want, const char *got) {
    size_t n = strlen(want), m = strlen(got);
    unsigned char d = (unsigned char)(n != m);
    for (size_t i = 0; i < n; i++) d |= (unsigned char)(want[i] ^ (i < m ? got[i] : 0));
    return d == 0;
}

bool api__authorized(const struct api_server *srv, const struct mg_connection *conn, bool allow_query) {
    if (!srv->api_token[0]) return true;
    const char *auth = mg_get_header(conn, "Authorization");
    if (auth) {
        while (*auth == ' ') auth++;
        if (strncasecmp(auth, "Bearer ", 7) == 0) {
            const char *t = auth + 7;
            while (*t == ' ') t++;
            char tok[sizeof srv->api_token];
            snprintf(tok, sizeof tok, "%s", t);
            for (size_t l = strlen(tok); l && (tok[l - 1] == ' ' || tok[l - 1] == '\t'); l--) tok[l - 1] = 0;
            if (token_equal(srv->api_token, tok)) return true;
        }
    }
    const char *q = mg_get_request_info(conn)->query_string;
    if (allow_query && q) {
        char tok[sizeof srv->api_token];
        if (mg_get_var(q, strlen(q), "token", tok, sizeof tok) >= 0 && token_equal(srv->api_token, tok)) return true;
    }
    return false;
}

void api__reply_unauthorized(struct http_req *r) {
    json_t *body = json_object();
    json_object_set_new(body, "error",
                        http_error_json("unauthorized", "Missing or wrong API token",
                                        "Send the header 'Authorization: Bearer <token>' (or ?token=<token> on /ws "
                                        "and /view); the server was started with --api-token"));
    json_object_set_new(body, "node_errors", json_object());
    char *s = graph_json_dumps(body, -1);
    json_decref(body);
    mg_disable_connection_keep_alive(r->conn);
    http_reply(r, 401, "application/json; charset=utf-8", s, strlen(s), "WWW-Authenticate: Bearer realm=\"kiln\"\r\n");
    mem_free(s);
}

/* Loopback as ComfyUI's is_loopback sees it, without DNS: 127.0.0.0/8, ::1, localhost. */
static bool is_loopback(const char *host) {
    if (!host || !*host) return false;
    if (strcmp(host, "localhost") == 0 || strcmp(host, "::1") == 0) return true;
    size_t n = strlen(host);
    if (n > 10 && strcmp(host + n - 10, ".localhost") == 0) return true;
    unsigned a, b, c, d;
    char end;
    return sscanf(host, "%u.%u.%u.%u%c", &a, &b, &c, &d, &end) == 4 && a == 127 && b < 256 && c < 256 && d < 256;
}

/* Splits "host[:port]" or "[v6][:port]" (lower-cased) into hostname and port presence. */
static void split_hostport(const char *in, char *host, size_t n, bool *has_port) {
    *has_port = false;
    host[0] = 0;
    if (in[0] == '[') {
        const char *e = strchr(in, ']');
        if (!e) return;
        snprintf(host, n, "%.*s", (int)(e - in - 1), in + 1);
        *has_port = e[1] == ':';
    } else {
        const char *colon = strrchr(in, ':');
        size_t l = colon ? (size_t)(colon - in) : strlen(in);
        snprintf(host, n, "%.*s", (int)l, in);
        *has_port = colon != NULL;
    }
    for (char *p = host; *p; p++) *p = (char)tolower((unsigned char)*p);
}

bool api__origin_ok(const struct api_server *srv, const struct mg_connection *conn) {
    if (srv->opts.enable_cors) return true;
    const char *host = mg_get_header(conn, "Host"), *origin = mg_get_header(conn, "Origin");
    if (!host || !origin) return true;
    /* origin netloc: between "://" and the next '/' (urlparse) */
    const char *p = strstr(origin, "://");
    char onet[256] = "", hnet[256];
    if (p) {
        p += 3;
        size_t l = strcspn(p, "/?#");
        snprintf(onet, sizeof onet, "%.*s", (int)l, p);
    }
    snprintf(hnet, sizeof hnet, "%s", host);
    for (char *q = onet; *q; q++) *q = (char)tolower((unsigned char)*q);
    for (char *q = hnet; *q; q++) *q = (char)tolower((unsigned char)*q);
    char hhost[256], ohost[256];
    bool hport, oport;
    split_hostport(hnet, hhost, sizeof hhost, &hport);
    split_hostport(onet, ohost, sizeof ohost, &oport);
    if (!is_loopback(hhost)) return true;
    /* a side without a port is compared by host name only (ComfyUI: "weird browsers") */
    const char *hd = oport ? hnet : hhost;
    const char *od = hport ? onet : ohost;
    if (!*hd || !*od) return true;
    return strcmp(hd, od) == 0;
}

int api__port_device(const struct api_server *srv, const struct mg_connection *conn) {
    if (!srv->gpu_base) return -1;
    int port = mg_get_request_info(conn)->server_port;
    int dev = port - srv->gpu_base;
    return dev >= 0 && dev < srv->n_devices ? dev : -1;
}

json_t *api__features(const struct api_server *srv) {
    json_t *f = json_object();
    json_object_set_new(f, "supports_preview_metadata", json_true());
    json_object_set_new(f, "max_upload_size", json_integer((json_int_t)srv->max_upload));
    return f;
}

void api__uuid4(char *out, bool hyphens) {
    unsigned char b[16];
    size_t got = 0;
    while (got < sizeof b) {
        ssize_t n = getrandom(b + got, sizeof b - got, 0);
        if (n > 0) got += (size_t)n;
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    static const char hex[] = "0123456789abcdef";
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (hyphens && (i == 4 || i == 6 || i == 8 || i == 10)) *o++ = '-';
        *o++ = hex[b[i] >> 4];
        *o++ = hex[b[i] & 15];
    }
    *o = 0;
}

void api__device_list(const struct api_server *srv, char *buf, size_t n) {
    size_t l = 0;
    buf[0] = 0;
    for (int i = 0; i < srv->n_devices && l < n; i++) {
        struct sched_device_info info;
        sched_device_info(srv->sched, i, &info);
        l += (size_t)snprintf(buf + l, n - l, "%s%d (%s)", i ? ", " : "", i, info.name);
    }
}

/* Parses a device index ("1", " 2 "); -1 when it is not a non-negative integer. */
static int parse_index(const char *s) {
    while (*s == ' ' || *s == '\t') s++;
    if (!isdigit((unsigned char)*s)) return -1;
    char *end;
    long v = strtol(s, &end, 10);
    while (*end == ' ' || *end == '\t') end++;
    return *end || v > 1000000 ? -1 : (int)v;
}

int api__scope(struct http_req *r) {
    const char *h = http_header(r, "X-TARGET-GPU");
    if (h && *h) {
        int dev = parse_index(h);
        if (dev < 0 || dev >= r->srv->n_devices) {
            char list[1024];
            api__device_list(r->srv, list, sizeof list);
            http_reply_error(r, 400, "invalid_target_gpu", "X-TARGET-GPU '%s' is not a device; devices: %s", h, list);
            return -2;
        }
        return dev;
    }
    return r->port_device;
}

/* ===== The event sink ===== */

static void sink(void *user, const char *client_id, const char *type, json_t *data) {
    struct api_server *srv = user;
    if (atomic_load(&srv->stopped)) {
        json_decref(data);
        return;
    }
    json_t *ev = json_object();
    json_object_set_new(ev, "type", json_string(type));
    json_object_set_new(ev, "data", data ? data : json_object());
    char *s = graph_json_dumps(ev, -1);
    json_decref(ev);
    ws_hub_send(srv->hub, client_id, s, strlen(s));
    mem_free(s);
}

/* ===== Listen addresses ===== */

/* Appends "entry" to the CivetWeb listening_ports list. */
static void ports_add(char *list, size_t n, const char *host, bool v6, int port) {
    size_t l = strlen(list);
    if (v6)
        snprintf(list + l, n - l, "%s[%s]:%d", l ? "," : "", host, port);
    else
        snprintf(list + l, n - l, "%s%s:%d", l ? "," : "", host, port);
}

struct listen_host {
    char host[128];
    bool v6;
    int port;                        /* 0 = any free port */
};

/* Parses opts->listen into hosts[]. Returns the count, or a negative status with err. */
static int parse_listen(const struct api_opts *o, struct listen_host *hosts, struct err *err) {
    const char *spec = o->listen && *o->listen ? o->listen : API_DEFAULT_LISTEN;
    int defport = o->port == 0 ? API_DEFAULT_PORT : o->port < 0 ? 0 : o->port;
    if (o->port > 65535) return err_set(err, STATUS_ERR_INVALID, "--port %d is not a TCP port", o->port);
    int n = 0;
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", spec);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ') tok++;
        if (!*tok) continue;
        if (n == API_MAX_LISTEN) return err_set(err, STATUS_ERR_INVALID, "--listen: at most %d addresses", API_MAX_LISTEN);
        struct listen_host *h = &hosts[n];
        h->port = defport;
        h->v6 = false;
        const char *portstr = NULL;
        if (tok[0] == '[') {
            char *e = strchr(tok, ']');
            if (!e) return err_set(err, STATUS_ERR_INVALID, "--listen: bad address '%s'", tok);
            *e = 0;
            snprintf(h->host, sizeof h->host, "%s", tok + 1);
            h->v6 = true;
            if (e[1] == ':') portstr = e + 2;
        } else if (strchr(tok, ':') != strrchr(tok, ':')) { /* bare IPv6 ("::") */
            snprintf(h->host, sizeof h->host, "%s", tok);
            h->v6 = true;
        } else {
            char *c = strchr(tok, ':');
            if (c) {
                *c = 0;
                portstr = c + 1;
            }
            snprintf(h->host, sizeof h->host, "%s", tok);
        }
        if (portstr) {
            int p = parse_index(portstr);
            if (p < 0 || p > 65535) return err_set(err, STATUS_ERR_INVALID, "--listen: bad port in '%s'", o->listen);
            h->port = p;
        }
        if (strcmp(h->host, "localhost") == 0) snprintf(h->host, sizeof h->host, "127.0.0.1");
        if (h->v6 && !mg_check_feature(MG_FEATURES_IPV6)) {
            log_warn("--listen: skipping the IPv6 address %s (this CivetWeb has no IPv6 support)", h->host);
            continue;
        }
        n++;
    }
    if (n == 0) return err_set(err, STATUS_ERR_INVALID, "--listen '%s' gives no address kiln can listen on", spec);
    return n;
}

/* ===== Lifecycle ===== */

/* ComfyUI's user folder: base/user/default, absolute (base resolved when it exists, else made
 * absolute with the current directory). False when it does not fit in out[n]. */
static bool user_dir_of(const char *base, char *out, size_t n) {
    char abs[PATH_MAX], joined[PATH_MAX + 32];
    if (!base || !*base) base = ".";
    if (!realpath(base, abs)) {
        char cwd[PATH_MAX] = "/";
        if (base[0] != '/' && !getcwd(cwd, sizeof cwd)) snprintf(cwd, sizeof cwd, "/");
        int w = base[0] == '/' ? snprintf(abs, sizeof abs, "%s", base) : snprintf(abs, sizeof abs, "%s/%s", cwd, base);
        if (w < 0 || (size_t)w >= sizeof abs) return false;
    }
    int w = snprintf(joined, sizeof joined, "%s/user/default", abs);
    if (w < 0 || (size_t)w >= n) return false;
    io_normpath(joined, out, n);
    return true;
}

struct api_server *api_server_new(const struct api_opts *opts, struct sched *sched, struct err *err) {
    struct listen_host hosts[API_MAX_LISTEN];
    int n_hosts = parse_listen(opts, hosts, err);
    if (n_hosts < 0) return NULL;
    int n_dev = sched_n_devices(sched);
    if (opts->gpu_ports_base < 0 || opts->gpu_ports_base + n_dev - 1 > 65535) {
        err_set(err, STATUS_ERR_INVALID, "--gpu-ports %d: the ports %d..%d are not all TCP ports", opts->gpu_ports_base,
                opts->gpu_ports_base, opts->gpu_ports_base + n_dev - 1);
        return NULL;
    }
    if (opts->gpu_ports_base > 0) {
        for (int i = 0; i < n_hosts; i++) {
            if (hosts[i].port >= opts->gpu_ports_base && hosts[i].port < opts->gpu_ports_base + n_dev) {
                err_set(err, STATUS_ERR_INVALID, "--gpu-ports %d: device port %d is also the main port",
                        opts->gpu_ports_base, hosts[i].port);
                return NULL;
            }
        }
    }

    struct api_server *srv = mem_calloc(1, sizeof *srv);
    srv->opts = *opts;
    srv->sched = sched;
    srv->n_devices = n_dev;
    srv->gpu_base = opts->gpu_ports_base;
    srv->max_upload = opts->max_upload_size ? opts->max_upload_size : API_DEFAULT_MAX_UPLOAD;
    srv->max_body = opts->max_body_size ? opts->max_body_size : srv->max_upload;
    srv->max_nodes = opts->max_nodes > 0 ? opts->max_nodes : API_DEFAULT_MAX_NODES;
    srv->max_pixels = opts->max_pixels ? opts->max_pixels : API_DEFAULT_MAX_PIXELS;
    srv->max_batch = opts->max_batch > 0 ? opts->max_batch : API_DEFAULT_MAX_BATCH;
    srv->max_ws = opts->max_ws > 0 ? opts->max_ws : API_DEFAULT_MAX_WS;
    if (opts->api_token && strlen(opts->api_token) >= sizeof srv->api_token) {
        err_set(err, STATUS_ERR_INVALID, "--api-token: at most %zu characters", sizeof srv->api_token - 1);
        mem_free(srv);
        return NULL;
    }
    snprintf(srv->api_token, sizeof srv->api_token, "%s", opts->api_token ? opts->api_token : "");
    if (opts->front_end_root && *opts->front_end_root) {
        struct stat st;
        const char *why = NULL;
        if (!realpath(opts->front_end_root, srv->front_root) || stat(srv->front_root, &st) != 0) why = strerror(errno);
        else if (!S_ISDIR(st.st_mode)) why = "not a folder";
        if (why) {
            err_set(err, STATUS_ERR_INVALID, "--front-end-root %s: %s", opts->front_end_root, why);
            mem_free(srv);
            return NULL;
        }
        log_info("http: serving the frontend in %s at / (kiln's console stays at /kiln/console/)", srv->front_root);
    }
    if (!user_dir_of(opts->base_dir, srv->user_dir, sizeof srv->user_dir)) {
        err_set(err, STATUS_ERR_INVALID, "--base-directory %s: the path is too long", opts->base_dir);
        mem_free(srv);
        return NULL;
    }
    snprintf(srv->cors_origin, sizeof srv->cors_origin, "%s",
             opts->cors_origin && *opts->cors_origin ? opts->cors_origin : "*");
    pthread_mutex_init(&srv->files_mu, NULL);
    atomic_init(&srv->stopped, false);
    big_threads_start(srv);
    srv->hub = ws_hub_new(srv, opts->ws_queue_max);

    /* main addresses first (their bound ports are read back in this order), then devices */
    char ports[4096] = "";
    for (int i = 0; i < n_hosts; i++) ports_add(ports, sizeof ports, hosts[i].host, hosts[i].v6, hosts[i].port);
    for (int d = 0; srv->gpu_base && d < n_dev; d++)
        for (int i = 0; i < n_hosts; i++) ports_add(ports, sizeof ports, hosts[i].host, hosts[i].v6, srv->gpu_base + d);
    char threads[16], timeout[16];
    snprintf(timeout, sizeof timeout, "%d", opts->request_timeout_ms > 0 ? opts->request_timeout_ms : 30000);
    /* a WebSocket holds a thread: by default there are enough for max_ws sockets and 64
     * requests besides, so full sockets never starve plain HTTP */
    snprintf(threads, sizeof threads, "%d", opts->threads > 0 ? opts->threads : srv->max_ws + 64);
    const char *options[] = {
        "listening_ports", ports,
        "num_threads", threads,
        "request_timeout_ms", timeout,       /* bounds reading a request (headers and body: a stalled
                                                 client holds its thread 30 s at most) and a write to
                                                 a client that stopped reading */
        "websocket_timeout_ms", "30000",
        "enable_websocket_ping_pong", "yes",  /* finds dead peers of idle sockets */
        "enable_keep_alive", "yes",
        "keep_alive_timeout_ms", "5000",
        "tcp_nodelay", "1",                   /* a reply is written as headers, then body: without
                                                 it the body waits ~40 ms for the client's delayed
                                                 ACK on a kept-alive connection */
        NULL,
    };
    static const struct mg_callbacks callbacks = {.http_error = on_http_error, .log_message = on_log};
    /* Installed before the sched starts: events from the first prompt reach the sockets. */
    sched_set_event_sink(sched, sink, srv);

    char ebuf[256] = "";
    unsigned ecode = 0;
    struct mg_error_data edata = {.code = &ecode, .text = ebuf, .text_buffer_size = sizeof ebuf};
    struct mg_init_data init = {.callbacks = &callbacks, .user_data = srv, .configuration_options = options};
    srv->ctx = mg_start2(&init, &edata);
    if (!srv->ctx) {
        err_set(err, STATUS_ERR_IO, "cannot listen on %s: %s", ports, ebuf[0] ? ebuf : "CivetWeb failed to start");
        sched_set_event_sink(sched, NULL, NULL);
        ws_hub_free(srv->hub);
        big_threads_stop(srv);
        pthread_mutex_destroy(&srv->files_mu);
        mem_free(srv);
        return NULL;
    }
    ws_hub_install(srv->hub, srv->ctx);
    mg_set_request_handler(srv->ctx, "**", dispatch, srv);

    struct mg_server_port bound[API_MAX_LISTEN * (SCHED_MAX_DEVICES + 1)];
    int nb = mg_get_server_ports(srv->ctx, (int)(sizeof bound / sizeof bound[0]), bound);
    srv->n_ports = n_hosts;
    size_t l = 0;
    for (int i = 0; i < n_hosts; i++) {
        srv->ports[i] = i < nb ? bound[i].port : 0;
        l += (size_t)snprintf(srv->listen_text + l, sizeof srv->listen_text - l, "%s%s%s%s:%d", i ? ", " : "",
                              hosts[i].v6 ? "[" : "", hosts[i].host, hosts[i].v6 ? "]" : "", srv->ports[i]);
        if (l >= sizeof srv->listen_text) break;
    }
    return srv;
}

void api_server_stop(struct api_server *srv) {
    if (!srv || !srv->ctx) return;
    atomic_store(&srv->stopped, true);
    mg_stop(srv->ctx); /* joins the handler threads; each socket's close handler frees it */
    srv->ctx = NULL;
}

void api_server_free(struct api_server *srv) {
    if (!srv) return;
    api_server_stop(srv);
    ws_hub_free(srv->hub);
    big_threads_stop(srv); /* after mg_stop: no request runs any more */
    pthread_mutex_destroy(&srv->files_mu);
    mem_free(srv);
}

int api_server_port(const struct api_server *srv, int i) { return i >= 0 && i < srv->n_ports ? srv->ports[i] : 0; }

int api_server_n_ports(const struct api_server *srv) { return srv->n_ports; }

int api_server_device_port(const struct api_server *srv, int dev) {
    return srv->gpu_base && dev >= 0 && dev < srv->n_devices ? srv->gpu_base + dev : 0;
}

const char *api_server_listen_text(const struct api_server *srv) { return srv->listen_text; }
