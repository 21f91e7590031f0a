/* tests/unit/sample/test_schedule.c -- sample/schedule against tests/data/golden/sigmas.json
 * (ComfyUI v0.3.64, torch 2.11, model_sampling on the CPU): the 1000-entry sigma and
 * log-sigma tables, all 9 schedulers at 1, 2, 3, 20 and 30 steps, KSampler's denoise and
 * dpm_2 paths, timestep(), plus hand-checked start/last-step slicing.
 * Owns: nothing; one process, cmocka.
 *
 * KNOWN 1-ULP DIFFERENCES. torch takes exp and tan from Intel MKL, which is not always
 * correctly rounded; kiln's are. The golden file itself flags these values (exp_check:
 * "cpu_not_correctly_rounded"), and KNOWN_ULP below lists every one the goldens contain. Each
 * listed value must be within 1 ulp; every other value must match bit for bit. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "base/base.h"
#include "base/mem.h"
#include "base/status.h"
#include "sample/schedule.h"

#include "golden.h"

/* (scheduler, steps as given to calculate_sigmas, index) where torch's MKL result is not
 * the correctly rounded one */
static const struct {
    const char *scheduler;
    int steps;
    int index;
} KNOWN_ULP[] = {
    {"normal", 20, 5},      /* exp(0x3fad1049): torch 4077625b, correctly rounded 4077625a */
    {"kl_optimal", 20, 10}, /* tan: torch 3f63bdb5, correctly rounded 3f63bdb6 */
};

static bool known_ulp(const char *scheduler, int steps, int index) {
    for (size_t i = 0; i < ARRAY_LEN(KNOWN_ULP); i++)
        if (strcmp(KNOWN_ULP[i].scheduler, scheduler) == 0 && KNOWN_ULP[i].steps == steps &&
            KNOWN_ULP[i].index == index)
            return true;
    return false;
}

/* Compares a computed list with a golden "bits" array; `steps` is what calculate_sigmas got
 * (for the KNOWN_ULP lookup). Returns the number of failures. */
static int compare_sigmas(const char *what, const char *scheduler, int steps, const float *got, int n,
                          const json_t *bits) {
    int bad = 0;
    if ((int)json_array_size(bits) != n) {
        fprintf(stderr, "%s: %d sigmas, ComfyUI has %zu\n", what, n, json_array_size(bits));
        return 1;
    }
    for (int i = 0; i < n; i++) {
        uint32_t want = golden_hex32(json_string_value(json_array_get(bits, (size_t)i)));
        float w = golden_bits_f32(want);
        if (isnan(w) && isnan(got[i])) continue; /* kl_optimal, 1 step: 0/0 in both */
        if (golden_f32_bits(got[i]) == want) continue;
        if (known_ulp(scheduler, steps, i) && golden_ulp_diff(got[i], w) <= 1) continue;
        fprintf(stderr, "%s: sigma[%d] = %08x, ComfyUI %08x\n", what, i, golden_f32_bits(got[i]), want);
        bad++;
    }
    return bad;
}

/* ===== The model's table ===== */

static void test_model_sampling_table(void **state) {
    (void)state;
    json_t *root = golden_load("sigmas.json");
    const json_t *ms = json_object_get(root, "model_sampling");
    struct schedule s;
    schedule_init_sd1(&s);
    const json_t *sb = json_object_get(ms, "sigmas_bits"), *lb = json_object_get(ms, "log_sigmas_bits");
    assert_int_equal(json_array_size(sb), SCHEDULE_TIMESTEPS);
    int bad = 0;
    for (int i = 0; i < SCHEDULE_TIMESTEPS; i++) {
        bad += golden_f32_bits(s.sigmas[i]) != golden_hex32(json_string_value(json_array_get(sb, (size_t)i)));
        bad += golden_f32_bits(s.log_sigmas[i]) != golden_hex32(json_string_value(json_array_get(lb, (size_t)i)));
    }
    assert_int_equal(bad, 0);
    char hex[65];
    golden_sha256_f32(s.sigmas, SCHEDULE_TIMESTEPS, hex);
    assert_string_equal(hex, json_string_value(json_object_get(ms, "sigmas_sha256")));
    assert_int_equal(golden_f32_bits(s.sigma_min),
                     golden_hex32(json_string_value(json_object_get(json_object_get(ms, "sigma_min"), "bits"))));
    assert_int_equal(golden_f32_bits(s.sigma_max),
                     golden_hex32(json_string_value(json_object_get(json_object_get(ms, "sigma_max"), "bits"))));
    json_decref(root);
}

static void test_timestep_normal_20(void **state) {
    (void)state;
    json_t *root = golden_load("sigmas.json");
    const json_t *rows = json_object_get(json_object_get(root, "timesteps_normal_20"), "rows");
    struct schedule s;
    schedule_init_sd1(&s);
    size_t i;
    json_t *row;
    assert_true(json_array_size(rows) == 21);
    json_array_foreach(rows, i, row) {
        float sigma = golden_bits_f32(golden_hex32(json_string_value(json_object_get(row, "sigma_bits"))));
        assert_int_equal(schedule_timestep(&s, sigma), golden_int(json_object_get(row, "timestep")));
    }
    json_decref(root);
}

