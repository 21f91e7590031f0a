/* tensor/cuda/cuda.cuh -- the CUDA backend's internals: context, error macros, one entry per op.
 * Owns: nothing; declarations shared by the .cu files of tensor/cuda/ (CUDA C++ only).
 * Threads: the worker that owns the backend; every launch goes on ctx->stream.
 * Layers (STYLE.md §6): kernel `group_norm<T>` -> launcher `group_norm_cuda<T>(..., stream)`
 * -> entry `cuda_op_group_norm(ctx, dst, err)`. Entries read dst->src[] and dst->ip/fp (see
 * tensor.h for each op's contract) and return 0 or a negative status with a message in err.
 * DTYPES. Storage is F32, F16 or BF16 (tensor.h "DTYPES": a node's float sources share dst's
 * dtype); kernels are templated on the storage type T (float, __half, __nv_bfloat16), load with
 * cuda_to_f32, compute in fp32 (statistics in double, products accumulate in fp32) and store
 * with cuda_from_f32<T> (round to nearest even). Each entry picks T with CUDA_DISPATCH.
 * Files: elementwise.cu (add .. geglu), matmul.cu (linear: cuBLASLt with the bias in its epilogue,
 * else cuBLAS), conv.cu (cuDNN, else im2col + gemm), norm.cu (group/layer norm), attention.cu
 * (F32: blocked online softmax or cuBLAS blocks; F16/BF16: cuDNN's fused attention through
 * attention_dnn.cu where it takes the shape, else attention_flash.cu's tensor-core kernel for
 * d <= 256), layout.cu (transpose, upsample, concat, get_rows, cast), backend.cu
 * (the table, memory, the op switch, errors), graphs.cu (replaying repeated graphs as CUDA
 * graphs), profile.cu (KILN_CUDA_PROFILE=1 per-op timing).
 * cuDNN is optional: KILN_HAVE_CUDNN (set by CMake when cuDNN 9 is found) adds the handle, the
 * conv plan table and CUDNN_TRY; without it those fields and conv.cu's cuDNN path do not exist. */
#ifndef KILN_CUDA_CUH
#define KILN_CUDA_CUH

extern "C" {
#include "base/err.h"
#include "base/status.h"
#include "tensor/backend.h"
#include "tensor/tensor.h"
}

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <limits.h>
#ifdef KILN_HAVE_CUDNN
#include <cudnn.h>
#endif

#include <stddef.h>
#include <stdint.h>

struct cuda_profile;
struct cuda_graphs;
struct cuda_conv_plan;
struct cuda_sdpa;
struct cuda_lt_plan;

/* Bytes of the cuBLASLt workspace (ctx->lt_ws): what NVIDIA recommends for Hopper. */
#define CUDA_LT_WORKSPACE_BYTES ((size_t)32 << 20)

struct cuda_ctx {
    int device;             /* CUDA device ordinal */
    cudaStream_t stream;    /* the one stream every op is queued on */
    cublasHandle_t cublas;  /* bound to stream */
    cublasLtHandle_t lt;    /* F16/BF16 LINEAR (matmul.cu); NULL: KILN_CUDA_LT=0, cublasGemmEx only */
    void *lt_ws;            /* cuBLASLt workspace, CUDA_LT_WORKSPACE_BYTES, allocated with lt; never moves */
    size_t lt_ws_size;      /* bytes in lt_ws */
    struct cuda_lt_plan *lt_plans;  /* one per LINEAR shape, dtype, bias and alignment (matmul.cu), mem_ owned */
    int n_lt_plans, cap_lt_plans;   /* used and allocated entries of lt_plans */
    void *work;             /* kernel scratch (im2col), grown on demand, or NULL */
    size_t work_size;       /* bytes in work */
    size_t bytes_in_use;    /* device bytes held by buf_alloc (buffers + work), for the VRAM manager */
    size_t bytes_peak;      /* the most bytes_in_use has been */
    struct err *err;        /* where graph_run's errors go, while it runs (else NULL) */
    struct cuda_profile *profile; /* per-op timing (KILN_CUDA_PROFILE=1), or NULL */
    struct cuda_graphs *graphs;   /* captured CUDA graphs of repeated node lists (graphs.cuh), or NULL */
    cudaStream_t copy_stream;     /* streamed weights (tensor.h STREAMING): FETCH copies go here, or NULL
                                     until the first OP_STREAM */
    cudaEvent_t stream_ready[TSTREAM_MAX_SLOTS]; /* a slot's copy finished (recorded on copy_stream) */
    cudaEvent_t stream_free[TSTREAM_MAX_SLOTS];  /* a slot's block is done (recorded on stream) */
    cudaEvent_t stream_begin;     /* the run started (recorded on stream): first FETCH of each slot */
    cudaEvent_t stream_reach;     /* no prefetch: the compute stream reached a FETCH */
    bool stream_graphs;           /* runs with OP_STREAM are captured as CUDA graphs too
                                     (KILN_CUDA_STREAM_GRAPHS=0: launched node by node) */
    int64_t conv_small_p;         /* output positions per image at or below which conv.cu uses im2col +
                                     cuBLAS instead of cuDNN (KILN_CONV_SMALL_P, default 256) */
#ifdef KILN_HAVE_CUDNN
    char cache_dir[PATH_MAX];     /* kiln's cache folder (base/fs.h) for plans kept between runs, or "" */
    char cache_tag[192];          /* what a kept plan is made for: cuDNN, driver, GPU (plan_cache.cu) */
    cudnnHandle_t cudnn;    /* bound to stream; NULL: no cuDNN at run time or KILN_CUDNN=0 (im2col only) */
    bool cudnn_find;        /* KILN_CUDNN=find: time the algorithms once per shape (else heuristics) */
    struct cuda_conv_plan *conv_plans; /* one per distinct conv shape and dtype (conv.cu), mem_ owned */
    int n_conv_plans, cap_conv_plans;  /* used and allocated entries of conv_plans */
    struct cuda_sdpa *sdpa; /* attention through cuDNN's fused SDPA (attention_dnn.cu): its plans;
                               NULL: cuDNN < 9.13.1 at run time, or KILN_CUDNN_SDPA=0 */
#endif
};

