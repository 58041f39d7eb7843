"""Conditioning and classifier-free guidance at the network boundary.

A conditional net is called ``net(x, timesteps, **cond)`` (diffusers' keyword names:
``class_labels``, ``encoder_hidden_states``). Every tensor in ``cond`` is per sample: its first
dimension is the batch, so it is sliced and sharded exactly like x.

Classifier-free guidance (Ho & Salimans 2022, eq. 6), evaluated as one doubled batch
``[x; x]`` with ``[cond; null]``:

    out = out_uncond + w (out_cond - out_uncond)

where ``out`` is the network's own output (eps, v, x0 or score). For a fixed (x, t) every
prediction type is an affine function of eps with the same coefficients for the conditional and
the unconditional branch (x0 = (x - sigma eps)/alpha, v = alpha eps - sigma x0, score = -eps/sigma),
and a weighted sum whose weights add up to 1 commutes with affine maps, so guiding the raw output
is *the same* as guiding eps: the result does not depend on the space the model predicts in.

Guidance rescale (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
Sec. 3.4, eq. 15-16) is not affine-invariant; like diffusers' ``guidance_rescale`` it acts on the
network's output (per sample, std over all non-batch dimensions):

    out_rescaled = out * std(out_cond) / std(out),   out <- phi out_rescaled + (1 - phi) out.

Guidance interval (Kynkäänniemi et al. 2024, "Applying Guidance in a Limited Interval Improves
Sample and Distribution Quality"): guidance is applied only for t in [t_lo, t_hi] (the VP time in
[0, 1]); outside it the plain conditional output is used and only the conditional half is evaluated.

NFE: one guided evaluation counts as one network evaluation (the convention of the DPM-Solver++
paper and diffusers); the number of batched network rows is counted separately.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

import torch

__all__ = ["Guidance", "make_guidance", "null_condition", "guided_output"]


@dataclass(frozen=True)
class Guidance:
    """Validated conditioning for one solve. ``null`` is None when no unconditional branch is needed."""

    cond: Dict[str, torch.Tensor]
    null: Optional[Dict[str, torch.Tensor]]
    scale: Optional[float]  # None or 1: plain conditional sampling
    rescale: float = 0.0
    interval: Optional[Tuple[float, float]] = None

    @property
    def guided(self) -> bool:
        return self.scale is not None and self.scale != 1.0

    def active(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) bool: rows whose time lies in the guidance interval (all rows without an interval)."""
        if not self.guided:
            return torch.zeros(t.shape, dtype=torch.bool)
        if self.interval is None:
            return torch.ones(t.shape, dtype=torch.bool)
        lo, hi = self.interval
        return (t >= lo) & (t <= hi)


def _label_spec(conditioning: Optional[Mapping], key: str) -> Optional[Mapping]:
    return (conditioning or {}).get(key) if isinstance((conditioning or {}).get(key), Mapping) else None


def null_condition(conditioning: Optional[Mapping], like: Mapping[str, torch.Tensor],
                   null_cond: Optional[Mapping] = None) -> Dict[str, torch.Tensor]:
    """The model's null condition for every key of ``like``, batched like ``like``.

    Sources, first match wins: the user's ``null_cond`` (a tensor per key, either per sample or one
    row that is broadcast), a declared ``null_class`` for ``class_labels``, a declared ``null`` tensor."""
    out = {}
    for key, c in like.items():
        b = c.shape[0]
        if null_cond is not None and key in null_cond:
            n = torch.as_tensor(null_cond[key], device=c.device)
            if n.ndim == c.ndim - 1:
                n = n.unsqueeze(0)
            if n.shape[0] == 1 and b != 1:
                n = n.expand(b, *n.shape[1:])
            if n.shape != c.shape:
                raise ValueError(f"null_cond[{key!r}] has shape {tuple(n.shape)}; expected {tuple(c.shape)} (like cond) or one row {tuple(c.shape[1:])}")
            out[key] = n.to(c.dtype)
            continue
        spec = _label_spec(conditioning, key)
        if spec is not None and spec.get("null_class") is not None:
            out[key] = torch.full_like(c, int(spec["null_class"]))
        elif spec is not None and spec.get("null") is not None:
            n = torch.as_tensor(spec["null"], device=c.device, dtype=c.dtype)
            out[key] = n.unsqueeze(0).expand_as(c) if n.ndim == c.ndim - 1 else n.expand_as(c)
        else:
            raise ValueError(f"guidance needs an unconditional input for {key!r}, but the model declares no null "
                             f"condition for it; pass null_cond={{{key!r}: ...}} (e.g. the empty-prompt embedding)")
    return out


def _check_labels(y: torch.Tensor, spec: Mapping, batch: int) -> None:
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise ValueError(f"cond['class_labels'] must be integer labels, got dtype {y.dtype}")
    if y.shape != (batch,):
        raise ValueError(f"cond['class_labels'] must have shape ({batch},) (one label per sample), got {tuple(y.shape)}")
    c = int(spec.get("num_classes", 0))
    top = c if spec.get("null_class") == c else c - 1
    if y.numel() and (int(y.min()) < 0 or int(y.max()) > top):
        bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
        extra = f" ({c} = the null class)" if top == c else ""
        raise ValueError(f"class label {bad} is outside the model's classes 0..{c - 1}{extra}")


