/* graph/prompt.c -- the POST /prompt body, error objects, and struct graph_prompt bookkeeping.
 * Owns: graph_prompt's memory (nodes, inputs, the prompt reference).
 * Must not: validate (validate.c) or run (exec.c).
 * Threads: any.
 * Ownership: see prompt.h; graph_prompt_free releases everything validate made. */
#include "graph/prompt.h"

#include "base/mem.h"
#include "base/status.h"

#include <string.h>

json_t *graph_error_new(const char *type, const char *message, const char *details, json_t *extra_info) {
    json_t *e = json_object();
    json_object_set_new(e, "type", json_string(type));
    json_object_set_new(e, "message", json_string(message));
    json_object_set_new(e, "details", json_string(details ? details : ""));
    json_object_set_new(e, "extra_info", extra_info ? extra_info : json_object());
    return e;
}

/* {"error": error, "node_errors": {}}; steals error. */
static json_t *error_body(json_t *error) {
    json_t *b = json_object();
    json_object_set_new(b, "error", error);
    json_object_set_new(b, "node_errors", json_object());
    return b;
}

int graph_prompt_from_body(json_t *body, bool allow_bare, json_t **prompt, json_t **err_body, struct err *err) {
    *prompt = NULL;
    *err_body = NULL;
    json_t *p = json_is_object(body) ? json_object_get(body, "prompt") : NULL;
    if (!p && allow_bare && json_is_object(body)) p = body;
    if (!p) {
        *err_body = error_body(graph_error_new("no_prompt", "No prompt provided", "No prompt provided", NULL));
        return err_set(err, STATUS_ERR_INVALID, "No prompt provided");
    }
    if (!json_is_object(p)) {
        *err_body = error_body(graph_error_new("invalid_prompt", "Cannot execute because the prompt is not a JSON object.",
                                               "The \"prompt\" value must be an object keyed by node id.", NULL));
        return err_set(err, STATUS_ERR_INVALID, "the prompt is not a JSON object");
    }
    *prompt = json_incref(p);
    return 0;
}

int graph_prompt_find(const struct graph_prompt *p, const char *id) {
    for (int i = 0; i < p->n_nodes; i++)
        if (strcmp(p->nodes[i].id, id) == 0) return i;
    return -1;
}

json_t *graph_prompt_outputs_json(const struct graph_prompt *p) {
    json_t *a = json_array();
    for (int i = 0; i < p->n_outputs; i++) json_array_append_new(a, json_string(p->nodes[p->outputs[i]].id));
    return a;
}

void graph_prompt_free(struct graph_prompt *p) {
    if (!p) return;
    for (int i = 0; i < p->n_nodes; i++) {
        struct graph_node *n = &p->nodes[i];
        for (int k = 0; k < n->n_inputs; k++) value_deinit(&n->inputs[k].literal);
        mem_free(n->inputs);
        mem_free(n->id);
    }
    mem_free(p->nodes);
    mem_free(p->outputs);
    json_decref(p->node_errors);
    json_decref(p->json);
    mem_free(p);
}
