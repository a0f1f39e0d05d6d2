"""The choices a training stage makes from the hardware it runs on, said in its log and run.json.

Precision (bf16 / fp16 / float32), DataLoader workers and pinned memory, cuDNN autotuning and
the tile batch of validation follow the device (segkit.runs.device holds each rule); a setting
given in the config wins over the automatic choice.
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader

from segkit.ground.config import Config
from segkit.runs.device import enable_cudnn_benchmark, infer_batch_size, loader_workers, precision_name


def local_processes() -> int:
    """Processes torchrun started on this machine (1 outside torchrun): they share its CPU cores."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1"))))


def loader_for(dataset, batch_size: int, workers: int | None, device: torch.device) -> DataLoader:
    """The training DataLoader: ``workers`` processes (None: loader_workers' choice for ``device``) and,
    on CUDA, pinned batches, so that the loop's non_blocking copies overlap the computation.

    No persistent_workers: the dataset's epoch is set in this process before each epoch
    (RandomWindowDataset.set_epoch), and only freshly started workers see it.
    """
    device = torch.device(device)
    return DataLoader(dataset, batch_size=int(batch_size), shuffle=False, drop_last=True,
                      num_workers=loader_workers(workers, device, local_processes()),
                      pin_memory=device.type == "cuda")


def choose_hardware(config: Config, device: torch.device, world: int) -> dict:
    """What this stage computes in and how it is fed, for the log and run.json["hardware"].

    Turns cuDNN autotuning on for CUDA (fixed window and tile shapes; off with deterministic
    algorithms). Keys: device, precision, workers, pin_memory, cudnn_benchmark, infer_batch_size,
    sync_bn.
    """
    device = torch.device(device)
    name = str(device)
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)})"
    return {
        "device": name,
        "precision": precision_name(device, config.train.amp),
        "workers": loader_workers(config.data.workers, device, local_processes()),
        "pin_memory": device.type == "cuda",
        "cudnn_benchmark": enable_cudnn_benchmark(device),
        "infer_batch_size": infer_batch_size(config.infer.batch_size, device),
        "sync_bn": bool(config.train.sync_bn and world > 1),
    }
