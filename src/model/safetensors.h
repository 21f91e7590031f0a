/* model/safetensors.h -- reading and writing .safetensors files (prefix ckpt_).
 * Owns: struct ckpt (a read-only mmap of one file plus its parsed, validated header) and
 * struct ckpt_writer (a list of tensors streamed to `path.tmp`, then renamed to `path`).
 * Must not: interpret tensor names (layout.h and the model loaders do that) or touch devices.
 * Threads: a ckpt is immutable after ckpt_open, so any thread may read it concurrently;
 * a writer belongs to one thread.
 *
 * FORMAT. 8 bytes little-endian u64 N, then N bytes of JSON: an object mapping each tensor name
 * to {"dtype": "F16", "shape": [..], "data_offsets": [begin, end]} plus an optional
 * "__metadata__" object of string values; then the data section. Offsets are relative to the
 * start of the data section (byte 8 + N), `end` is exclusive.
 *
 * ALIGNMENT. `ckpt_tensor.data` points into the mapping and is only as aligned as the file
 * makes it (our writer pads the header so the data section starts at a multiple of 8, but a
 * tensor following an odd-sized one may be misaligned): read elements with memcpy, or use
 * ckpt_tensor_read_f32. */
#ifndef KILN_MODEL_SAFETENSORS_H
#define KILN_MODEL_SAFETENSORS_H

#include "base/err.h"
#include "tensor/tensor.h"

#include <stddef.h>
#include <stdint.h>

#define CKPT_MAX_DIMS 8
#define CKPT_MAX_HEADER (100u << 20) /* in bytes; larger headers are refused (safetensors' own cap) */

/* ===== Reader ===== */

struct ckpt_tensor {
    const char *name;                 /* owned by the ckpt */
    enum dtype dtype;                 /* F32, F16, BF16, I32, I64; DTYPE_COUNT for a known but
                                         unsupported dtype (F64, I8, U8, BOOL, F8_E4M3...) */
    int ndim;                         /* 0..CKPT_MAX_DIMS (0 = scalar) */
    int64_t shape[CKPT_MAX_DIMS];     /* outermost first; entries past ndim are 0 */
    const void *data;                 /* inside the read-only mapping (see ALIGNMENT) */
    size_t nbytes;                    /* = numel * element size, checked at open */
    const char *dtype_str;            /* the header's dtype string ("F16", "F64"); static */
};

struct ckpt {
    char *path;                       /* owned copy, for messages */
    void *map;                        /* mmap of the whole file (PROT_READ, MAP_PRIVATE) */
    size_t map_size;                  /* bytes mapped = file size */
    struct ckpt_tensor *tensors;      /* n_tensors entries, sorted by name (strcmp) */
    int n_tensors;
    char *names;                      /* storage for all tensor names */
    void *metadata;                   /* json_t* object of strings ("__metadata__"), or NULL */
    size_t data_start;                /* byte offset of the data section in the file: 8 + N */
    uint64_t file_dev, file_ino;      /* the file's identity when opened (fstat) ... */
    int64_t file_mtime_ns;            /* ... and its modification time: names this content */
};

/* Maps `path` read-only and validates its header (every check listed in safetensors.c).
 * The storage `ck` is the caller's. On success returns 0; release with ckpt_close.
 * On failure returns a negative status (ERR_IO: cannot open/stat/map; ERR_FORMAT: malformed;
 * ERR_NOMEM), fills err with a message naming the file (and the tensor, where one applies)
 * and leaves *ck zeroed, so ckpt_close(ck) is then a harmless no-op. */
int ckpt_open(struct ckpt *ck, const char *path, struct err *err);

/* Unmaps the file and frees everything ckpt_open allocated; zeroes *ck. Pointers obtained
 * from the ckpt (tensor data, names, metadata values) become invalid. NULL is a no-op. */
void ckpt_close(struct ckpt *ck);

/* Drops this process's resident pages of the mapping (madvise MADV_DONTNEED; the file's page
 * cache stays): after the weights were converted, they would otherwise count toward RSS a
 * second time. Tensor data stays readable (it is read from the file again if touched). */
void ckpt_release_pages(struct ckpt *ck);

/* Binary search by exact name; NULL if absent. The result lives as long as the ckpt. */
const struct ckpt_tensor *ckpt_find(const struct ckpt *ck, const char *name);

/* Value of `key` in the "__metadata__" map, or NULL. Lives as long as the ckpt. */
const char *ckpt_metadata_get(const struct ckpt *ck, const char *key);

/* Product of the dims (1 for a scalar, 0 if a dim is 0). */
int64_t ckpt_tensor_numel(const struct ckpt_tensor *t);

/* Converts a float tensor (F32, F16 or BF16) to float32 into out, which must hold numel
 * floats. Returns ERR_UNSUPPORTED (with a message naming the tensor) for other dtypes. */
int ckpt_tensor_read_f32(const struct ckpt_tensor *t, float *out, struct err *err);

/* ===== Writer =====
 * Two ways to write. Simple: add every tensor with its data (borrowed until the write), then
 * ckpt_writer_write(path). Streaming, for files too big to hold: add every tensor with data
 * NULL, ckpt_writer_begin(path) (writes the header), then ckpt_writer_stream the bytes of each
 * tensor in add order (any chunking), then ckpt_writer_finish (checks the byte count, renames).
 * The output is standard safetensors: header padded with spaces to a multiple of 8 (so the data
 * section is 8-aligned), data in add order, contiguous, no gaps (strict readers require it). */

struct ckpt_writer;

/* Never NULL (aborts on OOM); free with ckpt_writer_free. */
struct ckpt_writer *ckpt_writer_new(void);

/* Frees the writer; if a streaming write is in progress, removes its `.tmp` file. NULL ok. */
void ckpt_writer_free(struct ckpt_writer *w);

/* Declares one tensor. name is copied; shape is copied (ndim 0..CKPT_MAX_DIMS, dims >= 0);
 * data (numel * dtype_size bytes) is borrowed until ckpt_writer_write, or NULL when the bytes
 * will be streamed. ERR_INVALID for a duplicate or empty name, "__metadata__", a bad dtype,
 * ndim or dim, or a call after begin. */
int ckpt_writer_add(struct ckpt_writer *w, const char *name, enum dtype dtype, int ndim,
                    const int64_t *shape, const void *data, struct err *err);

/* Adds (or replaces) a "__metadata__" string entry; both strings are copied. */
int ckpt_writer_set_metadata(struct ckpt_writer *w, const char *key, const char *value, struct err *err);

/* Bytes the finished file will have (header + data), valid once all tensors are added. */
uint64_t ckpt_writer_file_size(const struct ckpt_writer *w);

/* Writes `path` in one go from the borrowed data of every tensor (none may be NULL).
 * Goes through `path.tmp` and rename(2), so a failed write never leaves a partial `path`. */
int ckpt_writer_write(struct ckpt_writer *w, const char *path, struct err *err);

/* Streaming write: creates `path.tmp` and writes the header. */
int ckpt_writer_begin(struct ckpt_writer *w, const char *path, struct err *err);
/* Appends n bytes of tensor data (in add order). ERR_INVALID past the declared total. */
int ckpt_writer_stream(struct ckpt_writer *w, const void *bytes, size_t n, struct err *err);
/* Checks that exactly the declared bytes were streamed, flushes, closes and renames to path.
 * On any failure the `.tmp` file is removed. */
int ckpt_writer_finish(struct ckpt_writer *w, struct err *err);

#endif
