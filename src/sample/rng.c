/* sample/rng.c -- torch's CPU generator (mt19937), torch.randn and ComfyUI's prepare_noise.
 * Owns: the engine, the uniform/normal transforms, the scalar (DEFAULT) 16-block kernel and
 * the run-time choice between it and the AVX2 one (rng_avx2.c).
 * Must not: allocate; every output goes to caller memory.
 * Threads: a struct rng belongs to one caller; everything else is reentrant.
 * The facts reproduced here are listed in rng.h and ENGINE.md §3. */
#include "sample/rng.h"

#include "base/base.h"
#include "base/status.h"
#include "sample/rng_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ===== mt19937 ===== */

#define MT_M 397
#define MT_MATRIX_A 0x9908b0dfu
#define MT_UPPER 0x80000000u
#define MT_LOWER 0x7fffffffu

void rng_init(struct rng *r, uint64_t seed) {
    /* torch: mt19937(seed) stores seed & 0xffffffff in state[0]; the rest by Knuth's recurrence */
    r->state[0] = (uint32_t)(seed & 0xffffffffu);
    for (int j = 1; j < RNG_MT_N; j++) {
        uint32_t prev = r->state[j - 1];
        r->state[j] = 1812433253u * (prev ^ (prev >> 30)) + (uint32_t)j;
    }
    r->left = 1;
    r->next = 0;
    r->has_normal = false;
    r->next_normal = 0.0;
    r->seed = seed;
}

/* Regenerates all 624 words (the standard twist). */
static void mt_twist(struct rng *r) {
    uint32_t *s = r->state;
    for (int k = 0; k < RNG_MT_N; k++) {
        uint32_t y = (s[k] & MT_UPPER) | (s[(k + 1) % RNG_MT_N] & MT_LOWER);
        s[k] = s[(k + MT_M) % RNG_MT_N] ^ (y >> 1) ^ ((y & 1u) ? MT_MATRIX_A : 0u);
    }
    r->left = RNG_MT_N;
    r->next = 0;
}

