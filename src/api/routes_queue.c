/* api/routes_queue.c -- the prompt routes: POST /prompt (parse, counter, validate, route,
 * submit), GET /prompt, GET/POST /queue, GET /queue/all, GET/POST /history, GET /history/{id},
 * POST /interrupt, POST /free (COMFY_API.md §1, §2, §3.5, §3.6). POST /prompt also enforces
 * kiln's limits (--max-nodes before validation; --max-batch and --max-pixels after it, on the
 * coerced literals), each a 400 in validation's error shape.
 * Owns: nothing past one request; validated prompts pass to the sched.
 * Must not: run or reorder prompts (sched/ does), answer without a JSON body on an error.
 * Threads: CivetWeb handler threads. */
#include "api/internal.h"

#include "base/clock.h"
#include "base/log.h"
#include "base/mem.h"
#include "base/status.h"
#include "graph/json.h"
#include "graph/prompt.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ===== Helpers ===== */

/* Python truthiness of a JSON value (front, unload_models, clear, ...). */
static bool truthy(const json_t *j) {
    if (!j) return false;
    switch (json_typeof(j)) {
    case JSON_TRUE: return true;
    case JSON_INTEGER: return json_integer_value(j) != 0;
    case JSON_REAL: return json_real_value(j) != 0.0;
    case JSON_STRING: return json_string_length(j) > 0;
    case JSON_ARRAY: return json_array_size(j) > 0;
    case JSON_OBJECT: return json_object_size(j) > 0;
    default: return false;
    }
}

/* Python's float(x) of a JSON "number" field: numbers, bools and numeric strings. */
static bool to_float(const json_t *j, double *out) {
    const char *digits;
    if (json_is_number(j)) {
        *out = json_number_value(j);
        return true;
    }
    if (json_is_boolean(j)) {
        *out = json_is_true(j) ? 1.0 : 0.0;
        return true;
    }
    if (graph_json_is_bigint(j, &digits)) {
        *out = strtod(digits, NULL);
        return true;
    }
    if (json_is_string(j)) {
        const char *s = json_string_value(j);
        char *end;
        errno = 0;
        double v = strtod(s, &end);
        while (isspace((unsigned char)*end)) end++;
        if (end == s || *end) return false;
        *out = v;
        return true;
    }
    return false;
}

/* A device index from JSON (int or digit string); -1 when it is not one. */
static int json_index(const json_t *j) {
    if (json_is_integer(j)) {
        json_int_t v = json_integer_value(j);
        return v >= 0 && v <= 1000000 ? (int)v : -1;
    }
    if (json_is_string(j)) {
        const char *s = json_string_value(j);
        if (!*s) return -1;
        char *end;
        long v = strtol(s, &end, 10);
        return *end || v < 0 || v > 1000000 || !isdigit((unsigned char)s[0]) ? -1 : (int)v;
    }
    return -1;
}

/* Replies 400 invalid_target_gpu naming what was asked and the devices. */
static void reply_bad_target(struct http_req *r, const char *what) {
    char list[1024], msg[1400];
    api__device_list(r->srv, list, sizeof list);
    snprintf(msg, sizeof msg, "Target GPU %s does not exist; devices: %s", what, list);
    json_t *body = json_object();
    json_object_set_new(body, "error", http_error_json("invalid_target_gpu", msg, NULL));
    json_object_set_new(body, "node_errors", json_object());
    http_reply_json(r, 400, body);
}

/* str(value) as ComfyUI applies it to prompt_id / client_id; NULL for null. mem_alloc'd. */
static char *py_str(const json_t *j) {
    if (!j || json_is_null(j)) return NULL;
    if (json_is_string(j) && !graph_json_is_bigint(j, NULL)) return mem_strdup(json_string_value(j));
    return graph_json_py_str(j);
}

/* ===== Limits ===== */

/* A 400 {"error": {type, message, details, extra_info}, "node_errors": {...}} for a prompt over
 * a limit; node_errors names the node (when node_id is given) as validation errors do. */
