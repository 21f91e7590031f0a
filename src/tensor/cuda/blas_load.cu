/* tensor/cuda/blas_load.cu -- cuBLAS and cuBLASLt opened at run time (dlopen) instead of linked:
 * the functions kiln calls are defined here under their own names, and each goes through a
 * pointer that the one load fills.
 * Owns: the two library handles and the function table (process-wide on purpose: the libraries
 * are loaded once and never unloaded), and the preload thread.
 * Threads: any. The load runs once (pthread_once); a call made while it runs waits for it.
 * WHY. A process linked with libcublasLt (542 MB) spends 0.49-0.59 s before main with a cold page
 * cache (0.09 s warm) in the library's start-up, on an H100 machine (an empty program linked with
 * it alone, docs/PERF.md): that time came before `kiln serve` could answer or read a checkpoint.
 * Opened by a thread that `kiln serve` starts once its HTTP server listens (backend_cuda_preload;
 * a dlopen holds the dynamic linker's lock while the library starts up, so the CUDA count's,
 * NVML's and the HTTP server's own dlopen calls would wait behind it), the libraries load while
 * the first prompt is accepted and read and the GPUs make their contexts; a GPU's worker waits
 * for the load only when it makes its cuBLAS handle.
 * The libraries are looked up as the dynamic linker would (LD_LIBRARY_PATH, the executable's run
 * path, the system's cache), then in the toolkit folder kiln was built against
 * (KILN_CUDA_LIB_DIR). A missing library or function is an error of the device's open, with
 * dlerror's text; every wrapper then returns CUBLAS_STATUS_NOT_INITIALIZED. */
#include "tensor/cuda/cuda.cuh"

extern "C" {
#include "base/log.h"
}

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define BLAS_STR2(x) #x
#define BLAS_STR(x) BLAS_STR2(x)

/* X(library: 0 cuBLAS, 1 cuBLASLt, return type, name as exported, (parameters), (arguments),
 *   value when the library is missing) */
