/* tests/unit/graph/test_validate.c -- graph/validate.c and graph/prompt.c against ComfyUI
 * v0.3.64's validate_prompt: every error type with its exact JSON, literal coercion written back,
 * partial validity, cycles, seeds up to 2^64-1. Expected JSON is written out by hand from
 * ComfyUI's execution.py (types, messages, details formats, extra_info keys). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/mem.h"
#include "base/status.h"
#include "graph/json.h"
#include "graph/prompt.h"

#include <string.h>

/* ===== Fake classes ===== */

static int run_nothing(struct node_run *c, const struct value *in, struct value *out, struct err *e) { return 0; }

static const char *const ABC[] = {"a", "b", "c", NULL};
static const char *const MANY[] = {"o0", "o1", "o2", "o3", "o4", "o5", "o6", "o7", "o8", "o9", "o10", "o11", "o12",
                                   "o13", "o14", "o15", "o16", "o17", "o18", "o19", "o20", "o21", "o22", "o23", "o24",
                                   NULL};

static const struct node_class T_SOURCE = {
    .name = "TSource",
    .category = "test",
    .required = (const struct node_input[]){
        {.name = "seed", .kind = NODE_INPUT_INT, .flags = NODE_IN_DEFAULT | NODE_IN_MIN | NODE_IN_MAX_U64, .int_min = 0},
        {.name = "steps", .kind = NODE_INPUT_INT, .flags = NODE_IN_DEFAULT | NODE_IN_MIN | NODE_IN_MAX,
         .int_default = 20, .int_min = 1, .int_max = 10000},
        {.name = "cfg", .kind = NODE_INPUT_FLOAT, .flags = NODE_IN_DEFAULT | NODE_IN_MIN | NODE_IN_MAX | NODE_IN_STEP,
         .float_default = 8.0, .float_min = 0.0, .float_max = 100.0, .float_step = 0.1},
        {.name = "name", .kind = NODE_INPUT_COMBO, .options = ABC},
        NODE_INPUTS_END},
    .optional = (const struct node_input[]){
        {.name = "text", .kind = NODE_INPUT_STRING},
        {.name = "flag", .kind = NODE_INPUT_BOOLEAN},
        {.name = "many", .kind = NODE_INPUT_COMBO, .options = MANY},
        {.name = "latent_in", .kind = NODE_INPUT_OBJECT, .type = "LATENT"},
        NODE_INPUTS_END},
    .outputs = (const struct node_output[]){{.type = "LATENT"}, {.type = "IMAGE"}, NODE_OUTPUTS_END},
    .run = run_nothing,
};

static const struct node_class T_OUT = {
    .name = "TOut",
    .output_node = true,
    .required = (const struct node_input[]){{.name = "latent", .kind = NODE_INPUT_OBJECT, .type = "LATENT"},
                                            NODE_INPUTS_END},
    .run = run_nothing,
};

/* Takes anything ("*") and a comma-separated type. */
static const struct node_class T_ANY = {
    .name = "TAny",
    .output_node = true,
    .required = (const struct node_input[]){{.name = "x", .kind = NODE_INPUT_OBJECT, .type = "*"},
                                            {.name = "y", .kind = NODE_INPUT_OBJECT, .type = "IMAGE,MASK"},
                                            NODE_INPUTS_END},
    .run = run_nothing,
};

static int setup(void **s) {
    graph_registry_add(&T_SOURCE);
    graph_registry_add(&T_OUT);
    graph_registry_add(&T_ANY);
    return 0;
}

static int teardown(void **s) {
    graph_registry_reset();
    return 0;
}

/* ===== Helpers ===== */

static json_t *J(const char *text) {
    json_t *j = NULL;
    struct err err = {0};
    if (graph_json_loads(text, strlen(text), &j, &err)) fail_msg("bad test JSON: %s\n%s", err.msg, text);
    return j;
}

