/* vram/monitor.c -- GPU figures from NVML and the CUDA driver, both opened with dlopen.
 * Owns: the two library handles, the CUDA -> NVML device map, primary contexts retained for
 * free-memory queries when NVML is missing (released in vram_monitor_free).
 * Must not: link against either library (a CPU-only build runs on machines without them).
 * Threads: any; m->mu serialises every query. */
#include "vram/monitor.h"

#include "base/err.h"
#include "base/log.h"
#include "base/mem.h"
#include "base/status.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VRAM_MAX_GPUS 64

/* ===== The library entry points we use (their C ABI, declared here) ===== */

typedef int nvml_ret;     /* nvmlReturn_t: 0 = success */
typedef void *nvml_dev;   /* nvmlDevice_t */
struct nvml_memory { unsigned long long total, free, used; };
struct nvml_util { unsigned gpu, memory; };
struct nvml_pci {         /* nvmlPciInfo_t */
    char bus_id_legacy[16];
    unsigned domain, bus, device, pci_device_id, pci_subsystem_id;
    char bus_id[32];
};

struct nvml_api {
    nvml_ret (*init)(void);
    nvml_ret (*shutdown)(void);
    const char *(*error_string)(nvml_ret);
    nvml_ret (*count)(unsigned *);
    nvml_ret (*by_index)(unsigned, nvml_dev *);
    nvml_ret (*by_pci)(const char *, nvml_dev *);
    nvml_ret (*name)(nvml_dev, char *, unsigned);
    nvml_ret (*memory)(nvml_dev, struct nvml_memory *);
    nvml_ret (*temperature)(nvml_dev, int, unsigned *);
    nvml_ret (*utilization)(nvml_dev, struct nvml_util *);
    nvml_ret (*power)(nvml_dev, unsigned *);
    nvml_ret (*power_limit)(nvml_dev, unsigned *);
    nvml_ret (*pci_info)(nvml_dev, struct nvml_pci *);
};

typedef int cu_ret;       /* CUresult: 0 = success */
struct cu_api {
    cu_ret (*init)(unsigned);
    cu_ret (*count)(int *);
    cu_ret (*get)(int *, int);
    cu_ret (*name)(char *, int, int);
    cu_ret (*total_mem)(size_t *, int);
    cu_ret (*pci_bus_id)(char *, int, int);
    cu_ret (*ctx_retain)(void **, int);
    cu_ret (*ctx_release)(int);
    cu_ret (*ctx_push)(void *);
    cu_ret (*ctx_pop)(void **);
    cu_ret (*mem_info)(size_t *, size_t *);
};

struct vram_monitor {
    pthread_mutex_t mu;
    void *nvml_so, *cuda_so;
    struct nvml_api nv;
    struct cu_api cu;
    bool have_nvml, have_cuda;
    bool cuda_no_device;                 /* the driver opened and counts no device: 0 GPUs */
    int n;                               /* GPUs visible */
    int cu_dev[VRAM_MAX_GPUS];           /* CUdevice of each CUDA ordinal */
    nvml_dev nv_dev[VRAM_MAX_GPUS];      /* its NVML handle, or NULL */
    char pci[VRAM_MAX_GPUS][32];
    void *ctx[VRAM_MAX_GPUS];            /* retained primary context (no-NVML fallback), or NULL */
    char notice[1024];
};

/* Resolves name in so into *fn; false when missing. */
static bool sym(void *so, const char *name, void *fn) {
    void *p = dlsym(so, name);
    memcpy(fn, &p, sizeof p); /* object pointer -> function pointer without a cast warning */
    return p != NULL;
}

/* ===== Opening ===== */

