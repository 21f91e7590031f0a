/* api/internal.h -- what the files of api/ share: the server struct, one HTTP request, the
 * reply helpers (http.c), the WebSocket hub (ws.c) and the route handlers (routes_*.c).
 * Owns: nothing; declarations only. Not included outside src/api.
 * Threads: a struct http_req lives on one CivetWeb handler thread for one request; the
 * server struct is read-only after api_server_new except where a field says otherwise. */
#ifndef KILN_API_INTERNAL_H
#define KILN_API_INTERNAL_H

#include "api/api.h"

#include <civetweb.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

struct ws_hub;

/* ===== The server ===== */

/* The kept big-stack threads (api.c): created with the server, before any library is opened at
 * run time. A thread created per request waited 0.2-0.3 s on a cold start while cuBLAS was
 * opened (the first POST /prompt on the lent machines). */
#define API_BIG_THREADS 8
struct api_big_thread {
    pthread_t tid;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    void (*fn)(void *);              /* mu: the call to run; NULL when there is none */
    void *arg;
    bool busy;                       /* api_server.big_mu: taken by a caller */
    bool stop;                       /* mu: the server is being freed */
};

struct api_server {
    struct api_opts opts;            /* copy of the caller's options (strings borrowed) */
    struct sched *sched;             /* borrowed */
    struct mg_context *ctx;          /* CivetWeb, NULL once stopped */
    struct ws_hub *hub;              /* sockets by client id */
    int ports[API_MAX_LISTEN];       /* bound ports of the main addresses, in order */
    int n_ports;
    int n_devices;                   /* devices of the sched (fixed at start) */
    int gpu_base;                    /* first per-device port, 0 = none */
    size_t max_upload;               /* bytes */
    size_t max_body;                 /* bytes */
    int max_nodes, max_batch, max_ws;  /* limits, defaults applied */
    unsigned long long max_pixels;
    char api_token[512];             /* "" = no access control */
    char cors_origin[256];           /* Access-Control-Allow-Origin value when CORS is on */
    char listen_text[512];           /* "127.0.0.1:8188, ..." */
    char front_root[PATH_MAX];       /* --front-end-root, resolved by realpath; "" = the console */
    char user_dir[PATH_MAX];         /* base_dir/user/default, absolute (made on the first write) */
    pthread_mutex_t files_mu;        /* serialises upload naming + writing (collision rule) and the
                                        user data's check-then-write steps (routes_user.c) */
    atomic_bool stopped;             /* api_server_stop ran: the sink drops events */
    pthread_mutex_t big_mu;          /* guards the kept threads' busy flags */
    struct api_big_thread big[API_BIG_THREADS];
};

/* ===== One request (http.c) ===== */

struct http_req {
    struct mg_connection *conn;
    const struct mg_request_info *ri;
    struct api_server *srv;
    const char *method;              /* "GET", "POST", ... ("GET" for a HEAD request) */
    const char *path;                /* decoded local path without the /api prefix */
    const char *raw_path;            /* the same before CivetWeb removed dot segments ("..", ".") */
    bool head;                       /* HEAD: headers only */
    int port_device;                 /* device whose per-device port it arrived on, or -1 */
    int status;                      /* the status replied, 0 before */
};

/* Sends a complete reply: status line, Content-Type (NULL for none), Content-Length, the CORS
 * headers when on, `extra` header lines ("Name: value\r\n"..., or NULL), then the body (not
 * for HEAD). */
void http_reply(struct http_req *r, int status, const char *content_type, const void *body, size_t len,
                const char *extra);

/* The header part of http_reply alone: the caller then mg_writes exactly len bytes (unless
 * r->head). */
void http_reply_head(struct http_req *r, int status, const char *content_type, size_t len, const char *extra);
/* Reads a whole file into *out (mem_alloc'd, one spare byte at the end; *len bytes). Returns 0,
 * or -1 with errno (ENOMEM when it does not fit in memory). */
int api__read_file(const char *path, char **out, size_t *len);
/* A 200 with `size` bytes of f as the body (not read for HEAD), streamed in chunks; the caller
 * opened f and closes it. */
