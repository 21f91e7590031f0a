/* io/resize.c -- torch/ComfyUI/PIL resampling, reproduced operation by operation in float32
 * (the arithmetic order follows PyTorch's CPU kernels so results match to the last bit where
 * the compiler does not fuse multiply-adds).
 * Owns: nothing.
 * Threads: any.
 * Ownership: caller buffers; temporary buffers are freed before returning. */
#include "io/resize.h"

#include "base/base.h"
#include "base/mem.h"
#include "base/status.h"
#include "io/png.h"

#include <math.h>
#include <string.h>

const char *io_upscale_name(enum io_upscale m) {
    static const char *const names[] = {
#define XX(name, str) str,
        IO_UPSCALE_MAP(XX)
#undef XX
    };
    return (unsigned)m < IO_UPSCALE_COUNT ? names[m] : "?";
}

enum io_upscale io_upscale_parse(const char *s) {
    for (int m = 0; m < IO_UPSCALE_COUNT; m++)
        if (strcmp(s, io_upscale_name((enum io_upscale)m)) == 0) return (enum io_upscale)m;
    return IO_UPSCALE_COUNT;
}

/* ===== torch.nn.functional.interpolate (CPU, float32, align_corners=False) ===== */

/* Per output index: up to 4 source indices and weights along one axis. */
struct axis {
    int64_t idx[4];
    float wt[4];
    int taps;
};

/* nearest-exact: src = min(floor((dst + 0.5) * scale), in - 1), scale = in / out in float. */
static void axis_nearest(struct axis *a, int64_t in, int64_t out) {
    float scale = (float)in / (float)out;
    for (int64_t i = 0; i < out; i++) {
        int64_t s = (int64_t)floorf((float)((i + 0.5) * (double)scale));
        a[i].idx[0] = s < in - 1 ? s : in - 1;
        a[i].wt[0] = 1.0f;
        a[i].taps = 1;
    }
}

static void axis_linear(struct axis *a, int64_t in, int64_t out) {
    float scale = (float)in / (float)out;
    for (int64_t i = 0; i < out; i++) {
        int64_t i0;
        float l1;
        if (in == out) {
            i0 = i, l1 = 0.0f;
        } else {
            float real = scale * ((float)i + 0.5f) - 0.5f;
            if (real < 0.0f) real = 0.0f;
            i0 = (int64_t)floorf(real);
            if (i0 > in - 1) i0 = in - 1;
            l1 = real - (float)i0;
            l1 = l1 < 0.0f ? 0.0f : l1 > 1.0f ? 1.0f : l1;
        }
        a[i].idx[0] = i0;
        a[i].idx[1] = i0 + (i0 < in - 1 ? 1 : 0);
        a[i].wt[0] = 1.0f - l1;
        a[i].wt[1] = l1;
        a[i].taps = 2;
    }
}

static float cubic1(float x, float A) { return ((A + 2.0f) * x - (A + 3.0f)) * x * x + 1.0f; }
static float cubic2(float x, float A) { return ((A * x - 5.0f * A) * x + 8.0f * A) * x - 4.0f * A; }

static void axis_cubic(struct axis *a, int64_t in, int64_t out) {
    const float A = -0.75f;
    float scale = (float)in / (float)out;
    for (int64_t i = 0; i < out; i++) {
        float real = scale * ((float)i + 0.5f) - 0.5f; /* no clamp at 0 for cubic */
        int64_t i0 = (int64_t)floorf(real);
        if (i0 > in - 1) i0 = in - 1;
        float t = real - (float)i0;
        t = t < 0.0f ? 0.0f : t > 1.0f ? 1.0f : t;
        a[i].wt[0] = cubic2(t + 1.0f, A);
        a[i].wt[1] = cubic1(t, A);
        a[i].wt[2] = cubic1(1.0f - t, A);
        a[i].wt[3] = cubic2((1.0f - t) + 1.0f, A);
        for (int k = 0; k < 4; k++) {
            int64_t s = i0 - 1 + k;
            a[i].idx[k] = s < 0 ? 0 : s > in - 1 ? in - 1 : s;
        }
        a[i].taps = 4;
    }
}

/* Separable interpolation in torch's order: inner sum over width, then over height. */
static void interp2d(const float *src, int64_t planes, int64_t h, int64_t w, float *dst, int64_t oh, int64_t ow,
                     const struct axis *ay, const struct axis *ax) {
    for (int64_t p = 0; p < planes; p++) {
        const float *s = src + p * h * w;
        float *d = dst + p * oh * ow;
        for (int64_t y = 0; y < oh; y++) {
            const struct axis *Y = &ay[y];
            for (int64_t x = 0; x < ow; x++) {
                const struct axis *X = &ax[x];
                float out = 0.0f;
                for (int j = 0; j < Y->taps; j++) {
                    const float *row = s + Y->idx[j] * w;
                    float t = row[X->idx[0]] * X->wt[0];
                    for (int k = 1; k < X->taps; k++) t += row[X->idx[k]] * X->wt[k];
                    out = j == 0 ? t * Y->wt[0] : out + t * Y->wt[j];
                }
                d[y * ow + x] = out;
            }
        }
    }
}

