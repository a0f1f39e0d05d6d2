"""Crash-safe checkpoints: atomic save, safe load, keep-last-K, weight soups, RNG state.

A checkpoint is a plain dict (model/optimizer/scheduler/scaler state dicts, epoch, rng, ...)
saved with torch.save and loaded with ``weights_only=True``: it holds only tensors and
builtin containers, so loading never runs pickled code. Files are named ``epoch_0003.pt``.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from segkit.ground.errors import SegkitError
from segkit.io.atomic import atomic_path

_EPOCH_RE = re.compile(r"^epoch_(\d+)\.pt$")


def checkpoint_name(epoch: int) -> str:
    """The file name of the checkpoint written after ``epoch`` (epoch_0003.pt)."""
    return f"epoch_{int(epoch):04d}.pt"


def checkpoint_epoch(path: str | Path) -> int | None:
    """The epoch number encoded in a checkpoint file name, or None if it is not epoch_NNNN.pt."""
    m = _EPOCH_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically and durably (temp file, fsync, rename).

    A crash at any moment leaves either the old file or the complete new one, never a torn file.
    """
    path = Path(path)
    with atomic_path(path, overwrite=True, durable=True, make_parents=True) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | Path, map_location="cpu", required_keys: Iterable[str] = ()) -> dict:
    """Load a checkpoint dict with ``weights_only=True``.

    Missing, truncated or foreign files (another program's pickle, a text file, a checkpoint
    without ``required_keys``) raise a one-line SegkitError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise SegkitError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
            AttributeError, ImportError, IndexError, KeyError, TypeError, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise SegkitError(f"{path}: not a readable checkpoint (truncated or foreign file): {first}") from None
    if not isinstance(state, dict):
        raise SegkitError(f"{path}: not a segkit checkpoint (holds a {type(state).__name__}, not a dict)")
    missing = [k for k in required_keys if k not in state]
    if missing:
        raise SegkitError(f"{path}: not a segkit checkpoint (missing {', '.join(missing)})")
    return state


def list_checkpoints(folder: str | Path) -> list[Path]:
    """The epoch_NNNN.pt files in ``folder`` sorted by epoch (empty list if the folder is missing)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_file() and checkpoint_epoch(p) is not None]
    return sorted(found, key=checkpoint_epoch)


def prune_checkpoints(folder: str | Path, keep_last: int | None, best_path=None,
                      *, keep: Iterable[str | Path] = ()) -> list[Path]:
    """Delete epoch checkpoints except the last ``keep_last``, ``best_path`` and anything in ``keep``.

    ``best_path`` may be one path or a collection of paths. ``keep_last=None`` keeps every
    file. Returns the deleted paths.
    """
    if keep_last is None:
        return []
    if int(keep_last) < 0:
        raise SegkitError(f"checkpoints.keep_last: must be >= 0, got {keep_last}")
    files = list_checkpoints(folder)
    protected = {Path(p).resolve() for p in keep}
    if isinstance(best_path, (str, os.PathLike)):
        protected.add(Path(best_path).resolve())
    elif best_path is not None:
        protected.update(Path(p).resolve() for p in best_path)
    recent = set(files[max(0, len(files) - int(keep_last)):])
    removed = []
    for p in files:
        if p in recent or p.resolve() in protected:
            continue
        p.unlink()
        removed.append(p)
    return removed


def average_state_dicts(states: list[dict]) -> dict:
    """Mean of several state dicts (a weight soup / SWA of the last K epochs).

    Floating tensors are averaged in float64 and cast back; integer/bool buffers (BatchNorm's
    num_batches_tracked) are taken from the last dict. All dicts must share keys and shapes.
    """
    if not states:
        raise SegkitError("average_state_dicts: no state dicts given")
    keys = list(states[-1].keys())
    for i, s in enumerate(states):
        if set(s.keys()) != set(keys):
            diff = sorted(set(s.keys()) ^ set(keys))[:5]
            raise SegkitError(f"average_state_dicts: state {i} has different keys ({', '.join(diff)} ...)")
    out = {}
    for k in keys:
        last = states[-1][k]
        if not isinstance(last, torch.Tensor) or not (last.is_floating_point() or last.is_complex()):
            out[k] = last.clone() if isinstance(last, torch.Tensor) else last
            continue
        shapes = {tuple(s[k].shape) for s in states}
        if len(shapes) != 1:
            raise SegkitError(f"average_state_dicts: {k} has different shapes {sorted(shapes)}")
        acc = torch.zeros(last.shape, dtype=torch.float64 if not last.is_complex() else torch.complex128)
        for s in states:
            acc += s[k].detach().to("cpu", acc.dtype)
        out[k] = (acc / len(states)).to(dtype=last.dtype, device=last.device)
    return out


def soup_checkpoints(paths: Iterable[str | Path], key: str = "model") -> dict:
    """Average ``state[key]`` over checkpoint files (loads one at a time into the running list)."""
    states = [load_checkpoint(p, required_keys=(key,))[key] for p in paths]
    return average_state_dicts(states)


def rng_state() -> dict:
    """Python, NumPy (legacy global), torch and CUDA RNG states, in weights_only-loadable form."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [int(version), torch.tensor(internal, dtype=torch.int64), gauss],
        "numpy": [str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() captured (CUDA only when present in both the state and here)."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def _unwrap(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def make_state(epoch: int, model, optimizer=None, scheduler=None, scaler=None, ema=None, **extra) -> dict:
    """The checkpoint dict for exact resume: weights, optimizer/scheduler/scaler/EMA state, RNG, epoch.

    ``extra`` keys (metrics, best score, stage name, ...) must be plain data/tensors (weights_only).
    """
    state = {"epoch": int(epoch), "model": _unwrap(model).state_dict(), "rng": rng_state()}
    for key, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler), ("ema", ema)):
        if obj is not None:
            state[key] = obj.state_dict()
    state.update(extra)
    return state


def restore_state(state: dict, model, optimizer=None, scheduler=None, scaler=None, ema=None,
                  rng: bool = True) -> int:
    """Load what make_state saved into fresh objects; returns the saved epoch.

    A piece passed here but absent from the checkpoint (e.g. a scaler when the run had no AMP)
    is left as constructed. ``rng=False`` skips the RNG (e.g. fine-tuning from a parent run).
    """
    _unwrap(model).load_state_dict(state["model"])
    for key, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler), ("ema", ema)):
        if obj is not None and key in state:
            obj.load_state_dict(state[key])
    if rng and "rng" in state:
        set_rng_state(state["rng"])
    return int(state.get("epoch", 0))
