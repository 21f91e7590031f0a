/* sched/worker.c -- one thread per device: pops the device's own heap, runs the prompt on the
 * device's engine with its output cache, turns executor callbacks into ComfyUI's WebSocket
 * events, writes the history entry, acts on /free and on other devices' GPUMemoryCleanup
 * requests (host.c), and warms a GPU up once its engine exists (while a helper thread fills the
 * host copy of the first queued prompt's checkpoint: HOST COPY AHEAD below).
 * Owns: the running item while it runs, the device's engine and cache (only this thread
 * touches them once started).
 * Must not: touch sockets (events leave through the sink) or another device's queue.
 * Threads: everything here runs on the device's worker thread, except prefill_run (its helper).
 *
 * DESIGN. ComfyUI's event rules (COMFY_API.md §4.3-4.4): execution_start, execution_cached,
 * execution_success and execution_error go to the prompt's client only, and into the history
 * entry's status messages; execution_interrupted too, but it is broadcast when the prompt has
 * no client; executing and executed go to the client only; progress to the client or, without
 * one, to everyone. At the end: history entry (under the lock, in the same step that clears
 * `running`), status broadcast, then executing {node: null} to the client.
 *
 * OUT OF MEMORY. A prompt that fails with STATUS_ERR_OOM_DEVICE (or host ERR_NOMEM) is run a
 * second time, once, after the device gives back everything it can spare: cached outputs,
 * checkpoints no value holds, the activation scratch. ComfyUI has no retry, so the retry is
 * invisible to clients except for the time it takes: the first run's execution_error is held
 * back (it is only sent once the outcome is known), and the retry does not send
 * execution_start or execution_cached again (executing / progress / executed of the nodes it
 * runs do go out). It is logged and counted (kiln_oom_retries_total). A second failure is the
 * prompt's execution_error, its message saying the device and that memory was freed and the
 * prompt retried; the worker then carries on with the next prompt. */
#include "sched/internal.h"

#include "base/clock.h"
#include "base/log.h"
#include "base/mem.h"
#include "base/readahead.h"
#include "base/status.h"
#include "graph/cache.h"
#include "graph/engine.h"
#include "graph/exec.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* wire types of values that hold a loaded checkpoint (dropped from the cache by unload_models) */
static const char *const CHECKPOINT_TYPES[] = {"MODEL", "CLIP", "VAE", NULL};

static const char *kind_label(const struct sched_device *d) { return d->kind == SCHED_DEVICE_CPU ? "CPU" : "GPU"; }

/* ===== One prompt's events ===== */

/* A JSON string of text that may not be valid UTF-8 (an OS message, a file name): invalid
 * text has its non-ASCII bytes replaced by '?' rather than losing the whole event. */
static json_t *text_json(const char *text) {
    json_t *j = json_string(text);
    if (j) return j;
    char *copy = mem_strdup(text);
    for (char *c = copy; *c; c++)
        if ((unsigned char)*c >= 0x80) *c = '?';
    j = json_string(copy);
    mem_free(copy);
    return j;
}

struct run {
    struct sched *s;                     /* the scheduler (sink, lock) */
    struct sched_device *d;              /* the device running it */
    const struct sched_item *it;         /* the prompt (ids, client) */
    json_t *messages;                    /* [[type, data], ...] for the history status */
    int attempt;                         /* 0, then 1 for the out-of-memory retry */
    json_t *error;                       /* execution_error data held back until the outcome is
                                            known (see OUT OF MEMORY), or NULL */
};

/* ComfyUI's add_message: timestamp appended, recorded for history, sent to the client (or to
 * everyone when `broadcast` and there is no client). Steals data. */
static void add_message(struct run *r, const char *type, json_t *data, bool broadcast) {
    json_object_set_new(data, "timestamp", json_integer(clock_wall_ms()));
    /* the sink may read its copy on another thread: history keeps a private one */
    json_array_append_new(r->messages, json_pack("[s,o]", type, json_deep_copy(data)));
    if (r->it->client_id || broadcast) sched__emit(r->s, r->it->client_id, type, data);
    else json_decref(data);
}

static void ev_start(void *u) {
    struct run *r = u;
    if (r->attempt > 0) return; /* sent by the first run */
    add_message(r, "execution_start", json_pack("{s:s}", "prompt_id", r->it->prompt_id), false);
}

