/* base/status.c -- names and messages of status codes. Threads: any. */
#include "base/status.h"
#include "base/base.h"

#include <stdio.h>
#include <stdlib.h>

const char *status_str(int rc) {
    switch (rc) {
#define XX(name, val, msg) case val: return msg;
        STATUS_MAP(XX)
#undef XX
    }
    return "unknown status";
}

const char *status_name(int rc) {
    switch (rc) {
#define XX(name, val, msg) case val: return #name;
        STATUS_MAP(XX)
#undef XX
    }
    return "UNKNOWN";
}

void base_assert_fail(const char *expr, const char *file, int line, const char *func) {
    fprintf(stderr, "kiln: assertion failed: %s (%s:%d, %s)\n", expr, file, line, func);
    fflush(stderr);
    abort();
}
