/* tests/unit/tensor/test_ops.c -- every CPU op against a plain double-precision reference.
 * Each case records one op with op_*, runs it through the real path (tctx_plan, tctx_set,
 * tctx_run, tctx_get on backend_cpu_new(0)) on fixed-seed random inputs, and compares with a
 * straightforward loop in double written here. Tolerances are max |got - ref| relative to
 * max |ref|: 1e-5 for elementwise ops, 1e-4 for reductions and products (fp32 BLAS sums).
 * Shapes are SD layers at small scale plus edge cases (odd sizes, asymmetric padding, a query
 * count that is not a multiple of the attention block, causal masks, broadcasting variants).
 * The vector-maths kernels (vec.c) are also checked element by element on both SIMD levels. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "base/mem.h"
#include "base/status.h"
#include "tensor/backend.h"
#include "tensor/cpu/cpu.h"
#include "tensor/tensor.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ===== Harness ===== */

#define MAX_IN 8
#define MAX_BUF 64

struct fx {
    struct backend *be;
    struct tscratch scratch;
    struct tctx c;
    struct tensor *in[MAX_IN]; /* inputs of the current case */
    void *host[MAX_IN];        /* their host data */
    int n_in;
    void *bufs[MAX_BUF]; /* host buffers of the current case, freed by begin() / teardown */
    int n_bufs;
    uint64_t rng;
};

static void *talloc(struct fx *f, size_t n) {
    assert_true(f->n_bufs < MAX_BUF);
    return f->bufs[f->n_bufs++] = mem_calloc(1, n ? n : 1);
}

static void free_bufs(struct fx *f) {
    for (int i = 0; i < f->n_bufs; i++) mem_free(f->bufs[i]);
    f->n_bufs = 0;
}

static int setup(void **state) {
    struct fx *f = mem_calloc(1, sizeof *f);
    f->be = backend_cpu_new(0);
    if (!f->be) return -1;
    tscratch_init(&f->scratch, f->be);
    tctx_init(&f->c, f->be, &f->scratch);
    f->rng = 0x6b696c6eULL; /* fixed seed */
    *state = f;
    return 0;
}

static int teardown(void **state) {
    struct fx *f = *state;
    free_bufs(f);
    tctx_deinit(&f->c);
    tscratch_deinit(&f->scratch);
    backend_free(f->be);
    mem_free(f);
    cpu__simd_force(-1);
    cpu__conv_force(-1);
    cpu__work_max_force(0);
    return 0;
}

/* Starts a new case: forgets the previous graph and its buffers. */
static void begin(struct fx *f) {
    tctx_reset(&f->c);
    free_bufs(f);
    f->n_in = 0;
}

