"""Noise sources for stochastic solvers.

A solver asks ``noise.interval(t0, t1)`` for the standard-normal draw that drives the step from
t0 to t1, and ``noise.fresh()`` for noise not tied to an interval (Langevin corrector steps).

``GaussianNoise``  fresh N(0, I) for every request (per-sample generators keep batch invariance).
``BrownianNoise``  increments of one Brownian path per sample, W(t1) - W(t0) normalised by
                   sqrt(|t1 - t0|): runs with different step counts share the path, so
                   step-count curves of stochastic samplers are not confounded by fresh noise.
                   W is a virtual Brownian tree (Li et al. 2020, "Scalable gradients for SDEs"):
                   W at any t is found by Brownian-bridge bisection from seeded nodes, so no path
                   is stored and queries in any order agree.
"""

from __future__ import annotations

import hashlib
import math
from typing import Optional, Sequence

import torch

from .randomness import randn

__all__ = ["NoiseSource", "GaussianNoise", "BrownianNoise", "make_noise", "NOISE_KINDS"]

NOISE_KINDS = ("gaussian", "brownian")


class NoiseSource:
    """Interface: ``interval(t0, t1) -> Tensor`` and ``fresh() -> Tensor`` (standard normal, like x)."""

    def interval(self, t0: float, t1: float) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def fresh(self) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class GaussianNoise(NoiseSource):
    def __init__(self, shape, generator=None, dtype=torch.float32, device=None):
        self.shape, self.generator, self.dtype, self.device = tuple(shape), generator, dtype, device

    def interval(self, t0, t1):
        return self.fresh()

    def fresh(self):
        return randn(self.shape, self.generator, dtype=self.dtype, device=self.device)


class BrownianNoise(NoiseSource):
    """One Brownian path W on [0, 1] per sample, seeded by ``seeds[k]`` (per-sample, so batch
    invariant). Resolution 2**-depth in t; below it W is linearly interpolated."""

    def __init__(self, shape, seeds: Sequence[int], dtype=torch.float32, device=None, depth: int = 24):
        self.shape, self.dtype, self.device, self.depth = tuple(shape), dtype, device, depth
        if len(seeds) != self.shape[0]:
            raise ValueError(f"BrownianNoise needs one seed per sample: {len(seeds)} seeds for batch {self.shape[0]}")
        self.seeds = [int(s) for s in seeds]
        self._gens = [torch.Generator().manual_seed(s) for s in self.seeds]
        self.generator = self._gens
        self._cache = {}

    def _normal(self, seed: int, key: tuple) -> torch.Tensor:
        h = hashlib.blake2b(repr((seed,) + key).encode(), digest_size=8).digest()
        g = torch.Generator().manual_seed(int.from_bytes(h, "little") & ((1 << 63) - 1))
        return torch.randn(self.shape[1:], generator=g, dtype=torch.float64)

    def _w_dyadic(self, k: int, level: int, j: int) -> torch.Tensor:
        """W(j / 2**level) for sample k, by bridge bisection from W(0) = 0, W(1) ~ N(0, 1)."""
        key = (k, level, j)
        if key in self._cache:
            return self._cache[key]
        if level == 0:
            w = torch.zeros(self.shape[1:], dtype=torch.float64) if j == 0 else self._normal(self.seeds[k], ("end",))
        elif j % 2 == 0:
            w = self._w_dyadic(k, level - 1, j // 2)
        else:
            left = self._w_dyadic(k, level - 1, (j - 1) // 2)
            right = self._w_dyadic(k, level - 1, (j + 1) // 2)
            dt = 2.0 ** -level  # half-interval length; bridge midpoint variance = dt / 2
            w = 0.5 * (left + right) + math.sqrt(dt / 2) * self._normal(self.seeds[k], ("mid", level, j))
        if len(self._cache) > 200_000:
            self._cache.clear()
        self._cache[key] = w
        return w

    def _w(self, k: int, t: float) -> torch.Tensor:
        scale = 2**self.depth
        x = min(max(t, 0.0), 1.0) * scale
        j = int(math.floor(x))
        if j >= scale:
            return self._w_dyadic(k, self.depth, scale)
        f = x - j
        left = self._w_dyadic(k, self.depth, j)
        if f == 0.0:
            return left
        return left + f * (self._w_dyadic(k, self.depth, j + 1) - left)

    def interval(self, t0, t1):
        t0, t1 = float(t0), float(t1)
        h = abs(t1 - t0)
        if h == 0:
            raise ValueError("Brownian increment over an empty interval")
        z = torch.stack([(self._w(k, t1) - self._w(k, t0)) for k in range(self.shape[0])]) / math.sqrt(h)
        return z.to(dtype=self.dtype, device=self.device)

    def fresh(self):
        return randn(self.shape, self._gens, dtype=self.dtype, device=self.device)


def make_noise(kind, shape, *, generator=None, seeds: Optional[Sequence[int]] = None,
               dtype=torch.float32, device=None) -> NoiseSource:
    """Build the noise source named ``kind`` ("gaussian" or "brownian") or pass one through."""
    if isinstance(kind, NoiseSource):
        return kind
    if kind == "gaussian":
        return GaussianNoise(shape, generator, dtype, device)
    if kind == "brownian":
        if seeds is None:
            if isinstance(generator, torch.Generator) or generator is None:
                base = int(torch.randint(0, 2**62, (1,), generator=generator))
                seeds = [base + k for k in range(shape[0])]
            else:
                seeds = [int(torch.randint(0, 2**62, (1,), generator=g)) for g in generator]
        return BrownianNoise(shape, seeds, dtype, device)
    raise ValueError(f"unknown noise {kind!r}; valid: {', '.join(NOISE_KINDS)} or a NoiseSource")