static void expect_json(const json_t *got, const char *want_text) {
    json_t *want = J(want_text);
    if (!json_equal((json_t *)got, want)) {
        char *g = graph_json_dumps(got, -1), *w = graph_json_dumps(want, -1);
        print_error("got:  %s\nwant: %s\n", g, w);
        mem_free(g), mem_free(w);
        json_decref(want);
        fail();
    }
    json_decref(want);
}

/* Validates; returns rc and leaves the results in *p / *body. */
static int validate(const char *prompt_text, const json_t *targets, json_t **prompt, struct graph_prompt **p,
                    json_t **body) {
    *prompt = J(prompt_text);
    struct err err = {0};
    struct graph_paths paths = {.input = "/nonexistent-input", .output = "/tmp", .temp = "/tmp", .models = "/nonexistent"};
    return graph_prompt_validate(*prompt, &paths, targets, p, body, &err);
}

/* A valid TSource literal block. */
#define SRC(extra) "{\"class_type\": \"TSource\", \"inputs\": {\"seed\": 1, \"steps\": 20, \"cfg\": 8.0, \"name\": \"a\"" extra "}}"
#define OUT(link) "{\"class_type\": \"TOut\", \"inputs\": {\"latent\": " link "}}"

/* One invalid-literal case on TSource feeding TOut: checks the 400 body exactly. */
static void one_error(const char *src, const char *error_obj, const char *top_details) {
    char text[2048];
    snprintf(text, sizeof text, "{\"1\": %s, \"9\": " OUT("[\"1\", 0]") "}", src);
    json_t *prompt, *body = NULL;
    struct graph_prompt *p = NULL;
    assert_int_equal(validate(text, NULL, &prompt, &p, &body), STATUS_ERR_INVALID);
    assert_null(p);
    char want[4096];
    snprintf(want, sizeof want,
             "{\"error\": {\"type\": \"prompt_outputs_failed_validation\", \"message\": \"Prompt outputs failed "
             "validation\", \"details\": \"%s\", \"extra_info\": {}}, \"node_errors\": {\"1\": {\"errors\": [%s], "
             "\"dependent_outputs\": [\"9\"], \"class_type\": \"TSource\"}}}",
             top_details, error_obj);
    expect_json(body, want);
    json_decref(body);
    json_decref(prompt);
}

/* ===== Prompt-level errors ===== */

static void test_body(void **s) {
    json_t *prompt, *body;
    struct err err = {0};
    json_t *b = J("{\"prompt\": {\"1\": {}}, \"client_id\": \"x\"}");
    assert_int_equal(graph_prompt_from_body(b, false, &prompt, &body, &err), 0);
    assert_ptr_equal(prompt, json_object_get(b, "prompt"));
    json_decref(prompt);
    json_decref(b);

    b = J("{\"client_id\": \"x\"}");
    assert_int_equal(graph_prompt_from_body(b, false, &prompt, &body, &err), STATUS_ERR_INVALID);
    expect_json(body, "{\"error\": {\"type\": \"no_prompt\", \"message\": \"No prompt provided\", \"details\": \"No "
                      "prompt provided\", \"extra_info\": {}}, \"node_errors\": {}}");
    json_decref(body);
    json_decref(b);

    b = J("{\"5\": {\"class_type\": \"TOut\", \"inputs\": {}}}"); /* the CLI's bare prompt */
    assert_int_equal(graph_prompt_from_body(b, true, &prompt, &body, &err), 0);
    assert_ptr_equal(prompt, b);
    json_decref(prompt);
    json_decref(b);
}

