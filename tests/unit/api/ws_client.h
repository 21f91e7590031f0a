/* tests/unit/api/ws_client.h -- an in-process WebSocket test client (CivetWeb's client API) for
 * the api tests: it connects to a test server, keeps every text frame parsed as JSON, and waits
 * for messages by type and prompt id (or counts text frames). Header-only (static functions),
 * included by test_api.c, test_web.c and test_limits.c.
 * Threads: CivetWeb's reader thread fills the message list under mu; the test thread reads it.
 * Ownership: ws_open returns a client freed with ws_free (which closes it first). */
#ifndef KILN_TESTS_API_WS_CLIENT_H
#define KILN_TESTS_API_WS_CLIENT_H

#include "graph/json.h"

#include <civetweb.h>
#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define WS_MAX 1024
struct wsc {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    json_t *msg[WS_MAX];             /* text frames parsed */
    int n;
    int n_text;                      /* text frames received, parsed or not, kept or not */
    bool closed;
    struct mg_connection *conn;
};

static int ws_data(struct mg_connection *conn, int flags, char *data, size_t len, void *user) {
    struct wsc *w = user;
    if ((flags & 0x0f) == MG_WEBSOCKET_OPCODE_CONNECTION_CLOSE) return 0;
    if ((flags & 0x0f) != MG_WEBSOCKET_OPCODE_TEXT) return 1;
    json_t *j = NULL;
    if (graph_json_loads(data, len, &j, NULL)) j = NULL;
    pthread_mutex_lock(&w->mu);
    w->n_text++;
    if (w->n < WS_MAX && j)
        w->msg[w->n++] = j;
    else
        json_decref(j);
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return 1;
}

static void ws_closed(const struct mg_connection *conn, void *user) {
    struct wsc *w = user;
    pthread_mutex_lock(&w->mu);
    w->closed = true;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* A socket to path, or NULL when the server refuses the upgrade (eb, when given, gets why). */
static struct wsc *ws_try_open(int port, const char *path, char *eb, size_t n_eb) {
    struct wsc *w = calloc(1, sizeof *w);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    char buf[256] = "";
    w->conn = mg_connect_websocket_client("127.0.0.1", port, 0, buf, sizeof buf, path, NULL, ws_data, ws_closed, w);
    if (eb) snprintf(eb, n_eb, "%s", buf);
    if (!w->conn) {
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
        free(w);
        return NULL;
    }
    return w;
}

/* (ws_open and ws_wait are inline: not every includer uses them) */
static inline struct wsc *ws_open(int port, const char *path) {
    char eb[256];
    struct wsc *w = ws_try_open(port, path, eb, sizeof eb);
    if (!w) fail_msg("ws connect %s: %s", path, eb);
    return w;
}

/* Closes from the client side first (close frame, wait for the server's), so that the
 * client's reader thread ends at once instead of at its poll timeout. NULL is a no-op. */
static void ws_free(struct wsc *w) {
    if (!w) return;
    mg_websocket_client_write(w->conn, MG_WEBSOCKET_OPCODE_CONNECTION_CLOSE, "\x03\xe8", 2);
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 3;
    pthread_mutex_lock(&w->mu);
    while (!w->closed && pthread_cond_timedwait(&w->cv, &w->mu, &dl) == 0) {
    }
    pthread_mutex_unlock(&w->mu);
    mg_close_connection(w->conn);
    for (int i = 0; i < w->n; i++) json_decref(w->msg[i]);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}

static const char *msg_type(const json_t *m) { return json_string_value(json_object_get(m, "type")); }
static json_t *msg_data(const json_t *m) { return json_object_get(m, "data"); }
static const char *msg_pid(const json_t *m) { return json_string_value(json_object_get(msg_data(m), "prompt_id")); }

/* Index of the first message of `type` (about prompt `id` when given; with `final`, the
 * executing message whose node is null), waiting 10 s at most; -1 on timeout. */
static inline int ws_wait(struct wsc *w, const char *type, const char *id, bool final) {
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 10;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        for (int i = 0; i < w->n; i++) {
            const json_t *m = w->msg[i];
            if (strcmp(msg_type(m), type) != 0) continue;
            if (id && (!msg_pid(m) || strcmp(msg_pid(m), id) != 0)) continue;
            if (final && !json_is_null(json_object_get(msg_data(m), "node"))) continue;
            pthread_mutex_unlock(&w->mu);
            return i;
        }
        if (pthread_cond_timedwait(&w->cv, &w->mu, &dl)) break;
    }
    pthread_mutex_unlock(&w->mu);
    return -1;
}

#endif
