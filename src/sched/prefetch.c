/* sched/prefetch.c -- reads the checkpoint files of accepted prompts into the page cache in the
 * background, so that a device's load, when the prompt's turn comes, reads from memory: a cold
 * checkpoint's disk read overlaps the device's warm-up and whatever runs before the prompt.
 * Owns: struct sched_prefetch (one reader thread, a small queue of paths, the recently read ones);
 * while it reads a file, fs_read_ranges' PREFETCH_STREAMS - 1 helper threads and their buffers.
 * Threads: sched__prefetch_file from any thread (submits); the reader thread; new/free from the
 * thread that owns the sched.
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
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PREFETCH_QUEUE 8
#define PREFETCH_RECENT 8
#define PREFETCH_FRESH_S 60.0
#define PREFETCH_CHUNK ((size_t)16 << 20) /* bytes per read */
#define PREFETCH_STREAMS 4                  /* chunks of a file read at once */

struct sched_prefetch {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    bool started, stopping;                 /* mu */
    atomic_bool abort;                      /* set with stopping: a read in progress ends early */
    char *queue[PREFETCH_QUEUE];            /* mu: paths to read (owned), oldest first */
    int n_queue;
    char *recent[PREFETCH_RECENT];          /* mu: paths read (or being read), owned, ring */
    double recent_t[PREFETCH_RECENT];       /* mu: when each was queued */
    int recent_next;
    uint64_t files, bytes;                  /* mu: read so far (tests, log) */
};

/* fs_read_ranges' stop: the prefetch is being freed. */
static bool aborted(void *user) { return atomic_load(&((struct sched_prefetch *)user)->abort); }

/* Reads path to its end (or until the prefetch stops) in PREFETCH_CHUNK pieces taken in file
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

static void *reader(void *arg) {
    struct sched_prefetch *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stopping && p->n_queue == 0) pthread_cond_wait(&p->cv, &p->mu);
        if (p->stopping) break;
        char *path = p->queue[0];
        memmove(p->queue, p->queue + 1, (size_t)(p->n_queue - 1) * sizeof p->queue[0]);
        p->n_queue--;
        pthread_mutex_unlock(&p->mu);
        double t0 = clock_now();
        uint64_t n = read_file(p, path);
        if (n)
            log_info("prefetch: %s read into the page cache in %.2f s (%.0f MiB/s)", path, clock_now() - t0,
                     (double)n / 1048576.0 / (clock_now() - t0 > 1e-9 ? clock_now() - t0 : 1e-9));
        mem_free(path);
        pthread_mutex_lock(&p->mu);
        p->files += n > 0;
        p->bytes += n;
        pthread_cond_broadcast(&p->cv); /* sched__prefetch_wait */
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

struct sched_prefetch *sched__prefetch_new(void) {
    struct sched_prefetch *p = mem_calloc(1, sizeof *p);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
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
    for (int i = 0; i < p->n_queue; i++) mem_free(p->queue[i]);
    for (int i = 0; i < PREFETCH_RECENT; i++) mem_free(p->recent[i]);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    mem_free(p);
}

bool sched__prefetch_file(struct sched_prefetch *p, const char *path) {
    if (!p || !p->started || !path) return false;
    double now = clock_now();
    bool queued = false;
    pthread_mutex_lock(&p->mu);
    bool fresh = false;
    for (int i = 0; i < PREFETCH_RECENT && !fresh; i++)
        fresh = p->recent[i] && strcmp(p->recent[i], path) == 0 && now - p->recent_t[i] < PREFETCH_FRESH_S;
    if (!fresh && !p->stopping && p->n_queue < PREFETCH_QUEUE) {
        p->queue[p->n_queue++] = mem_strdup(path);
        mem_free(p->recent[p->recent_next]);
        p->recent[p->recent_next] = mem_strdup(path);
        p->recent_t[p->recent_next] = now;
        p->recent_next = (p->recent_next + 1) % PREFETCH_RECENT;
        pthread_cond_signal(&p->cv);
        queued = true;
    }
    pthread_mutex_unlock(&p->mu);
    return queued;
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
