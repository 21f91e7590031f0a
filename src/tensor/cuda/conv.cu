/* tensor/cuda/conv.cu -- CONV2D on CUDA: cuDNN when it can, else im2col + one cuBLAS gemm.
 * Owns: the ctx's conv plan table (cuDNN descriptors and the chosen algorithm per distinct
 * shape and dtype; freed by cuda__conv_plans_free from cuda_free) and the algorithm files it
 * writes under <cache>/cudnn-conv (ALGORITHMS KEPT ON DISK); borrows ctx->work for the column
 * matrix and cuDNN's workspace.
 * Threads: the backend's worker; kernels, products and cuDNN calls on ctx->stream.
 * CUDNN (built with KILN_HAVE_CUDNN, ctx->cudnn set; docs/DECISIONS.md "Convolutions on cuDNN"):
 * legacy API, NCHW tensors and an [O, C, kh, kw] filter as stored, cross-correlation, compute
 * type fp32 (fp32 accumulation); tensor-op math for F16/BF16, FMA math for F32 (no TF32). The
 * first call of each (shape, dtype) asks cuDNN's heuristics (or times the algorithms with
 * KILN_CUDNN=find: cudnnFind...Ex) and keeps the best of the GEMM family (no FFT,
 * no Winograd: they change the arithmetic), deterministic first, workspace <= CONV_DNN_WORK_MAX;
 * the plan is kept in the ctx, and the heuristics' answer on disk for later runs. Asymmetric
 * padding, sizes past int, or no algorithm (CUDNN_STATUS_NOT_SUPPORTED*) take the im2col path;
 * 1x1 stride-1 convolutions take the direct GEMM path, and so do images of at most
 * ctx->conv_small_p positions (im2col first): there cuDNN's kernels were slow. Both do every image
 * of the batch in one strided-batched cuBLAS product when the columns fit CONV_WORK_MAX.
 * IM2COL: per image, y [O, P] = w [O, CK] x col [CK, P] (P = Ho * Wo output positions, CK = C
 * kh kw). The column matrix holds the storage type T (a copy of x's elements, no rounding) and
 * the products go through cuda__gemm (fp32 accumulation; F16/BF16 on tensor cores). Positions
 * are taken in chunks so the column matrix stays under CONV_WORK_MAX bytes; a 1x1 conv with
 * stride 1 and no padding reads x directly. Zero padding on each side (ip[1..4]).
 * Bias (both paths): y is filled with b first and the convolution added with beta = 1. A fused
 * residual (src[3], op_add_fused) is added to that fill, except where cuDNN computes conv + r + b
 * in one call (FUSED RESIDUAL, below).
 * CHANNELS LAST (ip[5]; x [B, H, W, C], w [O, kh, kw, C], y [B, Ho, Wo, O]): cuDNN with NHWC
 * descriptors (its tensor-core kernels' native layout: NCHW costs a transpose in and out of
 * every call, 2.8x the time of one UNet's convolutions at batch 2 on the H100, bench/
 * conv_layout.cu), plans keyed by layout too; 1x1 unpadded stride-1 convs, inputs of fewer than 8
 * channels and the fallback are one product per chunk of positions over the whole batch,
 * y [P, O] = col [P, K] . w [O, K]^T. */
#include "tensor/cuda/cuda.cuh"

#include <limits.h>
#include <stdlib.h>

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

/* y [B, O, P] = b[O] + r (either may be NULL; the products are added to it). NHWC: p = 1. */
template <typename T>
__global__ void conv_fill_bias(T *y, const T *b, const T *r, int64_t o, int64_t p, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float v = b ? cuda_to_f32(b[(i / p) % o]) : 0.0f;
        if (r) v += cuda_to_f32(r[i]);
        y[i] = cuda_from_f32<T>(v);
    }
}

/* The start of dst's y for the products' beta = 1 (bias and/or residual, op_add_fused), or
 * nothing when it has neither: *beta is then 0. p: positions per channel plane (1 for NHWC). */
template <typename T>
static int conv_fill_bias_cuda(const struct tensor *dst, int64_t o, int64_t p, float *beta, cudaStream_t stream,
                               struct err *err) {
    const T *b = dst->src[2] ? (const T *)dst->src[2]->data : NULL;
    const T *r = dst->src[3] ? (const T *)dst->src[3]->data : NULL;
    int64_t n = cuda_numel(dst);
    *beta = b || r ? 1.0f : 0.0f;
    if (!b && !r) return 0;
    conv_fill_bias<T><<<grid_for(n), THREADS, 0, stream>>>((T *)dst->data, b, r, o, p, n);
    CUDA_TRY_LAUNCH();
    return 0;
}


/* The error of a convolution whose sizes pass cuBLAS's int range (names its shapes). */
static int conv_too_large(const struct tensor *dst, struct err *err) {
    char x[64], w[64];
    return err_set(err, STATUS_ERR_UNSUPPORTED, "cuda conv2d: x %s * w %s exceeds cuBLAS's int sizes",
                   tensor_shape_str(dst->src[0], x, sizeof x), tensor_shape_str(dst->src[1], w, sizeof w));
}

