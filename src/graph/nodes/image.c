/* graph/nodes/image.c -- model-free IMAGE nodes: LoadImage and ImageScale (ComfyUI v0.3.64).
 * Owns: the IMAGE/MASK objects these nodes create.
 * Must not: write files (save.c does).
 * Threads: the executor's worker thread; LoadImage's option lister and validator also run on
 * the validating thread (they only read the input folder).
 * Ownership: outputs hold one reference each. */
#include "graph/registry.h"

#include "base/mem.h"
#include "base/status.h"
#include "io/png.h"
#include "io/resize.h"
#include "io/savepath.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#define MAX_RESOLUTION 16384

/* ===== Input folder ===== */

/* Extensions that Python mimetypes.guess_type(strict=False) maps to an image type (plus webp). */
static const char *const IMAGE_EXTS[] = {"png", "jpg", "jpeg", "jpe", "jfif", "gif", "bmp", "webp", "tif", "tiff",
                                         "ico", "svg", "pbm", "pgm", "ppm", "pnm", "ras", "rgb", "xbm", "xpm",
                                         "ief", "avif", "heic", "heif", "pct", "pic", "pict", NULL};

static bool is_image_name(const char *name) {
    const char *dot = strrchr(name, '.');
    if (!dot) return false;
    for (int i = 0; IMAGE_EXTS[i]; i++)
        if (strcasecmp(dot + 1, IMAGE_EXTS[i]) == 0) return true;
    return false;
}

/* The top-level image files of the input folder, sorted (LoadImage's combo). */
static int list_input_images(const struct graph_paths *paths, struct graph_strlist *out, struct err *err) {
    if (!paths || !paths->input) return 0;
    DIR *d = opendir(paths->input);
    if (!d) return 0;
    struct graph_strlist found = {0};
    struct dirent *e;
    while ((e = readdir(d))) {
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", paths->input, e->d_name);
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode) && is_image_name(e->d_name))
            graph_strlist_push(&found, e->d_name);
    }
    closedir(d);
    graph_strlist_sort(&found);
    for (int i = 0; i < found.n; i++) graph_strlist_push(out, found.items[i]);
    graph_strlist_deinit(&found);
    return 0;
}

/* folder_paths.get_annotated_filepath: "x.png [output]" picks the output folder, "[temp]"
 * the temp folder, anything else the input folder. False when the path leaves that folder. */
static bool annotated_path(const struct graph_paths *paths, const char *name, char *out, size_t n) {
    const char *base = paths ? paths->input : NULL;
    size_t len = strlen(name), cut = 0;
    if (len >= 8 && strcmp(name + len - 8, "[output]") == 0) base = paths ? paths->output : NULL, cut = 9;
    else if (len >= 7 && strcmp(name + len - 7, "[input]") == 0) cut = 8;
    else if (len >= 6 && strcmp(name + len - 6, "[temp]") == 0) base = paths ? paths->temp : NULL, cut = 7;
    if (!base) return false;
    size_t keep = cut <= len ? len - cut : 0;
    snprintf(out, n, "%s/%.*s", base, (int)keep, name);
    return io_path_within(base, out);
}

static bool validate_image(const struct graph_paths *paths, const struct value *v, char *why, size_t n) {
    char path[4096];
    struct stat st;
    const char *name = v->kind == VALUE_STRING ? v->s : "None";
    if (v->kind == VALUE_STRING && annotated_path(paths, name, path, sizeof path) && stat(path, &st) == 0)
        return true;
    snprintf(why, n, "Invalid image file: %s", name);
    return false;
}

/* ===== LoadImage ===== */

static int run_load_image(struct node_run *ctx, const struct value *in, struct value *out, struct err *err) {
    char path[4096];
    if (!annotated_path(ctx->paths, in[0].s, path, sizeof path)) {
        node_set_exception_type(ctx, "ValueError");
        return err_set(err, STATUS_ERR_INVALID, "Invalid file path: '%s'", in[0].s);
    }
    struct png_image png;
    int rc = png_read(path, &png, err);
    if (rc == STATUS_ERR_FORMAT) {
        char why[sizeof err->msg]; /* keep the decoder's reason: a damaged PNG is not "not a PNG" */
        snprintf(why, sizeof why, "%s", err->msg);
        err_clear(err);
        node_set_exception_type(ctx, "PIL.UnidentifiedImageError");
        return err_set(err, STATUS_ERR_UNSUPPORTED, "cannot load image '%s': %s (only PNG files are supported)", in[0].s,
                       why);
    }
    if (rc) return rc;
    int64_t h = png.h, w = png.w;
    struct image *img = image_new(1, h, w, 3);
    struct mask *m = png.has_alpha ? mask_new(1, h, w) : mask_new(1, 64, 64);
    if (!img || !m) {
        if (img) gobj_unref(&img->obj);
        if (m) gobj_unref(&m->obj);
        png_image_deinit(&png);
        return err_set(err, STATUS_ERR_NOMEM, "out of memory loading a %lldx%lld image", (long long)w, (long long)h);
    }
    /* np.array(rgb).astype(float32) / 255.0; mask = 1 - alpha / 255.0 (all float32) */
    for (int64_t i = 0; i < h * w; i++) {
        for (int k = 0; k < 3; k++) img->data[i * 3 + k] = (float)png.rgba[i * 4 + k] / 255.0f;
        if (png.has_alpha) m->data[i] = 1.0f - (float)png.rgba[i * 4 + 3] / 255.0f;
    }
    png_image_deinit(&png);
    value_set_object(&out[0], &img->obj);
    value_set_object(&out[1], &m->obj);
    return 0;
}

