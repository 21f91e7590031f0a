/* tensor/tensor.h -- the tensor type, the op table and the graph-building API.
 * Owns: struct tensor, enum dtype, enum op, and the op_* constructors model code calls.
 * Must not: know any backend's internals (see backend.h) or allocate device memory itself.
 * Threads: a struct tctx and the tensors built in it belong to one thread (a device worker).
 *
 * LAYOUT. A tensor has 1..4 dimensions in PyTorch order: shape[0] is the outermost (batch),
 * shape[ndim-1] the innermost. Data is always contiguous and row-major, so the element
 * (i0, i1, i2, i3) of a 4-d tensor sits at ((i0*shape[1] + i1)*shape[2] + i2)*shape[3] + i3.
 * There are no strides: an op that needs another layout (NCHW -> [B, HW, C]) is an explicit
 * OP_TRANSPOSE. Images and latents are NCHW; token sequences are [B, N, C]. CHANNELS-LAST:
 * CONV2D, GROUP_NORM and UPSAMPLE_NEAREST also take images as [B, H, W, C] (op_*_nhwc; the flag
 * is a param), which is what tensor cores want: a UNet computed that way needs no transposes
 * around its attention blocks and none inside the convolution library (docs/DECISIONS.md).
 *
 * GRAPHS. Model code never computes directly. Each op_* call records one node (a tensor whose
 * `op` says how to compute it from `src[]` and the params) in a struct tctx and returns it.
 * tctx_compute() then orders the nodes, plans one scratch buffer on the backend by the nodes'
 * lifetimes (activations are reserved once and reused, ggml-gallocr style), and asks the
 * backend to run them. Leaves are either weights (data already on the backend) or inputs
 * (tensor_input: the planner gives them memory; fill them with tctx_set after planning).
 *
 * DTYPES. Float tensors are F32, F16 or BF16. An op's output has the dtype of its first source
 * (x; GET_ROWS: the table), and every other float source (b of ADD/MUL, weights and biases,
 * k and v, the second half of a CONCAT) must have that same dtype: mixing is an error at record
 * time, and OP_CAST is the only conversion. Kernels read and write the storage dtype and compute
 * in fp32 (products accumulate in fp32). The CPU backend computes F32 only (plus CAST).
 *
 * ERRORS. Recording is sticky (sqlite): the first failure sets tctx.rc and tctx.err, and every
 * later op_* returns NULL; an op_* given a NULL input returns NULL. Check the rc once, at the
 * end of a forward pass, instead of after each op. */
#ifndef KILN_TENSOR_H
#define KILN_TENSOR_H

#include "base/arena.h"
#include "base/err.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ===== Element types ===== */

/* name, safetensors name, bytes per element */
#define DTYPE_MAP(XX)       \
    XX(F32, "F32", 4)       \
    XX(F16, "F16", 2)       \
    XX(BF16, "BF16", 2)     \
    XX(I32, "I32", 4)       \
    XX(I64, "I64", 8)

enum dtype {
#define XX(name, str, size) DTYPE_##name,
    DTYPE_MAP(XX)
#undef XX
    DTYPE_COUNT
};

const char *dtype_name(enum dtype t);
size_t dtype_size(enum dtype t);
/* Parses a safetensors dtype name ("F16"); returns DTYPE_COUNT when unknown. */
enum dtype dtype_parse(const char *s);

/* fp16/bf16 <-> fp32 conversions (round to nearest even), for loaders and tests. */
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);
/* f32_to_bf16(f16_to_f32(h)) for every h, without the detour for normal numbers (loaders). */
uint16_t f16_to_bf16(uint16_t h);
/* n of them from src (2-byte aligned or not) to dst. */
void f16_to_bf16_n(const void *src, uint16_t *dst, size_t n);

/* ===== Ops ===== */

