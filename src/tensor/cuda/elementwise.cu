/* tensor/cuda/elementwise.cu -- ADD, MUL (numpy broadcasting of b into a), SCALE and the
 * activations SILU, GELU, QUICK_GELU, GEGLU on CUDA, for every storage type T (float, __half,
 * __nv_bfloat16): each element is loaded as fp32, computed in fp32 and stored back as T; and the
 * sampler's step (SAMPLE, F32 only).
 * Owns: nothing; reads dst->src[], writes dst->data (never aliased with a source, except
 * op_sample_step's, which is its x by design).
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

template <typename T, bool MUL>
__global__ void binary(T *y, const T *a, const T *b, struct bcast bc, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i, bi = 0;
        for (int d = TENSOR_MAX_DIMS - 1; d >= 0; d--) {
            int64_t id = r % bc.shape[d];
            r /= bc.shape[d];
            bi += id * bc.bstride[d];
        }
        float x = cuda_to_f32(a[i]), z = cuda_to_f32(b[bi]);
        y[i] = cuda_from_f32<T>(MUL ? x * z : x + z);
    }
}

/* Same shapes: no index arithmetic. */
template <typename T, bool MUL>
__global__ void binary_same(T *y, const T *a, const T *b, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float x = cuda_to_f32(a[i]), z = cuda_to_f32(b[i]);
        y[i] = cuda_from_f32<T>(MUL ? x * z : x + z);
    }
}

template <typename T>
static int binary_cuda(T *y, const T *a, const T *b, const struct tensor *ta, const struct tensor *tb, bool mul,
                       cudaStream_t stream, struct err *err) {
    int64_t n = cuda_numel(ta);
    if (n == 0) return 0;
    if (cuda_numel(tb) == n) {
        if (mul) binary_same<T, true><<<grid_for(n), THREADS, 0, stream>>>(y, a, b, n);
        else binary_same<T, false><<<grid_for(n), THREADS, 0, stream>>>(y, a, b, n);
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
    if (mul) binary<T, true><<<grid_for(n), THREADS, 0, stream>>>(y, a, b, bc, n);
    else binary<T, false><<<grid_for(n), THREADS, 0, stream>>>(y, a, b, bc, n);
    CUDA_TRY_LAUNCH();
    return 0;
}

int cuda_op_add(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    CUDA_DISPATCH(dst->dtype, binary_cuda<T>((T *)dst->data, (const T *)dst->src[0]->data,
                                             (const T *)dst->src[1]->data, dst->src[0], dst->src[1], false,
                                             ctx->stream, err));
}

int cuda_op_mul(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    CUDA_DISPATCH(dst->dtype, binary_cuda<T>((T *)dst->data, (const T *)dst->src[0]->data,
                                             (const T *)dst->src[1]->data, dst->src[0], dst->src[1], true,
                                             ctx->stream, err));
}

/* ===== Unary maps ===== */

enum unary_kind { UNARY_SCALE, UNARY_SCALE_CLAMP, UNARY_SILU, UNARY_GELU, UNARY_QUICK_GELU };

__device__ __forceinline__ float gelu_f(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

template <typename T, int OP>
__global__ void unary(T *y, const T *x, int64_t n, float s, float t, float lo, float hi) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float v = cuda_to_f32(x[i]), r;
        if (OP == UNARY_SCALE) r = v * s + t;
        else if (OP == UNARY_SCALE_CLAMP) { /* torch.clamp: NaN stays NaN */
            r = v * s + t;
            r = r < lo ? lo : r;
            r = r > hi ? hi : r;
        }
        else if (OP == UNARY_SILU) r = v / (1.0f + expf(-v));
        else if (OP == UNARY_GELU) r = gelu_f(v);
        else r = v / (1.0f + expf(-1.702f * v));
        y[i] = cuda_from_f32<T>(r);
    }
}

template <typename T, int OP>
static int unary_cuda(const struct tensor *dst, float s, float t, cudaStream_t stream, struct err *err) {
    int64_t n = cuda_numel(dst);
    if (n == 0) return 0;
    unary<T, OP><<<grid_for(n), THREADS, 0, stream>>>((T *)dst->data, (const T *)dst->src[0]->data, n, s, t,
                                                        dst->fp[2], dst->fp[3]);
    CUDA_TRY_LAUNCH();
    return 0;
}

int cuda_op_scale(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    if (dst->ip[0])
        CUDA_DISPATCH(dst->dtype, unary_cuda<T, UNARY_SCALE_CLAMP>(dst, dst->fp[0], dst->fp[1], ctx->stream, err));
    CUDA_DISPATCH(dst->dtype, unary_cuda<T, UNARY_SCALE>(dst, dst->fp[0], dst->fp[1], ctx->stream, err));
}

int cuda_op_silu(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    CUDA_DISPATCH(dst->dtype, unary_cuda<T, UNARY_SILU>(dst, 0, 0, ctx->stream, err));
}

