/* tests/unit/tensor/test_graph.c -- the graph recorder and memory planner of tensor/tensor.c,
 * run on the CPU backend.
 * Checks: chains and diamonds with reshapes compute the right values; scratch memory is reused
 * (a long chain needs far less than the sum of its tensors); outputs and inputs are never
 * overwritten by later nodes; reshape aliases keep their owner alive; a planned graph can run
 * again with new inputs, and a hoisted plan keeps what depends on weights only; errors are sticky (NULL inputs, shape errors in op_*) with messages.
 * References are computed here in double from the same host inputs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "base/mem.h"
#include "base/status.h"
#include "tensor/backend.h"
#include "tensor/tensor.h"

#include <math.h>
#include <string.h>

/* ===== Harness ===== */

struct fx {
    struct backend *be;
    struct tscratch scratch;
    struct tctx c;
};

static int setup(void **state) {
    struct fx *f = mem_calloc(1, sizeof *f);
    f->be = backend_cpu_new(0);
    if (!f->be) return -1;
    tscratch_init(&f->scratch, f->be);
    tctx_init(&f->c, f->be, &f->scratch);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    struct fx *f = *state;
    tctx_deinit(&f->c);
    tscratch_deinit(&f->scratch);
    backend_free(f->be);
    mem_free(f);
    return 0;
}

#define SH(...) (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__}

static void fill(float *x, int n, int seed) {
    uint32_t s = 2463534242u + (uint32_t)seed * 7919u;
    for (int i = 0; i < n; i++) { /* xorshift32 -> [-1, 1) */
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        x[i] = (float)((double)s / 2147483648.0 - 1.0);
    }
}

static void expect_close(const float *got, const double *ref, int n, double tol) {
    for (int i = 0; i < n; i++) {
        if (!(fabs(got[i] - ref[i]) <= tol * (1 + fabs(ref[i])))) {
            print_error("element %d: got %.9g, ref %.9g\n", i, got[i], ref[i]);
            fail();
        }
    }
}

static double silu(double x) { return x / (1 + exp(-x)); }

static size_t aligned(size_t n) { return (n + 255) & ~(size_t)255; } /* the planner's alignment */

/* ===== Values ===== */

/* x -> 40 nodes alternating scale and silu: right values, and about two live buffers. */
static void test_chain(void **state) {
    struct fx *f = *state;
    struct tctx *c = &f->c;
    enum { N = 3000, DEPTH = 40 };
    float x[N], got[N];
    double ref[N];
    fill(x, N, 1);
    struct tensor *in = tensor_input(c, DTYPE_F32, SH(3, 1000));
    struct tensor *t = in;
    for (int i = 0; i < DEPTH; i++) t = i % 2 ? op_silu(c, t) : op_scale(c, t, 1.5f, 0.25f);
    assert_int_equal(tctx_plan(c, &t, 1), 0);
    assert_int_equal(tctx_set(c, in, x), 0);
    assert_int_equal(tctx_run(c), 0);
    assert_int_equal(tctx_get(c, t, got), 0);
    for (int j = 0; j < N; j++) {
        double v = x[j];
        for (int i = 0; i < DEPTH; i++) v = i % 2 ? silu(v) : v * 1.5f + 0.25f;
        ref[j] = v;
    }
    expect_close(got, ref, N, 1e-5);
    /* 41 tensors of 12 KB each; a node and its source are alive together, nothing more */
    size_t one = aligned(N * sizeof(float));
    assert_true(f->scratch.peak < (size_t)(DEPTH + 1) * one);
    assert_true(f->scratch.peak <= 3 * one);
}

