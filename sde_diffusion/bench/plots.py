"""Figures of a benchmark folder, from its rows (and the few samples kept in ``samples/``).

- ``plots/<metric>_best.png``: per target NFE the best of each library (ours solid, diffusers
  dashed), 95% bands, markers coloured by the winner's solver family, references as labelled
  horizontal lines; log NFE axis with ticks at the measured NFEs.
- ``plots/<metric>_all.png``: every configuration, one panel per solver family, colour = spacing.
- ``plots/samples.png``: at NFE 5 and 10, our best vs diffusers' best (by ``rmse_ref``) vs the
  converged probability-flow solve, from the same x_T.
Every figure has a fixed size (no ``bbox_inches="tight"``), at most 2000 px per side.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .report import NOT_RANKED
from .score import HIGHER_IS_BETTER

__all__ = ["plot_all", "save_grid_png", "FAMILIES", "family_of", "MAX_PX"]

MAX_PX = 2000
FAMILIES = {  # family -> (solvers and peers, colour); one colour per family in every figure
    "DDIM / Euler": (("ddim", "euler"), "#1f77b4"),
    "Heun": (("heun",), "#8c564b"),
    "DPM-Solver": (("dpm_solver", "dpmpp_2m", "dpmpp_3m"), "#d62728"),
    "UniPC": (("unipc",), "#2ca02c"),
    "DEIS": (("deis",), "#9467bd"),
    "LMS / iPNDM": (("lms", "ipndm"), "#17becf"),
    "stochastic": (("ancestral", "ddpm", "euler_maruyama", "pc", "dpmpp_2m_sde", "euler_ancestral",
                    "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_3m_sde", "restart"), "#7f7f7f"),
    "adaptive ODE": (("ode", "scipy"), "#ff7f0e"),
}
SPACING_COLOURS = {"uniform": "#1f77b4", "quadratic": "#ff7f0e", "logsnr": "#2ca02c", "karras": "#d62728",
                   "trailing": "#9467bd", "leading": "#8c564b", "linspace": "#e377c2", "lu": "#17becf",
                   "tuned": "#000000"}
STOCHASTIC_NAMES = set(FAMILIES["stochastic"][0])


def family_of(solver: str) -> str:
    base = solver.split("[", 1)[0]
    for fam, (names, _) in FAMILIES.items():
        if base in names:
            return fam
    return "other"


def _colour(fam: str) -> str:
    return FAMILIES.get(fam, ((), "#bcbd22"))[1]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int) -> Path:
    w, h = fig.get_size_inches()
    dpi = min(dpi, int(MAX_PX / max(w, h)))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return path


def _nfe_axis(ax, nfes):
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(sorted(nfes)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    lo, hi = min(nfes), max(nfes)
    ax.set_xlim(lo / 1.25, hi * 1.25)


def _references(ax, rows, metric, guidance, logy):
    from matplotlib.transforms import blended_transform_factory

    tr = blended_transform_factory(ax.transAxes, ax.transData)
    refs = sorted((r for r in rows if r["metric"] == metric and r["role"] in ("reference", "floor")
                   and r.get("guidance") in (guidance, None) and math.isfinite(r["value"]) and not (logy and r["value"] <= 0)),
                  key=lambda r: r["value"])
    for i, r in enumerate(refs):  # labels side by side so that close lines stay readable
        v = r["value"]
        ax.axhline(v, color="0.5", ls=":", lw=1)
        ax.text(0.01 + 0.27 * (i % 3), v, f"{r['solver']} ({r['role']}, NFE {r['nfe']})", transform=tr, fontsize=6,
                color="0.35", ha="left", va="bottom", clip_on=True)


def _sel(rows, metric, guidance):
    return [r for r in rows if r["metric"] == metric and r["role"] == "solver" and r.get("guidance") == guidance
            and math.isfinite(r["value"]) and r["target_nfe"] > 0
            and not (metric == "rmse_ref" and family_of(r["solver"]) == "stochastic")]


def _plain_log_ticks(ax):
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    ax.tick_params(axis="y", which="minor", labelsize=6)


def _ylim(ax, values, low, logy):
    v = np.asarray([x for x in values if math.isfinite(x) and (x > 0 or not logy)])
    if v.size == 0:
        return
    if low:  # keep diverged rows from squeezing the interesting band
        top = min(v.max(), 30 * np.quantile(v, 0.25)) if logy else min(v.max(), np.quantile(v, 0.9) * 1.5)
        bottom = v.min()
    else:
        top, bottom = v.max(), max(v.min(), np.quantile(v, 0.1) - 0.5 * (v.max() - np.quantile(v, 0.1)))
    if logy:
        ax.set_ylim(bottom / 1.5, top * 1.5)
        _plain_log_ticks(ax)
    else:
        pad = 0.08 * (top - bottom or abs(top) or 1.0)
        ax.set_ylim(bottom - pad, top + pad)


def plot_best(out: Path, rows: list, metric: str, guidance=None) -> Path:
    from matplotlib.lines import Line2D

    plt = _plt()
    low = metric not in HIGHER_IS_BETTER
    sel = _sel(rows, metric, guidance)
    nfes = sorted({r["target_nfe"] for r in sel})
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    logy = low and all(r["value"] > 0 for r in sel)
    shown, allvals = [], []
    for lib, ls, mk, col in (("sde_diffusion", "-", "o", "0.1"), ("diffusers", "--", "s", "0.45")):
        best = []
        for nfe in nfes:
            cand = [r for r in sel if r["library"] == lib and r["target_nfe"] == nfe]
            if cand:
                best.append(min(cand, key=lambda r: r["value"] if low else -r["value"]))
        if not best:
            continue
        xs = [r["target_nfe"] for r in best]
        ys = [r["value"] for r in best]
        lo = [r["ci_low"] if math.isfinite(r.get("ci_low", math.nan)) else r["value"] for r in best]
        hi = [r["ci_high"] if math.isfinite(r.get("ci_high", math.nan)) else r["value"] for r in best]
        ax.fill_between(xs, lo, hi, color=col, alpha=0.12, lw=0)
        ax.plot(xs, ys, ls=ls, color=col, lw=1.5, zorder=2)
        for r in best:
            fam = family_of(r["solver"])
            ax.plot([r["target_nfe"]], [r["value"]], marker=mk, ms=7, color=_colour(fam), mec="k", mew=0.6, zorder=3)
            last = r["target_nfe"] == nfes[-1]
            ax.annotate(f"{r['solver']}, {r['spacing']}", (r["target_nfe"], r["value"]), textcoords="offset points",
                        xytext=(-7 if last else 7, -12 if lib == "sde_diffusion" else 7), ha="right" if last else "left",
                        fontsize=6.5, color=col, clip_on=True)
            shown.append(fam)
        allvals += ys + lo + hi
        ax.plot([], [], ls=ls, color=col, label="sde_diffusion (ours)" if lib == "sde_diffusion" else "diffusers")
    _references(ax, rows, metric, guidance, logy)
    if logy:
        ax.set_yscale("log")
    _ylim(ax, allvals, low, logy)
    if nfes:
        _nfe_axis(ax, nfes)
    handles, _ = ax.get_legend_handles_labels()
    handles += [Line2D([], [], ls="", marker="o", color=_colour(f), mec="k", label=f) for f in dict.fromkeys(shown)]
    ax.legend(handles=handles, fontsize=7, loc="best", framealpha=0.85)
    ax.set_xlabel("NFE (network evaluations per sample)")
    ax.set_ylabel(f"{metric} ({'lower' if low else 'higher'} is better)")
    w = "" if guidance is None else f", guidance {guidance:g}"
    ax.set_title(f"{metric}: best of each library per NFE{w} (bands: 95% CI; colour: solver family)", fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    suffix = "" if guidance is None else f"_w{guidance:g}"
    return _save(fig, Path(out) / "plots" / f"{metric}{suffix}_best.png", 120)


def plot_every(out: Path, rows: list, metric: str, guidance=None) -> Path:
    plt = _plt()
    low = metric not in HIGHER_IS_BETTER
    sel = _sel(rows, metric, guidance)
    fams = [f for f in list(FAMILIES) + ["other"] if any(family_of(r["solver"]) == f for r in sel)]
    ncol = 3
    nrow = max(1, math.ceil(len(fams) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(13, 3.6 * nrow), squeeze=False, layout="constrained")
    logy = low and all(r["value"] > 0 for r in sel)
    nfes = sorted({r["target_nfe"] for r in sel})
    from matplotlib.lines import Line2D

    markers = "o^vDPsX*<>hd"
    spacings_used = {}
    for ax, fam in zip(axes.flat, fams):
        series = {}
        for r in sel:
            if family_of(r["solver"]) == fam:
                series.setdefault((r["library"], r["solver"], r["spacing"]), []).append(r)
        solvers = sorted({(lib, sol) for lib, sol, _ in series})
        mark = {k: markers[i % len(markers)] for i, k in enumerate(solvers)}
        for (lib, sol, sp), rs in sorted(series.items()):
            rs.sort(key=lambda r: r["target_nfe"])
            col = SPACING_COLOURS.get(sp, "#bcbd22")
            spacings_used[sp] = col
            ax.plot([r["target_nfe"] for r in rs], [r["value"] for r in rs], ls="--" if lib == "diffusers" else "-",
                    marker=mark[(lib, sol)], ms=3.5, lw=0.9, color=col, alpha=0.9)
        handles = [Line2D([], [], color="k", ls="--" if lib == "diffusers" else "-", marker=mark[(lib, sol)], ms=4, lw=0.8,
                          label=f"{'diffusers ' if lib == 'diffusers' else ''}{sol}") for lib, sol in solvers]
        _references(ax, rows, metric, guidance, logy)
        if logy:
            ax.set_yscale("log")
        _ylim(ax, [r["value"] for r in sel], low, logy)
        if nfes:
            _nfe_axis(ax, nfes)
        ax.set_title(fam, fontsize=9, color=_colour(fam))
        ax.legend(handles=handles, fontsize=5.5, loc="best", ncol=1 if len(handles) < 6 else 2, framealpha=0.8)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(fams):]:
        ax.set_visible(False)
    fig.legend(handles=[Line2D([], [], color=c, lw=2, label=sp) for sp, c in spacings_used.items()], loc="outside lower center",
               ncol=len(spacings_used), fontsize=7, title="spacing (colour)", title_fontsize=7)
    w = "" if guidance is None else f", guidance {guidance:g}"
    fig.suptitle(f"{metric} vs NFE, every configuration{w} (ours solid, diffusers dashed; colour = spacing; "
                 f"y axis clipped to the useful range)", fontsize=9)
    suffix = "" if guidance is None else f"_w{guidance:g}"
    return _save(fig, Path(out) / "plots" / f"{metric}{suffix}_all.png", 110)


def plot_samples(out: Path, rows: list, samples: dict, nfes=(5, 10), guidance=None, metric="rmse_ref"):
    """``samples``: config key -> tensor of the first samples (same x_T for every key); None when
    the folder holds no kept samples for the needed rows."""
    plt = _plt()
    ref = next((k for k in samples if "pf_reference" in k
                and (k.endswith(f"|w={guidance:g}") if guidance is not None else "|w=" not in k)), None)
    if ref is None:
        return None
    cells = []  # (row title, [(column title, samples)])
    for nfe in nfes:
        row = []
        for lib in ("sde_diffusion", "diffusers"):
            cand = [r for r in rows if r["metric"] == metric and r["role"] == "solver" and r["library"] == lib
                    and r["target_nfe"] == nfe and r.get("guidance") == guidance and r.get("key") in samples]
            if cand:
                r = min(cand, key=lambda r: r["value"])
                row.append((f"{'ours' if lib == 'sde_diffusion' else 'diffusers'}: {r['solver']}, {r['spacing']}\n"
                            f"NFE {r['nfe']}, {metric} {r['value']:.3g}", samples[r["key"]]))
        if row:
            sp = next((r["spacing"] for r in rows if r["solver"] == "pf_reference" and r.get("guidance") == guidance), "")
            row.append((f"converged PF-ODE\n({sp})", samples[ref]))
            cells.append(row)
    if not cells:
        return None
    ncol = max(len(r) for r in cells)
    fig, axes = plt.subplots(len(cells), ncol, figsize=(2.4 * ncol, 2.7 * len(cells)), squeeze=False, layout="constrained")
    for axrow, row in zip(axes, cells):
        for ax in axrow[len(row):]:
            ax.set_visible(False)
        for ax, (title, x) in zip(axrow, row):
            _show(ax, np.asarray(x, dtype=np.float64))
            ax.set_title(title, fontsize=7)
    w = "" if guidance is None else f", guidance {guidance:g}"
    fig.suptitle(f"Same x_T in every panel{w}: best of each library by {metric} at NFE "
                 f"{', '.join(map(str, nfes))} vs the converged solve", fontsize=8)
    suffix = "" if guidance is None else f"_w{guidance:g}"
    return _save(fig, Path(out) / "plots" / f"samples{suffix}.png", 150)


def _show(ax, x: np.ndarray) -> None:
    if x.ndim == 4:  # images (B, C, H, W) in [-1, 1]: a mosaic of the first 16
        k = min(16, x.shape[0])
        side = int(math.ceil(math.sqrt(k)))
        h, w = x.shape[2:]
        pad = np.ones((side * (h + 1) - 1, side * (w + 1) - 1))
        for i in range(k):
            r_, c_ = divmod(i, side)
            pad[r_ * (h + 1):r_ * (h + 1) + h, c_ * (w + 1):c_ * (w + 1) + w] = x[i].mean(0)
        ax.imshow(np.clip((pad + 1) / 2, 0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        v = x.reshape(x.shape[0], -1)
        ax.scatter(v[:, 0], v[:, 1], s=2, alpha=0.5)
        ax.set_xlim(-1.3, 1.3)
        ax.set_ylim(-1.3, 1.3)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=6)


def plot_guidance(out: Path, rows: list, metric: str = "rmse_ref") -> Path:
    """Guided runs: ``metric`` against the guidance scale, one panel per target NFE, one line per
    solver at its best spacing (colour = family; ours solid, diffusers dashed)."""
    plt = _plt()
    low = metric not in HIGHER_IS_BETTER
    sel = [r for r in rows if r["metric"] == metric and r["role"] == "solver" and r.get("guidance") is not None
           and math.isfinite(r["value"]) and not (metric == "rmse_ref" and family_of(r["solver"]) == "stochastic")]
    nfes = sorted({r["target_nfe"] for r in sel})
    ws = sorted({r["guidance"] for r in sel})
    fig, axes = plt.subplots(1, len(nfes), figsize=(4.3 * len(nfes), 4.2), squeeze=False, layout="constrained")
    logy = low and all(r["value"] > 0 for r in sel)
    for ax, nfe in zip(axes[0], nfes):
        best = {}
        for r in sel:
            if r["target_nfe"] == nfe:
                k = (r["library"], r["solver"], r["guidance"])
                if k not in best or (r["value"] < best[k]["value"]) == low:
                    best[k] = r
        for lib, sol in sorted({(k[0], k[1]) for k in best}):
            pts = sorted((w, best[(lib, sol, w)]["value"]) for w in ws if (lib, sol, w) in best)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], ls="--" if lib == "diffusers" else "-",
                    marker="s" if lib == "diffusers" else "o", ms=4, lw=1.2, color=_colour(family_of(sol)),
                    label=f"{'diffusers ' if lib == 'diffusers' else ''}{sol}")
        if logy:
            ax.set_yscale("log")
            _plain_log_ticks(ax)
        ax.set_xticks(ws)
        ax.set_xlabel("guidance scale w")
        ax.set_title(f"NFE {nfe}", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel(f"{metric} ({'lower' if low else 'higher'} is better)")
    axes[0][-1].legend(fontsize=6, loc="best", ncol=2, framealpha=0.8)
    fig.suptitle(f"{metric} against the guidance scale (each solver at its best spacing; colour = solver family)", fontsize=9)
    return _save(fig, Path(out) / "plots" / f"{metric}_vs_guidance.png", 120)


def plot_all(out: Path, rows: list, samples: dict) -> list:
    """Every figure of the folder; returns their paths relative to ``out``."""
    paths = []
    gs = sorted({r.get("guidance") for r in rows}, key=lambda g: -1 if g is None else g)
    for g in gs:
        for metric in sorted({r["metric"] for r in rows if r["role"] == "solver"}):
            if not _sel(rows, metric, g):
                continue
            if metric not in NOT_RANKED:
                paths.append(plot_best(out, rows, metric, g))
            paths.append(plot_every(out, rows, metric, g))
        if any(r["metric"] == "rmse_ref" for r in rows):
            p = plot_samples(out, rows, samples, guidance=g)
            if p is not None:
                paths.append(p)
    if len([g for g in gs if g is not None]) > 1:
        for metric in ("rmse_ref", "class_acc_confident"):
            if any(r["metric"] == metric and r["role"] == "solver" for r in rows):
                paths.append(plot_guidance(out, rows, metric))
    return [Path(p).relative_to(out) for p in paths]


def save_grid_png(x, path: Path) -> None:
    """64 samples of one configuration: an image grid, or a scatter plot for 2-D points."""
    import torch

    if x.ndim == 4:
        from ..images import save_grid

        save_grid(x[:64].detach().cpu().float(), path, nrow=8)
        return
    plt = _plt()
    fig, ax = plt.subplots(figsize=(3, 3), layout="constrained")
    v = x.reshape(x.shape[0], -1).detach().cpu().to(torch.float64).numpy()
    ax.scatter(v[:, 0], v[:, 1], s=2, alpha=0.5)
    ax.set_xlim(-1.3, 1.3)
    ax.set_ylim(-1.3, 1.3)
    ax.set_title(Path(path).stem, fontsize=6)
    _save(fig, Path(path), 90)
