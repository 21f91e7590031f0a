/* graph/validate.c -- ComfyUI v0.3.64's validate_prompt / validate_inputs, in C.
 * Owns: the validation walk, literal coercion (Python int()/float()/str()/bool()), and the
 * error objects with their exact types, messages and extra_info.
 * Must not: run nodes.
 * Threads: any; one call works on one prompt.
 * Ownership: builds a graph_prompt (freed by graph_prompt_free) and JSON error bodies (new
 * references).
 *
 * DESIGN. Validation starts at each output node (prompt order) and recurses through links,
 * memoising each node's result, as ComfyUI does. Differences, on purpose:
 *  - inputs are checked in declaration order (Python walks a set: arbitrary order);
 *  - a link to a missing node or a bad output index is an error of the node that holds the
 *    link (exception_during_[inner_]validation, with a readable message) instead of a Python
 *    KeyError text;
 *  - a cycle gives "dependency_cycle" errors on every node of the cycle (as newer ComfyUI). */
#include "graph/prompt.h"

#include "base/base.h"
#include "base/mem.h"
#include "base/status.h"
#include "graph/json.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 4096 /* link chain length; deeper prompts are refused, not stack-overflowed */

/* ===== Validation state ===== */

struct vnode {
    bool visiting;                       /* on the current recursion path (a caller) */
    bool has_result;                     /* has an entry in Python's `validated` */
    bool valid;
    json_t *reasons;                     /* the node's own errors (array, owned) */
};

struct vctx {
    struct graph_prompt *p;
    const struct graph_paths *paths;
    struct vnode *st;                    /* per node */
    int *order;                          /* nodes in `validated` insertion order */
    int n_order;
    int *visiting;                       /* the caller stack (Python's `visiting`) */
    int n_visiting;
    int rc;                              /* internal failure (not a validation error) */
};

static void set_result(struct vctx *v, int i, bool valid, json_t *reasons) {
    struct vnode *s = &v->st[i];
    if (!s->has_result) {
        s->has_result = true;
        v->order[v->n_order++] = i;
    }
    json_decref(s->reasons);
    s->reasons = reasons;
    s->valid = valid;
    v->p->nodes[i].valid = valid;
}

/* ===== Small JSON/Python helpers ===== */

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *f, ...) {
    va_list ap;
    va_start(ap, f);
    int n = vsnprintf(NULL, 0, f, ap);
    va_end(ap);
    char *s = mem_alloc((size_t)n + 1);
    va_start(ap, f);
    vsnprintf(s, (size_t)n + 1, f, ap);
    va_end(ap);
    return s;
}

/* Python type name of a JSON value, for TypeError messages. */
static const char *py_type(const json_t *j) {
    switch (json_typeof(j)) {
    case JSON_NULL: return "NoneType";
    case JSON_TRUE:
    case JSON_FALSE: return "bool";
    case JSON_INTEGER: return "int";
    case JSON_REAL: return "float";
    case JSON_STRING: return graph_json_is_bigint(j, NULL) ? "int" : "str";
    case JSON_ARRAY: return "list";
    case JSON_OBJECT: return "dict";
    }
    return "object";
}

/* [TYPE, {options}] as validate_inputs' `info` (always two elements). */
static json_t *input_info(const struct node_input *in, const struct graph_paths *paths) {
    json_t *cfg = node_input_config(in, paths);
    if (json_array_size(cfg) < 2) json_array_append_new(cfg, json_object());
    return cfg;
}

/* ===== Python int() / float() / bool() ===== */

/* A coerced INT: sign + magnitude, or "huge" when |x| >= 2^64. */
struct pyint {
    bool neg;
    uint64_t mag;
    bool huge;
    char *text;                          /* the digits when huge (owned) */
};

static bool py_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

/* Strips Python whitespace; returns a mem_alloc'd copy. */
static char *py_strip(const char *s) {
    while (py_space(*s)) s++;
    size_t n = strlen(s);
    while (n && py_space(s[n - 1])) n--;
    return mem_strndup(s, n);
}

/* Removes '_' that sit between two digits (Python numeric literals); false if any other '_'. */
static bool drop_underscores(char *s) {
    size_t w = 0;
    for (size_t r = 0; s[r]; r++) {
        if (s[r] == '_') {
            if (r == 0 || !isdigit((unsigned char)s[r - 1]) || !isdigit((unsigned char)s[r + 1])) return false;
            continue;
        }
        s[w++] = s[r];
    }
    s[w] = 0;
    return true;
}

