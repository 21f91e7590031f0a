/* tests/unit/sample/golden.h -- helpers for the sample layer's golden-vector tests: load a
 * JSON file from tests/data/golden, read hex bit patterns and seeds, and a small SHA-256
 * (FIPS 180-4) to hash whole tensors. Header-only (static functions); tests include it.
 * Owns: nothing beyond what each function returns (json_decref the loaded document). */
#ifndef KILN_TEST_SAMPLE_GOLDEN_H
#define KILN_TEST_SAMPLE_GOLDEN_H

#include <jansson.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ===== JSON ===== */

/* Loads tests/data/golden/<name>; aborts the test binary when missing (a broken checkout).
 * Integers are decoded as reals (the files hold seeds up to 2^64-1, beyond jansson's int64):
 * read numbers with golden_int / json_number_value, seeds from their "seed_hex" strings. */
static inline json_t *golden_load(const char *name) {
    char path[1024];
    snprintf(path, sizeof path, "%s/golden/%s", KILN_TEST_DATA, name);
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_DECODE_INT_AS_REAL, &jerr);
    if (!root) {
        fprintf(stderr, "cannot load %s: %s (line %d)\n", path, jerr.text, jerr.line);
        abort();
    }
    return root;
}

static inline int64_t golden_int(const json_t *v) { return (int64_t)json_number_value(v); }

static inline uint64_t golden_hex64(const char *s) { return (uint64_t)strtoull(s, NULL, 16); }
static inline uint32_t golden_hex32(const char *s) { return (uint32_t)strtoul(s, NULL, 16); }

static inline uint32_t golden_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float golden_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Product of the integers in a JSON array (a tensor shape). */
static inline int64_t golden_numel(const json_t *shape) {
    int64_t n = 1;
    size_t i;
    json_t *v;
    json_array_foreach(shape, i, v) n *= golden_int(v);
    return n;
}

/* Distance in units in the last place between two finite floats of the same sign. */
static inline int64_t golden_ulp_diff(float a, float b) {
    int64_t ia = golden_f32_bits(a), ib = golden_f32_bits(b);
    return ia > ib ? ia - ib : ib - ia;
}

/* ===== SHA-256 ===== */

struct golden_sha256 {
    uint32_t h[8];
    uint8_t buf[64];
    uint64_t len; /* bytes hashed so far */
    size_t fill;  /* bytes waiting in buf */
};

static const uint32_t GOLDEN_SHA256_K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static inline uint32_t golden_ror(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static inline void golden_sha256_block(struct golden_sha256 *c, const uint8_t *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = golden_ror(w[i - 15], 7) ^ golden_ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = golden_ror(w[i - 2], 17) ^ golden_ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = c->h[0], b = c->h[1], cc = c->h[2], d = c->h[3];
    uint32_t e = c->h[4], f = c->h[5], g = c->h[6], h = c->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (golden_ror(e, 6) ^ golden_ror(e, 11) ^ golden_ror(e, 25)) + ((e & f) ^ (~e & g)) +
                      GOLDEN_SHA256_K[i] + w[i];
        uint32_t t2 = (golden_ror(a, 2) ^ golden_ror(a, 13) ^ golden_ror(a, 22)) + ((a & b) ^ (a & cc) ^ (b & cc));
        h = g, g = f, f = e, e = d + t1, d = cc, cc = b, b = a, a = t1 + t2;
    }
    c->h[0] += a, c->h[1] += b, c->h[2] += cc, c->h[3] += d;
    c->h[4] += e, c->h[5] += f, c->h[6] += g, c->h[7] += h;
}

static inline void golden_sha256_init(struct golden_sha256 *c) {
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, iv, sizeof iv);
    c->len = 0;
    c->fill = 0;
}

static inline void golden_sha256_update(struct golden_sha256 *c, const void *data, size_t n) {
    const uint8_t *p = data;
    c->len += n;
    while (n > 0) {
        size_t take = 64 - c->fill < n ? 64 - c->fill : n;
        memcpy(c->buf + c->fill, p, take);
        c->fill += take, p += take, n -= take;
        if (c->fill == 64) {
            golden_sha256_block(c, c->buf);
            c->fill = 0;
        }
    }
}

/* Finishes and writes the digest as 64 lowercase hex characters plus NUL. */
static inline void golden_sha256_hex(struct golden_sha256 *c, char out[65]) {
    uint64_t bits = c->len * 8;
    uint8_t pad = 0x80;
    golden_sha256_update(c, &pad, 1);
    uint8_t zero = 0;
    while (c->fill != 56) golden_sha256_update(c, &zero, 1);
    uint8_t lenbe[8];
    for (int i = 0; i < 8; i++) lenbe[i] = (uint8_t)(bits >> (56 - 8 * i));
    golden_sha256_update(c, lenbe, 8);
    for (int i = 0; i < 8; i++) sprintf(out + 8 * i, "%08x", c->h[i]);
    out[64] = 0;
}

/* SHA-256 of n floats as little-endian bytes (what the golden files hash). */
static inline void golden_sha256_f32(const float *v, int64_t n, char out[65]) {
    struct golden_sha256 c;
    golden_sha256_init(&c);
    for (int64_t i = 0; i < n; i++) {
        uint32_t u = golden_f32_bits(v[i]);
        uint8_t le[4] = {(uint8_t)u, (uint8_t)(u >> 8), (uint8_t)(u >> 16), (uint8_t)(u >> 24)};
        golden_sha256_update(&c, le, 4);
    }
    golden_sha256_hex(&c, out);
}

#endif
