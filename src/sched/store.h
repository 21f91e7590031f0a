/* sched/store.h -- the scheduler's SQLite file: accepted prompts and the history survive a
 * crash (kill -9) and a restart.
 * Owns: one SQLite connection.
 * Must not: know about devices, heaps or JSON shapes beyond the text it is handed (sched.c
 * and worker.c decide what goes in).
 * Threads: a store is not thread-safe: sched calls it only under sched->mu (or before the
 * workers start / after they stop).
 * Ownership: store_open returns a store freed with store_free; strings passed in are copied
 * by SQLite; strings handed to the load callbacks live only during the call. */
#ifndef KILN_SCHED_STORE_H
#define KILN_SCHED_STORE_H

#include "base/err.h"

#include <stdbool.h>
#include <stdint.h>

struct store;

/* Opens (creates) the database at path in WAL mode and creates the tables. Returns NULL with
 * err filled (the path and SQLite's reason) when the file cannot be opened, is not a
 * database, or cannot be written. history_max >= 1 bounds the history table. */
struct store *store_open(const char *path, int history_max, struct err *err);
void store_free(struct store *st); /* NULL is a no-op */

/* ===== Prompts ===== */

/* One accepted prompt. number is stored as an integer when number_is_int. */
int store_prompt_put(struct store *st, const char *id, double number, bool number_is_int, int device,
                     const char *body, double queued_at, struct err *err);
/* A worker took it: state 'running', attempts + 1. */
int store_prompt_start(struct store *st, const char *id, struct err *err);
/* Back to 'pending' with attempts - 1 (a run stopped by a clean shutdown does not count). */
int store_prompt_requeue(struct store *st, const char *id, struct err *err);
/* 'running' -> 'pending' keeping attempts (start-up re-queues a prompt the crash cut short). */
int store_prompt_reset(struct store *st, const char *id, struct err *err);
int store_prompt_delete(struct store *st, const char *id, struct err *err);

/* In one transaction: the history row (replacing one with the same id), the prompt row
 * deleted, the history trimmed to history_max (oldest out). */
int store_finish(struct store *st, const char *id, double number, const char *entry, double finished_at,
                 struct err *err);

/* ===== History ===== */

int store_history_delete(struct store *st, const char *id, struct err *err);
int store_history_clear(struct store *st, struct err *err);

/* ===== Start-up ===== */

struct store_prompt {
    const char *id;
    double number;
    bool number_is_int;
    int64_t inumber;                 /* when number_is_int */
    int device;
    const char *body;
    bool running;                    /* state 'running' */
    int attempts;
    double queued_at;
};

/* Calls fn for the newest history_max history rows, oldest first; stops at the first non-zero
 * return and returns it. */
int store_history_load(struct store *st, int (*fn)(void *user, const char *id, const char *entry), void *user,
                       struct err *err);
/* Calls fn for every prompt row in number order (then id); same return rule. */
int store_prompts_load(struct store *st, int (*fn)(void *user, const struct store_prompt *p), void *user,
                       struct err *err);

/* Rows in each table (tests, the start-up log line); -1 on error. */
int64_t store_count(struct store *st, const char *table);

#endif
