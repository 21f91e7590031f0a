/* api/routes_files.c -- files in and out: GET /view (COMFY_API.md §3.1), POST /upload/image and
 * POST /upload/mask (§3.2), with ComfyUI's annotations ("x.png [output]"), collision naming
 * ("name (1).ext") and the refusal of any path that leaves its folder.
 * Owns: the upload buffers of one request; files it writes belong to the user's folders.
 * Must not: serve or write anything outside the input/output/temp folders (symlinks included).
 * Threads: CivetWeb handler threads; naming + writing an upload holds srv->files_mu so two
 * uploads of one name never pick the same free name. */
#include "api/internal.h"

#include "base/fs.h"
#include "base/log.h"
#include "base/mem.h"
#include "graph/json.h"
#include "io/png.h"
#include "io/savepath.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define PATH_BUF 4096

/* ===== Folders and names ===== */

/* The folder of a type ("input", "output", "temp"), or NULL for any other type. */
static const char *dir_of_type(const struct api_server *srv, const char *type) {
    if (strcmp(type, "output") == 0) return srv->opts.paths.output;
    if (strcmp(type, "input") == 0) return srv->opts.paths.input;
    if (strcmp(type, "temp") == 0) return srv->opts.paths.temp;
    return NULL;
}

/* ComfyUI's annotated_filepath: "x.png [output]" -> "x.png" and the output folder. Strips the
 * annotation (and one space before it) in place; returns the type it names, or NULL. */
static const char *strip_annotation(char *name) {
    static const char *const types[] = {"output", "input", "temp"};
    size_t n = strlen(name);
    for (int i = 0; i < 3; i++) {
        char tag[16];
        int tl = snprintf(tag, sizeof tag, "[%s]", types[i]);
        if (n >= (size_t)tl && strcmp(name + n - tl, tag) == 0) {
            size_t cut = n - (size_t)tl;
            if (cut > 0 && name[cut - 1] == ' ') cut--;
            name[cut] = 0;
            return types[i];
        }
    }
    return NULL;
}

static bool is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* a + "/" + b into out[PATH_BUF]; false when it does not fit (the caller refuses the path
 * rather than use a truncated one). */
static bool path_join(char *out, const char *a, const char *b) {
    int n = snprintf(out, PATH_BUF, "%s/%s", a, b);
    return n >= 0 && n < PATH_BUF;
}

/* Content-Type from the extension (ComfyUI guesses with mimetypes; html/js/css are never
 * served as such). */
static const char *mime_of(const char *name) {
    static const char *const map[][2] = {
        {".png", "image/png"},   {".jpg", "image/jpeg"},  {".jpeg", "image/jpeg"}, {".webp", "image/webp"},
        {".gif", "image/gif"},   {".bmp", "image/bmp"},   {".tif", "image/tiff"},  {".tiff", "image/tiff"},
        {".svg", "image/svg+xml"}, {".json", "application/json"}, {".txt", "text/plain"},
        {".mp4", "video/mp4"},   {".webm", "video/webm"}, {".mov", "video/quicktime"}, {".wav", "audio/x-wav"},
        {".mp3", "audio/mpeg"},  {".flac", "audio/flac"}, {".ogg", "audio/ogg"},
    };
    const char *dot = strrchr(name, '.');
    if (!dot) return "application/octet-stream";
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strcasecmp(dot, map[i][0]) == 0) return map[i][1];
    return "application/octet-stream";
}

int api__read_file(const char *path, char **out, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    struct stat st;
    if (fstat(fileno(f), &st) != 0) {
        fclose(f);
        return -1;
    }
    char *buf = mem_try_alloc((size_t)st.st_size + 1);
    if (!buf) {
        fclose(f);
        errno = ENOMEM;
        return -1;
    }
    size_t n = fread(buf, 1, (size_t)st.st_size, f);
    fclose(f);
    *out = buf;
    *len = n;
    return 0;
}