static void reply_limit(struct http_req *r, const char *type, const char *message, const char *details,
                        const struct graph_node *node, const char *input) {
    json_t *node_errors = json_object();
    if (node) {
        json_t *e = graph_error_new(type, message, details, input ? json_pack("{s:s}", "input_name", input) : NULL);
        json_t *ne = json_pack("{s:[o],s:[],s:s}", "errors", e, "dependent_outputs", "class_type", node->cls->name);
        json_object_set_new(node_errors, node->id, ne);
    }
    json_t *body = json_object();
    json_object_set_new(body, "error", http_error_json(type, message, details));
    json_object_set_new(body, "node_errors", node_errors);
    http_reply_json(r, 400, body);
}

/* The literal INT input `name` of a node, when it has one. */
static bool literal_int(const struct graph_node *node, const char *name, int64_t *out) {
    for (int k = 0; k < node->n_inputs; k++) {
        const struct node_input *in = node_class_input(node->cls, k, NULL);
        if (!in || strcmp(in->name, name) != 0) continue;
        const struct graph_input *gi = &node->inputs[k];
        if (gi->kind != GRAPH_INPUT_LITERAL || gi->literal.kind != VALUE_INT) return false;
        *out = gi->literal.i;
        return true;
    }
    return false;
}

/* The size limits of a validated prompt: batch_size / amount <= max_batch per node, and
 * width * height * batch_size summed over the nodes that ask for a size (EmptyLatentImage,
 * EmptyImage, LatentUpscale, ImageScale, ...: literal width and height inputs, batch 1 when
 * the node has no literal batch_size) <= max_pixels. Linked sizes are not known before the
 * run and are not counted. Returns false after replying 400. */
static bool check_sizes(struct http_req *r, const struct graph_prompt *gp) {
    struct api_server *srv = r->srv;
    unsigned long long total = 0;
    char msg[256], details[512];
    for (int i = 0; i < gp->n_nodes; i++) {
        const struct graph_node *node = &gp->nodes[i];
        if (!node->inputs) continue; /* not reached by an output: never runs */
        static const char *const batch_names[] = {"batch_size", "amount"};
        int64_t batch = 1, v;
        for (size_t b = 0; b < sizeof batch_names / sizeof batch_names[0]; b++) {
            if (!literal_int(node, batch_names[b], &v)) continue;
            if (v > srv->max_batch) {
                snprintf(msg, sizeof msg, "Batch too large");
                snprintf(details, sizeof details, "%s %lld of node #%s (%s) is larger than the limit of %d (--max-batch)",
                         batch_names[b], (long long)v, node->id, node->cls->name, srv->max_batch);
                reply_limit(r, "batch_too_large", msg, details, node, batch_names[b]);
                return false;
            }
            if (b == 0 && v > 0) batch = v;
        }
        int64_t w, h;
        if (!literal_int(node, "width", &w) || !literal_int(node, "height", &h) || w <= 0 || h <= 0) continue;
        /* w, h <= 16384 (MAX_RESOLUTION, checked by validation) and batch <= max_batch: no overflow */
        total += (unsigned long long)w * (unsigned long long)h * (unsigned long long)batch;
        if (total > srv->max_pixels) {
            snprintf(msg, sizeof msg, "Image size too large");
            snprintf(details, sizeof details,
                     "The prompt asks for %llu pixels in all (node #%s (%s): %lldx%lld, batch %lld), more than the "
                     "limit of %llu (--max-pixels)",
                     total, node->id, node->cls->name, (long long)w, (long long)h, (long long)batch, srv->max_pixels);
            reply_limit(r, "image_too_large", msg, details, node, "width");
            return false;
        }
    }
    return true;
}

/* ===== POST /prompt ===== */