static void test_invalid_prompt(void **s) {
    json_t *prompt, *body;
    struct graph_prompt *p;
    assert_int_equal(validate("{\"1\": " SRC("") ", \"2\": {\"inputs\": {}}}", NULL, &prompt, &p, &body),
                     STATUS_ERR_INVALID);
    expect_json(body, "{\"error\": {\"type\": \"invalid_prompt\", \"message\": \"Cannot execute because a node is "
                      "missing the class_type property.\", \"details\": \"Node ID '#2'\", \"extra_info\": {}}, "
                      "\"node_errors\": {}}");
    json_decref(body), json_decref(prompt);

    assert_int_equal(validate("{\"7\": {\"class_type\": \"Nope\", \"inputs\": {}}}", NULL, &prompt, &p, &body),
                     STATUS_ERR_INVALID);
    expect_json(body, "{\"error\": {\"type\": \"invalid_prompt\", \"message\": \"Cannot execute because node Nope "
                      "does not exist.\", \"details\": \"Node ID '#7'\", \"extra_info\": {}}, \"node_errors\": {}}");
    json_decref(body), json_decref(prompt);

    assert_int_equal(validate("{\"1\": " SRC("") "}", NULL, &prompt, &p, &body), STATUS_ERR_INVALID);
    expect_json(body, "{\"error\": {\"type\": \"prompt_no_outputs\", \"message\": \"Prompt has no outputs\", "
                      "\"details\": \"\", \"extra_info\": {}}, \"node_errors\": {}}");
    json_decref(body), json_decref(prompt);
}

/* ===== Per-input errors ===== */

static void test_required_missing(void **s) {
    one_error("{\"class_type\": \"TSource\", \"inputs\": {\"seed\": 1, \"cfg\": 8.0, \"name\": \"a\"}}",
              "{\"type\": \"required_input_missing\", \"message\": \"Required input is missing\", \"details\": "
              "\"steps\", \"extra_info\": {\"input_name\": \"steps\"}}",
              "");
}

static void test_required_missing_on_output(void **s) {
    json_t *prompt, *body;
    struct graph_prompt *p;
    assert_int_equal(validate("{\"9\": {\"class_type\": \"TOut\", \"inputs\": {}}}", NULL, &prompt, &p, &body),
                     STATUS_ERR_INVALID);
    expect_json(body, "{\"error\": {\"type\": \"prompt_outputs_failed_validation\", \"message\": \"Prompt outputs "
                      "failed validation\", \"details\": \"Required input is missing: latent\", \"extra_info\": {}}, "
                      "\"node_errors\": {\"9\": {\"errors\": [{\"type\": \"required_input_missing\", \"message\": "
                      "\"Required input is missing\", \"details\": \"latent\", \"extra_info\": {\"input_name\": "
                      "\"latent\"}}], \"dependent_outputs\": [\"9\"], \"class_type\": \"TOut\"}}}");
    json_decref(body), json_decref(prompt);
}

static void test_bad_linked_input(void **s) {
    json_t *prompt, *body;
    struct graph_prompt *p;
    assert_int_equal(validate("{\"9\": " OUT("[\"1\", 0, 5]") "}", NULL, &prompt, &p, &body), STATUS_ERR_INVALID);
    expect_json(json_object_get(json_object_get(body, "node_errors"), "9"),
                "{\"errors\": [{\"type\": \"bad_linked_input\", \"message\": \"Bad linked input, must be a length-2 "
                "list of [node_id, slot_index]\", \"details\": \"latent\", \"extra_info\": {\"input_name\": "
                "\"latent\", \"input_config\": [\"LATENT\", {}], \"received_value\": [\"1\", 0, 5]}}], "
                "\"dependent_outputs\": [\"9\"], \"class_type\": \"TOut\"}");
    json_decref(body), json_decref(prompt);
}

