/* sched/sched.h -- devices, their queues and workers, routing, history and metrics.
 * Owns: one queue and one worker thread per device (each worker owns its device's engine:
 * backend, activation memory, loaded checkpoints, node output cache), the prompt counter, the
 * history of finished prompts, per-device metrics.
 * Must not: touch sockets or HTTP (api/ does; events leave through the sink callback) or
 * include tensor/ headers outside sched/worker code that builds the device's backend.
 * Threads: every sched_* function may be called from any thread (HTTP threads) unless noted;
 * they take sched->mu internally. Workers run exec_run and call the event sink from their
 * own thread.
 *
 * DESIGN. POST /prompt is validated by the caller (api/) with graph_prompt_validate and handed
 * to sched_submit, which picks the device (explicit target, else the least expected wait,
 * preferring a device whose engine already holds the prompt's checkpoint), gives the prompt
 * its number (ComfyUI's counter) and pushes it on that device's heap (ordered by number, then
 * prompt_id). A device's worker pops only from its own queue: a queue never runs another
 * device's prompt. When a prompt ends, the history entry is written before the final
 * `executing {node: null}` event and before the prompt leaves the running list, in one step
 * under sched->mu, so a client never sees it in neither place.
 *
 * EVENTS. Every WebSocket message ComfyUI sends for a prompt is produced here, with ComfyUI's
 * fields and order (../shared/COMFY_API.md §4), and handed to the sink with its audience:
 * the prompt's client_id, or NULL for a broadcast, following §4.3's rules. The sink must not
 * block for long (api/ queues the message and returns).
 *
 * CACHE. Each device keeps node outputs between prompts (graph/cache.h, ComfyUI's classic
 * mode): an identical resubmission runs nothing and re-reports the old UI; LoadImage's key
 * includes a hash of its file. /free free_memory empties it; a prompt that fails for lack of
 * memory (device or host) also empties it and unloads unused checkpoints.
 *
 * GPU MEMORY NODES. Workers give the executor a host interface (graph/exec.h node_host_i,
 * sched/host.c): GPUMemoryReserve stores a GPU's reservation settings (kept until changed or a
 * restart; that GPU's worker budgets from them before each prompt), and GPUMemoryCleanup
 * clear_all_gpus asks every other device to clean up as /free does (idle ones at once, waited
 * for up to 5 s; busy ones after their current prompt). A GPU worker also warms its device up
 * (one tiny graph of every op kind) right after opening it.
 *
 * PERSISTENCE. With opts.db_path (sched/store.c), every accepted prompt is written to SQLite
 * before sched_submit returns, marked running when a worker takes it, and replaced by its
 * history entry in one transaction when it ends; queue and history deletes delete rows.
 * sched_new reloads the newest history_max history entries and re-queues the prompts in number
 * order on their devices (automatic routing when the device is gone), ids and numbers kept and
 * the counter continuing after the largest. A prompt found running ran when the process died:
 * it runs again once; found running a second time, it ends with an error entry ("failed
 * twice: the server stopped while running it"). A prompt stopped by sched_free goes back to
 * pending. Write failures at run time are logged; serving goes on. */
#ifndef KILN_SCHED_H
#define KILN_SCHED_H

#include "base/err.h"
#include "graph/prompt.h"
#include "graph/registry.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#define SCHED_MAX_DEVICES 16
#define SCHED_HISTORY_MAX 10000 /* ComfyUI's MAXIMUM_HISTORY_SIZE */

struct sched;

/* ===== Configuration ===== */

enum sched_device_kind { SCHED_DEVICE_CPU, SCHED_DEVICE_CUDA };

struct sched_opts {
    int gpus[SCHED_MAX_DEVICES];     /* CUDA ordinals that become devices 0..n_gpus-1, in order */
    int n_gpus;                      /* 0 = CPU devices only */
    int n_cpu_workers;               /* CPU devices to create after the GPUs (>= 1 when there are no GPUs) */
    int cpu_threads;                 /* threads per CPU device; 0 = cores / n_cpu_workers */
    struct graph_paths paths;        /* folders (strings borrowed for the sched's life) */
    const char *tokenizer_dir;       /* --tokenizer, or NULL (borrowed) */
    int history_max;                 /* 0 = SCHED_HISTORY_MAX */
    bool disable_metadata;           /* --disable-metadata */
    int metrics_log_every;           /* log the per-device metrics line every N finished prompts; 0 = never */
    const char *db_path;             /* SQLite file for the queue and history (PERSISTENCE); NULL, ""
                                        or ":memory:" = nothing persisted (borrowed) */
    const char *recall_dir;          /* where the checkpoints that prompts used are listed, to be read
                                        ahead at the next start (sched_read_ahead_recalled); NULL:
                                        not kept (borrowed) */
};

