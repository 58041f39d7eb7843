"""A small CNN classifier for the 8x8 digits, used to score generated samples.

``load_classifier()`` returns the shipped network (``sde_diffusion/assets/digits_classifier/``),
trained on the fixed TRAIN split only (``sde_diffusion.data``); ``.logits(x)`` gives class scores and
``.features(x)`` the 128-d penultimate activations, the feature space of the Frechet distance
"FD-digits" (the digits analogue of FID, Heusel et al. 2017). Inputs are (B, 1, 8, 8) in [-1, 1]
(values outside are clamped).

Rebuild the shipped weights with ``python -m sde_diffusion.classifier`` (deterministic on CPU).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import ASSETS_DIR, _sha256, atomic_write_bytes, load_safetensors, save_safetensors_atomic

log = logging.getLogger(__name__)

__all__ = ["DigitsClassifier", "load_classifier", "train_classifier", "accuracy", "CLASSIFIER_DIR"]

CLASSIFIER_DIR = ASSETS_DIR / "digits_classifier"
FORMAT = "sde_diffusion.classifier"


class DigitsClassifier(nn.Module):
    """conv32-conv32-pool-conv64-conv64-pool-fc128-fc10 (ReLU); ``features`` = the fc128 output."""

    def __init__(self, width: int = 32, feature_dim: int = 128, num_classes: int = 10, dropout: float = 0.3):
        super().__init__()
        self.config = dict(width=width, feature_dim=feature_dim, num_classes=num_classes, dropout=dropout)
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * w * 4, feature_dim), nn.ReLU(),
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
            raise ValueError(f"digits classifier expects (B, 1, 8, 8) images, got {tuple(x.shape)}")
        return x.to(torch.float32).clamp(-1.0, 1.0)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer activations, shape (B, feature_dim)."""
        return self.body(self._check(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, shape (B, 10)."""
        return self.head(self.drop(self.features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)


def _shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random translation by -1..1 pixels (zero = background -1 padding)."""
    b = x.shape[0]
    pad = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dx = torch.randint(0, 3, (b,), generator=g)
    dy = torch.randint(0, 3, (b,), generator=g)
    out = torch.empty_like(x)
    for i in range(b):
        out[i] = pad[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
    return out


@torch.no_grad()
def accuracy(clf: DigitsClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    clf.eval()
    return float((clf.logits(x).argmax(1) == y).float().mean())


def train_classifier(epochs: int = 40, batch: int = 64, lr: float = 2e-3, seed: int = 0, verbose: bool = True) -> DigitsClassifier:
    """Train on the digits TRAIN split only (Adam, cosine LR, +-1 px shift augmentation); deterministic."""
    from .data import load_digits_with_labels

    x, y = load_digits_with_labels("train")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = DigitsClassifier()
        g = torch.Generator().manual_seed(seed + 1)
        opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=1e-4)
        n = x.shape[0]
        per_epoch = math.ceil(n / batch)
        total, it = epochs * per_epoch, 0
        for ep in range(epochs):
            clf.train()
            perm = torch.randperm(n, generator=g)
            for k in range(per_epoch):
                idx = perm[k * batch:(k + 1) * batch]
                for grp in opt.param_groups:
                    grp["lr"] = lr * 0.5 * (1 + math.cos(math.pi * it / total))
                loss = F.cross_entropy(clf.logits(_shift(x[idx], g)), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                it += 1
            if verbose and (ep + 1) % 10 == 0:
                log.info("epoch %d: loss %.4f train acc %.4f", ep + 1, float(loss), accuracy(clf, x, y))
    return clf.eval()


def save_classifier(clf: DigitsClassifier, folder=CLASSIFIER_DIR, info: dict | None = None) -> None:
    folder = Path(folder)
    w = folder / "model.safetensors"
    save_safetensors_atomic(dict(clf.state_dict()), w, metadata={"format": FORMAT})
    cfg = {"format": FORMAT, "format_version": 1, "architecture": {"class": "DigitsClassifier", "config": clf.config},
           "input": {"shape": [1, 8, 8], "range": [-1.0, 1.0], "scaling": "x / 8 - 1 from pixel values 0..16"},
           "training": dict(info or {}), "weights": {"file": "model.safetensors", "sha256": _sha256(w)}}
    atomic_write_bytes(folder / "config.json", (json.dumps(cfg, indent=2) + "\n").encode())


def load_classifier(folder=CLASSIFIER_DIR, device="cpu") -> DigitsClassifier:
    """The shipped digits classifier (eval mode, no grad) or one saved in ``folder``."""
    folder = Path(folder)
    c = folder / "config.json"
    if not c.is_file():
        raise FileNotFoundError(f"classifier config not found: {c}")
    try:
        cfg = json.loads(c.read_text())
    except ValueError as e:
        raise ValueError(f"{c}: not valid JSON ({e})") from None
    if cfg.get("format") != FORMAT:
        raise ValueError(f"{c}: not a digits classifier config")
    w = folder / cfg.get("weights", {}).get("file", "model.safetensors")
    if not w.is_file():
        raise FileNotFoundError(f"classifier weights not found: {w}")
    if cfg["weights"].get("sha256") and _sha256(w) != cfg["weights"]["sha256"]:
        raise ValueError(f"{w}: sha256 does not match {c}")
    state, _ = load_safetensors(w)
    clf = DigitsClassifier(**cfg["architecture"]["config"])
    try:
        clf.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{w}: weights do not match the classifier architecture: {str(e).splitlines()[0]}") from None
    clf.training_info = cfg.get("training", {})
    return clf.to(device).eval().requires_grad_(False)


if __name__ == "__main__":  # rebuild the shipped classifier
    import time

    from .data import load_digits_with_labels

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    clf = train_classifier()
    xt, yt = load_digits_with_labels("test")
    acc = accuracy(clf, xt, yt)
    wall = time.perf_counter() - t0
    print(f"test accuracy {acc:.4f} ({len(yt)} images), {wall:.0f} s")
    save_classifier(clf, info={"data": "sklearn digits train split (1438 images)", "epochs": 40, "seed": 0,
                               "test_accuracy": round(acc, 4), "test_images": len(yt), "wall_seconds": round(wall, 1)})
