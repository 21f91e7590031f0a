"""tests/ref/sd_keys.py -- the key names and shapes of an LDM-format SD 1.x checkpoint, built
from a configuration (SD 1.5 or the tiny test model), and random weights for them.

Owns: sd_keys(config) -> ordered dict name -> (shape, dtype); random_weights(...).
Used by check_ref.py (the SD 1.5 config must reproduce tests/data/sd15_keys.json exactly),
by bench_torch_unet.py (full-size random UNet without a file) and by make_golden.py --fake
(a random tiny checkpoint for development before `kiln ckpt --tiny` existed).
"""

import numpy as np

from sd_ref import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX

SD15 = dict(
    clip=dict(vocab_size=49408, n_positions=77, width=768, n_layers=12, ff_dim=3072),
    unet=dict(in_channels=4, out_channels=4, model_channels=320, channel_mult=[1, 2, 4, 4],
              num_res_blocks=2, attn_levels=[True, True, True, False], transformer_depth=1,
              context_dim=768),
    vae=dict(ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2, z_channels=4, embed_dim=4),
)


def tiny_config(vocab_size=1000):
    """The tiny model of src/model/config.h (sd_config_tiny); attention levels as SD 1.5."""
    return dict(
        clip=dict(vocab_size=vocab_size, n_positions=77, width=128, n_layers=12, ff_dim=512),
        unet=dict(in_channels=4, out_channels=4, model_channels=32, channel_mult=[1, 1, 2, 2],
                  num_res_blocks=2, attn_levels=[True, True, True, False], transformer_depth=1,
                  context_dim=128),
        vae=dict(ch=32, ch_mult=[1, 1, 2, 2], num_res_blocks=2, z_channels=4, embed_dim=4),
    )


# ===== Key builders =====

def _clip_keys(c, out):
    p = CLIP_PREFIX
    w, f = c["width"], c["ff_dim"]
    out[p + "embeddings.token_embedding.weight"] = ([c["vocab_size"], w], "F16")
    out[p + "embeddings.position_embedding.weight"] = ([c["n_positions"], w], "F16")
    for i in range(c["n_layers"]):
        q = f"{p}encoder.layers.{i}."
        out[q + "layer_norm1.weight"] = ([w], "F16")
        out[q + "layer_norm1.bias"] = ([w], "F16")
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[f"{q}self_attn.{n}.weight"] = ([w, w], "F16")
            out[f"{q}self_attn.{n}.bias"] = ([w], "F16")
        out[q + "layer_norm2.weight"] = ([w], "F16")
        out[q + "layer_norm2.bias"] = ([w], "F16")
        out[q + "mlp.fc1.weight"] = ([f, w], "F16")
        out[q + "mlp.fc1.bias"] = ([f], "F16")
        out[q + "mlp.fc2.weight"] = ([w, f], "F16")
        out[q + "mlp.fc2.bias"] = ([w], "F16")
    out[p + "final_layer_norm.weight"] = ([w], "F16")
    out[p + "final_layer_norm.bias"] = ([w], "F16")


def _wb(out, p, wshape, dt="F16"):
    out[p + "weight"] = (list(wshape), dt)
    out[p + "bias"] = ([wshape[0]], dt)


def _res(out, p, cin, cout, temb):
    _wb(out, p + "in_layers.0.", [cin])
    _wb(out, p + "in_layers.2.", [cout, cin, 3, 3])
    _wb(out, p + "emb_layers.1.", [cout, temb])
    _wb(out, p + "out_layers.0.", [cout])
    _wb(out, p + "out_layers.3.", [cout, cout, 3, 3])
    if cin != cout:
        _wb(out, p + "skip_connection.", [cout, cin, 1, 1])


def _st(out, p, c, ctx, depth):
    _wb(out, p + "norm.", [c])
    _wb(out, p + "proj_in.", [c, c, 1, 1])
    for d in range(depth):
        q = f"{p}transformer_blocks.{d}."
        for a, kv in (("attn1", c), ("attn2", ctx)):
            out[f"{q}{a}.to_q.weight"] = ([c, c], "F16")
            out[f"{q}{a}.to_k.weight"] = ([c, kv], "F16")
            out[f"{q}{a}.to_v.weight"] = ([c, kv], "F16")
            _wb(out, f"{q}{a}.to_out.0.", [c, c])
        _wb(out, q + "ff.net.0.proj.", [8 * c, c])
        _wb(out, q + "ff.net.2.", [c, 4 * c])
        for n in ("norm1", "norm2", "norm3"):
            _wb(out, f"{q}{n}.", [c])
    _wb(out, p + "proj_out.", [c, c, 1, 1])


