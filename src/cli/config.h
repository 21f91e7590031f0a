/* cli/config.h -- `kiln serve`'s configuration: command-line flags, then the environment
 * (KILN_*), then a .env file, then defaults; ComfyUI's flag names where they exist, and the
 * launcher variables users already set (CUDA_VISIBLE_DEVICES, COMFY_MULTI_GPU_SCHED,
 * COMFY_NUM_GPUS).
 * Owns: every string of a struct config (config_deinit frees them).
 * Must not: start anything (no sockets, threads or devices); it only reads and validates.
 * Threads: main thread, before any other thread starts: config_load may setenv() the .env
 * entries the environment does not already set (dotenv's rule), which is unsafe once threads run.
 *
 * DESIGN. Every setting is a row of CONFIG_KEY_MAP: a name (shown by --print-config), the
 * environment variable, and the flags that set it (a flag table in config.c). Resolution is
 * per setting: the last flag given, else the environment, else the .env file, else the
 * default; the text chosen and where it came from are kept (config->values), then parsed and
 * validated into the typed fields. Every invalid value is reported with its origin
 * ("KILN_PORT=99999 (environment): ...") and makes config_load fail (kiln serve exits 2). */
#ifndef KILN_CLI_CONFIG_H
#define KILN_CLI_CONFIG_H

#include "base/err.h"
#include "base/log.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define CONFIG_MAX_LISTEN 8          /* addresses in --listen A,B,... */
#define CONFIG_MAX_DEVICES 16        /* = SCHED_MAX_DEVICES (cli/cmd_serve.c checks they agree) */
#define CONFIG_MAX_NOTES 16          /* notes for the panel */
#define CONFIG_DEFAULT_PORT 8188
#define CONFIG_DEFAULT_UPLOAD_MB 100.0 /* ComfyUI's --max-upload-size default, in MiB */
#define CONFIG_DEFAULT_MAX_NODES 1000 /* = API_DEFAULT_MAX_NODES ... */
#define CONFIG_DEFAULT_MAX_PIXELS (4096ll * 4096ll * 16ll)
#define CONFIG_DEFAULT_MAX_BATCH 64
#define CONFIG_DEFAULT_MAX_WS 256     /* ... = API_DEFAULT_MAX_WS (cli/cmd_serve.c checks they agree) */
#define CONFIG_DEFAULT_LOG_MAX_MB 64  /* --log-max-size */
#define CONFIG_DEFAULT_LOG_KEEP 5     /* --log-keep */
#define CONFIG_DEFAULT_METRICS_EVERY 10 /* prompts between two metrics log lines per device */
#define CONFIG_DEFAULT_HISTORY_MAX 10000 /* = SCHED_HISTORY_MAX, ComfyUI's MAXIMUM_HISTORY_SIZE */

/* ===== Settings ===== */

/* XX(ID, name, environment variable) -- one row per setting. */
#define CONFIG_KEY_MAP(XX)                                              \
    XX(LISTEN, "listen", "KILN_LISTEN")                                 \
    XX(PORT, "port", "KILN_PORT")                                       \
    XX(GPU_PORTS, "gpu_ports", "KILN_GPU_PORTS")                        \
    XX(CPU_WORKERS, "cpu_workers", "KILN_CPU_WORKERS")                  \
    XX(THREADS, "threads", "KILN_THREADS")                              \
    XX(METRICS_EVERY, "metrics_every", "KILN_METRICS_EVERY")            \
    XX(DB, "db", "KILN_DB")                                             \
    XX(HISTORY_MAX, "history_max", "KILN_HISTORY_MAX")                  \
    XX(BASE_DIR, "base_dir", "KILN_BASE_DIR")                           \
    XX(MODELS_DIR, "models_dir", "KILN_MODELS_DIR")                     \
    XX(INPUT_DIR, "input_dir", "KILN_INPUT_DIR")                        \
    XX(OUTPUT_DIR, "output_dir", "KILN_OUTPUT_DIR")                     \
    XX(TEMP_DIR, "temp_dir", "KILN_TEMP_DIR")                           \
    XX(TOKENIZER, "tokenizer", "KILN_TOKENIZER")                        \
    XX(CORS, "cors_origin", "KILN_CORS_ORIGIN")                         \
    XX(MAX_UPLOAD, "max_upload_size_mb", "KILN_MAX_UPLOAD_SIZE")        \
    XX(MAX_NODES, "max_nodes", "KILN_MAX_NODES")                        \
    XX(MAX_PIXELS, "max_pixels", "KILN_MAX_PIXELS")                     \
    XX(MAX_BATCH, "max_batch", "KILN_MAX_BATCH")                        \
    XX(MAX_WS, "max_ws", "KILN_MAX_WS")                                 \
    XX(API_TOKEN, "api_token", "KILN_API_TOKEN")                        \
    XX(DISABLE_METADATA, "disable_metadata", "KILN_DISABLE_METADATA")   \
    XX(FORCE_FP32, "force_fp32", "KILN_FORCE_FP32")                     \
    XX(LOG, "log", "KILN_LOG")                                          \
    XX(LOG_FILE, "log_file", "KILN_LOG_FILE")                           \
    XX(LOG_MAX_SIZE, "log_max_size_mb", "KILN_LOG_MAX_SIZE")            \
    XX(LOG_KEEP, "log_keep", "KILN_LOG_KEEP")                           \
    XX(FRONT_END_ROOT, "front_end_root", "KILN_FRONT_END_ROOT")         \
    XX(WEIGHTS_PLACEMENT, "weights_placement", "KILN_WEIGHTS_PLACEMENT") \
    XX(CPU, "cpu", "KILN_CPU")                                          \
    XX(GPUS, "gpus", "KILN_GPUS")                                       \
    XX(CUDA_VISIBLE, "cuda_visible_devices", "CUDA_VISIBLE_DEVICES")    \
    XX(MULTI_SCHED, "comfy_multi_gpu_sched", "COMFY_MULTI_GPU_SCHED")   \
    XX(NUM_GPUS, "comfy_num_gpus", "COMFY_NUM_GPUS")

