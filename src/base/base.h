/* base/base.h -- always-on assertions and small helpers used by every layer.
 * Owns: nothing at run time; macros only.
 * Threads: any. */
#ifndef KILN_BASE_H
#define KILN_BASE_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

/* Programmer errors (tier a): print expression, file and line, then abort. Always on. */
#define ASSERT(x)                                                          \
    do {                                                                   \
        if (!(x)) base_assert_fail(#x, __FILE__, __LINE__, __func__);      \
    } while (0)

/* Defensive branches (sqlite): true/false in release, asserted in debug builds. */
#ifdef NDEBUG
#define ALWAYS(x) (x)
#define NEVER(x) (x)
#else
#define ALWAYS(x) ((x) ? 1 : (base_assert_fail(#x, __FILE__, __LINE__, __func__), 0))
#define NEVER(x) ((x) ? (base_assert_fail("!(" #x ")", __FILE__, __LINE__, __func__), 1) : 0)
#endif

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* For a function whose loops should be vectorised: GCC at -O2 vectorises only loops whose trip
 * count it knows (our Release flags), so such functions ask for -O3; Clang vectorises at -O2
 * already. Element-wise loops only: IEEE results are the same either way (no reassociation, no
 * contraction beyond what the build allows). */
#if defined(__GNUC__) && !defined(__clang__)
#define KILN_VECTORIZE __attribute__((optimize("O3")))
#else
#define KILN_VECTORIZE
#endif
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

_Noreturn void base_assert_fail(const char *expr, const char *file, int line, const char *func);

#endif
