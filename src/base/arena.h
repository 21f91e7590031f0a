/* base/arena.h -- bump allocator for memory that dies together (one prompt, one graph build).
 * Owns: its blocks. arena_reset keeps the first block for reuse; arena_deinit frees all.
 * Threads: one owner thread; no locking.
 * Ownership: pointers from arena_alloc are valid until the next arena_reset/arena_deinit. */
#ifndef KILN_ARENA_H
#define KILN_ARENA_H

#include <stddef.h>

struct arena_block;

struct arena {
    struct arena_block *head; /* newest block first */
    size_t block_size;        /* default size of a new block, in bytes */
    size_t used;              /* bytes handed out since the last reset */
};

/* block_size 0 picks 64 KiB. Storage is provided by the caller. */
void arena_init(struct arena *a, size_t block_size);
void arena_deinit(struct arena *a);

/* Frees every block but the first, and makes all of it free again. */
void arena_reset(struct arena *a);

/* 16-byte aligned; aborts on host OOM like mem_alloc. Zeroed. */
void *arena_alloc(struct arena *a, size_t size);
char *arena_strdup(struct arena *a, const char *s);

#endif