void api__post_prompt(struct http_req *r, const char *arg) {
    struct api_server *srv = r->srv;
    json_t *body = NULL;
    const double t0 = clock_now();
    if (http_read_json(r, false, &body)) return;
    const double t_read = clock_now();
    if (!json_is_object(body)) {
        json_decref(body);
        http_reply_error(r, 400, "invalid_json", "The body of POST /prompt must be a JSON object");
        return;
    }

    /* ComfyUI's priority: "number" as given (float), else the counter, advanced on every POST
     * without "number" even when validation fails; "front" puts it before the others. */
    json_t *jnum = json_object_get(body, "number");
    bool has_number = jnum != NULL;
    double number = 0;
    int64_t counter = 0;
    if (has_number) {
        if (!to_float(jnum, &number) || !isfinite(number)) {
            json_decref(body);
            http_reply_error(r, 400, "invalid_number", "\"number\" must be a number");
            return;
        }
    } else {
        counter = sched_next_number(srv->sched);
    }

    char *prompt_id = NULL, *client_id = NULL;
    json_t *prompt = NULL, *err_body = NULL, *extra = NULL, *node_errors = NULL;
    struct graph_prompt *gp = NULL;
    struct err err = {0};

    /* routing: header, then extra_data.target_gpu, then the port, else automatic */
    json_t *jextra = json_object_get(body, "extra_data");
    if (jextra && !json_is_object(jextra) && !json_is_null(jextra)) {
        http_reply_error(r, 400, "invalid_extra_data", "\"extra_data\" must be a JSON object");
        goto done;
    }
    int target = r->port_device;
    const char *hdr = http_header(r, "X-TARGET-GPU");
    json_t *jtarget = json_object_get(jextra, "target_gpu");
    if (hdr && *hdr) {
        json_t *h = json_string(hdr);
        target = h ? json_index(h) : -1;
        json_decref(h);
        if (target < 0 || target >= srv->n_devices) {
            char what[128];
            snprintf(what, sizeof what, "'%.100s' (X-TARGET-GPU)", hdr);
            reply_bad_target(r, what);
            goto done;
        }
    } else if (jtarget && !json_is_null(jtarget)) {
        target = json_index(jtarget);
        if (target < 0 || target >= srv->n_devices) {
            char *t = graph_json_py_repr(jtarget);
            char what[160];
            snprintf(what, sizeof what, "%.100s (extra_data.target_gpu)", t);
            mem_free(t);
            reply_bad_target(r, what);
            goto done;
        }
    }

    if (graph_prompt_from_body(body, false, &prompt, &err_body, &err)) {
        if (err_body)
            http_reply_json(r, 400, err_body);
        else
            http_reply_error(r, 400, "no_prompt", "%s", err.msg);
        err_body = NULL;
        goto done;
    }

    if (json_is_object(prompt) && json_object_size(prompt) > (size_t)srv->max_nodes) {
        char details[256];
        snprintf(details, sizeof details, "The prompt has %zu nodes; the limit is %d (--max-nodes)",
                 json_object_size(prompt), srv->max_nodes);
        reply_limit(r, "too_many_nodes", "Prompt has too many nodes", details, NULL, NULL);
        goto done;
    }

    /* prompt_id: str() of what the client sent (null = absent), else a fresh uuid4 */
    prompt_id = py_str(json_object_get(body, "prompt_id"));
    if (prompt_id && (strlen(prompt_id) == 0 || strlen(prompt_id) >= sizeof ((struct sched_ticket *)0)->prompt_id)) {
        http_reply_error(r, 400, "invalid_prompt_id", "prompt_id must be 1 to %zu characters long",
                         sizeof ((struct sched_ticket *)0)->prompt_id - 1);
        goto done;
    }
    client_id = py_str(json_object_get(body, "client_id"));

    json_t *partial = json_object_get(body, "partial_execution_targets");
    if (json_is_null(partial)) partial = NULL;
    const double t_parsed = clock_now();
    int rc = graph_prompt_validate(prompt, &srv->opts.paths, partial, &gp, &err_body, &err);
    const double t_valid = clock_now();
    if (rc == STATUS_ERR_INVALID && err_body) {
        http_reply_json(r, 400, err_body);
        err_body = NULL;
        goto done;
    }
    if (rc) {
        log_error("http: POST /prompt: validation failed internally: %s", err.msg);
        http_reply_error(r, 500, "internal_error", "Validation failed: %s", err.msg);
        goto done;
    }

    if (!check_sizes(r, gp)) goto done;

    extra = jextra && json_is_object(jextra) ? json_deep_copy(jextra) : json_object();
    if (client_id) json_object_set_new(extra, "client_id", json_string(client_id));
    node_errors = json_incref(gp->node_errors);
    struct sched_submit sub = {
        .prompt = gp, .extra_data = extra, .client_id = client_id, .prompt_id = prompt_id, .target = target,
        .has_number = has_number, .number = number, .front = truthy(json_object_get(body, "front")),
    };
    struct sched_ticket ticket;
    rc = sched_submit(srv->sched, &sub, counter, &ticket, &err);
    /* where a POST spends its time (on a cold start the first one took 1-15 ms on the lent machines) */
    log_debug("http: POST /prompt: body read in %.1f ms, parsed %.1f ms, validated %.1f ms, queued %.1f ms",
              1e3 * (t_read - t0), 1e3 * (t_parsed - t_read), 1e3 * (t_valid - t_parsed), 1e3 * (clock_now() - t_valid));
    if (rc == STATUS_ERR_RANGE) {
        char what[32];
        snprintf(what, sizeof what, "%d", target);
        reply_bad_target(r, what);
        goto done;
    }
    if (rc == STATUS_ERR_EXISTS) {
        http_reply_error(r, 400, "invalid_prompt_id", "%s", err.msg[0] ? err.msg : "prompt_id is already queued");
        goto done;
    }
    if (rc == STATUS_ERR_INVALID) { /* the sched is shutting down */
        http_reply_error(r, 503, "unavailable", "Could not queue the prompt: %s", err.msg);
        goto done;
    }
    if (rc) {
        http_reply_error(r, 500, "internal_error", "Could not queue the prompt: %s", err.msg);
        goto done;
    }
    gp = NULL; /* the sched owns it now */
    json_t *reply = json_object();
    json_object_set_new(reply, "prompt_id", json_string(ticket.prompt_id));
    json_object_set_new(reply, "number",
                        ticket.number_is_int ? json_integer((json_int_t)ticket.number) : json_real(ticket.number));
    json_object_set_new(reply, "node_errors", node_errors ? json_incref(node_errors) : json_object());
    http_reply_json(r, 200, reply);

done:
    graph_prompt_free(gp);
    json_decref(node_errors);
    json_decref(extra);
    json_decref(err_body);
    json_decref(prompt);
    json_decref(body);
    mem_free(prompt_id);
    mem_free(client_id);
}

