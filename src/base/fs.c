/* base/fs.c -- file-system helpers (see fs.h).
 * Owns: nothing persistent (fs_read_ranges' helper threads and buffers for one call).
 * Threads: any (fs_write_whole's temporary name holds the pid and a per-process counter, so
 * concurrent writers of one path do not share a temporary file). */
#include "base/fs.h"

#include "base/mem.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int fs_make_dirs(const char *path, int mode, char *failed, size_t n) {
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) {
        if (failed) snprintf(failed, n, "%s", path);
        return -ENAMETOOLONG;
    }
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p) continue;
        char c = *p;
        *p = 0;
        if (mkdir(buf, (mode_t)mode) != 0 && errno != EEXIST) {
            int e = errno;
            if (failed) snprintf(failed, n, "%s", buf);
            return -e;
        }
        struct stat st;
        if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode)) {
            if (failed) snprintf(failed, n, "%s", buf);
            return -ENOTDIR;
        }
        *p = c;
        if (!c) return 0;
    }
}

bool fs_cache_dir(char *out, size_t n) {
    const char *own = getenv("KILN_CACHE_DIR");
    const char *xdg = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    int k;
    if (own) {
        if (!*own) return false; /* KILN_CACHE_DIR="": no caches */
        k = snprintf(out, n, "%s", own);
    } else if (xdg && *xdg) {
        k = snprintf(out, n, "%s/kiln", xdg);
    } else if (home && *home) {
        k = snprintf(out, n, "%s/.cache/kiln", home);
    } else {
        return false;
    }
    return k > 0 && (size_t)k < n;
}

int fs_read_whole(const char *path, size_t max, char **out, size_t *len) {
    *out = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    if ((uint64_t)st.st_size > max) {
        close(fd);
        return -EFBIG;
    }
    size_t size = (size_t)st.st_size;
    char *buf = mem_try_alloc(size + 1);
    if (!buf) {
        close(fd);
        return -ENOMEM;
    }
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) { /* an error, or the file shrank under us */
            int e = r < 0 ? errno : EIO;
            mem_free(buf);
            close(fd);
            return -e;
        }
        got += (size_t)r;
    }
    close(fd);
    buf[size] = 0;
    *out = buf;
    *len = size;
    return 0;
}

int fs_write_whole(const char *path, const void *data, size_t len) {
    static atomic_uint counter;
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp-%ld-%u", path, (long)getpid(), atomic_fetch_add(&counter, 1)) >=
        (int)sizeof tmp)
        return -ENAMETOOLONG;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return -errno;
    const char *p = data;
    size_t done = 0;
    int e = 0;
    while (done < len && !e) {
        ssize_t w = write(fd, p + done, len - done);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) e = errno;
        else done += (size_t)w;
    }
    if (close(fd) != 0 && !e) e = errno;
    if (!e && rename(tmp, path) != 0) e = errno;
    if (e) unlink(tmp);
    return -e;
}

/* ===== Reading ranges ahead ===== */

#define FS_READERS_MAX 16 /* fs_read_ranges' readers at most */

struct read_piece {
    int fd;
    uint64_t off;
    size_t len;
};

struct range_reader {
    const struct read_piece *pieces;
    size_t n, piece;
    atomic_size_t next;          /* the next piece to take */
    atomic_uint_fast64_t bytes;  /* read so far */
    bool (*stop)(void *);
    void *user;
};

static void *read_pieces(void *arg) {
    struct range_reader *r = arg;
    char *buf = mem_try_alloc(r->piece);
    while (buf && !(r->stop && r->stop(r->user))) {
        size_t i = atomic_fetch_add(&r->next, 1);
        if (i >= r->n) break;
        const struct read_piece *p = &r->pieces[i];
        for (size_t done = 0; done < p->len;) {
            ssize_t got = pread(p->fd, buf, p->len - done, (off_t)(p->off + done));
            if (got < 0 && errno == EINTR) continue;
            if (got <= 0) break;
            done += (size_t)got;
            atomic_fetch_add(&r->bytes, (uint64_t)got);
        }
    }
    mem_free(buf);
    return NULL;
}

uint64_t fs_read_ranges(const struct fs_range *ranges, size_t n, size_t piece, int threads, bool (*stop)(void *),
                        void *user) {
    if (piece == 0) return 0;
    size_t count = 0;
    for (size_t i = 0; i < n; i++) count += (size_t)((ranges[i].len + piece - 1) / piece);
    struct read_piece *pieces = mem_try_alloc((count ? count : 1) * sizeof *pieces);
    if (!pieces) return 0;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        for (uint64_t at = 0; at < ranges[i].len; at += piece) {
            uint64_t left = ranges[i].len - at;
            pieces[k++] = (struct read_piece){ranges[i].fd, ranges[i].off + at, left < piece ? (size_t)left : piece};
        }
    struct range_reader r = {.pieces = pieces, .n = count, .piece = piece, .stop = stop, .user = user};
    atomic_init(&r.next, 0);
    atomic_init(&r.bytes, 0);
    pthread_t tid[FS_READERS_MAX];
    bool started[FS_READERS_MAX] = {false};
    int helpers = threads > FS_READERS_MAX ? FS_READERS_MAX - 1 : threads - 1;
    for (int i = 0; i < helpers; i++) started[i] = pthread_create(&tid[i], NULL, read_pieces, &r) == 0;
    read_pieces(&r); /* the caller reads too; with no helper, it reads everything */
    for (int i = 0; i < helpers; i++)
        if (started[i]) pthread_join(tid[i], NULL);
    mem_free(pieces);
    return atomic_load(&r.bytes);
}