static void test_return_type_mismatch(void **s) {
    json_t *prompt, *body;
    struct graph_prompt *p;
    assert_int_equal(validate("{\"1\": " SRC("") ", \"9\": " OUT("[\"1\", 1]") "}", NULL, &prompt, &p, &body),
                     STATUS_ERR_INVALID);
    expect_json(body, "{\"error\": {\"type\": \"prompt_outputs_failed_validation\", \"message\": \"Prompt outputs "
                      "failed validation\", \"details\": \"Return type mismatch between linked nodes: latent, "
                      "received_type(IMAGE) mismatch input_type(LATENT)\", \"extra_info\": {}}, \"node_errors\": "
                      "{\"9\": {\"errors\": [{\"type\": \"return_type_mismatch\", \"message\": \"Return type mismatch "
                      "between linked nodes\", \"details\": \"latent, received_type(IMAGE) mismatch "
                      "input_type(LATENT)\", \"extra_info\": {\"input_name\": \"latent\", \"input_config\": "
                      "[\"LATENT\", {}], \"received_type\": \"IMAGE\", \"linked_node\": [\"1\", 1]}}], "
                      "\"dependent_outputs\": [\"9\"], \"class_type\": \"TOut\"}}}");
    json_decref(body), json_decref(prompt);
}

static void test_wildcard_and_union_types(void **s) {
    json_t *prompt, *body = NULL;
    struct graph_prompt *p = NULL;
    /* "*" takes LATENT; "IMAGE,MASK" takes IMAGE */
    assert_int_equal(validate("{\"1\": " SRC("") ", \"9\": {\"class_type\": \"TAny\", \"inputs\": {\"x\": [\"1\", 0], "
                              "\"y\": [\"1\", 1]}}}",
                              NULL, &prompt, &p, &body),
                     0);
    graph_prompt_free(p), json_decref(prompt);
    assert_int_equal(validate("{\"1\": " SRC("") ", \"9\": {\"class_type\": \"TAny\", \"inputs\": {\"x\": [\"1\", 0], "
                              "\"y\": [\"1\", 0]}}}",
                              NULL, &prompt, &p, &body),
                     STATUS_ERR_INVALID);
    json_decref(body), json_decref(prompt);
}

static void test_invalid_input_type(void **s) {
    one_error(SRC(", \"steps\": \"abc\""),
              "{\"type\": \"invalid_input_type\", \"message\": \"Failed to convert an input value to a INT value\", "
              "\"details\": \"steps, abc, invalid literal for int() with base 10: 'abc'\", \"extra_info\": "
              "{\"input_name\": \"steps\", \"input_config\": [\"INT\", {\"default\": 20, \"min\": 1, \"max\": 10000}], "
              "\"received_value\": \"abc\", \"exception_message\": \"invalid literal for int() with base 10: 'abc'\"}}",
              "");
    one_error(SRC(", \"cfg\": \"x1\""),
              "{\"type\": \"invalid_input_type\", \"message\": \"Failed to convert an input value to a FLOAT value\", "
              "\"details\": \"cfg, x1, could not convert string to float: 'x1'\", \"extra_info\": {\"input_name\": "
              "\"cfg\", \"input_config\": [\"FLOAT\", {\"default\": 8.0, \"min\": 0.0, \"max\": 100.0, \"step\": 0.1}], "
              "\"received_value\": \"x1\", \"exception_message\": \"could not convert string to float: 'x1'\"}}",
              "");
    one_error(SRC(", \"steps\": null"),
              "{\"type\": \"invalid_input_type\", \"message\": \"Failed to convert an input value to a INT value\", "
              "\"details\": \"steps, None, int() argument must be a string, a bytes-like object or a real number, not "
              "'NoneType'\", \"extra_info\": {\"input_name\": \"steps\", \"input_config\": [\"INT\", {\"default\": 20, "
              "\"min\": 1, \"max\": 10000}], \"received_value\": null, \"exception_message\": \"int() argument must be "
              "a string, a bytes-like object or a real number, not 'NoneType'\"}}",
              "");
}

