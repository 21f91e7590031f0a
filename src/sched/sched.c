/* sched/sched.c -- the scheduler's public face: devices, routing, queues, interrupts, /free.
 * Owns: struct sched (devices, their heaps, the prompt id index, the counter), the items
 * until a worker takes them.
 * Must not: run prompts (worker.c), format history (history.c) or metrics (metrics.c).
 * Threads: every function here may run on any thread (HTTP threads); each takes sched->mu.
 * Ownership: json_t results are new references, built from copies made under the lock.
 *
 * DESIGN. One mutex guards all queues, so routing sees every device's depth at once and a
 * prompt moves from a heap to `running` to history atomically. A change that broadcasts
 * "status" takes a second lock (emit_mu) first and holds it until the broadcast is out, so
 * the status messages reach the sink in the order of the changes, each with the count right
 * after its change. The SQLite store (PERSISTENCE in sched.h) is written under the same lock,
 * in the same step as the change it records. */
#include "sched/internal.h"

#include "base/base.h"
#include "base/clock.h"
#include "base/log.h"
#include "base/mem.h"
#include "base/status.h"
#include "graph/cache.h"
#include "graph/engine.h"
#include "graph/json.h"
#include "sched/store.h"
#include "vram/monitor.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* extra_data keys never shown in /queue or /history (ComfyUI's SENSITIVE_EXTRA_DATA_KEYS) */
static const char *const SENSITIVE_KEYS[] = {"auth_token_comfy_org", "api_key_comfy_org", NULL};

#define DEFAULT_EXEC_S 1.0  /* expected run time of a device without history, in s */
#define ROUTE_SLACK 0.10    /* waits within 10% of the best count as equal for checkpoint reuse */

static int route_auto(struct sched *s, char *const *ckpts, int n_ckpts);

/* ===== Items ===== */

void sched__item_free(struct sched_item *it) {
    if (!it) return;
    mem_free(it->prompt_id);
    mem_free(it->client_id);
    graph_prompt_free(it->prompt);
    json_decref(it->extra_data);
    json_decref(it->tuple);
    mem_free(it);
}

/* The 5-tuple [number, prompt_id, prompt, extra_data, outputs_to_execute] of a new item. */
static json_t *item_tuple(const struct sched_item *it) {
    json_t *t = json_array();
    json_array_append_new(t, it->number_is_int ? json_integer(it->inumber) : json_real(it->number));
    json_array_append_new(t, json_string(it->prompt_id));
    json_array_append_new(t, json_deep_copy(it->prompt->json));
    json_t *extra = json_deep_copy(it->extra_data);
    for (int i = 0; SENSITIVE_KEYS[i]; i++) json_object_del(extra, SENSITIVE_KEYS[i]);
    json_array_append_new(t, extra);
    json_array_append_new(t, graph_prompt_outputs_json(it->prompt));
    return t;
}

/* ===== Events ===== */

void sched__emit(struct sched *s, const char *client_id, const char *type, json_t *data) {
    if (!data) { /* json_pack refused a value: a bug, but no reason to stop the worker */
        log_error("event %s could not be built; not sent", type);
        return;
    }
    if (s->sink) s->sink(s->sink_user, client_id, type, data);
    else json_decref(data);
}

int sched__remaining_locked(struct sched *s, int device) {
    int n = 0;
    for (int i = 0; i < s->n_dev; i++) {
        if (device >= 0 && i != device) continue;
        n += s->dev[i].n_heap + (s->dev[i].running ? 1 : 0);
    }
    return n;
}

void sched__change_begin(struct sched *s) {
    pthread_mutex_lock(&s->emit_mu);
    pthread_mutex_lock(&s->mu);
}

void sched__change_end(struct sched *s, bool report) {
    int n = sched__remaining_locked(s, -1);
    pthread_mutex_unlock(&s->mu);
    if (report)
        sched__emit(s, NULL, "status", json_pack("{s:{s:{s:i}}}", "status", "exec_info", "queue_remaining", n));
    pthread_mutex_unlock(&s->emit_mu);
}

/* ===== Persistence ===== */

/* Seconds since the epoch (finished_at, message timestamps). */
static double wall_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void store_logged(int rc, const struct err *err, const char *id) {
    if (rc) log_error("%s (prompt %s); the server goes on, but this change is not saved", err->msg, id);
}

/* {"tuple": [5-tuple], "extra_data": {full}, "client_id": id|null}: what a restart needs. */
static char *item_body(const struct sched_item *it) {
    json_t *b = json_pack("{s:O,s:O,s:s?}", "tuple", it->tuple, "extra_data", it->extra_data, "client_id",
                          it->client_id);
    char *text = b ? graph_json_dumps(b, -1) : NULL;
    json_decref(b);
    return text;
}

