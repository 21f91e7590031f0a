#!/usr/bin/python3
"""tests/ref/graph_ref.py -- reference values for kiln's io/ and graph/ model-free nodes.

Writes tests/data/graph/resize_ref.json (torch.nn.functional.interpolate, a from-scratch
bislerp following ComfyUI's definition, PIL LANCZOS) and tests/data/graph/png/*.png with
tests/data/graph/png_ref.json (what PIL gives LoadImage for each file, and ComfyUI's
float -> uint8 conversion of tricky values).

Run with Debian's interpreter (torch 1.13 CPU, numpy, PIL):
    /usr/bin/python3 tests/ref/graph_ref.py
`graph_ref.py --resize-only FILE` writes only the resize cases (to check another torch).
Output is deterministic (inputs from numpy's PCG64, seed 1234)."""
import json
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "data", "graph")
rng = np.random.default_rng(1234)


def f32_list(a):
    """float32 values with 9 significant digits (enough to round-trip a float32)."""
    return [float("%.9g" % x) for x in np.asarray(a, dtype=np.float32).reshape(-1)]


# ----- bislerp, written from ComfyUI's description (comfy/utils.py) -----

def slerp_rows(b1, b2, r):
    """b1, b2: [N, C]; r: [N, 1]. Spherical interpolation of directions, linear of norms."""
    c = b1.shape[-1]
    n1 = torch.norm(b1, dim=-1, keepdim=True)
    n2 = torch.norm(b2, dim=-1, keepdim=True)
    u1 = b1 / n1
    u2 = b2 / n2
    u1[n1.expand(-1, c) == 0.0] = 0.0
    u2[n2.expand(-1, c) == 0.0] = 0.0
    dot = (u1 * u2).sum(1)
    om = torch.acos(dot)
    so = torch.sin(om)
    out = (torch.sin((1.0 - r.squeeze(1)) * om) / so).unsqueeze(1) * u1 \
        + (torch.sin(r.squeeze(1) * om) / so).unsqueeze(1) * u2
    out *= (n1 * (1.0 - r) + n2 * r).expand(-1, c)
    near = dot > 1 - 1e-5
    opposite = dot < 1e-5 - 1
    out[near] = b1[near]
    out[opposite] = (b1 * (1.0 - r) + b2 * r)[opposite]
    return out


def lin_coords(n_old, n_new):
    """Source coordinates by bilinear interpolation of arange (as ComfyUI builds them)."""
    lo = torch.arange(n_old, dtype=torch.float32).reshape(1, 1, 1, -1)
    lo = F.interpolate(lo, size=(1, n_new), mode="bilinear")
    frac = lo - lo.floor()
    hi = torch.arange(n_old, dtype=torch.float32).reshape(1, 1, 1, -1) + 1
    hi[:, :, :, -1] -= 1
    hi = F.interpolate(hi, size=(1, n_new), mode="bilinear")
    return frac.reshape(-1), lo.to(torch.int64).reshape(-1), hi.to(torch.int64).reshape(-1)


def bislerp_ref(x, w_new, h_new):
    n, c, h, w = x.shape
    frac, lo, hi = lin_coords(w, w_new)
    a = x[:, :, :, lo].permute(0, 2, 3, 1).reshape(-1, c)
    b = x[:, :, :, hi].permute(0, 2, 3, 1).reshape(-1, c)
    r = frac.reshape(1, 1, -1).expand(n, h, -1).reshape(-1, 1)
    mid = slerp_rows(a, b, r).reshape(n, h, w_new, c).permute(0, 3, 1, 2)
    frac, lo, hi = lin_coords(h, h_new)
    a = mid[:, :, lo, :].permute(0, 2, 3, 1).reshape(-1, c)
    b = mid[:, :, hi, :].permute(0, 2, 3, 1).reshape(-1, c)
    r = frac.reshape(1, -1, 1).expand(n, -1, w_new).reshape(-1, 1)
    return slerp_rows(a, b, r).reshape(n, h_new, w_new, c).permute(0, 3, 1, 2)


