/* tests/unit/api/test_server.h -- a test server: a sched of CPU devices and kiln's HTTP server
 * on a free loopback port, started and stopped for one test (its files: test_files.h).
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

#include "unit/api/test_files.h"

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
