/* graph/nodes/save.c -- SaveImage and PreviewImage (ComfyUI v0.3.64 nodes.py): IMAGE batches
 * to PNG files with the "prompt" and extra_pnginfo text chunks, reported in the node's UI.
 * Owns: nothing after returning (files are the user's).
 * Must not: write outside the output/temp folders (io_save_path refuses it).
 * Threads: the executor's worker thread (and io/png_async's encoder for PNGs made ahead).
 * Ownership: ui entries are added to ctx->ui (owned by the executor). */
#include "graph/nodes/save.h"

#include "graph/registry.h"

#include "base/clock.h"
#include "base/log.h"
#include "base/mem.h"
#include "base/status.h"
#include "graph/json.h"
#include "io/png.h"
#include "io/png_async.h"
#include "io/savepath.h"

#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* ===== The frontend's %...% replacements ===== */

/* JavaScript's String(number) for the values widgets hold. */
static void js_number(double x, char *buf, size_t n) {
    if (x == floor(x) && fabs(x) < 1e21) snprintf(buf, n, "%.0f", x);
    else graph_py_float_repr(x, buf, n);
}

/* formatDate of ComfyUI_frontend: yyyy, yy, M/MM, d/dd, h/hh, m/mm, s/ss. */
static void format_date(const char *f, size_t flen, char *out, size_t n) {
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    size_t o = 0;
    for (size_t i = 0; i < flen && o + 8 < n;) {
        char c = f[i];
        size_t run = 1;
        if (c == 'y') {
            while (i + run < flen && f[i + run] == 'y' && run < 4) run++;
            if (run == 4) o += (size_t)snprintf(out + o, n - o, "%d", tm.tm_year + 1900);
            else if (run == 2) o += (size_t)snprintf(out + o, n - o, "%02d", (tm.tm_year + 1900) % 100);
            else if (run == 3) o += (size_t)snprintf(out + o, n - o, "yyy");
            else out[o++] = 'y';
            i += run;
            continue;
        }
        int v = -1;
        if (c == 'd') v = tm.tm_mday;
        if (c == 'M') v = tm.tm_mon + 1;
        if (c == 'h') v = tm.tm_hour;
        if (c == 'm') v = tm.tm_min;
        if (c == 's') v = tm.tm_sec;
        if (v < 0) {
            out[o++] = c;
            i++;
            continue;
        }
        if (i + 1 < flen && f[i + 1] == c) run = 2;
        o += (size_t)snprintf(out + o, n - o, run == 2 ? "%02d" : "%d", v);
        i += run;
    }
    out[o] = 0;
}

/* Value of %Node.widget%: the first node whose class_type (the "Node name for S&R" default),
 * else whose _meta.title, is `node`; its literal input `widget`. */
static bool widget_value(const json_t *prompt, const char *node, size_t nlen, const char *widget, size_t wlen,
                         char *out, size_t n) {
    for (int pass = 0; pass < 2; pass++) {
        const char *id;
        json_t *nj;
        json_object_foreach((json_t *)prompt, id, nj) {
            json_t *name = pass == 0 ? json_object_get(nj, "class_type")
                                     : json_object_get(json_object_get(nj, "_meta"), "title");
            if (!json_is_string(name) || strlen(json_string_value(name)) != nlen ||
                memcmp(json_string_value(name), node, nlen) != 0)
                continue;
            char key[256];
            snprintf(key, sizeof key, "%.*s", (int)wlen, widget);
            json_t *v = json_object_get(json_object_get(nj, "inputs"), key);
            if (!v || json_is_array(v)) return false;
            if (json_is_string(v)) snprintf(out, n, "%s", json_string_value(v));
            else if (json_is_integer(v)) snprintf(out, n, "%lld", (long long)json_integer_value(v));
            else if (json_is_real(v)) js_number(json_real_value(v), out, n);
            else if (json_is_boolean(v)) snprintf(out, n, "%s", json_is_true(v) ? "true" : "false");
            else return false;
            for (char *c = out; *c; c++)
                if (*c == '/' || *c == '\\') *c = '_';
            return true;
        }
    }
    return false;
}