/* What /system_stats, /queue/all, the start-up panel and routing errors show of a device. */
struct sched_device_info {
    int index;                       /* position in the device list: the X-TARGET-GPU value */
    enum sched_device_kind kind;
    char name[128];                  /* "cpu:0 <CPU model>" or "cuda:0 NVIDIA H100 ..." */
    uint64_t mem_total;              /* bytes (host RAM for CPU devices) */
    uint64_t mem_free;               /* bytes */
    int running;                     /* 0 or 1 */
    int pending;                     /* queued prompts */
};

/* ===== Lifecycle ===== */

/* Creates the devices (the GPUs of opts->gpus first, then the CPU devices) without starting
 * workers. CPU engines are made here; a GPU's engine is made by its worker thread at
 * sched_start (its CUDA stream and handles belong to that thread). Opens opts->db_path and
 * reloads it (PERSISTENCE). Returns NULL with err filled on failure: STATUS_ERR_IO (err names
 * the file and SQLite's reason) when the database cannot be opened, written or read. */
struct sched *sched_new(const struct sched_opts *opts, struct err *err);

/* The event sink: called for every WebSocket event, from worker threads and from sched_*
 * calls. `client_id` NULL means broadcast to every socket; `type` is the event type ("status",
 * "executing", ...); `data` is the event's data object (a new reference the sink steals; no
 * other thread holds any part of it). Set it before sched_start; it must stay callable until
 * sched_free returns (a prompt interrupted by sched_free still reports). The sink may call
 * the read-only sched_* functions (queue, history, metrics) but not sched_submit,
 * sched_queue_clear or sched_queue_delete: "status" broadcasts are delivered under a lock
 * that keeps them in order. For the same reason, never hold a lock that the sink takes while
 * calling sched_submit, sched_queue_clear, sched_queue_delete or sched_free. */
typedef void (*sched_event_fn)(void *user, const char *client_id, const char *type, json_t *data);
void sched_set_event_sink(struct sched *s, sched_event_fn fn, void *user);

/* Starts one worker thread per device (each logs one line) and waits until every GPU worker has
 * opened its device; fails (err names the GPU and why) when one cannot. */
int sched_start(struct sched *s, struct err *err);

/* Reads ahead, speculatively, the checkpoints that the last prompts used (opts.recall_dir's
 * list; within half of the host's memory), unless a prompt needs another file first. */
void sched_read_ahead_recalled(struct sched *s);

/* Stops the workers (the running prompt is interrupted), frees everything. NULL is a no-op. */
void sched_free(struct sched *s);

int sched_n_devices(const struct sched *s);
void sched_device_info(struct sched *s, int index, struct sched_device_info *out);

/* ===== Prompts ===== */

/* One accepted prompt, as POST /prompt hands it over. */
struct sched_submit {
    struct graph_prompt *prompt;     /* validated prompt: ownership passes to the sched on success */
    json_t *extra_data;              /* the body's extra_data (borrowed; the sched keeps a copy),
                                        client_id already added when there is one; may be NULL */
    const char *client_id;           /* or NULL */
    const char *prompt_id;           /* the client's prompt_id, or NULL for a fresh uuid4 */
    int target;                      /* device index, or -1 for automatic routing */
    bool has_number;                 /* the body had "number" */
    double number;                   /* its value */
    bool front;                      /* the body had "front": true */
};

/* Result of a submit, for the 200 reply {"prompt_id", "number", "node_errors"}. */
struct sched_ticket {
    char prompt_id[64];
    double number;                   /* the priority used */
    bool number_is_int;              /* reply with an int (server-assigned) or a float (client's) */
    int device;                      /* where it was queued */
};

/* Advances the server counter (ComfyUI advances it on every POST without "number", even one
 * that fails validation: call this for those too, before validating). */
int64_t sched_next_number(struct sched *s);

