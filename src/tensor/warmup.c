/* tensor/warmup.c -- the start-up warm-up graph (see warmup.h).
 * Owns: its own scratch and graph context for the length of one call (freed before return).
 * Must not: touch the caller's scratch (engine activations) or keep anything on the device.
 * Threads: the backend owner's thread.
 *
 * WHY. CUDA loads a kernel's module on its first launch (lazy loading) and cuBLAS builds its
 * workspace and picks algorithms on its first product; on a fresh device that is hundreds of
 * milliseconds spread over the first prompt's first nodes. One tiny graph with a node of each
 * op kind moves that cost to start-up, where the worker logs it. Shapes are small but keep
 * the models' structure: 32 groups for GroupNorm, a head size of 64 for attention; one is a real
 * one (SD 1.5's last UNet conv at 512x512, whose first call is slow at its own shape). */
#include "tensor/warmup.h"

#include "base/clock.h"
#include "base/log.h"
#include "base/mem.h"
#include "base/status.h"
#include "tensor/backend.h"
#include "tensor/tensor.h"


#define WARM_C 32      /* image channels (GroupNorm's 32 groups) */
#define WARM_HW 8      /* image side */
#define WARM_N 16      /* tokens */
#define WARM_D 128     /* token width: 2 heads of 64 */
#define WARM_HEADS 2
#define WARM_FEW 4      /* the UNet's last conv: output channels, */
#define WARM_FEW_C 320  /* input channels and */
#define WARM_FEW_HW 64  /* latent side (SD 1.5 at 512x512) */
#define WARM_VOCAB 64  /* get_rows table rows */
#define WARM_IDS 8     /* ids looked up */
#define WARM_MAX_IN 16 /* input leaves of one graph */
#define WARM_MAX_OUT 32

/* One warm-up graph being recorded: its F32 input leaves (filled after planning) and the op
 * nodes the backend supports (the graph's outputs). */
struct warm {
    struct backend *be;
    struct tctx *c;
    enum dtype dt;                       /* dtype the ops compute in */
    struct tensor *in[WARM_MAX_IN];      /* F32 (or I32) leaves */
    int n_in;
    struct tensor *out[WARM_MAX_OUT];    /* supported op nodes */
    int n_out;
    int skipped;                         /* op nodes the backend does not support */
};

/* An input leaf of `shape`, cast to the graph's dtype (F32 ids stay I32). */
static struct tensor *warm_input(struct warm *w, enum dtype leaf_dt, int ndim, const int64_t *shape) {
    struct tensor *t = tensor_input(w->c, leaf_dt, ndim, shape);
    if (!t) return NULL;
    if (w->n_in < WARM_MAX_IN) w->in[w->n_in++] = t;
    return leaf_dt == DTYPE_F32 ? op_cast(w->c, t, w->dt) : t;
}

static bool warm_supported(struct warm *w, const struct tensor *t) {
    if (t->op == OP_NONE) return true;
    if (!backend_op_supported(w->be, t)) return false;
    for (int i = 0; i < TENSOR_MAX_SRC; i++)
        if (t->src[i] && !warm_supported(w, t->src[i])) return false;
    return true;
}

/* Keeps op node t (and what it reads) in the graph when the backend can compute all of it. */
static void warm_keep(struct warm *w, struct tensor *t) {
    if (!t) return; /* a recording error: tctx.rc says which */
    if (!warm_supported(w, t)) {
        w->skipped++;
        return;
    }
    if (w->n_out < WARM_MAX_OUT) {
        tensor_set_output(t);
        w->out[w->n_out++] = t;
    }
}

