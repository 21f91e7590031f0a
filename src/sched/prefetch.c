/* sched/prefetch.c -- reads the checkpoint files of accepted prompts into the page cache in the
 * background, so that a device's load, when the prompt's turn comes, reads from memory: a cold
 * checkpoint's disk read overlaps the device's warm-up and whatever runs before the prompt.
 * It also remembers, in the cache folder, the checkpoints that the last prompts used
 * (RECALL_FILE), and at the next start reads them ahead before any prompt comes (a server
 * restarted after a reboot serves the model it served before; DECISIONS.md): such a
 * speculative read gives way as soon as a prompt needs another file.
 * Owns: struct sched_prefetch (one reader thread, a small queue of paths, the recently read ones,
 * the remembered ones); while it reads a file, fs_read_ranges' PREFETCH_STREAMS - 1 helper
 * threads and their buffers.
 * Threads: sched__prefetch_file / _note / _recall from any thread (submit); the reader thread
 * (reads, and writes the recall list); new/free from the thread that owns the sched.
 * The reads are plain preads into throwaway buffers (the page cache keeps the data), a file's
 * chunks taken in file order by PREFETCH_STREAMS readers at once; a file already read in the last
 * PREFETCH_FRESH_S seconds is not read again, and at most PREFETCH_QUEUE paths wait (more are
 * dropped: the loads then read the disk themselves). */
#include "sched/internal.h"

#include "base/clock.h"
#include "base/fs.h"
#include "base/log.h"
#include "base/mem.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PREFETCH_QUEUE 8
#define PREFETCH_RECENT 8
#define PREFETCH_FRESH_S 60.0
#define PREFETCH_CHUNK ((size_t)16 << 20) /* bytes per read */
#define PREFETCH_STREAMS 4                  /* chunks of a file read at once */
#define RECALL_MAX 2                        /* checkpoints remembered (most recent first) */
#define RECALL_FILE "prefetch-v1.txt"
#define RECALL_HEADER "kiln prefetch v1\n"

struct pf_entry {
    char *path; /* owned */
    bool spec;  /* speculative: from the recall list, gives way to a prompt's file */
};

struct sched_prefetch {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    bool started, stopping;                 /* mu */
    atomic_bool abort;                      /* set with stopping: a read in progress ends early */
    atomic_bool yield;                      /* the speculative read in progress ends early */
    atomic_bool hold;                       /* tests: the reader waits after taking an entry */
    struct pf_entry queue[PREFETCH_QUEUE];  /* mu: paths to read, oldest first */
    int n_queue;
    char *current;                          /* mu: the path being read (owned), or NULL */
    bool current_spec;                      /* mu */
    char *recent[PREFETCH_RECENT];          /* mu: paths read (or being read), owned, ring */
    double recent_t[PREFETCH_RECENT];       /* mu: when each was queued */
    int recent_next;
    uint64_t files, bytes;                  /* mu: read so far (tests, log) */
    char *dir;                              /* the recall list's folder (owned), or NULL: none kept */
    char *used[RECALL_MAX];                 /* mu: checkpoints of the last prompts, most recent first */
    int n_used;
    bool used_dirty;                        /* mu: the list file is behind `used` */
};

/* fs_read_ranges' stop: the prefetch is being freed, or a speculative read gives way. */
static bool aborted(void *user) {
    struct sched_prefetch *p = user;
    return atomic_load(&p->abort) || atomic_load(&p->yield);
}

/* Reads path to its end (or until told to stop) in PREFETCH_CHUNK pieces taken in file
 * order by PREFETCH_STREAMS readers (fs_read_ranges): the host copy's fill, which reads the same
 * file in about that order, follows right behind the read's front instead of waiting for its
 * end; returns the bytes read. */
