/* tests/fuzz/fuzz.h -- what the libFuzzer targets of tests/fuzz share: a private scratch
 * folder under /tmp (made once per process, never outside /tmp) and writing an input there.
 * Owns: the scratch folder, removed with what is in it when the process exits normally (a
 * crashing run leaves it, with the input, for a look).
 * Threads: the fuzzer's one thread. */
#ifndef KILN_FUZZ_H
#define KILN_FUZZ_H

#include "base/log.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char fuzz__dir[64];

static inline int fuzz__rm(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static inline void fuzz__cleanup(void) { nftw(fuzz__dir, fuzz__rm, 16, FTW_DEPTH | FTW_PHYS); }

/* The process's scratch folder (/tmp/kiln-fuzz-XXXXXX), made on first use; aborts on failure. */
static inline const char *fuzz_dir(void) {
    char *dir = fuzz__dir;
    if (!dir[0]) {
        snprintf(dir, sizeof fuzz__dir, "/tmp/kiln-fuzz-XXXXXX");
        if (!mkdtemp(dir)) {
            perror("mkdtemp /tmp/kiln-fuzz-XXXXXX");
            abort();
        }
        atexit(fuzz__cleanup);
        log_set_level(LOG_LEVEL_ERROR); /* a fuzzer's inputs make every warning fire */
    }
    return dir;
}

/* Writes n bytes to fuzz_dir()/name (replacing it); path receives the full path. Aborts on a
 * write failure (the harness, not the code under test, failed). */
static inline void fuzz_write(const char *name, const void *data, size_t n, char *path, size_t path_n) {
    snprintf(path, path_n, "%s/%s", fuzz_dir(), name);
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f)) {
        perror(path);
        abort();
    }
}

#endif
