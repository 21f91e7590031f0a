/* tests/unit/sample/test_ksampler.c -- the KSampler plumbing (sample/ksampler) with a fake
 * model that records what it is given: initial noise from prepare_noise, max_denoise noise
 * scaling (the golden factor from sigmas.json), process_latent_in/out, add_noise off,
 * denoise 0 and start_step past the end (latent returned untouched), batch_index, ddim's
 * seed + 1 overflow, unsupported samplers, interruption.
 * Owns: nothing; one process, cmocka. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "base/base.h"
#include "base/mem.h"
#include "base/status.h"
#include "sample/ksampler.h"
#include "sample/rng.h"

#include "golden.h"

#define SCALE 0.18215f

/* ===== A recording fake model: D(x, s) = x / (1 + s^2) ===== */

struct rec {
    int64_t n;
    int calls;
    float first_sigma;
    float *first_x; /* copy of x at the first call */
};

static int rec_fn(void *user, const float *x, float sigma, float *den, struct err *err) {
    (void)err;
    struct rec *r = user;
    if (r->calls++ == 0) {
        r->first_sigma = sigma;
        memcpy(r->first_x, x, (size_t)r->n * sizeof(float));
    }
    for (int64_t j = 0; j < r->n; j++) den[j] = x[j] / (1.0f + sigma * sigma);
    return STATUS_OK;
}

static struct ksampler_params base_params(void) {
    return (struct ksampler_params){
        .seed = 42, .steps = 4, .sampler = SAMPLER_KIND_EULER, .scheduler = SCHEDULE_KIND_NORMAL,
        .denoise = 1.0, .add_noise = true, .start_step = -1, .last_step = -1, .latent_scale = SCALE};
}

/* ===== Noise scaling ===== */

static void test_noise_factor_golden(void **state) {
    (void)state;
    json_t *root = golden_load("sigmas.json");
    const json_t *g = json_object_get(root, "noise_scaling_max_denoise");
    struct schedule s;
    schedule_init_sd1(&s);
    float sigma = golden_bits_f32(golden_hex32(json_string_value(json_object_get(g, "sigma_bits"))));
    uint32_t want = golden_hex32(json_string_value(json_object_get(g, "factor_cpu_bits")));
    assert_int_equal(golden_f32_bits(ksampler_noise_factor(&s, sigma)), want);
    /* within rel 1e-5 of sigma_max still counts as max_denoise; a smaller sigma is used as is */
    assert_true(ksampler_noise_factor(&s, s.sigma_max * (1.0f - 5e-6f)) > s.sigma_max);
    assert_true(ksampler_noise_factor(&s, s.sigma_max * 1.5f) > s.sigma_max * 1.5f);
    assert_true(ksampler_noise_factor(&s, 3.0f) == 3.0f);
    json_decref(root);
}

/* ===== txt2img: empty latent, full denoise ===== */

static void test_txt2img_plumbing(void **state) {
    (void)state;
    enum { B = 2, PER = 4 * 5 * 5, N = B * PER };
    struct schedule s;
    schedule_init_sd1(&s);
    float latent[N] = {0}, out[N], noise[N], want_first[N];
    float first[N];
    struct rec r = {.n = N, .first_x = first};
    struct denoise_fn model = {.fn = rec_fn, .user = &r};
    struct ksampler_params p = base_params();
    struct err e = {0};
    assert_int_equal(ksampler_run(&s, &model, &p, B, PER, latent, out, NULL, NULL, &e), STATUS_OK);
    assert_int_equal(r.calls, 4);

    /* the first model input is noise * sqrt(1 + sigma_max^2): one randn over the batch */
    assert_int_equal(rng_prepare_noise(42, B, PER, NULL, 0, noise, &e), STATUS_OK);
    float *sig;
    int ns;
    struct schedule_request req = {.kind = SCHEDULE_KIND_NORMAL, .steps = 4, .denoise = 1.0, .start_step = -1,
                                   .last_step = -1};
    assert_int_equal(schedule_ksampler_sigmas(&s, &req, &sig, &ns, &e), STATUS_OK);
    assert_true(r.first_sigma == sig[0]);
    const float factor = sqrtf(1.0f + sig[0] * sig[0]);
    for (int j = 0; j < N; j++) want_first[j] = noise[j] * factor + 0.0f;
    assert_memory_equal(first, want_first, sizeof first);

    /* the output is the sampler's result divided by the scale */
    float x[N];
    memcpy(x, want_first, sizeof x);
    struct rec r2 = {.n = N, .first_x = first};
    struct denoise_fn model2 = {.fn = rec_fn, .user = &r2};
    struct sample_ctx sc = {.n = N, .seed = 42, .err = &e};
    assert_int_equal(sampler_run(SAMPLER_KIND_EULER, &model2, x, sig, ns, &sc), STATUS_OK);
    for (int j = 0; j < N; j++) assert_true(fabsf(out[j] - x[j] / SCALE) <= 1e-6f * fabsf(x[j] / SCALE) + 1e-30f);
    mem_free(sig);
}

