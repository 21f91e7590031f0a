/* vram/placement.h -- where each block of a model's weights lives (its home): allocation
 * strings like "cuda:0,8gb;cuda:1,*;cpu,*" and the plan that a set of budgets gives
 * (ARCHITECTURE.md §Memory, issue 7). Blocks homed away from the computing GPU are copied into
 * staging buffers there before use; this file only decides, it never copies.
 * Owns: nothing at run time; pure functions over caller data.
 * Must not: query or touch a GPU (the caller passes the budgets in, from vram/budget.h).
 * Threads: any.
 * Ownership: a struct placement is plain data (fixed arrays); a plan's arrays are mem_* memory
 * freed by placement_plan_free; block names stay owned by the caller.
 *
 * THE STRING. Entries separated by ';' (one trailing ';' is allowed; blanks around every token
 * are ignored), each "DEVICE,AMOUNT":
 *   DEVICE  "cuda:N" (N 0..63) or "cpu", any case. "gpu:N" is refused (torch and DisTorch
 *           spell devices cuda:N; one spelling keeps saved workflows comparable).
 *   AMOUNT  a size with a unit, decimals allowed ("8gb", "1.5 GiB", "512m"): b; k, kb, kib;
 *           m, mb, mib; g, gb, gib; t, tb, tib; any case; every unit is 1024-based (gb means
 *           1024^3 bytes, as DisTorch of ComfyUI-MultiGPU and vram/budget.h count it); at most
 *           6 decimals; a fractional byte count is rounded down; more than 0, at most 1 EiB.
 *           A bare number is an error ("give a unit": DisTorch reads a bare number as a
 *           fraction of the device's memory, kiln does not guess).
 *           "N%"  N percent of the model's bytes, 0 < N <= 100, at most 4 decimals; the
 *           percentages of one string add up to at most 100.
 *           "*"   as much as the device's budget holds.
 * A device appears at most once. "" (only blanks) and "auto" mean automatic (n == 0).
 *
 * THE PLAN. Blocks are given in execution order and never split. The computing device runs
 * them; every block homed elsewhere streams: each step it is copied into one of two staging
 * buffers on the computing GPU (double buffering: the next block's copy overlaps this one's
 * compute), so the plan reserves staging = 2 x the largest streamed block there (1 x when only
 * one block streams), out of that GPU's budget. Nothing streams when everything is on the
 * computing GPU, and staging is then 0. No device ever holds more than its budget, staging
 * included.
 *   Explicit string: the entries are filled in the string's order with the blocks in model
 *   order, so each entry holds one contiguous run. A size entry takes blocks while they fit in
 *   its amount; "*" takes blocks while they fit in the budget (always clipped); a percentage
 *   entry ends at the block boundary nearest to its share, counted cumulatively over the
 *   string's percentages so that rounding does not pile up ("cuda:0,50%;cpu,50%" always holds
 *   the whole model), and never past the device's budget. A size or percentage larger than
 *   the device's budget is an error, not silently clipped (a user would rather know at once
 *   than be surprised at load), and so is a computing GPU whose fixed amount leaves no room
 *   for the staging buffers. On the computing GPU, "*" means its budget minus the staging
 *   that the resulting plan needs: the plan is recomputed with the staging it found until that
 *   staging fits (a fixed point; staging only grows, so it ends). A string that cannot hold
 *   the whole model is an error saying how many bytes are missing.
 *   Automatic (NULL, or n == 0): when the model fits the computing GPU's budget, everything
 *   lives there. Otherwise the computing GPU keeps as many bytes as possible (bytes copied per
 *   step = bytes streamed, whichever blocks they are): for every candidate size m of the
 *   largest streamed block, the blocks larger than m must stay, 2m is set aside for staging,
 *   and the rest is filled greedily by size, largest first, ties in model order; the candidate
 *   keeping the most bytes wins (ties: less staging). This accounts for staging exactly,
 *   rather than iterating on a guess. The longest model-order prefix that fits with its
 *   staging is also tried, and is taken when it keeps as many bytes with no more staging
 *   (contiguous runs read better in the log, and cost nothing then). The streamed blocks then go, in model order,
 *   to the first of: the other GPUs by free budget (most first, ties by number), then host
 *   memory, that holds them.
 *   Computing on the CPU: every block lives in host memory and nothing streams; an explicit
 *   string is then ignored (a server-wide --weights-placement must not break CPU workers). */
#ifndef KILN_VRAM_PLACEMENT_H
#define KILN_VRAM_PLACEMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct err;

#define PLACEMENT_MAX_DEVICES 64                           /* GPUs cuda:0 .. cuda:63 */
#define PLACEMENT_MAX_ENTRIES (PLACEMENT_MAX_DEVICES + 1)  /* every GPU once, and cpu */
#define PLACEMENT_CPU (-1)                                 /* the device number of host memory */
#define PLACEMENT_UNLIMITED UINT64_MAX                     /* a budget without limit (bytes) */
#define PLACEMENT_PPM 1000000u                             /* shares are millionths of the model */
#define PLACEMENT_MAX_AMOUNT ((uint64_t)1 << 60)           /* largest size an entry may give (bytes) */

/* What an entry's amount is. */
enum placement_amount {
    PLACEMENT_AMOUNT_BYTES, /* a size: entry.bytes */
    PLACEMENT_AMOUNT_SHARE, /* a percentage of the model's bytes: entry.ppm */
    PLACEMENT_AMOUNT_REST,  /* "*": whatever the device's budget holds */
};