/* Caller holds mu. */
static void store_put(struct sched *s, const struct sched_item *it) {
    if (!s->store) return;
    struct err err = {0};
    char *body = item_body(it);
    int rc = body ? store_prompt_put(s->store, it->prompt_id, it->number, it->number_is_int, it->device, body,
                                     it->t_queued, &err)
                  : err_set(&err, STATUS_ERR_NOMEM, "out of host memory writing a prompt for the database");
    mem_free(body);
    store_logged(rc, &err, it->prompt_id);
}

static void store_delete(struct sched *s, const char *id) {
    if (!s->store) return;
    struct err err = {0};
    store_logged(store_prompt_delete(s->store, id, &err), &err, id);
}

void sched__store_start(struct sched *s, const struct sched_item *it) {
    if (!s->store) return;
    struct err err = {0};
    store_logged(store_prompt_start(s->store, it->prompt_id, &err), &err, it->prompt_id);
}

void sched__store_requeue(struct sched *s, const struct sched_item *it) {
    if (!s->store) return;
    struct err err = {0};
    store_logged(store_prompt_requeue(s->store, it->prompt_id, &err), &err, it->prompt_id);
}

void sched__store_finish(struct sched *s, const struct sched_item *it, const json_t *entry) {
    if (!s->store) return;
    struct err err = {0};
    char *text = graph_json_dumps(entry, -1);
    int rc = text ? store_finish(s->store, it->prompt_id, it->number, text, wall_now(), &err)
                  : err_set(&err, STATUS_ERR_NOMEM, "out of host memory writing a history entry for the database");
    mem_free(text);
    store_logged(rc, &err, it->prompt_id);
}

/* The history entry of a prompt that could not run again after a restart. */
static json_t *failed_entry(json_t *tuple, const char *id, const char *type, const char *msg) {
    json_t *data = json_pack("{s:s,s:s?,s:s?,s:[],s:s,s:s,s:[],s:{},s:{},s:I}", "prompt_id", id, "node_id", NULL,
                             "node_type", NULL, "executed", "exception_message", msg, "exception_type", type,
                             "traceback", "current_inputs", "current_outputs", "timestamp",
                             (json_int_t)(wall_now() * 1000));
    return json_pack("{s:o,s:{},s:{s:s,s:b,s:[[s,o]]},s:{}}", "prompt", tuple, "outputs", "status", "status_str",
                     "error", "completed", false, "messages", "execution_error", data, "meta");
}

struct reload {
    struct sched *s;
    int64_t max_number;                  /* largest |number| seen */
    int requeued, rerun, failed;
    struct err *err;
};

static void see_number(struct reload *r, double n) {
    double a = fabs(n);
    if (a < 9e15 && (int64_t)a > r->max_number) r->max_number = (int64_t)a;
}

static int reload_history(void *user, const char *id, const char *text) {
    struct reload *r = user;
    json_t *entry = json_loads(text, 0, NULL);
    if (!json_is_object(entry)) {
        log_error("database %s: history entry %s is not JSON; skipped", r->s->opts.db_path, id);
        json_decref(entry);
        return 0;
    }
    json_t *num = json_array_get(json_object_get(entry, "prompt"), 0);
    if (json_is_number(num)) see_number(r, json_number_value(num));
    sched__history_put(r->s, id, entry);
    return 0;
}

/* Ends a reloaded prompt that cannot run with an error entry (memory and database). */
static void reload_fail(struct reload *r, const struct store_prompt *p, json_t *tuple, const char *type,
                        const char *msg) {
    struct sched *s = r->s;
    log_error("prompt %s from the database cannot run: %s", p->id, msg);
    json_t *entry = failed_entry(tuple ? json_incref(tuple) : json_pack("[f,s,{},{},[]]", p->number, p->id), p->id,
                                 type, msg);
    struct sched_item tmp = {.prompt_id = (char *)p->id, .number = p->number};
    sched__store_finish(s, &tmp, entry);
    sched__history_put(s, p->id, entry);
    r->failed++;
}

/* A row found 'running' goes back to 'pending' only in sched_start, once the server is up:
 * a start that fails after the reload (its port taken, a device that does not open) must leave
 * running rows as it found them, or the next start would no longer see that the prompt was
 * running (and a second kiln started by mistake on a live server's file would reset that
 * server's running rows). tests/cli/serve_restart saw exactly that when a parallel test took
 * its port. */
static void defer_reset(struct sched *s, const char *id) {
    char **a = mem_realloc(s->reload_resets, (size_t)(s->n_reload_resets + 1) * sizeof *a);
    a[s->n_reload_resets++] = mem_strdup(id);
    s->reload_resets = a;
}

