/* tests/unit/graph/test_txt2img.c -- the model nodes end to end against the independent
 * PyTorch reference: KSampler (euler, normal, cfg 8, 2 steps, seed 42) on the tiny checkpoint
 * with the reference's conditioning, then VAEDecode and SaveImage's uint8 conversion, compared
 * with txt2img.* of tests/data/ref/tiny_golden.safetensors (see tests/ref/README.md). Also
 * CLIPTextEncode's error when no tokenizer files can be found. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "golden.h"

#include "base/mem.h"
#include "graph/engine.h"
#include "graph/registry.h"
#include "io/png.h"
#include "model/ckpt_gen.h"
#include "model/tokenizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern const struct node_class NODE_KSampler, NODE_VAEDecode, NODE_CLIPTextEncode;

static char dir[256], ckpt_path[512];
static struct ckpt golden;
static struct backend *be;
static struct engine engine;
static struct engine_checkpoint *ck;

static int setup(void **state) {
    struct err err = {0};
    snprintf(dir, sizeof dir, "/tmp/kiln_test_txt2img_%d", (int)getpid());
    mkdir(dir, 0755);
    snprintf(ckpt_path, sizeof ckpt_path, "%s/tiny.safetensors", dir);
    if (golden_tiny_ckpt(ckpt_path, &err) ||
        ckpt_open(&golden, KILN_TEST_DATA "/ref/tiny_golden.safetensors", &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    be = backend_cpu_new(0);
    engine_init(&engine, be, dir, NULL);
    ck = engine_checkpoint(&engine, ckpt_path, &err);
    if (!ck) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    gobj_unref(&ck->obj);
    engine_deinit(&engine);
    backend_free(be);
    ckpt_close(&golden);
    unlink(ckpt_path);
    rmdir(dir);
    return 0;
}

static struct conditioning *cond_from(const char *name) {
    size_t n;
    float *v = golden_read(&golden, name, &n);
    struct conditioning *c = conditioning_new(1);
    c->items[0].n_tokens = 77;
    c->items[0].dim = (int64_t)n / 77;
    c->items[0].context = v;
    return c;
}

static struct node_run make_run(const struct node_class *cls, json_t *ui, const struct graph_paths *paths) {
    return (struct node_run){.node_id = "1", .cls = cls, .paths = paths, .ui = ui, .engine = &engine};
}

static void test_ksampler_vae_decode(void **state) {
    struct graph_paths paths = {.models = dir, .input = dir, .output = dir, .temp = dir};
    json_t *ui = json_object();
    struct err err = {0};
    struct model_value *model = model_value_new(ck, "MODEL");
    struct model_value *vae = model_value_new(ck, "VAE");
    struct conditioning *pos = cond_from("txt2img.cond"), *neg = cond_from("txt2img.uncond");
    struct latent *empty = latent_new(1, 4, 8, 8);

    struct value in[10] = {
        {.kind = VALUE_OBJECT, .obj = &model->obj},
        {.kind = VALUE_INT, .i = 42},
        {.kind = VALUE_INT, .i = 2},
        {.kind = VALUE_FLOAT, .f = 8.0},
        {.kind = VALUE_STRING, .s = "euler"},
        {.kind = VALUE_STRING, .s = "normal"},
        {.kind = VALUE_OBJECT, .obj = &pos->obj},
        {.kind = VALUE_OBJECT, .obj = &neg->obj},
        {.kind = VALUE_OBJECT, .obj = &empty->obj},
        {.kind = VALUE_FLOAT, .f = 1.0},
    };
    struct value out[1] = {{0}};
    struct node_run run = make_run(&NODE_KSampler, ui, &paths);
    if (NODE_KSampler.run(&run, in, out, &err)) fail_msg("KSampler: %s", err.msg);
    const struct latent *lat = (const struct latent *)out[0].obj;
    size_t n;
    float *want = golden_read(&golden, "txt2img.latent_out", &n);
    assert_int_equal((size_t)(lat->b * lat->c * lat->h * lat->w), n);
    double e = golden_rel_err(lat->samples, want, n);
    printf("  KSampler latent: rel err %.3g\n", e);
    assert_true(e < 1e-4);
    mem_free(want);

    struct value din[2] = {out[0], {.kind = VALUE_OBJECT, .obj = &vae->obj}};
    struct value dout[1] = {{0}};
    run = make_run(&NODE_VAEDecode, ui, &paths);
    if (NODE_VAEDecode.run(&run, din, dout, &err)) fail_msg("VAEDecode: %s", err.msg);
    const struct image *img = (const struct image *)dout[0].obj;
    float *want_img = golden_read(&golden, "txt2img.image", &n);
    assert_int_equal((size_t)(img->b * img->h * img->w * img->c), n);
    e = golden_rel_err(img->data, want_img, n);
    printf("  VAEDecode image: rel err %.3g\n", e);
    assert_true(e < 1e-4);

    /* SaveImage's conversion (truncation) against the reference's uint8 pixels: equal, or off
     * by one where a value sits on an integer boundary */
    const struct ckpt_tensor *u8 = ckpt_find(&golden, "txt2img.png_u8");
    assert_non_null(u8);
    uint8_t *px = mem_alloc(n);
    png_from_float(img->data, px, n);
    int off_by_one = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)px[i] - (int)((const uint8_t *)u8->data)[i]);
        assert_true(d <= 1);
        off_by_one += d;
    }
    printf("  uint8 pixels: %d of %zu off by one\n", off_by_one, n);
    assert_true(off_by_one < (int)n / 100);
    mem_free(px);
    mem_free(want_img);
    value_deinit(&dout[0]);
    value_deinit(&out[0]);
    gobj_unref(&model->obj);
    gobj_unref(&vae->obj);
    gobj_unref(&pos->obj);
    gobj_unref(&neg->obj);
    gobj_unref(&empty->obj);
    json_decref(ui);
}

static void test_missing_tokenizer(void **state) {
    /* the checkpoint's folder has no vocab.json/merges.txt and no --tokenizer was given */
    struct graph_paths paths = {.models = dir, .input = dir, .output = dir, .temp = dir};
    json_t *ui = json_object();
    struct err err = {0};
    struct clip_value *clip = clip_value_new(ck, -1);
    struct value in[2] = {{.kind = VALUE_STRING, .s = "a photo of a cat"}, {.kind = VALUE_OBJECT, .obj = &clip->obj}};
    struct value out[1] = {{0}};
    struct node_run run = make_run(&NODE_CLIPTextEncode, ui, &paths);
    assert_int_not_equal(NODE_CLIPTextEncode.run(&run, in, out, &err), 0);
    printf("  %s\n", err.msg);
    assert_non_null(strstr(err.msg, "vocab.json"));
    assert_non_null(strstr(err.msg, "tokenizers/clip-l"));
    gobj_unref(&clip->obj);
    json_decref(ui);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ksampler_vae_decode),
        cmocka_unit_test(test_missing_tokenizer),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
