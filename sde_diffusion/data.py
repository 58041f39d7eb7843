"""Training data: the scikit-learn 8x8 digits with a fixed train/test split, or user arrays/PNGs.

All loaders return float32 tensors of shape (N, C, H, W) scaled to [-1, 1] (Ho et al. 2020, Sec. 4).
Bad data raises ``ValueError`` naming the offending file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple

import numpy as np
import torch

__all__ = ["load_digits", "load_digits_with_labels", "load_array", "load_png_folder", "load_data",
           "load_labelled_data", "DIGITS_SPLIT_SEED"]

DIGITS_SPLIT_SEED = 20240  # fixed: the test split must never change (it is never used for training)
DIGITS_TEST_FRACTION = 0.2


def _digits_split() -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as _sk

    d = _sk()
    perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(d.target))
    n_test = int(round(DIGITS_TEST_FRACTION * len(perm)))
    return d.images, d.target, perm[n_test:], perm[:n_test]  # images, labels, train idx, test idx


def load_digits_with_labels(split: str = "train") -> Tuple[torch.Tensor, torch.Tensor]:
    """(images (N,1,8,8) float32 in [-1, 1], labels (N,) int64) for split "train" (1438) or "test" (359).

    Pixels 0..16 map linearly to -1..1 (x / 8 - 1). The split is a fixed seeded permutation (~80/20)."""
    images, labels, tr, te = _digits_split()
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    idx = {"train": tr, "test": te, "all": np.arange(len(labels))}[split]
    x = torch.from_numpy(images[idx].astype(np.float32) / 8.0 - 1.0).unsqueeze(1).contiguous()
    return x, torch.from_numpy(labels[idx].astype(np.int64))


def load_digits(split: str = "train") -> torch.Tensor:
    """Digits images (N, 1, 8, 8) float32 in [-1, 1]; see ``load_digits_with_labels``."""
    return load_digits_with_labels(split)[0]


def _scale(a: np.ndarray, name: str) -> torch.Tensor:
    if a.size == 0:
        raise ValueError(f"{name}: contains no images")
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise ValueError(f"{name}: expected a real numeric array, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.integer):
        if a.min() < 0 or a.max() > 255:
            raise ValueError(f"{name}: integer images must lie in 0..255, got range [{a.min()}, {a.max()}]")
        a = a.astype(np.float32) / 127.5 - 1.0
    else:
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise ValueError(f"{name}: contains NaN or inf")
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0.0 and hi <= 1.0:  # [0, 1] floats
            a = a * 2.0 - 1.0
        elif lo < -1.0 - 1e-6 or hi > 1.0 + 1e-6:
            raise ValueError(f"{name}: float images must lie in [0, 1] or [-1, 1], got range [{lo:.4g}, {hi:.4g}]")
    return torch.from_numpy(np.ascontiguousarray(a))


def load_array(path) -> torch.Tensor:
    """Images from a .npy or .npz file (the first array, or the one named ``images``/``x``/``data``).

    Shapes (N, C, H, W) or (N, H, W) (-> C = 1). uint8/ints in 0..255 and floats in [0, 1] are
    mapped to [-1, 1]; floats already in [-1, 1] are kept."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"data file not found: {p}")
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                keys = list(z.keys())
                if not keys:
                    raise ValueError(f"{p}: .npz file contains no arrays")
                key = next((k for k in ("images", "x", "data") if k in keys), keys[0])
                a = z[key]
        elif p.suffix == ".npy":
            a = np.load(p, allow_pickle=False)
        else:
            raise ValueError(f"{p}: unsupported data file type {p.suffix!r}; use .npy, .npz or a folder of PNGs")
    except ValueError as e:
        if str(p) in str(e):
            raise
        raise ValueError(f"{p}: cannot read array: {e}") from None
    except (OSError, EOFError) as e:
        raise ValueError(f"{p}: cannot read array: {e}") from None
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4:
        raise ValueError(f"{p}: expected images of shape (N, C, H, W) or (N, H, W), got {a.shape}")
    return _scale(a, str(p))


