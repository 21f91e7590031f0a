/* tests/unit/model/test_tokenizer.c -- the CLIP tokenizer and ComfyUI prompt syntax.
 * Expected ids and weights come from tests/data/tokenizer/expected.json, written once by the
 * independent Python reference tests/ref/tokenizer_ref.py (Python's unicodedata, str.lower,
 * float() and the `regex` module with CLIP's pattern) over the committed tiny vocabulary; the
 * weighting cases below use the weights ComfyUI documents (sd1_clip.py token_weights docstring).
 * If tokenizer_write_tiny's output changes on purpose: write it to tests/data/tokenizer/tiny/, then
 * rerun `python3 tests/ref/tokenizer_ref.py` (it needs the `regex` module) to refresh expected.json.
 * Threads: main, plus a few encode threads in one test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/err.h"
#include "base/mem.h"
#include "base/status.h"
#include "model/tokenizer.h"

#define TINY_DIR KILN_TEST_DATA "/tokenizer/tiny"
#define L TOKENIZER_CHUNK_LEN

/* ===== Helpers ===== */

static struct tokenizer tiny;
static int32_t CAT, START, END; /* ids in the tiny vocabulary */

static int setup(void **state) {
    (void)state;
    struct err e = {0};
    if (tokenizer_load(&tiny, TINY_DIR "/vocab.json", TINY_DIR "/merges.txt", &e)) {
        fprintf(stderr, "load: %s\n", e.msg);
        return -1;
    }
    CAT = tokenizer_token_id(&tiny, "cat</w>");
    START = tiny.start_id;
    END = tiny.end_id;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    tokenizer_deinit(&tiny);
    return 0;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = mem_alloc((size_t)len + 1);
    assert_int_equal(fread(p, 1, (size_t)len, f), (size_t)len);
    p[len] = 0;
    fclose(f);
    *n = (size_t)len;
    return p;
}

static void make_tmpdir(char *dir) {
    strcpy(dir, "/tmp/kiln_tok_XXXXXX");
    assert_non_null(mkdtemp(dir));
}

static void rm_dir(const char *dir) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* plain ids of text, as a fresh array (mem_free it). */
static int32_t *plain(const char *text, int *n) {
    int32_t *ids = NULL;
    struct err e = {0};
    assert_int_equal(tokenizer_encode_plain(&tiny, text, &ids, n, &e), 0);
    return ids;
}

static void assert_same_plain(const char *a, const char *b) {
    int na, nb;
    int32_t *ia = plain(a, &na), *ib = plain(b, &nb);
    assert_int_equal(na, nb);
    for (int i = 0; i < na; i++) assert_int_equal(ia[i], ib[i]);
    mem_free(ia);
    mem_free(ib);
}

static void encode_ok(const char *text, struct tokenizer_chunks *c) {
    struct err e = {0};
    int rc = tokenizer_encode(&tiny, text, c, &e);
    if (rc) fprintf(stderr, "encode \"%.60s\": %s\n", text, e.msg);
    assert_int_equal(rc, 0);
    assert_true(c->n_chunks >= 1);
}

/* Checks that chunk k, from position pos, holds the plain ids of text, all with weight w;
 * returns the position after them. */
static int expect_run(const struct tokenizer_chunks *c, int k, int pos, const char *text, float w) {
    int n;
    int32_t *ids = plain(text, &n);
    for (int i = 0; i < n; i++) {
        assert_int_equal(c->ids[k * L + pos + i], ids[i]);
        assert_float_equal(c->weights[k * L + pos + i], w, 0.0f);
    }
    mem_free(ids);
    return pos + n;
}

/* Checks the tail of chunk k from pos: end, then pads, all weight 1. */
static void expect_tail(const struct tokenizer_chunks *c, int k, int pos) {
    assert_int_equal(c->ids[k * L + pos], END);
    for (int i = pos; i < L; i++) {
        assert_int_equal(c->ids[k * L + i], tiny.pad_id);
        assert_true(c->weights[k * L + i] == 1.0f);
    }
}

/* ===== Tiny vocabulary ===== */

