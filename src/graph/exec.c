/* graph/exec.c -- the prompt executor: runs each needed node once, depth-first from the
 * outputs, and keeps node outputs only while a pending consumer needs them.
 * Owns: per-node output values during a run, the sticky error record, event dispatch.
 * Must not: parse or validate (prompt.h did), talk to clients (callbacks do).
 * Threads: the caller's worker thread; opts->interrupt may be set from any thread.
 * Ownership: exec_report's JSON is owned by the report (exec_report_deinit). */
#include "graph/exec.h"

#include "base/base.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/mem.h"
#include "base/status.h"
#include "graph/engine.h"
#include "graph/json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ===== Run state ===== */

enum node_state { NODE_PENDING, NODE_RUNNING, NODE_DONE };

struct slot {
    enum node_state state;
    bool needed;                         /* in the dependency subgraph of a target */
    bool cached;                         /* outputs came from the cache hook */
    int consumers;                       /* needed, not yet run nodes that read our outputs */
    struct value *outputs;               /* n_outputs values, or NULL when freed */
    int n_outputs;
    json_t *ui;                          /* cached UI (cache hits), or NULL */
};

struct exec_state {
    const struct graph_prompt *p;
    const struct exec_opts *o;
    struct exec_report *rep;
    struct slot *s;
};

static const struct exec_events *events(const struct exec_state *x) { return x->o->events; }
/* Calls an event callback when it is set (events with arguments). */
#define EMIT(x, name, ...)                                                              \
    do {                                                                                \
        if (events(x) && events(x)->name) events(x)->name(events(x)->user, __VA_ARGS__); \
    } while (0)
/* The same for events without arguments. */
#define EMIT0(x, name)                                                                  \
    do {                                                                                \
        if (events(x) && events(x)->name) events(x)->name(events(x)->user);             \
    } while (0)

/* ===== Helpers nodes call (declared in registry.h) ===== */

bool node_interrupted(const struct node_run *ctx) { return ctx->interrupt && atomic_load(ctx->interrupt); }

int node_progress(struct node_run *ctx, int64_t value, int64_t max, struct err *err) {
    if (node_interrupted(ctx)) return err_set(err, STATUS_ERR_INTERRUPTED, "Processing interrupted");
    struct exec_state *x = ctx->exec__;
    if (x) EMIT(x, progress, ctx->node_id, value, max);
    return 0;
}

void node_set_exception_type(struct node_run *ctx, const char *type) { ctx->exception_type = type; }

/* ===== Values ===== */

static void free_outputs(struct slot *s) {
    if (!s->outputs) return;
    for (int i = 0; i < s->n_outputs; i++) value_deinit(&s->outputs[i]);
    mem_free(s->outputs);
    s->outputs = NULL;
}

/* One value as execution_error's current_inputs shows it. */
static json_t *format_value(const struct value *v) {
    switch (v->kind) {
    case VALUE_NONE: return json_null();
    case VALUE_INT: return json_integer(v->i);
    case VALUE_FLOAT: return json_real(v->f);
    case VALUE_STRING: return json_string(v->s);
    case VALUE_BOOL: return json_boolean(v->b);
    case VALUE_OBJECT: return json_string(v->obj ? v->obj->type : "None");
    }
    return json_null();
}

/* ComfyUI's exception type for a status, unless the node chose one. */
static const char *exception_type(int rc) {
    switch (rc) {
    case STATUS_ERR_NOT_FOUND: return "FileNotFoundError";
    case STATUS_ERR_IO: return "OSError";
    case STATUS_ERR_INVALID:
    case STATUS_ERR_RANGE:
    case STATUS_ERR_FORMAT: return "ValueError";
    case STATUS_ERR_NOMEM: return "MemoryError";
    case STATUS_ERR_OOM_DEVICE: return "torch.OutOfMemoryError";
    case STATUS_ERR_INTERRUPTED: return "comfy.model_management.InterruptProcessingException";
    default: return "RuntimeError";
    }
}

static void set_error(struct exec_state *x, int idx, int rc, const char *msg, const char *type, json_t *inputs) {
    struct exec_report *rep = x->rep;
    rep->status = rc;
    const struct graph_node *n = &x->p->nodes[idx];
    snprintf(rep->error.node_id, sizeof rep->error.node_id, "%s", n->id);
    snprintf(rep->error.node_type, sizeof rep->error.node_type, "%s", n->cls->name);
    snprintf(rep->error.exception_message, sizeof rep->error.exception_message, "%s",
             msg && *msg ? msg : status_str(rc));
    snprintf(rep->error.exception_type, sizeof rep->error.exception_type, "%s", type ? type : exception_type(rc));
    json_decref(rep->error.current_inputs);
    rep->error.current_inputs = inputs;
}

