/* tests/gpu/test_ops_cuda.c -- every op of OP_MAP on the CPU backend and on the CUDA backend,
 * compared (STYLE.md §7, ggml's test-backend-ops). The CPU backend is the reference: it has its
 * own double-precision tests (tests/unit/tensor/test_ops.c), so agreement here means the CUDA
 * kernels compute the same function. Each case records one op with op_* on both backends
 * through the real path (tctx_plan, tctx_set, tctx_run, tctx_get), on the same fixed-seed
 * random inputs, and checks max |cuda - cpu| / max |cpu| against the case's tolerance.
 * Shapes are SD1.5 layers at small spatial sizes plus edge cases (odd sizes, asymmetric
 * padding, broadcasting, causal masks, query counts that are not a multiple of a block).
 * The channels-last ops (op_conv2d_nhwc, op_group_norm_nhwc, op_upsample_nearest_nhwc_to:
 * the UNet's layout on CUDA) have tables of their own (test_*_nhwc).
 * test_sd_scale adds full SD1.5 sizes (skipped when KILN_GPU_SKIP_LARGE is set).
 * ATTENTION: F16/BF16 cases that cuDNN's fused attention takes run there (attention_dnn.cu); run
 * the binary again with KILN_CUDNN_SDPA=0 to check kiln's own kernels on the same cases.
 * DTYPES. Every case runs in F32, F16 and BF16. For T = F16/BF16 the CUDA graph casts the F32
 * inputs to T on the device (op_cast), runs the op in T and casts the output to F32; the CPU
 * graph casts the same inputs to T and straight back to F32 (the same rounding of the inputs,
 * bit for bit: see test_cast) and runs the op in F32. What differs is then only the CUDA
 * kernel's own rounding: its output stored as T (half an ulp of T: 2^-11 = 4.9e-4 relative
 * for F16, 2^-8 = 3.9e-3 for BF16), plus, in attention (the flash kernel for F16/BF16 heads of
 * up to 256 channels, else the cuBLAS path), the probabilities stored as T before P V.
 * test_attention_flash and test_attention_flash_sd run the flash kernel's shapes (every SD head
 * size, cross-attention, tails, causal) in F16 and BF16 only: F32 never takes that kernel.
 * Tolerances (max |cuda - cpu| / max |cpu|):
 *   F32   1e-5 everywhere (products and reductions sum in another order).
 *   F16   2e-3 for maps and norms (~4 half-ulps: a 1-ulp flip at a rounding boundary plus
 *         fp32 reordering); 5e-3 for linear, conv and attention (fp32 accumulation over K up
 *         to 2880 on tensor cores, in another order, and attention's P rounded to fp16).
 *   BF16  2e-2 for everything that computes (~5 half-ulps of bf16, same reasons).
 *   Copies (transpose, upsample, concat, get_rows) move values that T represents exactly, so
 *   F16 and BF16 must match exactly (tolerance 0).
 * test_cast compares op_cast on CUDA with the CPU's cast bit for bit (all 65536 F16 and BF16
 * patterns widened and cross-cast; F32 ties, overflow, subnormals, NaNs and 2^20 random bit
 * patterns narrowed), plus hand-checked values.
 * Also: error paths (bad ids, a missing device, device OOM) return statuses with messages.
 * Needs a CUDA device; without one every test is skipped. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "base/clock.h"
#include "base/mem.h"
#include "base/status.h"
#include "tensor/backend.h"
#include "tensor/tensor.h"

#ifdef KILN_HAVE_CUDNN
#include <cudnn.h>
#endif
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ===== Harness ===== */

#define MAX_IN 4

struct side {
    struct backend *be;
    struct tscratch scratch;
    struct tctx c;
};

static struct side cpu, gpu;
static bool have_gpu;
static uint64_t rng = 0x6b696c6eULL;

static int setup(void **state) {
    cpu.be = backend_cpu_new(0);
    if (!cpu.be) return -1;
    tscratch_init(&cpu.scratch, cpu.be);
    tctx_init(&cpu.c, cpu.be, &cpu.scratch);
    int n = backend_cuda_count();
    printf("CUDA devices: %d\n", n);
    if (n <= 0) return 0;
    struct err err = {0};
    gpu.be = backend_cuda_new(0, &err);
    if (!gpu.be) {
        fprintf(stderr, "backend_cuda_new: %s\n", err.msg);
        return -1;
    }
    tscratch_init(&gpu.scratch, gpu.be);
    tctx_init(&gpu.c, gpu.be, &gpu.scratch);
    have_gpu = true;
    return 0;
}

static int teardown(void **state) {
    tctx_deinit(&cpu.c);
    tscratch_deinit(&cpu.scratch);
    backend_free(cpu.be);
    if (have_gpu) {
        tctx_deinit(&gpu.c);
        tscratch_deinit(&gpu.scratch);
        backend_free(gpu.be);
    }
    return 0;
}

