/* tensor/cuda/attention.cu -- ATTENTION on CUDA, by two paths that never hold the whole score
 * matrix: (1) for large products, blocks of queries through cuBLAS (scores of one query block
 * for all keys and heads in the ctx scratch, a row softmax kernel, a second product); (2) for
 * small ones, one fused kernel with an online softmax over 32-key tiles.
 * q, k, v and the output share one storage type T (float, __half, __nv_bfloat16); scores,
 * the softmax and every accumulation are fp32.
 * Owns: nothing; borrows ctx->work for the score block. Threads: the backend's worker.
 * DESIGN (2). A block of ATT_WARPS warps takes ATT_WARPS consecutive queries of one (image, head);
 * it walks the keys in tiles of 32, staging k and v of the tile in shared memory. In a warp,
 * lane j scores key j of the tile against the warp's query; the warp then takes the tile's
 * max and sum with shuffles, rescales its running sum and output (flash-attention's online
 * softmax), and adds p_j v_j, each lane owning d/32 of the output's channels. q, k and v are
 * widened to fp32 as they are staged (shared memory is fp32); the output is rounded to T.
 * DESIGN (1). Per image and block of bq queries: S_h = scale Q_h K_h^T for every head h in one
 * strided-batched gemm (heads are column slices of [N, C] rows: stride d, leading dim C),
 * softmax of each row of S (causal keys masked) into P, then O_h = P_h V_h, written straight
 * into the output's column slice. S is always fp32. For F32, P is S itself (softmax in place,
 * cublasSgemmStridedBatched as before); for F16/BF16 the products are
 * cublasGemmStridedBatchedEx with CUBLAS_COMPUTE_32F (Q, K in T -> S fp32; P, V in T -> O in
 * T) and P is a second buffer of T after S. bq is sized so S and P fit ATT_WORK_MAX together.
 * F16/BF16 go first to cuDNN's fused attention where it takes them (attention_dnn.cu: non-causal,
 * d a multiple of 8; faster on Hopper). Others with heads of up to CUDA_FLASH_DMAX (256) channels
 * take neither (1) nor (2): they go to the
 * tensor-core flash kernel of attention_flash.cu (mma.sync, online softmax, no scratch); the
 * two paths above remain for F32 (exact to 1e-5), the VAE's d = 512 and devices before sm_80. */
#include "tensor/cuda/attention_flash.cuh"
#include "tensor/cuda/cuda.cuh"

#include <limits.h>
#include <math.h>

#define ATT_WARPS 8 /* queries per block */
#define ATT_KEYS 32 /* keys per tile: one per lane */
#define ATT_DMAX 512 /* largest head size (the SD VAE's one head of 512): 16 channels per lane */

