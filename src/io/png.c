/* io/png.c -- PNG encoding (our writer: filters + zlib on several threads) and decoding
 * (libspng), with text chunks.
 * Owns: the spng contexts, zlib streams and encoder threads it creates (all freed or joined
 * before returning).
 * Must not: touch image semantics beyond 8-bit conversion.
 * Threads: any; png_encode runs up to 16 threads of its own for one image.
 * Ownership: see png.h. libspng and zlib allocate through our counted allocator. */
#include "io/png.h"
#include "base/base.h"

#include "base/mem.h"
#include "base/status.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <spng.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#define ZLIB_CONST /* next_in is const */
#include <zlib.h>

/* libspng allocates with these, so its memory shows in mem_used(). */
static void *spng_malloc(size_t n) { return mem_try_alloc(n); }
static void *spng_realloc(void *p, size_t n) { return mem_try_realloc(p, n); }
static void *spng_calloc(size_t n, size_t size) { return mem_try_calloc(n, size); }
static void spng_free(void *p) { mem_free(p); }

static struct spng_alloc counted = {
    .malloc_fn = spng_malloc, .realloc_fn = spng_realloc, .calloc_fn = spng_calloc, .free_fn = spng_free};

/* The pixel and filter loops are vectorised (KILN_VECTORIZE): 512x512 RGB filters in ~1.5 ms
 * instead of ~7.7, and 4 such images convert from float in ~3 ms instead of 7.6 (GCC 12, here). */

/* ===== Pixels ===== */

KILN_VECTORIZE void png_from_float(const float *src, uint8_t *dst, size_t n) {
    /* branch-free selects, so that the loop vectorises */
    for (size_t i = 0; i < n; i++) {
        float v = 255.0f * src[i];
        v = v > 0.0f ? v : 0.0f; /* also NaN */
        v = v < 255.0f ? v : 255.0f;
        dst[i] = (uint8_t)(int32_t)v;
    }
}

/* One part of png_from_float_threads, on a thread of its own. */
struct from_float_part {
    const float *src;
    uint8_t *dst;
    size_t n;
};

static void *from_float_run(void *p) {
    struct from_float_part *c = p;
    png_from_float(c->src, c->dst, c->n);
    return NULL;
}

void png_from_float_threads(const float *src, uint8_t *dst, size_t n, int threads) {
    enum { MAX_PARTS = 16, MIN_PART = 1 << 17 };
    int parts = threads < MAX_PARTS ? threads : MAX_PARTS;
    if ((size_t)parts > n / MIN_PART) parts = (int)(n / MIN_PART);
    if (parts < 2) {
        png_from_float(src, dst, n);
        return;
    }
    struct from_float_part c[MAX_PARTS];
    pthread_t tid[MAX_PARTS];
    bool started[MAX_PARTS] = {false};
    size_t per = (n + (size_t)parts - 1) / (size_t)parts;
    for (int i = 0; i < parts; i++) {
        size_t off = (size_t)i * per;
        c[i] = (struct from_float_part){src + off, dst + off, off < n ? (n - off < per ? n - off : per) : 0};
        if (i > 0) started[i] = pthread_create(&tid[i], NULL, from_float_run, &c[i]) == 0;
    }
    from_float_run(&c[0]);
    for (int i = 1; i < parts; i++) {
        if (started[i]) pthread_join(tid[i], NULL);
        else from_float_run(&c[i]); /* a thread that could not start: here */
    }
}