/* ===== cuDNN ===== */
#ifdef KILN_HAVE_CUDNN

extern "C" {
#include "base/clock.h"
#include "base/log.h"
#include "base/mem.h"
}

#include <stdio.h>
#include <string.h>

#define CONV_DNN_WORK_MAX ((size_t)256 << 20) /* bytes of workspace a cuDNN algorithm may ask for */
#define CONV_PLAN_KEY 12                      /* ints in a plan's key */

struct cuda_conv_plan {
    int key[CONV_PLAN_KEY];             /* n, c, h, w, o, kh, kw, stride, pad_h, pad_w, dtype, nhwc */
    bool usable;                        /* false: cuDNN has no algorithm for it (im2col) */
    cudnnTensorDescriptor_t xd, yd;     /* x [n, c, h, w], y [n, o, ho, wo]: NCHW or NHWC, packed */
    cudnnFilterDescriptor_t wd;         /* w [o, c, kh, kw] (NCHW) or [o, kh, kw, c] (NHWC) */
    cudnnConvolutionDescriptor_t cd;    /* padding, stride, fp32 compute, the algorithm's math type */
    cudnnConvolutionFwdAlgo_t algo;     /* the chosen algorithm */
    size_t ws;                          /* bytes of workspace algo needs (0: none) */
    /* FUSED RESIDUAL: y = conv + r + b in one cuDNN call (made at the first such call) */
    cudnnTensorDescriptor_t bd;         /* b [1, o, 1, 1] in the plan's layout and type */
    cudnnActivationDescriptor_t ad;     /* identity */
    int fused;                          /* 0 not tried, 1 works, -1 refused: fill + conv instead */
    int z_unread;                       /* bias only (alpha2 = 0, z = y): 0 not checked yet, 1 cuDNN
                                           does not read z, -1 it does (fill + conv instead) */
};

static void plan_deinit(struct cuda_conv_plan *p) {
    if (p->bd) cudnnDestroyTensorDescriptor(p->bd);
    if (p->ad) cudnnDestroyActivationDescriptor(p->ad);
    if (p->xd) cudnnDestroyTensorDescriptor(p->xd);
    if (p->yd) cudnnDestroyTensorDescriptor(p->yd);
    if (p->wd) cudnnDestroyFilterDescriptor(p->wd);
    if (p->cd) cudnnDestroyConvolutionDescriptor(p->cd);
    memset(p, 0, sizeof *p);
}

void cuda__conv_plans_free(struct cuda_ctx *ctx) {
    for (int i = 0; i < ctx->n_conv_plans; i++) plan_deinit(&ctx->conv_plans[i]);
    mem_free(ctx->conv_plans);
    ctx->conv_plans = NULL;
    ctx->n_conv_plans = ctx->cap_conv_plans = 0;
}

static cudnnDataType_t dnn_type(enum dtype t) {
    return t == DTYPE_F16 ? CUDNN_DATA_HALF : t == DTYPE_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
}

static const char *dnn_algo_name(cudnnConvolutionFwdAlgo_t a) {
    switch (a) {
    case CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM: return "implicit_gemm";
    case CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM: return "implicit_precomp_gemm";
    case CUDNN_CONVOLUTION_FWD_ALGO_GEMM: return "gemm";
    case CUDNN_CONVOLUTION_FWD_ALGO_DIRECT: return "direct";
    case CUDNN_CONVOLUTION_FWD_ALGO_FFT: return "fft";
    case CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING: return "fft_tiling";
    case CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD: return "winograd";
    case CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED: return "winograd_nonfused";
    default: return "?";
    }
}

/* The GEMM family computes plain fp32 dot products; FFT and Winograd transform the operands
 * (rounding in between, worse in F16) and want large workspaces. */
static bool dnn_algo_allowed(cudnnConvolutionFwdAlgo_t a) {
    return a == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM || a == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM ||
           a == CUDNN_CONVOLUTION_FWD_ALGO_GEMM || a == CUDNN_CONVOLUTION_FWD_ALGO_DIRECT;
}

/* True if perf (one entry of a heuristics or timing answer) may be used for dtype dt (pass 0:
 * deterministic ones only, pass 1: any). F32 takes FMA math only: no TF32. */
static bool dnn_candidate(const cudnnConvolutionFwdAlgoPerf_t *perf, enum dtype dt, int pass) {
    if (perf->status != CUDNN_STATUS_SUCCESS || !dnn_algo_allowed(perf->algo)) return false;
    if (perf->memory > CONV_DNN_WORK_MAX) return false;
    if (dt == DTYPE_F32 && perf->mathType != CUDNN_FMA_MATH) return false;
    return pass == 1 || perf->determinism == CUDNN_DETERMINISTIC;
}

#define CONV_DNN_MAX_PERF 64 /* entries asked of the heuristics / timing */

