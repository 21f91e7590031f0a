/* sched/store.c -- accepted prompts and the history in one SQLite file (sched/store.h).
 * Owns: the connection; every statement is prepared, run and finalized within one call.
 * Must not: be called without the caller's serialisation (sched->mu): one connection.
 * Threads: whichever thread holds sched->mu.
 *
 * DESIGN. Two tables: prompts (one row per accepted prompt until it finishes; state
 * 'pending' or 'running', attempts = times a worker took it) and history (one row per
 * finished prompt, the entry as /history shows it). A prompt's end is one transaction (history
 * row in, prompt row out, oldest history rows beyond history_max out), so a crash leaves the
 * prompt in exactly one of the two tables. WAL with synchronous=NORMAL: a commit is in the WAL
 * (the OS's page cache) before the call returns, so kill -9 of the process loses nothing; only
 * a power loss or kernel crash may lose the last commits (FULL would fsync every commit, a few
 * ms each on the submit path, for a failure the issue does not ask us to survive). */
#include "sched/store.h"

#include "base/status.h"

#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

#include "base/mem.h"

struct store {
    sqlite3 *db;
    char path[512];
    int history_max;
};

static const char SCHEMA[] =
    "CREATE TABLE IF NOT EXISTS prompts("
    " id TEXT PRIMARY KEY, number INTEGER, device INTEGER, body TEXT,"
    " state TEXT CHECK(state IN ('pending','running')), attempts INTEGER, queued_at REAL);"
    "CREATE TABLE IF NOT EXISTS history("
    " id TEXT PRIMARY KEY, number INTEGER, entry TEXT, finished_at REAL);";

/* err_set with the path, what failed and SQLite's message. */
static int db_fail(struct store *st, const char *what, struct err *err) {
    int code = sqlite3_errcode(st->db) == SQLITE_NOMEM ? STATUS_ERR_NOMEM : STATUS_ERR_IO;
    return err_set(err, code, "database %s: %s: %s", st->path, what, sqlite3_errmsg(st->db));
}

static int exec_sql(struct store *st, const char *sql, const char *what, struct err *err) {
    if (sqlite3_exec(st->db, sql, NULL, NULL, NULL) != SQLITE_OK) return db_fail(st, what, err);
    return 0;
}

/* ===== Open and close ===== */

struct store *store_open(const char *path, int history_max, struct err *err) {
    struct store *st = mem_calloc(1, sizeof *st);
    snprintf(st->path, sizeof st->path, "%s", path);
    st->history_max = history_max > 0 ? history_max : 1;
    int rc = sqlite3_open_v2(path, &st->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL);
    if (rc != SQLITE_OK) {
        if (st->db) db_fail(st, "cannot open", err);
        else err_set(err, STATUS_ERR_NOMEM, "database %s: cannot open: out of memory", path);
        store_free(st);
        return NULL;
    }
    sqlite3_busy_timeout(st->db, 5000); /* another kiln on the same file: wait, then fail */
    sqlite3_extended_result_codes(st->db, 1);
    /* journal_mode returns a row; exec ignores it. A file that is not a database fails here. */
    if (exec_sql(st, "PRAGMA journal_mode=WAL", "cannot switch to WAL mode (not a database, or not writable?)", err) ||
        exec_sql(st, "PRAGMA synchronous=NORMAL", "cannot set synchronous=NORMAL", err) ||
        exec_sql(st, SCHEMA, "cannot create the tables", err)) {
        store_free(st);
        return NULL;
    }
    /* a read-only file opens and reads; prove that it can be written now rather than at the
     * first prompt */
    if (exec_sql(st, "BEGIN IMMEDIATE; CREATE TABLE IF NOT EXISTS kiln_probe(x); DROP TABLE kiln_probe; COMMIT",
                 "cannot write", err)) {
        store_free(st);
        return NULL;
    }
    return st;
}

void store_free(struct store *st) {
    if (!st) return;
    if (st->db) sqlite3_close_v2(st->db);
    mem_free(st);
}

