/* tensor/cuda/norm.cu -- GROUP_NORM (optionally fused with SiLU) and LAYER_NORM on CUDA, for
 * every storage type T (x, w, b and y all T): elements are loaded as fp32 and y is rounded to
 * T once, at the store.
 * Owns: nothing. Threads: the backend's worker; kernels on ctx->stream.
 * F32 (and any F16/BF16 shape the fast paths below refuse) -- NUMERICS as tensor/cpu/norm.c:
 * biased variance, two passes (the mean, then the squared deviations from it), each thread's
 * partial sums and the block reduction in double, then y = x * scale + shift with scale and
 * shift per channel from double (as the CPU). Small groups take one block each; large ones
 * (SD's 64x64 and VAE sizes) are split into chunks of at least GN_CHUNK_MIN elements over
 * several blocks, without atomics (so the result is deterministic). LayerNorm takes one block
 * per row.
 * F16/BF16 FAST PATHS (bandwidth-bound; 128-bit loads and stores of 8 elements, fp32 math):
 * GroupNorm when spatial % 8 == 0 and x, y are 16-byte aligned: two launches over a grid
 * (chunk, group) -- per-thread Welford over 8-element vectors, merged (Chan) in a fixed tree
 * into one (n, mean, M2) per block in ctx->work; then each apply block merges its group's
 * partials itself in a fixed order (deterministic, no atomics) and writes
 * y = (x - mean) * rstd * w + b (SiLU optional). LayerNorm when C % 8 == 0, C <= 2048 and
 * every pointer is 16-byte aligned: one warp per row, the row held in registers, mean then
 * squared deviations from it (two passes over registers, one read of global memory).
 * CHANNELS LAST (ip[2]: x [B, ..., C], groups split the last dim): any dtype or shape takes the
 * chunked double-precision path with a strided index (three launches). F16/BF16 with C % 8 == 0,
 * C <= 4096 and x, y 16-byte aligned take a vector path over a grid (chunk of positions, image):
 * per-channel Welford in registers (a vector may straddle two groups), merged in fixed orders
 * into per-(group, chunk) partials; a small finalize launch turns them into (mean, rstd) per
 * group; the apply streams 128-bit vectors with per-thread per-channel scale and shift. Groups
 * of at most GNS_ELEMS_MAX elements (the UNet's 8x8 levels at 512x512) take one launch instead:
 * a block per (group, image), the group in shared memory, two passes over it. */
#include "tensor/cuda/cuda.cuh"

#include <stdlib.h>
#include <type_traits>

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

/* ===== F16/BF16 fast paths: 8-element vectors and Welford statistics ===== */

#define VEC 8 /* elements of a 128-bit vector of F16/BF16 */

/* The 8 elements of the vector u as fp32 (exact). */
__device__ __forceinline__ void vec_to_f32(uint4 u, __half, float f[VEC]) {
    const __half2 *h = reinterpret_cast<const __half2 *>(&u);
#pragma unroll
    for (int k = 0; k < VEC / 2; k++) {
        float2 t = __half22float2(h[k]);
        f[2 * k] = t.x;
        f[2 * k + 1] = t.y;
    }
}
__device__ __forceinline__ void vec_to_f32(uint4 u, __nv_bfloat16, float f[VEC]) {
    const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&u);
#pragma unroll
    for (int k = 0; k < VEC / 2; k++) {
        float2 t = __bfloat1622float2(h[k]);
        f[2 * k] = t.x;
        f[2 * k + 1] = t.y;
    }
}

/* f rounded to T (nearest even, as cuda_from_f32) and packed into one vector. */
__device__ __forceinline__ uint4 vec_from_f32(const float f[VEC], __half) {
    uint4 u;
    __half2 *h = reinterpret_cast<__half2 *>(&u);
#pragma unroll
    for (int k = 0; k < VEC / 2; k++) h[k] = __floats2half2_rn(f[2 * k], f[2 * k + 1]);
    return u;
}
__device__ __forceinline__ uint4 vec_from_f32(const float f[VEC], __nv_bfloat16) {
    uint4 u;
    __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&u);
#pragma unroll
    for (int k = 0; k < VEC / 2; k++) h[k] = __floats2bfloat162_rn(f[2 * k], f[2 * k + 1]);
    return u;
}

/* SiLU in fp32 with the fast exp and division: __expf(-v) overflows to inf for v < -88,
 * where __fdividef gives v * 0 = -0 (silu's true value there is below 1e-36). */
__device__ __forceinline__ float silu_fast(float v) { return __fdividef(v, 1.0f + __expf(-v)); }

static inline bool is_aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

/* Welford state (count, mean, sum of squared deviations from the mean) += (nb, mb, qb):
 * Chan et al.'s merge, stable for any mean; an empty side (n 0) leaves the other unchanged. */
__device__ __forceinline__ void welford_merge(float &n, float &m, float &q, float nb, float mb, float qb) {
    float nn = n + nb;
    float f = nb > 0.0f ? nb / nn : 0.0f;
    float d = mb - m;
    m += d * f;
    q += qb + d * d * n * f;
    n = nn;
}

/* Adds the 8 values f to the state: the vector's own mean and M2 first (two passes over
 * registers), then one merge. */
__device__ __forceinline__ void welford_add_vec(float &n, float &m, float &q, const float f[VEC]) {
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < VEC; k++) s += f[k];
    float mb = s * (1.0f / VEC), qb = 0.0f;
#pragma unroll
    for (int k = 0; k < VEC; k++) qb += (f[k] - mb) * (f[k] - mb);
    welford_merge(n, m, q, (float)VEC, mb, qb);
}

/* Merges the warp's 32 states into lane 0's, in a fixed tree (the other lanes hold partial
 * results). */
