/* tests/unit/api/test_files.h -- the api tests' files: the four folders of graph_paths under a
 * root, reading and writing small files, removing a tree. Header-only (static inline: not every
 * includer uses each), included by test_server.h and test_api.c after cmocka.h.
 * Threads: the calling test thread.
 * Ownership: slurp's buffer is the caller's (free). */
#ifndef KILN_TESTS_API_TEST_FILES_H
#define KILN_TESTS_API_TEST_FILES_H

#include "graph/registry.h"

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

/* ===== Files ===== */

/* root/models, input, output and temp, made; the strings live in d. */
struct test_dirs {
    char models[512], input[512], output[512], temp[512];
};
static inline struct graph_paths test_dirs_make(struct test_dirs *d, const char *root) {
    snprintf(d->models, sizeof d->models, "%s/models", root);
    snprintf(d->input, sizeof d->input, "%s/input", root);
    snprintf(d->output, sizeof d->output, "%s/output", root);
    snprintf(d->temp, sizeof d->temp, "%s/temp", root);
    const char *all[] = {d->models, d->input, d->output, d->temp};
    for (int i = 0; i < 4; i++)
        if (mkdir(all[i], 0777) && errno != EEXIST) fail_msg("cannot make %s", all[i]);
    return (struct graph_paths){.models = d->models, .input = d->input, .output = d->output, .temp = d->temp};
}

/* A whole file (malloc'd, NUL-terminated; *len bytes), or NULL (*len 0). */
static inline char *slurp(const char *path, size_t *len) {
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    *len = fread(buf, 1, (size_t)n, f);
    buf[*len] = 0;
    fclose(f);
    return buf;
}

static inline void put_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) fail_msg("cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(p);
}

/* Removes path and everything below it (a missing path is fine). */
static inline void rm_tree(const char *path) { nftw(path, rm_cb, 16, FTW_DEPTH | FTW_PHYS); }

#endif