static void test_min_max(void **s) {
    one_error(SRC(", \"steps\": 0"),
              "{\"type\": \"value_smaller_than_min\", \"message\": \"Value 0 smaller than min of 1\", \"details\": "
              "\"steps\", \"extra_info\": {\"input_name\": \"steps\", \"input_config\": [\"INT\", {\"default\": 20, "
              "\"min\": 1, \"max\": 10000}], \"received_value\": 0}}",
              "");
    one_error(SRC(", \"cfg\": -1"),
              "{\"type\": \"value_smaller_than_min\", \"message\": \"Value -1.0 smaller than min of 0.0\", \"details\": "
              "\"cfg\", \"extra_info\": {\"input_name\": \"cfg\", \"input_config\": [\"FLOAT\", {\"default\": 8.0, "
              "\"min\": 0.0, \"max\": 100.0, \"step\": 0.1}], \"received_value\": -1.0}}",
              "");
    one_error(SRC(", \"cfg\": \"100.5\""),
              "{\"type\": \"value_bigger_than_max\", \"message\": \"Value 100.5 bigger than max of 100.0\", \"details\": "
              "\"cfg\", \"extra_info\": {\"input_name\": \"cfg\", \"input_config\": [\"FLOAT\", {\"default\": 8.0, "
              "\"min\": 0.0, \"max\": 100.0, \"step\": 0.1}], \"received_value\": 100.5}}",
              "");
    one_error(SRC(", \"seed\": 18446744073709551616"),
              "{\"type\": \"value_bigger_than_max\", \"message\": \"Value 18446744073709551616 bigger than max of "
              "18446744073709551615\", \"details\": \"seed\", \"extra_info\": {\"input_name\": \"seed\", "
              "\"input_config\": [\"INT\", {\"default\": 0, \"min\": 0, \"max\": 18446744073709551615}], "
              "\"received_value\": 18446744073709551616}}",
              "");
    one_error(SRC(", \"seed\": -1"),
              "{\"type\": \"value_smaller_than_min\", \"message\": \"Value -1 smaller than min of 0\", \"details\": "
              "\"seed\", \"extra_info\": {\"input_name\": \"seed\", \"input_config\": [\"INT\", {\"default\": 0, "
              "\"min\": 0, \"max\": 18446744073709551615}], \"received_value\": -1}}",
              "");
}

static void test_not_in_list(void **s) {
    one_error(SRC(", \"name\": \"zz\""),
              "{\"type\": \"value_not_in_list\", \"message\": \"Value not in list\", \"details\": \"name: 'zz' not in "
              "['a', 'b', 'c']\", \"extra_info\": {\"input_name\": \"name\", \"input_config\": [[\"a\", \"b\", \"c\"], "
              "{}], \"received_value\": \"zz\"}}",
              "");
    one_error(SRC(", \"many\": \"o99\""),
              "{\"type\": \"value_not_in_list\", \"message\": \"Value not in list\", \"details\": \"many: 'o99' not in "
              "(list of length 25)\", \"extra_info\": {\"input_name\": \"many\", \"input_config\": null, "
              "\"received_value\": \"o99\"}}",
              "");
    one_error(SRC(", \"name\": 5"),
              "{\"type\": \"value_not_in_list\", \"message\": \"Value not in list\", \"details\": \"name: '5' not in "
              "['a', 'b', 'c']\", \"extra_info\": {\"input_name\": \"name\", \"input_config\": [[\"a\", \"b\", \"c\"], "
              "{}], \"received_value\": 5}}",
              "");
}

/* ===== Coercion and seeds ===== */

