/* tests/unit/graph/test_registry.c -- graph/registry.c: /object_info entries in ComfyUI
 * v0.3.64's shape and key order (expected text written from ComfyUI's server.py node_info and
 * nodes.py INPUT_TYPES), lookups and test registrations, model folder listings. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/mem.h"
#include "base/status.h"
#include "graph/json.h"
#include "graph/registry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char root[256];

static void mk(const char *rel, bool dir) {
    char p[600];
    snprintf(p, sizeof p, "%s/%s", root, rel);
    if (dir) {
        assert_int_equal(mkdir(p, 0777), 0);
        return;
    }
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fclose(f);
}

static int setup(void **s) {
    snprintf(root, sizeof root, "/tmp/kiln_registry_XXXXXX");
    return mkdtemp(root) ? 0 : -1;
}

static int teardown(void **s) {
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    graph_registry_reset();
    return system(cmd) == 0 ? 0 : -1;
}

static void expect_info(const char *cls, const struct graph_paths *paths, const char *want) {
    const struct node_class *c = graph_class_find(cls);
    assert_non_null(c);
    json_t *info = graph_object_info_class(c, paths);
    char *got = graph_json_dumps(info, -1);
    if (strcmp(got, want) != 0) fail_msg("%s:\n got  %s\n want %s", cls, got, want);
    mem_free(got);
    json_decref(info);
}

static void test_object_info_empty_latent(void **s) {
    expect_info("EmptyLatentImage", NULL,
                "{\"input\": {\"required\": {\"width\": [\"INT\", {\"default\": 512, \"min\": 16, \"max\": 16384, "
                "\"step\": 8, \"tooltip\": \"The width of the latent images in pixels.\"}], \"height\": [\"INT\", "
                "{\"default\": 512, \"min\": 16, \"max\": 16384, \"step\": 8, \"tooltip\": \"The height of the latent "
                "images in pixels.\"}], \"batch_size\": [\"INT\", {\"default\": 1, \"min\": 1, \"max\": 4096, "
                "\"tooltip\": \"The number of latent images in the batch.\"}]}}, \"input_order\": {\"required\": "
                "[\"width\", \"height\", \"batch_size\"]}, \"output\": [\"LATENT\"], \"output_is_list\": [false], "
                "\"output_name\": [\"LATENT\"], \"name\": \"EmptyLatentImage\", \"display_name\": \"Empty Latent "
                "Image\", \"description\": \"Create a new batch of empty latent images to be denoised via "
                "sampling.\", \"python_module\": \"nodes\", \"category\": \"latent\", \"output_node\": false, "
                "\"output_tooltips\": [\"The empty latent image batch.\"]}");
}

static void test_object_info_save_and_combos(void **s) {
    expect_info("SaveImage", NULL,
                "{\"input\": {\"required\": {\"images\": [\"IMAGE\", {\"tooltip\": \"The images to save.\"}], "
                "\"filename_prefix\": [\"STRING\", {\"default\": \"ComfyUI\", \"tooltip\": \"The prefix for the file to "
                "save. This may include formatting information such as %date:yyyy-MM-dd% or %Empty Latent "
                "Image.width% to include values from nodes.\"}]}, \"hidden\": {\"prompt\": \"PROMPT\", "
                "\"extra_pnginfo\": \"EXTRA_PNGINFO\"}}, \"input_order\": {\"required\": [\"images\", "
                "\"filename_prefix\"], \"hidden\": [\"prompt\", \"extra_pnginfo\"]}, \"output\": [], "
                "\"output_is_list\": [], \"output_name\": [], \"name\": \"SaveImage\", \"display_name\": \"Save "
                "Image\", \"description\": \"Saves the input images to your ComfyUI output directory.\", "
                "\"python_module\": \"nodes\", \"category\": \"image\", \"output_node\": true}");
    expect_info("LatentUpscaleBy", NULL,
                "{\"input\": {\"required\": {\"samples\": [\"LATENT\"], \"upscale_method\": [[\"nearest-exact\", "
                "\"bilinear\", \"area\", \"bicubic\", \"bislerp\"]], \"scale_by\": [\"FLOAT\", {\"default\": 1.5, "
                "\"min\": 0.01, \"max\": 8.0, \"step\": 0.01}]}}, \"input_order\": {\"required\": [\"samples\", "
                "\"upscale_method\", \"scale_by\"]}, \"output\": [\"LATENT\"], \"output_is_list\": [false], "
                "\"output_name\": [\"LATENT\"], \"name\": \"LatentUpscaleBy\", \"display_name\": \"Upscale Latent "
                "By\", \"description\": \"\", \"python_module\": \"nodes\", \"category\": \"latent\", \"output_node\": "
                "false}");
}

static void test_object_info_load_image_lists_input(void **s) {
    mk("input", true);
    mk("input/b.JPG", false);
    mk("input/a.png", false);
    mk("input/notes.txt", false);
    mk("input/sub", true);
    mk("input/sub/c.png", false);
    char input[400];
    snprintf(input, sizeof input, "%s/input", root);
    struct graph_paths paths = {.input = input};
    expect_info("LoadImage", &paths,
                "{\"input\": {\"required\": {\"image\": [[\"a.png\", \"b.JPG\"], {\"image_upload\": true}]}}, "
                "\"input_order\": {\"required\": [\"image\"]}, \"output\": [\"IMAGE\", \"MASK\"], \"output_is_list\": "
                "[false, false], \"output_name\": [\"IMAGE\", \"MASK\"], \"name\": \"LoadImage\", \"display_name\": "
                "\"Load Image\", \"description\": \"\", \"python_module\": \"nodes\", \"category\": \"image\", "
                "\"output_node\": false}");
}

static int run_nothing(struct node_run *c, const struct value *in, struct value *out, struct err *e) { return 0; }

static const struct node_class fake = {
    .name = "TSeed",
    .display_name = "Seed",
    .category = "test",
    .deprecated = true,
    .required = (const struct node_input[]){{.name = "seed",
                                             .kind = NODE_INPUT_INT,
                                             .flags = NODE_IN_DEFAULT | NODE_IN_MIN | NODE_IN_MAX_U64 |
                                                      NODE_IN_CONTROL_AFTER_GENERATE,
                                             .tooltip = "The random seed."},
                                            {.name = "text", .kind = NODE_INPUT_STRING,
                                             .flags = NODE_IN_MULTILINE | NODE_IN_DYNAMIC_PROMPTS},
                                            {.name = "on", .kind = NODE_INPUT_BOOLEAN, .flags = NODE_IN_DEFAULT,
                                             .bool_default = true},
                                            NODE_INPUTS_END},
    .optional = (const struct node_input[]){{.name = "cfg", .kind = NODE_INPUT_FLOAT,
                                             .flags = NODE_IN_DEFAULT | NODE_IN_MIN | NODE_IN_MAX | NODE_IN_STEP |
                                                      NODE_IN_ROUND,
                                             .float_default = 8.0, .float_min = 0.0, .float_max = 100.0,
                                             .float_step = 0.1, .float_round = 0.01},
                                            NODE_INPUTS_END},
    .outputs = (const struct node_output[]){{.type = "LATENT", .name = "out", .is_list = true}, NODE_OUTPUTS_END},
    .run = run_nothing,
};

static const struct node_class shadow = {.name = "EmptyLatentImage", .run = run_nothing};

static void test_seed_and_registration(void **s) {
    int before = graph_class_count();
    assert_null(graph_class_find("TSeed"));
    graph_registry_add(&fake);
    assert_int_equal(graph_class_count(), before + 1);
    assert_ptr_equal(graph_class_find("TSeed"), &fake);
    assert_ptr_equal(graph_class_at(before), &fake);
    assert_int_equal(node_class_n_inputs(&fake), 4);
    assert_int_equal(node_class_input_index(&fake, "cfg"), 3);
    bool opt;
    assert_string_equal(node_class_input(&fake, 3, &opt)->name, "cfg");
    assert_true(opt);
    expect_info("TSeed", NULL,
                "{\"input\": {\"required\": {\"seed\": [\"INT\", {\"default\": 0, \"min\": 0, \"max\": "
                "18446744073709551615, \"control_after_generate\": true, \"tooltip\": \"The random seed.\"}], "
                "\"text\": [\"STRING\", {\"multiline\": true, \"dynamicPrompts\": true}], \"on\": [\"BOOLEAN\", "
                "{\"default\": true}]}, \"optional\": {\"cfg\": [\"FLOAT\", {\"default\": 8.0, \"min\": 0.0, \"max\": "
                "100.0, \"step\": 0.1, \"round\": 0.01}]}}, \"input_order\": {\"required\": [\"seed\", \"text\", "
                "\"on\"], \"optional\": [\"cfg\"]}, \"output\": [\"LATENT\"], \"output_is_list\": [true], "
                "\"output_name\": [\"out\"], \"name\": \"TSeed\", \"display_name\": \"Seed\", \"description\": \"\", "
                "\"python_module\": \"nodes\", \"category\": \"test\", \"output_node\": false, \"deprecated\": true}");

    /* an addition with a built-in's name replaces it, listed once */
    graph_registry_add(&shadow);
    assert_ptr_equal(graph_class_find("EmptyLatentImage"), &shadow);
    assert_int_equal(graph_class_count(), before + 1);
    json_t *all = graph_object_info(NULL);
    assert_int_equal(json_object_size(all), (size_t)before + 1);
    json_decref(all);
    graph_registry_reset();
    assert_int_equal(graph_class_count(), before);
    assert_ptr_not_equal(graph_class_find("EmptyLatentImage"), &shadow);
}

