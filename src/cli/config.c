/* cli/config.c -- `kiln serve`'s settings: flags > environment > .env file > defaults.
 * Owns: the flag table, the .env parser, validation and the device-count rules of the
 * launcher variables (CUDA_VISIBLE_DEVICES, COMFY_MULTI_GPU_SCHED, COMFY_NUM_GPUS).
 * Must not: open sockets or create devices (cmd_serve.c does, from the struct config).
 * Threads: main thread only, before other threads exist (it calls setenv). */
#include "cli/config.h"

#include "base/base.h"
#include "base/mem.h"
#include "base/status.h"
#include "vram/placement.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

/* ===== The settings table ===== */

static const struct {
    const char *name;                /* --print-config name */
    const char *env;                 /* environment / .env variable */
} KEYS[CONFIG_KEY_COUNT] = {
#define XX(id, name, env) [CONFIG_KEY_##id] = {name, env},
    CONFIG_KEY_MAP(XX)
#undef XX
};

/* Settings for which an empty value means something (CUDA_VISIBLE_DEVICES= is "no GPU");
 * for every other one an empty variable counts as unset, so `KILN_PORT=` in .env is harmless. */
static bool empty_is_a_value(enum config_key k) { return k == CONFIG_KEY_CUDA_VISIBLE; }

/* ===== The flags ===== */

enum flag_arg {
    FLAG_ARG_NONE,                   /* a switch: stores flag.value */
    FLAG_ARG_ONE,                    /* takes the next argument (or --flag=VALUE) */
    FLAG_ARG_OPTIONAL,               /* takes the next argument unless it starts with '-'; bare: flag.value */
};

enum flag_how {
    FLAG_HOW_PLAIN,
    FLAG_HOW_TEMP_SUBDIR,            /* ComfyUI's --temp-directory D means D/temp */
    FLAG_HOW_SINGLE,                 /* --single N: exactly one GPU index */
    FLAG_HOW_HELP,
    FLAG_HOW_PRINT_CONFIG,
    FLAG_HOW_ENV_FILE,
};

struct flag_def {
    const char *name;
    int key;                         /* enum config_key, or -1 for the actions */
    enum flag_arg arg;
    const char *value;               /* FLAG_ARG_NONE: the value set; FLAG_ARG_OPTIONAL: the bare value */
    enum flag_how how;
    const char *metavar;             /* for the usage text; NULL = not listed there (an alias) */
    const char *help;
};

static const struct flag_def FLAGS[] = {
    {"--listen", CONFIG_KEY_LISTEN, FLAG_ARG_OPTIONAL, "0.0.0.0", FLAG_HOW_PLAIN, "[IP[,IP...]]",
     "addresses to listen on (default 127.0.0.1; bare: 0.0.0.0, every interface)"},
    {"--port", CONFIG_KEY_PORT, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, "PORT", "main port (default 8188; 0 = any free port)"},
    {"--gpu-ports", CONFIG_KEY_GPU_PORTS, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, "BASE",
     "device i also listens on BASE+i; requests there go to device i (default off)"},
    {"--cpu-workers", CONFIG_KEY_CPU_WORKERS, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, "N",
     "CPU devices, each with its own queue and worker (default 1; 0 beside GPUs)"},
    {"--threads", CONFIG_KEY_THREADS, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, "N",
     "threads per CPU device (default: cores / devices)"},
    {"--metrics-every", CONFIG_KEY_METRICS_EVERY, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, "N",
     "log each device's metrics line every N finished prompts (default 10, 0 = never)"},
    {"--db", CONFIG_KEY_DB, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, "PATH",
     "SQLite file keeping the queue and history across restarts (default BASE/kiln.db; '' = none)"},
    {"--history-max", CONFIG_KEY_HISTORY_MAX, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, "N",
     "history entries kept, in memory and in the database (default 10000)"},
    {"--cpu", CONFIG_KEY_CPU, FLAG_ARG_NONE, "1", FLAG_HOW_PLAIN, "", "CPU devices only (the default in a build without CUDA)"},
    {"--gpus", CONFIG_KEY_GPUS, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, "LIST",
     "use these GPUs, in this order (e.g. 1,0; default every GPU); needs a CUDA build"},
    {"--single", CONFIG_KEY_GPUS, FLAG_ARG_ONE, NULL, FLAG_HOW_SINGLE, "N", "use GPU N only; needs a CUDA build"},
    {"--cuda-device", CONFIG_KEY_GPUS, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, "LIST", "ComfyUI's name for --gpus"},
    {"--base-directory", CONFIG_KEY_BASE_DIR, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, "DIR",
     "parent of models/, input/, output/ and temp/ (default: the current directory)"},
    {"--models-dir", CONFIG_KEY_MODELS_DIR, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, "DIR",
     "models folder (checkpoints/ inside; default models)"},
    {"--input-directory", CONFIG_KEY_INPUT_DIR, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, "DIR", "uploads and LoadImage (default input)"},
    {"--input-dir", CONFIG_KEY_INPUT_DIR, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, NULL, NULL},
    {"--output-directory", CONFIG_KEY_OUTPUT_DIR, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, "DIR", "SaveImage files (default output)"},
    {"--output-dir", CONFIG_KEY_OUTPUT_DIR, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, NULL, NULL},
    {"--temp-directory", CONFIG_KEY_TEMP_DIR, FLAG_ARG_ONE, NULL, FLAG_HOW_TEMP_SUBDIR, "DIR",
     "PreviewImage files go to DIR/temp, as in ComfyUI (default temp)"},
    {"--temp-dir", CONFIG_KEY_TEMP_DIR, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, "DIR", "the temp folder itself"},
    {"--tokenizer", CONFIG_KEY_TOKENIZER, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, "DIR",
     "CLIP vocab.json + merges.txt (default: next to the checkpoint, models/tokenizers/clip-l)"},
    {"--enable-cors-header", CONFIG_KEY_CORS, FLAG_ARG_OPTIONAL, "*", FLAG_HOW_PLAIN, "[ORIGIN]",
     "send CORS headers for ORIGIN (bare: *)"},
    {"--max-upload-size", CONFIG_KEY_MAX_UPLOAD, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, "MB",
     "largest accepted upload, in MiB (default 100)"},
    {"--max-nodes", CONFIG_KEY_MAX_NODES, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, "N",
     "nodes in one prompt (default 1000; more: 400)"},
    {"--max-pixels", CONFIG_KEY_MAX_PIXELS, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, "N",
     "width*height*batch a prompt asks for, in all (default 268435456)"},
    {"--max-batch", CONFIG_KEY_MAX_BATCH, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, "N", "batch size of one node (default 64)"},
    {"--max-ws", CONFIG_KEY_MAX_WS, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, "N",
     "open WebSockets (default 256; more: 503)"},
    {"--api-token", CONFIG_KEY_API_TOKEN, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, "TOKEN",
     "every route needs 'Authorization: Bearer TOKEN' (default off)"},
    {"--disable-metadata", CONFIG_KEY_DISABLE_METADATA, FLAG_ARG_NONE, "1", FLAG_HOW_PLAIN, "",
     "save PNGs without the prompt/workflow text chunks"},
    {"--force-fp32", CONFIG_KEY_FORCE_FP32, FLAG_ARG_NONE, "1", FLAG_HOW_PLAIN, "",
     "GPUs store and compute weights in fp32 (default: fp16 UNet and text encoder, bf16 VAE)"},
    {"--verbose", CONFIG_KEY_LOG, FLAG_ARG_OPTIONAL, "debug", FLAG_HOW_PLAIN, "[LEVEL]",
     "log level: debug, info, warning, error (bare: debug)"},
    {"--log", CONFIG_KEY_LOG, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, NULL, NULL},
    {"--log-file", CONFIG_KEY_LOG_FILE, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, "PATH",
     "also write the log to PATH, rotated by size (default: stderr only)"},
    {"--log-max-size", CONFIG_KEY_LOG_MAX_SIZE, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, "MB",
     "rotate the log file past this size, in MiB (default 64)"},
    {"--log-keep", CONFIG_KEY_LOG_KEEP, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, "N", "rotated log files kept (default 5)"},
    {"--front-end-root", CONFIG_KEY_FRONT_END_ROOT, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, "DIR",
     "serve this frontend build at / instead of kiln's console"},
    {"--weights-placement", CONFIG_KEY_WEIGHTS_PLACEMENT, FLAG_ARG_ONE, NULL, FLAG_HOW_PLAIN, "ALLOC",
     "where model blocks live, e.g. cuda:0,8gb;cuda:1,*;cpu,* (default: automatic)"},
    {"--env-file", -1, FLAG_ARG_ONE, NULL, FLAG_HOW_ENV_FILE, "PATH", "read settings from PATH (default ./.env)"},
    {"--print-config", -1, FLAG_ARG_NONE, NULL, FLAG_HOW_PRINT_CONFIG, "",
     "print every setting and where it came from, then exit"},
    {"--help", -1, FLAG_ARG_NONE, NULL, FLAG_HOW_HELP, "", "this text"},
    {"-h", -1, FLAG_ARG_NONE, NULL, FLAG_HOW_HELP, NULL, NULL},
};