static void test_tiny_layout_and_determinism(void **state) {
    (void)state;
    char dir[64];
    make_tmpdir(dir);
    struct err e = {0};
    assert_int_equal(tokenizer_write_tiny(dir, &e), 0);
    const char *names[] = {"vocab.json", "merges.txt"};
    for (int i = 0; i < 2; i++) { /* same bytes as the committed copy the reference read */
        char a[128], b[128];
        snprintf(a, sizeof a, "%s/%s", dir, names[i]);
        snprintf(b, sizeof b, "%s/%s", TINY_DIR, names[i]);
        size_t na, nb;
        char *pa = slurp(a, &na), *pb = slurp(b, &nb);
        assert_int_equal(na, nb);
        assert_memory_equal(pa, pb, na);
        mem_free(pa);
        mem_free(pb);
    }
    rm_dir(dir);

    assert_int_equal(tokenizer_tiny_vocab_size(), TOKENIZER_TINY_VOCAB_SIZE);
    assert_true(TOKENIZER_TINY_VOCAB_SIZE <= 1024);
    assert_int_equal(tiny.n_vocab, TOKENIZER_TINY_VOCAB_SIZE);
    assert_int_equal(tiny.n_merges, TOKENIZER_TINY_MERGES);
    /* CLIP-L's id layout: "!" first, byte characters, the same with </w>, merges, specials. */
    assert_string_equal(tokenizer_token_str(&tiny, 0), "!");
    assert_string_equal(tokenizer_token_str(&tiny, 255), "\xc5\x83"); /* U+0143: byte 0xAD */
    assert_string_equal(tokenizer_token_str(&tiny, 256), "!</w>");
    assert_string_equal(tokenizer_token_str(&tiny, 320), "a</w>");   /* as in CLIP-L */
    assert_int_equal(START, TOKENIZER_TINY_VOCAB_SIZE - 2);
    assert_int_equal(END, TOKENIZER_TINY_VOCAB_SIZE - 1);
    assert_int_equal(tiny.pad_id, END);
    assert_string_equal(tokenizer_token_str(&tiny, START), "<|startoftext|>");
    assert_null(tokenizer_token_str(&tiny, TOKENIZER_TINY_VOCAB_SIZE));
    assert_null(tokenizer_token_str(&tiny, -1));
    for (int32_t i = 0; i < TOKENIZER_TINY_VOCAB_SIZE; i++)
        assert_int_equal(tokenizer_token_id(&tiny, tokenizer_token_str(&tiny, i)), i);
    assert_true(CAT > 512); /* "cat" is a learned word */
    assert_int_equal(tokenizer_token_id(&tiny, "no such token"), -1);
}

/* ===== Against the Python reference ===== */

static json_t *expected(void) {
    json_error_t je;
    json_t *root = json_load_file(KILN_TEST_DATA "/tokenizer/expected.json", 0, &je);
    if (!root) fprintf(stderr, "expected.json: line %d: %s\n", je.line, je.text);
    assert_non_null(root);
    return root;
}

static void test_plain_matches_reference(void **state) {
    (void)state;
    json_t *root = expected();
    json_t *cases = json_object_get(root, "plain");
    assert_true(json_array_size(cases) >= 20);
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *text = json_string_value(json_object_get(c, "text"));
        json_t *want = json_object_get(c, "ids");
        int n;
        int32_t *ids = plain(text, &n);
        if ((size_t)n != json_array_size(want)) fprintf(stderr, "case %zu \"%s\": %d ids\n", i, text, n);
        assert_int_equal(n, json_array_size(want));
        for (int k = 0; k < n; k++) {
            json_int_t w = json_integer_value(json_array_get(want, (size_t)k));
            if (ids[k] != w) fprintf(stderr, "case %zu \"%s\": id %d is %d, want %lld\n", i, text, k, ids[k], (long long)w);
            assert_int_equal(ids[k], w);
        }
        mem_free(ids);
    }
    json_decref(root);
}

