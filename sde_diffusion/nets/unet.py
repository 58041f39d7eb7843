"""A compact DDPM/ADM-style U-Net noise predictor.

Architecture after Ho et al. 2020 ("Denoising Diffusion Probabilistic Models", App. B) with the
refinements of Dhariwal & Nichol 2021 ("Diffusion Models Beat GANs on Image Synthesis", Sec. 3):
residual blocks with GroupNorm + SiLU, a sinusoidal timestep embedding (Vaswani et al. 2017)
fed to every residual block through a learned scale/shift of the second normalisation
("AdaGN"), multi-head self-attention at chosen resolutions, dropout, and zero-initialised
output layers so every residual branch starts as the identity.

``UNet(**net.config)`` rebuilds an identical architecture; ``forward(x, timesteps)`` takes
float timesteps of shape (B,) (or a scalar), fractional values allowed.

Class conditioning (``num_classes=C``): a learned embedding of the label is added to the timestep
embedding (ADM's class-conditional U-Net, Dhariwal & Nichol 2021, Sec. 3), with one extra row,
index C, for the *null class* that classifier-free guidance (Ho & Salimans 2022) uses as its
unconditional input; ``forward(x, timesteps, class_labels=None)`` uses the null class when no label
is given. The keyword is diffusers' ``UNet2DModel`` name.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet", "timestep_embedding"]


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, shape (B,) -> (B, dim).

    Frequencies are geometric from 1 to 1/max_period (Vaswani et al. 2017; Ho et al. 2020)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _groups(channels: int, max_groups: int = 32) -> int:
    g = min(max_groups, channels)
    while channels % g:
        g -= 1
    return g


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(channels), channels, eps=1e-5)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GN-SiLU-conv, AdaGN timestep modulation, GN-SiLU-dropout-conv (zero init), skip."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = _norm(cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, residual, zero-initialised output."""

    def __init__(self, channels: int, head_channels: int):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        if channels % self.heads:
            raise ValueError(f"channels {channels} not divisible into {self.heads} attention heads")
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (b, heads, hw, d)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class _Level(nn.Module):
    def __init__(self, res: ResBlock, attn: Optional[AttentionBlock]):
        super().__init__()
        self.res = res
        self.attn = attn if attn is not None else nn.Identity()

    def forward(self, x, emb):
        return self.attn(self.res(x, emb))


class UNet(nn.Module):
    """DDPM/ADM-style U-Net ``forward(x, timesteps) -> same shape as x`` (out_channels).

    Args:
        in_channels / out_channels: image channels in / out (out defaults to in).
        base_channels: width of the first level; level i has ``base_channels * channel_mults[i]``.
        channel_mults: one multiplier per resolution level (len L: L-1 downsamplings by 2).
        num_res_blocks: residual blocks per level on the way down (the way up has one more).
        attention_resolutions: spatial sizes (for ``image_size`` inputs) that get self-attention;
            the middle block always has attention.
        image_size: nominal input size, used only to place attention; any H, W divisible by
            2**(L-1) runs (e.g. 8x8 up to 64x64).
        dropout: dropout rate inside residual blocks (Ho et al. 2020 use 0.1).
        head_channels: channels per attention head.
        num_classes: number of class labels (0..C-1) for a class-conditional net; label C is the
            learned null class. ``None``: unconditional.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: Optional[int] = None,
        base_channels: int = 64,
        channel_mults: Sequence[int] = (1, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (4,),
        image_size: int = 8,
        dropout: float = 0.1,
        head_channels: int = 32,
        num_classes: Optional[int] = None,
    ):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("base_channels", base_channels),
                        ("num_res_blocks", num_res_blocks), ("image_size", image_size), ("head_channels", head_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        channel_mults = tuple(int(m) for m in channel_mults)
        if not channel_mults or min(channel_mults) < 1:
            raise ValueError(f"channel_mults must be a non-empty sequence of integers >= 1, got {channel_mults!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be None or an integer >= 1, got {num_classes!r}")
        attention_resolutions = tuple(int(r) for r in attention_resolutions)
        self.config = dict(
            in_channels=in_channels, out_channels=out_channels, base_channels=base_channels,
            channel_mults=list(channel_mults), num_res_blocks=num_res_blocks,
            attention_resolutions=list(attention_resolutions), image_size=image_size,
            dropout=float(dropout), head_channels=head_channels,
        )
        if num_classes is not None:  # absent from unconditional configs, so old config.json files still match
            self.config["num_classes"] = num_classes
        self.downsample_factor = 2 ** (len(channel_mults) - 1)
        emb_dim = 4 * base_channels
        self.base_channels = base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.num_classes = num_classes
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes is not None else None  # row C = null
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        def attn(ch, res):
            return AttentionBlock(ch, head_channels) if res in attention_resolutions else None

        self.down = nn.ModuleList()
        skips = [base_channels]
        ch, res = base_channels, image_size
        for i, m in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(_Level(ResBlock(ch, base_channels * m, emb_dim, dropout), attn(base_channels * m, res)))
                ch = base_channels * m
                skips.append(ch)
            if i < len(channel_mults) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
                res //= 2
        self.mid1 = ResBlock(ch, ch, emb_dim, dropout)
        self.mid_attn = AttentionBlock(ch, head_channels)
        self.mid2 = ResBlock(ch, ch, emb_dim, dropout)
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(channel_mults))):
            for _ in range(num_res_blocks + 1):
                cout = base_channels * m
                self.up.append(_Level(ResBlock(ch + skips.pop(), cout, emb_dim, dropout), attn(cout, res)))
                ch = cout
            if i > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)))
                res *= 2
        self.norm_out = _norm(ch)
        self.conv_out = _zero(nn.Conv2d(ch, out_channels, 3, padding=1))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor, timesteps, class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config["in_channels"]:
            raise ValueError(f"UNet expects input (B, {self.config['in_channels']}, H, W), got {tuple(x.shape)}")
        f = self.downsample_factor
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"input size {tuple(x.shape[2:])} must be divisible by {f} for {len(self.config['channel_mults'])} levels")
        t = torch.as_tensor(timesteps, device=x.device, dtype=torch.float32)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"timesteps must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
        emb = self.time_mlp(timestep_embedding(t, self.base_channels))
        if self.class_emb is not None:
            if class_labels is None:  # unconditional: the null class
                class_labels = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            class_labels = torch.as_tensor(class_labels, device=x.device)
            if class_labels.shape != (x.shape[0],) or class_labels.dtype.is_floating_point:
                raise ValueError(f"class_labels must be integers of shape ({x.shape[0]},), got {class_labels.dtype} {tuple(class_labels.shape)}")
            if bool(((class_labels < 0) | (class_labels > self.num_classes)).any()):
                raise ValueError(f"class_labels must lie in 0..{self.num_classes - 1} (or {self.num_classes} = null class)")
            emb = emb + self.class_emb(class_labels.long())
        elif class_labels is not None:
            raise ValueError("this UNet is unconditional (num_classes=None) and takes no class_labels")
        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, _Level) else layer(h)
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, _Level):
                h = layer(torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))