/* ComfyUI flags that scripts pass and that mean nothing to kiln: accepted, with a note. */
static const struct {
    const char *name;
    enum flag_arg arg;
    const char *why;
} IGNORED[] = {
    {"--highvram", FLAG_ARG_NONE, "kiln manages device memory itself"},
    {"--normalvram", FLAG_ARG_NONE, "kiln manages device memory itself"},
    {"--lowvram", FLAG_ARG_NONE, "kiln manages device memory itself"},
    {"--novram", FLAG_ARG_NONE, "kiln manages device memory itself"},
    {"--gpu-only", FLAG_ARG_NONE, "kiln manages device memory itself"},
    {"--disable-smart-memory", FLAG_ARG_NONE, "kiln manages device memory itself"},
    {"--reserve-vram", FLAG_ARG_ONE, "kiln manages device memory itself"},
    {"--default-device", FLAG_ARG_ONE, "use --gpus to order devices"},
    {"--force-fp16", FLAG_ARG_NONE, "kiln picks dtypes itself"},
    {"--force-fp32", FLAG_ARG_NONE, "kiln picks dtypes itself"},
    {"--fp16-vae", FLAG_ARG_NONE, "kiln picks dtypes itself"},
    {"--fp32-vae", FLAG_ARG_NONE, "kiln picks dtypes itself"},
    {"--bf16-vae", FLAG_ARG_NONE, "kiln picks dtypes itself"},
    {"--cpu-vae", FLAG_ARG_NONE, "kiln picks devices per prompt"},
    {"--fp16-unet", FLAG_ARG_NONE, "kiln picks dtypes itself"},
    {"--bf16-unet", FLAG_ARG_NONE, "kiln picks dtypes itself"},
    {"--preview-method", FLAG_ARG_ONE, "kiln sends no previews yet"},
    {"--preview-size", FLAG_ARG_ONE, "kiln sends no previews yet"},
    {"--cache-classic", FLAG_ARG_NONE, "classic caching is what kiln does"},
    {"--use-split-cross-attention", FLAG_ARG_NONE, "kiln has its own attention kernels"},
    {"--use-quad-cross-attention", FLAG_ARG_NONE, "kiln has its own attention kernels"},
    {"--use-pytorch-cross-attention", FLAG_ARG_NONE, "kiln has its own attention kernels"},
    {"--disable-xformers", FLAG_ARG_NONE, "kiln has its own attention kernels"},
    {"--dont-upcast-attention", FLAG_ARG_NONE, "kiln has its own attention kernels"},
    {"--auto-launch", FLAG_ARG_NONE, "kiln opens no browser"},
    {"--disable-auto-launch", FLAG_ARG_NONE, "kiln opens no browser"},
    {"--dont-print-server", FLAG_ARG_NONE, "kiln logs to stderr"},
    {"--log-stdout", FLAG_ARG_NONE, "kiln logs to stderr"},
    {"--disable-all-custom-nodes", FLAG_ARG_NONE, "kiln has no custom nodes"},
    {"--disable-api-nodes", FLAG_ARG_NONE, "kiln has no API nodes"},
    {"--front-end-version", FLAG_ARG_ONE, "kiln serves no frontend"},
    {"--front-end-root", FLAG_ARG_ONE, "kiln serves no frontend"},
    {"--enable-compress-response-body", FLAG_ARG_NONE, "replies are not compressed"},
    {"--deterministic", FLAG_ARG_NONE, "kiln's CPU results are deterministic already"},
    {"--disable-cuda-malloc", FLAG_ARG_NONE, "kiln has its own allocator"},
    {"--cuda-malloc", FLAG_ARG_NONE, "kiln has its own allocator"},
    {"--windows-standalone-build", FLAG_ARG_NONE, "not a Windows build"},
};

/* ComfyUI flags kiln refuses, because accepting them would silently do something else. */
static const struct {
    const char *name;
    const char *why;
} REFUSED[] = {
    {"--tls-keyfile", "kiln serves plain HTTP; put a TLS proxy (nginx, caddy) in front of it"},
    {"--tls-certfile", "kiln serves plain HTTP; put a TLS proxy (nginx, caddy) in front of it"},
    {"--multi-user", "kiln has no per-user storage"},
    {"--cache-none", "kiln always caches node outputs between prompts (classic mode)"},
    {"--cache-lru", "kiln always caches node outputs between prompts (classic mode)"},
};

/* ===== Small helpers ===== */

static const struct flag_def *find_flag(const char *name);

