"""Where tensors run: device choice, autocast and the gradient scaler, seeding.

Shared by training and inference (a run service, not a trainer detail): `infer` picks its
device and autocasts exactly as `train` does.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from segkit.ground.errors import SegkitError


def pick_device(name: str = "auto") -> torch.device:
    """"auto" -> cuda when available else cpu; "cuda" without CUDA -> SegkitError."""
    name = str(name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SegkitError(f"device: {name} requested but CUDA is not available (use --device cpu)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise SegkitError(f"device: unknown device {name!r}; valid: auto, cpu, cuda, cuda:N") from None


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices); ``deterministic`` also asks torch for
    deterministic kernels (warn-only: ops without one still run) and fixed cuDNN algorithms."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def autocast(device: torch.device, amp: bool):
    """The autocast context for ``device``: bf16 on CPU, fp16 on CUDA; a no-op without amp."""
    device = torch.device(device)
    if not amp:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 AMP on CUDA (checkpoint its state_dict); None where not needed."""
    if amp and torch.device(device).type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


