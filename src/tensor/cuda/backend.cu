/* tensor/cuda/backend.cu -- the CUDA backend's function table, memory, errors and its one op switch.
 * Owns: struct cuda_ctx (stream, cuBLAS and cuBLASLt handles, the Lt workspace, cuDNN handle when
 * built with it, kernel scratch) and every device buffer it hands out (cudaMalloc lives here
 * only, until the VRAM manager of issue 4 takes it over); conv.cu's and matmul.cu's plan tables
 * are freed here through cuda__conv_plans_free and cuda__lt_plans_free.
 * cuDNN is optional at run time too: if cudnnCreate fails (or KILN_CUDNN=0) the ctx has no
 * handle, one warning is logged, and convolutions stay on im2col + cuBLAS.
 * Threads: the owning worker; each entry point first binds the ctx's device to the thread.
 * DESIGN: graph_run queues every node on the one stream, then synchronises once and checks for
 * asynchronous errors; no CUDA error aborts (CUDA_TRY turns each into a status + message). */
#include "tensor/cuda/cuda.cuh"
#include "tensor/cuda/graphs.cuh"

extern "C" {
#include "base/clock.h"
#include "base/log.h"
#include "base/mem.h"
}

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ===== Errors ===== */

int cuda_error(struct err *err, cudaError_t e, const char *stmt, const char *func, const char *file, int line) {
    int rc = e == cudaErrorMemoryAllocation ? STATUS_ERR_OOM_DEVICE : STATUS_ERR_DEVICE;
    if (e == cudaErrorMemoryAllocation) (void)cudaGetLastError(); /* not sticky: clear it */
    return err_set(err, rc, "CUDA error %s (%s) in `%s` at %s (%s:%d)", cudaGetErrorName(e), cudaGetErrorString(e),
                   stmt, func, file, line);
}

int cuda_blas_error(struct err *err, cublasStatus_t s, const char *stmt, const char *func, const char *file, int line) {
    int rc = s == CUBLAS_STATUS_ALLOC_FAILED ? STATUS_ERR_OOM_DEVICE : STATUS_ERR_DEVICE;
    return err_set(err, rc, "cuBLAS error %s (%s) in `%s` at %s (%s:%d)", cublasGetStatusName(s),
                   cublasGetStatusString(s), stmt, func, file, line);
}

#ifdef KILN_HAVE_CUDNN
int cuda_dnn_error(struct err *err, cudnnStatus_t s, const char *stmt, const char *func, const char *file, int line) {
    int cat = CUDNN_STATUS_CATEGORY(s);
    int rc = s == CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED ||
                     s == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED
                 ? STATUS_ERR_OOM_DEVICE
             : cat == CUDNN_STATUS_NOT_SUPPORTED ? STATUS_ERR_UNSUPPORTED
                                                 : STATUS_ERR_DEVICE;
    char detail[256] = "";
    cudnnGetLastErrorString(detail, sizeof detail); /* may be empty */
    return err_set(err, rc, "cuDNN error %d (%s%s%s) in `%s` at %s (%s:%d)", (int)s, cudnnGetErrorString(s),
                   detail[0] ? ": " : "", detail, stmt, func, file, line);
}
#endif

/* ===== Memory ===== */

/* Sizes of live allocations, to count bytes per backend (few: scratch, weights, work). */
struct cuda_alloc {
    void *ptr;
    size_t size;
};

struct cuda_backend {
    struct cuda_ctx ctx;        /* first: the ctx pointer of struct backend points here */
    struct cuda_alloc *allocs;  /* live buffers */
    int n_allocs, cap_allocs;
};

static int cuda_raw_alloc(struct cuda_backend *cb, size_t size, void **out, struct err *err) {
    *out = NULL;
    CUDA_TRY(cudaSetDevice(cb->ctx.device));
    CUDA_TRY(cudaMalloc(out, size ? size : 1));
    if (cb->n_allocs == cb->cap_allocs) {
        int cap = cb->cap_allocs ? cb->cap_allocs * 2 : 16;
        struct cuda_alloc *a = (struct cuda_alloc *)mem_try_realloc(cb->allocs, (size_t)cap * sizeof *a);
        if (!a) {
            cudaFree(*out);
            *out = NULL;
            return err_set(err, STATUS_ERR_NOMEM, "cuda backend: out of host memory for the allocation list");
        }
        cb->allocs = a;
        cb->cap_allocs = cap;
    }
    cb->allocs[cb->n_allocs++] = (struct cuda_alloc){*out, size};
    cb->ctx.bytes_in_use += size;
    if (cb->ctx.bytes_in_use > cb->ctx.bytes_peak) cb->ctx.bytes_peak = cb->ctx.bytes_in_use;
    return 0;
}

