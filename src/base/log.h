/* base/log.h -- leveled logging to stderr with a timestamp, and optionally to a file that is
 * rotated by size (kiln serve --log-file).
 * Owns: the log level (process-wide on purpose), the log file and a lock so lines never
 * interleave or split, on stderr or in the file.
 * Threads: any. log_open_file/log_close_file may run while other threads log. */
#ifndef KILN_LOG_H
#define KILN_LOG_H

#include <stdint.h>

struct err; /* base/err.h: only a pointer here */

enum log_level { LOG_LEVEL_DEBUG, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR, LOG_LEVEL_COUNT };

/* Sets the lowest level that is printed (default INFO; KILN_LOG=debug also sets it). */
void log_set_level(enum log_level level);
enum log_level log_get_level(void);

/* printf-style; a newline is appended. The line goes to stderr and, while one is open, to the
 * log file, as one write each (lines longer than 2 KiB are cut). */
void log_write(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_write(LOG_LEVEL_DEBUG, __VA_ARGS__)
#define log_info(...) log_write(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_warn(...) log_write(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_error(...) log_write(LOG_LEVEL_ERROR, __VA_ARGS__)

/* ===== Log file ===== */

/* Also writes every line (same text as on stderr) to path, appended to what the file already
 * holds (created 0640 when missing). When a line would take the file past max_bytes, the file
 * is rotated first: path.(keep-1) -> path.keep, ..., path -> path.1 (the oldest beyond keep is
 * dropped) and a new path is started; keep 0 truncates path instead. A line is never split
 * between two files, and a file holds at least one line (a single line longer than max_bytes
 * still goes in). The size is counted from the file's size at open plus what kiln wrote:
 * truncating or moving it from outside is noticed only at the next rotation.
 * A rotation that fails is reported on stderr: a failed rename keeps writing to the same file
 * (retrying after another max_bytes), a failed reopen stops the file (stderr goes on).
 * An open log file is closed first. Returns 0, or STATUS_ERR_INVALID (max_bytes 0, keep < 0,
 * path empty or too long) / STATUS_ERR_IO (cannot open: err says path and why). */
int log_open_file(const char *path, uint64_t max_bytes, int keep, struct err *err);

/* Closes the log file (no-op when none is open); later lines go to stderr only. */
void log_close_file(void);

#endif