static void add_note(struct config *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_note(struct config *c, const char *fmt, ...) {
    if (c->n_notes >= CONFIG_MAX_NOTES) return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    c->notes[c->n_notes++] = mem_strdup(buf);
}

static void set_value(struct config *c, enum config_key k, const char *text, enum config_source src,
                      const char *origin) {
    struct config_value *v = &c->values[k];
    mem_free(v->text);
    v->text = text ? mem_strdup(text) : NULL;
    v->source = src;
    snprintf(v->origin, sizeof v->origin, "%s", origin);
}

/* "--port 99999", "KILN_PORT=99999 (environment)" or "KILN_PORT=99999 (/x/.env:3)": how an
 * error message names a value. */
static const char *describe(const struct config *c, enum config_key k, char *buf, size_t n) {
    const struct config_value *v = &c->values[k];
    switch (v->source) {
    case CONFIG_SOURCE_FLAG: {
        const struct flag_def *fl = find_flag(v->origin);
        if (fl && fl->arg == FLAG_ARG_NONE) snprintf(buf, n, "%s", v->origin); /* a switch: no value to show */
        else snprintf(buf, n, "%s %s", v->origin, v->text ? v->text : "");
        break;
    }
    case CONFIG_SOURCE_ENV: snprintf(buf, n, "%s=%s (environment)", KEYS[k].env, v->text ? v->text : ""); break;
    case CONFIG_SOURCE_ENV_FILE: snprintf(buf, n, "%s=%s (%s)", KEYS[k].env, v->text ? v->text : "", v->origin); break;
    default: snprintf(buf, n, "%s (default)", KEYS[k].name); break;
    }
    return buf;
}

static int bad(const struct config *c, enum config_key k, struct err *err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int bad(const struct config *c, enum config_key k, struct err *err, const char *fmt, ...) {
    char what[512], why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    return err_set(err, STATUS_ERR_INVALID, "%s: %s", describe(c, k, what, sizeof what), why);
}

/* Parses a whole decimal integer in [lo, hi]; false on anything else ("8e3", "12abc", ""). */
static bool parse_int(const char *s, long lo, long hi, long *out) {
    if (!s || !*s || isspace((unsigned char)*s)) return false;
    errno = 0;
    char *end;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

static bool parse_bool(const char *s, bool *out) {
    static const char *const T[] = {"1", "true", "yes", "on"}, *const F[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < ARRAY_LEN(T); i++) {
        if (!strcasecmp(s, T[i])) return *out = true, true;
        if (!strcasecmp(s, F[i])) return *out = false, true;
    }
    return false;
}

static bool parse_level(const char *s, enum log_level *out) {
    static const struct {
        const char *name;
        enum log_level level;
    } L[] = {{"debug", LOG_LEVEL_DEBUG}, {"info", LOG_LEVEL_INFO},   {"warn", LOG_LEVEL_WARN},
             {"warning", LOG_LEVEL_WARN}, {"error", LOG_LEVEL_ERROR}, {"critical", LOG_LEVEL_ERROR}};
    for (size_t i = 0; i < ARRAY_LEN(L); i++)
        if (!strcasecmp(s, L[i].name)) return *out = L[i].level, true;
    return false;
}

static bool is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* base + "/" + leaf, or leaf alone when base is empty. mem_alloc'd. */
static char *join(const char *base, const char *leaf) {
    if (!base || !*base) return mem_strdup(leaf);
    size_t n = strlen(base) + strlen(leaf) + 2;
    char *s = mem_alloc(n);
    snprintf(s, n, "%s%s%s", base, base[strlen(base) - 1] == '/' ? "" : "/", leaf);
    return s;
}

/* ===== .env files ===== */

struct env_entry {
    char *key;
    char *value;
    int line;
};

struct env_file {
    struct env_entry *items;
    int n, cap;
};

static void env_file_deinit(struct env_file *f) {
    for (int i = 0; i < f->n; i++) {
        mem_free(f->items[i].key);
        mem_free(f->items[i].value);
    }
    mem_free(f->items);
}

/* The last entry for key (later lines override earlier ones), or NULL. */
static const struct env_entry *env_file_get(const struct env_file *f, const char *key) {
    for (int i = f->n - 1; i >= 0; i--)
        if (!strcmp(f->items[i].key, key)) return &f->items[i];
    return NULL;
}

/* Parses one line into key/value. Returns false with why filled for a malformed line.
 * Syntax: [export] KEY=VALUE; VALUE is '...' (literal), "..." (\\ \" \n \t \$ escapes) or
 * bare text up to a " #" comment, trimmed. No ${VAR} expansion, no multi-line values. */
static bool env_parse_line(char *s, char **key, char **value, char *why, size_t n) {
    while (isspace((unsigned char)*s)) s++;
    if (!strncmp(s, "export", 6) && isspace((unsigned char)s[6])) {
        s += 6;
        while (isspace((unsigned char)*s)) s++;
    }
    char *k = s;
    if (!(isalpha((unsigned char)*s) || *s == '_')) {
        snprintf(why, n, "expected KEY=VALUE");
        return false;
    }
    while (isalnum((unsigned char)*s) || *s == '_') s++;
    char *kend = s;
    while (*s == ' ' || *s == '\t') s++;
    if (*s != '=') {
        snprintf(why, n, "expected '=' after %.*s", (int)(kend - k), k);
        return false;
    }
    *kend = 0;
    s++;
    while (*s == ' ' || *s == '\t') s++;
    char *v = s, *vend;
    if (*s == '\'' || *s == '"') {
        char q = *s++;
        v = s;
        char *w = s; /* unescape in place */
        while (*s && *s != q) {
            if (q == '"' && *s == '\\' && s[1]) {
                s++;
                *w++ = *s == 'n' ? '\n' : *s == 't' ? '\t' : *s;
                s++;
            } else {
                *w++ = *s++;
            }
        }
        if (*s != q) {
            snprintf(why, n, "unterminated %c quote", q);
            return false;
        }
        vend = w;
        s++;
        while (*s == ' ' || *s == '\t') s++;
        if (*s && *s != '#') {
            snprintf(why, n, "text after the closing quote");
            return false;
        }
    } else {
        while (*s && !(*s == '#' && (s == v || s[-1] == ' ' || s[-1] == '\t'))) s++;
        vend = s;
        while (vend > v && isspace((unsigned char)vend[-1])) vend--;
    }
    *vend = 0;
    *key = k;
    *value = v;
    return true;
}

static int env_file_read(const char *path, bool must_exist, struct env_file *out, bool *found, struct err *err) {
    *found = false;
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT && !must_exist) return 0;
        return err_set(err, STATUS_ERR_IO, "cannot read the settings file %s: %s", path, strerror(errno));
    }
    *found = true;
    char line[8192];
    int lineno = 0, rc = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        size_t len = strlen(line);
        if (len == sizeof line - 1 && line[len - 1] != '\n' && !feof(f)) {
            rc = err_set(err, STATUS_ERR_INVALID, "%s:%d: line longer than %zu bytes", path, lineno, sizeof line - 2);
            break;
        }
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        char *s = line;
        while (isspace((unsigned char)*s)) s++;
        if (!*s || *s == '#') continue;
        char *key, *value, why[128], shown[sizeof line];
        snprintf(shown, sizeof shown, "%s", s); /* env_parse_line cuts s up */
        if (!env_parse_line(s, &key, &value, why, sizeof why)) {
            rc = err_set(err, STATUS_ERR_INVALID, "%s:%d: %s (in '%s')", path, lineno, why, shown);
            break;
        }
        if (out->n == out->cap) {
            out->cap = out->cap ? out->cap * 2 : 16;
            out->items = mem_realloc(out->items, (size_t)out->cap * sizeof *out->items);
        }
        out->items[out->n++] = (struct env_entry){mem_strdup(key), mem_strdup(value), lineno};
    }
    if (!rc && ferror(f)) rc = err_set(err, STATUS_ERR_IO, "cannot read the settings file %s: %s", path, strerror(errno));
    fclose(f);
    return rc;
}

/* The fuzz hook of config.h: env_file_read of an explicit file, then nothing applied. */
int config__env_file_check(const char *path, int *n_entries, struct err *err) {
    struct env_file ef = {0};
    bool found;
    int rc = env_file_read(path, true, &ef, &found, err);
    if (n_entries) *n_entries = ef.n;
    env_file_deinit(&ef);
    return rc;
}

/* ===== Flags ===== */

static const struct flag_def *find_flag(const char *name) {
    for (size_t i = 0; i < ARRAY_LEN(FLAGS); i++)
        if (!strcmp(FLAGS[i].name, name)) return &FLAGS[i];
    return NULL;
}

