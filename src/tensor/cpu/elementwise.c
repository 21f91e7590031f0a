/* tensor/cpu/elementwise.c -- ADD, MUL (numpy broadcasting of b into a), SCALE and the
 * activations SILU, GELU, QUICK_GELU, GEGLU on the CPU, and the sampler's step (SAMPLE).
 * Owns: nothing; reads dst->src[], writes dst->data (never aliased with a source, except
 * op_sample_step's, which is its x by design).
 * Threads: the backend's worker; loops are split into OpenMP tasks of CHUNK elements.
 * The maths of the activations lives in vec.c / vec_avx2.c. */
#include "tensor/cpu/cpu.h"
#include "base/base.h"

#include <string.h>

/* ===== Parallel maps ===== */

#define CHUNK 16384 /* elements per OpenMP task (64 KiB of floats; a multiple of 8) */

typedef void (*map_fn)(float *y, const float *x, int64_t n);

/* y = f(x) over n floats, split into chunks across the threads. */
static void map_unary(float *y, const float *x, int64_t n, map_fn f) {
    int64_t tasks = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static) if (n >= CPU_PAR_MIN)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t i0 = t * CHUNK;
        f(y + i0, x + i0, MIN((int64_t)CHUNK, n - i0));
    }
}

/* ===== Broadcasting ADD and MUL =====
 * b is right-aligned against a; each dim of b equals a's or is 1. Adjacent dims with the same
 * behaviour are merged into runs, so the common cases become one long inner loop:
 *   same shape            -> 1 run  [numel: walk b]
 *   b [C] vs [.., C]       -> 2 runs [rows: b fixed][C: walk b]
 *   b [B,C,1,1] vs NCHW    -> 2 runs [B*C: walk b][H*W: b fixed]
 * The last run is the inner loop; b's offset for each outer row comes from the other runs. */

struct run {
    int64_t size;    /* elements of a in this run */
    bool walk;       /* b has this run's dims (true) or broadcasts over them (false) */
    int64_t bstride; /* b elements per step of this run (0 when broadcast) */
};

static int collapse(const struct tensor *a, const struct tensor *b, struct run *runs) {
    int64_t ad[TENSOR_MAX_DIMS], bd[TENSOR_MAX_DIMS];
    for (int i = 0; i < TENSOR_MAX_DIMS; i++) {
        int ia = i - (TENSOR_MAX_DIMS - a->ndim), ib = i - (TENSOR_MAX_DIMS - b->ndim);
        ad[i] = ia >= 0 ? a->shape[ia] : 1;
        bd[i] = ib >= 0 ? b->shape[ib] : 1;
    }
    int n = 0;
    for (int i = 0; i < TENSOR_MAX_DIMS; i++) {
        if (ad[i] == 1) continue; /* size-1 dims merge with anything */
        bool walk = bd[i] == ad[i];
        if (n && runs[n - 1].walk == walk) {
            runs[n - 1].size *= ad[i];
        } else {
            runs[n].size = ad[i];
            runs[n].walk = walk;
            n++;
        }
    }
    if (!n) { /* a has one element */
        runs[0].size = 1;
        runs[0].walk = true;
        n = 1;
    }
    int64_t acc = 1;
    for (int i = n - 1; i >= 0; i--) {
        runs[i].bstride = runs[i].walk ? acc : 0;
        if (runs[i].walk) acc *= runs[i].size;
    }
    return n;
}

static int binary(struct tensor *dst, bool mul) {
    const struct tensor *ta = dst->src[0], *tb = dst->src[1];
    const float *restrict a = ta->data, *restrict b = tb->data;
    float *restrict y = dst->data;
    struct run runs[TENSOR_MAX_DIMS];
    int nr = collapse(ta, tb, runs);
    int64_t inner = runs[nr - 1].size;
    bool inner_walk = runs[nr - 1].walk;
    int64_t numel = tensor_numel(ta), rows = numel / inner;
    int64_t chunks = (inner + CHUNK - 1) / CHUNK, tasks = rows * chunks;

#pragma omp parallel for schedule(static) if (numel >= CPU_PAR_MIN)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t r = t / chunks, j0 = (t % chunks) * CHUNK, j1 = MIN(inner, j0 + CHUNK);
        /* b offset of row r: split r into the indices of the outer runs (row-major) */
        int64_t boff = 0, rem = r;
        for (int i = nr - 2; i >= 0; i--) {
            boff += (rem % runs[i].size) * runs[i].bstride;
            rem /= runs[i].size;
        }
        const float *restrict pa = a + r * inner;
        float *restrict py = y + r * inner;
        if (inner_walk) {
            const float *restrict pb = b + boff;
            if (mul) {
#pragma omp simd
                for (int64_t j = j0; j < j1; j++) py[j] = pa[j] * pb[j];
            } else {
#pragma omp simd
                for (int64_t j = j0; j < j1; j++) py[j] = pa[j] + pb[j];
            }
        } else {
            const float bv = b[boff];
            if (mul) {
#pragma omp simd
                for (int64_t j = j0; j < j1; j++) py[j] = pa[j] * bv;
            } else {
#pragma omp simd
                for (int64_t j = j0; j < j1; j++) py[j] = pa[j] + bv;
            }
        }
    }
    return 0;
}