/* ===== img2img: non-zero latent, denoise < 1 ===== */

static void test_img2img_plumbing(void **state) {
    (void)state;
    enum { N = 64 };
    struct schedule s;
    schedule_init_sd1(&s);
    float latent[N], out[N], noise[N], first[N];
    for (int j = 0; j < N; j++) latent[j] = (float)(j - 30) * 0.125f;
    struct rec r = {.n = N, .first_x = first};
    struct denoise_fn model = {.fn = rec_fn, .user = &r};
    struct ksampler_params p = base_params();
    p.denoise = 0.5;
    p.steps = 3;
    struct err e = {0};
    assert_int_equal(ksampler_run(&s, &model, &p, 1, N, latent, out, NULL, NULL, &e), STATUS_OK);
    /* sigmas: normal schedule for int(3 / 0.5) = 6 steps, last 4 kept; sigma0 < sigma_max so
     * the noise is scaled by sigma0 itself, and the latent by 0.18215 */
    float *full;
    int nfull;
    assert_int_equal(schedule_sigmas(&s, SCHEDULE_KIND_NORMAL, 6, &full, &nfull, &e), STATUS_OK);
    assert_int_equal(nfull, 7);
    assert_true(r.first_sigma == full[3]);
    assert_int_equal(r.calls, 3);
    assert_int_equal(rng_prepare_noise(42, 1, N, NULL, 0, noise, &e), STATUS_OK);
    for (int j = 0; j < N; j++) assert_true(first[j] == noise[j] * full[3] + latent[j] * SCALE);
    mem_free(full);

    /* add_noise off: the model first sees the scaled latent alone */
    p.add_noise = false;
    r.calls = 0;
    assert_int_equal(ksampler_run(&s, &model, &p, 1, N, latent, out, NULL, NULL, &e), STATUS_OK);
    for (int j = 0; j < N; j++) assert_true(first[j] == latent[j] * SCALE);
}

/* ===== Nothing to sample: the latent comes back as it went in ===== */

static void test_passthrough(void **state) {
    (void)state;
    enum { N = 32 };
    struct schedule s;
    schedule_init_sd1(&s);
    float latent[N], out[N], first[N];
    for (int j = 0; j < N; j++) latent[j] = (float)j * 0.5f - 3.0f;
    struct rec r = {.n = N, .first_x = first};
    struct denoise_fn model = {.fn = rec_fn, .user = &r};
    struct err e = {0};

    struct ksampler_params p = base_params();
    p.denoise = 0.0;
    assert_int_equal(ksampler_run(&s, &model, &p, 1, N, latent, out, NULL, NULL, &e), STATUS_OK);
    assert_memory_equal(out, latent, sizeof out);
    assert_int_equal(r.calls, 0);

    p = base_params();
    p.start_step = 4; /* KSamplerAdvanced start_at_step >= steps */
    p.last_step = 10000;
    assert_int_equal(ksampler_run(&s, &model, &p, 1, N, latent, out, NULL, NULL, &e), STATUS_OK);
    assert_memory_equal(out, latent, sizeof out);
    assert_int_equal(r.calls, 0);

    /* in place works */
    float copy[N];
    memcpy(copy, latent, sizeof copy);
    assert_int_equal(ksampler_run(&s, &model, &p, 1, N, copy, copy, NULL, NULL, &e), STATUS_OK);
    assert_memory_equal(copy, latent, sizeof copy);
}

/* ===== KSamplerAdvanced: a first half with leftover noise, then the second half ===== */