/* Reads argv into c->values (source FLAG) and the actions; env_file_flag gets --env-file. */
static int parse_flags(struct config *c, int argc, char **argv, char **env_file_flag, struct err *err) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-' || !a[1])
            return err_set(err, STATUS_ERR_INVALID, "unexpected argument '%s' (kiln serve takes only options)", a);
        char name[128];
        const char *inline_value = NULL;
        const char *eq = a[1] == '-' ? strchr(a, '=') : NULL;
        size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
        snprintf(name, sizeof name, "%.*s", (int)MIN(nlen, sizeof name - 1), a);
        if (eq) inline_value = eq + 1;

        const struct flag_def *fl = find_flag(name);
        if (!fl) {
            for (size_t j = 0; j < ARRAY_LEN(REFUSED); j++)
                if (!strcmp(REFUSED[j].name, name))
                    return err_set(err, STATUS_ERR_INVALID, "%s is not supported: %s", name, REFUSED[j].why);
            for (size_t j = 0; j < ARRAY_LEN(IGNORED); j++) {
                if (strcmp(IGNORED[j].name, name)) continue;
                if (IGNORED[j].arg == FLAG_ARG_ONE && !inline_value) {
                    if (i + 1 >= argc) return err_set(err, STATUS_ERR_INVALID, "%s needs a value", name);
                    i++;
                }
                add_note(c, "%s ignored: %s", name, IGNORED[j].why);
                goto next;
            }
            return err_set(err, STATUS_ERR_INVALID, "unknown option %s (kiln serve --help lists them)", name);
        }

        const char *value = fl->value;
        switch (fl->arg) {
        case FLAG_ARG_NONE:
            if (inline_value) return err_set(err, STATUS_ERR_INVALID, "%s takes no value (got '%s')", name, inline_value);
            break;
        case FLAG_ARG_ONE:
            if (inline_value) value = inline_value;
            else if (i + 1 < argc) value = argv[++i];
            else return err_set(err, STATUS_ERR_INVALID, "%s needs a value", name);
            break;
        case FLAG_ARG_OPTIONAL:
            if (inline_value) value = inline_value;
            else if (i + 1 < argc && argv[i + 1][0] != '-') value = argv[++i];
            break;
        }

        switch (fl->how) {
        case FLAG_HOW_HELP: c->help = true; break;
        case FLAG_HOW_PRINT_CONFIG: c->print_config = true; break;
        case FLAG_HOW_ENV_FILE:
            mem_free(*env_file_flag);
            *env_file_flag = mem_strdup(value);
            break;
        case FLAG_HOW_TEMP_SUBDIR: {
            if (!*value) return err_set(err, STATUS_ERR_INVALID, "%s needs a folder", name);
            char *dir = join(value, "temp");
            set_value(c, (enum config_key)fl->key, dir, CONFIG_SOURCE_FLAG, name);
            mem_free(dir);
            break;
        }
        case FLAG_HOW_SINGLE: {
            long v;
            if (!parse_int(value, 0, 63, &v))
                return err_set(err, STATUS_ERR_INVALID, "--single %s: expected one GPU index (0-63)", value);
            set_value(c, (enum config_key)fl->key, value, CONFIG_SOURCE_FLAG, name);
            break;
        }
        case FLAG_HOW_PLAIN: set_value(c, (enum config_key)fl->key, value, CONFIG_SOURCE_FLAG, name); break;
        }
    next:;
    }
    return 0;
}

/* ===== Typed values ===== */

/* Comma list of addresses: IPv4, IPv6 (brackets allowed) or "localhost". */
static int parse_listen(struct config *c, const char *text, struct err *err) {
    char *copy = mem_strdup(text), *save = NULL;
    int rc = 0;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (isspace((unsigned char)*tok)) tok++;
        size_t n = strlen(tok);
        while (n && isspace((unsigned char)tok[n - 1])) tok[--n] = 0;
        if (n >= 2 && tok[0] == '[' && tok[n - 1] == ']') {
            tok[n - 1] = 0;
            tok++;
        }
        unsigned char buf[16];
        bool ok = !strcmp(tok, "localhost") || inet_pton(AF_INET, tok, buf) == 1 || inet_pton(AF_INET6, tok, buf) == 1;
        if (!ok) {
            rc = bad(c, CONFIG_KEY_LISTEN, err, "'%s' is not an IP address (e.g. 127.0.0.1, 0.0.0.0, ::1)", tok);
            break;
        }
        for (int i = 0; i < c->n_listen; i++)
            if (!strcmp(c->listen[i], tok)) rc = bad(c, CONFIG_KEY_LISTEN, err, "%s is listed twice", tok);
        if (rc) break;
        if (c->n_listen == CONFIG_MAX_LISTEN) {
            rc = bad(c, CONFIG_KEY_LISTEN, err, "at most %d addresses", CONFIG_MAX_LISTEN);
            break;
        }
        c->listen[c->n_listen++] = mem_strdup(tok);
    }
    if (!rc && c->n_listen == 0) rc = bad(c, CONFIG_KEY_LISTEN, err, "no address given");
    mem_free(copy);
    return rc;
}

/* Comma list of distinct GPU indices. */
static int parse_gpus(struct config *c, const char *text, struct err *err) {
    char *copy = mem_strdup(text), *save = NULL;
    int rc = 0;
    c->n_gpus = 0;
    for (char *tok = strtok_r(copy, ",", &save); tok && !rc; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ') tok++;
        size_t n = strlen(tok);
        while (n && tok[n - 1] == ' ') tok[--n] = 0;
        long v;
        if (!parse_int(tok, 0, 63, &v)) {
            rc = bad(c, CONFIG_KEY_GPUS, err, "'%s' is not a GPU index (0-63); expected a list like 0,1", tok);
        } else if (c->n_gpus == CONFIG_MAX_DEVICES) {
            rc = bad(c, CONFIG_KEY_GPUS, err, "at most %d GPUs", CONFIG_MAX_DEVICES);
        } else {
            for (int i = 0; i < c->n_gpus; i++)
                if (c->gpus[i] == v) rc = bad(c, CONFIG_KEY_GPUS, err, "GPU %ld is listed twice", v);
            c->gpus[c->n_gpus++] = (int)v;
        }
    }
    if (!rc && c->n_gpus == 0) rc = bad(c, CONFIG_KEY_GPUS, err, "no GPU index given");
    mem_free(copy);
    return rc;
}

static int int_setting(struct config *c, enum config_key k, long lo, long hi, long dflt, const char *what, int *out,
                       struct err *err) {
    const char *t = c->values[k].text;
    long v = dflt;
    if (t && !parse_int(t, lo, hi, &v)) return bad(c, k, err, "expected %s (%ld-%ld)", what, lo, hi);
    *out = (int)v;
    return 0;
}

static int bool_setting(struct config *c, enum config_key k, bool *out, struct err *err) {
    const char *t = c->values[k].text;
    if (t && !parse_bool(t, out)) return bad(c, k, err, "expected 1/0, true/false, yes/no or on/off");
    return 0;
}

/* A folder: its own setting, else base_dir/leaf. */
static char *dir_setting(const struct config *c, enum config_key k, const char *leaf) {
    const char *t = c->values[k].text;
    return t ? mem_strdup(t) : join(c->base_dir, leaf);
}

/* ===== Modes and devices ===== */

/* Picks the mode from --cpu / --gpus / CUDA_VISIBLE_DEVICES, then the CPU device count from
 * --cpu-workers and the launcher variables (COMFY_NUM_GPUS, COMFY_MULTI_GPU_SCHED). */
