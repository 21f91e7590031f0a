#!/usr/bin/python3
"""tests/ref/make_golden.py -- write kiln's golden file for the tiny model.

Usage: /usr/bin/python3 tests/ref/make_golden.py CKPT OUT.safetensors
       /usr/bin/python3 tests/ref/make_golden.py --fake-ckpt PATH [--vocab N]
           (writes a random tiny checkpoint in Python; development only: the committed golden
            comes from the file `kiln ckpt --tiny --seed 7 PATH` writes)

Owns: the deterministic inputs (seeded) and the reference outputs of sd_ref.py for CLIP, UNet,
VAE and a 2-step euler txt2img, all in one safetensors file with provenance in __metadata__.
Every output is also recomputed in float64 and the fp32-vs-fp64 relative error is recorded
(metadata key 'fp64_check'), which tells the C tests how much rounding noise to allow.
"""

import argparse
import hashlib
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sd_keys  # noqa: E402
import sd_ref  # noqa: E402
import st  # noqa: E402

INPUT_SEED = 20240607  # numpy PCG64 seed of every input except the txt2img noise
NOISE_SEED = 42        # torch.manual_seed of txt2img.noise (ComfyUI's prepare_noise draw)
UNET_TIMESTEPS = [999.0, 500.0]
CFG = 8.0
STEPS = 2


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            h.update(blk)
    return h.hexdigest()


def git_head():
    import subprocess
    try:
        return subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse",
                               "--short=12", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def make_inputs(vocab, width, n_pos):
    """The fixed inputs (numpy). Token ids: start = vocab-2, end = vocab-1, padded with end."""
    rng = np.random.default_rng(INPUT_SEED)
    start, end = vocab - 2, vocab - 1
    tokens = np.full((2, n_pos), end, dtype=np.int32)
    for row, n_words in ((0, 7), (1, 30)):
        words = rng.integers(0, vocab - 2, size=n_words)
        tokens[row, 0] = start
        tokens[row, 1:1 + n_words] = words
        tokens[row, 1 + n_words] = end
    inp = {
        "clip.tokens": tokens,
        "unet.x": rng.standard_normal((2, 4, 8, 8)).astype(np.float32),
        "unet.timesteps": np.array(UNET_TIMESTEPS, dtype=np.float32),
        "unet.context": rng.standard_normal((2, n_pos, width)).astype(np.float32),
        # a LATENT as KSampler outputs it (sampler latent / 0.18215): N(0,1) / 0.18215
        "vae.z": (rng.standard_normal((1, 4, 8, 8)).astype(np.float32) / np.float32(sd_ref.SD1_SCALE)),
        "vae.enc_in": rng.uniform(-1.0, 1.0, size=(1, 3, 64, 64)).astype(np.float32),
    }
    torch.manual_seed(NOISE_SEED)
    inp["txt2img.noise"] = torch.randn(1, 4, 8, 8).numpy()
    return inp


def run_reference(W, inp, clip_last_for_cond):
    """All outputs for weights W (float32 or float64 tensors). Returns dict name -> tensor."""
    dt = next(v for v in W.values() if v.is_floating_point()).dtype
    T = lambda a: torch.from_numpy(a).to(dt)  # noqa: E731
    out = {}
    with torch.no_grad():
        tokens = torch.from_numpy(inp["clip.tokens"]).long()
        out["clip.last"] = sd_ref.clip_forward(W, tokens, -1)
        out["clip.penultimate"] = sd_ref.clip_forward(W, tokens, -2)
        out["unet.out"] = sd_ref.unet_forward(W, T(inp["unet.x"]),
                                              torch.from_numpy(inp["unet.timesteps"]),
                                              T(inp["unet.context"]))
        raw, img = sd_ref.decode_image(W, T(inp["vae.z"]))
        out["vae.dec_raw"], out["vae.image"] = raw, img
        out["vae.enc_mean"] = sd_ref.vae_encode(W, T(inp["vae.enc_in"]))
        # txt2img conditioning: the fp32 CLIP outputs (fixed inputs, same for both precisions)
        cond = torch.from_numpy(clip_last_for_cond[0:1]).to(dt)
        uncond = torch.from_numpy(clip_last_for_cond[1:2]).to(dt)
        sched = sd_ref.Sd1Schedule()
        denoised = []
        latent, sigmas = sd_ref.sample_euler_txt2img(
            W, sched, T(inp["txt2img.noise"]), cond, uncond, CFG, STEPS,
            callback=lambda i, d: denoised.append(d))
        out["txt2img.sigmas"] = sigmas
        out["txt2img.denoised"] = torch.stack(denoised)
        out["txt2img.latent"] = latent
        out["txt2img.latent_out"] = sd_ref.process_latent_out(latent)
        _raw, img = sd_ref.decode_image(W, out["txt2img.latent_out"])
        out["txt2img.image"] = img
        out["txt2img.png_u8"] = torch.from_numpy(sd_ref.image_to_u8(img.float()))
    return out, cond, uncond


