/* model/tokenizer.h -- the CLIP BPE tokenizer with ComfyUI's prompt syntax (SD 1.x, CLIP-L).
 * Owns: the vocabulary and merge-rank hash tables, a per-word BPE cache, and the tiny test
 * vocabulary writer. Reproduces, token for token, what ComfyUI's SDTokenizer.tokenize_with_weights
 * gets from transformers' slow CLIPTokenizer without ftfy: BasicTokenizer clean-up (NFC,
 * control characters dropped, CJK spaced, lowercase), CLIP's pre-split regex, GPT-2 byte
 * mapping, BPE with "</w>", then "(text:1.3)" weights and 77-token chunks.
 * Must not: touch tensors or the model; it only turns text into ids and weights.
 * Threads: tokenizer_load/deinit on one thread; tokenizer_encode* may be called from any thread
 * (the BPE cache is behind a mutex). Ownership is stated per function. */
#ifndef KILN_MODEL_TOKENIZER_H
#define KILN_MODEL_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct err;

#define TOKENIZER_CHUNK_LEN 77           /* ids per CLIP chunk: start + 75 content + end (+ pad) */
#define TOKENIZER_CHUNK_CONTENT 75       /* content ids per chunk */
#define TOKENIZER_MAX_MERGES 48894       /* merges kept, like transformers: 49152 - 256 - 2 */
#define TOKENIZER_TINY_VOCAB_SIZE 1024   /* entries of the tiny test vocabulary */
#define TOKENIZER_TINY_MERGES 510        /* its merges: 1024 - 2 * 256 - 2 */

struct tokenizer_state; /* hash tables, BPE cache and its mutex (tokenizer.c) */

/* A loaded vocabulary. Storage is the caller's (embed it); tokenizer_load fills it and
 * tokenizer_deinit releases what it owns. A zeroed struct is "not loaded". */
struct tokenizer {
    struct tokenizer_state *state; /* owned; NULL when not loaded */
    int n_vocab;                   /* entries of vocab.json (49408 for CLIP-L) */
    int n_merges;                  /* merge ranks kept (48894 for CLIP-L) */
    int32_t start_id;              /* id of "<|startoftext|>" (49406) */
    int32_t end_id;                /* id of "<|endoftext|>" (49407); also the unknown token */
    int32_t pad_id;                /* padding id: end_id for SD1 (ComfyUI pad_with_end) */
};

/* The output of tokenizer_encode: n_chunks rows of TOKENIZER_CHUNK_LEN ids, each row
 * [start, up to 75 content ids, end, pad...], and one weight per id (start, end and pad have
 * weight 1.0, as in ComfyUI). Storage is the caller's; tokenizer_chunks_deinit frees the arrays. */
struct tokenizer_chunks {
    int n_chunks;     /* >= 1 after a successful encode */
    int32_t *ids;     /* [n_chunks, 77] token ids; owned, freed by tokenizer_chunks_deinit */
    float *weights;   /* [n_chunks, 77] prompt weights; owned likewise */
};

/* ===== Loading ===== */

/* Reads vocab.json (token string -> id, read with jansson) and merges.txt ("#version" line,
 * then one "a b" merge per line; the rank is the line order, and only the first
 * TOKENIZER_MAX_MERGES are kept, as transformers does). The start/end ids come from
 * "<|startoftext|>" and "<|endoftext|>" in the vocabulary; pad is the end id.
 * Returns 0, or STATUS_ERR_IO / ERR_NOT_FOUND (a file cannot be read) or ERR_FORMAT (malformed:
 * the message names the file and the line). On error tk is left zeroed. */
int tokenizer_load(struct tokenizer *tk, const char *vocab_json, const char *merges_txt,
                   struct err *err);

/* Frees what tokenizer_load allocated and zeroes tk. A zeroed tk is a no-op. */
void tokenizer_deinit(struct tokenizer *tk);

/* The token string of an id (byte-level unicode, e.g. "cat</w>"), or NULL for an id not in the
 * vocabulary. The pointer lives as long as tk. */
const char *tokenizer_token_str(const struct tokenizer *tk, int32_t id);

/* The id of a token string, or -1 when it is not in the vocabulary. */
int32_t tokenizer_token_id(const struct tokenizer *tk, const char *token);

/* Looks for vocab.json + merges.txt, in order, in (1) explicit_dir (the --tokenizer flag),
 * (2) the folder of ckpt_path, (3) <models_dir>/tokenizers/clip-l/; a NULL argument skips its
 * place. On success writes both paths (NUL-terminated, at most n bytes each) and returns 0.
 * When no place has both files returns STATUS_ERR_NOT_FOUND with a message that lists every
 * place looked in and how to fix it; STATUS_ERR_RANGE when a path does not fit in n. */
int tokenizer_find(char *vocab_out, char *merges_out, size_t n, const char *explicit_dir,
                   const char *ckpt_path, const char *models_dir, struct err *err);

/* ===== Encoding ===== */

/* ComfyUI's SDTokenizer.tokenize_with_weights for SD1 (CLIP-L): parses "(text)" (x1.1, nests),
 * "(text:1.3)" (absolute weight), "\(" "\)" (literal parentheses); "[ ]" are plain text and
 * there is no BREAK. Each weighted segment is one token group (split only before
 * " embedding:"); groups of >= 8 ids that cross the 75-id boundary are split, shorter ones
 * move whole to the next chunk. An empty prompt gives one chunk [start, end, pad...].
 * "embedding:NAME" words are dropped with a warning, exactly as ComfyUI does for an embedding
 * file it cannot find (kiln has no textual-inversion support yet).
 * text is NUL-terminated UTF-8 (invalid bytes are dropped). Fills *out (caller storage; free
 * with tokenizer_chunks_deinit). Returns 0, STATUS_ERR_NOMEM, or STATUS_ERR_INVALID (a prompt
 * ComfyUI rejects too: parentheses nested deeper than 900, "embedding:" without a name).
 * Threads: any. */
int tokenizer_encode(struct tokenizer *tk, const char *text, struct tokenizer_chunks *out,
                     struct err *err);

/* The plain CLIP tokenization of text, without weights, chunks or start/end ids (what
 * transformers' tokenizer(text, add_special_tokens=False) returns). *ids_out is freed by the
 * caller with mem_free (it may be NULL when *n_out is 0). Returns 0 or STATUS_ERR_NOMEM.
 * Threads: any. */
int tokenizer_encode_plain(struct tokenizer *tk, const char *text, int32_t **ids_out, int *n_out,
                           struct err *err);

/* True when any weight differs from 1.0 (ComfyUI then also encodes the empty prompt). */
bool tokenizer_chunks_weighted(const struct tokenizer_chunks *c);

void tokenizer_chunks_deinit(struct tokenizer_chunks *c);

/* ===== Tiny test vocabulary ===== */

/* Writes dir/vocab.json and dir/merges.txt: a small real BPE vocabulary in CLIP's format and id
 * layout (256 byte characters, the same with "</w>", TOKENIZER_TINY_MERGES merges learned by a
 * built-in BPE trainer from a fixed English corpus, then "<|startoftext|>" and "<|endoftext|>"
 * as the last two ids). The output is byte-for-byte deterministic. dir must exist.
 * Returns 0 or STATUS_ERR_IO (with the path in the message). */
int tokenizer_write_tiny(const char *dir, struct err *err);

/* TOKENIZER_TINY_VOCAB_SIZE: the entry count of the tiny vocabulary (sizes the tiny CLIP). */
int tokenizer_tiny_vocab_size(void);

#endif
