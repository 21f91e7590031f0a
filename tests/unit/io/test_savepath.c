/* tests/unit/io/test_savepath.c -- io/savepath.c: ComfyUI's "<prefix>_%05d_.png" counter,
 * subfolders, prefix variables and refusal of paths outside the output folder. Expected values
 * follow folder_paths.get_save_image_path and Python's os.path.normpath. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/status.h"
#include "io/savepath.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char root[256]; /* a fresh folder per test run: root/output, root/elsewhere */
static char out_dir[300];

static void touch(const char *rel) {
    char p[600];
    snprintf(p, sizeof p, "%s/%s", out_dir, rel);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fclose(f);
}

static int setup(void **s) {
    snprintf(root, sizeof root, "/tmp/kiln_savepath_XXXXXX");
    if (!mkdtemp(root)) return -1;
    snprintf(out_dir, sizeof out_dir, "%s/output", root);
    return mkdir(out_dir, 0777);
}

static int teardown(void **s) {
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_normpath(void **s) {
    static const char *cases[][2] = {
        {"ComfyUI", "ComfyUI"}, {"a/b/../c", "a/c"}, {"../x", "../x"}, {"a/../../x", "../x"},
        {"/abs/./x", "/abs/x"}, {"/..", "/"},     {"a//b/", "a/b"},     {"", "."},
        {"./", "."},            {"//x", "//x"},   {"///x", "/x"},       {"a/./b/.", "a/b"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char got[256];
        io_normpath(cases[i][0], got, sizeof got);
        if (strcmp(got, cases[i][1]) != 0) fail_msg("normpath(%s) = %s, want %s", cases[i][0], got, cases[i][1]);
    }
}

static void test_counter(void **s) {
    struct io_save_path sp;
    struct err err = {0};
    assert_int_equal(io_save_path("ComfyUI", out_dir, 512, 512, &sp, &err), 0);
    assert_int_equal(sp.counter, 1);
    assert_string_equal(sp.subfolder, "");
    assert_string_equal(sp.filename, "ComfyUI");
    assert_string_equal(sp.folder, out_dir);

    touch("ComfyUI_00001_.png");
    touch("ComfyUI_00007_.png");
    touch("ComfyUI_00003_.png");
    touch("ComfyUIx_00042_.png");  /* another prefix */
    touch("ComfyUI_abc_.png");     /* not a number: counts as 0 */
    touch("comfyui_00099_.png");   /* case differs (POSIX normcase keeps case) */
    touch("ComfyUI_00011.webp");   /* remainder "00011.webp": split('.') gives 00011 */
    assert_int_equal(io_save_path("ComfyUI", out_dir, 512, 512, &sp, &err), 0);
    assert_int_equal(sp.counter, 12);

    /* gaps are not refilled; only the prefix's own files count */
    assert_int_equal(io_save_path("ComfyUIx", out_dir, 512, 512, &sp, &err), 0);
    assert_int_equal(sp.counter, 43);
    assert_int_equal(io_save_path("Other", out_dir, 512, 512, &sp, &err), 0);
    assert_int_equal(sp.counter, 1);
}

static void test_subfolder(void **s) {
    struct io_save_path sp;
    struct err err = {0};
    assert_int_equal(io_save_path("sub/dir/name", out_dir, 64, 32, &sp, &err), 0);
    assert_string_equal(sp.subfolder, "sub/dir");
    assert_string_equal(sp.filename, "name");
    assert_int_equal(sp.counter, 1);
    struct stat st;
    assert_int_equal(stat(sp.folder, &st), 0); /* created */
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(io_save_path("a/../b", out_dir, 1, 1, &sp, &err), 0);
    assert_string_equal(sp.subfolder, "");
    assert_string_equal(sp.filename, "b");
}

static void test_variables(void **s) {
    struct io_save_path sp;
    struct err err = {0};
    assert_int_equal(io_save_path("img_%width%x%height%_%year%", out_dir, 640, 480, &sp, &err), 0);
    char want[64];
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    snprintf(want, sizeof want, "img_640x480_%d", tm.tm_year + 1900);
    assert_string_equal(sp.filename, want);
    /* unknown variables stay as they are */
    assert_int_equal(io_save_path("x_%batch_num%_%nope%", out_dir, 1, 1, &sp, &err), 0);
    assert_string_equal(sp.filename, "x_%batch_num%_%nope%");
}

static void test_escapes_refused(void **s) {
    static const char *bad[] = {"../evil", "/etc/evil", "a/../../evil", "sub/../../../tmp/x", "..//x/y"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct io_save_path sp;
        struct err err = {0};
        int rc = io_save_path(bad[i], out_dir, 1, 1, &sp, &err);
        if (rc != STATUS_ERR_INVALID) fail_msg("%s was accepted (rc %d)", bad[i], rc);
        assert_non_null(strstr(err.msg, "Saving image outside the output folder is not allowed"));
    }
    /* a symlink inside output pointing outside is refused too */
    char elsewhere[400], link[400];
    snprintf(elsewhere, sizeof elsewhere, "%s/elsewhere", root);
    snprintf(link, sizeof link, "%s/link", out_dir);
    assert_int_equal(mkdir(elsewhere, 0777), 0);
    assert_int_equal(symlink(elsewhere, link), 0);
    struct io_save_path sp;
    struct err err = {0};
    assert_int_equal(io_save_path("link/new/x", out_dir, 1, 1, &sp, &err), STATUS_ERR_INVALID);
    char made[500];
    snprintf(made, sizeof made, "%s/new", elsewhere);
    struct stat st;
    assert_int_not_equal(stat(made, &st), 0); /* nothing created outside */
    /* a symlink that stays inside is fine */
    char inner[400], link2[400];
    snprintf(inner, sizeof inner, "%s/inner", out_dir);
    snprintf(link2, sizeof link2, "%s/link2", out_dir);
    assert_int_equal(mkdir(inner, 0777), 0);
    assert_int_equal(symlink(inner, link2), 0);
    assert_int_equal(io_save_path("link2/x", out_dir, 1, 1, &sp, &err), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_normpath),
        cmocka_unit_test_setup_teardown(test_counter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_subfolder, setup, teardown),
        cmocka_unit_test_setup_teardown(test_variables, setup, teardown),
        cmocka_unit_test_setup_teardown(test_escapes_refused, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
