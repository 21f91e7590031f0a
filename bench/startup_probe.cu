/* bench/startup_probe.cu -- times what a fresh process pays before its first convolution,
 * product and attention-free kernel on a GPU: CUDA's context, cuBLAS's and cuDNN's handles, the
 * first cuDNN heuristics query (cuDNN loads its engine libraries there), the first products.
 * Sequentially, or with the library steps on three threads at once ("par"), to answer one
 * question: does kiln's device open + warm-up shrink if its first-use costs run side by side?
 * Run it right after dropping the page cache to see the cold-disk figure.
 * "fixed" skips cuDNN's heuristics query (the algorithm named instead) and lists the cuDNN
 * libraries the process has mapped after the first convolution: does the heuristics library
 * load at all then?
 * Build: nvcc -O2 -arch=sm_90 -o build/startup_probe bench/startup_probe.cu -lcublas -lcublasLt -lcudnn
 * Run:   build/startup_probe seq|par|fixed */
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double t_start;
static void mark(const char *what, double t0) {
    printf("%8.3f s  %6.3f s  %s\n", now() - t_start, now() - t0, what);
    fflush(stdout);
}

#define CK(x)                                                                                      \
    do {                                                                                           \
        int e_ = (int)(x);                                                                         \
        if (e_ != 0) {                                                                             \
            fprintf(stderr, "%s:%d: error %d\n", __FILE__, __LINE__, e_);                          \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

/* cuBLAS: handle and one F32 product */
static void *blas(void *) {
    double t = now();
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cublasHandle_t h;
    CK(cublasCreate(&h));
    CK(cublasSetStream(h, s));
    mark("cublasCreate", t);
    t = now();
    float *a;
    CK(cudaMalloc(&a, 3 * 128 * 128 * sizeof(float)));
    const float one = 1, zero = 0;
    CK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 128, 128, 128, &one, a, 128, a + 16384, 128, &zero, a + 32768, 128));
    CK(cudaStreamSynchronize(s));
    mark("first cublasSgemm", t);
    return NULL;
}

/* cuBLASLt: handle and one F16 product */
static void *lt(void *) {
    double t = now();
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cublasLtHandle_t h;
    CK(cublasLtCreate(&h));
    mark("cublasLtCreate", t);
    t = now();
    cublasLtMatmulDesc_t op;
    CK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasLtMatrixLayout_t l;
    CK(cublasLtMatrixLayoutCreate(&l, CUDA_R_16F, 128, 128, 128));
    cublasLtMatmulPreference_t pref;
    CK(cublasLtMatmulPreferenceCreate(&pref));
    cublasLtMatmulHeuristicResult_t r;
    int n = 0;
    CK(cublasLtMatmulAlgoGetHeuristic(h, op, l, l, l, l, pref, 1, &r, &n));
    __half *a;
    CK(cudaMalloc(&a, 3 * 128 * 128 * sizeof(__half)));
    const float one = 1, zero = 0;
    CK(cublasLtMatmul(h, op, &one, a, l, a + 16384, l, &zero, a + 32768, l, a + 32768, l, &r.algo, NULL, 0, s));
    CK(cudaStreamSynchronize(s));
    mark("first cublasLtMatmul (F16)", t);
    return NULL;
}

static bool fixed_algo; /* "fixed": no heuristics query, IMPLICIT_PRECOMP_GEMM named */

/* The cuDNN libraries mapped into the process, one line. */
static void mapped_dnn(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return;
    char line[1024], seen[4096] = "";
    while (fgets(line, sizeof line, f)) {
        char *p = strstr(line, "libcudnn");
        if (!p) continue;
        p[strcspn(p, "\n")] = 0;
        if (!strstr(seen, p) && strlen(seen) + strlen(p) + 2 < sizeof seen) {
            strcat(seen, p);
            strcat(seen, " ");
        }
    }
    fclose(f);
    printf("           mapped: %s\n", seen);
}

/* cuDNN: handle, the first heuristics query and one convolution, F32 then F16 */
static void *dnn(void *) {
    double t = now();
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cudnnHandle_t h;
    CK(cudnnCreate(&h));
    CK(cudnnSetStream(h, s));
    mark("cudnnCreate", t);
    for (int f16 = 0; f16 < 2; f16++) {
        cudnnDataType_t dt = f16 ? CUDNN_DATA_HALF : CUDNN_DATA_FLOAT;
        t = now();
        cudnnTensorDescriptor_t x, y;
        cudnnFilterDescriptor_t w;
        cudnnConvolutionDescriptor_t c;
        CK(cudnnCreateTensorDescriptor(&x));
        CK(cudnnCreateTensorDescriptor(&y));
        CK(cudnnCreateFilterDescriptor(&w));
        CK(cudnnCreateConvolutionDescriptor(&c));
        CK(cudnnSetTensor4dDescriptor(x, CUDNN_TENSOR_NHWC, dt, 1, 32, 8, 8));
        CK(cudnnSetTensor4dDescriptor(y, CUDNN_TENSOR_NHWC, dt, 1, 32, 8, 8));
        CK(cudnnSetFilter4dDescriptor(w, dt, CUDNN_TENSOR_NHWC, 32, 32, 3, 3));
        CK(cudnnSetConvolution2dDescriptor(c, 1, 1, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
        CK(cudnnSetConvolutionMathType(c, CUDNN_TENSOR_OP_MATH));
        cudnnConvolutionFwdAlgoPerf_t perf[8];
        int n = 0;
        if (fixed_algo) {
            perf[0].algo = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM;
        } else {
            CK(cudnnGetConvolutionForwardAlgorithm_v7(h, x, w, c, y, 8, &n, perf));
            mark(f16 ? "first heuristics query, F16" : "first heuristics query, F32", t);
        }
        t = now();
        size_t ws = 0;
        CK(cudnnGetConvolutionForwardWorkspaceSize(h, x, w, c, y, perf[0].algo, &ws));
        void *buf;
        CK(cudaMalloc(&buf, 1 << 20));
        void *wsp = NULL;
        if (ws) CK(cudaMalloc(&wsp, ws));
        const float one = 1, zero = 0;
        CK(cudnnConvolutionForward(h, &one, x, buf, w, (char *)buf + 65536, c, perf[0].algo, wsp, ws, &zero, y,
                                   (char *)buf + 131072));
        CK(cudaStreamSynchronize(s));
        mark(f16 ? "first convolution, F16" : "first convolution, F32", t);
        mapped_dnn();
    }
    return NULL;
}

int main(int argc, char **argv) {
    t_start = now();
    bool par = argc > 1 && strcmp(argv[1], "par") == 0;
    fixed_algo = argc > 1 && strcmp(argv[1], "fixed") == 0;
    double t = now();
    int n = 0;
    CK(cudaGetDeviceCount(&n));
    mark("cudaGetDeviceCount (cuInit)", t);
    t = now();
    CK(cudaSetDevice(0));
    CK(cudaFree(0));
    mark("context", t);
    t = now();
    if (par) {
        pthread_t th[3];
        void *(*fn[3])(void *) = {dnn, blas, lt};
        for (int i = 0; i < 3; i++) pthread_create(&th[i], NULL, fn[i], NULL);
        for (int i = 0; i < 3; i++) pthread_join(th[i], NULL);
    } else {
        dnn(NULL);
        blas(NULL);
        lt(NULL);
    }
    mark(par ? "all three libraries (side by side)" : "all three libraries (one after another)", t);
    return 0;
}
