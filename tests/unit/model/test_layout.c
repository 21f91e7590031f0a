/* tests/unit/model/test_layout.c -- model/layout.c against the key list of a real SD 1.5 file.
 * The reference is tests/data/sd15_keys.json (names, shapes, dtypes and parts as
 * CheckpointLoaderSimple reads them), read here with jansson; the layout is derived from
 * sd_config_sd15, so any drift in the derivation shows up as a mismatch. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/status.h"
#include "model/config.h"
#include "model/layout.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static json_t *load_keys(void) {
    json_error_t jerr;
    json_t *root = json_load_file(KILN_TEST_DATA "/sd15_keys.json", 0, &jerr);
    if (!root) fail_msg("cannot read sd15_keys.json: %s", jerr.text);
    return root;
}

/* sd_config_sd15 reproduces every entry of sd15_keys.json, in order. */
static void test_sd15_matches_json(void **state) {
    (void)state;
    json_t *root = load_keys();
    json_t *arr = json_object_get(root, "tensors");
    assert_non_null(arr);

    struct sd_config config;
    sd_config_sd15(&config);
    struct layout l;
    struct err err = {0};
    assert_int_equal(layout_build(&l, &config, &err), 0);
    assert_int_equal(l.n, (int)json_array_size(arr));
    assert_int_equal(l.n, 1143);

    for (int i = 0; i < l.n; i++) {
        const struct layout_tensor *t = &l.tensors[i];
        json_t *row = json_array_get(arr, (size_t)i);
        const char *name = json_string_value(json_array_get(row, 0));
        json_t *shape = json_array_get(row, 1);
        const char *dtype = json_string_value(json_array_get(row, 2));
        const char *part = json_string_value(json_array_get(row, 3));
        if (strcmp(t->name, name) != 0) fail_msg("entry %d: layout '%s', json '%s'", i, t->name, name);
        if ((size_t)t->ndim != json_array_size(shape)) fail_msg("%s: ndim %d vs %zu", name, t->ndim, json_array_size(shape));
        for (int d = 0; d < t->ndim; d++) {
            long long want = json_integer_value(json_array_get(shape, (size_t)d));
            if (t->shape[d] != want) fail_msg("%s: dim %d is %lld, json says %lld", name, d, (long long)t->shape[d], want);
        }
        if (strcmp(dtype_name(t->dtype), dtype) != 0) fail_msg("%s: dtype %s vs %s", name, dtype_name(t->dtype), dtype);
        if (strcmp(layout_part_name(t->part), part) != 0)
            fail_msg("%s: part %s vs %s", name, layout_part_name(t->part), part);
        assert_int_equal(layout_part_parse(part), t->part);
    }
    json_decref(root);
    layout_deinit(&l);
}

/* Roles that ckpt_gen relies on, spot-checked against the module each key belongs to. */
static void test_roles(void **state) {
    (void)state;
    struct sd_config config;
    sd_config_sd15(&config);
    struct layout l;
    assert_int_equal(layout_build(&l, &config, NULL), 0);
    int norms = 0;
    for (int i = 0; i < l.n; i++) {
        const struct layout_tensor *t = &l.tensors[i];
        bool is_norm = strstr(t->name, "norm") && !strstr(t->name, "proj") && t->ndim == 1;
        if (is_norm) {
            norms++;
            assert_true(t->role == LAYOUT_ROLE_NORM_WEIGHT || t->role == LAYOUT_ROLE_NORM_BIAS);
        }
        if (t->role == LAYOUT_ROLE_NORM_WEIGHT) assert_non_null(strstr(t->name, ".weight"));
        if (t->role == LAYOUT_ROLE_SCHEDULE) assert_int_equal(t->part, LAYOUT_PART_DDPM_BUFFER);
    }
    /* every GroupNorm/LayerNorm of the three networks was recognised as a norm */
    assert_true(norms > 100);
    const struct layout_tensor *t = layout_find(&l, "cond_stage_model.transformer.text_model.embeddings.position_ids");
    assert_non_null(t);
    assert_int_equal(t->role, LAYOUT_ROLE_POSITION_IDS);
    assert_int_equal(t->dtype, DTYPE_I64);
    t = layout_find(&l, "model.diffusion_model.out.2.weight");
    assert_non_null(t);
    assert_int_equal(t->role, LAYOUT_ROLE_WEIGHT);
    t = layout_find(&l, "first_stage_model.decoder.mid.attn_1.proj_out.weight");
    assert_non_null(t);
    assert_int_equal(t->role, LAYOUT_ROLE_WEIGHT_OUT);
    t = layout_find(&l, "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight");
    assert_int_equal(t->role, LAYOUT_ROLE_EMBEDDING);
    t = layout_find(&l, "alphas_cumprod");
    assert_int_equal(t->schedule, LAYOUT_SCHEDULE_ALPHAS_CUMPROD);
    assert_string_equal(layout_schedule_name(t->schedule), "alphas_cumprod");
    assert_null(layout_find(&l, "model.diffusion_model.nope"));
    layout_deinit(&l);
}

