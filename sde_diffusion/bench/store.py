"""The resume store of a benchmark folder.

- ``rows.jsonl``: one JSON record per finished configuration, appended and fsynced; a torn last
  line (a run killed mid-write) is cut off on read, unreadable lines are skipped, and a key seen
  twice counts once (the first record wins), so reruns and concurrent writers never double rows.
- ``run.json``: the run's identity (model weights hash, n, seed, guidance); another run is refused.
- ``bench.lock``: one running bench per folder (an exclusive ``flock`` held while running, with the
  holder's pid written inside; released by the OS if the process dies).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

from ..files import atomic_write_text

__all__ = ["read_records", "append_record", "check_identity", "write_meta", "read_meta", "folder_lock",
           "ROWS_NAME", "META_NAME", "IDENTITY_KEYS"]

ROWS_NAME = "rows.jsonl"
META_NAME = "run.json"
LOCK_NAME = "bench.lock"
IDENTITY_KEYS = ("ident", "n", "seed")  # the weights' hash identifies the model, not how it was named


def read_records(out: Path, repair: bool = True) -> list:
    """Finished records of ``out/rows.jsonl``, one per key (first wins). ``repair`` cuts a torn
    last line off the file."""
    path = Path(out) / ROWS_NAME
    if not path.is_file():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        if repair:
            with open(path, "r+b") as f:
                f.truncate(len(data))
    out_, seen = [], set()
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict) or "key" not in rec or rec["key"] in seen:
            continue
        seen.add(rec["key"])
        out_.append(rec)
    return out_


def append_record(out: Path, record: dict) -> None:
    """Append one record to ``out/rows.jsonl`` (one line, flushed and fsynced)."""
    with open(Path(out) / ROWS_NAME, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_meta(out: Path) -> dict:
    p = Path(out) / META_NAME
    if not p.is_file():
        return {}
    try:
        meta = json.loads(p.read_text())
    except ValueError as e:
        raise ValueError(f"{p} is not valid JSON ({e}); delete it or use a new --out") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{p} does not hold a JSON object; delete it or use a new --out")
    return meta


def check_identity(out: Path, run_id: dict) -> None:
    """Refuse a folder holding another run (other weights, n, seed or guidance)."""
    old = read_meta(out)
    if not old:
        return
    keys = IDENTITY_KEYS + (("guidance",) if run_id.get("guidance") or old.get("guidance") else ())
    if {k: old.get(k) for k in keys} != {k: run_id.get(k) for k in keys}:
        raise ValueError(f"{out} holds results of another run ({ {k: old.get(k) for k in keys} }, this one "
                         f"{ {k: run_id.get(k) for k in keys} }); use a new --out")


def write_meta(out: Path, meta: dict) -> None:
    atomic_write_text(Path(out) / META_NAME, json.dumps(meta, indent=1) + "\n")


@contextmanager
def folder_lock(out: Path):
    """Hold ``out/bench.lock`` exclusively; a second bench on the same folder gets a one-line error."""
    import fcntl

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    f = open(path, "a+")
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise ValueError(f"another bench (pid {holder}) is writing to {out}; wait for it or use a new --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    finally:
        f.close()