/* ===== Planning ===== */

/* Marks idx and its uncached ancestors as needed and counts consumers. */
static void plan(struct exec_state *x, int idx, int depth) {
    struct slot *s = &x->s[idx];
    if (s->needed || depth > 100000) return;
    s->needed = true;
    if (s->cached) return;
    const struct graph_node *n = &x->p->nodes[idx];
    for (int k = 0; k < n->n_inputs; k++) {
        if (n->inputs[k].kind != GRAPH_INPUT_LINK) continue;
        x->s[n->inputs[k].src].consumers++;
        plan(x, n->inputs[k].src, depth + 1);
    }
}

/* ===== Running one node ===== */

static int run_node(struct exec_state *x, int idx) {
    const struct graph_node *n = &x->p->nodes[idx];
    struct slot *s = &x->s[idx];
    EMIT(x, executing, n->id);

    struct value *in = mem_calloc((size_t)(n->n_inputs ? n->n_inputs : 1), sizeof *in);
    json_t *cur = json_object();
    for (int k = 0; k < n->n_inputs; k++) {
        const struct graph_input *gi = &n->inputs[k];
        if (gi->kind == GRAPH_INPUT_LITERAL) in[k] = gi->literal; /* borrowed */
        if (gi->kind == GRAPH_INPUT_LINK) {
            const struct slot *src = &x->s[gi->src];
            ASSERT(src->outputs && gi->src_output < src->n_outputs);
            in[k] = src->outputs[gi->src_output]; /* borrowed */
        }
        if (gi->kind != GRAPH_INPUT_ABSENT) {
            json_t *one = json_array();
            json_array_append_new(one, format_value(&in[k]));
            json_object_set_new(cur, node_class_input(n->cls, k, NULL)->name, one);
        }
    }

    s->n_outputs = node_class_n_outputs(n->cls);
    s->outputs = mem_calloc((size_t)(s->n_outputs ? s->n_outputs : 1), sizeof *s->outputs);
    json_t *extra_png = x->o->extra_data ? json_object_get(x->o->extra_data, "extra_pnginfo") : NULL;
    struct node_run ctx = {
        .node_id = n->id,
        .cls = n->cls,
        .prompt = x->p->json,
        .extra_pnginfo = json_is_object(extra_png) ? extra_png : NULL,
        .paths = x->o->paths,
        .ui = json_object(),
        .engine = x->o->engine,
        .interrupt = x->o->interrupt,
        .disable_metadata = x->o->disable_metadata,
        .host = x->o->host,
        .host_user = x->o->host_user,
        .exec__ = x,
    };
    struct err err = {0};
    int rc = 0;
    if (ctx.interrupt && atomic_load(ctx.interrupt)) rc = err_set(&err, STATUS_ERR_INTERRUPTED, "Processing interrupted");
    /* A socket input must hold an object: validation (like ComfyUI's) lets a literal or an
     * empty upstream output through, and nodes may rely on getting an object. */
    for (int k = 0; k < n->n_inputs && !rc; k++) {
        const struct node_input *spec = node_class_input(n->cls, k, NULL);
        if (spec->kind != NODE_INPUT_OBJECT || n->inputs[k].kind == GRAPH_INPUT_ABSENT) continue;
        if (spec->type && strcmp(spec->type, "*") == 0) continue;
        if (in[k].kind != VALUE_OBJECT || !in[k].obj) {
            rc = err_set(&err, STATUS_ERR_INVALID, "input '%s' of %s must be a %s, got %s", spec->name, n->cls->name,
                         node_input_type_name(spec),
                         n->inputs[k].kind == GRAPH_INPUT_LITERAL ? "a literal value" : "None");
            ctx.exception_type = "TypeError";
        }
    }
    double t_run = clock_now();
    if (!rc) rc = n->cls->run(&ctx, in, s->outputs, &err);
    if (!rc) log_debug("node %s (%s) ran in %.1f ms", n->id, n->cls->name, 1e3 * (clock_now() - t_run));
    mem_free(in);

    if (rc) {
        if (rc != STATUS_ERR_INTERRUPTED)
            log_error("node %s (%s) failed: %s", n->id, n->cls->name, err.msg[0] ? err.msg : status_str(rc));
        set_error(x, idx, rc, err.msg, ctx.exception_type, cur);
        free_outputs(s);
        json_decref(ctx.ui);
        return rc;
    }
    json_decref(cur);
    s->state = NODE_DONE;
    json_array_append_new(x->rep->executed, json_string(n->id));
    if (json_object_size(ctx.ui)) {
        json_object_set(x->rep->outputs, n->id, ctx.ui);
        EMIT(x, executed, n->id, ctx.ui);
    }
    if (x->o->cache && x->o->cache->put) x->o->cache->put(x->o->cache->user, x->p, idx, s->outputs, s->n_outputs,
                                                          json_object_size(ctx.ui) ? ctx.ui : NULL);
    json_decref(ctx.ui);

    /* Inputs consumed: sources nobody else waits for are freed now. */
    for (int k = 0; k < n->n_inputs; k++) {
        if (n->inputs[k].kind != GRAPH_INPUT_LINK) continue;
        struct slot *src = &x->s[n->inputs[k].src];
        if (--src->consumers == 0) free_outputs(src);
    }
    if (s->consumers == 0) free_outputs(s);
    return 0;
}

