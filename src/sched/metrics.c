/* sched/metrics.c -- per-device figures as the log line of the multi-GPU fork
 * ("[GPU i] tasks=…, success=…%, queue=…, wait=…ms, exec=…ms, oom=…") and as Prometheus' text
 * exposition format (GET /metrics).
 * Owns: nothing (reads sched_device.m under sched->mu).
 * Must not: change any figure (worker.c and sched.c do).
 * Threads: any; takes sched->mu.
 * Ownership: sched_metrics_text returns a mem_alloc'd string. */
#include "sched/internal.h"

#include "base/clock.h"
#include "base/mem.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* upper bounds of the wait and exec histograms, in s */
const double SCHED_BUCKET_BOUNDS[SCHED_BUCKETS] = {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300};

static const char *kind_name(enum sched_device_kind k) { return k == SCHED_DEVICE_CPU ? "cpu" : "cuda"; }

/* ===== Log line ===== */

static void line_locked(const struct sched_device *d, char *buf, size_t n) {
    const struct sched_metrics *m = &d->m;
    double success = m->tasks ? 100.0 * (double)m->successes / (double)m->tasks : 0.0;
    double queue = m->submitted ? m->depth_sum / (double)m->submitted : 0.0;
    double wait = m->tasks ? 1000.0 * m->wait_sum / (double)m->tasks : 0.0;
    double exec = m->tasks ? 1000.0 * m->exec_sum / (double)m->tasks : 0.0;
    snprintf(buf, n, "[%s %d] tasks=%llu, success=%.1f%%, queue=%.1f, wait=%.0fms, exec=%.0fms, oom=%llu",
             d->kind == SCHED_DEVICE_CPU ? "CPU" : "GPU", d->index, (unsigned long long)m->tasks, success, queue, wait,
             exec, (unsigned long long)m->ooms);
}

void sched_metrics_line(struct sched *s, int device, char *buf, size_t n) {
    if (!n) return;
    buf[0] = 0;
    if (device < 0 || device >= s->n_dev) return;
    pthread_mutex_lock(&s->mu);
    line_locked(&s->dev[device], buf, n);
    pthread_mutex_unlock(&s->mu);
}

/* ===== Prometheus text ===== */

struct text {
    char *buf;                           /* mem_alloc'd, NUL-terminated */
    size_t len, cap;                     /* bytes used (without the NUL), bytes allocated */
};

__attribute__((format(printf, 2, 3))) static void put(struct text *t, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (k >= 0 && (size_t)k < t->cap - t->len) {
            t->len += (size_t)k;
            return;
        }
        t->cap = 2 * t->cap + (k > 0 ? (size_t)k : 0) + 256;
        t->buf = mem_realloc(t->buf, t->cap);
    }
}

