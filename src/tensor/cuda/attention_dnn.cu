/* tensor/cuda/attention_dnn.cu -- ATTENTION through cuDNN's fused scaled-dot-product attention:
 * the graph API with one OPERATION_SDPA_FWD node (cuDNN 9.13.1 and later at run time).
 * Owns: the ctx's SDPA state (struct cuda_sdpa: the plan table and each plan's backend
 * descriptors; freed by cuda__sdpa_free from cuda_free), and the plan files it writes under
 * <cache>/cudnn-sdpa (PLANS ON DISK); borrows ctx->work for cuDNN's workspace.
 * Threads: the backend's worker; cuDNN runs on ctx->stream through ctx->cudnn.
 * Why: on the H100 cuDNN's Hopper kernels take SD 1.5's batch-8 attentions 2.3-5x faster than
 * attention_flash.cu's mma.sync kernel (4096-token self-attention, 8 heads of 40: 0.57 against
 * 1.31 ms; 1024 tokens, heads of 80: 0.06 against 0.30 ms; bench/attention_torch.py and
 * gpu_test_bench_cuda, docs/PERF.md).
 * DESIGN. kiln's q, k, v and out are [nb, n, c] with c = heads * d; cuDNN's tensors are
 * [b, h, s, d], so each is described with strides (n c, d, c, 1): no copies. The scale
 * 1/sqrt(d) is a by-value scalar (its host address goes in the variant pack). A plan per
 * (dtype, nb, nq, nk, c, heads): the operation graph, the heuristics' engine configurations
 * (mode A; the fallback list if A has none) and the first of them whose execution plan
 * finalizes. Not the fastest by timing: which kernels run must not depend on timing noise, or
 * one seed could give two slightly different images on one server (the 2-3 configurations of
 * a shape differed by < 0.1 ms at batch 8 anyway). cuDNN's SDPA engines are all compiled at run
 * time (NVRTC, then the driver's JIT, whose on-disk cache makes later builds of the same
 * kernels ~50 ms): up to ~1 s per plan on a machine that never built them, ~8 plans per image
 * size (kept on disk and read back by later runs: PLANS ON DISK, below). The first call of a
 * shape makes (or reads) its plan then and there, so a prompt's attention never
 * changes kernels half-way and every run of a seed gives the same image (a background builder
 * with kiln's kernels running the shape meanwhile was tried and dropped for that reason:
 * docs/DECISIONS.md). KILN_CUDNN_SDPA=0 turns the path off. A shape no engine takes is
 * remembered and left to the own kernels.
 * Non-causal F16/BF16 only, rows of 16-byte-aligned multiples of 8 elements; arithmetic: fp32
 * scores and softmax, probabilities rounded to the storage type for the second product, fp32
 * accumulation, as the flash kernel does. */
#include "tensor/cuda/cuda.cuh"

#ifdef KILN_HAVE_CUDNN

extern "C" {
#include "base/clock.h"
#include "base/log.h"
#include "base/mem.h"
}

#include <stdio.h>

#include <math.h>
#include <string.h>

#define SDPA_MAX_DESCS 48 /* descriptors a plan keeps alive: 5 tensors, op, graph, heuristics, configs, plans */
#define SDPA_MAX_CFGS 4        /* engine configurations tried per heuristics mode */

/* unique ids of the graph's tensors, the variant pack's keys */
enum { SDPA_UID_Q = 1, SDPA_UID_K, SDPA_UID_V, SDPA_UID_O, SDPA_UID_SCALE };

struct cuda_sdpa_plan {
    int64_t key[6];        /* dtype, nb, nq, nk, c, heads */
    cudnnBackendDescriptor_t descs[SDPA_MAX_DESCS]; /* every descriptor made for it, destroyed together */
    int n_descs;
    cudnnBackendDescriptor_t plan; /* the heuristics' first configuration whose plan finalizes, or NULL */
    int64_t ws;            /* bytes of workspace it needs */
    float scale;           /* 1 / sqrt(d), passed by value */
    double built_s;        /* seconds the plans took */
};

struct cuda_sdpa {
    struct cuda_sdpa_plan **plans; /* every shape seen, plan or not */
    int n_plans, cap_plans;
};