static void ev_cached(void *u, const char *const *ids, int n) {
    struct run *r = u;
    if (r->attempt > 0) return; /* sent by the first run */
    json_t *nodes = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(nodes, json_string(ids[i]));
    add_message(r, "execution_cached", json_pack("{s:o,s:s}", "nodes", nodes, "prompt_id", r->it->prompt_id), false);
}

static void ev_executing(void *u, const char *node) {
    struct run *r = u;
    pthread_mutex_lock(&r->s->mu);
    snprintf(r->d->running_node, sizeof r->d->running_node, "%s", node);
    pthread_mutex_unlock(&r->s->mu);
    if (!r->it->client_id) return;
    sched__emit(r->s, r->it->client_id, "executing",
                json_pack("{s:s,s:s,s:s}", "node", node, "display_node", node, "prompt_id", r->it->prompt_id));
}

static void ev_progress(void *u, const char *node, int64_t value, int64_t max) {
    struct run *r = u;
    sched__emit(r->s, r->it->client_id, "progress",
                json_pack("{s:I,s:I,s:s,s:s}", "value", (json_int_t)value, "max", (json_int_t)max, "prompt_id",
                          r->it->prompt_id, "node", node));
}

static void ev_executed(void *u, const char *node, const json_t *ui) {
    struct run *r = u;
    if (!r->it->client_id) return;
    sched__emit(r->s, r->it->client_id, "executed",
                json_pack("{s:s,s:s,s:o,s:s}", "node", node, "display_node", node, "output", json_deep_copy(ui),
                          "prompt_id", r->it->prompt_id));
}

static void ev_success(void *u) {
    struct run *r = u;
    add_message(r, "execution_success", json_pack("{s:s}", "prompt_id", r->it->prompt_id), false);
}

static void ev_error(void *u, const struct exec_error *e, const json_t *executed) {
    struct run *r = u;
    json_t *outputs = json_array(); /* current_outputs: every node of the prompt (ComfyUI's key set) */
    for (int i = 0; i < r->it->prompt->n_nodes; i++) json_array_append_new(outputs, json_string(r->it->prompt->nodes[i].id));
    json_t *data = json_pack("{s:s,s:s,s:s,s:o,s:o,s:s,s:[],s:o,s:o}", "prompt_id", r->it->prompt_id, "node_id",
                             e->node_id, "node_type", e->node_type, "executed", json_deep_copy(executed),
                             "exception_message", text_json(e->exception_message), "exception_type", e->exception_type,
                             "traceback", "current_inputs",
                             e->current_inputs ? json_deep_copy(e->current_inputs) : json_object(), "current_outputs",
                             outputs);
    json_decref(r->error);
    r->error = data; /* sent by run_item once it knows there is no retry */
}

static void ev_interrupted(void *u, const struct exec_error *e, const json_t *executed) {
    struct run *r = u;
    add_message(r,
                "execution_interrupted",
                json_pack("{s:s,s:s,s:s,s:o}", "prompt_id", r->it->prompt_id, "node_id", e->node_id, "node_type",
                          e->node_type, "executed", json_deep_copy(executed)),
                true);
}

static const struct exec_events EVENTS = {
    .execution_start = ev_start,
    .execution_cached = ev_cached,
    .executing = ev_executing,
    .progress = ev_progress,
    .executed = ev_executed,
    .execution_success = ev_success,
    .execution_error = ev_error,
    .execution_interrupted = ev_interrupted,
};

/* ===== History entry ===== */

/* {"prompt": (filled under the lock), "outputs", "status", "meta"} in ComfyUI's key order. */
static json_t *history_entry(const struct exec_report *rep, json_t *messages) {
    json_t *meta = json_object();
    const char *id;
    json_t *ui;
    json_object_foreach(rep->outputs, id, ui) {
        json_object_set_new(meta, id, json_pack("{s:s,s:s,s:n,s:s}", "node_id", id, "display_node", id, "parent_node",
                                                "real_node_id", id));
    }
    bool ok = rep->status == 0;
    return json_pack("{s:n,s:o,s:{s:s,s:b,s:o},s:o}", "prompt", "outputs", json_deep_copy(rep->outputs), "status",
                     "status_str", ok ? "success" : "error", "completed", ok, "messages", messages, "meta", meta);
}