def _unet_keys(u, out):
    p = UNET_PREFIX
    mc = u["model_channels"]
    temb = 4 * mc
    ctx, depth, nrb = u["context_dim"], u["transformer_depth"], u["num_res_blocks"]
    mults, attn = u["channel_mult"], u["attn_levels"]
    _wb(out, p + "time_embed.0.", [temb, mc])
    _wb(out, p + "time_embed.2.", [temb, temb])
    _wb(out, p + "input_blocks.0.0.", [mc, u["in_channels"], 3, 3])
    chans, ch, idx = [mc], mc, 1
    for lv, m in enumerate(mults):
        for _ in range(nrb):
            _res(out, f"{p}input_blocks.{idx}.0.", ch, m * mc, temb)
            ch = m * mc
            if attn[lv]:
                _st(out, f"{p}input_blocks.{idx}.1.", ch, ctx, depth)
            chans.append(ch)
            idx += 1
        if lv != len(mults) - 1:
            _wb(out, f"{p}input_blocks.{idx}.0.op.", [ch, ch, 3, 3])
            chans.append(ch)
            idx += 1
    _res(out, p + "middle_block.0.", ch, ch, temb)
    _st(out, p + "middle_block.1.", ch, ctx, depth)
    _res(out, p + "middle_block.2.", ch, ch, temb)
    idx = 0
    for lv in reversed(range(len(mults))):
        for i in range(nrb + 1):
            ich = chans.pop()
            _res(out, f"{p}output_blocks.{idx}.0.", ch + ich, mults[lv] * mc, temb)
            ch = mults[lv] * mc
            j = 1
            if attn[lv]:
                _st(out, f"{p}output_blocks.{idx}.1.", ch, ctx, depth)
                j = 2
            if lv and i == nrb:
                _wb(out, f"{p}output_blocks.{idx}.{j}.conv.", [ch, ch, 3, 3])
            idx += 1
    _wb(out, p + "out.0.", [mc])
    _wb(out, p + "out.2.", [u["out_channels"], mc, 3, 3])


def _vres(out, p, cin, cout):
    _wb(out, p + "norm1.", [cin])
    _wb(out, p + "conv1.", [cout, cin, 3, 3])
    _wb(out, p + "norm2.", [cout])
    _wb(out, p + "conv2.", [cout, cout, 3, 3])
    if cin != cout:
        _wb(out, p + "nin_shortcut.", [cout, cin, 1, 1])


def _vmid(out, p, c):
    _vres(out, p + "mid.block_1.", c, c)
    _wb(out, p + "mid.attn_1.norm.", [c])
    for n in ("q", "k", "v", "proj_out"):
        _wb(out, f"{p}mid.attn_1.{n}.", [c, c, 1, 1])
    _vres(out, p + "mid.block_2.", c, c)


def _vae_keys(v, out):
    p = VAE_PREFIX + "encoder."
    ch, mults, nrb, z, e = v["ch"], v["ch_mult"], v["num_res_blocks"], v["z_channels"], v["embed_dim"]
    _wb(out, p + "conv_in.", [ch, 3, 3, 3])
    cin = ch
    for lv, m in enumerate(mults):
        for b in range(nrb):
            _vres(out, f"{p}down.{lv}.block.{b}.", cin, ch * m)
            cin = ch * m
        if lv != len(mults) - 1:
            _wb(out, f"{p}down.{lv}.downsample.conv.", [cin, cin, 3, 3])
    _vmid(out, p, cin)
    _wb(out, p + "norm_out.", [cin])
    _wb(out, p + "conv_out.", [2 * z, cin, 3, 3])
    p = VAE_PREFIX + "decoder."
    cin = ch * mults[-1]
    _wb(out, p + "conv_in.", [cin, z, 3, 3])
    _vmid(out, p, cin)
    ups = {}
    for lv in reversed(range(len(mults))):
        blk = {}
        for b in range(nrb + 1):
            _vres(blk, f"{p}up.{lv}.block.{b}.", cin, ch * mults[lv])
            cin = ch * mults[lv]
        if lv != 0:
            _wb(blk, f"{p}up.{lv}.upsample.conv.", [cin, cin, 3, 3])
        ups[lv] = blk
    for lv in range(len(mults)):  # stored in index order up.0 .. up.3
        out.update(ups[lv])
    _wb(out, p + "norm_out.", [ch])
    _wb(out, p + "conv_out.", [3, ch, 3, 3])
    _wb(out, VAE_PREFIX + "quant_conv.", [2 * e, 2 * z, 1, 1])
    _wb(out, VAE_PREFIX + "post_quant_conv.", [z, e, 1, 1])


def sd_keys(cfg, parts=("unet", "vae", "clip")):
    """Ordered dict name -> (shape list, dtype) of the networks' weights (no buffers)."""
    out = {}
    if "unet" in parts:
        _unet_keys(cfg["unet"], out)
    if "vae" in parts:
        _vae_keys(cfg["vae"], out)
    if "clip" in parts:
        _clip_keys(cfg["clip"], out)
    return out


# ===== Random weights =====

def random_array(name, shape, rng):
    """A random float32 array with a sensible scale for the tensor's role:
    norm weights ~ 1 + 0.1 N, biases ~ 0.05 N, embeddings ~ 0.5 N, matrices ~ N / sqrt(fan_in)."""
    shape = tuple(shape)
    if name.endswith(".bias"):
        return (0.05 * rng.standard_normal(shape)).astype(np.float32)
    if len(shape) == 1:  # norm weight
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    if "embedding" in name:
        return (0.5 * rng.standard_normal(shape)).astype(np.float32)
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def random_checkpoint(cfg, seed):
    """dict name -> float16 numpy array for every key of sd_keys(cfg)."""
    rng = np.random.default_rng(seed)
    return {k: random_array(k, s, rng).astype(np.float16) for k, (s, _dt) in sd_keys(cfg).items()}
