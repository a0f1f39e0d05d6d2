"""Pixel scores per image (or tile) and per class: Dice, IoU, precision, recall.

Everything is computed from three counts per class, kept as int64 so images of any size add up
exactly: true positives (TP), false positives (FP) and false negatives (FN) pixels.

    dice = 2 TP / (2 TP + FP + FN)      iou = TP / (TP + FP + FN)
    precision = TP / (TP + FP)          recall = TP / (TP + FN)

Empty truth and empty prediction (TP + FP + FN = 0) score 1 on every measure: nothing to find,
nothing found. This is the convention of the Kaggle contests scored by mean per-image Dice:
Ultrasound Nerve Segmentation (2016), Severstal Steel Defect Detection (2019, per image and
class), SIIM-ACR Pneumothorax Segmentation (2019) and Understanding Clouds (2019), where most
images are empty and predicting nothing on them is the whole game. Any other 0/0 (the precision
of an empty prediction on an image with objects, the recall of a prediction on an empty image)
scores 0, so an empty prediction is never rewarded where there was something to find.

``classes`` follows the model: 1 = binary (any non-zero value is foreground), C > 1 = class ids
with classes 1..C-1 scored (0 is background). The mean per-image Dice over the scored classes is
the number training reports as val_dice (segkit.metrics.seg.DiceAccumulator; both compute Dice
with segkit.metrics.seg.f1_from_counts), so
``segkit evaluate`` and the training log agree on the same predictions.
"""

from __future__ import annotations

import numpy as np

from segkit.ground.errors import SegkitError
from segkit.metrics.seg import f1_from_counts

SCORES = ("dice", "iou", "precision", "recall")


def scored_labels(classes: int) -> list[int]:
    """The class ids scored for a model with `classes` outputs (binary: [1], the foreground)."""
    return [1] if int(classes) <= 1 else list(range(1, int(classes)))


def pixel_counts(pred: np.ndarray, truth: np.ndarray, classes: int = 1) -> np.ndarray:
    """(labels, 3) int64 TP, FP, FN pixels of each scored class, from two class-id maps."""
    p, t = np.asarray(pred), np.asarray(truth)
    if p.shape != t.shape:
        raise SegkitError(f"pixel_counts: prediction {p.shape} and truth {t.shape} differ")
    if int(classes) <= 1:
        p, t = p.reshape(-1) != 0, t.reshape(-1) != 0
        tp = int(np.count_nonzero(p & t))
        return np.array([[tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(t)) - tp]], np.int64)
    n = int(classes)
    p, t = p.reshape(-1).astype(np.int64), t.reshape(-1).astype(np.int64)
    p, t = np.where(p < n, p, 0), np.where(t < n, t, 0)  # unknown ids count as background
    conf = np.bincount(p * n + t, minlength=n * n).reshape(n, n)  # rows: prediction, columns: truth
    tp = np.diag(conf)
    out = np.stack([tp, conf.sum(axis=1) - tp, conf.sum(axis=0) - tp], axis=1)
    return out[1:].astype(np.int64)


def _ratio(num: np.ndarray, den: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """num / den; where den is 0: 1 when the class is empty in both maps, else 0."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    out = np.where(empty, 1.0, 0.0)
    np.divide(num, den, out=out, where=den > 0)
    return out


def pixel_scores(counts: np.ndarray) -> dict[str, np.ndarray]:
    """{dice, iou, precision, recall}: arrays shaped like counts[..., 0] (one value per class)."""
    c = np.asarray(counts, np.int64)
    tp, fp, fn = c[..., 0], c[..., 1], c[..., 2]
    empty = (tp + fp + fn) == 0
    return {
        "dice": np.asarray(f1_from_counts(tp, fp, fn)),
        "iou": _ratio(tp, tp + fp + fn, empty),
        "precision": _ratio(tp, tp + fp, empty),
        "recall": _ratio(tp, tp + fn, empty),
    }


def mean_scores(counts: np.ndarray) -> dict[str, float]:
    """Scores of one image (counts (labels, 3)): each measure averaged over the scored classes."""
    return {name: float(values.mean()) for name, values in pixel_scores(counts).items()}