/* ===== Algorithms kept on disk (ALGORITHMS KEPT ON DISK) =====
 * The heuristics query takes 3-5 ms per new shape (cuDNN 9.14, H100): ~0.1 s of a first prompt's
 * first UNet evaluation and VAE decode (29 shapes at 512x512). The algorithm and math type it
 * led to are kept in <cache>/cudnn-conv/<tag>-<key>.txt (plan_cache.cu: the same folder and
 * tag as attention_dnn.cu's plans) and read back by later runs, which then only ask for the
 * workspace size: the same algorithm as the query gives on the same cuDNN, driver and GPU.
 * Timed choices (KILN_CUDNN=find) are neither read nor kept. */

/* The file name of key k's choice (after the cache's tag) and the key in words (its first line). */
static void conv_names(const int *k, char *name, size_t nn, char *what, size_t nw) {
    snprintf(name, nn, "%s-%dx%dx%dx%d-%dx%dx%d-s%dp%dx%d-%s.txt", k[11] ? "nhwc" : "nchw", k[0], k[1], k[2], k[3], k[4],
             k[5], k[6], k[7], k[8], k[9], dtype_name((enum dtype)k[10]));
    int w = 0;
    for (int i = 0; i < CONV_PLAN_KEY && w >= 0 && (size_t)w < nw; i++)
        w += snprintf(what + w, nw - (size_t)w, i ? " %d" : "%d", k[i]);
}

/* p's algorithm from the kept file, checked with the workspace query. true when p is usable so. */
static bool conv_load(struct cuda_ctx *ctx, struct cuda_conv_plan *p, const char *name, const char *what) {
    char *text;
    const char *body;
    size_t len;
    if (!cuda__cache_read(ctx, "cudnn-conv", name, "cudnn-conv", what, 4096, &text, &body, &len)) return false;
    int algo = -1, math = -1;
    bool ok = sscanf(body, "algo %d math %d", &algo, &math) == 2 && algo >= 0 &&
              algo < CUDNN_CONVOLUTION_FWD_ALGO_COUNT && dnn_algo_allowed((cudnnConvolutionFwdAlgo_t)algo);
    mem_free(text);
    size_t ws = 0;
    ok = ok && cudnnSetConvolutionMathType(p->cd, (cudnnMathType_t)math) == CUDNN_STATUS_SUCCESS &&
         cudnnGetConvolutionForwardWorkspaceSize(ctx->cudnn, p->xd, p->wd, p->cd, p->yd,
                                                 (cudnnConvolutionFwdAlgo_t)algo, &ws) == CUDNN_STATUS_SUCCESS &&
         ws <= CONV_DNN_WORK_MAX;
    if (!ok) {
        log_debug("cuda conv2d: the choice kept as %s is not usable here: asked again", name);
        return false;
    }
    p->algo = (cudnnConvolutionFwdAlgo_t)algo;
    p->ws = ws;
    p->usable = true;
    return true;
}

/* Fills p (key set, descriptors NULL) for dst: descriptors and the algorithm, or usable =
 * false when cuDNN supports nothing for it. Returns 0 or a negative status (p is then to be
 * deinited by the caller). Timing mode runs the candidates on dst's own buffers: y is
 * overwritten (the caller fills the bias afterwards). */
