/* tensor/cpu/work.c -- the CPU kernels' scratch buffer (im2col chunks, attention score blocks).
 * Owns: ctx->work, one growing 64-byte aligned host buffer per backend, so a graph of hundreds
 * of convolutions does not map and fault in fresh pages for every node.
 * Threads: the backend's worker; kernels carve per-thread slices out of it themselves.
 * Ownership: freed by cpu__work_free when the backend is freed. */
#include "tensor/cpu/cpu.h"
#include "base/mem.h"
#include "base/status.h"

void *cpu__work(struct cpu_ctx *ctx, size_t size, const char *what, struct err *err) {
    if (size <= ctx->work_size) return ctx->work;
    mem_aligned_free(ctx->work);
    ctx->work = NULL;
    ctx->work_size = 0;
    void *p = mem_try_aligned_alloc(size);
    if (!p) {
        err_set(err, STATUS_ERR_NOMEM, "cpu backend: cannot allocate %.1f MiB of scratch for %s",
                (double)size / (1 << 20), what);
        return NULL;
    }
    ctx->work = p;
    ctx->work_size = size;
    return p;
}

static size_t work_max = CPU_WORK_MAX;

size_t cpu__work_max(void) { return work_max; }

void cpu__work_max_force(size_t bytes) { work_max = bytes ? bytes : CPU_WORK_MAX; }

void cpu__work_free(struct cpu_ctx *ctx) {
    mem_aligned_free(ctx->work);
    ctx->work = NULL;
    ctx->work_size = 0;
}
