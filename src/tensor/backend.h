/* tensor/backend.h -- the backend interface: a table of function pointers (ggml_backend_i).
 * Owns: the contract every backend (cpu/, later cuda/) implements, and the NULL-checking
 * wrappers that everyone else calls.
 * Threads: a backend instance is used by one device worker at a time.
 * Ownership: buffers from backend_buf_alloc are freed with backend_buf_free on the same backend. */
#ifndef KILN_BACKEND_H
#define KILN_BACKEND_H

#include "tensor/tensor.h"

#define BACKEND_API_VERSION 1

struct backend_i {
    int api_version;   /* BACKEND_API_VERSION */
    const char *name;  /* "cpu", "cuda" */
    /* Allocates size bytes of device memory (64-byte aligned) into *out; STATUS_ERR_OOM_DEVICE
     * (or ERR_NOMEM on the host) when it cannot. */
    int (*buf_alloc)(void *ctx, size_t size, void **out);
    void (*buf_free)(void *ctx, void *buf);
    /* Host <-> device copies of size bytes at byte offset off inside t's data. */
    int (*tensor_set)(void *ctx, struct tensor *t, const void *host, size_t off, size_t size);
    int (*tensor_get)(void *ctx, const struct tensor *t, void *host, size_t off, size_t size);
    /* (optional) Whether this backend can compute node (dtype, shapes). NULL means all ops. */
    bool (*op_supported)(void *ctx, const struct tensor *node);
    /* Computes nodes[0..n) in order; every input of a node is computed or a leaf. */
    int (*graph_run)(void *ctx, struct tensor *const *nodes, int n, struct err *err);
    /* (optional) Waits for queued work. */
    int (*sync)(void *ctx);
    /* (optional) Frees ctx and everything the backend owns. */
    void (*free)(void *ctx);
    /* Buffers of this backend are plain host memory: a weight leaf may point into host memory
     * that someone else owns (a shared host copy), with no copy (the CPU backend). */
    bool host_buffers;
    /* (optional) Page-locks [ptr, ptr + size) of host memory for fast copies to every device of
     * this kind (CUDA: cudaHostRegister, portable), and undoes it. Context-free on purpose: the
     * memory may outlive the backend that pinned it. Returns 0 or a negative status. */
    int (*host_pin)(void *ptr, size_t size);
    void (*host_unpin)(void *ptr);
    /* (optional) Allocates size bytes on another device `device` of this kind, copies host[0..size)
     * into it and lets this backend's device read it (peer access where the hardware allows; else
     * copies go through the host). For weights homed on another GPU (tensor.h STREAMING). */
    int (*peer_upload)(void *ctx, int device, const void *host, size_t size, void **out);
    void (*peer_free)(void *ctx, int device, void *buf);
    /* (optional) Whether this backend's device reads device `device`'s memory directly (peer to
     * peer), and a synchronous copy of size bytes from there into this device's memory. */
    bool (*peer_reachable)(void *ctx, int device);
    int (*peer_copy)(void *ctx, void *dst, int src_device, const void *src, size_t size);
    /* (optional) Makes the calling thread's device this backend's (CUDA: cudaSetDevice), for a
     * helper thread that pins host memory for it (host_pin would otherwise use device 0). */
    int (*bind_thread)(void *ctx);
};

struct backend {
    const struct backend_i *iface; /* static table of the implementation */
    int device;                    /* device index within its kind */
    void *ctx;                     /* implementation state */
};

int backend_buf_alloc(struct backend *be, size_t size, void **out);
void backend_buf_free(struct backend *be, void *buf);
int backend_tensor_set(struct backend *be, struct tensor *t, const void *host, size_t off, size_t size);
int backend_tensor_get(struct backend *be, const struct tensor *t, void *host, size_t off, size_t size);
bool backend_op_supported(struct backend *be, const struct tensor *node);
int backend_graph_run(struct backend *be, struct tensor *const *nodes, int n, struct err *err);
int backend_sync(struct backend *be);
/* Whether be's buffers are host memory (backend_i.host_buffers). */
bool backend_host_buffers(const struct backend *be);
/* Pins host memory for be's kind (0 = pinned, else a negative status; STATUS_ERR_UNSUPPORTED when
 * the kind has no pinning). Undo with backend_host_unpin on the same iface. */
int backend_host_pin(const struct backend_i *iface, void *ptr, size_t size);
void backend_host_unpin(const struct backend_i *iface, void *ptr);
/* backend_i.peer_upload / peer_free; STATUS_ERR_UNSUPPORTED when the backend has none. */
int backend_peer_upload(struct backend *be, int device, const void *host, size_t size, void **out);
void backend_peer_free(struct backend *be, int device, void *buf);
/* backend_i.peer_reachable (false without it) and peer_copy (STATUS_ERR_UNSUPPORTED without it). */
bool backend_peer_reachable(struct backend *be, int device);
int backend_peer_copy(struct backend *be, void *dst, int src_device, const void *src, size_t size);
/* backend_i.bind_thread; 0 (nothing to do) without it. [any thread: the caller's] */
int backend_bind_thread(struct backend *be);
/* Frees the backend and its context; NULL is a no-op. */
void backend_free(struct backend *be);

/* The CPU backend (fp32 compute, OpenBLAS matrix products, OpenMP threads).
 * n_threads <= 0 uses every core. Returns NULL only on host OOM. Free with backend_free. */
struct backend *backend_cpu_new(int n_threads);

/* The CUDA backend (tensor/cuda/, built only when CMake's KILN_CUDA is ON, which defines
 * KILN_HAVE_CUDA): fp32 storage and compute on device `device`, one stream, cuBLAS products.
 * Returns NULL with a message in err when the device is missing or cannot be opened. Free with
 * backend_free. Defined only in CUDA builds. */
struct backend *backend_cuda_new(int device, struct err *err);
/* Number of CUDA devices visible (0 when the driver is missing). Defined only in CUDA builds. */
int backend_cuda_count(void);
/* Starts loading cuBLAS and cuBLASLt (opened at run time: tensor/cuda/blas_load.cu) on a thread
 * of its own, so that their start-up overlaps the server's; the first GPU to open waits for it.
 * Optional (without it the first open loads them); never fails (a failed load is the open's
 * error). Defined only in CUDA builds. */
void backend_cuda_preload(void);

#endif
