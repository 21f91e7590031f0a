/* graph/json.h -- JSON as ComfyUI (Python's json module) reads and writes it.
 * Owns: the big-integer convention and a Python-compatible serialiser.
 * Threads: any (pure functions).
 * Ownership: every json_t returned is a new reference; every char* is freed with mem_free.
 *
 * BIG INTEGERS. Jansson's integers are int64, but ComfyUI seeds go up to 2^64-1 and Python
 * keeps any integer exactly. graph_json_loads turns an integer literal that does not fit int64
 * into a marker string ("\u0001int:<digits>"); graph_json_int_get reads it back, and
 * graph_json_dumps writes it back as the bare integer. Code that builds JSON with such values
 * (e.g. the seed max in /object_info) uses graph_json_u64().
 *
 * PYTHON OUTPUT. graph_json_dumps writes what Python's json.dumps writes with its defaults:
 * separators ", " and ": ", non-ASCII escaped as \uXXXX, floats as repr() ("0.1", "1e-05",
 * "8.0"), big integers exact. Use it for every JSON that a ComfyUI client or a PNG chunk sees. */
#ifndef KILN_GRAPH_JSON_H
#define KILN_GRAPH_JSON_H

#include "base/err.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Parses JSON text (len bytes, need not be NUL-terminated) keeping big integers (see above).
 * Returns 0 and *out, or STATUS_ERR_FORMAT with the position of the error in err. */
int graph_json_loads(const char *text, size_t len, json_t **out, struct err *err);

/* A big-integer value as graph_json_loads makes it (any decimal integer text, e.g. "-5" or
 * "18446744073709551615"). New reference. */
json_t *graph_json_bigint(const char *digits);
json_t *graph_json_u64(uint64_t v); /* json_integer when it fits int64, else a big integer */

/* True when j is a big integer; *digits then points into j's string (optional sign + digits). */
bool graph_json_is_bigint(const json_t *j, const char **digits);

/* Reads an integer (json integer or big integer) as a wide value: *neg set for negative
 * numbers, *mag the magnitude. Returns false when j is not an integer or |value| >= 2^64. */
bool graph_json_int_get(const json_t *j, bool *neg, uint64_t *mag);

/* Python-compatible serialisation (json.dumps defaults). `indent` < 0: one line. Returns a
 * mem_alloc'd string (never NULL; aborts on OOM). */
char *graph_json_dumps(const json_t *j, int indent);

/* Python's repr()/str() of a JSON value as ComfyUI's messages print them ('abc', 5, 0.5,
 * True, None, [1, 'a'], {'k': 1}). Returns a mem_alloc'd string. */
char *graph_json_py_repr(const json_t *j);
char *graph_json_py_str(const json_t *j);   /* str(): strings unquoted, the rest as repr */

/* Python repr() of a double ("0.1", "1e-05", "inf", "nan", "8.0") into buf (>= 32 bytes). */
const char *graph_py_float_repr(double x, char *buf, size_t n);

#endif
