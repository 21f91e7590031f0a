/* model/safetensors.c -- safetensors reader (mmap + validated header) and streaming writer.
 * Owns: the mapping, the sorted tensor table and the names of every struct ckpt; the entries,
 * the open FILE and the `.tmp` file of every struct ckpt_writer.
 * Must not: trust any byte of the file: every length, offset and type is checked before use,
 * and the fuzz test in tests/unit/model/test_safetensors.c runs this under ASan.
 * Threads: see safetensors.h.
 *
 * Checks made by ckpt_open, in order: the file is a regular file of at least 8 bytes; the header
 * length is at most CKPT_MAX_HEADER and fits in the file; the header is JSON (no duplicate keys)
 * and an object; "__metadata__", if present, is an object of strings; every other entry is an
 * object with a string "dtype" (supported, or known-but-unsupported), an array "shape" of at
 * most CKPT_MAX_DIMS non-negative integers and an array "data_offsets" of two non-negative
 * integers begin <= end <= data section size; numel * element size == end - begin (no overflow);
 * names have no NUL byte; no two non-empty byte ranges overlap. */
#include "model/safetensors.h"

#include "base/base.h"
#include "base/mem.h"
#include "base/status.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ===== Dtypes ===== */

/* Dtypes safetensors defines that kiln does not compute with: kept at open (so a file holding
 * one still loads), refused by ckpt_tensor_read_f32. Sizes in bytes per element. */
static const struct {
    const char *name;
    size_t size;
} UNSUPPORTED_DTYPES[] = {
    {"F64", 8}, {"I8", 1}, {"U8", 1}, {"I16", 2}, {"U16", 2}, {"U32", 4}, {"U64", 8},
    {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"F8_E8M0", 1},
};

/* Resolves a header dtype string. Returns its element size (0 if unknown), sets *dt (DTYPE_COUNT
 * for known-unsupported) and *canon (a static copy of the name, for ckpt_tensor.dtype_str). */
static size_t dtype_lookup(const char *s, enum dtype *dt, const char **canon) {
    enum dtype d = dtype_parse(s);
    if (d != DTYPE_COUNT) {
        *dt = d;
        *canon = dtype_name(d);
        return dtype_size(d);
    }
    for (size_t i = 0; i < ARRAY_LEN(UNSUPPORTED_DTYPES); i++) {
        if (strcmp(s, UNSUPPORTED_DTYPES[i].name) == 0) {
            *dt = DTYPE_COUNT;
            *canon = UNSUPPORTED_DTYPES[i].name;
            return UNSUPPORTED_DTYPES[i].size;
        }
    }
    return 0;
}

/* ===== Reader ===== */

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const struct ckpt_tensor *)a)->name, ((const struct ckpt_tensor *)b)->name);
}

/* Sort key for the overlap check: a tensor's byte range. */
struct range {
    size_t begin, end;
    int idx;
};