uint32_t rng_u32(struct rng *r) {
    if (--r->left == 0) mt_twist(r);
    uint32_t y = r->state[r->next++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

uint64_t rng_u64(struct rng *r) {
    uint64_t hi = rng_u32(r);
    uint64_t lo = rng_u32(r);
    return (hi << 32) | lo;
}

/* ===== Uniforms and the per-element normal (numel < 16) ===== */

/* at::uniform_real_distribution<float>(0, 1): 24 random bits, exact in [0, 1) */
static float uniform_f32(struct rng *r) {
    return (float)(rng_u32(r) & 0xffffffu) * (1.0f / 16777216.0f);
}

/* at::uniform_real_distribution<double>(0, 1): 53 random bits from random64() */
static double uniform_f64(struct rng *r) {
    return (double)(rng_u64(r) & ((UINT64_C(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
}

/* at::normal_distribution<double>(0, 1): Box-Muller in double, caching the sine half. */
static double normal_f64(struct rng *r) {
    if (r->has_normal) {
        r->has_normal = false;
        return r->next_normal;
    }
    const double pi = 3.14159265358979323846;
    double u1 = uniform_f64(r); /* angle */
    double u2 = uniform_f64(r); /* radius: log1p(-u2) = ln(1 - u2), 1 - u2 in (0, 1] */
    double radius = sqrt(-2.0 * log1p(-u2));
    double theta = 2.0 * pi * u1;
    r->next_normal = radius * sin(theta);
    r->has_normal = true;
    return radius * cos(theta);
}

/* ===== The 16-block transforms ===== */

/* torch's scalar normal_fill_16 (DEFAULT capability): float libm, angle in double. */
static void fill16_default(float *data) {
    const double two_pi = 2.0 * 3.14159265358979323846;
    for (int j = 0; j < 8; j++) {
        const float u1 = 1.0f - data[j];
        const float u2 = data[j + 8];
        const float radius = sqrtf(-2.0f * logf(u1));
        const float theta = (float)(two_pi * (double)u2);
        /* radius * trig * std + mean, with std 1 and mean 0 */
        data[j] = radius * cosf(theta) * 1.0f + 0.0f;
        data[j + 8] = radius * sinf(theta) * 1.0f + 0.0f;
    }
}

bool rng_kernel_avx2_available(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return false;
#endif
}

enum rng_kernel rng_kernel_active(void) {
    const char *env = getenv("KILN_RNG_KERNEL");
    if (env && strcmp(env, "default") == 0) return RNG_KERNEL_DEFAULT;
    return rng_kernel_avx2_available() ? RNG_KERNEL_AVX2 : RNG_KERNEL_DEFAULT;
}

const char *rng_kernel_name(enum rng_kernel kernel) {
    switch (kernel) {
    case RNG_KERNEL_AVX2: return "avx2";
    case RNG_KERNEL_DEFAULT: return "default";
    default: return "?";
    }
}

static void fill16(float *data, enum rng_kernel kernel) {
#if defined(__x86_64__) || defined(__i386__)
    if (kernel == RNG_KERNEL_AVX2) {
        rng__fill16_avx2(data);
        return;
    }
#endif
    fill16_default(data);
}

/* ===== torch.randn ===== */

void rng_randn_kernel(struct rng *r, float *out, int64_t n, enum rng_kernel kernel) {
    ASSERT(n >= 0 && (n == 0 || out));
    ASSERT(kernel == RNG_KERNEL_DEFAULT || (kernel == RNG_KERNEL_AVX2 && rng_kernel_avx2_available()));
    if (n < 16) {
        /* normal_kernel_default: one normal_distribution<double> per element */
        for (int64_t i = 0; i < n; i++) out[i] = (float)normal_f64(r);
        return;
    }
    /* normal_fill: all uniforms first, then each whole 16-block; a partial tail block is
     * handled by redrawing the last 16 slots and transforming them again */
    for (int64_t i = 0; i < n; i++) out[i] = uniform_f32(r);
    for (int64_t i = 0; i + 16 <= n; i += 16) fill16(out + i, kernel);
    if (n % 16 != 0) {
        float *tail = out + n - 16;
        for (int i = 0; i < 16; i++) tail[i] = uniform_f32(r);
        fill16(tail, kernel);
    }
}

void rng_randn(struct rng *r, float *out, int64_t n) {
    rng_randn_kernel(r, out, n, rng_kernel_active());
}

/* ===== ComfyUI prepare_noise ===== */

int rng_prepare_noise(uint64_t seed, int64_t b, int64_t per_image, const int *batch_index,
                      int n_batch_index, float *out, struct err *err) {
    if (b < 1 || per_image < 1)
        return err_set(err, STATUS_ERR_INVALID, "prepare_noise: latent batch %lld x %lld values is empty",
                       (long long)b, (long long)per_image);
    struct rng r;
    rng_init(&r, seed);
    if (!batch_index) {
        /* one torch.randn over the whole [B, C, H, W] latent */
        rng_randn(&r, out, b * per_image);
        return STATUS_OK;
    }
    if (n_batch_index != b)
        return err_set(err, STATUS_ERR_INVALID,
                       "prepare_noise: batch_index has %d entries but the latent has %lld images",
                       n_batch_index, (long long)b);
    int max_index = -1;
    for (int k = 0; k < n_batch_index; k++) {
        if (batch_index[k] < 0)
            return err_set(err, STATUS_ERR_INVALID, "prepare_noise: batch_index[%d] is %d (must be >= 0)", k,
                           batch_index[k]);
        max_index = MAX(max_index, batch_index[k]);
    }
    /* Draws i = 0 .. max in sequence; draw i goes to every output slot k with batch_index[k]
     * == i. A draw nobody asked for still advances the generator: it is made into a slot that
     * waits for a later draw (one exists, since i < max) and is overwritten then. */
    for (int i = 0; i <= max_index; i++) {
        int first = -1, spare = -1;
        for (int k = 0; k < n_batch_index; k++) {
            if (batch_index[k] > i && spare < 0) spare = k;
            if (batch_index[k] != i) continue;
            if (first < 0) {
                first = k;
                rng_randn(&r, out + (int64_t)k * per_image, per_image);
            } else {
                memcpy(out + (int64_t)k * per_image, out + (int64_t)first * per_image,
                       (size_t)per_image * sizeof(float));
            }
        }
        if (first < 0) {
            ASSERT(spare >= 0);
            rng_randn(&r, out + (int64_t)spare * per_image, per_image);
        }
    }
    return STATUS_OK;
}
