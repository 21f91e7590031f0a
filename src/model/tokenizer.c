/* model/tokenizer.c -- CLIP BPE tokenizer + ComfyUI prompt weights, bit-compatible with ComfyUI.
 * Owns: the tokenizer_state (hash tables, BPE cache and its mutex) and every buffer it allocates.
 * Must not: touch tensors or models.
 * Threads: load/deinit on one thread; encode on any (the BPE cache is locked).
 *
 * DESIGN. The pipeline is the one ComfyUI runs for SD1 with transformers' slow CLIPTokenizer and
 * no ftfy installed (ComfyUI does not require ftfy):
 *   prompt -> escape "\(" "\)" -> token_weights/parse_parentheses -> weighted segments
 *   segment -> unescape -> split before " embedding:" / "\nembedding:" -> token groups
 *   group text -> split out "<|startoftext|>"/"<|endoftext|>" (the slow tokenizer's added-token
 *     trie, case-sensitive) -> BasicTokenizer clean-up (drop NUL/U+FFFD/C* characters,
 *     whitespace to space, CJK ideographs spaced, NFC, split on whitespace, Python lower())
 *   -> CLIP pre-split regex -> UTF-8 bytes -> GPT-2 byte characters -> BPE ("</w>" on the last
 *     symbol, lowest-ranked pair first) -> vocabulary ids (unknown -> "<|endoftext|>")
 *   groups -> 77-id chunks (groups of >= 8 ids are split at the chunk boundary).
 * Everything Python does on code points is done here on code points (utf8proc for categories,
 * NFC and case mapping), and the regex is matched by hand. */
#include "model/tokenizer.h"

#include "base/base.h"
#include "base/err.h"
#include "base/log.h"
#include "base/mem.h"
#include "base/status.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <utf8proc.h>

#define START_TOKEN "<|startoftext|>"
#define END_TOKEN "<|endoftext|>"
#define MAX_NESTING 900            /* parenthesis depth; Python's recursion limit stops ComfyUI near 1000 */
#define MAX_WORD_LEN_GROUP 8       /* ComfyUI max_word_length: groups this long may be split */
#define CACHE_MAX_WORDS 65536      /* BPE cache entries before it is cleared */
#define CACHE_MAX_BYTES (16u << 20) /* bytes of cached keys + ids before it is cleared */

/* ===== Growable arrays ===== */

struct ivec {
    int32_t *v; /* [cap] */
    size_t n;   /* used */
    size_t cap; /* allocated */
};

static int ivec_reserve(struct ivec *a, size_t extra) {
    if (a->n + extra <= a->cap) return 0;
    size_t cap = a->cap ? a->cap : 16;
    while (cap < a->n + extra) {
        if (cap > SIZE_MAX / 2 / sizeof *a->v) return STATUS_ERR_NOMEM;
        cap *= 2;
    }
    int32_t *v = mem_try_realloc(a->v, cap * sizeof *v);
    if (!v) return STATUS_ERR_NOMEM;
    a->v = v;
    a->cap = cap;
    return 0;
}

static int ivec_push(struct ivec *a, int32_t x) {
    int rc = ivec_reserve(a, 1);
    if (rc) return rc;
    a->v[a->n++] = x;
    return 0;
}

static void ivec_free(struct ivec *a) {
    mem_free(a->v);
    memset(a, 0, sizeof *a);
}

struct bbuf {
    char *p;    /* [cap] bytes */
    size_t n;   /* used */
    size_t cap; /* allocated */
};