/* ===== Encoding: our own writer =====
 * DESIGN. libspng encodes on one thread, and zlib is most of that time (512x512 RGB at level 4:
 * ~25 of ~38 ms here). So the encoder is ours (libspng still decodes):
 *   1. The rows are split into strips by size alone (one strip under ENC_ONE_STRIP_BELOW bytes
 *      of filtered data, else up to ENC_MAX_STRIPS strips of at least ENC_STRIP_MIN bytes), so
 *      the bytes written never depend on the thread count or the machine.
 *   2. Each strip, on whichever thread takes it: filter its rows (a row's filter only needs the
 *      raw row above, which is in the input), Adler-32 of the filtered bytes, and a raw deflate
 *      stream of its own (windowBits -15, memLevel 8, the caller's level) that ends with
 *      Z_FULL_FLUSH (byte-aligned, nothing refers back across the cut) or, for the last strip,
 *      Z_FINISH. Concatenated, the strips are one valid deflate stream, as pigz makes them.
 *   3. The caller's thread wraps them in a zlib header (CMF 0x78; FLEVEL as zlib sets it for
 *      the level) and the Adler-32 of all the filtered data (adler32_combine of the strips'),
 *      and writes signature, IHDR, tEXt chunks, IDAT chunk(s) and IEND, CRCs by zlib's crc32.
 * Filters, as libspng 0.7 (and libpng, PIL) choose them: for each row try None, Sub, Up,
 * Average and Paeth and keep the one with the least sum of |byte as int8|, the lowest type on a
 * tie (the row above the first is zeros). At level 0 every row is None and the strategy is
 * Z_DEFAULT_STRATEGY, otherwise Z_FILTERED: libspng's defaults, so sizes stay close to its.
 * Threads: png_encode makes its threads per call (pthreads) and joins them before it returns;
 * they share only the read-only input and disjoint parts of the encoder's buffers. */

enum {
    ENC_MAX_THREADS = 16,             /* threads per image, at most */
    ENC_MAX_STRIPS = 16,              /* strips per image, at most (512x512 RGB: 12 of 64 KiB, so a
                                         16-CPU machine has CPUs to spare: one strip late behind
                                         another thread would delay the whole image) */
    ENC_STRIP_MIN = 64 << 10,         /* bytes of filtered data per strip, at least */
    ENC_ONE_STRIP_BELOW = 256 << 10,  /* in bytes of filtered data: smaller images use one strip */
    ENC_ZLIB_PIECE = 1 << 30,         /* in bytes: most input or output handed to deflate at once */
    ENC_CHUNK_MAX = 1 << 30,          /* bytes of data per IDAT chunk, at most (PNG: 2^31 - 1) */
    PNG_DIM_MAX = 0x7fffffff,         /* PNG's largest width and height */
};

/* zlib allocates through the counted allocator too. */
static voidpf z_alloc(voidpf opaque, uInt items, uInt size) {
    (void)opaque;
    return mem_try_alloc((size_t)items * size); /* two 32-bit factors: no overflow in size_t */
}
static void z_free(voidpf opaque, voidpf p) {
    (void)opaque;
    mem_free(p);
}

/* |d| with the low byte of d read as an int8: the heuristic's cost of one filtered byte. */
static inline uint32_t cost_s8(int d) {
    int v = (int8_t)(uint8_t)d;
    return (uint32_t)(v < 0 ? -v : v);
}

/* The PNG spec's Paeth predictor from left a, above b and upper-left c (p = a + b - c, so
 * |p - a| = |b - c| and so on), written without branches so that loops over it vectorize. */
static inline int paeth(int a, int b, int c) {
    int pa = abs(b - c), pb = abs(a - c), pc = abs(a + b - 2 * c);
    int bc = pb <= pc ? b : c;
    return pa <= pb && pa <= pc ? a : bc;
}

/* The byte filter type f makes of x, with left a, above b and upper-left c. */
static inline uint8_t filter_byte(int f, int x, int a, int b, int c) {
    switch (f) {
    case 1: return (uint8_t)(x - a);
    case 2: return (uint8_t)(x - b);
    case 3: return (uint8_t)(x - ((a + b) >> 1));
    case 4: return (uint8_t)(x - paeth(a, b, c));
    default: return (uint8_t)x;
    }
}

enum { FILTER_BLOCK = 1 << 22 }; /* bytes per 32-bit partial sum (4 Mi * 128 < 2^32) */

/* Filters one row of n bytes (bpp bytes a pixel; up: the raw row above, zeros for the first)
 * into dst[0] = the filter type and dst[1..n] = the filtered bytes. adaptive: choose as the
 * DESIGN note says; otherwise None. First the five costs in one pass that stores nothing (it
 * vectorizes), then the chosen filter. */
