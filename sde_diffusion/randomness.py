"""Random numbers with per-sample generators, so sample k of a batch equals that sample drawn alone."""

from __future__ import annotations

from typing import Sequence, Union

import torch

Generators = Union[None, torch.Generator, Sequence[torch.Generator]]

__all__ = ["randn", "rand", "per_sample_generators", "Generators"]


def per_sample_generators(seed: int, n: int, device="cpu") -> list:
    """One ``torch.Generator`` per sample: sample k is seeded with ``seed + k``.

    The union of samples drawn in shards (k = 0..n-1 split across processes or batches) is
    therefore identical to one run over all n samples.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    gens = []
    for k in range(n):
        g = torch.Generator(device=device)
        g.manual_seed(seed + k)
        gens.append(g)
    return gens


def _draw(fn, shape, generator: Generators, dtype, device) -> torch.Tensor:
    shape = tuple(shape)
    if generator is None or isinstance(generator, torch.Generator):
        gdev = generator.device if generator is not None else device
        return fn(shape, generator=generator, dtype=dtype, device=gdev).to(device)
    gens = list(generator)
    if len(shape) == 0 or len(gens) != shape[0]:
        raise ValueError(f"got {len(gens)} generators for a batch of shape {shape}; pass one per sample")
    return torch.stack([fn(shape[1:], generator=g, dtype=dtype, device=g.device) for g in gens]).to(device)


def randn(shape, generator: Generators = None, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """Standard normal tensor. ``generator`` is None, one generator, or a list with one per
    sample (len == shape[0]); noise is drawn on the generator's device and moved to ``device``."""
    return _draw(torch.randn, shape, generator, dtype, device)


def rand(shape, generator: Generators = None, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """U[0, 1) tensor; ``generator`` as in ``randn``."""
    return _draw(torch.rand, shape, generator, dtype, device)