/* Queues the prompt (number from sched_next_number's value for this POST, -counter when
 * front). Errors: STATUS_ERR_RANGE when target is not a device (err lists the devices:
 * "device 7 does not exist; devices: 0 (cpu:0 ...), 1 (...)") or the prompt_id is longer than
 * 63 bytes, STATUS_ERR_EXISTS when the prompt_id is already queued or running,
 * STATUS_ERR_INVALID while sched_free runs. On error the prompt stays the caller's; on success
 * sub->prompt is set to NULL (the sched owns it). Broadcasts a "status" event.
 * Automatic routing (target -1): the least expected wait, (pending + running) x the device's
 * average run time (devices without history count the mean of the others, else 1 s); among
 * devices within 10% of the best wait, the first whose engine already holds every checkpoint
 * of the prompt's CheckpointLoaderSimple nodes; ties go to the lowest index. */
int sched_submit(struct sched *s, struct sched_submit *sub, int64_t counter, struct sched_ticket *out,
                 struct err *err);

/* ===== Queues ===== */

/* GET /queue: {"queue_running": [...], "queue_pending": [...]} in ComfyUI's 5-tuple shape,
 * for one device (index >= 0) or all devices merged (-1). New reference. */
json_t *sched_queue_json(struct sched *s, int device);

/* GET /queue/all: {"queues": [{"gpu_id", "queue_running", "queue_pending", "running_count",
 * "pending_count"}...], "total_running", "total_pending"}. New reference. */
json_t *sched_queue_all_json(struct sched *s);

/* pending + running, over one device or all (-1) (GET /prompt's queue_remaining). */
int sched_queue_remaining(struct sched *s, int device);

/* POST /queue {"clear": true} (one device or all) and {"delete": [ids]}: pending items only;
 * each change broadcasts "status". */
void sched_queue_clear(struct sched *s, int device);
void sched_queue_delete(struct sched *s, const char *prompt_id);

/* POST /interrupt: with a prompt_id, stops that prompt wherever it runs (nothing when it is not
 * running); without, stops the running prompt of one device (index) or of all (-1). */
void sched_interrupt(struct sched *s, const char *prompt_id, int device);

/* POST /free: after its current prompt (at once when idle), a device unloads its models
 * (unload_models) and also drops its node output cache (free_memory). device -1 = all.
 * unload_models alone drops only the cached outputs that hold a checkpoint (MODEL, CLIP, VAE)
 * so the checkpoints can go; the other cached outputs stay. */
void sched_free_memory(struct sched *s, int device, bool unload_models, bool free_memory);

/* For a WebSocket (re)connect of `client_id`: when a prompt of that client is running, copies
 * the id of the node it is executing into node[n] and returns true (ComfyUI then sends
 * {"type": "executing", "data": {"node": id}}). */
bool sched_client_running_node(struct sched *s, const char *client_id, char *node, size_t n);

/* ===== History ===== */

/* GET /history[?max_items&offset] (prompt_id NULL) or /history/{id} ({} when unknown), in
 * ComfyUI's shape and completion order. max_items < 0 and offset < 0 mean absent. New ref. */
json_t *sched_history_json(struct sched *s, const char *prompt_id, int max_items, int offset);

/* POST /history {"clear": true} / {"delete": [ids]}. */
void sched_history_clear(struct sched *s);
void sched_history_delete(struct sched *s, const char *prompt_id);

/* GET /gpus: the GPU devices with live figures from the monitor (NVML when present):
 * {"gpus": [{"device", "cuda_index", "name", "pci_bus_id", "memory_total", "memory_used",
 * "memory_free", "memory_used_pct", "temperature_c", "utilization_pct", "power_w",
 * "power_limit_w"}...], "count", "monitor", "notice", "cuda_visible_devices"}; unknown figures
 * are null. New reference. */
json_t *sched_gpus_json(struct sched *s);

/* The checkpoints device d holds, and where their bytes live (weights placement):
 * [{"path", "placement" ("auto" or the allocation string), "where" ("cuda:0 1.20 GiB, cpu
 * 0.40 GiB"), "bytes" (on the device)}], as of the worker's last prompt. A new reference. */
json_t *sched_device_models_json(struct sched *s, int d);

/* ===== Metrics ===== */

/* GET /metrics: Prometheus text exposition (per-device tasks, successes, failures, OOMs,
 * interrupts, queue depth, running, wait and execution time sums and counts, histograms as you
 * see fit, uptime). Returns a mem_alloc'd string the caller frees with mem_free. */
char *sched_metrics_text(struct sched *s);

/* The per-device log line "[GPU i] tasks=…, success=…%, queue=…, wait=…ms, exec=…ms, oom=…"
 * (CPU devices say "[CPU i]") into buf: finished prompts, the share that succeeded, the
 * average number of prompts ahead when one was queued, average wait and run times. */
void sched_metrics_line(struct sched *s, int device, char *buf, size_t n);

#endif