static void cuda_raw_free(struct cuda_backend *cb, void *p) {
    if (!p) return;
    for (int i = 0; i < cb->n_allocs; i++) {
        if (cb->allocs[i].ptr != p) continue;
        cb->ctx.bytes_in_use -= cb->allocs[i].size;
        cb->allocs[i] = cb->allocs[--cb->n_allocs];
        break;
    }
    cudaSetDevice(cb->ctx.device);
    cudaStreamSynchronize(cb->ctx.stream); /* queued work may still read it */
    cudaFree(p);
}

static int cuda_buf_alloc(void *vctx, size_t size, void **out) {
    struct err err = {};
    int rc = cuda_raw_alloc((struct cuda_backend *)vctx, size, out, &err);
    if (rc) log_warn("cuda backend: %s", err.msg);
    return rc;
}

static void cuda_buf_free(void *vctx, void *buf) { cuda_raw_free((struct cuda_backend *)vctx, buf); }

void *cuda__work(struct cuda_ctx *ctx, size_t size, const char *what, int *rc, struct err *err) {
    if (ctx->work_size >= size) return ctx->work;
    struct cuda_backend *cb = (struct cuda_backend *)ctx;
    cuda_raw_free(cb, ctx->work);
    ctx->work = NULL;
    ctx->work_size = 0;
    *rc = cuda_raw_alloc(cb, size, &ctx->work, err);
    if (*rc) {
        err_prefix(err, "cuda backend: %zu bytes of scratch for %s", size, what);
        return NULL;
    }
    ctx->work_size = size;
    return ctx->work;
}

/* ===== Copies ===== */

static int cuda_copy(struct cuda_ctx *ctx, void *dst, const void *src, size_t size, cudaMemcpyKind kind) {
    struct err e = {};
    struct err *err = &e;
    CUDA_TRY(cudaSetDevice(ctx->device));
    CUDA_TRY(cudaMemcpyAsync(dst, src, size, kind, ctx->stream));
    CUDA_TRY(cudaStreamSynchronize(ctx->stream)); /* the host buffer is the caller's again on return */
    return 0;
}

static int cuda_tensor_set(void *vctx, struct tensor *t, const void *host, size_t off, size_t size) {
    int rc = cuda_copy((struct cuda_ctx *)vctx, (char *)t->data + off, host, size, cudaMemcpyHostToDevice);
    if (rc) log_warn("cuda backend: copy of %zu bytes to the device failed: %s", size, status_str(rc));
    return rc;
}

static int cuda_tensor_get(void *vctx, const struct tensor *t, void *host, size_t off, size_t size) {
    int rc = cuda_copy((struct cuda_ctx *)vctx, host, (const char *)t->data + off, size, cudaMemcpyDeviceToHost);
    if (rc) log_warn("cuda backend: copy of %zu bytes from the device failed: %s", size, status_str(rc));
    return rc;
}

/* ===== Graphs ===== */

static bool cuda_op_supported(void *vctx, const struct tensor *node) {
    if (node->op == OP_NONE || node->op == OP_RESHAPE) return true; /* no kernel: a leaf or a view */
    if (node->op == OP_STREAM) return true;                          /* copies and events */
    /* CAST: between any two float dtypes */
    if (node->op == OP_CAST) return node->src[0] && cuda_is_float(node->src[0]->dtype) && cuda_is_float(node->dtype);
    /* every other op: dst and all its float sources in one float dtype; GET_ROWS reads I32 ids */
    if (!cuda_is_float(node->dtype)) return false;
    for (int i = 0; i < TENSOR_MAX_SRC; i++) {
        const struct tensor *s = node->src[i];
        if (!s) continue;
        bool ids = node->op == OP_GET_ROWS && i == 1;
        if (ids ? s->dtype != DTYPE_I32 : s->dtype != node->dtype) return false;
    }
    return true;
}

