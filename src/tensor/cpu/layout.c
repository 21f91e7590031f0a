/* tensor/cpu/layout.c -- data movement on the CPU: TRANSPOSE, UPSAMPLE_NEAREST, CONCAT, GET_ROWS,
 * and CAST between float dtypes.
 * Owns: nothing; reads dst->src[], writes dst->data.
 * Threads: the backend's worker; OpenMP over rows / tiles / copies. */
#include "tensor/cpu/cpu.h"
#include "base/base.h"
#include "base/status.h"

#include <omp.h>
#include <math.h>
#include <string.h>

#define COPY_CHUNK ((int64_t)1 << 16) /* floats per task of a large copy (256 KiB) */

/* memcpy of n floats, split across the threads when large. */
static void par_copy(float *restrict dst, const float *restrict src, int64_t n) {
    int64_t tasks = (n + COPY_CHUNK - 1) / COPY_CHUNK;
#pragma omp parallel for schedule(static) if (n >= 4 * COPY_CHUNK)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t i0 = t * COPY_CHUNK;
        memcpy(dst + i0, src + i0, (size_t)MIN(COPY_CHUNK, n - i0) * sizeof(float));
    }
}

/* ===== TRANSPOSE: [.., M, N] -> [.., N, M] ===== */

#define TILE 32 /* 32 x 32 floats: 4 KiB in, 4 KiB out, both in L1 */

int cpu_op_transpose(struct cpu_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *ta = dst->src[0];
    const float *a = ta->data;
    float *y = dst->data;
    int64_t m = ta->shape[ta->ndim - 2], n = ta->shape[ta->ndim - 1], mats = tensor_numel(ta) / (m * n);
    int64_t mt = (m + TILE - 1) / TILE, nt = (n + TILE - 1) / TILE;
#pragma omp parallel for schedule(static) if (mats * m * n >= CPU_PAR_MIN)
    for (int64_t t = 0; t < mats * mt * nt; t++) {
        int64_t mat = t / (mt * nt), i0 = (t / nt) % mt * TILE, j0 = t % nt * TILE;
        int64_t i1 = MIN(m, i0 + TILE), j1 = MIN(n, j0 + TILE);
        const float *restrict src = a + mat * m * n; /* [m, n] */
        float *restrict out = y + mat * m * n;       /* [n, m] */
        for (int64_t j = j0; j < j1; j++) {
            float *restrict orow = out + j * m;
#pragma omp simd
            for (int64_t i = i0; i < i1; i++) orow[i] = src[i * n + j];
        }
    }
    return 0;
}

/* ===== UPSAMPLE_NEAREST: [B, C, H, W] -> [B, C, H*f, W*f] ===== */

/* Channels-last [B, H, W, C] -> [B, h, w, C] (ip[0]): whole pixels copied, the same source
 * index rule as below. */
static int upsample_nearest_nhwc(const struct tensor *dst) {
    const struct tensor *ta = dst->src[0];
    const float *a = ta->data;
    float *y = dst->data;
    int64_t nb = ta->shape[0], h = ta->shape[1], w = ta->shape[2], c = ta->shape[3];
    int64_t ho = dst->shape[1], wo = dst->shape[2];
    float sh = (float)h / (float)ho, sw = (float)w / (float)wo;
#pragma omp parallel for schedule(static) if (nb * ho * wo * c >= CPU_PAR_MIN)
    for (int64_t r = 0; r < nb * ho; r++) {
        int64_t b = r / ho, oy = r % ho;
        int64_t iy = (int64_t)floorf((float)oy * sh);
        if (iy > h - 1) iy = h - 1;
        for (int64_t ox = 0; ox < wo; ox++) {
            int64_t ix = (int64_t)floorf((float)ox * sw);
            if (ix > w - 1) ix = w - 1;
            memcpy(y + (r * wo + ox) * c, a + ((b * h + iy) * w + ix) * c, (size_t)c * sizeof(float));
        }
    }
    return 0;
}

