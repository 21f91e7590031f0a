/* graph/registry.c -- the node class table, /object_info, and folder listings for combos.
 * Owns: the table of classes (built-ins from graph/nodes/list.c, then test additions).
 * Must not: run nodes.
 * Threads: graph_registry_add/reset at start-up only; lookups from any thread afterwards.
 * Ownership: json_t returned are new references; strlists own their strings. */
#include "graph/registry.h"
#include "io/savepath.h"

#include "base/base.h"
#include "base/mem.h"
#include "base/status.h"
#include "graph/json.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

/* graph/nodes/list.c: every built-in class, NULL-terminated. */
extern const struct node_class *const graph__builtin_classes[];

/* ===== String lists ===== */

void graph_strlist_push(struct graph_strlist *l, const char *s) {
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->items = mem_realloc(l->items, (size_t)l->cap * sizeof *l->items);
    }
    l->items[l->n++] = mem_strdup(s);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

void graph_strlist_sort(struct graph_strlist *l) {
    if (l->n > 1) qsort(l->items, (size_t)l->n, sizeof *l->items, cmp_str);
}

int graph_strlist_find(const struct graph_strlist *l, const char *s) {
    for (int i = 0; i < l->n; i++)
        if (strcmp(l->items[i], s) == 0) return i;
    return -1;
}

void graph_strlist_deinit(struct graph_strlist *l) {
    for (int i = 0; i < l->n; i++) mem_free(l->items[i]);
    mem_free(l->items);
    memset(l, 0, sizeof *l);
}

/* ===== Model folders (ComfyUI folder_paths) ===== */

static const char *const MODEL_EXTS[] = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft", NULL};

static bool has_model_ext(const char *name) {
    const char *dot = strrchr(name, '.');
    if (!dot || dot == name) return false; /* splitext keeps ".pt" alone as a stem */
    for (int i = 0; MODEL_EXTS[i]; i++)
        if (strcasecmp(dot, MODEL_EXTS[i]) == 0) return true;
    return false;
}

/* Walks dir/rel recursively (following links, skipping .git), adding matching files. */
static void walk_models(const char *root, const char *rel, struct graph_strlist *out, int depth) {
    if (depth > 32) return; /* a symlink loop */
    char dir[4096];
    if (snprintf(dir, sizeof dir, "%s%s%s", root, *rel ? "/" : "", rel) >= (int)sizeof dir) return;
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char path[4096], sub[4096];
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path) continue;
        if (snprintf(sub, sizeof sub, "%s%s%s", rel, *rel ? "/" : "", e->d_name) >= (int)sizeof sub) continue;
        struct stat st;
        if (stat(path, &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) {
            if (strcmp(e->d_name, ".git") != 0) walk_models(root, sub, out, depth + 1);
        } else if (has_model_ext(e->d_name) && graph_strlist_find(out, sub) < 0) {
            graph_strlist_push(out, sub);
        }
    }
    closedir(d);
}

int graph_list_model_files(const struct graph_paths *paths, const char *folder, struct graph_strlist *out,
                           struct err *err) {
    if (!paths || !paths->models) return 0;
    char root[4096];
    snprintf(root, sizeof root, "%s/%s", paths->models, folder);
    struct graph_strlist found = {0};
    walk_models(root, "", &found, 0);
    graph_strlist_sort(&found);
    for (int i = 0; i < found.n; i++) graph_strlist_push(out, found.items[i]);
    graph_strlist_deinit(&found);
    return 0;
}

int graph_model_path(const struct graph_paths *paths, const char *folder, const char *name, char *path, size_t n,
                     struct err *err) {
    /* Normalise like os.path.relpath(os.path.join("/", name), "/"): ".." cannot climb out. */
    char rooted[4096], norm[4096];
    snprintf(rooted, sizeof rooted, "/%s", name);
    io_normpath(rooted, norm, sizeof norm);
    const char *rel = norm;
    while (*rel == '/') rel++;
    size_t len = strlen(rel);
    struct stat st;
    if (paths && paths->models && len) {
        int w = snprintf(path, n, "%s/%s/%s", paths->models, folder, rel);
        if (w > 0 && (size_t)w < n && stat(path, &st) == 0 && S_ISREG(st.st_mode)) return 0;
    }
    if (n) path[0] = 0;
    return err_set(err, STATUS_ERR_NOT_FOUND, "Model in folder '%s' with filename '%s' not found.", folder, name);
}

/* ===== Class shape ===== */

static int count_inputs(const struct node_input *in) {
    int n = 0;
    while (in && in[n].name) n++;
    return n;
}

int node_class_n_inputs(const struct node_class *cls) {
    return count_inputs(cls->required) + count_inputs(cls->optional);
}

int node_class_n_outputs(const struct node_class *cls) {
    int n = 0;
    while (cls->outputs && cls->outputs[n].type) n++;
    return n;
}

