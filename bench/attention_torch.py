#!/usr/bin/env python3
"""bench/attention_torch.py -- reference figures for kiln's attention kernel: times PyTorch's
scaled_dot_product_attention backends (flash, cuDNN, memory-efficient) at SD 1.5's attention
shapes, batch 8 (4 images x CFG), fp16, on the lent GPU machine (which has torch; this machine
does not). Prints one line per shape and backend: ms per call and TFLOP/s (4 b h nq nk d).
Also the shapes with each head zero-padded (40 -> 48/64, 80 -> 96/128, 160 -> 192/256).
Usage: python3 bench/attention_torch.py [batch]"""
import sys
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

B = int(sys.argv[1]) if len(sys.argv) > 1 else 8
SHAPES = [  # (name, tokens, keys, heads, head size)
    ("self 64x64", 4096, 4096, 8, 40),
    ("self 32x32", 1024, 1024, 8, 80),
    ("self 16x16", 256, 256, 8, 160),
    ("cross 64x64", 4096, 77, 8, 40),
    ("cross 32x32", 1024, 77, 8, 80),
    # the same with each head zero-padded to a tensor-core-friendly size (the scores and outputs
    # are the same; does a wider head run faster?)
    ("self 64 p64", 4096, 4096, 8, 64),
    ("self 64 p48", 4096, 4096, 8, 48),
    ("self 32 p96", 1024, 1024, 8, 96),
    ("self 32 p128", 1024, 1024, 8, 128),
    ("self 16 p192", 256, 256, 8, 192),
    ("self 16 p256", 256, 256, 8, 256),
    ("cross 64 p64", 4096, 77, 8, 64),
    ("cross 32 p128", 1024, 77, 8, 128),
]
BACKENDS = [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
            ("efficient", SDPBackend.EFFICIENT_ATTENTION)]
print("torch", torch.__version__, "cudnn", torch.backends.cudnn.version(), torch.cuda.get_device_name())
for name, nq, nk, h, d in SHAPES:
    # kiln's layout: [B, tokens, heads * d]; torch wants [B, heads, tokens, d] (a strided view)
    q = torch.randn(B, nq, h, d, device="cuda", dtype=torch.float16).transpose(1, 2)
    k = torch.randn(B, nk, h, d, device="cuda", dtype=torch.float16).transpose(1, 2)
    v = torch.randn(B, nk, h, d, device="cuda", dtype=torch.float16).transpose(1, 2)
    flop = 4.0 * B * h * nq * nk * d
    for bname, be in BACKENDS:
        try:
            with sdpa_kernel([be]):
                for _ in range(3):
                    F.scaled_dot_product_attention(q, k, v)
                torch.cuda.synchronize()
                n = 50
                t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                t0.record()
                for _ in range(n):
                    F.scaled_dot_product_attention(q, k, v)
                t1.record()
                torch.cuda.synchronize()
                ms = t0.elapsed_time(t1) / n
            print(f"{name:12s} B={B} nq={nq} nk={nk} h={h} d={d} {bname:9s} {ms:.3f} ms {flop / ms / 1e9:.0f} TFLOP/s")
        except Exception as e:  # a backend that does not take the shape
            print(f"{name:12s} {bname:9s} unavailable: {str(e).splitlines()[0][:100]}")
