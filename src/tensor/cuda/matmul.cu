/* tensor/cuda/matmul.cu -- LINEAR on CUDA through cuBLASLt / cuBLAS, and the gemm wrapper conv.cu shares.
 * Owns: ctx->lt_plans (one cuBLASLt plan per LINEAR shape; freed by cuda__lt_plans_free from
 * cuda_free); the handles and the Lt workspace are the ctx's (backend.cu), cuBLAS's bound to ctx->stream.
 * Threads: the backend's worker.
 * F32 is cublasSgemm under the handle's math mode (exact fp32 products unless KILN_CUDA_TF32=1);
 * F16 and BF16 LINEAR is cublasLtMatmul (A, B, D in the storage type, CUBLAS_COMPUTE_32F: fp32
 * accumulation, tensor cores; split-K partial sums only in fp32, as backend.cu asks of cuBLAS)
 * with the bias in the epilogue; cublasGemmEx (same types) where Lt has no algorithm.
 * cuBLAS is column-major: a row-major [R, C] matrix is a column-major [C, R] one, so the
 * row-major y = x w^T is computed as the column-major y^T = w^T(op T of w's [K, N]) x^T.
 * Bias: CUBLASLT_EPILOGUE_BIAS adds it to the fp32 sum before the one rounding to T. The
 * fallback first fills y with the broadcast bias and adds the product with beta = 1 (as torch's
 * addmm): also one rounding of (product + bias) in fp32. A fused residual r (src[3],
 * op_add_fused) is Lt's C with beta = 1 (D = product + bias + r, one rounding), or part of the
 * fallback's fill. */
#include "tensor/cuda/cuda.cuh"

extern "C" {
#include "base/clock.h"
#include "base/log.h"
#include "base/mem.h"
}

#include <limits.h>
#include <string.h>

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
/* y [total / n, n] = b [n] (broadcast) + r (either may be NULL, not both) */
template <typename T>
__global__ void fill_bias(T *y, const T *b, const T *r, int64_t total, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        float v = b ? cuda_to_f32(b[i % n]) : 0.0f;
        if (r) v += cuda_to_f32(r[i]);
        y[i] = cuda_from_f32<T>(v);
    }
}

template <typename T>
static int fill_bias_cuda(T *y, const T *b, const T *r, int64_t total, int64_t n, cudaStream_t stream,
                          struct err *err) {
    if (total == 0) return 0;
    unsigned g = cuda_blocks(total, 256);
    fill_bias<T><<<g < 65535u * 8u ? g : 65535u * 8u, 256, 0, stream>>>(y, b, r, total, n);
    CUDA_TRY_LAUNCH();
    return 0;
}

/* ===== cuBLASLt plans =====
 * A plan holds what cublasLtMatmul needs besides the pointers: the operation (fp32 compute and
 * scale, A transposed, epilogue), the three layouts and the algorithm cublasLtMatmulAlgoGetHeuristic
 * picked once. Built on the first call for its key, which graphs.cu always runs outside stream
 * capture (a node list is captured on its second run); later calls only set the bias pointer
 * on the host-side descriptor and launch: no allocation, no synchronisation, capturable.
 * The workspace is ctx->lt_ws, a dedicated buffer allocated with the handle: ctx->work (the
 * kernels' scratch) moves when another op grows it, and freeing it synchronises the stream
 * (not allowed while capturing); lt_ws never moves, so captured graphs keep a valid pointer. */

#define LT_PLAN_KEY 11 /* ints in a plan's key */