const struct node_input *node_class_input(const struct node_class *cls, int i, bool *optional) {
    int nr = count_inputs(cls->required);
    if (i < 0) return NULL;
    if (i < nr) {
        if (optional) *optional = false;
        return &cls->required[i];
    }
    if (i - nr < count_inputs(cls->optional)) {
        if (optional) *optional = true;
        return &cls->optional[i - nr];
    }
    return NULL;
}

int node_class_input_index(const struct node_class *cls, const char *name) {
    int n = node_class_n_inputs(cls);
    for (int i = 0; i < n; i++)
        if (strcmp(node_class_input(cls, i, NULL)->name, name) == 0) return i;
    return -1;
}

const char *node_input_type_name(const struct node_input *in) {
    switch (in->kind) {
    case NODE_INPUT_INT: return "INT";
    case NODE_INPUT_FLOAT: return "FLOAT";
    case NODE_INPUT_STRING: return "STRING";
    case NODE_INPUT_BOOLEAN: return "BOOLEAN";
    case NODE_INPUT_COMBO: return "COMBO";
    case NODE_INPUT_OBJECT: return in->type ? in->type : "*";
    }
    return "*";
}

/* ===== The table ===== */

#define MAX_ADDED 256

static const struct node_class *added[MAX_ADDED];
static int n_added;

static int n_builtin(void) {
    int n = 0;
    while (graph__builtin_classes[n]) n++;
    return n;
}

void graph_registry_add(const struct node_class *cls) {
    ASSERT(cls && cls->name);
    for (int i = 0; i < n_added; i++)
        if (strcmp(added[i]->name, cls->name) == 0) {
            added[i] = cls;
            return;
        }
    ASSERT(n_added < MAX_ADDED);
    added[n_added++] = cls;
}

void graph_registry_reset(void) { n_added = 0; }

const struct node_class *graph_class_find(const char *name) {
    if (!name) return NULL;
    for (int i = n_added - 1; i >= 0; i--) /* additions replace built-ins */
        if (strcmp(added[i]->name, name) == 0) return added[i];
    for (int i = 0; graph__builtin_classes[i]; i++)
        if (strcmp(graph__builtin_classes[i]->name, name) == 0) return graph__builtin_classes[i];
    return NULL;
}

/* Built-ins replaced by an addition are listed once, at the addition's place. */
static bool replaced(const struct node_class *cls) {
    for (int i = 0; i < n_added; i++)
        if (strcmp(added[i]->name, cls->name) == 0) return true;
    return false;
}

int graph_class_count(void) {
    int n = n_added;
    for (int i = 0; graph__builtin_classes[i]; i++)
        if (!replaced(graph__builtin_classes[i])) n++;
    return n;
}

const struct node_class *graph_class_at(int i) {
    int nb = n_builtin();
    for (int k = 0; k < nb; k++) {
        if (replaced(graph__builtin_classes[k])) continue;
        if (i-- == 0) return graph__builtin_classes[k];
    }
    return i >= 0 && i < n_added ? added[i] : NULL;
}

/* ===== Input configs and /object_info ===== */

int node_input_options(const struct node_input *in, const struct graph_paths *paths, struct graph_strlist *out,
                       struct err *err) {
    if (in->options)
        for (int i = 0; in->options[i]; i++) graph_strlist_push(out, in->options[i]);
    if (in->list_options) return in->list_options(paths, out, err);
    return 0;
}

