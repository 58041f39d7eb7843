"""Samples as images: PNG grids for looking, uint8 arrays and PNG folders for FID tools.

The conversion to pixels is the one used by diffusers' pipelines and the common FID tools:
``round((x - lo) / (hi - lo) * 255)`` clipped to 0..255, where ``(lo, hi)`` is the model's data
range (``[-1, 1]`` unless its config says otherwise).

Layouts:

- ``make_grid`` / ``save_grid``: one PNG holding a grid of tiles (small images upscaled 4x).
- ``to_uint8``: (N, C, H, W) floats -> (N, H, W, C) uint8, the ``arr_0`` layout that the
  guided-diffusion evaluator and ``np.load``-based FID scripts read.
- ``save_png_folder``: one uint8 PNG per sample, ``000000.png``, ``000001.png``, ... (greyscale
  mode "L" for one channel, "RGB" for three), the input torch-fidelity and clean-fid take.

Every file is written atomically under a unique temp name (``sde_diffusion.files``), so two
writers of the same path never see each other's half-written file.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .files import atomic_write_bytes

__all__ = ["make_grid", "save_grid", "to_uint8", "save_png_folder", "png_bytes", "check_value_range"]

PathLike = Union[str, Path]


def check_value_range(value_range: Sequence[float]) -> Tuple[float, float]:
    """``(lo, hi)`` as floats; ValueError unless both are finite and ``lo < hi``."""
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"value range must be a pair (lo, hi) of numbers, got {value_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"value range must be finite with lo < hi, got ({lo}, {hi})")
    return lo, hi


def _check_samples(samples: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(samples).detach().cpu()
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"samples must have shape (N, 1 or 3, H, W), got {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise ValueError(f"samples must be floating point, got {x.dtype}")
    return x.to(torch.float64)


def to_uint8(samples: torch.Tensor, value_range: Sequence[float] = (-1.0, 1.0)) -> np.ndarray:
    """(N, C, H, W) samples in ``value_range`` -> (N, H, W, C) uint8 pixels (values outside the
    range are clipped; NaN is refused)."""
    x = _check_samples(samples)
    lo, hi = check_value_range(value_range)
    if torch.isnan(x).any():
        raise ValueError("samples contain NaN; they cannot be turned into pixels")
    u = ((x - lo) / (hi - lo) * 255.0).round().clamp(0, 255).to(torch.uint8)
    return u.permute(0, 2, 3, 1).contiguous().numpy()


def make_grid(samples: torch.Tensor, nrow: Optional[int] = None, pad: int = 1,
              value_range: Sequence[float] = (-1.0, 1.0), scale: int = 1) -> np.ndarray:
    """(N, C, H, W) samples in ``value_range`` -> uint8 image (rows, cols[, 3]) with ``pad``
    white pixels between tiles, each pixel repeated ``scale`` times. NaN pixels are drawn black
    (a grid is for looking; ``to_uint8`` refuses NaN)."""
    lo, _ = check_value_range(value_range)
    x = _check_samples(samples)
    tiles = to_uint8(torch.nan_to_num(x, nan=lo), value_range)  # (N, H, W, C)
    n, h, w, c = tiles.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(max(n, 1)))))
    ncol_tiles, nrow_tiles = nrow, int(math.ceil(n / nrow))
    H, W = nrow_tiles * (h + pad) + pad, ncol_tiles * (w + pad) + pad
    canvas = np.full((H, W, c), 255, dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, nrow)
        y0, x0 = pad + r * (h + pad), pad + q * (w + pad)
        canvas[y0: y0 + h, x0: x0 + w] = tiles[k]
    if scale > 1:
        canvas = canvas.repeat(scale, axis=0).repeat(scale, axis=1)
    return canvas[..., 0] if c == 1 else canvas


def png_bytes(img: np.ndarray) -> bytes:
    """PNG file contents of a uint8 (H, W), (H, W, 1) or (H, W, 3) array."""
    from PIL import Image

    a = np.asarray(img)
    if a.dtype != np.uint8:
        raise ValueError(f"PNG pixels must be uint8, got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def save_grid(samples: torch.Tensor, path: PathLike, nrow: Optional[int] = None,
              value_range: Sequence[float] = (-1.0, 1.0), scale: Optional[int] = None) -> Path:
    """Write a PNG grid of ``samples`` atomically; small images (<= 16 px) are upscaled 4x."""
    h = samples.shape[-1]
    scale = scale if scale is not None else (4 if h <= 16 else 1)
    img = make_grid(samples, nrow=nrow, value_range=value_range, scale=scale)
    path = Path(path)
    atomic_write_bytes(path, png_bytes(img))
    return path


def save_png_folder(samples: torch.Tensor, folder: PathLike, value_range: Sequence[float] = (-1.0, 1.0),
                    start: int = 0, digits: int = 6) -> list:
    """Write sample k as ``folder/{start + k:06d}.png`` (uint8, native size, no upscaling), each
    file atomically; returns the paths. This is the folder layout FID tools read."""
    pix = to_uint8(samples, value_range)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, img in enumerate(pix):
        p = folder / f"{start + k:0{digits}d}.png"
        atomic_write_bytes(p, png_bytes(img))
        paths.append(p)
    return paths
