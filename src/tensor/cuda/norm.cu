/* tensor/cuda/norm.cu -- GROUP_NORM (optionally fused with SiLU) and LAYER_NORM on CUDA, for
 * every storage type T (x, w, b and y all T): elements are loaded as fp32, the statistics are
 * kept in double as below, and y is rounded to T once, at the store.
 * Owns: nothing. Threads: the backend's worker; kernels on ctx->stream.
 * NUMERICS as tensor/cpu/norm.c: biased variance, two passes (the mean, then the squared
 * deviations from it), each thread's partial sums and the block reduction in double, then
 * y = x * scale + shift with scale and shift per channel from double (as the CPU).
 * Small groups take one block each; large ones (SD's 64x64 and VAE sizes) are split into
 * chunks of at least GN_CHUNK_MIN elements over several blocks, without atomics (so the result
 * is deterministic). LayerNorm takes one block per row. */
#include "tensor/cuda/cuda.cuh"

#define GN_THREADS 512
#define LN_THREADS 256

/* Sum of v over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it. */
__device__ double block_sum(double v) {
    __shared__ double part[32];
    __shared__ double total;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads(); /* part and total may still be read from a previous call */
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        int nw = blockDim.x >> 5;
        double s = lane < nw ? part[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
        if (lane == 0) total = s;
    }
    __syncthreads();
    return total;
}

/* Mean and 1/sqrt(var + eps) of x[0..n), strided over the block. */
template <typename T>
__device__ void block_moments(const T *x, int64_t n, double eps, double *mean_out, double *rstd_out) {
    double s = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += cuda_to_f32(x[i]);
    double m = block_sum(s) / (double)n;
    float mf = (float)m;
    double q = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        double d = (double)(cuda_to_f32(x[i]) - mf);
        q += d * d;
    }
    double var = block_sum(q) / (double)n - (m - mf) * (m - mf);
    *mean_out = m;
    *rstd_out = 1.0 / sqrt((var > 0 ? var : 0) + eps);
}

/* ===== GroupNorm: x [B, C, spatial], block (b, g) owns channels [g*cpg, (g+1)*cpg) ===== */

template <typename T>
__global__ void group_norm(T *y, const T *x, const T *w, const T *b, int64_t c, int64_t groups, int64_t spatial,
                           float eps, int silu) {
    int64_t bg = blockIdx.x, cpg = c / groups, gsize = cpg * spatial;
    int64_t g = bg % groups;
    const T *xg = x + bg * gsize;
    T *yg = y + bg * gsize;
    double mean, rstd;
    block_moments(xg, gsize, eps, &mean, &rstd);
    for (int64_t i = threadIdx.x; i < gsize; i += blockDim.x) {
        /* scale and shift in double as the CPU does: with a large mean, shift = b - mean * scale
         * cancels against x * scale, and float there costs digits */
        int64_t ch = g * cpg + i / spatial;
        double scale = rstd * (w ? (double)cuda_to_f32(w[ch]) : 1.0);
        double shift = (b ? (double)cuda_to_f32(b[ch]) : 0.0) - mean * scale;
        float v = cuda_to_f32(xg[i]) * (float)scale + (float)shift;
        if (silu) v = v / (1.0f + expf(-v));
        yg[i] = cuda_from_f32<T>(v);
    }
}

template <typename T>
static int group_norm_cuda(T *y, const T *x, const T *w, const T *b, int64_t nb, int64_t c, int64_t groups,
                           int64_t spatial, float eps, bool silu, cudaStream_t stream, struct err *err) {
    group_norm<T><<<(unsigned)(nb * groups), GN_THREADS, 0, stream>>>(y, x, w, b, c, groups, spatial, eps, silu);
    CUDA_TRY_LAUNCH();
    return 0;
}

/* ===== GroupNorm of large groups: `chunks` blocks per group =====
 * Three launches over a grid (chunk, group): partial sums -> partial squared deviations from
 * the mean -> normalisation. Each block re-reduces the group's partials itself, in chunk order,
 * so the result is deterministic (no atomics) and no finalising launch is needed. */

