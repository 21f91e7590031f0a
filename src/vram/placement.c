/* vram/placement.c -- allocation strings and the placement plans they give (contracts and the
 * rules themselves in placement.h).
 * Owns: nothing beyond the plan's `home` array, which placement_plan_free releases.
 * Threads: any (pure functions).
 *
 * ARITHMETIC. Sizes are exact integers throughout: decimals are parsed as integer digits (no
 * strtod, whose locale, exponents, "inf" and hex forms have no place here), percentages are
 * millionths, and a model is at most 2^62 bytes so that sums and 2 x a block never overflow. */
#include "vram/placement.h"

#include "base/base.h"
#include "base/err.h"
#include "base/mem.h"
#include "base/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define MAX_MODEL_BYTES ((uint64_t)1 << 62) /* larger models are refused (bytes) */
#define SIZE_DECIMALS 6                     /* most decimals a size may have */
#define SHARE_DECIMALS 4                    /* most decimals a percentage may have (4 = ppm) */
#define ENTRY_SHOWN 80                      /* longest entry text quoted in an error */
#define DESCRIBE_RUNS 8                     /* runs of names listed per device in a log line */

/* ===== Small helpers ===== */

static const uint64_t POW10[] = {1, 10, 100, 1000, 10000, 100000, 1000000};

static bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
static bool is_digit(char c) { return c >= '0' && c <= '9'; }
static char lower(char c) { return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c; }

/* A slice of the text being parsed. */
struct span {
    const char *s;
    size_t n;
};

static struct span trim(struct span t) {
    while (t.n && is_blank(t.s[0])) t.s++, t.n--;
    while (t.n && is_blank(t.s[t.n - 1])) t.n--;
    return t;
}

/* Whether t equals lit (lower case) ignoring case. */
static bool span_is(struct span t, const char *lit) {
    size_t n = strlen(lit);
    if (t.n != n) return false;
    for (size_t i = 0; i < n; i++)
        if (lower(t.s[i]) != lit[i]) return false;
    return true;
}

/* total * ppm / PLACEMENT_PPM, rounded down, without overflow (total < 2^62). */
static uint64_t share_of(uint64_t total, uint64_t ppm) {
    return total / PLACEMENT_PPM * ppm + total % PLACEMENT_PPM * ppm / PLACEMENT_PPM;
}