int cpu_op_add(struct cpu_ctx *ctx, struct tensor *dst, struct err *err) { return binary(dst, false); }
int cpu_op_mul(struct cpu_ctx *ctx, struct tensor *dst, struct err *err) { return binary(dst, true); }

/* ===== SCALE: a * s + t ===== */

int cpu_op_scale(struct cpu_ctx *ctx, struct tensor *dst, struct err *err) {
    const float *x = dst->src[0]->data;
    float *y = dst->data;
    const float s = dst->fp[0], t = dst->fp[1], lo = dst->fp[2], hi = dst->fp[3];
    const bool clamp = dst->ip[0] != 0;
    int64_t n = tensor_numel(dst), tasks = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static) if (n >= CPU_PAR_MIN)
    for (int64_t k = 0; k < tasks; k++) {
        int64_t i0 = k * CHUNK, m = MIN((int64_t)CHUNK, n - i0);
        cpu__vec_affine(y + i0, x + i0, m, s, t, false);
        if (clamp) { /* torch.clamp: selects, so NaN stays NaN */
            float *p = y + i0;
#pragma omp simd
            for (int64_t j = 0; j < m; j++) {
                float v = p[j];
                v = v < lo ? lo : v;
                p[j] = v > hi ? hi : v;
            }
        }
    }
    return 0;
}

/* ===== Activations ===== */

int cpu_op_silu(struct cpu_ctx *ctx, struct tensor *dst, struct err *err) {
    map_unary(dst->data, dst->src[0]->data, tensor_numel(dst), cpu__vec_silu);
    return 0;
}

int cpu_op_gelu(struct cpu_ctx *ctx, struct tensor *dst, struct err *err) {
    map_unary(dst->data, dst->src[0]->data, tensor_numel(dst), cpu__vec_gelu);
    return 0;
}

int cpu_op_quick_gelu(struct cpu_ctx *ctx, struct tensor *dst, struct err *err) {
    map_unary(dst->data, dst->src[0]->data, tensor_numel(dst), cpu__vec_quick_gelu);
    return 0;
}

/* [.., 2D] -> [.., D]: value = first half of each row, gate = second half. */
int cpu_op_geglu(struct cpu_ctx *ctx, struct tensor *dst, struct err *err) {
    const float *x = dst->src[0]->data;
    float *y = dst->data;
    int64_t d = dst->shape[dst->ndim - 1], rows = tensor_numel(dst) / d;
#pragma omp parallel for schedule(static) if (rows * d >= CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *row = x + r * 2 * d; /* [value (d) | gate (d)] */
        cpu__vec_geglu(y + r * d, row, row + d, d);
    }
    return 0;
}

/* ===== The sampler's step (op_sample_in, op_sample_step) =====
 * One rounding per operation, in the host loop's order (ISO C: no contraction). */

int cpu_op_sample(struct cpu_ctx *ctx, struct tensor *dst, struct err *err) {
    (void)ctx, (void)err;
    float *x = dst->src[0]->data;
    const float *p = dst->ip[0] == 0 ? dst->src[1]->data : dst->src[2]->data;
    const int64_t n = tensor_numel(dst->src[0]);
    if (dst->ip[0] == 0) { /* x / c_in, once per entry */
        float *y = dst->data;
        const int64_t e = tensor_numel(dst) / n;
        for (int64_t k = 0; k < n; k++) y[k] = x[k] / p[0];
        for (int64_t i = 1; i < e; i++) memcpy(y + i * n, y, (size_t)n * sizeof(float));
        return 0;
    }
    const float *eps = dst->src[1]->data;
    const float sigma = p[1], dt = p[2], cfg = p[3];
    const bool two = dst->ip[1] == 2;
    for (int64_t k = 0; k < n; k++) {
        float cond = 0.0f + (x[k] - eps[k] * sigma), den = cond;
        if (two) {
            float uncond = 0.0f + (x[k] - eps[n + k] * sigma);
            den = uncond + (cond - uncond) * cfg;
        }
        float d = (x[k] - den) / sigma;
        x[k] = x[k] + d * dt;
    }
    return 0;
}
