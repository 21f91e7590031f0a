/* tests/unit/api/test_server.h -- a test server: a sched of CPU devices and kiln's HTTP server
 * on a free loopback port, started and stopped for one test, and the files around it: the four
 * folders of graph_paths under a root, reading and writing small files, removing a tree.
 * Header-only (static functions), included by test_web.c and test_user.c after cmocka.h.
 * Threads: the calling test thread starts and stops it; the sched's workers and CivetWeb's
 * threads run meanwhile.
 * Ownership: server_stop frees what server_start made. */
#ifndef KILN_TESTS_API_TEST_SERVER_H
#define KILN_TESTS_API_TEST_SERVER_H

#include "api/api.h"
#include "sched/sched.h"

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
static struct graph_paths test_dirs_make(struct test_dirs *d, const char *root) {
    snprintf(d->models, sizeof d->models, "%s/models", root);
    snprintf(d->input, sizeof d->input, "%s/input", root);
    snprintf(d->output, sizeof d->output, "%s/output", root);
    snprintf(d->temp, sizeof d->temp, "%s/temp", root);
    const char *all[] = {d->models, d->input, d->output, d->temp};
    for (int i = 0; i < 4; i++)
        if (mkdir(all[i], 0777) && errno != EEXIST) fail_msg("cannot make %s", all[i]);
    return (struct graph_paths){.models = d->models, .input = d->input, .output = d->output, .temp = d->temp};
}

/* A whole file (malloc'd, NUL-terminated; *len bytes), or NULL. */
static char *slurp(const char *path, size_t *len) {
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

static void put_file(const char *path, const char *text) {
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
static void rm_tree(const char *path) { nftw(path, rm_cb, 16, FTW_DEPTH | FTW_PHYS); }

/* ===== The server ===== */

struct server {
    struct sched *sched;
    struct api_server *srv;
    int port;
};

/* n CPU devices (one thread each) on `paths`; ao gives the server's options, of which listen,
 * port and threads are set here (127.0.0.1, any free port, 16). */
static struct server server_start_with(int n, struct graph_paths paths, struct api_opts ao) {
    struct server s = {0};
    struct err err = {0};
    struct sched_opts so = {.n_cpu_workers = n, .cpu_threads = 1, .paths = paths};
    s.sched = sched_new(&so, &err);
    if (!s.sched) fail_msg("sched_new: %s", err.msg);
    ao.listen = "127.0.0.1";
    ao.port = -1;
    ao.threads = 16;
    ao.paths = paths;
    s.srv = api_server_new(&ao, s.sched, &err);
    if (!s.srv) fail_msg("api_server_new: %s", err.msg);
    s.port = api_server_port(s.srv, 0);
    if (sched_start(s.sched, &err)) fail_msg("sched_start: %s", err.msg);
    return s;
}

static void server_stop(struct server *s) {
    api_server_stop(s->srv);
    sched_free(s->sched);
    api_server_free(s->srv);
}

#endif
