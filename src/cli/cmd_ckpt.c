/* cli/cmd_ckpt.c -- `kiln ckpt (--tiny|--sd15) [--seed N] PATH`: writes a random SD 1.x
 * checkpoint (model/ckpt_gen.h); --tiny also writes the tiny tokenizer's vocab.json and
 * merges.txt next to it (the tiny CLIP's vocabulary is sized by it).
 * Owns: nothing past its return.
 * Threads: main thread.
 * Exit codes: 0 written, 1 failed (message on stderr), 2 usage error. */
#include "base/clock.h"
#include "base/err.h"
#include "base/mem.h"
#include "cli/cmd.h"
#include "model/ckpt_gen.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/tokenizer.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CKPT_DEFAULT_SEED 0

static int usage(FILE *f) {
    fprintf(f,
            "usage: kiln ckpt (--tiny|--sd15) [--seed N] PATH\n"
            "\n"
            "Writes a checkpoint of random weights in the original SD 1.x (LDM) layout.\n"
            "  --tiny     small widths (< 20 MB); also writes vocab.json and merges.txt of the\n"
            "             tiny tokenizer in PATH's directory\n"
            "  --sd15     real SD 1.5 sizes (1143 tensors, 2.1 GB of fp16)\n"
            "  --seed N   random seed (default %d); the same seed gives the same file\n",
            CKPT_DEFAULT_SEED);
    return f == stdout ? 0 : 2;
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "kiln ckpt: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\nusage: kiln ckpt (--tiny|--sd15) [--seed N] PATH  (--help for more)\n");
    va_end(ap);
    return 2;
}

/* Parses a full decimal u64. */
static bool parse_seed(const char *s, uint64_t *out) {
    if (!s || !*s || *s == '-' || *s == '+') return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) return false;
    *out = (uint64_t)v;
    return true;
}

/* The directory part of path ("." if none); caller frees with mem_free. */
static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return mem_strdup(".");
    if (slash == path) return mem_strdup("/");
    return mem_strndup(path, (size_t)(slash - path));
}

int cmd_ckpt(int argc, char **argv) {
    int tiny = 0, sd15 = 0;
    uint64_t seed = CKPT_DEFAULT_SEED;
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return usage(stdout);
        if (!strcmp(a, "--tiny")) {
            tiny = 1;
        } else if (!strcmp(a, "--sd15")) {
            sd15 = 1;
        } else if (!strcmp(a, "--seed") || !strncmp(a, "--seed=", 7)) {
            const char *v = a[6] == '=' ? a + 7 : (i + 1 < argc ? argv[++i] : NULL);
            if (!v) return usage_error("--seed needs a value");
            if (!parse_seed(v, &seed)) return usage_error("--seed: '%s' is not a non-negative integer", v);
        } else if (a[0] == '-' && a[1]) {
            return usage_error("unknown option '%s'", a);
        } else if (path) {
            return usage_error("more than one PATH given ('%s')", a);
        } else {
            path = a;
        }
    }
    if (tiny + sd15 != 1) return usage_error("give exactly one of --tiny or --sd15");
    if (!path) return usage_error("missing PATH");

    struct sd_config config;
    if (tiny) sd_config_tiny(&config, tokenizer_tiny_vocab_size());
    else sd_config_sd15(&config);

    struct err err = {0};
    double t0 = clock_now();
    if (ckpt_gen_write(path, &config, seed, &err) != 0) {
        fprintf(stderr, "kiln ckpt: %s\n", err.msg);
        return 1;
    }
    double dt = clock_now() - t0;

    /* Re-open what was written: a self-check, and the figures to report. */
    struct ckpt ck;
    if (ckpt_open(&ck, path, &err) != 0) {
        fprintf(stderr, "kiln ckpt: wrote %s but cannot read it back: %s\n", path, err.msg);
        return 1;
    }
    printf("wrote %s: %d tensors, %.1f MB (%s, seed %llu) in %.1f s\n", path, ck.n_tensors,
           (double)ck.map_size / 1e6, tiny ? "tiny" : "sd15", (unsigned long long)seed, dt);
    ckpt_close(&ck);

    if (tiny) {
        char *dir = dir_of(path);
        int rc = tokenizer_write_tiny(dir, &err);
        if (rc == 0) printf("wrote %s/vocab.json and %s/merges.txt (tiny tokenizer, %d entries)\n", dir, dir,
                            tokenizer_tiny_vocab_size());
        else fprintf(stderr, "kiln ckpt: cannot write the tiny tokenizer: %s\n", err.msg);
        mem_free(dir);
        if (rc) return 1;
    }
    return 0;
}
