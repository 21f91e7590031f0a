/* graph/nodes/save.h -- what other nodes may ask of SaveImage / PreviewImage (save.c).
 * Owns: nothing; the declarations of save.c's encode-ahead hooks.
 * Threads: the executor's worker thread. */
#ifndef KILN_GRAPH_NODES_SAVE_H
#define KILN_GRAPH_NODES_SAVE_H

#include "graph/registry.h"
#include "graph/value.h"

#include <stdint.h>

/* Text chunks per PNG at most: "prompt" and 64 extra_pnginfo keys. */
#define SAVE_MAX_TEXT 65

/* Encoding ahead (io/png_async.h): a node that makes an IMAGE one batch item at a time calls
 * save_ahead_begin(ctx, img) once img is allocated, then save_ahead_submit(img, b) as each item
 * is final. When a SaveImage or PreviewImage of the prompt takes output 0 of ctx's node, the
 * items are encoded as they come, with the text chunks and level that node will use, and it
 * takes the PNGs instead of encoding them (it checks they match first). Otherwise, or when the
 * encoder cannot start (a debug line says why), nothing happens. */
void save_ahead_begin(const struct node_run *ctx, struct image *img);
void save_ahead_submit(struct image *img, int64_t b);

#endif
