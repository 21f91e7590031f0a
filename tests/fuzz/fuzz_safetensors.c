/* tests/fuzz/fuzz_safetensors.c -- libFuzzer target: bytes as a .safetensors file -> ckpt_open
 * (model/safetensors.c: header validation) -> every tensor and metadata lookup -> ckpt_close.
 * On success every tensor must lie inside the file, which is what the validation promises.
 * Owns: one scratch file under /tmp (fuzz.h). Threads: the fuzzer's. */
#include "base/err.h"
#include "model/safetensors.h"
#include "fuzz.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[128];
    fuzz_write("in.safetensors", data, size, path, sizeof path);
    struct err e = {0};
    struct ckpt ck;
    if (ckpt_open(&ck, path, &e)) {
        ckpt_close(&ck); /* documented harmless after a failed open */
        return 0;
    }
    const uint8_t *lo = ck.map, *hi = lo + ck.map_size;
    for (int i = 0; i < ck.n_tensors; i++) {
        const struct ckpt_tensor *t = &ck.tensors[i];
        const uint8_t *p = t->data;
        if (t->nbytes && (p < lo || p > hi || t->nbytes > (size_t)(hi - p))) {
            fprintf(stderr, "tensor %s: %zu bytes at offset %td of a %zu-byte file\n", t->name, t->nbytes, p - lo,
                    ck.map_size);
            abort();
        }
        if (ckpt_find(&ck, t->name) == NULL) {
            fprintf(stderr, "ckpt_find does not find tensor %s\n", t->name);
            abort();
        }
        volatile uint8_t sink = 0;
        if (t->nbytes) sink ^= p[0] ^ p[t->nbytes - 1]; /* ASan: inside the mapping */
        (void)sink;
        (void)ckpt_tensor_numel(t);
    }
    (void)ckpt_metadata_get(&ck, "format");
    ckpt_close(&ck);
    return 0;
}
