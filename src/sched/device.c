/* sched/device.c -- facts about the host that CPU devices report, what GPU devices report (via
 * vram/monitor.h), and prompt id generation.
 * Owns: nothing (reads /proc, the kernel's random source and the sched's vram monitor).
 * Must not: touch devices' queues or engines.
 * Threads: any. */
#include "sched/internal.h"

#include "vram/monitor.h"

#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* ===== GPU devices ===== */

void sched__gpu_describe(struct vram_monitor *m, int ordinal, char *name, size_t n, uint64_t *mem_total) {
    struct vram_gpu g;
    struct err err = {0};
    if (vram_monitor_query(m, ordinal, &g, &err) == 0) {
        snprintf(name, n, "cuda:%d %s", ordinal, g.name);
        *mem_total = g.mem_total;
    } else { /* the runtime sees a GPU the driver library does not: name it plainly */
        snprintf(name, n, "cuda:%d GPU", ordinal);
        *mem_total = 0;
    }
}

uint64_t sched__gpu_mem_free(struct vram_monitor *m, int ordinal) {
    struct vram_gpu g;
    struct err err = {0};
    return vram_monitor_query(m, ordinal, &g, &err) == 0 ? g.mem_free : 0;
}

/* ===== CPU devices ===== */

void sched__cpu_name(int index, char *name, size_t n) {
    char model[96] = "CPU";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof line, f)) {
            if (strncmp(line, "model name", 10) != 0) continue;
            const char *v = strchr(line, ':');
            if (!v) continue;
            v++;
            while (*v == ' ' || *v == '\t') v++;
            size_t len = strcspn(v, "\n");
            while (len && (v[len - 1] == ' ' || v[len - 1] == '\t')) len--;
            if (len) snprintf(model, sizeof model, "%.*s", (int)len, v);
            break;
        }
        fclose(f);
    }
    snprintf(name, n, "cpu:%d %s", index, model);
}

uint64_t sched__host_mem_total(void) {
    long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && size > 0 ? (uint64_t)pages * (uint64_t)size : 0;
}

uint64_t sched__host_mem_free(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    uint64_t kb = 0;
    if (f) {
        char line[256];
        unsigned long long v;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "MemAvailable: %llu kB", &v) == 1) {
                kb = v;
                break;
            }
        fclose(f);
    }
    if (kb) return kb * 1024;
    long pages = sysconf(_SC_AVPHYS_PAGES), size = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && size > 0 ? (uint64_t)pages * (uint64_t)size : 0;
}

/* ===== Prompt ids ===== */

void sched__uuid4(char out[37]) {
    unsigned char b[16];
    size_t got = 0;
    while (got < sizeof b) {
        ssize_t r = getrandom(b + got, sizeof b - got, 0);
        if (r > 0) got += (size_t)r;
        else break;
    }
    if (got < sizeof b) { /* no kernel source: /dev/urandom, else a clock-seeded mix */
        FILE *f = fopen("/dev/urandom", "rb");
        if (f) {
            got += fread(b + got, 1, sizeof b - got, f);
            fclose(f);
        }
        uint64_t x = (uint64_t)clock() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)out;
        for (size_t i = got; i < sizeof b; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            b[i] = (unsigned char)(x >> 56);
        }
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    static const char hex[] = "0123456789abcdef";
    int o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 15];
    }
    out[o] = 0;
}