/* ===== GET /view ===== */

/* Resolves filename/type/subfolder as ComfyUI's /view does into path[PATH_BUF]; on failure
 * replies 400/403/404 and returns false. `name_out` gets the served file name. */
static bool view_resolve(struct http_req *r, char *filename, const char *type, bool has_sub, const char *sub,
                         char *path, char *name_out, size_t name_n) {
    const char *ann = strip_annotation(filename);
    if (!filename[0] || filename[0] == '/' || strstr(filename, "..")) {
        http_reply_error(r, 400, "invalid_filename", "Invalid filename '%s'", filename);
        return false;
    }
    const char *dir = dir_of_type(r->srv, ann ? ann : type);
    if (!dir) {
        http_reply_error(r, 400, "invalid_type", "Unknown type '%s' (output, input or temp)", ann ? ann : type);
        return false;
    }
    char folder[PATH_BUF];
    snprintf(folder, sizeof folder, "%s", dir);
    if (has_sub && sub[0]) {
        char joined[PATH_BUF];
        bool fits = sub[0] == '/' ? (size_t)snprintf(joined, sizeof joined, "%s", sub) < sizeof joined
                                  : path_join(joined, dir, sub);
        if (fits) io_normpath(joined, folder, sizeof folder);
        if (!fits || !io_path_within(dir, folder)) {
            http_reply_error(r, 403, "forbidden", "Subfolder '%s' is outside the %s folder", sub, ann ? ann : type);
            return false;
        }
    }
    const char *base = strrchr(filename, '/');
    base = base ? base + 1 : filename;
    snprintf(name_out, name_n, "%s", base);
    if (!base[0] || !path_join(path, folder, base) || !is_file(path) || !io_path_within(dir, path)) {
        http_reply_error(r, 404, "not_found", "No file '%s' in subfolder '%s' of the %s folder", base,
                         has_sub ? sub : "", ann ? ann : type);
        return false;
    }
    return true;
}

/* channel=rgb / channel=a: a PNG made from the file's pixels (ComfyUI builds them with PIL). */
static void view_channel(struct http_req *r, const char *path, const char *name, bool alpha_only) {
    struct png_image img = {0};
    struct err err = {0};
    if (png_read(path, &img, &err)) {
        http_reply_error(r, 400, "unsupported_image", "channel needs a PNG file: %s", err.msg);
        return;
    }
    size_t n = (size_t)img.w * img.h;
    int ch = alpha_only ? 4 : 3;
    uint8_t *px = mem_try_alloc(n * (size_t)ch);
    if (!px) {
        png_image_deinit(&img);
        http_reply_error(r, 500, "out_of_memory", "Out of memory converting %s", name);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const uint8_t *s = img.rgba + 4 * i;
        if (alpha_only) {
            px[4 * i] = px[4 * i + 1] = px[4 * i + 2] = 0;
            px[4 * i + 3] = img.has_alpha ? s[3] : 255;
        } else {
            memcpy(px + 3 * i, s, 3);
        }
    }
    void *png = NULL;
    size_t len = 0;
    int rc = png_encode(px, img.w, img.h, ch, NULL, 0, 6, &png, &len, &err);
    mem_free(px);
    png_image_deinit(&img);
    if (rc) {
        http_reply_error(r, 500, "encode_failed", "Could not encode %s: %s", name, err.msg);
        return;
    }
    char extra[1200];
    snprintf(extra, sizeof extra, "Content-Disposition: filename=\"%s\"\r\n", name);
    http_reply(r, 200, "image/png", png, len, extra);
    mem_free(png);
}