/* applyTextReplacements of the frontend: %date:FORMAT% and %Node.widget%. Others stay. */
static void expand_frontend(const char *in, const json_t *prompt, char *out, size_t n) {
    size_t o = 0;
    for (const char *p = in; *p && o + 1 < n;) {
        const char *end = p[0] == '%' ? strchr(p + 1, '%') : NULL;
        if (!end || end == p + 1) {
            out[o++] = *p++;
            continue;
        }
        const char *text = p + 1;
        size_t tlen = (size_t)(end - text);
        const char *dot = memchr(text, '.', tlen);
        bool two = dot && !memchr(dot + 1, '.', (size_t)(end - dot - 1));
        char rep[1024];
        bool done = false;
        if (!two && tlen >= 5 && memcmp(text, "date:", 5) == 0) {
            format_date(text + 5, tlen - 5, rep, sizeof rep);
            done = true;
        } else if (two && prompt) {
            done = widget_value(prompt, text, (size_t)(dot - text), dot + 1, (size_t)(end - dot - 1), rep, sizeof rep);
        }
        if (!done) snprintf(rep, sizeof rep, "%.*s", (int)(tlen + 2), p);
        o += (size_t)snprintf(out + o, n - o, "%s", rep);
        if (o >= n) o = n - 1;
        p = end + 1;
    }
    out[o] = 0;
}

/* ===== Saving ===== */

/* The text chunks SaveImage and PreviewImage write: "prompt", then one per extra_pnginfo key
 * (json.dumps of each value); none with --disable-metadata. owned[i] are the dumps (mem_free). */
static int save_text(const struct node_run *ctx, struct png_text text[SAVE_MAX_TEXT], char *owned[SAVE_MAX_TEXT]) {
    int n_text = 0;
    if (ctx->disable_metadata) return 0;
    if (ctx->prompt) {
        owned[n_text] = graph_json_dumps(ctx->prompt, -1);
        text[n_text] = (struct png_text){"prompt", owned[n_text]};
        n_text++;
    }
    const char *key;
    json_t *v;
    if (ctx->extra_pnginfo) json_object_foreach((json_t *)ctx->extra_pnginfo, key, v) {
            if (n_text == SAVE_MAX_TEXT) break;
            owned[n_text] = graph_json_dumps(v, -1);
            text[n_text] = (struct png_text){key, owned[n_text]};
            n_text++;
        }
    return n_text;
}

/* The zlib level of the first SaveImage (4) or PreviewImage (1) in the prompt whose images come
 * from output 0 of ctx's node, or -1 when none does. */
static int consumer_level(const struct node_run *ctx) {
    const char *id;
    json_t *nj;
    if (!ctx->prompt || !ctx->node_id) return -1;
    json_object_foreach((json_t *)ctx->prompt, id, nj) {
        const char *cls = json_string_value(json_object_get(nj, "class_type"));
        int level = !cls ? -1 : strcmp(cls, "SaveImage") == 0 ? 4 : strcmp(cls, "PreviewImage") == 0 ? 1 : -1;
        json_t *link = json_object_get(json_object_get(nj, "inputs"), "images");
        if (level < 0 || !json_is_array(link) || json_array_size(link) != 2) continue;
        const char *from = json_string_value(json_array_get(link, 0));
        json_t *slot = json_array_get(link, 1);
        if (from && strcmp(from, ctx->node_id) == 0 && json_is_integer(slot) && json_integer_value(slot) == 0)
            return level;
    }
    return -1;
}

void save_ahead_begin(const struct node_run *ctx, struct image *img) {
    if (img->png_ahead || img->b < 1 || img->b > INT32_MAX || (img->c != 3 && img->c != 4) || img->h > UINT32_MAX ||
        img->w > UINT32_MAX)
        return;
    int level = consumer_level(ctx);
    if (level < 0) return;
    struct png_text text[SAVE_MAX_TEXT];
    char *owned[SAVE_MAX_TEXT] = {0};
    int n_text = save_text(ctx, text, owned);
    struct err err = {0};
    img->png_ahead = png_async_new((int)img->b, (uint32_t)img->w, (uint32_t)img->h, (int)img->c, text, n_text, level,
                                   0, &err);
    if (!img->png_ahead) log_debug("%s: no PNG encoding ahead: %s", ctx->cls ? ctx->cls->name : "?", err.msg);
    for (int i = 0; i < n_text; i++) mem_free(owned[i]);
}

