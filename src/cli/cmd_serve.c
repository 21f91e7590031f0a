/* cli/cmd_serve.c -- `kiln serve`: ComfyUI's API over one queue and one worker per device.
 * Owns: the process's start-up and shutdown order (config -> log file -> sched -> api -> panel ->
 * workers -> ready; signal -> api stop -> sched free -> api free -> log file closed), and the
 * signal mask.
 * Must not: serve HTTP or run prompts itself (api/ and sched/ do).
 * Threads: the main thread only; it blocks SIGINT/SIGTERM before any other thread exists
 * (every thread inherits the mask) and waits for them with sigwait, so no code runs in a
 * signal handler.
 * Exit codes: 0 stopped by SIGINT/SIGTERM, 1 could not start (port in use, folder not
 * writable, ...), 2 invalid configuration (message names the flag or variable; also a --db or
 * --log-file that cannot be opened). */
#include "api/api.h"
#include "base/fs.h"
#include "base/log.h"
#include "base/mem.h"
#include "base/readahead.h"
#include "base/status.h"
#include "cli/cmd.h"
#include "cli/config.h"
#include "cli/panel.h"
#include "graph/engine.h"
#include "sched/sched.h"
#ifdef KILN_HAVE_CUDA
#include "tensor/backend.h"
#endif

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(CONFIG_MAX_DEVICES == SCHED_MAX_DEVICES, "config and sched disagree on the device limit");
_Static_assert(CONFIG_MAX_DEVICES <= PANEL_MAX_DEVICES, "the panel cannot show every device");
_Static_assert(CONFIG_MAX_LISTEN <= API_MAX_LISTEN, "more listen addresses than the api accepts");
_Static_assert(CONFIG_DEFAULT_MAX_NODES == API_DEFAULT_MAX_NODES && CONFIG_DEFAULT_MAX_BATCH == API_DEFAULT_MAX_BATCH &&
                   CONFIG_DEFAULT_MAX_WS == API_DEFAULT_MAX_WS && CONFIG_DEFAULT_MAX_PIXELS == (long long)API_DEFAULT_MAX_PIXELS,
               "config and api disagree on a default limit");

/* ===== Folders ===== */

/* The absolute form of path when it exists, for the panel; else path itself. */
static const char *shown_path(const char *path, char *buf) {
    return realpath(path, buf) ? buf : path;
}

/* ===== Start-up panel ===== */

/* api's listen text: the config's addresses as "host,host" with IPv6 in brackets. */
static void listen_text(const struct config *cfg, char *buf, size_t n) {
    size_t used = 0;
    buf[0] = 0;
    for (int i = 0; i < cfg->n_listen && used < n; i++) {
        bool v6 = strchr(cfg->listen[i], ':') != NULL;
        used += (size_t)snprintf(buf + used, n - used, "%s%s%s%s", i ? "," : "", v6 ? "[" : "", cfg->listen[i],
                                 v6 ? "]" : "");
    }
}

/* The addresses the server really listens on, as URLs ("http://127.0.0.1:8188"), from the
 * api's "127.0.0.1:8188, [::1]:8188" (an address CivetWeb cannot bind, e.g. IPv6 without
 * IPv6 support, is not in it); `annotate` marks the wildcard addresses. Returns the count. */
static int listen_urls(struct api_server *srv, char urls[][300], int max, bool annotate) {
    char text[2048];
    snprintf(text, sizeof text, "%s", api_server_listen_text(srv));
    int n = 0;
    char *save = NULL;
    for (char *a = strtok_r(text, ", ", &save); a && n < max; a = strtok_r(NULL, ", ", &save)) {
        bool any = !strncmp(a, "0.0.0.0:", 8) || !strncmp(a, "[::]:", 5);
        snprintf(urls[n++], 300, "http://%s%s", a, any && annotate ? "  (every interface)" : "");
    }
    return n;
}

