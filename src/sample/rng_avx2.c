/* sample/rng_avx2.c -- the AVX2 16-block normal transform of torch.randn (x86 only).
 * Owns: rng__fill16_avx2 and its float log / sincos polynomials.
 * Must not: be called unless rng_kernel_avx2_available() (compiled with -mavx2 -mfma by the
 * build's *_avx2.c rule; rng.c dispatches at run time).
 * Threads: any (pure function on a caller buffer).
 *
 * WHY EXPLICIT FMAs. torch's kernel is written with separate mul/add intrinsics, and GCC -O2
 * fuses a multiply into the add that consumes it (contraction). Those fused roundings are
 * part of the values ComfyUI users get (ENGINE.md §3.4: without contraction 155 of 16,384
 * values change). We write each fused step as an explicit _mm256_fmadd_ps, so the result no
 * longer depends on our own optimisation level or on -ffp-contract (kiln builds ISO C11,
 * where GCC does not contract at all). The golden vectors in tests/data/golden pin this.
 *
 * THE MATH. ln(u) and (sin t, cos t) in float, Cephes style:
 *   ln:  u = m * 2^e with m in [sqrt(1/2), sqrt(2)); f = m - 1;
 *        ln u = f - f^2/2 + f^3 P(f) + e*ln2, with ln2 split as q2 + q1 (q2 exact in float)
 *        so that e*ln2 adds no rounding error of its own;
 *   sincos: j = nearest even integer to t*4/pi, r = t - j*pi/4 computed with pi/4 split in
 *        three floats (DP1+DP2+DP3) so the reduction is nearly exact; then on r in
 *        [-pi/4, pi/4] sin r = r + r^3 S(r^2), cos r = 1 - r^2/2 + r^4 C(r^2); octant bits
 *        of j choose which polynomial is sin / cos and their signs. */
#if defined(__x86_64__) || defined(__i386__)

#include "sample/rng_impl.h"

#include <immintrin.h>
#include <stdint.h>

/* ===== Constants (Cephes single-precision coefficients) ===== */

/* ln: f^3 P(f) with P of degree 8, coefficients from p0 (highest) to p8 */
static const float LOG_P[9] = {
    7.0376836292e-2f, -1.1514610310e-1f, 1.1676998740e-1f, -1.2420140846e-1f, 1.4249322787e-1f,
    -1.6668057665e-1f, 2.0000714765e-1f, -2.4999993993e-1f, 3.3333331174e-1f,
};
#define LOG_Q1 (-2.12194440e-4f) /* ln2 - LOG_Q2 */
#define LOG_Q2 0.693359375f      /* ln2 rounded to 10 bits: e*LOG_Q2 is exact */
#define LOG_SQRTHF 0.707106781186547524f

/* pi/4 = DP1 + DP2 + DP3, DP1 and DP2 short enough that j*DP is exact for small j */
#define TRIG_DP1 0.78515625f
#define TRIG_DP2 2.4187564849853515625e-4f
#define TRIG_DP3 3.77489497744594108e-8f
#define TRIG_FOPI 1.27323954473516f /* 4/pi */
/* sin r = r + r^3 (S0 r^4 + S1 r^2 + S2) ; cos r = 1 - r^2/2 + r^4 (C0 r^4 + C1 r^2 + C2) */
#define SIN_S0 (-1.9515295891e-4f)
#define SIN_S1 8.3321608736e-3f
#define SIN_S2 (-1.6666654611e-1f)
#define COS_C0 2.443315711809948e-5f
#define COS_C1 (-1.388731625493765e-3f)
#define COS_C2 4.166664568298827e-2f

/* ===== ln(x) for x > 0 (8 lanes) ===== */

static inline __m256 log8(__m256 x) {
    const __m256 one = _mm256_set1_ps(1.0f);
    /* x <= 0 gives NaN (never happens here: the argument is 1-u in (0,1]) */
    __m256 invalid = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LE_OS);
    /* flush denormals to the smallest normal, then split exponent and mantissa */
    x = _mm256_max_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x00800000)));
    __m256i ebits = _mm256_srli_epi32(_mm256_castps_si256(x), 23);
    x = _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(~0x7f800000)));
    x = _mm256_or_ps(x, _mm256_set1_ps(0.5f)); /* mantissa m in [0.5, 1) */
    ebits = _mm256_sub_epi32(ebits, _mm256_set1_epi32(0x7f));
    __m256 e = _mm256_add_ps(_mm256_cvtepi32_ps(ebits), one);
    /* m < sqrt(1/2): use 2m (f = 2m - 1) and e - 1, so f lies in [-0.29, 0.41) */
    __m256 small = _mm256_cmp_ps(x, _mm256_set1_ps(LOG_SQRTHF), _CMP_LT_OS);
    __m256 add_back = _mm256_and_ps(x, small);
    x = _mm256_sub_ps(x, one);
    e = _mm256_sub_ps(e, _mm256_and_ps(one, small));
    x = _mm256_add_ps(x, add_back); /* f, exact */
    __m256 z = _mm256_mul_ps(x, x); /* f^2 */

    /* P(f) by Horner, each step one fused multiply-add */
    __m256 y = _mm256_fmadd_ps(_mm256_set1_ps(LOG_P[0]), x, _mm256_set1_ps(LOG_P[1]));
    for (int k = 2; k < 9; k++) y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(LOG_P[k]));
    y = _mm256_mul_ps(y, x);                                     /* f P(f) */
    y = _mm256_fmadd_ps(y, z, _mm256_mul_ps(e, _mm256_set1_ps(LOG_Q1))); /* f^3 P + e q1 */
    y = _mm256_fnmadd_ps(z, _mm256_set1_ps(0.5f), y);            /* - f^2/2 */
    x = _mm256_add_ps(x, y);
    x = _mm256_fmadd_ps(e, _mm256_set1_ps(LOG_Q2), x);           /* + e q2 */
    return _mm256_or_ps(x, invalid);
}