/* Records one node of each token op kind in w->dt, and of each image op kind with images. */
static void warm_record(struct warm *w, bool images) {
    struct tctx *c = w->c;
    const int64_t img[4] = {1, WARM_C, WARM_HW, WARM_HW}, tok[3] = {1, WARM_N, WARM_D};
    const int64_t tok2[3] = {1, WARM_N, 2 * WARM_D}, wsq[2] = {WARM_D, WARM_D}, vec[1] = {WARM_D};
    const int64_t k3[4] = {WARM_C, WARM_C, 3, 3}, k1[4] = {WARM_C, WARM_C, 1, 1}, cvec[1] = {WARM_C};
    const int64_t table[2] = {WARM_VOCAB, WARM_D}, ids_shape[2] = {1, WARM_IDS};
    struct tensor *x = warm_input(w, DTYPE_F32, 4, img);       // [1, 32, 8, 8]
    struct tensor *k3w = warm_input(w, DTYPE_F32, 4, k3);      // [32, 32, 3, 3]
    struct tensor *k1w = warm_input(w, DTYPE_F32, 4, k1);      // [32, 32, 1, 1]
    struct tensor *cb = warm_input(w, DTYPE_F32, 1, cvec);     // [32]
    struct tensor *h = warm_input(w, DTYPE_F32, 3, tok);       // [1, 16, 128]
    struct tensor *h2 = warm_input(w, DTYPE_F32, 3, tok2);     // [1, 16, 256]
    struct tensor *lw = warm_input(w, DTYPE_F32, 2, wsq);      // [128, 128]
    struct tensor *lb = warm_input(w, DTYPE_F32, 1, vec);      // [128]
    struct tensor *tab = warm_input(w, DTYPE_F32, 2, table);   // [64, 128]
    struct tensor *ids = warm_input(w, DTYPE_I32, 2, ids_shape); // [1, 8]
    const int64_t img_cl[4] = {1, WARM_HW, WARM_HW, WARM_C}, k3_cl[4] = {WARM_C, 3, 3, WARM_C};
    struct tensor *xc = warm_input(w, DTYPE_F32, 4, img_cl);   // [1, 8, 8, 32] channels-last
    struct tensor *k3c = warm_input(w, DTYPE_F32, 4, k3_cl);   // [32, 3, 3, 32]
    const int64_t few_x[4] = {2, WARM_FEW_HW, WARM_FEW_HW, WARM_FEW_C}, few_k[4] = {WARM_FEW, 3, 3, WARM_FEW_C};
    const int64_t few_b[1] = {WARM_FEW};
    struct tensor *xf = warm_input(w, DTYPE_F32, 4, few_x);   // [2, 64, 64, 320]
    struct tensor *k3f = warm_input(w, DTYPE_F32, 4, few_k);  // [4, 3, 3, 320]
    struct tensor *fb = warm_input(w, DTYPE_F32, 1, few_b);   // [4]

    /* image ops: ResBlock and Upsample pieces */
    if (images) {
        warm_keep(w, op_conv2d(c, x, k3w, cb, 1, 1));              // [1, 32, 8, 8]
        warm_keep(w, op_conv2d(c, x, k1w, cb, 1, 0));              // [1, 32, 8, 8]
        warm_keep(w, op_group_norm(c, x, cb, cb, 32, 1e-5f, true)); // [1, 32, 8, 8]
        warm_keep(w, op_upsample_nearest(c, x, 2));                // [1, 32, 16, 16]
        warm_keep(w, op_concat(c, x, x, 1));                       // [1, 64, 8, 8]
        /* the same channels-last (a GPU's UNet and VAE), a residual fused into the conv */
        warm_keep(w, op_add_fused(c, op_conv2d_nhwc(c, xc, k3c, cb, 1, 1), xc)); // [1, 8, 8, 32]
        /* the UNet's last conv (4 output channels) at SD 1.5's 512x512 (cond + uncond): cuDNN's
           first call at that shape took 64 ms inside a cold first image on an H100 (the same conv
           at the small shape above covered only part of it) */
        warm_keep(w, op_conv2d_nhwc(c, xf, k3f, fb, 1, 1));                       // [2, 64, 64, 4]
        warm_keep(w, op_group_norm_nhwc(c, xc, cb, cb, 32, 1e-5f, true));        // [1, 8, 8, 32]
        warm_keep(w, op_upsample_nearest_nhwc_to(c, xc, 16, 16));                // [1, 16, 16, 32]
        warm_keep(w, op_concat(c, xc, xc, 3));                                   // [1, 8, 8, 64]
        /* the VAE's last op: its image in F32, scaled and clamped */
        warm_keep(w, op_scale_clamp(c, op_cast(c, xc, DTYPE_F32), 0.5f, 0.5f, 0.0f, 1.0f)); // [1, 8, 8, 32]
    }
    /* token ops: transformer block pieces */
    warm_keep(w, op_linear(c, h, lw, lb));                     // [1, 16, 128]
    warm_keep(w, op_layer_norm(c, h, lb, lb, 1e-5f));          // [1, 16, 128]
    warm_keep(w, op_attention(c, h, h, h, WARM_HEADS, false)); // [1, 16, 128]
    warm_keep(w, op_attention(c, h, h, h, WARM_HEADS, true));  // [1, 16, 128]
    warm_keep(w, op_geglu(c, h2));                             // [1, 16, 128]
    warm_keep(w, op_gelu(c, h));                               // [1, 16, 128]
    warm_keep(w, op_quick_gelu(c, h));                         // [1, 16, 128] (CLIP)
    warm_keep(w, op_add(c, h, lb));                            // [1, 16, 128]
    warm_keep(w, op_mul(c, h, h));                             // [1, 16, 128]
    warm_keep(w, op_scale(c, h, 0.5f, 0.25f));                 // [1, 16, 128]
    warm_keep(w, op_transpose(c, h));                          // [1, 128, 16]
    warm_keep(w, op_get_rows(c, tab, ids));                    // [1, 8, 128]
    /* and back: the cast every F16 model does at its output */
    warm_keep(w, op_cast(c, op_scale(c, h, 1.0f, 0.0f), w->dt == DTYPE_F32 ? DTYPE_F16 : DTYPE_F32));
}

