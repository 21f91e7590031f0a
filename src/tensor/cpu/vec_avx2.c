/* tensor/cpu/vec_avx2.c -- AVX2 + FMA versions of the vector maths in vec.c.
 * Owns: the 8-wide exp and erfc approximations the activations and softmax use.
 * Must not: be called on a CPU without AVX2 and FMA (vec.c checks before dispatching here);
 * the build compiles *_avx2.c files alone with -mavx2 -mfma.
 * Threads: any; pure functions of their arrays.
 * ACCURACY. exp: Cody-Waite reduction to |r| <= ln2/2 and a degree-7 Taylor polynomial, within
 * 2 ulp on [-87.3, 88]; below -87.3 it returns 0, above 88 it saturates at exp(88).
 * erfc(z) = t exp(-z^2 + P(t)), t = 1/(1 + z/2), with P of degree 9 fitted by least squares to
 * log(erfc(z)/t) + z^2 on z in [0, 6] (our own fit; used up to 9.2, then 0): relative error < 2e-8 before rounding,
 * so GELU is within a few float ulps of the libm version. Tails (n % 8) go through a padded
 * 8-lane buffer, so every element gets the same arithmetic wherever it sits. */
#include "tensor/cpu/cpu.h"

#include <immintrin.h>
#include <string.h>

/* ===== 8-wide primitives ===== */

static inline __m256 exp8(__m256 x) {
    const __m256 hi = _mm256_set1_ps(88.0f), lo = _mm256_set1_ps(-87.3f);
    /* operand order keeps NaN: min/max return the second operand when one is NaN */
    __m256 xc = _mm256_max_ps(lo, _mm256_min_ps(hi, x));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    /* exp(r) = sum r^k / k!, k = 0..7 */
    __m256 p = _mm256_set1_ps(1.0f / 5040);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    /* flush what would be subnormal to 0 (NaN compares false and stays NaN) */
    return _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LT_OQ), y);
}

/* x * sigmoid(k x) = x / (1 + exp(-k x)) */
static inline __m256 xsigmoid8(__m256 x, __m256 k) {
    __m256 e = exp8(_mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), k), x));
    return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

static inline __m256 silu8(__m256 x) { return xsigmoid8(x, _mm256_set1_ps(1.0f)); }
static inline __m256 quick_gelu8(__m256 x) { return xsigmoid8(x, _mm256_set1_ps(1.702f)); }

/* erfc(z) for z >= 0 (see the header comment for the fit); 0 beyond 9.2, where erfc drops
 * below the smallest normal float */
static inline __m256 erfc8(__m256 z) {
    const __m256 zmax = _mm256_set1_ps(9.2f);
    __m256 beyond = _mm256_cmp_ps(z, zmax, _CMP_GT_OQ);
    z = _mm256_min_ps(z, zmax);
    __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(z, _mm256_set1_ps(0.5f), _mm256_set1_ps(1.0f)));
    __m256 p = _mm256_set1_ps(0.08272484326372667f);
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.3296189881941875f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.2956269822166058f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.504952090524068f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.1289112361278095f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.5942498332452824f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.1822050745913055f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.43598156528244636f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.9922988456838882f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.265098843485868f));
    return _mm256_andnot_ps(beyond, _mm256_mul_ps(t, exp8(_mm256_fnmadd_ps(z, z, p))));
}

/* 0.5 x (1 + erf(x / sqrt 2)); 1 + erf(u) is 2 - erfc(|u|) for u >= 0 and erfc(|u|) below,
 * which keeps the relative accuracy of the small negative tail */
static inline __m256 gelu8(__m256 x) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 z = _mm256_mul_ps(_mm256_andnot_ps(sign, x), _mm256_set1_ps(0.70710678118654752f));
    __m256 e = erfc8(z);
    __m256 neg = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
    __m256 one_plus_erf = _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(2.0f), e), e, neg);
    return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), one_plus_erf);
}

/* Applies F to n floats of x into y, 8 at a time; the tail through a zero-padded buffer. */
#define MAP1(y, x, n, F)                                                                 \
    do {                                                                                 \
        int64_t i_ = 0;                                                                  \
        for (; i_ + 8 <= (n); i_ += 8) _mm256_storeu_ps((y) + i_, F(_mm256_loadu_ps((x) + i_))); \
        if (i_ < (n)) {                                                                  \
            float tx_[8] = {0}, ty_[8];                                                  \
            memcpy(tx_, (x) + i_, (size_t)((n) - i_) * sizeof(float));                   \
            _mm256_storeu_ps(ty_, F(_mm256_loadu_ps(tx_)));                              \
            memcpy((y) + i_, ty_, (size_t)((n) - i_) * sizeof(float));                   \
        }                                                                                \
    } while (0)

/* ===== Activations ===== */

void cpu__silu_avx2(float *y, const float *x, int64_t n) { MAP1(y, x, n, silu8); }
void cpu__gelu_avx2(float *y, const float *x, int64_t n) { MAP1(y, x, n, gelu8); }
void cpu__quick_gelu_avx2(float *y, const float *x, int64_t n) { MAP1(y, x, n, quick_gelu8); }

