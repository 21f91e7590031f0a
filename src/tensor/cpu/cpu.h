/* tensor/cpu/cpu.h -- the CPU backend's internals: context and one entry per op.
 * Owns: nothing; declarations shared by the files of tensor/cpu/.
 * Threads: the worker that owns the backend; kernels parallelise inside with OpenMP.
 * Every entry computes dst from dst->src[] and dst->ip/fp (see tensor.h for each op's
 * contract), in fp32, and returns 0 or a negative status (with a message in err). */
#ifndef KILN_CPU_H
#define KILN_CPU_H

#include "tensor/tensor.h"

struct cpu_ctx {
    int n_threads; /* OpenMP threads for kernels and OpenBLAS */
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

#endif
