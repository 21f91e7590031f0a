/* model/sd.c -- loading a whole SD 1.x checkpoint. Threads: one device worker. */
#include "model/sd.h"
#include "base/log.h"
#include "base/clock.h"
#include "base/mem.h"
#include "base/status.h"

#include <string.h>

struct sd_model *sd_model_load(const char *path, struct backend *be, struct err *err) {
    double t0 = clock_now();
    struct sd_model *m = mem_try_calloc(1, sizeof *m);
    if (!m) {
        err_set(err, STATUS_ERR_NOMEM, "out of host memory loading %s", path);
        return NULL;
    }
    m->path = mem_strdup(path);
    int rc = ckpt_open(&m->ckpt, path, err);
    if (!rc) rc = clip_load(&m->clip, &m->ckpt, be, err);
    if (!rc) rc = unet_load(&m->unet, &m->ckpt, be, err);
    if (!rc) rc = vae_load(&m->vae, &m->ckpt, be, err);
    if (rc) {
        sd_model_free(m);
        return NULL;
    }
    const struct unet_config *u = &m->unet.config;
    log_info("loaded %s in %.2f s: CLIP width %d x %d layers, UNet %d channels x %d levels, VAE %d channels", path,
             clock_now() - t0, m->clip.config.width, m->clip.config.n_layers, u->model_channels, u->n_levels,
             m->vae.config.ch);
    return m;
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
