/* tensor/cpu/conv_winograd.c -- 3x3 stride-1 CONV2D by Winograd F(2x2, 3x3).
 * Owns: nothing; borrows the ctx scratch for the transformed weights, inputs and products.
 * Threads: the backend's worker; one OpenMP region: transforms split over channels and tile
 * rows, the 16 products over single-threaded sgemm tasks (THREADING in cpu.h).
 * WHY. A 3x3 conv costs 9 C multiply-adds per output; F(2x2, 3x3) computes each 2x2 block of
 * outputs from a 4x4 input patch with 16 C, i.e. 4 C per output: 2.25x less arithmetic, and
 * the transformed input (16 values per 4 outputs per channel) is smaller than im2col's 9 per
 * output. The transforms are exact in binary except for rounding (their coefficients are 0,
 * +-1 and +-1/2), so results differ from the direct sum only by float rounding (measured on SD
 * shapes: within 1e-6 of max |out|).
 * MATHS (Lavin & Gray 2015): for a 4x4 patch d and a 3x3 kernel g,
 *   Y (2x2) = A^T [ (G g G^T) .* (B^T d B) ] A,
 *   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1],
 *   A^T = [1 1 1 0; 0 1 -1 -1].
 * Summed over input channels, each of the 16 positions xi of the 4x4 transform domain is a
 * matrix product: M[xi] [O, T] = U[xi] [O, C] x V[xi] [C, T] for T tiles, which is what sgemm
 * does. Tiles of all images are columns of the same products. Output channels are taken in
 * chunks (U of each chunk transformed once) and, inside, tile rows in chunks (V transformed
 * once per channel chunk: it is the cheaper of the two to redo), so that U, V and M fit
 * cpu__work_max(). */
#include "tensor/cpu/cpu.h"
#include "base/base.h"
#include "base/status.h"

#include <cblas.h>
#include <limits.h>
#include <omp.h>
#include <string.h>

struct wino {
    int64_t nb, c, h, w; /* input */
    int64_t o, ho, wo;   /* output */
    int64_t pt, pl;      /* top and left padding */
    int64_t ty, tx;      /* tiles per image: rows, columns (2x2 outputs each) */
};

bool cpu__conv_winograd_fits(const struct tensor *dst) {
    const struct tensor *x = dst->src[0], *w = dst->src[1];
    return w->shape[2] == 3 && w->shape[3] == 3 && dst->ip[0] == 1 && dst->ip[1] >= 0 && dst->ip[2] >= 0 &&
           dst->ip[3] >= 0 && dst->ip[4] >= 0 && x->shape[1] <= INT_MAX && w->shape[0] <= INT_MAX;
}

/* ===== Transforms ===== */

/* U[xi][o][c] = (G g G^T)[xi] for output channel o0 + o of w [O, C, 3, 3], all c. U rows hold
 * C values; consecutive xi are oc * C apart. The kernel's nine taps are first laid out as
 * nine rows so the transform runs over c in vector lanes.
 * gk: 25 C floats of scratch (taps, then G g by rows: 4 temporaries and 12 kept). */
