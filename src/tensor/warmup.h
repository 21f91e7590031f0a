/* tensor/warmup.h -- runs one tiny graph with every op kind on a backend before its first real
 * work, so its kernels are loaded and its libraries (cuBLAS) initialised up front instead of
 * inside the first prompt.
 * Owns: nothing after it returns (its scratch memory is given back).
 * Threads: the thread that owns the backend (a device worker, right after creating it). */
#ifndef KILN_TENSOR_WARMUP_H
#define KILN_TENSOR_WARMUP_H

#include "base/err.h"
#include "tensor/tensor.h"

#include <stdbool.h>

struct backend;

/* One pass of the warm-up: a network's compute dtype and whether it has image ops. */
struct warmup_pass {
    enum dtype dtype;
    bool images; /* also the convolutions, GroupNorm, upsampling and concatenation (a UNet or
                    VAE); else the token ops alone (a text encoder) */
};

/* Records and runs, for each of passes[0..n) in turn, one node of each op kind the models use in
 * the pass's dtype, on tiny shapes: the token ops (linear, layer_norm, attention causal and not,
 * geglu, gelu, quick_gelu, add, mul, scale, transpose, get_rows and cast) and, with `images`,
 * conv2d 3x3 and 1x1, group_norm with fused SiLU, upsample and concat, NCHW and channels-last
 * (the conv with a fused residual). A node the backend does not support
 * (backend_op_supported: the CPU backend computes F32 only) is left out of the graph, so on a
 * backend without F16 kernels an F16 pass runs nothing but casts, or nothing at all. Waits for
 * the device to finish. Returns 0, or the negative status of the failing step with err naming
 * the backend, the dtype and what failed (the backend stays usable: the warm-up's memory is
 * freed either way). */
int backend_warmup(struct backend *be, const struct warmup_pass *passes, int n, struct err *err);

#endif
