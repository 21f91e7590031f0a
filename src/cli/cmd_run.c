/* cli/cmd_run.c -- `kiln run`: validate and run one API-format workflow on the CPU.
 * Owns: the engine and backend of this one run, the terminal progress display.
 * Threads: main thread only.
 * Exit codes: 0 success, 1 the workflow failed (validation or execution), 2 usage. */
#include "base/clock.h"
#include "base/log.h"
#include "base/mem.h"
#include "base/status.h"
#include "cli/cmd.h"
#include "graph/engine.h"
#include "graph/exec.h"
#include "graph/json.h"
#include "graph/prompt.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ===== Progress display ===== */

struct run_view {
    bool tty;                 /* stderr is a terminal: redraw one bar line */
    const struct graph_prompt *prompt;
    const char *output_dir;
    const char *temp_dir;
    char node[256];           /* node running now */
    double node_start;        /* when it started (clock_now) */
    double step_start;        /* when its first progress step was seen */
    bool bar_open;            /* a bar line is on screen without a newline */
    int saved;                /* files written */
};

static const char *node_class_of(const struct run_view *v, const char *id) {
    int i = graph_prompt_find(v->prompt, id);
    return i >= 0 ? v->prompt->nodes[i].cls->name : "?";
}

static void close_bar(struct run_view *v) {
    if (v->bar_open) fputc('\n', stderr);
    v->bar_open = false;
}

static void on_executing(void *user, const char *node_id) {
    struct run_view *v = user;
    close_bar(v);
    snprintf(v->node, sizeof v->node, "%s", node_id);
    v->node_start = clock_now();
    v->step_start = 0;
    fprintf(stderr, "[%s] %s\n", node_id, node_class_of(v, node_id));
}

static void on_progress(void *user, const char *node_id, int64_t value, int64_t max) {
    struct run_view *v = user;
    double now = clock_now();
    if (v->step_start == 0) v->step_start = v->node_start;
    double el = now - v->step_start;
    double rate = el > 0 ? (double)value / el : 0; /* it/s */
    double left = rate > 0 ? (double)(max - value) / rate : 0;
    if (v->tty) {
        int width = 30, fill = max > 0 ? (int)(width * value / max) : 0;
        char bar[64];
        for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
        bar[width] = 0;
        fprintf(stderr, "\r  [%s] %lld/%lld  %.2f it/s  %.1f s left ", bar, (long long)value, (long long)max, rate, left);
        v->bar_open = true;
        if (value >= max) close_bar(v);
    } else {
        fprintf(stderr, "  step %lld/%lld  %.2f it/s  %.1f s left\n", (long long)value, (long long)max, rate, left);
    }
}

static void on_executed(void *user, const char *node_id, const json_t *ui) {
    struct run_view *v = user;
    close_bar(v);
    json_t *images = json_object_get(ui, "images");
    size_t i;
    json_t *img;
    json_array_foreach(images, i, img) {
        const char *type = json_string_value(json_object_get(img, "type"));
        const char *dir = type && strcmp(type, "temp") == 0 ? v->temp_dir : v->output_dir;
        const char *sub = json_string_value(json_object_get(img, "subfolder"));
        const char *name = json_string_value(json_object_get(img, "filename"));
        printf("%s/%s%s%s\n", dir, sub && *sub ? sub : "", sub && *sub ? "/" : "", name ? name : "?");
        fflush(stdout);
        v->saved++;
    }
}

/* ===== Reading the workflow ===== */

static int read_file(const char *path, char **out, size_t *len, struct err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return err_set(err, STATUS_ERR_IO, "cannot open workflow %s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = mem_alloc(cap);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) buf = mem_realloc(buf, cap *= 2);
    }
    bool bad = ferror(f);
    int e = errno;
    fclose(f);
    if (bad) {
        mem_free(buf);
        return err_set(err, STATUS_ERR_IO, "cannot read workflow %s: %s", path, strerror(e));
    }
    *out = buf;
    *len = n;
    return 0;
}

/* Prints a ComfyUI validation error body as readable lines. */
static void print_validation_error(const json_t *body) {
    const json_t *e = json_object_get(body, "error");
    const char *message = json_string_value(json_object_get(e, "message"));
    fprintf(stderr, "kiln: invalid workflow: %s", message);
    const char *details = json_string_value(json_object_get(e, "details"));
    if (details && message && strcmp(details, message) == 0) details = NULL; /* "No prompt provided" twice */
    fprintf(stderr, "%s%s\n", details && *details ? ": " : "", details && *details ? details : "");
    const char *id;
    json_t *ne;
    json_object_foreach((json_t *)json_object_get(body, "node_errors"), id, ne) {
        size_t i;
        json_t *er;
        json_array_foreach(json_object_get(ne, "errors"), i, er) {
            fprintf(stderr, "  node %s (%s): %s: %s\n", id, json_string_value(json_object_get(ne, "class_type")),
                    json_string_value(json_object_get(er, "message")),
                    json_string_value(json_object_get(er, "details")));
        }
    }
}

