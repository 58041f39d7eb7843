"""Pieces every CLI command shares: argument checks that run before any model is loaded, the
advisory lock that makes one job own an output folder, and progress bars.

All checks raise ``CLIError`` (one line, exit code 2) naming the flag, the bad value and what is
valid.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..cli import CLIError

__all__ = [
    "SEED_LIMIT", "add_common", "check_seed", "check_int", "check_float", "check_threads", "check_device",
    "apply_threads", "apply_tf32", "flag", "OutputLock", "make_dirs", "remove_created", "check_writable_target", "job_rank",
]

log = logging.getLogger(__name__)

# torch generators take 64-bit seeds; sample k uses seed + k, which must stay below 2**63
SEED_LIMIT = 2**63


class _Store(argparse._StoreAction):
    """Stores the value and remembers the spelling used (``args.flags[dest]``), so an error names
    the flag as the user typed it (``--n`` or ``-n``)."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[no-untyped-def]
        setattr(namespace, self.dest, values)
        flags = getattr(namespace, "flags", None)
        if flags is None:
            flags = {}
            setattr(namespace, "flags", flags)
        flags[self.dest] = option_string


def flag(args: argparse.Namespace, dest: str, default: str) -> str:
    """The spelling of the flag for ``dest`` that the user typed (``default`` if not given)."""
    return (getattr(args, "flags", None) or {}).get(dest) or default


# ---- shared flags ----------------------------------------------------------------------------
def add_common(p: argparse.ArgumentParser, *, num: Optional[str] = None, num_default: Any = None,
               num_aliases: tuple = (), batch_default: Optional[int] = None, batch_help: str = "",
               batch_aliases: tuple = (), seed_help: str = "", device_help: str = "") -> None:
    """The flags spelled the same in every command: ``-n/--num-samples``, ``--batch-size``,
    ``--seed``, ``--device``, ``--threads``; old spellings stay as hidden aliases."""
    if num is not None:
        p.add_argument("-n", "--num-samples", dest="num_samples", type=int, default=num_default, metavar="N", help=num,
                       action=_Store)
        if num_aliases:
            p.add_argument(*num_aliases, dest="num_samples", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                           action=_Store)
    if batch_default is not None:
        p.add_argument("--batch-size", dest="batch_size", type=int, default=batch_default, metavar="B", help=batch_help,
                       action=_Store)
        if batch_aliases:
            p.add_argument(*batch_aliases, dest="batch_size", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                           action=_Store)
    p.add_argument("--seed", type=int, default=0, help=seed_help or "random seed, an integer in [0, 2^63)")
    p.add_argument("--device", default="cpu", metavar="DEVICE",
                   help=device_help or "torch device: cpu, cuda, cuda:K or mps (default: cpu)")
    p.add_argument("--threads", type=int, default=None, metavar="K",
                   help="torch CPU threads (default: torch's choice, usually the number of cores)")
    p.add_argument("--no-tf32", dest="no_tf32", action="store_true",
                   help="CUDA: IEEE float32 matmuls/convolutions instead of TF32 (PyTorch's default for "
                        "convolutions); results closer to the CPU's, slower; no effect on the CPU")


# ---- checks ----------------------------------------------------------------------------------
def check_int(flag: str, value: Optional[int], lo: Optional[int] = None, hi: Optional[int] = None,
              allow_none: bool = True) -> None:
    if value is None:
        if allow_none:
            return
        raise CLIError(f"{flag} is required")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else (f"<= {hi}" if lo is None else f"in [{lo}, {hi}]")
        raise CLIError(f"{flag} must be {rng}, got {value}")


def check_float(flag: str, value: Optional[float], *, lo: Optional[float] = None, hi: Optional[float] = None,
                lo_open: bool = False, hi_open: bool = False, allow_none: bool = True) -> None:
    if value is None:
        if allow_none:
            return
        raise CLIError(f"{flag} is required")
    bad = not math.isfinite(value)
    if lo is not None:
        bad = bad or (value <= lo if lo_open else value < lo)
    if hi is not None:
        bad = bad or (value >= hi if hi_open else value > hi)
    if bad:
        left = "" if lo is None else (f"> {lo:g}" if lo_open else f">= {lo:g}")
        right = "" if hi is None else (f"< {hi:g}" if hi_open else f"<= {hi:g}")
        what = " and ".join(v for v in (left, right) if v) or "finite"
        raise CLIError(f"{flag} must be a finite number {what}, got {value!r}")


def check_seed(seed: int, count: int = 1, flag: str = "--seed") -> None:
    """Item k uses seed + k; all of them must be valid 64-bit generator seeds."""
    if seed < 0 or seed + max(count, 1) - 1 >= SEED_LIMIT:
        top = SEED_LIMIT - max(count, 1)
        raise CLIError(f"{flag} must be an integer in [0, {top}] (item k uses seed + k < 2^63), got {seed}")


def check_threads(threads: Optional[int]) -> None:
    if threads is not None and threads < 1:
        raise CLIError(f"--threads must be an integer >= 1, got {threads}")


def apply_tf32(args: argparse.Namespace) -> None:
    """``--no-tf32``: IEEE float32 on CUDA (``sde_diffusion.backends.set_tf32``)."""
    if getattr(args, "no_tf32", False):
        from ..backends import set_tf32

        set_tf32(False)


def apply_threads(threads: Optional[int]) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))