/* adaptive_avg_pool2d: window [floor(i*in/out), ceil((i+1)*in/out)) averaged as sum/kh/kw. */
static void area(const float *src, int64_t planes, int64_t h, int64_t w, float *dst, int64_t oh, int64_t ow) {
    for (int64_t p = 0; p < planes; p++) {
        const float *s = src + p * h * w;
        float *d = dst + p * oh * ow;
        for (int64_t y = 0; y < oh; y++) {
            int64_t y0 = (y * h) / oh, y1 = ((y + 1) * h + oh - 1) / oh;
            for (int64_t x = 0; x < ow; x++) {
                int64_t x0 = (x * w) / ow, x1 = ((x + 1) * w + ow - 1) / ow;
                float sum = 0.0f;
                for (int64_t iy = y0; iy < y1; iy++)
                    for (int64_t ix = x0; ix < x1; ix++) sum += s[iy * w + ix];
                d[y * ow + x] = sum / (float)(y1 - y0) / (float)(x1 - x0);
            }
        }
    }
}

/* ===== ComfyUI bislerp ===== */

/* generate_bilinear_data: bilinear-interpolated source coordinates, their fractions, and
 * truncated low/high indices, all computed through float32 as torch does. */
static void bislerp_coords(int64_t in, int64_t out, int64_t *c1, int64_t *c2, float *ratio) {
    struct axis *a = mem_calloc((size_t)out, sizeof *a);
    axis_linear(a, in, out);
    for (int64_t i = 0; i < out; i++) {
        float lo0 = (float)a[i].idx[0], lo1 = (float)a[i].idx[1];
        float v1 = lo0 * a[i].wt[0] + lo1 * a[i].wt[1];
        ratio[i] = v1 - floorf(v1);
        c1[i] = (int64_t)v1;
        /* coords_2 = arange + 1 with the last entry kept at in - 1 */
        float hi0 = (float)(a[i].idx[0] + 1 < in ? a[i].idx[0] + 1 : in - 1);
        float hi1 = (float)(a[i].idx[1] + 1 < in ? a[i].idx[1] + 1 : in - 1);
        float v2 = hi0 * a[i].wt[0] + hi1 * a[i].wt[1];
        c2[i] = (int64_t)v2;
    }
    mem_free(a);
}

/* slerp of two c-vectors with ratio r (ComfyUI's "technically not correct" variant). */
static void slerp(const float *b1, const float *b2, float r, float *res, int64_t c, float *tmp) {
    float n1 = 0.0f, n2 = 0.0f;
    for (int64_t k = 0; k < c; k++) n1 += b1[k] * b1[k], n2 += b2[k] * b2[k];
    n1 = sqrtf(n1), n2 = sqrtf(n2);
    float *u1 = tmp, *u2 = tmp + c;
    float dot = 0.0f;
    for (int64_t k = 0; k < c; k++) {
        u1[k] = n1 == 0.0f ? 0.0f : b1[k] / n1;
        u2[k] = n2 == 0.0f ? 0.0f : b2[k] / n2;
        dot += u1[k] * u2[k];
    }
    if (dot > (float)(1 - 1e-5)) {
        memcpy(res, b1, (size_t)c * sizeof *res);
        return;
    }
    if (dot < (float)(1e-5 - 1)) {
        for (int64_t k = 0; k < c; k++) res[k] = b1[k] * (1.0f - r) + b2[k] * r;
        return;
    }
    float omega = acosf(dot), so = sinf(omega);
    float w1 = sinf((1.0f - r) * omega) / so, w2 = sinf(r * omega) / so;
    float scale = n1 * (1.0f - r) + n2 * r;
    for (int64_t k = 0; k < c; k++) res[k] = (w1 * u1[k] + w2 * u2[k]) * scale;
}

