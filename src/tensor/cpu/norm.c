/* tensor/cpu/norm.c -- GROUP_NORM (optionally fused with SiLU) and LAYER_NORM on the CPU.
 * Owns: nothing; borrows the ctx scratch for the per-group statistics.
 * Threads: the backend's worker; OpenMP over groups (statistics) and rows (normalisation).
 * NUMERICS. Like torch.nn.GroupNorm / LayerNorm: biased variance, (x - mean) / sqrt(var + eps)
 * then the per-channel affine. Statistics take two passes accumulated in double (the mean, then
 * the squared deviations from it), so a group of 16 channels x 512 x 512 positions stays within
 * float rounding of a double reference, even with a large mean. Channels-last input (ip[2])
 * takes a plain strided reference loop. */
#include "tensor/cpu/cpu.h"
#include "base/base.h"
#include "base/status.h"

#include <math.h>

/* Mean and 1/sqrt(var + eps) of n contiguous floats. */
static void moments(const float *x, int64_t n, double eps, double *mean, double *rstd) {
    double m = cpu__vec_sum(x, n) / (double)n;
    float mf = (float)m;
    /* deviations are taken from the float mean; shift the result back to the exact mean */
    double var = cpu__vec_sumsq_dev(x, n, mf) / (double)n - (m - mf) * (m - mf);
    *mean = m;
    *rstd = 1.0 / sqrt((var > 0 ? var : 0) + eps);
}

/* ===== GroupNorm ===== */

/* x [B, C, *] -> same; group g of image b is the contiguous block of channels
 * [g*C/G, (g+1)*C/G) x all positions. */
/* Channels-last x [B, P, C] (ip[2]): the same statistics in the same two passes, strided
 * (group g of image b is channels [g*C/G, (g+1)*C/G) of every position), of x + a where src[3]
 * is a [B, C] (op_group_norm_nhwc_add). A reference for the GPU's channels-last path, not a
 * fast path. */
static int group_norm_nhwc(struct cpu_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *tx = dst->src[0], *tw = dst->src[1], *tb = dst->src[2];
    const float *x = tx->data, *w = tw ? tw->data : NULL, *b = tb ? tb->data : NULL;
    const float *a = dst->src[3] ? dst->src[3]->data : NULL;
    float *y = dst->data;
    int64_t nb = tx->shape[0], c = tx->shape[tx->ndim - 1], groups = dst->ip[0];
    int64_t p = tensor_numel(tx) / (nb * c), cpg = c / groups;
    const bool silu = dst->ip[1] != 0;
    const double eps = dst->fp[0], n = (double)(p * cpg);
    double *stats = cpu__work(ctx, (size_t)(nb * groups) * 2 * sizeof(double), "group_norm statistics", err);
    if (!stats) return err->code;
#pragma omp parallel for schedule(dynamic, 1) if (nb * c * p >= CPU_PAR_MIN)
    for (int64_t bg = 0; bg < nb * groups; bg++) {
        const float *xg = x + (bg / groups) * p * c + (bg % groups) * cpg;
        const float *ag = a ? a + (bg / groups) * c + (bg % groups) * cpg : NULL;
        double sum = 0, sq = 0;
        for (int64_t i = 0; i < p; i++)
            for (int64_t k = 0; k < cpg; k++) sum += (double)xg[i * c + k] + (ag ? ag[k] : 0.0);
        double mean = sum / n;
        for (int64_t i = 0; i < p; i++)
            for (int64_t k = 0; k < cpg; k++) {
                double d = (double)xg[i * c + k] + (ag ? ag[k] : 0.0) - mean;
                sq += d * d;
            }
        stats[2 * bg] = mean;
        stats[2 * bg + 1] = 1.0 / sqrt(sq / n + eps);
    }
#pragma omp parallel for schedule(static) if (nb * c * p >= CPU_PAR_MIN)
    for (int64_t r = 0; r < nb * p; r++) {
        const double *st = stats + 2 * (r / p) * groups;
        const float *ar = a ? a + (r / p) * c : NULL;
        for (int64_t ch = 0; ch < c; ch++) {
            double mean = st[2 * (ch / cpg)] - (ar ? ar[ch] : 0.0), rstd = st[2 * (ch / cpg) + 1];
            double scale = rstd * (w ? w[ch] : 1.0);
            float v = (float)((double)x[r * c + ch] * scale + ((b ? b[ch] : 0.0) - mean * scale));
            y[r * c + ch] = silu ? v / (1.0f + expf(-v)) : v;
        }
    }
    return 0;
}

