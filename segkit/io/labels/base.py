"""The base of every label source: read(window) and thumbnail() with the image's geometry.

A subclass implements ``_read_inside(r0, r1, c0, c1)`` (uint8 class ids of an in-image block);
this base pads windows past the border like the image, resamples by nearest and builds
max-pooled thumbnails. The kinds (mask rasters, RLE CSVs, polygons) live in segkit.io.labels.masks
and segkit.io.labels.polygons; segkit.io.labels.masks.open_labels picks one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segkit.ground.geometry import Window
from segkit.io.images.window import block_edges, read_padded, resize_nearest, thumb_shape
from segkit.io.images.raster import Raster

STRIP_PIXELS = 32 * 2**20  # label pixels rasterized at once when building a thumbnail


class LabelSource:
    """Common reading: padding like the image, nearest resampling, max-pooled thumbnails."""

    path: Path
    height: int
    width: int
    pad_mode: str = "constant"

    def _init_geometry(self, path: Path, image: Raster) -> None:
        self.path, self.image_path = Path(path), image.path
        self.height, self.width, self.pad_mode = image.height, image.width, image.pad_mode

    def _read_inside(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        raise NotImplementedError

    def read(self, window: Window, out_size: tuple[int, int] | None = None) -> np.ndarray:
        """HW uint8 class ids of `window` (source pixels), resized to out_size (h, w) by nearest."""
        window = Window(*(int(v) for v in window))
        mask = read_padded(self._read_inside, (self.height, self.width), window, mode=self.pad_mode,
                           value=0, dtype=np.uint8, channels=None)
        return mask if out_size is None else resize_nearest(mask, out_size)

    def thumbnail(self, max_side: int = 1024) -> tuple[np.ndarray, float]:
        """(HW uint8, largest class id in each block; source px per thumb px). Same grid as
        Raster.thumbnail(max_side) of the image."""
        oh, ow = thumb_shape(self.height, self.width, max_side)
        rows, cols = block_edges(self.height, oh), block_edges(self.width, ow)
        out = np.zeros((oh, ow), np.uint8)
        step = max(1, STRIP_PIXELS // max(1, self.width * max(1, self.height // oh)))
        for o0 in range(0, oh, step):
            o1 = min(oh, o0 + step)
            strip = self._read_inside(int(rows[o0]), int(rows[o1]), 0, self.width)
            part = np.maximum.reduceat(strip, rows[o0:o1] - rows[o0], axis=0)
            out[o0:o1] = np.maximum.reduceat(part, cols[:-1], axis=1)
        return out, max(self.height / oh, self.width / ow)

    def __repr__(self):
        return f"{type(self).__name__}({str(self.path)!r}, {self.height}x{self.width})"
