/* cli/cmd_gpus.c -- `kiln gpus`: a table of the GPUs this process sees, as the server would
 * number them (CUDA ordinals after CUDA_VISIBLE_DEVICES), with memory, temperature, load and
 * power from NVML (or what the CUDA driver can tell without it).
 * Owns: one vram monitor for the command's life.
 * Threads: main thread. */
#include "base/err.h"
#include "cli/cmd.h"
#include "vram/monitor.h"
#ifdef KILN_HAVE_CUDA
#include "tensor/backend.h"
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f, "usage: kiln gpus\n\n"
               "Lists the GPUs kiln sees, numbered as `kiln serve --gpus` takes them (after\n"
               "CUDA_VISIBLE_DEVICES): name, memory total/used/free, temperature, utilisation and\n"
               "power. Figures come from NVML (libnvidia-ml.so.1), else from the CUDA driver.\n");
}

/* "-" for unknown figures. */
static const char *num(char *buf, size_t n, double v, const char *fmt) {
    if (v < 0) snprintf(buf, n, "-");
    else snprintf(buf, n, fmt, v);
    return buf;
}

int cmd_gpus(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        }
        fprintf(stderr, "kiln gpus: unknown option '%s'\n\n", argv[i]);
        usage(stderr);
        return 2;
    }
    const char *vis = getenv("CUDA_VISIBLE_DEVICES");
    printf("CUDA_VISIBLE_DEVICES: %s\n", vis ? (*vis ? vis : "(empty: no GPU)") : "(not set: every GPU)");
#ifdef KILN_HAVE_CUDA
    printf("build: CUDA backend; the CUDA runtime sees %d device%s\n", backend_cuda_count(),
           backend_cuda_count() == 1 ? "" : "s");
#else
    printf("build: CPU only (kiln serve cannot use GPUs; configure with -DKILN_CUDA=ON)\n");
#endif
    struct vram_monitor *m = vram_monitor_new(NULL);
    if (!m) {
        fprintf(stderr, "kiln gpus: out of host memory\n");
        return 1;
    }
    int n = vram_monitor_count(m);
    printf("source: %s\n", vram_monitor_source(m));
    if (vram_monitor_notice(m)) printf("note: %s\n", vram_monitor_notice(m));
    printf("devices: %d\n", n);
    if (n == 0) {
        printf("no GPU found\n");
        vram_monitor_free(m);
        return 0;
    }
    printf("\n%-5s %-28s %11s %11s %11s %6s %6s %15s  %s\n", "index", "name", "total", "used", "free", "temp",
           "util", "power", "pci");
    int rc = 0;
    for (int i = 0; i < n; i++) {
        struct vram_gpu g;
        struct err err = {0};
        if (vram_monitor_query(m, i, &g, &err)) {
            fprintf(stderr, "kiln gpus: GPU %d: %s\n", i, err.msg);
            rc = 1;
            continue;
        }
        char total[32], used[32], free_b[32], temp[16], util[16], pw[24], lim[24], power[64];
        vram_format_bytes(g.mem_total, total, sizeof total);
        vram_format_bytes(g.mem_used, used, sizeof used);
        vram_format_bytes(g.mem_free, free_b, sizeof free_b);
        num(temp, sizeof temp, g.temperature_c, "%.0f C");
        num(util, sizeof util, g.utilization_pct, "%.0f%%");
        num(pw, sizeof pw, g.power_w, "%.0f");
        num(lim, sizeof lim, g.power_limit_w, "%.0f");
        if (g.power_w < 0) snprintf(power, sizeof power, "-");
        else snprintf(power, sizeof power, "%s / %s W", pw, lim);
        printf("%-5d %-28.28s %11s %11s %11s %6s %6s %15s  %s\n", i, g.name, total, used, free_b, temp, util, power,
               g.pci_bus_id[0] ? g.pci_bus_id : "-");
    }
    vram_monitor_free(m);
    return rc;
}
