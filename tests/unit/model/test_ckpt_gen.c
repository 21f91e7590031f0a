/* tests/unit/model/test_ckpt_gen.c -- model/ckpt_gen.c on the tiny config: the file opens with
 * the layout's tensors, values follow their role (norms 1/0, position ids, the DDPM schedule
 * against ENGINE.md's published anchors, weight std 1/sqrt(fan_in)), everything is finite, the
 * output is deterministic per seed and differs across seeds, and it stays under 20 MB. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/mem.h"
#include "base/status.h"
#include "model/ckpt_gen.h"
#include "model/config.h"
#include "model/layout.h"
#include "model/safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define TINY_VOCAB 1024

static char g_dir[64];
static char g_a[128], g_b[128], g_c[128]; /* seed 1, seed 1 again, seed 2 */

static unsigned char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = mem_alloc((size_t)sz + 1);
    assert_int_equal(fread(buf, 1, (size_t)sz, f), (size_t)sz);
    fclose(f);
    *n = (size_t)sz;
    return buf;
}

static float *read_f32(const struct ckpt *ck, const char *name, int64_t *n) {
    const struct ckpt_tensor *t = ckpt_find(ck, name);
    if (!t) fail_msg("missing %s", name);
    *n = ckpt_tensor_numel(t);
    float *v = mem_alloc((size_t)*n * sizeof(float) + 1);
    assert_int_equal(ckpt_tensor_read_f32(t, v, NULL), 0);
    return v;
}

/* Mean and standard deviation of a tensor. */
static void stats(const struct ckpt *ck, const char *name, double *mean, double *std) {
    int64_t n;
    float *v = read_f32(ck, name, &n);
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < n; i++) s += v[i], s2 += (double)v[i] * v[i];
    *mean = s / (double)n;
    *std = sqrt(s2 / (double)n - *mean * *mean);
    mem_free(v);
}

/* ===== Tests ===== */

static void test_generate_and_layout(void **state) {
    (void)state;
    struct sd_config c;
    sd_config_tiny(&c, TINY_VOCAB);
    struct err err = {0};
    assert_int_equal(ckpt_gen_write(g_a, &c, 1, &err), 0);
    struct stat st;
    assert_int_equal(stat(g_a, &st), 0);
    assert_true(st.st_size < 20 * 1000 * 1000);
    assert_true(st.st_size > 1000 * 1000);

    struct layout l;
    assert_int_equal(layout_build(&l, &c, &err), 0);
    struct ckpt ck;
    assert_int_equal(ckpt_open(&ck, g_a, &err), 0);
    assert_int_equal(ck.n_tensors, l.n);
    assert_string_equal(ckpt_metadata_get(&ck, "kiln.seed"), "1");
    int n_norm_w = 0, n_norm_b = 0;
    for (int i = 0; i < l.n; i++) {
        const struct layout_tensor *lt = &l.tensors[i];
        const struct ckpt_tensor *t = ckpt_find(&ck, lt->name);
        if (!t) fail_msg("missing %s", lt->name);
        assert_int_equal(t->dtype, lt->dtype);
        assert_int_equal(t->ndim, lt->ndim);
        for (int d = 0; d < t->ndim; d++) assert_int_equal(t->shape[d], lt->shape[d]);
        if (t->dtype == DTYPE_I64) continue;
        int64_t n;
        float *v = read_f32(&ck, lt->name, &n);
        for (int64_t k = 0; k < n; k++) {
            if (!isfinite(v[k])) fail_msg("%s[%lld] = %g", lt->name, (long long)k, v[k]);
            if (lt->role == LAYOUT_ROLE_NORM_WEIGHT && v[k] != 1.0f) fail_msg("%s[%lld] = %g", lt->name, (long long)k, v[k]);
            if (lt->role == LAYOUT_ROLE_NORM_BIAS && v[k] != 0.0f) fail_msg("%s[%lld] = %g", lt->name, (long long)k, v[k]);
        }
        n_norm_w += lt->role == LAYOUT_ROLE_NORM_WEIGHT;
        n_norm_b += lt->role == LAYOUT_ROLE_NORM_BIAS;
        mem_free(v);
    }
    assert_true(n_norm_w > 100 && n_norm_w == n_norm_b);
    /* norm weights checked through their real names too */
    int64_t n;
    float *v = read_f32(&ck, "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.norm2.weight", &n);
    assert_int_equal(n, 32);
    assert_true(v[0] == 1.0f && v[31] == 1.0f);
    mem_free(v);
    v = read_f32(&ck, "first_stage_model.decoder.norm_out.bias", &n);
    assert_true(v[0] == 0.0f);
    mem_free(v);

    /* position_ids = 0..76, int64 */
    const struct ckpt_tensor *pid = ckpt_find(&ck, "cond_stage_model.transformer.text_model.embeddings.position_ids");
    assert_non_null(pid);
    assert_int_equal(pid->dtype, DTYPE_I64);
    assert_int_equal(pid->shape[1], 77);
    for (int i = 0; i < 77; i++) {
        int64_t x;
        memcpy(&x, (const char *)pid->data + 8 * i, 8);
        assert_int_equal(x, i);
    }
    ckpt_close(&ck);
    layout_deinit(&l);
}

