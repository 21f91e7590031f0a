/* base/clock.h -- monotonic and wall clocks. Threads: any. */
#ifndef KILN_CLOCK_H
#define KILN_CLOCK_H

#include <stdint.h>

/* Monotonic time in seconds (for durations). */
double clock_now(void);

/* Wall-clock milliseconds since the Unix epoch (for timestamps in events). */
int64_t clock_wall_ms(void);

#endif
