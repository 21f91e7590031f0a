/* graph/registry.h -- node classes: what a workflow node declares (inputs, outputs, widgets)
 * and how it runs. The contract between the executor and every file in graph/nodes/.
 * Owns: the class table (static, built from graph/nodes/list.c plus test registrations) and
 * the node_run context handed to a node's run function.
 * Must not: know any class by name outside graph/nodes/ (the executor only calls run()).
 * Threads: the table is read-only after start-up (graph_registry_add is for start-up/tests);
 * a node_run belongs to the worker thread that executes the prompt.
 *
 * WRITING A NODE. A file in graph/nodes/ defines one `const struct node_class NODE_<Name>`
 * per class_type with C11 designated initializers and adds it to graph/nodes/list.c:
 *
 *     static const struct node_input empty_latent_inputs[] = {
 *         {.name = "width", .kind = NODE_INPUT_INT, .flags = NODE_IN_DEFAULT | NODE_IN_MIN |
 *          NODE_IN_MAX | NODE_IN_STEP, .int_default = 512, .int_min = 16, .int_max = 16384,
 *          .int_step = 8, .tooltip = "The width of the latent images in pixels."},
 *         ...
 *         NODE_INPUTS_END,
 *     };
 *     static const struct node_output empty_latent_outputs[] = {
 *         {.type = "LATENT", .tooltip = "The empty latent image batch."}, NODE_OUTPUTS_END,
 *     };
 *     const struct node_class NODE_EmptyLatentImage = {
 *         .name = "EmptyLatentImage", .display_name = "Empty Latent Image", .category = "latent",
 *         .required = empty_latent_inputs, .outputs = empty_latent_outputs, .run = run_empty,
 *     };
 *
 * RUNNING. run() gets the node's declared inputs in declaration order (required, then
 * optional); an absent optional input is VALUE_NONE. Literal inputs arrive already coerced by
 * validation (INT as int64, FLOAT as double, STRING, BOOLEAN, COMBO as STRING); linked inputs
 * are the source node's output values. Inputs are borrowed: to keep or return an input object
 * take a reference (value_copy / gobj_ref). run() fills outputs[0..n_outputs-1] (they start as
 * VALUE_NONE; each holds one owned reference afterwards) and may add keys to ctx->ui (the
 * history/`executed` payload, e.g. {"images": [...]}). It returns 0, or a negative status with
 * err filled: the message becomes execution_error's exception_message. */
#ifndef KILN_GRAPH_REGISTRY_H
#define KILN_GRAPH_REGISTRY_H

#include "base/err.h"
#include "graph/value.h"

#include <jansson.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ===== Folders ===== */

/* The directories a prompt may read and write (ComfyUI's folder_paths). Borrowed strings. */
struct graph_paths {
    const char *models;                  /* models/ (checkpoints/, loras/, embeddings/, ...) */
    const char *input;                   /* input/ (LoadImage, uploads) */
    const char *output;                  /* output/ (SaveImage) */
    const char *temp;                    /* temp/ (PreviewImage) */
};

/* A growable list of owned strings (combo options, file lists). Zero-initialise to start. */
struct graph_strlist {
    char **items;                        /* n strings, each mem_alloc'd */
    int n;
    int cap;
};

void graph_strlist_push(struct graph_strlist *l, const char *s);  /* copies s */
void graph_strlist_sort(struct graph_strlist *l);                  /* byte order (= Python str order) */
int graph_strlist_find(const struct graph_strlist *l, const char *s); /* index or -1 */
void graph_strlist_deinit(struct graph_strlist *l);

/* Lists the model files under paths->models/<folder> recursively, as relative paths with '/',
 * keeping ComfyUI's extensions (.ckpt .pt .pt2 .bin .pth .safetensors .pkl .sft), sorted.
 * A missing folder gives an empty list (not an error). */
int graph_list_model_files(const struct graph_paths *paths, const char *folder, struct graph_strlist *out,
                           struct err *err);

/* Resolves the file `name` of models/<folder> (as listed above) into path[n]. Refuses names
 * that escape the folder. Returns STATUS_ERR_NOT_FOUND with ComfyUI's message ("Model in
 * folder 'checkpoints' with filename 'x' not found.") when there is no such file. */
int graph_model_path(const struct graph_paths *paths, const char *folder, const char *name, char *path, size_t n,
                     struct err *err);

/* ===== Inputs ===== */