def load_png_folder(folder) -> torch.Tensor:
    """All ``*.png`` files of a folder (sorted by name), same size and mode; grey -> C=1, RGB -> 3."""
    from PIL import Image

    d = Path(folder)
    if not d.is_dir():
        raise FileNotFoundError(f"image folder not found: {d}")
    files = sorted(f for f in d.iterdir() if f.suffix.lower() == ".png")
    if not files:
        raise ValueError(f"{d}: folder contains no .png files")
    arrays, first = [], None
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                if im.mode not in ("L", "RGB"):
                    im = im.convert("L" if im.mode in ("1", "LA") else "RGB")
                a = np.asarray(im)
        except Exception as e:  # PIL raises many types for broken files
            raise ValueError(f"{f}: unreadable image: {e}") from None
        if a.dtype != np.uint8:
            raise ValueError(f"{f}: expected 8-bit pixels, got {a.dtype}")
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        if first is None:
            first = (a.shape, f)
        elif a.shape != first[0]:
            raise ValueError(f"{f}: image shape (C,H,W)={a.shape} differs from {first[1].name}'s {first[0]}; all images must match")
        arrays.append(a)
    return _scale(np.stack(arrays), str(d))


def load_data(spec) -> torch.Tensor:
    """``"digits"`` (train split), a .npy/.npz path, or a folder of PNGs -> (N, C, H, W) in [-1, 1]."""
    if isinstance(spec, torch.Tensor):
        if spec.ndim != 4:
            raise ValueError(f"data tensor must have shape (N, C, H, W), got {tuple(spec.shape)}")
        if spec.shape[0] == 0:
            raise ValueError("data tensor contains no images")
        if not torch.isfinite(spec).all():
            raise ValueError("data tensor contains NaN or inf")
        return spec.to(torch.float32)
    s = os.fspath(spec)
    if s == "digits":
        return load_digits("train")
    p = Path(s)
    if p.is_dir():
        return load_png_folder(p)
    if not p.exists():
        raise FileNotFoundError(f"data not found: {s!r} (use 'digits', a .npy/.npz file or a folder of PNGs)")
    return load_array(p)


def _check_labels(y: np.ndarray, n: int, name: str) -> torch.Tensor:
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name}: labels must have shape ({n},) (one per image), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name}: labels must be integers 0..C-1, got dtype {y.dtype}")
    if n and y.min() < 0:
        raise ValueError(f"{name}: labels must be integers 0..C-1, got a minimum of {y.min()}")
    return torch.from_numpy(y.astype(np.int64))


def load_labelled_data(spec) -> Tuple[torch.Tensor, torch.Tensor]:
    """Images and integer class labels for class-conditional training: ``(x (N,C,H,W) in [-1, 1], y (N,))``.

    ``"digits"`` (train split, labels 0..9); an ``.npz`` with arrays ``x`` (images, as in ``load_array``)
    and ``y`` (labels 0..C-1); a folder with one sub-folder of PNGs per class (classes numbered in
    sorted sub-folder order); or a tuple ``(x, y)`` of tensors."""
    if isinstance(spec, tuple) and len(spec) == 2:
        x = load_data(spec[0])
        return x, _check_labels(np.asarray(torch.as_tensor(spec[1]).cpu()), x.shape[0], "labels")
    s = os.fspath(spec)
    if s == "digits":
        return load_digits_with_labels("train")
    p = Path(s)
    if p.is_dir():
        subs = sorted(d for d in p.iterdir() if d.is_dir())
        if not subs:
            raise ValueError(f"{p}: labelled PNG data needs one sub-folder per class (e.g. {p}/0/*.png, {p}/1/*.png)")
        xs = [load_png_folder(d) for d in subs]
        shapes = {tuple(x.shape[1:]) for x in xs}
        if len(shapes) != 1:
            raise ValueError(f"{p}: class folders hold images of different shapes {sorted(shapes)}")
        y = np.concatenate([np.full(x.shape[0], k, dtype=np.int64) for k, x in enumerate(xs)])
        return torch.cat(xs), torch.from_numpy(y)
    if p.suffix != ".npz":
        raise ValueError(f"labelled data must be 'digits', an .npz with arrays x and y, or a folder of class sub-folders; got {s!r}")
    if not p.exists():
        raise FileNotFoundError(f"data file not found: {p}")
    with np.load(p, allow_pickle=False) as z:
        if "x" not in z or "y" not in z:
            raise ValueError(f"{p}: labelled .npz needs arrays 'x' (images) and 'y' (labels); it has {', '.join(z.keys()) or 'none'}")
        y = z["y"]
    x = load_array(p)  # picks 'x'
    return x, _check_labels(y, x.shape[0], str(p))
