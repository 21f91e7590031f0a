/* api/ws.c -- the WebSocket hub: /ws and /api/ws?clientId=, the registry of sockets by session
 * id, and delivery of the sched's events to them.
 * Owns: one struct ws_conn per open socket (its bounded message queue and sender thread), the
 * registry (sid -> socket), the shared message buffers.
 * Must not: write to a socket from the thread that produced an event (workers never block on
 * a client), parse or frame WebSocket data itself (CivetWeb does).
 * Threads: connect/ready/data/close handlers run on the socket's CivetWeb thread; ws_hub_send
 * on any thread; each socket's sender thread writes its frames.
 *
 * DESIGN. An event is serialised once into a refcounted ws_msg and pushed onto the queue of
 * each recipient under hub->mu (never while holding a sched lock in the other order: the hub
 * calls nothing in the sched while it holds hub->mu). Each socket's sender thread pops and
 * writes in order, so a slow client only delays itself. When a queue is full the socket is
 * dropped: removed from the registry, its queue emptied, a close frame sent; CivetWeb's write
 * timeout (request_timeout_ms) bounds a write to a client that stopped reading. As in ComfyUI,
 * a new socket with an existing clientId replaces the old one in the registry without closing
 * it; the old one then receives nothing.
 *
 * WATCHERS. A kiln extension for the web console: a socket opened with ?watch=all also
 * receives the events addressed to every other client (progress, executing, executed, ...),
 * so it can show every prompt's progress. Without it delivery is exactly ComfyUI's.
 *
 * LIMITS. At most srv->max_ws sockets are open (counted from the accepted handshake to the
 * close handler); one more is refused with a 503 before the handshake. A client message (one
 * frame, or the fragments of one message) longer than API_WS_MAX_MESSAGE closes the socket
 * with status 1009. CivetWeb has read the frame into memory by then: the limit bounds what
 * kiln parses, not what CivetWeb buffers. With --api-token the upgrade needs the token
 * (header or ?token=), else 401. */
#include "api/internal.h"

#include "base/log.h"
#include "base/mem.h"
#include "graph/json.h"
#include "sched/sched.h"

#include <stdio.h>
#include <string.h>

/* ===== Messages ===== */

struct ws_msg {
    atomic_int refs;                 /* one per queue holding it, plus the producer's */
    int opcode;                      /* MG_WEBSOCKET_OPCODE_TEXT */
    size_t len;                      /* bytes of data */
    char data[];                     /* the frame payload */
};

static struct ws_msg *msg_new(const char *text, size_t len) {
    struct ws_msg *m = mem_alloc(sizeof *m + len + 1);
    atomic_init(&m->refs, 1);
    m->opcode = MG_WEBSOCKET_OPCODE_TEXT;
    m->len = len;
    memcpy(m->data, text, len);
    m->data[len] = 0;
    return m;
}

static struct ws_msg *msg_ref(struct ws_msg *m) {
    atomic_fetch_add(&m->refs, 1);
    return m;
}

static void msg_unref(struct ws_msg *m) {
    if (m && atomic_fetch_sub(&m->refs, 1) == 1) mem_free(m);
}

/* ===== Sockets ===== */

struct ws_conn {
    struct mg_connection *conn;      /* CivetWeb's connection (valid until the close handler returns) */
    struct ws_hub *hub;
    char *sid;                       /* session id: the clientId or a fresh uuid4 hex (owned) */
    pthread_mutex_t mu;              /* guards everything below */
    pthread_cond_t cv;               /* signalled on push, drop and close */
    struct ws_msg **q;               /* ring of queued messages, capacity hub->queue_max */
    int head, n;
    bool closing;                    /* the close handler runs: the sender exits */
    bool dropped;                    /* the queue overflowed: send a close frame, then nothing */
    bool close_sent;
    bool dead;                       /* a write failed: discard the rest */
    bool first_seen;                 /* the client sent a text message (feature_flags is only
                                        honoured as the first) [socket thread only] */
    bool preview_metadata;           /* client announced supports_preview_metadata [socket thread] */
    bool registered;                 /* in hub->conns [hub->mu] */
    bool watch_all;                  /* ?watch=all: every client's events (fixed before registration) */
    bool has_thread;                 /* the sender started [socket thread] */
    size_t frag_len;                 /* bytes of the client message being received [socket thread] */
    pthread_t thread;                /* the sender */
};