/* Parses an optional sign and decimal digits into *out. */
static bool parse_int_text(const char *s, struct pyint *out) {
    memset(out, 0, sizeof *out);
    if (*s == '+' || *s == '-') out->neg = *s++ == '-';
    if (!*s) return false;
    for (const char *c = s; *c; c++)
        if (!isdigit((unsigned char)*c)) return false;
    while (*s == '0' && s[1]) s++;
    uint64_t m = 0;
    for (const char *c = s; *c; c++) {
        unsigned d = (unsigned)(*c - '0');
        if (m > (UINT64_MAX - d) / 10) {
            out->huge = true;
            out->text = fmt("%s%s", out->neg ? "-" : "", s);
            return true;
        }
        m = m * 10 + d;
    }
    out->mag = m;
    if (m == 0) out->neg = false;
    return true;
}

static void pyint_from_double(double x, struct pyint *out) {
    memset(out, 0, sizeof *out);
    double t = trunc(x);
    out->neg = t < 0;
    double a = fabs(t);
    if (a >= 18446744073709551616.0) {
        out->huge = true;
        out->text = fmt("%s%.0f", out->neg ? "-" : "", a);
    } else {
        out->mag = (uint64_t)a;
        if (!out->mag) out->neg = false;
    }
}

/* Python int(v). Returns false with the exception text in *exc (mem_alloc'd). */
static bool py_int(const json_t *v, struct pyint *out, char **exc) {
    memset(out, 0, sizeof *out);
    if (json_is_boolean(v)) {
        out->mag = json_is_true(v);
        return true;
    }
    const char *digits;
    if (json_is_integer(v) || graph_json_is_bigint(v, &digits)) {
        if (graph_json_int_get(v, &out->neg, &out->mag)) return true;
        return parse_int_text(digits, out); /* beyond 2^64: huge */
    }
    if (json_is_real(v)) {
        double x = json_real_value(v);
        if (isnan(x)) return *exc = mem_strdup("cannot convert float NaN to integer"), false;
        if (isinf(x)) return *exc = mem_strdup("cannot convert float infinity to integer"), false;
        pyint_from_double(x, out);
        return true;
    }
    if (json_is_string(v)) {
        char *s = py_strip(json_string_value(v));
        bool ok = drop_underscores(s) && parse_int_text(s, out);
        mem_free(s);
        if (!ok) {
            char *r = graph_json_py_repr(v);
            *exc = fmt("invalid literal for int() with base 10: %s", r);
            mem_free(r);
        }
        return ok;
    }
    *exc = fmt("int() argument must be a string, a bytes-like object or a real number, not '%s'", py_type(v));
    return false;
}

/* Python float(v). */
static bool py_float(const json_t *v, double *out, char **exc) {
    if (json_is_boolean(v)) return *out = json_is_true(v) ? 1.0 : 0.0, true;
    if (json_is_integer(v)) return *out = (double)json_integer_value(v), true;
    const char *digits;
    if (graph_json_is_bigint(v, &digits)) return *out = strtod(digits, NULL), true;
    if (json_is_real(v)) return *out = json_real_value(v), true;
    if (json_is_string(v)) {
        char *s = py_strip(json_string_value(v));
        bool ok = *s && drop_underscores(s) && !strpbrk(s, "xXpP(");
        char *end = NULL;
        if (ok) {
            errno = 0;
            *out = strtod(s, &end);
            ok = end && *end == 0;
            /* strtod also takes "infinity"/"nan" like Python, and overflow gives inf like Python */
        }
        mem_free(s);
        if (!ok) {
            char *r = graph_json_py_repr(v);
            *exc = fmt("could not convert string to float: %s", r);
            mem_free(r);
        }
        return ok;
    }
    *exc = fmt("float() argument must be a string or a real number, not '%s'", py_type(v));
    return false;
}

static bool py_truthy(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_NULL:
    case JSON_FALSE: return false;
    case JSON_TRUE: return true;
    case JSON_INTEGER: return json_integer_value(v) != 0;
    case JSON_REAL: return json_real_value(v) != 0.0;
    case JSON_STRING: return json_string_length(v) > 0;
    case JSON_ARRAY: return json_array_size(v) > 0;
    case JSON_OBJECT: return json_object_size(v) > 0;
    }
    return true;
}

/* The text of a pyint as Python's str() prints it. */
static char *pyint_str(const struct pyint *x) {
    if (x->huge) return mem_strdup(x->text);
    return fmt("%s%llu", x->neg ? "-" : "", (unsigned long long)x->mag);
}