static void bislerp(const float *src, int64_t n, int64_t c, int64_t h, int64_t w, float *dst, int64_t oh,
                    int64_t ow) {
    int64_t *c1 = mem_calloc((size_t)(ow > oh ? ow : oh), sizeof *c1);
    int64_t *c2 = mem_calloc((size_t)(ow > oh ? ow : oh), sizeof *c2);
    float *ratio = mem_calloc((size_t)(ow > oh ? ow : oh), sizeof *ratio);
    float *mid = mem_alloc((size_t)(n * c * h * ow) * sizeof *mid); /* [n, c, h, ow] */
    float *v1 = mem_alloc((size_t)c * 5 * sizeof *v1), *v2 = v1 + c, *vr = v1 + 2 * c, *tmp = v1 + 3 * c;

    /* width pass */
    bislerp_coords(w, ow, c1, c2, ratio);
    for (int64_t b = 0; b < n; b++)
        for (int64_t y = 0; y < h; y++)
            for (int64_t x = 0; x < ow; x++) {
                for (int64_t k = 0; k < c; k++) {
                    const float *row = src + ((b * c + k) * h + y) * w;
                    v1[k] = row[c1[x]], v2[k] = row[c2[x]];
                }
                slerp(v1, v2, ratio[x], vr, c, tmp);
                for (int64_t k = 0; k < c; k++) mid[((b * c + k) * h + y) * ow + x] = vr[k];
            }
    /* height pass */
    bislerp_coords(h, oh, c1, c2, ratio);
    for (int64_t b = 0; b < n; b++)
        for (int64_t y = 0; y < oh; y++)
            for (int64_t x = 0; x < ow; x++) {
                for (int64_t k = 0; k < c; k++) {
                    const float *plane = mid + (b * c + k) * h * ow;
                    v1[k] = plane[c1[y] * ow + x], v2[k] = plane[c2[y] * ow + x];
                }
                slerp(v1, v2, ratio[y], vr, c, tmp);
                for (int64_t k = 0; k < c; k++) dst[((b * c + k) * oh + y) * ow + x] = vr[k];
            }
    mem_free(c1), mem_free(c2), mem_free(ratio), mem_free(mid), mem_free(v1);
}

/* ===== PIL Image.resize(LANCZOS) on 8-bit planes ===== */

#define PIL_PRECISION_BITS (32 - 8 - 2)

static double sinc(double x) {
    if (x == 0.0) return 1.0;
    x *= M_PI;
    return sin(x) / x;
}

static double lanczos3(double x) { return (-3.0 <= x && x < 3.0) ? sinc(x) * sinc(x / 3.0) : 0.0; }

/* Pillow's precompute_coeffs + normalize_coeffs_8bpc: per output pixel a window [lo, lo+len)
 * and fixed-point weights. Returns ksize. */
static int pil_coeffs(int in, int out, int **bounds, int **kk) {
    double scale = (double)in / out, filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 3.0 * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    double *pre = mem_calloc((size_t)out * (size_t)ksize, sizeof *pre);
    *bounds = mem_calloc((size_t)out * 2, sizeof **bounds);
    *kk = mem_calloc((size_t)out * (size_t)ksize, sizeof **kk);
    for (int xx = 0; xx < out; xx++) {
        double center = (xx + 0.5) * scale, ww = 0.0, ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in) xmax = in;
        xmax -= xmin;
        double *k = &pre[(size_t)xx * (size_t)ksize];
        for (int x = 0; x < xmax; x++) {
            double wv = lanczos3((x + xmin - center + 0.5) * ss);
            k[x] = wv;
            ww += wv;
        }
        for (int x = 0; x < xmax; x++)
            if (ww != 0.0) k[x] /= ww;
        (*bounds)[xx * 2] = xmin;
        (*bounds)[xx * 2 + 1] = xmax;
    }
    for (int i = 0; i < out * ksize; i++)
        (*kk)[i] = pre[i] < 0 ? (int)(-0.5 + pre[i] * (1 << PIL_PRECISION_BITS))
                              : (int)(0.5 + pre[i] * (1 << PIL_PRECISION_BITS));
    mem_free(pre);
    return ksize;
}

static uint8_t pil_clip8(int v) {
    int s = v >= 0 ? v >> PIL_PRECISION_BITS : -((-v + (1 << PIL_PRECISION_BITS) - 1) >> PIL_PRECISION_BITS);
    return (uint8_t)(s < 0 ? 0 : s > 255 ? 255 : s);
}

/* Resizes one 8-bit plane like ImagingResample (horizontal pass first, each pass rounding to
 * 8 bits; a pass is skipped when its size does not change). */
static void pil_resize_plane(const uint8_t *src, int w, int h, uint8_t *dst, int ow, int oh) {
    int *bx, *kx, *by, *ky;
    int ksx = pil_coeffs(w, ow, &bx, &kx);
    int ksy = pil_coeffs(h, oh, &by, &ky);
    const uint8_t *cur = src;
    uint8_t *tmp = NULL;
    int cw = w;
    if (ow != w) {
        tmp = mem_alloc((size_t)ow * (size_t)h);
        for (int y = 0; y < h; y++)
            for (int x = 0; x < ow; x++) {
                int xmin = bx[x * 2], xmax = bx[x * 2 + 1];
                const int *k = &kx[x * ksx];
                int ss = 1 << (PIL_PRECISION_BITS - 1);
                for (int i = 0; i < xmax; i++) ss += src[y * w + xmin + i] * k[i];
                tmp[y * ow + x] = pil_clip8(ss);
            }
        cur = tmp;
        cw = ow;
    }
    if (oh != h) {
        for (int y = 0; y < oh; y++) {
            int ymin = by[y * 2], ymax = by[y * 2 + 1];
            const int *k = &ky[y * ksy];
            for (int x = 0; x < cw; x++) {
                int ss = 1 << (PIL_PRECISION_BITS - 1);
                for (int i = 0; i < ymax; i++) ss += cur[(ymin + i) * cw + x] * k[i];
                dst[y * cw + x] = pil_clip8(ss);
            }
        }
    } else {
        memcpy(dst, cur, (size_t)cw * (size_t)h);
    }
    mem_free(tmp), mem_free(bx), mem_free(kx), mem_free(by), mem_free(ky);
}

