/* api/http.c -- replies and request bodies over CivetWeb: every answer kiln sends goes through
 * http_reply (one place adds Content-Length and the CORS headers), every JSON body comes in
 * through http_read_json (size limit, graph_json_loads whatever the Content-Type).
 * Owns: nothing beyond one call; bodies returned are mem_alloc'd and freed by the caller.
 * Must not: know routes or the sched.
 * Threads: CivetWeb handler threads, one request each. */
#include "api/internal.h"

#include "base/mem.h"
#include "graph/json.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ===== Replies ===== */

#define FILE_CHUNK (64u * 1024u) /* bytes of a file read and written at a time (http_reply_file) */

void http_reply_file(struct http_req *r, const char *content_type, FILE *f, size_t size, const char *extra) {
    http_reply_head(r, 200, content_type, size, extra);
    if (r->head) return;
    _Static_assert(FILE_CHUNK <= API_HANDLER_STACK / 4, "the chunk lives on the handler's stack");
    char buf[FILE_CHUNK];
    size_t left = size, got;
    /* the length is sent: a file that shrinks meanwhile ends the connection short */
    while (left && (got = fread(buf, 1, left < sizeof buf ? left : sizeof buf, f)) > 0) {
        if (mg_write(r->conn, buf, got) <= 0) break;
        left -= got;
    }
}

void http_reply_head(struct http_req *r, int status, const char *content_type, size_t len, const char *extra) {
    r->status = status;
    mg_response_header_start(r->conn, status);
    if (content_type) mg_response_header_add(r->conn, "Content-Type", content_type, -1);
    char n[32];
    snprintf(n, sizeof n, "%zu", len);
    mg_response_header_add(r->conn, "Content-Length", n, -1);
    if (r->srv->opts.enable_cors) {
        mg_response_header_add(r->conn, "Access-Control-Allow-Origin", r->srv->cors_origin, -1);
        mg_response_header_add(r->conn, "Access-Control-Allow-Methods", "POST, GET, DELETE, PUT, OPTIONS", -1);
        mg_response_header_add(r->conn, "Access-Control-Allow-Headers", "Content-Type, Authorization", -1);
        mg_response_header_add(r->conn, "Access-Control-Allow-Credentials", "true", -1);
    }
    if (extra) mg_response_header_add_lines(r->conn, extra);
    mg_response_header_send(r->conn);
}

void http_reply(struct http_req *r, int status, const char *content_type, const void *body, size_t len,
                const char *extra) {
    http_reply_head(r, status, content_type, len, extra);
    if (!r->head && len) mg_write(r->conn, body, len);
}

void http_reply_json(struct http_req *r, int status, json_t *j) {
    char *s = graph_json_dumps(j, -1);
    json_decref(j);
    http_reply(r, status, "application/json; charset=utf-8", s, strlen(s), NULL);
    mem_free(s);
}

void http_reply_ok_empty(struct http_req *r) { http_reply(r, 200, NULL, NULL, 0, NULL); }

json_t *http_error_json(const char *type, const char *message, const char *details) {
    json_t *e = json_object();
    json_object_set_new(e, "type", json_string(type));
    json_object_set_new(e, "message", json_string(message));
    json_object_set_new(e, "details", json_string(details ? details : message));
    json_object_set_new(e, "extra_info", json_object());
    return e;
}

void http_reply_error(struct http_req *r, int status, const char *type, const char *fmt, ...) {
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *body = json_object();
    json_object_set_new(body, "error", http_error_json(type, msg, NULL));
    http_reply_json(r, status, body);
}

/* ===== Request bodies ===== */

int http_read_body(struct http_req *r, size_t max, char **out, size_t *len) {
    *out = NULL;
    *len = 0;
    long long declared = r->ri->content_length; /* -1 when chunked or absent */
    if (declared > 0 && (unsigned long long)declared > max) {
        /* Do not read (and discard) a huge body just to refuse it: close after replying. */
        mg_disable_connection_keep_alive(r->conn);
        http_reply_error(r, 413, "request_too_large", "Request body of %lld bytes is larger than the limit of %zu bytes",
                         declared, max);
        return -1;
    }
    size_t cap = declared > 0 ? (size_t)declared + 1 : 4096, n = 0;
    char *buf = mem_alloc(cap);
    for (;;) {
        if (n + 1 >= cap) {
            cap *= 2;
            buf = mem_realloc(buf, cap);
        }
        int got = mg_read(r->conn, buf + n, cap - 1 - n);
        if (got == 0) break;
        if (got < 0) {
            mem_free(buf);
            mg_disable_connection_keep_alive(r->conn);
            http_reply_error(r, 400, "bad_request", "Could not read the request body");
            return -1;
        }
        n += (size_t)got;
        if (n > max) {
            mem_free(buf);
            mg_disable_connection_keep_alive(r->conn);
            http_reply_error(r, 413, "request_too_large", "Request body is larger than the limit of %zu bytes", max);
            return -1;
        }
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return 0;
}

/* True when the text holds only JSON whitespace. */
static bool blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') return false;
    return true;
}

int http_read_json(struct http_req *r, bool empty_ok, json_t **out) {
    *out = NULL;
    char *body;
    size_t len;
    if (http_read_body(r, r->srv->max_body, &body, &len)) return -1;
    if (blank(body, len)) {
        mem_free(body);
        if (empty_ok) return 0;
        http_reply_error(r, 400, "invalid_json", "The request body is empty; expected a JSON object");
        return -1;
    }
    struct err err = {0};
    int rc = graph_json_loads(body, len, out, &err);
    mem_free(body);
    if (rc) {
        http_reply_error(r, 400, "invalid_json", "The request body is not valid JSON: %s", err.msg);
        return -1;
    }
    return 0;
}

/* ===== Request details ===== */

int http_query(const struct http_req *r, const char *name, char *buf, size_t n) {
    const char *q = r->ri->query_string;
    if (!q) return 0;
    /* A decoded value is never longer than the query string: decode into a buffer that size,
     * so "absent" (-1) and "too long for buf" are told apart. */
    size_t ql = strlen(q);
    char *tmp = mem_alloc(ql + 1);
    int rc = mg_get_var(q, ql, name, tmp, ql + 1);
    int found = rc >= 0 && (size_t)rc < n ? 1 : rc >= 0 ? -1 : 0;
    if (found == 1) memcpy(buf, tmp, (size_t)rc + 1);
    mem_free(tmp);
    return found;
}

const char *http_header(const struct http_req *r, const char *name) { return mg_get_header(r->conn, name); }