/* -1, 0, 1 comparing a pyint with an int64 bound. */
static int pyint_cmp_i64(const struct pyint *x, int64_t b) {
    bool bneg = b < 0;
    uint64_t bmag = bneg ? (uint64_t)0 - (uint64_t)b : (uint64_t)b;
    if (x->neg != bneg) return x->neg ? -1 : 1;
    int c;
    if (x->huge) c = 1;
    else c = x->mag < bmag ? -1 : x->mag > bmag ? 1 : 0;
    return x->neg ? -c : c;
}

/* ===== Error objects ===== */

static json_t *extra_input(const char *name, json_t *config) {
    json_t *e = json_object();
    json_object_set_new(e, "input_name", json_string(name));
    if (config) json_object_set_new(e, "input_config", config);
    return e;
}

static void add_error(json_t *errors, const char *type, const char *message, const char *details, json_t *extra) {
    json_array_append_new(errors, graph_error_new(type, message, details, extra));
}

/* ===== Link checks ===== */

/* ComfyUI's validate_node_input: equal types match; "*" matches anything; comma-separated
 * lists match when they share a type. A legacy combo (input_type is a list) only takes "*". */
static bool types_match(const char *received, const struct node_input *in) {
    if (strcmp(received, "*") == 0) return true;
    if (in->kind == NODE_INPUT_COMBO) return false;
    const char *want = node_input_type_name(in);
    if (strcmp(want, "*") == 0 || strcmp(received, want) == 0) return true;
    /* set intersection of comma-separated names (spaces around names ignored) */
    const char *a = received;
    while (*a) {
        while (*a == ' ' || *a == ',') a++;
        const char *ae = a;
        while (*ae && *ae != ',') ae++;
        const char *at = ae;
        while (at > a && at[-1] == ' ') at--;
        const char *b = want;
        while (*b) {
            while (*b == ' ' || *b == ',') b++;
            const char *be = b;
            while (*be && *be != ',') be++;
            const char *bt = be;
            while (bt > b && bt[-1] == ' ') bt--;
            if (at - a == bt - b && at > a && memcmp(a, b, (size_t)(at - a)) == 0) return true;
            b = be;
        }
        a = ae;
    }
    return false;
}

/* Python str() of an input's type: "INT", or the combo list "['a', 'b']". */
static char *input_type_str(const struct node_input *in, const struct graph_paths *paths) {
    if (in->kind != NODE_INPUT_COMBO) return mem_strdup(node_input_type_name(in));
    json_t *cfg = node_input_config(in, paths);
    char *s = graph_json_py_repr(json_array_get(cfg, 0));
    json_decref(cfg);
    return s;
}

/* ===== validate_inputs ===== */

static void validate_node(struct vctx *v, int idx, bool top);

/* A link that cannot be followed (missing node, bad slot): an "exception" error of the node
 * holding it. */
static void link_exception(struct vctx *v, json_t *errors, bool top, const char *name, const struct node_input *in,
                           json_t *link, const char *exc_type, const char *details) {
    json_t *extra = json_object();
    if (top) {
        json_object_set_new(extra, "exception_type", json_string(exc_type));
        json_object_set_new(extra, "traceback", json_array());
        json_object_set_new(extra, "input_name", json_string(name));
        json_object_set_new(extra, "linked_node", json_deep_copy(link));
        add_error(errors, "exception_during_validation", "Exception when validating node", details, extra);
    } else {
        json_object_set_new(extra, "input_name", json_string(name));
        json_object_set_new(extra, "input_config", input_info(in, v->paths));
        json_object_set_new(extra, "exception_message", json_string(details));
        json_object_set_new(extra, "exception_type", json_string(exc_type));
        json_object_set_new(extra, "traceback", json_array());
        json_object_set_new(extra, "linked_node", json_deep_copy(link));
        add_error(errors, "exception_during_inner_validation", "Exception when validating inner node", details, extra);
    }
}

