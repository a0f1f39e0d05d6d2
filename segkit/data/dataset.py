"""Torch datasets: random training windows cut from large images, read window by window.

The dataset holds only paths and small low-resolution grids; readers are opened lazily in
each DataLoader worker, so nothing with an open file handle is pickled and a whole slide is
never decoded to cut one window.

The low-resolution usable-area and foreground grids the sampler needs live in
segkit.data.grids (cached).
"""

from __future__ import annotations

from collections import Counter

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from segkit.data.classes import tile_class
from segkit.data.manifest import ManifestRow
from segkit.data.targets import TargetSpec, read_targets
from segkit.data.windows import RandomWindowSampler, outside_region
from segkit.ground.errors import SegkitError
from segkit.ground.geometry import Window, clip_region
from segkit.ground.ignore import IGNORE_INDEX
from segkit.io.labels.instances import open_instances
from segkit.io.labels.masks import open_labels
from segkit.io.images.raster import open_raster

if TYPE_CHECKING:
    from segkit.data.preprocess import Preprocess



@dataclass(frozen=True)
class LabelOptions:
    """How label sources of a manifest are decoded (passed straight to open_labels)."""

    rle_order: str = "F"
    class_map: Optional[dict] = None
    class_property: Optional[str] = None
    pad_mode: str = "constant"
    instances: bool = False  # labels hold objects (segkit.io.labels.instances): data.targets is set


class SourcePair:
    """An image and its label source, opened on first use in the current process."""

    def __init__(self, row: ManifestRow, options: LabelOptions):
        self.row = row
        self.options = options
        self._raster = None
        self._labels = None

    @property
    def name(self) -> str:
        """How errors and warnings name this row: its id and image file."""
        return f"manifest row {self.row.id!r} ({self.row.image})"

    @property
    def raster(self):
        if self._raster is None:
            self._raster = open_raster(self.row.image, pad_mode=self.options.pad_mode)
        return self._raster

    @property
    def labels(self):
        if self._labels is None and self.row.label is not None and self.options.instances:
            self._labels = open_instances(self.row.label, self.raster, image_id=self.row.id,
                                          rle_order=self.options.rle_order)
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

    def release(self) -> None:
        """Close the readers (they reopen on next use): a checked class row need not hold its image."""
        for reader in (self._raster, getattr(self._labels, "raster", None)):  # a mask label reads its own raster
            if reader is not None and hasattr(reader, "close"):
                reader.close()
        self._raster = self._labels = None

    def __getstate__(self):
        # Readers are reopened in each worker; open handles do not cross processes.
        return {"row": self.row, "options": self.options, "_raster": None, "_labels": None}


def region_cells(shape: tuple[int, int], scale: float, pair: SourcePair) -> tuple[slice, slice]:
    """Grid rows/cols (as slices) covering the row's region, clipped to the image; the whole grid
    without a region. A region outside its image is an error naming the row."""
    raster = pair.raster
    region = pair.row.region
    if region is None:
        return slice(0, shape[0]), slice(0, shape[1])
    reg = clip_region(raster.height, raster.width, region, what=pair.name)
    r0, c0, r1, c1 = reg.row, reg.col, reg.bottom, reg.right
    return (slice(int(np.floor(r0 / scale)), int(np.ceil(r1 / scale))),
            slice(int(np.floor(c0 / scale)), int(np.ceil(c1 / scale))))


def open_pairs(rows: list[ManifestRow], options: LabelOptions, *,
               reference: Optional[list[SourcePair]] = None) -> list[SourcePair]:
    """Open every image and label once up front, so a bad file fails before training starts.

    Also checked here: each row's region overlaps its image, and all images have the same
    number of bands and the same dtype (the channel spec, its intensity windows and the network
    input are fixed by the first image). ``reference``: pairs already opened (the training rows,
    when opening validation rows) that the new ones must match; the odd file is blamed over
    both lists together.
    """
    pairs = [SourcePair(row, options) for row in rows]
    for pair in pairs:
        raster = pair.raster
        pair.labels  # noqa: B018 - opening validates the label file against the image
        region_cells((raster.height, raster.width), 1.0, pair)
    check_same_images(list(reference or []) + pairs)
    return pairs


def check_same_images(pairs: list[SourcePair]) -> None:
    """Every image has the bands and the dtype most images have; the odd one out is named.

    A mixed uint16/uint8 manifest would apply the window measured on one to the other (a uint8
    image read through a 3200..40000 window is black), so it is refused rather than guessed.
    Without a majority (one training, one validation image) an image whose reader added an alpha
    band is the odd one, else the later one; the message names the other image too.
    """
    rasters = [pair.raster for pair in pairs]
    check_same_headers([str(r.path) for r in rasters], np.array([r.channels for r in rasters], np.int64),
                       [str(r.dtype) for r in rasters], [r.backend for r in rasters])