int cpu_op_upsample_nearest(struct cpu_ctx *ctx, struct tensor *dst, struct err *err) {
    if (dst->ip[0]) return upsample_nearest_nhwc(dst);
    const struct tensor *ta = dst->src[0];
    const float *a = ta->data;
    float *y = dst->data;
    int64_t h = ta->shape[2], w = ta->shape[3], ho = dst->shape[2], wo = dst->shape[3];
    int64_t planes = ta->shape[0] * ta->shape[1];
    if (ho % h == 0 && wo % w == 0 && ho / h == wo / w) { /* integer factor: row copies */
        int64_t f = ho / h, rows = planes * h;
#pragma omp parallel for schedule(static) if (rows * w * f * f >= CPU_PAR_MIN)
        for (int64_t r = 0; r < rows; r++) { /* input row r -> output rows r*f .. r*f + f-1 */
            const float *restrict in = a + r * w;
            float *restrict out = y + r * f * wo;
            if (f == 2) {
                for (int64_t x = 0; x < w; x++) out[2 * x] = out[2 * x + 1] = in[x];
            } else {
                for (int64_t x = 0; x < w; x++)
                    for (int64_t k = 0; k < f; k++) out[x * f + k] = in[x];
            }
            for (int64_t k = 1; k < f; k++) memcpy(out + k * wo, out, (size_t)wo * sizeof(float));
        }
        return 0;
    }
    /* any size: torch's "nearest", src = min(floor(dst * (in / out)), in - 1) in float */
    float sh = (float)h / (float)ho, sw = (float)w / (float)wo;
#pragma omp parallel for schedule(static) if (planes * ho * wo >= CPU_PAR_MIN)
    for (int64_t p = 0; p < planes; p++) {
        for (int64_t oy = 0; oy < ho; oy++) {
            int64_t iy = (int64_t)floorf((float)oy * sh);
            if (iy > h - 1) iy = h - 1;
            const float *restrict in = a + (p * h + iy) * w;
            float *restrict out = y + (p * ho + oy) * wo;
            for (int64_t ox = 0; ox < wo; ox++) {
                int64_t ix = (int64_t)floorf((float)ox * sw);
                out[ox] = in[ix > w - 1 ? w - 1 : ix];
            }
        }
    }
    return 0;
}

/* ===== CONCAT along dim ip[0] ===== */

int cpu_op_concat(struct cpu_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *ta = dst->src[0], *tb = dst->src[1];
    const float *a = ta->data, *b = tb->data;
    float *y = dst->data;
    int dim = dst->ip[0];
    int64_t outer = 1, inner = 1;
    for (int i = 0; i < dim; i++) outer *= dst->shape[i];
    for (int i = dim + 1; i < dst->ndim; i++) inner *= dst->shape[i];
    int64_t na = ta->shape[dim] * inner, nb = tb->shape[dim] * inner; /* floats per outer index */
    if (outer < 4 * omp_get_max_threads()) { /* few long copies: split each one */
        for (int64_t o = 0; o < outer; o++) {
            par_copy(y + o * (na + nb), a + o * na, na);
            par_copy(y + o * (na + nb) + na, b + o * nb, nb);
        }
        return 0;
    }
#pragma omp parallel for schedule(static) if (outer * (na + nb) >= CPU_PAR_MIN)
    for (int64_t o = 0; o < outer; o++) {
        memcpy(y + o * (na + nb), a + o * na, (size_t)na * sizeof(float));
        memcpy(y + o * (na + nb) + na, b + o * nb, (size_t)nb * sizeof(float));
    }
    return 0;
}

/* ===== GET_ROWS: table [V, C] by ids [...] -> [..., C] ===== */

int cpu_op_get_rows(struct cpu_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *tt = dst->src[0], *ti = dst->src[1];
    const float *table = tt->data;
    const int32_t *ids = ti->data;
    float *y = dst->data;
    int64_t v = tt->shape[0], c = tt->shape[1], n = tensor_numel(ti);
    for (int64_t i = 0; i < n; i++) /* check every id before writing anything */
        if (ids[i] < 0 || ids[i] >= v)
            return err_set(err, STATUS_ERR_RANGE, "get_rows: id %d at position %lld is outside the table's %lld rows",
                           (int)ids[i], (long long)i, (long long)v);
#pragma omp parallel for schedule(static) if (n * c >= CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) memcpy(y + i * c, table + (int64_t)ids[i] * c, (size_t)c * sizeof(float));
    return 0;
}

/* ===== CAST between F32, F16 and BF16 (through fp32; rounding to nearest even) ===== */

static float load_as_f32(const void *p, enum dtype t, int64_t i) {
    switch (t) {
    case DTYPE_F16: return f16_to_f32(((const uint16_t *)p)[i]);
    case DTYPE_BF16: return bf16_to_f32(((const uint16_t *)p)[i]);
    default: return ((const float *)p)[i];
    }
}

int cpu_op_cast(struct cpu_ctx *ctx, struct tensor *dst, struct err *err) {
    (void)ctx, (void)err;
    const struct tensor *ta = dst->src[0];
    int64_t n = tensor_numel(dst);
    enum dtype from = ta->dtype, to = dst->dtype;
#pragma omp parallel for schedule(static) if (n >= CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float v = load_as_f32(ta->data, from, i);
        if (to == DTYPE_F16) ((uint16_t *)dst->data)[i] = f32_to_f16(v);
        else if (to == DTYPE_BF16) ((uint16_t *)dst->data)[i] = f32_to_bf16(v);
        else ((float *)dst->data)[i] = v;
    }
    return 0;
}