/* ===== Engine snapshot and /free ===== */

/* Copies what the engine holds into d->ckpts (the paths, for routing) and d->models (paths,
 * placements and where their bytes live, for /system_stats and /gpus). */
static void snapshot_checkpoints(struct sched *s, struct sched_device *d) {
    char **paths = mem_calloc(ENGINE_MAX_CHECKPOINTS, sizeof *paths);
    struct engine_loaded_info *info = mem_calloc(ENGINE_MAX_CHECKPOINTS, sizeof *info);
    int n = d->engine ? engine_loaded_info(d->engine, info, ENGINE_MAX_CHECKPOINTS) : 0;
    json_t *models = json_array();
    for (int i = 0; i < n; i++) {
        paths[i] = mem_strdup(info[i].path);
        json_array_append_new(models, json_pack("{s:s,s:s,s:s,s:I}", "path", info[i].path, "placement",
                                                info[i].placement, "where", info[i].where, "bytes",
                                                (json_int_t)info[i].bytes));
    }
    mem_free(info);
    pthread_mutex_lock(&s->mu);
    json_t *old_models = d->models;
    d->models = models;
    char **old = d->ckpts;
    int n_old = d->n_ckpts;
    d->ckpts = paths;
    d->n_ckpts = n;
    pthread_mutex_unlock(&s->mu);
    json_decref(old_models);
    for (int i = 0; i < n_old; i++) mem_free(old[i]);
    mem_free(old);
}

/* POST /free on this device (and out-of-memory recovery or another device's GPUMemoryCleanup,
 * `why` says which): unload_models drops what holds checkpoints, then unloads them; free_memory
 * drops the whole output cache first (ComfyUI's PromptExecutor.reset) and gives the activation
 * scratch back; `scratch` gives the scratch back alone. */
static void free_memory(struct sched *s, struct sched_device *d, bool unload, bool free_all, bool scratch,
                        const char *why) {
    int before = graph_cache_count(d->cache);
    if (free_all) graph_cache_clear(d->cache);
    if (unload || free_all) {
        graph_cache_drop_types(d->cache, CHECKPOINT_TYPES);
        if (d->engine) engine_unload_unused(d->engine);
    }
    if ((free_all || scratch) && d->engine) engine_release_scratch(d->engine);
    snapshot_checkpoints(s, d);
    pthread_mutex_lock(&s->mu);
    d->m.cache_entries = graph_cache_count(d->cache);
    pthread_mutex_unlock(&s->mu);
    log_info("[%s %d] %s: unload_models=%d free_memory=%d scratch=%d, %d cached outputs dropped", kind_label(d),
             d->index, why, unload || free_all, free_all, free_all || scratch, before - graph_cache_count(d->cache));
}

/* ===== VRAM budget ===== */

/* GPUs: the engine's weight budget from the device's memory now. "used" for the reserve is the
 * use of everything but this engine's weights (other processes, and our own activation
 * scratch, which the weights must leave room for). Unknown figures leave the budget as it is. */
static void update_budget(struct sched *s, struct sched_device *d) {
    if (d->kind != SCHED_DEVICE_CUDA || !d->engine || !s->vram || !d->mem_total) return;
    uint64_t free = sched__gpu_mem_free(s->vram, d->cuda_ordinal);
    if (!free) return;
    pthread_mutex_lock(&s->mu); /* the settings: GPUMemoryReserve on any device may change them */
    struct vram_budget b = d->budget;
    pthread_mutex_unlock(&s->mu);
    uint64_t used = d->mem_total > free ? d->mem_total - free : 0, own = engine_weight_bytes(d->engine);
    b.total = d->mem_total;
    b.used = used > own ? used - own : 0;
    engine_set_budget(d->engine, vram_budget_bytes(&b));
    /* what the other GPUs could hold of this engine's streamed blocks (weights placement): their
     * free memory now, less the safe minimum reserve that their own workers keep */
    struct engine *e = d->engine;
    memset(e->peer_free, 0, sizeof e->peer_free);
    e->n_cuda = 0;
    for (int k = 0; k < s->n_dev; k++) {
        const struct sched_device *o = &s->dev[k];
        if (o->kind != SCHED_DEVICE_CUDA || o->cuda_ordinal < 0 || o->cuda_ordinal >= PLACEMENT_MAX_DEVICES) continue;
        if (o->cuda_ordinal + 1 > e->n_cuda) e->n_cuda = o->cuda_ordinal + 1;
        if (o == d) continue;
        uint64_t f = sched__gpu_mem_free(s->vram, o->cuda_ordinal), keep = (uint64_t)(VRAM_DEFAULT_MIN_SAFE_RESERVE_GB * VRAM_GB);
        e->peer_free[o->cuda_ordinal] = f > keep ? f - keep : 0;
    }
}

