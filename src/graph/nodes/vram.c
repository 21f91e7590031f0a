/* graph/nodes/vram.c -- GPU memory nodes, as the VRAM-manager node pack that ComfyUI users know:
 * GPUMemoryReserve (budget by mode manual/auto/smart), GPUMemoryMonitor (one GPU's figures) and
 * GPUMemoryCleanup (scratch and unused models). Each returns a text report (STRING output, the
 * history's ui {"text": [report]} and the log).
 * Owns: a vram_monitor for the length of one run (opened and closed by each node).
 * Must not: touch another worker's engine: a node only acts on ctx->engine directly; other
 * devices are reached through the host interface (ctx->host, graph/exec.h), which sched/
 * implements by handing the work to their own workers.
 * Threads: the worker executing the prompt.
 *
 * BEHAVIOUR ON DEVICES. gpu_index is a CUDA ordinal; an invalid one falls back to GPU 0 with a
 * warning line. Without GPUs (CPU-only machine, no NVML/driver) every node still succeeds and
 * its report says "no GPU".
 * Reserve: with a host (kiln serve), the settings (mode, reserved, min_safe_reserve) become
 * the GPU's own until changed again or a restart, whichever device runs the node; that GPU's
 * worker computes its budget from them before each prompt. When the node runs on that GPU the
 * budget is also applied at once, for the rest of this prompt. Without a host (kiln run, unit
 * tests) only the running device's budget is set, for the rest of the prompt.
 * Cleanup: this worker's device is cleaned at once. With clear_all_gpus and a host, every other
 * device cleans up as POST /free does (idle ones at once and reported with what they freed,
 * waiting CLEANUP_WAIT_MS at most; busy ones after their current prompt, and the report says
 * so). Without a host, clear_all_gpus cannot reach other devices and the report says so. */
#include "base/log.h"
#include "base/mem.h"
#include "base/status.h"
#include "graph/engine.h"
#include "graph/exec.h"
#include "graph/registry.h"
#include "vram/budget.h"
#include "vram/monitor.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Test hook: where the monitor looks for NVML and the CUDA driver (NULL = the defaults).
 * Declared here only; tests declare it extern to name missing libraries. */
const struct vram_monitor_opts *graph_vram_monitor_opts;

/* Pure helper (tests): the reserve and budget for GPU figures g, with own_bytes of them being
 * this engine's weights (not protected by the reserve). Returns the budget; *reserve gets the
 * reserve. */
uint64_t graph_vram_reserve(const struct vram_gpu *g, uint64_t own_bytes, enum vram_mode mode, double reserved_gb,
                            double min_safe_gb, uint64_t *reserve);

uint64_t graph_vram_reserve(const struct vram_gpu *g, uint64_t own_bytes, enum vram_mode mode, double reserved_gb,
                            double min_safe_gb, uint64_t *reserve) {
    struct vram_budget b;
    vram_budget_init(&b, g->mem_total);
    b.used = g->mem_used > own_bytes ? g->mem_used - own_bytes : 0;
    b.mode = mode;
    b.reserved_gb = reserved_gb;
    b.min_safe_reserve_gb = min_safe_gb;
    *reserve = vram_budget_reserve(&b);
    return vram_budget_bytes(&b);
}

/* ===== Report text ===== */

struct report {
    char buf[4096];
    size_t len;
};