/* splitmix64 -> uniform double in [0, 1) */
static double urand(struct fx *f) {
    uint64_t z = (f->rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-53;
}

#define SH(...) (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__}

static int64_t numel_of(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

/* An F32 input filled with uniform values in [lo, hi). */
static struct tensor *in_rand(struct fx *f, float **host, int ndim, const int64_t *shape, double lo, double hi) {
    struct tensor *t = tensor_input(&f->c, DTYPE_F32, ndim, shape);
    assert_non_null(t);
    int64_t n = numel_of(ndim, shape);
    float *h = talloc(f, (size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) h[i] = (float)(lo + (hi - lo) * urand(f));
    assert_true(f->n_in < MAX_IN);
    f->in[f->n_in] = t;
    f->host[f->n_in++] = h;
    if (host) *host = h;
    return t;
}

/* An input with caller-provided data (e.g. I32 ids). */
static struct tensor *in_data(struct fx *f, enum dtype dt, int ndim, const int64_t *shape, void *host) {
    struct tensor *t = tensor_input(&f->c, dt, ndim, shape);
    assert_non_null(t);
    f->in[f->n_in] = t;
    f->host[f->n_in++] = host;
    return t;
}

/* Plans, fills the inputs, runs; returns the status (the output is not read). */
static int run_rc(struct fx *f, struct tensor *out) {
    int rc = tctx_plan(&f->c, &out, 1);
    if (rc) return rc;
    for (int i = 0; i < f->n_in; i++) {
        rc = tctx_set(&f->c, f->in[i], f->host[i]);
        if (rc) return rc;
    }
    return tctx_run(&f->c);
}

/* Runs the graph and returns the output's values (a case buffer). */
static float *run(struct fx *f, struct tensor *out) {
    assert_non_null(out);
    int rc = run_rc(f, out);
    if (rc) print_error("graph failed: %s (%s)\n", status_name(rc), f->c.err.msg);
    assert_int_equal(rc, 0);
    float *got = talloc(f, tensor_nbytes(out));
    assert_int_equal(tctx_get(&f->c, out, got), 0);
    return got;
}

static double *ref_buf(struct fx *f, int64_t n) { return talloc(f, (size_t)n * sizeof(double)); }

/* max |got - ref| / max |ref| <= tol (and no NaN); a max |ref| under 1e-30 counts as 1e-30,
 * so all-underflowing outputs compare by their absolute error. */
static void check_close(const char *what, const float *got, const double *ref, int64_t n, double tol) {
    double maxref = 0, maxerr = 0;
    int64_t at = 0;
    for (int64_t i = 0; i < n; i++) {
        if (isnan(got[i]) && !isnan(ref[i])) {
            print_error("%s: NaN at %lld (ref %g)\n", what, (long long)i, ref[i]);
            fail();
        }
        if (fabs(ref[i]) > maxref) maxref = fabs(ref[i]);
        double e = fabs(got[i] - ref[i]);
        if (e > maxerr) {
            maxerr = e;
            at = i;
        }
    }
    double rel = maxerr / (maxref > 1e-30 ? maxref : 1e-30); /* below 1e-30 counts as 0 */
    if (!(rel <= tol)) {
        print_error("%s: max abs err %.3g at %lld (got %.9g, ref %.9g) = %.3g of max |ref| %.3g > %.1g\n", what,
                    maxerr, (long long)at, got[at], ref[at], rel, maxref, tol);
        fail();
    }
}

/* |got - ref| <= rtol |ref| + atol for every element (NaN must match NaN). */
static void check_each(const char *what, const float *got, const double *ref, int64_t n, double rtol, double atol) {
    for (int64_t i = 0; i < n; i++) {
        if (isnan(ref[i]) && isnan(got[i])) continue;
        double e = fabs(got[i] - ref[i]);
        if (!(e <= rtol * fabs(ref[i]) + atol)) {
            print_error("%s: element %lld: got %.9g, ref %.9g (err %.3g)\n", what, (long long)i, got[i], ref[i], e);
            fail();
        }
    }
}

/* The best SIMD level of this CPU (clears any forced level; loops then force each one). */
static int simd_top(void) {
    cpu__simd_force(-1);
    return (int)cpu__simd();
}

/* ===== Reference maths (double) ===== */

static double ref_silu(double x) { return x / (1.0 + exp(-x)); }
/* 1 + erf(u) written as erfc(-u): no cancellation in the negative tail, even in double */
static double ref_gelu(double x) { return 0.5 * x * erfc(-x / sqrt(2.0)); }
static double ref_quick_gelu(double x) { return x / (1.0 + exp(-1.702 * x)); }

/* ===== ADD / MUL with broadcasting ===== */

/* Reference: index b by right-aligning its dims against a's (dims of 1 repeat). */
static void ref_binary(const float *a, const int64_t *as, int an, const float *b, const int64_t *bs, int bn, bool mul,
                       double *out) {
    int64_t n = numel_of(an, as);
    for (int64_t i = 0; i < n; i++) {
        int64_t rem = i, bi = 0, bstride = 1;
        for (int d = an - 1; d >= 0; d--) {
            int64_t idx = rem % as[d];
            rem /= as[d];
            int db = d - (an - bn);
            if (db >= 0) {
                if (bs[db] != 1) bi += idx * bstride;
                bstride *= bs[db];
            }
        }
        out[i] = mul ? (double)a[i] * b[bi] : (double)a[i] + b[bi];
    }
}

static void binary_case(struct fx *f, bool mul, int an, const int64_t *as, int bn, const int64_t *bs) {
    begin(f);
    float *xa, *xb;
    struct tensor *a = in_rand(f, &xa, an, as, -3, 3);
    struct tensor *b = in_rand(f, &xb, bn, bs, -3, 3);
    float *got = run(f, mul ? op_mul(&f->c, a, b) : op_add(&f->c, a, b));
    int64_t n = numel_of(an, as);
    double *ref = ref_buf(f, n);
    ref_binary(xa, as, an, xb, bs, bn, mul, ref);
    char what[128];
    snprintf(what, sizeof what, "%s %dd (b %dd, %lld elements)", mul ? "mul" : "add", an, bn, (long long)n);
    check_close(what, got, ref, n, 1e-6);
}

static void test_add_mul(void **state) {
    struct fx *f = *state;
    for (int mul = 0; mul < 2; mul++) {
        binary_case(f, mul, SH(2, 3, 5, 7), SH(2, 3, 5, 7));       /* same shape */
        binary_case(f, mul, SH(2, 3, 5, 7), SH(7));                /* bias over the last dim */
        binary_case(f, mul, SH(2, 3, 5, 7), SH(2, 3, 1, 1));       /* per-channel NCHW */
        binary_case(f, mul, SH(2, 3, 5, 7), SH(3, 1, 7));          /* mixed runs */
        binary_case(f, mul, SH(2, 3, 5, 7), SH(1));                /* scalar */
        binary_case(f, mul, SH(2, 3, 5, 7), SH(5, 1));             /* inner broadcast, outer repeat */
        binary_case(f, mul, SH(2, 3, 5, 7), SH(1, 3, 1, 7));       /* leading 1 */
        binary_case(f, mul, SH(2, 64, 320), SH(320));              /* SD: linear bias, threaded */
        binary_case(f, mul, SH(2, 320, 16, 16), SH(2, 320, 1, 1)); /* SD: time embedding per channel */
        binary_case(f, mul, SH(3, 70001), SH(3, 70001));           /* long rows, several chunks */
        binary_case(f, mul, SH(1), SH(1));
    }
}

/* ===== SCALE and the activations ===== */

static void test_scale(void **state) {
    struct fx *f = *state;
    begin(f);
    float *x;
    struct tensor *a = in_rand(f, &x, SH(2, 4, 33, 35), -5, 5);
    float *got = run(f, op_scale(&f->c, a, 0.18215f, -0.5f));
    int64_t n = 2 * 4 * 33 * 35;
    double *ref = ref_buf(f, n);
    for (int64_t i = 0; i < n; i++) ref[i] = (double)x[i] * 0.18215f + -0.5f;
    check_close("scale", got, ref, n, 1e-6);
    /* clamped (the VAE's last op): bit for bit x * 0.5 + 0.5 then torch.clamp; NaN stays NaN */
    begin(f);
    a = in_rand(f, &x, SH(3, 17, 19), -3, 3);
    x[5] = NAN;
    got = run(f, op_scale_clamp(&f->c, a, 0.5f, 0.5f, 0.0f, 1.0f));
    int clamped = 0;
    for (int64_t i = 0; i < 3 * 17 * 19; i++) {
        float v = x[i] * 0.5f + 0.5f;
        v = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
        clamped += v == 0.0f || v == 1.0f;
        if (i == 5) assert_true(isnan(got[i]));
        else if (memcmp(&v, &got[i], sizeof v) != 0) fail_msg("scale clamp %lld: %.9g, want %.9g", (long long)i, got[i], v);
    }
    assert_true(clamped > 100); /* both sides were clamped */
}

enum act { ACT_SILU, ACT_GELU, ACT_QUICK_GELU };

static void act_case(struct fx *f, enum act act, int ndim, const int64_t *shape, double lo, double hi) {
    begin(f);
    float *x;
    struct tensor *a = in_rand(f, &x, ndim, shape, lo, hi);
    struct tensor *y = act == ACT_SILU   ? op_silu(&f->c, a)
                       : act == ACT_GELU ? op_gelu(&f->c, a)
                                         : op_quick_gelu(&f->c, a);
    float *got = run(f, y);
    int64_t n = numel_of(ndim, shape);
    double *ref = ref_buf(f, n);
    for (int64_t i = 0; i < n; i++)
        ref[i] = act == ACT_SILU ? ref_silu(x[i]) : act == ACT_GELU ? ref_gelu(x[i]) : ref_quick_gelu(x[i]);
    const char *name = act == ACT_SILU ? "silu" : act == ACT_GELU ? "gelu" : "quick_gelu";
    check_close(name, got, ref, n, 1e-5);
    /* element by element, within 2e-6 plus the function's own conditioning: the tails
     * round k x (sigmoid) or x / sqrt 2 (erfc) to float first, as torch does, so the relative
     * error may grow like |x| * 2^-24 (sigmoid) or x^2 * 2^-24 (gelu's negative tail) */
    for (int64_t i = 0; i < n; i++) {
        double cond = act == ACT_GELU ? x[i] * x[i] : fabs(x[i]);
        double e = fabs(got[i] - ref[i]), rtol = 2e-6 + 1.5e-7 * cond;
        if (!(e <= rtol * fabs(ref[i]) + 1e-30)) {
            print_error("%s: x = %.9g: got %.9g, ref %.9g\n", name, x[i], got[i], ref[i]);
            fail();
        }
    }
}

static void test_activations(void **state) {
    struct fx *f = *state;
    for (int level = CPU_SIMD_SCALAR, top = simd_top(); level <= top; level++) {
        cpu__simd_force(level);
        for (int act = ACT_SILU; act <= ACT_QUICK_GELU; act++) {
            act_case(f, act, SH(1003), -10, 10);               /* odd length: vector tail */
            act_case(f, act, SH(2, 320, 12, 12), -6, 6);       /* threaded */
            act_case(f, act, SH(5), -1e-3, 1e-3);              /* tiny values */
            act_case(f, act, SH(37), 20, 90);                  /* large positive */
            act_case(f, act, SH(37), -90, -20);                /* large negative (tails) */
        }
    }
    cpu__simd_force(-1);
}

static void test_geglu(void **state) {
    struct fx *f = *state;
    const int64_t shapes[][3] = {{2, 7, 26}, {2, 64, 320}, {1, 3, 2}};
    for (int level = CPU_SIMD_SCALAR, top = simd_top(); level <= top; level++) {
        cpu__simd_force(level);
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            begin(f);
            float *x;
            struct tensor *a = in_rand(f, &x, 3, shapes[s], -4, 4);
            float *got = run(f, op_geglu(&f->c, a));
            int64_t d = shapes[s][2] / 2, rows = shapes[s][0] * shapes[s][1];
            double *ref = ref_buf(f, rows * d);
            for (int64_t r = 0; r < rows; r++)
                for (int64_t j = 0; j < d; j++)
                    ref[r * d + j] = (double)x[r * 2 * d + j] * ref_gelu(x[r * 2 * d + d + j]);
            check_close("geglu", got, ref, rows * d, 1e-6);
        }
    }
    cpu__simd_force(-1);
}

/* ===== LINEAR ===== */

static void linear_case(struct fx *f, int xn, const int64_t *xs, int64_t n, bool bias) {
    begin(f);
    int64_t k = xs[xn - 1], m = numel_of(xn, xs) / k;
    float *x, *w, *b = NULL;
    struct tensor *tx = in_rand(f, &x, xn, xs, -1, 1);
    struct tensor *tw = in_rand(f, &w, SH(n, k), -1, 1);
    struct tensor *tb = bias ? in_rand(f, &b, SH(n), -1, 1) : NULL;
    float *got = run(f, op_linear(&f->c, tx, tw, tb));
    double *ref = ref_buf(f, m * n);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double s = bias ? b[j] : 0;
            for (int64_t q = 0; q < k; q++) s += (double)x[i * k + q] * w[j * k + q];
            ref[i * n + j] = s;
        }
    check_close("linear", got, ref, m * n, 1e-5);
}

static void test_linear(void **state) {
    struct fx *f = *state;
    linear_case(f, SH(2, 5, 7), 3, true);
    linear_case(f, SH(2, 5, 7), 3, false);
    linear_case(f, SH(2, 77, 96), 40, true);   /* cross-attention k/v projection shape, small */
    linear_case(f, SH(2, 320), 129, true);     /* time embedding: M = batch */
    linear_case(f, SH(1, 1), 1, true);
    linear_case(f, SH(3, 4, 5, 17), 9, false); /* 4-d x */
    linear_case(f, SH(2, 300, 160), 130, true); /* large enough to be cut into a grid of tasks */
    linear_case(f, SH(2, 1280), 1100, true);    /* M = 2: the grid cuts N */
}

/* ===== CONV2D ===== */

static void conv_case(struct fx *f, const int64_t *xs, int64_t o, int64_t kh, int64_t kw, int s, int pt, int pl,
                      int pb, int pr, bool bias) {
    begin(f);
    int64_t bn = xs[0], c = xs[1], h = xs[2], w = xs[3];
    float *x, *wt, *b = NULL;
    struct tensor *tx = in_rand(f, &x, 4, xs, -1, 1);
    struct tensor *tw = in_rand(f, &wt, SH(o, c, kh, kw), -0.5, 0.5);
    struct tensor *tb = bias ? in_rand(f, &b, SH(o), -1, 1) : NULL;
    struct tensor *y = op_conv2d_pad(&f->c, tx, tw, tb, s, pt, pl, pb, pr);
    assert_non_null(y);
    int64_t ho = (h + pt + pb - kh) / s + 1, wo = (w + pl + pr - kw) / s + 1;
    assert_int_equal(y->shape[2], ho);
    assert_int_equal(y->shape[3], wo);
    float *got = run(f, y);
    double *ref = ref_buf(f, bn * o * ho * wo);
    for (int64_t ib = 0; ib < bn; ib++)
        for (int64_t oc = 0; oc < o; oc++)
            for (int64_t oy = 0; oy < ho; oy++)
                for (int64_t ox = 0; ox < wo; ox++) {
                    double acc = bias ? b[oc] : 0;
                    for (int64_t ic = 0; ic < c; ic++)
                        for (int64_t i = 0; i < kh; i++) {
                            int64_t iy = oy * s - pt + i;
                            if (iy < 0 || iy >= h) continue;
                            for (int64_t j = 0; j < kw; j++) {
                                int64_t ix = ox * s - pl + j;
                                if (ix < 0 || ix >= w) continue;
                                acc += (double)x[((ib * c + ic) * h + iy) * w + ix] *
                                       wt[((oc * c + ic) * kh + i) * kw + j];
                            }
                        }
                    ref[((ib * o + oc) * ho + oy) * wo + ox] = acc;
                }
    char what[160];
    snprintf(what, sizeof what, "conv2d x [%lld,%lld,%lld,%lld] w [%lld,%lld,%lld,%lld] s %d pad %d,%d,%d,%d",
             (long long)bn, (long long)c, (long long)h, (long long)w, (long long)o, (long long)c, (long long)kh,
             (long long)kw, s, pt, pl, pb, pr);
    check_close(what, got, ref, bn * o * ho * wo, 1e-5);
}

static void test_conv2d(void **state) {
    struct fx *f = *state;
    /* each case four times: im2col everywhere, then Winograd wherever it fits (3x3, stride 1),
     * each with the default scratch bound and with 64 KiB, which cuts even these small convs
     * into many waves (im2col: inside rows, across images) and chunks (Winograd: output
     * channels and tile rows) */
    for (int mode = 0; mode < 4; mode++) {
        cpu__conv_force(mode & 1);
        cpu__work_max_force(mode & 2 ? 64 << 10 : 0);
        conv_case(f, (int64_t[]){2, 5, 9, 11}, 7, 3, 3, 1, 1, 1, 1, 1, true);   /* ResBlock conv, odd sizes */
        conv_case(f, (int64_t[]){2, 5, 9, 11}, 7, 3, 3, 1, 1, 1, 1, 1, false);
        conv_case(f, (int64_t[]){1, 4, 8, 8}, 6, 3, 3, 2, 0, 0, 1, 1, true);    /* VAE downsample: pad right/bottom */
        conv_case(f, (int64_t[]){2, 6, 9, 7}, 5, 3, 3, 2, 1, 1, 1, 1, true);    /* UNet downsample, odd input */
        conv_case(f, (int64_t[]){2, 8, 5, 6}, 3, 1, 1, 1, 0, 0, 0, 0, true);    /* 1x1: plain sgemm */
        conv_case(f, (int64_t[]){1, 8, 5, 6}, 3, 1, 1, 1, 0, 0, 0, 0, false);
        conv_case(f, (int64_t[]){1, 8, 7, 6}, 3, 1, 1, 2, 0, 0, 0, 0, true);    /* 1x1 stride 2: im2col path */
        conv_case(f, (int64_t[]){1, 3, 6, 7}, 4, 1, 1, 1, 1, 0, 0, 2, true);    /* 1x1 with padding */
        conv_case(f, (int64_t[]){1, 2, 7, 9}, 3, 5, 3, 1, 2, 0, 1, 2, true);    /* rectangular kernel, uneven pads */
        conv_case(f, (int64_t[]){1, 2, 5, 20}, 3, 1, 17, 1, 0, 1, 0, 1, true);  /* kernel wider than 16 columns */
        conv_case(f, (int64_t[]){1, 3, 4, 4}, 2, 3, 3, 3, 2, 2, 2, 2, true);    /* stride 3, rows entirely padding */
        conv_case(f, (int64_t[]){2, 4, 16, 16}, 8, 3, 3, 1, 1, 1, 1, 1, true);  /* UNet conv_in shape */
        if (mode == 0) { /* the default bound at work: im2col of 73 MB in two waves, mid-row */
            conv_case(f, (int64_t[]){1, 512, 63, 63}, 4, 3, 3, 1, 1, 1, 1, 1, true);
        }
        conv_case(f, (int64_t[]){3, 4, 12, 13}, 8, 3, 3, 1, 1, 1, 1, 1, true);   /* 64 KiB: waves of 2 + 1 images */
        conv_case(f, (int64_t[]){3, 48, 12, 13}, 40, 3, 3, 1, 1, 1, 1, 1, true); /* 64 KiB Winograd: 3 x 18 chunks */
        conv_case(f, (int64_t[]){3, 16, 5, 5}, 4, 1, 1, 1, 0, 0, 0, 0, true); /* 1x1 over several images */
        conv_case(f, (int64_t[]){2, 40, 33, 35}, 36, 3, 3, 1, 1, 1, 1, 1, true); /* odd sizes: partial tiles */
        conv_case(f, (int64_t[]){1, 8, 9, 8}, 5, 3, 3, 1, 0, 2, 1, 0, false);    /* uneven padding */
        conv_case(f, (int64_t[]){2, 32, 40, 40}, 32, 3, 3, 1, 1, 1, 1, 1, true); /* 800 tiles: Winograd in auto too */
    }
    cpu__conv_force(-1);
    cpu__work_max_force(0);
}

/* ===== GROUP_NORM and LAYER_NORM ===== */

static void group_norm_case(struct fx *f, int xn, const int64_t *xs, int groups, float eps, bool silu, bool affine,
                            double lo, double hi, double tol) {
    begin(f);
    int64_t bn = xs[0], c = xs[1], sp = numel_of(xn, xs) / (bn * c), cpg = c / groups;
    float *x, *w = NULL, *b = NULL;
    struct tensor *tx = in_rand(f, &x, xn, xs, lo, hi);
    struct tensor *tw = affine ? in_rand(f, &w, SH(c), 0.5, 1.5) : NULL;
    struct tensor *tb = affine ? in_rand(f, &b, SH(c), -1, 1) : NULL;
    float *got = run(f, op_group_norm(&f->c, tx, tw, tb, groups, eps, silu));
    double *ref = ref_buf(f, bn * c * sp);
    for (int64_t ib = 0; ib < bn; ib++)
        for (int64_t g = 0; g < groups; g++) {
            const float *xg = x + (ib * c + g * cpg) * sp;
            int64_t n = cpg * sp;
            double mean = 0, var = 0;
            for (int64_t i = 0; i < n; i++) mean += xg[i];
            mean /= (double)n;
            for (int64_t i = 0; i < n; i++) var += (xg[i] - mean) * (xg[i] - mean);
            var /= (double)n;
            for (int64_t i = 0; i < n; i++) {
                int64_t ch = g * cpg + i / sp;
                double v = (xg[i] - mean) / sqrt(var + eps);
                if (affine) v = v * w[ch] + b[ch];
                ref[(ib * c + g * cpg) * sp + i] = silu ? ref_silu(v) : v;
            }
        }
    check_close("group_norm", got, ref, bn * c * sp, tol);
}

static void test_group_norm(void **state) {
    struct fx *f = *state;
    group_norm_case(f, SH(2, 6, 5, 7), 3, 1e-5f, false, true, -2, 2, 1e-5);
    group_norm_case(f, SH(2, 6, 5, 7), 3, 1e-5f, true, true, -2, 2, 1e-5);   /* fused SiLU */
    group_norm_case(f, SH(2, 6, 5, 7), 6, 1e-6f, false, false, -2, 2, 1e-5); /* no affine, 1 channel per group */
    group_norm_case(f, SH(1, 64, 9), 32, 1e-6f, true, true, -3, 1, 1e-5);    /* 3-d input */
    group_norm_case(f, SH(2, 64, 16, 16), 32, 1e-5f, true, true, 0, 4, 1e-5); /* SD: 32 groups, threaded */
    group_norm_case(f, SH(3, 4), 2, 1e-5f, false, true, -1, 1, 1e-5);        /* 2-d: no spatial dims */
    /* one group of 16 channels x 512 x 512 values with a large mean: a float one-pass
     * E[x^2] - E[x]^2 would lose every digit of the variance here */
    group_norm_case(f, SH(1, 16, 512, 512), 1, 1e-6f, false, true, 99, 101, 1e-5);
}

static void layer_norm_case(struct fx *f, int xn, const int64_t *xs, bool has_w, bool has_b, double lo, double hi) {
    begin(f);
    int64_t c = xs[xn - 1], rows = numel_of(xn, xs) / c;
    float *x, *w = NULL, *b = NULL;
    struct tensor *tx = in_rand(f, &x, xn, xs, lo, hi);
    struct tensor *tw = has_w ? in_rand(f, &w, SH(c), 0.5, 1.5) : NULL;
    struct tensor *tb = has_b ? in_rand(f, &b, SH(c), -1, 1) : NULL;
    float *got = run(f, op_layer_norm(&f->c, tx, tw, tb, 1e-5f));
    double *ref = ref_buf(f, rows * c);
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * c;
        double mean = 0, var = 0;
        for (int64_t i = 0; i < c; i++) mean += xr[i];
        mean /= (double)c;
        for (int64_t i = 0; i < c; i++) var += (xr[i] - mean) * (xr[i] - mean);
        var /= (double)c;
        for (int64_t i = 0; i < c; i++) {
            double v = (xr[i] - mean) / sqrt(var + 1e-5f);
            ref[r * c + i] = v * (has_w ? w[i] : 1.0) + (has_b ? b[i] : 0.0);
        }
    }
    check_close("layer_norm", got, ref, rows * c, 1e-5);
}