/* Two branches from one input meet again, through reshapes of different shapes. */
static void test_diamond_with_reshapes(void **state) {
    struct fx *f = *state;
    struct tctx *c = &f->c;
    float x[24], w[4], got[24];
    double ref[24];
    fill(x, 24, 2);
    fill(w, 4, 3);
    struct tensor *in = tensor_input(c, DTYPE_F32, SH(2, 3, 4));
    struct tensor *tw = tensor_weight(c, DTYPE_F32, SH(4), w); /* host memory on the CPU backend */
    struct tensor *a = op_scale(c, in, 2.0f, -1.0f);            /* [2, 3, 4] */
    struct tensor *ra = op_reshape(c, a, SH(6, 4));             /* alias of a */
    struct tensor *b = op_silu(c, in);                          /* [2, 3, 4] */
    struct tensor *rb = op_reshape(c, op_reshape(c, b, SH(24)), SH(6, 4)); /* alias of an alias */
    struct tensor *sum = op_add(c, ra, rb);                     /* [6, 4] */
    struct tensor *prod = op_mul(c, sum, tw);                   /* bias-style broadcast of a weight */
    struct tensor *out = op_add(c, op_reshape(c, prod, SH(2, 3, 4)), a); /* reads a again, late */
    assert_int_equal(c->rc, 0);
    assert_int_equal(tctx_plan(c, &out, 1), 0);
    assert_int_equal(tctx_set(c, in, x), 0);
    assert_int_equal(tctx_run(c), 0);
    assert_int_equal(tctx_get(c, out, got), 0);
    for (int i = 0; i < 24; i++) {
        double av = x[i] * 2.0f - 1.0f;
        ref[i] = (av + silu(x[i])) * w[i % 4] + av;
    }
    expect_close(got, ref, 24, 1e-6);
    /* a reshape output reads its owner's memory */
    assert_ptr_equal(rb->data, b->data);
    assert_ptr_equal(ra->data, a->data);
}

/* An alias read at the very end keeps its owner alive across a long chain that would reuse
 * the owner's memory otherwise. */
static void test_reshape_keeps_owner_alive(void **state) {
    struct fx *f = *state;
    struct tctx *c = &f->c;
    enum { N = 512 };
    float x[N], got[N];
    double ref[N];
    fill(x, N, 4);
    struct tensor *in = tensor_input(c, DTYPE_F32, SH(N));
    struct tensor *a = op_silu(c, in);
    struct tensor *r = op_reshape(c, a, SH(8, 64));
    struct tensor *t = op_reshape(c, in, SH(8, 64));
    for (int i = 0; i < 12; i++) t = op_scale(c, t, 0.5f, 1.0f);
    struct tensor *out = op_add(c, r, t); /* r first: a is computed before the chain */
    assert_int_equal(tctx_plan(c, &out, 1), 0);
    assert_true(a->id < t->id); /* the order this test is about */
    assert_int_equal(tctx_set(c, in, x), 0);
    assert_int_equal(tctx_run(c), 0);
    assert_int_equal(tctx_get(c, out, got), 0);
    for (int j = 0; j < N; j++) {
        double v = x[j];
        for (int i = 0; i < 12; i++) v = v * 0.5f + 1.0f;
        ref[j] = silu(x[j]) + v;
    }
    expect_close(got, ref, N, 1e-6);
}

/* Several outputs: an early one survives the rest of the graph. */
static void test_outputs_survive(void **state) {
    struct fx *f = *state;
    struct tctx *c = &f->c;
    enum { N = 1000 };
    float x[N], got_early[N], got_late[N];
    double ref_early[N], ref_late[N];
    fill(x, N, 5);
    struct tensor *in = tensor_input(c, DTYPE_F32, SH(N));
    struct tensor *early = op_silu(c, in);
    struct tensor *t = early;
    for (int i = 0; i < 20; i++) t = op_scale(c, t, -0.9f, 0.1f);
    struct tensor *outs[2] = {t, early};
    assert_int_equal(tctx_plan(c, outs, 2), 0);
    assert_true(early->flags & TENSOR_FLAG_OUTPUT);
    assert_int_equal(tctx_set(c, in, x), 0);
    assert_int_equal(tctx_run(c), 0);
    assert_int_equal(tctx_get(c, early, got_early), 0);
    assert_int_equal(tctx_get(c, t, got_late), 0);
    for (int j = 0; j < N; j++) {
        ref_early[j] = silu(x[j]);
        double v = ref_early[j];
        for (int i = 0; i < 20; i++) v = v * -0.9f + 0.1f;
        ref_late[j] = v;
    }
    expect_close(got_early, ref_early, N, 1e-6);
    expect_close(got_late, ref_late, N, 1e-5);
}

/* An input placed late in the depth-first order must not share memory with nodes that run
 * before its position: it is written before the whole graph runs. */