/* name, number of sources. Params are documented at each op_* constructor below. */
#define OP_MAP(XX)              \
    XX(NONE, 0)                 \
    XX(RESHAPE, 1)              \
    XX(ADD, 2)                  \
    XX(MUL, 2)                  \
    XX(SCALE, 1)                \
    XX(SILU, 1)                 \
    XX(GELU, 1)                 \
    XX(QUICK_GELU, 1)           \
    XX(GEGLU, 1)                \
    XX(LINEAR, 3)               \
    XX(CONV2D, 3)               \
    XX(GROUP_NORM, 3)           \
    XX(LAYER_NORM, 3)           \
    XX(ATTENTION, 3)            \
    XX(TRANSPOSE, 1)            \
    XX(UPSAMPLE_NEAREST, 1)     \
    XX(CONCAT, 2)               \
    XX(GET_ROWS, 2)             \
    XX(CAST, 1)                 \
    XX(STREAM, 1)               \
    XX(SAMPLE, 3)

enum op {
#define XX(name, nsrc) OP_##name,
    OP_MAP(XX)
#undef XX
    OP_COUNT
};

const char *op_name(enum op op);
int op_nsrc(enum op op);

#define TENSOR_MAX_DIMS 4
#define TENSOR_MAX_SRC 4 /* the fourth: a LINEAR's or CONV2D's residual (op_add_fused), a channels-last
                            GROUP_NORM's per-image add (op_group_norm_nhwc_add) */
#define TENSOR_MAX_PARAMS 8

struct backend;

enum tensor_flags {
    TENSOR_FLAG_INPUT = 1,  /* leaf whose memory the planner provides; set with tctx_set */
    TENSOR_FLAG_OUTPUT = 2, /* kept alive until the end of the graph; read with tctx_get */
    TENSOR_FLAG_WEIGHT = 4, /* leaf whose data the owner of the weights manages */
};

struct tensor {
    enum dtype dtype;                     /* element type */
    int ndim;                             /* 1..TENSOR_MAX_DIMS */
    int64_t shape[TENSOR_MAX_DIMS];       /* PyTorch order, outermost first; unused dims are 1 */
    void *data;                           /* backend memory; NULL until planned */
    enum op op;                           /* OP_NONE for leaves */
    struct tensor *src[TENSOR_MAX_SRC];   /* sources; NULL for absent optional ones */
    int32_t ip[TENSOR_MAX_PARAMS];        /* integer params of the op */
    float fp[TENSOR_MAX_PARAMS];          /* float params of the op */
    int flags;                            /* enum tensor_flags */
    /* planner bookkeeping (tensor.c only) */
    int id;                               /* position in the graph order, -1 before */
    int last_use;                         /* id of the last node reading this tensor */
    size_t offset;                        /* byte offset in the scratch buffer */
    struct tensor *view_of;               /* RESHAPE: the tensor whose memory this aliases */
    int seq;                              /* creation order in its tctx (a topological order) */
    int stream_id;                        /* weight leaf of a streamed block: 1 + its index in the
                                             tctx's stream table; 0 = resident (see STREAMING) */
};

int64_t tensor_numel(const struct tensor *t);
size_t tensor_nbytes(const struct tensor *t);
bool tensor_same_shape(const struct tensor *a, const struct tensor *b);
/* Writes "[2, 4, 64, 64]" into buf. */
const char *tensor_shape_str(const struct tensor *t, char *buf, size_t n);

/* ===== Streamed weights =====
 *
 * STREAMING. A model too large for its device keeps some blocks of weights elsewhere (host memory
 * or another GPU: their "home") and copies each into a staging slot on the computing device just
 * before use (ARCHITECTURE.md "weight placement"). The model's loader describes those blocks in a
 * struct tstream and points their weight leaves into the slots (tensor.stream_id names the block);
 * the forward pass hands the table to its tctx (tctx.stream). tctx_plan then adds OP_STREAM nodes
 * to the run list: FETCH (copy a block from home into its slot, on a copy stream, after the slot's
 * previous block is DONE), WAIT (the compute stream waits for that copy) before the first node that
 * reads the block, DONE (the slot may be overwritten) after the last, and one BEGIN first (the graph
 * has started: a slot's first FETCH waits for it instead of an earlier run's DONE, so the whole run
 * can be captured as one CUDA graph). With prefetch, the FETCH of
 * the next block of a slot is issued as soon as the slot's previous block is DONE, so copies
 * overlap the compute of the block in the other slot; without (no_prefetch), right before its WAIT.
 * Kernels, their order and their inputs are the same as with the whole model resident: results are
 * identical. Blocks sharing a slot must be used one after the other (the planner checks): with a
 * stream table the graph runs in the order its ops were recorded, which keeps each block of a
 * model written block by block together (the depth-first order would, for example, compute the
 * UNet's time embedding inside its first ResBlock). */