__device__ __forceinline__ void welford_warp(float &n, float &m, float &q) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float nb = __shfl_down_sync(0xffffffffu, n, o);
        float mb = __shfl_down_sync(0xffffffffu, m, o);
        float qb = __shfl_down_sync(0xffffffffu, q, o);
        welford_merge(n, m, q, nb, mb, qb);
    }
}

/* ===== GroupNorm, F16/BF16: statistics, then apply (two launches) =====
 * A group is nvec = cpg * spatial / 8 vectors; chunk k of a grid (chunks, nb * groups) owns
 * vectors [k * per, min((k + 1) * per, nvec)) of its group. part holds 3 floats (n, mean, M2)
 * per (group, chunk). Indices within a group are 32-bit (the entry checks nvec * 8 < 2^31). */

#define GNV_THREADS 256
#define GNV_UNROLL 4          /* vectors each thread loads before it uses them */
#define GNV_TARGET_BLOCKS 1024 /* about one full wave of 256-thread blocks on an H100 (132 SMs x 8) */
#define GNV_PER_MIN 256       /* vectors per block at least (2048 elements) */
#define GNV_CHUNKS_MAX 512

template <typename T>
__global__ void __launch_bounds__(GNV_THREADS)
    group_norm_stats_vec(const T *__restrict__ x, float *__restrict__ part, int nvec, int per, int chunks) {
    __shared__ float wn[GNV_THREADS / 32], wm[GNV_THREADS / 32], wq[GNV_THREADS / 32];
    const int chunk = blockIdx.x;
    const int64_t bg = blockIdx.y;
    const int v1 = min(chunk * per + per, nvec);
    const uint4 *xv = reinterpret_cast<const uint4 *>(x) + bg * nvec;
    float n = 0.0f, m = 0.0f, q = 0.0f;
    for (int v = chunk * per + (int)threadIdx.x; v < v1; v += GNV_THREADS * GNV_UNROLL) {
        uint4 u[GNV_UNROLL];
#pragma unroll
        for (int k = 0; k < GNV_UNROLL; k++)
            if (v + k * GNV_THREADS < v1) u[k] = __ldg(xv + v + k * GNV_THREADS);
#pragma unroll
        for (int k = 0; k < GNV_UNROLL; k++) {
            if (v + k * GNV_THREADS < v1) {
                float f[VEC];
                vec_to_f32(u[k], T(), f);
                welford_add_vec(n, m, q, f);
            }
        }
    }
    welford_warp(n, m, q);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        wn[warp] = n;
        wm[warp] = m;
        wq[warp] = q;
    }
    __syncthreads();
    if (warp == 0) {
        n = lane < GNV_THREADS / 32 ? wn[lane] : 0.0f;
        m = lane < GNV_THREADS / 32 ? wm[lane] : 0.0f;
        q = lane < GNV_THREADS / 32 ? wq[lane] : 0.0f;
        welford_warp(n, m, q);
        if (lane == 0) {
            float *p = part + (bg * chunks + chunk) * 3;
            p[0] = n;
            p[1] = m;
            p[2] = q;
        }
    }
}

template <typename T>
__global__ void __launch_bounds__(GNV_THREADS)
    group_norm_apply_vec(T *y, const T *x, const T *w, const T *b, const float *part, int groups, int cpg,
                         int spatial, int nvec, int per, int chunks, float eps, int silu) {
    __shared__ float s_mean, s_rstd;
    const int chunk = blockIdx.x;
    const int64_t bg = blockIdx.y;
    const int g = (int)(bg % groups);
    const int v1 = min(chunk * per + per, nvec);
    const uint4 *xv = reinterpret_cast<const uint4 *>(x) + bg * nvec;
    uint4 *yv = reinterpret_cast<uint4 *>(y) + bg * nvec;
    int v = chunk * per + (int)threadIdx.x;
    /* the first vectors are loaded before the statistics, to hide the partials' latency */
    uint4 u[GNV_UNROLL];
#pragma unroll
    for (int k = 0; k < GNV_UNROLL; k++)
        if (v + k * GNV_THREADS < v1) u[k] = xv[v + k * GNV_THREADS];
    if (threadIdx.x < 32) {
        /* every block of the group merges the same partials in the same order */
        float n = 0.0f, m = 0.0f, q = 0.0f;
        const float *p = part + bg * chunks * 3;
        for (int i = threadIdx.x; i < chunks; i += 32) welford_merge(n, m, q, p[3 * i], p[3 * i + 1], p[3 * i + 2]);
        welford_warp(n, m, q);
        if (threadIdx.x == 0) {
            float var = n > 0.0f ? q / n : 0.0f;
            s_mean = m;
            s_rstd = rsqrtf((var > 0.0f ? var : 0.0f) + eps);
        }
    }
    __syncthreads();
    const float mean = s_mean, rstd = s_rstd;
    for (;;) {
#pragma unroll
        for (int k = 0; k < GNV_UNROLL; k++) {
            const int vk = v + k * GNV_THREADS;
            if (vk < v1) {
                /* a vector lies in one channel: spatial % 8 == 0 */
                const int ch = g * cpg + (int)((unsigned)vk * VEC / (unsigned)spatial);
                const float scale = rstd * (w ? cuda_to_f32(w[ch]) : 1.0f);
                const float shift = b ? cuda_to_f32(b[ch]) : 0.0f;
                float f[VEC];
                vec_to_f32(u[k], T(), f);
#pragma unroll
                for (int e = 0; e < VEC; e++) {
                    float t = (f[e] - mean) * scale + shift;
                    f[e] = silu ? silu_fast(t) : t;
                }
                yv[vk] = vec_from_f32(f, T());
            }
        }
        v += GNV_THREADS * GNV_UNROLL;
        if (v >= v1) break;
#pragma unroll
        for (int k = 0; k < GNV_UNROLL; k++)
            if (v + k * GNV_THREADS < v1) u[k] = xv[v + k * GNV_THREADS];
    }
}