/* splitmix64 -> uniform double in [0, 1) */
static double urand(void) {
    uint64_t z = (rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-53;
}

struct input {
    enum dtype dtype;             /* F32 (random in [lo, hi)) or I32 (ids in [0, id_max)) */
    int ndim;
    int64_t shape[4];
    int64_t id_max;               /* I32 only */
};

struct ocase;
/* Records the case's op on c from its inputs (in[i] for input i; absent optional ones NULL). */
typedef struct tensor *(*build_fn)(struct tctx *c, struct tensor **in, const struct ocase *k);

struct ocase {
    const char *name;
    build_fn build;
    int n_in;
    struct input in[MAX_IN];
    double lo, hi;  /* range of the F32 inputs */
    int ip[6];      /* op parameters, as the build function reads them */
    float fp[2];
};

static int64_t numel(const struct input *in) {
    int64_t n = 1;
    for (int i = 0; i < in->ndim; i++) n *= in->shape[i];
    return n;
}

/* Builds and runs k on one side with the given host inputs (F32 and I32); returns the output
 * as F32 (mem_free). dt is the dtype the op runs in: the float inputs are cast to it, and with
 * `ref` straight back to F32 so that the op itself runs in F32 on inputs rounded to dt (the
 * CPU reference); the output is cast to F32. */
static float *run_side(struct side *s, const struct ocase *k, void **host, enum dtype dt, bool ref, int64_t *n_out,
                       int *rc_out) {
    tctx_reset(&s->c);
    struct tensor *in[MAX_IN] = {0}, *op_in[MAX_IN] = {0};
    for (int i = 0; i < k->n_in; i++) {
        if (k->in[i].ndim == 0) continue; /* absent optional input */
        in[i] = tensor_input(&s->c, k->in[i].dtype, k->in[i].ndim, k->in[i].shape);
        op_in[i] = in[i];
        if (k->in[i].dtype == DTYPE_F32 && dt != DTYPE_F32) {
            op_in[i] = op_cast(&s->c, in[i], dt);
            if (ref) op_in[i] = op_cast(&s->c, op_in[i], DTYPE_F32);
        }
    }
    struct tensor *out = k->build(&s->c, op_in, k);
    if (out) out = op_cast(&s->c, out, DTYPE_F32); /* out itself when already F32 */
    if (!out) fail_msg("%s: recording failed: %s", k->name, s->c.err.msg);
    tensor_set_output(out);
    int rc = tctx_plan(&s->c, &out, 1);
    for (int i = 0; i < k->n_in && !rc; i++)
        if (in[i]) rc = tctx_set(&s->c, in[i], host[i]);
    if (!rc) rc = tctx_run(&s->c);
    *rc_out = rc;
    if (rc) return NULL;
    *n_out = tensor_numel(out);
    float *y = mem_alloc((size_t)*n_out * sizeof(float));
    assert_int_equal(tctx_get(&s->c, out, y), 0);
    return y;
}

/* Runs k in dtype dt on both backends and compares: max |gpu - cpu| / max |cpu| <= tol, no NaN. */
static void check_case(const struct ocase *k, enum dtype dt, double tol) {
    void *host[MAX_IN] = {0};
    for (int i = 0; i < k->n_in; i++) {
        const struct input *in = &k->in[i];
        if (in->ndim == 0) continue;
        int64_t n = numel(in);
        if (in->dtype == DTYPE_I32) {
            int32_t *h = mem_alloc((size_t)n * sizeof *h);
            for (int64_t j = 0; j < n; j++) h[j] = (int32_t)(urand() * (double)in->id_max);
            host[i] = h;
        } else {
            float *h = mem_alloc((size_t)n * sizeof *h);
            for (int64_t j = 0; j < n; j++) h[j] = (float)(k->lo + (k->hi - k->lo) * urand());
            host[i] = h;
        }
    }
    int64_t nc = 0, ng = 0;
    int rc_c = 0, rc_g = 0;
    float *yc = run_side(&cpu, k, host, dt, true, &nc, &rc_c);
    float *yg = run_side(&gpu, k, host, dt, false, &ng, &rc_g);
    if (rc_c) fail_msg("%s %s: cpu failed: %s", k->name, dtype_name(dt), cpu.c.err.msg);
    if (rc_g) fail_msg("%s %s: cuda failed: %s (%s)", k->name, dtype_name(dt), status_name(rc_g), gpu.c.err.msg);
    /* timing of the run alone (planned, inputs on the backend): once on the CPU (F32 only: the
     * reference is F32 whatever dt), mean of 3 on CUDA (graph_run synchronises before
     * returning; for F16/BF16 this includes the casts around the op) */
    double t0 = clock_now();
    if (dt == DTYPE_F32) assert_int_equal(tctx_run(&cpu.c), 0);
    double t1 = clock_now();
    for (int r = 0; r < 3; r++) assert_int_equal(tctx_run(&gpu.c), 0);
    double t2 = clock_now();
    assert_int_equal(nc, ng);
    double maxref = 0, maxerr = 0;
    int64_t at = 0;
    for (int64_t i = 0; i < nc; i++) {
        if (isnan(yg[i]) != isnan(yc[i]))
            fail_msg("%s %s: NaN mismatch at %lld", k->name, dtype_name(dt), (long long)i);
        if (fabs(yc[i]) > maxref) maxref = fabs(yc[i]);
        double e = fabs((double)yg[i] - yc[i]);
        if (e > maxerr) {
            maxerr = e;
            at = i;
        }
    }
    double rel = maxerr / (maxref > 1e-30 ? maxref : 1e-30);
    if (dt == DTYPE_F32)
        printf("  %-44s %-4s rel err %.2e (tol %.0e)  cpu %7.2f ms  cuda %7.2f ms\n", k->name, dtype_name(dt), rel,
               tol, (t1 - t0) * 1e3, (t2 - t1) * 1e3 / 3);
    else
        printf("  %-44s %-4s rel err %.2e (tol %.0e)                cuda %7.2f ms\n", k->name, dtype_name(dt), rel,
               tol, (t2 - t1) * 1e3 / 3);
    if (maxref == 0) fail_msg("%s: the reference output is all zeros (a case that cannot fail)", k->name);
    if (!(rel <= tol))
        fail_msg("%s %s: max err %.3g at %lld (cuda %.9g, cpu %.9g) = %.3g of max |cpu| %.3g > %.0e", k->name,
                 dtype_name(dt), maxerr, (long long)at, yg[at], yc[at], rel, maxref, tol);
    mem_free(yc);
    mem_free(yg);
    for (int i = 0; i < k->n_in; i++) mem_free(host[i]);
}

#define GPU_OR_SKIP() \
    do {              \
        if (!have_gpu) skip(); \
    } while (0)

#define IN(...) {DTYPE_F32, (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), {__VA_ARGS__}, 0}
#define NOIN {DTYPE_F32, 0, {0}, 0}

/* Tolerance per dtype the case runs in (see the header for the reasons). */
struct tol {
    double f32, f16, bf16;
};
static const struct tol TOL_MAP = {1e-5, 2e-3, 2e-2};     /* elementwise maps and norms */
static const struct tol TOL_PRODUCT = {1e-5, 5e-3, 2e-2}; /* linear, conv, attention */
static const struct tol TOL_COPY = {1e-5, 0, 0};          /* data movement: exact in F16/BF16 */

/* Each case in F32, then F16, then BF16. */
static void run_cases(const struct ocase *ks, int n, const struct tol *tol) {
    for (int i = 0; i < n; i++) {
        check_case(&ks[i], DTYPE_F32, tol->f32);
        check_case(&ks[i], DTYPE_F16, tol->f16);
        check_case(&ks[i], DTYPE_BF16, tol->bf16);
    }
}

/* Each case in F16, then BF16 (for kernels that only those dtypes take). */
static void run_cases_half(const struct ocase *ks, int n, const struct tol *tol) {
    for (int i = 0; i < n; i++) {
        check_case(&ks[i], DTYPE_F16, tol->f16);
        check_case(&ks[i], DTYPE_BF16, tol->bf16);
    }
}

/* ===== Build functions ===== */

static struct tensor *b_add(struct tctx *c, struct tensor **in, const struct ocase *k) { return op_add(c, in[0], in[1]); }
static struct tensor *b_mul(struct tctx *c, struct tensor **in, const struct ocase *k) { return op_mul(c, in[0], in[1]); }
static struct tensor *b_scale(struct tctx *c, struct tensor **in, const struct ocase *k) {
    return op_scale(c, in[0], k->fp[0], k->fp[1]);
}
static struct tensor *b_scale_clamp(struct tctx *c, struct tensor **in, const struct ocase *k) {
    return op_scale_clamp(c, in[0], k->fp[0], k->fp[1], 0.0f, 1.0f);
}
static struct tensor *b_silu(struct tctx *c, struct tensor **in, const struct ocase *k) { return op_silu(c, in[0]); }
static struct tensor *b_gelu(struct tctx *c, struct tensor **in, const struct ocase *k) { return op_gelu(c, in[0]); }
static struct tensor *b_qgelu(struct tctx *c, struct tensor **in, const struct ocase *k) {
    return op_quick_gelu(c, in[0]);
}
static struct tensor *b_geglu(struct tctx *c, struct tensor **in, const struct ocase *k) { return op_geglu(c, in[0]); }
static struct tensor *b_linear(struct tctx *c, struct tensor **in, const struct ocase *k) {
    return op_linear(c, in[0], in[1], in[2]);
}
static struct tensor *b_conv(struct tctx *c, struct tensor **in, const struct ocase *k) {
    return op_conv2d_pad(c, in[0], in[1], in[2], k->ip[0], k->ip[1], k->ip[2], k->ip[3], k->ip[4]);
}
static struct tensor *b_conv_nhwc(struct tctx *c, struct tensor **in, const struct ocase *k) {
    return op_conv2d_nhwc(c, in[0], in[1], in[2], k->ip[0], k->ip[1]);
}
static struct tensor *b_conv_nhwc_pad(struct tctx *c, struct tensor **in, const struct ocase *k) {
    return op_conv2d_nhwc_pad(c, in[0], in[1], in[2], k->ip[0], k->ip[1], k->ip[2], k->ip[3], k->ip[4]);
}
/* op_add_fused: the residual in[3] rides on the product recorded just before (the kernels' own
 * path, checked against the CPU's product + separate add) */
static struct tensor *b_linear_res(struct tctx *c, struct tensor **in, const struct ocase *k) {
    struct tensor *y = op_linear(c, in[0], in[1], in[2]), *r = op_add_fused(c, y, in[3]);
    return r == y && y->src[3] == in[3] ? r : tctx_fail(c, STATUS_ERR_INTERNAL, "residual not fused");
}
static struct tensor *b_conv_res(struct tctx *c, struct tensor **in, const struct ocase *k) {
    struct tensor *y = k->ip[5] ? op_conv2d_nhwc(c, in[0], in[1], in[2], k->ip[0], k->ip[1])
                                : op_conv2d(c, in[0], in[1], in[2], k->ip[0], k->ip[1]);
    struct tensor *r = op_add_fused(c, y, in[3]);
    return r == y && y->src[3] == in[3] ? r : tctx_fail(c, STATUS_ERR_INTERNAL, "residual not fused");
}
static struct tensor *b_gn(struct tctx *c, struct tensor **in, const struct ocase *k) {
    return op_group_norm(c, in[0], in[1], in[2], k->ip[0], k->fp[0], k->ip[1] != 0);
}
static struct tensor *b_gn_nhwc(struct tctx *c, struct tensor **in, const struct ocase *k) {
    return op_group_norm_nhwc(c, in[0], in[1], in[2], k->ip[0], k->fp[0], k->ip[1] != 0);
}
/* in[3]: the per-image [B, C] add */
static struct tensor *b_gn_nhwc_add(struct tctx *c, struct tensor **in, const struct ocase *k) {
    return op_group_norm_nhwc_add(c, in[0], in[3], in[1], in[2], k->ip[0], k->fp[0], k->ip[1] != 0);
}
static struct tensor *b_ln(struct tctx *c, struct tensor **in, const struct ocase *k) {
    return op_layer_norm(c, in[0], in[1], in[2], k->fp[0]);
}
static struct tensor *b_attn(struct tctx *c, struct tensor **in, const struct ocase *k) {
    return op_attention(c, in[0], in[1], in[2], k->ip[0], k->ip[1] != 0);
}
static struct tensor *b_transpose(struct tctx *c, struct tensor **in, const struct ocase *k) {
    return op_transpose(c, in[0]);
}
static struct tensor *b_upsample(struct tctx *c, struct tensor **in, const struct ocase *k) {
    return op_upsample_nearest_to(c, in[0], k->ip[0], k->ip[1]);
}
static struct tensor *b_up_nhwc(struct tctx *c, struct tensor **in, const struct ocase *k) {
    return op_upsample_nearest_nhwc_to(c, in[0], k->ip[0], k->ip[1]);
}
static struct tensor *b_concat(struct tctx *c, struct tensor **in, const struct ocase *k) {
    return op_concat(c, in[0], in[1], k->ip[0]);
}
static struct tensor *b_get_rows(struct tctx *c, struct tensor **in, const struct ocase *k) {
    return op_get_rows(c, in[0], in[1]);
}
/* A reshape between two computed ops: views must alias on the device too. */
static struct tensor *b_reshape_chain(struct tctx *c, struct tensor **in, const struct ocase *k) {
    struct tensor *y = op_silu(c, in[0]); // [2, 320, 8, 8]
    y = op_reshape(c, y, 3, (int64_t[]){2, 320, 64});
    y = op_transpose(c, y); // [2, 64, 320]
    return op_scale(c, y, 2.0f, -1.0f);
}

/* ===== Cases ===== */

static void test_elementwise(void **state) {
    GPU_OR_SKIP();
    const struct ocase ks[] = {
        {"add same [2,320,16,16]", b_add, 2, {IN(2, 320, 16, 16), IN(2, 320, 16, 16)}, -2, 2, {0}, {0}},
        {"add bias [2,320,16,16]+[320,1,1]", b_add, 2, {IN(2, 320, 16, 16), IN(320, 1, 1)}, -2, 2, {0}, {0}},
        {"add emb [2,4,8,8]+[2,4,1,1]", b_add, 2, {IN(2, 4, 8, 8), IN(2, 4, 1, 1)}, -2, 2, {0}, {0}},
        {"add row [2,77,768]+[768]", b_add, 2, {IN(2, 77, 768), IN(768)}, -2, 2, {0}, {0}},
        {"add scalar [3,5,7]+[1]", b_add, 2, {IN(3, 5, 7), IN(1)}, -2, 2, {0}, {0}},
        {"add mid [2,3,5,7]+[3,1,7]", b_add, 2, {IN(2, 3, 5, 7), IN(3, 1, 7)}, -2, 2, {0}, {0}},
        {"mul same [2,1280,8,8]", b_mul, 2, {IN(2, 1280, 8, 8), IN(2, 1280, 8, 8)}, -2, 2, {0}, {0}},
        {"mul bcast [2,320,16,16]*[2,320,1,1]", b_mul, 2, {IN(2, 320, 16, 16), IN(2, 320, 1, 1)}, -2, 2, {0}, {0}},
        {"mul row [2,77,768]*[77,768]", b_mul, 2, {IN(2, 77, 768), IN(77, 768)}, -2, 2, {0}, {0}},
        {"scale latent [2,4,64,64]", b_scale, 1, {IN(2, 4, 64, 64)}, -3, 3, {0}, {0.18215f, 0.5f}},
        {"scale clamp [1,64,64,3]", b_scale_clamp, 1, {IN(1, 64, 64, 3)}, -3, 3, {0}, {0.5f, 0.5f}},
        {"silu [2,320,16,16]", b_silu, 1, {IN(2, 320, 16, 16)}, -8, 8, {0}, {0}},
        {"silu [2,1280]", b_silu, 1, {IN(2, 1280)}, -8, 8, {0}, {0}},
        {"gelu [2,256,1280]", b_gelu, 1, {IN(2, 256, 1280)}, -6, 6, {0}, {0}},
        {"quick_gelu [2,77,3072]", b_qgelu, 1, {IN(2, 77, 3072)}, -6, 6, {0}, {0}},
        {"geglu [2,256,2560]", b_geglu, 1, {IN(2, 256, 2560)}, -4, 4, {0}, {0}},
        {"geglu odd [1,7,10]", b_geglu, 1, {IN(1, 7, 10)}, -4, 4, {0}, {0}},
        {"reshape+transpose chain", b_reshape_chain, 1, {IN(2, 320, 8, 8)}, -3, 3, {0}, {0}},
    };
    run_cases(ks, (int)(sizeof ks / sizeof ks[0]), &TOL_MAP);
}

static void test_linear(void **state) {
    GPU_OR_SKIP();
    const struct ocase ks[] = {
        {"linear proj [2,256,320]x[320,320]+b", b_linear, 3, {IN(2, 256, 320), IN(320, 320), IN(320)}, -1, 1, {0}, {0}},
        {"linear ff [2,256,320]x[2560,320]+b", b_linear, 3, {IN(2, 256, 320), IN(2560, 320), IN(2560)}, -1, 1, {0}, {0}},
        {"linear clip mlp [2,77,768]x[3072,768]+b", b_linear, 3, {IN(2, 77, 768), IN(3072, 768), IN(3072)}, -1, 1, {0}, {0}},
        {"linear k [2,77,768]x[320,768]", b_linear, 3, {IN(2, 77, 768), IN(320, 768), NOIN}, -1, 1, {0}, {0}},
        {"linear time [2,320]x[1280,320]+b", b_linear, 3, {IN(2, 320), IN(1280, 320), IN(1280)}, -1, 1, {0}, {0}},
        {"linear odd [3,5,7]x[9,7]+b", b_linear, 3, {IN(3, 5, 7), IN(9, 7), IN(9)}, -1, 1, {0}, {0}},
    };
    run_cases(ks, (int)(sizeof ks / sizeof ks[0]), &TOL_PRODUCT);
}

static void test_conv2d(void **state) {
    GPU_OR_SKIP();
    /* ip: stride, pad top, left, bottom, right */
    const struct ocase ks[] = {
        {"conv in [2,4,32,32] 3x3 ->320", b_conv, 3, {IN(2, 4, 32, 32), IN(320, 4, 3, 3), IN(320)}, -1, 1, {1, 1, 1, 1, 1}, {0}},
        {"conv [1,320,16,16] 3x3 ->320", b_conv, 3, {IN(1, 320, 16, 16), IN(320, 320, 3, 3), IN(320)}, -1, 1, {1, 1, 1, 1, 1}, {0}},
        {"conv down [1,64,17,15] 3x3 s2", b_conv, 3, {IN(1, 64, 17, 15), IN(64, 64, 3, 3), IN(64)}, -1, 1, {2, 1, 1, 1, 1}, {0}},
        {"conv vae down [1,32,16,16] s2 pad 0,0,1,1", b_conv, 3, {IN(1, 32, 16, 16), IN(32, 32, 3, 3), IN(32)}, -1, 1, {2, 0, 0, 1, 1}, {0}},
        {"conv 1x1 skip [2,320,16,16] ->640", b_conv, 3, {IN(2, 320, 16, 16), IN(640, 320, 1, 1), IN(640)}, -1, 1, {1, 0, 0, 0, 0}, {0}},
        {"conv odd [1,3,13,11] 3x3 ->5 no bias", b_conv, 3, {IN(1, 3, 13, 11), IN(5, 3, 3, 3), NOIN}, -1, 1, {1, 1, 1, 1, 1}, {0}},
        {"conv 5x3 kernel pad 2,1", b_conv, 3, {IN(2, 6, 9, 8), IN(4, 6, 5, 3), IN(4)}, -1, 1, {1, 2, 1, 2, 1}, {0}},
        {"conv 1x1 s2 [1,8,9,9]", b_conv, 3, {IN(1, 8, 9, 9), IN(8, 8, 1, 1), IN(8)}, -1, 1, {2, 0, 0, 0, 0}, {0}},
    };
    run_cases(ks, (int)(sizeof ks / sizeof ks[0]), &TOL_PRODUCT);
}

/* Channels last: x [B, H, W, C], w [O, kh, kw, C] -> [B, H', W', O] (the UNet's layout on CUDA):
 * SD's 3x3 and 1x1 convs, the 4-channel input conv, a stride-2 downsample of odd size, no bias,
 * and the widest up-block input (2560 channels). */
static void test_conv2d_nhwc(void **state) {
    GPU_OR_SKIP();
    /* ip: stride, pad (all sides) */
    const struct ocase ks[] = {
        {"conv nhwc [2,16,16,320] 3x3 ->320", b_conv_nhwc, 3, {IN(2, 16, 16, 320), IN(320, 3, 3, 320), IN(320)}, -1, 1, {1, 1}, {0}},
        {"conv nhwc down [1,17,15,64] 3x3 s2", b_conv_nhwc, 3, {IN(1, 17, 15, 64), IN(64, 3, 3, 64), IN(64)}, -1, 1, {2, 1}, {0}},
        {"conv nhwc in [2,16,16,4] 3x3 ->320", b_conv_nhwc, 3, {IN(2, 16, 16, 4), IN(320, 3, 3, 4), IN(320)}, -1, 1, {1, 1}, {0}},
        {"conv nhwc 1x1 [2,8,8,320] ->640", b_conv_nhwc, 3, {IN(2, 8, 8, 320), IN(640, 1, 1, 320), IN(640)}, -1, 1, {1, 0}, {0}},
        {"conv nhwc odd [1,13,11,3] 3x3 ->5 no bias", b_conv_nhwc, 3, {IN(1, 13, 11, 3), IN(5, 3, 3, 3), NOIN}, -1, 1, {1, 1}, {0}},
        {"conv nhwc [2,8,8,2560] 3x3 ->1280", b_conv_nhwc, 3, {IN(2, 8, 8, 2560), IN(1280, 3, 3, 2560), IN(1280)}, -1, 1, {1, 1}, {0}},
        /* ip: stride, pad top, left, bottom, right (the VAE encoder's downsampling: im2col, not cuDNN) */
        {"conv nhwc vae down [1,16,16,32] s2 pad 0,0,1,1", b_conv_nhwc_pad, 3, {IN(1, 16, 16, 32), IN(32, 3, 3, 32), IN(32)}, -1, 1, {2, 0, 0, 1, 1}, {0}},
        /* fused residuals (op_add_fused); ip: stride, pad, -, -, -, channels last */
        {"conv nhwc + residual [2,16,16,320]", b_conv_res, 4, {IN(2, 16, 16, 320), IN(320, 3, 3, 320), IN(320), IN(2, 16, 16, 320)}, -1, 1, {1, 1, 0, 0, 0, 1}, {0}},
        /* 1024 positions: cuDNN's, with the residual and bias in its call (conv.cu FUSED RESIDUAL) */
        {"conv nhwc + residual [2,32,32,320] (cuDNN fused)", b_conv_res, 4, {IN(2, 32, 32, 320), IN(320, 3, 3, 320), IN(320), IN(2, 32, 32, 320)}, -1, 1, {1, 1, 0, 0, 0, 1}, {0}},
        {"conv nhwc 1x1 + residual, no bias", b_conv_res, 4, {IN(2, 8, 8, 64), IN(32, 1, 1, 64), NOIN, IN(2, 8, 8, 32)}, -1, 1, {1, 0, 0, 0, 0, 1}, {0}},
        {"conv nchw + residual [2,64,16,16]", b_conv_res, 4, {IN(2, 64, 16, 16), IN(64, 64, 3, 3), IN(64), IN(2, 64, 16, 16)}, -1, 1, {1, 1, 0, 0, 0, 0}, {0}},
        {"linear + residual [2,256,320]", b_linear_res, 4, {IN(2, 256, 320), IN(320, 320), IN(320), IN(2, 256, 320)}, -1, 1, {0}, {0}},
        {"linear + residual, no bias [2,77,1280]", b_linear_res, 4, {IN(2, 77, 1280), IN(640, 1280), NOIN, IN(2, 77, 640)}, -1, 1, {0}, {0}},
        {"linear + residual odd [3,5,7]", b_linear_res, 4, {IN(3, 5, 7), IN(9, 7), IN(9), IN(3, 5, 9)}, -1, 1, {0}, {0}},
    };
    run_cases(ks, (int)(sizeof ks / sizeof ks[0]), &TOL_PRODUCT);
}

static void test_norms(void **state) {
    GPU_OR_SKIP();
    /* group norm ip: groups, silu; fp: eps */
    const struct ocase ks[] = {
        {"group_norm [2,320,16,16] g32", b_gn, 3, {IN(2, 320, 16, 16), IN(320), IN(320)}, -2, 3, {32, 0}, {1e-5f}},
        {"group_norm+silu [2,640,8,8] g32", b_gn, 3, {IN(2, 640, 8, 8), IN(640), IN(640)}, -2, 3, {32, 1}, {1e-5f}},
        {"group_norm vae [1,128,32,32] eps1e-6", b_gn, 3, {IN(1, 128, 32, 32), IN(128), IN(128)}, -2, 3, {32, 1}, {1e-6f}},
        {"group_norm odd [1,32,7,5] g8", b_gn, 3, {IN(1, 32, 7, 5), IN(32), IN(32)}, -2, 3, {8, 0}, {1e-5f}},
        {"group_norm no affine [2,64,6,6]", b_gn, 3, {IN(2, 64, 6, 6), NOIN, NOIN}, -2, 3, {32, 0}, {1e-5f}},
        {"group_norm offset mean [1,64,32,32]", b_gn, 3, {IN(1, 64, 32, 32), IN(64), IN(64)}, 99, 101, {32, 0}, {1e-5f}},
        {"group_norm chunked offset [1,64,128,128]", b_gn, 3, {IN(1, 64, 128, 128), IN(64), IN(64)}, 99, 101, {32, 0}, {1e-5f}},
        {"group_norm chunked [2,320,64,64]+silu", b_gn, 3, {IN(2, 320, 64, 64), IN(320), IN(320)}, -2, 3, {32, 1}, {1e-5f}},
        {"group_norm chunked no affine [1,96,83,71]", b_gn, 3, {IN(1, 96, 83, 71), NOIN, NOIN}, -2, 3, {32, 0}, {1e-6f}},
        {"group_norm 3-d [2,320,256]", b_gn, 3, {IN(2, 320, 256), IN(320), IN(320)}, -2, 3, {32, 0}, {1e-6f}},
        /* F16/BF16 fast path (spatial % 8 == 0): several chunks per group, a mean of 100, C = 2560
         * (concatenated inputs), chunks of fewer vectors than threads; then spatial % 8 != 0 */
        {"group_norm offset mean [2,320,32,32]+silu", b_gn, 3, {IN(2, 320, 32, 32), IN(320), IN(320)}, 99, 101, {32, 1}, {1e-5f}},
        {"group_norm concat [2,2560,8,8]+silu", b_gn, 3, {IN(2, 2560, 8, 8), IN(2560), IN(2560)}, -2, 3, {32, 1}, {1e-5f}},
        {"group_norm [2,1280,8,8] no bias", b_gn, 3, {IN(2, 1280, 8, 8), IN(1280), NOIN}, -2, 3, {32, 0}, {1e-5f}},
        {"group_norm odd spatial [2,64,9,9]+silu", b_gn, 3, {IN(2, 64, 9, 9), IN(64), IN(64)}, -2, 3, {32, 1}, {1e-5f}},
        {"layer_norm [2,77,768]", b_ln, 3, {IN(2, 77, 768), IN(768), IN(768)}, -2, 3, {0}, {1e-5f}},
        {"layer_norm [2,256,320]", b_ln, 3, {IN(2, 256, 320), IN(320), IN(320)}, -2, 3, {0}, {1e-5f}},
        {"layer_norm no affine [3,5,7]", b_ln, 3, {IN(3, 5, 7), NOIN, NOIN}, -2, 3, {0}, {1e-5f}},
        {"layer_norm w only [4,1280]", b_ln, 3, {IN(4, 1280), IN(1280), NOIN}, -2, 3, {0}, {1e-5f}},
        /* F16/BF16 fast path (C % 8 == 0, C <= 2048): SD widths, a mean of 100, a row count that
         * is not a multiple of the block's 4 rows, C = 8 and 2048; then the generic path: C not a
         * multiple of 8, C over 2048 */
        {"layer_norm [2,1024,640]", b_ln, 3, {IN(2, 1024, 640), IN(640), IN(640)}, -2, 3, {0}, {1e-5f}},
        {"layer_norm offset mean [2,63,320]", b_ln, 3, {IN(2, 63, 320), IN(320), IN(320)}, 99, 101, {0}, {1e-5f}},
        {"layer_norm offset mean [3,1280]", b_ln, 3, {IN(3, 1280), IN(1280), IN(1280)}, 99, 101, {0}, {1e-5f}},
        {"layer_norm C 8 [5,8] b only", b_ln, 3, {IN(5, 8), NOIN, IN(8)}, -2, 3, {0}, {1e-5f}},
        {"layer_norm C 2048 [2,3,2048]", b_ln, 3, {IN(2, 3, 2048), IN(2048), IN(2048)}, -2, 3, {0}, {1e-5f}},
        {"layer_norm odd C [3,17,100]", b_ln, 3, {IN(3, 17, 100), IN(100), IN(100)}, -2, 3, {0}, {1e-5f}},
        {"layer_norm C 2560 [2,5,2560]", b_ln, 3, {IN(2, 5, 2560), IN(2560), IN(2560)}, -2, 3, {0}, {1e-5f}},
    };
    run_cases(ks, (int)(sizeof ks / sizeof ks[0]), &TOL_MAP);
}

/* GroupNorm over channels-last x [B, ..., C]. F16/BF16 take the vector path when C % 8 == 0:
 * SD widths with 10..80 channels per group (a vector of 8 channels straddles two groups when
 * C / 32 is not a multiple of 8), chunks of positions at B = 1 and 2, a mean of 100, 3-d x,
 * odd positions, no affine; C % 8 != 0 and F32 take the double-precision path (one chunk, and
 * several for a large group). */
static void test_norms_nhwc(void **state) {
    GPU_OR_SKIP();
    /* ip: groups, silu; fp: eps */
    const struct ocase ks[] = {
        {"gn nhwc [2,64,64,320] g32+silu", b_gn_nhwc, 3, {IN(2, 64, 64, 320), IN(320), IN(320)}, -2, 3, {32, 1}, {1e-5f}},
        {"gn nhwc [1,16,16,640] g32", b_gn_nhwc, 3, {IN(1, 16, 16, 640), IN(640), IN(640)}, -2, 3, {32, 0}, {1e-5f}},
        {"gn nhwc concat [2,8,8,2560] g32+silu", b_gn_nhwc, 3, {IN(2, 8, 8, 2560), IN(2560), IN(2560)}, -2, 3, {32, 1}, {1e-5f}},
        {"gn nhwc odd [1,7,5,32] g8", b_gn_nhwc, 3, {IN(1, 7, 5, 32), IN(32), IN(32)}, -2, 3, {8, 0}, {1e-5f}},
        {"gn nhwc no affine [2,6,6,64] g32", b_gn_nhwc, 3, {IN(2, 6, 6, 64), NOIN, NOIN}, -2, 3, {32, 0}, {1e-5f}},
        {"gn nhwc offset mean [1,32,32,64] g32", b_gn_nhwc, 3, {IN(1, 32, 32, 64), IN(64), IN(64)}, 99, 101, {32, 0}, {1e-5f}},
        {"gn nhwc offset mean [2,32,32,320] g32+silu", b_gn_nhwc, 3, {IN(2, 32, 32, 320), IN(320), IN(320)}, 99, 101, {32, 1}, {1e-5f}},
        {"gn nhwc [1,32,32,1920] g32", b_gn_nhwc, 3, {IN(1, 32, 32, 1920), IN(1920), IN(1920)}, -2, 3, {32, 0}, {1e-5f}},
        {"gn nhwc 3-d [1,4096,320] g32", b_gn_nhwc, 3, {IN(1, 4096, 320), IN(320), IN(320)}, -2, 3, {32, 0}, {1e-6f}},
        {"gn nhwc + a [2,64,64,320] g32+silu", b_gn_nhwc_add, 4, {IN(2, 64, 64, 320), IN(320), IN(320), IN(2, 320)}, -2, 3, {32, 1}, {1e-5f}},
        {"gn nhwc + a [8,8,8,1280] g32+silu", b_gn_nhwc_add, 4, {IN(8, 8, 8, 1280), IN(1280), IN(1280), IN(8, 1280)}, -2, 3, {32, 1}, {1e-5f}},
        {"gn nhwc + a offset mean [2,32,32,640] g32", b_gn_nhwc_add, 4, {IN(2, 32, 32, 640), IN(640), IN(640), IN(2, 640)}, 99, 101, {32, 0}, {1e-5f}},
        {"gn nhwc + a odd channels [2,5,3,12] g4", b_gn_nhwc_add, 4, {IN(2, 5, 3, 12), IN(12), IN(12), IN(2, 12)}, -2, 3, {4, 1}, {1e-5f}},
        {"gn nhwc C%8 [2,9,7,36] g6+silu", b_gn_nhwc, 3, {IN(2, 9, 7, 36), IN(36), IN(36)}, -2, 3, {6, 1}, {1e-5f}},
        {"gn nhwc C%8 chunked [1,64,64,36] g6 w only", b_gn_nhwc, 3, {IN(1, 64, 64, 36), IN(36), NOIN}, -2, 3, {6, 0}, {1e-5f}},
        {"gn nhwc C 8 g1 b only [3,5,8]", b_gn_nhwc, 3, {IN(3, 5, 8), NOIN, IN(8)}, -2, 3, {1, 0}, {1e-5f}},
    };
    run_cases(ks, (int)(sizeof ks / sizeof ks[0]), &TOL_MAP);
}

static void test_attention(void **state) {
    GPU_OR_SKIP();
    /* ip: heads, causal */
    const struct ocase ks[] = {
        {"attn self [2,256,320] h8 d40", b_attn, 3, {IN(2, 256, 320), IN(2, 256, 320), IN(2, 256, 320)}, -1, 1, {8, 0}, {0}},
        {"attn cross [2,256,320]x[2,77,320] h8", b_attn, 3, {IN(2, 256, 320), IN(2, 77, 320), IN(2, 77, 320)}, -1, 1, {8, 0}, {0}},
        {"attn self [1,64,1280] h8 d160", b_attn, 3, {IN(1, 64, 1280), IN(1, 64, 1280), IN(1, 64, 1280)}, -1, 1, {8, 0}, {0}},
        {"attn clip causal [2,77,768] h12 d64", b_attn, 3, {IN(2, 77, 768), IN(2, 77, 768), IN(2, 77, 768)}, -1, 1, {12, 1}, {0}},
        {"attn odd causal nq37 nk45 h3 d32", b_attn, 3, {IN(2, 37, 96), IN(2, 45, 96), IN(2, 45, 96)}, -1, 1, {3, 1}, {0}},
        {"attn d256 [1,50,512] h2", b_attn, 3, {IN(1, 50, 512), IN(1, 50, 512), IN(1, 50, 512)}, -1, 1, {2, 0}, {0}},
        {"attn large scores [1,40,64] h1", b_attn, 3, {IN(1, 40, 64), IN(1, 33, 64), IN(1, 33, 64)}, -6, 6, {1, 0}, {0}},
        {"attn d512 [1,100,512] h1", b_attn, 3, {IN(1, 100, 512), IN(1, 70, 512), IN(1, 70, 512)}, -1, 1, {1, 0}, {0}},
        {"attn blas causal [1,300,128] h2", b_attn, 3, {IN(1, 300, 128), IN(1, 300, 128), IN(1, 300, 128)}, -1, 1, {2, 1}, {0}},
        {"attn blas odd [2,301,96]x[2,257,96] h3", b_attn, 3, {IN(2, 301, 96), IN(2, 257, 96), IN(2, 257, 96)}, -1, 1, {3, 0}, {0}},
        {"attn vae [1,1024,128] h1 d128", b_attn, 3, {IN(1, 1024, 128), IN(1, 1024, 128), IN(1, 1024, 128)}, -1, 1, {1, 0}, {0}},
    };
    run_cases(ks, (int)(sizeof ks / sizeof ks[0]), &TOL_PRODUCT);
}

/* The F16/BF16 flash kernel (attention_flash.cu): SD 1.5 heads of d = 40, 80, 160 (8 heads),
 * SD 2 / SDXL d = 64, cross-attention over 77 tokens, query and key counts that are not
 * multiples of the 64-query / 64-key tiles, head sizes that are not multiples of 16 (zero
 * padding) or of 8 (the element-wise staging path), causal masks, the largest head (256), and
 * the same in 128-query CTAs. */
static void test_attention_flash(void **state) {
    GPU_OR_SKIP();
    /* ip: heads, causal */
    const struct ocase ks[] = {
        {"flash d40 [2,1024,320] h8", b_attn, 3, {IN(2, 1024, 320), IN(2, 1024, 320), IN(2, 1024, 320)}, -1, 1, {8, 0}, {0}},
        {"flash d40 cross [2,1024,320]x[2,77,320] h8", b_attn, 3, {IN(2, 1024, 320), IN(2, 77, 320), IN(2, 77, 320)}, -1, 1, {8, 0}, {0}},
        {"flash d80 [2,1024,640] h8", b_attn, 3, {IN(2, 1024, 640), IN(2, 1024, 640), IN(2, 1024, 640)}, -1, 1, {8, 0}, {0}},
        {"flash d80 cross [2,1024,640]x[2,77,640] h8", b_attn, 3, {IN(2, 1024, 640), IN(2, 77, 640), IN(2, 77, 640)}, -1, 1, {8, 0}, {0}},
        {"flash d160 [2,256,1280] h8", b_attn, 3, {IN(2, 256, 1280), IN(2, 256, 1280), IN(2, 256, 1280)}, -1, 1, {8, 0}, {0}},
        {"flash d160 cross [2,256,1280]x[2,77,1280] h8", b_attn, 3, {IN(2, 256, 1280), IN(2, 77, 1280), IN(2, 77, 1280)}, -1, 1, {8, 0}, {0}},
        {"flash d64 [2,1024,640] h10", b_attn, 3, {IN(2, 1024, 640), IN(2, 1024, 640), IN(2, 1024, 640)}, -1, 1, {10, 0}, {0}},
        {"flash d64 cross [2,1024,640]x[2,77,640] h10", b_attn, 3, {IN(2, 1024, 640), IN(2, 77, 640), IN(2, 77, 640)}, -1, 1, {10, 0}, {0}},
        {"flash d64 [2,256,320] h5", b_attn, 3, {IN(2, 256, 320), IN(2, 256, 320), IN(2, 256, 320)}, -1, 1, {5, 0}, {0}},
        {"flash d40 odd [2,1000,320]x[2,37,320] h8", b_attn, 3, {IN(2, 1000, 320), IN(2, 37, 320), IN(2, 37, 320)}, -1, 1, {8, 0}, {0}},
        {"flash d80 odd [2,1000,640]x[2,37,640] h8", b_attn, 3, {IN(2, 1000, 640), IN(2, 37, 640), IN(2, 37, 640)}, -1, 1, {8, 0}, {0}},
        {"flash d36 unaligned [2,1000,72]x[2,37,72] h2", b_attn, 3, {IN(2, 1000, 72), IN(2, 37, 72), IN(2, 37, 72)}, -1, 1, {2, 0}, {0}},
        {"flash causal [2,77,768] h12 d64", b_attn, 3, {IN(2, 77, 768), IN(2, 77, 768), IN(2, 77, 768)}, -1, 1, {12, 1}, {0}},
        {"flash causal [2,77,320] h8 d40", b_attn, 3, {IN(2, 77, 320), IN(2, 77, 320), IN(2, 77, 320)}, -1, 1, {8, 1}, {0}},
        {"flash causal [2,300,320] h8 d40", b_attn, 3, {IN(2, 300, 320), IN(2, 300, 320), IN(2, 300, 320)}, -1, 1, {8, 1}, {0}},
        {"flash causal [2,300,640] h8 d80", b_attn, 3, {IN(2, 300, 640), IN(2, 300, 640), IN(2, 300, 640)}, -1, 1, {8, 1}, {0}},
        {"flash causal [2,300,1280] h8 d160", b_attn, 3, {IN(2, 300, 1280), IN(2, 300, 1280), IN(2, 300, 1280)}, -1, 1, {8, 1}, {0}},
        {"flash causal odd d36 [2,300,72] h2", b_attn, 3, {IN(2, 300, 72), IN(2, 300, 72), IN(2, 300, 72)}, -1, 1, {2, 1}, {0}},
        {"flash d256 [1,200,512]x[1,131,512] h2", b_attn, 3, {IN(1, 200, 512), IN(1, 131, 512), IN(1, 131, 512)}, -1, 1, {2, 0}, {0}},
        {"flash d200 [1,130,400]x[1,70,400] h2", b_attn, 3, {IN(1, 130, 400), IN(1, 70, 400), IN(1, 70, 400)}, -1, 1, {2, 0}, {0}},
        {"flash d3 tiny [2,5,9]x[2,3,9] h3", b_attn, 3, {IN(2, 5, 9), IN(2, 3, 9), IN(2, 3, 9)}, -1, 1, {3, 0}, {0}},
        {"flash large scores [1,300,64] h1", b_attn, 3, {IN(1, 300, 64), IN(1, 300, 64), IN(1, 300, 64)}, -6, 6, {1, 0}, {0}},
        /* 128-query CTAs (4 warps of two m16 row blocks up to d = 64, 8 warps of one above; taken
         * when there are at least as many such CTAs as SMs, here >= 192): query and key tails,
         * causal, the element-wise staging path, d = 16, 64, 128 */
        {"flash 8w d40 odd [4,1000,320]x[4,77,320] h8", b_attn, 3, {IN(4, 1000, 320), IN(4, 77, 320), IN(4, 77, 320)}, -1, 1, {8, 0}, {0}},
        {"flash 8w causal d40 [4,1100,320] h8", b_attn, 3, {IN(4, 1100, 320), IN(4, 1100, 320), IN(4, 1100, 320)}, -1, 1, {8, 1}, {0}},
        {"flash 8w d64 [4,1000,640]x[4,150,640] h10", b_attn, 3, {IN(4, 1000, 640), IN(4, 150, 640), IN(4, 150, 640)}, -1, 1, {10, 0}, {0}},
        {"flash 8w d36 unaligned [32,1000,72]x[32,37,72] h2", b_attn, 3, {IN(32, 1000, 72), IN(32, 37, 72), IN(32, 37, 72)}, -1, 1, {2, 0}, {0}},
        {"flash 8w d128 [4,1000,1024]x[4,200,1024] h8", b_attn, 3, {IN(4, 1000, 1024), IN(4, 200, 1024), IN(4, 200, 1024)}, -1, 1, {8, 0}, {0}},
        {"flash 128q d40 tails [2,4113,320]x[2,300,320] h8", b_attn, 3, {IN(2, 4113, 320), IN(2, 300, 320), IN(2, 300, 320)}, -1, 1, {8, 0}, {0}},
        {"flash 128q causal d40 [8,300,320] h8", b_attn, 3, {IN(8, 300, 320), IN(8, 300, 320), IN(8, 300, 320)}, -1, 1, {8, 1}, {0}},
        {"flash 128q causal d64 [8,300,640] h10", b_attn, 3, {IN(8, 300, 640), IN(8, 300, 640), IN(8, 300, 640)}, -1, 1, {10, 1}, {0}},
        {"flash 128q d16 [4,1000,128]x[4,77,128] h8", b_attn, 3, {IN(4, 1000, 128), IN(4, 77, 128), IN(4, 77, 128)}, -1, 1, {8, 0}, {0}},
        {"flash 128q large scores d64 [8,300,640] h10", b_attn, 3, {IN(8, 300, 640), IN(8, 300, 640), IN(8, 300, 640)}, -6, 6, {10, 0}, {0}},
    };
    run_cases_half(ks, (int)(sizeof ks / sizeof ks[0]), &TOL_PRODUCT);
}

/* The flash kernel at full SD sizes (4096 tokens: SD 1.5 at 512 px, SDXL's d = 64 at 1024 px). */
static void test_attention_flash_sd(void **state) {
    GPU_OR_SKIP();
    if (getenv("KILN_GPU_SKIP_LARGE")) skip();
    const struct ocase ks[] = {
        {"flash SD d40 [2,4096,320] h8", b_attn, 3, {IN(2, 4096, 320), IN(2, 4096, 320), IN(2, 4096, 320)}, -1, 1, {8, 0}, {0}},
        {"flash SD d40 cross [2,4096,320]x[2,77,320]", b_attn, 3, {IN(2, 4096, 320), IN(2, 77, 320), IN(2, 77, 320)}, -1, 1, {8, 0}, {0}},
        {"flash SDXL d64 [2,4096,640] h10", b_attn, 3, {IN(2, 4096, 640), IN(2, 4096, 640), IN(2, 4096, 640)}, -1, 1, {10, 0}, {0}},
        {"flash SDXL d64 cross [2,4096,640]x[2,77,640]", b_attn, 3, {IN(2, 4096, 640), IN(2, 77, 640), IN(2, 77, 640)}, -1, 1, {10, 0}, {0}},
        {"flash SD d80 [2,4096,640] h8", b_attn, 3, {IN(2, 4096, 640), IN(2, 4096, 640), IN(2, 4096, 640)}, -1, 1, {8, 0}, {0}},
    };
    run_cases_half(ks, (int)(sizeof ks / sizeof ks[0]), &TOL_PRODUCT);
}

static void test_layout(void **state) {
    GPU_OR_SKIP();
    struct ocase ks[] = {
        {"transpose [2,320,256]", b_transpose, 1, {IN(2, 320, 256)}, -1, 1, {0}, {0}},
        {"transpose odd [3,17,33]", b_transpose, 1, {IN(3, 17, 33)}, -1, 1, {0}, {0}},
        {"transpose 2-d [5,7]", b_transpose, 1, {IN(5, 7)}, -1, 1, {0}, {0}},
        {"transpose 4-d [2,3,40,9]", b_transpose, 1, {IN(2, 3, 40, 9)}, -1, 1, {0}, {0}},
        {"upsample x2 [2,320,8,8]", b_upsample, 1, {IN(2, 320, 8, 8)}, -1, 1, {16, 16}, {0}},
        {"upsample to 13x11 [1,4,7,5]", b_upsample, 1, {IN(1, 4, 7, 5)}, -1, 1, {13, 11}, {0}},
        {"upsample to 6x5 [1,8,3,3]", b_upsample, 1, {IN(1, 8, 3, 3)}, -1, 1, {6, 5}, {0}},
        {"concat dim1 [2,320,8,8]+[2,640,8,8]", b_concat, 2, {IN(2, 320, 8, 8), IN(2, 640, 8, 8)}, -1, 1, {1}, {0}},
        {"concat dim0 [1,77,768]+[2,77,768]", b_concat, 2, {IN(1, 77, 768), IN(2, 77, 768)}, -1, 1, {0}, {0}},
        {"concat dim1 [2,77,768]+[2,5,768]", b_concat, 2, {IN(2, 77, 768), IN(2, 5, 768)}, -1, 1, {1}, {0}},
        {"concat dim3 [2,3,4,5]+[2,3,4,2]", b_concat, 2, {IN(2, 3, 4, 5), IN(2, 3, 4, 2)}, -1, 1, {3}, {0}},
        /* channels-last skip concatenation: 16-byte units in every dtype */
        {"concat dim3 [2,8,8,1280]+[2,8,8,640]", b_concat, 2, {IN(2, 8, 8, 1280), IN(2, 8, 8, 640)}, -1, 1, {3}, {0}},
        {"get_rows [1000,128] by [2,77]", b_get_rows, 2, {IN(1000, 128), {DTYPE_I32, 2, {2, 77}, 1000}}, -1, 1, {0}, {0}},
    };
    run_cases(ks, (int)(sizeof ks / sizeof ks[0]), &TOL_COPY);
}

/* Channels-last nearest resize [B, H, W, C] -> [B, h, w, C]: 16-byte pixels (every dtype at
 * C = 1280; F16/BF16 only at C = 8) and element copies (C = 6 and 3), integer and
 * non-integer factors. */
static void test_layout_nhwc(void **state) {
    GPU_OR_SKIP();
    /* ip: output height, width */
    const struct ocase ks[] = {
        {"upsample nhwc x2 [2,8,8,1280]", b_up_nhwc, 1, {IN(2, 8, 8, 1280)}, -1, 1, {16, 16}, {0}},
        {"upsample nhwc x2 [1,5,7,6]", b_up_nhwc, 1, {IN(1, 5, 7, 6)}, -1, 1, {10, 14}, {0}},
        {"upsample nhwc to 7x9 [1,5,7,3]", b_up_nhwc, 1, {IN(1, 5, 7, 3)}, -1, 1, {7, 9}, {0}},
        {"upsample nhwc to 7x9 [1,5,7,8]", b_up_nhwc, 1, {IN(1, 5, 7, 8)}, -1, 1, {7, 9}, {0}},
    };
    run_cases(ks, (int)(sizeof ks / sizeof ks[0]), &TOL_COPY);
}

/* Full SD1.5 sizes (512x512 images, 64x64 latents): the conv's column matrix is taken in
 * chunks, attention runs over 4096 tokens and the VAE's single 512-channel head. */
static void test_sd_scale(void **state) {
    GPU_OR_SKIP();
    if (getenv("KILN_GPU_SKIP_LARGE")) skip(); /* e.g. under compute-sanitizer */
    const struct ocase ks[] = {
        {"SD conv [2,320,64,64] 3x3 ->320", b_conv, 3, {IN(2, 320, 64, 64), IN(320, 320, 3, 3), IN(320)}, -1, 1, {1, 1, 1, 1, 1}, {0}},
        {"SD vae conv [1,128,256,256] (chunked)", b_conv, 3, {IN(1, 128, 256, 256), IN(128, 128, 3, 3), IN(128)}, -1, 1, {1, 1, 1, 1, 1}, {0}},
        {"SD attn self [2,4096,320] h8 d40", b_attn, 3, {IN(2, 4096, 320), IN(2, 4096, 320), IN(2, 4096, 320)}, -1, 1, {8, 0}, {0}},
        {"SD attn cross [2,4096,320]x[2,77,320]", b_attn, 3, {IN(2, 4096, 320), IN(2, 77, 320), IN(2, 77, 320)}, -1, 1, {8, 0}, {0}},
        {"SD vae attn [1,4096,512] h1 d512", b_attn, 3, {IN(1, 4096, 512), IN(1, 4096, 512), IN(1, 4096, 512)}, -1, 1, {1, 0}, {0}},
        {"SD group_norm+silu [1,128,256,256]", b_gn, 3, {IN(1, 128, 256, 256), IN(128), IN(128)}, -2, 3, {32, 1}, {1e-6f}},
        {"SD vae group_norm+silu [1,128,512,512]", b_gn, 3, {IN(1, 128, 512, 512), IN(128), IN(128)}, -2, 3, {32, 1}, {1e-6f}},
        {"SD vae group_norm offset [1,256,256,256]", b_gn, 3, {IN(1, 256, 256, 256), IN(256), IN(256)}, 99, 101, {32, 0}, {1e-6f}},
        {"SD group_norm+silu [8,320,64,64]", b_gn, 3, {IN(8, 320, 64, 64), IN(320), IN(320)}, -2, 3, {32, 1}, {1e-5f}},
        {"SD layer_norm [2,4096,320]", b_ln, 3, {IN(2, 4096, 320), IN(320), IN(320)}, -2, 3, {0}, {1e-5f}},
        {"SD linear ff [2,4096,320]x[2560,320]", b_linear, 3, {IN(2, 4096, 320), IN(2560, 320), IN(2560)}, -1, 1, {0}, {0}},
        {"SD geglu [2,4096,2560]", b_geglu, 1, {IN(2, 4096, 2560)}, -4, 4, {0}, {0}},
    };
    run_cases(ks, (int)(sizeof ks / sizeof ks[0]), &TOL_PRODUCT);
}

/* ===== CAST: bit-equal to the CPU's conversions ===== */

/* Runs op_cast(x, to) for the n elements at host (dtype from) on one side; returns the output
 * (n elements of dtype to; mem_free). */
static void *run_cast(struct side *s, enum dtype from, enum dtype to, const void *host, int64_t n) {
    tctx_reset(&s->c);
    struct tensor *x = tensor_input(&s->c, from, 1, (int64_t[]){n});
    struct tensor *y = op_cast(&s->c, x, to);
    if (!y || y == x) fail_msg("cast %s -> %s: recording failed: %s", dtype_name(from), dtype_name(to), s->c.err.msg);
    tensor_set_output(y);
    assert_int_equal(tctx_plan(&s->c, &y, 1), 0);
    assert_int_equal(tctx_set(&s->c, x, host), 0);
    int rc = tctx_run(&s->c);
    if (rc) fail_msg("cast %s -> %s: %s (%s)", dtype_name(from), dtype_name(to), status_name(rc), s->c.err.msg);
    void *out = mem_alloc((size_t)n * dtype_size(to));
    assert_int_equal(tctx_get(&s->c, y, out), 0);
    return out;
}

/* Element i of a buffer of dtype t, as raw bits. */
static uint32_t bits_at(const void *p, enum dtype t, int64_t i) {
    if (dtype_size(t) == 2) return ((const uint16_t *)p)[i];
    return ((const uint32_t *)p)[i];
}

static uint32_t bits_in(const void *host, enum dtype from, int64_t i) { return bits_at(host, from, i); }

/* CUDA and CPU casts of host agree bit for bit; returns the CUDA output (mem_free). */
static void *check_cast(enum dtype from, enum dtype to, const void *host, int64_t n) {
    void *yc = run_cast(&cpu, from, to, host, n);
    void *yg = run_cast(&gpu, from, to, host, n);
    int64_t bad = 0, first = -1;
    for (int64_t i = 0; i < n; i++) {
        if (bits_at(yc, to, i) == bits_at(yg, to, i)) continue;
        if (first < 0) first = i;
        bad++;
    }
    printf("  cast %-4s -> %-4s %8lld values, %lld differ\n", dtype_name(from), dtype_name(to), (long long)n,
           (long long)bad);
    if (bad)
        fail_msg("cast %s -> %s: %lld of %lld differ; first at %lld: input 0x%08x, cuda 0x%08x, cpu 0x%08x",
                 dtype_name(from), dtype_name(to), (long long)bad, (long long)n, (long long)first,
                 bits_in(host, from, first), bits_at(yg, to, first), bits_at(yc, to, first));
    mem_free(yc);
    return yg;
}

static float f32_of_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Known conversions, checked on the CUDA output alone (the CPU's have their own unit tests). */
struct cast_known {
    uint32_t f32;  /* input bits */
    uint16_t f16;  /* expected F16 bits */
    uint16_t bf16; /* expected BF16 bits */
};

static const struct cast_known CAST_KNOWN[] = {
    {0x3f800000u, 0x3c00, 0x3f80}, /* 1 */
    {0x80000000u, 0x8000, 0x8000}, /* -0 */
    {0x3f801000u, 0x3c00, 0x3f80}, /* 1 + 2^-11: F16 tie -> even (down) */
    {0x3f803000u, 0x3c02, 0x3f80}, /* 1 + 3 2^-11: F16 tie -> even (up) */
    {0x3f808000u, 0x3c04, 0x3f80}, /* 1 + 2^-8: BF16 tie -> even (down) */
    {0x3f818000u, 0x3c0c, 0x3f82}, /* 1 + 3 2^-8: BF16 tie -> even (up) */
    {0x3f808001u, 0x3c04, 0x3f81}, /* just above the BF16 tie: up */
    {0x477fe000u, 0x7bff, 0x4780}, /* 65504 = F16 max */
    {0x477fefffu, 0x7bff, 0x4780}, /* just below 65520: F16 max */
    {0x477ff000u, 0x7c00, 0x4780}, /* 65520: F16 overflows to inf (tie, odd max) */
    {0xc77ff000u, 0xfc00, 0xc780}, /* -65520: -inf */
    {0x7f7fffffu, 0x7c00, 0x7f80}, /* FLT_MAX: inf in both */
    {0x7f800000u, 0x7c00, 0x7f80}, /* inf */
    {0xff800000u, 0xfc00, 0xff80}, /* -inf */
    {0x38800000u, 0x0400, 0x3880}, /* 2^-14: smallest normal F16 */
    {0x38000000u, 0x0200, 0x3800}, /* 2^-15: F16 subnormal */
    {0x33800000u, 0x0001, 0x3380}, /* 2^-24: smallest F16 subnormal */
    {0x33000000u, 0x0000, 0x3300}, /* 2^-25: tie -> even (0) */
    {0x33400000u, 0x0001, 0x3340}, /* 1.5 2^-25: up to 2^-24 */
    {0xb3000000u, 0x8000, 0xb300}, /* -2^-25: -0 */
    {0x000116c2u, 0x0000, 0x0001}, /* F32 subnormal (1e-40): F16 0, BF16 subnormal kept */
    {0x00008000u, 0x0000, 0x0000}, /* F32 subnormal, BF16 tie -> even (0) */
    {0x00018000u, 0x0000, 0x0002}, /* F32 subnormal, BF16 tie -> even (up) */
    {0x7fc00000u, 0x7e00, 0x7fc0}, /* quiet NaN */
    {0x7f800001u, 0x7e00, 0x7fc0}, /* signalling NaN: made quiet */
    {0xffc12345u, 0xfe00, 0xffc1}, /* negative NaN with payload */
};

static void test_cast(void **state) {
    GPU_OR_SKIP();
    /* F32 -> F16 / BF16: the known values, every F16 and BF16 tie (each midpoint between two
     * neighbours, and one F32 ulp either side), then random bit patterns (every class) */
    int nk = (int)(sizeof CAST_KNOWN / sizeof CAST_KNOWN[0]);
    int64_t n = nk + 2 * 3 * 0x7c00 + 2 * 3 * 0x7f80 + ((int64_t)1 << 20), at = 0;
    uint32_t *x = mem_alloc((size_t)n * sizeof *x);
    for (int i = 0; i < nk; i++) x[at++] = CAST_KNOWN[i].f32;
    for (uint32_t sign = 0; sign < 2; sign++) {
        for (uint32_t h = 0; h < 0x7c00; h++) { /* finite F16 h and its upper neighbour */
            double mid = ((double)f16_to_f32((uint16_t)h) + (double)f16_to_f32((uint16_t)(h + 1))) / 2;
            float f = (float)(sign ? -mid : mid); /* exact: 12 significant bits */
            uint32_t u;
            memcpy(&u, &f, sizeof u);
            x[at++] = u;
            x[at++] = u + 1;
            x[at++] = u - 1;
        }
        for (uint32_t h = 0; h < 0x7f80; h++) { /* finite BF16 h and its upper neighbour */
            uint32_t u = (sign << 31) | (h << 16) | 0x8000u;
            x[at++] = u;
            x[at++] = u + 1;
            x[at++] = u - 1;
        }
    }
    while (at < n) x[at++] = (uint32_t)(urand() * 4294967296.0);
    uint16_t *y16 = check_cast(DTYPE_F32, DTYPE_F16, x, n);
    uint16_t *yb = check_cast(DTYPE_F32, DTYPE_BF16, x, n);
    for (int i = 0; i < nk; i++) {
        if (y16[i] != CAST_KNOWN[i].f16 || yb[i] != CAST_KNOWN[i].bf16)
            fail_msg("cast of F32 0x%08x (%.9g): cuda F16 0x%04x BF16 0x%04x, expected 0x%04x 0x%04x",
                     CAST_KNOWN[i].f32, f32_of_bits(CAST_KNOWN[i].f32), y16[i], yb[i], CAST_KNOWN[i].f16,
                     CAST_KNOWN[i].bf16);
    }
    mem_free(y16);
    mem_free(yb);
    mem_free(x);

    /* F16 / BF16 -> F32, F16 <-> BF16: every bit pattern (subnormals, infinities, NaNs too) */
    uint16_t *all = mem_alloc(65536 * sizeof *all);
    for (uint32_t i = 0; i < 65536; i++) all[i] = (uint16_t)i;
    uint32_t *w16 = check_cast(DTYPE_F16, DTYPE_F32, all, 65536);
    uint32_t *wb = check_cast(DTYPE_BF16, DTYPE_F32, all, 65536);
    /* spot checks: smallest F16 subnormal, F16 max, BF16 subnormal, infinities, widening exact */
    assert_int_equal(w16[0x0001], 0x33800000u);
    assert_int_equal(w16[0x7bff], 0x477fe000u);
    assert_int_equal(w16[0xfc00], 0xff800000u);
    assert_int_equal(wb[0x0001], 0x00010000u);
    assert_int_equal(wb[0x3f80], 0x3f800000u);
    mem_free(w16);
    mem_free(wb);
    mem_free(check_cast(DTYPE_F16, DTYPE_BF16, all, 65536));
    mem_free(check_cast(DTYPE_BF16, DTYPE_F16, all, 65536));
    mem_free(all);
}

/* ===== Errors ===== */

static void test_get_rows_bad_id(void **state) {
    GPU_OR_SKIP();
    struct tctx *c = &gpu.c;
    tctx_reset(c);
    struct tensor *table = tensor_input(c, DTYPE_F32, 2, (int64_t[]){4, 3});
    struct tensor *ids = tensor_input(c, DTYPE_I32, 1, (int64_t[]){3});
    struct tensor *y = op_get_rows(c, table, ids);
    tensor_set_output(y);
    assert_int_equal(tctx_plan(c, &y, 1), 0);
    float t[12] = {0};
    int32_t id[3] = {1, 7, 2};
    assert_int_equal(tctx_set(c, table, t), 0);
    assert_int_equal(tctx_set(c, ids, id), 0);
    assert_int_equal(tctx_run(c), STATUS_ERR_RANGE);
    printf("  bad id: %s\n", c->err.msg);
    assert_non_null(strstr(c->err.msg, "id 7 at position 1"));
}

static void test_device_errors(void **state) {
    GPU_OR_SKIP();
    struct err err = {0};
    assert_null(backend_cuda_new(backend_cuda_count() + 3, &err));
    assert_int_equal(err.code, STATUS_ERR_NOT_FOUND);
    printf("  missing device: %s\n", err.msg);
    void *p = NULL;
    int rc = backend_buf_alloc(gpu.be, (size_t)1 << 50, &p); /* a petabyte */
    assert_int_equal(rc, STATUS_ERR_OOM_DEVICE);
    assert_null(p);
    /* the failed allocation leaves the device usable */
    rc = backend_buf_alloc(gpu.be, 1 << 20, &p);
    assert_int_equal(rc, 0);
    backend_buf_free(gpu.be, p);
}

/* ===== cuDNN attention plans kept on disk (attention_dnn.cu, PLANS ON DISK) ===== */

/* Case k in F16 on a fresh CUDA backend (so its plans are made, or read from the cache folder,
 * at first use), output as F32 (mem_free). */
static float *run_fresh(const struct ocase *k, void *const *host, int64_t *n_out) {
    struct side s;
    struct err err = {0};
    s.be = backend_cuda_new(0, &err);
    assert_non_null(s.be);
    tscratch_init(&s.scratch, s.be);
    tctx_init(&s.c, s.be, &s.scratch);
    int rc = 0;
    float *y = run_side(&s, k, (void **)host, DTYPE_F16, false, n_out, &rc);
    assert_int_equal(rc, 0);
    tctx_deinit(&s.c);
    tscratch_deinit(&s.scratch);
    backend_free(s.be);
    return y;
}

/* Random inputs in [-1, 1) for case k (F32 inputs only), host[i] to mem_free. */
static void rand_inputs(const struct ocase *k, float **host) {
    for (int i = 0; i < k->n_in; i++) {
        int64_t n = numel(&k->in[i]);
        host[i] = mem_alloc((size_t)n * sizeof(float));
        for (int64_t j = 0; j < n; j++) host[i][j] = (float)(2 * urand() - 1);
    }
}

/* A fresh cache folder for the test: root (64 bytes) = /tmp/kiln-<what>-XXXXXX, KILN_CACHE_DIR. */
static void cache_begin(const char *what, char *root) {
    snprintf(root, 64, "/tmp/kiln-%s-XXXXXX", what);
    assert_non_null(mkdtemp(root));
    setenv("KILN_CACHE_DIR", root, 1);
}

static void cache_end(const char *root) {
    unsetenv("KILN_CACHE_DIR");
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    assert_int_equal(system(cmd), 0);
}

/* Paths of the files in dir whose names hold suffix (up to 8) into names; returns how many. */
static int kept_files(const char *dir, const char *suffix, char names[8][600]) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) && n < 8;)
        if (strstr(e->d_name, suffix)) snprintf(names[n++], 600, "%s/%s", dir, e->d_name);
    closedir(d);
    return n;
}

