/* tests/unit/model/test_models.c -- CLIP, UNet and VAE on the tiny checkpoint against the
 * independent PyTorch reference (tests/ref/sd_ref.py -> tests/data/ref/tiny_golden.safetensors).
 * The checkpoint is regenerated here with `kiln ckpt --tiny --seed 7`'s code; the golden file
 * was computed from that same file (see tests/ref/README.md).
 * Backend-parametric: it runs on the CPU backend; tests/gpu/test_models_cuda.c includes this file
 * with MODELS_BACKEND naming a function that opens a CUDA backend (NULL without error when
 * there is no device: every test is then skipped) and MODELS_EXTRA_TESTS for its own cases;
 * tests/gpu/test_models_cuda_f16.c also sets MODELS_STORAGE (GPU storage: fp16/bf16) and looser
 * MODELS_TOL_* tolerances. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "golden.h"

#include "base/mem.h"
#include "base/status.h"
#include "model/ckpt_gen.h"
#include "model/sd.h"
#include "model/tokenizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef MODELS_BACKEND
static struct backend *models_backend_cpu(struct err *err) {
    (void)err;
    return backend_cpu_new(0);
}
#define MODELS_BACKEND models_backend_cpu
#define MODELS_EXTRA_TESTS
#endif
/* How the model is stored (a const struct sd_storage * expression of `be`; NULL = F32 without
 * the shared store), and the relative tolerances of each network against the fp32 reference. */
#ifndef MODELS_STORAGE
#define MODELS_STORAGE NULL
#endif
#ifndef MODELS_TOL_CLIP
#define MODELS_TOL_CLIP 1e-4
#define MODELS_TOL_UNET 1e-4
#define MODELS_TOL_VAE 1e-4
#endif

static char ckpt_path[256];
static bool have_backend;

#define BACKEND_OR_SKIP()          \
    do {                           \
        if (!have_backend) skip(); \
    } while (0)
static struct ckpt golden;
static struct sd_model *model;
static struct backend *be;
static struct tscratch scratch;
static struct tctx ctx;

