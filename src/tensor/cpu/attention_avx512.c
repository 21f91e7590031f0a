/* tensor/cpu/attention_avx512.c -- ATTENTION with AVX-512 register-tiled kernels (no sgemm).
 * Owns: nothing; borrows the ctx scratch for the packed k/v of every head and one score block
 * per thread.
 * Must not: run on a CPU without AVX-512F (attention.c checks cpu__simd() first). The whole file
 * is compiled for AVX-512 through the target pragma below, since the build gives only *_avx2.c
 * files special flags.
 * Threads: the backend's worker; OpenMP over heads (packing), then over (batch, head, block of
 * queries) tasks.
 * WHY. With SD's 40-wide heads every score takes only 40 multiply-adds on each side, so the
 * sgemm path spends as long packing k, v and the score block as multiplying (profiled: 35% in
 * OpenBLAS copy routines). Here k is packed once per head as k^T [d, Nk'] (keys contiguous,
 * Nk' = Nk rounded up to 64, zero-filled) and v as [Nk, d'] (d' = d rounded up to 16), and two
 * small kernels read them in place:
 *   scores  S[i, j] = scale * sum_e q[i, e] kt[e, j]: 6 queries x 64 keys in 24 registers,
 *           one broadcast of q and four loads of kt per e;
 *   output  O[i, :] = sum_j P[i, j] v[j, :]: 6 queries x 64 channels, one broadcast of P and
 *           up to four loads of v per key.
 * The softmax between them (row max, exp, row sum, masked keys zeroed) and the final division
 * by the row sum are those of attention.c, with the same exp polynomial as vec_avx2.c. */
#pragma GCC target("avx512f,avx512dq,fma")

#include "tensor/cpu/cpu.h"
#include "base/base.h"

#include <immintrin.h>
#include <omp.h>
#include <string.h>

#define RQ 6           /* query rows per score kernel call, and per output call with 4 vectors */
#define RQ3 8          /* query rows per output call with up to 3 vectors (d <= 48: 24 registers) */
#define KB 64          /* keys per score tile (four vectors) */
#define S_FLOATS 98304 /* target size of one score block (384 KiB: with k and v, within L2) */

#define INLINE static inline __attribute__((always_inline))
/* The kernels' loops over rows (r) and vectors (t) carry "#pragma GCC unroll": fully unrolled,
 * the accumulator arrays become registers instead of stack slots. */

/* ===== 16-wide maths (the same arithmetic as exp8 in vec_avx2.c) ===== */

INLINE __m512 exp16(__m512 x) {
    const __m512 hi = _mm512_set1_ps(88.0f), lo = _mm512_set1_ps(-87.3f);
    __m512 xc = _mm512_max_ps(lo, _mm512_min_ps(hi, x));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    __m512 y = _mm512_scalef_ps(p, n); /* p * 2^n, exact like exp8's exponent arithmetic */
    __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    return _mm512_mask_mov_ps(y, under, _mm512_setzero_ps());
}

static inline __mmask16 tail_mask(int64_t n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1); }

static float row_max(const float *x, int64_t n) {
    __m512 m = _mm512_set1_ps(-__builtin_inff());
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + i));
    if (i < n) m = _mm512_mask_max_ps(m, tail_mask(n - i), m, _mm512_maskz_loadu_ps(tail_mask(n - i), x + i));
    return _mm512_reduce_max_ps(m);
}

/* x = exp(x - shift) over n floats; returns the sum (float lanes flushed to double every
 * 1024 values, so the sum stays as accurate as vec.c's) */