/* OP_STREAM (tensor.h STREAMING): a FETCH waits on the copy stream until the slot's previous block
 * is done, copies the block from its home (pinned host memory or another GPU: cudaMemcpyDefault,
 * peer to peer where enabled) and marks the slot ready; a WAIT makes the compute stream wait for
 * that; a DONE marks the slot free once the compute stream has passed the block's last reader;
 * BEGIN marks the start of the run, which a slot's first FETCH waits for. */
static int cuda_op_stream(struct cuda_ctx *ctx, struct tensor *t, struct err *err) {
    int slot = t->ip[1];
    if (slot < 0 || slot >= TSTREAM_MAX_SLOTS) return err_set(err, STATUS_ERR_INVALID, "stream slot %d", slot);
    if (!ctx->copy_stream) {
        CUDA_TRY(cudaStreamCreateWithFlags(&ctx->copy_stream, cudaStreamNonBlocking));
        for (int k = 0; k < TSTREAM_MAX_SLOTS; k++) {
            CUDA_TRY(cudaEventCreateWithFlags(&ctx->stream_ready[k], cudaEventDisableTiming));
            CUDA_TRY(cudaEventCreateWithFlags(&ctx->stream_free[k], cudaEventDisableTiming));
        }
        CUDA_TRY(cudaEventCreateWithFlags(&ctx->stream_begin, cudaEventDisableTiming));
        CUDA_TRY(cudaEventCreateWithFlags(&ctx->stream_reach, cudaEventDisableTiming));
    }
    switch (t->ip[0]) {
    case TSTREAM_BEGIN: CUDA_TRY(cudaEventRecord(ctx->stream_begin, ctx->stream)); return 0;
    case TSTREAM_FETCH: /* every event waited for is recorded in this run: capturable as one graph */
        CUDA_TRY(cudaStreamWaitEvent(ctx->copy_stream, t->ip[3] ? ctx->stream_begin : ctx->stream_free[slot], 0));
        if (t->ip[4]) { /* no prefetch: not before the compute stream gets here */
            CUDA_TRY(cudaEventRecord(ctx->stream_reach, ctx->stream));
            CUDA_TRY(cudaStreamWaitEvent(ctx->copy_stream, ctx->stream_reach, 0));
        }
        CUDA_TRY(cudaMemcpyAsync(t->data, t->src[0]->data, tensor_nbytes(t), cudaMemcpyDefault, ctx->copy_stream));
        CUDA_TRY(cudaEventRecord(ctx->stream_ready[slot], ctx->copy_stream));
        return 0;
    case TSTREAM_WAIT: CUDA_TRY(cudaStreamWaitEvent(ctx->stream, ctx->stream_ready[slot], 0)); return 0;
    case TSTREAM_DONE: CUDA_TRY(cudaEventRecord(ctx->stream_free[slot], ctx->stream)); return 0;
    default: return err_set(err, STATUS_ERR_INVALID, "stream node of kind %d", t->ip[0]);
    }
}

/* Queues nodes[0..n) on the stream one by one (cuda_enqueue_fn: also what a CUDA graph captures).
 * On a failure the stream is drained (unless it is being captured) and err names the node. */