static void test_chunks_match_reference(void **state) {
    (void)state;
    json_t *root = expected();
    json_t *cases = json_object_get(root, "chunks");
    assert_true(json_array_size(cases) >= 20);
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *text = json_string_value(json_object_get(c, "text"));
        json_t *ids = json_object_get(c, "ids"), *ws = json_object_get(c, "weights");
        struct tokenizer_chunks ch;
        encode_ok(text, &ch);
        if ((size_t)ch.n_chunks != json_array_size(ids)) fprintf(stderr, "case %zu \"%.50s\": %d chunks\n", i, text, ch.n_chunks);
        assert_int_equal(ch.n_chunks, json_array_size(ids));
        for (int k = 0; k < ch.n_chunks; k++) {
            json_t *ri = json_array_get(ids, (size_t)k), *rw = json_array_get(ws, (size_t)k);
            assert_int_equal(json_array_size(ri), L);
            for (int j = 0; j < L; j++) {
                json_int_t want = json_integer_value(json_array_get(ri, (size_t)j));
                float wantw = (float)json_number_value(json_array_get(rw, (size_t)j));
                if (ch.ids[k * L + j] != want || ch.weights[k * L + j] != wantw)
                    fprintf(stderr, "case %zu \"%.50s\" chunk %d pos %d: %d/%g, want %lld/%g\n", i, text, k, j,
                            ch.ids[k * L + j], ch.weights[k * L + j], (long long)want, wantw);
                assert_int_equal(ch.ids[k * L + j], want);
                assert_true(ch.weights[k * L + j] == wantw);
            }
        }
        tokenizer_chunks_deinit(&ch);
    }
    json_decref(root);
}

/* ===== Weighting syntax, by hand ===== */

static void test_weights(void **state) {
    (void)state;
    struct tokenizer_chunks c;

    encode_ok("(cat:1.3)", &c);
    assert_int_equal(c.ids[0], START);
    assert_true(c.weights[0] == 1.0f);
    assert_int_equal(c.ids[1], CAT);
    assert_true(c.weights[1] == 1.3f);
    expect_tail(&c, 0, 2);
    assert_true(tokenizer_chunks_weighted(&c));
    tokenizer_chunks_deinit(&c);

    encode_ok("((cat))", &c); /* 1.1 * 1.1 in double, then float */
    assert_int_equal(c.ids[1], CAT);
    assert_true(c.weights[1] == (float)(1.1 * 1.1));
    assert_true(fabsf(c.weights[1] - 1.21f) < 1e-6f);
    tokenizer_chunks_deinit(&c);

    encode_ok("\\(cat\\)", &c); /* escaped: literal parentheses, weight 1 */
    int end = expect_run(&c, 0, 1, "(cat)", 1.0f);
    expect_tail(&c, 0, end);
    assert_false(tokenizer_chunks_weighted(&c));
    tokenizer_chunks_deinit(&c);
    /* only dropped characters: an empty group with no ids at all (tests/fuzz/fuzz_tokenizer
     * found the offset taken from the NULL id vector) encodes as the empty prompt */
    encode_ok("\x01", &c);
    assert_int_equal(c.n_chunks, 1);
    assert_int_equal(c.ids[0], START);
    expect_tail(&c, 0, 1);
    tokenizer_chunks_deinit(&c);

    encode_ok("(a:b)", &c); /* not a number: the colon stays, x1.1 applies */
    end = expect_run(&c, 0, 1, "a:b", 1.1f);
    expect_tail(&c, 0, end);
    tokenizer_chunks_deinit(&c);

    encode_ok("(cat:1.5f)", &c);
    end = expect_run(&c, 0, 1, "cat:1.5f", 1.1f);
    expect_tail(&c, 0, end);
    tokenizer_chunks_deinit(&c);

    encode_ok("(cat:inf) (dog:-nan)", &c);
    assert_true(isinf(c.weights[1]) && c.weights[1] > 0);
    assert_true(isnan(c.weights[2]));
    tokenizer_chunks_deinit(&c);

    encode_ok("(cat:1e1_0)", &c); /* Python's float() takes '_' between digits */
    assert_true(c.weights[1] == 1e10f);
    tokenizer_chunks_deinit(&c);

    encode_ok("(cat:1__0)", &c);
    end = expect_run(&c, 0, 1, "cat:1__0", 1.1f);
    tokenizer_chunks_deinit(&c);

    /* ComfyUI's documented examples (sd1_clip.py token_weights docstring). */
    encode_ok("foo ((((lol (cat:666) attack:100)))) baz", &c);
    end = expect_run(&c, 0, 1, "foo ", 1.0f);
    end = expect_run(&c, 0, end, "lol ", 100.0f);
    end = expect_run(&c, 0, end, "cat", 666.0f);
    end = expect_run(&c, 0, end, " attack", 100.0f);
    end = expect_run(&c, 0, end, " baz", 1.0f);
    expect_tail(&c, 0, end);
    tokenizer_chunks_deinit(&c);

    encode_ok("foo ((((lol (cat:666) attack):100))) baz", &c);
    end = expect_run(&c, 0, 1, "foo ", 1.0f);
    end = expect_run(&c, 0, end, "lol ", (float)(100.0 * 1.1));
    end = expect_run(&c, 0, end, "cat", 666.0f);
    end = expect_run(&c, 0, end, " attack", (float)(100.0 * 1.1));
    end = expect_run(&c, 0, end, " baz", 1.0f);
    tokenizer_chunks_deinit(&c);

    encode_ok("((cat:1.0):0.0) ((cat):1.1) ((cat:1.1))", &c);
    assert_true(c.weights[1] == 1.0f);
    assert_true(c.weights[2] == (float)(1.1 * 1.1));
    assert_true(c.weights[3] == 1.1f);
    tokenizer_chunks_deinit(&c);

    encode_ok("[cat]", &c); /* brackets are text in ComfyUI */
    end = expect_run(&c, 0, 1, "[cat]", 1.0f);
    expect_tail(&c, 0, end);
    tokenizer_chunks_deinit(&c);
}