static void test_layer_norm(void **state) {
    struct fx *f = *state;
    layer_norm_case(f, SH(2, 7, 33), true, true, -2, 2);
    layer_norm_case(f, SH(2, 7, 33), true, false, -2, 2);
    layer_norm_case(f, SH(2, 7, 33), false, true, -2, 2);
    layer_norm_case(f, SH(2, 7, 33), false, false, -2, 2);
    layer_norm_case(f, SH(2, 77, 768), true, true, -3, 5);  /* CLIP */
    layer_norm_case(f, SH(2, 256, 320), true, true, 10, 12); /* UNet, offset mean, threaded */
    layer_norm_case(f, SH(1), false, false, -1, 1);          /* one element: output 0 */
}

/* ===== ATTENTION ===== */

static void attention_case(struct fx *f, int64_t bn, int64_t nq, int64_t nk, int64_t c, int heads, bool causal) {
    begin(f);
    float *q, *k, *v;
    struct tensor *tq = in_rand(f, &q, SH(bn, nq, c), -2, 2);
    struct tensor *tk = in_rand(f, &k, SH(bn, nk, c), -2, 2);
    struct tensor *tv = in_rand(f, &v, SH(bn, nk, c), -1, 1);
    float *got = run(f, op_attention(&f->c, tq, tk, tv, heads, causal));
    int64_t d = c / heads;
    double *ref = ref_buf(f, bn * nq * c);
    double *p = ref_buf(f, nk);
    for (int64_t b = 0; b < bn; b++)
        for (int64_t h = 0; h < heads; h++)
            for (int64_t i = 0; i < nq; i++) {
                int64_t valid = causal ? (i + 1 < nk ? i + 1 : nk) : nk;
                double mx = -INFINITY, sum = 0;
                for (int64_t j = 0; j < valid; j++) {
                    double s = 0;
                    for (int64_t e = 0; e < d; e++)
                        s += (double)q[(b * nq + i) * c + h * d + e] * k[(b * nk + j) * c + h * d + e];
                    p[j] = s / sqrt((double)d);
                    if (p[j] > mx) mx = p[j];
                }
                for (int64_t j = 0; j < valid; j++) sum += p[j] = exp(p[j] - mx);
                for (int64_t e = 0; e < d; e++) {
                    double o = 0;
                    for (int64_t j = 0; j < valid; j++) o += p[j] * v[(b * nk + j) * c + h * d + e];
                    ref[(b * nq + i) * c + h * d + e] = o / sum;
                }
            }
    char what[128];
    snprintf(what, sizeof what, "attention B %lld Nq %lld Nk %lld C %lld heads %d%s", (long long)bn, (long long)nq,
             (long long)nk, (long long)c, heads, causal ? " causal" : "");
    check_close(what, got, ref, bn * nq * c, 1e-5);
}