/* Handles one linked input; returns false when the node becomes invalid. */
static bool check_link(struct vctx *v, int idx, bool top, int k, const struct node_input *in, json_t *val,
                       json_t *errors) {
    struct graph_node *node = &v->p->nodes[idx];
    const char *name = in->name;
    if (json_array_size(val) != 2) {
        json_t *extra = extra_input(name, input_info(in, v->paths));
        json_object_set_new(extra, "received_value", json_deep_copy(val));
        add_error(errors, "bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]", name,
                  extra);
        return false;
    }
    json_t *src_j = json_array_get(val, 0), *slot_j = json_array_get(val, 1);
    char *details = NULL;
    if (!json_is_string(src_j) || graph_json_is_bigint(src_j, NULL)) {
        char *r = graph_json_py_repr(src_j);
        details = fmt("input '%s' is linked to node id %s, which is not a string node id", name, r);
        mem_free(r);
        link_exception(v, errors, top, name, in, val, "KeyError", details);
        mem_free(details);
        return false;
    }
    int src = graph_prompt_find(v->p, json_string_value(src_j));
    if (src < 0) {
        details = fmt("input '%s' is linked to node '%s', which is not in the prompt", name, json_string_value(src_j));
        link_exception(v, errors, top, name, in, val, "KeyError", details);
        mem_free(details);
        return false;
    }
    const struct node_class *scls = v->p->nodes[src].cls;
    int n_out = node_class_n_outputs(scls);
    double slot_d = json_is_integer(slot_j) ? (double)json_integer_value(slot_j)
                    : json_is_real(slot_j)  ? json_real_value(slot_j)
                                            : NAN;
    if (!(slot_d >= 0 && slot_d < n_out && slot_d == floor(slot_d))) {
        char *r = graph_json_py_repr(slot_j);
        details = fmt("input '%s' is linked to output %s of node '%s' (%s), which has %d output%s", name, r,
                      json_string_value(src_j), scls->name, n_out, n_out == 1 ? "" : "s");
        mem_free(r);
        link_exception(v, errors, top, name, in, val, json_is_number(slot_j) ? "IndexError" : "TypeError", details);
        mem_free(details);
        return false;
    }
    int slot = (int)slot_d;
    const char *received = scls->outputs[slot].type;
    if (!types_match(received, in)) {
        char *want = input_type_str(in, v->paths);
        details = fmt("%s, received_type(%s) mismatch input_type(%s)", name, received, want);
        mem_free(want);
        json_t *extra = extra_input(name, input_info(in, v->paths));
        json_object_set_new(extra, "received_type", json_string(received));
        json_object_set_new(extra, "linked_node", json_deep_copy(val));
        add_error(errors, "return_type_mismatch", "Return type mismatch between linked nodes", details, extra);
        mem_free(details);
        return false;
    }
    node->inputs[k].kind = GRAPH_INPUT_LINK;
    node->inputs[k].src = src;
    node->inputs[k].src_output = slot;

    if (v->n_visiting >= MAX_DEPTH) {
        if (!v->rc) v->rc = STATUS_ERR_RANGE;
        return false;
    }
    v->visiting[v->n_visiting++] = idx;
    validate_node(v, src, false);
    v->n_visiting--;
    return v->st[src].valid;
}

