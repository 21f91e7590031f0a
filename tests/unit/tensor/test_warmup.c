/* tests/unit/tensor/test_warmup.c -- backend_warmup (tensor/warmup.c) on the CPU backend and on
 * a spy backend that wraps it: every op kind is sent to the backend in F32 (conv2d 3x3 and 1x1,
 * group_norm with SiLU, attention causal and not, ...); on the CPU backend, which computes F32
 * only, no F16 op node is sent; a backend that claims F16 gets every op kind in F16 too; a
 * failing backend's error comes back with the dtype named; the warm-up's memory is given back.
 * Threads: the test thread. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "base/mem.h"
#include "base/status.h"
#include "tensor/backend.h"
#include "tensor/tensor.h"
#include "tensor/warmup.h"

#include <string.h>

/* ===== Spy backend: forwards to the CPU backend and records what it is sent ===== */

#define SPY_MAX 512

struct spy_node {
    enum op op;
    enum dtype dtype;                    /* output dtype */
    enum dtype src0;                     /* dtype of src[0] */
    int32_t ip1;                         /* ip[1]: SiLU flag of GROUP_NORM, causal of ATTENTION */
    int64_t kernel;                      /* CONV2D: kernel height */
};

struct spy {
    struct backend *cpu;                 /* where the work really goes */
    bool claim_all;                      /* op_supported says yes to everything; nothing computed */
    int fail_status;                     /* graph_run fails with it when non-zero */
    struct spy_node nodes[SPY_MAX];
    int n;
    int live_bufs;                       /* buf_alloc - buf_free */
};

static int spy_buf_alloc(void *ctx, size_t size, void **out) {
    struct spy *s = ctx;
    int rc = backend_buf_alloc(s->cpu, size, out);
    if (!rc) s->live_bufs++;
    return rc;
}

static void spy_buf_free(void *ctx, void *buf) {
    struct spy *s = ctx;
    s->live_bufs--;
    backend_buf_free(s->cpu, buf);
}

static int spy_set(void *ctx, struct tensor *t, const void *host, size_t off, size_t size) {
    return backend_tensor_set(((struct spy *)ctx)->cpu, t, host, off, size);
}

static int spy_get(void *ctx, const struct tensor *t, void *host, size_t off, size_t size) {
    return backend_tensor_get(((struct spy *)ctx)->cpu, t, host, off, size);
}

static bool spy_supported(void *ctx, const struct tensor *node) {
    struct spy *s = ctx;
    return s->claim_all || backend_op_supported(s->cpu, node);
}

static int spy_run(void *ctx, struct tensor *const *nodes, int n, struct err *err) {
    struct spy *s = ctx;
    for (int i = 0; i < n && s->n < SPY_MAX; i++) {
        const struct tensor *t = nodes[i];
        s->nodes[s->n++] = (struct spy_node){.op = t->op, .dtype = t->dtype,
                                             .src0 = t->src[0] ? t->src[0]->dtype : DTYPE_COUNT, .ip1 = t->ip[1],
                                             .kernel = t->op == OP_CONV2D ? t->src[1]->shape[2] : 0};
    }
    if (s->fail_status) return err_set(err, s->fail_status, "spy refuses %d nodes", n);
    if (s->claim_all) return 0;
    return backend_graph_run(s->cpu, nodes, n, err);
}

static int spy_sync(void *ctx) { return backend_sync(((struct spy *)ctx)->cpu); }

static const struct backend_i SPY_I = {
    .api_version = BACKEND_API_VERSION,
    .name = "spy",
    .buf_alloc = spy_buf_alloc,
    .buf_free = spy_buf_free,
    .tensor_set = spy_set,
    .tensor_get = spy_get,
    .op_supported = spy_supported,
    .graph_run = spy_run,
    .sync = spy_sync,
};

/* A spy over a 1-thread CPU backend, as the backend *be (claim_all: it says it supports every
 * op and runs nothing). */
static struct spy *spy_new(bool claim_all, struct backend *be) {
    struct spy *s = mem_calloc(1, sizeof *s);
    s->cpu = backend_cpu_new(1);
    s->claim_all = claim_all;
    *be = (struct backend){.iface = &SPY_I, .ctx = s};
    return s;
}

static void spy_free(struct spy *s) {
    backend_free(s->cpu);
    mem_free(s);
}

/* ===== What was sent ===== */

/* How many nodes of op in dtype dt were sent (ip1 >= 0: with that ip[1]; kernel > 0: that conv
 * kernel). */
static int count(const struct spy *s, enum op op, enum dtype dt, int ip1, int64_t kernel) {
    int n = 0;
    for (int i = 0; i < s->n; i++) {
        const struct spy_node *x = &s->nodes[i];
        if (x->op != op || x->dtype != dt) continue;
        if (ip1 >= 0 && x->ip1 != ip1) continue;
        if (kernel > 0 && x->kernel != kernel) continue;
        n++;
    }
    return n;
}

/* Every op kind of warmup.h's list, in dtype dt. */
static void expect_all_kinds(const struct spy *s, enum dtype dt) {
    const enum op plain[] = {OP_LINEAR, OP_LAYER_NORM, OP_GEGLU,  OP_GELU,         OP_QUICK_GELU, OP_ADD,
                             OP_MUL,    OP_SCALE,      OP_TRANSPOSE, OP_CONCAT, OP_UPSAMPLE_NEAREST, OP_GET_ROWS};
    for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++)
        if (count(s, plain[i], dt, -1, 0) < 1) fail_msg("no %s node in %s", op_name(plain[i]), dtype_name(dt));
    assert_true(count(s, OP_CONV2D, dt, -1, 3) >= 1);
    assert_true(count(s, OP_CONV2D, dt, -1, 1) >= 1);
    assert_true(count(s, OP_GROUP_NORM, dt, 1, 0) >= 1); /* with SiLU */
    assert_true(count(s, OP_ATTENTION, dt, 0, 0) >= 1);  /* not causal */
    assert_true(count(s, OP_ATTENTION, dt, 1, 0) >= 1);  /* causal */
}