void save_ahead_submit(struct image *img, int64_t b) {
    if (img->png_ahead) png_async_submit(img->png_ahead, (int)b, img->data + b * img->h * img->w * img->c);
}

/* save_images of SaveImage/PreviewImage. */
static int save_images(struct node_run *ctx, const struct image *im, const char *prefix, const char *dir,
                       const char *type, int level, struct err *err) {
    if (!dir) return err_set(err, STATUS_ERR_INVALID, "no %s folder is configured", type);
    if (im->c != 3 && im->c != 4)
        return err_set(err, STATUS_ERR_INVALID, "cannot save an image with %lld channels", (long long)im->c);
    char expanded[4096];
    expand_frontend(prefix, ctx->prompt, expanded, sizeof expanded);
    struct io_save_path sp;
    int rc = io_save_path(expanded, dir, im->w, im->h, &sp, err);
    if (rc) {
        node_set_exception_type(ctx, "Exception");
        return rc;
    }

    struct png_text text[SAVE_MAX_TEXT];
    char *owned[SAVE_MAX_TEXT] = {0};
    int n_text = save_text(ctx, text, owned);

    /* every image to 8 bits, then all encoded at once (one thread per image: zlib is the slow
       part), unless they were encoded while the VAE made them; then the files claimed and
       written in batch order */
    size_t px = (size_t)(im->h * im->w * im->c);
    int nb = (int)im->b;
    const uint8_t **rows = mem_calloc((size_t)(nb > 0 ? nb : 1), sizeof *rows);
    void **png = mem_calloc((size_t)(nb > 0 ? nb : 1), sizeof *png);
    size_t *png_len = mem_calloc((size_t)(nb > 0 ? nb : 1), sizeof *png_len);
    json_t *results = json_array();
    double t0 = clock_now(), t_conv = 0, t_enc = 0;
    bool ahead = png_async_matches(im->png_ahead, nb, (uint32_t)im->w, (uint32_t)im->h, (int)im->c, text, n_text,
                                   level);
    if (ahead) {
        struct err aerr = {0};
        if (png_async_take(im->png_ahead, png, png_len, &aerr)) { /* encode them here instead */
            log_debug("SaveImage: the PNGs made ahead failed (%s); encoding them again", aerr.msg);
            ahead = false;
        }
    }
    uint8_t *pixels = ahead ? NULL : mem_try_alloc(px * (size_t)(nb > 0 ? nb : 1) + 1);
    if (!ahead && !pixels) rc = err_set(err, STATUS_ERR_NOMEM, "out of memory converting %d images to 8 bits", nb);
    if (!rc && !ahead) png_from_float_threads(im->data, pixels, px * (size_t)nb, png_cpus_usable());
    for (int b = 0; b < nb && !rc && pixels; b++) rows[b] = pixels + (size_t)b * px;
    t_conv = clock_now();
    if (!rc && !ahead)
        rc = png_encode_many(rows, nb, (uint32_t)im->w, (uint32_t)im->h, (int)im->c, text, n_text, level, nb, png,
                             png_len, err);
    t_enc = clock_now();
    for (int64_t b = 0; b < im->b && !rc; b++) {
        /* filename.replace("%batch_num%", str(batch_number)) */
        char name[1200], num[32], fname[1300];
        snprintf(num, sizeof num, "%lld", (long long)b);
        size_t o = 0;
        for (const char *p = sp.filename; *p && o + 1 < sizeof name;) {
            if (strncmp(p, "%batch_num%", 11) == 0) {
                o += (size_t)snprintf(name + o, sizeof name - o, "%s", num);
                p += 11;
            } else {
                name[o++] = *p++;
            }
        }
        name[o < sizeof name ? o : sizeof name - 1] = 0;
        /* other devices may save with the same prefix at the same time: claim the name with an
           exclusive create and move on to the next counter when it is taken */
        char path[4096 + 1400];
        for (int tries = 0;; tries++) {
            snprintf(fname, sizeof fname, "%s_%05d_.png", name, sp.counter);
            snprintf(path, sizeof path, "%s/%s", sp.folder, fname);
            rc = png_save_new(path, png[b], png_len[b], err);
            if (rc != STATUS_ERR_EXISTS) break;
            if (tries == 100000) {
                rc = err_set(err, STATUS_ERR_IO, "no free file name for %s in %s", name, sp.folder);
                break;
            }
            sp.counter++;
        }
        if (rc) break;
        json_t *r = json_object();
        json_object_set_new(r, "filename", json_string(fname));
        json_object_set_new(r, "subfolder", json_string(sp.subfolder));
        json_object_set_new(r, "type", json_string(type));
        json_array_append_new(results, r);
        sp.counter++;
    }
    if (ahead)
        log_debug("SaveImage: %d images encoded while decoded: waited %.2f ms for them, files %.2f ms", nb,
                  1e3 * (t_enc - t0), 1e3 * (clock_now() - t_enc));
    else
        log_debug("SaveImage: %d images: 8 bits in %.2f ms, PNG encoding %.2f ms, files %.2f ms", nb,
                  1e3 * (t_conv - t0), 1e3 * (t_enc - t_conv), 1e3 * (clock_now() - t_enc));
    for (int b = 0; b < nb; b++) mem_free(png[b]);
    mem_free(png);
    mem_free(png_len);
    mem_free(rows);
    mem_free(pixels);
    for (int i = 0; i < n_text; i++) mem_free(owned[i]);
    if (rc) {
        json_decref(results);
        return rc;
    }
    json_object_set_new(ctx->ui, "images", results);
    return 0;
}

