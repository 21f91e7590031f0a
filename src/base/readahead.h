/* base/readahead.h -- a cold start's reads of the process's own libraries, done ahead.
 * A first prompt on a GPU faults in ~570 MiB of pages of the GPU libraries (cuBLASLt, cuDNN's
 * engines and heuristics, NVRTC: measured on an H100 lease), a few pages at a time, each fault
 * waiting for the disk that the checkpoint's read keeps busy. readahead_record writes, once,
 * which pages of which mapped libraries this process touched (its page table's present bits,
 * /proc/self/pagemap); readahead_start, at the next start, reads those pages with a few threads
 * and large reads, so that the faults find them in memory; the plans the GPU backend keeps one
 * folder down in the cache folder are read whole with them.
 * Owns: the list file in the cache folder (fs_cache_dir) and, between start and end, the
 * replay's thread and its open files (struct readahead; fs_read_ranges does the reading).
 * Threads: readahead_start / readahead_end from one thread; readahead_record from any. */
#ifndef KILN_READAHEAD_H
#define KILN_READAHEAD_H

#include "base/err.h"

#include <stdint.h>

struct readahead;

/* Starts reading the list's pages in the background when the list exists under dir (NULL: the
 * cache folder), and KILN_READAHEAD is not "0". Files whose size or modification time changed
 * since the list was written are skipped. NULL when nothing was started. */
struct readahead *readahead_start(const char *dir);

/* Waits for the readers to finish the list (at most ~2 GiB: seconds) and frees r; returns the
 * bytes read (0 for NULL). */
uint64_t readahead_end(struct readahead *r);

/* Writes the list of the pages of this process's mapped shared libraries (and executable) that
 * its page table holds, unless a list is there already and every file in it is unchanged. Returns 0 (also when
 * there was nothing to write, or caching is off) or a status with err set. */
int readahead_record(const char *dir, struct err *err);

#endif
