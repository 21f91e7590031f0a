/* tests/unit/graph/test_nodes.c -- the model-free nodes (graph/nodes/latent.c, image.c,
 * conditioning.c, save.c): output shapes and values as ComfyUI's nodes.py computes them, and
 * a LoadImage -> ImageScale -> SaveImage/PreviewImage prompt run end to end through the
 * executor (files, counters, text chunks, UI, refused paths). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/mem.h"
#include "base/status.h"
#include "graph/exec.h"
#include "graph/json.h"
#include "graph/nodes/save.h"
#include "base/fs.h"
#include "io/png_async.h"
#include "io/png.h"

#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char root[256];
static char dir_in[300], dir_out[300], dir_temp[300];
static struct graph_paths paths;

static int setup(void **s) {
    snprintf(root, sizeof root, "/tmp/kiln_nodes_XXXXXX");
    if (!mkdtemp(root)) return -1;
    snprintf(dir_in, sizeof dir_in, "%s/input", root);
    snprintf(dir_out, sizeof dir_out, "%s/output", root);
    snprintf(dir_temp, sizeof dir_temp, "%s/temp", root);
    mkdir(dir_in, 0777);
    mkdir(dir_out, 0777);
    paths = (struct graph_paths){.input = dir_in, .output = dir_out, .temp = dir_temp, .models = root};
    /* LoadImage inputs: the PIL-written files of tests/data/graph/png */
    char cmd[800];
    snprintf(cmd, sizeof cmd, "cp %s/graph/png/*.png '%s/'", KILN_TEST_DATA, dir_in);
    return system(cmd) == 0 ? 0 : -1;
}

static int teardown(void **s) {
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    return system(cmd) == 0 ? 0 : -1;
}

/* Calls a class's run directly with the given inputs. */
static int call(const char *cls, const struct value *in, struct value *out, json_t *ui, struct err *err) {
    const struct node_class *c = graph_class_find(cls);
    assert_non_null(c);
    struct node_run ctx = {.node_id = "1", .cls = c, .paths = &paths, .ui = ui};
    return c->run(&ctx, in, out, err);
}

static struct value V_INT(int64_t i) { return (struct value){.kind = VALUE_INT, .i = i}; }
static struct value V_F(double f) { return (struct value){.kind = VALUE_FLOAT, .f = f}; }
static struct value V_S(const char *s) { return (struct value){.kind = VALUE_STRING, .s = (char *)s}; }
static struct value V_O(void *o) { return (struct value){.kind = VALUE_OBJECT, .obj = o}; }

static struct latent *ramp_latent(int64_t b, int64_t c, int64_t h, int64_t w) {
    struct latent *l = latent_new(b, c, h, w);
    for (int64_t i = 0; i < b * c * h * w; i++) l->samples[i] = (float)i;
    return l;
}

/* ===== Latent nodes ===== */

static void test_empty_latent(void **s) {
    struct value in[3] = {V_INT(640), V_INT(520), V_INT(2)}, out[1] = {0};
    struct err err = {0};
    assert_int_equal(call("EmptyLatentImage", in, out, NULL, &err), 0);
    struct latent *l = value_latent(&out[0]);
    assert_non_null(l);
    assert_true(l->b == 2 && l->c == 4 && l->h == 65 && l->w == 80); /* [B, 4, H // 8, W // 8] */
    for (int64_t i = 0; i < 2 * 4 * 65 * 80; i++) assert_true(l->samples[i] == 0.0f);
    assert_null(l->batch_index);
    value_deinit(&out[0]);
}

