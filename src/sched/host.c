/* sched/host.c -- the host interface (graph/exec.h struct node_host_i) the scheduler gives the
 * executor, so GPU memory nodes reach devices other than the one running them.
 * Owns: nothing; it stores settings in, and posts requests to, the devices of the sched.
 * Must not: touch another device's engine or cache (that device's worker does the work).
 * Threads: the worker running the node (user = its struct sched_device); takes sched->mu.
 *
 * DESIGN. Reserve settings are plain data: stored under mu, read by the target's worker before
 * its next prompt (worker.c update_budget). A clean-up is a request counter per device, like
 * /free's flags: the requester bumps clean_req and signals the device; its worker serves it
 * before taking its next prompt (at once when idle), publishes what it freed and bumps
 * clean_done, broadcasting s->cleaned. The requester waits (bounded) only for devices that
 * were idle when asked; a busy device's request stays queued and the report says so. Since a
 * device running a prompt is never waited for, two prompts cleaning at once on two devices
 * cannot wait for each other, and every wait ends by its deadline or at sched_free. */
#include "sched/internal.h"

#include "base/err.h"
#include "base/log.h"
#include "base/status.h"
#include "graph/exec.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static const char *kind_label(const struct sched_device *d) { return d->kind == SCHED_DEVICE_CPU ? "CPU" : "GPU"; }

/* ===== GPUMemoryReserve ===== */

static int host_set_reserve(void *user, int cuda_index, int mode, double reserved_gb, double min_safe_gb,
                            struct err *err) {
    struct sched_device *self = user;
    struct sched *s = self->s;
    if (mode < 0 || mode >= VRAM_MODE_COUNT)
        return err_set(err, STATUS_ERR_INVALID, "reservation mode %d is not one of manual, auto, smart", mode);
    if (!(reserved_gb >= 0) || !(min_safe_gb >= 0))
        return err_set(err, STATUS_ERR_RANGE, "reserved (%g GB) and min_safe_reserve (%g GB) must be >= 0",
                       reserved_gb, min_safe_gb);
    char gpus[128] = "";
    size_t len = 0;
    struct sched_device *target = NULL;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->n_dev; i++) {
        struct sched_device *d = &s->dev[i];
        if (d->kind != SCHED_DEVICE_CUDA) continue;
        if (d->cuda_ordinal == cuda_index && !target) {
            target = d;
            d->budget.mode = (enum vram_mode)mode;
            d->budget.reserved_gb = reserved_gb;
            d->budget.min_safe_reserve_gb = min_safe_gb;
        }
        if (len < sizeof gpus) {
            int n = snprintf(gpus + len, sizeof gpus - len, "%s%d", len ? ", " : "", d->cuda_ordinal);
            if (n > 0) len += (size_t)n;
        }
    }
    pthread_mutex_unlock(&s->mu);
    if (!target)
        return err_set(err, STATUS_ERR_RANGE, "GPU %d is not one of this server's devices (%s%s)", cuda_index,
                       len ? "GPUs served: " : "it serves no GPU", gpus);
    log_info("[GPU %d] reserve settings from a node on [%s %d]: %s mode, reserved %.2f GB, min safe %.2f GB "
             "(kept; used from its next prompt on)",
             target->index, kind_label(self), self->index, vram_mode_name((enum vram_mode)mode), reserved_gb,
             min_safe_gb);
    return 0;
}

/* ===== GPUMemoryCleanup ===== */

static int host_cleanup(void *user, bool aggressive, int wait_ms, struct node_host_clean *out, int max) {
    struct sched_device *self = user;
    struct sched *s = self->s;
    uint64_t target[SCHED_MAX_DEVICES];
    bool waiting[SCHED_MAX_DEVICES] = {false};
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    if (wait_ms < 0) wait_ms = 0;
    deadline.tv_sec += wait_ms / 1000;
    deadline.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }

    int n = 0;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->n_dev && n < max; i++) {
        struct sched_device *d = &s->dev[i];
        if (d == self) continue;
        out[n] = (struct node_host_clean){.device = i, .cuda_index = d->kind == SCHED_DEVICE_CUDA ? d->cuda_ordinal : -1};
        if ((d->ready && d->init_rc) || !d->started || s->stopping) {
            out[n++].state = NODE_HOST_CLEAN_DOWN;
            continue;
        }
        target[n] = ++d->clean_req;
        d->clean_aggressive |= aggressive;
        pthread_cond_signal(&d->wake);
        waiting[n] = d->running == NULL; /* busy: served after its prompt; never waited for */
        out[n].state = waiting[n] ? NODE_HOST_CLEAN_TIMEOUT : NODE_HOST_CLEAN_QUEUED;
        n++;
    }
    bool timed_out = false;
    for (;;) {
        bool pending = false;
        for (int k = 0; k < n; k++) {
            if (!waiting[k]) continue;
            const struct sched_device *d = &s->dev[out[k].device];
            if (d->clean_done >= target[k]) {
                waiting[k] = false;
                out[k].state = NODE_HOST_CLEAN_DONE;
                out[k].freed = d->clean_result.freed;
                out[k].own_freed = d->clean_result.own_freed;
                out[k].measured = d->clean_result.measured;
            } else {
                pending = true;
            }
        }
        if (!pending || s->stopping || timed_out) break; /* still waiting: stays TIMEOUT */
        timed_out = pthread_cond_timedwait(&s->cleaned, &s->mu, &deadline) == ETIMEDOUT; /* one last look */
    }
    pthread_mutex_unlock(&s->mu);
    return n;
}

const struct node_host_i sched__host = {
    .set_reserve = host_set_reserve,
    .cleanup = host_cleanup,
};
