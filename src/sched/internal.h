/* sched/internal.h -- what the files of sched/ share: the sched, device and item structs and
 * the sched__ functions between them. Not for other layers (tests may include it).
 * Owns: nothing at run time; declarations only.
 * Threads: fields say which lock guards them ("mu" = sched->mu; "worker" = only the
 * device's worker thread, or any thread before sched_start / after the join). */
#ifndef KILN_SCHED_INTERNAL_H
#define KILN_SCHED_INTERNAL_H

#include "sched/sched.h"
#include "vram/budget.h"

#include <pthread.h>
#include <stdatomic.h>

struct engine;
struct graph_cache;
struct node_host_i;
struct store;
struct vram_monitor;

/* ===== One queued or running prompt ===== */

struct sched_item {
    char *prompt_id;                     /* owned */
    char *client_id;                     /* owned, or NULL */
    double number;                       /* priority (heap order: number, then prompt_id) */
    int64_t inumber;                     /* the same, exactly, when number_is_int */
    bool number_is_int;                  /* server-assigned (int) or the client's (float) */
    struct graph_prompt *prompt;         /* owned; read by the worker while it runs */
    json_t *extra_data;                  /* owned full copy (sensitive keys kept) for the executor */
    json_t *tuple;                       /* [number, id, prompt, extra_data, outputs] as /queue and
                                            /history show it (sensitive keys removed); mu */
    double t_queued;                     /* clock_now() at submit, in s */
    double t_started;                    /* clock_now() when the worker took it, in s */
    int device;                          /* index of its device */
};

void sched__item_free(struct sched_item *it); /* NULL is a no-op */

/* ===== Per-device figures ===== */

#define SCHED_BUCKETS 12 /* histogram buckets (seconds), see metrics.c */
extern const double SCHED_BUCKET_BOUNDS[SCHED_BUCKETS];

struct sched_metrics {
    uint64_t submitted;                  /* prompts queued on the device */
    uint64_t tasks;                      /* prompts finished (any outcome) */
    uint64_t successes;
    uint64_t failures;                   /* execution_error (OOMs included) */
    uint64_t ooms;                       /* failures with STATUS_ERR_OOM_DEVICE */
    uint64_t oom_retries;                /* prompts run a second time after running out of memory */
    uint64_t interrupts;                 /* execution_interrupted */
    uint64_t cache_hits;                 /* nodes served from the output cache */
    int cache_entries;                   /* entries in the output cache now */
    double wait_sum;                     /* queued -> started, in s */
    double exec_sum;                     /* started -> finished, in s */
    uint64_t wait_bucket[SCHED_BUCKETS]; /* cumulative counts of wait <= bound */
    uint64_t exec_bucket[SCHED_BUCKETS]; /* cumulative counts of exec <= bound */
    double depth_sum;                    /* prompts ahead (pending + running) at each submit */
};

/* ===== A device: queue, worker, engine ===== */

/* What one clean-up asked by another device's GPUMemoryCleanup freed (sched/host.c). */
struct sched_clean {
    uint64_t freed;                      /* bytes: the monitor's free memory after - before when
                                            measured, else own_freed */
    uint64_t own_freed;                  /* bytes of the engine's scratch and weights given back */
    bool measured;                       /* freed comes from the monitor */
};

