/* tests/fuzz/fuzz_tokenizer.c -- libFuzzer target: bytes as prompt text -> the CLIP tokenizer
 * with the tiny vocabulary (tokenizer_write_tiny into the scratch folder, loaded once) ->
 * tokenizer_encode (ComfyUI's "(text:1.3)" weighting, 77-id chunks) and tokenizer_encode_plain.
 * Every id must be in the vocabulary, and every chunk framed by start and end.
 * Owns: the loaded tokenizer (for the process). Threads: the fuzzer's. */
#include "base/err.h"
#include "base/mem.h"
#include "model/tokenizer.h"
#include "fuzz.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static struct tokenizer tk;

static void tiny_load(void) {
    char vocab[256], merges[256];
    struct err e = {0};
    snprintf(vocab, sizeof vocab, "%s/vocab.json", fuzz_dir());
    snprintf(merges, sizeof merges, "%s/merges.txt", fuzz_dir());
    if (tokenizer_write_tiny(fuzz_dir(), &e) || tokenizer_load(&tk, vocab, merges, &e)) {
        fprintf(stderr, "tiny tokenizer: %s\n", e.msg);
        abort();
    }
}

static void tiny_free(void) { tokenizer_deinit(&tk); }

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    tiny_load();
    atexit(tiny_free); /* LeakSanitizer runs after atexit handlers */
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = mem_alloc(size + 1); /* NUL-terminated; an inner NUL just ends the text */
    memcpy(text, data, size);
    text[size] = 0;
    struct err e = {0};
    struct tokenizer_chunks c = {0};
    if (tokenizer_encode(&tk, text, &c, &e) == 0) {
        if (c.n_chunks < 1) abort();
        for (int k = 0; k < c.n_chunks; k++) {
            const int32_t *ids = c.ids + (size_t)k * TOKENIZER_CHUNK_LEN;
            if (ids[0] != tk.start_id) abort();
            bool ended = false;
            for (int i = 1; i < TOKENIZER_CHUNK_LEN; i++) {
                if (ids[i] < 0 || ids[i] >= tk.n_vocab) abort();
                ended |= ids[i] == tk.end_id;
            }
            if (!ended) abort();
        }
        (void)tokenizer_chunks_weighted(&c);
    }
    tokenizer_chunks_deinit(&c);
    int32_t *ids = NULL;
    int n = 0;
    err_clear(&e);
    if (tokenizer_encode_plain(&tk, text, &ids, &n, &e) == 0)
        for (int i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= tk.n_vocab) abort();
    mem_free(ids);
    mem_free(text);
    return 0;
}
