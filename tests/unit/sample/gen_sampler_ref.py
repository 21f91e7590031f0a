#!/usr/bin/python3
# tests/unit/sample/gen_sampler_ref.py -- prints the torch reference values that
# test_sampler.c embeds (TORCH_REF). Run with Debian's /usr/bin/python3 (torch 1.13):
#   /usr/bin/python3 tests/unit/sample/gen_sampler_ref.py
# Each sampler below is a plain re-statement of the update rules of ComfyUI v0.3.64's
# comfy/k_diffusion/sampling.py on float32 torch tensors (sigmas as a float32 tensor, 0-d
# tensor scalars, a CPU generator for ancestral noise), with the fake model of the C test:
#   D(x, s) = x * (0.8 / (1 + s*s)) + 0.25 * off,  off[j] = ((j % 7) - 3) * 0.1
# The start latent is torch.randn(N) from manual_seed(1234) times sigmas[0]; ancestral noise
# uses torch.Generator().manual_seed(5). lms coefficients are exact rational integrals.
import struct
from fractions import Fraction
import torch

N = 20
SIG = [14.614642, 9.0, 5.0, 2.5, 1.0, 0.3, 0.0]
sigmas = torch.tensor(SIG, dtype=torch.float32)
off = torch.tensor([((j % 7) - 3) * 0.1 for j in range(N)], dtype=torch.float32)


def model(x, s):
    c = torch.tensor(0.8, dtype=torch.float32) / (1 + s * s)
    return x * c + 0.25 * off


def start():
    g = torch.manual_seed(1234)
    return torch.randn(N, generator=g) * sigmas[0]


def noise_sampler():
    g = torch.Generator().manual_seed(5)
    return lambda: torch.randn(N, generator=g)


def to_d(x, s, den):
    return (x - den) / s


def anc(s, sn):
    su = min(sn, 1.0 * (sn ** 2 * (s ** 2 - sn ** 2) / s ** 2) ** 0.5)
    sd = (sn ** 2 - su ** 2) ** 0.5
    return sd, su


def euler(x):
    for i in range(len(sigmas) - 1):
        s, sn = sigmas[i], sigmas[i + 1]
        den = model(x, s)
        x = x + to_d(x, s, den) * (sn - s)
    return x


def euler_ancestral(x):
    ns = noise_sampler()
    for i in range(len(sigmas) - 1):
        s, sn = sigmas[i], sigmas[i + 1]
        den = model(x, s)
        sd, su = anc(s, sn)
        if sd == 0:
            x = den
        else:
            x = x + to_d(x, s, den) * (sd - s) + ns() * 1.0 * su
    return x


def heun(x):
    for i in range(len(sigmas) - 1):
        s, sn = sigmas[i], sigmas[i + 1]
        den = model(x, s)
        d = to_d(x, s, den)
        dt = sn - s
        if sn == 0:
            x = x + d * dt
        else:
            x2 = x + d * dt
            d2 = to_d(x2, sn, model(x2, sn))
            x = x + (d + d2) / 2 * dt
    return x


def dpm_2(x, ancestral=False):
    ns = noise_sampler()
    for i in range(len(sigmas) - 1):
        s, sn = sigmas[i], sigmas[i + 1]
        den = model(x, s)
        if ancestral:
            target, su = anc(s, sn)
        else:
            target = sn
        d = to_d(x, s, den)
        if target == 0:
            x = x + d * (target - s)
        else:
            sm = s.log().lerp(target.log(), 0.5).exp()
            x2 = x + d * (sm - s)
            d2 = to_d(x2, sm, model(x2, sm))
            x = x + d2 * (target - s)
            if ancestral:
                x = x + ns() * 1.0 * su
    return x


def lms_coeff(order, t, i, j):
    # exact integral of prod_{k != j} (tau - t[i-k]) / (t[i-j] - t[i-k]) over [t[i], t[i+1]]
    poly = [Fraction(1)]  # coefficients, lowest degree first
    for k in range(order):
        if k == j:
            continue
        den = t[i - j] - t[i - k]
        new = [Fraction(0)] * (len(poly) + 1)
        for p, c in enumerate(poly):
            new[p + 1] += c / den
            new[p] -= c * t[i - k] / den
        poly = new
    def prim(u):
        return sum(c * u ** (p + 1) / (p + 1) for p, c in enumerate(poly))
    return float(prim(t[i + 1]) - prim(t[i]))


def lms(x):
    t = [Fraction(float(v)) for v in sigmas]
    ds = []
    for i in range(len(sigmas) - 1):
        s, sn = sigmas[i], sigmas[i + 1]
        den = model(x, s)
        ds.append(to_d(x, s, den))
        ds = ds[-4:]
        if sn == 0:
            x = den
        else:
            order = min(i + 1, 4)
            coeffs = [lms_coeff(order, t, i, j) for j in range(order)]
            x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x


def dpmpp_2m(x):
    old = None
    for i in range(len(sigmas) - 1):
        s, sn = sigmas[i], sigmas[i + 1]
        den = model(x, s)
        t, tn = s.log().neg(), sn.log().neg()
        h = tn - t
        if old is None or sn == 0:
            x = (tn.neg().exp() / t.neg().exp()) * x - (-h).expm1() * den
        else:
            r = (t - sigmas[i - 1].log().neg()) / h
            dd = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old
            x = (tn.neg().exp() / t.neg().exp()) * x - (-h).expm1() * dd
        old = den
    return x


def dpmpp_2s_ancestral(x):
    ns = noise_sampler()
    for i in range(len(sigmas) - 1):
        s, sn = sigmas[i], sigmas[i + 1]
        den = model(x, s)
        sd, su = anc(s, sn)
        if sd == 0:
            x = x + to_d(x, s, den) * (sd - s)
        else:
            t, tn = s.log().neg(), sd.log().neg()
            h = tn - t
            sm = t + 0.5 * h
            x2 = (sm.neg().exp() / t.neg().exp()) * x - (-h * 0.5).expm1() * den
            den2 = model(x2, sm.neg().exp())
            x = (tn.neg().exp() / t.neg().exp()) * x - (-h).expm1() * den2
        if sn > 0:
            x = x + ns() * 1.0 * su
    return x


def lcm(x):
    ns = noise_sampler()
    for i in range(len(sigmas) - 1):
        s, sn = sigmas[i], sigmas[i + 1]
        x = model(x, s)
        if sn > 0:
            x = ns() * sn + x
    return x


RUNS = [("euler", euler), ("euler_ancestral", euler_ancestral), ("heun", heun),
        ("dpm_2", lambda x: dpm_2(x)), ("dpm_2_ancestral", lambda x: dpm_2(x, True)),
        ("lms", lms), ("dpmpp_2m", dpmpp_2m), ("dpmpp_2s_ancestral", dpmpp_2s_ancestral),
        ("lcm", lcm)]


def bits(v):
    return "0x%08x" % struct.unpack("<I", struct.pack("<f", float(v)))[0]


print("/* generated by gen_sampler_ref.py with torch %s */" % torch.__version__)
print("static const struct { const char *sampler; uint32_t bits[%d]; } TORCH_REF[] = {" % N)
for name, fn in RUNS:
    out = fn(start().clone())
    vals = ", ".join(bits(v) for v in out)
    print('    {"%s", {%s}},' % (name, vals))
print("};")
