"""The base recipes and the arms of tools/bench_ablate.py: one settings key toggled per arm.

An arm is (name, key, value): its config is the dataset's base config with ``key`` set to
``value`` and nothing else changed (:func:`arm_config`; tests/test_bench_ablate.py checks the
resolved configs differ in that key alone). Every base has the techniques off; each arm turns
one on. Training arms retrain (same optimizer steps as the base); post-processing arms reuse
the base run of the same seed.

Two arms need a word on how they run, not on what they set:
- progressive (data.size = half the base size): the stage at half size takes 3/4 of the base's
  epochs, then a finetune at the base size takes the rest (`segkit finetune`), so the optimizer
  steps are the base's (:func:`stages`).
- swa (train.swa_epochs): scored with the averaged weights (checkpoints/swa.pt), as
  `infer --epochs swa` predicts with them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from segkit.ground.config import Config, flatten_config, load_config, to_dict

ROOT = Path(__file__).resolve().parents[1]
FLIPS = {"transform": {"__class_fullname__": "Compose", "transforms": [
    {"__class_fullname__": "HorizontalFlip", "p": 0.5}, {"__class_fullname__": "VerticalFlip", "p": 0.5},
    {"__class_fullname__": "RandomRotate90", "p": 0.5}]}}


def heavy_noise(dataset=None, base=None) -> dict:
    """The shipped heavy-noise preset (configs/augment_heavy_noise.yaml)."""
    return yaml.safe_load((ROOT / "configs" / "augment_heavy_noise.yaml").read_text())["data"]["augment"]


# Budgets: FULL fits about an hour of one CPU slot for 3 seeds x 3 datasets; QUICK is a smoke test.
BUDGETS = {
    "full": {"seg": {"data.fov_px": 128, "data.size": 128, "train.epochs": 4, "train.windows_per_epoch": 48},
             "cls": {"train.epochs": 4, "train.subset": 0.25}},
    "quick": {"seg": {"data.fov_px": 64, "data.size": 64, "train.epochs": 2, "train.windows_per_epoch": 8},
              "cls": {"train.epochs": 2, "train.subset": 1.0}},
}

SEG_BASE = {  # on the `sample` recipe: every technique of the table off
    "data.augment": FLIPS, "data.copy_paste": None, "data.channels": None, "data.targets": None,
    "data.foreground_share": 0.33, "data.stats_windows": 16,
    "model.encoder": "tu-resnet10t", "train.batch_size": 8, "train.amp": False, "train.ema": None,
    "train.swa_epochs": 0, "train.keep_last": 3, "infer.tta": "none", "infer.epochs": "last:1", "infer.crf": None,
    "infer.min_object_px": 0, "infer.overlap_px": 16, "run.progress": False,
}
CLS_BASE = {  # on the `digits` recipe
    "train.cls_loss": [{"name": "ce", "weight": 1.0}], "data.class_balanced": False, "train.ema": None,
    "train.swa_epochs": 0, "train.keep_last": 3, "infer.epochs": "last:1", "infer.tta": "none",
    "data.stats_windows": 64, "run.progress": False,
}
RECIPES = {"seg": ("sample", SEG_BASE), "cls": ("digits", CLS_BASE)}


def base_config(dataset, seed: int, runs_dir: Path, budget: str = "full") -> Config:
    """The dataset's base recipe at ``budget`` for one seed."""
    recipe, values = RECIPES[dataset.task]
    values = {**values, **BUDGETS[budget][dataset.task], "data.manifest": str(dataset.manifest),
              "run.seed": int(seed), "run.runs_dir": str(runs_dir)}
    return load_config(recipe, values=values)


@dataclass(frozen=True)
class Arm:
    """One technique: ``key`` set to ``value`` (a callable gets the dataset and the base config)."""

    name: str
    key: str
    value: Any
    stage: str  # train (retrains) | post (the base run's model, predicted differently)
    tasks: tuple
    what: str

    def resolve(self, dataset, base: Config):
        return self.value(dataset, base) if callable(self.value) else self.value


def _channels(dataset, base):
    return [{"band": band, "percentiles": [1, 99]} for band in range(dataset.bands)]


def _half_size(dataset, base):
    return base.data.size // 2


def _min_size(dataset, base):
    return max(2, round(dataset.area_px / 10))


def scaled_crf(dataset, base=None) -> dict:
    """CRF kernels at the objects' scale: the bilateral width one object diameter, the smoothing kernel 1 px."""
    return {"iterations": 5, "sxy_gaussian": 1, "compat_gaussian": 3,
            "sxy_bilateral": max(2.0, round(dataset.diameter_px, 1)), "srgb": 13, "compat_bilateral": 5}


