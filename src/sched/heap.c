/* sched/heap.c -- a device's pending prompts as a binary min-heap, element for element the
 * list Python's heapq keeps for ComfyUI's PromptQueue, so /queue shows the same raw order.
 * Owns: nothing (items belong to the device's heap array).
 * Must not: lock (the caller holds sched->mu).
 * Threads: any, under sched->mu. */
#include "base/base.h"
#include "base/mem.h"
#include "sched/internal.h"

#include <string.h>

int sched__item_cmp(const struct sched_item *a, const struct sched_item *b) {
    if (a->number_is_int && b->number_is_int) {
        if (a->inumber != b->inumber) return a->inumber < b->inumber ? -1 : 1;
    } else if (a->number != b->number) {
        return a->number < b->number ? -1 : 1;
    }
    return strcmp(a->prompt_id, b->prompt_id); /* UTF-8 byte order = Python's code point order */
}

static bool less(const struct sched_item *a, const struct sched_item *b) { return sched__item_cmp(a, b) < 0; }

/* heapq._siftdown: moves heap[pos] up towards start while it is smaller than its parent. */
static void sift_down(struct sched_item **h, int start, int pos) {
    struct sched_item *item = h[pos];
    while (pos > start) {
        int parent = (pos - 1) >> 1;
        if (!less(item, h[parent])) break;
        h[pos] = h[parent];
        pos = parent;
    }
    h[pos] = item;
}

/* heapq._siftup: moves the smaller child up until a leaf, then sifts the item back down. */
static void sift_up(struct sched_item **h, int n, int pos) {
    int start = pos;
    struct sched_item *item = h[pos];
    int child = 2 * pos + 1;
    while (child < n) {
        int right = child + 1;
        if (right < n && !less(h[child], h[right])) child = right;
        h[pos] = h[child];
        pos = child;
        child = 2 * pos + 1;
    }
    h[pos] = item;
    sift_down(h, start, pos);
}

void sched__heap_push(struct sched_device *d, struct sched_item *it) {
    if (d->n_heap == d->cap_heap) {
        d->cap_heap = d->cap_heap ? 2 * d->cap_heap : 16;
        d->heap = mem_realloc(d->heap, (size_t)d->cap_heap * sizeof *d->heap);
    }
    d->heap[d->n_heap++] = it;
    sift_down(d->heap, 0, d->n_heap - 1);
}

struct sched_item *sched__heap_pop(struct sched_device *d) {
    if (d->n_heap == 0) return NULL;
    struct sched_item *last = d->heap[--d->n_heap];
    if (d->n_heap == 0) return last;
    struct sched_item *top = d->heap[0];
    d->heap[0] = last;
    sift_up(d->heap, d->n_heap, 0);
    return top;
}

struct sched_item *sched__heap_remove_at(struct sched_device *d, int i) {
    ASSERT(i >= 0 && i < d->n_heap);
    struct sched_item *it = d->heap[i];
    /* list.pop(i) then heapq.heapify, as ComfyUI's delete_queue_item does */
    memmove(&d->heap[i], &d->heap[i + 1], (size_t)(d->n_heap - i - 1) * sizeof *d->heap);
    d->n_heap--;
    for (int k = d->n_heap / 2 - 1; k >= 0; k--) sift_up(d->heap, d->n_heap, k);
    return it;
}