static void test_latent_upscale(void **s) {
    struct latent *src = ramp_latent(1, 4, 48, 64); /* a 512x384 image's latent */
    struct err err = {0};
    struct value out[1] = {0};
    /* width = height = 0 passes the same object through */
    struct value in0[5] = {V_O(src), V_S("bilinear"), V_INT(0), V_INT(0), V_S("disabled")};
    assert_int_equal(call("LatentUpscale", in0, out, NULL, &err), 0);
    assert_ptr_equal(out[0].obj, &src->obj);
    assert_int_equal(src->obj.refs, 2);
    value_deinit(&out[0]);
    /* width 0 keeps the aspect: width = max(64, round(64 * 600 / 48)) = 800 -> [75, 100] */
    struct value in1[5] = {V_O(src), V_S("nearest-exact"), V_INT(0), V_INT(600), V_S("disabled")};
    assert_int_equal(call("LatentUpscale", in1, out, NULL, &err), 0);
    struct latent *l = value_latent(&out[0]);
    assert_true(l->b == 1 && l->c == 4 && l->h == 75 && l->w == 100);
    value_deinit(&out[0]);
    /* each side at least 64 px; 2x nearest-exact repeats each sample twice */
    struct value in2[5] = {V_O(src), V_S("nearest-exact"), V_INT(1024), V_INT(8), V_S("disabled")};
    assert_int_equal(call("LatentUpscale", in2, out, NULL, &err), 0);
    l = value_latent(&out[0]);
    assert_true(l->h == 8 && l->w == 128);
    struct value in3[5] = {V_O(src), V_S("nearest-exact"), V_INT(1024), V_INT(768), V_S("disabled")};
    value_deinit(&out[0]);
    assert_int_equal(call("LatentUpscale", in3, out, NULL, &err), 0);
    l = value_latent(&out[0]);
    assert_true(l->h == 96 && l->w == 128);
    for (int64_t c = 0; c < 4; c++)
        for (int64_t y = 0; y < 96; y++)
            for (int64_t x = 0; x < 128; x++)
                assert_true(l->samples[(c * 96 + y) * 128 + x] == src->samples[(c * 48 + y / 2) * 64 + x / 2]);
    value_deinit(&out[0]);
    gobj_unref(&src->obj);
}

static void test_latent_upscale_by(void **s) {
    struct latent *src = ramp_latent(1, 4, 3, 5);
    struct err err = {0};
    struct value out[1] = {0};
    /* Python round: 5 * 1.5 = 7.5 -> 8, 3 * 1.5 = 4.5 -> 4 (half to even) */
    struct value in[3] = {V_O(src), V_S("area"), V_F(1.5)};
    assert_int_equal(call("LatentUpscaleBy", in, out, NULL, &err), 0);
    struct latent *l = value_latent(&out[0]);
    assert_true(l->h == 4 && l->w == 8);
    value_deinit(&out[0]);
    gobj_unref(&src->obj);
}

static void test_latent_batches(void **s) {
    struct latent *src = latent_new(4, 1, 1, 2);
    for (int i = 0; i < 8; i++) src->samples[i] = (float)(i / 2); /* sample k holds k */
    struct err err = {0};
    struct value out[1] = {0};
    struct value in[3] = {V_O(src), V_INT(1), V_INT(2)};
    assert_int_equal(call("LatentFromBatch", in, out, NULL, &err), 0);
    struct latent *l = value_latent(&out[0]);
    assert_int_equal(l->b, 2);
    assert_true(l->samples[0] == 1.0f && l->samples[2] == 2.0f);
    assert_int_equal(l->batch_index[0], 1);
    assert_int_equal(l->batch_index[1], 2);
    /* batch_index past the end is clamped, length cut to what is left */
    struct value in2[3] = {V_O(src), V_INT(3), V_INT(5)};
    struct value out2[1] = {0};
    assert_int_equal(call("LatentFromBatch", in2, out2, NULL, &err), 0);
    struct latent *l2 = value_latent(&out2[0]);
    assert_int_equal(l2->b, 1);
    assert_int_equal(l2->batch_index[0], 3);
    value_deinit(&out2[0]);

    /* RepeatLatentBatch of the [1, 2] slice: batch_index continues after the range used */
    struct value in3[2] = {V_O(l), V_INT(3)};
    assert_int_equal(call("RepeatLatentBatch", in3, out2, NULL, &err), 0);
    struct latent *r = value_latent(&out2[0]);
    assert_int_equal(r->b, 6);
    int want[6] = {1, 2, 3, 4, 5, 6};
    for (int i = 0; i < 6; i++) assert_int_equal(r->batch_index[i], want[i]);
    assert_true(r->samples[4] == 1.0f && r->samples[6] == 2.0f);
    value_deinit(&out2[0]);
    /* without batch_index none is made */
    struct value in4[2] = {V_O(src), V_INT(2)};
    assert_int_equal(call("RepeatLatentBatch", in4, out2, NULL, &err), 0);
    assert_int_equal(value_latent(&out2[0])->b, 8);
    assert_null(value_latent(&out2[0])->batch_index);
    value_deinit(&out2[0]);
    value_deinit(&out[0]);
    gobj_unref(&src->obj);
}