static double row_exp_sum(float *x, int64_t n, float shift) {
    const __m512 vs = _mm512_set1_ps(shift);
    double total = 0;
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0, since = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), vs));
        _mm512_storeu_ps(x + i, e);
        acc = _mm512_add_ps(acc, e);
        if (++since == 64) {
            total += (double)_mm512_reduce_add_ps(acc);
            acc = _mm512_setzero_ps();
            since = 0;
        }
    }
    if (i < n) {
        __mmask16 m = tail_mask(n - i);
        __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vs));
        _mm512_mask_storeu_ps(x + i, m, e);
        acc = _mm512_mask_add_ps(acc, m, acc, e);
    }
    return total + (double)_mm512_reduce_add_ps(acc);
}

/* ===== Kernels ===== */

/* S[r, 0:64] = scale * q[r, :] . kt[:, 0:64] for r < R; q rows at stride ldq, kt rows at
 * stride ldk, S rows at stride lds. */
INLINE void score_tile(const int R, const float *q, int64_t ldq, const float *kt, int64_t ldk, int64_t d, float *s,
                       int64_t lds, __m512 scale) {
    __m512 acc[RQ][4];
    #pragma GCC unroll 8
    for (int r = 0; r < R; r++)
        #pragma GCC unroll 8
        for (int t = 0; t < 4; t++) acc[r][t] = _mm512_setzero_ps();
    for (int64_t e = 0; e < d; e++) {
        const float *kr = kt + e * ldk;
        __m512 k0 = _mm512_loadu_ps(kr), k1 = _mm512_loadu_ps(kr + 16);
        __m512 k2 = _mm512_loadu_ps(kr + 32), k3 = _mm512_loadu_ps(kr + 48);
        #pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            __m512 qb = _mm512_set1_ps(q[r * ldq + e]);
            acc[r][0] = _mm512_fmadd_ps(qb, k0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(qb, k1, acc[r][1]);
            acc[r][2] = _mm512_fmadd_ps(qb, k2, acc[r][2]);
            acc[r][3] = _mm512_fmadd_ps(qb, k3, acc[r][3]);
        }
    }
    #pragma GCC unroll 8
    for (int r = 0; r < R; r++)
        #pragma GCC unroll 8
        for (int t = 0; t < 4; t++) _mm512_storeu_ps(s + r * lds + 16 * t, _mm512_mul_ps(acc[r][t], scale));
}

/* O[r, 0:cols] = inv[r] * sum_{j < kn} P[r, j] vp[j, 0:cols] for r < R, cols <= 16 NV; vp rows
 * at stride ldv (padded: the NV vectors are always readable), O rows at stride ldo. */
INLINE void out_tile(const int R, const int NV, const float *p, int64_t ldp, const float *vp, int64_t ldv, int64_t kn,
                     float *o, int64_t ldo, const float *inv, int64_t cols) {
    __m512 acc[RQ3][4];
    #pragma GCC unroll 8
    for (int r = 0; r < R; r++)
        #pragma GCC unroll 8
        for (int t = 0; t < NV; t++) acc[r][t] = _mm512_setzero_ps();
    for (int64_t j = 0; j < kn; j++) {
        const float *vr = vp + j * ldv;
        __m512 v[4];
        #pragma GCC unroll 8
        for (int t = 0; t < NV; t++) v[t] = _mm512_loadu_ps(vr + 16 * t);
        #pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            __m512 pb = _mm512_set1_ps(p[r * ldp + j]);
            #pragma GCC unroll 8
            for (int t = 0; t < NV; t++) acc[r][t] = _mm512_fmadd_ps(pb, v[t], acc[r][t]);
        }
    }
    #pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
        __m512 sc = _mm512_set1_ps(inv[r]);
        #pragma GCC unroll 8
        for (int t = 0; t < NV; t++)
            _mm512_mask_storeu_ps(o + r * ldo + 16 * t, tail_mask(cols - 16 * t), _mm512_mul_ps(acc[r][t], sc));
    }
}