static void weight_transform(const struct wino *wg, const float *w, int64_t o0, int64_t oc, float *u, int64_t o,
                             float *gk) {
    const int64_t nc = wg->c, plane = oc * nc;
    const float *g = w + (o0 + o) * nc * 9;
    for (int64_t c = 0; c < nc; c++)
        for (int k = 0; k < 9; k++) gk[k * nc + c] = g[c * 9 + k];
    for (int j = 0; j < 3; j++) { /* column j of the kernel -> columns of G g G^T, one pass per j */
        const float *restrict g0 = gk + j * nc, *restrict g1 = gk + (3 + j) * nc, *restrict g2 = gk + (6 + j) * nc;
        float *restrict t0 = gk + 9 * nc, *restrict t1 = t0 + nc, *restrict t2 = t1 + nc, *restrict t3 = t2 + nc;
        /* G g, column j: rows g0, (g0+g1+g2)/2, (g0-g1+g2)/2, g2 of the kernel's rows */
#pragma omp simd
        for (int64_t c = 0; c < nc; c++) {
            t0[c] = g0[c];
            t1[c] = 0.5f * (g0[c] + g1[c] + g2[c]);
            t2[c] = 0.5f * (g0[c] - g1[c] + g2[c]);
            t3[c] = g2[c];
        }
        /* keep column j of each row of G g for the second pass */
        for (int i = 0; i < 4; i++) memcpy(gk + (13 + 4 * j + i) * nc, t0 + i * nc, (size_t)nc * sizeof(float));
    }
    for (int i = 0; i < 4; i++) { /* row i of (G g) times G^T: a, (a+b+d)/2, (a-b+d)/2, d */
        const float *restrict a = gk + (13 + i) * nc, *restrict b = gk + (17 + i) * nc;
        const float *restrict d = gk + (21 + i) * nc;
        float *restrict u0 = u + (4 * i + 0) * plane + o * nc, *restrict u1 = u + (4 * i + 1) * plane + o * nc;
        float *restrict u2 = u + (4 * i + 2) * plane + o * nc, *restrict u3 = u + (4 * i + 3) * plane + o * nc;
#pragma omp simd
        for (int64_t c = 0; c < nc; c++) {
            u0[c] = a[c];
            u1[c] = 0.5f * (a[c] + b[c] + d[c]);
            u2[c] = 0.5f * (a[c] - b[c] + d[c]);
            u3[c] = d[c];
        }
    }
}

/* Per-thread rows for the input transform: 4 input rows, each split into even and odd
 * columns of the zero-padded row, and their row transforms R[r][j][tx]. */
struct rows {
    float *e, *od; /* [tx + 1] each */
    float *r;      /* [4][4][tx] */
};

/* V[xi][c][t0 + tx] = (B^T d B)[xi] for the tiles of tile row ty of image b, channel c.
 * V rows hold `ncols` tiles; consecutive xi are c_total * ncols apart. */
static void input_transform(const struct wino *wg, const float *x, int64_t b, int64_t ty, int64_t c, float *v,
                            int64_t t0, int64_t ncols, const struct rows *tmp) {
    const int64_t tx = wg->tx;
    const float *xc = x + (b * wg->c + c) * wg->h * wg->w;
    /* row transform of the 4 input rows: R0 = d0 - d2, R1 = d1 + d2, R2 = d2 - d1, R3 = d1 - d3
     * with d0..d3 = p[2t .. 2t+3] = E[t], O[t], E[t+1], O[t+1] of the padded row p */
    for (int r = 0; r < 4; r++) {
        int64_t iy = 2 * ty - wg->pt + r;
        float *e = tmp->e, *od = tmp->od;
        if (iy < 0 || iy >= wg->h) {
            memset(e, 0, (size_t)(tx + 1) * sizeof(float));
            memset(od, 0, (size_t)(tx + 1) * sizeof(float));
        } else {
            const float *row = xc + iy * wg->w;
            for (int64_t i = 0; i <= tx; i++) { /* p[j] = row[j - pl], 0 outside */
                int64_t j0 = 2 * i - wg->pl, j1 = j0 + 1;
                e[i] = j0 >= 0 && j0 < wg->w ? row[j0] : 0.0f;
                od[i] = j1 >= 0 && j1 < wg->w ? row[j1] : 0.0f;
            }
        }
        float *restrict r0 = tmp->r + (4 * r + 0) * tx, *restrict r1 = tmp->r + (4 * r + 1) * tx;
        float *restrict r2 = tmp->r + (4 * r + 2) * tx, *restrict r3 = tmp->r + (4 * r + 3) * tx;
#pragma omp simd
        for (int64_t t = 0; t < tx; t++) {
            r0[t] = e[t] - e[t + 1];
            r1[t] = od[t] + e[t + 1];
            r2[t] = e[t + 1] - od[t];
            r3[t] = od[t] - od[t + 1];
        }
    }
    /* column transform: V[i][j] = R_j(row0) - R_j(row2), R_j(row1) + R_j(row2),
     * R_j(row2) - R_j(row1), R_j(row1) - R_j(row3) for i = 0..3 */
    int64_t plane = wg->c * ncols;
    for (int j = 0; j < 4; j++) {
        const float *restrict a0 = tmp->r + (0 + j) * tx, *restrict a1 = tmp->r + (4 + j) * tx;
        const float *restrict a2 = tmp->r + (8 + j) * tx, *restrict a3 = tmp->r + (12 + j) * tx;
        float *restrict v0 = v + (0 + j) * plane + c * ncols + t0, *restrict v1 = v + (4 + j) * plane + c * ncols + t0;
        float *restrict v2 = v + (8 + j) * plane + c * ncols + t0, *restrict v3 = v + (12 + j) * plane + c * ncols + t0;
#pragma omp simd
        for (int64_t t = 0; t < tx; t++) {
            v0[t] = a0[t] - a2[t];
            v1[t] = a1[t] + a2[t];
            v2[t] = a2[t] - a1[t];
            v3[t] = a1[t] - a3[t];
        }
    }
}