def lanczos_ref(x, w_new, h_new):
    outs = []
    for img in x:
        u8 = np.clip(255.0 * img.permute(1, 2, 0).numpy(), 0, 255).astype(np.uint8)
        im = Image.fromarray(u8).resize((w_new, h_new), resample=Image.LANCZOS)
        outs.append(torch.from_numpy(np.array(im).astype(np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(outs)


def center_crop(x, w_new, h_new):
    oh, ow = x.shape[-2], x.shape[-1]
    old_aspect, new_aspect = ow / oh, w_new / h_new
    cx = cy = 0
    if old_aspect > new_aspect:
        cx = round((ow - ow * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        cy = round((oh - oh * (old_aspect / new_aspect)) / 2)
    return x[:, :, cy:oh - cy, cx:ow - cx]


def resize(x, method, w_new, h_new, crop=False):
    if crop:
        x = center_crop(x, w_new, h_new)
    if method == "bislerp":
        return bislerp_ref(x, w_new, h_new)
    if method == "lanczos":
        return lanczos_ref(x, w_new, h_new)
    if method == "area":
        return F.adaptive_avg_pool2d(x, (h_new, w_new))
    return F.interpolate(x, size=(h_new, w_new), mode=method)


def resize_cases():
    cases = []
    small = torch.from_numpy(rng.standard_normal((1, 2, 5, 7)).astype(np.float32))
    lat = torch.from_numpy(rng.standard_normal((2, 4, 9, 12)).astype(np.float32))
    # bislerp edge cases: a zero vector and two opposite ones
    lat[0, :, 0, 0] = 0.0
    lat[1, :, 2, 3] = -lat[1, :, 2, 4]
    img = torch.from_numpy(((rng.integers(0, 256, (1, 3, 8, 10)) + 0.25) / 255.0).astype(np.float32))
    for m in ["nearest-exact", "bilinear", "bicubic", "area"]:
        for (w, h) in [(4, 3), (13, 11), (7, 5), (16, 10)]:
            cases.append(("small", m, w, h, False))
        cases.append(("lat", m, 20, 15, False))
        cases.append(("lat", m, 8, 8, True))
    for (w, h) in [(20, 15), (5, 4), (12, 9)]:
        cases.append(("lat", "bislerp", w, h, False))
    for (w, h) in [(17, 13), (6, 5), (10, 8), (10, 12)]:
        cases.append(("img", "lanczos", w, h, False))
    cases.append(("img", "lanczos", 6, 6, True))
    inputs = {"small": small, "lat": lat, "img": img}
    out = {"inputs": {k: {"shape": list(v.shape), "data": f32_list(v)} for k, v in inputs.items()}, "cases": []}
    for (src, m, w, h, crop) in cases:
        y = resize(inputs[src].clone(), m, w, h, crop)
        out["cases"].append({"input": src, "method": m, "width": w, "height": h, "crop": crop,
                             "shape": list(y.shape), "data": f32_list(y)})
    return out


# ----- PNG files as LoadImage sees them through PIL -----

def png_cases():
    d = os.path.join(OUT, "png")
    os.makedirs(d, exist_ok=True)
    files = {}
    rgb = rng.integers(0, 256, (5, 6, 3)).astype(np.uint8)
    Image.fromarray(rgb, "RGB").save(os.path.join(d, "rgb8.png"))
    rgba = rng.integers(0, 256, (4, 3, 4)).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(os.path.join(d, "rgba8.png"))
    la = rng.integers(0, 256, (3, 5, 2)).astype(np.uint8)
    Image.fromarray(la, "LA").save(os.path.join(d, "la8.png"))
    gray = rng.integers(0, 256, (4, 4)).astype(np.uint8)
    Image.fromarray(gray, "L").save(os.path.join(d, "gray8.png"))
    pal = Image.fromarray(rng.integers(0, 4, (3, 4)).astype(np.uint8), "P")
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 99, 199] + [0] * (252 * 3))
    pal.info["transparency"] = 1
    pal.save(os.path.join(d, "palette_trns.png"), transparency=1)
    # 16-bit RGB written by hand (PIL cannot write it): big-endian samples
    rgb16 = rng.integers(0, 65536, (2, 3, 3)).astype(">u2")
    write_png16(os.path.join(d, "rgb16.png"), rgb16)
    for name in ["rgb8", "rgba8", "la8", "gray8", "palette_trns", "rgb16"]:
        im = Image.open(os.path.join(d, name + ".png"))
        rgb_u8 = np.array(im.convert("RGB"))
        has_alpha = "A" in im.getbands()
        alpha = np.array(im.getchannel("A")) if has_alpha else None
        files[name] = {"width": im.size[0], "height": im.size[1], "rgb": rgb_u8.reshape(-1).tolist(),
                       "has_alpha": has_alpha,
                       "mask": f32_list(1.0 - alpha.astype(np.float32) / 255.0) if has_alpha else None,
                       "image": f32_list(rgb_u8.astype(np.float32) / 255.0),
                       # SaveImage of that IMAGE: np.clip(255. * x, 0, 255).astype(np.uint8)
                       "resaved": np.clip(255. * (rgb_u8.astype(np.float32) / 255.0), 0, 255)
                       .astype(np.uint8).reshape(-1).tolist()}
    # ComfyUI's SaveImage conversion of tricky float32 values
    vals = np.array([0.0, -0.0, -1.0, 1.0, 2.0, 0.5, 1 / 255, 0.999999, 254.5 / 255, 254.9999 / 255,
                     np.nextafter(np.float32(1 / 255), np.float32(0)), 0.0019607844, 1e-30, 0.7529412],
                    dtype=np.float32)
    u8 = np.clip(255. * vals, 0, 255).astype(np.uint8)
    conv = {"bits": [struct.unpack("<I", struct.pack("<f", float(v)))[0] for v in vals], "u8": u8.tolist()}
    return {"files": files, "convert": conv}


def write_png16(path, arr):
    import zlib
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].tobytes() for y in range(h))

    def chunk(t, data):
        c = struct.pack(">I", len(data)) + t + data
        return c + struct.pack(">I", zlib.crc32(t + data) & 0xffffffff)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--resize-only":  # e.g. to compare another torch
        with open(sys.argv[2], "w") as f:
            json.dump({"torch": torch.__version__, **resize_cases()}, f)
        return
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "resize_ref.json"), "w") as f:
        json.dump({"torch": torch.__version__, **resize_cases()}, f)
    with open(os.path.join(OUT, "png_ref.json"), "w") as f:
        json.dump(png_cases(), f)
    print("wrote", OUT, file=sys.stderr)


if __name__ == "__main__":
    main()