/* Coerces a literal, checks min/max/combo, and stores it; returns false on an error. */
static bool check_literal(struct vctx *v, int idx, int k, const struct node_input *in, json_t *inputs, json_t *val,
                          json_t *errors) {
    struct graph_node *node = &v->p->nodes[idx];
    const char *name = in->name;
    if (json_is_object(val) && json_object_get(val, "__value__")) {
        val = json_object_get(val, "__value__");
        json_object_set(inputs, name, val); /* written back unwrapped */
        val = json_object_get(inputs, name);
    }
    char *exc = NULL;
    struct pyint iv = {0};
    double fv = 0;
    json_t *coerced = NULL;
    bool ok = true;
    switch (in->kind) {
    case NODE_INPUT_INT:
        ok = py_int(val, &iv, &exc);
        if (ok && !iv.huge && iv.neg && iv.mag > (uint64_t)INT64_MAX + 1) { /* below INT64_MIN */
            iv.text = pyint_str(&iv);
            iv.huge = true;
        }
        if (ok && !iv.huge)
            coerced = iv.neg ? json_integer((json_int_t)((uint64_t)0 - iv.mag)) : graph_json_u64(iv.mag);
        else if (ok)
            coerced = graph_json_bigint(iv.text);
        break;
    case NODE_INPUT_FLOAT:
        ok = py_float(val, &fv, &exc);
        if (ok) coerced = json_real(fv);
        break;
    case NODE_INPUT_STRING: {
        char *s = graph_json_py_str(val);
        coerced = json_string(s);
        mem_free(s);
        break;
    }
    case NODE_INPUT_BOOLEAN: coerced = json_boolean(py_truthy(val)); break;
    default: coerced = json_incref(val); break;
    }
    if (!ok) {
        char *vs = graph_json_py_str(val);
        char *details = fmt("%s, %s, %s", name, vs, exc);
        char *msg = fmt("Failed to convert an input value to a %s value", node_input_type_name(in));
        json_t *extra = extra_input(name, input_info(in, v->paths));
        json_object_set_new(extra, "received_value", json_deep_copy(val));
        json_object_set_new(extra, "exception_message", json_string(exc));
        add_error(errors, "invalid_input_type", msg, details, extra);
        mem_free(vs), mem_free(details), mem_free(msg), mem_free(exc);
        return false;
    }
    if (in->kind == NODE_INPUT_INT || in->kind == NODE_INPUT_FLOAT || in->kind == NODE_INPUT_STRING ||
        in->kind == NODE_INPUT_BOOLEAN)
        json_object_set(inputs, name, coerced); /* Python writes the coerced value back */

    bool good = true;
    if (!in->validate) {
        unsigned f = in->flags;
        char bound[64], *vs = NULL;
        int small = 0; /* -1 below min, 1 above max */
        if (in->kind == NODE_INPUT_INT) {
            if ((f & NODE_IN_MIN) && pyint_cmp_i64(&iv, in->int_min) < 0) {
                small = -1;
                snprintf(bound, sizeof bound, "%lld", (long long)in->int_min);
            } else if ((f & NODE_IN_MAX_U64) && (iv.huge && !iv.neg)) {
                small = 1;
                snprintf(bound, sizeof bound, "%llu", (unsigned long long)UINT64_MAX);
            } else if ((f & NODE_IN_MAX) && !(f & NODE_IN_MAX_U64) && pyint_cmp_i64(&iv, in->int_max) > 0) {
                small = 1;
                snprintf(bound, sizeof bound, "%lld", (long long)in->int_max);
            }
            if (small) vs = pyint_str(&iv);
        } else if (in->kind == NODE_INPUT_FLOAT) {
            /* NaN compares false both ways, as in Python */
            if ((f & NODE_IN_MIN) && fv < in->float_min) {
                small = -1;
                graph_py_float_repr(in->float_min, bound, sizeof bound);
            } else if ((f & NODE_IN_MAX) && fv > in->float_max) {
                small = 1;
                graph_py_float_repr(in->float_max, bound, sizeof bound);
            }
            if (small) {
                char t[64];
                vs = mem_strdup(graph_py_float_repr(fv, t, sizeof t));
            }
        }
        if (small) {
            char *msg = fmt(small < 0 ? "Value %s smaller than min of %s" : "Value %s bigger than max of %s", vs, bound);
            json_t *extra = extra_input(name, input_info(in, v->paths));
            json_object_set(extra, "received_value", coerced);
            add_error(errors, small < 0 ? "value_smaller_than_min" : "value_bigger_than_max", msg, name, extra);
            mem_free(msg);
            good = false;
        }
        mem_free(vs);

        if (good && in->kind == NODE_INPUT_COMBO) {
            struct graph_strlist opts = {0};
            int rc = node_input_options(in, v->paths, &opts, NULL);
            if (rc && !v->rc) v->rc = rc;
            bool found = json_is_string(val) && !graph_json_is_bigint(val, NULL) &&
                         graph_strlist_find(&opts, json_string_value(val)) >= 0;
            if (!found) {
                json_t *list = json_array();
                for (int i = 0; i < opts.n; i++) json_array_append_new(list, json_string(opts.items[i]));
                char *list_info = opts.n > 20 ? fmt("(list of length %d)", opts.n) : graph_json_py_repr(list);
                json_decref(list);
                char *vstr = graph_json_py_str(val);
                char *details = fmt("%s: '%s' not in %s", name, vstr, list_info);
                json_t *extra = extra_input(name, opts.n > 20 ? json_null() : input_info(in, v->paths));
                json_object_set_new(extra, "received_value", json_deep_copy(val));
                add_error(errors, "value_not_in_list", "Value not in list", details, extra);
                mem_free(list_info), mem_free(vstr), mem_free(details);
                good = false;
            }
            graph_strlist_deinit(&opts);
        }
    }

    if (good) {
        struct value *lv = &node->inputs[k].literal;
        value_deinit(lv);
        switch (in->kind) {
        case NODE_INPUT_INT:
            lv->kind = VALUE_INT;
            lv->i = iv.huge ? 0 : iv.neg ? (int64_t)((uint64_t)0 - iv.mag) : (int64_t)iv.mag;
            break;
        case NODE_INPUT_FLOAT: lv->kind = VALUE_FLOAT, lv->f = fv; break;
        case NODE_INPUT_BOOLEAN: lv->kind = VALUE_BOOL, lv->b = json_is_true(coerced); break;
        case NODE_INPUT_STRING: lv->kind = VALUE_STRING, lv->s = mem_strdup(json_string_value(coerced)); break;
        default: {
            char *s = graph_json_py_str(val);
            lv->kind = VALUE_STRING, lv->s = s;
            break;
        }
        }
        node->inputs[k].kind = GRAPH_INPUT_LITERAL;
        if (in->kind == NODE_INPUT_INT && iv.huge) good = false; /* cannot be represented */
        if (in->kind == NODE_INPUT_INT && iv.huge) {
            json_t *extra = extra_input(name, input_info(in, v->paths));
            json_object_set(extra, "received_value", coerced);
            char *vs2 = pyint_str(&iv);
            char *details = fmt("%s, %s, integer out of the 64-bit range", name, vs2);
            add_error(errors, "invalid_input_type", "Failed to convert an input value to a INT value", details, extra);
            mem_free(vs2), mem_free(details);
        }
    }
    json_decref(coerced);
    mem_free(iv.text);
    return good;
}

