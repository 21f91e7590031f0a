/* graph/engine.c -- loaded checkpoints of one device and the handles nodes pass around.
 * Threads: the owning worker. */
#include "graph/engine.h"
#include "base/log.h"
#include "base/mem.h"
#include "base/status.h"
#include "model/safetensors.h"
#include "model/wstore.h"
#include "model/tokenizer.h"
#include "tensor/warmup.h"

#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ===== Checkpoints ===== */

static void checkpoint_free(struct gobj *o) {
    struct engine_checkpoint *ck = (struct engine_checkpoint *)o;
    log_info("unloading %s", ck->sd->path);
    sd_model_free(ck->sd);
    if (ck->tok) {
        tokenizer_deinit(ck->tok);
        mem_free(ck->tok);
    }
    mem_free(ck);
}

static void find_tokenizer(struct engine *e, struct engine_checkpoint *ck) {
    char vocab[PATH_MAX], merges[PATH_MAX];
    int rc = tokenizer_find(vocab, merges, sizeof vocab, e->tokenizer_dir, ck->sd->path, e->models_dir, &ck->tok_err);
    if (rc) return;
    struct tokenizer *tok = mem_calloc(1, sizeof *tok);
    rc = tokenizer_load(tok, vocab, merges, &ck->tok_err);
    if (rc) {
        mem_free(tok);
        return;
    }
    ck->tok = tok;
}

/* ===== Budget (LRU unloading) ===== */