def check_device(spec: str) -> str:
    """A device string torch understands and that exists here; returns it normalised."""
    import torch

    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError, ValueError):
        raise CLIError(f"--device {spec!r} is not a device; valid: cpu, cuda, cuda:K, mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {spec} requested but CUDA is not available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CLIError(f"--device {spec}: there are only {torch.cuda.device_count()} CUDA devices (cuda:0..)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise CLIError(f"--device {spec} requested but MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise CLIError(f"--device {spec!r}: unsupported device type {dev.type!r}; valid: cpu, cuda, cuda:K, mps")
    return str(dev)


def job_rank() -> int:
    """This process's rank under torchrun (0 otherwise); only rank 0 owns output folders."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


# ---- output paths ----------------------------------------------------------------------------
def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable_target(path: Path, flag: str = "--out", want_dir: bool = False) -> None:
    """Refuse, before any work, an output whose folder cannot be created or written: a file in
    the way of a folder, a folder in the way of a file, a read-only place."""
    path = Path(path)
    if path.exists():
        if want_dir and not path.is_dir():
            raise CLIError(f"{flag} {path} exists and is a file, not a folder")
        if not want_dir and path.is_dir():
            raise CLIError(f"{flag} {path} is an existing folder; give a file name (or end it with / "
                           "for a folder of PNGs)" if path.suffix else f"{flag} {path} is an existing folder")
    anc = _nearest_existing(path if want_dir else path.parent)
    if not anc.is_dir():
        raise CLIError(f"{flag} {path}: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise CLIError(f"{flag} {path}: no permission to write in {anc}")


def make_dirs(folder: Path) -> List[Path]:
    """``mkdir -p folder``; returns the folders it created (deepest last), so a failed job can
    remove exactly those and leave no partial output."""
    folder = Path(folder)
    missing = []
    p = folder
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    return list(reversed(missing))


def remove_created(created: List[Path]) -> None:
    """Remove folders made by ``make_dirs`` that are still empty (deepest first)."""
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:
            break


# ---- the output lock -------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """An advisory lock that makes one job the owner of an output (a folder, or one output file).

    The lock file (``FOLDER/.sde-diffusion.lock``, or ``.NAME.lock`` beside an output file) holds
    the owner's pid, host, command and start time as JSON. On POSIX it is held with ``flock``, so
    the kernel drops it when the owner dies, however it dies; a lock file left behind by a dead
    process is taken over (with a note). Elsewhere an exclusive create plus a pid check is used.
    A second job on the same output raises ``CLIError`` naming the owner.
    """

    def __init__(self, target: Path, *, folder: bool, command: str = "") -> None:
        target = Path(target)
        self.target = target
        self.path = target / ".sde-diffusion.lock" if folder else target.parent / f".{target.name}.lock"
        self.command = command or " ".join(["sde-diffusion", *sys.argv[1:]])
        self.fd: Optional[int] = None

    def _owner(self, text: str) -> Dict[str, Any]:
        try:
            info = json.loads(text)
            return info if isinstance(info, dict) else {}
        except ValueError:
            return {}

    def _busy(self, info: Dict[str, Any]) -> CLIError:
        who = f"pid {info.get('pid', '?')}"
        if info.get("host") and info.get("host") != socket.gethostname():
            who += f" on {info['host']}"
        cmd = f", `{info['command']}`" if info.get("command") else ""
        since = f", since {info['started']}" if info.get("started") else ""
        return CLIError(f"{self.target} is in use by another job ({who}{cmd}{since}); wait for it to finish "
                        f"or choose another --out (lock file {self.path})")

    def _record(self) -> bytes:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                           "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()

    def acquire(self) -> "OutputLock":
        try:
            import fcntl
        except ImportError:  # not POSIX
            return self._acquire_pidfile()
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise CLIError(f"--out {self.target}: cannot write in {self.path.parent} ({e.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                text = os.read(fd, 65536).decode("utf-8", "replace")
                os.close(fd)
                raise self._busy(self._owner(text)) from None
            try:  # the holder before us may have unlinked the file after we opened it: retry
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            old = self._owner(os.read(fd, 65536).decode("utf-8", "replace"))
            if old.get("pid") and old.get("pid") != os.getpid():
                log.info("taking over the lock %s left by pid %s, which no longer holds it", self.path, old["pid"])
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, self._record())
            self.fd = fd
            return self
        raise CLIError(f"could not lock {self.path}: it keeps changing; is another job starting there?")

    def _acquire_pidfile(self) -> "OutputLock":
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    info = self._owner(self.path.read_text())
                except OSError:
                    continue
                if _pid_alive(int(info.get("pid", 0) or 0)):
                    raise self._busy(info) from None
                log.info("taking over the stale lock %s of pid %s", self.path, info.get("pid"))
                try:
                    os.unlink(self.path)
                except OSError:
                    pass
                continue
            os.write(fd, self._record())
            self.fd = fd
            return self
        raise CLIError(f"could not lock {self.path}")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding it, so nobody locks the old file
        except OSError:
            pass
        os.close(self.fd)  # closing drops the flock
        self.fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---- progress --------------------------------------------------------------------------------
def progress_bar(total: Optional[float], desc: str, unit: str, disable: bool) -> Any:
    """A tqdm bar on stderr with rate and ETA (``total`` None: count and rate only)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, file=sys.stderr,
                mininterval=0.5, smoothing=0.1)
