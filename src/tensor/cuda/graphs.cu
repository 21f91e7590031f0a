/* tensor/cuda/graphs.cu -- captured CUDA graphs for repeated node lists (see graphs.cuh).
 * Owns: the instantiated graphs (cudaGraphExec_t) of one backend, at most GRAPHS_MAX, the least
 * recently used replaced first. A graph also bakes in ctx->work (the kernels' scratch: im2col
 * columns, attention scores, norm statistics, cuDNN workspace): when another graph has grown and
 * so moved it, the graph is captured again.
 * Threads: the backend's worker. */
#include "tensor/cuda/graphs.cuh"

extern "C" {
#include "base/clock.h"
#include "base/log.h"
#include "base/mem.h"
}

#include <stdlib.h>
#include <string.h>

#define GRAPHS_MAX 8

struct graph_slot {
    uint64_t sig;            /* signature of the node list, 0 = empty slot */
    int runs;                /* times seen */
    cudaGraphExec_t exec;    /* instantiated once captured, else NULL */
    uint64_t last_use;       /* tick (LRU) */
    void *work;              /* ctx->work when captured: kernels' scratch is baked into the graph */
    bool uncapturable;       /* capture failed once: run it plainly from now on */
};

struct cuda_graphs {
    struct graph_slot slots[GRAPHS_MAX];
    uint64_t tick;
    long replays, captures, plain;
};

struct cuda_graphs *cuda__graphs_new(void) {
    const char *e = getenv("KILN_CUDA_GRAPHS");
    if (e && e[0] == '0') return NULL;
    return (struct cuda_graphs *)mem_calloc(1, sizeof(struct cuda_graphs));
}

void cuda__graphs_free(struct cuda_graphs *g) {
    if (!g) return;
    for (int i = 0; i < GRAPHS_MAX; i++)
        if (g->slots[i].exec) cudaGraphExecDestroy(g->slots[i].exec);
    mem_free(g);
}

void cuda__graphs_stats(const struct cuda_graphs *g, long *replays, long *captures, long *plain) {
    *replays = g ? g->replays : 0;
    *captures = g ? g->captures : 0;
    *plain = g ? g->plain : 0;
}

/* ===== Signature ===== */

static uint64_t mix(uint64_t h, uint64_t v) {
    h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    return h * 0x100000001b3ULL;
}

/* FNV-style hash of everything a kernel launch depends on; 0 is reserved for "empty". */
static uint64_t signature(struct tensor *const *nodes, int n, bool *capturable) {
    uint64_t h = 0xcbf29ce484222325ULL ^ (uint64_t)n;
    *capturable = true;
    for (int i = 0; i < n; i++) {
        const struct tensor *t = nodes[i];
        if (t->op == OP_GET_ROWS) *capturable = false; /* synchronises to check its ids */
        h = mix(h, (uint64_t)t->op << 8 | (uint64_t)t->dtype);
        h = mix(h, (uint64_t)t->ndim);
        for (int d = 0; d < TENSOR_MAX_DIMS; d++) h = mix(h, (uint64_t)t->shape[d]);
        h = mix(h, (uint64_t)(uintptr_t)t->data);
        for (int s = 0; s < TENSOR_MAX_SRC; s++) {
            const struct tensor *src = t->src[s];
            h = mix(h, src ? (uint64_t)(uintptr_t)src->data : 1);
            if (src) {
                h = mix(h, (uint64_t)src->dtype);
                for (int d = 0; d < TENSOR_MAX_DIMS; d++) h = mix(h, (uint64_t)src->shape[d]);
            }
        }
        for (int p = 0; p < TENSOR_MAX_PARAMS; p++) {
            uint32_t f;
            memcpy(&f, &t->fp[p], sizeof f);
            h = mix(h, (uint64_t)(uint32_t)t->ip[p] << 32 | f);
        }
    }
    return h ? h : 1;
}

static struct graph_slot *slot_for(struct cuda_graphs *g, uint64_t sig) {
    struct graph_slot *lru = &g->slots[0];
    for (int i = 0; i < GRAPHS_MAX; i++) {
        if (g->slots[i].sig == sig) return &g->slots[i];
        if (g->slots[i].last_use < lru->last_use) lru = &g->slots[i];
    }
    if (lru->exec) cudaGraphExecDestroy(lru->exec);
    memset(lru, 0, sizeof *lru);
    lru->sig = sig;
    return lru;
}

/* ===== Running ===== */

/* Captures enqueue(nodes) into s->exec. On failure the stream is left out of capture mode and
 * s is marked uncapturable; the caller then runs the nodes plainly. */
static int capture(struct graph_slot *s, struct cuda_ctx *ctx, struct tensor *const *nodes, int n,
                   cuda_enqueue_fn enqueue, struct err *err) {
    cudaGraph_t graph = NULL;
    double t0 = clock_now();
    cudaError_t e = cudaStreamBeginCapture(ctx->stream, cudaStreamCaptureModeThreadLocal);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        s->uncapturable = true;
        return 0;
    }
    struct err cap_err = {};
    int rc = enqueue(ctx, nodes, n, &cap_err);
    e = cudaStreamEndCapture(ctx->stream, &graph);
    if (rc || e != cudaSuccess || !graph) {
        (void)cudaGetLastError();
        if (graph) cudaGraphDestroy(graph);
        s->uncapturable = true;
        log_warn("cuda backend: a graph of %d nodes could not be captured (%s); it runs without CUDA graphs", n,
                 rc ? cap_err.msg : cudaGetErrorString(e));
        return 0;
    }
    s->work = ctx->work;
    e = cudaGraphInstantiate(&s->exec, graph, 0);
    cudaGraphDestroy(graph);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        s->exec = NULL;
        s->uncapturable = true;
        log_warn("cuda backend: instantiating a captured graph of %d nodes failed (%s)", n, cudaGetErrorString(e));
        return 0;
    }
    log_debug("cuda backend: captured and instantiated a graph of %d nodes in %.2f ms", n, 1e3 * (clock_now() - t0));
    (void)err;
    return 0;
}

int cuda__graphs_run(struct cuda_graphs *g, struct cuda_ctx *ctx, struct tensor *const *nodes, int n,
                     cuda_enqueue_fn enqueue, struct err *err) {
    if (!g || n == 0) return enqueue(ctx, nodes, n, err);
    bool capturable;
    uint64_t sig = signature(nodes, n, &capturable);
    struct graph_slot *s = slot_for(g, sig);
    s->last_use = ++g->tick;
    s->runs++;
    if (s->exec && s->work != ctx->work) { /* the scratch moved (another graph grew it): capture again */
        cudaGraphExecDestroy(s->exec);
        s->exec = NULL;
    }
    if (!s->exec && capturable && !s->uncapturable && s->runs >= 2) {
        int rc = capture(s, ctx, nodes, n, enqueue, err);
        if (rc) return rc;
        if (s->exec) g->captures++;
    }
    if (s->exec) {
        CUDA_TRY(cudaGraphLaunch(s->exec, ctx->stream));
        g->replays++;
        return 0;
    }
    g->plain++;
    return enqueue(ctx, nodes, n, err);
}