int cuda_op_gelu(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    CUDA_DISPATCH(dst->dtype, unary_cuda<T, UNARY_GELU>(dst, 0, 0, ctx->stream, err));
}

int cuda_op_quick_gelu(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    CUDA_DISPATCH(dst->dtype, unary_cuda<T, UNARY_QUICK_GELU>(dst, 0, 0, ctx->stream, err));
}

/* ===== GEGLU: x [rows, 2D] -> y [rows, D] = x[:, :D] * gelu(x[:, D:]) ===== */

template <typename T>
__global__ void geglu(T *y, const T *x, int64_t n, int64_t d) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / d, j = i - r * d;
        const T *row = x + r * 2 * d;
        y[i] = cuda_from_f32<T>(cuda_to_f32(row[j]) * gelu_f(cuda_to_f32(row[d + j])));
    }
}

/* The same, V = 16 / sizeof(T) outputs per thread through 16-byte loads and stores (d a multiple
 * of V, x and y 16-byte aligned): nv = n / V vectors, dv = d / V per row. */
template <typename T>
__global__ void geglu_vec(T *y, const T *x, int64_t nv, int64_t dv) {
    constexpr int V = 16 / sizeof(T);
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < nv; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / dv, j = i - r * dv;
        const uint4 *row = (const uint4 *)x + r * 2 * dv;
        uint4 a = row[j], g = row[dv + j], o;
        T av[V], gv[V], ov[V];
        memcpy(av, &a, 16);
        memcpy(gv, &g, 16);
#pragma unroll
        for (int k = 0; k < V; k++) ov[k] = cuda_from_f32<T>(cuda_to_f32(av[k]) * gelu_f(cuda_to_f32(gv[k])));
        memcpy(&o, ov, 16);
        ((uint4 *)y)[i] = o;
    }
}

template <typename T>
static int geglu_cuda(T *y, const T *x, int64_t n, int64_t d, cudaStream_t stream, struct err *err) {
    if (n == 0) return 0;
    constexpr int V = 16 / sizeof(T);
    if (d % V == 0 && ((uintptr_t)x & 15u) == 0 && ((uintptr_t)y & 15u) == 0) {
        geglu_vec<T><<<grid_for(n / V), THREADS, 0, stream>>>(y, x, n / V, d / V);
    } else {
        geglu<T><<<grid_for(n), THREADS, 0, stream>>>(y, x, n, d);
    }
    CUDA_TRY_LAUNCH();
    return 0;
}

int cuda_op_geglu(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    CUDA_DISPATCH(dst->dtype, geglu_cuda<T>((T *)dst->data, (const T *)dst->src[0]->data, cuda_numel(dst),
                                            dst->shape[dst->ndim - 1], ctx->stream, err));
}

/* ===== The sampler's step (op_sample_in, op_sample_step) =====
 * One rounding per operation in the host loop's order: the _rn intrinsics keep nvcc from
 * contracting a product and a sum into one fma, which the host's C does not do. */

__global__ void sample_in(float *y, const float *x, const float *p, int64_t n, int e) {
    for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < n; k += (int64_t)gridDim.x * blockDim.x) {
        float v = __fdiv_rn(x[k], p[0]);
        for (int i = 0; i < e; i++) y[i * n + k] = v;
    }
}

__global__ void sample_step(float *x, const float *eps, const float *p, int64_t n, bool two) {
    const float sigma = p[1], dt = p[2], cfg = p[3];
    for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < n; k += (int64_t)gridDim.x * blockDim.x) {
        float xk = x[k];
        float cond = __fadd_rn(0.0f, __fsub_rn(xk, __fmul_rn(eps[k], sigma))), den = cond;
        if (two) {
            float uncond = __fadd_rn(0.0f, __fsub_rn(xk, __fmul_rn(eps[n + k], sigma)));
            den = __fadd_rn(uncond, __fmul_rn(__fsub_rn(cond, uncond), cfg));
        }
        float d = __fdiv_rn(__fsub_rn(xk, den), sigma);
        x[k] = __fadd_rn(xk, __fmul_rn(d, dt));
    }
}

int cuda_op_sample(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    const int64_t n = cuda_numel(dst->src[0]);
    if (n == 0) return 0;
    if (dst->ip[0] == 0) {
        sample_in<<<grid_for(n), THREADS, 0, ctx->stream>>>((float *)dst->data, (const float *)dst->src[0]->data,
                                                             (const float *)dst->src[1]->data, n,
                                                             (int)(cuda_numel(dst) / n));
    } else {
        sample_step<<<grid_for(n), THREADS, 0, ctx->stream>>>((float *)dst->src[0]->data,
                                                               (const float *)dst->src[1]->data,
                                                               (const float *)dst->src[2]->data, n, dst->ip[1] == 2);
    }
    CUDA_TRY_LAUNCH();
    return 0;
}