struct cuda_lt_plan {
    int key[LT_PLAN_KEY];       /* dtype, m, n, k, bias?, alignment (bytes, <= 256) of A, B, D, bias;
                                   residual? (C = r, beta = 1), alignment of C */
    bool usable;                /* false: Lt has no algorithm for it (cublasGemmEx) */
    cublasLtMatmulDesc_t op;    /* fp32 compute and scale, TRANSA = T, epilogue DEFAULT or BIAS */
    cublasLtMatrixLayout_t a;   /* w: column-major [k, m], ld k (op T: [m, k]) */
    cublasLtMatrixLayout_t b;   /* x: column-major [k, n], ld k */
    cublasLtMatrixLayout_t d;   /* y: column-major [m, n], ld m (also C's: the residual, beta = 1) */
    cublasLtMatmulAlgo_t algo;  /* the heuristic's first choice */
    size_t ws;                  /* bytes of workspace algo needs (<= ctx->lt_ws_size) */
};

static void lt_plan_deinit(struct cuda_lt_plan *p) {
    if (p->op) cublasLtMatmulDescDestroy(p->op);
    if (p->a) cublasLtMatrixLayoutDestroy(p->a);
    if (p->b) cublasLtMatrixLayoutDestroy(p->b);
    if (p->d) cublasLtMatrixLayoutDestroy(p->d);
    memset(p, 0, sizeof *p);
}

void cuda__lt_plans_free(struct cuda_ctx *ctx) {
    for (int i = 0; i < ctx->n_lt_plans; i++) lt_plan_deinit(&ctx->lt_plans[i]);
    mem_free(ctx->lt_plans);
    ctx->lt_plans = NULL;
    ctx->n_lt_plans = ctx->cap_lt_plans = 0;
}

/* The alignment of p in bytes: its lowest set bit, at most 256 (cuBLASLt's default assumption). */
static int lt_align(const void *p) {
    uintptr_t v = (uintptr_t)p | 256;
    return (int)(v & (~v + 1));
}

/* Fills p (key set, the rest zero) for the column-major D [m, n] = A^T B (+ bias [m]).
 * Returns 0 with p->usable false where Lt offers no algorithm, or a status where a descriptor
 * could not be made (host memory). */
static int lt_plan_init(struct cuda_ctx *ctx, struct cuda_lt_plan *p, const void *bias, struct err *err) {
    const int *key = p->key;
    enum dtype dt = (enum dtype)key[0];
    cudaDataType t = cuda_data_type(dt);
    uint64_t m = (uint64_t)key[1], n = (uint64_t)key[2], k = (uint64_t)key[3];
    CUBLAS_TRY(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    int32_t transa = CUBLAS_OP_T, transb = CUBLAS_OP_N;
    CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &transa, sizeof transa));
    CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &transb, sizeof transb));
    uint32_t epilogue = key[4] ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
    if (key[4]) { /* of D's type (the default BIAS_DATA_TYPE); the heuristic reads its alignment */
        CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    }
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&p->a, t, k, m, (int64_t)k));
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&p->b, t, k, n, (int64_t)k));
    CUBLAS_TRY(cublasLtMatrixLayoutCreate(&p->d, t, m, n, (int64_t)m));

    cublasLtMatmulPreference_t pref = NULL;
    CUBLAS_TRY(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t ws_max = ctx->lt_ws_size;
    /* split-K partial sums in fp32 (the compute type) or none: INPLACE and OUTPUT_TYPE would
     * round them to T first (what CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION forbids) */
    uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    /* the pointers' real alignments (default: 256 assumed) */
    uint32_t al_a = (uint32_t)key[5], al_b = (uint32_t)key[6], al_d = (uint32_t)key[7];
    uint32_t al_c = key[9] ? (uint32_t)key[10] : al_d;
    cublasStatus_t s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_max,
                                                            sizeof ws_max);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes,
                                                 sizeof schemes);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof al_c);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof al_d);
    cublasLtMatmulHeuristicResult_t r;
    memset(&r, 0, sizeof r);
    int found = 0;
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulAlgoGetHeuristic(ctx->lt, p->op, p->a, p->b, p->d, p->d, pref, 1, &r, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (s == CUBLAS_STATUS_ALLOC_FAILED)
        return cuda_blas_error(err, s, "cublasLtMatmulAlgoGetHeuristic", __func__, __FILE__, __LINE__);
    if (s == CUBLAS_STATUS_SUCCESS && found >= 1 && r.state == CUBLAS_STATUS_SUCCESS) {
        p->algo = r.algo;
        p->ws = r.workspaceSize;
        p->usable = true;
        log_debug("cuda linear: cuBLASLt plan for %s [%d, %d] x [%d, %d]^T%s: %zu bytes of workspace, %.2f waves",
                  dtype_name(dt), key[2], key[3], key[1], key[3], key[4] ? " + b" : "", p->ws, r.wavesCount);
        return 0;
    }
    /* nothing fits (odd sizes or alignments): expected, quietly; any other status would be a
     * bad argument of ours: loudly, but the product still runs through cublasGemmEx */
    if (s == CUBLAS_STATUS_SUCCESS || s == CUBLAS_STATUS_NOT_SUPPORTED)
        log_debug("cuda linear: cuBLASLt has no algorithm for %s [%d, %d] x [%d, %d]^T%s (alignments %d/%d/%d/%d): "
                  "cublasGemmEx",
                  dtype_name(dt), key[2], key[3], key[1], key[3], key[4] ? " + b" : "", key[5], key[6], key[7],
                  key[8]);
    else
        log_warn("cuda linear: cuBLASLt heuristic for %s [%d, %d] x [%d, %d]^T%s failed (%s: %s): cublasGemmEx",
                 dtype_name(dt), key[2], key[3], key[1], key[3], key[4] ? " + b" : "", cublasGetStatusName(s),
                 cublasGetStatusString(s));
    return 0;
}

