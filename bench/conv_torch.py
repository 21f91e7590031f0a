#!/usr/bin/env python3
"""bench/conv_torch.py -- reference figures for kiln's convolutions: times PyTorch's conv2d
(cuDNN, channels-last, fp16) at SD 1.5's UNet convolution shapes, batch 8 (4 images x CFG), on
the lent GPU machine (which has torch; this machine does not), with cuDNN's heuristics
(benchmark off) and with its autotuner (benchmark on). Prints ms per call and TFLOP/s, to set
beside kiln's medians (KILN_CUDA_PROFILE=1, docs/PERF.md).
Usage: python3 bench/conv_torch.py [batch]"""
import sys
import torch
import torch.nn.functional as F

B = int(sys.argv[1]) if len(sys.argv) > 1 else 8
SHAPES = [  # (side, in channels, out channels, stride)
    (64, 320, 320, 1), (64, 640, 320, 1), (64, 960, 320, 1), (64, 320, 320, 2),
    (32, 320, 640, 1), (32, 640, 640, 1), (32, 960, 640, 1), (32, 1280, 640, 1), (32, 1920, 640, 1),
    (32, 640, 640, 2), (32, 1280, 1280, 1),
    (16, 640, 1280, 1), (16, 1280, 1280, 1), (16, 1920, 1280, 1), (16, 2560, 1280, 1), (16, 1280, 1280, 2),
    (8, 1280, 1280, 1), (8, 2560, 1280, 1),
]
print("torch", torch.__version__, "cudnn", torch.backends.cudnn.version(), torch.cuda.get_device_name())
tot = {False: 0.0, True: 0.0}
for side, ci, co, stride in SHAPES:
    x = torch.randn(B, ci, side, side, device="cuda", dtype=torch.float16).to(memory_format=torch.channels_last)
    w = torch.randn(co, ci, 3, 3, device="cuda", dtype=torch.float16).to(memory_format=torch.channels_last)
    b = torch.randn(co, device="cuda", dtype=torch.float16)
    so = side // stride
    flop = 2.0 * B * so * so * co * ci * 9
    line = f"[{B}, {side}, {side}, {ci}] -> {co} s{stride}"
    for bench in (False, True):
        torch.backends.cudnn.benchmark = bench
        for _ in range(5):
            F.conv2d(x, w, b, stride=stride, padding=1)
        torch.cuda.synchronize()
        n = 50
        t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0.record()
        for _ in range(n):
            F.conv2d(x, w, b, stride=stride, padding=1)
        t1.record()
        torch.cuda.synchronize()
        ms = t0.elapsed_time(t1) / n
        tot[bench] += ms
        line += f"  {'tuned' if bench else 'heur.'} {ms:.4f} ms {flop / ms / 1e9:.0f} TFLOP/s"
    print(line)
print(f"sum over the shapes (each once): heuristics {tot[False]:.3f} ms, tuned {tot[True]:.3f} ms")
