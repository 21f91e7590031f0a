/* tensor/cpu/conv.c -- CONV2D on the CPU: im2col + sgemm, in waves of bounded scratch.
 * Owns: nothing; borrows the ctx scratch (work.c) for the im2col columns.
 * Threads: the backend's worker; one OpenMP region whose threads build each wave's columns
 * together, then share its product as a grid of single-threaded sgemm tasks (THREADING, cpu.h).
 * DESIGN. For image b, out_b [O, P] = w [O, K] x col [K, P] with K = C*kh*kw, P = Ho*Wo and
 * col[(c*kh + i)*kw + j, y*Wo + x] = x_b[c, y*s - pt + i, x*s - pl + j] (0 outside). The full
 * col of a 512-channel 3x3 conv at 512x512 is 4.8 GB, so the B*P output columns are processed
 * in waves whose col fits cpu__work_max():
 *  - large images: a wave is a range of one image's positions; its product writes straight
 *    into out_b's columns (ldc = P);
 *  - small images (deep UNet levels, 8x8 to 32x32): a wave holds several whole images side by
 *    side, so the big weight matrix is packed once for all of them; the product lands in a
 *    [O, wave] buffer and is copied out per image (with the bias).
 * A wave's product is cut into an O x columns grid (cpu__gemm_grid) that repacks the least.
 * A 1x1, stride-1, unpadded conv of large images needs no col at all: out_b = w x x_b.
 * Large 3x3 stride-1 convs go to conv_winograd.c instead (2.25x less arithmetic).
 * Channels-last convs (ip[5]) take a direct reference loop (conv2d_nhwc). */
#include "tensor/cpu/cpu.h"
#include "base/base.h"
#include "base/status.h"

#include <cblas.h>
#include <limits.h>
#include <omp.h>
#include <string.h>

#define WINO_MIN_C 32      /* input and output channels for Winograd */
#define WINO_MIN_TILES 128 /* 2x2 output tiles over the batch for Winograd (SD's 16x16 level, batch 2) */

struct conv {
    int64_t c, h, w;          /* input channels and size */
    int64_t o, kh, kw;        /* output channels, kernel size */
    int64_t ho, wo, p, k;     /* output size, P = ho*wo, K = c*kh*kw */
    int64_t s, pt, pl;        /* stride, top and left padding (bottom/right follow from ho, wo) */
    int64_t xlo[16], xhi[16]; /* per kernel column j < 16: output x range that reads inside the row */
};

/* ===== im2col ===== */

/* Output columns x in [lo, hi) read input columns x*s - pl + j inside [0, w). */
static void col_range(const struct conv *cv, int64_t j, int64_t *lo, int64_t *hi) {
    int64_t a = cv->pl - j;             /* x*s >= a */
    int64_t b = cv->w - 1 + cv->pl - j; /* x*s <= b */
    int64_t xl = a <= 0 ? 0 : (a + cv->s - 1) / cv->s;
    int64_t xh = b < 0 ? 0 : MIN(cv->wo, b / cv->s + 1);
    *lo = MIN(xl, cv->wo);
    *hi = MAX(xh, *lo);
}