void http_reply_file(struct http_req *r, const char *content_type, FILE *f, size_t size, const char *extra);

/* Replies with graph_json_dumps(j) as application/json; steals j. */
void http_reply_json(struct http_req *r, int status, json_t *j);

/* 200 with an empty body (ComfyUI's web.Response(status=200) for POSTs that only act). */
void http_reply_ok_empty(struct http_req *r);

/* Replies {"error": {"type", "message", "details", "extra_info": {}}} with `status`; details
 * repeats the message. */
void http_reply_error(struct http_req *r, int status, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The JSON error object alone (new reference), for bodies that add fields next to "error". */
json_t *http_error_json(const char *type, const char *message, const char *details);

/* Reads the whole request body (at most `max` bytes) into a mem_alloc'd, NUL-terminated
 * buffer. Returns 0, or -1 after replying 413 (too large) or 400 (broken transfer). */
int http_read_body(struct http_req *r, size_t max, char **out, size_t *len);

/* Reads and parses a JSON body (any Content-Type) with graph_json_loads. An empty body gives
 * *out = NULL when empty_ok, else a 400. Returns 0, or -1 after replying 400/413. */
int http_read_json(struct http_req *r, bool empty_ok, json_t **out);

/* A query-string variable, URL-decoded into buf[n]. Returns 1 when present, 0 when absent,
 * -1 when longer than the buffer. */
int http_query(const struct http_req *r, const char *name, char *buf, size_t n);

/* A request header, or NULL. */
const char *http_header(const struct http_req *r, const char *name);

/* ===== WebSocket hub (ws.c) ===== */

/* A hub whose sockets queue at most queue_max messages each. */
struct ws_hub *ws_hub_new(struct api_server *srv, int queue_max);

/* Registers /ws and /api/ws on the CivetWeb context. */
void ws_hub_install(struct ws_hub *h, struct mg_context *ctx);

/* Queues a text frame for the socket registered under client_id, or for every socket when
 * client_id is NULL. A socket opened with ?watch=all (kiln's console) also gets every other
 * client's frames. Never blocks on a socket: a socket whose queue is full is dropped (sent
 * a close frame, removed from the registry). [any thread] */
void ws_hub_send(struct ws_hub *h, const char *client_id, const char *text, size_t len);

/* Registered sockets now (tests, metrics). */
int ws_hub_count(struct ws_hub *h);

/* Frees the hub; every socket must be closed (mg_stop closes them). NULL is a no-op. */
void ws_hub_free(struct ws_hub *h);

/* ===== Shared helpers (api.c) ===== */

#define API_HANDLER_STACK (8u * 1024u * 1024u) /* bytes of stack for a request handler */

/* Runs fn(arg) on a thread with API_HANDLER_STACK bytes of stack and waits for it (CivetWeb's
 * threads have 100 KiB): one of srv's API_BIG_THREADS kept threads when one is idle, else a
 * fresh thread. */
void api__call_big_stack(struct api_server *srv, void (*fn)(void *), void *arg);



/* The ComfyUI loopback check (CO:server.py create_origin_only_middleware): false when CORS is
 * off and the request has a loopback Host and an Origin whose host:port differs. */
bool api__origin_ok(const struct api_server *srv, const struct mg_connection *conn);

/* Device whose per-device port received the connection, or -1. */
int api__port_device(const struct api_server *srv, const struct mg_connection *conn);

/* GET /features and the WebSocket feature_flags reply. New reference. */
json_t *api__features(const struct api_server *srv);

/* A fresh uuid4 as 32 hex digits (hyphens = false) or canonical 36 characters; out >= 37. */
void api__uuid4(char *out, bool hyphens);

/* The device list as "0 (cpu:0 ...), 1 (cpu:1 ...)" for routing errors. */
void api__device_list(const struct api_server *srv, char *buf, size_t n);

/* True when the request may proceed under --api-token: no token configured, or
 * "Authorization: Bearer TOKEN", or (allow_query: /ws, /view) ?token=TOKEN; compared in
 * constant time. */
bool api__authorized(const struct api_server *srv, const struct mg_connection *conn, bool allow_query);

/* The 401 reply (ComfyUI's error shape, WWW-Authenticate: Bearer). */
void api__reply_unauthorized(struct http_req *r);

/* The device scope of a request: a valid X-TARGET-GPU header, else the port's device, else -1.
 * Returns -2 after replying 400 when the header names no device. */
int api__scope(struct http_req *r);

/* ===== Routes (routes_*.c). `arg` is the path after a prefix route ("/history/<arg>"). ===== */

void api__get_prompt(struct http_req *r, const char *arg);
void api__post_prompt(struct http_req *r, const char *arg);
void api__get_queue(struct http_req *r, const char *arg);
void api__post_queue(struct http_req *r, const char *arg);
void api__get_queue_all(struct http_req *r, const char *arg);
void api__get_history(struct http_req *r, const char *arg);
void api__get_history_id(struct http_req *r, const char *arg);
void api__post_history(struct http_req *r, const char *arg);
void api__post_interrupt(struct http_req *r, const char *arg);
void api__post_free(struct http_req *r, const char *arg);

void api__get_view(struct http_req *r, const char *arg);
void api__post_upload_image(struct http_req *r, const char *arg);
void api__post_upload_mask(struct http_req *r, const char *arg);

void api__get_object_info(struct http_req *r, const char *arg);
void api__get_object_info_class(struct http_req *r, const char *arg);
void api__get_system_stats(struct http_req *r, const char *arg);
void api__get_embeddings(struct http_req *r, const char *arg);
void api__get_extensions(struct http_req *r, const char *arg);
void api__get_models(struct http_req *r, const char *arg);
void api__get_models_folder(struct http_req *r, const char *arg);
void api__get_features(struct http_req *r, const char *arg);
void api__get_gpus(struct http_req *r, const char *arg);
void api__get_metrics(struct http_req *r, const char *arg);

/* ===== The frontend's user data and helpers (routes_user.c) =====
 * USER_DIR is srv->user_dir. `arg` of the /userdata/ routes is the rest of the raw path (it
 * may hold '/': CivetWeb decodes %2F before kiln sees the URI). */

void api__get_users(struct http_req *r, const char *arg);
void api__get_settings(struct http_req *r, const char *arg);
void api__post_settings(struct http_req *r, const char *arg);
void api__get_setting(struct http_req *r, const char *arg);
void api__post_setting(struct http_req *r, const char *arg);
void api__get_userdata_list(struct http_req *r, const char *arg);
void api__get_userdata_v2(struct http_req *r, const char *arg);
void api__get_userdata(struct http_req *r, const char *arg);
void api__post_userdata(struct http_req *r, const char *arg);    /* also .../move/{dest} */
void api__delete_userdata(struct http_req *r, const char *arg);
void api__get_i18n(struct http_req *r, const char *arg);
void api__get_workflow_templates(struct http_req *r, const char *arg);
void api__get_experiment_models(struct http_req *r, const char *arg);
void api__get_experiment_models_folder(struct http_req *r, const char *arg);

/* ===== The browser's files (routes_web.c) ===== */

/* One file of the built-in console (web/), compiled in by web/embed.cmake. */
struct api_web_asset {
    const char *name;                /* base name: "index.html", "app.js" */
    const unsigned char *data;       /* its bytes (NUL-terminated) */
    size_t len;                      /* bytes, the NUL not counted */
};
extern const struct api_web_asset api__web_assets[];
extern const int api__web_n_assets;

/* GET /: the console's index.html, or --front-end-root's. */
void api__get_index(struct http_req *r, const char *arg);

/* A GET that no route took: a console file, or a file of --front-end-root (never under
 * /api/). Returns false, replying nothing, when the path is neither; true once replied (200,
 * 301, 403 for a path leaving the folder, 404). */
bool api__get_static(struct http_req *r);

/* Whether the decoded URI names a console file: those load without --api-token (they hold
 * no data; the console then asks for the token). */
bool api__web_public(const struct api_server *srv, const char *uri);

#endif
