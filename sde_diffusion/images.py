"""Sample grids as PNG (Pillow), for people who would rather look than read."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

__all__ = ["make_grid", "save_grid"]


def make_grid(samples: torch.Tensor, nrow: int = None, pad: int = 1, value_range=(-1.0, 1.0), scale: int = 1) -> np.ndarray:
    """(N, C, H, W) samples in ``value_range`` -> uint8 image (rows, cols[, 3]) with ``pad`` pixels
    between tiles, each pixel repeated ``scale`` times."""
    x = torch.as_tensor(samples).detach().cpu().to(torch.float64)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"samples must have shape (N, 1 or 3, H, W), got {tuple(x.shape)}")
    lo, hi = value_range
    x = ((x - lo) / (hi - lo)).clamp(0, 1)
    n, c, h, w = x.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    ncol_tiles, nrow_tiles = nrow, int(math.ceil(n / nrow))
    H, W = nrow_tiles * (h + pad) + pad, ncol_tiles * (w + pad) + pad
    canvas = np.ones((c, H, W))
    for k in range(n):
        r, q = divmod(k, nrow)
        canvas[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = x[k].numpy()
    img = (canvas * 255 + 0.5).astype(np.uint8)
    if scale > 1:
        img = img.repeat(scale, axis=1).repeat(scale, axis=2)
    return img[0] if c == 1 else img.transpose(1, 2, 0)


def save_grid(samples: torch.Tensor, path, nrow: int = None, value_range=(-1.0, 1.0), scale: int = None) -> Path:
    """Write a PNG grid of ``samples``; small images (<= 16 px) are upscaled 4x for viewing."""
    from PIL import Image

    h = samples.shape[-1]
    scale = scale if scale is not None else (4 if h <= 16 else 1)
    img = make_grid(samples, nrow=nrow, value_range=value_range, scale=scale)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(img).save(tmp, format="PNG")
    tmp.replace(path)
    return path
