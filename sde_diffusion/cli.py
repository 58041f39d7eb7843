"""The ``sde-diffusion`` command line: one sub-command per job, errors as one readable line.

Each sub-command lives in ``sde_diffusion/commands/<name>.py`` with a ``register(subparsers)``
function; heavy imports happen inside the command, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main", "build_parser", "CLIError", "COMMANDS"]

# sub-command modules, in the order ``--help`` lists them
COMMANDS = ["sample", "solvers", "train", "bench", "nll"]


class CLIError(Exception):
    """An error reported to the user as one line, without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sde-diffusion",
        description="Sample, train, benchmark and evaluate diffusion models on one VP-SDE.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"sde_diffusion.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"sde_diffusion.commands.{name}":
                continue  # not written yet
            raise
        mod.register(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"sde-diffusion {args.command}: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, FileNotFoundError, TypeError, ImportError) as e:
        print(f"sde-diffusion {args.command}: error: {e}", file=sys.stderr)
        return 2
