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

/* ===== Loading ===== */

struct engine_checkpoint *engine_checkpoint(struct engine *e, const char *path, struct err *err) {
    e->tick++;
    for (int i = 0; i < e->n_loaded; i++) {
        if (strcmp(e->loaded[i]->sd->path, path) == 0) {
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
    if (engine_checkpoint_estimate(e, path, &bytes, &est_err) == 0 && e->budget && !make_room(e, bytes))
        log_warn("loading %s (%.1f MiB) beyond the budget of %.1f MiB: the %.1f MiB resident are all in use", path,
                 (double)bytes / 1048576.0, (double)e->budget / 1048576.0, (double)engine_weight_bytes(e) / 1048576.0);
    /* (an unreadable file: sd_model_load below says why) */
    struct sd_model *sd = sd_model_load(path, e->backend, &e->storage, err);
    if (!sd) return NULL;
    struct engine_checkpoint *ck = mem_calloc(1, sizeof *ck);
    ck->obj = (struct gobj){.refs = 1, .type = "CHECKPOINT", .free = checkpoint_free};
    ck->sd = sd;
    ck->last_use = e->tick;
    ck->bytes = bytes;
    find_tokenizer(e, ck);
    e->loaded[e->n_loaded++] = ck; /* the engine's reference */
    return (struct engine_checkpoint *)gobj_ref(&ck->obj);
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

void engine_release_scratch(struct engine *e) {
    struct backend *be = e->scratch.backend;
    tscratch_deinit(&e->scratch);
    tscratch_init(&e->scratch, be); /* e->tctx borrows &e->scratch: same storage, empty buffer */
}

static atomic_bool gpu_fp32; /* engine_set_gpu_fp32: a process setting, read when engines start */

void engine_set_gpu_fp32(bool fp32) { gpu_fp32 = fp32; }

void engine_init(struct engine *e, struct backend *be, const char *models_dir, const char *tokenizer_dir) {
    memset(e, 0, sizeof *e);
    e->storage = sd_storage_for(be, gpu_fp32, wstore_global());
    e->backend = be;
    e->models_dir = models_dir;
    e->tokenizer_dir = tokenizer_dir;
    e->cuda_index = -1;
    tscratch_init(&e->scratch, be);
    tctx_init(&e->tctx, be, &e->scratch);
}

void engine_deinit(struct engine *e) {
    for (int i = 0; i < e->n_loaded; i++) gobj_unref(&e->loaded[i]->obj);
    e->n_loaded = 0;
    tctx_deinit(&e->tctx);
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

int engine_warmup(struct engine *e, struct err *err) { return backend_warmup(e->backend, err); }

void engine_free(struct engine *e) {
    if (!e) return;
    struct backend *be = e->backend;
    engine_deinit(e);
    backend_free(be);
    mem_free(e);
}

int engine_loaded_paths(const struct engine *e, char **out, int max) {
    int n = 0;
    for (int i = 0; i < e->n_loaded && n < max; i++) out[n++] = mem_strdup(e->loaded[i]->sd->path);
    return n;
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