static void test_late_input_not_clobbered(void **state) {
    struct fx *f = *state;
    struct tctx *c = &f->c;
    enum { N = 256 };
    float x1[N], x2[N], got[N];
    double ref[N];
    fill(x1, N, 6);
    fill(x2, N, 7);
    struct tensor *in1 = tensor_input(c, DTYPE_F32, SH(N));
    struct tensor *in2 = tensor_input(c, DTYPE_F32, SH(N));
    struct tensor *a = op_silu(c, in1);
    struct tensor *b = op_scale(c, a, 2.0f, 0.0f);
    struct tensor *d = op_scale(c, b, 1.0f, 3.0f);
    struct tensor *out = op_add(c, d, in2); /* in2 comes after a, b, d in the order */
    assert_int_equal(tctx_plan(c, &out, 1), 0);
    assert_true(in2->id > a->id);
    assert_int_equal(tctx_set(c, in1, x1), 0);
    assert_int_equal(tctx_set(c, in2, x2), 0);
    assert_int_equal(tctx_run(c), 0);
    assert_int_equal(tctx_get(c, out, got), 0);
    for (int j = 0; j < N; j++) ref[j] = silu(x1[j]) * 2.0f + 3.0f + x2[j];
    expect_close(got, ref, N, 1e-6);
}

/* A planned graph runs again with new inputs; after tctx_reset a smaller graph reuses the
 * scratch without growing it. */
static void test_rerun_and_reset(void **state) {
    struct fx *f = *state;
    struct tctx *c = &f->c;
    enum { N = 4096 };
    static float x[N], got[N];
    static double ref[N];
    struct tensor *in = tensor_input(c, DTYPE_F32, SH(N));
    struct tensor *out = op_gelu(c, op_scale(c, in, 3.0f, 0.0f));
    assert_int_equal(tctx_plan(c, &out, 1), 0);
    for (int round = 0; round < 2; round++) {
        fill(x, N, 10 + round);
        assert_int_equal(tctx_set(c, in, x), 0);
        assert_int_equal(tctx_run(c), 0);
        assert_int_equal(tctx_get(c, out, got), 0);
        for (int j = 0; j < N; j++) {
            double v = x[j] * 3.0f;
            ref[j] = 0.5 * v * erfc(-v / sqrt(2.0));
        }
        expect_close(got, ref, N, 1e-5);
    }
    void *buf = f->scratch.buf;
    size_t size = f->scratch.size;
    tctx_reset(c);
    in = tensor_input(c, DTYPE_F32, SH(N / 2));
    out = op_silu(c, in);
    assert_int_equal(tctx_plan(c, &out, 1), 0);
    assert_ptr_equal(f->scratch.buf, buf);
    assert_int_equal(f->scratch.size, size);
    fill(x, N / 2, 12);
    assert_int_equal(tctx_set(c, in, x), 0);
    assert_int_equal(tctx_run(c), 0);
    assert_int_equal(tctx_get(c, out, got), 0);
    for (int j = 0; j < N / 2; j++) ref[j] = silu(x[j]);
    expect_close(got, ref, N / 2, 1e-6);
}

/* tctx_memo_*: the planned graph is found again by its key until a reset, a failure, a new plan
 * or a moved scratch; its tensors come back and run again with new inputs. */