static int plan_init(struct cuda_ctx *ctx, struct cuda_conv_plan *p, const struct tensor *dst, struct err *err) {
    const struct tensor *tx = dst->src[0], *tw = dst->src[1];
    const int *k = p->key;
    enum dtype dt = dst->dtype;
    cudnnDataType_t ty = dnn_type(dt);
    cudnnMathType_t math = dt == DTYPE_F32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH;
    cudnnTensorFormat_t fmt = k[11] ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
    CUDNN_TRY(cudnnCreateTensorDescriptor(&p->xd));
    CUDNN_TRY(cudnnCreateTensorDescriptor(&p->yd));
    CUDNN_TRY(cudnnCreateFilterDescriptor(&p->wd));
    CUDNN_TRY(cudnnCreateConvolutionDescriptor(&p->cd));
    cudnnStatus_t s = cudnnSetTensor4dDescriptor(p->xd, fmt, ty, k[0], k[1], k[2], k[3]);
    if (s == CUDNN_STATUS_SUCCESS) s = cudnnSetFilter4dDescriptor(p->wd, ty, fmt, k[4], k[1], k[5], k[6]);
    if (s == CUDNN_STATUS_SUCCESS)
        s = cudnnSetConvolution2dDescriptor(p->cd, k[8], k[9], k[7], k[7], 1, 1, CUDNN_CROSS_CORRELATION,
                                            CUDNN_DATA_FLOAT);
    if (s == CUDNN_STATUS_SUCCESS) s = cudnnSetConvolutionMathType(p->cd, math);
    int on = 0, oc = 0, oh = 0, ow = 0;
    if (s == CUDNN_STATUS_SUCCESS) s = cudnnGetConvolution2dForwardOutputDim(p->cd, p->xd, p->wd, &on, &oc, &oh, &ow);
    if (CUDNN_STATUS_CATEGORY(s) == CUDNN_STATUS_NOT_SUPPORTED) return 0; /* usable stays false */
    if (s != CUDNN_STATUS_SUCCESS) return cuda_dnn_error(err, s, "conv2d descriptors", __func__, __FILE__, __LINE__);
    int64_t want_c = dst->shape[k[11] ? 3 : 1], want_h = dst->shape[k[11] ? 1 : 2], want_w = dst->shape[k[11] ? 2 : 3];
    if (on != dst->shape[0] || oc != want_c || oh != want_h || ow != want_w) {
        log_warn("cuda conv2d: cuDNN's output [%d, %d, %d, %d] differs from the op's [%lld, %lld, %lld, %lld]: im2col",
                 on, oc, oh, ow, (long long)dst->shape[0], (long long)dst->shape[1], (long long)dst->shape[2],
                 (long long)dst->shape[3]);
        return 0;
    }
    CUDNN_TRY(cudnnSetTensor4dDescriptor(p->yd, fmt, ty, on, oc, oh, ow));
    char name[160], what[160];
    conv_names(k, name, sizeof name, what, sizeof what);
    bool keep = !ctx->cudnn_find; /* a timed choice is neither read nor kept */
    if (keep && conv_load(ctx, p, name, what)) {
        log_debug("cuda conv2d: [%d, %d, %d, %d] * [%d, %d, %d, %d] stride %d pad %d,%d %s: cuDNN %s, kept as %s", k[0],
                  k[1], k[2], k[3], k[4], k[1], k[5], k[6], k[7], k[8], k[9], dtype_name(dt), dnn_algo_name(p->algo),
                  name);
        return 0;
    }

    /* candidates, best first: the heuristics' ranking (cheap), or measured times */
    cudnnConvolutionFwdAlgoPerf_t perf[CONV_DNN_MAX_PERF];
    int n = 0;
    s = cudnnGetConvolutionForwardAlgorithm_v7(ctx->cudnn, p->xd, p->wd, p->cd, p->yd, CONV_DNN_MAX_PERF, &n, perf);
    if (CUDNN_STATUS_CATEGORY(s) == CUDNN_STATUS_NOT_SUPPORTED) return 0;
    if (s != CUDNN_STATUS_SUCCESS)
        return cuda_dnn_error(err, s, "cudnnGetConvolutionForwardAlgorithm_v7", __func__, __FILE__, __LINE__);
    if (ctx->cudnn_find) {
        size_t ws_size = 0; /* the most any candidate may need: Find skips those that need more */
        for (int i = 0; i < n; i++)
            if (dnn_candidate(&perf[i], dt, 1) && perf[i].memory > ws_size) ws_size = perf[i].memory;
        void *ws = NULL;
        if (ws_size) {
            int rc = 0;
            ws = cuda__work(ctx, ws_size, "conv2d cuDNN algorithm search", &rc, err);
            if (!ws) return rc;
        }
        n = 0;
        s = cudnnFindConvolutionForwardAlgorithmEx(ctx->cudnn, p->xd, tx->data, p->wd, tw->data, p->cd, p->yd,
                                                   dst->data, CONV_DNN_MAX_PERF, &n, perf, ws, ws_size);
        if (CUDNN_STATUS_CATEGORY(s) == CUDNN_STATUS_NOT_SUPPORTED) return 0;
        if (s != CUDNN_STATUS_SUCCESS)
            return cuda_dnn_error(err, s, "cudnnFindConvolutionForwardAlgorithmEx", __func__, __FILE__, __LINE__);
    }
    for (int pass = 0; pass < 2 && !p->usable; pass++) {
        for (int i = 0; i < n && !p->usable; i++) {
            if (!dnn_candidate(&perf[i], dt, pass)) continue;
            /* the answer names the math type the time or rank was for (FMA for F32) */
            CUDNN_TRY(cudnnSetConvolutionMathType(p->cd, perf[i].mathType));
            size_t ws = 0;
            s = cudnnGetConvolutionForwardWorkspaceSize(ctx->cudnn, p->xd, p->wd, p->cd, p->yd, perf[i].algo, &ws);
            if (CUDNN_STATUS_CATEGORY(s) == CUDNN_STATUS_NOT_SUPPORTED || ws > CONV_DNN_WORK_MAX) continue;
            if (s != CUDNN_STATUS_SUCCESS)
                return cuda_dnn_error(err, s, "cudnnGetConvolutionForwardWorkspaceSize", __func__, __FILE__, __LINE__);
            p->algo = perf[i].algo;
            p->ws = ws;
            p->usable = true;
            if (keep) {
                char body[64];
                int bl = snprintf(body, sizeof body, "algo %d math %d\n", (int)p->algo, (int)perf[i].mathType);
                cuda__cache_write(ctx, "cudnn-conv", name, "cudnn-conv", what, body, (size_t)bl);
            }
            log_debug("cuda conv2d: [%d, %d, %d, %d] * [%d, %d, %d, %d] stride %d pad %d,%d %s: cuDNN %s (math %d, "
                      "%sdeterministic, %zu bytes of workspace, %.3f ms%s)",
                      k[0], k[1], k[2], k[3], k[4], k[1], k[5], k[6], k[7], k[8], k[9], dtype_name(dt),
                      dnn_algo_name(p->algo), (int)perf[i].mathType,
                      perf[i].determinism == CUDNN_DETERMINISTIC ? "" : "non-", ws, (double)perf[i].time,
                      ctx->cudnn_find ? " timed" : " by the heuristics, may be -1");
        }
    }
    if (!p->usable)
        log_info("cuda conv2d: [%d, %d, %d, %d] * [%d, %d, %d, %d] stride %d pad %d,%d %s: no cuDNN algorithm fits, "
                 "im2col",
                 k[0], k[1], k[2], k[3], k[4], k[1], k[5], k[6], k[7], k[8], k[9], dtype_name(dt));
    return 0;
}

