/* tensor/cuda/conv.cu -- CONV2D on CUDA: im2col into the ctx scratch, then one cuBLAS gemm.
 * Owns: nothing; borrows ctx->work for the column matrix.
 * Threads: the backend's worker; kernels and products on ctx->stream.
 * Per image, y [O, P] = w [O, CK] x col [CK, P] (P = Ho * Wo output positions, CK = C kh kw).
 * The column matrix holds the storage type T (a copy of x's elements, no rounding) and the
 * products go through cuda__gemm (fp32 accumulation; F16/BF16 on tensor cores). Positions are
 * taken in chunks so the column matrix stays under CONV_WORK_MAX bytes; a 1x1 conv with stride 1
 * and no padding reads x directly. Zero padding on each side (ip[1..4]). Bias: y is filled
 * with b first and every product added with beta = 1, so each output is rounded once.
 * Later (issue 4): cuDNN or an implicit-GEMM kernel. */
#include "tensor/cuda/cuda.cuh"

#include <limits.h>

#define THREADS 256
#define MAX_GRID (65535u * 8u)
#define CONV_WORK_MAX ((size_t)256 << 20) /* bytes of column matrix per chunk */

static unsigned grid_for(int64_t n) {
    unsigned g = cuda_blocks(n, THREADS);
    return g < MAX_GRID ? (g ? g : 1) : MAX_GRID;
}

struct conv_geom {
    int64_t c, h, w;      /* input channels and size */
    int64_t kh, kw;       /* kernel */
    int64_t ho, wo;       /* output size */
    int64_t stride;       /* both directions */
    int64_t pt, pl;       /* padding top, left (bottom/right are implied by ho, wo) */
};

/* col [CK, np] (row-major) = patches of x [C, H, W] for output positions p0 .. p0+np */
template <typename T>
__global__ void im2col(T *col, const T *x, struct conv_geom g, int64_t p0, int64_t np, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / np, j = i - r * np, p = p0 + j;
        int64_t oy = p / g.wo, ox = p - oy * g.wo;
        int64_t kx = r % g.kw, ky = (r / g.kw) % g.kh, ch = r / (g.kw * g.kh);
        int64_t iy = oy * g.stride - g.pt + ky, ix = ox * g.stride - g.pl + kx;
        col[i] = (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w) ? x[(ch * g.h + iy) * g.w + ix] : cuda_from_f32<T>(0.0f);
    }
}

template <typename T>
static int im2col_cuda(T *col, const T *x, const struct conv_geom *g, int64_t p0, int64_t np, cudaStream_t stream,
                       struct err *err) {
    int64_t n = g->c * g->kh * g->kw * np;
    im2col<T><<<grid_for(n), THREADS, 0, stream>>>(col, x, *g, p0, np, n);
    CUDA_TRY_LAUNCH();
    return 0;
}

/* y [B, O, P] = b[O] (the products are added to it) */
template <typename T>
__global__ void conv_fill_bias(T *y, const T *b, int64_t o, int64_t p, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = b[(i / p) % o];
}

template <typename T>
static int conv_fill_bias_cuda(T *y, const T *b, int64_t o, int64_t p, int64_t n, cudaStream_t stream,
                               struct err *err) {
    conv_fill_bias<T><<<grid_for(n), THREADS, 0, stream>>>(y, b, o, p, n);
    CUDA_TRY_LAUNCH();
    return 0;
}

template <typename T>
static int conv2d_cuda(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *tx = dst->src[0], *tw = dst->src[1], *tb = dst->src[2];
    struct conv_geom g = {tx->shape[1], tx->shape[2], tx->shape[3], tw->shape[2], tw->shape[3],
                          dst->shape[2], dst->shape[3], dst->ip[0], dst->ip[1], dst->ip[2]};
    int64_t nb = tx->shape[0], o = tw->shape[0], p = g.ho * g.wo, ck = g.c * g.kh * g.kw;
    if (nb * o * p == 0) return 0;
    if (p > INT_MAX || ck > INT_MAX || o > INT_MAX)
        return err_set(err, STATUS_ERR_UNSUPPORTED, "cuda conv2d: sizes exceed cuBLAS's int range");
    const T *x = (const T *)tx->data, *w = (const T *)tw->data;
    T *y = (T *)dst->data;
    enum dtype dt = dst->dtype;
    bool direct = g.kh == 1 && g.kw == 1 && g.stride == 1 && g.pt == 0 && g.pl == 0 && g.ho == g.h && g.wo == g.w;

    int64_t chunk = p;
    T *col = NULL;
    if (!direct) {
        size_t per_pos = (size_t)ck * sizeof(T);
        if ((size_t)chunk * per_pos > CONV_WORK_MAX) chunk = (int64_t)(CONV_WORK_MAX / per_pos);
        if (chunk < 1) chunk = 1;
        int rc = 0;
        col = (T *)cuda__work(ctx, (size_t)chunk * per_pos, "conv2d im2col", &rc, err);
        if (!col) return rc;
    }
    float beta = 0.0f;
    if (tb) {
        int rc = conv_fill_bias_cuda<T>(y, (const T *)tb->data, o, p, nb * o * p, ctx->stream, err);
        if (rc) return rc;
        beta = 1.0f;
    }
    for (int64_t img = 0; img < nb; img++) {
        const T *xi = x + img * g.c * g.h * g.w;
        T *yi = y + img * o * p;
        if (direct) { /* column-major: y^T [P, O] = x^T [P, C] . w^T [C, O] */
            int rc = cuda__gemm(ctx, dt, false, false, (int)p, (int)o, (int)ck, xi, (int)p, w, (int)ck, beta, yi,
                                (int)p, err);
            if (rc) return rc;
            continue;
        }
        for (int64_t p0 = 0; p0 < p; p0 += chunk) {
            int64_t np = p - p0 < chunk ? p - p0 : chunk;
            int rc = im2col_cuda<T>(col, xi, &g, p0, np, ctx->stream, err);
            if (rc) return rc;
            /* column-major: y^T[p0.., O] (ld P) = col^T [np, CK] (ld np) . w^T [CK, O] (ld CK) */
            rc = cuda__gemm(ctx, dt, false, false, (int)np, (int)o, (int)ck, col, (int)np, w, (int)ck, beta, yi + p0,
                            (int)p, err);
            if (rc) return rc;
        }
    }
    return 0;
}

int cuda_op_conv2d(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    CUDA_DISPATCH(dst->dtype, conv2d_cuda<T>(ctx, dst, err));
}
