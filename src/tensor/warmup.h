/* tensor/warmup.h -- runs one tiny graph with every op kind on a backend before its first real
 * work, so its kernels are loaded and its libraries (cuBLAS) initialised up front instead of
 * inside the first prompt.
 * Owns: nothing after it returns (its scratch memory is given back).
 * Threads: the thread that owns the backend (a device worker, right after creating it). */
#ifndef KILN_TENSOR_WARMUP_H
#define KILN_TENSOR_WARMUP_H

#include "base/err.h"
#include "tensor/tensor.h"

struct backend;

/* Records and runs, in each of dtypes[0..n) in turn (the dtypes the caller's models compute in:
 * F16 and BF16 for a GPU's UNet and VAE, F32 on a CPU or with fp32 GPUs), one node of each op
 * kind the models use: linear, conv2d 3x3 and 1x1, group_norm with fused SiLU, layer_norm, attention
 * causal and not, geglu, gelu, add, mul, scale, transpose, upsample, concat, get_rows and cast,
 * plus the channels-last conv2d (with a fused residual), group_norm, upsample and concat, on tiny
 * shapes. A node
 * the backend does not support (backend_op_supported: the CPU backend computes F32 only) is
 * left out of the graph, so on a backend without F16 kernels the F16 part runs nothing but
 * casts, or nothing at all. Waits for the device to finish. Returns 0, or the negative status
 * of the failing step with err naming the backend, the dtype and what failed (the backend stays
 * usable: the warm-up's memory is freed either way). */
int backend_warmup(struct backend *be, const enum dtype *dtypes, int n, struct err *err);

#endif