/* The plan for dst's shape and dtype, made on first use: 0 with *out set, or a status. */
static int plan_get(struct cuda_ctx *ctx, const struct tensor *dst, const int *key, struct cuda_conv_plan **out,
                    struct err *err) {
    for (int i = 0; i < ctx->n_conv_plans; i++)
        if (memcmp(ctx->conv_plans[i].key, key, sizeof ctx->conv_plans[i].key) == 0) {
            *out = &ctx->conv_plans[i];
            return 0;
        }
    if (ctx->n_conv_plans == ctx->cap_conv_plans) {
        int cap = ctx->cap_conv_plans ? ctx->cap_conv_plans * 2 : 32;
        struct cuda_conv_plan *a =
            (struct cuda_conv_plan *)mem_try_realloc(ctx->conv_plans, (size_t)cap * sizeof *a);
        if (!a) return err_set(err, STATUS_ERR_NOMEM, "cuda conv2d: out of host memory for the cuDNN plan table");
        ctx->conv_plans = a;
        ctx->cap_conv_plans = cap;
    }
    struct cuda_conv_plan p;
    memset(&p, 0, sizeof p);
    memcpy(p.key, key, sizeof p.key);
    double t0 = clock_now();
    int rc = plan_init(ctx, &p, dst, err);
    log_debug("cuda conv2d: plan for a new shape in %.2f ms", 1e3 * (clock_now() - t0));
    if (rc) {
        plan_deinit(&p);
        return rc;
    }
    if (!p.usable) { /* keep only the key: the descriptors are of no further use */
        plan_deinit(&p);
        memcpy(p.key, key, sizeof p.key);
    }
    ctx->conv_plans[ctx->n_conv_plans] = p;
    *out = &ctx->conv_plans[ctx->n_conv_plans++];
    return 0;
}

/* ===== Fused residual (FUSED RESIDUAL) =====
 * A convolution with a bias and a full-size residual r (op_add_fused: a ResBlock's second conv,
 * its skip connection) is y = conv(x) + r + b in one cudnnConvolutionBiasActivationForward call
 * (identity activation, z = r, alpha2 = 1) instead of a fill kernel (y = b + r) and the conv
 * with beta = 1: one pass over y less and one launch less (bench/conv_graph.cu: 0.125 -> 0.096
 * ms for the UNet's 320-channel 64x64 conv at batch 8 on an H100), and one rounding of the
 * fp32 sum instead of two. cuDNN runs that fusion with IMPLICIT_PRECOMP_GEMM only, so only plans
 * that chose it take it (the UNet's and VAE's on the H100 did), in F16 and BF16 (not F32). A refusal
 * (CUDNN_STATUS_NOT_SUPPORTED) is logged once per plan, which then fills and convolves as
 * before. KILN_CONV_FUSED=0 turns it off.
 * BIAS ONLY: a convolution with a bias and no residual (the VAE's first conv of each ResBlock,
 * the up- and downsampling convs) is the same call with alpha2 = 0 and z = y (bench/
 * conv_graph.cu: 0.112 -> 0.089 ms for the UNet's 320-channel 64x64 conv). y's memory holds
 * whatever the planner left there, so this relies on cuDNN not reading z when alpha2 is 0, which
 * its documentation does not promise: each plan checks it once, at its first uncaptured call,
 * by filling y with NaN first (0 * NaN would leave NaN); a cuDNN that reads z keeps the fill. */

/* KILN_CONV_FUSED=0 turns the fusion off (A/B measurements; read once). */
static bool conv_fused_enabled(void) {
    static int on = -1;
    if (on < 0) {
        const char *e = getenv("KILN_CONV_FUSED");
        on = !(e && strcmp(e, "0") == 0);
    }
    return on == 1;
}

