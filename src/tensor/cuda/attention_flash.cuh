/* tensor/cuda/attention_flash.cuh -- the tensor-core flash-attention path of ATTENTION (F16/BF16),
 * shared by attention.cu (which picks the path) and attention_flash.cu (the kernel).
 * Owns: nothing. Threads: the backend's worker; launches go on ctx->stream. */
#ifndef KILN_ATTENTION_FLASH_CUH
#define KILN_ATTENTION_FLASH_CUH

#include "tensor/cuda/cuda.cuh"

/* Largest head size the flash kernel takes (d is padded to a multiple of 16 in shared memory). */
#define CUDA_FLASH_DMAX 256

/* True when the flash kernel computes attention in storage dtype dt with heads of d channels
 * on ctx's device: dt F16 or BF16, 1 <= d <= CUDA_FLASH_DMAX, the kernel built for sm_80 or
 * later. Queries the kernel's attributes (no launch). */
bool cuda__attention_flash_covers(struct cuda_ctx *ctx, enum dtype dt, int d);

/* out = softmax(q k^T / sqrt(d)) v per (image, head) on ctx->stream, for q, out [nb, nq, c] and
 * k, v [nb, nk, c] of storage dtype dt (contiguous rows of c = heads * d; causal: query i sees
 * keys 0..i). Only for what cuda__attention_flash_covers accepts; returns 0, or
 * STATUS_ERR_UNSUPPORTED (grid limits) / a launch error with the message in err. */
int cuda__attention_flash(struct cuda_ctx *ctx, enum dtype dt, void *out, const void *q, const void *k, const void *v,
                          int64_t nb, int64_t nq, int64_t nk, int64_t c, int heads, bool causal, struct err *err);

#endif
