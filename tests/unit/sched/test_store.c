/* tests/unit/sched/test_store.c -- the scheduler's SQLite file (sched/store.c): rows in and
 * out (put, start, requeue, finish in one step, deletes), what a reopened file gives back and
 * in which order, the history bound, the errors (a file that is not a database, a folder that
 * cannot be written), and sched_new's reload: history back in memory, a prompt found running a
 * second time ends with an error entry, an unreadable row too, the counter continues.
 * Threads: the test thread only (no worker is started). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/status.h"
#include "sched/internal.h"
#include "sched/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char DIR_[64];

static void path_in(char *out, size_t n, const char *leaf) { snprintf(out, n, "%s/%s", DIR_, leaf); }

static struct store *open_ok(const char *leaf, int history_max) {
    char path[128];
    path_in(path, sizeof path, leaf);
    struct err err = {0};
    struct store *st = store_open(path, history_max, &err);
    if (!st) fail_msg("store_open %s: %s", path, err.msg);
    return st;
}

/* ===== Rows ===== */

struct seen {
    char ids[16][40];
    double numbers[16];
    bool is_int[16], running[16];
    int attempts[16], devices[16];
    char bodies[16][64];
    int n;
};

static int see_prompt(void *user, const struct store_prompt *p) {
    struct seen *s = user;
    snprintf(s->ids[s->n], sizeof s->ids[0], "%s", p->id);
    s->numbers[s->n] = p->number;
    s->is_int[s->n] = p->number_is_int;
    s->running[s->n] = p->running;
    s->attempts[s->n] = p->attempts;
    s->devices[s->n] = p->device;
    snprintf(s->bodies[s->n], sizeof s->bodies[0], "%s", p->body);
    s->n++;
    return 0;
}

static int see_history(void *user, const char *id, const char *entry) {
    struct seen *s = user;
    snprintf(s->ids[s->n], sizeof s->ids[0], "%s", id);
    snprintf(s->bodies[s->n], sizeof s->bodies[0], "%s", entry);
    s->n++;
    return 0;
}

static void test_rows_survive_reopen(void **state) {
    (void)state;
    struct err err = {0};
    struct store *st = open_ok("a.db", 100);
    assert_int_equal(store_prompt_put(st, "p3", 3, true, 1, "{\"b\":3}", 1.0, &err), 0);
    assert_int_equal(store_prompt_put(st, "p1", 1, true, 0, "{\"b\":1}", 1.0, &err), 0);
    assert_int_equal(store_prompt_put(st, "p2", 2.5, false, 0, "{\"b\":2}", 1.0, &err), 0);
    assert_int_equal(store_prompt_put(st, "front", -7, true, 1, "{}", 1.0, &err), 0);
    assert_int_equal(store_prompt_put(st, "gone", 9, true, 1, "{}", 1.0, &err), 0);
    assert_int_equal(store_prompt_delete(st, "gone", &err), 0);
    assert_int_equal(store_prompt_start(st, "p1", &err), 0);  /* running, 1 attempt */
    assert_int_equal(store_prompt_start(st, "p3", &err), 0);
    assert_int_equal(store_prompt_requeue(st, "p3", &err), 0); /* a clean stop: not counted */
    /* p2 ends: history row in, prompt row out, in one step */
    assert_int_equal(store_finish(st, "p2", 2.5, "{\"e\":2}", 10.0, &err), 0);
    assert_int_equal(store_count(st, "prompts"), 3);
    assert_int_equal(store_count(st, "history"), 1);
    store_free(st);

    st = open_ok("a.db", 100);
    struct seen s = {0};
    assert_int_equal(store_prompts_load(st, see_prompt, &s, &err), 0);
    assert_int_equal(s.n, 3); /* number order: front (-7), p1 (1), p3 (3) */
    assert_string_equal(s.ids[0], "front");
    assert_string_equal(s.ids[1], "p1");
    assert_string_equal(s.ids[2], "p3");
    assert_true(s.is_int[0]);
    assert_true(s.numbers[0] == -7.0);
    assert_true(s.running[1]);
    assert_int_equal(s.attempts[1], 1);
    assert_false(s.running[2]);
    assert_int_equal(s.attempts[2], 0);
    assert_int_equal(s.devices[2], 1);
    assert_string_equal(s.bodies[2], "{\"b\":3}");
    struct seen h = {0};
    assert_int_equal(store_history_load(st, see_history, &h, &err), 0);
    assert_int_equal(h.n, 1);
    assert_string_equal(h.ids[0], "p2");
    assert_string_equal(h.bodies[0], "{\"e\":2}");
    /* a client number that is not an integer stays one */
    assert_int_equal(store_prompt_put(st, "f", 4.25, false, 0, "{}", 1.0, &err), 0);
    s = (struct seen){0};
    assert_int_equal(store_prompts_load(st, see_prompt, &s, &err), 0);
    assert_false(s.is_int[3]);
    assert_true(s.numbers[3] == 4.25);
    assert_int_equal(store_history_delete(st, "p2", &err), 0);
    assert_int_equal(store_count(st, "history"), 0);
    store_free(st);
}