/* Scores of 10000 and 12000: without subtracting each row's max first, exp overflows to inf
 * and the output is NaN. Key 1 wins by 2000, so every output row is v's row 1. */
static void attention_large_scores(struct fx *f) {
    begin(f);
    float *q, *k, *v;
    struct tensor *tq = in_rand(f, &q, SH(1, 4, 4), 0, 1);
    struct tensor *tk = in_rand(f, &k, SH(1, 3, 4), 0, 1);
    struct tensor *tv = in_rand(f, &v, SH(1, 3, 4), 0, 1);
    for (int i = 0; i < 16; i++) q[i] = 100.0f;
    for (int i = 0; i < 12; i++) k[i] = (i / 4 == 1) ? 60.0f : 50.0f;
    float *got = run(f, op_attention(&f->c, tq, tk, tv, 1, false));
    for (int i = 0; i < 4; i++)
        for (int e = 0; e < 4; e++) assert_float_equal(got[i * 4 + e], v[4 + e], 1e-6);
}

static void test_attention(void **state) {
    struct fx *f = *state;
    /* every SIMD level: below AVX-512 the sgemm path, at AVX-512 the register-tiled kernels */
    for (int level = CPU_SIMD_SCALAR, top = simd_top(); level <= top; level++) {
        cpu__simd_force(level);
        attention_case(f, 2, 13, 13, 16, 2, false);    /* self-attention */
        attention_case(f, 2, 37, 19, 32, 4, false);    /* cross-attention, Nq != Nk */
        attention_case(f, 2, 100, 100, 320, 8, false); /* SD1 64x64 level shape: 8 heads of 40 */
        attention_case(f, 2, 64, 77, 40, 1, false);    /* SD cross-attention, 77 tokens */
        attention_case(f, 2, 21, 21, 24, 3, true);     /* causal (CLIP) */
        attention_case(f, 1, 20, 12, 16, 2, true);     /* causal with Nq > Nk: late queries see all keys */
        attention_case(f, 1, 300, 1024, 16, 2, false); /* several blocks, last one partial */
        attention_case(f, 1, 300, 300, 24, 3, true);   /* causal over several blocks */
        attention_case(f, 1, 256, 256, 64, 1, false);  /* one head, wide (VAE mid-block style) */
        attention_case(f, 2, 1, 1, 8, 8, false);       /* d = 1, single token */
        attention_case(f, 1, 50, 70, 160, 2, false);   /* d = 80: two channel chunks, the last one short */
        attention_case(f, 1, 31, 64, 320, 2, true);    /* d = 160 (sgemm path), causal, one key tile */
        attention_case(f, 2, 7, 129, 48, 1, false);    /* keys one past two tiles */
        attention_large_scores(f);
    }
    cpu__simd_force(-1);
}

/* ===== TRANSPOSE, UPSAMPLE_NEAREST, CONCAT, GET_ROWS ===== */

static void transpose_case(struct fx *f, int xn, const int64_t *xs) {
    begin(f);
    float *x;
    struct tensor *a = in_rand(f, &x, xn, xs, -1, 1);
    float *got = run(f, op_transpose(&f->c, a));
    int64_t m = xs[xn - 2], n = xs[xn - 1], mats = numel_of(xn, xs) / (m * n);
    double *ref = ref_buf(f, mats * m * n);
    for (int64_t t = 0; t < mats; t++)
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) ref[t * m * n + j * m + i] = x[t * m * n + i * n + j];
    check_close("transpose", got, ref, mats * m * n, 0);
}

static void test_transpose(void **state) {
    struct fx *f = *state;
    transpose_case(f, SH(5, 3));
    transpose_case(f, SH(3, 37, 45));      /* not a multiple of the tile */
    transpose_case(f, SH(2, 320, 256));    /* NCHW -> [B, HW, C], threaded */
    transpose_case(f, SH(2, 3, 33, 65));
    transpose_case(f, SH(1, 1));
}

/* ===== Channels-last variants (op_*_nhwc) ===== */

/* op_conv2d_nhwc: x [B, H, W, C], w [O, kh, kw, C] against a double loop in that layout. */
static void conv_nhwc_case(struct fx *f, const int64_t *xs, int64_t o, int64_t k, int s, int pad, bool bias) {
    begin(f);
    int64_t bn = xs[0], h = xs[1], w = xs[2], c = xs[3];
    float *x, *wt, *b = NULL;
    struct tensor *tx = in_rand(f, &x, 4, xs, -1, 1);
    struct tensor *tw = in_rand(f, &wt, SH(o, k, k, c), -0.5, 0.5);
    struct tensor *tb = bias ? in_rand(f, &b, SH(o), -1, 1) : NULL;
    struct tensor *y = op_conv2d_nhwc(&f->c, tx, tw, tb, s, pad);
    assert_non_null(y);
    int64_t ho = (h + 2 * pad - k) / s + 1, wo = (w + 2 * pad - k) / s + 1;
    assert_int_equal(y->shape[1], ho);
    assert_int_equal(y->shape[2], wo);
    assert_int_equal(y->shape[3], o);
    float *got = run(f, y);
    double *ref = ref_buf(f, bn * ho * wo * o);
    for (int64_t ib = 0; ib < bn; ib++)
        for (int64_t oy = 0; oy < ho; oy++)
            for (int64_t ox = 0; ox < wo; ox++)
                for (int64_t oc = 0; oc < o; oc++) {
                    double acc = bias ? b[oc] : 0;
                    for (int64_t i = 0; i < k; i++)
                        for (int64_t j = 0; j < k; j++) {
                            int64_t iy = oy * s - pad + i, ix = ox * s - pad + j;
                            if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
                            for (int64_t ic = 0; ic < c; ic++)
                                acc += (double)x[((ib * h + iy) * w + ix) * c + ic] * wt[((oc * k + i) * k + j) * c + ic];
                        }
                    ref[((ib * ho + oy) * wo + ox) * o + oc] = acc;
                }
    check_close("conv2d_nhwc", got, ref, bn * ho * wo * o, 1e-5);
}