/* ===== Conditioning ===== */

static struct conditioning *cond(int n, float base) {
    struct conditioning *c = conditioning_new(n);
    for (int i = 0; i < n; i++) {
        c->items[i].n_tokens = 2, c->items[i].dim = 3, c->items[i].pooled_dim = 2;
        c->items[i].context = mem_calloc(6, sizeof(float));
        c->items[i].pooled = mem_calloc(2, sizeof(float));
        for (int k = 0; k < 6; k++) c->items[i].context[k] = base + (float)(i * 10 + k);
        c->items[i].pooled[0] = c->items[i].pooled[1] = base + 0.5f;
    }
    return c;
}

static void test_conditioning(void **s) {
    struct conditioning *a = cond(1, 100), *b = cond(2, 200);
    struct err err = {0};
    struct value out[1] = {0};
    struct value in[2] = {V_O(a), V_O(b)};
    assert_int_equal(call("ConditioningCombine", in, out, NULL, &err), 0);
    struct conditioning *c = value_conditioning(&out[0]);
    assert_int_equal(c->n, 3);
    assert_true(c->items[0].context[5] == 105.0f);
    assert_true(c->items[2].context[0] == 210.0f);
    assert_ptr_not_equal(c->items[1].context, b->items[0].context); /* copies */
    value_deinit(&out[0]);

    struct value in2[1] = {V_O(b)};
    assert_int_equal(call("ConditioningZeroOut", in2, out, NULL, &err), 0);
    c = value_conditioning(&out[0]);
    assert_int_equal(c->n, 2);
    assert_int_equal(c->items[1].n_tokens, 2);
    for (int i = 0; i < 2; i++) {
        for (int k = 0; k < 6; k++) assert_true(c->items[i].context[k] == 0.0f);
        assert_true(c->items[i].pooled[0] == 0.0f && c->items[i].pooled[1] == 0.0f);
    }
    assert_true(b->items[0].context[1] == 201.0f); /* the input is untouched */
    value_deinit(&out[0]);
    gobj_unref(&a->obj);
    gobj_unref(&b->obj);
}

/* ===== Images ===== */

static json_t *png_ref;

static void test_load_image(void **s) {
    struct err err = {0};
    struct value out[2] = {{0}};
    /* RGBA: IMAGE = rgb / 255, MASK = 1 - alpha / 255 (values from numpy) */
    struct value in[1] = {V_S("rgba8.png")};
    assert_int_equal(call("LoadImage", in, out, NULL, &err), 0);
    struct image *im = value_image(&out[0]);
    struct mask *m = value_mask(&out[1]);
    json_t *f = json_object_get(json_object_get(png_ref, "files"), "rgba8");
    assert_true(im->b == 1 && im->h == 4 && im->w == 3 && im->c == 3);
    assert_true(m->b == 1 && m->h == 4 && m->w == 3);
    for (int i = 0; i < 4 * 3 * 3; i++)
        assert_true(im->data[i] == (float)json_real_value(json_array_get(json_object_get(f, "image"), (size_t)i)));
    for (int i = 0; i < 4 * 3; i++)
        assert_true(m->data[i] == (float)json_real_value(json_array_get(json_object_get(f, "mask"), (size_t)i)));
    value_deinit(&out[0]), value_deinit(&out[1]);
    /* no alpha (also palette + tRNS, as PIL): a 64x64 zero mask */
    struct value in2[1] = {V_S("palette_trns.png")};
    assert_int_equal(call("LoadImage", in2, out, NULL, &err), 0);
    m = value_mask(&out[1]);
    assert_true(m->h == 64 && m->w == 64);
    for (int i = 0; i < 64 * 64; i++) assert_true(m->data[i] == 0.0f);
    value_deinit(&out[0]), value_deinit(&out[1]);
    /* annotated names and escapes */
    struct value in3[1] = {V_S("../../etc/passwd")};
    assert_int_not_equal(call("LoadImage", in3, out, NULL, &err), 0);
    err_clear(&err);
    struct value in4[1] = {V_S("missing.png [output]")};
    assert_int_equal(call("LoadImage", in4, out, NULL, &err), STATUS_ERR_NOT_FOUND);
}