/* Row kr of col for output positions [p0, p1) of one image xb [C, H, W]: row[p - p0]. */
static void im2col_row(const struct conv *cv, const float *xb, float *restrict row, int64_t p0, int64_t p1,
                       int64_t kr) {
    int64_t c = kr / (cv->kh * cv->kw), i = (kr / cv->kw) % cv->kh, j = kr % cv->kw;
    const float *xc = xb + c * cv->h * cv->w;
    int64_t lo, hi;
    if (j < 16) {
        lo = cv->xlo[j];
        hi = cv->xhi[j];
    } else {
        col_range(cv, j, &lo, &hi);
    }
    int64_t y_first = p0 / cv->wo, y_last = (p1 - 1) / cv->wo;
    row -= p0; /* row[p] from here on */
    for (int64_t y = y_first; y <= y_last; y++) {
        int64_t xa = y == y_first ? p0 % cv->wo : 0, xb_ = y == y_last ? (p1 - 1) % cv->wo + 1 : cv->wo;
        float *o = row + y * cv->wo;
        int64_t iy = y * cv->s - cv->pt + i;
        int64_t l = MAX(xa, lo), r = MIN(xb_, hi);
        if (iy < 0 || iy >= cv->h || r <= l) { /* the whole segment reads padding */
            memset(o + xa, 0, (size_t)(xb_ - xa) * sizeof(float));
            continue;
        }
        const float *src = xc + iy * cv->w - cv->pl + j; /* src[x*s] is input column x*s - pl + j */
        if (l > xa) memset(o + xa, 0, (size_t)(l - xa) * sizeof(float));
        if (cv->s == 1) {
            memcpy(o + l, src + l, (size_t)(r - l) * sizeof(float));
        } else {
            for (int64_t x = l; x < r; x++) o[x] = src[x * cv->s];
        }
        if (xb_ > r) memset(o + r, 0, (size_t)(xb_ - r) * sizeof(float));
    }
}

/* ===== Waves ===== */

/* One wave: global output columns [g0, g1) of the B*P, either inside one image or covering
 * whole images. */
struct wave {
    int64_t g0, g1; /* output columns [g0, g1) of all B*P, image-major */
    bool multi;     /* spans several images: product goes to tmp, then is copied out */
};

/* The block [o0, o0+oo) x [c0, c0+cc) of a wave's product (+ bias when written in place). */
static void wave_gemm(const struct conv *cv, const struct wave *wv, const float *x, const float *w, const float *bias,
                      const float *col, bool direct, float *tmp, float *y, int64_t o0, int64_t oo, int64_t c0,
                      int64_t cc) {
    int64_t ncols = wv->g1 - wv->g0;
    const float *bm;
    int64_t ldb;
    if (direct) { /* single image: B is x_b itself */
        int64_t b = wv->g0 / cv->p, p0 = wv->g0 - b * cv->p;
        bm = x + b * cv->c * cv->p + p0 + c0;
        ldb = cv->p;
    } else {
        bm = col + c0;
        ldb = ncols;
    }
    float *cm;
    int64_t ldc;
    float beta = 0.0f;
    if (wv->multi) {
        cm = tmp + o0 * ncols + c0;
        ldc = ncols;
    } else {
        int64_t b = wv->g0 / cv->p, p0 = wv->g0 - b * cv->p;
        cm = y + (b * cv->o + o0) * cv->p + p0 + c0;
        ldc = cv->p;
        if (bias) { /* start from the bias and let sgemm accumulate onto it */
            for (int64_t o = 0; o < oo; o++) {
                float *restrict r = cm + o * ldc;
                const float bv = bias[o0 + o];
#pragma omp simd
                for (int64_t q = 0; q < cc; q++) r[q] = bv;
            }
            beta = 1.0f;
        }
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)oo, (int)cc, (int)cv->k, 1.0f, w + o0 * cv->k,
                (int)cv->k, bm, (int)ldb, beta, cm, (int)ldc);
}

/* ===== Choice of method ===== */

static int conv_forced = -1; /* test hook; -1 = choose */

void cpu__conv_force(int mode) { conv_forced = mode; }

/* Winograd pays off once the products are large: enough channels on both sides for the
 * transforms to be cheap next to them, and enough 2x2 tiles to be the products' columns
 * (measured, 1280 channels, batch 2: 1.6x faster at 32x32, 1.35x at 16x16, 0.6x at 8x8). */
static bool use_winograd(const struct tensor *dst) {
    if (conv_forced >= 0 || !cpu__conv_winograd_fits(dst)) return conv_forced == 1 && cpu__conv_winograd_fits(dst);
    const struct tensor *x = dst->src[0], *w = dst->src[1];
    int64_t tiles = dst->shape[0] * ((dst->shape[2] + 1) / 2) * ((dst->shape[3] + 1) / 2);
    return x->shape[1] >= WINO_MIN_C && w->shape[0] >= WINO_MIN_C && tiles >= WINO_MIN_TILES;
}