static int enqueue_nodes(struct cuda_ctx *ctx, struct tensor *const *nodes, int n, struct err *err) {
    for (int i = 0; i < n; i++) {
        struct tensor *t = nodes[i];
        if (ctx->profile && !cuda__profile_whole(ctx->profile)) cuda__profile_mark(ctx->profile, i, ctx->stream);
        if (!cuda_op_supported(ctx, t))
            return err_set(err, STATUS_ERR_UNSUPPORTED, "cuda backend: %s on %s is not supported", op_name(t->op),
                           dtype_name(t->dtype));
        int rc;
        switch (t->op) {
        case OP_ADD: rc = cuda_op_add(ctx, t, err); break;
        case OP_MUL: rc = cuda_op_mul(ctx, t, err); break;
        case OP_SCALE: rc = cuda_op_scale(ctx, t, err); break;
        case OP_SILU: rc = cuda_op_silu(ctx, t, err); break;
        case OP_GELU: rc = cuda_op_gelu(ctx, t, err); break;
        case OP_QUICK_GELU: rc = cuda_op_quick_gelu(ctx, t, err); break;
        case OP_GEGLU: rc = cuda_op_geglu(ctx, t, err); break;
        case OP_LINEAR: rc = cuda_op_linear(ctx, t, err); break;
        case OP_CONV2D: rc = cuda_op_conv2d(ctx, t, err); break;
        case OP_GROUP_NORM: rc = cuda_op_group_norm(ctx, t, err); break;
        case OP_LAYER_NORM: rc = cuda_op_layer_norm(ctx, t, err); break;
        case OP_ATTENTION: rc = cuda_op_attention(ctx, t, err); break;
        case OP_TRANSPOSE: rc = cuda_op_transpose(ctx, t, err); break;
        case OP_UPSAMPLE_NEAREST: rc = cuda_op_upsample_nearest(ctx, t, err); break;
        case OP_CONCAT: rc = cuda_op_concat(ctx, t, err); break;
        case OP_GET_ROWS: rc = cuda_op_get_rows(ctx, t, err); break;
        case OP_CAST: rc = cuda_op_cast(ctx, t, err); break;
        case OP_SAMPLE: rc = cuda_op_sample(ctx, t, err); break;
        case OP_STREAM: rc = cuda_op_stream(ctx, t, err); break;
        case OP_NONE:
        case OP_RESHAPE: rc = 0; break;
        default:
            rc = err_set(err, STATUS_ERR_UNSUPPORTED, "cuda backend: op %s not implemented", op_name(t->op));
        }
        if (rc) {
            char sh[64];
            err_prefix(err, "%s %s", op_name(t->op), tensor_shape_str(t, sh, sizeof sh));
            cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
            if (cudaStreamIsCapturing(ctx->stream, &cap) == cudaSuccess && cap == cudaStreamCaptureStatusNone)
                cudaStreamSynchronize(ctx->stream);
            return rc;
        }
    }
    return 0;
}

static int cuda_graph_run(void *vctx, struct tensor *const *nodes, int n, struct err *err) {
    struct cuda_ctx *ctx = (struct cuda_ctx *)vctx;
    CUDA_TRY(cudaSetDevice(ctx->device));
    int rc;
    bool streams = false; /* streamed weights: KILN_CUDA_STREAM_GRAPHS=0 launches them node by node */
    for (int i = 0; i < n && !streams; i++) streams = nodes[i]->op == OP_STREAM;
    if (streams && !ctx->profile && !ctx->stream_graphs) {
        rc = enqueue_nodes(ctx, nodes, n, err);
    } else if (cuda__profile_whole(ctx->profile)) { /* the whole graph timed, CUDA graphs on */
        rc = cuda__profile_begin(ctx->profile, nodes, n, err);
        if (!rc) cuda__profile_mark(ctx->profile, 0, ctx->stream);
        if (!rc) rc = streams && !ctx->stream_graphs ? enqueue_nodes(ctx, nodes, n, err)
                                                     : cuda__graphs_run(ctx->graphs, ctx, nodes, n, enqueue_nodes, err);
        if (!rc) cuda__profile_mark(ctx->profile, 1, ctx->stream);
    } else if (ctx->profile) { /* every node timed on its own: no CUDA graphs */
        rc = cuda__profile_begin(ctx->profile, nodes, n, err);
        if (!rc) rc = enqueue_nodes(ctx, nodes, n, err);
        if (!rc) cuda__profile_mark(ctx->profile, n, ctx->stream);
    } else {
        rc = cuda__graphs_run(ctx->graphs, ctx, nodes, n, enqueue_nodes, err);
    }
    if (rc) return rc;
    CUDA_TRY(cudaStreamSynchronize(ctx->stream));
    CUDA_TRY(cudaGetLastError());
    if (ctx->profile) cuda__profile_end(ctx->profile);
    return 0;
}