static void test_model_files(void **s) {
    mk("models", true);
    mk("models/checkpoints", true);
    mk("models/checkpoints/b.safetensors", false);
    mk("models/checkpoints/A.CKPT", false);
    mk("models/checkpoints/readme.txt", false);
    mk("models/checkpoints/sub", true);
    mk("models/checkpoints/sub/c.sft", false);
    mk("models/checkpoints/.git", true);
    mk("models/checkpoints/.git/x.safetensors", false);
    char models[400];
    snprintf(models, sizeof models, "%s/models", root);
    struct graph_paths paths = {.models = models};
    struct graph_strlist l = {0};
    struct err err = {0};
    assert_int_equal(graph_list_model_files(&paths, "checkpoints", &l, &err), 0);
    assert_int_equal(l.n, 3);
    assert_string_equal(l.items[0], "A.CKPT");
    assert_string_equal(l.items[1], "b.safetensors");
    assert_string_equal(l.items[2], "sub/c.sft");
    graph_strlist_deinit(&l);
    assert_int_equal(graph_list_model_files(&paths, "loras", &l, &err), 0); /* missing folder: empty */
    assert_int_equal(l.n, 0);

    char path[1024];
    assert_int_equal(graph_model_path(&paths, "checkpoints", "sub/c.sft", path, sizeof path, &err), 0);
    char want[1024];
    snprintf(want, sizeof want, "%s/checkpoints/sub/c.sft", models);
    assert_string_equal(path, want);
    /* ".." cannot climb out: "../../x" resolves to checkpoints/x, which does not exist */
    assert_int_equal(graph_model_path(&paths, "checkpoints", "../../models/checkpoints/b.safetensors", path,
                                      sizeof path, &err),
                     STATUS_ERR_NOT_FOUND);
    assert_string_equal(err.msg, "Model in folder 'checkpoints' with filename "
                                 "'../../models/checkpoints/b.safetensors' not found.");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_object_info_empty_latent),
        cmocka_unit_test(test_object_info_save_and_combos),
        cmocka_unit_test_setup_teardown(test_object_info_load_image_lists_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seed_and_registration, setup, teardown),
        cmocka_unit_test_setup_teardown(test_model_files, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