/* op_group_norm_nhwc over x [B, ..., C]: groups are runs of C/G channels of every position;
 * with `add`, op_group_norm_nhwc_add over x + a, a [B, C] added to every position of its image. */
static void group_norm_nhwc_case(struct fx *f, int xn, const int64_t *xs, int groups, bool silu, bool affine, double lo,
                                 double hi, bool add) {
    begin(f);
    const float eps = 1e-5f;
    int64_t bn = xs[0], c = xs[xn - 1], p = numel_of(xn, xs) / (bn * c), cpg = c / groups;
    float *x, *w = NULL, *b = NULL, *a = NULL;
    struct tensor *tx = in_rand(f, &x, xn, xs, lo, hi);
    struct tensor *tw = affine ? in_rand(f, &w, SH(c), 0.5, 1.5) : NULL;
    struct tensor *tb = affine ? in_rand(f, &b, SH(c), -1, 1) : NULL;
    struct tensor *ta = add ? in_rand(f, &a, SH(bn, c), -3, 3) : NULL;
    float *got = run(f, add ? op_group_norm_nhwc_add(&f->c, tx, ta, tw, tb, groups, eps, silu)
                            : op_group_norm_nhwc(&f->c, tx, tw, tb, groups, eps, silu));
    double *ref = ref_buf(f, bn * p * c);
#define GN_X(ib, i, ch) ((double)x[((ib) * p + (i)) * c + (ch)] + (add ? a[(ib) * c + (ch)] : 0.0))
    for (int64_t ib = 0; ib < bn; ib++)
        for (int64_t g = 0; g < groups; g++) {
            double mean = 0, var = 0, n = (double)(p * cpg);
            for (int64_t i = 0; i < p; i++)
                for (int64_t k = 0; k < cpg; k++) mean += GN_X(ib, i, g * cpg + k);
            mean /= n;
            for (int64_t i = 0; i < p; i++)
                for (int64_t k = 0; k < cpg; k++) {
                    double d = GN_X(ib, i, g * cpg + k) - mean;
                    var += d * d;
                }
            var /= n;
            for (int64_t i = 0; i < p; i++)
                for (int64_t k = 0; k < cpg; k++) {
                    int64_t at = (ib * p + i) * c + g * cpg + k;
                    double v = (GN_X(ib, i, g * cpg + k) - mean) / sqrt(var + eps);
                    if (affine) v = v * w[g * cpg + k] + b[g * cpg + k];
                    ref[at] = silu ? ref_silu(v) : v;
                }
        }
#undef GN_X
    check_close(add ? "group_norm_nhwc_add" : "group_norm_nhwc", got, ref, bn * p * c, 1e-5);
}

static void test_channels_last(void **state) {
    struct fx *f = *state;
    conv_nhwc_case(f, (int64_t[]){2, 9, 11, 5}, 7, 3, 1, 1, true);  /* ResBlock conv, odd sizes */
    conv_nhwc_case(f, (int64_t[]){1, 9, 7, 6}, 5, 3, 2, 1, false);  /* downsample, odd input */
    conv_nhwc_case(f, (int64_t[]){2, 5, 6, 8}, 3, 1, 1, 0, true);   /* 1x1 */
    conv_nhwc_case(f, (int64_t[]){1, 4, 4, 3}, 2, 3, 3, 2, true);   /* stride 3, rows entirely padding */
    group_norm_nhwc_case(f, SH(2, 5, 7, 6), 3, false, true, -2, 2, false);
    group_norm_nhwc_case(f, SH(2, 5, 7, 6), 3, true, true, -2, 2, false);   /* fused SiLU */
    group_norm_nhwc_case(f, SH(2, 6, 6), 6, false, false, -2, 2, false);    /* 3-d [B, P, C], 1 channel per group */
    group_norm_nhwc_case(f, SH(2, 16, 16, 320), 32, true, true, 99, 101, false); /* SD's 10 channels per group, mean 100 */
    /* x + a: a per-image [B, C] add (a ResBlock's bias and time embedding) */
    group_norm_nhwc_case(f, SH(2, 5, 7, 6), 3, true, true, -2, 2, true);
    group_norm_nhwc_case(f, SH(3, 6, 6), 6, false, false, -2, 2, true);
    group_norm_nhwc_case(f, SH(2, 16, 16, 320), 32, true, true, 99, 101, true);
    /* upsample: integer and non-integer factors against torch's index rule */
    const int64_t shapes[][4] = {{2, 5, 7, 3}, {1, 3, 4, 2}, {1, 5, 7, 4}};
    const int64_t outs[][2] = {{10, 14}, {9, 12}, {7, 9}};
    for (int k = 0; k < 3; k++) {
        begin(f);
        float *x;
        const int64_t *xs = shapes[k];
        int64_t ho = outs[k][0], wo = outs[k][1], c = xs[3];
        struct tensor *a = in_rand(f, &x, 4, xs, -1, 1);
        float *got = run(f, op_upsample_nearest_nhwc_to(&f->c, a, ho, wo));
        double *ref = ref_buf(f, xs[0] * ho * wo * c);
        for (int64_t ib = 0; ib < xs[0]; ib++)
            for (int64_t y = 0; y < ho; y++)
                for (int64_t xx = 0; xx < wo; xx++) {
                    int64_t iy = (int64_t)floorf((float)y * ((float)xs[1] / (float)ho));
                    int64_t ix = (int64_t)floorf((float)xx * ((float)xs[2] / (float)wo));
                    iy = iy < xs[1] ? iy : xs[1] - 1;
                    ix = ix < xs[2] ? ix : xs[2] - 1;
                    for (int64_t ch = 0; ch < c; ch++)
                        ref[((ib * ho + y) * wo + xx) * c + ch] = x[((ib * xs[1] + iy) * xs[2] + ix) * c + ch];
                }
        check_close("upsample_nearest_nhwc", got, ref, xs[0] * ho * wo * c, 0);
    }
    /* shape errors are reported, not run */
    begin(f);
    struct tensor *x = in_rand(f, NULL, SH(1, 4, 4, 3), -1, 1), *w = in_rand(f, NULL, SH(2, 3, 3, 4), -1, 1);
    assert_null(op_conv2d_nhwc(&f->c, x, w, NULL, 1, 1)); /* C 3 vs 4 */
    assert_non_null(strstr(f->c.err.msg, "channels last"));
    begin(f);
    x = in_rand(f, NULL, SH(1, 4, 4, 6), -1, 1);
    assert_null(op_group_norm_nhwc(&f->c, x, NULL, NULL, 4, 1e-5f, false)); /* 6 channels in 4 groups */
    begin(f);
    x = in_rand(f, NULL, SH(2, 4, 4, 6), -1, 1);
    struct tensor *a = in_rand(f, NULL, SH(1, 6), -1, 1); /* one image's add for two */
    assert_null(op_group_norm_nhwc_add(&f->c, x, a, NULL, NULL, 3, 1e-5f, false));
    assert_non_null(strstr(f->c.err.msg, "x + a"));
}

/* op_add_fused: fused into a LINEAR or CONV2D recorded last (the residual becomes its src[3]),
 * a plain ADD otherwise; the values are y + r either way. */