static int cuda_sync(void *vctx) {
    struct cuda_ctx *ctx = (struct cuda_ctx *)vctx;
    struct err e = {};
    struct err *err = &e;
    CUDA_TRY(cudaSetDevice(ctx->device));
    CUDA_TRY(cudaStreamSynchronize(ctx->stream));
    return 0;
}

static void cuda_free(void *vctx) {
    struct cuda_backend *cb = (struct cuda_backend *)vctx;
    cudaSetDevice(cb->ctx.device);
    if (cb->ctx.stream) cudaStreamSynchronize(cb->ctx.stream);
    cuda_raw_free(cb, cb->ctx.work);
    if (cb->ctx.copy_stream) {
        cudaStreamSynchronize(cb->ctx.copy_stream);
        for (int k = 0; k < TSTREAM_MAX_SLOTS; k++) {
            if (cb->ctx.stream_ready[k]) cudaEventDestroy(cb->ctx.stream_ready[k]);
            if (cb->ctx.stream_free[k]) cudaEventDestroy(cb->ctx.stream_free[k]);
        }
        if (cb->ctx.stream_begin) cudaEventDestroy(cb->ctx.stream_begin);
        if (cb->ctx.stream_reach) cudaEventDestroy(cb->ctx.stream_reach);
        cudaStreamDestroy(cb->ctx.copy_stream);
    }
    cuda__profile_free(cb->ctx.profile, cb->ctx.device);
    if (cb->ctx.graphs) {
        long replays, captures, plain;
        cuda__graphs_stats(cb->ctx.graphs, &replays, &captures, &plain);
        log_debug("cuda backend: device %d ran %ld graphs from CUDA graph replays (%ld captured), %ld launched node by node",
                  cb->ctx.device, replays, captures, plain);
        cuda__graphs_free(cb->ctx.graphs);
    }
#ifdef KILN_HAVE_CUDNN
    cuda__conv_plans_free(&cb->ctx);
    cuda__sdpa_free(&cb->ctx);
    if (cb->ctx.cudnn) cudnnDestroy(cb->ctx.cudnn);
#endif
    cuda__lt_plans_free(&cb->ctx);
    cuda_raw_free(cb, cb->ctx.lt_ws);
    if (cb->ctx.lt) cublasLtDestroy(cb->ctx.lt);
    if (cb->n_allocs)
        log_warn("cuda backend: %d buffer(s) (%zu bytes) still allocated at teardown", cb->n_allocs,
                 cb->ctx.bytes_in_use);
    if (cb->ctx.cublas) cublasDestroy(cb->ctx.cublas);
    if (cb->ctx.stream) cudaStreamDestroy(cb->ctx.stream);
    mem_free(cb->allocs);
    mem_free(cb);
}

/* ===== Weights on another GPU (tensor.h STREAMING) ===== */

/* Peer access from ctx's device to `device`, enabled on first use; false when the pair has none. */
static bool cuda_peer_reachable(void *vctx, int device) {
    struct cuda_ctx *ctx = (struct cuda_ctx *)vctx;
    int can = 0;
    if (device == ctx->device || cudaDeviceCanAccessPeer(&can, ctx->device, device) != cudaSuccess || !can) {
        (void)cudaGetLastError();
        return false;
    }
    cudaSetDevice(ctx->device);
    cudaError_t e = cudaDeviceEnablePeerAccess(device, 0);
    (void)cudaGetLastError();
    return e == cudaSuccess || e == cudaErrorPeerAccessAlreadyEnabled;
}

/* cudaMalloc on `device`, one synchronous upload, then peer access from ctx's device when the
 * pair supports it (already enabled counts as success). The buffer is not in this backend's
 * allocation list: it is the other device's memory, freed with cuda_peer_free. */