/* ===== Tests ===== */

static const struct warmup_pass ALL[3] = {{DTYPE_F32, true}, {DTYPE_F16, true}, {DTYPE_BF16, true}};

static void test_cpu_backend_runs(void **state) {
    (void)state;
    struct backend *cpu = backend_cpu_new(1);
    assert_non_null(cpu);
    struct err err = {0};
    const struct warmup_pass f32[1] = {{DTYPE_F32, true}};
    assert_int_equal(backend_warmup(cpu, f32, 1, &err), 0);
    assert_int_equal(err.code, 0);
    assert_int_equal(backend_warmup(cpu, f32, 1, &err), 0); /* again: nothing left over from the first */
    backend_free(cpu);
}

static void test_cpu_gets_f32_only(void **state) {
    (void)state;
    struct backend be;
    struct spy *s = spy_new(false, &be);
    assert_non_null(s->cpu);
    struct err err = {0};
    assert_int_equal(backend_warmup(&be, ALL, 3, &err), 0);
    expect_all_kinds(s, DTYPE_F32);
    assert_true(count(s, OP_CAST, DTYPE_F16, -1, 0) >= 1); /* F32 -> F16, which the CPU casts */
    for (int i = 0; i < s->n; i++) { /* the CPU computes F32 only: no F16 op besides casts */
        const struct spy_node *x = &s->nodes[i];
        if (x->op == OP_CAST) continue;
        if (x->dtype != DTYPE_F32)
            fail_msg("%s on %s sent to the CPU", op_name(x->op), dtype_name(x->dtype));
        if (x->src0 != DTYPE_F32) fail_msg("%s reading %s sent to the CPU", op_name(x->op), dtype_name(x->src0));
    }
    assert_int_equal(s->live_bufs, 0); /* the warm-up's scratch was given back */
    spy_free(s);
}

static void test_f16_when_supported(void **state) {
    (void)state;
    struct backend be;
    struct spy *s = spy_new(true, &be);
    struct err err = {0};
    assert_int_equal(backend_warmup(&be, ALL, 3, &err), 0);
    expect_all_kinds(s, DTYPE_F32);
    expect_all_kinds(s, DTYPE_F16);
    expect_all_kinds(s, DTYPE_BF16);
    assert_true(count(s, OP_CAST, DTYPE_F32, -1, 0) >= 1); /* F16 -> F32 at the end of the F16 pass */
    assert_int_equal(s->live_bufs, 0);
    spy_free(s);
}

/* A GPU engine's passes (a text encoder in F32, token ops only; F16 UNet and BF16 VAE with
 * image ops): every kind in the 16-bit dtypes, CLIP's kinds in F32 and no F32 image op. */
static void test_only_the_given_passes(void **state) {
    (void)state;
    struct backend be;
    struct spy *s = spy_new(true, &be);
    struct err err = {0};
    const struct warmup_pass gpu[3] = {{DTYPE_F32, false}, {DTYPE_F16, true}, {DTYPE_BF16, true}};
    assert_int_equal(backend_warmup(&be, gpu, 3, &err), 0);
    expect_all_kinds(s, DTYPE_F16);
    expect_all_kinds(s, DTYPE_BF16);
    const enum op clip[] = {OP_LINEAR, OP_LAYER_NORM, OP_QUICK_GELU, OP_ADD, OP_GET_ROWS};
    for (size_t i = 0; i < sizeof clip / sizeof clip[0]; i++)
        if (count(s, clip[i], DTYPE_F32, -1, 0) < 1) fail_msg("no F32 %s node", op_name(clip[i]));
    assert_true(count(s, OP_ATTENTION, DTYPE_F32, 1, 0) >= 1); /* CLIP's causal attention */
    const enum op images[] = {OP_CONV2D, OP_GROUP_NORM, OP_UPSAMPLE_NEAREST, OP_CONCAT};
    for (size_t i = 0; i < sizeof images / sizeof images[0]; i++)
        if (count(s, images[i], DTYPE_F32, -1, 0) != 0) fail_msg("F32 %s in a token-only pass", op_name(images[i]));
    assert_int_equal(s->live_bufs, 0);
    spy_free(s);
}

static void test_failure_reported(void **state) {
    (void)state;
    struct backend be;
    struct spy *s = spy_new(false, &be);
    s->fail_status = STATUS_ERR_OOM_DEVICE;
    struct err err = {0};
    assert_int_equal(backend_warmup(&be, ALL, 3, &err), STATUS_ERR_OOM_DEVICE);
    assert_int_equal(err.code, STATUS_ERR_OOM_DEVICE);
    assert_non_null(strstr(err.msg, "warm-up on spy in F32"));
    assert_non_null(strstr(err.msg, "spy refuses"));
    assert_int_equal(s->live_bufs, 0); /* freed on failure too */
    spy_free(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cpu_backend_runs),
        cmocka_unit_test(test_cpu_gets_f32_only),
        cmocka_unit_test(test_f16_when_supported),
        cmocka_unit_test(test_only_the_given_passes),
        cmocka_unit_test(test_failure_reported),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