static int resolve_devices(struct config *c, struct err *err) {
    bool cpu = false;
    int rc = bool_setting(c, CONFIG_KEY_CPU, &cpu, err);
    if (rc) return rc;
    const struct config_value *vc = &c->values[CONFIG_KEY_CPU], *vg = &c->values[CONFIG_KEY_GPUS];
    bool gpus = vg->text != NULL;
    if (gpus && (rc = parse_gpus(c, vg->text, err))) return rc;
    if (cpu && gpus && vc->source == vg->source) {
        char a[512], b[512];
        return err_set(err, STATUS_ERR_INVALID, "%s and %s contradict each other: pick CPU or GPU mode",
                       describe(c, CONFIG_KEY_CPU, a, sizeof a), describe(c, CONFIG_KEY_GPUS, b, sizeof b));
    }
    const struct config_value *vis = &c->values[CONFIG_KEY_CUDA_VISIBLE];
    if (gpus && (!cpu || vg->source > vc->source)) {
        c->mode = CONFIG_MODE_GPU;
        c->gpus_explicit = true;
        snprintf(c->mode_reason, sizeof c->mode_reason, "%s %s", vg->origin, vg->text);
        if (cpu) add_note(c, "%s ignored: %s %s has priority", vc->origin, vg->origin, vg->text);
    } else if (cpu) {
        c->mode = CONFIG_MODE_CPU;
        snprintf(c->mode_reason, sizeof c->mode_reason, "%s", vc->source == CONFIG_SOURCE_FLAG ? "--cpu" : "KILN_CPU");
        if (gpus) add_note(c, "%s %s ignored: %s has priority", vg->origin, vg->text, c->mode_reason);
    } else if (vis->text && (!*vis->text || !strcmp(vis->text, "-1"))) {
        c->mode = CONFIG_MODE_CPU;
        snprintf(c->mode_reason, sizeof c->mode_reason, *vis->text ? "CUDA_VISIBLE_DEVICES=%s" : "CUDA_VISIBLE_DEVICES is empty",
                 vis->text);
    } else {
#ifdef KILN_HAVE_CUDA
        c->mode = CONFIG_MODE_GPU; /* every visible GPU (n_gpus = 0); config_pick_gpus falls back to CPU without one */
        snprintf(c->mode_reason, sizeof c->mode_reason, "%s", vis->text ? "CUDA_VISIBLE_DEVICES" : "every visible GPU");
#else
        c->mode = CONFIG_MODE_CPU;
        snprintf(c->mode_reason, sizeof c->mode_reason, "this build has no GPU backend");
        if (vis->text) add_note(c, "CUDA_VISIBLE_DEVICES=%s ignored: this build has no GPU backend", vis->text);
#endif
    }

    long v;
    const struct config_value *vn = &c->values[CONFIG_KEY_NUM_GPUS], *vm = &c->values[CONFIG_KEY_MULTI_SCHED];
    if (vn->text) {
        if (!parse_int(vn->text, 1, CONFIG_MAX_DEVICES, &v))
            return bad(c, CONFIG_KEY_NUM_GPUS, err, "expected a device count (1-%d)", CONFIG_MAX_DEVICES);
        c->comfy_num_gpus = (int)v;
    }
    if (vm->text) {
        bool on;
        if (!parse_bool(vm->text, &on))
            return bad(c, CONFIG_KEY_MULTI_SCHED, err, "expected 1 (one worker per device) or 0 (one worker)");
        c->multi_gpu_sched = on;
    }

    if ((rc = int_setting(c, CONFIG_KEY_CPU_WORKERS, 1, CONFIG_MAX_DEVICES, 1, "a CPU device count", &c->cpu_workers,
                          err)))
        return rc;
    struct config_value *vw = &c->values[CONFIG_KEY_CPU_WORKERS];
    if (c->mode == CONFIG_MODE_CPU) {
        /* The launcher variables count GPUs; with CPU devices only they count CPU devices,
         * unless kiln's own --cpu-workers / KILN_CPU_WORKERS says how many. */
        if (vw->text) {
            if (c->multi_gpu_sched == 0 && c->cpu_workers > 1)
                add_note(c, "COMFY_MULTI_GPU_SCHED=0 ignored: %s %d asks for %d devices", vw->origin, c->cpu_workers,
                         c->cpu_workers);
            if (c->comfy_num_gpus && c->comfy_num_gpus != c->cpu_workers)
                add_note(c, "COMFY_NUM_GPUS=%d ignored: %s %d is kiln's own setting", c->comfy_num_gpus, vw->origin,
                         c->cpu_workers);
        } else if (c->multi_gpu_sched == 0) {
            c->cpu_workers = 1;
            vw->source = vm->source;
            snprintf(vw->origin, sizeof vw->origin, "COMFY_MULTI_GPU_SCHED=0");
            add_note(c, "COMFY_MULTI_GPU_SCHED=0: one device, one worker%s",
                     c->comfy_num_gpus > 1 ? " (COMFY_NUM_GPUS ignored)" : "");
        } else if (c->comfy_num_gpus) {
            c->cpu_workers = c->comfy_num_gpus;
            vw->source = vn->source;
            snprintf(vw->origin, sizeof vw->origin, "COMFY_NUM_GPUS");
            add_note(c, "COMFY_NUM_GPUS=%d: CPU mode, so %d CPU device%s, one queue and worker each", c->comfy_num_gpus,
                     c->comfy_num_gpus, c->comfy_num_gpus == 1 ? "" : "s");
        }
    } else if (!vw->text) {
        c->cpu_workers = 0; /* GPU mode: CPU devices only when asked for, after the GPUs */
    }
    return 0;
}

int config_pick_gpus(struct config *c, int n_visible, struct err *err) {
    if (c->mode != CONFIG_MODE_GPU) return 0;
    const char *vis = c->values[CONFIG_KEY_CUDA_VISIBLE].text;
    char seen[160];
    snprintf(seen, sizeof seen, "%d CUDA device%s visible%s%s", n_visible, n_visible == 1 ? "" : "s",
             vis ? ", CUDA_VISIBLE_DEVICES=" : "", vis ? vis : "");
    if (c->gpus_explicit) {
        if (n_visible == 0)
            return err_set(err, STATUS_ERR_NOT_FOUND, "%s asks for GPUs, but no CUDA device is visible (%s)",
                           c->mode_reason, seen);
        for (int i = 0; i < c->n_gpus; i++)
            if (c->gpus[i] >= n_visible)
                return bad(c, CONFIG_KEY_GPUS, err, "GPU %d does not exist (%s; GPUs are numbered from 0)", c->gpus[i],
                           seen);
    } else {
        if (n_visible == 0) { /* "every GPU" and there is none: CPU devices */
            c->mode = CONFIG_MODE_CPU;
            snprintf(c->mode_reason, sizeof c->mode_reason, "no CUDA device found%s%s", vis ? ": CUDA_VISIBLE_DEVICES=" : "",
                     vis ? vis : "");
            if (c->cpu_workers < 1) c->cpu_workers = c->comfy_num_gpus > 0 && c->multi_gpu_sched != 0 ? c->comfy_num_gpus : 1;
            return 0;
        }
        c->n_gpus = MIN(n_visible, CONFIG_MAX_DEVICES);
        for (int i = 0; i < c->n_gpus; i++) c->gpus[i] = i;
    }
    if (c->multi_gpu_sched == 0 && c->n_gpus > 1) {
        add_note(c, "COMFY_MULTI_GPU_SCHED=0: one worker, on GPU %d%s", c->gpus[0],
                 c->comfy_num_gpus > 1 ? " (COMFY_NUM_GPUS ignored)" : "");
        c->n_gpus = 1;
    } else if (c->comfy_num_gpus > 0 && c->comfy_num_gpus < c->n_gpus) {
        add_note(c, "COMFY_NUM_GPUS=%d: the first %d of %d GPUs", c->comfy_num_gpus, c->comfy_num_gpus, c->n_gpus);
        c->n_gpus = c->comfy_num_gpus;
    } else if (c->comfy_num_gpus > c->n_gpus) {
        add_note(c, "COMFY_NUM_GPUS=%d: only %d GPU%s available", c->comfy_num_gpus, c->n_gpus, c->n_gpus == 1 ? "" : "s");
    }
    if (c->n_gpus + c->cpu_workers > CONFIG_MAX_DEVICES)
        return bad(c, CONFIG_KEY_CPU_WORKERS, err, "%d GPUs and %d CPU devices exceed %d devices", c->n_gpus,
                   c->cpu_workers, CONFIG_MAX_DEVICES);
    return 0;
}