static int cmp_range(const void *a, const void *b) {
    const struct range *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* Reads a JSON integer that must be >= 0 into *out. */
static bool json_get_nonneg(const json_t *v, int64_t *out) {
    if (!json_is_integer(v)) return false;
    json_int_t x = json_integer_value(v);
    if (x < 0) return false;
    *out = (int64_t)x;
    return true;
}

/* Validates one header entry and fills t (except name and data). data_size = bytes of the
 * data section. Returns 0 or ERR_FORMAT with a message naming the tensor. */
static int parse_entry(const char *path, const char *name, const json_t *v, size_t data_size,
                       struct ckpt_tensor *t, size_t *begin_out, struct err *err) {
    if (!json_is_object(v))
        return err_set(err, STATUS_ERR_FORMAT, "%s: tensor '%s': header entry is not a JSON object", path, name);

    const json_t *jd = json_object_get(v, "dtype");
    const json_t *js = json_object_get(v, "shape");
    const json_t *jo = json_object_get(v, "data_offsets");
    if (!jd || !js || !jo)
        return err_set(err, STATUS_ERR_FORMAT, "%s: tensor '%s': entry lacks %s", path, name,
                       !jd ? "\"dtype\"" : !js ? "\"shape\"" : "\"data_offsets\"");
    if (!json_is_string(jd))
        return err_set(err, STATUS_ERR_FORMAT, "%s: tensor '%s': \"dtype\" is not a string", path, name);
    if (!json_is_array(js))
        return err_set(err, STATUS_ERR_FORMAT, "%s: tensor '%s': \"shape\" is not an array", path, name);
    if (!json_is_array(jo) || json_array_size(jo) != 2)
        return err_set(err, STATUS_ERR_FORMAT, "%s: tensor '%s': \"data_offsets\" is not an array of 2 integers",
                       path, name);

    /* dtype */
    const char *ds = json_string_value(jd);
    size_t esize = dtype_lookup(ds, &t->dtype, &t->dtype_str);
    if (esize == 0)
        return err_set(err, STATUS_ERR_FORMAT, "%s: tensor '%s': unknown dtype \"%.32s\"", path, name, ds);

    /* shape */
    size_t nd = json_array_size(js);
    if (nd > CKPT_MAX_DIMS)
        return err_set(err, STATUS_ERR_FORMAT, "%s: tensor '%s': %zu dimensions (at most %d supported)", path,
                       name, nd, CKPT_MAX_DIMS);
    t->ndim = (int)nd;
    uint64_t numel = 1;
    bool overflow = false;
    for (size_t i = 0; i < nd; i++) {
        const json_t *jv = json_array_get(js, i);
        if (!json_is_integer(jv))
            return err_set(err, STATUS_ERR_FORMAT, "%s: tensor '%s': shape[%zu] is not an integer", path, name, i);
        if (json_integer_value(jv) < 0)
            return err_set(err, STATUS_ERR_FORMAT, "%s: tensor '%s': shape[%zu] = %lld is negative", path, name, i,
                           (long long)json_integer_value(jv));
        t->shape[i] = (int64_t)json_integer_value(jv);
        overflow |= __builtin_mul_overflow(numel, (uint64_t)t->shape[i], &numel);
    }
    uint64_t nbytes = 0;
    overflow |= __builtin_mul_overflow(numel, (uint64_t)esize, &nbytes);

    /* data_offsets */
    int64_t b, e;
    if (!json_get_nonneg(json_array_get(jo, 0), &b) || !json_get_nonneg(json_array_get(jo, 1), &e))
        return err_set(err, STATUS_ERR_FORMAT, "%s: tensor '%s': \"data_offsets\" are not non-negative integers",
                       path, name);
    if (b > e)
        return err_set(err, STATUS_ERR_FORMAT, "%s: tensor '%s': data_offsets [%lld, %lld] are reversed", path,
                       name, (long long)b, (long long)e);
    if ((uint64_t)e > data_size)
        return err_set(err, STATUS_ERR_FORMAT,
                       "%s: tensor '%s': data_offsets [%lld, %lld] run past the data section (%zu bytes)", path,
                       name, (long long)b, (long long)e, data_size);
    if (overflow || nbytes != (uint64_t)(e - b))
        return err_set(err, STATUS_ERR_FORMAT,
                       "%s: tensor '%s': shape and dtype %s need %s%llu bytes but data_offsets cover %lld", path,
                       name, t->dtype_str, overflow ? "more than " : "",
                       overflow ? (unsigned long long)UINT64_MAX : (unsigned long long)nbytes, (long long)(e - b));
    t->nbytes = (size_t)nbytes;
    *begin_out = (size_t)b;
    return 0;
}

/* Parses and validates the header of the mapped file ck->map; fills tensors/names/metadata. */
static int parse_header(struct ckpt *ck, struct err *err) {
    const char *path = ck->path;
    const unsigned char *p = ck->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | p[i]; /* u64 little-endian */
    if (hlen == 0)
        return err_set(err, STATUS_ERR_FORMAT, "%s: header length is 0 (not a safetensors file?)", path);
    if (hlen > CKPT_MAX_HEADER)
        return err_set(err, STATUS_ERR_FORMAT, "%s: header length %llu is absurd (max %u; not a safetensors file?)",
                       path, (unsigned long long)hlen, CKPT_MAX_HEADER);
    if (hlen > ck->map_size - 8)
        return err_set(err, STATUS_ERR_FORMAT, "%s: header length %llu runs past the end of the file (%zu bytes)",
                       path, (unsigned long long)hlen, ck->map_size);
    ck->data_start = 8 + (size_t)hlen;
    size_t data_size = ck->map_size - ck->data_start;

    json_error_t jerr;
    json_t *root = json_loadb((const char *)p + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return err_set(err, STATUS_ERR_FORMAT, "%s: header is not valid JSON: %s (line %d, column %d)", path,
                       jerr.text, jerr.line, jerr.column);
    int rc = 0;
    struct range *ranges = NULL;
    if (!json_is_object(root)) {
        rc = err_set(err, STATUS_ERR_FORMAT, "%s: header is not a JSON object", path);
        goto out;
    }

    /* Pass 1: metadata, count, name bytes. */
    const char *key;
    size_t klen;
    json_t *val;
    size_t n = 0, name_bytes = 0;
    json_object_keylen_foreach(root, key, klen, val) {
        if (strlen(key) != klen) {
            rc = err_set(err, STATUS_ERR_FORMAT, "%s: a tensor name contains a NUL byte ('%s...')", path, key);
            goto out;
        }
        if (strcmp(key, "__metadata__") == 0) {
            if (!json_is_object(val)) {
                rc = err_set(err, STATUS_ERR_FORMAT, "%s: \"__metadata__\" is not a JSON object", path);
                goto out;
            }
            const char *mk;
            json_t *mv;
            json_object_foreach(val, mk, mv) {
                if (!json_is_string(mv)) {
                    rc = err_set(err, STATUS_ERR_FORMAT, "%s: \"__metadata__\" value of '%s' is not a string", path,
                                 mk);
                    goto out;
                }
            }
            ck->metadata = json_incref(val);
            continue;
        }
        n++;
        name_bytes += klen + 1;
    }
    if (n > INT32_MAX) {
        rc = err_set(err, STATUS_ERR_FORMAT, "%s: too many tensors (%zu)", path, n);
        goto out;
    }

    ck->tensors = mem_try_calloc(n ? n : 1, sizeof *ck->tensors);
    ck->names = mem_try_alloc(name_bytes ? name_bytes : 1);
    ranges = mem_try_alloc((n ? n : 1) * sizeof *ranges);
    if (!ck->tensors || !ck->names || !ranges) {
        rc = err_set(err, STATUS_ERR_NOMEM, "%s: out of memory for a header of %zu tensors", path, n);
        goto out;
    }

    /* Pass 2: entries. */
    size_t i = 0, off = 0;
    json_object_keylen_foreach(root, key, klen, val) {
        if (strcmp(key, "__metadata__") == 0) continue;
        struct ckpt_tensor *t = &ck->tensors[i];
        memcpy(ck->names + off, key, klen + 1);
        t->name = ck->names + off;
        off += klen + 1;
        size_t begin = 0;
        rc = parse_entry(path, t->name, val, data_size, t, &begin, err);
        if (rc) goto out;
        t->data = (const unsigned char *)ck->map + ck->data_start + begin;
        ranges[i] = (struct range){begin, begin + t->nbytes, (int)i};
        i++;
    }
    ASSERT(i == n);
    ck->n_tensors = (int)n;

    /* Overlaps: sort by begin; a non-empty range must start at or after every earlier end. */
    qsort(ranges, n, sizeof *ranges, cmp_range);
    size_t max_end = 0;
    int max_idx = -1;
    for (size_t k = 0; k < n; k++) {
        if (ranges[k].begin == ranges[k].end) continue;
        if (max_idx >= 0 && ranges[k].begin < max_end) {
            rc = err_set(err, STATUS_ERR_FORMAT, "%s: tensors '%s' and '%s' have overlapping data ranges", path,
                         ck->tensors[max_idx].name, ck->tensors[ranges[k].idx].name);
            goto out;
        }
        max_end = ranges[k].end;
        max_idx = ranges[k].idx;
    }

    /* Sort by name for ckpt_find. JSON_REJECT_DUPLICATES already refused duplicate keys. */
    qsort(ck->tensors, n, sizeof *ck->tensors, cmp_tensor_name);
    for (size_t k = 1; k < n; k++) {
        if (NEVER(strcmp(ck->tensors[k - 1].name, ck->tensors[k].name) == 0)) {
            rc = err_set(err, STATUS_ERR_FORMAT, "%s: duplicate tensor name '%s'", path, ck->tensors[k].name);
            goto out;
        }
    }

out:
    mem_free(ranges);
    json_decref(root);
    return rc;
}

int ckpt_open(struct ckpt *ck, const char *path, struct err *err) {
    memset(ck, 0, sizeof *ck);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return err_set(err, STATUS_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return err_set(err, STATUS_ERR_IO, "cannot stat %s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return err_set(err, STATUS_ERR_IO, "%s is not a regular file", path);
    }
    if (st.st_size < 8) {
        close(fd);
        return err_set(err, STATUS_ERR_FORMAT, "%s: file is %lld bytes, too short for a safetensors header", path,
                       (long long)st.st_size);
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd);
    if (map == MAP_FAILED) return err_set(err, STATUS_ERR_IO, "cannot map %s: %s", path, strerror(map_errno));

    ck->path = mem_strdup(path);
    ck->map = map;
    ck->map_size = (size_t)st.st_size;
    ck->file_dev = (uint64_t)st.st_dev;
    ck->file_ino = (uint64_t)st.st_ino;
    ck->file_mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    int rc = parse_header(ck, err);
    if (rc) ckpt_close(ck);
    return rc;
}

void ckpt_release_pages(struct ckpt *ck) {
    if (ck->map && ck->map_size) (void)madvise(ck->map, ck->map_size, MADV_DONTNEED); /* advisory: errors are harmless */
}

void ckpt_close(struct ckpt *ck) {
    if (!ck) return;
    if (ck->map) munmap(ck->map, ck->map_size);
    json_decref((json_t *)ck->metadata);
    mem_free(ck->tensors);
    mem_free(ck->names);
    mem_free(ck->path);
    memset(ck, 0, sizeof *ck);
}

const struct ckpt_tensor *ckpt_find(const struct ckpt *ck, const char *name) {
    if (!ck->tensors || ck->n_tensors == 0) return NULL;
    struct ckpt_tensor key = {.name = name};
    return bsearch(&key, ck->tensors, (size_t)ck->n_tensors, sizeof key, cmp_tensor_name);
}

const char *ckpt_metadata_get(const struct ckpt *ck, const char *key) {
    if (!ck->metadata) return NULL;
    return json_string_value(json_object_get(ck->metadata, key)); /* NULL if absent */
}

int64_t ckpt_tensor_numel(const struct ckpt_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

int ckpt_tensor_read_f32(const struct ckpt_tensor *t, float *out, struct err *err) {
    size_t n = (size_t)ckpt_tensor_numel(t);
    const unsigned char *src = t->data;
    switch (t->dtype) {
    case DTYPE_F32:
        memcpy(out, src, n * 4);
        return 0;
    case DTYPE_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2); /* data may be unaligned (see safetensors.h) */
            out[i] = f16_to_f32(h);
        }
        return 0;
    case DTYPE_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            out[i] = bf16_to_f32(h);
        }
        return 0;
    default:
        return err_set(err, STATUS_ERR_UNSUPPORTED, "tensor '%s' has dtype %s, not a float type kiln reads (F32, F16, BF16)",
                       t->name, t->dtype_str ? t->dtype_str : "?");
    }
}

/* ===== Writer ===== */

struct writer_entry {
    char *name;                   /* owned */
    enum dtype dtype;
    int ndim;
    int64_t shape[CKPT_MAX_DIMS];
    const void *data;             /* borrowed, or NULL when streamed */
    uint64_t nbytes;
    uint64_t begin;               /* offset in the data section */
};

struct ckpt_writer {
    struct writer_entry *e;       /* n entries in add order */
    int n, cap;
    json_t *metadata;             /* object of strings, or NULL */
    uint64_t data_total;          /* sum of nbytes */
    /* streaming state, between begin and finish */
    FILE *f;
    char *path;                   /* final path (owned) */
    char *tmp_path;               /* path + ".tmp" (owned) */
    uint64_t streamed;            /* data bytes written so far */
};

struct ckpt_writer *ckpt_writer_new(void) { return mem_calloc(1, sizeof(struct ckpt_writer)); }

/* Drops an in-progress file (error path or free). */
static void writer_abort(struct ckpt_writer *w) {
    if (w->f) {
        fclose(w->f);
        w->f = NULL;
        unlink(w->tmp_path);
    }
    mem_free(w->path);
    mem_free(w->tmp_path);
    w->path = w->tmp_path = NULL;
    w->streamed = 0;
}

void ckpt_writer_free(struct ckpt_writer *w) {
    if (!w) return;
    writer_abort(w);
    for (int i = 0; i < w->n; i++) mem_free(w->e[i].name);
    mem_free(w->e);
    json_decref(w->metadata);
    mem_free(w);
}

int ckpt_writer_add(struct ckpt_writer *w, const char *name, enum dtype dtype, int ndim, const int64_t *shape,
                    const void *data, struct err *err) {
    if (w->f) return err_set(err, STATUS_ERR_INVALID, "ckpt_writer_add('%s') after ckpt_writer_begin", name);
    if (!name || !*name || strcmp(name, "__metadata__") == 0)
        return err_set(err, STATUS_ERR_INVALID, "invalid tensor name '%s'", name ? name : "(null)");
    if ((unsigned)dtype >= DTYPE_COUNT)
        return err_set(err, STATUS_ERR_INVALID, "tensor '%s': invalid dtype %d", name, (int)dtype);
    if (ndim < 0 || ndim > CKPT_MAX_DIMS)
        return err_set(err, STATUS_ERR_INVALID, "tensor '%s': ndim %d out of 0..%d", name, ndim, CKPT_MAX_DIMS);
    for (int i = 0; i < w->n; i++)
        if (strcmp(w->e[i].name, name) == 0)
            return err_set(err, STATUS_ERR_INVALID, "duplicate tensor name '%s'", name);
    uint64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return err_set(err, STATUS_ERR_INVALID, "tensor '%s': negative dim %lld", name, (long long)shape[i]);
        if (__builtin_mul_overflow(numel, (uint64_t)shape[i], &numel))
            return err_set(err, STATUS_ERR_INVALID, "tensor '%s': too many elements", name);
    }
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 64;
        w->e = mem_realloc(w->e, (size_t)w->cap * sizeof *w->e);
    }
    struct writer_entry *e = &w->e[w->n++];
    memset(e, 0, sizeof *e);
    e->name = mem_strdup(name);
    e->dtype = dtype;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++) e->shape[i] = shape[i];
    e->data = data;
    e->nbytes = numel * dtype_size(dtype);
    e->begin = w->data_total;
    w->data_total += e->nbytes;
    return 0;
}

