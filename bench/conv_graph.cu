/* bench/conv_graph.cu -- times SD 1.5's UNet 3x3 convolutions (channels-last fp16, fp32
 * accumulation, y = conv + y as kiln runs them: bias and residual filled first, beta = 1) through
 * cuDNN's legacy API with the heuristics' first GEMM-family algorithm (tensor/cuda/conv.cu's
 * choice) and through its graph API (one CONVOLUTION_FORWARD operation) with the heuristics'
 * first engine configuration that finalizes, plus the fastest of its first 8 (for reference
 * only: kiln does not choose by timing). 20 calls per shape captured as one CUDA graph.
 * Answers: is the graph API's engine faster than the legacy algorithm on these shapes? And with a
 * bias and a residual: kiln's fill (y = b + r) then conv with beta 1, against cuDNN's
 * cudnnConvolutionBiasActivationForward (identity activation, z = r) in one call.
 * Build: nvcc -O2 -arch=sm_90 -o build/conv_graph bench/conv_graph.cu -lcudnn
 * Run:   build/conv_graph [batch] */
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CK(x)                                                                                      \
    do {                                                                                           \
        cudaError_t e_ = (x);                                                                      \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_));            \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)
#define DK(x)                                                                                      \
    do {                                                                                           \
        cudnnStatus_t s_ = (x);                                                                    \
        if (s_ != CUDNN_STATUS_SUCCESS) {                                                          \
            fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudnnGetErrorString(s_));           \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

struct shape { int c, hw, o, stride, count; };

/* the 3x3 convolutions of the SD 1.5 UNet at a 64x64 latent (bench/conv_layout.cu's list, less
 * the 4-channel conv_in and conv_out, which kiln runs as products) */
static const struct shape shapes[] = {
    {320, 64, 320, 1, 4},   {320, 64, 320, 2, 1},   {320, 32, 640, 1, 1},   {640, 32, 640, 1, 3},
    {640, 32, 640, 2, 1},   {640, 16, 1280, 1, 1},  {1280, 16, 1280, 1, 3}, {1280, 16, 1280, 2, 1},
    {1280, 8, 1280, 1, 11}, {2560, 8, 1280, 1, 3},  {1280, 16, 1280, 1, 1}, {2560, 16, 1280, 1, 2},
    {1920, 16, 1280, 1, 1}, {1280, 16, 1280, 1, 3}, {1280, 32, 1280, 1, 1}, {1920, 32, 640, 1, 1},
    {1280, 32, 640, 1, 1},  {960, 32, 640, 1, 1},   {640, 32, 640, 1, 3},   {640, 64, 640, 1, 1},
    {960, 64, 320, 1, 1},   {640, 64, 320, 1, 2},   {320, 64, 320, 1, 3},
};

static const int REPS = 20;

/* ms per call of fn(arg) captured REPS times in one CUDA graph on stream st */
typedef void (*call_fn)(void *arg);
static double time_graph(cudaStream_t st, call_fn fn, void *arg) {
    for (int i = 0; i < 3; i++) fn(arg);
    CK(cudaStreamSynchronize(st));
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < REPS; i++) fn(arg);
    CK(cudaStreamEndCapture(st, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    CK(cudaGraphLaunch(ge, st));
    CK(cudaEventRecord(e0, st));
    CK(cudaGraphLaunch(ge, st));
    CK(cudaEventRecord(e1, st));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return ms / REPS;
}

struct bufs { void *x, *w, *y, *ws; size_t ws_max; };

/* ----- legacy API ----- */
struct legacy {
    cudnnHandle_t h;
    cudnnTensorDescriptor_t xd, yd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd;
    cudnnConvolutionFwdAlgo_t algo;
    struct bufs *b;
};
static void legacy_call(void *p) {
    struct legacy *l = (struct legacy *)p;
    float alpha = 1.0f, beta = 1.0f;
    DK(cudnnConvolutionForward(l->h, &alpha, l->xd, l->b->x, l->wd, l->b->w, l->cd, l->algo, l->b->ws, l->b->ws_max,
                               &beta, l->yd, l->b->y));
}
static double time_legacy(cudnnHandle_t h, cudaStream_t st, int n, const struct shape *s, struct bufs *b) {
    struct legacy l = {h};
    l.b = b;
    DK(cudnnCreateTensorDescriptor(&l.xd));
    DK(cudnnCreateTensorDescriptor(&l.yd));
    DK(cudnnCreateFilterDescriptor(&l.wd));
    DK(cudnnCreateConvolutionDescriptor(&l.cd));
    DK(cudnnSetTensor4dDescriptor(l.xd, CUDNN_TENSOR_NHWC, CUDNN_DATA_HALF, n, s->c, s->hw, s->hw));
    DK(cudnnSetFilter4dDescriptor(l.wd, CUDNN_DATA_HALF, CUDNN_TENSOR_NHWC, s->o, s->c, 3, 3));
    DK(cudnnSetConvolution2dDescriptor(l.cd, 1, 1, s->stride, s->stride, 1, 1, CUDNN_CROSS_CORRELATION,
                                       CUDNN_DATA_FLOAT));
    DK(cudnnSetConvolutionMathType(l.cd, CUDNN_TENSOR_OP_MATH));
    int on, oc, oh, ow;
    DK(cudnnGetConvolution2dForwardOutputDim(l.cd, l.xd, l.wd, &on, &oc, &oh, &ow));
    DK(cudnnSetTensor4dDescriptor(l.yd, CUDNN_TENSOR_NHWC, CUDNN_DATA_HALF, on, oc, oh, ow));
    cudnnConvolutionFwdAlgoPerf_t perf[16];
    int np = 0, pick = -1;
    DK(cudnnGetConvolutionForwardAlgorithm_v7(h, l.xd, l.wd, l.cd, l.yd, 16, &np, perf));
    for (int i = 0; i < np && pick < 0; i++) {
        cudnnConvolutionFwdAlgo_t a = perf[i].algo;
        bool gemm = a == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM || a == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM ||
                    a == CUDNN_CONVOLUTION_FWD_ALGO_GEMM || a == CUDNN_CONVOLUTION_FWD_ALGO_DIRECT;
        if (perf[i].status == CUDNN_STATUS_SUCCESS && gemm && perf[i].memory <= b->ws_max) pick = i;
    }
    if (pick < 0) return -1;
    DK(cudnnSetConvolutionMathType(l.cd, perf[pick].mathType));
    l.algo = perf[pick].algo;
    double ms = time_graph(st, legacy_call, &l);
    cudnnDestroyTensorDescriptor(l.xd);
    cudnnDestroyTensorDescriptor(l.yd);
    cudnnDestroyFilterDescriptor(l.wd);
    cudnnDestroyConvolutionDescriptor(l.cd);
    return ms;
}

/* ----- kiln's bias and residual fill + conv (beta 1), against cuDNN's fused conv + bias + z ----- */
__global__ void fill_bias_res(__half *y, const __half *b, const __half *r, long n, int o) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        y[i] = __float2half(__half2float(b[i % o]) + (r ? __half2float(r[i]) : 0.0f));
}
struct fused {
    struct legacy l;
    cudnnTensorDescriptor_t bd;
    cudnnActivationDescriptor_t ad;
    void *bias, *res;
    long n;
    int o;
    bool cudnn_fused;
};
static void fused_call(void *p) {
    struct fused *f = (struct fused *)p;
    float one = 1.0f;
    if (f->cudnn_fused) {
        DK(cudnnConvolutionBiasActivationForward(f->l.h, &one, f->l.xd, f->l.b->x, f->l.wd, f->l.b->w, f->l.cd,
                                                 CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, f->l.b->ws,
                                                 f->l.b->ws_max, &one, f->l.yd, f->res, f->bd, f->bias, f->ad,
                                                 f->l.yd, f->l.b->y));
    } else {
        cudaStream_t st;
        DK(cudnnGetStream(f->l.h, &st));
        fill_bias_res<<<1024, 256, 0, st>>>((__half *)f->l.b->y, (const __half *)f->bias, (const __half *)f->res, f->n,
                                             f->o);
        legacy_call(&f->l);
    }
}
/* bias only: cuDNN's conv + bias with alpha2 = 0 and z = y; y holds NaN before each call: does
 * cuDNN read z when alpha2 is 0 (then y stays NaN)? */
struct biasonly {
    struct fused f;
    float alpha2;
};
static void biasonly_call(void *p) {
    struct biasonly *bo = (struct biasonly *)p;
    struct fused *f = &bo->f;
    float one = 1.0f;
    cudaStream_t st;
    DK(cudnnGetStream(f->l.h, &st));
    if (bo->alpha2 < 0) { /* kiln's bias fill + conv beta 1 */
        fill_bias_res<<<1024, 256, 0, st>>>((__half *)f->l.b->y, (const __half *)f->bias, NULL, f->n, f->o);
        legacy_call(&f->l);
        return;
    }
    DK(cudnnConvolutionBiasActivationForward(f->l.h, &one, f->l.xd, f->l.b->x, f->l.wd, f->l.b->w, f->l.cd,
                                             CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, f->l.b->ws,
                                             f->l.b->ws_max, &bo->alpha2, f->l.yd, f->l.b->y, f->bd, f->bias, f->ad,
                                             f->l.yd, f->l.b->y));
}

/* ms of (fill + conv beta 1) and of cuDNN's conv + bias + z (IMPLICIT_PRECOMP_GEMM, identity) */
static void time_fused(cudnnHandle_t h, cudaStream_t st, int n, const struct shape *s, struct bufs *b, void *bias,
                       void *res, double *kiln_ms, double *fused_ms) {
    struct fused f;
    memset(&f, 0, sizeof f);
    f.l.h = h;
    f.l.b = b;
    DK(cudnnCreateTensorDescriptor(&f.l.xd));
    DK(cudnnCreateTensorDescriptor(&f.l.yd));
    DK(cudnnCreateFilterDescriptor(&f.l.wd));
    DK(cudnnCreateConvolutionDescriptor(&f.l.cd));
    DK(cudnnCreateTensorDescriptor(&f.bd));
    DK(cudnnCreateActivationDescriptor(&f.ad));
    DK(cudnnSetTensor4dDescriptor(f.l.xd, CUDNN_TENSOR_NHWC, CUDNN_DATA_HALF, n, s->c, s->hw, s->hw));
    DK(cudnnSetFilter4dDescriptor(f.l.wd, CUDNN_DATA_HALF, CUDNN_TENSOR_NHWC, s->o, s->c, 3, 3));
    DK(cudnnSetConvolution2dDescriptor(f.l.cd, 1, 1, s->stride, s->stride, 1, 1, CUDNN_CROSS_CORRELATION,
                                       CUDNN_DATA_FLOAT));
    DK(cudnnSetConvolutionMathType(f.l.cd, CUDNN_TENSOR_OP_MATH));
    int on, oc, oh, ow;
    DK(cudnnGetConvolution2dForwardOutputDim(f.l.cd, f.l.xd, f.l.wd, &on, &oc, &oh, &ow));
    DK(cudnnSetTensor4dDescriptor(f.l.yd, CUDNN_TENSOR_NHWC, CUDNN_DATA_HALF, on, oc, oh, ow));
    DK(cudnnSetTensor4dDescriptor(f.bd, CUDNN_TENSOR_NHWC, CUDNN_DATA_HALF, 1, oc, 1, 1));
    DK(cudnnSetActivationDescriptor(f.ad, CUDNN_ACTIVATION_IDENTITY, CUDNN_NOT_PROPAGATE_NAN, 0.0));
    cudnnConvolutionFwdAlgoPerf_t perf[16];
    int np = 0, pick = -1;
    DK(cudnnGetConvolutionForwardAlgorithm_v7(h, f.l.xd, f.l.wd, f.l.cd, f.l.yd, 16, &np, perf));
    for (int i = 0; i < np && pick < 0; i++)
        if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= b->ws_max &&
            (perf[i].algo == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM ||
             perf[i].algo == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM))
            pick = i;
    f.l.algo = pick >= 0 ? perf[pick].algo : CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM;
    f.bias = bias;
    f.res = res;
    f.n = (long)on * oh * ow * oc;
    f.o = oc;
    f.cudnn_fused = false;
    *kiln_ms = time_graph(st, fused_call, &f);
    f.cudnn_fused = true;
    const float one = 1.0f;
    cudnnStatus_t ok = cudnnConvolutionBiasActivationForward(
        h, &one, f.l.xd, b->x, f.l.wd, b->w, f.l.cd, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, b->ws, b->ws_max,
        &one, f.l.yd, res, f.bd, bias, f.ad, f.l.yd, b->y);
    if (ok != CUDNN_STATUS_SUCCESS) fprintf(stderr, "  conv+bias+z refused: %s\n", cudnnGetErrorString(ok));
    *fused_ms = ok == CUDNN_STATUS_SUCCESS ? time_graph(st, fused_call, &f) : -1;
    /* alpha2 = 0 with NaN in y (= z): NaN out means z was read */
    struct biasonly bo = {f, 0.0f};
    CK(cudaMemsetAsync(b->y, 0xff, (size_t)f.n * 2, st)); /* on st: ordered before the call */
    biasonly_call(&bo);
    __half probe[64];
    CK(cudaMemcpyAsync(probe, b->y, sizeof probe, cudaMemcpyDeviceToHost, st));
    CK(cudaStreamSynchronize(st));
    int nans = 0;
    for (int i = 0; i < 64; i++) nans += __half2float(probe[i]) != __half2float(probe[i]);
    double t0 = time_graph(st, biasonly_call, &bo);
    bo.alpha2 = -1.0f; /* fill b + conv */
    double t1 = time_graph(st, biasonly_call, &bo);
    printf("        bias only: z read at alpha2 0: %s; fill + conv %.4f ms, conv + bias (alpha2 0) %.4f ms\n",
           nans ? "YES (NaN out)" : "no", t1, t0);
    cudnnDestroyTensorDescriptor(f.l.xd);
    cudnnDestroyTensorDescriptor(f.l.yd);
    cudnnDestroyTensorDescriptor(f.bd);
    cudnnDestroyFilterDescriptor(f.l.wd);
    cudnnDestroyConvolutionDescriptor(f.l.cd);
    cudnnDestroyActivationDescriptor(f.ad);
}

