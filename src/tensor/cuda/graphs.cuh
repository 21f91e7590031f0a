/* tensor/cuda/graphs.cuh -- replaying repeated graphs as captured CUDA graphs.
 * Owns: struct cuda_graphs (a few instantiated CUDA graphs keyed by a signature of the node list)
 * of one backend.
 * Threads: the backend's worker.
 * DESIGN. A sampler evaluates the same UNet graph at every step: same ops, shapes, parameters and
 * (the planner being deterministic) the same addresses, only the input values change. Launching
 * its ~2000 kernels one by one costs the host several microseconds each; replaying them as one
 * CUDA graph costs one launch. cuda_graph_run asks cuda__graphs_run first: the first time a
 * signature is seen the nodes run normally (buffers settle: work space, algorithm caches); the
 * second time they are captured into a CUDA graph (stream capture) and launched; afterwards the
 * graph is replayed. The signature covers every node's op, dtype, shape, parameters and the
 * addresses of its output and sources, so a replay reads and writes exactly what a normal run
 * would. Graphs with an op that synchronises inside (GET_ROWS reads its ids back) are never
 * captured. KILN_CUDA_GRAPHS=0 disables capture (A/B timing); profiling disables it too. */
#ifndef KILN_CUDA_GRAPHS_CUH
#define KILN_CUDA_GRAPHS_CUH

#include "tensor/cuda/cuda.cuh"

struct cuda_graphs;

/* Runs nodes[0..n) on ctx's stream, enqueued one by one (backend.cu's loop, without the final
 * synchronisation). */
typedef int (*cuda_enqueue_fn)(struct cuda_ctx *ctx, struct tensor *const *nodes, int n, struct err *err);

/* A cache, or NULL when KILN_CUDA_GRAPHS=0. */
struct cuda_graphs *cuda__graphs_new(void);
void cuda__graphs_free(struct cuda_graphs *g); /* NULL is a no-op */

/* Enqueues nodes[0..n) on ctx->stream: as a replay of a captured graph when this signature ran
 * before, else through enqueue (capturing it the second time). Does not synchronise. Returns 0 or
 * a negative status with err set. g may be NULL (then it is just enqueue). */
int cuda__graphs_run(struct cuda_graphs *g, struct cuda_ctx *ctx, struct tensor *const *nodes, int n,
                     cuda_enqueue_fn enqueue, struct err *err);

/* Counters for logs and tests: launches by replay, captures made, normal runs. */
void cuda__graphs_stats(const struct cuda_graphs *g, long *replays, long *captures, long *plain);

#endif