/* y[b][o0 + o] rows 2ty, 2ty+1 from M[xi][o][t0 + tx] (+ bias). M rows hold `ncols` tiles;
 * consecutive xi are oc * ncols apart. s = 4 scratch rows of tx floats. */
static void output_transform(const struct wino *wg, const float *m, int64_t oc, int64_t o, int64_t t0, int64_t ncols,
                             int64_t b, int64_t ty, int64_t o0, float bias, float *y, float *s) {
    const int64_t tx = wg->tx, plane = oc * ncols;
    const float *mo = m + o * ncols + t0;
    float *restrict y00 = s, *restrict y01 = s + tx, *restrict y10 = s + 2 * tx, *restrict y11 = s + 3 * tx;
    /* A^T M: s0_j = M0j + M1j + M2j, s1_j = M1j - M2j - M3j; then (.) A on each row */
#pragma omp simd
    for (int64_t t = 0; t < tx; t++) {
        float s0[4], s1[4];
        for (int j = 0; j < 4; j++) {
            float m0 = mo[(0 + j) * plane + t], m1 = mo[(4 + j) * plane + t];
            float m2 = mo[(8 + j) * plane + t], m3 = mo[(12 + j) * plane + t];
            s0[j] = m0 + m1 + m2;
            s1[j] = m1 - m2 - m3;
        }
        y00[t] = s0[0] + s0[1] + s0[2] + bias;
        y01[t] = s0[1] - s0[2] - s0[3] + bias;
        y10[t] = s1[0] + s1[1] + s1[2] + bias;
        y11[t] = s1[1] - s1[2] - s1[3] + bias;
    }
    float *yo = y + (b * wg->o + o0 + o) * wg->ho * wg->wo;
    int64_t even = wg->wo / 2; /* tiles whose two columns are both inside */
    for (int r = 0; r < 2; r++) {
        int64_t oy = 2 * ty + r;
        if (oy >= wg->ho) break;
        const float *restrict lo = r ? y10 : y00, *restrict hi = r ? y11 : y01;
        float *restrict out = yo + oy * wg->wo;
        for (int64_t t = 0; t < even; t++) {
            out[2 * t] = lo[t];
            out[2 * t + 1] = hi[t];
        }
        if (wg->wo & 1) out[2 * even] = lo[even];
    }
}

/* ===== Driver ===== */

