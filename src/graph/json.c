/* graph/json.c -- JSON read and written the way Python's json module does it.
 * Owns: the big-integer marker ("\x01int:<digits>"), the Python-style serialiser, repr()/str().
 * Must not: know prompts or nodes.
 * Threads: any.
 * Ownership: strings returned are mem_alloc'd (caller mem_frees); json_t are new references. */
#include "graph/json.h"

#include "base/base.h"
#include "base/mem.h"
#include "base/status.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BIGINT_MARK "\x01int:"
#define BIGINT_MARK_LEN 5

/* ===== A growable string ===== */

struct sbuf {
    char *p;
    size_t n, cap;
};

static void sb_reserve(struct sbuf *b, size_t extra) {
    if (b->n + extra + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + extra + 1) cap *= 2;
    b->p = mem_realloc(b->p, cap);
    b->cap = cap;
}

static void sb_putn(struct sbuf *b, const char *s, size_t n) {
    sb_reserve(b, n);
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_puts(struct sbuf *b, const char *s) { sb_putn(b, s, strlen(s)); }
static void sb_putc(struct sbuf *b, char c) { sb_putn(b, &c, 1); }

static char *sb_take(struct sbuf *b) {
    if (!b->p) return mem_strdup("");
    return b->p;
}

/* ===== Big integers ===== */

json_t *graph_json_bigint(const char *digits) {
    struct sbuf b = {0};
    sb_puts(&b, BIGINT_MARK);
    sb_puts(&b, digits);
    json_t *j = json_string(b.p);
    mem_free(b.p);
    return j;
}

json_t *graph_json_u64(uint64_t v) {
    if (v <= (uint64_t)INT64_MAX) return json_integer((json_int_t)v);
    char d[32];
    snprintf(d, sizeof d, "%llu", (unsigned long long)v);
    return graph_json_bigint(d);
}

bool graph_json_is_bigint(const json_t *j, const char **digits) {
    if (!json_is_string(j)) return false;
    const char *s = json_string_value(j);
    if (strncmp(s, BIGINT_MARK, BIGINT_MARK_LEN) != 0) return false;
    if (digits) *digits = s + BIGINT_MARK_LEN;
    return true;
}

bool graph_json_int_get(const json_t *j, bool *neg, uint64_t *mag) {
    if (json_is_integer(j)) {
        json_int_t v = json_integer_value(j);
        *neg = v < 0;
        *mag = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
        return true;
    }
    const char *d;
    if (!graph_json_is_bigint(j, &d)) return false;
    *neg = *d == '-';
    if (*d == '-' || *d == '+') d++;
    if (!*d) return false;
    uint64_t m = 0;
    for (; *d; d++) {
        if (*d < '0' || *d > '9') return false;
        unsigned dig = (unsigned)(*d - '0');
        if (m > (UINT64_MAX - dig) / 10) return false;
        m = m * 10 + dig;
    }
    *mag = m;
    return true;
}

/* True when the integer literal s[0..n) (optional '-', digits) does not fit int64. */
static bool int_literal_too_big(const char *s, size_t n) {
    bool neg = n && s[0] == '-';
    if (neg) s++, n--;
    if (n < 19) return false;
    if (n > 19) return true;
    return memcmp(s, neg ? "9223372036854775808" : "9223372036854775807", 19) > 0;
}

/* ===== Loading ===== */

/* Rewrites integer literals that do not fit int64 into big-integer marker strings. Returns
 * NULL when there are none (the text can be parsed as it is). */
static char *rewrite_bigints(const char *t, size_t len, size_t *out_len) {
    struct sbuf b = {0};
    size_t copied = 0; /* t[0..copied) is already in b */
    bool any = false;
    for (size_t i = 0; i < len;) {
        char c = t[i];
        if (c == '"') { /* skip a string, honouring escapes */
            i++;
            while (i < len && t[i] != '"') i += (t[i] == '\\') ? 2 : 1;
            i++;
            continue;
        }
        if (c == '-' || (c >= '0' && c <= '9')) {
            size_t s = i;
            if (t[i] == '-') i++;
            while (i < len && t[i] >= '0' && t[i] <= '9') i++;
            bool is_int = !(i < len && (t[i] == '.' || t[i] == 'e' || t[i] == 'E'));
            if (is_int && i - s > 1 && int_literal_too_big(t + s, i - s)) {
                sb_putn(&b, t + copied, s - copied);
                sb_puts(&b, "\"\\u0001int:");
                sb_putn(&b, t + s, i - s);
                sb_putc(&b, '"');
                copied = i;
                any = true;
            }
            while (i < len && (t[i] == '.' || t[i] == 'e' || t[i] == 'E' || t[i] == '+' || t[i] == '-' ||
                               (t[i] >= '0' && t[i] <= '9')))
                i++;
            continue;
        }
        i++;
    }
    if (!any) {
        mem_free(b.p);
        return NULL;
    }
    if (copied < len) sb_putn(&b, t + copied, len - copied);
    *out_len = b.n;
    return b.p;
}

int graph_json_loads(const char *text, size_t len, json_t **out, struct err *err) {
    *out = NULL;
    size_t n2 = 0;
    char *rewritten = rewrite_bigints(text, len, &n2);
    json_error_t je;
    json_t *j = rewritten ? json_loadb(rewritten, n2, JSON_DECODE_ANY, &je)
                          : json_loadb(text, len, JSON_DECODE_ANY, &je);
    mem_free(rewritten);
    if (!j)
        return err_set(err, STATUS_ERR_FORMAT, "invalid JSON at line %d, column %d: %s", je.line, je.column,
                       je.text);
    *out = j;
    return 0;
}

/* ===== Python float repr ===== */

const char *graph_py_float_repr(double x, char *buf, size_t n) {
    ASSERT(n >= 32);
    if (isnan(x)) return snprintf(buf, n, "nan"), buf;
    if (isinf(x)) return snprintf(buf, n, x < 0 ? "-inf" : "inf"), buf;
    if (x == 0) return snprintf(buf, n, signbit(x) ? "-0.0" : "0.0"), buf;
    /* shortest %e that round-trips */
    char e[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(e, sizeof e, "%.*e", p - 1, x);
        if (strtod(e, NULL) == x) break;
    }
    /* e = [-]d[.ddd]e[+-]XX: split into digits and decimal exponent */
    const char *s = e;
    bool neg = *s == '-';
    if (neg) s++;
    char digits[24];
    int nd = 0;
    for (; *s && *s != 'e'; s++)
        if (*s != '.') digits[nd++] = *s;
    int exp10 = atoi(s + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = 0;
    int decpt = exp10 + 1; /* digits "d1d2.." times 10^(decpt - nd) */
    struct sbuf b = {0};
    if (neg) sb_putc(&b, '-');
    if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {
            sb_puts(&b, "0.");
            for (int i = 0; i < -decpt; i++) sb_putc(&b, '0');
            sb_puts(&b, digits);
        } else if (decpt >= nd) {
            sb_puts(&b, digits);
            for (int i = nd; i < decpt; i++) sb_putc(&b, '0');
            sb_puts(&b, ".0");
        } else {
            sb_putn(&b, digits, (size_t)decpt);
            sb_putc(&b, '.');
            sb_puts(&b, digits + decpt);
        }
    } else {
        sb_putc(&b, digits[0]);
        if (nd > 1) {
            sb_putc(&b, '.');
            sb_puts(&b, digits + 1);
        }
        char ex[16];
        snprintf(ex, sizeof ex, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
        sb_puts(&b, ex);
    }
    snprintf(buf, n, "%s", b.p);
    mem_free(b.p);
    return buf;
}

/* ===== Python json.dumps ===== */

/* Decodes one UTF-8 code point at s (valid UTF-8, as jansson guarantees); returns its length. */
static int utf8_decode(const unsigned char *s, uint32_t *cp) {
    if (s[0] < 0x80) return *cp = s[0], 1;
    if ((s[0] & 0xE0) == 0xC0) return *cp = ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F), 2;
    if ((s[0] & 0xF0) == 0xE0)
        return *cp = ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F), 3;
    *cp = ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) | ((uint32_t)(s[2] & 0x3F) << 6) |
          (s[3] & 0x3F);
    return 4;
}