def check_same_headers(paths, channels: np.ndarray, dtypes, backends) -> None:
    """check_same_images on header columns (per image: bands, dtype name, reader); ``paths[i]`` names image i."""
    channels = np.asarray(channels, np.int64)
    if not len(channels):
        return
    names, back = np.unique(np.asarray(backends), return_inverse=True)
    backends = np.array([n.decode() if isinstance(n, bytes) else str(n) for n in names])[back.reshape(-1)]
    alpha = (backends == "opencv") & np.isin(channels, (2, 4))
    names, back = np.unique(np.asarray(dtypes), return_inverse=True)
    kinds = np.array(["float" if np.dtype(d).kind == "f" else str(np.dtype(d)) for d in names])[back.reshape(-1)]

    def bands(i):
        kind = {(2, "opencv"): " (grey + alpha)", (4, "opencv"): " (RGBA)"}.get((int(channels[i]), backends[i]), "")
        return f"{int(channels[i])} band(s){kind}"

    for keys, held, needs in ((channels.astype(str), bands, "bands"), (kinds, lambda i: f"dtype {kinds[i]}", "dtype")):
        values, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        if len(values) < 2:
            continue
        per = counts[inverse.reshape(-1)]
        ranked = np.lexsort((np.arange(len(keys)), alpha, -per))  # most common first, alpha last, order kept
        first = int(ranked[0])
        odd = int(ranked[np.flatnonzero(keys[ranked] != keys[first])[0]])
        raise SegkitError(f"{paths[odd]}: {held(odd)}, but {int(per[first])} of {len(keys)} images have "
                          f"{keys[first]} (e.g. {paths[first]}); every image of a manifest needs the same {needs}")


# ---------------------------------------------------------------- the training dataset


def network_input(raw: np.ndarray, mask: Optional[np.ndarray], preprocess: "Preprocess",
                  augment: Optional[Callable], seed_key: list[int]) -> tuple[torch.Tensor, Optional[np.ndarray]]:
    """Raw window (HWC, source dtype) -> (CHW float32 network input, augmented mask or None).

    Augments in [0, 1] (albumentations clips floats there) and normalizes afterwards. The
    augmentation draws from its own generator, reseeded from ``seed_key`` (the item's
    coordinates), which keeps an item a pure function of (seed, epoch, rank, index): a resumed
    run augments exactly as the uninterrupted one would have.
    """
    image = preprocess.stack(raw)
    if augment is not None:
        if hasattr(augment, "reseed"):
            augment.reseed(seed_key)
        if mask is None:  # class rows: the pipeline takes a mask, so give it a blank one
            image, _ = augment(image, np.zeros(image.shape[:2], np.uint8))
        else:
            image, mask = augment(image, mask)
    image = preprocess.normalize(image)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)), mask


class RandomWindowDataset(Dataset):
    """``length`` random windows per epoch; item i of epoch e is a pure function of (seed, epoch, rank, i).

    Seeding per item rather than per worker keeps an epoch identical whatever the number of
    workers, which is what makes an interrupted run resume exactly; different items draw from
    independent streams, so workers never repeat each other's windows.
    Items: ``image`` CHW float32, ``mask`` HW int64 (rows with a label) or ``target`` (class
    rows without one), and ``window`` = (area index, row, col, height, width) in source pixels.
    ``tile_class_px`` (seg+cls): items also get ``target``, 1 when the window's mask holds at
    least that many foreground source pixels, else 0 (segkit.data.classes.tile_class).
    Rows with a region (sparse labels): mask pixels outside the region are IGNORE_INDEX, which
    the losses skip (segkit.ground.ignore).
    ``targets`` (a segkit.data.targets.TargetSpec): ``mask`` is (T, H, W) float32 instance targets
    derived from the window's object ids instead of class ids.
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
        tile_class_px: Optional[float] = None,
        targets: Optional[TargetSpec] = None,
    ):
        # why: keyword options of the dataset, each one a config key passed by the one composition root
        # (train/from_config.py).
        self.pairs = pairs
        self.targets = targets
        self.tile_class_px = tile_class_px
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

    def draw(self, index: int) -> tuple[int, Window]:
        """(area index, window) of item ``index`` in the current epoch; no I/O."""
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, index])
        return self.sampler.sample(rng)

    def _read(self, index: int) -> tuple[int, np.ndarray, Optional[np.ndarray], Window]:
        area_index, window = self.draw(index)
        pair = self.pairs[area_index]
        out_size = (self.size, self.size)
        image = pair.raster.read(window, out_size=out_size)
        labels = pair.labels
        if labels is not None and self.targets is not None:
            mask = read_targets(labels, window, self.targets, out_size)
        else:
            mask = labels.read(window, out_size=out_size) if labels is not None else None
            if mask is not None and pair.row.region is not None:  # sparse labels: outside the region is unknown
                outside = outside_region(window, pair.row.region, mask.shape[:2])
                if outside.any():  # most windows lie inside their region: no copy for them
                    mask = np.array(mask)  # a copy: the reader's array may be shared
                    mask[outside] = IGNORE_INDEX
        return area_index, image, mask, window

    def read(self, index: int) -> tuple[np.ndarray, Optional[np.ndarray], Window]:
        """The raw window (HWC, source dtype) and its mask at network size, before any transform."""
        return self._read(index)[1:]

    def __getitem__(self, index: int) -> dict:
        area_index, raw, mask, window = self._read(index)
        image, mask = network_input(raw, mask, self.preprocess, self.augment,
                                    [int(self.seed), int(self.epoch), int(self.rank), int(index), 1])
        item = {"image": image, "window": torch.tensor([area_index, *window], dtype=torch.int64)}
        if mask is not None and self.targets is not None:  # (H, W, T) 0/1 -> (T, H, W) float
            item["mask"] = torch.from_numpy(np.ascontiguousarray(mask.transpose(2, 0, 1), dtype=np.float32))
        elif mask is not None:
            item["mask"] = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))
            if self.tile_class_px is not None:  # seg+cls: the tile's class from its (augmented) mask
                scale = (window.height * window.width) / float(mask.shape[0] * mask.shape[1])
                item["target"] = torch.tensor(tile_class(mask, self.tile_class_px, scale), dtype=torch.int64)
        else:
            target = self.pairs[area_index].row.target
            if target is None:
                raise SegkitError(f"{self.pairs[area_index].name}: neither a label nor a class")
            item["target"] = torch.tensor(int(target), dtype=torch.int64)
        return item
