/* graph/engine.h -- what the model nodes running on one device share.
 * Owns: the device's activation memory and graph context, the checkpoints loaded on it (kept
 * across prompts, like ComfyUI keeps models loaded), and where to look for tokenizer files.
 * Must not: be shared between devices: one engine per worker thread.
 * Threads: the worker that owns it.
 * Ownership: engine_checkpoint returns a new reference; MODEL, CLIP and VAE values hold one. */
#ifndef KILN_GRAPH_ENGINE_H
#define KILN_GRAPH_ENGINE_H

#include "graph/value.h"
#include "model/sd.h"
#include "tensor/backend.h"
#include "vram/placement.h"

#include <limits.h>

#define ENGINE_MAX_CHECKPOINTS 4 /* kept loaded; the least recently used goes first */
#define ENGINE_PLACEMENT_MAX 2048 /* engine_checkpoint.placement: "auto" or a canonical allocation string
                                   (65 entries of at most ~25 characters fit whole: it is a cache key) */
#define ENGINE_WHERE_MAX 256     /* engine_checkpoint.where */

struct tokenizer;

/* One loaded checkpoint; MODEL, CLIP and VAE values of it keep it alive. */
struct engine_checkpoint {
    struct gobj obj;              /* type "CHECKPOINT" */
    struct sd_model *sd;          /* the networks, on the engine's backend */
    struct tokenizer *tok;        /* CLIP tokenizer found for it, or NULL ... */
    struct err tok_err;           /* ... and then why (names the places looked in) */
    uint64_t last_use;            /* engine tick of the last use (LRU) */
    uint64_t bytes;               /* bytes on the device as loaded: the weights kept there plus
                                     the staging of streamed UNet blocks (engine_checkpoint_estimate
                                     when nothing streams) */
    char placement[ENGINE_PLACEMENT_MAX]; /* how it was asked for: "auto" or the canonical allocation
                                     string, with " noprefetch" appended (the cache key with path) */
    char where[ENGINE_WHERE_MAX]; /* where its bytes live ("cuda:0 1.2 GiB, cuda:1 0.4 GiB, cpu 0.1 GiB") */
};

/* MODEL and VAE values: a reference to the checkpoint. */
struct model_value {
    struct gobj obj;              /* type "MODEL" or "VAE" */
    struct engine_checkpoint *ck; /* one reference */
};

/* CLIP values: the checkpoint plus CLIPSetLastLayer's choice. */
struct clip_value {
    struct gobj obj;              /* type "CLIP" */
    struct engine_checkpoint *ck; /* one reference */
    int layer;                    /* -1 = last layer, -2 = penultimate, ... */
};

struct engine {
    struct backend *backend;      /* borrowed: the device's backend */
    struct tscratch scratch;      /* activation memory, reused by every graph */
    struct tctx tctx;             /* graph context, reset for each forward */
    const char *tokenizer_dir;    /* --tokenizer, or NULL (borrowed) */
    const char *models_dir;       /* models/ (borrowed), for models/tokenizers/clip-l */
    struct engine_checkpoint *loaded[ENGINE_MAX_CHECKPOINTS]; /* one reference each */
    int n_loaded;
    uint64_t tick;
    uint64_t budget;              /* bytes the weights may take on the device (the VRAM budget,
                                     vram/budget.h, set by the worker), 0 = no budget */
    int cuda_index;               /* CUDA ordinal of the device (engine_new_cuda), -1 = CPU */
    struct sd_storage storage;    /* how checkpoints are kept on this device (sd_storage_for, with
                                     the process's weight store: one host copy for all devices) */
    struct placement placement;   /* --weights-placement: the default allocation (n 0 = automatic) */
    int n_cuda;                   /* GPUs kiln runs on (ordinals 0 .. n_cuda-1), for placement */
    uint64_t peer_free[PLACEMENT_MAX_DEVICES]; /* bytes another GPU may hold of this engine's
                                     streamed blocks (set by the worker; 0 = none) */
    void *ctx_buf;                /* engine_ctx_buffer's device buffer (owned), or NULL */
    size_t ctx_buf_size;          /* its bytes */
    void *staging;                /* engine_host_staging's page-locked host buffer (owned), or NULL */
    size_t staging_size;          /* its bytes */
};