static void dump_string(struct sbuf *b, const char *str, size_t len) {
    sb_putc(b, '"');
    const unsigned char *s = (const unsigned char *)str;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        int k = utf8_decode(s + i, &cp);
        i += (size_t)k;
        char tmp[16];
        switch (cp) {
        case '"': sb_puts(b, "\\\""); continue;
        case '\\': sb_puts(b, "\\\\"); continue;
        case '\n': sb_puts(b, "\\n"); continue;
        case '\r': sb_puts(b, "\\r"); continue;
        case '\t': sb_puts(b, "\\t"); continue;
        case '\b': sb_puts(b, "\\b"); continue;
        case '\f': sb_puts(b, "\\f"); continue;
        default: break;
        }
        if (cp >= 0x20 && cp < 0x7f) {
            sb_putc(b, (char)cp);
        } else if (cp < 0x10000) {
            snprintf(tmp, sizeof tmp, "\\u%04x", cp);
            sb_puts(b, tmp);
        } else {
            uint32_t v = cp - 0x10000;
            snprintf(tmp, sizeof tmp, "\\u%04x\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
            sb_puts(b, tmp);
        }
    }
    sb_putc(b, '"');
}

static void dump_newline(struct sbuf *b, int indent, int depth) {
    sb_putc(b, '\n');
    for (int i = 0; i < indent * depth; i++) sb_putc(b, ' ');
}

