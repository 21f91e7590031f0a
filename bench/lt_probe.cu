/* bench/lt_probe.cu -- times every cuBLASLt algorithm the heuristics offer (up to 16) for each
 * linear of one SD 1.5 UNet evaluation (64x64 latent, batch B: M = B * tokens), F16 in and out,
 * fp32 compute, bias epilogue where the model has a bias, column-major D [N, M] = W^T x as
 * tensor/cuda/matmul.cu makes it. Prints the heuristics' first choice (what kiln runs) against
 * the fastest, and the sum over an evaluation's linears. Answers: what would choosing cuBLASLt's
 * algorithm by timing save? And (the "qkv as one" rows) what would self-attention's three
 * projections as one product of 3C outputs save?
 * Build: nvcc -O2 -arch=sm_90 -o build/lt_probe bench/lt_probe.cu -lcublasLt
 * Run:   build/lt_probe [batch [v]]   (default 8; v: every candidate with its configuration) */
#include <cublasLt.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdio.h>
#include <stdlib.h>

#define CK(x)                                                                                      \
    do {                                                                                           \
        int e_ = (int)(x);                                                                         \
        if (e_ != 0) {                                                                             \
            fprintf(stderr, "%s:%d: error %d\n", __FILE__, __LINE__, e_);                          \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

#define WS_BYTES ((size_t)32 << 20)
#define MAX_ALGOS 16

struct shape {
    const char *what;
    long m_tokens; /* tokens per image (M = batch * tokens) */
    int k, n, bias, count; /* count: how many per evaluation */
};

int main(int argc, char **argv) {
    int batch = argc > 1 ? atoi(argv[1]) : 8;
    bool verbose = argc > 2 && argv[2][0] == 'v'; /* every candidate's time and configuration */
    /* per transformer block: proj_in, q k v, out, (cross) q, k v over 77 tokens, out, ff in
       (GEGLU, 8C), ff out, proj_out; blocks: 5 at C=320/4096 tokens, 5 at 640/1024, 5 at
       1280/256, 1 at 1280/64 */
    const struct shape shapes[] = {
        {"C320 proj/out", 4096, 320, 320, 1, 5 * 4}, {"C320 q k v", 4096, 320, 320, 0, 5 * 4},
        {"C320 ctx k v", 77, 768, 320, 0, 5 * 2},    {"C320 ff in", 4096, 320, 2560, 1, 5},
        {"C320 ff out", 4096, 1280, 320, 1, 5},      {"C640 proj/out", 1024, 640, 640, 1, 5 * 4},
        {"C640 q k v", 1024, 640, 640, 0, 5 * 4},    {"C640 ctx k v", 77, 768, 640, 0, 5 * 2},
        {"C640 ff in", 1024, 640, 5120, 1, 5},       {"C640 ff out", 1024, 2560, 640, 1, 5},
        {"C1280 proj/out", 256, 1280, 1280, 1, 5 * 4}, {"C1280 q k v", 256, 1280, 1280, 0, 5 * 4},
        {"C1280 ctx k v", 77, 768, 1280, 0, 6 * 2},  {"C1280 ff in", 256, 1280, 10240, 1, 5},
        {"C1280 ff out", 256, 5120, 1280, 1, 5},     {"C1280/64 proj/out", 64, 1280, 1280, 1, 4},
        {"C1280/64 q k v", 64, 1280, 1280, 0, 4},    {"C1280/64 ff in", 64, 1280, 10240, 1, 1},
        {"C1280/64 ff out", 64, 5120, 1280, 1, 1},
        /* self-attention's q, k, v as one product of 3C outputs (count 0: not in the sums; compare
           with three of "q k v") */
        {"C320 qkv as one", 4096, 320, 960, 0, 0},   {"C640 qkv as one", 1024, 640, 1920, 0, 0},
        {"C1280 qkv as one", 256, 1280, 3840, 0, 0}, {"C1280/64 qkv as one", 64, 1280, 3840, 0, 0},
    };
    cublasLtHandle_t lt;
    CK(cublasLtCreate(&lt));
    void *ws;
    CK(cudaMalloc(&ws, WS_BYTES));
    cudaStream_t st;
    CK(cudaStreamCreate(&st));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    double sum_first = 0, sum_best = 0;
    printf("batch %d\n%-20s %8s %6s %6s %10s %10s %5s\n", batch, "linear", "M", "K", "N", "first ms", "best ms", "rank");
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const struct shape *s = &shapes[si];
        long m = (long)batch * s->m_tokens;
        __half *x, *w, *y, *b;
        CK(cudaMalloc(&x, (size_t)m * s->k * 2));
        CK(cudaMalloc(&w, (size_t)s->n * s->k * 2));
        CK(cudaMalloc(&y, (size_t)m * s->n * 2));
        CK(cudaMalloc(&b, (size_t)s->n * 2));
        CK(cudaMemset(x, 0x3c, (size_t)m * s->k * 2)); /* 1.06 in fp16: not zeros */
        CK(cudaMemset(w, 0x2c, (size_t)s->n * s->k * 2));
        cublasLtMatmulDesc_t op;
        CK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        int32_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
        CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
        CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
        uint32_t epi = s->bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
        CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
        if (s->bias) CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &b, sizeof b));
        cublasLtMatrixLayout_t la, lb, ld;
        CK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16F, s->k, s->n, s->k));
        CK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16F, s->k, m, s->k));
        CK(cublasLtMatrixLayoutCreate(&ld, CUDA_R_16F, s->n, m, s->n));
        cublasLtMatmulPreference_t pref;
        CK(cublasLtMatmulPreferenceCreate(&pref));
        uint64_t wsb = WS_BYTES;
        uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
        CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb));
        CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes,
                                                sizeof schemes));
        cublasLtMatmulHeuristicResult_t r[MAX_ALGOS];
        int found = 0;
        CK(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, ld, ld, pref, MAX_ALGOS, r, &found));
        double first = -1, best = 1e30;
        int best_i = -1;
        const float one = 1, zero = 0;
        for (int i = 0; i < found; i++) {
            if (r[i].state != CUBLAS_STATUS_SUCCESS || r[i].workspaceSize > WS_BYTES) continue;
            for (int rep = 0; rep < 5; rep++)
                CK(cublasLtMatmul(lt, op, &one, w, la, x, lb, &zero, y, ld, y, ld, &r[i].algo, ws, WS_BYTES, st));
            const int reps = 50;
            CK(cudaEventRecord(e0, st));
            for (int rep = 0; rep < reps; rep++)
                CK(cublasLtMatmul(lt, op, &one, w, la, x, lb, &zero, y, ld, y, ld, &r[i].algo, ws, WS_BYTES, st));
            CK(cudaEventRecord(e1, st));
            CK(cudaEventSynchronize(e1));
            float ms;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            double t = ms / reps;
            if (verbose) { /* the candidate's configuration, to look for a rule that is not timing */
                int32_t id = -1, tile = -1, stages = -1, splitk = -1, red = -1, swz = -1;
                uint16_t cluster = 0;
                size_t w_;
                cublasLtMatmulAlgoConfigGetAttribute(&r[i].algo, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof id, &w_);
                cublasLtMatmulAlgoConfigGetAttribute(&r[i].algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile, &w_);
                cublasLtMatmulAlgoConfigGetAttribute(&r[i].algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof stages, &w_);
                cublasLtMatmulAlgoConfigGetAttribute(&r[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof splitk, &w_);
                cublasLtMatmulAlgoConfigGetAttribute(&r[i].algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &red, sizeof red, &w_);
                cublasLtMatmulAlgoConfigGetAttribute(&r[i].algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, &swz, sizeof swz, &w_);
                cublasLtMatmulAlgoConfigGetAttribute(&r[i].algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster, sizeof cluster, &w_);
                printf("    #%2d %8.4f ms  algo %3d tile %3d stages %3d splitk %2d red %d swizzle %d cluster %2d waves %.3f ws %zu\n",
                       i, t, id, tile, stages, splitk, red, swz, (int)cluster, r[i].wavesCount, r[i].workspaceSize);
            }
            if (i == 0) first = t;
            if (t < best) {
                best = t;
                best_i = i;
            }
        }
        printf("%-20s %8ld %6d %6d %10.4f %10.4f %5d\n", s->what, m, s->k, s->n, first, best, best_i);
        sum_first += first * s->count;
        sum_best += best * s->count;
        cublasLtMatmulPreferenceDestroy(pref);
        cublasLtMatrixLayoutDestroy(la);
        cublasLtMatrixLayoutDestroy(lb);
        cublasLtMatrixLayoutDestroy(ld);
        cublasLtMatmulDescDestroy(op);
        cudaFree(x);
        cudaFree(w);
        cudaFree(y);
        cudaFree(b);
    }
    printf("one evaluation's linears: heuristics' first %.3f ms, fastest each %.3f ms\n", sum_first, sum_best);
    return 0;
}