static void print_panel(const struct config *cfg, struct sched *sched, struct api_server *srv) {
    struct panel p = {.version = API_VERSION};
    char detail[128], reason[512];
    int n = sched_n_devices(sched);
    p.mode = cfg->mode == CONFIG_MODE_CPU ? "CPU mode" : "GPU mode";
    snprintf(detail, sizeof detail, "%d device%s, one queue and one worker each", n, n == 1 ? "" : "s");
    p.mode_detail = detail;
    if (cfg->mode == CONFIG_MODE_CPU)
        snprintf(reason, sizeof reason, "no CUDA devices configured: %s", cfg->mode_reason);
    else
        snprintf(reason, sizeof reason, "%s", cfg->mode_reason);
    p.mode_reason = reason;

    struct sched_device_info info[SCHED_MAX_DEVICES];
    for (int i = 0; i < n && i < PANEL_MAX_DEVICES; i++) {
        sched_device_info(sched, i, &info[i]);
        p.devices[p.n_devices++] = (struct panel_device){
            .index = info[i].index,
            .name = info[i].name,
            .memory_label = info[i].kind == SCHED_DEVICE_CPU ? "RAM" : "VRAM",
            .mem_total = info[i].mem_total,
            .mem_free = info[i].mem_free,
            .port = api_server_device_port(srv, i),
        };
    }

    char urls[CONFIG_MAX_LISTEN][300];
    int n_urls = listen_urls(srv, urls, CONFIG_MAX_LISTEN, true);
    for (int i = 0; i < n_urls && i < PANEL_MAX_LINES; i++) p.urls[p.n_urls++] = urls[i];
    char routing[200];
    if (cfg->gpu_ports)
        snprintf(routing, sizeof routing, "header X-TARGET-GPU: i, port %d+i, else the shortest wait", cfg->gpu_ports);
    else
        snprintf(routing, sizeof routing, "header X-TARGET-GPU: i, else the shortest wait");
    p.routing = routing;
    if (cfg->mode == CONFIG_MODE_CPU)
        p.precision = "fp32; one host copy of each model for all devices";
    else if (cfg->force_fp32)
        p.precision = "fp32 on GPUs (--force-fp32); one host copy of each model for all devices";
    else
        p.precision = "GPUs: fp16 UNet and text encoder weights, bf16 VAE; one host copy of each model for all devices";

    char dirs[4][PATH_MAX], tok[PATH_MAX];
    p.models_dir = shown_path(cfg->models_dir, dirs[0]);
    p.input_dir = shown_path(cfg->input_dir, dirs[1]);
    p.output_dir = shown_path(cfg->output_dir, dirs[2]);
    p.temp_dir = shown_path(cfg->temp_dir, dirs[3]);
    p.tokenizer_dir = cfg->tokenizer_dir ? shown_path(cfg->tokenizer_dir, tok) : NULL;
    for (int i = 0; i < cfg->n_notes && i < PANEL_MAX_LINES; i++) p.notes[p.n_notes++] = cfg->notes[i];
    char log_note[PATH_MAX + 100];
    if (cfg->log_file && p.n_notes < PANEL_MAX_LINES) {
        snprintf(log_note, sizeof log_note, "log also in %s (rotated past %llu MiB, %d old file%s kept)", cfg->log_file,
                 (unsigned long long)(cfg->log_max_size >> 20), cfg->log_keep, cfg->log_keep == 1 ? "" : "s");
        p.notes[p.n_notes++] = log_note;
    }

    char *text = panel_render(&p, panel_style_for(STDERR_FILENO));
    fputs(text, stderr);
    fflush(stderr);
    mem_free(text);
}

/* ===== Command ===== */

/* Everything after the configuration and the log file: devices, HTTP server, panel, workers,
 * then the wait for SIGINT/SIGTERM and the shutdown. cfg stays the caller's. Returns the exit
 * code (see the header). */
