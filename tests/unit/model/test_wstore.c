/* tests/unit/model/test_wstore.c -- the weight store (model/wstore.c) and one host copy per model:
 * images are filled once and shared, a failed fill is retried by the next caller, concurrent
 * callers wait for one fill, sizes must agree; several CPU devices loading one checkpoint share
 * one image per network (same weight pointers, no second fill, outputs identical to a private
 * load); a changed file is a new image; fp16/bf16 storage holds the correctly rounded values;
 * device copies are borrowed by other devices only and outlive their borrowers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "golden.h"

#include "base/mem.h"
#include "base/status.h"
#include "model/sd.h"
#include "model/wstore.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ===== The store alone ===== */

struct filler {
    int calls;      /* how many fills ran */
    int fail_first; /* fail this many fills first */
    int sleep_ms;   /* each fill takes this long */
    unsigned char byte;
};

static int fill_bytes(void *user, void *buf, size_t size, struct err *err) {
    struct filler *f = user;
    __atomic_add_fetch(&f->calls, 1, __ATOMIC_SEQ_CST);
    if (f->sleep_ms) nanosleep(&(struct timespec){0, f->sleep_ms * 1000000L}, NULL);
    if (__atomic_sub_fetch(&f->fail_first, 1, __ATOMIC_SEQ_CST) >= 0)
        return err_set(err, STATUS_ERR_IO, "test fill fails");
    memset(buf, f->byte, size);
    return 0;
}

static void test_acquire_release(void **state) {
    (void)state;
    struct wstore *s = wstore_global();
    struct wstore_stats st0, st;
    wstore_stats(s, &st0);
    struct filler f = {.byte = 0xab};
    struct err err = {0};
    struct wstore_image *a, *b;
    assert_int_equal(wstore_acquire(s, "test|a", 1000, fill_bytes, &f, NULL, &a, &err), 0);
    assert_int_equal(wstore_acquire(s, "test|a", 1000, fill_bytes, &f, NULL, &b, &err), 0);
    assert_ptr_equal(a, b);
    assert_int_equal(f.calls, 1);
    assert_int_equal(((unsigned char *)a->buf)[999], 0xab);
    wstore_stats(s, &st);
    assert_int_equal(st.images, st0.images + 1);
    assert_int_equal(st.bytes, st0.bytes + 1000);
    assert_int_equal(st.hits, st0.hits + 1);
    /* another size under the same key is refused */
    struct wstore_image *c;
    assert_int_equal(wstore_acquire(s, "test|a", 999, fill_bytes, &f, NULL, &c, &err), STATUS_ERR_INTERNAL);
    assert_null(c);
    assert_non_null(strstr(err.msg, "test|a"));
    wstore_release(s, a);
    wstore_stats(s, &st);
    assert_int_equal(st.images, st0.images + 1); /* b still holds it */
    wstore_release(s, b);
    wstore_stats(s, &st);
    assert_int_equal(st.images, st0.images);
    assert_int_equal(st.bytes, st0.bytes);
    /* gone: the next acquisition fills again */
    assert_int_equal(wstore_acquire(s, "test|a", 1000, fill_bytes, &f, NULL, &a, &err), 0);
    assert_int_equal(f.calls, 2);
    wstore_release(s, a);
    wstore_release(s, NULL);
}

static void test_fill_failure(void **state) {
    (void)state;
    struct wstore *s = wstore_global();
    struct filler f = {.fail_first = 1};
    struct err err = {0};
    struct wstore_image *a;
    assert_int_equal(wstore_acquire(s, "test|fail", 64, fill_bytes, &f, NULL, &a, &err), STATUS_ERR_IO);
    assert_null(a);
    assert_non_null(strstr(err.msg, "test fill fails"));
    assert_int_equal(wstore_acquire(s, "test|fail", 64, fill_bytes, &f, NULL, &a, &err), 0);
    assert_int_equal(f.calls, 2);
    wstore_release(s, a);
}

struct racer {
    struct filler *f;
    struct wstore_image *img;
    int rc;
};

static void *race(void *p) {
    struct racer *r = p;
    struct err err = {0};
    r->rc = wstore_acquire(wstore_global(), "test|race", 4096, fill_bytes, r->f, NULL, &r->img, &err);
    return NULL;
}

/* Four devices asking at once: one fill, the others wait for it and share it. */
static void test_concurrent_fill(void **state) {
    (void)state;
    struct filler f = {.sleep_ms = 100, .byte = 7};
    struct racer r[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        r[i] = (struct racer){.f = &f};
        assert_int_equal(pthread_create(&t[i], NULL, race, &r[i]), 0);
    }
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    assert_int_equal(f.calls, 1);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(r[i].rc, 0);
        assert_ptr_equal(r[i].img, r[0].img);
        assert_int_equal(((unsigned char *)r[i].img->buf)[4095], 7);
    }
    for (int i = 0; i < 4; i++) wstore_release(wstore_global(), r[i].img);
}