ARMS = [
    Arm("copy_paste", "data.copy_paste", {"p": 0.5, "count": [1, 3]}, "train", ("seg",),
        "object copy-paste, p 0.5, 1-3 objects per window"),
    Arm("progressive", "data.size", _half_size, "train", ("seg",),
        "first 3/4 of the epochs at half the network size, then a finetune at full size"),
    Arm("ema", "train.ema", 0.99, "train", ("seg", "cls"), "EMA of the weights, decay 0.99"),
    Arm("swa", "train.swa_epochs", 2, "train", ("seg", "cls"), "weights of the last 2 epochs averaged"),
    Arm("instance_targets", "data.targets", ["body", "border", "contact"], "train", ("seg",),
        "body/border/contact targets, objects by seeded watershed"),
    Arm("channel_windows", "data.channels", _channels, "train", ("seg",),
        "every band windowed to its 1-99th percentile"),
    Arm("heavy_noise", "data.augment", heavy_noise, "train", ("seg",), "the augment_heavy_noise preset"),
    Arm("balanced_sampler", "data.class_balanced", True, "train", ("cls",), "every class drawn equally often"),
    Arm("label_smoothing", "train.cls_loss", [{"name": "ce", "weight": 1.0, "label_smoothing": 0.1}], "train",
        ("cls",), "cross-entropy with label smoothing 0.1"),
    Arm("hflip_tta", "infer.tta", "hflip", "post", ("seg",), "original 0.6 + hflip 0.4"),
    Arm("epoch_ensemble", "infer.epochs", "last:3", "post", ("seg", "cls"), "last 3 checkpoints averaged"),
    Arm("crf", "infer.crf", {}, "post", ("seg",), "dense CRF, segkit's default kernels (bilateral 80 px)"),
    Arm("crf_scaled", "infer.crf", scaled_crf, "post", ("seg",), "dense CRF, kernels at the object scale"),
    Arm("min_object_size", "infer.min_object_px", _min_size, "post", ("seg",),
        "objects under a tenth of the median object area removed"),
]
ARM_NAMES = [arm.name for arm in ARMS]
# heavy_noise is not tried on digits: its flips and 45-degree rotations change what a digit is


def arms_for(dataset, names=None) -> list[Arm]:
    """The arms that apply to the dataset's task (optionally only ``names``)."""
    unknown = [n for n in (names or []) if n not in ARM_NAMES]
    if unknown:
        raise KeyError(f"unknown arm {unknown[0]}; known: {', '.join(ARM_NAMES)}")
    return [arm for arm in ARMS if dataset.task in arm.tasks and (not names or arm.name in names)]


def arm_config(base: Config, arm: Arm, dataset) -> Config:
    """The base config with the arm's key set to its value; nothing else changes."""
    return load_config(None, values={arm.key: arm.resolve(dataset, base)}, base=base)


def config_diff(a: Config, b: Config) -> dict:
    """{dotted key: (a's value, b's value)} of the keys whose resolved values differ."""
    fa, fb = flatten_config(to_dict(a)), flatten_config(to_dict(b))
    return {key: (fa[key], fb[key]) for key in fa if fa[key] != fb[key]}


def with_values(config: Config, **values) -> Config:
    """``config`` with run-bookkeeping keys (name, epochs of a stage) set; dotted keys as a__b."""
    return load_config(None, values={key.replace("__", "."): v for key, v in values.items()}, base=config)


def stages(config: Config, base: Config, arm: Arm | None) -> list[tuple[str, Config]]:
    """(command, config) of each training stage of an arm (the base: one train stage)."""
    if arm is None or arm.name != "progressive":
        return [("train", config)]
    low_epochs = max(1, min(base.train.epochs - 1, math.ceil(base.train.epochs * 3 / 4)))
    high = dataclasses.replace(base, train=dataclasses.replace(base.train, epochs=base.train.epochs - low_epochs))
    low = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=low_epochs))
    return [("train", low)] + ([("finetune", high)] if high.train.epochs > 0 else [])


def optimizer_steps(config: Config, train_rows: int = 0) -> int:
    """Optimizer steps of one stage (seg: windows per epoch / batch; cls: the rows of the subset / batch)."""
    t = config.train
    if config.task == "cls":
        per_epoch = math.ceil(max(t.batch_size, int(train_rows * t.subset)) / t.batch_size)
    else:
        per_epoch = math.ceil(max(t.batch_size, int(t.windows_per_epoch * t.subset)) / t.batch_size)
    return math.ceil(per_epoch / t.accumulate) * t.epochs
