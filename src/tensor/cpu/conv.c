/* tensor/cpu/conv.c -- CONV2D on the CPU: im2col + OpenBLAS sgemm, in bounded chunks.
 * Owns: nothing; borrows the ctx scratch (work.c) for the im2col chunks.
 * Threads: the backend's worker; OpenMP splits the output positions into tasks and each task
 * runs its own single-threaded sgemm (one thread pool at a time, no nested BLAS threads).
 * DESIGN. For image b, out_b [O, P] = w [O, K] x col [K, P] with K = C*kh*kw, P = Ho*Wo and
 * col[(c*kh + i)*kw + j, y*Wo + x] = x_b[c, y*s - pt + i, x*s - pl + j] (0 outside). The full
 * col of a 512-channel 3x3 conv at 512x512 is 4.8 GB, so P is cut into chunks whose col fits
 * CPU_WORK_MAX / threads; a chunk's product writes the matching columns of out_b (ldc = P).
 * A 1x1, stride-1, unpadded conv needs no col at all: out_b = w [O, C] x x_b [C, P]. */
#include "tensor/cpu/cpu.h"
#include "base/base.h"
#include "base/status.h"

#include <cblas.h>
#include <limits.h>
#include <omp.h>
#include <string.h>

struct conv {
    int64_t c, h, w;       /* input channels and size */
    int64_t o, kh, kw;     /* output channels, kernel size */
    int64_t ho, wo, p, k;  /* output size, P = ho*wo, K = c*kh*kw */
    int64_t s, pt, pl;     /* stride, top and left padding (bottom/right follow from ho, wo) */
    int64_t xlo[16], xhi[16]; /* per kernel column j < 16: output x range that reads inside the row */
};

/* ===== im2col ===== */

/* Output columns x in [xlo, xhi) read input columns x*s - pl + j inside [0, w). */
static void col_range(const struct conv *cv, int64_t j, int64_t *lo, int64_t *hi) {
    int64_t a = cv->pl - j;                                   /* x*s >= a */
    int64_t b = cv->w - 1 + cv->pl - j;                       /* x*s <= b */
    int64_t xl = a <= 0 ? 0 : (a + cv->s - 1) / cv->s;
    int64_t xh = b < 0 ? 0 : MIN(cv->wo, b / cv->s + 1);
    *lo = MIN(xl, cv->wo);
    *hi = MAX(xh, *lo);
}

/* Fills col [K, p1-p0] for output positions [p0, p1) of one image xb [C, H, W]. Rows kr0..kr1
 * only (so callers can split the rows across threads). */
static void im2col(const struct conv *cv, const float *restrict xb, float *restrict col, int64_t p0, int64_t p1,
                   int64_t kr0, int64_t kr1) {
    int64_t np = p1 - p0, y_first = p0 / cv->wo, y_last = (p1 - 1) / cv->wo;
    for (int64_t kr = kr0; kr < kr1; kr++) {
        int64_t c = kr / (cv->kh * cv->kw), i = (kr / cv->kw) % cv->kh, j = kr % cv->kw;
        const float *xc = xb + c * cv->h * cv->w;
        float *row = col + kr * np - p0; /* row[p] for p in [p0, p1) */
        int64_t lo, hi;
        if (j < 16) {
            lo = cv->xlo[j];
            hi = cv->xhi[j];
        } else {
            col_range(cv, j, &lo, &hi);
        }
        for (int64_t y = y_first; y <= y_last; y++) {
            int64_t xa = y == y_first ? p0 % cv->wo : 0, xb_ = y == y_last ? (p1 - 1) % cv->wo + 1 : cv->wo;
            float *o = row + y * cv->wo;
            int64_t iy = y * cv->s - cv->pt + i;
            if (iy < 0 || iy >= cv->h) {
                memset(o + xa, 0, (size_t)(xb_ - xa) * sizeof(float));
                continue;
            }
            const float *src = xc + iy * cv->w - cv->pl + j; /* src[x*s] is input column x*s - pl + j */
            int64_t l = MAX(xa, lo), r = MIN(xb_, hi);
            if (r <= l) {
                memset(o + xa, 0, (size_t)(xb_ - xa) * sizeof(float));
                continue;
            }
            if (l > xa) memset(o + xa, 0, (size_t)(l - xa) * sizeof(float));
            if (cv->s == 1) {
                memcpy(o + l, src + l, (size_t)(r - l) * sizeof(float));
            } else {
                for (int64_t x = l; x < r; x++) o[x] = src[x * cv->s];
            }
            if (xb_ > r) memset(o + r, 0, (size_t)(xb_ - r) * sizeof(float));
        }
    }
}

