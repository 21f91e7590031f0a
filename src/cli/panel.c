/* cli/panel.c -- renders `kiln serve`'s start-up panel (see panel.h).
 * Owns: the layout (rows of label + text, padded to the widest), box characters and colours.
 * Threads: any. Returns mem_alloc'd text. */
#include "cli/panel.h"

#include "base/base.h"
#include "base/mem.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ===== Style ===== */

enum panel_style panel_style_for(int fd) {
    const char *force = getenv("CLICOLOR_FORCE");
    bool forced = force && *force && strcmp(force, "0") != 0;
    if (!forced && !isatty(fd)) return PANEL_STYLE_ASCII;
    const char *no = getenv("NO_COLOR"), *term = getenv("TERM");
    if ((no && *no) || (term && !strcmp(term, "dumb"))) return PANEL_STYLE_UNICODE;
    return PANEL_STYLE_COLOR;
}

/* Box pieces per style: top-left, top-right, bottom-left, bottom-right, horizontal, vertical, ellipsis. */
static const char *const BOX[PANEL_STYLE_COUNT][7] = {
    [PANEL_STYLE_ASCII] = {"+", "+", "+", "+", "-", "|", "..."},
    [PANEL_STYLE_UNICODE] = {"\u256d", "\u256e", "\u2570", "\u256f", "\u2500", "\u2502", "\u2026"},
    [PANEL_STYLE_COLOR] = {"\u256d", "\u256e", "\u2570", "\u256f", "\u2500", "\u2502", "\u2026"},
};

/* What a row's text is, for its colour. */
enum row_role {
    ROW_PLAIN,
    ROW_HEADING,                     /* "Devices", "Folders": bold */
    ROW_MODE,                        /* the mode line: bold green */
    ROW_DIM,                         /* the reason, "next to the checkpoint" */
    ROW_URL,                         /* addresses and ports: green */
    ROW_NOTE,                        /* notes: yellow */
};

static const char *const COLOR[] = {
    [ROW_PLAIN] = "", [ROW_HEADING] = "\033[1m", [ROW_MODE] = "\033[1;32m",
    [ROW_DIM] = "\033[2m", [ROW_URL] = "\033[32m", [ROW_NOTE] = "\033[33m",
};
#define COLOR_BORDER "\033[36m"
#define COLOR_TITLE "\033[1;36m"
#define COLOR_RESET "\033[0m"

int panel_text_width(const char *s) {
    int w = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80) w++;
    return w;
}

/* ===== Rows ===== */

#define PANEL_MAX_ROWS 96

struct row {
    enum row_role role;
    char text[512];
};

struct rows {
    struct row r[PANEL_MAX_ROWS];
    int n;
};

static void add(struct rows *rs, enum row_role role, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void add(struct rows *rs, enum row_role role, const char *fmt, ...) {
    if (rs->n == PANEL_MAX_ROWS) return;
    struct row *r = &rs->r[rs->n++];
    r->role = role;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->text, sizeof r->text, fmt, ap);
    va_end(ap);
}

/* "31.4 GiB" */
static void fmt_bytes(char *buf, size_t n, uint64_t b) {
    double g = (double)b / (1024.0 * 1024.0 * 1024.0);
    if (g >= 1.0) snprintf(buf, n, "%.1f GiB", g);
    else snprintf(buf, n, "%.0f MiB", (double)b / (1024.0 * 1024.0));
}

static void build_rows(const struct panel *p, struct rows *rs) {
    add(rs, ROW_MODE, "%s%s%s", p->mode ? p->mode : "", p->mode_detail ? ": " : "", p->mode_detail ? p->mode_detail : "");
    if (p->mode_reason && *p->mode_reason) add(rs, ROW_DIM, "(%s)", p->mode_reason);

    add(rs, ROW_PLAIN, "%s", "");
    add(rs, ROW_HEADING, "Devices");
    int wname = 0;
    for (int i = 0; i < p->n_devices; i++) wname = MAX(wname, panel_text_width(p->devices[i].name));
    for (int i = 0; i < p->n_devices; i++) {
        const struct panel_device *d = &p->devices[i];
        char total[32], avail[32], port[32] = "";
        fmt_bytes(total, sizeof total, d->mem_total);
        fmt_bytes(avail, sizeof avail, d->mem_free);
        if (d->port) snprintf(port, sizeof port, "   port %d", d->port);
        int pad = wname - panel_text_width(d->name);
        add(rs, ROW_PLAIN, "  %2d  %s%*s   %s %s (%s free)%s", d->index, d->name, pad, "",
            d->memory_label ? d->memory_label : "RAM", total, avail, port);
    }

    add(rs, ROW_PLAIN, "%s", "");
    for (int i = 0; i < p->n_urls; i++) add(rs, ROW_URL, "%-12s%s", i ? "" : "Listening", p->urls[i]);
    if (p->routing) add(rs, ROW_PLAIN, "%-12s%s", "Routing", p->routing);
    if (p->precision) add(rs, ROW_PLAIN, "%-12s%s", "Precision", p->precision);

    add(rs, ROW_PLAIN, "%s", "");
    add(rs, ROW_HEADING, "Folders");
    add(rs, ROW_PLAIN, "  %-11s%s", "models", p->models_dir ? p->models_dir : "");
    add(rs, ROW_PLAIN, "  %-11s%s", "input", p->input_dir ? p->input_dir : "");
    add(rs, ROW_PLAIN, "  %-11s%s", "output", p->output_dir ? p->output_dir : "");
    add(rs, ROW_PLAIN, "  %-11s%s", "temp", p->temp_dir ? p->temp_dir : "");
    if (p->tokenizer_dir) add(rs, ROW_PLAIN, "  %-11s%s", "tokenizer", p->tokenizer_dir);
    else add(rs, ROW_DIM, "  %-11s%s", "tokenizer", "next to each checkpoint, or models/tokenizers/clip-l");

    if (p->n_notes) {
        add(rs, ROW_PLAIN, "%s", "");
        add(rs, ROW_HEADING, "Notes");
        for (int i = 0; i < p->n_notes; i++) add(rs, ROW_NOTE, "  %s", p->notes[i]);
    }
}

