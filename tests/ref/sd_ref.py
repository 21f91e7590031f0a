"""tests/ref/sd_ref.py -- an independent plain-PyTorch reference of SD 1.x (CLIP-L, UNet, VAE,
EPS schedule, CFG denoiser, euler + 'normal' scheduler) with ComfyUI's numerics.

Owns: nothing but pure functions over a weight dict W (checkpoint key -> torch tensor, float32
or float64 on the CPU). Every network is read from the checkpoint's key names and shapes, so the
same code runs the tiny test model and the full SD 1.5 layout.
Written for kiln's golden tests; not copied from ComfyUI/ldm (their sources were read for facts).
Shapes in comments: B batch, T tokens (77), W CLIP width, C channels, H/W spatial.
"""

import math

import torch
import torch.nn.functional as F

CLIP_PREFIX = "cond_stage_model.transformer.text_model."
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_SCALE = 0.18215
SD1_UNET_HEADS = 8  # SD1 fixes the head count (d_head = C/8)


# ===== Weights =====

def weights_from_numpy(arrays, dtype=torch.float32):
    """dict name -> numpy array  ->  dict name -> torch tensor (floats cast to dtype)."""
    out = {}
    for k, v in arrays.items():
        t = torch.from_numpy(v.copy())
        if t.is_floating_point():
            t = t.to(dtype)
        out[k] = t
    return out


def _has(W, name):
    return name in W


def _linear(W, p, x):
    """x [..., in] -> [..., out] with p+'weight' [out, in] and optional p+'bias'."""
    return F.linear(x, W[p + "weight"], W.get(p + "bias"))


def _conv(W, p, x, stride=1, padding=None):
    """x [B, Cin, H, W] -> [B, Cout, H', W'] with p+'weight' [Cout, Cin, k, k]."""
    w = W[p + "weight"]
    if padding is None:
        padding = w.shape[-1] // 2
    return F.conv2d(x, w, W.get(p + "bias"), stride=stride, padding=padding)


def _group_norm(W, p, x, eps, groups=32):
    return F.group_norm(x, groups, W[p + "weight"], W[p + "bias"], eps=eps)


def _layer_norm(W, p, x, eps=1e-5):
    return F.layer_norm(x, (x.shape[-1],), W[p + "weight"], W[p + "bias"], eps=eps)


def attention(q, k, v, heads, mask=None):
    """Multi-head scaled dot-product attention, softmax(q k^T / sqrt(d) + mask) v.
    q [B, Nq, heads*d], k/v [B, Nk, heads*d], mask [Nq, Nk] additive -> [B, Nq, heads*d]."""
    b, nq, inner = q.shape
    nk = k.shape[1]
    d = inner // heads
    q = q.reshape(b, nq, heads, d).permute(0, 2, 1, 3)  # [B, h, Nq, d]
    k = k.reshape(b, nk, heads, d).permute(0, 2, 1, 3)  # [B, h, Nk, d]
    v = v.reshape(b, nk, heads, d).permute(0, 2, 1, 3)
    s = torch.matmul(q, k.transpose(-1, -2)) * (d ** -0.5)  # [B, h, Nq, Nk]
    if mask is not None:
        s = s + mask
    p = torch.softmax(s, dim=-1)
    o = torch.matmul(p, v)  # [B, h, Nq, d]
    return o.permute(0, 2, 1, 3).reshape(b, nq, inner)


# ===== CLIP-L text encoder (HF CLIPTextModel layout) =====

