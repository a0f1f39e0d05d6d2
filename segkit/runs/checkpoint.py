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
from typing import Iterable, Mapping

import numpy as np
import torch

from segkit.ground.text import first_sentence
from segkit.ground.errors import SegkitError
from segkit.io.atomic import atomic_path
from segkit.runs.rundir import read_run_info

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
        if isinstance(e, pickle.UnpicklingError) and "weights only" in str(e).lower():
            # torch's own text goes on to explain how to load it anyway; segkit never does
            raise SegkitError(f"{path}: the checkpoint holds more than weights (Python objects that loading it "
                              "would run); refused. segkit only loads tensors (write it with segkit, or re-save "
                              "just its state dict in a session you trust)") from None
        if isinstance(e, (KeyError, IndexError, AttributeError, TypeError)) or not str(e).strip():
            # torch's legacy (pre-zip) reader meets a file that is neither format with a bare key or
            # index such as "101": meaningless to the user
            first = "neither torch.save format (zip or legacy pickle)"
        else:
            first = first_sentence(str(e))
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


def _available(paths_by_epoch: Mapping[int, Path]) -> str:
    return ", ".join(str(e) for e in sorted(paths_by_epoch)) or "none"


def select_checkpoints(paths_by_epoch: Mapping[int, Path], spec: str | int = "last:1",
                       best_epoch: int | None = None, what: str = "--epochs") -> list[Path]:
    """Checkpoint paths for `spec`, in epoch order.

    spec: "last" / "last:K" (the K latest epochs), "8,9,10" (those epochs), "8-10" (a range),
    "best" (best_epoch), "all". Asking for an epoch that was not saved is a SegkitError that
    lists the available epochs. The one rule for "best": the epoch the run recorded as best
    (training records its last epoch when it has no validation rows); a run that recorded none
    is an error, never a silent fallback.
    """
    if not paths_by_epoch:
        raise SegkitError("checkpoints: the run has no checkpoints")
    epochs = sorted(int(e) for e in paths_by_epoch)
    text = str(spec).strip().replace(" ", "")
    if text == "all":
        chosen = epochs
    elif text == "best":
        if best_epoch is None:
            raise SegkitError(f"{what} best: the run records no best epoch (no validation score); "
                              f"available epochs: {_available(paths_by_epoch)}")
        chosen = [int(best_epoch)]
    elif text == "last" or text.startswith("last:"):
        count = text.partition(":")[2] or "1"
        if not count.isdigit() or int(count) < 1:
            raise SegkitError(f"{what} {spec}: expected last:K with K >= 1")
        # A run shorter than K epochs (or pruned to fewer) ensembles what it has.
        chosen = epochs[-int(count):]
    else:
        chosen = []
        for part in text.split(","):
            lo, dash, hi = part.partition("-")
            try:
                chosen += list(range(int(lo), int(hi) + 1)) if dash else [int(part)]
            except ValueError:
                raise SegkitError(f"{what} {spec}: expected last:K, best, all, a list like 8,9,10 "
                                  "or a range like 8-10") from None
        chosen = sorted(set(chosen))
    missing = [e for e in chosen if e not in paths_by_epoch]
    if missing:
        raise SegkitError(f"{what} {spec}: no checkpoint for epoch {', '.join(map(str, missing))}; "
                          f"available epochs: {_available(paths_by_epoch)}")
    return [Path(paths_by_epoch[e]) for e in chosen]


def run_checkpoints(run_dir: Path, spec: str | int = "last:1", what: str = "--epochs") -> list[Path]:
    """The checkpoints of a run directory chosen by ``spec`` (see select_checkpoints); "swa" is the
    weight average of the run's last epochs (checkpoints/swa.pt, train.swa_epochs)."""
    if str(spec).strip() == "swa":
        path = Path(run_dir) / "checkpoints" / "swa.pt"
        if not path.is_file():
            raise SegkitError(f"{what} swa: {run_dir} has no weight average (train it with --set train.swa_epochs=K)")
        return [path]
    available = list_checkpoints(Path(run_dir) / "checkpoints")
    if not available:
        raise SegkitError(f"{run_dir}: no checkpoints in {Path(run_dir) / 'checkpoints'}")
    by_epoch = {checkpoint_epoch(path): path for path in available}
    best = read_run_info(Path(run_dir)).get("best_epoch")
    return select_checkpoints(by_epoch, spec, best_epoch=best, what=what)


def select_checkpoint(run_dir: Path, which: str | int = "best") -> tuple[Path, int]:
    """(path, epoch) of one checkpoint of a run: "best" (the default), "last" or an epoch number."""
    text = str(which).strip().lower()
    if text not in ("best", "last") and not text.isdigit():
        raise SegkitError(f"--epoch {which!r}: expected best, last or an epoch number")
    (path,) = run_checkpoints(run_dir, text, what="--epoch")
    return path, checkpoint_epoch(path)


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