static void dump_value(struct sbuf *b, const json_t *j, int indent, int depth) {
    char tmp[64];
    const char *digits;
    switch (json_typeof(j)) {
    case JSON_NULL: sb_puts(b, "null"); break;
    case JSON_TRUE: sb_puts(b, "true"); break;
    case JSON_FALSE: sb_puts(b, "false"); break;
    case JSON_INTEGER:
        snprintf(tmp, sizeof tmp, "%lld", (long long)json_integer_value(j));
        sb_puts(b, tmp);
        break;
    case JSON_REAL: {
        double x = json_real_value(j);
        if (isnan(x)) sb_puts(b, "NaN");
        else if (isinf(x)) sb_puts(b, x < 0 ? "-Infinity" : "Infinity");
        else sb_puts(b, graph_py_float_repr(x, tmp, sizeof tmp));
        break;
    }
    case JSON_STRING:
        if (graph_json_is_bigint(j, &digits)) sb_puts(b, digits);
        else dump_string(b, json_string_value(j), json_string_length(j));
        break;
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        if (!n) {
            sb_puts(b, "[]");
            break;
        }
        sb_putc(b, '[');
        for (size_t i = 0; i < n; i++) {
            if (i) sb_puts(b, indent >= 0 ? "," : ", ");
            if (indent >= 0) dump_newline(b, indent, depth + 1);
            dump_value(b, json_array_get(j, i), indent, depth + 1);
        }
        if (indent >= 0) dump_newline(b, indent, depth);
        sb_putc(b, ']');
        break;
    }
    case JSON_OBJECT: {
        if (!json_object_size(j)) {
            sb_puts(b, "{}");
            break;
        }
        sb_putc(b, '{');
        const char *key;
        json_t *v;
        bool first = true;
        json_object_foreach((json_t *)j, key, v) {
            if (!first) sb_puts(b, indent >= 0 ? "," : ", ");
            first = false;
            if (indent >= 0) dump_newline(b, indent, depth + 1);
            dump_string(b, key, strlen(key));
            sb_puts(b, ": ");
            dump_value(b, v, indent, depth + 1);
        }
        if (indent >= 0) dump_newline(b, indent, depth);
        sb_putc(b, '}');
        break;
    }
    }
}

char *graph_json_dumps(const json_t *j, int indent) {
    struct sbuf b = {0};
    if (!j) sb_puts(&b, "null");
    else dump_value(&b, j, indent, 0);
    return sb_take(&b);
}

/* ===== Python repr() / str() ===== */

static void repr_string(struct sbuf *b, const char *str, size_t len) {
    bool has_sq = memchr(str, '\'', len) != NULL, has_dq = memchr(str, '"', len) != NULL;
    char q = (has_sq && !has_dq) ? '"' : '\'';
    sb_putc(b, q);
    const unsigned char *s = (const unsigned char *)str;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        int k = utf8_decode(s + i, &cp);
        char tmp[16];
        if (cp == (uint32_t)q || cp == '\\') {
            sb_putc(b, '\\');
            sb_putc(b, (char)cp);
        } else if (cp == '\n') {
            sb_puts(b, "\\n");
        } else if (cp == '\r') {
            sb_puts(b, "\\r");
        } else if (cp == '\t') {
            sb_puts(b, "\\t");
        } else if (cp < 0x20 || (cp >= 0x7f && cp < 0xa0)) {
            snprintf(tmp, sizeof tmp, "\\x%02x", cp);
            sb_puts(b, tmp);
        } else {
            sb_putn(b, (const char *)s + i, (size_t)k);
        }
        i += (size_t)k;
    }
    sb_putc(b, q);
}

static void repr_value(struct sbuf *b, const json_t *j) {
    char tmp[64];
    const char *digits;
    switch (json_typeof(j)) {
    case JSON_NULL: sb_puts(b, "None"); break;
    case JSON_TRUE: sb_puts(b, "True"); break;
    case JSON_FALSE: sb_puts(b, "False"); break;
    case JSON_INTEGER:
        snprintf(tmp, sizeof tmp, "%lld", (long long)json_integer_value(j));
        sb_puts(b, tmp);
        break;
    case JSON_REAL: sb_puts(b, graph_py_float_repr(json_real_value(j), tmp, sizeof tmp)); break;
    case JSON_STRING:
        if (graph_json_is_bigint(j, &digits)) sb_puts(b, digits);
        else repr_string(b, json_string_value(j), json_string_length(j));
        break;
    case JSON_ARRAY:
        sb_putc(b, '[');
        for (size_t i = 0; i < json_array_size(j); i++) {
            if (i) sb_puts(b, ", ");
            repr_value(b, json_array_get(j, i));
        }
        sb_putc(b, ']');
        break;
    case JSON_OBJECT: {
        sb_putc(b, '{');
        const char *key;
        json_t *v;
        bool first = true;
        json_object_foreach((json_t *)j, key, v) {
            if (!first) sb_puts(b, ", ");
            first = false;
            repr_string(b, key, strlen(key));
            sb_puts(b, ": ");
            repr_value(b, v);
        }
        sb_putc(b, '}');
        break;
    }
    }
}

char *graph_json_py_repr(const json_t *j) {
    struct sbuf b = {0};
    if (!j) sb_puts(&b, "None");
    else repr_value(&b, j);
    return sb_take(&b);
}

char *graph_json_py_str(const json_t *j) {
    if (json_is_string(j) && !graph_json_is_bigint(j, NULL)) return mem_strdup(json_string_value(j));
    return graph_json_py_repr(j);
}