static void test_advanced_split(void **state) {
    (void)state;
    enum { N = 16 };
    struct schedule s;
    schedule_init_sd1(&s);
    float latent[N] = {0}, mid[N], out[N], first[N];
    struct rec r = {.n = N, .first_x = first};
    struct denoise_fn model = {.fn = rec_fn, .user = &r};
    struct err e = {0};
    struct ksampler_params p = base_params();
    p.steps = 6;
    p.start_step = 0;
    p.last_step = 3;
    p.force_full_denoise = false;
    assert_int_equal(ksampler_run(&s, &model, &p, 1, N, latent, mid, NULL, NULL, &e), STATUS_OK);
    assert_int_equal(r.calls, 3);
    /* second half: no new noise, starts at sigma[3] */
    float *full;
    int nfull;
    assert_int_equal(schedule_sigmas(&s, SCHEDULE_KIND_NORMAL, 6, &full, &nfull, &e), STATUS_OK);
    p.add_noise = false;
    p.start_step = 3;
    p.last_step = 10000;
    p.force_full_denoise = true;
    r.calls = 0;
    assert_int_equal(ksampler_run(&s, &model, &p, 1, N, mid, out, NULL, NULL, &e), STATUS_OK);
    assert_int_equal(r.calls, 3);
    assert_true(r.first_sigma == full[3]);
    for (int j = 0; j < N; j++) assert_true(first[j] == mid[j] * SCALE); /* process_latent_in again */
    mem_free(full);
}

/* ===== batch_index, errors, interruption ===== */

static void test_batch_index(void **state) {
    (void)state;
    enum { PER = 24 };
    struct schedule s;
    schedule_init_sd1(&s);
    float latent[PER] = {0}, out[PER], first[PER], draws[3][PER];
    struct rec r = {.n = PER, .first_x = first};
    struct denoise_fn model = {.fn = rec_fn, .user = &r};
    struct err e = {0};
    struct ksampler_params p = base_params();
    int idx[1] = {2};
    p.batch_index = idx;
    assert_int_equal(ksampler_run(&s, &model, &p, 1, PER, latent, out, NULL, NULL, &e), STATUS_OK);
    struct rng g;
    rng_init(&g, 42);
    for (int i = 0; i < 3; i++) rng_randn(&g, draws[i], PER);
    const float factor = ksampler_noise_factor(&s, r.first_sigma);
    for (int j = 0; j < PER; j++) assert_true(first[j] == draws[2][j] * factor + 0.0f);
}

static int stop_at_2(void *user, int step, int total) {
    (void)user, (void)total;
    return step == 2;
}

static void test_errors(void **state) {
    (void)state;
    enum { N = 16 };
    struct schedule s;
    schedule_init_sd1(&s);
    float latent[N] = {0}, out[N], first[N];
    struct rec r = {.n = N, .first_x = first};
    struct denoise_fn model = {.fn = rec_fn, .user = &r};
    struct err e = {0};
    struct ksampler_params p = base_params();

    p.sampler = SAMPLER_KIND_DPMPP_SDE;
    assert_int_equal(ksampler_run(&s, &model, &p, 1, N, latent, out, NULL, NULL, &e), STATUS_ERR_UNSUPPORTED);
    assert_string_equal(e.msg, "sampler 'dpmpp_sde' is not supported yet");
    err_clear(&e);

    p = base_params();
    p.sampler = SAMPLER_KIND_DDIM;
    p.seed = UINT64_MAX;
    assert_int_equal(ksampler_run(&s, &model, &p, 1, N, latent, out, NULL, NULL, &e), STATUS_ERR_RANGE);
    assert_non_null(strstr(e.msg, "ddim"));
    err_clear(&e);
    p.sampler = SAMPLER_KIND_EULER; /* any other sampler takes that seed */
    assert_int_equal(ksampler_run(&s, &model, &p, 1, N, latent, out, NULL, NULL, &e), STATUS_OK);

    p = base_params();
    p.steps = 0;
    assert_int_equal(ksampler_run(&s, &model, &p, 1, N, latent, out, NULL, NULL, &e), STATUS_ERR_INVALID);
    assert_non_null(strstr(e.msg, "KSampler (euler, normal)"));
    err_clear(&e);

    p = base_params();
    assert_int_equal(ksampler_run(&s, &model, &p, 0, N, latent, out, NULL, NULL, &e), STATUS_ERR_INVALID);
    err_clear(&e);

    p = base_params();
    assert_int_equal(ksampler_run(&s, &model, &p, 1, N, latent, out, stop_at_2, NULL, &e), STATUS_ERR_INTERRUPTED);
    assert_non_null(strstr(e.msg, "interrupted"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_noise_factor_golden),
        cmocka_unit_test(test_txt2img_plumbing),
        cmocka_unit_test(test_img2img_plumbing),
        cmocka_unit_test(test_passthrough),
        cmocka_unit_test(test_advanced_split),
        cmocka_unit_test(test_batch_index),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
