/* tensor/cuda/matmul.cu -- LINEAR on CUDA through cuBLAS, and the gemm wrapper conv.cu shares.
 * Owns: nothing; the cuBLAS handle is the ctx's, bound to ctx->stream.
 * Threads: the backend's worker.
 * F32 is cublasSgemm under the handle's math mode (exact fp32 products unless KILN_CUDA_TF32=1);
 * F16 and BF16 are cublasGemmEx with A, B, C in the storage type, CUBLAS_COMPUTE_32F (fp32
 * accumulation; backend.cu forbids reduced-precision split-K reductions) and tensor cores.
 * cuBLAS is column-major: a row-major [R, C] matrix is a column-major [C, R] one, so the
 * row-major y = x w^T is computed as the column-major y^T = w^T(op T of w's [K, N]) x^T.
 * Bias: y is first filled with the broadcast bias and the product added with beta = 1 (as
 * torch's addmm), so each output is rounded once, in the epilogue. */
#include "tensor/cuda/cuda.cuh"

#include <limits.h>

int cuda__gemm(struct cuda_ctx *ctx, enum dtype dt, bool ta, bool tb, int m, int n, int k, const void *a, int lda,
               const void *b, int ldb, float beta, void *c, int ldc, struct err *err) {
    const float one = 1.0f;
    cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (dt == DTYPE_F32) {
        CUBLAS_TRY(cublasSgemm(ctx->cublas, opa, opb, m, n, k, &one, (const float *)a, lda, (const float *)b, ldb,
                               &beta, (float *)c, ldc));
        return 0;
    }
    if (!cuda_is_float(dt)) return err_set(err, STATUS_ERR_UNSUPPORTED, "cuda gemm: dtype %s", dtype_name(dt));
    cudaDataType t = cuda_data_type(dt);
    CUBLAS_TRY(cublasGemmEx(ctx->cublas, opa, opb, m, n, k, &one, a, t, lda, b, t, ldb, &beta, c, t, ldc,
                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return 0;
}

int cuda__gemm_batched(struct cuda_ctx *ctx, enum dtype dt, int m, int n, int k, const void *a, int lda,
                       long long stride_a, const void *b, int ldb, long long stride_b, float beta, void *c, int ldc,
                       long long stride_c, int batch, struct err *err) {
    const float one = 1.0f;
    if (!cuda_is_float(dt)) return err_set(err, STATUS_ERR_UNSUPPORTED, "cuda gemm: dtype %s", dtype_name(dt));
    if (dt == DTYPE_F32) {
        CUBLAS_TRY(cublasSgemmStridedBatched(ctx->cublas, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, (const float *)a, lda,
                                             stride_a, (const float *)b, ldb, stride_b, &beta, (float *)c, ldc,
                                             stride_c, batch));
        return 0;
    }
    cudaDataType t = cuda_data_type(dt);
    CUBLAS_TRY(cublasGemmStridedBatchedEx(ctx->cublas, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, a, t, lda, stride_a, b,
                                          t, ldb, stride_b, &beta, c, t, ldc, stride_c, batch, CUBLAS_COMPUTE_32F,
                                          CUBLAS_GEMM_DEFAULT));
    return 0;
}

/* y [rows, n] = b [n] broadcast over rows (the gemm then adds the product) */
template <typename T>
__global__ void fill_bias(T *y, const T *b, int64_t total, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = b[i % n];
}

template <typename T>
static int fill_bias_cuda(T *y, const T *b, int64_t total, int64_t n, cudaStream_t stream, struct err *err) {
    if (total == 0) return 0;
    unsigned g = cuda_blocks(total, 256);
    fill_bias<T><<<g < 65535u * 8u ? g : 65535u * 8u, 256, 0, stream>>>(y, b, total, n);
    CUDA_TRY_LAUNCH();
    return 0;
}

template <typename T>
static int linear_cuda(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *x = dst->src[0], *w = dst->src[1], *b = dst->src[2];
    int64_t k = x->shape[x->ndim - 1], n = w->shape[0], m = cuda_numel(x) / (k ? k : 1);
    if (m > INT_MAX || n > INT_MAX || k > INT_MAX)
        return err_set(err, STATUS_ERR_UNSUPPORTED, "cuda linear: %lld x %lld x %lld exceeds cuBLAS's int sizes",
                       (long long)m, (long long)n, (long long)k);
    if (m == 0 || n == 0) return 0;
    if (b) {
        int rc = fill_bias_cuda<T>((T *)dst->data, (const T *)b->data, m * n, n, ctx->stream, err);
        if (rc) return rc;
    }
    /* column-major: y^T [n, m] = (w [k, n] col-major)^T [n, k] x (x^T [k, m]) (+ y^T = bias) */
    return cuda__gemm(ctx, dst->dtype, true, false, (int)n, (int)m, (int)k, w->data, (int)k, x->data, (int)k,
                      b ? 1.0f : 0.0f, dst->data, (int)n, err);
}

int cuda_op_linear(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    CUDA_DISPATCH(dst->dtype, linear_cuda<T>(ctx, dst, err));
}