/* ===== Clean-up asked by another device (GPUMemoryCleanup clear_all_gpus) ===== */

/* kiln's own bytes on the device: the activation scratch and the resident weights. */
static uint64_t own_bytes(const struct sched_device *d) {
    return d->engine ? d->engine->scratch.size + engine_weight_bytes(d->engine) : 0;
}

void sched__worker_clean(struct sched *s, struct sched_device *d) {
    uint64_t req = d->clean_req;
    bool aggressive = d->clean_aggressive;
    d->clean_aggressive = false;
    pthread_mutex_unlock(&s->mu);
    bool gpu = d->kind == SCHED_DEVICE_CUDA && s->vram;
    uint64_t own_before = own_bytes(d), free_before = gpu ? sched__gpu_mem_free(s->vram, d->cuda_ordinal) : 0;
    free_memory(s, d, aggressive, false, true, aggressive ? "GPUMemoryCleanup (aggressive) from another device"
                                                          : "GPUMemoryCleanup from another device");
    uint64_t own_after = own_bytes(d), free_after = gpu ? sched__gpu_mem_free(s->vram, d->cuda_ordinal) : 0;
    struct sched_clean res = {.own_freed = own_before > own_after ? own_before - own_after : 0};
    res.measured = free_before && free_after;
    res.freed = res.measured ? (free_after > free_before ? free_after - free_before : 0) : res.own_freed;
    log_info("[%s %d] GPUMemoryCleanup from another device: freed %.2f MB (kiln's own %.2f MB)", kind_label(d),
             d->index, (double)res.freed / (1 << 20), (double)res.own_freed / (1 << 20));
    pthread_mutex_lock(&s->mu);
    d->clean_result = res;
    d->clean_done = req;
    pthread_cond_broadcast(&s->cleaned);
}

/* ===== Running one prompt ===== */

static bool is_oom(int status) { return status == STATUS_ERR_OOM_DEVICE || status == STATUS_ERR_NOMEM; }

/* Sends the held-back execution_error; after a failed retry for memory, its message says so. */
static void send_error(struct run *r, int status) {
    if (!r->error) return;
    if (r->attempt > 0 && is_oom(status)) {
        const char *msg = json_string_value(json_object_get(r->error, "exception_message"));
        char text[sizeof r->d->name + sizeof ((struct exec_error *)0)->exception_message + 96];
        snprintf(text, sizeof text, "out of memory on %s: %s (after freeing cached models and retrying once)",
                 r->d->name, msg ? msg : "");
        json_object_set_new(r->error, "exception_message", text_json(text));
    }
    add_message(r, "execution_error", r->error, false);
    r->error = NULL;
}