void cpu__geglu_avx2(float *y, const float *a, const float *g, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(a + i), gelu8(_mm256_loadu_ps(g + i))));
    if (i < n) {
        float ta[8] = {0}, tg[8] = {0}, ty[8];
        memcpy(ta, a + i, (size_t)(n - i) * sizeof(float));
        memcpy(tg, g + i, (size_t)(n - i) * sizeof(float));
        _mm256_storeu_ps(ty, _mm256_mul_ps(_mm256_loadu_ps(ta), gelu8(_mm256_loadu_ps(tg))));
        memcpy(y + i, ty, (size_t)(n - i) * sizeof(float));
    }
}

void cpu__affine_avx2(float *y, const float *x, int64_t n, float s, float t, bool silu) {
    const __m256 vs = _mm256_set1_ps(s), vt = _mm256_set1_ps(t);
#define AFFINE8(v) _mm256_fmadd_ps((v), vs, vt)
#define AFFINE_SILU8(v) silu8(_mm256_fmadd_ps((v), vs, vt))
    if (silu)
        MAP1(y, x, n, AFFINE_SILU8);
    else
        MAP1(y, x, n, AFFINE8);
#undef AFFINE8
#undef AFFINE_SILU8
}

/* ===== Reductions ===== */

static inline double hsum4d(__m256d v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

/* adds the 8 floats of v, widened to double, into two accumulators */
#define ACC8D(a0, a1, v)                                                          \
    do {                                                                          \
        a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));       \
        a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps((v), 1)));    \
    } while (0)

float cpu__max_avx2(const float *x, int64_t n) {
    int64_t i = 0;
    float m = x[0];
    if (n >= 8) {
        __m256 v0 = _mm256_loadu_ps(x), v1 = v0;
        for (i = 8; i + 16 <= n; i += 16) {
            v0 = _mm256_max_ps(v0, _mm256_loadu_ps(x + i));
            v1 = _mm256_max_ps(v1, _mm256_loadu_ps(x + i + 8));
        }
        for (; i + 8 <= n; i += 8) v0 = _mm256_max_ps(v0, _mm256_loadu_ps(x + i));
        float t[8];
        _mm256_storeu_ps(t, _mm256_max_ps(v0, v1));
        for (int k = 0; k < 8; k++) m = t[k] > m ? t[k] : m;
    }
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

double cpu__exp_sum_avx2(float *x, int64_t n, float shift) {
    const __m256 vs = _mm256_set1_ps(shift);
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vs));
        _mm256_storeu_ps(x + i, e);
        ACC8D(a0, a1, e);
    }
    double s = hsum4d(_mm256_add_pd(a0, a1));
    if (i < n) {
        float t[8];
        for (int k = 0; k < 8; k++) t[k] = i + k < n ? x[i + k] : shift; /* pad lanes: exp(0) */
        _mm256_storeu_ps(t, exp8(_mm256_sub_ps(_mm256_loadu_ps(t), vs)));
        for (int k = 0; i + k < n; k++) {
            x[i + k] = t[k];
            s += t[k];
        }
    }
    return s;
}

double cpu__sum_avx2(const float *x, int64_t n) {
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd(), a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        ACC8D(a0, a1, _mm256_loadu_ps(x + i));
        ACC8D(a2, a3, _mm256_loadu_ps(x + i + 8));
    }
    for (; i + 8 <= n; i += 8) ACC8D(a0, a1, _mm256_loadu_ps(x + i));
    double s = hsum4d(_mm256_add_pd(_mm256_add_pd(a0, a1), _mm256_add_pd(a2, a3)));
    for (; i < n; i++) s += x[i];
    return s;
}

double cpu__sumsq_dev_avx2(const float *x, int64_t n, float mean) {
    const __m256 vm = _mm256_set1_ps(mean);
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd(), a2 = a0, a3 = a0;
/* d = x - mean in float (as the scalar version), squared and summed in double */
#define SQDEV8(b0, b1, p)                                                                  \
    do {                                                                                   \
        __m256 d_ = _mm256_sub_ps(_mm256_loadu_ps(p), vm);                                  \
        __m256d lo_ = _mm256_cvtps_pd(_mm256_castps256_ps128(d_));                          \
        __m256d hi_ = _mm256_cvtps_pd(_mm256_extractf128_ps(d_, 1));                        \
        b0 = _mm256_fmadd_pd(lo_, lo_, b0);                                                 \
        b1 = _mm256_fmadd_pd(hi_, hi_, b1);                                                 \
    } while (0)
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        SQDEV8(a0, a1, x + i);
        SQDEV8(a2, a3, x + i + 8);
    }
    for (; i + 8 <= n; i += 8) SQDEV8(a0, a1, x + i);
#undef SQDEV8
    double s = hsum4d(_mm256_add_pd(_mm256_add_pd(a0, a1), _mm256_add_pd(a2, a3)));
    for (; i < n; i++) {
        double d = x[i] - mean;
        s += d * d;
    }
    return s;
}
