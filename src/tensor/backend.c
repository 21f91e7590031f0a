/* tensor/backend.c -- NULL-checking wrappers around a backend's function table.
 * Threads: the backend's owner. */
#include "tensor/backend.h"
#include "base/base.h"
#include "base/mem.h"
#include "base/status.h"

int backend_buf_alloc(struct backend *be, size_t size, void **out) { return be->iface->buf_alloc(be->ctx, size, out); }

void backend_buf_free(struct backend *be, void *buf) {
    if (buf) be->iface->buf_free(be->ctx, buf);
}

int backend_tensor_set(struct backend *be, struct tensor *t, const void *host, size_t off, size_t size) {
    if (off + size > tensor_nbytes(t)) return STATUS_ERR_RANGE;
    return be->iface->tensor_set(be->ctx, t, host, off, size);
}

int backend_tensor_get(struct backend *be, const struct tensor *t, void *host, size_t off, size_t size) {
    if (off + size > tensor_nbytes(t)) return STATUS_ERR_RANGE;
    return be->iface->tensor_get(be->ctx, t, host, off, size);
}

bool backend_op_supported(struct backend *be, const struct tensor *node) {
    return be->iface->op_supported ? be->iface->op_supported(be->ctx, node) : true;
}

int backend_graph_run(struct backend *be, struct tensor *const *nodes, int n, struct err *err) {
    return be->iface->graph_run(be->ctx, nodes, n, err);
}

int backend_sync(struct backend *be) { return be->iface->sync ? be->iface->sync(be->ctx) : 0; }

bool backend_host_buffers(const struct backend *be) { return be->iface->host_buffers; }

int backend_host_pin(const struct backend_i *iface, void *ptr, size_t size) {
    return iface->host_pin ? iface->host_pin(ptr, size) : STATUS_ERR_UNSUPPORTED;
}

void backend_host_unpin(const struct backend_i *iface, void *ptr) {
    if (iface->host_unpin) iface->host_unpin(ptr);
}

void backend_free(struct backend *be) {
    if (!be) return;
    if (be->iface->free) be->iface->free(be->ctx);
    mem_free(be);
}

int backend_peer_upload(struct backend *be, int device, const void *host, size_t size, void **out) {
    if (!be->iface->peer_upload) return STATUS_ERR_UNSUPPORTED;
    return be->iface->peer_upload(be->ctx, device, host, size, out);
}

void backend_peer_free(struct backend *be, int device, void *buf) {
    if (buf && be->iface->peer_free) be->iface->peer_free(be->ctx, device, buf);
}

bool backend_peer_reachable(struct backend *be, int device) {
    return be->iface->peer_reachable && be->iface->peer_reachable(be->ctx, device);
}

int backend_peer_copy(struct backend *be, void *dst, int src_device, const void *src, size_t size) {
    if (!be->iface->peer_copy) return STATUS_ERR_UNSUPPORTED;
    return be->iface->peer_copy(be->ctx, dst, src_device, src, size);
}

int backend_bind_thread(struct backend *be) { return be->iface->bind_thread ? be->iface->bind_thread(be->ctx) : 0; }