/* A plan made once is written to the cache folder; a fresh backend reads it back and computes
 * the same bits; a file cuDNN refuses, and a good plan whose first line names another shape, are
 * ignored (the plan is made again, same bits) and replaced by a good one. */
static void test_attention_plan_cache(void **state) {
    GPU_OR_SKIP();
    const char *sdpa_env = getenv("KILN_CUDNN_SDPA");
    if (sdpa_env && strcmp(sdpa_env, "0") == 0) skip();
    const struct ocase k = {"attn plan cache", b_attn, 3, {IN(2, 256, 320), IN(2, 256, 320), IN(2, 256, 320)},
                            -1, 1, {8, 0}, {0}};
    char root[64], dir[128];
    cache_begin("plan-cache", root);
    snprintf(dir, sizeof dir, "%s/cudnn-sdpa", root);
    float *host[3];
    rand_inputs(&k, host);
    int64_t n1 = 0, n2 = 0, n3 = 0;
    float *made = run_fresh(&k, (void *const *)host, &n1);
    char names[8][600];
    int files = kept_files(dir, ".json", names);
    printf("  %d plan file(s) in %s\n", files, dir);
#ifdef KILN_HAVE_CUDNN
    bool sdpa = cudnnGetVersion() >= 91301; /* attention_dnn.cu's CUDA_SDPA_MIN_VERSION */
#else
    bool sdpa = false;
#endif
    if (!sdpa) { /* no fused attention here: nothing is kept */
        assert_int_equal(files, 0);
    } else {
        assert_true(files >= 1);
        float *read_back = run_fresh(&k, (void *const *)host, &n2);
        assert_int_equal(n2, n1);
        assert_memory_equal(read_back, made, (size_t)n1 * sizeof(float));
        /* (1) the right first line, then what cuDNN refuses; (2) a valid plan under another
           shape's first line: both made again, with the same bits, and the file a plan again */
        for (int pass = 1; pass <= 2; pass++) {
            for (int i = 0; i < files; i++) {
                FILE *f = fopen(names[i], "r");
                assert_non_null(f);
                char *text = mem_alloc(1 << 24);
                size_t len = fread(text, 1, (1 << 24) - 1, f);
                fclose(f);
                text[len] = 0;
                char *nl = strchr(text, '\n');
                assert_non_null(nl); /* the header line */
                f = fopen(names[i], "w");
                assert_non_null(f);
                if (pass == 1) {
                    fwrite(text, 1, (size_t)(nl + 1 - text), f);
                    fputs("{\"not\": \"a plan\"}", f);
                } else {
                    fputs("kiln cudnn-sdpa plan of another shape\n", f);
                    fputs(nl + 1, f);
                }
                fclose(f);
                mem_free(text);
            }
            float *remade = run_fresh(&k, (void *const *)host, &n3);
            assert_int_equal(n3, n1);
            assert_memory_equal(remade, made, (size_t)n1 * sizeof(float));
            mem_free(remade);
            FILE *f = fopen(names[0], "r");
            assert_non_null(f);
            char first[64] = "";
            assert_non_null(fgets(first, sizeof first, f));
            assert_true(strncmp(first, "kiln cudnn-sdpa plan cudnn", 26) == 0); /* rewritten */
            fseek(f, 0, SEEK_END);
            assert_true(ftell(f) > 100);
            fclose(f);
        }
        mem_free(read_back);
    }
    mem_free(made);
    for (int i = 0; i < 3; i++) mem_free(host[i]);
    cache_end(root);
}