/* ===== sin(t), cos(t) (8 lanes) ===== */

static inline void sincos8(__m256 x, __m256 *s, __m256 *c) {
    const __m256 sign_mask = _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000u));
    __m256 sign_sin = _mm256_and_ps(x, sign_mask);
    x = _mm256_andnot_ps(sign_mask, x); /* |t| */

    /* octant: j = (trunc(|t| * 4/pi) + 1) & ~1, an even integer */
    __m256 y = _mm256_mul_ps(x, _mm256_set1_ps(TRIG_FOPI));
    __m256i j = _mm256_cvttps_epi32(y);
    j = _mm256_add_epi32(j, _mm256_set1_epi32(1));
    j = _mm256_and_si256(j, _mm256_set1_epi32(~1));
    y = _mm256_cvtepi32_ps(j);
    /* bit 2 of j flips the sign of sin; bit 1 clear means "sin uses the sin polynomial" */
    __m256 swap_sign_sin = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(j, _mm256_set1_epi32(4)), 29));
    __m256 use_sin_poly = _mm256_castsi256_ps(
        _mm256_cmpeq_epi32(_mm256_and_si256(j, _mm256_set1_epi32(2)), _mm256_setzero_si256()));
    /* cos sign: bit 2 of (j - 2), inverted */
    __m256i jc = _mm256_sub_epi32(j, _mm256_set1_epi32(2));
    jc = _mm256_andnot_si256(jc, _mm256_set1_epi32(4));
    __m256 sign_cos = _mm256_castsi256_ps(_mm256_slli_epi32(jc, 29));
    sign_sin = _mm256_xor_ps(sign_sin, swap_sign_sin);

    /* r = |t| - j*pi/4 in three fused steps */
    x = _mm256_fmadd_ps(y, _mm256_set1_ps(-TRIG_DP1), x);
    x = _mm256_fmadd_ps(y, _mm256_set1_ps(-TRIG_DP2), x);
    x = _mm256_fmadd_ps(y, _mm256_set1_ps(-TRIG_DP3), x);
    __m256 z = _mm256_mul_ps(x, x); /* r^2 */

    /* cos polynomial: ((C0 z + C1) z + C2) z z - z/2 + 1 */
    __m256 pc = _mm256_fmadd_ps(_mm256_set1_ps(COS_C0), z, _mm256_set1_ps(COS_C1));
    pc = _mm256_fmadd_ps(pc, z, _mm256_set1_ps(COS_C2));
    pc = _mm256_mul_ps(pc, z);
    pc = _mm256_fmsub_ps(pc, z, _mm256_mul_ps(z, _mm256_set1_ps(0.5f)));
    pc = _mm256_add_ps(pc, _mm256_set1_ps(1.0f));

    /* sin polynomial: ((S0 z + S1) z + S2) z r + r */
    __m256 ps = _mm256_fmadd_ps(_mm256_set1_ps(SIN_S0), z, _mm256_set1_ps(SIN_S1));
    ps = _mm256_fmadd_ps(ps, z, _mm256_set1_ps(SIN_S2));
    ps = _mm256_mul_ps(ps, z);
    ps = _mm256_fmadd_ps(ps, x, x);

    /* select per lane; the subtract/add form keeps torch's exact operations (and zero signs) */
    __m256 sin_part = _mm256_and_ps(use_sin_poly, ps);
    __m256 cos_part = _mm256_andnot_ps(use_sin_poly, pc);
    ps = _mm256_sub_ps(ps, sin_part);
    pc = _mm256_sub_ps(pc, cos_part);
    *s = _mm256_xor_ps(_mm256_add_ps(cos_part, sin_part), sign_sin);
    *c = _mm256_xor_ps(_mm256_add_ps(pc, ps), sign_cos);
}

/* ===== The 16-block transform ===== */

void rng__fill16_avx2(float *data) {
    /* radius from lanes 0..7 (u1 = 1 - u, in (0,1]), angle from lanes 8..15 */
    const __m256 u1 = _mm256_sub_ps(_mm256_set1_ps(1.0f), _mm256_loadu_ps(data));
    const __m256 u2 = _mm256_loadu_ps(data + 8);
    const __m256 radius = _mm256_sqrt_ps(_mm256_mul_ps(_mm256_set1_ps(-2.0f), log8(u1)));
    /* 2*pi rounded to float once, as torch's _mm256_set1_ps(2.0f * pi<double>) */
    const __m256 theta = _mm256_mul_ps(_mm256_set1_ps((float)(2.0 * 3.14159265358979323846)), u2);
    __m256 sin_t, cos_t;
    sincos8(theta, &sin_t, &cos_t);
    /* out = n * std + mean with std 1, mean 0, as one FMA like torch (turns -0 into +0) */
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    _mm256_storeu_ps(data, _mm256_fmadd_ps(_mm256_mul_ps(radius, cos_t), one, zero));
    _mm256_storeu_ps(data + 8, _mm256_fmadd_ps(_mm256_mul_ps(radius, sin_t), one, zero));
}

#else
/* Not x86: rng.c never selects the AVX2 kernel, and this unit is empty. */
typedef int rng_avx2_unused;
#endif