static void test_unbalanced_and_deep(void **state) {
    (void)state;
    const char *odd[] = {"(((((", ")))))", "((a)", "(a))", ")(", "a)(b", "(", ")", "(:)", "():",
                         "\\", "\\(", "cat\\", "(\\)", "((((((((((cat:1.2)"};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        struct tokenizer_chunks c;
        encode_ok(odd[i], &c);
        assert_int_equal(c.ids[0], START);
        tokenizer_chunks_deinit(&c);
    }
    /* Unclosed parentheses are plain text. */
    struct tokenizer_chunks c;
    encode_ok("((cat", &c);
    int end = expect_run(&c, 0, 1, "((cat", 1.0f);
    expect_tail(&c, 0, end);
    tokenizer_chunks_deinit(&c);

    /* 100 levels: weight 1.1^100; 1000 levels: rejected, like ComfyUI's RecursionError. */
    char *deep = mem_alloc(4096);
    for (int depth = 100; depth <= 1000; depth += 900) {
        char *p = deep;
        for (int i = 0; i < depth; i++) *p++ = '(';
        p += sprintf(p, "cat");
        for (int i = 0; i < depth; i++) *p++ = ')';
        *p = 0;
        struct err e = {0};
        int rc = tokenizer_encode(&tiny, deep, &c, &e);
        if (depth == 100) {
            assert_int_equal(rc, 0);
            double w = 1.0;
            for (int i = 0; i < 100; i++) w *= 1.1;
            assert_true(c.weights[1] == (float)w);
            tokenizer_chunks_deinit(&c);
        } else {
            assert_int_equal(rc, STATUS_ERR_INVALID);
            assert_non_null(strstr(e.msg, "parentheses"));
        }
    }
    /* Many unclosed parentheses do not recurse. */
    memset(deep, '(', 4000);
    deep[4000] = 0;
    encode_ok(deep, &c);
    tokenizer_chunks_deinit(&c);
    mem_free(deep);
}

static void test_embedding_words(void **state) {
    (void)state;
    struct tokenizer_chunks c;
    /* A missing embedding's name is dropped; its trailing commas come back as text. */
    encode_ok("a cat embedding:foo, a dog", &c);
    int end = expect_run(&c, 0, 1, "a cat", 1.0f);
    end = expect_run(&c, 0, end, ", a dog", 1.0f);
    expect_tail(&c, 0, end);
    tokenizer_chunks_deinit(&c);

    encode_ok("embedding:bar", &c);
    expect_tail(&c, 0, 1);
    tokenizer_chunks_deinit(&c);

    encode_ok("a cat,embedding:bar", &c); /* not after whitespace: plain text */
    end = expect_run(&c, 0, 1, "a cat,embedding:bar", 1.0f);
    tokenizer_chunks_deinit(&c);

    struct err e = {0};
    assert_int_equal(tokenizer_encode(&tiny, "a cat embedding:", &c, &e), STATUS_ERR_INVALID);
    assert_non_null(strstr(e.msg, "embedding:"));
}

/* ===== Chunking, by hand ===== */

static char *repeat(const char *word, int n, const char *tail) {
    char *s = mem_alloc((strlen(word) + 1) * (size_t)n + strlen(tail) + 1);
    s[0] = 0;
    for (int i = 0; i < n; i++) {
        if (i) strcat(s, " ");
        strcat(s, word);
    }
    strcat(s, tail);
    return s;
}

