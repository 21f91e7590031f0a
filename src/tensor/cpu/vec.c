/* tensor/cpu/vec.c -- vector maths for the CPU kernels: the portable versions and the dispatch.
 * Owns: the choice between these scalar loops (libm) and vec_avx2.c (AVX2 + FMA), made per
 * call from the CPU's feature bits (cheap: the compiler caches them at start-up).
 * Threads: any; these functions only touch the arrays they are given.
 * The scalar versions are the reference the AVX2 ones are tested against (test_ops.c). */
#include "tensor/cpu/cpu.h"

#include <math.h>

/* ===== Dispatch ===== */

static int simd_forced = -1; /* test hook; -1 = detect */

static enum cpu_simd simd_detect(void) {
#if defined(__x86_64__) || defined(__i386__)
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")) return CPU_SIMD_AVX512;
        return CPU_SIMD_AVX2;
    }
#endif
    return CPU_SIMD_SCALAR;
}

enum cpu_simd cpu__simd(void) { return simd_forced >= 0 ? (enum cpu_simd)simd_forced : simd_detect(); }

void cpu__simd_force(int level) {
    /* never force a level the CPU lacks: that would be an illegal instruction */
    simd_forced = (level >= 0 && level <= (int)simd_detect()) ? level : -1;
}

#if defined(__x86_64__) || defined(__i386__)
#define AVX2() (cpu__simd() >= CPU_SIMD_AVX2)
#else
#define AVX2() 0
#endif

/* ===== Activations ===== */

static inline float silu1(float x) { return x / (1.0f + expf(-x)); }
/* 1 + erf(u) = erfc(-u): keeps relative accuracy in the negative tail where 1 + erf cancels */
static inline float gelu1(float x) { return 0.5f * x * erfcf(-x * (float)M_SQRT1_2); }

void cpu__vec_silu(float *y, const float *x, int64_t n) {
    if (AVX2()) {
        cpu__silu_avx2(y, x, n);
        return;
    }
    for (int64_t i = 0; i < n; i++) y[i] = silu1(x[i]);
}

void cpu__vec_gelu(float *y, const float *x, int64_t n) {
    if (AVX2()) {
        cpu__gelu_avx2(y, x, n);
        return;
    }
    for (int64_t i = 0; i < n; i++) y[i] = gelu1(x[i]);
}

void cpu__vec_quick_gelu(float *y, const float *x, int64_t n) {
    if (AVX2()) {
        cpu__quick_gelu_avx2(y, x, n);
        return;
    }
    for (int64_t i = 0; i < n; i++) y[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
}

void cpu__vec_geglu(float *y, const float *a, const float *g, int64_t n) {
    if (AVX2()) {
        cpu__geglu_avx2(y, a, g, n);
        return;
    }
    for (int64_t i = 0; i < n; i++) y[i] = a[i] * gelu1(g[i]);
}

void cpu__vec_affine(float *y, const float *x, int64_t n, float s, float t, bool silu) {
    if (AVX2()) {
        cpu__affine_avx2(y, x, n, s, t, silu);
        return;
    }
    if (silu) {
        for (int64_t i = 0; i < n; i++) y[i] = silu1(x[i] * s + t);
    } else {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) y[i] = x[i] * s + t;
    }
}

/* ===== Reductions ===== */

float cpu__vec_max(const float *x, int64_t n) {
    if (AVX2()) return cpu__max_avx2(x, n);
    float m = x[0];
    for (int64_t i = 1; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

double cpu__vec_exp_sum(float *x, int64_t n, float shift) {
    if (AVX2()) return cpu__exp_sum_avx2(x, n, shift);
    double s = 0;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - shift);
        s += x[i];
    }
    return s;
}

double cpu__vec_sum(const float *x, int64_t n) {
    if (AVX2()) return cpu__sum_avx2(x, n);
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++) s += x[i];
    return s;
}

double cpu__vec_sumsq_dev(const float *x, int64_t n, float mean) {
    if (AVX2()) return cpu__sumsq_dev_avx2(x, n, mean);
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++) {
        double d = x[i] - mean; /* float difference, squared exactly in double */
        s += d * d;
    }
    return s;
}
