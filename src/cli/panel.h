/* cli/panel.h -- the start-up panel of `kiln serve`: a box with the version, the mode, every
 * device (index, name, memory, port), the addresses it listens on, the folders and notes.
 * Unicode box drawing and colour on a terminal, plain ASCII otherwise (a log file, CI).
 * Owns: nothing; panel_render returns a string the caller frees with mem_free.
 * Must not: read the configuration or the devices itself (cmd_serve.c fills struct panel).
 * Threads: any (no shared state). */
#ifndef KILN_CLI_PANEL_H
#define KILN_CLI_PANEL_H

#include <stdint.h>
#include <stdio.h>

#define PANEL_MAX_DEVICES 16
#define PANEL_MAX_LINES 16           /* URLs, notes */
#define PANEL_MAX_WIDTH 140          /* columns inside the box; longer lines are cut with an ellipsis */

enum panel_style {
    PANEL_STYLE_ASCII,               /* +--+ | ; no escape sequences */
    PANEL_STYLE_UNICODE,             /* rounded box drawing, no colour (NO_COLOR) */
    PANEL_STYLE_COLOR,               /* box drawing and ANSI colours */
    PANEL_STYLE_COUNT
};

struct panel_device {
    int index;                       /* the X-TARGET-GPU value */
    const char *name;                /* "cpu:0 AMD EPYC 7B13" (borrowed) */
    const char *memory_label;        /* "RAM" or "VRAM" */
    uint64_t mem_total;              /* bytes */
    uint64_t mem_free;               /* bytes */
    int port;                        /* its own port, 0 = none */
};

/* Everything shown; every string is borrowed for the panel_render call. */
struct panel {
    const char *version;             /* "0.1.0" */
    const char *mode;                /* "CPU mode" */
    const char *mode_detail;         /* "3 devices, one queue and one worker each" */
    const char *mode_reason;         /* "--cpu", "this build has no GPU backend", ... */
    struct panel_device devices[PANEL_MAX_DEVICES];
    int n_devices;
    const char *urls[PANEL_MAX_LINES]; /* "http://127.0.0.1:8188" */
    int n_urls;
    const char *routing;             /* one line on how prompts pick a device, or NULL */
    const char *precision;           /* one line on weight dtypes, or NULL */
    const char *models_dir, *input_dir, *output_dir, *temp_dir; /* as shown (absolute when known) */
    const char *tokenizer_dir;       /* or NULL: "next to the checkpoint" */
    const char *notes[PANEL_MAX_LINES];
    int n_notes;
};

/* The style for a stream: ASCII unless fd is a terminal (or CLICOLOR_FORCE is set and not
 * "0"); on a terminal, colour unless NO_COLOR is set (https://no-color.org) or TERM is "dumb". */
enum panel_style panel_style_for(int fd);

/* The panel as text (lines ending in '\n'). mem_alloc'd; the caller frees it with mem_free. */
char *panel_render(const struct panel *p, enum panel_style style);

/* Display columns of a UTF-8 string (code points; every character kiln prints is one column). */
int panel_text_width(const char *s);

#endif