int cpu_op_group_norm(struct cpu_ctx *ctx, struct tensor *dst, struct err *err) {
    if (dst->ip[2]) return group_norm_nhwc(ctx, dst, err);
    const struct tensor *tx = dst->src[0], *tw = dst->src[1], *tb = dst->src[2];
    const float *x = tx->data, *w = tw ? tw->data : NULL, *b = tb ? tb->data : NULL;
    float *y = dst->data;
    int64_t nb = tx->shape[0], c = tx->shape[1], groups = dst->ip[0];
    int64_t spatial = tensor_numel(tx) / (nb * c), cpg = c / groups, gsize = cpg * spatial;
    const bool silu = dst->ip[1] != 0;
    const double eps = dst->fp[0];

    double *stats = cpu__work(ctx, (size_t)(nb * groups) * 2 * sizeof(double), "group_norm statistics", err);
    if (!stats) return err->code;
#pragma omp parallel for schedule(dynamic, 1) if (nb * c * spatial >= CPU_PAR_MIN)
    for (int64_t bg = 0; bg < nb * groups; bg++)
        moments(x + bg * gsize, gsize, eps, &stats[2 * bg], &stats[2 * bg + 1]);

    /* y = x * scale + shift per channel, scale = rstd * w, shift = b - mean * scale */
#pragma omp parallel for schedule(static) if (nb * c * spatial >= CPU_PAR_MIN)
    for (int64_t bc = 0; bc < nb * c; bc++) {
        int64_t ch = bc % c, bg = (bc / c) * groups + ch / cpg;
        double mean = stats[2 * bg], rstd = stats[2 * bg + 1];
        double scale = rstd * (w ? w[ch] : 1.0);
        double shift = (b ? b[ch] : 0.0) - mean * scale;
        cpu__vec_affine(y + bc * spatial, x + bc * spatial, spatial, (float)scale, (float)shift, silu);
    }
    return 0;
}

/* ===== LayerNorm ===== */

/* x [.., C] -> same, each row of C normalised on its own. */
int cpu_op_layer_norm(struct cpu_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *tx = dst->src[0], *tw = dst->src[1], *tb = dst->src[2];
    const float *x = tx->data, *w = tw ? tw->data : NULL, *b = tb ? tb->data : NULL;
    float *y = dst->data;
    int64_t c = tx->shape[tx->ndim - 1], rows = tensor_numel(tx) / c;
    const double eps = dst->fp[0];
#pragma omp parallel for schedule(static) if (rows * c >= CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *restrict xr = x + r * c;
        float *restrict yr = y + r * c;
        double mean, rstd;
        moments(xr, c, eps, &mean, &rstd);
        const float m = (float)mean, s = (float)rstd;
        if (w && b) {
#pragma omp simd
            for (int64_t i = 0; i < c; i++) yr[i] = (xr[i] - m) * s * w[i] + b[i];
        } else {
#pragma omp simd
            for (int64_t i = 0; i < c; i++) yr[i] = (xr[i] - m) * s;
            if (w) {
#pragma omp simd
                for (int64_t i = 0; i < c; i++) yr[i] *= w[i];
            }
            if (b) {
#pragma omp simd
                for (int64_t i = 0; i < c; i++) yr[i] += b[i];
            }
        }
    }
    return 0;
}