/* ===== Products ===== */

/* out_b[:, p0:p1] = w x col (+ bias), single call of sgemm on whatever BLAS threading is set. */
static void gemm_chunk(const struct conv *cv, const float *w, const float *bias, const float *col, int64_t ldcol,
                       float *yb, int64_t p0, int64_t p1) {
    int64_t np = p1 - p0;
    float beta = 0.0f;
    if (bias) {
        for (int64_t o = 0; o < cv->o; o++) {
            float *r = yb + o * cv->p + p0;
            const float bv = bias[o];
#pragma omp simd
            for (int64_t q = 0; q < np; q++) r[q] = bv;
        }
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)cv->o, (int)np, (int)cv->k, 1.0f, w, (int)cv->k, col,
                (int)ldcol, beta, yb + p0, (int)cv->p);
}

int cpu_op_conv2d(struct cpu_ctx *ctx, struct tensor *dst, struct err *err) {
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
    if (cv.o > INT_MAX || cv.p > INT_MAX || cv.k > INT_MAX)
        return err_set(err, STATUS_ERR_UNSUPPORTED, "conv2d: %lld x %lld x %lld is too large for BLAS",
                       (long long)cv.o, (long long)cv.p, (long long)cv.k);
    for (int64_t j = 0; j < MIN(cv.kw, 16); j++) col_range(&cv, j, &cv.xlo[j], &cv.xhi[j]);
    bool direct = cv.kh == 1 && cv.kw == 1 && cv.s == 1 && dst->ip[1] == 0 && dst->ip[2] == 0 && dst->ip[3] == 0 &&
                  dst->ip[4] == 0;

    /* Tasks: each image's P positions cut into nc chunks; enough tasks for every thread, and
     * each chunk's col (K x np floats) within this thread's share of the scratch. */
    int nthr = omp_get_max_threads();
    int64_t np_max = direct ? cv.p : MAX((int64_t)1, (int64_t)(CPU_WORK_MAX / sizeof(float) / (size_t)nthr) / cv.k);
    int64_t nc = MAX((cv.p + np_max - 1) / np_max, (nthr + batch - 1) / batch);
    int64_t tasks = (batch * nc + nthr - 1) / nthr * nthr; /* round up to a multiple of the threads */
    nc = (tasks + batch - 1) / batch;
    int64_t np = (cv.p + nc - 1) / nc;
    np = MIN(cv.p, (np + 7) & ~(int64_t)7);
    nc = (cv.p + np - 1) / np;
    tasks = batch * nc;

    float *work = NULL;
    if (!direct) {
        work = cpu__work(ctx, (size_t)nthr * (size_t)(cv.k * np) * sizeof(float), "conv2d im2col", err);
        if (!work) return err->code;
    }
    openblas_set_num_threads(1);
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t b = t / nc, p0 = (t % nc) * np, p1 = MIN(cv.p, p0 + np);
        const float *xb = x + b * cv.c * cv.h * cv.w;
        float *yb = y + b * cv.o * cv.p;
        if (direct) {
            gemm_chunk(&cv, w, bias, xb + p0, cv.p, yb, p0, p1);
        } else {
            float *col = work + (size_t)omp_get_thread_num() * (size_t)(cv.k * np);
            im2col(&cv, xb, col, p0, p1, 0, cv.k);
            gemm_chunk(&cv, w, bias, col, p1 - p0, yb, p0, p1);
        }
    }
    openblas_set_num_threads(ctx->n_threads);
    return 0;
}
