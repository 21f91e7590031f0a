/* base/readahead.c -- the list of library pages a first prompt touched, written once and read
 * ahead at later starts (readahead.h).
 * The list is a text file, LIST_NAME in the cache folder:
 *   kiln-readahead 1
 *   F <size> <mtime seconds> <mtime nanoseconds> <path>
 *   R <first page> <pages>          (runs of that file, in pages of PAGE_BYTES, ascending)
 * Recording reads /proc/self/maps for the mappings of shared libraries ("*.so*" paths) and of
 * kiln's own executable, and /proc/self/pagemap for which of their pages are present (bit 63):
 * the pages this process faulted in (or the kernel mapped around a fault), not whatever else the
 * page cache holds.
 * Runs closer than GAP_PAGES merge. Replaying hands the files one folder down in the cache
 * folder (kept plans, whole) and then the runs, in list order, to fs_read_ranges
 * (READERS readers, pieces of at most PIECE bytes) on a thread of its own. At most MAX_BYTES are
 * read. */
#include "base/readahead.h"

#include "base/clock.h"
#include "base/fs.h"
#include "base/log.h"
#include "base/mem.h"
#include "base/status.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LIST_NAME "readahead-v1.txt"
#define LIST_MAGIC "kiln-readahead 1"
#define LIST_MAX ((size_t)8 << 20)     /* bytes of list file read at most */
#define PAGE_BYTES 4096                /* the list's unit (the page size is checked at record) */
#define GAP_PAGES 16                   /* runs this close merge (64 KiB: less than a read costs) */
#define PIECE ((size_t)4 << 20)        /* bytes per read */
#define READERS 4                      /* threads reading at once */
#define MAX_BYTES ((uint64_t)2 << 30)  /* read ahead at most this much */
#define MAX_FILES 512
#define CACHE_FILE_MAX ((uint64_t)8 << 20) /* a kept plan larger than this is not read ahead */
#define CACHE_MAX ((uint64_t)64 << 20)     /* kept plans read ahead at most */
#define CACHE_FILES_MAX 384                /* of MAX_FILES, at most this many kept plans */

struct readahead {
    int fds[MAX_FILES];
    int n_files;
    struct fs_range *ranges;   /* the list's runs of unchanged files, in list order */
    size_t n_ranges;
    uint64_t total;            /* bytes in ranges (at most MAX_BYTES) */
    pthread_t thread;          /* runs fs_read_ranges, READERS readers in all */
    uint64_t bytes;            /* read, once the thread is done */
    double t0, t_done;
};

/* The folder (dir, or the cache folder when NULL) into out; false when there is none. */
static bool base_dir(const char *dir, char *out, size_t n) {
    if (!dir) return fs_cache_dir(out, n);
    int k = snprintf(out, n, "%s", dir);
    return k > 0 && (size_t)k < n;
}

/* The list's path under dir (NULL: the cache folder) into out; false when there is none. */
static bool list_path(const char *dir, char *out, size_t n) {
    char base[1024];
    if (!base_dir(dir, base, sizeof base)) return false;
    int k = snprintf(out, n, "%s/%s", base, LIST_NAME);
    return k > 0 && (size_t)k < n;
}

static bool same_file(const char *path, uint64_t size, int64_t sec, int64_t nsec) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size == size &&
           (int64_t)st.st_mtim.tv_sec == sec && (int64_t)st.st_mtim.tv_nsec == nsec;
}

/* Walks the list text: calls on_file for each F line (returning whether its runs are wanted) and
 * on_run for each R line of a wanted file. Returns false on a malformed list. */