/* ===== cuBLAS and cuBLASLt, opened at run time (blas_load.cu) ===== */

/* Loads them once (or waits for the load backend_cuda_preload started). 0, or STATUS_ERR_DEVICE
 * with the library or function that is missing and dlerror's text. */
int cuda__blas_load(struct err *err);

/* ===== Profiling (profile.cu) ===== */

/* A profile when KILN_CUDA_PROFILE=1, else NULL. */
struct cuda_profile *cuda__profile_new(void);
/* Before running nodes[0..n): makes sure n + 1 events exist. */
int cuda__profile_begin(struct cuda_profile *p, struct tensor *const *nodes, int n, struct err *err);
/* Records event i on the stream (before node i; i = n after the last). */
void cuda__profile_mark(struct cuda_profile *p, int i, cudaStream_t stream);
/* Whole-graph mode (KILN_CUDA_PROFILE=2): only events 0 and 1 around the whole graph, which
 * still runs through CUDA graphs. p may be NULL (false). */
bool cuda__profile_whole(const struct cuda_profile *p);
/* After the stream synchronised: adds each node's time to the totals. */
void cuda__profile_end(struct cuda_profile *p);
/* Logs the table (most expensive first) and frees p. NULL is a no-op. */
void cuda__profile_free(struct cuda_profile *p, int device);

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

#ifdef KILN_HAVE_CUDNN
/* The same for cuDNN statuses, with cuDNN's last error text: an allocation failure (host or
 * device, CUDNN_STATUS_INTERNAL_ERROR_*_ALLOCATION_FAILED) -> STATUS_ERR_OOM_DEVICE, a
 * CUDNN_STATUS_NOT_SUPPORTED* -> STATUS_ERR_UNSUPPORTED, else STATUS_ERR_DEVICE. */
int cuda_dnn_error(struct err *err, cudnnStatus_t s, const char *stmt, const char *func, const char *file, int line);