/* DPL: output channels per lane (d <= 32 DPL); one instance per head-size class. */
template <typename T, int DPL>
__global__ void attention_warp(T *out, const T *q, const T *k, const T *v, int64_t nq, int64_t nk, int64_t c, int d,
                               float scale, int causal) {
    extern __shared__ float smem[];
    const int ds = d + 1; /* padded row: lanes reading one channel of 32 rows hit 32 banks */
    float *ks = smem;                        /* [ATT_KEYS][ds] */
    float *vs = ks + ATT_KEYS * ds;          /* [ATT_KEYS][ds] */
    float *qs = vs + ATT_KEYS * ds;          /* [ATT_WARPS][d] */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t b = blockIdx.z, h = blockIdx.y;
    const int64_t q0 = (int64_t)blockIdx.x * ATT_WARPS, qi = q0 + warp;
    const bool active = qi < nq;
    float *qw = qs + warp * d;
    for (int t = lane; t < d; t += 32) qw[t] = active ? cuda_to_f32(q[(b * nq + qi) * c + h * d + t]) * scale : 0.0f;

    float m = -INFINITY, l = 0.0f, acc[DPL];
    for (int t = 0; t < DPL; t++) acc[t] = 0.0f;

    int64_t kend = nk;
    if (causal) { /* the block's last query sees keys 0 .. q0 + ATT_WARPS - 1 */
        int64_t last = q0 + ATT_WARPS;
        if (last < kend) kend = last;
    }
    for (int64_t k0 = 0; k0 < kend; k0 += ATT_KEYS) {
        __syncthreads(); /* the previous tile is no longer read; qs is written */
        for (int i = threadIdx.x; i < ATT_KEYS * d; i += blockDim.x) {
            int j = i / d, t = i - j * d;
            int64_t key = k0 + j;
            bool in = key < nk;
            ks[j * ds + t] = in ? cuda_to_f32(k[(b * nk + key) * c + h * d + t]) : 0.0f;
            vs[j * ds + t] = in ? cuda_to_f32(v[(b * nk + key) * c + h * d + t]) : 0.0f;
        }
        __syncthreads();
        /* lane j: score of key k0 + j */
        int64_t key = k0 + lane;
        bool valid = active && key < nk && (!causal || key <= qi);
        float s = -INFINITY;
        if (valid) {
            float dot = 0.0f;
            const float *kr = ks + lane * ds;
            for (int t = 0; t < d; t++) dot = fmaf(qw[t], kr[t], dot);
            s = dot;
        }
        float bm = s;
        for (int o = 16; o > 0; o >>= 1) bm = fmaxf(bm, __shfl_xor_sync(0xffffffffu, bm, o));
        if (bm == -INFINITY) continue; /* nothing visible in this tile for this query (warp-uniform) */
        float mn = fmaxf(m, bm);
        float p = valid ? expf(s - mn) : 0.0f;
        float corr = expf(m - mn); /* 0 on the first visible tile (m = -inf) */
        float ps = p;
        for (int o = 16; o > 0; o >>= 1) ps += __shfl_xor_sync(0xffffffffu, ps, o);
        l = l * corr + ps;
        for (int t = 0; t < DPL; t++) acc[t] *= corr;
        for (int j = 0; j < ATT_KEYS; j++) {
            float pj = __shfl_sync(0xffffffffu, p, j);
            const float *vr = vs + j * ds;
            for (int t = 0; t < DPL; t++) {
                int ch = lane + 32 * t;
                if (ch < d) acc[t] = fmaf(pj, vr[ch], acc[t]);
            }
        }
        m = mn;
    }
    if (!active) return;
    float inv = l > 0.0f ? 1.0f / l : 0.0f;
    T *o = out + (b * nq + qi) * c + h * d;
    for (int t = 0; t < DPL; t++) {
        int ch = lane + 32 * t;
        if (ch < d) o[ch] = cuda_from_f32<T>(acc[t] * inv);
    }
}