/* True when the fast path takes this GroupNorm: F16/BF16, whole vectors per channel, aligned. */
static bool group_norm_vec_ok(const void *y, const void *x, int64_t c, int64_t groups, int64_t spatial) {
    int64_t gsize = c / groups * spatial;
    return spatial % VEC == 0 && gsize < ((int64_t)1 << 30) && is_aligned16(x) && is_aligned16(y);
}

template <typename T>
static int group_norm_vec_cuda(struct cuda_ctx *ctx, T *y, const T *x, const T *w, const T *b, int64_t nb,
                               int64_t c, int64_t groups, int64_t spatial, float eps, bool silu, struct err *err) {
    const int64_t nbg = nb * groups, cpg = c / groups;
    const int nvec = (int)(cpg * spatial / VEC);
    /* about GNV_TARGET_BLOCKS blocks in all, each of GNV_PER_MIN vectors at least */
    int64_t chunks = (GNV_TARGET_BLOCKS + nbg - 1) / nbg;
    int64_t by_size = (nvec + GNV_PER_MIN - 1) / GNV_PER_MIN;
    if (chunks > by_size) chunks = by_size;
    if (chunks > GNV_CHUNKS_MAX) chunks = GNV_CHUNKS_MAX;
    if (chunks < 1) chunks = 1;
    const int per = (int)((nvec + chunks - 1) / chunks);
    chunks = (nvec + per - 1) / per; /* no empty chunk */
    int rc = 0;
    float *part = (float *)cuda__work(ctx, (size_t)(nbg * chunks * 3) * sizeof(float), "group_norm statistics", &rc,
                                      err);
    if (!part) return rc;
    dim3 grid((unsigned)chunks, (unsigned)nbg);
    group_norm_stats_vec<T><<<grid, GNV_THREADS, 0, ctx->stream>>>(x, part, nvec, per, (int)chunks);
    CUDA_TRY_LAUNCH();
    group_norm_apply_vec<T><<<grid, GNV_THREADS, 0, ctx->stream>>>(y, x, w, b, part, (int)groups, (int)cpg,
                                                                  (int)spatial, nvec, per, (int)chunks, eps,
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
    if constexpr (!std::is_same<T, float>::value) {
        if (group_norm_vec_ok(y, x, c, groups, spatial))
            return group_norm_vec_cuda<T>(ctx, y, x, w, b, nb, c, groups, spatial, dst->fp[0], dst->ip[1] != 0, err);
    }
    if (c / groups * spatial >= GN_SPLIT_MIN)
        return group_norm_chunked_cuda<T>(ctx, y, x, w, b, nb, c, groups, spatial, dst->fp[0], dst->ip[1] != 0, err);
    return group_norm_cuda<T>(y, x, w, b, nb, c, groups, spatial, dst->fp[0], dst->ip[1] != 0, ctx->stream, err);
}

/* ===== GroupNorm, channels last: x [B, P, C], group g = channels [g*cpg, (g+1)*cpg) of every position =====
 * Any dtype and shape (F32 always): the chunked double-precision path above with a strided
 * index -- element i of a group is channel i % cpg of position i / cpg. Grid (chunk, b * G):
 * partial sums, partial squared deviations from the mean, then y; one chunk for small groups. */

/* Offset of element i of a group from the group's first channel at position 0. */
__device__ __forceinline__ int64_t nhwc_offset(int64_t i, int64_t cpg, int64_t c) {
    int64_t pos = i / cpg;
    return pos * c + (i - pos * cpg);
}

/* pass 0: sum of the chunk -> psum; pass 1: sum of (x - mean_f)^2 -> psq */
template <typename T, int PASS>
__global__ void group_norm_nhwc_partial(const T *x, const T *a, double *psum, double *psq, int64_t p, int64_t c,
                                        int64_t groups, int chunks) {
    const int64_t bg = blockIdx.y, img = bg / groups, g = bg % groups, cpg = c / groups, gsize = p * cpg;
    const int chunk = blockIdx.x;
    const int64_t per = (gsize + chunks - 1) / chunks, i0 = chunk * per, i1 = i0 + per < gsize ? i0 + per : gsize;
    const T *xg = x + img * p * c + g * cpg, *ag = a ? a + img * c + g * cpg : NULL;
    float mf = 0.0f;
    if (PASS == 1) mf = (float)(block_ordered_sum(psum + bg * chunks, chunks) / (double)gsize);
    double s = 0;
    for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
        float v = cuda_to_f32(xg[nhwc_offset(i, cpg, c)]) + (ag ? cuda_to_f32(ag[i % cpg]) : 0.0f);
        if (PASS == 0) {
            s += v;
        } else {
            double d = (double)(v - mf);
            s += d * d;
        }
    }
    s = block_sum(s);
    if (threadIdx.x == 0) (PASS == 0 ? psum : psq)[bg * chunks + chunk] = s;
}

template <typename T>
__global__ void group_norm_nhwc_apply(T *y, const T *x, const T *a, const T *w, const T *b, const double *psum,
                                      const double *psq, int64_t p, int64_t c, int64_t groups, int chunks, double eps,
                                      int silu) {
    const int64_t bg = blockIdx.y, img = bg / groups, g = bg % groups, cpg = c / groups, gsize = p * cpg;
    const int chunk = blockIdx.x;
    double m = block_ordered_sum(psum + bg * chunks, chunks) / (double)gsize;
    float mf = (float)m;
    double var = block_ordered_sum(psq + bg * chunks, chunks) / (double)gsize - (m - mf) * (m - mf);
    double rstd = 1.0 / sqrt((var > 0 ? var : 0) + eps);
    const int64_t per = (gsize + chunks - 1) / chunks, i0 = chunk * per, i1 = i0 + per < gsize ? i0 + per : gsize;
    const T *xg = x + img * p * c + g * cpg;
    T *yg = y + img * p * c + g * cpg;
    for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
        const int64_t pos = i / cpg, k = i - pos * cpg, off = pos * c + k;
        /* scale and shift in double, as the NCHW path and the CPU */
        double scale = rstd * (w ? (double)cuda_to_f32(w[g * cpg + k]) : 1.0);
        double mk = m - (a ? (double)cuda_to_f32(a[img * c + g * cpg + k]) : 0.0); /* (x + a - m) = (x - mk) */
        double shift = (b ? (double)cuda_to_f32(b[g * cpg + k]) : 0.0) - mk * scale;
        float v = cuda_to_f32(xg[off]) * (float)scale + (float)shift;
        if (silu) v = v / (1.0f + expf(-v));
        yg[off] = cuda_from_f32<T>(v);
    }
}