/* 0 when dst was computed fused, 1 when the caller must fill and convolve, or a status. */
static int conv_dnn_fused(struct cuda_ctx *ctx, struct cuda_conv_plan *plan, struct tensor *dst, void *ws) {
    const struct tensor *tx = dst->src[0], *tw = dst->src[1], *tb = dst->src[2], *tr = dst->src[3];
    if (!tb || dst->dtype == DTYPE_F32 || plan->fused < 0 || !conv_fused_enabled() ||
        plan->algo != CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM)
        return 1;
    /* bias only: alpha2 = 0 and z = y, whose memory holds whatever was there; only where cuDNN was
       seen not to read z (BIAS ONLY below) */
    const bool bias_only = !tr;
    if (bias_only && plan->z_unread < 0) return 1;
    bool check = false;
    if (bias_only && plan->z_unread == 0) {
        cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
        if (cudaStreamIsCapturing(ctx->stream, &cap) != cudaSuccess || cap != cudaStreamCaptureStatusNone) {
            (void)cudaGetLastError();
            return 1; /* checked at an uncaptured call */
        }
        if (cudaMemsetAsync(dst->data, 0xff, tensor_nbytes(dst), ctx->stream) != cudaSuccess) { /* NaN */
            (void)cudaGetLastError();
            return 1;
        }
        check = true;
    }
    if (!plan->bd) {
        cudnnTensorFormat_t fmt = plan->key[11] ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
        bool ok = cudnnCreateTensorDescriptor(&plan->bd) == CUDNN_STATUS_SUCCESS &&
                  cudnnSetTensor4dDescriptor(plan->bd, fmt, dnn_type(dst->dtype), 1, plan->key[4], 1, 1) ==
                      CUDNN_STATUS_SUCCESS &&
                  cudnnCreateActivationDescriptor(&plan->ad) == CUDNN_STATUS_SUCCESS &&
                  cudnnSetActivationDescriptor(plan->ad, CUDNN_ACTIVATION_IDENTITY, CUDNN_NOT_PROPAGATE_NAN, 0.0) ==
                      CUDNN_STATUS_SUCCESS;
        if (!ok) {
            plan->fused = -1;
            return 1;
        }
    }
    const float one = 1.0f, alpha2 = bias_only ? 0.0f : 1.0f;
    cudnnStatus_t s = cudnnConvolutionBiasActivationForward(
        ctx->cudnn, &one, plan->xd, tx->data, plan->wd, tw->data, plan->cd, plan->algo, ws, plan->ws, &alpha2,
        plan->yd, bias_only ? dst->data : tr->data, plan->bd, tb->data, plan->ad, plan->yd, dst->data);
    if (s == CUDNN_STATUS_SUCCESS && check) { /* NaN out: z was read (0 * NaN) */
        uint16_t head[8];
        size_t nb = tensor_nbytes(dst) < sizeof head ? tensor_nbytes(dst) : sizeof head;
        /* on ctx->stream, after the memset and the call (a plain cudaMemcpy would not wait for
           that non-blocking stream) */
        bool nan = cudaMemcpyAsync(head, dst->data, nb, cudaMemcpyDeviceToHost, ctx->stream) != cudaSuccess ||
                   cudaStreamSynchronize(ctx->stream) != cudaSuccess;
        for (size_t i = 0; i < nb / 2 && !nan; i++) /* F16 and BF16 NaNs: all exponent bits, a mantissa bit */
            nan = dst->dtype == DTYPE_F16 ? (head[i] & 0x7c00) == 0x7c00 && (head[i] & 0x03ff)
                                          : (head[i] & 0x7f80) == 0x7f80 && (head[i] & 0x007f);
        (void)cudaGetLastError();
        plan->z_unread = nan ? -1 : 1;
        log_debug("cuda conv2d: [%d, %d, %d, %d] %s: cuDNN %s z at alpha2 = 0: %s", plan->key[0], plan->key[1],
                  plan->key[2], plan->key[3], dtype_name(dst->dtype), nan ? "reads" : "does not read",
                  nan ? "bias fill and conv" : "conv + bias in one call");
        if (nan) return 1; /* the fill and conv overwrite y */
    }
    if (s == CUDNN_STATUS_SUCCESS) {
        if (!plan->fused)
            log_debug("cuda conv2d: [%d, %d, %d, %d] %s: conv + %sbias in one cuDNN call", plan->key[0], plan->key[1],
                      plan->key[2], plan->key[3], dtype_name(dst->dtype), bias_only ? "" : "residual + ");
        plan->fused = 1;
        return 0;
    }
    (void)cudaGetLastError();
    const int *k = plan->key;
    log_info("cuda conv2d: cuDNN refused the fused conv + residual + bias for [%d, %d, %d, %d] %s (%s): fill and "
             "convolve",
             k[0], k[1], k[2], k[3], dtype_name(dst->dtype), cudnnGetErrorString(s));
    plan->fused = -1;
    return 1;
}

/* dst through cuDNN: 0 when done, 1 when the im2col path must do it (nothing written that it
 * does not overwrite), or a negative status. */