static bool open_nvml(struct vram_monitor *m, const char *lib, char *why, size_t n) {
    m->nvml_so = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (!m->nvml_so) {
        snprintf(why, n, "%s", dlerror());
        return false;
    }
    struct nvml_api *a = &m->nv;
    bool ok = sym(m->nvml_so, "nvmlInit_v2", &a->init) && sym(m->nvml_so, "nvmlShutdown", &a->shutdown) &&
              sym(m->nvml_so, "nvmlErrorString", &a->error_string) &&
              sym(m->nvml_so, "nvmlDeviceGetCount_v2", &a->count) &&
              sym(m->nvml_so, "nvmlDeviceGetHandleByIndex_v2", &a->by_index) &&
              sym(m->nvml_so, "nvmlDeviceGetHandleByPciBusId_v2", &a->by_pci) &&
              sym(m->nvml_so, "nvmlDeviceGetName", &a->name) &&
              sym(m->nvml_so, "nvmlDeviceGetMemoryInfo", &a->memory) &&
              sym(m->nvml_so, "nvmlDeviceGetTemperature", &a->temperature) &&
              sym(m->nvml_so, "nvmlDeviceGetUtilizationRates", &a->utilization) &&
              sym(m->nvml_so, "nvmlDeviceGetPowerUsage", &a->power) &&
              sym(m->nvml_so, "nvmlDeviceGetEnforcedPowerLimit", &a->power_limit) &&
              sym(m->nvml_so, "nvmlDeviceGetPciInfo_v3", &a->pci_info);
    nvml_ret r = ok ? a->init() : -1;
    if (!ok || r != 0) {
        snprintf(why, n, "%s in %s", ok ? a->error_string(r) : "missing entry points", lib);
        dlclose(m->nvml_so);
        m->nvml_so = NULL;
        return false;
    }
    return true;
}

static bool open_cuda(struct vram_monitor *m, const char *lib, char *why, size_t n) {
    m->cuda_so = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (!m->cuda_so) {
        snprintf(why, n, "%s", dlerror());
        return false;
    }
    struct cu_api *a = &m->cu;
    bool ok = sym(m->cuda_so, "cuInit", &a->init) && sym(m->cuda_so, "cuDeviceGetCount", &a->count) &&
              sym(m->cuda_so, "cuDeviceGet", &a->get) && sym(m->cuda_so, "cuDeviceGetName", &a->name) &&
              sym(m->cuda_so, "cuDeviceTotalMem_v2", &a->total_mem) &&
              sym(m->cuda_so, "cuDeviceGetPCIBusId", &a->pci_bus_id) &&
              sym(m->cuda_so, "cuDevicePrimaryCtxRetain", &a->ctx_retain) &&
              sym(m->cuda_so, "cuDevicePrimaryCtxRelease_v2", &a->ctx_release) &&
              sym(m->cuda_so, "cuCtxPushCurrent_v2", &a->ctx_push) && sym(m->cuda_so, "cuCtxPopCurrent_v2", &a->ctx_pop) &&
              sym(m->cuda_so, "cuMemGetInfo_v2", &a->mem_info);
    cu_ret r = ok ? a->init(0) : -1;
    if (r == 100) { /* CUDA_ERROR_NO_DEVICE: the driver works and shows none (CUDA_VISIBLE_DEVICES=) */
        m->cuda_no_device = true;
        return true;
    }
    if (!ok || r != 0) {
        if (ok) snprintf(why, n, "cuInit failed (CUresult %d) in %s", r, lib);
        else snprintf(why, n, "missing entry points in %s", lib);
        dlclose(m->cuda_so);
        m->cuda_so = NULL;
        return false;
    }
    return true;
}

/* The NVML handle of the GPU at this PCI bus id (NVML writes the domain with 8 digits, CUDA
 * with 4: ask directly, then compare every GPU's id), or NULL. */
static nvml_dev nvml_by_pci(struct vram_monitor *m, const char *pci) {
    nvml_dev d = NULL;
    if (m->nv.by_pci(pci, &d) == 0) return d;
    unsigned n = 0;
    if (m->nv.count(&n) != 0) return NULL;
    for (unsigned i = 0; i < n; i++) {
        struct nvml_pci info;
        if (m->nv.by_index(i, &d) == 0 && m->nv.pci_info(d, &info) == 0 && vram_pci_same(info.bus_id, pci)) return d;
    }
    return NULL;
}