/* ===== Loading ===== */

void config_init(struct config *c) {
    memset(c, 0, sizeof *c);
    c->port = CONFIG_DEFAULT_PORT;
    c->cpu_workers = 1;
    c->multi_gpu_sched = -1;
    c->log_level = LOG_LEVEL_INFO;
    c->metrics_every = CONFIG_DEFAULT_METRICS_EVERY;
    c->history_max = CONFIG_DEFAULT_HISTORY_MAX;
    c->max_upload_size = (uint64_t)(CONFIG_DEFAULT_UPLOAD_MB * 1024 * 1024);
    c->max_nodes = CONFIG_DEFAULT_MAX_NODES;
    c->max_pixels = CONFIG_DEFAULT_MAX_PIXELS;
    c->max_batch = CONFIG_DEFAULT_MAX_BATCH;
    c->max_ws = CONFIG_DEFAULT_MAX_WS;
    c->log_max_size = (uint64_t)CONFIG_DEFAULT_LOG_MAX_MB * 1024 * 1024;
    c->log_keep = CONFIG_DEFAULT_LOG_KEEP;
    for (int k = 0; k < CONFIG_KEY_COUNT; k++) snprintf(c->values[k].origin, sizeof c->values[k].origin, "default");
}

void config_deinit(struct config *c) {
    if (!c) return;
    for (int i = 0; i < c->n_listen; i++) mem_free(c->listen[i]);
    mem_free(c->cors_origin);
    mem_free(c->api_token);
    mem_free(c->base_dir);
    mem_free(c->models_dir);
    mem_free(c->input_dir);
    mem_free(c->output_dir);
    mem_free(c->db_path);
    mem_free(c->temp_dir);
    mem_free(c->tokenizer_dir);
    mem_free(c->log_file);
    mem_free(c->front_end_root);
    mem_free(c->weights_placement);
    for (int k = 0; k < CONFIG_KEY_COUNT; k++) mem_free(c->values[k].text);
    mem_free(c->env_file);
    for (int i = 0; i < c->n_notes; i++) mem_free(c->notes[i]);
    memset(c, 0, sizeof *c);
}

/* Every typed field from c->values. */
static int validate(struct config *c, struct err *err) {
    int rc;
    const char *t;

    /* network */
    if ((rc = parse_listen(c, c->values[CONFIG_KEY_LISTEN].text ? c->values[CONFIG_KEY_LISTEN].text : "127.0.0.1",
                           err)))
        return rc;
    if ((rc = int_setting(c, CONFIG_KEY_PORT, 0, 65535, CONFIG_DEFAULT_PORT, "a port number, 0 = any free port",
                         &c->port, err)))
        return rc;
    t = c->values[CONFIG_KEY_GPU_PORTS].text;
    if (t && (!strcasecmp(t, "off") || !strcmp(t, "0"))) c->gpu_ports = 0;
    else if ((rc = int_setting(c, CONFIG_KEY_GPU_PORTS, 1, 65535, 0, "a base port number, or off", &c->gpu_ports, err)))
        return rc;
    if ((t = c->values[CONFIG_KEY_CORS].text)) {
        for (const char *p = t; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f || *p == ' ')
                return bad(c, CONFIG_KEY_CORS, err, "an origin has no spaces or control characters");
        c->cors_origin = mem_strdup(t);
    }
    if ((t = c->values[CONFIG_KEY_MAX_UPLOAD].text)) {
        char *end;
        errno = 0;
        double mb = strtod(t, &end);
        if (errno || end == t || *end || !isfinite(mb) || mb <= 0 || mb > 1024.0 * 1024.0)
            return bad(c, CONFIG_KEY_MAX_UPLOAD, err, "expected a size in MiB (> 0, at most 1048576)");
        c->max_upload_size = (uint64_t)llround(mb * 1024.0 * 1024.0);
        if (c->max_upload_size == 0) return bad(c, CONFIG_KEY_MAX_UPLOAD, err, "less than one byte");
    }

    /* limits and access */
    if ((rc = int_setting(c, CONFIG_KEY_MAX_NODES, 1, 1000000, CONFIG_DEFAULT_MAX_NODES, "a node count", &c->max_nodes,
                          err)))
        return rc;
    if ((t = c->values[CONFIG_KEY_MAX_PIXELS].text)) {
        errno = 0;
        char *end;
        long long v = strtoll(t, &end, 10);
        if (errno || end == t || *end || isspace((unsigned char)*t) || v < 1 || v > (1ll << 50))
            return bad(c, CONFIG_KEY_MAX_PIXELS, err, "expected a pixel count (1-%lld)", 1ll << 50);
        c->max_pixels = v;
    }
    if ((rc = int_setting(c, CONFIG_KEY_MAX_BATCH, 1, 4096, CONFIG_DEFAULT_MAX_BATCH, "a batch size", &c->max_batch,
                          err)))
        return rc;
    if ((rc = int_setting(c, CONFIG_KEY_MAX_WS, 1, 4096, CONFIG_DEFAULT_MAX_WS, "a connection count", &c->max_ws,
                          err)))
        return rc;
    if ((t = c->values[CONFIG_KEY_API_TOKEN].text)) {
        size_t l = strlen(t);
        if (l < 8 || l > 511) return bad(c, CONFIG_KEY_API_TOKEN, err, "a token has 8 to 511 characters");
        for (const char *p = t; *p; p++)
            if ((unsigned char)*p <= 0x20 || *p == 0x7f)
                return bad(c, CONFIG_KEY_API_TOKEN, err, "a token has no spaces or control characters");
        c->api_token = mem_strdup(t);
    }
    if (!c->api_token) {
        for (int i = 0; i < c->n_listen; i++) {
            const char *h = c->listen[i];
            if (strcmp(h, "localhost") == 0 || strcmp(h, "::1") == 0 || strncmp(h, "127.", 4) == 0) continue;
            c->exposed = true;
            add_note(c, "listening on %s without --api-token: anyone who can reach it can queue prompts and read "
                        "outputs", h);
            break;
        }
    }

    /* behaviour */
    if ((rc = int_setting(c, CONFIG_KEY_THREADS, 0, 1024, 0, "a thread count, 0 = automatic", &c->threads, err)))
        return rc;
    if ((rc = int_setting(c, CONFIG_KEY_METRICS_EVERY, 0, 1000000000, CONFIG_DEFAULT_METRICS_EVERY,
                          "a prompt count, 0 = never", &c->metrics_every, err)))
        return rc;
    if ((rc = int_setting(c, CONFIG_KEY_HISTORY_MAX, 1, 100000000, CONFIG_DEFAULT_HISTORY_MAX,
                          "an entry count, at least 1", &c->history_max, err)))
        return rc;
    if ((rc = bool_setting(c, CONFIG_KEY_DISABLE_METADATA, &c->disable_metadata, err))) return rc;
    if ((rc = bool_setting(c, CONFIG_KEY_FORCE_FP32, &c->force_fp32, err))) return rc;
    if ((t = c->values[CONFIG_KEY_LOG].text) && !parse_level(t, &c->log_level))
        return bad(c, CONFIG_KEY_LOG, err, "expected debug, info, warning or error");
    if ((t = c->values[CONFIG_KEY_LOG_FILE].text) && *t) c->log_file = mem_strdup(t);
    int log_mb = CONFIG_DEFAULT_LOG_MAX_MB;
    if ((rc = int_setting(c, CONFIG_KEY_LOG_MAX_SIZE, 1, 1024 * 1024, CONFIG_DEFAULT_LOG_MAX_MB, "a size in MiB (>= 1)",
                          &log_mb, err)))
        return rc;
    c->log_max_size = (uint64_t)log_mb * 1024 * 1024;
    if ((rc = int_setting(c, CONFIG_KEY_LOG_KEEP, 0, 1000, CONFIG_DEFAULT_LOG_KEEP, "a file count",
                          &c->log_keep, err)))
        return rc;
    if ((t = c->values[CONFIG_KEY_FRONT_END_ROOT].text) && *t) {
        if (!is_dir(t)) return bad(c, CONFIG_KEY_FRONT_END_ROOT, err, "no such folder (a frontend build, with index.html)");
        c->front_end_root = mem_strdup(t);
    }
    if ((t = c->values[CONFIG_KEY_WEIGHTS_PLACEMENT].text) && *t) {
        struct placement p;
        struct err perr = {0};
        if (placement_parse(t, &p, &perr)) return bad(c, CONFIG_KEY_WEIGHTS_PLACEMENT, err, "%s", perr.msg);
        c->weights_placement = mem_strdup(t);
    }

    /* folders */
    if ((t = c->values[CONFIG_KEY_BASE_DIR].text)) {
        if (!is_dir(t)) return bad(c, CONFIG_KEY_BASE_DIR, err, "no such folder");
        c->base_dir = mem_strdup(t);
    } else {
        c->base_dir = mem_strdup("");
    }
    for (int k = CONFIG_KEY_MODELS_DIR; k <= CONFIG_KEY_TOKENIZER; k++)
        if ((t = c->values[k].text) && !*t) return bad(c, (enum config_key)k, err, "empty folder name");
    c->models_dir = dir_setting(c, CONFIG_KEY_MODELS_DIR, "models");
    c->input_dir = dir_setting(c, CONFIG_KEY_INPUT_DIR, "input");
    c->output_dir = dir_setting(c, CONFIG_KEY_OUTPUT_DIR, "output");
    c->temp_dir = dir_setting(c, CONFIG_KEY_TEMP_DIR, "temp");
    c->db_path = dir_setting(c, CONFIG_KEY_DB, "kiln.db"); /* "" stays "": nothing persisted */
    if ((t = c->values[CONFIG_KEY_TOKENIZER].text)) {
        if (!is_dir(t)) return bad(c, CONFIG_KEY_TOKENIZER, err, "no such folder (it holds vocab.json and merges.txt)");
        c->tokenizer_dir = mem_strdup(t);
    }

    /* devices */
    if ((rc = resolve_devices(c, err))) return rc;
    int n = config_n_devices(c);
    if (c->gpu_ports && n > 0) {
        if (c->gpu_ports + n - 1 > 65535)
            return bad(c, CONFIG_KEY_GPU_PORTS, err, "device %d would need port %d (> 65535)", n - 1, c->gpu_ports + n - 1);
        if (c->port && c->port >= c->gpu_ports && c->port < c->gpu_ports + n)
            return bad(c, CONFIG_KEY_GPU_PORTS, err, "device %d would listen on %d, the main port (--port)",
                       c->port - c->gpu_ports, c->port);
    }
    return 0;
}

