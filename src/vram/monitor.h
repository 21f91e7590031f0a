/* vram/monitor.h -- what each GPU reports about itself: name, memory, temperature, load, power.
 * Owns: the NVML and CUDA driver libraries, opened at run time with dlopen (never linked), so
 * every build (CPU-only included) can describe the machine's GPUs.
 * Must not: allocate device memory or run work on a GPU.
 * Threads: any; a monitor serialises its own calls.
 * Ownership: vram_monitor_new returns a monitor freed with vram_monitor_free.
 *
 * DESIGN. GPUs are numbered as the CUDA runtime numbers them (after CUDA_VISIBLE_DEVICES and
 * CUDA_DEVICE_ORDER), which is what the CUDA driver API enumerates. NVML numbers every GPU of
 * the machine in its own order, so each CUDA device is matched to its NVML handle by PCI bus
 * id. Without NVML (one notice): names and memory from the CUDA driver (free memory through the
 * device's primary context), temperature, load and power unknown. Without the driver: NVML's
 * own order. Without both: no GPUs. */
#ifndef KILN_VRAM_MONITOR_H
#define KILN_VRAM_MONITOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct err;
struct vram_monitor;

/* One GPU's figures; -1 (or 0 for memory) where the source cannot tell. */
struct vram_gpu {
    int index;                       /* CUDA ordinal (the number --gpus takes) */
    char name[96];                   /* "NVIDIA H100 80GB HBM3" */
    char pci_bus_id[32];             /* "0000:18:00.0", "" unknown */
    uint64_t mem_total;              /* bytes */
    uint64_t mem_used;               /* bytes (NVML counts every process's use) */
    uint64_t mem_free;               /* bytes */
    int temperature_c;               /* degrees C, -1 unknown */
    int utilization_pct;             /* GPU busy share over the last sample period, -1 unknown */
    double power_w;                  /* watts drawn now, -1 unknown */
    double power_limit_w;            /* enforced limit, -1 unknown */
};

/* Where the libraries are looked for; NULL fields take the defaults ("libnvidia-ml.so.1",
 * "libcuda.so.1"). Tests name missing files to see the fallbacks. */
struct vram_monitor_opts {
    const char *nvml_lib;
    const char *cuda_lib;
};

/* Opens what is there. Never fails for a missing library (the monitor then counts 0 GPUs or
 * lacks some figures, and vram_monitor_notice says why); returns NULL only on host OOM. */
struct vram_monitor *vram_monitor_new(const struct vram_monitor_opts *opts);
void vram_monitor_free(struct vram_monitor *m); /* NULL is a no-op */

/* GPUs visible (CUDA numbering when the driver is there, else NVML's). */
int vram_monitor_count(const struct vram_monitor *m);
/* "nvml", "cuda driver" (no NVML), "none". */
const char *vram_monitor_source(const struct vram_monitor *m);
/* The one notice about what is missing ("NVML not available (...): ..."), or NULL. */
const char *vram_monitor_notice(const struct vram_monitor *m);

/* Fills out for GPU index (CUDA ordinal). STATUS_ERR_RANGE when there is no such GPU,
 * STATUS_ERR_DEVICE when the library refuses; err says which GPU and why. */
int vram_monitor_query(struct vram_monitor *m, int index, struct vram_gpu *out, struct err *err);

/* ===== Helpers (pure) ===== */

/* Whether two PCI bus ids name the same device: "00000000:18:00.0" (NVML) and "0000:18:00.0"
 * (CUDA) match; hex digits in any case. False when either does not parse. */
bool vram_pci_same(const char *a, const char *b);
/* Parses "domain:bus:device.function" (hex; the domain may be omitted) into its parts. */
bool vram_pci_parse(const char *text, unsigned *domain, unsigned *bus, unsigned *device, unsigned *function);
/* "79.6 GiB", "512.0 MiB", "0 B" into buf. Returns buf. */
char *vram_format_bytes(uint64_t bytes, char *buf, size_t n);

#endif
