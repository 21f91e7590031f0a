#!/usr/bin/python3
"""tests/ref/bench_torch_unet.py -- CPU baseline: one SD 1.5 UNet evaluation in plain PyTorch.

Usage: nice /usr/bin/python3 tests/ref/bench_torch_unet.py [--threads N] [--warmup 1] [--repeats 3]
Builds the full SD 1.5 UNet (the shapes of tests/data/sd15_keys.json, random fp32 weights made
in memory, no file), and times sd_ref.unet_forward at latent 64x64, batch 2 (a CFG step),
context [2,77,768], fp32. Prints seconds per UNet evaluation (median of --repeats after --warmup, wall clock, plus the
process CPU time and the load average, since the machine may be shared) and torch.get_num_threads(). --threads N calls torch.set_num_threads(N) first; without it the
torch default of the machine is used.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sd_keys  # noqa: E402
import sd_ref  # noqa: E402


def build_unet(seed=0):
    """dict name -> float32 tensor of the SD 1.5 UNet, random with sensible scales."""
    g = torch.Generator().manual_seed(seed)
    W = {}
    for name, (shape, _dt) in sd_keys.sd_keys(sd_keys.SD15, parts=("unet",)).items():
        t = torch.empty(shape, dtype=torch.float32)
        if name.endswith(".bias"):
            t.normal_(0.0, 0.05, generator=g)
        elif len(shape) == 1:
            t.normal_(1.0, 0.1, generator=g)
        else:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            t.normal_(0.0, fan_in ** -0.5, generator=g)
        W[name] = t
    return W


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    W = build_unet()
    n_params = sum(t.numel() for t in W.values())
    build_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(1)
    x = torch.randn(a.batch, 4, a.latent, a.latent, generator=g)
    ctx = torch.randn(a.batch, 77, 768, generator=g)
    ts = torch.full((a.batch,), 500.0)
    times, cpu = [], []
    load0 = os.getloadavg()[0]
    with torch.no_grad():
        for i in range(a.warmup + a.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            out = sd_ref.unet_forward(W, x, ts, ctx)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if i >= a.warmup:
                times.append(dt)
                cpu.append(dc)
            print(f"  run {i} ({'warm-up' if i < a.warmup else 'timed'}): {dt:.2f} s wall, "
                  f"{dc:.2f} s CPU, load {os.getloadavg()[0]:.2f}", flush=True)
    assert out.shape == x.shape and torch.isfinite(out).all()
    res = {
        "seconds_per_unet_eval_median": round(statistics.median(times), 3),
        "times_s": [round(t, 3) for t in times],
        "cpu_s_median": round(statistics.median(cpu), 3),
        "load_avg_1min_before_after": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "torch_num_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "unet_params": n_params,
        "latent": [a.batch, 4, a.latent, a.latent],
        "context": [a.batch, 77, 768],
        "dtype": "float32",
        "build_weights_s": round(build_s, 1),
        "machine": platform.machine(),
    }
    print(json.dumps(res))


if __name__ == "__main__":
    main()
