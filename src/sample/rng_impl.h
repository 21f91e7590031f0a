/* sample/rng_impl.h -- internals shared by rng.c and rng_avx2.c (not for other modules).
 * Owns: the declarations of the two 16-block normal transforms.
 * Threads: any (pure functions on caller buffers). */
#ifndef KILN_SAMPLE_RNG_IMPL_H
#define KILN_SAMPLE_RNG_IMPL_H

/* Turns 16 uniforms in [0,1) into 16 normals in place, pairing u[j] (radius) with u[j+8]
 * (angle) for j < 8, exactly as torch's normal_fill_16_AVX2 (mean 0, std 1).
 * Only callable when rng_kernel_avx2_available(); defined in rng_avx2.c. */
void rng__fill16_avx2(float *data);

#endif
