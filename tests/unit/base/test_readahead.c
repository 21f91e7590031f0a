/* tests/unit/base/test_readahead.c -- base/readahead.c: a record lists this process's mapped
 * libraries (libc at least) with runs of pages; a second record leaves a current list alone;
 * the list is read back (bytes read); a list naming a changed file is skipped and rewritten; a
 * malformed list and KILN_READAHEAD=0 start nothing; the cache folder's kept plans are read with
 * a list. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/fs.h"
#include "base/mem.h"
#include "base/readahead.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char root[256], list[300];

static int setup(void **state) {
    (void)state;
    snprintf(root, sizeof root, "/tmp/kiln-test-readahead-XXXXXX");
    if (!mkdtemp(root)) return -1;
    snprintf(list, sizeof list, "%s/readahead-v1.txt", root);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    unlink(list);
    rmdir(root);
    return 0;
}

static char *read_list(void) {
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(fs_read_whole(list, 1 << 22, &text, &len), 0);
    return text;
}

static void test_record_and_replay(void **state) {
    (void)state;
    unlink(list);
    struct err err = {0};
    assert_int_equal(readahead_record(root, &err), 0);
    char *text = read_list();
    assert_true(strncmp(text, "kiln-readahead 1\n", 17) == 0);
    assert_non_null(strstr(text, "libc.so")); /* mapped, and its code is running */
    assert_non_null(strstr(text, "\nR "));
    mem_free(text);

    /* a current list is not written again */
    struct stat a, b;
    assert_int_equal(stat(list, &a), 0);
    usleep(20000);
    assert_int_equal(readahead_record(root, &err), 0);
    assert_int_equal(stat(list, &b), 0);
    assert_true(a.st_mtim.tv_sec == b.st_mtim.tv_sec && a.st_mtim.tv_nsec == b.st_mtim.tv_nsec);

    struct readahead *r = readahead_start(root);
    assert_non_null(r);
    assert_true(readahead_end(r) > 0);
    assert_int_equal(readahead_end(NULL), 0);
}

static void test_changed_file(void **state) {
    (void)state;
    /* a file whose size no longer matches: skipped (nothing to read), and the list rewritten */
    FILE *f = fopen(list, "w");
    assert_non_null(f);
    fprintf(f, "kiln-readahead 1\nF 1 0 0 /proc/self/exe\nR 0 1\n");
    fclose(f);
    assert_null(readahead_start(root));
    struct err err = {0};
    assert_int_equal(readahead_record(root, &err), 0);
    char *text = read_list();
    assert_null(strstr(text, "/proc/self/exe"));
    assert_non_null(strstr(text, "libc.so"));
    mem_free(text);
}

/* The files one folder down (the GPU backend's kept plans) are read too, whole, even when no
 * library of the list is: only with a list. */
static void test_cache_files(void **state) {
    (void)state;
    char sub[300], a[320], b[320];
    snprintf(sub, sizeof sub, "%s/plans", root);
    snprintf(a, sizeof a, "%s/a.json", sub);
    snprintf(b, sizeof b, "%s/b.txt", sub);
    mkdir(sub, 0755);
    char buf[5000];
    memset(buf, 'x', sizeof buf);
    assert_int_equal(fs_write_whole(a, buf, 5000), 0);
    assert_int_equal(fs_write_whole(b, buf, 123), 0);
    unlink(list);
    assert_null(readahead_start(root)); /* no list: nothing */
    FILE *f = fopen(list, "w");
    assert_non_null(f);
    fprintf(f, "kiln-readahead 1\nF 1 0 0 /proc/self/exe\nR 0 1\n"); /* a changed file only */
    fclose(f);
    struct readahead *r = readahead_start(root);
    assert_non_null(r);
    assert_int_equal(readahead_end(r), 5000 + 123);
    unlink(a);
    unlink(b);
    rmdir(sub);
    unlink(list);
}

static void test_refusals(void **state) {
    (void)state;
    FILE *f = fopen(list, "w");
    assert_non_null(f);
    fprintf(f, "not a list\n");
    fclose(f);
    assert_null(readahead_start(root)); /* malformed */
    unlink(list);
    assert_null(readahead_start(root)); /* missing */
    struct err err = {0};
    assert_int_equal(readahead_record(root, &err), 0);
    setenv("KILN_READAHEAD", "0", 1);
    assert_null(readahead_start(root)); /* switched off */
    unsetenv("KILN_READAHEAD");
    struct readahead *r = readahead_start(root);
    assert_non_null(r);
    readahead_end(r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_record_and_replay),
        cmocka_unit_test(test_changed_file),
        cmocka_unit_test(test_cache_files),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
