/* tensor/cpu/blas.c -- OpenBLAS set-up: its kernel choice and its threads.
 * Owns: a constructor (before main) that stops OpenBLAS's worker threads and corrects its
 * kernel choice; the thread-count wrapper graph_run uses.
 * Threads: the constructor runs before main, when no thread of ours exists; the rest runs on
 * the backend's worker.
 * WHY. OpenBLAS's DYNAMIC_ARCH builds (Debian's 0.3.21) pick their kernels from the CPU model
 * number when the library loads. A CPU newer than the library (this machine: Xeon family 6
 * model 207, Emerald Rapids) is unknown to it and gets the "Prescott" SSE3 kernels, 4-5x slower
 * than the AVX-512 ones (measured: 16 vs 70 GFLOP/s for one core's sgemm). OPENBLAS_CORETYPE
 * overrides the choice, but OpenBLAS reads it only while it initialises, before main, and
 * glibc rebuilds the environment after .preinit_array hooks, so it cannot be set in time from
 * inside the process. Instead this constructor (it runs after every shared library's) asks
 * OpenBLAS to choose again: it stops the worker threads, sets the variable from the CPU's
 * feature bits and calls OpenBLAS's exported gotoblas_dynamic_quit/gotoblas_dynamic_init pair,
 * which only swaps the kernel table and sets its blocking parameters. AVX-512 F/BW/DQ/VL ->
 * SkylakeX (also right for later Intel and for AMD Zen 4), AVX2 + FMA -> Haswell. The choice is
 * left alone when the user set OPENBLAS_CORETYPE, when OpenBLAS already chose a kernel of that
 * class, or when the BLAS is not a DYNAMIC_ARCH OpenBLAS (the three symbols are weak
 * references, NULL when absent). This file is linked into every program that uses the CPU
 * backend, because graph_run calls cpu__blas_threads. */
#include "tensor/cpu/cpu.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

/* OpenBLAS internals (exported by its DYNAMIC_ARCH pthread builds; not in cblas.h) */
extern void gotoblas_dynamic_init(void) __attribute__((weak));
extern void gotoblas_dynamic_quit(void) __attribute__((weak));
extern int blas_thread_shutdown_(void) __attribute__((weak));

/* ===== Kernel choice (before main) ===== */

static bool name_in(const char *name, const char *const *list) {
    for (; *list; list++)
        if (strcmp(name, *list) == 0) return true;
    return false;
}

__attribute__((constructor)) static void blas_pick_core(void) {
    /* OpenBLAS's worker threads, started by its constructor, are never used by kiln (THREADING
     * in cpu.h) and would spin for a while first; they also read the kernel table on their own
     * (their first buffer allocation even re-runs the choice if it finds no table). Stop them,
     * so nothing else touches the table while it is swapped. They restart by themselves if
     * anything ever calls a threaded OpenBLAS function. */
    if (blas_thread_shutdown_) blas_thread_shutdown_();
#if defined(__x86_64__) || defined(__i386__)
    if (!gotoblas_dynamic_init || !gotoblas_dynamic_quit || !blas_thread_shutdown_ || getenv("OPENBLAS_CORETYPE"))
        return;
    static const char *const avx512_cores[] = {"SkylakeX", "Cooperlake", "SapphireRapids", NULL};
    static const char *const avx2_cores[] = {"Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids", NULL};
    const char *want = NULL;
    const char *const *good = NULL;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
        want = "SkylakeX";
        good = avx512_cores;
    } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        want = "Haswell";
        good = avx2_cores;
    }
    const char *have = openblas_get_corename();
    if (!want || !have || name_in(have, good)) return;
    setenv("OPENBLAS_CORETYPE", want, 0);
    gotoblas_dynamic_quit();
    gotoblas_dynamic_init();
    unsetenv("OPENBLAS_CORETYPE"); /* ours, not the user's: keep the environment as it was */
#endif
}

/* ===== Threads ===== */

void cpu__blas_threads(int n) { openblas_set_num_threads(n > 0 ? n : 1); }

const char *cpu__blas_core(void) { return openblas_get_corename(); }