static void test_add_fused(void **state) {
    struct fx *f = *state;
    for (int kind = 0; kind < 3; kind++) { /* linear, conv NCHW, conv NHWC */
        for (int last = 0; last < 2; last++) {
            begin(f);
            float *x, *w, *b, *r;
            struct tensor *y;
            int64_t n;
            double *ref;
            if (kind == 0) {
                struct tensor *tx = in_rand(f, &x, SH(2, 3, 5), -1, 1), *tw = in_rand(f, &w, SH(4, 5), -1, 1);
                struct tensor *tb = in_rand(f, &b, SH(4), -1, 1), *tr = in_rand(f, &r, SH(2, 3, 4), -1, 1);
                y = op_linear(&f->c, tx, tw, tb);
                if (!last) op_scale(&f->c, tx, 2.0f, 0.0f); /* another node after y: no fusion */
                struct tensor *out = op_add_fused(&f->c, y, tr);
                assert_true(last ? out == y && y->src[3] == tr : out != y && out->op == OP_ADD);
                n = 24;
                ref = ref_buf(f, n);
                for (int64_t i = 0; i < 6; i++)
                    for (int64_t j = 0; j < 4; j++) {
                        double acc = b[j] + r[i * 4 + j];
                        for (int64_t k = 0; k < 5; k++) acc += (double)x[i * 5 + k] * w[j * 5 + k];
                        ref[i * 4 + j] = acc;
                    }
                check_close("linear + fused residual", run(f, out), ref, n, 1e-5);
                continue;
            }
            bool nhwc = kind == 2; /* a 1x1 conv, so the reference is the same loop in both layouts */
            const int64_t xs[2][4] = {{1, 6, 3, 4}, {1, 3, 4, 6}}, ws[2][4] = {{5, 6, 1, 1}, {5, 1, 1, 6}};
            const int64_t rs[2][4] = {{1, 5, 3, 4}, {1, 3, 4, 5}};
            struct tensor *tx = in_rand(f, &x, 4, xs[nhwc], -1, 1);
            struct tensor *tw = in_rand(f, &w, 4, ws[nhwc], -1, 1);
            struct tensor *tb = in_rand(f, &b, SH(5), -1, 1);
            struct tensor *tr = in_rand(f, &r, 4, rs[nhwc], -1, 1);
            y = nhwc ? op_conv2d_nhwc(&f->c, tx, tw, tb, 1, 0) : op_conv2d(&f->c, tx, tw, tb, 1, 0);
            if (!last) op_scale(&f->c, tx, 2.0f, 0.0f);
            struct tensor *out = op_add_fused(&f->c, y, tr);
            assert_true(last ? out == y && y->src[3] == tr : out != y && out->op == OP_ADD);
            n = 60;
            ref = ref_buf(f, n);
            for (int64_t p = 0; p < 12; p++)
                for (int64_t o = 0; o < 5; o++) {
                    int64_t at = nhwc ? p * 5 + o : o * 12 + p;
                    double acc = b[o] + r[at];
                    for (int64_t ch = 0; ch < 6; ch++) acc += (double)x[nhwc ? p * 6 + ch : ch * 12 + p] * w[o * 6 + ch];
                    ref[at] = acc;
                }
            check_close(nhwc ? "conv nhwc + fused residual" : "conv + fused residual", run(f, out), ref, n, 1e-5);
        }
    }
    /* conv + r [B, 1, 1, O] / [B, O, 1, 1] (one value per image and channel): not fused, a
       broadcasting ADD in both layouts, same values */
    for (int nhwc = 0; nhwc < 2; nhwc++) {
        begin(f);
        float *x, *w, *r;
        const int64_t xs[2][4] = {{2, 3, 2, 2}, {2, 2, 2, 3}}, ws[2][4] = {{4, 3, 1, 1}, {4, 1, 1, 3}};
        const int64_t rs[2][4] = {{2, 4, 1, 1}, {2, 1, 1, 4}};
        struct tensor *tx = in_rand(f, &x, 4, xs[nhwc], -1, 1), *tw = in_rand(f, &w, 4, ws[nhwc], -1, 1);
        struct tensor *tr = in_rand(f, &r, 4, rs[nhwc], -1, 1);
        struct tensor *y = nhwc ? op_conv2d_nhwc(&f->c, tx, tw, NULL, 1, 0) : op_conv2d(&f->c, tx, tw, NULL, 1, 0);
        struct tensor *out = op_add_fused(&f->c, y, tr);
        assert_true(out != y && out->op == OP_ADD);
        double *ref = ref_buf(f, 32);
        for (int64_t ib = 0; ib < 2; ib++)
            for (int64_t p = 0; p < 4; p++)
                for (int64_t o = 0; o < 4; o++) {
                    double acc = r[ib * 4 + o];
                    for (int64_t ch = 0; ch < 3; ch++)
                        acc += (double)x[nhwc ? (ib * 4 + p) * 3 + ch : (ib * 3 + ch) * 4 + p] * w[o * 3 + ch];
                    ref[nhwc ? (ib * 4 + p) * 4 + o : (ib * 4 + o) * 4 + p] = acc;
                }
        check_close("conv + per-image residual", run(f, out), ref, 32, 1e-5);
    }
    /* a residual of another shape is a plain (broadcasting) ADD */
    begin(f);
    struct tensor *tx = in_rand(f, NULL, SH(2, 3), -1, 1), *tw = in_rand(f, NULL, SH(3, 3), -1, 1);
    struct tensor *tr = in_rand(f, NULL, SH(3), -1, 1);
    struct tensor *y = op_linear(&f->c, tx, tw, NULL);
    struct tensor *out = op_add_fused(&f->c, y, tr);
    assert_true(out != y && out->op == OP_ADD && y->src[3] == NULL);
}

static void test_upsample(void **state) {
    struct fx *f = *state;
    const int64_t shapes[][4] = {{2, 3, 5, 7}, {1, 2, 3, 4}, {2, 64, 16, 16}};
    const int factors[] = {2, 3, 2};
    for (int s = 0; s < 3; s++) {
        begin(f);
        float *x;
        const int64_t *xs = shapes[s];
        int fa = factors[s];
        struct tensor *a = in_rand(f, &x, 4, xs, -1, 1);
        float *got = run(f, op_upsample_nearest(&f->c, a, fa));
        int64_t ho = xs[2] * fa, wo = xs[3] * fa, planes = xs[0] * xs[1];
        double *ref = ref_buf(f, planes * ho * wo);
        for (int64_t p = 0; p < planes; p++)
            for (int64_t y = 0; y < ho; y++)
                for (int64_t xx = 0; xx < wo; xx++)
                    ref[(p * ho + y) * wo + xx] = x[(p * xs[2] + y / fa) * xs[3] + xx / fa];
        check_close("upsample_nearest", got, ref, planes * ho * wo, 0);
    }
}

static void concat_case(struct fx *f, int n, const int64_t *as, const int64_t *bs, int dim) {
    begin(f);
    float *xa, *xb;
    struct tensor *a = in_rand(f, &xa, n, as, -1, 1);
    struct tensor *b = in_rand(f, &xb, n, bs, -1, 1);
    struct tensor *y = op_concat(&f->c, a, b, dim);
    float *got = run(f, y);
    int64_t total = tensor_numel(y);
    double *ref = ref_buf(f, total);
    /* walk the output by index: coordinate on dim picks a or b */
    for (int64_t i = 0; i < total; i++) {
        int64_t idx[TENSOR_MAX_DIMS], rem = i;
        for (int d = n - 1; d >= 0; d--) {
            idx[d] = rem % y->shape[d];
            rem /= y->shape[d];
        }
        const int64_t *src_shape = idx[dim] < as[dim] ? as : bs;
        const float *src = idx[dim] < as[dim] ? xa : xb;
        if (idx[dim] >= as[dim]) idx[dim] -= as[dim];
        int64_t off = 0;
        for (int d = 0; d < n; d++) off = off * src_shape[d] + idx[d];
        ref[i] = src[off];
    }
    check_close("concat", got, ref, total, 0);
}

static void test_concat(void **state) {
    struct fx *f = *state;
    concat_case(f, 4, (int64_t[]){2, 3, 4, 5}, (int64_t[]){1, 3, 4, 5}, 0);
    concat_case(f, 4, (int64_t[]){2, 3, 4, 5}, (int64_t[]){2, 2, 4, 5}, 1);   /* UNet skip concat */
    concat_case(f, 4, (int64_t[]){2, 3, 4, 5}, (int64_t[]){2, 3, 1, 5}, 2);
    concat_case(f, 4, (int64_t[]){2, 3, 4, 5}, (int64_t[]){2, 3, 4, 6}, 3);   /* many short copies */
    concat_case(f, 3, (int64_t[]){2, 77, 9}, (int64_t[]){2, 77, 3}, 2);
    concat_case(f, 4, (int64_t[]){1, 640, 16, 16}, (int64_t[]){1, 320, 16, 16}, 1); /* long, split copies */
    concat_case(f, 1, (int64_t[]){3}, (int64_t[]){4}, 0);
}

static void test_get_rows(void **state) {
    struct fx *f = *state;
    begin(f);
    float *table;
    struct tensor *tt = in_rand(f, &table, SH(10, 6), -1, 1);
    int32_t *ids = talloc(f, 6 * sizeof(int32_t));
    const int32_t pick[6] = {3, 0, 9, 3, 7, 1};
    memcpy(ids, pick, sizeof pick);
    struct tensor *ti = in_data(f, DTYPE_I32, SH(2, 3), ids);
    struct tensor *y = op_get_rows(&f->c, tt, ti);
    assert_int_equal(y->ndim, 3);
    assert_int_equal(y->shape[2], 6);
    float *got = run(f, y);
    double *ref = ref_buf(f, 36);
    for (int i = 0; i < 6; i++)
        for (int j = 0; j < 6; j++) ref[i * 6 + j] = table[pick[i] * 6 + j];
    check_close("get_rows", got, ref, 36, 0);

    /* ids outside [0, V) are a user-facing error, not a crash */
    const int32_t bad[2] = {10, -1};
    for (int k = 0; k < 2; k++) {
        begin(f);
        struct tensor *t2 = in_rand(f, NULL, SH(10, 6), -1, 1);
        int32_t *ids2 = talloc(f, 3 * sizeof(int32_t));
        ids2[0] = 2;
        ids2[1] = bad[k];
        ids2[2] = 4;
        struct tensor *ti2 = in_data(f, DTYPE_I32, SH(3), ids2);
        int rc = run_rc(f, op_get_rows(&f->c, t2, ti2));
        assert_int_equal(rc, STATUS_ERR_RANGE);
        assert_int_equal(f->c.rc, STATUS_ERR_RANGE);
        assert_int_equal(f->c.err.code, STATUS_ERR_RANGE);
        assert_non_null(strstr(f->c.err.msg, "get_rows"));
        assert_non_null(strstr(f->c.err.msg, "position 1"));
    }
}