static uint64_t read_file(struct sched_prefetch *p, const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        log_debug("prefetch: cannot open %s: %s", path, strerror(errno));
        return 0;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size <= 0) {
        close(fd);
        return 0;
    }
    (void)posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    const struct fs_range all = {.fd = fd, .off = 0, .len = (uint64_t)st.st_size};
    uint64_t total = fs_read_ranges(&all, 1, PREFETCH_CHUNK, PREFETCH_STREAMS, aborted, p);
    close(fd);
    return total;
}

/* Whether path was queued (or read) in the last PREFETCH_FRESH_S seconds (mu held). */
static bool fresh(const struct sched_prefetch *p, const char *path, double now) {
    for (int i = 0; i < PREFETCH_RECENT; i++)
        if (p->recent[i] && strcmp(p->recent[i], path) == 0 && now - p->recent_t[i] < PREFETCH_FRESH_S) return true;
    return false;
}

/* Forgets that path was read (mu held): a speculative read that gave way read only part of it,
 * so a prompt that needs it later must read it. */
static void forget_recent(struct sched_prefetch *p, const char *path) {
    for (int i = 0; i < PREFETCH_RECENT; i++)
        if (p->recent[i] && strcmp(p->recent[i], path) == 0) {
            mem_free(p->recent[i]);
            p->recent[i] = NULL;
        }
}

/* ===== The recall list: "<size> <mtime ns> <path>" per line, most recent first ===== */

static bool recall_path(const struct sched_prefetch *p, char *out, size_t n) {
    return p->dir && (size_t)snprintf(out, n, "%s/%s", p->dir, RECALL_FILE) < n;
}

/* Writes the list from a snapshot of `used` (reader thread, mu not held). A failure is logged at
 * debug level: the list only saves time. */
static void recall_write(struct sched_prefetch *p, char *const *paths, int n) {
    char file[PATH_MAX];
    if (!recall_path(p, file, sizeof file)) return;
    size_t cap = sizeof RECALL_HEADER, len = 0;
    for (int i = 0; i < n; i++) cap += strlen(paths[i]) + 64;
    char *text = mem_alloc(cap);
    len += (size_t)snprintf(text, cap, "%s", RECALL_HEADER);
    for (int i = 0; i < n; i++) {
        struct stat st;
        if (strchr(paths[i], '\n') || stat(paths[i], &st) != 0 || !S_ISREG(st.st_mode)) continue;
        int64_t mt = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
        len += (size_t)snprintf(text + len, cap - len, "%" PRIu64 " %" PRId64 " %s\n", (uint64_t)st.st_size, mt,
                                paths[i]);
    }
    char failed[PATH_MAX];
    int rc = fs_make_dirs(p->dir, 0755, failed, sizeof failed);
    if (!rc) rc = fs_write_whole(file, text, len);
    if (rc) log_debug("prefetch: cannot write %s: %s", file, strerror(-rc));
    mem_free(text);
}

/* Queues path (mu held); false when the queue is full or the prefetch stops. */
static bool enqueue(struct sched_prefetch *p, const char *path, bool spec, double now) {
    if (p->stopping || p->n_queue >= PREFETCH_QUEUE) return false;
    p->queue[p->n_queue++] = (struct pf_entry){mem_strdup(path), spec};
    mem_free(p->recent[p->recent_next]);
    p->recent[p->recent_next] = mem_strdup(path);
    p->recent_t[p->recent_next] = now;
    p->recent_next = (p->recent_next + 1) % PREFETCH_RECENT;
    pthread_cond_signal(&p->cv);
    return true;
}