enum config_key {
#define XX(id, name, env) CONFIG_KEY_##id,
    CONFIG_KEY_MAP(XX)
#undef XX
    CONFIG_KEY_COUNT
};

/* Where a setting's value came from, lowest priority first. */
enum config_source {
    CONFIG_SOURCE_DEFAULT,
    CONFIG_SOURCE_ENV_FILE,
    CONFIG_SOURCE_ENV,
    CONFIG_SOURCE_FLAG,
    CONFIG_SOURCE_COUNT
};

/* The text chosen for one setting, before parsing. */
struct config_value {
    char *text;                      /* NULL = not set anywhere (the typed default applies) */
    enum config_source source;
    char origin[320];                /* "--port", "KILN_PORT", "/path/.env:3" or "default" */
};

/* How devices are chosen. */
enum config_mode {
    CONFIG_MODE_CPU,                 /* CPU devices only (--cpu, CUDA_VISIBLE_DEVICES=, or no GPU backend) */
    CONFIG_MODE_GPU,                 /* the GPUs of gpus[] (--gpus, --single, --cuda-device, KILN_GPUS) */
    CONFIG_MODE_COUNT
};

struct config {
    /* network */
    char *listen[CONFIG_MAX_LISTEN]; /* addresses to bind: IPv4, IPv6 (no brackets) or "localhost" */
    int n_listen;                    /* >= 1 */
    int port;                        /* main port, 1..65535; 0 = any free port (tests) */
    int gpu_ports;                   /* device i also listens on gpu_ports + i; 0 = off */
    char *cors_origin;               /* --enable-cors-header value ("*" when bare); NULL = off */
    uint64_t max_upload_size;        /* bytes (--max-upload-size is in MiB, like ComfyUI's) */
    int max_nodes;                   /* nodes per prompt */
    long long max_pixels;            /* width*height*batch per prompt */
    int max_batch;                   /* batch_size of one node */
    int max_ws;                      /* open WebSockets */
    char *api_token;                 /* --api-token; NULL = no access control */
    bool exposed;                    /* a listen address is not loopback and there is no token */

    /* devices */
    enum config_mode mode;
    char mode_reason[400];           /* why this mode ("--cpu", "CUDA_VISIBLE_DEVICES is empty", ...) */
    int gpus[CONFIG_MAX_DEVICES];    /* GPU mode: the requested GPU ordinals, in order */
    int n_gpus;
    bool gpus_explicit;              /* gpus came from a flag or KILN_GPUS (not CUDA_VISIBLE_DEVICES) */
    int cpu_workers;                 /* CPU devices: in CPU mode after the COMFY_* rules; in GPU mode
                                        --cpu-workers or 0, created after the GPUs */
    int threads;                     /* threads per CPU device; 0 = cores / devices */
    int comfy_num_gpus;              /* COMFY_NUM_GPUS, 0 = unset */
    int multi_gpu_sched;             /* COMFY_MULTI_GPU_SCHED: -1 unset, 0 off (one worker), 1 on */