/* ===== Statements ===== */

/* Prepares sql; on failure fills err. */
static sqlite3_stmt *prep(struct store *st, const char *sql, const char *what, struct err *err) {
    sqlite3_stmt *q = NULL;
    if (sqlite3_prepare_v2(st->db, sql, -1, &q, NULL) != SQLITE_OK) {
        db_fail(st, what, err);
        return NULL;
    }
    return q;
}

/* Steps a statement that returns no rows, then finalizes it. */
static int run_done(struct store *st, sqlite3_stmt *q, const char *what, struct err *err) {
    int rc = sqlite3_step(q) == SQLITE_DONE ? 0 : db_fail(st, what, err);
    sqlite3_finalize(q);
    return rc;
}

static void bind_number(sqlite3_stmt *q, int i, double number, bool is_int) {
    if (is_int) sqlite3_bind_int64(q, i, (sqlite3_int64)number);
    else sqlite3_bind_double(q, i, number);
}

/* A one-text-parameter statement (id). */
static int run_id(struct store *st, const char *sql, const char *id, const char *what, struct err *err) {
    sqlite3_stmt *q = prep(st, sql, what, err);
    if (!q) return err->code;
    sqlite3_bind_text(q, 1, id, -1, SQLITE_TRANSIENT);
    return run_done(st, q, what, err);
}

/* ===== Prompts ===== */

int store_prompt_put(struct store *st, const char *id, double number, bool number_is_int, int device,
                     const char *body, double queued_at, struct err *err) {
    const char *what = "cannot store an accepted prompt";
    sqlite3_stmt *q = prep(st,
                           "INSERT OR REPLACE INTO prompts(id, number, device, body, state, attempts, queued_at)"
                           " VALUES(?1, ?2, ?3, ?4, 'pending', 0, ?5)",
                           what, err);
    if (!q) return err->code;
    sqlite3_bind_text(q, 1, id, -1, SQLITE_TRANSIENT);
    bind_number(q, 2, number, number_is_int);
    sqlite3_bind_int(q, 3, device);
    sqlite3_bind_text(q, 4, body, -1, SQLITE_TRANSIENT);
    sqlite3_bind_double(q, 5, queued_at);
    return run_done(st, q, what, err);
}

int store_prompt_start(struct store *st, const char *id, struct err *err) {
    return run_id(st, "UPDATE prompts SET state = 'running', attempts = attempts + 1 WHERE id = ?1", id,
                  "cannot mark a prompt running", err);
}

int store_prompt_requeue(struct store *st, const char *id, struct err *err) {
    return run_id(st, "UPDATE prompts SET state = 'pending', attempts = MAX(attempts - 1, 0) WHERE id = ?1", id,
                  "cannot put a stopped prompt back in the queue", err);
}

int store_prompt_reset(struct store *st, const char *id, struct err *err) {
    return run_id(st, "UPDATE prompts SET state = 'pending' WHERE id = ?1", id, "cannot re-queue a prompt", err);
}

int store_prompt_delete(struct store *st, const char *id, struct err *err) {
    return run_id(st, "DELETE FROM prompts WHERE id = ?1", id, "cannot delete a queued prompt", err);
}

