/* base/log.c -- leveled logging. Owns the process log level and the line lock. Threads: any. */
#include "base/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static int log_level = -1; /* -1: not yet read from KILN_LOG */

static const char *const LEVEL_NAMES[LOG_LEVEL_COUNT] = {"debug", "info", "warn", "error"};

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

void log_write(enum log_level level, const char *fmt, ...) {
    if ((int)level < (int)log_get_level()) return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    localtime_r(&ts.tv_sec, &tm);
    char line[2048];
    int n = snprintf(line, sizeof line, "%02d:%02d:%02d.%03ld %-5s ", tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, LEVEL_NAMES[level]);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&log_mu);
    fprintf(stderr, "%s\n", line);
    pthread_mutex_unlock(&log_mu);
}
