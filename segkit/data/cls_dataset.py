"""The classification dataset: one item per class row, its image (or its region of a large image) at network size.

A row's image is resized to ``size`` x ``size``, or, with ``crop_scale``, a random window of
it is cut first (the random-resized crop of Szegedy et al. 2015, "Going Deeper with
Convolutions": a share of the area in ``crop_scale``, an aspect ratio in [3/4, 4/3]) and that
window resized. Windows are read from the raster at network size, so a row that is a region
of a whole-slide image never decodes the slide.

Readers are opened on demand and kept in a small per-process LRU cache, so a dataset of many
files does not hold every decoded image, while the rows of one large image share its reader.
Item i of an epoch is a pure function of (seed, epoch, rank, i) as in RandomWindowDataset, so
a resumed run sees exactly the items the uninterrupted one would have.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from segkit.data.classes import epoch_order
from segkit.data.dataset import network_input
from segkit.data.manifest import ManifestRow
from segkit.ground.errors import SegkitError
from segkit.ground.geometry import Window, clip_region
from segkit.io.images.raster import open_raster

if TYPE_CHECKING:
    from segkit.data.preprocess import Preprocess


class RasterCache:
    """The last ``max_open`` rasters opened in this process (LRU); picklable (workers start empty)."""

    def __init__(self, pad_mode: str = "constant", max_open: int = 16):
        self.pad_mode, self.max_open = pad_mode, int(max_open)
        self._open: OrderedDict = OrderedDict()

    def get(self, path):
        key = str(path)
        if key in self._open:
            self._open.move_to_end(key)
            return self._open[key]
        raster = open_raster(path, pad_mode=self.pad_mode)
        self._open[key] = raster
        while len(self._open) > self.max_open:
            _, old = self._open.popitem(last=False)
            old.close()
        return raster

    def __getstate__(self):
        return {"pad_mode": self.pad_mode, "max_open": self.max_open, "_open": OrderedDict()}


def row_region(raster, row: ManifestRow) -> Window:
    """The row's region clipped to its image, or the whole image."""
    return clip_region(raster.height, raster.width, row.region, what=f"manifest row {row.id!r} ({row.image})")


def random_crop(region: Window, scale: Sequence[float], rng: np.random.Generator,
                ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Window:
    """A random window inside ``region`` covering a share in ``scale`` of its area (10 tries, then all of it)."""
    area = region.height * region.width
    for _ in range(10):
        target = area * rng.uniform(float(scale[0]), float(scale[1]))
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        width, height = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < width <= region.width and 0 < height <= region.height:
            row = region.row + int(rng.integers(0, region.height - height + 1))
            col = region.col + int(rng.integers(0, region.width - width + 1))
            return Window(row, col, height, width)
    return region


def read_row(cache: RasterCache, row: ManifestRow, size: int, window: Optional[Window] = None) -> np.ndarray:
    """The row's image (or ``window`` of it; default its whole region) at ``size`` x ``size``, raw dtype HWC."""
    raster = cache.get(row.image)
    return raster.read(window or row_region(raster, row), out_size=(int(size), int(size)))


class ClassImageDataset(Dataset):
    """Class rows as training items: ``image`` CHW float32, ``target`` int64, ``window`` (row index, r, c, h, w).

    ``balanced``, ``fraction`` and the rank split decide each epoch's order (see
    segkit.data.classes.epoch_order); ``min_length`` (one batch) keeps a tiny dataset usable.
    """

    def __init__(self, rows: Sequence[ManifestRow], *, size: int, preprocess: "Preprocess",
                 augment: Optional[Callable] = None, seed: int = 0, rank: int = 0, world: int = 1,
                 balanced: bool = False, fraction: float = 1.0, crop_scale: Optional[Sequence[float]] = None,
                 min_length: int = 1, pad_mode: str = "constant"):
        # why: keyword options of the dataset, each one a config key passed by the one composition root
        # (train/from_config.py).
        if any(row.target is None or not isinstance(row.target, int) for row in rows):
            raise SegkitError("ClassImageDataset: every row needs an integer class (resolve_classes first)")
        self.rows = list(rows)
        self.size, self.preprocess, self.augment = int(size), preprocess, augment
        self.seed, self.rank, self.world = int(seed), int(rank), int(world)
        self.balanced, self.fraction, self.min_length = bool(balanced), float(fraction), int(min_length)
        self.crop_scale = tuple(crop_scale) if crop_scale else None
        self.cache = RasterCache(pad_mode)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.order = epoch_order([row.target for row in self.rows], seed=self.seed, epoch=self.epoch, rank=self.rank,
                                 world=self.world, balanced=self.balanced, fraction=self.fraction,
                                 min_length=self.min_length)

    def __len__(self) -> int:
        return len(self.order)

    def draw(self, index: int) -> tuple[int, Window]:
        """(row index, source window) of item ``index`` in the current epoch."""
        row_index = int(self.order[index])
        row = self.rows[row_index]
        region = row_region(self.cache.get(row.image), row)
        if self.crop_scale is None:
            return row_index, region
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, int(index), 2])
        return row_index, random_crop(region, self.crop_scale, rng)

    def read(self, index: int) -> tuple[np.ndarray, None, Window]:
        """The raw image of item ``index`` at network size (as RandomWindowDataset.read: no mask)."""
        row_index, window = self.draw(index)
        return read_row(self.cache, self.rows[row_index], self.size, window), None, window

    def __getitem__(self, index: int) -> dict:
        row_index, window = self.draw(index)
        raw = read_row(self.cache, self.rows[row_index], self.size, window)
        image, _ = network_input(raw, None, self.preprocess, self.augment,
                                 [self.seed, self.epoch, self.rank, int(index), 1])
        return {"image": image, "target": torch.tensor(int(self.rows[row_index].target), dtype=torch.int64),
                "window": torch.tensor([row_index, *window], dtype=torch.int64)}
