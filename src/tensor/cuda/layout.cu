/* tensor/cuda/layout.cu -- data movement on CUDA: TRANSPOSE, UPSAMPLE_NEAREST, CONCAT, GET_ROWS
 * (copies of the storage type T, no conversion), and CAST between F32, F16 and BF16 (bit-equal
 * to the CPU's cpu_op_cast: round to nearest even, NaNs made quiet the same way).
 * UPSAMPLE_NEAREST takes NCHW or, with ip[0], channels-last [B, H, W, C]: whole pixels copied,
 * 16 bytes at a time when a pixel is a multiple of 16 bytes and both buffers are aligned.
 * Owns: nothing; reads dst->src[], writes dst->data.
 * Threads: the backend's worker; kernels on ctx->stream. GET_ROWS synchronises once to report
 * an id outside the table (the check needs the ids, which live on the device). */
#include "tensor/cuda/cuda.cuh"

#define THREADS 256
#define MAX_GRID (65535u * 8u)

static unsigned grid_for(int64_t n) {
    unsigned g = cuda_blocks(n, THREADS);
    return g < MAX_GRID ? (g ? g : 1) : MAX_GRID;
}

#define GRID_STRIDE(i, n) \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

/* ===== TRANSPOSE: [mats, M, N] -> [mats, N, M] through 32 x 32 shared-memory tiles ===== */

#define TILE 32

template <typename T>
__global__ void transpose(T *y, const T *a, int64_t m, int64_t n) {
    __shared__ T tile[TILE][TILE + 1]; /* +1: no bank conflicts on the column reads (fp32) */
    int64_t mat = blockIdx.z;
    int64_t i0 = (int64_t)blockIdx.y * TILE, j0 = (int64_t)blockIdx.x * TILE;
    const T *src = a + mat * m * n; /* [m, n] */
    T *out = y + mat * m * n;       /* [n, m] */
    for (int r = threadIdx.y; r < TILE; r += blockDim.y) {
        int64_t i = i0 + r, j = j0 + threadIdx.x;
        if (i < m && j < n) tile[r][threadIdx.x] = src[i * n + j];
    }
    __syncthreads();
    for (int r = threadIdx.y; r < TILE; r += blockDim.y) {
        int64_t j = j0 + r, i = i0 + threadIdx.x;
        if (i < m && j < n) out[j * m + i] = tile[threadIdx.x][r];
    }
}

template <typename T>
static int transpose_cuda(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *ta = dst->src[0];
    int64_t m = ta->shape[ta->ndim - 2], n = ta->shape[ta->ndim - 1];
    if (m * n == 0) return 0;
    int64_t mats = cuda_numel(ta) / (m * n);
    if (mats > 65535 || (m + TILE - 1) / TILE > 65535)
        return err_set(err, STATUS_ERR_UNSUPPORTED, "cuda transpose: %lld matrices of %lld x %lld exceed the grid",
                       (long long)mats, (long long)m, (long long)n);
    dim3 grid((unsigned)((n + TILE - 1) / TILE), (unsigned)((m + TILE - 1) / TILE), (unsigned)mats);
    transpose<T><<<grid, dim3(TILE, 8), 0, ctx->stream>>>((T *)dst->data, (const T *)ta->data, m, n);
    CUDA_TRY_LAUNCH();
    return 0;
}

int cuda_op_transpose(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    CUDA_DISPATCH(dst->dtype, transpose_cuda<T>(ctx, dst, err));
}

/* ===== UPSAMPLE_NEAREST: [B, C, h, w] -> [B, C, ho, wo], torch's "nearest" ===== */

