"""What the network sees: training rows, sampler, preprocessing, augmentation, sample windows.

`fit`, `segkit stats` and `segkit preview` all start here (through the training stage's
segkit.train.from_config), so a preview shows exactly the windows training draws. Every
function takes explicit arguments; the Config is unpacked by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from segkit.data.augment import Augment, create_augment
from segkit.data.classes import resolve_classes, warn_missing_classes
from segkit.data.cls_dataset import ClassImageDataset
from segkit.data.channels import parse_channels, resolve_channels
from segkit.data.copypaste import ObjectBank, split_copy_paste_config
from segkit.data.dataset import (
    LabelOptions,
    RandomWindowDataset,
    SourcePair,
    open_pairs,
)
from segkit.data.grids import create_sampler, image_thumbnail, sampling_area, sampling_columns
from segkit.data.headers import open_table
from segkit.data.manifest import ManifestRow
from segkit.data.preprocess import Preprocess
from segkit.data.split import FoldSpec, load_rows, split_manifest, split_rows
from segkit.data.stats import channel_stats
from segkit.data.windows import RandomWindowSampler
from segkit.ground.errors import SegkitError, warn_once

BANK_WINDOWS = 64  # training windows scanned for copy-paste objects


@dataclass
class TrainingData:
    """Opened training and validation rows; ``sampler`` draws seg windows (None for class rows,
    which are visited row by row); ``class_names`` of a cls manifest (resolved ids -> names)."""

    train_pairs: list[SourcePair]
    val_pairs: list[SourcePair]
    sampler: Optional[RandomWindowSampler]
    class_names: Optional[list[str]] = None


def open_training_data(manifest: str, folds: FoldSpec, labels: LabelOptions, *, task: str, tissue: str,
                       fov_px: int, foreground_share: float, small_images: str = "pad",
                       progress=None) -> TrainingData:
    """Open every training and validation row (bad files fail here, before any training).

    ``tissue``: usable-area method on the thumbnail (none, saturation, otsu); ``fov_px``: source
    pixels a window covers; ``foreground_share``: share of windows centred on labelled pixels;
    ``small_images``: pad or resize images no larger than fov_px (segkit.data.windows);
    ``progress(total)``: the progress bar of a first reading of many headers (segkit.data.headers).
    Rows are kept in columns (segkit.data.table) and each distinct file's header is checked once
    and cached (segkit.data.headers); grids are measured only for images larger than one window.
    """
    # why: each keyword is one config key (or the progress bar of the caller's layer), unpacked by the one
    # composition root (train/from_config.py)
    train_rows, val_rows = split_manifest(manifest, folds, task=task, options=labels)
    train_pairs = open_table(train_rows, labels, progress=progress)
    val_pairs = open_table(val_rows, labels, reference=train_pairs, progress=progress)
    del train_rows, val_rows  # the columns hold them now
    columns = sampling_columns(train_pairs, tissue, fov_px)
    labelled = [area.foreground for area in columns.grids.values() if area.foreground is not None]
    if labelled and len(labelled) == len(train_pairs) and not any(grid.any() for grid in labelled):
        warn_once(f"{manifest}: none of the {len(labelled)} training rows has foreground in its labels; "
                  "the model can only learn background")
    sampler = create_sampler(train_pairs, columns, fov_px, foreground_share=foreground_share,
                             small_images=small_images)
    return TrainingData(train_pairs, val_pairs, sampler)


def open_class_data(manifest: str, folds: FoldSpec, labels: LabelOptions, *,
                    class_names: Optional[list] = None) -> TrainingData:
    """Class rows (a CSV with a class column, or a folder of class sub-folders) split into folds.

    Every image is opened once so an unreadable one fails here (named), then released: class rows
    are read on demand (ClassImageDataset), so a large dataset is never held decoded. A class with
    no training row is named in a warning.
    """
    rows, names = resolve_classes(load_rows(manifest), class_names, str(manifest), task="cls")
    train_rows, val_rows = split_rows(rows, folds, task="cls", options=labels, where=str(manifest))
    warn_missing_classes(train_rows, names, str(manifest))
    train_pairs = open_pairs(train_rows, labels)
    val_pairs = open_pairs(val_rows, labels, reference=train_pairs)
    for pair in train_pairs[1:] + val_pairs:  # the first stays open: its thumbnail resolves the channels
        pair.release()
    return TrainingData(train_pairs, val_pairs, None, names)


def sample_dataset(data: TrainingData, preprocess: Preprocess, *, size: int, length: int, seed: int,
                   augment: Augment | None = None):
    """Training samples with ``read(i) -> (raw, mask or None, window)``: random windows (seg) or
    class rows in a random order (cls), for statistics, previews and object banks."""
    if data.sampler is not None:
        return window_dataset(data, preprocess, size=size, length=length, seed=seed, augment=augment)
    dataset = ClassImageDataset([pair.row for pair in data.train_pairs], size=size, preprocess=preprocess,
                                augment=augment, seed=seed, min_length=length)
    dataset.order = dataset.order[:length]
    return dataset


def window_dataset(data: TrainingData, preprocess: Preprocess, *, size: int, length: int, seed: int,
                   augment: Augment | None = None, rank: int = 0) -> RandomWindowDataset:
    """``length`` random training windows per epoch, read at ``size`` x ``size`` network pixels."""
    return RandomWindowDataset(
        data.train_pairs, data.sampler, size=size, length=length, preprocess=preprocess,
        augment=augment, seed=seed, rank=rank,
    )


def compute_preprocess(data: TrainingData, *, channels: Optional[list], normalize: bool, mean: Optional[list],
                       std: Optional[list], stats_windows: int, size: int, seed: int) -> Preprocess:
    """Channel spec resolved on the first training image, then mean/std over sampled windows.

    ``channels``: the data.channels spec (None: one channel per band); ``mean``/``std`` given are
    used as is; otherwise, with ``normalize``, they are measured on ``stats_windows`` windows.
    """
    first = data.train_pairs[0]
    specs = parse_channels(channels, bands=first.raster.channels, dtype=first.raster.dtype)
    thumb, _ = image_thumbnail(first)  # shared with the usable-area grid: one whole-slide read
    preprocess = Preprocess(resolve_channels(specs, thumb))
    if not normalize:
        return preprocess
    if mean is not None:
        for key, values in (("data.mean", mean), ("data.std", std)):
            if len(values) != preprocess.in_channels:
                raise SegkitError(f"config key {key}: {len(values)} values for {preprocess.in_channels} channel(s)")
        return preprocess.with_stats([float(m) for m in mean], [float(s) for s in std])
    dataset = sample_dataset(data, preprocess, size=size, length=stats_windows, seed=seed + 1)
    mean, std = channel_stats(preprocess.stack(dataset.read(i)[0]) for i in range(len(dataset)))
    return preprocess.with_stats([float(m) for m in mean], [float(s) for s in std])


def build_object_bank(data: TrainingData, preprocess: Preprocess, copy_paste: dict, *, size: int,
                      seed: int) -> ObjectBank:
    """Objects (connected components per class) cut from random training windows."""
    _, bank_kwargs = split_copy_paste_config(dict(copy_paste))
    bank_kwargs.setdefault("seed", seed)
    dataset = window_dataset(data, preprocess, size=size, length=BANK_WINDOWS, seed=seed + 2)
    samples = ((preprocess.stack(raw), mask) for raw, mask, _ in (dataset.read(i) for i in range(len(dataset))))
    return ObjectBank.from_samples(samples, **bank_kwargs)


def create_train_augment(data: TrainingData, preprocess: Preprocess, *, augment: Optional[dict],
                         copy_paste: Optional[dict], size: int, seed: int) -> Augment:
    """The albumentations pipeline (data.augment), with object copy-paste (data.copy_paste) when set."""
    if not copy_paste:
        return create_augment(augment, seed=seed)
    bank = build_object_bank(data, preprocess, copy_paste, size=size, seed=seed)
    return create_augment(augment, copy_paste=dict(copy_paste), bank=bank, seed=seed)


def draw_samples(data: TrainingData, preprocess: Preprocess, augment: Augment, *, size: int, count: int,
                 seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` training windows after channels and augmentation, in [0, 1] (before normalization)."""
    dataset = sample_dataset(data, preprocess, size=size, length=count, seed=seed)
    samples = []
    for index in range(count):
        raw, mask, _ = dataset.read(index)
        blank = np.zeros(raw.shape[:2], np.uint8)  # class rows: no mask, the preview outlines nothing
        samples.append(augment(preprocess.stack(raw), blank if mask is None else mask))
    return samples


