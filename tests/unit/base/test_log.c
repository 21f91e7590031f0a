/* tests/unit/base/test_log.c -- base/log.c's log file: every line also in the file, with
 * stderr's text; rotation by size (PATH -> PATH.1 -> ... PATH.keep, the oldest dropped; keep 0
 * truncates), no line lost, split or duplicated across the files, under 4 threads; open
 * errors. Each line carries a unique "T<thread> #<seq>" tag; the files are read back and every
 * tag counted, so the check does not depend on log.c's own counting. stderr is redirected to a
 * file for the test's duration so that the same lines can be compared with it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/err.h"
#include "base/log.h"
#include "base/mem.h"
#include "base/status.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define N_THREADS 4
#define N_LINES 2000 /* per thread */

static char root[256];     /* a fresh folder per test: root/kiln.log, root/stderr.txt */
static char log_path[300];
static char err_path[300];
static int saved_stderr = -1;

static int setup(void **s) {
    snprintf(root, sizeof root, "/tmp/kiln_test_log_XXXXXX");
    if (!mkdtemp(root)) return -1;
    snprintf(log_path, sizeof log_path, "%s/kiln.log", root);
    snprintf(err_path, sizeof err_path, "%s/stderr.txt", root);
    /* stderr -> err_path (cmocka prints to stdout) */
    fflush(stderr);
    saved_stderr = dup(STDERR_FILENO);
    int fd = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || saved_stderr < 0) return -1;
    dup2(fd, STDERR_FILENO);
    close(fd);
    log_set_level(LOG_LEVEL_DEBUG);
    return 0;
}

static int teardown(void **s) {
    log_close_file();
    fflush(stderr);
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    return system(cmd) == 0 ? 0 : -1;
}

/* The whole file as a string (NUL-terminated; *n = its size); NULL when missing. mem_free it. */
static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = mem_alloc((size_t)size + 1);
    size_t got = fread(buf, 1, (size_t)size, f);
    fclose(f);
    buf[got] = 0;
    if (n) *n = got;
    return buf;
}

static bool exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static void rotated_name(char *buf, size_t n, int i) {
    if (i == 0) snprintf(buf, n, "%s", log_path);
    else snprintf(buf, n, "%s.%d", log_path, i);
}

/* Counts the tags "T<t> #<i>." of every complete line in text into seen[t][i]; checks that
 * every line has stderr's shape ("HH:MM:SS.mmm level message") and ends with '\n'. Returns the
 * lines counted. */
static int count_tags(const char *text, int seen[N_THREADS][N_LINES]) {
    int lines = 0;
    for (const char *p = text; *p;) {
        const char *nl = strchr(p, '\n');
        assert_non_null(nl); /* the last line is complete */
        assert_true(nl - p > 19);
        assert_true(p[2] == ':' && p[5] == ':' && p[8] == '.' && p[12] == ' ');
        int t, i;
        const char *tag = strstr(p, " T");
        assert_true(tag && tag < nl);
        assert_int_equal(sscanf(tag, " T%d #%d.", &t, &i), 2);
        assert_true(t >= 0 && t < N_THREADS && i >= 0 && i < N_LINES);
        seen[t][i]++;
        lines++;
        p = nl + 1;
    }
    return lines;
}

/* ===== One file, no rotation ===== */