enum tstream_kind { TSTREAM_FETCH, TSTREAM_WAIT, TSTREAM_DONE, TSTREAM_BEGIN };

#define TSTREAM_MAX_SLOTS 4

struct tstream_block {
    const void *home;     /* the block's bytes where they live (pinned host memory or a GPU buffer) */
    int home_device;      /* -1: host memory; else the GPU ordinal that holds `home` */
    void *slot;           /* its staging slot on the computing device (the weights' data point here) */
    size_t bytes;         /* size, a multiple of 4 */
    int slot_index;       /* 0 .. n_slots-1 */
    char name[48];        /* for logs ("input_blocks.4") */
};

struct tstream {
    const struct tstream_block *blocks;  /* borrowed from the weights' owner */
    int n_blocks;
    int n_slots;          /* 1 .. TSTREAM_MAX_SLOTS */
    bool no_prefetch;     /* copy each block only when it is needed (no overlap; for measurements) */
};

/* ===== Graph context ===== */

/* Scratch memory on one backend, reused across graphs; grows when a graph needs more. */
struct tscratch {
    struct backend *backend; /* where the buffer lives */
    void *buf;               /* backend buffer, or NULL */
    size_t size;             /* bytes in buf */
    size_t peak;             /* largest plan seen, in bytes */
    uint64_t plans;          /* tctx_plan calls on it so far: a plan of another context may have
                                overwritten what a hoisted plan keeps (tctx_plan_hoisted) */
};

void tscratch_init(struct tscratch *s, struct backend *be);
void tscratch_deinit(struct tscratch *s); /* frees buf on its backend */

#define TCTX_MEMO_KEY 8 /* words describing a memoised graph */
#define TCTX_MEMO_IO 4  /* tensors remembered with it */

struct tctx {
    struct backend *backend;  /* runs the graph */
    struct tscratch *scratch; /* activations (borrowed) */
    struct arena arena;       /* tensor structs and the node list (owned) */
    struct tensor **nodes;    /* graph order after tctx_plan */
    int n_nodes;
    int cap_nodes;
    struct tensor **run;      /* the computed nodes of the plan, in order (tctx_plan builds it) */
    int n_run;
    const struct tstream *stream; /* streamed weights of the graph's model (borrowed), or NULL */
    int n_created;            /* tensors made since the last reset (tensor.seq) */
    int rc;                   /* sticky status: 0 or the first failure */
    struct err err;           /* message for rc */
    /* what the planned graph computes, as its builder described it (tctx_memo_set; cleared by
       tctx_reset): lets a caller that runs the same graph again only set new inputs */
    bool memo_valid;
    uint64_t memo_key[TCTX_MEMO_KEY];
    struct tensor *memo_io[TCTX_MEMO_IO]; /* the builder's inputs and outputs */
    void *memo_buf;                       /* the scratch buffer the plan placed its nodes in */
    size_t memo_buf_size;                 /* and its size */
    /* tctx_plan_hoisted: the computed nodes that depend on an input, in order (the rest ran
       once and kept their results); hoisted false after a plain tctx_plan */
    bool hoisted;
    struct tensor **run_var;
    int n_run_var;
    size_t hoisted_bytes;                 /* memory the kept results hold */
    bool consts_ready;                    /* the kept results are computed */
    uint64_t consts_plan;                 /* scratch->plans when they were last made */
};

