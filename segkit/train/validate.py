"""Validation with the inference predictor itself, so the local score predicts the submission.

seg and seg+cls: Dice of the tiled predictor's masks over each validation row's region; cls:
accuracy, macro F1 and per-class scores of the classification predictor over the validation rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from segkit.data.cls_dataset import RasterCache, read_row
from segkit.data.dataset import SourcePair
from segkit.ground.geometry import Window
from segkit.ground.ignore import IGNORE_INDEX
from segkit.infer.calibrate import ensemble_probs
from segkit.infer.classify import predict_class_logits
from segkit.infer.ensemble import EnsemblePredictor
from segkit.infer.predict import predict_probs
from segkit.infer.small import fits, predict_small
from segkit.infer.tta import parse_tta
from segkit.metrics.cls import ConfusionAccumulator
from segkit.metrics.seg import DiceAccumulator
from segkit.metrics.objects import object_scores
from segkit.post.morphology import threshold as threshold_probs
from segkit.post.watershed import SeedSettings, watershed_instances
from segkit.runs import distributed
from segkit.runs.progress import Progress


@dataclass(frozen=True)
class ValidationSettings:
    """How validation predicts (the run's infer settings) and scores.

    fov_px / size: source pixels per tile and pixels the network sees; overlap_px, blend,
    batch_size, margin_px: the tiling (segkit.infer.predict.predict_strips); tta: view spec
    (segkit.infer.tta.parse_tta); threshold: binary cut (multiclass takes the argmax); amp:
    autocast; activation: sigmoid or softmax; classes: output channels of the model; task: seg,
    cls or seg+cls; class_names: names of the classifier's outputs (cls); targets / seeds: instance
    target names and watershed thresholds (segkit.post.watershed), which add object scores.
    """

    fov_px: int
    size: int
    overlap_px: Optional[int]  # None: predict's default for the tile
    tta: str
    blend: str
    threshold: float
    batch_size: Optional[int]  # None: by device
    amp: bool
    activation: str
    classes: int = 1
    margin_px: int = 0
    task: str = "seg"
    class_names: Optional[tuple] = None
    targets: Optional[tuple] = None  # instance targets (channel names): objects by watershed, object scores
    seeds: Optional[SeedSettings] = None  # the watershed thresholds (instance targets)
    small_images: str = "pad"  # data.small_images: rows that fit in one tile are batched (segkit.infer.small)


def validate(models: list[tuple[torch.nn.Module, float]], pairs, preprocess, settings: ValidationSettings,
             device: torch.device, progress: bool = False) -> dict:
    """Dice over the validation rows (each row's region, or its whole image), predicted tile by tile.

    Returns {"dice": mean over rows, "per_image": {row id: dice}} (cls: validate_classes); with instance
    targets also "object_f1" and "dsb" (means over rows of segkit.metrics.objects.object_scores of the
    watershed's objects against the true ones; Dice is the body's). The models' train/eval modes
    are restored afterwards. ``progress``: per row, a bar on a terminal or plain lines in logs
    (``validate ROW_ID``).
    """
    s = settings
    if s.task == "cls":
        return validate_classes(models, [pair.row for pair in pairs], preprocess, settings, device)
    predictor = EnsemblePredictor(models, s.tta, activation=s.activation, amp=s.amp)
    mine = [index for index, _ in distributed.my_share(range(len(pairs)))]
    small = _small_rows(pairs, mine, s)
    scored = []  # (row index, image id, Dice counts, object scores or None) of this rank's rows
    for index in (i for i in mine if i not in small):
        pair = pairs[index]
        raster = pair.raster
        region = pair.row.region or Window(0, 0, raster.height, raster.width)
        probs = predict_probs(
            predictor, raster, fov_px=s.fov_px, size=s.size, overlap_px=s.overlap_px, preprocess=preprocess,
            blend=s.blend, batch_size=s.batch_size, device=device, region=region, margin_px=s.margin_px,
            progress=progress, progress_desc=f"validate {pair.row.id}",
        )
        scored.append((index, pair.row.id, *_score(probs, pair, region, s)))
    if small:
        scored += _validate_small(predictor, pairs, sorted(small), preprocess, s, device, progress)
    scored.sort(key=lambda item: item[0])
    accumulator = DiceAccumulator(classes=1 if s.targets else s.classes)
    objects = []
    for _, image_id, counts, scores in distributed.gather_in_order(scored):
        accumulator.add_counts(counts, image_ids=[image_id])
        if scores is not None:
            objects.append(scores)
    result = {"dice": float(accumulator.mean()), "per_image": accumulator.per_image()}
    if objects:
        result.update(object_f1=float(np.mean([o["f1"] for o in objects])),
                      dsb=float(np.mean([o["dsb"] for o in objects])))
    return result


def _score(probs: np.ndarray, pair, region: Window, s: ValidationSettings) -> tuple:
    """(Dice counts, object scores or None) of one row's probabilities against its labels."""
    target = pair.labels.read(region)
    objects = None
    if s.targets:
        objects = object_scores(watershed_instances(probs, s.targets, s.seeds), pair.labels.read_instances(region))
        probs = probs[:1]  # Dice of the body
    mask = threshold_probs(probs, s.threshold if s.classes == 1 or s.targets else None)
    one = DiceAccumulator(classes=1 if s.targets else s.classes, ignore_index=IGNORE_INDEX)
    one.add(mask, target, image_id=pair.row.id)
    return one.counts(), objects


def _small_rows(pairs, indices: list[int], s: ValidationSettings) -> set:
    """The rows (of ``indices``) whose whole region fits in one tile: predicted many per forward pass."""
    if s.margin_px:
        return set()
    if hasattr(pairs, "table"):  # a PairList: sizes are in its columns, nothing is opened
        extent, region = pairs.table.extent(), pairs.table.region
        inside = (region[:, 0] < 0) | ((region[:, 0] + region[:, 2] <= pairs.table.height)
                                        & (region[:, 1] + region[:, 3] <= pairs.table.width))
        return {i for i in indices if inside[i] and extent[i, 0] <= s.fov_px and extent[i, 1] <= s.fov_px}
    return {i for i in indices if fits(_whole_region(pairs[i]), s.fov_px) and _region_inside(pairs[i])}


def _whole_region(pair) -> Window:
    return pair.row.region or Window(0, 0, pair.raster.height, pair.raster.width)


def _region_inside(pair) -> bool:
    region = _whole_region(pair)
    return region.bottom <= pair.raster.height and region.right <= pair.raster.width


def _validate_small(predictor, pairs, indices: list[int], preprocess, s: ValidationSettings, device,
                    progress: bool) -> list:
    """Rows that fit in one tile, predicted in batches across rows (segkit.infer.small), scored as validate."""
    def items():
        for index in indices:
            pair = SourcePair(pairs[index].row, pairs[index].options) if not hasattr(pairs, "table") \
                else SourcePair(pairs.table.row(index), pairs.options)  # not the shared open pairs: released below
            yield (index, pair), pair.raster, _whole_region(pair)

    scored = []
    with Progress(len(indices), desc="validate", unit="images", enabled=progress) as bar:
        for (index, pair), probs in predict_small(predictor, items(), fov_px=s.fov_px, size=s.size,
                                                  preprocess=preprocess, batch_size=s.batch_size, device=device,
                                                  mode=s.small_images):
            scored.append((index, pair.row.id, *_score(probs, pair, _whole_region(pair), s)))
            pair.release()
            bar.update(1)
    return scored


def validate_classes(models: list[tuple[torch.nn.Module, float]], rows, preprocess, settings: ValidationSettings,
                     device: torch.device) -> dict:
    """The classification predictor (TTA views of settings.tta) over class rows.

    Returns {"f1" (macro), "accuracy", "report" (per class, confusion), "logits" (members, rows,
    classes), "weights" (members,), "targets" (rows,)}: the raw material of calibration and OOF.
    """
    s = settings
    cache = RasterCache()
    mine = distributed.my_share(rows)
    logits, weights = np.zeros((0, 0, s.classes), np.float32), None
    if mine:
        logits, weights = predict_class_logits(
            models, [row for _, row in mine], read=lambda row: read_row(cache, row, s.size), preprocess=preprocess,
            tta=parse_tta(s.tta), batch_size=s.batch_size, device=device, amp=s.amp)
    gathered = distributed.gather_in_order([(index, logits[:, k], weights) for k, (index, _) in enumerate(mine)])
    logits = np.stack([member for _, member, _ in gathered], axis=1)  # (members, rows, classes)
    weights = gathered[0][2]
    targets = np.array([int(row.target) for row in rows])
    accumulator = ConfusionAccumulator(s.classes)
    accumulator.update(ensemble_probs(logits, weights).argmax(axis=1), targets)
    report = accumulator.report(list(s.class_names) if s.class_names else None)
    return {"f1": report["macro_f1"], "accuracy": report["accuracy"], "report": report, "logits": logits,
            "weights": weights, "targets": targets}