/* Compile-time R (and NV) for every remainder, so the register tiles stay in registers. */
static void score_rows(int R, const float *q, int64_t ldq, const float *kt, int64_t ldk, int64_t d, float *s,
                       int64_t lds, __m512 scale) {
    switch (R) {
    case 6: score_tile(6, q, ldq, kt, ldk, d, s, lds, scale); break;
    case 5: score_tile(5, q, ldq, kt, ldk, d, s, lds, scale); break;
    case 4: score_tile(4, q, ldq, kt, ldk, d, s, lds, scale); break;
    case 3: score_tile(3, q, ldq, kt, ldk, d, s, lds, scale); break;
    case 2: score_tile(2, q, ldq, kt, ldk, d, s, lds, scale); break;
    default: score_tile(1, q, ldq, kt, ldk, d, s, lds, scale); break;
    }
}

#define OUT_NV(R)                                                                   \
    do {                                                                            \
        switch (nv) {                                                               \
        case 4: out_tile(R, 4, p, ldp, vp, ldv, kn, o, ldo, inv, cols); break;      \
        case 3: out_tile(R, 3, p, ldp, vp, ldv, kn, o, ldo, inv, cols); break;      \
        case 2: out_tile(R, 2, p, ldp, vp, ldv, kn, o, ldo, inv, cols); break;      \
        default: out_tile(R, 1, p, ldp, vp, ldv, kn, o, ldo, inv, cols); break;     \
        }                                                                           \
    } while (0)
#define OUT_NV3(R)                                                                  \
    do {                                                                            \
        switch (nv) {                                                               \
        case 3: out_tile(R, 3, p, ldp, vp, ldv, kn, o, ldo, inv, cols); break;      \
        case 2: out_tile(R, 2, p, ldp, vp, ldv, kn, o, ldo, inv, cols); break;      \
        default: out_tile(R, 1, p, ldp, vp, ldv, kn, o, ldo, inv, cols); break;     \
        }                                                                           \
    } while (0)

/* R <= RQ when nv == 4, R <= RQ3 otherwise */
static void out_rows(int R, int nv, const float *p, int64_t ldp, const float *vp, int64_t ldv, int64_t kn, float *o,
                     int64_t ldo, const float *inv, int64_t cols) {
    switch (R) {
    case 8: OUT_NV3(8); break;
    case 7: OUT_NV3(7); break;
    case 6: OUT_NV(6); break;
    case 5: OUT_NV(5); break;
    case 4: OUT_NV(4); break;
    case 3: OUT_NV(3); break;
    case 2: OUT_NV(2); break;
    default: OUT_NV(1); break;
    }
}

/* ===== Driver ===== */