/* Storage is the caller's; the scratch is borrowed and must outlive the context. */
void tctx_init(struct tctx *c, struct backend *be, struct tscratch *scratch);
void tctx_deinit(struct tctx *c);
/* Forgets every node (keeps the arena's first block) so the next forward can be recorded. */
void tctx_reset(struct tctx *c);

/* Records a failure (first one sticks) and returns NULL, for use in op constructors. */
struct tensor *tctx_fail(struct tctx *c, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* tensor/ only (ops.c, tensor.c): a new tensor of c (zeroed, unplanned, numbered in creation
 * order), or NULL with c->rc set for a bad rank or size. Everyone else calls tensor_input,
 * tensor_weight or an op_* constructor. */
struct tensor *tctx__new_tensor(struct tctx *c, enum dtype dt, int ndim, const int64_t *shape);

/* A leaf whose memory comes from the plan; fill it with tctx_set after tctx_plan. */
struct tensor *tensor_input(struct tctx *c, enum dtype dt, int ndim, const int64_t *shape);

/* A leaf over existing backend memory (weights). `data` is borrowed. */
struct tensor *tensor_weight(struct tctx *c, enum dtype dt, int ndim, const int64_t *shape, void *data);

/* Marks t as a graph output (kept alive to the end, readable with tctx_get). */
void tensor_set_output(struct tensor *t);

/* Orders every node reachable from outs, plans memory and grows the scratch if needed. */
int tctx_plan(struct tctx *c, struct tensor *const *outs, int n_outs);

/* tctx_plan for a graph that will run many times with new inputs (graph reuse, below): the
 * computed nodes that depend on no input (made from weights only: in the UNet the cross-
 * attention keys and values of the prompt's context) keep their memory for the plan's life, and
 * run only at the first tctx_run and whenever another plan may have overwritten them (another
 * context planned on the same scratch); later runs send only the nodes that depend on inputs.
 * Same kernels, same results, provided the weights' contents do not change while the plan is
 * run again (the sampler's context is uploaded once per run, and each run plans anew). Falls
 * back to tctx_plan's behaviour with streamed weights or when
 * the kept results would hold more than TCTX_HOIST_MAX bytes. */
#define TCTX_HOIST_MAX ((size_t)256 << 20)
int tctx_plan_hoisted(struct tctx *c, struct tensor *const *outs, int n_outs);

/* Copies host data into / out of a planned tensor (size = tensor_nbytes). */
int tctx_set(struct tctx *c, struct tensor *t, const void *host);
int tctx_get(struct tctx *c, const struct tensor *t, void *host);

/* Runs the planned graph on the backend. */
int tctx_run(struct tctx *c);

/* Graph reuse. A caller that runs one graph many times with new inputs (the sampler's UNet
 * evaluations: recording and planning ~2000 nodes is host time the GPU waits for) describes it
 * with key[TCTX_MEMO_KEY] after tctx_plan (tctx_memo_set, io: up to TCTX_MEMO_IO of its tensors)
 * and asks before recording again (tctx_memo_get): true, with io filled, when the planned graph
 * is still that one (no reset, no failure, the scratch not moved); then only tctx_set, tctx_run
 * and tctx_get are needed. KILN_GRAPH_REUSE=0 in the environment makes tctx_memo_get always
 * false. */
void tctx_memo_set(struct tctx *c, const uint64_t key[TCTX_MEMO_KEY], struct tensor *const *io, int n_io);
bool tctx_memo_get(struct tctx *c, const uint64_t key[TCTX_MEMO_KEY], struct tensor **io, int n_io);

/* ===== Op constructors (record one node; see the sticky-error rule above) ===== */

/* Same data, new shape (numel must match). */
struct tensor *op_reshape(struct tctx *c, struct tensor *a, int ndim, const int64_t *shape);
/* a + b and a * b; b broadcasts to a numpy-style (right-aligned, dims of 1 or missing). */
struct tensor *op_add(struct tctx *c, struct tensor *a, struct tensor *b);
struct tensor *op_mul(struct tctx *c, struct tensor *a, struct tensor *b);
/* y + r with r of y's shape and dtype. When y is a LINEAR or CONV2D node recorded last (so nothing
 * reads it yet) without a residual, r becomes its src[3] and the kernel adds it to its output
 * (one pass over memory less; on a GPU one rounding of (product + bias + r) instead of two) and y
 * itself is returned; otherwise this is op_add(y, r) (which broadcasts). */
struct tensor *op_add_fused(struct tctx *c, struct tensor *y, struct tensor *r);
/* a * s + t. fp[0] = s, fp[1] = t. */
struct tensor *op_scale(struct tctx *c, struct tensor *a, float s, float t);
/* op_scale, then clamped to [lo, hi] as torch.clamp does it (NaN stays NaN). ip[0] = 1,
 * fp[2] = lo, fp[3] = hi. */
struct tensor *op_scale_clamp(struct tctx *c, struct tensor *a, float s, float t, float lo, float hi);
/* The sampler's per-step arithmetic on the device (graph/nodes/sampling.c), in float32 with one
 * rounding per operation in the host loop's order (sample/sampler.c, graph/nodes/sampling.c),
 * so the same bits. p is [4] F32 {c_in, sigma, dt, cfg}; x is [B, ...] F32, the sampler's state.
 * op_sample_in: [E*B, ...] = x / c_in, E times (each CFG entry's UNet input); ip[0] = 0.
 * op_sample_step: one Euler step in place, x += ((x - den) / sigma) * dt, den the CFG mix of the
 *   UNet's eps [E*B, ...] (E = 1: cond; E = 2: uncond + (cond - uncond) * cfg, with cond =
 *   x - eps[0] * sigma and uncond = x - eps[1] * sigma); ip[0] = 1, ip[1] = E. It writes into
 *   x's memory: x must be a weight leaf (memory its owner manages), the node's data is x's, and
 *   it must be the graph's output (so it runs after every other reader of x). */
struct tensor *op_sample_in(struct tctx *c, struct tensor *x, struct tensor *p, int entries);
struct tensor *op_sample_step(struct tctx *c, struct tensor *x, struct tensor *eps, struct tensor *p);
/* x * sigmoid(x); GELU with erf; x * sigmoid(1.702 x). */
struct tensor *op_silu(struct tctx *c, struct tensor *a);
struct tensor *op_gelu(struct tctx *c, struct tensor *a);
struct tensor *op_quick_gelu(struct tctx *c, struct tensor *a);
/* [..., 2D] -> [..., D]: first half is the value, second half the gate: value * gelu(gate). */
struct tensor *op_geglu(struct tctx *c, struct tensor *a);
/* x [..., K] @ w[N, K]^T + b[N] (b may be NULL) -> [..., N]. */
struct tensor *op_linear(struct tctx *c, struct tensor *x, struct tensor *w, struct tensor *b);
/* x [B, C, H, W] * w [O, C, kh, kw] + b [O] (b may be NULL) -> [B, O, H', W'].
 * ip[0] = stride, ip[1..4] = padding top, left, bottom, right (zero padding). */
struct tensor *op_conv2d(struct tctx *c, struct tensor *x, struct tensor *w, struct tensor *b, int stride, int pad);
struct tensor *op_conv2d_pad(struct tctx *c, struct tensor *x, struct tensor *w, struct tensor *b, int stride,
                             int pad_top, int pad_left, int pad_bottom, int pad_right);
/* Channels-last: x [B, H, W, C] * w [O, kh, kw, C] + b [O] -> [B, H', W', O]; ip[0] = stride,
 * ip[1..4] = padding top, left, bottom, right, ip[5] = 1 (the layout flag). */
struct tensor *op_conv2d_nhwc(struct tctx *c, struct tensor *x, struct tensor *w, struct tensor *b, int stride,
                              int pad);
struct tensor *op_conv2d_nhwc_pad(struct tctx *c, struct tensor *x, struct tensor *w, struct tensor *b, int stride,
                                  int pad_top, int pad_left, int pad_bottom, int pad_right);
/* GroupNorm over x [B, C, ...] with per-channel affine w, b [C]. ip[0] = groups,
 * ip[1] = 1 to apply SiLU after the affine (fused), fp[0] = eps. */
struct tensor *op_group_norm(struct tctx *c, struct tensor *x, struct tensor *w, struct tensor *b, int groups,
                             float eps, bool silu);
/* The same over channels-last x [B, ..., C] (every dim between the first and the last is
 * spatial); ip[2] = 1 (the layout flag). */
struct tensor *op_group_norm_nhwc(struct tctx *c, struct tensor *x, struct tensor *w, struct tensor *b, int groups,
                                  float eps, bool silu);
/* The same over x + a, a [B, C] added to every position of its image (src[3]): a ResBlock's
 * conv output plus its bias and time embedding, normalised without writing that sum first. */
struct tensor *op_group_norm_nhwc_add(struct tctx *c, struct tensor *x, struct tensor *a, struct tensor *w,
                                      struct tensor *b, int groups, float eps, bool silu);
/* LayerNorm over the last dim of x [..., C] with affine w, b [C]. fp[0] = eps. */
struct tensor *op_layer_norm(struct tctx *c, struct tensor *x, struct tensor *w, struct tensor *b, float eps);
/* Multi-head scaled dot-product attention. q [B, Nq, C], k and v [B, Nk, C]; C = heads * d.
 * softmax(q k^T / sqrt(d)) v per head -> [B, Nq, C]. ip[0] = heads, ip[1] = 1 for a causal
 * mask (query i sees keys 0..i). Never holds more than one block of the score matrix. */
struct tensor *op_attention(struct tctx *c, struct tensor *q, struct tensor *k, struct tensor *v, int heads,
                            bool causal);
/* Swaps the last two dims: [.., M, N] -> [.., N, M]. */
struct tensor *op_transpose(struct tctx *c, struct tensor *a);
/* Nearest-neighbour resize of [B, C, H, W] to [B, C, h, w], as torch's "nearest":
 * source index = min(floor(dst * (in / out)), in - 1), in float. The output shape is the
 * only parameter. op_upsample_nearest scales by an integer factor. */
struct tensor *op_upsample_nearest_to(struct tctx *c, struct tensor *a, int64_t h, int64_t w);
struct tensor *op_upsample_nearest(struct tctx *c, struct tensor *a, int factor);
/* The same resize of channels-last [B, H, W, C] to [B, h, w, C]; ip[0] = 1 (the layout flag). */
struct tensor *op_upsample_nearest_nhwc_to(struct tctx *c, struct tensor *a, int64_t h, int64_t w);
/* Concatenates a and b along dim ip[0] (all other dims equal). */
struct tensor *op_concat(struct tctx *c, struct tensor *a, struct tensor *b, int dim);
/* Rows of table [V, C] picked by ids (I32, shape [...]) -> [..., C], in the table's dtype. */
struct tensor *op_get_rows(struct tctx *c, struct tensor *table, struct tensor *ids);
/* a converted to dtype ip[0] (F32, F16 or BF16; to F16/BF16 rounds to nearest even, as torch's
 * .to() does). Casting to a's own dtype returns a itself (no node). */
struct tensor *op_cast(struct tctx *c, struct tensor *a, enum dtype to);

/* OP_STREAM nodes are made by tctx_plan only (STREAMING above): ip[0] an enum tstream_kind, ip[1]
 * the slot, ip[2] the block's index in tctx.stream, ip[3] 1 on a slot's first FETCH of the run
 * (it waits for BEGIN, not for a DONE), ip[4] 1 on a FETCH that also waits until the compute has
 * reached it (no_prefetch: a backend runs ahead of the host's order otherwise); a FETCH's data is the slot and src[0] a leaf over the
 * block's home bytes (I32, [bytes / 4]), and it copies src[0] into data. */

#endif