/* Channels-last (ip[5]): y [B, Ho, Wo, O] from x [B, H, W, C] and w [O, kh, kw, C], one dot
 * product over C per (tap, output), float accumulation. A reference for the GPU's channels-last
 * path (the CPU computes its UNet NCHW), not a fast path. */
static int conv2d_nhwc(const struct tensor *dst) {
    const struct tensor *tx = dst->src[0], *tw = dst->src[1], *tb = dst->src[2];
    const float *x = tx->data, *w = tw->data, *bias = tb ? tb->data : NULL;
    float *y = dst->data;
    int64_t nb = tx->shape[0], h = tx->shape[1], wd = tx->shape[2], c = tx->shape[3];
    int64_t o = tw->shape[0], kh = tw->shape[1], kw = tw->shape[2], ho = dst->shape[1], wo = dst->shape[2];
    int64_t s = dst->ip[0], pt = dst->ip[1], pl = dst->ip[2];
#pragma omp parallel for schedule(static) if (nb * ho * wo * o * c * kh * kw >= CPU_PAR_MIN)
    for (int64_t r = 0; r < nb * ho; r++) {
        int64_t b = r / ho, oy = r % ho;
        for (int64_t ox = 0; ox < wo; ox++) {
            float *yp = y + (r * wo + ox) * o;
            for (int64_t oc = 0; oc < o; oc++) {
                float acc = 0.0f;
                for (int64_t i = 0; i < kh; i++) {
                    int64_t iy = oy * s - pt + i;
                    if (iy < 0 || iy >= h) continue;
                    for (int64_t j = 0; j < kw; j++) {
                        int64_t ix = ox * s - pl + j;
                        if (ix < 0 || ix >= wd) continue;
                        const float *xp = x + ((b * h + iy) * wd + ix) * c, *wp = w + ((oc * kh + i) * kw + j) * c;
                        for (int64_t k = 0; k < c; k++) acc += xp[k] * wp[k];
                    }
                }
                yp[oc] = acc + (bias ? bias[oc] : 0.0f);
            }
        }
    }
    return 0;
}

