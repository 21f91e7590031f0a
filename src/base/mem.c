/* base/mem.c -- counted host allocation. The only file (with vram/) allowed to call malloc.
 * Each block carries a 16-byte header with its size so frees can be counted.
 * Threads: any. */
#include "base/mem.h"
#include "base/base.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HDR 16 /* keeps 16-byte alignment of the user pointer */

static atomic_size_t used_bytes;
static atomic_size_t peak_bytes;
static atomic_long fault_countdown;

static void count_add(size_t n) {
    size_t now = atomic_fetch_add(&used_bytes, n) + n;
    size_t peak = atomic_load(&peak_bytes);
    while (now > peak && !atomic_compare_exchange_weak(&peak_bytes, &peak, now)) {
    }
}

static bool fault_now(void) {
    long n = atomic_load(&fault_countdown);
    if (n <= 0) return false;
    return atomic_fetch_sub(&fault_countdown, 1) == 1;
}

void mem_fault_after(long n) { atomic_store(&fault_countdown, n); }

static void *raw_alloc(size_t size, bool zero) {
    if (size > SIZE_MAX - HDR) return NULL;
    unsigned char *p = zero ? calloc(1, size + HDR) : malloc(size + HDR);
    if (!p) return NULL;
    memcpy(p, &size, sizeof size);
    count_add(size);
    return p + HDR;
}

static _Noreturn void oom(size_t size) {
    fprintf(stderr, "kiln: out of host memory allocating %zu bytes\n", size);
    abort();
}

void *mem_try_alloc(size_t size) { return fault_now() ? NULL : raw_alloc(size, false); }

void *mem_try_calloc(size_t n, size_t size) {
    if (size && n > SIZE_MAX / size) return NULL;
    return fault_now() ? NULL : raw_alloc(n * size, true);
}

void *mem_try_realloc(void *p, size_t size) {
    if (!p) return mem_try_alloc(size);
    if (fault_now() || size > SIZE_MAX - HDR) return NULL;
    unsigned char *base = (unsigned char *)p - HDR;
    size_t old;
    memcpy(&old, base, sizeof old);
    unsigned char *q = realloc(base, size + HDR);
    if (!q) return NULL;
    memcpy(q, &size, sizeof size);
    atomic_fetch_sub(&used_bytes, old);
    count_add(size);
    return q + HDR;
}

void *mem_alloc(size_t size) {
    void *p = raw_alloc(size, false);
    if (!p) oom(size);
    return p;
}

void *mem_calloc(size_t n, size_t size) {
    if (size && n > SIZE_MAX / size) oom(SIZE_MAX);
    void *p = raw_alloc(n * size, true);
    if (!p) oom(n * size);
    return p;
}

void *mem_realloc(void *p, size_t size) {
    long saved = atomic_exchange(&fault_countdown, 0);
    void *q = mem_try_realloc(p, size);
    atomic_store(&fault_countdown, saved);
    if (!q) oom(size);
    return q;
}

char *mem_strndup(const char *s, size_t n) {
    size_t len = strnlen(s, n);
    char *d = mem_alloc(len + 1);
    memcpy(d, s, len);
    d[len] = 0;
    return d;
}

char *mem_strdup(const char *s) { return mem_strndup(s, SIZE_MAX); }

void mem_free(void *p) {
    if (!p) return;
    unsigned char *base = (unsigned char *)p - HDR;
    size_t size;
    memcpy(&size, base, sizeof size);
    atomic_fetch_sub(&used_bytes, size);
    free(base);
}

void *mem_try_aligned_alloc(size_t size) {
    if (fault_now()) return NULL;
    size_t rounded = (size + 63) & ~(size_t)63;
    if (rounded < size) return NULL;
    /* Header lives in the 64 bytes before the user pointer. */
    unsigned char *p = aligned_alloc(64, rounded + 64);
    if (!p) return NULL;
    memcpy(p, &rounded, sizeof rounded);
    count_add(rounded);
    return p + 64;
}

void mem_aligned_free(void *p) {
    if (!p) return;
    unsigned char *base = (unsigned char *)p - 64;
    size_t size;
    memcpy(&size, base, sizeof size);
    atomic_fetch_sub(&used_bytes, size);
    free(base);
}

size_t mem_used(void) { return atomic_load(&used_bytes); }
size_t mem_peak(void) { return atomic_load(&peak_bytes); }
