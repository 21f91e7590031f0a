/* tests/unit/vram/test_placement.c -- allocation strings and placement plans (vram/placement.h).
 * Parsing: every form (units, decimals, %, *, blanks, case) against byte counts worked out by
 * hand, bad strings against the entry and problem their message must name, canonical text
 * round trips (fixed cases and random placements). Plans: an independent checker of the
 * invariants (every block placed once, per-device sums, staging = 2 x the largest streamed
 * block, no device over budget with staging), a brute-force optimum over subsets for the bytes
 * the computing GPU keeps, and hand-worked homes for explicit strings, "*", percentages,
 * the staging fixed point and the errors.
 * Threads: the test thread only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/err.h"
#include "base/status.h"
#include "vram/placement.h"

#include <stdio.h>
#include <string.h>

#define MIB(x) ((uint64_t)(x) << 20)
#define GIB(x) ((uint64_t)(x) << 30)
#define CPU PLACEMENT_CPU

/* ===== Helpers ===== */

static struct placement parse_ok(const char *text) {
    struct placement p;
    struct err err = {0};
    int rc = placement_parse(text, &p, &err);
    if (rc) fail_msg("'%s' did not parse: %s", text, err.msg);
    return p;
}

/* text must fail to parse with a message holding each of the NULL-ended fragments. */
static void parse_bad(const char *text, ...) {
    struct placement p = {.n = 3};
    struct err err = {0};
    int rc = placement_parse(text, &p, &err);
    if (rc != STATUS_ERR_INVALID) fail_msg("'%s' parsed (rc %d)", text ? text : "(null)", rc);
    assert_int_equal(err.code, STATUS_ERR_INVALID);
    assert_int_equal(p.n, 0);
    va_list ap;
    va_start(ap, text);
    for (const char *frag; (frag = va_arg(ap, const char *));)
        if (!strstr(err.msg, frag)) fail_msg("'%s': message '%s' lacks '%s'", text, err.msg, frag);
    va_end(ap);
}

static void assert_entry(const struct placement_entry *e, int device, enum placement_amount kind, uint64_t bytes,
                         uint32_t ppm) {
    assert_int_equal(e->device, device);
    assert_int_equal(e->kind, kind);
    if (kind == PLACEMENT_AMOUNT_BYTES) assert_int_equal(e->bytes, bytes);
    if (kind == PLACEMENT_AMOUNT_SHARE) assert_int_equal(e->ppm, ppm);
}

static void assert_same(const struct placement *a, const struct placement *b) {
    assert_int_equal(a->n, b->n);
    for (int k = 0; k < a->n; k++) {
        const struct placement_entry *x = &a->entries[k], *y = &b->entries[k];
        assert_int_equal(x->device, y->device);
        assert_int_equal(x->kind, y->kind);
        if (x->kind == PLACEMENT_AMOUNT_BYTES) assert_int_equal(x->bytes, y->bytes);
        if (x->kind == PLACEMENT_AMOUNT_SHARE) assert_int_equal(x->ppm, y->ppm);
    }
}

static uint64_t rng_state = 0x9e3779b97f4a7c15u;
static uint64_t rnd(uint64_t n) { /* xorshift64*, 0 .. n-1 */
    rng_state ^= rng_state >> 12, rng_state ^= rng_state << 25, rng_state ^= rng_state >> 27;
    return (rng_state * 0x2545f4914f6cdd1du >> 11) % n;
}

/* Checks a plan against its inputs from first principles (not from the planner's code):
 * every block has one valid home, the figures are the sums of the homes, staging is 2 x the
 * largest block homed away from the computing device (1 x for a single one), and no device
 * holds more than its budget, the computing GPU's staging included. */
static void check_plan(const struct placement_block *blocks, int n, const struct placement_budget *b,
                       const struct placement_plan *plan) {
    assert_int_equal(plan->n_blocks, n);
    assert_int_equal(plan->compute, b->compute);
    uint64_t cuda[PLACEMENT_MAX_DEVICES] = {0}, cpu = 0, total = 0, streamed = 0, largest = 0;
    int n_streamed = 0;
    for (int i = 0; i < n; i++) {
        int h = plan->home[i];
        assert_true(h == CPU || (h >= 0 && h < b->n_cuda));
        if (h == CPU) cpu += blocks[i].bytes;
        else cuda[h] += blocks[i].bytes;
        total += blocks[i].bytes;
        if (h != b->compute) {
            n_streamed++, streamed += blocks[i].bytes;
            if (blocks[i].bytes > largest) largest = blocks[i].bytes;
        }
    }
    if (b->compute == CPU) assert_int_equal(cpu, total);
    assert_int_equal(plan->total, total);
    assert_int_equal(plan->cpu_bytes, cpu);
    assert_int_equal(placement_plan_bytes(plan, CPU), cpu);
    for (int g = 0; g < PLACEMENT_MAX_DEVICES; g++) {
        assert_int_equal(plan->cuda_bytes[g], cuda[g]);
        assert_int_equal(placement_plan_bytes(plan, g), cuda[g]);
    }
    assert_int_equal(plan->n_streamed, n_streamed);
    assert_int_equal(plan->streamed_bytes, streamed);
    assert_int_equal(plan->streams, n_streamed > 0);
    uint64_t staging = n_streamed == 0 ? 0 : n_streamed == 1 ? largest : 2 * largest;
    assert_int_equal(plan->staging, staging);
    assert_int_equal(plan->staging_block, largest);
    for (int g = 0; g < b->n_cuda; g++) {
        uint64_t use = cuda[g] + (g == b->compute ? staging : 0);
        if (use > b->cuda[g]) fail_msg("cuda:%d holds %llu > budget %llu", g, (unsigned long long)use,
                                       (unsigned long long)b->cuda[g]);
    }
    assert_true(cpu <= b->cpu);
}

