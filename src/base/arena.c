/* base/arena.c -- bump allocator. Threads: owner only. */
#include "base/arena.h"
#include "base/mem.h"

#include <string.h>

struct arena_block {
    struct arena_block *next;
    size_t size; /* usable bytes after the header */
    size_t off;  /* bytes used */
    _Alignas(16) unsigned char data[];
};

void arena_init(struct arena *a, size_t block_size) {
    a->head = NULL;
    a->block_size = block_size ? block_size : 64 * 1024;
    a->used = 0;
}

void arena_deinit(struct arena *a) {
    struct arena_block *b = a->head;
    while (b) {
        struct arena_block *n = b->next;
        mem_free(b);
        b = n;
    }
    a->head = NULL;
    a->used = 0;
}

void arena_reset(struct arena *a) {
    struct arena_block *b = a->head;
    if (!b) return;
    /* keep the oldest block (the last in the list), free the rest */
    while (b->next) {
        struct arena_block *n = b->next;
        mem_free(b);
        b = n;
    }
    b->off = 0;
    a->head = b;
    a->used = 0;
}

void *arena_alloc(struct arena *a, size_t size) {
    size = (size + 15) & ~(size_t)15;
    struct arena_block *b = a->head;
    if (!b || b->size - b->off < size) {
        size_t bs = size > a->block_size ? size : a->block_size;
        struct arena_block *nb = mem_alloc(sizeof *nb + bs);
        nb->size = bs;
        nb->off = 0;
        nb->next = b;
        a->head = nb;
        b = nb;
    }
    void *p = b->data + b->off;
    b->off += size;
    a->used += size;
    memset(p, 0, size);
    return p;
}

char *arena_strdup(struct arena *a, const char *s) {
    size_t n = strlen(s) + 1;
    char *d = arena_alloc(a, n);
    memcpy(d, s, n);
    return d;
}
