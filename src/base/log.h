/* base/log.h -- leveled logging to stderr with a timestamp.
 * Owns: the log level (process-wide on purpose) and a lock so lines never interleave.
 * Threads: any. */
#ifndef KILN_LOG_H
#define KILN_LOG_H

enum log_level { LOG_LEVEL_DEBUG, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR, LOG_LEVEL_COUNT };

/* Sets the lowest level that is printed (default INFO; KILN_LOG=debug also sets it). */
void log_set_level(enum log_level level);
enum log_level log_get_level(void);

/* printf-style; a newline is appended. */
void log_write(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_write(LOG_LEVEL_DEBUG, __VA_ARGS__)
#define log_info(...) log_write(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_warn(...) log_write(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_error(...) log_write(LOG_LEVEL_ERROR, __VA_ARGS__)

#endif