static int bbuf_reserve(struct bbuf *b, size_t extra) {
    if (b->n + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + extra) {
        if (cap > SIZE_MAX / 2) return STATUS_ERR_NOMEM;
        cap *= 2;
    }
    char *p = mem_try_realloc(b->p, cap);
    if (!p) return STATUS_ERR_NOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int bbuf_add(struct bbuf *b, const void *s, size_t n) {
    int rc = bbuf_reserve(b, n);
    if (rc) return rc;
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

static void bbuf_free(struct bbuf *b) {
    mem_free(b->p);
    memset(b, 0, sizeof *b);
}

/* ===== Open-addressing hash table: byte string -> int32 =====
 * Keys are copied, NUL-terminated, into one blob and named by offset, so the blob can grow.
 * Linear probing, capacity a power of two, load factor <= 1/2. */

#define SLOT_EMPTY UINT32_MAX

struct slot {
    uint32_t off;  /* key offset in blob, SLOT_EMPTY when free */
    uint32_t len;  /* key length in bytes */
    uint32_t hash; /* FNV-1a of the key */
    int32_t val;   /* the value */
};

struct table {
    struct slot *slots; /* [cap] */
    size_t cap;         /* power of two */
    size_t n;           /* keys stored */
    struct bbuf blob;   /* keys, each followed by a NUL */
};

static uint32_t hash_bytes(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static int table_init(struct table *t, size_t expect) {
    memset(t, 0, sizeof *t);
    size_t cap = 16;
    while (cap < 2 * expect) cap *= 2;
    t->slots = mem_try_alloc(cap * sizeof *t->slots);
    if (!t->slots) return STATUS_ERR_NOMEM;
    for (size_t i = 0; i < cap; i++) t->slots[i].off = SLOT_EMPTY;
    t->cap = cap;
    return 0;
}

static void table_deinit(struct table *t) {
    mem_free(t->slots);
    bbuf_free(&t->blob);
    memset(t, 0, sizeof *t);
}

static void table_clear(struct table *t) {
    for (size_t i = 0; i < t->cap; i++) t->slots[i].off = SLOT_EMPTY;
    t->n = 0;
    t->blob.n = 0;
}

/* The slot holding key, or the free slot where it would go. */
static struct slot *table_slot(const struct table *t, const char *key, size_t len, uint32_t h) {
    size_t mask = t->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        struct slot *s = &t->slots[i];
        if (s->off == SLOT_EMPTY) return s;
        if (s->hash == h && s->len == len && memcmp(t->blob.p + s->off, key, len) == 0) return s;
    }
}

static int32_t *table_get(const struct table *t, const char *key, size_t len) {
    if (!t->cap) return NULL;
    struct slot *s = table_slot(t, key, len, hash_bytes(key, len));
    return s->off == SLOT_EMPTY ? NULL : &s->val;
}

static int table_grow(struct table *t) {
    size_t cap = t->cap * 2;
    struct slot *slots = mem_try_alloc(cap * sizeof *slots);
    if (!slots) return STATUS_ERR_NOMEM;
    for (size_t i = 0; i < cap; i++) slots[i].off = SLOT_EMPTY;
    for (size_t i = 0; i < t->cap; i++) {
        struct slot *s = &t->slots[i];
        if (s->off == SLOT_EMPTY) continue;
        size_t j = s->hash & (cap - 1);
        while (slots[j].off != SLOT_EMPTY) j = (j + 1) & (cap - 1);
        slots[j] = *s;
    }
    mem_free(t->slots);
    t->slots = slots;
    t->cap = cap;
    return 0;
}

/* Inserts key -> val, or overwrites the value of an existing key (Python dict semantics). */
static int table_put(struct table *t, const char *key, size_t len, int32_t val) {
    uint32_t h = hash_bytes(key, len);
    struct slot *s = table_slot(t, key, len, h);
    if (s->off != SLOT_EMPTY) {
        s->val = val;
        return 0;
    }
    if (len >= UINT32_MAX || t->blob.n + len + 1 >= UINT32_MAX) return STATUS_ERR_NOMEM;
    if (2 * (t->n + 1) > t->cap) {
        int rc = table_grow(t);
        if (rc) return rc;
        s = table_slot(t, key, len, h);
    }
    size_t off = t->blob.n;
    int rc = bbuf_reserve(&t->blob, len + 1);
    if (rc) return rc;
    bbuf_add(&t->blob, key, len);
    t->blob.p[t->blob.n++] = 0;
    s->off = (uint32_t)off;
    s->len = (uint32_t)len;
    s->hash = h;
    s->val = val;
    t->n++;
    return 0;
}

/* ===== State ===== */

struct tokenizer_state {
    struct table vocab;    /* token string -> id */
    struct table ranks;    /* "first second" -> merge rank */
    struct table cache;    /* byte-level word -> offset of [n, ids...] in cache_ids */
    struct ivec cache_ids; /* cached BPE results */
    uint32_t *id_key;      /* [max_id + 1] offset of each id's string in vocab.blob, or SLOT_EMPTY */
    int32_t max_id;        /* largest id in the vocabulary */
    pthread_mutex_t mu;    /* guards cache and cache_ids */
};

/* ===== Unicode helpers ===== */

/* Decodes one code point; invalid bytes give U+FFFD (which the clean-up drops) and advance 1. */
static size_t utf8_next(const char *s, size_t n, int32_t *cp) {
    utf8proc_int32_t c;
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s,
                                          (utf8proc_ssize_t)(n > 4 ? 4 : n), &c);
    if (k <= 0) {
        *cp = 0xFFFD;
        return 1;
    }
    *cp = c;
    return (size_t)k;
}

static int utf8_put(struct bbuf *b, int32_t cp) {
    int rc = bbuf_reserve(b, 4);
    if (rc) return rc;
    b->n += (size_t)utf8proc_encode_char(cp, (utf8proc_uint8_t *)b->p + b->n);
    return 0;
}

static int cat_of(int32_t cp) { return (int)utf8proc_category(cp); }

static bool is_letter(int32_t cp) { /* \p{L} */
    int c = cat_of(cp);
    return c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO;
}

static bool is_number(int32_t cp) { /* \p{N} */
    int c = cat_of(cp);
    return c >= UTF8PROC_CATEGORY_ND && c <= UTF8PROC_CATEGORY_NO;
}

/* Python's str.isspace (what str.split() and str.strip() use). */
static bool py_isspace(int32_t cp) {
    if ((cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0)
        return true;
    if (cp < 0x1680) return false;
    int c = cat_of(cp);
    return c == UTF8PROC_CATEGORY_ZS || c == UTF8PROC_CATEGORY_ZL || c == UTF8PROC_CATEGORY_ZP;
}

/* transformers BasicTokenizer._is_chinese_char: the CJK ideograph blocks. */
static bool is_cjk(int32_t cp) {
    return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
           (cp >= 0x20000 && cp <= 0x2A6DF) || (cp >= 0x2A700 && cp <= 0x2B73F) ||
           (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF) ||
           (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

/* Unicode "Cased" (approximated from categories and case mappings, as utf8proc has no property
 * table for it), used by Python's final-sigma rule. */
static bool is_cased(int32_t cp) {
    int c = cat_of(cp);
    if (c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LL || c == UTF8PROC_CATEGORY_LT) return true;
    return utf8proc_tolower(cp) != cp || utf8proc_toupper(cp) != cp;
}

/* Unicode "Case_Ignorable": Mn Me Cf Lm Sk, and Word_Break MidLetter/MidNumLet/Single_Quote. */
static bool is_case_ignorable(int32_t cp) {
    static const int32_t mid[] = {0x27,   0x2E,   0x3A,   0xB7,   0x387,  0x55F,
                                  0x5F4,  0x2018, 0x2019, 0x2024, 0x2027, 0xFE13,
                                  0xFE52, 0xFE55, 0xFF07, 0xFF0E, 0xFF1A};
    int c = cat_of(cp);
    if (c == UTF8PROC_CATEGORY_MN || c == UTF8PROC_CATEGORY_ME || c == UTF8PROC_CATEGORY_CF ||
        c == UTF8PROC_CATEGORY_LM || c == UTF8PROC_CATEGORY_SK)
        return true;
    for (size_t i = 0; i < ARRAY_LEN(mid); i++)
        if (mid[i] == cp) return true;
    return false;
}

/* Python's str.lower() of w[0..n) appended to out: full case mapping, i.e. the simple mapping
 * plus U+0130 -> "i\u0307" (the only unconditional multi-character lowercase) and the
 * Final_Sigma context for U+03A3. */
static int py_lower(const int32_t *w, size_t n, struct ivec *out) {
    int rc = ivec_reserve(out, 2 * n);
    if (rc) return rc;
    for (size_t i = 0; i < n; i++) {
        int32_t c = w[i];
        if (c == 0x130) {
            out->v[out->n++] = 0x69;
            out->v[out->n++] = 0x307;
        } else if (c == 0x3A3) {
            size_t j = i;
            while (j > 0 && is_case_ignorable(w[j - 1])) j--;
            bool final = j > 0 && is_cased(w[j - 1]);
            if (final) {
                size_t k = i + 1;
                while (k < n && is_case_ignorable(w[k])) k++;
                final = k == n || !is_cased(w[k]);
            }
            out->v[out->n++] = final ? 0x3C2 : 0x3C3;
        } else {
            out->v[out->n++] = utf8proc_tolower(c);
        }
    }
    return 0;
}

/* ===== GPT-2 byte <-> unicode mapping =====
 * Printable bytes ('!'..'~', 0xA1..0xAC, 0xAE..0xFF) stand for themselves; the other 68 bytes
 * map to 256, 257, ... in byte order. The vocabulary lists the 256 characters in the order
 * printable-first, then the remapped ones. */

static int32_t byte_to_cp(unsigned b) {
    if (b <= 0x20) return 256 + (int32_t)b;
    if (b >= 0x7F && b <= 0xA0) return (int32_t)b + 162; /* 256 + 33 + (b - 0x7F) */
    if (b == 0xAD) return 323;
    return (int32_t)b;
}

/* The code point of vocabulary id i < 256 (and of "i</w>" at 256 + i). */
static int32_t base_cp(int i) {
    if (i < 94) return 0x21 + i;
    if (i < 106) return 0xA1 + (i - 94);
    if (i < 188) return 0xAE + (i - 106);
    return 256 + (i - 188);
}

/* ===== Loading ===== */

static int read_file(const char *path, const char *what, struct bbuf *out, struct err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        int code = errno == ENOENT ? STATUS_ERR_NOT_FOUND : STATUS_ERR_IO;
        return err_set(err, code, "cannot open %s %s: %s", what, path, strerror(errno));
    }
    char chunk[65536];
    size_t k;
    int rc = 0;
    while ((k = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if ((rc = bbuf_add(out, chunk, k))) break;
    }
    if (!rc && ferror(f)) rc = err_set(err, STATUS_ERR_IO, "cannot read %s %s", what, path);
    else if (rc) err_set(err, rc, "out of memory reading %s %s", what, path);
    fclose(f);
    return rc;
}

static int load_vocab(struct tokenizer_state *st, const char *path, struct err *err) {
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        FILE *probe = fopen(path, "rb");
        if (!probe)
            return err_set(err, errno == ENOENT ? STATUS_ERR_NOT_FOUND : STATUS_ERR_IO,
                           "cannot open vocabulary %s: %s", path, strerror(errno));
        fclose(probe);
        return err_set(err, STATUS_ERR_FORMAT, "vocabulary %s, line %d, column %d: %s", path,
                       jerr.line, jerr.column, jerr.text);
    }
    int rc = 0;
    if (!json_is_object(root)) {
        rc = err_set(err, STATUS_ERR_FORMAT,
                     "vocabulary %s: expected a JSON object mapping token strings to ids", path);
        goto out;
    }
    if ((rc = table_init(&st->vocab, json_object_size(root)))) goto oom;
    const char *key;
    json_t *val;
    st->max_id = -1;
    json_object_foreach(root, key, val) {
        json_int_t id = json_is_integer(val) ? json_integer_value(val) : -1;
        if (id < 0 || id > (1 << 24)) {
            rc = err_set(err, STATUS_ERR_FORMAT,
                         "vocabulary %s: token \"%.64s\" has id %s; expected an integer in 0..%d",
                         path, key, json_is_integer(val) ? "out of range" : "that is not an integer",
                         1 << 24);
            goto out;
        }
        if ((rc = table_put(&st->vocab, key, strlen(key), (int32_t)id))) goto oom;
        if (id > st->max_id) st->max_id = (int32_t)id;
    }
    st->id_key = mem_try_alloc(((size_t)st->max_id + 1) * sizeof *st->id_key);
    if (!st->id_key) goto oom;
    for (int32_t i = 0; i <= st->max_id; i++) st->id_key[i] = SLOT_EMPTY;
    for (size_t i = 0; i < st->vocab.cap; i++) {
        struct slot *s = &st->vocab.slots[i];
        if (s->off == SLOT_EMPTY) continue;
        /* Several strings with one id: keep the first in blob order (file order). */
        if (st->id_key[s->val] == SLOT_EMPTY || st->id_key[s->val] > s->off) st->id_key[s->val] = s->off;
    }
    goto out;
oom:
    rc = err_set(err, STATUS_ERR_NOMEM, "out of memory loading vocabulary %s", path);
out:
    json_decref(root);
    return rc;
}

static bool ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

/* merges.txt as transformers reads it: read().strip().split("\n")[1 : 48894 + 1], each line
 * split on whitespace into a pair; rank = position; a repeated pair keeps its last rank. */
static int load_merges(struct tokenizer_state *st, const char *path, int *n_merges, struct err *err) {
    struct bbuf file = {0}, key = {0};
    int rc = read_file(path, "merges file", &file, err);
    if (rc) goto out;
    if ((rc = table_init(&st->ranks, TOKENIZER_MAX_MERGES))) goto oom;
    size_t b = 0, e = file.n;
    while (b < e && ascii_space(file.p[b])) b++;
    while (e > b && ascii_space(file.p[e - 1])) e--;
    int line = 0, rank = 0;
    for (size_t p = b; p < e && rank < TOKENIZER_MAX_MERGES; line++) {
        const char *nl = memchr(file.p + p, '\n', e - p);
        size_t end = nl ? (size_t)(nl - file.p) : e;
        if (line == 0) {
            if (end - p < 1 || file.p[p] != '#')
                log_warn("merges file %s: first line is not a \"#version\" header; it is skipped "
                         "like transformers does", path);
            p = end + 1;
            continue;
        }
        /* Split the line on whitespace into exactly two symbols. */
        size_t part_b[3], part_e[3];
        int parts = 0;
        for (size_t q = p; q < end;) {
            while (q < end && ascii_space(file.p[q])) q++;
            if (q >= end) break;
            size_t s = q;
            while (q < end && !ascii_space(file.p[q])) q++;
            if (parts < 3) {
                part_b[parts] = s;
                part_e[parts] = q;
            }
            parts++;
        }
        if (parts != 2) {
            rc = err_set(err, STATUS_ERR_FORMAT,
                         "merges file %s, line %d: expected two symbols separated by a space, "
                         "found %d: \"%.*s\"", path, line + 1, parts, (int)MIN(end - p, 80),
                         file.p + p);
            goto out;
        }
        key.n = 0;
        if ((rc = bbuf_add(&key, file.p + part_b[0], part_e[0] - part_b[0])) ||
            (rc = bbuf_add(&key, " ", 1)) ||
            (rc = bbuf_add(&key, file.p + part_b[1], part_e[1] - part_b[1])) ||
            (rc = table_put(&st->ranks, key.p, key.n, rank)))
            goto oom;
        rank++;
        p = end + 1;
    }
    *n_merges = rank;
    goto out;
oom:
    rc = err_set(err, STATUS_ERR_NOMEM, "out of memory loading merges file %s", path);
out:
    bbuf_free(&file);
    bbuf_free(&key);
    return rc;
}

static void state_free(struct tokenizer_state *st) {
    if (!st) return;
    table_deinit(&st->vocab);
    table_deinit(&st->ranks);
    table_deinit(&st->cache);
    ivec_free(&st->cache_ids);
    mem_free(st->id_key);
    pthread_mutex_destroy(&st->mu);
    mem_free(st);
}

int tokenizer_load(struct tokenizer *tk, const char *vocab_json, const char *merges_txt,
                   struct err *err) {
    memset(tk, 0, sizeof *tk);
    struct tokenizer_state *st = mem_try_calloc(1, sizeof *st);
    if (!st) return err_set(err, STATUS_ERR_NOMEM, "out of memory loading tokenizer");
    pthread_mutex_init(&st->mu, NULL);
    int n_merges = 0, rc;
    if ((rc = load_vocab(st, vocab_json, err)) || (rc = load_merges(st, merges_txt, &n_merges, err)))
        goto fail;
    if ((rc = table_init(&st->cache, 1024))) {
        err_set(err, rc, "out of memory loading tokenizer");
        goto fail;
    }
    const int32_t *start = table_get(&st->vocab, START_TOKEN, strlen(START_TOKEN));
    const int32_t *end = table_get(&st->vocab, END_TOKEN, strlen(END_TOKEN));
    if (!start || !end) {
        rc = err_set(err, STATUS_ERR_FORMAT, "vocabulary %s has no \"%s\" entry; is it a CLIP vocab.json?",
                     vocab_json, !start ? START_TOKEN : END_TOKEN);
        goto fail;
    }
    tk->state = st;
    tk->n_vocab = (int)st->vocab.n;
    tk->n_merges = n_merges;
    tk->start_id = *start;
    tk->end_id = *end;
    tk->pad_id = *end;
    return 0;
fail:
    state_free(st);
    return rc;
}

void tokenizer_deinit(struct tokenizer *tk) {
    if (!tk) return;
    state_free(tk->state);
    memset(tk, 0, sizeof *tk);
}

const char *tokenizer_token_str(const struct tokenizer *tk, int32_t id) {
    const struct tokenizer_state *st = tk->state;
    if (!st || id < 0 || id > st->max_id || st->id_key[id] == SLOT_EMPTY) return NULL;
    return st->vocab.blob.p + st->id_key[id];
}

int32_t tokenizer_token_id(const struct tokenizer *tk, const char *token) {
    if (!tk->state) return -1;
    const int32_t *v = table_get(&tk->state->vocab, token, strlen(token));
    return v ? *v : -1;
}

/* ===== Finding the files ===== */

static bool is_file(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

int tokenizer_find(char *vocab_out, char *merges_out, size_t n, const char *explicit_dir,
                   const char *ckpt_path, const char *models_dir, struct err *err) {
    char dirs[3][4096];
    const char *labels[3] = {"--tokenizer", "checkpoint folder", "models folder"};
    bool used[3] = {false, false, false};
    if (explicit_dir) used[0] = snprintf(dirs[0], sizeof dirs[0], "%s", explicit_dir) < (int)sizeof dirs[0];
    if (ckpt_path) {
        const char *slash = strrchr(ckpt_path, '/');
        if (!slash) used[1] = snprintf(dirs[1], sizeof dirs[1], ".") > 0;
        else if (slash == ckpt_path) used[1] = snprintf(dirs[1], sizeof dirs[1], "/") > 0;
        else used[1] = snprintf(dirs[1], sizeof dirs[1], "%.*s", (int)(slash - ckpt_path), ckpt_path) <
                       (int)sizeof dirs[1];
    }
    if (models_dir)
        used[2] = snprintf(dirs[2], sizeof dirs[2], "%s/tokenizers/clip-l", models_dir) < (int)sizeof dirs[2];

    char looked[2048] = "";
    size_t lk = 0;
    for (int i = 0; i < 3; i++) {
        if (!used[i]) continue;
        char v[sizeof dirs[i] + 16], m[sizeof dirs[i] + 16];
        snprintf(v, sizeof v, "%.4095s/vocab.json", dirs[i]);
        snprintf(m, sizeof m, "%.4095s/merges.txt", dirs[i]);
        bool hv = is_file(v), hm = is_file(m);
        if (hv && hm) {
            if (strlen(v) >= n || strlen(m) >= n)
                return err_set(err, STATUS_ERR_RANGE, "tokenizer path %s is longer than %zu bytes", v, n - 1);
            memcpy(vocab_out, v, strlen(v) + 1);
            memcpy(merges_out, m, strlen(m) + 1);
            if (i > 0 && used[0])
                log_warn("--tokenizer %s has no vocab.json + merges.txt; using %s", dirs[0], dirs[i]);
            return 0;
        }
        const char *what = hv ? " (has vocab.json but no merges.txt)"
                           : hm ? " (has merges.txt but no vocab.json)" : "";
        int w = snprintf(looked + lk, sizeof looked - lk, "%s%s %s/%s", lk ? "; " : "", labels[i],
                         dirs[i], what);
        if (w > 0) lk = MIN(sizeof looked - 1, lk + (size_t)w);
    }
    return err_set(err, STATUS_ERR_NOT_FOUND,
                   "CLIP tokenizer files vocab.json and merges.txt not found; looked in: %s. Pass "
                   "--tokenizer DIR, or put vocab.json and merges.txt (from ComfyUI's "
                   "comfy/sd1_tokenizer/ or a diffusers tokenizer/ folder) in %s/tokenizers/clip-l/",
                   lk ? looked : "nowhere (no --tokenizer, checkpoint or models folder given)",
                   models_dir ? models_dir : "models");
}

/* ===== BPE ===== */

/* Symbols are spans of the word's byte-level string with "</w>" appended to it. */
struct sym {
    uint32_t start; /* byte offset in the word buffer */
    uint32_t len;   /* bytes */
    int32_t rank;   /* rank of the pair (this, next); INT32_MAX when not a merge */
    int32_t orig;   /* index before the current merge round, or -1 for a fresh merge */
};

static int32_t pair_rank(const struct tokenizer_state *st, const char *w, const struct sym *a,
                         const struct sym *b, char *scratch) {
    memcpy(scratch, w + a->start, a->len);
    scratch[a->len] = ' ';
    memcpy(scratch + a->len + 1, w + b->start, b->len);
    const int32_t *r = table_get(&st->ranks, scratch, a->len + 1 + b->len);
    return r ? *r : INT32_MAX;
}

static bool sym_eq(const char *w, const struct sym *a, const struct sym *b) {
    return a->len == b->len && memcmp(w + a->start, w + b->start, a->len) == 0;
}

/* transformers CLIPTokenizer.bpe + id lookup, for one pre-split piece already mapped to byte
 * characters (w[0..n), UTF-8). Appends the ids to out. Caller holds st->mu. */
static int bpe_compute(struct tokenizer *tk, const char *word, size_t n, struct ivec *out) {
    struct tokenizer_state *st = tk->state;
    size_t wn = n + 4;
    char *w = mem_try_alloc(2 * wn + 2);
    if (!w) return STATUS_ERR_NOMEM;
    char *scratch = w + wn + 1;
    memcpy(w, word, n);
    memcpy(w + n, "</w>", 4);
    size_t nsym = 0;
    for (size_t p = 0; p < n;) {
        int32_t cp;
        p += utf8_next(word + p, n - p, &cp);
        nsym++;
    }
    struct sym *a = mem_try_alloc(2 * (nsym ? nsym : 1) * sizeof *a);
    if (!a) {
        mem_free(w);
        return STATUS_ERR_NOMEM;
    }
    struct sym *b = a + nsym;
    size_t k = 0;
    for (size_t p = 0; p < n; k++) {
        int32_t cp;
        size_t len = utf8_next(word + p, n - p, &cp);
        a[k] = (struct sym){(uint32_t)p, (uint32_t)len, INT32_MAX, (int32_t)k};
        p += len;
    }
    if (nsym) a[nsym - 1].len += 4; /* the last symbol carries "</w>" */
    for (size_t i = 0; i + 1 < nsym; i++) a[i].rank = pair_rank(st, w, &a[i], &a[i + 1], scratch);

    while (nsym > 1) {
        size_t best = 0;
        for (size_t i = 1; i + 1 < nsym; i++)
            if (a[i].rank < a[best].rank) best = i;
        if (a[best].rank == INT32_MAX) break;
        struct sym first = a[best], second = a[best + 1];
        /* Merge every (first, second) left to right, as the Python loop does. */
        size_t m = 0;
        for (size_t i = 0; i < nsym;) {
            if (i + 1 < nsym && sym_eq(w, &a[i], &first) && sym_eq(w, &a[i + 1], &second)) {
                b[m++] = (struct sym){a[i].start, a[i].len + a[i + 1].len, INT32_MAX, -1};
                i += 2;
            } else {
                b[m] = a[i];
                b[m++].orig = (int32_t)i;
                i++;
            }
        }
        /* A pair keeps its rank when neither side changed; the others are looked up. */
        for (size_t i = 0; i + 1 < m; i++) {
            if (b[i].orig >= 0 && b[i + 1].orig >= 0) b[i].rank = a[b[i].orig].rank;
            else b[i].rank = pair_rank(st, w, &b[i], &b[i + 1], scratch);
        }
        if (m) b[m - 1].rank = INT32_MAX;
        struct sym *t = a;
        a = b;
        b = t;
        nsym = m;
    }
    int rc = ivec_reserve(out, nsym);
    if (!rc) {
        for (size_t i = 0; i < nsym; i++) {
            const int32_t *id = table_get(&st->vocab, w + a[i].start, a[i].len);
            out->v[out->n++] = id ? *id : tk->end_id; /* unknown -> unk_token "<|endoftext|>" */
        }
    }
    mem_free(a < b ? a : b);
    mem_free(w);
    return rc;
}

/* bpe_compute through the per-word cache. Caller holds st->mu. */
static int bpe_cached(struct tokenizer *tk, const char *word, size_t n, struct ivec *out) {
    struct tokenizer_state *st = tk->state;
    const int32_t *off = table_get(&st->cache, word, n);
    if (off) {
        const int32_t *e = st->cache_ids.v + *off;
        int rc = ivec_reserve(out, (size_t)e[0]);
        if (rc) return rc;
        memcpy(out->v + out->n, e + 1, (size_t)e[0] * sizeof *e);
        out->n += (size_t)e[0];
        return 0;
    }
    size_t before = out->n;
    int rc = bpe_compute(tk, word, n, out);
    if (rc) return rc;
    size_t cnt = out->n - before;
    if (st->cache.n >= CACHE_MAX_WORDS ||
        st->cache.blob.n + st->cache_ids.n * sizeof(int32_t) > CACHE_MAX_BYTES) {
        table_clear(&st->cache);
        st->cache_ids.n = 0;
    }
    /* A failed cache insert only costs speed: roll it back and carry on. */
    size_t at = st->cache_ids.n;
    if (at > INT32_MAX - cnt - 1 || ivec_reserve(&st->cache_ids, cnt + 1)) return 0;
    st->cache_ids.v[st->cache_ids.n++] = (int32_t)cnt;
    memcpy(st->cache_ids.v + st->cache_ids.n, out->v + before, cnt * sizeof(int32_t));
    st->cache_ids.n += cnt;
    if (table_put(&st->cache, word, n, (int32_t)at)) st->cache_ids.n = at;
    return 0;
}

/* ===== Text clean-up and pre-split (transformers' CLIPTokenizer._tokenize without ftfy) ===== */

/* Code points that match the literal `lit` at w[i..]. */
static bool cp_match(const int32_t *w, size_t n, size_t i, const char *lit) {
    size_t k = strlen(lit);
    if (i + k > n) return false;
    for (size_t j = 0; j < k; j++)
        if (w[i + j] != (unsigned char)lit[j]) return false;
    return true;
}

/* The regex findall over one whitespace-free, lowercased word:
 *   <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+
 * (re.IGNORECASE: after lower() it only adds U+017F LONG S as a match for 's'.) Each match goes
 * through byte mapping and BPE. */
static int split_and_bpe(struct tokenizer *tk, const int32_t *w, size_t n, struct bbuf *tmp,
                         struct ivec *out) {
    for (size_t i = 0; i < n;) {
        size_t j;
        if (cp_match(w, n, i, START_TOKEN)) {
            if (ivec_push(out, tk->start_id)) return STATUS_ERR_NOMEM;
            i += strlen(START_TOKEN);
            continue;
        }
        if (cp_match(w, n, i, END_TOKEN)) {
            if (ivec_push(out, tk->end_id)) return STATUS_ERR_NOMEM;
            i += strlen(END_TOKEN);
            continue;
        }
        int32_t c = w[i];
        int32_t c1 = i + 1 < n ? w[i + 1] : 0, c2 = i + 2 < n ? w[i + 2] : 0;
        if (c == '\'' && (c1 == 's' || c1 == 0x17F || c1 == 't' || c1 == 'm' || c1 == 'd')) j = i + 2;
        else if (c == '\'' && ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')))
            j = i + 3;
        else if (is_letter(c))
            for (j = i + 1; j < n && is_letter(w[j]);) j++;
        else if (is_number(c))
            j = i + 1;
        else if (!py_isspace(c))
            for (j = i + 1; j < n && !is_letter(w[j]) && !is_number(w[j]) && !py_isspace(w[j]);) j++;
        else {
            i++;
            continue;
        }
        /* UTF-8 bytes of the match -> byte characters (UTF-8 again). */
        tmp->n = 0;
        for (size_t k = i; k < j; k++) {
            unsigned char u[4];
            utf8proc_ssize_t nb = utf8proc_encode_char(w[k], u);
            for (utf8proc_ssize_t q = 0; q < nb; q++)
                if (utf8_put(tmp, byte_to_cp(u[q]))) return STATUS_ERR_NOMEM;
        }
        int rc = bpe_cached(tk, tmp->p, tmp->n, out);
        if (rc) return rc;
        i = j;
    }
    return 0;
}

/* BasicTokenizer(strip_accents=False, do_split_on_punc=False).tokenize, then the pre-split and
 * BPE, for s[0..n) (which holds no special token). Appends ids to out. */
static int tokenize_basic(struct tokenizer *tk, const char *s, size_t n, struct ivec *out) {
    struct ivec low = {0};
    struct bbuf utf = {0}, tmp = {0};
    int32_t *nfc = NULL;
    int rc = 0;
    /* _clean_text + _tokenize_chinese_chars, written as UTF-8 for utf8proc's NFC. */
    for (size_t p = 0; p < n && !rc;) {
        int32_t c;
        p += utf8_next(s + p, n - p, &c);
        bool ws = c == ' ' || c == '\t' || c == '\n' || c == '\r' || cat_of(c) == UTF8PROC_CATEGORY_ZS;
        if (c == 0 || c == 0xFFFD) continue;
        if (!ws && cat_of(c) >= UTF8PROC_CATEGORY_CC) continue; /* Cc Cf Cs Co; Cn is 0 */
        if (!ws && cat_of(c) == UTF8PROC_CATEGORY_CN) continue;
        if (ws) rc = utf8_put(&utf, ' ');
        else if (is_cjk(c))
            rc = (utf8_put(&utf, ' ') || utf8_put(&utf, c) || utf8_put(&utf, ' ')) ? STATUS_ERR_NOMEM : 0;
        else rc = utf8_put(&utf, c);
    }
    if (rc) goto out;
    /* NFC: canonical decomposition + reordering, then composition. */
    utf8proc_option_t opt = UTF8PROC_STABLE | UTF8PROC_COMPOSE;
    utf8proc_ssize_t m = utf.n ? utf8proc_decompose((const utf8proc_uint8_t *)utf.p,
                                                    (utf8proc_ssize_t)utf.n, NULL, 0, opt) : 0;
    if (m < 0) { /* cannot happen: utf holds valid UTF-8 that we encoded */
        rc = STATUS_ERR_INTERNAL;
        goto out;
    }
    if (m > 0) {
        nfc = mem_try_alloc((size_t)m * sizeof *nfc);
        if (!nfc) {
            rc = STATUS_ERR_NOMEM;
            goto out;
        }
        m = utf8proc_decompose((const utf8proc_uint8_t *)utf.p, (utf8proc_ssize_t)utf.n, nfc, m, opt);
        m = utf8proc_normalize_utf32(nfc, m, opt);
        if (m < 0) {
            rc = STATUS_ERR_INTERNAL;
            goto out;
        }
    }
    /* whitespace_tokenize, lower() per word, then the regex and BPE per word (no match of the
     * regex spans a space, so word by word equals findall over the joined text). */
    for (utf8proc_ssize_t i = 0; i < m;) {
        if (py_isspace(nfc[i])) {
            i++;
            continue;
        }
        utf8proc_ssize_t j = i;
        while (j < m && !py_isspace(nfc[j])) j++;
        low.n = 0;
        if ((rc = py_lower(nfc + i, (size_t)(j - i), &low))) goto out;
        if ((rc = split_and_bpe(tk, low.v, low.n, &tmp, out))) goto out;
        i = j;
    }
out:
    ivec_free(&low);
    bbuf_free(&utf);
    bbuf_free(&tmp);
    mem_free(nfc);
    return rc;
}

/* tokenizer(text)["input_ids"][1:-1]: the added-token split (exact, case-sensitive matches of
 * the two special tokens become their ids), then tokenize_basic on the rest. Caller holds mu. */
static int tokenize_text(struct tokenizer *tk, const char *s, size_t n, struct ivec *out) {
    size_t p = 0;
    while (p < n) {
        size_t q = p, slen = 0;
        int32_t sid = -1;
        for (; q < n; q++) {
            if (s[q] != '<') continue;
            if (n - q >= strlen(START_TOKEN) && memcmp(s + q, START_TOKEN, strlen(START_TOKEN)) == 0) {
                sid = tk->start_id;
                slen = strlen(START_TOKEN);
                break;
            }
            if (n - q >= strlen(END_TOKEN) && memcmp(s + q, END_TOKEN, strlen(END_TOKEN)) == 0) {
                sid = tk->end_id;
                slen = strlen(END_TOKEN);
                break;
            }
        }
        if (q > p) {
            int rc = tokenize_basic(tk, s + p, q - p, out);
            if (rc) return rc;
        }
        if (sid >= 0 && ivec_push(out, sid)) return STATUS_ERR_NOMEM;
        p = q + slen;
    }
    return 0;
}

int tokenizer_encode_plain(struct tokenizer *tk, const char *text, int32_t **ids_out, int *n_out,
                           struct err *err) {
    ASSERT(tk->state);
    struct ivec ids = {0};
    pthread_mutex_lock(&tk->state->mu);
    int rc = tokenize_text(tk, text, strlen(text), &ids);
    pthread_mutex_unlock(&tk->state->mu);
    if (rc || ids.n > INT_MAX) {
        ivec_free(&ids);
        return err_set(err, STATUS_ERR_NOMEM, "out of memory tokenizing a prompt of %zu bytes",
                       strlen(text));
    }
    *ids_out = ids.v;
    *n_out = (int)ids.n;
    return 0;
}

/* ===== ComfyUI prompt weights (comfy/sd1_clip.py token_weights, parse_parentheses) ===== */

struct wseg {
    size_t off; /* segment start in the escaped prompt */
    size_t len; /* bytes */
    double w;   /* weight, in double like Python's float */
};

struct wsegs {
    struct wseg *v;
    size_t n, cap;
};

static int wsegs_push(struct wsegs *a, size_t off, size_t len, double w) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 16;
        struct wseg *v = mem_try_realloc(a->v, cap * sizeof *v);
        if (!v) return STATUS_ERR_NOMEM;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = (struct wseg){off, len, w};
    return 0;
}

/* Python's float(str): surrounding whitespace, sign, digits with single '_' between digits,
 * optional fraction and exponent, or inf/infinity/nan in any case. Python also accepts
 * non-ASCII decimal digits (e.g. fullwidth); those are rejected here (the colon stays text). */
static bool py_float(const char *s, size_t n, double *out) {
    size_t b = 0, e = n;
    while (b < e) { /* strip Python whitespace, which may be multi-byte */
        int32_t cp;
        size_t k = utf8_next(s + b, e - b, &cp);
        if (!py_isspace(cp)) break;
        b += k;
    }
    while (e > b) {
        size_t k = 1;
        while (k < e - b && k < 4 && ((unsigned char)s[e - k] & 0xC0) == 0x80) k++;
        int32_t cp;
        if (utf8_next(s + e - k, k, &cp) != k || !py_isspace(cp)) break;
        e -= k;
    }
    if (b == e || e - b > 400) return false;
    char clean[512];
    size_t c = 0, i = b;
    if (s[i] == '+' || s[i] == '-') clean[c++] = s[i++];
    const char *words[] = {"inf", "infinity", "nan"};
    for (size_t k = 0; k < ARRAY_LEN(words); k++) {
        if (e - i == strlen(words[k]) && strncasecmp(s + i, words[k], e - i) == 0) {
            double v = k == 2 ? NAN : INFINITY;
            *out = clean[0] == '-' && c ? -v : v;
            return true;
        }
    }
    /* digitpart: digit (["_"] digit)*; number: digitpart ["." [digitpart]] | "." digitpart */
    int digits = 0;
    bool any = false;
#define DIGITPART()                                                                  \
    do {                                                                             \
        digits = 0;                                                                  \
        while (i < e && s[i] >= '0' && s[i] <= '9') {                                \
            clean[c++] = s[i++];                                                     \
            digits++;                                                                \
            if (i + 1 < e && s[i] == '_' && s[i + 1] >= '0' && s[i + 1] <= '9') i++; \
        }                                                                            \
    } while (0)
    DIGITPART();
    any = digits > 0;
    if (i < e && s[i] == '.') {
        clean[c++] = s[i++];
        DIGITPART();
        any = any || digits > 0;
    }
    if (!any) return false;
    if (i < e && (s[i] == 'e' || s[i] == 'E')) {
        clean[c++] = s[i++];
        if (i < e && (s[i] == '+' || s[i] == '-')) clean[c++] = s[i++];
        DIGITPART();
        if (!digits) return false;
    }
#undef DIGITPART
    if (i != e) return false;
    clean[c] = 0;
    *out = strtod(clean, NULL); /* correctly rounded, like Python's float() */
    return true;
}

/* token_weights(s[off..off+len), w): split at top-level parentheses; "(x)" recurses with w*1.1,
 * "(x:N)" with N when the text after the last ':' (at index > 0) parses as a float. */
static int token_weights(const char *s, size_t off, size_t len, double w, int depth,
                         struct wsegs *out, struct err *err);

static int weigh_item(const char *s, size_t off, size_t len, double w, int depth,
                      struct wsegs *out, struct err *err) {
    if (len >= 2 && s[off] == '(' && s[off + len - 1] == ')') {
        size_t xo = off + 1, xl = len - 2;
        double weight = w * 1.1;
        size_t xx = xl;
        while (xx > 0 && s[xo + xx - 1] != ':') xx--;
        if (xx > 1) { /* a ':' at index xx - 1 > 0 */
            double v;
            if (py_float(s + xo + xx, xl - xx, &v)) {
                weight = v;
                xl = xx - 1;
            }
        }
        return token_weights(s, xo, xl, weight, depth + 1, out, err);
    }
    if (wsegs_push(out, off, len, w)) return err_set(err, STATUS_ERR_NOMEM, "out of memory parsing a prompt");
    return 0;
}

static int token_weights(const char *s, size_t off, size_t len, double w, int depth,
                         struct wsegs *out, struct err *err) {
    if (depth > MAX_NESTING)
        return err_set(err, STATUS_ERR_INVALID, "prompt nests parentheses deeper than %d levels",
                       MAX_NESTING);
    /* parse_parentheses: items are contiguous, so each is (start, length). */
    size_t cur = off, cur_len = 0;
    long level = 0;
    int rc;
    for (size_t p = off; p < off + len; p++) {
        char c = s[p];
        if (c == '(') {
            if (level == 0) {
                if (cur_len && (rc = weigh_item(s, cur, cur_len, w, depth, out, err))) return rc;
                cur = p;
                cur_len = 1;
            } else {
                cur_len++;
            }
            level++;
        } else if (c == ')') {
            level--;
            if (!cur_len) cur = p;
            cur_len++;
            if (level == 0) {
                if ((rc = weigh_item(s, cur, cur_len, w, depth, out, err))) return rc;
                cur_len = 0;
            }
        } else {
            if (!cur_len) cur = p;
            cur_len++;
        }
    }
    if (cur_len) return weigh_item(s, cur, cur_len, w, depth, out, err);
    return 0;
}

/* ===== Groups and chunks (SDTokenizer.tokenize_with_weights) ===== */

struct group {
    size_t start; /* first id in the ids vector */
    size_t n;     /* ids */
    float w;      /* weight of every id */
};

struct groups {
    struct group *v;
    size_t n, cap;
};

static int groups_push(struct groups *g, size_t start, size_t n, float w) {
    if (g->n == g->cap) {
        size_t cap = g->cap ? 2 * g->cap : 16;
        struct group *v = mem_try_realloc(g->v, cap * sizeof *v);
        if (!v) return STATUS_ERR_NOMEM;
        g->v = v;
        g->cap = cap;
    }
    g->v[g->n++] = (struct group){start, n, w};
    return 0;
}

/* One piece of a segment (text between " embedding:" splits) -> one token group. A piece that
 * starts with "embedding:" names an embedding; kiln has none, so it is handled as ComfyUI
 * handles a missing one (_try_get_embedding): the first word after "embedding:" is dropped
 * (trailing/leading commas of it come back as text), the rest of the piece is tokenized. */
static int piece_group(struct tokenizer *tk, const char *p, size_t n, double w, struct ivec *ids,
                       struct groups *groups, struct bbuf *tmp, struct err *err) {
    static const char ident[] = "embedding:";
    const size_t il = sizeof ident - 1;
    if (n >= il && memcmp(p, ident, il) == 0) {
        const char *name = p + il;
        size_t nl = n - il;
        while (nl && name[0] == '\n') name++, nl--;
        while (nl && name[nl - 1] == '\n') nl--;
        /* split(): the first word is the name, the others are joined by single spaces. */
        tmp->n = 0;
        size_t wb = SIZE_MAX, we = 0;
        for (size_t q = 0; q < nl;) {
            int32_t cp;
            size_t k = utf8_next(name + q, nl - q, &cp);
            if (py_isspace(cp)) {
                q += k;
                continue;
            }
            size_t s0 = q;
            while (q < nl) {
                k = utf8_next(name + q, nl - q, &cp);
                if (py_isspace(cp)) break;
                q += k;
            }
            if (wb == SIZE_MAX) {
                wb = s0;
                we = q;
            } else if ((tmp->n && bbuf_add(tmp, " ", 1)) || bbuf_add(tmp, name + s0, q - s0)) {
                return err_set(err, STATUS_ERR_NOMEM, "out of memory parsing a prompt");
            }
        }
        if (wb == SIZE_MAX)
            return err_set(err, STATUS_ERR_INVALID,
                           "prompt has \"embedding:\" with no name after it (ComfyUI fails on it too)");
        log_warn("prompt: embedding:%.*s ignored (kiln does not support textual-inversion "
                 "embeddings; ComfyUI drops a missing one the same way)", (int)(we - wb), name + wb);
        /* name.strip(','): the removed count k comes back as name[len(stripped):], i.e. the last
         * k code points of the name, followed by a space. */
        size_t lb = wb, le = we;
        while (lb < le && name[lb] == ',') lb++;
        while (le > lb && name[le - 1] == ',') le--;
        size_t k = (lb - wb) + (we - le);
        if (k) {
            size_t sb = we;
            for (size_t c = 0; c < k; c++) {
                sb--;
                while (sb > wb && ((unsigned char)name[sb] & 0xC0) == 0x80) sb--;
            }
            struct bbuf lead = {0};
            if (bbuf_add(&lead, name + sb, we - sb) || bbuf_add(&lead, " ", 1) ||
                bbuf_add(&lead, tmp->p, tmp->n)) {
                bbuf_free(&lead);
                return err_set(err, STATUS_ERR_NOMEM, "out of memory parsing a prompt");
            }
            bbuf_free(tmp);
            *tmp = lead;
        }
        if (!tmp->n) return 0;
        p = tmp->p;
        n = tmp->n;
    }
    size_t start = ids->n;
    if (tokenize_text(tk, p, n, ids) || groups_push(groups, start, ids->n - start, (float)w))
        return err_set(err, STATUS_ERR_NOMEM, "out of memory tokenizing a prompt");
    return 0;
}

/* Fills out from the groups like the reshape loop of tokenize_with_weights (max_length 77,
 * start and end tokens, pad_with_end, pad_to_max_length). */
static int make_chunks(struct tokenizer *tk, const struct ivec *ids, const struct groups *g,
                       struct tokenizer_chunks *out) {
    const int L = TOKENIZER_CHUNK_LEN;
    size_t cap = 4, n = 1;
    int32_t *cid = mem_try_alloc(cap * L * sizeof *cid);
    float *cw = mem_try_alloc(cap * L * sizeof *cw);
    if (!cid || !cw) goto oom;
    int len = 0; /* ids in the current chunk */
#define PUT(id, wt)                        \
    do {                                   \
        cid[(n - 1) * L + len] = (id);     \
        cw[(n - 1) * L + len] = (wt);      \
        len++;                             \
    } while (0)
    PUT(tk->start_id, 1.0f);
    for (size_t gi = 0; gi < g->n; gi++) {
        if (g->v[gi].n == 0) continue; /* adds nothing (and ids->v may be NULL: no offset from it) */
        const int32_t *t = ids->v + g->v[gi].start;
        size_t left = g->v[gi].n;
        float w = g->v[gi].w;
        bool is_large = left >= MAX_WORD_LEN_GROUP;
        while (left > 0) {
            if (left + (size_t)len > (size_t)(L - 1)) {
                int remaining = L - len - 1;
                if (is_large) { /* split the group at the boundary */
                    for (int k = 0; k < remaining; k++) PUT(*t++, w);
                    left -= (size_t)remaining;
                    PUT(tk->end_id, 1.0f);
                } else { /* end the chunk here; the group moves whole */
                    PUT(tk->end_id, 1.0f);
                    while (len < L) PUT(tk->pad_id, 1.0f);
                }
                if (n == cap) {
                    cap *= 2;
                    int32_t *ni = mem_try_realloc(cid, cap * L * sizeof *ni);
                    if (!ni) goto oom;
                    cid = ni;
                    float *nw = mem_try_realloc(cw, cap * L * sizeof *nw);
                    if (!nw) goto oom;
                    cw = nw;
                }
                n++;
                len = 0;
                PUT(tk->start_id, 1.0f);
            } else {
                for (; left; left--) PUT(*t++, w);
            }
        }
    }
    PUT(tk->end_id, 1.0f);
    while (len < L) PUT(tk->pad_id, 1.0f);
#undef PUT
    out->n_chunks = (int)n;
    out->ids = cid;
    out->weights = cw;
    return 0;
oom:
    mem_free(cid);
    mem_free(cw);
    return STATUS_ERR_NOMEM;
}

int tokenizer_encode(struct tokenizer *tk, const char *text, struct tokenizer_chunks *out,
                     struct err *err) {
    ASSERT(tk->state);
    memset(out, 0, sizeof *out);
    size_t n = strlen(text);
    struct bbuf esc = {0}, seg = {0}, tmp = {0};
    struct wsegs segs = {0};
    struct ivec ids = {0};
    struct groups groups = {0};
    int rc = 0;
    if (bbuf_add(&esc, text, n)) goto oom;
    /* escape_important: "\)" -> "\0\1", then "\(" -> "\0\2" (same length, in place). */
    for (size_t i = 0; i + 1 < n; i++)
        if (esc.p[i] == '\\' && esc.p[i + 1] == ')') esc.p[i] = 0, esc.p[i + 1] = 1, i++;
    for (size_t i = 0; i + 1 < n; i++)
        if (esc.p[i] == '\\' && esc.p[i + 1] == '(') esc.p[i] = 0, esc.p[i + 1] = 2, i++;
    if ((rc = token_weights(esc.p, 0, n, 1.0, 0, &segs, err))) goto out;

    pthread_mutex_lock(&tk->state->mu);
    for (size_t si = 0; si < segs.n && !rc; si++) {
        /* unescape_important: "\0\1" -> ")", then "\0\2" -> "(". */
        seg.n = 0;
        if (bbuf_add(&seg, esc.p + segs.v[si].off, segs.v[si].len)) {
            rc = STATUS_ERR_NOMEM;
            break;
        }
        for (int pass = 1; pass <= 2; pass++) {
            size_t o = 0;
            for (size_t i = 0; i < seg.n; i++) {
                if (i + 1 < seg.n && seg.p[i] == 0 && seg.p[i + 1] == pass) {
                    seg.p[o++] = pass == 1 ? ')' : '(';
                    i++;
                } else {
                    seg.p[o++] = seg.p[i];
                }
            }
            seg.n = o;
        }
        /* re.split(" embedding:|\nembedding:"): the separator's first byte is dropped. */
        size_t pb = 0;
        for (size_t i = 0; i <= seg.n && !rc; i++) {
            bool sep = i + 11 <= seg.n && (seg.p[i] == ' ' || seg.p[i] == '\n') &&
                       memcmp(seg.p + i + 1, "embedding:", 10) == 0;
            if (!sep && i < seg.n) continue;
            if (i > pb) rc = piece_group(tk, seg.p + pb, i - pb, segs.v[si].w, &ids, &groups, &tmp, err);
            pb = i + 1;
            if (sep) i += 10; /* scan on after "embedding:"; the next piece starts with it */
        }
    }
    pthread_mutex_unlock(&tk->state->mu);
    if (rc == STATUS_ERR_NOMEM) goto oom;
    if (rc) goto out;
    if (make_chunks(tk, &ids, &groups, out)) goto oom;
    goto out;
oom:
    rc = err_set(err, STATUS_ERR_NOMEM, "out of memory tokenizing a prompt of %zu bytes", n);
out:
    bbuf_free(&esc);
    bbuf_free(&seg);
    bbuf_free(&tmp);
    mem_free(segs.v);
    ivec_free(&ids);
    mem_free(groups.v);
    return rc;
}

bool tokenizer_chunks_weighted(const struct tokenizer_chunks *c) {
    for (size_t i = 0; i < (size_t)c->n_chunks * TOKENIZER_CHUNK_LEN; i++)
        if (c->weights[i] != 1.0f) return true;
    return false;
}

void tokenizer_chunks_deinit(struct tokenizer_chunks *c) {
    if (!c) return;
    mem_free(c->ids);
    mem_free(c->weights);
    memset(c, 0, sizeof *c);
}

/* ===== Tiny test vocabulary =====
 * A BPE trainer (most frequent adjacent pair first; ties broken by the pair's strings in byte
 * order; a pair whose concatenation is already a token is skipped so ids stay unique) runs over
 * the word counts of a fixed corpus of prompt-like English, exactly TOKENIZER_TINY_MERGES times. */

static const char *const TINY_CORPUS[] = {
    "a photo of a cat", "a photo of a dog", "a beautiful landscape with mountains and a lake",
    "a painting of the sea at sunset", "portrait of a woman with red hair, oil painting",
    "a cat sitting on a wooden table in the kitchen", "the dog is running in the green grass",
    "a beautiful photo of the night sky with stars", "a small house in the forest, morning light",
    "a city street at night with rain and neon lights", "an old man reading a book by the window",
    "a bowl of fruit on a table, still life painting", "a castle on a hill above the clouds",
    "a red car parked on the street in the city", "a girl walking on the beach with her dog",
    "a landscape painting of a river in the valley", "a close up photo of a flower with water drops",
    "a black and white photo of an old train station", "the moon over the ocean, digital art",
    "a cute cat sleeping on a blue blanket", "a highly detailed portrait of a knight in armor",
    "a bird flying over the mountains at sunrise", "a cozy room with a fireplace and a cat",
    "a snowy forest in winter, beautiful light", "a cup of coffee on a wooden table",
    "a field of yellow flowers under a blue sky", "a photo of a dog playing with a ball",
    "a futuristic city with tall buildings and flying cars", "the face of a young woman, soft light",
    "a waterfall in a green jungle", "a beautiful garden with roses and a small fountain",
    "a boat on a calm lake at dawn", "a dragon flying over a medieval village",
    "a photo of a cat and a dog together", "a painting of a horse running in a field",
    "an astronaut riding a horse on the moon", "a bridge over a river in the autumn forest",
    "a lighthouse on the rocks by the sea", "a street market in the old town",
    "a beautiful woman wearing a white dress", "a robot standing in the desert at noon",
    "a portrait photo of a man with a beard", "a cat looking out of the window at the rain",
    "a mountain landscape with snow and pine trees", "a plate of food in a restaurant",
    "a tiger walking through the tall grass", "the northern lights over a frozen lake",
    "a watercolor painting of a small village", "a photo of the city skyline at sunset",
    "a fantasy landscape with a castle and a dragon", "a child playing in the park with a dog",
    "an oil painting of flowers in a glass vase", "a sports car driving on a mountain road",
    "a wolf howling at the full moon", "a quiet library full of old books",
    "a cinematic photo of a ship in a storm", "a colorful bird sitting on a branch",
    "a dark forest with fog and tall trees", "a sunny beach with palm trees and clear water",
    "a detailed drawing of a cat with big eyes", "a beautiful sunset over the desert dunes",
    "an elephant walking in the savanna", "a photo of a happy dog in the snow",
    "a stone bridge in a green valley", "a glass of wine on a table by the candle light",
    "a train crossing a bridge in the mountains", "a portrait of an old woman smiling",
    "a peaceful lake surrounded by autumn trees", "a fox in a snowy forest",
    "a beautiful landscape photo, high quality, sharp focus", "masterpiece, best quality, detailed",
};

#define TINY_MAX_TOKENS TOKENIZER_TINY_VOCAB_SIZE

struct tiny_word {
    int32_t sym[48]; /* current symbols (token indices) */
    int nsym;
    int freq;
};

struct tiny_trainer {
    char *tok[TINY_MAX_TOKENS];  /* token strings (mem_alloc), by id */
    int ntok;
    struct table tokset;         /* token string -> id */
    struct tiny_word *words;
    int nwords;
    int32_t merge_a[TOKENIZER_TINY_MERGES], merge_b[TOKENIZER_TINY_MERGES];
};

static void tiny_add_token(struct tiny_trainer *t, const char *s) {
    ASSERT(t->ntok < TINY_MAX_TOKENS);
    t->tok[t->ntok] = mem_strdup(s);
    ASSERT(table_put(&t->tokset, s, strlen(s), t->ntok) == 0);
    t->ntok++;
}

static void tiny_train(struct tiny_trainer *t) {
    memset(t, 0, sizeof *t);
    ASSERT(table_init(&t->tokset, TINY_MAX_TOKENS) == 0);
    char s[16];
    for (int i = 0; i < 256; i++) {
        struct bbuf b = {0};
        ASSERT(utf8_put(&b, base_cp(i)) == 0);
        snprintf(s, sizeof s, "%.*s", (int)b.n, b.p);
        tiny_add_token(t, s);
        bbuf_free(&b);
    }
    for (int i = 0; i < 256; i++) {
        snprintf(s, sizeof s, "%s</w>", t->tok[i]);
        tiny_add_token(t, s);
    }
    /* Word counts of the corpus (words: runs of a-z). */
    struct table wordset;
    ASSERT(table_init(&wordset, 1024) == 0);
    t->words = mem_calloc(4096, sizeof *t->words);
    for (size_t li = 0; li < ARRAY_LEN(TINY_CORPUS); li++) {
        const char *p = TINY_CORPUS[li];
        while (*p) {
            while (*p && !(*p >= 'a' && *p <= 'z')) p++;
            const char *q = p;
            while (*q >= 'a' && *q <= 'z') q++;
            if (q == p) break;
            int32_t *idx = table_get(&wordset, p, (size_t)(q - p));
            if (idx) {
                t->words[*idx].freq++;
            } else {
                ASSERT(t->nwords < 4096 && q - p <= 48);
                struct tiny_word *w = &t->words[t->nwords];
                for (const char *c = p; c < q; c++) w->sym[w->nsym++] = (int32_t)(*c - 0x21);
                w->sym[w->nsym - 1] += 256; /* last symbol with </w> */
                w->freq = 1;
                ASSERT(table_put(&wordset, p, (size_t)(q - p), t->nwords) == 0);
                t->nwords++;
            }
            p = q;
        }
    }
    table_deinit(&wordset);

    struct table pairs;
    ASSERT(table_init(&pairs, 4096) == 0);
    int *count = mem_alloc(sizeof(int) * 65536);
    int32_t *pa = mem_alloc(sizeof(int32_t) * 65536), *pb = mem_alloc(sizeof(int32_t) * 65536);
    for (int m = 0; m < TOKENIZER_TINY_MERGES; m++) {
        table_clear(&pairs);
        int np = 0;
        for (int wi = 0; wi < t->nwords; wi++) {
            struct tiny_word *w = &t->words[wi];
            for (int k = 0; k + 1 < w->nsym; k++) {
                int32_t key[2] = {w->sym[k], w->sym[k + 1]};
                int32_t *idx = table_get(&pairs, (const char *)key, sizeof key);
                if (idx) {
                    count[*idx] += w->freq;
                } else {
                    ASSERT(np < 65536);
                    ASSERT(table_put(&pairs, (const char *)key, sizeof key, np) == 0);
                    count[np] = w->freq;
                    pa[np] = key[0];
                    pb[np] = key[1];
                    np++;
                }
            }
        }
        int best = -1;
        char cat[256];
        for (int i = 0; i < np; i++) {
            snprintf(cat, sizeof cat, "%s%s", t->tok[pa[i]], t->tok[pb[i]]);
            if (table_get(&t->tokset, cat, strlen(cat))) continue; /* would duplicate a token */
            if (best >= 0) {
                if (count[i] < count[best]) continue;
                if (count[i] == count[best]) {
                    int c1 = strcmp(t->tok[pa[i]], t->tok[pa[best]]);
                    if (c1 > 0 || (c1 == 0 && strcmp(t->tok[pb[i]], t->tok[pb[best]]) > 0)) continue;
                }
            }
            best = i;
        }
        ASSERT(best >= 0); /* the corpus must allow TOKENIZER_TINY_MERGES merges */
        snprintf(cat, sizeof cat, "%s%s", t->tok[pa[best]], t->tok[pb[best]]);
        int32_t nid = t->ntok;
        tiny_add_token(t, cat);
        t->merge_a[m] = pa[best];
        t->merge_b[m] = pb[best];
        for (int wi = 0; wi < t->nwords; wi++) {
            struct tiny_word *w = &t->words[wi];
            int o = 0;
            for (int k = 0; k < w->nsym; k++) {
                if (k + 1 < w->nsym && w->sym[k] == pa[best] && w->sym[k + 1] == pb[best]) {
                    w->sym[o++] = nid;
                    k++;
                } else {
                    w->sym[o++] = w->sym[k];
                }
            }
            w->nsym = o;
        }
    }
    mem_free(count);
    mem_free(pa);
    mem_free(pb);
    table_deinit(&pairs);
    tiny_add_token(t, START_TOKEN);
    tiny_add_token(t, END_TOKEN);
    ASSERT(t->ntok == TOKENIZER_TINY_VOCAB_SIZE);
}

static void tiny_free(struct tiny_trainer *t) {
    for (int i = 0; i < t->ntok; i++) mem_free(t->tok[i]);
    table_deinit(&t->tokset);
    mem_free(t->words);
}

static int write_whole(const char *path, const struct bbuf *b, struct err *err) {
    FILE *f = fopen(path, "wb");
    if (!f) return err_set(err, STATUS_ERR_IO, "cannot create %s: %s", path, strerror(errno));
    bool ok = fwrite(b->p, 1, b->n, f) == b->n;
    ok = (fclose(f) == 0) && ok;
    if (!ok) return err_set(err, STATUS_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    return 0;
}

int tokenizer_write_tiny(const char *dir, struct err *err) {
    struct tiny_trainer *t = mem_alloc(sizeof *t);
    tiny_train(t);
    struct bbuf v = {0}, m = {0};
    char path[4096], num[32];
    int bad = 0;
    /* vocab.json in CLIP's layout: one line, {"!": 0, "\"": 1, ...} */
    bad |= bbuf_add(&v, "{", 1);
    for (int i = 0; i < t->ntok; i++) {
        if (i) bad |= bbuf_add(&v, ", ", 2);
        bad |= bbuf_add(&v, "\"", 1);
        for (const char *c = t->tok[i]; *c; c++) {
            if (*c == '"' || *c == '\\') bad |= bbuf_add(&v, "\\", 1);
            bad |= bbuf_add(&v, c, 1);
        }
        int k = snprintf(num, sizeof num, "\": %d", i);
        bad |= bbuf_add(&v, num, (size_t)k);
    }
    bad |= bbuf_add(&v, "}\n", 2);
    bad |= bbuf_add(&m, "#version: 0.2\n", 14);
    for (int i = 0; i < TOKENIZER_TINY_MERGES; i++) {
        bad |= bbuf_add(&m, t->tok[t->merge_a[i]], strlen(t->tok[t->merge_a[i]]));
        bad |= bbuf_add(&m, " ", 1);
        bad |= bbuf_add(&m, t->tok[t->merge_b[i]], strlen(t->tok[t->merge_b[i]]));
        bad |= bbuf_add(&m, "\n", 1);
    }
    int rc = 0;
    if (bad) rc = err_set(err, STATUS_ERR_NOMEM, "out of memory writing the tiny vocabulary");
    if (!rc && snprintf(path, sizeof path, "%s/vocab.json", dir) >= (int)sizeof path)
        rc = err_set(err, STATUS_ERR_RANGE, "tokenizer folder path too long: %s", dir);
    if (!rc) rc = write_whole(path, &v, err);
    if (!rc) snprintf(path, sizeof path, "%s/merges.txt", dir);
    if (!rc) rc = write_whole(path, &m, err);
    bbuf_free(&v);
    bbuf_free(&m);
    tiny_free(t);
    mem_free(t);
    return rc;
}

int tokenizer_tiny_vocab_size(void) { return TOKENIZER_TINY_VOCAB_SIZE; }