KILN_VECTORIZE static void filter_row(uint8_t *restrict dst, const uint8_t *restrict row, const uint8_t *restrict up,
                                        size_t n, size_t bpp, bool adaptive) {
    if (!adaptive) {
        dst[0] = 0;
        memcpy(dst + 1, row, n);
        return;
    }
    uint64_t cost[5] = {0};
    size_t lead = bpp < n ? bpp : n;
    for (size_t i = 0; i < lead; i++) { /* the first pixel: no left neighbours (a = c = 0) */
        int x = row[i], b = up[i];
        cost[0] += cost_s8(x);
        cost[1] += cost_s8(x);
        cost[2] += cost_s8(x - b);
        cost[3] += cost_s8(x - (b >> 1));
        cost[4] += cost_s8(x - b); /* paeth(0, b, 0) = b */
    }
    for (size_t i0 = lead; i0 < n; i0 += FILTER_BLOCK) {
        size_t i1 = n - i0 < FILTER_BLOCK ? n : i0 + FILTER_BLOCK;
        uint32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0;
        for (size_t i = i0; i < i1; i++) {
            int x = row[i], a = row[i - bpp], b = up[i], c = up[i - bpp];
            s0 += cost_s8(x);
            s1 += cost_s8(x - a);
            s2 += cost_s8(x - b);
            s3 += cost_s8(x - ((a + b) >> 1));
            s4 += cost_s8(x - paeth(a, b, c));
        }
        cost[0] += s0, cost[1] += s1, cost[2] += s2, cost[3] += s3, cost[4] += s4;
    }
    int best = 0;
    for (int f = 1; f < 5; f++)
        if (cost[f] < cost[best]) best = f;
    dst[0] = (uint8_t)best;
    uint8_t *out = dst + 1;
    for (size_t i = 0; i < lead; i++) out[i] = filter_byte(best, row[i], 0, up[i], 0);
    switch (best) { /* one loop per filter, so that each vectorizes */
    case 0: memcpy(out + lead, row + lead, n - lead); break;
    case 1: for (size_t i = lead; i < n; i++) out[i] = (uint8_t)(row[i] - row[i - bpp]); break;
    case 2: for (size_t i = lead; i < n; i++) out[i] = (uint8_t)(row[i] - up[i]); break;
    case 3: for (size_t i = lead; i < n; i++) out[i] = (uint8_t)(row[i] - ((row[i - bpp] + up[i]) >> 1)); break;
    default:
        for (size_t i = lead; i < n; i++) out[i] = (uint8_t)(row[i] - paeth(row[i - bpp], up[i], up[i - bpp]));
    }
}

/* One strip of rows and what its thread made of it. */
struct enc_strip {
    uint32_t y0, y1;   /* rows [y0, y1) */
    uint8_t *z;        /* raw deflate bytes (owned; mem_free) */
    size_t z_len;      /* bytes used in z */
    size_t z_cap;      /* bytes allocated in z */
    uLong adler;       /* Adler-32 of the strip's filtered bytes */
    int rc;            /* 0 or a negative status, message in err */
    struct err err;    /* why the strip failed */
};

/* One image being encoded; read-only once threads start, but for `next`. */
struct encoder {
    const uint8_t *pixels;  /* the caller's rows, w * bpp bytes each */
    uint8_t *zeros;         /* one row of zeros (the row above the first) */
    uint8_t *filtered;      /* h rows of 1 + stride bytes: filter type, filtered bytes */
    size_t stride;          /* bytes per input row */
    size_t bpp;             /* bytes per pixel (3 or 4) */
    int level;              /* zlib level 0..9 */
    struct enc_strip *strips;
    int n_strips;
    atomic_int next;        /* the next strip to take */
};