int cpu__conv_winograd(struct cpu_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *tx_ = dst->src[0], *tw = dst->src[1], *tb = dst->src[2];
    const float *x = tx_->data, *w = tw->data, *bias = tb ? tb->data : NULL;
    float *y = dst->data;
    struct wino wg = {
        .nb = tx_->shape[0], .c = tx_->shape[1], .h = tx_->shape[2], .w = tx_->shape[3],
        .o = tw->shape[0], .ho = dst->shape[2], .wo = dst->shape[3],
        .pt = dst->ip[1], .pl = dst->ip[2],
    };
    wg.ty = (wg.ho + 1) / 2;
    wg.tx = (wg.wo + 1) / 2;
    const int64_t trows = wg.nb * wg.ty; /* tile rows of all images */

    /* Chunks: output channels oc at a time (U = 16 oc C), tile rows rc at a time
     * (V = 16 C rc tx, M = 16 oc rc tx), all within the scratch budget. */
    int64_t budget = (int64_t)(cpu__work_max() / sizeof(float));
    int64_t oc = wg.o;
    if (16 * oc * wg.c > budget / 2) oc = MAX((int64_t)16, budget / 2 / (16 * wg.c) / 16 * 16);
    oc = MIN(oc, wg.o);
    int64_t rc = MAX((int64_t)1, (budget - 16 * oc * wg.c) / (16 * (wg.c + oc) * wg.tx));
    int64_t chunks = (trows + rc - 1) / rc;
    rc = (trows + chunks - 1) / chunks; /* equal chunks: no short last one redoing U for a few tiles */
    int64_t tcols = rc * wg.tx; /* tiles per chunk */
    if (tcols > INT_MAX || wg.c * 16 > INT_MAX)
        return err_set(err, STATUS_ERR_UNSUPPORTED, "conv2d (winograd): %lld tiles x %lld channels is too large",
                       (long long)tcols, (long long)wg.c);

    int nthr = omp_get_max_threads();
    /* per thread: input rows (e, od, r), output rows (4 tx), kernel taps and their transform (25 C) */
    size_t per_thread = (size_t)(2 * (wg.tx + 1) + 16 * wg.tx + 4 * wg.tx + 25 * wg.c);
    size_t total = (size_t)(16 * oc * wg.c + 16 * wg.c * tcols + 16 * oc * tcols) + (size_t)nthr * per_thread;
    float *work = cpu__work(ctx, total * sizeof(float), "conv2d winograd transforms", err);
    if (!work) return err->code;
    float *u = work, *v = u + 16 * oc * wg.c, *m = v + 16 * wg.c * tcols, *thr = m + 16 * oc * tcols;

    struct cpu_grid g; /* columns of each of the 16 products, so that there are enough tasks */
    cpu__gemm_grid(oc, tcols, MAX((int64_t)1, (4 * nthr + 15) / 16), 16, 64, &g);

#pragma omp parallel
    {
        float *mine = thr + (size_t)omp_get_thread_num() * per_thread;
        struct rows tmp = {.e = mine, .od = mine + wg.tx + 1, .r = mine + 2 * (wg.tx + 1)};
        float *otmp = tmp.r + 16 * wg.tx, *gk = otmp + 4 * wg.tx;
        for (int64_t o0 = 0; o0 < wg.o; o0 += oc) {
            int64_t noc = MIN(oc, wg.o - o0);
            /* 1. U for these output channels (once: the tile loop below reuses it) */
#pragma omp for schedule(static)
            for (int64_t o = 0; o < noc; o++) weight_transform(&wg, w, o0, noc, u, o, gk);
            for (int64_t r0 = 0; r0 < trows; r0 += rc) {
                int64_t nr = MIN(rc, trows - r0), ncols = nr * wg.tx;
                /* 2. V for the chunk's tile rows, every input channel */
#pragma omp for schedule(static)
                for (int64_t k = 0; k < wg.c * nr; k++) {
                    int64_t c = k / nr, tr = r0 + k % nr;
                    input_transform(&wg, x, tr / wg.ty, tr % wg.ty, c, v, (tr - r0) * wg.tx, ncols, &tmp);
                }
                /* 3. M[xi] = U[xi] V[xi], 16 products cut into column blocks */
#pragma omp for schedule(dynamic, 1)
                for (int64_t t = 0; t < 16 * g.nb; t++) {
                    int64_t xi = t / g.nb, c0 = t % g.nb * g.nblk;
                    if (c0 >= ncols) continue;
                    int64_t cc = MIN(g.nblk, ncols - c0);
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)noc, (int)cc, (int)wg.c, 1.0f,
                                u + xi * noc * wg.c, (int)wg.c, v + xi * wg.c * ncols + c0, (int)ncols, 0.0f,
                                m + xi * noc * ncols + c0, (int)ncols);
                }
                /* 4. outputs of these channels for the chunk's tile rows */
#pragma omp for schedule(static)
                for (int64_t k = 0; k < noc * nr; k++) {
                    int64_t o = k / nr, tr = r0 + k % nr;
                    output_transform(&wg, m, noc, o, (tr - r0) * wg.tx, ncols, tr / wg.ty, tr % wg.ty, o0,
                                     bias ? bias[o0 + o] : 0.0f, y, otmp);
                }
            }
        }
    }
    return 0;
}
