/* cli/main.c -- kiln's entry point: picks the subcommand.
 * Threads: main thread. */
#include "cli/cmd.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} COMMANDS[] = {
    {"serve", cmd_serve, "serve ComfyUI's HTTP + WebSocket API, one queue and worker per device"},
    {"run", cmd_run, "run one API-format workflow on the CPU and save its images"},
    {"bench", cmd_bench, "time the UNet of a checkpoint on the CPU (bench unet CKPT)"},
    {"gpus", cmd_gpus, "list the GPUs kiln sees: memory, temperature, utilisation, power"},
    {"ckpt", cmd_ckpt, "write a random SD 1.5 checkpoint (--tiny for tests, --sd15 full size)"},
};

/* ===== Thread stacks big enough for static TLS =====
 * glibc puts every initially loaded library's thread-local storage on each thread's stack and
 * refuses (EINVAL) a stack smaller than that. CivetWeb sizes its threads at 100 KiB, and a
 * CUDA build's libraries hold ~170 KiB of TLS (cuBLASLt 92 KiB, OpenBLAS 60 KiB, cuBLAS,
 * cudart), so the HTTP server could not start one thread. This definition, seen first by
 * every library of the process, raises any requested stack size to at least 1 MiB. */
#define KILN_MIN_THREAD_STACK ((size_t)1 << 20)

int pthread_attr_setstacksize(pthread_attr_t *attr, size_t size) {
    typedef int (*setstacksize_fn)(pthread_attr_t *, size_t);
    static _Atomic(setstacksize_fn) real;
    setstacksize_fn fn = atomic_load(&real);
    if (!fn) {
        void *p = dlsym(RTLD_NEXT, "pthread_attr_setstacksize");
        if (!p) return 22; /* EINVAL: no libc underneath (cannot happen with glibc) */
        memcpy(&fn, &p, sizeof p);
        atomic_store(&real, fn);
    }
    return fn(attr, size < KILN_MIN_THREAD_STACK ? KILN_MIN_THREAD_STACK : size);
}

static int usage(FILE *f) {
    fprintf(f, "usage: kiln <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        fprintf(f, "  %-6s %s\n", COMMANDS[i].name, COMMANDS[i].help);
    fprintf(f, "\n`kiln <command> --help` describes a command.\n");
    return f == stdout ? 0 : 2;
}

/* OpenMP threads of the CPU backend must sleep, not spin, between parallel regions: spinning
 * threads fight other processes (and GPU workers) for the cores (a 3-step run went
 * from 0.2 s to 2.4 s on a busy 2-core machine), and on GPU machines they would steal the
 * cores that launch kernels. libgomp reads OMP_WAIT_POLICY only when it loads, so when the
 * user has not chosen, set it and start again. */
static void prefer_passive_openmp(char **argv) {
    if (getenv("OMP_WAIT_POLICY")) return;
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    execv("/proc/self/exe", argv);
    /* exec failed (no /proc): carry on with the default policy */
}

int main(int argc, char **argv) {
    prefer_passive_openmp(argv);
    if (argc < 2) return usage(stderr);
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) return usage(stdout);
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        if (!strcmp(argv[1], COMMANDS[i].name)) return COMMANDS[i].run(argc - 1, argv + 1);
    fprintf(stderr, "kiln: unknown command '%s'\n\n", argv[1]);
    return usage(stderr);
}