/* Deflates in[0..len) into s->z with `flush` at the end (Z_FULL_FLUSH or Z_FINISH). */
static int deflate_strip(const struct encoder *e, struct enc_strip *s, const uint8_t *in, size_t len, int flush) {
    z_stream zs = {.zalloc = z_alloc, .zfree = z_free};
    int strategy = e->level == 0 ? Z_DEFAULT_STRATEGY : Z_FILTERED;
    int ze = deflateInit2(&zs, e->level, Z_DEFLATED, -15, 8, strategy);
    if (ze != Z_OK)
        return err_set(&s->err, ze == Z_MEM_ERROR ? STATUS_ERR_NOMEM : STATUS_ERR_INTERNAL,
                       "PNG: zlib deflateInit2 (level %d) failed: %s", e->level, zError(ze));
    int rc = 0;
    s->z_cap = (size_t)deflateBound(&zs, (uLong)len) + 64; /* + the flush's empty stored block */
    s->z = mem_try_alloc(s->z_cap);
    if (!s->z) {
        rc = err_set(&s->err, STATUS_ERR_NOMEM, "PNG: out of memory for %zu compressed bytes", s->z_cap);
        goto done;
    }
    size_t left = len;
    for (;;) {
        if (zs.avail_in == 0 && left) {
            uInt n = left > ENC_ZLIB_PIECE ? ENC_ZLIB_PIECE : (uInt)left;
            zs.next_in = in;
            zs.avail_in = n;
            in += n;
            left -= n;
        }
        if (s->z_cap - s->z_len < 16) { /* deflateBound was short (a flush may need more); zlib asks
                                           for more than 6 bytes of room on a flush */
            uint8_t *z = mem_try_realloc(s->z, s->z_cap * 2);
            if (!z) {
                rc = err_set(&s->err, STATUS_ERR_NOMEM, "PNG: out of memory for %zu compressed bytes", s->z_cap * 2);
                goto done;
            }
            s->z = z;
            s->z_cap *= 2;
        }
        size_t room = s->z_cap - s->z_len;
        zs.next_out = s->z + s->z_len;
        zs.avail_out = room > ENC_ZLIB_PIECE ? ENC_ZLIB_PIECE : (uInt)room;
        uInt given = zs.avail_out;
        int fl = left ? Z_NO_FLUSH : flush;
        ze = deflate(&zs, fl);
        s->z_len += given - zs.avail_out;
        if (ze == Z_STREAM_ERROR) {
            rc = err_set(&s->err, STATUS_ERR_INTERNAL, "PNG: zlib deflate failed: %s", zError(ze));
            goto done;
        }
        if (left) continue;
        if (fl == Z_FINISH ? ze == Z_STREAM_END : zs.avail_in == 0 && zs.avail_out != 0) break;
    }
done:
    deflateEnd(&zs);
    return rc;
}

/* Thread body: takes strips until none is left. */
static void *encode_strips(void *p) {
    struct encoder *e = p;
    size_t row = 1 + e->stride;
    for (int i; (i = atomic_fetch_add(&e->next, 1)) < e->n_strips;) {
        struct enc_strip *s = &e->strips[i];
        uint8_t *f = e->filtered + (size_t)s->y0 * row;
        for (uint32_t y = s->y0; y < s->y1; y++) {
            const uint8_t *px = e->pixels + (size_t)y * e->stride;
            filter_row(e->filtered + (size_t)y * row, px, y ? px - e->stride : e->zeros, e->stride, e->bpp,
                       e->level > 0);
        }
        size_t len = (size_t)(s->y1 - s->y0) * row;
        s->adler = adler32_z(adler32_z(0, NULL, 0), f, len);
        s->rc = deflate_strip(e, s, f, len, i == e->n_strips - 1 ? Z_FINISH : Z_FULL_FLUSH);
    }
    return NULL;
}

int png_cpus_usable(void) {
    int n = 0;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
    if (n <= 0) n = (int)sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n;
}

/* The default number of threads for one image: the CPUs we may run on, at most ENC_MAX_THREADS. */
static int encode_threads_default(void) {
    int n = png_cpus_usable();
    return n > ENC_MAX_THREADS ? ENC_MAX_THREADS : n;
}

/* libspng's keyword rule (and the PNG spec's): 1..79 printable Latin-1 characters, no leading,
 * trailing or double spaces. */
static bool keyword_ok(const char *k) {
    size_t n = strlen(k);
    if (n == 0 || n > 79 || k[0] == ' ' || k[n - 1] == ' ' || strstr(k, "  ")) return false;
    for (const unsigned char *c = (const unsigned char *)k; *c; c++)
        if (!((*c >= 32 && *c <= 126) || *c >= 161)) return false;
    return true;
}

static void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

/* The PNG being written into a buffer sized beforehand, one chunk open at a time. */
struct png_out {
    uint8_t *p;       /* the file */
    size_t len;       /* bytes written */
    size_t chunk;     /* offset of the open chunk's length field */
};

static void chunk_begin(struct png_out *o, const char *type) {
    o->chunk = o->len;
    memcpy(o->p + o->len + 4, type, 4);
    o->len += 8;
}

static void chunk_put(struct png_out *o, const void *data, size_t n) {
    memcpy(o->p + o->len, data, n);
    o->len += n;
}

