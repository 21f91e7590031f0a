/* graph/prompt.h -- an API-format prompt: parsing the POST /prompt body and validating it as
 * ComfyUI v0.3.64's validate_prompt does (same error types, messages and JSON shapes; plus
 * "dependency_cycle" from newer versions, so a cycle is reported instead of hanging).
 * Owns: struct graph_prompt (the resolved graph the executor runs).
 * Must not: run nodes (exec.c does), touch the network.
 * Threads: any; a graph_prompt belongs to one thread at a time.
 * Ownership: graph_prompt_validate returns a graph_prompt freed with graph_prompt_free; every
 * json_t returned is a new reference the caller decrefs. */
#ifndef KILN_GRAPH_PROMPT_H
#define KILN_GRAPH_PROMPT_H

#include "base/err.h"
#include "graph/registry.h"
#include "graph/value.h"

#include <jansson.h>
#include <stdbool.h>

/* ===== The resolved graph ===== */

enum graph_input_kind {
    GRAPH_INPUT_ABSENT,                  /* optional input not given */
    GRAPH_INPUT_LITERAL,                 /* a widget value, coerced */
    GRAPH_INPUT_LINK,                    /* ["src", slot] */
};

struct graph_input {
    enum graph_input_kind kind;
    struct value literal;                /* LITERAL: the coerced value (owned) */
    int src;                             /* LINK: index of the source in graph_prompt.nodes */
    int src_output;                      /* LINK: output slot of the source */
};

struct graph_node {
    char *id;                            /* node id (owned copy of the prompt key) */
    const struct node_class *cls;        /* its class (never NULL after validation) */
    json_t *json;                        /* the node object inside graph_prompt.json (borrowed) */
    struct graph_input *inputs;          /* node_class_n_inputs(cls) entries (owned) */
    int n_inputs;
    bool valid;                          /* validated without errors (itself and upstream) */
};

struct graph_prompt {
    json_t *json;                        /* the prompt, literals coerced in place (one reference) */
    struct graph_node *nodes;            /* every node, in the prompt's key order */
    int n_nodes;
    int *outputs;                        /* indices of the valid output nodes to execute */
    int n_outputs;
    json_t *node_errors;                 /* {} or the errors of invalid outputs (partial success) */
};

/* ===== Parsing ===== */

/* Builds one error object {"type","message","details","extra_info"}; steals extra_info (NULL
 * gives {}). */
json_t *graph_error_new(const char *type, const char *message, const char *details, json_t *extra_info);

/* Picks the prompt out of a POST /prompt body: body["prompt"] when present. With allow_bare
 * (the CLI), a body without "prompt" is taken as the prompt itself. Returns 0 and a new
 * reference in *prompt, or STATUS_ERR_INVALID with *error_body = {"error": no_prompt /
 * invalid_prompt, "node_errors": {}} (a new reference). */
int graph_prompt_from_body(json_t *body, bool allow_bare, json_t **prompt, json_t **error_body, struct err *err);

/* ===== Validation ===== */

/* Validates `prompt` (a JSON object keyed by node id) against the registry, coercing literal
 * inputs in place (INT/FLOAT/STRING/BOOLEAN as Python's int()/float()/str()/bool(), and
 * {"__value__": x} unwrapped), as ComfyUI writes them back.
 *
 * `partial_targets` (may be NULL) is partial_execution_targets: a JSON array of node ids;
 * only output nodes listed there become targets.
 *
 * Returns 0 with *out when at least one output is valid: out->outputs lists the valid ones and
 * out->node_errors the invalid ones (partial validity). Returns STATUS_ERR_INVALID when the
 * prompt cannot run, with *error_body = {"error": {...}, "node_errors": {...}} exactly as
 * ComfyUI's 400 reply, and a one-line summary in err. Other negative statuses are internal
 * failures (err says which). The prompt's reference count is increased, not stolen. */
int graph_prompt_validate(json_t *prompt, const struct graph_paths *paths, const json_t *partial_targets,
                          struct graph_prompt **out, json_t **error_body, struct err *err);

/* Index of the node with id `id`, or -1. */
int graph_prompt_find(const struct graph_prompt *p, const char *id);

/* The valid output ids as a JSON array (outputs_to_execute). New reference. */
json_t *graph_prompt_outputs_json(const struct graph_prompt *p);

/* NULL-safe. */
void graph_prompt_free(struct graph_prompt *p);

#endif
