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
from segkit.data.classes import TILE_CLASSES
from segkit.data.cls_dataset import ClassImageDataset
from segkit.data.dataset import RandomWindowDataset
from segkit.data.inputs import (
    TrainingData,
    compute_preprocess,
    create_train_augment,
    draw_samples,
    open_class_data,
    open_training_data,
)
from segkit.data.mixing import BatchMix, create_mixup
from segkit.data.preprocess import Preprocess
from segkit.data.split import FoldSpec, split_manifest
from segkit.data.targets import TargetSpec, parse_targets
from segkit.ground.config import Config, load_config
from segkit.ground.errors import SegkitError
from segkit.models.factory import check_input_size, create_model
from segkit.ground.ignore import IGNORE_INDEX
from segkit.models.losses import create_task_loss, supports_ignore
from segkit.models.target_loss import TargetLoss
from segkit.post.watershed import SeedSettings
from segkit.runs.device import seed_everything
from segkit.runs.rundir import read_run_info
from segkit.models.activation import output_activation
from segkit.train.validate import ValidationSettings


# the validation score that picks the best checkpoint (and drives early stopping), per task
BEST_METRICS = {"seg": "val_dice", "seg+cls": "val_dice", "cls": "val_f1"}


def with_fov(config: Config) -> Config:
    """The one "field of view defaults to the network size" rule: data.fov_px None -> data.size."""
    if config.data.fov_px is not None:
        return config
    return dataclasses.replace(config, data=dataclasses.replace(config.data, fov_px=config.data.size))


def label_options(config: Config) -> LabelOptions:
    """How the data section says labels are decoded."""
    d = config.data
    return LabelOptions(d.rle_order, d.class_map, d.class_property, d.pad_mode, instances=bool(d.targets))


def target_spec(config: Config) -> TargetSpec | None:
    """The instance targets of data.targets (None: plain class masks)."""
    names = parse_targets(config.data.targets)
    return TargetSpec(names, config.data.border_px, config.data.contact_px) if names else None


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
    if config.task == "cls":
        if config.data.copy_paste:
            raise SegkitError("config key data.copy_paste: pastes mask objects; not for task cls")
        return open_class_data(config.data.manifest, fold_spec(config), label_options(config),
                               class_names=config.data.class_names)
    return open_training_data(
        config.data.manifest, fold_spec(config), label_options(config), task=config.task, tissue=config.data.tissue,
        fov_px=config.data.fov_px, foreground_share=config.data.foreground_share,
        small_images=config.data.small_images, progress=header_progress(config.run.progress),
    )


def header_progress(enabled: bool):
    """The progress line of a first start over many files (segkit.data.headers): files/s and an ETA."""
    from segkit.runs.progress import Progress

    return lambda total: Progress(total, desc="reading image headers", unit="files", enabled=enabled)


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


def with_classes(config: Config, data: TrainingData) -> Config:
    """cls: data.class_names resolved from the manifest and model.classes = their count (saved in the
    run's config.yaml, so inference writes the same names); instance targets: model.classes = one
    output per target; other tasks unchanged."""
    spec = target_spec(config)
    if spec is not None:
        return dataclasses.replace(config, model=dataclasses.replace(config.model, classes=len(spec.names)))
    if config.task != "cls":
        return config
    names = list(data.class_names)
    if config.model.classes not in (1, len(names)):
        raise SegkitError(f"config key model.classes: {config.model.classes}, but the manifest has {len(names)} "
                          f"classes ({', '.join(names[:8])}{' ...' if len(names) > 8 else ''}); leave it at 1")
    return dataclasses.replace(config, data=dataclasses.replace(config.data, class_names=names),
                               model=dataclasses.replace(config.model, classes=len(names)))


def class_names(config: Config) -> list[str] | None:
    """Names of the class-head outputs: the image classes (cls), empty/object (seg+cls), None (seg)."""
    return {"cls": config.data.class_names, "seg+cls": TILE_CLASSES}.get(config.task)