template <typename T, int DPL>
static int attention_launch(T *out, const T *q, const T *k, const T *v, int64_t nb, int64_t nq, int64_t nk,
                            int64_t c, int heads, int d, bool causal, cudaStream_t stream, struct err *err) {
    /* k and v tiles with padded rows, plus one query per warp */
    size_t smem = (size_t)(2 * ATT_KEYS * (d + 1) + ATT_WARPS * d) * sizeof(float);
    if (smem > 48 * 1024)
        CUDA_TRY(cudaFuncSetAttribute(attention_warp<T, DPL>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    dim3 grid((unsigned)((nq + ATT_WARPS - 1) / ATT_WARPS), (unsigned)heads, (unsigned)nb);
    attention_warp<T, DPL><<<grid, ATT_WARPS * 32, smem, stream>>>(out, q, k, v, nq, nk, c, d,
                                                                   1.0f / sqrtf((float)d), causal ? 1 : 0);
    CUDA_TRY_LAUNCH();
    return 0;
}

template <typename T>
static int attention_warp_cuda(T *out, const T *q, const T *k, const T *v, int64_t nb, int64_t nq, int64_t nk,
                               int64_t c, int heads, bool causal, cudaStream_t stream, struct err *err) {
    int d = (int)(c / heads);
    if (d > ATT_DMAX)
        return err_set(err, STATUS_ERR_UNSUPPORTED, "cuda attention: head size %d above %d", d, ATT_DMAX);
    if (nb > 65535 || heads > 65535 || (nq + ATT_WARPS - 1) / ATT_WARPS > 0x7fffffff)
        return err_set(err, STATUS_ERR_UNSUPPORTED, "cuda attention: %lld images x %d heads exceed the grid",
                       (long long)nb, heads);
    if (d <= 32) return attention_launch<T, 1>(out, q, k, v, nb, nq, nk, c, heads, d, causal, stream, err);
    if (d <= 64) return attention_launch<T, 2>(out, q, k, v, nb, nq, nk, c, heads, d, causal, stream, err);
    if (d <= 128) return attention_launch<T, 4>(out, q, k, v, nb, nq, nk, c, heads, d, causal, stream, err);
    if (d <= 256) return attention_launch<T, 8>(out, q, k, v, nb, nq, nk, c, heads, d, causal, stream, err);
    return attention_launch<T, 16>(out, q, k, v, nb, nq, nk, c, heads, d, causal, stream, err);
}

/* ===== Path (1): query blocks through cuBLAS ===== */

#define ATT_WORK_MAX ((size_t)256 << 20) /* bytes of one score block (all heads): S, plus P if apart */
#define ATT_SMAX_THREADS 256

/* Rows of s [rows, nk] -> softmax into p [rows, nk] (p may be s itself: F32). Row r is query
 * q0 + (r % bq) of its head; with causal, keys past the query are masked (probability 0).
 * s is overwritten with the unnormalised exponentials on the way. */
template <typename P>
__global__ void softmax_rows(float *s, P *p, int64_t nk, int64_t bq, int64_t q0, int causal) {
    __shared__ float red[32];
    float *row = s + (int64_t)blockIdx.x * nk;
    P *prow = p + (int64_t)blockIdx.x * nk;
    int64_t qi = q0 + blockIdx.x % bq;
    int64_t kend = causal ? (qi + 1 < nk ? qi + 1 : nk) : nk;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < kend; j += blockDim.x) m = fmaxf(m, row[j]);
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (lane == 0) red[warp] = m;
    __syncthreads();
    m = red[0];
    for (int w = 1; w < nw; w++) m = fmaxf(m, red[w]);
    __syncthreads();
    float sum = 0.0f;
    for (int64_t j = threadIdx.x; j < nk; j += blockDim.x) {
        float e = j < kend ? expf(row[j] - m) : 0.0f;
        row[j] = e;
        sum += e;
    }
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (lane == 0) red[warp] = sum;
    __syncthreads();
    sum = 0.0f;
    for (int w = 0; w < nw; w++) sum += red[w];
    float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    /* each thread rewrites only the elements it wrote above, so p == s (in place) is safe */
    for (int64_t j = threadIdx.x; j < nk; j += blockDim.x) prow[j] = cuda_from_f32<P>(row[j] * inv);
}

template <typename P>
static int softmax_rows_cuda(float *s, P *p, int64_t rows, int64_t nk, int64_t bq, int64_t q0, bool causal,
                             cudaStream_t stream, struct err *err) {
    softmax_rows<P><<<(unsigned)rows, ATT_SMAX_THREADS, 0, stream>>>(s, p, nk, bq, q0, causal ? 1 : 0);
    CUDA_TRY_LAUNCH();
    return 0;
}

/* Column-major strided-batched C_i = alpha op(A_i) B_i (beta 0) over `batch` heads: A and B of
 * dtype ab, C of dtype cd, fp32 accumulation. All-F32 is cublasSgemmStridedBatched (the
 * handle's math mode decides TF32, as for LINEAR); else cublasGemmStridedBatchedEx. */
static int gemm_batched(struct cuda_ctx *ctx, enum dtype ab, enum dtype cd, bool ta, int m, int n, int k,
                        float alpha, const void *a, int lda, long long sa, const void *b, int ldb, long long sb,
                        void *c, int ldc, long long sc, int batch, struct err *err) {
    const float zero = 0.0f;
    cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (ab == DTYPE_F32 && cd == DTYPE_F32) {
        CUBLAS_TRY(cublasSgemmStridedBatched(ctx->cublas, opa, CUBLAS_OP_N, m, n, k, &alpha, (const float *)a, lda, sa,
                                             (const float *)b, ldb, sb, &zero, (float *)c, ldc, sc, batch));
        return 0;
    }
    CUBLAS_TRY(cublasGemmStridedBatchedEx(ctx->cublas, opa, CUBLAS_OP_N, m, n, k, &alpha, a, cuda_data_type(ab), lda,
                                          sa, b, cuda_data_type(ab), ldb, sb, &zero, c, cuda_data_type(cd), ldc, sc,
                                          batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return 0;
}

template <typename T>
static int attention_blas(struct cuda_ctx *ctx, enum dtype dt, T *out, const T *q, const T *k, const T *v,
                          int64_t nb, int64_t nq, int64_t nk, int64_t c, int heads, bool causal, struct err *err) {
    int64_t d = c / heads;
    bool apart = dt != DTYPE_F32; /* P in its own buffer of T (F32: P is S, softmax in place) */
    size_t per_q = (size_t)heads * (size_t)nk * (sizeof(float) + (apart ? sizeof(T) : 0)); /* bytes per query */
    int64_t bq = (int64_t)(ATT_WORK_MAX / per_q);
    if (bq > nq) bq = nq;
    if (bq < 1) bq = 1;
    size_t s_bytes = (size_t)heads * (size_t)bq * (size_t)nk * sizeof(float);
    size_t p_off = (s_bytes + 255) & ~(size_t)255; /* P starts 256-byte aligned, for cuBLAS */
    size_t work = apart ? p_off + (size_t)heads * (size_t)bq * (size_t)nk * sizeof(T) : s_bytes;
    int rc = 0;
    char *buf = (char *)cuda__work(ctx, work, "attention scores", &rc, err);
    if (!buf) return rc;
    float *sc = (float *)buf;
    T *pr = (T *)(apart ? buf + p_off : buf); /* !apart: T is float and P aliases S */
    const float scale = 1.0f / sqrtf((float)d);
    for (int64_t img = 0; img < nb; img++) {
        const T *qi = q + img * nq * c, *ki = k + img * nk * c, *vi = v + img * nk * c;
        T *oi = out + img * nq * c;
        for (int64_t q0 = 0; q0 < nq; q0 += bq) {
            int64_t n = nq - q0 < bq ? nq - q0 : bq;
            /* column-major: S_h^T [nk, n] (ld nk) = (K_h as [d, nk], ld C)^T . (Q_h as [d, n], ld C) */
            rc = gemm_batched(ctx, dt, DTYPE_F32, true, (int)nk, (int)n, (int)d, scale, ki, (int)c, d, qi + q0 * c,
                              (int)c, d, sc, (int)nk, n * nk, heads, err);
            if (rc) return rc;
            rc = softmax_rows_cuda<T>(sc, pr, heads * n, nk, n, q0, causal, ctx->stream, err);
            if (rc) return rc;
            /* column-major: O_h^T [d, n] (ld C) = (V_h as [d, nk], ld C) . (P_h^T as [nk, n], ld nk) */
            rc = gemm_batched(ctx, dt, dt, false, (int)d, (int)n, (int)nk, 1.0f, vi, (int)c, d, pr, (int)nk, n * nk,
                              oi + q0 * c, (int)c, d, heads, err);
            if (rc) return rc;
        }
    }
    return 0;
}

/* Products of at least this many query-key pairs per image and head take path (1). */
#define ATT_BLAS_MIN ((int64_t)64 * 1024)

template <typename T>
static int attention_entry(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *tq = dst->src[0], *tk = dst->src[1], *tv = dst->src[2];
    int64_t nb = tq->shape[0], nq = tq->shape[1], nk = tk->shape[1], c = tq->shape[2];
    int heads = dst->ip[0];
    bool causal = dst->ip[1] != 0;
    if (nb * nq * c == 0) return 0;
    T *out = (T *)dst->data;
    const T *q = (const T *)tq->data, *k = (const T *)tk->data, *v = (const T *)tv->data;
#ifdef KILN_HAVE_CUDNN
    int rc = cuda__attention_dnn(ctx, dst->dtype, out, q, k, v, nb, nq, nk, c, heads, causal, err);
    if (rc <= 0) return rc; /* done, or failed; 1: cuDNN does not take it */
#endif
    if (nb <= 65535 && heads <= 65535 && cuda__attention_flash_covers(ctx, dst->dtype, (int)(c / heads)))
        return cuda__attention_flash(ctx, dst->dtype, out, q, k, v, nb, nq, nk, c, heads, causal, err);
    if (nq * nk >= ATT_BLAS_MIN && nq <= INT_MAX && nk <= INT_MAX && c <= INT_MAX)
        return attention_blas<T>(ctx, dst->dtype, out, q, k, v, nb, nq, nk, c, heads, causal, err);
    return attention_warp_cuda<T>(out, q, k, v, nb, nq, nk, c, heads, causal, ctx->stream, err);
}

int cuda_op_attention(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    CUDA_DISPATCH(dst->dtype, attention_entry<T>(ctx, dst, err));
}