static void test_lines_in_file_and_stderr(void **s) {
    struct err err = {0};
    assert_int_equal(log_open_file(log_path, 1 << 20, 2, &err), 0);
    log_info("T0 #0. hello %s", "file");
    log_debug("T0 #1. debug %d", 42);
    log_set_level(LOG_LEVEL_WARN);
    log_info("T0 #2. below the level: nowhere");
    log_set_level(LOG_LEVEL_DEBUG);
    log_close_file();
    log_info("T0 #3. after close: stderr only");
    fflush(stderr);

    char *file = slurp(log_path, NULL);
    char *errs = slurp(err_path, NULL);
    assert_non_null(file);
    assert_non_null(errs);
    assert_non_null(strstr(file, "info  T0 #0. hello file\n"));
    assert_non_null(strstr(file, "debug T0 #1. debug 42\n"));
    assert_null(strstr(file, "#2."));
    assert_null(strstr(file, "#3."));
    assert_null(strstr(errs, "#2."));
    assert_non_null(strstr(errs, "T0 #3. after close"));
    /* the file's text is exactly stderr's first two lines */
    assert_memory_equal(file, errs, strlen(file));
    char p1[400];
    rotated_name(p1, sizeof p1, 1);
    assert_false(exists(p1));

    /* reopening appends */
    assert_int_equal(log_open_file(log_path, 1 << 20, 2, &err), 0);
    log_warn("T0 #4. appended");
    log_close_file();
    char *file2 = slurp(log_path, NULL);
    assert_int_equal(strncmp(file2, file, strlen(file)), 0);
    assert_non_null(strstr(file2 + strlen(file), "warn  T0 #4. appended\n"));
    mem_free(file);
    mem_free(file2);
    mem_free(errs);
}

/* ===== Rotation under threads ===== */

static void *writer(void *arg) {
    int t = (int)(intptr_t)arg;
    static const char filler[] = "the quick brown fox jumps over the lazy dog, the quick brown fox jumps "
                                 "over the lazy dog; 0123456789";
    for (int i = 0; i < N_LINES; i++) log_info("T%d #%d. %.*s", t, i, i % 97, filler); /* varied lengths */
    return NULL;
}

/* Runs N_THREADS writers against a log file of max bytes and keep files; returns the number of
 * files found (PATH plus PATH.1 ..), having checked sizes and every tag seen at most once. */
static int run_rotation(uint64_t max, int keep, int seen[N_THREADS][N_LINES], int *total_lines) {
    struct err err = {0};
    assert_int_equal(log_open_file(log_path, max, keep, &err), 0);
    pthread_t th[N_THREADS];
    for (int t = 0; t < N_THREADS; t++) assert_int_equal(pthread_create(&th[t], NULL, writer, (void *)(intptr_t)t), 0);
    for (int t = 0; t < N_THREADS; t++) pthread_join(th[t], NULL);
    log_close_file();

    memset(seen, 0, sizeof(int) * N_THREADS * N_LINES);
    *total_lines = 0;
    int files = 0;
    for (int i = 0; i <= keep + 1; i++) {
        char name[400];
        rotated_name(name, sizeof name, i);
        size_t n;
        char *text = slurp(name, &n);
        if (!text) break;
        files++;
        assert_true(n <= max); /* every line here is far shorter than max */
        assert_true(n > 0);
        if (i > 0) assert_true(n > max - 300); /* a rotated file was full: the next line did not fit */
        *total_lines += count_tags(text, seen);
        mem_free(text);
    }
    for (int t = 0; t < N_THREADS; t++)
        for (int i = 0; i < N_LINES; i++) assert_true(seen[t][i] <= 1);
    return files;
}

static void test_rotation_keeps_newest(void **s) {
    static int seen[N_THREADS][N_LINES];
    uint64_t max = 16 * 1024;
    int total = 0;
    int files = run_rotation(max, 3, seen, &total);
    assert_int_equal(files, 4); /* PATH, PATH.1 .. PATH.3 (8000 lines of ~80 bytes >> 4 files) */
    char beyond[400];
    rotated_name(beyond, sizeof beyond, 4);
    assert_false(exists(beyond));
    /* what remains is the newest lines: for each thread, every line after the first one kept
     * (a thread that finished early may have none left); the last line written is there */
    int last_kept = 0;
    for (int t = 0; t < N_THREADS; t++) {
        int first = 0;
        while (first < N_LINES && !seen[t][first]) first++;
        for (int i = first; i < N_LINES; i++) assert_int_equal(seen[t][i], 1);
        last_kept += seen[t][N_LINES - 1];
    }
    assert_true(last_kept >= 1);
    assert_true(total > 3 * (16 * 1024 / 130)); /* the 3 rotated files are nearly full */
}