void api__get_view(struct http_req *r, const char *arg) {
    char filename[1024], type[32] = "output", sub[1024] = "", channel[16] = "rgba";
    int q = http_query(r, "filename", filename, sizeof filename);
    if (q <= 0) {
        if (q < 0)
            http_reply_error(r, 400, "invalid_filename", "filename is too long");
        else
            http_reply_error(r, 404, "not_found", "GET /view needs a filename");
        return;
    }
    if (http_query(r, "type", type, sizeof type) < 0 || http_query(r, "channel", channel, sizeof channel) < 0) {
        http_reply_error(r, 400, "invalid_query", "type or channel is too long");
        return;
    }
    int has_sub = http_query(r, "subfolder", sub, sizeof sub);
    if (has_sub < 0) {
        http_reply_error(r, 400, "invalid_subfolder", "subfolder is too long");
        return;
    }
    char path[PATH_BUF], name[1024];
    if (!view_resolve(r, filename, type, has_sub > 0, sub, path, name, sizeof name)) return;
    /* "preview" (webp/jpeg re-encoding) is not supported: the file is served as it is */
    if (strcmp(channel, "rgb") == 0 || strcmp(channel, "a") == 0) {
        view_channel(r, path, name, channel[0] == 'a');
        return;
    }
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f || fstat(fileno(f), &st) != 0) {
        if (f) fclose(f);
        http_reply_error(r, 404, "not_found", "Cannot open '%s': %s", name, strerror(errno));
        return;
    }
    char extra[1200];
    snprintf(extra, sizeof extra, "Content-Disposition: filename=\"%s\"\r\n", name);
    http_reply_file(r, mime_of(name), f, (size_t)st.st_size, extra);
    fclose(f);
}

/* ===== Uploads: the multipart form ===== */

struct upload {
    size_t limit;                    /* bytes over all fields */
    size_t total;
    bool too_large;
    bool image_seen;                 /* an "image" field */
    bool image_is_file;              /* ... that carried a filename */
    char filename[1024];             /* its client filename */
    char *data;                      /* its bytes (mem_alloc'd) */
    size_t len, cap;
    char type[32];
    char subfolder[1024];
    bool has_subfolder;
    char overwrite[16];
    char *original_ref;              /* mask: JSON text (mem_alloc'd) */
    size_t ref_len, ref_cap;
    bool field_too_long;             /* a short field did not fit its buffer */
    char cur[32];                    /* the field being received ("" for one we skip) */
};

static void append(char **buf, size_t *len, size_t *cap, const char *v, size_t n) {
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 4096;
        while (c < *len + n + 1) c *= 2;
        *buf = mem_realloc(*buf, c);
        *cap = c;
    }
    memcpy(*buf + *len, v, n);
    *len += n;
    (*buf)[*len] = 0;
}

static void append_small(struct upload *u, char *dst, size_t n, const char *v, size_t vl) {
    size_t l = strlen(dst);
    if (l + vl >= n) {
        u->field_too_long = true;
        return;
    }
    memcpy(dst + l, v, vl);
    dst[l + vl] = 0;
}

static int form_found(const char *key, const char *filename, char *path, size_t pathlen, void *user) {
    struct upload *u = user;
    u->cur[0] = 0;
    if (strlen(key) < sizeof u->cur) snprintf(u->cur, sizeof u->cur, "%s", key);
    if (strcmp(key, "image") == 0) {
        u->image_seen = true;
        if (filename) {
            u->image_is_file = true;
            snprintf(u->filename, sizeof u->filename, "%s", filename);
        }
        u->len = 0;
        return MG_FORM_FIELD_STORAGE_GET;
    }
    if (strcmp(key, "subfolder") == 0) u->has_subfolder = true;
    if (!strcmp(key, "type") || !strcmp(key, "subfolder") || !strcmp(key, "overwrite") || !strcmp(key, "original_ref"))
        return MG_FORM_FIELD_STORAGE_GET;
    return MG_FORM_FIELD_STORAGE_SKIP;
}

/* CivetWeb calls this once per chunk of a field; the chunks after the first of a multipart
 * field come with an empty key, so the field is the one form_found announced last. */