/* The plan for key, made on first use: 0 with *out set, or a status. */
static int lt_plan_get(struct cuda_ctx *ctx, const int *key, const void *bias, struct cuda_lt_plan **out,
                       struct err *err) {
    for (int i = 0; i < ctx->n_lt_plans; i++)
        if (memcmp(ctx->lt_plans[i].key, key, sizeof ctx->lt_plans[i].key) == 0) {
            *out = &ctx->lt_plans[i];
            return 0;
        }
    if (ctx->n_lt_plans == ctx->cap_lt_plans) {
        int cap = ctx->cap_lt_plans ? ctx->cap_lt_plans * 2 : 32;
        struct cuda_lt_plan *a = (struct cuda_lt_plan *)mem_try_realloc(ctx->lt_plans, (size_t)cap * sizeof *a);
        if (!a) return err_set(err, STATUS_ERR_NOMEM, "cuda linear: out of host memory for the cuBLASLt plan table");
        ctx->lt_plans = a;
        ctx->cap_lt_plans = cap;
    }
    struct cuda_lt_plan p;
    memset(&p, 0, sizeof p);
    memcpy(p.key, key, sizeof p.key);
    double t0 = clock_now();
    int rc = lt_plan_init(ctx, &p, bias, err);
    log_debug("cuda linear: cuBLASLt plan for a new shape in %.2f ms", 1e3 * (clock_now() - t0));
    if (rc) {
        lt_plan_deinit(&p);
        err_prefix(err, "cuda linear: cuBLASLt plan for %s [%d, %d] x [%d, %d]^T", dtype_name((enum dtype)key[0]),
                   key[2], key[3], key[1], key[3]);
        return rc;
    }
    if (!p.usable) { /* keep only the key: the descriptors are of no further use */
        lt_plan_deinit(&p);
        memcpy(p.key, key, sizeof p.key);
    }
    ctx->lt_plans[ctx->n_lt_plans] = p;
    *out = &ctx->lt_plans[ctx->n_lt_plans++];
    return 0;
}