/* ===== Plans ===== */

/* Destroys p's descriptors (its key stays). */
static void plan_release(struct cuda_sdpa_plan *p) {
    for (int i = p->n_descs - 1; i >= 0; i--) cudnnBackendDestroyDescriptor(p->descs[i]);
    p->n_descs = 0;
    p->plan = NULL;
}

/* A new descriptor of the given type, kept in p (destroyed with it). */
static int plan_desc(struct cuda_sdpa_plan *p, cudnnBackendDescriptorType_t type, cudnnBackendDescriptor_t *out,
                     struct err *err) {
    if (p->n_descs == SDPA_MAX_DESCS)
        return err_set(err, STATUS_ERR_INTERNAL, "cuda sdpa: more than %d cuDNN descriptors for one plan",
                       SDPA_MAX_DESCS);
    CUDNN_TRY(cudnnBackendCreateDescriptor(type, out));
    p->descs[p->n_descs++] = *out;
    return 0;
}

/* One attribute of n values of the given type. */
#define SDPA_SET(desc, name, type, n, ptr) CUDNN_TRY(cudnnBackendSetAttribute(desc, name, type, n, ptr))

/* A finalized tensor descriptor: [b, h, s, d] with strides, or a by-value fp32 scalar. */
static int plan_tensor(struct cuda_sdpa_plan *p, int64_t uid, cudnnDataType_t ty, const int64_t dims[4],
                       const int64_t strides[4], bool by_value, cudnnBackendDescriptor_t *out, struct err *err) {
    int rc = plan_desc(p, CUDNN_BACKEND_TENSOR_DESCRIPTOR, out, err);
    if (rc) return rc;
    int64_t align = 16;
    SDPA_SET(*out, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &ty);
    SDPA_SET(*out, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims);
    SDPA_SET(*out, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides);
    SDPA_SET(*out, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    SDPA_SET(*out, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align);
    if (by_value) {
        bool yes = true;
        SDPA_SET(*out, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &yes);
    }
    CUDNN_TRY(cudnnBackendFinalize(*out));
    return 0;
}

/* The engine configurations heuristics mode `mode` proposes for graph, best first, appended to
 * p (at most SDPA_MAX_CFGS): their count in *n (0 when the mode has none). */
static int plan_configs(struct cuda_sdpa_plan *p, cudnnBackendDescriptor_t graph, cudnnBackendHeurMode_t mode,
                        cudnnBackendDescriptor_t *cfgs, int64_t *n, struct err *err) {
    *n = 0;
    cudnnBackendDescriptor_t heur;
    int rc = plan_desc(p, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, &heur, err);
    if (rc) return rc;
    SDPA_SET(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph);
    SDPA_SET(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
    cudnnStatus_t s = cudnnBackendFinalize(heur);
    if (s != CUDNN_STATUS_SUCCESS) return 0; /* this mode has nothing for the graph */
    int64_t avail = 0;
    CUDNN_TRY(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &avail,
                                       NULL));
    int64_t want = avail < SDPA_MAX_CFGS ? avail : SDPA_MAX_CFGS;
    if (want < 1) return 0;
    for (int64_t i = 0; i < want; i++) {
        rc = plan_desc(p, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, &cfgs[i], err);
        if (rc) return rc;
    }
    CUDNN_TRY(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, want, n,
                                       cfgs));
    return 0;
}

/* Fills p (key set) for its shape with handle: the graph and its execution plan (none when no
 * engine takes it). Returns 0 or a negative status (the caller then releases p's descriptors). */
