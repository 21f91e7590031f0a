/* tensor/cuda/layout.cu -- data movement on CUDA: TRANSPOSE, UPSAMPLE_NEAREST, CONCAT, GET_ROWS.
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

__global__ void transpose_f32(float *y, const float *a, int64_t m, int64_t n) {
    __shared__ float tile[TILE][TILE + 1]; /* +1: no bank conflicts on the column reads */
    int64_t mat = blockIdx.z;
    int64_t i0 = (int64_t)blockIdx.y * TILE, j0 = (int64_t)blockIdx.x * TILE;
    const float *src = a + mat * m * n; /* [m, n] */
    float *out = y + mat * m * n;       /* [n, m] */
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

int cuda_op_transpose(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *ta = dst->src[0];
    int64_t m = ta->shape[ta->ndim - 2], n = ta->shape[ta->ndim - 1];
    if (m * n == 0) return 0;
    int64_t mats = cuda_numel(ta) / (m * n);
    if (mats > 65535 || (m + TILE - 1) / TILE > 65535)
        return err_set(err, STATUS_ERR_UNSUPPORTED, "cuda transpose: %lld matrices of %lld x %lld exceed the grid",
                       (long long)mats, (long long)m, (long long)n);
    dim3 grid((unsigned)((n + TILE - 1) / TILE), (unsigned)((m + TILE - 1) / TILE), (unsigned)mats);
    transpose_f32<<<grid, dim3(TILE, 8), 0, ctx->stream>>>((float *)dst->data, (const float *)ta->data, m, n);
    CUDA_TRY_LAUNCH();
    return 0;
}

/* ===== UPSAMPLE_NEAREST: [B, C, h, w] -> [B, C, ho, wo], torch's "nearest" ===== */

__global__ void upsample_nearest_f32(float *y, const float *a, int64_t planes, int64_t h, int64_t w, int64_t ho,
                                     int64_t wo, float sh, float sw, int64_t n) {
    GRID_STRIDE(i, n) {
        int64_t ox = i % wo, oy = (i / wo) % ho, p = i / (wo * ho);
        /* src = min(floor(dst * (in / out)), in - 1), in float as the CPU and torch do */
        int64_t iy = (int64_t)floorf((float)oy * sh), ix = (int64_t)floorf((float)ox * sw);
        if (iy > h - 1) iy = h - 1;
        if (ix > w - 1) ix = w - 1;
        y[i] = a[(p * h + iy) * w + ix];
    }
}

int cuda_op_upsample_nearest(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *ta = dst->src[0];
    int64_t h = ta->shape[2], w = ta->shape[3], ho = dst->shape[2], wo = dst->shape[3];
    int64_t n = cuda_numel(dst);
    if (n == 0) return 0;
    /* an integer factor f maps exactly to floor(o / f); the float formula gives the same */
    upsample_nearest_f32<<<grid_for(n), THREADS, 0, ctx->stream>>>((float *)dst->data, (const float *)ta->data,
                                                                   ta->shape[0] * ta->shape[1], h, w, ho, wo,
                                                                   (float)h / (float)ho, (float)w / (float)wo, n);
    CUDA_TRY_LAUNCH();
    return 0;
}

/* ===== CONCAT along dim ip[0]: per outer index, na floats of a then nb floats of b ===== */

__global__ void concat_f32(float *y, const float *a, const float *b, int64_t na, int64_t nb, int64_t n) {
    GRID_STRIDE(i, n) {
        int64_t o = i / (na + nb), r = i - o * (na + nb);
        y[i] = r < na ? a[o * na + r] : b[o * nb + (r - na)];
    }
}

int cuda_op_concat(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *ta = dst->src[0], *tb = dst->src[1];
    int dim = dst->ip[0];
    int64_t inner = 1;
    for (int i = dim + 1; i < dst->ndim; i++) inner *= dst->shape[i];
    int64_t na = ta->shape[dim] * inner, nb = tb->shape[dim] * inner, n = cuda_numel(dst);
    if (n == 0) return 0;
    concat_f32<<<grid_for(n), THREADS, 0, ctx->stream>>>((float *)dst->data, (const float *)ta->data,
                                                         (const float *)tb->data, na, nb, n);
    CUDA_TRY_LAUNCH();
    return 0;
}

/* ===== GET_ROWS: table [V, C] by ids [n] -> [n, C] =====
 * An id outside [0, V) leaves its row unwritten and records the smallest such position in
 * *bad (initialised to n), which the entry reads back to fail with the CPU's message. */

__global__ void get_rows_f32(float *y, const float *table, const int32_t *ids, int64_t v, int64_t c, int64_t n,
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

int cuda_op_get_rows(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *tt = dst->src[0], *ti = dst->src[1];
    int64_t v = tt->shape[0], c = tt->shape[1], n = cuda_numel(ti);
    if (n == 0 || c == 0) return 0;
    int rc = 0;
    unsigned long long *bad = (unsigned long long *)cuda__work(ctx, sizeof *bad, "get_rows", &rc, err);
    if (!bad) return rc;
    unsigned long long host_bad = (unsigned long long)n;
    CUDA_TRY(cudaMemcpyAsync(bad, &host_bad, sizeof host_bad, cudaMemcpyHostToDevice, ctx->stream));
    get_rows_f32<<<grid_for(n * c), THREADS, 0, ctx->stream>>>((float *)dst->data, (const float *)tt->data,
                                                               (const int32_t *)ti->data, v, c, n, bad);
    CUDA_TRY_LAUNCH();
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
