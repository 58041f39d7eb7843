"""File plumbing shared by checkpoints, training, the classifier and the benchmark.

- ``atomic_write_bytes`` / ``atomic_write_text``: write to a uniquely named temp file in the same
  folder, fsync, then ``os.replace`` onto the target, so a reader sees the old file or the complete
  new one, never a partial write; concurrent writers never share a temp file. The new file gets the
  usual permissions (0666 minus the umask), not ``mkstemp``'s 0600.
- ``save_safetensors_atomic`` / ``load_safetensors``: tensors + string metadata, never pickle.
- ``sha256_file``: hex digest of a file, read in 1 MiB chunks.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Dict, Optional

import torch

__all__ = ["atomic_write_bytes", "atomic_write_text", "save_safetensors_atomic", "load_safetensors", "sha256_file"]


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc), else by
    the set-and-restore idiom at call time (not at import)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to a temp file next to ``path``, fsync, then ``os.replace`` onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path, text: str) -> None:
    """``atomic_write_bytes`` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def save_safetensors_atomic(tensors: Dict[str, torch.Tensor], path, metadata: Optional[Dict[str, str]] = None) -> None:
    """Tensors (moved to the CPU, made contiguous) as a safetensors file, written atomically."""
    from safetensors.torch import save

    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, save(data, metadata=metadata))


def load_safetensors(path, device="cpu"):
    """(tensors, metadata) from a safetensors file; truncated/corrupt files -> ValueError."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        out = {}
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            for k in f.keys():
                out[k] = f.get_tensor(k)
        return out, meta
    except Exception as e:  # safetensors raises SafetensorError / OSError on bad headers or short files
        raise ValueError(f"{path}: corrupt or truncated safetensors file ({type(e).__name__}: {e})") from None


def sha256_file(path) -> str:
    """Hex sha256 of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