struct placement_entry {
    int device;                 /* 0..63 for cuda:N, or PLACEMENT_CPU */
    enum placement_amount kind; /* which of the two fields below counts */
    uint64_t bytes;             /* BYTES: 1 .. PLACEMENT_MAX_AMOUNT (bytes) */
    uint32_t ppm;               /* SHARE: 1 .. PLACEMENT_PPM millionths (25% = 250000) */
};

/* A parsed allocation string (caller storage; plain data, copy it freely). */
struct placement {
    int n;                                              /* entries; 0 = automatic */
    struct placement_entry entries[PLACEMENT_MAX_ENTRIES]; /* in the string's order */
};

/* "cuda:3" or "cpu" into buf (16 bytes are always enough). Returns buf. */
const char *placement_device_str(int device, char *buf, size_t n);

/* Parses text (see THE STRING) into out. Returns 0, or STATUS_ERR_INVALID with err naming the
 * entry by number and text and saying what is allowed ("entry 2 'cuda:x,8gb': expected cuda:N
 * (N 0..63) or cpu, not 'cuda:x'"); out is then left empty (n == 0). NULL text is an error. */
int placement_parse(const char *text, struct placement *out, struct err *err);

/* The canonical text of p: lower case, no blanks, sizes in the largest unit that writes them
 * exactly with at most 6 decimals ("1.5gb", "100mb", "123b"), percentages with at most 4
 * decimals, "auto" for n == 0. Parsing it gives p back. Writes at most n bytes (NUL included,
 * when n > 0) and returns the length the whole text has, as snprintf does. */
size_t placement_format(const struct placement *p, char *buf, size_t n);

/* One block of a model, in execution order (caller storage; name borrowed, used in errors and
 * in placement_plan_describe only). */
struct placement_block {
    const char *name; /* "input_blocks.4" */
    uint64_t bytes;   /* its weights (bytes) */
};

/* What each device can give this model's weights (caller storage). */
struct placement_budget {
    int compute;                          /* the device that runs the model: 0..63, or PLACEMENT_CPU */
    int n_cuda;                           /* GPUs there are: cuda:0 .. cuda:n_cuda-1 (0..64) */
    uint64_t cuda[PLACEMENT_MAX_DEVICES]; /* bytes free for weights on each GPU (staging comes
                                             out of the computing GPU's figure) */
    uint64_t cpu;                         /* bytes for weights in host memory, or PLACEMENT_UNLIMITED */
};

/* A budget for n_cuda GPUs, all with 0 bytes, unlimited host memory, computing on `compute`. */
void placement_budget_init(struct placement_budget *b, int compute, int n_cuda);

/* The decision (caller storage; placement_plan_free releases `home`). */
struct placement_plan {
    int n_blocks;                               /* blocks planned */
    int *home;                                  /* [n_blocks]: each block's device (0..63 or
                                                   PLACEMENT_CPU); mem_* memory */
    int compute;                                /* the computing device (as in the budget) */
    uint64_t total;                             /* bytes of all blocks */
    uint64_t cuda_bytes[PLACEMENT_MAX_DEVICES]; /* bytes of blocks homed on each GPU */
    uint64_t cpu_bytes;                         /* bytes of blocks homed in host memory */
    bool streams;                               /* some block is homed away from the computing device */
    int n_streamed;                             /* how many */
    uint64_t streamed_bytes;                    /* their bytes: what is copied per step */
    uint64_t staging_block;                     /* the largest of them: one staging buffer (bytes) */
    uint64_t staging;                           /* bytes reserved on the computing GPU for staging
                                                   (0, 1 or 2 x staging_block) */
};

/* Plans where blocks[0..n) live (see THE PLAN) for the budget, following p, or automatically
 * when p is NULL or empty. n may be 0. Returns 0 with *out filled (free it with
 * placement_plan_free), or, with *out left empty (nothing to free):
 *   STATUS_ERR_INVALID   bad arguments, or p names a GPU that does not exist;
 *   STATUS_ERR_RANGE     an amount over its device's budget, or a computing GPU whose amount
 *                        leaves no room for staging (err names the entry and the figures);
 *   STATUS_ERR_OOM_DEVICE the model does not fit where it may go (err says how many bytes
 *                        are missing). */
int placement_plan_make(const struct placement_block *blocks, int n, const struct placement_budget *budget,
                        const struct placement *p, struct placement_plan *out, struct err *err);

/* Releases the plan's arrays and empties it. NULL and an empty plan are no-ops. */
void placement_plan_free(struct placement_plan *plan);

/* Bytes of the plan's blocks homed on device (0..63 or PLACEMENT_CPU); 0 for other numbers. */
uint64_t placement_plan_bytes(const struct placement_plan *plan, int device);

/* One log line: each device holding blocks (GPUs by number, then cpu), its bytes in GiB and
 * its blocks, runs of numbered names joined, at most 8 runs listed ("cuda:0 1.62 GiB (14 blocks: time_embed,
 * input_blocks.0-5, ...); cpu 0.12 GiB (2 blocks: out, ...)"), then, when blocks stream, what
 * streams per step and the staging reserved. blocks are the ones the plan was made for. Writes
 * at most n bytes (NUL included, when n > 0; a cut line ends in "...") and returns the length
 * the whole line has, as snprintf does. */
size_t placement_plan_describe(const struct placement_plan *plan, const struct placement_block *blocks, char *buf,
                               size_t n);

#endif