template <typename T>
static int conv2d_dnn(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *tx = dst->src[0], *tw = dst->src[1];
    if (dst->ip[1] != dst->ip[3] || dst->ip[2] != dst->ip[4]) return 1; /* asymmetric padding */
    const bool nhwc = dst->ip[5] != 0;
    /* n, c, h, w of x; o, kh, kw of w, whatever the layout */
    int64_t dims[CONV_PLAN_KEY] = {tx->shape[0],
                                   tx->shape[nhwc ? 3 : 1],
                                   tx->shape[nhwc ? 1 : 2],
                                   tx->shape[nhwc ? 2 : 3],
                                   tw->shape[0],
                                   tw->shape[nhwc ? 1 : 2],
                                   tw->shape[nhwc ? 2 : 3],
                                   dst->ip[0],
                                   dst->ip[1],
                                   dst->ip[2],
                                   (int64_t)dst->dtype,
                                   nhwc};
    for (int i = 0; i < CONV_PLAN_KEY; i++)
        if (dims[i] < (i < 8 ? 1 : 0) || dims[i] > INT_MAX) return 1; /* empty, or past cuDNN's int sizes */
    if (cuda_numel(tx) > INT_MAX || cuda_numel(tw) > INT_MAX || cuda_numel(dst) > INT_MAX) return 1;
    int key[CONV_PLAN_KEY];
    for (int i = 0; i < CONV_PLAN_KEY; i++) key[i] = (int)dims[i];

    struct cuda_conv_plan *plan = NULL;
    int rc = plan_get(ctx, dst, key, &plan, err);
    if (rc) return rc;
    if (!plan->usable) return 1;
    void *ws = NULL;
    if (plan->ws) { /* taken after sizing: cuda__work may move the scratch */
        ws = cuda__work(ctx, plan->ws, "conv2d cuDNN workspace", &rc, err);
        if (!ws) return rc;
    }
    float alpha = 1.0f, beta = 0.0f; /* cuDNN's scaling factors are float for F32, F16 and BF16 data */
    int64_t o = tw->shape[0], p = nhwc ? 1 : dst->shape[2] * dst->shape[3];
    rc = conv_dnn_fused(ctx, plan, dst, ws);
    if (rc <= 0) return rc;
    rc = conv_fill_bias_cuda<T>(dst, o, p, &beta, ctx->stream, err);
    if (rc) return rc;
    cudnnStatus_t s = cudnnConvolutionForward(ctx->cudnn, &alpha, plan->xd, tx->data, plan->wd, tw->data, plan->cd,
                                              plan->algo, ws, plan->ws, &beta, plan->yd, dst->data);
    if (CUDNN_STATUS_CATEGORY(s) == CUDNN_STATUS_NOT_SUPPORTED) { /* once per plan: then im2col for good */
        log_info("cuda conv2d: cuDNN %s refused [%d, %d, %d, %d] %s at run time (%s): im2col",
                 dnn_algo_name(plan->algo), key[0], key[1], key[2], key[3], dtype_name(dst->dtype),
                 cudnnGetErrorString(s));
        plan->usable = false;
        return 1;
    }
    if (s != CUDNN_STATUS_SUCCESS)
        return cuda_dnn_error(err, s, "cudnnConvolutionForward", __func__, __FILE__, __LINE__);
    return 0;
}

#endif /* KILN_HAVE_CUDNN */

/* ===== im2col + gemm ===== */

