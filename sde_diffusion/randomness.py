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
    SplitMix64's published outputs); (c) the float transform uses IEEE add/multiply and table
    values made on the CPU (cos and sin, see ``_box_muller``), plus one ``log`` and one ``sqrt``
    from the device's math library, which can differ by an ulp of float64 between CPU and CUDA
    (torch's float64 ``sqrt`` on a CPU is not correctly rounded: about 1% of its values are one ulp
    from math.sqrt; CUDA's is correctly rounded). So float64 noise agrees across devices to an ulp
    or two (about 2e-16 relative), and float32 noise is bitwise equal except where a float64 value
    lies within that distance of a float32 rounding boundary (at most about one value in 10**8).
    tests/test_randomness.py checks this on CUDA where a GPU exists; none was available when this
    was written, so it has not been observed.

Speed (docs/scale.md)
    The default draw is about 45 elementwise torch operations per chunk of 64k pairs;
    ``use_compiled_noise()`` (opt-in, CPU) runs the same operations as two compiled kernels around
    torch's eager ``log`` and ``sqrt``: bitwise the same values, about twice as fast.

Streams (``Stream``)
    Every consumer of seeded randomness has its own stream number, so x_T, per-step noise,
    corrector noise and the Brownian path of one seed are independent of each other.

Generators (``per_sample_generators``, ``randn``, ``rand``)
    ``generator=`` arguments keep working as before: None, one ``torch.Generator``, or a list
    with one generator per sample (the diffusers convention).
"""

from __future__ import annotations

import enum
import logging
import math
import operator
import os
import threading
from typing import Optional, Sequence, Union

import torch

Generators = Union[None, torch.Generator, Sequence[torch.Generator]]
Seeds = Union[int, Sequence[int], torch.Tensor]

__all__ = ["Stream", "SEED_LIMIT", "check_seed", "seed_tensor", "counter_randn", "use_compiled_noise",
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


def _mix(z: torch.Tensor, t: Optional[torch.Tensor] = None) -> torch.Tensor:
    """SplitMix64's output function on int64 bits, in place on z (a fresh tensor); ``t`` is an optional
    int64 scratch tensor like z. (In-place ops and one scratch buffer: on a CPU a fresh large tensor
    per operation costs more in page faults than the arithmetic.)"""
    t = torch.empty_like(z) if t is None else t
    for shift, mult in ((30, _M1), (27, _M2), (31, None)):
        torch.bitwise_right_shift(z, shift, out=t)
        z ^= t.bitwise_and_(_MASK[shift])  # logical shift: clear the copied sign bits
        if mult is not None:
            z *= mult
    return z


def _sample_keys(seeds: torch.Tensor) -> torch.Tensor:
    """mix(seed + G) per sample: the first SplitMix64 output of state ``seed``."""
    return _mix(seeds + _G)


def _words(stream: int, steps) -> list:
    """stream * 2**48 + step for each step, as Python ints (checked on the host: no device sync);
    ``steps``: an int, a sequence of ints or an int64 tensor."""
    s = int(stream)
    if not 0 <= s < (1 << 15):
        raise ValueError(f"stream must be an integer in [0, 2**15), got {stream!r}")
    if isinstance(steps, torch.Tensor):
        steps = steps.reshape(-1).tolist()
    elif not isinstance(steps, (list, tuple)):
        steps = [steps]
    steps = [operator.index(i) for i in steps]
    if any(i < 0 or i >= 1 << _STREAM_SHIFT for i in steps):
        raise ValueError(f"steps must lie in [0, 2**{_STREAM_SHIFT}), got {steps[:4]}...")
    return [i + (s << _STREAM_SHIFT) for i in steps]


def _step_words(stream: int, steps, device=None) -> torch.Tensor:
    """``_words`` as an int64 tensor (L,) on ``device``."""
    return torch.tensor(_words(stream, steps), dtype=torch.int64, device=device)


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


_WORKSPACE = threading.local()
_WORKSPACE_MAX = 1 << 18  # pairs; larger draws allocate their scratch afresh


def _scratch(shape, device) -> tuple:
    """Scratch tensors for one draw of ``shape`` pairs: 2 int64 and 7 float64, reused between calls of
    the same shape and device in this thread (on a CPU the first touch of fresh memory costs more
    than the arithmetic; the returned noise never aliases them)."""
    shape, n = tuple(shape), math.prod(shape)
    key = (shape, str(device))
    cache = getattr(_WORKSPACE, "cache", None)
    if cache is None:
        cache = _WORKSPACE.cache = {}
    if key in cache:
        return cache[key]
    bufs = tuple(torch.empty(shape, dtype=torch.int64, device=device) for _ in range(2)) + \
        tuple(torch.empty(shape, dtype=torch.float64, device=device) for _ in range(7))
    if n <= _WORKSPACE_MAX:
        if len(cache) >= 4:  # a few shapes (a full chunk and the last, partial one of a draw)
            cache.pop(next(iter(cache)))
        cache[key] = bufs
    return bufs


def _hash_bits(keys: torch.Tensor, words: torch.Tensor, pairs: int, out=None, scratch=None) -> torch.Tensor:
    """64 random bits per (sample, step, pair): int64 (B, L, pairs)."""
    k = _mix(keys[:, None] ^ words.to(keys.device)[None, :])  # (B, L)
    z = torch.add(k[:, :, None], _counters(pairs, keys.device), out=out)
    return _mix(z, scratch)


_TABLE_BITS = 10
_TABLES: dict = {}


def _sincos_table(device):
    """cos, sin of 2 pi i / 2**10 (i < 2**10), float64: computed once on the CPU and copied, so every
    device uses the same bits."""
    key = str(device)
    t = _TABLES.get(key)
    if t is None:
        ang = torch.arange(1 << _TABLE_BITS, dtype=torch.float64) * (2.0 * math.pi / (1 << _TABLE_BITS))
        t = _TABLES[key] = (torch.cos(ang).to(device), torch.sin(ang).to(device))
    return t


_LOG_2_64 = 64 * math.log(2.0)  # = 2 (32 log 2) exactly (power-of-two scalings of one float)
_THETA_UNIT = 2.0 * math.pi * 2.0**-32
_LOG_2_64_TENSORS: dict = {}


def _log_2_64(device):
    """64 log 2 as a 0-dim float64 tensor on ``device`` (first operand of ``sub``), cached."""
    key = str(device)
    c = _LOG_2_64_TENSORS.get(key)
    if c is None:
        c = _LOG_2_64_TENSORS[key] = torch.tensor(_LOG_2_64, dtype=torch.float64, device=device)
    return c


def _box_muller(h: torch.Tensor, bufs: tuple, out: torch.Tensor) -> torch.Tensor:
    """Two normals per 64-bit word h (consumed), written to ``out`` (``h.shape + (2,)``, any float
    dtype): out[..., 0] = r cos, out[..., 1] = r sin, computed in float64 and rounded once to
    out's dtype.

    r = sqrt(-2 log u1) with u1 = (hi + 2**31 + 1/2) 2**-32, hi the signed high word. cos and sin of
    theta = 2 pi lo 2**-32 (lo the low word) use IEEE add/multiply only: theta = a + d with
    a = 2 pi (lo >> 22) / 2**10 from a table made on the CPU, d < 2 pi / 2**10 (= 0.0061) by Taylor
    polynomials (truncation < 6e-20 for cos d, < 1e-19 relative for sin d), then the angle-sum
    formulas; measured within 7e-16 of the exact values, like libm. So device libm trigonometry
    (which differs between CPU and CUDA, and is a slow scalar loop in float64 on some CPUs) never
    enters; only ``log`` and ``sqrt`` do (each within an ulp between libraries; torch's CPU float64
    ``sqrt`` is faithful, not correctly rounded).

    Every float64 operation below is one IEEE-rounded add, multiply or subtract in a fixed order, 33
    elementwise passes after the hash's 12 (the values are bitwise those of the previous 34-pass
    version, checked on 1.6e7 float32 and float64 values):
        r     = sqrt(fl(2 (32 log 2) - 2 log(hi + 2**31 + 1/2)))     [-2 fl(L - 32 log 2), exactly]
        s     = d d,  cos d = ((s (-1/720) + 1/24) s - 1/2) s + 1,  sin d = ((s / 120 - 1/6) s + 1) d
        cos   = ca cos d - sa sin d,   sin = sa cos d + ca sin d,   out = (r cos, r sin) -> dtype
    (No ``addcmul``/``add(alpha=)`` with an inexact product: torch's CPU kernels fuse them into an FMA,
    which rounds once and changes about 0.5% of the float64 values; ``sub(c, L, alpha=2)`` is safe
    because 2 L is exact.)
    """
    ti, r, ca, sa, d, s, cd, sd = bufs
    r.copy_(torch.bitwise_right_shift(h, 32, out=ti))  # hi (signed), exact in float64
    r.add_(2.0**31 + 0.5).log_()
    torch.sub(_log_2_64(h.device), r, alpha=2, out=r).sqrt_()  # 2 (32 log 2) - 2 L: one rounding, as before
    ct, st = _sincos_table(h.device)
    torch.bitwise_right_shift(h, 32 - _TABLE_BITS, out=ti).bitwise_and_((1 << _TABLE_BITS) - 1)  # table index
    torch.index_select(ct, 0, ti.view(-1), out=ca.view(-1))
    torch.index_select(st, 0, ti.view(-1), out=sa.view(-1))
    d.copy_(h.bitwise_and_((1 << (32 - _TABLE_BITS)) - 1)).mul_(_THETA_UNIT)
    torch.mul(d, d, out=s)
    torch.mul(s, -1.0 / 720, out=cd).add_(1.0 / 24).mul_(s).add_(-0.5).mul_(s).add_(1.0)  # cos d
    torch.mul(s, 1.0 / 120, out=sd).add_(-1.0 / 6).mul_(s).add_(1.0).mul_(d)  # sin d
    torch.mul(ca, cd, out=d).sub_(torch.mul(sa, sd, out=s))  # cos(a + d)
    torch.mul(d, r, out=out[..., 0])
    sa.mul_(cd).add_(ca.mul_(sd))  # sin(a + d)
    torch.mul(sa, r, out=out[..., 1])
    return out


def _chunk_pairs(device) -> int:
    """Pairs per pass of the draw: on a CPU a chunk whose scratch tensors (512 KiB each) stay in the
    caches (measured at 4096 x 1x8x8, one thread: 64k pairs 2.33 ms, 32k 2.45, 16k 2.84, one 128k
    pass 2.48); on a GPU large (few kernel launches), bounding the scratch to ~330 MB."""
    return _CPU_CHUNK if torch.device(device).type == "cpu" else _GPU_CHUNK


_CPU_CHUNK = 1 << 16
_GPU_CHUNK = 1 << 22


def _fill(row_keys: torch.Tensor, pairs: int, out: torch.Tensor) -> torch.Tensor:
    """Normals for rows with keys ``row_keys`` (R,) (one per sample and step), written to ``out``
    (R, pairs, 2): pair c of row r is Box-Muller of mix(row_keys[r] + (c + 1) G). Done in chunks of
    rows (or of pairs, for long rows) with reused scratch; the values do not depend on the chunking
    (every operation is elementwise)."""
    R, device = row_keys.shape[0], row_keys.device
    if R == 0 or pairs == 0:
        return out
    chunk = _chunk_pairs(device)
    counters = _counters(pairs, device)
    rb, pb = (max(1, chunk // pairs), pairs) if pairs <= chunk else (1, chunk)
    for r0 in range(0, R, rb):
        r1 = min(R, r0 + rb)
        for p0 in range(0, pairs, pb):
            p1 = min(pairs, p0 + pb)
            h, t, *f64 = _scratch((r1 - r0, p1 - p0), device)
            torch.add(row_keys[r0:r1, None], counters[p0:p1], out=h)
            _box_muller(_mix(h, t), (t, *f64), out[r0:r1, p0:p1])
    return out


# ---- opt-in: the same draw as one compiled CPU kernel -------------------------------------------

_log = logging.getLogger(__name__)
_COMPILED: dict = {}  # the two compiled kernels, made on first use
_USE_COMPILED = os.environ.get("SDE_DIFFUSION_COMPILED_NOISE", "").strip() not in ("", "0")


def use_compiled_noise(enabled: bool = True) -> None:
    """Opt in (or out) to drawing counter-based noise on CPUs with ``torch.compile``d kernels.

    Same values, bitwise: two compiled kernels repeat the integer hash and the float64 add/multiply
    steps of ``_mix`` and ``_box_muller`` operation by operation (inductor compiles with
    ``-ffp-contract=off``, so no multiply-add is fused), and the two operations whose CPU
    implementation is not correctly rounded, ``log`` and ``sqrt``, stay torch's own eager kernels
    (torch's float64 ``sqrt`` on a CPU is faithful, not correctly rounded, and a compiled one differs
    in about 1% of the values). About 45 elementwise passes become 5: 1.20 ms instead of 2.34 ms at
    4096 x 1x8x8 (docs/scale.md). Off by default: the first draw of each dtype compiles for tens of
    seconds (cached on disk by torch afterwards) and needs a C++ compiler; if compiling fails the
    eager draw is used (logged once). Checked bitwise against the eager draw (tests marked slow,
    docs/scale.md). Also enabled by the environment variable ``SDE_DIFFUSION_COMPILED_NOISE=1``.
    Draws on other devices always use the eager path."""
    global _USE_COMPILED
    _USE_COMPILED = bool(enabled)


def _hash_and_angle(row_keys: torch.Tensor, counters: torch.Tensor, ct: torch.Tensor, st: torch.Tensor):
    """Compiled part 1 of the draw: for pair c of row r, from h = mix(row_keys[r] + counters[c]):
    v = hi + 2**31 + 1/2 and cos, sin of theta, float64 (R, pairs) each, every operation as in
    ``_mix`` and ``_box_muller``."""
    z = row_keys[:, None] + counters[None, :]
    z = z ^ ((z >> 30) & _MASK[30])
    z = z * _M1
    z = z ^ ((z >> 27) & _MASK[27])
    z = z * _M2
    h = z ^ ((z >> 31) & _MASK[31])
    v = (h >> 32).to(torch.float64) + (2.0**31 + 0.5)
    idx = (h >> (32 - _TABLE_BITS)) & ((1 << _TABLE_BITS) - 1)
    ca, sa = ct[idx], st[idx]
    d = (h & ((1 << (32 - _TABLE_BITS)) - 1)).to(torch.float64) * _THETA_UNIT
    s = d * d
    cd = ((s * (-1.0 / 720) + 1.0 / 24) * s + (-0.5)) * s + 1.0
    sd = ((s * (1.0 / 120) + (-1.0 / 6)) * s + 1.0) * d
    return v, ca * cd - sa * sd, sa * cd + ca * sd


def _hash_and_angle_into(row_keys, counters, ct, st, v, cos, sin) -> None:
    """``_hash_and_angle`` written into the float64 buffers v, cos, sin (reused between draws: on a
    CPU fresh memory per draw costs page faults inside a sampler's loop)."""
    a, b, c = _hash_and_angle(row_keys, counters, ct, st)
    v.copy_(a)
    cos.copy_(b)
    sin.copy_(c)


def _scale_pairs(cos: torch.Tensor, sin: torch.Tensor, r: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Compiled part 2: (r cos, r sin) rounded to ``dtype``, (R, pairs, 2)."""
    return torch.stack([(cos * r).to(dtype), (sin * r).to(dtype)], -1)


_COMPILED_CHUNK = 1 << 18  # pairs per compiled pass: its three float64 buffers take 6 MiB


def _compiled_scratch(shape) -> tuple:
    """Three float64 buffers of ``shape`` for the compiled draw, reused per thread (a few shapes)."""
    cache = getattr(_WORKSPACE, "compiled", None)
    if cache is None:
        cache = _WORKSPACE.compiled = {}
    bufs = cache.get(shape)
    if bufs is None:
        if len(cache) >= 4:
            cache.pop(next(iter(cache)))
        bufs = cache[shape] = tuple(torch.empty(shape, dtype=torch.float64) for _ in range(3))
    return bufs


def _compiled_fill(row_keys: torch.Tensor, pairs: int, dtype) -> Optional[torch.Tensor]:
    """(R, pairs, 2) from the compiled kernels, or None where they are off, not on a CPU or failed."""
    global _USE_COMPILED
    if (not _USE_COMPILED or row_keys.device.type != "cpu" or row_keys.shape[0] == 0 or pairs == 0
            or dtype not in (torch.float32, torch.float64)):  # half types: the eager cast, checked there
        return None
    try:
        if not _COMPILED:
            _COMPILED["a"] = torch.compile(_hash_and_angle_into, dynamic=True, fullgraph=True)
            _COMPILED["b"] = torch.compile(_scale_pairs, dynamic=True, fullgraph=True)
        counters, (ct, st), c = _counters(pairs, "cpu"), _sincos_table("cpu"), _log_2_64("cpu")
        R = row_keys.shape[0]
        rb = max(1, _COMPILED_CHUNK // pairs)
        out = None
        for r0 in range(0, R, rb):
            keys = row_keys[r0:r0 + rb]
            v, cos, sin = _compiled_scratch((keys.shape[0], pairs))
            _COMPILED["a"](keys, counters, ct, st, v, cos, sin)
            v.log_()  # torch's eager log and sqrt: the same kernels as the eager draw
            torch.sub(c, v, alpha=2, out=v).sqrt_()
            part = _COMPILED["b"](cos, sin, v, dtype)
            if rb >= R:
                return part
            if out is None:
                out = torch.empty(R, pairs, 2, dtype=dtype)
            out[r0:r0 + rb] = part
        return out
    except Exception as e:  # no compiler, unsupported platform: the eager path gives the same values
        _log.warning("compiled noise unavailable (%s: %s); using the eager draw", type(e).__name__, e)
        _USE_COMPILED = False
        return None


def _normals(keys: torch.Tensor, stream: int, steps, numel: int, dtype=torch.float64, out=None) -> torch.Tensor:
    """Normals (B, L, numel) as ``dtype`` for sample keys (B,) and steps (L,); ``out``: optional
    contiguous buffer of B L (numel + 1) // 2 * 2 elements of ``dtype`` to draw into (returned as a
    view)."""
    words = _words(stream, steps)
    pairs = (numel + 1) // 2
    if len(words) == 1:  # one step (every solver step): a scalar xor, no word tensor
        row_keys = _mix(keys ^ words[0])
    else:
        w = torch.tensor(words, dtype=torch.int64, device=keys.device)
        row_keys = _mix(keys[:, None] ^ w[None, :]).view(-1)  # (B L,): sample-major
    fused = _compiled_fill(row_keys, pairs, dtype)
    if fused is not None:
        out = fused
    else:
        if out is None:
            out = torch.empty(row_keys.shape[0], pairs, 2, dtype=dtype, device=keys.device)
        else:
            out = out.view(row_keys.shape[0], pairs, 2)
        _fill(row_keys, pairs, out)
    return out.view(keys.shape[0], len(words), 2 * pairs)[..., :numel]


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
    return _normals(_sample_keys(s), stream, [step], numel, dtype).reshape(shape)


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