static void run_item(struct sched *s, struct sched_device *d, struct sched_item *it) {
    struct run r = {.s = s, .d = d, .it = it, .messages = json_array()};
    struct exec_events events = EVENTS;
    events.user = &r;
    uint64_t hits0 = graph_cache_hits(d->cache);
    update_budget(s, d);
    graph_cache_begin(d->cache, it->prompt, &s->opts.paths);
    struct exec_opts opts = {
        .paths = &s->opts.paths,
        .extra_data = it->extra_data,
        .engine = d->engine,
        .interrupt = &d->interrupt,
        .disable_metadata = s->opts.disable_metadata,
        .events = &events,
        .cache = graph_cache_hook(d->cache),
        .host = &sched__host,
        .host_user = d,
    };
    struct exec_report rep;
    exec_run(it->prompt, &opts, &rep);
    graph_cache_end(d->cache);
    if (is_oom(rep.status)) { /* free what the device can spare, then once more (OUT OF MEMORY) */
        log_warn("[%s %d] out of memory in prompt %s at node %s (%s): %s; freeing cached models and scratch, "
                 "retrying once",
                 kind_label(d), d->index, it->prompt_id, rep.error.node_id, rep.error.node_type,
                 rep.error.exception_message);
        json_decref(r.error);
        r.error = NULL;
        exec_report_deinit(&rep);
        free_memory(s, d, true, true, true, "out-of-memory recovery");
        update_budget(s, d); /* the freed memory counts again */
        pthread_mutex_lock(&s->mu);
        d->m.oom_retries++;
        pthread_mutex_unlock(&s->mu);
        r.attempt = 1;
        graph_cache_begin(d->cache, it->prompt, &s->opts.paths);
        exec_run(it->prompt, &opts, &rep);
        graph_cache_end(d->cache);
        if (rep.status == 0) log_info("[%s %d] prompt %s succeeded on retry", kind_label(d), d->index, it->prompt_id);
    }
    send_error(&r, rep.status);
    double t_end = clock_now();
    json_t *entry = history_entry(&rep, r.messages);
    snapshot_checkpoints(s, d);

    /* one step: history written, prompt out of `running`, figures updated, status out */
    sched__change_begin(s);
    json_object_set_new(entry, "prompt", it->tuple);
    it->tuple = NULL;
    if (s->stopping && rep.status == STATUS_ERR_INTERRUPTED) sched__store_requeue(s, it); /* runs at next start */
    else sched__store_finish(s, it, entry);
    sched__history_put(s, it->prompt_id, entry);
    json_object_del(s->ids, it->prompt_id);
    d->running = NULL;
    d->running_node[0] = 0;
    struct sched_metrics *m = &d->m;
    double wait = it->t_started - it->t_queued, exec = t_end - it->t_started;
    m->tasks++;
    if (rep.status == 0) m->successes++;
    else if (rep.status == STATUS_ERR_INTERRUPTED) m->interrupts++;
    else m->failures++;
    if (rep.status == STATUS_ERR_OOM_DEVICE) m->ooms++;
    m->wait_sum += wait;
    m->exec_sum += exec;
    for (int b = 0; b < SCHED_BUCKETS; b++) {
        m->wait_bucket[b] += wait <= SCHED_BUCKET_BOUNDS[b];
        m->exec_bucket[b] += exec <= SCHED_BUCKET_BOUNDS[b];
    }
    m->cache_hits += graph_cache_hits(d->cache) - hits0;
    m->cache_entries = graph_cache_count(d->cache);
    sched__change_end(s, true);

    bool oom = is_oom(rep.status);
    const char *how = rep.status == 0 ? "executed" : rep.status == STATUS_ERR_INTERRUPTED ? "interrupted" : "failed";
    log_info("[%s %d] prompt %s %s in %.2f s", kind_label(d), d->index, it->prompt_id, how, exec);
    exec_report_deinit(&rep);
    if (it->client_id)
        sched__emit(s, it->client_id, "executing", json_pack("{s:n,s:s}", "node", "prompt_id", it->prompt_id));
    if (oom) { /* give the next prompt every byte back: cached outputs and unused checkpoints */
        log_warn("[%s %d] out of memory in prompt %s again after the retry, clearing the cache", kind_label(d), d->index,
                 it->prompt_id);
        free_memory(s, d, true, true, true, "out of memory");
    }

    if (s->opts.metrics_log_every > 0 && ++d->since_log >= (uint64_t)s->opts.metrics_log_every) {
        char line[256];
        sched_metrics_line(s, d->index, line, sizeof line);
        log_info("%s", line);
        d->since_log = 0;
    }
}

/* ===== Host copy ahead of the first load (HOST COPY AHEAD) =====
 * On a cold start the first prompt is usually queued before the device has opened. Its
 * checkpoint's host copy (the file read, converted and page-locked: most of a cold load) does
 * not need the device, so a helper thread fills it while the worker warms the device up; the
 * prompt's load then only uploads. The helper's references go once that prompt has run. */

struct prefill {
    struct engine *e;
    char *path;           /* owned */
    struct sd_model *m;   /* the helper's result (references to the host copies), or NULL */
    struct err err;
    pthread_t thread;
    bool started;
    atomic_bool done;     /* the helper has finished */
    struct engine_warm_shape shape; /* the prompt's shapes (batch 0: not known) */
};