/* Weight statistics follow the documented init: N(0, 1/sqrt(fan_in)), 0.5x for residual
 * outputs, N(0, 0.02) for biases and embeddings; and the normals are Gaussian. */
static void test_statistics(void **state) {
    (void)state;
    struct ckpt ck;
    assert_int_equal(ckpt_open(&ck, g_a, NULL), 0);
    double m, s;
    /* conv [64, 64, 3, 3]: fan_in 576 */
    stats(&ck, "model.diffusion_model.middle_block.0.in_layers.2.weight", &m, &s);
    assert_true(fabs(m) < 0.003);
    assert_true(fabs(s - 1.0 / sqrt(576.0)) < 0.03 / sqrt(576.0));
    /* residual output conv: half */
    stats(&ck, "model.diffusion_model.middle_block.0.out_layers.3.weight", &m, &s);
    assert_true(fabs(s - 0.5 / sqrt(576.0)) < 0.015 / sqrt(576.0));
    /* CLIP fc1 [512, 128] */
    stats(&ck, "cond_stage_model.transformer.text_model.encoder.layers.3.mlp.fc1.weight", &m, &s);
    assert_true(fabs(s - 1.0 / sqrt(128.0)) < 0.03 / sqrt(128.0));
    /* token embedding [1024, 128] */
    stats(&ck, "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", &m, &s);
    assert_true(fabs(s - 0.02) < 0.0006);
    assert_true(fabs(m) < 0.0005);
    /* a bias */
    stats(&ck, "cond_stage_model.transformer.text_model.encoder.layers.3.mlp.fc1.bias", &m, &s);
    assert_true(s > 0.015 && s < 0.025);

    /* Gaussian shape: fractions within 1 and 2 sigma of N(0, 0.02) (131072 samples) */
    int64_t n;
    float *v = read_f32(&ck, "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", &n);
    int64_t in1 = 0, in2 = 0;
    for (int64_t i = 0; i < n; i++) {
        in1 += fabsf(v[i]) < 0.02f;
        in2 += fabsf(v[i]) < 0.04f;
    }
    assert_true(fabs((double)in1 / (double)n - 0.6827) < 0.01);
    assert_true(fabs((double)in2 / (double)n - 0.9545) < 0.01);
    mem_free(v);

    /* two different tensors of the same shape are not the same stream */
    float *a = read_f32(&ck, "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight", &n);
    float *b = read_f32(&ck, "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_k.weight", &n);
    assert_memory_not_equal(a, b, (size_t)n * sizeof(float));
    mem_free(a);
    mem_free(b);
    ckpt_close(&ck);
}

/* The DDPM buffers against SD 1.x's schedule (ENGINE.md 4.5: sigma_min 0.0291672, sigma_max
 * 14.614641, alphas_cumprod[999] 0.0046601; betas run 0.00085 .. 0.012). */
