/* base/log.c -- leveled logging to stderr and an optional size-rotated log file.
 * Owns: the process log level, the log file (its descriptor, path and byte count) and the line
 * lock log_mu, under which every line is written and the file is opened, rotated and closed.
 * Threads: any.
 *
 * DESIGN. A line is formatted on the caller's stack, then written under log_mu: to stderr,
 * then to the file as one write() on an O_APPEND descriptor. Rotation happens under the same
 * lock, before the line that would pass the limit, so no line is split or lost between two
 * files. Failures of the file are reported with fprintf(stderr) directly (log_write would
 * take log_mu again). */
#include "base/log.h"

#include "base/err.h"
#include "base/status.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 2048 /* bytes of one line, its newline included */

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static int log_level = -1; /* -1: not yet read from KILN_LOG */

static const char *const LEVEL_NAMES[LOG_LEVEL_COUNT] = {"debug", "info", "warn", "error"};

/* The log file; every field is guarded by log_mu. */
static struct {
    int fd;                    /* -1: no log file */
    char path[PATH_MAX];
    uint64_t max_bytes;        /* rotate before a line would take the file past this */
    int keep;                  /* rotated files kept: path.1 .. path.keep */
    uint64_t size;             /* bytes in the file now (at open, plus what we wrote) */
    bool write_failed;         /* the last write failed and was reported; quiet until one works */
} lf = {.fd = -1};

/* ===== Level ===== */

void log_set_level(enum log_level level) { log_level = (int)level; }

enum log_level log_get_level(void) {
    if (log_level < 0) {
        const char *env = getenv("KILN_LOG");
        log_level = LOG_LEVEL_INFO;
        for (int i = 0; env && i < LOG_LEVEL_COUNT; i++)
            if (strcmp(env, LEVEL_NAMES[i]) == 0) log_level = i;
    }
    return (enum log_level)log_level;
}

/* ===== Log file (caller holds log_mu) ===== */

/* Opens lf.path for appending (truncated when trunc) and reads its size. Returns the fd, or -1
 * with errno set. */
static int file_open(bool trunc) {
    int fd = open(lf.path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | (trunc ? O_TRUNC : 0), 0640);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    lf.size = (uint64_t)st.st_size;
    return fd;
}

/* path.1 -> path.2 ... -> path.keep, then path -> path.1 and a new path (keep 0: path truncated).
 * A failed rename leaves the current file in use (lf.size restarts, so the next try comes after
 * another max_bytes); a failed open closes the log file. Both are reported on stderr. */
static void file_rotate(void) {
    char from[PATH_MAX + 16], to[PATH_MAX + 16];
    for (int i = lf.keep - 1; i >= 1; i--) {
        snprintf(from, sizeof from, "%s.%d", lf.path, i);
        snprintf(to, sizeof to, "%s.%d", lf.path, i + 1);
        if (rename(from, to) != 0 && errno != ENOENT)
            fprintf(stderr, "kiln: log file rotation: cannot rename %s to %s: %s\n", from, to, strerror(errno));
    }
    if (lf.keep > 0) {
        snprintf(to, sizeof to, "%s.1", lf.path);
        if (rename(lf.path, to) != 0) {
            fprintf(stderr, "kiln: log file rotation: cannot rename %s to %s: %s (still writing to %s)\n", lf.path,
                    to, strerror(errno), lf.path);
            lf.size = 0;
            return;
        }
    }
    close(lf.fd);
    lf.fd = file_open(lf.keep == 0);
    if (lf.fd < 0)
        fprintf(stderr, "kiln: log file rotation: cannot open %s: %s (logging to stderr only from now)\n", lf.path,
                strerror(errno));
}

/* Writes the whole line (one write() unless interrupted or short). */
static void file_write(const char *line, size_t len) {
    if (lf.size > 0 && lf.size + len > lf.max_bytes) file_rotate();
    if (lf.fd < 0) return;
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(lf.fd, line + done, len - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            if (!lf.write_failed)
                fprintf(stderr, "kiln: cannot write to the log file %s: %s (lines still go to stderr)\n", lf.path,
                        w < 0 ? strerror(errno) : "nothing written");
            lf.write_failed = true;
            break;
        }
        done += (size_t)w;
    }
    if (done == len) lf.write_failed = false;
    lf.size += done;
}

int log_open_file(const char *path, uint64_t max_bytes, int keep, struct err *err) {
    if (!path || !*path) return err_set(err, STATUS_ERR_INVALID, "log file: the path is empty");
    if (max_bytes == 0 || keep < 0)
        return err_set(err, STATUS_ERR_INVALID, "log file %s: invalid rotation (max %llu bytes, keep %d)", path,
                       (unsigned long long)max_bytes, keep);
    if (strlen(path) >= sizeof lf.path)
        return err_set(err, STATUS_ERR_INVALID, "log file: the path is too long (%zu bytes)", strlen(path));
    pthread_mutex_lock(&log_mu);
    if (lf.fd >= 0) close(lf.fd);
    snprintf(lf.path, sizeof lf.path, "%s", path);
    lf.max_bytes = max_bytes;
    lf.keep = keep;
    lf.write_failed = false;
    int fd = lf.fd = file_open(false);
    int e = errno;
    pthread_mutex_unlock(&log_mu);
    if (fd < 0) return err_set(err, STATUS_ERR_IO, "cannot open the log file %s: %s", path, strerror(e));
    return 0;
}

void log_close_file(void) {
    pthread_mutex_lock(&log_mu);
    if (lf.fd >= 0) close(lf.fd);
    lf.fd = -1;
    pthread_mutex_unlock(&log_mu);
}

/* ===== Lines ===== */

void log_write(enum log_level level, const char *fmt, ...) {
    if ((int)level < (int)log_get_level()) return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    localtime_r(&ts.tv_sec, &tm);
    char line[LOG_LINE_MAX];
    int n = snprintf(line, sizeof line, "%02d:%02d:%02d.%03ld %-5s ", tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, LEVEL_NAMES[level]);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - 1 - (size_t)n, fmt, ap); /* one byte left for the newline */
    va_end(ap);
    size_t len = strlen(line);
    line[len++] = '\n';
    pthread_mutex_lock(&log_mu);
    fwrite(line, 1, len, stderr);
    if (lf.fd >= 0) file_write(line, len);
    pthread_mutex_unlock(&log_mu);
}