static void test_image_scale(void **s) {
    struct image *im = image_new(1, 4, 6, 3);
    for (int i = 0; i < 4 * 6 * 3; i++) im->data[i] = (float)i / 100.0f;
    struct err err = {0};
    struct value out[1] = {0};
    /* width 0: round(6 * 8 / 4) = 12, nearest-exact 2x */
    struct value in[5] = {V_O(im), V_S("nearest-exact"), V_INT(0), V_INT(8), V_S("disabled")};
    assert_int_equal(call("ImageScale", in, out, NULL, &err), 0);
    struct image *o = value_image(&out[0]);
    assert_true(o->b == 1 && o->h == 8 && o->w == 12 && o->c == 3);
    for (int y = 0; y < 8; y++)
        for (int x = 0; x < 12; x++)
            for (int k = 0; k < 3; k++)
                assert_true(o->data[(y * 12 + x) * 3 + k] == im->data[((y / 2) * 6 + x / 2) * 3 + k]);
    value_deinit(&out[0]);
    /* center crop to a square: 6x4 -> 4x4 drops one column on each side, then area 4x4 -> 2x2 */
    struct value in2[5] = {V_O(im), V_S("area"), V_INT(2), V_INT(2), V_S("center")};
    assert_int_equal(call("ImageScale", in2, out, NULL, &err), 0);
    o = value_image(&out[0]);
    assert_true(o->h == 2 && o->w == 2);
    float want = (im->data[(0 * 6 + 1) * 3] + im->data[(0 * 6 + 2) * 3] + im->data[(1 * 6 + 1) * 3] +
                  im->data[(1 * 6 + 2) * 3]) / 4.0f;
    assert_true(fabsf(o->data[0] - want) < 1e-6f);
    value_deinit(&out[0]);
    gobj_unref(&im->obj);
}

/* ===== A prompt end to end ===== */

static int run_text(const char *text, const char *extra, struct exec_report *rep) {
    json_t *prompt = NULL, *body = NULL, *extra_j = NULL;
    struct err err = {0};
    assert_int_equal(graph_json_loads(text, strlen(text), &prompt, &err), 0);
    if (extra) assert_int_equal(graph_json_loads(extra, strlen(extra), &extra_j, &err), 0);
    struct graph_prompt *p = NULL;
    if (graph_prompt_validate(prompt, &paths, NULL, &p, &body, &err)) fail_msg("validation: %s", err.msg);
    struct exec_opts opts = {.paths = &paths, .extra_data = extra_j};
    int rc = exec_run(p, &opts, rep);
    graph_prompt_free(p);
    json_decref(prompt);
    json_decref(extra_j);
    return rc;
}

static void expect_dump(const json_t *j, const char *want) {
    char *g = graph_json_dumps(j, -1);
    if (strcmp(g, want) != 0) fail_msg("got %s\nwant %s", g, want);
    mem_free(g);
}

static void test_save_image_prompt(void **s) {
    const char *text = "{\"1\": {\"class_type\": \"LoadImage\", \"inputs\": {\"image\": \"rgb8.png\"}, \"_meta\": "
                       "{\"title\": \"Load\"}}, \"2\": {\"class_type\": \"SaveImage\", \"inputs\": {\"images\": [\"1\", "
                       "0], \"filename_prefix\": \"run/%Load.image%_s\"}}, \"3\": {\"class_type\": \"EmptyLatentImage\","
                       " \"inputs\": {\"width\": \"512\", \"height\": 512, \"batch_size\": 1}}}";
    const char *extra = "{\"extra_pnginfo\": {\"workflow\": {\"nodes\": [1, 2.5, \"\\u00e9\"]}, \"other\": 7}}";
    struct exec_report rep;
    for (int round = 1; round <= 2; round++) {
        assert_int_equal(run_text(text, extra, &rep), 0);
        char want[256];
        snprintf(want, sizeof want,
                 "{\"2\": {\"images\": [{\"filename\": \"rgb8.png_s_%05d_.png\", \"subfolder\": \"run\", \"type\": "
                 "\"output\"}]}}",
                 round);
        expect_dump(rep.outputs, want);
        exec_report_deinit(&rep);
    }
    char file[600];
    snprintf(file, sizeof file, "%s/run/rgb8.png_s_00002_.png", dir_out);
    struct png_image img;
    struct err err = {0};
    assert_int_equal(png_read(file, &img, &err), 0);
    json_t *f = json_object_get(json_object_get(png_ref, "files"), "rgb8");
    assert_true(img.w == 6 && img.h == 5 && !img.has_alpha);
    for (int i = 0; i < 30; i++)
        for (int k = 0; k < 3; k++)
            assert_int_equal(img.rgba[i * 4 + k],
                             json_integer_value(json_array_get(json_object_get(f, "resaved"), (size_t)(i * 3 + k))));
    /* text chunks: prompt (coerced: width became 512), then each extra_pnginfo key */
    assert_int_equal(img.n_text, 3);
    assert_string_equal(img.text_keys[0], "prompt");
    assert_string_equal(img.text_values[0],
                        "{\"1\": {\"class_type\": \"LoadImage\", \"inputs\": {\"image\": \"rgb8.png\"}, \"_meta\": "
                        "{\"title\": \"Load\"}}, \"2\": {\"class_type\": \"SaveImage\", \"inputs\": {\"images\": [\"1\", "
                        "0], \"filename_prefix\": \"run/%Load.image%_s\"}}, \"3\": {\"class_type\": "
                        "\"EmptyLatentImage\", \"inputs\": {\"width\": \"512\", \"height\": 512, \"batch_size\": 1}}}");
    assert_string_equal(img.text_keys[1], "workflow");
    assert_string_equal(img.text_values[1], "{\"nodes\": [1, 2.5, \"\\u00e9\"]}");
    assert_string_equal(img.text_keys[2], "other");
    assert_string_equal(img.text_values[2], "7");
    png_image_deinit(&img);
}

