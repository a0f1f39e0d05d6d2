"""What the network sees, assembled from a Config: training rows, sampler, preprocessing, augmentation.

`fit`, `segkit stats` and `segkit preview` all start here, so a preview shows exactly the
windows training draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segkit.data.augment import Augment, create_augment
from segkit.data.channels import parse_channels, resolve_channels
from segkit.data.copypaste import ObjectBank, split_copy_paste_config
from segkit.data.dataset import RandomWindowDataset, SourcePair, open_pairs
from segkit.data.grids import create_sampler, image_thumbnail, sampling_area
from segkit.data.preprocess import Preprocess
from segkit.data.split import label_options, split_manifest
from segkit.data.stats import channel_stats
from segkit.data.windows import RandomWindowSampler
from segkit.ground.config import Config
from segkit.ground.errors import SegkitError

BANK_WINDOWS = 64  # training windows scanned for copy-paste objects


@dataclass
class TrainingData:
    train_pairs: list[SourcePair]
    val_pairs: list[SourcePair]
    sampler: RandomWindowSampler


def fov_of(config: Config) -> int:
    """The field of view in source pixels: data.fov_px, or the network size when unset."""
    return config.data.fov_px or config.data.size


def open_training_data(config: Config) -> TrainingData:
    """Open every training and validation row (bad files fail here, before any training)."""
    train_rows, val_rows = split_manifest(config)
    options = label_options(config)
    train_pairs = open_pairs(train_rows, options)
    val_pairs = open_pairs(val_rows, options, bands=train_pairs[0].raster.channels)
    areas = [sampling_area(pair, config.data.tissue) for pair in train_pairs]
    sampler = create_sampler(train_pairs, areas, fov_of(config), foreground_share=config.data.foreground_share)
    return TrainingData(train_pairs, val_pairs, sampler)


def window_dataset(config: Config, data: TrainingData, preprocess: Preprocess, *, length: int, seed: int,
                   augment: Augment | None = None) -> RandomWindowDataset:
    return RandomWindowDataset(
        data.train_pairs, data.sampler, size=config.data.size, length=length, preprocess=preprocess,
        augment=augment, seed=seed,
    )


def compute_preprocess(config: Config, data: TrainingData, seed: int) -> Preprocess:
    """Channel spec resolved on the first training image, then mean/std over sampled windows."""
    first = data.train_pairs[0]
    specs = parse_channels(config.data.channels, bands=first.raster.channels, dtype=first.raster.dtype)
    thumb, _ = image_thumbnail(first)  # shared with the usable-area grid: one whole-slide read
    preprocess = Preprocess(resolve_channels(specs, thumb))
    if not config.data.normalize:
        return preprocess
    if config.data.mean is not None:
        for key, values in (("data.mean", config.data.mean), ("data.std", config.data.std)):
            if len(values) != preprocess.in_channels:
                raise SegkitError(f"config key {key}: {len(values)} values for {preprocess.in_channels} channel(s)")
        return preprocess.with_stats([float(m) for m in config.data.mean], [float(s) for s in config.data.std])
    dataset = window_dataset(config, data, preprocess, length=config.data.stats_windows, seed=seed + 1)
    mean, std = channel_stats(preprocess.stack(dataset.read(i)[0]) for i in range(len(dataset)))
    return preprocess.with_stats([float(m) for m in mean], [float(s) for s in std])


def build_object_bank(config: Config, data: TrainingData, preprocess: Preprocess, seed: int) -> ObjectBank:
    """Objects (connected components per class) cut from random training windows."""
    _, bank_kwargs = split_copy_paste_config(dict(config.data.copy_paste))
    bank_kwargs.setdefault("seed", seed)
    dataset = window_dataset(config, data, preprocess, length=BANK_WINDOWS, seed=seed + 2)
    samples = ((preprocess.stack(raw), mask) for raw, mask, _ in (dataset.read(i) for i in range(len(dataset))))
    return ObjectBank.from_samples(samples, **bank_kwargs)


def create_train_augment(config: Config, data: TrainingData, preprocess: Preprocess, seed: int) -> Augment:
    """The albumentations pipeline of the config, with object copy-paste when configured."""
    if not config.data.copy_paste:
        return create_augment(config.data.augment, seed=seed)
    bank = build_object_bank(config, data, preprocess, seed)
    return create_augment(config.data.augment, copy_paste=dict(config.data.copy_paste), bank=bank, seed=seed)


def preview_samples(config: Config, count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` training windows after channels and augmentation, in [0, 1] (before normalization)."""
    data = open_training_data(config)
    preprocess = compute_preprocess(config, data, seed)
    augment = create_train_augment(config, data, preprocess, seed)
    dataset = window_dataset(config, data, preprocess, length=count, seed=seed)
    samples = []
    for index in range(count):
        raw, mask, _ = dataset.read(index)
        samples.append(augment(preprocess.stack(raw), mask))
    return samples
