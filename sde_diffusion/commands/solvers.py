"""``sde-diffusion solvers``: list the solvers with their summary (wrapped, never cut), default
spacing and options."""

from __future__ import annotations

import argparse
import inspect
import re
import shutil
import textwrap
from typing import Callable, List


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("solvers", help="list the solvers: summary, default spacing, options",
                       description="List every solver in sde_diffusion.SOLVERS with the first sentence of its "
                       "docstring, its default time spacing (or 'adaptive'), whether it is stochastic, and the "
                       "options `sample --option KEY=VALUE` passes to it.")
    p.add_argument("--width", type=int, default=None, help="line width (default: the terminal's, at most 100)")
    p.set_defaults(func=run)


def summary(fn: Callable) -> str:
    """The docstring's first paragraph up to its first formula (a line ending in ':'), on one
    line, without reST markup."""
    doc = inspect.getdoc(fn) or ""
    para = doc.split("\n\n")[0].splitlines()
    keep: List[str] = []
    for line in para:
        keep.append(line.strip())
        if line.rstrip().endswith(":"):
            break
    text = " ".join(keep).rstrip(":").strip()
    return re.sub(r"``([^`]*)``", r"\1", text)


def _options(fn: Callable) -> List[str]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return []
    return [k for k, p in params.items() if p.kind is p.KEYWORD_ONLY and k not in ("noise", "callback")]


def run(args: argparse.Namespace) -> int:
    from ..cli import CLIError
    from ..solvers import ADAPTIVE, DEFAULT_SPACING, SOLVERS, STOCHASTIC

    if args.width is not None and args.width < 40:
        raise CLIError(f"--width must be >= 40, got {args.width}")
    width = args.width or min(100, max(60, shutil.get_terminal_size((100, 24)).columns))
    name_w = max(map(len, SOLVERS)) + 2
    for name, fn in SOLVERS.items():
        tags = ["adaptive (rtol/atol)" if name in ADAPTIVE else f"spacing {DEFAULT_SPACING.get(name, 'uniform')}"]
        if name in STOCHASTIC:
            tags.append("stochastic")
        opts = _options(fn)
        tags.append("options: " + (", ".join(opts) if opts else "none"))
        body = f"{summary(fn)}. [{'; '.join(tags)}]".replace("..", ".")
        lines = textwrap.wrap(body, width=width - name_w) or [""]
        print(f"{name:<{name_w}}{lines[0]}")
        for line in lines[1:]:
            print(" " * name_w + line)
    return 0
