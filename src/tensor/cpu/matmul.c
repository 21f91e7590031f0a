/* tensor/cpu/matmul.c -- LINEAR on the CPU: y [M, N] = x [M, K] w[N, K]^T + b[N], one OpenBLAS
 * sgemm (which threads itself) over all leading dims of x flattened into M.
 * Owns: nothing; reads dst->src[], writes dst->data.
 * Threads: the backend's worker; OpenBLAS's own threads do the product. */
#include "tensor/cpu/cpu.h"
#include "base/base.h"
#include "base/status.h"

#include <cblas.h>
#include <limits.h>
#include <string.h>

int cpu_op_linear(struct cpu_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *tx = dst->src[0], *tw = dst->src[1], *tb = dst->src[2];
    const float *x = tx->data, *w = tw->data; /* x [M, K], w [N, K] */
    float *y = dst->data;                     /* [M, N] */
    int64_t k = tw->shape[1], n = tw->shape[0], m = tensor_numel(tx) / k;
    if (m > INT_MAX || n > INT_MAX || k > INT_MAX)
        return err_set(err, STATUS_ERR_UNSUPPORTED, "linear: %lld x %lld x %lld is too large for BLAS",
                       (long long)m, (long long)n, (long long)k);
    float beta = 0.0f;
    if (tb) { /* start from the bias and let sgemm accumulate onto it */
        const float *b = tb->data;
#pragma omp parallel for schedule(static) if (m * n >= CPU_PAR_MIN)
        for (int64_t i = 0; i < m; i++) memcpy(y + i * n, b, (size_t)n * sizeof(float));
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)n, (int)k, 1.0f, x, (int)k, w, (int)k, beta, y,
                (int)n);
    return 0;
}