static int reload_prompt(void *user, const struct store_prompt *p) {
    struct reload *r = user;
    struct sched *s = r->s;
    see_number(r, p->number);
    json_t *body = json_loads(p->body, 0, NULL);
    json_t *tuple = json_object_get(body, "tuple");
    json_t *prompt = json_array_get(tuple, 2), *outputs = json_array_get(tuple, 4);
    json_t *extra = json_object_get(body, "extra_data");
    const char *client = json_string_value(json_object_get(body, "client_id"));
    if (!json_is_object(prompt) || !json_is_array(outputs)) {
        reload_fail(r, p, NULL, "CorruptedEntry", "its stored prompt is not readable JSON");
        json_decref(body);
        return 0;
    }
    if (p->running && p->attempts >= 2) {
        reload_fail(r, p, tuple, "ServerStopped", "failed twice: the server stopped while running it");
        json_decref(body);
        return 0;
    }
    struct graph_prompt *gp = NULL;
    json_t *err_body = NULL;
    struct err verr = {0};
    int vrc = graph_prompt_validate(prompt, &s->opts.paths, outputs, &gp, &err_body, &verr);
    json_decref(err_body);
    if (vrc) {
        char msg[1200];
        snprintf(msg, sizeof msg, "it no longer validates after the restart: %s", verr.msg);
        reload_fail(r, p, tuple, "PromptValidationError", msg);
        json_decref(body);
        return 0;
    }
    struct sched_item *it = mem_calloc(1, sizeof *it);
    it->prompt_id = mem_strdup(p->id);
    it->client_id = client ? mem_strdup(client) : NULL;
    it->number = p->number;
    it->number_is_int = p->number_is_int;
    it->inumber = p->inumber;
    it->prompt = gp;
    it->extra_data = json_is_object(extra) ? json_deep_copy(extra) : json_object();
    it->tuple = json_deep_copy(tuple);
    it->t_queued = clock_now();
    int di = p->device;
    if (di < 0 || di >= s->n_dev) {
        di = route_auto(s, NULL, 0);
        log_warn("prompt %s was queued on device %d, which does not exist now; routed to device %d", p->id, p->device,
                 di);
    }
    it->device = di;
    struct sched_device *d = &s->dev[di];
    d->m.submitted++;
    sched__heap_push(d, it);
    json_object_set_new(s->ids, it->prompt_id, json_integer(di));
    if (p->running) {
        r->rerun++;
        log_warn("prompt %s was running when the server stopped; running it again on device %d", p->id, di);
        defer_reset(s, p->id);
    } else {
        r->requeued++;
    }
    if (di != p->device) { /* the row says where it is queued now */
        char *text = item_body(it);
        struct err err = {0};
        if (text)
            store_logged(store_prompt_put(s->store, p->id, it->number, it->number_is_int, di, text, it->t_queued, &err),
                         &err, p->id);
        mem_free(text);
        if (p->running) {
            struct err e2 = {0};
            store_logged(store_prompt_start(s->store, p->id, &e2), &e2, p->id); /* keep the attempt counted */
        }
    }
    json_decref(body);
    return 0;
}

/* Opens opts.db_path and reloads it (PERSISTENCE in sched.h). Before the workers start. */
static int store_reload(struct sched *s, struct err *err) {
    const char *path = s->opts.db_path;
    if (!path || !path[0] || strcmp(path, ":memory:") == 0) return 0;
    s->store = store_open(path, s->opts.history_max, err);
    if (!s->store) return err->code;
    struct reload r = {.s = s, .err = err};
    int rc = store_history_load(s->store, reload_history, &r, err);
    if (!rc) rc = store_prompts_load(s->store, reload_prompt, &r, err);
    if (rc) return rc;
    if (r.max_number >= s->counter) s->counter = r.max_number + 1;
    log_info("database %s: %zu history entries, %d prompts queued again, %d running ones run again, %d failed",
             path, json_object_size(s->history), r.requeued, r.rerun, r.failed);
    return 0;
}

/* ===== Lifecycle ===== */

static void device_deinit(struct sched_device *d) {
    for (int i = 0; i < d->n_heap; i++) sched__item_free(d->heap[i]);
    mem_free(d->heap);
    sched__item_free(d->running);
    graph_cache_free(d->cache); /* before the engine: cached values hold its checkpoints */
    engine_free(d->engine);
    for (int i = 0; i < d->n_ckpts; i++) mem_free(d->ckpts[i]);
    mem_free(d->ckpts);
    json_decref(d->models);
    pthread_cond_destroy(&d->wake);
}

/* Fields every device starts with; the caller sets kind, name, memory and the engine. */
static struct sched_device *device_add(struct sched *s, enum sched_device_kind kind) {
    struct sched_device *d = &s->dev[s->n_dev];
    d->s = s;
    d->index = s->n_dev;
    d->kind = kind;
    atomic_init(&d->interrupt, false);
    pthread_cond_init(&d->wake, NULL);
    d->cache = graph_cache_new();
    vram_budget_init(&d->budget, 0); /* the settings' defaults; figures come before each prompt */
    s->n_dev++;
    return d;
}

