/* model/sd.c -- loading a whole SD 1.x checkpoint. Threads: one device worker. */
#include "model/sd.h"
#include "base/log.h"
#include "base/clock.h"
#include "base/mem.h"
#include "base/status.h"

#include <stdlib.h>
#include <string.h>

struct sd_storage sd_storage_for(const struct backend *be, bool fp32, struct wstore *store) {
    struct sd_storage st;
    bool low = !backend_host_buffers(be) && !fp32; /* a device that computes in 16 bits */
    st.clip = (struct nn_storage){.dtype = low ? DTYPE_F16 : DTYPE_F32, .store = store};
    /* a GPU's UNet and VAE compute channels-last (tensor-core convolutions' own layout);
       KILN_CHANNELS_LAST=0 keeps them NCHW, for comparisons */
    const char *cl = getenv("KILN_CHANNELS_LAST");
    bool nhwc = low && !(cl && strcmp(cl, "0") == 0);
    st.unet = (struct nn_storage){.dtype = low ? DTYPE_F16 : DTYPE_F32, .store = store, .channels_last = nhwc};
    st.vae = (struct nn_storage){.dtype = low ? DTYPE_BF16 : DTYPE_F32, .store = store, .channels_last = nhwc};
    return st;
}

/* Opens path into a new model and loads the three networks with storages clip/unet/vae (NULL: F32
 * without a store). NULL with err filled on failure. */
static struct sd_model *load_three(const char *path, struct backend *be, const struct nn_storage *clip,
                                   const struct nn_storage *unet, const struct nn_storage *vae, struct err *err) {
    struct sd_model *m = mem_try_calloc(1, sizeof *m);
    if (!m) {
        err_set(err, STATUS_ERR_NOMEM, "out of host memory loading %s", path);
        return NULL;
    }
    m->path = mem_strdup(path);
    int rc = ckpt_open(&m->ckpt, path, err);
    if (!rc) rc = clip_load(&m->clip, &m->ckpt, be, clip, err);
    if (!rc) rc = unet_load(&m->unet, &m->ckpt, be, unet, err);
    if (!rc) rc = vae_load(&m->vae, &m->ckpt, be, vae, err);
    if (rc) {
        sd_model_free(m);
        return NULL;
    }
    ckpt_release_pages(&m->ckpt); /* the weights live in their own memory now */
    return m;
}

struct sd_model *sd_model_load(const char *path, struct backend *be, const struct sd_storage *st, struct err *err) {
    double t0 = clock_now();
    struct sd_model *m = load_three(path, be, st ? &st->clip : NULL, st ? &st->unet : NULL, st ? &st->vae : NULL, err);
    if (!m) return NULL;
    const struct unet_config *u = &m->unet.config;
    bool read = m->clip.weights.read_file || m->unet.weights.read_file || m->vae.weights.read_file;
    const char *how = !st || !st->unet.store ? "read from the file" : read ? "host copy: filled from the file"
                                                                              : "host copy: shared, nothing read";
    log_info("loaded %s on %s %d in %.2f s (%s): CLIP width %d x %d layers (%s), UNet %d channels x %d levels (%s), "
             "VAE %d channels (%s)",
             path, be->iface->name, be->device, clock_now() - t0, how, m->clip.config.width, m->clip.config.n_layers,
             dtype_name(st ? st->clip.dtype : DTYPE_F32), u->model_channels,
             u->n_levels, dtype_name(m->unet.dtype), m->vae.config.ch, dtype_name(m->vae.dtype));
    return m;
}

struct sd_model *sd_model_prefill(const char *path, struct backend *be, const struct sd_storage *st, struct err *err) {
    if (!st || !st->clip.store || !st->unet.store || !st->vae.store) {
        err_set(err, STATUS_ERR_INVALID, "prefilling %s needs a weight store", path);
        return NULL;
    }
    double t0 = clock_now();
    struct nn_storage clip = st->clip, unet = st->unet, vae = st->vae;
    clip.fill_only = unet.fill_only = vae.fill_only = true;
    unet.place = NULL; /* where blocks live is the load's business */
    struct sd_model *m = load_three(path, be, &clip, &unet, &vae, err);
    if (!m) return NULL;
    bool read = m->clip.weights.read_file || m->unet.weights.read_file || m->vae.weights.read_file;
    log_info("host copy of %s for %s %d %s in %.2f s", path, be->iface->name, be->device,
             read ? "filled from the file" : "already there", clock_now() - t0);
    return m;
}

struct sd_model *sd_model_stand_in(const char *path, struct backend *be, const struct sd_storage *st,
                                   struct err *err) {
    struct nn_storage clip = st->clip, unet = st->unet, vae = st->vae;
    struct nn_storage *all[3] = {&clip, &unet, &vae};
    for (int i = 0; i < 3; i++) {
        all[i]->stand_in = true;
        all[i]->store = NULL;
        all[i]->fill_only = false;
        all[i]->place = NULL;
    }
    return load_three(path, be, &clip, &unet, &vae, err);
}

void sd_model_free(struct sd_model *m) {
    if (!m) return;
    clip_deinit(&m->clip);
    unet_deinit(&m->unet);
    vae_deinit(&m->vae);
    if (m->ckpt.map) ckpt_close(&m->ckpt);
    mem_free(m->path);
    mem_free(m);
}
