"""Per-sample randomness: counter-based noise from seeds, and per-sample ``torch.Generator`` lists.

Counter-based noise (``counter_randn``)
    The normal for sample k at (stream, step, element j) is a pure function of
    (seeds[k], stream, step, j): no state, no generator object, one vectorised pass for the whole
    batch (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3", the counter-based
    idea behind Philox). The hash is SplitMix64's output function (Steele, Lea & Flood 2014,
    "Fast splittable pseudorandom number generators"; constants of Vigna's ``splitmix64.c``):
        key_k  = mix(mix(seed_k + G) ^ (stream * 2**48 + step))      (per sample, stream, step)
        h(c)   = mix(key_k + (c + 1) G)                               (pair counter c = j // 2)
        mix(z) = z ^= z >> 30; z *= M1; z ^= z >> 27; z *= M2; z ^= z >> 31   (mod 2**64)
    i.e. pair c of (k, stream, step) is output c of a SplitMix64 sequence started at key_k. Each
    64-bit h gives two normals by Box-Muller (Box & Muller 1958): with hi the high 32 bits of h
    read as a signed integer and lo the low 32 bits, u1 = (hi + 2**31 + 1/2) 2**-32 in (0, 1),
    theta = 2 pi lo 2**-32, r = sqrt(-2 log u1), element 2c = r cos(theta), element 2c + 1 =
    r sin(theta); computed in float64 and cast to the requested dtype. |z| <= sqrt(66 log 2) = 6.77.

    What holds: (a) sample k's noise does not depend on its batch-mates or the batch size, bitwise
    (tested); (b) the integer hash is bitwise identical on every device: it uses only int64
    add, multiply, xor, and, arithmetic shift (logical shifts are emulated by masking), which
    torch computes modulo 2**64 on CPU and CUDA alike (tested against a pure-Python reference and
    SplitMix64's published outputs); (c) the float transform (log, sqrt, cos, sin in float64) uses
    each device's math library, which may differ by an ulp of float64; after the cast to float32
    that changes a value only when it lies within about 1e-16 relative of a float32 rounding
    boundary, so CPU and CUDA noise is equal to float64 rounding, and in float32 equal except for
    such rare last-bit differences (the CUDA test in tests/test_randomness.py measures it
    where a GPU exists; none was available when this was written).

Streams (``Stream``)
    Every consumer of seeded randomness has its own stream number, so x_T, per-step noise,
    corrector noise and the Brownian path of one seed are independent of each other.

Generators (``per_sample_generators``, ``randn``, ``rand``)
    ``generator=`` arguments keep working as before: None, one ``torch.Generator``, or a list
    with one generator per sample (the diffusers convention).
"""

from __future__ import annotations

import enum
import math
import operator
from typing import Optional, Sequence, Union

import torch

Generators = Union[None, torch.Generator, Sequence[torch.Generator]]
Seeds = Union[int, Sequence[int], torch.Tensor]

__all__ = ["Stream", "SEED_LIMIT", "check_seed", "seed_tensor", "counter_randn",
           "draw_x_T", "randn", "rand", "per_sample_generators", "Generators", "Seeds"]

SEED_LIMIT = 2**63  # seeds are integers in [0, SEED_LIMIT)


class Stream(enum.IntEnum):
    """Named seed streams: the ``stream`` argument of ``counter_randn``. The numbers are part of the
    reproducibility contract (changing one changes every seeded result that uses it)."""

    X_T = 1
    """The initial state x_T ~ N(0, I) of ``sample(seed=)`` (step 0)."""
    STEP = 2
    """Per-step noise of stochastic solvers, ``GaussianNoise.interval``: step = number of earlier
    ``interval`` calls in the run (so step i of ancestral/dpmpp_2m_sde/euler_maruyama)."""
    CORRECTOR = 3
    """Noise not tied to an interval, ``noise.fresh()`` (Langevin corrector steps of ``pc``): step =
    number of earlier ``fresh`` calls."""
    BROWNIAN = 4
    """Nodes of the virtual Brownian tree (``BrownianNoise``): step = node id (1 for W(1); 2**l + j
    for the bridge midpoint j / 2**l, j odd)."""
    LIKELIHOOD = 5
    """Dequantisation, Hutchinson probes and ELBO times/noise of the likelihood (reserved)."""
    TRAIN = 6
    """Training draws (reserved; train.py still seeds torch generators with ``seed * 1_000_003 + step``)."""


