/* tensor/cpu/attention.c -- multi-head scaled dot-product ATTENTION on the CPU.
 * Owns: nothing; borrows the ctx scratch for one score block per thread.
 * Threads: the backend's worker; OpenMP over (batch, head, block of queries) tasks, each with
 * single-threaded sgemm calls (THREADING in cpu.h).
 * DESIGN. Never holds the whole B x heads x Nq x Nk score matrix (2 GB for SD's 64x64 latent):
 * a task takes bq queries of one head, computes S = q k^T / sqrt(d) for them only [bq, Nk],
 * turns each row into exp(s - max) (stable softmax; the row sum kept aside), multiplies by v
 * [bq, d] and divides each output row by its sum. Heads are column slices of q, k, v, so the
 * products read them in place with a leading dimension of C: no copies. With a causal mask,
 * query i sees keys 0..i, so a block only computes the first q0 + bq keys.
 * On CPUs with AVX-512, heads up to 96 wide go to the kernels of attention_avx512.c instead. */
#include "tensor/cpu/cpu.h"
#include "base/base.h"
#include "base/status.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <omp.h>

#define BLOCK_FLOATS (512 * 1024) /* target size of one score block (2 MiB): larger blocks repack k and v less often */

int cpu_op_attention(struct cpu_ctx *ctx, struct tensor *dst, struct err *err) {
    const struct tensor *tq = dst->src[0], *tk = dst->src[1], *tv = dst->src[2];
    const float *q = tq->data, *k = tk->data, *v = tv->data; /* [B, Nq, C], [B, Nk, C], [B, Nk, C] */
    float *out = dst->data;                                  /* [B, Nq, C] */
    int64_t nb = tq->shape[0], nq = tq->shape[1], c = tq->shape[2], nk = tk->shape[1];
    int64_t heads = dst->ip[0], d = c / heads;
    const bool causal = dst->ip[1] != 0;
    const float scale = (float)(1.0 / sqrt((double)d));
    if (nq > INT_MAX || nk > INT_MAX || c > INT_MAX)
        return err_set(err, STATUS_ERR_UNSUPPORTED, "attention: %lld queries x %lld keys x %lld channels is too large",
                       (long long)nq, (long long)nk, (long long)c);
    /* the register-tiled kernels win for narrow heads (SD1's d = 40, 80: 92-102 vs 63-90 GFLOP/s
     * per core measured); wide heads (VAE d = 512, SD1 d = 160) are faster through sgemm */
    if (cpu__simd() >= CPU_SIMD_AVX512 && d <= 96) {
        struct cpu_attn a = {.q = q, .k = k, .v = v, .out = out, .nb = nb, .nq = nq, .nk = nk, .c = c,
                             .heads = heads, .d = d, .causal = causal, .scale = scale};
        return cpu__attention_avx512(ctx, &a, err);
    }

    /* queries per block: about BLOCK_FLOATS scores, a multiple of 8, and enough tasks */
    int nthr = omp_get_max_threads();
    int64_t bq = MAX((int64_t)8, MIN((int64_t)512, BLOCK_FLOATS / nk)) & ~(int64_t)7;
    bq = MIN(bq, (nq + 7) & ~(int64_t)7);
    while (bq > 8 && nb * heads * ((nq + bq - 1) / bq) < 4 * nthr) bq = MAX((int64_t)8, (bq / 2) & ~(int64_t)7);
    int64_t nblk = (nq + bq - 1) / bq, tasks = nb * heads * nblk;

    size_t per_thread = (size_t)(bq * nk + bq); /* scores [bq, nk] + row sums [bq] */
    float *work = cpu__work(ctx, (size_t)nthr * per_thread * sizeof(float), "attention scores", err);
    if (!work) return err->code;

#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t b = t / (heads * nblk), h = (t / nblk) % heads, q0 = (t % nblk) * bq;
        int64_t m = MIN(bq, nq - q0);           /* queries in this block */
        int64_t kn = causal ? MIN(nk, q0 + m) : nk; /* keys any of them sees */
        const float *qp = q + (b * nq + q0) * c + h * d; /* [m, d], row stride c */
        const float *kp = k + b * nk * c + h * d;        /* [kn, d], row stride c */
        const float *vp = v + b * nk * c + h * d;        /* [kn, d], row stride c */
        float *op = out + (b * nq + q0) * c + h * d;     /* [m, d], row stride c */
        float *s = work + (size_t)omp_get_thread_num() * per_thread; /* [m, kn] */
        float *rsum = s + bq * nk;                                    /* [m] */

        /* S = q k^T / sqrt(d) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)kn, (int)d, scale, qp, (int)c, kp, (int)c,
                    0.0f, s, (int)kn);
        /* P = exp(S - rowmax), masked keys 0 */
        for (int64_t i = 0; i < m; i++) {
            float *row = s + i * kn;
            int64_t valid = causal ? MIN(kn, q0 + i + 1) : kn;
            float mx = cpu__vec_max(row, valid);
            rsum[i] = (float)(1.0 / cpu__vec_exp_sum(row, valid, mx));
            for (int64_t j = valid; j < kn; j++) row[j] = 0.0f;
        }
        /* O = P v, then each row / its sum */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)d, (int)kn, 1.0f, s, (int)kn, vp, (int)c,
                    0.0f, op, (int)c);
        for (int64_t i = 0; i < m; i++) {
            float *orow = op + i * c;
            const float r = rsum[i];
#pragma omp simd
            for (int64_t j = 0; j < d; j++) orow[j] *= r;
        }
    }
    return 0;
}
