"""DDP helpers for runs under ``torchrun --nproc_per_node=N`` (one process per GPU or CPU slot).

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; setup() reads them and
joins the process group (nccl on CUDA, gloo on CPU). Without those variables (or with
WORLD_SIZE=1) everything here is a no-op, so the same code path serves single-process runs.

Two groups: the default one (NCCL on GPUs) carries tensors inside a step (gradients, loss
flags) and keeps the run's timeout, so a hung step fails; a second, CPU-side gloo group with a
week-long timeout carries Python objects (run directory name, validation scores, RLE rows) and
the barriers where ranks legitimately arrive far apart (one rank still predicting its last
images or validating its share). Objects then never travel through GPU memory, and a rank that
waits for a slower one is not aborted by NCCL's watchdog.
"""

from __future__ import annotations

import datetime
import os
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from segkit.ground.errors import SegkitError

# ranks may wait this long for each other at an object gather or a barrier (a slow rank is not a hung one;
# a rank that dies ends the job through torchrun, which stops the others)
PATIENT_TIMEOUT_S = 7 * 24 * 3600.0
_patient = None  # the gloo group of all ranks used for objects and barriers


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
    if env_world <= 1:
        return DistInfo(0, 0, 1, None, torch.device("cuda", 0) if use_cuda else torch.device("cpu"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", env_world))
    dev = rank_device(local, torch.cuda.device_count(), local_world) if use_cuda else torch.device("cpu")
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
    global _patient
    if _patient is None:
        _patient = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=PATIENT_TIMEOUT_S))
    return DistInfo(dist.get_rank(), local, dist.get_world_size(), backend, dev)


def rank_device(local_rank: int, device_count: int, local_world: int) -> torch.device:
    """cuda:LOCAL_RANK, refusing more processes on this machine than GPUs (NCCL crashes when two
    ranks share one device)."""
    if local_world > device_count or local_rank >= device_count:
        raise SegkitError(f"distributed: {local_world} processes on this machine but {device_count} CUDA "
                          f"device(s) visible; start torchrun with --nproc_per_node={device_count} or fewer "
                          "(two ranks cannot share one GPU)")
    return torch.device("cuda", int(local_rank))


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
    """The mean of each value over ranks (same keys in the same order on every rank); one small
    collective on the default group (device memory under NCCL)."""
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
    dist.all_gather_object(out, obj, group=_patient)  # through CPU memory, waiting as long as a rank needs
    return out


def my_share(items) -> list:
    """(index, item) of the items this rank handles: index % world == rank (all of them outside torchrun)."""
    rank_, world = rank(), world_size()
    return [(index, item) for index, item in enumerate(items) if index % world == rank_]


def gather_in_order(results: list) -> list:
    """Every rank's (index, ...) tuples (from work on my_share), gathered and sorted by index, so
    the result equals one process's. The gather waits for the slowest rank without the run's timeout."""
    return sorted((item for part in all_gather_objects(results) for item in part), key=lambda t: t[0])


def barrier() -> None:
    """Every rank waits for the others (without the run's timeout: see the module docstring)."""
    if is_distributed():
        dist.barrier(group=_patient)


def cleanup() -> None:
    global _patient
    if is_distributed():
        dist.destroy_process_group()
    _patient = None
