"""The training stage's inputs unpacked from a Config: the one place besides fit() that reads one.

segkit's composition roots are the CLI (segkit/cli/), the training stage entry (this module and
segkit/train/fit.py), the infer entry (segkit/infer/run.py) and the study commands' entries;
everything they call takes explicit arguments. `segkit stats` and `segkit preview` use these
functions too, so they show exactly what training sees.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from segkit.data.augment import Augment
from segkit.data.dataset import LabelOptions
from segkit.data.inputs import (
    TrainingData,
    compute_preprocess,
    create_train_augment,
    draw_samples,
    open_training_data,
)
from segkit.data.preprocess import Preprocess
from segkit.data.split import FoldSpec, split_manifest
from segkit.ground.config import Config, load_config
from segkit.ground.errors import SegkitError
from segkit.models.factory import check_input_size, create_model
from segkit.runs.device import seed_everything
from segkit.runs.rundir import read_run_info
from segkit.train.validate import ValidationSettings, activation_for


def with_fov(config: Config) -> Config:
    """The one "field of view defaults to the network size" rule: data.fov_px None -> data.size."""
    if config.data.fov_px is not None:
        return config
    return dataclasses.replace(config, data=dataclasses.replace(config.data, fov_px=config.data.size))


def label_options(config: Config) -> LabelOptions:
    """How the data section says labels are decoded."""
    d = config.data
    return LabelOptions(d.rle_order, d.class_map, d.class_property, d.pad_mode)


def fold_spec(config: Config) -> FoldSpec:
    d = config.data
    return FoldSpec(d.folds, d.fold_method, d.val_fold, config.run.seed, d.group_pattern)


def split_rows(config: Config, *, cache=None):
    """(train rows, validation rows) of the config's manifest and fold settings."""
    return split_manifest(config.data.manifest, fold_spec(config), task=config.task, options=label_options(config),
                          cache=cache)


def training_data(config: Config) -> TrainingData:
    """Every training and validation row opened, and the sampler (bad files fail here)."""
    config = with_fov(config)
    return open_training_data(
        config.data.manifest, fold_spec(config), label_options(config), task=config.task, tissue=config.data.tissue,
        fov_px=config.data.fov_px, foreground_share=config.data.foreground_share,
    )


def preprocess_for(config: Config, data: TrainingData, seed: int | None = None) -> Preprocess:
    """Channel spec and normalization statistics of the data section."""
    d = config.data
    return compute_preprocess(data, channels=d.channels, normalize=d.normalize, mean=d.mean, std=d.std,
                              stats_windows=d.stats_windows, size=d.size,
                              seed=config.run.seed if seed is None else seed)


def augment_for(config: Config, data: TrainingData, preprocess: Preprocess) -> Augment:
    """The training augmentation (data.augment, data.copy_paste)."""
    return create_train_augment(data, preprocess, augment=config.data.augment, copy_paste=config.data.copy_paste,
                                size=config.data.size, seed=config.run.seed)


def preview_samples(config: Config, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` training windows after channels and augmentation, as `segkit preview` shows them."""
    data = training_data(config)
    preprocess = preprocess_for(config, data)
    return draw_samples(data, preprocess, augment_for(config, data, preprocess), size=config.data.size,
                        count=count, seed=config.run.seed)


def build_model(config: Config, in_channels: int) -> torch.nn.Module:
    """The stage's network from a fixed seed (every rank builds the same one), size-checked."""
    seed_everything(config.run.seed)
    model = create_model(config.model.arch, config.model.encoder, config.model.encoder_weights,
                         in_channels=in_channels, classes=config.model.classes, task=config.task)
    check_input_size(model, config.data.size)
    return model


def validation_settings(config: Config) -> ValidationSettings:
    """Validation predicts as `segkit infer` does with the run's infer section."""
    config = with_fov(config)
    i = config.infer
    return ValidationSettings(
        fov_px=config.data.fov_px, size=config.data.size, overlap_px=i.overlap_px, tta=i.tta, blend=i.blend,
        threshold=i.threshold, batch_size=i.batch_size, amp=config.train.amp,
        activation=activation_for(config.model.classes), classes=config.model.classes, margin_px=i.margin_px,
    )


def check_parent_compatible(parent: Path, config: Config) -> Config:
    """The parent's config; one-line error when the child asks for other channels, classes or task."""
    base = load_config(parent / "config.yaml")
    for key, theirs, ours in (
        ("task", base.task, config.task),
        ("data.channels", base.data.channels, config.data.channels),
        ("model.classes", base.model.classes, config.model.classes),
        ("model.arch", base.model.arch, config.model.arch),
        ("model.encoder", base.model.encoder, config.model.encoder),
    ):
        if theirs != ours:
            raise SegkitError(f"{parent}: parent run has {key}={theirs!r} but this stage asks for {ours!r}; "
                              "a finetune keeps the parent's model and inputs (start a new train run instead)")
    return base


def lineage(parent: Path, parent_epoch: int) -> list[dict]:
    """The chain of stages up to this one's parent, oldest first: [{run, epoch, size}, ...]."""
    info = read_run_info(parent)
    size = load_config(parent / "config.yaml").data.size
    return list(info.get("lineage") or []) + [{"run": str(parent), "epoch": int(parent_epoch), "size": size}]