/* ----- graph API ----- */
#define SET(d, a, t, n, p) DK(cudnnBackendSetAttribute(d, a, t, n, p))
static cudnnBackendDescriptor_t make(cudnnBackendDescriptorType_t t) {
    cudnnBackendDescriptor_t d;
    DK(cudnnBackendCreateDescriptor(t, &d));
    return d;
}
static cudnnBackendDescriptor_t tensor(int64_t uid, const int64_t dims[4], const int64_t strides[4]) {
    cudnnBackendDescriptor_t d = make(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    cudnnDataType_t ty = CUDNN_DATA_HALF;
    int64_t align = 16;
    SET(d, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &ty);
    SET(d, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims);
    SET(d, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides);
    SET(d, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    SET(d, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align);
    DK(cudnnBackendFinalize(d));
    return d;
}
struct gexec {
    cudnnHandle_t h;
    cudnnBackendDescriptor_t plan, vp;
};
static void graph_call(void *p) {
    struct gexec *g = (struct gexec *)p;
    DK(cudnnBackendExecute(g->h, g->plan, g->vp));
}
/* *first: ms of the heuristics' first finalizing configuration; *best: fastest of up to 8;
 * *n_cfg: configurations offered; *first_idx: its engine's global index */
static void time_graph_api(cudnnHandle_t h, cudaStream_t st, int n, const struct shape *s, struct bufs *b,
                           double *first, double *best, int *n_cfg, long long *first_idx) {
    int64_t C = s->c, H = s->hw, O = s->o, Ho = (s->hw + 2 - 3) / s->stride + 1;
    const int64_t xd[4] = {n, C, H, H}, xs[4] = {H * H * C, 1, H * C, C};
    const int64_t wd[4] = {O, C, 3, 3}, wst[4] = {9 * C, 1, 3 * C, C};
    const int64_t yd[4] = {n, O, Ho, Ho}, ys[4] = {Ho * Ho * O, 1, Ho * O, O};
    cudnnBackendDescriptor_t tx = tensor(1, xd, xs), tw = tensor(2, wd, wst), ty = tensor(3, yd, ys);
    cudnnBackendDescriptor_t conv = make(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR);
    cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
    int64_t dims = 2, one2[2] = {1, 1}, str[2] = {s->stride, s->stride};
    SET(conv, CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp);
    SET(conv, CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode);
    SET(conv, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &dims);
    SET(conv, CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, 2, one2);
    SET(conv, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, 2, str);
    SET(conv, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, 2, one2);
    SET(conv, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, 2, one2);
    DK(cudnnBackendFinalize(conv));
    cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR);
    float alpha = 1.0f, beta = 1.0f;
    SET(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &tx);
    SET(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &tw);
    SET(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &ty);
    SET(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &conv);
    SET(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, CUDNN_TYPE_FLOAT, 1, &alpha);
    SET(op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA, CUDNN_TYPE_FLOAT, 1, &beta);
    DK(cudnnBackendFinalize(op));
    cudnnBackendDescriptor_t graph = make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    SET(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &op);
    SET(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &h);
    DK(cudnnBackendFinalize(graph));
    cudnnBackendDescriptor_t heur = make(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    cudnnBackendHeurMode_t hm = CUDNN_HEUR_MODE_A;
    SET(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph);
    SET(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &hm);
    DK(cudnnBackendFinalize(heur));
    int64_t avail = 0;
    DK(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &avail, NULL));
    int64_t want = avail < 8 ? avail : 8, got = 0;
    cudnnBackendDescriptor_t cfgs[8];
    for (int64_t i = 0; i < want; i++) cfgs[i] = make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
    DK(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, want, &got, cfgs));
    *n_cfg = (int)avail;
    *first = *best = -1;
    *first_idx = -1;
    for (int64_t i = 0; i < got; i++) {
        cudnnBackendDescriptor_t plan = make(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
        SET(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &h);
        SET(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfgs[i]);
        if (cudnnBackendFinalize(plan) != CUDNN_STATUS_SUCCESS) {
            cudnnBackendDestroyDescriptor(plan);
            (void)cudaGetLastError();
            continue;
        }
        int64_t wsz = 0, g2 = 0;
        DK(cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &g2, &wsz));
        if ((size_t)wsz > b->ws_max) {
            cudnnBackendDestroyDescriptor(plan);
            continue;
        }
        cudnnBackendDescriptor_t vp = make(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
        int64_t uids[3] = {1, 2, 3};
        void *ptrs[3] = {b->x, b->w, b->y};
        SET(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, 3, uids);
        SET(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, 3, ptrs);
        SET(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &b->ws);
        DK(cudnnBackendFinalize(vp));
        struct gexec g = {h, plan, vp};
        double ms = time_graph(st, graph_call, &g);
        if (*first < 0) {
            *first = ms;
            cudnnBackendDescriptor_t eng = make(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
            int64_t c1 = 0;
            if (cudnnBackendGetAttribute(cfgs[i], CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c1,
                                         &eng) == CUDNN_STATUS_SUCCESS) {
                int64_t gi = -1;
                (void)cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &c1, &gi);
                *first_idx = (long long)gi;
            }
        }
        if (*best < 0 || ms < *best) *best = ms;
        cudnnBackendDestroyDescriptor(vp);
        cudnnBackendDestroyDescriptor(plan);
    }
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 8;
    cudnnHandle_t h;
    DK(cudnnCreate(&h));
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    DK(cudnnSetStream(h, st));
    printf("cuDNN %zu, batch %d, fp16 NHWC, beta 1\n", cudnnGetVersion(), n);
    struct bufs b;
    size_t big = (size_t)512 << 20;
    b.ws_max = (size_t)256 << 20;
    CK(cudaMalloc(&b.x, big));
    CK(cudaMalloc(&b.w, (size_t)64 << 20));
    CK(cudaMalloc(&b.y, big));
    CK(cudaMalloc(&b.ws, b.ws_max));
    CK(cudaMemset(b.x, 0x3c, big)); /* 1.06 in fp16: not zeros (zeros run faster on tensor cores) */
    CK(cudaMemset(b.w, 0x2c, (size_t)64 << 20)); /* 0.066 */
    CK(cudaMemset(b.y, 0, big));
    void *bias, *res;
    CK(cudaMalloc(&bias, 1 << 16));
    CK(cudaMalloc(&res, big));
    CK(cudaMemset(bias, 0, 1 << 16));
    CK(cudaMemset(res, 0, big));
    double tl = 0, tf = 0, tb = 0, tk = 0, tz = 0;
    printf("%6s %4s %6s %2s %3s | %9s | %9s %6s %4s | %9s\n", "c", "hw", "o", "s", "n", "legacy", "graph 1st", "engine",
           "cfgs", "graph best");
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const struct shape *s = &shapes[i];
        double l = time_legacy(h, st, n, s, &b), f, be;
        int nc;
        long long gi;
        time_graph_api(h, st, n, s, &b, &f, &be, &nc, &gi);
        double kf, zf;
        time_fused(h, st, n, s, &b, bias, res, &kf, &zf);
        printf("%6d %4d %6d %2d %3d | %9.4f | %9.4f %6lld %4d | %9.4f | fill+conv %7.4f, cuDNN conv+bias+z %7.4f\n",
               s->c, s->hw, s->o, s->stride, s->count, l, f, gi, nc, be, kf, zf);
        tk += kf * s->count;
        tz += zf * s->count;
        tl += l * s->count;
        tf += f * s->count;
        tb += be * s->count;
    }
    printf("one evaluation's 3x3 convolutions: legacy %.3f ms, graph API first %.3f ms, graph API best of 8 %.3f ms\n",
           tl, tf, tb);
    printf("with a bias and a residual: kiln's fill + conv %.3f ms, cuDNN's conv + bias + z %.3f ms\n", tk, tz);
    return 0;
}
