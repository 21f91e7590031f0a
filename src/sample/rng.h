/* sample/rng.h -- torch's CPU random generator, bit for bit: mt19937, torch.randn, and
 * ComfyUI's prepare_noise (the initial latent noise of KSampler).
 * Owns: struct rng (caller storage, 2.5 KiB) and the choice of the randn math kernel.
 * Must not: allocate (every function writes into caller buffers) or touch the device.
 * Threads: a struct rng belongs to one thread; the free functions are reentrant.
 * Prefix: rng_ (rng__ for the kernels shared with rng_avx2.c, see rng_impl.h).
 *
 * WHAT torch DOES (ENGINE.md §3). torch.manual_seed(s) seeds an mt19937 with s mod 2^32 and
 * clears the cached normal. torch.randn(n) in float32 then takes one of two paths:
 *   - n < 16: every element is one normal_distribution<double> draw (Box-Muller in double on
 *     two 53-bit uniforms, the sine half cached in the generator for the next element), cast
 *     to float;
 *   - n >= 16: n float uniforms are drawn first (24 bits each); each whole 16-block is turned
 *     into normals by pairing element j with j+8 (j < 8); when n % 16 != 0 the last 16 slots
 *     are redrawn (16 fresh uniforms) and transformed again.
 * The transform of a 16-block has two implementations in torch, and they differ in about 38%
 * of the values (by at most ~2e-6):
 *   - AVX2 (every x86 CPU with AVX2+FMA, AVX-512 ones included): Cephes-style log/sincos
 *     polynomials in float with fused multiply-adds -- what ComfyUI users on x86 get;
 *   - DEFAULT (torch's scalar build, ATEN_CPU_CAPABILITY=default, aarch64): libm logf,
 *     cosf, sinf with the angle computed in double.
 * Both are here; rng_kernel_active() says which one rng_randn uses. */
#ifndef KILN_SAMPLE_RNG_H
#define KILN_SAMPLE_RNG_H

#include "base/err.h"

#include <stdbool.h>
#include <stdint.h>

#define RNG_MT_N 624 /* words of mt19937 state */

/* One torch CPU generator (at::CPUGeneratorImpl): the mt19937 engine and the cached normal. */
struct rng {
    uint32_t state[RNG_MT_N]; /* mt19937 words */
    int left;                 /* draws left before the next twist (1 right after seeding) */
    int next;                 /* index of the next word to temper */
    bool has_normal;          /* a cached normal_distribution<double> sample exists */
    double next_normal;       /* that sample (the r*sin(theta) half of the last pair) */
    uint64_t seed;            /* the full 64-bit seed given (torch.initial_seed()) */
};

/* The math used for the 16-blocks of randn with n >= 16. */
enum rng_kernel {
    RNG_KERNEL_AVX2,    /* torch's normal_fill_16_AVX2: Cephes polynomials with FMA */
    RNG_KERNEL_DEFAULT, /* torch's scalar normal_fill_16: libm, angle in double */
    RNG_KERNEL_COUNT
};

/* Seeds like torch.manual_seed(seed) / torch.Generator().manual_seed(seed): the engine gets
 * seed mod 2^32 (so 2^32+42 draws what 42 draws, and 2^64-1 what 4294967295 draws), the cached
 * normal is cleared. ComfyUI's seed -1 arrives here as 2^64-1. */
void rng_init(struct rng *r, uint64_t seed);

/* The next tempered 32-bit word of the mt19937 stream (torch's random()). */
uint32_t rng_u32(struct rng *r);

/* Two words, the first one in the high half (torch's random64()). */
uint64_t rng_u64(struct rng *r);

/* torch.randn(n, dtype=float32, generator=r) for a contiguous tensor: writes n values to out
 * and advances r exactly as torch advances its generator. Uses rng_kernel_active() for the
 * n >= 16 path. n may be 0 (draws nothing). */
void rng_randn(struct rng *r, float *out, int64_t n);

/* Same, with the 16-block kernel chosen by the caller (tests compare both against torch).
 * RNG_KERNEL_AVX2 on a CPU without AVX2+FMA is a programmer error (ASSERT). */
void rng_randn_kernel(struct rng *r, float *out, int64_t n, enum rng_kernel kernel);

/* The kernel rng_randn uses: RNG_KERNEL_DEFAULT when the environment variable
 * KILN_RNG_KERNEL is "default" (torch's scalar build, aarch64 users) or when the CPU lacks
 * AVX2/FMA; otherwise RNG_KERNEL_AVX2. Read on every call (cheap; lets tests switch). */
enum rng_kernel rng_kernel_active(void);

/* true when this CPU (and this build) can run RNG_KERNEL_AVX2. */
bool rng_kernel_avx2_available(void);

/* "avx2" / "default". */
const char *rng_kernel_name(enum rng_kernel kernel);

/* ComfyUI comfy.sample.prepare_noise for a float32 latent of b images of per_image values
 * each ([b, C, H, W], per_image = C*H*W), on a fresh generator seeded with `seed`:
 *   - batch_index NULL (n_batch_index 0): one randn over all b*per_image values (so image k
 *     is NOT the same as a 1-image draw with the same seed unless per_image % 16 == 0);
 *   - batch_index given (LatentFromBatch / RepeatLatentBatch): randn draws of per_image values
 *     for i = 0 .. max(batch_index), in sequence, from the one generator; output image k is
 *     the draw number batch_index[k] (duplicates allowed). n_batch_index must equal b.
 * out receives b*per_image floats. Errors: STATUS_ERR_INVALID (with err filled) for b < 1,
 * per_image < 1, a negative batch index, or n_batch_index != b. */
int rng_prepare_noise(uint64_t seed, int64_t b, int64_t per_image, const int *batch_index,
                      int n_batch_index, float *out, struct err *err);

#endif
