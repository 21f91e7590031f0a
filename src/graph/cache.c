/* graph/cache.c -- the classic node output cache: entries keyed by input signature text.
 * Owns: the entries (values with one reference each, UI copies) and the current prompt's keys.
 * Must not: run nodes, touch anything outside the values it keeps.
 * Threads: the one worker that owns the cache.
 * Ownership: get() hands out new references; put() takes its own copies.
 *
 * DESIGN. A cache holds a few dozen entries (the nodes of the last prompts), so entries are a
 * flat array searched by a 64-bit hash of the key, then by the key text. The key of a node is
 * exec_signature() (class and inputs of the node and its whole upstream sub-graph, without
 * node ids) followed by one line per IS_CHANGED node in that sub-graph: class, literal inputs
 * and fingerprint, sorted. Pairing each fingerprint with its node's literal inputs keeps the
 * key exact when two LoadImage nodes swap files. */
#include "graph/cache.h"

#include "base/base.h"
#include "base/mem.h"
#include "graph/json.h"

#include <stdlib.h>
#include <string.h>

/* ===== Entries ===== */

struct cache_entry {
    uint64_t hash;                       /* hash_key(key) */
    char *key;                           /* owned */
    struct value *outputs;               /* n_outputs values, one reference each */
    int n_outputs;
    json_t *ui;                          /* private copy, or NULL */
};

struct graph_cache {
    struct cache_entry *entries;         /* n used of cap, in no particular order */
    int n, cap;
    char **keys;                         /* per node of the current prompt (NULL: no key) */
    uint64_t *key_hash;                  /* hash_key(keys[i]) */
    int n_keys;                          /* nodes of the current prompt (0 outside begin/end) */
    uint64_t hits;                       /* get() hits since graph_cache_new */
    struct exec_cache_i hook;            /* {.user = this, get, put} */
};