static void test_chunking(void **state) {
    (void)state;
    struct tokenizer_chunks c;
    int32_t A = tokenizer_token_id(&tiny, "a</w>"), B = tokenizer_token_id(&tiny, "b</w>");

    encode_ok("", &c); /* [start, end, pad...] */
    assert_int_equal(c.n_chunks, 1);
    assert_int_equal(c.ids[0], START);
    expect_tail(&c, 0, 1);
    assert_false(tokenizer_chunks_weighted(&c));
    tokenizer_chunks_deinit(&c);

    char *s = repeat("cat", 80, ""); /* one group of 80: split 75 + 5 */
    encode_ok(s, &c);
    assert_int_equal(c.n_chunks, 2);
    for (int k = 0; k < 2; k++) assert_int_equal(c.ids[k * L], START);
    for (int i = 1; i <= 75; i++) assert_int_equal(c.ids[i], CAT);
    assert_int_equal(c.ids[76], END);
    for (int i = 1; i <= 5; i++) assert_int_equal(c.ids[L + i], CAT);
    expect_tail(&c, 1, 6);
    tokenizer_chunks_deinit(&c);
    mem_free(s);

    s = repeat("cat", 75, ""); /* exactly full: one chunk */
    encode_ok(s, &c);
    assert_int_equal(c.n_chunks, 1);
    assert_int_equal(c.ids[75], CAT);
    assert_int_equal(c.ids[76], END);
    tokenizer_chunks_deinit(&c);
    mem_free(s);

    s = repeat("cat", 73, " (a b a b a:1.2)"); /* a 5-id group that does not fit moves whole */
    encode_ok(s, &c);
    assert_int_equal(c.n_chunks, 2);
    assert_int_equal(c.ids[73], CAT);
    expect_tail(&c, 0, 74);
    int32_t group5[] = {A, B, A, B, A};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(c.ids[L + 1 + i], group5[i]);
        assert_true(c.weights[L + 1 + i] == 1.2f);
    }
    expect_tail(&c, 1, 6);
    tokenizer_chunks_deinit(&c);
    mem_free(s);

    s = repeat("cat", 70, " (a b a b a b a b:1.2)"); /* an 8-id group is split: 5 + 3 */
    encode_ok(s, &c);
    assert_int_equal(c.n_chunks, 2);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(c.ids[71 + i], i % 2 ? B : A);
        assert_true(c.weights[71 + i] == 1.2f);
    }
    assert_int_equal(c.ids[76], END);
    for (int i = 0; i < 3; i++) assert_int_equal(c.ids[L + 1 + i], (5 + i) % 2 ? B : A);
    expect_tail(&c, 1, 4);
    tokenizer_chunks_deinit(&c);
    mem_free(s);

    s = repeat("(cat:1.1)", 151, ""); /* 151 one-id groups: 75 + 75 + 1 */
    encode_ok(s, &c);
    assert_int_equal(c.n_chunks, 3);
    assert_int_equal(c.ids[L + 75], CAT);
    assert_int_equal(c.ids[2 * L + 1], CAT);
    assert_true(c.weights[2 * L + 1] == 1.1f);
    expect_tail(&c, 2, 2);
    tokenizer_chunks_deinit(&c);
    mem_free(s);
}

/* ===== Unicode clean-up, by hand ===== */

static void test_unicode_cleanup(void **state) {
    (void)state;
    assert_same_plain("A PHOTO of a CAT", "a photo of a cat");
    assert_same_plain("c\x07" "a\x1bt", "cat");                    /* control characters go */
    assert_same_plain("ca\xe2\x80\x8bt", "cat");                   /* U+200B (Cf) goes */
    assert_same_plain("\t\ncat  \r\xc2\xa0 dog\xe3\x80\x80", "cat dog"); /* whitespace collapses */
    assert_same_plain("cafe\xcc\x81", "caf\xc3\xa9");              /* NFC: e + U+0301 = é */
    assert_same_plain("CAF\xc3\x89", "caf\xc3\xa9");               /* É lowercases to é */
    assert_same_plain("\xe7\x8c\xab\xe7\x8c\xab", "\xe7\x8c\xab \xe7\x8c\xab"); /* CJK spaced */
    assert_same_plain("c\xfft\x80", "ct");                          /* invalid UTF-8 dropped */
    int n;
    int32_t *ids = plain("", &n);
    assert_int_equal(n, 0);
    mem_free(ids);
}

/* ===== Finding the files ===== */

