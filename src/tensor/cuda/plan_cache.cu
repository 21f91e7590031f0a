/* tensor/cuda/plan_cache.cu -- plans kept between runs: kiln's cache folder (base/fs.h) and
 * one file per plan, <cache>/<sub>/<tag>-<name>, whose first line says what it was made for.
 * Owns: ctx->cache_dir and ctx->cache_tag (filled by cuda__cache_open), and the files it writes.
 * Threads: the backend's worker. Files are written whole through a rename (fs_write_whole), so
 * devices and processes that share the folder never read half a file.
 * Users: attention_dnn.cu (cuDNN's SDPA plans as JSON, PLANS ON DISK) and conv.cu (the
 * heuristics' convolution algorithm per shape, ALGORITHMS KEPT ON DISK). The tag names the cuDNN
 * version, the driver version and the GPU's name and compute capability: a plan is only read
 * back where it was made for the same ones, so it is the plan a new query would give. A file
 * whose first line differs (another shape under a copied name, an older format) is ignored and
 * replaced by the caller's next write. */
#include "tensor/cuda/cuda.cuh"

#ifdef KILN_HAVE_CUDNN

extern "C" {
#include "base/fs.h"
#include "base/log.h"
#include "base/mem.h"
}

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

void cuda__cache_open(struct cuda_ctx *ctx) {
    ctx->cache_dir[0] = ctx->cache_tag[0] = 0;
    cudaDeviceProp prop;
    int drv = 0;
    if (!fs_cache_dir(ctx->cache_dir, sizeof ctx->cache_dir) ||
        cudaGetDeviceProperties(&prop, ctx->device) != cudaSuccess || cudaDriverGetVersion(&drv) != cudaSuccess) {
        (void)cudaGetLastError();
        ctx->cache_dir[0] = 0;
        return;
    }
    char name[64];
    size_t i = 0;
    for (; prop.name[i] && i + 1 < sizeof name; i++) name[i] = isalnum((unsigned char)prop.name[i]) ? prop.name[i] : '_';
    name[i] = 0;
    snprintf(ctx->cache_tag, sizeof ctx->cache_tag, "cudnn%zu-drv%d-sm%d%d-%s", cudnnGetVersion(), drv, prop.major,
             prop.minor, name);
}

/* <cache>/<sub>[/<tag>-<name>] into out; false when there is no cache or it does not fit. */
static bool cache_path(const struct cuda_ctx *ctx, const char *sub, const char *name, char *out, size_t n) {
    if (!ctx->cache_dir[0]) return false;
    int k = name ? snprintf(out, n, "%s/%s/%s-%s", ctx->cache_dir, sub, ctx->cache_tag, name)
                 : snprintf(out, n, "%s/%s", ctx->cache_dir, sub);
    return k > 0 && (size_t)k < n;
}

/* "kiln <label> <tag> <what>\n" into out. */
static size_t cache_header(const struct cuda_ctx *ctx, const char *label, const char *what, char *out, size_t n) {
    int k = snprintf(out, n, "kiln %s %s %s\n", label, ctx->cache_tag, what);
    return k > 0 && (size_t)k < n ? (size_t)k : 0;
}

bool cuda__cache_read(const struct cuda_ctx *ctx, const char *sub, const char *name, const char *label,
                      const char *what, size_t max, char **text, const char **body, size_t *body_len) {
    *text = NULL;
    char path[PATH_MAX], header[512];
    size_t hl = cache_header(ctx, label, what, header, sizeof header), len = 0;
    if (!hl || !cache_path(ctx, sub, name, path, sizeof path) || fs_read_whole(path, max, text, &len) != 0) return false;
    if (len <= hl || memcmp(*text, header, hl) != 0) {
        log_debug("cuda backend: %s was not made for %s %s here: made again", path, label, what);
        mem_free(*text);
        *text = NULL;
        return false;
    }
    *body = *text + hl;
    *body_len = len - hl;
    return true;
}

void cuda__cache_write(const struct cuda_ctx *ctx, const char *sub, const char *name, const char *label,
                       const char *what, const void *body, size_t len) {
    char dir[PATH_MAX], path[PATH_MAX], header[512];
    size_t hl = cache_header(ctx, label, what, header, sizeof header);
    if (!hl || !cache_path(ctx, sub, NULL, dir, sizeof dir) || !cache_path(ctx, sub, name, path, sizeof path)) return;
    const char *where = dir; /* what failed, for the debug line */
    int rc = fs_make_dirs(dir, 0755, NULL, 0);
    if (!rc) {
        where = path;
        char *text = (char *)mem_try_alloc(hl + len);
        if (!text) {
            rc = -ENOMEM;
        } else {
            memcpy(text, header, hl);
            memcpy(text + hl, body, len);
            rc = fs_write_whole(path, text, hl + len);
            mem_free(text);
        }
    }
    if (rc) log_debug("cuda backend: cannot keep the %s in %s: %s", label, where, strerror(-rc));
}

#endif /* KILN_HAVE_CUDNN */