/* Reads a reloaded prompt's checkpoints ahead (sched_new, before the workers start). */
static void prefetch_prompt(struct sched *s, const struct graph_prompt *gp) {
    char *ckpts[8];
    int n = sched__prompt_checkpoints(s, gp, ckpts, 8);
    for (int i = 0; i < n; i++) {
        sched__prefetch_file(s->prefetch, ckpts[i]);
        mem_free(ckpts[i]);
    }
}

struct sched *sched_new(const struct sched_opts *opts, struct err *err) {
    if (opts->n_gpus < 0 || opts->n_gpus > SCHED_MAX_DEVICES) {
        err_set(err, STATUS_ERR_RANGE, "at most %d GPUs (got %d)", SCHED_MAX_DEVICES, opts->n_gpus);
        return NULL;
    }
    int min_cpu = opts->n_gpus > 0 ? 0 : 1, max_cpu = SCHED_MAX_DEVICES - opts->n_gpus;
    if (opts->n_cpu_workers < min_cpu || opts->n_cpu_workers > max_cpu) {
        err_set(err, STATUS_ERR_RANGE, "--cpu-workers must be between %d and %d%s (got %d)", min_cpu, max_cpu,
                opts->n_gpus > 0 ? " beside the GPUs" : "", opts->n_cpu_workers);
        return NULL;
    }
    struct sched *s = mem_calloc(1, sizeof *s);
    s->opts = *opts;
    if (s->opts.history_max <= 0) s->opts.history_max = SCHED_HISTORY_MAX;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->emit_mu, NULL);
    pthread_cond_init(&s->ready, NULL);
    s->prefetch = sched__prefetch_new(opts->recall_dir);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cleaned, &attr);
    pthread_condattr_destroy(&attr);
    s->ids = json_object();
    s->history = json_object();
    s->t_start = clock_now();

    /* GPUs first, in the order asked for; their engines come from their workers */
    if (opts->n_gpus > 0) {
        s->vram = vram_monitor_new(NULL);
        if (!s->vram) {
            err_set(err, STATUS_ERR_NOMEM, "out of host memory opening the GPU monitor");
            sched_free(s);
            return NULL;
        }
        if (vram_monitor_notice(s->vram)) log_warn("%s", vram_monitor_notice(s->vram));
    }
    for (int g = 0; g < opts->n_gpus; g++) {
        struct sched_device *d = device_add(s, SCHED_DEVICE_CUDA);
        d->cuda_ordinal = opts->gpus[g];
        sched__gpu_describe(s->vram, d->cuda_ordinal, d->name, sizeof d->name, &d->mem_total);
    }

    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int n_cpu = MAX(1, opts->n_cpu_workers);
    int threads = opts->cpu_threads > 0 ? opts->cpu_threads : (int)MAX(1, (cores > 0 ? cores : 1) / n_cpu);
    uint64_t ram = sched__host_mem_total();
    for (int i = 0; i < opts->n_cpu_workers; i++) {
        struct sched_device *d = device_add(s, SCHED_DEVICE_CPU);
        sched__cpu_name(i, d->name, sizeof d->name);
        d->mem_total = ram;
        d->ready = true;
        d->engine = engine_new_cpu(threads, opts->paths.models, opts->tokenizer_dir);
        if (!d->engine) {
            err_set(err, STATUS_ERR_NOMEM, "out of host memory creating the engine of device %d (%s)", d->index,
                    d->name);
            sched_free(s);
            return NULL;
        }
    }
    if (store_reload(s, err)) {
        sched_free(s);
        return NULL;
    }
    /* the reloaded prompts' checkpoints (they will run) */
    for (int i = 0; i < s->n_dev; i++)
        for (int k = 0; k < s->dev[i].n_heap; k++) prefetch_prompt(s, s->dev[i].heap[k]->prompt);
    return s;
}

void sched_read_ahead_recalled(struct sched *s) {
    if (s && s->opts.recall_dir) sched__prefetch_recall(s->prefetch, sched__host_mem_total() / 2);
}

void sched_set_event_sink(struct sched *s, sched_event_fn fn, void *user) {
    s->sink = fn;
    s->sink_user = user;
}

int sched_start(struct sched *s, struct err *err) {
    pthread_mutex_lock(&s->mu); /* before any worker takes one of them (defer_reset) */
    for (int i = 0; i < s->n_reload_resets; i++) {
        struct err e = {0};
        store_logged(store_prompt_reset(s->store, s->reload_resets[i], &e), &e, s->reload_resets[i]);
        mem_free(s->reload_resets[i]);
    }
    mem_free(s->reload_resets);
    s->reload_resets = NULL;
    s->n_reload_resets = 0;
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < s->n_dev; i++) {
        struct sched_device *d = &s->dev[i];
        if (d->started) continue;
        int rc = pthread_create(&d->thread, NULL, sched__worker_main, d);
        if (rc) return err_set(err, STATUS_ERR_INTERNAL, "cannot start the worker of device %d (%s): %s", i, d->name,
                               strerror(rc));
        d->started = true;
    }
    /* each GPU worker opens its device on its own thread; wait for all of them */
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->n_dev; i++)
        while (!s->dev[i].ready) pthread_cond_wait(&s->ready, &s->mu);
    int rc = 0;
    for (int i = 0; i < s->n_dev && !rc; i++)
        if (s->dev[i].init_rc)
            rc = err_set(err, s->dev[i].init_rc, "device %d (%s): %s", i, s->dev[i].name, s->dev[i].init_err.msg);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