static void put_pair(const char *dir, bool vocab, bool merges) {
    char p[256];
    mkdir(dir, 0755);
    if (vocab) {
        snprintf(p, sizeof p, "%s/vocab.json", dir);
        write_text(p, "{}");
    }
    if (merges) {
        snprintf(p, sizeof p, "%s/merges.txt", dir);
        write_text(p, "#version: 0.2\n");
    }
}

static void test_find(void **state) {
    (void)state;
    char root[64], exp[128], ck[128], ckpt[160], models[128], clipl[192], v[512], m[512];
    make_tmpdir(root);
    snprintf(exp, sizeof exp, "%s/explicit", root);
    snprintf(ck, sizeof ck, "%s/ckpts", root);
    snprintf(ckpt, sizeof ckpt, "%s/model.safetensors", ck);
    snprintf(models, sizeof models, "%s/models", root);
    snprintf(clipl, sizeof clipl, "%s/tokenizers/clip-l", models);
    put_pair(exp, true, false); /* only vocab.json */
    put_pair(ck, false, false);
    mkdir(models, 0755);

    struct err e = {0};
    assert_int_equal(tokenizer_find(v, m, sizeof v, exp, ckpt, models, &e), STATUS_ERR_NOT_FOUND);
    assert_non_null(strstr(e.msg, exp));
    assert_non_null(strstr(e.msg, "has vocab.json but no merges.txt"));
    assert_non_null(strstr(e.msg, ck));
    assert_non_null(strstr(e.msg, clipl));
    assert_non_null(strstr(e.msg, "--tokenizer"));
    assert_non_null(strstr(e.msg, "tokenizers/clip-l"));

    char tk[160];
    snprintf(tk, sizeof tk, "%s/tokenizers", models);
    mkdir(tk, 0755);
    put_pair(clipl, true, true);
    err_clear(&e);
    assert_int_equal(tokenizer_find(v, m, sizeof v, exp, ckpt, models, &e), 0);
    char want[300];
    snprintf(want, sizeof want, "%s/vocab.json", clipl);
    assert_string_equal(v, want);
    snprintf(want, sizeof want, "%s/merges.txt", clipl);
    assert_string_equal(m, want);

    put_pair(ck, true, true); /* the checkpoint folder comes before models/ */
    assert_int_equal(tokenizer_find(v, m, sizeof v, exp, ckpt, models, &e), 0);
    snprintf(want, sizeof want, "%s/vocab.json", ck);
    assert_string_equal(v, want);

    put_pair(exp, true, true); /* --tokenizer comes first */
    assert_int_equal(tokenizer_find(v, m, sizeof v, exp, ckpt, models, &e), 0);
    snprintf(want, sizeof want, "%s/merges.txt", exp);
    assert_string_equal(m, want);

    assert_int_equal(tokenizer_find(v, m, 8, exp, NULL, NULL, &e), STATUS_ERR_RANGE);
    err_clear(&e);
    assert_int_equal(tokenizer_find(v, m, sizeof v, NULL, NULL, NULL, &e), STATUS_ERR_NOT_FOUND);
    assert_non_null(strstr(e.msg, "--tokenizer"));
    rm_dir(root);
}

/* ===== Malformed files ===== */

static int load_texts(const char *vocab, const char *merges, struct err *e) {
    char dir[64], vp[128], mp[128];
    make_tmpdir(dir);
    snprintf(vp, sizeof vp, "%s/vocab.json", dir);
    snprintf(mp, sizeof mp, "%s/merges.txt", dir);
    write_text(vp, vocab);
    write_text(mp, merges);
    struct tokenizer tk;
    err_clear(e);
    int rc = tokenizer_load(&tk, vp, mp, e);
    if (rc == 0) tokenizer_deinit(&tk);
    assert_null(tk.state);
    rm_dir(dir);
    return rc;
}