static int form_get(const char *key, const char *value, size_t n, void *user) {
    struct upload *u = user;
    u->total += n;
    if (u->total > u->limit || u->too_large) { /* (some CivetWeb versions ignore the abort) */
        u->too_large = true;
        return MG_FORM_FIELD_HANDLE_ABORT;
    }
    if (!key || !key[0]) key = u->cur;
    if (strcmp(key, "image") == 0) {
        append(&u->data, &u->len, &u->cap, value, n);
    } else if (strcmp(key, "original_ref") == 0) {
        append(&u->original_ref, &u->ref_len, &u->ref_cap, value, n);
    } else if (strcmp(key, "type") == 0) {
        append_small(u, u->type, sizeof u->type, value, n);
    } else if (strcmp(key, "subfolder") == 0) {
        append_small(u, u->subfolder, sizeof u->subfolder, value, n);
    } else if (strcmp(key, "overwrite") == 0) {
        append_small(u, u->overwrite, sizeof u->overwrite, value, n);
    }
    return MG_FORM_FIELD_HANDLE_GET;
}

static int form_store(const char *path, long long size, void *user) { return MG_FORM_FIELD_HANDLE_NEXT; }

/* Whether the bytes start like an image file (PNG, JPEG, GIF, WebP, BMP, TIFF). */
static bool looks_like_image(const unsigned char *d, size_t n) {
    if (n >= 8 && memcmp(d, "\x89PNG\r\n\x1a\n", 8) == 0) return true;
    if (n >= 3 && d[0] == 0xff && d[1] == 0xd8 && d[2] == 0xff) return true;
    if (n >= 6 && (memcmp(d, "GIF87a", 6) == 0 || memcmp(d, "GIF89a", 6) == 0)) return true;
    if (n >= 12 && memcmp(d, "RIFF", 4) == 0 && memcmp(d + 8, "WEBP", 4) == 0) return true;
    if (n >= 14 && d[0] == 'B' && d[1] == 'M') return true;
    if (n >= 4 && (memcmp(d, "II*\0", 4) == 0 || memcmp(d, "MM\0*", 4) == 0)) return true;
    return false;
}

/* Whether the file at path holds exactly these bytes (ComfyUI compares hashes). */
static bool same_content(const char *path, const char *data, size_t len) {
    struct stat st;
    if (stat(path, &st) != 0 || (size_t)st.st_size != len) return false;
    char *buf;
    size_t n;
    if (api__read_file(path, &buf, &n)) return false;
    bool same = n == len && memcmp(buf, data, len) == 0;
    mem_free(buf);
    return same;
}

/* Writes bytes to path. Returns 0, or -1 with errno. */
static int write_file(const char *path, const char *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t n = fwrite(data, 1, len, f);
    int rc = fclose(f);
    return n == len && rc == 0 ? 0 : -1;
}

/* ===== Uploads: the mask merge ===== */

/* Resolves the mask's original_ref ({"filename", "subfolder", "type"}) to an existing file, as
 * ComfyUI's mask upload does; replies 400/403/404 and returns false on failure. */
static bool mask_original(struct http_req *r, const struct upload *u, char *path) {
    json_t *ref = NULL;
    if (!u->original_ref || graph_json_loads(u->original_ref, u->ref_len, &ref, NULL) || !json_is_object(ref)) {
        json_decref(ref);
        http_reply_error(r, 400, "invalid_original_ref", "original_ref must be JSON {\"filename\", \"subfolder\", \"type\"}");
        return false;
    }
    const char *fn = json_string_value(json_object_get(ref, "filename"));
    const char *type = json_string_value(json_object_get(ref, "type"));
    const char *sub = json_string_value(json_object_get(ref, "subfolder"));
    char filename[1024], name[1024];
    snprintf(filename, sizeof filename, "%s", fn ? fn : "");
    bool ok = view_resolve(r, filename, type ? type : "output", sub && sub[0], sub ? sub : "", path, name, sizeof name);
    json_decref(ref);
    return ok;
}