static void test_schedule(void **state) {
    (void)state;
    struct ckpt ck;
    assert_int_equal(ckpt_open(&ck, g_a, NULL), 0);
    int64_t n;
    float *betas = read_f32(&ck, "betas", &n);
    assert_int_equal(n, 1000);
    assert_true(fabsf(betas[0] - 0.00085f) < 1e-9f);
    assert_true(fabsf(betas[999] - 0.012f) < 1e-8f);
    float *ac = read_f32(&ck, "alphas_cumprod", &n);
    assert_true(fabs(sqrt((1.0 - ac[0]) / ac[0]) - 0.0291672) < 5e-6); /* float32 ac[0] limits this */
    assert_true(fabs(sqrt((1.0 - ac[999]) / ac[999]) - 14.614641) < 1e-4);
    assert_true(fabs(ac[999] - 0.0046601) < 1e-7);
    float *prev = read_f32(&ck, "alphas_cumprod_prev", &n);
    assert_true(prev[0] == 1.0f);
    assert_true(prev[500] == ac[499]);
    float *sr = read_f32(&ck, "sqrt_recipm1_alphas_cumprod", &n);
    assert_true(fabs(sr[999] - 14.614641) < 1e-4); /* same quantity as sigma */
    float *plv = read_f32(&ck, "posterior_log_variance_clipped", &n);
    assert_true(fabs(plv[0] - log(1e-20)) < 1e-3); /* posterior variance 0 at t = 0, clipped */
    float *pv = read_f32(&ck, "posterior_variance", &n);
    assert_true(pv[0] == 0.0f);
    assert_true(fabs(log(pv[10]) - plv[10]) < 1e-4);
    mem_free(betas);
    mem_free(ac);
    mem_free(prev);
    mem_free(sr);
    mem_free(plv);
    mem_free(pv);
    ckpt_close(&ck);
}

static void test_deterministic(void **state) {
    (void)state;
    struct sd_config c;
    sd_config_tiny(&c, TINY_VOCAB);
    assert_int_equal(ckpt_gen_write(g_b, &c, 1, NULL), 0);
    assert_int_equal(ckpt_gen_write(g_c, &c, 2, NULL), 0);
    size_t na, nb, nc;
    unsigned char *a = read_all(g_a, &na), *b = read_all(g_b, &nb), *cc = read_all(g_c, &nc);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na);
    assert_int_equal(na, nc); /* same header size: the seed is one digit either way */

    struct ckpt ka, kc;
    assert_int_equal(ckpt_open(&ka, g_a, NULL), 0);
    assert_int_equal(ckpt_open(&kc, g_c, NULL), 0);
    int differ = 0, same = 0;
    for (int i = 0; i < ka.n_tensors; i++) {
        const struct ckpt_tensor *x = &ka.tensors[i], *y = ckpt_find(&kc, x->name);
        assert_non_null(y);
        assert_int_equal(x->nbytes, y->nbytes);
        if (memcmp(x->data, y->data, x->nbytes) == 0) same++;
        else differ++;
    }
    /* everything random differs; norms, position_ids and the schedule do not */
    const struct ckpt_tensor *w1 = ckpt_find(&ka, "model.diffusion_model.out.2.weight");
    const struct ckpt_tensor *w2 = ckpt_find(&kc, "model.diffusion_model.out.2.weight");
    assert_memory_not_equal(w1->data, w2->data, w1->nbytes);
    assert_true(differ > 500);
    assert_true(same > 300);
    ckpt_close(&ka);
    ckpt_close(&kc);
    mem_free(a);
    mem_free(b);
    mem_free(cc);
}

static void test_errors(void **state) {
    (void)state;
    struct sd_config c;
    sd_config_tiny(&c, TINY_VOCAB);
    struct err err = {0};
    const char *bad = "/nonexistent-kiln-dir/tiny.safetensors";
    assert_int_equal(ckpt_gen_write(bad, &c, 1, &err), STATUS_ERR_IO);
    assert_non_null(strstr(err.msg, "/nonexistent-kiln-dir/tiny.safetensors"));
    err_clear(&err);
    c.unet.n_levels = 0;
    char p[128];
    snprintf(p, sizeof p, "%s/bad.safetensors", g_dir);
    assert_int_equal(ckpt_gen_write(p, &c, 1, &err), STATUS_ERR_INVALID);
    assert_non_null(strstr(err.msg, "bad.safetensors"));
    struct stat st;
    assert_int_not_equal(stat(p, &st), 0);
}

/* ===== Main ===== */

static int setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/kiln_gen_XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    snprintf(g_a, sizeof g_a, "%s/a.safetensors", g_dir);
    snprintf(g_b, sizeof g_b, "%s/b.safetensors", g_dir);
    snprintf(g_c, sizeof g_c, "%s/c.safetensors", g_dir);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_generate_and_layout),
        cmocka_unit_test(test_statistics),
        cmocka_unit_test(test_schedule),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
