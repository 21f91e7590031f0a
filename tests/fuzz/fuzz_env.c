/* tests/fuzz/fuzz_env.c -- libFuzzer target: bytes as a .env file -> cli/config.c's .env reader
 * (config__env_file_check: the reader config_load uses, nothing exported).
 * Owns: one scratch file under /tmp (fuzz.h). Threads: the fuzzer's. */
#include "base/err.h"
#include "cli/config.h"
#include "fuzz.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[128];
    fuzz_write("in.env", data, size, path, sizeof path);
    struct err e = {0};
    int n = -1;
    if (config__env_file_check(path, &n, &e) == 0 && n < 0) abort(); /* entries counted on success */
    return 0;
}
