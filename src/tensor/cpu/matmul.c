/* tensor/cpu/matmul.c -- LINEAR on the CPU, and the task grid that every product uses.
 * LINEAR: y [M, N] = x [M, K] w[N, K]^T + b[N], all leading dims of x flattened into M.
 * Owns: nothing; reads dst->src[], writes dst->data.
 * Threads: the backend's worker; OpenMP tasks over a grid of output blocks, each one a
 * single-threaded sgemm (see THREADING in cpu.h). */
#include "tensor/cpu/cpu.h"
#include "base/base.h"
#include "base/status.h"

#include <cblas.h>
#include <limits.h>
#include <omp.h>

/* ===== Task grid ===== */

void cpu__gemm_grid(int64_t m, int64_t n, int64_t tasks, int64_t min_m, int64_t min_n, struct cpu_grid *g) {
    int64_t max_mb = MAX((int64_t)1, m / min_m), max_nb = MAX((int64_t)1, n / min_n);
    int64_t best_mb = 1, best_nb = 1;
    double best_cost = (double)m + (double)n;
    for (int64_t nb = 1; nb <= MIN(max_nb, tasks); nb++) {
        int64_t mb = MIN(max_mb, (tasks + nb - 1) / nb);
        int64_t have = mb * nb, best_have = best_mb * best_nb;
        double cost = (double)nb * (double)m + (double)mb * (double)n;
        /* first reach the task count (or get as close as the sizes allow), then pack least */
        bool better = MIN(have, tasks) > MIN(best_have, tasks) ||
                      (MIN(have, tasks) == MIN(best_have, tasks) && cost < best_cost);
        if (better) {
            best_mb = mb;
            best_nb = nb;
            best_cost = cost;
        }
    }
    g->mblk = (m + best_mb - 1) / best_mb;
    g->nblk = (n + best_nb - 1) / best_nb;
    g->mb = (m + g->mblk - 1) / g->mblk; /* rounding may leave fewer blocks */
    g->nb = (n + g->nblk - 1) / g->nblk;
}

/* ===== LINEAR ===== */

int cpu_op_linear(struct cpu_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *tx = dst->src[0], *tw = dst->src[1], *tb = dst->src[2];
    const float *x = tx->data, *w = tw->data, *b = tb ? tb->data : NULL; /* x [M, K], w [N, K] */
    float *y = dst->data;                                                /* [M, N] */
    int64_t k = tw->shape[1], n = tw->shape[0], m = tensor_numel(tx) / k;
    if (m > INT_MAX || n > INT_MAX || k > INT_MAX)
        return err_set(err, STATUS_ERR_UNSUPPORTED, "linear: %lld x %lld x %lld is too large for BLAS",
                       (long long)m, (long long)n, (long long)k);
    struct cpu_grid g;
    int64_t tasks = m * n * k < (1 << 20) ? 1 : 4 * (int64_t)omp_get_max_threads(); /* tiny: one call */
    cpu__gemm_grid(m, n, tasks, 64, 64, &g);
#pragma omp parallel for schedule(dynamic, 1) if (g.mb * g.nb > 1)
    for (int64_t t = 0; t < g.mb * g.nb; t++) {
        int64_t m0 = t / g.nb * g.mblk, n0 = t % g.nb * g.nblk;
        int64_t mm = MIN(g.mblk, m - m0), nn = MIN(g.nblk, n - n0);
        float *yb = y + m0 * n + n0; /* [mm, nn] block, row stride n */
        float beta = 0.0f;
        if (b) { /* start from the bias and let sgemm accumulate onto it */
            for (int64_t i = 0; i < mm; i++) {
                float *restrict row = yb + i * n;
#pragma omp simd
                for (int64_t j = 0; j < nn; j++) row[j] = b[n0 + j];
            }
            beta = 1.0f;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)mm, (int)nn, (int)k, 1.0f, x + m0 * k, (int)k,
                    w + n0 * k, (int)k, beta, yb, (int)n);
    }
    return 0;
}