/* ===== Models on several devices ===== */

static char path[256];

static int setup(void **state) {
    (void)state;
    struct err err = {0};
    snprintf(path, sizeof path, "/tmp/kiln_test_wstore_%d.safetensors", (int)getpid());
    if (golden_tiny_ckpt(path, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    unlink(path);
    return 0;
}

static float *unet_out(struct sd_model *m, struct backend *be) {
    struct tscratch s;
    struct tctx c;
    tscratch_init(&s, be);
    tctx_init(&c, be, &s);
    float x[2 * 4 * 8 * 8], t[2] = {999, 10}, ctx[2 * 77 * 128];
    for (size_t i = 0; i < sizeof x / sizeof x[0]; i++) x[i] = (float)((i * 37) % 17) / 17.0f - 0.5f;
    for (size_t i = 0; i < sizeof ctx / sizeof ctx[0]; i++) ctx[i] = (float)((i * 13) % 11) / 11.0f - 0.5f;
    float *out = mem_alloc(sizeof x);
    int rc = unet_eval(&c, &m->unet, 2, 8, 8, x, t, ctx, 77, out);
    if (rc) fail_msg("unet_eval: %s", c.err.msg);
    tctx_deinit(&c);
    tscratch_deinit(&s);
    return out;
}

/* Three CPU devices load the same checkpoint: one image per network (three fills), the other
 * two devices fill nothing and compute from the very same memory; a private load agrees bit
 * for bit; everything is freed with the last model. */
static void test_one_copy_for_all_devices(void **state) {
    (void)state;
    struct wstore *s = wstore_global();
    struct wstore_stats st0, st;
    wstore_stats(s, &st0);
    struct backend *be[3];
    struct sd_model *m[3];
    struct err err = {0};
    for (int i = 0; i < 3; i++) {
        be[i] = backend_cpu_new(1);
        struct sd_storage sto = sd_storage_for(be[i], false, s);
        assert_int_equal(sto.unet.dtype, DTYPE_F32); /* the CPU computes in fp32 */
        m[i] = sd_model_load(path, be[i], &sto, &err);
        if (!m[i]) fail_msg("%s", err.msg);
        wstore_stats(s, &st);
        assert_int_equal(st.images, st0.images + 3);
        assert_int_equal(st.fills, st0.fills + 3); /* only the first device read the file */
        assert_int_equal(st.hits, st0.hits + 3 * (uint64_t)i);
    }
    assert_ptr_equal(m[0]->unet.conv_in.w.data, m[2]->unet.conv_in.w.data);
    assert_ptr_equal(m[0]->vae.dec_conv_out.w.data, m[1]->vae.dec_conv_out.w.data);
    assert_ptr_equal(m[0]->clip.token_embedding.data, m[1]->clip.token_embedding.data);
    assert_null(m[1]->unet.weights.buf); /* no private buffer on a host backend */
    uint64_t shared = st.bytes - st0.bytes;
    /* a private load (no store) computes the same thing from its own buffer */
    struct sd_model *priv = sd_model_load(path, be[0], NULL, &err);
    if (!priv) fail_msg("%s", err.msg);
    assert_int_equal(priv->unet.weights.size + priv->vae.weights.size + priv->clip.weights.size, shared);
    float *a = unet_out(m[2], be[2]), *b = unet_out(priv, be[0]);
    assert_memory_equal(a, b, 2 * 4 * 8 * 8 * sizeof(float));
    mem_free(a);
    mem_free(b);
    sd_model_free(priv);
    for (int i = 0; i < 3; i++) {
        sd_model_free(m[i]);
        wstore_stats(s, &st);
        assert_int_equal(st.images, i < 2 ? st0.images + 3 : st0.images);
        backend_free(be[i]);
    }
}

/* A file rewritten in place (new mtime) is another image: nothing stale is shared. */
static void test_changed_file_is_new_image(void **state) {
    (void)state;
    struct wstore *s = wstore_global();
    struct backend *be = backend_cpu_new(1);
    struct sd_storage sto = sd_storage_for(be, false, s);
    struct err err = {0};
    struct sd_model *a = sd_model_load(path, be, &sto, &err);
    if (!a) fail_msg("%s", err.msg);
    struct wstore_stats st0, st;
    wstore_stats(s, &st0);
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.new", path);
    assert_int_equal(golden_tiny_ckpt(tmp, &err), 0);
    assert_int_equal(rename(tmp, path), 0);
    struct sd_model *b = sd_model_load(path, be, &sto, &err);
    if (!b) fail_msg("%s", err.msg);
    wstore_stats(s, &st);
    assert_int_equal(st.fills, st0.fills + 3);
    assert_ptr_not_equal(a->unet.conv_in.w.data, b->unet.conv_in.w.data);
    sd_model_free(a);
    sd_model_free(b);
    backend_free(be);
}

/* fp16 and bf16 storage (a GPU's) hold each weight correctly rounded from the checkpoint. */
static void test_half_storage_values(void **state) {
    (void)state;
    struct ckpt ck;
    struct err err = {0};
    assert_int_equal(ckpt_open(&ck, path, &err), 0);
    struct backend *be = backend_cpu_new(1); /* host buffers: the image is readable in place */
    enum dtype dts[2] = {DTYPE_F16, DTYPE_BF16};
    for (int k = 0; k < 2; k++) {
        struct nn_storage sto = {.dtype = dts[k], .store = wstore_global()};
        struct unet u;
        if (unet_load(&u, &ck, be, &sto, &err)) fail_msg("%s", err.msg);
        assert_int_equal(u.dtype, dts[k]);
        assert_int_equal(u.conv_in.w.dtype, dts[k]);
        const struct ckpt_tensor *t = ckpt_find(&ck, "model.diffusion_model.input_blocks.0.0.weight");
        assert_non_null(t);
        size_t n = (size_t)ckpt_tensor_numel(t);
        float *f = mem_alloc(n * sizeof(float));
        assert_int_equal(ckpt_tensor_read_f32(t, f, &err), 0);
        const uint16_t *h = u.conv_in.w.data;
        for (size_t i = 0; i < n; i++) assert_int_equal(h[i], dts[k] == DTYPE_F16 ? f32_to_f16(f[i]) : f32_to_bf16(f[i]));
        mem_free(f);
        unet_deinit(&u);
    }
    backend_free(be);
    ckpt_close(&ck);
}

/* ===== Device copies ===== */

static bool odd_only(void *user, int device) {
    (*(int *)user)++;
    return device % 2 == 1;
}

struct unpublisher {
    struct wstore_image *img;
    atomic_int done;
};

static void *unpublish_run(void *p) {
    struct unpublisher *u = p;
    wstore_unpublish(wstore_global(), u->img, 3);
    atomic_store(&u->done, 1);
    return NULL;
}

/* Published copies are borrowed by other devices only, through the filter; unpublishing waits for
 * the borrower to return the copy; then nothing is listed. */
static void test_device_copies(void **state) {
    struct wstore *s = wstore_global();
    (void)state;
    struct filler f = {0};
    struct err err = {0};
    struct wstore_image *img;
    assert_int_equal(wstore_acquire(s, "test|copies", 256, fill_bytes, &f, NULL, &img, &err), 0);
    char dev0[1], dev3[1];
    int from = -1, asked = 0;
    const void *ptr = NULL;
    assert_false(wstore_borrow(s, img, 5, NULL, NULL, &from, &ptr)); /* nothing listed yet */
    assert_true(wstore_publish(s, img, 0, dev0));
    assert_false(wstore_publish(s, img, 0, dev0)); /* once per device */
    assert_false(wstore_borrow(s, img, 0, NULL, NULL, &from, &ptr)); /* never its own copy */
    assert_false(wstore_borrow(s, img, 5, odd_only, &asked, &from, &ptr)); /* device 0 is not usable */
    assert_int_equal(asked, 1);
    assert_true(wstore_publish(s, img, 3, dev3));
    assert_true(wstore_borrow(s, img, 5, odd_only, &asked, &from, &ptr));
    assert_int_equal(from, 3);
    assert_ptr_equal(ptr, dev3);
    /* the owner of device 3's copy unpublishes while it is borrowed: it waits for the return */
    struct unpublisher u = {.img = img};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, unpublish_run, &u), 0);
    usleep(100 * 1000);
    assert_int_equal(atomic_load(&u.done), 0);
    wstore_return(s, img, 3);
    pthread_join(t, NULL);
    assert_int_equal(atomic_load(&u.done), 1);
    assert_false(wstore_borrow(s, img, 5, odd_only, &asked, &from, &ptr));
    assert_true(wstore_borrow(s, img, 5, NULL, NULL, &from, &ptr));
    assert_int_equal(from, 0);
    wstore_return(s, img, 0);
    wstore_unpublish(s, img, 0);
    wstore_unpublish(s, img, 7); /* not listed: a no-op */
    assert_false(wstore_borrow(s, img, 5, NULL, NULL, &from, &ptr));
    wstore_release(s, img);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_acquire_release),
        cmocka_unit_test(test_fill_failure),
        cmocka_unit_test(test_concurrent_fill),
        cmocka_unit_test(test_one_copy_for_all_devices),
        cmocka_unit_test(test_changed_file_is_new_image),
        cmocka_unit_test(test_half_storage_values),
        cmocka_unit_test(test_device_copies),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