/* GPUs keep fp32 weights and compute in fp32 (--force-fp32) for engines created after this call;
 * default false (fp16 UNet and text encoder weights, bf16 VAE). A process setting: call it before
 * the devices start. */
void engine_set_gpu_fp32(bool fp32);

/* The default weights placement of engines created after this call (--weights-placement; NULL =
 * automatic). A process setting: call it before the devices start. Returns 0, or
 * STATUS_ERR_INVALID with err saying what is wrong with the string. */
int engine_set_default_placement(const char *text, struct err *err);

void engine_init(struct engine *e, struct backend *be, const char *models_dir, const char *tokenizer_dir);
void engine_deinit(struct engine *e); /* unloads every checkpoint */

/* An engine on a CPU backend of its own (threads <= 0: every core), for callers above the
 * tensor layer (sched/). Strings are borrowed. Free with engine_free, which also frees the
 * backend. Returns NULL on host OOM. */
struct engine *engine_new_cpu(int threads, const char *models_dir, const char *tokenizer_dir);
/* An engine on a CUDA backend of its own for CUDA device `device` (an ordinal after
 * CUDA_VISIBLE_DEVICES). Call it on the thread that will use the engine (the backend's stream
 * and library handles belong to that worker). Returns NULL with err filled when the device
 * cannot be opened, or with STATUS_ERR_UNSUPPORTED in a build without the CUDA backend. */
struct engine *engine_new_cuda(int device, const char *models_dir, const char *tokenizer_dir, struct err *err);
void engine_free(struct engine *e); /* NULL is a no-op */

/* Warms up the engine's backend before its first prompt: one tiny graph of the op kinds each of
 * its networks computes, in that network's dtype (tensor/warmup.h: the text encoder's token ops
 * in F32, the UNet's and VAE's ops in F16 and BF16 on a GPU; everything F32 on a CPU or with
 * fp32 GPUs), so kernels are loaded and libraries initialised at start-up. The engine's
 * worker thread. Returns 0, or a negative status with err filled; the engine stays usable. */
int engine_warmup(struct engine *e, struct err *err);
/* The shapes a prompt will run its networks at (engine_warmup_model). */
struct engine_warm_shape {
    int64_t batch;       /* latent images per sampler step and side (EmptyLatentImage's batch_size) */
    int64_t h, w;        /* the latent's size (pixels / 8) */
    int entries;         /* conditioning entries that go through the UNet together: 2 with CFG, 1 without */
    int64_t n_tokens;    /* context tokens per entry (77 per 75-token chunk) */
};
/* Runs checkpoint path's networks once at shape ws with stand-in weights (sd_model_stand_in:
 * zeros, nothing read from the file, no memory beyond the largest weight and the activations):
 * the text encoder on one sequence, a UNet evaluation of entries x batch images as the sampler
 * makes it (context on the device), and one VAE decode, so that the backend's plans for those
 * shapes and its kernels' first launches are done while the checkpoint is still being read; the
 * real evaluations then run at their steady speed from the first one. GPU engines only
 * (STATUS_ERR_UNSUPPORTED else). The engine's worker thread. */
int engine_warmup_model(struct engine *e, const char *path, const struct engine_warm_shape *ws, struct err *err);
/* The host copy of checkpoint `path` as this GPU's loads keep it (e->storage), filled now
 * (sd_model_prefill) on the calling thread, which it binds to e's device: a later load of path
 * only uploads. Reads only e's fixed fields, so another thread may run it while the device's
 * own thread works (the worker's warm-up). NULL with err set, or a model to sd_model_free once
 * the load has taken its own references. CUDA engines only (STATUS_ERR_UNSUPPORTED else). [any] */
struct sd_model *engine_prefill(struct engine *e, const char *path, struct err *err);
/* Drops engine_prefill's references (sd_model_free). NULL is a no-op. [any] */
void engine_prefill_free(struct sd_model *m);

/* Whether a checkpoint with this path is loaded now (for routing). */
bool engine_has_checkpoint(const struct engine *e, const char *path);

/* The checkpoint at path, loaded now or kept from before. Returns a new reference, or NULL
 * with err filled. */
struct engine_checkpoint *engine_checkpoint(struct engine *e, const char *path, struct err *err);