/* Runs idx after its inputs (depth-first). */
static int visit(struct exec_state *x, int idx) {
    struct slot *s = &x->s[idx];
    if (s->state == NODE_DONE) return 0;
    const struct graph_node *n = &x->p->nodes[idx];
    if (s->state == NODE_RUNNING) {
        set_error(x, idx, STATUS_ERR_INVALID, "Dependency cycle detected", "graph.DependencyCycleError", NULL);
        return STATUS_ERR_INVALID;
    }
    if (s->cached) {
        s->state = NODE_DONE;
        if (n->cls->output_node && s->ui) { /* cached outputs re-report their UI */
            json_object_set(x->rep->outputs, n->id, s->ui);
            EMIT(x, executed, n->id, s->ui);
        }
        return 0;
    }
    s->state = NODE_RUNNING;
    for (int k = 0; k < n->n_inputs; k++) {
        if (n->inputs[k].kind != GRAPH_INPUT_LINK) continue;
        int rc = visit(x, n->inputs[k].src);
        if (rc) return rc;
    }
    return run_node(x, idx);
}

/* ===== Input signatures (the cache key) ===== */

static int cmp_input_name(const void *a, const void *b, void *cls) {
    return strcmp(node_class_input(cls, *(const int *)a, NULL)->name, node_class_input(cls, *(const int *)b, NULL)->name);
}

/* Declared inputs of n that are given, sorted by name (indices into n->inputs). */
static int sorted_inputs(const struct graph_node *n, int *order) {
    int k = 0;
    for (int i = 0; i < n->n_inputs; i++)
        if (n->inputs[i].kind != GRAPH_INPUT_ABSENT) order[k++] = i;
    qsort_r(order, (size_t)k, sizeof *order, cmp_input_name, (void *)n->cls);
    return k;
}

/* get_ordered_ancestry: depth-first over links in input-name order, each ancestor once. */
static void ancestry(const struct graph_prompt *p, int idx, int *anc, int *n_anc, int depth) {
    const struct graph_node *n = &p->nodes[idx];
    int *order = mem_calloc((size_t)(n->n_inputs ? n->n_inputs : 1), sizeof *order);
    int k = sorted_inputs(n, order);
    for (int i = 0; i < k && depth < 100000; i++) {
        const struct graph_input *gi = &n->inputs[order[i]];
        if (gi->kind != GRAPH_INPUT_LINK) continue;
        bool seen = false;
        for (int a = 0; a < *n_anc; a++) seen |= anc[a] == gi->src;
        if (seen) continue;
        anc[(*n_anc)++] = gi->src;
        ancestry(p, gi->src, anc, n_anc, depth + 1);
    }
    mem_free(order);
}