int cpu__attention_avx512(struct cpu_ctx *ctx, const struct cpu_attn *a, struct err *err) {
    const int64_t nb = a->nb, nq = a->nq, nk = a->nk, c = a->c, heads = a->heads, d = a->d;
    const int64_t nkp = (nk + KB - 1) / KB * KB, dp = (d + 15) / 16 * 16; /* padded sizes */
    const bool causal = a->causal;

    /* queries per task: a multiple of RQ, about S_FLOATS scores, and enough tasks */
    int nthr = omp_get_max_threads();
    int64_t bq = MAX((int64_t)RQ, MIN((int64_t)40 * RQ, S_FLOATS / nkp) / RQ * RQ);
    bq = MIN(bq, (nq + RQ - 1) / RQ * RQ);
    while (bq > RQ && nb * heads * ((nq + bq - 1) / bq) < 4 * nthr) bq = MAX((int64_t)RQ, bq / 2 / RQ * RQ);
    int64_t nblk = (nq + bq - 1) / bq, tasks = nb * heads * nblk;

    /* scratch: kt [B*H][d][nkp], vp [B*H][nk][dp], then per thread S [bq][nkp] + 1/sums [bq] */
    size_t kt_size = (size_t)(d * nkp), vp_size = (size_t)(nk * dp), per_thread = (size_t)(bq * nkp + bq);
    size_t total = (size_t)(nb * heads) * (kt_size + vp_size) + (size_t)nthr * per_thread;
    float *work = cpu__work(ctx, total * sizeof(float), "attention k/v and scores", err);
    if (!work) return err->code;
    float *kts = work, *vps = kts + (size_t)(nb * heads) * kt_size, *sbuf = vps + (size_t)(nb * heads) * vp_size;

#pragma omp parallel
    {
        /* 1. pack k^T and v of every (batch, head) */
#pragma omp for schedule(dynamic, 1)
        for (int64_t bh = 0; bh < nb * heads; bh++) {
            int64_t b = bh / heads, h = bh % heads;
            const float *kb = a->k + b * nk * c + h * d, *vb = a->v + b * nk * c + h * d; /* rows at stride c */
            float *kt = kts + (size_t)bh * kt_size, *vp = vps + (size_t)bh * vp_size;
            for (int64_t j0 = 0; j0 < nk; j0 += 16) /* 16 keys at a time: reads stay in a few lines */
                for (int64_t e = 0; e < d; e++)
                    for (int64_t j = j0; j < MIN(nk, j0 + 16); j++) kt[e * nkp + j] = kb[j * c + e];
            for (int64_t e = 0; e < d; e++) memset(kt + e * nkp + nk, 0, (size_t)(nkp - nk) * sizeof(float));
            for (int64_t j = 0; j < nk; j++) {
                memcpy(vp + j * dp, vb + j * c, (size_t)d * sizeof(float));
                memset(vp + j * dp + d, 0, (size_t)(dp - d) * sizeof(float));
            }
        }
        /* 2. blocks of queries */
        const __m512 vscale = _mm512_set1_ps(a->scale);
        float *s = sbuf + (size_t)omp_get_thread_num() * per_thread; /* [bq, nkp] */
        float *inv = s + bq * nkp;                                    /* [bq] */
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < tasks; t++) {
            int64_t bh = t / nblk, b = bh / heads, h = bh % heads, q0 = (t % nblk) * bq;
            int64_t m = MIN(bq, nq - q0);               /* queries in this block */
            int64_t kn = causal ? MIN(nk, q0 + m) : nk; /* keys any of them sees */
            const float *qb = a->q + (b * nq + q0) * c + h * d; /* [m, d], rows at stride c */
            const float *kt = kts + (size_t)bh * kt_size, *vp = vps + (size_t)bh * vp_size;
            float *ob = a->out + (b * nq + q0) * c + h * d;

            /* scores, 64 keys at a time for all rows (the kt tile stays in L1) */
            for (int64_t j0 = 0; j0 < kn; j0 += KB)
                for (int64_t r0 = 0; r0 < m; r0 += RQ)
                    score_rows((int)MIN((int64_t)RQ, m - r0), qb + r0 * c, c, kt + j0, nkp, d, s + r0 * nkp + j0, nkp,
                               vscale);
            /* softmax over each row's visible keys */
            for (int64_t i = 0; i < m; i++) {
                float *row = s + i * nkp;
                int64_t valid = causal ? MIN(kn, q0 + i + 1) : kn;
                float mx = row_max(row, valid);
                inv[i] = (float)(1.0 / row_exp_sum(row, valid, mx));
                if (valid < kn) memset(row + valid, 0, (size_t)(kn - valid) * sizeof(float));
            }
            /* output, 64 channels at a time */
            for (int64_t c0 = 0; c0 < d; c0 += 64) {
                int nv = (int)MIN((int64_t)4, (dp - c0) / 16);
                int64_t rows = nv == 4 ? RQ : RQ3;
                for (int64_t r0 = 0; r0 < m; r0 += rows)
                    out_rows((int)MIN(rows, m - r0), nv, s + r0 * nkp, nkp, vp + c0, dp, kn, ob + r0 * c + c0, c,
                             inv + r0, MIN((int64_t)64, d - c0));
            }
        }
    }
    return 0;
}
