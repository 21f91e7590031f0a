#!/usr/bin/env python3
"""UNet at a latent size that is not a multiple of 8 (12x10 latent, 96x80 pixels): ComfyUI's
downsampling rounds up and its upsampling resizes to the skip tensor's size. Writes
tests/data/ref/unet_odd.safetensors (x, context, timestep, out) from the tiny checkpoint.
usage: /usr/bin/python3 tests/ref/make_golden_odd.py TINY_CKPT OUT.safetensors"""
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import sd_ref  # noqa: E402
import st  # noqa: E402

arr = st.load(sys.argv[1])
arr = arr[0] if isinstance(arr, tuple) else arr
W = sd_ref.weights_from_numpy(arr)
g = torch.Generator().manual_seed(3)
x = torch.randn(1, 4, 12, 10, generator=g)
ctx = torch.randn(1, 77, W["model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight"].shape[1],
                  generator=g)
t = torch.tensor([700.0])
out = sd_ref.unet_forward(W, x, t, ctx)
st.save(sys.argv[2], {"unet.x": x.numpy(), "unet.context": ctx.numpy(), "unet.timesteps": t.numpy(),
                      "unet.out": out.numpy()},
        metadata={"command": " ".join(sys.argv), "torch": torch.__version__})