void sched_free(struct sched *s) {
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    s->stopping = true;
    for (int i = 0; i < s->n_dev; i++) {
        if (s->dev[i].running) atomic_store(&s->dev[i].interrupt, true);
        pthread_cond_broadcast(&s->dev[i].wake);
    }
    pthread_cond_broadcast(&s->cleaned); /* a GPUMemoryCleanup waiting for others stops waiting */
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < s->n_dev; i++)
        if (s->dev[i].started) pthread_join(s->dev[i].thread, NULL);
    for (int i = 0; i < s->n_dev; i++) device_deinit(&s->dev[i]); /* their rows stay: queued again next start */
    sched__prefetch_free(s->prefetch);
    store_free(s->store);
    json_decref(s->ids);
    for (int i = 0; i < s->n_reload_resets; i++) mem_free(s->reload_resets[i]); /* never started */
    mem_free(s->reload_resets);
    json_decref(s->history);
    vram_monitor_free(s->vram);
    pthread_cond_destroy(&s->ready);
    pthread_cond_destroy(&s->cleaned);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->emit_mu);
    mem_free(s);
}

int sched_n_devices(const struct sched *s) { return s->n_dev; }

void sched_device_info(struct sched *s, int index, struct sched_device_info *out) {
    memset(out, 0, sizeof *out);
    if (index < 0 || index >= s->n_dev) return;
    const struct sched_device *d = &s->dev[index];
    out->index = index;
    out->kind = d->kind;
    snprintf(out->name, sizeof out->name, "%s", d->name);
    out->mem_total = d->mem_total;
    out->mem_free = d->kind == SCHED_DEVICE_CPU ? sched__host_mem_free() : sched__gpu_mem_free(s->vram, d->cuda_ordinal);
    pthread_mutex_lock(&s->mu);
    out->running = d->running ? 1 : 0;
    out->pending = d->n_heap;
    pthread_mutex_unlock(&s->mu);
}

json_t *sched_device_models_json(struct sched *s, int d) {
    ASSERT(d >= 0 && d < s->n_dev);
    pthread_mutex_lock(&s->mu);
    json_t *j = s->dev[d].models ? json_deep_copy(s->dev[d].models) : json_array();
    pthread_mutex_unlock(&s->mu);
    return j;
}

json_t *sched_gpus_json(struct sched *s) {
    json_t *gpus = json_array();
    for (int i = 0; i < s->n_dev; i++) {
        const struct sched_device *d = &s->dev[i];
        if (d->kind != SCHED_DEVICE_CUDA) continue;
        struct vram_gpu g;
        struct err err = {0};
        bool known = s->vram && vram_monitor_query(s->vram, d->cuda_ordinal, &g, &err) == 0;
        json_t *o = json_object();
        json_object_set_new(o, "device", json_integer(i));
        json_object_set_new(o, "cuda_index", json_integer(d->cuda_ordinal));
        json_object_set_new(o, "models", sched_device_models_json(s, i));
        json_object_set_new(o, "name", json_string(d->name));
        json_object_set_new(o, "pci_bus_id", known && g.pci_bus_id[0] ? json_string(g.pci_bus_id) : json_null());
        json_object_set_new(o, "memory_total", known ? json_integer((json_int_t)g.mem_total) : json_null());
        json_object_set_new(o, "memory_used", known ? json_integer((json_int_t)g.mem_used) : json_null());
        json_object_set_new(o, "memory_free", known ? json_integer((json_int_t)g.mem_free) : json_null());
        json_object_set_new(o, "memory_used_pct",
                            known && g.mem_total ? json_real(100.0 * (double)g.mem_used / (double)g.mem_total) : json_null());
        json_object_set_new(o, "temperature_c", known && g.temperature_c >= 0 ? json_integer(g.temperature_c) : json_null());
        json_object_set_new(o, "utilization_pct",
                            known && g.utilization_pct >= 0 ? json_integer(g.utilization_pct) : json_null());
        json_object_set_new(o, "power_w", known && g.power_w >= 0 ? json_real(g.power_w) : json_null());
        json_object_set_new(o, "power_limit_w", known && g.power_limit_w >= 0 ? json_real(g.power_limit_w) : json_null());
        json_array_append_new(gpus, o);
    }
    const char *cvd = getenv("CUDA_VISIBLE_DEVICES");
    const char *notice = s->vram ? vram_monitor_notice(s->vram) : NULL;
    return json_pack("{s:o,s:I,s:s,s:o,s:o}", "gpus", gpus, "count", (json_int_t)json_array_size(gpus), "monitor",
                     s->vram ? vram_monitor_source(s->vram) : "none", "notice", notice ? json_string(notice) : json_null(),
                     "cuda_visible_devices", cvd ? json_string(cvd) : json_null());
}

