/* vram/budget.c -- the reserve of one device by mode, and the budget that follows.
 * Threads: any (pure functions).
 *
 * SOURCE. The formulas are the "显存计算公式" section of the VRAM-manager node pack's notes
 * (shared/seeds/000-vram-manager-nodes.md), summarised in ARCHITECTURE.md §Memory. The notes
 * leave "buffer" undefined; the node has one size input, `reserved` (recommended 1.0-2.0 GB,
 * "基础预留" in smart mode's middle band), so in auto and smart modes that input is the
 * buffer kept above current use. Defaults: MIN_SAFE_RESERVE_GB = 2.0, MAX_RESERVED_RATIO =
 * 0.9 (the notes' constants), reserved 1.0 GB (low end of the recommended range). */
#include "vram/budget.h"

#include "base/err.h"
#include "base/status.h"

#include <math.h>
#include <string.h>

/* ===== Modes ===== */

static const char *const MODE_NAMES[] = {
#define XX(name, wire) wire,
    VRAM_MODE_MAP(XX)
#undef XX
};

const char *vram_mode_name(enum vram_mode mode) {
    return (unsigned)mode < VRAM_MODE_COUNT ? MODE_NAMES[mode] : "?";
}

int vram_mode_parse(const char *text, enum vram_mode *out, struct err *err) {
    for (int i = 0; text && i < VRAM_MODE_COUNT; i++) {
        if (strcmp(text, MODE_NAMES[i]) == 0) {
            *out = (enum vram_mode)i;
            return 0;
        }
    }
    return err_set(err, STATUS_ERR_INVALID, "unknown VRAM reservation mode '%s' (expected manual, auto or smart)",
                   text ? text : "(null)");
}

/* ===== Reserve ===== */

/* total * num / den rounded down, without overflowing for any 64-bit total. */
static uint64_t share(uint64_t total, uint64_t num, uint64_t den) {
    return total / den * num + total % den * num / den;
}

/* Whether v < total * num / den exactly (v * den < total * num), i.e. v is below the share
 * rounded up. */
static bool below_share(uint64_t v, uint64_t total, uint64_t num, uint64_t den) {
    uint64_t ceil = share(total, num, den) + (total % den * num % den != 0);
    return v < ceil;
}

/* GB (a user's figure, possibly fractional or negative) to bytes, rounded to nearest. */
static uint64_t gb_bytes(double gb) {
    if (!(gb > 0)) return 0; /* negative or NaN: nothing */
    double b = gb * (double)VRAM_GB;
    if (b >= 18446744073709549568.0) return UINT64_MAX; /* largest double below 2^64 */
    return (uint64_t)llround(b);
}

static uint64_t max_u64(uint64_t a, uint64_t b) { return a > b ? a : b; }
static uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }
static uint64_t add_sat(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

void vram_budget_init(struct vram_budget *b, uint64_t total) {
    *b = (struct vram_budget){.total = total, .used = 0, .mode = VRAM_MODE_SMART,
                              .reserved_gb = VRAM_DEFAULT_RESERVED_GB,
                              .min_safe_reserve_gb = VRAM_DEFAULT_MIN_SAFE_RESERVE_GB};
}

uint64_t vram_budget_reserve(const struct vram_budget *b) {
    uint64_t x = gb_bytes(b->reserved_gb), safe = gb_bytes(b->min_safe_reserve_gb);
    uint64_t used = min_u64(b->used, b->total);
    uint64_t use_buf = add_sat(used, x); /* current use + buffer */
    switch (b->mode) {
    case VRAM_MODE_MANUAL: /* max(user_input, min_safe_reserve), at most 90% of total */
        return min_u64(max_u64(x, safe), share(b->total, 9, 10));
    case VRAM_MODE_AUTO: /* current_used + buffer, within [min_safe_reserve, 85% of total] */
        return min_u64(max_u64(use_buf, safe), share(b->total, 85, 100));
    case VRAM_MODE_SMART: {
        uint64_t free = b->total - used, r;
        if (below_share(free, b->total, 1, 5))
            r = share(b->total, 4, 5); /* tight: free < 20% */
        else if (below_share(free, b->total, 2, 5))
            r = use_buf;               /* middling: 20% <= free < 40% */
        else
            r = max_u64(use_buf, safe); /* plenty */
        return min_u64(r, share(b->total, 9, 10));
    }
    case VRAM_MODE_COUNT: break;
    }
    return share(b->total, 9, 10); /* unknown mode: the most cautious reserve */
}

uint64_t vram_budget_bytes(const struct vram_budget *b) {
    uint64_t r = vram_budget_reserve(b);
    return b->total > r ? b->total - r : 0;
}

bool vram_budget_allows(const struct vram_budget *b, uint64_t bytes) { return bytes <= vram_budget_bytes(b); }