/* An explicit plan keeps the string's order: the entry holding each block never goes back. */
static void check_order(const struct placement *p, const struct placement_plan *plan) {
    int at = 0;
    for (int i = 0; i < plan->n_blocks; i++) {
        int k = 0;
        while (k < p->n && p->entries[k].device != plan->home[i]) k++;
        assert_true(k < p->n);
        assert_true(k >= at);
        at = k;
    }
}

/* The most bytes the computing GPU can keep: every subset of the blocks, kept + staging of the
 * rest <= its budget (n <= 16). Returns UINT64_MAX when no subset fits. */
static uint64_t brute_best_kept(const struct placement_block *blocks, int n, uint64_t budget) {
    uint64_t best = UINT64_MAX;
    for (uint32_t mask = 0; mask < (1u << n); mask++) {
        uint64_t kept = 0, largest = 0;
        int away = 0;
        for (int i = 0; i < n; i++) {
            if (mask >> i & 1) kept += blocks[i].bytes;
            else away++, largest = blocks[i].bytes > largest ? blocks[i].bytes : largest;
        }
        uint64_t staging = away == 0 ? 0 : away == 1 ? largest : 2 * largest;
        if (kept + staging <= budget && (best == UINT64_MAX || kept > best)) best = kept;
    }
    return best;
}

static int plan(const struct placement_block *blocks, int n, const struct placement_budget *b, const char *text,
                struct placement_plan *out, struct err *err) {
    struct placement p = parse_ok(text ? text : "");
    return placement_plan_make(blocks, n, b, text ? &p : NULL, out, err);
}

/* plan() that must succeed and pass check_plan (and check_order for a string). */
static void plan_ok(const struct placement_block *blocks, int n, const struct placement_budget *b, const char *text,
                    struct placement_plan *out) {
    struct err err = {0};
    int rc = plan(blocks, n, b, text, out, &err);
    if (rc) fail_msg("plan '%s' failed: %s", text ? text : "(auto)", err.msg);
    check_plan(blocks, n, b, out);
    if (text) {
        struct placement p = parse_ok(text);
        if (p.n && b->compute != CPU) check_order(&p, out);
    }
}

/* plan() that must fail with rc and a message holding each NULL-ended fragment. */
static void plan_bad(const struct placement_block *blocks, int n, const struct placement_budget *b, const char *text,
                     int rc_want, ...) {
    struct placement_plan out;
    struct err err = {0};
    int rc = plan(blocks, n, b, text, &out, &err);
    if (rc != rc_want) fail_msg("plan '%s': rc %d, expected %d (%s)", text ? text : "(auto)", rc, rc_want, err.msg);
    assert_null(out.home);
    va_list ap;
    va_start(ap, rc_want);
    for (const char *frag; (frag = va_arg(ap, const char *));)
        if (!strstr(err.msg, frag)) fail_msg("plan '%s': message '%s' lacks '%s'", text, err.msg, frag);
    va_end(ap);
}

/* n blocks "b.0" .. of `each` bytes. */
static const char *const NAMES[] = {"b.0", "b.1", "b.2", "b.3", "b.4", "b.5", "b.6",
                                    "b.7", "b.8", "b.9", "b.10", "b.11"};
static void uniform(struct placement_block *blocks, int n, uint64_t each) {
    for (int i = 0; i < n; i++) blocks[i] = (struct placement_block){NAMES[i], each};
}

/* ===== Parsing ===== */

