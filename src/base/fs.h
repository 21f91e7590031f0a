/* base/fs.h -- small file-system helpers the layers share: mkdir -p, the folder of kiln's
 * on-disk caches, a whole file read, a whole file written or not at all, byte ranges read into
 * the page cache by several threads.
 * Owns: nothing (results go in caller storage, or in buffers the caller frees with mem_free).
 * Threads: any. */
#ifndef KILN_FS_H
#define KILN_FS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* mkdir -p path with mode (the umask applies). Returns 0, or -errno with the failing prefix in
 * failed (n bytes; failed may be NULL). A prefix that exists but is no folder: -ENOTDIR. */
int fs_make_dirs(const char *path, int mode, char *failed, size_t n);

/* The folder of kiln's caches (plans that are slow to make and safe to keep between runs):
 * $KILN_CACHE_DIR, else $XDG_CACHE_HOME/kiln, else $HOME/.cache/kiln, into out (n bytes).
 * false when caching is off (KILN_CACHE_DIR set to ""), no variable names a place, or the path
 * does not fit. The folder may not exist yet. */
bool fs_cache_dir(char *out, size_t n);

/* Reads all of path (at most max bytes) into a new buffer with a 0 byte after the data (*out,
 * mem_free it; *len excludes the 0). Returns 0, or -errno (-EFBIG when the file is larger than
 * max). */
int fs_read_whole(const char *path, size_t max, char **out, size_t *len);

/* Writes data to path through a temporary file in the same folder, renamed over path at the
 * end: a reader sees the old file or all of the new one, never a part. Returns 0 or -errno
 * (the temporary file is removed on failure). */
int fs_write_whole(const char *path, const void *data, size_t len);

/* A byte range of an open file, for fs_read_ranges. */
struct fs_range {
    int fd;
    uint64_t off, len;
};

/* Reads ranges[0..n) into the page cache: each range split into pieces of at most `piece` bytes,
 * the pieces taken in order by `threads` readers (the calling thread is one of them, the others
 * are its own threads, joined before return), each read into a throwaway buffer. So the read's
 * front moves through the ranges in their order, with up to `threads` reads in flight (a disk
 * serves several at once faster than one). Stops taking pieces once stop(user) is true (stop may
 * be NULL: never; it is called from every reader). Returns the bytes read; a failed read only
 * ends its piece (this warms a cache, nothing more). */
uint64_t fs_read_ranges(const struct fs_range *ranges, size_t n, size_t piece, int threads, bool (*stop)(void *),
                        void *user);

#endif