static int cuda_peer_upload(void *vctx, int device, const void *host, size_t size, void **out) {
    struct cuda_ctx *ctx = (struct cuda_ctx *)vctx;
    struct err e = {};
    struct err *err = &e;
    *out = NULL;
    int rc = 0;
    if (device == ctx->device) return STATUS_ERR_INVALID;
    CUDA_TRY(cudaSetDevice(device));
    cudaError_t ce = cudaMalloc(out, size ? size : 1);
    if (ce != cudaSuccess) {
        (void)cudaGetLastError();
        *out = NULL;
        log_warn("cuda backend: %zu bytes on GPU %d for weights streamed to GPU %d: %s", size, device, ctx->device,
                 cudaGetErrorString(ce));
        rc = ce == cudaErrorMemoryAllocation ? STATUS_ERR_OOM_DEVICE : STATUS_ERR_DEVICE;
    } else if ((ce = cudaMemcpy(*out, host, size, cudaMemcpyHostToDevice)) != cudaSuccess) {
        log_warn("cuda backend: upload of %zu bytes to GPU %d failed: %s", size, device, cudaGetErrorString(ce));
        cudaFree(*out);
        *out = NULL;
        rc = STATUS_ERR_DEVICE;
    }
    cudaSetDevice(ctx->device);
    if (!rc) (void)cuda_peer_reachable(vctx, device); /* without peer access copies go through the host */
    return rc;
}

static void cuda_peer_free(void *vctx, int device, void *buf) {
    struct cuda_ctx *ctx = (struct cuda_ctx *)vctx;
    if (!buf) return;
    cudaSetDevice(ctx->device);
    cudaStreamSynchronize(ctx->stream); /* queued copies may still read it */
    if (ctx->copy_stream) cudaStreamSynchronize(ctx->copy_stream);
    cudaSetDevice(device);
    if (cudaFree(buf) != cudaSuccess) {
        (void)cudaGetLastError();
        log_warn("cuda backend: freeing weights on GPU %d failed", device);
    }
    cudaSetDevice(ctx->device);
}

/* A whole weight image from another GPU's copy (wstore device copies), on ctx's stream. */
static int cuda_peer_copy(void *vctx, void *dst, int src_device, const void *src, size_t size) {
    struct cuda_ctx *ctx = (struct cuda_ctx *)vctx;
    struct err e = {};
    struct err *err = &e;
    if (!cuda_peer_reachable(vctx, src_device)) return STATUS_ERR_UNSUPPORTED;
    CUDA_TRY(cudaSetDevice(ctx->device));
    CUDA_TRY(cudaMemcpyPeerAsync(dst, ctx->device, src, src_device, size, ctx->stream));
    CUDA_TRY(cudaStreamSynchronize(ctx->stream));
    return 0;
}

/* ===== Pinned host memory ===== */

/* Page-locks host memory for every device (portable), so uploads from it run at DMA speed. */
static int cuda_host_pin(void *ptr, size_t size) {
    struct err e = {};
    struct err *err = &e;
    CUDA_TRY(cudaHostRegister(ptr, size, cudaHostRegisterPortable));
    return 0;
}

static void cuda_host_unpin(void *ptr) {
    if (cudaHostUnregister(ptr) != cudaSuccess) {
        (void)cudaGetLastError();
        log_warn("cuda backend: cudaHostUnregister failed");
    }
}

static int cuda_bind_thread(void *vctx) {
    struct err e = {};
    struct err *err = &e;
    CUDA_TRY(cudaSetDevice(((struct cuda_ctx *)vctx)->device));
    return 0;
}

/* C++17 has no designated initializers: the table is zeroed, then filled by field name, so
 * slots added to struct backend_i later start out NULL/false here (optional) until set. */
static struct backend_i cuda_backend_table(void) {
    struct backend_i t = {};
    t.api_version = BACKEND_API_VERSION;
    t.name = "cuda";
    t.buf_alloc = cuda_buf_alloc;
    t.buf_free = cuda_buf_free;
    t.tensor_set = cuda_tensor_set;
    t.tensor_get = cuda_tensor_get;
    t.op_supported = cuda_op_supported;
    t.graph_run = cuda_graph_run;
    t.sync = cuda_sync;
    t.peer_upload = cuda_peer_upload;
    t.peer_free = cuda_peer_free;
    t.peer_reachable = cuda_peer_reachable;
    t.peer_copy = cuda_peer_copy;
    t.free = cuda_free;
    t.host_buffers = false;
    t.host_pin = cuda_host_pin;
    t.host_unpin = cuda_host_unpin;
    t.bind_thread = cuda_bind_thread;
    return t;
}

static const struct backend_i CUDA_BACKEND = cuda_backend_table();

/* ===== Construction ===== */