struct sched_device {
    struct sched *s;                     /* back pointer */
    int index;                           /* position in the list (X-TARGET-GPU value) */
    enum sched_device_kind kind;
    char name[128];                      /* "cpu:0 <model name>" or "cuda:0 NVIDIA H100 80GB HBM3" */
    uint64_t mem_total;                  /* bytes */
    int cuda_ordinal;                    /* CUDA devices: the runtime's device number */
    struct engine *engine;               /* worker: backend, checkpoints, activations (GPUs:
                                            made by the worker at start) */
    bool ready;                          /* mu: the worker has its engine (or failed: init_rc) */
    int init_rc;                         /* mu: 0, or why the worker could not open the device */
    struct err init_err;                 /* mu: its message */
    struct graph_cache *cache;           /* worker: node outputs between prompts */
    struct vram_budget budget;           /* mu: reservation settings (mode, reserved_gb,
                                            min_safe_reserve_gb; smart mode with the defaults
                                            until GPUMemoryReserve changes them); the worker
                                            fills a copy's figures before each prompt */
    pthread_t thread;
    bool started;                        /* thread created (joined in sched_free) */
    pthread_cond_t wake;                 /* with mu: a prompt was queued, /free or stop */
    struct sched_item **heap;            /* mu: binary min-heap, ComfyUI's raw list order */
    int n_heap, cap_heap;                /* mu */
    struct sched_item *running;          /* mu: the prompt being run, or NULL */
    char running_node[256];              /* mu: node id last sent as executing ("" none) */
    atomic_bool interrupt;               /* any thread sets; the worker clears at prompt start */
    bool flag_unload;                    /* mu: /free unload_models pending */
    bool flag_free;                      /* mu: /free free_memory pending */
    uint64_t clean_req;                  /* mu: GPUMemoryCleanup requests from other devices so far */
    uint64_t clean_done;                 /* mu: the last request served (== clean_req: none pending) */
    bool clean_aggressive;               /* mu: a pending request also unloads unused models */
    struct sched_clean clean_result;     /* mu: what the last served request freed */
    char **ckpts;                        /* mu: checkpoint paths the engine holds (snapshot) */
    int n_ckpts;                         /* mu */
    json_t *models;                      /* mu: [{path, placement, where, bytes}] of the loaded
                                            checkpoints (snapshot; where their bytes live), or NULL */
    struct sched_metrics m;              /* mu */
    uint64_t since_log;                  /* worker: prompts since the last metrics line */
};

struct sched {
    struct sched_opts opts;              /* copy (strings borrowed) */
    pthread_mutex_t mu;                  /* queues, running, history, ids, metrics */
    pthread_mutex_t emit_mu;             /* taken before mu: orders "status" broadcasts */
    sched_event_fn sink;                 /* set before sched_start */
    void *sink_user;
    struct sched_device dev[SCHED_MAX_DEVICES];
    int n_dev;
    pthread_cond_t ready;                /* with mu: a GPU worker opened its device (or failed) */
    pthread_cond_t cleaned;              /* with mu (CLOCK_MONOTONIC): a device served a clean-up
                                            request (clean_done moved), or stopping */
    struct vram_monitor *vram;           /* GPU names and memory; NULL without GPU devices */
    json_t *ids;                         /* mu: {prompt_id: device} of queued and running prompts */
    char **reload_resets;                /* mu: ids of rows the reload found 'running', set back to
                                            'pending' by sched_start (defer_reset), owned */
    int n_reload_resets;
    json_t *history;                     /* mu: {prompt_id: entry}, completion order */
    int64_t counter;                     /* mu: PromptServer.number */
    bool stopping;                       /* mu: sched_free began */
    double t_start;                      /* clock_now() at sched_new, in s */
    struct store *store;                 /* mu: the SQLite file, or NULL (nothing persisted) */
    struct sched_prefetch *prefetch;     /* reads accepted prompts' checkpoints ahead (own lock) */
    atomic_bool readahead_listed;        /* a GPU worker ran its first prompt and called
                                            readahead_record (once per process) */
};

/* The checkpoint files of prompt p's CheckpointLoaderSimple nodes (literal names that resolve),
 * at most max, each a mem_strdup'd path for the caller to free. (sched.c) */
int sched__prompt_checkpoints(const struct sched *s, const struct graph_prompt *p, char **out, int max);

/* ===== Checkpoint read-ahead (prefetch.c) ===== */

struct sched_prefetch;
/* recall_dir: the folder of the list of checkpoints the last prompts used (NULL: none kept). */
struct sched_prefetch *sched__prefetch_new(const char *recall_dir);
void sched__prefetch_free(struct sched_prefetch *p); /* stops and joins the reader; NULL is a no-op */
/* Queues path for reading into the page cache unless it was queued in the last minute or the
 * queue is full; true when queued. A prompt's file: a speculative read of another file (from
 * the recall list) stops, and those waiting are dropped. */
bool sched__prefetch_file(struct sched_prefetch *p, const char *path);
/* Puts path first in the list of checkpoints the last prompts used (at most 2), written to the
 * recall folder by the reader thread when it has nothing to read. No-op without a folder. */
void sched__prefetch_note(struct sched_prefetch *p, const char *path);
/* Queues speculative reads of the listed checkpoints whose size and modification time did not
 * change, most recent first, up to max_bytes in all; returns how many. */
int sched__prefetch_recall(struct sched_prefetch *p, uint64_t max_bytes);
/* Waits until `files` files have been read in all (or timeout_s passed); *bytes (optional) gets
 * the bytes read so far. True when they have. For tests. */