template <typename T>
__global__ void upsample_nearest(T *y, const T *a, int64_t planes, int64_t h, int64_t w, int64_t ho, int64_t wo,
                                 float sh, float sw, int64_t n) {
    GRID_STRIDE(i, n) {
        int64_t ox = i % wo, oy = (i / wo) % ho, p = i / (wo * ho);
        /* src = min(floor(dst * (in / out)), in - 1), in float as the CPU and torch do */
        int64_t iy = (int64_t)floorf((float)oy * sh), ix = (int64_t)floorf((float)ox * sw);
        if (iy > h - 1) iy = h - 1;
        if (ix > w - 1) ix = w - 1;
        y[i] = a[(p * h + iy) * w + ix];
    }
}

template <typename T>
static int upsample_nearest_cuda(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *ta = dst->src[0];
    int64_t h = ta->shape[2], w = ta->shape[3], ho = dst->shape[2], wo = dst->shape[3];
    int64_t n = cuda_numel(dst);
    if (n == 0) return 0;
    /* an integer factor f maps exactly to floor(o / f); the float formula gives the same */
    upsample_nearest<T><<<grid_for(n), THREADS, 0, ctx->stream>>>((T *)dst->data, (const T *)ta->data,
                                                                  ta->shape[0] * ta->shape[1], h, w, ho, wo,
                                                                  (float)h / (float)ho, (float)w / (float)wo, n);
    CUDA_TRY_LAUNCH();
    return 0;
}

/* ===== UPSAMPLE_NEAREST, channels last: [B, h, w, C] -> [B, ho, wo, C], whole pixels =====
 * The same source index rule; element i of y is unit k of pixel i / cu, where a pixel is cu
 * units U: 16-byte vectors (uint4) when a pixel's bytes are a multiple of 16 and both buffers
 * are 16-byte aligned, else single elements of T. */

template <typename U>
__global__ void upsample_nearest_nhwc(U *y, const U *a, int64_t h, int64_t w, int64_t ho, int64_t wo, int64_t cu,
                                      float sh, float sw, int64_t n) {
    GRID_STRIDE(i, n) {
        int64_t pix = i / cu, k = i - pix * cu;
        int64_t ox = pix % wo, oy = (pix / wo) % ho, img = pix / (wo * ho);
        int64_t iy = (int64_t)floorf((float)oy * sh), ix = (int64_t)floorf((float)ox * sw);
        if (iy > h - 1) iy = h - 1;
        if (ix > w - 1) ix = w - 1;
        y[i] = a[((img * h + iy) * w + ix) * cu + k];
    }
}

static bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

template <typename T>
static int upsample_nearest_nhwc_cuda(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *ta = dst->src[0];
    int64_t h = ta->shape[1], w = ta->shape[2], c = ta->shape[3], ho = dst->shape[1], wo = dst->shape[2];
    int64_t n = cuda_numel(dst);
    if (n == 0) return 0;
    float sh = (float)h / (float)ho, sw = (float)w / (float)wo;
    if ((c * (int64_t)sizeof(T)) % 16 == 0 && aligned16(dst->data) && aligned16(ta->data)) {
        int64_t cu = c * (int64_t)sizeof(T) / 16, nu = n / c * cu;
        upsample_nearest_nhwc<uint4><<<grid_for(nu), THREADS, 0, ctx->stream>>>(
            (uint4 *)dst->data, (const uint4 *)ta->data, h, w, ho, wo, cu, sh, sw, nu);
    } else {
        upsample_nearest_nhwc<T><<<grid_for(n), THREADS, 0, ctx->stream>>>((T *)dst->data, (const T *)ta->data, h, w,
                                                                           ho, wo, c, sh, sw, n);
    }
    CUDA_TRY_LAUNCH();
    return 0;
}

int cuda_op_upsample_nearest(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    if (dst->ip[0]) {
        CUDA_DISPATCH(dst->dtype, upsample_nearest_nhwc_cuda<T>(ctx, dst, err));
    }
    CUDA_DISPATCH(dst->dtype, upsample_nearest_cuda<T>(ctx, dst, err));
}

/* ===== CONCAT along dim ip[0]: per outer index, na elements of a then nb elements of b ===== */