/* ===== Errors and the scratch ===== */

/* A failing scratch allocation is ERR_NOMEM with a message, and the backend stays usable. */
static void test_conv_scratch_oom(void **state) {
    struct fx *f = *state;
    struct backend *be = backend_cpu_new(0); /* fresh: its scratch is still empty */
    assert_non_null(be);
    struct tscratch s;
    tscratch_init(&s, be);
    struct tctx c;
    tctx_init(&c, be, &s);
    float x[2 * 3 * 5 * 5], w[4 * 3 * 3 * 3];
    for (size_t i = 0; i < sizeof x / sizeof x[0]; i++) x[i] = (float)urand(f);
    for (size_t i = 0; i < sizeof w / sizeof w[0]; i++) w[i] = (float)urand(f);
    struct tensor *tx = tensor_input(&c, DTYPE_F32, SH(2, 3, 5, 5));
    struct tensor *tw = tensor_input(&c, DTYPE_F32, SH(4, 3, 3, 3));
    struct tensor *y = op_conv2d(&c, tx, tw, NULL, 1, 1);
    assert_int_equal(tctx_plan(&c, &y, 1), 0);
    assert_int_equal(tctx_set(&c, tx, x), 0);
    assert_int_equal(tctx_set(&c, tw, w), 0);
    mem_fault_after(1); /* the next mem_try_* fails: the im2col scratch */
    int rc = tctx_run(&c);
    mem_fault_after(0);
    assert_int_equal(rc, STATUS_ERR_NOMEM);
    assert_non_null(strstr(c.err.msg, "im2col"));
    /* after the failure, a new graph on the same backend works */
    tctx_reset(&c);
    tx = tensor_input(&c, DTYPE_F32, SH(2, 3, 5, 5));
    tw = tensor_input(&c, DTYPE_F32, SH(4, 3, 3, 3));
    y = op_conv2d(&c, tx, tw, NULL, 1, 1);
    assert_int_equal(tctx_plan(&c, &y, 1), 0);
    assert_int_equal(tctx_set(&c, tx, x), 0);
    assert_int_equal(tctx_set(&c, tw, w), 0);
    assert_int_equal(tctx_run(&c), 0);
    tctx_deinit(&c);
    tscratch_deinit(&s);
    backend_free(be);
}

/* The backend refuses dtypes it cannot compute, with a message. */
static void test_unsupported_dtype(void **state) {
    struct fx *f = *state;
    begin(f);
    int32_t *a = talloc(f, 4 * sizeof(int32_t));
    struct tensor *t = in_data(f, DTYPE_I32, SH(4), a);
    int rc = run_rc(f, op_silu(&f->c, t));
    assert_int_equal(rc, STATUS_ERR_UNSUPPORTED);
    assert_non_null(strstr(f->c.err.msg, "SILU"));
}

/* The loaders' direct fp16 -> bf16 conversion equals the detour through fp32 for all 65536 bit
 * patterns (zeros, subnormals, infinities and NaNs included), unaligned sources too. */
static void test_f16_to_bf16(void **state) {
    (void)state;
    static uint16_t src[65536 + 1], dst[65536];
    for (uint32_t h = 0; h < 65536; h++) {
        uint16_t want = f32_to_bf16(f16_to_f32((uint16_t)h));
        if (f16_to_bf16((uint16_t)h) != want) fail_msg("0x%04x: 0x%04x, want 0x%04x", h, f16_to_bf16((uint16_t)h), want);
    }
    unsigned char *bytes = (unsigned char *)src + 1; /* odd address */
    for (uint32_t h = 0; h < 65536; h++) memcpy(bytes + 2 * h, &(uint16_t){(uint16_t)h}, 2);
    f16_to_bf16_n(bytes, dst, 65536);
    for (uint32_t h = 0; h < 65536; h++) assert_int_equal(dst[h], f32_to_bf16(f16_to_f32((uint16_t)h)));
}

/* CAST rounds to nearest even (ties to even, overflow to inf, subnormals kept) and round-trips;
 * mixing dtypes in one op is refused at record time. */
static void test_cast(void **state) {
    struct fx *f = *state;
    /* 1 + 2^-11 is a tie between 1 and 1 + 2^-10 in fp16: even -> 1; 1 + 3*2^-11 -> 1 + 2^-9 */
    float v[8] = {1.0f, 1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f, -2.5f, 65520.0f, 0x1p-20f, 1e-9f, 3.14159265f};
    float f16[8] = {1.0f, 1.0f, 1.0f + 0x1p-9f, -2.5f, INFINITY, 0x1p-20f, 0.0f, 3.140625f};
    begin(f);
    struct tensor *x = in_data(f, DTYPE_F32, SH(8), v);
    struct tensor *h = op_cast(&f->c, x, DTYPE_F16);
    assert_int_equal(h->dtype, DTYPE_F16);
    assert_ptr_equal(op_cast(&f->c, h, DTYPE_F16), h); /* same dtype: no node */
    float *got = run(f, op_cast(&f->c, h, DTYPE_F32));
    for (int i = 0; i < 8; i++) assert_memory_equal(&got[i], &f16[i], sizeof(float));
    /* bf16: 8 bits of mantissa; 1 + 2^-8 is a tie -> 1; 3.14159265 -> 3.140625 */
    float b[3] = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 3.14159265f}, bref[3] = {1.0f, 1.0f + 0x1p-6f, 3.140625f};
    begin(f);
    x = in_data(f, DTYPE_F32, SH(3), b);
    got = run(f, op_cast(&f->c, op_cast(&f->c, x, DTYPE_BF16), DTYPE_F32));
    for (int i = 0; i < 3; i++) assert_memory_equal(&got[i], &bref[i], sizeof(float));
    /* F16 -> BF16 directly */
    begin(f);
    x = in_data(f, DTYPE_F32, SH(3), b);
    got = run(f, op_cast(&f->c, op_cast(&f->c, op_cast(&f->c, x, DTYPE_F16), DTYPE_BF16), DTYPE_F32));
    for (int i = 0; i < 3; i++) assert_memory_equal(&got[i], &bref[i], sizeof(float));
    /* mixing */
    begin(f);
    x = in_data(f, DTYPE_F32, SH(8), v);
    assert_null(op_add(&f->c, x, op_cast(&f->c, x, DTYPE_F16)));
    assert_int_equal(f->c.rc, STATUS_ERR_INVALID);
    assert_non_null(strstr(f->c.err.msg, "cast first"));
    begin(f);
    int32_t ids[2] = {0, 1};
    assert_null(op_cast(&f->c, in_data(f, DTYPE_I32, SH(2), ids), DTYPE_F32));
    assert_int_equal(f->c.rc, STATUS_ERR_INVALID);
}

/* blas.c corrects OpenBLAS's kernel choice before main: on a CPU with AVX2 + FMA the kernels
 * must be an AVX2 or AVX-512 set, never the SSE3 "Prescott" fallback of an unknown CPU model. */
/* The sampler's step (op_sample_in, op_sample_step): bit for bit the host loop's float32
 * arithmetic (graph/nodes/sampling.c's CFG, sample/sampler.c's Euler step), the step written
 * into x's own memory; x must be a weight. */
