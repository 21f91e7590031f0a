/* model/sd.h -- one loaded SD 1.x checkpoint: its file mapping and its three networks.
 * Owns: the mapped checkpoint (struct ckpt) and the CLIP, UNet and VAE weights on one backend.
 * Threads: loaded and used on one device worker.
 * Ownership: sd_model_load returns a model freed with sd_model_free. */
#ifndef KILN_MODEL_SD_H
#define KILN_MODEL_SD_H

#include "model/clip.h"
#include "model/unet.h"
#include "model/vae.h"

/* comfy/latent_formats.py SD15 */
#define SD1_LATENT_SCALE 0.18215f

struct sd_model {
    char *path;          /* owned copy */
    struct ckpt ckpt;    /* the mapped file (kept open: the weights were converted from it) */
    struct clip clip;
    struct unet unet;
    struct vae vae;
};

/* Opens path, detects the configuration from shapes and loads all three networks onto be.
 * Returns NULL with err filled on failure. */
struct sd_model *sd_model_load(const char *path, struct backend *be, struct err *err);
void sd_model_free(struct sd_model *m); /* NULL is a no-op */

#endif