/* ===== Output buffer ===== */

struct buf {
    char *s;
    size_t n, cap;
};

static void put(struct buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        while (b->n + n + 1 > b->cap) b->cap = b->cap ? b->cap * 2 : 4096;
        b->s = mem_realloc(b->s, b->cap);
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

static void repeat(struct buf *b, const char *s, int times) {
    for (int i = 0; i < times; i++) puts_(b, s);
}

/* Appends the first `cols` columns of s; returns the columns written. */
static int put_cols(struct buf *b, const char *s, int cols) {
    int w = 0;
    const char *p = s;
    while (*p && w < cols) {
        const char *q = p + 1;
        while ((*q & 0xC0) == 0x80) q++;
        p = q;
        w++;
    }
    put(b, s, (size_t)(p - s));
    return w;
}

/* ===== Rendering ===== */

char *panel_render(const struct panel *p, enum panel_style style) {
    struct rows *rs = mem_calloc(1, sizeof *rs);
    build_rows(p, rs);
    const char *const *box = BOX[style];
    bool color = style == PANEL_STYLE_COLOR;

    char title[64];
    snprintf(title, sizeof title, " kiln %s ", p->version ? p->version : "");
    int width = panel_text_width(title) + 8; /* columns between the two borders */
    for (int i = 0; i < rs->n; i++) width = MAX(width, panel_text_width(rs->r[i].text) + 2);
    width = MAX(width, 60);
    width = MIN(width, PANEL_MAX_WIDTH);

    struct buf b = {0};
    /* top border, title centred */
    int tw = panel_text_width(title), left = (width - tw) / 2;
    if (color) puts_(&b, COLOR_BORDER);
    puts_(&b, box[0]);
    repeat(&b, box[4], left);
    if (color) puts_(&b, COLOR_RESET COLOR_TITLE);
    puts_(&b, title);
    if (color) puts_(&b, COLOR_RESET COLOR_BORDER);
    repeat(&b, box[4], width - left - tw);
    puts_(&b, box[1]);
    if (color) puts_(&b, COLOR_RESET);
    puts_(&b, "\n");

    /* rows: "| text<pad> |", cut with an ellipsis when too wide */
    int inner = width - 2;
    for (int i = 0; i < rs->n; i++) {
        const struct row *r = &rs->r[i];
        if (color) puts_(&b, COLOR_BORDER);
        puts_(&b, box[5]);
        if (color) puts_(&b, COLOR_RESET);
        puts_(&b, " ");
        if (color && *COLOR[r->role]) puts_(&b, COLOR[r->role]);
        int w = panel_text_width(r->text), used;
        if (w <= inner) {
            used = put_cols(&b, r->text, inner);
        } else {
            int ell = panel_text_width(box[6]);
            used = put_cols(&b, r->text, inner - ell);
            puts_(&b, box[6]);
            used += ell;
        }
        if (color && *COLOR[r->role]) puts_(&b, COLOR_RESET);
        repeat(&b, " ", inner - used);
        puts_(&b, " ");
        if (color) puts_(&b, COLOR_BORDER);
        puts_(&b, box[5]);
        if (color) puts_(&b, COLOR_RESET);
        puts_(&b, "\n");
    }

    if (color) puts_(&b, COLOR_BORDER);
    puts_(&b, box[2]);
    repeat(&b, box[4], width);
    puts_(&b, box[3]);
    if (color) puts_(&b, COLOR_RESET);
    puts_(&b, "\n");
    mem_free(rs);
    return b.s;
}
