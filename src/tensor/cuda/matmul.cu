/* tensor/cuda/matmul.cu -- LINEAR on CUDA through cuBLAS (fp32, default math: no TF32), and the
 * sgemm wrapper conv.cu shares.
 * Owns: nothing; the cuBLAS handle is the ctx's, bound to ctx->stream.
 * Threads: the backend's worker.
 * cuBLAS is column-major: a row-major [R, C] matrix is a column-major [C, R] one, so the
 * row-major y = x w^T is computed as the column-major y^T = w^T(op T of w's [K, N]) x^T. */
#include "tensor/cuda/cuda.cuh"

#include <limits.h>

int cuda__sgemm(struct cuda_ctx *ctx, bool ta, bool tb, int m, int n, int k, const float *a, int lda,
                const float *b, int ldb, float *c, int ldc, struct err *err) {
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_TRY(cublasSgemm(ctx->cublas, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &one,
                           a, lda, b, ldb, &zero, c, ldc));
    return 0;
}

/* y [rows, n] += b [n] broadcast over rows */
__global__ void add_bias_f32(float *y, const float *b, int64_t total, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
        y[i] += b[i % n];
}

static int add_bias_f32_cuda(float *y, const float *b, int64_t total, int64_t n, cudaStream_t stream, struct err *err) {
    if (total == 0) return 0;
    unsigned g = cuda_blocks(total, 256);
    add_bias_f32<<<g < 65535u * 8u ? g : 65535u * 8u, 256, 0, stream>>>(y, b, total, n);
    CUDA_TRY_LAUNCH();
    return 0;
}

int cuda_op_linear(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *x = dst->src[0], *w = dst->src[1], *b = dst->src[2];
    int64_t k = x->shape[x->ndim - 1], n = w->shape[0], m = cuda_numel(x) / (k ? k : 1);
    if (m > INT_MAX || n > INT_MAX || k > INT_MAX)
        return err_set(err, STATUS_ERR_UNSUPPORTED, "cuda linear: %lld x %lld x %lld exceeds cuBLAS's int sizes",
                       (long long)m, (long long)n, (long long)k);
    if (m == 0 || n == 0) return 0;
    /* column-major: y^T [n, m] = (w [k, n] col-major)^T [n, k] x (x^T [k, m]) */
    int rc = cuda__sgemm(ctx, true, false, (int)n, (int)m, (int)k, (const float *)w->data, (int)k,
                         (const float *)x->data, (int)k, (float *)dst->data, (int)n, err);
    if (rc) return rc;
    if (b) return add_bias_f32_cuda((float *)dst->data, (const float *)b->data, m * n, n, ctx->stream, err);
    return 0;
}
