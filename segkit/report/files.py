"""Scoring prediction files (a Kaggle submission, a mask folder, GeoJSON) against truth files."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from segkit.data.dataset import LabelOptions
from segkit.ground.errors import SegkitError
from segkit.io.instances import open_instances
from segkit.io.masks import _stem, open_labels
from segkit.report.evaluate import DEFAULT_TILE_PX, Evaluation, evaluate_images
from segkit.report.sources import EvalImage, LabelSpec


@dataclass(frozen=True)
class LabelReading:
    """How truth labels are decoded (the manifest's LabelOptions) and how RLE predictions are ordered."""

    truth: LabelOptions = LabelOptions()
    pred_rle_order: str = "F"


def truth_opener(truth: Optional[LabelSpec], reading: LabelReading, *, instances: bool = False):
    """--truth when given, else each image's own label file (the manifest's label column), read
    as object ids with ``instances`` (a run with instance targets: its labels are instance labels)."""
    def open_truth(image: EvalImage, raster):
        if truth is not None:
            return truth.open(image.id, raster)
        if image.label is None:
            return None
        t = reading.truth
        if instances:
            return open_instances(image.label, raster, image_id=image.id, rle_order=t.rle_order)
        return open_labels(image.label, raster, image_id=image.id, rle_order=t.rle_order, class_map=t.class_map,
                           class_property=t.class_property)
    return open_truth


def pred_key(pred: LabelSpec, image: EvalImage) -> str:
    """The id an image's prediction is found under: its own id, else its file's stem, which is how `segkit
    infer` names its outputs (a manifest row with a region, e.g. the sample's nuclei_val, reads the prediction
    of its whole image, nuclei, over its region)."""
    ids = pred.ids()
    if ids is None or image.id in ids:
        return image.id
    stem = _stem(image.image)
    return stem if stem in ids else image.id


def pred_opener(pred: LabelSpec):
    return lambda image, raster: pred.open(pred_key(pred, image), raster)


def pred_spec(pred: str, reading: LabelReading) -> LabelSpec:
    return LabelSpec(pred, "--pred", rle_order=reading.pred_rle_order)


def truth_spec(truth: Optional[str], reading: LabelReading) -> Optional[LabelSpec]:
    """--truth as a label source (None: each image's own label file is the truth)."""
    if truth is None:
        return None
    t = reading.truth
    return LabelSpec(truth, "--truth", rle_order=t.rle_order, class_map=t.class_map, class_property=t.class_property)


def open_specs(pred: str, truth: Optional[str], reading: LabelReading) -> tuple[LabelSpec, Optional[LabelSpec]]:
    return pred_spec(pred, reading), truth_spec(truth, reading)


def evaluate_files(images: list[EvalImage], pred: LabelSpec, truth: Optional[LabelSpec], reading: LabelReading, *,
                   classes: int = 1, tile_px: int = DEFAULT_TILE_PX, objects: bool = True,
                   label: Optional[str] = None, instances: bool = False) -> Evaluation:
    """Score `pred` on every image that has truth; the notes count what was skipped or taken as empty."""
    if not images:
        raise SegkitError("evaluate: no images to score")
    pred.check_single(images)
    if truth is not None:
        truth.check_single(images)
    evaluation = evaluate_images(images, truth_opener(truth, reading, instances=instances), pred_opener(pred),
                                 classes=classes, tile_px=tile_px, objects=objects, label=label or str(pred.path),
                                 instances=instances)
    ids = pred.ids()
    if ids is not None:
        known = {pred_key(pred, image) for image in images}
        scored = {pred_key(pred, image) for image in images if image.id in set(evaluation.image_ids())}
        unlabeled = sorted(i for i in ids if i in known and i not in scored)
        unknown = sorted(ids - known)
        if unlabeled:
            evaluation.notes.append(f"predictions for {len(unlabeled)} image(s) without labels were skipped")
        if unknown:
            evaluation.notes.append(f"{len(unknown)} prediction(s) name no known image and were skipped: "
                                    f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    if not evaluation.items:
        raise SegkitError(f"{truth.path if truth else 'manifest'}: none of the {len(images)} image(s) has labels; "
                          "nothing to score")
    return evaluation
