/* sched/history.c -- finished prompts in completion order, as GET/POST /history show them.
 * Owns: the entries (one JSON object keyed by prompt_id; Jansson keeps insertion order, and
 * replacing a key keeps its place, like a Python dict).
 * Must not: be changed without sched->mu.
 * Threads: any; every public function takes sched->mu.
 * Ownership: sched_history_json returns deep copies (new reference). */
#include "sched/internal.h"

#include "base/log.h"
#include "base/mem.h"
#include "sched/store.h"

void sched__history_put(struct sched *s, const char *prompt_id, json_t *entry) {
    json_object_set_new(s->history, prompt_id, entry);
    while (json_object_size(s->history) > (size_t)s->opts.history_max) {
        void *first = json_object_iter(s->history);
        char *key = mem_strdup(json_object_iter_key(first));
        json_object_del(s->history, key);
        mem_free(key);
    }
}

json_t *sched_history_json(struct sched *s, const char *prompt_id, int max_items, int offset) {
    json_t *out = json_object();
    pthread_mutex_lock(&s->mu);
    if (prompt_id) {
        json_t *e = json_object_get(s->history, prompt_id);
        if (e) json_object_set_new(out, prompt_id, json_deep_copy(e));
    } else {
        /* PromptQueue.get_history: without an offset, max_items means the last N */
        long size = (long)json_object_size(s->history), off = offset >= 0 ? offset : -1;
        if (off < 0 && max_items >= 0) off = size - max_items;
        long i = 0;
        const char *id;
        json_t *e;
        json_object_foreach(s->history, id, e) {
            if (i >= off) {
                json_object_set_new(out, id, json_deep_copy(e));
                if (max_items >= 0 && (long)json_object_size(out) >= max_items) break;
            }
            i++;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return out;
}

void sched_history_clear(struct sched *s) {
    struct err err = {0};
    pthread_mutex_lock(&s->mu);
    json_object_clear(s->history);
    if (s->store && store_history_clear(s->store, &err)) log_error("%s; the server goes on", err.msg);
    pthread_mutex_unlock(&s->mu);
}

void sched_history_delete(struct sched *s, const char *prompt_id) {
    if (!prompt_id) return;
    struct err err = {0};
    pthread_mutex_lock(&s->mu);
    json_object_del(s->history, prompt_id);
    if (s->store && store_history_delete(s->store, prompt_id, &err))
        log_error("%s (prompt %s); the server goes on", err.msg, prompt_id);
    pthread_mutex_unlock(&s->mu);
}