    /* folders (never NULL except tokenizer_dir) */
    char *base_dir;                  /* --base-directory; "" = the current directory */
    char *models_dir;
    char *input_dir;
    char *output_dir;
    char *temp_dir;                  /* the folder itself (--temp-directory D gives D/temp, as ComfyUI) */
    char *db_path;                   /* --db: SQLite file of the queue and history (default
                                        base_dir/kiln.db); "" or ":memory:" = nothing persisted */
    int history_max;                 /* --history-max: history entries kept (memory and file) */
    char *tokenizer_dir;             /* --tokenizer, or NULL: next to the checkpoint / models/tokenizers */

    /* behaviour */
    bool disable_metadata;
    bool force_fp32;             /* GPUs keep and compute weights in fp32 (engine_set_gpu_fp32) */
    enum log_level log_level;
    int metrics_every;               /* 0 = never */
    char *log_file;                  /* --log-file: also log to this file; NULL = stderr only */
    uint64_t log_max_size;           /* --log-max-size (MiB): rotate the log file past this many bytes */
    int log_keep;                    /* --log-keep: rotated files kept (PATH.1 .. PATH.N) */
    char *front_end_root;            /* --front-end-root: serve this folder at / instead of the console */
    char *weights_placement;         /* --weights-placement: default allocation string; NULL = automatic */

    /* provenance */
    struct config_value values[CONFIG_KEY_COUNT];
    char *env_file;                  /* the .env path used (or looked for) */
    bool env_file_found;             /* it existed and was read */
    char *notes[CONFIG_MAX_NOTES];   /* remarks for the panel (ignored flags, COMFY_* mappings) */
    int n_notes;

    /* actions */
    bool help;                       /* --help: print config_usage and exit 0 */
    bool print_config;               /* --print-config: print the resolved settings and exit 0 */
};

/* ===== API ===== */

/* Fills c with the defaults (nothing allocated yet; config_deinit is still required). */
void config_init(struct config *c);

/* Frees every string of c. */
void config_deinit(struct config *c);

/* Reads argv (argv[0] is the subcommand name, "serve"), the environment and the .env file
 * (--env-file PATH, else KILN_ENV_FILE, else ./.env; an explicit file must exist, ./.env may
 * be missing), resolves and validates every setting into c. .env entries that the environment
 * does not set are exported to it (dotenv's rule), so CUDA_VISIBLE_DEVICES from .env reaches
 * the CUDA runtime. Returns 0, or STATUS_ERR_INVALID with err naming the value, where it came
 * from and what is allowed (STATUS_ERR_IO when the .env file cannot be read). With --help,
 * returns 0 at once with c->help set. */
int config_load(struct config *c, int argc, char **argv, struct err *err);

/* GPU mode, once the CUDA runtime has counted n_visible devices: fills gpus[0..n_gpus) with the
 * ordinals to use (the --gpus / --single list, checked against n_visible; else every GPU), then
 * applies COMFY_NUM_GPUS (the first N) and COMFY_MULTI_GPU_SCHED=0 (the first only), with a
 * note for each. No GPU and none named: switches to CPU mode (mode_reason says why). A named GPU
 * that does not exist: STATUS_ERR_INVALID / STATUS_ERR_NOT_FOUND with err saying what is visible.
 * CPU mode: does nothing. */
int config_pick_gpus(struct config *c, int n_visible, struct err *err);

/* Number of devices kiln serve creates in CPU mode (c->cpu_workers) or requests in GPU mode
 * (the GPUs, 0 before config_pick_gpus when every GPU is asked for, plus c->cpu_workers). */
int config_n_devices(const struct config *c);

/* "default", ".env", "environment", "flag". */
const char *config_source_name(enum config_source s);

/* "cpu" or "gpu". */
const char *config_mode_name(enum config_mode m);

/* Writes one "name=value<TAB>(origin)" line per setting, then the derived values (mode,
 * devices, env_file), for --print-config and for scripts. */
void config_print(const struct config *c, FILE *f);

/* Writes the usage text (every flag and its environment variable). */
void config_usage(FILE *f);

/* Test hook (tests/fuzz/fuzz_env.c): reads the .env file at path as config_load does (an
 * explicit file: it must exist) and discards it; nothing is applied or exported. Returns 0 with
 * the entries read in *n_entries (may be NULL), or config_load's .env errors. */
int config__env_file_check(const char *path, int *n_entries, struct err *err);

#endif