#define GN_CHUNK_MIN 8192 /* elements per block at least */
#define GN_CHUNKS_MAX 64
#define GN_SPLIT_MIN 16384 /* groups of at least this many elements take the chunked path */

/* Sum of part[0..n) in order, computed by thread 0 and shared with the block. */
__device__ double block_ordered_sum(const double *part, int n) {
    __shared__ double total;
    if (threadIdx.x == 0) {
        double s = 0;
        for (int i = 0; i < n; i++) s += part[i];
        total = s;
    }
    __syncthreads();
    double t = total;
    __syncthreads();
    return t;
}

/* pass 0: sum of the chunk -> psum; pass 1: sum of (x - mean_f)^2 -> psq */
template <typename T, int PASS>
__global__ void group_norm_partial(const T *x, double *psum, double *psq, int64_t gsize, int chunks) {
    int64_t bg = blockIdx.y;
    int chunk = blockIdx.x;
    int64_t per = (gsize + chunks - 1) / chunks, i0 = chunk * per, i1 = i0 + per < gsize ? i0 + per : gsize;
    const T *xg = x + bg * gsize;
    float mf = 0.0f;
    if (PASS == 1) mf = (float)(block_ordered_sum(psum + bg * chunks, chunks) / (double)gsize);
    double s = 0;
    for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
        if (PASS == 0) {
            s += cuda_to_f32(xg[i]);
        } else {
            double d = (double)(cuda_to_f32(xg[i]) - mf);
            s += d * d;
        }
    }
    s = block_sum(s);
    if (threadIdx.x == 0) (PASS == 0 ? psum : psq)[bg * chunks + chunk] = s;
}

template <typename T>
__global__ void group_norm_apply(T *y, const T *x, const T *w, const T *b, const double *psum, const double *psq,
                                 int64_t c, int64_t groups, int64_t spatial, int chunks, double eps, int silu) {
    int64_t bg = blockIdx.y, g = bg % groups, cpg = c / groups, gsize = cpg * spatial;
    int chunk = blockIdx.x;
    double m = block_ordered_sum(psum + bg * chunks, chunks) / (double)gsize;
    float mf = (float)m;
    double var = block_ordered_sum(psq + bg * chunks, chunks) / (double)gsize - (m - mf) * (m - mf);
    double rstd = 1.0 / sqrt((var > 0 ? var : 0) + eps);
    int64_t per = (gsize + chunks - 1) / chunks, i0 = chunk * per, i1 = i0 + per < gsize ? i0 + per : gsize;
    const T *xg = x + bg * gsize;
    T *yg = y + bg * gsize;
    for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
        int64_t ch = g * cpg + i / spatial;
        double scale = rstd * (w ? (double)cuda_to_f32(w[ch]) : 1.0);
        double shift = (b ? (double)cuda_to_f32(b[ch]) : 0.0) - m * scale;
        float v = cuda_to_f32(xg[i]) * (float)scale + (float)shift;
        if (silu) v = v / (1.0f + expf(-v));
        yg[i] = cuda_from_f32<T>(v);
    }
}

template <typename T>
static int group_norm_chunked_cuda(struct cuda_ctx *ctx, T *y, const T *x, const T *w, const T *b, int64_t nb,
                                   int64_t c, int64_t groups, int64_t spatial, float eps, bool silu,
                                   struct err *err) {
    int64_t nbg = nb * groups, gsize = c / groups * spatial;
    int chunks = (int)((gsize + GN_CHUNK_MIN - 1) / GN_CHUNK_MIN);
    if (chunks > GN_CHUNKS_MAX) chunks = GN_CHUNKS_MAX;
    int rc = 0;
    double *part = (double *)cuda__work(ctx, (size_t)(2 * nbg * chunks) * sizeof(double), "group_norm statistics",
                                        &rc, err);
    if (!part) return rc;
    double *psum = part, *psq = part + nbg * chunks;
    dim3 grid((unsigned)chunks, (unsigned)nbg);
    group_norm_partial<T, 0><<<grid, GN_THREADS, 0, ctx->stream>>>(x, psum, psq, gsize, chunks);
    CUDA_TRY_LAUNCH();
    group_norm_partial<T, 1><<<grid, GN_THREADS, 0, ctx->stream>>>(x, psum, psq, gsize, chunks);
    CUDA_TRY_LAUNCH();
    group_norm_apply<T><<<grid, GN_THREADS, 0, ctx->stream>>>(y, x, w, b, psum, psq, c, groups, spatial, chunks, eps,
                                                             silu ? 1 : 0);
    CUDA_TRY_LAUNCH();
    return 0;
}