struct vram_monitor *vram_monitor_new(const struct vram_monitor_opts *opts) {
    struct vram_monitor *m = mem_try_calloc(1, sizeof *m);
    if (!m) return NULL;
    pthread_mutex_init(&m->mu, NULL);
    const char *nvml_lib = opts && opts->nvml_lib ? opts->nvml_lib : "libnvidia-ml.so.1";
    const char *cuda_lib = opts && opts->cuda_lib ? opts->cuda_lib : "libcuda.so.1";
    char why_nv[256] = "", why_cu[256] = "";
    m->have_nvml = open_nvml(m, nvml_lib, why_nv, sizeof why_nv);
    m->have_cuda = open_cuda(m, cuda_lib, why_cu, sizeof why_cu);

    if (m->cuda_no_device) { /* the CUDA runtime sees none either, whatever NVML counts */
        m->n = 0;
    } else if (m->have_cuda) { /* CUDA numbering; NVML matched by PCI bus id */
        int n = 0;
        if (m->cu.count(&n) != 0) n = 0;
        m->n = n < VRAM_MAX_GPUS ? n : VRAM_MAX_GPUS;
        for (int i = 0; i < m->n; i++) {
            m->cu.get(&m->cu_dev[i], i);
            if (m->cu.pci_bus_id(m->pci[i], sizeof m->pci[i], m->cu_dev[i]) != 0) m->pci[i][0] = 0;
            if (m->have_nvml && m->pci[i][0]) m->nv_dev[i] = nvml_by_pci(m, m->pci[i]);
        }
    } else if (m->have_nvml) { /* no driver library: NVML's own order */
        unsigned n = 0;
        if (m->nv.count(&n) != 0) n = 0;
        m->n = n < VRAM_MAX_GPUS ? (int)n : VRAM_MAX_GPUS;
        for (int i = 0; i < m->n; i++)
            if (m->nv.by_index((unsigned)i, &m->nv_dev[i]) != 0) m->nv_dev[i] = NULL;
    }

    if (m->cuda_no_device)
        snprintf(m->notice, sizeof m->notice, "the CUDA driver sees no GPU (CUDA_VISIBLE_DEVICES=%s)",
                 getenv("CUDA_VISIBLE_DEVICES") ? getenv("CUDA_VISIBLE_DEVICES") : "(not set)");
    else if (!m->have_nvml && m->have_cuda)
        snprintf(m->notice, sizeof m->notice,
                 "NVML not available (%s): GPU names and memory come from the CUDA driver; temperature, "
                 "utilisation and power are unknown", why_nv);
    else if (!m->have_nvml && !m->have_cuda)
        snprintf(m->notice, sizeof m->notice, "no GPU found: neither NVML (%s) nor the CUDA driver (%s) is available",
                 why_nv, why_cu);
    else if (!m->have_cuda)
        snprintf(m->notice, sizeof m->notice,
                 "the CUDA driver is not available (%s): GPUs are numbered as NVML numbers them", why_cu);
    return m;
}

void vram_monitor_free(struct vram_monitor *m) {
    if (!m) return;
    for (int i = 0; i < m->n; i++)
        if (m->ctx[i]) m->cu.ctx_release(m->cu_dev[i]);
    if (m->nvml_so) {
        m->nv.shutdown();
        dlclose(m->nvml_so);
    }
    /* the driver stays loaded: the CUDA runtime of this process may share it */
    pthread_mutex_destroy(&m->mu);
    mem_free(m);
}

int vram_monitor_count(const struct vram_monitor *m) { return m ? m->n : 0; }

const char *vram_monitor_source(const struct vram_monitor *m) {
    return m && m->have_nvml ? "nvml" : m && m->have_cuda ? "cuda driver" : "none";
}

const char *vram_monitor_notice(const struct vram_monitor *m) { return m && m->notice[0] ? m->notice : NULL; }

/* ===== Queries ===== */

