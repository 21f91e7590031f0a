/* tensor/cpu/cpu.h -- the CPU backend's internals: context and one entry per op.
 * Owns: nothing; declarations shared by the files of tensor/cpu/.
 * Threads: the worker that owns the backend; kernels parallelise inside with OpenMP.
 * Every entry computes dst from dst->src[] and dst->ip/fp (see tensor.h for each op's
 * contract), in fp32, and returns 0 or a negative status (with a message in err).
 * Files: elementwise.c (add .. geglu), matmul.c (linear, task grids), conv.c and
 * conv_winograd.c, norm.c (group/layer norm), attention.c and attention_avx512.c, layout.c
 * (transpose, upsample, concat, get_rows), vec.c + vec_avx2.c (vector maths), work.c (the
 * kernels' scratch buffer), blas.c (OpenBLAS's kernel choice and threads). */
#ifndef KILN_CPU_H
#define KILN_CPU_H

#include "tensor/tensor.h"

#include <stdbool.h>
#include <stdint.h>

struct cpu_ctx {
    int n_threads;    /* OpenMP threads of the kernels (OpenBLAS itself runs single-threaded) */
    void *work;       /* kernel scratch (im2col, Winograd, attention blocks), grown on demand, or NULL */
    size_t work_size; /* bytes in work */
};

int cpu_op_add(struct cpu_ctx *ctx, struct tensor *dst, struct err *err);
int cpu_op_mul(struct cpu_ctx *ctx, struct tensor *dst, struct err *err);
int cpu_op_scale(struct cpu_ctx *ctx, struct tensor *dst, struct err *err);
int cpu_op_silu(struct cpu_ctx *ctx, struct tensor *dst, struct err *err);
int cpu_op_gelu(struct cpu_ctx *ctx, struct tensor *dst, struct err *err);
int cpu_op_quick_gelu(struct cpu_ctx *ctx, struct tensor *dst, struct err *err);
int cpu_op_geglu(struct cpu_ctx *ctx, struct tensor *dst, struct err *err);
int cpu_op_linear(struct cpu_ctx *ctx, struct tensor *dst, struct err *err);
int cpu_op_conv2d(struct cpu_ctx *ctx, struct tensor *dst, struct err *err);
int cpu_op_group_norm(struct cpu_ctx *ctx, struct tensor *dst, struct err *err);
int cpu_op_layer_norm(struct cpu_ctx *ctx, struct tensor *dst, struct err *err);
int cpu_op_attention(struct cpu_ctx *ctx, struct tensor *dst, struct err *err);
int cpu_op_transpose(struct cpu_ctx *ctx, struct tensor *dst, struct err *err);
int cpu_op_upsample_nearest(struct cpu_ctx *ctx, struct tensor *dst, struct err *err);
int cpu_op_concat(struct cpu_ctx *ctx, struct tensor *dst, struct err *err);
int cpu_op_get_rows(struct cpu_ctx *ctx, struct tensor *dst, struct err *err);
int cpu_op_cast(struct cpu_ctx *ctx, struct tensor *dst, struct err *err);
int cpu_op_sample(struct cpu_ctx *ctx, struct tensor *dst, struct err *err);

/* ===== Scratch (work.c) ===== */

/* Default bound of the chunked kernels' scratch, in bytes (conv waves and Winograd chunks are
 * sized to fit it). */
#define CPU_WORK_MAX ((size_t)64 << 20)

/* The bound in force: CPU_WORK_MAX unless a test shrank it with cpu__work_max_force (bytes, or
 * 0 for the default) to reach the chunking paths with small shapes. Not thread-safe. */
size_t cpu__work_max(void);
void cpu__work_max_force(size_t bytes);

/* Returns ctx->work grown to at least size bytes (64-byte aligned). The buffer is the ctx's,
 * valid until the next cpu__work call; NULL with STATUS_ERR_NOMEM in err (naming `what`) when
 * the host is out of memory. */
void *cpu__work(struct cpu_ctx *ctx, size_t size, const char *what, struct err *err);
/* Frees the scratch (backend teardown). */
void cpu__work_free(struct cpu_ctx *ctx);

/* ===== OpenBLAS (blas.c) and task grids for products (matmul.c) =====
 * THREADING. The kernels parallelise only with OpenMP: a product is cut into tasks, each one a
 * single-threaded sgemm, so OpenBLAS's own thread pool never wakes (its threads spin for a
 * while after each threaded call and would compete with OpenMP's for the same cores). */

/* Sets OpenBLAS's thread count (graph_run sets 1: see THREADING). */
void cpu__blas_threads(int n);
/* The name of the kernels OpenBLAS chose ("SkylakeX", "Haswell", ...), for logs and tests. */
const char *cpu__blas_core(void);

/* How an M x N product is cut into mb x nb blocks of at most mblk x nblk. */
struct cpu_grid {
    int64_t mb, nb;     /* blocks along M and N */
    int64_t mblk, nblk; /* rows and columns per block (the last ones may be smaller) */
};