/* "8.00 GiB" for messages (exact byte counts are added where they matter). */
static const char *human(uint64_t bytes, char *buf, size_t n) {
    if (bytes == PLACEMENT_UNLIMITED) {
        snprintf(buf, n, "unlimited");
    } else if (bytes < 1024) {
        snprintf(buf, n, "%llu bytes", (unsigned long long)bytes);
    } else {
        static const char *const units[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
        double v = (double)bytes / 1024.0;
        int u = 0;
        while (v >= 1024.0 && u < 5) v /= 1024.0, u++;
        snprintf(buf, n, "%.2f %s", v, units[u]);
    }
    return buf;
}

/* "12.5" for 125000 millionths (a percentage, trailing zeros dropped). */
static const char *percent_str(uint64_t ppm, char *buf, size_t n) {
    uint64_t frac = ppm % 10000;
    int digits = 4;
    while (frac && frac % 10 == 0) frac /= 10, digits--;
    if (frac) snprintf(buf, n, "%llu.%0*llu", (unsigned long long)(ppm / 10000), digits, (unsigned long long)frac);
    else snprintf(buf, n, "%llu", (unsigned long long)(ppm / 10000));
    return buf;
}

const char *placement_device_str(int device, char *buf, size_t n) {
    if (device == PLACEMENT_CPU) snprintf(buf, n, "cpu");
    else snprintf(buf, n, "cuda:%d", device);
    return buf;
}

/* An output buffer that counts what would have been written (snprintf semantics). */
struct out {
    char *buf;
    size_t n, len;
};

__attribute__((format(printf, 2, 3))) static void out_printf(struct out *o, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    size_t room = o->len < o->n ? o->n - o->len : 0;
    int k = vsnprintf(room ? o->buf + o->len : NULL, room, fmt, ap);
    va_end(ap);
    if (k > 0) o->len += (size_t)k;
}

/* ===== Parsing ===== */

/* Sets err to "entry IDX 'TEXT': MESSAGE" (TEXT cut at ENTRY_SHOWN characters). */
__attribute__((format(printf, 4, 5))) static int entry_err(struct err *err, int idx, struct span entry,
                                                            const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    bool cut = entry.n > ENTRY_SHOWN;
    return err_set(err, STATUS_ERR_INVALID, "weights placement: entry %d '%.*s%s': %s", idx,
                   (int)(cut ? ENTRY_SHOWN - 3 : entry.n), entry.s, cut ? "..." : "", msg);
}

/* Digits [ '.' digits ] at the start of t. Sets *ip (saturated at UINT64_MAX), the fraction's
 * digits as an integer *frac (at most `decimals` digits, else *too_many) and their count.
 * Returns the characters used, 0 when t does not start with a number. */
static size_t parse_decimal(struct span t, int decimals, uint64_t *ip, uint64_t *frac, int *fdigits, bool *too_many) {
    size_t i = 0;
    *ip = 0, *frac = 0, *fdigits = 0, *too_many = false;
    while (i < t.n && is_digit(t.s[i])) {
        uint64_t d = (uint64_t)(t.s[i] - '0');
        *ip = *ip > (UINT64_MAX - d) / 10 ? UINT64_MAX : *ip * 10 + d;
        i++;
    }
    if (i == 0) return 0;
    if (i < t.n && t.s[i] == '.') {
        size_t j = i + 1;
        while (j < t.n && is_digit(t.s[j])) {
            if (*fdigits < decimals) *frac = *frac * 10 + (uint64_t)(t.s[j] - '0'), ++*fdigits;
            else if (t.s[j] != '0') *too_many = true; /* trailing zeros beyond the limit are harmless */
            j++;
        }
        if (j == i + 1) return 0; /* "8." : a dot must be followed by digits */
        i = j;
    }
    return i;
}

/* The units a size may carry, each a power of 1024. */
static const struct {
    const char *name;
    int shift;
} UNITS[] = {
    {"b", 0},   {"k", 10},  {"kb", 10}, {"kib", 10}, {"m", 20},  {"mb", 20},  {"mib", 20},
    {"g", 30},  {"gb", 30}, {"gib", 30}, {"t", 40},  {"tb", 40}, {"tib", 40},
};

#define UNITS_ALLOWED "b, kb, mb, gb, tb, or k, m, g, t, or kib, mib, gib, tib; all 1024-based"
#define AMOUNT_ALLOWED "a size like 8gb or 1.5gb, a percentage of the model like 25%%, or *"

static int parse_amount(struct span t, int idx, struct span entry, struct placement_entry *e, struct err *err) {
    if (t.n == 0) return entry_err(err, idx, entry, "no amount: expected " AMOUNT_ALLOWED);
    if (t.n == 1 && t.s[0] == '*') {
        e->kind = PLACEMENT_AMOUNT_REST;
        return 0;
    }
    uint64_t ip, frac;
    int fd;
    bool too_many;
    bool share = t.s[t.n - 1] == '%';
    size_t used = parse_decimal(t, share ? SHARE_DECIMALS : SIZE_DECIMALS, &ip, &frac, &fd, &too_many);
    if (used == 0)
        return entry_err(err, idx, entry, "'%.*s' is not an amount: expected " AMOUNT_ALLOWED, (int)t.n, t.s);
    if (too_many)
        return entry_err(err, idx, entry, "'%.*s' has too many decimals (at most %d)", (int)t.n, t.s,
                         share ? SHARE_DECIMALS : SIZE_DECIMALS);
    struct span unit = trim((struct span){t.s + used, t.n - used});

    if (share) { /* "N%": the unit is the '%' (blanks before it allowed) */
        if (unit.n != 1) return entry_err(err, idx, entry, "'%.*s' is not a percentage like 25%%", (int)t.n, t.s);
        uint64_t ppm = ip > 100 ? UINT64_MAX : ip * 10000 + frac * POW10[SHARE_DECIMALS - fd];
        if (ppm == 0 || ppm > PLACEMENT_PPM)
            return entry_err(err, idx, entry, "a percentage must be more than 0%% and at most 100%%, not '%.*s'",
                             (int)t.n, t.s);
        e->kind = PLACEMENT_AMOUNT_SHARE;
        e->ppm = (uint32_t)ppm;
        return 0;
    }

    if (unit.n == 0)
        return entry_err(err, idx, entry, "'%.*s' has no unit: give one, as in %.*sgb (units: " UNITS_ALLOWED ")",
                         (int)t.n, t.s, (int)t.n, t.s);
    int shift = -1;
    for (size_t u = 0; u < ARRAY_LEN(UNITS); u++)
        if (span_is(unit, UNITS[u].name)) shift = UNITS[u].shift;
    if (shift < 0)
        return entry_err(err, idx, entry, "unknown unit '%.*s' (units: " UNITS_ALLOWED ")", (int)unit.n, unit.s);
    if (ip > (PLACEMENT_MAX_AMOUNT >> shift))
        return entry_err(err, idx, entry, "'%.*s' is too large (at most 1 EiB)", (int)t.n, t.s);
    /* frac < 10^6 < 2^20 and shift <= 40: frac << shift < 2^60, no overflow */
    uint64_t bytes = (ip << shift) + (frac << shift) / POW10[fd];
    if (bytes > PLACEMENT_MAX_AMOUNT)
        return entry_err(err, idx, entry, "'%.*s' is too large (at most 1 EiB)", (int)t.n, t.s);
    if (bytes == 0)
        return entry_err(err, idx, entry, "'%.*s' is 0 bytes: give more, or leave the device out", (int)t.n, t.s);
    e->kind = PLACEMENT_AMOUNT_BYTES;
    e->bytes = bytes;
    return 0;
}

static int parse_device(struct span t, int idx, struct span entry, int *device, struct err *err) {
    if (span_is(t, "cpu")) {
        *device = PLACEMENT_CPU;
        return 0;
    }
    if (t.n > 5 && span_is((struct span){t.s, 5}, "cuda:")) {
        int v = 0;
        size_t i = 5;
        while (i < t.n && is_digit(t.s[i]) && v < PLACEMENT_MAX_DEVICES) v = v * 10 + (t.s[i++] - '0');
        if (i == t.n && v < PLACEMENT_MAX_DEVICES) {
            *device = v;
            return 0;
        }
        if (i > 5 && (i == t.n || is_digit(t.s[i])))
            return entry_err(err, idx, entry, "no GPU '%.*s': N of cuda:N is 0..%d", (int)t.n, t.s,
                             PLACEMENT_MAX_DEVICES - 1);
    }
    return entry_err(err, idx, entry, "expected cuda:N (N 0..%d) or cpu, not '%.*s'", PLACEMENT_MAX_DEVICES - 1,
                     (int)t.n, t.s);
}

/* One "DEVICE,AMOUNT" (trimmed, not empty) as entry number idx. */
static int parse_entry(struct span entry, int idx, struct placement_entry *e, struct err *err) {
    const char *comma = memchr(entry.s, ',', entry.n);
    if (!comma) return entry_err(err, idx, entry, "expected DEVICE,AMOUNT, as in cuda:0,8gb or cpu,*");
    struct span dev = trim((struct span){entry.s, (size_t)(comma - entry.s)});
    struct span amount = trim((struct span){comma + 1, entry.n - (size_t)(comma - entry.s) - 1});
    *e = (struct placement_entry){0};
    int rc = parse_device(dev, idx, entry, &e->device, err);
    if (rc == 0) rc = parse_amount(amount, idx, entry, e, err);
    return rc;
}

int placement_parse(const char *text, struct placement *out, struct err *err) {
    out->n = 0;
    if (!text) return err_set(err, STATUS_ERR_INVALID, "weights placement: no text");
    struct span all = trim((struct span){text, strlen(text)});
    if (all.n == 0 || span_is(all, "auto")) return 0;

    struct placement p = {0};
    uint64_t ppm_sum = 0;
    int idx = 0;
    const char *s = all.s, *end = all.s + all.n;
    while (s <= end) {
        const char *semi = memchr(s, ';', (size_t)(end - s));
        const char *stop = semi ? semi : end;
        struct span entry = trim((struct span){s, (size_t)(stop - s)});
        idx++;
        s = stop + 1;
        if (entry.n == 0) {
            if (!semi && idx > 1) break; /* the one trailing ';' */
            return err_set(err, STATUS_ERR_INVALID,
                           "weights placement: entry %d is empty (entries are DEVICE,AMOUNT separated by ';')",
                           idx);
        }
        struct placement_entry e;
        int rc = parse_entry(entry, idx, &e, err);
        if (rc) return rc;
        for (int k = 0; k < p.n; k++) {
            if (p.entries[k].device == e.device) {
                char d[16];
                return entry_err(err, idx, entry, "%s already has entry %d: a device may appear once",
                                 placement_device_str(e.device, d, sizeof d), k + 1);
            }
        }
        /* distinct devices: at most PLACEMENT_MAX_ENTRIES, so a further one was a repeat above */
        if (NEVER(p.n >= PLACEMENT_MAX_ENTRIES))
            return err_set(err, STATUS_ERR_INTERNAL, "weights placement: too many entries");
        if (e.kind == PLACEMENT_AMOUNT_SHARE) {
            ppm_sum += e.ppm;
            char pct[32];
            if (ppm_sum > PLACEMENT_PPM)
                return entry_err(err, idx, entry, "the percentages add up to %s%%, more than 100%%",
                                 percent_str(ppm_sum, pct, sizeof pct));
        }
        p.entries[p.n++] = e;
    }
    *out = p;
    return 0;
}

/* ===== Canonical text ===== */

/* Writes the digits of frac (out of 10^decimals) after a '.', trailing zeros dropped; nothing
 * for 0. */
static void out_fraction(struct out *o, uint64_t frac, int decimals) {
    if (frac == 0) return;
    while (frac % 10 == 0) frac /= 10, decimals--;
    out_printf(o, ".%0*llu", decimals, (unsigned long long)frac);
}

static void out_size(struct out *o, uint64_t bytes) {
    static const struct {
        const char *name;
        int shift;
    } units[] = {{"tb", 40}, {"gb", 30}, {"mb", 20}, {"kb", 10}};
    for (size_t u = 0; u < ARRAY_LEN(units); u++) {
        uint64_t unit = (uint64_t)1 << units[u].shift;
        if (bytes < unit) continue;
        uint64_t r = bytes & (unit - 1); /* r < 2^40: r * 10^6 < 2^60 */
        if (r * POW10[SIZE_DECIMALS] % unit) continue; /* not exact in 6 decimals: a smaller unit */
        out_printf(o, "%llu", (unsigned long long)(bytes >> units[u].shift));
        out_fraction(o, r * POW10[SIZE_DECIMALS] / unit, SIZE_DECIMALS);
        out_printf(o, "%s", units[u].name);
        return;
    }
    out_printf(o, "%llub", (unsigned long long)bytes);
}

size_t placement_format(const struct placement *p, char *buf, size_t n) {
    struct out o = {buf, n, 0};
    if (n) buf[0] = '\0';
    if (p->n <= 0) out_printf(&o, "auto");
    for (int k = 0; k < p->n && k < PLACEMENT_MAX_ENTRIES; k++) {
        const struct placement_entry *e = &p->entries[k];
        char d[16];
        out_printf(&o, "%s%s,", k ? ";" : "", placement_device_str(e->device, d, sizeof d));
        switch (e->kind) {
        case PLACEMENT_AMOUNT_BYTES: out_size(&o, e->bytes); break;
        case PLACEMENT_AMOUNT_SHARE:
            out_printf(&o, "%u", e->ppm / 10000);
            out_fraction(&o, e->ppm % 10000, SHARE_DECIMALS);
            out_printf(&o, "%%");
            break;
        case PLACEMENT_AMOUNT_REST: out_printf(&o, "*"); break;
        }
    }
    return o.len;
}

/* ===== Planning: shared ===== */

void placement_budget_init(struct placement_budget *b, int compute, int n_cuda) {
    memset(b, 0, sizeof *b);
    b->compute = compute;
    b->n_cuda = n_cuda;
    b->cpu = PLACEMENT_UNLIMITED;
}

/* What every planner reads. */
struct plan_in {
    const struct placement_block *blocks;
    int n;
    uint64_t total; /* bytes of all blocks (< MAX_MODEL_BYTES) */
    const struct placement_budget *budget;
};

static uint64_t budget_of(const struct placement_budget *b, int device) {
    return device == PLACEMENT_CPU ? b->cpu : b->cuda[device];
}

static const char *block_name(const struct plan_in *in, int i) {
    return in->blocks[i].name ? in->blocks[i].name : "?";
}

/* Staging that homes need on the computing GPU: 2 x the largest block homed elsewhere (1 x
 * when only one block is). *largest gets that block's index, or -1. */
static uint64_t staging_of(const struct plan_in *in, const int *home, int *largest) {
    int count = 0;
    *largest = -1;
    for (int i = 0; i < in->n; i++) {
        if (home[i] == in->budget->compute) continue;
        count++;
        if (*largest < 0 || in->blocks[i].bytes > in->blocks[*largest].bytes) *largest = i;
    }
    return *largest < 0 ? 0 : in->blocks[*largest].bytes * (uint64_t)(count > 1 ? 2 : 1);
}

/* Bytes of the blocks homed on device. */
static uint64_t bytes_on(const struct plan_in *in, const int *home, int device) {
    uint64_t sum = 0;
    for (int i = 0; i < in->n; i++)
        if (home[i] == device) sum += in->blocks[i].bytes;
    return sum;
}

/* Fills the plan's figures from its homes. */
static void plan_finish(const struct plan_in *in, struct placement_plan *plan) {
    plan->compute = in->budget->compute;
    plan->total = in->total;
    for (int i = 0; i < in->n; i++) {
        int d = plan->home[i];
        if (d == PLACEMENT_CPU) plan->cpu_bytes += in->blocks[i].bytes;
        else plan->cuda_bytes[d] += in->blocks[i].bytes;
        if (d != plan->compute) plan->n_streamed++, plan->streamed_bytes += in->blocks[i].bytes;
    }
    int largest;
    plan->staging = staging_of(in, plan->home, &largest);
    plan->streams = plan->n_streamed > 0;
    plan->staging_block = largest < 0 ? 0 : in->blocks[largest].bytes;
}

/* ===== Planning: explicit string ===== */

/* Places blocks in model order into p's entries in order (rules in placement.h), with s bytes
 * of staging kept on the computing GPU for "*" and for rounding a percentage up. Returns how
 * many blocks found a home (the first ones). */
static int explicit_fill(const struct plan_in *in, const struct placement *p, uint64_t s, int *home) {
    const struct placement_budget *b = in->budget;
    int i = 0;
    uint64_t ppm_sum = 0, share_placed = 0; /* over the percentage entries so far */
    for (int k = 0; k < p->n && i < in->n; k++) {
        const struct placement_entry *e = &p->entries[k];
        uint64_t budget = budget_of(b, e->device), placed = 0;
        uint64_t room = budget; /* what staging leaves */
        if (e->device == b->compute) room = budget > s ? budget - s : 0;
        uint64_t target = 0;
        if (e->kind == PLACEMENT_AMOUNT_SHARE) { /* this entry's part of the cumulative share */
            ppm_sum += e->ppm;
            uint64_t cum = share_of(in->total, ppm_sum);
            target = cum > share_placed ? cum - share_placed : 0;
        }
        for (; i < in->n; i++) {
            uint64_t sz = in->blocks[i].bytes, after = placed + sz;
            bool take = false;
            switch (e->kind) {
            case PLACEMENT_AMOUNT_BYTES: take = after <= e->bytes; break;
            case PLACEMENT_AMOUNT_REST: take = after <= room; break;
            case PLACEMENT_AMOUNT_SHARE: {
                /* the boundary nearest the target: take when it ends at most half a block past */
                uint64_t d = target > placed ? target - placed : 0;
                bool nearer = placed < target && d >= sz - sz / 2;
                take = nearer && after <= budget && (after <= target || after <= room);
                break;
            }
            }
            if (!take) break;
            home[i] = e->device;
            placed = after;
        }
        if (e->kind == PLACEMENT_AMOUNT_SHARE) share_placed += placed;
    }
    return i;
}

/* Arguments the string needs checked against this machine: devices that exist, amounts that
 * fit their budgets. */
static int explicit_check(const struct plan_in *in, const struct placement *p, const char *text, struct err *err) {
    const struct placement_budget *b = in->budget;
    for (int k = 0; k < p->n; k++) {
        const struct placement_entry *e = &p->entries[k];
        char d[16], h1[64], h2[64];
        placement_device_str(e->device, d, sizeof d);
        if (e->device != PLACEMENT_CPU && (e->device < 0 || e->device >= b->n_cuda)) {
            if (b->n_cuda == 0)
                return err_set(err, STATUS_ERR_INVALID, "weights placement '%s': entry %d names %s, but there is no GPU",
                               text, k + 1, d);
            return err_set(err, STATUS_ERR_INVALID,
                           "weights placement '%s': entry %d names %s, but the GPUs are cuda:0..cuda:%d", text, k + 1, d,
                           b->n_cuda - 1);
        }
        uint64_t want = e->kind == PLACEMENT_AMOUNT_BYTES   ? e->bytes
                        : e->kind == PLACEMENT_AMOUNT_SHARE ? share_of(in->total, e->ppm)
                                                            : 0;
        uint64_t budget = budget_of(b, e->device);
        if (want > budget)
            return err_set(err, STATUS_ERR_RANGE,
                           "weights placement '%s': entry %d asks %s for %s, more than its budget for weights, %s; "
                           "lower it or use %s,*",
                           text, k + 1, d, human(want, h1, sizeof h1), human(budget, h2, sizeof h2), d);
    }
    return 0;
}

static int plan_explicit(const struct plan_in *in, const struct placement *p, int *home, struct err *err) {
    const struct placement_budget *b = in->budget;
    char text[256], h1[64], h2[64], h3[64], d[16];
    placement_format(p, text, sizeof text);
    int rc = explicit_check(in, p, text, err);
    if (rc) return rc;

    /* Fixed point on the staging: fill with staging s kept on the computing GPU, measure the
     * staging that fill needs, and refill with that until it is no more than what was kept. s
     * only grows, and takes values among 0, 1 or 2 x a block size, so this ends. */
    uint64_t s = 0, need = 0;
    int largest = -1;
    for (int iter = 0;; iter++) {
        for (int i = 0; i < in->n; i++) home[i] = PLACEMENT_CPU;
        int placed = explicit_fill(in, p, s, home);
        if (placed < in->n) {
            uint64_t missing = 0;
            for (int i = placed; i < in->n; i++) missing += in->blocks[i].bytes;
            char kept[128] = "";
            if (s && b->compute != PLACEMENT_CPU)
                snprintf(kept, sizeof kept, " (with %s kept on %s for staging streamed blocks)", human(s, h3, sizeof h3),
                         placement_device_str(b->compute, d, sizeof d));
            return err_set(err, STATUS_ERR_OOM_DEVICE,
                           "weights placement '%s' holds %s of the model's %s%s: %s (%llu bytes) missing, from "
                           "block '%s' on; end it with cpu,* to keep the rest in host memory",
                           text, human(in->total - missing, h1, sizeof h1), human(in->total, h2, sizeof h2), kept,
                           human(missing, h3, sizeof h3), (unsigned long long)missing, block_name(in, placed));
        }
        need = staging_of(in, home, &largest);
        if (need <= s) break;
        s = need;
        if (NEVER(iter > 2 * in->n + 2)) return err_set(err, STATUS_ERR_INTERNAL, "weights placement: no fixed point");
    }

    /* The computing GPU holds its blocks plus the staging; a fixed amount there may leave too
     * little room (a "*" or percentage there was already kept within budget - staging). */
    if (b->compute == PLACEMENT_CPU || need == 0) return 0;
    uint64_t resident = bytes_on(in, home, b->compute), budget = b->cuda[b->compute];
    if (resident + need <= budget) return 0;
    placement_device_str(b->compute, d, sizeof d);
    int k = 0;
    while (k < p->n && p->entries[k].device != b->compute) k++;
    char staging[160];
    snprintf(staging, sizeof staging, "%s of staging buffers (%s x block '%s', the largest streamed)",
             human(need, h2, sizeof h2), need == in->blocks[largest].bytes ? "1" : "2", block_name(in, largest));
    if (k < p->n && p->entries[k].kind != PLACEMENT_AMOUNT_REST) /* a fixed amount: the user's to lower */
        return err_set(err, STATUS_ERR_RANGE,
                       "weights placement '%s': entry %d gives the computing GPU %s %s of weights, which with %s is "
                       "more than its budget, %s; lower it by %llu bytes or use %s,*",
                       text, k + 1, d, human(resident, h1, sizeof h1), staging, human(budget, h3, sizeof h3),
                       (unsigned long long)(resident + need - budget), d);
    return err_set(err, STATUS_ERR_OOM_DEVICE,
                   "weights placement '%s': the computing GPU %s needs %s, more than its budget for weights, %s: "
                   "%llu bytes missing",
                   text, d, staging, human(budget, h3, sizeof h3), (unsigned long long)(need - budget));
}

/* ===== Planning: automatic ===== */

/* Blocks by size, largest first, ties in model order (insertion sort: models have tens to a
 * few thousand blocks, and it is stable). */
static void sort_by_size(const struct plan_in *in, int *order) {
    for (int i = 0; i < in->n; i++) {
        int j = i;
        while (j > 0 && in->blocks[order[j - 1]].bytes < in->blocks[i].bytes) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = i;
    }
}

/* The resident set for candidate m (largest streamed block at most m): blocks larger than m,
 * then the others largest first while they fit in budget - 2m. Marks res[]; returns the bytes
 * kept, or UINT64_MAX when the blocks larger than m do not fit. */
static uint64_t keep_for(const struct plan_in *in, const int *order, uint64_t m, uint64_t budget, bool *res) {
    if (m > budget / 2) return UINT64_MAX;
    uint64_t cap = budget - 2 * m, kept = 0;
    for (int j = 0; j < in->n; j++) {
        uint64_t sz = in->blocks[order[j]].bytes;
        res[order[j]] = false;
        if (sz > m) {
            if (kept + sz > cap) return UINT64_MAX;
            res[order[j]] = true, kept += sz;
        }
    }
    for (int j = 0; j < in->n; j++) {
        uint64_t sz = in->blocks[order[j]].bytes;
        if (sz <= m && kept + sz <= cap) res[order[j]] = true, kept += sz;
    }
    return kept;
}

/* Streaming's own cost on the computing GPU when the model does not fit it: the least budget
 * any candidate needs (the blocks larger than m kept, plus 2m of staging, or m when a single
 * block streams). */
static uint64_t least_budget(const struct plan_in *in) {
    uint64_t best = UINT64_MAX;
    for (int c = 0; c < in->n; c++) {
        uint64_t m = in->blocks[c].bytes, kept = 0;
        int streamed = 0;
        for (int i = 0; i < in->n; i++) {
            if (in->blocks[i].bytes > m) kept += in->blocks[i].bytes;
            else streamed++;
        }
        uint64_t need = kept + m * (streamed > 1 ? 2 : 1);
        if (need < best) best = need;
    }
    return best;
}

/* Which blocks the computing GPU keeps (res[]); the rest stream. */
static int auto_resident(const struct plan_in *in, bool *res, struct err *err) {
    const struct placement_budget *b = in->budget;
    uint64_t budget = b->cuda[b->compute];
    int *order = mem_alloc(sizeof *order * (size_t)in->n);
    bool *cand = mem_alloc(sizeof *cand * (size_t)in->n);
    sort_by_size(in, order);

    /* every distinct block size as the largest streamed one */
    bool found = false;
    uint64_t best_kept = 0, best_staging = 0;
    for (int j = 0; j < in->n; j++) {
        uint64_t m = in->blocks[order[j]].bytes;
        if (j > 0 && m == in->blocks[order[j - 1]].bytes) continue;
        uint64_t kept = keep_for(in, order, m, budget, cand);
        if (kept == UINT64_MAX) continue;
        uint64_t largest = 0;
        for (int i = 0; i < in->n; i++)
            if (!cand[i] && in->blocks[i].bytes > largest) largest = in->blocks[i].bytes;
        uint64_t staging = 2 * largest; /* total > budget: at least two blocks stream */
        if (!found || kept > best_kept || (kept == best_kept && staging < best_staging)) {
            found = true, best_kept = kept, best_staging = staging;
            memcpy(res, cand, sizeof *res * (size_t)in->n);
        }
    }

    /* the longest model-order prefix that fits with its staging, taken when it costs nothing */
    uint64_t *tail_max = mem_alloc(sizeof *tail_max * (size_t)(in->n + 1)); /* largest of blocks[k..n) */
    tail_max[in->n] = 0;
    for (int k = in->n - 1; k >= 0; k--) tail_max[k] = MAX(tail_max[k + 1], in->blocks[k].bytes);
    uint64_t prefix = 0;
    int best_k = -1;
    uint64_t prefix_kept = 0, prefix_staging = 0;
    for (int k = 0; k < in->n; k++) { /* blocks[0..k) kept, blocks[k..n) stream */
        uint64_t staging = tail_max[k] * (in->n - k > 1 ? 2 : 1);
        if (prefix + staging <= budget) best_k = k, prefix_kept = prefix, prefix_staging = staging;
        prefix += in->blocks[k].bytes;
    }
    if (best_k >= 0 && (!found || prefix_kept > best_kept || (prefix_kept == best_kept && prefix_staging <= best_staging))) {
        found = true;
        for (int i = 0; i < in->n; i++) res[i] = i < best_k;
    }
    mem_free(tail_max);
    mem_free(cand);
    mem_free(order);
    if (found) return 0;

    char d[16], h1[64], h2[64], h3[64];
    uint64_t need = least_budget(in);
    return err_set(err, STATUS_ERR_OOM_DEVICE,
                   "weights placement: the model (%s in %d blocks) does not fit the computing GPU %s (budget for "
                   "weights %s), and streaming it needs at least %s there for the blocks it must keep and two "
                   "staging buffers: %llu bytes missing",
                   human(in->total, h1, sizeof h1), in->n, placement_device_str(b->compute, d, sizeof d),
                   human(budget, h2, sizeof h2), human(need, h3, sizeof h3), (unsigned long long)(need - budget));
}

static int plan_auto(const struct plan_in *in, int *home, struct err *err) {
    const struct placement_budget *b = in->budget;
    int c = b->compute;
    for (int i = 0; i < in->n; i++) home[i] = c;
    if (in->total <= b->cuda[c]) return 0; /* everything fits: nothing streams */

    bool *res = mem_alloc(sizeof *res * (size_t)in->n);
    int rc = auto_resident(in, res, err);
    if (rc) {
        mem_free(res);
        return rc;
    }

    /* the other homes: other GPUs, most free budget first (ties by number), then host memory */
    int devs[PLACEMENT_MAX_DEVICES + 1], nd = 0;
    uint64_t room[PLACEMENT_MAX_DEVICES + 1];
    for (int g = 0; g < b->n_cuda; g++) {
        if (g == c || b->cuda[g] == 0) continue;
        int j = nd++;
        while (j > 0 && room[j - 1] < b->cuda[g]) devs[j] = devs[j - 1], room[j] = room[j - 1], j--;
        devs[j] = g, room[j] = b->cuda[g];
    }
    devs[nd] = PLACEMENT_CPU, room[nd] = b->cpu, nd++;

    uint64_t unplaced = 0;
    int first = -1;
    for (int i = 0; i < in->n; i++) {
        if (res[i]) continue;
        int j = 0;
        while (j < nd && room[j] < in->blocks[i].bytes) j++;
        if (j == nd) {
            unplaced += in->blocks[i].bytes;
            if (first < 0) first = i;
            continue;
        }
        home[i] = devs[j];
        room[j] -= in->blocks[i].bytes;
    }
    mem_free(res);
    if (first < 0) return 0;

    uint64_t left = 0; /* room nobody could use */
    for (int j = 0; j < nd; j++) left = room[j] > UINT64_MAX - left ? UINT64_MAX : left + room[j];
    uint64_t missing = unplaced > left ? unplaced - left : unplaced;
    char h1[64], h2[64], h3[64];
    return err_set(err, STATUS_ERR_OOM_DEVICE,
                   "weights placement: the model (%s in %d blocks) does not fit: %s of its blocks find no room on "
                   "the other GPUs or in host memory (first '%s', %s): %llu bytes missing",
                   human(in->total, h1, sizeof h1), in->n, human(unplaced, h2, sizeof h2), block_name(in, first),
                   human(in->blocks[first].bytes, h3, sizeof h3), (unsigned long long)missing);
}

/* ===== Planning: entry point ===== */

/* Everything in host memory (computing on the CPU). */
static int plan_cpu(const struct plan_in *in, int *home, struct err *err) {
    for (int i = 0; i < in->n; i++) home[i] = PLACEMENT_CPU;
    if (in->total <= in->budget->cpu) return 0;
    char h1[64], h2[64];
    return err_set(err, STATUS_ERR_OOM_DEVICE,
                   "weights placement: the model (%s) is larger than the host memory budget for weights, %s: "
                   "%llu bytes missing",
                   human(in->total, h1, sizeof h1), human(in->budget->cpu, h2, sizeof h2),
                   (unsigned long long)(in->total - in->budget->cpu));
}

/* Programmer-supplied structures that do not hold together (a parsed string always does). */
static int check_args(const struct placement_block *blocks, int n, const struct placement_budget *b,
                      const struct placement *p, uint64_t *total, struct err *err) {
    if (n < 0 || (n > 0 && !blocks) || !b)
        return err_set(err, STATUS_ERR_INVALID, "weights placement: no blocks or no budget");
    if (b->n_cuda < 0 || b->n_cuda > PLACEMENT_MAX_DEVICES)
        return err_set(err, STATUS_ERR_INVALID, "weights placement: %d GPUs (at most %d)", b->n_cuda,
                       PLACEMENT_MAX_DEVICES);
    if (b->compute != PLACEMENT_CPU && (b->compute < 0 || b->compute >= b->n_cuda))
        return err_set(err, STATUS_ERR_INVALID, "weights placement: the computing device cuda:%d does not exist",
                       b->compute);
    *total = 0;
    for (int i = 0; i < n; i++) {
        if (blocks[i].bytes >= MAX_MODEL_BYTES - *total)
            return err_set(err, STATUS_ERR_INVALID, "weights placement: the model is larger than 4 EiB");
        *total += blocks[i].bytes;
    }
    if (!p) return 0;
    if (p->n < 0 || p->n > PLACEMENT_MAX_ENTRIES)
        return err_set(err, STATUS_ERR_INVALID, "weights placement: %d entries", p->n);
    uint64_t ppm = 0;
    for (int k = 0; k < p->n; k++) {
        const struct placement_entry *e = &p->entries[k];
        bool ok = e->device == PLACEMENT_CPU || (e->device >= 0 && e->device < PLACEMENT_MAX_DEVICES);
        ok = ok && (e->kind != PLACEMENT_AMOUNT_BYTES || e->bytes > 0);
        ok = ok && (e->kind != PLACEMENT_AMOUNT_SHARE || (e->ppm > 0 && e->ppm <= PLACEMENT_PPM));
        ok = ok && (unsigned)e->kind <= PLACEMENT_AMOUNT_REST;
        for (int j = 0; j < k; j++) ok = ok && p->entries[j].device != e->device;
        if (e->kind == PLACEMENT_AMOUNT_SHARE) ppm += e->ppm;
        if (!ok || ppm > PLACEMENT_PPM)
            return err_set(err, STATUS_ERR_INVALID, "weights placement: entry %d does not hold together", k + 1);
    }
    return 0;
}

int placement_plan_make(const struct placement_block *blocks, int n, const struct placement_budget *budget,
                        const struct placement *p, struct placement_plan *out, struct err *err) {
    memset(out, 0, sizeof *out);
    struct plan_in in = {.blocks = blocks, .n = n, .budget = budget};
    int rc = check_args(blocks, n, budget, p, &in.total, err);
    if (rc) return rc;

    int *home = mem_alloc(sizeof *home * (size_t)(n > 0 ? n : 1));
    if (budget->compute == PLACEMENT_CPU) rc = plan_cpu(&in, home, err);
    else if (p && p->n > 0) rc = plan_explicit(&in, p, home, err);
    else rc = plan_auto(&in, home, err);
    if (rc) {
        mem_free(home);
        return rc;
    }
    out->n_blocks = n;
    out->home = home;
    plan_finish(&in, out);
    return 0;
}

void placement_plan_free(struct placement_plan *plan) {
    if (!plan) return;
    mem_free(plan->home);
    memset(plan, 0, sizeof *plan);
}

uint64_t placement_plan_bytes(const struct placement_plan *plan, int device) {
    if (device == PLACEMENT_CPU) return plan->cpu_bytes;
    return device >= 0 && device < PLACEMENT_MAX_DEVICES ? plan->cuda_bytes[device] : 0;
}

/* ===== Describing a plan ===== */

/* Splits "input_blocks.10" into its prefix length (up to and with the last '.') and number;
 * false when the name does not end in ".DIGITS". */
static bool numbered(const char *name, size_t *prefix, long *num) {
    const char *dot = strrchr(name, '.');
    if (!dot || !dot[1] || strlen(dot + 1) > 9) return false;
    long v = 0;
    for (const char *c = dot + 1; *c; c++) {
        if (!is_digit(*c)) return false;
        v = v * 10 + (*c - '0');
    }
    *prefix = (size_t)(dot + 1 - name);
    *num = v;
    return true;
}

/* The device's blocks in model order as runs: "time_embed, input_blocks.0-5, ...". */
static void out_runs(struct out *o, const struct placement_plan *plan, const struct placement_block *blocks,
                     int device) {
    int runs = 0, i = 0;
    while (i < plan->n_blocks) {
        if (plan->home[i] != device) {
            i++;
            continue;
        }
        const char *first = blocks[i].name ? blocks[i].name : "?";
        size_t pre;
        long num, last = 0;
        bool is_num = numbered(first, &pre, &num);
        int j = i + 1, next = i + 1; /* next: past the run's last block */
        if (is_num) {
            last = num;
            for (; j < plan->n_blocks; j++) {
                if (plan->home[j] != device) continue; /* the device's list skips other homes */
                const char *nm = blocks[j].name ? blocks[j].name : "?";
                size_t pre2;
                long num2;
                if (!numbered(nm, &pre2, &num2) || pre2 != pre || strncmp(nm, first, pre) || num2 != last + 1) break;
                last = num2;
                next = j + 1;
            }
        }
        if (runs == DESCRIBE_RUNS) {
            out_printf(o, ", ...");
            return;
        }
        if (is_num && last != num) out_printf(o, "%s%.*s%ld-%ld", runs ? ", " : "", (int)pre, first, num, last);
        else out_printf(o, "%s%s", runs ? ", " : "", first);
        runs++;
        i = next;
    }
}

static double gib(uint64_t bytes) { return (double)bytes / (double)((uint64_t)1 << 30); }

size_t placement_plan_describe(const struct placement_plan *plan, const struct placement_block *blocks, char *buf,
                               size_t n) {
    struct out o = {buf, n, 0};
    if (n) buf[0] = '\0';
    if (plan->n_blocks == 0) out_printf(&o, "no blocks");
    int shown = 0;
    for (int d = 0; d <= PLACEMENT_MAX_DEVICES; d++) {
        int device = d == PLACEMENT_MAX_DEVICES ? PLACEMENT_CPU : d;
        int count = 0;
        for (int i = 0; i < plan->n_blocks; i++) count += plan->home[i] == device;
        if (!count) continue;
        char name[16];
        out_printf(&o, "%s%s %.2f GiB (%d block%s: ", shown++ ? "; " : "",
                   placement_device_str(device, name, sizeof name), gib(placement_plan_bytes(plan, device)), count,
                   count == 1 ? "" : "s");
        out_runs(&o, plan, blocks, device);
        out_printf(&o, ")");
    }
    if (plan->streams) {
        char name[16];
        out_printf(&o, "; streams %.2f GiB per step (%d block%s), staging %.2f GiB on %s", gib(plan->streamed_bytes),
                   plan->n_streamed, plan->n_streamed == 1 ? "" : "s", gib(plan->staging),
                   placement_device_str(plan->compute, name, sizeof name));
    }
    if (o.len >= n && n >= 4) memcpy(buf + n - 4, "...", 4); /* cut: say so */
    return o.len;
}