static void test_coercion_written_back(void **s) {
    json_t *prompt, *body = NULL;
    struct graph_prompt *p = NULL;
    assert_int_equal(validate("{\"1\": {\"class_type\": \"TSource\", \"inputs\": {\"seed\": \"18446744073709551615\","
                              " \"steps\": 5.9, \"cfg\": \" 7_5 \", \"name\": \"b\", \"text\": 5.0, \"flag\": \"false\","
                              " \"many\": {\"__value__\": \"o3\"}, \"ignored\": [1, 2, 3]}}, \"9\": " OUT("[\"1\", 0]") "}",
                              NULL, &prompt, &p, &body),
                     0);
    expect_json(json_object_get(json_object_get(p->json, "1"), "inputs"),
                "{\"seed\": 18446744073709551615, \"steps\": 5, \"cfg\": 75.0, \"name\": \"b\", \"text\": \"5.0\", "
                "\"flag\": true, \"many\": \"o3\", \"ignored\": [1, 2, 3]}");
    int i = graph_prompt_find(p, "1");
    const struct graph_node *n = &p->nodes[i];
    assert_int_equal(n->inputs[0].kind, GRAPH_INPUT_LITERAL);
    assert_true((uint64_t)n->inputs[0].literal.i == UINT64_MAX);
    assert_int_equal(n->inputs[1].literal.i, 5);
    assert_true(n->inputs[2].literal.f == 75.0);
    assert_string_equal(n->inputs[3].literal.s, "b");
    assert_string_equal(n->inputs[4].literal.s, "5.0");
    assert_true(n->inputs[5].literal.b);
    assert_string_equal(n->inputs[6].literal.s, "o3");
    assert_int_equal(n->inputs[7].kind, GRAPH_INPUT_ABSENT); /* optional, not given */
    char *dump = graph_json_dumps(json_object_get(json_object_get(p->json, "1"), "inputs"), -1);
    assert_non_null(strstr(dump, "\"seed\": 18446744073709551615,"));
    mem_free(dump);
    json_t *outs = graph_prompt_outputs_json(p);
    expect_json(outs, "[\"9\"]");
    json_decref(outs);
    graph_prompt_free(p), json_decref(prompt);

    /* Python truthiness and str() */
    assert_int_equal(validate("{\"1\": " SRC(", \"flag\": 0, \"text\": {\"__value__\": [1, \"x\", null]}") ", \"9\": "
                              OUT("[\"1\", 0]") "}",
                              NULL, &prompt, &p, &body),
                     0);
    expect_json(json_object_get(json_object_get(json_object_get(p->json, "1"), "inputs"), "flag"), "false");
    expect_json(json_object_get(json_object_get(json_object_get(p->json, "1"), "inputs"), "text"),
                "\"[1, 'x', None]\"");
    graph_prompt_free(p), json_decref(prompt);
}

/* ===== Links, custom validation, cycles ===== */

static void test_missing_link_target(void **s) {
    json_t *prompt, *body;
    struct graph_prompt *p;
    /* inner node 1 links to a node that is not there */
    assert_int_equal(validate("{\"1\": " SRC(", \"latent_in\": [\"99\", 0]") ", \"9\": " OUT("[\"1\", 0]") "}", NULL,
                              &prompt, &p, &body),
                     STATUS_ERR_INVALID);
    json_t *e = json_array_get(json_object_get(json_object_get(json_object_get(body, "node_errors"), "1"), "errors"), 0);
    expect_json(json_object_get(e, "type"), "\"exception_during_inner_validation\"");
    expect_json(json_object_get(e, "message"), "\"Exception when validating inner node\"");
    expect_json(json_object_get(e, "details"),
                "\"input 'latent_in' is linked to node '99', which is not in the prompt\"");
    expect_json(json_object_get(json_object_get(e, "extra_info"), "linked_node"), "[\"99\", 0]");
    expect_json(json_object_get(json_object_get(e, "extra_info"), "exception_type"), "\"KeyError\"");
    json_decref(body), json_decref(prompt);

    /* on the output itself, and a bad slot */
    assert_int_equal(validate("{\"1\": " SRC("") ", \"9\": " OUT("[\"1\", 5]") "}", NULL, &prompt, &p, &body),
                     STATUS_ERR_INVALID);
    e = json_array_get(json_object_get(json_object_get(json_object_get(body, "node_errors"), "9"), "errors"), 0);
    expect_json(json_object_get(e, "type"), "\"exception_during_validation\"");
    expect_json(json_object_get(e, "details"),
                "\"input 'latent' is linked to output 5 of node '1' (TSource), which has 2 outputs\"");
    expect_json(json_object_get(json_object_get(body, "error"), "details"),
                "\"Exception when validating node: input 'latent' is linked to output 5 of node '1' (TSource), which "
                "has 2 outputs\"");
    json_decref(body), json_decref(prompt);
}

