"""Scale-out with ``torch.distributed`` (launched by ``torchrun``), and a no-op single process.

Sharding rule: item k of a job with n items belongs to rank r when k is in the r-th contiguous
block ``[r n // W, (r+1) n // W)``. Sampling draws item k with its own generator seeded
``seed + k``, so the union over ranks is bitwise the single-process result on the same device
type. Results are gathered to rank 0 in item order and written once, by rank 0.

Backends: gloo on CPU, nccl on CUDA. A finite timeout is always set, so a rank that dies makes the
others fail with an error instead of hanging (torchrun then stops the whole job).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["Dist", "init", "shard_range"]


def shard_range(n: int, rank: int, world_size: int) -> range:
    """Items of rank ``rank``: the contiguous block [rank n // W, (rank + 1) n // W)."""
    return range(rank * n // world_size, (rank + 1) * n // world_size)


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    active: bool = False  # True when a process group was initialised here

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> range:
        return shard_range(n, self.rank, self.world_size)

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def gather_cat(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """Concatenate every rank's ``x`` (first dims may differ) in rank order; every rank gets
        the result (all ranks must call)."""
        if not self.active:
            return x
        dist = torch.distributed
        comm_dev = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        n = torch.tensor([x.shape[0]], device=comm_dev)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        dist.all_gather(sizes, n)
        sizes = [int(s) for s in sizes]
        m = max(sizes)
        pad = torch.zeros((m, *x.shape[1:]), dtype=x.dtype, device=comm_dev)
        pad[: x.shape[0]] = x.to(comm_dev)
        parts = [torch.zeros_like(pad) for _ in range(self.world_size)]
        dist.all_gather(parts, pad)
        return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(x.device)

    def broadcast_object(self, obj):
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.active = False


def init(device: Optional[str] = None, timeout_s: float = 600.0) -> Dist:
    """Join the process group that ``torchrun`` set up (WORLD_SIZE > 1), or return a
    single-process context. ``device`` "cpu", "cuda" (rank's local GPU) or "cuda:k"."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device or "cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda requested but CUDA is not available; use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    if world <= 1:
        return Dist(device=dev)
    dist = torch.distributed
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return Dist(rank=rank, world_size=world, local_rank=local, device=dev, active=True)