int cpu_op_conv2d(struct cpu_ctx *ctx, struct tensor *dst, struct err *err) {
    if (dst->ip[5]) return conv2d_nhwc(dst);
    if (use_winograd(dst)) return cpu__conv_winograd(ctx, dst, err);
    const struct tensor *tx = dst->src[0], *tw = dst->src[1], *tb = dst->src[2];
    const float *x = tx->data, *w = tw->data, *bias = tb ? tb->data : NULL;
    float *y = dst->data;
    struct conv cv = {
        .c = tx->shape[1], .h = tx->shape[2], .w = tx->shape[3],
        .o = tw->shape[0], .kh = tw->shape[2], .kw = tw->shape[3],
        .ho = dst->shape[2], .wo = dst->shape[3],
        .s = dst->ip[0], .pt = dst->ip[1], .pl = dst->ip[2],
    };
    cv.p = cv.ho * cv.wo;
    cv.k = cv.c * cv.kh * cv.kw;
    int64_t batch = tx->shape[0];
    if (cv.o > INT_MAX || cv.p > INT_MAX || cv.k > INT_MAX || batch * cv.p > INT_MAX)
        return err_set(err, STATUS_ERR_UNSUPPORTED, "conv2d: %lld x %lld x %lld is too large for BLAS",
                       (long long)cv.o, (long long)(batch * cv.p), (long long)cv.k);
    for (int64_t j = 0; j < MIN(cv.kw, 16); j++) col_range(&cv, j, &cv.xlo[j], &cv.xhi[j]);
    bool plain = cv.kh == 1 && cv.kw == 1 && cv.s == 1 && dst->ip[1] == 0 && dst->ip[2] == 0 && dst->ip[3] == 0 &&
                 dst->ip[4] == 0;

    /* wave size: col [K, cols] plus, for multi-image waves, the product [O, cols] */
    int64_t budget = (int64_t)(cpu__work_max() / sizeof(float));
    int64_t cols_max = MAX((int64_t)16, budget / (cv.k + cv.o));
    int64_t per_img, ipw; /* waves per image, or images per wave */
    if (cv.p >= cols_max || batch == 1) {
        per_img = (cv.p + cols_max - 1) / cols_max;
        ipw = 1;
    } else {
        per_img = 1;
        ipw = MIN(batch, cols_max / cv.p);
    }
    int64_t wcols = ipw > 1 ? ipw * cv.p : (cv.p + per_img - 1) / per_img;
    bool multi = ipw > 1, direct = plain && !multi;
    int64_t n_waves = ipw > 1 ? (batch + ipw - 1) / ipw : batch * per_img;

    float *col = NULL, *tmp = NULL;
    size_t need = (size_t)((direct ? 0 : cv.k * wcols) + (multi ? cv.o * wcols : 0)) * sizeof(float);
    if (need) {
        col = cpu__work(ctx, need, "conv2d im2col", err);
        if (!col) return err->code;
        tmp = col + (direct ? 0 : cv.k * wcols);
    }
    struct cpu_grid g;
    int nthr = omp_get_max_threads();
    cpu__gemm_grid(cv.o, wcols, cv.o * wcols * cv.k < (1 << 20) ? 1 : 4 * (int64_t)nthr, 16, 64, &g);

#pragma omp parallel if (cv.o * batch * cv.p * cv.k >= (1 << 20))
    for (int64_t iw = 0; iw < n_waves; iw++) {
        struct wave wv;
        if (multi) {
            wv.g0 = iw * ipw * cv.p;
            wv.g1 = MIN(batch, (iw + 1) * ipw) * cv.p;
        } else {
            int64_t b = iw / per_img, part = iw % per_img;
            wv.g0 = b * cv.p + part * wcols;
            wv.g1 = b * cv.p + MIN(cv.p, (part + 1) * wcols);
        }
        wv.multi = multi && wv.g1 - wv.g0 > cv.p;
        int64_t ncols = wv.g1 - wv.g0;
        /* 1. columns (each image's segment of the wave) */
        if (!direct) {
#pragma omp for schedule(static)
            for (int64_t kr = 0; kr < cv.k; kr++) {
                for (int64_t g0 = wv.g0; g0 < wv.g1;) {
                    int64_t b = g0 / cv.p, g1 = MIN(wv.g1, (b + 1) * cv.p);
                    im2col_row(&cv, x + b * cv.c * cv.h * cv.w, col + kr * ncols + (g0 - wv.g0), g0 - b * cv.p,
                               g1 - b * cv.p, kr);
                    g0 = g1;
                }
            }
        }
        /* 2. the product, block by block */
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < g.mb * g.nb; t++) {
            int64_t o0 = t / g.nb * g.mblk, c0 = t % g.nb * g.nblk;
            if (c0 >= ncols) continue; /* a short last wave */
            wave_gemm(&cv, &wv, x, w, bias, col, direct, tmp, y, o0, MIN(g.mblk, cv.o - o0), c0,
                      MIN(g.nblk, ncols - c0));
        }
        /* 3. multi-image waves: copy each image's rows out, adding the bias */
        if (wv.multi) {
            int64_t b0 = wv.g0 / cv.p, nimg = ncols / cv.p;
#pragma omp for schedule(static)
            for (int64_t r = 0; r < nimg * cv.o; r++) {
                int64_t bi = r / cv.o, o = r % cv.o;
                const float *restrict src = tmp + o * ncols + bi * cv.p;
                float *restrict out = y + ((b0 + bi) * cv.o + o) * cv.p;
                const float bv = bias ? bias[o] : 0.0f;
#pragma omp simd
                for (int64_t q = 0; q < cv.p; q++) out[q] = src[q] + bv;
            }
        }
    }
    return 0;
}
