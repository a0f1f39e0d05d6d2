"""Encoder weights from a local file (``model.encoder_weights: /path/resnet18.pth``): sites without internet.

The file is a state dict saved by torch (``.pt``/``.pth``/``.bin``, read with ``weights_only=True``)
or safetensors; a checkpoint-like mapping with a ``state_dict`` or ``model`` entry is opened, and an
``encoder.`` prefix (weights saved from a whole smp model) is dropped. Tensors whose shape does not fit
(e.g. a first convolution for 3 bands in a 1-band model) are left at their initial values, with a
warning naming how many.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from segkit.ground.errors import SegkitError

SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def local_weights_path(encoder_weights) -> Path | None:
    """The file ``model.encoder_weights`` names, or None when it names a hub weight (imagenet) or nothing."""
    if encoder_weights is None:
        return None
    text = str(encoder_weights)
    if not (text.lower().endswith(SUFFIXES) or os.sep in text):
        return None
    path = Path(os.path.expanduser(text))
    if not path.is_file():
        raise SegkitError(f"model.encoder_weights: {path}: weights file not found")
    return path


def _read(path: Path) -> dict:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # every format has its own errors for a bad file
        raise SegkitError(f"model.encoder_weights: {path}: not a readable weights file "
                          f"({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise SegkitError(f"model.encoder_weights: {path}: expected a state dict of tensors")
    return state


def load_encoder_weights(encoder: nn.Module, path: Path) -> None:
    """Copy the file's tensors into ``encoder`` where names and shapes fit; none fitting is an error."""
    state = {k[len("encoder."):] if k.startswith("encoder.") else k: v for k, v in _read(path).items()}
    own = encoder.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not fitting:
        raise SegkitError(f"model.encoder_weights: {path}: none of its {len(state)} tensors fits the encoder "
                          f"({type(encoder).__name__})")
    skipped = sum(1 for k in state if k in own and k not in fitting)
    if skipped:
        warnings.warn(f"{path}: {skipped} tensor(s) of another shape left at their initial values (e.g. the first "
                      "convolution for another band count)", UserWarning, stacklevel=2)
    encoder.load_state_dict(fitting, strict=False)
