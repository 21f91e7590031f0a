/* base/mem.h -- counted host allocation (redis zmalloc). All host memory of kiln goes through
 * these functions, so /system_stats can report exact figures and tests can inject failures.
 * Owns: the process-wide counters (on purpose) and the fault-injection countdown.
 * Threads: any (counters are atomic).
 * Ownership: whatever these return is freed with mem_free (or mem_aligned_free). */
#ifndef KILN_MEM_H
#define KILN_MEM_H

#include <stddef.h>

/* Allocate or abort with a message: for small bookkeeping whose failure cannot be handled. */
void *mem_alloc(size_t size);
void *mem_calloc(size_t n, size_t size);
void *mem_realloc(void *p, size_t size);
char *mem_strdup(const char *s);
char *mem_strndup(const char *s, size_t n);

/* Allocate or return NULL: for large buffers whose failure is an expected error. */
void *mem_try_alloc(size_t size);
void *mem_try_calloc(size_t n, size_t size);
void *mem_try_realloc(void *p, size_t size);

/* 64-byte aligned allocation (or NULL); freed with mem_aligned_free. */
void *mem_try_aligned_alloc(size_t size);
void mem_aligned_free(void *p);

/* mem_free(NULL) is a no-op. */
void mem_free(void *p);

/* Bytes currently allocated through this module, and the peak since start. */
size_t mem_used(void);
size_t mem_peak(void);

/* Test hook: the n-th mem_try_* call from now fails (n >= 1); 0 disables. */
void mem_fault_after(long n);

#endif
