/* io/savepath.c -- output file naming and folder safety (ComfyUI folder_paths.py).
 * Owns: nothing persistent.
 * Must not: write image data.
 * Threads: any.
 * Ownership: results go in caller storage. */
#include "io/savepath.h"

#include "base/status.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ===== Paths ===== */

void io_normpath(const char *path, char *out, size_t n) {
    if (n == 0) return;
    bool abs = path[0] == '/';
    /* POSIX normpath keeps exactly two leading slashes; everything else collapses */
    int lead = abs ? (path[1] == '/' && path[2] != '/' ? 2 : 1) : 0;
    char buf[4096];
    size_t len = 0;
    int depth = 0; /* components that ".." may pop */
    const char *s = path;
    while (*s) {
        while (*s == '/') s++;
        const char *e = s;
        while (*e && *e != '/') e++;
        size_t k = (size_t)(e - s);
        if (k == 0 || (k == 1 && s[0] == '.')) {
            /* nothing */
        } else if (k == 2 && s[0] == '.' && s[1] == '.') {
            if (depth > 0) {
                while (len > 0 && buf[len - 1] != '/') len--;
                if (len > 0) len--;
                depth--;
            } else if (!abs) {
                if (len && len + 1 < sizeof buf) buf[len++] = '/';
                if (len + 2 < sizeof buf) buf[len++] = '.', buf[len++] = '.';
            }
        } else if (len + k + 2 < sizeof buf) {
            if (len) buf[len++] = '/';
            memcpy(buf + len, s, k);
            len += k;
            depth++;
        }
        s = e;
    }
    buf[len] = 0;
    snprintf(out, n, "%.*s%s", lead, "//", buf);
    if (!out[0]) snprintf(out, n, ".");
}

/* realpath of the longest existing ancestor of p, with the rest appended. */
static void resolve(const char *p, char *out, size_t n) {
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", p);
    char rest[PATH_MAX] = "";
    for (;;) {
        char rp[PATH_MAX];
        if (realpath(tmp, rp)) {
            char norm[PATH_MAX * 2];
            snprintf(norm, sizeof norm, "%s%s%s", rp, *rest ? "/" : "", rest);
            io_normpath(norm, out, n);
            return;
        }
        char *slash = strrchr(tmp, '/');
        if (!slash || slash == tmp) { /* nothing exists: plain normalisation */
            io_normpath(p, out, n);
            return;
        }
        char nrest[PATH_MAX];
        snprintf(nrest, sizeof nrest, "%s%s%s", slash + 1, *rest ? "/" : "", rest);
        snprintf(rest, sizeof rest, "%s", nrest);
        *slash = 0;
    }
}

int io_path_within(const char *dir, const char *target) {
    char d[PATH_MAX], t[PATH_MAX];
    char absd[PATH_MAX], abst[PATH_MAX];
    char cwd[PATH_MAX] = ".";
    if (!getcwd(cwd, sizeof cwd)) snprintf(cwd, sizeof cwd, ".");
    snprintf(absd, sizeof absd, "%s%s%s", dir[0] == '/' ? "" : cwd, dir[0] == '/' ? "" : "/", dir);
    snprintf(abst, sizeof abst, "%s%s%s", target[0] == '/' ? "" : cwd, target[0] == '/' ? "" : "/", target);
    resolve(absd, d, sizeof d);
    resolve(abst, t, sizeof t);
    size_t n = strlen(d);
    if (strcmp(d, "/") == 0) return 1;
    return strncmp(d, t, n) == 0 && (t[n] == 0 || t[n] == '/');
}

static int mkdirs(const char *path) {
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(tmp, 0777) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    if (mkdir(tmp, 0777) != 0 && errno != EEXIST) return -1;
    return 0;
}

/* ===== Prefix variables ===== */

/* Replaces every `from` in s (in place, bounded by n) with `to`. */
static void replace_all(char *s, size_t n, const char *from, const char *to) {
    char out[4096];
    size_t o = 0, fl = strlen(from), tl = strlen(to);
    for (const char *p = s; *p;) {
        if (strncmp(p, from, fl) == 0) {
            if (o + tl < sizeof out) memcpy(out + o, to, tl), o += tl;
            p += fl;
        } else {
            if (o + 1 < sizeof out) out[o++] = *p;
            p++;
        }
    }
    out[o] = 0;
    snprintf(s, n, "%s", out);
}