static void test_custom_validation(void **s) {
    json_t *prompt, *body;
    struct graph_prompt *p;
    /* LoadImage's VALIDATE_INPUTS: the file must exist (not checked against the combo list) */
    assert_int_equal(validate("{\"1\": {\"class_type\": \"LoadImage\", \"inputs\": {\"image\": \"nope.png\"}},"
                              " \"2\": {\"class_type\": \"SaveImage\", \"inputs\": {\"images\": [\"1\", 0],"
                              " \"filename_prefix\": \"x\"}}}",
                              NULL, &prompt, &p, &body),
                     STATUS_ERR_INVALID);
    expect_json(json_object_get(body, "node_errors"),
                "{\"1\": {\"errors\": [{\"type\": \"custom_validation_failed\", \"message\": \"Custom validation failed "
                "for node\", \"details\": \"image - Invalid image file: nope.png\", \"extra_info\": {\"input_name\": "
                "\"image\"}}], \"dependent_outputs\": [\"2\"], \"class_type\": \"LoadImage\"}}");
    json_decref(body), json_decref(prompt);
}

static void test_cycle(void **s) {
    json_t *prompt, *body;
    struct graph_prompt *p;
    assert_int_equal(validate("{\"1\": " SRC(", \"latent_in\": [\"2\", 0]") ", \"2\": " SRC(", \"latent_in\": [\"1\", 0]")
                              ", \"9\": " OUT("[\"1\", 0]") "}",
                              NULL, &prompt, &p, &body),
                     STATUS_ERR_INVALID);
    expect_json(json_object_get(body, "node_errors"),
                "{\"1\": {\"errors\": [{\"type\": \"dependency_cycle\", \"message\": \"Dependency cycle detected\", "
                "\"details\": \"1 (TSource) -> 2 (TSource) -> 1 (TSource)\", \"extra_info\": {\"node_id\": \"1\", "
                "\"cycle_nodes\": [\"1\", \"2\"]}}], \"dependent_outputs\": [\"9\"], \"class_type\": \"TSource\"}, "
                "\"2\": {\"errors\": [{\"type\": \"dependency_cycle\", \"message\": \"Dependency cycle detected\", "
                "\"details\": \"1 (TSource) -> 2 (TSource) -> 1 (TSource)\", \"extra_info\": {\"node_id\": \"2\", "
                "\"cycle_nodes\": [\"1\", \"2\"]}}], \"dependent_outputs\": [\"9\"], \"class_type\": \"TSource\"}}");
    json_decref(body), json_decref(prompt);

    /* a node linked to itself */
    assert_int_equal(validate("{\"1\": " SRC(", \"latent_in\": [\"1\", 0]") ", \"9\": " OUT("[\"1\", 0]") "}", NULL,
                              &prompt, &p, &body),
                     STATUS_ERR_INVALID);
    expect_json(json_object_get(json_array_get(json_object_get(json_object_get(json_object_get(body, "node_errors"), "1"),
                                                               "errors"),
                                               0),
                                "details"),
                "\"1 (TSource) -> 1 (TSource)\"");
    json_decref(body), json_decref(prompt);
}

/* ===== Several outputs ===== */