/* ===== Routing ===== */

/* The error text of a bad target: "device 7 does not exist; devices: 0 (cpu:0 ...), ...". */
static int bad_target(struct sched *s, int target, struct err *err) {
    char list[900] = "";
    size_t at = 0;
    for (int i = 0; i < s->n_dev && at < sizeof list; i++)
        at += (size_t)snprintf(list + at, sizeof list - at, "%s%d (%s)", i ? ", " : "", i, s->dev[i].name);
    return err_set(err, STATUS_ERR_RANGE, "device %d does not exist; devices: %s", target, list);
}

/* Paths of the checkpoints the prompt's CheckpointLoaderSimple nodes load (mem_free each). */
int sched__prompt_checkpoints(const struct sched *s, const struct graph_prompt *p, char **out, int max) {
    int n = 0;
    for (int i = 0; i < p->n_nodes && n < max; i++) {
        const struct graph_node *g = &p->nodes[i];
        if (strcmp(g->cls->name, "CheckpointLoaderSimple") != 0) continue;
        int k = node_class_input_index(g->cls, "ckpt_name");
        if (k < 0 || g->inputs[k].kind != GRAPH_INPUT_LITERAL || g->inputs[k].literal.kind != VALUE_STRING) continue;
        char path[PATH_MAX];
        if (graph_model_path(&s->opts.paths, "checkpoints", g->inputs[k].literal.s, path, sizeof path, NULL) == 0)
            out[n++] = mem_strdup(path);
    }
    return n;
}

static bool device_holds(const struct sched_device *d, char *const *ckpts, int n) {
    if (n == 0) return false;
    for (int i = 0; i < n; i++) {
        bool found = false;
        for (int k = 0; k < d->n_ckpts && !found; k++) found = strcmp(d->ckpts[k], ckpts[i]) == 0;
        if (!found) return false;
    }
    return true;
}

/* Average run time of device d in s, or `dflt` without history. Caller holds mu. */
static double device_avg_exec(const struct sched_device *d, double dflt) {
    return d->m.tasks ? d->m.exec_sum / (double)d->m.tasks : dflt;
}

/* Least expected wait, (pending + running) x average run time; among devices within
 * ROUTE_SLACK of the best, the first that already holds all the prompt's checkpoints.
 * Caller holds mu. */
static int route_auto(struct sched *s, char *const *ckpts, int n_ckpts) {
    double avg_sum = 0;
    int with_history = 0;
    for (int i = 0; i < s->n_dev; i++)
        if (s->dev[i].m.tasks) {
            avg_sum += device_avg_exec(&s->dev[i], 0);
            with_history++;
        }
    double dflt = with_history ? avg_sum / with_history : DEFAULT_EXEC_S;
    double wait[SCHED_MAX_DEVICES], best = INFINITY;
    int best_i = 0;
    for (int i = 0; i < s->n_dev; i++) {
        const struct sched_device *d = &s->dev[i];
        wait[i] = (double)(d->n_heap + (d->running ? 1 : 0)) * device_avg_exec(d, dflt);
        if (wait[i] < best) best = wait[i], best_i = i;
    }
    double limit = best * (1.0 + ROUTE_SLACK) + 1e-9;
    for (int i = 0; i < s->n_dev; i++)
        if (wait[i] <= limit && device_holds(&s->dev[i], ckpts, n_ckpts)) return i;
    return best_i;
}

/* ===== Prompts ===== */

int64_t sched_next_number(struct sched *s) {
    pthread_mutex_lock(&s->mu);
    int64_t n = s->counter++;
    pthread_mutex_unlock(&s->mu);
    return n;
}