static void test_malformed(void **state) {
    (void)state;
    const char *good_vocab = "{\"a\": 0, \"b\": 1, \"a</w>\": 2, \"b</w>\": 3, \"ab</w>\": 4, "
                             "\"<|startoftext|>\": 5, \"<|endoftext|>\": 6}";
    const char *good_merges = "#version: 0.2\na b</w>\n";
    struct err e = {0};
    assert_int_equal(load_texts(good_vocab, good_merges, &e), 0);

    assert_int_equal(load_texts("{\n\"a\": 0,\n oops}", good_merges, &e), STATUS_ERR_FORMAT);
    assert_non_null(strstr(e.msg, "vocab.json"));
    assert_non_null(strstr(e.msg, "line 3"));

    assert_int_equal(load_texts("[1, 2]", good_merges, &e), STATUS_ERR_FORMAT);
    assert_non_null(strstr(e.msg, "object"));

    assert_int_equal(load_texts("{\"a\": \"zero\"}", good_merges, &e), STATUS_ERR_FORMAT);
    assert_non_null(strstr(e.msg, "\"a\""));

    assert_int_equal(load_texts("{\"a\": -4}", good_merges, &e), STATUS_ERR_FORMAT);

    assert_int_equal(load_texts("{\"a\": 0, \"<|endoftext|>\": 1}", good_merges, &e), STATUS_ERR_FORMAT);
    assert_non_null(strstr(e.msg, "<|startoftext|>"));

    assert_int_equal(load_texts(good_vocab, "#version: 0.2\na b\nb a\na b c\n", &e), STATUS_ERR_FORMAT);
    assert_non_null(strstr(e.msg, "merges.txt, line 4"));

    assert_int_equal(load_texts(good_vocab, "#version: 0.2\na b\nlonely\n", &e), STATUS_ERR_FORMAT);
    assert_non_null(strstr(e.msg, "line 3"));

    struct tokenizer tk;
    err_clear(&e);
    assert_int_equal(tokenizer_load(&tk, "/nonexistent/vocab.json", TINY_DIR "/merges.txt", &e),
                     STATUS_ERR_NOT_FOUND);
    assert_non_null(strstr(e.msg, "/nonexistent/vocab.json"));
    err_clear(&e);
    assert_int_equal(tokenizer_load(&tk, TINY_DIR "/vocab.json", "/nonexistent/merges.txt", &e),
                     STATUS_ERR_NOT_FOUND);
    assert_non_null(strstr(e.msg, "/nonexistent/merges.txt"));
}

/* Only the first 48894 merges count; an unknown BPE piece maps to <|endoftext|>. */
static void test_merge_limit_and_unknown(void **state) {
    (void)state;
    const char *vocab = "{\"c\": 0, \"a\": 1, \"c</w>\": 2, \"a</w>\": 3, \"ca</w>\": 4, \"x</w>\": 5, "
                        "\"<|startoftext|>\": 6, \"<|endoftext|>\": 7}";
    for (int limit_case = 0; limit_case < 2; limit_case++) {
        /* 48893 filler merges, then "c a</w>" at rank 48893 (kept) or 48894 (dropped). */
        size_t cap = 64 + 48900 * 8;
        char *m = mem_alloc(cap), *p = m;
        p += sprintf(p, "#version: 0.2\n");
        for (int i = 0; i < 48893 + limit_case; i++) p += sprintf(p, "q%d z\n", i % 10);
        p += sprintf(p, "c a</w>\nz z\n");
        char dir[64], vp[128], mp[128];
        make_tmpdir(dir);
        snprintf(vp, sizeof vp, "%s/vocab.json", dir);
        snprintf(mp, sizeof mp, "%s/merges.txt", dir);
        write_text(vp, vocab);
        write_text(mp, m);
        mem_free(m);
        struct tokenizer tk;
        struct err e = {0};
        assert_int_equal(tokenizer_load(&tk, vp, mp, &e), 0);
        assert_int_equal(tk.n_merges, TOKENIZER_MAX_MERGES);
        int32_t *ids;
        int n;
        assert_int_equal(tokenizer_encode_plain(&tk, "ca xa", &ids, &n, &e), 0);
        if (limit_case == 0) {
            assert_int_equal(n, 3);
            assert_int_equal(ids[0], 4); /* "ca</w>" */
        } else {
            assert_int_equal(n, 4);
            assert_int_equal(ids[0], 0); /* "c" */
            assert_int_equal(ids[1], 3); /* "a</w>" */
        }
        assert_int_equal(ids[n - 2], 7); /* "x" alone is not in this vocabulary: unk */
        assert_int_equal(ids[n - 1], 3);
        mem_free(ids);
        tokenizer_deinit(&tk);
        rm_dir(dir);
    }
}

/* ===== Robustness ===== */