static void chunk_end(struct png_out *o) {
    size_t n = o->len - o->chunk - 8;
    put_be32(o->p + o->chunk, (uint32_t)n);
    put_be32(o->p + o->len, (uint32_t)crc32_z(crc32_z(0, NULL, 0), o->p + o->chunk + 4, n + 4));
    o->len += 4;
}

/* Appends zlib-stream bytes to the IDAT chunk(s), opening a new one every ENC_CHUNK_MAX bytes. */
static void idat_put(struct png_out *o, const uint8_t *data, size_t n) {
    while (n) {
        size_t used = o->len - o->chunk - 8, room = ENC_CHUNK_MAX - used;
        if (room == 0) {
            chunk_end(o);
            chunk_begin(o, "IDAT");
            room = ENC_CHUNK_MAX;
        }
        size_t k = n < room ? n : room;
        chunk_put(o, data, k);
        data += k;
        n -= k;
    }
}

int png_encode_threads(const uint8_t *pixels, uint32_t w, uint32_t h, int channels, const struct png_text *text,
                       int n_text, int level, int threads, void **out, size_t *out_len, struct err *err) {
    *out = NULL;
    *out_len = 0;
    if ((channels != 3 && channels != 4) || w == 0 || h == 0 || w > PNG_DIM_MAX || h > PNG_DIM_MAX)
        return err_set(err, STATUS_ERR_INVALID, "PNG: cannot encode %ux%u with %d channels", w, h, channels);
    size_t stride = (size_t)w * (size_t)channels, row = stride + 1;
    if (row > SIZE_MAX / h) return err_set(err, STATUS_ERR_INVALID, "PNG: %ux%u is too large", w, h);
    size_t total = row * h; /* filtered bytes */
    level = level < 0 ? 0 : level > 9 ? 9 : level;

    /* the file's size but for the compressed data */
    size_t head = 8 + 12 + 13 + 12;  /* signature, IHDR, IEND */
    for (int i = 0; i < n_text; i++) {
        if (!keyword_ok(text[i].key))
            return err_set(err, STATUS_ERR_INVALID,
                           "PNG: text keyword '%s' must have 1 to 79 printable Latin-1 characters, without "
                           "leading, trailing or double spaces",
                           text[i].key);
        size_t n = strlen(text[i].key) + 1 + strlen(text[i].text);
        if (n > PNG_DIM_MAX)
            return err_set(err, STATUS_ERR_INVALID, "PNG: text '%s' is too long (%zu bytes)", text[i].key, n);
        head += 12 + n;
    }

    /* strips by size alone (see DESIGN) */
    int n_strips = 1;
    if (total >= ENC_ONE_STRIP_BELOW) {
        size_t n = total / ENC_STRIP_MIN;
        n_strips = (int)(n < ENC_MAX_STRIPS ? n : ENC_MAX_STRIPS);
        if ((uint32_t)n_strips > h) n_strips = (int)h;
    }
    uint32_t per = (uint32_t)((h + (uint32_t)n_strips - 1) / (uint32_t)n_strips);
    n_strips = (int)((h + per - 1) / per);

    int rc = 0;
    struct encoder e = {.pixels = pixels, .stride = stride, .bpp = (size_t)channels, .level = level,
                        .n_strips = n_strips};
    atomic_init(&e.next, 0);
    e.filtered = mem_try_alloc(total);
    e.zeros = mem_try_calloc(1, stride);
    e.strips = mem_try_calloc((size_t)n_strips, sizeof *e.strips);
    if (!e.filtered || !e.zeros || !e.strips) {
        rc = err_set(err, STATUS_ERR_NOMEM, "PNG: out of memory for a %ux%u image (%zu filtered bytes)", w, h, total);
        goto done;
    }
    for (int i = 0; i < n_strips; i++) {
        e.strips[i].y0 = (uint32_t)i * per;
        e.strips[i].y1 = i == n_strips - 1 ? h : (uint32_t)(i + 1) * per;
    }

    /* filter and deflate the strips: the caller is one of the threads */
    if (threads <= 0) threads = encode_threads_default();
    if (threads > n_strips) threads = n_strips;
    if (threads > ENC_MAX_THREADS) threads = ENC_MAX_THREADS;
    pthread_t tid[ENC_MAX_THREADS];
    int started = 0;
    for (int t = 1; t < threads; t++) /* a thread that cannot start leaves its strips to the others */
        if (pthread_create(&tid[started], NULL, encode_strips, &e) == 0) started++;
    encode_strips(&e);
    for (int t = 0; t < started; t++) pthread_join(tid[t], NULL);

    size_t z_len = 2 + 4; /* zlib header and Adler-32 */
    uLong adler = e.strips[0].adler;
    for (int i = 0; i < n_strips; i++) {
        struct enc_strip *s = &e.strips[i];
        if (s->rc) {
            rc = err_set(err, s->rc, "%s (rows %u to %u)", s->err.msg, s->y0, s->y1 - 1);
            goto done;
        }
        z_len += s->z_len;
        if (i) adler = adler32_combine(adler, s->adler, (z_off_t)((size_t)(s->y1 - s->y0) * row));
    }

    /* the file */
    size_t n_idat = z_len / ENC_CHUNK_MAX + 1;
    struct png_out o = {.p = mem_try_alloc(head + z_len + 12 * n_idat)};
    if (!o.p) {
        rc = err_set(err, STATUS_ERR_NOMEM, "PNG: out of memory for a %zu-byte file", head + z_len + 12 * n_idat);
        goto done;
    }
    chunk_put(&o, "\x89PNG\r\n\x1a\n", 8);
    uint8_t ihdr[13] = {[8] = 8, [9] = (uint8_t)(channels == 4 ? 6 : 2)}; /* 8 bits; RGBA or RGB */
    put_be32(ihdr, w);
    put_be32(ihdr + 4, h);
    chunk_begin(&o, "IHDR");
    chunk_put(&o, ihdr, sizeof ihdr);
    chunk_end(&o);
    for (int i = 0; i < n_text; i++) { /* "keyword\0text", as libspng writes tEXt */
        chunk_begin(&o, "tEXt");
        chunk_put(&o, text[i].key, strlen(text[i].key) + 1);
        chunk_put(&o, text[i].text, strlen(text[i].text));
        chunk_end(&o);
    }
    /* zlib header: deflate with a 32 KiB window; FLEVEL as zlib's deflate sets it for the level */
    unsigned flevel = level < 2 ? 0 : level < 6 ? 1 : level == 6 ? 2 : 3;
    unsigned cmf_flg = 0x78u << 8 | flevel << 6;
    cmf_flg += (31 - cmf_flg % 31) % 31; /* FCHECK */
    uint8_t zhead[2] = {(uint8_t)(cmf_flg >> 8), (uint8_t)cmf_flg}, ztail[4];
    put_be32(ztail, (uint32_t)adler);
    chunk_begin(&o, "IDAT");
    idat_put(&o, zhead, 2);
    for (int i = 0; i < n_strips; i++) idat_put(&o, e.strips[i].z, e.strips[i].z_len);
    idat_put(&o, ztail, 4);
    chunk_end(&o);
    chunk_begin(&o, "IEND");
    chunk_end(&o);
    *out = o.p;
    *out_len = o.len;
done:
    if (e.strips)
        for (int i = 0; i < n_strips; i++) mem_free(e.strips[i].z);
    mem_free(e.strips);
    mem_free(e.zeros);
    mem_free(e.filtered);
    return rc;
}

