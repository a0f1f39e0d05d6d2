"""Scores of tools/bench_ablate.py: pixel Dice and object F1@0.5 (seg), macro F1 (cls).

Seg runs are predicted over the validation region with segkit's streaming predictor
(segkit.infer.run.stream_probs, the run's tiling); probabilities are kept per (checkpoint set,
TTA views), so the post-processing arms of one seed (CRF, minimum object size) reuse the base
run's. Objects: connected components of the mask (8-connected), or the seeded watershed for
runs with instance targets; the true objects are the label polygons (ablate_data).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from segkit.ground.config import Config, load_config
from segkit.infer.run import infer_settings, load_ensemble, stream_probs
from segkit.io.images.raster import open_raster
from segkit.metrics.objects import label_components, object_f1
from segkit.metrics.seg import dice_score
from segkit.post.crf import dense_crf
from segkit.post.morphology import remove_small_objects
from segkit.post.watershed import watershed_instances
from segkit.train import from_config as fc
from segkit.train.validate import validate_classes
from segkit.workflows.empirical import validation_truth

CPU = torch.device("cpu")


@dataclasses.dataclass
class Item:
    """One validation region: its raw image (for the CRF) and its true objects (int32 ids)."""

    image: np.ndarray
    truth: np.ndarray
    path: Path
    region: object


def truth_items(base: Config) -> list[Item]:
    """The validation regions of the base config, with their labels read as objects."""
    config = load_config(None, values={"data.targets": "instances"}, base=base)
    items = []
    for _, image, region, truth in validation_truth(config):
        with open_raster(image) as raster:
            raw = raster.read(region)
        items.append(Item(raw, truth, Path(image), region))
    return items


def predict(run_dir: Path, epochs: str, tta: str, items: list[Item]) -> tuple[list[np.ndarray], tuple]:
    """(probs per item: (h, w), or (T, h, w) with instance targets; the run's target names)."""
    config = load_config(run_dir / "config.yaml")
    ensemble = load_ensemble([run_dir], epochs, CPU)
    settings = dataclasses.replace(infer_settings(config), tta=tta, progress=False)
    out = []
    for item in items:
        with open_raster(item.path) as raster:
            probs = np.concatenate([p.astype(np.float32) for _, p in stream_probs(
                ensemble, raster, settings, CPU, region=item.region)], axis=-2)
        out.append(probs if ensemble.targets else probs.reshape(probs.shape[-2:]))
    return out, tuple(ensemble.targets)


def objects(probs: np.ndarray, image: np.ndarray, *, targets: tuple, config: Config, crf: dict | None = None,
            min_px: int = 0) -> np.ndarray:
    """Predicted objects (int32 ids) of one region: CRF, threshold, small objects, components (or watershed)."""
    if targets:
        return watershed_instances(probs, targets, fc.seed_settings(config))
    if crf is not None:
        probs = dense_crf(image, probs[None], **crf)[0]
    mask = probs >= config.infer.threshold
    if min_px > 1:
        mask = remove_small_objects(mask.astype(np.uint8), min_px) > 0
    return label_components(mask)


def seg_scores(probs: list[np.ndarray], items: list[Item], **post) -> dict:
    """Mean over the regions of pixel Dice and object F1 at IoU 0.5 (post: see :func:`objects`)."""
    dice, f1 = [], []
    for p, item in zip(probs, items):
        pred = objects(p, item.image, **post)
        dice.append(dice_score(pred > 0, item.truth > 0))
        f1.append(object_f1(pred, item.truth, 0.5)["f1"])
    return {"dice": float(np.mean(dice)), "object_f1": float(np.mean(f1))}


def held_out_rows(base: Config, test_manifest: Path) -> list:
    """Every row of the held-out test manifest (its folds joined)."""
    config = load_config(None, values={"data.manifest": str(test_manifest)}, base=base)
    train, val = fc.split_rows(config)
    return list(train) + list(val)


def cls_scores(run_dir: Path, epochs: str, rows: list) -> dict:
    """Macro F1 (and accuracy) of the run's checkpoints ``epochs`` on ``rows``."""
    config = load_config(run_dir / "config.yaml")
    ensemble = load_ensemble([run_dir], epochs, CPU)
    result = validate_classes(ensemble.models, rows, ensemble.preprocess, fc.validation_settings(config), CPU)
    return {"macro_f1": float(result["f1"]), "accuracy": float(result["accuracy"])}


def crf_grid(probs: list[np.ndarray], items: list[Item], config: Config, diameter_px: float) -> list[dict]:
    """The small CRF grid tried once: bilateral width (object diameter x 1/2, 1, 2, and segkit's 80 px),
    colour scale srgb, bilateral weight; smoothing kernel 1 px. Each row: the parameters and the scores."""
    rows = [{"crf": None, **seg_scores(probs, items, targets=(), config=config)}]
    widths = sorted({max(2.0, round(diameter_px * f, 1)) for f in (0.5, 1, 2)} | {80.0})
    for sxy in widths:
        for srgb in (5, 13, 30):
            for compat in (3, 10):
                params = {"iterations": 5, "sxy_gaussian": 1, "compat_gaussian": 3, "sxy_bilateral": sxy,
                          "srgb": srgb, "compat_bilateral": compat}
                rows.append({"crf": params, **seg_scores(probs, items, targets=(), config=config, crf=params)})
    return rows