static void test_memo(void **state) {
    struct fx *f = *state;
    struct tctx *c = &f->c;
    enum { N = 256 };
    static float x[N], got[N];
    static double ref[N];
    const uint64_t key[TCTX_MEMO_KEY] = {1, 2, 3, 4, 5, 6, 7, 8};
    uint64_t other[TCTX_MEMO_KEY];
    memcpy(other, key, sizeof other);
    other[7] = 9;
    struct tensor *io[2] = {0};
    assert_false(tctx_memo_get(c, key, io, 2)); /* nothing memoised yet */
    io[0] = tensor_input(c, DTYPE_F32, SH(N));
    io[1] = op_silu(c, io[0]);
    assert_int_equal(tctx_plan(c, &io[1], 1), 0);
    tctx_memo_set(c, key, io, 2);
    struct tensor *back[2] = {0};
    assert_false(tctx_memo_get(c, other, back, 2));
    for (int round = 0; round < 3; round++) {
        assert_true(tctx_memo_get(c, key, back, 2));
        assert_ptr_equal(back[0], io[0]);
        assert_ptr_equal(back[1], io[1]);
        fill(x, N, 40 + round);
        assert_int_equal(tctx_set(c, back[0], x), 0);
        assert_int_equal(tctx_run(c), 0);
        assert_int_equal(tctx_get(c, back[1], got), 0);
        for (int j = 0; j < N; j++) ref[j] = silu(x[j]);
        expect_close(got, ref, N, 1e-6);
    }
    /* a moved (regrown) scratch: the plan's addresses are stale */
    void *buf = f->scratch.buf;
    size_t size = f->scratch.size;
    f->scratch.size = size + 1;
    assert_false(tctx_memo_get(c, key, back, 2));
    f->scratch.size = size;
    assert_true(tctx_memo_get(c, key, back, 2));
    assert_ptr_equal(f->scratch.buf, buf);
    /* a new plan of the same context forgets it, and so does a reset */
    struct tensor *more = op_silu(c, io[1]);
    assert_int_equal(tctx_plan(c, &more, 1), 0);
    assert_false(tctx_memo_get(c, key, back, 2));
    tctx_memo_set(c, key, io, 2);
    assert_true(tctx_memo_get(c, key, back, 2));
    tctx_reset(c);
    assert_false(tctx_memo_get(c, key, back, 2));
    /* a failed context is never reused */
    io[0] = tensor_input(c, DTYPE_F32, SH(N));
    io[1] = op_silu(c, io[0]);
    assert_int_equal(tctx_plan(c, &io[1], 1), 0);
    tctx_memo_set(c, key, io, 2);
    tctx_fail(c, STATUS_ERR_DEVICE, "a device error");
    assert_false(tctx_memo_get(c, key, back, 2));
}

/* tctx_plan_hoisted: nodes made from weights only (silu(w1) * w2) run at the first tctx_run and
 * keep their memory; later runs send only the nodes that depend on the input and give the same
 * values. The input chain's temporaries come first in the graph order, so a kept result placed
 * at its own definition would share their memory (later runs would overwrite it). A plan of
 * another context on the same scratch (which may overwrite anything) makes the next run compute
 * them again. White box: a weight changed between runs (against the contract) shows which runs
 * recomputed them. */
static void test_hoisted(void **state) {
    struct fx *f = *state;
    struct tctx *c = &f->c;
    enum { N = 4096 };
    static float x[N], w1[N], w2[N], got[N];
    static double ref[N];
    fill(w1, N, 21);
    fill(w2, N, 22);
    struct tensor *in = tensor_input(c, DTYPE_F32, SH(N));
    struct tensor *t = op_silu(c, op_silu(c, op_silu(c, in)));
    struct tensor *k = op_mul(c, op_silu(c, tensor_weight(c, DTYPE_F32, SH(N), w1)),
                              tensor_weight(c, DTYPE_F32, SH(N), w2));
    struct tensor *y = op_add(c, t, k);
    assert_int_equal(tctx_plan_hoisted(c, &y, 1), 0);
    assert_true(c->hoisted);
    assert_int_equal(c->n_run, 6);
    assert_int_equal(c->n_run_var, 4);
    assert_int_equal(c->hoisted_bytes, 2 * N * sizeof(float));
    struct tctx other;
    tctx_init(&other, f->be, &f->scratch);
    for (int round = 0; round < 4; round++) {
        if (round == 2) { /* another context writes over the scratch (not growing it: that would
                             move it, and the memo would then not give this plan back) */
            void *buf = f->scratch.buf;
            struct tensor *oi = tensor_input(&other, DTYPE_F32, SH(N));
            struct tensor *oo = op_scale(&other, oi, 0.0f, 1e6f);
            assert_int_equal(tctx_plan(&other, &oo, 1), 0);
            assert_ptr_equal(f->scratch.buf, buf);
            static float junk[N];
            assert_int_equal(tctx_set(&other, oi, junk), 0);
            assert_int_equal(tctx_run(&other), 0);
            tctx_reset(&other);
        }
        fill(x, N, 30 + round);
        assert_int_equal(tctx_set(c, in, x), 0);
        assert_int_equal(tctx_run(c), 0);
        assert_int_equal(tctx_get(c, y, got), 0);
        for (int j = 0; j < N; j++) ref[j] = silu(silu(silu(x[j]))) + silu(w1[j]) * w2[j];
        expect_close(got, ref, N, 1e-6);
    }
    /* white box: w1 changed; the next run keeps the old product, a plan elsewhere makes it anew */
    static float old_w1[N];
    memcpy(old_w1, w1, sizeof w1);
    fill(w1, N, 23);
    assert_int_equal(tctx_set(c, in, x), 0);
    assert_int_equal(tctx_run(c), 0);
    assert_int_equal(tctx_get(c, y, got), 0);
    for (int j = 0; j < N; j++) ref[j] = silu(silu(silu(x[j]))) + silu(old_w1[j]) * w2[j];
    expect_close(got, ref, N, 1e-6);
    struct tensor *oi = tensor_input(&other, DTYPE_F32, SH(4));
    struct tensor *oo = op_silu(&other, oi);
    assert_int_equal(tctx_plan(&other, &oo, 1), 0);
    assert_int_equal(tctx_set(c, in, x), 0);
    assert_int_equal(tctx_run(c), 0);
    assert_int_equal(tctx_get(c, y, got), 0);
    for (int j = 0; j < N; j++) ref[j] = silu(silu(silu(x[j]))) + silu(w1[j]) * w2[j];
    expect_close(got, ref, N, 1e-6);
    tctx_deinit(&other);
    /* a plain plan of the same graph keeps nothing */
    assert_int_equal(tctx_plan(c, &y, 1), 0);
    assert_false(c->hoisted);
    assert_int_equal(c->n_run_var, 0);
}