typedef bool (*file_fn)(void *u, const char *path, uint64_t size, int64_t sec, int64_t nsec);
typedef void (*run_fn)(void *u, uint64_t page, uint64_t pages);
static bool walk_list(char *text, void *u, file_fn on_file, run_fn on_run) {
    char *save = NULL, *line = strtok_r(text, "\n", &save);
    if (!line || strcmp(line, LIST_MAGIC) != 0) return false;
    bool want = false;
    while ((line = strtok_r(NULL, "\n", &save))) {
        if (line[0] == 'F') {
            uint64_t size;
            int64_t sec, nsec;
            int at = 0;
            if (sscanf(line, "F %" SCNu64 " %" SCNd64 " %" SCNd64 " %n", &size, &sec, &nsec, &at) != 3 || !at ||
                line[at] != '/')
                return false;
            want = on_file(u, line + at, size, sec, nsec);
        } else if (line[0] == 'R') {
            uint64_t page, pages;
            if (sscanf(line, "R %" SCNu64 " %" SCNu64, &page, &pages) != 2) return false;
            if (want && on_run) on_run(u, page, pages);
        } else {
            return false;
        }
    }
    return true;
}

/* ===== Replay ===== */

static bool start_file(void *u, const char *path, uint64_t size, int64_t sec, int64_t nsec) {
    struct readahead *r = u;
    if (r->n_files == MAX_FILES || !same_file(path, size, sec, nsec)) return false;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    r->fds[r->n_files++] = fd;
    return true;
}

static void start_run(void *u, uint64_t page, uint64_t pages) {
    struct readahead *r = u;
    uint64_t len = pages * PAGE_BYTES;
    if (r->total >= MAX_BYTES) return;
    if (len > MAX_BYTES - r->total) len = MAX_BYTES - r->total;
    r->ranges = mem_realloc(r->ranges, (r->n_ranges + 1) * sizeof *r->ranges);
    r->ranges[r->n_ranges++] = (struct fs_range){.fd = r->fds[r->n_files - 1], .off = page * PAGE_BYTES, .len = len};
    r->total += len;
}

/* Every file one folder down in the cache folder (the plans the GPU backend keeps there: cuDNN's
 * attention plans, the convolutions' algorithms), whole: the warm-up reads them one by one, each
 * a wait for a disk that the checkpoint's read keeps busy (30-60 ms per attention plan on an H100
 * lease). Before the libraries' runs: small, and wanted from the device's first plan on. */
static void add_cache_files(struct readahead *r, const char *base) {
    DIR *top = opendir(base);
    if (!top) return;
    uint64_t total = 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(top)) && n < CACHE_FILES_MAX) {
        if (de->d_name[0] == '.') continue;
        char sub[PATH_MAX];
        if ((size_t)snprintf(sub, sizeof sub, "%s/%s", base, de->d_name) >= sizeof sub) continue;
        DIR *d = opendir(sub); /* NULL for a file */
        if (!d) continue;
        struct dirent *fe;
        while ((fe = readdir(d)) && n < CACHE_FILES_MAX && r->n_files < MAX_FILES) {
            char path[PATH_MAX];
            struct stat st;
            if (fe->d_name[0] == '.' || (size_t)snprintf(path, sizeof path, "%s/%s", sub, fe->d_name) >= sizeof path ||
                stat(path, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 0 ||
                (uint64_t)st.st_size > CACHE_FILE_MAX || total + (uint64_t)st.st_size > CACHE_MAX)
                continue;
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) continue;
            r->fds[r->n_files++] = fd;
            r->ranges = mem_realloc(r->ranges, (r->n_ranges + 1) * sizeof *r->ranges);
            r->ranges[r->n_ranges++] = (struct fs_range){.fd = fd, .off = 0, .len = (uint64_t)st.st_size};
            r->total += (uint64_t)st.st_size;
            total += (uint64_t)st.st_size;
            n++;
        }
        closedir(d);
    }
    closedir(top);
}

static void *replay(void *arg) {
    struct readahead *r = arg;
    r->bytes = fs_read_ranges(r->ranges, r->n_ranges, PIECE, READERS, NULL, NULL);
    r->t_done = clock_now();
    return NULL;
}

