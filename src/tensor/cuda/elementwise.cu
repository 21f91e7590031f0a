/* tensor/cuda/elementwise.cu -- ADD, MUL (numpy broadcasting of b into a), SCALE and the
 * activations SILU, GELU, QUICK_GELU, GEGLU on CUDA.
 * Owns: nothing; reads dst->src[], writes dst->data (never aliased with a source).
 * Threads: the backend's worker; kernels run on ctx->stream, one thread per output element
 * (grid-stride loops, so any size fits one launch). */
#include "tensor/cuda/cuda.cuh"

#define THREADS 256
#define MAX_GRID 65535u * 8u /* blocks of one launch; grid-stride loops cover the rest */

static unsigned grid_for(int64_t n) {
    unsigned g = cuda_blocks(n, THREADS);
    return g < MAX_GRID ? (g ? g : 1) : MAX_GRID;
}

/* ===== Broadcasting ADD and MUL =====
 * a's shape padded on the left to 4 dims; bstride[d] is b's stride along dim d, or 0 where b
 * has size 1 (broadcast) or lacks the dim. */

struct bcast {
    int64_t shape[TENSOR_MAX_DIMS];   /* a (= dst), padded with leading 1s */
    int64_t bstride[TENSOR_MAX_DIMS]; /* b elements per step along each dim; 0 = broadcast */
};

template <bool MUL>
__global__ void binary_f32(float *y, const float *a, const float *b, struct bcast bc, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i, bi = 0;
        for (int d = TENSOR_MAX_DIMS - 1; d >= 0; d--) {
            int64_t id = r % bc.shape[d];
            r /= bc.shape[d];
            bi += id * bc.bstride[d];
        }
        y[i] = MUL ? a[i] * b[bi] : a[i] + b[bi];
    }
}

/* Same shapes: no index arithmetic. */
template <bool MUL>
__global__ void binary_same_f32(float *y, const float *a, const float *b, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = MUL ? a[i] * b[i] : a[i] + b[i];
}

static int binary_f32_cuda(float *y, const float *a, const float *b, const struct tensor *ta,
                           const struct tensor *tb, bool mul, cudaStream_t stream, struct err *err) {
    int64_t n = cuda_numel(ta);
    if (n == 0) return 0;
    if (cuda_numel(tb) == n) {
        if (mul) binary_same_f32<true><<<grid_for(n), THREADS, 0, stream>>>(y, a, b, n);
        else binary_same_f32<false><<<grid_for(n), THREADS, 0, stream>>>(y, a, b, n);
        CUDA_TRY_LAUNCH();
        return 0;
    }
    struct bcast bc;
    int64_t bd[TENSOR_MAX_DIMS];
    for (int i = 0; i < TENSOR_MAX_DIMS; i++) {
        int ia = i - (TENSOR_MAX_DIMS - ta->ndim), ib = i - (TENSOR_MAX_DIMS - tb->ndim);
        bc.shape[i] = ia >= 0 ? ta->shape[ia] : 1;
        bd[i] = ib >= 0 ? tb->shape[ib] : 1;
    }
    int64_t acc = 1;
    for (int i = TENSOR_MAX_DIMS - 1; i >= 0; i--) {
        bc.bstride[i] = bd[i] == 1 ? 0 : acc;
        acc *= bd[i];
    }
    if (mul) binary_f32<true><<<grid_for(n), THREADS, 0, stream>>>(y, a, b, bc, n);
    else binary_f32<false><<<grid_for(n), THREADS, 0, stream>>>(y, a, b, bc, n);
    CUDA_TRY_LAUNCH();
    return 0;
}

int cuda_op_add(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    return binary_f32_cuda((float *)dst->data, (const float *)dst->src[0]->data, (const float *)dst->src[1]->data,
                           dst->src[0], dst->src[1], false, ctx->stream, err);
}

int cuda_op_mul(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    return binary_f32_cuda((float *)dst->data, (const float *)dst->src[0]->data, (const float *)dst->src[1]->data,
                           dst->src[0], dst->src[1], true, ctx->stream, err);
}

/* ===== Unary maps ===== */

enum unary { UNARY_SCALE, UNARY_SILU, UNARY_GELU, UNARY_QUICK_GELU };

__device__ __forceinline__ float gelu_f(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

template <int OP>
__global__ void unary_f32(float *y, const float *x, int64_t n, float s, float t) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float v = x[i];
        if (OP == UNARY_SCALE) y[i] = v * s + t;
        else if (OP == UNARY_SILU) y[i] = v / (1.0f + expf(-v));
        else if (OP == UNARY_GELU) y[i] = gelu_f(v);
        else y[i] = v / (1.0f + expf(-1.702f * v));
    }
}

template <int OP>
static int unary_f32_cuda(float *y, const float *x, int64_t n, float s, float t, cudaStream_t stream,
                          struct err *err) {
    if (n == 0) return 0;
    unary_f32<OP><<<grid_for(n), THREADS, 0, stream>>>(y, x, n, s, t);
    CUDA_TRY_LAUNCH();
    return 0;
}

int cuda_op_scale(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    return unary_f32_cuda<UNARY_SCALE>((float *)dst->data, (const float *)dst->src[0]->data, cuda_numel(dst),
                                       dst->fp[0], dst->fp[1], ctx->stream, err);
}

int cuda_op_silu(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    return unary_f32_cuda<UNARY_SILU>((float *)dst->data, (const float *)dst->src[0]->data, cuda_numel(dst), 0, 0,
                                      ctx->stream, err);
}

int cuda_op_gelu(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    return unary_f32_cuda<UNARY_GELU>((float *)dst->data, (const float *)dst->src[0]->data, cuda_numel(dst), 0, 0,
                                      ctx->stream, err);
}

int cuda_op_quick_gelu(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    return unary_f32_cuda<UNARY_QUICK_GELU>((float *)dst->data, (const float *)dst->src[0]->data, cuda_numel(dst),
                                            0, 0, ctx->stream, err);
}

/* ===== GEGLU: x [rows, 2D] -> y [rows, D] = x[:, :D] * gelu(x[:, D:]) ===== */

__global__ void geglu_f32(float *y, const float *x, int64_t n, int64_t d) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / d, j = i - r * d;
        const float *row = x + r * 2 * d;
        y[i] = row[j] * gelu_f(row[d + j]);
    }
}

static int geglu_f32_cuda(float *y, const float *x, int64_t n, int64_t d, cudaStream_t stream, struct err *err) {
    if (n == 0) return 0;
    geglu_f32<<<grid_for(n), THREADS, 0, stream>>>(y, x, n, d);
    CUDA_TRY_LAUNCH();
    return 0;
}

int cuda_op_geglu(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    return geglu_f32_cuda((float *)dst->data, (const float *)dst->src[0]->data, cuda_numel(dst),
                          dst->shape[dst->ndim - 1], ctx->stream, err);
}