bool sched__prefetch_wait(struct sched_prefetch *p, uint64_t files, double timeout_s, uint64_t *bytes);
/* Tests: while hold is set, the reader waits after taking a file and before reading it; whether
 * it has taken path. */
void sched__prefetch_hold(struct sched_prefetch *p, bool hold);
bool sched__prefetch_reading(struct sched_prefetch *p, const char *path);

/* ===== Heap (heap.c); caller holds mu ===== */

/* ComfyUI's tuple order: number, then prompt_id. Negative when a runs first. */
int sched__item_cmp(const struct sched_item *a, const struct sched_item *b);
void sched__heap_push(struct sched_device *d, struct sched_item *it);
struct sched_item *sched__heap_pop(struct sched_device *d);   /* NULL when empty */
/* Removes the item at heap index i and returns it (heapq's "remove + heapify"). */
struct sched_item *sched__heap_remove_at(struct sched_device *d, int i);

/* ===== Events and history (sched.c, history.c, worker.c) ===== */

/* Hands one event to the sink (steals data). NULL client_id = broadcast. */
void sched__emit(struct sched *s, const char *client_id, const char *type, json_t *data);
/* A queue change that clients hear about: sched__change_begin takes emit_mu then mu;
 * sched__change_end releases mu and, when `report`, broadcasts
 * {"status": {"exec_info": {"queue_remaining": N}}} with N read under mu before emit_mu is
 * released. So status broadcasts reach the sink in the order of the changes (a submit's
 * before the dequeue that follows it), as ComfyUI's single event queue delivers them. */
void sched__change_begin(struct sched *s);
void sched__change_end(struct sched *s, bool report);
/* pending + running; caller holds mu. */
int sched__remaining_locked(struct sched *s, int device);
/* Stores a finished prompt's entry (steals it); evicts the oldest beyond history_max. Caller
 * holds mu. */
void sched__history_put(struct sched *s, const char *prompt_id, json_t *entry);

/* ===== Persistence (sched.c, PERSISTENCE in sched.h); caller holds mu, no-ops without a store;
 * a failed write is logged with the prompt id and serving goes on ===== */

void sched__store_start(struct sched *s, const struct sched_item *it);       /* a worker took it */
void sched__store_requeue(struct sched *s, const struct sched_item *it);     /* stopped by sched_free */
/* The prompt ended with `entry` (as put in the history). */
void sched__store_finish(struct sched *s, const struct sched_item *it, const json_t *entry);

/* The worker thread's body (worker.c). */
void *sched__worker_main(void *device);

/* ===== Host interface for nodes (host.c) ===== */

/* The node_host_i (graph/exec.h) that workers hand to the executor, with their own struct
 * sched_device as the user pointer: GPUMemoryReserve stores another GPU's settings through it,
 * GPUMemoryCleanup asks the other devices to clean up. */
extern const struct node_host_i sched__host;

/* Serves a pending clean-up request of device d (clean_req != clean_done): gives back the
 * scratch and, when asked, unloads unused models, then publishes what was freed and wakes the
 * waiters. Worker thread of d; caller holds mu (released while cleaning). */
void sched__worker_clean(struct sched *s, struct sched_device *d);

/* ===== Devices (device.c) ===== */

/* "cuda:<ordinal> <name from NVML or the CUDA driver>" into name[n], and the device's memory. */
void sched__gpu_describe(struct vram_monitor *m, int ordinal, char *name, size_t n, uint64_t *mem_total);
/* Free device memory of a GPU now (0 when unknown). */
uint64_t sched__gpu_mem_free(struct vram_monitor *m, int ordinal);

/* "cpu:<i> <model name from /proc/cpuinfo>" into name[n]. */
void sched__cpu_name(int index, char *name, size_t n);
uint64_t sched__host_mem_total(void);   /* bytes */
uint64_t sched__host_mem_free(void);    /* bytes (MemAvailable) */
/* A fresh uuid4, lowercase hyphenated, into out[37]. */
void sched__uuid4(char out[37]);

/* ===== Test hooks ===== */

/* Replaces device d's snapshot of loaded checkpoint paths (what routing prefers), as the worker
 * does after each prompt. Takes mu. */
void sched__device_set_checkpoints(struct sched *s, int d, const char *const *paths, int n);
/* A copy of device d's reservation settings (mode, reserved_gb, min_safe_reserve_gb). Takes mu. */
void sched__device_budget(struct sched *s, int d, struct vram_budget *out);

#endif