template <typename T>
static int conv2d_cuda(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *tx = dst->src[0], *tw = dst->src[1];
    struct conv_geom g = {tx->shape[1], tx->shape[2], tx->shape[3], tw->shape[2], tw->shape[3],
                          dst->shape[2], dst->shape[3], dst->ip[0], dst->ip[1], dst->ip[2]};
    int64_t nb = tx->shape[0], o = tw->shape[0], p = g.ho * g.wo, ck = g.c * g.kh * g.kw;
    if (nb * o * p == 0) return 0;
    bool pointwise = g.kh == 1 && g.kw == 1 && g.stride == 1 && g.pt == 0 && g.pl == 0 && g.ho == g.h && g.wo == g.w;
    /* small images (the UNet's 8x8 level): cuDNN's kernels run at a fraction of the tensor cores'
       speed there, one batched cuBLAS product over im2col columns does much better */
    bool small = p <= ctx->conv_small_p;
#ifdef KILN_HAVE_CUDNN
    if (ctx->cudnn && !pointwise && !small) { /* a 1x1 conv is one GEMM per image: cuBLAS does it best */
        int rc = conv2d_dnn<T>(ctx, dst, err);
        if (rc <= 0) return rc;
    }
#endif
    if (p > INT_MAX || ck > INT_MAX || o > INT_MAX)
        return conv_too_large(dst, err);
    const T *x = (const T *)tx->data, *w = (const T *)tw->data;
    T *y = (T *)dst->data;
    enum dtype dt = dst->dtype;
    bool direct = pointwise;

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
    int rc0 = conv_fill_bias_cuda<T>(dst, o, p, &beta, ctx->stream, err);
    if (rc0) return rc0;
    size_t whole = (size_t)nb * (size_t)p * (size_t)ck * sizeof(T);
    if (nb > 1 && nb <= INT_MAX && (direct || whole <= CONV_WORK_MAX)) {
        /* every image in one batched product: column-major y_i^T [P, O] = src_i^T [P, CK] . w^T [CK, O],
           src_i = x_i itself (1x1) or its im2col columns */
        const T *src = x;
        if (!direct) {
            int rc = 0;
            col = (T *)cuda__work(ctx, whole, "conv2d im2col", &rc, err);
            if (!col) return rc;
            for (int64_t img = 0; img < nb && !rc; img++)
                rc = im2col_cuda<T>(col + img * p * ck, x + img * g.c * g.h * g.w, &g, 0, p, ctx->stream, err);
            if (rc) return rc;
            src = col;
        }
        return cuda__gemm_batched(ctx, dt, (int)p, (int)o, (int)ck, src, (int)p, (long long)(p * ck), w, (int)ck, 0,
                                  beta, y, (int)p, (long long)(o * p), (int)nb, err);
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

/* ===== channels last ===== */

/* col [np, K] (row-major, K = kh kw C in w's [kh, kw, C] order) = the patches of the images x
 * [B, H, W, C] for output positions p0 .. p0+np of the whole batch (p = (b Ho + oy) Wo + ox) */
template <typename T>
__global__ void im2col_nhwc(T *col, const T *x, struct conv_geom g, int64_t p0, int64_t np, int64_t n) {
    int64_t k = g.kh * g.kw * g.c;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / k, j = i - r * k, p = p0 + r;
        int64_t ox = p % g.wo, oy = (p / g.wo) % g.ho, b = p / (g.wo * g.ho);
        int64_t ch = j % g.c, kx = (j / g.c) % g.kw, ky = j / (g.c * g.kw);
        int64_t iy = oy * g.stride - g.pt + ky, ix = ox * g.stride - g.pl + kx;
        col[i] = (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w) ? x[((b * g.h + iy) * g.w + ix) * g.c + ch]
                                                               : cuda_from_f32<T>(0.0f);
    }
}

/* x [B, H, W, C] * w [O, kh, kw, C] (+ b) -> y [B, Ho, Wo, O]: cuDNN with NHWC descriptors, else
 * one product per chunk of output positions: row-major y [P, O] = col [P, K] . w [O, K]^T,
 * i.e. column-major y^T [O, P] = w^T . col^T (a 1x1 unpadded stride-1 conv reads x as col). */
template <typename T>
static int conv2d_nhwc_cuda(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *tx = dst->src[0], *tw = dst->src[1];
    struct conv_geom g = {tx->shape[3], tx->shape[1], tx->shape[2], tw->shape[1], tw->shape[2],
                          dst->shape[1], dst->shape[2], dst->ip[0], dst->ip[1], dst->ip[2]};
    int64_t o = tw->shape[0], p = tx->shape[0] * g.ho * g.wo, k = g.c * g.kh * g.kw;
    if (p * o == 0) return 0;
    bool pointwise = g.kh == 1 && g.kw == 1 && g.stride == 1 && g.pt == 0 && g.pl == 0;
    /* fewer than 8 input channels (the UNet's and the VAE decoder's 4-channel latent in): cuDNN's
       channels-last kernels want C a multiple of 8 and took 0.19 ms for the UNet's conv_in at
       batch 8 on the H100, one product over im2col columns (K = 9 C) does it directly */
    bool narrow = g.c < 8;
#ifdef KILN_HAVE_CUDNN
    if (ctx->cudnn && !pointwise && !narrow) {
        int rc = conv2d_dnn<T>(ctx, dst, err);
        if (rc <= 0) return rc;
    }
#endif
    if (k > INT_MAX || o > INT_MAX)
        return conv_too_large(dst, err);
    T *y = (T *)dst->data;
    float beta = 0.0f;
    int rc0 = conv_fill_bias_cuda<T>(dst, o, 1, &beta, ctx->stream, err);
    if (rc0) return rc0;
    int64_t chunk = pointwise ? p : (int64_t)(CONV_WORK_MAX / ((size_t)k * sizeof(T)));
    if (chunk < 1) chunk = 1;
    if (chunk > INT_MAX) chunk = INT_MAX;
    T *col = NULL;
    if (!pointwise) {
        int rc = 0;
        col = (T *)cuda__work(ctx, (size_t)(chunk < p ? chunk : p) * (size_t)k * sizeof(T), "conv2d im2col", &rc,
                              err);
        if (!col) return rc;
    }
    for (int64_t p0 = 0; p0 < p; p0 += chunk) {
        int64_t np = p - p0 < chunk ? p - p0 : chunk;
        const T *src = (const T *)tx->data + p0 * k;
        if (!pointwise) {
            int64_t n = np * k;
            im2col_nhwc<T><<<grid_for(n), THREADS, 0, ctx->stream>>>(col, (const T *)tx->data, g, p0, np, n);
            CUDA_TRY_LAUNCH();
            src = col;
        }
        int rc = cuda__gemm(ctx, dst->dtype, true, false, (int)o, (int)np, (int)k, tw->data, (int)k, src, (int)k, beta,
                            y + p0 * o, (int)o, err);
        if (rc) return rc;
    }
    return 0;
}

int cuda_op_conv2d(struct cuda_ctx *ctx, struct tensor *dst, struct err *err) {
    if (dst->ip[5]) CUDA_DISPATCH(dst->dtype, conv2d_nhwc_cuda<T>(ctx, dst, err));
    CUDA_DISPATCH(dst->dtype, conv2d_cuda<T>(ctx, dst, err));
}
