/* bench/conv_layout.cu -- times every 3x3 convolution of one SD 1.5 UNet evaluation (64x64
 * latent) through cuDNN with NCHW tensors and with NHWC tensors, fp16 data, fp32 accumulation,
 * the heuristics' first GEMM-family algorithm, as tensor/cuda/conv.cu chooses it, 20 calls
 * replayed as one CUDA graph (kiln captures its UNet the same way). Answers one
 * question: what do channels-last activations save on this GPU?
 * Build: nvcc -O2 -arch=sm_90 -o build/conv_layout bench/conv_layout.cu -lcudnn
 * Run:   build/conv_layout [batch ...]      (default: 2 8) */
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <stdio.h>
#include <stdlib.h>

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

/* the 3x3 convolutions of the SD 1.5 UNet at a 64x64 latent: input channels, input size,
 * output channels, stride, how many per evaluation */
static const struct shape shapes[] = {
    {4, 64, 320, 1, 1},     {320, 64, 320, 1, 4},   {320, 64, 320, 2, 1},   {320, 32, 640, 1, 1},
    {640, 32, 640, 1, 3},   {640, 32, 640, 2, 1},   {640, 16, 1280, 1, 1},  {1280, 16, 1280, 1, 3},
    {1280, 16, 1280, 2, 1}, {1280, 8, 1280, 1, 11},  {2560, 8, 1280, 1, 3},  {1280, 16, 1280, 1, 1},
    {2560, 16, 1280, 1, 2}, {1920, 16, 1280, 1, 1}, {1280, 16, 1280, 1, 3}, {1280, 32, 1280, 1, 1},
    {1920, 32, 640, 1, 1},  {1280, 32, 640, 1, 1},  {960, 32, 640, 1, 1},   {640, 32, 640, 1, 3},
    {640, 64, 640, 1, 1},   {960, 64, 320, 1, 1},   {640, 64, 320, 1, 2},   {320, 64, 320, 1, 3},
    {320, 64, 4, 1, 1},
};

