/* model/ckpt_gen.c -- random SD 1.x checkpoints: a small PRNG, per-role initialisation, the
 * DDPM buffers, and the streaming write.
 * Owns: one chunk buffer while ckpt_gen_write runs.
 * Must not: depend on anything but (seed, tensor name, shape) for a tensor's values.
 * Threads: any. */
#include "model/ckpt_gen.h"

#include "base/base.h"
#include "base/mem.h"
#include "base/status.h"
#include "model/layout.h"
#include "model/safetensors.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ===== PRNG: splitmix64 + Box-Muller (written for kiln; not torch-compatible) ===== */

struct rng {
    uint64_t state;
};

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The stream of one tensor: the seed mixed with a 64-bit FNV-1a hash of its name. */
static void rng_init(struct rng *r, uint64_t seed, const char *name) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) h = (h ^ *p) * 0x100000001b3ull;
    uint64_t s = seed;
    r->state = splitmix64(&s) ^ h;
}

/* Two independent standard normals from one 64-bit draw: 24 bits each for u1 in (0, 1] and
 * u2 in [0, 1), then Box-Muller in float (tails reach 5.8 sigma; plenty for weights, and twice
 * as fast as double math, which matters for the 1.07e9 values of --sd15). */
static void rng_normal2(struct rng *r, float *z0, float *z1) {
    uint64_t x = splitmix64(&r->state);
    float u1 = (float)((uint32_t)(x >> 40) + 1) * 0x1.0p-24f;
    float u2 = (float)(uint32_t)(x & 0xffffff) * 0x1.0p-24f;
    float rad = sqrtf(-2.0f * logf(u1)), s, c;
    sincosf(6.283185307179586f * u2, &s, &c);
    *z0 = rad * c;
    *z1 = rad * s;
}

/* ===== DDPM buffers (LDM register_schedule, "linear" beta schedule of SD 1.x) ===== */

#define SD1_LINEAR_START 0.00085
#define SD1_LINEAR_END 0.0120

/* Fills out[LAYOUT_SCHEDULE_STEPS] with buffer `which`, computed in double. */
static void schedule_fill(enum layout_schedule which, float *out) {
    enum { N = LAYOUT_SCHEDULE_STEPS };
    double ac = 1.0; /* running cumprod of alphas */
    double s0 = sqrt(SD1_LINEAR_START), s1 = sqrt(SD1_LINEAR_END);
    for (int i = 0; i < N; i++) {
        double b = s0 + (s1 - s0) * i / (N - 1);
        double beta = b * b, alpha = 1.0 - beta;
        double prev = ac; /* alphas_cumprod_prev[i] (1 at i = 0) */
        ac *= alpha;
        double pv = beta * (1.0 - prev) / (1.0 - ac); /* posterior variance, v_posterior = 0 */
        double v;
        switch (which) {
        case LAYOUT_SCHEDULE_BETAS: v = beta; break;
        case LAYOUT_SCHEDULE_ALPHAS_CUMPROD: v = ac; break;
        case LAYOUT_SCHEDULE_ALPHAS_CUMPROD_PREV: v = prev; break;
        case LAYOUT_SCHEDULE_SQRT_ALPHAS_CUMPROD: v = sqrt(ac); break;
        case LAYOUT_SCHEDULE_SQRT_ONE_MINUS_ALPHAS_CUMPROD: v = sqrt(1.0 - ac); break;
        case LAYOUT_SCHEDULE_LOG_ONE_MINUS_ALPHAS_CUMPROD: v = log(1.0 - ac); break;
        case LAYOUT_SCHEDULE_SQRT_RECIP_ALPHAS_CUMPROD: v = sqrt(1.0 / ac); break;
        case LAYOUT_SCHEDULE_SQRT_RECIPM1_ALPHAS_CUMPROD: v = sqrt(1.0 / ac - 1.0); break;
        case LAYOUT_SCHEDULE_POSTERIOR_VARIANCE: v = pv; break;
        case LAYOUT_SCHEDULE_POSTERIOR_LOG_VARIANCE_CLIPPED: v = log(pv > 1e-20 ? pv : 1e-20); break;
        case LAYOUT_SCHEDULE_POSTERIOR_MEAN_COEF1: v = beta * sqrt(prev) / (1.0 - ac); break;
        case LAYOUT_SCHEDULE_POSTERIOR_MEAN_COEF2: v = (1.0 - prev) * sqrt(alpha) / (1.0 - ac); break;
        default: ASSERT(!"unknown schedule buffer"); v = 0;
        }
        out[i] = (float)v;
    }
}

/* ===== Per-tensor values ===== */

#define CHUNK (1 << 18) /* elements generated per step: 1 MiB of f32 */

