/* vram/budget.h -- how much of one GPU kiln may use: budget = total - reserve, where the
 * reserve follows one of three modes (manual, auto, smart) as the VRAM-manager node pack that
 * ComfyUI users know computes it (ARCHITECTURE.md §Memory).
 * Owns: nothing; pure functions over a caller-filled struct.
 * Must not: query a GPU (vram/monitor.h does that; the caller copies the figures in).
 * Threads: any.
 *
 * UNITS. Sizes are bytes (uint64_t); user-facing sizes are GB of 1024^3 bytes, as the node
 * pack's GB_TO_BYTES. "used" is what the reserve protects: memory in use on the device by
 * others than this kiln device (NVML's used figure minus the engine's own weights), so the
 * reserve leaves room for them plus a buffer, and the budget is what kiln's models and
 * activations may take. */
#ifndef KILN_VRAM_BUDGET_H
#define KILN_VRAM_BUDGET_H

#include <stdbool.h>
#include <stdint.h>

struct err;

#define VRAM_GB ((uint64_t)1 << 30)              /* bytes in one GB (GiB) */
#define VRAM_DEFAULT_RESERVED_GB 1.0             /* the node's `reserved` default (GB) */
#define VRAM_DEFAULT_MIN_SAFE_RESERVE_GB 2.0     /* MIN_SAFE_RESERVE_GB of the node pack (GB) */

/* Reservation modes; the wire names are the node's `mode` combo values. */
#define VRAM_MODE_MAP(XX)          \
    XX(MANUAL, "manual")           \
    XX(AUTO, "auto")               \
    XX(SMART, "smart")

enum vram_mode {
#define XX(name, wire) VRAM_MODE_##name,
    VRAM_MODE_MAP(XX)
#undef XX
    VRAM_MODE_COUNT
};

/* "manual", "auto", "smart"; "?" for a value out of range. Static storage. */
const char *vram_mode_name(enum vram_mode mode);
/* Parses a wire name (exact, lower case). Returns 0, or STATUS_ERR_INVALID with err naming the
 * text and the accepted names. */
int vram_mode_parse(const char *text, enum vram_mode *out, struct err *err);

/* One device's figures and settings (caller storage; fill it, then ask). */
struct vram_budget {
    uint64_t total;                      /* bytes of device memory */
    uint64_t used;                       /* bytes in use by others (see UNITS) */
    enum vram_mode mode;                 /* how the reserve is computed */
    double reserved_gb;                  /* manual: the reserve; auto/smart: the buffer above
                                            `used` (GB, >= 0) */
    double min_safe_reserve_gb;          /* never reserve less (unless 90%/85% of total is less) (GB) */
};

/* A budget for a device of `total` bytes with the defaults: smart mode, 1 GB buffer, 2 GB
 * safe minimum, nothing used. */
void vram_budget_init(struct vram_budget *b, uint64_t total);

/* The reserve in bytes, by mode (x = reserved_gb, m = min_safe_reserve_gb, in bytes):
 *   manual: min(max(x, m), 90% of total)
 *   auto:   min(max(used + x, m), 85% of total)
 *   smart:  free = total - used; free < 20% of total: 80% of total;
 *           free < 40%: used + x; else max(used + x, m); then at most 90% of total.
 * Percentages of total are rounded down to whole bytes. */
uint64_t vram_budget_reserve(const struct vram_budget *b);

/* total - reserve: the bytes kiln may use on the device. */
uint64_t vram_budget_bytes(const struct vram_budget *b);

/* Whether kiln using `bytes` in all (resident weights plus what is to be loaded) stays within
 * the budget. */
bool vram_budget_allows(const struct vram_budget *b, uint64_t bytes);

#endif