/* ===== GET /prompt, /queue, /queue/all ===== */

void api__get_prompt(struct http_req *r, const char *arg) {
    int dev = api__scope(r);
    if (dev == -2) return;
    json_t *j = json_pack("{s:{s:i}}", "exec_info", "queue_remaining", sched_queue_remaining(r->srv->sched, dev));
    http_reply_json(r, 200, j);
}

void api__get_queue(struct http_req *r, const char *arg) {
    int dev = api__scope(r);
    if (dev == -2) return;
    json_t *j = sched_queue_json(r->srv->sched, dev);
    if (dev >= 0) json_object_set_new(j, "gpu_id", json_integer(dev)); /* per-device view */
    http_reply_json(r, 200, j);
}

void api__get_queue_all(struct http_req *r, const char *arg) { http_reply_json(r, 200, sched_queue_all_json(r->srv->sched)); }

/* Applies {"delete": [ids]} with fn; false (after a 400) when "delete" is not a list. */
static bool apply_delete(struct http_req *r, json_t *body, void (*fn)(struct sched *, const char *)) {
    json_t *del = json_object_get(body, "delete");
    if (!del || json_is_null(del)) return true;
    if (!json_is_array(del)) {
        http_reply_error(r, 400, "invalid_request", "\"delete\" must be a list of prompt ids");
        return false;
    }
    size_t i;
    json_t *id;
    json_array_foreach(del, i, id) {
        char *s = py_str(id);
        if (s) fn(r->srv->sched, s);
        mem_free(s);
    }
    return true;
}