/* Writes the original image at orig_path with its alpha replaced by the mask's, keeping its
 * text chunks, as a PNG (level 4) at dst. Replies and returns false on failure. */
static bool mask_merge(struct http_req *r, const char *orig_path, const struct upload *u, const char *dst) {
    struct png_image orig = {0}, mask = {0};
    struct err err = {0};
    bool ok = false;
    if (png_read(orig_path, &orig, &err)) {
        http_reply_error(r, 400, "invalid_original", "The original image cannot be read: %s", err.msg);
        goto out;
    }
    if (png_decode(u->data, u->len, &mask, &err)) {
        http_reply_error(r, 400, "invalid_image", "The mask is not a PNG image: %s", err.msg);
        goto out;
    }
    if (mask.w != orig.w || mask.h != orig.h) {
        http_reply_error(r, 400, "invalid_image", "The mask is %ux%u but the original image is %ux%u", mask.w, mask.h,
                         orig.w, orig.h);
        goto out;
    }
    size_t n = (size_t)orig.w * orig.h;
    for (size_t i = 0; i < n; i++) orig.rgba[4 * i + 3] = mask.has_alpha ? mask.rgba[4 * i + 3] : 255;
    struct png_text *text = mem_calloc((size_t)orig.n_text + 1, sizeof *text);
    for (int i = 0; i < orig.n_text; i++) text[i] = (struct png_text){orig.text_keys[i], orig.text_values[i]};
    int rc = png_write(dst, orig.rgba, orig.w, orig.h, 4, text, orig.n_text, 4, &err);
    mem_free(text);
    if (rc) {
        http_reply_error(r, 500, "write_failed", "Could not write the masked image: %s", err.msg);
        goto out;
    }
    ok = true;
out:
    png_image_deinit(&orig);
    png_image_deinit(&mask);
    return ok;
}

/* ===== Uploads: the route ===== */