static void header(struct text *t, const char *name, const char *type, const char *help) {
    put(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value with \, " and newline escaped (exposition format). */
static void put_label(struct text *t, const char *v) {
    for (; *v; v++) {
        if (*v == '\\') put(t, "\\\\");
        else if (*v == '"') put(t, "\\\"");
        else if (*v == '\n') put(t, "\\n");
        else put(t, "%c", *v);
    }
}

#define LABELS "device=\"%d\",kind=\"%s\""

/* One counter or gauge per device; `field` picks the value. */
static void per_device(struct text *t, const struct sched *s, const char *name, const char *type, const char *help,
                       double (*field)(const struct sched_device *)) {
    header(t, name, type, help);
    for (int i = 0; i < s->n_dev; i++)
        put(t, "%s{" LABELS "} %.9g\n", name, i, kind_name(s->dev[i].kind), field(&s->dev[i]));
}

static double f_submitted(const struct sched_device *d) { return (double)d->m.submitted; }
static double f_tasks(const struct sched_device *d) { return (double)d->m.tasks; }
static double f_successes(const struct sched_device *d) { return (double)d->m.successes; }
static double f_failures(const struct sched_device *d) { return (double)d->m.failures; }
static double f_ooms(const struct sched_device *d) { return (double)d->m.ooms; }
static double f_oom_retries(const struct sched_device *d) { return (double)d->m.oom_retries; }
static double f_interrupts(const struct sched_device *d) { return (double)d->m.interrupts; }
static double f_cache_hits(const struct sched_device *d) { return (double)d->m.cache_hits; }
static double f_cache_entries(const struct sched_device *d) { return (double)d->m.cache_entries; }
static double f_pending(const struct sched_device *d) { return (double)d->n_heap; }
static double f_running(const struct sched_device *d) { return d->running ? 1.0 : 0.0; }
static double f_mem_total(const struct sched_device *d) { return (double)d->mem_total; }
static double f_depth(const struct sched_device *d) {
    return d->m.submitted ? d->m.depth_sum / (double)d->m.submitted : 0.0;
}
static double f_ckpts(const struct sched_device *d) { return (double)d->n_ckpts; }

static void histogram(struct text *t, const struct sched *s, const char *name, const char *help, bool exec) {
    header(t, name, "histogram", help);
    for (int i = 0; i < s->n_dev; i++) {
        const struct sched_device *d = &s->dev[i];
        const char *kind = kind_name(d->kind);
        const uint64_t *b = exec ? d->m.exec_bucket : d->m.wait_bucket;
        for (int k = 0; k < SCHED_BUCKETS; k++)
            put(t, "%s_bucket{" LABELS ",le=\"%g\"} %llu\n", name, i, kind, SCHED_BUCKET_BOUNDS[k],
                (unsigned long long)b[k]);
        put(t, "%s_bucket{" LABELS ",le=\"+Inf\"} %llu\n", name, i, kind, (unsigned long long)d->m.tasks);
        put(t, "%s_sum{" LABELS "} %.9g\n", name, i, kind, exec ? d->m.exec_sum : d->m.wait_sum);
        put(t, "%s_count{" LABELS "} %llu\n", name, i, kind, (unsigned long long)d->m.tasks);
    }
}

char *sched_metrics_text(struct sched *s) {
    struct text t = {.cap = 4096};
    t.buf = mem_alloc(t.cap);
    t.buf[0] = 0;
    pthread_mutex_lock(&s->mu);
    header(&t, "kiln_uptime_seconds", "gauge", "Seconds since the scheduler started.");
    put(&t, "kiln_uptime_seconds %.3f\n", clock_now() - s->t_start);
    header(&t, "kiln_device_info", "gauge", "One series per device (value 1); the name label says which.");
    for (int i = 0; i < s->n_dev; i++) {
        put(&t, "kiln_device_info{" LABELS ",name=\"", i, kind_name(s->dev[i].kind));
        put_label(&t, s->dev[i].name);
        put(&t, "\"} 1\n");
    }
    per_device(&t, s, "kiln_device_memory_total_bytes", "gauge", "Memory of the device (host RAM for CPU devices).",
               f_mem_total);
    per_device(&t, s, "kiln_prompts_submitted_total", "counter", "Prompts queued on the device.", f_submitted);
    per_device(&t, s, "kiln_tasks_total", "counter", "Prompts finished on the device, whatever the outcome.", f_tasks);
    per_device(&t, s, "kiln_task_successes_total", "counter", "Prompts that ended with execution_success.",
               f_successes);
    per_device(&t, s, "kiln_task_failures_total", "counter", "Prompts that ended with execution_error (OOMs included).",
               f_failures);
    per_device(&t, s, "kiln_task_ooms_total", "counter", "Prompts that failed for lack of device memory.", f_ooms);
    per_device(&t, s, "kiln_oom_retries_total", "counter",
               "Prompts run again after running out of memory (cached models and scratch freed first).", f_oom_retries);
    per_device(&t, s, "kiln_task_interrupts_total", "counter", "Prompts that ended with execution_interrupted.",
               f_interrupts);
    per_device(&t, s, "kiln_cache_hits_total", "counter", "Nodes served from the output cache instead of run.",
               f_cache_hits);
    per_device(&t, s, "kiln_cache_entries", "gauge", "Node outputs kept in the device's output cache.",
               f_cache_entries);
    per_device(&t, s, "kiln_queue_pending", "gauge", "Prompts waiting in the device's queue.", f_pending);
    per_device(&t, s, "kiln_queue_running", "gauge", "Prompts running on the device (0 or 1).", f_running);
    per_device(&t, s, "kiln_queue_depth_average", "gauge",
               "Average number of prompts ahead (pending + running) when a prompt was queued.", f_depth);
    per_device(&t, s, "kiln_checkpoints_loaded", "gauge", "Checkpoints the device's engine holds.", f_ckpts);
    histogram(&t, s, "kiln_wait_seconds", "Time from queued to started.", false);
    histogram(&t, s, "kiln_exec_seconds", "Time from started to finished.", true);
    header(&t, "kiln_history_entries", "gauge", "Finished prompts kept in the history.");
    put(&t, "kiln_history_entries %zu\n", json_object_size(s->history));
    pthread_mutex_unlock(&s->mu);
    return t.buf;
}