static void test_history_max(void **state) {
    (void)state;
    struct err err = {0};
    struct store *st = open_ok("h.db", 3);
    char id[16], entry[32];
    for (int i = 0; i < 7; i++) {
        snprintf(id, sizeof id, "h%d", i);
        snprintf(entry, sizeof entry, "{\"i\":%d}", i);
        assert_int_equal(store_finish(st, id, i, entry, i, &err), 0);
    }
    assert_int_equal(store_count(st, "history"), 3); /* the oldest went */
    /* the same id again becomes the newest */
    assert_int_equal(store_finish(st, "h4", 4, "{\"i\":44}", 8, &err), 0);
    struct seen h = {0};
    assert_int_equal(store_history_load(st, see_history, &h, &err), 0);
    assert_int_equal(h.n, 3);
    assert_string_equal(h.ids[0], "h5");
    assert_string_equal(h.ids[1], "h6");
    assert_string_equal(h.ids[2], "h4");
    assert_string_equal(h.bodies[2], "{\"i\":44}");
    store_free(st);
    /* a larger bound reopened loads only what is there; a smaller one the newest */
    st = open_ok("h.db", 2);
    h = (struct seen){0};
    assert_int_equal(store_history_load(st, see_history, &h, &err), 0);
    assert_int_equal(h.n, 2);
    assert_string_equal(h.ids[0], "h6");
    assert_int_equal(store_history_clear(st, &err), 0);
    assert_int_equal(store_count(st, "history"), 0);
    store_free(st);
}

static void test_errors(void **state) {
    (void)state;
    char path[128];
    path_in(path, sizeof path, "junk.db");
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < 200; i++) fputs("this is not an SQLite database\n", f);
    fclose(f);
    struct err err = {0};
    assert_null(store_open(path, 10, &err));
    assert_int_equal(err.code, STATUS_ERR_IO);
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "not a database"));

    path_in(path, sizeof path, "no/such/folder/x.db");
    err = (struct err){0};
    assert_null(store_open(path, 10, &err));
    assert_int_equal(err.code, STATUS_ERR_IO);
    assert_non_null(strstr(err.msg, "cannot open"));

    if (geteuid() != 0) { /* root writes anywhere */
        char ro[128];
        path_in(ro, sizeof ro, "ro");
        assert_int_equal(mkdir(ro, 0555), 0);
        path_in(path, sizeof path, "ro/x.db");
        err = (struct err){0};
        assert_null(store_open(path, 10, &err));
        assert_int_equal(err.code, STATUS_ERR_IO);
        assert_non_null(strstr(err.msg, path));
        chmod(ro, 0755);
    }
}

/* ===== sched_new's reload ===== */

static struct graph_paths PATHS = {.models = "models", .input = "input", .output = "output", .temp = "temp"};