static void lanczos(const float *src, int64_t planes, int64_t h, int64_t w, float *dst, int64_t oh, int64_t ow) {
    uint8_t *in = mem_alloc((size_t)(h * w)), *out = mem_alloc((size_t)(oh * ow));
    for (int64_t p = 0; p < planes; p++) {
        png_from_float(src + p * h * w, in, (size_t)(h * w));
        pil_resize_plane(in, (int)w, (int)h, out, (int)ow, (int)oh);
        for (int64_t i = 0; i < oh * ow; i++) dst[p * oh * ow + i] = (float)out[i] / 255.0f;
    }
    mem_free(in), mem_free(out);
}

/* ===== Entry points ===== */

void io_resize(const float *src, int64_t n, int64_t c, int64_t h, int64_t w, float *dst, int64_t oh, int64_t ow,
               enum io_upscale m) {
    ASSERT(n >= 0 && c >= 0 && h > 0 && w > 0 && oh > 0 && ow > 0);
    int64_t planes = n * c;
    if (m == IO_UPSCALE_AREA) return area(src, planes, h, w, dst, oh, ow);
    if (m == IO_UPSCALE_BISLERP) return bislerp(src, n, c, h, w, dst, oh, ow);
    if (m == IO_UPSCALE_LANCZOS) return lanczos(src, planes, h, w, dst, oh, ow);
    struct axis *ay = mem_calloc((size_t)oh, sizeof *ay), *ax = mem_calloc((size_t)ow, sizeof *ax);
    if (m == IO_UPSCALE_NEAREST_EXACT) axis_nearest(ay, h, oh), axis_nearest(ax, w, ow);
    else if (m == IO_UPSCALE_BILINEAR) axis_linear(ay, h, oh), axis_linear(ax, w, ow);
    else axis_cubic(ay, h, oh), axis_cubic(ax, w, ow);
    interp2d(src, planes, h, w, dst, oh, ow, ay, ax);
    mem_free(ay), mem_free(ax);
}

int io_common_upscale(const float *src, int64_t n, int64_t c, int64_t h, int64_t w, float *dst, int64_t ow,
                      int64_t oh, enum io_upscale m, int center, struct err *err) {
    if (h <= 0 || w <= 0 || oh <= 0 || ow <= 0 || (unsigned)m >= IO_UPSCALE_COUNT)
        return err_set(err, STATUS_ERR_INVALID, "cannot resize %lldx%lld to %lldx%lld with %s", (long long)w,
                       (long long)h, (long long)ow, (long long)oh, io_upscale_name(m));
    if (!center) {
        io_resize(src, n, c, h, w, dst, oh, ow, m);
        return 0;
    }
    /* crop == "center": cut the source to the target aspect ratio (Python round: half-even) */
    double old_aspect = (double)w / (double)h, new_aspect = (double)ow / (double)oh;
    int64_t x = 0, y = 0;
    if (old_aspect > new_aspect) x = (int64_t)nearbyint((w - w * (new_aspect / old_aspect)) / 2);
    else if (old_aspect < new_aspect) y = (int64_t)nearbyint((h - h * (old_aspect / new_aspect)) / 2);
    int64_t ch = h - 2 * y, cw = w - 2 * x;
    if (ch <= 0 || cw <= 0) return err_set(err, STATUS_ERR_INVALID, "center crop leaves no pixels");
    float *crop = mem_try_alloc((size_t)(n * c * ch * cw) * sizeof *crop);
    if (!crop) return err_set(err, STATUS_ERR_NOMEM, "out of memory cropping %lldx%lld", (long long)cw, (long long)ch);
    for (int64_t p = 0; p < n * c; p++)
        for (int64_t yy = 0; yy < ch; yy++)
            memcpy(crop + (p * ch + yy) * cw, src + (p * h + yy + y) * w + x, (size_t)cw * sizeof *crop);
    io_resize(crop, n, c, ch, cw, dst, oh, ow, m);
    mem_free(crop);
    return 0;
}