static int plan_init(cudnnHandle_t handle, struct cuda_sdpa_plan *p, struct err *err) {
    const int64_t nb = p->key[1], nq = p->key[2], nk = p->key[3], c = p->key[4], heads = p->key[5], d = c / heads;
    cudnnDataType_t ty = (enum dtype)p->key[0] == DTYPE_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF;
    p->scale = 1.0f / sqrtf((float)d);
    const int64_t qdims[4] = {nb, heads, nq, d}, qstr[4] = {nq * c, d, c, 1};
    const int64_t kdims[4] = {nb, heads, nk, d}, kstr[4] = {nk * c, d, c, 1};
    const int64_t one[4] = {1, 1, 1, 1};
    cudnnBackendDescriptor_t tq, tk, tv, to, ts, op, graph;
    int rc = plan_tensor(p, SDPA_UID_Q, ty, qdims, qstr, false, &tq, err);
    if (!rc) rc = plan_tensor(p, SDPA_UID_K, ty, kdims, kstr, false, &tk, err);
    if (!rc) rc = plan_tensor(p, SDPA_UID_V, ty, kdims, kstr, false, &tv, err);
    if (!rc) rc = plan_tensor(p, SDPA_UID_O, ty, qdims, qstr, false, &to, err);
    if (!rc) rc = plan_tensor(p, SDPA_UID_SCALE, CUDNN_DATA_FLOAT, one, one, true, &ts, err);
    if (!rc) rc = plan_desc(p, CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR, &op, err);
    if (rc) return rc;
    SDPA_SET(op, CUDNN_ATTR_OPERATION_SDPA_FWD_QDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &tq);
    SDPA_SET(op, CUDNN_ATTR_OPERATION_SDPA_FWD_KDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &tk);
    SDPA_SET(op, CUDNN_ATTR_OPERATION_SDPA_FWD_VDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &tv);
    SDPA_SET(op, CUDNN_ATTR_OPERATION_SDPA_FWD_ODESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &to);
    SDPA_SET(op, CUDNN_ATTR_OPERATION_SDPA_FWD_SCALEDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &ts);
    cudnnStatus_t s = cudnnBackendFinalize(op);
    if (CUDNN_STATUS_CATEGORY(s) == CUDNN_STATUS_NOT_SUPPORTED || CUDNN_STATUS_CATEGORY(s) == CUDNN_STATUS_BAD_PARAM)
        return 0; /* this cuDNN does not describe the shape: no plan */
    if (s != CUDNN_STATUS_SUCCESS)
        return cuda_dnn_error(err, s, "cudnnBackendFinalize(SDPA_FWD)", __func__, __FILE__, __LINE__);
    rc = plan_desc(p, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, &graph, err);
    if (rc) return rc;
    SDPA_SET(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &op);
    SDPA_SET(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
    s = cudnnBackendFinalize(graph);
    if (s != CUDNN_STATUS_SUCCESS) return 0;

    /* the first configuration whose plan finalizes, in the heuristics' order (not the fastest by
     * timing: the choice must not depend on timing noise, or one seed could give two images) */
    const cudnnBackendHeurMode_t modes[2] = {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK};
    for (int m = 0; m < 2 && !p->plan; m++) {
        cudnnBackendDescriptor_t cfgs[SDPA_MAX_CFGS];
        int64_t n = 0;
        int keep = p->n_descs; /* this mode's descriptors go if none of its plans finalizes */
        rc = plan_configs(p, graph, modes[m], cfgs, &n, err);
        if (rc) return rc;
        for (int64_t i = 0; i < n && !p->plan; i++) {
            /* the engine behind the configuration, for the log */
            cudnnBackendDescriptor_t eng;
            rc = plan_desc(p, CUDNN_BACKEND_ENGINE_DESCRIPTOR, &eng, err);
            if (rc) return rc;
            int64_t got = 0, gidx = -1;
            if (cudnnBackendGetAttribute(cfgs[i], CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &got,
                                         &eng) == CUDNN_STATUS_SUCCESS)
                (void)cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &got, &gidx);
            cudnnBackendDescriptor_t plan;
            rc = plan_desc(p, CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan, err);
            if (rc) return rc;
            SDPA_SET(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
            SDPA_SET(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfgs[i]);
            double t0 = clock_now();
            cudnnStatus_t fs = cudnnBackendFinalize(plan);
            log_debug("cuda sdpa: engine %lld: plan %s in %.3f s", (long long)gidx,
                      fs == CUDNN_STATUS_SUCCESS ? "made" : "refused", clock_now() - t0);
            if (fs != CUDNN_STATUS_SUCCESS) {
                cudnnBackendDestroyDescriptor(p->descs[--p->n_descs]); /* the plan, last made */
                continue;
            }
            CUDNN_TRY(cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1,
                                               &got, &p->ws));
            p->plan = plan;
        }
        if (!p->plan)
            while (p->n_descs > keep) cudnnBackendDestroyDescriptor(p->descs[--p->n_descs]);
    }
    (void)cudaGetLastError(); /* a rejected configuration must not leave a CUDA error behind */
    return 0;
}