/* The tiny model has the structure of SD 1.5 with small shapes: the same names in the same
 * order, except the 1x1 shortcut convs (skip_connection, nin_shortcut) that exist only where a
 * block changes width. With channel_mult 1,1,2,2 instead of 1,2,4,4 (config.h), the tiny model
 * lacks exactly three of them: UNet input_blocks.4.0 (level 1 keeps 32 channels), VAE
 * encoder.down.1.block.0 and decoder.up.0.block.0. */
static bool is_missing_in_tiny(const char *name) {
    static const char *const missing[] = {
        "model.diffusion_model.input_blocks.4.0.skip_connection.",
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.",
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.",
    };
    for (size_t i = 0; i < sizeof missing / sizeof missing[0]; i++)
        if (strncmp(name, missing[i], strlen(missing[i])) == 0) return true;
    return false;
}

static void test_tiny_same_names(void **state) {
    (void)state;
    struct sd_config big, tiny;
    sd_config_sd15(&big);
    sd_config_tiny(&tiny, 1000);
    struct layout lb, lt;
    assert_int_equal(layout_build(&lb, &big, NULL), 0);
    assert_int_equal(layout_build(&lt, &tiny, NULL), 0);
    assert_int_equal(lt.n, lb.n - 6);
    int64_t total = 0;
    int j = 0; /* index in the tiny layout */
    for (int i = 0; i < lb.n; i++) {
        if (is_missing_in_tiny(lb.tensors[i].name)) {
            assert_null(layout_find(&lt, lb.tensors[i].name));
            continue;
        }
        const struct layout_tensor *b = &lb.tensors[i], *t = &lt.tensors[j++];
        assert_string_equal(b->name, t->name);
        assert_int_equal(b->ndim, t->ndim);
        assert_int_equal(b->dtype, t->dtype);
        assert_int_equal(b->role, t->role);
        assert_int_equal(b->part, t->part);
        for (int d = 0; d < t->ndim; d++) assert_true(t->shape[d] <= b->shape[d]);
        total += layout_tensor_numel(t) * (int64_t)dtype_size(t->dtype);
    }
    assert_int_equal(j, lt.n);
    /* Known tiny shapes (config.h's comment): CLIP width 128, UNet 32/64 channels, VAE 32/64. */
    const struct layout_tensor *t = layout_find(&lt, "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight");
    assert_int_equal(t->shape[0], 1000);
    assert_int_equal(t->shape[1], 128);
    t = layout_find(&lt, "model.diffusion_model.input_blocks.7.0.skip_connection.weight");
    assert_non_null(t);
    assert_int_equal(t->shape[0], 64);
    assert_int_equal(t->shape[1], 32);
    t = layout_find(&lt, "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight");
    assert_int_equal(t->shape[0], 64);
    assert_int_equal(t->shape[1], 128);
    t = layout_find(&lt, "first_stage_model.decoder.conv_in.weight");
    assert_int_equal(t->shape[0], 64);
    assert_int_equal(t->shape[1], 4);
    assert_true(total < 20 * 1000 * 1000);
    layout_deinit(&lb);
    layout_deinit(&lt);
}