#ifdef KILN_HAVE_CUDNN
/* Gives the ctx a cuDNN handle on its stream, unless KILN_CUDNN=0. Never fails: without a
 * handle (no usable cuDNN at run time) one warning is logged and conv.cu keeps im2col.
 * conv.cu takes cuDNN's heuristics' pick; KILN_CUDNN=find times the algorithms once per shape
 * instead (cudnnFind...Ex). On an H100 timing gained nothing measurable on SD 1.5's UNet and
 * added about a second to the first prompt (one search per shape). Runs on the worker, device already bound. */
static void cuda_dnn_open(struct cuda_ctx *ctx) {
    const char *env = getenv("KILN_CUDNN");
    if (env && strcmp(env, "0") == 0) {
        log_info("cuda backend: device %d: cuDNN off (KILN_CUDNN=0), convolutions use im2col + cuBLAS",
                 ctx->device);
        return;
    }
    size_t version = cudnnGetVersion(); /* works before cudnnCreate; 0 never happens for a loaded 9.x */
    if (version / 10000 != CUDNN_MAJOR) {
        log_warn("cuda backend: device %d: cuDNN %zu at run time, built with %d: convolutions use im2col + "
                 "cuBLAS",
                 ctx->device, version, CUDNN_VERSION);
        return;
    }
    cudnnHandle_t h = NULL;
    cudnnStatus_t s = cudnnCreate(&h);
    if (s == CUDNN_STATUS_SUCCESS) s = cudnnSetStream(h, ctx->stream);
    if (s != CUDNN_STATUS_SUCCESS) {
        char detail[256] = "";
        cudnnGetLastErrorString(detail, sizeof detail);
        log_warn("cuda backend: device %d: cuDNN unusable (%s%s%s; cuDNN %zu at run time, built with %d): "
                 "convolutions use im2col + cuBLAS",
                 ctx->device, cudnnGetErrorString(s), detail[0] ? ": " : "", detail, version, CUDNN_VERSION);
        if (h) cudnnDestroy(h);
        (void)cudaGetLastError(); /* a failed create must not leave a CUDA error behind */
        return;
    }
    ctx->cudnn = h;
    ctx->cudnn_find = env && strcmp(env, "find") == 0;
    cuda__cache_open(ctx);
    const char *sdpa = getenv("KILN_CUDNN_SDPA");
    bool sdpa_off = sdpa && strcmp(sdpa, "0") == 0;
    struct err serr;
    memset(&serr, 0, sizeof serr);
    if (version >= CUDA_SDPA_MIN_VERSION && !sdpa_off && cuda__sdpa_open(ctx, &serr) != 0)
        log_warn("cuda backend: device %d: %s: attention stays on kiln's kernels", ctx->device, serr.msg);
    log_info("cuda backend: device %d: convolutions on cuDNN %zu (built with %d), algorithms by %s; attention %s",
             ctx->device, version, CUDNN_VERSION,
             ctx->cudnn_find ? "timing, once per shape (KILN_CUDNN=find)" : "heuristics",
             ctx->sdpa ? "on cuDNN's fused kernels, planned at each shape's first use"
             : version < CUDA_SDPA_MIN_VERSION ? "on kiln's kernels (cuDNN's fused attention needs 9.13.1)"
                                               : "on kiln's kernels (KILN_CUDNN_SDPA=0)");
}
#endif

extern "C" int backend_cuda_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n;
}