int config_load(struct config *c, int argc, char **argv, struct err *err) {
    char *env_file_flag = NULL;
    struct env_file ef = {0};
    int rc = parse_flags(c, argc, argv, &env_file_flag, err);
    if (rc || c->help) goto done;

    /* the .env file: --env-file, else KILN_ENV_FILE, else ./.env (which may be missing) */
    const char *env_path = env_file_flag;
    if (!env_path && getenv("KILN_ENV_FILE") && *getenv("KILN_ENV_FILE")) env_path = getenv("KILN_ENV_FILE");
    c->env_file = mem_strdup(env_path ? env_path : ".env");
    if ((rc = env_file_read(c->env_file, env_path != NULL, &ef, &c->env_file_found, err))) goto done;

    /* per setting: the flag (already in values), else the environment, else .env */
    for (int k = 0; k < CONFIG_KEY_COUNT; k++) {
        if (c->values[k].source == CONFIG_SOURCE_FLAG) continue;
        const char *env = getenv(KEYS[k].env);
        const struct env_entry *e = env_file_get(&ef, KEYS[k].env);
        if (env && (*env || empty_is_a_value((enum config_key)k))) {
            set_value(c, (enum config_key)k, env, CONFIG_SOURCE_ENV, KEYS[k].env);
        } else if (e && (*e->value || empty_is_a_value((enum config_key)k))) {
            char origin[sizeof c->values[k].origin];
            snprintf(origin, sizeof origin, "%s:%d", c->env_file, e->line);
            set_value(c, (enum config_key)k, e->value, CONFIG_SOURCE_ENV_FILE, origin);
        }
    }

    /* dotenv's rule: what the environment does not set, the file does (for every key, so
     * CUDA_VISIBLE_DEVICES, OMP_NUM_THREADS, KILN_RNG_KERNEL... reach their readers) */
    for (int i = 0; i < ef.n; i++) setenv(ef.items[i].key, ef.items[i].value, 0);

    rc = validate(c, err);
done:
    mem_free(env_file_flag);
    env_file_deinit(&ef);
    return rc;
}

int config_n_devices(const struct config *c) {
    return c->mode == CONFIG_MODE_CPU ? c->cpu_workers : c->n_gpus + c->cpu_workers;
}

const char *config_source_name(enum config_source s) {
    static const char *const N[CONFIG_SOURCE_COUNT] = {"default", ".env", "environment", "flag"};
    return (unsigned)s < CONFIG_SOURCE_COUNT ? N[s] : "?";
}

const char *config_mode_name(enum config_mode m) { return m == CONFIG_MODE_GPU ? "gpu" : "cpu"; }

/* ===== Printing ===== */