/* Python int() of the counter part of a file name (0 when it is not a number). */
static long parse_counter(const char *s, size_t n) {
    char buf[64];
    if (n >= sizeof buf) return 0;
    memcpy(buf, s, n);
    buf[n] = 0;
    char *p = buf;
    while (isspace((unsigned char)*p)) p++;
    char *e = p + strlen(p);
    while (e > p && isspace((unsigned char)e[-1])) *--e = 0;
    if (*p == '+' || *p == '-') p++;
    if (!*p) return 0;
    for (char *c = p; *c; c++)
        if (!isdigit((unsigned char)*c)) return 0;
    return strtol(buf, NULL, 10);
}

int io_save_path(const char *prefix_in, const char *output_dir, int64_t width, int64_t height, struct io_save_path *out,
                 struct err *err) {
    memset(out, 0, sizeof *out);
    char prefix[4096];
    snprintf(prefix, sizeof prefix, "%s", prefix_in);
    if (strchr(prefix, '%')) {
        char v[32];
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        snprintf(v, sizeof v, "%lld", (long long)width);
        replace_all(prefix, sizeof prefix, "%width%", v);
        snprintf(v, sizeof v, "%lld", (long long)height);
        replace_all(prefix, sizeof prefix, "%height%", v);
        snprintf(v, sizeof v, "%d", tm.tm_year + 1900);
        replace_all(prefix, sizeof prefix, "%year%", v);
        snprintf(v, sizeof v, "%02d", tm.tm_mon + 1);
        replace_all(prefix, sizeof prefix, "%month%", v);
        snprintf(v, sizeof v, "%02d", tm.tm_mday);
        replace_all(prefix, sizeof prefix, "%day%", v);
        snprintf(v, sizeof v, "%02d", tm.tm_hour);
        replace_all(prefix, sizeof prefix, "%hour%", v);
        snprintf(v, sizeof v, "%02d", tm.tm_min);
        replace_all(prefix, sizeof prefix, "%minute%", v);
        snprintf(v, sizeof v, "%02d", tm.tm_sec);
        replace_all(prefix, sizeof prefix, "%second%", v);
    }

    /* basename of the raw prefix gives the length ComfyUI compares file names with */
    const char *base_raw = strrchr(prefix, '/');
    size_t prefix_len = strlen(base_raw ? base_raw + 1 : prefix);

    char norm[4096];
    io_normpath(prefix, norm, sizeof norm);
    const char *slash = strrchr(norm, '/');
    size_t sub_len = slash ? (size_t)(slash - norm) : 0;
    const char *file = slash ? slash + 1 : norm;
    if (slash == norm) sub_len = 1; /* "/x": the subfolder is "/" */
    if (sub_len >= sizeof out->subfolder || strlen(file) >= sizeof out->filename ||
        strlen(output_dir) + sub_len + 2 >= sizeof out->folder)
        return err_set(err, STATUS_ERR_INVALID, "filename prefix '%s' is too long", prefix_in);
    memcpy(out->subfolder, norm, sub_len);
    out->subfolder[sub_len] = 0;
    memcpy(out->filename, file, strlen(file) + 1);
    if (out->subfolder[0] == '/') memcpy(out->folder, out->subfolder, sub_len + 1);
    else if (out->subfolder[0]) snprintf(out->folder, sizeof out->folder, "%s/%.1023s", output_dir, out->subfolder);
    else snprintf(out->folder, sizeof out->folder, "%.4095s", output_dir);

    if (!io_path_within(output_dir, out->folder)) {
        char absf[PATH_MAX];
        resolve(out->folder, absf, sizeof absf);
        return err_set(err, STATUS_ERR_INVALID,
                       "**** ERROR: Saving image outside the output folder is not allowed.\n full_output_folder: "
                       "%s\n         output_dir: %s",
                       absf, output_dir);
    }

    DIR *d = opendir(out->folder);
    if (!d) {
        if (mkdirs(out->folder) != 0)
            return err_set(err, STATUS_ERR_IO, "cannot create the output folder %s: %s", out->folder, strerror(errno));
        out->counter = 1;
        return 0;
    }
    long best = -1;
    bool any = false;
    size_t flen = strlen(out->filename);
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *name = e->d_name;
        size_t nl = strlen(name);
        /* name[:prefix_len+1] must be filename + "_" */
        size_t plen = prefix_len + 1 < nl ? prefix_len + 1 : nl;
        if (plen == 0 || plen - 1 != flen || memcmp(name, out->filename, flen) != 0 || name[plen - 1] != '_')
            continue;
        const char *rem = name + plen;
        size_t rl = strcspn(rem, "."); /* remainder.split('.')[0] */
        size_t dl = strcspn(rem, "_"); /* .split('_')[0] */
        long c = parse_counter(rem, dl < rl ? dl : rl);
        if (!any || c > best) best = c;
        any = true;
    }
    closedir(d);
    out->counter = any ? (int)best + 1 : 1;
    return 0;
}
