"""The ``sde-diffusion`` command line: one sub-command per job, errors as one readable line.

Each sub-command lives in ``sde_diffusion/commands/<name>.py`` with a ``register(subparsers)``
function; heavy imports happen inside the command, so ``--help`` is fast.

Exit codes: 0 success; 2 a user error (bad argument, unreadable file, a solve that produced NaN,
a diverging training run, a busy output folder), printed as one line
``sde-diffusion COMMAND: error: ...`` on stderr; 1 an unexpected internal error, printed as one
line naming the file that holds the full traceback; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import logging
import os
import re
import sys
import tempfile
import traceback
from typing import Any, List, NoReturn, Optional, Sequence

__all__ = ["main", "build_parser", "CLIError", "COMMANDS", "ArgumentParser", "HelpFormatter"]

# sub-command modules, in the order ``--help`` lists them
COMMANDS = ["sample", "solvers", "train", "bench", "nll", "tune"]

log = logging.getLogger("sde_diffusion")


class CLIError(Exception):
    """An error reported to the user as one line, without a traceback (exit code 2)."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and appends ``(default: X)`` to every option's help that does
    not mention its default already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "default" in text.lower():
            return text
        d = action.default
        if d is None or d is False or d is argparse.SUPPRESS or d == [] or not action.option_strings:
            return text
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            return text
        return text + " (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with every usage error printed as ONE line (exit code 2)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        m = re.search(r"invalid choice: (.*?) \(choose from (.*)\)", message)
        if m:  # one wording on every Python version
            valid = ", ".join(v.strip().strip("'\"") for v in m.group(2).split(","))
            message = message[: m.start()] + f"invalid choice {m.group(1)}; valid: {valid}"
        sys.stderr.write(f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")
        sys.exit(2)


def _one_line(text: object) -> str:
    """The first non-empty line of ``text`` (messages from torch and friends can span many)."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _version() -> str:
    from . import __version__

    return __version__


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="sde-diffusion",
        description="Sample, train, benchmark and evaluate diffusion models on one VP-SDE.",
    )
    p.add_argument("--version", action="version", version=f"sde-diffusion {_version()}",
                   help="print the version and exit")
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


def _crash_log(command: str, exc: BaseException) -> str:
    """Write the full traceback of ``exc`` to a file and return its path."""
    folder = os.environ.get("SDE_DIFFUSION_LOG_DIR") or tempfile.gettempdir()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        os.makedirs(folder, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix=f"sde-diffusion-{command}-{stamp}-", suffix=".log", dir=folder)
        with os.fdopen(fd, "w") as f:
            f.write(f"sde-diffusion {_version()} {command}: argv {sys.argv!r}\n")
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=f)
        return path
    except OSError:
        return "(could not write a log file; run with SDE_DIFFUSION_LOG_DIR set to a writable folder)"


class _LogFormatter(logging.Formatter):
    def __init__(self, command: str) -> None:
        super().__init__()
        self.command = command

    def format(self, record: logging.LogRecord) -> str:
        kind = "warning: " if record.levelno >= logging.WARNING else ""
        return f"sde-diffusion {self.command}: {kind}{record.getMessage()}"


def _setup_logging(command: str) -> logging.Handler:
    """Library messages (``logging.getLogger("sde_diffusion.*")``) go to stderr, one line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogFormatter(command))
    log.addHandler(handler)
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
    return handler


def _user_error_message(e: BaseException, command: str) -> Optional[str]:
    """The one-line message for an exception caused by the input or the environment, or None for
    an unexpected (internal) one."""
    from .sampling import SolverError

    if isinstance(e, CLIError):
        return str(e)
    if isinstance(e, SolverError):
        hint = "; try more --steps, another --solver or --spacing" if command == "sample" else ""
        return f"{_one_line(e)}{hint}"
    if isinstance(e, FloatingPointError):
        return f"training diverged: {_one_line(e)}; lower --lr, raise --warmup or lower --grad-clip"
    if isinstance(e, ModuleNotFoundError):
        return f"{_one_line(e)} (an optional dependency: see the README's install extras)"
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.strerror}: {e.filename}"
    if isinstance(e, (ValueError, FileNotFoundError, OSError, ImportError)):
        return _one_line(e)
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error (already printed as one line)
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    if args.command is None:
        sys.stderr.write(f"sde-diffusion: error: give a command: {', '.join(_registered(parser))} "
                         "(see sde-diffusion --help)\n")
        return 2
    handler = _setup_logging(args.command)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write(f"\nsde-diffusion {args.command}: interrupted\n")
        return 130
    except Exception as e:  # noqa: BLE001 - sorted below: user errors vs internal errors
        msg = _user_error_message(e, args.command)
        if msg is not None:
            sys.stderr.write(f"sde-diffusion {args.command}: error: {msg}\n")
            return 2
        path = _crash_log(args.command, e)
        sys.stderr.write(f"sde-diffusion {args.command}: internal error: {type(e).__name__}: {_one_line(e)} "
                         f"(full traceback in {path}; please report it)\n")
        return 1
    finally:
        log.removeHandler(handler)


def _registered(parser: argparse.ArgumentParser) -> List[str]:
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            return list(a.choices)
    return []