static void test_parse_forms(void **state) {
    (void)state;
    struct placement p = parse_ok("cuda:0,8gb;cuda:1,*;cpu,*");
    assert_int_equal(p.n, 3);
    assert_entry(&p.entries[0], 0, PLACEMENT_AMOUNT_BYTES, 8589934592u, 0);
    assert_entry(&p.entries[1], 1, PLACEMENT_AMOUNT_REST, 0, 0);
    assert_entry(&p.entries[2], CPU, PLACEMENT_AMOUNT_REST, 0, 0);

    /* every unit (1024-based), decimals, case, blanks between number and unit */
    static const struct {
        const char *amount;
        uint64_t bytes;
    } sizes[] = {
        {"7b", 7},           {"7B", 7},
        {"512k", 524288},    {"512kb", 524288},      {"512KiB", 524288},
        {"3m", 3145728},     {"3 MB", 3145728},      {"3mib", 3145728},
        {"2g", 2147483648u}, {"2Gb", 2147483648u},   {"2GiB", 2147483648u},
        {"1t", 1099511627776u}, {"1TB", 1099511627776u}, {"1tib", 1099511627776u},
        {"1.5gb", 1610612736u},   /* 3 * 2^29 */
        {"0.1gb", 107374182u},    /* 107374182.4, rounded down */
        {"2.75 MiB", 2883584u},   /* 2 * 1048576 + 786432 */
        {"1.000000gb", 1073741824u},
        {"1.0000000gb", 1073741824u}, /* zeros past 6 decimals change nothing */
        {"1024tb", (uint64_t)1 << 50},
    };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        char text[64];
        snprintf(text, sizeof text, "cuda:5,%s", sizes[i].amount);
        p = parse_ok(text);
        assert_int_equal(p.n, 1);
        assert_entry(&p.entries[0], 5, PLACEMENT_AMOUNT_BYTES, sizes[i].bytes, 0);
    }

    /* percentages, in millionths */
    p = parse_ok("cuda:0,25%;cuda:1,12.5 %;cuda:2,0.0001%;cpu,62.4999%");
    assert_int_equal(p.n, 4);
    assert_entry(&p.entries[0], 0, PLACEMENT_AMOUNT_SHARE, 0, 250000);
    assert_entry(&p.entries[1], 1, PLACEMENT_AMOUNT_SHARE, 0, 125000);
    assert_entry(&p.entries[2], 2, PLACEMENT_AMOUNT_SHARE, 0, 1);
    assert_entry(&p.entries[3], CPU, PLACEMENT_AMOUNT_SHARE, 0, 624999);
    p = parse_ok("cpu,100%");
    assert_entry(&p.entries[0], CPU, PLACEMENT_AMOUNT_SHARE, 0, 1000000);

    /* blanks around every token, case, one trailing ';', two-digit GPU numbers */
    p = parse_ok("  CUDA:0 , 8 GB ;\tCpu , * ; ");
    assert_int_equal(p.n, 2);
    assert_entry(&p.entries[0], 0, PLACEMENT_AMOUNT_BYTES, 8589934592u, 0);
    assert_entry(&p.entries[1], CPU, PLACEMENT_AMOUNT_REST, 0, 0);
    p = parse_ok("cuda:63,1gb;cuda:10,*;");
    assert_int_equal(p.n, 2);
    assert_entry(&p.entries[0], 63, PLACEMENT_AMOUNT_BYTES, GIB(1), 0);
    assert_entry(&p.entries[1], 10, PLACEMENT_AMOUNT_REST, 0, 0);

    /* automatic */
    assert_int_equal(parse_ok("").n, 0);
    assert_int_equal(parse_ok("   ").n, 0);
    assert_int_equal(parse_ok("auto").n, 0);
    assert_int_equal(parse_ok(" AUTO ").n, 0);

    /* every GPU and cpu: the most entries there can be */
    char all[2048];
    size_t len = 0;
    for (int g = 63; g >= 0; g--) len += (size_t)snprintf(all + len, sizeof all - len, "cuda:%d,1mb;", g);
    snprintf(all + len, sizeof all - len, "cpu,*");
    p = parse_ok(all);
    assert_int_equal(p.n, PLACEMENT_MAX_ENTRIES);
    assert_int_equal(p.entries[0].device, 63);
    assert_int_equal(p.entries[64].device, CPU);
}

static void test_parse_errors(void **state) {
    (void)state;
    parse_bad("cuda:x,8gb", "entry 1 'cuda:x,8gb'", "expected cuda:N", "or cpu", NULL);
    parse_bad("cuda:0,8gb;cuda:x,8gb", "entry 2 'cuda:x,8gb'", "expected cuda:N", NULL);
    parse_bad("gpu:0,1gb", "entry 1 'gpu:0,1gb'", "expected cuda:N", "'gpu:0'", NULL);
    parse_bad("cuda:64,1gb", "entry 1 'cuda:64,1gb'", "0..63", NULL);
    parse_bad("cuda:123456789012345,1gb", "0..63", NULL);
    parse_bad("cuda:,1gb", "entry 1", "expected cuda:N", NULL);
    parse_bad("cuda:0", "entry 1 'cuda:0'", "DEVICE,AMOUNT", NULL);
    parse_bad("cpu,*;cuda:1", "entry 2 'cuda:1'", "DEVICE,AMOUNT", NULL);
    parse_bad("cuda:0,", "entry 1", "no amount", NULL);
    parse_bad("cuda:0,8", "entry 1 'cuda:0,8'", "no unit", "8gb", NULL);
    parse_bad("cuda:0,8xb", "entry 1 'cuda:0,8xb'", "unknown unit 'xb'", NULL);
    parse_bad("cuda:0,1gb,2gb", "entry 1 'cuda:0,1gb,2gb'", "unknown unit", NULL);
    parse_bad("cuda:0,0gb", "entry 1", "0 bytes", NULL);
    parse_bad("cuda:0,0.0000001gb", "too many decimals", NULL);
    parse_bad("cuda:0,0.000001b", "0 bytes", NULL);
    parse_bad("cuda:0,1.1234567gb", "entry 1", "too many decimals", NULL);
    parse_bad("cuda:0,12.34567%", "too many decimals", NULL);
    parse_bad("cuda:0,2000000tb", "entry 1", "too large", NULL);
    parse_bad("cuda:0,99999999999999999999999gb", "too large", NULL);
    parse_bad("cuda:0,-1gb", "entry 1 'cuda:0,-1gb'", "not an amount", NULL);
    parse_bad("cuda:0,8.gb", "not an amount", NULL);
    parse_bad("cuda:0,.5gb", "not an amount", NULL);
    parse_bad("cuda:0,gb", "not an amount", NULL);
    parse_bad("cuda:0,**", "not an amount", NULL);
    parse_bad("cuda:0,0%", "entry 1 'cuda:0,0%'", "more than 0%", NULL);
    parse_bad("cuda:0,101%", "at most 100%", NULL);
    parse_bad("cuda:0,100.0001%", "at most 100%", NULL);
    parse_bad("cuda:0,25%%", "percentage", NULL);
    parse_bad("cuda:0,60%;cpu,50%", "entry 2 'cpu,50%'", "add up to 110%,", "more than 100%", NULL);
    parse_bad("cuda:0,33.3333%;cpu,66.6668%", "add up to 100.0001%,", NULL);
    parse_bad("cuda:0,1gb;cuda:0,2gb", "entry 2 'cuda:0,2gb'", "cuda:0 already has entry 1", NULL);
    parse_bad("cpu,*;cuda:1,1gb;CPU,1gb", "entry 3", "cpu already has entry 1", NULL);
    parse_bad("cuda:0,1gb;;cpu,*", "entry 2 is empty", NULL);
    parse_bad(";", "entry 1 is empty", NULL);
    parse_bad("cuda:0,1gb;cpu,*;;", "entry 3 is empty", NULL);
    parse_bad(NULL, "no text", NULL);

    /* a long entry is quoted cut, and the message stays whole */
    char lng[400];
    memset(lng, 'x', sizeof lng);
    memcpy(lng, "cuda:0,1", 8);
    lng[sizeof lng - 1] = '\0';
    parse_bad(lng, "entry 1 'cuda:0,1xxx", "...'", NULL);
}