# ---- seeds -------------------------------------------------------------------------------------

def check_seed(seed, n: int = 1, name: str = "seed") -> int:
    """``seed`` as a Python int, after checking that it and the per-sample seeds seed + k (k < n) lie
    in [0, 2**63). One-line ``ValueError`` otherwise (so 2**32 is refused instead of silently
    wrapping onto another seed)."""
    if isinstance(seed, bool):
        raise ValueError(f"{name} must be an integer in [0, 2**63), got {seed!r}")
    try:
        s = operator.index(seed)
    except TypeError:
        raise ValueError(f"{name} must be an integer in [0, 2**63), got {seed!r}") from None
    if s < 0 or s + max(int(n), 1) - 1 >= SEED_LIMIT:
        what = f"{name} + {n - 1} (the last per-sample seed)" if n > 1 and s >= 0 else name
        raise ValueError(f"{what} must lie in [0, 2**63), got {s + (max(n, 1) - 1 if s >= 0 else 0)}")
    return s


def seed_tensor(seeds: Seeds, n: Optional[int] = None, device=None) -> torch.Tensor:
    """Per-sample seeds as an int64 tensor (n,) on ``device``: an int s means s, s + 1, ..., s + n - 1
    (sample k uses s + k); a sequence/tensor gives one seed per sample (each checked)."""
    if isinstance(seeds, torch.Tensor):
        if seeds.dtype != torch.int64 or seeds.ndim != 1:
            raise ValueError(f"a seed tensor must be int64 of shape (n,), got {seeds.dtype} {tuple(seeds.shape)}")
        if n is not None and seeds.numel() != n:
            raise ValueError(f"got {seeds.numel()} seeds for a batch of {n}")
        if seeds.numel() and int(seeds.min()) < 0:
            raise ValueError(f"seeds must lie in [0, 2**63), got {int(seeds.min())}")
        return seeds.to(device)
    if isinstance(seeds, (list, tuple)):
        if n is not None and len(seeds) != n:
            raise ValueError(f"got {len(seeds)} seeds for a batch of {n}; pass one per sample")
        return torch.tensor([check_seed(s) for s in seeds], dtype=torch.int64, device=device)
    if n is None:
        raise ValueError("a single base seed needs the batch size n")
    s = check_seed(seeds, n)
    return torch.arange(n, dtype=torch.int64, device=device) + s


# ---- the counter-based generator ---------------------------------------------------------------

