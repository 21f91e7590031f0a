/* tests/gpu/test_engine_cuda.c -- weights placement through the engine on a CUDA device (issue 7):
 * a budget below the checkpoint's size makes the engine place the UNet's blocks automatically
 * (the rest in host memory when no other GPU is offered; with 2 GPUs, also on GPU 1 first), an
 * explicit allocation string is followed,
 * and both give exactly the output of the whole model resident; bad strings are refused. Needs a
 * CUDA device; without one every test is skipped. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "golden.h"

#include "base/mem.h"
#include "base/status.h"
#include "graph/engine.h"
#include "graph/registry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char ckpt_path[256];
static struct ckpt golden;
static float *x, *t, *c, *ref;
static size_t n_out;
static uint64_t unet_bytes; /* the UNet's weights as stored on the GPU */

static int setup(void **state) {
    (void)state;
    if (backend_cuda_count() < 1) return 0;
    struct err err = {0};
    snprintf(ckpt_path, sizeof ckpt_path, "/tmp/kiln_test_engine_cuda_%d.safetensors", (int)getpid());
    if (golden_tiny_ckpt(ckpt_path, &err) || ckpt_open(&golden, KILN_TEST_DATA "/ref/tiny_golden.safetensors", &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    size_t n;
    x = golden_read(&golden, "unet.x", &n);
    t = golden_read(&golden, "unet.timesteps", &n);
    c = golden_read(&golden, "unet.context", &n);
    float *want = golden_read(&golden, "unet.out", &n_out);
    mem_free(want);
    ref = mem_alloc(n_out * sizeof(float));
    /* the reference: the whole model resident on GPU 0 */
    struct engine *e = engine_new_cuda(0, NULL, NULL, &err);
    if (!e) return fprintf(stderr, "%s\n", err.msg), -1;
    struct engine_checkpoint *ck = engine_checkpoint(e, ckpt_path, &err);
    if (!ck) return fprintf(stderr, "%s\n", err.msg), -1;
    if (ck->sd->unet.weights.n_blocks) return fprintf(stderr, "reference model streams\n"), -1;
    unet_bytes = ck->sd->unet.weights.size;
    if (unet_eval(&e->tctx, &ck->sd->unet, 2, 8, 8, x, t, c, 77, ref)) return fprintf(stderr, "%s\n", e->tctx.err.msg), -1;
    gobj_unref(&ck->obj);
    engine_free(e);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    if (!ref) return 0;
    mem_free(x);
    mem_free(t);
    mem_free(c);
    mem_free(ref);
    ckpt_close(&golden);
    unlink(ckpt_path);
    return 0;
}

#define NEED_GPU()     \
    do {               \
        if (!ref) skip(); \
    } while (0)

/* The placed model's UNet output equals the resident one's, bit for bit. */
static void check_same_output(struct engine *e, struct engine_checkpoint *ck) {
    float *out = mem_alloc(n_out * sizeof(float));
    if (unet_eval(&e->tctx, &ck->sd->unet, 2, 8, 8, x, t, c, 77, out)) fail_msg("unet_eval: %s", e->tctx.err.msg);
    assert_memory_equal(out, ref, n_out * sizeof(float));
    mem_free(out);
}

static void test_automatic_when_over_budget(void **state) {
    (void)state;
    NEED_GPU();
    struct err err = {0};
    struct engine *e = engine_new_cuda(0, NULL, NULL, &err);
    assert_non_null(e);
    uint64_t bytes = 0;
    assert_int_equal(engine_checkpoint_estimate(e, ckpt_path, &bytes, &err), 0);
    /* room for everything but a third of the UNet: it must give up some blocks */
    uint64_t budget = bytes - unet_bytes / 3;
    engine_set_budget(e, budget);
    struct engine_checkpoint *ck = engine_checkpoint(e, ckpt_path, &err);
    if (!ck) fail_msg("%s", err.msg);
    const struct nn_weights *w = &ck->sd->unet.weights;
    assert_true(w->n_blocks > 0 && w->stream.n_blocks > 0);
    assert_true(w->bytes_host > 0);
    assert_int_equal(w->bytes_peer, 0); /* no other GPU offered (peer_free is 0) */
    assert_true(ck->bytes <= budget); /* within the budget, staging included */
    assert_string_equal(ck->placement, "auto");
    assert_non_null(strstr(ck->where, "cuda:0 "));
    assert_non_null(strstr(ck->where, ", cpu "));
    check_same_output(e, ck);
    gobj_unref(&ck->obj);
    engine_free(e);
}

/* With a second GPU offering room for part of what does not fit, the automatic plan puts blocks
 * there first and the rest in host memory. */
static void test_automatic_with_a_peer(void **state) {
    (void)state;
    NEED_GPU();
    if (backend_cuda_count() < 2) skip();
    struct err err = {0};
    struct engine *e = engine_new_cuda(0, NULL, NULL, &err);
    assert_non_null(e);
    uint64_t bytes = 0;
    assert_int_equal(engine_checkpoint_estimate(e, ckpt_path, &bytes, &err), 0);
    uint64_t budget = bytes - unet_bytes / 2;
    engine_set_budget(e, budget);
    e->n_cuda = 2;                      /* what the worker sets from the devices kiln runs on */
    e->peer_free[1] = unet_bytes / 6;   /* GPU 1 holds some of the rest */
    struct engine_checkpoint *ck = engine_checkpoint(e, ckpt_path, &err);
    if (!ck) fail_msg("%s", err.msg);
    const struct nn_weights *w = &ck->sd->unet.weights;
    assert_true(w->bytes_peer > 0 && w->bytes_peer <= unet_bytes / 6);
    assert_true(w->bytes_host > 0);
    assert_true(ck->bytes <= budget);
    assert_non_null(strstr(ck->where, ", cuda:1 "));
    assert_non_null(strstr(ck->where, ", cpu "));
    check_same_output(e, ck);
    gobj_unref(&ck->obj);
    engine_free(e);
}

static void test_explicit_placement(void **state) {
    (void)state;
    NEED_GPU();
    struct err err = {0};
    struct engine *e = engine_new_cuda(0, NULL, NULL, &err);
    assert_non_null(e);
    for (int prefetch = 0; prefetch <= 1; prefetch++) {
        struct engine_checkpoint *ck = engine_checkpoint_placed(e, ckpt_path, "cuda:0,40%; cpu,*", prefetch, &err);
        if (!ck) fail_msg("%s", err.msg);
        assert_true(ck->sd->unet.weights.bytes_host > 0);
        assert_string_equal(ck->placement, prefetch ? "cuda:0,40%;cpu,*" : "cuda:0,40%;cpu,* noprefetch");
        check_same_output(e, ck);
        gobj_unref(&ck->obj);
    }
    /* "auto" with no budget: everything resident */
    struct engine_checkpoint *ck = engine_checkpoint_placed(e, ckpt_path, "auto", true, &err);
    if (!ck) fail_msg("%s", err.msg);
    assert_int_equal(ck->sd->unet.weights.n_blocks, 0);
    gobj_unref(&ck->obj);
    /* refused: a bad string, a GPU that does not exist */
    assert_null(engine_checkpoint_placed(e, ckpt_path, "cuda:0,12", true, &err));
    if (!strstr(err.msg, "weights placement")) fail_msg("unexpected message: %s", err.msg);
    err_clear(&err); /* the first error set sticks */
    assert_null(engine_checkpoint_placed(e, ckpt_path, "cuda:40,*;cpu,*", true, &err));
    if (!strstr(err.msg, "names cuda:40")) fail_msg("unexpected message: %s", err.msg);
    engine_free(e);
}

/* A model-shaped warm-up with stand-in weights (engine_warmup_model) leaves nothing behind that
 * changes the real model's results: the UNet with the context from the host and from the
 * device (the sampler's path, hoisted plan), and the VAE, bit for bit as on an engine that did
 * not warm up. */
static void run_real(struct engine *e, float *unet_host, float *unet_dev, float *img) {
    struct err err = {0};
    struct engine_checkpoint *ck = engine_checkpoint(e, ckpt_path, &err);
    if (!ck) fail_msg("%s", err.msg);
    if (unet_eval(&e->tctx, &ck->sd->unet, 2, 8, 8, x, t, c, 77, unet_host)) fail_msg("%s", e->tctx.err.msg);
    size_t ctx_bytes = 2 * 77 * (size_t)ck->sd->unet.config.context_dim * sizeof(float);
    void *buf = engine_ctx_buffer(e, ctx_bytes);
    assert_non_null(buf);
    struct tensor view = {.dtype = DTYPE_F32, .ndim = 1, .shape = {(int64_t)(ctx_bytes / 4), 1, 1, 1}, .data = buf};
    assert_int_equal(backend_tensor_set(e->backend, &view, c, 0, ctx_bytes), 0);
    for (int i = 0; i < 2; i++) /* twice: the second run skips the hoisted nodes */
        if (unet_eval_dev(&e->tctx, &ck->sd->unet, 2, 8, 8, x, t, buf, 77, unet_dev)) fail_msg("%s", e->tctx.err.msg);
    if (vae_decode_image(&e->tctx, &ck->sd->vae, 1, 8, 8, x, img)) fail_msg("%s", e->tctx.err.msg);
    gobj_unref(&ck->obj);
}

static void test_warmup_model(void **state) {
    (void)state;
    NEED_GPU();
    struct err err = {0};
    size_t n_img = 64 * 8 * 8 * 3;
    float *a[3] = {mem_alloc(n_out * 4), mem_alloc(n_out * 4), mem_alloc(n_img * 4)};
    float *b[3] = {mem_alloc(n_out * 4), mem_alloc(n_out * 4), mem_alloc(n_img * 4)};
    struct engine *e = engine_new_cuda(0, NULL, NULL, &err);
    assert_non_null(e);
    run_real(e, a[0], a[1], a[2]);
    engine_free(e);

    e = engine_new_cuda(0, NULL, NULL, &err);
    assert_non_null(e);
    const struct engine_warm_shape ws = {.batch = 1, .h = 8, .w = 8, .entries = 2, .n_tokens = 77};
    if (engine_warmup_model(e, ckpt_path, &ws, &err)) fail_msg("%s", err.msg);
    assert_int_equal(e->n_loaded, 0); /* nothing kept */
    run_real(e, b[0], b[1], b[2]);
    engine_free(e);
    assert_memory_equal(a[0], b[0], n_out * 4);
    assert_memory_equal(a[1], b[1], n_out * 4);
    assert_memory_equal(a[0], ref, n_out * 4);
    assert_memory_equal(a[2], b[2], n_img * 4);
    /* refused: a shape out of range, a file that is not there */
    const struct engine_warm_shape bad = {.batch = 0, .h = 8, .w = 8, .entries = 2, .n_tokens = 77};
    e = engine_new_cuda(0, NULL, NULL, &err);
    assert_int_equal(engine_warmup_model(e, ckpt_path, &bad, &err), STATUS_ERR_INVALID);
    err_clear(&err);
    assert_true(engine_warmup_model(e, "/nonexistent/x.safetensors", &ws, &err) < 0);
    engine_free(e);
    for (int i = 0; i < 3; i++) mem_free(a[i]), mem_free(b[i]);
}

/* The Euler loop on the device (graph/nodes/sampling.c DEV_EULER, op_sample_step) gives the host
 * loop's latent bit for bit: batch 2, with CFG (two entries) and without (cfg 1), euler and ddim. */
extern const struct node_class NODE_KSampler;

static struct conditioning *cond_of(const char *name) {
    size_t n;
    float *v = golden_read(&golden, name, &n);
    struct conditioning *cd = conditioning_new(1);
    cd->items[0].n_tokens = 77;
    cd->items[0].dim = (int64_t)n / 77;
    cd->items[0].context = v;
    return cd;
}

static float *ksample(struct engine *e, struct engine_checkpoint *ck, const char *sampler, double cfg, bool device) {
    if (device) unsetenv("KILN_DEVICE_SAMPLER");
    else setenv("KILN_DEVICE_SAMPLER", "0", 1);
    struct graph_paths paths = {.models = "/tmp", .input = "/tmp", .output = "/tmp", .temp = "/tmp"};
    json_t *ui = json_object();
    struct err err = {0};
    struct model_value *model = model_value_new(ck, "MODEL");
    struct conditioning *pos = cond_of("txt2img.cond"), *neg = cond_of("txt2img.uncond");
    struct latent *empty = latent_new(2, 4, 8, 8);
    struct value in[10] = {
        {.kind = VALUE_OBJECT, .obj = &model->obj}, {.kind = VALUE_INT, .i = 42},
        {.kind = VALUE_INT, .i = 4},                {.kind = VALUE_FLOAT, .f = cfg},
        {.kind = VALUE_STRING, .s = (char *)sampler}, {.kind = VALUE_STRING, .s = "normal"},
        {.kind = VALUE_OBJECT, .obj = &pos->obj},   {.kind = VALUE_OBJECT, .obj = &neg->obj},
        {.kind = VALUE_OBJECT, .obj = &empty->obj}, {.kind = VALUE_FLOAT, .f = 1.0},
    };
    struct value out[1] = {{0}};
    struct node_run run = {.node_id = "3", .cls = &NODE_KSampler, .paths = &paths, .ui = ui, .engine = e};
    if (NODE_KSampler.run(&run, in, out, &err)) fail_msg("KSampler (%s, cfg %g, %s): %s", sampler, cfg,
                                                         device ? "device" : "host", err.msg);
    const struct latent *lat = (const struct latent *)out[0].obj;
    size_t n = (size_t)(lat->b * lat->c * lat->h * lat->w);
    float *r = mem_alloc(n * sizeof(float));
    memcpy(r, lat->samples, n * sizeof(float));
    value_deinit(&out[0]);
    gobj_unref(&model->obj);
    gobj_unref(&pos->obj);
    gobj_unref(&neg->obj);
    gobj_unref(&empty->obj);
    json_decref(ui);
    unsetenv("KILN_DEVICE_SAMPLER");
    return r;
}

static void test_device_sampler(void **state) {
    (void)state;
    NEED_GPU();
    struct err err = {0};
    struct engine *e = engine_new_cuda(0, NULL, NULL, &err);
    assert_non_null(e);
    struct engine_checkpoint *ck = engine_checkpoint(e, ckpt_path, &err);
    if (!ck) fail_msg("%s", err.msg);
    const char *samplers[2] = {"euler", "ddim"};
    const double cfgs[2] = {8.0, 1.0};
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < 2; k++) {
            float *host = ksample(e, ck, samplers[i], cfgs[k], false);
            float *dev = ksample(e, ck, samplers[i], cfgs[k], true);
            size_t n = 2 * 4 * 8 * 8;
            for (size_t j = 0; j < n; j++)
                if (memcmp(&host[j], &dev[j], 4) != 0)
                    fail_msg("%s, cfg %g: latent %zu is %.9g on the device, %.9g on the host", samplers[i], cfgs[k], j,
                             (double)dev[j], (double)host[j]);
            bool moved = false;
            for (size_t j = 0; j < n && !moved; j++) moved = host[j] != 0.0f;
            assert_true(moved);
            mem_free(host);
            mem_free(dev);
        }
    gobj_unref(&ck->obj);
    engine_free(e);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_device_sampler),
        cmocka_unit_test(test_warmup_model),
        cmocka_unit_test(test_automatic_when_over_budget),
        cmocka_unit_test(test_automatic_with_a_peer),
        cmocka_unit_test(test_explicit_placement),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