/* The effective value of setting k, as text. */
static void effective(const struct config *c, enum config_key k, char *buf, size_t n) {
    buf[0] = 0;
    size_t used = 0;
    switch (k) {
    case CONFIG_KEY_LISTEN:
        for (int i = 0; i < c->n_listen && used < n; i++)
            used += (size_t)snprintf(buf + used, n - used, "%s%s", i ? "," : "", c->listen[i]);
        break;
    case CONFIG_KEY_PORT: snprintf(buf, n, "%d", c->port); break;
    case CONFIG_KEY_GPU_PORTS: snprintf(buf, n, c->gpu_ports ? "%d" : "off", c->gpu_ports); break;
    case CONFIG_KEY_CPU_WORKERS: snprintf(buf, n, "%d", c->cpu_workers); break;
    case CONFIG_KEY_THREADS: snprintf(buf, n, "%d", c->threads); break;
    case CONFIG_KEY_METRICS_EVERY: snprintf(buf, n, "%d", c->metrics_every); break;
    case CONFIG_KEY_DB:
        snprintf(buf, n, "%s", c->db_path && *c->db_path && strcmp(c->db_path, ":memory:") ? c->db_path : "off");
        break;
    case CONFIG_KEY_HISTORY_MAX: snprintf(buf, n, "%d", c->history_max); break;
    case CONFIG_KEY_BASE_DIR: snprintf(buf, n, "%s", *c->base_dir ? c->base_dir : "."); break;
    case CONFIG_KEY_MODELS_DIR: snprintf(buf, n, "%s", c->models_dir); break;
    case CONFIG_KEY_INPUT_DIR: snprintf(buf, n, "%s", c->input_dir); break;
    case CONFIG_KEY_OUTPUT_DIR: snprintf(buf, n, "%s", c->output_dir); break;
    case CONFIG_KEY_TEMP_DIR: snprintf(buf, n, "%s", c->temp_dir); break;
    case CONFIG_KEY_TOKENIZER: snprintf(buf, n, "%s", c->tokenizer_dir ? c->tokenizer_dir : ""); break;
    case CONFIG_KEY_CORS: snprintf(buf, n, "%s", c->cors_origin ? c->cors_origin : "off"); break;
    case CONFIG_KEY_MAX_UPLOAD: snprintf(buf, n, "%g", (double)c->max_upload_size / (1024.0 * 1024.0)); break;
    case CONFIG_KEY_MAX_NODES: snprintf(buf, n, "%d", c->max_nodes); break;
    case CONFIG_KEY_MAX_PIXELS: snprintf(buf, n, "%lld", c->max_pixels); break;
    case CONFIG_KEY_MAX_BATCH: snprintf(buf, n, "%d", c->max_batch); break;
    case CONFIG_KEY_MAX_WS: snprintf(buf, n, "%d", c->max_ws); break;
    case CONFIG_KEY_API_TOKEN: snprintf(buf, n, "%s", c->api_token ? "(set)" : "off"); break; /* never printed */
    case CONFIG_KEY_DISABLE_METADATA: snprintf(buf, n, "%d", c->disable_metadata); break;
    case CONFIG_KEY_FORCE_FP32: snprintf(buf, n, "%d", c->force_fp32); break;
    case CONFIG_KEY_LOG: {
        static const char *const L[LOG_LEVEL_COUNT] = {"debug", "info", "warning", "error"};
        snprintf(buf, n, "%s", L[c->log_level]);
        break;
    }
    case CONFIG_KEY_LOG_FILE: snprintf(buf, n, "%s", c->log_file ? c->log_file : "off"); break;
    case CONFIG_KEY_LOG_MAX_SIZE: snprintf(buf, n, "%llu", (unsigned long long)(c->log_max_size >> 20)); break;
    case CONFIG_KEY_LOG_KEEP: snprintf(buf, n, "%d", c->log_keep); break;
    case CONFIG_KEY_FRONT_END_ROOT: snprintf(buf, n, "%s", c->front_end_root ? c->front_end_root : "(built-in console)"); break;
    case CONFIG_KEY_WEIGHTS_PLACEMENT:
        snprintf(buf, n, "%s", c->weights_placement ? c->weights_placement : "(automatic)");
        break;
    case CONFIG_KEY_CPU: snprintf(buf, n, "%d", c->mode == CONFIG_MODE_CPU && c->values[k].text ? 1 : 0); break;
    case CONFIG_KEY_GPUS:
        for (int i = 0; i < c->n_gpus && used < n; i++)
            used += (size_t)snprintf(buf + used, n - used, "%s%d", i ? "," : "", c->gpus[i]);
        break;
    case CONFIG_KEY_CUDA_VISIBLE: snprintf(buf, n, "%s", c->values[k].text ? c->values[k].text : "(unset)"); break;
    case CONFIG_KEY_MULTI_SCHED:
        snprintf(buf, n, "%s", c->multi_gpu_sched < 0 ? "(unset)" : c->multi_gpu_sched ? "1" : "0");
        break;
    case CONFIG_KEY_NUM_GPUS:
        if (c->comfy_num_gpus) snprintf(buf, n, "%d", c->comfy_num_gpus);
        else snprintf(buf, n, "(unset)");
        break;
    case CONFIG_KEY_COUNT: break;
    }
}

void config_print(const struct config *c, FILE *f) {
    char buf[1024];
    for (int k = 0; k < CONFIG_KEY_COUNT; k++) {
        const struct config_value *v = &c->values[k];
        effective(c, (enum config_key)k, buf, sizeof buf);
        if (v->source == CONFIG_SOURCE_DEFAULT) fprintf(f, "%s=%s\t(default)\n", KEYS[k].name, buf);
        else if (v->source == CONFIG_SOURCE_ENV_FILE) fprintf(f, "%s=%s\t(.env %s)\n", KEYS[k].name, buf, v->origin);
        else fprintf(f, "%s=%s\t(%s %s)\n", KEYS[k].name, buf, config_source_name(v->source), v->origin);
    }
    fprintf(f, "mode=%s\t(%s)\n", config_mode_name(c->mode), c->mode_reason);
    fprintf(f, "devices=%d\n", config_n_devices(c));
    fprintf(f, "max_upload_size=%llu\n", (unsigned long long)c->max_upload_size);
    fprintf(f, "env_file=%s\t(%s)\n", c->env_file ? c->env_file : "", c->env_file_found ? "read" : "not found");
    for (int i = 0; i < c->n_notes; i++) fprintf(f, "note=%s\n", c->notes[i]);
}

void config_usage(FILE *f) {
    fprintf(f, "usage: kiln serve [options]\n"
               "\n"
               "Serves ComfyUI's HTTP + WebSocket API, one queue and one worker per device.\n"
               "Settings come from these flags, then the environment, then a .env file, then defaults.\n"
               "\n");
    for (size_t i = 0; i < ARRAY_LEN(FLAGS); i++) {
        const struct flag_def *fl = &FLAGS[i];
        if (!fl->metavar) continue;
        char left[64];
        snprintf(left, sizeof left, "%s%s%s", fl->name, *fl->metavar ? " " : "", fl->metavar);
        fprintf(f, "  %-30s %s", left, fl->help);
        if (fl->key >= 0) { /* the variable, on the same line when it fits in 100 columns */
            bool fits = 2 + 30 + 1 + strlen(fl->help) + 3 + strlen(KEYS[fl->key].env) <= 100;
            if (fits) fprintf(f, " [%s]", KEYS[fl->key].env);
            else fprintf(f, "\n  %-30s [%s]", "", KEYS[fl->key].env);
        }
        fputc('\n', f);
    }
    fprintf(f, "\n"
               "Launcher variables: CUDA_VISIBLE_DEVICES (empty = CPU only), COMFY_MULTI_GPU_SCHED=0\n"
               "(one worker, on the first GPU), COMFY_NUM_GPUS=N (the first N GPUs; in CPU mode, CPU\n"
               "devices when --cpu-workers / KILN_CPU_WORKERS is not set). GPUs are numbered after\n"
               "CUDA_VISIBLE_DEVICES; `kiln gpus` lists them. ComfyUI's memory, dtype and preview flags\n"
               "are accepted and ignored. KILN_ENV_FILE names the .env file too.\n");
}