struct ws_hub {
    struct api_server *srv;          /* for the initial status and the feature flags */
    int queue_max;                   /* messages per socket */
    pthread_mutex_t mu;              /* guards conns */
    struct ws_conn **conns;          /* registered sockets */
    int n, cap;
    atomic_int open;                 /* accepted handshakes not yet closed (the --max-ws count) */
};

/* Empties the queue. Caller holds c->mu. */
static void conn_clear_queue(struct ws_conn *c) {
    while (c->n) {
        msg_unref(c->q[c->head]);
        c->head = (c->head + 1) % c->hub->queue_max;
        c->n--;
    }
}

/* Removes c from the registry if it is there. Caller holds hub->mu. */
static void hub_unregister_locked(struct ws_hub *h, struct ws_conn *c) {
    if (!c->registered) return;
    for (int i = 0; i < h->n; i++) {
        if (h->conns[i] == c) {
            memmove(&h->conns[i], &h->conns[i + 1], (size_t)(h->n - i - 1) * sizeof h->conns[0]);
            h->n--;
            break;
        }
    }
    c->registered = false;
}

/* Queues m for c; a full queue drops the socket. Caller holds hub->mu when c is registered
 * (the drop unregisters it). */
static void conn_push(struct ws_hub *h, struct ws_conn *c, struct ws_msg *m) {
    pthread_mutex_lock(&c->mu);
    if (c->dropped || c->closing) {
        pthread_mutex_unlock(&c->mu);
        return;
    }
    if (c->n == h->queue_max) {
        log_warn("ws: client %s is too slow (%d messages waiting): dropping its connection", c->sid, c->n);
        c->dropped = true;
        conn_clear_queue(c);
        hub_unregister_locked(h, c);
    } else {
        c->q[(c->head + c->n) % h->queue_max] = msg_ref(m);
        c->n++;
    }
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

/* The sender thread: writes queued frames in order until the socket closes. */
static void *conn_sender(void *arg) {
    struct ws_conn *c = arg;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->closing && c->n == 0 && !(c->dropped && !c->close_sent)) pthread_cond_wait(&c->cv, &c->mu);
        if (c->closing) break;
        if (c->dropped && !c->close_sent) {
            c->close_sent = true;
            pthread_mutex_unlock(&c->mu);
            if (!c->dead) {
                /* status 1008 (policy violation) + reason */
                static const char payload[] = "\x03\xf0too slow: events were not read in time";
                mg_websocket_write(c->conn, MG_WEBSOCKET_OPCODE_CONNECTION_CLOSE, payload, sizeof payload - 1);
            }
            pthread_mutex_lock(&c->mu);
            continue;
        }
        struct ws_msg *m = c->q[c->head];
        c->head = (c->head + 1) % c->hub->queue_max;
        c->n--;
        bool dead = c->dead;
        pthread_mutex_unlock(&c->mu);
        if (!dead && mg_websocket_write(c->conn, m->opcode, m->data, m->len) <= 0) {
            pthread_mutex_lock(&c->mu);
            c->dead = true;
            pthread_mutex_unlock(&c->mu);
        }
        msg_unref(m);
        pthread_mutex_lock(&c->mu);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* ===== CivetWeb handlers ===== */

/* Serialises {"type": type, "data": data} (steals data) into a message. */
static struct ws_msg *event_msg(const char *type, json_t *data) {
    json_t *ev = json_object();
    json_object_set_new(ev, "type", json_string(type));
    json_object_set_new(ev, "data", data);
    char *s = graph_json_dumps(ev, -1);
    json_decref(ev);
    struct ws_msg *m = msg_new(s, strlen(s));
    mem_free(s);
    return m;
}

struct ws_call {
    struct mg_connection *conn;
    struct ws_hub *hub;
    const char *data;                /* on_data: the frame */
    size_t len;
};

/* Replies to a refused upgrade, written raw: CivetWeb's response-header functions refuse to
 * run inside the connect handler. CivetWeb closes the connection after on_connect returns 1. */
static void refuse(const struct mg_connection *cconn, int status, const char *type, const char *msg,
                   const char *details) {
    struct mg_connection *conn = (struct mg_connection *)cconn;
    json_t *body = json_object();
    json_object_set_new(body, "error", http_error_json(type, msg, details));
    json_object_set_new(body, "node_errors", json_object());
    char *s = graph_json_dumps(body, -1);
    json_decref(body);
    size_t len = strlen(s);
    mg_printf(conn,
              "HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: %zu\r\n%s"
              "Connection: close\r\n\r\n",
              status, status == 401 ? "Unauthorized" : "Service Unavailable", len,
              status == 401 ? "WWW-Authenticate: Bearer realm=\"kiln\"\r\n" : "");
    mg_write(conn, s, len);
    mem_free(s);
}

static int check_connect(const struct mg_connection *conn, struct ws_hub *h) {
    if (!api__origin_ok(h->srv, conn)) {
        log_warn("ws: refused a socket from a foreign Origin (%s) to a loopback Host", mg_get_header(conn, "Origin"));
        return 1;
    }
    if (!api__authorized(h->srv, conn, true)) {
        log_warn("ws: refused a socket from %s: missing or wrong API token", mg_get_request_info(conn)->remote_addr);
        refuse(conn, 401, "unauthorized", "Missing or wrong API token",
               "Open /ws?token=<token> or send 'Authorization: Bearer <token>'; the server was started with "
               "--api-token");
        return 1;
    }
    if (atomic_fetch_add(&h->open, 1) >= h->srv->max_ws) {
        atomic_fetch_sub(&h->open, 1);
        char msg[160];
        snprintf(msg, sizeof msg, "Too many WebSocket connections (the limit is %d, --max-ws)", h->srv->max_ws);
        log_warn("ws: refused a socket from %s: %s", mg_get_request_info(conn)->remote_addr, msg);
        refuse(conn, 503, "too_many_websockets", msg, NULL);
        return 1;
    }
    return 0;
}

/* on_connect's checks, on a big stack (logging and the refusal replies need more than
 * CivetWeb's threads have); call->len gets 0 to accept, 1 to refuse. */
static void connect_check(void *arg) {
    struct ws_call *call = arg;
    call->len = (size_t)check_connect(call->conn, call->hub);
}

static int on_connect(const struct mg_connection *conn, void *cbdata) {
    struct ws_call call = {.conn = (struct mg_connection *)conn, .hub = cbdata};
    api__call_big_stack(call.hub->srv, connect_check, &call);
    return (int)call.len;
}

static void ready(void *arg) {
    struct ws_call *call = arg;
    struct mg_connection *conn = call->conn;
    struct ws_hub *h = call->hub;
    const struct mg_request_info *ri = mg_get_request_info(conn);
    struct ws_conn *c = mem_calloc(1, sizeof *c);
    c->conn = conn;
    c->hub = h;
    c->q = mem_calloc((size_t)h->queue_max, sizeof c->q[0]);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);

    /* sid: the clientId query parameter, else a fresh uuid4 hex */
    const char *q = ri->query_string;
    size_t ql = q ? strlen(q) : 0;
    char *id = mem_alloc(ql + 1);
    bool given = q && mg_get_var(q, ql, "clientId", id, ql + 1) > 0;
    char watch[8];
    c->watch_all = q && mg_get_var(q, ql, "watch", watch, sizeof watch) > 0 && strcmp(watch, "all") == 0;
    if (given) {
        c->sid = id;
    } else {
        mem_free(id);
        c->sid = mem_alloc(40);
        api__uuid4(c->sid, false);
    }

    /* The first message, before the socket can receive any event: status with sid. Read the
     * queue before taking hub->mu (lock order: sched before hub). */
    int remaining = sched_queue_remaining(h->srv->sched, api__port_device(h->srv, conn));
    json_t *data = json_pack("{s:{s:{s:i}},s:s}", "status", "exec_info", "queue_remaining", remaining, "sid", c->sid);
    struct ws_msg *m = event_msg("status", data);
    pthread_mutex_lock(&c->mu);
    c->q[0] = m; /* the producer's reference moves into the queue */
    c->n = 1;
    pthread_mutex_unlock(&c->mu);
    /* a reconnect while this client's prompt runs: the node it is on (no prompt_id, as ComfyUI) */
    char node[256];
    if (given && sched_client_running_node(h->srv->sched, c->sid, node, sizeof node)) {
        pthread_mutex_lock(&c->mu);
        c->q[c->n++] = event_msg("executing", json_pack("{s:s}", "node", node));
        pthread_mutex_unlock(&c->mu);
    }

    mg_set_user_connection_data(conn, c);
    if (pthread_create(&c->thread, NULL, conn_sender, c) != 0) {
        log_error("ws: cannot start a sender thread for client %s", c->sid);
        return; /* never registered: the close handler frees it */
    }
    c->has_thread = true;

    pthread_mutex_lock(&h->mu);
    for (int i = 0; i < h->n; i++) {
        if (strcmp(h->conns[i]->sid, c->sid) == 0) {
            hub_unregister_locked(h, h->conns[i]); /* replaced, not closed (as ComfyUI) */
            break;
        }
    }
    if (h->n == h->cap) {
        h->cap = h->cap ? h->cap * 2 : 16;
        h->conns = mem_realloc(h->conns, (size_t)h->cap * sizeof h->conns[0]);
    }
    h->conns[h->n++] = c;
    c->registered = true;
    pthread_mutex_unlock(&h->mu);
    log_debug("ws: client %s connected (%s)", c->sid, ri->remote_addr);
}