static void ensure_dir(const char *path) {
    if (mkdir(path, 0755) != 0 && errno != EEXIST) log_warn("cannot create %s: %s", path, strerror(errno));
}

/* ===== Command ===== */

static int usage(void) {
    fprintf(stderr,
            "usage: kiln run [--models-dir D] [--output-dir D] [--input-dir D] [--temp-dir D]\n"
            "                [--tokenizer D] [--threads N] WORKFLOW.json\n"
            "Runs an API-format ComfyUI workflow (the JSON a client POSTs as \"prompt\", or a body\n"
            "with a \"prompt\" key) on the CPU and prints the path of every file it saves.\n");
    return 2;
}

int cmd_run(int argc, char **argv) {
    const char *models = "models", *output = "output", *input = "input", *temp = "temp", *tok = NULL, *wf = NULL;
    int threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **dst = !strcmp(a, "--models-dir") ? &models
                           : !strcmp(a, "--output-dir") ? &output
                           : !strcmp(a, "--input-dir")  ? &input
                           : !strcmp(a, "--temp-dir")   ? &temp
                           : !strcmp(a, "--tokenizer")  ? &tok
                                                        : NULL;
        if (dst || !strcmp(a, "--threads")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "kiln run: %s needs a value\n", a);
                return usage();
            }
            if (dst) *dst = argv[++i];
            else threads = atoi(argv[++i]);
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            return 0;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "kiln run: unknown option %s\n", a);
            return usage();
        } else if (!wf) {
            wf = a;
        } else {
            fprintf(stderr, "kiln run: more than one workflow given\n");
            return usage();
        }
    }
    if (!wf) return usage();

    struct err err = {0};
    char *text = NULL;
    size_t len = 0;
    json_t *body = NULL, *prompt = NULL, *error_body = NULL;
    struct graph_prompt *p = NULL;
    int rc = read_file(wf, &text, &len, &err);
    if (!rc) {
        rc = graph_json_loads(text, len, &body, &err);
        if (rc) err_prefix(&err, "workflow %s is not valid JSON", wf);
    }
    if (!rc) rc = graph_prompt_from_body(body, true, &prompt, &error_body, &err);
    struct graph_paths paths = {.models = models, .input = input, .output = output, .temp = temp};
    if (!rc) rc = graph_prompt_validate(prompt, &paths, json_object_get(body, "partial_execution_targets"), &p,
                                        &error_body, &err);
    mem_free(text);
    if (rc) {
        if (error_body) print_validation_error(error_body);
        else fprintf(stderr, "kiln: %s\n", err.msg);
        json_decref(error_body);
        json_decref(prompt);
        json_decref(body);
        return 1;
    }
    if (json_object_size(p->node_errors) > 0) {
        json_t *partial = json_pack("{s:{s:s,s:s},s:O}", "error", "message", "some outputs failed validation",
                                    "details", "", "node_errors", p->node_errors);
        print_validation_error(partial);
        json_decref(partial);
    }

    ensure_dir(output);
    ensure_dir(temp);
    struct backend *be = backend_cpu_new(threads);
    if (!be) {
        fprintf(stderr, "kiln: out of host memory\n");
        return 1;
    }
    struct engine engine;
    engine_init(&engine, be, models, tok);
    struct run_view view = {.tty = isatty(2), .prompt = p, .output_dir = output, .temp_dir = temp};
    struct exec_events ev = {.user = &view, .executing = on_executing, .progress = on_progress, .executed = on_executed};
    const json_t *extra = json_object_get(body, "extra_data");
    struct exec_opts opts = {.paths = &paths, .extra_data = extra, .engine = &engine, .events = &ev};
    struct exec_report rep;
    double t0 = clock_now();
    exec_run(p, &opts, &rep);
    close_bar(&view);
    int status = rep.status;
    if (status == 0) {
        fprintf(stderr, "kiln: done in %.2f s, %d file%s saved\n", clock_now() - t0, view.saved,
                view.saved == 1 ? "" : "s");
    } else {
        fprintf(stderr, "kiln: node %s (%s) failed: %s\n", rep.error.node_id, rep.error.node_type,
                rep.error.exception_message);
    }
    exec_report_deinit(&rep);
    engine_deinit(&engine);
    backend_free(be);
    graph_prompt_free(p);
    json_decref(prompt);
    json_decref(body);
    return status == 0 ? 0 : 1;
}
