/* io/savepath.h -- where SaveImage/PreviewImage put a file: ComfyUI's
 * folder_paths.get_save_image_path (prefix with subfolders, %width%/%height%/%year%... and
 * the "<prefix>_<counter:05>_.png" counter), refusing paths outside the output folder.
 * Owns: nothing beyond the result struct; creates the target folder.
 * Threads: any (two savers racing on one folder may pick the same counter, as in ComfyUI).
 * Ownership: the caller provides the result storage. */
#ifndef KILN_IO_SAVEPATH_H
#define KILN_IO_SAVEPATH_H

#include "base/err.h"

#include <stddef.h>
#include <stdint.h>

struct io_save_path {
    char folder[4096];                   /* full folder the files go in (exists on return) */
    char filename[1024];                 /* the file-name prefix (may hold %batch_num%) */
    char subfolder[1024];                /* folder relative to the output dir, "" for none */
    int counter;                         /* 1 + the largest counter already used by filename */
};

/* Resolves `prefix` under output_dir. width/height are the first image's (for %width% and
 * %height%; ComfyUI passes W = shape[1], H = shape[0] of images[0]). Time variables use local
 * time. Returns STATUS_ERR_INVALID (ComfyUI's message) when the result is outside output_dir
 * (absolute prefixes, "..", symlinks out), STATUS_ERR_IO when the folder cannot be made. */
int io_save_path(const char *prefix, const char *output_dir, int64_t width, int64_t height, struct io_save_path *out,
                 struct err *err);

/* Python's os.path.normpath for POSIX paths, into out[n]. */
void io_normpath(const char *path, char *out, size_t n);

/* True when `target` (which may not exist yet) stays inside `dir` once symlinks of its
 * existing part are resolved (ComfyUI's is_within_directory). */
int io_path_within(const char *dir, const char *target);

#endif
