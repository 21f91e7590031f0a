/* tensor/cuda/profile.cu -- per-op GPU time of a CUDA backend, for finding where time goes.
 * Owns: struct cuda_profile (a pool of CUDA events and a table of totals per op, dtype and shape)
 * of one backend; enabled by KILN_CUDA_PROFILE=1 in the environment when the backend opens.
 * Threads: the backend's worker.
 * DESIGN. An event is recorded on the stream before each node and one after the last; after the
 * graph's final synchronisation the gaps between consecutive events are the nodes' times (GPU
 * time, including launch gaps while the GPU waited for the host). The table is printed to the
 * log (most expensive first) when the backend is freed. Profiling adds no synchronisation. */
#include "tensor/cuda/cuda.cuh"

extern "C" {
#include "base/log.h"
#include "base/mem.h"
}

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROF_KEY 96

struct prof_row {
    char key[PROF_KEY]; /* "CONV2D F16 [2, 320, 64, 64] <- [2, 320, 64, 64]" */
    char op[24];        /* "CONV2D" */
    enum dtype dtype;   /* the node's */
    double median_ms;   /* filled when printing */
    double ms;          /* total */
    double min_ms;      /* fastest occurrence: the steady-state cost (the first run of a shape
                           also pays lazy kernel loading, cuDNN's algorithm search, ...) */
    long count;
    float samples[64];  /* the first 64 times, for the median */
};

struct cuda_profile {
    cudaEvent_t *events;     /* pool; events[i] precedes node i of the current graph */
    int n_events;
    struct tensor *const *nodes; /* the graph being timed (borrowed, during graph_run) */
    int n_nodes;
    struct prof_row *rows;
    int n_rows, cap_rows;
    long graphs;
    bool whole;              /* KILN_CUDA_PROFILE=2: time whole graphs (CUDA graphs stay on) */
};

struct cuda_profile *cuda__profile_new(void) {
    const char *e = getenv("KILN_CUDA_PROFILE");
    if (!e || (e[0] != '1' && e[0] != '2')) return NULL;
    struct cuda_profile *p = (struct cuda_profile *)mem_calloc(1, sizeof(struct cuda_profile));
    p->whole = e[0] == '2';
    return p;
}

int cuda__profile_begin(struct cuda_profile *p, struct tensor *const *nodes, int n, struct err *err) {
    if (n + 1 > p->n_events) {
        cudaEvent_t *ev = (cudaEvent_t *)mem_realloc(p->events, (size_t)(n + 1) * sizeof *ev);
        p->events = ev;
        for (int i = p->n_events; i < n + 1; i++) CUDA_TRY(cudaEventCreate(&p->events[i]));
        p->n_events = n + 1;
    }
    p->nodes = nodes;
    p->n_nodes = n;
    return 0;
}

void cuda__profile_mark(struct cuda_profile *p, int i, cudaStream_t stream) { cudaEventRecord(p->events[i], stream); }

static struct prof_row *row_for(struct cuda_profile *p, const struct tensor *t) {
    char key[PROF_KEY], a[48], b[48] = "";
    tensor_shape_str(t, a, sizeof a);
    if (t->src[0]) tensor_shape_str(t->src[0], b, sizeof b);
    snprintf(key, sizeof key, "%s %s %s <- %s", op_name(t->op), dtype_name(t->dtype), a, b);
    for (int i = 0; i < p->n_rows; i++)
        if (strcmp(p->rows[i].key, key) == 0) return &p->rows[i];
    if (p->n_rows == p->cap_rows) {
        p->cap_rows = p->cap_rows ? 2 * p->cap_rows : 256;
        p->rows = (struct prof_row *)mem_realloc(p->rows, (size_t)p->cap_rows * sizeof *p->rows);
    }
    struct prof_row *r = &p->rows[p->n_rows++];
    memset(r, 0, sizeof *r);
    snprintf(r->key, sizeof r->key, "%s", key);
    snprintf(r->op, sizeof r->op, "%s", op_name(t->op));
    r->dtype = t->dtype;
    return r;
}

bool cuda__profile_whole(const struct cuda_profile *p) { return p && p->whole; }

/* After the graph's stream synchronisation: adds each node's time to its row (or, in whole mode,
 * the graph's time to the row of graphs of its size). */