static int serve(struct config *cfg, int argc, char **argv, struct readahead **ra) {
    struct err err = {0};
    if (cfg->mode == CONFIG_MODE_GPU) {
#ifdef KILN_HAVE_CUDA
        /* the runtime applies CUDA_VISIBLE_DEVICES: ordinals here are after it */
        log_debug("serve: counting CUDA devices");
        int n_cuda = backend_cuda_count();
        log_debug("serve: %d CUDA devices", n_cuda);
        if (config_pick_gpus(cfg, n_cuda, &err)) {
            fprintf(stderr, "kiln serve: %s\n", err.msg);
            return 2;
        }
#else
        fprintf(stderr,
                "kiln serve: %s asks for GPU mode, but this kiln has no GPU backend (it is built for "
                "CPU devices only; build with -DKILN_CUDA=ON); use --cpu [--cpu-workers N]\n",
                cfg->mode_reason);
        return 2;
#endif
    }

    /* folders: ComfyUI creates output/, input/ and temp/ at start; models/ is only read */
    const char *made[] = {cfg->output_dir, cfg->input_dir, cfg->temp_dir};
    for (size_t i = 0; i < sizeof made / sizeof made[0]; i++) {
        char failed[PATH_MAX];
        int e = fs_make_dirs(made[i], 0755, failed, sizeof failed);
        if (e) {
            fprintf(stderr, "kiln serve: cannot create the folder %s: %s\n", failed, strerror(-e));
            return 1;
        }
    }
    struct stat st;
    if (stat(cfg->models_dir, &st) != 0 || !S_ISDIR(st.st_mode))
        log_warn("the models folder %s does not exist: no checkpoint can be loaded (--models-dir sets it)",
                 cfg->models_dir);

    /* Signals: blocked here, before any thread starts, so every thread inherits the mask and
     * only sigwait below sees them. A broken client connection must not kill the server. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct graph_paths paths = {
        .models = cfg->models_dir, .input = cfg->input_dir, .output = cfg->output_dir, .temp = cfg->temp_dir};
    struct sched_opts so = {
        .n_gpus = cfg->mode == CONFIG_MODE_GPU ? cfg->n_gpus : 0,
        .n_cpu_workers = cfg->cpu_workers,
        .cpu_threads = cfg->threads,
        .paths = paths,
        .tokenizer_dir = cfg->tokenizer_dir,
        .disable_metadata = cfg->disable_metadata,
        .metrics_log_every = cfg->metrics_every,
        .history_max = cfg->history_max,
        .db_path = cfg->db_path,
    };
    for (int i = 0; i < so.n_gpus; i++) so.gpus[i] = cfg->gpus[i];
    /* the checkpoints the last prompts used, read ahead at the next start (sched/prefetch.c);
       KILN_READAHEAD=0 turns this off with the libraries' read-ahead */
    char recall[PATH_MAX];
    const char *ra_env = getenv("KILN_READAHEAD");
    if (!(ra_env && strcmp(ra_env, "0") == 0) && fs_cache_dir(recall, sizeof recall)) so.recall_dir = recall;
    engine_set_gpu_fp32(cfg->force_fp32); /* before the devices start */
    if (engine_set_default_placement(cfg->weights_placement, &err)) { /* config.c checked it already */
        fprintf(stderr, "kiln serve: --weights-placement: %s\n", err.msg);
        return 2;
    }
    log_debug("serve: creating the devices");
    struct sched *sched = sched_new(&so, &err);
    if (!sched) {
        bool db = err.code == STATUS_ERR_IO; /* the database (--db) cannot be opened or read */
        fprintf(stderr, "kiln serve: %s: %s%s\n", db ? "cannot use the database" : "cannot create the devices", err.msg,
                db ? " (--db PATH chooses another file; --db '' keeps nothing)" : "");
        return db ? 2 : 1;
    }

    /* /system_stats shows the command line as ComfyUI's argv: "kiln", "serve", options... */
    const char **args = mem_alloc((size_t)(argc + 1) * sizeof *args);
    args[0] = "kiln";
    for (int i = 0; i < argc; i++) {
        /* the token never shows in /system_stats: "--api-token ***", "--api-token=***" */
        args[i + 1] = argv[i];
        if (i > 0 && strcmp(argv[i - 1], "--api-token") == 0) args[i + 1] = "***";
        if (strncmp(argv[i], "--api-token=", 12) == 0) args[i + 1] = "--api-token=***";
    }
    char listen[CONFIG_MAX_LISTEN * 48];
    listen_text(cfg, listen, sizeof listen);
    struct api_opts ao = {
        .listen = listen,
        .port = cfg->port ? cfg->port : -1,
        .gpu_ports_base = cfg->gpu_ports,
        .paths = paths,
        .max_upload_size = (size_t)cfg->max_upload_size,
        .enable_cors = cfg->cors_origin != NULL,
        .cors_origin = cfg->cors_origin,
        .max_nodes = cfg->max_nodes,
        .max_pixels = (unsigned long long)cfg->max_pixels,
        .max_batch = cfg->max_batch,
        .max_ws = cfg->max_ws,
        .api_token = cfg->api_token,
        .front_end_root = cfg->front_end_root,
        .base_dir = cfg->base_dir, /* the frontend's user data: base_dir/user/default */
        .argc = argc + 1,
        .argv = args,
    };
    struct api_server *srv = api_server_new(&ao, sched, &err);
    if (!srv) {
        fprintf(stderr, "kiln serve: cannot start the HTTP server: %s\n", err.msg);
        sched_free(sched);
        mem_free(args);
        return 1;
    }

    log_debug("serve: HTTP server listening; the panel next");
    print_panel(cfg, sched, srv);
    log_debug("serve: panel printed; the workers next");
    if (cfg->exposed)
        log_warn("listening on %s without --api-token: anyone who can reach it can queue prompts and read outputs "
                 "(set --api-token or KILN_API_TOKEN)",
                 api_server_listen_text(srv));
    int rc = 0;
#ifdef KILN_HAVE_CUDA
    /* cuBLAS's start-up (~0.5 s with a cold page cache) on a thread, beside the first prompt's
       acceptance and read and the GPUs' context creation: only now, because a dlopen holds the
       dynamic linker's lock while a library starts up, and the CUDA count, sched_new's NVML and
       the HTTP server's own libraries (above) would each have waited behind it */
    if (cfg->mode == CONFIG_MODE_GPU) backend_cuda_preload();
#endif
    if (sched_start(sched, &err)) {
        fprintf(stderr, "kiln serve: cannot start the workers: %s\n", err.msg);
        rc = 1;
    } else {
        char urls[CONFIG_MAX_LISTEN][300];
        int n_urls = listen_urls(srv, urls, CONFIG_MAX_LISTEN, false);
        for (int i = 0; i < n_urls; i++)
            log_info("ready: %s (%d device%s; Ctrl-C stops)", urls[i], sched_n_devices(sched),
                     sched_n_devices(sched) == 1 ? "" : "s");
        /* the checkpoints the last prompts used, read ahead once the libraries' pages are in:
           started together, the two reads made a cold first image 0.2-0.6 s slower on an H100
           lease (the GPU's context waited for the disk; docs/PERF.md) */
        readahead_end(*ra);
        *ra = NULL;
        sched_read_ahead_recalled(sched);
        int sig = 0;
        while (sigwait(&stop, &sig) != 0) {
        }
        /* A second Ctrl-C during the shutdown ends the process at once. */
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        pthread_sigmask(SIG_UNBLOCK, &stop, NULL);
        log_info("%s: shutting down (stop accepting, interrupt running prompts); Ctrl-C again quits at once",
                 sig == SIGINT ? "SIGINT" : "SIGTERM");
    }

    api_server_stop(srv);
    sched_free(sched);
    api_server_free(srv);
    mem_free(args);
    if (!rc) log_info("stopped");
    return rc;
}

