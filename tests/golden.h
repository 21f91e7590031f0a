/* tests/golden.h -- helpers shared by the tests that compare kiln with the PyTorch reference
 * (the .safetensors files of tests/data/ref/, made by tests/ref/): reading a golden tensor, the relative
 * error, a checked comparison, and the tiny checkpoint the goldens were computed from.
 * Include after <cmocka.h>. Everything returned by golden_read is freed with mem_free. */
#ifndef KILN_TESTS_GOLDEN_H
#define KILN_TESTS_GOLDEN_H

#include "base/mem.h"
#include "model/ckpt_gen.h"
#include "model/safetensors.h"
#include "model/tokenizer.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Max |a - b| / max |b| over n values; a NaN in a makes it NaN (and every check fail). */
static inline double golden_rel_err(const float *a, const float *b, size_t n) {
    double m = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m)) m = d;
        if (fabs(b[i]) > r) r = fabs(b[i]);
    }
    return r > 0 ? m / r : m;
}

/* The golden tensor `name` as floats (I32 tensors are copied as their raw 4-byte values). */
static inline float *golden_read(const struct ckpt *g, const char *name, size_t *n) {
    const struct ckpt_tensor *t = ckpt_find(g, name);
    if (!t) fail_msg("golden file lacks %s", name);
    *n = (size_t)ckpt_tensor_numel(t);
    float *v = mem_alloc(*n * sizeof(float));
    struct err err = {0};
    if (t->dtype == DTYPE_I32) {
        memcpy(v, t->data, *n * 4);
    } else if (ckpt_tensor_read_f32(t, v, &err)) {
        fail_msg("%s", err.msg);
    }
    return v;
}

/* Prints the error and fails the test when it is above tol. */
static inline void golden_check(const char *what, const float *got, const float *want, size_t n, double tol) {
    double e = golden_rel_err(got, want, n);
    printf("  %-22s rel err %.3g (tolerance %.0e)\n", what, e, tol);
    if (!(e <= tol)) fail_msg("%s: relative error %g above %g", what, e, tol);
}

/* Writes the checkpoint `kiln ckpt --tiny --seed 7` writes (the goldens' input) to path. */
static inline int golden_tiny_ckpt(const char *path, struct err *err) {
    struct sd_config cfg;
    sd_config_tiny(&cfg, tokenizer_tiny_vocab_size());
    return ckpt_gen_write(path, &cfg, 7, err);
}

#endif