static int setup(void **state) {
    struct err err = {0};
    be = MODELS_BACKEND(&err);
    if (!be) {
        if (!err.code) return 0; /* no such device here: skip */
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    snprintf(ckpt_path, sizeof ckpt_path, "/tmp/kiln_test_models_%d.safetensors", (int)getpid());
    if (golden_tiny_ckpt(ckpt_path, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    if (ckpt_open(&golden, KILN_TEST_DATA "/ref/tiny_golden.safetensors", &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    model = sd_model_load(ckpt_path, be, MODELS_STORAGE, &err);
    if (!model) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    tscratch_init(&scratch, be);
    tctx_init(&ctx, be, &scratch);
    have_backend = true;
    return 0;
}

static int teardown(void **state) {
    if (!have_backend) {
        backend_free(be);
        return 0;
    }
    tctx_deinit(&ctx);
    tscratch_deinit(&scratch);
    sd_model_free(model);
    backend_free(be);
    ckpt_close(&golden);
    unlink(ckpt_path);
    return 0;
}

static void test_config_detected(void **state) {
    BACKEND_OR_SKIP();
    assert_int_equal(model->clip.config.width, 128);
    assert_int_equal(model->clip.config.n_layers, 12);
    assert_int_equal(model->clip.config.n_heads, 2);
    assert_int_equal(model->unet.config.model_channels, 32);
    assert_int_equal(model->unet.config.n_levels, 4);
    assert_int_equal(model->unet.config.channel_mult[2], 2);
    assert_true(model->unet.config.attn_level[2]);
    assert_false(model->unet.config.attn_level[3]);
    assert_int_equal(model->unet.config.context_dim, 128);
    assert_int_equal(model->vae.config.ch, 32);
    assert_int_equal(model->vae.config.n_levels, 4);
}

static void test_clip(void **state) {
    BACKEND_OR_SKIP();
    size_t n_tok, n_last, n_pen;
    float *tok = golden_read(&golden, "clip.tokens", &n_tok);
    float *last = golden_read(&golden, "clip.last", &n_last);
    float *pen = golden_read(&golden, "clip.penultimate", &n_pen);
    float *out = mem_alloc(n_last * sizeof(float));
    assert_int_equal(clip_encode(&ctx, &model->clip, (const int32_t *)tok, 2, -1, out), 0);
    golden_check("clip last layer", out, last, n_last, MODELS_TOL_CLIP);
    assert_int_equal(clip_encode(&ctx, &model->clip, (const int32_t *)tok, 2, -2, out), 0);
    golden_check("clip penultimate", out, pen, n_pen, MODELS_TOL_CLIP);
    /* a layer beyond the model is an error with a message, not a crash */
    assert_int_not_equal(clip_encode(&ctx, &model->clip, (const int32_t *)tok, 2, -13, out), 0);
    assert_non_null(strstr(ctx.err.msg, "out of range"));
    mem_free(tok);
    mem_free(last);
    mem_free(pen);
    mem_free(out);
}

/* The UNet golden case (batch 2, 8x8 latent): inputs and the reference output. */
struct unet_golden {
    float *x, *t, *c, *want;
    size_t n_out;
};

static void unet_golden_read(struct unet_golden *g) {
    size_t nx, nt, nc;
    g->x = golden_read(&golden, "unet.x", &nx);
    g->t = golden_read(&golden, "unet.timesteps", &nt);
    g->c = golden_read(&golden, "unet.context", &nc);
    g->want = golden_read(&golden, "unet.out", &g->n_out);
}

static void unet_golden_free(struct unet_golden *g) {
    mem_free(g->x);
    mem_free(g->t);
    mem_free(g->c);
    mem_free(g->want);
}

/* u against the golden case. */
static void unet_check_8x8(const struct unet *u, const char *what) {
    struct unet_golden g;
    unet_golden_read(&g);
    float *out = mem_alloc(g.n_out * sizeof(float));
    if (unet_eval(&ctx, u, 2, 8, 8, g.x, g.t, g.c, 77, out)) fail_msg("unet_eval (%s): %s", what, ctx.err.msg);
    golden_check(what, out, g.want, g.n_out, MODELS_TOL_UNET);
    unet_golden_free(&g);
    mem_free(out);
}

/* u on a 12x10 latent (96x80 pixels): downsampling rounds up, upsampling resizes to the skip
 * tensor (tests/ref/make_golden_odd.py made the reference). */
static void unet_check_odd(const struct unet *u, const char *what) {
    struct err err = {0};
    struct ckpt odd;
    if (ckpt_open(&odd, KILN_TEST_DATA "/ref/unet_odd.safetensors", &err)) fail_msg("%s", err.msg);
    float *v[4];
    const char *names[4] = {"unet.x", "unet.context", "unet.timesteps", "unet.out"};
    size_t n[4];
    for (int i = 0; i < 4; i++) {
        const struct ckpt_tensor *t = ckpt_find(&odd, names[i]);
        assert_non_null(t);
        n[i] = (size_t)ckpt_tensor_numel(t);
        v[i] = mem_alloc(n[i] * sizeof(float));
        assert_int_equal(ckpt_tensor_read_f32(t, v[i], &err), 0);
    }
    float *out = mem_alloc(n[3] * sizeof(float));
    if (unet_eval(&ctx, u, 1, 12, 10, v[0], v[2], v[1], 77, out)) fail_msg("unet_eval 12x10 (%s): %s", what, ctx.err.msg);
    golden_check(what, out, v[3], n[3], MODELS_TOL_UNET);
    for (int i = 0; i < 4; i++) mem_free(v[i]);
    mem_free(out);
    ckpt_close(&odd);
}

static void test_unet(void **state) {
    BACKEND_OR_SKIP();
    unet_check_8x8(&model->unet, "unet eps");
}

static void test_unet_odd_size(void **state) {
    BACKEND_OR_SKIP();
    unet_check_odd(&model->unet, "unet eps 12x10 latent");
}

/* unet_eval_dev (the context already in the backend's memory, as a sampler keeps it) gives
 * exactly unet_eval's output, twice in a row (the second evaluation reuses the same buffer). */
static void test_unet_context_on_device(void **state) {
    BACKEND_OR_SKIP();
    struct unet_golden g;
    unet_golden_read(&g);
    size_t bytes = (size_t)2 * 77 * model->unet.config.context_dim * sizeof(float);
    void *dev = NULL;
    assert_int_equal(backend_buf_alloc(be, bytes, &dev), 0);
    struct tensor view = {.dtype = DTYPE_F32, .ndim = 1, .shape = {(int64_t)(bytes / 4), 1, 1, 1}, .data = dev};
    assert_int_equal(backend_tensor_set(be, &view, g.c, 0, bytes), 0);
    float *ref = mem_alloc(g.n_out * sizeof(float)), *out = mem_alloc(g.n_out * sizeof(float));
    if (unet_eval(&ctx, &model->unet, 2, 8, 8, g.x, g.t, g.c, 77, ref)) fail_msg("unet_eval: %s", ctx.err.msg);
    for (int run = 0; run < 2; run++) {
        memset(out, 0, g.n_out * sizeof(float));
        if (unet_eval_dev(&ctx, &model->unet, 2, 8, 8, g.x, g.t, dev, 77, out))
            fail_msg("unet_eval_dev: %s", ctx.err.msg);
        assert_memory_equal(out, ref, g.n_out * sizeof(float));
    }
    backend_buf_free(be, dev);
    unet_golden_free(&g);
    mem_free(ref);
    mem_free(out);
}

/* sd_model_prefill fills the host copies that a load with the same storage then shares: the load
 * reads nothing, and its model computes the golden outputs after the prefill's references are
 * gone (the worker's host copy ahead of a cold start's first load). */
static void test_prefill(void **state) {
    BACKEND_OR_SKIP();
    struct err err = {0};
    const struct sd_storage *all = MODELS_STORAGE;
    struct sd_storage st = all ? *all : sd_storage_for(be, true, wstore_global());
    if (!st.clip.store) st.clip.store = st.unet.store = st.vae.store = wstore_global();
    char path[256]; /* a file of its own: its own host copies (those of `model` would be found) */
    snprintf(path, sizeof path, "/tmp/kiln_test_prefill_%d.safetensors", (int)getpid());
    if (golden_tiny_ckpt(path, &err)) fail_msg("%s", err.msg);
    struct sd_model *pre = sd_model_prefill(path, be, &st, &err);
    if (!pre) fail_msg("sd_model_prefill: %s", err.msg);
    assert_true(pre->clip.weights.read_file && pre->unet.weights.read_file && pre->vae.weights.read_file);
    assert_null(pre->unet.weights.buf); /* nothing on the backend */
    struct sd_model *m = sd_model_load(path, be, &st, &err);
    if (!m) fail_msg("sd_model_load: %s", err.msg);
    assert_false(m->clip.weights.read_file || m->unet.weights.read_file || m->vae.weights.read_file);
    sd_model_free(pre);
    unet_check_8x8(&m->unet, "unet loaded after a prefill");
    sd_model_free(m);
    unlink(path);
    /* without a store there is nothing to fill ahead */
    struct sd_storage bare = st;
    bare.clip.store = bare.unet.store = bare.vae.store = NULL;
    assert_null(sd_model_prefill(path, be, &bare, &err));
    assert_int_equal(err.code, STATUS_ERR_INVALID);
}

/* Stand-in weights (sd_model_stand_in): the file's tensors are never read (here they are all
 * NaN bytes), every weight of a network points at one zeroed buffer the size of its largest
 * weight, and the networks run: the UNet's output is exactly zero (its last conv is zeros). */
static void test_stand_in(void **state) {
    BACKEND_OR_SKIP();
    struct err err = {0};
    const struct sd_storage *all = MODELS_STORAGE;
    struct sd_storage st = all ? *all : sd_storage_for(be, true, NULL);
    char path[256];
    snprintf(path, sizeof path, "/tmp/kiln_test_stand_in_%d.safetensors", (int)getpid());
    if (golden_tiny_ckpt(path, &err)) fail_msg("%s", err.msg);
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    uint64_t hlen = 0;
    assert_int_equal(fread(&hlen, 8, 1, f), 1);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long end = ftell(f);
    assert_int_equal(fseek(f, (long)(8 + hlen), SEEK_SET), 0);
    for (long i = (long)(8 + hlen); i < end; i++) fputc(0xff, f); /* NaN in every float format */
    fclose(f);
    struct sd_model *m = sd_model_stand_in(path, be, &st, &err);
    if (!m) fail_msg("sd_model_stand_in: %s", err.msg);
    const struct nn_weights *w[3] = {&m->clip.weights, &m->unet.weights, &m->vae.weights};
    for (int i = 0; i < 3; i++) {
        assert_non_null(w[i]->buf);
        assert_false(w[i]->read_file);
        assert_null(w[i]->image);
        assert_true(w[i]->size < 4u << 20); /* the largest weight, not the network */
    }
    assert_ptr_equal(m->unet.conv_in.w.data, w[1]->buf);
    assert_ptr_equal(m->unet.out_conv.b.data, w[1]->buf);
    struct unet_golden g;
    unet_golden_read(&g);
    float *out = mem_alloc(g.n_out * sizeof(float));
    if (unet_eval(&ctx, &m->unet, 2, 8, 8, g.x, g.t, g.c, 77, out)) fail_msg("unet_eval: %s", ctx.err.msg);
    for (size_t i = 0; i < g.n_out; i++)
        if (out[i] != 0.0f) fail_msg("stand-in UNet output %zu is %g", i, (double)out[i]);
    float *img = mem_alloc(64 * 8 * 8 * 3 * sizeof(float));
    if (vae_decode_image(&ctx, &m->vae, 1, 8, 8, g.x, img)) fail_msg("vae_decode_image: %s", ctx.err.msg);
    for (size_t i = 0; i < 64 * 8 * 8 * 3; i++)
        if (!isfinite(img[i])) fail_msg("stand-in VAE pixel %zu is %g", i, (double)img[i]);
    tctx_reset(&ctx);
    mem_free(img);
    mem_free(out);
    unet_golden_free(&g);
    sd_model_free(m);
    unlink(path);
}

/* ===== Streamed blocks (tensor.h STREAMING) ===== */

#ifndef MODELS_PEER_DEVICE
#define MODELS_PEER_DEVICE(be) (-1) /* another device to keep blocks on, or -1 */
#endif

struct place_args {
    int peer;      /* device for every third block, or -1 (host instead) */
    bool all;      /* every block in host memory instead */
    int n_called;
    int n_blocks;
    char first[NN_BLOCK_NAME_MAX], last[NN_BLOCK_NAME_MAX];
};

/* Keeps blocks 1, 4, 7... in host memory and 2, 5, 8... on the peer device (or the host). */
static int place_spread(void *user, struct nn_block *blocks, int n, size_t total, struct err *err) {
    struct place_args *a = user;
    a->n_called++;
    a->n_blocks = n;
    size_t sum = 0;
    for (int i = 0; i < n; i++) {
        sum += blocks[i].bytes;
        if (i % 3 == 1 || a->all) blocks[i].home = NN_HOME_HOST;
        if (i % 3 == 2 && !a->all) {
            blocks[i].home = a->peer >= 0 ? NN_HOME_PEER : NN_HOME_HOST;
            blocks[i].peer_device = a->peer;
        }
    }
    snprintf(a->first, sizeof a->first, "%s", blocks[0].name);
    snprintf(a->last, sizeof a->last, "%s", blocks[n - 1].name);
    if (sum != total) return err_set(err, STATUS_ERR_INTERNAL, "blocks cover %zu of %zu bytes", sum, total);
    return 0;
}

static int place_fail(void *user, struct nn_block *blocks, int n, size_t total, struct err *err) {
    (void)user, (void)blocks, (void)n;
    return err_set(err, STATUS_ERR_OOM_DEVICE, "no room for %zu bytes", total);
}

/* The UNet with a third of its blocks in host memory and a third on another device (or the host)
 * gives exactly the resident model's output, with and without prefetching; so does the UNet with
 * every block in host memory (two slots, the time embedding streamed too). */
static void test_unet_streamed(void **state) {
    BACKEND_OR_SKIP();
    struct err err = {0};
    const struct sd_storage *all = MODELS_STORAGE;
    struct nn_storage st = all ? all->unet : (struct nn_storage){.dtype = DTYPE_F32};
    if (!st.store) st.store = wstore_global();
    struct place_args args = {.peer = MODELS_PEER_DEVICE(be)};
    st.place = place_spread;
    st.place_user = &args;
    struct unet_golden g;
    unet_golden_read(&g);
    float *x = g.x, *t = g.t, *c = g.c, *want = g.want;
    size_t no = g.n_out;
    float *ref = mem_alloc(no * sizeof(float)), *out = mem_alloc(no * sizeof(float));
    int rc = unet_eval(&ctx, &model->unet, 2, 8, 8, x, t, c, 77, ref);
    if (rc) fail_msg("unet_eval (resident): %s", ctx.err.msg);

    struct ckpt ck;
    if (ckpt_open(&ck, ckpt_path, &err)) fail_msg("%s", err.msg);
    for (int mode = 0; mode < 3; mode++) { /* prefetch, no prefetch, every block streamed */
        int no_prefetch = mode == 1;
        args.all = mode == 2;
        struct unet *u = mem_calloc(1, sizeof *u);
        st.no_prefetch = no_prefetch;
        if (unet_load(u, &ck, be, &st, &err)) fail_msg("unet_load with blocks elsewhere: %s", err.msg);
        assert_int_equal(args.n_called, mode + 1);
        assert_string_equal(args.first, "time_embed"); /* bound first */
        assert_string_equal(args.last, "out");
        const struct nn_weights *w = &u->weights;
        assert_int_equal(w->n_blocks, args.n_blocks);
        assert_int_equal(w->stream.n_blocks, args.all ? args.n_blocks : args.n_blocks - (args.n_blocks + 2) / 3);
        assert_int_equal(w->stream.n_slots, 2);
        assert_true(w->bytes_host > 0 && (args.all ? w->bytes_device == 0 : w->bytes_device > 0));
        assert_true(args.peer >= 0 && !args.all ? w->bytes_peer > 0 : w->bytes_peer == 0);
        assert_int_equal(w->bytes_device + w->bytes_host + w->bytes_peer, w->size);
        for (int i = 0; i < w->stream.n_blocks; i++) assert_true(w->sblocks[i].bytes <= w->slot_bytes);

        rc = unet_eval(&ctx, u, 2, 8, 8, x, t, c, 77, out);
        if (rc) fail_msg("unet_eval (streamed, prefetch %d): %s", !no_prefetch, ctx.err.msg);
        /* every streamed block fetched, waited for and released once per evaluation */
        int kinds[4] = {0, 0, 0, 0}, firsts = 0;
        for (int i = 0; i < ctx.n_run; i++)
            if (ctx.run[i]->op == OP_STREAM) {
                assert_in_range(ctx.run[i]->ip[0], TSTREAM_FETCH, TSTREAM_BEGIN);
                kinds[ctx.run[i]->ip[0]]++;
                firsts += ctx.run[i]->ip[0] == TSTREAM_FETCH && ctx.run[i]->ip[3];
                if (ctx.run[i]->ip[0] == TSTREAM_FETCH) assert_int_equal(ctx.run[i]->ip[4], no_prefetch);
            }
        for (int k = TSTREAM_FETCH; k <= TSTREAM_DONE; k++) assert_int_equal(kinds[k], w->stream.n_blocks);
        assert_int_equal(kinds[TSTREAM_BEGIN], 1);
        assert_int_equal(firsts, w->stream.n_slots); /* one first FETCH per slot waits for BEGIN */
        assert_int_equal(ctx.run[0]->op, OP_STREAM);
        assert_int_equal(ctx.run[0]->ip[0], TSTREAM_BEGIN);
        if (memcmp(out, ref, no * sizeof(float)) != 0) {
            double m = 0;
            for (size_t i = 0; i < no; i++) m = fmax(m, fabs((double)out[i] - ref[i]));
            fail_msg("streamed output differs from the resident one (prefetch %d): max |diff| %g", !no_prefetch, m);
        }
        golden_check("unet eps, streamed", out, want, no, MODELS_TOL_UNET);
        unet_deinit(u);
        mem_free(u);
    }
    /* a place function's error fails the load with its message */
    struct unet *u = mem_calloc(1, sizeof *u);
    st.place = place_fail;
    assert_int_not_equal(unet_load(u, &ck, be, &st, &err), 0);
    assert_non_null(strstr(err.msg, "no room"));
    mem_free(u);
    ckpt_close(&ck);
    unet_golden_free(&g);
    mem_free(ref);
    mem_free(out);
}

/* ===== Activation layout (unet.nhwc) ===== */

/* u against both golden references: the 8x8 batch of 2 and the odd 12x10 latent. */
static void unet_check_golden(struct unet *u, const char *what) {
    unet_check_8x8(u, what);
    unet_check_odd(u, what);
}

/* The UNet computed in the other activation layout (channels-last where the storage keeps NCHW,
 * as the CPU does; NCHW where it asks for channels-last, as GPUs do) is the same function: both
 * golden references, resident and with every block streamed from host memory. The conv weights
 * are stored reordered: [O, kh, kw, C], read back here from the backend. */
static void test_unet_other_layout(void **state) {
    BACKEND_OR_SKIP();
    struct err err = {0};
    const struct sd_storage *all = MODELS_STORAGE;
    struct nn_storage st = all ? all->unet : (struct nn_storage){.dtype = DTYPE_F32};
    st.channels_last = !st.channels_last;
    assert_true(model->unet.nhwc != st.channels_last);
    struct ckpt ck;
    if (ckpt_open(&ck, ckpt_path, &err)) fail_msg("%s", err.msg);
    for (int streamed = 0; streamed < 2; streamed++) {
        struct place_args args = {.peer = -1, .all = true};
        struct nn_storage s2 = st;
        if (streamed) {
            if (!s2.store) s2.store = wstore_global();
            s2.place = place_spread;
            s2.place_user = &args;
        }
        struct unet *u = mem_calloc(1, sizeof *u);
        if (unet_load(u, &ck, be, &s2, &err)) fail_msg("unet_load (channels last %d): %s", st.channels_last, err.msg);
        assert_int_equal(u->nhwc, st.channels_last);
        assert_int_equal(u->conv_in.w.channels_last, st.channels_last);
        if (st.channels_last && !streamed) { /* conv_in's weight [O, 3, 3, C] = the file's [O, C, 3, 3] reordered */
            const struct ckpt_tensor *ft = ckpt_find(&ck, "model.diffusion_model.input_blocks.0.0.weight");
            assert_non_null(ft);
            int64_t o = ft->shape[0], ci = ft->shape[1], n = ckpt_tensor_numel(ft);
            assert_int_equal(u->conv_in.w.shape[1], 3);
            assert_int_equal(u->conv_in.w.shape[3], ci);
            float *file = mem_alloc((size_t)n * sizeof(float));
            assert_int_equal(ckpt_tensor_read_f32(ft, file, &err), 0);
            size_t es = dtype_size(u->conv_in.w.dtype);
            unsigned char *dev = mem_alloc((size_t)n * es);
            struct tensor view = {.dtype = u->conv_in.w.dtype, .ndim = 1, .shape = {n, 1, 1, 1}, .data = u->conv_in.w.data};
            assert_int_equal(backend_tensor_get(be, &view, dev, 0, (size_t)n * es), 0);
            for (int64_t oc = 0; oc < o; oc++)
                for (int64_t ch = 0; ch < ci; ch++)
                    for (int64_t k = 0; k < 9; k++) {
                        size_t at = (size_t)((oc * 9 + k) * ci + ch);
                        float got = es == 4 ? ((float *)dev)[at] : u->conv_in.w.dtype == DTYPE_F16
                                                                        ? f16_to_f32(((uint16_t *)dev)[at])
                                                                        : bf16_to_f32(((uint16_t *)dev)[at]);
                        float exp = file[(oc * ci + ch) * 9 + k];
                        float expr = es == 4 ? exp : u->conv_in.w.dtype == DTYPE_F16 ? f16_to_f32(f32_to_f16(exp))
                                                                                     : bf16_to_f32(f32_to_bf16(exp));
                        if (got != expr) fail_msg("conv_in weight [%lld, %lld, tap %lld]: %g, expected %g",
                                                  (long long)oc, (long long)ch, (long long)k, got, expr);
                    }
            mem_free(file);
            mem_free(dev);
        }
        unet_check_golden(u, st.channels_last ? (streamed ? "unet channels last, streamed" : "unet channels last")
                                              : (streamed ? "unet NCHW, streamed" : "unet NCHW"));
        if (streamed) assert_int_equal(u->weights.stream.n_blocks, args.n_blocks);
        unet_deinit(u);
        mem_free(u);
    }
    ckpt_close(&ck);
}

static void vae_check_decode(const struct vae *v, const char *what) {
    size_t nz, nd;
    float *z = golden_read(&golden, "vae.z", &nz);
    float *want = golden_read(&golden, "vae.dec_raw", &nd);
    float *out = mem_alloc(nd * sizeof(float));
    int rc = vae_decode(&ctx, v, 1, 8, 8, z, out);
    if (rc) fail_msg("vae_decode (%s): %s", what, ctx.err.msg);
    golden_check(what, out, want, nd, MODELS_TOL_VAE);
    mem_free(z);
    mem_free(want);
    mem_free(out);
}

static void test_vae_decode(void **state) {
    BACKEND_OR_SKIP();
    vae_check_decode(&model->vae, "vae decode");
}

/* vae_decode_image is vae_decode's output as clamp((x + 1) / 2, 0, 1) in [b, H, W, 3], bit for
 * bit (the layout and values the VAEDecode node returns). */
static void test_vae_decode_image(void **state) {
    BACKEND_OR_SKIP();
    size_t nz, nd;
    float *z = golden_read(&golden, "vae.z", &nz), *want = golden_read(&golden, "vae.dec_raw", &nd);
    float *raw = mem_alloc(nd * sizeof(float)), *img = mem_alloc(nd * sizeof(float));
    if (vae_decode(&ctx, &model->vae, 1, 8, 8, z, raw)) fail_msg("vae_decode: %s", ctx.err.msg);
    if (vae_decode_image(&ctx, &model->vae, 1, 8, 8, z, img)) fail_msg("vae_decode_image: %s", ctx.err.msg);
    size_t plane = nd / 3;
    for (size_t p = 0; p < plane; p++)
        for (size_t ch = 0; ch < 3; ch++) {
            float v = (raw[ch * plane + p] + 1.0f) / 2.0f;
            v = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
            if (memcmp(&v, &img[p * 3 + ch], sizeof v) != 0)
                fail_msg("pixel %zu channel %zu: %.9g, want %.9g", p, ch, img[p * 3 + ch], v);
        }
    mem_free(z);
    mem_free(want);
    mem_free(raw);
    mem_free(img);
}

/* Graph reuse (tctx_memo_*): a UNet evaluation and a VAE decode run again with new inputs on the
 * graph they recorded give exactly what a freshly recorded graph gives, and the first inputs
 * again still match the golden files. */
static void test_graph_reuse(void **state) {
    BACKEND_OR_SKIP();
    struct unet_golden g;
    unet_golden_read(&g);
    size_t nx = (size_t)2 * model->unet.config.in_channels * 8 * 8;
    float *x2 = mem_alloc(nx * sizeof(float)), *out = mem_alloc(g.n_out * sizeof(float));
    float *ref = mem_alloc(g.n_out * sizeof(float)), t2[2] = {g.t[0] * 0.5f + 3.0f, g.t[1] + 11.0f};
    for (size_t i = 0; i < nx; i++) x2[i] = g.x[i] * 0.75f - 0.1f;
    if (unet_eval(&ctx, &model->unet, 2, 8, 8, g.x, g.t, g.c, 77, out)) fail_msg("unet_eval: %s", ctx.err.msg);
    golden_check("unet, recorded", out, g.want, g.n_out, MODELS_TOL_UNET);
    if (unet_eval(&ctx, &model->unet, 2, 8, 8, x2, t2, g.c, 77, out)) fail_msg("unet_eval: %s", ctx.err.msg);
    tctx_reset(&ctx); /* the reference records the graph anew */
    if (unet_eval(&ctx, &model->unet, 2, 8, 8, x2, t2, g.c, 77, ref)) fail_msg("unet_eval: %s", ctx.err.msg);
    assert_memory_equal(out, ref, g.n_out * sizeof(float));
    if (unet_eval(&ctx, &model->unet, 2, 8, 8, g.x, g.t, g.c, 77, out)) fail_msg("unet_eval: %s", ctx.err.msg);
    golden_check("unet, reused", out, g.want, g.n_out, MODELS_TOL_UNET);
    unet_golden_free(&g);
    mem_free(x2);
    mem_free(out);
    mem_free(ref);

    size_t nz, nd;
    float *z = golden_read(&golden, "vae.z", &nz), *want = golden_read(&golden, "vae.dec_raw", &nd);
    float *z2 = mem_alloc(nz * sizeof(float)), *img = mem_alloc(nd * sizeof(float));
    float *img_ref = mem_alloc(nd * sizeof(float));
    for (size_t i = 0; i < nz; i++) z2[i] = -z[i] * 0.5f;
    if (vae_decode(&ctx, &model->vae, 1, 8, 8, z, img)) fail_msg("vae_decode: %s", ctx.err.msg);
    if (vae_decode(&ctx, &model->vae, 1, 8, 8, z2, img)) fail_msg("vae_decode: %s", ctx.err.msg);
    tctx_reset(&ctx);
    if (vae_decode(&ctx, &model->vae, 1, 8, 8, z2, img_ref)) fail_msg("vae_decode: %s", ctx.err.msg);
    assert_memory_equal(img, img_ref, nd * sizeof(float));
    if (vae_decode(&ctx, &model->vae, 1, 8, 8, z, img)) fail_msg("vae_decode: %s", ctx.err.msg);
    golden_check("vae decode, reused", img, want, nd, MODELS_TOL_VAE);
    mem_free(z);
    mem_free(z2);
    mem_free(want);
    mem_free(img);
    mem_free(img_ref);
}

static void vae_check_encode(const struct vae *v, const char *what) {
    size_t ni, nm;
    float *in = golden_read(&golden, "vae.enc_in", &ni);
    float *want = golden_read(&golden, "vae.enc_mean", &nm);
    float *out = mem_alloc(nm * sizeof(float));
    int rc = vae_encode(&ctx, v, 1, 64, 64, in, out);
    if (rc) fail_msg("vae_encode (%s): %s", what, ctx.err.msg);
    golden_check(what, out, want, nm, MODELS_TOL_VAE);
    mem_free(in);
    mem_free(want);
    mem_free(out);
}

static void test_vae_encode(void **state) {
    BACKEND_OR_SKIP();
    vae_check_encode(&model->vae, "vae encode mean");
}

/* The VAE in the other activation layout (as test_unet_other_layout): decode and encode (its
 * downsampling pads only right and bottom) against the golden reference. */
static void test_vae_other_layout(void **state) {
    BACKEND_OR_SKIP();
    struct err err = {0};
    const struct sd_storage *all = MODELS_STORAGE;
    struct nn_storage st = all ? all->vae : (struct nn_storage){.dtype = DTYPE_F32};
    st.channels_last = !st.channels_last;
    assert_true(model->vae.nhwc != st.channels_last);
    struct ckpt ck;
    if (ckpt_open(&ck, ckpt_path, &err)) fail_msg("%s", err.msg);
    struct vae *v = mem_calloc(1, sizeof *v);
    if (vae_load(v, &ck, be, &st, &err)) fail_msg("vae_load (channels last %d): %s", st.channels_last, err.msg);
    assert_int_equal(v->nhwc, st.channels_last);
    vae_check_decode(v, st.channels_last ? "vae decode, channels last" : "vae decode, NCHW");
    vae_check_encode(v, st.channels_last ? "vae encode, channels last" : "vae encode, NCHW");
    vae_deinit(v);
    mem_free(v);
    ckpt_close(&ck);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_detected),
        cmocka_unit_test(test_clip),
        cmocka_unit_test(test_unet),
        cmocka_unit_test(test_unet_odd_size),
        cmocka_unit_test(test_unet_context_on_device),
        cmocka_unit_test(test_prefill),
        cmocka_unit_test(test_stand_in),
        cmocka_unit_test(test_unet_streamed),
        cmocka_unit_test(test_unet_other_layout),
        cmocka_unit_test(test_vae_decode),
        cmocka_unit_test(test_vae_decode_image),
        cmocka_unit_test(test_vae_encode),
        cmocka_unit_test(test_graph_reuse),
        cmocka_unit_test(test_vae_other_layout),
        MODELS_EXTRA_TESTS
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