/* Weights take no scratch memory. */
static void test_weights_not_planned(void **state) {
    struct fx *f = *state;
    struct tctx *c = &f->c;
    static float w[256 * 512];
    float x[512], got[256];
    fill(w, 256 * 512, 13);
    fill(x, 512, 14);
    struct tensor *tw = tensor_weight(c, DTYPE_F32, SH(256, 512), w);
    struct tensor *in = tensor_input(c, DTYPE_F32, SH(1, 512));
    struct tensor *out = op_linear(c, in, tw, NULL);
    assert_int_equal(tctx_plan(c, &out, 1), 0);
    assert_ptr_equal(tw->data, w);
    assert_true(f->scratch.peak < sizeof w); /* input and output only */
    assert_int_equal(tctx_set(c, in, x), 0);
    assert_int_equal(tctx_run(c), 0);
    assert_int_equal(tctx_get(c, out, got), 0);
    for (int i = 0; i < 256; i++) {
        double s = 0;
        for (int k = 0; k < 512; k++) s += (double)x[k] * w[i * 512 + k];
        assert_true(fabs(got[i] - s) <= 1e-4 * (1 + fabs(s)));
    }
}

/* Planning again after adding nodes on top of a planned (and run) graph orders the whole
 * graph anew: the old nodes get memory in the new plan too. */
static void test_replan_extended_graph(void **state) {
    struct fx *f = *state;
    struct tctx *c = &f->c;
    enum { N = 300 };
    float x[N], got[N];
    double ref[N];
    fill(x, N, 15);
    struct tensor *in = tensor_input(c, DTYPE_F32, SH(N));
    struct tensor *a = op_scale(c, in, 2.0f, 1.0f);
    assert_int_equal(tctx_plan(c, &a, 1), 0);
    assert_int_equal(tctx_set(c, in, x), 0);
    assert_int_equal(tctx_run(c), 0);
    struct tensor *b = op_silu(c, op_scale(c, a, 0.5f, 0.0f));
    assert_int_equal(tctx_plan(c, &b, 1), 0);
    assert_int_equal(c->n_nodes, 4); /* in, a, scale, silu */
    assert_int_equal(tctx_set(c, in, x), 0);
    assert_int_equal(tctx_run(c), 0);
    assert_int_equal(tctx_get(c, b, got), 0);
    for (int j = 0; j < N; j++) ref[j] = silu((x[j] * 2.0f + 1.0f) * 0.5f);
    expect_close(got, ref, N, 1e-6);
}

/* ===== Errors ===== */