template <typename T>
__global__ void concat(T *y, const T *a, const T *b, int64_t na, int64_t nb, int64_t n) {
    GRID_STRIDE(i, n) {
        int64_t o = i / (na + nb), r = i - o * (na + nb);
        y[i] = r < na ? a[o * na + r] : b[o * nb + (r - na)];
    }
}

template <typename T>
static int concat_cuda(T *y, const T *a, const T *b, int64_t na, int64_t nb, int64_t n, cudaStream_t stream,
                       struct err *err) {
    concat<T><<<grid_for(n), THREADS, 0, stream>>>(y, a, b, na, nb, n);
    CUDA_TRY_LAUNCH();
    return 0;
}

int cuda_op_concat(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *ta = dst->src[0], *tb = dst->src[1];
    int dim = dst->ip[0];
    int64_t inner = 1;
    for (int i = dim + 1; i < dst->ndim; i++) inner *= dst->shape[i];
    int64_t na = ta->shape[dim] * inner, nb = tb->shape[dim] * inner, n = cuda_numel(dst);
    if (n == 0) return 0;
    /* a copy: in 16-byte units when both runs are whole units and every buffer is aligned (the
       UNet's channels-last skip concatenations) */
    int64_t es = (int64_t)dtype_size(dst->dtype);
    if ((na * es) % 16 == 0 && (nb * es) % 16 == 0 && aligned16(dst->data) && aligned16(ta->data) &&
        aligned16(tb->data))
        return concat_cuda<uint4>((uint4 *)dst->data, (const uint4 *)ta->data, (const uint4 *)tb->data, na * es / 16,
                                  nb * es / 16, n * es / 16, ctx->stream, err);
    CUDA_DISPATCH(dst->dtype, concat_cuda<T>((T *)dst->data, (const T *)ta->data, (const T *)tb->data, na, nb, n,
                                             ctx->stream, err));
}

/* ===== GET_ROWS: table [V, C] by ids [n] -> [n, C] =====
 * An id outside [0, V) leaves its row unwritten and records the smallest such position in
 * *bad (initialised to n), which the entry reads back to fail with the CPU's message. */

template <typename T>
__global__ void get_rows(T *y, const T *table, const int32_t *ids, int64_t v, int64_t c, int64_t n,
                         unsigned long long *bad) {
    GRID_STRIDE(i, n * c) {
        int64_t r = i / c, j = i - r * c;
        int32_t id = ids[r];
        if (id < 0 || id >= v) {
            if (j == 0) atomicMin(bad, (unsigned long long)r);
            continue;
        }
        y[i] = table[(int64_t)id * c + j];
    }
}

template <typename T>
static int get_rows_cuda(T *y, const T *table, const int32_t *ids, int64_t v, int64_t c, int64_t n,
                         unsigned long long *bad, cudaStream_t stream, struct err *err) {
    get_rows<T><<<grid_for(n * c), THREADS, 0, stream>>>(y, table, ids, v, c, n, bad);
    CUDA_TRY_LAUNCH();
    return 0;
}

static int get_rows_launch(enum dtype dt, void *y, const void *table, const int32_t *ids, int64_t v, int64_t c,
                           int64_t n, unsigned long long *bad, cudaStream_t stream, struct err *err) {
    CUDA_DISPATCH(dt, get_rows_cuda<T>((T *)y, (const T *)table, ids, v, c, n, bad, stream, err));
}