/* Standard deviation of a random tensor by role (0 for constant ones). */
static double role_std(const struct layout_tensor *t) {
    double fan_in = t->ndim > 1 ? (double)layout_tensor_numel(t) / (double)t->shape[0] : 1.0;
    switch (t->role) {
    case LAYOUT_ROLE_WEIGHT: return 1.0 / sqrt(fan_in);
    case LAYOUT_ROLE_WEIGHT_OUT: return 0.5 / sqrt(fan_in);
    case LAYOUT_ROLE_BIAS:
    case LAYOUT_ROLE_EMBEDDING: return 0.02;
    default: return 0.0;
    }
}

/* Encodes n f32 values into dtype dt at dst. */
static void encode(enum dtype dt, const float *src, void *dst, size_t n) {
    unsigned char *d = dst;
    for (size_t i = 0; i < n; i++) {
        switch (dt) {
        case DTYPE_F32: memcpy(d + 4 * i, &src[i], 4); break;
        case DTYPE_F16: {
            uint16_t h = f32_to_f16(src[i]);
            memcpy(d + 2 * i, &h, 2);
            break;
        }
        case DTYPE_BF16: {
            uint16_t h = f32_to_bf16(src[i]);
            memcpy(d + 2 * i, &h, 2);
            break;
        }
        case DTYPE_I32: {
            int32_t v = (int32_t)src[i];
            memcpy(d + 4 * i, &v, 4);
            break;
        }
        case DTYPE_I64: {
            int64_t v = (int64_t)src[i];
            memcpy(d + 8 * i, &v, 8);
            break;
        }
        default: ASSERT(!"unsupported dtype");
        }
    }
}

/* Generates tensor t chunk by chunk and streams it to w. f32 and bytes are CHUNK-sized buffers. */
static int gen_tensor(struct ckpt_writer *w, const struct layout_tensor *t, uint64_t seed, float *f32,
                      unsigned char *bytes, struct err *err) {
    size_t n = (size_t)layout_tensor_numel(t), esize = dtype_size(t->dtype);
    struct rng r;
    rng_init(&r, seed, t->name);
    double std = role_std(t);
    float sched[LAYOUT_SCHEDULE_STEPS];
    if (t->role == LAYOUT_ROLE_SCHEDULE) {
        ASSERT(n == LAYOUT_SCHEDULE_STEPS);
        schedule_fill(t->schedule, sched);
    }
    for (size_t done = 0; done < n;) {
        size_t m = MIN(n - done, (size_t)CHUNK);
        switch (t->role) {
        case LAYOUT_ROLE_NORM_WEIGHT:
        case LAYOUT_ROLE_NORM_BIAS:
            for (size_t i = 0; i < m; i++) f32[i] = t->role == LAYOUT_ROLE_NORM_WEIGHT ? 1.0f : 0.0f;
            break;
        case LAYOUT_ROLE_POSITION_IDS:
            for (size_t i = 0; i < m; i++) f32[i] = (float)((done + i) % (size_t)t->shape[t->ndim - 1]);
            break;
        case LAYOUT_ROLE_SCHEDULE:
            memcpy(f32, sched + done, m * sizeof *f32);
            break;
        default: /* normals in pairs; CHUNK is even, so only a tensor's last odd value drops one */
            for (size_t i = 0; i < m; i += 2) {
                float z0, z1;
                rng_normal2(&r, &z0, &z1);
                f32[i] = (float)(std * z0);
                if (i + 1 < m) f32[i + 1] = (float)(std * z1);
            }
            break;
        }
        encode(t->dtype, f32, bytes, m);
        int rc = ckpt_writer_stream(w, bytes, m * esize, err);
        if (rc) return rc;
        done += m;
    }
    return 0;
}

/* ===== Entry point ===== */

int ckpt_gen_write(const char *path, const struct sd_config *config, uint64_t seed, struct err *err) {
    struct layout l;
    int rc = layout_build(&l, config, err);
    if (rc) {
        layout_deinit(&l);
        err_prefix(err, "cannot generate %s", path);
        return rc;
    }
    struct ckpt_writer *w = ckpt_writer_new();
    float *f32 = mem_alloc(CHUNK * sizeof *f32);
    unsigned char *bytes = mem_alloc(CHUNK * 8); /* widest dtype: I64 */
    for (int i = 0; i < l.n && !rc; i++) {
        const struct layout_tensor *t = &l.tensors[i];
        rc = ckpt_writer_add(w, t->name, t->dtype, t->ndim, t->shape, NULL, err);
    }
    char seed_str[32];
    snprintf(seed_str, sizeof seed_str, "%llu", (unsigned long long)seed);
    if (!rc) rc = ckpt_writer_set_metadata(w, "kiln.generator", "ckpt_gen (random weights)", err);
    if (!rc) rc = ckpt_writer_set_metadata(w, "kiln.seed", seed_str, err);
    if (!rc) rc = ckpt_writer_begin(w, path, err);
    for (int i = 0; i < l.n && !rc; i++) rc = gen_tensor(w, &l.tensors[i], seed, f32, bytes, err);
    if (!rc) rc = ckpt_writer_finish(w, err);
    mem_free(bytes);
    mem_free(f32);
    ckpt_writer_free(w); /* removes path.tmp if we failed midway */
    layout_deinit(&l);
    return rc;
}