static uint64_t hash_key(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

static void entry_deinit(struct cache_entry *e) {
    for (int i = 0; i < e->n_outputs; i++) value_deinit(&e->outputs[i]);
    mem_free(e->outputs);
    mem_free(e->key);
    json_decref(e->ui);
    memset(e, 0, sizeof *e);
}

/* Removes entry i (order does not matter). */
static void entry_drop(struct graph_cache *c, int i) {
    entry_deinit(&c->entries[i]);
    c->entries[i] = c->entries[--c->n];
}

static int entry_find(const struct graph_cache *c, uint64_t hash, const char *key) {
    for (int i = 0; i < c->n; i++)
        if (c->entries[i].hash == hash && strcmp(c->entries[i].key, key) == 0) return i;
    return -1;
}

/* ===== Keys ===== */

/* The IS_CHANGED line of node j: "<class>\t<literal inputs>\t<fingerprint>", or NULL when the
 * fingerprint cannot be computed. mem_free the result. */
static char *changed_line(const struct graph_prompt *p, int j, const struct graph_paths *paths) {
    const struct graph_node *n = &p->nodes[j];
    struct value *in = mem_calloc((size_t)(n->n_inputs ? n->n_inputs : 1), sizeof *in);
    json_t *lits = json_array();
    for (int k = 0; k < n->n_inputs; k++) {
        if (n->inputs[k].kind != GRAPH_INPUT_LITERAL) continue;
        in[k] = n->inputs[k].literal; /* borrowed */
        const char *name = node_class_input(n->cls, k, NULL)->name;
        json_t *v = json_object_get(json_object_get(n->json, "inputs"), name);
        json_t *pair = json_array();
        json_array_append_new(pair, json_string(name));
        json_array_append(pair, v ? v : json_null());
        json_array_append_new(lits, pair);
    }
    char fp[512];
    int rc = n->cls->is_changed(paths, in, fp, sizeof fp);
    mem_free(in);
    char *line = NULL;
    if (rc == 0) {
        char *l = graph_json_dumps(lits, -1);
        size_t len = strlen(n->cls->name) + strlen(l) + strlen(fp) + 3;
        line = mem_alloc(len);
        snprintf(line, len, "%s\t%s\t%s", n->cls->name, l, fp);
        mem_free(l);
    }
    json_decref(lits);
    return line;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Key of node i; `lines` caches changed_line per node (NULL = not computed, "" marks failure
 * through `failed`). Returns NULL when some fingerprint failed. */
static char *node_key(const struct graph_prompt *p, int i, const struct graph_paths *paths, char **lines, bool *failed,
                      bool *done) {
    /* the node and its ancestors: depth-first over links */
    int *stack = mem_calloc((size_t)p->n_nodes, sizeof *stack);
    bool *seen = mem_calloc((size_t)p->n_nodes, sizeof *seen);
    char **mine = mem_calloc((size_t)p->n_nodes, sizeof *mine);
    int sp = 0, n_mine = 0;
    bool bad = false;
    stack[sp++] = i;
    seen[i] = true;
    while (sp) {
        int j = stack[--sp];
        const struct graph_node *n = &p->nodes[j];
        if (n->cls->is_changed) {
            if (!done[j]) {
                lines[j] = changed_line(p, j, paths);
                failed[j] = !lines[j];
                done[j] = true;
            }
            if (failed[j]) bad = true;
            else mine[n_mine++] = lines[j];
        }
        for (int k = 0; k < n->n_inputs; k++) {
            if (n->inputs[k].kind != GRAPH_INPUT_LINK || seen[n->inputs[k].src]) continue;
            seen[n->inputs[k].src] = true;
            stack[sp++] = n->inputs[k].src;
        }
    }
    char *key = NULL;
    if (!bad) {
        char *sig = exec_signature(p, i);
        qsort(mine, (size_t)n_mine, sizeof *mine, cmp_str);
        size_t len = strlen(sig) + 1;
        for (int k = 0; k < n_mine; k++) len += strlen(mine[k]) + 1;
        key = mem_alloc(len);
        size_t at = (size_t)snprintf(key, len, "%s", sig);
        for (int k = 0; k < n_mine; k++) at += (size_t)snprintf(key + at, len - at, "\n%s", mine[k]);
        mem_free(sig);
    }
    mem_free(stack);
    mem_free(seen);
    mem_free(mine);
    return key;
}

/* ===== Hook ===== */

static bool hook_get(void *user, const struct graph_prompt *p, int node, struct value *outputs, int n, json_t **ui) {
    struct graph_cache *c = user;
    *ui = NULL;
    if (node < 0 || node >= c->n_keys || !c->keys[node]) return false;
    int i = entry_find(c, c->key_hash[node], c->keys[node]);
    if (i < 0 || c->entries[i].n_outputs != n) return false;
    const struct cache_entry *e = &c->entries[i];
    for (int k = 0; k < n; k++) value_copy(&outputs[k], &e->outputs[k]);
    *ui = e->ui ? json_deep_copy(e->ui) : NULL;
    c->hits++;
    return true;
}

static void hook_put(void *user, const struct graph_prompt *p, int node, const struct value *outputs, int n,
                     const json_t *ui) {
    struct graph_cache *c = user;
    if (node < 0 || node >= c->n_keys || !c->keys[node]) return;
    int i = entry_find(c, c->key_hash[node], c->keys[node]);
    if (i >= 0) entry_drop(c, i);
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 16;
        c->entries = mem_realloc(c->entries, (size_t)c->cap * sizeof *c->entries);
    }
    struct cache_entry *e = &c->entries[c->n++];
    *e = (struct cache_entry){.hash = c->key_hash[node], .key = mem_strdup(c->keys[node]), .n_outputs = n};
    e->outputs = mem_calloc((size_t)(n ? n : 1), sizeof *e->outputs);
    for (int k = 0; k < n; k++) value_copy(&e->outputs[k], &outputs[k]);
    e->ui = ui ? json_deep_copy(ui) : NULL;
}

/* ===== API ===== */

struct graph_cache *graph_cache_new(void) {
    struct graph_cache *c = mem_calloc(1, sizeof *c);
    c->hook = (struct exec_cache_i){.user = c, .get = hook_get, .put = hook_put};
    return c;
}

void graph_cache_free(struct graph_cache *c) {
    if (!c) return;
    graph_cache_end(c);
    graph_cache_clear(c);
    mem_free(c->entries);
    mem_free(c);
}

void graph_cache_begin(struct graph_cache *c, const struct graph_prompt *p, const struct graph_paths *paths) {
    graph_cache_end(c);
    int nn = p->n_nodes;
    c->n_keys = nn;
    c->keys = mem_calloc((size_t)(nn ? nn : 1), sizeof *c->keys);
    c->key_hash = mem_calloc((size_t)(nn ? nn : 1), sizeof *c->key_hash);
    char **lines = mem_calloc((size_t)(nn ? nn : 1), sizeof *lines);
    bool *failed = mem_calloc((size_t)(nn ? nn : 1), sizeof *failed);
    bool *done = mem_calloc((size_t)(nn ? nn : 1), sizeof *done);
    for (int i = 0; i < nn; i++) {
        if (!p->nodes[i].valid) continue;
        c->keys[i] = node_key(p, i, paths, lines, failed, done);
        if (c->keys[i]) c->key_hash[i] = hash_key(c->keys[i]);
    }
    for (int i = 0; i < nn; i++) mem_free(lines[i]);
    mem_free(lines);
    mem_free(failed);
    mem_free(done);

    /* classic mode: keep only what this prompt can use */
    for (int e = 0; e < c->n;) {
        bool used = false;
        for (int i = 0; i < nn && !used; i++)
            used = c->keys[i] && c->key_hash[i] == c->entries[e].hash && strcmp(c->keys[i], c->entries[e].key) == 0;
        if (used) e++;
        else entry_drop(c, e);
    }
}

const struct exec_cache_i *graph_cache_hook(struct graph_cache *c) { return &c->hook; }

void graph_cache_end(struct graph_cache *c) {
    for (int i = 0; i < c->n_keys; i++) mem_free(c->keys[i]);
    mem_free(c->keys);
    mem_free(c->key_hash);
    c->keys = NULL;
    c->key_hash = NULL;
    c->n_keys = 0;
}

void graph_cache_clear(struct graph_cache *c) {
    while (c->n) entry_drop(c, c->n - 1);
}

int graph_cache_drop_types(struct graph_cache *c, const char *const *types) {
    int dropped = 0;
    for (int e = 0; e < c->n;) {
        bool hit = false;
        for (int k = 0; k < c->entries[e].n_outputs && !hit; k++) {
            const struct value *v = &c->entries[e].outputs[k];
            if (v->kind != VALUE_OBJECT || !v->obj) continue;
            for (int t = 0; types[t] && !hit; t++) hit = strcmp(v->obj->type, types[t]) == 0;
        }
        if (hit) {
            entry_drop(c, e);
            dropped++;
        } else {
            e++;
        }
    }
    return dropped;
}

int graph_cache_count(const struct graph_cache *c) { return c->n; }
uint64_t graph_cache_hits(const struct graph_cache *c) { return c->hits; }