static json_t *immediate_signature(const struct graph_prompt *p, int idx, const int *anc, int n_anc) {
    const struct graph_node *n = &p->nodes[idx];
    json_t *sig = json_array();
    json_array_append_new(sig, json_string(n->cls->name));
    json_array_append_new(sig, json_null()); /* IS_CHANGED */
    if (n->cls->not_idempotent) json_array_append_new(sig, json_string(n->id));
    json_t *inputs = json_object_get(n->json, "inputs");
    int *order = mem_calloc((size_t)(n->n_inputs ? n->n_inputs : 1), sizeof *order);
    int k = sorted_inputs(n, order);
    for (int i = 0; i < k; i++) {
        const struct graph_input *gi = &n->inputs[order[i]];
        const char *name = node_class_input(n->cls, order[i], NULL)->name;
        json_t *pair = json_array();
        json_array_append_new(pair, json_string(name));
        if (gi->kind == GRAPH_INPUT_LINK) {
            int a = 0;
            while (a < n_anc && anc[a] != gi->src) a++;
            json_t *link = json_array();
            json_array_append_new(link, json_string("ANCESTOR"));
            json_array_append_new(link, json_integer(a));
            json_array_append_new(link, json_integer(gi->src_output));
            json_array_append_new(pair, link);
        } else {
            json_t *v = json_object_get(inputs, name);
            json_array_append(pair, v ? v : json_null());
        }
        json_array_append_new(sig, pair);
    }
    mem_free(order);
    return sig;
}

char *exec_signature(const struct graph_prompt *p, int node) {
    int *anc = mem_calloc((size_t)(p->n_nodes ? p->n_nodes : 1), sizeof *anc);
    int n_anc = 0;
    ancestry(p, node, anc, &n_anc, 0);
    json_t *sig = json_array();
    json_array_append_new(sig, immediate_signature(p, node, anc, n_anc));
    for (int a = 0; a < n_anc; a++) /* ancestors' links use the same numbering */
        json_array_append_new(sig, immediate_signature(p, anc[a], anc, n_anc));
    char *text = graph_json_dumps(sig, -1);
    json_decref(sig);
    mem_free(anc);
    return text;
}

/* ===== Entry ===== */

int exec_run(const struct graph_prompt *p, const struct exec_opts *opts, struct exec_report *rep) {
    memset(rep, 0, sizeof *rep);
    rep->outputs = json_object();
    rep->executed = json_array();
    struct exec_state x = {.p = p, .o = opts, .rep = rep};
    x.s = mem_calloc((size_t)(p->n_nodes ? p->n_nodes : 1), sizeof *x.s);

    EMIT0(&x, execution_start);

    /* Ask the cache hook about every validated node (ComfyUI's execution_cached list). */
    const char **cached_ids = mem_calloc((size_t)(p->n_nodes ? p->n_nodes : 1), sizeof *cached_ids);
    int n_cached = 0;
    if (opts->cache && opts->cache->get) {
        for (int i = 0; i < p->n_nodes; i++) {
            if (!p->nodes[i].valid) continue;
            struct slot *s = &x.s[i];
            s->n_outputs = node_class_n_outputs(p->nodes[i].cls);
            s->outputs = mem_calloc((size_t)(s->n_outputs ? s->n_outputs : 1), sizeof *s->outputs);
            if (opts->cache->get(opts->cache->user, p, i, s->outputs, s->n_outputs, &s->ui)) {
                s->cached = true;
                cached_ids[n_cached++] = p->nodes[i].id;
                json_array_append_new(rep->executed, json_string(p->nodes[i].id));
            } else {
                free_outputs(s);
            }
        }
    }
    EMIT(&x, execution_cached, cached_ids, n_cached);
    mem_free(cached_ids);

    for (int t = 0; t < p->n_outputs; t++) plan(&x, p->outputs[t], 0);
    /* A cached node's outputs are only kept for needed consumers. */
    for (int i = 0; i < p->n_nodes; i++)
        if (x.s[i].cached && x.s[i].consumers == 0) free_outputs(&x.s[i]);

    int rc = 0;
    for (int t = 0; t < p->n_outputs && !rc; t++) rc = visit(&x, p->outputs[t]);

    if (rc == 0) {
        EMIT0(&x, execution_success);
    } else if (rc == STATUS_ERR_INTERRUPTED) {
        EMIT(&x, execution_interrupted, &rep->error, rep->executed);
    } else {
        EMIT(&x, execution_error, &rep->error, rep->executed);
    }

    for (int i = 0; i < p->n_nodes; i++) {
        free_outputs(&x.s[i]);
        json_decref(x.s[i].ui);
    }
    mem_free(x.s);
    return rep->status;
}

void exec_report_deinit(struct exec_report *rep) {
    if (!rep) return;
    json_decref(rep->outputs);
    json_decref(rep->executed);
    json_decref(rep->error.current_inputs);
    memset(rep, 0, sizeof *rep);
}