static void *reader(void *arg) {
    struct sched_prefetch *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stopping && p->n_queue == 0 && !p->used_dirty) pthread_cond_wait(&p->cv, &p->mu);
        if (p->stopping) break;
        if (p->n_queue == 0) { /* only the list to write: never before a read that waits */
            char *snap[RECALL_MAX];
            int n = p->n_used;
            for (int i = 0; i < n; i++) snap[i] = mem_strdup(p->used[i]);
            p->used_dirty = false;
            pthread_mutex_unlock(&p->mu);
            recall_write(p, snap, n);
            for (int i = 0; i < n; i++) mem_free(snap[i]);
            pthread_mutex_lock(&p->mu);
            continue;
        }
        struct pf_entry e = p->queue[0];
        memmove(p->queue, p->queue + 1, (size_t)(p->n_queue - 1) * sizeof p->queue[0]);
        p->n_queue--;
        p->current = e.path;
        p->current_spec = e.spec;
        atomic_store(&p->yield, false);
        pthread_mutex_unlock(&p->mu);
        while (atomic_load(&p->hold) && !atomic_load(&p->abort)) usleep(1000);
        double t0 = clock_now();
        uint64_t n = read_file(p, e.path);
        double dt = clock_now() - t0;
        bool gave_way = e.spec && atomic_load(&p->yield);
        if (gave_way)
            log_info("prefetch: stopped reading %s ahead after %.0f MiB: a prompt needs another checkpoint", e.path,
                     (double)n / 1048576.0);
        else if (n)
            log_info("prefetch: %s read into the page cache in %.2f s (%.0f MiB/s)%s", e.path, dt,
                     (double)n / 1048576.0 / (dt > 1e-9 ? dt : 1e-9), e.spec ? ", ahead of any prompt" : "");
        pthread_mutex_lock(&p->mu);
        if (gave_way) forget_recent(p, e.path);
        p->current = NULL;
        mem_free(e.path);
        p->files += n > 0 && !gave_way;
        p->bytes += n;
        pthread_cond_broadcast(&p->cv); /* sched__prefetch_wait */
    }
    /* the last prompts' checkpoints are listed before the process ends (under mu: a small file) */
    if (p->used_dirty) recall_write(p, p->used, p->n_used);
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

struct sched_prefetch *sched__prefetch_new(const char *recall_dir) {
    struct sched_prefetch *p = mem_calloc(1, sizeof *p);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->dir = recall_dir && recall_dir[0] ? mem_strdup(recall_dir) : NULL;
    p->started = pthread_create(&p->thread, NULL, reader, p) == 0;
    if (!p->started) log_warn("prefetch: no reader thread (%s); checkpoints load from disk when their turn comes",
                              strerror(errno));
    return p;
}

void sched__prefetch_free(struct sched_prefetch *p) {
    if (!p) return;
    atomic_store(&p->abort, true);
    pthread_mutex_lock(&p->mu);
    p->stopping = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    if (p->started) pthread_join(p->thread, NULL);
    for (int i = 0; i < p->n_queue; i++) mem_free(p->queue[i].path);
    for (int i = 0; i < PREFETCH_RECENT; i++) mem_free(p->recent[i]);
    for (int i = 0; i < p->n_used; i++) mem_free(p->used[i]);
    mem_free(p->dir);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    mem_free(p);
}

bool sched__prefetch_file(struct sched_prefetch *p, const char *path) {
    if (!p || !p->started || !path) return false;
    double now = clock_now();
    pthread_mutex_lock(&p->mu);
    /* a prompt's file comes first: speculative reads that wait are dropped, the one in progress
       stops, unless it is this file */
    int k = 0;
    for (int i = 0; i < p->n_queue; i++) {
        if (p->queue[i].spec && strcmp(p->queue[i].path, path) != 0) {
            forget_recent(p, p->queue[i].path);
            mem_free(p->queue[i].path);
        } else {
            p->queue[k++] = p->queue[i];
        }
    }
    p->n_queue = k;
    bool reading = p->current && strcmp(p->current, path) == 0;
    if (p->current && p->current_spec && !reading) atomic_store(&p->yield, true);
    if (reading) p->current_spec = false; /* a prompt's read now: it does not give way */
    /* read a moment ago (or being read), unless that read is stopping: then read it again */
    bool skip = fresh(p, path, now) && !(reading && atomic_load(&p->yield));
    for (int i = 0; i < p->n_queue; i++) /* a speculative entry for it: a prompt's now */
        if (strcmp(p->queue[i].path, path) == 0) p->queue[i].spec = false;
    bool queued = !skip && enqueue(p, path, false, now);
    pthread_mutex_unlock(&p->mu);
    return queued;
}