static double time_one(cudnnHandle_t h, int n, const struct shape *s, cudnnTensorFormat_t fmt, void *x, void *w,
                       void *y, void *ws, size_t ws_max, double *flop, const char **algo_out) {
    cudnnTensorDescriptor_t xd, yd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd;
    DK(cudnnCreateTensorDescriptor(&xd));
    DK(cudnnCreateTensorDescriptor(&yd));
    DK(cudnnCreateFilterDescriptor(&wd));
    DK(cudnnCreateConvolutionDescriptor(&cd));
    DK(cudnnSetTensor4dDescriptor(xd, fmt, CUDNN_DATA_HALF, n, s->c, s->hw, s->hw));
    DK(cudnnSetFilter4dDescriptor(wd, CUDNN_DATA_HALF, fmt, s->o, s->c, 3, 3));
    DK(cudnnSetConvolution2dDescriptor(cd, 1, 1, s->stride, s->stride, 1, 1, CUDNN_CROSS_CORRELATION,
                                       CUDNN_DATA_FLOAT));
    DK(cudnnSetConvolutionMathType(cd, CUDNN_TENSOR_OP_MATH));
    int on, oc, oh, ow;
    DK(cudnnGetConvolution2dForwardOutputDim(cd, xd, wd, &on, &oc, &oh, &ow));
    DK(cudnnSetTensor4dDescriptor(yd, fmt, CUDNN_DATA_HALF, on, oc, oh, ow));
    cudnnConvolutionFwdAlgoPerf_t perf[16];
    int np = 0;
    DK(cudnnGetConvolutionForwardAlgorithm_v7(h, xd, wd, cd, yd, 16, &np, perf));
    int pick = -1;
    for (int i = 0; i < np && pick < 0; i++) {
        cudnnConvolutionFwdAlgo_t a = perf[i].algo;
        bool gemm = a == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM || a == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM ||
                    a == CUDNN_CONVOLUTION_FWD_ALGO_GEMM || a == CUDNN_CONVOLUTION_FWD_ALGO_DIRECT;
        if (perf[i].status == CUDNN_STATUS_SUCCESS && gemm && perf[i].memory <= ws_max) pick = i;
    }
    if (pick < 0) {
        fprintf(stderr, "no algorithm for c %d hw %d o %d\n", s->c, s->hw, s->o);
        exit(1);
    }
    DK(cudnnSetConvolutionMathType(cd, perf[pick].mathType));
    static const char *names[] = {"implicit_gemm", "implicit_precomp_gemm", "gemm", "direct"};
    *algo_out = (int)perf[pick].algo < 4 ? names[perf[pick].algo] : "?";
    float alpha = 1.0f, beta = 1.0f;
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int i = 0; i < 3; i++)
        DK(cudnnConvolutionForward(h, &alpha, xd, x, wd, w, cd, perf[pick].algo, ws, ws_max, &beta, yd, y));
    /* captured as one CUDA graph, as kiln runs a UNet: no host time between the convolutions */
    const int reps = 20;
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    DK(cudnnSetStream(h, st));
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < reps; i++)
        DK(cudnnConvolutionForward(h, &alpha, xd, x, wd, w, cd, perf[pick].algo, ws, ws_max, &beta, yd, y));
    CK(cudaStreamEndCapture(st, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    CK(cudaGraphLaunch(ge, st));
    CK(cudaEventRecord(e0, st));
    CK(cudaGraphLaunch(ge, st));
    CK(cudaEventRecord(e1, st));
    CK(cudaEventSynchronize(e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    *flop = 2.0 * n * oc * oh * ow * (double)s->c * 9;
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);
    DK(cudnnSetStream(h, 0));
    cudaStreamDestroy(st);
    cudnnDestroyTensorDescriptor(xd);
    cudnnDestroyTensorDescriptor(yd);
    cudnnDestroyFilterDescriptor(wd);
    cudnnDestroyConvolutionDescriptor(cd);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return ms / reps;
}

int main(int argc, char **argv) {
    int batches[8] = {2, 8}, nb = 2;
    if (argc > 1) {
        nb = 0;
        for (int i = 1; i < argc && nb < 8; i++) batches[nb++] = atoi(argv[i]);
    }
    cudnnHandle_t h;
    DK(cudnnCreate(&h));
    size_t big = (size_t)512 << 20, ws_max = (size_t)256 << 20;
    void *x, *w, *y, *ws;
    CK(cudaMalloc(&x, big));
    CK(cudaMalloc(&w, (size_t)64 << 20));
    CK(cudaMalloc(&y, big));
    CK(cudaMalloc(&ws, ws_max));
    CK(cudaMemset(x, 0, big));
    CK(cudaMemset(w, 0, (size_t)64 << 20));
    CK(cudaMemset(y, 0, big));
    for (int b = 0; b < nb; b++) {
        int n = batches[b];
        double tot[2] = {0, 0}, flops = 0;
        printf("batch %d\n%6s %4s %6s %2s %3s | %9s %-22s | %9s %-22s | %s\n", n, "c", "hw", "o", "s", "n", "NCHW ms",
               "algo", "NHWC ms", "algo", "NHWC TFLOP/s");
        for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
            const struct shape *s = &shapes[i];
            double f = 0, t[2];
            const char *a[2];
            t[0] = time_one(h, n, s, CUDNN_TENSOR_NCHW, x, w, y, ws, ws_max, &f, &a[0]);
            t[1] = time_one(h, n, s, CUDNN_TENSOR_NHWC, x, w, y, ws, ws_max, &f, &a[1]);
            printf("%6d %4d %6d %2d %3d | %9.4f %-22s | %9.4f %-22s | %.0f\n", s->c, s->hw, s->o, s->stride, s->count,
                   t[0], a[0], t[1], a[1], f / (t[1] * 1e-3) / 1e12);
            tot[0] += t[0] * s->count;
            tot[1] += t[1] * s->count;
            flops += f * s->count;
        }
        printf("batch %d: all 3x3 convs of one evaluation: NCHW %.3f ms (%.0f TFLOP/s), NHWC %.3f ms (%.0f TFLOP/s), "
               "%.2f TFLOP\n\n",
               n, tot[0], flops / (tot[0] * 1e-3) / 1e12, tot[1], flops / (tot[1] * 1e-3) / 1e12, flops / 1e12);
    }
    return 0;
}