/* ===== Schedulers ===== */

static void test_scheduler_names(void **state) {
    (void)state;
    json_t *root = golden_load("sigmas.json");
    const json_t *names = json_object_get(root, "scheduler_names");
    assert_int_equal(json_array_size(names), SCHEDULE_KIND_COUNT);
    for (int k = 0; k < SCHEDULE_KIND_COUNT; k++) {
        const char *name = json_string_value(json_array_get(names, (size_t)k));
        assert_string_equal(schedule_kind_name((enum schedule_kind)k), name);
        assert_int_equal(schedule_kind_parse(name), k);
    }
    assert_string_equal(schedule_kind_name(SCHEDULE_KIND_COUNT), "?");
    assert_int_equal(schedule_kind_parse("karras "), SCHEDULE_KIND_COUNT);
    assert_int_equal(schedule_kind_parse(NULL), SCHEDULE_KIND_COUNT);
    /* KSampler's default scheduler is the first one */
    assert_string_equal(json_string_value(json_object_get(root, "ksampler_default_scheduler")),
                        schedule_kind_name((enum schedule_kind)0));
    json_decref(root);
}

static void test_schedulers_golden(void **state) {
    (void)state;
    json_t *root = golden_load("sigmas.json");
    const json_t *rows = json_object_get(root, "schedules");
    assert_true(json_array_size(rows) == 45);
    struct schedule s;
    schedule_init_sd1(&s);
    int bad = 0;
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row) {
        const char *name = json_string_value(json_object_get(row, "scheduler"));
        int steps = (int)golden_int(json_object_get(row, "steps"));
        enum schedule_kind kind = schedule_kind_parse(name);
        assert_int_not_equal(kind, SCHEDULE_KIND_COUNT);
        float *sig;
        int n;
        struct err e = {0};
        assert_int_equal(schedule_sigmas(&s, kind, steps, &sig, &n, &e), STATUS_OK);
        char what[96];
        snprintf(what, sizeof what, "%s %d steps", name, steps);
        bad += compare_sigmas(what, name, steps, sig, n, json_object_get(row, "bits"));
        mem_free(sig);
    }
    assert_int_equal(bad, 0);
    json_decref(root);
}

/* KSampler paths: denoise 0.6 for every scheduler (33 steps computed, last 21 kept) and the
 * dpm_2 "discard penultimate" path (21 computed, the 20th dropped). */
static void test_ksampler_golden(void **state) {
    (void)state;
    json_t *root = golden_load("sigmas.json");
    const json_t *rows = json_object_get(root, "ksampler");
    assert_true(json_array_size(rows) == 12);
    struct schedule s;
    schedule_init_sd1(&s);
    int bad = 0;
    size_t i;
    json_t *row;
    json_array_foreach(rows, i, row) {
        const char *name = json_string_value(json_object_get(row, "scheduler"));
        const char *sampler = json_string_value(json_object_get(row, "sampler"));
        struct schedule_request req = {
            .kind = schedule_kind_parse(name),
            .steps = (int)golden_int(json_object_get(row, "steps")),
            .denoise = json_number_value(json_object_get(row, "denoise")),
            .discard_penultimate = strcmp(sampler, "dpm_2") == 0,
            .start_step = -1,
            .last_step = -1,
        };
        float *sig;
        int n;
        struct err e = {0};
        assert_int_equal(schedule_ksampler_sigmas(&s, &req, &sig, &n, &e), STATUS_OK);
        int computed = req.denoise > 0.9999 ? req.steps : (int)(req.steps / req.denoise);
        if (req.discard_penultimate) computed += 1;
        char what[96];
        snprintf(what, sizeof what, "ksampler %s %s denoise %g", name, sampler, req.denoise);
        /* the known 1-ulp value of a full 20-step normal schedule sits at the same index */
        bad += compare_sigmas(what, name, computed, sig, n, json_object_get(row, "bits"));
        mem_free(sig);
    }
    assert_int_equal(bad, 0);
    json_decref(root);
}

/* ===== KSamplerAdvanced slicing (no golden: checked against slices of the full list) ===== */