/* CivetWeb's threads have small stacks: the handlers' work runs on a big one (api.c). */
static void on_ready(struct mg_connection *conn, void *cbdata) {
    struct ws_call call = {.conn = conn, .hub = cbdata};
    api__call_big_stack(call.hub->srv, ready, &call);
}

/* The client's first text message: feature_flags negotiation. */
static void first_message(void *arg) {
    struct ws_call *call = arg;
    struct ws_hub *h = call->hub;
    struct ws_conn *c = mg_get_user_connection_data(call->conn);
    json_t *j = NULL;
    if (graph_json_loads(call->data, call->len, &j, NULL) == 0 && json_is_object(j)) {
        const char *type = json_string_value(json_object_get(j, "type"));
        if (type && strcmp(type, "feature_flags") == 0) {
            json_t *flags = json_object_get(j, "data");
            c->preview_metadata = json_is_true(json_object_get(flags, "supports_preview_metadata"));
            struct ws_msg *m = event_msg("feature_flags", api__features(h->srv));
            pthread_mutex_lock(&h->mu);
            conn_push(h, c, m);
            pthread_mutex_unlock(&h->mu);
            msg_unref(m);
        }
    }
    json_decref(j);
}

/* A client message over API_WS_MAX_MESSAGE: a close frame with status 1009. */
static void too_big(void *arg) {
    struct ws_call *call = arg;
    struct ws_conn *c = mg_get_user_connection_data(call->conn);
    log_warn("ws: client %s sent a message of more than %u bytes: closing its connection", c->sid, API_WS_MAX_MESSAGE);
    static const char payload[] = "\x03\xf1message too big"; /* status 1009 */
    mg_websocket_write(call->conn, MG_WEBSOCKET_OPCODE_CONNECTION_CLOSE, payload, sizeof payload - 1);
}