int sched_submit(struct sched *s, struct sched_submit *sub, int64_t counter, struct sched_ticket *out,
                 struct err *err) {
    ASSERT(sub->prompt);
    if (sub->target >= s->n_dev || sub->target < -1) return bad_target(s, sub->target, err);
    char uuid[37];
    const char *id = sub->prompt_id;
    if (!id) {
        sched__uuid4(uuid);
        id = uuid;
    }
    if (strlen(id) >= sizeof out->prompt_id)
        return err_set(err, STATUS_ERR_RANGE, "prompt_id '%.80s...' is longer than %zu bytes", id,
                       sizeof out->prompt_id - 1);
    json_t *probe = json_string(id); /* ids and client ids become JSON keys and strings */
    json_t *probe2 = sub->client_id ? json_string(sub->client_id) : json_null();
    bool utf8 = probe && probe2;
    json_decref(probe);
    json_decref(probe2);
    if (!utf8) return err_set(err, STATUS_ERR_INVALID, "prompt_id or client_id is not valid UTF-8");

    struct sched_item *it = mem_calloc(1, sizeof *it);
    it->prompt_id = mem_strdup(id);
    it->client_id = sub->client_id ? mem_strdup(sub->client_id) : NULL;
    if (sub->has_number) {
        it->number = sub->number;
    } else {
        it->number_is_int = true;
        it->inumber = sub->front ? -counter : counter;
        it->number = (double)it->inumber;
    }
    it->prompt = sub->prompt;
    it->extra_data = json_is_object(sub->extra_data) ? json_deep_copy(sub->extra_data) : json_object();
    if (it->client_id && !json_object_get(it->extra_data, "client_id"))
        json_object_set_new(it->extra_data, "client_id", json_string(it->client_id));
    it->tuple = item_tuple(it);
    char *ckpts[8];
    int n_ckpts = sched__prompt_checkpoints(s, sub->prompt, ckpts, 8);
    bool held[8] = {false}; /* by some device: its host copy exists, no file read ahead */

    sched__change_begin(s);
    int rc = 0;
    if (s->stopping) {
        rc = err_set(err, STATUS_ERR_INVALID, "the server is shutting down; prompt %s not queued", id);
    } else if (json_object_get(s->ids, id)) {
        rc = err_set(err, STATUS_ERR_EXISTS, "prompt_id %s is already queued or running", id);
    } else {
        int di = sub->target >= 0 ? sub->target : route_auto(s, ckpts, n_ckpts);
        for (int i = 0; i < n_ckpts; i++) {
            for (int k = 0; k < s->n_dev && !held[i]; k++) held[i] = device_holds(&s->dev[k], &ckpts[i], 1);
            /* the read starts before the store's write: on a cold start that commit's sync waits
               for a disk that the libraries' pages keep busy (0.1-0.3 s on the lent machines) */
            if (!held[i]) sched__prefetch_file(s->prefetch, ckpts[i]); /* the load will read memory */
            sched__prefetch_note(s->prefetch, ckpts[i]);
        }
        struct sched_device *d = &s->dev[di];
        it->device = di;
        it->t_queued = clock_now();
        d->m.submitted++;
        d->m.depth_sum += d->n_heap + (d->running ? 1 : 0);
        const double t_store = clock_now();
        store_put(s, it); /* before the reply: nothing accepted is lost */
        log_debug("sched: prompt %s written to the queue store in %.1f ms", id, 1e3 * (clock_now() - t_store));
        sched__heap_push(d, it);
        json_object_set_new(s->ids, id, json_integer(di));
        pthread_cond_signal(&d->wake);
        *out = (struct sched_ticket){.number = it->number, .number_is_int = it->number_is_int, .device = di};
        snprintf(out->prompt_id, sizeof out->prompt_id, "%s", id);
    }
    sched__change_end(s, rc == 0);
    for (int i = 0; i < n_ckpts; i++) mem_free(ckpts[i]);
    if (rc) {
        it->prompt = NULL; /* stays the caller's */
        sched__item_free(it);
        return rc;
    }
    sub->prompt = NULL; /* the sched's now */
    const struct sched_device *d = &s->dev[out->device];
    log_info("routing prompt %s to [%s %d] (%s, number %g)", out->prompt_id, d->kind == SCHED_DEVICE_CPU ? "CPU" : "GPU",
             d->index, sub->target >= 0 ? "target" : "automatic", out->number);
    return 0;
}

/* ===== Queues ===== */

/* Appends copies of device d's running and pending tuples. Caller holds mu. */
static void queue_append(const struct sched_device *d, json_t *running, json_t *pending) {
    if (d->running && d->running->tuple) json_array_append_new(running, json_deep_copy(d->running->tuple));
    for (int i = 0; i < d->n_heap; i++) json_array_append_new(pending, json_deep_copy(d->heap[i]->tuple));
}

json_t *sched_queue_json(struct sched *s, int device) {
    json_t *running = json_array(), *pending = json_array();
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->n_dev; i++)
        if (device < 0 || device == i) queue_append(&s->dev[i], running, pending);
    pthread_mutex_unlock(&s->mu);
    return json_pack("{s:o,s:o}", "queue_running", running, "queue_pending", pending);
}