def make_guidance(conditioning: Optional[Mapping], batch: int, device, cond: Optional[Mapping] = None,
                  guidance: Optional[float] = None, guidance_rescale: float = 0.0,
                  guidance_interval: Optional[Tuple[float, float]] = None,
                  null_cond: Optional[Mapping] = None) -> Optional[Guidance]:
    """Check the conditioning arguments of ``sample()`` against the model, before any network call.

    ``conditioning`` is the model's declaration (``NoisePredictor.conditioning``), e.g.
    ``{"class_labels": {"num_classes": 10, "null_class": 10}}``. Returns None for an unconditional
    solve (no ``cond`` and no declared null condition)."""
    if guidance is not None:
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance) or guidance < 0:
            raise ValueError(f"guidance must be a finite number >= 0 (1 = plain conditional, 0 = unconditional), got {guidance!r}")
        guidance = float(guidance)
    if isinstance(guidance_rescale, bool) or not isinstance(guidance_rescale, (int, float)) \
            or not math.isfinite(guidance_rescale) or not 0.0 <= guidance_rescale <= 1.0:
        raise ValueError(f"guidance_rescale must be a number in [0, 1], got {guidance_rescale!r}")
    if guidance_interval is not None:
        try:
            lo, hi = (float(v) for v in guidance_interval)
        except (TypeError, ValueError):
            raise ValueError(f"guidance_interval must be a pair (t_lo, t_hi) in [0, 1], got {guidance_interval!r}") from None
        if not (0.0 <= lo <= hi <= 1.0):
            raise ValueError(f"guidance_interval must satisfy 0 <= t_lo <= t_hi <= 1, got ({lo}, {hi})")
        guidance_interval = (lo, hi)
    uses_guidance = guidance is not None and guidance != 1.0
    if cond is None or len(cond) == 0:
        if not conditioning:
            if uses_guidance or guidance_rescale or guidance_interval is not None or null_cond is not None:
                raise ValueError("guidance options need cond=...; this model is unconditional")
            return None
        if uses_guidance:
            raise ValueError(f"guidance={guidance} needs cond=... (the condition to guide towards); "
                             f"this model takes {', '.join(conditioning)}")
        # unconditional sampling of a conditional model: its null condition, when it declares one
        like = {k: torch.zeros(batch, dtype=torch.long, device=device) for k in conditioning
                if (_label_spec(conditioning, k) or {}).get("null_class") is not None}
        if not like:
            return None
        return Guidance(cond=null_condition(conditioning, like, None), null=None, scale=None)
    if not isinstance(cond, Mapping):
        raise ValueError(f"cond must be a dict of per-sample tensors (e.g. {{'class_labels': y}}), got {type(cond).__name__}")
    if not conditioning:
        raise ValueError(f"this model is unconditional and takes no cond (got {', '.join(map(str, cond))}); "
                         "declare conditioning=... on the NoisePredictor if the net accepts keyword inputs")
    unknown = sorted(set(cond) - set(conditioning))
    if unknown:
        raise ValueError(f"unknown condition(s) {', '.join(unknown)}; this model takes: {', '.join(conditioning)}")
    checked = {}
    for key, c in cond.items():
        c = torch.as_tensor(c, device=device)
        if c.ndim == 0 or c.shape[0] != batch:
            raise ValueError(f"cond[{key!r}] must have the batch dimension {batch} first (one entry per sample), got shape {tuple(c.shape)}")
        spec = _label_spec(conditioning, key)
        if key == "class_labels" and spec is not None and "num_classes" in spec:
            _check_labels(c, spec, batch)
        elif c.is_floating_point() and not torch.isfinite(c).all():
            raise ValueError(f"cond[{key!r}] contains NaN or inf")
        checked[key] = c
    null = null_condition(conditioning, checked, null_cond) if uses_guidance else None
    if null_cond is not None and not uses_guidance:
        raise ValueError("null_cond is only used with guidance != 1")
    return Guidance(cond=checked, null=null, scale=guidance, rescale=float(guidance_rescale), interval=guidance_interval)


def _rows(v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return v[rows.to(v.device)]


def guided_output(call, x: torch.Tensor, ts: torch.Tensor, t: torch.Tensor, g: Guidance) -> Tuple[torch.Tensor, int]:
    """The (guided) network output and the number of network rows evaluated.

    ``call(x, ts, cond_dict)`` runs the net once; ``ts`` are the net's timesteps, ``t`` the VP times
    (float64, (B,), on the CPU) that decide the guidance interval."""
    b = x.shape[0]
    active = g.active(t)
    if not bool(active.any()):
        return call(x, ts, g.cond), b
    if bool(active.all()):
        rows = slice(None)
        xa, tsa, ca, na = x, ts, g.cond, g.null
    else:  # only some rows inside the interval: guide those, plain conditional for the rest
        idx = active.nonzero().squeeze(1)
        rows = idx
        xa, tsa = _rows(x, idx), _rows(ts, idx)
        ca = {k: _rows(v, idx) for k, v in g.cond.items()}
        na = {k: _rows(v, idx) for k, v in g.null.items()}
    n = xa.shape[0]
    both = call(torch.cat([xa, xa]), torch.cat([tsa, tsa]), {k: torch.cat([ca[k], na[k]]) for k in ca})
    out_c, out_u = both[:n], both[n:]
    out = out_u + g.scale * (out_c - out_u)
    if g.rescale > 0:
        dims = tuple(range(1, out.ndim))
        factor = out_c.std(dim=dims, keepdim=True) / out.std(dim=dims, keepdim=True)
        out = g.rescale * (out * factor) + (1.0 - g.rescale) * out
    if isinstance(rows, slice):
        return out, 2 * n
    rest = ~active
    ridx = rest.nonzero().squeeze(1)
    out_rest = call(_rows(x, ridx), _rows(ts, ridx), {k: _rows(v, ridx) for k, v in g.cond.items()})
    merged = torch.empty_like(x, dtype=out.dtype)
    merged[idx.to(x.device)] = out
    merged[ridx.to(x.device)] = out_rest
    return merged, 2 * n + ridx.numel()