enum node_input_kind {
    NODE_INPUT_INT,                      /* widget, value INT (int64; seeds: uint64 bits) */
    NODE_INPUT_FLOAT,                    /* widget, value FLOAT (double) */
    NODE_INPUT_STRING,                   /* widget, value STRING */
    NODE_INPUT_BOOLEAN,                  /* widget, value BOOL */
    NODE_INPUT_COMBO,                    /* legacy combo: the option list is the wire type; value STRING */
    NODE_INPUT_OBJECT,                   /* a socket only: .type names it ("MODEL", "LATENT", ...) */
};

/* Which optional fields of a node_input are set; also boolean widget options. */
enum node_input_flags {
    NODE_IN_DEFAULT = 1 << 0,            /* has a default (int_/float_/string_/bool_/combo_default) */
    NODE_IN_MIN = 1 << 1,                /* int_min / float_min is set (validated) */
    NODE_IN_MAX = 1 << 2,                /* int_max / float_max is set (validated) */
    NODE_IN_STEP = 1 << 3,               /* int_step / float_step is set (UI only) */
    NODE_IN_ROUND = 1 << 4,              /* float_round is set (UI only) */
    NODE_IN_MAX_U64 = 1 << 5,            /* INT max is 2^64-1 (seeds; implies NODE_IN_MAX) */
    NODE_IN_CONTROL_AFTER_GENERATE = 1 << 6, /* "control_after_generate": true */
    NODE_IN_MULTILINE = 1 << 7,          /* STRING "multiline": true */
    NODE_IN_DYNAMIC_PROMPTS = 1 << 8,    /* STRING "dynamicPrompts": true */
    NODE_IN_IMAGE_UPLOAD = 1 << 9,       /* COMBO "image_upload": true */
};

/* Custom validation of one literal input (ComfyUI's VALIDATE_INPUTS): when set, the min/max/combo
 * checks are skipped for that input and this is called instead. Returns true when valid; else
 * writes the reason (e.g. "Invalid image file: x.png") into why[n]. */
typedef bool (*node_validate_fn)(const struct graph_paths *paths, const struct value *v, char *why, size_t n);

/* Lists combo options at run time (e.g. the checkpoints folder). Appends to out. */
typedef int (*node_options_fn)(const struct graph_paths *paths, struct graph_strlist *out, struct err *err);

struct node_input {
    const char *name;                    /* wire name ("seed"); NULL ends an input array */
    enum node_input_kind kind;
    const char *type;                    /* OBJECT: wire type ("MODEL", "LATENT", ...); else NULL */
    unsigned flags;                      /* enum node_input_flags */
    int64_t int_default, int_min, int_max, int_step;                    /* INT */
    double float_default, float_min, float_max, float_step, float_round; /* FLOAT */
    const char *string_default;          /* STRING */
    bool bool_default;                   /* BOOLEAN */
    const char *const *options;          /* COMBO: static NULL-terminated list, or NULL ... */
    node_options_fn list_options;        /* ... or a function listing them at run time */
    const char *combo_default;           /* COMBO default (with NODE_IN_DEFAULT) */
    const char *tooltip;                 /* or NULL */
    node_validate_fn validate;           /* or NULL; see node_validate_fn */
};

#define NODE_INPUTS_END {.name = NULL}

/* Hidden inputs are not values: the node reads them from node_run (prompt, extra_pnginfo,
 * node_id); they are declared only so /object_info can list them. */
struct node_hidden {
    const char *name;                    /* "prompt"; NULL ends the array */
    const char *type;                    /* "PROMPT", "EXTRA_PNGINFO", "UNIQUE_ID" */
};

#define NODE_HIDDEN_END {.name = NULL}

/* ===== Outputs ===== */

struct node_output {
    const char *type;                    /* wire type ("LATENT"); NULL ends an output array */
    const char *name;                    /* RETURN_NAMES entry, or NULL for the type */
    bool is_list;                        /* OUTPUT_IS_LIST */
    const char *tooltip;                 /* OUTPUT_TOOLTIPS entry, or NULL */
};

#define NODE_OUTPUTS_END {.type = NULL}

/* ===== Run context ===== */

struct node_run;
struct node_host_i; /* graph/exec.h: what the program running the executor offers nodes */

/* One node class (a ComfyUI class_type). All arrays end with their *_END sentinel; any may be
 * NULL for "none". */