static void test_ksampler_start_last_step(void **state) {
    (void)state;
    struct schedule s;
    schedule_init_sd1(&s);
    float *full, *sig;
    int nfull, n;
    struct err e = {0};
    assert_int_equal(schedule_sigmas(&s, SCHEDULE_KIND_KARRAS, 20, &full, &nfull, &e), STATUS_OK);
    assert_int_equal(nfull, 21);

    /* steps 0..10 with leftover noise: 11 values, the last one unchanged */
    struct schedule_request req = {.kind = SCHEDULE_KIND_KARRAS, .steps = 20, .denoise = 1.0,
                                   .start_step = 0, .last_step = 10, .force_full_denoise = false};
    assert_int_equal(schedule_ksampler_sigmas(&s, &req, &sig, &n, &e), STATUS_OK);
    assert_int_equal(n, 11);
    assert_memory_equal(sig, full, 11 * sizeof(float));
    mem_free(sig);

    /* same with force_full_denoise: the last value becomes 0 */
    req.force_full_denoise = true;
    assert_int_equal(schedule_ksampler_sigmas(&s, &req, &sig, &n, &e), STATUS_OK);
    assert_int_equal(n, 11);
    assert_memory_equal(sig, full, 10 * sizeof(float));
    assert_true(sig[10] == 0.0f);
    mem_free(sig);

    /* start at 10, end at 10000 (the node's default): sigmas[10..20] */
    req = (struct schedule_request){.kind = SCHEDULE_KIND_KARRAS, .steps = 20, .denoise = 1.0,
                                    .start_step = 10, .last_step = 10000, .force_full_denoise = true};
    assert_int_equal(schedule_ksampler_sigmas(&s, &req, &sig, &n, &e), STATUS_OK);
    assert_int_equal(n, 11);
    assert_memory_equal(sig, full + 10, 11 * sizeof(float));
    mem_free(sig);

    /* start_step >= n - 1: nothing to do (the latent is returned unchanged) */
    req.start_step = 20;
    assert_int_equal(schedule_ksampler_sigmas(&s, &req, &sig, &n, &e), STATUS_OK);
    assert_int_equal(n, 0);
    assert_null(sig);

    /* KSamplerAdvanced ending at step 0 (start 0): one sigma left, and 0 < 1 - 1 fails, so
     * ComfyUI returns the latent unchanged */
    req = (struct schedule_request){.kind = SCHEDULE_KIND_KARRAS, .steps = 20, .denoise = 1.0,
                                    .start_step = 0, .last_step = 0};
    assert_int_equal(schedule_ksampler_sigmas(&s, &req, &sig, &n, &e), STATUS_OK);
    assert_int_equal(n, 0);
    /* without a start step the single sigma stays (ComfyUI would then only scale the noise) */
    req.start_step = -1;
    assert_int_equal(schedule_ksampler_sigmas(&s, &req, &sig, &n, &e), STATUS_OK);
    assert_int_equal(n, 1);
    assert_true(sig[0] == full[0]);
    mem_free(sig);

    /* denoise 0: no sigmas */
    req = (struct schedule_request){.kind = SCHEDULE_KIND_KARRAS, .steps = 20, .denoise = 0.0,
                                    .start_step = -1, .last_step = -1};
    assert_int_equal(schedule_ksampler_sigmas(&s, &req, &sig, &n, &e), STATUS_OK);
    assert_int_equal(n, 0);

    /* errors carry the scheduler and the input */
    req = (struct schedule_request){.kind = SCHEDULE_KIND_KARRAS, .steps = 0, .denoise = 1.0,
                                    .start_step = -1, .last_step = -1};
    assert_int_equal(schedule_ksampler_sigmas(&s, &req, &sig, &n, &e), STATUS_ERR_INVALID);
    assert_non_null(strstr(e.msg, "steps"));
    err_clear(&e);
    assert_int_equal(schedule_sigmas(&s, SCHEDULE_KIND_COUNT, 5, &sig, &n, &e), STATUS_ERR_INVALID);
    err_clear(&e);
    assert_int_equal(schedule_sigmas(&s, SCHEDULE_KIND_BETA, -3, &sig, &n, &e), STATUS_ERR_INVALID);
    assert_non_null(strstr(e.msg, "'beta'"));
    mem_free(full);
}

/* sigma(t) interpolates log sigma: at integer t it is exp(log_sigmas[t]), between two
 * integers it lies between their sigmas; timestep() inverts sigma() at integers. */
static void test_sigma_and_timestep(void **state) {
    (void)state;
    struct schedule s;
    schedule_init_sd1(&s);
    for (int t = 0; t < SCHEDULE_TIMESTEPS; t += 37) {
        float sig = schedule_sigma(&s, (float)t);
        assert_true(golden_ulp_diff(sig, s.sigmas[t]) <= 1);
        assert_int_equal(schedule_timestep(&s, sig), t);
        float mid = schedule_sigma(&s, (float)t + 0.5f);
        if (t + 1 < SCHEDULE_TIMESTEPS) assert_true(mid > s.sigmas[t] && mid < s.sigmas[t + 1]);
    }
    assert_int_equal(schedule_timestep(&s, 0.0f), 0);
    assert_int_equal(schedule_timestep(&s, 1000.0f), SCHEDULE_TIMESTEPS - 1);
    assert_true(schedule_sigma(&s, -5.0f) == schedule_sigma(&s, 0.0f));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_sampling_table),
        cmocka_unit_test(test_timestep_normal_20),
        cmocka_unit_test(test_scheduler_names),
        cmocka_unit_test(test_schedulers_golden),
        cmocka_unit_test(test_ksampler_golden),
        cmocka_unit_test(test_ksampler_start_last_step),
        cmocka_unit_test(test_sigma_and_timestep),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