#define BLAS_FUNCS(X)                                                                                                  \
    X(0, cublasStatus_t, cublasCreate_v2, (cublasHandle_t * h), (h), CUBLAS_STATUS_NOT_INITIALIZED)                    \
    X(0, cublasStatus_t, cublasDestroy_v2, (cublasHandle_t h), (h), CUBLAS_STATUS_NOT_INITIALIZED)                     \
    X(0, cublasStatus_t, cublasSetStream_v2, (cublasHandle_t h, cudaStream_t s), (h, s),                               \
      CUBLAS_STATUS_NOT_INITIALIZED)                                                                                   \
    X(0, cublasStatus_t, cublasSetMathMode, (cublasHandle_t h, cublasMath_t m), (h, m), CUBLAS_STATUS_NOT_INITIALIZED) \
    X(0, const char *, cublasGetStatusName, (cublasStatus_t s), (s), "CUBLAS_NOT_LOADED")                             \
    X(0, const char *, cublasGetStatusString, (cublasStatus_t s), (s), "cuBLAS could not be loaded")                   \
    X(0, cublasStatus_t, cublasSgemm_v2,                                                                               \
      (cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const float *alpha,          \
       const float *A, int lda, const float *B, int ldb, const float *beta, float *C, int ldc),                        \
      (h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc), CUBLAS_STATUS_NOT_INITIALIZED)                        \
    X(0, cublasStatus_t, cublasSgemmStridedBatched,                                                                    \
      (cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const float *alpha,          \
       const float *A, int lda, long long sa, const float *B, int ldb, long long sb, const float *beta, float *C,      \
       int ldc, long long sc, int batch),                                                                              \
      (h, ta, tb, m, n, k, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch), CUBLAS_STATUS_NOT_INITIALIZED)     \
    X(0, cublasStatus_t, cublasGemmEx,                                                                                 \
      (cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void *alpha,           \
       const void *A, cudaDataType at, int lda, const void *B, cudaDataType bt, int ldb, const void *beta, void *C,    \
       cudaDataType ct, int ldc, cublasComputeType_t comp, cublasGemmAlgo_t algo),                                     \
      (h, ta, tb, m, n, k, alpha, A, at, lda, B, bt, ldb, beta, C, ct, ldc, comp, algo),                               \
      CUBLAS_STATUS_NOT_INITIALIZED)                                                                                   \
    X(0, cublasStatus_t, cublasGemmStridedBatchedEx,                                                                   \
      (cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void *alpha,           \
       const void *A, cudaDataType at, int lda, long long sa, const void *B, cudaDataType bt, int ldb, long long sb,    \
       const void *beta, void *C, cudaDataType ct, int ldc, long long sc, int batch, cublasComputeType_t comp,         \
       cublasGemmAlgo_t algo),                                                                                         \
      (h, ta, tb, m, n, k, alpha, A, at, lda, sa, B, bt, ldb, sb, beta, C, ct, ldc, sc, batch, comp, algo),            \
      CUBLAS_STATUS_NOT_INITIALIZED)                                                                                   \
    X(1, cublasStatus_t, cublasLtCreate, (cublasLtHandle_t * h), (h), CUBLAS_STATUS_NOT_INITIALIZED)                   \
    X(1, cublasStatus_t, cublasLtDestroy, (cublasLtHandle_t h), (h), CUBLAS_STATUS_NOT_INITIALIZED)                    \
    X(1, cublasStatus_t, cublasLtMatmul,                                                                               \
      (cublasLtHandle_t h, cublasLtMatmulDesc_t op, const void *alpha, const void *A, cublasLtMatrixLayout_t ad,       \
       const void *B, cublasLtMatrixLayout_t bd, const void *beta, const void *C, cublasLtMatrixLayout_t cd, void *D,  \
       cublasLtMatrixLayout_t dd, const cublasLtMatmulAlgo_t *algo, void *ws, size_t ws_size, cudaStream_t s),        \
      (h, op, alpha, A, ad, B, bd, beta, C, cd, D, dd, algo, ws, ws_size, s), CUBLAS_STATUS_NOT_INITIALIZED)           \
    X(1, cublasStatus_t, cublasLtMatmulAlgoGetHeuristic,                                                               \
      (cublasLtHandle_t h, cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t ad, cublasLtMatrixLayout_t bd,              \
       cublasLtMatrixLayout_t cd, cublasLtMatrixLayout_t dd, cublasLtMatmulPreference_t pref, int want,                \
       cublasLtMatmulHeuristicResult_t results[], int *got),                                                           \
      (h, op, ad, bd, cd, dd, pref, want, results, got), CUBLAS_STATUS_NOT_INITIALIZED)                                \
    X(1, cublasStatus_t, cublasLtMatmulDescCreate,                                                                     \
      (cublasLtMatmulDesc_t * d, cublasComputeType_t comp, cudaDataType_t scale), (d, comp, scale),                    \
      CUBLAS_STATUS_NOT_INITIALIZED)                                                                                   \
    X(1, cublasStatus_t, cublasLtMatmulDescDestroy, (cublasLtMatmulDesc_t d), (d), CUBLAS_STATUS_NOT_INITIALIZED)      \
    X(1, cublasStatus_t, cublasLtMatmulDescSetAttribute,                                                               \
      (cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a, const void *buf, size_t n), (d, a, buf, n),           \
      CUBLAS_STATUS_NOT_INITIALIZED)                                                                                   \
    X(1, cublasStatus_t, cublasLtMatmulPreferenceCreate, (cublasLtMatmulPreference_t * p), (p),                        \
      CUBLAS_STATUS_NOT_INITIALIZED)                                                                                   \
    X(1, cublasStatus_t, cublasLtMatmulPreferenceDestroy, (cublasLtMatmulPreference_t p), (p),                         \
      CUBLAS_STATUS_NOT_INITIALIZED)                                                                                   \
    X(1, cublasStatus_t, cublasLtMatmulPreferenceSetAttribute,                                                         \
      (cublasLtMatmulPreference_t p, cublasLtMatmulPreferenceAttributes_t a, const void *buf, size_t n),               \
      (p, a, buf, n), CUBLAS_STATUS_NOT_INITIALIZED)                                                                   \
    X(1, cublasStatus_t, cublasLtMatrixLayoutCreate,                                                                   \
      (cublasLtMatrixLayout_t * l, cudaDataType t, uint64_t rows, uint64_t cols, int64_t ld), (l, t, rows, cols, ld),  \
      CUBLAS_STATUS_NOT_INITIALIZED)                                                                                   \
    X(1, cublasStatus_t, cublasLtMatrixLayoutDestroy, (cublasLtMatrixLayout_t l), (l), CUBLAS_STATUS_NOT_INITIALIZED)

