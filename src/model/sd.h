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

/* How the three networks keep their weights (nn_storage each). */
struct sd_storage {
    struct nn_storage clip, unet, vae;
};

/* The storage kiln uses on a backend: the CPU computes everything in F32; a GPU, as ComfyUI on
 * sm80+: UNet F16, text encoder F16 weights computed in F32, VAE BF16 (ARCHITECTURE.md
 * "Numerics"); fp32 = true (--force-fp32) keeps F32 on GPUs too. Every network shares host
 * images through `store` (NULL: none). */
struct sd_storage sd_storage_for(const struct backend *be, bool fp32, struct wstore *store);

struct sd_model {
    char *path;          /* owned copy */
    struct ckpt ckpt;    /* the mapped file (header and mapping; tensor data is read only when no
                            host image of it exists yet) */
    struct clip clip;
    struct unet unet;
    struct vae vae;
};

/* Opens path, detects the configuration from shapes and loads all three networks onto be,
 * stored as st says (NULL: F32 everywhere, no shared store). Returns NULL with err filled on
 * failure. */
struct sd_model *sd_model_load(const char *path, struct backend *be, const struct sd_storage *st, struct err *err);
/* The host copies sd_model_load(path, be, st) would use (st must have a store), filled now from
 * the file (or found), with nothing put on be: the result holds a reference to each until
 * sd_model_free, so that a load of the same file for be a little later only uploads. Its weights
 * cannot be computed with. Any thread (it only reads be's kind; pinning uses the calling
 * thread's device: backend_bind_thread first). */
struct sd_model *sd_model_prefill(const char *path, struct backend *be, const struct sd_storage *st, struct err *err);
/* The networks of path (configurations detected from its header) stored as st says, but every
 * weight a zero (nn_storage.stand_in): no tensor is read from the file and the weights take the
 * size of the largest one. Forward passes at a prompt's shapes make the backend's per-shape plans
 * and first kernel launches before the real weights are in (engine_warmup_model); their results
 * mean nothing. The device worker's thread. */
struct sd_model *sd_model_stand_in(const char *path, struct backend *be, const struct sd_storage *st,
                                   struct err *err);
void sd_model_free(struct sd_model *m); /* NULL is a no-op */

#endif