template <typename T>
static int group_norm_nhwc_cuda(struct cuda_ctx *ctx, T *y, const T *x, const T *a, const T *w, const T *b, int64_t nb,
                                int64_t p, int64_t c, int64_t groups, float eps, bool silu, struct err *err) {
    const int64_t nbg = nb * groups, gsize = c / groups * p;
    int chunks = (int)((gsize + GN_CHUNK_MIN - 1) / GN_CHUNK_MIN);
    if (chunks > GN_CHUNKS_MAX) chunks = GN_CHUNKS_MAX;
    if (chunks < 1) chunks = 1;
    int rc = 0;
    double *part = (double *)cuda__work(ctx, (size_t)(2 * nbg * chunks) * sizeof(double),
                                        "group_norm (channels last) statistics", &rc, err);
    if (!part) return rc;
    double *psum = part, *psq = part + nbg * chunks;
    dim3 grid((unsigned)chunks, (unsigned)nbg);
    group_norm_nhwc_partial<T, 0><<<grid, GN_THREADS, 0, ctx->stream>>>(x, a, psum, psq, p, c, groups, chunks);
    CUDA_TRY_LAUNCH();
    group_norm_nhwc_partial<T, 1><<<grid, GN_THREADS, 0, ctx->stream>>>(x, a, psum, psq, p, c, groups, chunks);
    CUDA_TRY_LAUNCH();
    group_norm_nhwc_apply<T><<<grid, GN_THREADS, 0, ctx->stream>>>(y, x, a, w, b, psum, psq, p, c, groups, chunks,
                                                                  eps, silu ? 1 : 0);
    CUDA_TRY_LAUNCH();
    return 0;
}

/* ===== GroupNorm, channels last, F16/BF16: per-channel statistics, groups, then apply =====
 * x [B, P, C] with C % 8 == 0 is P rows of nv = C / 8 vectors; a vector (8 channels) may
 * straddle two groups, so statistics are kept per channel and only then merged into groups.
 * A block of the grid (chunk, B) owns rows [chunk * per, min((chunk + 1) * per, P)) of its
 * image. Its threads form `lanes` row lanes of nv columns: thread t owns vector column t % nv
 * and rows r0 + t / nv, + lanes, ... (a block's loads and stores are contiguous).
 * 1. stats: per-thread Welford per channel (8 (mean, M2) and one count) in registers; lane 0
 *    merges the other lanes' states (Chan, in lane order, through shared memory); the block's
 *    per-channel (mean, M2) go to shared memory and S lanes of a warp merge group g's channels
 *    (equal counts: the mean of the means, then sum M2 + rows * sum (mean_ch - mean_g)^2; fixed
 *    xor trees) into one (n, mean, M2) per (image, group, chunk) in ctx->work.
 * 2. finalize: one warp per (image, group) merges its chunks (lane-strided, then a fixed
 *    shuffle tree) into (mean, rstd). A launch of its own, so that the apply blocks do not each
 *    re-read every partial (B * G * chunks^2 reads).
 * 3. apply: each thread takes mean, scale = rstd * w and shift = b for its 8 channels once,
 *    then streams its rows: y = (x - mean) * scale + shift (SiLU optional).
 * No atomics: the result does not depend on scheduling. */

#define GNN_THREADS 256        /* threads per block when a row has fewer vectors (else one per vector) */
#define GNN_C_MAX 4096         /* channels at most (one row's vectors fit one block; shared memory) */
#define GNN_BLOCK_MAX 512      /* = GNN_C_MAX / VEC: the largest block */
#define GNN_UNROLL 4           /* rows each thread loads before it uses them */
#define GNN_TARGET_BLOCKS 264  /* two blocks per SM of an H100 (132 SMs) */
#define GNN_ROWS_MIN 8         /* rows per chunk at least */
#define GNN_CHUNKS_MAX 1024
#define GNN_FIN_WARPS 8        /* groups per finalize block */

extern __shared__ float gnn_smem[]; /* the stats kernel's dynamic shared memory */