def _s64(u: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return u - (1 << 64) if u >= (1 << 63) else u


_G = _s64(0x9E3779B97F4A7C15)  # SplitMix64 increment (golden ratio)
_M1 = _s64(0xBF58476D1CE4E5B9)
_M2 = _s64(0x94D049BB133111EB)
_MASK = {r: (1 << (64 - r)) - 1 for r in (27, 30, 31, 32)}
_STREAM_SHIFT = 48  # word = stream * 2**48 + step: steps must be < 2**48


def _mix(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's output function on int64 bits, in place (z must be a fresh tensor)."""
    t = z >> 30
    z ^= t.bitwise_and_(_MASK[30])
    z *= _M1
    t = z >> 27
    z ^= t.bitwise_and_(_MASK[27])
    z *= _M2
    t = z >> 31
    z ^= t.bitwise_and_(_MASK[31])
    return z


def _sample_keys(seeds: torch.Tensor) -> torch.Tensor:
    """mix(seed + G) per sample: the first SplitMix64 output of state ``seed``."""
    return _mix(seeds + _G)


def _step_words(stream: int, steps) -> torch.Tensor:
    steps = torch.as_tensor(steps, dtype=torch.int64).reshape(-1)
    if steps.numel() and (int(steps.min()) < 0 or int(steps.max()) >= 1 << _STREAM_SHIFT):
        raise ValueError(f"steps must lie in [0, 2**{_STREAM_SHIFT}), got {steps.tolist()[:4]}...")
    s = int(stream)
    if not 0 <= s < (1 << 15):
        raise ValueError(f"stream must be an integer in [0, 2**15), got {stream!r}")
    return steps + (s << _STREAM_SHIFT)


_COUNTERS: dict = {}


def _counters(pairs: int, device) -> torch.Tensor:
    """(c + 1) G for c < pairs, cached per device (the only per-element input of the hash)."""
    key = (pairs, str(device))
    c = _COUNTERS.get(key)
    if c is None:
        if len(_COUNTERS) > 32:
            _COUNTERS.clear()
        c = (torch.arange(1, pairs + 1, dtype=torch.int64, device=device) * _G)
        _COUNTERS[key] = c
    return c


def _hash_bits(keys: torch.Tensor, words: torch.Tensor, pairs: int) -> torch.Tensor:
    """64 random bits per (sample, step, pair): int64 (B, L, pairs)."""
    k = _mix(keys[:, None] ^ words.to(keys.device)[None, :])  # (B, L)
    return _mix(k[:, :, None] + _counters(pairs, keys.device))


def _box_muller(h: torch.Tensor, numel: int) -> torch.Tensor:
    """Two float64 normals per 64-bit word; element 2c = r cos, 2c + 1 = r sin; (..., numel)."""
    hi = (h >> 32).to(torch.float64)  # signed high word in [-2**31, 2**31)
    lo = h.bitwise_and_(0xFFFFFFFF).to(torch.float64)
    # u1 = (hi + 2**31 + 1/2) 2**-32 in (0, 1);  r = sqrt(-2 log u1)
    r = hi.add_(2.0**31 + 0.5).log_().sub_(32 * math.log(2.0)).mul_(-2.0).sqrt_()
    theta = lo.mul_(2.0 * math.pi * 2.0**-32)
    out = torch.stack((torch.cos(theta).mul_(r), theta.sin_().mul_(r)), dim=-1)
    return out.reshape(*h.shape[:-1], 2 * h.shape[-1])[..., :numel]


def _normals(keys: torch.Tensor, stream: int, steps, numel: int) -> torch.Tensor:
    """float64 normals (B, L, numel) for sample keys (B,) and steps (L,)."""
    words = _step_words(stream, steps)
    return _box_muller(_hash_bits(keys, words, (numel + 1) // 2), numel)


def counter_randn(seeds: Seeds, shape, stream: int, step: int = 0, *, dtype=torch.float32,
                  device=None) -> torch.Tensor:
    """Standard normal tensor of ``shape`` (batch first) from per-sample seeds.

    Element j of sample k is a pure function of (seeds[k], stream, step, j) (module docstring), so a
    sample's noise does not depend on its batch-mates, the batch size or the device. ``seeds``: an
    int s (sample k uses s + k), or one int per sample. ``stream``: a ``Stream``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        raise ValueError("shape needs a batch dimension")
    s = seed_tensor(seeds, shape[0], device=device)
    numel = math.prod(shape[1:])
    z = _normals(_sample_keys(s), stream, [step], numel)
    return z.reshape(shape).to(dtype)


def draw_x_T(shape, seed: Optional[Seeds] = None, generator: Generators = None, *, dtype=torch.float32,
             device=None) -> torch.Tensor:
    """x_T ~ N(0, I) of ``shape``: from seeds (``Stream.X_T``, counter-based: sample k from seed + k)
    or from ``generator`` (None, one generator, or one per sample). The one x_T draw of the project."""
    if seed is not None and generator is not None:
        raise ValueError("give seed or generator, not both")
    if seed is not None:
        return counter_randn(seed, shape, Stream.X_T, 0, dtype=dtype, device=device)
    return randn(shape, generator, dtype=dtype, device=device)


# ---- torch.Generator based ---------------------------------------------------------------------

def per_sample_generators(seed: int, n: int, device="cpu") -> list:
    """One ``torch.Generator`` per sample: sample k is seeded with ``seed + k``.

    The union of samples drawn in shards (k = 0..n-1 split across processes or batches) is
    therefore identical to one run over all n samples. (``sample(seed=)`` uses the faster
    counter-based ``counter_randn`` instead; this is for ``generator=`` lists.)
    """
    seed = check_seed(seed, n)
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