__attribute__((format(printf, 2, 3))) static void rep_line(struct report *r, const char *fmt, ...) {
    if (r->len + 1 >= sizeof r->buf) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(r->buf + r->len, sizeof r->buf - r->len, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    r->len += (size_t)n;
    if (r->len >= sizeof r->buf - 1) r->len = sizeof r->buf - 2;
    r->buf[r->len++] = '\n';
    r->buf[r->len] = '\0';
}

static double gb(uint64_t bytes) { return (double)bytes / (double)VRAM_GB; }

/* Strips the last newline, sets the STRING output and ui {"text": [report]}, logs it. */
static int rep_finish(struct report *r, struct node_run *ctx, struct value *out) {
    if (r->len && r->buf[r->len - 1] == '\n') r->buf[--r->len] = '\0';
    out[0] = (struct value){.kind = VALUE_STRING, .s = mem_strdup(r->buf)};
    json_t *text = json_array();
    json_array_append_new(text, json_string(r->buf));
    json_object_set_new(ctx->ui, "text", text);
    log_info("%s (node %s):\n%s", ctx->cls->name, ctx->node_id ? ctx->node_id : "?", r->buf);
    return 0;
}

static struct vram_monitor *open_monitor(struct err *err) {
    struct vram_monitor *m = vram_monitor_new(graph_vram_monitor_opts);
    if (!m) err_set(err, STATUS_ERR_NOMEM, "out of host memory opening the GPU monitor");
    return m;
}

static void rep_no_gpu(struct report *r, const struct vram_monitor *m) {
    const char *notice = vram_monitor_notice(m);
    rep_line(r, "No GPU: this machine shows no GPU to kiln");
    if (notice) rep_line(r, "(%s)", notice);
}

/* Pure helper (tests): gpu_index checked against the `count` GPUs there are. Returns it when
 * valid, else 0 with a warning line in warn[n] ("" when valid). */
int graph_vram_pick_gpu(int64_t gpu_index, int count, char *warn, size_t n);

int graph_vram_pick_gpu(int64_t gpu_index, int count, char *warn, size_t n) {
    if (n) warn[0] = '\0';
    if (gpu_index >= 0 && gpu_index < count) return (int)gpu_index;
    snprintf(warn, n, "⚠ Invalid gpu_index %lld (%d GPU%s, valid 0..%d): falling back to GPU 0", (long long)gpu_index,
             count, count == 1 ? "" : "s", count - 1);
    return 0;
}

static int pick_gpu(struct report *r, int64_t gpu_index, int count) {
    char warn[160];
    int idx = graph_vram_pick_gpu(gpu_index, count, warn, sizeof warn);
    if (warn[0]) {
        rep_line(r, "%s", warn);
        log_warn("GPU memory node: %s", warn);
    }
    return idx;
}

static void rep_gpu_info(struct report *r, const struct vram_gpu *g) {
    double pct = g->mem_total ? 100.0 * (double)g->mem_used / (double)g->mem_total : 0.0;
    rep_line(r, "=== GPU %d status ===", g->index);
    rep_line(r, "Name: %s", g->name[0] ? g->name : "unknown");
    rep_line(r, "Total memory: %.2f GB", gb(g->mem_total));
    rep_line(r, "Used: %.2f GB (%.1f%%)", gb(g->mem_used), pct);
    rep_line(r, "Free: %.2f GB", gb(g->mem_free));
    if (g->temperature_c >= 0)
        rep_line(r, "Temperature: %d°C", g->temperature_c);
    else
        rep_line(r, "Temperature: unknown");
    if (g->utilization_pct >= 0)
        rep_line(r, "GPU utilisation: %d%%", g->utilization_pct);
    else
        rep_line(r, "GPU utilisation: unknown");
}

static void clean_engine(struct engine *e, bool unload) {
    engine_release_scratch(e);
    if (unload) engine_unload_unused(e);
}

/* ===== GPUMemoryReserve ===== */

static const char *const mode_options[] = {"manual", "auto", "smart", NULL};

static const struct node_input reserve_inputs[] = {
    {.name = "reserved", .kind = NODE_INPUT_FLOAT, .flags = NODE_IN_DEFAULT | NODE_IN_MIN | NODE_IN_MAX | NODE_IN_STEP,
     .float_default = VRAM_DEFAULT_RESERVED_GB, .float_min = 0.0, .float_max = 1024.0, .float_step = 0.1,
     .tooltip = "GB: the reserve in manual mode; the buffer above the memory used by others in auto and smart."},
    {.name = "mode", .kind = NODE_INPUT_COMBO, .flags = NODE_IN_DEFAULT, .options = mode_options,
     .combo_default = "smart", .tooltip = "manual: fixed reserve; auto: used + buffer; smart: by the free share."},
    {.name = "gpu_index", .kind = NODE_INPUT_INT, .flags = NODE_IN_DEFAULT | NODE_IN_MIN | NODE_IN_MAX | NODE_IN_STEP,
     .int_default = 0, .int_min = 0, .int_max = 64, .int_step = 1,
     .tooltip = "CUDA index of the GPU; an index with no GPU falls back to GPU 0."},
    {.name = "min_safe_reserve", .kind = NODE_INPUT_FLOAT,
     .flags = NODE_IN_DEFAULT | NODE_IN_MIN | NODE_IN_MAX | NODE_IN_STEP,
     .float_default = VRAM_DEFAULT_MIN_SAFE_RESERVE_GB, .float_min = 0.0, .float_max = 1024.0, .float_step = 0.1,
     .tooltip = "GB never reserved less (within 90% of the GPU's memory)."},
    {.name = "clear_memory", .kind = NODE_INPUT_BOOLEAN, .flags = NODE_IN_DEFAULT, .bool_default = false,
     .tooltip = "Release the activation memory and unload unused models first."},
    {.name = "show_gpu_info", .kind = NODE_INPUT_BOOLEAN, .flags = NODE_IN_DEFAULT, .bool_default = true,
     .tooltip = "Add the GPU's figures to the report."},
    NODE_INPUTS_END,
};

static const struct node_output report_outputs[] = {
    {.type = "STRING", .name = "report", .tooltip = "The report (also shown in the history and logged)."},
    NODE_OUTPUTS_END,
};

static int run_reserve(struct node_run *ctx, const struct value *in, struct value *out, struct err *err) {
    struct engine *e = ctx->engine;
    enum vram_mode mode;
    int rc = vram_mode_parse(in[1].s, &mode, err);
    if (rc) return rc;
    struct vram_monitor *m = open_monitor(err);
    if (!m) return STATUS_ERR_NOMEM;
    struct report r = {.len = 0};
    rep_line(&r, "=== GPU Memory Reserve (%s mode) ===", vram_mode_name(mode));
    if (in[4].b && e) {
        clean_engine(e, true);
        rep_line(&r, "Memory cleared on this worker's device (scratch released, unused models unloaded)");
    }
    int count = vram_monitor_count(m);
    if (count <= 0) {
        rep_no_gpu(&r, m);
        rep_line(&r, "No reserve set: the setting applies to GPUs only");
        vram_monitor_free(m);
        return rep_finish(&r, ctx, out);
    }
    int idx = pick_gpu(&r, in[2].i, count);
    struct vram_gpu g;
    rc = vram_monitor_query(m, idx, &g, err);
    vram_monitor_free(m);
    if (rc) return rc;
    bool mine = e && e->cuda_index == idx;
    uint64_t reserve;
    uint64_t budget = graph_vram_reserve(&g, mine ? engine_weight_bytes(e) : 0, mode, in[0].f, in[3].f, &reserve);
    if (in[5].b) rep_gpu_info(&r, &g);
    rep_line(&r, "Reserved: %.2f GB of %.2f GB (min safe %.2f GB)", gb(reserve), gb(g.mem_total), in[3].f);
    rep_line(&r, "Budget for kiln's models: %.2f GB", gb(budget));
    if (mine) engine_set_budget(e, budget);
    if (ctx->host && ctx->host->set_reserve) {
        struct err herr = {0};
        if (ctx->host->set_reserve(ctx->host_user, idx, (int)mode, in[0].f, in[3].f, &herr) == 0) {
            rep_line(&r, "✓ Applied to GPU %d%s: %s mode, reserved %.2f GB, min safe %.2f GB, kept for the "
                         "following prompts until changed (or a restart)",
                     idx, mine ? " (this worker's device, at once)" : " (from its next prompt on)",
                     vram_mode_name(mode), in[0].f, in[3].f);
        } else {
            rep_line(&r, "Not applied to GPU %d: %s", idx, herr.msg);
            if (mine) rep_line(&r, "✓ Budget applied to GPU %d for the rest of this prompt", idx);
        }
    } else if (mine) {
        rep_line(&r, "✓ Budget applied to GPU %d (this worker's device)", idx);
    } else if (e && e->cuda_index >= 0) {
        rep_line(&r, "Not applied: this prompt runs on GPU %d; pin it to GPU %d to apply the setting there",
                 e->cuda_index, idx);
    } else {
        rep_line(&r, "Not applied: this prompt runs on the CPU device; pin it to GPU %d to apply the setting", idx);
    }
    return rep_finish(&r, ctx, out);
}

const struct node_class NODE_GPUMemoryReserve = {
    .name = "GPUMemoryReserve",
    .display_name = "GPU Memory Reserve",
    .category = "utils/gpu",
    .description = "Reserves GPU memory for others (manual, auto or smart) and sets the budget of kiln's models "
                   "on the GPU named by gpu_index, for the following prompts too.",
    .output_node = true,
    .not_idempotent = true,
    .required = reserve_inputs,
    .outputs = report_outputs,
    .run = run_reserve,
};

/* ===== GPUMemoryMonitor ===== */

static const struct node_input monitor_inputs[] = {
    {.name = "gpu_index", .kind = NODE_INPUT_INT, .flags = NODE_IN_DEFAULT | NODE_IN_MIN | NODE_IN_MAX | NODE_IN_STEP,
     .int_default = 0, .int_min = 0, .int_max = 64, .int_step = 1,
     .tooltip = "CUDA index of the GPU; an index with no GPU falls back to GPU 0."},
    NODE_INPUTS_END,
};

static int run_monitor(struct node_run *ctx, const struct value *in, struct value *out, struct err *err) {
    struct vram_monitor *m = open_monitor(err);
    if (!m) return STATUS_ERR_NOMEM;
    struct report r = {.len = 0};
    int count = vram_monitor_count(m);
    if (count <= 0) {
        rep_no_gpu(&r, m);
        vram_monitor_free(m);
        return rep_finish(&r, ctx, out);
    }
    int idx = pick_gpu(&r, in[0].i, count);
    struct vram_gpu g;
    int rc = vram_monitor_query(m, idx, &g, err);
    vram_monitor_free(m);
    if (rc) return rc;
    rep_gpu_info(&r, &g);
    return rep_finish(&r, ctx, out);
}

const struct node_class NODE_GPUMemoryMonitor = {
    .name = "GPUMemoryMonitor",
    .display_name = "GPU Memory Monitor",
    .category = "utils/gpu",
    .description = "Reports a GPU's name, memory (total, used, free), temperature and utilisation.",
    .output_node = true,
    .not_idempotent = true,
    .required = monitor_inputs,
    .outputs = report_outputs,
    .run = run_monitor,
};

/* ===== GPUMemoryCleanup ===== */

static const char *const unit_options[] = {"GB", "MB", NULL};

static const struct node_input cleanup_inputs[] = {
    {.name = "clear_all_gpus", .kind = NODE_INPUT_BOOLEAN, .flags = NODE_IN_DEFAULT, .bool_default = false,
     .tooltip = "Every GPU: the others clean up as POST /free does (a busy one after its current prompt)."},
    {.name = "aggressive", .kind = NODE_INPUT_BOOLEAN, .flags = NODE_IN_DEFAULT, .bool_default = false,
     .tooltip = "Also unload the models no workflow value references."},
    {.name = "unit", .kind = NODE_INPUT_COMBO, .flags = NODE_IN_DEFAULT, .options = unit_options,
     .combo_default = "GB", .tooltip = "Unit of the amounts in the report."},
    NODE_INPUTS_END,
};

#define CLEANUP_WAIT_MS 5000 /* how long clear_all_gpus waits for idle devices, in ms */

/* The label of another device in the report: "GPU 1" or "CPU device 2". */
static void device_label(const struct node_host_clean *c, char *buf, size_t n) {
    if (c->cuda_index >= 0) snprintf(buf, n, "GPU %d", c->cuda_index);
    else snprintf(buf, n, "CPU device %d", c->device);
}

static int run_cleanup(struct node_run *ctx, const struct value *in, struct value *out, struct err *err) {
    struct engine *e = ctx->engine;
    bool all = in[0].b, aggressive = in[1].b;
    bool mb = strcmp(in[2].s, "MB") == 0;
    double div = mb ? (double)(1u << 20) : (double)VRAM_GB;
    const char *unit = mb ? "MB" : "GB";
    struct report r = {.len = 0};
    rep_line(&r, "=== GPU Memory Cleanup Report ===");
    /* kiln's own bytes on the device: the activation buffer and the resident weights */
    uint64_t own_before = e ? e->scratch.size + engine_weight_bytes(e) : 0;
    struct vram_monitor *m = NULL;
    struct vram_gpu before = {0}, after = {0};
    bool measured = false;
    if (e && e->cuda_index >= 0) {
        m = open_monitor(err);
        if (!m) return STATUS_ERR_NOMEM;
        struct err qerr = {0};
        measured = vram_monitor_query(m, e->cuda_index, &before, &qerr) == 0;
    }
    if (e) clean_engine(e, aggressive);
    uint64_t own_after = e ? e->scratch.size + engine_weight_bytes(e) : 0;
    uint64_t own_freed = own_before > own_after ? own_before - own_after : 0;
    uint64_t freed = own_freed;
    if (measured) {
        struct err qerr = {0};
        if (vram_monitor_query(m, e->cuda_index, &after, &qerr) == 0)
            freed = after.mem_free > before.mem_free ? after.mem_free - before.mem_free : 0;
    }
    vram_monitor_free(m);
    if (e && e->cuda_index >= 0)
        rep_line(&r, "GPU %d: freed %.2f%s%s (kiln's scratch and models: %.2f%s)", e->cuda_index,
                 (double)freed / div, unit, measured ? "" : " (by kiln's counts: no monitor figures)",
                 (double)own_freed / div, unit);
    else if (e)
        rep_line(&r, "CPU device (no GPU runs this prompt): freed %.2f%s of kiln's memory", (double)freed / div, unit);
    uint64_t total = freed;
    int queued = 0;
    if (all && ctx->host && ctx->host->cleanup) {
        struct node_host_clean others[64];
        int n = ctx->host->cleanup(ctx->host_user, aggressive, CLEANUP_WAIT_MS, others,
                                   (int)(sizeof others / sizeof others[0]));
        for (int i = 0; i < n; i++) {
            const struct node_host_clean *c = &others[i];
            char label[48];
            device_label(c, label, sizeof label);
            switch (c->state) {
            case NODE_HOST_CLEAN_DONE:
                total += c->freed;
                if (c->cuda_index >= 0)
                    rep_line(&r, "%s: freed %.2f%s%s (kiln's scratch and models: %.2f%s)", label,
                             (double)c->freed / div, unit, c->measured ? "" : " (by kiln's counts: no monitor figures)",
                             (double)c->own_freed / div, unit);
                else
                    rep_line(&r, "%s: freed %.2f%s of kiln's memory", label, (double)c->freed / div, unit);
                break;
            case NODE_HOST_CLEAN_QUEUED:
                queued++;
                rep_line(&r, "%s: queued after its current prompt (not counted)", label);
                break;
            case NODE_HOST_CLEAN_TIMEOUT:
                queued++;
                rep_line(&r, "%s: not done within %d s; it cleans up before its next prompt (not counted)", label,
                         CLEANUP_WAIT_MS / 1000);
                break;
            case NODE_HOST_CLEAN_DOWN:
                rep_line(&r, "%s: not running (the device could not be opened)", label);
                break;
            }
        }
        if (n == 0) rep_line(&r, "clear_all_gpus: no other device");
    }
    rep_line(&r, "Total freed: %.2f%s%s", (double)total / div, unit, queued ? " (queued devices not counted)" : "");
    if (all && !(ctx->host && ctx->host->cleanup))
        rep_line(&r, "clear_all_gpus: only this worker's device was cleaned; other GPUs' memory belongs to their "
                     "own workers (run the node on each GPU, or under kiln serve)");
    if (aggressive)
        rep_line(&r, "Aggressive cleanup done (unused models unloaded)");
    rep_line(&r, "✓ Cleanup done");
    return rep_finish(&r, ctx, out);
}

const struct node_class NODE_GPUMemoryCleanup = {
    .name = "GPUMemoryCleanup",
    .display_name = "GPU Memory Cleanup",
    .category = "utils/gpu",
    .description = "Releases kiln's activation memory on the device running the prompt, or on every device "
                   "(clear_all_gpus; aggressive: also unloads unused models) and reports what was freed.",
    .output_node = true,
    .not_idempotent = true,
    .required = cleanup_inputs,
    .outputs = report_outputs,
    .run = run_cleanup,
};