/* A convolution's algorithm is kept in the cache folder (conv.cu, ALGORITHMS KEPT ON DISK); a
 * fresh backend reads it back and computes the same bits; a file naming an algorithm this cuDNN
 * does not have is ignored (asked again, same bits) and replaced. */
static void test_conv_algo_cache(void **state) {
    GPU_OR_SKIP();
    const char *dnn_env = getenv("KILN_CUDNN");
    if (dnn_env && (strcmp(dnn_env, "0") == 0 || strcmp(dnn_env, "find") == 0)) skip();
    char root[64], dir[128];
    cache_begin("conv-cache", root);
    snprintf(dir, sizeof dir, "%s/cudnn-conv", root);
    /* 1024 positions: cuDNN's (smaller images may take im2col) */
    const struct ocase k = {"conv cache [2,32,32,64] 3x3", b_conv_nhwc, 3, {IN(2, 32, 32, 64), IN(64, 3, 3, 64), IN(64)},
                            -1, 1, {1, 1}, {0}};
    float *host[3];
    rand_inputs(&k, host);
    int64_t n1 = 0, n2 = 0;
    float *made = run_fresh(&k, (void *const *)host, &n1);
    char names[8][600];
    int files = kept_files(dir, ".txt", names);
    printf("  %d kept algorithm(s) in %s\n", files, dir);
#ifdef KILN_HAVE_CUDNN
    assert_int_equal(files, 1);
    float *read_back = run_fresh(&k, (void *const *)host, &n2);
    assert_int_equal(n2, n1);
    assert_memory_equal(read_back, made, (size_t)n1 * sizeof(float));
    mem_free(read_back);
    FILE *f = fopen(names[0], "r");
    assert_non_null(f);
    char head[600] = "";
    assert_non_null(fgets(head, sizeof head, f));
    fclose(f);
    f = fopen(names[0], "w");
    assert_non_null(f);
    fputs(head, f);
    fputs("algo 999 math 1\n", f); /* no such algorithm */
    fclose(f);
    float *remade = run_fresh(&k, (void *const *)host, &n2);
    assert_memory_equal(remade, made, (size_t)n1 * sizeof(float));
    mem_free(remade);
    f = fopen(names[0], "r");
    assert_non_null(f);
    char line[600] = "";
    assert_non_null(fgets(line, sizeof line, f));
    assert_non_null(fgets(line, sizeof line, f));
    fclose(f);
    assert_null(strstr(line, "999")); /* replaced by the heuristics' answer */
#else
    assert_int_equal(files, 0);
#endif
    mem_free(made);
    for (int i = 0; i < 3; i++) mem_free(host[i]);
    cache_end(root);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_elementwise),   cmocka_unit_test(test_linear),
        cmocka_unit_test(test_conv2d),        cmocka_unit_test(test_conv2d_nhwc),
        cmocka_unit_test(test_norms),         cmocka_unit_test(test_norms_nhwc),
        cmocka_unit_test(test_attention),     cmocka_unit_test(test_attention_flash),
        cmocka_unit_test(test_attention_flash_sd), cmocka_unit_test(test_layout),
        cmocka_unit_test(test_layout_nhwc),
        cmocka_unit_test(test_sd_scale),      cmocka_unit_test(test_cast),
        cmocka_unit_test(test_get_rows_bad_id), cmocka_unit_test(test_device_errors),
        cmocka_unit_test(test_attention_plan_cache), cmocka_unit_test(test_conv_algo_cache),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
