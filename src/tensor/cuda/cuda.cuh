/* tensor/cuda/cuda.cuh -- the CUDA backend's internals: context, error macros, one entry per op.
 * Owns: nothing; declarations shared by the .cu files of tensor/cuda/ (CUDA C++ only).
 * Threads: the worker that owns the backend; every launch goes on ctx->stream.
 * Layers (STYLE.md §6): kernel `group_norm_f32` -> launcher `group_norm_f32_cuda(..., stream)`
 * -> entry `cuda_op_group_norm(ctx, dst, err)`. Entries read dst->src[] and dst->ip/fp (see
 * tensor.h for each op's contract), compute in fp32 and return 0 or a negative status with a
 * message in err. Storage is fp32 for now (fp16 storage is a later step of issue 4).
 * Files: elementwise.cu (add .. geglu), matmul.cu (linear, cuBLAS), conv.cu (im2col + sgemm),
 * norm.cu (group/layer norm), attention.cu (blocked online softmax), layout.cu (transpose,
 * upsample, concat, get_rows), backend.cu (the table, memory, the op switch, errors). */
#ifndef KILN_CUDA_CUH
#define KILN_CUDA_CUH

extern "C" {
#include "base/err.h"
#include "base/status.h"
#include "tensor/backend.h"
#include "tensor/tensor.h"
}

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <stddef.h>
#include <stdint.h>

struct cuda_ctx {
    int device;             /* CUDA device ordinal */
    cudaStream_t stream;    /* the one stream every op is queued on */
    cublasHandle_t cublas;  /* bound to stream */
    void *work;             /* kernel scratch (im2col), grown on demand, or NULL */
    size_t work_size;       /* bytes in work */
    size_t bytes_in_use;    /* device bytes held by buf_alloc (buffers + work), for the VRAM manager */
    size_t bytes_peak;      /* the most bytes_in_use has been */
    struct err *err;        /* where graph_run's errors go, while it runs (else NULL) */
};

/* ===== Errors (STYLE.md §13) ===== */

/* Fills err with "CUDA error <name> (<text>) in `stmt` at func (file:line)" and returns the
 * status: STATUS_ERR_OOM_DEVICE for cudaErrorMemoryAllocation, else STATUS_ERR_DEVICE. */
int cuda_error(struct err *err, cudaError_t e, const char *stmt, const char *func, const char *file, int line);
/* The same for cuBLAS statuses (CUBLAS_STATUS_ALLOC_FAILED -> STATUS_ERR_OOM_DEVICE). */
int cuda_blas_error(struct err *err, cublasStatus_t s, const char *stmt, const char *func, const char *file, int line);

/* Runs a CUDA runtime call; on failure returns its status from the enclosing function, with
 * the message in the `err` variable in scope. */
#define CUDA_TRY(call)                                                                                 \
    do {                                                                                               \
        cudaError_t cuda_try_e_ = (call);                                                              \
        if (cuda_try_e_ != cudaSuccess) return cuda_error(err, cuda_try_e_, #call, __func__, __FILE__, __LINE__); \
    } while (0)

/* The same after a kernel launch (launch configuration errors). */
#define CUDA_TRY_LAUNCH() CUDA_TRY(cudaGetLastError())

#define CUBLAS_TRY(call)                                                                               \
    do {                                                                                               \
        cublasStatus_t cublas_try_s_ = (call);                                                         \
        if (cublas_try_s_ != CUBLAS_STATUS_SUCCESS)                                                    \
            return cuda_blas_error(err, cublas_try_s_, #call, __func__, __FILE__, __LINE__);           \
    } while (0)

/* ===== Helpers ===== */

/* Elements of t (numel of its shape). */
static inline int64_t cuda_numel(const struct tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

/* Blocks of `threads` covering n items. */
static inline unsigned cuda_blocks(int64_t n, int threads) { return (unsigned)((n + threads - 1) / threads); }

/* Returns ctx->work grown to at least size bytes, or NULL with the status in *rc and err. */
void *cuda__work(struct cuda_ctx *ctx, size_t size, const char *what, int *rc, struct err *err);

/* Column-major sgemm on ctx's handle, default math (no TF32): C = A op B, see matmul.cu. */
int cuda__sgemm(struct cuda_ctx *ctx, bool ta, bool tb, int m, int n, int k, const float *a, int lda,
                const float *b, int ldb, float *c, int ldc, struct err *err);

/* ===== Entries ===== */

int cuda_op_add(struct cuda_ctx *ctx, struct tensor *dst, struct err *err);
int cuda_op_mul(struct cuda_ctx *ctx, struct tensor *dst, struct err *err);
int cuda_op_scale(struct cuda_ctx *ctx, struct tensor *dst, struct err *err);
int cuda_op_silu(struct cuda_ctx *ctx, struct tensor *dst, struct err *err);
int cuda_op_gelu(struct cuda_ctx *ctx, struct tensor *dst, struct err *err);
int cuda_op_quick_gelu(struct cuda_ctx *ctx, struct tensor *dst, struct err *err);
int cuda_op_geglu(struct cuda_ctx *ctx, struct tensor *dst, struct err *err);
int cuda_op_linear(struct cuda_ctx *ctx, struct tensor *dst, struct err *err);
int cuda_op_conv2d(struct cuda_ctx *ctx, struct tensor *dst, struct err *err);
int cuda_op_group_norm(struct cuda_ctx *ctx, struct tensor *dst, struct err *err);
int cuda_op_layer_norm(struct cuda_ctx *ctx, struct tensor *dst, struct err *err);
int cuda_op_attention(struct cuda_ctx *ctx, struct tensor *dst, struct err *err);
int cuda_op_transpose(struct cuda_ctx *ctx, struct tensor *dst, struct err *err);
int cuda_op_upsample_nearest(struct cuda_ctx *ctx, struct tensor *dst, struct err *err);
int cuda_op_concat(struct cuda_ctx *ctx, struct tensor *dst, struct err *err);
int cuda_op_get_rows(struct cuda_ctx *ctx, struct tensor *dst, struct err *err);

#endif