/* Python's custom validation hook (VALIDATE_INPUTS) for inputs that declare one. */
static void custom_checks(struct vctx *v, int idx, json_t *errors) {
    struct graph_node *node = &v->p->nodes[idx];
    for (int k = 0; k < node->n_inputs; k++) {
        const struct node_input *in = node_class_input(node->cls, k, NULL);
        if (!in->validate || node->inputs[k].kind != GRAPH_INPUT_LITERAL) continue;
        char why[1024] = "";
        if (in->validate(v->paths, &node->inputs[k].literal, why, sizeof why)) continue;
        char *details = fmt("%s - %s", in->name, why);
        json_t *extra = json_object();
        json_object_set_new(extra, "input_name", json_string(in->name));
        add_error(errors, "custom_validation_failed", "Custom validation failed for node", details, extra);
        mem_free(details);
    }
}

/* Marks every node of the cycle that closes at idx (Python's `visiting` walk). */
static void report_cycle(struct vctx *v, int idx) {
    int start = v->n_visiting - 1;
    while (start > 0 && v->visiting[start] != idx) start--;
    /* path = visiting[start..] + [idx] */
    char *path = mem_strdup("");
    json_t *cycle = json_array();
    for (int i = start; i <= v->n_visiting; i++) {
        int n = i < v->n_visiting ? v->visiting[i] : idx;
        char *next = fmt("%s%s%s (%s)", path, *path ? " -> " : "", v->p->nodes[n].id, v->p->nodes[n].cls->name);
        mem_free(path);
        path = next;
        bool seen = false;
        for (size_t c = 0; c < json_array_size(cycle); c++)
            seen |= strcmp(json_string_value(json_array_get(cycle, c)), v->p->nodes[n].id) == 0;
        if (!seen) json_array_append_new(cycle, json_string(v->p->nodes[n].id));
    }
    for (size_t c = 0; c < json_array_size(cycle); c++) {
        int n = graph_prompt_find(v->p, json_string_value(json_array_get(cycle, c)));
        json_t *extra = json_object();
        json_object_set_new(extra, "node_id", json_string(v->p->nodes[n].id));
        json_object_set_new(extra, "cycle_nodes", json_deep_copy(cycle));
        json_t *reasons = json_array();
        add_error(reasons, "dependency_cycle", "Dependency cycle detected", path, extra);
        set_result(v, n, false, reasons);
    }
    json_decref(cycle);
    mem_free(path);
}

