/* model/nn.h -- shared building blocks of the networks, and the weight loader.
 * Owns: struct nn_weight (a borrowed view of one weight in a model's backend buffer),
 * struct nn_weights (that buffer), and struct nn_loader, which maps checkpoint keys to
 * weights once at load time: names exist only while loading, never in forward passes.
 * Must not: know which network it serves (clip.c, unet.c, vae.c do).
 * Threads: loading and forward passes run on one device worker. */
#ifndef KILN_MODEL_NN_H
#define KILN_MODEL_NN_H

#include "model/safetensors.h"
#include "model/wstore.h"
#include "tensor/backend.h"
#include "tensor/tensor.h"

/* ===== Weights ===== */

struct nn_weight {
    void *data;                     /* in the owning nn_weights buffer; NULL = absent (optional) */
    int stream_id;                  /* streamed in before use: 1 + its block's index in the owning
                                       nn_weights.stream (data then points into a staging slot); 0 = resident */
    enum dtype dtype;               /* storage dtype on the backend (struct nn_storage) */
    bool channels_last;             /* a conv weight stored [O, kh, kw, C] (shape says so), for
                                       channels-last activations (nn_storage.channels_last) */
    int ndim;
    int64_t shape[TENSOR_MAX_DIMS];
};

struct nn_linear { struct nn_weight w, b; };   /* w [N, K], b [N] */
struct nn_conv { struct nn_weight w, b; };     /* w [O, C, kh, kw] or [O, kh, kw, C], b [O] */
struct nn_norm { struct nn_weight w, b; };     /* [C], [C] */

/* ===== Placement: blocks of a network that live elsewhere (tensor.h STREAMING) ===== */

#define NN_BLOCK_NAME_MAX 48

enum nn_home {
    NN_HOME_DEVICE,  /* resident in the network's backend buffer (the default) */
    NN_HOME_HOST,    /* in the shared host image (pinned), streamed in before use */
    NN_HOME_PEER,    /* in a buffer on another device of the same kind, streamed in before use */
};

/* A block: the weights whose checkpoint keys share a name (nn_block_name), contiguous in the
 * host image (the loader groups entries by block, in order of first binding). */
struct nn_block {
    char name[NN_BLOCK_NAME_MAX];   /* "input_blocks.4", "middle_block", "time_embed" */
    size_t offset, bytes;           /* range in the host image */
    enum nn_home home;              /* chosen by the place function */
    int peer_device;                /* NN_HOME_PEER: the device ordinal */
};

/* Chooses every block's home (blocks[] in model order, homes preset to NN_HOME_DEVICE; total =
 * the network's bytes). Returns 0 or a negative status with err set (the load fails with it). */
typedef int (*nn_place_fn)(void *user, struct nn_block *blocks, int n, size_t total, struct err *err);

/* The block a checkpoint key (without the network's prefix) belongs to, into buf: its first
 * dotted component, plus the second when the first ends in "blocks" and the second is a number
 * ("input_blocks.4.1.norm.weight" -> "input_blocks.4", "out.2.bias" -> "out"). */
void nn_block_name(const char *key, char *buf, size_t n);

/* How a network's weights are kept. */
struct nn_storage {
    enum dtype dtype;        /* F32, F16 or BF16: every weight is converted to it at load time */
    struct wstore *store;    /* shared host images (model/wstore.h), or NULL: each load converts
                                the checkpoint straight into its own backend buffer */
    nn_place_fn place;       /* with a store: decides where each block lives (NULL: all resident);
                                only the networks that support streaming use it (the UNet) */
    void *place_user;
    bool no_prefetch;        /* streamed blocks are copied only when needed (measurements) */
    bool fill_only;          /* with a store: the host image only, filled (or shared) and kept in
                                the weights (a reference), nothing on the backend; the weights
                                cannot be computed with (sd_model_prefill) */
    bool channels_last;      /* conv weights are stored [O, kh, kw, C] and nn_conv takes and gives
                                channels-last images [B, H, W, C] (the UNet on a GPU) */
    bool stand_in;           /* no weights: every weight points at one zeroed backend buffer the
                                size of the largest; nothing is read from the file (a model-shaped
                                warm-up while the real weights are read: sd_model_stand_in) */
};

/* Every weight of a network: one backend buffer, or, on a backend whose buffers are host memory
 * (backend_host_buffers), a view of the shared host image with no buffer of its own. */
struct nn_weights {
    struct backend *backend;     /* where the weights are computed (borrowed) */
    void *buf;                   /* owned backend buffer, or NULL when the weights are the image */
    size_t size;                 /* bytes */
    int n_tensors;
    struct wstore *store;        /* image's store (borrowed), or NULL */
    struct wstore_image *image;  /* one reference to the host image uploaded from, held while the
                                    weights live so that another device loads it without reading
                                    the file; NULL without a store */
    bool read_file;              /* this load read the checkpoint's tensors (no shared image was
                                    live, or no store) */
    bool published;              /* buf is listed as a device copy of image (wstore_publish) */
    /* placement (only when a place function moved a block off the device; else all zero) */
    struct nn_block *blocks;     /* every block with its home, model order (owned) */
    int n_blocks;
    struct tstream_block *sblocks; /* the streamed blocks, model order (owned); stream points here */
    struct tstream stream;       /* hand to the forward's tctx (tctx.stream) */
    size_t slot_bytes;           /* size of one staging slot (stream.n_slots of them at the end of buf) */
    size_t bytes_device, bytes_host, bytes_peer; /* where the weights live (staging not counted) */
};

