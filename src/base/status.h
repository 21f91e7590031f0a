/* base/status.h -- status codes for expected failures (tier b of STYLE.md §12).
 * Functions return 0 (STATUS_OK) or a negative enum status; status_str() names it.
 * The X-macro is the single source of codes and their messages.
 * Threads: any. */
#ifndef KILN_STATUS_H
#define KILN_STATUS_H

#define STATUS_MAP(XX)                                                  \
    XX(OK, 0, "ok")                                                     \
    XX(ERR_NOMEM, -1, "out of host memory")                             \
    XX(ERR_IO, -2, "input/output error")                                \
    XX(ERR_NOT_FOUND, -3, "not found")                                  \
    XX(ERR_INVALID, -4, "invalid argument")                             \
    XX(ERR_FORMAT, -5, "malformed data")                                \
    XX(ERR_UNSUPPORTED, -6, "not supported")                            \
    XX(ERR_OOM_DEVICE, -7, "out of device memory")                      \
    XX(ERR_DEVICE, -8, "device error")                                  \
    XX(ERR_INTERRUPTED, -9, "interrupted")                              \
    XX(ERR_RANGE, -10, "value out of range")                            \
    XX(ERR_EXISTS, -11, "already exists")                               \
    XX(ERR_INTERNAL, -12, "internal error")

enum status {
#define XX(name, val, msg) STATUS_##name = val,
    STATUS_MAP(XX)
#undef XX
};

/* Returns a static, human-readable string for rc (0 or a negative status). */
const char *status_str(int rc);

/* Returns the symbolic name ("ERR_IO") for rc. */
const char *status_name(int rc);

#endif
