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
    double ms;          /* total */
    double min_ms;      /* fastest occurrence: the steady-state cost (the first run of a shape
                           also pays lazy kernel loading, cuDNN's algorithm search, ...) */
    long count;
};

struct cuda_profile {
    cudaEvent_t *events;     /* pool; events[i] precedes node i of the current graph */
    int n_events;
    struct tensor *const *nodes; /* the graph being timed (borrowed, during graph_run) */
    int n_nodes;
    struct prof_row *rows;
    int n_rows, cap_rows;
    long graphs;
};

struct cuda_profile *cuda__profile_new(void) {
    const char *e = getenv("KILN_CUDA_PROFILE");
    if (!e || e[0] != '1') return NULL;
    return (struct cuda_profile *)mem_calloc(1, sizeof(struct cuda_profile));
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
    return r;
}

/* After the graph's stream synchronisation: adds each node's time to its row. */
void cuda__profile_end(struct cuda_profile *p) {
    p->graphs++;
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
        r->count++;
    }
    p->nodes = NULL;
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
    double steady = 0;
    for (int i = 0; i < p->n_rows; i++) steady += p->rows[i].min_ms * (double)p->rows[i].count;
    log_info("cuda profile, device %d: %ld graphs, %.1f ms of GPU time in ops (%.1f ms at each row's fastest: the "
             "steady state)",
             device, p->graphs, total, steady);
    for (int k = 0; k < n_kinds; k++)
        log_info("  %-18s %9.2f ms %5.1f%%  %7ld nodes", kinds[k].op, kinds[k].ms, total > 0 ? 100 * kinds[k].ms / total : 0,
                 kinds[k].count);
    for (int i = 0; i < p->n_rows && i < 100; i++)
        log_info("  %9.3f ms %5.1f%% %6ld x %8.4f ms (fastest %8.4f)  %s", p->rows[i].ms,
                 total > 0 ? 100 * p->rows[i].ms / total : 0, p->rows[i].count, p->rows[i].ms / (double)p->rows[i].count,
                 p->rows[i].min_ms, p->rows[i].key);
    for (int i = 0; i < p->n_events; i++) cudaEventDestroy(p->events[i]);
    mem_free(p->events);
    mem_free(p->rows);
    mem_free(p);
}