static const struct node_hidden SAVE_HIDDEN[] = {
    {.name = "prompt", .type = "PROMPT"}, {.name = "extra_pnginfo", .type = "EXTRA_PNGINFO"}, NODE_HIDDEN_END};

/* ===== SaveImage ===== */

static int run_save_image(struct node_run *ctx, const struct value *in, struct value *out, struct err *err) {
    return save_images(ctx, value_image(&in[0]), in[1].s, ctx->paths ? ctx->paths->output : NULL, "output", 4, err);
}

static const struct node_input SAVE_IN[] = {
    {.name = "images", .kind = NODE_INPUT_OBJECT, .type = "IMAGE", .tooltip = "The images to save."},
    {.name = "filename_prefix",
     .kind = NODE_INPUT_STRING,
     .flags = NODE_IN_DEFAULT,
     .string_default = "ComfyUI",
     .tooltip = "The prefix for the file to save. This may include formatting information such as "
                "%date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes."},
    NODE_INPUTS_END,
};

const struct node_class NODE_SaveImage = {
    .name = "SaveImage",
    .display_name = "Save Image",
    .category = "image",
    .description = "Saves the input images to your ComfyUI output directory.",
    .output_node = true,
    .required = SAVE_IN,
    .hidden = SAVE_HIDDEN,
    .run = run_save_image,
};

/* ===== PreviewImage ===== */

/* "_temp_" + 5 letters drawn from ComfyUI's alphabet (sic: 'p' twice, no 'w'). */
static void temp_suffix(char out[12]) {
    static const char alphabet[] = "abcdefghijklmnopqrstupvxyz";
    static atomic_ulong counter;
    uint64_t x = (uint64_t)(clock_now() * 1e9) ^ ((uint64_t)atomic_fetch_add(&counter, 1) << 32) ^
                 (uint64_t)clock_wall_ms();
    memcpy(out, "_temp_", 6);
    for (int i = 0; i < 5; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17; /* xorshift64 */
        out[6 + i] = alphabet[x % (sizeof alphabet - 1)];
    }
    out[11] = 0;
}

static int run_preview_image(struct node_run *ctx, const struct value *in, struct value *out, struct err *err) {
    char prefix[32], suffix[12];
    temp_suffix(suffix);
    snprintf(prefix, sizeof prefix, "ComfyUI%s", suffix);
    return save_images(ctx, value_image(&in[0]), prefix, ctx->paths ? ctx->paths->temp : NULL, "temp", 1, err);
}

const struct node_class NODE_PreviewImage = {
    .name = "PreviewImage",
    .display_name = "Preview Image",
    .category = "image",
    .description = "Saves the input images to your ComfyUI output directory.", /* inherited from SaveImage */
    .output_node = true,
    .required = (const struct node_input[]){{.name = "images", .kind = NODE_INPUT_OBJECT, .type = "IMAGE"},
                                            NODE_INPUTS_END},
    .hidden = SAVE_HIDDEN,
    .run = run_preview_image,
};