def clip_config(W, prefix=CLIP_PREFIX):
    """Read the text encoder's sizes from shapes; heads = width // 64 (12 for CLIP-L, 2 tiny)."""
    vocab, width = W[prefix + "embeddings.token_embedding.weight"].shape
    n_pos = W[prefix + "embeddings.position_embedding.weight"].shape[0]
    n_layers = 0
    while _has(W, f"{prefix}encoder.layers.{n_layers}.layer_norm1.weight"):
        n_layers += 1
    ff = W[prefix + "encoder.layers.0.mlp.fc1.weight"].shape[0]
    return dict(vocab_size=vocab, n_positions=n_pos, width=width, n_layers=n_layers,
                n_heads=max(1, width // 64), ff_dim=ff)


def clip_forward(W, tokens, layer=-1, prefix=CLIP_PREFIX):
    """CLIP text encoder as ComfyUI's SD1 clip runs it.

    tokens: int tensor [B, T]. layer: which layer's output to return, -1 = last, -2 =
    penultimate (CLIPSetLastLayer -2), counted like Python indices over the encoder layers.
    The final LayerNorm is applied to the chosen layer's output in both cases.
    Returns [B, T, W]."""
    cfg = clip_config(W, prefix)
    n, heads = cfg["n_layers"], cfg["n_heads"]
    idx = layer if layer >= 0 else n + layer
    if not 0 <= idx < n:
        raise ValueError(f"clip layer {layer} out of range for {n} layers")
    tokens = tokens.long()
    t = tokens.shape[1]
    tok = W[prefix + "embeddings.token_embedding.weight"]
    pos = W[prefix + "embeddings.position_embedding.weight"]
    x = tok[tokens] + pos[:t][None]  # [B, T, W]
    # causal mask: position i sees j <= i
    mask = torch.full((t, t), float("-inf"), dtype=x.dtype).triu(1)  # [T, T]
    for i in range(idx + 1):
        p = f"{prefix}encoder.layers.{i}."
        h = _layer_norm(W, p + "layer_norm1.", x)
        q = _linear(W, p + "self_attn.q_proj.", h)
        k = _linear(W, p + "self_attn.k_proj.", h)
        v = _linear(W, p + "self_attn.v_proj.", h)
        x = x + _linear(W, p + "self_attn.out_proj.", attention(q, k, v, heads, mask))
        h = _layer_norm(W, p + "layer_norm2.", x)
        h = _linear(W, p + "mlp.fc1.", h)
        h = h * torch.sigmoid(1.702 * h)  # quick_gelu
        x = x + _linear(W, p + "mlp.fc2.", h)
    return _layer_norm(W, prefix + "final_layer_norm.", x)


# ===== UNet (openaimodel UNetModel, SD1 layout) =====

def timestep_embedding(timesteps, dim, max_period=10000.0):
    """Sinusoidal embedding [cos | sin], computed in float32 as ComfyUI does.
    timesteps [B] -> [B, dim]; freqs_k = exp(-ln(max_period) * k / (dim/2)), k < dim/2."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half)
    args = timesteps.float()[:, None] * freqs[None]  # [B, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _unet_resblock(W, p, x, emb):
    """x [B, Cin, H, W], emb [B, E] -> [B, Cout, H, W]. GroupNorm eps 1e-5."""
    h = F.silu(_group_norm(W, p + "in_layers.0.", x, 1e-5))
    h = _conv(W, p + "in_layers.2.", h)
    e = _linear(W, p + "emb_layers.1.", F.silu(emb))  # [B, Cout]
    h = h + e[:, :, None, None]
    h = F.silu(_group_norm(W, p + "out_layers.0.", h, 1e-5))
    h = _conv(W, p + "out_layers.3.", h)
    skip = _conv(W, p + "skip_connection.", x) if _has(W, p + "skip_connection.weight") else x
    return skip + h


def _cross_attn(W, p, x, context, heads):
    """x [B, N, C]; context [B, M, Cctx] or None (self-attention) -> [B, N, C]."""
    ctx = x if context is None else context
    q = _linear(W, p + "to_q.", x)
    k = _linear(W, p + "to_k.", ctx)
    v = _linear(W, p + "to_v.", ctx)
    return _linear(W, p + "to_out.0.", attention(q, k, v, heads))


def _spatial_transformer(W, p, x, context, heads):
    """SpatialTransformer: GroupNorm(32, eps 1e-6), proj_in (1x1 conv, or Linear for SD2-style
    files), transformer blocks, proj_out, outer residual. x [B, C, H, W] -> same."""
    b, c, hh, ww = x.shape
    x_in = x
    h = _group_norm(W, p + "norm.", x, 1e-6)
    linear_proj = W[p + "proj_in.weight"].dim() == 2
    if not linear_proj:
        h = _conv(W, p + "proj_in.", h)
    inner = h.shape[1] if not linear_proj else W[p + "proj_in.weight"].shape[0]
    h = h.permute(0, 2, 3, 1).reshape(b, hh * ww, -1)  # [B, HW, C]
    if linear_proj:
        h = _linear(W, p + "proj_in.", h)
    d = 0
    while _has(W, f"{p}transformer_blocks.{d}.norm1.weight"):
        q = f"{p}transformer_blocks.{d}."
        h = _cross_attn(W, q + "attn1.", _layer_norm(W, q + "norm1.", h), None, heads) + h
        h = _cross_attn(W, q + "attn2.", _layer_norm(W, q + "norm2.", h), context, heads) + h
        g = _linear(W, q + "ff.net.0.proj.", _layer_norm(W, q + "norm3.", h))  # [B, HW, 2*ff]
        val, gate = g.chunk(2, dim=-1)  # GEGLU: first half value, second half gate
        h = _linear(W, q + "ff.net.2.", val * F.gelu(gate)) + h
        d += 1
    if linear_proj:
        h = _linear(W, p + "proj_out.", h)
    h = h.reshape(b, hh, ww, inner).permute(0, 3, 1, 2)  # [B, C, H, W]
    if not linear_proj:
        h = _conv(W, p + "proj_out.", h)
    return h + x_in


def _unet_block(W, p, h, emb, context, heads, out_shape=None):
    """Run the layers p+'0.', p+'1.', ... of one Timestep sequential, by kind read from keys."""
    j = 0
    while True:
        q = f"{p}{j}."
        if _has(W, q + "in_layers.0.weight"):
            h = _unet_resblock(W, q, h, emb)
        elif _has(W, q + "proj_in.weight"):
            h = _spatial_transformer(W, q, h, context, heads)
        elif _has(W, q + "op.weight"):  # Downsample: 3x3 stride 2 pad 1
            h = _conv(W, q + "op.", h, stride=2, padding=1)
        elif _has(W, q + "conv.weight"):  # Upsample: nearest to the skip's size (x2), 3x3 conv
            size = list(out_shape[2:]) if out_shape is not None else [h.shape[2] * 2, h.shape[3] * 2]
            h = F.interpolate(h, size=size, mode="nearest")
            h = _conv(W, q + "conv.", h)
        elif _has(W, q + "weight") and W[q + "weight"].dim() == 4:  # input_blocks.0.0: conv
            h = _conv(W, q, h)
        else:
            break
        j += 1
    if j == 0:
        raise KeyError(f"unet: no layers under {p}")
    return h


def _count(W, fmt):
    n = 0
    while any(k.startswith(fmt.format(n)) for k in W):
        n += 1
    return n


def unet_config(W, prefix=UNET_PREFIX):
    """Read the UNet's structure from key names and shapes (for reports and checks)."""
    mc = W[prefix + "input_blocks.0.0.weight"].shape[0]
    cfg = dict(in_channels=W[prefix + "input_blocks.0.0.weight"].shape[1],
               out_channels=W[prefix + "out.2.weight"].shape[0], model_channels=mc,
               time_embed_dim=W[prefix + "time_embed.0.weight"].shape[0])
    n_in = _count(W, prefix + "input_blocks.{}.")
    mults, attn, nrb, level_blocks = [], [], 0, 0
    level_attn = False
    cur = mc
    for i in range(1, n_in):
        q = f"{prefix}input_blocks.{i}."
        if _has(W, q + "0.op.weight"):
            mults.append(cur // mc)
            attn.append(level_attn)
            nrb = max(nrb, level_blocks)
            level_blocks, level_attn = 0, False
        else:
            cur = W[q + "0.in_layers.2.weight"].shape[0]
            level_blocks += 1
            level_attn = level_attn or _has(W, q + "1.proj_in.weight")
    mults.append(cur // mc)
    attn.append(level_attn)
    nrb = max(nrb, level_blocks)
    depth = _count(W, prefix + "middle_block.1.transformer_blocks.{}.")
    ctx_key = prefix + "middle_block.1.transformer_blocks.0.attn2.to_k.weight"
    cfg.update(channel_mult=mults, num_res_blocks=nrb, attn_levels=attn, transformer_depth=depth,
               context_dim=W[ctx_key].shape[1] if _has(W, ctx_key) else None,
               n_input_blocks=n_in, n_output_blocks=_count(W, prefix + "output_blocks.{}."))
    return cfg


def unet_forward(W, x, timesteps, context, heads=SD1_UNET_HEADS, prefix=UNET_PREFIX):
    """eps prediction. x [B, 4, H, W], timesteps [B] (float), context [B, M, Cctx] -> [B, 4, H, W]."""
    mc = W[prefix + "input_blocks.0.0.weight"].shape[0]
    t_emb = timestep_embedding(timesteps, mc).to(x.dtype)  # [B, mc]
    emb = _linear(W, prefix + "time_embed.2.", F.silu(_linear(W, prefix + "time_embed.0.", t_emb)))
    n_in = _count(W, prefix + "input_blocks.{}.")
    n_out = _count(W, prefix + "output_blocks.{}.")
    hs = []
    h = x
    for i in range(n_in):
        h = _unet_block(W, f"{prefix}input_blocks.{i}.", h, emb, context, heads)
        hs.append(h)
    h = _unet_block(W, prefix + "middle_block.", h, emb, context, heads)
    for i in range(n_out):
        h = torch.cat([h, hs.pop()], dim=1)  # skip concatenation on channels
        out_shape = hs[-1].shape if hs else None
        h = _unet_block(W, f"{prefix}output_blocks.{i}.", h, emb, context, heads, out_shape)
    h = F.silu(_group_norm(W, prefix + "out.0.", h, 1e-5))
    return _conv(W, prefix + "out.2.", h)


# ===== VAE (AutoencoderKL, first_stage_model.*) =====

def _vae_resblock(W, p, x):
    """ResnetBlock without time embedding; GroupNorm(32, eps 1e-6)."""
    h = _conv(W, p + "conv1.", F.silu(_group_norm(W, p + "norm1.", x, 1e-6)))
    h = _conv(W, p + "conv2.", F.silu(_group_norm(W, p + "norm2.", h, 1e-6)))
    if _has(W, p + "nin_shortcut.weight"):
        x = _conv(W, p + "nin_shortcut.", x)
    return x + h


def _vae_attn(W, p, x):
    """Single-head attention over C channels with 1x1 conv q/k/v/proj_out. x [B, C, H, W]."""
    b, c, hh, ww = x.shape
    h = _group_norm(W, p + "norm.", x, 1e-6)
    q = _conv(W, p + "q.", h).reshape(b, c, hh * ww).transpose(1, 2)  # [B, HW, C]
    k = _conv(W, p + "k.", h).reshape(b, c, hh * ww).transpose(1, 2)
    v = _conv(W, p + "v.", h).reshape(b, c, hh * ww).transpose(1, 2)
    o = attention(q, k, v, 1)  # [B, HW, C]
    o = o.transpose(1, 2).reshape(b, c, hh, ww)
    return x + _conv(W, p + "proj_out.", o)


def _vae_mid(W, p, h):
    h = _vae_resblock(W, p + "mid.block_1.", h)
    h = _vae_attn(W, p + "mid.attn_1.", h)
    return _vae_resblock(W, p + "mid.block_2.", h)


def vae_config(W, prefix=VAE_PREFIX):
    p = prefix + "encoder."
    n_levels = _count(W, p + "down.{}.")
    nrb = _count(W, p + "down.0.block.{}.")
    ch = W[p + "conv_in.weight"].shape[0]
    mults = [W[f"{p}down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(n_levels)]
    if any(".attn." in k for k in W if k.startswith(prefix)):
        raise ValueError("vae: attention outside the mid block is not part of SD1's VAE")
    return dict(ch=ch, ch_mult=mults, num_res_blocks=nrb,
                z_channels=W[prefix + "decoder.conv_in.weight"].shape[1],
                embed_dim=W[prefix + "post_quant_conv.weight"].shape[0])


def vae_encode(W, x, prefix=VAE_PREFIX):
    """Posterior mean (ComfyUI's VAEEncode result, before x0.18215).
    x [B, 3, H, W] in [-1, 1] -> [B, z, H/8, W/8]."""
    p = prefix + "encoder."
    n_levels = _count(W, p + "down.{}.")
    nrb = _count(W, p + "down.0.block.{}.")
    h = _conv(W, p + "conv_in.", x)
    for lv in range(n_levels):
        for bi in range(nrb):
            h = _vae_resblock(W, f"{p}down.{lv}.block.{bi}.", h)
        if _has(W, f"{p}down.{lv}.downsample.conv.weight"):
            h = F.pad(h, (0, 1, 0, 1), mode="constant", value=0.0)  # right and bottom only
            h = _conv(W, f"{p}down.{lv}.downsample.conv.", h, stride=2, padding=0)
    h = _vae_mid(W, p, h)
    h = _conv(W, p + "conv_out.", F.silu(_group_norm(W, p + "norm_out.", h, 1e-6)))
    moments = _conv(W, prefix + "quant_conv.", h)  # [B, 2z, h, w]: mean | logvar
    mean, _logvar = moments.chunk(2, dim=1)
    return mean


def vae_decode(W, z, prefix=VAE_PREFIX):
    """Decoder on a LATENT as ComfyUI passes it between nodes (sampler latent / 0.18215).
    z [B, 4, h, w] -> [B, 3, 8h, 8w], roughly in [-1, 1] (not clamped)."""
    p = prefix + "decoder."
    n_levels = _count(W, p + "up.{}.")
    nb = _count(W, p + "up.0.block.{}.")
    h = _conv(W, prefix + "post_quant_conv.", z)
    h = _conv(W, p + "conv_in.", h)
    h = _vae_mid(W, p, h)
    for lv in reversed(range(n_levels)):  # up.3, up.2, up.1, up.0
        for bi in range(nb):
            h = _vae_resblock(W, f"{p}up.{lv}.block.{bi}.", h)
        if _has(W, f"{p}up.{lv}.upsample.conv.weight"):
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = _conv(W, f"{p}up.{lv}.upsample.conv.", h)
    return _conv(W, p + "conv_out.", F.silu(_group_norm(W, p + "norm_out.", h, 1e-6)))


def process_latent_out(x, scale=SD1_SCALE):
    """KSampler's last step: sampler-space latent -> the LATENT the node outputs (x / 0.18215)."""
    return x / scale


def process_latent_in(x, scale=SD1_SCALE):
    """KSampler's first step for a non-empty LATENT (e.g. VAEEncode's): x * 0.18215."""
    return x * scale


def decode_image(W, latent):
    """ComfyUI's VAEDecode of a LATENT (as KSampler outputs it, already / 0.18215):
    decoder(post_quant_conv(latent)), then clamp((x+1)/2, 0, 1), channels last.
    Returns (raw [B,3,H,W] unclamped, image [B,H,W,3] in [0,1])."""
    raw = vae_decode(W, latent)
    img = torch.clamp((raw + 1.0) / 2.0, min=0.0, max=1.0)
    return raw, img.permute(0, 2, 3, 1).contiguous()


def image_to_u8(img):
    """SaveImage's conversion: clip(255*x, 0, 255).astype(uint8) (truncation, no rounding).
    img: float tensor or numpy array in [0, 1] -> numpy uint8 of the same shape."""
    import numpy as np
    a = img.float().numpy() if torch.is_tensor(img) else np.asarray(img, dtype=np.float32)
    return np.clip(255.0 * a, 0, 255).astype(np.uint8)


# ===== EPS discrete schedule (ModelSamplingDiscrete, SD1) =====

class Sd1Schedule:
    """sigmas / log_sigmas (float32 [1000]) of the 'linear' beta schedule 0.00085 .. 0.012."""

    def __init__(self, linear_start=0.00085, linear_end=0.012, n=1000):
        betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, n, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sig = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5  # float64
        self.sigmas = sig.float()
        self.log_sigmas = sig.log().float()

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        """Nearest index in log-sigma (an int64 tensor of sigma's shape)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        dists = sigma.log().reshape(-1)[None, :] - self.log_sigmas[:, None]  # [1000, N]
        return dists.abs().argmin(dim=0).reshape(sigma.shape)

    def sigma(self, t):
        """Log-linear interpolation of sigmas at a (fractional) timestep."""
        t = torch.clamp(torch.as_tensor(t).float(), min=0, max=len(self.sigmas) - 1)
        lo, hi, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi]).exp()


def normal_scheduler(sched, steps):
    """ComfyUI 'normal': timesteps linspace(t(sigma_max), t(sigma_min), steps) (float32),
    sigma(t) each, then a final 0 (no zSNR case for SD1). Returns float32 [steps+1]."""
    start = sched.timestep(sched.sigma_max)
    end = sched.timestep(sched.sigma_min)
    if math.isclose(float(sched.sigma(end)), 0.0, abs_tol=1e-5):
        raise NotImplementedError("zero-terminal-SNR schedule")
    ts = torch.linspace(float(start), float(end), steps)  # float32
    sigs = [float(sched.sigma(ts[i])) for i in range(steps)] + [0.0]
    return torch.tensor(sigs, dtype=torch.float32)


# ===== Denoiser, CFG, sampler =====

def denoise_cfg(W, sched, x, sigma, cond, uncond, cfg, heads=SD1_UNET_HEADS):
    """ComfyUI's CFG denoiser for EPS models, cond and uncond batched.
    x [1, 4, h, w], sigma scalar tensor, cond/uncond [1, M, Cctx] -> denoised [1, 4, h, w]:
    D = x - sigma * eps(x / sqrt(sigma^2 + 1), t = nearest index), then
    D_uncond + (D_cond - D_uncond) * cfg."""
    n = x.shape[0]
    xx = torch.cat([x, x], dim=0)
    ctx = torch.cat([cond, uncond], dim=0).to(x.dtype)
    s = sigma.to(torch.float32).reshape(1).expand(2 * n)  # [2B]
    t = sched.timestep(s).float()
    s = s.to(x.dtype)
    x_in = xx / (s[:, None, None, None] ** 2 + 1.0 ** 2) ** 0.5
    eps = unet_forward(W, x_in, t, ctx, heads)
    den = xx - eps * s[:, None, None, None]
    d_cond, d_uncond = den[:n], den[n:]
    return d_uncond + (d_cond - d_uncond) * cfg


def sample_euler_txt2img(W, sched, noise, cond, uncond, cfg, steps, heads=SD1_UNET_HEADS,
                         callback=None):
    """KSampler(euler, normal, denoise 1) on an empty latent, up to the sampler's result.
    noise [1, 4, h, w] -> (final latent in sampler space, i.e. before process_latent_out's
    / 0.18215, and the sigmas).
    callback(i, denoised) is called after each model evaluation."""
    sigmas = normal_scheduler(sched, steps)
    max_denoise = math.isclose(float(sched.sigma_max), float(sigmas[0]), rel_tol=1e-5) \
        or float(sigmas[0]) > float(sched.sigma_max)
    s0 = sigmas[0]
    scale = torch.sqrt(1.0 + s0 ** 2.0) if max_denoise else s0
    x = noise.to(torch.float32) * scale  # + empty latent (zeros)
    x = x.to(noise.dtype)
    sig = sigmas.to(noise.dtype)
    for i in range(steps):
        den = denoise_cfg(W, sched, x, sigmas[i], cond, uncond, cfg, heads)
        if callback is not None:
            callback(i, den)
        d = (x - den) / sig[i]
        x = x + d * (sig[i + 1] - sig[i])
    return x, sigmas