int png_encode(const uint8_t *pixels, uint32_t w, uint32_t h, int channels, const struct png_text *text, int n_text,
               int level, void **out, size_t *out_len, struct err *err) {
    return png_encode_threads(pixels, w, h, channels, text, n_text, level, 0, out, out_len, err);
}

/* Writes buf to path, opened with flags (O_TRUNC to replace, O_EXCL to refuse an existing
 * file: STATUS_ERR_EXISTS without a message, so the caller can pick another name). */
static int write_file(const char *path, int flags, const void *buf, size_t len, struct err *err) {
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | flags, 0644);
    if (fd < 0) {
        if (errno == EEXIST && (flags & O_EXCL)) return STATUS_ERR_EXISTS;
        return err_set(err, STATUS_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    }
    int rc = 0;
    for (size_t off = 0; off < len && !rc;) {
        ssize_t n = write(fd, (const char *)buf + off, len - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) rc = err_set(err, STATUS_ERR_IO, "writing %s: %s", path, strerror(errno));
        else off += (size_t)n;
    }
    if (close(fd) != 0 && !rc) rc = err_set(err, STATUS_ERR_IO, "writing %s: %s", path, strerror(errno));
    if (rc) unlink(path);
    return rc;
}

static int encode_and_write(const char *path, int flags, const uint8_t *pixels, uint32_t w, uint32_t h,
                            int channels, const struct png_text *text, int n_text, int level, struct err *err) {
    void *buf;
    size_t len;
    int rc = png_encode(pixels, w, h, channels, text, n_text, level, &buf, &len, err);
    if (rc) return rc;
    rc = write_file(path, flags, buf, len, err);
    mem_free(buf);
    return rc;
}