static void *prefill_run(void *arg) {
    struct prefill *p = arg;
    p->m = engine_prefill(p->e, p->path, &p->err);
    atomic_store(&p->done, true);
    return NULL;
}

/* The literal number input `name` of node g, or false. */
static bool literal_number(const struct graph_node *g, const char *name, double *out) {
    int k = node_class_input_index(g->cls, name);
    if (k < 0 || g->inputs[k].kind != GRAPH_INPUT_LITERAL) return false;
    const struct value *v = &g->inputs[k].literal;
    if (v->kind == VALUE_INT) *out = (double)v->i;
    else if (v->kind == VALUE_FLOAT) *out = v->f;
    else return false;
    return true;
}

/* The shapes p's sampler will run the UNet at, when its latent comes from an EmptyLatentImage
 * and its KSampler's cfg is a literal (a text-to-image workflow); batch stays 0 otherwise. */
static void prompt_shape(const struct graph_prompt *p, struct engine_warm_shape *ws) {
    memset(ws, 0, sizeof *ws);
    double wd = 0, ht = 0, b = 0, cfg = -1;
    bool latent = false, sampler = false;
    for (int i = 0; i < p->n_nodes; i++) {
        const struct graph_node *g = &p->nodes[i];
        if (!latent && strcmp(g->cls->name, "EmptyLatentImage") == 0)
            latent = literal_number(g, "width", &wd) && literal_number(g, "height", &ht) &&
                     literal_number(g, "batch_size", &b);
        if (!sampler && (strcmp(g->cls->name, "KSampler") == 0 || strcmp(g->cls->name, "KSamplerAdvanced") == 0))
            sampler = literal_number(g, "cfg", &cfg);
    }
    if (!latent || !sampler || b < 1 || wd < 8 || ht < 8) return;
    *ws = (struct engine_warm_shape){.batch = (int64_t)b, .h = (int64_t)ht / 8, .w = (int64_t)wd / 8,
                                     .entries = fabs(cfg - 1.0) > 1e-9 * fabs(cfg) ? 2 : 1, /* as KSampler */
                                     .n_tokens = 77};
}

/* Starts the helper for the checkpoint of the prompt first in d's queue, if any. */
static void prefill_start(struct sched *s, struct sched_device *d, struct prefill *p) {
    memset(p, 0, sizeof *p);
    char *paths[1];
    int n = 0;
    pthread_mutex_lock(&s->mu);
    if (d->n_heap > 0) n = sched__prompt_checkpoints(s, d->heap[0]->prompt, paths, 1);
    if (n > 0) prompt_shape(d->heap[0]->prompt, &p->shape);
    pthread_mutex_unlock(&s->mu);
    if (n == 0) return;
    p->e = d->engine;
    p->path = paths[0];
    p->started = pthread_create(&p->thread, NULL, prefill_run, p) == 0;
    if (!p->started) {
        mem_free(p->path);
        p->path = NULL;
    }
}

/* Waits for the helper and drops its references (a load that happened keeps its own). */
static void prefill_end(struct sched_device *d, struct prefill *p) {
    if (!p->started) return;
    pthread_join(p->thread, NULL);
    if (!p->m && p->err.code != STATUS_ERR_UNSUPPORTED)
        log_warn("[%s %d] host copy of %s ahead of its load: %s (the load reads it itself)", kind_label(d), d->index,
                 p->path, p->err.msg);
    engine_prefill_free(p->m);
    mem_free(p->path);
    memset(p, 0, sizeof *p);
}

/* ===== The thread ===== */