/* the function table: one pointer per function, typed */
#define BLAS_POINTER(lib, ret, name, params, args, missing) static ret(*p_##name) params;
BLAS_FUNCS(BLAS_POINTER)

static pthread_once_t blas_once = PTHREAD_ONCE_INIT;
static char blas_error[512]; /* why the load failed, or "" */

/* dlopen of lib.so.MAJOR as the dynamic linker would find it, else in the build's toolkit folder. */
static void *blas_open(const char *base) {
    char name[128], path[1024];
    snprintf(name, sizeof name, "%s.so.%s", base, BLAS_STR(CUBLAS_VER_MAJOR));
    void *h = dlopen(name, RTLD_NOW | RTLD_GLOBAL);
#ifdef KILN_CUDA_LIB_DIR
    if (!h) {
        snprintf(path, sizeof path, "%s/%s", KILN_CUDA_LIB_DIR, name);
        h = dlopen(path, RTLD_NOW | RTLD_GLOBAL);
    }
#else
    (void)path;
#endif
    if (!h) snprintf(blas_error, sizeof blas_error, "cannot load %s: %s", name, dlerror());
    return h;
}

static void blas_load(void) {
    void *libs[2] = {NULL, NULL};
    libs[1] = blas_open("libcublasLt");
    if (libs[1]) libs[0] = blas_open("libcublas");
    if (!libs[0] || !libs[1]) return;
#define BLAS_RESOLVE(lib, ret, name, params, args, missing)                                                            \
    if (!blas_error[0]) {                                                                                              \
        p_##name = (ret(*) params)dlsym(libs[lib], #name);                                                             \
        if (!p_##name)                                                                                                 \
            snprintf(blas_error, sizeof blas_error, "%s has no %s: %s", lib ? "libcublasLt" : "libcublas", #name,     \
                     dlerror());                                                                                       \
    }
    BLAS_FUNCS(BLAS_RESOLVE)
#undef BLAS_RESOLVE
}

int cuda__blas_load(struct err *err) {
    pthread_once(&blas_once, blas_load);
    if (blas_error[0]) return err_set(err, STATUS_ERR_DEVICE, "cuda backend: %s (cuBLAS %d is needed)", blas_error,
                                      CUBLAS_VER_MAJOR);
    return 0;
}

static void *blas_preload(void *arg) {
    (void)arg;
    pthread_once(&blas_once, blas_load);
    return NULL;
}

extern "C" void backend_cuda_preload(void) {
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &attr, blas_preload, NULL) != 0) log_debug("cuda backend: no thread to load cuBLAS ahead");
    pthread_attr_destroy(&attr);
}

/* the functions under their own names: the load first, then the library's */
#define BLAS_WRAPPER(lib, ret, name, params, args, missing)                                                            \
    extern "C" ret name params {                                                                                       \
        pthread_once(&blas_once, blas_load);                                                                           \
        return p_##name ? p_##name args : missing;                                                                     \
    }
BLAS_FUNCS(BLAS_WRAPPER)
