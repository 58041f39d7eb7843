"""Noise sources for stochastic solvers.

A solver asks ``noise.interval(t0, t1)`` for the standard-normal draw that drives the step from
t0 to t1, and ``noise.fresh()`` for noise not tied to an interval (Langevin corrector steps).

``GaussianNoise``  fresh N(0, I) for every request: from per-sample seeds (counter-based,
                   ``randomness.counter_randn``: call i of ``interval`` is ``Stream.STEP`` step i,
                   call i of ``fresh`` is ``Stream.CORRECTOR`` step i), or from ``generator``.
``BrownianNoise``  increments of one Brownian path per sample, W(t1) - W(t0) normalised by
                   sqrt(|t1 - t0|): runs with different step counts share the path, so
                   step-count curves of stochastic samplers are not confounded by fresh noise.
                   W is a virtual Brownian tree (Li et al. 2020, "Scalable gradients for SDEs"):
                   the dyadic nodes of the Levy-Ciesielski construction (Levy 1939; Karatzas &
                   Shreve 1991, Sec. 2.3) are counter-based normals keyed by (seed, node id), so
                   no path is stored, queries in any order agree, and a query is one vectorised
                   draw for the whole batch.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .randomness import Seeds, Stream, _normals, _sample_keys, randn, seed_tensor

__all__ = ["NoiseSource", "GaussianNoise", "BrownianNoise", "make_noise", "NOISE_KINDS"]

NOISE_KINDS = ("gaussian", "brownian")


class NoiseSource:
    """Interface: ``interval(t0, t1) -> Tensor`` and ``fresh() -> Tensor`` (standard normal, like x)."""

    def interval(self, t0: float, t1: float) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def fresh(self) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class _Seeded:
    """Counter-based draws for per-sample seeds: one counter per stream."""

    def __init__(self, shape, seeds: Seeds, dtype, device):
        self.shape, self.dtype, self.device = tuple(shape), dtype, device
        self.seeds = seed_tensor(seeds, self.shape[0], device=device)
        self._keys = _sample_keys(self.seeds)
        self._numel = math.prod(self.shape[1:])
        self._calls = {Stream.STEP: 0, Stream.CORRECTOR: 0}

    def _next(self, stream: Stream) -> torch.Tensor:
        step = self._calls[stream]
        self._calls[stream] = step + 1
        return _normals(self._keys, stream, [step], self._numel, self.dtype).reshape(self.shape)


class GaussianNoise(NoiseSource):
    """Fresh N(0, I) shaped ``shape`` for every request: counter-based from ``seeds`` (an int s:
    sample k uses s + k; or one seed per sample), else from ``generator`` (None, one generator or
    one per sample, as before)."""

    def __init__(self, shape, generator=None, dtype=torch.float32, device=None, *, seeds: Optional[Seeds] = None):
        self.shape, self.generator, self.dtype, self.device = tuple(shape), generator, dtype, device
        if seeds is not None and generator is not None:
            raise ValueError("give seeds or generator, not both")
        self._seeded = _Seeded(shape, seeds, dtype, device) if seeds is not None else None

    def interval(self, t0, t1):
        if self._seeded is not None:
            return self._seeded._next(Stream.STEP)
        return self.fresh()

    def fresh(self):
        if self._seeded is not None:
            return self._seeded._next(Stream.CORRECTOR)
        return randn(self.shape, self.generator, dtype=self.dtype, device=self.device)


class BrownianNoise(NoiseSource):
    """One Brownian path W on [0, 1] per sample, keyed by ``seeds[k]`` (per-sample, so batch
    invariant and device independent). Resolution 2**-depth in t; below it W is linear.

    Levy-Ciesielski form of the bisection: with Z_1 (node W(1)) and one Z per dyadic midpoint,
        W(t) = t Z_1 + sum_{l=1..depth} sqrt(2**-(l+1)) hat_l(t) Z_{l, j_l(t)},
    where j_l(t) is the level-l midpoint of the level-(l-1) cell containing t and hat_l is the
    tent that is 1 at that midpoint and 0 at the cell ends. At the dyadic points this equals the
    Brownian-bridge bisection W(mid) = (W(a) + W(b))/2 + sqrt((b - a)/4) Z; between level-depth
    points it is the linear interpolation. The node ids (1 for W(1), 2**l + j for midpoint
    j/2**l) are the ``Stream.BROWNIAN`` steps. A query draws its <= depth + 1 nodes for the whole
    batch, one node at a time (each a counter-based draw), and sums weight * node in node order.

    Caching (never changes a value: a cached node or W(t) is the same tensor a fresh draw gives).
    The last W(t) is always kept (solvers query consecutive intervals, so each interval costs one
    query); the nodes of the last query, top levels first, and older W(t) are kept while the cache
    stays within ``cache_bytes`` (default 256 MiB): consecutive query points share the nodes of the
    levels whose cells hold both, so those are not drawn again. Memory is therefore at most one
    float64 copy of the batch plus ``cache_bytes``, whatever the batch and sample size.
    """

    def __init__(self, shape, seeds: Seeds, dtype=torch.float32, device=None, depth: int = 24,
                 cache_bytes: int = 256 * 2**20):
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 46:
            raise ValueError(f"depth must be an integer in [1, 46], got {depth!r}")
        if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0:
            raise ValueError(f"cache_bytes must be a non-negative integer, got {cache_bytes!r}")
        self.cache_bytes = cache_bytes
        self.shape, self.dtype, self.device, self.depth = tuple(shape), dtype, device, depth
        if not isinstance(seeds, int) and len(seeds) != self.shape[0]:
            raise ValueError(f"BrownianNoise needs one seed per sample: {len(seeds)} seeds for batch {self.shape[0]}")
        self._seeded = _Seeded(shape, seeds, dtype, device)
        self.seeds = self._seeded.seeds
        self._cache: dict = {}  # t -> W(t), most recent last
        self._nodes: dict = {}  # node id -> its normals (B, numel) float64, from the last query
        self._entry_bytes = self.shape[0] * self._seeded._numel * 8  # one W(t) or one node

    def nodes(self, t: float):
        """(node ids, float64 weights) with W(t) = sum_n weight_n Z_n (class docstring)."""
        t = min(max(float(t), 0.0), 1.0)
        if t == 0.0:
            return [], []
        ids, weights = [1], [t]
        if t == 1.0:
            return ids, weights
        x = t * 2.0**self.depth  # exact: power-of-two scaling
        J = int(math.floor(x))  # t lies in level-depth cell [J, J + 1] / 2**depth
        for level in range(1, self.depth + 1):
            m = J >> (self.depth - level + 1)  # index of the level-(level-1) cell holding t
            j = 2 * m + 1  # its midpoint at this level
            hat = 1.0 - abs(t * 2.0**level - j)  # exact scaling; tent value in [0, 1]
            if hat > 0.0:
                ids.append((1 << level) + j)
                weights.append(math.sqrt(2.0 ** -(level + 1)) * hat)
        return ids, weights

    def _combination(self, ids, weights) -> torch.Tensor:
        """sum_n weight_n Z_n over the batch, float64 (B, numel): elementwise, in node order (so
        batch- and device-exact), from zero. Nodes of the previous query are reused, and this
        query's top ``room`` nodes are kept for the next one (class docstring)."""
        s = self._seeded
        reuse = {n: self._nodes[n] for n in ids if n in self._nodes}
        self._nodes = {}  # drop the rest before drawing: the cache never exceeds its budget
        room = (self.cache_bytes - self._entry_bytes * (len(self._cache) + 1)) // max(1, self._entry_bytes)
        B, numel = self.shape[0], s._numel
        out = torch.zeros(B, numel, dtype=torch.float64, device=self.device)
        tmp = torch.empty_like(out)
        buf = torch.empty(B * ((numel + 1) // 2) * 2, dtype=torch.float64, device=self.device)  # reused
        for i, (n, w) in enumerate(zip(ids, weights)):
            z = reuse.get(n)
            if z is None:  # a node kept for the next query gets its own memory
                z = _normals(s._keys, Stream.BROWNIAN, [n], numel, out=None if i < room else buf)[:, 0]
            out += torch.mul(z, w, out=tmp)
            if i < room:
                self._nodes[n] = z
        return out

    def W(self, t: float) -> torch.Tensor:
        """W(t) for every sample, float64 shaped like the batch (the last few t are cached)."""
        t = float(t)
        w = self._cache.pop(t, None)
        if w is None:
            w = self._combination(*self.nodes(t)).reshape(self.shape)
        self._cache[t] = w  # most recent last
        while len(self._cache) > 1 and self.cached_bytes() > self.cache_bytes:
            self._cache.pop(next(iter(self._cache)))  # the oldest W(t) first ...
        while self._nodes and self.cached_bytes() > self.cache_bytes:
            self._nodes.popitem()  # ... then the deepest cached nodes
        return w

    def cached_bytes(self) -> int:
        """Bytes held by the W(t) and node caches: at most max(cache_bytes, one W(t))."""
        return self._entry_bytes * (len(self._cache) + len(self._nodes))

    def interval(self, t0, t1):
        t0, t1 = float(t0), float(t1)
        h = abs(t1 - t0)
        if h == 0:
            raise ValueError("Brownian increment over an empty interval")
        w0 = self.W(t0)  # usually the previous interval's end, cached; then the new end
        return ((self.W(t1) - w0) / math.sqrt(h)).to(self.dtype)

    def fresh(self):
        return self._seeded._next(Stream.CORRECTOR)


def make_noise(kind, shape, *, generator=None, seeds: Optional[Seeds] = None,
               dtype=torch.float32, device=None) -> NoiseSource:
    """Build the noise source named ``kind`` ("gaussian" or "brownian") or pass one through.
    ``seeds`` (an int s: sample k uses s + k, or one per sample) selects counter-based noise;
    otherwise ``generator`` (Brownian seeds are then drawn from it)."""
    if isinstance(kind, NoiseSource):
        return kind
    if kind == "gaussian":
        if seeds is not None:
            return GaussianNoise(shape, None, dtype, device, seeds=seeds)
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
