/* tests/unit/graph/test_json.c -- graph/json.c: big integers survive a load/dump round trip,
 * and the serialiser writes byte for byte what Python's json.dumps writes (expected strings
 * produced by CPython 3.11's json and repr). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/mem.h"
#include "base/status.h"
#include "graph/json.h"

#include <string.h>

static json_t *load(const char *text) {
    json_t *j = NULL;
    struct err err = {0};
    int rc = graph_json_loads(text, strlen(text), &j, &err);
    if (rc) fail_msg("loads(%s): %s", text, err.msg);
    return j;
}

static void check_dump(const json_t *j, int indent, const char *want) {
    char *got = graph_json_dumps(j, indent);
    if (strcmp(got, want) != 0) fail_msg("dumps:\n got  %s\n want %s", got, want);
    mem_free(got);
}

static void test_python_dumps(void **s) {
    const char *in =
        "{\"a\": 1, \"b\": [1.0, 0.1, 1e-05, 1e16, 123456789012345678.0, -0.0, 2.5e-7, 1e15, 0.0001, 1.5e300],"
        " \"s\": \"\\u00e9\\n\\\"\\\\ \\u0001 \\ud83d\\ude00 \\u007f\", \"seed\": 18446744073709551615,"
        " \"neg\": -9223372036854775808, \"e\": {}, \"l\": [], \"n\": null, \"t\": true}";
    json_t *j = load(in);
    check_dump(j, -1,
               "{\"a\": 1, \"b\": [1.0, 0.1, 1e-05, 1e+16, 1.2345678901234568e+17, -0.0, 2.5e-07, "
               "1000000000000000.0, 0.0001, 1.5e+300], \"s\": \"\\u00e9\\n\\\"\\\\ \\u0001 \\ud83d\\ude00 "
               "\\u007f\", \"seed\": 18446744073709551615, \"neg\": -9223372036854775808, \"e\": {}, \"l\": [], "
               "\"n\": null, \"t\": true}");
    json_decref(j);
    j = load("{\"a\":[1,{\"b\":2}]}");
    check_dump(j, 2, "{\n  \"a\": [\n    1,\n    {\n      \"b\": 2\n    }\n  ]\n}");
    json_decref(j);
}

static void test_float_repr(void **s) {
    static const struct {
        double x;
        const char *want;
    } cases[] = {
        {0.1, "0.1"},       {1.0 / 3, "0.3333333333333333"}, {100.0, "100.0"},      {1e22, "1e+22"},
        {5e-324, "5e-324"}, {1.7976931348623157e308, "1.7976931348623157e+308"},   {123.456, "123.456"},
        {0.1 + 0.2, "0.30000000000000004"},                   {1e-4, "0.0001"},       {-2.5, "-2.5"},
        {8.0, "8.0"},       {0.01, "0.01"},                   {1e16, "1e+16"},        {12345678.9, "12345678.9"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[64];
        graph_py_float_repr(cases[i].x, buf, sizeof buf);
        if (strcmp(buf, cases[i].want) != 0) fail_msg("repr(%.17g) = %s, want %s", cases[i].x, buf, cases[i].want);
    }
}

static void test_bigints(void **s) {
    json_t *j = load("{\"seed\": 18446744073709551615, \"big\": -99999999999999999999, \"ok\": 9223372036854775807,"
                     " \"edge\": 9223372036854775808, \"s\": \"18446744073709551615\", \"f\": 1e30}");
    bool neg;
    uint64_t mag;
    assert_true(graph_json_int_get(json_object_get(j, "seed"), &neg, &mag));
    assert_false(neg);
    assert_true(mag == UINT64_MAX);
    assert_true(graph_json_int_get(json_object_get(j, "edge"), &neg, &mag));
    assert_true(mag == (uint64_t)INT64_MAX + 1);
    assert_true(json_is_integer(json_object_get(j, "ok")));
    assert_false(graph_json_int_get(json_object_get(j, "big"), &neg, &mag)); /* beyond 2^64 */
    const char *digits;
    assert_true(graph_json_is_bigint(json_object_get(j, "big"), &digits));
    assert_string_equal(digits, "-99999999999999999999");
    assert_false(graph_json_is_bigint(json_object_get(j, "s"), NULL)); /* a real string stays a string */
    assert_true(json_is_real(json_object_get(j, "f")));
    check_dump(j, -1,
               "{\"seed\": 18446744073709551615, \"big\": -99999999999999999999, \"ok\": 9223372036854775807, "
               "\"edge\": 9223372036854775808, \"s\": \"18446744073709551615\", \"f\": 1e+30}");
    json_decref(j);
    json_t *u = graph_json_u64(UINT64_MAX);
    check_dump(u, -1, "18446744073709551615");
    json_decref(u);
    u = graph_json_u64(5);
    assert_true(json_is_integer(u));
    json_decref(u);
}

static void test_repr(void **s) {
    json_t *j = load("[\"it's\", \"say \\\"hi\\\"\", \"both ' and \\\"\", \"tab\\there\", {\"k\": [1, \"a\", null, true, 2.5]}]");
    const char *want[] = {"\"it's\"", "'say \"hi\"'", "'both \\' and \"'", "'tab\\there'", "{'k': [1, 'a', None, True, 2.5]}"};
    for (size_t i = 0; i < 5; i++) {
        char *r = graph_json_py_repr(json_array_get(j, i));
        if (strcmp(r, want[i]) != 0) fail_msg("repr %zu: %s != %s", i, r, want[i]);
        mem_free(r);
    }
    char *st = graph_json_py_str(json_array_get(j, 0));
    assert_string_equal(st, "it's");
    mem_free(st);
    json_decref(j);
}

static void test_errors(void **s) {
    json_t *j;
    struct err err = {0};
    assert_int_equal(graph_json_loads("{\"a\": }", 7, &j, &err), STATUS_ERR_FORMAT);
    assert_non_null(strstr(err.msg, "line 1"));
    assert_null(j);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_python_dumps), cmocka_unit_test(test_float_repr), cmocka_unit_test(test_bigints),
        cmocka_unit_test(test_repr),         cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