/* The same, with the UNet's blocks placed as `placement` says (vram/placement.h: NULL = the
 * engine's default, "auto"/"" = automatic) and streamed with or without prefetching. On a GPU,
 * automatic placement keeps everything on the device unless the checkpoint does not fit the
 * budget left (engine_set_budget minus the checkpoints in use); then the UNet's blocks that do
 * not fit live on other GPUs (peer_free) or in host memory and stream in before use. A CPU
 * engine ignores placements (its weights are host memory already). The log says where each
 * block lives. Errors: a bad string (STATUS_ERR_INVALID), a plan that does not fit (RANGE,
 * OOM_DEVICE), or the load's. */
struct engine_checkpoint *engine_checkpoint_placed(struct engine *e, const char *path, const char *placement,
                                                   bool prefetch, struct err *err);

/* What one loaded checkpoint is, for /system_stats and the VRAM monitor. */
struct engine_loaded_info {
    char path[PATH_MAX];
    char placement[ENGINE_PLACEMENT_MAX]; /* engine_checkpoint.placement */
    char where[ENGINE_WHERE_MAX]; /* engine_checkpoint.where */
    uint64_t bytes;               /* on this device */
};
/* Fills out[0..max) with the loaded checkpoints; returns how many. */
int engine_loaded_info(const struct engine *e, struct engine_loaded_info *out, int max);

/* The bytes a checkpoint's networks take once loaded on e, with each network's weights in e's
 * storage dtype (e NULL: every weight as fp32, the CPU's storage; other tensors at their stored
 * size), read from the file's header only:
 * the UNet, VAE and CLIP tensors (model.diffusion_model., first_stage_model.,
 * cond_stage_model.), not EMA copies or schedule buffers. Returns 0, or the ckpt_open error
 * (ERR_IO, ERR_FORMAT, ERR_NOMEM) with err naming the file. */
int engine_checkpoint_estimate(const struct engine *e, const char *path, uint64_t *bytes, struct err *err);

/* Sum of the loaded checkpoints' bytes: the engine's resident weights. */
uint64_t engine_weight_bytes(const struct engine *e);

/* Sets the weights' budget in bytes (0 = none). Loading a checkpoint then first unloads the
 * least recently used checkpoints that no value references until the new one fits (resident +
 * new <= budget); referenced ones stay, and when they alone leave no room the load goes ahead
 * anyway (a warning in the log: out-of-memory recovery is the last word).
 * ENGINE_MAX_CHECKPOINTS stays a hard cap either way. */
void engine_set_budget(struct engine *e, uint64_t budget);

/* Unloads every checkpoint that no value references any more. */
void engine_unload_unused(struct engine *e);

/* Gives the activation buffer back to the backend (the next graph allocates again): after an
 * out-of-memory failure, so the next prompt starts from the device's whole free memory. */
void engine_release_scratch(struct engine *e);

/* A buffer of at least `bytes` in the device's memory, kept from one prompt to the next (the
 * sampler's text conditioning: an allocation and a free per KSampler run cost more than the
 * upload, and the free waits for the device), or NULL when the backend keeps data in host
 * memory or the device has no room. Valid until the next call or engine_release_scratch. */
void *engine_ctx_buffer(struct engine *e, size_t bytes);
/* The sampler's state on the device, in engine_ctx_buffer's buffer: the context (ctx_bytes from
 * ctx) and, after it at a 256-byte boundary, the sample (x_bytes from x), both copied there.
 * Returns the context's address and the sample's in *x_dev; NULL when the device has no room
 * (err untouched: the caller keeps its host copies) or a copy failed (err says which). */
void *engine_sampler_upload(struct engine *e, const void *ctx, size_t ctx_bytes, const float *x, size_t x_bytes,
                            void **x_dev, struct err *err);
/* Page-locked host memory of at least `bytes`, kept from one prompt to the next, for the inputs
 * and outputs a node copies to and from the device every step (the sampler's latents: a copy
 * from page-locked memory skips the driver's staging), or NULL when the backend keeps data in
 * host memory or pinning fails (the caller uses memory of its own). Valid until the next call or
 * engine_release_scratch. */
void *engine_host_staging(struct engine *e, size_t bytes);

struct model_value *model_value_new(struct engine_checkpoint *ck, const char *type); /* takes a new ref of ck */
struct clip_value *clip_value_new(struct engine_checkpoint *ck, int layer);

#endif