int png_write(const char *path, const uint8_t *pixels, uint32_t w, uint32_t h, int channels,
              const struct png_text *text, int n_text, int level, struct err *err) {
    return encode_and_write(path, O_TRUNC, pixels, w, h, channels, text, n_text, level, err);
}

int png_save_new(const char *path, const void *data, size_t len, struct err *err) {
    return write_file(path, O_EXCL, data, len, err);
}

struct encode_job {
    const uint8_t *const *pixels;
    uint32_t w, h;
    int channels, n_text, level;
    int inner;              /* threads per image (png_encode_threads) */
    const struct png_text *text;
    void **outs;
    size_t *lens;
    int *rcs;
    struct err *errs;
    int next, n;            /* the next image to take, under mu */
    pthread_mutex_t mu;
};

static void *encode_worker(void *p) {
    struct encode_job *j = p;
    for (;;) {
        pthread_mutex_lock(&j->mu);
        int i = j->next < j->n ? j->next++ : -1;
        pthread_mutex_unlock(&j->mu);
        if (i < 0) return NULL;
        j->rcs[i] = png_encode_threads(j->pixels[i], j->w, j->h, j->channels, j->text, j->n_text, j->level,
                                       j->inner, &j->outs[i], &j->lens[i], &j->errs[i]);
    }
}

int png_encode_many(const uint8_t *const *pixels, int n, uint32_t w, uint32_t h, int channels,
                    const struct png_text *text, int n_text, int level, int threads, void **outs, size_t *lens,
                    struct err *err) {
    if (n <= 0) return 0;
    struct encode_job j = {.pixels = pixels, .w = w, .h = h, .channels = channels, .n_text = n_text, .level = level,
                           .text = text, .outs = outs, .lens = lens, .n = n, .mu = PTHREAD_MUTEX_INITIALIZER};
    j.rcs = mem_calloc((size_t)n, sizeof *j.rcs);
    j.errs = mem_calloc((size_t)n, sizeof *j.errs);
    for (int i = 0; i < n; i++) outs[i] = NULL;
    if (threads > n) threads = n;
    if (threads > 16) threads = 16;
    if (threads < 1) threads = 1;
    /* images at once share the CPUs (a batch of one gets png_encode's default); the bytes of
       each image do not depend on it */
    j.inner = png_cpus_usable() / threads;
    if (j.inner > ENC_MAX_THREADS) j.inner = ENC_MAX_THREADS;
    if (j.inner < 1) j.inner = 1;
    pthread_t tid[16];
    int started = 0;
    for (int t = 1; t < threads; t++) /* the caller is worker 0 */
        if (pthread_create(&tid[started], NULL, encode_worker, &j) == 0) started++;
    encode_worker(&j);
    for (int t = 0; t < started; t++) pthread_join(tid[t], NULL);
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        if (!j.rcs[i]) continue;
        rc = j.rcs[i];
        *err = j.errs[i];
        err_prefix(err, "image %d of %d", i + 1, n);
    }
    if (rc)
        for (int i = 0; i < n; i++) {
            mem_free(outs[i]);
            outs[i] = NULL;
        }
    mem_free(j.rcs);
    mem_free(j.errs);
    pthread_mutex_destroy(&j.mu);
    return rc;
}

/* ===== Decoding ===== */

void png_image_deinit(struct png_image *img) {
    if (!img) return;
    mem_free(img->rgba);
    for (int i = 0; i < img->n_text; i++) {
        mem_free(img->text_keys[i]);
        mem_free(img->text_values[i]);
    }
    mem_free(img->text_keys);
    mem_free(img->text_values);
    memset(img, 0, sizeof *img);
}

const char *png_image_text(const struct png_image *img, const char *key) {
    for (int i = 0; i < img->n_text; i++)
        if (strcmp(img->text_keys[i], key) == 0) return img->text_values[i];
    return NULL;
}