/* ===== Plans kept on disk (PLANS ON DISK) =====
 * cuDNN compiles its SDPA engines when a plan is made: 35-90 ms per shape with the driver's JIT
 * cache warm, ~0.6 s of a cold start's first image on an H100 (eight UNet shapes, the VAE's,
 * the warm-up's two). It can also write a finalized plan of such an engine as JSON, compiled
 * kernel included, and make the plan again from that text without compiling. So each plan made
 * is kept in <cache>/cudnn-sdpa/<tag>-<shape>.json (plan_cache.cu: the folder $KILN_CACHE_DIR
 * or ~/.cache/kiln, the tag cuDNN's version, the driver's, the GPU's name and compute
 * capability), and a later run reads it back. The plan read back is the one the heuristics chose
 * for the same cuDNN, driver and GPU, so it does not change which kernels run (the determinism
 * rule above). The file's first line names the tag and the shape again and must match before
 * cuDNN reads the rest. A file that cannot be read, does not match, or that cuDNN refuses is
 * ignored and replaced; a cache that cannot be written is only a debug line. KILN_CACHE_DIR=""
 * keeps nothing. */

/* The file name of p's plan (after the cache's tag) and its shape in words (the file's first
 * line, checked before cuDNN reads the rest: a file renamed or copied from elsewhere must not
 * give a shape another shape's kernel). */
static void plan_names(const struct cuda_sdpa_plan *p, char *name, size_t nn, char *what, size_t nw) {
    const char *dt = dtype_name((enum dtype)p->key[0]);
    long long k[6];
    for (int i = 0; i < 6; i++) k[i] = (long long)p->key[i];
    snprintf(name, nn, "%s-%lldx%lldx%lldx%lld-h%lld.json", dt, k[1], k[2], k[3], k[4], k[5]);
    snprintf(what, nw, "%s %lld %lld %lld %lld %lld", dt, k[1], k[2], k[3], k[4], k[5]);
}

/* Makes p's plan on handle from the kept file (cuDNN's JSON after the first line). true when it
 * did (p->plan and p->ws set). */
static bool plan_load(const struct cuda_ctx *ctx, cudnnHandle_t handle, struct cuda_sdpa_plan *p, const char *name,
                      const char *what) {
    char *text;
    const char *json;
    size_t jl;
    if (!cuda__cache_read(ctx, "cudnn-sdpa", name, "cudnn-sdpa plan", what, (size_t)64 << 20, &text, &json, &jl))
        return false;
    struct err err;
    memset(&err, 0, sizeof err);
    cudnnBackendDescriptor_t plan = NULL;
    int64_t got = 0, ws = 0;
    bool ok = plan_desc(p, CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan, &err) == 0;
    ok = ok && cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_JSON_REPRESENTATION, CUDNN_TYPE_CHAR,
                                        (int64_t)jl, (void *)json) == CUDNN_STATUS_SUCCESS;
    ok = ok && cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle) ==
                   CUDNN_STATUS_SUCCESS;
    ok = ok && cudnnBackendFinalize(plan) == CUDNN_STATUS_SUCCESS;
    ok = ok && cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &got,
                                        &ws) == CUDNN_STATUS_SUCCESS;
    mem_free(text);
    (void)cudaGetLastError();
    if (!ok) {
        log_debug("cuda sdpa: cuDNN refused the plan kept as %s: made again", name);
        if (plan) plan_release(p);
        return false;
    }
    const int64_t d = p->key[4] / p->key[5];
    p->scale = 1.0f / sqrtf((float)d);
    p->plan = plan;
    p->ws = ws;
    return true;
}