static void test_preview_and_refusals(void **s) {
    struct exec_report rep;
    assert_int_equal(run_text("{\"1\": {\"class_type\": \"LoadImage\", \"inputs\": {\"image\": \"la8.png\"}},"
                              " \"2\": {\"class_type\": \"PreviewImage\", \"inputs\": {\"images\": [\"1\", 0]}}}",
                              NULL, &rep),
                     0);
    json_t *im = json_array_get(json_object_get(json_object_get(rep.outputs, "2"), "images"), 0);
    const char *name = json_string_value(json_object_get(im, "filename"));
    regex_t re;
    assert_int_equal(regcomp(&re, "^ComfyUI_temp_[a-z]{5}_00001_\\.png$", REG_EXTENDED), 0);
    if (regexec(&re, name, 0, NULL, 0) != 0) fail_msg("preview name %s", name);
    regfree(&re);
    expect_dump(json_object_get(im, "type"), "\"temp\"");
    expect_dump(json_object_get(im, "subfolder"), "\"\"");
    char file[600];
    snprintf(file, sizeof file, "%s/%s", dir_temp, name);
    struct stat st;
    assert_int_equal(stat(file, &st), 0);
    exec_report_deinit(&rep);

    /* a prefix leaving the output folder fails the node, like ComfyUI's raise Exception */
    assert_int_equal(run_text("{\"1\": {\"class_type\": \"LoadImage\", \"inputs\": {\"image\": \"la8.png\"}},"
                              " \"2\": {\"class_type\": \"SaveImage\", \"inputs\": {\"images\": [\"1\", 0],"
                              " \"filename_prefix\": \"../escape\"}}}",
                              NULL, &rep),
                     STATUS_ERR_INVALID);
    assert_string_equal(rep.error.node_id, "2");
    assert_string_equal(rep.error.exception_type, "Exception");
    assert_non_null(strstr(rep.error.exception_message, "Saving image outside the output folder is not allowed"));
    exec_report_deinit(&rep);
}

static void test_save_batch_num(void **s) {
    struct image *im = image_new(2, 2, 2, 3);
    for (int i = 0; i < 24; i++) im->data[i] = i < 12 ? 0.25f : 0.75f;
    json_t *ui = json_object();
    struct err err = {0};
    struct value in[2] = {V_O(im), V_S("b_%batch_num%")}, out[1] = {0};
    assert_int_equal(call("SaveImage", in, out, ui, &err), 0);
    expect_dump(ui, "{\"images\": [{\"filename\": \"b_0_00001_.png\", \"subfolder\": \"\", \"type\": \"output\"}, "
                    "{\"filename\": \"b_1_00002_.png\", \"subfolder\": \"\", \"type\": \"output\"}]}");
    char file[600];
    snprintf(file, sizeof file, "%s/b_1_00002_.png", dir_out);
    struct png_image img;
    assert_int_equal(png_read(file, &img, &err), 0);
    assert_int_equal(img.rgba[0], 191); /* trunc(255 * 0.75) */
    assert_int_equal(img.n_text, 0);    /* no prompt given: no chunks */
    png_image_deinit(&img);
    snprintf(file, sizeof file, "%s/b_0_00001_.png", dir_out);
    assert_int_equal(png_read(file, &img, &err), 0);
    assert_int_equal(img.rgba[0], 63); /* trunc(255 * 0.25) */
    png_image_deinit(&img);
    json_decref(ui);
    gobj_unref(&im->obj);
}

