"""DDP helpers for runs under ``torchrun --nproc_per_node=N`` (one process per GPU or CPU slot).

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; setup() reads them and
joins the process group (nccl on CUDA, gloo on CPU). Without those variables (or with
WORLD_SIZE=1) everything here is a no-op, so the same code path serves single-process runs.
"""

from __future__ import annotations

import datetime
import os
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from segkit.ground.errors import SegkitError


class DistInfo(NamedTuple):
    rank: int
    local_rank: int
    world_size: int
    backend: str | None
    device: torch.device


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0 (the only rank that writes files) or when not distributed."""
    return rank() == 0


def setup(device: str = "auto", backend: str | None = None, timeout_s: float | None = None) -> DistInfo:
    """Join the torchrun process group if the environment asks for one; returns this process's place.

    ``device`` "auto" picks cuda:LOCAL_RANK when CUDA is available, else CPU; the backend follows
    (nccl for CUDA, gloo for CPU) unless given. ``timeout_s`` bounds how long a collective
    waits for a missing rank (torch's default otherwise).
    """
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else str(device).startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise SegkitError("device: cuda requested but CUDA is not available")
    dev = torch.device("cuda", local % max(1, torch.cuda.device_count())) if use_cuda else torch.device("cpu")
    if env_world <= 1:
        return DistInfo(0, 0, 1, None, dev)
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise SegkitError(f"distributed: WORLD_SIZE={env_world} but {key} is not set (start with torchrun)")
    backend = backend or ("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(dev)
    if not is_distributed():
        kwargs = {"device_id": dev} if use_cuda else {}
        if timeout_s is not None:
            kwargs["timeout"] = datetime.timedelta(seconds=float(timeout_s))
        dist.init_process_group(backend=backend, init_method="env://", **kwargs)
    return DistInfo(dist.get_rank(), local, dist.get_world_size(), backend, dev)


def wrap_ddp(model: nn.Module, device: torch.device | str | None = None, **kwargs) -> nn.Module:
    """DistributedDataParallel around ``model`` when distributed (it broadcasts rank 0's weights)."""
    if not is_distributed():
        return model
    device = torch.device(device) if device is not None else next(model.parameters()).device
    ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, **kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP wrapper (what checkpoints save)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _reduce_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """The mean of each value over ranks (same keys in the same order on every rank)."""
    if not is_distributed() or not values:
        return {k: float(v) for k, v in values.items()}
    keys = list(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= dist.get_world_size()
    return dict(zip(keys, t.cpu().tolist()))


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks of a CPU/GPU tensor (returns a new tensor on the input's device)."""
    if not is_distributed():
        return tensor.clone()
    t = tensor.detach().to(_reduce_device(), torch.float64).clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.to(tensor.device)


def all_gather_objects(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order; [obj] when not distributed."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