/* A NULL input fails the op, sticks, and makes the plan fail with the same rc. */
static void test_null_input_is_sticky(void **state) {
    struct fx *f = *state;
    struct tctx *c = &f->c;
    struct tensor *x = tensor_input(c, DTYPE_F32, SH(4));
    assert_non_null(x);
    struct tensor *bad = op_add(c, NULL, x);
    assert_null(bad);
    assert_int_equal(c->rc, STATUS_ERR_INVALID);
    assert_non_null(strstr(c->err.msg, "missing input"));
    /* everything after the failure returns NULL, and the first message stays */
    char first[sizeof c->err.msg];
    strcpy(first, c->err.msg);
    assert_null(op_silu(c, x));
    assert_null(tensor_input(c, DTYPE_F32, SH(4)));
    assert_null(op_linear(c, x, x, x)); /* would be a shape error of its own */
    assert_string_equal(c->err.msg, first);
    struct tensor *y = op_scale(c, bad, 1, 0); /* NULL propagates */
    assert_null(y);
    assert_int_equal(tctx_plan(c, &y, 1), STATUS_ERR_INVALID);
    assert_int_equal(tctx_run(c), STATUS_ERR_INVALID);
    /* reset clears the error */
    tctx_reset(c);
    assert_int_equal(c->rc, 0);
    assert_non_null(op_silu(c, tensor_input(c, DTYPE_F32, SH(4))));
}

/* Planning a NULL output (a failed build) is an error, not a crash. */
static void test_plan_null_output(void **state) {
    struct fx *f = *state;
    struct tensor *none = NULL;
    assert_int_equal(tctx_plan(&f->c, &none, 1), STATUS_ERR_INVALID);
    assert_int_not_equal(f->c.err.msg[0], 0);
}

/* Each shape error in an op_* constructor fails with ERR_INVALID and names the op. */
static void test_shape_errors(void **state) {
    struct fx *f = *state;
    struct tctx *c = &f->c;
    struct {
        const char *expect; /* text the message must contain */
        int which;
    } cases[] = {
        {"linear", 0},  {"does not broadcast", 1}, {"conv2d", 2},   {"concat", 3},    {"reshape", 4},
        {"attention", 5}, {"group_norm", 6},       {"geglu", 7},    {"layer_norm", 8}, {"upsample", 9},
        {"get_rows", 10}, {"conv2d", 11},          {"transpose", 12},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        tctx_reset(c);
        struct tensor *a = tensor_input(c, DTYPE_F32, SH(2, 3, 5));
        struct tensor *b = tensor_input(c, DTYPE_F32, SH(4, 6));
        struct tensor *img = tensor_input(c, DTYPE_F32, SH(1, 3, 8, 8));
        struct tensor *w = tensor_input(c, DTYPE_F32, SH(4, 2, 3, 3));
        struct tensor *r = NULL;
        switch (cases[k].which) {
        case 0: r = op_linear(c, a, b, NULL); break;                     /* K 5 vs 6 */
        case 1: r = op_add(c, a, b); break;                              /* [4,6] vs [2,3,5] */
        case 2: r = op_conv2d(c, img, w, NULL, 1, 1); break;             /* C 3 vs 2 */
        case 3: r = op_concat(c, a, b, 0); break;                        /* ndim differs */
        case 4: r = op_reshape(c, a, SH(7, 4)); break;                   /* 30 vs 28 */
        case 5: r = op_attention(c, a, a, a, 2, false); break;           /* 5 % 2 */
        case 6: r = op_group_norm(c, img, NULL, NULL, 2, 1e-5f, false); break; /* 3 % 2 */
        case 7: r = op_geglu(c, a); break;                               /* odd last dim */
        case 8: r = op_layer_norm(c, a, b, NULL, 1e-5f); break;          /* w numel 24 vs 5 */
        case 9: r = op_upsample_nearest(c, a, 2); break;                 /* not 4-d */
        case 10: r = op_get_rows(c, b, a); break;                        /* ids not I32 */
        case 11: r = op_conv2d(c, img, tensor_input(c, DTYPE_F32, SH(4, 3, 11, 11)), NULL, 1, 0); break; /* empty */
        case 12: r = op_transpose(c, tensor_input(c, DTYPE_F32, SH(5))); break;
        }
        assert_null(r);
        assert_int_equal(c->rc, STATUS_ERR_INVALID);
        if (!strstr(c->err.msg, cases[k].expect)) {
            print_error("case %zu: message \"%s\" lacks \"%s\"\n", k, c->err.msg, cases[k].expect);
            fail();
        }
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_chain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_diamond_with_reshapes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reshape_keeps_owner_alive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outputs_survive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_late_input_not_clobbered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rerun_and_reset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_memo, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hoisted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_weights_not_planned, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replan_extended_graph, setup, teardown),
        cmocka_unit_test_setup_teardown(test_null_input_is_sticky, setup, teardown),
        cmocka_unit_test_setup_teardown(test_plan_null_output, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shape_errors, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