/* Small values in [-0.5, 0.5) (ids: in [0, WARM_VOCAB)) for leaf t, into a buffer of its size. */
static void warm_fill(const struct tensor *t, void *buf) {
    int64_t n = tensor_numel(t);
    for (int64_t i = 0; i < n; i++) {
        if (t->dtype == DTYPE_I32) ((int32_t *)buf)[i] = (int32_t)((i * 7) % WARM_VOCAB);
        else ((float *)buf)[i] = (float)((i * 37) % 101) / 101.0f - 0.5f;
    }
}

/* Records, plans, fills and runs the graph in dtype dt; *n_run gets the nodes sent. */
static int warm_pass(struct backend *be, enum dtype dt, bool images, int *n_run, struct err *err) {
    struct tscratch scratch;
    struct tctx c;
    tscratch_init(&scratch, be);
    tctx_init(&c, be, &scratch);
    struct warm w = {.be = be, .c = &c, .dt = dt};
    warm_record(&w, images);
    int rc = c.rc;
    *n_run = 0;
    if (!rc && w.n_out > 0) rc = tctx_plan(&c, w.out, w.n_out);
    for (int i = 0; !rc && w.n_out > 0 && i < w.n_in; i++) {
        if (!w.in[i]->data) continue; /* read by left-out nodes only: not planned */
        void *buf = mem_try_alloc(tensor_nbytes(w.in[i]));
        if (!buf) {
            rc = err_set(err, STATUS_ERR_NOMEM, "out of host memory for the warm-up's inputs");
            break;
        }
        warm_fill(w.in[i], buf);
        rc = tctx_set(&c, w.in[i], buf);
        mem_free(buf);
    }
    if (!rc && w.n_out > 0) {
        *n_run = c.n_run;
        rc = tctx_run(&c);
        if (!rc) {
            int s = backend_sync(be);
            if (s) rc = err_set(&c.err, s, "waiting for the device failed: %s", status_str(s));
        }
    }
    if (rc) {
        err_set(err, rc, "warm-up on %s in %s: %s", be->iface->name, dtype_name(dt),
                c.err.msg[0] ? c.err.msg : status_str(rc));
    } else {
        log_debug("warm-up on %s: %d %s nodes run, %d op nodes left out (unsupported)", be->iface->name, *n_run,
                  dtype_name(dt), w.skipped);
    }
    tctx_deinit(&c);
    tscratch_deinit(&scratch);
    return rc;
}

int backend_warmup(struct backend *be, const struct warmup_pass *passes, int n, struct err *err) {
    for (int i = 0; i < n; i++) {
        int n_run;
        double t0 = clock_now();
        int rc = warm_pass(be, passes[i].dtype, passes[i].images, &n_run, err);
        if (rc) return rc;
        log_debug("warm-up on %s: the %s pass%s took %.3f s", be->iface->name, dtype_name(passes[i].dtype),
                  passes[i].images ? "" : " (token ops)", clock_now() - t0);
    }
    return 0;
}
