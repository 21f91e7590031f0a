/* tensor/cpu/backend.c -- the CPU backend's function table and its one op switch.
 * Owns: struct cpu_ctx. Memory is host memory from base/mem (64-byte aligned).
 * Threads: the owning worker; kernels use OpenMP inside. */
#include "tensor/backend.h"
#include "tensor/cpu/cpu.h"
#include "base/mem.h"
#include "base/status.h"

#include <cblas.h>
#include <omp.h>
#include <string.h>

static int cpu_buf_alloc(void *ctx, size_t size, void **out) {
    *out = mem_try_aligned_alloc(size ? size : 1);
    return *out ? 0 : STATUS_ERR_NOMEM;
}

static void cpu_buf_free(void *ctx, void *buf) { mem_aligned_free(buf); }

static int cpu_tensor_set(void *ctx, struct tensor *t, const void *host, size_t off, size_t size) {
    memcpy((char *)t->data + off, host, size);
    return 0;
}

static int cpu_tensor_get(void *ctx, const struct tensor *t, void *host, size_t off, size_t size) {
    memcpy(host, (const char *)t->data + off, size);
    return 0;
}

static bool is_float(enum dtype t) { return t == DTYPE_F32 || t == DTYPE_F16 || t == DTYPE_BF16; }

static bool cpu_op_supported(void *ctx, const struct tensor *node) {
    /* CAST between any float dtypes; STREAM copies bytes; everything else fp32 (GET_ROWS reads I32 ids) */
    if (node->op == OP_STREAM) return true;
    if (node->op == OP_CAST) return is_float(node->dtype) && is_float(node->src[0]->dtype);
    for (int i = 0; i < TENSOR_MAX_SRC; i++) {
        const struct tensor *s = node->src[i];
        if (!s) continue;
        if (s->dtype != DTYPE_F32 && !(node->op == OP_GET_ROWS && i == 1 && s->dtype == DTYPE_I32)) return false;
    }
    return node->dtype == DTYPE_F32;
}

static int cpu_graph_run(void *vctx, struct tensor *const *nodes, int n, struct err *err) {
    struct cpu_ctx *ctx = vctx;
    omp_set_num_threads(ctx->n_threads);
    cpu__blas_threads(1); /* kernels split products into OpenMP tasks (THREADING in cpu.h) */
    for (int i = 0; i < n; i++) {
        struct tensor *t = nodes[i];
        if (!cpu_op_supported(ctx, t))
            return err_set(err, STATUS_ERR_UNSUPPORTED, "cpu backend: %s on %s is not supported", op_name(t->op),
                           dtype_name(t->dtype));
        int rc;
        switch (t->op) {
        case OP_ADD: rc = cpu_op_add(ctx, t, err); break;
        case OP_MUL: rc = cpu_op_mul(ctx, t, err); break;
        case OP_SCALE: rc = cpu_op_scale(ctx, t, err); break;
        case OP_SILU: rc = cpu_op_silu(ctx, t, err); break;
        case OP_GELU: rc = cpu_op_gelu(ctx, t, err); break;
        case OP_QUICK_GELU: rc = cpu_op_quick_gelu(ctx, t, err); break;
        case OP_GEGLU: rc = cpu_op_geglu(ctx, t, err); break;
        case OP_LINEAR: rc = cpu_op_linear(ctx, t, err); break;
        case OP_CONV2D: rc = cpu_op_conv2d(ctx, t, err); break;
        case OP_GROUP_NORM: rc = cpu_op_group_norm(ctx, t, err); break;
        case OP_LAYER_NORM: rc = cpu_op_layer_norm(ctx, t, err); break;
        case OP_ATTENTION: rc = cpu_op_attention(ctx, t, err); break;
        case OP_TRANSPOSE: rc = cpu_op_transpose(ctx, t, err); break;
        case OP_UPSAMPLE_NEAREST: rc = cpu_op_upsample_nearest(ctx, t, err); break;
        case OP_CONCAT: rc = cpu_op_concat(ctx, t, err); break;
        case OP_GET_ROWS: rc = cpu_op_get_rows(ctx, t, err); break;
        case OP_CAST: rc = cpu_op_cast(ctx, t, err); break;
        case OP_SAMPLE: rc = cpu_op_sample(ctx, t, err); break;
        case OP_STREAM: /* host memory: a FETCH is a copy; WAIT, DONE and BEGIN have nothing to wait for */
            if (t->ip[0] == TSTREAM_FETCH) memcpy(t->data, t->src[0]->data, tensor_nbytes(t));
            rc = 0;
            break;
        case OP_NONE:
        case OP_RESHAPE: rc = 0; break;
        default:
            rc = err_set(err, STATUS_ERR_UNSUPPORTED, "cpu backend: op %s not implemented", op_name(t->op));
        }
        if (rc) return rc;
        if (t->src[3] && (t->op == OP_LINEAR || t->op == OP_CONV2D)) { /* a fused residual (op_add_fused): added
                                                                       after the op, as a separate ADD would */
            const float *r = t->src[3]->data;
            float *y = t->data;
            int64_t n = tensor_numel(t);
#pragma omp parallel for simd schedule(static) if (n >= CPU_PAR_MIN)
            for (int64_t k = 0; k < n; k++) y[k] += r[k];
        }
    }
    return 0;
}

static void cpu_free(void *ctx) {
    cpu__work_free(ctx);
    mem_free(ctx);
}

static const struct backend_i CPU_BACKEND = {
    .api_version = BACKEND_API_VERSION,
    .name = "cpu",
    .buf_alloc = cpu_buf_alloc,
    .buf_free = cpu_buf_free,
    .tensor_set = cpu_tensor_set,
    .tensor_get = cpu_tensor_get,
    .op_supported = cpu_op_supported,
    .graph_run = cpu_graph_run,
    .sync = NULL,
    .free = cpu_free,
    .host_buffers = true,
};

struct backend *backend_cpu_new(int n_threads) {
    struct cpu_ctx *ctx = mem_try_calloc(1, sizeof *ctx);
    struct backend *be = mem_try_calloc(1, sizeof *be);
    if (!ctx || !be) {
        mem_free(ctx);
        mem_free(be);
        return NULL;
    }
    ctx->n_threads = n_threads > 0 ? n_threads : omp_get_num_procs();
    be->iface = &CPU_BACKEND;
    be->device = 0;
    be->ctx = ctx;
    return be;
}