static int cuda_ctx_open(struct cuda_backend *cb, int device, struct err *err) {
    int n = backend_cuda_count();
    if (device < 0 || device >= n)
        return err_set(err, STATUS_ERR_NOT_FOUND, "cuda backend: no CUDA device %d (%d found)", device, n);
    cb->ctx.device = device;
    double t0 = clock_now();
    CUDA_TRY(cudaSetDevice(device));
    CUDA_TRY(cudaStreamCreateWithFlags(&cb->ctx.stream, cudaStreamNonBlocking));
    log_debug("cuda backend: device %d: context and stream in %.3f s", device, clock_now() - t0);
    t0 = clock_now();
    int rc0 = cuda__blas_load(err); /* opened at run time (blas_load.cu): the load, or its wait */
    if (rc0) return rc0;
    CUBLAS_TRY(cublasCreate(&cb->ctx.cublas));
    log_debug("cuda backend: device %d: cuBLAS loaded and its handle made in %.3f s", device, clock_now() - t0);
    CUBLAS_TRY(cublasSetStream(cb->ctx.cublas, cb->ctx.stream));
    /* exact fp32 products by default (no TF32). KILN_CUDA_TF32=1 lets cuBLAS round the products'
     * inputs to TF32 on the tensor cores (10-bit mantissa: ~1e-3 relative error), a measured
     * speed switch for F32 storage (docs/PERF.md). F16/BF16 products use the tensor cores in
     * either mode; DISALLOW_REDUCED_PRECISION_REDUCTION keeps their split-K partial sums in fp32
     * (the compute type) instead of the fp16/bf16 output type: products accumulate in fp32. */
    const char *tf32 = getenv("KILN_CUDA_TF32");
    bool use_tf32 = tf32 && tf32[0] == '1';
    int mode = (use_tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH) |
               CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION;
    CUBLAS_TRY(cublasSetMathMode(cb->ctx.cublas, (cublasMath_t)mode));
    if (use_tf32) log_info("cuda backend: device %d uses TF32 tensor-core products (KILN_CUDA_TF32=1)", device);
    /* cuBLASLt for F16/BF16 LINEAR (bias in the epilogue), with its own workspace, allocated
     * here once so that it never moves under a captured CUDA graph (matmul.cu). KILN_CUDA_LT=0
     * keeps cublasGemmEx + a bias prefill, for comparisons. */
    const char *lt = getenv("KILN_CUDA_LT");
    if (lt && lt[0] == '0') {
        log_info("cuda backend: device %d: cuBLASLt off (KILN_CUDA_LT=0), F16/BF16 linears use cublasGemmEx", device);
    } else {
        CUBLAS_TRY(cublasLtCreate(&cb->ctx.lt));
        int rc = cuda_raw_alloc(cb, CUDA_LT_WORKSPACE_BYTES, &cb->ctx.lt_ws, err);
        if (rc) {
            err_prefix(err, "cuda backend: %zu bytes of cuBLASLt workspace", CUDA_LT_WORKSPACE_BYTES);
            return rc;
        }
        cb->ctx.lt_ws_size = CUDA_LT_WORKSPACE_BYTES;
    }
#ifdef KILN_HAVE_CUDNN
    t0 = clock_now();
    cuda_dnn_open(&cb->ctx);
    log_debug("cuda backend: device %d: cuDNN handle in %.3f s", device, clock_now() - t0);
#endif
    cb->ctx.profile = cuda__profile_new();
    cb->ctx.graphs = cuda__graphs_new();
    /* measured on an H100: SD 1.5's [2, 1280, 8, 8] 3x3 conv took 0.12 ms on cuDNN, 0.04 ms on
       im2col + cuBLAS; with the 16x16 level too (256) the UNet evaluation took 10.4 ms, not 10.7 */
    const char *small = getenv("KILN_CONV_SMALL_P");
    cb->ctx.conv_small_p = small && *small ? atoll(small) : 256;
    const char *sg = getenv("KILN_CUDA_STREAM_GRAPHS"); /* streamed weights inside CUDA graphs (default on) */
    cb->ctx.stream_graphs = !(sg && strcmp(sg, "0") == 0);
    if (cb->ctx.profile) log_info("cuda backend: device %d times every op (KILN_CUDA_PROFILE=1)", device);
    return 0;
}

extern "C" struct backend *backend_cuda_new(int device, struct err *err) {
    struct cuda_backend *cb = (struct cuda_backend *)mem_try_calloc(1, sizeof *cb);
    struct backend *be = (struct backend *)mem_try_calloc(1, sizeof *be);
    if (!cb || !be) {
        mem_free(cb);
        mem_free(be);
        err_set(err, STATUS_ERR_NOMEM, "cuda backend: out of host memory");
        return NULL;
    }
    if (cuda_ctx_open(cb, device, err)) {
        cuda_free(cb);
        mem_free(be);
        return NULL;
    }
    be->iface = &CUDA_BACKEND;
    be->device = device;
    be->ctx = cb;
    return be;
}