static int on_data(struct mg_connection *conn, int bits, char *data, size_t len, void *cbdata) {
    struct ws_conn *c = mg_get_user_connection_data(conn);
    if (!c) return 1;
    int op = bits & 0x0f;
    if (op == MG_WEBSOCKET_OPCODE_TEXT || op == MG_WEBSOCKET_OPCODE_BINARY || op == MG_WEBSOCKET_OPCODE_CONTINUATION) {
        c->frag_len = op == MG_WEBSOCKET_OPCODE_CONTINUATION ? c->frag_len + len : len;
        if (c->frag_len > API_WS_MAX_MESSAGE) {
            struct ws_call call = {.conn = conn, .hub = cbdata};
            api__call_big_stack(call.hub->srv, too_big, &call);
            return 0; /* CivetWeb closes the connection */
        }
        if (bits & 0x80) c->frag_len = 0; /* FIN: the message is complete */
    }
    if (op != MG_WEBSOCKET_OPCODE_TEXT) return 1;
    bool first = !c->first_seen;
    c->first_seen = true;
    if (!first) return 1; /* ComfyUI ignores every other client message */
    struct ws_call call = {.conn = conn, .hub = cbdata, .data = data, .len = len};
    api__call_big_stack(call.hub->srv, first_message, &call);
    return 1;
}