/* y [M, N] = x [M, K] w [N, K]^T (+ b [N]) (+ r [M, N]) through cuBLASLt, as the column-major
 * y^T [m = N, n = M] = w^T x^T (+ b along m, EPILOGUE_BIAS's "rows of D") (+ C = r^T, beta 1),
 * k = K. Returns 0 when queued, 1 when the caller must use cublasGemmEx (nothing queued), or a
 * negative status. */
static int linear_lt(struct cuda_ctx *ctx, enum dtype dt, int m, int n, int k, const void *w, const void *x,
                     const void *b, const void *r, void *y, struct err *err) {
    int key[LT_PLAN_KEY] = {(int)dt,      m,           n,           k,
                            b != NULL,    lt_align(w), lt_align(x), lt_align(y),
                            b ? lt_align(b) : 0, r != NULL, r ? lt_align(r) : 0};
    struct cuda_lt_plan *p = NULL;
    int rc = lt_plan_get(ctx, key, b, &p, err);
    if (rc) return rc;
    if (!p->usable) return 1;
    if (b) CUBLAS_TRY(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &b, sizeof b));
    const float one = 1.0f, beta = r ? 1.0f : 0.0f;
    cublasStatus_t s = cublasLtMatmul(ctx->lt, p->op, &one, w, p->a, x, p->b, &beta, r ? r : y, p->d, y, p->d,
                                      &p->algo, ctx->lt_ws, ctx->lt_ws_size, ctx->stream);
    if (s == CUBLAS_STATUS_SUCCESS) return 0;
    /* refused before launching anything: the key runs through cublasGemmEx from now on */
    if (s != CUBLAS_STATUS_NOT_SUPPORTED && s != CUBLAS_STATUS_INVALID_VALUE && s != CUBLAS_STATUS_ARCH_MISMATCH)
        return cuda_blas_error(err, s, "cublasLtMatmul", __func__, __FILE__, __LINE__);
    log_warn("cuda linear: cublasLtMatmul refused %s [%d, %d] x [%d, %d]^T%s (%s: %s): cublasGemmEx from now on",
             dtype_name(dt), n, k, m, k, b ? " + b" : "", cublasGetStatusName(s), cublasGetStatusString(s));
    p->usable = false; /* descriptors stay until cuda__lt_plans_free */
    return 1;
}

/* ===== LINEAR ===== */

template <typename T>
static int linear_cuda(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *x = dst->src[0], *w = dst->src[1], *b = dst->src[2], *r = dst->src[3];
    int64_t k = x->shape[x->ndim - 1], n = w->shape[0], m = cuda_numel(x) / (k ? k : 1);
    if (m > INT_MAX || n > INT_MAX || k > INT_MAX)
        return err_set(err, STATUS_ERR_UNSUPPORTED, "cuda linear: %lld x %lld x %lld exceeds cuBLAS's int sizes",
                       (long long)m, (long long)n, (long long)k);
    if (m == 0 || n == 0) return 0;
    /* column-major: y^T [n, m] = (w [k, n] col-major)^T [n, k] x (x^T [k, m]) (+ bias [n] per column) */
    if (dst->dtype != DTYPE_F32 && ctx->lt && k > 0) {
        int rc = linear_lt(ctx, dst->dtype, (int)n, (int)m, (int)k, w->data, x->data, b ? b->data : NULL,
                           r ? r->data : NULL, dst->data, err);
        if (rc <= 0) return rc;
    }
    if (b || r) {
        int rc = fill_bias_cuda<T>((T *)dst->data, b ? (const T *)b->data : NULL, r ? (const T *)r->data : NULL,
                                   m * n, n, ctx->stream, err);
        if (rc) return rc;
    }
    return cuda__gemm(ctx, dst->dtype, true, false, (int)n, (int)m, (int)k, w->data, (int)k, x->data, (int)k,
                      b || r ? 1.0f : 0.0f, dst->data, (int)n, err);
}

int cuda_op_linear(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    CUDA_DISPATCH(dst->dtype, linear_cuda<T>(ctx, dst, err));
}