static void test_out_of_memory(void **state) {
    (void)state;
    char *s = repeat("(zebra:1.2) quokka, xylophone", 30, " \xce\xa3\xce\x9f\xce\xa6\xce\x9f\xce\xa3 cafe\xcc\x81");
    struct tokenizer_chunks ref, c;
    encode_ok(s, &ref);
    int failures = 0;
    for (long n = 1; n < 400; n++) {
        struct tokenizer tk;
        struct err e = {0};
        mem_fault_after(n);
        int rc = tokenizer_load(&tk, TINY_DIR "/vocab.json", TINY_DIR "/merges.txt", &e);
        if (rc == 0) rc = tokenizer_encode(&tk, s, &c, &e);
        else tk.state = NULL;
        mem_fault_after(0);
        if (rc == 0) {
            assert_int_equal(c.n_chunks, ref.n_chunks);
            assert_memory_equal(c.ids, ref.ids, (size_t)L * (size_t)c.n_chunks * sizeof *c.ids);
            tokenizer_chunks_deinit(&c);
            tokenizer_deinit(&tk);
            break;
        }
        assert_int_equal(rc, STATUS_ERR_NOMEM);
        assert_int_equal(e.code, STATUS_ERR_NOMEM);
        tokenizer_deinit(&tk);
        failures++;
    }
    assert_true(failures > 5);
    tokenizer_chunks_deinit(&ref);
    mem_free(s);
}

struct thread_arg {
    const char *text;
    const struct tokenizer_chunks *want;
    int ok;
};

static void *encode_thread(void *p) {
    struct thread_arg *a = p;
    a->ok = 1;
    for (int r = 0; r < 20; r++) {
        struct tokenizer_chunks c;
        struct err e = {0};
        if (tokenizer_encode(&tiny, a->text, &c, &e) || c.n_chunks != a->want->n_chunks ||
            memcmp(c.ids, a->want->ids, (size_t)L * (size_t)c.n_chunks * sizeof *c.ids))
            a->ok = 0;
        tokenizer_chunks_deinit(&c);
    }
    return NULL;
}

static void test_threads(void **state) {
    (void)state;
    const char *texts[4] = {"a photo of a (cat:1.2)", "zebra quokka xylophone", "caf\xc3\xa9 na\xc3\xafve",
                            "masterpiece, best quality"};
    struct tokenizer_chunks want[4];
    struct thread_arg args[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        encode_ok(texts[i], &want[i]);
        args[i] = (struct thread_arg){texts[i], &want[i], 0};
    }
    for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, encode_thread, &args[i]);
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_true(args[i].ok);
        tokenizer_chunks_deinit(&want[i]);
    }
}

/* ===== Real CLIP-L files, when present ===== */

static void test_real_clip_if_present(void **state) {
    (void)state;
    const char *dir = getenv("KILN_CLIP_TOKENIZER_DIR");
    char v[512], m[512];
    struct err e = {0};
    if (tokenizer_find(v, m, sizeof v, dir, NULL, KILN_TEST_DATA "/../../models", &e)) {
        skip();
        return;
    }
    struct tokenizer tk;
    assert_int_equal(tokenizer_load(&tk, v, m, &e), 0);
    assert_int_equal(tk.n_vocab, 49408);
    assert_int_equal(tk.n_merges, TOKENIZER_MAX_MERGES);
    assert_int_equal(tk.start_id, 49406);
    assert_int_equal(tk.end_id, 49407);
    struct tokenizer_chunks c;
    assert_int_equal(tokenizer_encode(&tk, "a photo of a cat", &c, &e), 0);
    assert_int_equal(c.ids[0], 49406);
    assert_int_equal(c.ids[1], 320);  /* "a</w>" */
    assert_int_equal(c.ids[4], 320);
    assert_int_equal(c.ids[5], 2368); /* "cat</w>" */
    assert_int_equal(c.ids[6], 49407);
    assert_int_equal(c.ids[76], 49407);
    tokenizer_chunks_deinit(&c);
    tokenizer_deinit(&tk);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_layout_and_determinism),
        cmocka_unit_test(test_plain_matches_reference),
        cmocka_unit_test(test_chunks_match_reference),
        cmocka_unit_test(test_weights),
        cmocka_unit_test(test_unbalanced_and_deep),
        cmocka_unit_test(test_embedding_words),
        cmocka_unit_test(test_chunking),
        cmocka_unit_test(test_unicode_cleanup),
        cmocka_unit_test(test_find),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_merge_limit_and_unknown),
        cmocka_unit_test(test_out_of_memory),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_real_clip_if_present),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