static void test_partial_validity(void **s) {
    json_t *prompt, *body = NULL;
    struct graph_prompt *p = NULL;
    /* 9 is fine, 8 has a bad upstream (node 2), 7 is fine and shares node 1 */
    const char *text = "{\"1\": " SRC("") ", \"2\": " SRC(", \"steps\": 0") ", \"9\": " OUT("[\"1\", 0]") ", \"8\": "
        OUT("[\"2\", 0]") ", \"7\": " OUT("[\"1\", 0]") "}";
    assert_int_equal(validate(text, NULL, &prompt, &p, &body), 0);
    assert_non_null(p);
    json_t *outs = graph_prompt_outputs_json(p);
    expect_json(outs, "[\"9\", \"7\"]");
    json_decref(outs);
    expect_json(p->node_errors,
                "{\"2\": {\"errors\": [{\"type\": \"value_smaller_than_min\", \"message\": \"Value 0 smaller than min of "
                "1\", \"details\": \"steps\", \"extra_info\": {\"input_name\": \"steps\", \"input_config\": [\"INT\", "
                "{\"default\": 20, \"min\": 1, \"max\": 10000}], \"received_value\": 0}}], \"dependent_outputs\": "
                "[\"8\"], \"class_type\": \"TSource\"}}");
    assert_false(p->nodes[graph_prompt_find(p, "8")].valid);
    assert_true(p->nodes[graph_prompt_find(p, "1")].valid);
    graph_prompt_free(p), json_decref(prompt);

    /* partial_execution_targets: only 8 is a target -> nothing valid to run */
    json_t *targets = J("[\"8\", \"1\"]");
    assert_int_equal(validate(text, targets, &prompt, &p, &body), STATUS_ERR_INVALID);
    expect_json(json_object_get(json_object_get(body, "error"), "type"), "\"prompt_outputs_failed_validation\"");
    json_decref(body), json_decref(prompt);
    json_decref(targets);
    targets = J("[\"1\"]"); /* not an output node: no targets at all */
    assert_int_equal(validate(text, targets, &prompt, &p, &body), STATUS_ERR_INVALID);
    expect_json(json_object_get(json_object_get(body, "error"), "type"), "\"prompt_no_outputs\"");
    json_decref(body), json_decref(prompt);
    json_decref(targets);
}

/* ComfyUI appends each failed output to every node already holding errors. */
static void test_dependent_outputs_and_details(void **s) {
    json_t *prompt, *body = NULL;
    struct graph_prompt *p = NULL;
    const char *text = "{\"2\": " SRC(", \"steps\": 0") ", \"8\": " OUT("[\"2\", 0]") ", \"7\": {\"class_type\": "
                       "\"TOut\", \"inputs\": {}}, \"6\": " OUT("[\"2\", 0]") "}";
    assert_int_equal(validate(text, NULL, &prompt, &p, &body), STATUS_ERR_INVALID);
    expect_json(json_object_get(json_object_get(json_object_get(body, "node_errors"), "2"), "dependent_outputs"),
                "[\"8\", \"7\", \"6\"]");
    expect_json(json_object_get(json_object_get(json_object_get(body, "node_errors"), "7"), "dependent_outputs"),
                "[\"7\", \"6\"]");
    expect_json(json_object_get(json_object_get(body, "error"), "details"), "\"Required input is missing: latent\"");
    json_decref(body), json_decref(prompt);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_body),
        cmocka_unit_test(test_invalid_prompt),
        cmocka_unit_test(test_required_missing),
        cmocka_unit_test(test_required_missing_on_output),
        cmocka_unit_test(test_bad_linked_input),
        cmocka_unit_test(test_return_type_mismatch),
        cmocka_unit_test(test_wildcard_and_union_types),
        cmocka_unit_test(test_invalid_input_type),
        cmocka_unit_test(test_min_max),
        cmocka_unit_test(test_not_in_list),
        cmocka_unit_test(test_coercion_written_back),
        cmocka_unit_test(test_missing_link_target),
        cmocka_unit_test(test_custom_validation),
        cmocka_unit_test(test_cycle),
        cmocka_unit_test(test_partial_validity),
        cmocka_unit_test(test_dependent_outputs_and_details),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