def build_model(config: Config, in_channels: int) -> torch.nn.Module:
    """The stage's network from a fixed seed (every rank builds the same one), size-checked."""
    seed_everything(config.run.seed)
    model = create_model(config.model.arch, config.model.encoder, config.model.encoder_weights,
                         in_channels=in_channels, classes=config.model.classes, task=config.task)
    check_input_size(model, config.data.size, in_channels=in_channels)
    return model


def train_dataset(config: Config, data: TrainingData, preprocess: Preprocess, augment: Augment, *, rank: int,
                  world: int) -> RandomWindowDataset | ClassImageDataset:
    """One rank's training items: random windows (seg; seg+cls with tile classes from the masks) or
    class rows, each row once per epoch or class-balanced (cls)."""
    t = config.train
    if config.task == "cls":
        return ClassImageDataset(
            [pair.row for pair in data.train_pairs], size=config.data.size, preprocess=preprocess, augment=augment,
            seed=config.run.seed, rank=rank, world=world, balanced=config.data.class_balanced, fraction=t.subset,
            crop_scale=config.data.crop_scale, min_length=t.batch_size, pad_mode=config.data.pad_mode)
    # Windows per epoch are split across ranks; each rank draws its own (dataset rank = dist rank).
    total = max(t.batch_size, int(t.windows_per_epoch * t.subset))
    return RandomWindowDataset(
        data.train_pairs, data.sampler, size=config.data.size, length=max(t.batch_size, total // world),
        preprocess=preprocess, augment=augment, seed=config.run.seed, rank=rank,
        tile_class_px=config.data.cls_from_mask if config.task == "seg+cls" else None, targets=target_spec(config))


def task_loss(config: Config) -> torch.nn.Module:
    """train.loss (masks; per target with data.targets), train.cls_loss (classes), or both summed (seg+cls)."""
    spec = target_spec(config)
    if spec is not None:
        return TargetLoss(config.train.loss, spec.names, config.train.target_weights)
    # unlabelled pixels (outside a row's region, unsure pseudo-labels) move no loss; a term that cannot skip
    # them (mcc) keeps the old behaviour, where they count as their value
    ignore = IGNORE_INDEX if supports_ignore(config.train.loss) else None
    return create_task_loss(config.task, seg_terms=config.train.loss, cls_terms=config.train.cls_loss,
                            classes=config.model.classes, cls_classes=len(TILE_CLASSES), ignore_index=ignore)


def mixup_for(config: Config) -> BatchMix | None:
    """MixUp/CutMix of train.mixup (cls), or None."""
    return create_mixup(config.train.mixup, classes=config.model.classes, batch_size=config.train.batch_size,
                        seed=config.run.seed)


def validation_settings(config: Config) -> ValidationSettings:
    """Validation predicts as `segkit infer` does with the run's infer section."""
    config = with_fov(config)
    i = config.infer
    spec = target_spec(config)
    return ValidationSettings(
        fov_px=config.data.fov_px, size=config.data.size, overlap_px=i.overlap_px, tta=i.tta, blend=i.blend,
        threshold=i.threshold, batch_size=i.batch_size, amp=config.train.amp,
        activation=output_activation(config.model.classes, spec.names if spec else None), classes=config.model.classes,
        margin_px=i.margin_px, task=config.task,
        class_names=tuple(class_names(config)) if config.task == "cls" else None,
        targets=spec.names if spec else None, seeds=seed_settings(config) if spec else None,
        small_images=config.data.small_images,
    )


def seed_settings(config: Config) -> SeedSettings:
    """The watershed thresholds of the infer section (instance runs)."""
    i = config.infer
    return SeedSettings(mask=i.threshold, seed=i.seed_threshold, border=i.seed_border)


def best_metric(config: Config) -> str:
    """The validation score that picks the best checkpoint: object F1 for instance targets."""
    return "val_object_f1" if target_spec(config) else BEST_METRICS[config.task]


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