/* A batch of 17 (the 8-bit conversion splits the batch into parts across threads): every file
 * holds its own image's pixels. */
static void test_save_large_batch(void **s) {
    enum { NB = 17 };
    struct image *im = image_new(NB, 3, 5, 3);
    for (int b = 0; b < NB; b++)
        for (int i = 0; i < 45; i++) im->data[b * 45 + i] = (float)b / 20.0f + (float)i / 1000.0f;
    json_t *ui = json_object();
    struct err err = {0};
    struct value in[2] = {V_O(im), V_S("big_%batch_num%")}, out[1] = {0};
    assert_int_equal(call("SaveImage", in, out, ui, &err), 0);
    for (int b = 0; b < NB; b++) {
        char file[600];
        snprintf(file, sizeof file, "%s/big_%d_%05d_.png", dir_out, b, b + 1);
        struct png_image img;
        assert_int_equal(png_read(file, &img, &err), 0);
        for (int i = 0; i < 45; i++) {
            float v = (float)b / 20.0f + (float)i / 1000.0f;
            assert_int_equal(img.rgba[(i / 3) * 4 + i % 3], (int)(255.0f * v)); /* RGB of pixel i / 3 */
        }
        png_image_deinit(&img);
    }
    json_decref(ui);
    gobj_unref(&im->obj);
}

/* The bytes of a file under the output folder. */
static void *read_out(const char *name, size_t *len) {
    char file[600];
    snprintf(file, sizeof file, "%s/%s", dir_out, name);
    char *data = NULL;
    int rc = fs_read_whole(file, 64u << 20, &data, len);
    if (rc) fail_msg("cannot read %s: %d", file, rc);
    return data;
}

/* Encoding ahead (save_ahead_begin / save_ahead_submit, as VAEDecode calls them): a SaveImage
 * fed by output 0 of node 8 takes the PNGs made ahead (the batch is taken afterwards) and its
 * files are byte for byte those it makes itself; PreviewImage's level is found too; nothing is
 * started without such a consumer; a consumer writing other text chunks (--disable-metadata)
 * leaves them and encodes itself. */