int store_finish(struct store *st, const char *id, double number, const char *entry, double finished_at,
                 struct err *err) {
    const char *what = "cannot record a finished prompt";
    if (exec_sql(st, "BEGIN IMMEDIATE", what, err)) return err->code;
    /* REPLACE gives a re-used id a new rowid: it becomes the newest, as the ids' order says */
    sqlite3_stmt *q = prep(st, "INSERT OR REPLACE INTO history(id, number, entry, finished_at) VALUES(?1, ?2, ?3, ?4)",
                           what, err);
    int rc = q ? 0 : err->code;
    if (q) {
        sqlite3_bind_text(q, 1, id, -1, SQLITE_TRANSIENT);
        sqlite3_bind_double(q, 2, number);
        sqlite3_bind_text(q, 3, entry, -1, SQLITE_TRANSIENT);
        sqlite3_bind_double(q, 4, finished_at);
        rc = run_done(st, q, what, err);
    }
    if (!rc) rc = run_id(st, "DELETE FROM prompts WHERE id = ?1", id, what, err);
    if (!rc) {
        q = prep(st,
                 "DELETE FROM history WHERE rowid <= "
                 "(SELECT rowid FROM history ORDER BY rowid DESC LIMIT 1 OFFSET ?1)",
                 "cannot trim the history", err);
        rc = q ? 0 : err->code;
        if (q) {
            sqlite3_bind_int(q, 1, st->history_max);
            rc = run_done(st, q, "cannot trim the history", err);
        }
    }
    if (!rc) rc = exec_sql(st, "COMMIT", what, err);
    if (rc) sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

/* ===== History ===== */

int store_history_delete(struct store *st, const char *id, struct err *err) {
    return run_id(st, "DELETE FROM history WHERE id = ?1", id, "cannot delete a history entry", err);
}

int store_history_clear(struct store *st, struct err *err) {
    return exec_sql(st, "DELETE FROM history", "cannot clear the history", err);
}

/* ===== Start-up ===== */

int store_history_load(struct store *st, int (*fn)(void *user, const char *id, const char *entry), void *user,
                       struct err *err) {
    const char *what = "cannot read the history";
    sqlite3_stmt *q = prep(st,
                           "SELECT id, entry FROM (SELECT rowid AS r, id, entry FROM history ORDER BY rowid DESC"
                           " LIMIT ?1) ORDER BY r",
                           what, err);
    if (!q) return err->code;
    sqlite3_bind_int(q, 1, st->history_max);
    int rc = 0, step;
    while (!rc && (step = sqlite3_step(q)) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(q, 0), *entry = (const char *)sqlite3_column_text(q, 1);
        if (id && entry) rc = fn(user, id, entry);
    }
    if (!rc && step != SQLITE_DONE) rc = db_fail(st, what, err);
    sqlite3_finalize(q);
    return rc;
}

int store_prompts_load(struct store *st, int (*fn)(void *user, const struct store_prompt *p), void *user,
                       struct err *err) {
    const char *what = "cannot read the queued prompts";
    sqlite3_stmt *q = prep(st,
                           "SELECT id, number, device, body, state, attempts, queued_at FROM prompts"
                           " ORDER BY number, id",
                           what, err);
    if (!q) return err->code;
    int rc = 0, step;
    while (!rc && (step = sqlite3_step(q)) == SQLITE_ROW) {
        struct store_prompt p = {
            .id = (const char *)sqlite3_column_text(q, 0),
            .number = sqlite3_column_double(q, 1),
            .number_is_int = sqlite3_column_type(q, 1) == SQLITE_INTEGER,
            .inumber = sqlite3_column_int64(q, 1),
            .device = sqlite3_column_int(q, 2),
            .body = (const char *)sqlite3_column_text(q, 3),
            .attempts = sqlite3_column_int(q, 5),
            .queued_at = sqlite3_column_double(q, 6),
        };
        const char *state = (const char *)sqlite3_column_text(q, 4);
        p.running = state && strcmp(state, "running") == 0;
        if (p.id && p.body) rc = fn(user, &p);
    }
    if (!rc && step != SQLITE_DONE) rc = db_fail(st, what, err);
    sqlite3_finalize(q);
    return rc;
}

int64_t store_count(struct store *st, const char *table) {
    char sql[96];
    snprintf(sql, sizeof sql, "SELECT COUNT(*) FROM %s", strcmp(table, "history") == 0 ? "history" : "prompts");
    sqlite3_stmt *q = NULL;
    if (sqlite3_prepare_v2(st->db, sql, -1, &q, NULL) != SQLITE_OK) return -1;
    int64_t n = sqlite3_step(q) == SQLITE_ROW ? sqlite3_column_int64(q, 0) : -1;
    sqlite3_finalize(q);
    return n;
}