#define CUDNN_TRY(call)                                                                                \
    do {                                                                                               \
        cudnnStatus_t cudnn_try_s_ = (call);                                                           \
        if (cudnn_try_s_ != CUDNN_STATUS_SUCCESS)                                                      \
            return cuda_dnn_error(err, cudnn_try_s_, #call, __func__, __FILE__, __LINE__);             \
    } while (0)

/* Frees ctx's conv plans (their cuDNN descriptors) and the table; the handle stays (conv.cu). */
void cuda__conv_plans_free(struct cuda_ctx *ctx);
/* ===== Plans kept between runs (plan_cache.cu) ===== */

/* Fills ctx->cache_dir from fs_cache_dir and ctx->cache_tag from the cuDNN and driver versions
 * and the GPU's name and compute capability; both stay "" when there is no cache. */
void cuda__cache_open(struct cuda_ctx *ctx);
/* The plan kept as <cache>/<sub>/<tag>-<name> whose first line is "kiln <label> <tag> <what>":
 * true with the whole file in *text (mem_free it) and what follows that line in *body,
 * *body_len; false when there is no cache, no such file (at most max bytes) or another first
 * line (a debug line says so; *text NULL). */
bool cuda__cache_read(const struct cuda_ctx *ctx, const char *sub, const char *name, const char *label,
                      const char *what, size_t max, char **text, const char **body, size_t *body_len);
/* Keeps body under that first line as <cache>/<sub>/<tag>-<name> (folders made, the file
 * written whole or not at all); with no cache, nothing. A failure is a debug line: the cache is
 * optional. */
void cuda__cache_write(const struct cuda_ctx *ctx, const char *sub, const char *name, const char *label,
                       const char *what, const void *body, size_t len);
/* The oldest cuDNN at run time with the OPERATION_SDPA_FWD node attention_dnn.cu builds. */
#define CUDA_SDPA_MIN_VERSION 91301
/* out = softmax(q k^T / sqrt(d)) v through cuDNN's fused attention (attention_dnn.cu), q, out
 * [nb, nq, c], k, v [nb, nk, c], c = heads * d, storage dtype dt, on ctx->stream. Returns 0 when
 * done, 1 when cuDNN does not take it (off, causal, not F16/BF16, d or c not a multiple of 8, a
 * pointer not 16-byte aligned, no engine for the shape: nothing
 * written), or a negative status with the message in err. */
int cuda__attention_dnn(struct cuda_ctx *ctx, enum dtype dt, void *out, const void *q, const void *k, const void *v,
                        int64_t nb, int64_t nq, int64_t nk, int64_t c, int heads, bool causal, struct err *err);
/* Gives ctx its SDPA state (attention_dnn.cu). 0 or a status. */
int cuda__sdpa_open(struct cuda_ctx *ctx, struct err *err);
/* Frees every plan and the state. NULL state: no-op. */
void cuda__sdpa_free(struct cuda_ctx *ctx);
#endif

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

/* Column-major C = op(A) op(B) + beta C on ctx's handle, A, B and C all of dtype dt, alpha 1,
 * fp32 accumulation (see matmul.cu): F32 is cublasSgemm under the handle's math mode (no TF32
 * unless KILN_CUDA_TF32=1), F16/BF16 are cublasGemmEx with CUBLAS_COMPUTE_32F (tensor cores). */
int cuda__gemm(struct cuda_ctx *ctx, enum dtype dt, bool ta, bool tb, int m, int n, int k, const void *a, int lda,
               const void *b, int ldb, float beta, void *c, int ldc, struct err *err);
/* batch products C_i = A_i B_i (no transposes, column-major, element strides between the
 * batch's matrices; a stride of 0 reuses one matrix), fp32 accumulation, beta as cuda__gemm. */
int cuda__gemm_batched(struct cuda_ctx *ctx, enum dtype dt, int m, int n, int k, const void *a, int lda,
                       long long stride_a, const void *b, int ldb, long long stride_b, float beta, void *c, int ldc,
                       long long stride_c, int batch, struct err *err);
/* Frees ctx's cuBLASLt plans (their descriptors) and the table; handle and workspace stay (matmul.cu). */
void cuda__lt_plans_free(struct cuda_ctx *ctx);

/* ===== Storage types =====
 * cuda_to_f32 widens a stored element (exact); cuda_from_f32<T> narrows with round to nearest
 * even (overflow to inf, subnormals kept), as the CPU's f32_to_f16 / f32_to_bf16 do. */

__device__ __forceinline__ float cuda_to_f32(float v) { return v; }
__device__ __forceinline__ float cuda_to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float cuda_to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T cuda_from_f32(float v);
template <> __device__ __forceinline__ float cuda_from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half cuda_from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 cuda_from_f32<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

/* cuBLAS's name for a float dtype (CUDA_R_32F for anything else: callers check first). */
static inline cudaDataType cuda_data_type(enum dtype t) {
    return t == DTYPE_F16 ? CUDA_R_16F : t == DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_32F;
}

/* True for the dtypes the kernels store: F32, F16, BF16. */
static inline bool cuda_is_float(enum dtype t) { return t == DTYPE_F32 || t == DTYPE_F16 || t == DTYPE_BF16; }

/* In an entry: evaluates and returns the expression with the typedef T set to dt's storage
 * type, or fails with STATUS_ERR_UNSUPPORTED (message in the `err` variable in scope) for a
 * dtype that is not a float. */
#define CUDA_DISPATCH(dt, ...)                                                                         \
    switch (dt) {                                                                                      \
    case DTYPE_F32: {                                                                                  \
        typedef float T;                                                                               \
        return (__VA_ARGS__);                                                                          \
    }                                                                                                  \
    case DTYPE_F16: {                                                                                  \
        typedef __half T;                                                                              \
        return (__VA_ARGS__);                                                                          \
    }                                                                                                  \
    case DTYPE_BF16: {                                                                                 \
        typedef __nv_bfloat16 T;                                                                       \
        return (__VA_ARGS__);                                                                          \
    }                                                                                                  \
    default:                                                                                           \
        return err_set(err, STATUS_ERR_UNSUPPORTED, "cuda backend: no kernel for dtype %s", dtype_name(dt)); \
    }

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
int cuda_op_cast(struct cuda_ctx *ctx, struct tensor *dst, struct err *err);
int cuda_op_sample(struct cuda_ctx *ctx, struct tensor *dst, struct err *err);

#endif