/* A structural variant derived from the config, checked against hand-computed counts:
 * 2 levels, 1 res block, attention only at level 0, d_head 16, linear projections. */
static void test_variant(void **state) {
    (void)state;
    struct sd_config c;
    sd_config_tiny(&c, 100);
    c.unet.n_levels = 2;
    c.unet.channel_mult[0] = 1;
    c.unet.channel_mult[1] = 2;
    c.unet.num_res_blocks = 1;
    c.unet.attn_level[0] = true;
    c.unet.attn_level[1] = false;
    c.unet.num_heads = -1;
    c.unet.d_head = 16;
    c.unet.linear_proj = true;
    c.unet.transformer_depth = 2;
    struct layout l;
    assert_int_equal(layout_build(&l, &c, NULL), 0);
    /* input_blocks: 0 conv, 1 res+ST, 2 down, 3 res(32->64); middle; output_blocks 0,1 (64+64, 64+32)
     * with upsample at 1; 2,3 (64+32 -> 32, 32+32) with ST. */
    assert_non_null(layout_find(&l, "model.diffusion_model.input_blocks.1.1.transformer_blocks.1.norm3.bias"));
    assert_null(layout_find(&l, "model.diffusion_model.input_blocks.1.1.transformer_blocks.2.norm3.bias"));
    assert_non_null(layout_find(&l, "model.diffusion_model.input_blocks.2.0.op.weight"));
    assert_non_null(layout_find(&l, "model.diffusion_model.input_blocks.3.0.skip_connection.weight"));
    assert_null(layout_find(&l, "model.diffusion_model.input_blocks.3.1.norm.weight"));
    assert_null(layout_find(&l, "model.diffusion_model.input_blocks.4.0.in_layers.0.weight"));
    const struct layout_tensor *t = layout_find(&l, "model.diffusion_model.output_blocks.1.1.conv.weight");
    assert_non_null(t);
    assert_int_equal(t->shape[0], 64);
    t = layout_find(&l, "model.diffusion_model.output_blocks.1.0.in_layers.2.weight");
    assert_int_equal(t->shape[1], 96);
    t = layout_find(&l, "model.diffusion_model.output_blocks.2.0.in_layers.2.weight");
    assert_int_equal(t->shape[0], 32);
    assert_int_equal(t->shape[1], 96);
    t = layout_find(&l, "model.diffusion_model.output_blocks.3.0.in_layers.2.weight");
    assert_int_equal(t->shape[1], 64);
    t = layout_find(&l, "model.diffusion_model.output_blocks.3.1.proj_in.weight");
    assert_int_equal(t->ndim, 2); /* Linear */
    assert_null(layout_find(&l, "model.diffusion_model.output_blocks.4.0.in_layers.0.weight"));
    layout_deinit(&l);
}

static void test_bad_config(void **state) {
    (void)state;
    struct sd_config c;
    struct layout l;
    struct err err = {0};
    sd_config_sd15(&c);
    c.unet.n_levels = 5;
    assert_int_equal(layout_build(&l, &c, &err), STATUS_ERR_INVALID);
    assert_non_null(strstr(err.msg, "n_levels"));
    layout_deinit(&l);

    err_clear(&err);
    sd_config_sd15(&c);
    c.unet.d_head = 64; /* both heads and d_head */
    assert_int_equal(layout_build(&l, &c, &err), STATUS_ERR_INVALID);
    layout_deinit(&l);

    err_clear(&err);
    sd_config_sd15(&c);
    c.clip.n_heads = 7;
    assert_int_equal(layout_build(&l, &c, &err), STATUS_ERR_INVALID);
    assert_non_null(strstr(err.msg, "heads"));
    layout_deinit(&l);

    err_clear(&err);
    sd_config_sd15(&c);
    c.vae.ch_mult[2] = 0;
    assert_int_equal(layout_build(&l, &c, &err), STATUS_ERR_INVALID);
    layout_deinit(&l);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sd15_matches_json),
        cmocka_unit_test(test_roles),
        cmocka_unit_test(test_tiny_same_names),
        cmocka_unit_test(test_variant),
        cmocka_unit_test(test_bad_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