template <typename T>
static int group_norm_entry(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *tx = dst->src[0], *tw = dst->src[1], *tb = dst->src[2];
    int64_t nb = tx->shape[0], c = tx->shape[1], groups = dst->ip[0];
    int64_t spatial = nb * c != 0 ? cuda_numel(tx) / (nb * c) : 0;
    if (nb * groups == 0 || c * spatial == 0) return 0;
    if (nb * groups > 65535)
        return err_set(err, STATUS_ERR_UNSUPPORTED, "cuda group_norm: %lld groups exceed the grid",
                       (long long)(nb * groups));
    T *y = (T *)dst->data;
    const T *x = (const T *)tx->data, *w = tw ? (const T *)tw->data : NULL;
    const T *b = tb ? (const T *)tb->data : NULL;
    if (c / groups * spatial >= GN_SPLIT_MIN)
        return group_norm_chunked_cuda<T>(ctx, y, x, w, b, nb, c, groups, spatial, dst->fp[0], dst->ip[1] != 0, err);
    return group_norm_cuda<T>(y, x, w, b, nb, c, groups, spatial, dst->fp[0], dst->ip[1] != 0, ctx->stream, err);
}

int cuda_op_group_norm(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    CUDA_DISPATCH(dst->dtype, group_norm_entry<T>(ctx, dst, err));
}

/* ===== LayerNorm: x [rows, C], one block per row ===== */

template <typename T>
__global__ void layer_norm(T *y, const T *x, const T *w, const T *b, int64_t c, float eps) {
    const T *xr = x + blockIdx.x * c;
    T *yr = y + blockIdx.x * c;
    double md, rd;
    block_moments(xr, c, eps, &md, &rd);
    const float mean = (float)md, rstd = (float)rd;
    for (int64_t i = threadIdx.x; i < c; i += blockDim.x) {
        float v = (cuda_to_f32(xr[i]) - mean) * rstd;
        if (w) v *= cuda_to_f32(w[i]);
        if (b) v += cuda_to_f32(b[i]);
        yr[i] = cuda_from_f32<T>(v);
    }
}

template <typename T>
static int layer_norm_cuda(T *y, const T *x, const T *w, const T *b, int64_t rows, int64_t c, float eps,
                           cudaStream_t stream, struct err *err) {
    if (rows == 0 || c == 0) return 0;
    if (rows > 0x7fffffff)
        return err_set(err, STATUS_ERR_UNSUPPORTED, "cuda layer_norm: %lld rows exceed the grid", (long long)rows);
    layer_norm<T><<<(unsigned)rows, LN_THREADS, 0, stream>>>(y, x, w, b, c, eps);
    CUDA_TRY_LAUNCH();
    return 0;
}

int cuda_op_layer_norm(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *tx = dst->src[0], *tw = dst->src[1], *tb = dst->src[2];
    int64_t c = tx->shape[tx->ndim - 1], rows = c ? cuda_numel(tx) / c : 0;
    CUDA_DISPATCH(dst->dtype, layer_norm_cuda<T>((T *)dst->data, (const T *)tx->data,
                                                 tw ? (const T *)tw->data : NULL, tb ? (const T *)tb->data : NULL,
                                                 rows, c, dst->fp[0], ctx->stream, err));
}