static void validate_node(struct vctx *v, int idx, bool top) {
    struct vnode *s = &v->st[idx];
    if (s->has_result) return;
    for (int i = 0; i < v->n_visiting; i++)
        if (v->visiting[i] == idx) {
            report_cycle(v, idx);
            return;
        }
    struct graph_node *node = &v->p->nodes[idx];
    json_t *inputs = json_object_get(node->json, "inputs");
    if (!json_is_object(inputs)) {
        inputs = json_object(); /* a node without inputs: every required input is missing */
        json_object_set_new(node->json, "inputs", inputs);
    }
    node->n_inputs = node_class_n_inputs(node->cls);
    node->inputs = mem_calloc((size_t)(node->n_inputs ? node->n_inputs : 1), sizeof *node->inputs);

    json_t *errors = json_array();
    bool valid = true;
    for (int k = 0; k < node->n_inputs; k++) {
        bool optional;
        const struct node_input *in = node_class_input(node->cls, k, &optional);
        json_t *val = json_object_get(inputs, in->name);
        if (!val) {
            if (!optional) {
                json_t *extra = json_object();
                json_object_set_new(extra, "input_name", json_string(in->name));
                add_error(errors, "required_input_missing", "Required input is missing", in->name, extra);
            }
            continue;
        }
        if (json_is_array(val)) {
            if (!check_link(v, idx, top, k, in, val, errors)) valid = false;
        } else {
            check_literal(v, idx, k, in, inputs, val, errors);
        }
    }
    custom_checks(v, idx, errors);

    /* Join a result set meanwhile (a cycle through this node), as ComfyUI does. */
    bool prev_valid = s->has_result ? s->valid : true;
    json_t *reasons = s->has_result ? json_deep_copy(s->reasons) : json_array();
    for (size_t i = 0; i < json_array_size(errors); i++) {
        json_t *e = json_array_get(errors, i);
        bool dup = false;
        for (size_t r = 0; r < json_array_size(reasons); r++) dup |= json_equal(json_array_get(reasons, r), e);
        if (!dup) json_array_append(reasons, e);
    }
    bool ok = prev_valid && valid && json_array_size(errors) == 0;
    json_decref(errors);
    set_result(v, idx, ok, reasons);
}

/* ===== validate_prompt ===== */

static json_t *body_of(json_t *error, json_t *node_errors) {
    json_t *b = json_object();
    json_object_set_new(b, "error", error);
    json_object_set_new(b, "node_errors", node_errors ? node_errors : json_object());
    return b;
}

static bool in_targets(const json_t *targets, const char *id) {
    if (!targets) return true;
    for (size_t i = 0; i < json_array_size(targets); i++) {
        json_t *t = json_array_get(targets, i);
        if (json_is_string(t) && strcmp(json_string_value(t), id) == 0) return true;
    }
    return false;
}