int cmd_serve(int argc, char **argv) {
    struct config cfg;
    config_init(&cfg);
    struct err err = {0};
    if (config_load(&cfg, argc, argv, &err)) {
        fprintf(stderr, "kiln serve: %s\n", err.msg);
        config_deinit(&cfg);
        return 2;
    }
    if (cfg.help || cfg.print_config) {
        if (cfg.help) config_usage(stdout);
        else config_print(&cfg, stdout);
        config_deinit(&cfg);
        return 0;
    }
    log_set_level(cfg.log_level);
    /* the log file before anything starts, so that every log line is in it (the panel and the
     * start-up errors go to stderr only) */
    if (cfg.log_file && log_open_file(cfg.log_file, cfg.log_max_size, cfg.log_keep, &err)) {
        fprintf(stderr, "kiln serve: %s (--log-file / KILN_LOG_FILE)\n", err.msg);
        config_deinit(&cfg);
        return 2;
    }
    /* the pages of the GPU libraries that a first prompt touched last time (base/readahead.h),
       read while the devices open; the list is written after this process's first GPU prompt */
    struct readahead *ra = cfg.mode == CONFIG_MODE_GPU ? readahead_start(NULL) : NULL;
    int rc = serve(&cfg, argc, argv, &ra);
    readahead_end(ra);
    log_close_file();
    config_deinit(&cfg);
    return rc;
}
