"""Preview grid: what the network sees (windows after channels and augmentation) with mask outlines.

Display of a window's channels: 3 -> RGB, 1 -> grey, 2 -> red/green (blue 0), more -> the first 3
as RGB. Values are clipped to [0, 1] (``rescale=True`` stretches each window's channels to their
own min..max instead, e.g. for normalized inputs). Each class id > 0 gets an outline colour
(class 1 red, 2 green, 3 blue, ...: ``segkit.io.classes.class_colour``, the colours of the
``--mask`` colour table and of QuPath classifications too).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from segkit.ground.errors import SegkitError
from segkit.io.atomic import write_bytes
from segkit.io.classes import class_colour



def _display(image: np.ndarray, rescale: bool) -> np.ndarray:
    """HWC/HW float -> HW3 uint8 RGB."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[..., None]
    channels = image.shape[-1]
    if channels == 1:
        rgb = np.repeat(image, 3, axis=2)
    elif channels == 2:
        rgb = np.concatenate([image, np.zeros_like(image[..., :1])], axis=2)
    else:
        rgb = image[..., :3].copy()
    if rescale:
        low = np.nanmin(rgb, axis=(0, 1), keepdims=True)
        span = np.nanmax(rgb, axis=(0, 1), keepdims=True) - low
        rgb = (rgb - low) / np.where(span > 0, span, 1.0)
    rgb = np.nan_to_num(rgb, nan=0.0)
    return np.rint(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


def _outline(rgb: np.ndarray, mask: np.ndarray, thickness: int) -> None:
    for cls in np.unique(mask):
        if cls == 0:
            continue
        contours, _ = cv2.findContours((mask == cls).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, contours, -1, class_colour(cls), thickness)


def preview_grid(samples: Sequence[tuple[np.ndarray, np.ndarray | None]], columns: int = 4, *, gap: int = 2,
                 thickness: int = 1, rescale: bool = False, background=(32, 32, 32)) -> np.ndarray:
    """RGB uint8 grid: cells of the largest window's size, ``gap`` pixels between and around them."""
    samples = list(samples)
    if not samples:
        raise SegkitError("preview: no samples to show")
    if columns < 1:
        raise SegkitError(f"preview: columns must be >= 1, got {columns}")
    tiles = []
    for index, (image, mask) in enumerate(samples):
        rgb = np.ascontiguousarray(_display(image, rescale))
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape[:2] != rgb.shape[:2]:
                raise SegkitError(f"preview: sample {index} has image {rgb.shape[:2]} but mask {mask.shape[:2]}")
            _outline(rgb, mask, thickness)
        tiles.append(rgb)
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    cell_h, cell_w = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
    grid = np.empty((rows * cell_h + (rows + 1) * gap, columns * cell_w + (columns + 1) * gap, 3), np.uint8)
    grid[:] = background
    for index, tile in enumerate(tiles):
        r, c = divmod(index, columns)
        top, left = gap + r * (cell_h + gap), gap + c * (cell_w + gap)
        grid[top:top + tile.shape[0], left:left + tile.shape[1]] = tile
    return grid


def write_preview(samples: Sequence[tuple[np.ndarray, np.ndarray | None]], path: str | Path, columns: int = 4,
                  **kwargs) -> Path:
    """Write ``preview_grid(samples, columns, **kwargs)`` as a PNG (or JPEG by suffix), atomically."""
    path = Path(path)
    suffix = path.suffix.lower() or ".png"
    if suffix not in (".png", ".jpg", ".jpeg"):
        raise SegkitError(f"{path}: preview must be a .png or .jpg file")
    grid = preview_grid(samples, columns, **kwargs)
    ok, data = cv2.imencode(suffix, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    if not ok:
        raise SegkitError(f"{path}: could not encode the preview image")
    return write_bytes(path, data.tobytes(), make_parents=True)
