"""Torch datasets: random training windows cut from large images, read window by window.

The dataset holds only paths and small low-resolution grids; readers are opened lazily in
each DataLoader worker, so nothing with an open file handle is pickled and a whole slide is
never decoded to cut one window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from segkit.data.manifest import ManifestRow
from segkit.data.windows import RandomWindowSampler, SamplingArea, Window, tissue_mask
from segkit.io.masks import open_labels
from segkit.io.raster import open_raster

if TYPE_CHECKING:
    from segkit.data.preprocess import Preprocess

THUMB_SIDE = 1024  # low-resolution grid for tissue and foreground sampling


@dataclass(frozen=True)
class LabelOptions:
    """How label sources of a manifest are decoded (passed straight to open_labels)."""

    rle_order: str = "F"
    class_map: Optional[dict] = None
    class_property: Optional[str] = None
    pad_mode: str = "constant"


class SourcePair:
    """An image and its label source, opened on first use in the current process."""

    def __init__(self, row: ManifestRow, options: LabelOptions):
        self.row = row
        self.options = options
        self._raster = None
        self._labels = None

    @property
    def raster(self):
        if self._raster is None:
            self._raster = open_raster(self.row.image, pad_mode=self.options.pad_mode)
        return self._raster

    @property
    def labels(self):
        if self._labels is None and self.row.label is not None:
            self._labels = open_labels(
                self.row.label,
                self.raster,
                image_id=self.row.id,
                rle_order=self.options.rle_order,
                class_map=self.options.class_map,
                class_property=self.options.class_property,
            )
        return self._labels

    def __getstate__(self):
        # Readers are reopened in each worker; open handles do not cross processes.
        return {"row": self.row, "options": self.options, "_raster": None, "_labels": None}


def open_pairs(rows: list[ManifestRow], options: LabelOptions) -> list[SourcePair]:
    """Open every image and label once up front, so a bad file fails before training starts."""
    pairs = [SourcePair(row, options) for row in rows]
    for pair in pairs:
        pair.raster  # noqa: B018 - opening validates the file
        pair.labels  # noqa: B018
    return pairs


def sampling_area(pair: SourcePair, tissue: str) -> SamplingArea:
    """Low-resolution usable-area and foreground grids of one manifest row."""
    raster = pair.raster
    thumb, scale = raster.thumbnail(THUMB_SIDE)
    usable = tissue_mask(thumb, method=tissue)
    foreground = None
    if pair.labels is not None:
        label_thumb, _ = pair.labels.thumbnail(THUMB_SIDE)
        foreground = label_thumb[: usable.shape[0], : usable.shape[1]] > 0
    return SamplingArea(
        height=raster.height,
        width=raster.width,
        region=pair.row.region,
        usable=usable,
        scale=scale,
        foreground=foreground,
    )


class RandomWindowDataset(Dataset):
    """``length`` random windows per epoch; item i of epoch e is a pure function of (seed, epoch, rank, i).

    Seeding per item rather than per worker keeps an epoch identical whatever the number of
    workers, which is what makes an interrupted run resume exactly.
    """

    def __init__(
        self,
        pairs: list[SourcePair],
        sampler: RandomWindowSampler,
        *,
        size: int,
        length: int,
        preprocess: "Preprocess",
        augment: Optional[Callable] = None,
        seed: int = 0,
        rank: int = 0,
    ):
        self.pairs = pairs
        self.sampler = sampler
        self.size = size
        self.length = length
        self.preprocess = preprocess
        self.augment = augment
        self.seed = seed
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray, Window]:
        """The raw window (HWC, source dtype) and its mask at network size, before any transform."""
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, index])
        area_index, window = self.sampler.sample(rng)
        pair = self.pairs[area_index]
        out_size = (self.size, self.size)
        image = pair.raster.read(window, out_size=out_size)
        mask = pair.labels.read(window, out_size=out_size)
        return image, mask, window

    def __getitem__(self, index: int) -> dict:
        raw, mask, _ = self.read(index)
        # Augment in [0, 1] (albumentations clips floats there), normalize afterwards.
        image = self.preprocess.stack(raw)
        if self.augment is not None:
            image, mask = self.augment(image, mask)
        image = self.preprocess.normalize(image)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)),
            "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)),
        }