static void test_format_round_trip(void **state) {
    (void)state;
    static const struct {
        const char *in, *canonical;
    } cases[] = {
        {"  CUDA:0 , 8 GB ;\tCpu , * ; ", "cuda:0,8gb;cpu,*"},
        {"cuda:1,1536mb", "cuda:1,1.5gb"},   /* 1.5 * 1024 */
        {"cuda:1,1.5g", "cuda:1,1.5gb"},
        {"cuda:2,1025kb", "cuda:2,1025kb"},  /* 1.0009765625mb: more than 6 decimals */
        {"cuda:2,1024kb", "cuda:2,1mb"},
        {"cuda:2,0.1gb", "cuda:2,107374182b"},
        {"cpu,100b", "cpu,100b"},
        {"cpu,2048b", "cpu,2kb"},
        {"cuda:3,0.25tb", "cuda:3,256gb"},
        {"cuda:3,1.25tb", "cuda:3,1.25tb"},
        {"cuda:0,12.50%;cpu,087.5%", "cuda:0,12.5%;cpu,87.5%"},
        {"cuda:0,0.0001%", "cuda:0,0.0001%"},
        {"cuda:0,100%", "cuda:0,100%"},
        {"", "auto"},
        {"auto", "auto"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct placement p = parse_ok(cases[i].in), q;
        char buf[256];
        size_t len = placement_format(&p, buf, sizeof buf);
        assert_string_equal(buf, cases[i].canonical);
        assert_int_equal(len, strlen(cases[i].canonical));
        q = parse_ok(buf);
        assert_same(&p, &q);
    }

    /* a short buffer: cut, NUL-ended, the full length returned */
    struct placement p = parse_ok("cuda:0,8gb;cpu,*");
    char small[6];
    assert_int_equal(placement_format(&p, small, sizeof small), strlen("cuda:0,8gb;cpu,*"));
    assert_string_equal(small, "cuda:");
    assert_int_equal(placement_format(&p, NULL, 0), strlen("cuda:0,8gb;cpu,*"));

    /* random placements: format, parse, same placement */
    for (int round = 0; round < 2000; round++) {
        struct placement r = {0};
        bool used[PLACEMENT_MAX_DEVICES + 1] = {0};
        uint64_t ppm_left = PLACEMENT_PPM;
        int want = 1 + (int)rnd(6);
        for (int k = 0; k < want; k++) {
            int slot = (int)rnd(PLACEMENT_MAX_DEVICES + 1);
            if (used[slot]) continue;
            used[slot] = true;
            struct placement_entry *e = &r.entries[r.n++];
            e->device = slot == PLACEMENT_MAX_DEVICES ? CPU : slot;
            switch (rnd(3)) {
            case 0:
                e->kind = PLACEMENT_AMOUNT_BYTES;
                e->bytes = rnd(2) ? 1 + rnd(PLACEMENT_MAX_AMOUNT) : (1 + rnd(4096)) << (10 * rnd(5));
                if (e->bytes > PLACEMENT_MAX_AMOUNT) e->bytes = PLACEMENT_MAX_AMOUNT;
                break;
            case 1:
                if (ppm_left == 0) { e->kind = PLACEMENT_AMOUNT_REST; break; }
                e->kind = PLACEMENT_AMOUNT_SHARE;
                e->ppm = (uint32_t)(1 + rnd(ppm_left));
                ppm_left -= e->ppm;
                break;
            default: e->kind = PLACEMENT_AMOUNT_REST; break;
            }
        }
        char buf[2048];
        placement_format(&r, buf, sizeof buf);
        struct placement back = parse_ok(buf);
        assert_same(&r, &back);
    }
}

/* ===== Plans ===== */

static void test_plan_fits(void **state) {
    (void)state;
    const struct placement_block blocks[] = {
        {"time_embed", MIB(5)}, {"input_blocks.0", MIB(40)}, {"middle_block", MIB(300)}, {"out", MIB(1)}};
    struct placement_budget b;
    placement_budget_init(&b, 0, 2);
    b.cuda[0] = MIB(346); /* exactly the model */
    b.cuda[1] = GIB(8);
    struct placement_plan pl;
    plan_ok(blocks, 4, &b, NULL, &pl);
    for (int i = 0; i < 4; i++) assert_int_equal(pl.home[i], 0);
    assert_false(pl.streams);
    assert_int_equal(pl.staging, 0);
    assert_int_equal(pl.cuda_bytes[0], MIB(346));
    placement_plan_free(&pl);
    assert_null(pl.home);
    placement_plan_free(&pl); /* twice: still a no-op */
    placement_plan_free(NULL);

    /* "cuda:0,*;cpu,*" that fits: the same, nothing streams */
    plan_ok(blocks, 4, &b, "cuda:0,*;cpu,*", &pl);
    for (int i = 0; i < 4; i++) assert_int_equal(pl.home[i], 0);
    assert_int_equal(pl.staging, 0);
    placement_plan_free(&pl);

    /* no blocks */
    plan_ok(blocks, 0, &b, NULL, &pl);
    assert_int_equal(pl.total, 0);
    assert_false(pl.streams);
    placement_plan_free(&pl);
}

/* A GPU 0 too small for the model: it keeps the most bytes it can with staging set aside, and
 * cuda:1 then host memory take the rest. */
static void test_plan_auto_spill(void **state) {
    (void)state;
    const struct placement_block blocks[] = {
        {"time_embed", MIB(10)},      {"input_blocks.0", MIB(100)}, {"input_blocks.1", MIB(100)},
        {"input_blocks.2", MIB(200)}, {"input_blocks.3", MIB(200)}, {"middle_block", MIB(300)},
        {"output_blocks.0", MIB(200)}, {"output_blocks.1", MIB(200)}, {"output_blocks.2", MIB(100)},
        {"out", MIB(10)},
    };
    int n = 10;
    struct placement_budget b;
    placement_budget_init(&b, 0, 2);
    b.cuda[0] = MIB(800);
    b.cuda[1] = MIB(250);
    struct placement_plan pl;
    plan_ok(blocks, n, &b, NULL, &pl);
    assert_true(pl.streams);
    /* the most that cuda:0 can keep, by trying every subset */
    uint64_t best = brute_best_kept(blocks, n, b.cuda[0]);
    assert_int_equal(best, MIB(400)); /* by hand: middle_block + a 100 MiB block, staging 2 x 200 */
    assert_int_equal(pl.cuda_bytes[0], best);
    assert_int_equal(pl.staging, MIB(400));
    assert_int_equal(pl.cuda_bytes[0] + pl.staging, MIB(800));
    assert_int_equal(pl.home[5], 0); /* middle_block stays */
    assert_int_equal(pl.home[1], 0); /* the first of the 100 MiB blocks (ties in model order) */
    /* cuda:1 (250 MiB) before host memory, blocks in model order while they fit: time_embed 10,
     * input_blocks.1 100, output_blocks.2 100, out 10 = 220 MiB; the 200 MiB ones go to cpu */
    assert_int_equal(pl.cuda_bytes[1], MIB(220));
    assert_int_equal(pl.home[0], 1);
    assert_int_equal(pl.home[2], 1);
    assert_int_equal(pl.home[3], CPU);
    assert_int_equal(pl.home[8], 1);
    assert_int_equal(pl.cpu_bytes, MIB(800));
    assert_int_equal(pl.streamed_bytes, MIB(1020));
    placement_plan_free(&pl);

    /* other GPUs by free budget, most first: cuda:2 (300) then cuda:1 (200), then cpu */
    struct placement_block u[10];
    uniform(u, 10, MIB(100));
    placement_budget_init(&b, 0, 3);
    b.cuda[0] = MIB(500); /* keeps 3 blocks + 2 x 100 staging */
    b.cuda[1] = MIB(200);
    b.cuda[2] = MIB(300);
    plan_ok(u, 10, &b, NULL, &pl);
    const int want[10] = {0, 0, 0, 2, 2, 2, 1, 1, CPU, CPU};
    for (int i = 0; i < 10; i++) assert_int_equal(pl.home[i], want[i]);
    placement_plan_free(&pl);

    /* equal blocks: the kept ones are a prefix (contiguous, at no cost) */
    placement_budget_init(&b, 0, 1);
    b.cuda[0] = MIB(750); /* 5 x 100 + 200 staging = 700; 6 x 100 + 200 = 800 > 750 */
    plan_ok(u, 10, &b, NULL, &pl);
    for (int i = 0; i < 10; i++) assert_int_equal(pl.home[i], i < 5 ? 0 : CPU);
    assert_int_equal(pl.staging, MIB(200));
    placement_plan_free(&pl);

    /* same bytes kept either way: {a, b} (a prefix) or {c} (largest first); both stream a
     * 100 MiB block at most (staging 200), so the contiguous prefix is taken */
    const struct placement_block mixed[] = {
        {"a", MIB(50)}, {"b", MIB(50)}, {"c", MIB(100)}, {"d", MIB(100)}, {"e", MIB(100)}};
    placement_budget_init(&b, 0, 1);
    b.cuda[0] = MIB(300);
    assert_int_equal(brute_best_kept(mixed, 5, b.cuda[0]), MIB(100));
    plan_ok(mixed, 5, &b, NULL, &pl);
    for (int i = 0; i < 5; i++) assert_int_equal(pl.home[i], i < 2 ? 0 : CPU);
    assert_int_equal(pl.staging, MIB(200));
    placement_plan_free(&pl);

    /* computing on the CPU: everything in host memory, a string is ignored */
    placement_budget_init(&b, CPU, 2);
    b.cuda[0] = b.cuda[1] = GIB(1);
    plan_ok(u, 10, &b, "cuda:0,500mb;cuda:1,*", &pl);
    assert_int_equal(pl.cpu_bytes, MIB(1000));
    assert_false(pl.streams);
    placement_plan_free(&pl);
}

/* Random models and budgets: invariants always; automatic plans keep what brute force keeps
 * on every instance where greedy by size is known to be exact (all sizes powers of two), and
 * never claim more, and they fail exactly when no subset fits. */
static void test_plan_random(void **state) {
    (void)state;
    static char names[16][16];
    for (int round = 0; round < 3000; round++) {
        struct placement_block blocks[12];
        int n = 1 + (int)rnd(12);
        bool pow2 = rnd(2);
        for (int i = 0; i < n; i++) {
            snprintf(names[i], sizeof names[i], "k.%d", i);
            blocks[i] = (struct placement_block){names[i], pow2 ? (uint64_t)1 << rnd(6) : 1 + rnd(40)};
        }
        struct placement_budget b;
        int n_cuda = 1 + (int)rnd(3);
        placement_budget_init(&b, rnd(8) == 0 ? CPU : (int)rnd((uint64_t)n_cuda), n_cuda);
        for (int g = 0; g < n_cuda; g++) b.cuda[g] = rnd(300);
        if (rnd(3) == 0) b.cpu = rnd(300);

        /* automatic */
        struct placement_plan pl;
        struct err err = {0};
        int rc = placement_plan_make(blocks, n, &b, NULL, &pl, &err);
        if (rc == 0) {
            check_plan(blocks, n, &b, &pl);
            if (b.compute != CPU) {
                uint64_t best = brute_best_kept(blocks, n, b.cuda[b.compute]);
                assert_true(best != UINT64_MAX && pl.cuda_bytes[b.compute] <= best);
                if (pow2) assert_int_equal(pl.cuda_bytes[b.compute], best);
            }
            placement_plan_free(&pl);
        } else {
            assert_int_equal(rc, STATUS_ERR_OOM_DEVICE);
            assert_int_equal(err.code, rc);
            assert_non_null(strstr(err.msg, "bytes missing"));
            if (b.compute != CPU && b.cpu == PLACEMENT_UNLIMITED)
                assert_int_equal(brute_best_kept(blocks, n, b.cuda[b.compute]), UINT64_MAX);
        }

        /* a random explicit string over these devices */
        char text[256];
        size_t len = 0;
        bool used[4] = {0};
        uint32_t ppm_left = PLACEMENT_PPM;
        for (int k = 0, want = 1 + (int)rnd(4); k < want; k++) {
            int slot = (int)rnd((uint64_t)n_cuda + 1);
            if (used[slot]) continue;
            used[slot] = true;
            char dev[16];
            placement_device_str(slot == n_cuda ? CPU : slot, dev, sizeof dev);
            int kind = (int)rnd(3);
            if (kind == 0) len += (size_t)snprintf(text + len, sizeof text - len, "%s,%llub;", dev,
                                                   (unsigned long long)(1 + rnd(200)));
            else if (kind == 1 && ppm_left > 10000) {
                uint32_t pct = 1 + (uint32_t)rnd(ppm_left / 10000);
                ppm_left -= pct * 10000;
                len += (size_t)snprintf(text + len, sizeof text - len, "%s,%u%%;", dev, pct);
            } else len += (size_t)snprintf(text + len, sizeof text - len, "%s,*;", dev);
        }
        struct placement p = parse_ok(text);
        err_clear(&err);
        rc = placement_plan_make(blocks, n, &b, &p, &pl, &err);
        if (rc == 0) {
            check_plan(blocks, n, &b, &pl);
            if (b.compute != CPU) check_order(&p, &pl);
            placement_plan_free(&pl);
        } else {
            assert_true(rc == STATUS_ERR_OOM_DEVICE || rc == STATUS_ERR_RANGE);
            assert_int_equal(err.code, rc);
            assert_non_null(strstr(err.msg, "weights placement"));
        }
    }
}

static void test_plan_explicit_order(void **state) {
    (void)state;
    struct placement_block u[10];
    uniform(u, 10, MIB(100));
    struct placement_budget b;
    placement_budget_init(&b, 0, 2);
    b.cuda[0] = MIB(1000);
    b.cuda[1] = MIB(500);
    struct placement_plan pl;

    /* cuda:1 first, as written: b.0-2 there, the rest on cuda:0, which keeps 2 x 100 staging */
    plan_ok(u, 10, &b, "cuda:1,300mb;cuda:0,*;cpu,*", &pl);
    for (int i = 0; i < 10; i++) assert_int_equal(pl.home[i], i < 3 ? 1 : 0);
    assert_int_equal(pl.staging, MIB(200));
    assert_int_equal(pl.cpu_bytes, 0);
    placement_plan_free(&pl);

    /* a tighter cuda:0 (850): "*" there is 850 - 200 staging = 650, so 6 blocks, b.9 to cpu */
    b.cuda[0] = MIB(850);
    plan_ok(u, 10, &b, "cuda:1,300mb;cuda:0,*;cpu,*", &pl);
    const int want[10] = {1, 1, 1, 0, 0, 0, 0, 0, 0, CPU};
    for (int i = 0; i < 10; i++) assert_int_equal(pl.home[i], want[i]);
    placement_plan_free(&pl);

    /* a size that ends between blocks: 250mb holds 2 blocks of 100 */
    b.cuda[0] = MIB(1000);
    plan_ok(u, 10, &b, "cuda:0,250mb;cuda:1,*;cpu,*", &pl);
    for (int i = 0; i < 10; i++) assert_int_equal(pl.home[i], i < 2 ? 0 : i < 7 ? 1 : CPU);
    placement_plan_free(&pl);

    /* the computing GPU left out: everything streams, staging 2 x 100 there */
    plan_ok(u, 10, &b, "cpu,*", &pl);
    assert_int_equal(pl.cpu_bytes, MIB(1000));
    assert_int_equal(pl.n_streamed, 10);
    assert_int_equal(pl.staging, MIB(200));
    placement_plan_free(&pl);

    /* a single streamed block needs one staging buffer only */
    const struct placement_block three[] = {{"a", MIB(100)}, {"b", MIB(100)}, {"c", MIB(50)}};
    b.cuda[0] = MIB(300);
    plan_ok(three, 3, &b, "cuda:0,200mb;cpu,*", &pl);
    assert_int_equal(pl.home[2], CPU);
    assert_int_equal(pl.staging, MIB(50));
    assert_int_equal(pl.staging_block, MIB(50));
    placement_plan_free(&pl);
}

/* "*" on the computing GPU leaves room for the staging its own plan needs, which can push one
 * more block out (the fixed point); "*" elsewhere stops at the budget. */
static void test_plan_star(void **state) {
    (void)state;
    struct placement_block u[10];
    uniform(u, 10, MIB(100));
    struct placement_budget b;
    placement_budget_init(&b, 0, 2);
    b.cuda[0] = MIB(950);
    b.cuda[1] = MIB(350);
    struct placement_plan pl;
    /* by hand: k blocks kept need 100k + staging(10 - k): k = 9: 900 + 100 = 1000 > 950;
     * k = 8: 800 + 200 > 950; k = 7: 700 + 200 = 900 <= 950 */
    plan_ok(u, 10, &b, "cuda:0,*;cpu,*", &pl);
    assert_int_equal(pl.cuda_bytes[0], MIB(700));
    assert_int_equal(pl.staging, MIB(200));
    for (int i = 0; i < 10; i++) assert_int_equal(pl.home[i], i < 7 ? 0 : CPU);
    placement_plan_free(&pl);

    /* cuda:1's "*" clipped to its 350: 3 blocks */
    plan_ok(u, 10, &b, "cuda:1,*;cpu,*", &pl);
    assert_int_equal(pl.cuda_bytes[1], MIB(300));
    assert_int_equal(pl.cpu_bytes, MIB(700));
    assert_int_equal(pl.cuda_bytes[0], 0);
    placement_plan_free(&pl);
}

static void test_plan_percent(void **state) {
    (void)state;
    struct placement_block u[10];
    uniform(u, 10, MIB(100));
    struct placement_budget b;
    placement_budget_init(&b, 0, 2);
    b.cuda[0] = MIB(1000);
    b.cuda[1] = MIB(500);
    struct placement_plan pl;
    plan_ok(u, 10, &b, "cuda:0,60%;cuda:1,30%;cpu,10%", &pl);
    assert_int_equal(pl.cuda_bytes[0], MIB(600));
    assert_int_equal(pl.cuda_bytes[1], MIB(300));
    assert_int_equal(pl.cpu_bytes, MIB(100));
    placement_plan_free(&pl);

    /* shares end at the nearest block boundary: 50% of 3+3+4 = 5 -> boundary 6 (from 0, 3, 6, 10) */
    const struct placement_block odd[] = {{"a", MIB(3)}, {"b", MIB(3)}, {"c", MIB(4)}};
    plan_ok(odd, 3, &b, "cuda:1,50%;cpu,50%", &pl);
    assert_int_equal(pl.home[0], 1);
    assert_int_equal(pl.home[1], 1);
    assert_int_equal(pl.home[2], CPU);
    placement_plan_free(&pl);

    /* thirds of 6 blocks: 33.3333% of 600 is 199.9998 MiB -> 2 blocks; the rest covers all */
    plan_ok(u, 6, &b, "cuda:1,33.3333%;cpu,66.6667%", &pl);
    for (int i = 0; i < 6; i++) assert_int_equal(pl.home[i], i < 2 ? 1 : CPU);
    placement_plan_free(&pl);

    /* a share over the budget is an error, not clipped */
    plan_bad(u, 10, &b, "cuda:1,60%;cpu,*", STATUS_ERR_RANGE, "entry 1", "cuda:1", "600.00 MiB", "500.00 MiB", NULL);
    /* shares short of the model: the bytes missing */
    plan_bad(u, 10, &b, "cuda:0,50%;cuda:1,20%", STATUS_ERR_OOM_DEVICE, "314572800 bytes", "missing", "'b.7'", NULL);
}

static void test_plan_errors(void **state) {
    (void)state;
    struct placement_block u[11];
    for (int i = 0; i < 10; i++) u[i] = (struct placement_block){NAMES[i], MIB(100)};
    struct placement_budget b;
    placement_budget_init(&b, 0, 2);
    b.cuda[0] = MIB(1000);
    b.cuda[1] = MIB(500);

    /* the string holds 500 of 1000 MiB: 500 MiB = 524288000 bytes missing, from b.5 on */
    plan_bad(u, 10, &b, "cuda:0,300mb;cuda:1,200mb", STATUS_ERR_OOM_DEVICE, "cuda:0,300mb;cuda:1,200mb",
             "524288000 bytes", "missing", "'b.5'", "cpu,*", NULL);
    /* a size over the device's budget */
    plan_bad(u, 10, &b, "cuda:1,600mb;cpu,*", STATUS_ERR_RANGE, "entry 1", "cuda:1", "budget", NULL);
    /* a fixed amount on the computing GPU leaving no room for staging: 1000 + 100 > 1000 */
    u[10] = (struct placement_block){"b.10", MIB(100)};
    plan_bad(u, 11, &b, "cuda:0,1000mb;cpu,*", STATUS_ERR_RANGE, "entry 1", "staging", "104857600 bytes", NULL);
    /* a GPU that is not there */
    plan_bad(u, 10, &b, "cuda:3,1gb;cpu,*", STATUS_ERR_INVALID, "cuda:3", "cuda:0..cuda:1", NULL);

    /* automatic, host memory budget too small: cuda:0 (500) keeps 3 blocks, cpu 300 of the
     * other 7: 400 MiB = 419430400 bytes missing */
    placement_budget_init(&b, 0, 1);
    b.cuda[0] = MIB(500);
    b.cpu = MIB(300);
    plan_bad(u, 10, &b, NULL, STATUS_ERR_OOM_DEVICE, "419430400 bytes missing", NULL);
    /* automatic, a computing GPU that cannot even hold two staging buffers: 200 - 150 */
    b.cuda[0] = MIB(150);
    b.cpu = PLACEMENT_UNLIMITED;
    plan_bad(u, 10, &b, NULL, STATUS_ERR_OOM_DEVICE, "52428800 bytes missing", NULL);
    /* computing on the CPU with a host budget */
    placement_budget_init(&b, CPU, 0);
    b.cpu = MIB(900);
    plan_bad(u, 10, &b, NULL, STATUS_ERR_OOM_DEVICE, "104857600 bytes missing", NULL);

    /* arguments */
    struct placement_plan pl;
    struct err err = {0};
    placement_budget_init(&b, 2, 2);
    assert_int_equal(placement_plan_make(u, 10, &b, NULL, &pl, &err), STATUS_ERR_INVALID);
    assert_non_null(strstr(err.msg, "cuda:2"));
    placement_budget_init(&b, 0, 1);
    err_clear(&err);
    assert_int_equal(placement_plan_make(NULL, 3, &b, NULL, &pl, &err), STATUS_ERR_INVALID);
    struct placement bad = {.n = 1, .entries = {{.device = 70, .kind = PLACEMENT_AMOUNT_REST}}};
    err_clear(&err);
    assert_int_equal(placement_plan_make(u, 10, &b, &bad, &pl, &err), STATUS_ERR_INVALID);
}

/* ===== The log line ===== */

static void test_describe(void **state) {
    (void)state;
    const struct placement_block blocks[] = {
        {"time_embed", MIB(256)},      {"input_blocks.0", MIB(128)}, {"input_blocks.1", MIB(128)},
        {"input_blocks.2", MIB(128)},  {"input_blocks.3", MIB(128)}, {"input_blocks.4", MIB(128)},
        {"input_blocks.5", MIB(128)},  {"middle_block", MIB(512)},   {"output_blocks.0", MIB(256)},
        {"output_blocks.1", MIB(256)}, {"output_blocks.2", MIB(256)}, {"out", MIB(256)},
    };
    /* a plan written by hand */
    int home[12] = {0, 0, 0, 0, 0, 0, 0, 1, 0, 0, CPU, CPU};
    struct placement_plan pl = {.n_blocks = 12, .home = home, .compute = 0, .total = MIB(2560),
                                .cpu_bytes = MIB(512), .streams = true, .n_streamed = 3,
                                .streamed_bytes = MIB(1024), .staging_block = MIB(512), .staging = MIB(1024)};
    pl.cuda_bytes[0] = MIB(1536);
    pl.cuda_bytes[1] = MIB(512);
    const char *want = "cuda:0 1.50 GiB (9 blocks: time_embed, input_blocks.0-5, output_blocks.0-1); "
                       "cuda:1 0.50 GiB (1 block: middle_block); cpu 0.50 GiB (2 blocks: output_blocks.2, out); "
                       "streams 1.00 GiB per step (3 blocks), staging 1.00 GiB on cuda:0";
    char buf[512];
    size_t len = placement_plan_describe(&pl, blocks, buf, sizeof buf);
    assert_string_equal(buf, want);
    assert_int_equal(len, strlen(want));
    /* cut short: "..." at the end, the full length returned */
    char small[40];
    assert_int_equal(placement_plan_describe(&pl, blocks, small, sizeof small), strlen(want));
    assert_int_equal(strlen(small), sizeof small - 1);
    assert_string_equal(small + sizeof small - 4, "...");
    assert_memory_equal(small, want, sizeof small - 4);

    /* many unnumbered names: 8 runs, then "..." */
    static const char *const many[] = {"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"};
    struct placement_block mb[10];
    for (int i = 0; i < 10; i++) mb[i] = (struct placement_block){many[i], MIB(1)};
    struct placement_budget b;
    placement_budget_init(&b, 0, 1);
    b.cuda[0] = GIB(1);
    struct placement_plan real;
    plan_ok(mb, 10, &b, NULL, &real);
    placement_plan_describe(&real, mb, buf, sizeof buf);
    assert_string_equal(buf, "cuda:0 0.01 GiB (10 blocks: a, b, c, d, e, f, g, h, ...)");
    placement_plan_free(&real);

    /* numbered names broken by a gap or another prefix make separate runs */
    const struct placement_block gaps[] = {{"x.1", 1}, {"x.2", 1}, {"x.4", 1}, {"y.5", 1}, {"y.6", 1}};
    int h5[5] = {CPU, CPU, CPU, CPU, CPU};
    struct placement_plan g = {.n_blocks = 5, .home = h5, .compute = CPU, .total = 5, .cpu_bytes = 5};
    placement_plan_describe(&g, gaps, buf, sizeof buf);
    assert_string_equal(buf, "cpu 0.00 GiB (5 blocks: x.1-2, x.4, y.5-6)");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_forms),       cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_format_round_trip), cmocka_unit_test(test_plan_fits),
        cmocka_unit_test(test_plan_auto_spill),   cmocka_unit_test(test_plan_random),
        cmocka_unit_test(test_plan_explicit_order), cmocka_unit_test(test_plan_star),
        cmocka_unit_test(test_plan_percent),      cmocka_unit_test(test_plan_errors),
        cmocka_unit_test(test_describe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