def random_windows(images, labels=None, *, fov_px: int, size: int | None = None, length: int = 256,
                   preprocess: Preprocess | None = None, augment: Augment | None = None,
                   foreground_share: float = 0.33, tissue: str = "none", seed: int = 0,
                   labels_options: LabelOptions | None = None) -> RandomWindowDataset:
    """A torch Dataset of random windows from image files, for your own training loop (no Config).

    images: image paths; labels: one label source per image (mask raster, RLE CSV or GeoJSON;
    None for unlabelled images); fov_px: source pixels a window covers; size: pixels returned
    (default fov_px); length: windows per epoch (call ``set_epoch(e)`` for fresh ones);
    preprocess: raw HWC -> float32 HWC (default: each band scaled by its dtype range, no
    normalization); augment: ``augment(image, mask) -> (image, mask)`` on [0, 1] images;
    foreground_share: share of windows centred on labelled pixels; tissue: none, saturation or
    otsu (where windows may fall); seed: item i of epoch e is a pure function of (seed, e, i).
    Items are dicts: ``image`` CHW float32, ``mask`` HW int64 (labelled images), ``window``.
    """
    # why: the sampler's keyword options (sizes in source px, shares, seeds), each a config key; torchgeo's
    # samplers take theirs the same way.
    labels = list(labels) if labels is not None else [None] * len(images)
    if len(labels) != len(images):
        raise SegkitError(f"random_windows: {len(labels)} label sources for {len(images)} images")
    rows = [ManifestRow(id=Path(image).stem, image=Path(image), label=str(label) if label is not None else None)
            for image, label in zip(images, labels)]
    options = labels_options or LabelOptions()
    pairs = open_pairs(rows, options)
    sampler = create_sampler(pairs, [sampling_area(pair, tissue) for pair in pairs], int(fov_px),
                             foreground_share=foreground_share)
    data = TrainingData(pairs, [], sampler)
    if preprocess is None:
        preprocess = compute_preprocess(data, channels=None, normalize=False, mean=None, std=None, stats_windows=0,
                                        size=int(size or fov_px), seed=seed)
    return window_dataset(data, preprocess, size=int(size or fov_px), length=length, seed=seed, augment=augment)