json_t *node_input_config(const struct node_input *in, const struct graph_paths *paths) {
    json_t *cfg = json_array();
    if (in->kind == NODE_INPUT_COMBO) {
        struct graph_strlist opts = {0};
        node_input_options(in, paths, &opts, NULL);
        json_t *list = json_array();
        for (int i = 0; i < opts.n; i++) json_array_append_new(list, json_string(opts.items[i]));
        graph_strlist_deinit(&opts);
        json_array_append_new(cfg, list);
    } else {
        json_array_append_new(cfg, json_string(node_input_type_name(in)));
    }

    json_t *o = json_object();
    unsigned f = in->flags;
    if (f & NODE_IN_DEFAULT) {
        switch (in->kind) {
        case NODE_INPUT_INT: json_object_set_new(o, "default", json_integer(in->int_default)); break;
        case NODE_INPUT_FLOAT: json_object_set_new(o, "default", json_real(in->float_default)); break;
        case NODE_INPUT_STRING:
            json_object_set_new(o, "default", json_string(in->string_default ? in->string_default : ""));
            break;
        case NODE_INPUT_BOOLEAN: json_object_set_new(o, "default", json_boolean(in->bool_default)); break;
        case NODE_INPUT_COMBO:
            if (in->combo_default) json_object_set_new(o, "default", json_string(in->combo_default));
            break;
        case NODE_INPUT_OBJECT: break;
        }
    }
    if (in->kind == NODE_INPUT_INT) {
        if (f & NODE_IN_MIN) json_object_set_new(o, "min", json_integer(in->int_min));
        if (f & NODE_IN_MAX_U64) json_object_set_new(o, "max", graph_json_u64(UINT64_MAX));
        else if (f & NODE_IN_MAX) json_object_set_new(o, "max", json_integer(in->int_max));
        if (f & NODE_IN_STEP) json_object_set_new(o, "step", json_integer(in->int_step));
    } else if (in->kind == NODE_INPUT_FLOAT) {
        if (f & NODE_IN_MIN) json_object_set_new(o, "min", json_real(in->float_min));
        if (f & NODE_IN_MAX) json_object_set_new(o, "max", json_real(in->float_max));
        if (f & NODE_IN_STEP) json_object_set_new(o, "step", json_real(in->float_step));
        if (f & NODE_IN_ROUND) json_object_set_new(o, "round", json_real(in->float_round));
    }
    if (f & NODE_IN_CONTROL_AFTER_GENERATE) json_object_set_new(o, "control_after_generate", json_true());
    if (f & NODE_IN_MULTILINE) json_object_set_new(o, "multiline", json_true());
    if (f & NODE_IN_DYNAMIC_PROMPTS) json_object_set_new(o, "dynamicPrompts", json_true());
    if (f & NODE_IN_IMAGE_UPLOAD) json_object_set_new(o, "image_upload", json_true());
    if (in->tooltip) json_object_set_new(o, "tooltip", json_string(in->tooltip));
    if (json_object_size(o)) json_array_append_new(cfg, o);
    else json_decref(o);
    return cfg;
}

static void add_section(json_t *input, json_t *order, const char *name, const struct node_input *ins,
                        const struct graph_paths *paths) {
    if (!ins) return;
    json_t *sec = json_object(), *names = json_array();
    for (int i = 0; ins[i].name; i++) {
        json_object_set_new(sec, ins[i].name, node_input_config(&ins[i], paths));
        json_array_append_new(names, json_string(ins[i].name));
    }
    json_object_set_new(input, name, sec);
    json_object_set_new(order, name, names);
}

json_t *graph_object_info_class(const struct node_class *cls, const struct graph_paths *paths) {
    json_t *info = json_object(), *input = json_object(), *order = json_object();
    add_section(input, order, "required", cls->required ? cls->required : (const struct node_input[]){NODE_INPUTS_END},
                paths);
    add_section(input, order, "optional", cls->optional, paths);
    if (cls->hidden) {
        json_t *sec = json_object(), *names = json_array();
        for (int i = 0; cls->hidden[i].name; i++) {
            json_object_set_new(sec, cls->hidden[i].name, json_string(cls->hidden[i].type));
            json_array_append_new(names, json_string(cls->hidden[i].name));
        }
        json_object_set_new(input, "hidden", sec);
        json_object_set_new(order, "hidden", names);
    }
    json_object_set_new(info, "input", input);
    json_object_set_new(info, "input_order", order);

    json_t *out = json_array(), *is_list = json_array(), *names = json_array(), *tips = json_array();
    bool any_tip = false;
    int no = node_class_n_outputs(cls);
    for (int i = 0; i < no; i++) {
        const struct node_output *o = &cls->outputs[i];
        json_array_append_new(out, json_string(o->type));
        json_array_append_new(is_list, json_boolean(o->is_list));
        json_array_append_new(names, json_string(o->name ? o->name : o->type));
        json_array_append_new(tips, json_string(o->tooltip ? o->tooltip : ""));
        any_tip |= o->tooltip != NULL;
    }
    json_object_set_new(info, "output", out);
    json_object_set_new(info, "output_is_list", is_list);
    json_object_set_new(info, "output_name", names);
    json_object_set_new(info, "name", json_string(cls->name));
    json_object_set_new(info, "display_name", json_string(cls->display_name ? cls->display_name : cls->name));
    json_object_set_new(info, "description", json_string(cls->description ? cls->description : ""));
    json_object_set_new(info, "python_module", json_string("nodes"));
    json_object_set_new(info, "category", json_string(cls->category ? cls->category : "sd"));
    json_object_set_new(info, "output_node", json_boolean(cls->output_node));
    if (any_tip) json_object_set_new(info, "output_tooltips", tips);
    else json_decref(tips);
    if (cls->deprecated) json_object_set_new(info, "deprecated", json_true());
    if (cls->experimental) json_object_set_new(info, "experimental", json_true());
    return info;
}

json_t *graph_object_info(const struct graph_paths *paths) {
    json_t *all = json_object();
    int n = graph_class_count();
    for (int i = 0; i < n; i++) {
        const struct node_class *cls = graph_class_at(i);
        json_object_set_new(all, cls->name, graph_object_info_class(cls, paths));
    }
    return all;
}