void nn_weights_deinit(struct nn_weights *w);
/* A number unique to each network load in the process (from 1), for the loads' load_id fields:
 * a graph recorded for one load is never run for another at the same address (unet_eval,
 * vae_decode). [any] */
uint64_t nn_load_id(void);

/* ===== Graph helpers (record ops; see tensor.h's sticky-error rule) ===== */

/* A graph leaf for a weight; NULL when the weight is absent (optional biases). */
struct tensor *nn_w(struct tctx *c, const struct nn_weight *w);
/* The same, cast to dtype `as` when it is stored otherwise (comfy.ops.manual_cast: weights kept in
 * fp16, computed in the input's dtype). nn_linear, nn_conv and the norms cast to x's dtype. */
struct tensor *nn_w_as(struct tctx *c, const struct nn_weight *w, enum dtype as);
/* A leaf viewing rows [r0, r0 + n) of a weight's first dim (e.g. half of a fused projection). */
struct tensor *nn_w_rows(struct tctx *c, const struct nn_weight *w, int64_t r0, int64_t n);

struct tensor *nn_linear(struct tctx *c, const struct nn_linear *l, struct tensor *x);
/* x [B, C, H, W], or [B, H, W, C] when the weight is channels_last (a 1x1 conv is then a linear). */
struct tensor *nn_conv(struct tctx *c, const struct nn_conv *l, struct tensor *x, int stride, int pad);
/* The same without its bias (a caller that adds the bias elsewhere, e.g. with a later op). */
struct tensor *nn_conv_unbiased(struct tctx *c, const struct nn_conv *l, struct tensor *x, int stride, int pad);
struct tensor *nn_group_norm(struct tctx *c, const struct nn_norm *n, struct tensor *x, int groups, float eps,
                             bool silu);
/* The same over channels-last x [B, ..., C]. */
struct tensor *nn_group_norm_nhwc(struct tctx *c, const struct nn_norm *n, struct tensor *x, int groups, float eps,
                                  bool silu);
/* The same over x + a, a [B, C] added to each position of its image (op_group_norm_nhwc_add). */
struct tensor *nn_group_norm_nhwc_add(struct tctx *c, const struct nn_norm *n, struct tensor *x, struct tensor *a,
                                      int groups, float eps, bool silu);
struct tensor *nn_layer_norm(struct tctx *c, const struct nn_norm *n, struct tensor *x, float eps);

/* NCHW [B, C, H, W] -> tokens [B, H*W, C], and back. */
struct tensor *nn_nchw_to_tokens(struct tctx *c, struct tensor *x);
struct tensor *nn_tokens_to_nchw(struct tctx *c, struct tensor *x, int64_t h, int64_t w);

/* ===== Loader ===== */

struct nn_loader_entry;

/* Binds checkpoint tensors to nn_weight fields. Usage: init, nn_bind* for every weight
 * (errors are sticky: the first missing key or wrong shape is kept in ld->err), then
 * nn_loader_finish, which converts every weight to the storage dtype and puts it on the backend:
 * with a store, through the shared host image of this file + network + dtype (filled from the
 * file only when no device holds it yet; a host-memory backend uses the image in place, a device
 * gets one upload of the whole image), without one straight from the file. */
struct nn_loader {
    const struct ckpt *ck;            /* borrowed */
    struct backend *backend;          /* borrowed */
    const char *prefix;               /* prepended to every key ("model.diffusion_model.") */
    struct nn_storage storage;        /* dtype and store */
    bool filled;                      /* finish filled the shared image itself */
    struct nn_loader_entry *entries;  /* owned until finish/deinit */
    int n, cap;
    int rc;                           /* sticky */
    struct err *err;                  /* borrowed; receives the message */
};

/* st NULL means F32 and no store. */
void nn_loader_init(struct nn_loader *ld, const struct ckpt *ck, struct backend *be, const char *prefix,
                    const struct nn_storage *st, struct err *err);
void nn_loader_deinit(struct nn_loader *ld);

/* Binds key prefix+name. shape[] (ndim entries) is the expected shape; the stored shape must
 * equal it up to trailing dims of size 1 (a 1x1 conv stored as [O, C] is accepted).
 * With required false, a missing key leaves w->data NULL. */
void nn_bind(struct nn_loader *ld, struct nn_weight *w, bool required, int ndim, const int64_t *shape,
             const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* name.weight [n_out, n_in] and name.bias [n_out] (bias optional when has_bias is false). */
void nn_bind_linear(struct nn_loader *ld, struct nn_linear *l, int64_t n_in, int64_t n_out, bool has_bias,
                    const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* name.weight [c_out, c_in, k, k], name.bias [c_out]. */
void nn_bind_conv(struct nn_loader *ld, struct nn_conv *l, int64_t c_in, int64_t c_out, int k, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* name.weight [c], name.bias [c]. */
void nn_bind_norm(struct nn_loader *ld, struct nn_norm *n, int64_t ch, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

int nn_loader_finish(struct nn_loader *ld, struct nn_weights *out);

/* ===== Shape probes for *_config_detect ===== */

/* The tensor prefix+name, or NULL. */
const struct ckpt_tensor *nn_probe(const struct ckpt *ck, const char *prefix, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