static void on_close(const struct mg_connection *conn, void *cbdata) {
    struct ws_hub *h = cbdata;
    atomic_fetch_sub(&h->open, 1); /* every accepted handshake ends here */
    struct ws_conn *c = mg_get_user_connection_data(conn);
    if (!c) return;
    pthread_mutex_lock(&h->mu);
    hub_unregister_locked(h, c);
    pthread_mutex_unlock(&h->mu);
    pthread_mutex_lock(&c->mu);
    c->closing = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (c->has_thread) pthread_join(c->thread, NULL);
    conn_clear_queue(c);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    log_debug("ws: client %s disconnected", c->sid);
    mem_free(c->q);
    mem_free(c->sid);
    mem_free(c);
    mg_set_user_connection_data(conn, NULL);
}

/* ===== The hub ===== */

struct ws_hub *ws_hub_new(struct api_server *srv, int queue_max) {
    struct ws_hub *h = mem_calloc(1, sizeof *h);
    h->srv = srv;
    h->queue_max = queue_max <= 0 ? API_DEFAULT_WS_QUEUE : queue_max < 2 ? 2 : queue_max; /* status + executing */
    pthread_mutex_init(&h->mu, NULL);
    atomic_init(&h->open, 0);
    return h;
}

void ws_hub_install(struct ws_hub *h, struct mg_context *ctx) {
    mg_set_websocket_handler(ctx, "/ws", on_connect, on_ready, on_data, on_close, h);
    mg_set_websocket_handler(ctx, "/api/ws", on_connect, on_ready, on_data, on_close, h);
}

void ws_hub_send(struct ws_hub *h, const char *client_id, const char *text, size_t len) {
    struct ws_msg *m = msg_new(text, len);
    pthread_mutex_lock(&h->mu);
    /* iterate backwards: a drop removes the current entry. One socket per sid, plus watchers. */
    for (int i = h->n - 1; i >= 0; i--) {
        struct ws_conn *c = h->conns[i];
        if (client_id && !c->watch_all && strcmp(c->sid, client_id) != 0) continue;
        conn_push(h, c, m);
    }
    pthread_mutex_unlock(&h->mu);
    msg_unref(m);
}

int ws_hub_count(struct ws_hub *h) {
    pthread_mutex_lock(&h->mu);
    int n = h->n;
    pthread_mutex_unlock(&h->mu);
    return n;
}

void ws_hub_free(struct ws_hub *h) {
    if (!h) return;
    if (h->n) log_warn("ws: hub freed with %d sockets still registered", h->n);
    pthread_mutex_destroy(&h->mu);
    mem_free(h->conns);
    mem_free(h);
}
