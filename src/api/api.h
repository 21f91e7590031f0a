/* api/api.h -- ComfyUI's HTTP + WebSocket API over the scheduler (`kiln serve`), on CivetWeb.
 * Owns: the CivetWeb context (listeners, HTTP handler threads), the WebSocket hub (one sender
 * thread and one bounded message queue per socket), the routes of ../shared/COMFY_API.md.
 * Must not: run prompts or touch a device (sched/ does), hand-parse HTTP or frame WebSocket
 * messages (CivetWeb does).
 * Threads: api_server_new/stop/free on the owner's thread; routes run on CivetWeb's handler
 * threads; the sched's event sink (installed here) runs on sched worker and HTTP threads.
 * Ownership: api_server_new returns a server freed with api_server_free; the sched is borrowed.
 *
 * LIFECYCLE. The owner creates the sched, then the server (which installs itself as the
 * sched's event sink, so it must come before sched_start), then starts the sched. To stop:
 * api_server_stop (no more HTTP calls into the sched, every socket closed), sched_free (the
 * workers may still emit events: the sink drops them), api_server_free. */
#ifndef KILN_API_H
#define KILN_API_H

#include "base/err.h"
#include "graph/registry.h"
#include "sched/sched.h"

#include <stdbool.h>
#include <stddef.h>

#define API_DEFAULT_PORT 8188
#define API_DEFAULT_LISTEN "127.0.0.1"
#define API_DEFAULT_MAX_UPLOAD (100u * 1024u * 1024u) /* bytes: ComfyUI's --max-upload-size 100 */
#define API_DEFAULT_WS_QUEUE 4096                     /* messages queued per socket */
#define API_MAX_LISTEN 8                              /* listen addresses */
#define API_DEFAULT_MAX_NODES 1000                    /* nodes in one prompt */
#define API_DEFAULT_MAX_PIXELS (4096ull * 4096ull * 16ull) /* pixels a prompt's size inputs ask for, in all */
#define API_DEFAULT_MAX_BATCH 64                      /* batch_size / amount of one node */
#define API_DEFAULT_MAX_WS 256                        /* open WebSockets (more: 503) */
#define API_WS_MAX_MESSAGE (64u * 1024u)              /* bytes of a client's WebSocket message */
#define API_VERSION "0.1.0"                           /* kiln's own version, in /system_stats */
#define API_COMFYUI_VERSION "0.3.64"                  /* the ComfyUI version whose API kiln speaks */

struct api_server;

struct api_opts {
    const char *listen;              /* comma-separated hosts, each "host" or "host:port" ("[::1]:8188"
                                        for IPv6); NULL = "127.0.0.1" */
    int port;                        /* port of the hosts given without one; 0 = 8188, -1 = any free
                                        port (tests: read it back with api_server_port) */
    int gpu_ports_base;              /* device i also listens on base+i on every host; 0 = off */
    struct graph_paths paths;        /* folders for /view, /upload, /models, /object_info (borrowed) */
    size_t max_upload_size;          /* bytes of a multipart upload; 0 = 100 MiB */
    size_t max_body_size;            /* bytes of a JSON body; 0 = max_upload_size (ComfyUI has one
                                        limit for every request) */
    bool enable_cors;                /* --enable-cors-header: CORS headers on, Origin check off */
    const char *cors_origin;         /* its value; NULL = "*" */
    int threads;                     /* CivetWeb handler threads (a WebSocket holds one); 0 = max_ws + 64 */
    int ws_queue_max;                /* messages waiting for one socket before it is dropped; 0 = 4096 */
    int max_nodes;                   /* nodes of one prompt (400 past it); 0 = 1000 */
    unsigned long long max_pixels;   /* width*height*batch summed over a prompt's size inputs; 0 = 4096^2*16 */
    int max_batch;                   /* batch_size (or amount) of one node; 0 = 64 */
    int max_ws;                      /* open WebSockets (503 past it); 0 = 256 */
    int request_timeout_ms;          /* reading a request (headers + body) or writing a reply; 0 = 30000 */
    const char *api_token;           /* NULL/"" = no access control; else every route needs
                                        "Authorization: Bearer TOKEN" (or ?token= on /ws, /view) */
    const char *front_end_root;      /* --front-end-root: serve this folder's files at / instead of the
                                        built-in console (borrowed); NULL = the console */
    const char *base_dir;            /* --base-directory: the frontend's user data (settings, workflows)
                                        lives in base_dir/user/default as ComfyUI's; NULL/"" = the
                                        current directory */
    int argc;                        /* the command line, for /system_stats system.argv ... */
    const char *const *argv;         /* ... (borrowed; NULL = ["kiln", "serve"]) */
};

/* Starts listening: the main addresses, plus gpu_ports_base+i for each device i of the sched.
 * Installs the server as the sched's event sink. Returns NULL with err filled when an option
 * is invalid or a port cannot be bound (the message names the address). */
struct api_server *api_server_new(const struct api_opts *opts, struct sched *sched, struct err *err);

/* Stops accepting requests, waits for the handlers in flight, closes every WebSocket. After it
 * the server makes no more calls into the sched; events from the sched are dropped. Idempotent. */
void api_server_stop(struct api_server *srv);

/* Stops (if needed) and frees. Call after sched_free (the sched calls the sink until its workers
 * have stopped). NULL is a no-op. */
void api_server_free(struct api_server *srv);

/* The port actually bound by the i-th main listen address (useful with port -1), or 0. */
int api_server_port(const struct api_server *srv, int i);
int api_server_n_ports(const struct api_server *srv);

/* The port of device `dev` (gpu_ports_base + dev), or 0 when per-device ports are off. */
int api_server_device_port(const struct api_server *srv, int dev);

/* The printable listen addresses ("127.0.0.1:8188, 10.0.0.2:8188") for the start-up panel. */
const char *api_server_listen_text(const struct api_server *srv);

#endif