int cuda_op_get_rows(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *tt = dst->src[0], *ti = dst->src[1];
    int64_t v = tt->shape[0], c = tt->shape[1], n = cuda_numel(ti);
    if (n == 0 || c == 0) return 0;
    int rc = 0;
    unsigned long long *bad = (unsigned long long *)cuda__work(ctx, sizeof *bad, "get_rows", &rc, err);
    if (!bad) return rc;
    unsigned long long host_bad = (unsigned long long)n;
    CUDA_TRY(cudaMemcpyAsync(bad, &host_bad, sizeof host_bad, cudaMemcpyHostToDevice, ctx->stream));
    rc = get_rows_launch(dst->dtype, dst->data, tt->data, (const int32_t *)ti->data, v, c, n, bad, ctx->stream, err);
    if (rc) return rc;
    CUDA_TRY(cudaMemcpyAsync(&host_bad, bad, sizeof host_bad, cudaMemcpyDeviceToHost, ctx->stream));
    CUDA_TRY(cudaStreamSynchronize(ctx->stream));
    if (host_bad < (unsigned long long)n) {
        int32_t id = 0;
        CUDA_TRY(cudaMemcpy(&id, (const int32_t *)ti->data + host_bad, sizeof id, cudaMemcpyDeviceToHost));
        return err_set(err, STATUS_ERR_RANGE, "get_rows: id %d at position %llu is outside the table's %lld rows",
                       (int)id, host_bad, (long long)v);
    }
    return 0;
}

/* ===== CAST: F32 / F16 / BF16 -> F32 / F16 / BF16 through fp32 =====
 * Finite values and infinities go through the hardware conversions (exact widening; narrowing
 * rounds to nearest even, overflows to inf, keeps subnormals). NaNs are rebuilt bit for bit as
 * tensor.c's f16_to_f32 / f32_to_f16 / f32_to_bf16 do (payload kept on widening, quiet bit set
 * on narrowing), since the hardware returns a canonical NaN instead. */

__device__ __forceinline__ float cast_load(float v) { return v; }
__device__ __forceinline__ float cast_load(__nv_bfloat16 v) {
    return __uint_as_float((unsigned)__bfloat16_as_ushort(v) << 16); /* exact, NaN payload too */
}
__device__ __forceinline__ float cast_load(__half v) {
    unsigned h = __half_as_ushort(v);
    if ((h & 0x7c00u) == 0x7c00u && (h & 0x3ffu)) /* NaN: sign, all-ones exponent, payload << 13 */
        return __uint_as_float(((h & 0x8000u) << 16) | 0x7f800000u | ((h & 0x3ffu) << 13));
    return __half2float(v);
}

template <typename D> __device__ __forceinline__ D cast_store(float v);
template <> __device__ __forceinline__ float cast_store<float>(float v) { return v; }
template <> __device__ __forceinline__ __half cast_store<__half>(float v) {
    unsigned x = __float_as_uint(v);
    if ((x & 0x7fffffffu) > 0x7f800000u) return __ushort_as_half((unsigned short)(((x >> 16) & 0x8000u) | 0x7e00u));
    return __float2half_rn(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 cast_store<__nv_bfloat16>(float v) {
    unsigned x = __float_as_uint(v);
    if ((x & 0x7fffffffu) > 0x7f800000u) return __ushort_as_bfloat16((unsigned short)((x >> 16) | 0x40u));
    return __float2bfloat16_rn(v);
}

template <typename S, typename D>
__global__ void cast(D *y, const S *a, int64_t n) {
    GRID_STRIDE(i, n) y[i] = cast_store<D>(cast_load(a[i]));
}

template <typename S, typename D>
static int cast_cuda(void *y, const void *a, int64_t n, cudaStream_t stream, struct err *err) {
    cast<S, D><<<grid_for(n), THREADS, 0, stream>>>((D *)y, (const S *)a, n);
    CUDA_TRY_LAUNCH();
    return 0;
}

/* The destination's switch for one source type S. */
template <typename S>
static int cast_to(enum dtype to, void *y, const void *a, int64_t n, cudaStream_t stream, struct err *err) {
    CUDA_DISPATCH(to, cast_cuda<S, T>(y, a, n, stream, err));
}

int cuda_op_cast(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *ta = dst->src[0];
    int64_t n = cuda_numel(dst);
    if (n == 0) return 0;
    CUDA_DISPATCH(ta->dtype, cast_to<T>(dst->dtype, dst->data, ta->data, n, ctx->stream, err));
}
