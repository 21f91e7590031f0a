/* api/routes_info.c -- what the server tells about itself: /object_info[/{class}],
 * /system_stats, /embeddings, /extensions, /models[/{folder}], /features, /gpus, /metrics
 * (COMFY_API.md §3.3, §3.4, §3.7). GET / is routes_web.c's.
 * Owns: nothing past one request.
 * Must not: change any state.
 * Threads: CivetWeb handler threads. */
#include "api/internal.h"

#include "base/mem.h"
#include "graph/json.h"
#include "graph/registry.h"

#include <stdio.h>
#include <string.h>
#include <sys/sysinfo.h>

/* ===== Nodes ===== */

void api__get_object_info(struct http_req *r, const char *arg) {
    http_reply_json(r, 200, graph_object_info(&r->srv->opts.paths));
}

void api__get_object_info_class(struct http_req *r, const char *arg) {
    json_t *j = json_object();
    const struct node_class *cls = graph_class_find(arg);
    if (cls) json_object_set_new(j, arg, graph_object_info_class(cls, &r->srv->opts.paths));
    http_reply_json(r, 200, j); /* {} for an unknown class, as ComfyUI */
}

/* ===== System ===== */

/* MemAvailable from /proc/meminfo (psutil's "available"), or sysinfo's free RAM. */
static uint64_t ram_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    unsigned long long kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) break;
    if (f) fclose(f);
    if (kb) return (uint64_t)kb * 1024;
    struct sysinfo si;
    return sysinfo(&si) == 0 ? (uint64_t)si.freeram * si.mem_unit : 0;
}

void api__get_system_stats(struct http_req *r, const char *arg) {
    struct api_server *srv = r->srv;
    struct sysinfo si;
    uint64_t ram_total = sysinfo(&si) == 0 ? (uint64_t)si.totalram * si.mem_unit : 0;
    json_t *argv = json_array();
    if (srv->opts.argv) {
        for (int i = 0; i < srv->opts.argc; i++) json_array_append_new(argv, json_string(srv->opts.argv[i]));
    } else {
        json_array_append_new(argv, json_string("kiln"));
        json_array_append_new(argv, json_string("serve"));
    }
    json_t *system = json_object();
    json_object_set_new(system, "os", json_string("posix"));
    json_object_set_new(system, "ram_total", graph_json_u64(ram_total));
    json_object_set_new(system, "ram_free", graph_json_u64(ram_available()));
    json_object_set_new(system, "comfyui_version", json_string(API_COMFYUI_VERSION));
    json_object_set_new(system, "required_frontend_version", json_string("1.27.10"));
    json_object_set_new(system, "installed_templates_version", json_string("0.1.95"));
    json_object_set_new(system, "required_templates_version", json_string("0.1.95"));
    json_object_set_new(system, "python_version", json_string("kiln " API_VERSION " (C11, no Python)"));
    json_object_set_new(system, "pytorch_version", json_string("kiln " API_VERSION " (no PyTorch)"));
    json_object_set_new(system, "embedded_python", json_false());
    json_object_set_new(system, "argv", argv);
    json_object_set_new(system, "server", json_string("kiln"));
    json_object_set_new(system, "kiln_version", json_string(API_VERSION));

    json_t *devices = json_array();
    for (int i = 0; i < srv->n_devices; i++) { /* device 0 (the primary) first */
        struct sched_device_info info;
        sched_device_info(srv->sched, i, &info);
        json_t *d = json_object();
        json_object_set_new(d, "name", json_string(info.name));
        json_object_set_new(d, "type", json_string(info.kind == SCHED_DEVICE_CUDA ? "cuda" : "cpu"));
        json_object_set_new(d, "index", json_integer(info.index));
        json_object_set_new(d, "vram_total", graph_json_u64(info.mem_total));
        json_object_set_new(d, "vram_free", graph_json_u64(info.mem_free));
        json_object_set_new(d, "torch_vram_total", json_integer(0));
        json_object_set_new(d, "torch_vram_free", json_integer(0));
        json_object_set_new(d, "models", sched_device_models_json(srv->sched, i)); /* kiln: where weights live */
        json_array_append_new(devices, d);
    }
    json_t *j = json_object();
    json_object_set_new(j, "system", system);
    json_object_set_new(j, "devices", devices);
    http_reply_json(r, 200, j);
}

void api__get_gpus(struct http_req *r, const char *arg) { http_reply_json(r, 200, sched_gpus_json(r->srv->sched)); }

void api__get_features(struct http_req *r, const char *arg) { http_reply_json(r, 200, api__features(r->srv)); }

void api__get_extensions(struct http_req *r, const char *arg) { http_reply_json(r, 200, json_array()); }

void api__get_metrics(struct http_req *r, const char *arg) {
    char *text = sched_metrics_text(r->srv->sched);
    http_reply(r, 200, "text/plain; version=0.0.4; charset=utf-8", text, strlen(text), NULL);
    mem_free(text);
}

/* ===== Models ===== */

/* ComfyUI's folder_names_and_paths keys, in its order (CO:folder_paths.py). */
static const char *const MODEL_FOLDERS[] = {
    "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
    "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen", "upscale_models",
    "custom_nodes", "hypernetworks", "photomaker", "classifiers", "model_patches", "audio_encoders",
};

void api__get_models(struct http_req *r, const char *arg) {
    json_t *j = json_array();
    for (size_t i = 0; i < sizeof MODEL_FOLDERS / sizeof MODEL_FOLDERS[0]; i++)
        json_array_append_new(j, json_string(MODEL_FOLDERS[i]));
    http_reply_json(r, 200, j);
}

/* Lists models/<folder> into a JSON array; strip_ext drops extensions (/embeddings). */
static void reply_file_list(struct http_req *r, const char *folder, bool strip_ext) {
    struct graph_strlist list = {0};
    struct err err = {0};
    if (graph_list_model_files(&r->srv->opts.paths, folder, &list, &err)) {
        graph_strlist_deinit(&list);
        http_reply_error(r, 500, "list_failed", "Cannot list models/%s: %s", folder, err.msg);
        return;
    }
    json_t *j = json_array();
    for (int i = 0; i < list.n; i++) {
        char *s = list.items[i];
        if (strip_ext) {
            char *dot = strrchr(s, '.'), *slash = strrchr(s, '/');
            if (dot && (!slash || dot > slash + 1) && dot != s) *dot = 0;
        }
        json_array_append_new(j, json_string(s));
    }
    graph_strlist_deinit(&list);
    http_reply_json(r, 200, j);
}

void api__get_models_folder(struct http_req *r, const char *arg) {
    /* the legacy names map to their new folders */
    const char *folder = strcmp(arg, "unet") == 0 ? "diffusion_models" : strcmp(arg, "clip") == 0 ? "text_encoders" : arg;
    for (size_t i = 0; i < sizeof MODEL_FOLDERS / sizeof MODEL_FOLDERS[0]; i++) {
        if (strcmp(folder, MODEL_FOLDERS[i]) == 0) {
            reply_file_list(r, folder, false);
            return;
        }
    }
    http_reply_error(r, 404, "not_found", "Unknown model folder '%s'", arg);
}

void api__get_embeddings(struct http_req *r, const char *arg) { reply_file_list(r, "embeddings", true); }