/* Keeps p's plan: cuDNN's JSON of it (a plan cuDNN cannot write out is a debug line). */
static void plan_save(const struct cuda_ctx *ctx, const struct cuda_sdpa_plan *p, const char *name,
                      const char *what) {
    int64_t n = 0;
    if (cudnnBackendGetAttribute(p->plan, CUDNN_ATTR_EXECUTION_PLAN_JSON_REPRESENTATION, CUDNN_TYPE_CHAR, 0, &n,
                                 NULL) != CUDNN_STATUS_SUCCESS ||
        n <= 0) {
        (void)cudaGetLastError();
        log_debug("cuda sdpa: this engine's plan cannot be written out: not kept");
        return;
    }
    char *json = (char *)mem_try_alloc((size_t)n);
    if (!json) return;
    int64_t got = 0;
    cudnnStatus_t st =
        cudnnBackendGetAttribute(p->plan, CUDNN_ATTR_EXECUTION_PLAN_JSON_REPRESENTATION, CUDNN_TYPE_CHAR, n, &got, json);
    size_t len = st == CUDNN_STATUS_SUCCESS ? (size_t)(got < n ? got : n) : 0;
    while (len > 0 && json[len - 1] == 0) len--; /* the text, not its terminator */
    if (len > 0) cuda__cache_write(ctx, "cudnn-sdpa", name, "cudnn-sdpa plan", what, json, len);
    mem_free(json);
}

/* Makes p's plan on ctx's handle, from the disk cache when it holds it; a failure is logged,
 * not returned (the own kernels take the shape, p->plan stays NULL). */
static void plan_build(struct cuda_ctx *ctx, struct cuda_sdpa_plan *p) {
    struct err err;
    memset(&err, 0, sizeof err);
    double t0 = clock_now();
    char name[160], what[160];
    plan_names(p, name, sizeof name, what, sizeof what);
    if (plan_load(ctx, ctx->cudnn, p, name, what)) {
        p->built_s = clock_now() - t0;
        log_debug("cuda sdpa: %s [%lld, %lld, %lld] x [%lld, %lld], %lld heads: cuDNN plan kept as %s, read in %.3f s",
                  dtype_name((enum dtype)p->key[0]), (long long)p->key[1], (long long)p->key[2],
                  (long long)p->key[4], (long long)p->key[3], (long long)p->key[4], (long long)p->key[5], name,
                  p->built_s);
        return;
    }
    int rc = plan_init(ctx->cudnn, p, &err);
    p->built_s = clock_now() - t0;
    if (rc) {
        log_warn("cuda sdpa: device %d: %s [%lld, %lld, %lld] x [%lld, %lld]: no cuDNN plan (%s): kiln's kernels "
                 "take it",
                 ctx->device, dtype_name((enum dtype)p->key[0]), (long long)p->key[1], (long long)p->key[2],
                 (long long)p->key[4], (long long)p->key[3], (long long)p->key[4], err.msg);
        plan_release(p);
    }
    (void)cudaGetLastError(); /* a rejected configuration must not leave a CUDA error behind */
    log_debug("cuda sdpa: %s [%lld, %lld, %lld] x [%lld, %lld], %lld heads: %s in %.3f s",
              dtype_name((enum dtype)p->key[0]), (long long)p->key[1], (long long)p->key[2], (long long)p->key[4],
              (long long)p->key[3], (long long)p->key[4], (long long)p->key[5],
              p->plan ? "cuDNN plan made" : "no cuDNN plan, kiln's own kernels take it", p->built_s);
    if (p->plan) plan_save(ctx, p, name, what);
}

/* The plan for key: found, or made now. 0 with *out set, or a status. */
static int plan_get(struct cuda_ctx *ctx, const int64_t key[6], struct cuda_sdpa_plan **out, struct err *err) {
    struct cuda_sdpa *s = ctx->sdpa;
    for (int i = 0; i < s->n_plans; i++)
        if (memcmp(s->plans[i]->key, key, sizeof s->plans[i]->key) == 0) {
            *out = s->plans[i];
            return 0;
        }
    if (s->n_plans == s->cap_plans) {
        int cap = s->cap_plans ? s->cap_plans * 2 : 16;
        struct cuda_sdpa_plan **a = (struct cuda_sdpa_plan **)mem_try_realloc(s->plans, (size_t)cap * sizeof *a);
        if (!a) return err_set(err, STATUS_ERR_NOMEM, "cuda sdpa: out of host memory for the plan table");
        s->plans = a;
        s->cap_plans = cap;
    }
    struct cuda_sdpa_plan *p = (struct cuda_sdpa_plan *)mem_try_calloc(1, sizeof *p);
    if (!p) return err_set(err, STATUS_ERR_NOMEM, "cuda sdpa: out of host memory for a plan");
    memcpy(p->key, key, sizeof p->key);
    s->plans[s->n_plans++] = p;
    plan_build(ctx, p);
    *out = p;
    return 0;
}