struct node_class {
    const char *name;                    /* class_type, e.g. "KSampler" */
    const char *display_name;            /* NODE_DISPLAY_NAME_MAPPINGS entry, or NULL for name */
    const char *category;                /* e.g. "sampling"; NULL means "sd" */
    const char *description;             /* DESCRIPTION, or NULL for "" */
    bool output_node;                    /* OUTPUT_NODE: an execution target */
    bool deprecated;                     /* emitted as "deprecated": true when set */
    bool experimental;                   /* emitted as "experimental": true when set */
    bool not_idempotent;                 /* never reuse its cached outputs (cache hook) */
    const struct node_input *required;   /* required inputs, in order */
    const struct node_input *optional;   /* optional inputs, in order */
    const struct node_hidden *hidden;    /* hidden inputs */
    const struct node_output *outputs;   /* RETURN_TYPES */
    int (*run)(struct node_run *ctx, const struct value *inputs, struct value *outputs, struct err *err);
    /* IS_CHANGED (optional): a fingerprint of what the node reads besides its inputs (a file's
     * contents), from its literal inputs in declaration order (linked inputs are VALUE_NONE).
     * Output caches mix it into the node's key, so a changed file re-runs the node. Returns 0
     * with the text in out[n], or a negative status when it cannot tell: the node is then never
     * reused (ComfyUI's NaN). Runs on the worker thread before the prompt. */
    int (*is_changed)(const struct graph_paths *paths, const struct value *inputs, char *out, size_t n);
};

/* What a running node sees. Filled by the executor; nodes read it and call the helpers below. */
struct node_run {
    const char *node_id;                 /* the node's unique id in the prompt */
    const struct node_class *cls;
    const json_t *prompt;                /* hidden PROMPT: the validated prompt (coerced) */
    const json_t *extra_pnginfo;         /* hidden EXTRA_PNGINFO (an object), or NULL */
    const struct graph_paths *paths;     /* folders */
    json_t *ui;                          /* empty object; a node adds its UI output here */
    void *engine;                        /* opaque: what the model nodes share (set by the owner) */
    const atomic_bool *interrupt;        /* set from another thread to stop the prompt; may be NULL */
    bool disable_metadata;               /* --disable-metadata: SaveImage writes no text chunks */
    const char *exception_type;          /* set by node_set_exception_type; NULL = from status */
    const struct node_host_i *host;      /* the host's services (graph/exec.h), or NULL */
    void *host_user;                     /* passed back to host's functions */
    void *exec__;                        /* executor-private (progress forwarding) */
};

/* Reports node-level progress (value of max, e.g. sampler step+1 of steps). Returns
 * STATUS_ERR_INTERRUPTED (and sets err) when the interrupt flag is set, as ComfyUI's progress
 * hook does: a sampler returns that status at once. */
int node_progress(struct node_run *ctx, int64_t value, int64_t max, struct err *err);

/* True when an interrupt was requested (for long nodes without progress). */
bool node_interrupted(const struct node_run *ctx);

/* Overrides execution_error's exception_type (static string, e.g. "FileNotFoundError"). */
void node_set_exception_type(struct node_run *ctx, const char *type);

/* ===== Registry ===== */

/* Number of inputs (required + optional) and outputs of a class; index i of run()'s inputs is
 * the i-th of required then optional. */
int node_class_n_inputs(const struct node_class *cls);
int node_class_n_outputs(const struct node_class *cls);
/* The i-th declared input (required then optional), or NULL. Sets *optional when given. */
const struct node_input *node_class_input(const struct node_class *cls, int i, bool *optional);
/* Index of the input named `name`, or -1. */
int node_class_input_index(const struct node_class *cls, const char *name);

/* Wire type of an input ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", or .type). */
const char *node_input_type_name(const struct node_input *in);

/* Looks a class up by class_type; NULL when unknown. */
const struct node_class *graph_class_find(const char *name);

/* All registered classes, in registration order (list.c order, then added ones). */
int graph_class_count(void);
const struct node_class *graph_class_at(int i);

/* Adds a class (tests, plug-ins). Start-up only: not thread-safe. A class with the name of an
 * existing one replaces it. `cls` must outlive the registry. */
void graph_registry_add(const struct node_class *cls);
/* Removes every class added with graph_registry_add (tests). */
void graph_registry_reset(void);

/* Combo options of an input (static list or listed now). Appends to out. */
int node_input_options(const struct node_input *in, const struct graph_paths *paths, struct graph_strlist *out,
                       struct err *err);

/* The input's wire config: [TYPE] or [TYPE, {options}] (legacy combos put the list first), as
 * /object_info and validation errors' input_config show it. New reference. Large integers
 * (seed max) are graph_json big-int strings: dump with graph_json_dumps. */
json_t *node_input_config(const struct node_input *in, const struct graph_paths *paths);

/* /object_info entry of one class (ComfyUI v0.3.64 shape and key order). New reference. */
json_t *graph_object_info_class(const struct node_class *cls, const struct graph_paths *paths);
/* /object_info: {"<class>": entry, ...} for every class. New reference. */
json_t *graph_object_info(const struct graph_paths *paths);

#endif
