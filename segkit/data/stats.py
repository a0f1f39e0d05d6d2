"""Per-channel normalization statistics (after channel stacking), computed streaming.

Each sample's mean and sum of squared deviations are taken in float64 and merged with Chan et
al.'s parallel update, so a long stream of windows neither overflows nor loses precision the way
a running sum of squares does. The std is the population std (ddof=0) over all pixels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np

from segkit.ground.errors import SegkitError
from segkit.io.atomic import write_json


def channel_stats(samples: Iterable[np.ndarray]) -> tuple[list[float], list[float]]:
    """(mean, std) per channel over every pixel of every HWC (or HW) sample; NaN pixels skipped."""
    count = mean = m2 = None
    for index, sample in enumerate(samples):
        x = np.asarray(sample)
        x = x.reshape(-1, 1 if x.ndim == 2 else x.shape[-1]).astype(np.float64, copy=False)
        if mean is None:
            count, mean, m2 = np.zeros(x.shape[1]), np.zeros(x.shape[1]), np.zeros(x.shape[1])
        elif x.shape[1] != mean.size:
            raise SegkitError(f"stats: sample {index} has {x.shape[1]} channels, the first had {mean.size}")
        finite = np.isfinite(x)
        n = finite.sum(axis=0).astype(np.float64)
        if not n.any():
            continue
        if finite.all():
            m = x.mean(axis=0)
            s = ((x - m) ** 2).sum(axis=0)
        else:
            safe = np.where(finite, x, 0.0)
            m = np.divide(safe.sum(axis=0), n, out=np.zeros_like(n), where=n > 0)
            s = (np.where(finite, x - m, 0.0) ** 2).sum(axis=0)
        total = count + n
        delta = m - mean
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(total > 0, n / np.maximum(total, 1), 0.0)
            mean = mean + delta * frac
            m2 = m2 + s + delta**2 * count * frac
        count = total
    if mean is None or not count.all():
        raise SegkitError("stats: no pixels to compute channel statistics from (no samples or all NaN)")
    return [float(v) for v in mean], [float(v) for v in np.sqrt(m2 / count)]


def normalize(image: np.ndarray, mean, std) -> np.ndarray:
    """(image - mean) / std per channel -> float32; a channel with std 0 is only centred."""
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    channels = 1 if image.ndim == 2 else image.shape[-1]
    if mean.shape != (channels,) or std.shape != (channels,):
        raise SegkitError(f"stats: image has {channels} channels but the statistics have {mean.size} means, {std.size} stds")
    out = image.astype(np.float32, copy=True)
    out -= mean if image.ndim == 3 else mean[0]
    scale = np.where(std > 0, std, 1.0).astype(np.float32)
    out /= scale if image.ndim == 3 else scale[0]
    return out


def save_stats(path: str | Path, mean, std, **extra) -> Path:
    """Write {"mean": [...], "std": [...], **extra} as JSON, atomically."""
    path = Path(path)
    if len(mean) != len(std):
        raise SegkitError(f"{path}: mean has {len(mean)} values but std has {len(std)}")
    payload = {"mean": [float(v) for v in mean], "std": [float(v) for v in std], **extra}
    return write_json(path, payload, make_parents=True)


def load_stats(path: str | Path) -> tuple[list[float], list[float]]:
    """(mean, std) from a file written by ``save_stats``; SegkitError naming the file otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SegkitError(f"{path}: statistics file not found (run `segkit stats`)") from None
    except (OSError, ValueError) as exc:
        raise SegkitError(f"{path}: not a readable statistics JSON ({exc})") from None
    try:
        mean = [float(v) for v in data["mean"]]
        std = [float(v) for v in data["std"]]
    except (KeyError, TypeError, ValueError):
        raise SegkitError(f"{path}: expected {{\"mean\": [...], \"std\": [...]}}") from None
    if len(mean) != len(std) or not mean:
        raise SegkitError(f"{path}: mean and std must be non-empty lists of the same length")
    return mean, std