/* ===== Running ===== */

/* Runs p's plan once on ctx->stream with the given pointers and workspace. */
static cudnnStatus_t sdpa_exec(struct cuda_ctx *ctx, const struct cuda_sdpa_plan *p, void *const ptrs[4],
                               void *ws) {
    float scale = p->scale; /* read by cuDNN during the call */
    int64_t uids[5] = {SDPA_UID_Q, SDPA_UID_K, SDPA_UID_V, SDPA_UID_O, SDPA_UID_SCALE};
    void *all[5] = {ptrs[0], ptrs[1], ptrs[2], ptrs[3], &scale};
    cudnnBackendDescriptor_t pack = NULL;
    cudnnStatus_t s = cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &pack);
    if (s != CUDNN_STATUS_SUCCESS) return s;
    s = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, 5, uids);
    if (s == CUDNN_STATUS_SUCCESS)
        s = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, 5, all);
    if (s == CUDNN_STATUS_SUCCESS)
        s = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws);
    if (s == CUDNN_STATUS_SUCCESS) s = cudnnBackendFinalize(pack);
    if (s == CUDNN_STATUS_SUCCESS) s = cudnnBackendExecute(ctx->cudnn, p->plan, pack);
    cudnnBackendDestroyDescriptor(pack);
    return s;
}

/* ===== Entry (cuda.cuh) ===== */

int cuda__attention_dnn(struct cuda_ctx *ctx, enum dtype dt, void *out, const void *q, const void *k, const void *v,
                        int64_t nb, int64_t nq, int64_t nk, int64_t c, int heads, bool causal, struct err *err) {
    if (!ctx->cudnn || !ctx->sdpa || causal || (dt != DTYPE_F16 && dt != DTYPE_BF16) || heads < 1 ||
        c % heads != 0)
        return 1;
    const int64_t d = c / heads;
    if (d % 8 != 0 || c % 8 != 0 || ((uintptr_t)out | (uintptr_t)q | (uintptr_t)k | (uintptr_t)v) % 16 != 0)
        return 1;
    const int64_t key[6] = {(int64_t)dt, nb, nq, nk, c, heads};
    struct cuda_sdpa_plan *p = NULL;
    int rc = plan_get(ctx, key, &p, err);
    if (rc) return rc;
    if (!p->plan) return 1; /* no engine takes the shape */
    void *ws = NULL;
    if (p->ws > 0) { /* taken now: cuda__work may move the scratch */
        ws = cuda__work(ctx, (size_t)p->ws, "cuDNN attention workspace", &rc, err);
        if (!ws) return rc;
    }
    void *const ptrs[4] = {(void *)q, (void *)k, (void *)v, out};
    cudnnStatus_t s = sdpa_exec(ctx, p, ptrs, ws);
    if (s != CUDNN_STATUS_SUCCESS)
        return cuda_dnn_error(err, s, "cudnnBackendExecute(SDPA_FWD)", __func__, __FILE__, __LINE__);
    return 0;
}

/* ===== Lifecycle (cuda.cuh) ===== */

int cuda__sdpa_open(struct cuda_ctx *ctx, struct err *err) {
    struct cuda_sdpa *s = (struct cuda_sdpa *)mem_try_calloc(1, sizeof *s);
    if (!s) return err_set(err, STATUS_ERR_NOMEM, "cuda sdpa: out of host memory");
    ctx->sdpa = s;
    return 0;
}

void cuda__sdpa_free(struct cuda_ctx *ctx) {
    struct cuda_sdpa *s = ctx->sdpa;
    if (!s) return;
    for (int i = 0; i < s->n_plans; i++) {
        plan_release(s->plans[i]);
        mem_free(s->plans[i]);
    }
    mem_free(s->plans);
    mem_free(s);
    ctx->sdpa = NULL;
}

#endif /* KILN_HAVE_CUDNN */