static void test_sched_reload(void **state) {
    (void)state;
    char path[128];
    path_in(path, sizeof path, "s.db");
    struct err err = {0};
    struct store *st = open_ok("s.db", 100);
    assert_int_equal(store_finish(st, "old", 41, "{\"prompt\":[41,\"old\",{},{},[]],\"outputs\":{},\"status\":{}}", 1,
                                  &err), 0);
    const char *body = "{\"tuple\":[42,\"twice\",{\"1\":{\"class_type\":\"X\",\"inputs\":{}}},{},[\"1\"]],"
                       "\"extra_data\":{},\"client_id\":null}";
    assert_int_equal(store_prompt_put(st, "twice", 42, true, 0, body, 1, &err), 0);
    assert_int_equal(store_prompt_start(st, "twice", &err), 0);
    assert_int_equal(store_prompt_reset(st, "twice", &err), 0); /* first restart re-queued it */
    assert_int_equal(store_prompt_start(st, "twice", &err), 0); /* and it was running again */
    assert_int_equal(store_prompt_put(st, "broken", 43, true, 5, "not json", 1, &err), 0);
    store_free(st);

    struct sched_opts o = {.n_cpu_workers = 1, .paths = PATHS, .db_path = path};
    struct sched *s = sched_new(&o, &err);
    if (!s) fail_msg("sched_new: %s", err.msg);
    json_t *h = sched_history_json(s, NULL, -1, -1);
    assert_int_equal(json_object_size(h), 3);
    assert_non_null(json_object_get(h, "old"));
    json_t *tw = json_object_get(h, "twice");
    assert_string_equal(json_string_value(json_object_get(json_object_get(tw, "status"), "status_str")), "error");
    char *text = json_dumps(tw, 0);
    assert_non_null(strstr(text, "failed twice: the server stopped while running it"));
    free(text);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(tw, "prompt"), 0)), 42); /* number kept */
    json_t *br = json_object_get(h, "broken");
    assert_string_equal(json_string_value(json_object_get(json_object_get(br, "status"), "status_str")), "error");
    json_decref(h);
    assert_int_equal(sched_queue_remaining(s, -1), 0);
    assert_true(sched_next_number(s) == 44); /* after the largest number seen */
    sched_history_delete(s, "old");
    sched_free(s);

    st = open_ok("s.db", 100);
    assert_int_equal(store_count(st, "prompts"), 0); /* both ended */
    assert_int_equal(store_count(st, "history"), 2); /* "old" deleted through the sched */
    store_free(st);

    /* a database that cannot be opened stops sched_new with STATUS_ERR_IO */
    path_in(path, sizeof path, "no/such/s.db");
    err = (struct err){0};
    o.db_path = path;
    assert_null(sched_new(&o, &err));
    assert_int_equal(err.code, STATUS_ERR_IO);
}

/* A prompt found running stays 'running' in the file until sched_start: a start that ends before
 * it (its port taken: sched_free right after sched_new) leaves the row as it was, so the next
 * start still sees a prompt to run again (and an attempt counted). */
static void test_reload_writes_after_start(void **state) {
    (void)state;
    char path[128];
    path_in(path, sizeof path, "r.db");
    struct err err = {0};
    struct store *st = open_ok("r.db", 100);
    const char *body = "{\"tuple\":[7,\"again\",{\"1\":{\"class_type\":\"GPUMemoryMonitor\",\"inputs\":{\"gpu_index\":0}}},{},"
                       "[\"1\"]],\"extra_data\":{},\"client_id\":null}";
    assert_int_equal(store_prompt_put(st, "again", 7, true, 0, body, 1, &err), 0);
    assert_int_equal(store_prompt_start(st, "again", &err), 0); /* running when the server died */
    store_free(st);

    struct sched_opts o = {.n_cpu_workers = 1, .paths = PATHS, .db_path = path};
    for (int round = 0; round < 2; round++) { /* twice: the second start sees what the first saw */
        struct sched *s = sched_new(&o, &err);
        if (!s) fail_msg("sched_new: %s", err.msg);
        assert_int_equal(sched_queue_remaining(s, -1), 1); /* queued again in memory */
        sched_free(s); /* never started */
        st = open_ok("r.db", 100);
        struct seen seen = {0};
        assert_int_equal(store_prompts_load(st, see_prompt, &seen, &err), 0);
        assert_int_equal(seen.n, 1);
        assert_string_equal(seen.ids[0], "again");
        assert_true(seen.running[0]);
        assert_int_equal(seen.attempts[0], 1);
        store_free(st);
    }
}

int main(void) {
    snprintf(DIR_, sizeof DIR_, "/tmp/kiln_store_XXXXXX");
    if (!mkdtemp(DIR_)) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rows_survive_reopen),
        cmocka_unit_test(test_history_max),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_sched_reload),
        cmocka_unit_test(test_reload_writes_after_start),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", DIR_);
    if (system(cmd) != 0) rc = rc ? rc : 1;
    return rc;
}