static void test_sample(void **state) {
    struct fx *f = *state;
    enum { N = 2 * 4 * 5 * 7 };
    for (int entries = 1; entries <= 2; entries++) {
        begin(f);
        float x[N], x0[N]; /* not case buffers: begin() below frees those */
        for (int i = 0; i < N; i++) x[i] = x0[i] = (float)(urand(f) * 20.0 - 10.0);
        const float s = 3.5f, sn = 2.25f;
        float p[4] = {sqrtf(s * s + 1.0f), s, sn - s, 7.5f};
        struct tensor *xt = tensor_weight(&f->c, DTYPE_F32, 4, (int64_t[]){2, 4, 5, 7}, x);
        struct tensor *pt = in_data(f, DTYPE_F32, SH(4), p);
        float *got = run(f, op_sample_in(&f->c, xt, pt, entries));
        for (int e = 0; e < entries; e++)
            for (int i = 0; i < N; i++) {
                float want = x0[i] / p[0];
                if (memcmp(&got[e * N + i], &want, 4) != 0) fail_msg("sample_in %d: %.9g, want %.9g", i, got[e * N + i], want);
            }
        begin(f);
        float *eps;
        xt = tensor_weight(&f->c, DTYPE_F32, 4, (int64_t[]){2, 4, 5, 7}, x);
        struct tensor *et = in_rand(f, &eps, SH(2 * entries, 4, 5, 7), -2, 2);
        pt = in_data(f, DTYPE_F32, SH(4), p);
        struct tensor *step = op_sample_step(&f->c, xt, et, pt);
        assert_non_null(step);
        assert_ptr_equal(step->data, x);
        got = run(f, step);
        for (int i = 0; i < N; i++) {
            float cond = 0.0f, uncond = 0.0f, den;
            cond += x0[i] - eps[i] * s;
            if (entries == 2) {
                uncond += x0[i] - eps[N + i] * s;
                den = uncond + (cond - uncond) * p[3];
            } else {
                den = cond;
            }
            float d = (x0[i] - den) / s, want = x0[i] + d * (sn - s);
            if (memcmp(&x[i], &want, 4) != 0 || memcmp(&got[i], &want, 4) != 0)
                fail_msg("sample_step (%d entries) %d: %.9g, want %.9g", entries, i, x[i], want);
        }
    }
    /* x must be a weight; p holds 4 floats */
    begin(f);
    float *x, *eps;
    struct tensor *xt = in_rand(f, &x, SH(2, 3), -1, 1), *et = in_rand(f, &eps, SH(2, 3), -1, 1);
    float p[4] = {1, 1, 1, 1};
    struct tensor *pt = in_data(f, DTYPE_F32, SH(4), p);
    assert_null(op_sample_step(&f->c, xt, et, pt));
    assert_int_equal(f->c.rc, STATUS_ERR_INVALID);
    begin(f);
    xt = tensor_weight(&f->c, DTYPE_F32, 2, (int64_t[]){2, 3}, x);
    pt = in_data(f, DTYPE_F32, SH(3), p);
    assert_null(op_sample_in(&f->c, xt, pt, 1));
    assert_int_equal(f->c.rc, STATUS_ERR_INVALID);
}

static void test_blas_core(void **state) {
    (void)state;
    const char *core = cpu__blas_core();
    assert_non_null(core);
    if (getenv("OPENBLAS_CORETYPE") || !__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) skip();
    static const char *const good[] = {"Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids"};
    bool ok = false;
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) ok = ok || strcmp(core, good[i]) == 0;
    if (!ok) print_error("OpenBLAS runs its \"%s\" kernels on an AVX2 CPU\n", core);
    assert_true(ok);
}

/* ===== Vector maths, both SIMD levels, element by element ===== */

static void test_vec_kernels(void **state) {
    struct fx *f = *state;
    begin(f);
    enum { N = 1027 };
    float *x = talloc(f, N * sizeof(float)), *y = talloc(f, N * sizeof(float)), *g = talloc(f, N * sizeof(float));
    double *ref = ref_buf(f, N);
    for (int i = 0; i < N; i++) x[i] = (float)(-95 + 190 * urand(f));
    for (int i = 0; i < 16; i++) x[i] = (float)(i - 8) * 0.25f; /* around 0 */
    x[16] = 0.0f;
    x[17] = -0.0f;
    for (int i = 0; i < N; i++) g[i] = (float)(-8 + 16 * urand(f));
    for (int level = CPU_SIMD_SCALAR, top = simd_top(); level <= top; level++) {
        cpu__simd_force(level);
        assert_int_equal(cpu__simd(), level);
        cpu__vec_silu(y, x, N);
        for (int i = 0; i < N; i++) ref[i] = ref_silu(x[i]);
        check_each("vec silu", y, ref, N, 1e-6, 1e-30);
        cpu__vec_quick_gelu(y, x, N);
        for (int i = 0; i < N; i++) ref[i] = ref_quick_gelu(x[i]);
        check_each("vec quick_gelu", y, ref, 16, 1e-6, 1e-30); /* near 0 */
        for (int i = 0; i < N; i++) /* the tails: 1.702 x is rounded to float first (see act_case) */
            if (!(fabs(y[i] - ref[i]) <= (2e-6 + 1.5e-7 * fabs(x[i])) * fabs(ref[i]) + 1e-30)) {
                print_error("vec quick_gelu: x = %.9g: got %.9g, ref %.9g\n", x[i], y[i], ref[i]);
                fail();
            }
        /* gelu's negative tail has condition number ~x^2 (see act_case) */
        cpu__vec_gelu(y, g, N);
        for (int i = 0; i < N; i++) ref[i] = ref_gelu(g[i]);
        for (int i = 0; i < N; i++)
            if (!(fabs(y[i] - ref[i]) <= (2e-6 + 1.5e-7 * g[i] * g[i]) * fabs(ref[i]) + 1e-30)) {
                print_error("vec gelu: x = %.9g: got %.9g, ref %.9g\n", g[i], y[i], ref[i]);
                fail();
            }
        cpu__vec_geglu(y, x, g, N);
        for (int i = 0; i < N; i++) ref[i] = x[i] * ref_gelu(g[i]);
        for (int i = 0; i < N; i++)
            if (!(fabs(y[i] - ref[i]) <= (2e-6 + 1.5e-7 * g[i] * g[i]) * fabs(ref[i]) + 1e-30)) {
                print_error("vec geglu: gate %.9g: got %.9g, ref %.9g\n", g[i], y[i], ref[i]);
                fail();
            }
        cpu__vec_affine(y, g, N, 0.75f, -0.25f, true);
        for (int i = 0; i < N; i++) ref[i] = ref_silu((double)g[i] * 0.75f - 0.25f);
        check_each("vec affine+silu", y, ref, N, 1e-6, 1e-7);
        /* in place */
        memcpy(y, g, N * sizeof(float));
        cpu__vec_silu(y, y, N);
        for (int i = 0; i < N; i++) ref[i] = ref_silu(g[i]);
        check_each("vec silu in place", y, ref, N, 1e-6, 1e-30);
        /* reductions, at every length up to 40 (tails) and the full array */
        for (int n = 1; n <= N; n = n < 40 ? n + 1 : N + 1) {
            double mx = -INFINITY, s = 0, ss = 0, es = 0;
            for (int i = 0; i < n; i++) {
                mx = x[i] > mx ? x[i] : mx;
                s += x[i];
            }
            for (int i = 0; i < n; i++) ss += ((double)x[i] - 1.5) * ((double)x[i] - 1.5);
            assert_float_equal(cpu__vec_max(x, n), mx, 0);
            assert_true(fabs(cpu__vec_sum(x, n) - s) <= 1e-9 * (fabs(s) + n));
            assert_true(fabs(cpu__vec_sumsq_dev(x, n, 1.5f) - ss) <= 1e-9 * ss + 1e-12);
            memcpy(y, x, (size_t)n * sizeof(float));
            double got = cpu__vec_exp_sum(y, n, (float)mx);
            for (int i = 0; i < n; i++) {
                ref[i] = exp((double)(x[i] - (float)mx)); /* the contract: x - shift in float */
                es += ref[i];
            }
            check_each("vec exp_sum values", y, ref, n, 1e-6, 1e-38);
            assert_true(fabs(got - es) <= 1e-6 * es);
        }
    }
    /* NaN goes through the activations */
    float nan_in[3] = {NAN, 1.0f, NAN}, nan_out[3];
    for (int level = CPU_SIMD_SCALAR, top = simd_top(); level <= top; level++) {
        cpu__simd_force(level);
        cpu__vec_silu(nan_out, nan_in, 3);
        assert_true(isnan(nan_out[0]) && isnan(nan_out[2]) && !isnan(nan_out[1]));
        cpu__vec_gelu(nan_out, nan_in, 3);
        assert_true(isnan(nan_out[0]) && isnan(nan_out[2]) && !isnan(nan_out[1]));
    }
    cpu__simd_force(-1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_add_mul, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scale, setup, teardown),
        cmocka_unit_test_setup_teardown(test_activations, setup, teardown),
        cmocka_unit_test_setup_teardown(test_geglu, setup, teardown),
        cmocka_unit_test_setup_teardown(test_linear, setup, teardown),
        cmocka_unit_test_setup_teardown(test_conv2d, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_norm, setup, teardown),
        cmocka_unit_test_setup_teardown(test_layer_norm, setup, teardown),
        cmocka_unit_test_setup_teardown(test_attention, setup, teardown),
        cmocka_unit_test_setup_teardown(test_transpose, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upsample, setup, teardown),
        cmocka_unit_test_setup_teardown(test_channels_last, setup, teardown),
        cmocka_unit_test_setup_teardown(test_add_fused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concat, setup, teardown),
        cmocka_unit_test_setup_teardown(test_get_rows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_conv_scratch_oom, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unsupported_dtype, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cast, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sample, setup, teardown),
        cmocka_unit_test(test_f16_to_bf16),
        cmocka_unit_test_setup_teardown(test_vec_kernels, setup, teardown),
        cmocka_unit_test(test_blas_core),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