/* Picks the grid with at least `tasks` blocks (fewer only when blocks would get smaller than
 * min_m x min_n) that repacks the least: each block packs its A rows and B columns, so the
 * cost is nb * M + mb * N. */
void cpu__gemm_grid(int64_t m, int64_t n, int64_t tasks, int64_t min_m, int64_t min_n, struct cpu_grid *g);

/* ===== Vector maths (vec.c dispatches to vec_avx2.c when the CPU has AVX2 and FMA) =====
 * All take n >= 0 floats; y may equal x (in place) but must not overlap it otherwise. */

enum cpu_simd {
    CPU_SIMD_SCALAR, /* portable C with libm */
    CPU_SIMD_AVX2,   /* AVX2 + FMA intrinsics */
    CPU_SIMD_AVX512, /* AVX-512F (+ DQ) as well: the attention kernels of attention_avx512.c */
};

/* The level the kernels use now: the best the CPU has, unless forced. */
enum cpu_simd cpu__simd(void);
/* Test hook: force a level (one the CPU has), or -1 to go back to detection. Not thread-safe:
 * call it only while no graph runs. */
void cpu__simd_force(int level);

void cpu__vec_silu(float *y, const float *x, int64_t n);       /* x * sigmoid(x) */
void cpu__vec_gelu(float *y, const float *x, int64_t n);       /* 0.5 x (1 + erf(x / sqrt 2)) */
void cpu__vec_quick_gelu(float *y, const float *x, int64_t n); /* x * sigmoid(1.702 x) */
/* y = a * gelu(g) */
void cpu__vec_geglu(float *y, const float *a, const float *g, int64_t n);
/* y = x * s + t, then SiLU when silu */
void cpu__vec_affine(float *y, const float *x, int64_t n, float s, float t, bool silu);
/* max of x[0..n) (n >= 1) */
float cpu__vec_max(const float *x, int64_t n);
/* x = exp(x - shift) in place; returns the sum of the new values (accumulated in double) */
double cpu__vec_exp_sum(float *x, int64_t n, float shift);
/* sum of x, and sum of (x - mean)^2, accumulated in double */
double cpu__vec_sum(const float *x, int64_t n);
double cpu__vec_sumsq_dev(const float *x, int64_t n, float mean);

/* The AVX2 + FMA implementations (vec_avx2.c); call them only through the cpu__vec_* above. */
void cpu__silu_avx2(float *y, const float *x, int64_t n);
void cpu__gelu_avx2(float *y, const float *x, int64_t n);
void cpu__quick_gelu_avx2(float *y, const float *x, int64_t n);
void cpu__geglu_avx2(float *y, const float *a, const float *g, int64_t n);
void cpu__affine_avx2(float *y, const float *x, int64_t n, float s, float t, bool silu);
float cpu__max_avx2(const float *x, int64_t n);
double cpu__exp_sum_avx2(float *x, int64_t n, float shift);
double cpu__sum_avx2(const float *x, int64_t n);
double cpu__sumsq_dev_avx2(const float *x, int64_t n, float mean);

/* ===== Convolution (conv.c, conv_winograd.c) ===== */

/* Whether dst (a CONV2D node) is a 3x3, stride-1 conv with non-negative padding, which
 * cpu__conv_winograd can compute. */
bool cpu__conv_winograd_fits(const struct tensor *dst);
/* CONV2D by Winograd F(2x2, 3x3); only for nodes where cpu__conv_winograd_fits. */
int cpu__conv_winograd(struct cpu_ctx *ctx, struct tensor *dst, struct err *err);
/* Test hook: -1 lets conv.c choose (Winograd for large enough 3x3 convs), 0 never uses
 * Winograd, 1 uses it for every conv it fits. Not thread-safe, like cpu__simd_force. */
void cpu__conv_force(int mode);

/* ===== Attention (attention.c, attention_avx512.c) ===== */

/* One ATTENTION node, unpacked: q [nb, nq, c], k and v [nb, nk, c], out [nb, nq, c]. */
struct cpu_attn {
    const float *q, *k, *v; /* inputs (borrowed) */
    float *out;             /* result (borrowed) */
    int64_t nb, nq, nk, c;  /* batch, queries, keys, channels */
    int64_t heads, d;       /* c = heads * d */
    bool causal;            /* query i sees keys 0..i */
    float scale;            /* 1 / sqrt(d) */
};

/* The AVX-512 path (call only when cpu__simd() >= CPU_SIMD_AVX512). Its scratch holds k^T and
 * v of every head, about twice the size of k and v, plus one score block per thread. */
int cpu__attention_avx512(struct cpu_ctx *ctx, const struct cpu_attn *a, struct err *err);

/* ===== Helpers for the kernels ===== */

/* Minimum elements per OpenMP task for memory-bound loops: below it a loop runs serially. */
#define CPU_PAR_MIN 32768

#endif
