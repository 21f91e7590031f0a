/* base/fs.c -- file-system helpers (see fs.h).
 * Owns: nothing persistent. Threads: any (fs_write_whole's temporary name holds the pid and a
 * per-process counter, so concurrent writers of one path do not share a temporary file). */
#include "base/fs.h"

#include "base/mem.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
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
