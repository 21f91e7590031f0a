/* graph/exec.h -- runs a validated prompt: the dependency subgraph of its outputs, each node
 * once, depth-first from the outputs in prompt order (ComfyUI's ExecutionList order for one
 * chain), stopping at the first failure.
 * Owns: the node output values while the prompt runs (freed as soon as no pending consumer
 * needs them), the error record, the UI outputs map.
 * Must not: send anything itself (events go through callbacks), keep values after returning
 * (except through the cache hook).
 * Threads: exec_run runs on the caller's (worker) thread; callbacks are called on it too. The
 * interrupt flag may be set from any thread.
 *
 * DESIGN. The optional cache hook (struct exec_cache_i) is asked, before anything runs, for
 * each node of the prompt; a hit supplies the node's outputs and UI so the node is not run
 * (ComfyUI's execution_cached). A cache keyed by the node's input signature plugs in here
 * without touching the executor; with no hook, nothing is cached. */
#ifndef KILN_GRAPH_EXEC_H
#define KILN_GRAPH_EXEC_H

#include "graph/prompt.h"
#include "graph/registry.h"

#include <jansson.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* The sticky error record of a failed or interrupted prompt (execution_error fields). */
struct exec_error {
    char node_id[256];                   /* the failing node's id ("" if none) */
    char node_type[256];                 /* its class_type */
    char exception_message[2048];        /* err.msg of the node */
    char exception_type[128];            /* "RuntimeError", "FileNotFoundError", ... */
    json_t *current_inputs;              /* {input: [value]} as ComfyUI formats them, or NULL */
};

/* Event callbacks; each may be NULL. `user` is passed back. Called in this order:
 * execution_start, execution_cached, then per node executing [progress...] [executed], then
 * exactly one of execution_success / execution_error / execution_interrupted. */
struct exec_events {
    void *user;
    void (*execution_start)(void *user);
    void (*execution_cached)(void *user, const char *const *node_ids, int n);
    void (*executing)(void *user, const char *node_id);
    void (*progress)(void *user, const char *node_id, int64_t value, int64_t max);
    void (*executed)(void *user, const char *node_id, const json_t *ui);
    void (*execution_success)(void *user);
    void (*execution_error)(void *user, const struct exec_error *e, const json_t *executed);
    void (*execution_interrupted)(void *user, const struct exec_error *e, const json_t *executed);
};

/* Output cache hook (optional). get() returns true on a hit, filling outputs[0..n) with owned
 * references and *ui with a new reference (or NULL when the node had no UI). put() is called
 * after a node ran; it takes its own references. */
struct exec_cache_i {
    void *user;
    bool (*get)(void *user, const struct graph_prompt *p, int node, struct value *outputs, int n, json_t **ui);
    void (*put)(void *user, const struct graph_prompt *p, int node, const struct value *outputs, int n,
                const json_t *ui);
};

/* ComfyUI's input signature of a node (CacheKeySetInputSignature): the node's class and its
 * inputs sorted by name (literals as coerced, links as ["ANCESTOR", k, slot]), followed by the
 * same for each ancestor in depth-first order, so equal sub-graphs give equal keys whatever
 * their node ids. The id is part of it only for not_idempotent classes. IS_CHANGED is not
 * included (null): a cache must add it for classes that read files. Returns the canonical JSON
 * text (mem_free it). */
char *exec_signature(const struct graph_prompt *p, int node);

/* ===== Host interface (optional) =====
 * What a node may ask of the program that runs the executor, beyond its own engine: the
 * scheduler implements it (graph/ never includes sched/); without a host (kiln run, unit
 * tests) the nodes that use it act on their own engine only. Functions run on the calling
 * (worker) thread and may block for a bounded time. `user` is exec_opts.host_user. */

enum node_host_clean_state {
    NODE_HOST_CLEAN_DONE,                /* the device cleaned up; freed figures are valid */
    NODE_HOST_CLEAN_QUEUED,              /* busy with a prompt: queued after its current prompt */
    NODE_HOST_CLEAN_TIMEOUT,             /* idle but not done within the wait (still queued) */
    NODE_HOST_CLEAN_DOWN,                /* the device's worker is not running (failed to open) */
};

/* One other device's clean-up, as GPUMemoryCleanup reports it. */
struct node_host_clean {
    int device;                          /* the scheduler's device index */
    int cuda_index;                      /* CUDA ordinal, -1 for a CPU device */
    enum node_host_clean_state state;
    uint64_t freed;                      /* bytes freed on the device (DONE): the monitor's free
                                            memory after minus before when measured, else own_freed */
    uint64_t own_freed;                  /* bytes of kiln's scratch and weights given back (DONE) */
    bool measured;                       /* freed comes from the monitor's figures */
};

struct node_host_i {
    /* Makes reservation settings the device's own until changed again (or a restart) for the
     * GPU with CUDA ordinal cuda_index: mode is an enum vram_mode, sizes are GB. The device's
     * worker uses them from its next prompt on. Returns 0, or STATUS_ERR_RANGE with err filled
     * when no device of the host is that GPU. */
    int (*set_reserve)(void *user, int cuda_index, int mode, double reserved_gb, double min_safe_gb,
                       struct err *err);
    /* Cleans every device but the caller's as POST /free does: the activation scratch is given
     * back and, when aggressive, the models no value holds are unloaded. A busy device does it
     * after its current prompt; idle ones are waited for up to wait_ms. Fills out[0..max) in
     * device order and returns how many entries it wrote. Never waits for a busy device, so
     * two prompts cleaning at once on two devices do not wait for each other. */
    int (*cleanup)(void *user, bool aggressive, int wait_ms, struct node_host_clean *out, int max);
};

struct exec_opts {
    const struct graph_paths *paths;     /* folders (required) */
    const json_t *extra_data;            /* the prompt's extra_data (extra_pnginfo), or NULL */
    void *engine;                        /* handed to nodes as node_run.engine */
    const atomic_bool *interrupt;        /* checked before each node and on progress; may be NULL.
                                            The caller clears it when the prompt starts. */
    bool disable_metadata;               /* --disable-metadata */
    const struct exec_events *events;    /* may be NULL */
    const struct exec_cache_i *cache;    /* may be NULL */
    const struct node_host_i *host;      /* handed to nodes as node_run.host; may be NULL */
    void *host_user;                     /* handed to nodes as node_run.host_user */
};

struct exec_report {
    int status;                          /* 0, STATUS_ERR_INTERRUPTED, or the failing status */
    struct exec_error error;             /* filled when status != 0 */
    json_t *outputs;                     /* {node_id: ui} for history "outputs" (new reference) */
    json_t *executed;                    /* [node ids] that ran or came from the cache, in order */
};

/* Runs p's outputs. Always fills *rep (deinit it with exec_report_deinit) and returns
 * rep->status. A node failure is not a "failure" of exec_run's caller: the status and error
 * record say what happened and the matching event was sent. */
int exec_run(const struct graph_prompt *p, const struct exec_opts *opts, struct exec_report *rep);

void exec_report_deinit(struct exec_report *rep);


#endif