def rel_err(a, b):
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def make_golden(ckpt, out_path):
    arrays, ckpt_meta = st.load(ckpt)
    W32 = sd_ref.weights_from_numpy(arrays, torch.float32)
    W64 = sd_ref.weights_from_numpy(arrays, torch.float64)
    ccfg = sd_ref.clip_config(W32)
    ucfg = sd_ref.unet_config(W32)
    vcfg = sd_ref.vae_config(W32)
    inp = make_inputs(ccfg["vocab_size"], ccfg["width"], ccfg["n_positions"])

    # CLIP first, so that txt2img's cond/uncond are the fp32 CLIP outputs in both runs
    with torch.no_grad():
        last32 = sd_ref.clip_forward(W32, torch.from_numpy(inp["clip.tokens"]).long(), -1).numpy()
    out32, cond, uncond = run_reference(W32, inp, last32)
    out64, _, _ = run_reference(W64, inp, last32)
    inp["txt2img.cond"] = cond.float().numpy()
    inp["txt2img.uncond"] = uncond.float().numpy()

    check = {}
    for k, v in out32.items():
        if k == "txt2img.png_u8":
            d = (v.int() - out64[k].int()).abs()
            check[k] = {"max_abs_u8": int(d.max()), "n_diff": int((d > 0).sum())}
        elif k != "txt2img.sigmas":
            check[k] = {"max_rel": rel_err(v, out64[k]),
                        "max_abs": float((v.double() - out64[k].double()).abs().max()),
                        "max_ref": float(out64[k].abs().max())}

    tensors = {}
    order = ["clip.tokens", "clip.last", "clip.penultimate",
             "unet.x", "unet.timesteps", "unet.context", "unet.out",
             "vae.z", "vae.dec_raw", "vae.image", "vae.enc_in", "vae.enc_mean",
             "txt2img.cond", "txt2img.uncond", "txt2img.noise", "txt2img.sigmas",
             "txt2img.denoised", "txt2img.latent", "txt2img.latent_out", "txt2img.image", "txt2img.png_u8"]
    for k in order:
        v = inp[k] if k in inp else out32[k].numpy()
        if v.dtype == np.float64:
            v = v.astype(np.float32)
        tensors[k] = v

    meta = {
        "command": " ".join(["/usr/bin/python3"] + [os.path.relpath(sys.argv[0])] + sys.argv[1:]),
        "generator": "tests/ref/make_golden.py (sd_ref.py, plain PyTorch, fp32 on the CPU)",
        "torch": torch.__version__,
        "numpy": np.__version__,
        "ckpt_file": os.path.basename(ckpt),
        "ckpt_made_by": "kiln ckpt --tiny --seed 7 PATH (kiln at git " + git_head() + ")",
        "ckpt_sha256": sha256_file(ckpt),
        "ckpt_metadata": json.dumps(ckpt_meta, sort_keys=True),
        "clip_config": json.dumps(ccfg),
        "unet_config": json.dumps(ucfg),
        "vae_config": json.dumps(vcfg),
        "unet_heads": str(sd_ref.SD1_UNET_HEADS),
        "vae_scale": str(sd_ref.SD1_SCALE),
        "inputs": json.dumps({
            "seed": f"numpy default_rng({INPUT_SEED}) draws in this order: 7 then 30 token ids in "
                    "[0, vocab-2), unet.x N(0,1), unet.context N(0,1), vae.z N(0,1)/0.18215, vae.enc_in U(-1,1)",
            "clip.tokens": "I32 [2,77]: start=vocab-2, 7 (row 0) or 30 (row 1) words, end=vocab-1, pad end",
            "unet.timesteps": "F32 [2]: the float timesteps fed to the UNet's embedding",
            "txt2img.noise": f"torch.manual_seed({NOISE_SEED}); torch.randn(1,4,8,8) (torch {torch.__version__})",
            "txt2img.cond/uncond": "clip.last[0:1] / clip.last[1:2] (fp32)",
        }),
        "outputs": json.dumps({
            "clip.last": "final LayerNorm(last layer), [2,77,W]",
            "clip.penultimate": "final LayerNorm(output of layer n_layers-2), CLIPSetLastLayer -2",
            "unet.out": "eps prediction UNet(unet.x, unet.timesteps, unet.context)",
            "vae.z": "a LATENT as ComfyUI's KSampler node outputs it and VAEDecode takes it, i.e. "
                     "already / 0.18215 (drawn as N(0,1) / 0.18215); decoded without scaling",
            "vae.dec_raw": "decoder(post_quant_conv(vae.z)), NCHW, not clamped",
            "vae.image": "clamp((dec_raw + 1) / 2, 0, 1) as ComfyUI's IMAGE, NHWC [1,64,64,3]",
            "vae.enc_mean": "posterior mean of encoder(vae.enc_in) after quant_conv: VAEEncode's LATENT "
                            "(KSampler multiplies a non-empty LATENT by 0.18215)",
            "txt2img": f"KSampler euler / normal / cfg {CFG} / steps {STEPS} / denoise 1 on an empty "
                       "latent: x = noise * sqrt(1 + sigma0^2); D = x - s*eps(x/sqrt(s^2+1), "
                       "t=nearest index), cond and uncond batched; CFG on D",
            "txt2img.sigmas": "the 'normal' schedule, F32 [steps+1]",
            "txt2img.denoised": "CFG-combined denoised estimate of each step, [steps,1,4,8,8]",
            "txt2img.latent": "final sampler-space latent x (before process_latent_out's / 0.18215)",
            "txt2img.latent_out": "latent / 0.18215: the LATENT KSampler outputs, VAEDecode's input",
            "txt2img.image": "VAEDecode of latent_out: clamp((decoder(latent_out)+1)/2), NHWC float",
            "txt2img.png_u8": "clip(255 * image, 0, 255).astype(uint8) (truncation), NHWC",
        }),
        "fp64_check": json.dumps(check, sort_keys=True),
    }
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    st.save(out_path, tensors, meta)
    return tensors, meta, check


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt", nargs="?")
    ap.add_argument("out", nargs="?")
    ap.add_argument("--fake-ckpt", metavar="PATH", help="write a random tiny checkpoint and exit")
    ap.add_argument("--vocab", type=int, default=1000, help="vocab size for --fake-ckpt")
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if a.fake_ckpt:
        cfg = sd_keys.tiny_config(a.vocab)
        st.save(a.fake_ckpt, sd_keys.random_checkpoint(cfg, 7), {"format": "pt", "fake": "sd_keys.py"})
        print(f"wrote {a.fake_ckpt}")
        return
    if not (a.ckpt and a.out):
        ap.error("need CKPT and OUT")
    tensors, meta, check = make_golden(a.ckpt, a.out)
    print(f"wrote {a.out} ({os.path.getsize(a.out)} bytes), ckpt sha256 {meta['ckpt_sha256']}")
    for k, v in check.items():
        print(f"  fp32 vs fp64  {k:20s} {v}")


if __name__ == "__main__":
    main()