/* IS_CHANGED. ComfyUI hashes the file (sha256); a 64-bit FNV-1a of the bytes plus the size
 * serves the same purpose here: a file replaced under the same name re-runs the node, and an
 * identical re-upload still hits the cache. */
static int load_image_changed(const struct graph_paths *paths, const struct value *in, char *out, size_t n) {
    char path[4096];
    if (in[0].kind != VALUE_STRING || !annotated_path(paths, in[0].s, path, sizeof path)) return STATUS_ERR_INVALID;
    FILE *f = fopen(path, "rb");
    if (!f) return STATUS_ERR_IO;
    uint64_t h = 0xcbf29ce484222325ull, size = 0;
    unsigned char buf[16384];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0) {
        for (size_t i = 0; i < got; i++) h = (h ^ buf[i]) * 0x100000001b3ull;
        size += got;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) return STATUS_ERR_IO;
    snprintf(out, n, "%llu:%016llx", (unsigned long long)size, (unsigned long long)h);
    return 0;
}

const struct node_class NODE_LoadImage = {
    .name = "LoadImage",
    .display_name = "Load Image",
    .category = "image",
    .required = (const struct node_input[]){{.name = "image",
                                             .kind = NODE_INPUT_COMBO,
                                             .flags = NODE_IN_IMAGE_UPLOAD,
                                             .list_options = list_input_images,
                                             .validate = validate_image},
                                            NODE_INPUTS_END},
    .outputs = (const struct node_output[]){{.type = "IMAGE"}, {.type = "MASK"}, NODE_OUTPUTS_END},
    .run = run_load_image,
    .is_changed = load_image_changed,
};

/* ===== ImageScale ===== */

static const char *const UPSCALE_IMAGE[] = {"nearest-exact", "bilinear", "area", "bicubic", "lanczos", NULL};
static const char *const CROP[] = {"disabled", "center", NULL};

static int run_image_scale(struct node_run *ctx, const struct value *in, struct value *out, struct err *err) {
    const struct image *im = value_image(&in[0]);
    enum io_upscale m = io_upscale_parse(in[1].s);
    int64_t width = in[2].i, height = in[3].i;
    bool center = strcmp(in[4].s, "center") == 0;
    if (width == 0 && height == 0) {
        value_copy(&out[0], &in[0]);
        return 0;
    }
    if (width == 0) {
        width = (int64_t)nearbyint((double)im->w * (double)height / (double)im->h);
        width = width > 1 ? width : 1;
    } else if (height == 0) {
        height = (int64_t)nearbyint((double)im->h * (double)width / (double)im->w);
        height = height > 1 ? height : 1;
    }
    int64_t b = im->b, c = im->c, h = im->h, w = im->w;
    float *nchw = mem_try_alloc((size_t)(b * c * h * w) * sizeof(float));
    float *res = mem_try_alloc((size_t)(b * c * height * width) * sizeof(float));
    struct image *o = image_new(b, height, width, c);
    int rc = 0;
    if (!nchw || !res || !o) {
        rc = err_set(err, STATUS_ERR_NOMEM, "out of memory scaling an image to %lldx%lld", (long long)width,
                     (long long)height);
        goto done;
    }
    /* movedim(-1, 1): [B, H, W, C] -> [B, C, H, W] */
    for (int64_t n = 0; n < b; n++)
        for (int64_t y = 0; y < h; y++)
            for (int64_t x = 0; x < w; x++)
                for (int64_t k = 0; k < c; k++)
                    nchw[((n * c + k) * h + y) * w + x] = im->data[((n * h + y) * w + x) * c + k];
    rc = io_common_upscale(nchw, b, c, h, w, res, width, height, m, center, err);
    if (rc) goto done;
    for (int64_t n = 0; n < b; n++)
        for (int64_t y = 0; y < height; y++)
            for (int64_t x = 0; x < width; x++)
                for (int64_t k = 0; k < c; k++)
                    o->data[((n * height + y) * width + x) * c + k] = res[((n * c + k) * height + y) * width + x];
    value_set_object(&out[0], &o->obj);
    o = NULL;
done:
    mem_free(nchw);
    mem_free(res);
    if (o) gobj_unref(&o->obj);
    return rc;
}

static const struct node_input IMAGE_SCALE_IN[] = {
    {.name = "image", .kind = NODE_INPUT_OBJECT, .type = "IMAGE"},
    {.name = "upscale_method", .kind = NODE_INPUT_COMBO, .options = UPSCALE_IMAGE},
    {.name = "width", .kind = NODE_INPUT_INT, .flags = NODE_IN_DEFAULT | NODE_IN_MIN | NODE_IN_MAX | NODE_IN_STEP,
     .int_default = 512, .int_min = 0, .int_max = MAX_RESOLUTION, .int_step = 1},
    {.name = "height", .kind = NODE_INPUT_INT, .flags = NODE_IN_DEFAULT | NODE_IN_MIN | NODE_IN_MAX | NODE_IN_STEP,
     .int_default = 512, .int_min = 0, .int_max = MAX_RESOLUTION, .int_step = 1},
    {.name = "crop", .kind = NODE_INPUT_COMBO, .options = CROP},
    NODE_INPUTS_END,
};

const struct node_class NODE_ImageScale = {
    .name = "ImageScale",
    .display_name = "Upscale Image",
    .category = "image/upscaling",
    .required = IMAGE_SCALE_IN,
    .outputs = (const struct node_output[]){{.type = "IMAGE"}, NODE_OUTPUTS_END},
    .run = run_image_scale,
};