struct readahead *readahead_start(const char *dir) {
    const char *env = getenv("KILN_READAHEAD");
    if (env && strcmp(env, "0") == 0) return NULL;
    char path[1100], base[1024];
    if (!base_dir(dir, base, sizeof base) || !list_path(dir, path, sizeof path)) return NULL;
    char *text = NULL;
    size_t len = 0;
    if (fs_read_whole(path, LIST_MAX, &text, &len) != 0) return NULL;
    struct readahead *r = mem_calloc(1, sizeof *r);
    r->t0 = clock_now();
    add_cache_files(r, base);
    bool ok = walk_list(text, r, start_file, start_run);
    mem_free(text);
    if (!ok) log_debug("readahead: %s is malformed: not used", path);
    /* the readers take no signal (a server that waits for SIGINT on one thread must not have it
       delivered to one of these; fs_read_ranges' helpers inherit the mask) */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    bool started = ok && r->n_ranges > 0 && pthread_create(&r->thread, NULL, replay, r) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!started) {
        for (int i = 0; i < r->n_files; i++) close(r->fds[i]);
        mem_free(r->ranges);
        mem_free(r);
        return NULL;
    }
    return r;
}

uint64_t readahead_end(struct readahead *r) {
    if (!r) return 0;
    pthread_join(r->thread, NULL);
    log_debug("readahead: %.1f MiB of %d libraries read in %.2f s", (double)r->bytes / 1048576.0, r->n_files,
              r->t_done - r->t0);
    uint64_t bytes = r->bytes;
    for (int i = 0; i < r->n_files; i++) close(r->fds[i]);
    mem_free(r->ranges);
    mem_free(r);
    return bytes;
}

/* ===== Record ===== */

/* Pages of one file the process has present, as page numbers of the file (unsorted). */
struct file_pages {
    char *path;
    uint64_t *pages;
    size_t n, cap;
};

static bool unchanged_file(void *u, const char *path, uint64_t size, int64_t sec, int64_t nsec) {
    bool *all = u;
    if (!same_file(path, size, sec, nsec)) *all = false;
    return false;
}

