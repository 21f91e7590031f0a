/* tests/unit/base/test_fs.c -- base/fs.c: mkdir -p (nested, existing, a file in the way), the
 * cache folder's order of variables and the "" switch, whole-file reads (size limit, missing
 * file) and writes (replace whole, no temporary file left behind, a missing folder fails), byte
 * ranges read ahead. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/fs.h"
#include "base/mem.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char root[256];

static int setup(void **state) {
    (void)state;
    snprintf(root, sizeof root, "/tmp/kiln-test-fs-XXXXXX");
    return mkdtemp(root) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    return system(cmd) == 0 ? 0 : -1;
}

static bool is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static void test_make_dirs(void **state) {
    (void)state;
    char p[512], failed[512] = "";
    snprintf(p, sizeof p, "%s/a/b/c", root);
    assert_int_equal(fs_make_dirs(p, 0755, failed, sizeof failed), 0);
    assert_true(is_dir(p));
    assert_int_equal(fs_make_dirs(p, 0755, failed, sizeof failed), 0); /* again: already there */
    /* a file where a folder should be */
    char f[512];
    snprintf(f, sizeof f, "%s/a/file", root);
    assert_int_equal(fs_write_whole(f, "x", 1), 0);
    snprintf(p, sizeof p, "%s/a/file/d", root);
    int rc = fs_make_dirs(p, 0755, failed, sizeof failed);
    assert_true(rc == -ENOTDIR || rc == -EEXIST);
    assert_string_equal(failed, f);
}

static void test_cache_dir(void **state) {
    (void)state;
    char out[512];
    setenv("KILN_CACHE_DIR", "/x/own", 1);
    setenv("XDG_CACHE_HOME", "/x/xdg", 1);
    setenv("HOME", "/x/home", 1);
    assert_true(fs_cache_dir(out, sizeof out));
    assert_string_equal(out, "/x/own");
    unsetenv("KILN_CACHE_DIR");
    assert_true(fs_cache_dir(out, sizeof out));
    assert_string_equal(out, "/x/xdg/kiln");
    unsetenv("XDG_CACHE_HOME");
    assert_true(fs_cache_dir(out, sizeof out));
    assert_string_equal(out, "/x/home/.cache/kiln");
    setenv("KILN_CACHE_DIR", "", 1); /* off */
    assert_false(fs_cache_dir(out, sizeof out));
    unsetenv("KILN_CACHE_DIR");
    unsetenv("HOME");
    assert_false(fs_cache_dir(out, sizeof out));
    setenv("HOME", "/x/home", 1);
    assert_false(fs_cache_dir(out, 8)); /* does not fit */
}

static void test_read_write_whole(void **state) {
    (void)state;
    char p[512];
    snprintf(p, sizeof p, "%s/data.json", root);
    char *buf;
    size_t len;
    assert_int_equal(fs_read_whole(p, 100, &buf, &len), -ENOENT);
    assert_null(buf);
    assert_int_equal(fs_write_whole(p, "first version", 13), 0);
    assert_int_equal(fs_write_whole(p, "second", 6), 0); /* replaces, whole */
    assert_int_equal(fs_read_whole(p, 100, &buf, &len), 0);
    assert_int_equal(len, 6);
    assert_string_equal(buf, "second"); /* 0-terminated */
    mem_free(buf);
    assert_int_equal(fs_read_whole(p, 5, &buf, &len), -EFBIG);
    assert_null(buf);
    /* no temporary file left in the folder */
    DIR *d = opendir(root);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.') {
            assert_string_equal(e->d_name, "data.json");
            n++;
        }
    closedir(d);
    assert_int_equal(n, 1);
    snprintf(p, sizeof p, "%s/missing/data.json", root);
    assert_int_equal(fs_write_whole(p, "x", 1), -ENOENT);
}

static bool always(void *user) {
    (void)user;
    return true;
}

/* fs_read_ranges: every byte of the ranges once (pieces, several readers, a range that runs past
 * the end reads what is there), nothing once stopped, nothing for no range. */
static void test_read_ranges(void **state) {
    (void)state;
    char p[512];
    snprintf(p, sizeof p, "%s/ranges.bin", root);
    const size_t size = ((size_t)5 << 20) + 100;
    char *data = mem_calloc(1, size);
    assert_int_equal(fs_write_whole(p, data, size), 0);
    mem_free(data);
    int fd = open(p, O_RDONLY);
    assert_true(fd >= 0);
    const struct fs_range r[] = {{fd, 0, ((uint64_t)1 << 20) + 7}, {fd, (uint64_t)3 << 20, (uint64_t)4 << 20}};
    const uint64_t want = ((uint64_t)1 << 20) + 7 + (size - ((size_t)3 << 20)); /* the second ends at the file's end */
    assert_int_equal(fs_read_ranges(r, 2, (size_t)512 << 10, 3, NULL, NULL), want);
    assert_int_equal(fs_read_ranges(r, 2, (size_t)1 << 20, 1, NULL, NULL), want); /* the caller alone */
    assert_int_equal(fs_read_ranges(r, 2, (size_t)256 << 10, 64, NULL, NULL), want); /* readers capped */
    assert_int_equal(fs_read_ranges(r, 2, (size_t)512 << 10, 3, always, NULL), 0);
    assert_int_equal(fs_read_ranges(r, 0, (size_t)512 << 10, 3, NULL, NULL), 0);
    close(fd);
    unlink(p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_make_dirs, setup, teardown),
        cmocka_unit_test(test_cache_dir),
        cmocka_unit_test_setup_teardown(test_read_write_whole, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_ranges, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
