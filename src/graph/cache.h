/* graph/cache.h -- node outputs kept between prompts, ComfyUI's "classic" cache mode: a node
 * whose input signature (its whole upstream sub-graph, plus IS_CHANGED fingerprints) matches
 * an entry is not run again; after a new prompt starts, entries it cannot use are dropped.
 * Owns: the entries (their output values hold object references; UI dicts are private copies)
 * and the keys of the prompt being run.
 * Must not: run nodes (exec.c does), be shared between workers (values' reference counts are
 * not atomic).
 * Threads: one worker thread per cache (the device's).
 * Ownership: graph_cache_new returns a cache freed with graph_cache_free.
 *
 * USE. For each prompt: graph_cache_begin(c, p, paths), exec_run with
 * opts.cache = graph_cache_hook(c), then graph_cache_end(c). The prompt must stay alive until
 * graph_cache_end. */
#ifndef KILN_GRAPH_CACHE_H
#define KILN_GRAPH_CACHE_H

#include "graph/exec.h"
#include "graph/prompt.h"
#include "graph/registry.h"

struct graph_cache;

struct graph_cache *graph_cache_new(void);
void graph_cache_free(struct graph_cache *c); /* NULL is a no-op; drops every entry */

/* Computes the key of every valid node of p: exec_signature() plus the IS_CHANGED
 * fingerprints (node_class.is_changed) of the node and its ancestors. A node whose fingerprint
 * cannot be computed gets no key (never reused, never stored). Then drops the entries that no
 * node of p can use (classic mode: only results usable by the current prompt survive). */
void graph_cache_begin(struct graph_cache *c, const struct graph_prompt *p, const struct graph_paths *paths);

/* The executor hook over c, valid between graph_cache_begin and graph_cache_end. */
const struct exec_cache_i *graph_cache_hook(struct graph_cache *c);

/* Forgets the prompt's keys (entries stay). */
void graph_cache_end(struct graph_cache *c);

/* Drops every entry (POST /free with free_memory). Not between begin and end. */
void graph_cache_clear(struct graph_cache *c);

/* Drops the entries with an output object of one of `types` (a NULL-terminated list of wire
 * types, e.g. MODEL, CLIP, VAE before checkpoints are unloaded). Returns how many. */
int graph_cache_drop_types(struct graph_cache *c, const char *const *types);

/* Number of entries, and how many get() calls hit since the cache was made (tests, metrics). */
int graph_cache_count(const struct graph_cache *c);
uint64_t graph_cache_hits(const struct graph_cache *c);

#endif