void api__post_queue(struct http_req *r, const char *arg) {
    int dev = api__scope(r);
    if (dev == -2) return;
    json_t *body;
    if (http_read_json(r, false, &body)) return;
    if (!json_is_object(body)) {
        json_decref(body);
        http_reply_error(r, 400, "invalid_json", "The body of POST /queue must be a JSON object");
        return;
    }
    if (truthy(json_object_get(body, "clear"))) sched_queue_clear(r->srv->sched, dev);
    if (apply_delete(r, body, sched_queue_delete)) http_reply_ok_empty(r);
    json_decref(body);
}

/* ===== History ===== */

/* An integer query parameter; *v = -1 when absent. False after replying 400. */
static bool query_int(struct http_req *r, const char *name, int *v) {
    char buf[32];
    int q = http_query(r, name, buf, sizeof buf);
    *v = -1;
    if (q == 0) return true;
    char *end;
    long x = q > 0 ? strtol(buf, &end, 10) : 0;
    if (q < 0 || !buf[0] || *end || x < 0 || x > 1000000000) {
        http_reply_error(r, 400, "invalid_query", "Query parameter %s must be a non-negative integer", name);
        return false;
    }
    *v = (int)x;
    return true;
}

void api__get_history(struct http_req *r, const char *arg) {
    int max_items, offset;
    if (!query_int(r, "max_items", &max_items) || !query_int(r, "offset", &offset)) return;
    http_reply_json(r, 200, sched_history_json(r->srv->sched, NULL, max_items, offset));
}

void api__get_history_id(struct http_req *r, const char *arg) {
    http_reply_json(r, 200, sched_history_json(r->srv->sched, arg, -1, -1));
}

void api__post_history(struct http_req *r, const char *arg) {
    json_t *body;
    if (http_read_json(r, false, &body)) return;
    if (!json_is_object(body)) {
        json_decref(body);
        http_reply_error(r, 400, "invalid_json", "The body of POST /history must be a JSON object");
        return;
    }
    if (truthy(json_object_get(body, "clear"))) sched_history_clear(r->srv->sched);
    if (apply_delete(r, body, sched_history_delete)) http_reply_ok_empty(r);
    json_decref(body);
}

/* ===== Interrupt and free ===== */

void api__post_interrupt(struct http_req *r, const char *arg) {
    int dev = api__scope(r);
    if (dev == -2) return;
    char *body;
    size_t len;
    if (http_read_body(r, r->srv->max_body, &body, &len)) return;
    /* empty or non-JSON bodies count as {} (ComfyUI): a global (here: scope-wide) interrupt */
    json_t *j = NULL;
    char *prompt_id = NULL;
    if (graph_json_loads(body, len, &j, NULL) == 0 && json_is_object(j)) prompt_id = py_str(json_object_get(j, "prompt_id"));
    mem_free(body);
    json_decref(j);
    sched_interrupt(r->srv->sched, prompt_id, prompt_id ? -1 : dev);
    mem_free(prompt_id);
    http_reply_ok_empty(r);
}

void api__post_free(struct http_req *r, const char *arg) {
    int dev = api__scope(r);
    if (dev == -2) return;
    json_t *body;
    if (http_read_json(r, true, &body)) return;
    if (body && !json_is_object(body)) {
        json_decref(body);
        http_reply_error(r, 400, "invalid_json", "The body of POST /free must be a JSON object");
        return;
    }
    json_t *gpu = json_object_get(body, "gpu");
    if (gpu && !json_is_null(gpu)) {
        dev = json_index(gpu);
        if (dev < 0 || dev >= r->srv->n_devices) {
            char *t = graph_json_py_repr(gpu);
            reply_bad_target(r, t);
            mem_free(t);
            json_decref(body);
            return;
        }
    }
    bool unload = truthy(json_object_get(body, "unload_models"));
    bool free_mem = truthy(json_object_get(body, "free_memory"));
    if (unload || free_mem) sched_free_memory(r->srv->sched, dev, unload || free_mem, free_mem);
    json_decref(body);
    http_reply_ok_empty(r);
}