int ckpt_writer_set_metadata(struct ckpt_writer *w, const char *key, const char *value, struct err *err) {
    if (!w->metadata) w->metadata = json_object();
    if (json_object_set_new(w->metadata, key, json_string(value)) != 0)
        return err_set(err, STATUS_ERR_INVALID, "invalid metadata entry '%s' (not UTF-8?)", key);
    return 0;
}

/* Builds the JSON header, padded with spaces to a multiple of 8. Caller frees with mem_free. */
static char *writer_header(const struct ckpt_writer *w, size_t *len_out) {
    json_t *root = json_object();
    if (w->metadata) json_object_set(root, "__metadata__", w->metadata);
    for (int i = 0; i < w->n; i++) {
        const struct writer_entry *e = &w->e[i];
        json_t *shape = json_array();
        for (int d = 0; d < e->ndim; d++) json_array_append_new(shape, json_integer(e->shape[d]));
        json_t *ent = json_pack("{s:s, s:o, s:[I,I]}", "dtype", dtype_name(e->dtype), "shape", shape,
                                "data_offsets", (json_int_t)e->begin, (json_int_t)(e->begin + e->nbytes));
        ASSERT(ent);
        json_object_set_new(root, e->name, ent);
    }
    size_t len = json_dumpb(root, NULL, 0, JSON_COMPACT); /* size only */
    ASSERT(len > 0);
    size_t padded = (len + 7) & ~(size_t)7;
    char *out = mem_alloc(padded + 1);
    ASSERT(json_dumpb(root, out, len, JSON_COMPACT) == len);
    json_decref(root);
    memset(out + len, ' ', padded - len);
    out[padded] = 0;
    *len_out = padded;
    return out;
}