void *sched__worker_main(void *arg) {
    struct sched_device *d = arg;
    struct sched *s = d->s;
    struct prefill pf = {0};
    log_info("[%s %d] worker started on %s", kind_label(d), d->index, d->name);
    if (d->kind == SCHED_DEVICE_CUDA && !d->engine) { /* the backend's stream and handles are this thread's */
        struct err err = {0};
        double t0 = clock_now();
        struct engine *e = engine_new_cuda(d->cuda_ordinal, s->opts.paths.models, s->opts.tokenizer_dir, &err);
        pthread_mutex_lock(&s->mu);
        d->engine = e;
        d->init_rc = e ? 0 : (err.code ? err.code : STATUS_ERR_DEVICE);
        d->init_err = err;
        d->ready = true;
        pthread_cond_broadcast(&s->ready);
        pthread_mutex_unlock(&s->mu);
        if (!e) {
            log_error("[%s %d] cannot open %s: %s", kind_label(d), d->index, d->name, err.msg);
            return NULL;
        }
        log_info("[%s %d] CUDA device %d opened in %.2f s", kind_label(d), d->index, d->cuda_ordinal,
                 clock_now() - t0);
        if (!getenv("KILN_NO_PREFILL")) prefill_start(s, d, &pf); /* overlaps the warm-up below */
        /* the kernels loaded and the libraries initialised now rather than in the first prompt:
           while that prompt's checkpoint is still being read, its own networks at its shapes with
           stand-in weights (its first UNet evaluation then makes no plans and launches no kernel
           for the first time: 0.2-0.25 s of a cold first image on an H100), else one tiny graph of
           each op kind (tensor/warmup.h) */
        const char *wm = getenv("KILN_WARMUP_MODEL");
        bool model = pf.started && pf.shape.batch > 0 && !atomic_load(&pf.done) && !(wm && strcmp(wm, "0") == 0);
        t0 = clock_now();
        struct err werr = {0};
        if (model && engine_warmup_model(e, pf.path, &pf.shape, &werr) == 0) {
            log_info("[%s %d] warm-up done in %.2f s: %s's networks at %lldx%lld, batch %lld x %d, with stand-in "
                     "weights%s",
                     kind_label(d), d->index, clock_now() - t0, pf.path, (long long)pf.shape.w * 8,
                     (long long)pf.shape.h * 8, (long long)pf.shape.batch, pf.shape.entries,
                     atomic_load(&pf.done) ? "" : " (its host copy still filling)");
        } else {
            if (model)
                log_warn("[%s %d] model warm-up failed after %.2f s; the generic one instead: %s", kind_label(d),
                         d->index, clock_now() - t0, werr.msg);
            err_clear(&werr);
            t0 = clock_now();
            if (engine_warmup(e, &werr) == 0)
                log_info("[%s %d] warm-up done in %.2f s", kind_label(d), d->index, clock_now() - t0);
            else
                log_warn("[%s %d] warm-up failed after %.2f s (the device still serves): %s", kind_label(d),
                         d->index, clock_now() - t0, werr.msg);
        }
    }
    pthread_mutex_lock(&s->mu);
    while (!s->stopping) {
        if (d->clean_req != d->clean_done) { /* another device's GPUMemoryCleanup */
            sched__worker_clean(s, d);
            continue;
        }
        if (d->flag_unload || d->flag_free) {
            bool unload = d->flag_unload, all = d->flag_free;
            d->flag_unload = d->flag_free = false;
            pthread_mutex_unlock(&s->mu);
            free_memory(s, d, unload, all, all, "/free");
            pthread_mutex_lock(&s->mu);
            continue;
        }
        if (d->n_heap == 0) {
            pthread_cond_wait(&d->wake, &s->mu);
            continue;
        }
        /* dequeue as a reported change: emit_mu comes before mu, so let go and retake */
        pthread_mutex_unlock(&s->mu);
        sched__change_begin(s);
        if (s->stopping || d->flag_unload || d->flag_free || d->clean_req != d->clean_done || d->n_heap == 0) {
            pthread_mutex_unlock(&s->emit_mu); /* keeps mu for the loop */
            continue;
        }
        struct sched_item *it = sched__heap_pop(d);
        sched__store_start(s, it);
        d->running = it;
        d->running_node[0] = 0;
        atomic_store(&d->interrupt, false); /* an interrupt sent while idle must not stop this one */
        it->t_started = clock_now();
        sched__change_end(s, true);

        run_item(s, d, it);
        if (d->kind == SCHED_DEVICE_CUDA && !atomic_exchange(&s->readahead_listed, true)) {
            /* the library pages this first GPU prompt faulted in, for the next cold start */
            struct err rerr = {0};
            if (readahead_record(NULL, &rerr)) log_debug("readahead: %s", rerr.msg);
        }
        sched__item_free(it);
        prefill_end(d, &pf); /* the first prompt has loaded what it needed */
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    prefill_end(d, &pf);
    log_info("[%s %d] worker stopped", kind_label(d), d->index);
    return NULL;
}