static void test_rotation_all_kept(void **s) {
    /* keep larger than the rotations needed: nothing is dropped, every line is there once */
    static int seen[N_THREADS][N_LINES];
    int total = 0;
    int files = run_rotation(256 * 1024, 10, seen, &total);
    assert_true(files >= 3 && files <= 10);
    assert_int_equal(total, N_THREADS * N_LINES);
    for (int t = 0; t < N_THREADS; t++)
        for (int i = 0; i < N_LINES; i++) assert_int_equal(seen[t][i], 1);
}

static void test_keep_zero_truncates(void **s) {
    static int seen[N_THREADS][N_LINES];
    int total = 0;
    int files = run_rotation(8 * 1024, 0, seen, &total);
    assert_int_equal(files, 1);
    char p1[400];
    rotated_name(p1, sizeof p1, 1);
    assert_false(exists(p1));
    assert_true(total > 0 && total < N_THREADS * N_LINES);
}

static void test_existing_file_counts(void **s) {
    /* a file already near the limit rotates at the first line that would pass it */
    static const char digits[] = "0123456789012345678901234567890123456789012345678901234567890123456789"
                                 "012345678901234567890123456789\n"; /* 101 bytes */
    FILE *f = fopen(log_path, "w");
    assert_non_null(f);
    for (int i = 0; i < 95; i++) fputs(digits, f);
    fclose(f);
    const size_t before = 95 * 101;
    struct err err = {0};
    assert_int_equal(log_open_file(log_path, 10000, 1, &err), 0);
    for (int i = 0; i < 20; i++) log_info("T0 #%d. some text to push past ten thousand bytes", i);
    log_close_file();
    char p1[400];
    rotated_name(p1, sizeof p1, 1);
    size_t n1 = 0, n0 = 0;
    char *old = slurp(p1, &n1);
    char *cur = slurp(log_path, &n0);
    assert_non_null(old);
    assert_non_null(cur);
    assert_true(n1 <= 10000 && n1 >= before);
    assert_int_equal(strncmp(old, digits, 100), 0); /* the text from before went to PATH.1 */
    assert_true(n0 > 0);
    static int seen[N_THREADS][N_LINES];
    memset(seen, 0, sizeof seen);
    int lines = count_tags(old + before, seen) + count_tags(cur, seen);
    assert_int_equal(lines, 20);
    for (int i = 0; i < 20; i++) assert_int_equal(seen[0][i], 1);
    mem_free(old);
    mem_free(cur);
}

/* ===== Errors ===== */

static void test_open_errors(void **s) {
    struct err err = {0};
    char bad[400];
    snprintf(bad, sizeof bad, "%s/no-such-folder/kiln.log", root);
    assert_int_equal(log_open_file(bad, 1024, 1, &err), STATUS_ERR_IO);
    assert_non_null(strstr(err.msg, bad));
    assert_non_null(strstr(err.msg, "No such file"));
    err_clear(&err);
    assert_int_equal(log_open_file("", 1024, 1, &err), STATUS_ERR_INVALID);
    err_clear(&err);
    assert_int_equal(log_open_file(log_path, 0, 1, &err), STATUS_ERR_INVALID);
    err_clear(&err);
    assert_int_equal(log_open_file(log_path, 1024, -1, &err), STATUS_ERR_INVALID);
    /* logging still works, to stderr only */
    log_info("T1 #0. after failed opens");
    fflush(stderr);
    char *errs = slurp(err_path, NULL);
    assert_non_null(strstr(errs, "T1 #0. after failed opens\n"));
    mem_free(errs);
    assert_false(exists(log_path));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_lines_in_file_and_stderr, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rotation_keeps_newest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rotation_all_kept, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keep_zero_truncates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_existing_file_counts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