void sched__prefetch_note(struct sched_prefetch *p, const char *path) {
    if (!p || !p->dir || !path) return;
    pthread_mutex_lock(&p->mu);
    int at = -1;
    for (int i = 0; i < p->n_used && at < 0; i++)
        if (strcmp(p->used[i], path) == 0) at = i;
    if (at != 0) { /* else first already: nothing to write */
        char *moved;
        if (at > 0) { /* taken out of its place */
            moved = p->used[at];
            memmove(p->used + at, p->used + at + 1, (size_t)(p->n_used - at - 1) * sizeof p->used[0]);
            p->n_used--;
        } else { /* new: the oldest goes when the list is full */
            moved = mem_strdup(path);
            if (p->n_used == RECALL_MAX) mem_free(p->used[--p->n_used]);
        }
        memmove(p->used + 1, p->used, (size_t)p->n_used * sizeof p->used[0]);
        p->used[0] = moved;
        p->n_used++;
        p->used_dirty = true;
        pthread_cond_signal(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
}

int sched__prefetch_recall(struct sched_prefetch *p, uint64_t max_bytes) {
    char file[PATH_MAX];
    if (!p || !p->started || !recall_path(p, file, sizeof file)) return 0;
    char *text = NULL;
    size_t len = 0;
    if (fs_read_whole(file, 1 << 20, &text, &len) != 0) return 0;
    int queued = 0;
    if (strncmp(text, RECALL_HEADER, strlen(RECALL_HEADER)) != 0) {
        log_debug("prefetch: %s is not a list of this version; ignored", file);
        mem_free(text);
        return 0;
    }
    uint64_t total = 0;
    double now = clock_now();
    pthread_mutex_lock(&p->mu);
    for (char *line = text + strlen(RECALL_HEADER), *next; *line; line = next) {
        next = strchr(line, '\n');
        if (!next) break; /* a line without its end: cut short */
        *next++ = '\0';
        unsigned long long size = 0;
        long long mt = 0;
        int at = 0;
        if (sscanf(line, "%llu %lld %n", &size, &mt, &at) != 2 || at <= 0 || !line[at]) continue;
        const char *path = line + at;
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size != size ||
            (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec != mt) {
            log_debug("prefetch: %s changed or is gone since it was listed; not read ahead", path);
            continue;
        }
        if (total + size > max_bytes) {
            log_debug("prefetch: %s not read ahead: %.0f MiB would pass the %.0f MiB allowed", path,
                      (double)(total + size) / 1048576.0, (double)max_bytes / 1048576.0);
            continue;
        }
        /* queued or read a moment ago (a reloaded prompt's): a queued path is among the recent ones */
        if (fresh(p, path, now) || !enqueue(p, path, true, now)) continue;
        total += size;
        queued++;
    }
    pthread_mutex_unlock(&p->mu);
    if (queued) log_info("prefetch: reading %d checkpoint%s that the last run used ahead (%.0f MiB)", queued,
                         queued == 1 ? "" : "s", (double)total / 1048576.0);
    mem_free(text);
    return queued;
}

void sched__prefetch_hold(struct sched_prefetch *p, bool hold) { atomic_store(&p->hold, hold); }

bool sched__prefetch_reading(struct sched_prefetch *p, const char *path) {
    pthread_mutex_lock(&p->mu);
    bool r = p->current && strcmp(p->current, path) == 0;
    pthread_mutex_unlock(&p->mu);
    return r;
}

bool sched__prefetch_wait(struct sched_prefetch *p, uint64_t files, double timeout_s, uint64_t *bytes) {
    double end = clock_now() + timeout_s;
    pthread_mutex_lock(&p->mu);
    while (p->files < files && clock_now() < end) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 20 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    }
    bool ok = p->files >= files;
    if (bytes) *bytes = p->bytes;
    pthread_mutex_unlock(&p->mu);
    return ok;
}
