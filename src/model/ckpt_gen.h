/* model/ckpt_gen.h -- writes deterministic random SD 1.x checkpoints (for tests and demos).
 * Owns: nothing after it returns (the file is the caller's).
 * Must not: hold the whole checkpoint in memory: tensors are generated one chunk at a time and
 * streamed to disk, so --sd15 (2.1 GB of fp16) needs a few MB.
 * Threads: any; no global state.
 *
 * VALUES. Every tensor of layout_build(config), in layout order and dtypes, from its own
 * random stream (splitmix64 seeded by the seed and the tensor name; normals by Box-Muller), so a
 * tensor's values depend only on (seed, name, shape), never on the other tensors:
 *   norm weights 1, norm biases 0, other biases N(0, 0.02), token/position embeddings
 *   N(0, 0.02), weights N(0, 1/sqrt(fan_in)) (fan_in = numel / rows), the last projection of a
 *   residual branch N(0, 0.5/sqrt(fan_in)); position_ids 0..n-1; the 12 DDPM buffers computed
 *   from SD 1.x's schedule (linear_start 0.00085, linear_end 0.012, 1000 steps) as LDM does.
 * With these, activations stay finite and non-trivial through CLIP's 12 layers, the UNet and
 * the VAE (unit-variance inputs keep roughly unit variance; norms rescale each stage). */
#ifndef KILN_MODEL_CKPT_GEN_H
#define KILN_MODEL_CKPT_GEN_H

#include "base/err.h"
#include "model/config.h"

#include <stdint.h>

/* Writes the checkpoint to `path` (through `path.tmp`, renamed at the end). Returns 0, or
 * ERR_INVALID (bad config) / ERR_IO (cannot write) with a message naming the file. */
int ckpt_gen_write(const char *path, const struct sd_config *config, uint64_t seed, struct err *err);

#endif