json_t *sched_queue_all_json(struct sched *s) {
    json_t *queues = json_array();
    int total_running = 0, total_pending = 0;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->n_dev; i++) {
        const struct sched_device *d = &s->dev[i];
        json_t *running = json_array(), *pending = json_array();
        queue_append(d, running, pending);
        int nr = d->running ? 1 : 0;
        total_running += nr;
        total_pending += d->n_heap;
        json_array_append_new(queues, json_pack("{s:i,s:o,s:o,s:i,s:i}", "gpu_id", i, "queue_running", running,
                                                "queue_pending", pending, "running_count", nr, "pending_count",
                                                d->n_heap));
    }
    pthread_mutex_unlock(&s->mu);
    return json_pack("{s:o,s:i,s:i}", "queues", queues, "total_running", total_running, "total_pending",
                     total_pending);
}

int sched_queue_remaining(struct sched *s, int device) {
    pthread_mutex_lock(&s->mu);
    int n = sched__remaining_locked(s, device);
    pthread_mutex_unlock(&s->mu);
    return n;
}

void sched_queue_clear(struct sched *s, int device) {
    struct sched_item **gone = NULL;
    int n_gone = 0;
    sched__change_begin(s);
    for (int i = 0; i < s->n_dev; i++) {
        struct sched_device *d = &s->dev[i];
        if ((device >= 0 && device != i) || d->n_heap == 0) continue;
        gone = mem_realloc(gone, (size_t)(n_gone + d->n_heap) * sizeof *gone);
        for (int k = 0; k < d->n_heap; k++) {
            json_object_del(s->ids, d->heap[k]->prompt_id);
            store_delete(s, d->heap[k]->prompt_id);
            gone[n_gone++] = d->heap[k];
        }
        d->n_heap = 0;
    }
    sched__change_end(s, true); /* ComfyUI's wipe_queue always reports */
    for (int i = 0; i < n_gone; i++) sched__item_free(gone[i]);
    mem_free(gone);
}

void sched_queue_delete(struct sched *s, const char *prompt_id) {
    if (!prompt_id) return;
    struct sched_item *gone = NULL;
    sched__change_begin(s);
    for (int i = 0; i < s->n_dev && !gone; i++) {
        struct sched_device *d = &s->dev[i];
        for (int k = 0; k < d->n_heap; k++)
            if (strcmp(d->heap[k]->prompt_id, prompt_id) == 0) {
                gone = sched__heap_remove_at(d, k);
                json_object_del(s->ids, prompt_id);
                store_delete(s, prompt_id);
                break;
            }
    }
    sched__change_end(s, gone != NULL); /* only a change reports */
    sched__item_free(gone);
}

/* ===== Interrupts and /free ===== */

void sched_interrupt(struct sched *s, const char *prompt_id, int device) {
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->n_dev; i++) {
        struct sched_device *d = &s->dev[i];
        if (!d->running) continue; /* idle: nothing to stop, and the next prompt must run */
        if (prompt_id ? strcmp(d->running->prompt_id, prompt_id) == 0 : (device < 0 || device == i)) {
            atomic_store(&d->interrupt, true);
            log_info("[%s %d] interrupting prompt %s", d->kind == SCHED_DEVICE_CPU ? "CPU" : "GPU", i,
                     d->running->prompt_id);
        }
    }
    pthread_mutex_unlock(&s->mu);
}

void sched_free_memory(struct sched *s, int device, bool unload_models, bool free_memory) {
    if (!unload_models && !free_memory) return;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->n_dev; i++) {
        if (device >= 0 && device != i) continue;
        s->dev[i].flag_unload |= unload_models;
        s->dev[i].flag_free |= free_memory;
        pthread_cond_signal(&s->dev[i].wake);
    }
    pthread_mutex_unlock(&s->mu);
}

bool sched_client_running_node(struct sched *s, const char *client_id, char *node, size_t n) {
    bool found = false;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->n_dev && !found; i++) {
        const struct sched_device *d = &s->dev[i];
        if (d->running && d->running->client_id && strcmp(d->running->client_id, client_id) == 0 &&
            d->running_node[0]) {
            snprintf(node, n, "%s", d->running_node);
            found = true;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return found;
}

/* ===== Test hooks ===== */

void sched__device_set_checkpoints(struct sched *s, int d, const char *const *paths, int n) {
    ASSERT(d >= 0 && d < s->n_dev);
    char **copy = mem_calloc((size_t)(n ? n : 1), sizeof *copy);
    for (int i = 0; i < n; i++) copy[i] = mem_strdup(paths[i]);
    pthread_mutex_lock(&s->mu);
    char **old = s->dev[d].ckpts;
    int n_old = s->dev[d].n_ckpts;
    s->dev[d].ckpts = copy;
    s->dev[d].n_ckpts = n;
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < n_old; i++) mem_free(old[i]);
    mem_free(old);
}

void sched__device_budget(struct sched *s, int d, struct vram_budget *out) {
    ASSERT(d >= 0 && d < s->n_dev);
    pthread_mutex_lock(&s->mu);
    *out = s->dev[d].budget;
    pthread_mutex_unlock(&s->mu);
}