static void upload(struct http_req *r, bool is_mask) {
    struct api_server *srv = r->srv;
    long long declared = r->ri->content_length;
    if (declared > 0 && (unsigned long long)declared > srv->max_upload) {
        mg_disable_connection_keep_alive(r->conn);
        http_reply_error(r, 413, "request_too_large", "Upload of %lld bytes is larger than the limit of %zu bytes",
                         declared, srv->max_upload);
        return;
    }
    const char *ctype = http_header(r, "Content-Type");
    if (!ctype || (strncasecmp(ctype, "multipart/form-data", 19) != 0 &&
                   strncasecmp(ctype, "application/x-www-form-urlencoded", 33) != 0)) {
        http_reply_error(r, 400, "invalid_form", "Uploads are multipart/form-data with the file in the field 'image'");
        return;
    }
    struct upload u = {.limit = srv->max_upload};
    struct mg_form_data_handler fdh = {.field_found = form_found, .field_get = form_get, .field_store = form_store,
                                       .user_data = &u};
    int nf = mg_handle_form_request(r->conn, &fdh);
    char dir_path[PATH_BUF], filepath[PATH_BUF], orig[PATH_BUF], name[1024];
    if (u.too_large) {
        mg_disable_connection_keep_alive(r->conn);
        http_reply_error(r, 413, "request_too_large", "Upload is larger than the limit of %zu bytes", srv->max_upload);
        goto out;
    }
    if (nf < 0) {
        http_reply_error(r, 400, "invalid_form", "The multipart body could not be parsed");
        goto out;
    }
    if (!u.image_seen || !u.image_is_file || !u.filename[0]) {
        http_reply_error(r, 400, "no_image", "No file in the form field 'image'");
        goto out;
    }
    if (u.field_too_long) {
        http_reply_error(r, 400, "invalid_form", "A form field (type, subfolder or overwrite) is too long");
        goto out;
    }
    const char *type = u.type[0] ? u.type : "input";
    const char *dir = dir_of_type(srv, type);
    if (!dir) {
        http_reply_error(r, 400, "invalid_type", "Unknown upload type '%s' (input, temp or output)", type);
        goto out;
    }
    if (strchr(u.filename, '/') || strchr(u.filename, '\\') || !strcmp(u.filename, ".") || !strcmp(u.filename, "..")) {
        http_reply_error(r, 400, "invalid_filename", "Invalid file name '%s'", u.filename);
        goto out;
    }
    if (!looks_like_image((const unsigned char *)u.data, u.len)) {
        http_reply_error(r, 400, "invalid_image", "'%s' is not an image (PNG, JPEG, WebP, GIF, BMP or TIFF)", u.filename);
        goto out;
    }
    /* the target folder: dir/normpath(subfolder), which must stay inside dir */
    char joined[PATH_BUF];
    bool fits = u.subfolder[0] == '/' ? (size_t)snprintf(joined, sizeof joined, "%s", u.subfolder) < sizeof joined
                                      : path_join(joined, dir, u.subfolder);
    if (fits) io_normpath(joined, dir_path, sizeof dir_path);
    if (!fits || !path_join(filepath, dir_path, u.filename) || !io_path_within(dir, filepath)) {
        http_reply_error(r, 400, "invalid_subfolder", "Subfolder '%s' is outside the %s folder", u.subfolder, type);
        goto out;
    }
    if (is_mask && !mask_original(r, &u, orig)) goto out;

    pthread_mutex_lock(&srv->files_mu);
    int mk = fs_make_dirs(dir_path, 0777, NULL, 0);
    if (mk != 0) {
        pthread_mutex_unlock(&srv->files_mu);
        http_reply_error(r, 500, "write_failed", "Cannot create the folder %s: %s", dir_path, strerror(-mk));
        goto out;
    }
    snprintf(name, sizeof name, "%s", u.filename);
    bool duplicate = false;
    if (strcmp(u.overwrite, "true") != 0 && strcmp(u.overwrite, "1") != 0) {
        /* splitext: the extension starts at the last dot that is not leading */
        const char *dot = strrchr(u.filename, '.');
        const char *p = u.filename;
        while (*p == '.') p++;
        if (dot && dot < p) dot = NULL;
        int stem = dot ? (int)(dot - u.filename) : (int)strlen(u.filename);
        for (int i = 1; access(filepath, F_OK) == 0; i++) {
            if (same_content(filepath, u.data, u.len)) {
                duplicate = true;
                break;
            }
            int nl = snprintf(name, sizeof name, "%.*s (%d)%s", stem, u.filename, i, dot ? dot : "");
            if (nl < 0 || (size_t)nl >= sizeof name || !path_join(filepath, dir_path, name)) {
                pthread_mutex_unlock(&srv->files_mu);
                http_reply_error(r, 400, "invalid_filename", "File name '%s' is too long", u.filename);
                goto out;
            }
        }
    }
    bool ok = true;
    if (!duplicate) {
        if (is_mask) {
            ok = mask_merge(r, orig, &u, filepath);
        } else if (write_file(filepath, u.data, u.len) != 0) {
            ok = false;
            http_reply_error(r, 500, "write_failed", "Cannot write %s: %s", filepath, strerror(errno));
        }
    }
    pthread_mutex_unlock(&srv->files_mu);
    if (ok) {
        json_t *reply = json_object();
        json_object_set_new(reply, "name", json_string(name));
        json_object_set_new(reply, "subfolder", json_string(u.subfolder));
        json_object_set_new(reply, "type", json_string(type));
        http_reply_json(r, 200, reply);
    }
out:
    mem_free(u.data);
    mem_free(u.original_ref);
}

void api__post_upload_image(struct http_req *r, const char *arg) { upload(r, false); }

void api__post_upload_mask(struct http_req *r, const char *arg) { upload(r, true); }