/* True when the list under path exists, parses, and names only unchanged files. */
static bool list_current(const char *path) {
    char *text = NULL;
    size_t len = 0;
    if (fs_read_whole(path, LIST_MAX, &text, &len) != 0) return false;
    bool all = true, ok = walk_list(text, &all, unchanged_file, NULL);
    mem_free(text);
    return ok && all;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Adds the present pages of mapping [lo, hi) at file offset off to f. */
static void add_present(int pm, uint64_t lo, uint64_t hi, uint64_t off, struct file_pages *f) {
    const long page = sysconf(_SC_PAGESIZE);
    uint64_t n = (hi - lo) / (uint64_t)page, done = 0;
    uint64_t ents[512];
    while (done < n) {
        size_t want = n - done < 512 ? (size_t)(n - done) : 512;
        ssize_t got = pread(pm, ents, want * sizeof ents[0], (off_t)((lo / (uint64_t)page + done) * sizeof ents[0]));
        if (got <= 0) return;
        size_t k = (size_t)got / sizeof ents[0];
        for (size_t i = 0; i < k; i++) {
            if (!(ents[i] >> 63 & 1)) continue; /* not present in this process's page table */
            if (f->n == f->cap) {
                f->cap = f->cap ? 2 * f->cap : 1024;
                f->pages = mem_realloc(f->pages, f->cap * sizeof *f->pages);
            }
            f->pages[f->n++] = off / PAGE_BYTES + done + i;
        }
        done += k;
    }
}

/* Appends f's runs (sorted, merged across gaps of GAP_PAGES) to out. */
static void append_runs(char **out, size_t *len, size_t *cap, struct file_pages *f) {
    qsort(f->pages, f->n, sizeof f->pages[0], cmp_u64);
    for (size_t i = 0; i < f->n;) {
        uint64_t first = f->pages[i], last = first;
        size_t j = i + 1;
        for (; j < f->n && f->pages[j] <= last + GAP_PAGES; j++) last = f->pages[j] > last ? f->pages[j] : last;
        char line[64];
        int k = snprintf(line, sizeof line, "R %" PRIu64 " %" PRIu64 "\n", first, last - first + 1);
        if (*len + (size_t)k + 1 > *cap) {
            *cap = 2 * (*len + (size_t)k + 1);
            *out = mem_realloc(*out, *cap);
        }
        memcpy(*out + *len, line, (size_t)k + 1);
        *len += (size_t)k;
        i = j;
    }
}

int readahead_record(const char *dir, struct err *err) {
    char path[1100];
    if (!list_path(dir, path, sizeof path)) return 0; /* caching is off */
    if (list_current(path)) return 0;
    if (sysconf(_SC_PAGESIZE) != PAGE_BYTES) return 0; /* the list's unit: nothing to record elsewhere */
    FILE *maps = fopen("/proc/self/maps", "r");
    int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (!maps || pm < 0) {
        if (maps) fclose(maps);
        if (pm >= 0) close(pm);
        return 0; /* no /proc: nothing to learn */
    }
    char exe[4096] = "";
    ssize_t ne = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[ne > 0 ? ne : 0] = 0;
    struct file_pages files[MAX_FILES];
    int n_files = 0;
    char line[4096];
    while (fgets(line, sizeof line, maps)) {
        uint64_t lo, hi, off;
        int at = 0;
        if (sscanf(line, "%" SCNx64 "-%" SCNx64 " %*s %" SCNx64 " %*s %*s %n", &lo, &hi, &off, &at) != 3 || !at)
            continue;
        char *p = line + at;
        p[strcspn(p, "\n")] = 0;
        /* shared libraries and kiln itself (its pages fault in while the libraries are read) */
        if (p[0] != '/' || (!strstr(strrchr(p, '/'), ".so") && strcmp(p, exe) != 0)) continue;
        int k = 0;
        while (k < n_files && strcmp(files[k].path, p) != 0) k++;
        if (k == n_files) {
            if (n_files == MAX_FILES) continue;
            files[n_files++] = (struct file_pages){.path = mem_strdup(p)};
        }
        add_present(pm, lo, hi, off, &files[k]);
    }
    fclose(maps);
    close(pm);
    size_t cap = 4096, len = 0;
    char *out = mem_alloc(cap);
    len = (size_t)snprintf(out, cap, "%s\n", LIST_MAGIC);
    uint64_t pages = 0;
    for (int i = 0; i < n_files; i++) {
        struct stat st;
        if (files[i].n && stat(files[i].path, &st) == 0 && S_ISREG(st.st_mode)) {
            char head[1200];
            int k = snprintf(head, sizeof head, "F %" PRIu64 " %" PRId64 " %" PRId64 " %s\n", (uint64_t)st.st_size,
                             (int64_t)st.st_mtim.tv_sec, (int64_t)st.st_mtim.tv_nsec, files[i].path);
            if (k > 0 && (size_t)k < sizeof head) {
                if (len + (size_t)k + 1 > cap) {
                    cap = 2 * (len + (size_t)k + 1);
                    out = mem_realloc(out, cap);
                }
                memcpy(out + len, head, (size_t)k + 1);
                len += (size_t)k;
                append_runs(&out, &len, &cap, &files[i]);
                pages += files[i].n;
            }
        }
        mem_free(files[i].pages);
        mem_free(files[i].path);
    }
    char folder[1100];
    snprintf(folder, sizeof folder, "%s", path);
    *strrchr(folder, '/') = 0;
    int rc = fs_make_dirs(folder, 0755, NULL, 0);
    if (rc == 0) rc = fs_write_whole(path, out, len);
    mem_free(out);
    if (rc) return err_set(err, STATUS_ERR_IO, "cannot write %s: %s", path, strerror(-rc));
    log_debug("readahead: %.1f MiB of %d libraries' pages listed in %s", (double)pages * PAGE_BYTES / 1048576.0,
              n_files, path);
    return 0;
}