uint64_t ckpt_writer_file_size(const struct ckpt_writer *w) {
    size_t hlen;
    char *h = writer_header(w, &hlen);
    mem_free(h);
    return 8 + hlen + w->data_total;
}

int ckpt_writer_begin(struct ckpt_writer *w, const char *path, struct err *err) {
    if (w->f) return err_set(err, STATUS_ERR_INVALID, "ckpt_writer_begin(%s): a write is already in progress", path);
    size_t plen = strlen(path);
    w->path = mem_strdup(path);
    w->tmp_path = mem_alloc(plen + 5);
    memcpy(w->tmp_path, path, plen);
    memcpy(w->tmp_path + plen, ".tmp", 5);
    w->f = fopen(w->tmp_path, "wb");
    if (!w->f) {
        int rc = err_set(err, STATUS_ERR_IO, "cannot create %s: %s", w->tmp_path, strerror(errno));
        writer_abort(w);
        return rc;
    }
    setvbuf(w->f, NULL, _IOFBF, 1 << 20);
    size_t hlen;
    char *h = writer_header(w, &hlen);
    unsigned char lenbuf[8];
    for (int i = 0; i < 8; i++) lenbuf[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    bool ok = fwrite(lenbuf, 1, 8, w->f) == 8 && fwrite(h, 1, hlen, w->f) == hlen;
    mem_free(h);
    if (!ok) {
        int rc = err_set(err, STATUS_ERR_IO, "cannot write %s: %s", w->tmp_path, strerror(errno));
        writer_abort(w);
        return rc;
    }
    w->streamed = 0;
    return 0;
}

int ckpt_writer_stream(struct ckpt_writer *w, const void *bytes, size_t n, struct err *err) {
    if (!w->f) return err_set(err, STATUS_ERR_INVALID, "ckpt_writer_stream without ckpt_writer_begin");
    if (n > w->data_total - w->streamed) {
        int rc = err_set(err, STATUS_ERR_INVALID, "%s: %llu bytes streamed past the declared %llu", w->path,
                         (unsigned long long)(w->streamed + n), (unsigned long long)w->data_total);
        writer_abort(w);
        return rc;
    }
    if (n && fwrite(bytes, 1, n, w->f) != n) {
        int rc = err_set(err, STATUS_ERR_IO, "cannot write %s: %s", w->tmp_path, strerror(errno));
        writer_abort(w);
        return rc;
    }
    w->streamed += n;
    return 0;
}

int ckpt_writer_finish(struct ckpt_writer *w, struct err *err) {
    if (!w->f) return err_set(err, STATUS_ERR_INVALID, "ckpt_writer_finish without ckpt_writer_begin");
    int rc = 0;
    if (w->streamed != w->data_total) {
        rc = err_set(err, STATUS_ERR_INVALID, "%s: %llu of %llu data bytes streamed", w->path,
                     (unsigned long long)w->streamed, (unsigned long long)w->data_total);
        writer_abort(w);
        return rc;
    }
    if (fflush(w->f) != 0 || fsync(fileno(w->f)) != 0) {
        rc = err_set(err, STATUS_ERR_IO, "cannot write %s: %s", w->tmp_path, strerror(errno));
        writer_abort(w);
        return rc;
    }
    FILE *f = w->f;
    w->f = NULL;
    if (fclose(f) != 0) {
        rc = err_set(err, STATUS_ERR_IO, "cannot close %s: %s", w->tmp_path, strerror(errno));
        unlink(w->tmp_path);
    } else if (rename(w->tmp_path, w->path) != 0) {
        rc = err_set(err, STATUS_ERR_IO, "cannot rename %s to %s: %s", w->tmp_path, w->path, strerror(errno));
        unlink(w->tmp_path);
    }
    writer_abort(w); /* frees the paths; the file is closed already */
    return rc;
}

int ckpt_writer_write(struct ckpt_writer *w, const char *path, struct err *err) {
    for (int i = 0; i < w->n; i++)
        if (!w->e[i].data && w->e[i].nbytes)
            return err_set(err, STATUS_ERR_INVALID, "%s: tensor '%s' has no data (added for streaming)", path,
                           w->e[i].name);
    int rc = ckpt_writer_begin(w, path, err);
    for (int i = 0; i < w->n && !rc; i++) rc = ckpt_writer_stream(w, w->e[i].data, w->e[i].nbytes, err);
    if (!rc) rc = ckpt_writer_finish(w, err);
    return rc;
}
