/* base/err.h -- the user-facing error record (tier c of STYLE.md §12).
 * A function that can fail for a reason the user must read takes a `struct err *` (may be
 * NULL) and fills it with err_set before returning the negative status; the first error set
 * sticks, so the innermost, most specific message wins.
 * Threads: the record belongs to one caller; no locking. */
#ifndef KILN_ERR_H
#define KILN_ERR_H

struct err {
    int code;       /* 0, or the negative status of the first error */
    char msg[1024]; /* human-readable, with context (file, node, input) */
};

/* Sets code and msg unless an error is already recorded; returns code (for `return err_set(..)`). */
int err_set(struct err *e, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Prefixes context to an existing message ("loading x.safetensors: <old msg>"). */
void err_prefix(struct err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void err_clear(struct err *e);

#endif