void cuda__profile_end(struct cuda_profile *p) {
    p->graphs++;
    if (p->whole) {
        float ms = 0;
        if (cudaEventElapsedTime(&ms, p->events[0], p->events[1]) != cudaSuccess) {
            (void)cudaGetLastError();
            return;
        }
        struct tensor fake = {};
        fake.op = OP_NONE;
        fake.dtype = p->n_nodes > 0 ? p->nodes[p->n_nodes - 1]->dtype : DTYPE_F32;
        fake.ndim = 1;
        fake.shape[0] = p->n_nodes;
        struct prof_row *r = row_for(p, &fake);
        snprintf(r->op, sizeof r->op, "GRAPH");
        r->ms += ms;
        if (r->count == 0 || ms < r->min_ms) r->min_ms = ms;
        if (r->count < 64) r->samples[r->count] = ms;
        r->count++;
        return;
    }
    for (int i = 0; i < p->n_nodes; i++) {
        const struct tensor *t = p->nodes[i];
        if (t->op == OP_NONE || t->op == OP_RESHAPE) continue;
        float ms = 0;
        if (cudaEventElapsedTime(&ms, p->events[i], p->events[i + 1]) != cudaSuccess) {
            (void)cudaGetLastError();
            continue;
        }
        struct prof_row *r = row_for(p, t);
        r->ms += ms;
        if (r->count == 0 || ms < r->min_ms) r->min_ms = ms;
        if (r->count < 64) r->samples[r->count] = ms;
        r->count++;
    }
    p->nodes = NULL;
}

static int by_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y ? 1 : 0;
}

/* Median of a row's first samples: the steady cost (the first run of a shape also pays lazy
 * kernel loading and cuDNN's algorithm search). */
static double row_median(struct prof_row *r) {
    int n = r->count < 64 ? (int)r->count : 64;
    if (n == 0) return 0;
    qsort(r->samples, (size_t)n, sizeof r->samples[0], by_float);
    return r->samples[n / 2];
}

static int by_ms(const void *a, const void *b) {
    double x = ((const struct prof_row *)a)->ms, y = ((const struct prof_row *)b)->ms;
    return x < y ? 1 : x > y ? -1 : 0;
}

void cuda__profile_free(struct cuda_profile *p, int device) {
    if (!p) return;
    double total = 0;
    for (int i = 0; i < p->n_rows; i++) total += p->rows[i].ms;
    qsort(p->rows, (size_t)p->n_rows, sizeof *p->rows, by_ms);
    /* per op kind */
    struct prof_row kinds[OP_COUNT];
    int n_kinds = 0;
    for (int i = 0; i < p->n_rows; i++) {
        int k = 0;
        while (k < n_kinds && strcmp(kinds[k].op, p->rows[i].op) != 0) k++;
        if (k == n_kinds) {
            memset(&kinds[k], 0, sizeof kinds[k]);
            snprintf(kinds[k].op, sizeof kinds[k].op, "%s", p->rows[i].op);
            n_kinds++;
        }
        kinds[k].ms += p->rows[i].ms;
        kinds[k].count += p->rows[i].count;
    }
    qsort(kinds, (size_t)n_kinds, sizeof kinds[0], by_ms);
    double steady[DTYPE_COUNT] = {0};
    for (int i = 0; i < p->n_rows; i++) {
        struct prof_row *r = &p->rows[i];
        r->median_ms = row_median(r);
        steady[r->dtype] += r->median_ms * (double)r->count;
    }
    log_info("cuda profile, device %d: %ld graphs, %.1f ms of GPU time in ops; at each row's median: F32 %.1f ms, "
             "F16 %.1f ms, BF16 %.1f ms",
             device, p->graphs, total, steady[DTYPE_F32], steady[DTYPE_F16], steady[DTYPE_BF16]);
    for (int k = 0; k < n_kinds; k++)
        log_info("  %-18s %9.2f ms %5.1f%%  %7ld nodes", kinds[k].op, kinds[k].ms, total > 0 ? 100 * kinds[k].ms / total : 0,
                 kinds[k].count);
    for (int i = 0; i < p->n_rows && i < 150; i++)
        log_info("  %9.3f ms %5.1f%% %6ld x %8.4f ms (median %8.4f, fastest %8.4f)  %s", p->rows[i].ms,
                 total > 0 ? 100 * p->rows[i].ms / total : 0, p->rows[i].count, p->rows[i].ms / (double)p->rows[i].count,
                 p->rows[i].median_ms, p->rows[i].min_ms, p->rows[i].key);
    for (int i = 0; i < p->n_events; i++) cudaEventDestroy(p->events[i]);
    mem_free(p->events);
    mem_free(p->rows);
    mem_free(p);
}
