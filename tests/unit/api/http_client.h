/* tests/unit/api/http_client.h -- a blocking HTTP/1.1 test client (CivetWeb's client API) for the
 * api tests: one request per connection, the reply's status, body, the headers the tests look at,
 * and the body parsed as JSON when it is JSON. Header-only (static functions), included by
 * test_api.c, test_web.c, test_user.c and test_limits.c after cmocka.h.
 * Threads: the calling test thread.
 * Ownership: a struct resp owns its body and JSON; free them with resp_free. */
#ifndef KILN_TESTS_API_HTTP_CLIENT_H
#define KILN_TESTS_API_HTTP_CLIENT_H

#include "graph/json.h"

#include <civetweb.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct resp {
    int status;
    char *body;                      /* NUL-terminated (malloc'd) */
    size_t len;
    char ctype[128], cache[128], location[256], disp[256];
    char cors[128];                  /* Access-Control-Allow-Origin */
    char www_auth[128];              /* WWW-Authenticate */
    long content_length;             /* the header, -1 when absent */
    json_t *json;                    /* the body parsed (graph_json_loads: keeps 2^64-1), or NULL */
};

static void resp_free(struct resp *r) {
    free(r->body);
    json_decref(r->json);
    memset(r, 0, sizeof *r);
}

/* One request on a fresh connection. `path` is sent as it is (not normalised); `headers` are
 * extra "Name: value\r\n" lines (or NULL); body/len may be NULL/0. */
static struct resp request(int port, const char *method, const char *path, const char *headers, const void *body,
                           size_t len) {
    struct resp r = {.content_length = -1};
    char eb[256] = "";
    struct mg_connection *c = mg_connect_client("127.0.0.1", port, 0, eb, sizeof eb);
    if (!c) fail_msg("connect to %d: %s", port, eb);
    mg_printf(c, "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n%sContent-Length: %zu\r\n\r\n", method,
              path, port, headers ? headers : "", len);
    if (len) mg_write(c, body, len);
    if (mg_get_response(c, eb, sizeof eb, 10000) < 0) fail_msg("%s %s: no response: %s", method, path, eb);
    const struct mg_response_info *ri = mg_get_response_info(c);
    r.status = ri->status_code;
    for (int i = 0; i < ri->num_headers; i++) {
        const char *k = ri->http_headers[i].name, *v = ri->http_headers[i].value;
        if (!strcasecmp(k, "Content-Type")) snprintf(r.ctype, sizeof r.ctype, "%s", v);
        if (!strcasecmp(k, "Cache-Control")) snprintf(r.cache, sizeof r.cache, "%s", v);
        if (!strcasecmp(k, "Location")) snprintf(r.location, sizeof r.location, "%s", v);
        if (!strcasecmp(k, "Content-Disposition")) snprintf(r.disp, sizeof r.disp, "%s", v);
        if (!strcasecmp(k, "Access-Control-Allow-Origin")) snprintf(r.cors, sizeof r.cors, "%s", v);
        if (!strcasecmp(k, "WWW-Authenticate")) snprintf(r.www_auth, sizeof r.www_auth, "%s", v);
        if (!strcasecmp(k, "Content-Length")) r.content_length = atol(v);
    }
    size_t cap = 65536;
    r.body = malloc(cap);
    for (;;) {
        if (r.len + 4096 > cap) r.body = realloc(r.body, cap *= 2);
        int n = mg_read(c, r.body + r.len, cap - r.len - 1);
        if (n <= 0) break;
        r.len += (size_t)n;
    }
    r.body[r.len] = 0;
    mg_close_connection(c);
    if (graph_json_loads(r.body, r.len, &r.json, NULL)) r.json = NULL;
    return r;
}

#endif