template <typename T>
__global__ void __launch_bounds__(GNN_BLOCK_MAX)
    group_norm_nhwc_stats_vec(const T *__restrict__ x, const T *__restrict__ a, float *__restrict__ part, int p, int nv,
                              int lanes, int per, int chunks, int groups, int cpg) {
    const int t = threadIdx.x, tb = blockDim.x, col = t % nv, lane = t / nv;
    const int chunk = blockIdx.x, img = blockIdx.y;
    const int r0 = chunk * per, r1 = min(r0 + per, p);
    const uint4 *xv = reinterpret_cast<const uint4 *>(x) + (int64_t)img * p * nv + col;
    float n = 0.0f, m[VEC], q[VEC];
#pragma unroll
    for (int e = 0; e < VEC; e++) m[e] = q[e] = 0.0f;
    if (lane < lanes) {
        for (int r = r0 + lane; r < r1; r += lanes * GNN_UNROLL) {
            uint4 u[GNN_UNROLL];
#pragma unroll
            for (int k = 0; k < GNN_UNROLL; k++)
                if (r + k * lanes < r1) u[k] = __ldg(xv + (int64_t)(r + k * lanes) * nv);
#pragma unroll
            for (int k = 0; k < GNN_UNROLL; k++) {
                if (r + k * lanes < r1) {
                    float f[VEC];
                    vec_to_f32(u[k], T(), f);
                    n += 1.0f;
                    const float inv = __frcp_rn(n);
#pragma unroll
                    for (int e = 0; e < VEC; e++) {
                        const float d = f[e] - m[e];
                        m[e] = fmaf(d, inv, m[e]);
                        q[e] = fmaf(d, f[e] - m[e], q[e]);
                    }
                }
            }
        }
    }
    if (lanes > 1) {
        /* [tb] counts, then [VEC][tb] means and [VEC][tb] M2s: 17 * tb floats */
        float *sn = gnn_smem, *sm = gnn_smem + tb, *sq = gnn_smem + (1 + VEC) * tb;
        sn[t] = n;
#pragma unroll
        for (int e = 0; e < VEC; e++) {
            sm[e * tb + t] = m[e];
            sq[e * tb + t] = q[e];
        }
        __syncthreads();
        if (lane == 0) {
            for (int l = 1; l < lanes; l++) {
                const int s = l * nv + col;
                const float nb = sn[s], nn = n + nb, f = nb > 0.0f ? nb / nn : 0.0f;
#pragma unroll
                for (int e = 0; e < VEC; e++) {
                    const float d = sm[e * tb + s] - m[e];
                    m[e] += d * f;
                    q[e] += sq[e * tb + s] + d * d * n * f;
                }
                n = nn;
            }
        }
        __syncthreads(); /* the states are read: the channels reuse the memory */
    }
    /* per channel: mean [C], then M2 [C], every channel over the chunk's r1 - r0 rows; a per-image
       add a moves a channel's mean, not its M2 */
    float *cm = gnn_smem, *cq = gnn_smem + nv * VEC;
    if (lane == 0) {
        float ad[VEC] = {};
        if (a) vec_to_f32(__ldg(reinterpret_cast<const uint4 *>(a) + (int64_t)img * nv + col), T(), ad);
#pragma unroll
        for (int e = 0; e < VEC; e++) {
            cm[col * VEC + e] = a ? m[e] + ad[e] : m[e];
            cq[col * VEC + e] = q[e];
        }
    }
    __syncthreads();
    /* groups: S lanes of one warp per group (S a power of two, S * groups <= tb where it can be),
     * each summing channels j, j + S, ..; an xor tree gives all S lanes the same sums */
    int S = 1;
    while (S < 32 && 2 * S * groups <= tb) S *= 2;
    const float rows = (float)(r1 - r0);
    for (int i0 = 0; i0 < groups * S; i0 += tb) { /* block-uniform: whole warps shuffle */
        const int i = i0 + t, g = i / S, j = i % S;
        const bool ok = g < groups;
        const float *gm = cm + g * cpg, *gq = cq + g * cpg;
        float s = 0.0f;
        if (ok)
            for (int k = j; k < cpg; k += S) s += gm[k];
        for (int o = 1; o < S; o <<= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        const float mean = s / (float)cpg;
        float m2 = 0.0f, dev = 0.0f;
        if (ok) {
            for (int k = j; k < cpg; k += S) {
                const float d = gm[k] - mean;
                dev += d * d;
                m2 += gq[k];
            }
        }
        for (int o = 1; o < S; o <<= 1) {
            dev += __shfl_xor_sync(0xffffffffu, dev, o);
            m2 += __shfl_xor_sync(0xffffffffu, m2, o);
        }
        if (ok && j == 0) {
            float *out = part + (((int64_t)img * groups + g) * chunks + chunk) * 3;
            out[0] = rows * (float)cpg;
            out[1] = mean;
            out[2] = m2 + rows * dev;
        }
    }
}

/* stat [B, G, 2] = (mean, rstd) from part [B, G, chunks, 3]; grid (ceil(G / 8), B), a warp per group. */
__global__ void __launch_bounds__(GNN_FIN_WARPS * 32)
    group_norm_nhwc_finalize(const float *__restrict__ part, float *__restrict__ stat, int groups, int chunks,
                             float eps) {
    const int g = blockIdx.x * GNN_FIN_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (g >= groups) return; /* the whole warp */
    const int64_t bg = (int64_t)blockIdx.y * groups + g;
    const float *pp = part + bg * chunks * 3;
    float n = 0.0f, m = 0.0f, q = 0.0f;
    for (int i = lane; i < chunks; i += 32) welford_merge(n, m, q, pp[3 * i], pp[3 * i + 1], pp[3 * i + 2]);
    welford_warp(n, m, q);
    if (lane == 0) {
        const float var = n > 0.0f ? q / n : 0.0f;
        stat[2 * bg] = m;
        stat[2 * bg + 1] = 1.0f / sqrtf((var > 0.0f ? var : 0.0f) + eps);
    }
}

template <typename T>
__global__ void __launch_bounds__(GNN_BLOCK_MAX)
    group_norm_nhwc_apply_vec(T *y, const T *x, const T *a, const T *w, const T *b, const float *__restrict__ stat, int p,
                              int nv, int lanes, int per, int groups, int cpg, int silu) {
    const int t = threadIdx.x, col = t % nv, lane = t / nv;
    if (lane >= lanes) return; /* padding threads of the last warp (no barrier below) */
    const int chunk = blockIdx.x, img = blockIdx.y;
    const int r0 = chunk * per, r1 = min(r0 + per, p);
    const float *st = stat + (int64_t)img * groups * 2;
    float mean[VEC], scale[VEC], shift[VEC], ad[VEC] = {};
    if (a) vec_to_f32(reinterpret_cast<const uint4 *>(a)[(int64_t)img * nv + col], T(), ad);
#pragma unroll
    for (int e = 0; e < VEC; e++) {
        const int ch = col * VEC + e, g = ch / cpg;
        mean[e] = a ? st[2 * g] - ad[e] : st[2 * g]; /* (x + a - mean) = (x - (mean - a)) */
        scale[e] = st[2 * g + 1] * (w ? cuda_to_f32(w[ch]) : 1.0f);
        shift[e] = b ? cuda_to_f32(b[ch]) : 0.0f;
    }
    const int64_t base = (int64_t)img * p * nv + col;
    const uint4 *xv = reinterpret_cast<const uint4 *>(x) + base;
    uint4 *yv = reinterpret_cast<uint4 *>(y) + base;
    for (int r = r0 + lane; r < r1; r += lanes * GNN_UNROLL) {
        uint4 u[GNN_UNROLL];
#pragma unroll
        for (int k = 0; k < GNN_UNROLL; k++)
            if (r + k * lanes < r1) u[k] = xv[(int64_t)(r + k * lanes) * nv];
#pragma unroll
        for (int k = 0; k < GNN_UNROLL; k++) {
            if (r + k * lanes < r1) {
                float f[VEC];
                vec_to_f32(u[k], T(), f);
#pragma unroll
                for (int e = 0; e < VEC; e++) {
                    const float v = (f[e] - mean[e]) * scale[e] + shift[e];
                    f[e] = silu ? silu_fast(v) : v;
                }
                yv[(int64_t)(r + k * lanes) * nv] = vec_from_f32(f, T());
            }
        }
    }
}

/* ===== GroupNorm, channels last, small groups: one block per (group, image) =====
 * The UNet's 8x8 levels (at 512x512) are latency-bound: the vector path's three launches
 * (stats, finalize, apply) cost more than the work. Here a block holds
 * its group (cpg channels at every position, plus a's channels) in shared memory as fp32 and
 * takes, as the F32 path does, the mean and then the squared deviations from it (double partial
 * sums, fixed reduction order: deterministic), then writes y = (v - mean) * rstd * w + b (SiLU
 * optional): one launch, one read of x. */
#define GNS_THREADS 512
#define GNS_UNROLL 8
/* cpg * positions at most (20 KiB of shared memory): measured node by node on an H100 (PERF.md),
   this path wins up to there (the 8x8 levels: 7.7-9.9 against 15-19 us) and loses beyond (a
   block's serial passes over 10-20 thousand elements: 16x16x1280 at batch 8 21 against 17 us,
   32x32x640 37 against 20 us) */
#define GNS_ELEMS_MAX 5120

template <typename T>
__global__ void __launch_bounds__(GNS_THREADS)
    group_norm_nhwc_small(T *y, const T *x, const T *a, const T *w, const T *b, int p, int c, int cpg, float eps,
                          int silu) {
    extern __shared__ float gns[];
    const int g = blockIdx.x, img = blockIdx.y, n = p * cpg, c0 = g * cpg;
    const int64_t base = (int64_t)img * p * c + c0;
    double s = 0.0;
    const int step = blockDim.x;
    for (int e0 = threadIdx.x; e0 < n; e0 += step * GNS_UNROLL) { /* GNS_UNROLL loads in flight */
        float v[GNS_UNROLL];
#pragma unroll
        for (int u = 0; u < GNS_UNROLL; u++) {
            const int e = e0 + u * step, r = e / cpg, k = e - r * cpg;
            v[u] = e < n ? cuda_to_f32(x[base + (int64_t)r * c + k]) : 0.0f;
            if (a && e < n) v[u] += cuda_to_f32(a[(int64_t)img * c + c0 + k]);
        }
#pragma unroll
        for (int u = 0; u < GNS_UNROLL; u++) {
            const int e = e0 + u * step;
            if (e < n) {
                gns[e] = v[u];
                s += v[u];
            }
        }
    }
    const float mean = (float)(block_sum(s) / (double)n); /* block_sum's barriers order gns too */
    double q = 0.0;
    for (int e = threadIdx.x; e < n; e += blockDim.x) {
        const float d = gns[e] - mean;
        q += (double)d * d;
    }
    const double var = block_sum(q) / (double)n;
    const float rstd = (float)(1.0 / sqrt(var + (double)eps));
    for (int e = threadIdx.x; e < n; e += blockDim.x) {
        const int r = e / cpg, k = e - r * cpg;
        const float scale = w ? rstd * cuda_to_f32(w[c0 + k]) : rstd, shift = b ? cuda_to_f32(b[c0 + k]) : 0.0f;
        const float v = (gns[e] - mean) * scale + shift;
        y[base + (int64_t)r * c + k] = cuda_from_f32<T>(silu ? silu_fast(v) : v);
    }
}

/* True when the small-group path takes this GroupNorm (KILN_GN_SMALL=0: never, for comparisons). */
static bool group_norm_nhwc_small_ok(int64_t nb, int64_t p, int64_t c, int64_t groups) {
    static int on = -1;
    if (on < 0) {
        const char *e = getenv("KILN_GN_SMALL");
        on = !(e && e[0] == '0');
    }
    return on && c % groups == 0 && p * (c / groups) <= GNS_ELEMS_MAX && nb <= 65535 && groups <= 65535;
}

template <typename T>
static int group_norm_nhwc_small_cuda(struct cuda_ctx *ctx, T *y, const T *x, const T *a, const T *w, const T *b,
                                      int64_t nb, int64_t p, int64_t c, int64_t groups, float eps, bool silu,
                                      struct err *err) {
    const int cpg = (int)(c / groups);
    const size_t smem = (size_t)(p * cpg) * sizeof(float);
    group_norm_nhwc_small<T><<<dim3((unsigned)groups, (unsigned)nb), GNS_THREADS, smem, ctx->stream>>>(
        y, x, a, w, b, (int)p, (int)c, cpg, eps, silu ? 1 : 0);
    CUDA_TRY_LAUNCH();
    return 0;
}

/* True when the channels-last fast path takes this GroupNorm (T is F16 or BF16). */
static bool group_norm_nhwc_vec_ok(const void *y, const void *x, const void *a, int64_t nb, int64_t p, int64_t c) {
    return c % VEC == 0 && c <= GNN_C_MAX && p < ((int64_t)1 << 30) && nb <= 65535 && is_aligned16(x) &&
           is_aligned16(y) && (!a || is_aligned16(a));
}

template <typename T>
static int group_norm_nhwc_vec_cuda(struct cuda_ctx *ctx, T *y, const T *x, const T *a, const T *w, const T *b,
                                    int64_t nb, int64_t p, int64_t c, int64_t groups, float eps, bool silu,
                                    struct err *err) {
    const int nv = (int)(c / VEC), cpg = (int)(c / groups);
    const int lanes = nv >= GNN_THREADS ? 1 : GNN_THREADS / nv;
    const int tb = (nv * lanes + 31) / 32 * 32; /* <= GNN_BLOCK_MAX: nv <= 512, or nv * lanes <= 256 */
    /* about GNN_TARGET_BLOCKS blocks in all, of GNN_ROWS_MIN rows at least */
    int64_t chunks = (GNN_TARGET_BLOCKS + nb - 1) / nb;
    const int64_t by_rows = (p + GNN_ROWS_MIN - 1) / GNN_ROWS_MIN;
    if (chunks > by_rows) chunks = by_rows;
    if (chunks > GNN_CHUNKS_MAX) chunks = GNN_CHUNKS_MAX;
    if (chunks < 1) chunks = 1;
    const int per = (int)((p + chunks - 1) / chunks);
    chunks = (p + per - 1) / per; /* no empty chunk */
    const int64_t nbg = nb * groups;
    const size_t stat_floats = (size_t)(2 * nbg), part_floats = (size_t)(3 * nbg * chunks);
    int rc = 0;
    float *stat = (float *)cuda__work(ctx, (stat_floats + part_floats) * sizeof(float),
                                      "group_norm (channels last) statistics", &rc, err);
    if (!stat) return rc;
    float *part = stat + stat_floats;
    /* shared memory: the lanes' states (17 floats a thread) or the channels' (mean, M2) */
    const size_t states = lanes > 1 ? (size_t)(1 + 2 * VEC) * tb : 0, channels = (size_t)2 * c;
    const size_t smem = (states > channels ? states : channels) * sizeof(float); /* <= 32 KiB */
    const dim3 grid((unsigned)chunks, (unsigned)nb);
    group_norm_nhwc_stats_vec<T><<<grid, tb, smem, ctx->stream>>>(x, a, part, (int)p, nv, lanes, per, (int)chunks,
                                                                   (int)groups, cpg);
    CUDA_TRY_LAUNCH();
    const dim3 fgrid((unsigned)((groups + GNN_FIN_WARPS - 1) / GNN_FIN_WARPS), (unsigned)nb);
    group_norm_nhwc_finalize<<<fgrid, GNN_FIN_WARPS * 32, 0, ctx->stream>>>(part, stat, (int)groups, (int)chunks, eps);
    CUDA_TRY_LAUNCH();
    group_norm_nhwc_apply_vec<T><<<grid, tb, 0, ctx->stream>>>(y, x, a, w, b, stat, (int)p, nv, lanes, per,
                                                               (int)groups, cpg, silu ? 1 : 0);
    CUDA_TRY_LAUNCH();
    return 0;
}

template <typename T>
static int group_norm_nhwc_entry(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *tx = dst->src[0], *tw = dst->src[1], *tb = dst->src[2];
    int64_t nb = tx->shape[0], c = tx->shape[tx->ndim - 1], groups = dst->ip[0];
    int64_t p = nb * c != 0 ? cuda_numel(tx) / (nb * c) : 0;
    if (nb * groups == 0 || c * p == 0) return 0;
    if (nb * groups > 65535)
        return err_set(err, STATUS_ERR_UNSUPPORTED, "cuda group_norm (channels last): %lld groups exceed the grid",
                       (long long)(nb * groups));
    T *y = (T *)dst->data;
    const T *x = (const T *)tx->data, *w = tw ? (const T *)tw->data : NULL;
    const T *b = tb ? (const T *)tb->data : NULL;
    const T *a = dst->src[3] ? (const T *)dst->src[3]->data : NULL; /* op_group_norm_nhwc_add's [B, C] */
    if constexpr (!std::is_same<T, float>::value) {
        if (group_norm_nhwc_small_ok(nb, p, c, groups))
            return group_norm_nhwc_small_cuda<T>(ctx, y, x, a, w, b, nb, p, c, groups, dst->fp[0], dst->ip[1] != 0,
                                                 err);
        if (group_norm_nhwc_vec_ok(y, x, a, nb, p, c))
            return group_norm_nhwc_vec_cuda<T>(ctx, y, x, a, w, b, nb, p, c, groups, dst->fp[0], dst->ip[1] != 0, err);
    }
    return group_norm_nhwc_cuda<T>(ctx, y, x, a, w, b, nb, p, c, groups, dst->fp[0], dst->ip[1] != 0, err);
}

int cuda_op_group_norm(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    if (dst->ip[2]) {
        CUDA_DISPATCH(dst->dtype, group_norm_nhwc_entry<T>(ctx, dst, err));
    }
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

/* ===== LayerNorm, F16/BF16: one warp per row, the row in registers =====
 * Lane l holds vectors l, l + 32, .. of its row (VPL of them at most: C <= VPL * 256).
 * Every lane gets the same sums (an xor butterfly of commutative adds). */

#define LNV_WARPS 4 /* rows per block */
#define LNV_VPL_MAX 8

template <typename T, int VPL>
__global__ void __launch_bounds__(LNV_WARPS * 32)
    layer_norm_vec(T *y, const T *x, const T *w, const T *b, int64_t rows, int c, float eps) {
    const int64_t row = (int64_t)blockIdx.x * LNV_WARPS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31, nvec = c / VEC;
    if (row >= rows) return; /* the whole warp */
    const uint4 *xr = reinterpret_cast<const uint4 *>(x) + row * nvec;
    uint4 *yr = reinterpret_cast<uint4 *>(y) + row * nvec;
    float f[VPL][VEC];
#pragma unroll
    for (int k = 0; k < VPL; k++) {
        uint4 u = make_uint4(0, 0, 0, 0);
        if (lane + 32 * k < nvec) u = xr[lane + 32 * k];
        vec_to_f32(u, T(), f[k]); /* zeros past the row: they add nothing to the sum */
    }
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < VPL; k++)
#pragma unroll
        for (int e = 0; e < VEC; e++) s += f[k][e];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    const float mean = s / (float)c;
    float q = 0.0f;
#pragma unroll
    for (int k = 0; k < VPL; k++) {
        if (lane + 32 * k < nvec) {
#pragma unroll
            for (int e = 0; e < VEC; e++) q += (f[k][e] - mean) * (f[k][e] - mean);
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) q += __shfl_xor_sync(0xffffffffu, q, o);
    const float rstd = rsqrtf(q / (float)c + eps);
#pragma unroll
    for (int k = 0; k < VPL; k++) {
        const int v = lane + 32 * k;
        if (v < nvec) {
            float fw[VEC], fb[VEC];
            if (w) vec_to_f32(__ldg(reinterpret_cast<const uint4 *>(w) + v), T(), fw);
            if (b) vec_to_f32(__ldg(reinterpret_cast<const uint4 *>(b) + v), T(), fb);
#pragma unroll
            for (int e = 0; e < VEC; e++) {
                float t = (f[k][e] - mean) * rstd;
                if (w) t *= fw[e];
                if (b) t += fb[e];
                f[k][e] = t;
            }
            yr[v] = vec_from_f32(f[k], T());
        }
    }
}

template <typename T>
static int layer_norm_vec_cuda(T *y, const T *x, const T *w, const T *b, int64_t rows, int c, float eps,
                               cudaStream_t stream, struct err *err) {
    const int64_t blocks = (rows + LNV_WARPS - 1) / LNV_WARPS;
    if (blocks > 0x7fffffff)
        return err_set(err, STATUS_ERR_UNSUPPORTED, "cuda layer_norm: %lld rows exceed the grid", (long long)rows);
    const int vpl = (c / VEC + 31) / 32;
    const dim3 grid((unsigned)blocks), block(LNV_WARPS * 32);
    switch (vpl) {
    case 1: layer_norm_vec<T, 1><<<grid, block, 0, stream>>>(y, x, w, b, rows, c, eps); break;
    case 2: layer_norm_vec<T, 2><<<grid, block, 0, stream>>>(y, x, w, b, rows, c, eps); break;
    case 3: layer_norm_vec<T, 3><<<grid, block, 0, stream>>>(y, x, w, b, rows, c, eps); break;
    case 4: layer_norm_vec<T, 4><<<grid, block, 0, stream>>>(y, x, w, b, rows, c, eps); break;
    case 5: layer_norm_vec<T, 5><<<grid, block, 0, stream>>>(y, x, w, b, rows, c, eps); break;
    case 6: layer_norm_vec<T, 6><<<grid, block, 0, stream>>>(y, x, w, b, rows, c, eps); break;
    case 7: layer_norm_vec<T, 7><<<grid, block, 0, stream>>>(y, x, w, b, rows, c, eps); break;
    case 8: layer_norm_vec<T, 8><<<grid, block, 0, stream>>>(y, x, w, b, rows, c, eps); break;
    default:
        return err_set(err, STATUS_ERR_INTERNAL, "cuda layer_norm: %d vectors per lane (C %d) past the fast path", vpl,
                       c);
    }
    CUDA_TRY_LAUNCH();
    return 0;
}

/* True when the fast path takes this LayerNorm: whole vectors per row, C small enough to sit in
 * registers, every pointer aligned (w and b are loaded as vectors too). */
static bool layer_norm_vec_ok(const void *y, const void *x, const void *w, const void *b, int64_t c) {
    return c > 0 && c % VEC == 0 && c <= LNV_VPL_MAX * 32 * VEC && is_aligned16(y) && is_aligned16(x) &&
           (!w || is_aligned16(w)) && (!b || is_aligned16(b));
}

template <typename T>
static int layer_norm_entry(T *y, const T *x, const T *w, const T *b, int64_t rows, int64_t c, float eps,
                            cudaStream_t stream, struct err *err) {
    if constexpr (!std::is_same<T, float>::value) {
        if (rows > 0 && layer_norm_vec_ok(y, x, w, b, c))
            return layer_norm_vec_cuda<T>(y, x, w, b, rows, (int)c, eps, stream, err);
    }
    return layer_norm_cuda<T>(y, x, w, b, rows, c, eps, stream, err);
}

int cuda_op_layer_norm(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *tx = dst->src[0], *tw = dst->src[1], *tb = dst->src[2];
    int64_t c = tx->shape[tx->ndim - 1], rows = c ? cuda_numel(tx) / c : 0;
    CUDA_DISPATCH(dst->dtype, layer_norm_entry<T>((T *)dst->data, (const T *)tx->data,
                                                  tw ? (const T *)tw->data : NULL, tb ? (const T *)tb->data : NULL,
                                                  rows, c, dst->fp[0], ctx->stream, err));
}