int graph_prompt_validate(json_t *prompt, const struct graph_paths *paths, const json_t *partial_targets,
                          struct graph_prompt **out, json_t **error_body, struct err *err) {
    *out = NULL;
    *error_body = NULL;
    if (!json_is_object(prompt)) {
        *error_body = body_of(graph_error_new("invalid_prompt", "Cannot execute because the prompt is not a JSON object.",
                                              "The prompt must be an object keyed by node id.", NULL),
                              NULL);
        return err_set(err, STATUS_ERR_INVALID, "the prompt is not a JSON object");
    }
    if (partial_targets && !json_is_array(partial_targets)) partial_targets = NULL;

    struct graph_prompt *p = mem_calloc(1, sizeof *p);
    p->json = json_incref(prompt);
    size_t n = json_object_size(prompt);
    p->nodes = mem_calloc(n ? n : 1, sizeof *p->nodes);
    p->outputs = mem_calloc(n ? n : 1, sizeof *p->outputs);

    /* Every node must have a known class_type; the first bad one fails the prompt. */
    const char *key;
    json_t *nj;
    json_object_foreach(prompt, key, nj) {
        json_t *ct = json_is_object(nj) ? json_object_get(nj, "class_type") : NULL;
        char *details = fmt("Node ID '#%s'", key);
        if (!ct) {
            *error_body = body_of(graph_error_new("invalid_prompt",
                                                  "Cannot execute because a node is missing the class_type property.",
                                                  details, NULL),
                                  NULL);
            err_set(err, STATUS_ERR_INVALID, "node %s has no class_type", key);
            mem_free(details);
            graph_prompt_free(p);
            return STATUS_ERR_INVALID;
        }
        const struct node_class *cls = json_is_string(ct) ? graph_class_find(json_string_value(ct)) : NULL;
        if (!cls) {
            char *name = graph_json_py_str(ct);
            char *msg = fmt("Cannot execute because node %s does not exist.", name);
            *error_body = body_of(graph_error_new("invalid_prompt", msg, details, NULL), NULL);
            err_set(err, STATUS_ERR_INVALID, "node %s: unknown class_type %s", key, name);
            mem_free(name), mem_free(msg), mem_free(details);
            graph_prompt_free(p);
            return STATUS_ERR_INVALID;
        }
        mem_free(details);
        struct graph_node *node = &p->nodes[p->n_nodes++];
        node->id = mem_strdup(key);
        node->cls = cls;
        node->json = nj;
    }

    int n_targets = 0;
    int *targets = mem_calloc(n ? n : 1, sizeof *targets);
    for (int i = 0; i < p->n_nodes; i++)
        if (p->nodes[i].cls->output_node && in_targets(partial_targets, p->nodes[i].id)) targets[n_targets++] = i;
    if (!n_targets) {
        mem_free(targets);
        graph_prompt_free(p);
        *error_body = body_of(graph_error_new("prompt_no_outputs", "Prompt has no outputs", "", NULL), NULL);
        return err_set(err, STATUS_ERR_INVALID, "Prompt has no outputs");
    }

    struct vctx v = {.p = p, .paths = paths};
    v.st = mem_calloc((size_t)p->n_nodes, sizeof *v.st);
    v.order = mem_calloc((size_t)p->n_nodes, sizeof *v.order);
    v.visiting = mem_calloc(MAX_DEPTH + 1, sizeof *v.visiting);

    json_t *node_errors = json_object();
    json_t *failed_lines = json_array(); /* "message: details" of failed outputs' own errors */
    for (int t = 0; t < n_targets; t++) {
        int o = targets[t];
        validate_node(&v, o, true);
        if (v.rc) break;
        if (v.st[o].valid) {
            p->outputs[p->n_outputs++] = o;
            continue;
        }
        json_t *reasons = v.st[o].reasons;
        for (size_t r = 0; r < json_array_size(reasons); r++) {
            json_t *e = json_array_get(reasons, r);
            char *line = fmt("%s: %s", json_string_value(json_object_get(e, "message")),
                             json_string_value(json_object_get(e, "details")));
            json_array_append_new(failed_lines, json_string(line));
            mem_free(line);
        }
        /* Every node with its own errors so far lists this output (ComfyUI's loop). */
        for (int i = 0; i < v.n_order; i++) {
            int nid = v.order[i];
            if (v.st[nid].valid || json_array_size(v.st[nid].reasons) == 0) continue;
            json_t *ne = json_object_get(node_errors, p->nodes[nid].id);
            if (!ne) {
                ne = json_object();
                json_object_set(ne, "errors", v.st[nid].reasons);
                json_object_set_new(ne, "dependent_outputs", json_array());
                json_object_set_new(ne, "class_type", json_string(p->nodes[nid].cls->name));
                json_object_set_new(node_errors, p->nodes[nid].id, ne);
            }
            json_array_append_new(json_object_get(ne, "dependent_outputs"), json_string(p->nodes[o].id));
        }
    }

    int rc = v.rc;
    for (int i = 0; i < p->n_nodes; i++) json_decref(v.st[i].reasons);
    mem_free(v.st), mem_free(v.order), mem_free(v.visiting), mem_free(targets);

    if (rc) {
        json_decref(node_errors), json_decref(failed_lines);
        graph_prompt_free(p);
        if (rc == STATUS_ERR_RANGE) {
            *error_body = body_of(graph_error_new("invalid_prompt", "Cannot execute because the prompt is too deep.",
                                                  "A chain of linked nodes is longer than 4096.", NULL),
                                  NULL);
            return err_set(err, STATUS_ERR_INVALID, "a chain of links is deeper than %d nodes", MAX_DEPTH);
        }
        return err_set(err, rc, "validating the prompt failed (%s)", status_str(rc));
    }

    if (p->n_outputs == 0) {
        size_t total = 1;
        for (size_t i = 0; i < json_array_size(failed_lines); i++)
            total += strlen(json_string_value(json_array_get(failed_lines, i))) + 1;
        char *details = mem_calloc(total, 1);
        for (size_t i = 0; i < json_array_size(failed_lines); i++) {
            if (i) strcat(details, "\n");
            strcat(details, json_string_value(json_array_get(failed_lines, i)));
        }
        *error_body = body_of(graph_error_new("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                                              details, NULL),
                              node_errors);
        err_set(err, STATUS_ERR_INVALID, "Prompt outputs failed validation%s%s", *details ? ": " : "", details);
        mem_free(details);
        json_decref(failed_lines);
        graph_prompt_free(p);
        return STATUS_ERR_INVALID;
    }
    json_decref(failed_lines);
    p->node_errors = node_errors;
    *out = p;
    return 0;
}
