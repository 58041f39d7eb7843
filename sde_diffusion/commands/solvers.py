"""``sde-diffusion solvers``: list the solvers, one line each."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("solvers", help="list the solvers with one line each")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..solvers import ADAPTIVE, DEFAULT_SPACING, SOLVERS, STOCHASTIC

    width = max(map(len, SOLVERS))
    for name, fn in SOLVERS.items():
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        tags = ["adaptive" if name in ADAPTIVE else f"spacing={DEFAULT_SPACING.get(name, 'uniform')}"]
        if name in STOCHASTIC:
            tags.append("stochastic")
        print(f"{name:<{width}}  {doc}  [{', '.join(tags)}]")
    return 0