int png_decode(const void *data, size_t len, struct png_image *img, struct err *err) {
    memset(img, 0, sizeof *img);
    spng_ctx *ctx = spng_ctx_new2(&counted, 0);
    if (!ctx) return err_set(err, STATUS_ERR_NOMEM, "PNG: out of memory creating the decoder");
    int rc = 0, e;
    struct spng_text *chunks = NULL;
    spng_set_crc_action(ctx, SPNG_CRC_ERROR, SPNG_CRC_DISCARD);
    spng_set_png_buffer(ctx, data, len);
    struct spng_ihdr ihdr;
    if ((e = spng_get_ihdr(ctx, &ihdr))) {
        rc = err_set(err, STATUS_ERR_FORMAT, "not a valid PNG: %s", spng_strerror(e));
        goto done;
    }
    /* PIL's decompression-bomb limit (Image.open raises DecompressionBombError above twice
     * MAX_IMAGE_PIXELS): a few bytes of header must not make us allocate gigabytes */
    if ((uint64_t)ihdr.width * ihdr.height > PNG_MAX_PIXELS) {
        rc = err_set(err, STATUS_ERR_FORMAT, "PNG: image size (%u x %u) exceeds the limit of %llu pixels",
                     ihdr.width, ihdr.height, (unsigned long long)PNG_MAX_PIXELS);
        goto done;
    }
    size_t out_len;
    if ((e = spng_decoded_image_size(ctx, SPNG_FMT_RGBA8, &out_len))) {
        rc = err_set(err, STATUS_ERR_FORMAT, "PNG: %s", spng_strerror(e));
        goto done;
    }
    img->rgba = mem_try_alloc(out_len);
    if (!img->rgba) {
        rc = err_set(err, STATUS_ERR_NOMEM, "PNG: out of memory for a %ux%u image", ihdr.width, ihdr.height);
        goto done;
    }
    /* No tRNS expansion: PIL keeps tRNS as "transparency" info, not an alpha band. */
    if ((e = spng_decode_image(ctx, img->rgba, out_len, SPNG_FMT_RGBA8, 0))) {
        rc = err_set(err, STATUS_ERR_FORMAT, "PNG: decoding failed: %s", spng_strerror(e));
        goto done;
    }
    img->w = ihdr.width;
    img->h = ihdr.height;
    img->has_alpha = ihdr.color_type == SPNG_COLOR_TYPE_GRAYSCALE_ALPHA ||
                     ihdr.color_type == SPNG_COLOR_TYPE_TRUECOLOR_ALPHA;

    uint32_t n = 0;
    e = spng_get_text(ctx, NULL, &n);
    if (e == 0 && n > 0) {
        chunks = mem_calloc(n, sizeof *chunks);
        if (spng_get_text(ctx, chunks, &n) == 0) {
            img->text_keys = mem_calloc(n, sizeof *img->text_keys);
            img->text_values = mem_calloc(n, sizeof *img->text_values);
            for (uint32_t i = 0; i < n; i++) {
                img->text_keys[i] = mem_strdup(chunks[i].keyword);
                img->text_values[i] = mem_strndup(chunks[i].text, chunks[i].length);
            }
            img->n_text = (int)n;
        }
    }
done:
    mem_free(chunks);
    spng_ctx_free(ctx);
    if (rc) png_image_deinit(img);
    return rc;
}

int png_read(const char *path, struct png_image *img, struct err *err) {
    memset(img, 0, sizeof *img);
    FILE *f = fopen(path, "rb");
    if (!f) return err_set(err, errno == ENOENT ? STATUS_ERR_NOT_FOUND : STATUS_ERR_IO, "cannot open %s: %s", path,
                           strerror(errno));
    int rc = 0;
    size_t cap = 1 << 16, len = 0;
    unsigned char *buf = mem_alloc(cap);
    for (;;) {
        if (len == cap) buf = mem_realloc(buf, cap *= 2);
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
    }
    if (ferror(f)) rc = err_set(err, STATUS_ERR_IO, "reading %s: %s", path, strerror(errno));
    fclose(f);
    if (!rc) {
        rc = png_decode(buf, len, img, err);
        if (rc) err_prefix(err, "%s", path);
    }
    mem_free(buf);
    return rc;
}