static bool has_prefix(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

int engine_checkpoint_estimate(const struct engine *e, const char *path, uint64_t *bytes, struct err *err) {
    const struct sd_storage *st = e ? &e->storage : NULL;
    static const char *const NETWORKS[] = {"model.diffusion_model.", "first_stage_model.", "cond_stage_model."};
    struct ckpt ck;
    int rc = ckpt_open(&ck, path, err);
    if (rc) return rc;
    const struct nn_storage *net[] = {st ? &st->unet : NULL, st ? &st->vae : NULL, st ? &st->clip : NULL};
    uint64_t sum = 0;
    for (int i = 0; i < ck.n_tensors; i++) {
        const struct ckpt_tensor *t = &ck.tensors[i];
        int network = -1;
        for (int k = 0; k < 3; k++)
            if (has_prefix(t->name, NETWORKS[k])) network = k;
        if (network < 0) continue;
        bool real = t->dtype == DTYPE_F32 || t->dtype == DTYPE_F16 || t->dtype == DTYPE_BF16;
        size_t esize = net[network] ? dtype_size(net[network]->dtype) : sizeof(float);
        sum += real ? (uint64_t)ckpt_tensor_numel(t) * esize : (uint64_t)t->nbytes;
    }
    ckpt_close(&ck);
    *bytes = sum;
    return 0;
}

uint64_t engine_weight_bytes(const struct engine *e) {
    uint64_t sum = 0;
    for (int i = 0; i < e->n_loaded; i++) sum += e->loaded[i]->bytes;
    return sum;
}

void engine_set_budget(struct engine *e, uint64_t budget) { e->budget = budget; }

/* Drops the engine's reference to loaded[i] (the checkpoint goes when no value holds it). */
static void drop_loaded(struct engine *e, int i) {
    gobj_unref(&e->loaded[i]->obj);
    e->loaded[i] = e->loaded[--e->n_loaded];
}

/* Unloads least recently used unreferenced checkpoints until `need` more bytes fit in the
 * budget. Returns whether they fit. */
static bool make_room(struct engine *e, uint64_t need) {
    while (engine_weight_bytes(e) + need > e->budget) {
        int lru = -1;
        for (int i = 0; i < e->n_loaded; i++)
            if (e->loaded[i]->obj.refs == 1 && (lru < 0 || e->loaded[i]->last_use < e->loaded[lru]->last_use)) lru = i;
        if (lru < 0) return false;
        log_info("unloading %s to make room (budget %.1f MiB, %.1f MiB resident, %.1f MiB to load)",
                 e->loaded[lru]->sd->path, (double)e->budget / 1048576.0, (double)engine_weight_bytes(e) / 1048576.0,
                 (double)need / 1048576.0);
        drop_loaded(e, lru);
    }
    return true;
}

/* ===== Placement (vram/placement.h, tensor.h STREAMING) ===== */

struct place_ctx {
    struct engine *e;
    const struct placement *p; /* explicit allocation, or NULL/empty: automatic */
    uint64_t room;             /* bytes the checkpoint may take on the device; UINT64_MAX = no budget */
    uint64_t estimate;         /* the whole checkpoint's bytes (engine_checkpoint_estimate) */
    const char *path;
};

/* nn_place_fn for the UNet: nothing moves when it fits and no allocation was given; else the
 * plan of vram/placement.c decides, for this GPU's room, the other GPUs' peer_free and host memory. */
static int place_unet(void *user, struct nn_block *blocks, int n, size_t total, struct err *err) {
    struct place_ctx *pc = user;
    struct engine *e = pc->e;
    bool explicit = pc->p && pc->p->n > 0;
    uint64_t others = pc->estimate > total ? pc->estimate - total : 0; /* CLIP and VAE stay resident */
    uint64_t gpu_room = pc->room == UINT64_MAX ? PLACEMENT_UNLIMITED : pc->room > others ? pc->room - others : 0;
    if (!explicit && (pc->room == UINT64_MAX || total <= gpu_room)) return 0;
    int n_cuda = e->n_cuda > e->cuda_index ? e->n_cuda : e->cuda_index + 1;
    struct placement_budget b;
    placement_budget_init(&b, e->cuda_index, n_cuda);
    for (int j = 0; j < n_cuda && j < PLACEMENT_MAX_DEVICES; j++) b.cuda[j] = j == e->cuda_index ? gpu_room : e->peer_free[j];
    struct placement_block *pb = mem_alloc((size_t)(n ? n : 1) * sizeof *pb);
    for (int i = 0; i < n; i++) pb[i] = (struct placement_block){.name = blocks[i].name, .bytes = blocks[i].bytes};
    struct placement_plan plan;
    int rc = placement_plan_make(pb, n, &b, explicit ? pc->p : NULL, &plan, err);
    if (rc) {
        err_prefix(err, "placing the UNet of %s (%.1f MiB) from cuda:%d", pc->path, (double)total / 1048576.0,
                   e->cuda_index);
        mem_free(pb);
        return rc;
    }
    for (int i = 0; i < n; i++) {
        int h = plan.home[i];
        blocks[i].home = h == e->cuda_index ? NN_HOME_DEVICE : h == PLACEMENT_CPU ? NN_HOME_HOST : NN_HOME_PEER;
        blocks[i].peer_device = blocks[i].home == NN_HOME_PEER ? h : -1;
    }
    char line[1024];
    placement_plan_describe(&plan, pb, line, sizeof line);
    log_info("cuda:%d: UNet of %s placed (%s): %s", e->cuda_index, pc->path, explicit ? "as asked" : "does not fit",
             line);
    placement_plan_free(&plan);
    mem_free(pb);
    return 0;
}

/* "cuda:0 1.20 GiB, cuda:1 0.40 GiB, cpu 0.10 GiB" for a checkpoint loaded on e. */
static void describe_where(const struct engine *e, const struct sd_model *sd, uint64_t bytes, char *buf, size_t n) {
    const struct nn_weights *w = &sd->unet.weights;
    char dev[16];
    if (e->cuda_index < 0) snprintf(dev, sizeof dev, "cpu");
    else snprintf(dev, sizeof dev, "cuda:%d", e->cuda_index);
    size_t used = (size_t)snprintf(buf, n, "%s %.2f GiB", dev, (double)bytes / 1073741824.0);
    if (!w->n_blocks) return;
    uint64_t peer[PLACEMENT_MAX_DEVICES] = {0};
    for (int i = 0; i < w->n_blocks; i++)
        if (w->blocks[i].home == NN_HOME_PEER && w->blocks[i].peer_device >= 0 &&
            w->blocks[i].peer_device < PLACEMENT_MAX_DEVICES)
            peer[w->blocks[i].peer_device] += w->blocks[i].bytes;
    for (int j = 0; j < PLACEMENT_MAX_DEVICES && used < n; j++)
        if (peer[j]) used += (size_t)snprintf(buf + used, n - used, ", cuda:%d %.2f GiB", j, (double)peer[j] / 1073741824.0);
    if (w->bytes_host && used < n) snprintf(buf + used, n - used, ", cpu %.2f GiB", (double)w->bytes_host / 1073741824.0);
}

/* ===== Loading ===== */

struct engine_checkpoint *engine_checkpoint(struct engine *e, const char *path, struct err *err) {
    return engine_checkpoint_placed(e, path, NULL, true, err);
}

struct engine_checkpoint *engine_checkpoint_placed(struct engine *e, const char *path, const char *placement,
                                                   bool prefetch, struct err *err) {
    struct placement asked;
    const struct placement *p = &e->placement;
    if (placement) {
        if (placement_parse(placement, &asked, err)) return NULL; /* the message names the setting */
        p = &asked;
    }
    char key[ENGINE_PLACEMENT_MAX];
    if (e->cuda_index < 0) { /* host memory already: nothing to place */
        snprintf(key, sizeof key, "auto");
    } else {
        size_t l = placement_format(p, key, sizeof key);
        if (!prefetch && l + 12 < sizeof key) snprintf(key + l, sizeof key - l, " noprefetch");
    }
    e->tick++;
    for (int i = 0; i < e->n_loaded; i++) {
        if (strcmp(e->loaded[i]->sd->path, path) == 0 && strcmp(e->loaded[i]->placement, key) == 0) {
            e->loaded[i]->last_use = e->tick;
            return (struct engine_checkpoint *)gobj_ref(&e->loaded[i]->obj);
        }
    }
    if (e->n_loaded == ENGINE_MAX_CHECKPOINTS) { /* drop the least recently used */
        int lru = 0;
        for (int i = 1; i < e->n_loaded; i++)
            if (e->loaded[i]->last_use < e->loaded[lru]->last_use) lru = i;
        drop_loaded(e, lru);
    }
    uint64_t bytes = 0;
    struct err est_err = {0};
    bool estimated = engine_checkpoint_estimate(e, path, &bytes, &est_err) == 0;
    bool fits = !estimated || !e->budget || make_room(e, bytes);
    struct place_ctx pc = {.e = e, .p = p, .room = UINT64_MAX, .estimate = bytes, .path = path};
    if (e->budget && estimated) {
        uint64_t in_use = engine_weight_bytes(e);
        pc.room = e->budget > in_use ? e->budget - in_use : 0;
    }
    struct sd_storage st = e->storage;
    if (e->cuda_index >= 0) {
        st.unet.place = place_unet;
        st.unet.place_user = &pc;
        st.unet.no_prefetch = !prefetch;
    }
    /* (an unreadable file: sd_model_load below says why) */
    struct sd_model *sd = sd_model_load(path, e->backend, &st, err);
    if (!sd) return NULL;
    const struct nn_weights *uw = &sd->unet.weights;
    if (uw->n_blocks) /* the UNet streams: what stays on the device, and the staging slots */
        bytes = bytes - uw->size + uw->bytes_device + (uint64_t)uw->stream.n_slots * uw->slot_bytes;
    else if (!fits)
        log_warn("loading %s (%.1f MiB) beyond the budget of %.1f MiB: the %.1f MiB resident are all in use", path,
                 (double)bytes / 1048576.0, (double)e->budget / 1048576.0, (double)engine_weight_bytes(e) / 1048576.0);
    struct engine_checkpoint *ck = mem_calloc(1, sizeof *ck);
    ck->obj = (struct gobj){.refs = 1, .type = "CHECKPOINT", .free = checkpoint_free};
    ck->sd = sd;
    ck->last_use = e->tick;
    ck->bytes = bytes;
    snprintf(ck->placement, sizeof ck->placement, "%s", key);
    describe_where(e, sd, uw->n_blocks ? bytes - (uint64_t)uw->stream.n_slots * uw->slot_bytes : bytes, ck->where,
                   sizeof ck->where);
    find_tokenizer(e, ck);
    e->loaded[e->n_loaded++] = ck; /* the engine's reference */
    return (struct engine_checkpoint *)gobj_ref(&ck->obj);
}

int engine_loaded_info(const struct engine *e, struct engine_loaded_info *out, int max) {
    int n = 0;
    for (int i = 0; i < e->n_loaded && n < max; i++, n++) {
        const struct engine_checkpoint *ck = e->loaded[i];
        snprintf(out[n].path, sizeof out[n].path, "%s", ck->sd->path);
        snprintf(out[n].placement, sizeof out[n].placement, "%s", ck->placement);
        snprintf(out[n].where, sizeof out[n].where, "%s", ck->where);
        out[n].bytes = ck->bytes;
    }
    return n;
}

void engine_unload_unused(struct engine *e) {
    for (int i = 0; i < e->n_loaded;) {
        if (e->loaded[i]->obj.refs == 1) {
            drop_loaded(e, i);
        } else {
            i++;
        }
    }
}

static void ctx_buf_free(struct engine *e) {
    if (e->ctx_buf) backend_buf_free(e->backend, e->ctx_buf);
    e->ctx_buf = NULL;
    e->ctx_buf_size = 0;
}

void *engine_ctx_buffer(struct engine *e, size_t bytes) {
    if (backend_host_buffers(e->backend)) return NULL;
    if (e->ctx_buf && e->ctx_buf_size >= bytes) return e->ctx_buf;
    ctx_buf_free(e);
    void *buf = NULL;
    if (backend_buf_alloc(e->backend, bytes, &buf) != 0) return NULL;
    e->ctx_buf = buf;
    e->ctx_buf_size = bytes;
    return buf;
}

void *engine_sampler_upload(struct engine *e, const void *ctx, size_t ctx_bytes, const float *x, size_t x_bytes,
                            void **x_dev, struct err *err) {
    const size_t x_at = (ctx_bytes + 255) & ~(size_t)255;
    char *buf = engine_ctx_buffer(e, x_at + x_bytes);
    *x_dev = NULL;
    if (!buf) return NULL;
    struct tensor cv = {.dtype = DTYPE_F32, .ndim = 1, .shape = {(int64_t)(ctx_bytes / 4), 1, 1, 1}, .data = buf};
    struct tensor xv = {.dtype = DTYPE_F32, .ndim = 1, .shape = {(int64_t)(x_bytes / 4), 1, 1, 1}, .data = buf + x_at};
    int rc = backend_tensor_set(e->backend, &cv, ctx, 0, ctx_bytes);
    if (rc) {
        err_set(err, rc, "copying the sampler's context (%zu bytes) to %s %d failed", ctx_bytes, e->backend->iface->name,
                e->backend->device);
        return NULL;
    }
    rc = backend_tensor_set(e->backend, &xv, x, 0, x_bytes);
    if (rc) {
        err_set(err, rc, "copying the sampler's latent (%zu bytes) to %s %d failed", x_bytes, e->backend->iface->name,
                e->backend->device);
        return NULL;
    }
    *x_dev = buf + x_at;
    return buf;
}

static void staging_free(struct engine *e) {
    if (e->staging) {
        backend_host_unpin(e->backend->iface, e->staging);
        mem_free(e->staging);
    }
    e->staging = NULL;
    e->staging_size = 0;
}

void *engine_host_staging(struct engine *e, size_t bytes) {
    if (backend_host_buffers(e->backend)) return NULL;
    if (e->staging && e->staging_size >= bytes) return e->staging;
    staging_free(e);
    void *buf = mem_try_alloc(bytes);
    if (!buf) return NULL;
    if (backend_host_pin(e->backend->iface, buf, bytes) != 0) {
        mem_free(buf);
        return NULL;
    }
    e->staging = buf;
    e->staging_size = bytes;
    return buf;
}

void engine_release_scratch(struct engine *e) {
    struct backend *be = e->scratch.backend;
    ctx_buf_free(e);
    staging_free(e);
    tscratch_deinit(&e->scratch);
    tscratch_init(&e->scratch, be); /* e->tctx borrows &e->scratch: same storage, empty buffer */
}

static atomic_bool gpu_fp32; /* engine_set_gpu_fp32: a process setting, read when engines start */
static struct placement default_placement; /* engine_set_default_placement: idem (set before any engine) */

void engine_set_gpu_fp32(bool fp32) { gpu_fp32 = fp32; }

int engine_set_default_placement(const char *text, struct err *err) {
    struct placement p = {0};
    if (text && placement_parse(text, &p, err)) return err->code;
    default_placement = p;
    return 0;
}

void engine_init(struct engine *e, struct backend *be, const char *models_dir, const char *tokenizer_dir) {
    memset(e, 0, sizeof *e);
    e->storage = sd_storage_for(be, gpu_fp32, wstore_global());
    e->backend = be;
    e->models_dir = models_dir;
    e->tokenizer_dir = tokenizer_dir;
    e->cuda_index = -1;
    e->placement = default_placement;
    tscratch_init(&e->scratch, be);
    tctx_init(&e->tctx, be, &e->scratch);
}

void engine_deinit(struct engine *e) {
    for (int i = 0; i < e->n_loaded; i++) gobj_unref(&e->loaded[i]->obj);
    e->n_loaded = 0;
    tctx_deinit(&e->tctx);
    ctx_buf_free(e);
    staging_free(e);
    tscratch_deinit(&e->scratch);
}

struct engine *engine_new_cpu(int threads, const char *models_dir, const char *tokenizer_dir) {
    struct backend *be = backend_cpu_new(threads);
    struct engine *e = be ? mem_try_calloc(1, sizeof *e) : NULL;
    if (!e) {
        backend_free(be);
        return NULL;
    }
    engine_init(e, be, models_dir, tokenizer_dir);
    return e;
}

struct engine *engine_new_cuda(int device, const char *models_dir, const char *tokenizer_dir, struct err *err) {
#ifdef KILN_HAVE_CUDA
    struct backend *be = backend_cuda_new(device, err);
    if (!be) return NULL;
    struct engine *e = mem_try_calloc(1, sizeof *e);
    if (!e) {
        backend_free(be);
        err_set(err, STATUS_ERR_NOMEM, "out of host memory creating the engine of CUDA device %d", device);
        return NULL;
    }
    engine_init(e, be, models_dir, tokenizer_dir);
    e->cuda_index = device;
    return e;
#else
    (void)models_dir, (void)tokenizer_dir;
    err_set(err, STATUS_ERR_UNSUPPORTED, "CUDA device %d: this build has no CUDA backend (configure with -DKILN_CUDA=ON)",
            device);
    return NULL;
#endif
}

int engine_warmup(struct engine *e, struct err *err) {
    /* what the networks compute in, in the order a prompt runs them: the text encoder in F32
       whatever its storage (clip_forward casts up, as ComfyUI's manual_cast), token ops only;
       the UNet and the VAE in their storages' dtypes (F16 and BF16 on a GPU), image ops too. A
       GPU's full F32 pass (F32 convolutions, GroupNorm... that no prompt runs there) took
       0.45-1.0 s of a cold start on an H100 (PERF.md) */
    const struct warmup_pass used[3] = {
        {DTYPE_F32, false}, {e->storage.unet.dtype, true}, {e->storage.vae.dtype, true}};
    struct warmup_pass passes[3];
    int n = 0;
    for (int i = 0; i < 3; i++) {
        int j = 0;
        while (j < n && passes[j].dtype != used[i].dtype) j++;
        if (j == n) passes[n++] = used[i];
        else passes[j].images = passes[j].images || used[i].images;
    }
    return backend_warmup(e->backend, passes, n, err);
}

int engine_warmup_model(struct engine *e, const char *path, const struct engine_warm_shape *ws, struct err *err) {
    if (e->cuda_index < 0 || backend_host_buffers(e->backend))
        return err_set(err, STATUS_ERR_UNSUPPORTED, "a model-shaped warm-up is for GPU engines");
    if (ws->batch < 1 || ws->h < 1 || ws->w < 1 || ws->entries < 1 || ws->entries > 2 || ws->n_tokens < 1 ||
        ws->batch * ws->h * ws->w > ((int64_t)1 << 24))
        return err_set(err, STATUS_ERR_INVALID, "warm-up shape %lld x %lld x %lld (%d entries, %lld tokens)",
                       (long long)ws->batch, (long long)ws->h, (long long)ws->w, ws->entries, (long long)ws->n_tokens);
    struct sd_model *m = sd_model_stand_in(path, e->backend, &e->storage, err);
    if (!m) return err->code ? err->code : STATUS_ERR_INTERNAL;
    const int64_t B = ws->entries * ws->batch, lat = B * m->unet.config.in_channels * ws->h * ws->w;
    const int64_t dim = m->unet.config.context_dim, width = m->clip.config.width;
    const size_t ctx_bytes = (size_t)(B * ws->n_tokens * dim) * sizeof(float);
    float *x = mem_try_calloc((size_t)lat, sizeof(float)), *out = mem_try_calloc((size_t)lat, sizeof(float));
    float *t = mem_try_calloc((size_t)B, sizeof(float));
    float *text = mem_try_calloc((size_t)(77 * width), sizeof(float));
    float *img = mem_try_calloc((size_t)(64 * ws->h * ws->w * 3), sizeof(float));
    float *zeros = mem_try_calloc(1, ctx_bytes);
    int32_t ids[77] = {0};
    int rc = x && out && t && text && img && zeros ? 0 : err_set(err, STATUS_ERR_NOMEM, "out of host memory");
    /* the text encoder as CLIPTextEncode runs it: one 77-token sequence, the last layer */
    if (!rc && clip_encode(&e->tctx, &m->clip, ids, 1, -1, text))
        rc = err_set(err, e->tctx.rc, "text encoder: %s", e->tctx.err.msg);
    /* the UNet as the sampler runs it: every entry in one batch, the context kept on the device
       and, with the sampler's loop on the device (graph/nodes/sampling.c), the sample after it
       (zeros: a NaN there would make cuDNN's per-plan check of the fused convolutions wrong) */
    const char *ds = getenv("KILN_DEVICE_SAMPLER");
    const bool dev_loop = !(ds && strcmp(ds, "0") == 0);
    void *x_dev = NULL, *ctx = NULL;
    if (!rc) {
        ctx = engine_sampler_upload(e, zeros, ctx_bytes, x, (size_t)(lat / ws->entries) * sizeof(float), &x_dev, err);
        if (!ctx) rc = err->code ? err->code : err_set(err, STATUS_ERR_OOM_DEVICE, "no device memory for the context");
    }
    for (int64_t i = 0; !rc && i < B; i++) t[i] = 999.0f;
    const float p[4] = {1.4142135f, 1.0f, -0.5f, 8.0f};
    if (!rc && (dev_loop ? unet_step_dev(&e->tctx, &m->unet, ws->entries, ws->batch, ws->h, ws->w, x_dev, 999.0f,
                                         ctx, ws->n_tokens, p)
                         : unet_eval_dev(&e->tctx, &m->unet, B, ws->h, ws->w, x, t, ctx, ws->n_tokens, out)))
        rc = err_set(err, e->tctx.rc, "UNet: %s", e->tctx.err.msg);
    /* the VAE as VAEDecode runs it: one image at a time */
    if (!rc && vae_decode_image(&e->tctx, &m->vae, 1, ws->h, ws->w, x, img))
        rc = err_set(err, e->tctx.rc, "VAE: %s", e->tctx.err.msg);
    tctx_reset(&e->tctx); /* nothing recorded here is run again */
    mem_free(x);
    mem_free(out);
    mem_free(t);
    mem_free(text);
    mem_free(img);
    mem_free(zeros);
    sd_model_free(m);
    return rc;
}

struct sd_model *engine_prefill(struct engine *e, const char *path, struct err *err) {
    if (e->cuda_index < 0 || !e->storage.unet.store) {
        err_set(err, STATUS_ERR_UNSUPPORTED, "prefilling host copies is for GPU engines with the shared store");
        return NULL;
    }
    int rc = backend_bind_thread(e->backend);
    if (rc) {
        err_set(err, rc, "cannot bind the prefill thread to cuda:%d", e->cuda_index);
        return NULL;
    }
    return sd_model_prefill(path, e->backend, &e->storage, err);
}

void engine_prefill_free(struct sd_model *m) { sd_model_free(m); }

void engine_free(struct engine *e) {
    if (!e) return;
    struct backend *be = e->backend;
    engine_deinit(e);
    backend_free(be);
    mem_free(e);
}

bool engine_has_checkpoint(const struct engine *e, const char *path) {
    for (int i = 0; i < e->n_loaded; i++)
        if (strcmp(e->loaded[i]->sd->path, path) == 0) return true;
    return false;
}

/* ===== Handles ===== */

static void model_value_free(struct gobj *o) {
    struct model_value *v = (struct model_value *)o;
    gobj_unref(&v->ck->obj);
    mem_free(v);
}

struct model_value *model_value_new(struct engine_checkpoint *ck, const char *type) {
    struct model_value *v = mem_calloc(1, sizeof *v);
    v->obj = (struct gobj){.refs = 1, .type = type, .free = model_value_free};
    v->ck = (struct engine_checkpoint *)gobj_ref(&ck->obj);
    return v;
}

static void clip_value_free(struct gobj *o) {
    struct clip_value *v = (struct clip_value *)o;
    gobj_unref(&v->ck->obj);
    mem_free(v);
}

struct clip_value *clip_value_new(struct engine_checkpoint *ck, int layer) {
    struct clip_value *v = mem_calloc(1, sizeof *v);
    v->obj = (struct gobj){.refs = 1, .type = "CLIP", .free = clip_value_free};
    v->ck = (struct engine_checkpoint *)gobj_ref(&ck->obj);
    v->layer = layer;
    return v;
}