static void query_nvml(struct vram_monitor *m, nvml_dev d, struct vram_gpu *out) {
    char name[96];
    if (m->nv.name(d, name, sizeof name) == 0) snprintf(out->name, sizeof out->name, "%s", name);
    struct nvml_memory mem;
    if (m->nv.memory(d, &mem) == 0) {
        out->mem_total = mem.total;
        out->mem_free = mem.free;
        out->mem_used = mem.used;
    }
    unsigned v;
    if (m->nv.temperature(d, 0 /* NVML_TEMPERATURE_GPU */, &v) == 0) out->temperature_c = (int)v;
    struct nvml_util u;
    if (m->nv.utilization(d, &u) == 0) out->utilization_pct = (int)u.gpu;
    if (m->nv.power(d, &v) == 0) out->power_w = v / 1000.0;
    if (m->nv.power_limit(d, &v) == 0) out->power_limit_w = v / 1000.0;
}

/* Free memory through the device's primary context (kept retained: the runtime shares it). */
static void query_cuda_free(struct vram_monitor *m, int i, struct vram_gpu *out) {
    if (!m->ctx[i] && m->cu.ctx_retain(&m->ctx[i], m->cu_dev[i]) != 0) {
        m->ctx[i] = NULL;
        return;
    }
    if (m->cu.ctx_push(m->ctx[i]) != 0) return;
    size_t free_b = 0, total_b = 0;
    if (m->cu.mem_info(&free_b, &total_b) == 0) {
        out->mem_free = free_b;
        out->mem_used = total_b > free_b ? total_b - free_b : 0;
    }
    void *popped;
    m->cu.ctx_pop(&popped);
}

int vram_monitor_query(struct vram_monitor *m, int index, struct vram_gpu *out, struct err *err) {
    memset(out, 0, sizeof *out);
    out->index = index;
    out->temperature_c = out->utilization_pct = -1;
    out->power_w = out->power_limit_w = -1;
    if (!m || index < 0 || index >= m->n)
        return err_set(err, STATUS_ERR_RANGE, "GPU %d does not exist (%d visible)", index, m ? m->n : 0);
    pthread_mutex_lock(&m->mu);
    snprintf(out->pci_bus_id, sizeof out->pci_bus_id, "%s", m->pci[index]);
    if (m->have_cuda) {
        char name[96];
        size_t total = 0;
        if (m->cu.name(name, sizeof name, m->cu_dev[index]) == 0) snprintf(out->name, sizeof out->name, "%s", name);
        if (m->cu.total_mem(&total, m->cu_dev[index]) == 0) out->mem_total = total;
    }
    if (m->nv_dev[index]) query_nvml(m, m->nv_dev[index], out);
    else if (m->have_cuda) query_cuda_free(m, index, out);
    pthread_mutex_unlock(&m->mu);
    if (!out->name[0]) snprintf(out->name, sizeof out->name, "GPU %d", index);
    return 0;
}

/* ===== Helpers ===== */

bool vram_pci_parse(const char *text, unsigned *domain, unsigned *bus, unsigned *device, unsigned *function) {
    if (!text) return false;
    unsigned v[4];
    int used = 0;
    /* domain:bus:device.function, or bus:device.function */
    if (sscanf(text, "%x:%x:%x.%x%n", &v[0], &v[1], &v[2], &v[3], &used) == 4 && text[used] == 0) {
        *domain = v[0], *bus = v[1], *device = v[2], *function = v[3];
        return true;
    }
    used = 0;
    if (sscanf(text, "%x:%x.%x%n", &v[1], &v[2], &v[3], &used) == 3 && text[used] == 0) {
        *domain = 0, *bus = v[1], *device = v[2], *function = v[3];
        return true;
    }
    return false;
}

bool vram_pci_same(const char *a, const char *b) {
    unsigned x[4], y[4];
    return vram_pci_parse(a, &x[0], &x[1], &x[2], &x[3]) && vram_pci_parse(b, &y[0], &y[1], &y[2], &y[3]) &&
           !memcmp(x, y, sizeof x);
}

char *vram_format_bytes(uint64_t bytes, char *buf, size_t n) {
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    if (bytes < 1024) {
        snprintf(buf, n, "%llu B", (unsigned long long)bytes);
        return buf;
    }
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024.0 && u < 4) {
        v /= 1024.0;
        u++;
    }
    snprintf(buf, n, "%.1f %s", v, units[u]);
    return buf;
}