static void test_save_ahead(void **s) {
    enum { NB = 3, H = 40, W = 70 };
    const char *text = "{\"8\": {\"class_type\": \"VAEDecode\", \"inputs\": {}}, \"9\": {\"class_type\": \"SaveImage\","
                       " \"inputs\": {\"images\": [\"8\", 0], \"filename_prefix\": \"ahead\"}}}";
    json_error_t je;
    json_t *prompt = json_loads(text, 0, &je);
    assert_non_null(prompt);
    struct image *im = image_new(NB, H, W, 3), *copy = image_new(NB, H, W, 3);
    for (int i = 0; i < NB * H * W * 3; i++) im->data[i] = copy->data[i] = (float)((i * 7919) % 1000) / 999.0f;
    const struct node_class *save = graph_class_find("SaveImage");
    struct node_run producer = {.node_id = "8", .cls = graph_class_find("VAEDecode"), .paths = &paths, .prompt = prompt};
    save_ahead_begin(&producer, im);
    assert_non_null(im->png_ahead);
    for (int b = 0; b < NB; b++) save_ahead_submit(im, b);
    char *dump = graph_json_dumps(prompt, -1);
    struct png_text t[] = {{"prompt", dump}};
    assert_true(png_async_matches(im->png_ahead, NB, W, H, 3, t, 1, 4));

    /* --disable-metadata: other text chunks, so SaveImage encodes itself and leaves them */
    struct err err = {0};
    json_t *ui = json_object();
    struct node_run bare = {.node_id = "9", .cls = save, .paths = &paths, .prompt = prompt, .ui = ui,
                            .disable_metadata = true};
    struct value in[2] = {V_O(im), V_S("bare")}, out[1] = {0};
    assert_int_equal(save->run(&bare, in, out, &err), 0);
    assert_true(png_async_matches(im->png_ahead, NB, W, H, 3, t, 1, 4));
    struct png_image img;
    char file[600];
    snprintf(file, sizeof file, "%s/bare_00001_.png", dir_out);
    assert_int_equal(png_read(file, &img, &err), 0);
    assert_int_equal(img.n_text, 0);
    png_image_deinit(&img);
    json_decref(ui);

    /* the consumer: takes them; the files equal SaveImage's own encoding of the same pixels */
    ui = json_object();
    struct node_run consumer = {.node_id = "9", .cls = save, .paths = &paths, .prompt = prompt, .ui = ui};
    in[1] = V_S("ahead");
    assert_int_equal(save->run(&consumer, in, out, &err), 0);
    assert_false(png_async_matches(im->png_ahead, NB, W, H, 3, t, 1, 4)); /* taken */
    json_decref(ui);
    ui = json_object();
    consumer.ui = ui;
    struct value in2[2] = {V_O(copy), V_S("plain")};
    assert_null(copy->png_ahead);
    assert_int_equal(save->run(&consumer, in2, out, &err), 0);
    json_decref(ui);
    for (int b = 0; b < NB; b++) {
        char a_name[64], p_name[64];
        snprintf(a_name, sizeof a_name, "ahead_%05d_.png", b + 1);
        snprintf(p_name, sizeof p_name, "plain_%05d_.png", b + 1);
        size_t a_len, p_len;
        void *a = read_out(a_name, &a_len), *p = read_out(p_name, &p_len);
        assert_int_equal(a_len, p_len);
        assert_memory_equal(a, p, a_len);
        mem_free(a);
        mem_free(p);
    }
    gobj_unref(&im->obj);
    gobj_unref(&copy->obj);
    mem_free(dump);
    json_decref(prompt);

    /* PreviewImage's level 1; no consumer of output 0 of node 8: nothing started */
    const char *others[] = {
        "{\"9\": {\"class_type\": \"PreviewImage\", \"inputs\": {\"images\": [\"8\", 0]}}}",
        "{\"9\": {\"class_type\": \"SaveImage\", \"inputs\": {\"images\": [\"7\", 0], \"filename_prefix\": \"x\"}}}",
        "{\"9\": {\"class_type\": \"SaveImage\", \"inputs\": {\"images\": [\"8\", 1], \"filename_prefix\": \"x\"}}}",
        "{\"9\": {\"class_type\": \"ImageScale\", \"inputs\": {\"image\": [\"8\", 0]}}}",
    };
    for (size_t k = 0; k < sizeof others / sizeof *others; k++) {
        prompt = json_loads(others[k], 0, &je);
        assert_non_null(prompt);
        im = image_new(2, 8, 8, 3);
        producer.prompt = prompt;
        save_ahead_begin(&producer, im);
        if (k == 0) {
            assert_non_null(im->png_ahead);
            save_ahead_submit(im, 0);
            save_ahead_submit(im, 1);
            dump = graph_json_dumps(prompt, -1);
            t[0].text = dump;
            assert_true(png_async_matches(im->png_ahead, 2, 8, 8, 3, t, 1, 1));
            mem_free(dump);
        } else {
            assert_null(im->png_ahead);
        }
        gobj_unref(&im->obj); /* frees the encoder with the image, PNGs untaken */
        json_decref(prompt);
    }
}

int main(void) {
    json_error_t je;
    png_ref = json_load_file(KILN_TEST_DATA "/graph/png_ref.json", 0, &je);
    if (!png_ref) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_latent),       cmocka_unit_test(test_latent_upscale),
        cmocka_unit_test(test_latent_upscale_by),  cmocka_unit_test(test_latent_batches),
        cmocka_unit_test(test_conditioning),       cmocka_unit_test(test_load_image),
        cmocka_unit_test(test_image_scale),        cmocka_unit_test(test_save_image_prompt),
        cmocka_unit_test(test_preview_and_refusals), cmocka_unit_test(test_save_batch_num),
        cmocka_unit_test(test_save_large_batch),   cmocka_unit_test(test_save_ahead),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    json_decref(png_ref);
    return rc;
}
